"""The CPU fast path of quantized lookups: numba kernels (imported only if numba is).

One kernel per layout family reads the stored bytes directly, never a dequantized
table: ``int8`` (codes, float32 scale and bias), ``nbit`` (int4/int2 codes unpacked
from their bytes, float16 scale and bias), ``float16`` and ``bfloat16`` rows. Each
pools a range of bags (sum, mean, max; per-sample weights; SKIP and padding ids left
out) into float32 output rows, the same results as the reference
(``quant/reference.py``) up to float32 rounding: for sum and mean a bag is
``sum_j w_j scale_j code_j + sum_j w_j bias_j``, the scale and bias applied once per
row rather than once per value.

A lookup is memory-bound (a random row per id, far outside the caches), so the
kernels prefetch the row ``PREFETCH_AHEAD`` ids ahead, as FBGEMM's kernels do, and
run on the pool of plain threads of the fused update (``ops/numba/_pool.py``: idle
threads block, they never spin against torch's). An unpooled lookup is bags of one id.
Scale, bias and 16-bit values are read with unaligned loads (a row of ``D + 8`` bytes
puts them anywhere), through tiny LLVM intrinsics.
"""

from __future__ import annotations

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from torch import Tensor

from ..ops.numba._pool import POOL
from ..ops.numba.kernels import FASTMATH, PREFETCH_AHEAD, prefetch_read
from .layouts import Layout

name = "numba"

SUM, MEAN, MAX = 0, 1, 2
_MODES = {"sum": SUM, "mean": MEAN, "max": MAX}


@intrinsic
def _load_f32(typingctx, arr, index):  # type: ignore[no-untyped-def]
    """The float32 at byte ``index`` of a uint8 array (any alignment)."""
    sig = types.float32(arr, index)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(array.data, [args[1]]), ir.FloatType().as_pointer())
        return builder.load(ptr, align=1)

    return sig, codegen


@intrinsic
def _load_f16(typingctx, arr, index):  # type: ignore[no-untyped-def]
    """The float16 at byte ``index`` of a uint8 array, as a float32 (exact)."""
    sig = types.float32(arr, index)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(array.data, [args[1]]), ir.HalfType().as_pointer())
        return builder.fpext(builder.load(ptr, align=1), ir.FloatType())

    return sig, codegen


@intrinsic
def _load_bf16(typingctx, arr, index):  # type: ignore[no-untyped-def]
    """The bfloat16 at byte ``index`` of a uint8 array, as a float32 (exact: its high half)."""
    sig = types.float32(arr, index)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array = context.make_array(signature.args[0])(context, builder, args[0])
        i16, i32 = ir.IntType(16), ir.IntType(32)
        ptr = builder.bitcast(builder.gep(array.data, [args[1]]), i16.as_pointer())
        bits = builder.shl(builder.zext(builder.load(ptr, align=1), i32), ir.Constant(i32, 16))
        return builder.bitcast(bits, ir.FloatType())

    return sig, codegen


# --- the kernels: bags [lo, hi) of one table --------------------------------------------
# Arguments shared by all: data (R, rb) uint8 rows (C-contiguous), ids (N,) int64
# rows or SKIP (< 0), ends (B + 1,) int64 canonical offsets, psw (N,) float32 (used when
# has_psw), mode (0 sum, 1 mean, 2 max), pad (-1: none), dim, acc (a scratch row of dim
# float32), out (B, dim) float32. Sum and mean take four rows a step when none of the four
# is skipped or padding: four multiply-adds per load and store of an accumulator.


@njit(nogil=True, cache=True, fastmath=FASTMATH, boundscheck=False)
def _bags_int8(data, ids, ends, psw, has_psw, mode, pad, dim, acc, out, lo, hi):  # type: ignore[no-untyped-def]
    last = ends[hi]
    rb = data.shape[1]
    one = np.float32(1.0)
    for b in range(lo, hi):
        start, end = ends[b], ends[b + 1]
        for d in range(dim):
            acc[d] = -np.inf if mode == MAX else np.float32(0.0)
        count = 0
        j = start
        while j < end:
            if mode != MAX and j + 4 <= end:
                i0, i1, i2, i3 = ids[j], ids[j + 1], ids[j + 2], ids[j + 3]
                if min(min(i0, i1), min(i2, i3)) >= 0 and i0 != pad and i1 != pad and i2 != pad and i3 != pad:
                    # Four rows a step: four multiply-adds per accumulator load and store.
                    for a in range(4):
                        ahead = j + a + PREFETCH_AHEAD
                        if ahead < last:
                            at = ids[ahead] * rb
                            prefetch_read(data, at)
                            prefetch_read(data, at + rb - 1)
                    r0, r1, r2, r3 = data[i0], data[i1], data[i2], data[i3]
                    if has_psw:
                        w0, w1, w2, w3 = psw[j], psw[j + 1], psw[j + 2], psw[j + 3]
                    else:
                        w0 = w1 = w2 = w3 = one
                    s0, s1 = _load_f32(r0, dim) * w0, _load_f32(r1, dim) * w1
                    s2, s3 = _load_f32(r2, dim) * w2, _load_f32(r3, dim) * w3
                    bias = ((_load_f32(r0, dim + 4) * w0 + _load_f32(r1, dim + 4) * w1)
                            + (_load_f32(r2, dim + 4) * w2 + _load_f32(r3, dim + 4) * w3))
                    for d in range(dim):
                        acc[d] += ((s0 * np.float32(r0[d]) + s1 * np.float32(r1[d]))
                                   + (s2 * np.float32(r2[d]) + s3 * np.float32(r3[d]))) + bias
                    count += 4
                    j += 4
                    continue
            ahead = j + PREFETCH_AHEAD
            if ahead < last and ids[ahead] >= 0:
                at = ids[ahead] * rb
                prefetch_read(data, at)
                prefetch_read(data, at + rb - 1)
            r = ids[j]
            j += 1
            if r < 0 or r == pad:
                continue
            count += 1
            row = data[r]  # a 1-D view: indexing it with a loop counter vectorises
            scale = _load_f32(row, dim)
            bias = _load_f32(row, dim + 4)
            if mode == MAX:
                for d in range(dim):
                    v = scale * np.float32(row[d]) + bias
                    if v > acc[d]:
                        acc[d] = v
            else:
                if has_psw:
                    scale *= psw[j - 1]
                    bias *= psw[j - 1]
                for d in range(dim):
                    acc[d] += scale * np.float32(row[d]) + bias
        dst = out[b]
        if mode == MAX:
            for d in range(dim):
                dst[d] = acc[d] if count > 0 else np.float32(0.0)
        else:
            inv = np.float32(1.0) / np.float32(count) if mode == MEAN and count > 0 else np.float32(1.0)
            for d in range(dim):
                dst[d] = acc[d] * inv


@njit(nogil=True, cache=True, fastmath=FASTMATH, boundscheck=False)
def _bags_nbit(data, ids, ends, psw, has_psw, mode, pad, dim, bits, planes, out, lo, hi):  # type: ignore[no-untyped-def]
    # planes (per, nb): plane s accumulates the values in bit position s of each byte (values
    # k * per + s), so that every loop over a row's bytes runs at unit stride and vectorises.
    rb = data.shape[1]
    per = 8 // bits
    mask = (1 << bits) - 1
    nb = (dim + per - 1) // per
    last = ends[hi]
    one = np.float32(1.0)
    for b in range(lo, hi):
        start, end = ends[b], ends[b + 1]
        for s in range(per):
            plane = planes[s]
            for k in range(nb):
                plane[k] = -np.inf if mode == MAX else np.float32(0.0)
        count = 0
        j = start
        while j < end:
            if mode != MAX and j + 4 <= end:
                i0, i1, i2, i3 = ids[j], ids[j + 1], ids[j + 2], ids[j + 3]
                if min(min(i0, i1), min(i2, i3)) >= 0 and i0 != pad and i1 != pad and i2 != pad and i3 != pad:
                    for a in range(4):
                        ahead = j + a + PREFETCH_AHEAD
                        if ahead < last:
                            at = ids[ahead] * rb
                            prefetch_read(data, at)
                            prefetch_read(data, at + rb - 1)
                    r0, r1, r2, r3 = data[i0], data[i1], data[i2], data[i3]
                    if has_psw:
                        w0, w1, w2, w3 = psw[j], psw[j + 1], psw[j + 2], psw[j + 3]
                    else:
                        w0 = w1 = w2 = w3 = one
                    s0, s1 = _load_f16(r0, nb) * w0, _load_f16(r1, nb) * w1
                    s2, s3 = _load_f16(r2, nb) * w2, _load_f16(r3, nb) * w3
                    bias = ((_load_f16(r0, nb + 2) * w0 + _load_f16(r1, nb + 2) * w1)
                            + (_load_f16(r2, nb + 2) * w2 + _load_f16(r3, nb + 2) * w3))
                    if bits == 4:  # (constant shifts: the common case, spelled out)
                        low, high = planes[0], planes[1]
                        for k in range(nb):
                            x0, x1, x2, x3 = np.int32(r0[k]), np.int32(r1[k]), np.int32(r2[k]), np.int32(r3[k])
                            low[k] += ((s0 * np.float32(x0 & 15) + s1 * np.float32(x1 & 15))
                                       + (s2 * np.float32(x2 & 15) + s3 * np.float32(x3 & 15))) + bias
                            high[k] += ((s0 * np.float32(x0 >> 4) + s1 * np.float32(x1 >> 4))
                                        + (s2 * np.float32(x2 >> 4) + s3 * np.float32(x3 >> 4))) + bias
                    else:
                        for s in range(per):
                            plane = planes[s]
                            shift = s * bits
                            for k in range(nb):
                                plane[k] += ((s0 * np.float32((np.int32(r0[k]) >> shift) & mask)
                                              + s1 * np.float32((np.int32(r1[k]) >> shift) & mask))
                                             + (s2 * np.float32((np.int32(r2[k]) >> shift) & mask)
                                                + s3 * np.float32((np.int32(r3[k]) >> shift) & mask))) + bias
                    count += 4
                    j += 4
                    continue
            ahead = j + PREFETCH_AHEAD
            if ahead < last and ids[ahead] >= 0:
                at = ids[ahead] * rb
                prefetch_read(data, at)
                prefetch_read(data, at + rb - 1)
            r = ids[j]
            j += 1
            if r < 0 or r == pad:
                continue
            count += 1
            row = data[r]  # a 1-D view: indexing it with a loop counter vectorises
            scale = _load_f16(row, nb)
            bias = _load_f16(row, nb + 2)
            if mode != MAX and has_psw:
                scale *= psw[j - 1]
                bias *= psw[j - 1]
            for s in range(per):
                plane = planes[s]
                shift = s * bits
                if mode == MAX:
                    for k in range(nb):
                        v = scale * np.float32((np.int32(row[k]) >> shift) & mask) + bias
                        if v > plane[k]:
                            plane[k] = v
                else:
                    for k in range(nb):
                        plane[k] += scale * np.float32((np.int32(row[k]) >> shift) & mask) + bias
        dst = out[b]
        inv = np.float32(1.0) / np.float32(count) if mode == MEAN and count > 0 else np.float32(1.0)
        for s in range(per):
            plane = planes[s]
            for k in range(nb):
                d = k * per + s
                if d < dim:
                    if mode == MAX:
                        dst[d] = plane[k] if count > 0 else np.float32(0.0)
                    else:
                        dst[d] = plane[k] * inv


@njit(nogil=True, cache=True, fastmath=FASTMATH, boundscheck=False)
def _bags_half(data, ids, ends, psw, has_psw, mode, pad, dim, brain, acc, out, lo, hi):  # type: ignore[no-untyped-def]
    rb = data.shape[1]
    last = ends[hi]
    for b in range(lo, hi):
        start, end = ends[b], ends[b + 1]
        for d in range(dim):
            acc[d] = -np.inf if mode == MAX else np.float32(0.0)
        count = 0
        for j in range(start, end):
            ahead = j + PREFETCH_AHEAD
            if ahead < last and ids[ahead] >= 0:
                at = ids[ahead] * rb
                prefetch_read(data, at)
                prefetch_read(data, at + rb - 1)
            r = ids[j]
            if r < 0 or r == pad:
                continue
            count += 1
            row = data[r]  # a 1-D view: indexing it with a loop counter vectorises
            w = psw[j] if has_psw else np.float32(1.0)
            for d in range(dim):
                v = _load_bf16(row, 2 * d) if brain else _load_f16(row, 2 * d)
                if mode == MAX:
                    if v > acc[d]:
                        acc[d] = v
                else:
                    acc[d] += w * v
        dst = out[b]
        if mode == MAX:
            for d in range(dim):
                dst[d] = acc[d] if count > 0 else np.float32(0.0)
        else:
            inv = np.float32(1.0) / np.float32(count) if mode == MEAN and count > 0 else np.float32(1.0)
            for d in range(dim):
                dst[d] = acc[d] * inv


# --- launchers ---------------------------------------------------------------------------

# Ids per work item at least: enough to amortise a kernel call.
_IDS_PER_ITEM = 4096
_EMPTY_F32 = np.zeros(1, np.float32)


def _i64(t: Tensor) -> np.ndarray:
    return t.reshape(-1).to(torch.int64).contiguous().numpy()


def _bounds(ends: np.ndarray, pieces: int) -> list[int]:
    """``pieces + 1`` bag boundaries splitting the ids about evenly."""
    num_bags = ends.shape[0] - 1
    if pieces <= 1 or num_bags <= 1:
        return [0, num_bags]
    targets = np.linspace(0, ends[-1], pieces + 1)[1:-1]
    cuts = np.searchsorted(ends, targets).tolist()
    return sorted({0, num_bags, *[min(max(c, 0), num_bags) for c in cuts]})


class _Job:
    """One table's bags as work items: ``run(lo, hi)`` pools bags ``lo .. hi - 1`` into ``out``."""

    def __init__(self, layout: Layout, data: Tensor, ids: np.ndarray, ends: np.ndarray, psw: Tensor | None,
                 mode: int, pad: int | None, dim: int, out: np.ndarray) -> None:
        self.layout, self.dim, self.out, self.ids, self.ends, self.mode = layout, dim, out, ids, ends, mode
        self.rows = data.contiguous().numpy()
        self.has_psw = psw is not None
        self.psw = psw.detach().reshape(-1).to(torch.float32).contiguous().numpy() if self.has_psw else _EMPTY_F32
        self.pad = -1 if pad is None else pad

    def run(self, lo: int, hi: int) -> None:
        layout, dim, out = self.layout, self.dim, self.out
        args = (self.rows, self.ids, self.ends, self.psw, self.has_psw, self.mode, self.pad, dim)
        if layout.bits == 8:
            _bags_int8(*args, np.empty(max(dim, 1), np.float32), out, lo, hi)
        elif layout.integer:
            planes = np.empty((layout.per_byte, max(layout.data_bytes(dim), 1)), np.float32)
            _bags_nbit(*args, layout.bits, planes, out, lo, hi)
        else:
            _bags_half(*args, layout.name == "bfloat16", np.empty(max(dim, 1), np.float32), out, lo, hi)


def _run_jobs(jobs: list[_Job]) -> None:
    """Every job's bags, as work items of about equal ids, on the pool (one parallel pass)."""
    threads = max(1, torch.get_num_threads())
    total = sum(int(j.ends[-1]) for j in jobs)
    # Two items per thread (a late thread's share is taken by the others), no more than the
    # ids justify: each kernel call costs some microseconds of dispatch.
    pieces = min(2 * threads if threads > 1 else 1, max(1, total // _IDS_PER_ITEM))
    items: list[tuple[_Job, int, int]] = []
    for job in jobs:
        share = max(1, round(pieces * int(job.ends[-1]) / max(total, 1)))
        bounds = _bounds(job.ends, share)
        items += [(job, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]

    def item(i: int) -> None:
        job, lo, hi = items[i]
        job.run(lo, hi)

    POOL.run(item, len(items), threads)


def _run(layout: Layout, data: Tensor, ids: np.ndarray, ends: np.ndarray, psw: Tensor | None, mode: int,
         pad: int | None, dim: int, out: np.ndarray) -> None:
    _run_jobs([_Job(layout, data, ids, ends, psw, mode, pad, dim, out)])


def inference_many(features: list[tuple]) -> Tensor:  # type: ignore[type-arg]
    """``(B, sum of D)``: the bags of several tables, side by side, in one parallel pass
    (``[(lookup, data, ids, ends, mode, psw, padding_idx), ...]``, as ``pipeline._inference`` gives)."""
    ends_all = [_i64(f[3]) for f in features]
    num_bags = ends_all[0].shape[0] - 1
    total = sum(f[0].dim for f in features)
    out = torch.empty(num_bags, total, dtype=torch.float32)
    view = out.numpy()
    jobs, col = [], 0
    for (lookup, data, ids, _, mode, psw, pad), ends in zip(features, ends_all):
        dim = lookup.dim
        if num_bags and dim:
            jobs.append(_Job(lookup.layout, data, _i64(ids), ends, psw, _MODES[mode], pad, dim,
                             view[:, col:col + dim]))
        col += dim
    if jobs:
        _run_jobs(jobs)
    return out


def embedding_bag_inference(
    data: Tensor, ids: Tensor, offsets: Tensor, mode: str, per_sample_weights: Tensor | None,
    padding_idx: int | None, layout: Layout, dim: int,
) -> Tensor:
    """``(B, dim)`` float32, as :func:`embtab.quant.reference.embedding_bag_inference`."""
    ends = _i64(offsets)
    out = torch.empty(ends.shape[0] - 1, dim, dtype=torch.float32)
    if out.numel():
        _run(layout, data, _i64(ids), ends, per_sample_weights, _MODES[mode], padding_idx, dim, out.numpy())
    return out


def embedding_forward(data: Tensor, ids: Tensor, layout: Layout, dim: int) -> Tensor:
    """``(*ids.shape, dim)`` float32 rows (SKIP ids give zeros): bags of one id each."""
    flat = _i64(ids)
    out = torch.empty(flat.shape[0], dim, dtype=torch.float32)
    if out.numel():
        ends = np.arange(flat.shape[0] + 1, dtype=np.int64)
        _run(layout, data, flat, ends, None, SUM, None, dim, out.numpy())
    return out.reshape(*ids.shape, dim)


# --- the greedy range search ----------------------------------------------------------------


@intrinsic
def _round_f16(typingctx, x):  # type: ignore[no-untyped-def]
    """The float16 nearest ``x`` (ties to even; overflow to inf), as a float32."""
    sig = types.float32(x)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@njit(nogil=True, cache=True)  # no fastmath: float32 operation for operation, as torch's C++
def _greedy_loss(row, xmin, xmax, qmax, half):  # type: ignore[no-untyped-def]
    if half:
        bias = _round_f16(xmin)
        rng = xmax - bias
        scale = np.float32(1.0) if rng == 0 else _round_f16(rng / qmax)
        inv = np.float32(1.0) if scale == 0 else np.float32(1.0) / scale
    else:  # int8: float32 scale and bias (as quant/reference.py's _params)
        bias = xmin
        rng = xmax - xmin
        scale = rng / np.float32(255.0)
        inv = np.float32(255.0) / (rng + np.float32(1e-8))
    norm = np.float32(0.0)
    for d in range(row.shape[0]):
        q = min(max(np.rint((row[d] - bias) * inv), np.float32(0.0)), qmax)
        err = row[d] - (q * scale + bias)
        norm += err * err
    return np.sqrt(norm)


@njit(nogil=True, cache=True)
def _greedy_rows(x, qmax, half, lo_out, hi_out, start, stop):  # type: ignore[no-untyped-def]
    n_bins = np.float32(200.0)
    min_bins = np.float32(168.0)  # float(200 * (1 - 0.16)), as torch rounds it
    for r in range(start, stop):
        row = x[r]
        xmin = row[0]
        xmax = row[0]
        for d in range(1, row.shape[0]):
            xmin = min(xmin, row[d])
            xmax = max(xmax, row[d])
        stepsize = (xmax - xmin) / n_bins
        thr = min_bins * stepsize
        loss = _greedy_loss(row, xmin, xmax, qmax, half)
        best, best_min, best_max = loss, xmin, xmax
        cur_min, cur_max, cur = xmin, xmax, loss
        while cur_min + thr < cur_max:
            loss1 = _greedy_loss(row, cur_min + stepsize, cur_max, qmax, half)
            loss2 = _greedy_loss(row, cur_min, cur_max - stepsize, qmax, half)
            if cur < loss1 and cur < loss2 and cur < best:
                best, best_min, best_max = cur, cur_min, cur_max
            if loss1 < loss2:
                cur_min = cur_min + stepsize
                cur = loss1
            else:
                cur_max = cur_max - stepsize
                cur = loss2
        lo_out[r] = best_min
        hi_out[r] = best_max


def greedy_range(x: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """:func:`embtab.quant.reference.greedy_range` of float32 rows ``x`` (r, D), row by row in
    numba on the update pool's threads (the same ranges, to the bit)."""
    rows = x.contiguous().numpy()
    lo, hi = np.empty(rows.shape[0], np.float32), np.empty(rows.shape[0], np.float32)
    threads = max(1, torch.get_num_threads())
    step = max(1, -(-rows.shape[0] // (4 * threads)))
    qmax, half = np.float32(layout.qmax), layout.bits < 8

    def item(i: int) -> None:
        _greedy_rows(rows, qmax, half, lo, hi, i * step, min((i + 1) * step, rows.shape[0]))

    POOL.run(item, -(-rows.shape[0] // step), threads)
    return torch.from_numpy(lo), torch.from_numpy(hi)
