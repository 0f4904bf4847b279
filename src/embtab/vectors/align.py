"""A trainable embedding table aligned to a vocabulary, from pretrained vectors.

Row ``vocab[token]`` of the table gets the pretrained vector of ``token`` (or of
``token.lower()``, with the fallback), missing rows are initialised by a named
policy, the padding row is zero, and a :class:`CoverageReport` says how much was found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..vocab import Vocab
    from .core import Vectors

__all__ = ["embedding_from_vectors", "CoverageReport", "OOV_INITS"]

OOV_INITS = ("normal", "zeros", "mean")
NONFINITE = ("error", "keep")


@dataclass(frozen=True)
class CoverageReport:
    """How many vocabulary tokens the pretrained vectors cover.

    Specials (``<pad>``, ``<unk>``, ...) are not counted: they are rarely in pretrained
    vectors and are not words of the corpus.

    Attributes:
        tokens: vocabulary tokens counted (specials excluded).
        found: tokens found as they are.
        found_lowercase: tokens found only as their lower case.
        missing: tokens not found (initialised by ``oov_init``).
        occurrences: corpus occurrences of the counted tokens (from the vocab's counts).
        occurrences_covered: occurrences of found tokens (either way).
        top_missing: the most frequent missing tokens, ``(token, count)``, most frequent first.
        specials_found: specials that were found in the vectors (their rows are copied).
        oov_init: how missing rows were initialised.
        vectors: rows in the pretrained vectors.
        dim: their dimension.
    """

    tokens: int
    found: int
    found_lowercase: int
    missing: int
    occurrences: int
    occurrences_covered: int
    top_missing: tuple[tuple[str, int], ...]
    specials_found: tuple[str, ...]
    oov_init: str
    vectors: int
    dim: int

    @property
    def coverage(self) -> float:
        """Fraction of counted tokens found (exactly or by lower case)."""
        return (self.found + self.found_lowercase) / self.tokens if self.tokens else 0.0

    @property
    def occurrence_coverage(self) -> float:
        """Fraction of corpus occurrences whose token was found: what a model actually sees."""
        return self.occurrences_covered / self.occurrences if self.occurrences else 0.0

    def __str__(self) -> str:
        def pct(n: int) -> str:
            return f"{n / self.tokens:6.1%}" if self.tokens else "     -"

        width = len(f"{self.tokens:,}")
        lines = [
            f"Coverage of {self.tokens:,} vocabulary tokens by {self.vectors:,} vectors of dim {self.dim}:",
            f"  found            {self.found:>{width},}  {pct(self.found)}",
            f"  found lowercase  {self.found_lowercase:>{width},}  {pct(self.found_lowercase)}",
            f"  missing          {self.missing:>{width},}  {pct(self.missing)}  (initialised: {self.oov_init})",
        ]
        if self.occurrences:
            lines.append(
                f"  corpus occurrences covered: {self.occurrence_coverage:.1%} of {self.occurrences:,}"
            )
        if self.top_missing:
            shown = ", ".join(f"{t!r} ({c:,})" for t, c in self.top_missing[:10])
            lines.append(f"  most frequent missing: {shown}")
        return "\n".join(lines)


def embedding_from_vectors(
    vectors: "Vectors",
    vocab: "Vocab",
    *,
    embedding_cls: type,
    freeze: bool = False,
    oov_init: str = "normal",
    lowercase_fallback: bool = True,
    padding_idx: int | None | str = "auto",
    nonfinite: str = "error",
    **embedding_kwargs: Any,
) -> tuple[Any, CoverageReport]:
    """An embedding whose rows follow ``vocab``, copied from ``vectors`` where they exist.

    Args:
        vectors: pretrained :class:`~embtab.vectors.Vectors`.
        vocab: the :class:`~embtab.Vocab` whose ids index the table.
        embedding_cls: the module class, e.g. ``embtab.Embedding`` (what
            ``embtab.Embedding.from_vectors`` passes); built with its ``from_pretrained``.
        freeze: keep the weight fixed (``requires_grad=False``).
        oov_init: rows of tokens not found: ``"normal"`` (N(0, s^2) with s the standard
            deviation of all pretrained values, so they look like the found rows),
            ``"zeros"``, or ``"mean"`` (the mean pretrained vector). The statistics are
            taken over the finite rows only: a NaN or inf row never spreads.
        lowercase_fallback: a token not found as is takes the vector of its lower case.
        padding_idx: ``"auto"`` (the vocab's ``pad_id``), an int, or ``None``. The
            padding row is zero and gets no gradient.
        nonfinite: ``"error"`` (default): a pretrained vector holding NaN or inf that
            would be copied into the table is an error naming its token; ``"keep"``:
            copied as it is. Either way such rows are left out of the statistics that
            initialise missing rows and hash buckets. A finite vector that overflows
            ``dtype`` when converted is always an error.
        **embedding_kwargs: passed to ``embedding_cls.from_pretrained`` (``max_norm``,
            ``sparse``, ``oov``, ``num_oov_buckets``, ...); ``device`` and ``dtype``
            place and convert the weight.

    Returns:
        ``(embedding, report)``: the module, ``len(vocab)`` rows of ``vectors.dim``, and
        its :class:`CoverageReport`.

    Examples:
        >>> emb, report = embtab.Embedding.from_vectors(vectors, vocab)   # doctest: +SKIP
        >>> print(report)                                                  # doctest: +SKIP
        Coverage of 12,345 vocabulary tokens by 400,000 vectors of dim 300:
          found            11,002   89.1%
          ...
    """
    from ..vocab import Vocab
    from .core import Vectors

    where = f"{getattr(embedding_cls, '__name__', 'embedding')}.from_vectors"
    if not isinstance(vectors, Vectors):
        raise TypeError(
            f"{where}: vectors must be embtab.vectors.Vectors, got {type(vectors).__name__}; "
            f"load them with embtab.vectors.load(path)"
        )
    if not isinstance(vocab, Vocab):
        raise TypeError(f"{where}: vocab must be an embtab.Vocab, got {type(vocab).__name__}; build one with Vocab.build")
    if oov_init not in OOV_INITS:
        raise ValueError(f"{where}: oov_init must be one of {OOV_INITS}, got oov_init={oov_init!r}")
    if nonfinite not in NONFINITE:
        raise ValueError(f"{where}: nonfinite must be one of {NONFINITE}, got nonfinite={nonfinite!r}")
    if padding_idx == "auto":
        padding_idx = vocab.pad_id
    elif isinstance(padding_idx, str):
        raise ValueError(f"{where}: padding_idx must be 'auto', an int or None, got {padding_idx!r}")
    device = embedding_kwargs.pop("device", None)
    dtype = embedding_kwargs.pop("dtype", None) or vectors.vectors.dtype
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{where}: dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = torch.device(device) if device is not None else vectors.vectors.device

    # Which row of the vectors each vocab id takes: -1 when missing.
    specials = set(vocab.specials)
    src = []
    found = found_lower = 0
    missing: list[tuple[str, int]] = []
    occurrences = covered = 0
    specials_found = []
    for tok in vocab.tokens:
        row = vectors._index.get(tok)
        lower = False
        if row is None and lowercase_fallback:
            row = vectors._index.get(tok.lower())
            lower = row is not None
        src.append(-1 if row is None else row)
        if tok in specials:
            if row is not None:
                specials_found.append(tok)
            continue
        count = vocab.count(tok)
        occurrences += count
        if row is None:
            missing.append((tok, count))
        else:
            covered += count
            if lower:
                found_lower += 1
            else:
                found += 1

    rows, dim = len(vocab), vectors.dim
    pretrained = vectors.vectors
    if padding_idx is not None and (
        isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not -rows <= padding_idx < rows
    ):
        raise ValueError(
            f"{where}: padding_idx must be 'auto', None or an id in [{-rows}, {rows - 1}], got {padding_idx!r}"
        )
    finite = _finite_rows(pretrained)  # (n,) on the vectors' device
    weight = torch.empty((rows, dim), dtype=dtype, device=device)  # (V, D)
    src_t = torch.tensor(src, dtype=torch.int64, device=device)  # (V,)
    have = src_t >= 0
    copy = have.clone()
    if padding_idx is not None:
        copy[padding_idx] = False  # zeroed below: whatever the vectors hold for it is not copied
    dst = copy.nonzero().squeeze(1)  # (F,) vocab ids whose pretrained row is copied
    rows_of = src_t[dst].to(pretrained.device)  # (F,)
    if nonfinite == "error":
        bad = (~finite[rows_of]).nonzero().squeeze(1)
        if bad.numel():
            _raise_nonfinite(where, vectors, vocab, int(dst[int(bad[0])]), int(rows_of[int(bad[0])]), bad.numel(),
                             dst.numel())
    with torch.no_grad():
        _fill_missing(weight, ~have, pretrained, finite, oov_init, where)
        if dst.numel():
            weight[dst] = pretrained.index_select(0, rows_of).to(device=device, dtype=dtype)
            if dtype != pretrained.dtype:
                # A finite vector must stay finite in the table's dtype (70000 is inf in float16).
                over = (~torch.isfinite(weight[dst]).all(1)) & finite[rows_of].to(device)
                if bool(over.any()):
                    i = int(over.nonzero()[0])
                    vid, row = int(dst[i]), int(rows_of[i])
                    big = float(pretrained[row].abs().max())
                    raise ValueError(
                        f"{where}: the pretrained vector of {vectors.tokens[row]!r} (row {row} of the vectors), for "
                        f"vocabulary token {vocab.tokens[vid]!r} (id {vid}), holds {big:g}, which overflows {dtype} "
                        f"(its largest finite value is {torch.finfo(dtype).max:g}); pass dtype={pretrained.dtype} (the "
                        f"vectors' own) or another wider one"
                    )
        if padding_idx is not None:
            weight[padding_idx].zero_()

    emb = embedding_cls.from_pretrained(weight, freeze=freeze, padding_idx=padding_idx, nonfinite=nonfinite,
                                        **embedding_kwargs)
    missing.sort(key=lambda tc: -tc[1])  # stable: equal counts stay in vocab order
    report = CoverageReport(
        tokens=len(vocab) - len(specials),
        found=found,
        found_lowercase=found_lower,
        missing=len(missing),
        occurrences=occurrences,
        occurrences_covered=covered,
        top_missing=tuple(missing[:20]),
        specials_found=tuple(specials_found),
        oov_init=oov_init,
        vectors=len(vectors),
        dim=dim,
    )
    return emb, report


def _raise_nonfinite(
    where: str, vectors: "Vectors", vocab: "Vocab", vid: int, row: int, count: int, copied: int
) -> None:
    vec = vectors.vectors[row]
    value = vec[~torch.isfinite(vec)][0].item()
    raise ValueError(
        f"{where}: the pretrained vector of {vectors.tokens[row]!r} (row {row} of the vectors), for vocabulary "
        f"token {vocab.tokens[vid]!r} (id {vid}), holds {value} (not finite); {count} of the {copied} vectors to "
        f"copy do. Fix the vectors (embtab.vectors.load refuses such rows unless nonfinite='keep'), or pass "
        f"nonfinite='keep' to copy them as they are (they are never used to initialise other rows)"
    )


def _finite_rows(x: Tensor, block: int = 1 << 16) -> Tensor:
    """Whether each row of ``x`` is all finite: ``(n,)`` bool, block by block."""
    out = torch.empty(x.shape[0], dtype=torch.bool, device=x.device)
    for s in range(0, x.shape[0], block):
        out[s : s + block] = torch.isfinite(x[s : s + block]).all(1)
    return out


def _fill_missing(weight: Tensor, mask: Tensor, pretrained: Tensor, finite: Tensor, oov_init: str, where: str) -> None:
    """Initialise rows ``mask`` of ``weight`` by ``oov_init``, from statistics of the finite rows of ``pretrained``."""
    n = int(mask.sum())
    if n == 0:
        return
    if oov_init == "zeros":
        weight[mask] = 0
        return
    n_finite = int(finite.sum())
    if n_finite == 0:
        what = ("pretrained vector" if pretrained.shape[0] == 0
                else f"finite pretrained vector (all {pretrained.shape[0]} hold NaN or inf)")
        raise ValueError(f"{where}: oov_init={oov_init!r} needs at least one {what}; pass oov_init='zeros'")
    all_finite = n_finite == pretrained.shape[0]
    stats = None
    if pretrained.numel() < (1 << 24):
        stats = (pretrained if all_finite else pretrained[finite]).to(torch.float64)
    rows_mask = None if all_finite else finite
    if oov_init == "mean":
        mean = stats.mean(0) if stats is not None else _blocked_mean(pretrained, rows_mask)
        weight[mask] = mean.to(device=weight.device, dtype=weight.dtype)
        return
    # "normal": N(0, s^2), s the standard deviation of all (finite) pretrained values.
    if stats is not None:
        std = float(stats.std()) if stats.numel() > 1 else 1.0
    else:
        std = _blocked_std(pretrained, rows_mask)
    noise = torch.randn((n, weight.shape[1]), dtype=torch.float32).to(weight.device) * std
    weight[mask] = noise.to(weight.dtype)


def _blocks(x: Tensor, rows: Tensor | None, block: int):  # type: ignore[no-untyped-def]
    """Blocks of ``x`` in float64, only the rows ``rows`` marks (all if ``None``)."""
    for s in range(0, x.shape[0], block):
        part = x[s : s + block]
        if rows is not None:
            part = part[rows[s : s + block]]
        yield part.to(torch.float64)


def _blocked_mean(x: Tensor, rows: Tensor | None = None, block: int = 1 << 16) -> Tensor:
    """Column means in float64 (of the rows ``rows`` marks) without a float64 copy of the whole matrix."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    count = 0
    for part in _blocks(x, rows, block):
        total += part.sum(0)
        count += part.shape[0]
    return total / max(count, 1)


def _blocked_std(x: Tensor, rows: Tensor | None = None, block: int = 1 << 16) -> float:
    """Standard deviation of all values (of the rows ``rows`` marks), in float64, block by block (two passes)."""
    mean = float(_blocked_mean(x, rows, block).mean())
    sq = 0.0
    n = 0
    for part in _blocks(x, rows, block):
        sq += float(((part - mean) ** 2).sum())
        n += part.numel()
    return (sq / max(n - 1, 1)) ** 0.5
