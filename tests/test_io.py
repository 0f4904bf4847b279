"""Atomic writes: all or nothing, with the mode a plain open() would give; stale temp
files of dead writers cleaned, a live writer's kept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from embtab import _io
from embtab._io import atomic_open, atomic_write_text, remove_stale_temps


def _plain_open_mode(folder: Path) -> int:
    probe = folder / "probe"
    probe.write_text("")
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return mode


def test_atomic_write_replaces_whole_file_with_normal_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert target.stat().st_mode & 0o777 == _plain_open_mode(target.parent)
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temp files left


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_bad_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX modes")
def test_import_never_changes_the_umask_and_writes_follow_the_current_one(tmp_path: Path) -> None:
    """``import embtab`` used to set the umask to 0 for a moment (a file another thread
    created then was world-writable); and a umask set after the import must count."""
    out = tmp_path / "f.txt"
    result = _python(f"""
        import os
        calls = []
        real = os.umask
        os.umask = lambda mask: (calls.append(mask), real(mask))[1]
        import embtab
        from embtab._io import atomic_write_text
        assert calls == [], f"os.umask called: {{calls}}"
        os.umask = real
        os.umask(0o027)  # after the import
        atomic_write_text({str(out)!r}, "x")
        print(oct(os.stat({str(out)!r}).st_mode & 0o777))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0o640"


def _writer_script(target: Path, *, wait: bool) -> str:
    # Writes half a file with atomic_open, then waits for a line on stdin (a live
    # writer) or dies on the spot, as kill -9 would leave it.
    return f"""
        import os, sys
        from embtab._io import atomic_open
        with atomic_open({str(target)!r}, "wb") as f:
            f.write(b"half")
            f.flush()
            print("writing", flush=True)
            if {wait!r}:
                sys.stdin.readline()
                f.write(b" and the rest")
            else:
                os._exit(0)
    """


def test_stale_temps_of_a_dead_writer_are_removed_a_live_writers_kept(tmp_path: Path) -> None:
    target = tmp_path / "c.safetensors"
    dead = _python(_writer_script(target, wait=False))
    assert dead.returncode == 0 and dead.stdout == "writing\n", dead.stderr
    (stale,) = tmp_path.glob(".*.tmp")

    live = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_writer_script(target, wait=True))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "writing\n"
        live_temps = set(tmp_path.glob(".*.tmp")) - {stale}
        assert len(live_temps) == 1
        assert remove_stale_temps(tmp_path) == 1
        assert not stale.exists()
        assert live_temps.pop().exists()  # the live writer's file is kept...
        live.stdin.write("go\n")
        live.stdin.flush()
        assert live.wait(timeout=60) == 0
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert target.read_bytes() == b"half and the rest"  # ...so its rename succeeds
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_a_temp_whose_writer_cannot_be_told_is_kept(tmp_path: Path) -> None:
    host, boot = _io._host_tags()
    pid = os.getpid()
    start = _io._start_time(pid)
    other_host = "f" * 8 if host != "f" * 8 else "e" * 8
    kept = [
        ".x.abc123.tmp",  # not named by atomic_open: whose is it?
        f".x.{pid}-{start}-{other_host}-{boot}-abcdef.tmp",  # another host's (a network folder)
        f".x.{pid}-{start}-{host}-{boot}-abcdef.tmp",  # this process: another thread writing now
    ]
    for name in kept:
        (tmp_path / name).write_bytes(b"half")
    removed = []
    if start:  # a live process with the writer's pid but another start time: the pid was reused
        name = f".x.{pid}-{start + 1}-{host}-{boot}-abcdef.tmp"
        (tmp_path / name).write_bytes(b"half")
        removed.append(name)
    assert remove_stale_temps(tmp_path) == len(removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_concurrent_write_survives_a_cleanup(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write("{}")
        assert remove_stale_temps(tmp_path) == 0  # a resumed run cleaning while we write
    assert target.read_text() == "{}"
