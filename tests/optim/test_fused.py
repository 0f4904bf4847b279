"""Fused optimizers on embtab.Embedding / EmbeddingBag against the float64 oracle.

Every update runs through each CPU backend (numba when importable, torch ops,
reference) and is compared with a float64 step built from autograd through the
reference lookup plus ``embtab.optim.reference`` (tests/optim/_oracle.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import embtab
from tests.conftest import assert_close
from tests.optim._oracle import Oracle

try:
    import numba  # noqa: F401

    HAS_NUMBA = True
except ImportError:  # pragma: no cover
    HAS_NUMBA = False

BACKENDS = ["torch", "reference"] + (["numba"] if HAS_NUMBA else [])
SPECS = {
    "sgd": lambda: embtab.optim.SGD(lr=0.3, weight_decay=0.05),
    "adagrad": lambda: embtab.optim.Adagrad(lr=0.2, weight_decay=0.05, initial_accumulator_value=0.1),
    "rowwise_adagrad": lambda: embtab.optim.RowWiseAdagrad(lr=0.2, weight_decay=0.05),
    "adam": lambda: embtab.optim.Adam(lr=0.05, weight_decay=0.05),
    "adamw": lambda: embtab.optim.AdamW(lr=0.05, weight_decay=0.1),
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, set_backend) -> str:  # type: ignore[no-untyped-def]
    set_backend(request.param)
    return request.param


@st.composite
def bag_steps(draw: st.DrawFn) -> dict:
    """A table, an optimizer and three steps of heavily duplicated bags."""
    num = draw(st.integers(1, 12))  # few rows: every batch repeats ids
    dim = draw(st.sampled_from([1, 3, 16, 17, 40]))  # around the 16-float cache line
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    oov = draw(st.sampled_from(["error", "padding", "zero", "hash"]))
    padding = draw(st.one_of(st.none(), st.integers(0, num - 1))) if oov != "padding" else draw(st.integers(0, num - 1))
    buckets = draw(st.integers(1, 3)) if oov == "hash" else 0
    low, high = (0, num - 1) if oov == "error" else (-3, num + 3)
    steps = []
    for _ in range(3):
        lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=5))  # empty bags included
        ids = draw(st.lists(st.integers(low, high), min_size=sum(lengths), max_size=sum(lengths)))
        psw = draw(st.booleans()) and mode == "sum"
        steps.append((lengths, ids, psw))
    return dict(num=num, dim=dim, mode=mode, oov=oov, padding=padding, buckets=buckets, steps=steps,
                kind=draw(st.sampled_from(sorted(SPECS))))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=bag_steps())
def test_embedding_bag_matches_float64_oracle(case: dict, backend: str) -> None:
    spec = SPECS[case["kind"]]()
    bag = embtab.EmbeddingBag(
        case["num"], case["dim"], mode=case["mode"], padding_idx=case["padding"], oov=case["oov"],
        num_oov_buckets=case["buckets"], dtype=torch.float64, optimizer=spec,
    )
    oracle = Oracle(bag.weight, spec)
    for lengths, ids, use_psw in case["steps"]:
        ids_t = torch.tensor(ids, dtype=torch.int64)
        offsets = torch.tensor([0] + lengths[:-1], dtype=torch.int64).cumsum(0)
        psw = torch.rand(len(ids), dtype=torch.float64) + 0.5 if use_psw else None
        out = bag(ids_t, offsets, psw)
        grad = torch.randn_like(out)
        out.backward(grad)
        oracle.step([dict(input=ids_t, offsets=offsets, mode=case["mode"], per_sample_weights=psw)], [grad],
                    oov=case["oov"], padding_idx=case["padding"], buckets=case["buckets"])
        assert bag.weight.grad is None
    assert_close(bag.weight.detach(), oracle.weight)
    for name, value in oracle.state.items():
        assert_close(getattr(bag, "optim_" + name), value) if value.is_floating_point() else \
            torch.testing.assert_close(getattr(bag, "optim_" + name), value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num=st.integers(1, 10), dim=st.sampled_from([2, 16, 19]), kind=st.sampled_from(sorted(SPECS)),
    shape=st.sampled_from([(7,), (3, 5), (2, 2, 3)]), freq=st.booleans(),
    padding=st.one_of(st.none(), st.integers(0, 0)), data=st.data(),
)
def test_embedding_matches_float64_oracle(num: int, dim: int, kind: str, shape: tuple, freq: bool,
                                          padding: int | None, data: st.DataObject, backend: str) -> None:
    spec = SPECS[kind]()
    emb = embtab.Embedding(num, dim, padding_idx=padding, scale_grad_by_freq=freq, dtype=torch.float64, optimizer=spec)
    oracle = Oracle(emb.weight, spec)
    for _ in range(2):
        ids = torch.tensor(data.draw(st.lists(st.integers(0, num - 1), min_size=len(torch.empty(shape).reshape(-1)),
                                              max_size=len(torch.empty(shape).reshape(-1))))).reshape(shape)
        out = emb(ids)
        grad = torch.randn_like(out)
        out.backward(grad)
        oracle.step([dict(kind="embedding", input=ids, scale_grad_by_freq=freq)], [grad], padding_idx=padding)
    assert emb.weight.grad is None
    assert_close(emb.weight.detach(), oracle.weight)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_float32_tables_within_float32_tolerance(kind: str, backend: str) -> None:
    spec = SPECS[kind]()
    bag = embtab.EmbeddingBag(50, 24, mode="sum", optimizer=spec)
    oracle = Oracle(bag.weight, spec)
    for _ in range(4):
        ids = torch.randint(0, 50, (120,))  # ~2.4 occurrences per row
        offsets = torch.arange(0, 120, 6)
        out = bag(ids, offsets)
        grad = torch.randn_like(out)
        out.backward(grad)
        oracle.step([dict(input=ids, offsets=offsets, mode="sum")], [grad])
    assert_close(bag.weight.detach(), oracle.weight.float())


def test_duplicates_are_summed_not_last_writer() -> None:
    # Row-wise Adagrad is not linear: applying two equal gradients one by one differs
    # from one step with their sum, so this tells the two apart.
    bag = embtab.EmbeddingBag(3, 4, mode="sum", init="zeros", optimizer=embtab.optim.RowWiseAdagrad(lr=1.0))
    out = bag(torch.tensor([1, 1]), torch.tensor([0, 1]))  # the same row in two bags
    out.backward(torch.ones_like(out))
    # summed gradient 2 per element: sum = 4, step = 1 * 2 / sqrt(4) = 1
    assert_close(bag.weight[1], torch.full((4,), -1.0))
    assert_close(bag.optim_sum[1], torch.tensor(4.0))
    assert bag.optim_sum[0] == 0 and bag.optim_sum[2] == 0  # untouched rows keep their state


def test_untouched_rows_keep_weight_and_state(backend: str) -> None:
    bag = embtab.EmbeddingBag(20, 4, mode="sum", padding_idx=3, oov="zero",
                              optimizer=embtab.optim.AdamW(lr=0.1, weight_decay=0.5))
    before = bag.weight.detach().clone()
    out = bag(torch.tensor([1, 3, 99, 5]), torch.tensor([0, 2]))  # 3: padding, 99: dropped
    out.backward(torch.ones_like(out))
    changed = (bag.weight.detach() != before).any(1).nonzero().reshape(-1).tolist()
    assert changed == [1, 5]  # decay and moments touch looked-up rows only
    assert bag.optim_step.tolist() == [1 if r in (1, 5) else 0 for r in range(20)]


def test_per_row_step_count_gives_exact_bias_correction() -> None:
    # A row seen at steps 1 and 3 takes its second Adam step with t = 2, not 3.
    emb = embtab.Embedding(4, 2, dtype=torch.float64, optimizer=embtab.optim.Adam(lr=0.1))
    oracle = Oracle(emb.weight, emb.optimizer.spec)
    for ids in ([0, 1], [1], [0]):
        out = emb(torch.tensor(ids))
        g = torch.ones_like(out)
        out.backward(g)
        oracle.step([dict(kind="embedding", input=torch.tensor(ids))], [g])
    assert emb.optim_step.tolist() == [2, 2, 0, 0]
    assert_close(emb.weight.detach(), oracle.weight)


def test_learning_rate_changes_between_steps(backend: str) -> None:
    bag = embtab.EmbeddingBag(10, 3, mode="mean", dtype=torch.float64, optimizer=embtab.optim.Adagrad(lr=0.5))
    oracle = Oracle(bag.weight, bag.optimizer.spec)
    scheduler = torch.optim.lr_scheduler.StepLR(bag.optimizer, step_size=1, gamma=0.1)
    for step in range(3):
        ids, offsets = torch.tensor([1, 2, 2, 7]), torch.tensor([0, 3])
        out = bag(ids, offsets)
        g = torch.randn_like(out)
        out.backward(g)
        oracle.step([dict(input=ids, offsets=offsets, mode="mean")], [g], lr=0.5 * 0.1**step)
        bag.optimizer.step()  # a no-op that keeps the scheduler's bookkeeping in order
        scheduler.step()
    assert bag.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    assert_close(bag.weight.detach(), oracle.weight)


def test_state_dict_round_trip_resumes_exactly(backend: str) -> None:
    def make() -> embtab.EmbeddingBag:
        return embtab.EmbeddingBag(30, 5, mode="sum", optimizer=embtab.optim.Adam(lr=0.05))

    def step(module: embtab.EmbeddingBag, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 30, (40,), generator=gen)
        out = module(ids, torch.arange(0, 40, 8))
        out.backward(torch.randn(out.shape, generator=gen))

    a = make()
    for s in range(3):
        step(a, s)
    checkpoint = {"model": a.state_dict(), "optimizer": a.optimizer.state_dict()}
    assert {"weight", "optim_exp_avg", "optim_exp_avg_sq", "optim_step"} <= set(checkpoint["model"])
    b = make()
    b.load_state_dict(checkpoint["model"])
    b.optimizer.load_state_dict(checkpoint["optimizer"])
    for s in range(3, 6):
        step(a, s)
        step(b, s)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    torch.testing.assert_close(a.optim_exp_avg_sq, b.optim_exp_avg_sq, rtol=0, atol=0)


def test_per_sample_weight_gradient_with_fused_optimizer(backend: str) -> None:
    torch.manual_seed(1)
    fused = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.SGD(lr=0.1))
    plain = embtab.EmbeddingBag.from_pretrained(fused.weight.detach().clone(), freeze=False, mode="sum")
    ids, offsets = torch.tensor([1, 2, 2, 5]), torch.tensor([0, 1])
    psw1 = torch.rand(4, requires_grad=True)
    psw2 = psw1.detach().clone().requires_grad_()
    g = torch.randn(2, 4)
    fused(ids, offsets, psw1).backward(g)
    plain(ids, offsets, psw2).backward(g)
    assert_close(psw1.grad, psw2.grad)  # from the weight before the update
    with torch.no_grad():
        plain.weight -= 0.1 * plain.weight.grad
    assert_close(fused.weight.detach(), plain.weight.detach())


def test_weight_grad_stays_none_and_no_gradient_is_built(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from embtab.ops import native, reference

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a weight gradient was built")

    for module in (native, reference):
        monkeypatch.setattr(module, "embedding_backward", refuse)
        monkeypatch.setattr(module, "embedding_bag_backward", refuse)
    bag = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.Adagrad())
    emb = embtab.Embedding(10, 4, optimizer=embtab.optim.Adagrad())
    (bag(torch.tensor([1, 2]), torch.tensor([0])).sum() + emb(torch.tensor([3, 3])).sum()).backward()
    assert bag.weight.grad is None and emb.weight.grad is None


def test_no_update_without_grad_or_when_frozen() -> None:
    bag = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.SGD(lr=1.0))
    before = bag.weight.detach().clone()
    with torch.no_grad():
        bag(torch.tensor([1, 2]), torch.tensor([0]))
    bag.weight.requires_grad_(False)
    out = bag(torch.tensor([1, 2]), torch.tensor([0]))
    assert not out.requires_grad
    torch.testing.assert_close(bag.weight.detach(), before, rtol=0, atol=0)


def test_reset_optimizer_state_and_repr() -> None:
    bag = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.RowWiseAdagrad(initial_accumulator_value=0.5))
    bag(torch.tensor([1]), torch.tensor([0])).sum().backward()
    assert bag.optim_sum[1] > 0.5
    bag.reset_optimizer_state()
    assert (bag.optim_sum == 0.5).all()
    assert "optimizer=RowWiseAdagrad(lr=0.01" in repr(bag)
    assert "RowWiseAdagrad" in repr(bag.optimizer)


def test_module_to_float64_keeps_state_usable() -> None:
    bag = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.Adam(lr=0.1)).to(torch.float64)
    assert bag.optim_exp_avg.dtype == torch.float64 and bag.optim_step.dtype == torch.int64
    bag(torch.tensor([1]), torch.tensor([0])).sum().backward()
    assert bag.optim_step[1] == 1


def test_half_precision_weights_use_float32_state(backend: str) -> None:
    if backend == "numba":
        pytest.skip("16-bit weights always take the torch path")
    bag = embtab.EmbeddingBag(10, 4, mode="sum", dtype=torch.bfloat16, optimizer=embtab.optim.Adagrad(lr=0.1))
    assert bag.optim_sum.dtype == torch.float32
    oracle = Oracle(bag.weight, bag.optimizer.spec)
    ids, offsets = torch.tensor([1, 2, 2]), torch.tensor([0])
    out = bag(ids, offsets)
    g = torch.ones_like(out)
    out.backward(g)
    oracle.step([dict(input=ids, offsets=offsets, mode="sum")], [g.float()])
    assert_close(bag.weight.detach().float(), oracle.weight.float(), dtype=torch.bfloat16)


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: embtab.optim.SGD(lr=-1.0), ValueError, r"SGD: lr must be finite and >= 0.0, got lr=-1.0"),
        (lambda: embtab.optim.Adam(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be finite and >= 0.0 and < 1.0"),
        (lambda: embtab.optim.Adam(betas=0.9), TypeError, r"betas must be a pair"),
        (lambda: embtab.optim.Adagrad(eps=0.0), ValueError, r"eps must be finite and > 0.0"),
        (lambda: embtab.optim.RowWiseAdagrad(lr="big"), TypeError, r"lr must be a float, got 'big'"),
        (lambda: embtab.optim.AdamW(torch.nn.Linear(2, 2).parameters()), TypeError, r"take no parameters"),
    ],
)
def test_spec_errors(make, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        make()


def test_module_errors() -> None:
    with pytest.raises(ValueError, match=r"EmbeddingBag: optimizer= updates the rows during backward.*drop sparse=True"):
        embtab.EmbeddingBag(10, 4, mode="sum", sparse=True, optimizer=embtab.optim.SGD())
    params = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(TypeError, match=r"Embedding: optimizer= takes an embtab.optim fused optimizer.*torch optimizer Adam"):
        embtab.Embedding(10, 4, optimizer=torch.optim.Adam(params))
    with pytest.raises(TypeError, match=r"got 'adam'"):
        embtab.Embedding(10, 4, optimizer="adam")


def test_scheduler_set_bad_lr_is_reported_at_backward() -> None:
    bag = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.SGD(lr=0.1))
    bag.optimizer.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"SGD: lr must be finite"):
        bag(torch.tensor([1]), torch.tensor([0])).sum().backward()


def test_unknown_backend_env_var_is_named_at_the_first_lookup(set_backend) -> None:  # type: ignore[no-untyped-def]
    set_backend("cuda-magic")  # import and refresh do not fail on it
    bag = embtab.EmbeddingBag(10, 4, mode="sum", optimizer=embtab.optim.SGD(lr=0.1))
    with pytest.raises(ValueError, match=r"\$EMBTAB_BACKEND: unknown backend 'cuda-magic'; choose one of"):
        bag(torch.tensor([1]), torch.tensor([0])).sum().backward()
