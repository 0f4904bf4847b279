"""The autograd path we own: one ``torch.autograd.Function`` per lookup kind.

Each calls the selected backend's forward and backward, so every backend shares
the same gradient plumbing (dense or sparse COO weight gradients, per-sample-weight
gradients) and a faster backend only has to provide kernels.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch.autograd.function import once_differentiable


def _unit_column_stride(grad: torch.Tensor) -> torch.Tensor:
    """A bag gradient whose rows may stay strided (a column slice of a concat, the usual
    case): backends and the fused update take a row stride, and a copy here would cost
    a fresh allocation every step."""
    return grad if grad.stride(-1) == 1 else grad.contiguous()


def _bag_forward(
    ctx: Any, weight: torch.Tensor, per_sample_weights: torch.Tensor | None, ids: torch.Tensor,
    offsets: torch.Tensor, backend: ModuleType, mode: str, padding_idx: int | None, scale_grad_by_freq: bool,
) -> torch.Tensor:
    """The forward of both bag Functions: the backend's lookup, and what a backward reads."""
    out, aux = backend.embedding_bag_forward(weight, ids, offsets, mode, per_sample_weights, padding_idx)
    # The weight is only needed for the per-sample-weights gradient.
    need_psw = per_sample_weights is not None and ctx.needs_input_grad[1]
    ctx.save_for_backward(weight if need_psw else None, per_sample_weights, ids, offsets, *aux)
    ctx.backend, ctx.mode, ctx.padding_idx = backend, mode, padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq
    ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
    return out


class EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: torch.Tensor,  # (V, D)
        ids: torch.Tensor,  # (*)
        backend: ModuleType,
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> torch.Tensor:  # (*, D)
        ctx.save_for_backward(ids)
        ctx.backend = backend
        ctx.num_weights = weight.shape[0]
        ctx.padding_idx, ctx.scale_grad_by_freq, ctx.sparse = padding_idx, scale_grad_by_freq, sparse
        return backend.embedding_forward(weight, ids)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (ids,) = ctx.saved_tensors
        grad_weight = ctx.backend.embedding_backward(
            grad.contiguous(), ids, ctx.num_weights, ctx.padding_idx, ctx.scale_grad_by_freq, ctx.sparse
        )
        return grad_weight, None, None, None, None, None


class EmbeddingBagFunction(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: torch.Tensor,  # (V, D)
        per_sample_weights: torch.Tensor | None,  # (N,)
        ids: torch.Tensor,  # (N,)
        offsets: torch.Tensor,  # (B + 1,)
        backend: ModuleType,
        mode: str,
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> torch.Tensor:  # (B, D)
        ctx.sparse = sparse
        return _bag_forward(ctx, weight, per_sample_weights, ids, offsets, backend, mode, padding_idx,
                            scale_grad_by_freq)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weight, psw, ids, offsets, *aux = ctx.saved_tensors
        if weight is None:
            # A stand-in with the right shape; backends read only its shape here.
            weight = torch.empty((), dtype=ctx.weight_dtype, device=grad.device).expand(ctx.weight_shape)
        grad = _unit_column_stride(grad)
        grad_weight, grad_psw = ctx.backend.embedding_bag_backward(
            grad, weight, ids, offsets, tuple(aux), ctx.mode, psw, ctx.padding_idx,
            ctx.scale_grad_by_freq, ctx.sparse, ctx.needs_input_grad[0], ctx.needs_input_grad[1],
        )
        return grad_weight, grad_psw, None, None, None, None, None, None, None


# --- fused optimizers: backward updates the weight instead of returning its gradient ----


class FusedEmbeddingFunction(torch.autograd.Function):
    """``EmbeddingFunction`` whose backward hands the gradient to a fused optimizer.

    ``fused`` (an ``embtab.optim._fused.FusedTarget``) updates the looked-up rows in
    place; the weight's gradient is None, so no dense or sparse gradient is built.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: torch.Tensor,  # (V, D)
        ids: torch.Tensor,  # (*)
        backend: ModuleType,
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        fused: Any,
    ) -> torch.Tensor:  # (*, D)
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.scale_grad_by_freq, ctx.fused = padding_idx, scale_grad_by_freq, fused
        return backend.embedding_forward(weight, ids)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (ids,) = ctx.saved_tensors
        ctx.fused.embedding_backward(grad, ids, ctx.padding_idx, ctx.scale_grad_by_freq)
        return None, None, None, None, None, None


class FusedEmbeddingBagFunction(torch.autograd.Function):
    """``EmbeddingBagFunction`` whose backward hands the gradient to a fused optimizer.

    The per-sample-weights gradient is computed first, from the weight as the forward
    saw it; then ``fused.bag_backward`` updates the rows. For ``mode="max"`` the
    backend's ``aux[2]`` must be the (B, D) rows that gave each maximum.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: torch.Tensor,  # (V, D)
        per_sample_weights: torch.Tensor | None,  # (N,)
        ids: torch.Tensor,  # (N,)
        offsets: torch.Tensor,  # (B + 1,)
        backend: ModuleType,
        mode: str,
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        fused: Any,
    ) -> torch.Tensor:  # (B, D)
        ctx.fused = fused
        return _bag_forward(ctx, weight, per_sample_weights, ids, offsets, backend, mode, padding_idx,
                            scale_grad_by_freq)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        weight, psw, ids, offsets, *aux = ctx.saved_tensors
        grad = _unit_column_stride(grad)
        grad_psw = None
        if ctx.needs_input_grad[1]:
            _, grad_psw = ctx.backend.embedding_bag_backward(
                grad, weight, ids, offsets, tuple(aux), ctx.mode, psw, ctx.padding_idx,
                ctx.scale_grad_by_freq, False, False, True,
            )
        max_rows = aux[2] if ctx.mode == "max" else None
        ctx.fused.bag_backward(grad, ids, offsets, max_rows, ctx.mode, psw, ctx.padding_idx, ctx.scale_grad_by_freq)
        return None, grad_psw, None, None, None, None, None, None, None
