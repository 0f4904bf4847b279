"""The command line around runs: pipes, interruptions, option checks, resume from
anywhere, damaged run folders, failed runs (issue #10, points 18-24)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embtab.cli import main

REPO = Path(__file__).resolve().parents[2]
TEXT_FAST = ["--text-column", "message", "--label-column", "topic", "--epochs", "2", "--dim", "16", "--hidden", "16",
             "--buckets", "2048", "--threads", "1", "-q"]
RECSYS_FAST = ["--epochs", "2", "--dim", "8", "--threads", "1", "-q"]


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(err: str) -> str:
    errors = [ln for ln in err.splitlines() if ln.startswith("embtab: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- 21: a reader that goes away ------------------------------------------------------


def test_closed_pipe_ends_quietly(tmp_path):
    """`embtab vectors info x.vec | head -1`: no BrokenPipeError traceback, the SIGPIPE status."""
    vec = tmp_path / "v.vec"
    vec.write_text("3 2\na 1 0\nb 0 1\nc 1 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "embtab.cli", "vectors", "info", str(vec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


def test_closed_pipe_in_process(capsys, monkeypatch, tmp_path):
    class Closed:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    vec = tmp_path / "v.vec"
    vec.write_text("3 2\na 1 0\nb 0 1\nc 1 1\n")
    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["vectors", "info", str(vec)]) == 141
    assert main(["--help"]) == 141
