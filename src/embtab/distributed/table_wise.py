"""Table-wise sharding: a whole table on one rank.

Every rank sends the ids of the table's features to that rank, which pools them for
every rank's batch and sends each rank its ``(B_r, D)`` back; gradients take the way
back. The simplest placement when the tables outnumber the ranks and each fits one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .plan import KINDS, Piece, Sharding

__all__ = ["table_wise", "TableWise"]


@dataclass(frozen=True)
class TableWise(Sharding):
    rank: int = 0
    kind: ClassVar[str] = "table_wise"
    routing: ClassVar[str] = "each"

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise TypeError(f"ed.table_wise: rank must be an int, got {self.rank!r}")

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        return (Piece((self.rank,), 0, num_rows, 0, dim),)

    def ranks(self, world_size: int) -> tuple[int, ...]:
        return (self.rank,)

    def __repr__(self) -> str:
        return f"table_wise(rank={self.rank})"


def table_wise(rank: int = 0) -> TableWise:
    """The whole table on ``rank``."""
    return TableWise(rank)


KINDS[TableWise.kind] = TableWise
