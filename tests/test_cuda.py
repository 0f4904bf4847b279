"""The core on a CUDA device: torch semantics and every OOV policy, same as on CPU. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

import embtab
from embtab.ids import hash_bucket

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
BACKENDS = ["auto", "torch", "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_embedding_and_bag_match_torch_on_cuda(backend: str, dtype: torch.dtype) -> None:
    ref = torch.nn.Embedding(1000, 33, padding_idx=3, device="cuda", dtype=dtype)
    ours = embtab.Embedding(1000, 33, padding_idx=3, device="cuda", dtype=dtype, backend=backend)
    ours.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 1000, (64, 7), device="cuda")
    ids[0, :3] = 3
    torch.testing.assert_close(ours(ids), ref(ids))
    g = torch.randn(64, 7, 33, device="cuda", dtype=dtype)
    ours(ids).backward(g)
    ref(ids).backward(g)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=3e-2, rtol=3e-2)

    bag_ref = torch.nn.EmbeddingBag(1000, 33, mode="mean", device="cuda", dtype=dtype)
    bag = embtab.EmbeddingBag(1000, 33, mode="mean", device="cuda", dtype=dtype, backend=backend)
    bag.load_state_dict(bag_ref.state_dict())
    flat, offsets = ids.reshape(-1), torch.arange(0, 448, 5, device="cuda")
    torch.testing.assert_close(bag(flat, offsets), bag_ref(flat, offsets), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_oov_policies_on_cuda_match_cpu(backend: str) -> None:
    ids_cpu = torch.tensor([[1, 2, 50], [-4, 3, 7]])
    for oov, extra in (("padding", {"padding_idx": 0}), ("zero", {}), ("hash", {"num_oov_buckets": 3})):
        cpu = embtab.Embedding(10, 4, oov=oov, **extra)
        gpu = embtab.Embedding(10, 4, oov=oov, backend=backend, _weight=cpu.weight.detach().cuda(), **extra)
        torch.testing.assert_close(gpu(ids_cpu.cuda()).cpu(), cpu(ids_cpu))
        assert gpu.oov_count == cpu.oov_count == 2
    assert torch.equal(hash_bucket(ids_cpu.cuda(), 97).cpu(), hash_bucket(ids_cpu, 97))


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_policy_raises_not_device_assert(backend: str) -> None:
    emb = embtab.Embedding(10, 4, device="cuda", backend=backend)
    with pytest.raises(IndexError, match=r"id 12 at position \(1, 0\)"):
        emb(torch.tensor([[1, 2], [12, 3]], device="cuda"))
    # The process (and the CUDA context) is still fine afterwards.
    assert emb(torch.tensor([1], device="cuda")).shape == (1, 4)
    torch.cuda.synchronize()
