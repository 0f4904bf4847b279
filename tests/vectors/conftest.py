"""Helpers for the vector tests: gensim's real test files, small files written under tmp_path."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import pytest

import embtab.vectors._binary as _binary
import embtab.vectors._text as _text

# gensim ships real vector files in its wheel; found without importing gensim (slow).
# EMBTAB_TEST_DATA points at a copy of them where gensim is not installed (a GPU machine).
_spec = importlib.util.find_spec("gensim")
if os.environ.get("EMBTAB_TEST_DATA"):
    GENSIM_DATA: Path | None = Path(os.environ["EMBTAB_TEST_DATA"])
elif _spec and _spec.origin:
    GENSIM_DATA = Path(_spec.origin).parent / "test" / "test_data"
else:
    GENSIM_DATA = None

requires_gensim = pytest.mark.skipif(_spec is None, reason="gensim (a dev dependency) is not installed")
requires_data = pytest.mark.skipif(GENSIM_DATA is None, reason="gensim's test files are not available")


def data(name: str) -> Path:
    assert GENSIM_DATA is not None
    return GENSIM_DATA / name


def gzip_copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes(), mtime=0))
    return dst


@pytest.fixture
def block_size(monkeypatch):
    """Set the readers' block size (bytes read per step), to sweep chunk boundaries."""

    def set_size(n: int) -> None:
        monkeypatch.setattr(_text, "BLOCK_SIZE", n)
        monkeypatch.setattr(_binary, "BLOCK_SIZE", n)

    return set_size


@pytest.fixture
def write(tmp_path):
    """write(name, text_or_bytes) -> path under tmp_path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return _write
