"""Optimizers for embedding tables: fused into backward, or ``torch.optim``-style for sparse grads.

Fused (pass as ``optimizer=`` to ``embtab.Embedding``, ``embtab.EmbeddingBag`` or
``embtab.EmbeddingBagCollection``): :class:`SGD`, :class:`Adagrad`,
:class:`RowWiseAdagrad`, :class:`Adam`, :class:`AdamW`. The rows a step looked up are
updated during ``backward()``, duplicates summed first; ``weight.grad`` stays ``None``
and no dense or COO gradient is built. ``module.optimizer`` is a
``torch.optim.Optimizer`` holding the hyperparameters (drive it with an LR scheduler);
the per-row state is in the module's ``state_dict`` (buffers ``optim_<name>``).

``torch.optim``-style (``opt.step()`` after backward, dense or sparse gradients):
:class:`SparseRowWiseAdagrad`, :class:`SparseAdamW` (lazy).

Backend interface (for the CUDA/Triton engineer)
------------------------------------------------
The update of a table is done by a *backend module*, chosen per weight by
:func:`embtab.optim._fused.select_backend`: ``numba`` (CPU fast path, when numba
imports), ``torch`` (torch ops, any device; the fallback), ``reference`` (float64
oracle), or ``triton``: the module ``embtab.ops.triton.fused_optim``, used
automatically for CUDA weights as soon as it imports. ``$EMBTAB_FUSED_BACKEND``
(``auto`` | ``numba`` | ``torch`` | ``reference`` | ``triton``) forces one. A backend
provides (``name`` plus)::

    fused_update(weight, state, rows, grads, hyper) -> None              # required

- ``weight``: (V, D) tensor, updated in place (any float dtype; contiguous).
- ``state``: dict of per-row state tensors, updated in place; names by ``hyper.kind``:
  ``"sgd"`` none; ``"adagrad"`` ``sum`` (V, D); ``"rowwise_adagrad"`` ``sum`` (V,);
  ``"adam"``/``"adamw"`` ``exp_avg`` (V, D), ``exp_avg_sq`` (V, D), ``step`` (V,) int64.
  State is float32 for 16-bit weights, else the weight's dtype.
- ``rows``: (U,) int64 distinct rows (ascending from the built-in planner).
- ``grads``: (U, D) the summed gradient of each row (duplicates already summed).
- ``hyper``: :class:`FusedHyper` ``(kind, lr, eps, beta1, beta2, weight_decay)``, floats.

The math per kind is :func:`embtab.optim.reference.fused_update` (float64; the tests
hold every backend to it). Optionally, to avoid materialising ``grads``::

    segment_update(weight, state, rows, starts, order, src, scale, grad_flat, hyper,
                   scale_grad_by_freq) -> None

sums, for row ``rows[u]``, ``scale[j] * grad_flat[src[j] : src[j] + D]`` over
``j in order[starts[u]:starts[u + 1]]`` (``scale`` may be None; with
``scale_grad_by_freq`` divide by the count), then updates as ``fused_update``.
``rows, starts, order`` come from ``embtab.optim._torch_backend.plan(ids, padding_idx)``
(a stable sort; runs on any device). Without ``segment_update`` the engine builds
``grads`` with ``_torch_backend.segment_sum`` and calls ``fused_update``.

Optionally, for a whole backward pass in one go (table-batched, as FBGEMM's TBE)::

    run_jobs(jobs, hyper) -> None

``jobs``: one :class:`embtab.optim._fused.TableJob` per table (``weight``, ``state``,
``padding_idx``, ``scale_grad_by_freq``, ``grad_flat``: the flat gradient buffer its
lookups index, ``sources``: its :class:`~embtab.optim._fused.BagSource` lookups; or
``rows``/``grads`` already summed, for max pooling). ``job.occurrences()`` expands the
sources into per-occurrence ``(ids, src, scale)`` with torch ops. Jobs that share
``grad_flat`` come from one backward. Without ``run_jobs`` the engine calls
``segment_update``/``fused_update`` table by table.
"""

from ._fused import (
    SGD as SGD,
    Adagrad as Adagrad,
    Adam as Adam,
    AdamW as AdamW,
    FusedHyper as FusedHyper,
    FusedOptimizer as FusedOptimizer,
    FusedSpec as FusedSpec,
    RowWiseAdagrad as RowWiseAdagrad,
)
from .sparse import SparseAdamW as SparseAdamW, SparseRowWiseAdagrad as SparseRowWiseAdagrad

__all__ = [
    "SGD",
    "Adagrad",
    "RowWiseAdagrad",
    "Adam",
    "AdamW",
    "FusedOptimizer",
    "FusedSpec",
    "FusedHyper",
    "SparseRowWiseAdagrad",
    "SparseAdamW",
]
