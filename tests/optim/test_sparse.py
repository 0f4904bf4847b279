"""SparseRowWiseAdagrad and SparseAdamW: sparse gradients against the float64 reference,
dense gradients against the reference and torch.optim."""

from __future__ import annotations

import io

import pytest
import torch

import embtab
from embtab.ops import update_reference as reference
from embtab.optim.specs import new_state
from tests.conftest import assert_close


def _sparse_steps(opt_cls, steps: int = 3, **kwargs):  # type: ignore[no-untyped-def]
    """Train a sparse nn.Embedding with ``opt_cls``; replay it on a float64 shadow."""
    emb = torch.nn.Embedding(20, 6, sparse=True, dtype=torch.float64)
    opt = opt_cls(emb.parameters(), **kwargs)
    shadow = emb.weight.detach().clone()
    state = new_state(opt._spec, shadow)
    hyper = opt._spec.hyper(opt.param_groups[0])
    for _ in range(steps):
        ids = torch.randint(0, 8, (15,))  # heavy duplication, rows 8.. never touched
        out = emb(ids)
        g = torch.randn_like(out)
        opt.zero_grad()
        out.backward(g)
        opt.step()
        rows = torch.unique(ids)
        dense = torch.zeros(20, 6, dtype=torch.float64).index_add_(0, ids, g)
        reference.fused_update(shadow, state, rows, dense[rows], hyper)
    return emb, opt, shadow, state


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [(embtab.optim.SparseRowWiseAdagrad, dict(lr=0.3, weight_decay=0.1)),
     (embtab.optim.SparseAdamW, dict(lr=0.05, weight_decay=0.1))],
)
def test_sparse_gradients_update_touched_rows_lazily(cls, kwargs) -> None:  # type: ignore[no-untyped-def]
    emb, opt, shadow, state = _sparse_steps(cls, **kwargs)
    assert_close(emb.weight.detach(), shadow)
    for name, value in state.items():
        got = opt.state[emb.weight][name]
        torch.testing.assert_close(got.reshape(value.shape), value)
    before = emb.weight.detach()[8:]
    assert torch.equal(before, shadow[8:])  # untouched rows: no decay, no moments


def test_sparse_adamw_dense_gradient_is_torch_adamw() -> None:
    lin = torch.nn.Linear(5, 3, dtype=torch.float64)
    twin = torch.nn.Linear(5, 3, dtype=torch.float64)
    twin.load_state_dict(lin.state_dict())
    ours = embtab.optim.SparseAdamW(lin.parameters(), lr=0.01, weight_decay=0.1)
    theirs = torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(4):
        x = torch.randn(7, 5, dtype=torch.float64)
        for model, opt in ((lin, ours), (twin, theirs)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    assert_close(lin.weight.detach(), twin.weight.detach())
    assert_close(lin.bias.detach(), twin.bias.detach())  # 1-D: one-element rows


def test_sparse_rowwise_adagrad_dense_gradient_updates_every_row() -> None:
    w = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    opt = embtab.optim.SparseRowWiseAdagrad([w], lr=0.5)
    shadow = w.detach().clone()
    state = new_state(opt._spec, shadow)
    g = torch.randn(6, 4, dtype=torch.float64)
    w.grad = g.clone()
    opt.step()
    reference.fused_update(shadow, state, torch.arange(6), g, opt._spec.hyper(opt.param_groups[0]))
    assert_close(w.detach(), shadow)


def test_state_dict_round_trip() -> None:
    emb, opt, _, _ = _sparse_steps(embtab.optim.SparseAdamW, lr=0.05)
    twin = torch.nn.Embedding(20, 6, sparse=True, dtype=torch.float64)
    twin.load_state_dict(emb.state_dict())
    opt2 = embtab.optim.SparseAdamW(twin.parameters(), lr=0.05)
    buffer = io.BytesIO()  # a checkpoint is a copy (a live state_dict shares the tensors)
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    ids = torch.tensor([1, 1, 3])
    for model, o in ((emb, opt), (twin, opt2)):
        o.zero_grad()
        model(ids).sum().backward()
        o.step()
    torch.testing.assert_close(emb.weight, twin.weight, rtol=0, atol=0)


def test_learning_rate_scheduler_drives_sparse_optimizer() -> None:
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = embtab.optim.SparseRowWiseAdagrad([w], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        w.grad = torch.sparse_coo_tensor([[0]], torch.ones(1, 2), (3, 2), check_invariants=True)
        opt.step()
        sched.step()
    # steps of lr * g / sqrt(sum): 1 * 1/1 and 0.5 * 1/sqrt(2)
    assert_close(w.detach()[0], torch.full((2,), -(1 + 0.5 / 2**0.5)))


def test_errors() -> None:
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = embtab.optim.SparseAdamW([w])
    w.grad = torch.sparse_coo_tensor([[0], [1]], [1.0], (3, 2), check_invariants=True)  # sparse in both dims
    with pytest.raises(ValueError, match=r"SparseAdamW: a sparse gradient must be row-sparse \(sparse_dim=1"):
        opt.step()
    with pytest.raises(ValueError, match=r"SparseRowWiseAdagrad: lr must be finite and >= 0.0, got lr=-0.1"):
        embtab.optim.SparseRowWiseAdagrad([w], lr=-0.1)
    c = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    c.grad = torch.ones(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex parameters are not supported"):
        embtab.optim.SparseAdamW([c]).step()
