"""Initialisation strategies for embedding tables, by name.

``"normal"`` (N(0, 1)) is the default because it is torch's: with the same seed an
``embtab.Embedding`` starts from exactly the weights of a ``torch.nn.Embedding``.
The padding row is zeroed after any strategy (by the module, not here).
"""

from __future__ import annotations

import math
from typing import Callable, Union

import torch
from torch.nn import init as _init

InitFn = Callable[[torch.Tensor], object]
Init = Union[str, InitFn]


def _uniform(w: torch.Tensor) -> None:
    # U(-1/sqrt(V), 1/sqrt(V)): the scale of a linear layer with V inputs, the
    # usual choice when an embedding stands in for a one-hot input layer.
    bound = 1.0 / math.sqrt(w.shape[0])
    _init.uniform_(w, -bound, bound)


INITS: dict[str, InitFn] = {
    "normal": _init.normal_,
    "uniform": _uniform,
    "xavier_uniform": _init.xavier_uniform_,
    "xavier_normal": _init.xavier_normal_,
    "kaiming_uniform": _init.kaiming_uniform_,
    "kaiming_normal": _init.kaiming_normal_,
    # N(0, 1) truncated to [-2, 2], torch's trunc_normal_ defaults.
    "truncated_normal": _init.trunc_normal_,
    "zeros": _init.zeros_,
}


def check_init(init: object, where: str) -> Init:
    if callable(init):
        return init  # type: ignore[return-value]
    if init not in INITS:
        raise ValueError(
            f"{where}: unknown init {init!r}; choose one of {sorted(INITS)} "
            f"or pass a callable that fills a tensor in place"
        )
    return init  # type: ignore[return-value]


@torch.no_grad()
def apply_init(weight: torch.Tensor, init: Init) -> None:
    """Fill ``weight`` (rows x dim) in place with the named strategy or callable."""
    fn = init if callable(init) else INITS[init]
    fn(weight)
