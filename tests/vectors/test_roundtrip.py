"""Property tests: writer -> loader round trips, the fast text path against the reference
parser, and the cache format (memory-mapped, atomic, with the source's hash)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import embtab
import embtab.vectors._binary as _binary
import embtab.vectors._text as _text
from embtab.vectors import Vectors, VectorsFormatError
from embtab.vectors._text import BadLine, parse_line_reference

pytestmark = pytest.mark.filterwarnings("ignore:string or file could not be read to its end:DeprecationWarning")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

_NO_NEWLINES = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
# Any token a text file can hold: inner whitespace included (the last dim fields are the
# vector), unless the token then ends in a number (a row with a value too many).
text_tokens = st.text(_NO_NEWLINES, min_size=1, max_size=8).filter(
    lambda t: t == t.strip() and not (len(p := t.encode("utf-8").split()) > 1 and _text.is_decimal(p[-1])))
# Without a header the width is inferred from the lines: a one-line GloVe file whose token
# has a space is ambiguous, so GloVe tokens here have no ASCII whitespace.
glove_tokens = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=" \t\n\r\x0b\x0c"),
                       min_size=1, max_size=8).filter(lambda t: t == t.strip())
binary_tokens = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=" "), min_size=1,
                        max_size=8).filter(lambda t: not t.startswith("\n"))
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
f64 = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def vector_sets(draw, tokens=text_tokens, values=f32, dtype=torch.float32):
    toks = draw(st.lists(tokens, min_size=1, max_size=12, unique=True))
    dim = draw(st.integers(1, 6))
    vals = draw(st.lists(values, min_size=len(toks) * dim, max_size=len(toks) * dim))
    return Vectors(toks, torch.tensor(vals, dtype=dtype).reshape(len(toks), dim))


def _set_block(size: int) -> None:
    _text.BLOCK_SIZE = size
    _binary.BLOCK_SIZE = size


@pytest.fixture(autouse=True)
def _restore_block_size():
    saved = _text.BLOCK_SIZE, _binary.BLOCK_SIZE
    yield
    _text.BLOCK_SIZE, _binary.BLOCK_SIZE = saved


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from(["glove", "word2vec", "fasttext"]), gz=st.booleans(),
       block=st.sampled_from([7, 64, 4 << 20]))
def test_text_export_load_round_trip(tmp_path, data, fmt, gz, block):
    v = data.draw(vector_sets(tokens=glove_tokens if fmt == "glove" else text_tokens))
    path = tmp_path / f"v.{'vec' if fmt == 'fasttext' else 'txt'}{'.gz' if gz else ''}"
    v.export(path, format=fmt)
    _set_block(block)
    w = embtab.vectors.load(path)
    assert w.format == fmt
    assert w.tokens == v.tokens
    assert torch.equal(w.vectors, v.vectors)


@SETTINGS
@given(v=vector_sets(tokens=binary_tokens), gz=st.booleans(), block=st.sampled_from([1, 5, 64, 4 << 20]),
       data=st.data())
def test_binary_export_load_round_trip(tmp_path, v, gz, block, data):
    path = tmp_path / f"v.bin{'.gz' if gz else ''}"
    v.export(path, format="word2vec_binary")
    _set_block(block)
    limit = data.draw(st.none() | st.integers(0, len(v)))
    w = embtab.vectors.load(path, format="word2vec_binary", limit=limit)
    assert w.tokens == v.tokens[:limit]
    assert torch.equal(w.vectors, v.vectors[:limit])


@SETTINGS
@given(v=vector_sets(values=f64, dtype=torch.float64))
def test_float64_text_round_trip(tmp_path, v):
    path = tmp_path / "v.txt"
    v.export(path, format="word2vec")
    w = embtab.vectors.load(path, dtype=torch.float64)
    assert torch.equal(w.vectors, v.vectors)


# ---------------------------------------------------------------------- fast path vs reference
@st.composite
def messy_lines(draw, dim):
    """Good rows in many spellings, tokens with spaces, and bad rows."""
    kind = draw(st.sampled_from(["good", "good", "good", "spaced", "tabs", "wide", "narrow", "word", "nan", "blank"]))
    tok = draw(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=5))
    vals = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=dim, max_size=dim))
    nums = [repr(x) if draw(st.booleans()) else f"{x:.6g}" for x in vals]
    if kind == "good":
        return f"{tok} {' '.join(nums)}" + draw(st.sampled_from(["", " ", "\r"]))
    if kind == "spaced":
        return f"{tok} {tok} {' '.join(nums)}"
    if kind == "tabs":
        return f"{tok}\t{'  '.join(nums)}"
    if kind == "wide":
        return f"{tok} {' '.join(nums)} 1.0 2.0"  # dim + 2 numbers: a bad row, not the token "tok n1 n2"
    if kind == "narrow":
        return f"{tok} {' '.join(nums[:-1])}"
    if kind == "word":
        return f"{tok} {' '.join(nums[:-1] + ['abc'])}"
    if kind == "nan":
        return f"{tok} {' '.join(nums[:-1] + ['nan'])}"
    return draw(st.sampled_from(["", "   ", "\r"]))


@settings(max_examples=50, deadline=None)
@given(data=st.data(), dim=st.integers(1, 4), block=st.sampled_from([16, 100, 4 << 20]), threads=st.sampled_from([1, 2]))
def test_fast_path_equals_reference_parser(tmp_path_factory, data, dim, block, threads):
    lines = data.draw(st.lists(messy_lines(dim), min_size=1, max_size=40))
    data_lines = [ln for ln in lines if ln.strip()]
    assume(data_lines)
    path = tmp_path_factory.mktemp("messy") / "v.txt"
    path.write_bytes(f"{len(data_lines)} {dim}\n{chr(10).join(lines)}\n".encode("utf-8"))
    # The oracle: each non-blank line through the reference parser, bad ones dropped,
    # then duplicates dropped keeping the first.
    tokens, rows, bad = [], [], 0
    for ln in data_lines:
        try:
            tok, vals = parse_line_reference(ln.encode("utf-8"), dim)
        except BadLine:
            bad += 1
            continue
        tokens.append(tok.decode("utf-8"))
        rows.append(vals)
    first = {}
    for i, t in enumerate(tokens):
        first.setdefault(t, i)
    keep = sorted(first.values())
    _set_block(block)
    if not tokens:  # every row bad: an error, never 0 vectors in silence
        with pytest.raises(VectorsFormatError, match=rf"none of its {bad} data rows? could be read"):
            embtab.vectors.load(path, format="word2vec", on_bad_line="skip", num_threads=threads)
        return
    with pytest.warns() if len(keep) < len(tokens) else _no_warning():
        # The format is given: a header followed by only malformed rows can look like GloVe.
        v = embtab.vectors.load(path, format="word2vec", on_bad_line="skip", num_threads=threads)
    assert v.skipped == bad
    assert v.tokens == [tokens[i] for i in keep]
    expected = np.asarray([rows[i] for i in keep], dtype=np.float64).reshape(len(keep), dim).astype(np.float32)
    np.testing.assert_array_equal(v.vectors.numpy(), expected)


class _no_warning:
    def __enter__(self):
        import warnings

        self._c = warnings.catch_warnings()
        self._c.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        return self._c.__exit__(*exc)


# ---------------------------------------------------------------------- cache
cache_tokens = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(["\udc80", "\udcff"]),
                       max_size=6)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
@pytest.mark.filterwarnings("ignore:.*loaded 0 vectors")
def test_cache_round_trip(tmp_path, data, dtype):
    toks = data.draw(st.lists(cache_tokens, max_size=10, unique=True))
    dim = data.draw(st.integers(1, 5))
    vals = torch.randn(len(toks), dim).to(dtype)
    v = Vectors(toks, vals)
    path = tmp_path / "v.safetensors"
    v.save(path)
    w = embtab.vectors.load(path, dtype=dtype)
    assert w.format == "cache" and w.tokens == toks
    assert w.vectors.dtype == dtype and torch.equal(w.vectors, vals)
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]  # no temp file left


def test_cache_is_memory_mapped_copy_on_write_and_safetensors_compatible(tmp_path):
    from safetensors import safe_open

    v = Vectors(["a", "b", "ç"], torch.arange(6, dtype=torch.float32).reshape(3, 2))
    path = tmp_path / "v.safetensors"
    v.save(path)
    before = path.read_bytes()
    w = embtab.vectors.load(path)
    if sys.platform.startswith("linux"):
        with open("/proc/self/maps") as maps:
            assert str(path) in maps.read()  # the matrix is a mapping of the file, not a copy
    w.vectors[0, 0] = 42.0  # writable, private: the file does not change
    assert path.read_bytes() == before
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("vectors"), v.vectors)
        meta = f.metadata()
    assert meta["format"] == "embtab.vectors" and meta["format_version"] == "1"
    assert embtab.vectors.load(path, limit=2).tokens == ["a", "b"]
    assert embtab.vectors.load(path, dtype=torch.float64).vectors.dtype == torch.float64


def test_cache_records_the_source_hash_and_options(write, tmp_path):
    src = write("g.txt", "a 1 2\nb 3 4\nc 5 6\n")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    v = embtab.vectors.load(src)
    assert v.source_sha256 == sha
    assert embtab.vectors.load(src, limit=1).source_sha256 == sha  # hashed later: the load stopped early
    v.save(tmp_path / "c.safetensors")
    c = embtab.vectors.load(tmp_path / "c.safetensors")
    assert c.source_sha256 == sha
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert (meta["source"], meta["source_format"], meta["source_sha256"]) == ("g.txt", "glove", sha)
    assert json.loads(meta["load_options"])["dtype"] == "float32"


def test_load_with_cache_argument_reuses_and_refreshes(write, tmp_path):
    src = write("g.txt", "a 1 2\nb 3 4\n")
    cache = tmp_path / "g.safetensors"
    first = embtab.vectors.load(src, cache=cache)
    assert first.format == "glove" and cache.exists()
    again = embtab.vectors.load(src, cache=cache)
    assert again.format == "cache" and again.tokens == ["a", "b"] and torch.equal(again.vectors, first.vectors)
    other = embtab.vectors.load(src, cache=cache, dtype=torch.float64)  # other options: parse again
    assert other.format == "glove" and other.vectors.dtype == torch.float64
    src.write_text("a 1 2\nz 9 9\n")  # the source changed: its hash differs
    fresh = embtab.vectors.load(src, cache=cache, dtype=torch.float64)
    assert fresh.format == "glove" and fresh.tokens == ["a", "z"]
    assert embtab.vectors.load(src, cache=cache, dtype=torch.float64).format == "cache"
    cache.write_bytes(b"garbage")  # not a cache (any more): never replaced
    with pytest.raises(ValueError, match=r"cache= '.*g\.safetensors' exists and it is not a safetensors file "
                                         r"\(it starts with b'garbage'\); refusing to replace it"):
        embtab.vectors.load(src, cache=cache)
    assert cache.read_bytes() == b"garbage"


def test_cache_rejects_corrupt_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    v = Vectors(["a", "b"], torch.ones(2, 3))
    good = tmp_path / "good.safetensors"
    v.save(good)
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-3])
    with pytest.raises(ValueError, match=r"cut\.safetensors.*has \d+ bytes but its header describes \d+.*truncated"):
        embtab.vectors.load(cut)
    foreign = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(ValueError, match=r"not an embtab vectors cache.*\['weight'\].*Vectors.save"):
        embtab.vectors.load(foreign)
    (n,) = struct.unpack("<Q", data[:8])
    assert data[8 : 8 + n].count(b'"format_version":"1"') == 1
    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(data.replace(b'"format_version":"1"', b'"format_version":"7"'))
    with pytest.raises(ValueError, match="format_version 7.*upgrade embtab"):
        embtab.vectors.load(newer)
    with pytest.raises(ValueError, match="not a safetensors file"):
        embtab.vectors.load(_write(tmp_path / "txt.st", b"a 1 2\n" * 10), format="cache")


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_failed_export_leaves_the_old_file(tmp_path):
    path = tmp_path / "v.txt"
    Vectors(["a"], torch.ones(1, 2)).export(path, format="glove")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"cannot write token 'b c' \(row 1\) to a word2vec binary file"):
        Vectors(["a", "b c"], torch.ones(2, 2)).export(path, format="word2vec_binary")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["v.txt"]


# ---------------------------------------------------------------------- issue #10.4: never replace a non-cache
@pytest.mark.parametrize("victim", ["notes", "source", "other_vectors", "other_safetensors", "directory"])
def test_cache_argument_never_replaces_a_file_that_is_not_an_embtab_cache(write, tmp_path, victim):
    from safetensors.torch import save_file

    src = write("v.txt", "a 1 2\nb 3 4\n")
    if victim == "notes":
        target = write("notes.txt", "my notes, not to be lost\n")
        why = r"it is not a safetensors file \(it starts with b'my notes"
    elif victim == "source":
        target = src
        why = None
    elif victim == "other_vectors":
        target = write("glove.vec", "2 2\nx 1 1\ny 2 2\n")
        why = r"it is not a safetensors file"
    elif victim == "other_safetensors":
        target = tmp_path / "model.safetensors"
        save_file({"weight": torch.zeros(2, 2)}, str(target))
        why = r"it is a safetensors file with tensors \['weight'\], not an embtab vectors cache"
    else:
        target = tmp_path / "folder"
        target.mkdir()
        why = "it is a directory"
    before = None if target.is_dir() else target.read_bytes()
    if why is None:
        match = r"cache='.*v\.txt' is the vectors file itself; refusing to replace it"
    else:
        match = rf"cache= '.*{target.name}' exists and {why}.*refusing to replace it with a vectors cache"
    with pytest.raises(ValueError, match=match):
        embtab.vectors.load(src, cache=target)
    if before is not None:
        assert target.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # Vectors.save refuses the same files.
    if victim != "source":
        with pytest.raises(ValueError, match=r"Vectors\.save: the file '.*' exists and .*refusing to replace it"):
            embtab.vectors.load(src).save(target)
        if before is not None:
            assert target.read_bytes() == before


def test_a_cache_of_other_vectors_is_replaced_with_a_warning_and_an_empty_file_silently(write, tmp_path):
    cache = tmp_path / "c.safetensors"
    embtab.vectors.load(write("first.txt", "a 1 2\n"), cache=cache)
    with pytest.warns(UserWarning, match=r"replacing the vectors cache '.*c\.safetensors', made from 'first\.txt', "
                                         r"with one made from 'second\.txt'"):
        v = embtab.vectors.load(write("second.txt", "b 3 4\n"), cache=cache)
    assert v.tokens == ["b"] and embtab.vectors.load(cache).tokens == ["b"]
    empty = tmp_path / "e.safetensors"
    empty.touch()
    assert embtab.vectors.load(write("third.txt", "c 5 6\n"), cache=empty).tokens == ["c"]
    assert embtab.vectors.load(empty).tokens == ["c"]


def test_export_refuses_the_file_the_vectors_came_from(write):
    src = write("v.txt", "a 1 2\nb 3 4\n")
    before = src.read_bytes()
    v = embtab.vectors.load(src)
    with pytest.raises(ValueError, match=r"Vectors\.export: '.*v\.txt' is the file these vectors were loaded from"):
        v.export(src, format="word2vec")
    assert src.read_bytes() == before


@SETTINGS
@given(data=st.data(), dim=st.integers(1, 4), block=st.sampled_from([16, 4 << 20]))
def test_spaced_tokens_load_and_rows_with_extra_values_are_refused(tmp_path_factory, data, dim, block):
    """Both sides of the rule: a token's words may be anything but its last one a decimal
    number; a row whose field before its last dim values is a number has too many."""
    word = st.text(st.sampled_from("abcxyz.-@'é\u00a0"), min_size=1, max_size=4).filter(lambda w: w.strip() == w)
    number = st.sampled_from(["0", "2", "-1.5", "3e2", ".5"])
    token = st.tuples(st.lists(word | number, max_size=2), word).map(lambda t: " ".join([*t[0], t[1]]))
    tokens = data.draw(st.lists(token, min_size=1, max_size=8, unique=True))
    values = [[round(i + j / 8, 3) for j in range(dim)] for i in range(len(tokens))]
    lines = [f"{t} {' '.join(map(repr, row))}" for t, row in zip(tokens, values)]
    folder = tmp_path_factory.mktemp("spaced")
    good = folder / "good.vec"
    good.write_text(f"{len(lines)} {dim}\n" + "\n".join(lines) + "\n", encoding="utf-8")
    _set_block(block)
    v = embtab.vectors.load(good)
    assert v.tokens == tokens
    assert v.vectors.tolist() == torch.tensor(values, dtype=torch.float32).tolist()
    # One row gets `extra` values too many: refused, naming its line, token and counts.
    k = data.draw(st.integers(0, len(lines) - 1))
    extra = data.draw(st.integers(1, 2))
    long_lines = list(lines)
    long_lines[k] += " 7.5" * extra
    bad = folder / "bad.vec"
    bad.write_text(f"{len(lines)} {dim}\n" + "\n".join(long_lines) + "\n", encoding="utf-8")
    with pytest.raises(VectorsFormatError) as e:
        embtab.vectors.load(bad)
    assert e.value.line == k + 2
    expected = f"expected a token and {dim} value{'s' if dim > 1 else ''}, found a token and {dim + extra} values"
    assert expected in str(e.value)
    assert f"(token {tokens[k]!r})" in str(e.value)
