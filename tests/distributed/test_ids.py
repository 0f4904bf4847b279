"""Sharded hashed and dynamic tables (ids=embtab.ids.Hashed / Dynamic) on 2 and 3 ranks (gloo).

Hashed: forward and training equal the unsharded collection under every kind. Dynamic: with
capacities that never evict, training equals one process's (outputs, rows, optimizer state,
pending counts, statistics summed over the ranks) and eval mode changes nothing; with
eviction, each rank is the dict model fed the ids it owns. Checkpoints saved at 2 ranks load
at 1 (a plain collection), 2 and 3, under other plans.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import embtab

from . import _ids_cases
from ._spawn import run


@pytest.mark.parametrize("world", [2, 3])
def test_hashed_forward_equals_unsharded_for_every_kind_pooling_and_weights(world: int) -> None:
    run(world, _ids_cases.hashed_forward)


@pytest.mark.parametrize("world, spec", [(2, embtab.optim.Adam(lr=0.05, weight_decay=0.01)),
                                         (3, embtab.optim.RowWiseAdagrad(lr=0.1))])
def test_hashed_training_equals_one_process(world: int, spec: object) -> None:
    run(world, _ids_cases.hashed_train, spec)


def test_hashed_float32_within_tolerance() -> None:
    run(2, _ids_cases.hashed_forward, torch.float32)


@pytest.mark.parametrize("world, spec", [(2, embtab.optim.Adam(lr=0.05)), (3, embtab.optim.SGD(lr=0.1))])
def test_dynamic_without_eviction_trains_as_one_process_and_eval_changes_nothing(world: int, spec: object) -> None:
    run(world, _ids_cases.dynamic_train, spec)


def test_dynamic_with_eviction_each_rank_is_the_model_of_its_ids() -> None:
    run(3, _ids_cases.dynamic_evict)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # (DCP's, for a load in one process)
def test_checkpoint_saved_at_two_ranks_loads_at_one_two_and_three(tmp_path: Path) -> None:
    import embtab.distributed as ed

    folder = str(tmp_path)
    run(2, _ids_cases.ckpt_save, folder)
    whole = torch.load(tmp_path / "whole.pt")
    # W=2 -> a plain EmbeddingBagCollection in this (single, non-distributed) process
    torch.manual_seed(42)
    plain = embtab.EmbeddingBagCollection(_ids_cases.ckpt_tables(), optimizer=embtab.optim.Adam(lr=0.05),
                                          dtype=torch.float64)
    ed.load_checkpoint(plain, tmp_path / "ckpt")
    state = plain.state_dict()
    assert list(state) == list(whole)
    for k, v in state.items():
        torch.testing.assert_close(v, whole[k], atol=0, rtol=0, msg=k)
    run(2, _ids_cases.ckpt_load, folder, False)
    run(3, _ids_cases.ckpt_load, folder, True)


def test_dcp_load_of_blocks_saved_by_another_plan_is_refused(tmp_path: Path) -> None:
    run(2, _ids_cases.ckpt_other_layout, str(tmp_path))


def test_bytes_sent_per_step_equal_the_formula() -> None:
    run(3, _ids_cases.comm_volume)


def test_clip_grad_norm_over_every_rank_with_hashed_and_dynamic_tables() -> None:
    """The dynamic tables' fallback rows (a copy on every rank) count once in the norm."""
    run(2, functools.partial(_ids_cases.dynamic_train, clip=(0.5, 2.0)), embtab.optim.Adam(lr=0.05, update="step"))
    run(2, functools.partial(_ids_cases.hashed_train, clip=(0.5, 2.0)), embtab.optim.SGD(lr=0.1, update="step"))


@pytest.mark.parametrize("spec", [embtab.optim.RowWiseAdagrad(lr=0.1), embtab.optim.Adam(lr=0.01)])
def test_table_bytes_are_what_each_rank_holds(spec: object) -> None:
    run(2, _ids_cases.bytes_per_rank, spec)


def test_a_piece_that_fails_raises_on_every_rank() -> None:
    run(2, _ids_cases.owner_failure, timeout=60)
