"""Shared test set-up: a fixed seed for every test, reproducible property tests, one table of tolerances per dtype."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run: a red run can be reproduced and a
# green one does not hinge on luck. HYPOTHESIS_PROFILE=explore searches afresh (random
# examples each run); what it finds becomes a regular test.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Triton kernels run on CPU tensors under the interpreter. Must be set before triton is
# imported anywhere, hence here, at collection time, unless a real GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    """Put torch's thread count back after each test: the apps set it (``--threads``)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread() -> None:
    """Run on one thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny tensors
    gain nothing from threads, whose barriers cost far more than the work on a busy 2-core
    machine. ``_keep_torch_threads`` puts the count back."""
    torch.set_num_threads(1)


# GPU-only tests: marked (``pytest -m cuda`` picks them all) and skipped without a device.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@contextlib.contextmanager
def deterministic(flag: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(flag)`` for the block."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(flag)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# Absolute and relative tolerance per dtype, for comparing a backend with torch.nn or
# with the reference. float16/bfloat16 results are rounded once more than float32 ones
# (reductions accumulate in float32, then round), so allow a few units in the last place.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-12, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Compare with the tolerance of ``dtype`` (default: ``expected``'s); sparse tensors are coalesced."""
    if actual.is_sparse:
        actual = actual.coalesce().to_dense()
    if expected.is_sparse:
        expected = expected.coalesce().to_dense()
    tol = TOLERANCES[dtype or expected.dtype]
    torch.testing.assert_close(actual, expected, **tol)


def assert_close_to_torch(actual: torch.Tensor, expected: torch.Tensor, exact: torch.Tensor | None) -> None:
    """``actual`` within the dtype's tolerance of torch's ``expected``, or at least as close
    as torch to the float64 result ``exact``.

    For float16/bfloat16 torch accumulates some reductions (e.g. bag gradients of a row
    repeated in many bags) in the 16-bit type, while embtab accumulates in float32 and
    rounds once. With cancelling terms torch's result can then be off by far more than
    one rounding; being closer to the exact answer is not a failure.
    """
    if actual.is_sparse:
        actual = actual.coalesce().to_dense()
    if expected.is_sparse:
        expected = expected.coalesce().to_dense()
    tol = TOLERANCES[expected.dtype]
    if exact is None or torch.allclose(actual, expected, **tol):
        torch.testing.assert_close(actual, expected, **tol)
        return
    if exact.is_sparse:
        exact = exact.coalesce().to_dense()
    exact = exact.double()
    ours, theirs = (actual.double() - exact).abs(), (expected.double() - exact).abs()
    bound = theirs + tol["atol"] + tol["rtol"] * exact.abs()
    worst = int((ours - bound).flatten().argmax())
    assert bool((ours <= bound).all()), (
        f"embtab is further from the float64 result than torch is: at flat index {worst} "
        f"|ours - exact| = {ours.flatten()[worst]:.4g}, |torch - exact| = {theirs.flatten()[worst]:.4g}"
    )


@pytest.fixture
def set_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """``set_backend(name)``: ``$EMBTAB_BACKEND=name`` for the rest of the test (read again by the registry)."""
    from embtab.ops import registry

    def set_(name: str) -> None:
        monkeypatch.setenv(registry.ENV_VAR, name)
        registry.refresh()

    yield set_
    monkeypatch.undo()
    registry.refresh()


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
