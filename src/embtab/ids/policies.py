"""The ids-to-rows step of every lookup, and the out-of-vocabulary policies that fill it today.

An id is out of vocabulary when ``id < 0`` or ``id >= num_embeddings``. torch raises an
``IndexError`` without the id on CPU and hits a device-side assert on CUDA; here the
behaviour is a choice made when the table is built:

``"error"``   raise ``IndexError`` naming the first bad id, its position, how many ids
              were bad and the valid range. On CUDA this costs one host sync per call.
``"padding"`` look up ``padding_idx`` instead.
``"zero"``    a zero vector with no gradient (in a bag the id is dropped, like padding).
``"hash"``    one of ``num_oov_buckets`` extra trainable rows after the in-vocabulary
              rows, chosen by :func:`embtab.hash_bucket`.

The interface (:class:`IdStage`) is what a table's lookup calls between the input
checks and the kernel: ``resolve(ids, ...) -> (rows, has_skip)``. Rows are valid rows
of the weight or ``SKIP`` (-1, "contributes nothing"). One exception, for speed: under
``"error"`` a backend whose kernel checks bounds itself may receive the raw ids, and
the caller names a bad id only when the kernel refuses one
(:attr:`IdStage.kernel_may_check`). Stateful maps (a dynamic table's id map, a row-wise
shard's global-to-local map) implement the same interface.

Unbounded id spaces (:class:`IdSpace`, given as ``ids=`` to a table: ``embtab.ids.Hashed``,
``embtab.ids.Dynamic``) build a stage per table that is also a module (``table.ids``): it is
bound to its table (:meth:`IdStage.bind`), may own tables trained by the table's fused
optimizer (:meth:`IdStage.tables`), may turn each id into a weighted bag of rows
(:attr:`IdStage.expands`, :meth:`IdStage.expand`), may take one training step over all the
ids of a collection forward (:attr:`IdStage.stateful`, :meth:`IdStage.step`), and may keep
its state in the table's ``state_dict`` (:meth:`IdStage.pack_state`,
:meth:`IdStage.unpack_state`). The defaults below make each of these a no-op.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager, Sequence

import torch
from torch import Tensor

from ..ops.common import SKIP
from ._hash import bucket_of


class IdStage:
    """Maps a table's ids to rows of its weight.

    Attributes:
        name: the policy's name (``"error"``, ``"padding"``, ``"zero"``, ``"hash"``).
        kernel_may_check: the ids may go to the kernel unresolved when the kernel
            checks bounds (only a policy that refuses out-of-range ids can allow it).
        extra_rows: rows the weight holds after ``num_embeddings`` (hash buckets).
    """

    name: ClassVar[str]
    kernel_may_check: ClassVar[bool] = False
    extra_rows: int = 0

    def resolve(
        self, ids: Tensor, num_embeddings: int, *, where: str, counter: Tensor | None = None,
        shape: torch.Size | None = None,
    ) -> tuple[Tensor, bool]:
        """``(rows, has_skip)``: ``rows`` has ``ids``' shape; ``has_skip`` says it may hold SKIP.

        ``counter`` (a 0-d int64 tensor on the ids' device) is incremented by the number
        of out-of-range ids without a host sync; ``shape`` is the caller's input shape,
        for error positions.
        """
        if ids.numel() == 0:
            return ids, False
        if ids.device.type == "cpu" and not torch.compiler.is_compiling():
            # The range answers "is anything out of range?"; the common case stops here.
            view = ids.numpy()  # zero-copy; numpy's min/max beat small torch ops' overhead
            if int(view.min()) >= 0 and int(view.max()) < num_embeddings:
                return ids, False
        bad = (ids < 0) | (ids >= num_embeddings)
        if counter is not None:
            counter.add_(bad.sum())
        return self._replace(ids, bad, num_embeddings), self.name == "zero"

    def _replace(self, ids: Tensor, bad: Tensor, num_embeddings: int) -> Tensor:
        raise NotImplementedError

    # --- what the stages of unbounded id spaces add (ids.Hashed, ids.Dynamic) ------------------

    #: Each id resolves to a weighted bag of rows (:meth:`expand`) instead of one row.
    expands: ClassVar[bool] = False
    #: Lookups change the stage's state: it resolves on the host, never inside a kernel, and a
    #: collection forward is one :meth:`step` over all the ids of the table's features.
    stateful: ClassVar[bool] = False

    def expand(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(rows (N, k), weights (N, k) or None)`` for flat ``ids`` (N,): id j's vector is
        ``sum_i weights[j, i] * W[rows[j, i]]`` (weights None: all 1)."""
        raise NotImplementedError

    def step(self, ids: Sequence[Tensor], where: str) -> ContextManager[None]:
        """A context in which the lookups of ``ids`` (each feature's) are one training step."""
        return contextlib.nullcontext()

    def bind(self, table: Any) -> None:
        """Called once by the table module that owns this stage."""

    def tables(self) -> list[Any]:
        """Table modules of the stage that the owner's fused optimizer trains too."""
        return []

    def pack_state(self, table: Any, state_dict: dict[str, Any], prefix: str) -> None:
        """Rewrite the owner's ``state_dict`` entries (``prefix + "weight"``, ...) as saved."""

    def unpack_state(self, table: Any, state_dict: dict[str, Any], prefix: str) -> None:
        """The inverse of :meth:`pack_state`, before the owner loads ``state_dict``."""


class IdSpace:
    """What ``ids=`` takes (``embtab.ids.Hashed``, ``embtab.ids.Dynamic``): an immutable
    description; each table builds its own stage from it."""

    #: Rows the table's weight holds after ``num_embeddings`` (a dynamic table's fallback rows).
    extra_rows: int = 0

    def stage(self, num_embeddings: int, embedding_dim: int, where: str) -> IdStage:
        """A new stage for a table of ``num_embeddings`` rows (buckets or capacity)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ErrorPolicy(IdStage):
    name: ClassVar[str] = "error"
    kernel_may_check: ClassVar[bool] = True

    def resolve(
        self, ids: Tensor, num_embeddings: int, *, where: str, counter: Tensor | None = None,
        shape: torch.Size | None = None,
    ) -> tuple[Tensor, bool]:
        if ids.numel() == 0:
            return ids, False
        if torch.compiler.is_compiling():
            # Inside a graph an error needs an opaque op (see embtab.ops.compiled).
            from ..ops import compiled

            compiled.check_ids(ids, num_embeddings, where, list(shape if shape is not None else ids.shape))
            return ids, False
        if ids.device.type == "cpu":
            view = ids.numpy()
            lo, hi = int(view.min()), int(view.max())
        else:
            lo_t, hi_t = torch.aminmax(ids)
            lo, hi = torch.stack([lo_t, hi_t]).tolist()  # the one host sync on CUDA
        if lo < 0 or hi >= num_embeddings:
            raise_out_of_range(ids, num_embeddings, where, shape if shape is not None else ids.shape)
        return ids, False


@dataclass(frozen=True)
class PaddingPolicy(IdStage):
    row: int = 0
    name: ClassVar[str] = "padding"

    def _replace(self, ids: Tensor, bad: Tensor, num_embeddings: int) -> Tensor:
        return torch.where(bad, torch.full_like(ids, self.row), ids)


@dataclass(frozen=True)
class ZeroPolicy(IdStage):
    name: ClassVar[str] = "zero"

    def _replace(self, ids: Tensor, bad: Tensor, num_embeddings: int) -> Tensor:
        return torch.where(bad, torch.full_like(ids, SKIP), ids)


@dataclass(frozen=True)
class HashPolicy(IdStage):
    extra_rows: int = 1
    name: ClassVar[str] = "hash"

    def _replace(self, ids: Tensor, bad: Tensor, num_embeddings: int) -> Tensor:
        buckets = (num_embeddings + bucket_of(ids, self.extra_rows)).to(ids.dtype)
        return torch.where(bad, buckets, ids)


# The stateless policies: a backend may apply them inside its kernel (see ops/triton/pooled.py).
POLICIES = (ErrorPolicy, PaddingPolicy, ZeroPolicy, HashPolicy)


def policy(oov: str, padding_idx: int | None, num_oov_buckets: int) -> IdStage:
    """The stage of a checked policy name (see ``_checks.check_oov``)."""
    if oov == "padding":
        return PaddingPolicy(padding_idx)  # type: ignore[arg-type]
    if oov == "hash":
        return HashPolicy(num_oov_buckets)
    return ZeroPolicy() if oov == "zero" else ErrorPolicy()


def raise_out_of_range(ids: Tensor, num_embeddings: int, where: str, shape: torch.Size | list[int]) -> None:
    """Raise the ``IndexError`` that names the first out-of-range id (reads ids back once)."""
    from .. import _checks

    flat = ids.reshape(-1)
    bad = (flat < 0) | (flat >= num_embeddings)
    count = int(bad.sum())
    if not count:
        return
    first = int(bad.nonzero()[0, 0])
    value = int(flat[first])
    shape = tuple(shape)
    position = tuple(int(p) for p in torch.unravel_index(torch.tensor(first), shape)) if len(shape) > 1 else first
    raise _checks.IdOutOfRangeError(
        f"{where}: id {value} at position {position} is out of range for a table of "
        f"{num_embeddings} rows (valid ids are 0..{num_embeddings - 1}); {count} of "
        f"{flat.numel()} ids are out of range. Fix the ids, or choose a policy with "
        f"oov='padding', 'zero' or 'hash'. (torch: index out of range in self; "
        f"Expected idx >= 0 && idx < num_embeddings)"
    )
