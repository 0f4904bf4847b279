"""Embedding lookup: the row gather (forward) and its gradient (backward).

Forward layout: ``weight`` is (V, D) with contiguous rows (any row stride), ``ids`` is
flattened to (N,), the output is a fresh contiguous (N, D). One program copies a tile of
``BLOCK_N`` ids x ``BLOCK_D`` columns: each id contributes one contiguous, vectorised
row segment, and the ``BLOCK_N`` independent rows keep ~16 KiB in flight per program,
which is what a gather needs to reach HBM bandwidth (the anchors' 20-line gather did
95% of copy bandwidth on an H200 with this shape of tile). Ids are widened to int64
before the address computation, so tables past 2**31 elements are addressed correctly.

The same gather, with a per-row factor, builds the values of sparse COO gradients.
The dense backward is the shared row-scatter engine of :mod:`.backward`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C
from .backward import freq_factor, scatter_rows


@triton.jit
def _gather_rows_kernel(
    idx_ptr,  # (N,) int32/int64: row of `table` for each output row; < 0 gives a zero row
    table_ptr,  # (R, D), row stride `stride_t`, contiguous within a row
    factor_ptr,  # (N,) accumulator dtype, multiplies each row (only if HAS_FACTOR)
    out_ptr,  # (N, D) contiguous
    N,
    D,
    stride_t,
    HAS_FACTOR: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    row_ok = rows < N
    col_ok = cols < D
    idx = tl.load(idx_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    take = row_ok & (idx >= 0)  # SKIP ids (-1) read nothing and write zeros
    vals = tl.load(
        table_ptr + idx[:, None] * stride_t + cols[None, :],
        mask=take[:, None] & col_ok[None, :],
        other=0.0,
    )
    if HAS_FACTOR:
        f = tl.load(factor_ptr + rows, mask=row_ok, other=0.0)
        vals = (vals.to(ACC) * f[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], vals, mask=row_ok[:, None] & col_ok[None, :])


def gather_rows(
    table: torch.Tensor,  # (R, D)
    idx: torch.Tensor,  # (N,) int32/int64, < 0 -> zero row
    factor: torch.Tensor | None = None,  # (N,) accumulator dtype
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:  # (N, D)
    """``out[i] = table[idx[i]] * factor[i]`` (zeros where ``idx[i] < 0``), one launch."""
    C.acc_tl(table.dtype)
    table = C.row_major(table)
    n, dim = idx.numel(), table.shape[1]
    out = torch.empty(n, dim, dtype=out_dtype or table.dtype, device=table.device)
    if n == 0 or dim == 0:
        return out
    bd = C.block_d(dim)
    bn = C.rows_per_program(bd, table.element_size())
    grid = (triton.cdiv(n, bn), triton.cdiv(dim, bd))
    _gather_rows_kernel[grid](
        idx, table, factor if factor is not None else out, out, n, dim, table.stride(0),
        HAS_FACTOR=factor is not None, ACC=C.acc_tl(table.dtype), BLOCK_N=bn, BLOCK_D=bd,
        num_warps=C.num_warps_for(bn * bd),
    )
    return out


def embedding_forward(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``weight[ids]`` of shape ``(*ids.shape, D)``; SKIP ids (-1) give zero rows."""
    out = gather_rows(weight, C.flat_ids(ids))
    return out.reshape(*ids.shape, weight.shape[1])


def sparse_grad(
    grad: torch.Tensor,  # (R, D) gradient rows
    dst: torch.Tensor,  # (N,) weight row of each contribution, -1 = none
    num_weights: int,
    padding_idx: int | None,
    src: torch.Tensor | None = None,  # (N,) row of `grad` per contribution (None: i)
    factor: torch.Tensor | None = None,  # (N,) accumulator-dtype multiplier
) -> torch.Tensor:
    """Uncoalesced COO gradient, one entry per contributing id, as torch returns it.

    Its number of entries depends on the data (SKIP and padding ids are left out), so
    building it reads one count back to the host, like torch's sparse backward does.
    The fused optimizers (:mod:`.fused_optim`) are the sync-free training path.
    """
    keep = dst >= 0
    if padding_idx is not None:
        keep &= dst != padding_idx
    pos = keep.nonzero().squeeze(1)  # (K,) the one host sync
    rows = dst.index_select(0, pos).to(torch.int64)
    if src is None and factor is None and pos.numel() == dst.numel():
        values = grad  # every id contributes its own row unchanged: no copy
    else:
        take = pos if src is None else src.index_select(0, pos)
        f = None if factor is None else factor.index_select(0, pos)
        values = gather_rows(grad, take, f, out_dtype=grad.dtype)
    return torch.sparse_coo_tensor(
        rows.unsqueeze(0), values, (num_weights, grad.shape[1]), check_invariants=False
    )


def embedding_backward(
    grad: torch.Tensor,  # (*ids.shape, D)
    ids: torch.Tensor,
    num_weights: int,
    padding_idx: int | None,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> torch.Tensor:
    """Gradient of :func:`embedding_forward` w.r.t. the weight: dense (V, D) or sparse COO."""
    flat = C.flat_ids(ids)
    g = grad.reshape(-1, grad.shape[-1])  # (N, D)
    if sparse:
        factor = freq_factor(flat, num_weights) if scale_grad_by_freq else None
        return sparse_grad(g, flat, num_weights, padding_idx, factor=factor)
    return scatter_rows(g, flat, num_weights, padding_idx=padding_idx, freq=scale_grad_by_freq)
