"""What every backend shares: the conventions of a lookup and of a row update.

A leaf module (it imports only torch), so that lookup kernels, update kernels and the
optimizer engine can all import it without importing each other.

Lookups. Bags come as flat ``ids`` (N,) and canonical ``offsets`` (B + 1,) with
``offsets[0] == 0``, ``offsets[B] == N``, non-decreasing: bag ``b`` is
``ids[offsets[b]:offsets[b + 1]]``. An id is a row of the weight, or :data:`SKIP`
(contributes nothing, gets no gradient). ``padding_idx`` is None or a row: it gets no
gradient and is left out of bag reductions and of the mean's count. Reductions of
16-bit weights accumulate in float32.

Row updates. A fused optimizer's step on a table is described by a :class:`TableJob`:
the table's weight and per-row state, and the gradient of the rows a backward pass
touched, either as lookups into one flat gradient buffer (:class:`BagSource`, the
duplicates not yet summed) or as distinct rows with summed gradients (``rows``,
``grads``). :class:`Hyper` carries the update rule and its hyperparameters.

An update backend provides ``fused_update(weight, state, rows, grads, hyper)`` (distinct
rows, summed gradients) and ``run_jobs(jobs, hyper)``: jobs of one weight dtype whose
sources all index the same flat gradient and that have no pre-summed rows (the
optimizer engine groups them so), summed and updated in one go.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

SKIP = -1
MODE_CODES = {"sum": 0, "mean": 1, "max": 2}  # the kernels' mode numbers (torch's too)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and optimizer state) dtype: float32 for 16-bit weights."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def kept_mask(ids: Tensor, padding_idx: int | None) -> Tensor:
    """Mask of ids that take part: not skipped, not padding."""
    keep = ids >= 0
    if padding_idx is not None:
        keep &= ids != padding_idx
    return keep


def bag_of(offsets: Tensor, num_ids: int) -> Tensor:
    """(N,) int64 bag of each id, from canonical offsets (B + 1,) (``output_size`` keeps
    it free of host syncs)."""
    lengths = (offsets[1:] - offsets[:-1]).to(torch.int64)
    bags = torch.arange(lengths.numel(), device=offsets.device)
    return torch.repeat_interleave(bags, lengths, output_size=num_ids)


class BagAux(NamedTuple):
    """What a bag lookup's backward needs, the same for every backend.

    ``bag``: (N,) int64 bag of each id (or an empty tensor where the backend does not
    need it); ``counts``: (B,) ids that count in each bag; ``max_rows``: (B, D) int64
    row that gave each output element under ``mode="max"`` (-1 in an empty bag), an
    empty tensor otherwise. A backend may keep extra tensors of its own in ``extra``.
    """

    bag: Tensor
    counts: Tensor
    max_rows: Tensor
    extra: tuple[Tensor, ...] = ()


# --- row updates ---------------------------------------------------------------------------

KINDS = ("sgd", "adagrad", "rowwise_adagrad", "adam", "adamw")
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}  # the numba and Triton kernels' codes

# The per-row state of each kind, in the order kernels take it: (s1, s2, step).
STATE_SLOTS: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "adagrad": ("sum",),
    "rowwise_adagrad": ("sum",),
    "adam": ("exp_avg", "exp_avg_sq", "step"),
    "adamw": ("exp_avg", "exp_avg_sq", "step"),
}


def state_slots(kind: str, state: dict[str, Tensor]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(s1, s2, step)`` of a state dict by the kind's layout (None where it has none)."""
    names = STATE_SLOTS[kind]
    if len(names) == 3:
        return state[names[0]], state[names[1]], state[names[2]]
    return (state[names[0]] if names else None), None, None


class Hyper(NamedTuple):
    """What an update reads: the kind and its hyperparameters, as Python floats.

    Fields a kind does not use are 0 (``eps`` for SGD, the betas for all but Adam/AdamW).
    """

    kind: str
    lr: float
    eps: float
    beta1: float
    beta2: float
    weight_decay: float


@dataclass
class BagSource:
    """One lookup into a table: ``ids`` (N,) cut into bags by ``ends`` (B + 1,).

    Bag b's gradient row is ``grad_flat[base + b * stride:][:D]`` of the job's flat
    gradient, times ``per_sample_weights[j]`` if given, and divided by the bag's count
    of kept ids if ``mean``. An unpooled lookup is a bag per id.
    """

    ids: Tensor
    ends: Tensor
    base: int
    stride: int
    mean: bool = False
    per_sample_weights: Tensor | None = None


@dataclass
class TableJob:
    """One table's share of an update: its lookups, or its pre-summed rows.

    Ids ``< 0`` (skipped) and ``padding_idx`` are not updated. ``rows``/``grads``
    (distinct rows and their summed gradients) replace ``sources``.
    """

    weight: Tensor
    state: dict[str, Tensor]
    padding_idx: int | None = None
    scale_grad_by_freq: bool = False
    grad_flat: Tensor | None = None
    sources: list[BagSource] = field(default_factory=list)
    rows: Tensor | None = None
    grads: Tensor | None = None

    def occurrences(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(ids, src, scale)`` per occurrence, with torch ops (for the generic paths).

        Occurrence j's gradient row is ``grad_flat[src[j]:src[j] + D] * scale[j]``.
        """
        dtype = acc_dtype(self.weight.dtype)
        ids, srcs, scales = [], [], []
        for s in self.sources:
            flat = s.ids.reshape(-1)
            bag = bag_of(s.ends, flat.numel())  # (N,)
            srcs.append(bag * s.stride + s.base)
            scale = None
            if s.mean:
                # The mean's count leaves out padding and skipped ids, as the forward does.
                # A prefix sum read at the bag ends: no boolean indexing, so no host sync on CUDA.
                kept = torch.cumsum(kept_mask(flat, self.padding_idx).to(torch.int64), 0)
                kept = torch.cat([kept.new_zeros(1), kept])  # (N + 1,)
                ends = s.ends.to(torch.int64)
                counts = kept[ends[1:]] - kept[ends[:-1]]  # (B,)
                scale = (1.0 / counts.clamp_min(1).to(dtype))[bag]
            if s.per_sample_weights is not None:
                psw = s.per_sample_weights.detach().reshape(-1).to(dtype)
                scale = psw if scale is None else scale * psw
            ids.append(flat)
            scales.append(scale)
        scale_all = None
        if any(x is not None for x in scales):
            scale_all = cat([
                x if x is not None else torch.ones(i.numel(), dtype=dtype, device=i.device)
                for x, i in zip(scales, ids)
            ])
        return cat(ids), cat(srcs), scale_all


def cat(parts: list[Tensor]) -> Tensor:
    """``torch.cat``, without its copy for the usual single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def offsets_decrease(offsets: np.ndarray) -> bool:
    """Whether any offset is below the one before it (numpy; ``ops/numba`` has a faster twin)."""
    return offsets.size > 1 and bool((offsets[1:] < offsets[:-1]).any())
