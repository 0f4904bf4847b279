"""``max_norm``: rescale, in place, every referenced row whose norm exceeds ``max_norm``.

The ids are sorted first (a device sort, no host sync) so that each distinct row is
renormalised by exactly one lane: two programs rescaling the same row concurrently
could read a half-written row. Grid ``cdiv(N, BLOCK_N)``: each lane owns one sorted
position, acts only on the first occurrence of a row, and makes two passes over the
row's D tiles (norm, then scale), so any D fits in one program.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _common as C

# Norm kinds with a specialised loop (norm types are > 0: checked in _checks.check_max_norm).
_NORM_2, _NORM_1, _NORM_INF, _NORM_P = 0, 1, 2, 3


@triton.jit
def _renorm_kernel(
    w_ptr,  # (V, D), row stride `stride_w`, updated in place
    ids_ptr,  # (N,) sorted ids, SKIP (-1) first
    max_norm_ptr,  # (1,) accumulator dtype
    p_ptr,  # (1,) accumulator dtype, the norm's order (NORM == _NORM_P)
    N,
    D,
    stride_w,
    NORM: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    i_ok = i < N
    ids = tl.load(ids_ptr + i, mask=i_ok, other=-1).to(tl.int64)
    prev = tl.load(ids_ptr + i - 1, mask=i_ok & (i > 0), other=-1).to(tl.int64)
    first = i_ok & (ids >= 0) & ((i == 0) | (ids != prev))  # one lane per distinct row
    max_norm = tl.load(max_norm_ptr)
    p = tl.load(p_ptr)
    s = tl.zeros((BLOCK_N,), dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = first[:, None] & (cols < D)[None, :]
        a = tl.abs(tl.load(w_ptr + ids[:, None] * stride_w + cols[None, :], mask=m, other=0.0).to(ACC))
        if NORM == 0:
            s += tl.sum(a * a, axis=1)
        elif NORM == 1:
            s += tl.sum(a, axis=1)
        elif NORM == 2:
            s = tl.maximum(s, tl.max(a, axis=1))
        else:
            # log of a masked-to-1 value: no log(0) even in the branch tl.where discards
            s += tl.sum(tl.where(a > 0, tl.exp(p * tl.log(tl.where(a > 0, a, 1.0))), 0.0), axis=1)
    if NORM == 0:
        norm = tl.sqrt(s)
    elif NORM == 3:
        norm = tl.where(s > 0, tl.exp(tl.log(tl.where(s > 0, s, 1.0)) / p), 0.0)
    else:
        norm = s
    over = first & (norm > max_norm)
    scale = max_norm / (norm + 1e-7)  # torch's formula: rows land just below max_norm
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = over[:, None] & (cols < D)[None, :]
        ptrs = w_ptr + ids[:, None] * stride_w + cols[None, :]
        x = tl.load(ptrs, mask=m, other=0.0).to(ACC)
        tl.store(ptrs, (x * scale[:, None]).to(w_ptr.dtype.element_ty), mask=m)


@torch.no_grad()
def renorm_(weight: torch.Tensor, ids: torch.Tensor, max_norm: float, norm_type: float) -> None:
    """Rescale, in place, each referenced row whose ``norm_type``-norm exceeds ``max_norm``.

    The scale is ``max_norm / (norm + 1e-7)``, torch's formula, for norm types 1, 2, inf
    and any finite p > 0 (the only ones a table accepts).
    """
    acc = C.acc_dtype(weight.dtype)
    if norm_type == 2:
        kind = _NORM_2
    elif norm_type == 1:
        kind = _NORM_1
    elif norm_type == math.inf:
        kind = _NORM_INF
    else:
        kind = _NORM_P
    flat = C.flat_ids(ids)
    n, dim = flat.numel(), weight.shape[1]
    if n == 0 or dim == 0:
        return
    if weight.dim() == 2 and dim > 1 and weight.stride(1) != 1:
        # The kernel writes rows in place; a strided inner dimension goes through a copy.
        tmp = weight.contiguous()
        renorm_(tmp, ids, max_norm, norm_type)
        weight.copy_(tmp)
        return
    sorted_ids = torch.sort(flat).values
    limits = torch.full((2,), max_norm, dtype=acc, device=weight.device)
    limits[1] = float(norm_type)
    bd = min(C.block_d(dim), 256)  # two passes loop over D; 256 keeps the tile small
    bn = C.rows_per_program(bd, C.acc_size(weight.dtype), cap=64)
    _renorm_kernel[(triton.cdiv(n, bn),)](
        weight, sorted_ids, limits, limits[1:], n, dim, weight.stride(0),
        NORM=kind, ACC=C.acc_tl(weight.dtype), BLOCK_N=bn, BLOCK_D=bd,
        num_warps=C.num_warps_for(bn * bd),
    )
