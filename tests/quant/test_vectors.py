"""Vectors.quantize: the search and the evaluations on quantized rows equal those on the rows read back."""

from __future__ import annotations

import pytest
import torch

from embtab.vectors import Vectors
from embtab.vectors.quantized import QuantizedVectors


@pytest.fixture
def vectors() -> Vectors:
    g = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(300)] + ["king", "queen", "man", "woman"]
    return Vectors(words, torch.randn(len(words), 24, generator=g))


@pytest.mark.parametrize("dtype", ["int8", "int4", "float16"])
def test_search_on_quantized_rows_is_the_search_on_the_rows_read_back(vectors, dtype, tmp_path):
    q = vectors.quantize(dtype)
    assert isinstance(q, QuantizedVectors) and q.tokens == vectors.tokens and q.dim == 24
    assert q.nbytes < vectors.vectors.numel() * 4 / (1.9 if dtype != "int4" else 5)
    back = q.dequantize()
    assert back.vectors.dtype == torch.float32
    for query in ("w3", "king"):
        assert q.most_similar(query, topn=5) == back.most_similar(query, topn=5)
    assert (q.most_similar(positive=["king", "woman"], negative=["man"], topn=3)
            == back.most_similar(positive=["king", "woman"], negative=["man"], topn=3))
    assert q.similarity("w1", "w2") == back.similarity("w1", "w2")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"w{i}\tw{i + 1}\t{(i * 7) % 10}\n" for i in range(40)))
    assert q.evaluate_word_pairs(pairs).spearman == back.evaluate_word_pairs(pairs).spearman
    analogies = tmp_path / "questions.txt"
    analogies.write_text(": test\n" + "".join(f"w{i} w{i + 1} w{i + 2} w{i + 3}\n" for i in range(0, 60, 4)))
    assert q.evaluate_analogies(analogies).accuracy == back.evaluate_analogies(analogies).accuracy


def test_int8_search_is_close_to_float(vectors):
    q = vectors.quantize("int8")
    ours = q.most_similar("w10", topn=10)
    theirs = vectors.most_similar("w10", topn=10)
    assert [t for t, _ in ours[:3]] == [t for t, _ in theirs[:3]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(ours, theirs)) < 0.01


def test_quantized_vectors_errors(vectors):
    q = vectors.quantize("int8")
    with pytest.raises(AttributeError, match=r"use v.dequantize\(\).vectors"):
        q.vectors.std()
    with pytest.raises(ValueError, match="quantized already"):
        q.quantize("int4")
    with pytest.raises(ValueError, match="unknown quantized dtype"):
        vectors.quantize("int3")
    assert "QuantizedVectors(304 x 24, int8" in repr(q)
