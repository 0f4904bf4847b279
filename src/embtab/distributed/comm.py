"""The collectives a sharded collection uses, and what each rank sends.

Per step a sharded collection calls only ``all_gather`` (one small header of counts),
``all_to_all_single`` (ids out, pooled vectors back, gradients back) and ``all_reduce``
(replicated tables' gradients; column-wise row-wise-Adagrad accumulators), so it runs
on gloo and NCCL alike. Every call goes through this module, which counts the bytes
this rank sends to the others (:class:`CommStats`) with one cost model:

- ``all_to_all_single``: the elements sent to other ranks (not the block kept).
- ``all_gather``: the local tensor, once to each of the ``W - 1`` others.
- ``all_reduce``: ``2 (W - 1) / W`` times the tensor, what a ring all-reduce sends
  (NCCL's ring and gloo's ring algorithm; a tree or a direct algorithm sends other amounts).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


# torch >= 2.9 names it all_gather_single (all_gather_into_tensor warns there).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class CommStats:
    """Bytes this rank has sent, by what was sent (``"ids"``, ``"pooled"``, ``"grads"``, ...).

    ``reset()`` at the start of a step, read after its backward: :attr:`total` is the
    step's volume. ``calls`` counts the collectives by name.
    """

    def __init__(self) -> None:
        self.bytes: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()

    @property
    def total(self) -> float:
        return float(sum(self.bytes.values()))

    def add(self, what: str, collective: str, nbytes: float) -> None:
        self.bytes[what] += nbytes
        self.calls[collective] += 1

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(self.bytes.items()))
        return f"CommStats({parts}; total {self.total:,.0f} bytes)"


class Comm:
    """A process group, this rank's place in it, and the byte counter."""

    def __init__(self, group: Any, stats: CommStats | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.stats = stats if stats is not None else CommStats()
        self._subgroups: dict[tuple[int, ...], Any] = {}

    def global_rank(self, rank: int) -> int:
        """The default group's rank of this group's ``rank`` (ShardedTensor placements use those)."""
        return dist.get_global_rank(self.group, rank) if self.group is not dist.GroupMember.WORLD else rank

    def subgroup(self, ranks: Sequence[int]) -> Any:
        """The group of ``ranks`` (made at set-up: every rank of the group must ask, in the same order)."""
        key = tuple(ranks)
        if key not in self._subgroups:
            self._subgroups[key] = dist.new_group([self.global_rank(r) for r in key])
        return self._subgroups[key]

    # --- collectives ---------------------------------------------------------------------

    def all_gather(self, tensor: Tensor, what: str) -> Tensor:
        """``(W, *tensor.shape)``: every rank's ``tensor``."""
        out = tensor.new_empty(self.world_size * tensor.numel())
        _all_gather_single(out, tensor.contiguous().reshape(-1), group=self.group)
        out = out.view(self.world_size, *tensor.shape)
        self.stats.add(what, "all_gather", tensor.numel() * tensor.element_size() * (self.world_size - 1))
        return out

    def all_to_all(self, send: Tensor, send_splits: Sequence[int], recv_splits: Sequence[int], what: str) -> Tensor:
        """``all_to_all_single`` of a flat tensor: ``send_splits[d]`` elements to rank ``d``,
        ``recv_splits[s]`` from rank ``s``."""
        recv = send.new_empty(int(sum(recv_splits)))
        if self.world_size == 1:
            recv.copy_(send)
        else:
            dist.all_to_all_single(recv, send.contiguous(), list(recv_splits), list(send_splits), group=self.group)
        sent = sum(n for d, n in enumerate(send_splits) if d != self.rank)
        self.stats.add(what, "all_to_all_single", sent * send.element_size())
        return recv

    def all_reduce_(self, tensor: Tensor, what: str, group: Any = None, size: int | None = None, *,
                    largest: bool = False) -> Tensor:
        """Sum ``tensor`` (``largest``: the maximum) over the group (or ``group`` of ``size`` ranks), in place."""
        group = self.group if group is None else group
        size = self.world_size if size is None else size
        if size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if largest else dist.ReduceOp.SUM, group=group)
        self.stats.add(what, "all_reduce", 2 * (size - 1) / size * tensor.numel() * tensor.element_size())
        return tensor


class AllToAll(torch.autograd.Function):
    """A differentiable ``all_to_all_single``: backward sends the gradients back the way the
    values came (the splits swapped).

    ``anchor`` is an empty tensor that requires grad: with it the node is in every rank's
    graph, so every rank takes part in the backward exchange, also a rank whose own
    ``send`` needs no gradient (it holds no shard, or its batch is empty).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, anchor: Tensor, send: Tensor, send_splits: list[int], recv_splits: list[int], comm: Comm, what: str,
        back: str,
    ) -> Tensor:
        ctx.comm, ctx.splits, ctx.back = comm, (send_splits, recv_splits), back
        ctx.send_numel, ctx.anchor_shape = send.numel(), anchor.shape
        return comm.all_to_all(send.detach(), send_splits, recv_splits, what)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        send_splits, recv_splits = ctx.splits
        back = ctx.comm.all_to_all(grad.contiguous(), recv_splits, send_splits, ctx.back)
        return grad.new_zeros(ctx.anchor_shape), back, None, None, None, None, None


def exchange(comm: Comm, send: Tensor, send_splits: list[int], recv_splits: list[int], what: str,
             back: str, anchor: Tensor | None) -> Tensor:
    """``all_to_all_single``, differentiable when ``anchor`` is given."""
    if comm.world_size == 1:  # nothing to exchange: no copy, no node
        comm.stats.add(what, "all_to_all_single", 0)
        return send
    if anchor is None:
        return comm.all_to_all(send.detach(), send_splits, recv_splits, what)
    return AllToAll.apply(anchor, send, send_splits, recv_splits, comm, what, back)


def new_group(process_group: Any) -> Any:
    """The group a sharded collection talks on: its own copy of ``process_group`` (default:
    every rank), so that its collectives never interleave with DDP's on the same group."""
    if process_group is None:
        return dist.new_group()
    return dist.new_group(dist.get_process_group_ranks(process_group))
