"""Column-wise sharding: the table's dim split over several ranks.

The columns split as ``torch.tensor_split`` splits them (sizes differ by at most one,
the first ones longer). Every column rank pools every id of the table for every rank's
bags, over its columns; a rank concatenates the parts it gets back. Pooling is
per column, so sum, mean and max are exact; so are the per-element optimizers (SGD,
Adagrad, Adam, AdamW).

``RowWiseAdagrad`` keeps one accumulator per row, the mean of the squared gradient over
the whole row. Each column rank keeps a copy of it (``optim_sum``, ``(rows,)``) and,
before each update, the column ranks all-reduce the sums of squares of their columns
over the rows they touched (all of them touched the same rows): ``U`` floats per
step for ``U`` distinct rows, among the table's column ranks only. With that sum the
copy is corrected from the mean over this rank's columns, which the update adds, to
the mean over the whole row, so every copy and every row matches unsharded training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import _checks
from ..configs import TableConfig
from .plan import KINDS, Piece, ReduceContext, Sharding, split_sizes

__all__ = ["column_wise", "ColumnWise"]


@dataclass(frozen=True)
class ColumnWise(Sharding):
    ranks_: tuple[int, ...] = field(default=(0,))
    kind: ClassVar[str] = "column_wise"
    routing: ClassVar[str] = "each"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks_", _checks.check_column_ranks(self.ranks_, None, "ed.column_wise"))

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        _checks.check_column_ranks(self.ranks_, dim, "ed.column_wise")
        out, col0 = [], 0
        for rank, cols in zip(self.ranks_, split_sizes(dim, len(self.ranks_))):
            out.append(Piece((rank,), 0, num_rows, col0, cols))
            col0 += cols
        return tuple(out)

    def check(self, table: TableConfig, world_size: int) -> None:
        super().check(table, world_size)
        _checks.check_column_ranks(self.ranks_, table.embedding_dim, f"ShardingPlan: table {table.name!r} ({self!r})")

    def row_pieces(self, pieces: tuple[Piece, ...], num_rows: int) -> tuple[Piece, ...]:
        return (Piece(self.ranks_, 0, num_rows, 0, 0),)  # one copy per column rank

    def ranks(self, world_size: int) -> tuple[int, ...]:
        return self.ranks_

    def combine(self, parts: list[Tensor], mode: str, kept: Tensor, counts: Tensor | None) -> Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def reduces(self, optimizer_kind: str, world_size: int) -> bool:
        return optimizer_kind == "rowwise_adagrad" and len(self.ranks_) > 1

    def reduce_row_grads(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext) -> tuple[Tensor, Tensor]:
        if not self.reduces(ctx.kind, ctx.comm.world_size):
            return rows, grads
        weight, state = table.weight, table._optim_state()["sum"]
        g = grads
        if ctx.hyper.weight_decay:  # the update adds weight decay before squaring: so do we
            g = g + ctx.hyper.weight_decay * weight.detach().index_select(0, rows).to(g.dtype)
        squares = (g * g).sum(1)  # (U,) over this rank's columns
        local = squares / g.shape[1]
        ctx.comm.all_reduce_(squares, "row-wise Adagrad sums", group=ctx.comm.subgroup(self.ranks_),
                             size=len(self.ranks_))
        with torch.no_grad():
            state.index_add_(0, rows, (squares / table.full_dim - local).to(state.dtype))
        return rows, grads

    def __repr__(self) -> str:
        return f"column_wise(ranks={list(self.ranks_)})"


def column_wise(ranks: Any = (0,)) -> ColumnWise:
    """The table's columns split over ``ranks`` (one shard per rank, in this order)."""
    return ColumnWise(tuple(ranks) if isinstance(ranks, (list, tuple)) else ranks)


KINDS[ColumnWise.kind] = ColumnWise
