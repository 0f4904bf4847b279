"""A dict-based model of a dynamic table's id map: the rules of ``embtab.ids.Dynamic``, plainly.

Independent of the implementation (no tensors, no index): Python dicts and sets, one id at
a time. The tests hold both index implementations to it.
"""

from __future__ import annotations

from collections import Counter


class DynamicModel:
    """Live ids -> rows, their last step and sightings, pending counts, and the statistics."""

    def __init__(self, capacity: int, min_count: int = 1, evict: str = "lru", ttl: int = 0) -> None:
        self.capacity, self.min_count, self.evict, self.ttl = capacity, min_count, evict, ttl
        self.row: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.count: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        self.free_rows = set(range(capacity))
        self.step = 0
        self.stats = dict(lookups=0, hits=0, admitted=0, evicted=0, fallback_lookups=0, rejected=0)

    def _forget(self, i: int) -> None:
        self.free_rows.add(self.row.pop(i))
        del self.last[i], self.count[i]
        self.stats["evicted"] += 1

    def train_step(self, ids: list[int]) -> tuple[list[int], dict[int, int]]:
        """One training step; returns each id's row (-1: none) and the admitted ids' rows."""
        t = self.step + 1
        batch = Counter(ids)
        for i, c in batch.items():
            if i in self.row:
                self.last[i] = t
                self.count[i] += c
        self.stats["lookups"] += len(ids)
        self.stats["hits"] += sum(c for i, c in batch.items() if i in self.row)
        seen = {i: self.pending.get(i, 0) + c for i, c in batch.items() if i not in self.row}
        candidates = sorted(i for i, s in seen.items() if s >= self.min_count)
        if self.ttl:
            for i in [i for i in self.row if self.last[i] <= t - self.ttl]:
                self._forget(i)
        elif len(candidates) > len(self.free_rows):
            score = self.last if self.evict == "lru" else self.count
            eligible = sorted((i for i in self.row if self.last[i] != t), key=lambda i: (score[i], i))
            for i in eligible[:len(candidates) - len(self.free_rows)]:
                self._forget(i)
        free = sorted(self.free_rows)
        admitted = dict(zip(candidates, free))
        for i, r in admitted.items():
            self.row[i], self.last[i], self.count[i] = r, t, seen[i]
            self.free_rows.discard(r)
        self.stats["admitted"] += len(admitted)
        self.stats["rejected"] += len(candidates) - len(admitted)
        for i, s in seen.items():
            if i in admitted:
                self.pending.pop(i, None)
            else:
                self.pending[i] = s
        self.step = t
        rows = [self.row.get(i, -1) for i in ids]
        self.stats["fallback_lookups"] += sum(r < 0 for r in rows)
        return rows, admitted

    def stats_dict(self) -> dict[str, int]:
        return {"live": len(self.row), "capacity": self.capacity, **self.stats, "pending": len(self.pending)}
