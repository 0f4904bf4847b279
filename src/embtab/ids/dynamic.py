"""Dynamic tables: ``embtab.ids.Dynamic``. Each admitted id owns one row while it is live.

A table built with ``ids=embtab.ids.Dynamic(...)`` holds ``num_embeddings`` rows (its
capacity) for an unbounded id space (any int64). Its stage (``module.ids``, a
:class:`DynamicIds`) maps ids to rows and changes the map once per training step: one
training-mode forward of the table (one collection forward is one step of each of its
tables, whatever the number of its features). In eval mode nothing changes.

A training step over a batch (the ids of every lookup of the step, duplicates included):

1. Ids with a row are *hits*: their row is marked seen at this step and their count of
   sightings grows by their occurrences in the batch.
2. Other ids add their occurrences to their *pending* count (kept exactly, also in
   checkpoints); those whose count reaches ``MinCount(n)`` are *candidates* for a row.
3. ``TTL(steps)``: every live id not seen for ``steps`` steps (last seen at or before
   step ``t - steps``) is freed.
4. When the candidates need more rows than are free, ``LRU()`` / ``LFU()`` evict the live
   ids with the lowest score (LRU: the last step seen; LFU: the sightings), ties broken by
   ascending id; ids seen in this batch are never evicted. ``TTL`` never evicts an
   unexpired id. An evicted (or expired) id is forgotten: its counts start again at zero.
5. Candidates get rows in ascending id order; the i-th lowest admitted id takes the i-th
   lowest free row. Those left over (no row could be found) get the fallback this step and
   stay pending, and ``stats()["rejected"]`` counts them.
6. A row given to an id starts fresh: its weight is ``init(id, seed)``, a pure function of
   the id (the same on every device, in any batch order, whatever torch's RNG), and its
   fused optimizer state is reset to the initial value (``Table.reset_rows``).

Ids without a row get the fallback: ``"zero"`` (a zero vector, no gradient, left out of a
mean bag's count), ``"shared"`` (one trainable row after the capacity) or ``"hash"``
(``fallback_buckets`` trainable rows after the capacity, by ``seeded_bucket``).

The ``state_dict`` holds the live rows only, sorted by id: ``weight`` (live rows, then the
fallback rows), the optimizer state in the same order, and ``ids.ids``, ``ids.last_seen``,
``ids.count``, the pending counts (``ids.pending_ids``, ``ids.pending_counts``), the step
and the cumulative statistics. It loads into a table of any capacity at least the live
count, on any device, and training continues as it would have (where no eviction depends
on the capacity).

Index: the numba hash table on CPU (``_index_numba.py``), torch ops elsewhere and with
``backend="torch"`` (``_index.py``); both take the same decisions.

A row is reassigned at forward time. With ``update="backward"`` (the default) every
backward pass applies its gradients before the next forward reassigns rows; gradients
kept across forwards (``update="step"``) would reach a row that changed owner. The state
reset is that of the table's fused optimizer (``optimizer=``); a ``torch.optim`` optimizer
over ``module.parameters()`` keeps its own per-row state, which no stage can reach.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import Module

from .. import _checks
from ..ops.common import SKIP
from ._hash import hash_key, seeded_bucket
from ._index import NumbaIndex, TorchIndex
from .policies import IdSpace, IdStage

__all__ = ["MinCount", "LRU", "LFU", "TTL", "Dynamic", "DynamicIds"]

_WHERE = "embtab.ids.Dynamic"
# Hash streams of a seed (see _hash.hash_key): 0 the fallback buckets, 1 the rows' initial values.
_FALLBACK_STREAM, _INIT_STREAM = 0, 1
_STATS = ("lookups", "hits", "admitted", "evicted", "fallback_lookups", "rejected")


@dataclass(frozen=True)
class MinCount:
    """Admission: an id gets a row in the training batch in which its sightings reach ``n``."""

    n: int = 1

    def __post_init__(self) -> None:
        _checks.check_int_at_least(self.n, "n", 1, "embtab.ids.MinCount")


@dataclass(frozen=True)
class LRU:
    """Eviction of the least recently seen ids (score: the last training step seen)."""


@dataclass(frozen=True)
class LFU:
    """Eviction of the least frequently seen ids (score: sightings since admission's count began)."""


@dataclass(frozen=True)
class TTL:
    """Expiry: an id not seen for ``steps`` training steps is freed; nothing else is evicted."""

    steps: int

    def __post_init__(self) -> None:
        _checks.check_int_at_least(self.steps, "steps", 1, "embtab.ids.TTL")


RowInit = Callable[[Tensor, int, int], Tensor]


@dataclass(frozen=True)
class Dynamic(IdSpace):
    """A dynamic table: admitted ids own rows, which are evicted, freed and reset.

    Args:
        admit: :class:`MinCount` ``(n)``.
        evict: :class:`LRU` ``()``, :class:`LFU` ``()`` or :class:`TTL` ``(steps)``.
        fallback: what an id without a row gets: ``"zero"``, ``"shared"`` (one trainable
            row) or ``"hash"`` (``fallback_buckets`` trainable rows).
        fallback_buckets: rows for ``fallback="hash"``.
        seed: of the fresh rows' values and of the fallback hash.
        init: a fresh row's values: None (the table's ``init``, drawn per id: "normal",
            "truncated_normal", "uniform", "xavier_*", "kaiming_*", "zeros"), a float (the
            std of a normal), or a callable ``init(ids, seed, dim) -> (len(ids), dim)`` that
            depends on each id alone (e.g. built on :func:`embtab.ids.normal_rows`).

    Example:
        >>> emb = embtab.Embedding(1000, 16, ids=embtab.ids.Dynamic(evict=embtab.ids.LFU()))
        >>> emb(torch.tensor([2**40, -3, 2**40])).shape
        torch.Size([3, 16])
        >>> emb.ids.stats()["live"]
        2
    """

    admit: MinCount = field(default=MinCount(1), kw_only=True)
    evict: LRU | LFU | TTL = field(default=LRU(), kw_only=True)
    fallback: str = field(default="zero", kw_only=True)
    fallback_buckets: int = field(default=0, kw_only=True)
    seed: int = field(default=0, kw_only=True)
    init: str | float | RowInit | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _checks.check_instance(self.admit, "admit", (MinCount,), "embtab.ids.MinCount(2)", _WHERE)
        _checks.check_instance(self.evict, "evict", (LRU, LFU, TTL), "embtab.ids.LFU()", _WHERE)
        _checks.check_fallback(self.fallback, self.fallback_buckets, _WHERE)
        _checks.check_seed(self.seed, _WHERE)
        _checks.check_row_init(self.init, _WHERE)

    @property
    def extra_rows(self) -> int:  # type: ignore[override]
        """The fallback's trainable rows, after the capacity."""
        return {"zero": 0, "shared": 1, "hash": self.fallback_buckets}[self.fallback]

    def stage(self, num_embeddings: int, embedding_dim: int, where: str) -> "DynamicIds":
        _checks.check_int_at_least(num_embeddings, "num_embeddings (the capacity of ids=Dynamic)", 1, where)
        return DynamicIds(self, num_embeddings)


def normal_rows(ids: Tensor, seed: int, dim: int, std: float = 1.0) -> Tensor:
    """``(len(ids), dim)`` float32 rows of about N(0, std^2), a pure function of each id and
    ``seed`` (what ``Dynamic(init=std)`` gives a fresh row; see ``_hash.seeded_rows``)."""
    from ._hash import seeded_rows

    return seeded_rows(ids, hash_key(seed, _INIT_STREAM), dim, "normal", std)


def _named_init(name: str, rows: int, dim: int) -> tuple[str, float, float | None]:
    """(kind, scale, clamp) of a fresh row for the table init ``name`` (torch's fans of a (rows, dim) weight)."""
    fan_in, fan_out = dim, rows
    return {
        "normal": ("normal", 1.0, None),
        "truncated_normal": ("normal", 1.0, 2.0),
        "uniform": ("uniform", 1.0 / math.sqrt(rows), None),
        "xavier_uniform": ("uniform", math.sqrt(6.0 / (fan_in + fan_out)), None),
        "xavier_normal": ("normal", math.sqrt(2.0 / (fan_in + fan_out)), None),
        "kaiming_uniform": ("uniform", math.sqrt(6.0 / fan_in), None),
        "kaiming_normal": ("normal", math.sqrt(2.0 / fan_in), None),
        "zeros": ("zeros", 0.0, None),
    }[name]


_numba_kernels: Any = None


def _numba() -> Any:
    """The numba kernels, or None where numba is missing (imported once)."""
    global _numba_kernels
    if _numba_kernels is None:
        try:
            from . import _index_numba

            _numba_kernels = _index_numba
        except (ImportError, RuntimeError, OSError):
            _numba_kernels = False
    return _numba_kernels or None


class DynamicIds(IdStage, Module):
    """The stage of a :class:`Dynamic` table (``module.ids``): the id map and its counters."""

    name: ClassVar[str] = "dynamic"
    stateful: ClassVar[bool] = True

    def __init__(self, space: Dynamic, capacity: int) -> None:
        Module.__init__(self)
        self.space = space
        self.capacity = capacity
        self.extra_rows = space.extra_rows
        self._fallback_key = hash_key(space.seed, _FALLBACK_STREAM)
        self._init_key = hash_key(space.seed, _INIT_STREAM)
        # Per row: its id, the last step it was seen (-1: free), its sightings. Not persistent:
        # the state_dict holds the live rows only (see _save_to_state_dict).
        self.register_buffer("_row_id", torch.zeros(capacity, dtype=torch.int64), persistent=False)
        self.register_buffer("_last_seen", torch.full((capacity,), -1, dtype=torch.int64), persistent=False)
        self.register_buffer("_count", torch.zeros(capacity, dtype=torch.int64), persistent=False)
        self.register_buffer("_pending_ids", torch.zeros(0, dtype=torch.int64), persistent=False)  # ascending
        self.register_buffer("_pending_counts", torch.zeros(0, dtype=torch.int64), persistent=False)
        self._step = 0
        self._live = 0
        self._stats = dict.fromkeys(_STATS, 0)
        self._score_floor = 0  # no eligible LRU score lies below it (a hint of the victim selection)
        self._index: Any = None
        self._open: dict[tuple[int, int], Tensor] | None = None  # rows of a collection's step, by input
        self._row_init: Any = None
        self._init_name: str | None = None  # the table init's name, when fresh rows follow it

    # --- binding ---------------------------------------------------------------------------------

    def bind(self, table: Any) -> None:
        table.add_module("ids", self)
        object.__setattr__(self, "_table", table)  # not a submodule: the table owns this stage
        w = table.weight
        self._apply(lambda b: b.to(w.device))
        init = self.space.init
        if init is None:
            init = table.init
            if callable(init):
                raise _checks.BadArgumentError(
                    f"{type(table).__name__}: ids=Dynamic gives every admitted id a fresh row drawn per id, which a "
                    f"callable init= cannot do; pass the fresh rows' values as Dynamic(init=...): a std, or a "
                    f"callable init(ids, seed, dim) such as embtab.ids.normal_rows"
                )
        if isinstance(init, str):
            self._init_name = init
            self._row_init = _named_init(init, w.shape[0], w.shape[1])
        elif callable(init):
            self._row_init = init
            # Tried once here, on every rank alike: a wrong shape found only when an id is first
            # admitted would fail on its owner alone, and a sharded table's other ranks would wait.
            # (On the CPU for a table on "meta": the values are not kept, only their shape checked.)
            probe = torch.tensor([0, -1, 2**62], device="cpu" if w.device.type == "meta" else w.device)
            self._call_row_init(probe, w.shape[1])
        else:
            self._row_init = ("normal", float(init), None)

    @property
    def table(self) -> Any:
        return self.__dict__["_table"]

    def use_fans_of(self, rows: int) -> None:
        """Draw fresh rows with a named init's fans of a weight of ``rows`` rows, not of this
        table's (a piece of a sharded table draws them as the whole table does)."""
        if self._init_name is not None:
            self._row_init = _named_init(self._init_name, rows, self.table.weight.shape[1])

    # --- what the lookup pipeline calls ----------------------------------------------------------

    @torch.compiler.disable
    def resolve(
        self, ids: Tensor, num_embeddings: int, *, where: str, counter: Tensor | None = None,
        shape: torch.Size | None = None,
    ) -> tuple[Tensor, bool]:
        x = ids.reshape(-1).to(torch.int64)
        rows = None
        if self._open is not None:
            rows = self._open.get(_key(ids))
        if rows is None:
            rows = self._train_step([x])[0] if self.training and self._open is None else self._lookup(x)
        has_skip = self.space.fallback == "zero" and bool((rows < 0).any())  # else no compaction is needed
        return rows.reshape(ids.shape).to(ids.dtype), has_skip

    @contextlib.contextmanager
    def step(self, ids: Sequence[Tensor], where: str) -> Iterator[None]:
        """One training step over every feature's ids (a collection forward); the features'
        lookups inside read the rows it gave."""
        if not self.training:
            yield
            return
        weight = self.table.weight
        for x in ids:
            _checks.check_ids(x, "ids", where)
            _checks.check_same_device(x, weight, "ids", where)
        rows = self._train_step([x.reshape(-1).to(torch.int64) for x in ids])
        self._open = {_key(x): r for x, r in zip(ids, rows)}
        try:
            yield
        finally:
            self._open = None

    # --- the step --------------------------------------------------------------------------------

    def _index_of(self) -> Any:
        if self._index is None:
            kernels = _numba() if self._row_id.device.type == "cpu" else None
            if kernels is not None and self.table.spec.backend in ("auto", "numba"):
                self._index = NumbaIndex(self, kernels)
            else:
                self._index = TorchIndex(self)
        return self._index

    def _train_step(self, xs: list[Tensor]) -> list[Tensor]:
        """One training step over the flat int64 ids ``xs``; returns each one's rows."""
        index = self._index_of()
        space, stats = self.space, self._stats
        t = self._step + 1
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        uniq, counts, rows_u, inv = index.probe(x.contiguous(), t, True)  # rows before this batch
        hit = rows_u >= 0
        miss = (~hit).nonzero().squeeze(1)  # positions among uniq
        miss_ids = uniq[miss]
        seen = counts[miss] + self._pending_of(miss_ids)  # sightings of each id without a row
        cand = miss[seen >= space.admit.n]
        cand = cand[torch.argsort(uniq[cand])]  # served in ascending id order
        k = cand.numel()
        if isinstance(space.evict, TTL):
            gone = index.expired(t - space.evict.steps)
            index.free(gone)
            self._live -= gone.numel()
            stats["evicted"] += gone.numel()
        elif k > self.capacity - self._live:
            score = self._last_seen if isinstance(space.evict, LRU) else self._count
            gone = index.victims(score, t, k - (self.capacity - self._live))
            if gone.numel() and isinstance(space.evict, LRU):
                self._score_floor = int(score[gone].min())
            index.free(gone)
            self._live -= gone.numel()
            stats["evicted"] += gone.numel()
        a = min(k, self.capacity - self._live)
        admitted = cand[:a]
        new_rows = index.lowest_free(a)
        new_ids = uniq[admitted]
        totals = torch.zeros_like(counts)
        totals[miss] = seen
        index.assign(new_rows, new_ids, totals[admitted], t)
        self._live += a
        stats["admitted"] += a
        stats["rejected"] += k - a
        # Pending: ids seen without a row that got none now keep their sightings; the admitted leave.
        waiting = ~hit
        waiting[admitted] = False
        self._set_pending(miss_ids, uniq[waiting], totals[waiting])
        if a:
            self.table.reset_rows(new_rows, self._fresh_rows(new_ids, index))
        rows_u[admitted] = new_rows
        rows = rows_u[inv]
        stats["lookups"] += x.numel()
        stats["hits"] += int(counts[hit].sum())
        self._step = t
        out = self._fallback(x, rows, count=True)
        if len(xs) == 1:
            return [out]
        return list(torch.split(out, [v.numel() for v in xs]))

    def _pending_of(self, ids: Tensor) -> Tensor:
        """Pending sightings of ``ids`` (0 for ids not pending)."""
        p = self._pending_ids
        if p.numel() == 0 or ids.numel() == 0:
            return torch.zeros_like(ids)
        pos = torch.searchsorted(p, ids).clamp_max(p.numel() - 1)
        return torch.where(p[pos] == ids, self._pending_counts[pos], torch.zeros_like(ids))

    def _set_pending(self, drop: Tensor, ids: Tensor, counts: Tensor) -> None:
        """Pending without the ids ``drop``, then with ``ids`` at ``counts`` (merged in order)."""
        p, c = self._pending_ids, self._pending_counts
        if p.numel() and drop.numel():
            pos = torch.searchsorted(p, drop).clamp_max(p.numel() - 1)
            keep = torch.ones_like(p, dtype=torch.bool)
            keep[pos[p[pos] == drop]] = False
            p, c = p[keep], c[keep]
        if ids.numel():
            order = torch.argsort(ids)
            ids, counts = ids[order], counts[order]
            at = torch.searchsorted(p, ids) + torch.arange(ids.numel(), device=ids.device)  # in the merged list
            new = torch.zeros(p.numel() + ids.numel(), dtype=torch.bool, device=ids.device)
            new[at] = True
            merged_ids = torch.empty(new.numel(), dtype=torch.int64, device=ids.device)
            merged_counts = torch.empty_like(merged_ids)
            merged_ids[at], merged_counts[at] = ids, counts
            merged_ids[~new], merged_counts[~new] = p, c
            p, c = merged_ids, merged_counts
        self._pending_ids, self._pending_counts = p, c

    def _call_row_init(self, ids: Tensor, dim: int) -> Tensor:
        values = self._row_init(ids, self.space.seed, dim)
        if not isinstance(values, Tensor) or tuple(values.shape) != (ids.numel(), dim):
            raise ValueError(
                f"{_WHERE}: init(ids, seed, dim) must return a tensor of shape ({ids.numel()}, {dim}), got "
                f"{tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}"
            )
        return values

    def _fresh_rows(self, ids: Tensor, index: Any) -> Tensor:
        dim = self.table.weight.shape[1]
        if callable(self._row_init):
            return self._call_row_init(ids, dim)
        kind, scale, clamp = self._row_init
        return index.rows_init(ids, self._init_key, dim, kind, scale, clamp)

    def _lookup(self, x: Tensor) -> Tensor:
        """Rows of ``x`` with the fallback, changing nothing (eval mode)."""
        return self._fallback(x, self._index_of().lookup(x.contiguous()), count=False)

    def _fallback(self, x: Tensor, rows: Tensor, *, count: bool) -> Tensor:
        missing = rows < 0
        if count:
            self._stats["fallback_lookups"] += int(missing.sum())
        fb = self.space.fallback
        if fb == "zero":
            return rows  # SKIP (-1): no vector, no gradient
        if fb == "shared":
            return torch.where(missing, torch.full_like(rows, self.capacity), rows)
        buckets = self.capacity + seeded_bucket(x, self._fallback_key, self.space.fallback_buckets)
        return torch.where(missing, buckets, rows)

    # --- introspection ---------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Cumulative counts over the training steps (``lookups``: ids looked up; ``hits``: those
        whose id had a row before its batch; ``admitted``; ``evicted`` (expired ones included);
        ``fallback_lookups``; ``rejected``: admissions that found no row), and the current
        ``live``, ``capacity`` and ``pending`` (ids waiting for admission)."""
        return {"live": self._live, "capacity": self.capacity, **self._stats,
                "pending": int(self._pending_ids.numel())}

    def live_ids(self) -> Tensor:
        """The ids that own a row, ascending."""
        return self._index_of().live()[0].clone()

    def rows_of(self, ids: Tensor) -> Tensor:
        """The row of each id (-1: none), changing nothing."""
        _checks.check_ids(ids, "ids", f"{_WHERE}.rows_of")
        x = ids.reshape(-1).to(device=self._row_id.device, dtype=torch.int64)
        return self._index_of().lookup(x.contiguous()).reshape(ids.shape)

    def index_bytes(self) -> int:
        """Bytes of the id index and the per-row and pending metadata (not the weight)."""
        arrays = (self._row_id, self._last_seen, self._count, self._pending_ids, self._pending_counts)
        return sum(a.numel() * a.element_size() for a in arrays) + (self._index.nbytes() if self._index else 0)

    def extra_repr(self) -> str:
        return f"capacity={self.capacity}, {self.space!r}"

    # --- state ----------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles rebuild the index from the per-row arrays on first use.
        return {**self.__dict__, "_index": None, "_open": None}

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "DynamicIds":
        super()._apply(fn, recurse)
        self._index = None  # rebuilt for the new device on first use
        return self

    def _live_rows(self) -> tuple[Tensor, Tensor]:
        return self._index_of().live()

    def pack_state(self, table: Any, state_dict: dict[str, Any], prefix: str) -> None:
        """The table's weight and optimizer rows: the live rows by ascending id, then the fallback rows."""
        _, rows = self._live_rows()
        keep = torch.cat([rows, torch.arange(self.capacity, self.capacity + self.extra_rows, device=rows.device)])
        for key in [prefix + "weight", *(k for k in state_dict if k.startswith(prefix + "optim_"))]:
            value = state_dict.get(key)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == self.capacity + self.extra_rows:
                state_dict[key] = value.detach()[keep.to(value.device)]

    def unpack_state(self, table: Any, state_dict: dict[str, Any], prefix: str) -> None:
        """Live rows (first, by ascending id) and fallback rows to this capacity's layout."""
        ids = state_dict.get(prefix + "ids.ids")
        if not isinstance(ids, Tensor):
            return  # missing keys are reported by the load
        live = ids.numel()
        where = f"{type(table).__name__}.load_state_dict"
        if live > self.capacity:
            raise ValueError(
                f"{where}: {prefix}ids.ids holds {live} live ids, more than this table's capacity "
                f"num_embeddings={self.capacity}; build the table with num_embeddings >= {live}"
            )
        size = live + self.extra_rows
        initial = {}
        if table.optimizer is not None:
            initial = {prefix + "optim_" + n: f.initial for n, f in table.optimizer.spec.state_layout().items()}
            if any(key not in state_dict for key in initial):  # weights alone: the rows move, their state restarts
                table.reset_optimizer_state()
        for key in [prefix + "weight", *initial]:
            value = state_dict.get(key)
            if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[0] != size:
                continue  # the load names the mismatch
            full = value.new_full((self.capacity + self.extra_rows, *value.shape[1:]), initial.get(key, 0))
            full[:live] = value[:live]
            full[self.capacity:] = value[live:]
            state_dict[key] = full

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        ids, rows = self._live_rows()
        destination[prefix + "ids"] = ids.clone()
        destination[prefix + "last_seen"] = self._last_seen[rows].clone()
        destination[prefix + "count"] = self._count[rows].clone()
        destination[prefix + "pending_ids"] = self._pending_ids.clone()
        destination[prefix + "pending_counts"] = self._pending_counts.clone()
        destination[prefix + "step"] = torch.tensor(self._step, dtype=torch.int64)
        destination[prefix + "stats"] = torch.tensor([self._stats[k] for k in _STATS], dtype=torch.int64)

    _KEYS = ("ids", "last_seen", "count", "pending_ids", "pending_counts", "step", "stats")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        got = {k: state_dict.get(prefix + k) for k in self._KEYS}
        missing = [prefix + k for k, v in got.items() if v is None]
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k[len(prefix):] not in self._KEYS)
        if missing:
            missing_keys.extend(missing)
            return
        try:
            values = _checks.check_dynamic_state({k: v.detach().to("cpu", torch.int64) for k, v in got.items()},
                                                 self.capacity, prefix, f"{_WHERE}.load_state_dict")
        except (TypeError, ValueError) as exc:
            error_msgs.append(str(exc))
            return
        live = values["ids"].numel()
        device = self._row_id.device
        with torch.no_grad():
            self._last_seen.fill_(-1)
            self._row_id.zero_()
            self._count.zero_()
            self._row_id[:live] = values["ids"].to(device)
            self._last_seen[:live] = values["last_seen"].to(device)
            self._count[:live] = values["count"].to(device)
        self._pending_ids = values["pending_ids"].to(device)
        self._pending_counts = values["pending_counts"].to(device)
        self._step = int(values["step"])
        self._stats = dict(zip(_STATS, values["stats"].tolist()))
        self._live = live
        self._score_floor = 0
        self._index = None


def sort_by_id(state_dict: dict[str, Any], prefix: str) -> None:
    """The live rows (ids, their per-row values, weight and optimizer rows) and the pending ids
    of a saved state (``prefix`` + the table's keys) in ascending id order, in place, as a table
    loads them. A sharded table saves each rank's ids in order, one rank after another
    (``embtab.distributed``)."""
    for what, rows in (("ids", ("last_seen", "count")), ("pending_ids", ("pending_counts",))):
        ids = state_dict.get(prefix + "ids." + what)
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.numel() < 2 or bool((ids[1:] > ids[:-1]).all()):
            continue
        n = ids.numel()
        order = torch.argsort(ids)
        keys = ["ids." + what, *("ids." + r for r in rows)]
        if what == "ids":
            keys += ["weight", *(k[len(prefix):] for k in state_dict if k.startswith(prefix + "optim_"))]
        for key in keys:
            value = state_dict.get(prefix + key)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] >= n:
                at = order.to(value.device)
                state_dict[prefix + key] = value[at] if value.shape[0] == n else torch.cat([value[at], value[n:]])


def _key(x: Tensor) -> tuple[int, int]:
    """Identifies an input tensor across a reshape: (address, size)."""
    return x.data_ptr(), x.numel()
