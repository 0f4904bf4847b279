"""Sharded forward = the unsharded collection's, on every rank's own batch (gloo, 2 and 3 ranks)."""

from __future__ import annotations

import pytest
import torch

from . import _cases
from ._spawn import run


@pytest.mark.parametrize("world", [2, 3])
def test_forward_equals_unsharded_for_every_kind_pooling_and_weights(world: int) -> None:
    run(world, _cases.forward_equality)


def test_forward_float32() -> None:
    run(2, _cases.forward_equality, torch.float32)


def test_errors_raise_on_every_rank_naming_it() -> None:
    run(2, _cases.errors_on_every_rank)
