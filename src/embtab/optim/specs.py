"""Fused optimizer specs: the update rules, as immutable sets of hyperparameters.

A spec (:class:`SGD`, :class:`Adagrad`, :class:`RowWiseAdagrad`, :class:`Adam`,
:class:`AdamW`) is passed as ``optimizer=`` to ``embtab.Embedding``,
``embtab.EmbeddingBag`` or ``embtab.EmbeddingBagCollection``, which binds it to its
tables (see :mod:`embtab.optim.optimizer`). The math of each rule is
``ops/update_reference.py`` (float64); every update backend is held to it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

import torch

from .. import _memory
from ..ops.common import STATE_SLOTS, Hyper, acc_dtype

__all__ = ["FusedSpec", "SGD", "Adagrad", "RowWiseAdagrad", "Adam", "AdamW", "StateField", "check_spec", "new_state"]


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


class StateField(NamedTuple):
    """One per-row state tensor of an update rule: ``(rows,)`` or ``(rows, dim)``."""

    per_element: bool  # (rows, dim) rather than (rows,)
    integer: bool  # int64 (Adam's step counts), else float (the accumulation dtype)
    initial: float
    nonnegative: bool  # a loaded value below 0 is refused (sums of squares, step counts)


UPDATES = ("backward", "step")


@dataclass(frozen=True)
class FusedSpec:
    """Base of the fused optimizer specs: hyperparameters only, no parameters, no state.

    ``update`` (keyword only, every spec): ``"backward"`` (default) applies each
    table's update when a backward pass ends, one step per pass however many times a
    table was looked up; ``"step"`` keeps the row gradients until ``optimizer.step()``,
    so several backward passes accumulate (gradient accumulation) and
    :func:`embtab.optim.clip_grad_norm_` can clip them first.
    """

    kind: ClassVar[str]
    update: str = field(default="backward", kw_only=True)

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "update"]
        if self.update != "backward":
            shown.append(f"update={self.update!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __post_init__(self) -> None:
        """Check every hyperparameter at construction, with the checks :meth:`hyper` runs."""
        where = type(self).__name__
        if self.update not in UPDATES:
            raise ValueError(f"{where}: update must be one of {UPDATES}, got update={self.update!r}")
        if hasattr(self, "betas"):
            object.__setattr__(self, "betas", _check_betas(self.betas, where))  # a tuple, not the caller's list
        self.hyper(self.hyperparameters())
        if hasattr(self, "initial_accumulator_value"):
            _check_float(self.initial_accumulator_value, "initial_accumulator_value", where)

    def hyperparameters(self) -> dict[str, Any]:
        """The ``param_groups`` entries of the bound :class:`FusedOptimizer`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "update"}

    def state_layout(self) -> dict[str, StateField]:
        """Per-row state: name (``ops/common.STATE_SLOTS``, in the kernels' order) -> field."""
        return dict(zip(STATE_SLOTS[self.kind], self._state_fields(), strict=True))

    def _state_fields(self) -> tuple[StateField, ...]:
        return ()

    def hyper(self, group: dict[str, Any]) -> Hyper:
        """Read and check the (possibly scheduler-changed) hyperparameters of ``group``."""
        where = type(self).__name__
        lr = _check_float(group["lr"], "lr", where)
        wd = _check_float(group.get("weight_decay", 0.0), "weight_decay", where)
        eps = _check_float(group["eps"], "eps", where, low_open=True) if "eps" in group else 0.0
        betas = _check_betas(group["betas"], where) if "betas" in group else (0.0, 0.0)
        return Hyper(self.kind, lr, eps, betas[0], betas[1], wd)


@dataclass(frozen=True, repr=False)
class SGD(FusedSpec):
    """Plain SGD on the looked-up rows: ``w -= lr * (g + weight_decay * w)``.

    ``g`` is the row's gradient with duplicate ids summed. Matches FBGEMM's
    ``EXACT_SGD`` and ``torch.optim.SGD`` on a sparse gradient.
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    kind: ClassVar[str] = "sgd"


@dataclass(frozen=True, repr=False)
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

    def _state_fields(self) -> tuple[StateField, ...]:
        return (StateField(True, False, self.initial_accumulator_value, True),)  # sum


@dataclass(frozen=True, repr=False)
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

    def _state_fields(self) -> tuple[StateField, ...]:
        return (StateField(False, False, self.initial_accumulator_value, True),)  # sum


def _check_betas(betas: Any, where: str) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{where}: betas must be a pair of floats (beta1, beta2), got {betas!r}")
    b1 = _check_float(betas[0], "betas[0]", where, high=1.0)
    b2 = _check_float(betas[1], "betas[1]", where, high=1.0)
    return b1, b2


@dataclass(frozen=True, repr=False)
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

    def _state_fields(self) -> tuple[StateField, ...]:
        # exp_avg, exp_avg_sq, step
        return StateField(True, False, 0.0, False), StateField(True, False, 0.0, True), StateField(False, True, 0, True)


@dataclass(frozen=True, repr=False)
class AdamW(Adam):
    """AdamW on the looked-up rows: :class:`Adam` with decoupled weight decay
    (``w *= 1 - lr * weight_decay`` before the step, looked-up rows only)."""

    weight_decay: float = 1e-2
    kind: ClassVar[str] = "adamw"


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



def new_state(spec: FusedSpec, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fresh per-row state for ``weight`` (rows, dim): int64 counters, the rest in the
    accumulation dtype (float32 for 16-bit tables; too coarse otherwise)."""
    rows, dim = weight.shape
    out = {}
    for name, f in spec.state_layout().items():
        shape = (rows, dim) if f.per_element else (rows,)
        dtype = torch.int64 if f.integer else acc_dtype(weight.dtype)
        out[name] = _memory.empty(shape, dtype=dtype, device=weight.device).fill_(f.initial)  # huge pages if large
    return out
