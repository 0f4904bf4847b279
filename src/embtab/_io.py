"""Files written atomically: a temp file in the same folder, fsync, rename.

A reader (or a resumed run after ``kill -9``) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import socket
import struct
from pathlib import Path
from typing import IO, Any, Iterator, Sequence


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the umask,
    applied by the kernel: the umask is never read or changed). The temp file's name
    holds its writer's identity (see :func:`remove_stale_temps`).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
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


# --- temp files and their writers -------------------------------------------------------
#
# A temp file is named ``.NAME.<pid>-<start>-<host>-<boot>-<random>.tmp``: the writer's
# pid, its start time (clock ticks after boot, 0 where unknown: it tells a live writer
# from another process that got the same pid later), a hash of the host name and one of
# the kernel's boot id (a folder on a network file system is shared by processes of
# other hosts, whose pids mean nothing here).

_TEMP = re.compile(
    r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-[0-9a-z]{6}\.tmp$"
)
_UNKNOWN = "0" * 8


def _tag(text: str | None) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8] if text else _UNKNOWN


def _read_first_line(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def _start_time(pid: int) -> int:
    """When process ``pid`` started, in clock ticks after boot (``/proc/<pid>/stat``); 0 if unknown."""
    stat = _read_first_line(f"/proc/{pid}/stat")
    if stat is None:
        return 0
    # Field 22; the command name (field 2, in parentheses) may hold spaces and parentheses.
    rest = stat.rsplit(")", 1)[-1].split()
    return int(rest[19]) if len(rest) > 19 and rest[19].isdigit() else 0


@functools.lru_cache(maxsize=1)
def _host_tags() -> tuple[str, str]:
    return _tag(socket.gethostname()), _tag(_read_first_line("/proc/sys/kernel/random/boot_id"))


def _owner_tag() -> str:
    pid = os.getpid()  # not cached: a forked child is another writer
    host, boot = _host_tags()
    return f"{pid}-{_start_time(pid)}-{host}-{boot}"


def _create_temp(path: Path) -> tuple[int, str]:
    owner = _owner_tag()
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        token = "".join(secrets.choice(alphabet) for _ in range(6))
        # (the name cut short so that the temp name stays within NAME_MAX)
        tmp = str(path.parent / f".{path.name[:150]}.{owner}-{token}.tmp")
        try:
            # O_EXCL: never an existing file (or a planted link); 0o666: the kernel applies
            # the umask and any default ACL, exactly as for open().
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"atomic_open: no free temp file name beside {str(path)!r}")


def _writer_is_gone(match: re.Match[str]) -> bool:
    """True only when the temp file's writer has certainly ended."""
    host, boot = _host_tags()
    if match["host"] != host:
        return False  # another host's file (a network folder): its pid says nothing here
    if match["boot"] != boot:
        # Same host: a writer of an earlier boot has ended (unless the boot id is unknown).
        return _UNKNOWN not in (boot, match["boot"])
    pid, start = int(match["pid"]), int(match["start"])
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would signal a group / kill on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, another user's
        pass
    # A live process with that pid: the writer, or a later process that got its pid.
    now = _start_time(pid)
    return bool(start and now and now != start)


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete the temp files that :func:`atomic_open` left in ``folder`` when their writer
    was killed mid-write; returns how many.

    Only the files of writers that have certainly ended are deleted: a live writer's
    (another thread or process writing now) is kept, and so is one whose writer cannot
    be told (another host's, or not named by :func:`atomic_open`).
    """
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            match = _TEMP.match(p.name)
            if match is not None and _writer_is_gone(match):
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


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
    *, checksum: bool = False,
) -> None:
    """Write a safetensors file atomically, streaming each buffer as it is.

    ``entries``: (name, safetensors dtype such as "F32", shape, buffer), the buffer
    anything ``memoryview`` takes (a contiguous little-endian numpy array, bytes).
    Unlike ``safetensors.torch.save`` nothing is copied: no clone per tensor, no
    whole file built in memory first. ``checksum``: the sha256 of the data section goes
    into the metadata as ``data_sha256`` (see :func:`check_safetensors_data`).
    """
    views = [memoryview(buf).cast("B") for _, _, _, buf in entries]
    if checksum:
        digest = hashlib.sha256()
        for view in views:  # the data section, in file order
            digest.update(view)
        metadata = {**metadata, DATA_SHA256: digest.hexdigest()}
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


DATA_SHA256 = "data_sha256"


def check_safetensors_data(path: str | os.PathLike[str], metadata: dict[str, str]) -> str | None:
    """Why the data section of a safetensors file written with ``checksum=True`` is damaged
    (a bit flipped inside a tensor leaves the file readable), or None: it matches, or the
    file has no checksum (written without one)."""
    expected = metadata.get(DATA_SHA256)
    if expected is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + header_len)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() == expected:
        return None
    return (f"its tensors do not match the checksum written with them (sha256 {digest.hexdigest()[:12]}..., "
            f"expected {expected[:12]}...)")

