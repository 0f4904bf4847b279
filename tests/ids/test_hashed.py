"""embtab.ids.Hashed: the hashing trick, hash embeddings against a float64 formula, gradients, optimizers."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab.ids import Hashed, hash_bucket, hash_key, seeded_bucket, seeded_bucket_py
from embtab.ops import update_reference
from tests.conftest import assert_close

I64 = st.integers(-(2**63), 2**63 - 1)
EDGE = torch.tensor([-(2**63), 2**63 - 1, -1, 0, 7, 2**40, -(2**33)])
MODES = ["sum", "mean", "max"]
SPECS = {
    "sgd": lambda: embtab.optim.SGD(lr=0.3, weight_decay=0.05),
    "adagrad": lambda: embtab.optim.Adagrad(lr=0.2, initial_accumulator_value=0.1),
    "rowwise_adagrad": lambda: embtab.optim.RowWiseAdagrad(lr=0.2),
    "adam": lambda: embtab.optim.Adam(lr=0.05),
    "adamw": lambda: embtab.optim.AdamW(lr=0.05),
}


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the hashes ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(I64, min_size=1, max_size=20), st.integers(0, 2**63 - 1), st.integers(0, 5), st.integers(1, 10**6))
def test_seeded_hashes_match_their_pure_python_definition(ids: list[int], seed: int, i: int, buckets: int) -> None:
    key = hash_key(seed, i)
    assert seeded_bucket(torch.tensor(ids), key, buckets).tolist() == [seeded_bucket_py(x, key, buckets) for x in ids]


def test_hashes_are_pinned() -> None:
    # A change here breaks every checkpoint trained with ids=Hashed.
    assert hash_key(0, 0) == 0
    assert hash_key(0, 1) == 0xB456BCFC34C2CB2C
    assert seeded_bucket(EDGE, hash_key(3, 1), 1000).tolist() == [789, 57, 32, 186, 695, 738, 840]


def test_the_hashes_of_an_id_are_independent() -> None:
    stage = embtab.Embedding(31, 2, ids=Hashed(2, seed=9)).ids
    rows = stage.rows(torch.arange(-50_000, 50_000))  # (N, 2)
    cells = torch.bincount(rows[:, 0] * 31 + rows[:, 1], minlength=31 * 31)  # 104 expected per cell
    assert cells.min() > 55 and cells.max() < 160
    assert bool((rows[:, 0] != rows[:, 1]).float().mean() > 0.9)


# --- lookups against the formula ---------------------------------------------------------------


def _vectors(module: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """sum_i p_i(id) W[h_i(id)] in float64: the per-id vectors by the definition."""
    stage = module.ids
    w = module.weight.detach().double()
    rows = stage.rows(ids)  # (N, k)
    p = torch.ones(rows.shape, dtype=torch.float64)
    if stage.importance is not None:
        p = stage.importance.weight.detach().double()[stage.importance_rows_of(ids)]
    return (p.unsqueeze(-1) * w[rows]).sum(1)


@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
def test_one_unweighted_hash_is_exactly_the_hashing_trick(backend: str) -> None:
    emb = embtab.Embedding(50, 4, ids=Hashed(1, importance=False), backend=backend)
    ids = EDGE.reshape(1, -1)
    assert torch.equal(emb(ids), torch.nn.functional.embedding(hash_bucket(ids, 50), emb.weight))
    for mode in MODES:
        bag = embtab.EmbeddingBag(50, 4, mode=mode, ids=Hashed(1, importance=False), backend=backend)
        offsets = torch.tensor([0, 3])
        ref = torch.nn.functional.embedding_bag(hash_bucket(EDGE, 50), bag.weight, offsets, mode=mode)
        assert torch.equal(bag(EDGE, offsets), ref)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("num_hashes,importance", [(1, True), (2, True), (3, False)])
def test_unpooled_lookups_are_the_weighted_sums(backend: str, num_hashes: int, importance: bool) -> None:
    emb = embtab.Embedding(40, 5, ids=Hashed(num_hashes, importance=importance, seed=4), backend=backend)
    if importance:
        with torch.no_grad():
            emb.ids.importance.weight.uniform_(-1, 2)
    ids = torch.cat([EDGE, torch.randint(-(2**62), 2**62, (9,))]).reshape(4, 4)
    out = emb(ids)
    assert out.shape == (4, 4, 5)
    assert_close(out.double(), _vectors(emb, ids.reshape(-1)).reshape(4, 4, 5), torch.float32)


@settings(max_examples=25, deadline=None)
@given(mode=st.sampled_from(MODES), lengths=st.lists(st.integers(0, 4), min_size=1, max_size=5),
       psw=st.booleans(), num_hashes=st.integers(1, 3), seed=st.integers(0, 3))
def test_bags_pool_the_per_id_vectors(mode: str, lengths: list[int], psw: bool, num_hashes: int, seed: int) -> None:
    torch.manual_seed(seed)
    bag = embtab.EmbeddingBag(23, 3, mode=mode, ids=Hashed(num_hashes, seed=seed), dtype=torch.float64)
    with torch.no_grad():
        bag.ids.importance.weight.uniform_(-1, 2)
    n = sum(lengths)
    ids = torch.randint(-(2**63), 2**63 - 1, (n,))
    offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
    weights = torch.rand(n, dtype=torch.float64) if psw and mode == "sum" else None
    out = bag(ids, offsets, weights)
    ref = torch.nn.functional.embedding_bag(torch.arange(n), _vectors(bag, ids), offsets, mode=mode,
                                            per_sample_weights=weights)
    assert_close(out, ref)
    out.sum().backward()  # gradients flow (their values: the gradcheck below)


@pytest.mark.parametrize("mode", [None, "sum", "mean", "max"])
def test_gradients_reach_the_rows_and_the_importance_weights(mode: str | None) -> None:
    torch.manual_seed(1)
    kwargs = dict(ids=Hashed(2, seed=1), dtype=torch.float64)
    module = embtab.Embedding(11, 3, **kwargs) if mode is None else embtab.EmbeddingBag(11, 3, mode=mode, **kwargs)
    imp = module.ids.importance
    with torch.no_grad():
        imp.weight.uniform_(0.5, 1.5)
        module.weight.copy_(torch.randn(11, 3, dtype=torch.float64))  # distinct values: max has no ties
    ids = torch.tensor([3, -8, 2**50, 3, 12345, -(2**63)])
    offsets = torch.tensor([0, 2, 5])
    psw = torch.rand(6, dtype=torch.float64, requires_grad=True) if mode == "sum" else None

    def f(w: torch.Tensor, p: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        params = {"weight": w, "ids.importance.weight": p}
        args = (ids.reshape(2, 3),) if mode is None else (ids, offsets, *rest)
        return torch.func.functional_call(module, params, args)

    inputs = [module.weight.detach().clone().requires_grad_(), imp.weight.detach().clone().requires_grad_()]
    inputs += [psw] if psw is not None else []
    assert torch.autograd.gradcheck(f, inputs)
    out = f(*inputs)
    grads = torch.autograd.grad(out.sum(), inputs[:2])
    assert all(bool(g.abs().sum() > 0) for g in grads)


# --- training ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("mode", [None, "mean", "max"])
def test_every_fused_optimizer_updates_rows_and_importance_weights_like_the_reference(name: str,
                                                                                    mode: str | None) -> None:
    torch.manual_seed(2)
    spec = SPECS[name]()
    kwargs = dict(ids=Hashed(2, seed=3))
    if mode is None:
        fused, plain = (embtab.Embedding(13, 4, optimizer=o, **kwargs) for o in (spec, None))
    else:
        fused, plain = (embtab.EmbeddingBag(13, 4, mode=mode, optimizer=o, **kwargs) for o in (spec, None))
    plain.load_state_dict(fused.state_dict(), strict=False)
    with torch.no_grad():
        for m in (fused, plain):
            m.ids.importance.weight.copy_(torch.linspace(0.5, 1.5, 26).reshape(13, 2))
    hyper = spec.hyper(spec.hyperparameters())
    state = {t: {k: v.double() if v.is_floating_point() else v.clone() for k, v in t._optim_state().items()}
             for t in fused._trained_tables()}
    oracle = {t: t.weight.detach().double().clone() for t in fused._trained_tables()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(-(2**62), 2**62, (6,), generator=gen)
        ids[3] = ids[0]  # a duplicate
        args = (ids.reshape(2, 3),) if mode is None else (ids, torch.tensor([0, 2]))
        g = torch.randn(fused(*args).shape, generator=gen)
        for m in (fused, plain):
            m.zero_grad()
            with torch.no_grad():  # the plain copy holds the oracle's weights, in float32
                if m is plain:
                    plain.weight.copy_(oracle[fused])
                    plain.ids.importance.weight.copy_(oracle[fused.ids.importance])
            (m(*args) * g).sum().backward()
        looked_up = (fused.ids.rows(ids), fused.ids.importance_rows_of(ids))  # every one is updated (see max)
        for t, twin, rows in zip((fused, fused.ids.importance), (plain, plain.ids.importance), looked_up):
            grad = twin.weight.grad.double()
            touched = torch.unique(rows)
            update_reference.fused_update(oracle[t], state[t], touched, grad[touched], hyper)
            assert_close(t.weight.detach(), oracle[t].float(), torch.float32)
    assert fused.weight.grad is None and fused.ids.importance.weight.grad is None


def test_in_a_collection_like_separate_modules() -> None:
    tables = [embtab.TableConfig(f"t{m}", 17, 3, pooling=m, ids=Hashed(2, seed=5)) for m in MODES]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adagrad(lr=0.1))
    bags = {}
    for t in tables:
        bag = embtab.EmbeddingBag(17, 3, mode=t.pooling, ids=t.ids, optimizer=embtab.optim.Adagrad(lr=0.1))
        bag.load_state_dict(ebc.embedding_bags[t.name].state_dict())
        bags[t.name] = bag
    ids, offsets = torch.tensor([5, -5, 2**60, 9, 9]), torch.tensor([0, 1, 3])
    for _ in range(2):
        out = ebc({name: (ids, offsets) for name in bags})
        singles = {name: bag(ids, offsets) for name, bag in bags.items()}
        for name in bags:
            assert_close(out[name], singles[name])
        out.concat().sum().backward()
        sum(o.sum() for o in singles.values()).backward()
    for name, bag in bags.items():
        assert_close(ebc.embedding_bags[name].ids.importance.weight, bag.ids.importance.weight)
        assert_close(ebc.embedding_bags[name].weight, bag.weight)


def test_state_dict_round_trip_and_refusals() -> None:
    a = embtab.EmbeddingBag(9, 2, mode="sum", ids=Hashed(2), optimizer=embtab.optim.Adam())
    a(EDGE, torch.tensor([0, 4])).sum().backward()
    b = embtab.EmbeddingBag(9, 2, mode="sum", ids=Hashed(2), optimizer=embtab.optim.Adam())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(EDGE, torch.tensor([0, 4])), b(EDGE, torch.tensor([0, 4])))
    assert set(a.state_dict()) == {"weight", "optim_exp_avg", "optim_exp_avg_sq", "optim_step",
                                   "ids.importance.weight", "ids.importance.optim_exp_avg",
                                   "ids.importance.optim_exp_avg_sq", "ids.importance.optim_step"}
    with pytest.raises(ValueError, match=r"num_hashes must be >= 1"):
        Hashed(0)
    with pytest.raises(ValueError, match=r"scale_grad_by_freq=True is not supported with ids="):
        embtab.Embedding(4, 2, scale_grad_by_freq=True, ids=Hashed())


@pytest.mark.parametrize("mode", [None, "sum", "mean", "max"])
def test_torch_compile_fullgraph_trains_like_eager(mode: str | None) -> None:
    torch._dynamo.reset()

    def make() -> torch.nn.Module:
        kwargs = dict(ids=Hashed(2), optimizer=embtab.optim.Adam(lr=0.1))
        return embtab.Embedding(20, 3, **kwargs) if mode is None else embtab.EmbeddingBag(20, 3, mode=mode, **kwargs)

    eager, module = make(), make()
    module.load_state_dict(eager.state_dict())
    compiled = torch.compile(module, fullgraph=True)
    args = (EDGE.reshape(1, -1),) if mode is None else (EDGE, torch.tensor([0, 3]))
    for _ in range(2):
        out_e, out_c = eager(*args), compiled(*args)
        assert_close(out_c, out_e)
        out_e.pow(2).sum().backward()
        out_c.pow(2).sum().backward()
    assert_close(module.weight, eager.weight)
    assert_close(module.ids.importance.weight, eager.ids.importance.weight)
