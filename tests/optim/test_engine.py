"""The fused optimizer engine: torch.optim semantics on the summed gradient of a backward pass.

Oracle: ``torch.optim`` in float64 on a dense gradient (lazy optimizers touch only the
rows with a gradient, so the comparisons give every looked-up row a gradient, or use SGD
without weight decay, where untouched rows do not move either way).
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch

import embtab
from embtab.optim import RowGrads

F64 = torch.float64


def _dense_twin(weight: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(weight.detach().clone())


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "adam"])
def test_a_table_looked_up_twice_gets_one_step_on_the_summed_gradient(kind: str) -> None:
    specs = {
        "sgd": (embtab.optim.SGD(lr=0.3), lambda p: torch.optim.SGD(p, lr=0.3)),
        "adagrad": (embtab.optim.Adagrad(lr=0.3), lambda p: torch.optim.Adagrad(p, lr=0.3)),
        "adam": (embtab.optim.Adam(lr=0.3), lambda p: torch.optim.Adam(p, lr=0.3)),
    }
    spec, make = specs[kind]
    emb = embtab.Embedding(6, 3, dtype=F64, optimizer=spec)
    twin = _dense_twin(emb.weight)
    opt = make([twin])
    a, b = torch.tensor([0, 1, 2]), torch.tensor([2, 3, 4, 5, 1, 0])  # together: every row
    for _ in range(3):
        (emb(a).pow(2).sum() + emb(b).sin().sum()).backward()  # two autograd nodes, one pass
        opt.zero_grad()
        loss = torch.nn.functional.embedding(a, twin).pow(2).sum() + torch.nn.functional.embedding(b, twin).sin().sum()
        loss.backward()
        opt.step()
    torch.testing.assert_close(emb.weight.detach(), twin.detach(), rtol=1e-12, atol=1e-12)
    if kind == "adam":
        assert emb.optim_step.tolist() == [3] * 6  # one step per backward pass, not two


def test_a_table_shared_by_a_bag_and_a_max_bag_in_one_collection_pass() -> None:
    """Two features of one max-pooled table and one of a sum table: merged per table."""
    tables = [embtab.TableConfig("m", 5, 2, pooling="max", feature_names=["x", "y"]),
              embtab.TableConfig("s", 4, 2, feature_names=["z"])]
    ebc = embtab.EmbeddingBagCollection(tables, dtype=F64, optimizer=embtab.optim.Adam(lr=0.1))
    twins = {t.name: _dense_twin(ebc.embedding_bags[t.name].weight) for t in tables}
    opt = torch.optim.Adam(list(twins.values()), lr=0.1)
    batch = {"x": (torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 3])), "y": (torch.tensor([4, 2, 0, 1, 3]), torch.tensor([0, 1])),
             "z": (torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2]))}
    g = torch.randn(2, 6, dtype=F64)
    ebc(batch).concat().backward(g)
    out = torch.cat([torch.nn.functional.embedding_bag(batch[f][0], twins[t], batch[f][1], mode=m)
                     for f, t, m in (("x", "m", "max"), ("y", "m", "max"), ("z", "s", "sum"))], 1)
    out.backward(g)
    opt.step()
    for name, twin in twins.items():
        torch.testing.assert_close(ebc.embedding_bags[name].weight.detach(), twin.detach(), rtol=1e-12, atol=1e-12)


def test_update_at_step_accumulates_backward_passes() -> None:
    """update="step": two micro-batches, one step: torch.optim on the accumulated gradient."""
    bag = embtab.EmbeddingBag(5, 3, mode="mean", dtype=F64, optimizer=embtab.optim.Adam(lr=0.2, update="step"))
    twin = _dense_twin(bag.weight)
    opt = torch.optim.Adam([twin], lr=0.2)
    micro = [(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 2])), (torch.tensor([4, 4, 1]), torch.tensor([0, 1]))]
    for step in range(2):
        before = bag.weight.detach().clone()
        for ids, offsets in micro:
            bag(ids, offsets).pow(2).sum().backward()
            torch.nn.functional.embedding_bag(ids, twin, offsets, mode="mean").pow(2).sum().backward()
        assert torch.equal(bag.weight.detach(), before)  # nothing moves until step()
        assert len(bag.optimizer.pending_row_grads()) == 1
        bag.optimizer.step()
        opt.step()
        bag.optimizer.zero_grad()
        opt.zero_grad()
    torch.testing.assert_close(bag.weight.detach(), twin.detach(), rtol=1e-12, atol=1e-12)
    assert bag.optim_step.tolist() == [2] * 5


def test_clip_grad_norm_matches_torch_on_the_row_gradients() -> None:
    tables = [embtab.TableConfig("a", 4, 3), embtab.TableConfig("b", 3, 2, pooling="mean")]
    ebc = embtab.EmbeddingBagCollection(tables, dtype=F64, optimizer=embtab.optim.SGD(lr=0.5, update="step"))
    twins = [_dense_twin(ebc.embedding_bags[t.name].weight) for t in tables]
    batch = {"a": (torch.tensor([0, 1, 2, 3, 3]), torch.tensor([0, 2])), "b": (torch.tensor([0, 1, 2]), torch.tensor([0, 1]))}
    g = torch.randn(2, 5, dtype=F64) * 10
    ebc(batch).concat().backward(g)
    total = embtab.optim.clip_grad_norm_(ebc.optimizer, max_norm=1.0)
    torch.cat([torch.nn.functional.embedding_bag(batch["a"][0], twins[0], batch["a"][1], mode="sum"),
               torch.nn.functional.embedding_bag(batch["b"][0], twins[1], batch["b"][1], mode="mean")], 1).backward(g)
    expected_total = torch.nn.utils.clip_grad_norm_(twins, max_norm=1.0)
    torch.testing.assert_close(total, expected_total)
    ebc.optimizer.step()
    torch.optim.SGD(twins, lr=0.5).step()
    for t, twin in zip(tables, twins):
        torch.testing.assert_close(ebc.embedding_bags[t.name].weight.detach(), twin.detach())


def test_clip_grad_norm_needs_update_at_step() -> None:
    bag = embtab.EmbeddingBag(5, 3, optimizer=embtab.optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match=r"updates the rows during backward.*update='step'"):
        embtab.optim.clip_grad_norm_(bag.optimizer, 1.0)


def test_row_grad_hook_sees_the_merged_row_gradients_and_can_replace_them() -> None:
    emb = embtab.Embedding(6, 2, dtype=F64, optimizer=embtab.optim.SGD(lr=1.0))
    seen: list[list[RowGrads]] = []

    def halve(row_grads: list[RowGrads]) -> list[RowGrads]:
        seen.append(row_grads)
        return [RowGrads(rg.table, rg.rows, rg.grads / 2) for rg in row_grads]

    handle = emb.optimizer.register_row_grad_hook(halve)
    before = emb.weight.detach().clone()
    (emb(torch.tensor([3, 1, 3])).sum() + emb(torch.tensor([1])).sum() * 2).backward()
    (rg,) = seen[0]
    assert rg.table is emb and rg.rows.tolist() == [1, 3]
    torch.testing.assert_close(rg.grads, torch.tensor([[3.0, 3.0], [2.0, 2.0]], dtype=F64))  # 1 + 2, 1 + 1
    torch.testing.assert_close(emb.weight.detach()[[1, 3]], before[[1, 3]] - rg.grads / 2)
    handle.remove()
    emb(torch.tensor([0])).sum().backward()
    assert len(seen) == 1


def test_weights_seen_by_backward_are_those_of_the_forward() -> None:
    """Updates wait for the end of the pass: a per-sample-weights gradient computed after
    another node's backward still reads the rows as the forward saw them."""
    bag = embtab.EmbeddingBag(4, 2, mode="sum", dtype=F64, optimizer=embtab.optim.SGD(lr=10.0))
    w0 = bag.weight.detach().clone()
    psw = torch.ones(2, dtype=F64, requires_grad=True)
    (bag(torch.tensor([1, 2]), torch.tensor([0]), psw).sum() + bag(torch.tensor([1]), torch.tensor([0])).sum()).backward()
    torch.testing.assert_close(psw.grad, w0[[1, 2]].sum(1))


def test_no_update_from_a_backward_that_fails() -> None:
    emb = embtab.Embedding(4, 2, optimizer=embtab.optim.SGD(lr=1.0))
    before = emb.weight.detach().clone()

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def,override]
            return x.clone()

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def,override]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        (emb(torch.tensor([1])).sum() + Boom.apply(emb(torch.tensor([2]))).sum()).backward()
    emb(torch.tensor([3])).sum().backward()  # the next pass applies only its own rows
    changed = (emb.weight.detach() != before).any(1).tolist()
    assert changed[3] and not changed[0]


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_of_modules_with_a_fused_optimizer_train_on_their_own(how: str) -> None:
    def clone(m: torch.nn.Module) -> torch.nn.Module:
        if how == "deepcopy":
            return copy.deepcopy(m)
        if how == "pickle":
            return pickle.loads(pickle.dumps(m))
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)

    tables = [embtab.TableConfig("items", 8, 3), embtab.TableConfig("user", 5, 2, pooling="mean")]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.1))
    batch = {"items": (torch.tensor([1, 2, 2]), torch.tensor([0, 1])), "user": (torch.tensor([3, 4]), torch.tensor([0, 1]))}
    ebc(batch).concat().sum().backward()
    copied = clone(ebc)
    assert "Adam" in repr(copied) and copied.optimizer is not ebc.optimizer
    assert all(b.optimizer is copied.optimizer for b in copied.embedding_bags.values())
    reference = clone(ebc)  # a second copy trained the same way: the copies are deterministic twins
    before = {k: v.clone() for k, v in ebc.state_dict().items()}
    for m in (copied, reference):
        m(batch).concat().pow(2).sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in ebc.state_dict().items())  # the original did not move
    for (k, a), b in zip(copied.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(copied.embedding_bags["items"].weight, before["embedding_bags.items.weight"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_casting_the_weights_keeps_the_optimizer_state_in_float32(dtype: torch.dtype) -> None:
    bag = embtab.EmbeddingBag(6, 3, mode="sum", optimizer=embtab.optim.Adam(lr=0.1))
    ids, offsets = torch.tensor([1, 2, 2]), torch.tensor([0])
    bag(ids, offsets).sum().backward()
    state = bag.optim_exp_avg_sq.clone()
    bag = bag.half() if dtype == torch.float16 else bag.to(dtype)
    assert bag.weight.dtype == dtype
    assert bag.optim_exp_avg_sq.dtype == torch.float32 and torch.equal(bag.optim_exp_avg_sq, state)  # not rounded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torch-ops path for 16-bit CPU tables
        bag(ids, offsets).float().sum().backward()
    assert bag.optim_step[1] == 2
    bag = bag.double()
    assert bag.optim_exp_avg.dtype == torch.float64


def test_invalid_optimizer_state_is_refused_at_load() -> None:
    bag = embtab.EmbeddingBag(6, 3, optimizer=embtab.optim.Adagrad(lr=0.1))
    state = bag.state_dict()
    state["optim_sum"][2, 1] = -1.0
    with pytest.raises(ValueError, match=r"optim_sum holds an invalid value -1.0 at flat index 7.*>= 0"):
        bag.load_state_dict(state)
    state["optim_sum"][2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"optim_sum holds an invalid value nan"):
        bag.load_state_dict(state)


def test_from_pretrained_with_an_optimizer_needs_freeze_false() -> None:
    w = torch.randn(4, 3)
    for cls in (embtab.Embedding, embtab.EmbeddingBag):
        with pytest.raises(ValueError, match=r"optimizer= trains the table, but freeze=True .* pass freeze=False"):
            cls.from_pretrained(w, optimizer=embtab.optim.SGD(lr=0.1))
        m = cls.from_pretrained(w.clone(), freeze=False, optimizer=embtab.optim.SGD(lr=0.1))
        out = m(torch.tensor([[1, 2]]))
        out.sum().backward()
        assert not torch.equal(m.weight.detach(), w)


def test_only_a_backward_that_trains_the_table_updates_it() -> None:
    bag = embtab.EmbeddingBag(6, 2, mode="sum", optimizer=embtab.optim.SGD(lr=1.0))
    head = torch.nn.Linear(2, 1)
    before = bag.weight.detach().clone()
    psw = torch.ones(3, requires_grad=True)

    def loss() -> torch.Tensor:
        return head(bag(torch.tensor([1, 2, 3]), torch.tensor([0]), psw)).sum()

    (grad,) = torch.autograd.grad(loss(), [psw])  # a gradient asked for: no training step
    assert grad.shape == (3,) and torch.equal(bag.weight.detach(), before)
    loss().backward(inputs=[head.weight])  # a pass that trains only the head
    assert torch.equal(bag.weight.detach(), before) and head.weight.grad is not None
    loss().backward()
    assert not torch.equal(bag.weight.detach(), before)
