"""Sharded dynamic tables (``ids=embtab.ids.Dynamic``): each id owned by one rank.

A dynamic table's id -> row map changes at every training step, so its state lives where
its ids are looked up, once. Every id has one owner; the owner's piece holds the id's row,
maps the id (admission, eviction, expiry, fresh rows, statistics: its own
:class:`~embtab.ids.DynamicIds`) and pools it.

- ``ed.row_wise()`` (the default for these tables, :class:`DynamicRowWise`): the id ``x`` is
  owned by the rank ``owner_of(x, W)`` (``embtab.ids._hash``: a seeded ``fmix64`` of the id,
  stable across runs and machines). Rank ``r``'s piece holds ``capacity_r`` rows, its share
  of the capacity as ``torch.tensor_split`` cuts it (a capacity below ``W`` is refused), and
  a copy of the fallback rows (``Dynamic(fallback="shared" | "hash")``), whose row gradients
  the ranks sum (one ``all_reduce`` of ``fallback rows x (dim + 1)`` per step), so every copy
  takes the unsharded update. Ids travel raw (``Sharding.raw``: any int64 is an id); each
  owner takes one step over all the ids it received, of every feature of the table, at each
  forward of the sharded collection (in training mode; none in eval mode), and pools them.
  With ``fallback="zero"`` an owner may drop ids the looking-up rank counted, so for mean and
  max pooling it sends each bag's count back with its part (``counts_back``).
- ``ed.table_wise(rank=r)`` (:class:`DynamicTableWise`): the whole table and its map on rank ``r``.
- ``ed.column_wise`` and ``ed.data_parallel`` are refused: every column rank, or every copy,
  would keep its own map of the same ids, and the maps would diverge.

Training equals the unsharded table's when no eviction depends on the capacity (each rank's
share holds every id it owns): the same rows, values, optimizer state and statistics
(summed over the ranks). When ranks evict, each rank's piece is exactly a dynamic table of
its share of the capacity fed the ids it owns.

State (``state_dict``, ``torch.distributed.checkpoint``, ``ed.gather_state_dict``): the plain
table's keys; the live rows of each rank by ascending id (their weight and optimizer rows,
``ids.ids``, ``ids.last_seen``, ``ids.count``), one rank after another, the fallback rows once
(after the last rank's block), the pending ids and counts likewise, ``ids.step`` (every rank
takes the same steps) and ``ids.stats`` summed over the ranks. Calling ``state_dict()`` is a
collective (an ``all_gather`` of the ranks' counts). Loaded at any world size
(``ed.load_checkpoint``, or a whole state_dict), every live id and every pending id goes to
its owner at the new world size with its rows, sightings and pending count (pending counts
are exact: an id's sightings all reach its owner). The step is kept; the statistics go to
the first rank holding a piece and the others start at zero, so their sum is kept. An owner
whose share of the capacity is smaller than the ids it gets refuses the load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import _checks
from ..configs import TableConfig
from ..ids._hash import owner_of
from ..ids._index import planned_bytes
from ..ids.dynamic import Dynamic, DynamicIds, sort_by_id
from .plan import ID_KINDS, AsIs, Piece, ReduceContext, Sharding, Sizer, add_norm_power, norm_power, split_sizes
from .row_wise import RowWise
from .table_wise import TableWise

__all__ = ["DynamicRowWise", "DynamicTableWise"]

_ID_KEYS = DynamicIds._KEYS  # ("ids", "last_seen", "count", "pending_ids", "pending_counts", "step", "stats")
_PER_ID = ("ids", "last_seen", "count")
_PENDING = ("pending_ids", "pending_counts")


class _Owned(Sharding):
    """What the dynamic kinds share: raw ids, the owner's own stage, and the state of live rows."""

    raw: ClassVar[bool] = True
    space: Dynamic
    extra: int  # the fallback rows after each piece's share of the capacity

    def for_table(self, table: TableConfig) -> Sharding:
        return self  # (already the variant)

    def side_bytes(self, table: TableConfig, world_size: int, size: Sizer) -> dict[int, int]:
        """Each piece's copy of the fallback rows, and the id map of its share of the capacity."""
        out: dict[int, int] = {}
        for p in self.pieces(table.num_rows, table.embedding_dim, world_size):
            for r in p.ranks:
                out[r] = out.get(r, 0) + size.rows(self.extra, table.embedding_dim) + planned_bytes(p.rows)
        return out

    def source_spec(self, spec: Any) -> Any:
        return dc_replace(spec, ids=AsIs(), id_space=None)

    def piece_ids(self, table: TableConfig) -> Any:
        return table.ids

    def stage(self, piece: Piece) -> None:
        return None  # the piece's own DynamicIds (piece_ids) maps what it receives

    def owns(self, ids: Tensor, rank: int, world_size: int) -> Tensor:
        """Which of ``ids`` rank ``rank`` owns (bool, ``ids``' shape)."""
        raise NotImplementedError

    # --- state: the live rows ----------------------------------------------------------------

    def state_entries(self, table: Any) -> list[Any]:
        comm = table.comm
        me, world = comm.rank, comm.world_size
        stage = table._modules.get("ids")
        dim, device = table.full_dim, table.weight.device
        names = ["weight", *(["optim_" + n for n in table.optimizer.spec.state_layout()] if table.optimizer else [])]
        if stage is not None:
            own = stage.state_dict()  # this piece's ids, per-id values, pending ids, step, stats (plain)
            rows = {n: getattr(table, n).detach() for n in names}
            stage.pack_state(table, rows, "")  # its live rows by ascending id, then the fallback rows
            counts = [own["ids"].numel(), own["pending_ids"].numel(), int(own["step"]), *own["stats"].tolist()]
        else:  # this rank holds nothing of the table
            own = {k: torch.zeros(0, dtype=torch.int64, device=device) for k in (*_PER_ID, *_PENDING)}
            rows = {n: getattr(table, n).detach()[:0] for n in names}
            counts = [0, 0, -1, *[0] * 6]
        every = comm.all_gather(torch.tensor(counts, dtype=torch.int64, device=device), "state").tolist()
        live, pending = [r[0] for r in every], [r[1] for r in every]
        holder = table.pieces[-1].owner  # writes the fallback rows, after its live rows
        extra = self.extra

        def blocks(sizes: list[int], tail: int, width: tuple[int, ...]) -> list[Any]:
            out, at = [], 0
            for s, n in enumerate(sizes):
                n += tail if s == holder else 0
                if n:
                    out.append(((at, *[0] * len(width)), (n, *width), (s,)))
                at += n
            return out or [((0, *[0] * len(width)), (0, *width), (holder,))]

        total, waiting = sum(live), sum(pending)
        entries = []
        for n in names:
            local = rows[n] if me == holder else rows[n][:live[me]]
            width = tuple(local.shape[1:])
            entries.append((n, local, (total + extra, *width), blocks(live, extra, width)))
        for k in _PER_ID:
            entries.append(("ids." + k, own[k], (total,), blocks(live, 0, ())))
        for k in _PENDING:
            entries.append(("ids." + k, own[k], (waiting,), blocks(pending, 0, ())))
        entries.append(("ids.step", torch.tensor(max(r[2] for r in every), dtype=torch.int64), (), None))
        stats = torch.tensor([sum(r[3 + i] for r in every) for i in range(6)], dtype=torch.int64)
        entries.append(("ids.stats", stats, (6,), None))
        return entries

    def load_state(self, table: Any, state_dict: dict[str, Any], prefix: str, error_msgs: list[str]) -> set[str]:
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        comm = table.comm
        me, world = comm.rank, comm.world_size
        stage = table._modules.get("ids")
        names = ["weight", *(["optim_" + n for n in table.optimizer.spec.state_layout()] if table.optimizer else [])]
        id_keys = {prefix + "ids." + k for k in _ID_KEYS}
        if stage is None:  # this rank holds nothing of the table: it keeps its empty tensors
            for n in names:
                if prefix + n in state_dict:
                    state_dict[prefix + n] = getattr(table, n)
            return id_keys
        got = {k: state_dict.get(prefix + "ids." + k) for k in _ID_KEYS}
        if any(v is None for v in got.values()):
            return set()  # the loads report the missing keys
        capacity = table.spec.num_embeddings
        first = table.pieces[0].owner  # gets the statistics
        if not (me == first):
            state_dict[prefix + "ids.stats"] = torch.zeros_like(got["stats"])
        if any(isinstance(state_dict.get(prefix + k), ShardedTensor) for k in (*names, "ids.ids")):
            # This module's own ShardedTensors (a round trip of its state_dict): its blocks, in order.
            for key in [*names, *("ids." + k for k in (*_PER_ID, *_PENDING))]:
                value = state_dict.get(prefix + key)
                if isinstance(value, ShardedTensor):
                    shards = sorted(value.local_shards(), key=lambda sh: sh.metadata.shard_offsets[0])
                    local = (torch.cat([sh.tensor for sh in shards]) if shards else
                             torch.zeros(0, *value.size()[1:], dtype=value.dtype, device=table.weight.device))
                    if key in names and me != table.pieces[-1].owner:  # the fallback rows: its own copy
                        local = torch.cat([local, getattr(table, key).detach()[capacity:].to(local.device)])
                    state_dict[prefix + key] = local
            # Blocks read as they come: right only if they were saved by this world size and
            # plan. A block of ids this rank does not own would load rows under wrong ids.
            for key in ("ids.ids", "ids.pending_ids"):
                mine = state_dict.get(prefix + key)
                if isinstance(mine, Tensor) and mine.numel() and not bool(self.owns(mine.to(torch.int64), me,
                                                                                     world).all()):
                    error_msgs.append(
                        f"{prefix}{key}: rank {me} received ids it does not own (table {table.table_name!r}): the "
                        f"checkpoint's blocks were saved at another world size or plan; load it with "
                        f"ed.load_checkpoint(module, path), which moves each id to its owner"
                    )
                    break
            return set()
        ids = got["ids"].reshape(-1)
        live = ids.numel()
        at = self.owns(ids.to(torch.int64), me, world).nonzero().squeeze(1)
        at = at[torch.argsort(ids[at])]
        _checks.check_owned_capacity(table.table_name, me, world, at.numel(), capacity, prefix)
        for k in _PER_ID:
            value = got[k].reshape(-1)
            if value.numel() == live:
                state_dict[prefix + "ids." + k] = value[at.to(value.device)]
        pending = got["pending_ids"].reshape(-1)
        keep = self.owns(pending.to(torch.int64), me, world).nonzero().squeeze(1)
        keep = keep[torch.argsort(pending[keep])]
        for k in _PENDING:
            value = got[k].reshape(-1)
            if value.numel() == pending.numel():
                state_dict[prefix + "ids." + k] = value[keep.to(value.device)]
        for n in names:
            value = state_dict.get(prefix + n)
            if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == live + self.extra:
                state_dict[prefix + n] = torch.cat([value[at.to(value.device)], value[live:]])
        return set()

    def canonical(self, table: Any, whole: dict[str, Tensor]) -> None:
        sort_by_id(whole, "")


@dataclass(frozen=True, repr=False)
class DynamicRowWise(_Owned, RowWise):
    """``ed.row_wise()`` of a dynamic table: the id ``x`` owned by rank ``owner_of(x, W)``."""

    space: Dynamic = None  # type: ignore[assignment]
    extra: int = 0

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        out, row0 = [], 0
        for rank, rows in enumerate(split_sizes(num_rows - self.extra, world_size)):
            out.append(Piece((rank,), row0, rows, 0, dim))  # (every rank has rows: see check)
            row0 += rows
        return tuple(out)

    def check(self, table: TableConfig, world_size: int) -> None:
        super().check(table, world_size)
        _checks.check_capacity_per_rank(table.name, repr(self), table.num_embeddings, world_size)

    def route(self, rows: Tensor, pieces: tuple[Piece, ...]) -> Tensor:
        return owner_of(rows, len(pieces))  # piece r is rank r's

    def owns(self, ids: Tensor, rank: int, world_size: int) -> Tensor:
        return owner_of(ids, world_size) == rank

    def counts_back(self, mode: str) -> bool:
        return self.space.fallback == "zero" and mode in ("mean", "max")

    def combine(self, parts: list[Tensor], mode: str, kept: Tensor, counts: Tensor | None) -> Tensor:
        if self.counts_back(mode):  # the owners' counts of the ids they pooled, in each part's last column
            counts = torch.stack([p[:, -1] for p in parts]).detach().round().to(torch.int64)  # (pieces, B)
            parts, kept = [p[:, :-1] for p in parts], counts.sum(0)
        return super().combine(parts, mode, kept, counts)

    def reduces(self, optimizer_kind: str, world_size: int) -> bool:
        return world_size > 1 and self.extra > 0

    def reduce_row_grads(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext) -> tuple[Tensor, Tensor]:
        """The fallback rows' gradients summed over the ranks (each holds a copy); the rows of
        its own ids unchanged."""
        capacity, dim = table.spec.num_embeddings, grads.shape[1]
        own = rows < capacity
        buf = torch.zeros(self.extra, dim + 1, dtype=grads.dtype, device=grads.device)  # (fallback rows, D + 1)
        at = rows[~own] - capacity
        buf[at, :dim] = grads[~own]
        buf[at, dim] = 1.0  # touched on this rank
        ctx.comm.all_reduce_(buf, "fallback grads")
        touched = (buf[:, dim] > 0).nonzero().squeeze(1)  # (U,) ascending, after the own rows: as the update expects
        return torch.cat([rows[own], capacity + touched]), torch.cat([grads[own], buf[touched, :dim]])

    def grad_norm_share(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext,
                        norm_type: float) -> Tensor:
        """The rows of its own ids, and on rank 0 the summed fallback rows (every rank holds them)."""
        if not self.reduces(ctx.kind, ctx.comm.world_size):
            return norm_power(grads, norm_type)
        rows, grads = self.reduce_row_grads(table, rows, grads, ctx)
        own = rows < table.spec.num_embeddings
        share = norm_power(grads[own], norm_type)
        if ctx.comm.rank == 0:
            share = add_norm_power(share, norm_power(grads[~own], norm_type), norm_type)
        return share


@dataclass(frozen=True, repr=False)
class DynamicTableWise(_Owned, TableWise):
    """``ed.table_wise(rank=r)`` of a dynamic table: the whole table and its map on rank ``r``."""

    space: Dynamic = None  # type: ignore[assignment]
    extra: int = 0

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        return (Piece((self.rank,), 0, num_rows - self.extra, 0, dim),)

    def owns(self, ids: Tensor, rank: int, world_size: int) -> Tensor:
        return torch.full(ids.shape, rank == self.rank, dtype=torch.bool, device=ids.device)


_DIVERGE = ("every {who} would keep its own id map of the table's ids, admitting, evicting and resetting rows "
            "by what it sees, so the maps would diverge; shard it ed.row_wise() (each id owned by one rank) or "
            "ed.table_wise(rank=...)")
ID_KINDS[("row_wise", Dynamic)] = lambda kind, t: DynamicRowWise(space=t.ids, extra=t.ids.extra_rows)
ID_KINDS[("table_wise", Dynamic)] = lambda kind, t: DynamicTableWise(kind.rank, space=t.ids, extra=t.ids.extra_rows)
ID_KINDS[("column_wise", Dynamic)] = _DIVERGE.format(who="column rank (each holding some columns of every row)")
ID_KINDS[("data_parallel", Dynamic)] = _DIVERGE.format(who="copy (one per rank, each fed its own batches)")
