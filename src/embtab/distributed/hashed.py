"""Sharded hashed tables (``ids=embtab.ids.Hashed``): the rows are cut by the row.

A hashed table is stateless: an id's rows ``h_i(id)`` and its importance row are hashes of
the id, which any rank computes. So the rank that looks an id up hashes it, and the rows it
reads may live anywhere: the table's rows are cut as any table's (``row_wise``: by the row,
``table_wise``, ``column_wise``), and so are its importance weights (``ids.importance``, a
``(importance_rows, num_hashes)`` table: ``row_wise`` by its row, or on one rank). Routing by
a hash of the id instead would need every row an id reads on the id's rank: the rows of
one id are independent hashes, so they are spread over every rank.

A step (:meth:`HashedSharding.split`): the looking-up rank hashes its ids into their ``N k``
rows and ``N`` importance rows and sends each row to the piece holding it (the kind's
``route``; a table-wise or column-wise piece gets them all); each piece looks up its rows
unpooled (a bag of one row each, ``Sharding.unpooled``) and sends them back; the looking-up
rank weighs each id's ``k`` rows by its importance weights and pools the ids' vectors into
the bags (sum, mean, or max, with per-sample weights), with the ordinary pipeline
(``tables.pipeline.pool``), as the unsharded table does (``Bags._expanded``). The backward
goes the same way back: the row gradients (and the importance weights', ``<row, grad>``)
reach the pieces, whose fused optimizer updates them as unsharded training does. It sends
``N k`` rows of the dim back where a pooled lookup sends ``B`` (the price of max pooling
and of importance weights held elsewhere).

``ed.data_parallel()`` copies the whole table with its importance weights to every rank
(the ids are hashed and pooled locally; both tables' row gradients are all-reduced).
"""

from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from ..configs import TableConfig
from ..ids.hashed import Hashed, HashedIds
from ..ids.policies import ErrorPolicy
from ..tables.pipeline import Bags, Feature, backend_of, pool
from .plan import ID_KINDS, AsIs, Piece, ReduceContext, Sharding, Sizer
from .table_wise import table_wise

__all__ = ["HashedSharding"]

_Parts = list[tuple[None, Tensor, None]]


def _importance_config(config: TableConfig, stage: HashedIds) -> TableConfig:
    """The table of a hashed table's importance weights, as its pieces are built."""
    return TableConfig(config.name, stage.importance_rows, config.ids.num_hashes,  # type: ignore[union-attr]
                       init=torch.nn.init.ones_)


@dataclass(frozen=True, repr=False)
class HashedSharding(Sharding):
    """A hashed table's rows cut as ``base`` cuts a table, its importance weights as ``importance``."""

    base: Sharding
    importance: Sharding | None = None
    unpooled: ClassVar[bool] = True

    @property  # type: ignore[misc]
    def kind(self) -> str:  # type: ignore[override]
        return self.base.kind

    @property  # type: ignore[misc]
    def routing(self) -> str:  # type: ignore[override]
        return self.base.routing

    def for_table(self, table: TableConfig) -> Sharding:
        return self  # (already the variant)

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        return self.base.pieces(num_rows, dim, world_size)

    def row_pieces(self, pieces: tuple[Piece, ...], num_rows: int) -> tuple[Piece, ...]:
        return self.base.row_pieces(pieces, num_rows)

    def ranks(self, world_size: int) -> tuple[int, ...]:
        return self.base.ranks(world_size)

    def check(self, table: TableConfig, world_size: int) -> None:
        self.base.check(table, world_size)

    def piece_mode(self, mode: str) -> str:
        return "sum"  # (bags of one row)

    def source_spec(self, spec: Any) -> Any:
        return dc_replace(spec, ids=AsIs(), id_space=None)

    def stage(self, piece: Piece) -> Any:
        return self.base.stage(piece)

    def route(self, rows: Tensor, pieces: tuple[Piece, ...]) -> Tensor:
        return self.base.route(rows, pieces)

    def reduces(self, optimizer_kind: str, world_size: int) -> bool:
        return self.base.reduces(optimizer_kind, world_size)

    def reduce_row_grads(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext) -> tuple[Tensor, Tensor]:
        return self.base.reduce_row_grads(table, rows, grads, ctx)

    def grad_norm_share(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext,
                        norm_type: float) -> Tensor:
        return self.base.grad_norm_share(table, rows, grads, ctx, norm_type)

    def side_bytes(self, table: TableConfig, world_size: int, size: Sizer) -> dict[int, int]:
        """The importance weights, sharded by their own kind (see :meth:`build`)."""
        if self.importance is None:
            return {}
        return size.table(_importance_config(table, HashedIds(table.ids, table.num_embeddings)), self.importance)  # type: ignore[arg-type]

    def sub_tables(self, table: Any) -> list[Any]:
        return [table.ids.importance] if self.importance is not None else []

    def build(self, table: Any, config: TableConfig, source: Any, make: Callable[..., Any]) -> None:
        """The table's ``ids``: the hashes (computed where ids are looked up) and the sharded
        importance weights (``ids.importance``, the plain table's key)."""
        stage = HashedIds(config.ids, config.num_embeddings)
        table.add_module("ids", stage)
        if self.importance is not None:
            weights = source.ids.importance
            stage.importance = make(config.name, _importance_config(config, stage), self.importance, weights)

    def split(self, table: Any, ids: Tensor, ends: Tensor, psw: Tensor | None, where: str) -> Any:
        from .sharded import _Routed

        stage = table.ids
        n, k = ids.numel(), stage.space.num_hashes
        parts, rows_of = _spread(self.base, stage.rows(ids).reshape(-1), table.pieces)  # N k rows
        weights_of = None
        if self.importance is not None:
            imp = stage.importance
            more, weights_of = _spread(imp.kind, stage.importance_rows_of(ids), imp.pieces)  # N rows
            parts = parts + more
        split_at = len(table.pieces)

        def assemble(outs: list[Tensor]) -> Tensor:
            vectors = rows_of(outs[:split_at]).view(n, k, table.full_dim)  # (N, k, D)
            if weights_of is not None:
                vectors = vectors * weights_of(outs[split_at:]).unsqueeze(2)  # (N, k, 1) importance weights
            vectors = vectors.sum(1) if k > 1 else vectors[:, 0]  # (N, D): each id's vector
            return _pool_ids(table.global_spec, vectors, ends, psw, where)

        return _Routed(None, None, parts, assemble)

    def __repr__(self) -> str:
        return repr(self.base)


def _spread(kind: Sharding, rows: Tensor, pieces: tuple[Piece, ...]) -> tuple[_Parts, Callable[[list[Tensor]], Tensor]]:
    """What each piece looks up of ``rows`` (one bag each), and how their answers make ``(len(rows), D)``."""
    if kind.routing == "rows" and len(pieces) > 1:
        owner = kind.route(rows, pieces)  # (M,) the piece of each row
        order = torch.argsort(owner, stable=True)
        per_piece = torch.bincount(owner, minlength=len(pieces)).tolist()
        inverse = torch.argsort(order)
        return [(None, r, None) for r in torch.split(rows[order], per_piece)], lambda outs: torch.cat(outs)[inverse]
    if kind.routing == "rows":
        return [(None, rows, None)], lambda outs: outs[0]
    # every piece looks up every row, over its columns
    return [(None, rows, None)] * len(pieces), lambda outs: outs[0] if len(outs) == 1 else torch.cat(outs, 1)


def _pool_ids(spec: Any, vectors: Tensor, ends: Tensor, psw: Tensor | None, where: str) -> Tensor:
    """``(B, D)``: the ids' vectors ``(N, D)`` pooled into the bags ``ends`` by the table's mode."""
    n = vectors.shape[0]
    per_id = dc_replace(spec, ids=ErrorPolicy(), id_space=None, max_norm=None)
    bags = Bags(torch.arange(n, device=vectors.device), None, True, psw, torch.Size([n]), False, per_id, where,
                ends.to(torch.int64))
    return pool((Feature(per_id, vectors, backend_of(per_id, vectors), bags),))


def _hashed(kind: Sharding, t: TableConfig) -> Sharding:
    ranks = kind.ranks(0) if kind.routing == "each" else ()
    importance = None
    if t.ids.importance:  # its importance weights: cut by the row as the rows are, or on one rank
        importance = kind if kind.routing == "rows" else table_wise(rank=ranks[0])
    return HashedSharding(kind, importance)


ID_KINDS[("row_wise", Hashed)] = _hashed
ID_KINDS[("table_wise", Hashed)] = _hashed
ID_KINDS[("column_wise", Hashed)] = _hashed
ID_KINDS[("data_parallel", Hashed)] = lambda kind, t: kind  # a copy of the whole table, its importance weights too
