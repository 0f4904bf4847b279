"""Reproducibility (same seed, same metrics) and resume after an interruption, kill -9 included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from embtab.apps import checkpoint as ck
from embtab.apps import recsys, text
from tests.apps.conftest import write_ratings

TEXT_KW = dict(text_column="message", label_column="topic", epochs=3, patience=0, dim=16, hidden=16,
               buckets=2048, threads=1, quiet=True)
RECSYS_KW = dict(epochs=3, patience=0, dim=8, threads=1, quiet=True)


def _outcome(metrics: dict) -> dict:
    """What must match between runs: everything but wall-clock times and paths."""
    history = [{k: v for k, v in h.items() if k not in ("seconds", "examples_per_s")} for h in metrics["history"]]
    return {"test": metrics["test"], "history": history, "best_epoch": metrics["best_epoch"]}


def test_same_seed_same_metrics(tmp_path, text_csv, ratings_csv):
    a = text.train(text.TextConfig(out=str(tmp_path / "t1"), data=str(text_csv), **TEXT_KW))
    b = text.train(text.TextConfig(out=str(tmp_path / "t2"), data=str(text_csv), **TEXT_KW))
    assert _outcome(a) == _outcome(b)
    assert a["baselines"] == b["baselines"] or _strip_seconds(a["baselines"]) == _strip_seconds(b["baselines"])
    c = recsys.train(recsys.RecsysConfig(out=str(tmp_path / "r1"), ratings=str(ratings_csv), **RECSYS_KW))
    d = recsys.train(recsys.RecsysConfig(out=str(tmp_path / "r2"), ratings=str(ratings_csv), **RECSYS_KW))
    assert _outcome(c) == _outcome(d) and c["neighbors"] == d["neighbors"]
    e = recsys.train(recsys.RecsysConfig(out=str(tmp_path / "r3"), ratings=str(ratings_csv), seed=1, **RECSYS_KW))
    assert _outcome(e) != _outcome(c)


def _strip_seconds(b: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "seconds"} for k, v in b.items()}


def test_interrupted_text_run_resumes_exactly(tmp_path, text_csv, monkeypatch):
    """Ctrl-C in the middle of epoch 2; resume; the same final metrics as without the interruption."""
    full = text.train(text.TextConfig(out=str(tmp_path / "full"), data=str(text_csv), **TEXT_KW))

    real_step = text._TextTask.train_step
    calls = {"n": 0}

    def interrupting_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 10:  # 7 batches per epoch: this is in the middle of epoch 2
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(text._TextTask, "train_step", interrupting_step)
    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        text.train(text.TextConfig(out=str(run), data=str(text_csv), batch_size=64, **TEXT_KW))
    assert ck.load_checkpoint(run / "checkpoints" / "last.safetensors").state["epoch"] == 1
    assert not (run / "metrics.json").exists()
    monkeypatch.setattr(text._TextTask, "train_step", real_step)
    torch.manual_seed(999)  # whatever the process did in between: the checkpoint restores the RNGs
    resumed = text.train(text.TextConfig(threads=1, quiet=True), resume=str(run))
    assert _outcome(resumed) == _outcome(full)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "embtab.cli", *args]


@pytest.mark.slow  # three training runs, two of them subprocesses: ~25 s
def test_kill_9_mid_epoch_and_resume(tmp_path):
    """A training subprocess is killed with SIGKILL in the middle of an epoch, after a
    checkpoint exists; the resumed run ends with exactly the metrics of an uninterrupted one."""
    ratings = write_ratings(tmp_path / "ml", users=300, items=400, n=15_000, seed=1)
    argv = ["train", "recsys", "--ratings", str(ratings), "--epochs", "3", "--patience", "0", "--dim", "16",
            "--batch-size", "32", "--threads", "1", "-q"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*argv, "--out", str(run)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    last = run / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 120
    try:
        while not last.exists():
            if proc.poll() is not None:
                pytest.fail(f"training ended before its first checkpoint: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 120 s")
            time.sleep(0.02)
        time.sleep(0.2)  # into the next epoch
        assert proc.poll() is None, "the run finished before it could be killed: make the epochs longer"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = ck.load_checkpoint(last).state["epoch"]
    assert 1 <= done < 3 and not (run / "metrics.json").exists()

    resumed = subprocess.run(_cli("train", "recsys", "--resume", str(run), "--threads", "1", "-q"), env=env,
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((run / "metrics.json").read_text())
    assert after["epochs_run"] == 3

    # The uninterrupted run, in this process with the same thread count and settings.
    full = recsys.train(recsys.RecsysConfig(out=str(tmp_path / "full"), ratings=str(ratings), epochs=3, patience=0,
                                            dim=16, batch_size=32, threads=1, quiet=True))
    assert _outcome(after) == _outcome(full)
