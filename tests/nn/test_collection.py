"""embtab.EmbeddingBagCollection against per-table embtab.EmbeddingBag and the float64 oracle."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import embtab
from embtab.ops import registry
from tests.conftest import assert_close
from tests.optim._oracle import Oracle

SPECS = {
    "sgd": lambda: embtab.optim.SGD(lr=0.3, weight_decay=0.05),
    "adagrad": lambda: embtab.optim.Adagrad(lr=0.2),
    "rowwise_adagrad": lambda: embtab.optim.RowWiseAdagrad(lr=0.2, weight_decay=0.05),
    "adam": lambda: embtab.optim.Adam(lr=0.05, weight_decay=0.05),
    "adamw": lambda: embtab.optim.AdamW(lr=0.05),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tables() -> list[embtab.TableConfig]:
    return [
        embtab.TableConfig("item", 40, 8, feature_names=["item", "clicked_item"]),  # shared
        embtab.TableConfig("user", 15, 4, pooling="mean", oov="hash", num_oov_buckets=3),
        embtab.TableConfig("tag", 9, 16, pooling="max", padding_idx=0, oov="zero"),
    ]


def _batch(gen: torch.Generator, batch: int = 5, psw: bool = False) -> dict:
    features = {}
    for name, high in (("item", 40), ("clicked_item", 6), ("user", 20), ("tag", 11)):
        lengths = torch.randint(0, 5, (batch,), generator=gen)
        ids = torch.randint(0, high, (int(lengths.sum()),), generator=gen)  # user, tag: some out of range
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        weights = torch.rand(ids.numel(), generator=gen) + 0.5 if psw and name == "item" else None
        features[name] = (ids, offsets) if weights is None else (ids, offsets, weights)
    return features


def _per_table(ebc: embtab.EmbeddingBagCollection, **kwargs: object) -> dict[str, embtab.EmbeddingBag]:
    """Per-table EmbeddingBags holding copies of the collection's weights."""
    out = {}
    for t in ebc.tables:
        bag = embtab.EmbeddingBag(
            t.num_embeddings, t.embedding_dim, mode=t.pooling, padding_idx=t.padding_idx, oov=t.oov,
            num_oov_buckets=t.num_oov_buckets, **kwargs,
        )
        with torch.no_grad():
            bag.weight.copy_(ebc.embedding_bags[t.name].weight)
        out[t.name] = bag
    return out


def test_same_seed_same_weights_as_per_table_modules() -> None:
    torch.manual_seed(5)
    ebc = embtab.EmbeddingBagCollection(_tables())
    torch.manual_seed(5)
    bags = [embtab.EmbeddingBag(t.num_rows - t.num_oov_buckets, t.embedding_dim, mode=t.pooling,
                                padding_idx=t.padding_idx, oov=t.oov, num_oov_buckets=t.num_oov_buckets)
            for t in _tables()]
    for bag, t in zip(bags, _tables()):
        torch.testing.assert_close(ebc.embedding_bags[t.name].weight, bag.weight, rtol=0, atol=0)


@pytest.mark.parametrize("psw", [False, True])
def test_without_optimizer_matches_per_table_embedding_bags(psw: bool) -> None:
    ebc = embtab.EmbeddingBagCollection(_tables())
    bags = _per_table(ebc)
    features = _batch(torch.Generator().manual_seed(1), psw=psw)
    out = ebc(features)
    assert list(out) == ["item", "clicked_item", "user", "tag"] == list(ebc.feature_names)
    grad = torch.randn(5, ebc.output_dim)
    out.concat().backward(grad)
    col = 0
    for f in ebc.feature_names:
        table = {"item": "item", "clicked_item": "item", "user": "user", "tag": "tag"}[f]
        y = bags[table](*features[f])
        assert_close(out[f], y)
        (y * grad[:, col:col + y.shape[1]]).sum().backward()
        col += y.shape[1]
    for t in ebc.tables:
        assert_close(ebc.embedding_bags[t.name].weight.grad, bags[t.name].weight.grad)
    assert ebc.embedding_bags["user"].oov_count == bags["user"].oov_count > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_inference_forward_matches_per_table_embedding_bags(threads: int) -> None:
    torch.set_num_threads(threads)
    ebc = embtab.EmbeddingBagCollection(_tables(), optimizer=embtab.optim.SGD(lr=0.1))
    bags = _per_table(ebc)
    features = _batch(torch.Generator().manual_seed(7), psw=True)
    features["user"] = (features["user"][0].int(), features["user"][1])  # int32 ids, int64 offsets
    with torch.no_grad():
        out = ebc(features)
    assert torch.get_num_threads() == threads  # the forward leaves torch's thread count alone
    table_of = {"item": "item", "clicked_item": "item", "user": "user", "tag": "tag"}
    for f in ebc.feature_names:
        with torch.no_grad():
            assert_close(out[f], bags[table_of[f]](*features[f]))
    assert ebc.embedding_bags["tag"].oov_count == bags["tag"].oov_count > 0
    with pytest.raises(IndexError, match=r"feature 'item' \(table 'item'\): id 40 at position 1"):
        with torch.no_grad():
            ebc({**features, "item": (torch.tensor([3, 40]), torch.tensor([0, 1, 1, 1, 1]))})


def test_two_threads_train_exactly_like_one() -> None:
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        tables = _tables() + [embtab.TableConfig("big", 5000, 16)]
        ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.01))
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            features = _batch(gen)
            features["big"] = (torch.randint(0, 5000, (3000,), generator=gen), torch.tensor([0, 600, 1200, 1800, 2400]))
            out = ebc(features).concat()
            out.backward(torch.randn(out.shape, generator=gen))
        results.append(ebc.state_dict())
    for key, value in results[0].items():  # every row is summed and updated by one thread, in a fixed order
        torch.testing.assert_close(results[1][key], value, rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_fused_matches_per_table_fused_modules(kind: str) -> None:
    # Unshared tables only: a shared table sums its features first (see the oracle test).
    tables = [t for t in _tables() if t.name != "item"] + [embtab.TableConfig("solo", 30, 8)]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=SPECS[kind]())
    bags = _per_table(ebc, optimizer=SPECS[kind]())
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        features = {k: v for k, v in _batch(gen).items() if k in ("user", "tag")}
        features["solo"] = (torch.randint(0, 30, (12,), generator=gen), torch.tensor([0, 2, 2, 9, 12]))
        out = ebc(features)
        grads = {f: torch.randn(5, out[f].shape[1], generator=gen) for f in out}
        ebc.concat(out).backward(torch.cat([grads[f] for f in ebc.feature_names], 1))
        for f, bag in bags.items():
            bag(*features[f]).backward(grads[f])
    for name, bag in bags.items():
        assert_close(ebc.embedding_bags[name].weight.detach(), bag.weight.detach())
        assert ebc.embedding_bags[name].weight.grad is None


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_frozen_table_is_not_updated_by_the_fused_step(kind: str) -> None:
    tables = [embtab.TableConfig("user", 15, 4), embtab.TableConfig("tag", 9, 16, pooling="max")]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=SPECS[kind]())
    bags = _per_table(ebc, optimizer=SPECS[kind]())
    for name in ("user", "tag"):
        frozen = name == "user"
        ebc.embedding_bags[name].weight.requires_grad_(not frozen)
        bags[name].weight.requires_grad_(not frozen)
    before = ebc.embedding_bags["user"].weight.detach().clone()
    tag_before = ebc.embedding_bags["tag"].weight.detach().clone()
    features = {"user": (torch.tensor([1, 2, 2, 14]), torch.tensor([0, 3])),
                "tag": (torch.tensor([0, 3, 8]), torch.tensor([0, 1]))}
    grad = torch.randn(2, 20, generator=torch.Generator().manual_seed(3))
    ebc(features).concat().backward(grad)
    bags["tag"](*features["tag"]).backward(grad[:, 4:])
    assert torch.equal(ebc.embedding_bags["user"].weight.detach(), before)
    assert_close(ebc.embedding_bags["tag"].weight.detach(), bags["tag"].weight.detach())
    assert not torch.equal(ebc.embedding_bags["tag"].weight.detach(), tag_before)  # the step did run


def test_per_sample_weight_gradients_with_fused_optimizer() -> None:
    ebc = embtab.EmbeddingBagCollection(_tables(), optimizer=embtab.optim.SGD(lr=0.1))
    plain = embtab.EmbeddingBagCollection(_tables())
    plain.load_state_dict(ebc.state_dict())
    features = _batch(torch.Generator().manual_seed(9), psw=True)
    ids, offsets, weights = features["item"]
    w1, w2 = weights.clone().requires_grad_(), weights.clone().requires_grad_()
    grad = torch.randn(5, ebc.output_dim)
    ebc({**features, "item": (ids, offsets, w1)}).concat().backward(grad)
    plain({**features, "item": (ids, offsets, w2)}).concat().backward(grad)
    assert_close(w1.grad, w2.grad)  # from the rows as the forward saw them


@st.composite
def collections(draw: st.DrawFn) -> dict:
    tables, features = [], []
    for i in range(draw(st.integers(1, 3))):
        rows = draw(st.integers(1, 12))
        oov = draw(st.sampled_from(["error", "zero", "hash", "padding"]))
        padding = draw(st.integers(0, rows - 1)) if oov == "padding" or draw(st.booleans()) else None
        names = [f"t{i}f{j}" for j in range(draw(st.integers(1, 2)))]  # shared tables
        tables.append(dict(name=f"t{i}", num_embeddings=rows, embedding_dim=draw(st.sampled_from([1, 5, 16, 18])),
                           feature_names=names, pooling=draw(st.sampled_from(["sum", "mean", "max"])), oov=oov,
                           num_oov_buckets=draw(st.integers(1, 2)) if oov == "hash" else 0, padding_idx=padding))
        features += [(n, rows, oov) for n in names]
    batch = draw(st.integers(1, 4))
    steps = []
    for _ in range(2):
        step = {}
        for name, rows, oov in features:
            lengths = draw(st.lists(st.integers(0, 5), min_size=batch, max_size=batch))
            low, high = (0, rows - 1) if oov == "error" else (-2, rows + 2)
            step[name] = (lengths, draw(st.lists(st.integers(low, high), min_size=sum(lengths), max_size=sum(lengths))))
        steps.append(step)
    return dict(tables=tables, steps=steps, kind=draw(st.sampled_from(sorted(SPECS))))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=collections())
def test_fused_collection_matches_float64_oracle(case: dict) -> None:
    configs = [embtab.TableConfig(**t) for t in case["tables"]]
    spec = SPECS[case["kind"]]()
    ebc = embtab.EmbeddingBagCollection(configs, optimizer=spec, dtype=torch.float64)
    oracles = {t.name: Oracle(ebc.embedding_bags[t.name].weight, spec) for t in configs}
    for step in case["steps"]:
        features = {
            f: (torch.tensor(ids, dtype=torch.int64), torch.tensor([0] + lengths[:-1], dtype=torch.int64).cumsum(0))
            for f, (lengths, ids) in step.items()
        }
        out = ebc(features)
        grads = {f: torch.randn_like(out[f]) for f in out}
        total = sum((out[f] * grads[f]).sum() for f in out)
        total.backward()
        for t in configs:
            oracles[t.name].step(
                [dict(input=features[f][0], offsets=features[f][1], mode=t.pooling) for f in t.feature_names],
                [grads[f] for f in t.feature_names],
                oov=t.oov, padding_idx=t.padding_idx, buckets=t.num_oov_buckets,
            )
    for t in configs:
        assert_close(ebc.embedding_bags[t.name].weight.detach(), oracles[t.name].weight)


def test_without_numba_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(0)
        ebc = embtab.EmbeddingBagCollection(_tables(), optimizer=embtab.optim.Adam(lr=0.1))
        gen = torch.Generator().manual_seed(3)
        for _ in range(2):
            out = ebc(_batch(gen, psw=True)).concat()
            out.backward(torch.randn(out.shape, generator=gen))
        return torch.cat([b.weight.detach().reshape(-1) for b in ebc.embedding_bags.values()])

    fast = run()
    monkeypatch.setitem(registry._optional, "embtab.ops.numba.update", ImportError("no numba"))
    monkeypatch.setattr(registry, "_warned", set())
    registry.refresh()
    try:
        assert registry.select("auto", torch.device("cpu"), torch.float32).update.name == "torch"
        with pytest.warns(RuntimeWarning, match="numba is not available"):
            assert_close(run(), fast)
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_import_and_train_without_numba(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import sys; sys.modules['numba'] = None\n"  # any 'import numba' now raises ImportError
        "import torch, embtab\n"
        "ebc = embtab.EmbeddingBagCollection([embtab.TableConfig('t', 10, 4)], optimizer=embtab.optim.Adagrad())\n"
        "ebc({'t': (torch.tensor([1, 2, 2]), torch.tensor([0, 1]))}).concat().sum().backward()\n"
        "assert 'numba not available' in str(embtab.backends())\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_state_dict_round_trip_mid_training_gives_identical_steps() -> None:
    def make() -> embtab.EmbeddingBagCollection:
        return embtab.EmbeddingBagCollection(_tables(), optimizer=embtab.optim.RowWiseAdagrad(lr=0.1))

    def train(ebc: embtab.EmbeddingBagCollection, seeds: range) -> None:
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            out = ebc(_batch(gen)).concat()
            out.backward(torch.randn(out.shape, generator=gen))

    a = make()
    train(a, range(3))
    state = a.state_dict()
    assert "embedding_bags.item.optim_sum" in state and "embedding_bags.item.weight" in state
    b = make()
    b.load_state_dict(state)
    train(a, range(3, 6))
    train(b, range(3, 6))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)


def test_one_learning_rate_for_all_tables_driven_by_a_scheduler() -> None:
    ebc = embtab.EmbeddingBagCollection(_tables(), optimizer=embtab.optim.SGD(lr=1.0))
    assert all(b.optimizer is ebc.optimizer for b in ebc.embedding_bags.values())
    scheduler = torch.optim.lr_scheduler.LambdaLR(ebc.optimizer, lambda epoch: 0.0 if epoch else 1.0)
    ebc.optimizer.step()
    scheduler.step()  # lr is now 0: the next step must not move anything
    before = {k: v.clone() for k, v in ebc.state_dict().items()}
    ebc(_batch(torch.Generator().manual_seed(0))).concat().sum().backward()
    for k, v in ebc.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_keyed_jagged_tensor_input_matches_mapping() -> None:
    jagged = pytest.importorskip("torchrec.sparse.jagged_tensor")
    ebc = embtab.EmbeddingBagCollection(_tables())
    features = _batch(torch.Generator().manual_seed(4), psw=False)
    lengths, values = [], []
    for f in ebc.feature_names:
        ids, offsets = features[f]
        ends = torch.cat([offsets, torch.tensor([ids.numel()])])
        lengths.append(ends[1:] - ends[:-1])
        values.append(ids)
    kjt = jagged.KeyedJaggedTensor.from_lengths_sync(
        keys=list(reversed(ebc.feature_names)),  # key order does not matter
        values=torch.cat(list(reversed(values))), lengths=torch.cat(list(reversed(lengths))),
    )
    out_kjt, out_map = ebc(kjt), ebc(features)
    for f in ebc.feature_names:
        assert_close(out_kjt[f], out_map[f])


def test_keyed_jagged_tensor_errors_name_the_feature_and_the_mismatch() -> None:
    jagged = pytest.importorskip("torchrec.sparse.jagged_tensor")
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("a", 10, 3), embtab.TableConfig("b", 10, 2)])
    make = jagged.KeyedJaggedTensor
    short = make(keys=["a", "b"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths sum to 4 \('a': 2, 'b': 2\) but it holds 3 values"):
        ebc(short)
    weights = make(keys=["a", "b"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]),
                   weights=torch.ones(3))
    with pytest.raises(ValueError, match=r"weights have shape \(3,\), its values \(4,\); give one weight per value"):
        ebc(weights)
    twice = make(keys=["a", "a"], values=torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"names features \['a'\] more than once"):
        ebc(twice)


def test_jagged_tensors_in_the_mapping_and_to_dict() -> None:
    jagged = pytest.importorskip("torchrec.sparse.jagged_tensor")
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("a", 10, 3), embtab.TableConfig("b", 10, 2, pooling="mean")])
    a = jagged.JaggedTensor(values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1]))
    b = jagged.JaggedTensor(values=torch.tensor([4, 5, 6, 7]), lengths=torch.tensor([0, 4]))
    out = ebc({"a": a, "b": b})
    expected = ebc({"a": (torch.tensor([1, 2, 3]), torch.tensor([0, 2])), "b": (torch.tensor([4, 5, 6, 7]), torch.tensor([0, 0]))})
    assert out.to_dict().keys() == {"a", "b"} and isinstance(out.to_dict(), dict)
    for f in ("a", "b"):
        assert_close(out.to_dict()[f], expected[f])


def test_concat_and_output_mapping() -> None:
    ebc = embtab.EmbeddingBagCollection(_tables())
    out = ebc(_batch(torch.Generator().manual_seed(0)))
    cat = out.concat()
    assert cat.shape == (5, ebc.output_dim) == (5, 8 + 8 + 4 + 16)
    assert_close(ebc.concat(dict(reversed(list(out.items())))), cat)  # fixed order, whatever the mapping's
    assert_close(cat[:, 16:20], out["user"])
    with pytest.raises(TypeError):
        out["user"] = torch.zeros(5, 4)  # type: ignore[index]
    with pytest.raises(KeyError, match=r"lacks features \['tag'\]"):
        ebc.concat({k: v for k, v in out.items() if k != "tag"})
    assert "PooledEmbeddings({'item': (5, 8)" in repr(out)


def test_fixed_length_bags_and_int32_ids() -> None:
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("a", 10, 3)], optimizer=embtab.optim.SGD(lr=0.5))
    bag = _per_table(ebc, optimizer=embtab.optim.SGD(lr=0.5))["a"]
    ids = torch.tensor([[1, 2, 2], [3, 1, 0]], dtype=torch.int32)
    ebc({"a": ids}).concat().sum().backward()
    bag(ids).sum().backward()
    assert_close(ebc.embedding_bags["a"].weight.detach(), bag.weight.detach())


# --- errors -----------------------------------------------------------------------------


def test_input_errors_name_the_feature() -> None:
    ebc = embtab.EmbeddingBagCollection(_tables())
    good = _batch(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"must have exactly the features .*missing \['tag'\]; unknown \['tags'\]"):
        ebc({**{k: v for k, v in good.items() if k != "tag"}, "tags": good["tag"]})
    with pytest.raises(TypeError, match=r"features must be a mapping .* got list"):
        ebc([good["item"]])
    with pytest.raises(TypeError, match=r"feature 'user' must be \(ids, offsets\)"):
        ebc({**good, "user": (good["user"][0],)})
    short = (good["user"][0][:1], torch.tensor([0]))  # batch of 1
    with pytest.raises(ValueError, match=r"same batch size, got 'item': 5, 'clicked_item': 5, 'user': 1"):
        ebc({**good, "user": short})
    with pytest.raises(IndexError, match=r"feature 'item' \(table 'item'\): id 99 at position 0 is out of range"):
        ebc({**good, "item": (torch.tensor([99]), torch.tensor([0, 1, 1, 1, 1]))})
    with pytest.raises(ValueError, match=r"feature 'clicked_item' \(table 'item'\): offsets must start at 0"):
        ebc({**good, "clicked_item": (torch.tensor([1, 2]), torch.tensor([1, 1, 2, 2, 2]))})
    with pytest.raises(TypeError, match=r"feature 'tag' \(table 'tag'\): input must hold int64 or int32 ids"):
        ebc({**good, "tag": (good["tag"][0].float(), good["tag"][1])})


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(0, 4), other=st.integers(0, 4), width=st.integers(0, 3), two_d=st.booleans(),
       data=st.data())
def test_the_batch_size_is_read_alike_from_every_input_form(batch: int, other: int, width: int, two_d: bool,
                                                             data: st.DataObject) -> None:
    """A 2-D ids tensor, (ids, offsets) and a JaggedTensor (offsets with the end) give torch's
    batch; features of different batches are refused by name, whatever their forms."""
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("a", 10, 3), embtab.TableConfig("b", 10, 2)])
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    a = torch.randint(0, 10, (batch, width), generator=gen)  # 2-D: batch bags of width ids
    lengths = torch.randint(0, 3, (other,), generator=gen)
    b_ids = torch.randint(0, 10, (int(lengths.sum()),), generator=gen)
    b_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])[:other]
    b = (b_ids, b_offsets)
    if data.draw(st.booleans(), label="jagged"):  # offsets with the end, as include_last_offset=True
        b = pytest.importorskip("torchrec.sparse.jagged_tensor").JaggedTensor(values=b_ids, lengths=lengths)
    features = {"a": a if two_d else (a.reshape(-1), torch.arange(batch) * width), "b": b}
    if batch != other:
        with pytest.raises(ValueError, match=rf"same batch size, got 'a': {batch}, 'b': {other}"):
            ebc(features)
        return
    out = ebc(features)
    bags = _per_table(ebc)
    # torch's own 2-D path fails on (B, 0) ids: its 1-D twin is the oracle
    expected_a = torch.nn.functional.embedding_bag(a.reshape(-1), bags["a"].weight, torch.arange(batch) * width,
                                                   mode="sum")
    expected_b = torch.nn.functional.embedding_bag(b_ids, bags["b"].weight, b_offsets, mode="sum")
    assert_close(out["a"], expected_a)
    assert_close(out["b"], expected_b)


@pytest.mark.parametrize("pooling", ["sum", "mean", "max"])
@pytest.mark.parametrize("path", ["no_grad", "autograd", "fused"])
@pytest.mark.parametrize("bad", [-1, 12])
def test_out_of_range_id_is_named_on_every_path(pooling: str, path: str, bad: int) -> None:
    """Under oov="error" the lookup kernel's bounds check may stand in for ours: the error
    must still name the id, its position and the range, and nothing may be updated."""
    optimizer = embtab.optim.Adagrad(lr=0.1) if path == "fused" else None
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("t", 12, 3, pooling=pooling)], optimizer=optimizer)
    before = ebc.embedding_bags["t"].weight.detach().clone()
    flat = (torch.tensor([1, 2, bad, 3, bad], dtype=torch.int32), torch.tensor([0, 2, 2]))
    fixed = (torch.tensor([[1, 2], [bad, 3], [4, bad]]), None)  # 2-D ids: bag = row
    for (ids, offsets), position, count in ((flat, "2", "2 of 5"), (fixed, r"\(1, 0\)", "2 of 6")):
        with pytest.raises(IndexError, match=rf"feature 't' \(table 't'\): id {bad} at position {position} is out of "
                                             rf"range for a table of 12 rows \(valid ids are 0..11\); {count} ids"):
            with torch.set_grad_enabled(path != "no_grad"):
                ebc({"t": (ids, offsets)}).concat().sum().backward()
    assert torch.equal(ebc.embedding_bags["t"].weight.detach(), before)


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match=r"two tables are named 'a'"):
        embtab.EmbeddingBagCollection([embtab.TableConfig("a", 3, 2), embtab.TableConfig("a", 4, 2)])
    with pytest.raises(ValueError, match=r"feature 'x' is listed by table 'a' and by table 'b'"):
        embtab.EmbeddingBagCollection([embtab.TableConfig("a", 3, 2, feature_names=["x"]),
                                       embtab.TableConfig("b", 3, 2, feature_names=["x"])])
    with pytest.raises(TypeError, match=r"got one TableConfig; wrap it"):
        embtab.EmbeddingBagCollection(embtab.TableConfig("a", 3, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tables\[1\] must be a TableConfig, got dict"):
        embtab.EmbeddingBagCollection([embtab.TableConfig("a", 3, 2), {"name": "b"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"at least one TableConfig"):
        embtab.EmbeddingBagCollection([])
    with pytest.raises(TypeError, match=r"torch optimizer SGD"):
        embtab.EmbeddingBagCollection([embtab.TableConfig("a", 3, 2)],
                                      optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))


@pytest.mark.parametrize("name", ["items", "keys", "values", "type", "train", "to", "forward", "a.b", "état"])
def test_any_non_empty_string_names_a_table(name: str) -> None:
    tables = [embtab.TableConfig(name, 10, 3, feature_names=[name, "second"]), embtab.TableConfig("other", 5, 2)]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adagrad(lr=0.1))
    assert isinstance(ebc.embedding_bags[name], embtab.EmbeddingBag)
    assert list(ebc.embedding_bags) == [name, "other"]
    assert f"embedding_bags.{name}.weight" in ebc.state_dict() and f"embedding_bags.{name}.optim_sum" in ebc.state_dict()
    batch = {name: (torch.tensor([1, 2]), torch.tensor([0, 1])), "second": (torch.tensor([3]), torch.tensor([0, 1])),
             "other": (torch.tensor([4, 0]), torch.tensor([0, 1]))}
    ebc(batch).concat().sum().backward()
    fresh = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adagrad(lr=0.1))
    fresh.load_state_dict(ebc.state_dict())
    for key, value in ebc.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
    assert callable(ebc.train) and callable(ebc.embedding_bags.to)  # no attribute shadowed


def test_backend_name_reaches_the_lookups_and_the_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    from embtab.ops import reference as lookup_reference, update_reference

    calls: list[str] = []
    for module, names in ((lookup_reference, ["embedding_bag_forward", "embedding_bag_inference"]),
                          (update_reference, ["fused_update", "run_jobs"])):
        for fn in names:
            original = getattr(module, fn)
            monkeypatch.setattr(module, fn, lambda *a, _f=original, _n=fn, **k: (calls.append(_n), _f(*a, **k))[1])
    ebc = embtab.EmbeddingBagCollection([embtab.TableConfig("t", 6, 2)], optimizer=embtab.optim.SGD(lr=0.1),
                                        backend="reference")
    ebc({"t": (torch.tensor([1, 2]), torch.tensor([0, 1]))}).concat().sum().backward()
    lookups = [c for c in calls if c.startswith("embedding_bag")]
    assert lookups and calls[:len(lookups)] == lookups and calls[len(lookups):] == ["run_jobs", "fused_update"]
