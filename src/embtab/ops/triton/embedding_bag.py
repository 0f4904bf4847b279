"""EmbeddingBag: bag reductions (sum / mean / max) and their gradients.

Forward layout: flat ``ids`` (N,), ``offsets`` (B + 1,) ending at N, ``weight`` (V, D)
with contiguous rows. Grid ``(B, cdiv(D, BLOCK_D))``: one program reduces one bag over
one D tile, reading ``BLOCK_L`` of the bag's rows per step as a (BLOCK_L, BLOCK_D) tile
(so a bag of L=20 rows of D=128 float32 is one step with 20 independent 512-byte rows
in flight) and keeping the running sum / max in float32 registers. The output is
written once, in the weight's dtype. Padding and SKIP ids are masked out of the load
itself (they cost no traffic) and out of the mean's count; empty bags give zeros.

For ``mode="max"`` each column also tracks the row that produced the maximum (the first
id reaching it, torch's tie rule): that (B, D) table of rows is what the backward needs.

Backward: the weight gradient is the row-scatter engine of :mod:`.backward` with
``src[i] = bag of id i`` and ``factor[i] = per_sample_weight[i]`` (or ``1 / count`` for
the mean), so the (N, D) per-id gradient is never materialised; the max gradient is
the same engine over single elements. The per-sample-weights gradient is one dot
product per id (``_psw_grad_kernel``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..common import MODE_CODES, BagAux, bag_of
from . import _common as C
from .backward import freq_factor, scatter_rows
from .embedding import sparse_grad



@triton.jit
def max_step(rows, m, ids, lanes, acc, arg, BLOCK_L: tl.constexpr):
    """One step of a max bag: ``(BLOCK_L, BLOCK_D)`` rows (``m``: which count) into the
    running maximum ``acc`` and the row ``arg`` that gave it, per column."""
    rows = tl.where(m, rows, float("-inf"))
    step_max = tl.max(rows, axis=0)  # (BLOCK_D,)
    hit = m & (rows == step_max[None, :])
    first = tl.min(tl.where(hit, lanes[:, None], BLOCK_L), axis=0)  # first lane at the max
    row_at = tl.sum(tl.where(lanes[:, None] == first[None, :], ids[:, None], 0), axis=0)
    # Strictly greater: on a tie the earlier id keeps the gradient (torch's rule);
    # arg < 0: the first kept id of the bag, even if it is -inf.
    better = (first < BLOCK_L) & ((step_max > acc) | (arg < 0))
    return tl.where(better, step_max, acc), tl.where(better, row_at, arg)


@triton.jit
def _bag_forward_kernel(
    w_ptr,  # (V, D), row stride `stride_w`
    ids_ptr,  # (N,) int32/int64; < 0 = SKIP
    offsets_ptr,  # (B + 1,) int32/int64
    psw_ptr,  # (N,) per-sample weights (HAS_PSW)
    out_ptr,  # (B, D) weight dtype
    count_ptr,  # (B,) int32: ids that count in each bag
    arg_ptr,  # (B, D) int64: row holding each column's max (MODE == 2)
    D,
    stride_w,
    pad,  # padding row, -1 for none
    MODE: tl.constexpr,  # 0 sum, 1 mean, 2 max
    HAS_PSW: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    start = tl.load(offsets_ptr + b).to(tl.int64)
    end = tl.load(offsets_ptr + b + 1).to(tl.int64)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    lanes = tl.arange(0, BLOCK_L)
    cnt = tl.zeros((BLOCK_L,), dtype=tl.int32)
    if MODE == 2:
        acc = tl.full((BLOCK_D,), float("-inf"), dtype=ACC)
        arg = tl.full((BLOCK_D,), -1, dtype=tl.int64)
    else:
        acc = tl.zeros((BLOCK_D,), dtype=ACC)
    for base in range(start, end, BLOCK_L):
        pos = base + lanes  # (BLOCK_L,) positions in ids
        ids = tl.load(ids_ptr + pos, mask=pos < end, other=-1).to(tl.int64)
        keep = (ids >= 0) & (ids != pad)
        cnt += keep.to(tl.int32)
        m = keep[:, None] & col_ok[None, :]
        rows = tl.load(w_ptr + ids[:, None] * stride_w + cols[None, :], mask=m, other=0.0).to(ACC)
        if HAS_PSW:
            rows = rows * tl.load(psw_ptr + pos, mask=keep, other=0.0).to(ACC)[:, None]
        if MODE == 2:
            acc, arg = max_step(rows, m, ids, lanes, acc, arg, BLOCK_L)
        else:
            acc += tl.sum(rows, axis=0)
    total = tl.sum(cnt, axis=0)
    if MODE == 1:
        acc = acc / tl.maximum(total, 1).to(ACC)
    if MODE == 2:
        acc = tl.where(total > 0, acc, 0.0)  # empty bag: zeros, no max row
        tl.store(arg_ptr + b * D + cols, arg, mask=col_ok)
    tl.store(out_ptr + b * D + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)
    if pid_d == 0:
        tl.store(count_ptr + b, total)


@triton.jit
def _psw_grad_kernel(
    grad_ptr,  # (B, D), row stride `stride_g`
    w_ptr,  # (V, D), row stride `stride_w`
    ids_ptr,  # (N,)
    bag_ptr,  # (N,) bag of each id
    factor_ptr,  # (N,) accumulator dtype (HAS_FACTOR)
    out_ptr,  # (N,) grad dtype
    N,
    D,
    stride_g,
    stride_w,
    pad,
    HAS_FACTOR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    i_ok = i < N
    ids = tl.load(ids_ptr + i, mask=i_ok, other=-1).to(tl.int64)
    keep = i_ok & (ids >= 0) & (ids != pad)
    bag = tl.load(bag_ptr + i, mask=keep, other=0).to(tl.int64)
    dot = tl.zeros((BLOCK_N,), dtype=ACC)
    # Loop over D tiles: each id's whole dot product stays in one program.
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = keep[:, None] & (cols < D)[None, :]
        g = tl.load(grad_ptr + bag[:, None] * stride_g + cols[None, :], mask=m, other=0.0).to(ACC)
        w = tl.load(w_ptr + ids[:, None] * stride_w + cols[None, :], mask=m, other=0.0).to(ACC)
        dot += tl.sum(g * w, axis=1)
    if HAS_FACTOR:
        dot = dot * tl.load(factor_ptr + i, mask=keep, other=0.0).to(ACC)
    tl.store(out_ptr + i, dot.to(out_ptr.dtype.element_ty), mask=i_ok)


def embedding_bag_forward(
    weight: torch.Tensor,  # (V, D)
    ids: torch.Tensor,  # (N,)
    offsets: torch.Tensor,  # (B + 1,)
    mode: str,
    per_sample_weights: torch.Tensor | None,  # (N,) or None
    padding_idx: int | None,
) -> tuple[torch.Tensor, BagAux]:
    """Reduce each bag; returns ``(out (B, D), aux)``: ``aux.counts`` int32 (B,) ids that
    count per bag, ``aux.max_rows`` for max (int64 (B, D), the row giving each column's
    max, -1 for an empty bag); no ``aux.bag`` (the backward rebuilds it from the offsets).
    """
    acc = C.acc_tl(weight.dtype)
    weight = C.row_major(weight)
    ids = C.flat_ids(ids)
    offsets = offsets.contiguous()
    num_bags, dim = offsets.numel() - 1, weight.shape[1]
    device = weight.device
    out = torch.empty(num_bags, dim, dtype=weight.dtype, device=device)
    counts = torch.empty(num_bags, dtype=torch.int32, device=device)
    is_max = mode == "max"
    max_rows = torch.empty(num_bags, dim, dtype=torch.int64, device=device) if is_max else counts
    if num_bags > 0 and dim > 0:
        bd = C.block_d(dim)
        bl = C.rows_per_program(bd, weight.element_size(), cap=64)
        psw = per_sample_weights.contiguous() if per_sample_weights is not None else None
        _bag_forward_kernel[(num_bags, triton.cdiv(dim, bd))](
            weight, ids, offsets, psw if psw is not None else out, out, counts, max_rows,
            dim, weight.stride(0), -1 if padding_idx is None else padding_idx,
            MODE=MODE_CODES[mode], HAS_PSW=psw is not None, ACC=acc, BLOCK_L=bl, BLOCK_D=bd,
            num_warps=C.num_warps_for(bl * bd),
        )
    elif num_bags > 0:
        counts.zero_()
    empty = counts.new_empty(0)
    return out, BagAux(empty, counts, max_rows if is_max else empty)


def _max_backward(grad: torch.Tensor, max_rows: torch.Tensor, num_weights: int) -> torch.Tensor:
    """``out[max_rows[b, d], d] += grad[b, d]``: the row engine over single elements."""
    num_bags, dim = grad.shape
    cols = torch.arange(dim, device=grad.device)
    # Element (r, d) of the (V, D) gradient is row r * D + d of a (V * D, 1) table.
    dst = torch.where(max_rows >= 0, max_rows * dim + cols, -1).reshape(-1)  # (B * D,)
    flat = scatter_rows(grad.reshape(-1, 1), dst, num_weights * dim)
    return flat.reshape(num_weights, dim)


def embedding_bag_backward(
    grad: torch.Tensor,  # (B, D)
    weight: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    aux: BagAux,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int | None,
    scale_grad_by_freq: bool,
    sparse: bool,
    need_weight_grad: bool,
    need_psw_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :func:`embedding_bag_forward` w.r.t. the weight and the per-sample weights."""
    num_weights, dim = weight.shape
    acc = C.acc_dtype(grad.dtype)
    grad = C.row_major(grad)
    ids = C.flat_ids(ids)
    grad_weight = grad_psw = None
    if mode == "max":
        if need_weight_grad:
            grad_weight = _max_backward(grad, aux.max_rows, num_weights)
        return grad_weight, None
    counts = aux.counts
    bag = bag_of(offsets, ids.numel())  # (N,)
    # Mean: each id receives grad / count of its bag.
    factor = (1.0 / counts.clamp_min(1).to(acc))[bag] if mode == "mean" else None
    pad = -1 if padding_idx is None else padding_idx
    if need_psw_grad and per_sample_weights is not None:
        n = ids.numel()
        grad_psw = torch.empty(n, dtype=grad.dtype, device=grad.device)
        if n > 0:
            w = C.row_major(weight)
            bd = min(C.block_d(dim), 256)  # the dot loops over D; 256 keeps the tile small
            bn = C.rows_per_program(bd, C.acc_size(grad.dtype), cap=64)
            _psw_grad_kernel[(triton.cdiv(n, bn),)](
                grad, w, ids, bag, factor if factor is not None else grad_psw, grad_psw,
                n, dim, grad.stride(0), w.stride(0), pad,
                HAS_FACTOR=factor is not None, ACC=C.acc_tl(grad.dtype), BLOCK_N=bn, BLOCK_D=bd,
                num_warps=C.num_warps_for(bn * bd),
            )
    if need_weight_grad:
        if per_sample_weights is not None:
            psw = per_sample_weights.reshape(-1).to(acc)
            factor = psw if factor is None else factor * psw
        if sparse:
            if scale_grad_by_freq:
                f = freq_factor(ids, num_weights).to(acc)
                factor = f if factor is None else factor * f
            grad_weight = sparse_grad(grad, ids, num_weights, padding_idx, src=bag, factor=factor)
        else:
            grad_weight = scatter_rows(
                grad, ids, num_weights, src=bag, factor=factor, padding_idx=padding_idx,
                freq=scale_grad_by_freq,
            )
    return grad_weight, grad_psw


def embedding_bag_inference(
    weight: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int | None,
) -> torch.Tensor:
    """The forward's output alone (the aux the backward needs is cheap here anyway)."""
    return embedding_bag_forward(weight, ids, offsets, mode, per_sample_weights, padding_idx)[0]
