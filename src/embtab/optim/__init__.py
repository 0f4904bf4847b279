"""Optimizers for embedding tables: fused into backward, or ``torch.optim``-style for sparse grads.

Fused (pass as ``optimizer=`` to ``embtab.Embedding``, ``embtab.EmbeddingBag`` or
``embtab.EmbeddingBagCollection``): :class:`SGD`, :class:`Adagrad`,
:class:`RowWiseAdagrad`, :class:`Adam`, :class:`AdamW`. The rows a step looked up are
updated when ``backward()`` ends, duplicates summed first; ``weight.grad`` stays
``None`` and no dense or COO gradient is built. Every lookup of a table in one
backward pass is merged into one update (``torch.optim`` on the summed gradient).
``module.optimizer`` is a :class:`FusedOptimizer` (a ``torch.optim.Optimizer``) holding
the hyperparameters (drive it with an LR scheduler); the per-row state is in the
module's ``state_dict`` (buffers ``optim_<name>``). With ``update="step"`` on the spec,
row gradients accumulate over backward passes until ``optimizer.step()``, and
:func:`clip_grad_norm_` clips them first. :meth:`FusedOptimizer.register_row_grad_hook`
is the seam between "row gradients ready" and "apply".

``torch.optim``-style (``opt.step()`` after backward, dense or sparse gradients):
:class:`SparseRowWiseAdagrad`, :class:`SparseAdamW` (lazy).

Which code updates the rows (numba on CPU, Triton on CUDA, torch ops, the float64
reference) is chosen by ``embtab/ops/registry.py``, with the table's ``backend=``.
"""

from .optimizer import FusedOptimizer as FusedOptimizer, RowGrads as RowGrads, clip_grad_norm_ as clip_grad_norm_
from .sparse import SparseAdamW as SparseAdamW, SparseRowWiseAdagrad as SparseRowWiseAdagrad
from .specs import (
    SGD as SGD,
    Adagrad as Adagrad,
    Adam as Adam,
    AdamW as AdamW,
    FusedSpec as FusedSpec,
    RowWiseAdagrad as RowWiseAdagrad,
)

__all__ = [
    "SGD",
    "Adagrad",
    "RowWiseAdagrad",
    "Adam",
    "AdamW",
    "FusedOptimizer",
    "FusedSpec",
    "RowGrads",
    "clip_grad_norm_",
    "SparseRowWiseAdagrad",
    "SparseAdamW",
]
