"""``embtab.vectors.load``: open, detect the format, read into a preallocated matrix."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from . import _binary, _text
from ._errors import VectorsFormatError
from ._rows import ON_BAD_LINE, RowSink, check_dtype, parse_dtype
from .cache import is_cache_file, read_cache

logger = logging.getLogger("embtab.vectors")

FORMATS = ("auto", "glove", "word2vec", "fasttext", "word2vec_binary", "cache")
UNICODE_ERRORS = ("strict", "replace", "ignore", "surrogateescape", "backslashreplace")
_GZIP_MAGIC = b"\x1f\x8b"
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
        self.restart(desc)

    def restart(self, desc: str) -> None:
        """Read from the start again (the hash is only taken on the first pass)."""
        if self._bar is not None:
            self._bar.close()
        self._raw.seek(0)
        self._bar = _progress_bar(self.size, desc, self._progress)
        self._gz = gzip.GzipFile(fileobj=_RawReader(self), mode="rb") if self.gzip else None

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
    num_threads: Any, where: str,
) -> None:
    if format not in FORMATS:
        raise ValueError(f"{where}: format must be one of {FORMATS}, got format={format!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{where}: limit must be a non-negative int or None, got limit={limit!r}")
    if on_bad_line not in ON_BAD_LINE:
        raise ValueError(f"{where}: on_bad_line must be one of {ON_BAD_LINE}, got on_bad_line={on_bad_line!r}")
    if unicode_errors not in UNICODE_ERRORS:
        raise ValueError(
            f"{where}: unicode_errors must be one of {UNICODE_ERRORS}, got unicode_errors={unicode_errors!r}"
        )
    try:
        ascii_compatible = " \n0.1e-".encode(encoding) == b" \n0.1e-"
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
    path: Path, *, limit: int | None = None, dtype: torch.dtype | None = None,
) -> tuple[list[str], torch.Tensor, dict[str, int], dict[str, Any]]:
    """A cache file read as ``load_file`` returns a file: ``(tokens, matrix, index, info)``
    (the cache holds distinct tokens, so the index needs no duplicate check)."""
    tokens, matrix, meta = read_cache(path)
    if limit is not None:
        tokens, matrix = tokens[:limit], matrix[:limit]
    if dtype is not None and matrix.dtype != dtype:
        matrix = matrix.to(dtype)
    index = {t: i for i, t in enumerate(tokens)}
    info = {"format": "cache", "source_name": meta.get("source"), "source_format": meta.get("source_format"),
            "sha256": meta.get("source_sha256") or None, "stat": None, "skipped": 0, "duplicates": 0,
            "load_options": meta.get("load_options", "")}
    return tokens, matrix, index, info


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
) -> tuple[list[str], torch.Tensor, dict[str, int], dict[str, Any]]:
    """Read a vector file: ``(tokens, matrix, index, info)``."""
    name = str(path)
    with open(path, "rb") as f:
        magic = f.read(16)
    if format == "cache" or (format == "auto" and is_cache_file(magic)):
        tokens, matrix, index, info = from_cache(path, limit=limit, dtype=dtype)
        logger.info("%s: loaded %d x %d vectors from the cache format", name, *matrix.shape)
        return tokens, matrix, index, info

    source = _Source(path, progress=progress, desc=f"loading {path.name}")
    try:
        # Enough bytes to detect the format and the width, whatever the block size.
        head = source.read(max(_text.BLOCK_SIZE, _SNIFF))
        if not head.strip():
            raise VectorsFormatError(name, "the file is empty", line=1, hint="download it again")
        if format == "auto":
            format, why = detect_format(head, path.name)
            logger.info("%s: detected format %r (%s)", name, format, why)
        # One parser thread unless asked: numpy's text parser holds the GIL, so more
        # threads only contend (2 threads took 2.7x as long as 1 on a 2-core machine).
        threads = num_threads or 1
        pool = ThreadPoolExecutor(threads, thread_name_prefix="embtab-vectors") if threads > 1 else None
        try:
            if format == "glove":
                sink = _read_glove(source, head, name, limit=limit, dtype=dtype, on_bad_line=on_bad_line,
                                   encoding=encoding, unicode_errors=unicode_errors, pool=pool, threads=threads)
            else:
                sink = _read_with_header(source, head, name, format, limit=limit, dtype=dtype,
                                         on_bad_line=on_bad_line, encoding=encoding,
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


def _read_glove(
    source: _Source, head: bytes, name: str, *, limit: int | None, dtype: torch.dtype, on_bad_line: str,
    encoding: str, unicode_errors: str, pool: ThreadPoolExecutor | None, threads: int,
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
                                 hint="is this a vector file? pass format=... if it is not GloVe text")
    capacity = _count_lines(source, head, limit)
    source.restart(f"loading {source.path.name}")
    first = source.read(len(head))  # the same bytes as head, read again past the restart
    sink = RowSink(name, capacity, dim, dtype, on_bad_line)
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
    on_bad_line: str, encoding: str, unicode_errors: str, pool: ThreadPoolExecutor | None, threads: int,
) -> RowSink:
    nl = head.find(b"\n")
    first = head if nl < 0 else head[:nl]
    header = _text.parse_header(first)
    if header is None:
        raise VectorsFormatError(
            name, f"expected a header line 'count dim', found {first[:60]!r}", line=1,
            hint="pass format='glove' for a file without a header, or format='auto'",
        )
    count, dim = header
    if dim < 1:
        raise VectorsFormatError(name, f"the header declares dim={dim}", line=1, hint="the file is corrupt")
    rows = count if limit is None else min(count, limit)
    sink = RowSink(name, rows, dim, dtype, on_bad_line)
    rest = head[nl + 1 :] if nl >= 0 else b""
    if format == "word2vec_binary":
        _binary.read_records(
            source.read, sink, head=rest, head_offset=nl + 1, count=count, dim=dim, max_rows=rows,
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
            line=1, hint=f"the file is truncated or its header is wrong; pass limit={lines_read} to read them",
        )
    if limit is None and extra_line is not None:
        raise VectorsFormatError(
            name, f"more data lines than the {count} vectors the header declares", line=extra_line,
            hint="the header's count is wrong; pass limit=<rows> to read only the first rows",
        )
    return sink


def options_key(format: str, limit: int | None, encoding: str, unicode_errors: str, dtype: torch.dtype,
                on_bad_line: str) -> str:
    """The load options that change the result, as canonical JSON (stored in a cache)."""
    return json.dumps({"format": format, "limit": limit, "encoding": encoding, "unicode_errors": unicode_errors,
                       "dtype": str(dtype).replace("torch.", ""), "on_bad_line": on_bad_line}, sort_keys=True)
