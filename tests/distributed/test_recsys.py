"""`embtab train recsys --nproc 2`: the recommender on two processes (gloo), tables sharded,
reaches one process's test RMSE (the same training: each rank's loss is scaled by W)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embtab.cli import main
from tests.apps.conftest import write_ratings


def test_two_processes_match_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratings = write_ratings(tmp_path / "ml")
    common = ["train", "recsys", "--ratings", str(ratings), "--epochs", "3", "--dim", "8", "--threads", "1", "-q"]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("movie recommender on") == 2  # the summary of each run, printed once
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert "sharding" in two and "item" in two["sharding"]
    assert abs(one["test"]["rmse"] - two["test"]["rmse"]) < 0.005
    for a, b in zip(one["history"], two["history"]):  # the same training, to float32 rounding
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], abs=1e-5)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["config"]["nproc"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["best.safetensors",
                                                                                  "last.safetensors"]


def test_nproc_needs_the_fused_optimizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ratings = write_ratings(tmp_path / "ml", n=500)
    code = main(["train", "recsys", "--ratings", str(ratings), "--nproc", "2", "--optimizer", "dense", "-q",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "--nproc above 1 trains the sharded tables with the fused optimizer" in capsys.readouterr().err
