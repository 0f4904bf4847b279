"""Row-wise sharding: each rank holds a block of the table's rows.

The rows split as ``torch.tensor_split`` splits them (the first ``rows % W`` ranks get
one more; a table with fewer rows than ranks leaves the last ranks without a block).
A rank sends each id to the rank holding its row; each rank pools, for every rank's
bags, the ids it received (sum; ``max`` for max pooling) and sends the partial
``(B_r, D)`` back, where the partials are summed (an all-to-all plus a local sum),
divided by the bag's count for ``mean``, or maxed over the blocks that pooled an id.

The ids travel as global rows; the block's table turns them into its own rows with its
ids stage, :class:`RowBlock` (global row -> ``row - row0``). That is the seam tables with
``ids=`` shard through: a dynamic table's ids go to their owner by a hash of the id and
its piece's own ids stage maps them (``dynamic.py``); a hashed table's ids are hashed into
rows where they are looked up, and the rows go to their blocks (``hashed.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..ids.policies import IdStage
from .plan import KINDS, Piece, Sharding, split_sizes

__all__ = ["row_wise", "RowWise", "RowBlock"]


@dataclass(frozen=True)
class RowBlock(IdStage):
    """Global rows ``[row0, row0 + rows)`` -> this block's rows ``0 .. rows - 1``.

    The sending rank routed only this block's rows here, so nothing is out of range."""

    row0: int = 0
    name: ClassVar[str] = "row_block"

    def resolve(self, ids: Tensor, num_embeddings: int, *, where: str, counter: Tensor | None = None,
                shape: torch.Size | None = None) -> tuple[Tensor, bool]:
        return (ids - self.row0 if self.row0 else ids), False


@dataclass(frozen=True)
class RowWise(Sharding):
    kind: ClassVar[str] = "row_wise"
    routing: ClassVar[str] = "rows"

    def pieces(self, num_rows: int, dim: int, world_size: int) -> tuple[Piece, ...]:
        out, row0 = [], 0
        for rank, rows in enumerate(split_sizes(num_rows, world_size)):
            if rows:
                out.append(Piece((rank,), row0, rows, 0, dim))
            row0 += rows
        return tuple(out)

    def piece_mode(self, mode: str) -> str:
        return "max" if mode == "max" else "sum"  # a mean divides the summed parts by the whole bag's count

    def stage(self, piece: Piece) -> IdStage:
        return RowBlock(piece.row0)

    def route(self, rows: Tensor, pieces: tuple[Piece, ...]) -> Tensor:
        if len(pieces) == 1:
            return torch.zeros_like(rows, dtype=torch.int64)
        ends = torch.tensor([p.row0 + p.rows for p in pieces[:-1]], dtype=rows.dtype, device=rows.device)
        return torch.bucketize(rows, ends, right=True)

    def combine(self, parts: list[Tensor], mode: str, kept: Tensor, counts: Tensor | None) -> Tensor:
        if mode == "max":
            stacked = torch.stack(parts)  # (pieces, B, D)
            assert counts is not None  # internal: row-wise always has counts
            empty = (counts == 0).unsqueeze(2)  # a block that pooled nothing of a bag has no maximum
            best = stacked.masked_fill(empty, float("-inf")).max(0).values  # the gradient goes to one block
            return torch.where((kept > 0).unsqueeze(1), best, torch.zeros((), dtype=best.dtype, device=best.device))
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        if mode == "mean":
            out = out / kept.clamp(min=1).to(out.dtype).unsqueeze(1)
        return out

    def __repr__(self) -> str:
        return "row_wise()"


def row_wise() -> RowWise:
    """Rows split over every rank as ``torch.tensor_split`` does; ids go to the rank of their row."""
    return RowWise()


KINDS[RowWise.kind] = RowWise
