"""The dynamic table's index: the primitives a step is made of, in two implementations.

:class:`TorchIndex` is torch ops on any device (the CUDA path, and CPU without numba or with
``backend="torch"``): the live ids sorted, looked up by binary search. :class:`NumbaIndex`
is the CPU fast path (``_index_numba.py``: an open-addressing hash table over the rows).
Both act on the per-row arrays the stage owns (``row_id``, ``last_seen`` (-1: free),
``count``) and take the same decisions, which are the canonical rules of a step (see
``dynamic.py``): the same live set, the same evicted rows, the same row for every id.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._hash import seeded_rows


class TorchIndex:
    """Torch ops on the stage's tensors, on their device."""

    name = "torch"

    def __init__(self, stage: Any) -> None:
        self.stage = stage
        self._sorted: tuple[Tensor, Tensor] | None = None  # live ids ascending, their rows

    def live(self) -> tuple[Tensor, Tensor]:
        """``(ids, rows)`` of the live rows, ids ascending."""
        if self._sorted is None:
            s = self.stage
            rows = (s._last_seen >= 0).nonzero().squeeze(1)
            ids, order = torch.sort(s._row_id[rows])
            self._sorted = (ids, rows[order])
        return self._sorted

    def lookup(self, x: Tensor) -> Tensor:
        ids, rows = self.live()
        if ids.numel() == 0:
            return torch.full_like(x, -1)
        pos = torch.searchsorted(ids, x).clamp_max(ids.numel() - 1)
        return torch.where(ids[pos] == x, rows[pos], torch.full_like(x, -1))

    def probe(self, x: Tensor, t: int, train: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(distinct ids, their counts, their rows before the batch or -1, each occurrence's
        index among them)``; with ``train`` the rows of ids seen are marked seen at ``t`` and counted."""
        uniq, inv, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
        rows = self.lookup(uniq)
        if train:
            s = self.stage
            hit = rows >= 0
            r = rows[hit]
            s._last_seen[r] = t
            s._count[r] += counts[hit]
        return uniq, counts, rows, inv

    def free(self, rows: Tensor) -> None:
        if rows.numel():
            self.stage._last_seen[rows] = -1
            self._sorted = None

    def expired(self, threshold: int) -> Tensor:
        ls = self.stage._last_seen
        return ((ls >= 0) & (ls <= threshold)).nonzero().squeeze(1)

    def victims(self, score: Tensor, t: int, m: int) -> Tensor:
        """The ``m`` live rows not seen at step ``t`` with the lowest ``(score, id)``."""
        s = self.stage
        ls = s._last_seen
        rows = ((ls >= 0) & (ls != t)).nonzero().squeeze(1)
        rows = rows[torch.argsort(s._row_id[rows], stable=True)]  # by id, then (stably) by score
        rows = rows[torch.argsort(score[rows], stable=True)]
        return rows[:m]

    def lowest_free(self, a: int) -> Tensor:
        return (self.stage._last_seen < 0).nonzero().squeeze(1)[:a]

    def assign(self, rows: Tensor, ids: Tensor, counts: Tensor, t: int) -> None:
        if rows.numel():
            s = self.stage
            s._row_id[rows] = ids
            s._last_seen[rows] = t
            s._count[rows] = counts
            self._sorted = None

    def rows_init(self, ids: Tensor, key: int, dim: int, kind: str, scale: float, clamp: float | None) -> Tensor:
        return seeded_rows(ids, key, dim, kind, scale, clamp)

    def nbytes(self) -> int:
        return 0  # nothing beyond the stage's per-row arrays (the sorted ids are transient)


def index_slots(capacity: int) -> int:
    """Slots of the CPU index of ``capacity`` rows: a power of two, at least twice the rows
    (open addressing stays short at half load), at least 16."""
    size = 16
    while size < 2 * capacity:
        size *= 2
    return size


def planned_bytes(capacity: int) -> int:
    """Bytes a dynamic table of ``capacity`` rows keeps beside its weight: each row's id, last
    step seen and count (int64 each), and the CPU index's int32 slots. Not the pending ids
    (16 bytes each), which grow with the ids waiting for admission."""
    return 24 * capacity + 4 * index_slots(capacity)


class NumbaIndex:
    """The CPU fast path: the numba kernels of ``_index_numba.py`` on zero-copy views."""

    name = "numba"

    def __init__(self, stage: Any, kernels: Any) -> None:
        self.stage = stage
        self.K = kernels
        self.slots = torch.empty(index_slots(stage._row_id.numel()), dtype=torch.int32).numpy()
        kernels.rebuild(self.slots, *self._arrays()[:2])
        self.free_from = 0  # no free row below this one

    def _arrays(self) -> tuple[Any, Any, Any]:
        s = self.stage
        return s._row_id.numpy(), s._last_seen.numpy(), s._count.numpy()

    def live(self) -> tuple[Tensor, Tensor]:
        s = self.stage
        rows = (s._last_seen >= 0).nonzero().squeeze(1)
        ids, order = torch.sort(s._row_id[rows])
        return ids, rows[order]

    def lookup(self, x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        self.K.lookup(x.numpy(), self.slots, self.stage._row_id.numpy(), out.numpy())
        return out

    def probe(self, x: Tensor, t: int, train: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        row_id, last_seen, count = self._arrays()
        uniq, counts, rows, inv = self.K.probe(x.numpy(), self.slots, row_id, last_seen, count, t, train)
        return torch.from_numpy(uniq), torch.from_numpy(counts), torch.from_numpy(rows), torch.from_numpy(inv)

    def free(self, rows: Tensor) -> None:
        if rows.numel():
            row_id, last_seen, _ = self._arrays()
            self.K.free(self.slots, row_id, last_seen, rows.numpy())
            self.free_from = min(self.free_from, int(rows.min()))

    def expired(self, threshold: int) -> Tensor:
        return torch.from_numpy(self.K.expired(self.stage._last_seen.numpy(), threshold))

    def victims(self, score: Tensor, t: int, m: int) -> Tensor:
        row_id, last_seen, _ = self._arrays()
        lo = self.stage._score_floor
        return torch.from_numpy(self.K.victims(score.numpy(), last_seen, row_id, t, m, lo))

    def lowest_free(self, a: int) -> Tensor:
        rows = self.K.lowest_free(self.stage._last_seen.numpy(), a, self.free_from)
        if a:  # every row below the last one taken is live now
            self.free_from = int(rows[-1]) + 1 if rows.size == a else self.stage._row_id.numel()
        return torch.from_numpy(rows)

    def assign(self, rows: Tensor, ids: Tensor, counts: Tensor, t: int) -> None:
        if rows.numel():
            row_id, last_seen, count = self._arrays()
            self.K.assign(self.slots, row_id, last_seen, count, rows.numpy(), ids.numpy(), counts.numpy(), t)

    def rows_init(self, ids: Tensor, key: int, dim: int, kind: str, scale: float, clamp: float | None) -> Tensor:
        if kind == "zeros":
            return torch.zeros(ids.numel(), dim)
        out = torch.empty(ids.numel(), dim)
        self.K.seeded_rows(ids.numpy(), key - (1 << 64) if key >= 1 << 63 else key, 1 if kind == "uniform" else 0,
                           scale, -1.0 if clamp is None else clamp, out.numpy())
        return out

    def nbytes(self) -> int:
        return int(self.slots.nbytes)
