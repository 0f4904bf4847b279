"""Large CPU tables and their optimizer state ask Linux for huge pages (embtab/_memory.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import embtab
from embtab import _memory

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    """The bracketed choice of the kernel's THP setting ("always", "madvise", "never"), or ""."""
    try:
        text = THP.read_text()
    except OSError:
        return ""
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else ""


needs_thp = pytest.mark.skipif(
    not sys.platform.startswith("linux") or _thp_mode() not in ("always", "madvise"),
    reason="needs Linux with transparent huge pages enabled (always or madvise)",
)


@needs_thp
def test_large_table_and_its_optimizer_state_are_on_huge_pages() -> None:
    bag = embtab.EmbeddingBag(300_000, 16, mode="sum", optimizer=embtab.optim.Adagrad(lr=0.1))  # 19 MB each
    assert _memory.huge_page_bytes(bag.weight) > 0  # (any: how many the kernel finds free is its business)
    assert _memory.huge_page_bytes(bag.optim_sum) > 0
    # Only advice: the values are what they would be without it.
    torch.manual_seed(0)
    plain = torch.nn.EmbeddingBag(300_000, 16, mode="sum")
    torch.manual_seed(0)
    ours = embtab.EmbeddingBag(300_000, 16, mode="sum")
    assert torch.equal(ours.weight, plain.weight)
    assert torch.equal(bag.optim_sum, torch.zeros_like(bag.optim_sum))
    # And the table behaves as any tensor: trains, saves, loads into torch.
    bag(torch.tensor([1, 2, 2]), torch.tensor([0, 1])).sum().backward()
    plain.load_state_dict({"weight": bag.state_dict()["weight"]})
    assert torch.equal(plain.weight, bag.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_empty_gives_the_shape_and_dtype_asked_for(dtype: torch.dtype) -> None:
    t = _memory.empty((1000, 3000), dtype=dtype)
    assert t.shape == (1000, 3000) and t.dtype == dtype and t.is_contiguous() and t.device.type == "cpu"
    t.fill_(3)
    assert int(t[999, 2999]) == 3


def test_small_tensors_other_devices_and_the_switch_keep_torch_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _memory.wanted(_memory.MIN_BYTES - 1, "cpu")
    assert not _memory.wanted(_memory.MIN_BYTES, "meta")
    assert _memory.empty((_memory.MIN_BYTES,), dtype=torch.uint8, device="meta").device.type == "meta"
    monkeypatch.setenv(_memory.ENV_VAR, "0")
    assert not _memory.wanted(10 * _memory.MIN_BYTES, "cpu")
    monkeypatch.delenv(_memory.ENV_VAR)
    assert _memory.wanted(10 * _memory.MIN_BYTES, "cpu") == (
        sys.platform.startswith("linux") and hasattr(__import__("mmap"), "MADV_HUGEPAGE")
    )


def test_a_huge_page_table_copies_pickles_and_shares_like_any_other() -> None:
    import copy
    import pickle

    emb = embtab.Embedding(100_000, 64)  # 25.6 MB
    twin = copy.deepcopy(emb)
    assert torch.equal(twin.weight, emb.weight)
    back = pickle.loads(pickle.dumps(emb))
    assert torch.equal(back.weight, emb.weight)
    emb.share_memory()
    assert emb.weight.is_shared() and torch.equal(emb.weight, twin.weight)
