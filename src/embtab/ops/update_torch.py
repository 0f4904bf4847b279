"""Row updates in torch ops: any device and dtype (the ``"torch"`` update backend).

Same functions and signatures as the other update backends (see ``ops/registry.py``). Rows
are gathered with ``index_select``, updated with a few vectorised ops in the
accumulation dtype (float32 for 16-bit weights), and written back with
``index_copy_``: correct everywhere, several passes over the touched rows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .common import Hyper, TableJob, acc_dtype, kept_mask, state_slots

name = "torch"


def plan(ids: Tensor, padding_idx: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Distinct kept rows (U,) ascending, segment starts (U + 1,), occurrence order (M,).

    The occurrences of ``rows[u]`` are positions ``order[starts[u]:starts[u + 1]]`` of ``ids``,
    in increasing position (a stable sort).
    """
    flat = ids.reshape(-1)
    positions = kept_mask(flat, padding_idx).nonzero().squeeze(1)  # (M,)
    sorted_ids, perm = torch.sort(flat[positions].to(torch.int64), stable=True)
    order = positions[perm]
    rows, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    starts = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(counts, 0, out=starts[1:])
    return rows, starts, order


def segment_sum(
    rows: Tensor, starts: Tensor, order: Tensor, src: Tensor, scale: Tensor | None, grad_flat: Tensor,
    dim: int, scale_grad_by_freq: bool,
) -> Tensor:
    """(U, dim) summed gradient rows: row u sums ``scale[j] * grad_flat[src[j]:src[j] + dim]``."""
    acc = acc_dtype(grad_flat.dtype)
    counts = starts[1:] - starts[:-1]  # (U,)
    offsets = src[order]  # (M,)
    per_occurrence = grad_flat[offsets.unsqueeze(1) + torch.arange(dim, device=grad_flat.device)].to(acc)  # (M, D)
    if scale is not None:
        per_occurrence = per_occurrence * scale[order].to(acc).unsqueeze(1)
    segment = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts, output_size=order.numel())
    out = torch.zeros(rows.numel(), dim, dtype=acc, device=grad_flat.device)
    out.index_add_(0, segment, per_occurrence)
    if scale_grad_by_freq:
        out /= counts.to(acc).unsqueeze(1)
    return out


@torch.no_grad()
def fused_update(weight: Tensor, state: dict[str, Tensor], rows: Tensor, grads: Tensor, hyper: Hyper) -> None:
    """Apply one step of ``hyper.kind`` to ``weight[rows]`` (and its state) given summed ``grads``."""
    if rows.numel() == 0:
        return
    acc = acc_dtype(weight.dtype)
    rows = rows.to(torch.int64)
    w = weight.index_select(0, rows).to(acc)  # (U, D)
    g = grads.to(acc)
    lr, eps, wd = hyper.lr, hyper.eps, hyper.weight_decay
    kind = hyper.kind
    if kind != "adamw" and wd:
        g = g + wd * w
    s1, s2, steps = state_slots(kind, state)
    if kind == "sgd":
        w -= lr * g
    elif kind == "adagrad":
        s = s1.index_select(0, rows) + g * g
        s1.index_copy_(0, rows, s)
        w -= lr * g / (s.sqrt() + eps)
    elif kind == "rowwise_adagrad":
        s = s1.index_select(0, rows) + (g * g).mean(1)
        s1.index_copy_(0, rows, s)
        w -= (lr / (s.sqrt() + eps)).unsqueeze(1) * g
    elif kind in ("adam", "adamw"):
        step = steps.index_select(0, rows) + 1
        steps.index_copy_(0, rows, step)
        if kind == "adamw":
            w *= 1 - lr * wd
        m = s1.index_select(0, rows).lerp(g, 1 - hyper.beta1)
        v = s2.index_select(0, rows) * hyper.beta2 + (1 - hyper.beta2) * g * g
        s1.index_copy_(0, rows, m)
        s2.index_copy_(0, rows, v)
        t = step.to(torch.float64)
        step_size = (lr / (1 - hyper.beta1**t)).to(acc).unsqueeze(1)
        bc2_sqrt = (1 - hyper.beta2**t).sqrt().to(acc).unsqueeze(1)
        w -= step_size * m / (v.sqrt() / bc2_sqrt + eps)
    else:  # pragma: no cover - specs only produce the kinds above
        raise ValueError(f"unknown fused optimizer kind {kind!r}")
    weight.index_copy_(0, rows, w.to(weight.dtype))


def reduce(job: TableJob) -> tuple[Tensor, Tensor]:
    """A job's distinct rows (U,) ascending and their summed gradients (U, D), accumulation dtype.

    Every backend's update can start from this (the hook and deferred paths of the
    optimizer engine do); ``run_jobs`` of the fast backends fuse it with the update.
    """
    acc = acc_dtype(job.weight.dtype)
    parts: list[tuple[Tensor, Tensor]] = []
    if job.sources:
        ids, src, scale = job.occurrences()
        rows, starts, order = plan(ids, job.padding_idx)
        grads = segment_sum(rows, starts, order, src, scale, job.grad_flat, job.weight.shape[1],  # type: ignore[arg-type]
                            job.scale_grad_by_freq)
        parts.append((rows, grads))
    if job.rows is not None:
        parts.append((job.rows.to(torch.int64), job.grads.to(acc)))  # type: ignore[union-attr]
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=job.weight.device), job.weight.new_empty(0, job.weight.shape[1], dtype=acc)
    if len(parts) == 1:
        return parts[0]
    return merge_rows([p[0] for p in parts], [p[1] for p in parts], job.weight.shape[1])


def merge_rows(rows: list[Tensor], grads: list[Tensor], dim: int) -> tuple[Tensor, Tensor]:
    """Distinct rows of several (rows, grads) pairs, their gradients summed."""
    all_rows = torch.cat(rows)
    unique, inverse = torch.unique(all_rows, return_inverse=True)
    out = torch.zeros(unique.numel(), dim, dtype=grads[0].dtype, device=all_rows.device)
    out.index_add_(0, inverse, torch.cat(grads))
    return unique, out


def run_jobs(jobs: Sequence[TableJob], hyper: Hyper) -> None:
    """Every job's update: :func:`reduce`, then :func:`fused_update` (any jobs)."""
    for job in jobs:
        rows, grads = reduce(job)
        fused_update(job.weight, job.state, rows, grads, hyper)
