"""The ``embtab`` command line on small synthetic data (written under tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embtab.cli import main
from tests.apps.conftest import error_line as _error_line
from tests.apps.conftest import run_cli as _run

TEXT_FAST = ["--epochs", "2", "--dim", "16", "--hidden", "16", "--buckets", "2048", "--threads", "1", "-q"]
RECSYS_FAST = ["--epochs", "3", "--dim", "8", "--threads", "1", "-q"]


# --- help -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["train"], ["train", "text"], ["train", "recsys"], ["demo"], ["vectors"],
                                  ["vectors", "info"], ["vectors", "neighbors"], ["vectors", "evaluate"],
                                  ["vectors", "convert"]])
def test_help_shows_an_example(capsys, argv):
    code, out, _ = _run(capsys, *argv, "--help")
    assert code == 0
    assert "example" in out and "embtab" in out


def test_no_command_is_a_usage_error(capsys):
    code, _, err = _run(capsys)
    assert code == 2
    assert "required" in err


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.startswith("embtab ")


# --- train text -----------------------------------------------------------------------


def test_train_text_writes_a_run_folder(capsys, tmp_path, text_csv):
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", "text", "--data", str(text_csv), "--text-column", "message",
                          "--label-column", "topic", "--out", str(run), *TEXT_FAST)
    assert code == 0, err
    assert err == ""  # -q
    assert "macro-F1" in out and "bag-of-words logistic regression" in out and "majority class" in out
    for name in ("metrics.json", "config.json", "baselines.json", "vocab.json", "curves.png", "embeddings.png",
                 "checkpoints/last.safetensors", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    assert not list(run.rglob(".*.tmp"))  # atomic writes leave no temp files
    m = json.loads((run / "metrics.json").read_text())
    assert m["classes"] == ["blue", "green", "red"]
    assert m["split"] == {"train": 432, "val": 48, "test": 120, "seed": 0}
    assert len(m["history"]) == 2
    assert 0.0 <= m["test"]["macro_f1"] <= 1.0
    # The learnable synthetic task: the bag-of-words baseline is far above chance.
    assert m["baselines"]["bow_logistic_regression"]["test"]["macro_f1"] > 0.6
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_text_json_and_progress_on_stderr(capsys, tmp_path, text_csv):
    argv = ["train", "text", "--data", str(text_csv), "--text-column", "message", "--label-column", "topic",
            "--out", str(tmp_path / "run"), "--json", "--optimizer", "sparse", "--word-ngrams", "1",
            "--char-ngrams", "0", "--hidden", "0", "--epochs", "1", "--dim", "8", "--buckets", "0", "--threads", "1"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    m = json.loads(out)  # stdout holds only the results
    assert m["table_optimizer"].startswith("torch.optim.SparseAdam")
    assert "epoch 1/1" in err and "baselines:" in err


def test_train_text_with_pretrained_vectors(capsys, tmp_path, text_csv):
    vec = tmp_path / "vec.txt"
    g = torch.Generator().manual_seed(0)
    # 12-dim vectors for half the filler words and two cue words.
    words = [f"w{i}" for i in range(0, 150, 2)] + ["red1", "blue2"]
    vec.write_text("".join(f"{w} " + " ".join(f"{x:.4f}" for x in torch.randn(12, generator=g).tolist()) + "\n"
                           for w in words))
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", "text", "--data", str(text_csv), "--text-column", "message",
                          "--label-column", "topic", "--out", str(run), "--vectors", str(vec), "--epochs", "1",
                          "--threads", "1", "--buckets", "1024")
    assert code == 0, err
    assert "Coverage of" in err and "missing" in err and "using it instead of --dim 64" in err
    m = json.loads((run / "metrics.json").read_text())
    assert m["vectors_coverage"]["found"] == 77 and m["vectors_coverage"]["missing"] > 0
    code, _, err = _run(capsys, "train", "text", "--data", str(text_csv), "--out", str(tmp_path / "r2"),
                        "--vectors", str(tmp_path / "none.txt"))
    assert code == 2 and "--vectors file not found" in _error_line(err)


# --- train recsys ---------------------------------------------------------------------


def test_train_recsys_writes_a_run_folder(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", "recsys", "--ratings", str(ratings_csv), "--out", str(run),
                          "--neighbors", "Movie 1", "No Such Film", *RECSYS_FAST)
    assert code == 0, err
    assert "RMSE" in out and "user + item biases" in out and "global mean" in out
    assert "nearest to Movie 1 (1971):" in out
    assert "'No Such Film': no such movie" in out
    for name in ("metrics.json", "config.json", "baselines.json", "vocab_users.json", "vocab_items.json",
                 "vocab_features.json", "curves.png", "embeddings.png", "checkpoints/last.safetensors",
                 "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    m = json.loads((run / "metrics.json").read_text())
    assert m["split"]["test"] == 500
    assert m["optimizer"].startswith("embtab.optim.SGD (fused")
    assert m["item_features"] > 0
    assert m["test"]["rmse"] < m["baselines"]["global_mean"]["test"]["rmse"]


def test_train_recsys_without_movies_file(capsys, tmp_path):
    from tests.apps.conftest import write_ratings

    ratings = write_ratings(tmp_path / "bare", movies=False)
    code, out, err = _run(capsys, "train", "recsys", "--ratings", str(ratings), "--out", str(tmp_path / "run"),
                          "--optimizer", "dense", *RECSYS_FAST)
    assert code == 0, err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["item_features"] == 0 and m["neighbors"] == []
    assert m["optimizer"] == "torch.optim.SGD (dense gradients)"


# --- bad input: exit 2 and one line ---------------------------------------------------


def test_missing_data_file(capsys, tmp_path):
    code, out, err = _run(capsys, "train", "text", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1  # nothing but the reason
    assert "not found" in _error_line(err) and "nope.csv" in err
    assert not (tmp_path / "r").exists()  # bad input leaves no run folder behind


def test_unknown_column(capsys, tmp_path, text_csv):
    code, _, err = _run(capsys, "train", "text", "--data", str(text_csv), "--out", str(tmp_path / "r"))
    assert code == 2
    line = _error_line(err)
    assert "no column 'text'" in line and "message, topic" in line and "--text-column" in line


def test_single_label_is_rejected(capsys, tmp_path):
    p = tmp_path / "one.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"t {i}", "label": "a"}) for i in range(10)))
    code, _, err = _run(capsys, "train", "text", "--data", str(p), "--out", str(tmp_path / "r"))
    assert code == 2 and "single label" in _error_line(err)


def test_ratings_without_rating_column(capsys, tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_text("userId,movieId,score\n1,2,3\n")
    code, _, err = _run(capsys, "train", "recsys", "--ratings", str(p), "--out", str(tmp_path / "r"))
    assert code == 2 and "no column 'rating'" in _error_line(err)


def test_bad_option_values(capsys, tmp_path, ratings_csv):
    code, _, err = _run(capsys, "train", "recsys", "--ratings", str(ratings_csv), "--lr", "-1",
                        "--out", str(tmp_path / "r"))
    assert code == 2 and "--lr must be positive" in _error_line(err)
    code, _, err = _run(capsys, "train", "text", "--char-ngrams", "5-3", "--out", str(tmp_path / "r2"))
    assert code == 2 and "--char-ngrams" in _error_line(err)


def test_out_folder_must_be_new(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    code, _, err = _run(capsys, "train", "recsys", "--ratings", str(ratings_csv), "--out", str(run))
    assert code == 2 and "--resume" in _error_line(err)


def test_resume_needs_a_run_folder(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(tmp_path / "nope"))
    assert code == 2 and "no such run folder" in _error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "train", "text", "--resume", str(tmp_path / "empty"))
    assert code == 2 and "config" in _error_line(err)


def test_resume_refuses_changed_options(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "recsys", "--resume", str(tmp_path), "--lr", "0.5")
    assert code == 2 and "drop --lr" in _error_line(err)


def test_resume_of_the_wrong_app(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    assert main(["train", "recsys", "--ratings", str(ratings_csv), "--out", str(run), *RECSYS_FAST]) == 0
    capsys.readouterr()
    code, _, err = _run(capsys, "train", "text", "--resume", str(run))
    assert code == 2 and "not a text run folder" in _error_line(err)


# --- vectors --------------------------------------------------------------------------


@pytest.fixture
def glove(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    words = ["king", "queen", "man", "woman", "paris", "france", "rome", "italy", "cat", "dog"]
    base = {w: torch.randn(8, generator=g) for w in words}
    # Make the analogies hold: queen = king - man + woman, etc.
    base["queen"] = base["king"] - base["man"] + base["woman"] + 0.01 * torch.randn(8, generator=g)
    base["italy"] = base["france"] - base["paris"] + base["rome"] + 0.01 * torch.randn(8, generator=g)
    base["dog"] = base["cat"] + 0.1 * torch.randn(8, generator=g)
    p = tmp_path / "tiny.txt"
    p.write_text("".join(f"{w} " + " ".join(f"{x:.6f}" for x in v.tolist()) + "\n" for w, v in base.items()))
    return p


def test_vectors_info_convert_neighbors(capsys, tmp_path, glove):
    code, out, err = _run(capsys, "vectors", "info", str(glove))
    assert code == 0, err
    assert "10 vectors of dim 8" in out and "glove" in out
    cache = tmp_path / "tiny.safetensors"
    code, out, err = _run(capsys, "vectors", "convert", str(glove), str(cache))
    assert code == 0 and cache.is_file(), err
    code, out, err = _run(capsys, "vectors", "neighbors", str(cache), "cat", "-k", "2")
    assert code == 0, err
    assert out.splitlines()[1].split()[-1] == "dog"


def test_vectors_evaluate(capsys, tmp_path, glove):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("cat\tdog\t9.0\nking\tqueen\t8.0\ncat\tparis\t1.0\nman\trome\t0.5\nzzz\tcat\t3.0\n")
    analogies = tmp_path / "questions.txt"
    analogies.write_text(": family\nman king woman queen\n: capitals\nparis france rome italy\n")
    code, out, err = _run(capsys, "vectors", "evaluate", str(glove), "--pairs", str(pairs),
                          "--analogies", str(analogies))
    assert code == 0, err
    assert "pairs.tsv" in out and "questions.txt" in out
    assert "(2/2)" in out and "over 4 pairs" in out


def test_vectors_errors(capsys, tmp_path, glove):
    code, _, err = _run(capsys, "vectors", "info", str(tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt" in _error_line(err)
    code, _, err = _run(capsys, "vectors", "neighbors", str(glove), "unicorn")
    assert code == 2 and "'unicorn'" in _error_line(err)
    code, _, err = _run(capsys, "vectors", "evaluate", str(glove))
    assert code == 2 and "nothing to evaluate" in _error_line(err)
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 2 3\nb 1 2\n")
    code, _, err = _run(capsys, "vectors", "info", str(bad))
    assert code == 2 and "bad.txt" in _error_line(err)


# --- vectors: issue #10 -----------------------------------------------------------------


def test_vectors_info_refuses_a_row_with_a_value_too_many(capsys, tmp_path, glove):
    bad = tmp_path / "long.txt"
    bad.write_text(glove.read_text() + "cat2 0.4 0.5 0.6 0.7 0.1 0.2 0.3 0.4 0.9\n")  # 9 values in an 8-dim file
    code, _, err = _run(capsys, "vectors", "info", str(bad))
    line = _error_line(err)
    assert code == 2 and "long.txt, line 11: expected a token and 8 values, found a token and 9 values" in line
    assert "(token 'cat2')" in line
    # The hint names the flag, and the flag works.
    assert line.endswith("pass --on-bad-line warn or skip to drop such rows") and "on_bad_line=" not in line
    code, out, err = _run(capsys, "vectors", "info", str(bad), "--on-bad-line", "skip")
    assert code == 0, err
    assert "10 vectors of dim 8" in out and "dropped rows: 1 malformed" in out


@pytest.mark.parametrize("action", ["info", "convert", "neighbors", "evaluate"])
def test_every_vectors_command_takes_the_load_options(capsys, tmp_path, glove, action):
    bad = tmp_path / "bad.txt"
    bad.write_text(glove.read_text() + "oops 1 2\n")
    extra = {"info": [], "convert": [str(tmp_path / "out.safetensors")], "neighbors": ["cat"],
             "evaluate": ["--pairs", str(tmp_path / "p.tsv")]}[action]
    (tmp_path / "p.tsv").write_text("cat\tdog\t9\nking\tqueen\t8\ncat\tparis\t1\n")
    code, _, err = _run(capsys, "vectors", action, str(bad), *extra)
    assert code == 2 and "--on-bad-line warn or skip" in _error_line(err)
    code, _, err = _run(capsys, "vectors", action, str(bad), *extra, "--on-bad-line", "skip")
    assert code == 0, err


def test_train_text_vectors_on_bad_line(capsys, tmp_path, text_csv):
    vec = tmp_path / "vec.txt"
    g = torch.Generator().manual_seed(0)
    rows = [f"w{i} " + " ".join(f"{x:.4f}" for x in torch.randn(12, generator=g).tolist()) for i in range(0, 150, 2)]
    rows[3] += " 0.5"  # a value too many
    vec.write_text("\n".join(rows) + "\n")
    argv = ["train", "text", "--data", str(text_csv), "--text-column", "message", "--label-column", "topic",
            "--vectors", str(vec), *TEXT_FAST]
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path / "r1"))
    line = _error_line(err)
    assert code == 2 and "vec.txt, line 4: expected a token and 12 values, found a token and 13 values" in line
    assert "pass --on-bad-line warn or skip to drop such rows" in line and "on_bad_line=" not in line
    assert not (tmp_path / "r1").exists()  # refused before the run folder is made
    code, _, err = _run(capsys, *argv, "--out", str(tmp_path / "r2"), "--on-bad-line", "skip")
    assert code == 0, err
    m = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert m["vectors_coverage"]["found"] == 74  # 75 rows, one dropped
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["config"]["on_bad_line"] == "skip"


def test_vectors_convert_picks_the_format_from_the_extension(capsys, tmp_path, glove):
    import numpy as np

    KeyedVectors = pytest.importorskip("gensim.models").KeyedVectors

    reference = KeyedVectors.load_word2vec_format(str(glove), no_header=True)
    cases = [("conv.txt", {}), ("conv.vec", {}), ("conv.bin", {"binary": True}), ("conv.txt.gz", {}),
             ("forced.out", {"no_header": True}, "glove"), ("forced.dat", {"binary": True}, "word2vec_binary")]
    for name, kwargs, *to in cases:
        out = tmp_path / name
        code, stdout, err = _run(capsys, "vectors", "convert", str(glove), str(out), *(["--to", to[0]] if to else []))
        assert code == 0, err
        kv = KeyedVectors.load_word2vec_format(str(out), **kwargs)  # gensim reads what we wrote
        assert kv.index_to_key == reference.index_to_key
        np.testing.assert_array_equal(kv.vectors, reference.vectors)
    code, out, err = _run(capsys, "vectors", "convert", str(glove), str(tmp_path / "c.safetensors"))
    assert code == 0 and "cache format" in out
    assert (tmp_path / "c.safetensors").read_bytes()[8:9] == b"{"
    code, _, err = _run(capsys, "vectors", "convert", str(glove), str(tmp_path / "conv.dat"))
    assert code == 2 and "cannot tell the output format from" in _error_line(err) and "--to" in _error_line(err)
    assert not (tmp_path / "conv.dat").exists()


def test_vectors_convert_never_replaces_its_source_or_a_file_that_is_not_a_cache(capsys, tmp_path, glove):
    before = glove.read_bytes()
    for argv in (["vectors", "convert", str(glove), str(glove)],
                 ["vectors", "convert", str(glove), str(glove), "--to", "safetensors"],
                 ["vectors", "convert", str(glove), str(tmp_path / "." / glove.name)]):
        code, _, err = _run(capsys, *argv)
        assert code == 2 and "is FILE itself; refusing to replace the vectors file" in _error_line(err)
        assert glove.read_bytes() == before
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not a cache")
    code, _, err = _run(capsys, "vectors", "convert", str(glove), str(notes))
    assert code == 2 and "notes.safetensors' exists and it is not a safetensors file" in _error_line(err)
    assert notes.read_text() == "not a cache"


def test_vectors_info_on_a_cache_labels_the_source_hash_and_shows_its_own(capsys, tmp_path, glove):
    import hashlib

    cache = tmp_path / "tiny.safetensors"
    assert _run(capsys, "vectors", "convert", str(glove), str(cache))[0] == 0
    code, out, err = _run(capsys, "vectors", "info", str(cache))
    assert code == 0, err
    source_sha = hashlib.sha256(glove.read_bytes()).hexdigest()
    cache_sha = hashlib.sha256(cache.read_bytes()).hexdigest()
    lines = out.splitlines()
    assert f"  source sha256: {source_sha}  (tiny.txt, as it was when the cache was made)" in lines
    assert f"  cache sha256: {cache_sha}  (this file)" in lines
    assert "  made from: tiny.txt (glove)" in lines
    code, out, _ = _run(capsys, "vectors", "info", str(glove))
    assert f"  sha256: {source_sha}  (this file)" in out.splitlines()


def test_vectors_neighbors_and_forced_formats_name_the_file_kind(capsys, tmp_path, glove):
    code, _, err = _run(capsys, "vectors", "info", str(glove), "--format", "word2vec_binary")
    line = _error_line(err)
    assert code == 2 and "not word2vec binary" in line and "--format glove or auto" in line
    assert "header declares" not in line


def test_train_recsys_with_an_unbounded_id_space(capsys, tmp_path, ratings_csv):
    run = tmp_path / "run"
    code, out, err = _run(capsys, "train", "recsys", "--ratings", str(ratings_csv), "--out", str(run),
                          "--ids", "hashed", "--rows", "64", *RECSYS_FAST)
    assert code == 0, err
    assert "user and movie tables: hash embeddings" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["ids"]["space"] == "hashed" and m["ids"]["rows"] == 64
    assert m["ids"]["model_bytes"]["total"] > 2 * 64 * 9 * 4
    code, _, err = _run(capsys, "train", "recsys", "--ratings", str(ratings_csv), "--ids", "bloom")
    assert code == 2 and "invalid choice: 'bloom'" in err
