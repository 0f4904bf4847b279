"""Sharding embedding-bag collections across the processes of a ``torch.distributed`` job.

::

    import embtab.distributed as ed
    plan = ed.ShardingPlan({"item": ed.row_wise(), "user": ed.table_wise(rank=1),
                            "tag": ed.column_wise(ranks=[0, 1]), "country": ed.data_parallel()})
    plan = ed.plan(tables, world_size, memory_per_rank=2**30)   # automatic; plan.explain() says why
    sharded = ed.shard(ebc, plan)                # ShardedEmbeddingBagCollection
    pooled = sharded(local_batch)                # this rank's batch -> PooledEmbeddings
    model = ed.DistributedModel(model, plan)     # collections sharded, the dense rest in DDP
    state = ed.gather_state_dict(sharded, rank=0)  # the plain collection's state_dict, whole, on rank 0
    ed.load_checkpoint(sharded, "ckpt")          # a torch.distributed.checkpoint, at any world size and plan

Runs on gloo (CPU) and NCCL (GPUs); per step only ``all_gather``, ``all_to_all_single``
and ``all_reduce``. Checkpoints go through ``torch.distributed.checkpoint`` and load
at any world size or plan (``checkpoint.py``). Layout: ``plan.py`` (plans, the kinds'
interface, the automatic planner), one file per kind (``table_wise.py``,
``row_wise.py``, ``column_wise.py``, ``data_parallel.py``), one per id space
(``hashed.py``, ``dynamic.py``: how tables with ``ids=`` shard under those kinds),
``comm.py`` (collectives, byte counts), ``sharded.py`` (the sharded collection),
``model.py``, ``checkpoint.py``.
"""

from . import dynamic as dynamic, hashed as hashed  # register how tables with ids= shard (plan.ID_KINDS)
from .checkpoint import gather_state_dict as gather_state_dict, load_checkpoint as load_checkpoint
from .column_wise import column_wise as column_wise
from .comm import CommStats as CommStats
from .data_parallel import data_parallel as data_parallel
from .model import DistributedModel as DistributedModel
from .plan import Piece as Piece, Sharding as Sharding, ShardingPlan as ShardingPlan, plan as plan
from .row_wise import RowBlock as RowBlock, row_wise as row_wise
from .sharded import ShardedEmbeddingBagCollection as ShardedEmbeddingBagCollection, shard as shard
from .table_wise import table_wise as table_wise

__all__ = [
    "ShardingPlan", "plan", "row_wise", "table_wise", "column_wise", "data_parallel", "shard",
    "ShardedEmbeddingBagCollection", "DistributedModel", "gather_state_dict", "load_checkpoint", "CommStats", "Piece",
    "Sharding", "RowBlock",
]
