"""Table-batched bag lookup: every feature of a collection in one launch.

One program pools one bag of one feature over one D tile: grid ``(B, F, D tiles)``.
Each feature is described by a row of a small int64 *meta* table (see ``_M_*``): where
its table's weight starts (an element offset from the first table's weight, as in
:mod:`.fused_optim`: the tables stay separate tensors, nothing is copied), its D, row
stride, padding row, pooling mode, out-of-vocabulary policy, where its ids, offsets and
per-sample weights start in the concatenated inputs, and its first output column.

The kernel does what the pipeline does per feature on the host for other backends,
so a forward costs the same few launches whatever the number of features:

- canonical offsets: bag b of a feature runs from ``offsets[b]`` to ``offsets[b + 1]``,
  the last bag to the end of the feature's ids (torch's rule, also with
  ``include_last_offset``); fixed-length bags (a 2-D input) from ``b * L``. They are
  written out (``ends``) for the backward.
- ids to rows by the table's policy (``error``, ``padding``, ``zero``, ``hash``, the
  hash being ``ids/_hash.fmix64``); the rows are written out for the backward, and
  per feature the kernel counts the out-of-range ids (``oov_count``) and, for
  ``oov="error"`` tables, flags bad ids and bad offsets: the caller reads the flags
  back once per forward (the one host sync) and names the first bad id or offset.
  A flagged id is skipped, never read out of bounds.
- the bag reduction (sum, mean, max with the row of each maximum, per-sample weights),
  as in :mod:`.embedding_bag`, accumulating in float32 (float64 for float64 tables).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
import triton
import triton.language as tl

from ..common import MODE_CODES, BagAux
from . import _common as C
from .embedding_bag import max_step

# Columns of the meta table (one row per feature of a launch).
(_M_W, _M_DIM, _M_STRIDE, _M_PAD, _M_INDEX, _M_POLICY, _M_NUM, _M_BUCKETS, _M_IDS, _M_OFFS, _M_NOFFS,
 _M_FIXED, _M_N, _M_COL, _M_PSW, _M_CHECK) = (tl.constexpr(i) for i in range(16))
_M_COLUMNS = 16
POLICY_CODES = {"error": 0, "padding": 1, "zero": 2, "hash": 3}


@triton.jit
def _fmix64(x):
    """MurmurHash3's finaliser on int64 bits (wrapping multiplies, logical shifts by masking),
    as ``embtab/ids/_hash.py``."""
    x = x ^ ((x >> 33) & 2147483647)
    x = x * -49064778989728563  # 0xFF51AFD7ED558CCD as int64
    x = x ^ ((x >> 33) & 2147483647)
    x = x * -4265267296055464877  # 0xC4CEB9FE1A85EC53 as int64
    return x ^ ((x >> 33) & 2147483647)


@triton.jit
def _pooled_kernel(
    meta_ptr,  # (F_launch, _M_COLUMNS) int64
    w_ptr,  # the first table's weight: the base of the _M_W offsets
    ids_ptr,  # (N_total,) int64 concatenated ids
    offs_ptr,  # concatenated offsets (int64)
    psw_ptr,  # (N_total,) concatenated per-sample weights (features with _M_PSW)
    out_ptr,  # (B, out_stride) output
    rows_ptr,  # (N_total,) int64: the rows the ids resolved to (-1: skipped)
    ends_ptr,  # (F, B + 1) int64 canonical offsets
    counts_ptr,  # (F, B) int32 ids that count per bag
    argmax_ptr,  # (B, out_stride) int64: row of each maximum (MODE == 2)
    flags_ptr,  # (F, 3) int64: out-of-range ids, bad offsets, out-of-range ids counted for oov_count
    B,
    out_stride,
    MODE: tl.constexpr,  # one launch per pooling mode: 0 sum, 1 mean, 2 max
    HAS_PSW: tl.constexpr,  # some feature of the launch has per-sample weights
    ALIGN: tl.constexpr,  # a power of two dividing every row stride and table offset (vector loads)
    ACC: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    m = meta_ptr + tl.program_id(1).to(tl.int64) * 16
    pid_d = tl.program_id(2)
    dim = tl.multiple_of(tl.load(m + _M_DIM), ALIGN)  # so the column masks allow vector loads
    if pid_d * BLOCK_D < dim:
        f = tl.load(m + _M_INDEX)  # the feature's index in the caller's order
        w_at = tl.multiple_of(tl.load(m + _M_W), ALIGN)
        stride = tl.multiple_of(tl.load(m + _M_STRIDE), ALIGN)
        pad = tl.load(m + _M_PAD)
        policy = tl.load(m + _M_POLICY)
        num = tl.load(m + _M_NUM)
        buckets = tl.load(m + _M_BUCKETS)
        ids_at = tl.load(m + _M_IDS)
        offs_at = tl.load(m + _M_OFFS)
        n_offs = tl.load(m + _M_NOFFS)
        fixed = tl.load(m + _M_FIXED)
        n = tl.load(m + _M_N)
        col = tl.load(m + _M_COL)
        check = tl.load(m + _M_CHECK) != 0
        lead = pid_d == 0  # the D tile that writes the per-bag and per-id results
        if fixed > 0:
            start = b * fixed
            end = start + fixed
        else:
            start = tl.load(offs_ptr + offs_at + b)
            nxt = tl.load(offs_ptr + offs_at + b + 1, mask=b + 1 < n_offs, other=n)
            end = tl.where(b + 1 < B, nxt, n)  # the last bag runs to the end of the ids
            bad = ((b == 0) & (start != 0)) | (end < start) | (end > n)
            if lead & check:
                tl.atomic_add(flags_ptr + f * 3 + 1, bad.to(tl.int64))
            end = tl.minimum(tl.maximum(end, start), n)  # a bad bag reads nothing out of bounds
            start = tl.minimum(start, end)
        if lead:
            tl.store(ends_ptr + f * (B + 1) + b, start)
            if b == B - 1:
                tl.store(ends_ptr + f * (B + 1) + B, n)
        cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = cols < dim
        lanes = tl.arange(0, BLOCK_L)
        cnt = tl.zeros((BLOCK_L,), dtype=tl.int32)
        oov = tl.zeros((BLOCK_L,), dtype=tl.int64)
        if MODE == 2:
            acc = tl.full((BLOCK_D,), float("-inf"), dtype=ACC)
            arg = tl.full((BLOCK_D,), -1, dtype=tl.int64)
        else:
            acc = tl.zeros((BLOCK_D,), dtype=ACC)
        for base in range(start, end, BLOCK_L):
            pos = base + lanes
            on = pos < end
            raw = tl.load(ids_ptr + ids_at + pos, mask=on, other=0)
            out_of_range = on & ((raw < 0) | (raw >= num))
            oov += out_of_range.to(tl.int64)
            hashed = num + (_fmix64(raw) & 9223372036854775807) % tl.maximum(buckets, 1)
            row = tl.where(out_of_range, tl.where(policy == 1, pad, tl.where(policy == 3, hashed, -1)), raw)
            row = tl.where(on, row, -1)
            if lead:
                tl.store(rows_ptr + ids_at + pos, row, mask=on)
            keep = (row >= 0) & (row != pad)
            cnt += keep.to(tl.int32)
            mk = keep[:, None] & col_ok[None, :]
            row_at = tl.multiple_of(w_at + row * stride, ALIGN)  # (BLOCK_L,) first element of each row
            vals = tl.load(w_ptr + row_at[:, None] + cols[None, :], mask=mk, other=0.0).to(ACC)
            if HAS_PSW:  # features without weights have zeros in the concatenated buffer
                factor = tl.load(psw_ptr + ids_at + pos, mask=keep, other=0.0).to(ACC)
                factor = tl.where(tl.load(m + _M_PSW) != 0, factor, 1.0)
                vals = vals * factor[:, None]
            if MODE == 2:
                acc, arg = max_step(vals, mk, row, lanes, acc, arg, BLOCK_L)
            else:
                acc += tl.sum(vals, axis=0)
        total = tl.sum(cnt, axis=0)
        if MODE == 1:
            acc = acc / tl.maximum(total, 1).to(ACC)
        out_at = tl.multiple_of(b * out_stride + col, ALIGN)
        if MODE == 2:
            acc = tl.where(total > 0, acc, 0.0)
            tl.store(argmax_ptr + out_at + cols, arg, mask=col_ok)
        tl.store(out_ptr + out_at + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)
        if lead:
            tl.store(counts_ptr + f * B + b, total)
            bad_ids = tl.sum(oov, axis=0)
            if check:
                tl.atomic_add(flags_ptr + f * 3, bad_ids)
            tl.atomic_add(flags_ptr + f * 3 + 2, bad_ids)


class Pooled:
    """What one batched forward returns: the output and, per feature, what its backward reads."""

    def __init__(self, out: torch.Tensor, rows: list[torch.Tensor], ends: list[torch.Tensor],
                 aux: list[BagAux], flags: torch.Tensor) -> None:
        self.out, self.rows, self.ends, self.aux, self.flags = out, rows, ends, aux, flags


_meta_cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


def _meta(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    key = (device, tuple(tuple(r) for r in rows))
    meta = _meta_cache.get(key)
    if meta is None:
        cpu = torch.tensor(rows, dtype=torch.int64)
        meta = cpu.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else cpu
        _meta_cache[key] = meta
        if len(_meta_cache) > 64:
            _meta_cache.popitem(last=False)
    else:
        _meta_cache.move_to_end(key)
    return meta


def pooled_forward(
    weights: Sequence[torch.Tensor],  # per feature: its table's weight (same dtype and device)
    ids: Sequence[torch.Tensor],  # per feature: the caller's flat ids (N_f,)
    offsets: Sequence[torch.Tensor | None],  # per feature: the caller's offsets, or None for fixed-length bags
    fixed: Sequence[int],  # per feature: the bag length of a 2-D input (0 with offsets)
    modes: Sequence[str],
    pads: Sequence[int | None],
    policies: Sequence[tuple[str, int, int]],  # per feature: (policy, num_embeddings, buckets)
    psws: Sequence[torch.Tensor | None],
    checks: Sequence[bool],  # per feature: flag bad ids and offsets (oov="error")
    num_bags: int,
) -> Pooled:
    """All features pooled in one launch per pooling mode: ``(B, sum of D)`` plus per-feature
    rows, ends, aux."""
    device, dtype = weights[0].device, weights[0].dtype
    acc = C.acc_tl(dtype)
    dims = [w.shape[1] for w in weights]
    total_d = sum(dims)
    lengths = [x.numel() for x in ids]
    all_ids = torch.cat([x.reshape(-1).to(torch.int64) for x in ids]) if len(ids) > 1 else ids[0].reshape(-1).to(torch.int64)
    given = [o for o in offsets if o is not None]
    all_offs = torch.cat([o.to(torch.int64) for o in given]) if given else all_ids.new_zeros(1)
    any_psw = any(p is not None for p in psws)
    all_psw = (torch.cat([p.reshape(-1).to(dtype) if p is not None else torch.zeros(n, dtype=dtype, device=device)
                          for p, n in zip(psws, lengths)]) if any_psw else None)
    base = weights[0]
    rows = []
    ids_at = offs_at = col = 0
    for f, (w, n, o, L, pad, (policy, num, buckets), p, check) in enumerate(zip(
            weights, lengths, offsets, fixed, pads, policies, psws, checks)):
        delta = w.data_ptr() - base.data_ptr()
        if delta % w.element_size() or w.stride(1) != 1:
            raise RuntimeError("embtab triton pooled lookup: tables must be row-major and element-aligned")
        n_offs = 0 if o is None else o.numel()
        rows.append([delta // w.element_size(), w.shape[1], w.stride(0), -1 if pad is None else pad, f,
                     POLICY_CODES[policy], num, buckets, ids_at, offs_at, n_offs, L, n, col, int(p is not None),
                     int(check)])
        ids_at, offs_at, col = ids_at + n, offs_at + n_offs, col + w.shape[1]
    out = torch.empty(num_bags, total_d, dtype=dtype, device=device)
    resolved = torch.empty(ids_at, dtype=torch.int64, device=device)
    ends = torch.empty(len(weights), num_bags + 1, dtype=torch.int64, device=device)
    counts = torch.empty(len(weights), num_bags, dtype=torch.int32, device=device)
    any_max = any(m == "max" for m in modes)
    argmax = torch.empty(num_bags, total_d, dtype=torch.int64, device=device) if any_max else counts
    flags = torch.zeros(len(weights), 3, dtype=torch.int64, device=device)
    if num_bags == 0:
        ends.zero_()
    elif total_d > 0:
        # One launch per pooling mode present (at most three, whatever the number of tables):
        # the mode is a compile-time constant, so a sum kernel carries no max bookkeeping.
        align = C.alignment([r[_M_W.value] for r in rows] + [r[_M_STRIDE.value] for r in rows]
                            + [r[_M_COL.value] for r in rows] + dims + [total_d, base.data_ptr() // base.element_size()])
        for mode in ("sum", "mean", "max"):
            members = [f for f, m in enumerate(modes) if m == mode]
            if not members:
                continue
            meta = _meta([rows[f] for f in members], device)
            widest = max(dims[f] for f in members)
            bd = C.block_d(widest)
            bl = C.rows_per_program(bd, base.element_size(), cap=64)
            _pooled_kernel[(num_bags, len(members), triton.cdiv(widest, bd))](
                meta, base, all_ids, all_offs, all_psw if all_psw is not None else out, out, resolved, ends, counts,
                argmax, flags, num_bags, total_d, MODE=MODE_CODES[mode],
                HAS_PSW=any(psws[f] is not None for f in members), ALIGN=align, ACC=acc, BLOCK_L=bl, BLOCK_D=bd,
                num_warps=C.num_warps_for(bl * bd),
            )
    per_rows, per_ends, per_aux = [], [], []
    at = col = 0
    empty = counts.new_empty(0)
    for f, (n, d, mode) in enumerate(zip(lengths, dims, modes)):
        per_rows.append(resolved[at:at + n])
        per_ends.append(ends[f])
        per_aux.append(BagAux(empty, counts[f], argmax[:, col:col + d] if mode == "max" else empty))
        at, col = at + n, col + d
    return Pooled(out, per_rows, per_ends, per_aux, flags)


def resolves_policy(name: Any) -> bool:
    return name in POLICY_CODES
