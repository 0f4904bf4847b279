"""Fused optimizers on CUDA tensors against the same training on CPU.

The torch-ops backend (any device) and ``auto`` (the Triton backend for CUDA
weights, when it imports) must train a collection and single modules like the CPU
path. Skipped without a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

import embtab
from embtab.optim.specs import FusedSpec
from tests.conftest import assert_close

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SPECS = [embtab.optim.SGD(lr=0.2), embtab.optim.RowWiseAdagrad(lr=0.1), embtab.optim.Adam(lr=0.01, weight_decay=0.1)]


def _tables() -> list[embtab.TableConfig]:
    return [
        embtab.TableConfig("a", 300, 16, feature_names=["a", "a2"]),
        embtab.TableConfig("b", 50, 8, pooling="mean", oov="hash", num_oov_buckets=4),
        embtab.TableConfig("c", 40, 8, pooling="max", padding_idx=0),
    ]


def _batches(device: str) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        batch = {}
        for name, high in (("a", 300), ("a2", 20), ("b", 60), ("c", 40)):
            lengths = torch.randint(0, 6, (8,), generator=gen)
            ids = torch.randint(0, high, (int(lengths.sum()),), generator=gen)
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
            batch[name] = (ids.to(device), offsets.to(device))
        out.append(batch)
    return out


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_collection_on_cuda_trains_like_cpu(spec: FusedSpec, backend: str) -> None:
    cpu = embtab.EmbeddingBagCollection(_tables(), optimizer=spec)
    gpu = embtab.EmbeddingBagCollection(_tables(), optimizer=spec, device="cuda", backend=backend)
    gpu.load_state_dict(cpu.state_dict())
    grads = torch.randn(3, 8, cpu.output_dim, generator=torch.Generator().manual_seed(1))
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):  # "auto": numba on CPU, Triton on CUDA
        for batch, grad in zip(_batches(device), grads):
            model(batch).concat().backward(grad.to(device))
    for key, value in cpu.state_dict().items():
        got = gpu.state_dict()[key].cpu()
        assert_close(got, value) if value.is_floating_point() else torch.testing.assert_close(got, value)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_single_modules_and_sparse_optimizer_on_cuda(spec: FusedSpec) -> None:
    ids = torch.tensor([[1, 2, 2], [7, 1, 0]])
    for cls in (embtab.Embedding, embtab.EmbeddingBag):
        kwargs = {"mode": "sum"} if cls is embtab.EmbeddingBag else {}
        cpu = cls(10, 4, padding_idx=0, optimizer=spec, **kwargs)
        gpu = cls(10, 4, padding_idx=0, optimizer=spec, device="cuda", **kwargs)
        gpu.load_state_dict(cpu.state_dict())
        for model, device in ((cpu, "cpu"), (gpu, "cuda")):
            for _ in range(2):
                model(ids.to(device)).pow(2).sum().backward()
        assert_close(gpu.weight.detach().cpu(), cpu.weight.detach())
    cpu_emb = torch.nn.Embedding(10, 4, sparse=True)
    gpu_emb = torch.nn.Embedding(10, 4, sparse=True, device="cuda")
    gpu_emb.load_state_dict(cpu_emb.state_dict())
    for model in (cpu_emb, gpu_emb):
        opt = embtab.optim.SparseAdamW(model.parameters(), lr=0.01)
        for _ in range(2):
            model(ids.to(model.weight.device)).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    assert_close(gpu_emb.weight.detach().cpu(), cpu_emb.weight.detach())
