"""Quantize, dequantize and look up quantized rows: the pure-PyTorch reference.

The bytes are FBGEMM's (see :mod:`.layouts`), computed as FBGEMM's reference
quantizers compute them, operation for operation in float32, so that they are equal
byte for byte (the tests hold them to ``torch.ops.fbgemm``'s own quantize ops):

- ``int8``: ``scale = range / 255``, ``bias = min``, ``code = round((x - min) * inv)``
  with ``inv = 255 / (range + 1e-8)``, a true float32 division (a reciprocal times 255
  rounds twice and gives other codes);
- ``int4``/``int2``: the bias is ``min`` rounded to float16 first, ``scale =
  float16(range / qmax)`` (1 when the range is 0 or its inverse overflows), ``code =
  clamp(round((x - bias) / scale), 0, qmax)`` through ``inv = 1 / scale``;
- ``float16``: the values rounded to nearest (ties to even); ``bfloat16``: the high half
  of the float32 bits after adding half a unit (FBGEMM's rounding: ties away from zero).

``round`` is round-half-to-even (C's ``lrintf``). A value is read back as ``scale *
code + bias`` in float32.

``method="greedy"`` first narrows each row's range ``[min, max]`` by the search of
``torch.ops.quantized``'s optimized qparams (``choose_qparams_optimized``: 200 bins,
at most 16% of the range cut, moving whichever end lowers the row's squared error and
keeping the best local optimum), then quantizes as above with values outside the range
clamped. Its float32 steps are torch's, so its 4- and 2-bit codes are those of
``torch.ops.quantized.embedding_bag_4bit_prepack(w, optimized_qparams=True)``.

The lookups (:func:`embedding_forward`, :func:`embedding_bag_inference`) dequantize the
rows a call needs and run the dense reference (``ops/reference.py``): the oracle of
the CPU and Triton kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _memory
from ..ops import reference as dense_reference
from ..ops.common import SKIP, kept_mask
from .layouts import Layout

name = "reference"
METHODS = ("minmax", "greedy")
GREEDY_BINS = 200
GREEDY_RATIO = 0.16
# Rows quantized at a time: bounds the float32 temporaries (a few (rows, dim) tensors).
_CHUNK_ELEMENTS = 1 << 22


# --- quantize -------------------------------------------------------------------------


def quantize_rows(weight: Tensor, layout: Layout, method: str = "minmax") -> Tensor:
    """``(R, D)`` float rows -> ``(R, layout.row_bytes(D))`` uint8, FBGEMM's bytes.

    The values are taken as float32 (FBGEMM quantizes float32 or float16 input); the
    caller checks that they are finite.
    """
    rows, dim = weight.shape
    x = weight.detach()
    # Large CPU tables on huge pages (a lookup touches rows all over them; see _memory).
    out = _memory.empty((rows, layout.row_bytes(dim)), dtype=torch.uint8, device=x.device)
    if layout.name == "bfloat16":
        # FBGEMM's rounding: add half a unit of the kept bits and truncate (ties away from
        # zero; torch's x.bfloat16() rounds ties to even).
        bits = x.to(torch.float32).contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
        high = ((bits + 0x8000) >> 16).to(torch.int32).to(torch.int16)  # (the low 16 bits of the int32)
        return out.copy_(high.view(torch.uint8).reshape(rows, 2 * dim))
    if not layout.integer:
        return out.copy_(x.to(layout.values_dtype).contiguous().view(torch.uint8).reshape(rows, 2 * dim))
    step = max(1, _CHUNK_ELEMENTS // max(dim, 1))
    nb = layout.data_bytes(dim)
    for start in range(0, rows, step):
        chunk = x[start:start + step].to(torch.float32)  # (r, D)
        if dim == 0:
            lo = hi = chunk.new_zeros(chunk.shape[0])
        else:
            lo, hi = chunk.amin(1), chunk.amax(1)
            if method == "greedy":
                fast = _fast_greedy() if chunk.device.type == "cpu" else None
                lo, hi = fast(chunk, layout) if fast is not None else greedy_range(chunk, lo, hi, layout)
        codes, params = _codes(chunk, lo, hi, layout)
        out[start:start + step, :nb] = pack(codes, layout)
        out[start:start + step, nb:] = params.contiguous().view(torch.uint8)
    return out


def _fast_greedy():  # type: ignore[no-untyped-def]
    """numba's :func:`embtab.quant.cpu.greedy_range` (the same ranges, many times faster), or None."""
    try:
        from .cpu import greedy_range as fast
    except (ImportError, RuntimeError, OSError):  # numba missing, or failing to build
        return None
    return fast


def _params(lo: Tensor, hi: Tensor, layout: Layout) -> tuple[Tensor, Tensor, Tensor]:
    """``(scale, bias, inv)`` in float32 for rows of range ``[lo, hi]``, as FBGEMM computes them."""
    if layout.bits == 8:
        rng = hi - lo
        scale = rng / 255.0
        inv = torch.full_like(rng, 255.0) / (rng + 1e-8)  # a true division (see the module docstring)
        return scale, lo, inv
    bias = lo.to(torch.float16).to(torch.float32)
    rng = hi - bias
    scale = torch.where(rng == 0, torch.ones_like(rng), rng / float(layout.qmax))
    scale = scale.to(torch.float16).to(torch.float32)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    inv = torch.ones_like(scale) / scale
    overflow = torch.isinf(inv)
    scale = torch.where(overflow, torch.ones_like(scale), scale)
    inv = torch.where(overflow, torch.ones_like(inv), inv)
    return scale, bias, inv


def _codes(x: Tensor, lo: Tensor, hi: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """``(codes (r, D) uint8, params (r, 2) in the layout's dtype)`` of float32 rows ``x``."""
    scale, bias, inv = _params(lo, hi, layout)
    codes = torch.round((x - bias[:, None]) * inv[:, None]).clamp_(0, layout.qmax).to(torch.uint8)
    return codes, torch.stack([scale, bias], 1).to(layout.params_dtype)


def pack(codes: Tensor, layout: Layout) -> Tensor:
    """``(r, D)`` codes -> ``(r, data_bytes(D))`` bytes, low bits first; a last partial byte's
    unused high bits are zero."""
    per = layout.per_byte
    if per == 1:
        return codes
    r, dim = codes.shape
    nb = layout.data_bytes(dim)
    padded = torch.zeros(r, nb * per, dtype=torch.int32, device=codes.device)
    padded[:, :dim] = codes
    padded = padded.reshape(r, nb, per)
    out = padded[..., 0]
    for k in range(1, per):
        out = out | (padded[..., k] << (k * layout.bits))
    return out.to(torch.uint8)


def unpack(data: Tensor, layout: Layout, dim: int) -> Tensor:
    """``(r, data_bytes)`` bytes -> ``(r, dim)`` int32 codes (the inverse of :func:`pack`)."""
    per = layout.per_byte
    if per == 1:
        return data[:, :dim].to(torch.int32)
    shifts = torch.arange(per, device=data.device, dtype=torch.int32) * layout.bits  # (per,)
    codes = (data.to(torch.int32).unsqueeze(-1) >> shifts) & layout.qmax  # (r, nb, per)
    return codes.reshape(data.shape[0], data.shape[1] * per)[:, :dim]


# --- greedy range search ----------------------------------------------------------------


def _greedy_loss(x: Tensor, xmin: Tensor, xmax: Tensor, layout: Layout) -> Tensor:
    """The L2 norm of each row's quantization error with range ``[xmin, xmax]`` (r,), in
    float32 with the rounding of torch's ``calculate_quant_loss`` (the squares summed in
    column order)."""
    qmax = float(layout.qmax)
    if layout.bits == 8:  # float32 scale and bias (torch's search has no 8-bit variant)
        scale, bias, inv = _params(xmin, xmax, layout)
    else:
        bias = xmin.to(torch.float16).to(torch.float32)
        rng = xmax - bias
        scale = torch.where(rng == 0, torch.ones_like(rng), (rng / qmax).to(torch.float16).to(torch.float32))
        inv = torch.where(scale == 0, torch.ones_like(scale), torch.ones_like(scale) / scale)
    q = torch.round((x - bias[:, None]) * inv[:, None]).clamp_(0.0, qmax)
    err = x - (q * scale[:, None] + bias[:, None])
    sq = err * err
    norm = torch.zeros_like(xmin)
    for d in range(x.shape[1]):
        norm += sq[:, d]
    # The correctly rounded float32 square root of C's sqrtf: torch's float32 sqrt on CPU
    # is off by an ulp for about a fifth of the inputs, which flips near-ties of the search.
    return norm.double().sqrt().to(torch.float32)


def greedy_range(x: Tensor, xmin: Tensor, xmax: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """Each row's range ``[lo, hi]`` that the greedy search keeps (see the module docstring)."""
    n_bins = float(GREEDY_BINS)
    stepsize = (xmax - xmin) / n_bins
    thr = float(torch.tensor(GREEDY_BINS * (1.0 - GREEDY_RATIO), dtype=torch.float32)) * stepsize
    loss = _greedy_loss(x, xmin, xmax, layout)
    best_loss, best_min, best_max = loss.clone(), xmin.clone(), xmax.clone()
    cur_min, cur_max, cur_loss = xmin.clone(), xmax.clone(), loss
    rows = torch.arange(x.shape[0], device=x.device)
    active = rows[cur_min + thr < cur_max]
    while active.numel():
        xs, step, lo, hi, cur = x[active], stepsize[active], cur_min[active], cur_max[active], cur_loss[active]
        loss1 = _greedy_loss(xs, lo + step, hi, layout)  # move the low end up
        loss2 = _greedy_loss(xs, lo, hi - step, layout)  # move the high end down
        best = best_loss[active]
        local = (cur < loss1) & (cur < loss2) & (cur < best)
        best_loss[active] = torch.where(local, cur, best)
        best_min[active] = torch.where(local, lo, best_min[active])
        best_max[active] = torch.where(local, hi, best_max[active])
        left = loss1 < loss2
        lo = torch.where(left, lo + step, lo)
        hi = torch.where(left, hi, hi - step)
        cur_min[active], cur_max[active], cur_loss[active] = lo, hi, torch.where(left, loss1, loss2)
        active = active[lo + thr[active] < hi]
    return best_min, best_max


# --- dequantize -----------------------------------------------------------------------


def dequantize_rows(data: Tensor, layout: Layout, dim: int) -> Tensor:
    """``(R, row_bytes)`` uint8 -> ``(R, dim)`` float32: ``scale * code + bias``."""
    if not layout.integer:
        if data.storage_offset() % 2:
            data = data.clone()
        return data.contiguous().view(layout.values_dtype).to(torch.float32)
    nb = layout.data_bytes(dim)
    codes = unpack(data[:, :nb], layout, dim)
    params = _params_view(data[:, nb:], layout)  # (R, 2)
    return codes.to(torch.float32) * params[:, :1] + params[:, 1:]


def params_of(data: Tensor, layout: Layout, dim: int) -> Tensor:
    """``(R, 2)`` float32 scale and bias of each row (integer layouts)."""
    return _params_view(data[:, layout.data_bytes(dim):], layout)


def _params_view(raw: Tensor, layout: Layout) -> Tensor:
    # A fresh buffer: a slice of one row may start at any byte, and a view as float needs alignment.
    return raw.clone(memory_format=torch.contiguous_format).view(layout.params_dtype).to(torch.float32)


# --- lookups (the reference twin of the kernels) ----------------------------------------


def embedding_forward(data: Tensor, ids: Tensor, layout: Layout, dim: int) -> Tensor:
    """``(*ids.shape, dim)`` float32: the rows of ``ids`` (SKIP: zeros)."""
    flat = ids.reshape(-1)
    rows = dequantize_rows(data.index_select(0, flat.clamp_min(0).to(torch.int64)), layout, dim)
    rows = rows.masked_fill((flat < 0).unsqueeze(1), 0)
    return rows.reshape(*ids.shape, dim)


def embedding_bag_inference(
    data: Tensor, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Tensor | None,
    padding_idx: int | None, layout: Layout, dim: int,
) -> Tensor:
    """``(B, dim)`` float32: the bags of ``ids`` (canonical ``offsets`` (B + 1,)) reduced by ``mode``."""
    keep = kept_mask(ids, padding_idx)
    used, where = torch.unique(ids[keep].to(torch.int64), return_inverse=True)
    dense = dequantize_rows(data.index_select(0, used), layout, dim)  # (U, dim)
    local = torch.full_like(ids, SKIP, dtype=torch.int64)
    local[keep] = where
    psw = None if per_sample_weights is None else per_sample_weights.to(torch.float32)
    return dense_reference.embedding_bag_inference(dense, local, offsets, mode, psw, None)
