"""Using a trained run: load_run, predict, recommend, embtab predict and embtab export (issue #13)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import embtab
from embtab.apps.recsys import BiasedMF, History
from embtab.cli import main

TEXT = ["--text-column", "message", "--label-column", "topic", "--epochs", "2", "--dim", "16", "--hidden", "16",
        "--buckets", "2048", "--threads", "1", "-q"]
RECSYS = ["--epochs", "3", "--dim", "8", "--threads", "1", "-q"]


def _train(argv: list[str]) -> None:
    n = torch.get_num_threads()  # (--threads 1 sets torch's threads: put them back for the other tests)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    from tests.apps.conftest import write_text_csv

    folder = tmp_path_factory.mktemp("text")
    data = write_text_csv(folder / "texts.csv")
    _train(["train", "text", "--data", str(data), "--out", str(folder / "run"), *TEXT])
    return folder / "run"


@pytest.fixture(scope="module")
def recsys_run(tmp_path_factory):
    from tests.apps.conftest import write_ratings

    folder = tmp_path_factory.mktemp("recsys")
    ratings = write_ratings(folder / "ml")
    _train(["train", "recsys", "--ratings", str(ratings), "--out", str(folder / "run"), *RECSYS])
    return folder / "run"


def test_text_predict_and_the_model_file(text_run, tmp_path, capsys):
    run = embtab.load_run(text_run)
    texts = ["red1 red2 w3 w4", "blue2 blue3 w1", "green4 w7"]
    got = run.predict(texts)
    labels = json.loads((text_run / "metrics.json").read_text())["classes"]
    assert [set(r["probabilities"]) for r in got] == [set(labels)] * 3
    for r in got:
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    # The classifier computes what the run's model computes on the same features.
    assert torch.allclose(run.probabilities(texts).sum(1), torch.ones(3))
    with pytest.raises(TypeError, match=r"wrap one text in a list"):
        run.predict("one text")

    path = tmp_path / "text.safetensors"
    assert main(["export", str(text_run), "--quantize", "int8", "--out", str(path)]) == 0
    assert "wrote" in capsys.readouterr().out
    served = embtab.load_run(path)
    assert served.quantized and served.classes == run.classes
    # int8 tables: the probabilities move by far less than a percent.
    assert (served.probabilities(texts) - run.probabilities(texts)).abs().max() < 5e-3
    assert [r["label"] for r in served.predict(texts)] == [r["label"] for r in got]

    assert main(["predict", str(path), "--json", *texts]) == 0  # texts after an option too
    printed = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in printed] == [r["label"] for r in served.predict(texts)] and printed[0]["text"] == texts[0]
    assert main(["predict", str(text_run), texts[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["label", "p", "text"] and out[1].split()[0] == got[0]["label"]


def test_text_predict_reads_stdin(text_run, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("red1 w3\nblue2 w4\n"))
    assert main(["predict", str(text_run), "-", "--json"]) == 0
    assert [p["text"] for p in json.loads(capsys.readouterr().out)] == ["red1 w3", "blue2 w4"]


def test_recsys_predict_recommend_and_the_model_file(recsys_run, tmp_path, capsys):
    run = embtab.load_run(recsys_run)
    assert run.app == "recsys" and run.history is not None  # the SVD++ bag
    users, items = run.users[:3], run.items[:4]
    pairs = [(u, m) for u in users for m in items]
    ratings = run.predict(pairs)
    assert len(ratings) == 12 and all(run.clamp[0] <= r <= run.clamp[1] for r in ratings)
    # Ids as the dataset's numbers work too; an unknown user or movie falls back to what is known.
    assert run.predict([(int(users[0]), int(items[0]))]) == ratings[:1]
    assert len(run.predict([("no-such-user", items[0]), (users[0], "no-such-movie")])) == 2

    top = run.recommend(users[0], k=5)
    rated = set(run.rated(users[0]))
    assert len(top) == 5 and not {t["movie"] for t in top} & rated
    assert [t["rating"] for t in top] == sorted((t["rating"] for t in top), reverse=True)
    everyone = [m for m in run.items if m not in rated]
    best = max(run.predict([(users[0], m) for m in everyone]))
    assert abs(top[0]["rating"] - best) < 1e-5
    assert top[0]["title"].startswith("Movie ")
    with pytest.raises(KeyError, match="has no ratings in the run's training data"):
        run.recommend("no-such-user")

    path = tmp_path / "recsys.safetensors"
    assert main(["export", str(recsys_run), "--quantize", "int4", "--method", "greedy", "--per-table", "user=int8",
                 "--out", str(path)]) == 0
    capsys.readouterr()
    served = embtab.load_run(path)
    assert served.quantized and served.items == run.items and served.rated(users[0]) == run.rated(users[0])
    assert np.abs(np.array(served.predict(pairs)) - np.array(ratings)).max() < 0.05
    dtypes = {n.rsplit(".", 1)[-1]: t.dtype for n, t in served.model.quantized_tables().items()}
    assert dtypes["user"] == "int8" and dtypes["item"] == "int4" and dtypes["implicit"] == "int4"

    csv = tmp_path / "pairs.csv"
    csv.write_text("userId,movieId\n" + "".join(f"{u},{m}\n" for u, m in pairs))
    assert main(["predict", str(path), "--pairs", str(csv), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["rating"] for p in printed] == pytest.approx(served.predict(pairs))
    assert main(["predict", str(path), "--recommend", users[0], "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("top 3 movies for user") and len(lines) == 5
    assert main(["predict", str(recsys_run), "--user", users[0], "--movie", items[0]]) == 0
    assert f"{ratings[0]:6.3f}" in capsys.readouterr().out


def test_cli_refuses_what_does_not_fit(text_run, recsys_run, tmp_path, capsys):
    def error(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "is a text classifier: --user are for recommender runs" in error("predict", str(text_run), "--user", "1")
    assert "nothing to classify" in error("predict", str(text_run))
    assert "is a movie recommender" in error("predict", str(recsys_run), "some text")
    assert "--recommend goes alone" in error("predict", str(recsys_run), "--recommend", "1", "--user", "1")
    assert "no such run folder or model file" in error("predict", str(tmp_path / "nothing"))
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    assert "exists and is not a model file" in error("export", str(text_run), "--out", str(other))
    assert other.read_text() == "keep me"
    assert "--per-table takes TABLE=DTYPE" in error("export", str(text_run), "--out", str(tmp_path / "m"), "--per-table", "x")
    assert "no table of this model" in error("export", str(text_run), "--out", str(tmp_path / "m"), "--per-table", "item=int4")
    bad = tmp_path / "pairs.csv"
    bad.write_text("user,movie\n1,2\n")
    assert "must be a CSV file with a header naming userId and movieId" in error("predict", str(recsys_run), "--pairs", str(bad))


def test_history_bags_are_the_rated_movies():
    users = torch.tensor([0, 0, 1, 2, 2, 2, 0])
    items = torch.tensor([3, 1, 4, 1, 1, 0, 3])  # (2, 1) twice, (0, 3) twice: one entry each
    h = History.build(users, items, num_users=4, cap=2, seed=0)
    ids, offsets, w = h.take(torch.tensor([0, 1, 2, 3, -1]))
    bags = [ids[offsets[i]:(offsets[i + 1] if i + 1 < len(offsets) else len(ids))].tolist() for i in range(5)]
    assert bags[0] == [1, 3] and bags[1] == [4] and sorted(bags[2]) in ([0, 1],) and bags[3] == [] and bags[4] == []
    assert torch.allclose(w, torch.tensor([2 ** -0.5] * 2 + [1.0] + [2 ** -0.5] * 2))
    capped = History.build(torch.zeros(10, dtype=torch.int64), torch.arange(10), 1, cap=4, seed=3)
    assert len(capped.take(torch.tensor([0]))[0]) == 4  # a fixed random subset of 4 of the 10


def test_implicit_fused_sgd_matches_dense_sgd():
    """The SVD++ bag (sum pooling, per-sample weights |N(u)|^-1/2) trains as torch.optim.SGD does."""
    def make(fused):
        torch.manual_seed(0)
        m = BiasedMF(7, 9, 0, 5, init_std=0.3, optimizer=embtab.optim.SGD(lr=0.05) if fused else None, implicit=True)
        return m, (None if fused else torch.optim.SGD(m.parameters(), lr=0.05))

    (a, _), (b, opt) = make(True), make(False)
    g = torch.Generator().manual_seed(1)
    hist = History.build(torch.randint(0, 7, (40,), generator=g), torch.randint(0, 9, (40,), generator=g), 7, 3, 0)
    for _ in range(4):
        users, items = torch.randint(-1, 7, (16,), generator=g), torch.randint(-1, 9, (16,), generator=g)
        r = torch.rand(16, generator=g) * 5
        for m in (a, b):
            p = m.parts(users, items, history=hist.take(users))
            loss = (p["pred"] - r).pow(2).sum() + 0.1 * p["y"].pow(2).sum()
            if m is b:
                opt.zero_grad()
            loss.backward()
            if m is b:
                opt.step()
    for name in ("user", "item", "implicit"):
        torch.testing.assert_close(a.table(name), b.table(name), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pass history="):
        a.parts(users, items)


def test_a_recommender_trained_with_an_id_space_is_refused_by_name(tmp_path):
    from tests.apps.conftest import write_ratings

    ratings = write_ratings(tmp_path / "ml", users=40, items=30, n=800)
    run = tmp_path / "run"
    _train(["train", "recsys", "--ratings", str(ratings), "--out", str(run), "--epochs", "1", "--dim", "4",
            "--ids", "hashed", "--rows", "32", "--threads", "1", "-q"])
    with pytest.raises(embtab.apps.common.AppError, match=r"--ids hashed is not supported yet"):
        embtab.load_run(run)
