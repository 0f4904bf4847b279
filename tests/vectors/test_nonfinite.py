"""Non-finite values (NaN, inf) in vector files and caches: a bad row by default, naming it,
kept with ``nonfinite="keep"`` (issue #10.3; for ``from_vectors`` see test_align.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import embtab
from embtab.vectors import Vectors, VectorsFormatError

from .conftest import requires_gensim

TEXT = "3 3\nthe 1 2 3\ncat 4 nan 6\ndog -inf 8 9\n"


def test_load_refuses_nan_and_inf_rows_by_default_and_keeps_them_when_asked(write, tmp_path):
    path = write("v.vec", TEXT)
    with pytest.raises(VectorsFormatError, match=r"line 3: value 2 of 3 is nan \(not finite\); pass "
                                                 r"nonfinite='keep' to keep such rows, or on_bad_line='warn'"):
        embtab.vectors.load(path)
    assert embtab.vectors.load(path, on_bad_line="skip").tokens == ["the"]
    kept = embtab.vectors.load(path, nonfinite="keep")
    assert kept.tokens == ["the", "cat", "dog"]
    assert torch.isnan(kept["cat"][1]) and kept["dog"][0].item() == -np.inf
    # The same through the binary reader.
    kept.export(tmp_path / "v.bin", format="word2vec_binary")
    with pytest.raises(VectorsFormatError, match=r"byte offset \d+: value 2 of 3 for token 'cat' is nan"):
        embtab.vectors.load(tmp_path / "v.bin")
    b = embtab.vectors.load(tmp_path / "v.bin", nonfinite="keep")
    assert b.tokens == kept.tokens and torch.equal(b.vectors.isnan(), kept.vectors.isnan())
    with pytest.raises(ValueError, match=r"nonfinite must be one of \('error', 'keep'\), got nonfinite='drop'"):
        embtab.vectors.load(path, nonfinite="drop")


@requires_gensim
def test_kept_rows_are_what_gensim_reads(write):
    from gensim.models import KeyedVectors

    path = write("v.vec", "4 3\nthe 1 2 3\ncat 4 nan 6\ndog -inf 8 9\ncow 1e-3 Infinity -0.5\n")
    kv = KeyedVectors.load_word2vec_format(str(path))
    v = embtab.vectors.load(path, nonfinite="keep")
    assert v.tokens == kv.index_to_key
    np.testing.assert_array_equal(v.vectors.numpy(), kv.vectors)  # NaN == NaN here


def test_a_cache_of_non_finite_vectors_is_checked_on_load(write, tmp_path):
    src = write("v.vec", TEXT)
    cache = tmp_path / "v.safetensors"
    kept = embtab.vectors.load(src, nonfinite="keep", cache=cache)
    with pytest.raises(VectorsFormatError, match=r"v\.safetensors, row 1: the vector of token 'cat' holds nan "
                                                 r"\(not finite\) \(2 of 3 rows are bad\); pass nonfinite='keep'") as e:
        embtab.vectors.load(cache)
    assert e.value.row == 1
    again = embtab.vectors.load(cache, nonfinite="keep")
    assert again.tokens == kept.tokens and torch.equal(again.vectors.isnan(), kept.vectors.isnan())
    with pytest.warns(UserWarning, match="skipped 2 bad rows"):
        assert embtab.vectors.load(cache, on_bad_line="warn").tokens == ["the"]
    assert embtab.vectors.load(cache, on_bad_line="skip", limit=1).tokens == ["the"]
    # The cache= path too: a fresh cache made with nonfinite="keep" does not serve a strict load.
    with pytest.raises(VectorsFormatError, match=r"line 3: value 2 of 3 is nan"):
        embtab.vectors.load(src, cache=cache)
    assert embtab.vectors.load(src, cache=cache, nonfinite="keep").format == "cache"


def test_a_cache_records_its_non_finite_rows_so_a_clean_one_is_not_scanned(tmp_path, monkeypatch):
    from safetensors import safe_open

    import embtab.vectors._load as _load

    Vectors(["a", "b"], torch.tensor([[1.0, float("nan")], [2.0, 3.0]])).save(tmp_path / "bad.safetensors")
    Vectors(["a", "b"], torch.ones(2, 2)).save(tmp_path / "good.safetensors")
    for name, n in (("bad", "1"), ("good", "0")):
        with safe_open(str(tmp_path / f"{name}.safetensors"), framework="pt") as f:
            assert f.metadata()["nonfinite_rows"] == n
    monkeypatch.setattr(_load, "_finite_rows", lambda m: pytest.fail("a clean cache was scanned"))
    assert embtab.vectors.load(tmp_path / "good.safetensors").tokens == ["a", "b"]


def test_a_cache_converted_to_a_narrower_dtype_refuses_overflow(tmp_path):
    Vectors(["a", "b"], torch.tensor([[1.0, 2.0], [3.0, 7e4]])).save(tmp_path / "v.safetensors")
    with pytest.raises(VectorsFormatError, match=r"row 1: value 2 of 2 for token 'b', 70000\.0, overflows float16"):
        embtab.vectors.load(tmp_path / "v.safetensors", dtype=torch.float16)
    assert embtab.vectors.load(tmp_path / "v.safetensors", dtype=torch.float16, on_bad_line="skip").tokens == ["a"]


@pytest.mark.parametrize("source, target, big", [
    (torch.float32, torch.float16, 7e4),
    (torch.float32, torch.bfloat16, 3.4028234e38),  # float32's largest: rounds up past bfloat16's
    (torch.float64, torch.float32, 1e39),
])
def test_casting_vectors_to_a_narrower_dtype_refuses_overflow(source, target, big):
    """``Vectors.to(dtype)`` names the token and value that would become inf, as loading does;
    values that fit (and inf or NaN already there) pass as torch casts them."""
    v = Vectors(["a", "b", "c"], torch.tensor([[1.0, 2.0], [3.0, big], [-big, 1.0]], dtype=source))
    name = str(target).replace("torch.", "")
    with pytest.raises(ValueError, match=rf"Vectors.to\({name}\): value 2 of 2 for token 'b', .* overflows {name}.*"
                                         rf"; 2 row\(s\) overflow"):
        v.to(dtype=target)
    assert torch.isinf(v.vectors.to(target)).sum() == 2  # what a plain cast would have given
    fits = Vectors(["a", "b"], torch.tensor([[1.0, float("inf")], [float("nan"), 2.0]], dtype=source))
    assert torch.equal(fits.to(dtype=target).vectors.isnan(), fits.vectors.to(target).isnan())
    assert fits.to(dtype=target).vectors[0, 1] == float("inf")
