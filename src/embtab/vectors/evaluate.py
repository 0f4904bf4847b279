"""Intrinsic evaluation of word vectors, on torch tensors (CPU or GPU).

The semantics are gensim's (``KeyedVectors.most_similar``, ``evaluate_word_pairs``,
``evaluate_word_analogies``), re-implemented in torch and checked against gensim in
the tests:

* only the first ``restrict_vocab`` rows take part; with ``case_insensitive`` words are
  compared upper-cased, and of several case variants the first row wins;
* word pairs with an unknown word are skipped (or scored 0 with ``dummy4unknown``);
* analogies ``a : b :: c : expected`` use 3CosAdd: the unit vectors of ``b`` and ``c``
  minus that of ``a``, the 5 nearest rows other than a, b and c, and the first of them
  that is not an upper-case variant of a, b or c is the prediction.

The arithmetic follows gensim's order of operations in float32, so results agree up
to the last bits of a dot product (a BLAS may sum in another order).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .core import Vectors

__all__ = ["most_similar", "similarity", "evaluate_word_pairs", "evaluate_analogies", "WordPairsResult",
           "AnalogyResult"]

# Elements of the (queries x rows) similarity block computed at once: bounds memory.
_BLOCK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class WordPairsResult:
    """Correlation of cosine similarities with human judgements.

    Attributes:
        pearson: Pearson's r.
        spearman: Spearman's rho.
        oov_ratio: the fraction (0..1) of pairs with a word missing from the vectors
            (gensim reports the same number as a percentage).
        pairs: pairs scored.
        oov: pairs with a missing word.
        invalid_lines: lines that are not ``word<delim>word<delim>number`` (skipped).
    """

    pearson: float
    spearman: float
    oov_ratio: float
    pairs: int
    oov: int
    invalid_lines: int = 0

    def __str__(self) -> str:
        return (
            f"word pairs: Spearman {self.spearman:.4f}, Pearson {self.pearson:.4f} over {self.pairs} "
            f"pairs; {self.oov_ratio:.1%} of pairs had an unknown word"
        )


@dataclass(frozen=True)
class AnalogyResult:
    """Accuracy on analogy questions.

    Attributes:
        accuracy: correct / evaluated over all sections (0.0 if none was evaluated).
        sections: section name -> accuracy (0.0 for a section with nothing evaluated).
        section_counts: section name -> ``(correct, evaluated)``.
        correct: questions answered correctly.
        evaluated: questions evaluated (all four words known, unless ``dummy4unknown``).
        oov: questions with a word outside the first ``restrict_vocab`` rows.
        oov_ratio: ``oov`` / all questions (gensim logs it as a percentage).
    """

    accuracy: float
    sections: Mapping[str, float]
    section_counts: Mapping[str, tuple[int, int]] = field(repr=False)
    correct: int
    evaluated: int
    oov: int
    oov_ratio: float

    def __str__(self) -> str:
        lines = [f"analogies: {self.accuracy:.1%} ({self.correct}/{self.evaluated}); "
                 f"{self.oov_ratio:.1%} of questions had an unknown word"]
        for name, acc in self.sections.items():
            c, n = self.section_counts[name]
            lines.append(f"  {name}: {acc:.1%} ({c}/{n})")
        return "\n".join(lines)


# ---------------------------------------------------------------------- helpers
def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _ok_vocab(v: "Vectors", restrict_vocab: int | None, case_insensitive: bool) -> dict[str, int]:
    """Word -> row over the first ``restrict_vocab`` rows; of equal keys the first row wins."""
    end = len(v) if restrict_vocab is None else min(restrict_vocab, len(v))
    tokens = v.tokens
    ok: dict[str, int] = {}
    # Backwards, so that the earliest row of each (upper-cased) key is the one kept.
    for i in range(end - 1, -1, -1):
        key = tokens[i].upper() if case_insensitive else tokens[i]
        ok[key] = i
    return ok


def _unit(x: Tensor) -> Tensor:
    """Rows scaled to unit length; zero rows unchanged (gensim's ``unitvec``)."""
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.where(norms > 0, x / torch.where(norms > 0, norms, torch.ones_like(norms)), x)


def _top_rows(v: "Vectors", queries: Tensor, end: int, k: int) -> tuple[Tensor, Tensor]:
    """Cosine of unit ``queries`` (Q, D) with rows ``[0, end)``; top ``k`` per query: (Q, k) values, ids.

    As gensim: ``dot(vectors, query) / norms``; rows of norm 0 (or not finite) never rank.
    """
    vectors = v.vectors
    cdt = _compute_dtype(vectors)
    norms = v._norms_of()[:end].to(cdt)  # (R,)
    k = min(k, end)
    q_block = max(1, _BLOCK_ELEMENTS // max(end, 1))
    r_block = max(1, _BLOCK_ELEMENTS // max(queries.shape[0], 1))
    best_v, best_i = [], []
    for qs in range(0, queries.shape[0], q_block):
        q = queries[qs : qs + q_block].to(cdt)  # (q, D)
        parts = []
        for rs in range(0, end, r_block):
            rows = vectors[rs : min(end, rs + r_block)].to(cdt)  # (r, D)
            n = norms[rs : rs + rows.shape[0]]
            sims = (q @ rows.T) / n  # (q, r)
            # Rows of norm 0, and rows holding NaN or inf (kept with nonfinite="keep"), never rank.
            ranks = (n > 0) & torch.isfinite(n)
            parts.append(torch.where(ranks, sims, torch.full_like(sims, -math.inf)))
        sims = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (q, R)
        val, idx = torch.topk(sims, k, dim=1)
        best_v.append(val)
        best_i.append(idx)
    return torch.cat(best_v), torch.cat(best_i)


# ---------------------------------------------------------------------- most_similar
def _items(value: object, where: str, dim: int) -> list[object]:
    """``positive``/``negative`` as a list of items (gensim's ``_ensure_list``): a token, a
    vector, or a ``(token or vector, weight)`` pair each."""
    if value is None:
        return []
    if isinstance(value, (str, Tensor, np.ndarray)):
        if isinstance(value, (Tensor, np.ndarray)) and value.ndim == 2:
            return list(value)  # (m, dim): m vectors
        return [value]
    if isinstance(value, (list, tuple)):
        if len(value) == dim and value and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            return [torch.tensor(value, dtype=torch.float64)]  # one vector written as a list of numbers
        return list(value)
    raise TypeError(
        f"{where}: expected a token, a vector, or a list of tokens, vectors and (token or vector, weight) "
        f"pairs, got {type(value).__name__}"
    )


def most_similar(
    v: "Vectors",
    positive: object = None,
    negative: object = None,
    topn: int = 10,
    *,
    restrict_vocab: int | None = None,
) -> list[tuple[str, float]]:
    """The ``topn`` rows most cosine-similar to the weighted mean of ``positive`` and
    ``negative`` tokens or vectors: gensim's ``KeyedVectors.most_similar``.

    As gensim: each token counts as its unit vector, each vector as it is, with weight
    1 (``positive``) or -1 (``negative``) unless given as a ``(item, weight)`` pair; the
    weighted sum is divided by the sum of the absolute weights and normalised; the
    tokens given are left out of the result; rows of norm 0 never rank.

    Args:
        v: the vectors.
        positive: a token, a ``(dim,)`` vector, or a list of tokens, vectors and
            ``(token or vector, weight)`` pairs.
        negative: the same, counted against.
        topn: how many results (fewer than 1: none).
        restrict_vocab: search only the first ``restrict_vocab`` rows.

    Returns:
        ``[(token, cosine), ...]``, best first.

    Examples:
        >>> v.most_similar("king", topn=3)                                   # doctest: +SKIP
        [('queen', 0.75), ('prince', 0.70), ('monarch', 0.69)]
        >>> v.most_similar(positive=["king", "woman"], negative=["man"], topn=1)  # doctest: +SKIP
        [('queen', 0.71)]
    """
    where = "most_similar"
    if topn is None:
        raise TypeError(f"{where}: topn=None (gensim's similarities to every row) is not supported; pass "
                        f"topn=len(v) for all rows, ranked")
    if isinstance(topn, bool) or not isinstance(topn, int):
        raise TypeError(f"{where}: topn must be an int, got {topn!r}")
    pos, neg = _items(positive, where, v.dim), _items(negative, where, v.dim)
    if not pos and not neg:
        raise ValueError(f"{where}: nothing to compare with: pass positive= and/or negative= tokens or vectors")
    if topn < 1 or len(v) == 0:
        return []
    end = len(v) if not restrict_vocab else min(restrict_vocab, len(v))
    vectors = v.vectors
    cdt = _compute_dtype(vectors)
    norms = v._norms_of()
    mean = torch.zeros(v.dim, dtype=cdt, device=vectors.device)  # (D,)
    total = 0.0
    exclude: set[int] = set()
    for item, default in [(x, 1.0) for x in pos] + [(x, -1.0) for x in neg]:
        weight = default
        if isinstance(item, tuple):
            if len(item) != 2:
                raise TypeError(f"{where}: a weighted item is a pair (token or vector, weight), got {item!r}")
            item, weight = item
            weight = float(weight)
        if isinstance(item, str):
            i = v.index(item)  # KeyError naming a missing token
            exclude.add(i)
            vec = vectors[i].to(cdt) / norms[i].to(cdt)  # the unit vector, as gensim's get_vector(norm=True)
        else:
            vec = torch.as_tensor(item, device=vectors.device).to(cdt)
            if vec.shape != (v.dim,):
                raise ValueError(f"{where}: a query vector must have shape ({v.dim},), got {tuple(vec.shape)}")
        # gensim: the float64 weight times the vector, added into a mean of the vectors' dtype.
        mean = (mean.double() + weight * vec.double()).to(cdt)
        total += abs(weight)
    query = mean.double() / total if total > 0 else mean.double()
    query = _unit(query).to(cdt)
    val, idx = _top_rows(v, query[None], end, topn + len(exclude))
    out = [(v.tokens[i], s) for s, i in zip(val[0].tolist(), idx[0].tolist()) if i not in exclude]
    return out[:topn]


def similarity(v: "Vectors", a: str, b: str) -> float:
    """Cosine similarity of two tokens' vectors (gensim's ``similarity``); 0 if one is all zeros."""
    cdt = _compute_dtype(v.vectors)
    x, y = _unit(v[a].to(cdt)), _unit(v[b].to(cdt))
    return float(torch.dot(x, y))


# ---------------------------------------------------------------------- word pairs
def _rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (scipy's ``rankdata(method='average')``)."""
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size)
    a = a[sorter]
    obs = np.r_[True, a[1:] != a[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], len(obs)]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r as scipy computes it; NaN for a constant input (no correlation)."""
    # Tested on the values, not on the centred norms: x - mean(x) of equal values can be
    # a tiny non-zero rounding residue.
    if (x == x[0]).all() or (y == y[0]).all():
        return math.nan
    x = x - x.mean()
    y = y - y.mean()
    # Scaled to a largest magnitude of 1 first, as scipy does: the squares of tiny
    # (or huge) deviations would underflow to 0 (or overflow) inside the norms.
    x = x / np.abs(x).max()
    y = y / np.abs(y).max()
    return float(np.clip(np.dot(x / np.linalg.norm(x), y / np.linalg.norm(y)), -1.0, 1.0))


def evaluate_word_pairs(
    v: "Vectors",
    path: str | os.PathLike[str],
    *,
    delimiter: str = "\t",
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
    encoding: str = "utf8",
) -> WordPairsResult:
    """Correlate the vectors' cosine similarities with human scores (WordSim-353, SimLex-999).

    Args:
        v: the vectors.
        path: lines ``word1<delimiter>word2<delimiter>score``; ``#`` starts a comment line.
        restrict_vocab: only the first ``restrict_vocab`` rows count as known.
        case_insensitive: compare words upper-cased (first row of a case variant wins).
        dummy4unknown: score pairs with an unknown word as 0 instead of skipping them.

    Returns:
        :class:`WordPairsResult` with ``.spearman``, ``.pearson`` and ``.oov_ratio``.

    Examples:
        >>> v.evaluate_word_pairs("wordsim353.tsv").spearman    # doctest: +SKIP
        0.65
    """
    where = f"evaluate_word_pairs({str(path)!r})"
    ok = _ok_vocab(v, restrict_vocab, case_insensitive)
    gold: list[float] = []
    pairs: list[tuple[int, int] | None] = []  # None: an unknown word, scored 0
    oov = invalid = 0
    with open(path, encoding=encoding) as f:
        for line in f:
            if not line or line.startswith("#"):
                continue
            parts = line.split(delimiter)
            if len(parts) != 3:
                invalid += 1
                continue
            a, b, score = (p.upper() for p in parts) if case_insensitive else parts
            try:
                sim = float(score)
            except ValueError:
                invalid += 1
                continue
            if a not in ok or b not in ok:
                oov += 1
                if dummy4unknown:
                    gold.append(sim)
                    pairs.append(None)
                continue
            gold.append(sim)
            pairs.append((ok[a], ok[b]))
    if len(gold) < 2:
        what = "no pair" if not gold else "only 1 pair"
        raise ValueError(
            f"{where}: {what} to score (a correlation needs 2): the other lines are invalid or "
            f"have a word outside the first {restrict_vocab} of {len(v)} vectors"
        )
    known = [p for p in pairs if p is not None]
    model = np.zeros(len(pairs), dtype=np.float64)
    if known:
        ids = torch.tensor(known, device=v.vectors.device)  # (P, 2)
        cdt = _compute_dtype(v.vectors)
        a_vec = _unit(v.vectors[ids[:, 0]].to(cdt))  # (P, D)
        b_vec = _unit(v.vectors[ids[:, 1]].to(cdt))
        sims = (a_vec * b_vec).sum(dim=1).cpu().numpy()
        mask = np.array([p is not None for p in pairs])
        model[mask] = sims
    gold_a = np.asarray(gold, dtype=np.float64)
    pearson = _pearson(gold_a, model)
    spearman = _pearson(_rankdata(gold_a), _rankdata(model))
    # gensim divides by the pairs scored plus the skipped ones (or by the pairs scored,
    # which then include the unknown ones, with dummy4unknown).
    oov_ratio = oov / len(gold) if dummy4unknown else oov / (len(gold) + oov)
    return WordPairsResult(pearson=pearson, spearman=spearman, oov_ratio=oov_ratio, pairs=len(gold),
                           oov=oov, invalid_lines=invalid)


# ---------------------------------------------------------------------- analogies
def evaluate_analogies(
    v: "Vectors",
    path: str | os.PathLike[str],
    *,
    restrict_vocab: int = 300000,
    case_insensitive: bool = True,
    dummy4unknown: bool = False,
) -> AnalogyResult:
    """Accuracy on analogy questions ``a b c expected`` (Google's ``questions-words.txt``).

    Args:
        v: the vectors.
        path: sections started by ``: name`` lines, then one question per line.
        restrict_vocab: questions with a word outside the first ``restrict_vocab`` rows
            are skipped (or counted wrong with ``dummy4unknown``); answers are searched
            among these rows only.
        case_insensitive: compare words upper-cased.
        dummy4unknown: count questions with an unknown word as wrong instead of skipping them.

    Returns:
        :class:`AnalogyResult` with ``.accuracy`` and ``.sections`` (name -> accuracy).

    Examples:
        >>> r = v.evaluate_analogies("questions-words.txt")    # doctest: +SKIP
        >>> r.accuracy, r.sections["capital-common-countries"]  # doctest: +SKIP
        (0.71, 0.93)
    """
    where = f"evaluate_analogies({str(path)!r})"
    ok = _ok_vocab(v, restrict_vocab, case_insensitive)
    end = min(restrict_vocab, len(v))
    names: list[str] = []
    counts: dict[str, list[int]] = {}  # name -> [correct, evaluated]
    questions: list[tuple[str, tuple[str, str, str, str]]] = []  # (section, upper-cased words)
    oov = total = 0
    section: str | None = None
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: line {line_no} is not valid UTF-8 ({e.reason})") from e
            if line.startswith(": "):
                section = line.lstrip(": ").strip()
                if section not in counts:
                    names.append(section)
                    counts[section] = [0, 0]
                continue
            if section is None:
                raise ValueError(
                    f"{where}: line {line_no} comes before any section header; the file must "
                    f"start with a line ': section-name'"
                )
            words = line.split()
            if len(words) != 4:
                continue  # gensim skips malformed lines too
            if case_insensitive:
                words = [w.upper() for w in words]
            total += 1
            if any(w not in ok for w in words):
                oov += 1
                if dummy4unknown:
                    counts[section][1] += 1
                continue
            questions.append((section, (words[0], words[1], words[2], words[3])))
    if total == 0:
        raise ValueError(f"{where}: no analogy question (4 words per line) in the file")
    for (name, quad), correct in zip(questions, _answer(v, questions, ok, end, case_insensitive)):
        counts[name][1] += 1
        counts[name][0] += int(correct)
    correct_all = sum(c for c, _ in counts.values())
    evaluated = sum(n for _, n in counts.values())
    return AnalogyResult(
        accuracy=correct_all / evaluated if evaluated else 0.0,
        sections={n: (counts[n][0] / counts[n][1] if counts[n][1] else 0.0) for n in names},
        section_counts={n: (counts[n][0], counts[n][1]) for n in names},
        correct=correct_all,
        evaluated=evaluated,
        oov=oov,
        oov_ratio=oov / total,
    )


def _answer(
    v: "Vectors", questions: list[tuple[str, tuple[str, str, str, str]]], ok: dict[str, int], end: int,
    case_insensitive: bool,
) -> list[bool]:
    """Whether 3CosAdd answers each question correctly."""
    if not questions:
        return []
    vectors = v.vectors
    cdt = _compute_dtype(vectors)
    ids = torch.tensor([[ok[w] for w in quad[:3]] for _, quad in questions], device=vectors.device)  # (Q, 3)
    norms = v._norms_of().to(cdt)
    unit = lambda j: vectors[ids[:, j]].to(cdt) / norms[ids[:, j], None]  # noqa: E731  (Q, D)
    # gensim adds the weighted unit vectors in this order, then divides by the total
    # weight (3) in float64 and normalises; the division does not change the direction
    # but it does change the last bits, so it is kept.
    mean = (unit(1) + unit(2)) - unit(0)  # (Q, D)
    mean = _unit(mean.double() / 3.0).to(cdt)
    _, top = _top_rows(v, mean, end, 8)  # (Q, 8): 5 answers + the 3 input rows
    out = []
    tokens = v.tokens
    for (_, (a, b, c, expected)), row_ids, cand in zip(questions, ids.tolist(), top.tolist()):
        ignore = {a, b, c}
        predicted = None
        for i in [i for i in cand if i not in row_ids][:5]:
            predicted = tokens[i].upper() if case_insensitive else tokens[i]
            if predicted in ok and predicted not in ignore:
                break
        out.append(predicted == expected)
    return out
