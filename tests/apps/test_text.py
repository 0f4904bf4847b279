"""The text app's pieces: tokens, hashed n-gram features, bags, the baseline against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embtab
from embtab.apps.common import Bags
from embtab.apps.text import BagOfWordsLR, Featurizer, TextClassifier, _predict, fit_bow_lr, tokenize


def test_tokenize():
    assert tokenize("Great rally! https://t.co/AbC http://t.co/x www.x.com") == [
        "Great", "rally!", "<https>", "<http>", "<www>"]
    assert tokenize("line one\nline two") == ["line", "one", "line", "two", "<nl>"]
    assert tokenize("") == []


def _vocab() -> embtab.Vocab:
    return embtab.Vocab.build([["the", "cat", "sat"], ["the", "dog"]])


def test_featurizer_id_ranges_and_determinism():
    vocab = _vocab()
    f = Featurizer(vocab, 2, (3, 5))
    ids = f(["the", "cat", "zebra"])
    v = len(vocab)
    assert ids[:3] == [vocab["the"], vocab["cat"], vocab.unk_id]  # unseen word -> <unk>
    assert all(i >= v for i in ids[3:])  # bigrams and char n-grams: beyond the vocabulary -> hash rows
    assert len(ids) == 3 + 2 + sum(len(w) + 2 - n + 1 for w in ("the", "cat", "zebra") for n in (3, 4, 5))
    assert Featurizer(vocab, 2, (3, 5))(["the", "cat", "zebra"]) == ids  # stable across instances/runs
    # An unseen word shares pieces with a known one: "cats" and "cat" share "<ca", "cat", "<cat".
    shared = set(f(["cats"])[1:]) & set(f(["cat"])[1:])
    assert len(shared) == 3
    assert Featurizer(vocab, 1, (0, 0))(["the", "cat"]) == [vocab["the"], vocab["cat"]]


def test_bags_take():
    lists = [[1, 2, 3], [], [4], [5, 6]]
    bags = Bags.from_lists(lists)
    ids, offsets = bags.take(torch.tensor([3, 1, 0]))
    assert ids.tolist() == [5, 6, 1, 2, 3] and offsets.tolist() == [0, 2, 2]


def test_classifier_hashes_ngrams_into_buckets():
    vocab = _vocab()
    f = Featurizer(vocab, 2, (3, 4))
    bags = Bags.from_lists([f(["the", "cat"]), f(["zebra"]), []])
    model = TextClassifier(len(vocab), 3, dim=8, hidden=4, dropout=0.0, num_buckets=64,
                           padding_idx=vocab.pad_id, init="normal", optimizer=embtab.optim.Adam(lr=0.1))
    before = model.embed.weight.detach().clone()
    ids, offsets = bags.take(torch.arange(3))
    logits = model(ids, offsets)
    assert logits.shape == (3, 3)
    logits.sum().backward()  # the fused optimizer updates the looked-up rows now
    changed = (model.embed.weight.detach() != before).any(1)
    assert changed[len(vocab):].any()  # hash rows learned
    assert model.embed.weight.grad is None


def _synthetic(n: int = 300, seed: int = 0) -> tuple[Bags, torch.Tensor, int]:
    rng = np.random.default_rng(seed)
    v = 40
    docs, ys = [], []
    for _ in range(n):
        y = int(rng.integers(3))
        words = list(rng.integers(2, v, size=6)) + [2 + y * 3 + int(rng.integers(3))] * int(rng.integers(1, 3))
        docs.append([int(w) for w in words])
        ys.append(y if rng.random() > 0.1 else int(rng.integers(3)))
    return Bags.from_lists(docs), torch.tensor(ys), v


def test_bow_baseline_matches_sklearn():
    sk = pytest.importorskip("sklearn.linear_model")
    bags, y, v = _synthetic()
    l2 = 1e-2
    model, chosen, scores = fit_bow_lr(bags, y, bags, y, v, 3, 0, l2_grid=(l2,), max_iter=500)
    assert chosen == l2 and list(scores) == [l2]
    counts = np.zeros((len(bags), v))
    for i in range(len(bags)):
        for w in bags.flat[bags.starts[i]:bags.starts[i + 1]].tolist():
            counts[i, w] += 1
    ref = sk.LogisticRegression(C=1.0 / (l2 * len(bags)), max_iter=5000, tol=1e-10).fit(counts, y.numpy())
    ids, offsets = bags.take(torch.arange(len(bags)))
    with torch.no_grad():
        probs = torch.softmax(model(ids, offsets), 1).numpy()
    np.testing.assert_allclose(probs, ref.predict_proba(counts), atol=2e-3)
    assert (_predict(model, bags).numpy() == ref.predict(counts)).mean() > 0.99


def test_bow_grid_picks_the_best_validation_score():
    bags, y, v = _synthetic()
    val, yv, _ = _synthetic(seed=1)
    model, chosen, scores = fit_bow_lr(bags, y, val, yv, v, 3, 0, l2_grid=(1.0, 1e-2, 1e-4))
    assert isinstance(model, BagOfWordsLR)
    assert chosen == max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
