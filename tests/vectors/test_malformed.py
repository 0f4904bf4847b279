"""Malformed vector files: each error names the file, the line or byte offset, and what was wrong."""

from __future__ import annotations

import gzip
import logging
import struct
import warnings

import numpy as np
import pytest
import torch

import embtab
from embtab.vectors import Vectors, VectorsFormatError

load = embtab.vectors.load

# numpy 2.x's fromstring warns (DeprecationWarning) when it stops at a bad value; the
# loader then re-reads the batch line by line, which is what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore:string or file could not be read to its end:DeprecationWarning")

GOOD = "a 1 2 3\nb 4 5 6\nc 7 8 9\n"


def rows(v: Vectors) -> dict[str, list[float]]:
    return {t: v[t].tolist() for t in v.tokens}


def test_wrong_width_names_the_line(write):
    path = write("g.txt", "a 1 2 3\nb 4 5 6\nc 7 8\nd 1 1 1\n")
    with pytest.raises(VectorsFormatError) as e:
        load(path)
    err = e.value
    assert isinstance(err, ValueError) and (err.path, err.line) == (str(path), 3)
    assert str(err).startswith(f"{path}, line 3: expected a token and 3 values, found a token and 2 values")
    assert "on_bad_line='warn' or 'skip'" in str(err)


@pytest.mark.parametrize("bad,reason", [
    ("x", r"value 2 of 3, 'x', is not a number"),
    ("1,5", r"value 2 of 3, '1,5', is not a number"),
    ("0x1p3", r"value 2 of 3, '0x1p3', is not a number"),
    ("1_000", r"value 2 of 3, '1_000', is not a number"),
    ("nan", r"value 2 of 3 is nan \(not finite\)"),
    ("-inf", r"value 2 of 3 is -inf \(not finite\)"),
    ("1e999", r"value 2 of 3 is inf \(not finite\)"),
])
def test_bad_values_name_line_and_value(write, bad, reason):
    path = write("w2v.txt", f"3 3\na 1 2 3\nb 4 {bad} 6\nc 7 8 9\n")
    with pytest.raises(VectorsFormatError, match=rf"w2v\.txt, line 3: {reason}"):
        load(path)


def test_on_bad_line_warn_and_skip_drop_rows_and_count_them(write):
    text = "a 1 2 3\nb 4 x 6\nc 7 8 9\nd 1 2\ne 5 5 5\n"
    path = write("g.txt", text)
    with pytest.warns(UserWarning, match=r"skipped 2 bad rows; the first: .*line 2: value 2 of 3, 'x'"):
        v = load(path, on_bad_line="warn")
    assert v.tokens == ["a", "c", "e"] and v.skipped == 2
    assert rows(v) == {"a": [1, 2, 3], "c": [7, 8, 9], "e": [5, 5, 5]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = load(path, on_bad_line="skip")
    assert v.tokens == ["a", "c", "e"] and v.skipped == 2


def test_header_count_larger_than_the_file(write):
    path = write("w2v.txt", "5 3\n" + GOOD)
    with pytest.raises(VectorsFormatError, match=r"line 1: the header declares 5 vectors but the file has only 3 "
                                                 r"data lines.*pass limit=3"):
        load(path)
    assert load(path, limit=3).tokens == ["a", "b", "c"]


def test_header_count_smaller_than_the_file(write):
    path = write("w2v.txt", "2 3\n" + GOOD)
    with pytest.raises(VectorsFormatError, match=r"line 4: more data lines than the 2 vectors the header declares"):
        load(path)
    assert load(path, limit=2).tokens == ["a", "b"]


def test_glove_with_a_header_given_as_glove_gets_a_hint(write):
    path = write("w2v.txt", "3 3\n" + GOOD)
    assert load(path).format == "word2vec"
    with pytest.raises(VectorsFormatError, match=r"line 1: expected a token and 3 values, found 2 fields; it looks "
                                                 r"like a word2vec header 'count dim': pass format='word2vec'"):
        load(path, format="glove")


def test_invalid_utf8_token(write):
    path = write("g.txt", b"a 1 2 3\n\xffb\xfe 4 5 6\n")
    with pytest.raises(VectorsFormatError, match=r"line 2: the token b'\\xffb\\xfe' is not valid utf-8 .*"
                                                 r"unicode_errors='replace'") as e:
        load(path)
    assert e.value.line == 2
    assert load(path, unicode_errors="replace").tokens == ["a", "\ufffdb\ufffd"]
    assert load(path, unicode_errors="ignore").tokens == ["a", "b"]
    assert load(path, encoding="latin-1").tokens == ["a", "ÿbþ"]
    assert load(path, on_bad_line="skip").tokens == ["a"]


def test_duplicates_keep_the_first_row_and_warn_with_the_count(write):
    path = write("g.txt", "a 1 2 3\nb 4 5 6\na 7 8 9\nc 0 0 0\nb 1 1 1\na 2 2 2\n")
    with pytest.warns(UserWarning, match=r"3 duplicate tokens; kept the first row of each \(e\.g\. 'a' at line 1, "
                                         r"again at line 3\)"):
        v = load(path)
    assert v.tokens == ["a", "b", "c"] and v.duplicates == 3
    assert rows(v) == {"a": [1, 2, 3], "b": [4, 5, 6], "c": [0, 0, 0]}


def test_tokens_with_spaces_take_the_last_dim_fields(write):
    lines = ["the 1 2 3", "new york 4 5 6", ". . . 7 8 9", "a\tb 1 1 1", "x 0 0 0"]
    v = load(write("g.txt", "\n".join(lines) + "\n"))
    assert v.tokens == ["the", "new york", ". . .", "a\tb", "x"]
    assert v["new york"].tolist() == [4, 5, 6] and v[". . ."].tolist() == [7, 8, 9]


def test_blank_lines_crlf_and_missing_final_newline(write):
    path = write("g.txt", "\r\na 1 2 3\r\n\r\n  \nb 4 5 6\r\nc 7 8 9")
    v = load(path)
    assert rows(v) == {"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}
    # Line numbers still count the blank lines.
    with pytest.raises(VectorsFormatError, match=r"line 5: expected a token and 3 values"):
        load(write("h.txt", "\na 1 2 3\n\n\nb 4 5\n"))


def test_truncated_binary_names_the_byte_offset(tmp_path):
    v = Vectors(["a", "bb", "ccc"], torch.arange(9, dtype=torch.float32).reshape(3, 3))
    full = tmp_path / "v.bin"
    v.export(full, format="word2vec_binary")
    data = full.read_bytes()
    header = len(b"3 3\n")
    third = header + 2 * (len(b"a ") + 12 + 1) + 1  # the record of "ccc" (after one more byte of "bb\n")
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:-5])
    with pytest.raises(VectorsFormatError, match=r"cut\.bin, byte offset \d+: the file ends inside record 3 of 3 "
                                                 r"\(token b'ccc'\): 12 bytes of vector expected, 8 found.*limit=2") as e:
        load(cut)
    assert e.value.offset == third
    assert load(cut, limit=2).tokens == ["a", "bb"]
    short = tmp_path / "short.bin"
    short.write_bytes(b"5 3\n" + data[header:])
    with pytest.raises(VectorsFormatError, match=r"the header declares 5 vectors but the file ends after 3"):
        load(short)
    longer = tmp_path / "long.bin"
    longer.write_bytes(b"2 3\n" + data[header:])
    with pytest.raises(VectorsFormatError, match=r"more data after the 2 vectors the header declares") as e:
        load(longer)
    assert e.value.offset == third


def test_binary_non_finite_and_bad_utf8(tmp_path):
    def record(tok: bytes, vals) -> bytes:
        return tok + b" " + struct.pack("<3f", *vals) + b"\n"

    path = tmp_path / "v.bin"
    path.write_bytes(b"3 3\n" + record(b"a", (1, 2, 3)) + record(b"b", (1, float("nan"), 3)) + record(b"\xff", (4, 5, 6)))
    with pytest.raises(VectorsFormatError, match=r"byte offset 19: value 2 of 3 for token 'b' is nan") as e:
        load(path)
    assert e.value.offset == len(b"3 3\n") + len(record(b"a", (1, 2, 3)))
    with pytest.warns(UserWarning, match="skipped 2 bad rows"):
        v = load(path, on_bad_line="warn")
    assert v.tokens == ["a"]
    v = load(path, on_bad_line="skip", unicode_errors="replace")
    assert v.tokens == ["a", "\ufffd"] and v["\ufffd"].tolist() == [4, 5, 6]


def test_binary_with_wrong_dim_in_header(tmp_path):
    path = tmp_path / "v.bin"
    path.write_bytes(b"1 2000\n" + b"x" * 5000)
    with pytest.raises(VectorsFormatError, match=r"no space after a token within 4096 bytes.*header's dim is wrong"):
        load(path, format="word2vec_binary")


def test_format_detection_is_reported(write, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="embtab.vectors")
    v = load(write("g.txt", GOOD))
    assert v.format == "glove" and "detected format 'glove' (no 'count dim' header line)" in caplog.text
    assert load(write("w.txt", "3 3\n" + GOOD)).format == "word2vec"
    assert load(write("f.vec", "3 3\n" + GOOD)).format == "fasttext"
    gz = tmp_path / "f.vec.gz"
    gz.write_bytes(gzip.compress(("3 3\n" + GOOD).encode()))
    assert load(gz).format == "fasttext" and load(gz).tokens == ["a", "b", "c"]
    v.export(tmp_path / "b.bin", format="word2vec_binary")
    assert load(tmp_path / "b.bin").format == "word2vec_binary"
    v.save(tmp_path / "c.safetensors")
    assert load(tmp_path / "c.safetensors").format == "cache"
    assert "detected format 'word2vec_binary' (header 'count dim' = '3 3', then raw float32 bytes)" in caplog.text


def test_empty_corrupt_gzip_and_missing_files(write, tmp_path):
    with pytest.raises(VectorsFormatError, match=r"e\.txt, line 1: the file is empty"):
        load(write("e.txt", "\n\n"))
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(gzip.compress(GOOD.encode())[:-12] + b"garbage!")
    with pytest.raises(VectorsFormatError, match=r"bad\.txt\.gz: corrupt gzip data"):
        load(bad)
    with pytest.raises(FileNotFoundError, match="no such file: '.*nope.txt'"):
        load(tmp_path / "nope.txt")
    with pytest.raises(VectorsFormatError, match=r"no line with a token and values"):
        load(write("words.txt", "justwords\nmore\n"))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"format": "xml"}, ValueError, r"format must be one of \('auto', 'glove'"),
    ({"on_bad_line": "ignore"}, ValueError, r"on_bad_line must be one of \('raise', 'warn', 'skip'\)"),
    ({"limit": -1}, ValueError, "limit must be a non-negative int or None, got limit=-1"),
    ({"encoding": "utf-16"}, ValueError, "encoding='utf-16' is not ASCII-compatible"),
    ({"encoding": "klingon"}, ValueError, "unknown encoding='klingon'"),
    ({"unicode_errors": "loud"}, ValueError, "unicode_errors must be one of"),
    ({"dtype": torch.int64}, TypeError, "dtype must be torch.float32, float64, float16 or bfloat16"),
    ({"num_threads": 0}, ValueError, "num_threads must be an int >= 1"),
])
def test_option_errors(write, kwargs, error, match):
    with pytest.raises(error, match=match):
        load(write("g.txt", GOOD), **kwargs)


def test_a_bad_line_in_a_big_threaded_file_is_found(write, block_size):
    """Many batches in flight: the error is still the first bad line, with its number."""
    rng = np.random.default_rng(0)
    lines = [f"w{i} " + " ".join(f"{x:.5f}" for x in rng.standard_normal(4)) for i in range(3000)]
    lines[1234] = "w1234 1 2 3"
    lines[2500] = "w2500 1 2 x 4"
    block_size(512)
    path = write("big.txt", "\n".join(lines) + "\n")
    with pytest.raises(VectorsFormatError, match=r"line 1235: expected a token and 4 values, found a token and 3"):
        load(path, num_threads=2)
    v = load(path, num_threads=2, on_bad_line="skip")
    assert v.skipped == 2 and len(v) == 2998 and "w1234" not in v and v.tokens[1234] == "w1235"


def test_progress_bar_only_when_asked_or_on_a_terminal(write, monkeypatch, capsys):
    import embtab.vectors._load as _load

    monkeypatch.setattr(_load, "_BIG", 0)  # every file counts as big
    path = write("g.txt", GOOD)
    load(path)  # stderr is captured here, not a terminal: silent
    assert capsys.readouterr().err == ""
    load(path, progress=True)
    assert "loading g.txt" in capsys.readouterr().err
    load(path, progress=False)
    assert capsys.readouterr().err == ""
