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
from tests.apps.conftest import error_line as _error_line
from tests.apps.conftest import run_cli as _run

TEXT_FAST = ["--text-column", "message", "--label-column", "topic", "--epochs", "2", "--dim", "16", "--hidden", "16",
             "--buckets", "2048", "--threads", "1", "-q"]
RECSYS_FAST = ["--epochs", "2", "--dim", "8", "--threads", "1", "-q"]


# --- 21: a reader that goes away ------------------------------------------------------


def test_closed_pipe_ends_quietly(tmp_path):
    """`embtab vectors info x.vec | head -1`: no BrokenPipeError traceback, the SIGPIPE status."""
    vec = tmp_path / "v.vec"
    vec.write_text("3 2\na 1 0\nb 0 1\nc 1 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "embtab.cli", "vectors", "info", str(vec)],
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


def _text(csv: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "text", "--data", str(csv), "--out", str(run), *TEXT_FAST, *extra]


def _recsys(ratings: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "recsys", "--ratings", str(ratings), "--out", str(run), *RECSYS_FAST, *extra]


def _outcome(metrics: dict) -> dict:
    """What must match between runs: everything but wall-clock times and paths."""
    history = [{k: v for k, v in h.items() if k not in ("seconds", "examples_per_s")} for h in metrics["history"]]
    return {"test": metrics["test"], "history": history, "best_epoch": metrics["best_epoch"]}


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


# --- 18: a missing optional dependency ------------------------------------------------


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError


def test_missing_matplotlib_warns_before_training_and_keeps_the_metrics(capsys, tmp_path, text_csv, no_matplotlib):
    run = tmp_path / "run"
    argv = [a for a in _text(text_csv, run) if a != "-q"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    lines = err.splitlines()
    warning = next(i for i, ln in enumerate(lines) if ln.startswith("embtab: warning: matplotlib"))
    first_epoch = next(i for i, ln in enumerate(lines) if ln.startswith("epoch 1/"))
    assert warning < first_epoch  # said before the training, not found out after it
    assert "pip install 'embtab[apps]'" in lines[warning] and "no curves.png" in lines[warning]
    m = _metrics(run)
    assert "macro-F1" in out and "curves" not in m["outputs"]
    assert not (run / "curves.png").exists() and not (run / "embeddings.png").exists()
    code, _, err = _run(capsys, "train", "text", "--resume", str(run), "--threads", "1", "-q")
    assert code == 0, err  # a resumed run works the same way
    assert "embtab: warning: matplotlib" in err  # a warning, even with -q


def test_missing_matplotlib_recsys(capsys, tmp_path, ratings_csv, no_matplotlib):
    code, _, err = _run(capsys, *_recsys(ratings_csv, tmp_path / "run"))
    assert code == 0, err
    assert _metrics(tmp_path / "run")["test"]["rmse"] > 0


def test_demo_summary_lists_only_the_plots_drawn(tmp_path, text_csv, ratings_csv, no_matplotlib):
    from embtab.apps import demo

    s = demo.run(str(tmp_path / "demo"), threads=1, quiet=True,
                 text_options={"data": str(text_csv), "text_column": "message", "label_column": "topic",
                               "epochs": 1, "buckets": 1024, "dim": 8},
                 recsys_options={"ratings": str(ratings_csv), "epochs": 1, "dim": 4})
    table = "\n".join(demo.summary_table(s))
    assert "text/    metrics.json  checkpoints/" in table and ".png" not in table


# --- 19: resume from anywhere, moved data, more epochs --------------------------------


def test_resume_from_another_folder_and_train_on(capsys, tmp_path, text_csv, monkeypatch):
    """Started with relative paths in one folder; resumed from another, to more epochs: the
    metrics of a run that had those epochs from the start."""
    start = tmp_path / "start"
    start.mkdir()
    (start / "texts.csv").write_bytes(text_csv.read_bytes())
    monkeypatch.chdir(start)
    argv = ["train", "text", "--data", "texts.csv", "--out", "run", *TEXT_FAST]
    code, _, err = _run(capsys, *[a if a != "2" else "1" for a in argv])  # --epochs 1
    assert code == 0, err
    config = json.loads((start / "run" / "config.json").read_text())
    assert config["config"]["data"] == str(start / "texts.csv")  # absolute
    assert len(config["inputs"]["data"]["sha256"]) == 64

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = _run(capsys, "train", "text", "--resume", "../start/run", "--epochs", "2", "--threads", "1", "-q")
    assert code == 0, err
    resumed = _metrics(start / "run")
    assert resumed["epochs_run"] == 2
    assert json.loads((start / "run" / "config.json").read_text())["config"]["epochs"] == 2
    code, _, err = _run(capsys, *argv[:3], str(start / "texts.csv"), argv[4], str(tmp_path / "full"),
                        *argv[6:])  # 2 epochs from the start
    assert code == 0, err
    assert _outcome(resumed) == _outcome(_metrics(tmp_path / "full"))

    code, _, err = _run(capsys, "train", "text", "--resume", str(start / "run"), "--epochs", "1")
    assert code == 2 and "trained 2 epochs already" in _error_line(err)


def test_resume_with_moved_data(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--epochs", "1"))
    assert code == 0, err
    before = _metrics(run)
    moved = tmp_path / "moved"
    ratings_csv.parent.rename(moved)  # ratings.csv and movies.csv beside it

    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "-q")
    line = _error_line(err)
    assert code == 2 and str(ratings_csv) in line and "--ratings PATH" in line and "moved or deleted" in line
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "--ratings", str(moved / "ratings.csv"),
                        "--threads", "1", "-q")
    assert code == 0, err  # movies.csv found beside the moved ratings, same content
    assert _outcome(_metrics(run)) == _outcome(before)
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["ratings"] == str(moved / "ratings.csv") and saved["movies"] == str(moved / "movies.csv")

    other = tmp_path / "other.csv"
    other.write_text((moved / "ratings.csv").read_text().replace(",4.0,", ",3.5,", 1))
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "--ratings", str(other))
    line = _error_line(err)
    assert code == 2 and "other.csv" in line and "sha256" in line and "not the file this run was started with" in line


def test_a_run_of_the_first_format_with_a_relative_path(capsys, tmp_path, text_csv, monkeypatch):
    """config.json of format 1 held the path as given ("texts.csv"): it still resumes from
    the folder it started in, and says what to do from elsewhere."""
    monkeypatch.chdir(text_csv.parent)
    run = tmp_path / "run"
    code, _, err = _run(capsys, *_text(Path(text_csv.name), run, "--epochs", "1"))
    assert code == 0, err
    doc = json.loads((run / "config.json").read_text())
    doc["format_version"], doc["config"]["data"] = 1, text_csv.name
    del doc["inputs"]
    (run / "config.json").write_text(json.dumps(doc, indent=2))

    monkeypatch.chdir(tmp_path / "run")
    code, _, err = _run(capsys, "train", "text", "--resume", str(run))
    line = _error_line(err)
    assert code == 2 and "'texts.csv' (relative to the folder the run started in) is not there" in line
    assert f"embtab train text --resume {run} --data PATH" in line
    monkeypatch.chdir(text_csv.parent)
    code, _, err = _run(capsys, "train", "text", "--resume", str(run), "--threads", "1", "-q")
    assert code == 0, err
    doc = json.loads((run / "config.json").read_text())
    assert doc["format_version"] == 2 and doc["config"]["data"] == str(text_csv)
    assert doc["inputs"]["data"]["path"] == str(text_csv) and len(doc["inputs"]["data"]["sha256"]) == 64


def test_train_on_after_early_stop_needs_patience(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--patience", "1", "--epochs", "8"))
    assert code == 0, err
    m = _metrics(run)
    assert m["stopped_early"], "precondition: the run stopped early"
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "--epochs", "12")
    line = _error_line(err)
    assert code == 2 and "stopped early" in line and "--patience 0" in line
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "--epochs", str(m["epochs_run"] + 1),
                        "--patience", "0", "--threads", "1", "-q")
    assert code == 0, err
    assert _metrics(run)["epochs_run"] == m["epochs_run"] + 1


# --- 20: Ctrl-C -----------------------------------------------------------------------


def test_ctrl_c_says_what_is_saved_and_how_to_resume(capsys, tmp_path, ratings_csv, monkeypatch):
    from embtab.apps import recsys

    real_step = recsys._RecsysTask.train_step
    calls = {"n": 0}

    def interrupting_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 20:  # 16 batches per epoch: in epoch 2
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(recsys._RecsysTask, "train_step", interrupting_step)
    run = tmp_path / "my run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--epochs", "3"))
    assert code == 130
    assert f"epoch 1 of 3 is saved in {run / 'checkpoints' / 'last.safetensors'}" in err
    command = err.strip().splitlines()[-1]
    assert command == f"embtab: resume with: embtab train recsys --resume '{run}' --threads 1"

    monkeypatch.setattr(recsys._RecsysTask, "train_step", real_step)
    import shlex

    code, _, err = _run(capsys, *shlex.split(command.split(": ", 2)[-1])[1:], "-q")  # the printed command
    assert code == 0, err
    assert _metrics(run)["epochs_run"] == 3


def test_ctrl_c_before_the_first_epoch_or_the_run_folder(capsys, tmp_path, ratings_csv, monkeypatch):
    from embtab.apps import data, recsys

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recsys._RecsysTask, "train_step", interrupt)
    code, _, err = _run(capsys, *_recsys(ratings_csv, tmp_path / "run"))
    assert code == 130 and "no epoch had ended" in err
    assert f"resume with: embtab train recsys --resume {tmp_path / 'run'}" in err
    monkeypatch.setattr(data, "load_ratings_file", interrupt)
    code, _, err = _run(capsys, *_recsys(ratings_csv, tmp_path / "run2"))
    assert code == 130 and "nothing was saved" in err and not (tmp_path / "run2").exists()


def test_ctrl_c_in_the_demo_names_the_run_to_resume(capsys, tmp_path, monkeypatch):
    from embtab.apps import demo
    from embtab.apps.common import write_json

    def interrupted_demo(out, *, threads, quiet, started):
        started(str(Path(out) / "text"))
        write_json(Path(out) / "text" / "metrics.json", {})  # the text run finished
        started(str(Path(out) / "recsys"))
        write_json(Path(out) / "recsys" / "config.json", {"app": "recsys", "config": {"epochs": 40}})
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted_demo)
    code, _, err = _run(capsys, "demo", "--out", str(tmp_path / "d"), "--threads", "2")
    assert code == 130
    assert "no epoch had ended" in err
    assert f"resume with: embtab train recsys --resume {tmp_path / 'd' / 'recsys'} --threads 2" in err


# --- 22: damaged run folders ----------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "bit_flip"])
def test_corrupt_last_checkpoint_offers_best_or_a_fresh_start(capsys, tmp_path, ratings_csv, monkeypatch, damage):
    import shlex

    run = tmp_path / "run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--epochs", "3", "--seed", "3"))
    assert code == 0, err
    best_epoch = _metrics(run)["best_epoch"]
    last = run / "checkpoints" / "last.safetensors"
    data = bytearray(last.read_bytes())
    if damage == "truncated":  # a disk that filled up, a bad copy
        data = data[:1000]
    else:  # a bit flipped inside a tensor (bad memory, a bad disk): the file still reads
        data[-5] ^= 0x01
    last.write_bytes(bytes(data))
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run))
    line = _error_line(err)
    assert code == 2 and "corrupt" in line
    assert f"go on from the best epoch ({best_epoch};" in line
    from_best = f"embtab train recsys --resume {run} --from-best"
    assert from_best in line
    start_over = line.split("start over in a new folder: ", 1)[1]
    assert start_over.startswith("embtab train recsys --ratings ") and f"--out {run}-2" in start_over
    assert "--seed 3" in start_over and "--epochs 3" in start_over

    code, _, err = _run(capsys, *shlex.split(from_best)[1:], "--threads", "1")
    assert code == 0, err
    assert f"going on after the best epoch {best_epoch}" in err
    assert _metrics(run)["epochs_run"] == 3
    code, _, err = _run(capsys, *shlex.split(start_over)[1:], "-q")
    assert code == 0, err
    assert (Path(f"{run}-2") / "metrics.json").is_file()


def test_hand_edited_config_of_the_wrong_type(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--epochs", "1"))
    assert code == 0, err
    config = run / "config.json"
    original = config.read_text()
    config.write_text(original.replace('"dim": 8', '"dim": "8"'))
    code, out, err = _run(capsys, "train", "recsys", "--resume", str(run))
    line = _error_line(err)
    assert code == 2 and err.count("\n") == 1
    assert str(config) in line and '"dim" must be an integer, got "8"' in line and "line " in line
    config.write_text(original.replace('"lr": 0.01', '"lr": NaN'))
    code, out, err = _run(capsys, "train", "recsys", "--resume", str(run))
    assert code == 2 and "--lr must be a finite number" in _error_line(err) and "config.json" in err


# --- 23: non-finite options, divergence, a failed run's folder -------------------------


@pytest.mark.parametrize("option", [("--reg", "nan"), ("--init-std", "inf"), ("--lr", "-inf")])
def test_non_finite_options_are_refused_at_parse_time(capsys, tmp_path, ratings_csv, option):
    code, out, err = _run(capsys, *_recsys(ratings_csv, tmp_path / "run"), "=".join(option))
    assert code == 2 and out == ""
    assert f"argument {option[0]}: must be a finite number, got '{option[1]}'" in err
    assert not (tmp_path / "run").exists()


def test_non_finite_config_values_are_refused(tmp_path):
    from embtab.apps import recsys, text
    from embtab.apps.common import AppError

    with pytest.raises(AppError, match="--reg must be a finite number, got nan"):
        recsys.train(recsys.RecsysConfig(out=str(tmp_path / "r"), reg=float("nan")))
    with pytest.raises(AppError, match="--dropout must be a finite number"):
        text.train(text.TextConfig(out=str(tmp_path / "t"), dropout=float("nan")))
    assert not list(tmp_path.iterdir())


def test_divergence_names_the_causes_and_the_folder_can_be_reused(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--reg", "200"))
    line = _error_line(err)
    assert code == 2 and "training diverged" in line
    assert "--reg 200 with --lr 0.01" in line and "--lr 0.01 is" not in line  # the causes that apply
    assert (run / "failed.json").is_file()
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--lr", "100", "--reg", "0"))
    line = _error_line(err)
    assert code == 2 and "--lr 100 is 1e+04x the default 0.01" in line and "--reg" not in line
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--init-std", "3"))
    line = _error_line(err)
    assert code == 2 and "--init-std 3 (dim 8): initial predictions are off by about" in line and "--lr" not in line
    code, _, err = _run(capsys, *[a for a in _recsys(ratings_csv, run) if a != "-q"])  # the same --out
    assert code == 0, err
    assert "replacing the failed run" in err
    assert not (run / "failed.json").exists() and (run / "metrics.json").is_file()


def test_failed_folder_with_other_files_is_not_emptied(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, _, _ = _run(capsys, *_recsys(ratings_csv, run, "--reg", "200"))
    assert code == 2
    (run / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, *_recsys(ratings_csv, run))
    line = _error_line(err)
    assert code == 2 and "notes.txt" in line and "holds a failed run" in line
    assert (run / "notes.txt").read_text() == "mine" and (run / "config.json").is_file()


def test_a_refused_out_folder_is_not_marked_failed(capsys, tmp_path, ratings_csv, monkeypatch):
    """An interrupted run's folder, given as --out to a new run: refused, and left resumable."""
    from embtab.apps import recsys

    real_step = recsys._RecsysTask.train_step
    calls = {"n": 0}

    def interrupting_step(self, batch):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(recsys._RecsysTask, "train_step", interrupting_step)
    run = tmp_path / "run"
    assert _run(capsys, *_recsys(ratings_csv, run))[0] == 130
    monkeypatch.setattr(recsys._RecsysTask, "train_step", real_step)
    for _ in range(2):
        code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--dim", "4"))
        assert code == 2 and "--resume" in _error_line(err)
    assert not (run / "failed.json").exists()
    assert (run / "checkpoints" / "last.safetensors").is_file()


# --- 24: small data -------------------------------------------------------------------


def test_negative_cosine_neighbours_are_explained(capsys, tmp_path, ratings_csv):
    code, out, err = _run(capsys, *_recsys(ratings_csv, tmp_path / "run", "--neighbors", "Movie 1", "Movie 5",
                                           "--neighbor-min-ratings", "100"))
    assert code == 0, err
    m = _metrics(tmp_path / "run")
    cosines = [x["cosine"] for nb in m["neighbors"] for x in nb["neighbors"]]
    assert min(cosines) < 0, "precondition: few candidates give negative cosines"
    note = next(ln for ln in out.splitlines() if ln.strip().startswith("note:"))
    candidates = m["neighbors"][0]["candidates"]
    assert "negative cosine" in note and f"Only {candidates} movies have at least 100" in note
    assert "--neighbor-min-ratings" in note


def test_word_map_labels_telling_words_not_stop_words(tmp_path, monkeypatch):
    """Small data: few words reach 20 texts, and those few are "a", "and", "the"."""
    import numpy as np

    import embtab
    from embtab.apps import plots, text

    rng = np.random.default_rng(0)
    classes = ["spam", "ham"]
    tokens, y = [], []
    for k in range(120):
        c = int(k % 3 == 0)  # imbalanced: 80 spam, 40 ham
        cue = [f"{classes[c]}{i}" for i in range(6)]
        words = ["the", "a", "and"] + list(rng.choice(cue, size=2)) + [f"w{int(rng.integers(40))}"]
        tokens.append(words)
        y.append(c)
    vocab = embtab.Vocab.build(tokens)
    model = text.TextClassifier(len(vocab), 2, dim=4, hidden=0, dropout=0.0, num_buckets=0,
                                padding_idx=vocab.pad_id, init="normal")
    seen = {}
    monkeypatch.setattr(plots, "plot_embedding_map", lambda vecs, labels, path, **kw: seen.setdefault("l", labels))
    text._word_map(model, vocab, tokens, np.array(y), classes, tmp_path / "e.png")
    labels = {lab for lab in seen["l"] if lab}
    assert not labels & {"the", "a", "and"}
    assert labels and all(lab.startswith(("spam", "ham")) for lab in labels)
    assert any(lab.startswith("ham") for lab in labels) and any(lab.startswith("spam") for lab in labels)


def test_a_run_folder_in_use_by_another_process_is_refused(capsys, tmp_path, ratings_csv):
    """Two processes never train in one folder: a resume, or a new run, while another embtab
    process holds it is refused by name; once that process is gone the folder is free."""
    run = tmp_path / "run"
    code, _, err = _run(capsys, *_recsys(ratings_csv, run, "--epochs", "1"))
    assert code == 0, err
    empty = tmp_path / "empty"
    empty.mkdir()
    # Another process holding the folders as embtab does (an exclusive flock on the folder).
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]\n"
         "[fcntl.flock(fd, fcntl.LOCK_EX) for fd in fds]\nprint('held', flush=True)\ntime.sleep(60)",
         str(run), str(empty)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "--epochs", "2")
        assert code == 2 and f"{str(run)!r} is in use by another embtab process" in _error_line(err)
        code, _, err = _run(capsys, *_recsys(ratings_csv, empty, "--epochs", "1"))
        assert code == 2 and f"{str(empty)!r} is in use by another embtab process" in _error_line(err)
        assert list(empty.iterdir()) == []  # nothing written into it
    finally:
        holder.kill()
        holder.wait()
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(run), "--epochs", "2")
    assert code == 0, err
    assert _metrics(run)["epochs_run"] == 2
