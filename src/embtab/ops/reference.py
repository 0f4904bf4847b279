"""Pure-PyTorch reference backend: the semantics of every lookup, and the test oracle.

Built from primitive tensor ops (index_select, index_add_, scatter_reduce_, bincount),
never ``F.embedding``/``F.embedding_bag``, so it is an independent statement of what
torch computes. Every lookup backend implements the same functions with the same
signatures (see ``ops/registry.py``); the tests hold each of them to this one, and
this one to ``torch.nn``. The conventions (SKIP ids, canonical offsets, padding,
accumulation dtype) are in ``ops/common.py``. Ids reach a backend resolved (valid
rows or SKIP), except that a backend with ``checks_bounds`` may get the raw ids of a
table whose policy refuses out-of-range ids (see ``embtab/ids/policies.py``).
"""

from __future__ import annotations

import torch

from .common import BagAux, acc_dtype, bag_of, kept_mask

name = "reference"
supports_skip = True


def _assemble_grad(
    rows: torch.Tensor,  # (M,) ids of the gradient rows
    grads: torch.Tensor,  # (M, D) in the accumulation dtype
    num_weights: int,
    dtype: torch.dtype,
    sparse: bool,
) -> torch.Tensor:
    if sparse:
        # Uncoalesced, one entry per contributing id, as torch returns it.
        return torch.sparse_coo_tensor(
            rows.reshape(1, -1).to(torch.int64), grads.to(dtype), (num_weights, grads.shape[1]),
            check_invariants=False,  # indices come from validated ids
        )
    out = torch.zeros(num_weights, grads.shape[1], dtype=grads.dtype, device=grads.device)
    out.index_add_(0, rows.to(torch.int64), grads)
    return out.to(dtype)


def _freq_scale(ids: torch.Tensor, keep: torch.Tensor, num_weights: int, dtype: torch.dtype) -> torch.Tensor:
    """1 / (occurrences of each id in the whole input), for scale_grad_by_freq; (K, 1)."""
    counts = torch.bincount(ids[ids >= 0].to(torch.int64), minlength=num_weights)
    return 1.0 / counts[ids[keep].to(torch.int64)].to(dtype).unsqueeze(1)


# --- Embedding ------------------------------------------------------------------------


def embedding_forward(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    flat = ids.reshape(-1)
    skip = flat < 0
    out = weight.index_select(0, flat.clamp_min(0).to(torch.int64))  # (N, D)
    out = out.masked_fill(skip.unsqueeze(1), 0)
    return out.reshape(*ids.shape, weight.shape[1])


def embedding_backward(
    grad: torch.Tensor,  # (*ids.shape, D)
    ids: torch.Tensor,
    num_weights: int,
    padding_idx: int | None,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> torch.Tensor:
    flat = ids.reshape(-1)
    g = grad.reshape(-1, grad.shape[-1]).to(acc_dtype(grad.dtype))  # (N, D)
    keep = kept_mask(flat, padding_idx)
    rows, g = flat[keep], g[keep]
    if scale_grad_by_freq:
        g = g * _freq_scale(flat, keep, num_weights, g.dtype)
    return _assemble_grad(rows, g, num_weights, grad.dtype, sparse)


# --- EmbeddingBag ---------------------------------------------------------------------


def embedding_bag_forward(
    weight: torch.Tensor,  # (V, D)
    ids: torch.Tensor,  # (N,)
    offsets: torch.Tensor,  # (B + 1,)
    mode: str,
    per_sample_weights: torch.Tensor | None,  # (N,) or None
    padding_idx: int | None,
) -> tuple[torch.Tensor, BagAux]:
    num_bags, dim = offsets.numel() - 1, weight.shape[1]
    acc = acc_dtype(weight.dtype)
    bag = bag_of(offsets, ids.numel())  # (N,)
    keep = kept_mask(ids, padding_idx)
    kbag, kids = bag[keep], ids[keep].to(torch.int64)
    rows = weight.index_select(0, kids).to(acc)  # (K, D)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights[keep].to(acc).unsqueeze(1)
    counts = torch.bincount(kbag, minlength=num_bags)  # (B,) ids that count per bag
    if mode == "max":
        out = torch.full((num_bags, dim), float("-inf"), dtype=acc, device=weight.device)
        out.scatter_reduce_(0, kbag.unsqueeze(1).expand(-1, dim), rows, "amax")
        # Gradient goes to the first id that reaches the maximum (torch's tie rule).
        position = torch.arange(kids.numel(), device=weight.device).unsqueeze(1).expand(-1, dim)
        at_max = rows == out[kbag]
        first = torch.full((num_bags, dim), kids.numel(), dtype=torch.int64, device=weight.device)
        first.scatter_reduce_(0, kbag.unsqueeze(1).expand(-1, dim), position.masked_fill(~at_max, kids.numel()), "amin")
        empty = (counts == 0).unsqueeze(1)
        out = out.masked_fill(empty, 0)
        max_rows = torch.cat([kids, kids.new_full((1,), -1)])[first]  # (B, D), -1 for empty bags
        return out.to(weight.dtype), BagAux(bag, counts, max_rows)
    out = torch.zeros(num_bags, dim, dtype=acc, device=weight.device)
    out.index_add_(0, kbag, rows)
    if mode == "mean":
        out = out / counts.clamp_min(1).to(acc).unsqueeze(1)
    return out.to(weight.dtype), BagAux(bag, counts, bag.new_empty(0))


def embedding_bag_inference(
    weight: torch.Tensor,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    per_sample_weights: torch.Tensor | None,
    padding_idx: int | None,
) -> torch.Tensor:
    """The output of :func:`embedding_bag_forward` alone, when no gradient will be asked for
    (a backend may skip what only the backward needs)."""
    return embedding_bag_forward(weight, ids, offsets, mode, per_sample_weights, padding_idx)[0]


def embedding_bag_backward(
    grad: torch.Tensor,  # (B, D)
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
    num_weights, dim = weight.shape
    acc = acc_dtype(grad.dtype)
    g = grad.to(acc)
    bag, counts = aux.bag, aux.counts
    keep = kept_mask(ids, padding_idx)
    grad_weight = grad_psw = None
    if mode == "max":
        if need_weight_grad:
            max_rows = aux.max_rows  # (B, D)
            hit = max_rows >= 0
            cols = torch.arange(dim, device=grad.device).expand_as(max_rows)
            flat = torch.zeros(num_weights * dim, dtype=acc, device=grad.device)
            flat.index_add_(0, (max_rows * dim + cols)[hit], g[hit])
            grad_weight = flat.reshape(num_weights, dim).to(grad.dtype)
        return grad_weight, None
    kbag, kids = bag[keep], ids[keep]
    per_id = g[kbag]  # (K, D): the gradient each kept id receives
    if mode == "mean":
        per_id = per_id / counts[kbag].to(acc).unsqueeze(1)
    if need_psw_grad:
        dots = (per_id * weight.index_select(0, kids.to(torch.int64)).to(acc)).sum(1)
        grad_psw = torch.zeros(ids.numel(), dtype=acc, device=grad.device)
        grad_psw[keep] = dots
        grad_psw = grad_psw.to(grad.dtype)
    if need_weight_grad:
        if per_sample_weights is not None:
            per_id = per_id * per_sample_weights[keep].to(acc).unsqueeze(1)
        if scale_grad_by_freq:
            per_id = per_id * _freq_scale(ids, keep, num_weights, acc)
        grad_weight = _assemble_grad(kids, per_id, num_weights, grad.dtype, sparse)
    return grad_weight, grad_psw


# --- max_norm ---------------------------------------------------------------------------


@torch.no_grad()
def renorm_(weight: torch.Tensor, ids: torch.Tensor, max_norm: float, norm_type: float) -> None:
    """Rescale, in place, each referenced row whose norm exceeds ``max_norm`` to ``max_norm``.

    The scale is ``max_norm / (norm + 1e-7)``, torch's formula, so rows land just
    below ``max_norm``. The rounding follows torch's too: the norm is rounded to the
    weight's dtype, the comparison and the scale are computed in float64, and the scale
    is applied in the accumulation dtype. Bit-equal rows matter: in ``mode="max"`` two
    rows renormalised to the same length can tie, and the tie decides the gradient.
    """
    rows = torch.unique(ids[ids >= 0]).to(torch.int64)
    if rows.numel() == 0:
        return
    acc = acc_dtype(weight.dtype)
    values = weight.index_select(0, rows)
    norms = torch.linalg.vector_norm(values.to(acc), ord=norm_type, dim=1).to(weight.dtype).double()
    over = norms > max_norm
    # A tensor numerator: `scalar / tensor` is computed as `scalar * (1 / tensor)`,
    # one rounding more than torch's kernel makes. Half types scale in their own dtype,
    # as `row *= scale` does there.
    scale = torch.full_like(norms[over], max_norm) / (norms[over] + 1e-7)
    scale = scale.to(weight.dtype).to(acc)
    weight.index_copy_(0, rows[over], (values[over].to(acc) * scale.unsqueeze(1)).to(weight.dtype))
