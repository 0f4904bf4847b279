"""embtab.vectors.load against gensim on gensim's own real files: same tokens, same values, exactly."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import embtab
from embtab.vectors import VectorsFormatError

from .conftest import data, gzip_copy, requires_gensim

pytestmark = requires_gensim

# (file, format auto-detection must find, gensim's load_word2vec_format arguments)
REAL_FILES = [
    ("test_glove.txt", "glove", {"no_header": True}),
    ("EN.1-10.cbow1_wind5_hs0_neg10_size300_smpl1e-05.txt", "word2vec", {}),
    ("euclidean_vectors.bin", "word2vec_binary", {"binary": True}),
    ("lee_fasttext.vec", "fasttext", {}),
    # A token of this file is the lone byte 0x97: not UTF-8, gensim needs "replace" too.
    ("pang_lee_polarity_fasttext.vec", "fasttext", {"unicode_errors": "replace"}),
    ("crime-and-punishment.vec", "fasttext", {}),  # Cyrillic tokens
]
IDS = [f for f, _, _ in REAL_FILES]


@functools.lru_cache(maxsize=None)
def gensim_load(name: str, datatype: str = "float32", limit: int | None = None, **kwargs):
    from gensim.models import KeyedVectors

    return KeyedVectors.load_word2vec_format(str(data(name)), datatype=np.dtype(datatype).type, limit=limit, **kwargs)


def ours(name: str, kwargs: dict, **more) -> embtab.vectors.Vectors:
    return embtab.vectors.load(data(name), unicode_errors=kwargs.get("unicode_errors", "strict"), **more)


def assert_same(v: embtab.vectors.Vectors, kv) -> None:
    assert v.tokens == kv.index_to_key
    got = v.vectors.numpy()
    assert got.dtype == kv.vectors.dtype
    np.testing.assert_array_equal(got, kv.vectors)


@pytest.mark.parametrize("name,fmt,kwargs", REAL_FILES, ids=IDS)
def test_loads_exactly_what_gensim_loads(name, fmt, kwargs):
    v = ours(name, kwargs)
    assert_same(v, gensim_load(name, **_items(kwargs)))
    assert v.format == fmt  # what format="auto" detected
    assert len(v) == len(v.tokens) and v.dim == v.vectors.shape[1]
    tok = v.tokens[len(v) // 2]
    assert tok in v and v.index(tok) == len(v) // 2
    torch.testing.assert_close(v[tok], torch.tensor(gensim_load(name, **_items(kwargs))[tok]))


@pytest.mark.parametrize("name,fmt,kwargs", REAL_FILES, ids=IDS)
def test_explicit_format_and_gzip_copy(name, fmt, kwargs, tmp_path):
    plain = ours(name, kwargs)
    assert ours(name, kwargs, format=fmt).tokens == plain.tokens
    gz = gzip_copy(data(name), tmp_path / (name + ".gz"))
    v = embtab.vectors.load(gz, unicode_errors=kwargs.get("unicode_errors", "strict"))
    assert v.format == fmt
    assert v.tokens == plain.tokens and torch.equal(v.vectors, plain.vectors)
    assert v.source_sha256 == embtab.vectors.file_sha256(gz)  # the hash of the file as stored


@pytest.mark.parametrize("limit", [1, 7, 20])
@pytest.mark.parametrize("name,fmt,kwargs", REAL_FILES, ids=IDS)
def test_limit_matches_gensim(name, fmt, kwargs, limit):
    v = ours(name, kwargs, limit=limit)
    assert_same(v, gensim_load(name, limit=limit, **_items(kwargs)))


@pytest.mark.parametrize("dtype,np_dtype", [(torch.float64, "float64"), (torch.float16, "float16")])
@pytest.mark.parametrize("name,fmt,kwargs", REAL_FILES, ids=IDS)
def test_other_dtypes_match_gensim(name, fmt, kwargs, dtype, np_dtype):
    v = ours(name, kwargs, dtype=dtype)
    assert_same(v, gensim_load(name, datatype=np_dtype, **_items(kwargs)))


@pytest.mark.parametrize("name,fmt,kwargs", REAL_FILES[:4], ids=IDS[:4])
def test_bfloat16_is_the_float64_values_rounded(name, fmt, kwargs):
    v = ours(name, kwargs, dtype=torch.bfloat16)
    assert v.vectors.dtype == torch.bfloat16
    g = torch.from_numpy(gensim_load(name, datatype="float64", **_items(kwargs)).vectors)
    torch.testing.assert_close(v.vectors, g.to(torch.bfloat16), atol=0, rtol=0)


@pytest.mark.parametrize("size", [1, 13, 100, 4096])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "name,kwargs",
    [("euclidean_vectors.bin", {"binary": True}), ("lee_fasttext.vec", {}),
     ("test_glove.txt", {"no_header": True})],
    ids=["binary", "fasttext", "glove"],
)
def test_chunk_size_sweep(name, kwargs, size, threads, block_size):
    """Like gensim's binary_chunk_size tests: records and lines cut at every kind of boundary."""
    block_size(size)
    v = ours(name, kwargs, num_threads=threads)
    assert_same(v, gensim_load(name, **_items(kwargs)))


def test_strict_unicode_fails_like_gensim_but_names_the_line():
    from gensim.models import KeyedVectors

    name = "pang_lee_polarity_fasttext.vec"
    with pytest.raises(UnicodeDecodeError):
        KeyedVectors.load_word2vec_format(str(data(name)))
    with pytest.raises(VectorsFormatError, match=r"line 150: the token b'\\x97' is not valid utf-8") as e:
        embtab.vectors.load(data(name))
    assert e.value.line == 150 and e.value.path == str(data(name))
    ignored = embtab.vectors.load(data(name), unicode_errors="ignore")
    assert ignored.tokens[148] == ""  # the token was only the bad byte


def test_gensim_reads_what_we_export(tmp_path):
    """The writer's output is what gensim reads, for each format it supports."""
    from gensim.models import KeyedVectors

    v = embtab.vectors.load(data("lee_fasttext.vec"))
    for fmt, kwargs in [("word2vec", {}), ("glove", {"no_header": True}), ("word2vec_binary", {"binary": True})]:
        path = tmp_path / f"out.{fmt}"
        v.export(path, format=fmt)
        kv = KeyedVectors.load_word2vec_format(str(path), **kwargs)
        assert kv.index_to_key == v.tokens
        np.testing.assert_array_equal(kv.vectors, v.vectors.numpy())


def _items(kwargs: dict) -> dict:
    return dict(sorted(kwargs.items()))
