"""The float64 reference of every row update: the semantics, and the tests' oracle.

Same functions and signatures as the fast update backends (see ``ops/registry.py``), written
the way the papers write the updates (bias-corrected moments, one row at a time in
vectorised form) and computed in float64 whatever the weight's dtype; results are
rounded to the weight's (and state's) dtype once, at the end. Slow on purpose.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .common import Hyper, TableJob, state_slots

name = "reference"

f64 = torch.float64


@torch.no_grad()
def fused_update(weight: Tensor, state: dict[str, Tensor], rows: Tensor, grads: Tensor, hyper: Hyper) -> None:
    """One step of ``hyper.kind`` on the distinct ``rows`` (U,) with summed gradients ``grads`` (U, D)."""
    if rows.numel() == 0:
        return
    rows = rows.to(torch.int64)
    if torch.unique(rows).numel() != rows.numel():
        raise ValueError("reference.fused_update: rows must be distinct (sum duplicate gradients first)")
    w = weight[rows].to(f64)
    g = grads.to(f64)
    s1, s2, steps = state_slots(hyper.kind, state)
    lr, eps, wd, kind = hyper.lr, hyper.eps, hyper.weight_decay, hyper.kind
    if kind in ("sgd", "adagrad", "rowwise_adagrad", "adam") and wd:
        g = g + wd * w  # L2 weight decay, looked-up rows only
    if kind == "sgd":
        w = w - lr * g
    elif kind == "adagrad":
        s = s1[rows].to(f64) + g**2  # type: ignore[index]
        w = w - lr * g / (torch.sqrt(s) + eps)
        s1[rows] = s.to(s1.dtype)  # type: ignore[index,union-attr]
    elif kind == "rowwise_adagrad":
        s = s1[rows].to(f64) + (g**2).mean(dim=1)  # type: ignore[index]
        w = w - (lr / (torch.sqrt(s) + eps)).unsqueeze(1) * g
        s1[rows] = s.to(s1.dtype)  # type: ignore[index,union-attr]
    elif kind in ("adam", "adamw"):
        t = (steps[rows] + 1).to(f64).unsqueeze(1)  # type: ignore[index]  # this row's own step count
        if kind == "adamw":
            w = w - lr * wd * w  # decoupled decay
        m = hyper.beta1 * s1[rows].to(f64) + (1 - hyper.beta1) * g  # type: ignore[index]
        v = hyper.beta2 * s2[rows].to(f64) + (1 - hyper.beta2) * g**2  # type: ignore[index]
        m_hat = m / (1 - hyper.beta1**t)
        v_hat = v / (1 - hyper.beta2**t)
        w = w - lr * m_hat / (torch.sqrt(v_hat) + eps)
        s1[rows] = m.to(s1.dtype)  # type: ignore[index,union-attr]
        s2[rows] = v.to(s2.dtype)  # type: ignore[index,union-attr]
        steps[rows] = t.squeeze(1).to(torch.int64)  # type: ignore[index]
    else:
        raise ValueError(f"reference.fused_update: unknown kind {kind!r}")
    weight[rows] = w.to(weight.dtype)


def run_jobs(jobs: Sequence[TableJob], hyper: Hyper) -> None:
    """Every job's update: its occurrences summed in float64, one row at a time, then
    :func:`fused_update`."""
    from .update_torch import merge_rows, plan

    for job in jobs:
        dim = job.weight.shape[1]
        parts_rows, parts_grads = [], []
        if job.sources:
            ids, src, scale = job.occurrences()
            rows, starts, order = plan(ids, job.padding_idx)
            grads = torch.zeros(rows.numel(), dim, dtype=f64, device=job.weight.device)
            for u in range(rows.numel()):
                for k in range(int(starts[u]), int(starts[u + 1])):
                    j = int(order[k])
                    o = int(src[j])
                    g = job.grad_flat[o:o + dim].to(f64)  # type: ignore[index]
                    grads[u] += g if scale is None else float(scale[j]) * g
                if job.scale_grad_by_freq:
                    grads[u] /= int(starts[u + 1]) - int(starts[u])
            parts_rows.append(rows)
            parts_grads.append(grads)
        if job.rows is not None:
            parts_rows.append(job.rows.to(torch.int64))
            parts_grads.append(job.grads.to(f64))  # type: ignore[union-attr]
        if not parts_rows:
            continue
        rows, grads = (parts_rows[0], parts_grads[0]) if len(parts_rows) == 1 else merge_rows(parts_rows, parts_grads, dim)
        fused_update(job.weight, job.state, rows, grads, hyper)
