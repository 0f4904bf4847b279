"""Hash embeddings (Svenstrup et al., 2017): ``embtab.ids.Hashed``.

An id's vector is ``sum_i p_i(id) * W[h_i(id)]``: ``num_hashes`` independent seeded hashes
of the raw id pick rows of the table's ``num_embeddings`` rows (buckets), and trainable
importance weights ``p(id)`` (``num_hashes`` of them) come from a second small table,
``module.ids.importance`` (an ``embtab.Embedding`` of ``importance_rows`` rows, every
weight starting at 1), picked by another hash. The importance table is trained by the
table's fused optimizer with the rows (or gets ``.grad`` like any parameter).

``Hashed(1, importance=False)`` is exactly the hashing trick: ``W[hash_bucket(id, N)]``
(with ``seed=0``, the hash of ``oov="hash"`` and :func:`embtab.hash_bucket`).

The hashes are :func:`embtab.ids._hash.seeded_bucket` with the keys
:func:`embtab.ids._hash.hash_key` ``(seed, i)``: hash ``i < num_hashes`` picks a row, hash
``num_hashes`` the importance row. They are integer arithmetic on int64 (MurmurHash3's
finaliser), the same on every run, machine and device, with pure-Python twins.

In the lookup pipeline each id becomes a weighted bag of ``num_hashes`` rows
(:meth:`HashedIds.expand`; see ``tables/pipeline.Bags._expanded``): an unpooled lookup is
a bag per id, a sum or mean bag one bag of every id's rows, and a max bag pools the ids'
vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import Module

from .. import _checks
from ._hash import hash_key, seeded_bucket
from .policies import IdSpace, IdStage

__all__ = ["Hashed", "HashedIds"]


@dataclass(frozen=True)
class Hashed(IdSpace):
    """Hash embeddings: each id pools ``num_hashes`` hashed rows with trainable importance weights.

    Args:
        num_hashes: rows per id, picked by independent seeded hashes of the raw id.
        importance: learn a weight per (id, hash) (``False``: all weights 1).
        seed: picks the hash functions (any int in [0, 2**63)).
        importance_rows: rows of the importance table (default: the table's
            ``num_embeddings``); each row holds ``num_hashes`` weights.

    Example:
        >>> bag = embtab.EmbeddingBag(1000, 16, mode="sum", ids=embtab.ids.Hashed(2))
        >>> bag(torch.tensor([3, -7, 2**62]), torch.tensor([0, 2])).shape
        torch.Size([2, 16])
    """

    num_hashes: int = 2
    importance: bool = field(default=True, kw_only=True)
    seed: int = field(default=0, kw_only=True)
    importance_rows: int | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        where = "embtab.ids.Hashed"
        _checks.check_int_at_least(self.num_hashes, "num_hashes", 1, where)
        _checks.check_flag(self.importance, "importance", where)
        _checks.check_seed(self.seed, where)
        if self.importance_rows is not None:
            _checks.check_int_at_least(self.importance_rows, "importance_rows", 1, where)

    def stage(self, num_embeddings: int, embedding_dim: int, where: str) -> "HashedIds":
        _checks.check_int_at_least(num_embeddings, "num_embeddings (the buckets of ids=Hashed)", 1, where)
        return HashedIds(self, num_embeddings)


class HashedIds(IdStage, Module):
    """The stage of a :class:`Hashed` table (``module.ids``): hashes, and the importance table.

    Attributes:
        importance: an ``embtab.Embedding`` (importance_rows, num_hashes), or None.
    """

    name: ClassVar[str] = "hashed"

    def __init__(self, space: Hashed, num_buckets: int) -> None:
        Module.__init__(self)
        self.space = space
        self.num_buckets = num_buckets
        self.keys = [hash_key(space.seed, i) for i in range(space.num_hashes)]
        self.importance_key = hash_key(space.seed, space.num_hashes)
        self.importance_rows = space.importance_rows or num_buckets
        self.importance: Module | None = None
        # One unweighted hash is the hashing trick: a plain row per id, no bags.
        self.expands = space.num_hashes > 1 or space.importance  # type: ignore[misc]

    def bind(self, table: Any) -> None:
        table.add_module("ids", self)
        if self.space.importance:
            from ..nn.embedding import Embedding

            w = table.weight
            if not w.is_floating_point():
                raise TypeError(f"{type(table).__name__}: ids=Hashed(importance=True) trains importance weights, "
                                f"but the weight is {w.dtype}; use a floating-point weight or importance=False")
            self.importance = Embedding(self.importance_rows, self.space.num_hashes, device=w.device, dtype=w.dtype,
                                        init=torch.nn.init.ones_, backend=table.spec.backend)

    def tables(self) -> list[Any]:
        return [] if self.importance is None else [self.importance]

    def rows(self, ids: Tensor) -> Tensor:
        """``(N, num_hashes)`` int64: the rows each of the flat ``ids`` pools."""
        ids = ids.reshape(-1).to(torch.int64)
        return torch.stack([seeded_bucket(ids, key, self.num_buckets) for key in self.keys], dim=1)

    def importance_rows_of(self, ids: Tensor) -> Tensor:
        """``(N,)`` int64: the row of the importance table each of the flat ``ids`` reads."""
        return seeded_bucket(ids.reshape(-1), self.importance_key, self.importance_rows)

    def expand(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        rows = self.rows(ids)  # (N, k)
        if self.importance is None:
            return rows, None
        return rows, self.importance(self.importance_rows_of(ids))  # (N, k), trained with the rows

    def resolve(
        self, ids: Tensor, num_embeddings: int, *, where: str, counter: Tensor | None = None,
        shape: torch.Size | None = None,
    ) -> tuple[Tensor, bool]:
        # Only when nothing expands (Hashed(1, importance=False)): the hashing trick.
        return seeded_bucket(ids, self.keys[0], num_embeddings).to(ids.dtype), False

    def extra_repr(self) -> str:
        return repr(self.space)
