"""embtab against the sample inputs torch ships for its own embedding ops (issue #14).

The torch wheel carries OpInfo entries ``nn.functional.embedding`` and
``nn.functional.embedding_bag`` (``common_methods_invocations.op_db``) and a ModuleInfo
for ``nn.Embedding`` (``common_modules.module_db``; there is none for EmbeddingBag).
Every CPU sample, in every dtype the OpInfo declares for CPU, goes through torch and
through embtab with the same arguments: same weight values, same ids, same upstream
gradient. Outputs, the weight after the call (``max_norm`` renormalises it in place) and
the gradients of every differentiable input (the weight, ``per_sample_weights``) must
agree within the dtype's tolerance (for float16/bfloat16: or be at least as close as
torch to the float64 result). Where torch raises (the OpInfo's and ModuleInfo's error
inputs), embtab must raise too; both classes are recorded as test properties.

The samples are drawn with ``requires_grad=False``: that set holds the gradient samples
and the ones gradcheck cannot judge (``padding_idx``, ``max_norm``, ``scale_grad_by_freq``,
``sparse``); analytic gradients are still compared with torch's.

``torch.testing._internal`` needs ``expecttest`` (a dev dependency); without it, or with
a torch that lacks these entries, the tests skip and say why. Importing it registers and
loads hypothesis profiles of PyTorch's, freezes ``torch.backends`` flags and patches
TorchScript call methods: all three are put back, so the other tests see no change.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import embtab
from embtab import functional as EF
from tests.conftest import assert_close_to_torch

OPS = ("nn.functional.embedding", "nn.functional.embedding_bag")
MODULES = {"nn.Embedding": embtab.Embedding, "nn.EmbeddingBag": embtab.EmbeddingBag}
TORCH_FUNCTIONAL = {"nn.functional.embedding": torch.nn.functional.embedding,
                    "nn.functional.embedding_bag": torch.nn.functional.embedding_bag}
EMBTAB_FUNCTIONAL = {"nn.functional.embedding": EF.embedding, "nn.functional.embedding_bag": EF.embedding_bag}


@contextlib.contextmanager
def _no_import_side_effects() -> Iterator[None]:
    """Undo what importing ``torch.testing._internal.common_utils`` does to the process."""
    try:
        import hypothesis
    except ImportError:  # pragma: no cover - hypothesis is a dev dependency
        hypothesis = None
    profile = getattr(hypothesis.settings, "_current_profile", None) if hypothesis else None
    flags_frozen = torch.backends.flags_frozen()
    script_calls = (torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__)
    try:
        yield
    finally:
        if hypothesis is not None and profile is not None:
            hypothesis.settings.load_profile(profile)
        if not flags_frozen:
            # The module global that disable_global_flags() clears.
            torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
        torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = script_calls


def _load_torch_testing() -> tuple[Any, Any, str | None]:
    """(op_db, module_db, why not); op_db / module_db are None where unavailable."""
    with _no_import_side_effects():
        try:
            op_db = importlib.import_module("torch.testing._internal.common_methods_invocations").op_db
        except ModuleNotFoundError as exc:
            hint = " (pip install expecttest: a dev dependency)" if exc.name == "expecttest" else ""
            return None, None, f"torch.testing._internal cannot be imported: {exc}{hint}"
        except Exception as exc:  # a torch whose testing internals changed
            return None, None, f"torch.testing._internal is unusable here: {type(exc).__name__}: {exc}"
        try:
            module_db = importlib.import_module("torch.testing._internal.common_modules").module_db
        except Exception as exc:
            return op_db, None, f"torch.testing._internal.common_modules is unusable here: {type(exc).__name__}: {exc}"
    return op_db, module_db, None


OP_DB, MODULE_DB, WHY_NOT = _load_torch_testing()
if OP_DB is None:
    pytest.skip(WHY_NOT or "torch.testing._internal unavailable", allow_module_level=True)

OPINFOS = {o.name: o for o in OP_DB if o.name in OPS and not o.variant_test_name}
MODULEINFOS = {m.name: m for m in (MODULE_DB or []) if m.name in MODULES}


# --- samples, drawn once with a fixed seed at collection -----------------------------


def _seeded(draw: Callable[[], list]) -> list:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return list(draw())


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _describe(sample: Any) -> str:
    """Readable id: index shape, then the non-default keyword arguments."""
    idx = sample.args[0]
    parts = [f"ids{_shape(idx)}" + ("" if idx.is_contiguous() else "-noncontig")]
    for key, value in sample.kwargs.items():
        if key == "per_sample_weights":
            if value is not None:
                parts.append("psw")
        elif key == "offsets":
            parts.append("offsets" + "-".join(map(str, value.tolist())))
        elif key == "mode":
            parts.append(value)
        elif value is True:
            parts.append(key)
        elif value is not None:
            parts.append(f"{key}={value}")
    return "-".join(parts)


def _op_params() -> list:
    params = []
    for name in OPS:
        info = OPINFOS.get(name)
        if info is None:
            params.append(pytest.param(name, None, -1, id=f"{name}-missing",
                                       marks=pytest.mark.skip(reason=f"op_db of torch {torch.__version__} has no {name!r}")))
            continue
        for dtype in sorted(info.supported_dtypes("cpu"), key=str):
            samples = _seeded(lambda: info.sample_inputs("cpu", dtype, requires_grad=False))
            _SAMPLES[(name, dtype)] = samples
            short = name.rsplit(".", 1)[-1]
            for i, s in enumerate(samples):
                params.append(pytest.param(name, dtype, i, id=f"{short}-{str(dtype)[6:]}-{i:02d}-{_describe(s)}"))
    return params


def _error_params() -> list:
    params = []
    for name in OPS:
        info = OPINFOS.get(name)
        if info is None or info.error_inputs_func is None:
            continue
        errors = _seeded(lambda: info.error_inputs("cpu"))
        _ERRORS[name] = errors
        short = name.rsplit(".", 1)[-1]
        for i, e in enumerate(errors):
            s = e.sample_input
            params.append(pytest.param(name, i, id=f"{short}-error{i}-weight{_shape(s.input)}"))
    return params


@dataclass
class _ModuleCase:
    module: str
    dtype: torch.dtype | None
    index: int
    training: bool


def _module_params() -> list:
    params = []
    for name in MODULES:
        info = MODULEINFOS.get(name)
        if info is None:
            why = WHY_NOT or f"module_db of torch {torch.__version__} has no {name!r}"
            params.append(pytest.param(_ModuleCase(name, None, -1, True), id=f"{name}-missing",
                                       marks=pytest.mark.skip(reason=why)))
            continue
        modes = (True, False) if info.train_and_eval_differ else (True,)
        for dtype in info.dtypes:
            for training in modes:
                inputs = _seeded(lambda: info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False,
                                                                 training=training))
                _MODULE_INPUTS[(name, dtype, training)] = inputs
                for i, mi in enumerate(inputs):
                    desc = mi.desc or "-".join(_shape(a) for a in mi.forward_input.args if isinstance(a, torch.Tensor))
                    mode = "" if len(modes) == 1 else ("-train" if training else "-eval")
                    params.append(pytest.param(_ModuleCase(name, dtype, i, training),
                                               id=f"{name}-{str(dtype)[6:]}-{i}-{desc}{mode}"))
    return params


def _module_error_params() -> list:
    params = []
    for name in MODULES:
        info = MODULEINFOS.get(name)
        if info is None or info.module_error_inputs_func is None:
            continue
        errors = _seeded(lambda: info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                                                requires_grad=False, training=True))
        _MODULE_ERRORS[name] = errors
        for i, e in enumerate(errors):
            params.append(pytest.param(name, i, id=f"{name}-error{i}-{e.error_on.name.lower()}"))
    return params


_SAMPLES: dict[tuple[str, torch.dtype], list] = {}
_ERRORS: dict[str, list] = {}
_MODULE_INPUTS: dict[tuple[str, torch.dtype, bool], list] = {}
_MODULE_ERRORS: dict[str, list] = {}


# --- running one sample through torch and through embtab -----------------------------


def _copy(t: Any, dtype: torch.dtype | None = None) -> Any:
    """A fresh leaf with the same values (differentiable if floating point); non-tensors pass."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach().clone()
    if dtype is not None and t.is_floating_point():
        t = t.to(dtype)
    return t.requires_grad_(t.is_floating_point())


@dataclass
class _Run:
    out: torch.Tensor
    weight_after: torch.Tensor
    grads: dict[str, torch.Tensor | None]


def _run(fn: Callable[..., torch.Tensor], sample: Any, grad_out: torch.Tensor | None,
         dtype: torch.dtype | None = None) -> _Run:
    """``fn(ids, weight, **kwargs)`` on fresh copies (cast to ``dtype`` if given), then backward."""
    weight = _copy(sample.input, dtype)
    kwargs = {k: _copy(v, dtype) if k == "per_sample_weights" else v for k, v in sample.kwargs.items()}
    ids = sample.args[0]
    out = sample.output_process_fn_grad(fn(ids, weight, **kwargs))
    inputs = {"weight": weight}
    if isinstance(kwargs.get("per_sample_weights"), torch.Tensor):
        inputs["per_sample_weights"] = kwargs["per_sample_weights"]
    grads: dict[str, torch.Tensor | None] = dict.fromkeys(inputs)
    if grad_out is not None and out.requires_grad:
        got = torch.autograd.grad(out, list(inputs.values()), grad_out.to(out.dtype), allow_unused=True)
        grads = dict(zip(inputs, got))
    return _Run(out.detach(), weight.detach(), grads)


def _compare(ours: _Run, theirs: _Run, exact: _Run | None) -> None:
    assert ours.out.dtype == theirs.out.dtype, f"output dtype {ours.out.dtype}, torch gives {theirs.out.dtype}"
    assert ours.out.shape == theirs.out.shape, f"output shape {tuple(ours.out.shape)}, torch gives {tuple(theirs.out.shape)}"
    assert_close_to_torch(ours.out, theirs.out, exact.out if exact else None)
    # max_norm renormalises the referenced rows in place.
    assert_close_to_torch(ours.weight_after, theirs.weight_after, exact.weight_after if exact else None)
    for key, expected in theirs.grads.items():
        actual = ours.grads.get(key)
        if expected is None:
            assert actual is None or not actual.any(), f"torch gives no gradient for {key}, embtab a nonzero one"
            continue
        assert actual is not None, f"embtab gives no gradient for {key}, torch does"
        assert actual.is_sparse == expected.is_sparse, (
            f"gradient of {key}: embtab's is {'sparse' if actual.is_sparse else 'dense'}, torch's is "
            f"{'sparse' if expected.is_sparse else 'dense'}")
        assert actual.dtype == expected.dtype, f"gradient of {key}: dtype {actual.dtype}, torch gives {expected.dtype}"
        assert_close_to_torch(actual, expected, exact.grads.get(key) if exact else None)


def _upstream(out: torch.Tensor, seed: int) -> torch.Tensor:
    """The same upstream gradient for torch and embtab (float64; cast by the caller)."""
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _forward_backward(fn: Callable[..., torch.Tensor], sample: Any, seed: int, dtype: torch.dtype | None = None) -> _Run:
    return _run(fn, sample, _upstream(_run(fn, sample, None, dtype).out, seed), dtype)


@pytest.mark.parametrize("op, dtype, index", _op_params())
def test_opinfo_sample_matches_torch(op: str, dtype: torch.dtype, index: int,
                                     record_property: Callable[[str, object], None]) -> None:
    sample = _SAMPLES[(op, dtype)][index]
    info = OPINFOS[op]
    try:
        # The OpInfo's op takes (weight, ids, **kwargs); check that we call torch the same way.
        via_opinfo = info.op(_copy(sample.input), sample.args[0],
                             **{k: _copy(v) if k == "per_sample_weights" else v for k, v in sample.kwargs.items()})
        theirs = _forward_backward(TORCH_FUNCTIONAL[op], sample, index)
    except Exception as exc:
        # torch refuses this sample (in forward or backward): embtab must refuse it too.
        record_property("torch_exception", f"{type(exc).__name__}: {exc}")
        with pytest.raises(Exception) as ours_exc:
            _forward_backward(EMBTAB_FUNCTIONAL[op], sample, index)
        record_property("embtab_exception", f"{type(ours_exc.value).__name__}: {ours_exc.value}")
        return
    torch.testing.assert_close(theirs.out, sample.output_process_fn_grad(via_opinfo).detach(), rtol=0, atol=0)

    ours = _forward_backward(EMBTAB_FUNCTIONAL[op], sample, index)
    exact = None
    if dtype in (torch.float16, torch.bfloat16):
        exact = _forward_backward(TORCH_FUNCTIONAL[op], sample, index, torch.float64)
    _compare(ours, theirs, exact)


@pytest.mark.parametrize("op, index", _error_params())
def test_opinfo_error_input_raises_like_torch(op: str, index: int,
                                              record_property: Callable[[str, object], None]) -> None:
    error = _ERRORS[op][index]
    s = error.sample_input
    with pytest.raises(error.error_type, match=error.error_regex):
        OPINFOS[op].op(s.input, *s.args, **s.kwargs)
    record_property("torch_exception", f"{error.error_type.__name__}: {error.error_regex}")
    with pytest.raises(Exception) as ours:
        EMBTAB_FUNCTIONAL[op](s.args[0], s.input, *s.args[1:], **s.kwargs)
    record_property("embtab_exception", f"{type(ours.value).__name__}: {ours.value}")


def _build(cls: type, ctor: Any, dtype: torch.dtype) -> torch.nn.Module:
    return cls(*ctor.args, **ctor.kwargs, device="cpu", dtype=dtype)


@pytest.mark.parametrize("case", _module_params())
def test_moduleinfo_sample_matches_torch(case: _ModuleCase) -> None:
    info = MODULEINFOS[case.module]
    mi = _MODULE_INPUTS[(case.module, case.dtype, case.training)][case.index]
    ctor, fwd = mi.constructor_input, mi.forward_input

    theirs = _build(info.module_cls, ctor, case.dtype)
    ours = _build(MODULES[case.module], ctor, case.dtype)
    assert list(ours.state_dict()) == list(theirs.state_dict()), "state_dict keys differ from torch's"
    ours.load_state_dict(theirs.state_dict())  # same weights
    theirs.train(case.training)
    ours.train(case.training)

    out_t = theirs(*fwd.args, **fwd.kwargs)
    out_o = ours(*fwd.args, **fwd.kwargs)
    assert out_o.dtype == out_t.dtype and out_o.shape == out_t.shape
    assert_close_to_torch(out_o.detach(), out_t.detach(), None)

    grad_out = _upstream(out_t, case.index)
    out_t.backward(grad_out.to(out_t.dtype))
    out_o.backward(grad_out.to(out_o.dtype))
    for (name, p_t), (name_o, p_o) in zip(theirs.named_parameters(), ours.named_parameters()):
        assert name == name_o
        assert p_o.grad is not None and p_o.grad.is_sparse == p_t.grad.is_sparse
        assert_close_to_torch(p_o.grad, p_t.grad, None)


@pytest.mark.parametrize("module, index", _module_error_params())
def test_moduleinfo_error_input_raises_like_torch(module: str, index: int,
                                                  record_property: Callable[[str, object], None]) -> None:
    error = _MODULE_ERRORS[module][index]
    mi = error.module_error_input
    ctor, fwd = mi.constructor_input, mi.forward_input
    construction = error.error_on.name == "CONSTRUCTION_ERROR"

    def attempt(cls: type) -> None:
        m = cls(*ctor.args, **ctor.kwargs)
        if not construction:
            m(*fwd.args, **fwd.kwargs)

    with pytest.raises(error.error_type, match=error.error_regex):
        attempt(MODULEINFOS[module].module_cls)
    record_property("torch_exception", f"{error.error_type.__name__}: {error.error_regex}")
    with pytest.raises(Exception) as ours:
        attempt(MODULES[module])
    record_property("embtab_exception", f"{type(ours.value).__name__}: {ours.value}")
