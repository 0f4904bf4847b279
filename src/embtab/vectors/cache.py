"""The cache format: a safetensors file that loads memory-mapped.

Layout (a valid safetensors file, readable by ``safetensors.safe_open``):

``token_lengths``  int64 ``(n,)``: the length of each token, in characters
``vectors``        ``(n, dim)`` in the vectors' dtype, 8-byte aligned, memory-mapped on load
``token_chars``    uint8: all tokens, UTF-8, one after the other

and string metadata: ``format`` (``"embtab.vectors"``), ``format_version``, ``count``,
``dim``, ``nonfinite_rows`` (rows holding NaN or inf, so that a load need not read the
matrix to know there are none), and where the vectors came from: ``source`` (file name),
``source_format``, ``source_sha256`` (SHA-256 of the source file's bytes) and
``load_options`` (JSON).

Only an embtab cache is ever replaced by one (:func:`not_a_cache` says why another file
is not): a ``cache=`` argument or an output path that names a text file, another
safetensors file or the source itself is refused, never overwritten.

The file is written by us, not by ``safetensors.torch.save_file``, so that the matrix
goes from memory to disk without an intermediate copy, and read by us, so that the
matrix is an ``np.memmap``: loading costs the token list, not the matrix.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch

from .._io import write_safetensors
from ._errors import Hint, VectorsFormatError

FORMAT_NAME = "embtab.vectors"
FORMAT_VERSION = 1

_ST_DTYPES: dict[torch.dtype, tuple[str, str]] = {
    # torch dtype: (safetensors name, numpy dtype of the raw bytes)
    torch.float32: ("F32", "<f4"),
    torch.float64: ("F64", "<f8"),
    torch.float16: ("F16", "<f2"),
    torch.bfloat16: ("BF16", "<i2"),  # numpy has no bfloat16: map the bits, view in torch
}
_FROM_ST = {name: dt for dt, (name, _) in _ST_DTYPES.items()}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def is_cache_file(head: bytes) -> bool:
    """Whether the first bytes of a file look like a safetensors file."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= _MAX_HEADER and head[8:9] == b"{"


def not_a_cache(path: str | os.PathLike[str]) -> str | None:
    """Why the existing file ``path`` is not an embtab vectors cache, or ``None`` if it is one
    (a file whose header says so, even if its data is damaged) or is empty."""
    path = Path(path)
    if path.is_dir():
        return "it is a directory"
    try:
        size = path.stat().st_size
        if size == 0:
            return None  # nothing to lose
        with open(path, "rb") as f:
            first = f.read(8)
            if len(first) == 8:
                (n_head,) = struct.unpack("<Q", first)
                if 0 < n_head <= min(_MAX_HEADER, size - 8):
                    raw = f.read(n_head)
                    try:
                        header = json.loads(raw.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        header = None
                    if isinstance(header, dict):
                        meta = header.get("__metadata__") or {}
                        if isinstance(meta, dict) and meta.get("format") == FORMAT_NAME:
                            return None
                        tensors = sorted(k for k in header if k != "__metadata__")[:5]
                        return f"it is a safetensors file with tensors {tensors}, not an embtab vectors cache"
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    with open(path, "rb") as f:
        start = f.read(24)
    return f"it is not a safetensors file (it starts with {start!r})"


def check_replaceable(path: str | os.PathLike[str], where: str, what: str) -> None:
    """Raise ``ValueError`` if ``path`` exists and is not an embtab cache: it is never replaced by one."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    why = not_a_cache(path)
    if why is not None:
        raise ValueError(
            f"{where}: {what} {str(path)!r} exists and {why}; refusing to replace it with a vectors cache: "
            f"pass another path (ending in .safetensors), or delete the file first if it is no longer needed"
        )


def write_cache(
    path: str | os.PathLike[str],
    tokens: list[str],
    matrix: torch.Tensor,
    metadata: dict[str, str],
) -> None:
    """Write ``tokens`` and ``matrix`` (n, dim) atomically (temp file, fsync, rename)."""
    n, dim = matrix.shape
    if matrix.dtype not in _ST_DTYPES:
        raise TypeError(f"Vectors.save: cannot store dtype {matrix.dtype}; convert the vectors to float32")
    st_name, raw_dtype = _ST_DTYPES[matrix.dtype]
    # surrogatepass: tokens decoded with unicode_errors="surrogateescape" survive the trip.
    chars = "".join(tokens).encode("utf-8", "surrogatepass")
    lengths = np.fromiter((len(t) for t in tokens), dtype="<i8", count=n)
    data = matrix.detach().to("cpu").contiguous()
    raw = data.view(torch.int16) if matrix.dtype == torch.bfloat16 else data
    mat_bytes = raw.numpy().astype(raw_dtype, copy=False)
    nonfinite_rows = 0
    for start in range(0, n, 1 << 16):  # block by block: no whole-matrix temporary
        nonfinite_rows += int((~torch.isfinite(data[start : start + (1 << 16)]).all(1)).sum())
    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "count": str(n), "dim": str(dim),
            "nonfinite_rows": str(nonfinite_rows)}
    meta.update(metadata)
    write_safetensors(path, [("token_lengths", "I64", [n], lengths),
                             ("vectors", st_name, [n, dim], mat_bytes.reshape(-1)),
                             ("token_chars", "U8", [len(chars)], chars)], meta)


def read_cache(path: str | os.PathLike[str]) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """``(tokens, matrix, metadata)`` of a cache file; the matrix is memory-mapped (copy-on-write).

    Raises:
        ValueError: the file is not a safetensors file, not an embtab vectors cache, from
            a newer embtab, or truncated.
    """
    path = Path(path)
    size = path.stat().st_size
    rewrite = "write the cache again (Vectors.save, or embtab vectors convert)"
    with open(path, "rb") as f:
        first = f.read(8)
        if len(first) < 8:
            raise VectorsFormatError(path, f"not a vectors cache file: only {len(first)} bytes",
                                     hint=Hint("pass the file's real {format}", format=("auto",)))
        (n_head,) = struct.unpack("<Q", first)
        if not 0 < n_head <= min(_MAX_HEADER, size - 8):
            raise VectorsFormatError(
                path, f"not a safetensors file (header length {n_head} for a file of {size} bytes)",
                hint=Hint("pass {format} or the file's real format", format=("auto",)),
            )
        try:
            header = json.loads(f.read(n_head).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VectorsFormatError(path, f"corrupt safetensors header ({e})", hint=rewrite) from e
        if not isinstance(header, dict):
            raise VectorsFormatError(path, "corrupt safetensors header", hint=rewrite)
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT_NAME:
            raise VectorsFormatError(
                path, f"a safetensors file, but not an embtab vectors cache (metadata format="
                      f"{meta.get('format')!r}, tensors {sorted(k for k in header if k != '__metadata__')})",
                hint="write one with Vectors.save() or embtab vectors convert",
            )
        version = meta.get("format_version", "")
        if not version.isdigit() or int(version) < 1:
            raise VectorsFormatError(path, f"bad format_version {version!r}", hint=rewrite)
        if int(version) > FORMAT_VERSION:
            raise VectorsFormatError(
                path, f"written by a newer embtab (format_version {version}; this version reads "
                      f"up to {FORMAT_VERSION})", hint="upgrade embtab"
            )
        try:
            specs = {k: header[k] for k in ("token_lengths", "vectors", "token_chars")}
            n, dim = (int(x) for x in specs["vectors"]["shape"])
            dtype = _FROM_ST[specs["vectors"]["dtype"]]
            offs = {k: tuple(int(x) for x in v["data_offsets"]) for k, v in specs.items()}
        except (KeyError, TypeError, ValueError) as e:
            raise VectorsFormatError(path, f"corrupt cache header ({e!r})", hint=rewrite) from e
        data_start = 8 + n_head
        end = max(b for _, b in offs.values())
        if data_start + end != size:
            raise VectorsFormatError(
                path, f"the file has {size} bytes but its header describes {data_start + end}; it is truncated "
                      f"or corrupt", hint=rewrite,
            )
        raw_dtype = _ST_DTYPES[dtype][1]
        a, b = offs["vectors"]
        if b - a != n * dim * np.dtype(raw_dtype).itemsize:
            raise VectorsFormatError(path, f"corrupt cache: vectors size does not match shape {(n, dim)}", hint=rewrite)
        a_l, b_l = offs["token_lengths"]
        a_c, b_c = offs["token_chars"]
        if b_l - a_l != 8 * n:
            raise VectorsFormatError(path, f"corrupt cache: {b_l - a_l} bytes of token lengths for {n} tokens",
                                     hint=rewrite)
        f.seek(data_start + a_l)
        lengths = np.frombuffer(f.read(b_l - a_l), dtype="<i8")
        f.seek(data_start + a_c)
        chars = f.read(b_c - a_c).decode("utf-8", "surrogatepass")
    if int(lengths.sum()) != len(chars) or (n and int(lengths.min()) < 0):
        raise VectorsFormatError(path, "corrupt cache: token lengths do not add up", hint=rewrite)
    ends = list(accumulate(lengths.tolist()))
    starts = [0] + ends[:-1]
    tokens = [chars[s:e] for s, e in zip(starts, ends)]
    if n == 0:
        matrix = torch.empty((0, dim), dtype=dtype)
    else:
        # mode="c": copy-on-write pages; the tensor is writable, the file never changes.
        mm = np.memmap(path, dtype=raw_dtype, mode="c", offset=data_start + a, shape=(n, dim))
        if sys.byteorder != "little":
            mm = mm.astype(mm.dtype.newbyteorder("="))
        matrix = torch.from_numpy(mm)
        if dtype == torch.bfloat16:
            matrix = matrix.view(torch.bfloat16)
    return tokens, matrix, dict(meta)
