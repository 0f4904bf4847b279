"""Quantized lookups on CUDA: a Triton kernel that reads the stored bytes (CPU tensors under
``TRITON_INTERPRET=1``). Importing this module raises ``ImportError`` without Triton.

One program pools one bag over one tile of columns: grid ``(B, D tiles)``. It reads
``BLOCK_L`` ids at a time, and for each kept id (not SKIP, not padding) its codes
and its scale and bias straight from the row's bytes: ``int8`` one byte per value and a
float32 scale and bias after them; ``int4``/``int2`` a byte per 2 or 4 values (low bits
first) and a float16 scale and bias; ``float16``/``bfloat16`` two bytes per value. Scale
and bias sit at any byte offset (a row of ``D + 8`` bytes), so they are assembled from
single bytes and bitcast. Accumulation in float32; sum, mean, max, per-sample weights;
an empty bag gives zeros. An unpooled lookup is bags of one id each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ops.common import MODE_CODES
from ..ops.triton import _common as C
from .layouts import Layout

name = "triton"

_KIND_INT8, _KIND_NBIT, _KIND_F16, _KIND_BF16 = 0, 1, 2, 3


@triton.jit
def _u8(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _f32_at(ptr, mask):
    """The float32 whose 4 little-endian bytes start at ``ptr`` (any alignment)."""
    bits = _u8(ptr, mask) | (_u8(ptr + 1, mask) << 8) | (_u8(ptr + 2, mask) << 16) | (_u8(ptr + 3, mask) << 24)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _f16_at(ptr, mask):
    """The float16 whose 2 little-endian bytes start at ``ptr``, as float32."""
    bits = _u8(ptr, mask) | (_u8(ptr + 1, mask) << 8)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _bf16_at(ptr, mask):
    """The bfloat16 whose 2 little-endian bytes start at ``ptr``, as float32 (its high half)."""
    bits = _u8(ptr, mask) | (_u8(ptr + 1, mask) << 8)
    return (bits << 16).to(tl.float32, bitcast=True)


@triton.jit
def _quant_bags_kernel(
    data_ptr,  # (R * rb,) uint8 rows
    ids_ptr,  # (N,) int64 rows or SKIP (< 0)
    ends_ptr,  # (B + 1,) int64 canonical offsets
    psw_ptr,  # (N,) float32 per-sample weights (HAS_PSW)
    out_ptr,  # (B, dim) float32
    rb,
    dim,
    nb,  # bytes of a row's codes (integer layouts)
    pad,  # padding row, or -1
    MODE: tl.constexpr,
    KIND: tl.constexpr,
    BITS: tl.constexpr,
    HAS_PSW: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    start = tl.load(ends_ptr + b)
    end = tl.load(ends_ptr + b + 1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    lanes = tl.arange(0, BLOCK_L)
    cnt = tl.zeros((BLOCK_L,), dtype=tl.int32)
    if MODE == 2:
        acc = tl.full((BLOCK_D,), float("-inf"), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for first in range(start, end, BLOCK_L):
        pos = first + lanes
        on = pos < end
        row = tl.load(ids_ptr + pos, mask=on, other=-1).to(tl.int64)
        keep = on & (row >= 0) & (row != pad)
        cnt += keep.to(tl.int32)
        row_at = data_ptr + tl.where(keep, row, 0) * rb  # (L,) pointers to the rows
        mk = keep[:, None] & col_ok[None, :]
        if KIND == 0:
            codes = tl.load(row_at[:, None] + cols[None, :], mask=mk, other=0).to(tl.float32)
            vals = codes * _f32_at(row_at + dim, keep)[:, None] + _f32_at(row_at + dim + 4, keep)[:, None]
        elif KIND == 1:
            per = 8 // BITS
            byte = tl.load(row_at[:, None] + (cols // per)[None, :], mask=mk, other=0).to(tl.int32)
            codes = ((byte >> ((cols % per) * BITS)[None, :]) & ((1 << BITS) - 1)).to(tl.float32)
            vals = codes * _f16_at(row_at + nb, keep)[:, None] + _f16_at(row_at + nb + 2, keep)[:, None]
        elif KIND == 2:
            vals = _f16_at(row_at[:, None] + 2 * cols[None, :], mk)
        else:
            vals = _bf16_at(row_at[:, None] + 2 * cols[None, :], mk)
        if HAS_PSW:
            vals = vals * tl.load(psw_ptr + pos, mask=keep, other=0.0).to(tl.float32)[:, None]
        if MODE == 2:
            acc = tl.maximum(acc, tl.max(tl.where(mk, vals, float("-inf")), axis=0))
        else:
            acc += tl.sum(tl.where(mk, vals, 0.0), axis=0)
    total = tl.sum(cnt, axis=0)
    if MODE == 1:
        acc = acc / tl.maximum(total, 1).to(tl.float32)
    if MODE == 2:
        acc = tl.where(total > 0, acc, 0.0)
    tl.store(out_ptr + b * dim + cols, acc, mask=col_ok)


def _kind(layout: Layout) -> int:
    if layout.bits == 8:
        return _KIND_INT8
    if layout.integer:
        return _KIND_NBIT
    return _KIND_BF16 if layout.name == "bfloat16" else _KIND_F16


def _launch(data: Tensor, ids: Tensor, ends: Tensor, mode: str, psw: Tensor | None, pad: int | None,
            layout: Layout, dim: int) -> Tensor:
    num_bags = ends.numel() - 1
    out = torch.empty(num_bags, dim, dtype=torch.float32, device=data.device)
    if out.numel() == 0:
        return out
    bd = C.block_d(dim)
    bl = C.rows_per_program(bd, 4, cap=64)
    flat_ids = ids.reshape(-1).to(torch.int64).contiguous()
    w = psw.reshape(-1).to(torch.float32).contiguous() if psw is not None else out
    _quant_bags_kernel[(num_bags, triton.cdiv(dim, bd))](
        data.contiguous(), flat_ids, ends.to(torch.int64).contiguous(), w, out, data.shape[1], dim,
        layout.data_bytes(dim), -1 if pad is None else pad, MODE=MODE_CODES[mode], KIND=_kind(layout),
        BITS=layout.bits if layout.integer else 8, HAS_PSW=psw is not None, BLOCK_L=bl, BLOCK_D=bd,
        num_warps=C.num_warps_for(bl * bd),
    )
    return out


def embedding_bag_inference(
    data: Tensor, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Tensor | None,
    padding_idx: int | None, layout: Layout, dim: int,
) -> Tensor:
    """``(B, dim)`` float32, as :func:`embtab.quant.reference.embedding_bag_inference`."""
    return _launch(data, ids, offsets, mode, per_sample_weights, padding_idx, layout, dim)


def embedding_forward(data: Tensor, ids: Tensor, layout: Layout, dim: int) -> Tensor:
    """``(*ids.shape, dim)`` float32 rows (SKIP ids give zeros): bags of one id each."""
    n = ids.numel()
    ends = torch.arange(n + 1, dtype=torch.int64, device=data.device)
    return _launch(data, ids, ends, "sum", None, None, layout, dim).reshape(*ids.shape, dim)
