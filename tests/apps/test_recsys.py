"""The recommender's pieces: out-of-vocabulary ids, the bias baseline, titles and neighbours."""

from __future__ import annotations

import json

import pytest
import torch

from embtab.apps.common import Bags
from embtab.apps.recsys import BiasedMF, _Split, find_item, fit_biases, nearest_neighbors, normalize_title, predict_biases
import embtab


def test_unseen_ids_fall_back_to_the_known_parts():
    plain = BiasedMF(4, 5, 0, 6, init_std=0.5, optimizer=embtab.optim.SGD(lr=0.1))
    plain.global_mean.fill_(3.5)
    with torch.no_grad():
        plain.tables.embedding_bags["user"].weight[:, 6] = 0.25
        plain.tables.embedding_bags["item"].weight[:, 6] = -0.5
    users, items = torch.tensor([1, -1, 1]), torch.tensor([-1, 2, 2])
    parts = plain.parts(users, items)
    # oov="zero": an unseen movie (-1) has a zero vector and zero bias; so has an unseen user.
    assert torch.equal(parts["q"][0], torch.zeros(6)) and torch.equal(parts["p"][1], torch.zeros(6))
    assert parts["pred"][0].item() == 3.5 + 0.25 and parts["pred"][1].item() == 3.5 - 0.5

    model = BiasedMF(4, 5, 3, 6, init_std=0.5, optimizer=embtab.optim.SGD(lr=0.1))
    model.global_mean.fill_(3.5)
    fids, foffs = Bags.from_lists([[0, 1]]).take(torch.tensor([0, 0, 0]))
    pred = model(users, items, fids, foffs)
    f = model.table("item_features")[:2].mean(0)
    p1 = model.table("user")[1]
    # A new movie is still scored through its genres: the user's vector meets the features' vector.
    assert torch.allclose(pred[0], 3.5 + p1[6] + f[6] + (p1[:6] * f[:6]).sum())


def test_fused_sgd_matches_dense_sgd():
    """The fused update equals torch.optim.SGD on dense gradients of the same loss."""
    def make(fused):
        torch.manual_seed(0)
        m = BiasedMF(7, 9, 4, 5, init_std=0.3, optimizer=embtab.optim.SGD(lr=0.05) if fused else None)
        opt = None if fused else torch.optim.SGD(m.parameters(), lr=0.05)
        return m, opt

    (a, _), (b, opt) = make(True), make(False)
    g = torch.Generator().manual_seed(1)
    bags = Bags.from_lists([[0, 1], [2], [], [3, 0, 1]])
    for _ in range(5):
        users, items = torch.randint(-1, 7, (16,), generator=g), torch.randint(-1, 9, (16,), generator=g)
        fids, foffs = bags.take(torch.randint(0, 4, (16,), generator=g))
        r = torch.rand(16, generator=g) * 5
        for m in (a, b):
            p = m.parts(users, items, fids, foffs)
            loss = (p["pred"] - r).pow(2).sum() + 0.1 * (p["p"].pow(2).sum() + p["q"].pow(2).sum())
            if m is b:
                opt.zero_grad()
            loss.backward()
            if m is b:
                opt.step()
    for name in ("user", "item", "item_features"):
        torch.testing.assert_close(a.table(name), b.table(name), atol=1e-5, rtol=1e-5)


def test_fit_biases_is_the_ridge_solution():
    g = torch.Generator().manual_seed(0)
    users, items = torch.randint(0, 6, (80,), generator=g), torch.randint(0, 5, (80,), generator=g)
    r = torch.randint(1, 11, (80,), generator=g).float() / 2
    split = _Split(users, items, items, r)
    reg = 2.0
    mu, bu, bi = fit_biases(split, 6, 5, reg, sweeps=300)
    assert mu == pytest.approx(float(r.double().mean()))  # the global mean, not a fitted one
    # The same objective solved directly: min sum (r - mu - bu - bi)^2 + reg (|bu|^2 + |bi|^2).
    x = torch.zeros(80, 11, dtype=torch.float64)
    x[torch.arange(80), users] = 1
    x[torch.arange(80), 6 + items] = 1
    a = x.T @ x + reg * torch.eye(11, dtype=torch.float64)
    sol = torch.linalg.solve(a, x.T @ (r.double() - mu))
    assert torch.allclose(torch.cat([bu, bi]), sol, atol=1e-8)
    test = _Split(torch.tensor([0, -1]), torch.tensor([-1, 1]), torch.tensor([0, 1]), torch.tensor([3.0, 3.0]))
    pred = predict_biases(test, mu, bu, bi, (0.5, 5.0))
    assert torch.allclose(pred, torch.stack([mu + bu[0], mu + bi[1]]).float(), atol=1e-6)


def test_titles():
    assert normalize_title("Matrix, The (1999)") == "the matrix"
    assert normalize_title("Toy Story") == "toy story"
    titles = {"1": "Toy Story", "3114": "Toy Story 2", "2571": "Matrix, The", "6365": "Matrix Reloaded, The",
              "260": "Star Wars: Episode IV - A New Hope", "1196": "Star Wars: Episode V - The Empire Strikes Back"}
    counts = {"1": 200, "3114": 90, "2571": 250, "6365": 80, "260": 290, "1196": 230}
    assert find_item("Toy Story", titles, counts) == "1"  # exact beats a more frequent partial match
    assert find_item("The Matrix", titles, counts) == "2571"
    assert find_item("star wars", titles, counts) == "260"  # the most rated partial match
    assert find_item("Casablanca", titles, counts) is None


def test_nearest_neighbors():
    vectors = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.95, 0.0], [1.0, 0.05]])
    tokens = ["a", "b", "c", "d", "e"]
    counts = torch.tensor([50, 50, 50, 50, 3])  # "e" is too rarely rated to be shown
    titles = {"a": "Alpha", "b": "Beta", "c": "Gamma", "d": "Delta", "e": "Epsilon"}
    (nb,) = nearest_neighbors(vectors, tokens, counts, titles, ["alpha"], k=2, min_ratings=10)
    assert nb["movie"] == "Alpha" and [x["movie"] for x in nb["neighbors"]] == ["Delta", "Beta"]
    assert nb["neighbors"][0]["cosine"] == 1.0 or abs(nb["neighbors"][0]["cosine"] - 1.0) < 1e-6


# --- --ids and --rows: unbounded id spaces ------------------------------------------------------


def test_scramble_is_a_bijection_into_62_bits():
    import numpy as np

    from embtab.apps.recsys import scramble

    tokens = np.array([str(i) for i in range(0, 200_000, 7)] + ["4611686018427387903", "user-a", "user-b"])
    keys = scramble(tokens)
    assert bool(((keys >= 0) & (keys < 2**62)).all()) and keys.unique().numel() == len(tokens)
    assert scramble(np.array(["12"])).tolist() == scramble(np.array(["12"])).tolist()  # fixed


@pytest.mark.parametrize("ids", ["hashing", "hashed", "dynamic"])
def test_id_space_models_look_up_raw_keys(ids):
    from embtab.apps.recsys import model_bytes

    model = BiasedMF(3, 4, 0, 6, init_std=0.1, optimizer=embtab.optim.SGD(lr=0.1), ids=ids, rows=16)
    users, items = torch.tensor([2**61, 5, 2**61]), torch.tensor([7, 2**40, 7])
    pred = model(users, items)
    assert pred.shape == (3,) and torch.equal(pred[0], pred[2])
    pred.sum().backward()
    size = model_bytes(model, 0)
    rows = sum(b.weight.shape[0] for b in model.tables.embedding_bags.values())
    assert rows == 32 and size["parameters"] >= 32 * 7 * 4 and (size["index"] > 0) == (ids == "dynamic")
    if ids == "dynamic":  # 12 rows owned by ids, 4 hashed fallback rows
        stage = model.tables.embedding_bags["user"].ids
        assert stage.capacity == 12 and stage.extra_rows == 4


def test_dynamic_recommender_resumes_exactly(tmp_path, ratings_csv):
    """A dynamic table's map, counts and rows travel in the checkpoint: train 2 epochs, go on to 3,
    and the metrics are those of 3 epochs at once."""
    from embtab.apps import recsys
    from embtab.apps.common import Resume

    kw = dict(ratings=str(ratings_csv), patience=0, dim=6, threads=1, quiet=True, ids="dynamic", rows=48)
    full = recsys.train(recsys.RecsysConfig(out=str(tmp_path / "full"), epochs=3, **kw))
    recsys.train(recsys.RecsysConfig(out=str(tmp_path / "part"), epochs=2, **kw))
    resumed = recsys.train(recsys.RecsysConfig(threads=1, quiet=True), resume=Resume(str(tmp_path / "part"), epochs=3))
    strip = lambda m: ([{k: v for k, v in h.items() if k not in ("seconds", "examples_per_s")} for h in m["history"]],
                       m["test"], m["ids"]["stats"])
    assert strip(full) == strip(resumed)
    assert full["ids"]["space"] == "dynamic" and full["ids"]["stats"]["item"]["evicted"] > 0


def test_a_run_from_before_svdpp_resumes_and_is_served(tmp_path, ratings_csv):
    """A run written before --implicit and --lr-decay existed (no such keys in config.json, no
    epoch count in its checkpoints) resumes and serves as it was trained: without them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from embtab.apps import recsys
    from embtab.apps.common import Resume

    kw = dict(ratings=str(ratings_csv), patience=0, dim=6, threads=1, quiet=True, implicit=False, lr_decay=1.0)
    full = recsys.train(recsys.RecsysConfig(out=str(tmp_path / "full"), epochs=3, **kw))
    run = tmp_path / "old"
    recsys.train(recsys.RecsysConfig(out=str(run), epochs=2, **kw))
    doc = json.loads((run / "config.json").read_text())
    for key in ("implicit", "implicit_max", "implicit_reg", "lr_decay"):
        del doc["config"][key]
    (run / "config.json").write_text(json.dumps(doc))
    for path in run.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        assert any(k.endswith("epochs_done") for k in tensors), list(tensors)
        save_file({k: v for k, v in tensors.items() if not k.endswith("epochs_done")}, str(path), metadata=meta)

    resumed = recsys.train(recsys.RecsysConfig(threads=1, quiet=True), resume=Resume(str(run), epochs=3))
    strip = lambda m: [{k: v for k, v in h.items() if k not in ("seconds", "examples_per_s")} for h in m["history"]]
    assert strip(full) == strip(resumed) and full["test"] == resumed["test"]
    assert resumed["implicit"] is False
    served = embtab.load_run(run)
    assert served.history is None and len(served.predict([("1", "10")])) == 1
