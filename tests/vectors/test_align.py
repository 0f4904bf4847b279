"""Embedding.from_vectors / embedding_from_vectors: rows, initialisation, padding, coverage report."""

from __future__ import annotations

import pytest
import torch

import embtab
from embtab import Embedding, EmbeddingBag, Vocab
from embtab.vectors import CoverageReport, Vectors, embedding_from_vectors

from .conftest import data, requires_data


@pytest.fixture
def setup():
    vectors = Vectors(["the", "cat", "paris", "dog", "<unk>"], torch.arange(15, dtype=torch.float32).reshape(5, 3) + 1)
    corpus = [["the", "cat", "The", "Paris"], ["the", "zebra", "zebra", "yak", "Dog"], ["the"]]
    vocab = Vocab.build(corpus)
    return vectors, vocab


def test_rows_are_copied_by_token_with_lowercase_fallback(setup):
    vectors, vocab = setup
    emb, report = Embedding.from_vectors(vectors, vocab)
    w = emb.weight.detach()
    assert w.shape == (len(vocab), 3) and isinstance(emb, Embedding)
    for tok in ["the", "cat"]:
        assert torch.equal(w[vocab[tok]], vectors[tok])  # exact match
    for tok, lower in [("The", "the"), ("Paris", "paris"), ("Dog", "dog")]:
        assert torch.equal(w[vocab[tok]], vectors[lower])  # lower-case fallback
    assert torch.equal(w[vocab["<unk>"]], vectors["<unk>"])  # a special found in the vectors is copied
    assert torch.equal(w[vocab.pad_id], torch.zeros(3)) and emb.padding_idx == vocab.pad_id
    assert (report.found, report.found_lowercase, report.missing) == (2, 3, 2)
    assert report.specials_found == ("<unk>",)
    assert report.top_missing == (("zebra", 2), ("yak", 1))


def test_report_against_set_arithmetic(setup):
    """The counts of the report, recomputed independently from the vocab and the vectors."""
    vectors, vocab = setup
    for fallback in (True, False):
        _, r = Embedding.from_vectors(vectors, vocab, lowercase_fallback=fallback)
        words = [t for t in vocab.tokens if t not in vocab.specials]
        exact = {t for t in words if t in vectors}
        lower = {t for t in words if t not in exact and fallback and t.lower() in vectors}
        missing = [t for t in words if t not in exact | lower]
        assert (r.tokens, r.found, r.found_lowercase, r.missing) == (len(words), len(exact), len(lower), len(missing))
        assert r.occurrences == sum(vocab.count(t) for t in words)
        assert r.occurrences_covered == sum(vocab.count(t) for t in exact | lower)
        assert [t for t, _ in r.top_missing] == sorted(missing, key=lambda t: -vocab.count(t))
        assert r.coverage == pytest.approx((len(exact) + len(lower)) / len(words))


def test_report_prints_well(setup):
    vectors, vocab = setup
    _, report = Embedding.from_vectors(vectors, vocab)
    text = str(report)
    assert text.splitlines()[0] == "Coverage of 7 vocabulary tokens by 5 vectors of dim 3:"
    assert "\n  found            2   28.6%\n" in text
    assert "\n  found lowercase  3   42.9%\n" in text
    assert "\n  missing          2   28.6%  (initialised: normal)\n" in text
    assert "corpus occurrences covered: 70.0% of 10" in text  # 3 of 10 occurrences are zebra/yak
    assert "most frequent missing: 'zebra' (2), 'yak' (1)" in text


@pytest.mark.parametrize("oov_init", ["zeros", "mean", "normal"])
def test_oov_init(oov_init):
    g = torch.Generator().manual_seed(1)
    vectors = Vectors([f"w{i}" for i in range(400)], torch.randn(400, 8, generator=g) * 3 + 1)
    vocab = Vocab([f"m{i}" for i in range(3000)] + ["w0"])
    emb, report = Embedding.from_vectors(vectors, vocab, oov_init=oov_init)
    missing = emb.weight.detach()[:3000]
    assert report.missing == 3000 and report.oov_init == oov_init
    if oov_init == "zeros":
        assert torch.equal(missing, torch.zeros_like(missing))
    elif oov_init == "mean":
        expected = vectors.vectors.double().mean(0).float()
        torch.testing.assert_close(missing, expected.expand_as(missing))
    else:  # N(0, s^2) with s the std of all pretrained values: the found rows' scale
        s = float(vectors.vectors.std())
        assert float(missing.std()) == pytest.approx(s, rel=0.03)
        assert abs(float(missing.mean())) < 0.1 * s
    assert torch.equal(emb.weight.detach()[3000], vectors["w0"])


def test_freeze_padding_gradient_and_kwargs(setup):
    vectors, vocab = setup
    emb, _ = Embedding.from_vectors(vectors, vocab, freeze=True)
    assert not emb.weight.requires_grad
    emb, _ = Embedding.from_vectors(vectors, vocab, max_norm=1.0, dtype=torch.float64, device="cpu")
    assert emb.weight.requires_grad and emb.weight.dtype == torch.float64 and emb.max_norm == 1.0
    ids = vocab.encode([["the", "cat"], ["the"]]).ids
    emb.zero_grad()
    emb(ids).sum().backward()
    assert torch.equal(emb.weight.grad[vocab.pad_id], torch.zeros(3, dtype=torch.float64))  # padding gets none
    assert emb.weight.grad[vocab["the"]].abs().sum() > 0
    emb, _ = Embedding.from_vectors(vectors, vocab, padding_idx=None)
    assert emb.padding_idx is None and emb.weight.detach()[0].abs().sum() > 0  # "<pad>" initialised like OOV
    emb, _ = Embedding.from_vectors(vectors, vocab, oov="hash", num_oov_buckets=4)
    assert emb.weight.shape == (len(vocab) + 4, 3)


def test_embedding_bag_and_the_functional_form(setup):
    vectors, vocab = setup
    bag, report = embedding_from_vectors(vectors, vocab, embedding_cls=EmbeddingBag, mode="sum")
    assert isinstance(bag, EmbeddingBag) and isinstance(report, CoverageReport)
    enc = vocab.encode([["the", "cat"], ["Paris"]])
    expected = torch.stack([vectors["the"] + vectors["cat"], vectors["paris"]])
    torch.testing.assert_close(bag(enc.flat_ids, enc.offsets), expected)


def test_embedding_bag_from_vectors_with_a_fused_optimizer(setup):
    vectors, vocab = setup
    bag, _ = EmbeddingBag.from_vectors(vectors, vocab, mode="sum", optimizer=embtab.optim.SGD(lr=0.5))
    enc = vocab.encode([["the", "cat"]])
    before = bag.weight.detach().clone()
    bag(enc.flat_ids, enc.offsets).sum().backward()
    assert bag.weight.grad is None  # the fused SGD updated the two rows during backward
    moved = (bag.weight.detach() != before).any(1).nonzero().flatten().tolist()
    assert moved == sorted(vocab.lookup_ids(["the", "cat"]))
    torch.testing.assert_close(bag.weight.detach()[moved], before[moved] - 0.5)


def test_errors(setup):
    vectors, vocab = setup
    with pytest.raises(ValueError, match=r"oov_init must be one of \('normal', 'zeros', 'mean'\)"):
        Embedding.from_vectors(vectors, vocab, oov_init="uniform")
    with pytest.raises(TypeError, match="vectors must be embtab.vectors.Vectors.*embtab.vectors.load"):
        Embedding.from_vectors(torch.zeros(3, 3), vocab)
    with pytest.raises(TypeError, match="vocab must be an embtab.Vocab"):
        Embedding.from_vectors(vectors, ["the"])
    with pytest.raises(ValueError, match=r"padding_idx must be 'auto', None or an id in \[-9, 8\], got 99"):
        Embedding.from_vectors(vectors, vocab, padding_idx=99)
    with pytest.raises(ValueError, match="padding_idx must be 'auto', an int or None, got 'first'"):
        Embedding.from_vectors(vectors, vocab, padding_idx="first")


@requires_data
def test_real_vectors_and_corpus():
    """lee_fasttext.vec aligned to a vocabulary of gensim's Lee corpus."""
    vectors = embtab.vectors.load(data("lee_fasttext.vec"))
    with open(data("lee_background.cor"), encoding="utf-8") as f:
        vocab = Vocab.build((line.split() for line in f), min_freq=2)
    emb, report = Embedding.from_vectors(vectors, vocab)
    assert report.found + report.found_lowercase + report.missing == len(vocab) - 2
    found = [t for t in vocab.tokens[2:] if t in vectors]
    assert report.found == len(found) > 1000
    rows = torch.tensor([vocab[t] for t in found])
    assert torch.equal(emb.weight.detach()[rows], torch.stack([vectors[t] for t in found]))
    assert 0.5 < report.occurrence_coverage < 1.0



@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_from_vectors_on_gpu(setup):
    vectors, vocab = setup
    for v, kwargs in [(vectors.to("cuda"), {}), (vectors, {"device": "cuda"})]:
        emb, report = Embedding.from_vectors(v, vocab, **kwargs)
        assert emb.weight.is_cuda and (report.found, report.found_lowercase) == (2, 3)
        assert torch.equal(emb.weight.detach()[vocab["Paris"]].cpu(), vectors["paris"])
        ids = vocab.encode([["the", "cat"]]).ids.cuda()
        assert emb(ids).shape == (1, 2, 3)
