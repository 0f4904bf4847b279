"""The numba update backend (CPU, contiguous float32/float64 weights).

Importing this module imports numba; the registry (``ops/registry.py``) chooses the
torch-ops backend when that fails, and only gives this one contiguous float32/float64
tables. :func:`run_jobs` runs a whole backward pass in two parallel phases:

1. plan: a table per work item: write where every occurrence's gradient row is, sort
   the occurrences by row, cut them into segments of equal rows;
2. update: slices of about equal cost of every table's distinct rows (a row is
   updated by exactly one thread, so no locks).

Threads: ``torch.get_num_threads()`` of them: the caller plus pool threads running
``nogil`` kernels, taking work items as they come (see :class:`_Pool`). Idle pool
threads block, so they never spin against torch's OpenMP threads. Buffers are reused
between steps: on a VM a fresh multi-MB array costs more in page faults than the
work done in it.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..common import KIND_CODES, Hyper, TableJob, state_slots
from . import kernels as K
from ._pool import POOL

offsets_decrease = K.offsets_decrease  # (Backend.offsets_decrease: the check of a bag's offsets on CPU)

name = "numba"


# --- threads and buffers ---------------------------------------------------------------------


_scratch = threading.local()
_NP = {torch.float32: np.float32, torch.float64: np.float64}
# Scratch arrays of a plan: int64 ones (src, keys, order, tmp_keys, tmp_order, starts, rows)
# and float ones (psw, scale, sorted_scale).
_INT_SCRATCH, _FLOAT_SCRATCH = 7, 3


def _scratch_arrays(size: int, dtype: np.dtype) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Arrays of at least ``size`` elements, reused per calling thread: on a VM a fresh
    multi-MB array costs more in page faults than the work done in it."""
    cache = getattr(_scratch, "arrays", None)
    if cache is None:
        cache = _scratch.arrays = {}
    got = cache.get(dtype)
    if got is None or got[0][0].shape[0] < size:
        n = max(size, 1024, int(size * 1.25))
        got = ([np.empty(n, np.int64) for _ in range(_INT_SCRATCH)], [np.empty(n, dtype) for _ in range(_FLOAT_SCRATCH)])
        cache[dtype] = got
    return got


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _dummy(dtype: np.dtype, ndim: int) -> np.ndarray:
    return np.zeros((1,) * ndim, dtype)


def _np(t: Tensor) -> np.ndarray:
    return (t.detach() if t.requires_grad else t).numpy()


def _i64(t: Tensor) -> np.ndarray:
    if t.dtype == torch.int64 and t.dim() == 1 and t.is_contiguous() and not t.requires_grad:
        return t.numpy()
    return t.detach().reshape(-1).to(torch.int64).contiguous().numpy()


def _state_arrays(kind: str, weight: np.ndarray, state: dict[str, Tensor]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s1, s2, step) in the kernel's layout, with dummies for what the kind lacks."""
    s1, s2, step = state_slots(kind, state)
    a1 = _dummy(weight.dtype, 2) if s1 is None else _np(s1)
    return (a1.reshape(-1, 1) if a1.ndim == 1 else a1,
            _dummy(weight.dtype, 2) if s2 is None else _np(s2),
            _dummy(np.int64, 1) if step is None else _np(step))


def _hyper_array(hyper: Hyper) -> np.ndarray:
    return np.array([hyper.lr, hyper.eps, hyper.beta1, hyper.beta2, hyper.weight_decay], np.float64)


# Rows per work item: enough to amortise a kernel call (~10 us), few enough that a
# late thread still finds work and the caller never waits long for one in progress.
_ROWS_PER_ITEM = 4096


class _Updates:
    """The update of several tables as work items: (table, first row, end row) slices
    of about equal cost (``chunk_bounds``), handed to the pool."""

    def __init__(self, kind: int, hyper: np.ndarray, grad: np.ndarray, scale: np.ndarray) -> None:
        self.kind, self.hyper, self.grad, self.scale = kind, hyper, grad, scale
        self.tables: list[tuple] = []
        self.items: list[tuple[int, int, int]] = []

    def add(self, weight: np.ndarray, state: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray,
            starts: np.ndarray, src: np.ndarray, has_scale: bool, freq: bool, scale: np.ndarray | None = None) -> None:
        num = rows.shape[0]
        if num == 0:
            return
        t = len(self.tables)
        self.tables.append((weight, state, rows, starts, src, has_scale, freq, self.scale if scale is None else scale))
        pieces = max(1, min(64, num // _ROWS_PER_ITEM))
        bounds = K.chunk_bounds(starts, num, pieces) if pieces > 1 else (0, num)
        self.items += [(t, int(bounds[c]), int(bounds[c + 1])) for c in range(pieces)]

    def item(self, i: int) -> None:
        t, lo, hi = self.items[i]
        w, st, rows, starts, src, has_scale, freq, scale = self.tables[t]
        K.update_rows(self.kind, w, st[0], st[1], st[2], rows, starts, src, scale, has_scale, self.grad, self.hyper,
                      freq, lo, hi)

    def run(self) -> None:
        POOL.run(self.item, len(self.items), _threads())


# --- the backend interface ---------------------------------------------------------------------


def fused_update(weight: Tensor, state: dict[str, Tensor], rows: Tensor, grads: Tensor, hyper: Hyper) -> None:
    """Apply one step to the distinct ``rows`` (U,) given their summed ``grads`` (U, D)."""
    num = rows.numel()
    if num == 0:
        return
    w = _np(weight)
    dim = w.shape[1]
    g = grads.detach().to(weight.dtype).contiguous().reshape(-1).numpy()
    st = _state_arrays(hyper.kind, w, state)
    starts = np.arange(num + 1, dtype=np.int64)
    updates = _Updates(KIND_CODES[hyper.kind], _hyper_array(hyper), g, _dummy(w.dtype, 1))
    updates.add(w, st, _i64(rows), starts, starts[:num] * dim, False, False)
    updates.run()


def run_jobs(jobs: Sequence[TableJob], hyper: Hyper) -> None:
    """Jobs of one weight dtype whose sources index the same flat gradient (the engine's
    groups): planned and updated in two parallel phases."""
    w_dtype = jobs[0].weight.dtype
    dtype = _NP[w_dtype]
    sources = [(t, s) for t, job in enumerate(jobs) for s in job.sources]
    num_tables, num_sources = len(jobs), len(sources)
    rows_of_table: list[list[int]] = []
    first = [0]  # table t's sources: first[t]:first[t + 1]
    flags: list[int] = []
    total = ends_total = 0
    for i, (t, s) in enumerate(sources):
        n, b = s.ids.numel(), s.ends.numel() - 1
        f = (K.MEAN if s.mean else 0) | (K.PSW if s.per_sample_weights is not None else 0)
        rows_of_table.append([total, total + n, ends_total, b, s.base, s.stride, f])  # the K.* columns
        flags.append(f)
        if len(first) == t + 1:
            first.append(i + 1)
        else:
            first[t + 1] = i + 1
        total += n
        ends_total += b + 1
    table = np.array(rows_of_table, np.int64).reshape(num_sources, K.NUM_COLUMNS)
    if num_sources == 1:  # the common single-lookup case: no copies
        ids = _i64(sources[0][1].ids)
        ends = _i64(sources[0][1].ends)
    else:
        # numpy, not torch.cat: one thread copies 2.6 MB in ~0.3 ms, while a torch op
        # big enough to go parallel waits for a second core (many ms on a busy machine).
        ints, _ = _scratch_arrays(total, dtype)
        ids = np.concatenate([_i64(s.ids) for _, s in sources], out=ints[0][:total])
        ends = np.concatenate([_i64(s.ends) for _, s in sources])
    (src, keys, order, tmp_keys, tmp_order, starts, rows), (psw, scale, sorted_scale) = _scratch_arrays(
        total + num_tables, dtype)
    if num_sources > 1:  # ids sit in ints[0] (src): plan into fresh buffers
        src = np.empty(total, np.int64)
    any_scale = any(flags)
    if any(f & K.PSW for f in flags):
        for i, (_, s) in enumerate(sources):
            if s.per_sample_weights is not None:
                lo, hi = rows_of_table[i][0], rows_of_table[i][1]
                psw[lo:hi] = _np(s.per_sample_weights.reshape(-1).to(w_dtype))
    num_unique = np.zeros(num_tables, np.int64)
    pads = [-1 if job.padding_idx is None else job.padding_idx for job in jobs]

    def plan(t: int) -> None:
        lo = rows_of_table[first[t]][0]
        num_unique[t] = K.plan_table(
            ids, ends, table, first[t], first[t + 1], pads[t], jobs[t].weight.shape[0], psw,
            src, scale, keys, order, tmp_keys, tmp_order, starts, lo + t, rows, sorted_scale,
        )

    # Phase 1: a table per work item, the biggest first (so a late thread finds the rest).
    if num_tables == 1:
        plan(0)
    else:
        by_size = sorted(range(num_tables), key=lambda t: rows_of_table[first[t]][0] - rows_of_table[first[t + 1] - 1][1])
        POOL.run(lambda i: plan(by_size[i]), num_tables, _threads())

    # Phase 2: slices of every table's distinct rows. ``order`` now holds the sorted
    # gradient offsets and ``sorted_scale`` the sorted scales (see plan_table).
    g = jobs[0].grad_flat
    grad = _np(g if g.dtype == w_dtype and g.is_contiguous() else g.to(w_dtype).contiguous())  # type: ignore[union-attr]
    updates = _Updates(KIND_CODES[hyper.kind], _hyper_array(hyper), grad, sorted_scale if any_scale else scale[:1])
    for t, job in enumerate(jobs):
        u = int(num_unique[t])
        lo = rows_of_table[first[t]][0]
        w = _np(job.weight)
        updates.add(w, _state_arrays(hyper.kind, w, job.state), rows[lo:lo + u], starts[lo + t:lo + t + u + 1], order,
                    any(flags[first[t]:first[t + 1]]), job.scale_grad_by_freq)
    updates.run()
