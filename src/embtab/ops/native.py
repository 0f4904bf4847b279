"""The ``"torch"`` backend: torch's own ATen kernels, called from our autograd path.

On CPU these kernels are the fastest tool for a plain lookup and its gradient, so
the default CPU path uses them directly (same signatures as ``ops/reference.py``).
They do not understand ``SKIP`` ids; the lookup pipeline compacts those away before
calling a backend with ``supports_skip = False``. Where ATen's own differentiable ops
compute exactly what this backend's forward and backward do, the pipeline calls those
(one C++ autograd node instead of a Python one; see ``tables/pipeline.py``).
"""

from __future__ import annotations

import torch

from .common import MODE_CODES, BagAux

name = "torch"
supports_skip = False
# Its kernels raise on an out-of-range id (without naming it), so the functional layer
# may let them check and name the id only on failure.
checks_bounds = True

_aten = torch.ops.aten


def embedding_forward(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.embedding(weight, ids)  # the C++ binding: half the call overhead of torch.ops.aten


def embedding_backward(
    grad: torch.Tensor,
    ids: torch.Tensor,
    num_weights: int,
    padding_idx: int | None,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> torch.Tensor:
    pad = -1 if padding_idx is None else padding_idx
    if sparse:
        # Flatten: the sparse kernel's padding filter fails on 0-d ids.
        flat_grad = grad.reshape(-1, grad.shape[-1])
        return _aten.embedding_sparse_backward(flat_grad, ids.reshape(-1), num_weights, pad, scale_grad_by_freq)
    return _aten.embedding_dense_backward(grad, ids, num_weights, pad, scale_grad_by_freq)


def embedding_bag_forward(
    weight: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int | None,
) -> tuple[torch.Tensor, BagAux]:
    pad = -1 if padding_idx is None else padding_idx
    # include_last_offset=True: our canonical offsets end with N.
    out, offset2bag, bag_size, max_indices = torch._embedding_bag(
        weight, ids.contiguous(), offsets, False, MODE_CODES[mode], False, per_sample_weights, True, pad
    )
    return out, BagAux(offset2bag, bag_size, max_indices)


def embedding_bag_inference(
    weight: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int | None,
) -> torch.Tensor:
    pad = -1 if padding_idx is None else padding_idx
    # torch's own no-grad kernel: no offset2bag, bag sizes or max indices to build.
    return torch._embedding_bag_forward_only(
        weight, ids, offsets, False, MODE_CODES[mode], False, per_sample_weights, True, pad
    )[0]


def embedding_bag_backward(
    grad: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    aux: BagAux,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int | None,
    scale_grad_by_freq: bool,
    sparse: bool,
    need_weight_grad: bool,
    need_psw_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    offset2bag, bag_size, max_indices = aux.bag, aux.counts, aux.max_rows
    pad = -1 if padding_idx is None else padding_idx
    # (no copy: the kernels take a strided grad, e.g. a column slice of a concat)
    grad_weight = grad_psw = None
    if need_weight_grad:
        grad_weight = _aten._embedding_bag_backward(
            grad, ids.contiguous(), offsets, offset2bag, bag_size, max_indices, weight.shape[0],
            False, MODE_CODES[mode], sparse, per_sample_weights, pad,
        )
        if scale_grad_by_freq:
            # torch's CPU kernel divides by the count of the wrong id (it indexes the
            # sorted ids by unique-run number; torch 2.13, EmbeddingBag.cpp). Every
            # occurrence of a row has the same count, so scaling the summed row is exact.
            counts = torch.bincount(ids.to(torch.int64), minlength=weight.shape[0]).clamp_min(1)
            grad_weight = grad_weight / counts.to(grad_weight.dtype).unsqueeze(1)
    if need_psw_grad:
        grad_psw = _aten._embedding_bag_per_sample_weights_backward(
            grad, weight, ids.contiguous(), offsets, offset2bag, MODE_CODES[mode], pad
        )
    return grad_weight, grad_psw


@torch.no_grad()
def renorm_(weight: torch.Tensor, ids: torch.Tensor, max_norm: float, norm_type: float) -> None:
    torch.embedding_renorm_(weight, ids.contiguous(), max_norm, norm_type)
