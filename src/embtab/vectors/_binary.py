"""The word2vec C tool's binary format.

A header line ``count dim\\n``, then ``count`` records: the token's bytes, one space,
``dim`` little-endian float32 values (``4 * dim`` raw bytes), and usually a newline,
which the next token must not start with (we strip leading newlines from tokens, as
the C tool and gensim do).

Records have variable length, so the reader walks them in Python, but only to find
the boundaries: the vector bytes of a whole block of records are joined once and
viewed as a ``(k, dim)`` float32 array, never converted value by value.
"""

from __future__ import annotations

from typing import IO, Callable, Sequence

import numpy as np
import torch

from ._errors import Hint, VectorsFormatError
from ._rows import RowSink, decode_tokens, overflow_mask, overflow_reason

BLOCK_SIZE = 4 << 20
# A token longer than this is a misaligned record (wrong dim in the header) or not a
# word2vec file at all; the C tool itself caps words at 100 characters.
MAX_TOKEN_BYTES = 4096


def read_records(
    read: Callable[[int], bytes],
    sink: RowSink,
    *,
    head: bytes,
    head_offset: int,
    count: int,
    dim: int,
    max_rows: int,
    encoding: str,
    unicode_errors: str,
    check_trailing: bool = True,
    block_size: int | None = None,
) -> None:
    """Read ``max_rows`` records into ``sink``.

    Args:
        read: ``read(n)`` returns up to ``n`` more bytes, ``b""`` at the end.
        head: bytes already read, right after the header line.
        head_offset: byte offset of ``head[0]`` in the file.
        count: the header's count (for messages).
        check_trailing: after ``max_rows`` records, require the end of the file (so that
            a header count smaller than the file is an error).
    """
    block_size = block_size or BLOCK_SIZE
    path = sink.path
    nbytes = 4 * dim
    buf = head
    base = head_offset  # file offset of buf[0]
    pos = 0
    done = 0
    while True:
        toks: list[bytes] = []
        slices: list[memoryview] = []
        where: list[int] = []
        mv = memoryview(buf)
        while done + len(toks) < max_rows:
            sp = buf.find(b" ", pos, pos + MAX_TOKEN_BYTES + 1)
            if sp < 0:
                if len(buf) - pos > MAX_TOKEN_BYTES:
                    raise VectorsFormatError(
                        path,
                        f"no space after a token within {MAX_TOKEN_BYTES} bytes (record {done + len(toks) + 1})",
                        offset=base + pos,
                        hint="the header's dim is wrong or this is not a word2vec binary file",
                    )
                break
            end = sp + 1 + nbytes
            if end > len(buf):
                break
            tok = buf[pos:sp].lstrip(b"\n")  # the newline that ended the previous record
            toks.append(tok)
            slices.append(mv[sp + 1 : end])
            where.append(base + sp - len(tok))
            pos = end
        if toks:
            _store(toks, slices, where, sink, dim, encoding, unicode_errors)
            done += len(toks)
        slices = []
        mv.release()
        if done >= max_rows:
            break
        block = read(block_size)
        if not block:
            _raise_truncated(path, buf, pos, base, done, count, nbytes)
        buf = buf[pos:] + block
        base += pos
        pos = 0
    if check_trailing:
        _check_trailing(path, read, buf, pos, base, count)


def _store(
    toks: list[bytes], slices: list[memoryview], where: list[int], sink: RowSink,
    dim: int, encoding: str, unicode_errors: str,
) -> None:
    values = np.frombuffer(b"".join(slices), dtype="<f4").reshape(len(toks), dim)  # (k, D)
    finite = np.isfinite(values)  # (k, D)
    over = overflow_mask(values, sink.dtype)  # (k, D): finite float32, inf in a narrower dtype
    bad = over.any(axis=1)  # (k,)
    if sink.nonfinite != "keep":
        bad |= ~finite.all(axis=1)
    tokens = decode_tokens(toks, encoding, unicode_errors)
    if tokens is not None and not bad.any():
        sink.add(tokens, values, np.asarray(where, dtype=np.int64))
        return
    # Slow path: find the bad records, in order.
    good_tokens, good_rows, good_where = [], [], []
    for k, (tb, off) in enumerate(zip(toks, where)):
        try:
            tok = tb.decode(encoding, unicode_errors)
        except UnicodeDecodeError as e:
            sink.bad(
                f"the token {tb[:40]!r} is not valid {encoding} ({e.reason} at byte {e.start} of the token)",
                offset=off,
                hint=Hint("pass the file's {encoding}, or {unicode_errors} (the C tool may cut multi-byte "
                          "characters)", encoding=(...,), unicode_errors=("replace", "ignore")),
            )
            continue
        if bad[k]:
            row_bad = over[k] if sink.nonfinite == "keep" else over[k] | ~finite[k]
            j = int(np.flatnonzero(row_bad)[0])
            if over[k, j]:
                sink.bad(overflow_reason(float(values[k, j]), j, dim, sink.dtype, token=tok), offset=off,
                         hint=sink.hint_for("overflow"))
            else:
                sink.bad(f"value {j + 1} of {dim} for token {tok!r} is {values[k, j]} (not finite)",
                         offset=off, hint=sink.hint_for("nonfinite"))
            continue
        good_tokens.append(tok)
        good_rows.append(k)
        good_where.append(off)
    if good_tokens:
        sink.add(good_tokens, values[good_rows], np.asarray(good_where, dtype=np.int64))


def _raise_truncated(path: str, buf: bytes, pos: int, base: int, done: int, count: int, nbytes: int) -> None:
    rest = buf[pos:]
    if rest.strip(b"\n \t\r"):
        skip = len(rest) - len(rest.lstrip(b"\n"))  # the newline ending the previous record
        pos += skip
        rest = rest[skip:]
        sp = rest.find(b" ")
        token = rest[:sp] if sp >= 0 else rest[:40]
        have = len(rest) - sp - 1 if sp >= 0 else 0
        reason = (
            f"the file ends inside record {done + 1} of {count} (token {token[:40]!r}): "
            f"{nbytes} bytes of vector expected, {have} found"
        )
    else:
        reason = f"the header declares {count} vectors but the file ends after {done}"
    raise VectorsFormatError(
        path, reason, offset=base + pos,
        hint=Hint("the file is truncated or its header is wrong; pass {limit} to read the complete records",
                  limit=(done,)),
    )


def _check_trailing(path: str, read: Callable[[int], bytes], buf: bytes, pos: int, base: int, count: int) -> None:
    rest = buf[pos:]
    while True:
        stripped = rest.lstrip(b"\n \t\r")
        if stripped:
            offset = base + pos + (len(rest) - len(stripped))
            raise VectorsFormatError(
                path,
                f"more data after the {count} vectors the header declares",
                offset=offset,
                hint=Hint("the header's count is wrong; pass {limit} to read only the first rows", limit=(...,)),
            )
        base += pos + len(rest)
        pos = 0
        rest = read(BLOCK_SIZE)
        if not rest:
            return


def write_binary(f: IO[bytes], tokens: Sequence[str], matrix: torch.Tensor, *, path: str) -> None:
    """Write rows in the C tool's binary format (a newline after each vector, as it does)."""
    n, dim = matrix.shape
    for i, tok in enumerate(tokens):
        if not tok or " " in tok or tok.startswith("\n"):
            raise ValueError(
                f"cannot write token {tok!r} (row {i}) to a word2vec binary file {path}: tokens "
                f"must be non-empty, without spaces, and not start with a newline"
            )
    f.write(f"{n} {dim}\n".encode())
    for start in range(0, n, 4096):
        block = matrix[start : start + 4096].detach().to("cpu", torch.float32).numpy().astype("<f4")
        parts = []
        for tok, row in zip(tokens[start : start + 4096], block):
            parts.append(tok.encode("utf-8") + b" " + row.tobytes() + b"\n")
        f.write(b"".join(parts))
