"""Hashed and dynamic tables on the Triton backend (CPU tensors under TRITON_INTERPRET=1) and on CUDA:
the same results, and for a dynamic table the same live set and the same row for every id as on CPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import embtab
from embtab.ops import registry
from embtab.ids import LFU, LRU, TTL, Dynamic, Hashed, MinCount
from tests.conftest import needs_cuda
from tests.ids.test_dynamic import _drifting

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is a dev dependency
    HAS_TRITON = False

@pytest.fixture(autouse=True)
def _forget_backend_choices() -> Iterator[None]:
    # The registry caches a backend per (name, device, dtype); a Triton-on-CPU choice made
    # here must not outlive TRITON_INTERPRET in a later test.
    yield
    registry.refresh()


SPACES = {
    "dynamic": lambda: Dynamic(admit=MinCount(2), evict=LFU(), fallback="hash", fallback_buckets=2),
    "hashed": lambda: Hashed(2),
}
IDS = torch.tensor([5, 5, -9, 2**62, 7, -(2**63), 11, 5])
OFFSETS = torch.tensor([0, 3, 5])


def _same_tables(a: embtab.EmbeddingBag, b: embtab.EmbeddingBag) -> None:
    if isinstance(a.ids, embtab.ids.DynamicIds):
        live = a.ids.live_ids()
        assert torch.equal(live, b.ids.live_ids().cpu())
        rows = a.ids.rows_of(live)
        assert torch.equal(rows, b.ids.rows_of(live.to(b.weight.device)).cpu())
        torch.testing.assert_close(a.weight[rows], b.weight.cpu()[rows])
        torch.testing.assert_close(a.weight[a.ids.capacity:], b.weight.cpu()[a.ids.capacity:])
    else:
        torch.testing.assert_close(a.weight, b.weight.cpu())
        torch.testing.assert_close(a.ids.importance.weight, b.ids.importance.weight.cpu())


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("space", list(SPACES))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_triton_backend_trains_like_the_cpu_backend(space: str, mode: str) -> None:
    a = embtab.EmbeddingBag(6, 4, mode=mode, ids=SPACES[space](), optimizer=embtab.optim.Adam(lr=0.1))
    b = embtab.EmbeddingBag(6, 4, mode=mode, ids=SPACES[space](), optimizer=embtab.optim.Adam(lr=0.1),
                            backend="triton")
    b.load_state_dict(a.state_dict())
    for step in range(3):
        out_a, out_b = a(IDS + step, OFFSETS), b(IDS + step, OFFSETS)
        torch.testing.assert_close(out_a, out_b)
        out_a.pow(2).sum().backward()
        out_b.pow(2).sum().backward()
    _same_tables(a, b)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("evict", [LRU(), LFU(), TTL(3)])
def test_cuda_takes_the_decisions_of_the_cpu(evict: object) -> None:
    def make(device: str) -> embtab.EmbeddingBag:
        space = Dynamic(admit=MinCount(2), evict=evict, fallback="hash", fallback_buckets=3)  # type: ignore[arg-type]
        return embtab.EmbeddingBag(200, 8, mode="sum", ids=space, optimizer=embtab.optim.RowWiseAdagrad(lr=0.1),
                                   device=device)

    cpu, gpu = make("cpu"), make("cuda")
    gpu.load_state_dict(cpu.state_dict())
    for batch in _drifting(20, 600, 1000, seed=7):
        ids = torch.tensor(batch)
        offsets = torch.arange(0, ids.numel(), 3)
        out_c, out_g = cpu(ids, offsets), gpu(ids.cuda(), offsets.cuda())
        torch.testing.assert_close(out_c, out_g.cpu())
        out_c.sum().backward()
        out_g.sum().backward()
    assert cpu.ids.stats() == gpu.ids.stats()
    _same_tables(cpu, gpu)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_cuda_hashed_matches_cpu(mode: str) -> None:
    cpu = embtab.EmbeddingBag(50, 8, mode=mode, ids=Hashed(2), optimizer=embtab.optim.Adagrad(lr=0.1))
    gpu = embtab.EmbeddingBag(50, 8, mode=mode, ids=Hashed(2), optimizer=embtab.optim.Adagrad(lr=0.1),
                              device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    for step in range(3):
        out_c, out_g = cpu(IDS + step, OFFSETS), gpu((IDS + step).cuda(), OFFSETS.cuda())
        torch.testing.assert_close(out_c, out_g.cpu())
        out_c.sum().backward()
        out_g.sum().backward()
    _same_tables(cpu, gpu)
