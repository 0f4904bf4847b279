"""The float64 reference of every fused update: the semantics, and the tests' oracle.

Same functions and signatures as the fast backends (see :mod:`embtab.optim`), written
the way the papers write the updates (bias-corrected moments, one row at a time in
vectorised form) and computed in float64 whatever the weight's dtype; results are
rounded to the weight's (and state's) dtype once, at the end. Slow on purpose.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._fused import FusedHyper

name = "reference"

f64 = torch.float64


@torch.no_grad()
def fused_update(weight: Tensor, state: dict[str, Tensor], rows: Tensor, grads: Tensor, hyper: FusedHyper) -> None:
    """One step of ``hyper.kind`` on the distinct ``rows`` (U,) with summed gradients ``grads`` (U, D)."""
    if rows.numel() == 0:
        return
    rows = rows.to(torch.int64)
    if torch.unique(rows).numel() != rows.numel():
        raise ValueError("reference.fused_update: rows must be distinct (sum duplicate gradients first)")
    w = weight[rows].to(f64)
    g = grads.to(f64)
    lr, eps, wd, kind = hyper.lr, hyper.eps, hyper.weight_decay, hyper.kind
    if kind in ("sgd", "adagrad", "rowwise_adagrad", "adam") and wd:
        g = g + wd * w  # L2 weight decay, looked-up rows only
    if kind == "sgd":
        w = w - lr * g
    elif kind == "adagrad":
        s = state["sum"][rows].to(f64) + g**2
        w = w - lr * g / (torch.sqrt(s) + eps)
        state["sum"][rows] = s.to(state["sum"].dtype)
    elif kind == "rowwise_adagrad":
        s = state["sum"][rows].to(f64) + (g**2).mean(dim=1)
        w = w - (lr / (torch.sqrt(s) + eps)).unsqueeze(1) * g
        state["sum"][rows] = s.to(state["sum"].dtype)
    elif kind in ("adam", "adamw"):
        t = (state["step"][rows] + 1).to(f64).unsqueeze(1)  # this row's own step count
        if kind == "adamw":
            w = w - lr * wd * w  # decoupled decay
        m = hyper.beta1 * state["exp_avg"][rows].to(f64) + (1 - hyper.beta1) * g
        v = hyper.beta2 * state["exp_avg_sq"][rows].to(f64) + (1 - hyper.beta2) * g**2
        m_hat = m / (1 - hyper.beta1**t)
        v_hat = v / (1 - hyper.beta2**t)
        w = w - lr * m_hat / (torch.sqrt(v_hat) + eps)
        state["exp_avg"][rows] = m.to(state["exp_avg"].dtype)
        state["exp_avg_sq"][rows] = v.to(state["exp_avg_sq"].dtype)
        state["step"][rows] = t.squeeze(1).to(torch.int64)
    else:
        raise ValueError(f"reference.fused_update: unknown kind {kind!r}")
    weight[rows] = w.to(weight.dtype)


def segment_update(
    weight: Tensor, state: dict[str, Tensor], rows: Tensor, starts: Tensor, order: Tensor, src: Tensor,
    scale: Tensor | None, grad_flat: Tensor, hyper: FusedHyper, scale_grad_by_freq: bool,
) -> None:
    """Sum each row's occurrences in float64, one row at a time, then :func:`fused_update`."""
    dim = weight.shape[1]
    grads = torch.zeros(rows.numel(), dim, dtype=f64, device=weight.device)
    for u in range(rows.numel()):
        for k in range(int(starts[u]), int(starts[u + 1])):
            j = int(order[k])
            o = int(src[j])
            g = grad_flat[o:o + dim].to(f64)
            grads[u] += g if scale is None else float(scale[j]) * g
        if scale_grad_by_freq:
            grads[u] /= int(starts[u + 1]) - int(starts[u])
    fused_update(weight, state, rows, grads, hyper)
