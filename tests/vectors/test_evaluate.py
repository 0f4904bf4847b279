"""most_similar, evaluate_word_pairs and evaluate_analogies against gensim on the same vectors."""

from __future__ import annotations

import functools
import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embtab
from embtab.vectors import Vectors
from embtab.vectors.evaluate import _pearson, _rankdata

from .conftest import GENSIM_DATA, data, requires_data, requires_gensim

GENSIM = GENSIM_DATA is not None and importlib.util.find_spec("gensim") is not None

# Files with enough known words for pairs and analogies to be evaluated.
FILES = [
    ("euclidean_vectors.bin", {"binary": True}),
    ("lee_fasttext.vec", {}),
    ("pang_lee_polarity_fasttext.vec", {"unicode_errors": "replace"}),
]
IDS = [f for f, _ in FILES]


@functools.lru_cache(maxsize=None)
def both(name: str) -> tuple[Vectors, object]:
    from gensim.models import KeyedVectors

    kwargs = dict(FILES)[name]
    kv = KeyedVectors.load_word2vec_format(str(data(name)), **kwargs)
    v = embtab.vectors.load(data(name), unicode_errors=kwargs.get("unicode_errors", "strict"))
    return v, kv


@requires_gensim
@pytest.mark.parametrize("name", IDS)
def test_most_similar_matches_gensim(name):
    v, kv = both(name)
    for row in (0, 5, len(v) // 2, len(v) - 1):
        tok = v.tokens[row]
        expected = kv.most_similar(tok, topn=10)
        got = v.most_similar(tok, k=10)
        assert [t for t, _ in got] == [t for t, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)
    # A vector query excludes nothing; restrict_vocab limits the rows searched.
    query = v.vectors[3] * 2 + v.vectors[7]
    expected = kv.most_similar(positive=[query.numpy()], topn=5, restrict_vocab=200)
    got = v.most_similar(query, k=5, restrict_vocab=200)
    assert [t for t, _ in got] == [t for t, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)


@requires_gensim
@pytest.mark.parametrize("options", [{}, {"case_insensitive": False}, {"dummy4unknown": True}, {"restrict_vocab": 400}],
                         ids=["default", "case_sensitive", "dummy4unknown", "restrict_vocab"])
@pytest.mark.parametrize("pairs", ["wordsim353.tsv", "simlex999.txt"])
@pytest.mark.parametrize("name", IDS)
def test_word_pairs_match_gensim(name, pairs, options):
    v, kv = both(name)
    try:
        pearson, spearman, oov_percent = kv.evaluate_word_pairs(str(data(pairs)), **options)
    except ValueError:  # fewer than 2 pairs known: no correlation (scipy raises)
        with pytest.raises(ValueError, match="to score"):
            v.evaluate_word_pairs(data(pairs), **options)
        return
    r = v.evaluate_word_pairs(data(pairs), **options)
    assert r.pearson == pytest.approx(pearson[0], abs=1e-6)
    assert r.spearman == pytest.approx(spearman[0], abs=1e-6)
    assert r.oov_ratio * 100 == pytest.approx(oov_percent, rel=1e-12)  # gensim reports a percentage
    assert 0 < r.pairs and 0 <= r.oov_ratio <= 1


@requires_gensim
@pytest.mark.parametrize("options", [{}, {"case_insensitive": False}, {"dummy4unknown": True}, {"restrict_vocab": 500}],
                         ids=["default", "case_sensitive", "dummy4unknown", "restrict_vocab"])
@pytest.mark.parametrize("name", IDS)
def test_analogies_match_gensim(name, options):
    v, kv = both(name)
    score, sections = kv.evaluate_word_analogies(str(data("questions-words.txt")), **options)
    r = v.evaluate_analogies(data("questions-words.txt"), **options)
    expected = {s["section"]: (len(s["correct"]), len(s["correct"]) + len(s["incorrect"])) for s in sections}
    total = expected.pop("Total accuracy")
    assert dict(r.section_counts) == expected
    assert (r.correct, r.evaluated) == total
    assert r.accuracy == pytest.approx(score, abs=1e-12)
    for s in sections[:-1]:
        n = len(s["correct"]) + len(s["incorrect"])
        assert r.sections[s["section"]] == pytest.approx(len(s["correct"]) / n if n else 0.0)
    assert r.evaluated > 0


@pytest.mark.parametrize("case_insensitive,expected", [(True, (1, 2)), (False, (0, 2))])
def test_analogy_skips_case_variants_of_the_question(tmp_path, case_insensitive, expected):
    """A hand-made space: the row nearest to the query is "King", a case variant of "king"."""
    tokens = ["man", "woman", "king", "queen", "King", "apple"]
    e = torch.eye(5)
    vecs = torch.stack([e[0], e[1], e[2], 0.9 * e[2] + 0.43 * e[1], e[2] + 0.01 * e[3], e[4]])
    v = Vectors(tokens, vecs)
    questions = tmp_path / "q.txt"
    # apple - apple + king = king: "king" is excluded as an input row, "King" is next;
    # case-insensitively it is the input word KING again, so "queen" is the answer.
    questions.write_text(": royalty\napple apple king queen\nman woman king apple\n")
    r = v.evaluate_analogies(questions, case_insensitive=case_insensitive)
    assert (r.correct, r.evaluated) == expected
    if GENSIM:
        from gensim.models import KeyedVectors

        kv = KeyedVectors(5)
        kv.add_vectors(tokens, vecs.numpy())
        score, sections = kv.evaluate_word_analogies(str(questions), case_insensitive=case_insensitive)
        assert (len(sections[-1]["correct"]), len(sections[-1]["correct"]) + len(sections[-1]["incorrect"])) == expected


def test_evaluation_errors(tmp_path):
    v = Vectors(["a", "b", "c"], torch.eye(3))
    no_section = tmp_path / "q.txt"
    no_section.write_text("a b c d\n")
    with pytest.raises(ValueError, match=r"line 1 comes before any section header"):
        v.evaluate_analogies(no_section)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# comment\nx\ty\t1.0\nnot a pair\n")
    with pytest.raises(ValueError, match=r"pairs\.tsv.*no pair to score"):
        v.evaluate_word_pairs(pairs)
    with pytest.raises(KeyError, match="'zz' is not in these 3 vectors"):
        v.most_similar("zz")
    with pytest.raises(KeyError, match="its lower case 'a' is"):
        v.index("A")
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(2,\)"):
        v.most_similar(torch.ones(2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.floats(-5, 5, allow_nan=False)), min_size=3, max_size=30))
def test_correlations_match_scipy(pairs):
    """Our Pearson/Spearman (no scipy at run time) against scipy, ties included."""
    stats = pytest.importorskip("scipy.stats")

    x = np.array([float(a) for a, _ in pairs])
    y = np.array([b for _, b in pairs])
    np.testing.assert_array_equal(_rankdata(x), stats.rankdata(x))
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        assert math.isnan(_pearson(x, y))
        return
    assert _pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    assert _pearson(_rankdata(x), _rankdata(y)) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)


@requires_data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_on_gpu_matches_cpu():
    v = embtab.vectors.load(data("euclidean_vectors.bin"))
    g = v.to("cuda")
    assert g.vectors.is_cuda and g.tokens is v.tokens
    for tok in ("the", "of", v.tokens[-1]):
        got, expected = g.most_similar(tok, k=8), v.most_similar(tok, k=8)
        assert [t for t, _ in got] == [t for t, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
    a, b = g.evaluate_analogies(data("questions-words.txt")), v.evaluate_analogies(data("questions-words.txt"))
    assert a.section_counts == b.section_counts and a.evaluated > 0
    for pairs in ("wordsim353.tsv", "simlex999.txt"):
        assert g.evaluate_word_pairs(data(pairs)).spearman == pytest.approx(
            v.evaluate_word_pairs(data(pairs)).spearman, abs=1e-5)


def test_correlation_of_tiny_and_huge_deviations_matches_scipy():
    """Found by the property test above: squares of 1e-170 underflow to 0."""
    stats = pytest.importorskip("scipy.stats")
    x = np.array([0.0, 0.0, 1.0])
    for y in (np.array([0.0, 1.360645644701287e-170, 0.0]), np.array([0.0, 3e170, -1e170])):
        assert _pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)


# ---------------------------------------------------------------------- issue #10.9: gensim's names
@requires_gensim
@pytest.mark.parametrize("name", IDS)
def test_most_similar_positive_negative_topn_match_gensim(name):
    v, kv = both(name)
    t = v.tokens
    queries = [
        {"positive": [t[1], t[7]], "negative": [t[3]]},  # the analogy form
        {"positive": t[4]},  # a single token, not in a list
        {"negative": [t[2], t[9]]},  # only negative
        {"positive": [(t[1], 2.0), t[5]], "negative": [(t[6], -0.5)]},  # weighted pairs
        {"positive": [t[3], v.vectors[11].numpy() * 3]},  # a token and a raw (not normalised) vector
        {"positive": [t[8], t[8]], "negative": [t[8]]},  # repeats
    ]
    for q in queries:
        for topn, restrict in ((10, None), (3, 150), (1, None)):
            expected = kv.most_similar(**q, topn=topn, restrict_vocab=restrict)
            got = v.most_similar(**q, topn=topn, restrict_vocab=restrict)
            assert [w for w, _ in got] == [w for w, _ in expected], q
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-6)
    assert v.most_similar(positive=[t[1]], topn=0) == kv.most_similar(positive=[t[1]], topn=0) == []


@requires_gensim
@pytest.mark.parametrize("name", IDS)
def test_similarity_index_to_key_and_key_to_index_match_gensim(name):
    v, kv = both(name)
    assert v.index_to_key == kv.index_to_key
    assert dict(v.key_to_index) == kv.key_to_index
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, len(v), size=(50, 2)).tolist():
        x, y = v.tokens[a], v.tokens[b]
        assert v.similarity(x, y) == pytest.approx(float(kv.similarity(x, y)), abs=1e-6)
    with pytest.raises(TypeError):
        v.key_to_index["new"] = 1  # read-only: the index stays consistent with the tokens


def test_the_older_names_still_work():
    v = Vectors(["a", "b", "c", "d"], torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.1]]))
    expected = v.most_similar(positive="a", topn=2)
    assert [w for w, _ in expected] == ["b", "c"]
    assert v.most_similar("a", k=2) == v.most_similar("a", 2) == v.most_similar(token_or_vector="a", k=2) == expected
    assert v.most_similar(torch.tensor([1.0, 0.0]), k=1) == v.most_similar([1.0, 0.0], topn=1) == [("a", 1.0)]
    assert len(v.most_similar("a")) == 3  # default 10, capped by the rows
    with pytest.raises(TypeError, match="topn= or k="):
        v.most_similar("a", topn=1, k=2)
    with pytest.raises(ValueError, match="nothing to compare with"):
        v.most_similar()
    with pytest.raises(KeyError, match="'zz' is not in these 4 vectors"):
        v.most_similar(positive=["a"], negative=["zz"])
