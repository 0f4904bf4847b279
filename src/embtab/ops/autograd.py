"""The autograd path we own: one ``torch.autograd.Function`` per lookup kind.

Each calls the chosen backend's forward and backward kernels, so every backend shares
the same gradient plumbing and a faster backend only has to provide kernels. Backward
either returns weight gradients (dense or sparse COO) or, with a fused optimizer,
hands the table's row gradients to it (:class:`Fused`): the optimizer merges every
contribution of one backward pass per table and applies one update when the pass ends
(see ``embtab/optim/optimizer.py``).

- :class:`EmbeddingFunction`: an unpooled lookup. Its dense gradient is differentiable
  (a gradient penalty's second derivative is torch's).
- :class:`BagsFunction`: any number of pooled features over any number of tables, one
  node, output ``(B, sum of D)``: the collection's forward, and a single ``EmbeddingBag``'s.
  Bags have no second derivative (torch has none either): differentiating their
  gradient raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .common import BagAux, acc_dtype, bag_of, kept_mask

if TYPE_CHECKING:
    from ..tables.pipeline import Feature
    from ..tables.spec import TableSpec
    from .registry import Backend


class Fused(NamedTuple):
    """Whom a backward hands row gradients to: a fused optimizer and the table it updates."""

    optimizer: Any  # embtab.optim.FusedOptimizer
    table: Any  # the module holding the weight and the optimizer state


def _unit_column_stride(grad: Tensor) -> Tensor:
    """A bag gradient whose rows may stay strided (a column slice of a concat, the usual
    case): backends and the fused update take a row stride, and a copy here would cost
    a fresh allocation every step."""
    return grad if grad.stride(-1) == 1 else grad.contiguous()


def _trains(ctx: Any, tensor_index: int) -> bool:
    """Whether this backward pass trains the weight that is the node's ``tensor_index``-th tensor
    input (its edges list tensor inputs only): ``loss.backward()``
    or ``backward(inputs=...)`` naming it, not ``torch.autograd.grad`` (a gradient asked for, e.g.
    of per-sample weights or for a penalty). The node's own edge is the weight's accumulator.
    A compiled graph's backward cannot ask; a compiled training step trains its tables."""
    if torch.compiler.is_compiling():
        return True
    try:
        return torch._C._will_engine_execute_node(ctx.next_functions[tensor_index][0])
    except RuntimeError:  # torch.autograd.grad() is running (the engine says so for leaves)
        return False


def _deposit_bags(fused: Fused, ids: Tensor, ends: Tensor, grad: Tensor, mean: bool, psw: Tensor | None) -> None:
    if torch.compiler.is_compiling():
        from . import compiled

        compiled.deposit_bags(fused, ids, ends, grad, mean, psw)
    else:
        fused.optimizer._deposit_bags(fused.table, ids, ends, grad, mean, psw)


def _deposit_rows(fused: Fused, rows: Tensor, grads: Tensor) -> None:
    if torch.compiler.is_compiling():
        from . import compiled

        compiled.deposit_rows(fused, rows, grads)
    else:
        fused.optimizer._deposit_rows(fused.table, rows, grads)


# --- unpooled ---------------------------------------------------------------------------------


class EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weight: Tensor, ids: Tensor, backend: Backend, spec: TableSpec, fused: Fused | None,
    ) -> Tensor:  # (*ids.shape, D)
        ctx.save_for_backward(ids)
        ctx.backend, ctx.spec, ctx.fused, ctx.num_weights = backend, spec, fused, weight.shape[0]
        return backend.lookup.embedding_forward(weight, ids)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        (ids,) = ctx.saved_tensors
        spec: TableSpec = ctx.spec
        if ctx.fused is not None:
            if not _trains(ctx, 0):
                return None, None, None, None, None
            dim = grad.shape[-1]
            flat = ids.reshape(-1)
            ends = torch.arange(flat.numel() + 1, device=ids.device)  # a bag per id
            _deposit_bags(ctx.fused, flat, ends, grad.reshape(-1, dim), False, None)
            return None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True: the gradient itself is differentiable
            grad_weight = EmbeddingBackward.apply(grad, ids, ctx.backend, spec, ctx.num_weights)
        else:
            grad_weight = ctx.backend.lookup.embedding_backward(
                grad.contiguous(), ids, ctx.num_weights, spec.padding_idx, spec.scale_grad_by_freq, spec.sparse
            )
        return grad_weight, None, None, None, None


class EmbeddingBackward(torch.autograd.Function):
    """The weight gradient of an unpooled lookup, as a function of the output gradient.

    It is linear in ``grad``: its own backward gathers the incoming (V, D) gradient at
    the ids, padding rows excluded, as torch's ``embedding_dense_double_backward`` does
    (which, like this, leaves ``scale_grad_by_freq`` out).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, grad: Tensor, ids: Tensor, backend: Backend, spec: TableSpec, num_weights: int,
    ) -> Tensor:
        if spec.sparse:
            raise RuntimeError(
                "embtab: a second derivative through a sparse=True embedding gradient is not supported "
                "(torch has none either); use sparse=False"
            )
        ctx.save_for_backward(ids)
        ctx.backend, ctx.spec = backend, spec
        return backend.lookup.embedding_backward(
            grad.contiguous(), ids, num_weights, spec.padding_idx, spec.scale_grad_by_freq, False
        )

    @staticmethod
    def backward(ctx: Any, grad_grad: Tensor) -> tuple[Any, ...]:
        (ids,) = ctx.saved_tensors
        spec: TableSpec = ctx.spec
        out = EmbeddingFunction.apply(grad_grad, ids, ctx.backend, spec, None)  # (*ids.shape, D)
        keep = kept_mask(ids, spec.padding_idx).to(out.dtype)
        return out * keep.unsqueeze(-1), None, None, None, None


# --- bags -----------------------------------------------------------------------------------------


_EMPTY = torch.empty(0, dtype=torch.int64)
_NO_AUX = BagAux(_EMPTY, _EMPTY, _EMPTY)


class BagsPlan:
    """The non-tensor part of a pooled lookup: the prepared features and their tables.

    ``weights`` holds each distinct weight once (features sharing a table share it);
    ``table_of[i]`` is feature i's index in it.
    """

    def __init__(self, features: Sequence[Feature], optimizer: Any,
                 pooled: Callable[[], tuple[Tensor, list[BagAux]]] | None = None) -> None:
        self.features = list(features)
        self.optimizer = optimizer
        self.pooled = pooled  # every feature in one batched call (see tables.pipeline), or None
        self.weights: list[Tensor] = []
        self.table_of: list[int] = []
        seen: dict[int, int] = {}
        for f in self.features:
            key = id(f.weight)
            if key not in seen:
                seen[key] = len(self.weights)
                self.weights.append(f.weight)
            self.table_of.append(seen[key])
        self.dims = [f.weight.shape[1] for f in self.features]
        self.cols = [sum(self.dims[:i]) for i in range(len(self.dims))]
        self.aux: list[BagAux] = []


class BagsFunction(torch.autograd.Function):
    """Every feature of a :class:`BagsPlan` in one node: forward ``(B, sum of D)``; backward
    per-sample-weight gradients, then weight gradients (summed over the features that
    share a table) or row gradients for the fused optimizer."""

    @staticmethod
    def forward(ctx: Any, plan: BagsPlan, *tensors: Tensor | None) -> Tensor:  # type: ignore[override]
        num_tables = len(plan.weights)
        # The weights are needed by the per-sample-weights gradient only.
        need = [ctx.needs_input_grad[1 + num_tables + i] for i in range(len(plan.features))]
        if plan.pooled is not None:
            full, plan.aux = plan.pooled()
        else:
            outs = []
            for i, f in enumerate(plan.features):
                b, lookup, spec = f.bags, f.backend.lookup, f.spec
                if plan.optimizer is not None and spec.mode != "max" and not need[i]:
                    # A fused update reads only the ids and offsets: the no-grad kernel will do.
                    out, aux = lookup.embedding_bag_inference(f.weight, b.ids, b.ends, spec.mode, b.psw,
                                                              spec.padding_idx), _NO_AUX
                else:
                    out, aux = lookup.embedding_bag_forward(f.weight, b.ids, b.ends, spec.mode, b.psw, spec.padding_idx)
                outs.append(out)
                plan.aux.append(aux)
            full = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        ctx.save_for_backward(*[w if any(need[i] for i, t in enumerate(plan.table_of) if t == k) else None
                                for k, w in enumerate(plan.weights)])
        ctx.plan = plan
        return full

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        plan: BagsPlan = ctx.plan
        saved = ctx.saved_tensors
        num_tables = len(plan.weights)
        grad_weights: list[Tensor | None] = [None] * num_tables
        grad_psws: list[Tensor | None] = [None] * len(plan.features)
        fused = plan.optimizer is not None
        for i, f in enumerate(plan.features):
            b, spec, aux, t = f.bags, f.spec, plan.aux[i], plan.table_of[i]
            g = _unit_column_stride(grad if len(plan.features) == 1 else grad[:, plan.cols[i]:plan.cols[i] + plan.dims[i]])
            need_w = ctx.needs_input_grad[1 + t] and not (fused and f.table is not None)
            need_psw = ctx.needs_input_grad[1 + num_tables + i]
            if need_w or need_psw:
                weight = saved[t] if saved[t] is not None else _shape_only(f.weight)
                gw, gp = f.backend.lookup.embedding_bag_backward(
                    g, weight, b.ids, b.ends, aux, spec.mode, b.psw, spec.padding_idx, spec.scale_grad_by_freq,
                    spec.sparse, need_w, need_psw,
                )
                grad_psws[i] = gp
                if gw is not None:
                    grad_weights[t] = gw if grad_weights[t] is None else grad_weights[t] + gw
            if fused and f.weight.requires_grad and f.table is not None and _trains(ctx, t):
                _hand_to_optimizer(Fused(plan.optimizer, f.table), f, g, aux)
        if torch.is_grad_enabled():  # create_graph=True: these gradients have no derivative
            grad_weights = [_NoSecondDerivative.apply(x) if x is not None else None for x in grad_weights]
            grad_psws = [_NoSecondDerivative.apply(x) if x is not None else None for x in grad_psws]
        return (None, *grad_weights, *grad_psws)


def _shape_only(weight: Tensor) -> Tensor:
    # The weight-gradient kernels read only the weight's shape and dtype (the values
    # matter to the per-sample-weights gradient only, which saves the real weight).
    return torch.empty((), dtype=weight.dtype, device=weight.device).expand(weight.shape)


def _hand_to_optimizer(fused: Fused, f: Feature, grad: Tensor, aux: BagAux) -> None:
    b, spec = f.bags, f.spec
    if spec.mode == "max":
        rows, grads = max_rows_grads(b.ids, b.ends, aux.max_rows, grad, spec.padding_idx, acc_dtype(f.weight.dtype))
        _deposit_rows(fused, rows, grads)
    else:
        _deposit_bags(fused, b.ids, b.ends, grad, spec.mode == "mean", b.psw)


def max_rows_grads(
    ids: Tensor, ends: Tensor, max_rows: Tensor, grad: Tensor, padding_idx: int | None, acc: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Touched rows and their summed gradients for max pooling.

    Every looked-up row counts as touched (as for sum/mean), even one that never held a
    maximum: its gradient is zero, but Adam's moments still decay. ``max_rows`` (B, D)
    holds the row that gave each output element (any value in an empty bag).
    """
    kept = kept_mask(ids, padding_idx)
    rows = torch.unique(ids[kept].to(torch.int64))  # (U,) sorted
    dim = grad.shape[1]
    # A bag of only padding/skipped ids also gives zeros and no gradient.
    nonempty = torch.bincount(bag_of(ends, ids.numel())[kept], minlength=ends.numel() - 1) > 0
    hit = nonempty.unsqueeze(1).expand_as(max_rows)
    where = torch.searchsorted(rows, max_rows.to(torch.int64)[hit])
    cols = torch.arange(dim, device=grad.device).expand_as(max_rows)[hit]
    grads = torch.zeros(rows.numel() * dim, dtype=acc, device=grad.device)
    grads.index_add_(0, where * dim + cols, grad[hit].to(acc))
    return rows, grads.reshape(rows.numel(), dim)


class _NoSecondDerivative(torch.autograd.Function):
    """Passes a gradient through, and refuses to be differentiated (torch's bags have no
    double backward either): a clear error instead of a silently wrong second derivative."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x) if not x.is_sparse else x.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        raise RuntimeError(
            "embtab: the gradient of an embedding_bag lookup has no derivative (torch's has none "
            "either: derivative for _embedding_bag_backward is not implemented); a second "
            "derivative through a bag cannot be computed"
        )
