"""Checkpoints of sharded collections: ``torch.distributed.checkpoint`` and gathering.

A sharded collection's ``state_dict`` has the plain collection's keys
(``embedding_bags.<table>.weight``, ``embedding_bags.<table>.optim_<state>``); each value
is a ``ShardedTensor`` of the whole table whose local shard is this rank's piece (the
module's own tensor, so ``torch.distributed.checkpoint.load`` writes into it in place).
A piece several ranks hold (a data-parallel table, the per-row state of a column-wise
table) is listed by each of them as its own; ``dcp.save`` writes it once (it drops
duplicate chunks) and ``dcp.load`` fills every copy. The checkpoint is a plain table
to DCP, so it loads at any world size and plan, or into a plain
``EmbeddingBagCollection`` in one process (``dcp.load(ebc.state_dict(), checkpoint_id=...)``).

:func:`gather_state_dict` puts the whole plain state_dict on one rank (for serving).

Dynamic tables (``ids=embtab.ids.Dynamic``) save their live rows only: each rank its own
ids (ascending) with their weight and optimizer rows, one rank after another, the fallback
rows once (with the last rank's block), the pending ids and counts likewise, the step (the
same on every rank) and the statistics summed over the ranks (``dynamic.py``). Their shapes
follow the live ids, so :func:`load_checkpoint` reads them whole and each rank keeps the
ids it owns at the new world size; loaded into one process they are a plain table's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_state_dict", "load_checkpoint"]

# (offsets, sizes, ranks) of each piece of a tensor
Pieces = Sequence[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


def _sharded_tensor_api() -> Any:
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
    from torch.distributed._shard.sharded_tensor.metadata import ShardedTensorMetadata, TensorProperties

    return ShardMetadata, Shard, ShardedTensor, ShardedTensorMetadata, TensorProperties


def to_sharded_tensor(local: Tensor, shape: tuple[int, ...], pieces: Pieces, rank: int, comm: Any) -> Any:
    """The ``ShardedTensor`` of a tensor of ``shape`` cut in ``pieces``, ``local`` being
    this rank's piece (if it holds one). A piece held by several ranks is placed, in each
    rank's metadata, on that rank when it holds it (DCP writes it once)."""
    ShardMetadata, Shard, ShardedTensor, ShardedTensorMetadata, TensorProperties = _sharded_tensor_api()
    device = local.device
    dev = "cpu" if device.type == "cpu" else f"{device.type}:{device.index if device.index is not None else 0}"
    shards_md, local_shards = [], []
    for offsets, sizes, ranks in pieces:
        holder = rank if rank in ranks else ranks[0]
        md = ShardMetadata(list(offsets), list(sizes), f"rank:{comm.global_rank(holder)}/{dev}")
        shards_md.append(md)
        if rank in ranks:
            local_shards.append(Shard(local.detach(), md))
    props = TensorProperties(dtype=local.dtype, layout=torch.strided, requires_grad=False,
                             memory_format=torch.contiguous_format, pin_memory=False)
    meta = ShardedTensorMetadata(shards_md, torch.Size(shape), props)
    return ShardedTensor._init_from_local_shards_and_global_metadata(local_shards, meta, process_group=comm.group)


def local_part(value: Any, local: Tensor, shape: tuple[int, ...], piece: tuple[tuple[int, ...], tuple[int, ...]] | None,
               key: str) -> Tensor | str:
    """This rank's piece of ``value`` (a ShardedTensor from :func:`to_sharded_tensor`, or the
    whole tensor), shaped as ``local``; a message when ``value`` does not fit."""
    _, _, ShardedTensor, _, _ = _sharded_tensor_api()
    if piece is None:  # this rank holds nothing of the table
        return local.detach()
    offsets, sizes = piece
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            md = shard.metadata
            if tuple(md.shard_offsets) == tuple(offsets) and tuple(md.shard_sizes) == tuple(sizes):
                return shard.tensor
        return (f"{key}: the ShardedTensor has no local shard at offsets {list(offsets)} of sizes {list(sizes)}; "
                f"load a checkpoint with torch.distributed.checkpoint.load(sharded.state_dict(), ...) first")
    if not isinstance(value, Tensor):
        return f"{key}: expected a tensor, got {type(value).__name__}"
    if tuple(value.shape) != tuple(shape):
        return (f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from checkpoint, "
                f"the shape in current model is {tuple(shape)} (the whole table)")
    out = value
    for dim, (o, s) in enumerate(zip(offsets, sizes)):
        out = out.narrow(dim, o, s)
    return out


def gather_state_dict(module: torch.nn.Module, rank: int | None = 0) -> "OrderedDict[str, Tensor] | None":
    """The plain ``state_dict`` of ``module`` (a sharded collection, or a model holding
    some), whole, on ``rank``: what the unsharded module's ``state_dict()`` would hold,
    same keys, every table and optimizer state complete (for serving, or
    ``EmbeddingBagCollection.load_state_dict``). Other ranks get None; ``rank=None``
    gives it to every rank. Every rank must call it (it gathers over the collection's group).
    """
    from .model import DistributedModel
    from .sharded import ShardTable

    if isinstance(module, DistributedModel):
        module = module.model  # (its state_dict is the model's)
    state = module.state_dict()
    out: OrderedDict[str, Tensor] = OrderedDict()
    tables = {name: m for name, m in module.named_modules() if isinstance(m, ShardTable)}
    me = next(iter(tables.values())).comm.rank if tables else 0
    whole: dict[str, Tensor | None] = {}
    for prefix, table in tables.items():
        parts = {name: local if pieces is None else _gather(local, shape, pieces, table.comm, rank)
                 for name, local, shape, pieces in table.entries()}
        if rank is None or me == rank:
            table.kind.canonical(table, parts)  # type: ignore[arg-type]  (a dynamic table's ids in order)
        for name, value in parts.items():
            whole[f"{prefix}.{name}" if prefix else name] = value
    if rank is not None and me != rank:
        return None
    for key, value in state.items():
        out[key] = whole[key] if key in whole else value  # type: ignore[assignment]
    return out


def load_checkpoint(module: torch.nn.Module, checkpoint_id: Any, **kwargs: Any) -> None:
    """Load a ``torch.distributed.checkpoint`` into ``module`` (a collection, sharded or plain,
    or a model holding some), whatever the world size and plan it was saved with.

    ``dcp.load`` reads into tensors shaped as the checkpoint's; a dynamic table's entries
    (``ids=embtab.ids.Dynamic``: its live rows, ids and pending counts) are shaped by the ids
    live when it was saved, so they are read whole (every rank reads them all) and each rank
    keeps the ids it owns (``ShardTable.load_state_dict``). The other tables load as with
    ``dcp.load(module.state_dict(), ...)``, each rank reading its pieces. Every rank of a
    sharded module calls it. Keyword arguments go to ``dcp.load`` (in one process without a
    process group, ``no_dist=True`` is the default).

    Example:
        >>> ed.load_checkpoint(sharded, "ckpt/step-100")   # doctest: +SKIP
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from ..ids.dynamic import sort_by_id
    from .sharded import ShardTable

    state = module.state_dict()
    reader = kwargs.pop("storage_reader", None) or dcp.FileSystemReader(checkpoint_id)
    saved = reader.read_metadata().state_dict_metadata
    whole = []
    for name, m in module.named_modules():
        spec = m.global_spec if isinstance(m, ShardTable) else getattr(m, "spec", None)
        if spec is None or not getattr(spec.ids, "stateful", False):
            continue
        prefix = f"{name}." if name else ""
        whole.append(prefix)
        for key in state:
            md = saved.get(key)
            if key.startswith(prefix) and isinstance(md, TensorStorageMetadata):
                state[key] = torch.empty(md.size, dtype=md.properties.dtype)  # read whole, as saved
    if not (dist.is_available() and dist.is_initialized()):
        kwargs.setdefault("no_dist", True)
    dcp.load(state, checkpoint_id=checkpoint_id, storage_reader=reader, **kwargs)
    for prefix in whole:
        sort_by_id(state, prefix)  # the ranks' blocks of ids, one after another: in the plain table's order
    module.load_state_dict(state)


def _gather(local: Tensor, shape: tuple[int, ...], pieces: Pieces, comm: Any, dst: int | None) -> Tensor | None:
    """The whole tensor from its pieces (each written by its first holder), on ``dst`` (or every rank)."""
    world, me = comm.world_size, comm.rank
    mine = [(o, s) for o, s, ranks in pieces if ranks[0] == me]
    sizes = [0] * world
    for _, s, ranks in pieces:
        n = 1
        for x in s:
            n *= x
        sizes[ranks[0]] += n
    longest = max(sizes) if sizes else 0
    send = local.new_zeros(longest)
    if mine:
        flat = local.detach().reshape(-1)
        send[:flat.numel()] = flat  # a rank holds one piece of a table (see ShardTable)
    if world == 1:
        bufs = [send]
    elif dst is None:
        bufs = [torch.empty_like(send) for _ in range(world)]
        dist.all_gather(bufs, send, group=comm.group)
    else:
        bufs = [torch.empty_like(send) for _ in range(world)] if me == dst else None
        dist.gather(send, bufs, dst=comm.global_rank(dst), group=comm.group)
        if me != dst:
            return None
    full = local.new_empty(shape)
    for offsets, s, ranks in pieces:
        target = full
        for dim, (o, n) in enumerate(zip(offsets, s)):
            target = target.narrow(dim, o, n)
        numel = target.numel()
        target.copy_(bufs[ranks[0]][:numel].reshape(target.shape))  # type: ignore[index]
    return full
