"""A quantized table's lookups, as the registry hands them to the lookup pipeline.

:class:`QuantLookup` has the functions and capabilities of a lookup backend
(``ops/reference.py``'s names and signatures), for one layout and row size: the
pipeline calls it exactly as it calls a dense table's backend (``prepare_bags``, then
``pool``; ``embedding`` for unpooled lookups), with ids already resolved by the table's
policy. It runs the kernels of one family, chosen once per (backend name, device) by
:func:`kernels_for`:

===========  ==============================================================
kernels      where
===========  ==============================================================
reference    ``quant/reference.py`` (torch ops, any device; the oracle)
numba        ``quant/cpu.py`` (CPU; ``"auto"``'s choice there)
triton       ``quant/triton.py`` (CUDA, or CPU under ``TRITON_INTERPRET=1``;
             ``"auto"``'s choice on CUDA)
===========  ==============================================================

Quantized tables are inference only: the backward functions refuse with an error that
names ``dequantize()``, and the update half of the backend (:data:`NO_UPDATE`) has
nothing to update.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .. import _checks
from ..ops.common import BagAux
from . import reference
from .layouts import LAYOUTS

_EMPTY = torch.empty(0, dtype=torch.int64)
_NO_AUX = BagAux(_EMPTY, _EMPTY, _EMPTY)


class QuantLookup:
    """The lookup functions of one quantized layout and row size, on one kernel family."""

    supports_skip = True  # every kernel leaves SKIP ids out
    checks_bounds = False  # ids arrive resolved (the policy checks them)
    values_dtype = torch.float32  # what the rows read as, and the output's dtype

    def __init__(self, layout: str, dim: int, kernels: ModuleType) -> None:
        self.layout = LAYOUTS[layout]
        self.dim = dim
        self.kernels = kernels
        self.name = f"{kernels.name}:{layout}"
        # Every feature of a collection in one call, where the kernels can (the same function
        # for all layouts and dims of a kernel family, so a collection's tables batch together).
        self.inference_many = getattr(kernels, "inference_many", None)

    def embedding_forward(self, weight: Tensor, ids: Tensor) -> Tensor:
        return self.kernels.embedding_forward(weight, ids, self.layout, self.dim)

    def embedding_bag_inference(self, weight: Tensor, ids: Tensor, offsets: Tensor, mode: str,
                                per_sample_weights: Tensor | None, padding_idx: int | None) -> Tensor:
        return self.kernels.embedding_bag_inference(weight, ids, offsets, mode, per_sample_weights, padding_idx,
                                                    self.layout, self.dim)

    def embedding_bag_forward(self, weight: Tensor, ids: Tensor, offsets: Tensor, mode: str,
                              per_sample_weights: Tensor | None, padding_idx: int | None) -> tuple[Tensor, BagAux]:
        # Reached when per_sample_weights require a gradient: the forward runs, its backward refuses.
        return self.embedding_bag_inference(weight, ids, offsets, mode, per_sample_weights, padding_idx), _NO_AUX

    def embedding_backward(self, *args: Any) -> Tensor:
        _checks.refuse_quantized_backward(self.layout.name, "the backward")
        raise AssertionError("unreachable")

    def embedding_bag_backward(self, *args: Any) -> tuple[Tensor | None, Tensor | None]:
        _checks.refuse_quantized_backward(self.layout.name, "the backward")
        raise AssertionError("unreachable")

    def renorm_(self, *args: Any) -> None:  # max_norm is applied when a table is quantized
        raise RuntimeError(f"embtab: a quantized table ({self.layout.name}) is read-only; it has no max_norm")


class _NoUpdate:
    """The update half of a quantized table's backend: there is nothing to update."""

    name = "none"

    @staticmethod
    def fused_update(*args: Any) -> None:
        _checks.refuse_quantized_backward("quantized", "a fused optimizer update")

    @staticmethod
    def run_jobs(*args: Any) -> None:
        _checks.refuse_quantized_backward("quantized", "a fused optimizer update")


NO_UPDATE = _NoUpdate()
_warned: set[str] = set()


def _optional(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except (ImportError, RuntimeError, OSError):
        return None


def kernels_for(name: str, device: torch.device) -> ModuleType:
    """The kernel family that runs backend ``name`` for quantized tables on ``device``."""
    if name in ("reference", "torch"):
        return reference
    if name == "numba" or (name == "auto" and device.type == "cpu"):
        return _family(name, "numba", "embtab.quant.cpu", device.type == "cpu", device,
                       "on CPU with numba installed (pip install 'embtab[jit]')",
                       "numba is not available; quantized lookups on CPU take the slower torch-ops path. "
                       "Install it: pip install 'embtab[jit]'")
    if name == "triton" or (name == "auto" and device.type == "cuda"):
        runs = device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")
        return _family(name, "triton", "embtab.quant.triton", runs, device,
                       "on CUDA (or on CPU under TRITON_INTERPRET=1) with Triton installed",
                       "Triton is not available; quantized lookups on CUDA take the torch-ops path. "
                       "Install it: pip install 'embtab[triton]'")
    return reference


def _family(name: str, family: str, module: str, runs: bool, device: torch.device, needs: str,
            fallback: str) -> ModuleType:
    """The kernels of ``family`` where they run; else an error when ``name`` asked for them,
    or the reference with a one-time warning when ``"auto"`` chose them."""
    kernels = _optional(module) if runs else None
    if kernels is not None:
        return kernels
    if name == family:
        raise RuntimeError(f"embtab: backend={family!r} runs quantized lookups {needs}, got a table on {device}")
    _warn_once(family, f"embtab: {fallback}")
    return reference


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=7)  # (the caller of the lookup)
