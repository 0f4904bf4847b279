"""``embtab.vectors.Vectors`` and ``embtab.vectors.load``."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .._io import atomic_open
from . import _load, _rows
from ._binary import write_binary
from ._text import write_text
from .cache import check_replaceable, write_cache

EXPORT_FORMATS = ("glove", "word2vec", "fasttext", "word2vec_binary")
_UNSET: Any = object()  # most_similar's topn when not given


def _refuse_overflow(tokens: Sequence[str], before: Tensor, after: Tensor) -> None:
    """Raise if a finite value of ``before`` became inf in ``after`` (its cast)."""
    if not torch.isinf(after).any():  # the common case: one pass, no copies
        return
    over = torch.isinf(after) & torch.isfinite(before.to(after.device))
    rows = over.any(1).nonzero().flatten()
    if rows.numel() == 0:
        return
    i = int(rows[0])
    j = int(over[i].nonzero()[0])
    wider = _rows.WIDER.get(after.dtype, "float64")
    raise ValueError(
        f"Vectors.to({_rows.dtype_name(after.dtype)}): "
        + _rows.overflow_reason(before[i, j].item(), j, before.shape[1], after.dtype, token=tokens[i])
        + f"; {rows.numel()} row(s) overflow. Keep {wider}, or scale the vectors into range first"
    )


class Vectors:
    """Pretrained word vectors: tokens in file order and their ``(n, dim)`` matrix.

    Usually made by :func:`load`; can also be built from a token list and a tensor.

    Args:
        tokens: ``n`` distinct tokens.
        vectors: an ``(n, dim)`` floating-point tensor (CPU or GPU).
        format: where the vectors came from (``"glove"``, ``"word2vec"``, ...), for display.
        source: the file they were read from, if any.

    Attributes:
        tokens: the tokens, in file order (a list: do not modify it).
        vectors: the ``(n, dim)`` tensor.
        format: the format they were read from (what ``format="auto"`` detected).
        source: the path they were read from.
        skipped: rows dropped by ``on_bad_line="warn"``/``"skip"``.
        duplicates: rows dropped because their token had appeared before.

    Examples:
        >>> v = Vectors(["a", "b"], torch.tensor([[1.0, 0.0], [0.6, 0.8]]))
        >>> v["b"], v.index("b"), v.dim, len(v), "c" in v
        (tensor([0.6000, 0.8000]), 1, 2, 2, False)
        >>> v.most_similar("a", topn=1)
        [('b', 0.6000000238418579)]
        >>> v.similarity("a", "b"), v.key_to_index["b"], v.index_to_key
        (0.6000000238418579, 1, ['a', 'b'])
    """

    def __init__(
        self,
        tokens: Sequence[str],
        vectors: Tensor,
        *,
        format: str | None = None,
        source: str | os.PathLike[str] | None = None,
        _index: dict[str, int] | None = None,
        _info: dict[str, Any] | None = None,
    ) -> None:
        where = "Vectors"
        if not isinstance(vectors, Tensor):
            raise TypeError(f"{where}: vectors must be a torch.Tensor, got {type(vectors).__name__}")
        if vectors.dim() != 2 or not vectors.is_floating_point():
            raise ValueError(
                f"{where}: vectors must be a 2-D floating-point tensor (n, dim), got shape "
                f"{tuple(vectors.shape)} of {vectors.dtype}"
            )
        tokens = tokens if isinstance(tokens, list) else list(tokens)
        if len(tokens) != vectors.shape[0]:
            raise ValueError(
                f"{where}: {len(tokens)} tokens for {vectors.shape[0]} rows of vectors; they must match"
            )
        if _index is None:
            _index = {}
            for i, tok in enumerate(tokens):
                if not isinstance(tok, str):
                    raise TypeError(f"{where}: tokens must be str, got {tok!r} at row {i}")
                if _index.setdefault(tok, i) != i:
                    raise ValueError(f"{where}: token {tok!r} appears twice, at rows {_index[tok]} and {i}")
        info = dict(_info or {})
        self.tokens: list[str] = tokens
        self.vectors: Tensor = vectors
        self.format: str | None = format or info.get("format")
        self.source: str | None = None if source is None else str(source)
        self.skipped: int = int(info.get("skipped", 0))
        self.duplicates: int = int(info.get("duplicates", 0))
        self._index = _index
        self._info = info
        self._norms: tuple[tuple[int, int, torch.device], Tensor] | None = None

    # ------------------------------------------------------------------ lookups
    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.tokens)

    def index(self, token: str) -> int:
        """The row of ``token``; ``KeyError`` naming it when absent."""
        i = self._index.get(token)
        if i is None:
            hint = ""
            if isinstance(token, str) and token.lower() != token and token.lower() in self._index:
                hint = f" (its lower case {token.lower()!r} is)"
            raise KeyError(f"token {token!r} is not in these {len(self)} vectors{hint}")
        return i

    def __getitem__(self, token: str) -> Tensor:
        """The vector of ``token``, ``(dim,)``."""
        return self.vectors[self.index(token)]

    def get(self, token: str, default: Any = None) -> Any:
        i = self._index.get(token)
        return default if i is None else self.vectors[i]

    def __repr__(self) -> str:
        src = f", source={Path(self.source).name!r}" if self.source else ""
        fmt = f", format={self.format!r}" if self.format else ""
        return f"Vectors({len(self)} x {self.dim}, {str(self.vectors.dtype).replace('torch.', '')}{fmt}{src})"

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Vectors":
        """The same vectors on another device and/or in another dtype (tokens are shared).

        Raises:
            ValueError: a finite value does not fit ``dtype`` (it would become inf): names
                the token, the value and how many rows overflow.
        """
        vectors = self.vectors.to(device=device, dtype=dtype)
        if vectors.dtype != self.vectors.dtype and vectors.is_floating_point():
            _refuse_overflow(self.tokens, self.vectors, vectors)
        return Vectors(self.tokens, vectors, format=self.format, source=self.source, _index=self._index,
                       _info=self._info)

    # ------------------------------------------------------------------ provenance
    @property
    def source_sha256(self) -> str | None:
        """SHA-256 of the source file (computed while loading, or now if the load stopped early).

        ``None`` when there is no source file, or it changed since it was loaded.
        """
        sha = self._info.get("sha256")
        if sha is None and self.source and self._info.get("stat") is not None:
            path = Path(self.source)
            if path.exists() and _load._stat_key(path) == self._info["stat"]:
                sha = _load.file_sha256(path)
                self._info["sha256"] = sha
        return sha

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fast cache format (safetensors), atomically.

        ``embtab.vectors.load(path)`` reads it back memory-mapped, in well under a
        second for millions of vectors. The file records the source's name, format and
        SHA-256 (see :func:`embtab.vectors.load`'s ``cache`` argument).

        Raises:
            ValueError: ``path`` exists and is not an embtab vectors cache (a text file,
                another safetensors file, the vectors' own source, ...): only a cache is
                ever replaced by a cache.

        Examples:
            >>> v = embtab.vectors.load("glove.6B.300d.txt")   # doctest: +SKIP
            >>> v.save("glove.6B.300d.safetensors")            # doctest: +SKIP
        """
        check_replaceable(path, "Vectors.save", "the file")
        meta = {
            "source": self._info.get("source_name") or (Path(self.source).name if self.source else ""),
            "source_format": str(self._info.get("source_format") or self.format or ""),
            "source_sha256": self.source_sha256 or "",
            "load_options": str(self._info.get("load_options", "")),
        }
        write_cache(path, self.tokens, self.vectors, meta)

    def export(self, path: str | os.PathLike[str], format: str = "word2vec") -> None:
        """Write a text or binary vector file other tools read; gzip it if ``path`` ends in ``.gz``.

        Args:
            path: the file to write (atomically).
            format: ``"glove"`` (no header), ``"word2vec"`` / ``"fasttext"`` (header
                ``count dim``), or ``"word2vec_binary"``. Text values are written with
                enough digits to read back exactly.
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"Vectors.export: format must be one of {EXPORT_FORMATS}, got {format!r}")
        path = Path(path)
        if self.source and _same_file(path, Path(self.source)):
            raise ValueError(
                f"Vectors.export: {str(path)!r} is the file these vectors were loaded from; refusing to replace "
                f"it: write to another path"
            )
        with atomic_open(path, "wb") as raw:
            f = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.name.endswith(".gz") else raw
            try:
                if format == "word2vec_binary":
                    write_binary(f, self.tokens, self.vectors, path=str(path))
                else:
                    write_text(f, self.tokens, self.vectors, header=format != "glove", path=str(path))
            finally:
                if f is not raw:
                    f.close()

    def quantize(self, dtype: str = "int8", *, method: str = "minmax") -> "Vectors":
        """The same vectors with their matrix stored quantized (``"int8"``, ``"int4"``,
        ``"int2"``, ``"float16"``, ``"bfloat16"``; ``method`` as :func:`embtab.quantize`'s):
        ``most_similar``, ``similarity`` and the evaluations work on it, reading rows back
        block by block. See :class:`embtab.vectors.quantized.QuantizedVectors`.

        Examples:
            >>> q = v.quantize("int8")                        # doctest: +SKIP
            >>> q.most_similar("king", topn=3)                # doctest: +SKIP
        """
        from .quantized import QuantizedVectors

        return QuantizedVectors(self, dtype, method)

    # ------------------------------------------------------------------ evaluation
    def _norms_of(self) -> Tensor:
        """Row norms ``(n,)``, cached while the matrix is unchanged."""
        key = (self.vectors._version, self.vectors.data_ptr(), self.vectors.device)
        if self._norms is None or self._norms[0] != key:
            self._norms = (key, torch.linalg.vector_norm(self.vectors, dim=1))
        return self._norms[1]

    def most_similar(
        self,
        positive: Any = None,
        negative: Any = None,
        topn: int | None = _UNSET,  # type: ignore[assignment]
        *,
        restrict_vocab: int | None = None,
        k: int | None = None,
        token_or_vector: Any = None,
    ) -> list[tuple[str, float]]:
        """The ``topn`` tokens most cosine-similar to a token, a vector, or a weighted mean of
        several: gensim's ``KeyedVectors.most_similar``, with the same results.

        Args:
            positive: a token (itself left out of the result), a ``(dim,)`` vector, or a
                list of tokens, vectors and ``(token or vector, weight)`` pairs.
            negative: the same, counted against (``king - man + woman``:
                ``positive=["king", "woman"], negative=["man"]``).
            topn: how many (default 10).
            restrict_vocab: search only the first ``restrict_vocab`` rows.
            k: the same as ``topn`` (the name before ``topn``).
            token_or_vector: the same as ``positive`` (the name before ``positive``).

        Returns:
            A list of ``(token, cosine)``, best first.

        Examples:
            >>> v.most_similar("cat", topn=2)                                        # doctest: +SKIP
            >>> v.most_similar(positive=["king", "woman"], negative=["man"], topn=1)  # doctest: +SKIP
        """
        from .evaluate import most_similar

        if token_or_vector is not None:
            if positive is not None:
                raise TypeError("most_similar: pass positive= or token_or_vector= (its older name), not both")
            positive = token_or_vector
        if isinstance(negative, int) and not isinstance(negative, bool):
            # most_similar("cat", 5): the second positional argument was k before negative= existed.
            if topn is not _UNSET or k is not None:
                raise TypeError(f"most_similar: negative must be tokens or vectors, got {negative!r}")
            topn, negative = negative, None
        if k is not None:
            if topn is not _UNSET and topn != k:
                raise TypeError(f"most_similar: pass topn= or k= (its older name), not both (topn={topn!r}, k={k!r})")
            topn = k
        return most_similar(self, positive, negative, 10 if topn is _UNSET else topn, restrict_vocab=restrict_vocab)

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the vectors of tokens ``a`` and ``b`` (gensim's ``similarity``)."""
        from .evaluate import similarity

        return similarity(self, a, b)

    @property
    def index_to_key(self) -> list[str]:
        """The tokens in row order (gensim's name for :attr:`tokens`)."""
        return self.tokens

    @property
    def key_to_index(self) -> Mapping[str, int]:
        """Token -> row, read-only (gensim's ``key_to_index``; see also :meth:`index`)."""
        return MappingProxyType(self._index)

    def evaluate_word_pairs(self, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Correlation with human similarity judgements; see :func:`embtab.vectors.evaluate.evaluate_word_pairs`."""
        from .evaluate import evaluate_word_pairs

        return evaluate_word_pairs(self, path, **kwargs)

    def evaluate_analogies(self, path: str | os.PathLike[str], restrict_vocab: int = 300000, **kwargs: Any) -> Any:
        """Analogy accuracy (3CosAdd); see :func:`embtab.vectors.evaluate.evaluate_analogies`."""
        from .evaluate import evaluate_analogies

        return evaluate_analogies(self, path, restrict_vocab=restrict_vocab, **kwargs)


def load(
    path: str | os.PathLike[str],
    format: str = "auto",
    *,
    limit: int | None = None,
    encoding: str = "utf-8",
    unicode_errors: str = "strict",
    dtype: torch.dtype = torch.float32,
    on_bad_line: str = "raise",
    nonfinite: str = "error",
    progress: bool | None = None,
    num_threads: int | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> Vectors:
    """Load pretrained vectors from a file.

    Args:
        path: the file; gzip-compressed files (``.gz``) are read as they are.
        format: ``"auto"`` (detect, and log at INFO what was detected; ``v.format`` says
            it too), ``"glove"`` (text, no header), ``"word2vec"`` (text with a
            ``count dim`` header), ``"fasttext"`` (``.vec``: the same as word2vec text),
            ``"word2vec_binary"`` (the C tool's binary format) or ``"cache"`` (a file
            written by :meth:`Vectors.save`, loaded memory-mapped). A format given
            that the file plainly is not (text read as binary or the other way round)
            is an error that says what the file is.
        limit: read only the first ``limit`` rows (the most frequent words, in most
            files). The matrix is allocated for at most ``limit`` rows.
        encoding: of the tokens; must be ASCII-compatible. A UTF-8 byte-order mark at
            the start of the file is dropped (``"utf-8-sig"`` works the same as ``"utf-8"``).
        unicode_errors: what to do with tokens that are not valid in ``encoding``:
            ``"strict"`` raises an error naming the line; ``"replace"`` or ``"ignore"``
            help with files from the word2vec C tool, which can cut a multi-byte
            character in the middle of a long token.
        dtype: of the matrix: ``torch.float32`` (default), ``float64``, ``float16`` or
            ``bfloat16``. Text is parsed to the nearest double and rounded once (as gensim
            does). A cache stored in another dtype is converted (a copy, not a mapping).
            A value that does not fit (``1e39`` in float32, ``70000`` in float16) makes
            its row bad, naming the value; it never silently becomes inf.
        on_bad_line: ``"raise"`` (default: a :class:`VectorsFormatError` naming the
            file, the line or byte offset and the problem), ``"warn"`` (drop bad rows,
            warn once with their count and the first) or ``"skip"`` (drop them silently;
            ``v.skipped`` counts them). Bad rows: a wrong number of values, a value that
            is not a number, not finite (see ``nonfinite``) or too large for ``dtype``,
            a token not valid in ``encoding``. If every row is bad the load fails all
            the same: a load never ends with 0 vectors without saying why.
        nonfinite: ``"error"`` (default): a row holding ``nan`` or ``inf`` is a bad row
            (see ``on_bad_line``); ``"keep"``: such rows are kept as they are. Statistics
            that initialise other rows (:meth:`embtab.Embedding.from_vectors`) never use them.
        progress: show a progress bar; ``None``: only for big files when stderr is a terminal.
        num_threads: threads parsing numbers (``None``: 1; numpy's text parser holds the
            GIL, so more threads have only been seen to slow it down).
        cache: a cache file. If it exists and records this file's SHA-256 and the same
            options, it is loaded instead (memory-mapped); otherwise the file is parsed
            and the cache written. Checking costs one read of the source file. Only an
            embtab cache is ever replaced: a ``cache`` that names the source itself or
            any other existing file is refused with an error, before anything is read.

    Text rows are a token, then ``dim`` numbers. Tokens may contain spaces (glove.840B
    has some): the last ``dim`` fields of a row are its vector, everything before them
    is the token, **unless the field right before those ``dim`` values is a decimal
    number**: ``cat 0.4 0.5 0.6 0.7`` in a 3-dim file is a row with a value too many (a
    bad row), not the token ``'cat 0.4'``. So a token with spaces cannot end in a
    number (``Vectors.export`` refuses to write one). Without a header, ``dim`` is the
    most common width of the first 100 lines. Blank lines are ignored.

    Returns:
        :class:`Vectors`. Tokens keep file order; a repeated token keeps its first row
        (with a warning giving the count).

    Raises:
        VectorsFormatError: (a ``ValueError``) a malformed file, as above; also a header
            count that disagrees with the rows, a truncated binary file, or a file that
            is not vectors at all (an HTML page, a zip archive, UTF-16 text: the message
            says which).

    Examples:
        >>> v = embtab.vectors.load("glove.6B.100d.txt")              # doctest: +SKIP
        >>> v = embtab.vectors.load("cc.en.300.vec.gz", limit=100_000)  # doctest: +SKIP
    """
    where = "embtab.vectors.load"
    _load.check_options(format, limit, encoding, unicode_errors, dtype, on_bad_line, num_threads, where, nonfinite)
    encoding = _load.normal_encoding(encoding)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file: {str(path)!r}")
    options = _load.options_key(format, limit, encoding, unicode_errors, dtype, on_bad_line, nonfinite)
    if cache is not None:
        cache = Path(cache)
        if _same_file(cache, path):
            suggestion = path.with_name(path.name.split(".")[0] + ".safetensors")
            raise ValueError(
                f"{where}: cache={str(cache)!r} is the vectors file itself; refusing to replace it with a "
                f"cache: pass another path, e.g. cache={str(suggestion)!r}"
            )
        check_replaceable(cache, where, "cache=")  # before the parse: fail fast, lose nothing
        cached = _try_cache(cache, path, options)
        if cached is not None:
            return cached
    tokens, matrix, index, info = _load.load_file(
        path, format, limit=limit, encoding=encoding, unicode_errors=unicode_errors, dtype=dtype,
        on_bad_line=on_bad_line, nonfinite=nonfinite, progress=progress, num_threads=num_threads,
    )
    if not tokens and limit != 0:
        warnings.warn(f"{path}: loaded 0 vectors: the file holds none", stacklevel=2)
    info.setdefault("load_options", options)  # a cache keeps the options of its first load
    v = Vectors(tokens, matrix, format=info["format"], source=str(path),
                _index=index, _info=info)
    if cache is not None:
        v.save(cache)
    return v


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _try_cache(cache: Path, source: Path, options: str) -> Vectors | None:
    """The cache's vectors if it is fresh (same source bytes, same options); ``None`` if it
    is absent or stale, and will be written again (it is an embtab cache: checked before)."""
    if not cache.exists() or cache.stat().st_size == 0:
        return None
    try:
        # As stored: a fresh cache was written by a load with these very options.
        tokens, matrix, index, info = _load.from_cache(cache, nonfinite="keep")
    except ValueError as e:
        warnings.warn(f"replacing the unreadable vectors cache {str(cache)!r}: {e}", stacklevel=3)
        return None
    if info["load_options"] != options or info["sha256"] != _load.file_sha256(source):
        recorded = info.get("source_name")
        if recorded and recorded != source.name:
            warnings.warn(f"replacing the vectors cache {str(cache)!r}, made from {recorded!r}, with one made "
                          f"from {source.name!r}", stacklevel=3)
        return None  # stale: another source or other options
    return Vectors(tokens, matrix, format="cache", source=str(cache), _index=index, _info=info)
