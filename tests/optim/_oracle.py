"""The float64 oracle of a fused training step, built from independent parts.

The gradient comes from autograd through the reference backend (``backend="reference"``)
on a float64 copy of the weight; the touched rows from resolving the ids with
:func:`IdStage.resolve` of the table's policy; the update from
``embtab.ops.update_reference.fused_update``.
None of it runs the planner, segment sums or kernels under test.
"""

from __future__ import annotations

import torch

import embtab
from embtab.ids.policies import policy
from embtab.ops import update_reference as reference
from embtab.optim.specs import FusedSpec, new_state

F64 = torch.float64


class Oracle:
    """A float64 shadow of one table and its optimizer state."""

    def __init__(self, weight: torch.Tensor, spec: FusedSpec) -> None:
        self.weight = weight.detach().to(F64).clone()
        self.spec = spec
        self.state = new_state(spec, self.weight)

    def touched(self, ids: torch.Tensor, num_embeddings: int, oov: str, padding_idx: int | None,
                buckets: int) -> torch.Tensor:
        flat = ids.reshape(-1)
        resolved, _ = policy(oov, padding_idx, buckets).resolve(flat, num_embeddings, where="oracle")
        keep = resolved >= 0
        if padding_idx is not None:
            keep &= resolved != padding_idx
        return torch.unique(resolved[keep].to(torch.int64))

    def step(self, lookups: list[dict], grads: list[torch.Tensor], lr: float | None = None,
             num_embeddings: int | None = None, oov: str = "error", padding_idx: int | None = None,
             buckets: int = 0) -> None:
        """One step over several lookups of this table (their gradients summed).

        Each lookup is the kwargs of ``embtab.functional.embedding_bag`` (``input``,
        ``offsets``, ``mode``, ``per_sample_weights``) or, with ``kind="embedding"``,
        of ``embedding``.
        """
        num_embeddings = self.weight.shape[0] - buckets if num_embeddings is None else num_embeddings
        w = self.weight.clone().requires_grad_()
        total = 0.0
        rows = []
        for lk, g in zip(lookups, grads):
            lk = dict(lk)
            kind = lk.pop("kind", "bag")
            common = dict(padding_idx=padding_idx, oov=oov, num_oov_buckets=buckets, backend="reference")
            if kind == "embedding":
                out = embtab.functional.embedding(lk.pop("input"), w, **lk, **common)
            else:
                psw = lk.pop("per_sample_weights", None)
                out = embtab.functional.embedding_bag(
                    lk.pop("input"), w, lk.pop("offsets", None), per_sample_weights=None if psw is None else psw.to(F64),
                    **lk, **common,
                )
            total = total + (out * g.to(F64)).sum()
            rows.append(self.touched(lookups[len(rows)]["input"], num_embeddings, oov, padding_idx, buckets))
        total.backward()
        touched = torch.unique(torch.cat(rows)) if rows else torch.zeros(0, dtype=torch.int64)
        group = dict(self.spec.hyperparameters())
        if lr is not None:
            group["lr"] = lr
        hyper = self.spec.hyper(group)
        with torch.no_grad():
            reference.fused_update(self.weight, self.state, touched, w.grad[touched], hyper)
