"""Fixtures for the optimizer tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every optimizer test on one thread (``tests/conftest.py``); the multi-threaded kernels
    have their own tests, which set the thread count themselves."""
