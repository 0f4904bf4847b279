"""``DistributedModel``: a whole model on several processes, tables sharded, the rest in DDP."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import Module
from torch.nn.parallel import DistributedDataParallel

from ..nn.collection import EmbeddingBagCollection
from .plan import ShardingPlan
from .sharded import ShardedEmbeddingBagCollection, shard

__all__ = ["DistributedModel"]


class DistributedModel(Module):
    """``model`` with every :class:`embtab.EmbeddingBagCollection` inside sharded by ``plan``
    and the dense rest wrapped in ``DistributedDataParallel``.

    The collections are replaced in ``model`` itself (``model.tables`` becomes a
    :class:`ShardedEmbeddingBagCollection`); ``plan`` names the tables of all of them.
    DDP averages the dense gradients over the ranks and the sharded collections' fused
    optimizers do the same for the tables, so a step trains on the loss
    ``sum of the ranks' losses / W``. DDP ignores the sharded tables' parameters and
    buffers (each rank holds other pieces). ``state_dict`` and ``load_state_dict`` are
    ``model``'s: the unsharded model's keys (``ShardedTensor`` values for the tables; see
    :func:`embtab.distributed.gather_state_dict`). Extra keyword arguments go to DDP.

    Example:
        >>> model = ed.DistributedModel(model, ed.plan(model.tables.tables, world_size))  # doctest: +SKIP
        >>> loss = model(batch).sum(); loss.backward(); dense_optimizer.step()          # doctest: +SKIP
    """

    def __init__(self, model: Module, plan: ShardingPlan | dict, process_group: Any = None, *,
                 device: torch.device | str | None = None, **ddp_kwargs: Any) -> None:
        super().__init__()
        plan = plan if isinstance(plan, ShardingPlan) else ShardingPlan(plan)
        if isinstance(model, EmbeddingBagCollection):
            model = shard(model, plan, process_group, device=device)
        else:
            found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
                     if isinstance(child, EmbeddingBagCollection)]
            for parent, name, child in found:
                setattr(parent, name, shard(child, plan, process_group, device=device))
        tables = {t.name for m in model.modules() if isinstance(m, ShardedEmbeddingBagCollection) for t in m.tables}
        unknown = [t for t in plan if t not in tables]
        if unknown:
            raise ValueError(f"ed.DistributedModel: the plan names table {unknown[0]!r}, which no "
                             f"EmbeddingBagCollection of the model has (its tables: {sorted(tables)})")
        self.model = model
        sharded = [name for name, m in model.named_modules() if isinstance(m, ShardedEmbeddingBagCollection)]
        inside = lambda n: any(n == s or n.startswith(s + ".") or not s for s in sharded)  # noqa: E731
        ignore = [n for n, _ in [*model.named_parameters(), *model.named_buffers()] if inside(n)]
        dense = any(p.requires_grad for n, p in model.named_parameters() if not inside(n))
        ddp = None
        if dense:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
            ddp = DistributedDataParallel(model, process_group=process_group, **ddp_kwargs)
        object.__setattr__(self, "ddp", ddp)  # not a child: parameters and keys stay model's

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self.ddp if self.ddp is not None else self.model)(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Any, strict: bool = True, assign: bool = False,
    ) -> Any:
        return self.model.load_state_dict(state_dict, strict, assign)
