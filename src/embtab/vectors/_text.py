"""Text vector formats: GloVe (no header), word2vec text and fastText ``.vec`` (header ``count dim``).

A row is a token, then ``dim`` numbers, separated by whitespace. Tokens may contain
spaces (glove.840B has some), so the definition is: **the last ``dim`` fields are the
vector, everything before them is the token, unless the field right before the vector
is a decimal number** (then the row has a value too many: ``cat 0.4 0.5 0.6 0.7`` for
``dim=3`` is a bad row, not the token ``'cat 0.4'``). :func:`parse_line_reference` is
that definition in plain Python, one line at a time; it is the oracle in the tests and
the path that explains bad lines.

The fast path works on a batch of lines at once:

1. in Python, per line: cut the token at the first space and check that the rest has
   exactly ``dim - 1`` spaces (``bytes.find``/``bytes.count`` run at C speed);
2. join the value parts and parse all numbers of the batch with one ``np.fromstring``
   call, which releases the GIL, so batches parse in parallel threads while the main
   thread cuts the next batch;
3. check the count and finiteness of the result (and, for float16/bfloat16 output,
   that no value is beyond the dtype's range).

Any line the fast path does not take as is (a token with spaces, a value too many,
tabs) goes through the reference parser; a bad value among the simple lines sends
its whole batch there, so errors name the exact line.
"""

from __future__ import annotations

import math
import re
import sys
from collections import deque
from concurrent.futures import Executor, Future
from typing import IO, Callable, Iterator, Sequence

import numpy as np
import torch

from ._errors import Hint
from ._rows import RowSink, decode_tokens, overflow_mask, overflow_reason

# A decimal number as written by every vector tool (and by Python/C printf): no
# underscores, no hex, ASCII digits only. nan/inf are recognised so that we can say
# "not finite" rather than "not a number".
_DECIMAL = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_FLOAT = re.compile(_DECIMAL.pattern + rb"|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_HEADER = re.compile(rb"\s*(\d+)\s+(\d+)\s*")

# Bytes of text per batch: big enough that the per-call overhead vanishes, small enough
# that the batches in flight stay a small fraction of the final matrix.
BLOCK_SIZE = 4 << 20


class BadLine(Exception):
    """A line the reference parser refuses; ``reason`` says why.

    ``kind``: ``"format"``, ``"nonfinite"`` (a NaN/inf value) or ``"overflow"`` (a value
    too large for the dtype), so that the hint can name the option that helps.
    """

    def __init__(self, reason: str, hint: Hint | None = None, kind: str = "format") -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint
        self.kind = kind


def parse_line_reference(
    line: bytes, dim: int, *, nonfinite: str = "error", dtype: torch.dtype | None = None
) -> tuple[bytes, list[float]]:
    """Split one text row into ``(token_bytes, values)``; the definition of the format.

    The last ``dim`` fields are the values and everything before them is the token,
    which may contain spaces (``new york``, ``. . .``), **unless the field right before
    the values is a decimal number** (``0.4``, ``-3``, ``1e-05``): then the row has a
    value too many (``cat 0.4 0.5 0.6 0.7`` for ``dim=3``) and is refused rather than
    read as the token ``'cat 0.4'``. A token's words may be ``nan`` or ``inf``; they
    are not decimal numbers.

    Args:
        line: one line, without its newline.
        dim: the number of values a row has.
        nonfinite: ``"error"``: a ``nan``/``inf`` value is refused; ``"keep"``: kept.
        dtype: the dtype the values will be stored in; a value that becomes inf in it
            is refused (``None``: float64, the values as returned).

    Raises:
        BadLine: the line has fewer than ``dim + 1`` fields or more values than ``dim``,
            a field that is not a decimal number, a non-finite value (unless kept), or a
            value too large for ``dtype``.
    """
    fields = line.split()
    if len(fields) < dim + 1 or (len(fields) > dim + 1 and is_decimal(fields[-dim - 1])):
        raise _wrong_width(line, fields, dim)
    token, *raw = line.strip().rsplit(None, dim)
    values = []
    for j, field in enumerate(raw):
        if _FLOAT.fullmatch(field) is None:
            if all(_FLOAT.fullmatch(f) is None for f in raw[: j + 1]) and all(
                _FLOAT.fullmatch(f) is not None for f in raw[j + 1 :]
            ):
                # Words, then only numbers: a token with spaces and too few values.
                raise _wrong_width(line, fields, dim)
            raise BadLine(f"value {j + 1} of {dim}, {_show(field)}, is not a number")
        x = float(field)
        if not math.isfinite(x):
            if _DECIMAL.fullmatch(field) is not None:  # written as a number, too large for a double
                raise BadLine(f"value {j + 1} of {dim}, {_show(field)}, overflows float64 "
                              f"(its largest finite value is {sys.float_info.max:.8g})")
            if nonfinite != "keep":
                raise BadLine(f"value {j + 1} of {dim} is {x} (not finite)", kind="nonfinite")
        values.append(x)
    if dtype is not None and dtype != torch.float64:
        fmax = torch.finfo(dtype).max
        if any(abs(x) > fmax for x in values):  # (nan compares False: kept NaNs pass)
            over = overflow_mask(np.asarray(values, dtype=np.float64), dtype)
            if over.any():
                j = int(np.flatnonzero(over)[0])
                raise BadLine(overflow_reason(values[j], j, dim, dtype, _show(raw[j])), kind="overflow")
    return token, values


def _wrong_width(line: bytes, fields: list[bytes], dim: int) -> BadLine:
    """The error for a row with too few or too many values, naming its token and the counts."""
    # The values: the run of numbers at the end of the row (the first field is always
    # the token's); the token: what comes before them.
    n = 0
    while n < len(fields) - 1 and _FLOAT.fullmatch(fields[-1 - n]) is not None:
        n += 1
    if n == 0 and len(fields) == 1 and _FLOAT.fullmatch(fields[0]) is not None:
        what = "1 field"
    elif n == len(fields) - 1 and len(fields) <= dim and _FLOAT.fullmatch(fields[0]) is not None:
        what = f"{len(fields)} fields"  # only numbers: no token, or a header
    else:
        token = line.strip().rsplit(None, n)[0] if n else line.strip()
        what = f"a token and {n} value{'s' if n != 1 else ''} (token {_show(token, 40)})"
    hint = None
    if _HEADER.fullmatch(line) is not None:
        hint = Hint("it looks like a word2vec header 'count dim': pass {format}", format=("word2vec", "auto"))
    reason = f"expected a token and {dim} value{'s' if dim != 1 else ''}, found {what}"
    if n > dim:
        reason += ("; a token may contain spaces, but the field before its values is a number here, "
                   "so the row has a value too many")
    return BadLine(reason, hint)


def is_decimal(field: bytes) -> bool:
    """Whether ``field`` is a decimal number (digits, optional sign, point, exponent): not nan/inf."""
    return _DECIMAL.fullmatch(field) is not None


def is_number(field: bytes) -> bool:
    """Whether ``field`` is a number as vector files write them: decimal, or nan/inf."""
    return _FLOAT.fullmatch(field) is not None


def parse_header(line: bytes) -> tuple[int, int] | None:
    """``(count, dim)`` from a word2vec header line, or ``None`` if it is not one."""
    m = _HEADER.fullmatch(line)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def infer_dim(lines: Sequence[bytes]) -> int | None:
    """The most common number of values per line, or ``None``.

    A line's values are its fields after the token: the first field and any words after
    it that are not decimal numbers (``new york 0.1 0.2``: 2 values). The mode, not the
    first line: tokens with spaces or one bad line at the top of a GloVe file must not
    decide the width of every row. Ties go to the earliest width.
    """
    counts: dict[int, int] = {}
    for ln in lines:
        fields = ln.split()
        k = 1
        while k < len(fields) - 1 and _DECIMAL.fullmatch(fields[k]) is None:
            k += 1  # a word of the token
        n = len(fields) - k
        if n >= 1:
            counts[n] = counts.get(n, 0) + 1
    if not counts:
        return None
    # max() returns the first of equal counts: ties go to the width seen first (dicts keep order).
    return max(counts, key=counts.__getitem__)


def _show(field: bytes, n: int = 30) -> str:
    return repr(field[:n].decode("utf-8", "replace") + ("..." if len(field) > n else ""))


# ---------------------------------------------------------------------- fast path
def _cut_batch(lines: list[bytes], dim: int) -> tuple[list[bytes], bytes, list[int]]:
    """Tokens and joined values of the simple lines of a batch, and the positions of the others.

    A simple line is ``token value ... value``, single spaces, the token without spaces.
    """
    toks = []
    rests = []
    slow = []
    spaces = dim - 1
    for k, ln in enumerate(lines):
        i = ln.find(b" ")
        rest = ln[i + 1 :].rstrip()
        # i <= 0: no space or a leading space. A wrong count of spaces: a token with
        # spaces, a missing or extra value, tabs, doubled spaces. All go the slow way.
        if i <= 0 or rest.count(b" ") != spaces:
            slow.append(k)
            continue
        toks.append(ln[:i])
        rests.append(rest)
    return toks, b" ".join(rests), slow


def _parse_values(joined: bytes, rows: int, dim: int, np_dtype: type, fmax: float | None = None) -> np.ndarray | None:
    """All numbers of a batch, ``(rows, dim)``; ``None`` when they are not exactly that,
    or not all finite, or (``fmax``) not all at most ``fmax`` in magnitude.

    Runs in a worker thread: ``np.fromstring`` releases the GIL. It stops at the first
    field it cannot parse (with a DeprecationWarning in numpy 2.x, a ValueError later),
    which shows as a short count here. A value too large for float32 parses as inf.
    ``fmax``: the largest finite value of a narrower output dtype (float16, bfloat16),
    whose overflows the reference path then finds and names.
    """
    try:
        flat = np.fromstring(joined, dtype=np_dtype, sep=" ")  # (rows * dim,)
    except (ValueError, DeprecationWarning):
        return None
    if flat.size != rows * dim:
        return None
    values = flat.reshape(rows, dim)
    if not np.isfinite(values).all():
        return None
    if fmax is not None and np.abs(values).max(initial=0.0) > fmax:
        return None
    return values


class _Batch:
    __slots__ = ("line_nos", "lines", "toks", "slow", "future")

    def __init__(self, line_nos: np.ndarray, lines: list[bytes]) -> None:
        self.line_nos = line_nos  # (k,) 1-based line number of each line
        self.lines = lines
        self.toks: list[bytes] = []
        self.slow: list[int] = []  # positions of the lines the fast path does not take
        self.future: Future | None = None


def iter_lines(read: Callable[[int], bytes], first_line_no: int, block_size: int | None = None,
               head: bytes = b"") -> Iterator[tuple[np.ndarray, list[bytes]]]:
    """Batches of non-blank lines, with their 1-based line numbers.

    Args:
        read: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end.
        first_line_no: the number of the first line ``read`` returns.
        head: bytes already read from the stream, to parse first.
    """
    block_size = block_size or BLOCK_SIZE
    carry = head
    line_no = first_line_no
    while True:
        block = read(block_size)
        if not block:
            break
        data = carry + block if carry else block
        lines = data.split(b"\n")
        carry = lines.pop()  # an incomplete last line waits for the next block
        if lines:
            yield _drop_blank(lines, line_no)
            line_no += len(lines)
    lines = carry.split(b"\n")
    if not lines[-1]:
        lines.pop()
    if lines:
        yield _drop_blank(lines, line_no)


def _drop_blank(lines: list[bytes], first: int) -> tuple[np.ndarray, list[bytes]]:
    nos = np.arange(first, first + len(lines), dtype=np.int64)
    blank = [k for k, ln in enumerate(lines) if not ln or ln.isspace()]
    if not blank:
        return nos, lines
    keep = np.ones(len(lines), dtype=bool)
    keep[blank] = False
    blank_set = set(blank)
    return nos[keep], [ln for k, ln in enumerate(lines) if k not in blank_set]


def read_rows(
    batches: Iterator[tuple[np.ndarray, list[bytes]]],
    sink: RowSink,
    *,
    dim: int,
    max_lines: int | None,
    encoding: str,
    unicode_errors: str,
    np_dtype: type,
    pool: Executor | None,
    in_flight: int,
) -> tuple[int, int | None]:
    """Parse text rows into ``sink``, in file order.

    Args:
        batches: from :func:`iter_lines`.
        max_lines: stop after this many data lines (bad ones included); ``None``: all.
        pool: threads for the number parsing, or ``None`` to parse inline.
        in_flight: batches submitted ahead of the one being stored.

    Returns:
        ``(lines_read, extra_line)``: the data lines consumed, and the line number of
        the first data line left unread after ``max_lines`` (``None`` if there is none).
    """
    queue: deque[_Batch] = deque()
    lines_read = 0
    extra_line: int | None = None
    # float32 overflows show as inf; narrower dtypes are parsed as float64 and checked.
    fmax = torch.finfo(sink.dtype).max if sink.dtype in (torch.float16, torch.bfloat16) else None

    def submit(batch: _Batch) -> None:
        batch.toks, joined, batch.slow = _cut_batch(batch.lines, dim)
        if batch.toks:
            args = (joined, len(batch.toks), dim, np_dtype, fmax)
            if pool is None:
                done: Future = Future()
                done.set_result(_parse_values(*args))
                batch.future = done
            else:
                batch.future = pool.submit(_parse_values, *args)
        queue.append(batch)

    for line_nos, lines in batches:
        if max_lines is not None:
            room = max_lines - lines_read
            if len(lines) > room:
                if extra_line is None:
                    extra_line = int(line_nos[room])
                line_nos, lines = line_nos[:room], lines[:room]
        if lines:
            lines_read += len(lines)
            submit(_Batch(line_nos, lines))
        while len(queue) > in_flight:
            _store(queue.popleft(), sink, dim, encoding, unicode_errors)
        if max_lines is not None and lines_read >= max_lines:
            if extra_line is None:
                # The batch ended exactly at the limit: is there another data line?
                for more_nos, _ in batches:
                    if len(more_nos):
                        extra_line = int(more_nos[0])
                        break
            break
    while queue:
        _store(queue.popleft(), sink, dim, encoding, unicode_errors)
    return lines_read, extra_line


def _store(batch: _Batch, sink: RowSink, dim: int, encoding: str, unicode_errors: str) -> None:
    fast_values = fast_tokens = None
    if batch.future is not None:
        fast_values = batch.future.result()  # (len(toks), D) or None
        if fast_values is not None:
            fast_tokens = decode_tokens(batch.toks, encoding, unicode_errors)
        if fast_tokens is None:
            # A bad value or token among the simple lines: every line the slow way,
            # so that the error names the first bad line.
            _store_reference(batch.line_nos, batch.lines, sink, dim, encoding, unicode_errors)
            return
    if not batch.slow:
        sink.add(fast_tokens, fast_values, batch.line_nos)
        return
    # Some lines (tokens with spaces, odd spacing, bad rows) need the reference parser;
    # the simple lines are fine, so the first bad line is among these.
    slow_nos = batch.line_nos[batch.slow]
    slow_tokens, slow_values, slow_where = _parse_reference(
        slow_nos, [batch.lines[k] for k in batch.slow], sink, dim, encoding, unicode_errors
    )
    fast_mask = np.ones(len(batch.lines), dtype=bool)
    fast_mask[batch.slow] = False
    n_fast = len(batch.toks)
    # Merge in file order: rows sorted by line number.
    where = np.concatenate([batch.line_nos[fast_mask], slow_where])
    order = np.argsort(where, kind="stable")
    values = np.empty((len(where), dim), dtype=fast_values.dtype if fast_values is not None else np.float64)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))  # rank[j]: position of source row j in file order
    if n_fast:
        values[rank[:n_fast]] = fast_values
    if len(slow_tokens):
        values[rank[n_fast:]] = slow_values
    tokens: list[str] = [""] * len(where)
    for j, tok in zip(rank.tolist(), (fast_tokens or []) + slow_tokens):
        tokens[j] = tok
    sink.add(tokens, values, where[order])


def _store_reference(
    line_nos: np.ndarray, lines: list[bytes], sink: RowSink, dim: int, encoding: str, unicode_errors: str
) -> None:
    """The slow path for a batch: each line through :func:`parse_line_reference`."""
    tokens, values, where = _parse_reference(line_nos, lines, sink, dim, encoding, unicode_errors)
    sink.add(tokens, values, where)


def _parse_reference(
    line_nos: np.ndarray, lines: list[bytes], sink: RowSink, dim: int, encoding: str, unicode_errors: str
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Tokens, ``(k, dim)`` float64 values and line numbers of the good lines; bad ones go to ``sink.bad``."""
    tokens: list[str] = []
    rows: list[list[float]] = []
    where: list[int] = []
    for line_no, line in zip(line_nos.tolist(), lines):
        try:
            tok_bytes, vals = parse_line_reference(line, dim, nonfinite=sink.nonfinite, dtype=sink.dtype)
        except BadLine as e:
            sink.bad(e.reason, line=line_no, hint=e.hint or sink.hint_for(e.kind))
            continue
        try:
            tok = tok_bytes.decode(encoding, unicode_errors)
        except UnicodeDecodeError as e:
            sink.bad(
                f"the token {tok_bytes[:40]!r} is not valid {encoding} ({e.reason} at byte {e.start})",
                line=line_no,
                hint=Hint("pass the file's {encoding}, or {unicode_errors}", encoding=(...,),
                          unicode_errors=("replace", "ignore")),
            )
            continue
        tokens.append(tok)
        rows.append(vals)
        where.append(line_no)
    # Doubles: rounding them once to the output dtype gives exactly what the fast path
    # gives (it parses each number to the nearest double and rounds once too).
    values = np.asarray(rows, dtype=np.float64).reshape(len(rows), dim)
    return tokens, values, np.asarray(where, dtype=np.int64)


# ---------------------------------------------------------------------- writing
def write_text(
    f: IO[bytes], tokens: Sequence[str], matrix: torch.Tensor, *, header: bool, path: str
) -> None:
    """Write rows as text: ``token v1 v2 ...``, one per line, after an optional header.

    Values are written with enough digits to read back exactly (9 significant digits
    for float32 and narrower, 17 for float64). Every token written reads back as itself:
    one that could not (a token with spaces ending in a number) is refused.
    """
    n, dim = matrix.shape
    for i, tok in enumerate(tokens):
        if not tok or tok != tok.strip() or "\n" in tok or "\r" in tok:
            raise ValueError(
                f"cannot write token {tok!r} (row {i}) to a text vector file {path}: tokens "
                f"must be non-empty, without newlines or leading/trailing whitespace"
            )
        parts = tok.encode("utf-8", "surrogatepass").split()
        if len(parts) > 1 and is_decimal(parts[-1]):
            raise ValueError(
                f"cannot write token {tok!r} (row {i}) to a text vector file {path}: a token with spaces "
                f"must not end in a number, or it reads back as a row with a value too many"
            )
    digits = 17 if matrix.dtype == torch.float64 else 9
    row_fmt = " ".join([f"%.{digits}g"] * dim) + "\n"
    if header:
        f.write(f"{n} {dim}\n".encode())
    for start in range(0, n, 4096):
        # Block by block: a float64 copy of the whole matrix would double the memory.
        block = matrix[start : start + 4096].detach().to("cpu", torch.float64).tolist()
        chunk = "".join(tok + " " + row_fmt % tuple(row) for tok, row in zip(tokens[start : start + 4096], block))
        f.write(chunk.encode("utf-8"))


__all__ = [
    "BadLine", "parse_line_reference", "is_number", "parse_header", "infer_dim",
    "iter_lines", "read_rows", "write_text",
]
