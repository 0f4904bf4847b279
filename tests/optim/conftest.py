"""Fixtures for the optimizer tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Run on one thread: these tensors are tiny, so extra threads only add barriers
    (which cost far more than the work on a busy 2-core machine). The multi-threaded
    kernels have their own tests, which set the thread count themselves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
