"""Backward fused with the optimizer update, for all tables of a collection in one launch.

This is the ``"triton"`` update backend (chosen for CUDA tables by ``ops/registry.py``);
it provides ``name``, ``fused_update`` (rows and summed gradients given) and
``run_jobs`` (the table-batched path the optimizer engine prefers).

**Layout.** A batch of tables (``TableJob`` s sharing one flat gradient buffer and one
weight dtype) is addressed through one small int64 *meta* table, built once per set
of tensors and cached: per table its first *global* row (tables are stacked in one key
space, table ``t`` owning keys ``row_off[t] <= key < row_off[t + 1]``), its D, padding
row, ``scale_grad_by_freq`` flag, and where its weight and state tensors start, as
element offsets from the first table's tensors (the kernels add them to that pointer,
so the tables stay separate ``Parameter`` s and nothing is copied; an offset, unlike
an integer cast to a pointer, keeps the alignment facts that let Triton emit 16-byte
vector loads, and ``ALIGN`` tells it that every D and offset is a multiple of up to 16
elements). A lane finds its table by a binary search over ``row_off`` (``LOG2_T``
steps through a few cached bytes).

**Kernels.** Contributions (looked-up ids) are turned into global keys, sorted, and cut
into pieces exactly as in :mod:`.backward` (same plan). ``_pieces_update_kernel`` sums
each piece (``BLOCK_S`` pieces per program, one step per contribution, each a
contiguous gradient row read from ``grad_flat[src[j]:src[j] + D]``); a piece holding
a whole row applies the optimizer right there: it reads the weight row and its
state once, updates them in float32 registers (float64 for float64 tables) and writes
them back once, so the summed gradient never touches memory. Pieces of hot rows
park partial sums; ``_partials_update_kernel`` adds them in order and updates those
rows. Every row is owned by exactly one lane and sums in a fixed order: the result is
bitwise reproducible. One program holds whole rows (``BLOCK_D = next_power_of_2(max
D)``) because row-wise Adagrad needs the full row's mean of squares.

With plain SGD (no weight decay, no ``scale_grad_by_freq``), float32/float64 weights,
and determinism not requested, the update is linear in the contributions, so
``_sgd_atomic_kernel`` skips the sort and adds ``-lr * g`` to the weight with atomics.

The math matches ``ops/update_torch.fused_update`` operation for operation (Adam's bias
corrections in float64 from each row's own step count, torch's ``lerp`` formula for the
first moment); the tests hold it to ``ops/update_reference.py``.
No step reads anything back to the host: hyperparameters and meta go to the device
with asynchronous copies from pinned memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from ..common import KIND_CODES, Hyper, TableJob, state_slots
from . import _common as C
from .backward import BLOCK_Q, SLOTS_PER_PROGRAM, plan_segments

name = "triton"

SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM, ADAMW = (KIND_CODES[k] for k in ("sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"))

# Rows of the meta table (each T + 1 wide) and slots of the float64 hyperparameter
# vector. tl.constexpr so that kernels may read them (host code uses ``.value``).
_ROW_OFF, _DIM, _PAD, _FREQ, _W, _S1, _S2, _STEP = (tl.constexpr(i) for i in range(8))
_LR, _EPS, _B1, _B2, _WD, _DECAY, _1_B1, _1_B2 = (tl.constexpr(i) for i in range(8))


# --- jit helpers ------------------------------------------------------------------------------


@triton.jit
def _table_of(key, meta_ptr, T, LOG2_T: tl.constexpr):
    """Table of each global key: binary search for row_off[t] <= key < row_off[t + 1]."""
    lo = tl.zeros(key.shape, dtype=tl.int32)
    hi = tl.zeros(key.shape, dtype=tl.int32) + T
    for _ in tl.static_range(LOG2_T):
        mid = (lo + hi) // 2
        go = key >= tl.load(meta_ptr + _ROW_OFF * (T + 1) + mid)
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    return lo


@triton.jit
def _pow_steps(base, steps):
    """``base ** steps`` in float64 for (R,) int64 ``steps >= 0``, by binary exponentiation.

    About log2(steps) roundings, so within a few ulps of the correctly rounded power.
    """
    result = tl.full(steps.shape, 1.0, tl.float64)
    b = tl.full(steps.shape, 1.0, tl.float64) * base.to(tl.float64)
    e = steps
    for _ in range(63):  # a loop, not unrolled: steps fit in 63 bits
        result = tl.where((e & 1) != 0, result * b, result)
        b = b * b
        e = e >> 1
    return result


@triton.jit
def _finish_rows(
    key,  # (R,) int64 global rows
    t,  # (R,) int32 their tables
    g,  # (R, BLOCK_D) summed gradients, ACC
    cnt,  # (R,) contributions summed (for scale_grad_by_freq)
    row_ok,  # (R,) rows to update
    cols,  # (BLOCK_D,)
    meta_ptr,
    w_ptr,  # first table's weight; the others at meta[_W] elements from it
    s1_ptr,  # first table's state 1 (Adagrad sum, row-wise sum, Adam exp_avg)
    s2_ptr,  # first table's Adam exp_avg_sq
    step_ptr,  # first table's Adam step (int64)
    hyper_ptr,  # (8,) float64
    T,
    KIND: tl.constexpr,
    ANY_FREQ: tl.constexpr,
    ACC: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Apply one optimizer step to each row: read weight and state once, write once."""
    M = T + 1
    row = key - tl.load(meta_ptr + _ROW_OFF * M + t, mask=row_ok, other=0)  # row in its table
    dim = tl.load(meta_ptr + _DIM * M + t, mask=row_ok, other=0)
    w_at = tl.load(meta_ptr + _W * M + t, mask=row_ok, other=0)
    s1_at = tl.load(meta_ptr + _S1 * M + t, mask=row_ok, other=0)
    s2_at = tl.load(meta_ptr + _S2 * M + t, mask=row_ok, other=0)
    elem = row * dim  # (R,) int64: first element of the row in a (V, D) tensor
    if ALIGN > 1:
        dim = tl.multiple_of(dim, ALIGN)
        elem = tl.multiple_of(elem, ALIGN)
        w_at = tl.multiple_of(w_at, ALIGN)
        s1_at = tl.multiple_of(s1_at, ALIGN)
        s2_at = tl.multiple_of(s2_at, ALIGN)
    if ANY_FREQ:
        freq = tl.load(meta_ptr + _FREQ * M + t, mask=row_ok, other=0) != 0
        g = tl.where(freq[:, None], g / tl.maximum(cnt, 1).to(ACC)[:, None], g)
    m = row_ok[:, None] & (cols[None, :] < dim[:, None])
    w_ptrs = w_ptr + (w_at + elem)[:, None] + cols[None, :]
    w = tl.load(w_ptrs, mask=m, other=0.0).to(ACC)
    lr = tl.load(hyper_ptr + _LR).to(ACC)
    eps = tl.load(hyper_ptr + _EPS).to(ACC)
    wd = tl.load(hyper_ptr + _WD).to(ACC)
    if KIND != 4:  # L2 weight decay (all but AdamW), as the torch backend: only if non-zero
        g = tl.where(wd != 0, g + wd * w, g)
    if KIND == 0:  # SGD
        w = w - lr * g
    elif KIND == 1:  # Adagrad: sum (V, D)
        s_ptrs = s1_ptr + (s1_at + elem)[:, None] + cols[None, :]
        s = tl.load(s_ptrs, mask=m, other=0.0) + g * g
        tl.store(s_ptrs, s, mask=m)
        w = w - lr * g / (tl.sqrt(s) + eps)
    elif KIND == 2:  # row-wise Adagrad: sum (V,), the mean of squares over the row's D
        s_ptrs = s1_ptr + s1_at + row
        mean_sq = tl.sum(tl.where(m, g * g, 0.0), axis=1) / tl.maximum(dim, 1).to(ACC)
        s = tl.load(s_ptrs, mask=row_ok, other=0.0) + mean_sq
        tl.store(s_ptrs, s, mask=row_ok)
        w = w - (lr / (tl.sqrt(s) + eps))[:, None] * g
    else:  # Adam / AdamW, lazy: this row's own step count
        step_ptrs = step_ptr + tl.load(meta_ptr + _STEP * M + t, mask=row_ok, other=0) + row
        step = tl.load(step_ptrs, mask=row_ok, other=0) + 1
        tl.store(step_ptrs, step, mask=row_ok)
        if KIND == 4:
            w = w * tl.load(hyper_ptr + _DECAY).to(ACC)  # decoupled decay: w *= 1 - lr * wd
        m_ptrs = s1_ptr + (s1_at + elem)[:, None] + cols[None, :]
        v_ptrs = s2_ptr + (s2_at + elem)[:, None] + cols[None, :]
        m_old = tl.load(m_ptrs, mask=m, other=0.0)
        v_old = tl.load(v_ptrs, mask=m, other=0.0)
        wt = tl.load(hyper_ptr + _1_B1).to(ACC)
        # torch.lerp(m, g, wt), with its two formulas for small and large weights
        m_new = tl.where(wt < 0.5, m_old + wt * (g - m_old), g - (g - m_old) * (1 - wt))
        v_new = v_old * tl.load(hyper_ptr + _B2).to(ACC) + tl.load(hyper_ptr + _1_B2).to(ACC) * g * g
        tl.store(m_ptrs, m_new, mask=m)
        tl.store(v_ptrs, v_new, mask=m)
        # Bias corrections in float64 (beta ** step), then rounded to ACC, as torch does.
        # By squaring, not tl.exp(step * log(beta)): it needs no float64 transcendental
        # (the compiled exp here has given wrong updates for steps >= 2 on Hopper), and,
        # unlike libdevice's pow, it also runs under the interpreter.
        bc1 = 1.0 - _pow_steps(tl.load(hyper_ptr + _B1), step)
        bc2 = 1.0 - _pow_steps(tl.load(hyper_ptr + _B2), step)
        step_size = (tl.load(hyper_ptr + _LR) / bc1).to(ACC)
        bc2_sqrt = tl.sqrt(bc2).to(ACC)
        w = w - step_size[:, None] * m_new / (tl.sqrt(v_new) / bc2_sqrt[:, None] + eps)
    tl.store(w_ptrs, w.to(w_ptr.dtype.element_ty), mask=m)


# --- kernels ---------------------------------------------------------------------------------


@triton.jit
def _pieces_update_kernel(
    grad_ptr,  # flat gradient buffer
    src_ptr,  # (N,) int64: element offset of each contribution's gradient row
    scale_ptr,  # (N,) ACC multiplier (HAS_SCALE)
    perm_ptr,  # (N,) contribution at each sorted position
    keys_ptr,  # (N,) sorted global rows, total_rows for dropped ids
    piece_start_ptr,  # (N + 1,)
    whole_ptr,  # (N,) int8
    slot_ptr,  # (N,)
    num_pieces_ptr,  # (1,)
    part_ptr,  # (S, BLOCK_D) ACC partial sums
    part_key_ptr,  # (S,) int64, -1 unused
    part_cnt_ptr,  # (S,) int32
    meta_ptr,
    w_ptr, s1_ptr, s2_ptr, step_ptr,  # first table's tensors (see _finish_rows)
    hyper_ptr,
    T,
    total_rows,
    KIND: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    ANY_FREQ: tl.constexpr,
    ACC: tl.constexpr,
    ALIGN: tl.constexpr,
    LOG2_T: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    j = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)  # pieces
    j_ok = j < tl.load(num_pieces_ptr)
    start = tl.load(piece_start_ptr + j, mask=j_ok, other=0)
    end = tl.load(piece_start_ptr + j + 1, mask=j_ok, other=0)
    key = tl.load(keys_ptr + start, mask=j_ok, other=total_rows).to(tl.int64)
    live = j_ok & (key < total_rows)
    length = tl.where(live, end - start, 0)
    t = _table_of(key, meta_ptr, T, LOG2_T)
    dim = tl.load(meta_ptr + _DIM * (T + 1) + t, mask=live, other=0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols[None, :] < dim[:, None]  # (BLOCK_S, BLOCK_D): each table has its own D
    acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=ACC)
    for step in range(0, tl.max(length, axis=0)):
        on = step < length
        c = tl.load(perm_ptr + start + step, mask=on, other=0).to(tl.int64)
        off = tl.load(src_ptr + c, mask=on, other=0)
        # A 2-D mask of its own, not on[:, None]: see _reduce_pieces_kernel (Triton 3.6).
        row_on = step < length[:, None]
        v = tl.load(grad_ptr + off[:, None] + cols[None, :], mask=row_on & col_ok, other=0.0).to(ACC)
        if HAS_SCALE:
            v = v * tl.load(scale_ptr + c, mask=on, other=0.0).to(ACC)[:, None]
        acc += v
    is_whole = tl.load(whole_ptr + j, mask=j_ok, other=0) != 0
    _finish_rows(key, t, acc, length, live & is_whole, cols, meta_ptr, w_ptr, s1_ptr, s2_ptr, step_ptr,
                 hyper_ptr, T, KIND, ANY_FREQ, ACC, ALIGN)
    parked = live & (is_whole == 0)
    slot = tl.load(slot_ptr + j, mask=parked, other=0).to(tl.int64)
    tl.store(part_ptr + slot[:, None] * BLOCK_D + cols[None, :], acc, mask=parked[:, None])
    tl.store(part_key_ptr + slot, key, mask=parked)
    tl.store(part_cnt_ptr + slot, length.to(tl.int32), mask=parked)


@triton.jit
def _partials_update_kernel(
    part_ptr,  # (S, BLOCK_D) ACC
    part_key_ptr,  # (S,) int64; a row's partials are consecutive
    part_cnt_ptr,  # (S,) int32
    meta_ptr,
    w_ptr, s1_ptr, s2_ptr, step_ptr,
    hyper_ptr,
    S,
    T,
    KIND: tl.constexpr,
    ANY_FREQ: tl.constexpr,
    ACC: tl.constexpr,
    ALIGN: tl.constexpr,
    LOG2_T: tl.constexpr,
    SLOTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    cols = tl.arange(0, BLOCK_D)
    lanes = tl.arange(0, BLOCK_Q)
    for h in range(0, SLOTS):
        q = tl.program_id(0).to(tl.int64) * SLOTS + h
        if q < S:
            key = tl.load(part_key_ptr + q)
            prev = tl.load(part_key_ptr + q - 1, mask=q > 0, other=-1)
            if (key >= 0) & (key != prev):  # first partial of row `key`
                acc = tl.zeros((1, BLOCK_D), dtype=ACC)
                cnt = tl.zeros((1,), dtype=tl.int32)
                base = q
                more = key >= 0  # loop-carried: a tensor, not a Python bool
                while more:
                    qs = base + lanes
                    same = (qs < S) & (tl.load(part_key_ptr + qs, mask=qs < S, other=-1) == key)
                    tile = tl.load(part_ptr + qs[:, None] * BLOCK_D + cols[None, :], mask=same[:, None], other=0.0)
                    acc += tl.sum(tile, axis=0, keep_dims=True)
                    cnt += tl.sum(tl.load(part_cnt_ptr + qs, mask=same, other=0), axis=0, keep_dims=True)
                    more = tl.sum(same.to(tl.int32), axis=0) == BLOCK_Q
                    base += BLOCK_Q
                keys = tl.zeros((1,), dtype=tl.int64) + key
                t = _table_of(keys, meta_ptr, T, LOG2_T)
                _finish_rows(keys, t, acc, cnt, keys >= 0, cols, meta_ptr, w_ptr, s1_ptr, s2_ptr, step_ptr,
                             hyper_ptr, T, KIND, ANY_FREQ, ACC, ALIGN)


@triton.jit
def _rows_update_kernel(
    rows_ptr,  # (U,) distinct rows of table 0
    grads_ptr,  # (U, D) summed gradients, contiguous
    U,
    D,
    meta_ptr,
    w_ptr, s1_ptr, s2_ptr, step_ptr,
    hyper_ptr,
    KIND: tl.constexpr,
    ACC: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    u = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    u_ok = u < U
    key = tl.load(rows_ptr + u, mask=u_ok, other=0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    g = tl.load(grads_ptr + u[:, None] * D + cols[None, :], mask=u_ok[:, None] & (cols < D)[None, :], other=0.0)
    t = tl.zeros((BLOCK_S,), dtype=tl.int32)
    _finish_rows(key, t, g.to(ACC), tl.full((BLOCK_S,), 1, tl.int32), u_ok, cols, meta_ptr,
                 w_ptr, s1_ptr, s2_ptr, step_ptr, hyper_ptr, 1, KIND, False, ACC, ALIGN)


@triton.jit
def _sgd_atomic_kernel(
    grad_ptr,  # flat gradient buffer
    src_ptr,  # (N,) int64 element offsets
    scale_ptr,  # (N,) ACC (HAS_SCALE)
    dst_ptr,  # (N,) global rows, -1 dropped
    meta_ptr,
    w_ptr,  # first table's weight
    hyper_ptr,
    N,
    T,
    HAS_SCALE: tl.constexpr,
    ACC: tl.constexpr,
    ALIGN: tl.constexpr,
    LOG2_T: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    i_ok = i < N
    key = tl.load(dst_ptr + i, mask=i_ok, other=-1).to(tl.int64)
    live = key >= 0
    t = _table_of(key, meta_ptr, T, LOG2_T)
    M = T + 1
    row = key - tl.load(meta_ptr + _ROW_OFF * M + t, mask=live, other=0)
    dim = tl.load(meta_ptr + _DIM * M + t, mask=live, other=0)
    w_at = tl.load(meta_ptr + _W * M + t, mask=live, other=0)
    elem = row * dim
    if ALIGN > 1:
        dim = tl.multiple_of(dim, ALIGN)
        elem = tl.multiple_of(elem, ALIGN)
        w_at = tl.multiple_of(w_at, ALIGN)
    cols = tl.arange(0, BLOCK_D)
    m = live[:, None] & (cols[None, :] < dim[:, None])
    off = tl.load(src_ptr + i, mask=live, other=0)
    g = tl.load(grad_ptr + off[:, None] + cols[None, :], mask=m, other=0.0).to(ACC)
    if HAS_SCALE:
        g = g * tl.load(scale_ptr + i, mask=live, other=0.0).to(ACC)[:, None]
    lr = tl.load(hyper_ptr + _LR).to(ACC)
    # Relaxed: only the final sums matter, nothing else is ordered against them.
    tl.atomic_add(w_ptr + (w_at + elem)[:, None] + cols[None, :], -(lr * g), mask=m, sem="relaxed")


# --- host side --------------------------------------------------------------------------------


def _to_device(values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without a host sync (pinned, asynchronous copy)."""
    cpu = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return cpu.pin_memory().to(device, non_blocking=True)
    return cpu


class _LRU(OrderedDict):
    """A tiny cache of device-side meta and hyperparameter vectors, keyed by host values."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key: Any, make: Any) -> torch.Tensor:
        value = self.get(key)
        if value is None:
            value = make()
            self[key] = value
            if len(self) > self.size:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


_meta_cache = _LRU(64)
_hyper_cache = _LRU(16)


class _Tables(NamedTuple):
    """A batch of tables as the kernels address it."""

    meta: torch.Tensor  # (8, T + 1) int64, rows _ROW_OFF .. _STEP
    w: torch.Tensor  # first table's weight: the base of the _W offsets
    s1: torch.Tensor  # bases of the _S1, _S2, _STEP offsets (the weight where a kind has none)
    s2: torch.Tensor
    step: torch.Tensor
    align: int  # a power of two <= 16 dividing every D, offset and base address (elements)


def _offsets(tensors: Sequence[torch.Tensor | None], fallback: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """A base tensor and each tensor's start as an element offset from it."""
    present = [x for x in tensors if x is not None]
    base = present[0] if present else fallback
    size = base.element_size()
    out = []
    for x in tensors:
        delta = 0 if x is None else x.data_ptr() - base.data_ptr()
        if delta % size:  # every allocator aligns to the element size; a hand-made view might not
            raise RuntimeError("embtab triton fused update: tensors not aligned to their element size")
        out.append(delta // size)
    return base, out


def _tables(kind: str, weights: Sequence[torch.Tensor], states: Sequence[dict[str, torch.Tensor]],
            pads: Sequence[int | None], freqs: Sequence[bool]) -> _Tables:
    """The meta table of a batch (see the module docstring), cached by its host values."""
    triples = [state_slots(kind, st) for st in states]
    w0, w_at = _offsets(weights, weights[0])
    s1, s1_at = _offsets([x[0] for x in triples], w0)
    s2, s2_at = _offsets([x[1] for x in triples], w0)
    step, step_at = _offsets([x[2] for x in triples], w0)
    row_off = [0]
    for w in weights:
        row_off.append(row_off[-1] + w.shape[0])
    dims = [w.shape[1] for w in weights]
    pad_rows = [-1 if p is None else p for p in pads]
    # In the order _ROW_OFF .. _STEP; row_off has T + 1 entries, the others get a pad.
    rows = [row_off] + [r + [0] for r in (dims, pad_rows, [int(f) for f in freqs], w_at, s1_at, s2_at, step_at)]
    bases = [x.data_ptr() // x.element_size() for x in (w0, s1, s2)]
    align = C.alignment(dims + w_at + s1_at + s2_at + bases)
    device = w0.device
    key = (device, tuple(tuple(r) for r in rows), tuple(x.data_ptr() for x in (w0, s1, s2, step)))
    meta = _meta_cache.get_or_make(key, lambda: _to_device(rows, torch.int64, device))
    return _Tables(meta, w0, s1, s2, step, align)


def _hyper(hyper: Hyper, device: torch.device) -> torch.Tensor:
    """(8,) float64 hyperparameters on the device, in the slots ``_LR`` ... ``_1_B2``."""
    lr, wd, b1, b2 = hyper.lr, hyper.weight_decay, hyper.beta1, hyper.beta2
    values = [lr, hyper.eps, b1, b2, wd, 1 - lr * wd, 1 - b1, 1 - b2]
    return _hyper_cache.get_or_make((device, tuple(values)), lambda: _to_device(values, torch.float64, device))


def _log2_ceil(n: int) -> int:
    return max(0, (n - 1).bit_length())


def _block_s(bd: int, kind: int, acc_bytes: int) -> int:
    # Registers hold the gradient tile plus the weight and 1-2 state tiles of the same
    # shape: ~16 KiB of accumulators per program for SGD / row-wise, ~8 KiB with
    # full-size state (4096 / 2048 float32 elements).
    budget = (8192 if kind in (ADAGRAD, ADAM, ADAMW) else 16384) // acc_bytes
    return max(1, min(64, budget // bd))


@torch.no_grad()
def fused_update(weight: torch.Tensor, state: dict[str, torch.Tensor], rows: torch.Tensor,
                 grads: torch.Tensor, hyper: Hyper) -> None:
    """One step of ``hyper.kind`` on the distinct ``rows`` (U,) with summed ``grads`` (U, D)."""
    num, dim = rows.numel(), weight.shape[1]
    if num == 0 or dim == 0:
        return
    kind = KIND_CODES[hyper.kind]
    tables = _tables(hyper.kind, [weight], [state], [None], [False])
    bd = triton.next_power_of_2(dim)
    bs = _block_s(bd, kind, C.acc_size(weight.dtype))
    _rows_update_kernel[(triton.cdiv(num, bs),)](
        rows.contiguous(), grads.to(C.acc_dtype(weight.dtype)).contiguous(), num, dim, tables.meta,
        tables.w, tables.s1, tables.s2, tables.step, _hyper(hyper, weight.device),
        KIND=kind, ACC=C.acc_tl(weight.dtype), ALIGN=tables.align, BLOCK_S=bs, BLOCK_D=bd,
        num_warps=C.num_warps_for(bs * bd, per_thread=16),
    )


def run_jobs(jobs: Sequence[TableJob], hyper: Hyper) -> None:
    """Jobs of one weight dtype whose sources index the same flat gradient (the engine's
    groups): one batched pass."""
    batched_update(jobs, hyper)


def _global_rows(ids: Sequence[torch.Tensor], pads: Sequence[int | None], tables: _Tables) -> torch.Tensor:
    """(N,) ``row_off[t] + id`` for every occurrence, -1 for SKIP and padding ids.

    A fixed handful of O(N) launches whatever the number of tables (no per-table ops).
    """
    if len(ids) == 1:
        flat = ids[0].reshape(-1).to(torch.int64)
        return flat if pads[0] is None else torch.where(flat != pads[0], flat, -1)
    device = tables.w.device
    flat = torch.cat([x.reshape(-1).to(torch.int64) for x in ids])
    lengths = [x.numel() for x in ids]
    table = torch.repeat_interleave(
        torch.arange(len(ids), device=device), _to_device(lengths, torch.int64, device), output_size=flat.numel()
    )
    row_off = tables.meta[_ROW_OFF.value, : len(ids)][table]
    pad = tables.meta[_PAD.value, : len(ids)][table]
    return torch.where((flat >= 0) & (flat != pad), flat + row_off, -1)


@torch.no_grad()
def batched_update(jobs: Sequence[TableJob], hyper: Hyper, *, deterministic: bool | None = None) -> None:
    """Fused backward + update of several tables sharing ``grad_flat`` and a weight dtype.

    One plan (sort) over all tables' occurrences and two launches, whatever the
    number of tables; or one atomic launch for plain SGD (see the module docstring).
    ``deterministic`` defaults to ``torch.are_deterministic_algorithms_enabled()``.
    """
    weights = [j.weight for j in jobs]
    device, wdtype = weights[0].device, weights[0].dtype
    acc = C.acc_dtype(wdtype)
    kind = KIND_CODES[hyper.kind]
    occ = [j.occurrences() for j in jobs]
    lengths = [o[0].numel() for o in occ]
    n = sum(lengths)
    max_dim = max(w.shape[1] for w in weights)
    if n == 0 or max_dim == 0:
        return
    num_tables = len(jobs)
    freqs = [bool(j.scale_grad_by_freq) for j in jobs]
    pads = [j.padding_idx for j in jobs]
    tables = _tables(hyper.kind, weights, [j.state for j in jobs], pads, freqs)
    hyp = _hyper(hyper, device)
    total_rows = sum(w.shape[0] for w in weights)
    dst = _global_rows([o[0] for o in occ], pads, tables)
    src = (torch.cat([o[1].reshape(-1) for o in occ]) if num_tables > 1 else occ[0][1]).to(torch.int64)
    scale = None
    if any(o[2] is not None for o in occ):
        scale = torch.cat([
            o[2].reshape(-1).to(acc) if o[2] is not None else torch.ones(1, dtype=acc, device=device).expand(k)
            for o, k in zip(occ, lengths)
        ])
    grad = jobs[0].grad_flat
    log2_t = _log2_ceil(num_tables)
    bd = triton.next_power_of_2(max_dim)  # whole rows: row-wise Adagrad needs all of D
    acc_tl = C.acc_tl(wdtype)
    if deterministic is None:
        deterministic = C.deterministic()
    if (kind == SGD and hyper.weight_decay == 0 and not any(freqs) and not deterministic
            and wdtype in (torch.float32, torch.float64)):
        bn = max(1, min(64, 16384 // C.acc_size(wdtype) // bd))
        _sgd_atomic_kernel[(triton.cdiv(n, bn),)](
            grad, src, scale if scale is not None else grad, dst, tables.meta, tables.w, hyp, n, num_tables,
            HAS_SCALE=scale is not None, ACC=acc_tl, ALIGN=tables.align, LOG2_T=log2_t, BLOCK_N=bn, BLOCK_D=bd,
            num_warps=C.num_warps_for(bn * bd),
        )
        return
    plan = plan_segments(dst, total_rows, None)
    part = torch.empty(plan.num_slots, bd, dtype=acc, device=device)
    part_key = torch.full((plan.num_slots,), -1, dtype=torch.int64, device=device)
    part_cnt = torch.empty(plan.num_slots, dtype=torch.int32, device=device)
    bs = _block_s(bd, kind, C.acc_size(wdtype))
    state_ptrs = (tables.meta, tables.w, tables.s1, tables.s2, tables.step, hyp)
    common = dict(KIND=kind, ANY_FREQ=any(freqs), ACC=acc_tl, ALIGN=tables.align, LOG2_T=log2_t, BLOCK_D=bd)
    _pieces_update_kernel[(triton.cdiv(n, bs),)](
        grad, src, scale if scale is not None else part, plan.perm, plan.keys, plan.piece_start, plan.whole,
        plan.slot, plan.num_pieces, part, part_key, part_cnt, *state_ptrs, num_tables, total_rows,
        HAS_SCALE=scale is not None, BLOCK_S=bs, num_warps=C.num_warps_for(bs * bd, per_thread=16), **common,
    )
    _partials_update_kernel[(triton.cdiv(plan.num_slots, SLOTS_PER_PROGRAM),)](
        part, part_key, part_cnt, *state_ptrs, plan.num_slots, num_tables,
        SLOTS=SLOTS_PER_PROGRAM, BLOCK_Q=BLOCK_Q, num_warps=C.num_warps_for(BLOCK_Q * bd), **common,
    )


__all__ = ["batched_update", "fused_update", "name", "run_jobs"]
