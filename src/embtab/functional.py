"""``embedding()`` and ``embedding_bag()``: validate, resolve out-of-vocabulary ids, dispatch.

Drop-in for ``torch.nn.functional.embedding`` / ``embedding_bag`` (same arguments, same
order, same results and gradients) plus keyword-only options:

- ``oov``: what an id ``< 0`` or ``>= num_embeddings`` does (see :mod:`embtab.oov`);
- ``num_oov_buckets``: with ``oov="hash"``, the last ``num_oov_buckets`` rows of
  ``weight`` are the hash buckets and ``num_embeddings = weight.shape[0] - num_oov_buckets``;
- ``backend``: ``"auto"`` (default), ``"torch"``, ``"reference"`` or ``"triton"``
  (see :func:`embtab.backends`).

Both build the table's :class:`~embtab.tables.spec.TableSpec` (checked once per distinct
set of arguments) and run the lookup pipeline of ``embtab/tables/pipeline.py``, the
same as the modules.

Host syncs on CUDA: ``oov="error"`` reads back one small tensor per call (to raise
before anything is wrong) and also checks the offsets' values then; other policies
never sync, and offsets are trusted.
"""

from __future__ import annotations

from typing import Any

import torch

from . import _checks
from .tables import pipeline
from .tables.spec import TableSpec

__all__ = ["embedding", "embedding_bag"]


def embedding(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    oov: str = "error",
    num_oov_buckets: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Look up rows of ``weight``: ``(*) -> (*, D)``, as ``torch.nn.functional.embedding``.

    Args:
        input: int64 or int32 ids, any shape.
        weight: ``(num_embeddings + num_oov_buckets, D)`` floating-point table.
        padding_idx: a row that gets no gradient (negative counts from the end of the
            in-vocabulary rows). The lookup still returns the row's values.
        max_norm: if set, each referenced row whose ``norm_type``-norm exceeds it is
            rescaled in place before the lookup (no gradient flows through this).
        scale_grad_by_freq: divide each row's gradient by the id's count in ``input``.
        sparse: return the weight gradient as a sparse COO tensor.
        oov: ``"error"`` | ``"padding"`` | ``"zero"`` | ``"hash"``.
        num_oov_buckets: hash buckets at the end of ``weight`` (``oov="hash"`` only).
        backend: ``"auto"`` | ``"torch"`` | ``"reference"`` | ``"triton"``.

    Example:
        >>> w = torch.randn(10, 3)
        >>> embedding(torch.tensor([[1, 2], [11, 4]]), w, padding_idx=0, oov="padding").shape
        torch.Size([2, 2, 3])
    """
    where = "embedding()"
    spec = _spec(where, weight, padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                 scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, oov=oov, num_oov_buckets=num_oov_buckets,
                 backend=backend)
    return pipeline.embedding(spec, weight, input, where=where)


def embedding_bag(
    input: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
    *,
    oov: str = "error",
    num_oov_buckets: int = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Reduce bags of rows: ``(B, L)`` or ``(N,)`` with ``offsets`` ``-> (B, D)``, as
    ``torch.nn.functional.embedding_bag``.

    Args:
        input: int64 or int32 ids: ``(B, L)`` fixed-length bags, or ``(N,)`` with ``offsets``.
        weight: ``(num_embeddings + num_oov_buckets, D)`` floating-point table.
        offsets: with a 1-D input, where each bag starts (``offsets[0] == 0``).
        max_norm, norm_type, scale_grad_by_freq, sparse: as in :func:`embedding`.
        mode: ``"sum"``, ``"mean"`` or ``"max"``; empty bags give zeros.
        per_sample_weights: weights of the same shape as ``input`` (``mode="sum"`` only).
        include_last_offset: ``offsets`` has B + 1 entries, the last one the end.
        padding_idx: a row left out of every bag (and of the mean's count).
        oov, num_oov_buckets, backend: as in :func:`embedding`. Under ``oov="zero"``
            an out-of-range id is dropped from its bag, like a padding id.

    Example:
        >>> w = torch.randn(10, 3)
        >>> embedding_bag(torch.tensor([1, 2, 4, 5]), w, torch.tensor([0, 2]), mode="sum").shape
        torch.Size([2, 3])
    """
    where = "embedding_bag()"
    spec = _spec(where, weight, padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                 scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, mode=mode,
                 include_last_offset=include_last_offset, oov=oov, num_oov_buckets=num_oov_buckets, backend=backend)
    return pipeline.embedding_bag(spec, weight, input, offsets, per_sample_weights, where=where)


# The spec of each distinct set of arguments, checked once: a training loop repeats them.
_specs: dict[tuple[Any, ...], TableSpec] = {}


def _spec(where: str, weight: torch.Tensor, **options: Any) -> TableSpec:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        _checks.check_weight(weight, where)
    if torch.compiler.is_compiling():
        return _make_spec(where, weight, options)
    key = (where, weight.shape, weight.dtype, *options.values())
    try:
        spec = _specs.get(key)
    except TypeError:  # an unhashable argument: the checks name it
        return _make_spec(where, weight, options)
    if spec is None:
        spec = _make_spec(where, weight, options)
        if len(_specs) > 4096:
            _specs.clear()
        _specs[key] = spec
    return spec


def _make_spec(where: str, weight: torch.Tensor, options: dict[str, Any]) -> TableSpec:
    _checks.check_weight(weight, where, pooled="mode" in options)
    buckets = _checks.check_oov(options["oov"], options["num_oov_buckets"], 0, where)
    num_embeddings = _checks.num_embeddings_of(weight.shape[0], buckets, where)
    return TableSpec.make(where, num_embeddings, weight.shape[1], **options)
