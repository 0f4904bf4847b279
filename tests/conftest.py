"""Shared test set-up: a fixed seed for every test, one table of tolerances per dtype."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

# Triton kernels run on CPU tensors under the interpreter. Must be set before triton is
# imported anywhere, hence here, at collection time, unless a real GPU is present.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
