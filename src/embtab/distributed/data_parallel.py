"""Data-parallel tables: a copy of the table on every rank.

Lookups stay on the rank (no ids or pooled vectors travel). After each backward pass
the ranks sum their row gradients with one ``all_reduce`` of a dense ``(rows, dim + 1)``
buffer (the last column marks the rows some rank touched), so every copy takes the same
update. For small tables, whose all-reduce costs less than routing their ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .plan import KINDS, Piece, ReduceContext, Sharding, norm_power

__all__ = ["data_parallel", "DataParallel"]


@dataclass(frozen=True)
class DataParallel(Sharding):
    kind: ClassVar[str] = "data_parallel"
    routing: ClassVar[str] = "local"

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        return (Piece(tuple(range(world_size)), 0, num_rows, 0, dim),)

    def replicas(self) -> bool:
        return True

    def reduces(self, optimizer_kind: str, world_size: int) -> bool:
        return world_size > 1

    def reduce_row_grads(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext) -> tuple[Tensor, Tensor]:
        num_rows, dim = table.weight.shape
        buf = torch.zeros(num_rows, dim + 1, dtype=grads.dtype, device=grads.device)  # (rows, D + 1)
        buf[rows, :dim] = grads
        buf[rows, dim] = 1.0
        ctx.comm.all_reduce_(buf, "replicated grads")
        touched = (buf[:, dim] > 0).nonzero().squeeze(1)  # (U,) ascending, as the update expects
        return touched, buf[touched, :dim]

    def grad_norm_share(self, table: Any, rows: Tensor, grads: Tensor, ctx: ReduceContext,
                        norm_type: float) -> Tensor:
        """The summed gradient (one all-reduce more, as the update's), counted on rank 0 only:
        every rank holds the same."""
        rows, grads = self.reduce_row_grads(table, rows, grads, ctx)
        share = norm_power(grads, norm_type)
        return share if ctx.comm.rank == 0 else torch.zeros_like(share)

    def __repr__(self) -> str:
        return "data_parallel()"


def data_parallel() -> DataParallel:
    """A copy of the table on every rank; gradients summed by all-reduce."""
    return DataParallel()


KINDS[DataParallel.kind] = DataParallel
