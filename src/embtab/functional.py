"""``embedding()`` and ``embedding_bag()``: validate, resolve out-of-vocabulary ids, dispatch.

Drop-in for ``torch.nn.functional.embedding`` / ``embedding_bag`` (same arguments, same
order, same results and gradients) plus keyword-only options:

- ``oov``: what an id ``< 0`` or ``>= num_embeddings`` does (see :mod:`embtab.oov`);
- ``num_oov_buckets``: with ``oov="hash"``, the last ``num_oov_buckets`` rows of
  ``weight`` are the hash buckets and ``num_embeddings = weight.shape[0] - num_oov_buckets``;
- ``backend``: ``"auto"`` (default), ``"torch"``, ``"reference"`` or ``"triton"``
  (see :mod:`embtab.ops.dispatch`).

Host syncs on CUDA: ``oov="error"`` reads back one small tensor per call (to raise
before anything is wrong) and also checks the offsets' values then; other policies
never sync, and offsets are trusted.
"""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import Iterator, cast

import numpy as np
import torch

from . import _checks, oov as _oov
from .ops import dispatch
from .ops.autograd import (
    EmbeddingBagFunction,
    EmbeddingFunction,
    FusedEmbeddingBagFunction,
    FusedEmbeddingFunction,
)

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
    return _embedding(
        input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
        oov, num_oov_buckets, backend, where="embedding()",
    )


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
    return _embedding_bag(
        input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode, sparse,
        per_sample_weights, include_last_offset, padding_idx, oov, num_oov_buckets, backend,
        where="embedding_bag()",
    )


# --- shared by the functionals and the modules ---------------------------------------


def _check_table(
    weight: torch.Tensor, padding_idx: int | None, max_norm: float | None, norm_type: float,
    scale_grad_by_freq: bool, sparse: bool, oov: str, num_oov_buckets: int, backend: str, where: str,
) -> tuple[int, int | None, int]:
    """Checks common to both lookups; returns (num_embeddings, padding_idx, num_oov_buckets)."""
    _checks.check_weight(weight, where)
    args = (weight.shape[0], padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, oov,
            num_oov_buckets, backend, where)
    try:
        # The same arguments arrive on every call of a module: check them once.
        return _check_table_args_cached(*args)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        return _check_table_args(*args)  # raises the helpful error for the odd value


def _check_table_args(
    rows: int, padding_idx: int | None, max_norm: float | None, norm_type: float,
    scale_grad_by_freq: bool, sparse: bool, oov: str, num_oov_buckets: int, backend: str, where: str,
) -> tuple[int, int | None, int]:
    # The policy first (padding_idx=0 stands in: its requirement is checked below).
    buckets = _checks.check_oov(oov, num_oov_buckets, 0, where)
    num_embeddings = _checks.num_embeddings_of(rows, buckets, where)
    padding_idx = _checks.normalize_padding_idx(padding_idx, num_embeddings, where)
    _checks.check_oov(oov, buckets, padding_idx, where)
    _checks.check_max_norm(max_norm, norm_type, where)
    _checks.check_sparse(sparse, scale_grad_by_freq, where)
    dispatch.check_backend_name(backend, where)
    return num_embeddings, padding_idx, buckets


_check_table_args_cached = functools.lru_cache(maxsize=1024)(_check_table_args)


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _embedding(
    input: torch.Tensor, weight: torch.Tensor, padding_idx: int | None, max_norm: float | None,
    norm_type: float, scale_grad_by_freq: bool, sparse: bool, oov: str, num_oov_buckets: int,
    backend: str, *, where: str, counter: torch.Tensor | None = None, fused: object = None,
) -> torch.Tensor:
    num_embeddings, padding_idx, buckets = _check_table(
        weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, oov, num_oov_buckets,
        backend, where,
    )
    _checks.check_ids(input, "input", where)
    _checks.check_same_device(input, weight, "input", where)
    be = dispatch.select(backend, weight.device, where)
    if _kernel_checks_range(be, input, oov, max_norm):
        with _name_out_of_range_ids(input, num_embeddings, where, input.shape):
            return _embedding_lookup(input, weight, be, padding_idx, scale_grad_by_freq, sparse, fused)
    ids, has_skip = _oov.resolve(input, num_embeddings, oov, padding_idx, buckets, where, counter)
    if has_skip and not be.supports_skip:
        return _embedding_compacted(ids, weight, be, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, fused)
    if max_norm is not None:
        be.renorm_(weight.detach(), ids, max_norm, norm_type)
    return _embedding_lookup(ids, weight, be, padding_idx, scale_grad_by_freq, sparse, fused)


def _embedding_lookup(
    ids: torch.Tensor, weight: torch.Tensor, be: ModuleType, padding_idx: int | None,
    scale_grad_by_freq: bool, sparse: bool, fused: object,
) -> torch.Tensor:
    if not _needs_grad(weight):
        return be.embedding_forward(weight, ids)
    if fused is not None:  # a fused optimizer: backward updates the rows
        return FusedEmbeddingFunction.apply(weight, ids, be, padding_idx, scale_grad_by_freq, fused)
    return EmbeddingFunction.apply(weight, ids, be, padding_idx, scale_grad_by_freq, sparse)


def _kernel_checks_range(be: ModuleType, ids: torch.Tensor, oov: str, max_norm: float | None) -> bool:
    """Whether the lookup kernel's own bounds check can stand in for ours.

    With ``oov="error"`` on CPU, torch's kernels already refuse an out-of-range id
    (with a message that names nothing). Letting them check, and naming the id only
    when they refuse, saves a pass over the ids on every call. Not with ``max_norm``:
    the renorm runs first, and would wrap a negative id to the last row.
    """
    return oov == "error" and max_norm is None and ids.device.type == "cpu" and getattr(be, "checks_bounds", False)


@contextlib.contextmanager
def _name_out_of_range_ids(
    ids: torch.Tensor, num_embeddings: int, where: str, shape: torch.Size
) -> Iterator[None]:
    """Turn a kernel's bare bounds error into our IndexError that names the id."""
    try:
        yield
    except (IndexError, RuntimeError):
        try:
            _oov.resolve(ids, num_embeddings, "error", None, 0, where, None, shape)
        except IndexError as named:
            raise named from None
        raise  # not an out-of-range id after all


def _embedding_compacted(
    ids: torch.Tensor, weight: torch.Tensor, be: ModuleType, padding_idx: int | None,
    max_norm: float | None, norm_type: float, scale_grad_by_freq: bool, sparse: bool, fused: object = None,
) -> torch.Tensor:
    """Lookup for a backend without SKIP support: look up the kept ids, zeros elsewhere."""
    flat = ids.reshape(-1)
    keep = flat >= 0  # (N,)
    kept = flat[keep]
    if max_norm is not None:
        be.renorm_(weight.detach(), kept, max_norm, norm_type)
    rows = _embedding_lookup(kept, weight, be, padding_idx, scale_grad_by_freq, sparse, fused)
    out = rows.new_zeros(keep.numel(), weight.shape[1]).masked_scatter(keep.unsqueeze(1), rows)
    return out.reshape(*ids.shape, weight.shape[1])


def _canonical_bags(
    input: torch.Tensor, offsets: torch.Tensor | None, per_sample_weights: torch.Tensor | None,
    include_last_offset: bool, check_values: bool, where: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flat ids (N,), offsets (B + 1,) ending at N, flat per-sample weights (N,)."""
    if input.dim() == 2:
        num_bags, length = input.shape
        ids = input.reshape(-1)
        ends = torch.arange(num_bags + 1, dtype=input.dtype, device=input.device) * length
        psw = None if per_sample_weights is None else per_sample_weights.reshape(-1)
        return ids, ends, psw
    offsets = cast(torch.Tensor, offsets)  # not None: check_offsets_shape saw to it
    num_ids = input.numel()
    # On CPU, numpy on a zero-copy view: a few microseconds, where each small torch op
    # costs about ten, and this runs on every call.
    o = offsets.numpy() if offsets.device.type == "cpu" else None
    if check_values and offsets.numel() > 0:
        if o is not None:
            first, last = int(o[0]), int(o[-1])
            low = 0
            if o.size > 1 and (o[1:] < o[:-1]).any():
                low = int((o[1:] - o[:-1]).min())
        else:
            steps = offsets[1:] - offsets[:-1]
            min_step = steps.min() if steps.numel() else offsets.new_zeros(())
            first, last, low = torch.stack([offsets[0], offsets[-1], min_step]).tolist()
        _checks.check_offsets_values(first, last, low, num_ids, where)
        if include_last_offset and last < num_ids:
            # torch ignores ids after the last offset; so do we.
            input = input[:last]
            per_sample_weights = None if per_sample_weights is None else per_sample_weights[:last]
            num_ids = last
    if o is not None:
        starts = o[:-1] if include_last_offset else o
        ends_np = np.empty(starts.size + 1, dtype=o.dtype)
        ends_np[:-1] = starts
        ends_np[-1] = num_ids
        return input, torch.from_numpy(ends_np), per_sample_weights
    starts_t = offsets[:-1] if include_last_offset else offsets
    return input, torch.cat([starts_t, starts_t.new_full((1,), num_ids)]), per_sample_weights


def _embedding_bag(
    input: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None, max_norm: float | None,
    norm_type: float, scale_grad_by_freq: bool, mode: str, sparse: bool,
    per_sample_weights: torch.Tensor | None, include_last_offset: bool, padding_idx: int | None,
    oov: str, num_oov_buckets: int, backend: str, *, where: str, counter: torch.Tensor | None = None,
    fused: object = None,
) -> torch.Tensor:
    num_embeddings, padding_idx, buckets = _check_table(
        weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, oov, num_oov_buckets,
        backend, where,
    )
    _checks.check_bag_mode(mode, scale_grad_by_freq, sparse, where)
    _checks.check_ids(input, "input", where)
    _checks.check_same_device(input, weight, "input", where)
    _checks.check_offsets_shape(input, offsets, include_last_offset, where)
    _checks.check_per_sample_weights(per_sample_weights, input, weight, mode, where)
    be = dispatch.select(backend, weight.device, where)
    check_values = input.device.type == "cpu" or oov == "error"
    ids, ends, psw = _canonical_bags(input, offsets, per_sample_weights, include_last_offset, check_values, where)
    if _kernel_checks_range(be, ids, oov, max_norm):
        with _name_out_of_range_ids(ids, num_embeddings, where, input.shape):
            return _embedding_bag_lookup(
                ids, ends, psw, weight, be, mode, padding_idx, scale_grad_by_freq, sparse, fused
            )
    ids, has_skip = _oov.resolve(ids, num_embeddings, oov, padding_idx, buckets, where, counter, input.shape)
    if has_skip and not be.supports_skip:
        ids, ends, psw = _drop_skipped(ids, ends, psw)
    if max_norm is not None:
        be.renorm_(weight.detach(), ids, max_norm, norm_type)
    return _embedding_bag_lookup(ids, ends, psw, weight, be, mode, padding_idx, scale_grad_by_freq, sparse, fused)


def _drop_skipped(
    ids: torch.Tensor, ends: torch.Tensor, psw: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Bags without their SKIP ids, for a backend that does not understand them:
    the ids dropped, the offsets shifted; ``psw[keep]`` keeps its autograd link."""
    keep = ids >= 0
    dropped = torch.cat([ids.new_zeros(1), torch.cumsum(~keep, 0).to(ids.dtype)])  # (N + 1,)
    ends = ends - dropped[ends.to(torch.int64)]
    return ids[keep], ends, None if psw is None else psw[keep]


def _embedding_bag_lookup(
    ids: torch.Tensor, ends: torch.Tensor, psw: torch.Tensor | None, weight: torch.Tensor, be: ModuleType,
    mode: str, padding_idx: int | None, scale_grad_by_freq: bool, sparse: bool, fused: object,
) -> torch.Tensor:
    if not _needs_grad(weight, psw):
        return be.embedding_bag_inference(weight, ids, ends, mode, psw, padding_idx)
    if fused is not None and _needs_grad(weight):  # a fused optimizer: backward updates the rows
        return FusedEmbeddingBagFunction.apply(
            weight, psw, ids, ends, be, mode, padding_idx, scale_grad_by_freq, fused
        )
    return EmbeddingBagFunction.apply(
        weight, psw, ids, ends, be, mode, padding_idx, scale_grad_by_freq, sparse
    )
