"""The one place that picks a backend, for lookups and for row updates alike.

A backend name picks both halves of a table's work:

============  ===========================  ======================================
name          lookups (forward/backward)   fused-optimizer row updates
============  ===========================  ======================================
reference     ``ops/reference.py``         ``ops/update_reference.py`` (float64)
torch         ``ops/native.py`` (ATen)     ``ops/update_torch.py`` (torch ops)
numba         ``ops/native.py`` (ATen)     ``ops/numba`` (CPU, float32/float64)
triton        ``ops/triton``               ``ops/triton/fused_optim.py``
============  ===========================  ======================================

``"auto"`` (every table's default) picks by device and dtype: on CPU ATen lookups and
numba updates (torch ops for 16-bit tables, or when numba is missing); on CUDA the
Triton kernels (ATen and torch ops when Triton is missing); elsewhere ATen and torch
ops. Under ``torch.compile`` lookups take a backend made of torch ops (``torch`` for
``auto``), which the compiler can trace; updates run outside the graph anyway.

A table whose ``TableSpec.layout`` is quantized (``embtab/quant``) gets that layout's
lookups instead (``quant/lookup.py``: the torch reference, numba on CPU, Triton on CUDA,
by the same names) and no updates: quantized tables are inference only.

``$EMBTAB_BACKEND`` replaces ``"auto"`` everywhere (read at import; :func:`refresh`
reads it again). A backend asked for by name that cannot run raises; when ``auto``
cannot use a fast path it falls back once, with a one-time warning that says why
and what to install. :func:`backends` reports what runs where. Optional backends
(numba, Triton) are imported on their first selection, never again on a call path.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import torch

from . import common, native, reference, update_reference, update_torch

NAMES = ("auto", "reference", "torch", "numba", "triton")
ENV_VAR = "EMBTAB_BACKEND"
_FLOAT_32_64 = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """The modules that do a table's work on one (device, dtype), and what they can do.

    ``lookup`` has the functions of ``ops/reference.py``; ``update`` has ``fused_update``
    and ``run_jobs`` (see ``ops/common.py``). The capabilities are read off the modules
    once, here (the lookup pipeline asks on every call).
    """

    lookup: ModuleType
    update: ModuleType
    # Why ``update`` is not the fast one, said once when an update first runs (not on
    # lookups of tables that never train with a fused optimizer).
    update_note: str = ""
    # The lookup kernels understand SKIP ids (others get them compacted away).
    supports_skip: bool = field(init=False)
    # The lookup kernels raise on an out-of-range id (without naming it).
    checks_bounds: bool = field(init=False)
    # The lookups are ATen's, whose own differentiable ops compute the same results.
    native_autograd: bool = field(init=False)
    # The table-batched bag forward, which also resolves the stateless policies and checks
    # the input in its kernel (``ops/triton/pooled.py``), or None.
    pooled: "Callable[..., Any] | None" = field(init=False)
    # The dtype of the looked-up values when it is not the weight's (a quantized table's
    # uint8 rows read as float32), or None.
    values_dtype: "torch.dtype | None" = field(init=False)
    # No-gradient bag lookups of many features in one call (``pipeline._inference``), or None:
    # ``inference_many([(lookup, weight, ids, ends, mode, psw, padding_idx), ...]) -> (B, sum of D)``.
    inference_many: "Callable[..., Any] | None" = field(init=False)
    # ``offsets_decrease(numpy offsets) -> bool``: the order check of a caller's offsets
    # handed to ATen on CPU (``pipeline.Bags.kernel_args``); numba's when it is loaded.
    offsets_decrease: "Callable[[Any], bool]" = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "supports_skip", bool(self.lookup.supports_skip))
        set_(self, "checks_bounds", bool(getattr(self.lookup, "checks_bounds", False)))
        set_(self, "native_autograd", self.lookup is native)
        set_(self, "pooled", getattr(self.lookup, "pooled_forward", None))
        set_(self, "values_dtype", getattr(self.lookup, "values_dtype", None))
        set_(self, "inference_many", getattr(self.lookup, "inference_many", None))
        set_(self, "offsets_decrease", getattr(self.update, "offsets_decrease", common.offsets_decrease))

    def updater(self) -> ModuleType:
        """``update``, after the one-time warning of a fallback."""
        if self.update_note:
            _warn_once(self.update_note, self.update_note)
        return self.update

    @property
    def name(self) -> str:
        return f"{self.lookup.name}+{self.update.name}"


def check_name(backend: object, where: str) -> str:
    if backend not in NAMES:
        from .._checks import BadArgumentError

        raise BadArgumentError(f"{where}: unknown backend {backend!r}; choose one of {list(NAMES)}")
    return backend  # type: ignore[return-value]


_env_default = "auto"
_env_error: Exception | None = None  # a bad $EMBTAB_BACKEND, raised at the first lookup (not at import)
_cache: dict[tuple[str, torch.device, torch.dtype, bool], Backend] = {}
_warned: set[str] = set()


def refresh() -> None:
    """Read ``$EMBTAB_BACKEND`` again and forget the choices made (for tests and notebooks)."""
    global _env_default, _env_error
    value = os.environ.get(ENV_VAR, "") or "auto"
    _cache.clear()
    _quantized_cache.clear()
    try:
        _env_default, _env_error = check_name(value, f"${ENV_VAR}"), None
    except ValueError as exc:
        _env_default, _env_error = "auto", exc


def select(name: str, device: torch.device, dtype: torch.dtype, contiguous: bool = True, layout: str = "dense",
           dim: int = 0) -> Backend:
    """The backend that runs ``name`` (checked) for tables of ``dtype`` on ``device``.

    ``layout``: how the table stores its rows (``TableSpec.layout``); a quantized layout
    (``dim`` values a row) gets the lookups of ``embtab/quant``.
    """
    if layout != "dense":
        return _quantized(name, device, layout, dim)
    if torch.compiler.is_compiling():
        return _traceable(name)
    key = (name, device, dtype, contiguous)  # the device itself: its .type costs more than the lookup
    backend = _cache.get(key)
    if backend is None:
        if _env_error is not None:
            raise _env_error
        backend = _cache[key] = _choose(name, device, dtype, contiguous)
    return backend


_quantized_cache: dict[tuple[str, torch.device, str, int, bool], Backend] = {}


def _quantized(name: str, device: torch.device, layout: str, dim: int) -> Backend:
    """The backend of a quantized table: its lookups (``embtab/quant/lookup.py``), no updates."""
    compiling = torch.compiler.is_compiling()
    key = (name, device, layout, dim, compiling)
    backend = _quantized_cache.get(key)
    if backend is None:
        if _env_error is not None:
            raise _env_error
        from ..quant import lookup as quant_lookup  # (imports the quantization modules on first use)

        chosen = _env_default if name == "auto" else name
        kernels = quant_lookup.kernels_for("reference" if compiling else chosen, device)
        lookup = quant_lookup.QuantLookup(layout, dim, kernels)
        backend = _quantized_cache[key] = Backend(lookup, quant_lookup.NO_UPDATE)  # type: ignore[arg-type]
    return backend


def _traceable(name: str) -> Backend:
    if name == "auto":
        name = _env_default
    if name == "reference":
        return Backend(reference, update_reference)
    if name == "triton":
        raise RuntimeError(
            "embtab: backend='triton' is not traced by torch.compile (its launchers are Python); "
            "use backend='auto' there: the compiler generates its own kernels for the lookup"
        )
    return Backend(native, update_torch)


def _choose(name: str, device: torch.device, dtype: torch.dtype, contiguous: bool) -> Backend:
    if name == "auto":
        name = _env_default
    if name == "reference":
        return Backend(reference, update_reference)
    if name == "torch":
        return Backend(native, update_torch)
    if name == "numba":
        if device.type != "cpu" or dtype not in _FLOAT_32_64 or not contiguous:
            raise RuntimeError(
                f"embtab: backend='numba' updates contiguous float32/float64 tables on CPU, got a "
                f"{'' if contiguous else 'non-contiguous '}{dtype} table on {device}; use backend='auto'"
            )
        return Backend(native, _numba("backend='numba'"))
    if name == "triton":
        module = _triton("backend='triton'")
        if not _triton_runs_on(device) or dtype not in _TRITON_DTYPES or not contiguous:
            raise RuntimeError(
                f"embtab: backend='triton' runs contiguous float tables on CUDA (or on CPU under Triton's "
                f"interpreter, TRITON_INTERPRET=1), got a {'' if contiguous else 'non-contiguous '}{dtype} "
                f"table on {device}"
            )
        return Backend(module, module.fused_optim)
    # auto
    if device.type == "cpu":
        if dtype in _FLOAT_32_64 and contiguous:
            try:
                return Backend(native, _numba(None))
            except ImportError as exc:
                return Backend(native, update_torch, (
                    f"embtab: numba is not available ({exc}); fused optimizer updates on CPU take the "
                    f"slower torch-ops path. Install it: pip install 'embtab[jit]'"))
        return Backend(native, update_torch, (
            f"embtab: fused optimizer updates of {'non-contiguous ' if not contiguous else ''}{dtype} "
            f"tables on CPU take the torch-ops path (the numba kernels update contiguous float32 "
            f"and float64 tables)") if dtype.is_floating_point else "")
    if device.type == "cuda":
        try:
            module = _triton(None)
        except ImportError as exc:
            _warn_once("triton", f"embtab: Triton is not available ({exc}); CUDA tables use ATen lookups and "
                                 f"torch-ops updates. Install it: pip install 'embtab[triton]'")
            return Backend(native, update_torch)
        fast = dtype in _TRITON_DTYPES
        return Backend(module if fast else native, module.fused_optim if fast and contiguous else update_torch)
    return Backend(native, update_torch)


def _triton_runs_on(device: torch.device) -> bool:
    # Triton's interpreter (its own setting) runs kernels on CPU tensors.
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


_optional: dict[str, ModuleType | ImportError] = {}


def _import(module: str) -> ModuleType:
    """Import an optional backend once; a failure is remembered (and re-raised), not retried."""
    got = _optional.get(module)
    if got is None:
        try:
            got = importlib.import_module(module)
        except (ImportError, RuntimeError, OSError) as exc:  # numba may fail to find a cache folder
            got = exc if isinstance(exc, ImportError) else ImportError(str(exc))
        _optional[module] = got
    if isinstance(got, ImportError):
        raise got
    return got


def _numba(asked: str | None) -> ModuleType:
    try:
        return _import("embtab.ops.numba.update")
    except ImportError as exc:
        if asked is None:
            raise
        raise RuntimeError(f"embtab: {asked} needs numba ({exc}): pip install 'embtab[jit]'") from exc


def _triton(asked: str | None) -> ModuleType:
    try:
        module = _import("embtab.ops.triton")
        _import("embtab.ops.triton.fused_optim")
        return module
    except ImportError as exc:
        if asked is None:
            raise
        raise RuntimeError(f"embtab: {asked} needs Triton ({exc}): pip install 'embtab[triton]'") from exc


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=5)


@dataclass(frozen=True)
class BackendReport:
    """What :func:`backends` returns: one row per (device, dtype) of this machine."""

    rows: tuple[tuple[str, str, str, str], ...]  # (device, dtype, lookups, updates)
    default: str
    notes: tuple[str, ...]

    def __str__(self) -> str:
        width = [max(len(r[i]) for r in self.rows + (("device", "dtype", "lookups", "updates"),)) for i in range(4)]
        head = ("device", "dtype", "lookups", "updates")
        lines = [f"embtab backends (backend='{self.default}'):"]
        lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, width)))
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, width)) for r in self.rows]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def backends(name: str = "auto") -> BackendReport:
    """What runs where on this machine for tables of backend ``name`` (default ``"auto"``).

    Example:
        >>> print(embtab.backends())  # doctest: +SKIP
        embtab backends (backend='auto'):
          device  dtype          lookups  updates
          cpu     torch.float32  torch    numba
          ...
    """
    check_name(name, "backends()")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, notes = [], []
    for device in devices:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    b = _choose(name, device, dtype, True)
                    rows.append((device.type, str(dtype), b.lookup.name, b.update.name))
                except RuntimeError as exc:
                    rows.append((device.type, str(dtype), "-", "-"))
                    notes.append(str(exc))
    for module, what in (("embtab.ops.numba.update", "numba"), ("embtab.ops.triton", "triton")):
        try:
            _import(module)
        except ImportError as exc:
            notes.append(f"{what} not available: {exc}")
    if _env_default != "auto":
        notes.append(f"${ENV_VAR}={_env_default} replaces 'auto'")
    return BackendReport(tuple(rows), name, tuple(dict.fromkeys(notes)))


refresh()
