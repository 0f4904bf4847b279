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


@pytest.mark.parametrize("ids, dim", [("dynamic", 8), ("hashed", 40)])
def test_two_processes_match_one_with_unbounded_id_spaces(tmp_path: Path, ids: str, dim: int) -> None:
    # --rows 1024 holds every id of the small data set: the sharded dynamic tables never evict, and
    # train as one process does (admission after 2 sightings: pending ids use the hashed fallback rows,
    # whose copies the ranks keep equal). A hashed table of dim 40 is too large to copy: sharded.
    ratings = write_ratings(tmp_path / "ml")
    common = ["train", "recsys", "--ratings", str(ratings), "--epochs", "2", "--dim", str(dim), "--threads", "1",
              "-q", "--ids", ids]
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--nproc", "2"]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert "data_parallel" not in two["sharding"].split("\n")[0]  # (the user table is sharded)
    assert abs(one["test"]["rmse"] - two["test"]["rmse"]) < 1e-4
    for a, b in zip(one["history"], two["history"]):  # the same training, to float32 rounding
        assert a["val_rmse"] == pytest.approx(b["val_rmse"], abs=1e-5)
    if ids == "dynamic":  # the ranks' statistics, summed
        assert one["ids"]["stats"] == two["ids"]["stats"]
        assert one["ids"]["stats"]["user"]["fallback_lookups"] > 0
