"""Malformed vector files: each error names the file, the line or byte offset, and what was wrong."""

from __future__ import annotations

import gzip
import logging
import math
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
    ("1e999", r"value 2 of 3, '1e999', overflows float64"),  # written as a number: not 'inf'
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


# ---------------------------------------------------------------------- issue #10
# 1. A row with a value too many is a bad row, not a token with a space.
@pytest.mark.parametrize("header", ["", "2 3\n"], ids=["glove", "word2vec"])
def test_a_row_with_a_value_too_many_is_refused_not_read_as_a_token_with_a_space(write, header):
    path = write("v.txt", header + "the 0.1 0.2 0.3\ncat 0.4 0.5 0.6 0.7\n")
    with pytest.raises(VectorsFormatError) as e:
        load(path)
    assert e.value.line == 2 + bool(header)
    assert ("expected a token and 3 values, found a token and 4 values (token 'cat'); a token may contain "
            "spaces, but the field before its values is a number here") in e.value.reason
    assert "on_bad_line='warn' or 'skip'" in str(e.value)
    v = load(path, on_bad_line="skip")
    assert v.tokens == ["the"] and v.skipped == 1 and "cat" not in v and "cat 0.4" not in v


def test_tokens_with_spaces_still_load(write):
    """Tokens of glove.840B's kind: spaces, NBSP, numbers inside (not last), nan/inf as words."""
    tokens = [". . .", "new york", "a\u00a0b", "at name@domain.com", "- -", "2 cats", "grand nan", "2014", "x"]
    values = [[i + 0.5, -i, i / 4] for i in range(len(tokens))]
    text = "".join(f"{t} {' '.join(repr(x) for x in row)}\n" for t, row in zip(tokens, values))
    for header in ("", f"{len(tokens)} 3\n"):
        v = load(write("v.txt", header + text))
        assert v.tokens == tokens
        assert rows(v) == dict(zip(tokens, values))


def test_a_long_row_is_found_in_a_big_file_whatever_the_batching(write, block_size):
    """The fast path sends the long row to the reference parser, in any batch, with any threads."""
    rng = np.random.default_rng(0)
    lines = [f"w{i} " + " ".join(f"{x:.5f}" for x in rng.standard_normal(4)) for i in range(2000)]
    lines[1500] += " 0.25"  # one value too many
    path = write("big.txt", "\n".join(lines) + "\n")
    for size, threads in [(512, 1), (4096, 2), (4 << 20, 1)]:
        block_size(size)
        with pytest.raises(VectorsFormatError, match=r"line 1501: expected a token and 4 values, found a token "
                                                     r"and 5 values \(token 'w1500'\)"):
            load(path, num_threads=threads)


# 2. Values too large for the dtype: an error naming the line and the value, never inf.
@pytest.mark.parametrize("dtype,value", [(torch.float32, "1e39"), (torch.float32, "-3.41e38"),
                                         (torch.float16, "70000"), (torch.float16, "65520"),
                                         (torch.bfloat16, "3.4e38")])
def test_a_value_that_overflows_the_dtype_names_line_and_value(write, dtype, value):
    name = str(dtype).replace("torch.", "")
    path = write("w2v.txt", f"3 3\na 1 2 3\nb 4 {value} 6\nc 7 8 9\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not numpy's overflow warning: our error
        with pytest.raises(VectorsFormatError, match=rf"w2v\.txt, line 3: value 2 of 3, '{value}', overflows {name} "
                                                     rf"\(its largest finite value is [\d.e+]+\); pass "
                                                     rf"dtype=torch\.(float32|float64) to read it"):
            load(path, dtype=dtype)
    v = load(path, dtype=dtype, on_bad_line="skip")
    assert v.tokens == ["a", "c"] and v.skipped == 1 and torch.isfinite(v.vectors).all()
    wide = load(path, dtype=torch.float64)  # the hint works
    assert wide["b"][1].item() == float(value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_values_at_the_edge_of_the_dtype_round_as_the_dtype_does(write, dtype):
    """The oracle: torch's own conversion of the double. A value a little above the largest
    finite one still rounds down to it and loads; the first that rounds to inf does not."""
    big = torch.finfo(dtype).max
    ulp = 2.0 ** math.floor(math.log2(big)) * torch.finfo(dtype).eps  # the spacing at the top of the range
    for x in [big, big + ulp / 4, big + ulp / 2, big + ulp, -(big + ulp / 4), -(big + ulp)]:
        rounded = torch.tensor([x], dtype=torch.float64).to(dtype)
        path = write("g.txt", f"a 1 {x!r}\nb 2 3\n")
        if torch.isinf(rounded).item():
            with pytest.raises(VectorsFormatError, match="overflows"):
                load(path, dtype=dtype)
        else:
            assert load(path, dtype=dtype)["a"][1] == rounded[0]


def test_binary_values_that_overflow_float16_name_the_offset_and_token(tmp_path):
    v = Vectors(["a", "b"], torch.tensor([[1.0, 2.0], [3.0, 70000.0]]))
    path = tmp_path / "v.bin"
    v.export(path, format="word2vec_binary")
    with pytest.raises(VectorsFormatError, match=r"v\.bin, byte offset 15: value 2 of 2 for token 'b', 70000\.0, "
                                                 r"overflows float16.*pass dtype=torch\.float32") as e:
        load(path, dtype=torch.float16)
    assert e.value.offset == len(b"2 2\n") + len(b"a ") + 8 + 1  # the start of the token b'b'
    assert load(path, dtype=torch.float16, on_bad_line="skip").tokens == ["a"]
    assert load(path, dtype=torch.float32)["b"][1] == 70000.0


# 6. What a file that is not vectors looks like; never 0 vectors in silence.
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_token(write, tmp_path):
    plain = load(write("plain.txt", "the 1 2 3\ncat 4 5 6\n"))
    for header in ("", "2 3\n"):
        for gz in (False, True):
            data = b"\xef\xbb\xbf" + (header + "the 1 2 3\ncat 4 5 6\n").encode()
            path = tmp_path / f"bom{len(header)}.txt{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(data) if gz else data)
            v = load(path)
            assert v.tokens == plain.tokens == ["the", "cat"] and torch.equal(v.vectors, plain.vectors)
            assert load(path, encoding="utf-8-sig").tokens == ["the", "cat"]
    with pytest.raises(VectorsFormatError, match=r"starts with a UTF-8 byte-order mark.*encoding given is 'latin-1'; "
                                                 r"pass encoding='utf-8'"):
        load(path, encoding="latin-1")


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_are_named(tmp_path, codec):
    path = tmp_path / "v.txt"
    path.write_bytes("the 1 2 3\ncat 4 5 6\n".encode(codec))
    for on_bad_line in ("raise", "skip"):
        with pytest.raises(VectorsFormatError, match=r"this looks like UTF-(16|32) text.*not a vectors file.*"
                                                     r"iconv -f UTF-(16|32) -t UTF-8"):
            load(path, on_bad_line=on_bad_line)


def test_an_html_page_or_an_archive_is_named_not_parsed(write, tmp_path):
    import zipfile

    page = write("glove.6B.100d.txt", "<!DOCTYPE html>\n<html lang='en'>\n<head><title>Sign in</title></head>\n"
                                      "<body><p>Please sign in 1 2 3</p></body>\n</html>\n")
    for options in ({}, {"on_bad_line": "skip"}, {"format": "glove", "on_bad_line": "warn"}):
        with pytest.raises(VectorsFormatError, match=r"this looks like an HTML page, not a vectors file; a download "
                                                     r"that returned a web page"):
            load(page, **options)
    archive = tmp_path / "glove.6B.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("glove.6B.50d.txt", "the 1 2 3\n")
        z.writestr("glove.6B.100d.txt", "the 1 2 3\n")
    with pytest.raises(VectorsFormatError, match=r"this looks like a zip archive, not a vectors file; unzip it and "
                                                 r"load a vectors file from inside: glove\.6B\.50d\.txt, "
                                                 r"glove\.6B\.100d\.txt"):
        load(archive, on_bad_line="skip")
    bz = tmp_path / "v.txt.bz2"
    import bz2

    bz.write_bytes(bz2.compress(b"the 1 2 3\n"))
    with pytest.raises(VectorsFormatError, match=r"a bzip2-compressed file.*decompress it first"):
        load(bz)


def test_a_load_never_ends_with_zero_vectors_in_silence(write):
    csv = write("table.txt", "id name score\n1 foo bar\n2 baz qux\n")  # a table, not vectors
    for on_bad_line in ("warn", "skip"):
        with pytest.raises(VectorsFormatError, match=rf"none of its 3 data rows could be read \(on_bad_line="
                                                     rf"'{on_bad_line}' dropped every one\); the first: "):
            load(csv, on_bad_line=on_bad_line)
    with pytest.warns(UserWarning, match=r"loaded 0 vectors: the file holds none"):
        assert len(load(write("empty.vec", "0 300\n"))) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load(write("some.vec", "1 2\na 1 2\n"), limit=0)) == 0  # asked for: no warning


# 7. A format given that the file is not: say what the file is.
def test_word2vec_binary_forced_on_a_text_file_says_it_is_text(write, tmp_path):
    w2v = write("w2v.txt", "3 3\n" + GOOD)
    with pytest.raises(VectorsFormatError) as e:
        load(w2v, format="word2vec_binary")
    assert "the file is text, not word2vec binary" in str(e.value) and "header declares" not in str(e.value)
    assert "pass format='word2vec' or 'auto'" in str(e.value)
    glove = write("glove.txt", GOOD)
    with pytest.raises(VectorsFormatError, match=r"the file is text without a 'count dim' header \(GloVe\), not "
                                                 r"word2vec binary.*pass format='glove' or 'auto'"):
        load(glove, format="word2vec_binary")
    Vectors(["a", "b"], torch.ones(2, 3)).export(tmp_path / "v.bin", format="word2vec_binary")
    for fmt in ("word2vec", "fasttext"):
        with pytest.raises(VectorsFormatError, match=r"the file is word2vec binary, not text.*pass "
                                                     r"format='word2vec_binary' or 'auto'"):
            load(tmp_path / "v.bin", format=fmt)
    assert load(tmp_path / "v.bin", format="word2vec_binary").tokens == ["a", "b"]


def test_hints_name_the_keyword_and_render_as_flags_for_the_command_line(write):
    with pytest.raises(VectorsFormatError) as e:
        load(write("g.txt", "a 1 2 3\nb 1 2\n"))
    assert str(e.value).endswith("pass on_bad_line='warn' or 'skip' to drop such rows")
    assert e.value.cli_message().endswith("pass --on-bad-line warn or skip to drop such rows")
    assert "on_bad_line" not in e.value.cli_message()
    with pytest.raises(VectorsFormatError) as e:
        load(write("w.txt", "5 3\n" + GOOD))
    assert "pass limit=3 to read them" in str(e.value) and "pass --limit 3 to read them" in e.value.cli_message()
    with pytest.raises(VectorsFormatError) as e:
        load(write("n.txt", "a 1 2 3\nb 1 nan 3\n"))
    assert e.value.cli_message().endswith("pass --nonfinite keep to keep such rows, or --on-bad-line warn or skip "
                                          "to drop them")
    assert str(e.value).endswith("pass nonfinite='keep' to keep such rows, or on_bad_line='warn' or 'skip' to "
                                 "drop them")


def test_vectors_whose_first_token_looks_like_markup_still_load(write):
    """Web-crawl vectors have tokens such as <html>: a row is not a page."""
    for first in ("<html> 0.1 0.2", "<!DOCTYPE 0.5 0.5", "<?xml 1 2", "BZh9 1 2", "%PDF 3 4"):
        v = load(write("web.txt", f"{first}\n<unk> 0.3 0.4\n</body> 1 1\n"))
        assert v.tokens[0] == first.split()[0] and len(v) == 3
