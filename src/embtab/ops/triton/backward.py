"""Row-scatter engine shared by every backward: ``out[dst[i]] += factor[i] * grad[src[i]]``.

Both the Embedding and the EmbeddingBag weight gradients are this one operation over N
contributions (for a bag, ``src[i]`` is the bag of id ``i`` and ``factor[i]`` its
per-sample weight or ``1 / count`` for ``mode="mean"``); the fused optimizers
(:mod:`.fused_optim`) run the same reduction over several tables at once and replace
its last step, the store of a summed row, by an optimizer update. Two strategies:

**Atomic** (default for float32/float64 when determinism is not requested): one pass,
``BLOCK_N`` contributions x ``BLOCK_D`` columns per program, each row added into the
zeroed output with relaxed ``atomic_add``. Sums of duplicates come out in an arbitrary
order, so the last bits can differ run to run.

**Sorted segments** (``torch.use_deterministic_algorithms(True)``, and always for
float16/bfloat16 so that the output is written once in its own dtype instead of through
a float32 (V, D) buffer): contributions are stably sorted by destination row (SKIP and
padding get a sentinel key that sorts last), and the sorted positions are cut into
*pieces*: a new piece starts at every new row and at every multiple of ``PIECE``
positions, so no piece is longer than ``PIECE``. Then

1. ``_reduce_pieces_kernel``: one lane per piece, ``BLOCK_S`` pieces per program; step
   ``l`` loads the ``l``-th row of every piece at once (``BLOCK_S`` independent rows in
   flight: uniform ids, one row per piece, finish in one step; the pieces of a hot
   Zipf row run ``PIECE`` steps with all lanes busy). A piece that is a whole segment
   (row) is finished right there; a piece of a longer segment parks its partial sum
   in a small buffer (at most ``2 * N / PIECE`` pieces can be cut by a multiple of
   ``PIECE``).
2. ``_reduce_partials_kernel``: for each long segment, sums its parked partials in
   order, ``BLOCK_Q`` at a time, and finishes the row.

Every sum runs in a fixed order (sorted positions, stable sort, then partials in
order), so the result is bitwise reproducible. No step reads anything back to the host:
the number of pieces lives on the device and programs past it do nothing.

:mod:`.fused_optim` reuses the plan and the two-pass structure for the table-batched
backward fused with the optimizer update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import _common as C

# Longest piece of a sorted segment reduced by one lane. 32 keeps a hot row's pieces to
# 32 dependent steps per program while bounding the partial buffer to N / 16 rows.
PIECE = 32
# Partials summed per step in the second pass (a tile of BLOCK_Q x BLOCK_D).
BLOCK_Q = 32
# Partial slots scanned by one program of the second pass (most are not segment heads).
SLOTS_PER_PROGRAM = 16


# --- atomic strategy ------------------------------------------------------------------------


@triton.jit
def _scatter_add_kernel(
    grad_ptr,  # (R, D) gradient rows, row stride `stride_g`
    src_ptr,  # (N,) row of grad per contribution (HAS_SRC)
    dst_ptr,  # (N,) destination row, < 0 = dropped
    factor_ptr,  # (N,) accumulator dtype (HAS_FACTOR)
    count_ptr,  # (V + 1,) int32 occurrences per row (FREQ)
    out_ptr,  # (V, D) accumulator dtype, zeroed
    N,
    D,
    stride_g,
    pad,  # padding row, -1 for none
    HAS_SRC: tl.constexpr,
    HAS_FACTOR: tl.constexpr,
    FREQ: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    i = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # contributions
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    i_ok = i < N
    col_ok = cols < D
    dst = tl.load(dst_ptr + i, mask=i_ok, other=-1).to(tl.int64)
    keep = i_ok & (dst >= 0) & (dst != pad)
    if HAS_SRC:
        src = tl.load(src_ptr + i, mask=keep, other=0).to(tl.int64)
    else:
        src = i
    m = keep[:, None] & col_ok[None, :]
    vals = tl.load(grad_ptr + src[:, None] * stride_g + cols[None, :], mask=m, other=0.0).to(ACC)
    if HAS_FACTOR:
        vals = vals * tl.load(factor_ptr + i, mask=keep, other=0.0).to(ACC)[:, None]
    if FREQ:
        cnt = tl.load(count_ptr + dst, mask=keep, other=1)
        vals = vals / cnt.to(ACC)[:, None]
    # Relaxed: only the final sums matter, no ordering with other memory is needed.
    tl.atomic_add(out_ptr + dst[:, None] * D + cols[None, :], vals, mask=m, sem="relaxed")


def row_counts(dst: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(num_rows + 1,) int32 occurrences of each row among ``dst >= 0`` (last slot: the rest).

    ``torch.bincount`` would read the maximum back to the host; a scatter-add into a
    fixed-size buffer does not.
    """
    where = torch.where(dst >= 0, dst.to(torch.int64), num_rows)
    counts = torch.zeros(num_rows + 1, dtype=torch.int32, device=dst.device)
    return counts.index_add_(0, where, torch.ones_like(where, dtype=torch.int32))


def freq_factor(dst: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(N,) float32 ``1 / occurrences of dst[i]`` (scale_grad_by_freq), 1 for dropped ids."""
    counts = row_counts(dst, num_rows)
    where = torch.where(dst >= 0, dst.to(torch.int64), num_rows)
    return 1.0 / counts[where].clamp_min(1).to(torch.float32)


def _scatter_atomic(
    grad: torch.Tensor, dst: torch.Tensor, num_rows: int, src: torch.Tensor | None,
    factor: torch.Tensor | None, padding_idx: int | None, freq: bool,
) -> torch.Tensor:
    n, dim = dst.numel(), grad.shape[1]
    out = torch.zeros(num_rows, dim, dtype=C.acc_dtype(grad.dtype), device=grad.device)
    if n == 0 or dim == 0:
        return out.to(grad.dtype)
    counts = row_counts(dst, num_rows) if freq else out
    bd = C.block_d(dim)
    bn = C.rows_per_program(bd, C.acc_size(grad.dtype))
    grid = (triton.cdiv(n, bn), triton.cdiv(dim, bd))
    _scatter_add_kernel[grid](
        grad, src if src is not None else dst, dst, factor if factor is not None else out, counts, out,
        n, dim, grad.stride(0), -1 if padding_idx is None else padding_idx,
        HAS_SRC=src is not None, HAS_FACTOR=factor is not None, FREQ=freq,
        ACC=C.acc_tl(grad.dtype), BLOCK_N=bn, BLOCK_D=bd, num_warps=C.num_warps_for(bn * bd),
    )
    return out.to(grad.dtype)  # no copy for float32/float64


# --- sorted-segment strategy ----------------------------------------------------------------


@dataclass
class SegmentPlan:
    """Contributions sorted by destination row and cut into pieces of at most ``PIECE``.

    All tensors live on the device; nothing here was read back to the host.
    """

    keys: torch.Tensor  # (N,) sorted destination rows; dropped ids carry num_rows
    perm: torch.Tensor  # (N,) int64 contribution at each sorted position
    piece_start: torch.Tensor  # (N + 1,) int64 first sorted position of piece j (N past the end)
    whole: torch.Tensor  # (N,) int8: 1 when piece j is a whole segment (a complete row)
    slot: torch.Tensor  # (N,) int64 partial slot of piece j (when not whole)
    num_pieces: torch.Tensor  # (1,) int64
    num_slots: int  # host-side bound on the partial slots
    num_rows: int


def plan_segments(dst: torch.Tensor, num_rows: int, padding_idx: int | None) -> SegmentPlan:
    """Sort the contributions by destination row and cut the sorted order into pieces.

    A handful of O(N) integer passes (sort, compare, cumsum, searchsorted), no host sync.
    Keys are int32 when the rows fit, which halves the sort's traffic.
    """
    n = dst.numel()
    device = dst.device
    key_dtype = torch.int32 if num_rows < 2**31 - 1 else torch.int64
    drop = dst < 0
    if padding_idx is not None:
        drop |= dst == padding_idx
    key = torch.where(drop, num_rows, dst).to(key_dtype)  # sentinel sorts last
    keys, perm = torch.sort(key, stable=True)
    new_row = torch.ones(n + 1, dtype=torch.bool, device=device)  # new_row[n]: end marker
    new_row[1:n] = keys[1:] != keys[:-1]
    pos = torch.arange(n, device=device)
    starts = new_row[:n] | (pos % PIECE == 0)
    incl = torch.cumsum(starts, 0)  # (N,) pieces started up to each position
    # j-th piece starts where the running count first reaches j + 1; N for j >= pieces.
    piece_start = torch.searchsorted(incl, torch.arange(1, n + 2, device=device))
    whole = new_row[piece_start[:n]] & new_row[piece_start[1:]]
    slot = torch.cumsum(~whole, 0) - 1
    # Only a piece touching an interior multiple of PIECE is partial: <= 2 per multiple.
    num_slots = 2 * triton.cdiv(n, PIECE) + 1
    # bool viewed as int8 (no copy): kernels load bytes.
    return SegmentPlan(keys, perm, piece_start, whole.view(torch.int8), slot, incl[-1:], num_slots, num_rows)


@triton.jit
def _reduce_pieces_kernel(
    grad_ptr,  # (R, D) gradient rows, row stride `stride_g`
    src_ptr,  # (N,) row of grad per contribution (HAS_SRC)
    factor_ptr,  # (N,) accumulator dtype (HAS_FACTOR)
    perm_ptr,  # (N,) contribution at each sorted position
    keys_ptr,  # (N,) sorted destination rows
    piece_start_ptr,  # (N + 1,)
    whole_ptr,  # (N,) int8
    slot_ptr,  # (N,)
    num_pieces_ptr,  # (1,)
    part_ptr,  # (S, D) accumulator dtype: partial sums of pieces of long segments
    part_key_ptr,  # (S,) int64, -1 where unused
    part_cnt_ptr,  # (S,) int32 contributions in the partial
    out_ptr,  # (V, D) dense gradient, zeroed
    stride_o,
    D,
    stride_g,
    num_rows,
    HAS_SRC: tl.constexpr,
    HAS_FACTOR: tl.constexpr,
    FREQ: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    j = pid.to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)  # (BLOCK_S,) pieces
    j_ok = j < tl.load(num_pieces_ptr)
    start = tl.load(piece_start_ptr + j, mask=j_ok, other=0)
    end = tl.load(piece_start_ptr + j + 1, mask=j_ok, other=0)
    key = tl.load(keys_ptr + start, mask=j_ok, other=num_rows).to(tl.int64)
    live = j_ok & (key < num_rows)  # sentinel pieces hold SKIP / padding ids
    length = tl.where(live, end - start, 0)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=ACC)
    # Step l reads the l-th row of every piece: BLOCK_S independent loads in flight.
    for step in range(0, tl.max(length, axis=0)):
        on = step < length
        c = tl.load(perm_ptr + start + step, mask=on, other=0).to(tl.int64)
        if HAS_SRC:
            r = tl.load(src_ptr + c, mask=on, other=0).to(tl.int64)
        else:
            r = c
        # The 2-D mask is compared afresh, not broadcast from `on` (same values): when `on`
        # masks this index load and, expanded, the row load, Triton 3.6's layout pass
        # (remove-layout-conversions) gives the index load a mask of the wrong layout
        # ("'tt.load' op failed to verify that mask type matches ptr type").
        row_on = step < length[:, None]
        v = tl.load(grad_ptr + r[:, None] * stride_g + cols[None, :], mask=row_on & col_ok[None, :], other=0.0)
        v = v.to(ACC)
        if HAS_FACTOR:
            v = v * tl.load(factor_ptr + c, mask=on, other=0.0).to(ACC)[:, None]
        acc += v
    is_whole = tl.load(whole_ptr + j, mask=j_ok, other=0) != 0
    done = live & is_whole
    if FREQ:  # a whole piece holds every occurrence of its row
        row_sum = acc / tl.maximum(length, 1).to(ACC)[:, None]
    else:
        row_sum = acc
    tl.store(
        out_ptr + key[:, None] * stride_o + cols[None, :], row_sum.to(out_ptr.dtype.element_ty),
        mask=done[:, None] & col_ok[None, :],
    )
    # Pieces of longer rows: park the partial sum for the second pass.
    parked = live & (is_whole == 0)
    slot = tl.load(slot_ptr + j, mask=parked, other=0).to(tl.int64)
    tl.store(part_ptr + slot[:, None] * D + cols[None, :], acc, mask=parked[:, None] & col_ok[None, :])
    if pid_d == 0:
        tl.store(part_key_ptr + slot, key, mask=parked)
        tl.store(part_cnt_ptr + slot, length.to(tl.int32), mask=parked)


@triton.jit
def _reduce_partials_kernel(
    part_ptr,  # (S, D) accumulator dtype
    part_key_ptr,  # (S,) int64, -1 where unused; a row's partials are consecutive
    part_cnt_ptr,  # (S,) int32
    out_ptr,  # (V, D) dense gradient
    stride_o,
    S,
    D,
    FREQ: tl.constexpr,
    ACC: tl.constexpr,
    SLOTS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    lanes = tl.arange(0, BLOCK_Q)
    for h in range(0, SLOTS):
        q = pid.to(tl.int64) * SLOTS + h
        if q < S:
            key = tl.load(part_key_ptr + q)
            prev = tl.load(part_key_ptr + q - 1, mask=q > 0, other=-1)
            if (key >= 0) & (key != prev):  # q is the first partial of row `key`
                acc = tl.zeros((1, BLOCK_D), dtype=ACC)
                cnt = tl.zeros((1,), dtype=tl.int32)
                base = q
                more = key >= 0  # a tensor, not a Python bool: it is loop-carried
                while more:
                    qs = base + lanes
                    same = (qs < S) & (tl.load(part_key_ptr + qs, mask=qs < S, other=-1) == key)
                    tile = tl.load(part_ptr + qs[:, None] * D + cols[None, :], mask=same[:, None] & col_ok[None, :], other=0.0)
                    acc += tl.sum(tile, axis=0, keep_dims=True)
                    cnt += tl.sum(tl.load(part_cnt_ptr + qs, mask=same, other=0), axis=0, keep_dims=True)
                    more = tl.sum(same.to(tl.int32), axis=0) == BLOCK_Q
                    base += BLOCK_Q
                if FREQ:
                    acc = acc / cnt.to(ACC)[:, None]
                ptrs = out_ptr + key * stride_o + cols[None, :]
                tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])


def reduce_segments(
    grad: torch.Tensor,  # (R, D)
    plan: SegmentPlan,
    out: torch.Tensor,  # (V, D) zeroed dense gradient
    *,
    src: torch.Tensor | None,
    factor: torch.Tensor | None,
    freq: bool,
) -> None:
    """Sum the contributions of each row in ``plan`` into its row of ``out``."""
    n, dim = plan.keys.numel(), grad.shape[1]
    if n == 0 or dim == 0:
        return
    acc = C.acc_dtype(grad.dtype)
    bd = C.block_d(dim)
    bs = C.rows_per_program(bd, C.acc_size(grad.dtype), cap=64)
    part = torch.empty(plan.num_slots, dim, dtype=acc, device=grad.device)
    part_key = torch.full((plan.num_slots,), -1, dtype=torch.int64, device=grad.device)
    part_cnt = torch.empty(plan.num_slots, dtype=torch.int32, device=grad.device)
    n_dtiles = triton.cdiv(dim, bd)
    common = dict(FREQ=freq, ACC=C.acc_tl(grad.dtype), BLOCK_D=bd)
    _reduce_pieces_kernel[(triton.cdiv(n, bs), n_dtiles)](
        grad, src if src is not None else plan.perm, factor if factor is not None else part,
        plan.perm, plan.keys, plan.piece_start, plan.whole, plan.slot, plan.num_pieces,
        part, part_key, part_cnt, out, out.stride(0), dim, grad.stride(0), plan.num_rows,
        HAS_SRC=src is not None, HAS_FACTOR=factor is not None, BLOCK_S=bs,
        num_warps=C.num_warps_for(bs * bd, per_thread=16), **common,
    )
    _reduce_partials_kernel[(triton.cdiv(plan.num_slots, SLOTS_PER_PROGRAM), n_dtiles)](
        part, part_key, part_cnt, out, out.stride(0), plan.num_slots, dim,
        SLOTS=SLOTS_PER_PROGRAM, BLOCK_Q=BLOCK_Q, num_warps=C.num_warps_for(BLOCK_Q * bd), **common,
    )


# --- entry point ------------------------------------------------------------------------------


def scatter_rows(
    grad: torch.Tensor,  # (R, D) gradient rows (contiguous within a row)
    dst: torch.Tensor,  # (N,) destination row per contribution, < 0 = dropped
    num_rows: int,
    *,
    src: torch.Tensor | None = None,  # (N,) row of grad per contribution (None: i)
    factor: torch.Tensor | None = None,  # (N,) multiplier, accumulator dtype
    padding_idx: int | None = None,
    freq: bool = False,
    deterministic: bool | None = None,
) -> torch.Tensor:  # (num_rows, D) in grad.dtype
    """Dense ``out[dst[i]] += factor[i] * grad[src[i]]``, skipping dropped and padding rows.

    ``freq`` divides each row's sum by its number of contributions (scale_grad_by_freq).
    ``deterministic`` defaults to ``torch.are_deterministic_algorithms_enabled()``.
    """
    grad = C.row_major(grad)
    if deterministic is None:
        deterministic = C.deterministic()
    if factor is not None:
        factor = factor.to(C.acc_dtype(grad.dtype))
    if not deterministic and grad.dtype in (torch.float32, torch.float64):
        return _scatter_atomic(grad, dst, num_rows, src, factor, padding_idx, freq)
    out = torch.zeros(num_rows, grad.shape[1], dtype=grad.dtype, device=grad.device)
    plan = plan_segments(dst, num_rows, padding_idx)
    reduce_segments(grad, plan, out, src=src, factor=factor, freq=freq)
    return out
