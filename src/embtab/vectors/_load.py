"""``embtab.vectors.load``: open, detect the format, read into a preallocated matrix."""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import logging
import os
import sys
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import _binary, _text
from ._errors import Hint, VectorsFormatError
from ._rows import (
    NONFINITE, ON_BAD_LINE, RowSink, check_dtype, dtype_name, nonfinite_hint, overflow_hint, parse_dtype,
)
from .cache import is_cache_file, read_cache

logger = logging.getLogger("embtab.vectors")

FORMATS = ("auto", "glove", "word2vec", "fasttext", "word2vec_binary", "cache")
UNICODE_ERRORS = ("strict", "replace", "ignore", "surrogateescape", "backslashreplace")
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\r"
# Files smaller than this get no progress bar and no threads by default.
_BIG = 16 << 20
_SNIFF = 1 << 16


class _Source:
    """A vector file's bytes, decompressed if gzip, hashed and counted as they are read."""

    def __init__(self, path: Path, *, progress: bool | None, desc: str) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.stat = _stat_key(path)  # to tell later whether the file changed
        self._progress = progress
        self._sha = hashlib.sha256()
        self.sha256: str | None = None  # set once the whole file has been hashed
        self._raw = open(path, "rb")
        self.gzip = self._raw.read(2) == _GZIP_MAGIC
        self._hashing = True
        self._bar = None
        self.bom = 0  # bytes of a UTF-8 byte-order mark dropped from the start of each pass
        self._drop = 0
        self.restart(desc)

    def restart(self, desc: str) -> None:
        """Read from the start again (the hash is only taken on the first pass)."""
        if self._bar is not None:
            self._bar.close()
        self._raw.seek(0)
        self._bar = _progress_bar(self.size, desc, self._progress)
        self._gz = gzip.GzipFile(fileobj=_RawReader(self), mode="rb") if self.gzip else None
        self._drop = self.bom

    def skip_bom(self, n: int) -> None:
        """Drop the first ``n`` bytes of every later pass (a byte-order mark)."""
        self.bom = n

    def read_raw(self, n: int) -> bytes:
        data = self._raw.read(n)
        if self._hashing:
            self._sha.update(data)  # releases the GIL: parser threads keep going
            if not data:
                self.sha256 = self._sha.hexdigest()
                self._hashing = False
        if self._bar is not None:
            self._bar.update(len(data))
        return data

    def read(self, n: int) -> bytes:
        if self._drop:
            # The first read of a pass asks for a block: it holds the whole mark.
            k, self._drop = self._drop, 0
            return self._read(n + k)[k:]
        return self._read(n)

    def _read(self, n: int) -> bytes:
        if self._gz is not None:
            try:
                return self._gz.read(n)
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                raise VectorsFormatError(self.path, f"corrupt gzip data ({e})", hint="download the file again") from e
        return self.read_raw(n)

    def stop_hashing(self) -> None:
        self._hashing = False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._raw.close()

class _RawReader:
    def __init__(self, source: _Source) -> None:
        self._source = source

    def read(self, n: int = -1) -> bytes:
        return self._source.read_raw(n if n >= 0 else 1 << 30)


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _progress_bar(total: int, desc: str, progress: bool | None):  # type: ignore[no-untyped-def]
    if progress is None:
        # Silent when stderr is not a terminal (logs, CI, notebooks' captured output).
        progress = total >= _BIG and sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, hex (what a cache records as ``source_sha256``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def check_options(
    format: str, limit: Any, encoding: str, unicode_errors: str, dtype: Any, on_bad_line: str,
    num_threads: Any, where: str, nonfinite: str = "error",
) -> None:
    if format not in FORMATS:
        raise ValueError(f"{where}: format must be one of {FORMATS}, got format={format!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{where}: limit must be a non-negative int or None, got limit={limit!r}")
    if on_bad_line not in ON_BAD_LINE:
        raise ValueError(f"{where}: on_bad_line must be one of {ON_BAD_LINE}, got on_bad_line={on_bad_line!r}")
    if nonfinite not in NONFINITE:
        raise ValueError(f"{where}: nonfinite must be one of {NONFINITE}, got nonfinite={nonfinite!r}")
    if unicode_errors not in UNICODE_ERRORS:
        raise ValueError(
            f"{where}: unicode_errors must be one of {UNICODE_ERRORS}, got unicode_errors={unicode_errors!r}"
        )
    try:
        ascii_compatible = " \n0.1e-".encode(normal_encoding(encoding)) == b" \n0.1e-"
    except LookupError as e:
        raise ValueError(f"{where}: unknown encoding={encoding!r}") from e
    if not ascii_compatible:
        raise ValueError(
            f"{where}: encoding={encoding!r} is not ASCII-compatible; vector files need one "
            f"(utf-8, latin-1, cp1251, ...): numbers and separators are ASCII"
        )
    check_dtype(dtype, where)
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"{where}: num_threads must be an int >= 1 or None, got {num_threads!r}")


def normal_encoding(encoding: str) -> str:
    """``encoding``, with ``utf-8-sig`` read as ``utf-8`` (a byte-order mark is dropped either way)."""
    try:
        return "utf-8" if codecs.lookup(encoding).name == "utf-8-sig" else encoding
    except LookupError:
        return encoding


def detect_format(head: bytes, name: str) -> tuple[str, str]:
    """``(format, why)`` from the first bytes of the (decompressed) file and its name."""
    nl = head.find(b"\n")
    first = head if nl < 0 else head[:nl]
    header = _text.parse_header(first)
    if header is None or header[1] < 1:
        return "glove", "no 'count dim' header line"
    count, dim = header
    shown = first.decode("ascii", "replace").strip()
    stem = name[:-3] if name.endswith(".gz") else name
    text_fmt = "fasttext" if stem.endswith(".vec") else "word2vec"
    body = (head[nl + 1 :] if nl >= 0 else b"").lstrip(b"\r\n")  # blank lines before the first row
    if not body.strip():
        if count == 0:
            return text_fmt, f"header 'count dim' = {shown!r} and no rows"
        return "glove", f"a single row {shown!r}, read as a token and one value"
    nl2 = body.find(b"\n")
    line = body if nl2 < 0 else body[:nl2]
    try:
        _text.parse_line_reference(line, dim)
        return text_fmt, f"header 'count dim' = {shown!r}, then text rows"
    except _text.BadLine:
        pass
    if _looks_binary(body, dim):
        return "word2vec_binary", f"header 'count dim' = {shown!r}, then raw float32 bytes"
    fields = line.split()
    if len(fields) == 2 and _text.is_number(fields[1]):
        # "5 3" then "6 4": rows of a one-dimensional GloVe file, not a header.
        return "glove", f"the first line {shown!r} is shaped like the rows after it, not a header"
    return text_fmt, f"header 'count dim' = {shown!r} (the first row is malformed)"


def _looks_binary(rest: bytes, dim: int, records: int = 3) -> bool:
    """Whether the bytes after a header start binary records rather than (bad) text rows.

    Raw float32 bytes: every fourth one is an exponent byte, mostly outside printable
    ASCII, and the others are random. A text row is printable up to its newline. A
    record whose bytes are too few to tell (a newline right after the token) defers to
    the next one.
    """
    pos = 0
    for _ in range(records):
        sp = rest.find(b" ", pos, pos + _binary.MAX_TOKEN_BYTES + 1)
        if sp < 0:
            return False
        raw = rest[sp + 1 : sp + 1 + 4 * dim]
        nl = raw.find(b"\n")
        region = raw if nl < 0 else raw[:nl]
        if region.translate(None, delete=_PRINTABLE):
            # Unless the line ends in a number: a text row whose token has a space
            # before non-ASCII characters.
            end = rest.find(b"\n", pos)
            fields = rest[pos : end if end >= 0 else len(rest)].rsplit(None, 1)
            return not (len(fields) == 2 and _text.is_number(fields[1]))
        if len(region) >= min(len(raw), 8):
            return False
        pos = sp + 1 + 4 * dim
        while rest[pos : pos + 1] == b"\n":
            pos += 1
    return False


def from_cache(
    path: Path, *, limit: int | None = None, dtype: torch.dtype | None = None, nonfinite: str = "error",
    on_bad_line: str = "raise",
) -> tuple[list[str], torch.Tensor, dict[str, int], dict[str, Any]]:
    """A cache file read as ``load_file`` returns a file: ``(tokens, matrix, index, info)``
    (the cache holds distinct tokens, so the index needs no duplicate check).

    Rows holding NaN or inf (unless ``nonfinite="keep"``) and rows that overflow
    ``dtype`` are bad rows, as in a text file: an error naming the row and its token,
    or dropped with ``on_bad_line="warn"``/``"skip"``. A cache records how many
    non-finite rows it holds, so that one holding none is not read through to check.
    """
    tokens, matrix, meta = read_cache(path)
    if limit is not None:
        tokens, matrix = tokens[:limit], matrix[:limit]
    skipped = 0
    if nonfinite != "keep" and meta.get("nonfinite_rows", "") != "0" and matrix.is_floating_point():
        bad = ~_finite_rows(matrix)  # (n,)
        if bad.any():
            def nonfinite_reason(i: int) -> str:
                value = matrix[i][~torch.isfinite(matrix[i])][0].item()
                return f"the vector of token {tokens[i]!r} holds {value} (not finite)"

            tokens, matrix, skipped = _drop_rows(path, tokens, matrix, bad, nonfinite_reason,
                                                 nonfinite_hint(on_bad_line), on_bad_line)
    if dtype is not None and matrix.dtype != dtype:
        converted = matrix.to(dtype)
        over = (torch.isinf(converted) & torch.isfinite(matrix)).any(1).numpy()  # (n,)
        if over.any():
            def overflow_reason(i: int) -> str:
                j = int(torch.nonzero(torch.isinf(converted[i]) & torch.isfinite(matrix[i]))[0])
                return (f"value {j + 1} of {matrix.shape[1]} for token {tokens[i]!r}, {matrix[i, j].item()!r}, "
                        f"overflows {dtype_name(dtype)} (its largest finite value is {torch.finfo(dtype).max:.8g})")

            tokens, converted, more = _drop_rows(path, tokens, converted, over, overflow_reason,
                                                 overflow_hint(dtype, on_bad_line), on_bad_line)
            skipped += more
        matrix = converted
    index = {t: i for i, t in enumerate(tokens)}
    info = {"format": "cache", "source_name": meta.get("source"), "source_format": meta.get("source_format"),
            "sha256": meta.get("source_sha256") or None, "stat": None, "skipped": skipped, "duplicates": 0,
            "load_options": meta.get("load_options", "")}
    return tokens, matrix, index, info


def _finite_rows(matrix: torch.Tensor, block: int = 1 << 16) -> np.ndarray:
    """Whether each row is all finite, ``(n,)``; block by block (the matrix may be memory-mapped)."""
    out = np.empty(matrix.shape[0], dtype=bool)
    for s in range(0, matrix.shape[0], block):
        out[s : s + block] = torch.isfinite(matrix[s : s + block]).all(1).numpy()
    return out


def _drop_rows(
    path: Path, tokens: list[str], matrix: torch.Tensor, bad: np.ndarray, reason: Callable[[int], str],
    hint: Hint | None, on_bad_line: str,
) -> tuple[list[str], torch.Tensor, int]:
    """Bad rows of a cache: raise naming the first, or drop them all (and warn)."""
    rows = np.flatnonzero(bad)
    first = int(rows[0])
    err = VectorsFormatError(path, reason(first), row=first, hint=hint)
    if on_bad_line == "raise":
        raise VectorsFormatError(path, f"{err.reason} ({len(rows)} of {len(tokens)} rows are bad)", row=first,
                                 hint=hint)
    if len(rows) == len(tokens):
        raise VectorsFormatError(path, f"none of its {len(rows)} rows could be read (on_bad_line={on_bad_line!r} "
                                       f"dropped every one); the first: {err.reason}", row=first, hint=hint)
    if on_bad_line == "warn":
        warnings.warn(f"{path}: skipped {len(rows)} bad row{'s' if len(rows) != 1 else ''}; the first: {err}",
                      stacklevel=5)
    keep = np.flatnonzero(~bad)
    return [tokens[i] for i in keep], matrix[torch.from_numpy(keep)], len(rows)


def describe_foreign(head: bytes, path: Path, gz: bool) -> tuple[str, str] | None:
    """``(what, hint)`` when the first bytes show a file that is not vectors at all, else ``None``.

    ``head``: the first bytes, decompressed if the file is gzip.
    """
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                      (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if head.startswith(bom):
            return (f"{name} text (it starts with a {name} byte-order mark)",
                    f"vector files are read in an ASCII-compatible encoding: convert it first, e.g. "
                    f"iconv -f {name} -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        members = ""
        if not gz:
            try:
                with zipfile.ZipFile(path) as z:
                    names = [i.filename for i in z.infolist() if not i.is_dir()]
                shown = ", ".join(names[:5]) + (f", ... ({len(names)} files)" if len(names) > 5 else "")
                members = f": {shown}" if names else " (it is empty)"
            except (zipfile.BadZipFile, OSError):
                pass
        return ("a zip archive", f"unzip it and load a vectors file from inside{members}")
    # Magic numbers: binary bytes, or ASCII ones long enough that no token starts with them.
    compressed = "bzip2" if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY" else None
    for magic, name in ((b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"7z\xbc\xaf\x27\x1c", "7-Zip")):
        if head.startswith(magic):
            compressed = name
    if compressed is not None:
        return (f"a {compressed}-compressed file", "decompress it first (gzip is the only compression read directly)")
    if head[257:262] == b"ustar" and head[262:263] in (b"\x00", b" "):
        return ("a tar archive", f"extract it (tar -xf {path.name}) and load a vectors file from inside")
    if head.startswith(b"%PDF-"):
        return ("a PDF document", "load the vectors file itself")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return ("a Python pickle (a model saved by gensim's .save()?)",
                "load it with gensim and write the vectors with KeyedVectors.save_word2vec_format(path, binary=True)")
    if head.startswith(b"\x93NUMPY"):
        return ("a numpy .npy array (no tokens)", "load the vectors file with its tokens itself")
    first = head[:4096].split(b"\n", 1)[0]
    if b"\x00" in first:
        # A text or binary vectors file starts with an ASCII line (a token or a header).
        even, odd = first[0::2], first[1::2]
        if even.count(b"\x00") > 0.8 * len(even) or odd.count(b"\x00") > 0.8 * len(odd):
            return ("UTF-16 text (every other byte of its first line is 0)",
                    f"convert it to UTF-8 first, e.g. iconv -f UTF-16 -t UTF-8 {path.name} > "
                    f"{path.stem}.utf8{path.suffix}")
        return ("binary data (its first line holds NUL bytes)",
                "a text vectors file starts with a token or a 'count dim' header line, a word2vec binary one "
                "with the header line")
    text = head[:4096].lstrip().lower()
    line = text.split(b"\n", 1)[0].split()
    looks_like_a_row = len(line) > 1 and _text.is_number(line[-1])  # "<html> 0.1 0.2": a token of web vectors
    if not looks_like_a_row and (text.startswith((b"<!doctype html", b"<html"))
                                 or (text.startswith(b"<") and b"<html" in text)):
        return ("an HTML page",
                "a download that returned a web page (an error or sign-in page) instead of the file? "
                "download the vectors file itself")
    if not looks_like_a_row and text.startswith(b"<?xml"):
        return ("an XML document", "load the vectors file itself")
    return None


def load_file(
    path: Path,
    format: str,
    *,
    limit: int | None,
    encoding: str,
    unicode_errors: str,
    dtype: torch.dtype,
    on_bad_line: str,
    progress: bool | None,
    num_threads: int | None,
    nonfinite: str = "error",
) -> tuple[list[str], torch.Tensor, dict[str, int], dict[str, Any]]:
    """Read a vector file: ``(tokens, matrix, index, info)``."""
    name = str(path)
    with open(path, "rb") as f:
        magic = f.read(16)
    if format == "cache" or (format == "auto" and is_cache_file(magic)):
        tokens, matrix, index, info = from_cache(path, limit=limit, dtype=dtype, nonfinite=nonfinite,
                                                 on_bad_line=on_bad_line)
        logger.info("%s: loaded %d x %d vectors from the cache format", name, *matrix.shape)
        return tokens, matrix, index, info

    source = _Source(path, progress=progress, desc=f"loading {path.name}")
    try:
        # Enough bytes to detect the format and the width, whatever the block size.
        head = source.read(max(_text.BLOCK_SIZE, _SNIFF))
        foreign = describe_foreign(head, path, source.gzip)
        if foreign is not None:
            raise VectorsFormatError(name, f"this looks like {foreign[0]}, not a vectors file", hint=foreign[1])
        if head.startswith(_UTF8_BOM):
            if codecs.lookup(encoding).name != "utf-8":
                raise VectorsFormatError(
                    name, f"the file starts with a UTF-8 byte-order mark, so it is UTF-8 text, but "
                          f"the encoding given is {encoding!r}", hint=Hint("pass {encoding}", encoding=("utf-8",)))
            source.skip_bom(len(_UTF8_BOM))  # a mark, not part of the first token
            head = head[len(_UTF8_BOM):]
        if not head.strip():
            raise VectorsFormatError(name, "the file is empty", line=1, hint="download it again")
        if format == "auto":
            format, why = detect_format(head, path.name)
            logger.info("%s: detected format %r (%s)", name, format, why)
        else:
            check_forced_format(head, name, format)
        # One parser thread unless asked: numpy's text parser holds the GIL, so more
        # threads only contend (2 threads took 2.7x as long as 1 on a 2-core machine).
        threads = num_threads or 1
        pool = ThreadPoolExecutor(threads, thread_name_prefix="embtab-vectors") if threads > 1 else None
        try:
            if format == "glove":
                sink = _read_glove(source, head, name, limit=limit, dtype=dtype, on_bad_line=on_bad_line,
                                   nonfinite=nonfinite, encoding=encoding, unicode_errors=unicode_errors,
                                   pool=pool, threads=threads)
            else:
                sink = _read_with_header(source, head, name, format, limit=limit, dtype=dtype,
                                         on_bad_line=on_bad_line, nonfinite=nonfinite, encoding=encoding,
                                         unicode_errors=unicode_errors, pool=pool, threads=threads)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        tokens, matrix, index, duplicates = sink.finish("byte offset" if format == "word2vec_binary" else "line")
        info = {"format": format, "source_format": format, "sha256": source.sha256,
                "stat": source.stat, "skipped": sink.skipped, "duplicates": duplicates}
        logger.info("%s: loaded %d x %d vectors (%s)", name, matrix.shape[0], matrix.shape[1], format)
        return tokens, matrix, index, info
    finally:
        source.close()


def check_forced_format(head: bytes, name: str, format: str) -> None:
    """Refuse a format given explicitly that the file plainly is not (text read as binary or
    the other way round), saying what the file is, rather than failing on a row later."""
    nl = head.find(b"\n")
    first = head if nl < 0 else head[:nl]
    header = _text.parse_header(first)
    if format == "word2vec_binary":
        if header is not None and header[1] >= 1:
            body = (head[nl + 1 :] if nl >= 0 else b"").lstrip(b"\r\n")
            row = body.split(b"\n", 1)[0]
            try:
                _text.parse_line_reference(row, header[1], nonfinite="keep")
            except _text.BadLine:
                return
            if not _looks_binary(body, header[1]):
                raise VectorsFormatError(
                    name, f"the file is text, not word2vec binary: after the header 'count dim' = "
                          f"{first.decode('ascii', 'replace').strip()!r} comes a text row (a token and "
                          f"{header[1]} numbers)", line=2,
                    hint=Hint("pass {format}", format=("word2vec", "auto")),
                )
        elif header is None:
            fields = first.split()
            if len(fields) > 1 and all(_text.is_number(f) for f in fields[-min(len(fields) - 1, 3):]):
                raise VectorsFormatError(
                    name, f"the file is text without a 'count dim' header (GloVe), not word2vec binary: its first "
                          f"line is a token and {len(fields) - 1} numbers", line=1,
                    hint=Hint("pass {format}", format=("glove", "auto")),
                )
        return
    if header is not None and header[1] >= 1:
        detected, why = detect_format(head, Path(name).name)
        if detected == "word2vec_binary":
            raise VectorsFormatError(
                name, f"the file is word2vec binary, not text: {why}", line=2,
                hint=Hint("pass {format}", format=("word2vec_binary", "auto")),
            )


def _read_glove(
    source: _Source, head: bytes, name: str, *, limit: int | None, dtype: torch.dtype, on_bad_line: str,
    nonfinite: str, encoding: str, unicode_errors: str, pool: ThreadPoolExecutor | None, threads: int,
) -> RowSink:
    # No header: the width comes from the first lines, the row count from a counting
    # pass, so that the matrix is allocated once, at its final size.
    lines = head.split(b"\n")
    if len(lines) > 1:
        lines.pop()  # possibly cut in the middle
    sample = [ln for ln in lines[:200] if ln.strip()][:100]
    dim = _text.infer_dim(sample)
    if dim is None:
        raise VectorsFormatError(name, "no line with a token and values in the first lines", line=1,
                                 hint=Hint("is this a vectors file? pass its {format} if it is not GloVe text",
                                           format=(...,)))
    capacity = _count_lines(source, head, limit)
    source.restart(f"loading {source.path.name}")
    first = source.read(len(head))  # the same bytes as head, read again past the restart
    sink = RowSink(name, capacity, dim, dtype, on_bad_line, nonfinite)
    _text.read_rows(
        _text.iter_lines(source.read, 1, head=first), sink, dim=dim, max_lines=limit, encoding=encoding,
        unicode_errors=unicode_errors, np_dtype=parse_dtype(dtype), pool=pool, in_flight=threads + 1,
    )
    return sink


def _count_lines(source: _Source, head: bytes, limit: int | None) -> int:
    """An upper bound on the data lines (every newline-separated piece), up to ``limit``."""
    n = 0
    last = b""
    block = head
    while block:
        n += block.count(b"\n")
        last = block
        if limit is not None and n >= limit:
            source.stop_hashing()  # the pass stops early: no hash of the whole file
            return limit
        block = source.read(_text.BLOCK_SIZE)
    if last and not last.endswith(b"\n"):
        n += 1  # a last line without a newline
    return n if limit is None else min(n, limit)


def _read_with_header(
    source: _Source, head: bytes, name: str, format: str, *, limit: int | None, dtype: torch.dtype,
    on_bad_line: str, nonfinite: str, encoding: str, unicode_errors: str, pool: ThreadPoolExecutor | None,
    threads: int,
) -> RowSink:
    nl = head.find(b"\n")
    first = head if nl < 0 else head[:nl]
    header = _text.parse_header(first)
    if header is None:
        raise VectorsFormatError(
            name, f"expected a header line 'count dim', found {first[:60]!r}", line=1,
            hint=Hint("pass {format} for a file without a header", format=("glove", "auto")),
        )
    count, dim = header
    if dim < 1:
        raise VectorsFormatError(name, f"the header declares dim={dim}", line=1, hint="the file is corrupt")
    rows = count if limit is None else min(count, limit)
    sink = RowSink(name, rows, dim, dtype, on_bad_line, nonfinite)
    rest = head[nl + 1 :] if nl >= 0 else b""
    if format == "word2vec_binary":
        _binary.read_records(
            source.read, sink, head=rest, head_offset=source.bom + nl + 1, count=count, dim=dim, max_rows=rows,
            encoding=encoding, unicode_errors=unicode_errors, check_trailing=limit is None,
        )
        return sink
    lines_read, extra_line = _text.read_rows(
        _text.iter_lines(source.read, 2, head=rest), sink, dim=dim, max_lines=rows, encoding=encoding,
        unicode_errors=unicode_errors, np_dtype=parse_dtype(dtype), pool=pool, in_flight=threads + 1,
    )
    if lines_read < rows:
        raise VectorsFormatError(
            name, f"the header declares {count} vectors but the file has only {lines_read} data lines",
            line=1, hint=Hint("the file is truncated or its header is wrong; pass {limit} to read them",
                              limit=(lines_read,)),
        )
    if limit is None and extra_line is not None:
        raise VectorsFormatError(
            name, f"more data lines than the {count} vectors the header declares", line=extra_line,
            hint=Hint("the header's count is wrong; pass {limit} to read only the first rows", limit=(...,)),
        )
    return sink


def options_key(format: str, limit: int | None, encoding: str, unicode_errors: str, dtype: torch.dtype,
                on_bad_line: str, nonfinite: str = "error") -> str:
    """The load options that change the result, as canonical JSON (stored in a cache)."""
    return json.dumps({"format": format, "limit": limit, "encoding": encoding, "unicode_errors": unicode_errors,
                       "dtype": str(dtype).replace("torch.", ""), "on_bad_line": on_bad_line,
                       "nonfinite": nonfinite}, sort_keys=True)
