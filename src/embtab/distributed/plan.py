"""Sharding plans: which rank holds which part of each table, and why.

A :class:`ShardingPlan` maps each table name to a sharding kind (a :class:`Sharding`:
``row_wise()``, ``table_wise(rank=)``, ``column_wise(ranks=)``, ``data_parallel()``,
one file each). A kind says which :class:`Piece` of the weight each rank holds, where a
looked-up id goes (``routing``), how the pieces' pooled parts make the table's output
(``combine``), and what its row gradients need before the update (``reduce_row_grads``,
in the fused optimizer's row-gradient hook). :func:`plan` chooses kinds automatically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import Tensor

from .. import _checks
from ..configs import TableConfig
from ..ids.policies import IdStage
from ..ops.common import acc_dtype

__all__ = ["Piece", "Sharding", "ShardingPlan", "plan", "KINDS", "ID_KINDS", "AsIs"]

KINDS: dict[str, type["Sharding"]] = {}  # kind name -> class; each kind's file registers itself
# (kind name, id space class) -> what shards a table with ``ids=`` under that kind: a function
# (kind, table config) -> the kind's variant for it, or a string, the reason it cannot be done.
# Registered by the files of the id spaces' kinds (hashed.py, dynamic.py); see Sharding.for_table.
ID_KINDS: dict[tuple[str, type], "Callable[[Sharding, TableConfig], Sharding] | str"] = {}


@dataclass(frozen=True)
class Piece:
    """Rows ``[row0, row0 + rows)`` and columns ``[col0, col0 + cols)`` of a table's weight,
    held by ``ranks`` (one rank, or every rank of a replicated table)."""

    ranks: tuple[int, ...]
    row0: int
    rows: int
    col0: int
    cols: int

    @property
    def owner(self) -> int:
        """The rank that answers lookups for this piece (and writes it in a checkpoint)."""
        return self.ranks[0]


class Sharding:
    """Base of the sharding kinds.

    ``routing``: ``"local"`` (every rank holds the table; ids never leave the rank),
    ``"each"`` (every piece pools every id of the table: table-wise, column-wise) or
    ``"rows"`` (an id goes to the piece holding its row: row-wise).
    """

    kind: ClassVar[str]
    routing: ClassVar[str]

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        """The weight's pieces (non-empty, not overlapping, covering the weight)."""
        raise NotImplementedError

    def row_pieces(self, pieces: tuple[Piece, ...], num_rows: int) -> tuple[Piece, ...]:
        """The pieces of a per-row optimizer state ``(num_rows,)`` (``cols`` unused): by
        default the weight's row ranges."""
        return tuple(Piece(p.ranks, p.row0, p.rows, 0, 0) for p in pieces)

    def ranks(self, world_size: int) -> tuple[int, ...]:
        """Ranks the plan names for this table (checked against the world size)."""
        return ()

    def check(self, table: TableConfig, world_size: int) -> None:
        """Raise the error naming the table if this kind cannot shard it on ``world_size`` ranks."""
        for rank in self.ranks(world_size):
            _checks.check_rank(rank, world_size, f"ShardingPlan: table {table.name!r} ({self!r})")

    def piece_mode(self, mode: str) -> str:
        """The pooling a piece runs for a table pooled by ``mode``."""
        return mode

    def source_spec(self, spec: Any) -> Any:
        """The spec whose ids stage the looking-up rank applies before routing: the table's own
        (its out-of-vocabulary policy). A kind whose pieces keep state about ids (a dynamic
        table's id -> row map) returns one that leaves the ids as they are, and the piece's
        own stage (:meth:`stage`) maps them where they arrive."""
        return spec

    def stage(self, piece: Piece) -> "IdStage | None":
        """The ids stage of a piece's table: global rows -> its rows (None: they are the same)."""
        return None

    def route(self, rows: Tensor, pieces: tuple[Piece, ...]) -> Tensor:
        """``routing == "rows"``: the index of the piece holding each row (int64, rows' shape)."""
        raise NotImplementedError

    def combine(self, parts: list[Tensor], mode: str, kept: Tensor, counts: Tensor | None) -> Tensor:
        """The table's pooled output ``(B, D)`` from its pieces' parts ``(B, cols)``.

        ``kept`` (B,): ids that count in each bag; ``counts`` (pieces, B): of those, how
        many each piece pooled (``routing == "rows"``), else None.
        """
        return parts[0]

    def reduce_row_grads(self, table: Any, rows: Tensor, grads: Tensor, ctx: "ReduceContext") -> tuple[Tensor, Tensor]:
        """A hook step before the update: this rank's ``(rows, grads)`` of its piece (of the
        loss ``sum of the ranks' losses / W``) to what the update must use (identity by default)."""
        return rows, grads

    def reduces(self, optimizer_kind: str, world_size: int) -> bool:
        """Whether :meth:`reduce_row_grads` does anything for this optimizer (``"sgd"``, ...)."""
        return False

    def side_bytes(self, table: TableConfig, world_size: int, size: "Sizer") -> dict[int, int]:
        """Bytes each rank keeps for ``table`` beside its pieces of the weight and their
        optimizer state (:func:`table_bytes` counts those): none by default."""
        return {}

    def grad_norm_share(self, table: Any, rows: Tensor, grads: Tensor, ctx: "ReduceContext",
                        norm_type: float) -> Tensor:
        """This rank's share of the ``norm_type``-norm of the gradient the update will apply to
        the table, as :func:`norm_power` gives it: the ranks' shares summed (``inf``: their
        largest) are the whole table's (``embtab.optim.clip_grad_norm_``). Every rank calls it
        for every table, in one order. By default this rank's gradient of its own piece."""
        return norm_power(grads, norm_type)

    def replicas(self) -> bool:
        """Several ranks hold the same values (their checkpoint pieces are written once)."""
        return False

    # --- tables with ids= (embtab.ids.Hashed, embtab.ids.Dynamic): hashed.py, dynamic.py ----------

    #: The ids travel as the caller gave them (any int64 is an id: none is skipped or dropped
    #: where it is looked up); the pieces' own ids stages resolve them.
    raw: ClassVar[bool] = False
    #: The pieces look up the rows of each id unpooled (a bag of one row each) and the looking-up
    #: rank pools them (:meth:`split` routes them and assembles the output).
    unpooled: ClassVar[bool] = False

    def for_table(self, table: TableConfig) -> "Sharding":
        """The kind that shards ``table``: this one, or for a table with ``ids=`` the variant
        that :data:`ID_KINDS` registers for its id space; raises the error naming the table
        when its id space cannot be sharded this way."""
        if table.ids is None:
            return self
        entry = next((ID_KINDS[(self.kind, c)] for c in type(table.ids).__mro__ if (self.kind, c) in ID_KINDS), None)
        if entry is None or isinstance(entry, str):
            _checks.refuse_id_space_kind(table.name, repr(self), table.ids, entry)
        return entry(self, table)  # type: ignore[operator,misc]

    def piece_ids(self, table: TableConfig) -> Any:
        """The ``ids=`` a piece's table is built with (its own stateful stage), or None."""
        return None

    def counts_back(self, mode: str) -> bool:
        """A piece sends, with each bag's pooled part, how many ids it pooled (its ids stage
        may drop some that the looking-up rank counted)."""
        return False

    def sub_tables(self, table: Any) -> list[Any]:
        """Sharded tables a table's lookups read besides its own pieces (``ShardTable`` s)."""
        return []

    def build(self, table: Any, config: TableConfig, source: Any, make: Callable[..., Any]) -> None:
        """After the piece's table is made: make (``make(name, config, kind, source)``) and
        attach its sub-tables."""

    def split(self, table: Any, ids: Tensor, ends: Tensor, psw: Tensor | None, where: str) -> Any:
        """``unpooled``: a feature's ids -> what each piece of the table and of its sub-tables
        looks up, and how the rows that come back make the output (a ``sharded._Routed``)."""
        raise NotImplementedError

    def state_entries(self, table: Any) -> list[Any] | None:
        """The piece's ``(name, local, whole shape, pieces)`` state entries (``pieces`` None: a
        plain tensor, the same on every rank); None: its weight and optimizer state cut as the
        kind's pieces."""
        return None

    def load_state(self, table: Any, state_dict: dict[str, Any], prefix: str, error_msgs: list[str]) -> set[str] | None:
        """Turn ``state_dict`` (whole tensors, or this module's own ``ShardedTensor`` s) into this
        piece's own entries, in place; returns the keys the piece's table must not see (None:
        the kind's pieces are cut out of the weight and optimizer state)."""
        return None

    def canonical(self, table: Any, whole: dict[str, Tensor]) -> None:
        """Put a gathered whole state (entry name -> tensor) in the plain table's order, in place."""


@dataclass(frozen=True)
class AsIs(IdStage):
    """The ids as given: what the looking-up rank applies when the pieces resolve the ids."""

    name: ClassVar[str] = "as_is"

    def resolve(self, ids: Tensor, num_embeddings: int, *, where: str, counter: Tensor | None = None,
                shape: torch.Size | None = None) -> tuple[Tensor, bool]:
        return ids, False


@dataclass
class ReduceContext:
    """What :meth:`Sharding.reduce_row_grads` may use: the communicator and the update rule."""

    comm: Any  # embtab.distributed.comm.Comm
    hyper: Any  # embtab.ops.common.Hyper
    kind: str  # the fused optimizer's kind ("sgd", "rowwise_adagrad", ...)
    table_name: str


def norm_power(grads: Tensor, norm_type: float) -> Tensor:
    """``sum |g| ** norm_type`` over ``grads`` (``inf``: ``max |g|``), a 0-d tensor in the
    accumulation dtype: what adds up (or maxes) across pieces into a norm."""
    g = grads.to(acc_dtype(grads.dtype)).abs()
    if math.isinf(norm_type):
        return g.amax() if g.numel() else g.new_zeros(())
    return g.pow(norm_type).sum()


def add_norm_power(a: Tensor, b: Tensor, norm_type: float) -> Tensor:
    """Two :func:`norm_power` shares as one."""
    return torch.maximum(a, b) if math.isinf(norm_type) else a + b


def split_sizes(n: int, parts: int) -> list[int]:
    """Sizes of ``torch.tensor_split`` of ``n`` into ``parts``: the first ``n % parts`` one longer."""
    q, r = divmod(n, parts)
    return [q + 1 if i < r else q for i in range(parts)]


class ShardingPlan(Mapping):  # Mapping[str, Sharding]
    """Table name -> sharding kind, with the reason for each choice (``plan.reasons``).

    Example:
        >>> import embtab.distributed as ed
        >>> p = ed.ShardingPlan({"item": ed.row_wise(), "user": ed.table_wise(rank=1)})
        >>> p["user"]
        table_wise(rank=1)
    """

    def __init__(self, kinds: Mapping[str, Sharding], reasons: Mapping[str, str] | None = None) -> None:
        if not isinstance(kinds, Mapping):
            raise TypeError(f"ShardingPlan: expected a mapping table name -> kind (e.g. {{'item': ed.row_wise()}}), "
                            f"got {type(kinds).__name__}")
        for name, kind in kinds.items():
            if not isinstance(kind, Sharding):
                raise TypeError(
                    f"ShardingPlan: table {name!r} maps to {kind!r}; expected a sharding kind: ed.row_wise(), "
                    f"ed.table_wise(rank=...), ed.column_wise(ranks=[...]) or ed.data_parallel()"
                )
        self._kinds = dict(kinds)
        self.reasons: dict[str, str] = dict(reasons or {})

    def __getitem__(self, name: str) -> Sharding:
        return self._kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def check(self, tables: Sequence[TableConfig], world_size: int, *, memory_per_rank: int | None = None,
              optimizer: Any = None, dtype: torch.dtype = torch.float32, unknown_ok: bool = False) -> None:
        """Raise the error naming the table (and rank) if this plan cannot shard ``tables``
        on ``world_size`` ranks (within ``memory_per_rank`` bytes, if given)."""
        names = [t.name for t in tables]
        _checks.check_plan_tables(names, list(self._kinds), unknown_ok)
        for t in tables:
            self._kinds[t.name].for_table(t).check(t, world_size)
        if memory_per_rank is not None:
            used = [0] * world_size
            for t in tables:
                for rank, nbytes in table_bytes(t, self._kinds[t.name], world_size, optimizer, dtype).items():
                    used[rank] += nbytes
                    _checks.check_fits(t.name, rank, nbytes, used[rank], memory_per_rank)

    def explain(self) -> str:
        """One line per table: its kind and why."""
        return "\n".join(f"{name}: {kind!r}" + (f": {self.reasons[name]}" if name in self.reasons else "")
                         for name, kind in self._kinds.items())

    def __repr__(self) -> str:
        return f"ShardingPlan({{{', '.join(f'{n!r}: {k!r}' for n, k in self._kinds.items())}}})"


def state_bytes_per_row(dim: int, optimizer: Any, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes per weight element, bytes per row of per-row state) with ``optimizer``'s state."""
    esize = torch.empty((), dtype=dtype).element_size()
    acc = torch.empty((), dtype=acc_dtype(dtype)).element_size()
    per_elem, per_row = esize, 0
    if optimizer is not None:
        for f in optimizer.state_layout().values():
            size = 8 if f.integer else acc
            if f.per_element:
                per_elem += size
            else:
                per_row += size
    return per_elem, per_row


@dataclass(frozen=True)
class Sizer:
    """How :meth:`Sharding.side_bytes` counts: the optimizer and dtype of the tables."""

    world_size: int
    optimizer: Any
    dtype: torch.dtype

    def rows(self, n: int, dim: int) -> int:
        """Bytes of ``n`` rows of ``dim`` values with their optimizer state."""
        per_elem, per_row = state_bytes_per_row(dim, self.optimizer, self.dtype)
        return n * (dim * per_elem + per_row)

    def table(self, table: TableConfig, kind: Sharding) -> dict[int, int]:
        return table_bytes(table, kind, self.world_size, self.optimizer, self.dtype)


def table_bytes(table: TableConfig, kind: Sharding, world_size: int, optimizer: Any = None,
                dtype: torch.dtype = torch.float32) -> dict[int, int]:
    """Bytes each rank holds of ``table`` under ``kind``: weight, optimizer state, and what
    the kind keeps beside them (a hashed table's importance weights, a dynamic table's
    fallback rows and id map: :meth:`Sharding.side_bytes`)."""
    per_elem, per_row = state_bytes_per_row(table.embedding_dim, optimizer, dtype)
    out: dict[int, int] = {}
    kind = kind.for_table(table)
    pieces = kind.pieces(table.num_rows, table.embedding_dim, world_size)
    for p in pieces:
        for r in p.ranks:
            out[r] = out.get(r, 0) + p.rows * p.cols * per_elem
    for p in kind.row_pieces(pieces, table.num_rows):
        for r in p.ranks:
            out[r] = out.get(r, 0) + p.rows * per_row
    for r, n in kind.side_bytes(table, world_size, Sizer(world_size, optimizer, dtype)).items():
        out[r] = out.get(r, 0) + n
    return out


def _mib(n: float) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.1f} KiB"
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def plan(tables: Sequence[TableConfig], world_size: int, memory_per_rank: int | None = None, *,
         optimizer: Any = None, dtype: torch.dtype = torch.float32, lookups: Mapping[str, float] | None = None,
         replicate_below: int = 2**17) -> ShardingPlan:
    """A plan for ``tables`` on ``world_size`` ranks that balances bytes and lookups.

    Args:
        tables: the collection's :class:`embtab.TableConfig` s.
        world_size: the number of ranks.
        memory_per_rank: bytes each rank may spend on tables and optimizer state (None: no limit).
        optimizer: the fused optimizer spec the collection trains with (its per-row state counts).
        dtype: of the weights.
        lookups: ids each table looks up per sample (default: one per feature of the table).
        replicate_below: tables smaller than this many bytes are copied to every rank
            (default 128 KiB: a data-parallel table's all-reduce sends about twice its size
            a step; routing a table-wise one's ids and vectors sends about
            ``B (8 (L + 1) + 2 s D)`` bytes, some 260 KB for 256 bags of one id at dim 128).

    The rules, in order (``plan.reasons`` says which one placed each table):

    0. A table that cannot be copied to every rank (``ids=embtab.ids.Dynamic``: each rank's
       piece keeps its own id map) is ``row_wise`` when every rank gets a share of its
       capacity: each id is owned by the rank ``owner_of(id, W)``; else it goes to rule 3.
    1. A table smaller than ``replicate_below`` is ``data_parallel``: a copy on every rank
       costs little, its ids never leave the rank, and its gradient is one all-reduce.
    2. A table that does not fit one rank, or that is larger than a rank's fair share of
       all tables (the total over ``world_size``), is ``row_wise``: each rank holds
       ``1/W`` of its rows and answers ``1/W`` of its lookups.
    3. The others are ``table_wise``, largest first, each on the rank with the least load
       so far, the load being the rank's share of all bytes plus its share of all lookups.

    Raises ``ValueError`` naming the table and the rank when a table's shard does not fit.
    """
    from .data_parallel import data_parallel
    from .row_wise import row_wise
    from .table_wise import table_wise

    where = "ed.plan"
    tables = list(tables)
    world_size = _checks.check_positive_int(world_size, "world_size", where)
    if memory_per_rank is not None:
        memory_per_rank = _checks.check_positive_int(memory_per_rank, "memory_per_rank", where)
    budget = memory_per_rank if memory_per_rank is not None else float("inf")
    look = {t.name: float(len(t.feature_names)) for t in tables}
    look.update(lookups or {})
    size = {t.name: sum(table_bytes(t, table_wise(rank=0), 1, optimizer, dtype).values()) for t in tables}
    total_bytes = sum(size.values()) or 1
    total_look = sum(look[t.name] for t in tables) or 1.0
    kinds: dict[str, Sharding] = {}
    reasons: dict[str, str] = {}
    used = [0.0] * world_size
    load = [0.0] * world_size

    def place(t: TableConfig, kind: Sharding) -> None:
        for rank, nbytes in table_bytes(t, kind, world_size, optimizer, dtype).items():
            used[rank] += nbytes
            if memory_per_rank is not None:
                _checks.check_fits(t.name, rank, nbytes, int(used[rank]), memory_per_rank)

    def works(kind: Sharding, t: TableConfig) -> bool:
        try:
            kind.for_table(t).check(t, world_size)
        except (ValueError, TypeError):
            return False
        return True

    for t in tables:
        if t.ids is not None and not works(data_parallel(), t) and world_size > 1 and works(row_wise(), t):
            kinds[t.name] = row_wise()
            reasons[t.name] = (f"ids={type(t.ids).__name__}(...) keeps an id map, which copies would not share: "
                               f"split by a hash of the id, each rank owning the ids x with owner_of(x, {world_size}) "
                               f"== rank and 1/{world_size} of the capacity")
            place(t, kinds[t.name])
    for t in tables:
        if t.name in kinds or not works(data_parallel(), t):
            continue
        if size[t.name] < replicate_below and size[t.name] * 1.0 <= budget / 4:
            kinds[t.name] = data_parallel()
            reasons[t.name] = (f"{_mib(size[t.name])}, below replicate_below={_mib(replicate_below)}: a copy on every "
                               f"rank; its ids stay local and its gradient is one all-reduce of rows x (dim + 1)")
            place(t, kinds[t.name])
    fair = total_bytes / world_size
    for t in tables:
        if t.name in kinds or not works(row_wise(), t):
            continue
        if size[t.name] > budget or (world_size > 1 and size[t.name] > fair):
            kinds[t.name] = row_wise()
            why = (f"does not fit one rank ({_mib(size[t.name])} > memory_per_rank {_mib(budget)})"
                   if size[t.name] > budget else
                   f"{_mib(size[t.name])} is more than a rank's fair share ({_mib(fair)} = all tables / {world_size})")
            reasons[t.name] = (f"{why}: split by rows, about {_mib(size[t.name] / world_size)} and 1/{world_size} "
                               f"of its lookups per rank")
            place(t, kinds[t.name])
    rest = sorted((t for t in tables if t.name not in kinds), key=lambda t: (-size[t.name], -look[t.name]))
    for t in rest:
        cost = [load[r] for r in range(world_size)]
        fits = [r for r in range(world_size) if used[r] + size[t.name] <= budget]
        candidates = fits or list(range(world_size))
        rank = min(candidates, key=lambda r: (cost[r], used[r], r))
        kinds[t.name] = table_wise(rank=rank)
        reasons[t.name] = (f"{_mib(size[t.name])}, {look[t.name]:g} lookup(s) per sample: whole on rank {rank}, the "
                           f"least loaded so far (holding {_mib(used[rank])}; load {load[rank]:.2f} = its share of all "
                           f"bytes + its share of all lookups)")
        load[rank] += size[t.name] / total_bytes + look[t.name] / total_look
        place(t, kinds[t.name])
    ordered = {t.name: kinds[t.name] for t in tables}
    return ShardingPlan(ordered, reasons)
