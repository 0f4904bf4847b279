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


# ---------------------------------------------------------------------- issue #10.3: non-finite rows
@pytest.fixture
def poisoned():
    """400 finite vectors and a row of NaN and inf, for a token that is in the vocabulary."""
    g = torch.Generator().manual_seed(3)
    finite = torch.randn(400, 8, generator=g) * 2 + 1
    vecs = torch.cat([finite, torch.full((1, 8), float("nan"))])
    vecs[400, 0] = float("inf")
    vectors = Vectors([f"w{i}" for i in range(400)] + ["nan_word"], vecs)
    tokens = ["<pad>", "<unk>"] + [f"m{i}" for i in range(300)] + ["w0", "nan_word"]
    vocab = Vocab(tokens, specials=("<pad>", "<unk>"), unk_token="<unk>", pad_token="<pad>")
    return vectors, vocab, finite


@pytest.mark.parametrize("cls", [Embedding, EmbeddingBag])
def test_from_vectors_names_the_token_of_a_non_finite_row(poisoned, cls):
    vectors, vocab, _ = poisoned
    with pytest.raises(ValueError, match=r"from_vectors: the pretrained vector of 'nan_word' \(row 400 of the "
                                         r"vectors\), for vocabulary token 'nan_word' \(id 303\), holds inf \(not "
                                         r"finite\); 1 of the 2 vectors to copy do.*nonfinite='keep'"):
        cls.from_vectors(vectors, vocab)


@pytest.mark.parametrize("oov_init", ["mean", "normal"])
@pytest.mark.parametrize("cls", [Embedding, EmbeddingBag])
def test_non_finite_rows_never_reach_the_statistics_that_initialise_other_rows(poisoned, cls, oov_init):
    vectors, vocab, finite = poisoned
    kwargs = {"oov": "hash", "num_oov_buckets": 64} if cls is Embedding else {"mode": "mean"}
    emb, report = cls.from_vectors(vectors, vocab, nonfinite="keep", oov_init=oov_init, **kwargs)
    w = emb.weight.detach()
    nan_id = vocab["nan_word"]
    assert not torch.isfinite(w[nan_id]).all()  # kept, as asked
    others = torch.cat([w[:nan_id], w[nan_id + 1 :]])  # missing rows, <unk>, w0, hash buckets
    assert torch.isfinite(others).all()
    missing = w[2:302]  # m0..m299 are missing from the vectors (0, 1: <pad>, <unk>)
    if oov_init == "mean":
        expected = finite.double().mean(0).float()  # the oracle: the mean of the finite rows only
        torch.testing.assert_close(missing, expected.expand_as(missing))
        torch.testing.assert_close(w[vocab.unk_id], expected)
    else:
        assert float(missing.std()) == pytest.approx(float(finite.std()), rel=0.05)
    assert torch.equal(w[vocab["w0"]], vectors["w0"])


def test_rows_not_in_the_vocabulary_do_not_matter_and_all_non_finite_is_an_error(poisoned):
    vectors, _, finite = poisoned
    vocab = Vocab(["w1", "zebra"])  # nan_word is not in it: nothing non-finite is copied
    emb, _ = Embedding.from_vectors(vectors, vocab, oov_init="mean")
    torch.testing.assert_close(emb.weight.detach()[vocab["zebra"]], finite.double().mean(0).float())
    only_nan = Vectors(["x"], torch.full((1, 8), float("nan")))
    with pytest.raises(ValueError, match=r"oov_init='normal' needs at least one finite pretrained vector \(all 1 "
                                         r"hold NaN or inf\); pass oov_init='zeros'"):
        Embedding.from_vectors(only_nan, vocab, nonfinite="keep")
    with pytest.raises(ValueError, match=r"nonfinite must be one of \('error', 'keep'\)"):
        Embedding.from_vectors(vectors, vocab, nonfinite="ignore")


def test_a_finite_vector_that_overflows_the_table_dtype_is_named(tmp_path):
    vectors = Vectors(["big", "ok"], torch.tensor([[7e4, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"the pretrained vector of 'big' \(row 0 of the vectors\), for vocabulary "
                                         r"token 'big' \(id 0\), holds 70000, which overflows torch\.float16.*"
                                         r"pass dtype=torch\.float32"):
        Embedding.from_vectors(vectors, Vocab(["big", "ok"]), dtype=torch.float16)


@requires_data
@pytest.mark.parametrize("name", ["lee_fasttext.vec"])
def test_real_vectors_with_one_poisoned_row(name):
    """gensim's real vectors, one row set to NaN: a NaN-free table but for that row."""
    v = embtab.vectors.load(data(name))
    v.vectors[5] = float("nan")
    vocab = Vocab(v.tokens[:50] + ["never-seen-1", "never-seen-2"])
    with pytest.raises(ValueError, match=rf"{v.tokens[5]!r}"):
        Embedding.from_vectors(v, vocab)
    emb, report = Embedding.from_vectors(v, vocab, nonfinite="keep", oov="hash", num_oov_buckets=8)
    bad = ~torch.isfinite(emb.weight.detach()).all(1)
    assert bad.nonzero().flatten().tolist() == [vocab[v.tokens[5]]]
