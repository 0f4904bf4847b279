"""Optimizers fused into backward: specs, the bound optimizer, and the update engine.

A *spec* (:class:`SGD`, :class:`Adagrad`, :class:`RowWiseAdagrad`, :class:`Adam`,
:class:`AdamW`) is an immutable set of hyperparameters, passed as ``optimizer=`` to
``embtab.Embedding``, ``embtab.EmbeddingBag`` or ``embtab.EmbeddingBagCollection``.
The module then

- registers the per-row optimizer state as buffers named ``optim_<name>``, so the
  module's ``state_dict`` carries it and a checkpoint restores training exactly;
- exposes ``module.optimizer``, a :class:`FusedOptimizer`: a real
  ``torch.optim.Optimizer`` whose ``param_groups[0]`` holds the hyperparameters read
  at every backward, so an LR scheduler drives it (its ``step()`` does nothing: the
  rows were updated during backward);
- updates, during ``backward()``, only the rows the step looked up, from the
  gradient with duplicates summed; ``weight.grad`` stays ``None``.

The engine (:func:`run_jobs`) takes, per table, the looked-up ids and where each
occurrence's gradient row sits in one flat gradient buffer, and hands them to the
backend chosen by :func:`select_backend` (see :mod:`embtab.optim` for the interface).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any, Callable, ClassVar, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from .. import _memory
from ..ops.reference import bag_of, kept_mask
from ..ops.reference import acc_dtype as state_dtype  # float32 state for 16-bit weights (too coarse)

ENV_VAR = "EMBTAB_FUSED_BACKEND"
BACKENDS = ("auto", "numba", "torch", "reference", "triton")
KINDS = ("sgd", "adagrad", "rowwise_adagrad", "adam", "adamw")
KIND_CODES = {kind: code for code, kind in enumerate(KINDS)}  # the numba kernel's codes


class FusedHyper(NamedTuple):
    """What a backend's update reads: the kind and its hyperparameters, as Python floats.

    Fields a kind does not use are 0 (``eps`` for SGD, the betas for all but Adam/AdamW).
    """

    kind: str
    lr: float
    eps: float
    beta1: float
    beta2: float
    weight_decay: float


# --- specs -------------------------------------------------------------------------------


def _check_float(value: Any, name: str, where: str, *, low: float = 0.0, low_open: bool = False,
                 high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{where}: {name} must be a float, got {value!r} ({type(value).__name__})"
            + (
                "; embtab.optim fused optimizers take no parameters: pass the optimizer "
                "as optimizer= to the module, e.g. EmbeddingBag(..., optimizer="
                f"embtab.optim.{where}(lr=0.01))"
                if name == "lr" and not isinstance(value, (str, bytes)) and hasattr(value, "__iter__")
                else ""
            )
        )
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = high is not None and value >= high
    if math.isnan(value) or math.isinf(value) or too_low or too_high:
        bound = (f"> {low}" if low_open else f">= {low}") + (f" and < {high}" if high is not None else "")
        raise ValueError(f"{where}: {name} must be finite and {bound}, got {name}={value}")
    return value


@dataclass(frozen=True)
class FusedSpec:
    """Base of the fused optimizer specs: hyperparameters only, no parameters, no state."""

    kind: ClassVar[str]

    def __post_init__(self) -> None:
        """Check every hyperparameter at construction, with the checks :meth:`hyper` runs."""
        where = type(self).__name__
        if hasattr(self, "betas"):
            object.__setattr__(self, "betas", _check_betas(self.betas, where))  # a tuple, not the caller's list
        self.hyper(self.hyperparameters())
        if hasattr(self, "initial_accumulator_value"):
            _check_float(self.initial_accumulator_value, "initial_accumulator_value", where)

    def hyperparameters(self) -> dict[str, Any]:
        """The ``param_groups`` entries of the bound :class:`FusedOptimizer`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def state_layout(self, num_rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], bool, float]]:
        """Per-row state: name -> (shape, is_int, initial value)."""
        return {}

    def hyper(self, group: dict[str, Any]) -> FusedHyper:
        """Read and check the (possibly scheduler-changed) hyperparameters of ``group``."""
        where = type(self).__name__
        lr = _check_float(group["lr"], "lr", where)
        wd = _check_float(group.get("weight_decay", 0.0), "weight_decay", where)
        eps = _check_float(group["eps"], "eps", where, low_open=True) if "eps" in group else 0.0
        betas = _check_betas(group["betas"], where) if "betas" in group else (0.0, 0.0)
        return FusedHyper(self.kind, lr, eps, betas[0], betas[1], wd)


@dataclass(frozen=True)
class SGD(FusedSpec):
    """Plain SGD on the looked-up rows: ``w -= lr * (g + weight_decay * w)``.

    ``g`` is the row's gradient with duplicate ids summed. Matches FBGEMM's
    ``EXACT_SGD`` and ``torch.optim.SGD`` on a sparse gradient.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    kind: ClassVar[str] = "sgd"


@dataclass(frozen=True)
class Adagrad(FusedSpec):
    """Adagrad on the looked-up rows, as ``torch.optim.Adagrad`` (``lr_decay=0``).

    ``g += weight_decay * w; sum += g**2; w -= lr * g / (sqrt(sum) + eps)``.
    State: ``sum`` (rows, dim), starting at ``initial_accumulator_value``.
    """

    lr: float = 1e-2
    eps: float = 1e-10
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    kind: ClassVar[str] = "adagrad"

    def state_layout(self, num_rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], bool, float]]:
        return {"sum": ((num_rows, dim), False, self.initial_accumulator_value)}


@dataclass(frozen=True)
class RowWiseAdagrad(FusedSpec):
    """Row-wise Adagrad, as FBGEMM's ``EXACT_ROWWISE_ADAGRAD``: one accumulator per row.

    ``g += weight_decay * w; sum += mean(g**2); w -= lr * g / (sqrt(sum) + eps)``.
    State: ``sum`` (rows,), a 1/dim-th of Adagrad's memory.
    """

    lr: float = 1e-2
    eps: float = 1e-8
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    kind: ClassVar[str] = "rowwise_adagrad"

    def state_layout(self, num_rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], bool, float]]:
        return {"sum": ((num_rows,), False, self.initial_accumulator_value)}


def _check_betas(betas: Any, where: str) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}: betas must be a pair of floats (beta1, beta2), got {betas!r}")
    b1 = _check_float(betas[0], "betas[0]", where, high=1.0)
    b2 = _check_float(betas[1], "betas[1]", where, high=1.0)
    return b1, b2


@dataclass(frozen=True)
class Adam(FusedSpec):
    """Adam on the looked-up rows, with a step count per row ("lazy" Adam).

    A row's moments and step advance only when the row is looked up, and its bias
    correction uses its own step, so it is exact however rarely the row is seen.
    ``weight_decay`` is L2 (added to the gradient), as in ``torch.optim.Adam``, and
    applies to looked-up rows only. State: ``exp_avg``, ``exp_avg_sq`` (rows, dim),
    ``step`` (rows,) int64.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    kind: ClassVar[str] = "adam"

    def state_layout(self, num_rows: int, dim: int) -> dict[str, tuple[tuple[int, ...], bool, float]]:
        return {
            "exp_avg": ((num_rows, dim), False, 0.0),
            "exp_avg_sq": ((num_rows, dim), False, 0.0),
            "step": ((num_rows,), True, 0),
        }


@dataclass(frozen=True)
class AdamW(Adam):
    """AdamW on the looked-up rows: :class:`Adam` with decoupled weight decay
    (``w *= 1 - lr * weight_decay`` before the step, looked-up rows only)."""

    weight_decay: float = 1e-2
    kind: ClassVar[str] = "adamw"


# --- the bound optimizer -----------------------------------------------------------------


class FusedOptimizer(torch.optim.Optimizer):
    """The ``torch.optim.Optimizer`` face of a fused optimizer bound to a module.

    Updates happen inside ``backward()``; ``step()`` and ``zero_grad()`` do nothing
    (they exist so training loops and LR schedulers work unchanged). The
    hyperparameters live in ``param_groups[0]`` and are read at every backward, so
    ``opt.param_groups[0]["lr"] = 0.1`` or a scheduler takes effect at the next step;
    ``state_dict()`` saves them. The per-row state lives in the module's buffers.
    """

    def __init__(self, params: Iterable[Tensor], spec: FusedSpec) -> None:
        super().__init__(params, spec.hyperparameters())
        self.spec = spec

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """No-op (rows were updated in backward); calls ``closure`` if given."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """No-op: a fused optimizer's parameters never get a ``.grad``."""

    def hyper(self) -> FusedHyper:
        return self.spec.hyper(self.param_groups[0])

    def __repr__(self) -> str:
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return f"FusedOptimizer({type(self.spec).__name__}, {group})"


def check_spec(optimizer: Any, where: str) -> FusedSpec:
    if isinstance(optimizer, FusedSpec):
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{where}: optimizer= takes an embtab.optim fused optimizer such as "
            f"embtab.optim.RowWiseAdagrad(lr=0.01), got the torch optimizer "
            f"{type(optimizer).__name__}; a torch optimizer runs after backward, so build it on "
            f"module.parameters() instead (with sparse=True, see embtab.optim.SparseAdamW)"
        )
    raise TypeError(
        f"{where}: optimizer= takes an embtab.optim fused optimizer (SGD, Adagrad, "
        f"RowWiseAdagrad, Adam, AdamW), got {optimizer!r}"
    )


def new_state(spec: FusedSpec, weight: Tensor) -> dict[str, Tensor]:
    """Fresh per-row state tensors for ``weight`` (rows, dim)."""
    out = {}
    for name, (shape, is_int, fill) in spec.state_layout(weight.shape[0], weight.shape[1]).items():
        dtype = torch.int64 if is_int else state_dtype(weight.dtype)
        out[name] = _memory.empty(shape, dtype=dtype, device=weight.device).fill_(fill)  # huge pages if large
    return out


STATE_PREFIX = "optim_"


def bind(module: torch.nn.Module, optimizer: Any, where: str) -> FusedOptimizer | None:
    """Register ``optimizer``'s state on ``module`` (which has ``weight``); return the bound optimizer."""
    if optimizer is None:
        return None
    spec = check_spec(optimizer, where)
    for name, tensor in new_state(spec, module.weight).items():
        module.register_buffer(STATE_PREFIX + name, tensor)
    return FusedOptimizer([module.weight], spec)


def module_state(module: torch.nn.Module, spec: FusedSpec) -> dict[str, Tensor]:
    """The module's current state buffers (looked up per call: ``.to()`` replaces them)."""
    return {name: getattr(module, STATE_PREFIX + name) for name in spec.state_layout(1, 1)}


# --- backends ----------------------------------------------------------------------------


_imports: dict[str, ModuleType | None] = {}  # a failed import is not retried every step


def _optional(module: str) -> ModuleType | None:
    if module not in _imports:
        import importlib

        try:
            _imports[module] = importlib.import_module(module)
        except (ImportError, RuntimeError, OSError):  # also numba finding no cache folder
            _imports[module] = None
    return _imports[module]


def _numba_available() -> bool:
    return _optional("embtab.optim._numba_backend") is not None


_TRITON_MODULE = "embtab.ops.triton.fused_optim"


def _triton_backend() -> ModuleType | None:
    return _optional(_TRITON_MODULE)


def select_backend(device: torch.device, dtype: torch.dtype, contiguous: bool = True) -> ModuleType:
    """The module that updates rows of a ``dtype`` weight on ``device``.

    ``auto``: numba on CPU for contiguous float32/float64 weights when numba imports;
    on CUDA the Triton backend ``embtab.ops.triton.fused_optim`` when it imports;
    the torch-ops path otherwise. ``$EMBTAB_FUSED_BACKEND`` forces one, for debugging.
    """
    name = os.environ.get(ENV_VAR, "auto") or "auto"
    if name not in BACKENDS:
        raise ValueError(f"${ENV_VAR}={name!r} is not a fused-update backend; choose one of {BACKENDS}")
    if name == "auto":
        if device.type == "cpu" and dtype in (torch.float32, torch.float64) and contiguous and _numba_available():
            name = "numba"
        elif device.type == "cuda" and _triton_backend() is not None:
            name = "triton"
        else:
            name = "torch"
    if name == "numba":
        if device.type != "cpu":
            raise RuntimeError(f"${ENV_VAR}=numba runs on CPU tensors, got a weight on {device}")
        module = _optional("embtab.optim._numba_backend")
        if module is None:
            raise RuntimeError(f"${ENV_VAR}=numba needs numba: pip install 'embtab[jit]'")
        return module
    if name == "triton":
        module = _triton_backend()
        if module is None:
            raise RuntimeError(
                f"${ENV_VAR}=triton needs {_TRITON_MODULE}, which did not import; pip install 'embtab[triton]'"
            )
        return module
    if name == "reference":
        from . import reference

        return reference
    from . import _torch_backend

    return _torch_backend


# --- the engine ----------------------------------------------------------------------------


@dataclass
class BagSource:
    """One lookup into a table: ``ids`` (N,) cut into bags by ``ends`` (B + 1,).

    Bag b's gradient row is ``grad_flat[base + b * stride:][:D]`` of the job's flat
    gradient, times ``per_sample_weights[j]`` if given, and divided by the bag's count
    of kept ids if ``mean``. An ``embedding()`` lookup is a bag per id.
    """

    ids: Tensor
    ends: Tensor
    base: int
    stride: int
    mean: bool = False
    per_sample_weights: Tensor | None = None


@dataclass
class TableJob:
    """One table's share of a backward pass: its lookups, or its pre-summed rows.

    Ids ``< 0`` (skipped) and ``padding_idx`` are not updated. ``rows``/``grads``
    (distinct rows and their summed gradients, for max pooling) replace ``sources``.
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
        """``(ids, src, scale)`` per occurrence, with torch ops (for the generic backends).

        Occurrence j's gradient row is ``grad_flat[src[j]:src[j] + D] * scale[j]``.
        """
        dtype = state_dtype(self.weight.dtype)
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
            scale_all = _cat([
                x if x is not None else torch.ones(i.numel(), dtype=dtype, device=i.device)
                for x, i in zip(scales, ids)
            ])
        return _cat(ids), _cat(srcs), scale_all


def _cat(parts: list[Tensor]) -> Tensor:
    """``torch.cat``, without its copy for the usual single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def run_jobs(optimizer: FusedOptimizer, jobs: Sequence[TableJob]) -> None:
    """Apply ``optimizer`` to every job's looked-up rows, in place, outside autograd."""
    hyper = optimizer.hyper()
    with torch.no_grad():
        by_backend: dict[str, tuple[ModuleType, list[TableJob]]] = {}
        for job in jobs:
            w = job.weight
            backend = select_backend(w.device, w.dtype, w.is_contiguous())
            by_backend.setdefault(backend.__name__, (backend, []))[1].append(job)
        for backend, group in by_backend.values():
            if hasattr(backend, "run_jobs"):
                backend.run_jobs(group, hyper)
            else:
                generic_run(backend, group, hyper)
        for job in jobs:
            # An in-place update of a tensor autograd may have saved: let it notice.
            torch.autograd.graph.increment_version(job.weight)


def generic_run(backend: ModuleType, jobs: Sequence[TableJob], hyper: FusedHyper) -> None:
    """Plan with torch ops, then the backend's ``segment_update`` or ``fused_update``."""
    from . import _torch_backend as tb

    for job in jobs:
        if job.rows is not None:
            backend.fused_update(job.weight, job.state, job.rows, job.grads, hyper)
            continue
        ids, src, scale = job.occurrences()
        rows, starts, order = tb.plan(ids, job.padding_idx)
        if rows.numel() == 0:
            continue
        if hasattr(backend, "segment_update"):
            backend.segment_update(
                job.weight, job.state, rows, starts, order, src, scale, job.grad_flat, hyper,
                job.scale_grad_by_freq,
            )
        else:
            grads = tb.segment_sum(
                rows, starts, order, src, scale, job.grad_flat, job.weight.shape[1], job.scale_grad_by_freq,
            )
            backend.fused_update(job.weight, job.state, rows, grads, hyper)


# --- building jobs from lookups ---------------------------------------------------------


def flat_grads(grads: Sequence[Tensor]) -> tuple[Tensor, list[int], list[int]]:
    """One flat buffer holding every ``(B_i, D_i)`` gradient, with each one's start and row stride.

    Column slices of one tensor (what ``torch.cat``'s backward hands out) are read in
    place through their shared storage; anything else is copied into one buffer.
    """
    first = grads[0]
    storage = first.untyped_storage()
    shared = all(
        g.dim() == 2 and g.stride(1) == 1 and g.dtype == first.dtype and g.device == first.device
        and g.untyped_storage().data_ptr() == storage.data_ptr()
        for g in grads
    )
    if shared:
        numel = storage.nbytes() // first.element_size()
        flat = torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, 0, (numel,), (1,))
        return flat, [g.storage_offset() for g in grads], [g.stride(0) for g in grads]
    parts = [g.contiguous().reshape(-1) for g in grads]
    starts, total = [], 0
    for g, p in zip(grads, parts):
        starts.append(total)
        total += p.numel()
    flat = parts[0] if len(parts) == 1 else torch.cat(parts)
    return flat, starts, [g.shape[1] if g.dim() == 2 else 0 for g in grads]


def max_rows_grads(
    ids: Tensor, ends: Tensor, max_rows: Tensor, grad: Tensor, padding_idx: int | None, acc: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Touched rows and their summed gradients for max pooling.

    Every looked-up row counts as touched (as for sum/mean), even one that never
    held a maximum: its gradient is zero, but Adam's moments still decay.
    ``max_rows`` (B, D) holds the row that gave each output element (any value
    in an empty bag).
    """
    kept = kept_mask(ids, padding_idx)
    rows = torch.unique(ids[kept].to(torch.int64))  # (U,) sorted
    dim = grad.shape[1]
    # A bag of only padding/skipped ids also gives zeros and no gradient.
    nonempty = torch.bincount(bag_of(ends, ids.numel())[kept], minlength=ends.numel() - 1) > 0
    hit = nonempty.unsqueeze(1).expand_as(max_rows)
    where = torch.searchsorted(rows, max_rows.to(torch.int64)[hit])
    cols = torch.arange(dim, device=grad.device).expand_as(max_rows)[hit]
    grads = torch.zeros(rows.numel() * dim, dtype=acc, device=grad.device)
    grads.index_add_(0, where * dim + cols, grad[hit].to(acc))
    return rows, grads.reshape(rows.numel(), dim)


class FusedTarget(NamedTuple):
    """What a module hands its fused autograd Function: whom to update and how.

    Built per forward call (``module.to()`` may have replaced the state tensors).
    """

    optimizer: FusedOptimizer
    weight: Tensor
    state: dict[str, Tensor]

    def embedding_backward(self, grad: Tensor, ids: Tensor, padding_idx: int | None, scale_grad_by_freq: bool) -> None:
        """Update from an ``embedding()`` lookup: ``grad`` (*ids.shape, D)."""
        dim = self.weight.shape[1]
        flat, bases, strides = flat_grads([grad.reshape(-1, dim)])
        ends = torch.arange(ids.numel() + 1, device=ids.device)  # one bag per id
        source = BagSource(ids.reshape(-1), ends, bases[0], strides[0])
        job = TableJob(self.weight, self.state, padding_idx, scale_grad_by_freq, flat, [source])
        run_jobs(self.optimizer, [job])

    def bag_backward(
        self, grad: Tensor, ids: Tensor, ends: Tensor, max_rows: Tensor | None, mode: str,
        per_sample_weights: Tensor | None, padding_idx: int | None, scale_grad_by_freq: bool,
    ) -> None:
        """Update from an ``embedding_bag()`` lookup: ``grad`` (B, D), canonical ``ends`` (B + 1,)."""
        if mode == "max":
            dtype = state_dtype(self.weight.dtype)
            rows, grads = max_rows_grads(ids, ends, max_rows, grad, padding_idx, dtype)  # type: ignore[arg-type]
            job = TableJob(self.weight, self.state, rows=rows, grads=grads)
        else:
            flat, bases, strides = flat_grads([grad])
            source = BagSource(ids, ends, bases[0], strides[0], mode == "mean", per_sample_weights)
            job = TableJob(self.weight, self.state, padding_idx, scale_grad_by_freq, flat, [source])
        run_jobs(self.optimizer, [job])
