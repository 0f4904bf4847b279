"""The one place that picks a backend.

A backend is a module with the functions of ``ops/reference.py`` (same names, same
signatures) and the attributes ``name``, ``supports_skip`` (it understands SKIP ids)
and, optionally, ``checks_bounds`` (its kernels raise on an out-of-range id; default False).

- ``"reference"``: pure PyTorch primitives; the semantics and the test oracle.
- ``"torch"``: torch's ATen kernels; the default on CPU.
- ``"triton"``: Triton kernels; the default for CUDA tensors when Triton imports.

``backend="auto"`` picks by device. The environment variable ``EMBTAB_BACKEND``
replaces ``"auto"`` everywhere, for debugging (``EMBTAB_BACKEND=reference pytest``).
A backend asked for by name that cannot run raises instead of falling back.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

BACKENDS = {
    "reference": "embtab.ops.reference",
    "torch": "embtab.ops.native",
    "triton": "embtab.ops.triton",
}
ENV_VAR = "EMBTAB_BACKEND"


_loaded: dict[str, ModuleType] = {}


def check_backend_name(backend: object, where: str) -> str:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(
            f"{where}: unknown backend {backend!r}; choose 'auto' or one of {sorted(BACKENDS)}"
        )
    return backend  # type: ignore[return-value]


def _load(name: str) -> ModuleType:
    module = _loaded.get(name)
    if module is None:
        module = importlib.import_module(BACKENDS[name])
        _loaded[name] = module
    return module


def triton_available() -> bool:
    try:
        _load("triton")
    except ImportError:
        return False
    return True


def select(backend: str, device: torch.device, where: str = "embtab") -> ModuleType:
    """The backend module to run on ``device`` (``backend`` is a name or ``"auto"``)."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
        check_backend_name(backend, f"{where} (from ${ENV_VAR})")
    if backend == "auto":
        if device.type == "cuda" and triton_available():
            return _load("triton")
        return _load("torch")
    if backend == "triton":
        try:
            module = _load("triton")
        except ImportError as exc:
            raise RuntimeError(
                f"{where}: backend='triton' needs Triton: pip install 'embtab[triton]' ({exc})"
            ) from exc
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(
                f"{where}: backend='triton' runs on CUDA tensors (or on CPU tensors under "
                f"TRITON_INTERPRET=1), got tensors on {device}"
            )
        return module
    return _load(backend)
