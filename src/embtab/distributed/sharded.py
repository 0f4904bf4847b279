"""``ShardedEmbeddingBagCollection``: an ``EmbeddingBagCollection`` whose tables are cut
over the ranks of a ``torch.distributed`` job.

Every rank calls it with its own batch (any size, 0 included) and gets the pooled
vectors of that batch, as the plain collection would give them. One step:

1. Each rank checks its batch and resolves its ids with each table's own ids stage
   (the out-of-vocabulary policy), drops skipped and padding ids, and routes the rest
   to the pieces that pool them (the table's kind: ``plan.py`` and one file per kind).
2. ``all_gather`` of a small header: each rank's status, batch size and how many ids it
   sends to each piece. An error on one rank (a bad id, different features) is raised
   on every rank, naming the rank, instead of leaving the others waiting.
3. ``all_to_all_single`` of the ids (and per-sample weights); each rank pools, for the
   bags of every rank, the ids its pieces received, with the ordinary lookup pipeline
   (``prepare_bags`` + ``pool``, one autograd node; a row-wise piece's ids stage maps
   global rows to its own).
4. ``all_to_all_single`` of the pooled parts back to the ranks whose bags they are, and
   each kind combines its parts (column-wise: concatenated; row-wise: summed, or maxed).
   Each part ends with its rank's status: a piece that failed (a dynamic table's user
   ``init``, say) sends zeros and 1, and every rank raises its error after the exchange
   (one more read of the device per step, on a GPU) instead of waiting for it.

Tables with ``ids=`` plug in through their kinds (``hashed.py``, ``dynamic.py``): a dynamic
table's ids travel raw to the rank that owns them, whose piece maps them with its own ids
stage (one step over all the ids it received, per forward) and pools them; a hashed
table's ids are hashed where they are looked up, the pieces look up each row unpooled and
the looking-up rank pools the ids' vectors (``Sharding.unpooled``).

Backward runs the exchanges the other way. Each rank's fused optimizer updates its own
pieces: the gradients flowing back into the pooling are divided by the world size (so
that training equals one process on the concatenated batch with loss
``sum of the ranks' losses / W``, DDP's mean), and the kinds that need more reduce the
row gradients in the optimizer's row-gradient hook (data-parallel: all-reduced;
column-wise ``RowWiseAdagrad``: the row accumulators completed over the columns); the
other tables keep the optimizer's one-pass update.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace as dc_replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.nn import Module

from .. import _checks
from ..configs import TableConfig
from ..nn.collection import EmbeddingBagCollection, PooledEmbeddings, TableDict
from ..nn.embedding_bag import EmbeddingBag
from ..ops import reference, registry, update_reference
from ..ops.common import acc_dtype, bag_of
from ..optim.optimizer import FusedOptimizer, RowGrads
from ..tables.pipeline import Feature, backend_of, pool, prepare_bags
from . import checkpoint
from .comm import Comm, exchange, new_group
from .plan import Piece, ReduceContext, Sharding, ShardingPlan, add_norm_power

__all__ = ["ShardedEmbeddingBagCollection", "ShardTable", "shard"]

_WHERE = "ShardedEmbeddingBagCollection"
# Ids are resolved where they are looked up from, by the reference lookup's rules (it
# understands SKIP, and it checks nothing itself, so the ids stage checks everything).
_RESOLVE = registry.Backend(reference, update_reference)
_MASK_BITS = 62
# Exception classes an error on one rank is raised as on the others (the first that fits).
_ERRORS: tuple[type[BaseException], ...] = (
    _checks.IdOutOfRangeError, _checks.OffsetsError, _checks.IdsDtypeError, _checks.PerSampleWeightsDtypeError,
    _checks.UnsupportedArgumentError, KeyError, IndexError, TypeError, ValueError, RuntimeError,
)


def _told(error: BaseException | None) -> tuple[int, bytes]:
    """What a rank tells the others of its error: (its class's index in ``_ERRORS``, its message)."""
    if error is None:
        return 0, b""
    code = next(i for i, c in enumerate(_ERRORS) if isinstance(error, c) or c is RuntimeError)
    return code, str(error).encode("utf-8", "replace")[:4000]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def _scale_grad(x: Tensor | None, scale: float) -> Tensor | None:
    return _ScaleGrad.apply(x, scale) if x is not None and x.requires_grad and scale != 1.0 else x


_PieceAt = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (offsets, sizes, ranks holding it)


class ShardTable(EmbeddingBag):
    """This rank's piece of one table: an ``EmbeddingBag`` of the piece's rows and columns
    (its ids stage maps the table's rows to the piece's), with what it is a piece of.

    A rank that holds nothing of the table keeps an empty one (0 rows), so that every
    rank has the same modules and keys. ``state_dict`` gives, under the plain table's
    keys, ``ShardedTensor`` s of the whole table; ``load_state_dict`` takes those or whole
    tensors (a plain collection's ``state_dict``).
    """

    def __init__(self, name: str, config: TableConfig, kind: Sharding, pieces: tuple[Piece, ...], comm: Comm,
                 global_spec: Any, *, weight: Tensor | None, device: Any, dtype: torch.dtype | None,
                 backend: str) -> None:
        me = comm.rank
        mine = [p for p in pieces if me in p.ranks]
        self_piece = mine[0] if mine else None
        dim = config.embedding_dim
        if kind.routing == "local":  # the whole table, with its own ids stage and padding
            super().__init__(config.num_embeddings, dim, mode=config.pooling, padding_idx=config.padding_idx,
                             _weight=weight, device=device, dtype=dtype, oov=config.oov,
                             num_oov_buckets=config.num_oov_buckets, init=config.init, backend=backend,
                             ids=config.ids)
        else:
            rows, cols = (self_piece.rows, self_piece.cols) if self_piece else (0, dim)
            # A piece with an id space of its own (a dynamic table's) maps the ids it receives itself.
            space = kind.piece_ids(config) if self_piece is not None else None
            super().__init__(rows, cols, mode=kind.piece_mode(config.pooling), _weight=weight, device=device,
                             dtype=dtype, init=config.init, backend=backend, ids=space)
            stage = kind.stage(self_piece) if self_piece is not None else None
            if stage is not None:
                self.spec = dc_replace(self.spec, ids=stage)
        self.table_name, self.kind, self.pieces, self.piece = name, kind, pieces, self_piece
        self.row_pieces = kind.row_pieces(pieces, config.num_rows)
        self.full_shape = (config.num_rows, dim)
        self.full_dim = dim
        self.global_spec = global_spec  # the unsharded table's spec: its ids stage and padding
        object.__setattr__(self, "comm", comm)  # not a module attribute (no state, not copied into children)
        # A piece's ids stage with state (a dynamic table's) writes plain per-rank entries after
        # this module's own: put this module's back over them.
        self.__dict__["_written"] = {}
        self.register_state_dict_post_hook(_rewrite_entries)

    # --- state ---------------------------------------------------------------------------

    def entries(self) -> list[tuple[str, Tensor, tuple[int, ...], list[_PieceAt] | None]]:
        """``(name, local tensor, whole shape, pieces)`` of the weight and each optimizer state
        (and what the kind adds; ``pieces`` None: a plain tensor, the same on every rank)."""
        custom = self.kind.state_entries(self)
        if custom is not None:
            return custom  # type: ignore[no-any-return]
        weight_pieces = [((p.row0, p.col0), (p.rows, p.cols), p.ranks) for p in self.pieces]
        row_pieces = [((p.row0,), (p.rows,), p.ranks) for p in self.row_pieces]
        out = [("weight", self.weight, self.full_shape, weight_pieces)]
        if self.optimizer is not None:
            for name, f in self.optimizer.spec.state_layout().items():
                local = self._buffers["optim_" + name]
                if f.per_element:
                    out.append(("optim_" + name, local, self.full_shape, weight_pieces))
                else:
                    out.append(("optim_" + name, local, self.full_shape[:1], row_pieces))
        return out  # type: ignore[return-value]

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        written = self.__dict__["_written"]
        written.clear()
        for name, local, shape, pieces in self.entries():
            value = local if pieces is None else checkpoint.to_sharded_tensor(local, shape, pieces, self.comm.rank,
                                                                              self.comm)
            destination[prefix + name] = written[prefix + name] = value

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        error_msgs = args[-1] if args else kwargs.get("error_msgs", [])
        hidden = self.kind.load_state(self, state_dict, prefix, error_msgs)
        if hidden is not None:  # the kind made the piece's own entries (in place: the ids stage reads them too)
            local_state = {k: v for k, v in state_dict.items() if k not in hidden} if hidden else state_dict
            super()._load_from_state_dict(local_state, prefix, *args, **kwargs)
            return
        local_state = dict(state_dict)
        me = self.comm.rank
        for name, local, shape, pieces in self.entries():
            key = prefix + name
            if key not in state_dict:
                continue
            mine = next(((o, s) for o, s, ranks in pieces if me in ranks), None)
            part = checkpoint.local_part(state_dict[key], local, shape, mine, key)
            if isinstance(part, str):
                error_msgs.append(part)
                local_state.pop(key)
            else:
                local_state[key] = part
        super()._load_from_state_dict(local_state, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        piece = (f"rows {self.piece.row0}..{self.piece.row0 + self.piece.rows - 1}, "
                 f"cols {self.piece.col0}..{self.piece.col0 + self.piece.cols - 1}" if self.piece else "no piece here")
        return f"{self.table_name!r}, {self.kind!r}, {piece} of {self.full_shape}"


def _rewrite_entries(module: ShardTable, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    written = module.__dict__["_written"]
    state_dict.update(written)
    written.clear()


@dataclass(frozen=True)
class _Unit:
    """One piece's share of one feature: the ids of a feature that one piece pools (or, for an
    ``unpooled`` kind, looks up a row of each)."""

    feature: int  # index in feature_names
    table: str
    piece: int  # index in the feature's parts (the table's pieces, then its sub-tables')
    owner: int
    cols: int  # columns of the part it sends back (a count column included, see Sharding.counts_back)
    module: Any = None  # the ShardTable holding the piece
    pooled: bool = True  # bags of the looking-up rank's batch (else one row per id, no lengths sent)
    counts: bool = False  # the part ends with a column of each bag's count of pooled ids


class _Routed:
    """A feature's bags on the rank that looks them up: per part, the bag lengths (None for
    unpooled parts), the ids and the per-sample weights it sends there; ``assemble``, for an
    unpooled kind, makes the feature's output of the parts that come back."""

    def __init__(self, kept: Tensor | None, counts: Tensor | None,
                 parts: list[tuple[Tensor | None, Tensor, Tensor | None]],
                 assemble: Callable[[list[Tensor]], Tensor] | None = None) -> None:
        self.kept, self.counts, self.parts, self.assemble = kept, counts, parts, assemble


class ShardedEmbeddingBagCollection(Module):
    """An :class:`embtab.EmbeddingBagCollection` sharded over the ranks of a process group.

    Built by :func:`shard` (``ed.shard(ebc, plan)``); same input and output
    (:class:`~embtab.PooledEmbeddings`) as the collection, for each rank's own batch.
    Every rank must call it at each step (a rank with nothing to look up passes empty
    bags), with the same features, and, when training, call ``backward`` on a loss that
    depends on its output (as under DDP).

    Attributes:
        optimizer: this rank's fused optimizer (its pieces), with the collection's
            hyperparameters; set the learning rate on every rank alike.
        plan: the :class:`ShardingPlan`.
        comm_stats: bytes this rank sent, by kind of message (reset it at each step).
    """

    def __init__(self, ebc: EmbeddingBagCollection, plan: ShardingPlan, process_group: Any = None, *,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        if not isinstance(ebc, EmbeddingBagCollection):
            raise TypeError(f"ed.shard: expected an embtab.EmbeddingBagCollection, got {type(ebc).__name__}")
        if not isinstance(plan, ShardingPlan):
            plan = ShardingPlan(plan)
        comm = Comm(new_group(process_group))
        object.__setattr__(self, "comm", comm)
        world, me = comm.world_size, comm.rank
        plan.check(ebc.tables, world, unknown_ok=True)
        self.plan = plan
        self._tables = ebc.tables
        self.feature_names = ebc.feature_names
        self._feature_table = dict(ebc._feature_table)
        self._dims = ebc._dims
        self._wheres = {f: f"{_WHERE} feature {f!r} (table {self._feature_table[f]!r}) on rank {me}"
                        for f in self.feature_names}
        bags = {t.name: ebc.embedding_bags[t.name] for t in ebc.tables}
        first = bags[ebc.tables[0].name].weight
        on_meta = first.device.type == "meta"
        if device is None:
            device = _default_device(comm) if on_meta else first.device
        device = torch.device(device)
        dtype = first.dtype
        spec = ebc.optimizer.spec if ebc.optimizer is not None else None
        modules = {}
        copies: list[tuple[ShardTable, Module]] = []  # (piece table, source): optimizer state cut from the source's
        loads: list[tuple[Module, Module]] = []  # (module, source): state loaded from the source's state_dict

        def make(name: str, config: TableConfig, kind: Sharding, source: Module) -> ShardTable:
            """This rank's piece of ``source`` (a table of ``config``) under ``kind``."""
            pieces = kind.pieces(config.num_rows, config.embedding_dim, world)
            mine = next((p for p in pieces if me in p.ranks), None)
            space = kind.piece_ids(config)
            weight = None
            if mine is None:
                weight = torch.empty(0, config.embedding_dim, dtype=dtype, device=device)
            elif space is not None and not on_meta:  # its rows are its own ids stage's: loaded below
                weight = torch.zeros(mine.rows + space.extra_rows, mine.cols, dtype=dtype, device=device)
            elif not on_meta:
                weight = source.weight.detach()[mine.row0:mine.row0 + mine.rows, mine.col0:mine.col0 + mine.cols]
                weight = weight.to(device=device, copy=True)
            table = ShardTable(name, config, kind, pieces, comm, source.spec, weight=weight, device=device,
                               dtype=dtype, backend=source.spec.backend)
            if space is not None and mine is not None:
                table.ids.use_fans_of(config.num_rows)  # fresh rows drawn as the whole table draws them
            if space is not None or kind.routing == "local" and table.spec.ids.tables():
                loads.append((table, source))  # (a local table's own ids stage's tables too: Hashed importance)
            else:
                copies.append((table, source))
            return table

        for t in ebc.tables:
            kind = plan[t.name].for_table(t)
            modules[t.name] = make(t.name, t, kind, bags[t.name])
            kind.build(modules[t.name], t, bags[t.name], make)
        self.embedding_bags = TableDict(modules)
        # Every table a fused optimizer trains: (table name, module, its kind): the tables' pieces,
        # their sub-tables' (Hashed importance weights), and the tables of a local table's ids stage.
        self._trained: list[tuple[str, Module, Sharding]] = []
        for t in ebc.tables:
            table = modules[t.name]
            self._trained.append((t.name, table, table.kind))
            self._trained += [(t.name, sub, sub.kind) for sub in table.kind.sub_tables(table)]
            self._trained += [(t.name, m, table.kind) for m in table.spec.ids.tables()]
        self.optimizer: FusedOptimizer | None = None
        if spec is None:
            for _, m, _ in self._trained:
                m.weight.requires_grad_(False)  # sharded training goes through a fused optimizer
        else:
            tables = [m for _, m, _ in self._trained]
            for name, m, _ in self._trained:
                m._add_optimizer_state(spec, f"{_WHERE} table {name!r}")
            self.optimizer = FusedOptimizer(tables, spec)
            for m in tables:
                m._use_optimizer(self.optimizer)
            group = ebc.optimizer.param_groups[0]  # type: ignore[union-attr]
            self.optimizer.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
            if not on_meta:
                self._copy_state(copies)
            # Only the tables whose row gradients need more than the mean over the ranks (which the
            # backward applies) go through the hook; the others keep the one-pass update.
            # Registered on every rank, for no table if need be: it also says that this
            # optimizer's ranks are kept in step.
            reduce = [m for _, m, k in self._trained if self._reduces(m, k, spec.kind)]
            self.optimizer.register_row_grad_hook(self._reduce_row_grads, tables=reduce)
            self.optimizer.set_grad_norm(self._grad_norm)
        if not on_meta:
            with torch.no_grad():
                for module, source in loads:
                    module.load_state_dict(source.state_dict())
        for t in ebc.tables:  # the groups of the column ranks: made now, on every rank, in one order
            kind = modules[t.name].kind
            if kind.routing == "each" and len(kind.ranks(world)) > 1:
                comm.subgroup(kind.ranks(world))
        # The tables train on (sum of the ranks' losses) / W: their gradients, and only theirs,
        # are divided by W on the way back into the pooling (per-sample weights get theirs unscaled).
        self._grad_scale = 1.0 / world if self.optimizer is not None else 1.0
        self._layout(world, me)

    def _reduces(self, module: Module, kind: Sharding, optimizer_kind: str) -> bool:
        """``module`` (a piece, or a local table's stage table) goes through the row-gradient hook."""
        return getattr(module, "piece", True) is not None and kind.reduces(optimizer_kind, self.comm.world_size)

    def _copy_state(self, copies: list[tuple[ShardTable, Module]]) -> None:
        with torch.no_grad():
            for table, source in copies:
                for name, local, shape, pieces in table.entries()[1:]:
                    full = getattr(source, name)
                    mine = next(((o, s) for o, s, r in pieces if self.comm.rank in r), None)
                    part = checkpoint.local_part(full, local, shape, mine, name)
                    local.copy_(part)  # type: ignore[arg-type]

    def _layout(self, world: int, me: int) -> None:
        """Units (a feature's share of a piece), who owns them, and where their columns are."""
        units: list[_Unit] = []
        self._units_of_feature: list[list[int]] = []
        self._local_features: list[int] = []
        for fi, f in enumerate(self.feature_names):
            table = self.embedding_bags[self._feature_table[f]]
            ids = []
            if table.kind.routing == "local":
                self._local_features.append(fi)
            else:
                counts = table.kind.counts_back(table.global_spec.mode)
                parts = [(table, p, counts) for p in table.pieces]
                parts += [(sub, p, False) for sub in table.kind.sub_tables(table) for p in sub.pieces]
                for pi, (module, p, c) in enumerate(parts):
                    ids.append(len(units))
                    units.append(_Unit(fi, table.table_name, pi, p.owner, p.cols + int(c), module,
                                       not table.kind.unpooled, c))
            self._units_of_feature.append(ids)
        self._units = units
        self._units_of = [[u for u, unit in enumerate(units) if unit.owner == d] for d in range(world)]
        # Columns of the pooled units of each owner (what it sends back for each bag of a rank), and
        # its unpooled units (what it sends back for each id).
        self._cols_of = [sum(units[u].cols for u in self._units_of[d] if units[u].pooled) for d in range(world)]
        self._loose_of = [[u for u in self._units_of[d] if not units[u].pooled] for d in range(world)]
        self._mask_words = -(-len(self.feature_names) // _MASK_BITS) or 1
        self._table_index = {t.name: i for i, t in enumerate(self._tables)}
        # Empty (0, D) tensors of each table's dtype and device: what the input checks of the
        # rank that looks ids up compare with (buffers, so that .to() moves them).
        for i, t in enumerate(self._tables):
            weight = self.embedding_bags[t.name].weight
            self.register_buffer(f"_standin{i}", weight.new_empty(0, t.embedding_dim), persistent=False)

    # --- introspection ------------------------------------------------------------------

    @property
    def tables(self) -> tuple[TableConfig, ...]:
        return self._tables

    @property
    def output_dim(self) -> int:
        return sum(self._dims)

    @property
    def comm_stats(self) -> Any:
        return self.comm.stats

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    @property
    def rank(self) -> int:
        return self.comm.rank

    concat = EmbeddingBagCollection.concat
    _inputs = EmbeddingBagCollection._inputs
    _check_keys = EmbeddingBagCollection._check_keys
    _kjt_inputs = EmbeddingBagCollection._kjt_inputs

    def extra_repr(self) -> str:
        return f"rank {self.comm.rank} of {self.comm.world_size}, plan={self.plan!r}"

    def step_bytes(self, batch_sizes: Sequence[int], ids: Sequence[Mapping[str, Sequence[int]]], *,
                   weights: Sequence[str] = (), weights_grad: bool = False, train: bool = True,
                   touched: Mapping[str, int] | None = None) -> dict[str, float]:
        """What this rank sends in one step (forward and backward), by message, from the formula.

        Args:
            batch_sizes: ``B_s`` of every rank ``s``.
            ids: ``ids[s][feature][p]``: the ids rank ``s`` sends to piece ``p`` of the feature's
                table (its ids that are not skipped or padding: every one for table- and column-wise,
                those of the piece's rows for row-wise); data-parallel features are left out.
            weights: features looked up with per-sample weights; ``weights_grad``: some require grad.
            train: a backward pass follows (with a fused optimizer).
            touched: distinct rows of each column-wise table the step touched (``RowWiseAdagrad``).

        With ``W`` ranks, ``s`` bytes per element (the weights') and ``a`` per accumulator
        element, this rank ``r`` sends, the sums over the units ``u`` (a feature's share of
        a piece) of each owner ``d``, ``c_u`` the columns of a unit's part and ``m_{q,u}`` the
        parts it sends rank ``q`` (``B_q`` bags; for an unpooled unit, a hashed table's,
        ``n_{q,u}`` rows)::

            header   8 K (W - 1)            K = 6 + ceil(F / 62) + F + U header entries
            ids      8 sum_{d != r} sum_{u of d} (B_r [u pooled] + n_{r,u})
            pooled   s (sum_{u of r} c_u sum_{q != r} m_{q,u} + W - 1)   (+ W - 1: this rank's status)
            grads    s (sum_{d != r} sum_{u of d} c_u m_{r,u} + W - 1)
            weights  s sum_{d != r} sum_{u of d, weighted} n_{r,u}   (and their gradients back:
                     s sum_{q != r} sum_{u of r, weighted} n_{q,u})
            replicated grads      2 (W - 1) / W a rows (D + 1), each data-parallel table (and its
                                  Hashed importance weights: rows (k + 1))
            fallback grads        2 (W - 1) / W a E (D + 1), each row-wise dynamic table with E fallback rows
            row-wise Adagrad sums 2 (k - 1) / k a U_t, each column-wise table on k > 1 ranks r is one of
        """
        world, me = self.comm.world_size, self.comm.rank
        esize = self._standin(0).element_size()
        acc = torch.empty((), dtype=acc_dtype(self._standin(0).dtype)).element_size()
        n = [[ids[s][self.feature_names[u.feature]][u.piece] for u in self._units] for s in range(world)]
        weighted = {self.feature_names.index(f) for f in weights}
        units, owner = range(len(self._units)), [u.owner for u in self._units]
        k = 6 + self._mask_words + len(self.feature_names) + len(self._units)
        out = {"header": 8.0 * k * (world - 1)}

        def m(q: int, u: int) -> int:
            return batch_sizes[q] if self._units[u].pooled else n[q][u]

        if self._units:  # (no exchange at all when every table is data-parallel)
            out["ids"] = 8.0 * sum(batch_sizes[me] * self._units[u].pooled + n[me][u] for u in units if owner[u] != me)
            out["pooled"] = float(esize * (sum(self._units[u].cols * m(q, u) for u in self._units_of[me]
                                               for q in range(world) if q != me) + world - 1))
        if any(self._units[u].feature in weighted for u in units):
            out["per-sample weights"] = float(esize * sum(n[me][u] for u in units
                                                          if owner[u] != me and self._units[u].feature in weighted))
        if not train:
            return out
        if self._units:
            out["grads"] = float(esize * (sum(self._units[u].cols * m(me, u) for u in units if owner[u] != me)
                                          + world - 1))
        if weights_grad and "per-sample weights" in out:
            back = [u for u in units if owner[u] == me and self._units[u].feature in weighted]
            out["per-sample weight grads"] = float(esize * sum(n[q][u] for q in range(world) if q != me for u in back))
        rowwise = self.optimizer is not None and self.optimizer.spec.kind == "rowwise_adagrad"
        for t in self._tables:
            kind = self.embedding_bags[t.name].kind
            if kind.routing == "local" and world > 1:
                shapes = [m.weight.shape for m in self.embedding_bags[t.name].spec.ids.tables()]  # Hashed importance
                out["replicated grads"] = out.get("replicated grads", 0.0) + 2 * (world - 1) / world * acc * sum(
                    r * (d + 1) for r, d in [(t.num_rows, t.embedding_dim), *shapes])
            elif kind.raw and t.ids.extra_rows and self.optimizer is not None and self._reduces(
                    self.embedding_bags[t.name], kind, self.optimizer.spec.kind):
                out["fallback grads"] = out.get("fallback grads", 0.0) + (  # a dynamic table's copies of them
                    2 * (world - 1) / world * acc * t.ids.extra_rows * (t.embedding_dim + 1))
            elif rowwise and kind.routing == "each" and me in kind.ranks(world) and len(kind.ranks(world)) > 1:
                size = len(kind.ranks(world))
                out["row-wise Adagrad sums"] = out.get("row-wise Adagrad sums", 0.0) + (
                    2 * (size - 1) / size * acc * (touched or {}).get(t.name, 0))
        return out

    # --- forward -------------------------------------------------------------------------

    def forward(self, features: Any) -> PooledEmbeddings:
        comm = self.comm
        world, me = comm.world_size, comm.rank
        grad = torch.is_grad_enabled()
        mask, unknown = self._feature_mask(features)
        try:
            batch, local, routed = self._prepare(features)
            error: BaseException | None = None
        except Exception as exc:  # raised below, on every rank, after the others have heard of it
            batch, local, routed, error = 0, [], {}, exc
        psw_flags = [0] * len(self.feature_names)
        for fi, r in routed.items():
            psw = r.parts[0][2] if r.parts else None
            if psw is not None:
                psw_flags[fi] = 2 if psw.requires_grad else 1
        code, message = _told(error)
        counts = [0] * len(self._units)
        for fi, r in routed.items():
            for u in self._units_of_feature[fi]:
                counts[u] = r.parts[self._units[u].piece][1].numel()
        header = torch.tensor([int(error is not None), code, len(message), int(grad), batch, unknown, *mask,
                               *psw_flags, *counts], dtype=torch.int64, device=self._device())
        rows = comm.all_gather(header, "header").tolist()  # the step's one read of the device
        self._raise_if_refused(rows, message, error, mask)
        m = 6 + self._mask_words
        sizes = [r[4] for r in rows]
        psw_any = [max(r[m + fi] for r in rows) for fi in range(len(self.feature_names))]
        n = [r[m + len(self.feature_names):] for r in rows]  # n[s][u]: ids rank s sends to unit u
        anchor = torch.empty(0, device=self._device(), requires_grad=True) if grad else None

        # ids out, pooled parts back (not at all when every table is data-parallel)
        unit_parts: dict[int, Tensor] = {}
        if self._units:
            units = self._units
            mine = self._units_of[me]
            send, send_splits = [], [0] * world
            for d in range(world):
                for u in self._units_of[d]:
                    lengths, ids, _ = routed[units[u].feature].parts[units[u].piece]
                    if units[u].pooled:  # (an unpooled unit's bags are its ids, one each: no lengths)
                        send.append(lengths.to(torch.int64))  # type: ignore[union-attr]
                        send_splits[d] += batch
                    send.append(ids.to(torch.int64))
                    send_splits[d] += ids.numel()
            recv_splits = [sum(sizes[s] * units[u].pooled + n[s][u] for u in mine) for s in range(world)]
            flat = torch.cat(send) if send else torch.empty(0, dtype=torch.int64, device=self._device())
            recv = comm.all_to_all(flat, send_splits, recv_splits, "ids")
            per_unit: dict[int, tuple[list[Tensor], list[Tensor]]] = {u: ([], []) for u in mine}
            pos = 0
            for s in range(world):
                for u in mine:
                    if units[u].pooled:
                        per_unit[u][0].append(recv[pos:pos + sizes[s]])
                        pos += sizes[s]
                    per_unit[u][1].append(recv[pos:pos + n[s][u]])
                    pos += n[s][u]
            psw_grad = anchor if any(f == 2 for f in psw_any) else None
            psw_in, psw_got = self._exchange_psw(routed, psw_any, n, batch, psw_grad)
            total = sum(sizes)
            # (sum of B, columns of my pooled units), and each unpooled unit's (its ids, columns)
            try:
                parts, loose = self._pool_pieces(per_unit, psw_in, total, grad)
                failure: BaseException | None = None
            except Exception as exc:  # (a piece's stage or a user init): raised on every rank after the exchange
                failure = exc
                dtype, device = self._standin(0).dtype, self._device()
                parts = torch.zeros(total, self._cols_of[me], dtype=dtype, device=device)
                loose = {u: torch.zeros(sum(n[s][u] for s in range(world)), units[u].cols, dtype=dtype, device=device)
                         for u in mine if not units[u].pooled}
            parts = _scale_grad(parts, self._grad_scale)
            loose = {u: _scale_grad(v, self._grad_scale) for u, v in loose.items()}
            if psw_got is not None and psw_grad is not None:
                # A zero-width tie: the backward reaches the per-sample weights' exchange on every
                # rank, also one whose pieces use none of them.
                parts = torch.cat([parts, psw_got.narrow(0, 0, 0).reshape(total, 0).to(parts.dtype)], dim=1)
            # To each rank s: its bags' pooled columns (B_s, C), then each unpooled unit's rows of its
            # ids, then this rank's status (1: its pieces failed), so that every rank raises, none waits.
            out_splits = [sizes[s] * self._cols_of[me] + sum(n[s][u] * units[u].cols for u in loose) + 1
                          for s in range(world)]
            back_splits = [batch * self._cols_of[d] + sum(n[me][u] * units[u].cols for u in self._loose_of[d]) + 1
                           for d in range(world)]
            status = parts.new_full((1,), float(failure is not None))
            by_rank = [torch.split(parts, sizes)] + [torch.split(v, [n[s][u] for s in range(world)])
                                                     for u, v in loose.items()]
            back = torch.cat([x for s in range(world) for x in [*(p[s].reshape(-1) for p in by_rank), status]])
            got = exchange(comm, back, out_splits, back_splits, "pooled", "grads", anchor)
            # Cut with torch.split, not slicing: its backward is one concatenation, where each
            # slice's would be a zero tensor of the whole size.
            blocks = [torch.split(b, [b.numel() - 1, 1]) for b in torch.split(got, back_splits)]
            failed = [d for d, flag in enumerate(torch.cat([f for _, f in blocks]).tolist()) if flag]
            if failed:
                self._raise_failed_pieces(failed, failure)
            for d, (block, _) in enumerate(blocks):
                pooled = [u for u in self._units_of[d] if units[u].pooled]
                loose_d = self._loose_of[d]
                if loose_d:
                    block, *rest = torch.split(block, [batch * self._cols_of[d]]
                                               + [n[me][u] * units[u].cols for u in loose_d])
                    unit_parts.update((u, r.view(n[me][u], units[u].cols)) for u, r in zip(loose_d, rest))
                cols = torch.split(block.view(batch, self._cols_of[d]), [units[u].cols for u in pooled], 1)
                unit_parts.update(zip(pooled, cols))

        # every feature's output, in order
        local_out = _scale_grad(pool(local, self.optimizer if grad else None), self._grad_scale) if local else None
        local_parts = (iter(torch.split(local_out, [self._dims[fi] for fi in self._local_features], 1))
                       if local_out is not None else None)
        outs = []
        for fi, f in enumerate(self.feature_names):
            if fi in routed:
                table = self.embedding_bags[self._feature_table[f]]
                r = routed[fi]
                got_parts = [unit_parts[u] for u in self._units_of_feature[fi]]
                outs.append(r.assemble(got_parts) if r.assemble is not None else
                            table.kind.combine(got_parts, table.global_spec.mode, r.kept, r.counts))
            else:
                outs.append(next(local_parts))  # type: ignore[arg-type]
        full = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return PooledEmbeddings(self.feature_names, full=full, dims=self._dims)

    def _device(self) -> torch.device:
        return self._standin(0).device

    def _standin(self, i: int) -> Tensor:
        return self._buffers[f"_standin{i}"]  # type: ignore[return-value]

    def _feature_mask(self, features: Any) -> tuple[list[int], int]:
        """Which of the collection's features this batch names (bit words), and how many other names."""
        try:
            keys = list(features.keys())
        except Exception:
            keys = []
        index = {f: i for i, f in enumerate(self.feature_names)}
        words = [0] * self._mask_words
        for k in keys:
            if k in index:
                i = index[k]
                words[i // _MASK_BITS] |= 1 << (i % _MASK_BITS)
        return words, sum(1 for k in keys if k not in index)

    def _raise_if_refused(self, rows: list[list[int]], message: bytes, error: BaseException | None,
                          mask: list[int]) -> None:
        m = 6 + self._mask_words
        masks = [(tuple(r[6:m]), r[5]) for r in rows]
        if len(set(masks)) > 1:
            named = []
            for words, unknown in masks:
                present = [f for i, f in enumerate(self.feature_names)
                           if words[i // _MASK_BITS] >> (i % _MASK_BITS) & 1]
                named.append((present, unknown))
            _checks.check_same_features(named, list(self.feature_names), _WHERE)
        modes = [r[3] for r in rows]
        if len(set(modes)) > 1:
            raise RuntimeError(
                f"{_WHERE}: rank(s) {[s for s, g in enumerate(modes) if g]} run the forward with gradients and rank(s) "
                f"{[s for s, g in enumerate(modes) if not g]} without (torch.no_grad()); every rank must run the same "
                f"mode, or the backward exchange would wait for ranks that never take part"
            )
        failed = [s for s, r in enumerate(rows) if r[0]]
        if failed:
            self._raise_on_every_rank(failed, [(r[1], r[2]) for r in rows], message, error,
                                      "batch was refused", "refused theirs too")

    def _raise_failed_pieces(self, failed: list[int], failure: BaseException | None) -> None:
        """Raise on every rank, after the exchange, what failed on the ranks ``failed`` while
        their pieces looked up the ids they received (the first one's error, named)."""
        code, message = _told(failure)
        heads = self.comm.all_gather(torch.tensor([code, len(message)], dtype=torch.int64, device=self._device()),
                                     "error").tolist()
        self._raise_on_every_rank(failed, heads, message, failure,
                                  "pieces failed to look up the ids they received", "failed too")

    def _raise_on_every_rank(self, failed: list[int], heads: Sequence[Sequence[int]], message: bytes,
                             error: BaseException | None, what: str, also: str) -> None:
        """Raise the first failed rank's error on every rank, its message gathered from it.
        ``heads``: each rank's ``_told`` (class index, message length)."""
        buf = torch.zeros(max(h[1] for h in heads), dtype=torch.uint8, device=self._device())
        buf[:len(message)] = torch.frombuffer(bytearray(message), dtype=torch.uint8) if message else buf[:0]
        texts = self.comm.all_gather(buf, "error").cpu()
        s = failed[0]
        text = bytes(texts[s, :heads[s][1]].tolist()).decode("utf-8", "replace")
        cls = _ERRORS[heads[s][0]]
        others = f" (rank(s) {failed[1:]} {also})" if len(failed) > 1 else ""
        full = f"{_WHERE}: rank {s}'s {what}{others}: {text}"
        if error is not None and self.comm.rank == s:
            raise cls(full) from error
        raise cls(full)

    def _prepare(self, features: Any) -> tuple[int, list[Feature], dict[int, _Routed]]:
        """This rank's batch checked, ids resolved and routed: (batch size, local features, routed features)."""
        inputs = self._inputs(features)
        local: list[Feature] = []
        routed: dict[int, _Routed] = {}
        sizes = []
        for fi, (f, (ids, offsets, psw, last)) in enumerate(zip(self.feature_names, inputs)):
            table = self.embedding_bags[self._feature_table[f]]
            where = self._wheres[f]
            if table.kind.routing == "local":
                weight, counter = table._state()
                backend = backend_of(table.spec, weight)
                psw = _scale_grad(psw, 1.0 / self._grad_scale)
                bags = prepare_bags(table.spec, weight, backend, ids, offsets, psw, last, where=where, counter=counter)
                local.append(Feature(table.spec, weight, backend, bags, table))
                sizes.append(bags.ends.shape[0] - 1)
                continue
            spec = table.kind.source_spec(table.global_spec)
            standin = self._standin(self._table_index[table.table_name])
            bags = prepare_bags(spec, standin, _RESOLVE, ids, offsets, psw, last,
                                where=where, counter=table._oov_count)
            ends = bags.ends
            sizes.append(ends.shape[0] - 1)
            if table.kind.unpooled:
                routed[fi] = table.kind.split(table, bags.ids, ends, bags.psw, where)
            else:
                routed[fi] = self._route(table, bags.ids, ends, bags.psw, spec.padding_idx)
        if len(set(sizes)) > 1:
            detail = ", ".join(f"{f!r}: {b}" for f, b in zip(self.feature_names, sizes))
            raise ValueError(f"{_WHERE}: every feature needs the same batch size, got {detail}")
        return (sizes[0] if sizes else 0), local, routed

    @staticmethod
    def _route(table: ShardTable, rows: Tensor, ends: Tensor, psw: Tensor | None, padding_idx: int | None) -> _Routed:
        """Split a feature's kept ids (not skipped, not padding) by the piece that pools them."""
        batch = ends.shape[0] - 1
        bag = bag_of(ends, rows.numel())  # (N,)
        keep = rows >= 0
        if padding_idx is not None:
            keep &= rows != padding_idx
        if not table.kind.raw and not bool(keep.all()):  # (raw ids: any int64 is an id, none is dropped)
            rows, bag = rows[keep], bag[keep]
            psw = psw[keep] if psw is not None else None
            kept = torch.bincount(bag, minlength=batch)  # (B,)
        else:  # nothing dropped: the bag lengths are the offsets' steps
            kept = (ends[1:] - ends[:-1]).to(torch.int64)
        kind, pieces = table.kind, table.pieces
        if kind.routing == "each":
            return _Routed(kept, None, [(kept, rows, psw)] * len(pieces))
        if len(pieces) == 1:
            return _Routed(kept, kept.unsqueeze(0), [(kept, rows, psw)])
        owner = kind.route(rows, pieces)  # (N,) piece of each id
        order = torch.argsort(owner, stable=True)  # by piece, bag order kept within each
        per_piece = torch.bincount(owner, minlength=len(pieces)).tolist()
        counts = torch.bincount(owner * batch + bag, minlength=len(pieces) * batch).view(len(pieces), batch)
        ids_by = torch.split(rows[order], per_piece)
        psw_by = torch.split(psw[order], per_piece) if psw is not None else [None] * len(pieces)
        return _Routed(kept, counts, [(counts[p], ids_by[p], psw_by[p]) for p in range(len(pieces))])

    def _exchange_psw(self, routed: dict[int, _Routed], psw_any: list[int], n: list[list[int]], batch: int,
                      anchor: Tensor | None) -> tuple[dict[int, list[Tensor]] | None, Tensor | None]:
        """Per-sample weights to the pieces, for the features whose bags have them on some rank
        (ones where a rank gave none); differentiable when some rank's require grad."""
        if not any(psw_any[unit.feature] for unit in self._units):
            return None, None
        comm = self.comm
        world, me = comm.world_size, comm.rank
        dtype = self._standin(0).dtype
        send, send_splits = [], [0] * world
        for d in range(world):
            for u in self._units_of[d]:
                unit = self._units[u]
                if not psw_any[unit.feature]:
                    continue
                _, ids, psw = routed[unit.feature].parts[unit.piece]
                send.append(psw if psw is not None else torch.ones(ids.numel(), dtype=dtype, device=ids.device))
                send_splits[d] += ids.numel()
        with_psw = [u for u in self._units_of[me] if psw_any[self._units[u].feature]]
        recv_splits = [sum(n[s][u] for u in with_psw) for s in range(world)]
        flat = torch.cat(send) if send else torch.empty(0, dtype=dtype, device=self._device())
        got = exchange(comm, flat, send_splits, recv_splits, "per-sample weights", "per-sample weight grads", anchor)
        out: dict[int, list[Tensor]] = {u: [] for u in with_psw}
        pos = 0
        for s in range(world):
            for u in with_psw:
                out[u].append(got[pos:pos + n[s][u]])
                pos += n[s][u]
        return out, got

    def _pool_pieces(self, per_unit: dict[int, tuple[list[Tensor], list[Tensor]]],
                     psw_in: dict[int, list[Tensor]] | None, total: int,
                     grad: bool) -> tuple[Tensor, dict[int, Tensor]]:
        """This rank's pieces pooled over every rank's bags: ``(sum of B, columns of its pooled
        units)``, and each unpooled unit's rows ``(its ids, columns)``.

        A piece whose ids stage keeps state (a dynamic table's) takes one step over all the ids it
        received, of every feature, before they are resolved (as the collection's forward does)."""
        me = self.comm.rank
        device = self._device()
        ids_of = {u: torch.cat(ids) for u, (_, ids) in per_unit.items()}
        stateful: dict[int, tuple[Any, list[Tensor]]] = {}
        for u, x in ids_of.items():
            module = self._units[u].module
            if module.spec.ids.stateful:
                stateful.setdefault(id(module), (module, []))[1].append(x)
        pooled: list[tuple[int, Feature]] = []
        loose: dict[int, Feature] = {}
        counts: dict[int, Tensor] = {}
        with contextlib.ExitStack() as steps:
            for module, xs in stateful.values():
                steps.enter_context(module.spec.ids.step(xs, f"{_WHERE} table {module.table_name!r} on rank {me}"))
            for u, (lengths, _) in per_unit.items():
                unit = self._units[u]
                table = unit.module
                x = ids_of[u]
                if unit.pooled:
                    ends = torch.zeros(total + 1, dtype=torch.int64, device=device)
                    torch.cumsum(torch.cat(lengths), 0, out=ends[1:])
                    psw = torch.cat(psw_in[u]) if psw_in is not None and u in psw_in else None
                    psw = _scale_grad(psw, 1.0 / self._grad_scale)  # (their gradient is this rank's loss's, unscaled)
                else:  # a bag per id
                    ends, psw = torch.arange(x.numel() + 1, dtype=torch.int64, device=device), None
                weight, _ = table._state()
                backend = backend_of(table.spec, weight)
                bags = prepare_bags(table.spec, weight, backend, x, ends, psw, True,
                                    where=f"{_WHERE} table {unit.table!r} on rank {me}")
                feature = Feature(table.spec, weight, backend, bags, table)
                if not unit.pooled:
                    loose[u] = feature
                    continue
                pooled.append((u, feature))
                if unit.counts:  # the ids the piece pooled per bag (its stage may have dropped some)
                    rows = bags.ids
                    counts[u] = torch.bincount(bag_of(bags.ends, rows.numel())[rows >= 0], minlength=total)
        optimizer = self.optimizer if grad else None
        if pooled:
            out = pool([f for _, f in pooled], optimizer)
        else:
            out = torch.zeros(total, 0, dtype=self._standin(0).dtype, device=device)
        if counts:
            widths = [self._units[u].cols - int(self._units[u].counts) for u, _ in pooled]
            columns: list[Tensor] = []
            for (u, _), block in zip(pooled, torch.split(out, widths, 1)):
                columns.append(block)
                if u in counts:
                    columns.append(counts[u].to(block.dtype).unsqueeze(1))
            out = torch.cat(columns, 1)
        return out, {u: pool((f,), optimizer) for u, f in loose.items()}

    # --- the optimizer's hook --------------------------------------------------------------

    def _reduce_row_grads(self, row_grads: list[RowGrads]) -> list[RowGrads]:
        """Between "row gradients ready" and "apply", for the tables whose kind needs it
        (data-parallel: all-reduced; column-wise RowWiseAdagrad: accumulators completed).
        Every rank visits its tables in one order, with empty gradients for a table this
        pass did not touch, so that the collectives match."""
        assert self.optimizer is not None  # internal: the hook is registered on it
        by_table = {id(rg.table): rg for rg in row_grads}
        ctx_args = (self.comm, self.optimizer.hyper(), self.optimizer.spec.kind)
        out = []
        for name, table, kind in self._trained:
            if not self._reduces(table, kind, ctx_args[2]):
                continue
            rg = by_table.get(id(table))
            if rg is None:
                dim = table.weight.shape[1]
                rows = torch.empty(0, dtype=torch.int64, device=table.weight.device)
                grads = table.weight.new_zeros(0, dim, dtype=acc_dtype(table.weight.dtype))
            else:
                rows, grads = rg.rows, rg.grads
            rows, grads = kind.reduce_row_grads(table, rows, grads, ReduceContext(*ctx_args, name))
            out.append(RowGrads(table, rows, grads))
        return out


    def _grad_norm(self, row_grads: list[RowGrads], norm_type: float) -> Tensor:
        """``clip_grad_norm_``'s total norm of the row gradients the next ``step()`` applies,
        over every rank, as one process would measure it: each kind gives this rank's share
        (a data-parallel table's summed gradient counts once), one all-reduce adds them."""
        assert self.optimizer is not None  # internal: set on it
        by_table = {id(rg.table): rg for rg in row_grads}
        hyper, kind_name = self.optimizer.hyper(), self.optimizer.spec.kind
        total = torch.zeros((), dtype=torch.float64, device=_default_device(self.comm))
        for name, table, kind in self._trained:  # every rank, one order: some shares all-reduce
            rg = by_table.get(id(table))
            if rg is None:
                rows = torch.empty(0, dtype=torch.int64, device=table.weight.device)
                grads = table.weight.new_zeros(0, table.weight.shape[1], dtype=acc_dtype(table.weight.dtype))
            else:
                rows, grads = rg.rows, rg.grads
            share = kind.grad_norm_share(table, rows, grads, ReduceContext(self.comm, hyper, kind_name, name), norm_type)
            total = add_norm_power(total, share.to(total), norm_type)
        inf = math.isinf(norm_type)
        self.comm.all_reduce_(total, "gradient norm", largest=inf)
        return total if inf else total.pow(1.0 / norm_type)


def _default_device(comm: Comm) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(comm.group) == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(ebc: EmbeddingBagCollection, plan: ShardingPlan | Mapping[str, Sharding], process_group: Any = None, *,
          device: torch.device | str | None = None) -> ShardedEmbeddingBagCollection:
    """Shard ``ebc`` over the ranks of ``process_group`` (default: every rank) by ``plan``.

    Every rank calls it with the same collection (same configs; same weights when they
    are real tensors, e.g. built after the same ``torch.manual_seed``) and the same plan.
    Each rank copies its pieces (weights and fused-optimizer state) out of ``ebc``,
    which is left as it was. A collection built on ``device="meta"`` allocates nothing:
    each rank then initialises its pieces with the tables' ``init`` (on ``device``,
    default the CPU, or the current GPU under NCCL).
    """
    return ShardedEmbeddingBagCollection(ebc, plan if isinstance(plan, ShardingPlan) else ShardingPlan(plan),
                                         process_group, device=device)
