"""``torch.compile(fullgraph=True)`` of every table module: no graph break, same results as eager.

Compiled with the ``aot_eager`` backend (dynamo and AOTAutograd trace forward and backward;
the suite stays fast), plus one Inductor run. Under compile an ``oov="error"`` check, the
offsets check and a fused optimizer's hand-off in backward run as opaque operators
(``embtab/ops/compiled.py``); the errors still name the id.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch._dynamo

import embtab

POLICIES = {
    "error": {},
    "padding": {"oov": "padding", "padding_idx": 0},
    "zero": {"oov": "zero"},
    "hash": {"oov": "hash", "num_oov_buckets": 3},
}


def _train(model: torch.nn.Module, batch: tuple, steps: int, compiled: bool) -> torch.nn.Module:
    torch._dynamo.reset()
    run = torch.compile(model, fullgraph=True, backend="aot_eager") if compiled else model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            out = run(*batch)
            out = out.concat() if isinstance(out, embtab.nn.PooledEmbeddings) else out
            out.pow(2).sum().backward()
    # dynamo warns about what it cannot trace in our code (an lru_cache, say)
    ours = [str(w.message) for w in caught if "embtab" in str(w.filename) or "lru_cache" in str(w.message)]
    assert not ours, ours
    return model


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=key)
    for pa, pb in zip(a.parameters(), b.parameters()):
        if pa.grad is not None or pb.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=0, atol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["grad", "fused"])
@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("kind", ["Embedding", "EmbeddingBag"])
def test_compiled_module_trains_like_eager(kind: str, policy: str, fused: bool) -> None:
    torch.manual_seed(0)
    ids = torch.tensor([[1, 2, 3], [4, 3, 12]])
    if policy == "error":
        ids = ids.clamp_max(9)
    optimizer = embtab.optim.Adam(lr=0.1) if fused else None
    if kind == "Embedding":
        model = embtab.Embedding(10, 4, optimizer=optimizer, **POLICIES[policy])
        batch: tuple = (ids,)
    else:
        model = embtab.EmbeddingBag(10, 4, mode="mean", optimizer=optimizer, **POLICIES[policy])
        batch = (ids.reshape(-1), torch.tensor([0, 2, 2]), None)
    eager = _train(copy.deepcopy(model), batch, 2, compiled=False)
    compiled = _train(copy.deepcopy(model), batch, 2, compiled=True)
    _same_state(eager, compiled)
    if policy not in ("error", "padding"):
        assert compiled.oov_count == eager.oov_count == 2


@pytest.mark.parametrize("fused", [False, True], ids=["grad", "fused"])
def test_compiled_collection_trains_like_eager(fused: bool) -> None:
    torch.manual_seed(0)
    tables = [embtab.TableConfig("items", 10, 4, feature_names=["items", "clicked"]),
              embtab.TableConfig("user", 6, 3, pooling="max", oov="hash", num_oov_buckets=2)]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.RowWiseAdagrad(lr=0.1) if fused else None)
    batch = ({"items": (torch.tensor([1, 2, 3]), torch.tensor([0, 1])),
              "clicked": (torch.tensor([3, 3]), torch.tensor([0, 0])),
              "user": (torch.tensor([5, 99, 1]), torch.tensor([0, 2]))},)
    _same_state(_train(copy.deepcopy(ebc), batch, 2, False), _train(copy.deepcopy(ebc), batch, 2, True))


@pytest.mark.parametrize("kind", ["Embedding", "EmbeddingBag"])
def test_compiled_lookup_still_names_an_out_of_range_id(kind: str) -> None:
    torch._dynamo.reset()
    model = embtab.Embedding(10, 4) if kind == "Embedding" else embtab.EmbeddingBag(10, 4)
    args = (torch.tensor([1, 12]),) if kind == "Embedding" else (torch.tensor([1, 12]), torch.tensor([0]))
    run = torch.compile(model, fullgraph=True, backend="aot_eager")
    run(*(torch.tensor([1, 2]),) + args[1:])  # compiles
    with pytest.raises(IndexError, match=rf"{kind}: id 12 at position 1 is out of range for a table of 10 rows"):
        run(*args)


def test_compiled_bag_still_names_bad_offsets() -> None:
    torch._dynamo.reset()
    run = torch.compile(embtab.EmbeddingBag(10, 4), fullgraph=True, backend="aot_eager")
    run(torch.tensor([1, 2, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"offsets must start at 0 .* got offsets\[0\] = 1"):
        run(torch.tensor([1, 2, 3]), torch.tensor([1, 2]))


def test_inductor_compiles_a_fused_training_step() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = embtab.EmbeddingBag(20, 8, mode="sum", optimizer=embtab.optim.SGD(lr=0.1))
            self.head = torch.nn.Linear(8, 1)

        def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
            return self.head(self.bag(ids, offsets))

    model = Model()
    eager = copy.deepcopy(model)
    run = torch.compile(model, fullgraph=True)
    ids, offsets = torch.tensor([1, 2, 2, 7, 19]), torch.tensor([0, 3])
    for m in (eager, run):
        m(ids, offsets).sum().backward()
    torch.testing.assert_close(model.bag.weight, eager.bag.weight)
    torch.testing.assert_close(model.head.weight.grad, eager.head.weight.grad)
