"""Sharded training = one process on the concatenated batch, loss (sum of the ranks' losses) / W.

Every fused optimizer, 4 steps, every kind in one collection (row-wise, table-wise,
column-wise, data-parallel; padding, the id policies, a table with fewer rows than
ranks, a shared table, sum/mean/max pooling), batches of different sizes including
empty ones. In float64 the tables and the optimizer state agree to float64 rounding
(the summation order differs); in float32 within 2e-5.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import embtab
import embtab.distributed as ed

from . import _cases
from ._spawn import run

SPECS = {
    "sgd": embtab.optim.SGD(lr=0.1, weight_decay=0.01),
    "adagrad": embtab.optim.Adagrad(lr=0.1, initial_accumulator_value=0.1),
    "rowwise_adagrad": embtab.optim.RowWiseAdagrad(lr=0.1, weight_decay=0.05),
    "adam": embtab.optim.Adam(lr=0.05, weight_decay=0.01),
    "adamw": embtab.optim.AdamW(lr=0.05),
}


@pytest.mark.parametrize("name", list(SPECS))
def test_every_fused_optimizer_trains_as_one_process(name: str) -> None:
    run(2, _cases.train_equal, SPECS[name])


def test_three_ranks_sgd_and_rowwise_adagrad() -> None:
    run(3, _cases.train_equal, SPECS["sgd"])
    run(3, _cases.train_equal, SPECS["rowwise_adagrad"])


def _column_plan(world: int) -> ed.ShardingPlan:
    return ed.ShardingPlan({"cw": ed.column_wise(ranks=list(range(world))), "cwdp": ed.column_wise(ranks=[1, 0]),
                            "x": ed.column_wise(ranks=[0, world - 1])})


def test_column_wise_rowwise_adagrad_keeps_one_accumulator_per_full_row() -> None:
    run(3, _cases.train_equal, embtab.optim.RowWiseAdagrad(lr=0.2, weight_decay=0.1), _column_plan)


def test_float32_within_tolerance() -> None:
    run(2, functools.partial(_cases.train_equal, dtype=torch.float32), SPECS["adam"])


def test_update_on_step_accumulates_backward_passes() -> None:
    run(2, functools.partial(_cases.train_equal, accumulate=2, steps=2),
        embtab.optim.RowWiseAdagrad(lr=0.1, update="step"))


@pytest.mark.parametrize("world, spec, clip", [
    (2, embtab.optim.RowWiseAdagrad(lr=0.1, update="step"), (0.5, 2.0)),
    (3, embtab.optim.SGD(lr=0.1, update="step"), (0.05, math.inf)),
])
def test_clip_grad_norm_is_over_every_rank(world: int, spec: object, clip: tuple[float, float]) -> None:
    """``clip_grad_norm_`` on a sharded collection's optimizer measures the gradient of the
    whole model (a data-parallel table's once, column pieces together) and clips as one process does."""
    run(world, functools.partial(_cases.train_equal, clip=clip), spec)
