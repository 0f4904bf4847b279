"""Checkpoints through torch.distributed.checkpoint: save at 2 ranks, load at another world
size or plan, or into a plain collection in one process; tables and optimizer state equal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

import embtab

from . import _cases
from ._spawn import run


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # (DCP's, for a load in one process)
def test_save_at_two_ranks_load_anywhere(tmp_path: Path) -> None:
    folder = str(tmp_path)
    run(2, _cases.ckpt_save, folder)
    whole = torch.load(tmp_path / "whole.pt")

    # W=2 -> a plain EmbeddingBagCollection in this (single, non-distributed) process
    torch.manual_seed(42)
    plain = embtab.EmbeddingBagCollection(_cases.ckpt_tables(2), optimizer=embtab.optim.Adam(lr=0.05),
                                          dtype=torch.float64)
    state = plain.state_dict()
    dcp.load(state, checkpoint_id=tmp_path / "ckpt", no_dist=True)
    assert list(state) == list(whole)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(v, whole[k], atol=0, rtol=0, msg=k)

    # W=2 with another plan (every table under another kind), W=3 with another, W=3 with ed.plan's
    run(2, _cases.ckpt_load, folder, "other")
    run(3, _cases.ckpt_load, folder, "other")
    run(3, _cases.ckpt_load, folder, "auto")
