"""``torch.optim``-style optimizers for parameters with sparse (or dense) gradients.

For users who keep ``sparse=True`` embeddings and an ordinary training loop
(``loss.backward(); opt.step(); opt.zero_grad()``). They run the same row update as
the fused optimizers (same backends, same float64 reference), after backward:

- a sparse COO gradient (``nn.Embedding(sparse=True)``, ``embtab.EmbeddingBag(sparse=True)``)
  is coalesced (duplicates summed) and only its rows are updated ("lazy");
- a dense gradient updates every row, like the dense optimizer of the same name.

Rows are along the first dimension; a row is everything else (a 1-D parameter has
one-element rows).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from ..ops import registry
from .optimizer import run_closure
from .specs import AdamW, FusedSpec, RowWiseAdagrad, new_state


def _rows_view(p: Tensor) -> Tensor:
    return p.reshape(p.shape[0] if p.dim() else 1, -1)


class _SparseRowOptimizer(torch.optim.Optimizer):
    _spec_cls: type[FusedSpec]

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._spec = self._renamed(lambda: self._spec_cls(**defaults))  # checks the hyperparameters
        super().__init__(params, self._spec.hyperparameters())

    def _renamed(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, naming this class (not the spec) in any error about the arguments."""
        try:
            return fn()
        except (TypeError, ValueError) as exc:
            message = str(exc)
            spec_name = self._spec_cls.__name__ + ":"
            if message.startswith(spec_name):
                raise type(exc)(type(self).__name__ + ":" + message[len(spec_name):]) from None
            raise

    def _grad_rows(self, p: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
        """(rows (U,), summed gradient rows (U, D)) of ``grad``."""
        where = type(self).__name__
        if grad.is_sparse:
            if grad.sparse_dim() != 1:
                raise ValueError(
                    f"{where}: a sparse gradient must be row-sparse (sparse_dim=1, as "
                    f"nn.Embedding(sparse=True) produces), got sparse_dim={grad.sparse_dim()} for a "
                    f"parameter of shape {tuple(p.shape)}; densify it with grad.to_dense() or use torch.optim"
                )
            g = grad.coalesce()  # duplicate rows summed
            return g.indices()[0], g.values().reshape(g.indices().shape[1], -1)
        if grad.layout != torch.strided:
            raise ValueError(f"{where}: gradients of layout {grad.layout} are not supported; use COO or dense")
        rows = torch.arange(p.shape[0] if p.dim() else 1, device=p.device)
        return rows, _rows_view(grad)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = run_closure(closure)
        where = type(self).__name__
        for group in self.param_groups:
            hyper = self._renamed(lambda: self._spec.hyper(group))
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.is_complex():
                    raise TypeError(f"{where}: complex parameters are not supported, got {p.dtype}")
                rows, grads = self._grad_rows(p, p.grad)
                view = _rows_view(p)
                state = self.state[p]
                if not state:
                    state.update(new_state(self._spec, view))
                backend = registry.select("auto", p.device, p.dtype, True).update
                # A contiguous parameter's rows view is the parameter itself; otherwise work on a
                # contiguous copy (reshape may have made one already) and write it back.
                target = view if p.is_contiguous() else view.contiguous()
                backend.fused_update(target, state, rows, grads, hyper)
                if target is not view:  # a non-contiguous parameter: write the rows back
                    p.copy_(target.reshape(p.shape))
        return loss


class SparseRowWiseAdagrad(_SparseRowOptimizer):
    """Row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``) for sparse or dense gradients.

    Per row: ``g += weight_decay * w; sum += mean(g**2); w -= lr * g / (sqrt(sum) + eps)``;
    one accumulator per row (state ``sum`` of shape (rows,)).

    Example:
        >>> emb = torch.nn.Embedding(100, 8, sparse=True)
        >>> opt = SparseRowWiseAdagrad(emb.parameters(), lr=0.1)
        >>> emb(torch.tensor([1, 2, 2])).sum().backward(); opt.step()
    """

    _spec_cls = RowWiseAdagrad

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-8, weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value))


class SparseAdamW(_SparseRowOptimizer):
    """Lazy AdamW: with a sparse gradient only its rows move, each with its own step count.

    A row's moments, step count and decoupled weight decay advance only when the row
    has a gradient, and its bias correction uses its own step, so it is exact however
    rarely the row is seen (``torch.optim.SparseAdam`` shares one step count and has
    no weight decay). With a dense gradient it is ``torch.optim.AdamW``.
    State: ``exp_avg``, ``exp_avg_sq`` (rows, D), ``step`` (rows,) int64.
    """

    _spec_cls = AdamW

    def __init__(
        self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8, weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))


__all__ = ["SparseRowWiseAdagrad", "SparseAdamW"]
