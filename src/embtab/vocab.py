"""``embtab.Vocab``: tokens <-> ids, built from a corpus, saved as readable JSON.

A vocabulary is an ordered list of distinct tokens: the special tokens first (in the
order given), then the corpus tokens by decreasing frequency, ties broken by first
appearance, so the same corpus always gives the same ids. Counts are kept, because
they matter later (the coverage report of :func:`embtab.vectors.align.embedding_from_vectors`
ranks missing tokens by frequency).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from ._io import atomic_write_text

__all__ = ["Vocab", "EncodedBatch", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "embtab.vocab"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EncodedBatch:
    """A batch of token lists as ids, in the two layouts models take.

    Attributes:
        ids: ``(B, L)`` int64, each row padded with the padding id up to ``L``, the
            longest (truncated) length in the batch, for ``Embedding`` + a sequence model.
        lengths: ``(B,)`` int64, the true length of each row.
        flat_ids: ``(N,)`` int64, all ids one after the other (``N = lengths.sum()``).
        offsets: ``(B,)`` int64, where each bag starts in ``flat_ids``: the ``input`` and
            ``offsets`` that ``EmbeddingBag`` takes.
    """

    ids: Tensor
    lengths: Tensor
    flat_ids: Tensor
    offsets: Tensor


class Vocab:
    """An ordered, immutable mapping between tokens and integer ids.

    Build one from a corpus with :meth:`Vocab.build`, or give the complete token list
    (ids in list order) to the constructor.

    Args:
        tokens: every token, in id order; no duplicates.
        counts: one count per token (``0`` for specials), or ``None`` for all zeros.
        specials: the tokens that are special (they must be in ``tokens``); they are
            never counted as missing in a coverage report.
        unk_token: the token unknown tokens map to, or ``None`` to raise ``KeyError``.
        pad_token: the token that pads batches in :meth:`encode`, or ``None``.

    Examples:
        >>> v = Vocab.build([["a", "b", "a"], ["c", "a"]])
        >>> v.tokens
        ('<pad>', '<unk>', 'a', 'b', 'c')
        >>> v["a"], v["zzz"], v.unk_id, v.pad_id
        (2, 1, 1, 0)
        >>> v.lookup_tokens([2, 4])
        ['a', 'c']
    """

    def __init__(
        self,
        tokens: Iterable[str],
        *,
        counts: Iterable[int] | None = None,
        specials: Sequence[str] = (),
        unk_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        where = "Vocab"
        tokens = tuple(tokens)
        stoi: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise TypeError(f"{where}: tokens must be str, got {tok!r} ({type(tok).__name__}) at id {i}")
            if tok in stoi:
                raise ValueError(
                    f"{where}: token {tok!r} appears twice, at ids {stoi[tok]} and {i}; "
                    f"every token must be distinct"
                )
            stoi[tok] = i
        if counts is None:
            count_list = [0] * len(tokens)
        else:
            count_list = [_check_count(c, i, where) for i, c in enumerate(counts)]
            if len(count_list) != len(tokens):
                raise ValueError(
                    f"{where}: counts must have one entry per token, got {len(count_list)} counts "
                    f"for {len(tokens)} tokens"
                )
        specials = tuple(specials)
        named = [("specials", s) for s in specials]
        named += [(name, tok) for name, tok in (("unk_token", unk_token), ("pad_token", pad_token)) if tok is not None]
        for name, tok in named:
            if tok not in stoi:
                raise ValueError(
                    f"{where}: {name} {tok!r} is not among the tokens; add it to tokens "
                    f"(specials usually come first) or drop it"
                )
        self._itos = tokens
        self._stoi = stoi
        self._counts = tuple(count_list)
        self._specials = specials
        self._unk_token = unk_token
        self._pad_token = pad_token
        self._unk_id = None if unk_token is None else stoi[unk_token]
        self._pad_id = None if pad_token is None else stoi[pad_token]

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        token_lists: Iterable[Iterable[str]],
        *,
        min_freq: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = ("<pad>", "<unk>"),
        unk_token: str | None = "<unk>",
        pad_token: str | None = "<pad>",
    ) -> "Vocab":
        """Count the tokens of a corpus, streaming, and keep the frequent ones.

        Only the counts are held in memory, never the corpus: ``token_lists`` may be a
        generator over a file of any size.

        Args:
            token_lists: an iterable of token lists (one list per sentence or document).
            min_freq: keep tokens seen at least this many times.
            max_size: the largest vocabulary, specials included (the most frequent
                tokens are kept); ``None`` for no limit.
            specials: tokens placed first, in this order, whatever their counts.
            unk_token: the special that unknown tokens map to (``None``: unknown tokens
                raise ``KeyError``). Must be one of ``specials``.
            pad_token: the special used to pad batches (``None``: no padding token).
                Must be one of ``specials``.

        Returns:
            A ``Vocab``: specials, then tokens by decreasing count, ties broken by first
            appearance in the corpus.

        Examples:
            >>> with open("corpus.txt") as f:                      # doctest: +SKIP
            ...     vocab = Vocab.build((line.split() for line in f), min_freq=2)
        """
        where = "Vocab.build"
        if isinstance(min_freq, bool) or not isinstance(min_freq, int) or min_freq < 1:
            raise ValueError(f"{where}: min_freq must be an int >= 1, got min_freq={min_freq!r}")
        specials = tuple(specials)
        for s in specials:
            if not isinstance(s, str):
                raise TypeError(f"{where}: specials must be str, got {s!r} ({type(s).__name__})")
        if len(set(specials)) != len(specials):
            raise ValueError(f"{where}: specials must be distinct, got {specials!r}")
        for name, tok in (("unk_token", unk_token), ("pad_token", pad_token)):
            if tok is not None and tok not in specials:
                raise ValueError(
                    f"{where}: {name}={tok!r} is not among specials={specials!r}; add it to "
                    f"specials or pass {name}=None"
                )
        if max_size is not None:
            if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < len(specials):
                raise ValueError(
                    f"{where}: max_size must be an int >= len(specials) = {len(specials)} "
                    f"(it counts the specials too), got max_size={max_size!r}"
                )
        # Counter keeps insertion order, i.e. first appearance, which breaks count ties.
        counter: Counter[str] = Counter()
        for i, tokens in enumerate(token_lists):
            if isinstance(tokens, (str, bytes)):
                raise TypeError(
                    f"{where}: token_lists must yield lists of tokens, got a "
                    f"{type(tokens).__name__} {_short(tokens)} at position {i}; iterating it "
                    f"would count characters. Split it first, e.g. "
                    f"Vocab.build(line.split() for line in lines)"
                )
            try:
                counter.update(tokens)
            except TypeError as e:
                raise TypeError(
                    f"{where}: token_lists must yield iterables of str, got "
                    f"{type(tokens).__name__} at position {i}"
                ) from e
        bad = next((t for t in counter if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(
                f"{where}: tokens must be str, got {bad!r} ({type(bad).__name__}); "
                f"convert them first, e.g. [str(t) for t in tokens]"
            )
        special_set = set(specials)
        # sorted() is stable: equal counts keep first-appearance order.
        ranked = sorted(
            ((t, c) for t, c in counter.items() if c >= min_freq and t not in special_set),
            key=lambda tc: -tc[1],
        )
        if max_size is not None:
            ranked = ranked[: max_size - len(specials)]
        tokens = specials + tuple(t for t, _ in ranked)
        counts = [counter.get(s, 0) for s in specials] + [c for _, c in ranked]
        return cls(tokens, counts=counts, specials=specials, unk_token=unk_token, pad_token=pad_token)

    # ------------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __iter__(self) -> Iterator[str]:
        return iter(self._itos)

    def __getitem__(self, token: str) -> int:
        """The id of ``token``; unknown tokens get :attr:`unk_id` (``KeyError`` without one)."""
        i = self._stoi.get(token)
        if i is not None:
            return i
        if self._unk_id is not None:
            return self._unk_id
        raise KeyError(
            f"Vocab: token {token!r} is not in the vocabulary and it has no unk_token; "
            f"check `token in vocab` first, or build it with an unk_token"
        )

    def lookup_ids(self, tokens: Iterable[str]) -> list[int]:
        """Ids of ``tokens`` (unknown tokens as in ``vocab[token]``)."""
        stoi, unk = self._stoi, self._unk_id
        if unk is not None:
            return [stoi.get(t, unk) for t in tokens]
        return [self[t] for t in tokens]

    def lookup_tokens(self, ids: Iterable[int] | Tensor) -> list[str]:
        """Tokens of ``ids`` (a list of ints or an integer tensor)."""
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        itos, n = self._itos, len(self._itos)
        out = []
        for pos, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
                raise IndexError(
                    f"Vocab.lookup_tokens: id {i!r} at position {pos} is out of range for a "
                    f"vocabulary of {n} tokens (valid ids are 0..{n - 1})"
                )
            out.append(itos[i])
        return out

    @property
    def tokens(self) -> tuple[str, ...]:
        """All tokens in id order."""
        return self._itos

    @property
    def counts(self) -> Mapping[str, int]:
        """Corpus count of each token (``0`` for specials not seen in the corpus); read-only."""
        return MappingProxyType(dict(zip(self._itos, self._counts)))

    def count(self, token: str) -> int:
        """Corpus count of ``token`` (``0`` when it is not in the vocabulary)."""
        i = self._stoi.get(token)
        return 0 if i is None else self._counts[i]

    @property
    def specials(self) -> tuple[str, ...]:
        return self._specials

    @property
    def unk_token(self) -> str | None:
        return self._unk_token

    @property
    def pad_token(self) -> str | None:
        return self._pad_token

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def pad_id(self) -> int | None:
        return self._pad_id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (
            self._itos == other._itos
            and self._counts == other._counts
            and self._specials == other._specials
            and self._unk_token == other._unk_token
            and self._pad_token == other._pad_token
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container: compare, don't hash

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self._itos[:5])
        more = ", ..." if len(self) > 5 else ""
        return (
            f"Vocab({len(self)} tokens: [{head}{more}], unk_token={self._unk_token!r}, "
            f"pad_token={self._pad_token!r})"
        )

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        batch: Sequence[Sequence[str]],
        *,
        max_len: int | None = None,
        padding_value: int | None = None,
    ) -> EncodedBatch:
        """Ids of a batch of token lists, padded and flat.

        Args:
            batch: a sequence of token lists.
            max_len: truncate each list to its first ``max_len`` tokens (both layouts).
            padding_value: the id that pads ``ids``; defaults to :attr:`pad_id`.

        Returns:
            An :class:`EncodedBatch` with ``ids`` (B, L), ``lengths`` (B,), and the
            ``flat_ids`` (N,) + ``offsets`` (B,) that ``EmbeddingBag`` takes.

        Examples:
            >>> v = Vocab.build([["a", "b"], ["a"]])          # ids: a=2, b=3
            >>> enc = v.encode([["a", "b"], ["b"]])
            >>> enc.ids
            tensor([[2, 3],
                    [3, 0]])
            >>> enc.lengths
            tensor([2, 1])
            >>> enc.flat_ids, enc.offsets
            (tensor([2, 3, 3]), tensor([0, 2]))
        """
        where = "Vocab.encode"
        if isinstance(batch, (str, bytes)) or not isinstance(batch, Sequence):
            raise TypeError(
                f"{where}: batch must be a list of token lists, got {type(batch).__name__}; "
                f"for one sentence pass [tokens]"
            )
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 0):
            raise ValueError(f"{where}: max_len must be a non-negative int or None, got {max_len!r}")
        rows: list[list[int]] = []
        for i, tokens in enumerate(batch):
            if isinstance(tokens, (str, bytes)):
                raise TypeError(
                    f"{where}: batch[{i}] is a {type(tokens).__name__} {_short(tokens)}, not a list "
                    f"of tokens; split it first"
                )
            ids = self.lookup_ids(tokens)
            rows.append(ids if max_len is None else ids[:max_len])
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)  # (B,)
        flat = torch.tensor([i for r in rows for i in r], dtype=torch.int64)  # (N,)
        offsets = torch.zeros(len(rows), dtype=torch.int64)  # (B,)
        if len(rows) > 1:
            offsets[1:] = torch.cumsum(lengths[:-1], 0)
        width = int(lengths.max()) if len(rows) else 0
        pad = self._pad_id if padding_value is None else padding_value
        if pad is None:
            if len(rows) and bool((lengths != width).any()):
                raise ValueError(
                    f"{where}: the token lists have different lengths, so ids must be padded, "
                    f"but this vocabulary has no pad_token; pass padding_value=<id> or build "
                    f"the vocabulary with a pad_token"
                )
            pad = 0  # never written: every row is full
        ids = torch.full((len(rows), width), pad, dtype=torch.int64)  # (B, L)
        if flat.numel():
            row = torch.repeat_interleave(torch.arange(len(rows)), lengths)  # (N,)
            col = torch.arange(flat.numel()) - offsets[row]  # (N,)
            ids[row, col] = flat
        return EncodedBatch(ids=ids, lengths=lengths, flat_ids=flat, offsets=offsets)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        """The JSON document :meth:`save` writes."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "unk_token": self._unk_token,
            "pad_token": self._pad_token,
            "specials": list(self._specials),
            "tokens": list(self._itos),
            "counts": list(self._counts),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as readable JSON, atomically (temp file, fsync, rename).

        Examples:
            >>> vocab.save("vocab.json")                          # doctest: +SKIP
            >>> Vocab.load("vocab.json") == vocab                 # doctest: +SKIP
            True
        """
        # indent=1 puts one token per line: diffable and greppable, still compact.
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"
        atomic_write_text(path, text, encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Vocab":
        """Read a vocabulary written by :meth:`save`; a corrupt or foreign file raises ``ValueError``."""
        path = Path(path)
        where = f"Vocab.load({str(path)!r})"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not a vocabulary file: not UTF-8 text ({e.reason} at byte {e.start})") from e
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: not a valid vocabulary file: invalid JSON at line {e.lineno}, "
                f"column {e.colno} ({e.msg}); the file is corrupt or truncated, save it again"
            ) from e
        return cls.from_dict(doc, where=where)

    @classmethod
    def from_dict(cls, doc: Any, *, where: str = "Vocab.from_dict") -> "Vocab":
        """The inverse of :meth:`to_dict`, validating every field."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            found = sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(
                f"{where}: not an embtab vocabulary file (expected a JSON object with "
                f"\"format\": \"{FORMAT_NAME}\", found {found}); write one with Vocab.save()"
            )
        version = doc.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"{where}: format_version must be an int, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{where}: written by a newer embtab (format_version {version}; this version "
                f"reads up to {FORMAT_VERSION}); upgrade embtab"
            )
        if version < 1:
            raise ValueError(f"{where}: unknown format_version {version}")
        tokens = doc.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{where}: \"tokens\" must be a list of strings; the file is corrupt")
        counts = doc.get("counts")
        if not isinstance(counts, list):
            raise ValueError(f"{where}: \"counts\" must be a list of ints; the file is corrupt")
        specials = doc.get("specials", [])
        if not isinstance(specials, list) or not all(isinstance(t, str) for t in specials):
            raise ValueError(f"{where}: \"specials\" must be a list of strings; the file is corrupt")
        for key in ("unk_token", "pad_token"):
            if doc.get(key) is not None and not isinstance(doc[key], str):
                raise ValueError(f"{where}: \"{key}\" must be a string or null, got {doc[key]!r}")
        try:
            return cls(
                tokens, counts=counts, specials=specials,
                unk_token=doc.get("unk_token"), pad_token=doc.get("pad_token"),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: the file is corrupt: {e}") from e


def _check_count(c: Any, i: int, where: str) -> int:
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise ValueError(f"{where}: counts must be non-negative ints, got {c!r} at id {i}")
    return c


def _short(s: str | bytes, n: int = 30) -> str:
    return repr(s if len(s) <= n else s[:n] + ("..." if isinstance(s, str) else b"..."))
