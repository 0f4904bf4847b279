"""Files written atomically: a temp file in the same folder, fsync, rename.

A reader (or a resumed run after ``kill -9``) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Sequence


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode open() would have.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete the temp files that :func:`atomic_open` left in ``folder`` when its process
    was killed mid-write (their names are its own: ``.NAME.XXXX.tmp``); returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# safetensors' names for the dtypes we store.
SAFETENSORS_DTYPES = {
    "float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
}


def write_safetensors(
    path: str | os.PathLike[str], entries: Sequence[tuple[str, str, Sequence[int], Any]], metadata: dict[str, str],
) -> None:
    """Write a safetensors file atomically, streaming each buffer as it is.

    ``entries``: (name, safetensors dtype such as "F32", shape, buffer), the buffer
    anything ``memoryview`` takes (a contiguous little-endian numpy array, bytes).
    Unlike ``safetensors.torch.save`` nothing is copied: no clone per tensor, no
    whole file built in memory first.
    """
    views = [memoryview(buf).cast("B") for _, _, _, buf in entries]
    header: dict[str, Any] = {}
    offset = 0
    for (name, dtype, shape, _), view in zip(entries, views):
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + view.nbytes]}
        offset += view.nbytes
    header["__metadata__"] = metadata
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    head += b" " * (-(8 + len(head)) % 8)  # the data starts 8-byte aligned (safetensors allows the padding)
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for view in views:
            if view.nbytes:
                f.write(view)
