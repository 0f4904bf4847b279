"""embtab.ids.Dynamic against the dict-based model, and its promises: fresh rows, eval, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab.ids import LFU, LRU, TTL, Dynamic, MinCount, hash_key, seeded_bucket_py, seeded_rows_py
from tests.ids.dynamic_model import DynamicModel

I64_MIN, I64_MAX = -(2**63), 2**63 - 1
EDGE_IDS = [I64_MIN, I64_MAX, -1, 0, 1, -(2**40), 2**62]
POOL = EDGE_IDS + list(range(2, 14))
INDEXES = ["auto", "torch"]  # numba's hash table on CPU, and the torch-ops index (the CUDA path)
SPECS = {
    "sgd": lambda: embtab.optim.SGD(lr=0.3),
    "adagrad": lambda: embtab.optim.Adagrad(lr=0.2, initial_accumulator_value=0.25),
    "rowwise_adagrad": lambda: embtab.optim.RowWiseAdagrad(lr=0.2, initial_accumulator_value=0.5),
    "adam": lambda: embtab.optim.Adam(lr=0.05),
    "adamw": lambda: embtab.optim.AdamW(lr=0.05),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _policy(evict: str, ttl: int) -> LRU | LFU | TTL:
    return TTL(ttl) if evict == "ttl" else LRU() if evict == "lru" else LFU()


def _table(capacity: int, *, min_count: int = 1, evict: str = "lru", ttl: int = 2, index: str = "auto",
           dim: int = 2, **kwargs: object) -> embtab.Embedding:
    space = Dynamic(admit=MinCount(min_count), evict=_policy(evict, ttl), **kwargs)  # type: ignore[arg-type]
    return embtab.Embedding(capacity, dim, ids=space, backend=index)


def _pending(emb: embtab.Embedding) -> dict[int, int]:
    sd = emb.ids.state_dict()
    return dict(zip(sd["pending_ids"].tolist(), sd["pending_counts"].tolist()))


def _check_against(emb: embtab.Embedding, model: DynamicModel, batch: list[int], out: torch.Tensor) -> None:
    live = emb.ids.live_ids().tolist()
    assert live == sorted(model.row)
    rows = emb.ids.rows_of(torch.tensor(live, dtype=torch.int64)).tolist()
    assert rows == [model.row[i] for i in live]
    assert len(set(rows)) == len(rows) and all(0 <= r < model.capacity for r in rows)  # no row shared
    assert emb.ids.stats()["live"] == len(live) <= model.capacity
    assert emb.ids.stats() == model.stats_dict()
    assert _pending(emb) == model.pending
    expected_rows = [model.row.get(i, -1) for i in batch]
    w = emb.weight.detach()
    expected = torch.stack([w[r] if r >= 0 else torch.zeros(w.shape[1]) for r in expected_rows]) if batch else out
    assert torch.equal(out.reshape(-1, w.shape[1]), expected.reshape(-1, w.shape[1]))


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 6),
    min_count=st.integers(1, 3),
    evict=st.sampled_from(["lru", "lfu", "ttl"]),
    ttl=st.integers(1, 3),
    index=st.sampled_from(INDEXES),
    batches=st.lists(st.lists(st.sampled_from(POOL), max_size=10), min_size=1, max_size=10),
)
def test_random_streams_match_the_model(capacity: int, min_count: int, evict: str, ttl: int, index: str,
                                        batches: list[list[int]]) -> None:
    emb = _table(capacity, min_count=min_count, evict=evict, ttl=ttl, index=index)
    model = DynamicModel(capacity, min_count, evict, ttl if evict == "ttl" else 0)
    for batch in batches:
        before = dict(model.row)
        out = emb(torch.tensor(batch, dtype=torch.int64))
        model.train_step(batch)
        _check_against(emb, model, batch, out)
        # A live id keeps its row until it is evicted, and no id of the batch loses its row.
        for i, r in before.items():
            assert model.row.get(i, r) == r
            if i in batch:
                assert model.row.get(i) == r


def _drifting(steps: int, batch: int, window: int, seed: int) -> list[list[int]]:
    """Zipf-like ids from a window that drifts by a few ids a step (new ids arrive, old ones fade)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(steps):
        ranks = np.minimum(rng.zipf(1.3, batch), window) - 1
        out.append([int(v) for v in (3 * s + ranks) * 2654435761 - 2**40])  # spread, negative ones too
    return out


@pytest.mark.parametrize("index", INDEXES)
@pytest.mark.parametrize("evict", ["lru", "lfu", "ttl"])
@pytest.mark.parametrize("min_count", [1, 2])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_drifting_streams_match_the_model(index: str, evict: str, min_count: int, seed: int) -> None:
    emb = _table(24, min_count=min_count, evict=evict, ttl=3, index=index)
    model = DynamicModel(24, min_count, evict, 3 if evict == "ttl" else 0)
    for batch in _drifting(30, 40, 60, seed=seed):
        out = emb(torch.tensor(batch))
        model.train_step(batch)
        _check_against(emb, model, batch, out)
    assert model.stats["evicted"] > 0 and model.stats["hits"] > 0  # the stream exercised eviction


@pytest.mark.parametrize("evict,min_count", [("lru", 1), ("lfu", 1), ("lfu", 2), ("ttl", 1)])
def test_numba_and_torch_indexes_take_the_same_decisions_at_scale(evict: str, min_count: int) -> None:
    # The torch-ops index is what runs on CUDA: the same live set and the same row for every id.
    tables = [_table(300, min_count=min_count, evict=evict, ttl=4, index=i, dim=3,
                     fallback="hash", fallback_buckets=5) for i in INDEXES]
    tables[1].load_state_dict(tables[0].state_dict())  # the same fallback rows
    for batch in _drifting(25, 1500, 3000, seed=2):
        outs = [t(torch.tensor(batch)) for t in tables]
        assert torch.equal(outs[0], outs[1])
    live = [t.ids.live_ids() for t in tables]
    assert torch.equal(live[0], live[1]) and live[0].numel() == 300
    assert torch.equal(tables[0].ids.rows_of(live[0]), tables[1].ids.rows_of(live[1]))
    assert torch.equal(tables[0].weight, tables[1].weight)
    assert tables[0].ids.stats() == tables[1].ids.stats()


def test_victim_selection_cuts_ties_by_id_in_signed_order() -> None:
    # Many rows share the lowest score (LFU count 1): the selection cuts them by id, across
    # the 16-bit digits of the id and its sign.
    for index in INDEXES:
        emb = _table(400, evict="lfu", index=index)
        rng = np.random.default_rng(5)
        first = [int(v) for v in rng.integers(I64_MIN, I64_MAX, 400, dtype=np.int64)]
        emb(torch.tensor(first))
        emb(torch.tensor(first[:100]))  # count 2: kept
        fresh = [int(v) for v in rng.integers(-(2**20), 2**20, 123)]
        emb(torch.tensor(fresh))
        gone = set(first[100:]) - set(emb.ids.live_ids().tolist())
        assert gone == set(sorted(first[100:])[:123])


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("index", INDEXES)
def test_rows_given_to_new_ids_start_fresh(name: str, index: str) -> None:
    spec = SPECS[name]()
    space = Dynamic(evict=LRU(), seed=7)
    emb = embtab.Embedding(3, 4, ids=space, optimizer=spec, backend=index)
    initial = {n: f.initial for n, f in spec.state_layout().items()}
    key = hash_key(7, 1)
    gen = torch.Generator().manual_seed(0)
    reassigned = 0
    for step in range(12):
        batch = torch.tensor([step % 5, (step * 3) % 7 + 10, I64_MIN + step % 2])
        live_before = set(emb.ids.live_ids().tolist())
        out = emb(batch)
        new = [i for i in set(batch.tolist()) if i not in live_before]
        for i in new:  # after the forward's admission, before this step's update
            row = int(emb.ids.rows_of(torch.tensor([i])))
            assert emb.weight[row].tolist() == seeded_rows_py(i, key, 4)
            for n, value in initial.items():
                assert bool((getattr(emb, f"optim_{n}")[row] == value).all()), (n, i)
        reassigned += len(new)
        (out * torch.randn(out.shape, generator=gen)).sum().backward()
    assert reassigned > 6  # rows were reused, after training had moved them and their state


def test_admission_is_exact_at_the_min_count_boundary() -> None:
    emb = embtab.EmbeddingBag(4, 2, mode="sum", ids=Dynamic(admit=MinCount(3)), optimizer=embtab.optim.SGD(lr=1.0))
    w0 = emb.weight.detach().clone()
    out = emb(torch.tensor([7, 7, 9, 9, 9]), torch.tensor([0, 2]))  # 9: three sightings in one batch
    assert emb.ids.live_ids().tolist() == [9]
    assert torch.equal(out[0], torch.zeros(2))  # 7 has no row yet: the fallback
    out.sum().backward()
    assert emb.ids.stats()["pending"] == 1 and emb.ids.stats()["fallback_lookups"] == 2
    row9 = int(emb.ids.rows_of(torch.tensor([9])))
    changed = (emb.weight.detach() != w0).any(1).nonzero().flatten().tolist()
    assert changed == [row9]  # the pending id got no gradient
    emb(torch.tensor([7]), torch.tensor([0]))
    assert emb.ids.live_ids().tolist() == [7, 9]


def test_full_table_serves_candidates_in_ascending_id_order_and_counts_the_rest() -> None:
    emb = _table(3, evict="lru")
    emb(torch.tensor([50, 40]))
    out = emb(torch.tensor([50, 40, 30, 20, 10]))  # one free row, nothing evictable: the batch is protected
    assert emb.ids.live_ids().tolist() == [10, 40, 50]
    assert torch.equal(out[2:4], torch.zeros(2, 2))
    s = emb.ids.stats()
    assert s["rejected"] == 2 and s["pending"] == 2 and s["evicted"] == 0


def test_ttl_frees_expired_rows_and_never_evicts_unexpired_ones() -> None:
    emb = _table(2, evict="ttl", ttl=2)
    emb(torch.tensor([1, 2]))
    emb(torch.tensor([3]))  # full, nothing expired: the fallback
    assert emb.ids.live_ids().tolist() == [1, 2] and emb.ids.stats()["rejected"] == 1
    emb(torch.tensor([1]))  # step 3: 2 (last seen at step 1) expires; 1 is in the batch
    assert emb.ids.live_ids().tolist() == [1] and emb.ids.stats()["evicted"] == 1
    emb(torch.tensor([4]))
    assert emb.ids.live_ids().tolist() == [1, 4]


@pytest.mark.parametrize("fallback", ["zero", "shared", "hash"])
@pytest.mark.parametrize("index", INDEXES)
def test_eval_changes_nothing_and_unknown_ids_get_the_fallback(fallback: str, index: str) -> None:
    buckets = 3 if fallback == "hash" else 0
    emb = _table(4, index=index, fallback=fallback, fallback_buckets=buckets, seed=5, min_count=2)
    emb(torch.tensor([1, 1, 2, 3, 3, 2**62]))
    before = {k: v.clone() for k, v in emb.state_dict().items()}
    stats = emb.ids.stats()
    emb.eval()
    probe = torch.tensor([1, 2, 3, 99, I64_MIN, 2**62])
    out = emb(probe)
    after = emb.state_dict()
    assert stats == emb.ids.stats() and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    w = emb.weight.detach()
    for i, v in zip(probe.tolist(), out):
        row = int(emb.ids.rows_of(torch.tensor([i])))
        if row >= 0:
            assert torch.equal(v, w[row])
        elif fallback == "zero":
            assert torch.equal(v, torch.zeros(2))
        elif fallback == "shared":
            assert torch.equal(v, w[4])
        else:
            assert torch.equal(v, w[4 + seeded_bucket_py(i, hash_key(5, 0), 3)])


def test_shared_and_hash_fallback_rows_are_trained() -> None:
    for fallback, buckets in (("shared", 0), ("hash", 2)):
        emb = embtab.Embedding(2, 3, ids=Dynamic(admit=MinCount(5), fallback=fallback, fallback_buckets=buckets),
                               optimizer=embtab.optim.SGD(lr=0.5))
        w0 = emb.weight.detach().clone()
        emb(torch.tensor([10, 11, 12])).sum().backward()
        moved = (emb.weight.detach() != w0).any(1).nonzero().flatten()
        assert moved.numel() >= 1 and bool((moved >= 2).all())  # only fallback rows (the ids are pending)


def test_mean_bag_leaves_zero_fallback_ids_out_of_the_count() -> None:
    bag = embtab.EmbeddingBag(8, 3, mode="mean", ids=Dynamic(admit=MinCount(2)))
    bag(torch.tensor([5, 5, 6]), torch.tensor([0]))  # 5 admitted, 6 pending
    bag.eval()
    out = bag(torch.tensor([5, 6, 7]), torch.tensor([0]))
    row = int(bag.ids.rows_of(torch.tensor([5])))
    assert torch.equal(out[0], bag.weight.detach()[row])


def _train(emb: torch.nn.Module, batches: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    outs = []
    for b in batches:
        out = emb(b)
        (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum().backward()
        outs.append(out.detach())
    return outs


@pytest.mark.parametrize("index", INDEXES)
@pytest.mark.parametrize("fallback", ["zero", "hash"])
@pytest.mark.parametrize("evict", ["lru", "lfu", "ttl"])
def test_checkpoint_round_trip_is_exact_and_training_continues_alike(index: str, fallback: str, evict: str) -> None:
    def make(capacity: int, index: str) -> embtab.Embedding:
        space = Dynamic(admit=MinCount(2), evict=_policy(evict, 3), fallback=fallback,
                        fallback_buckets=2 if fallback == "hash" else 0)
        return embtab.Embedding(capacity, 3, ids=space, optimizer=embtab.optim.Adam(lr=0.1), backend=index)

    stream = [torch.tensor(b) for b in _drifting(16, 12, 20, seed=3)]
    every = torch.tensor(sorted({i for s in stream for i in s.tolist()} | set(EDGE_IDS)))
    a = make(10, index)
    _train(a, stream[:8], seed=1)
    assert a.ids.stats()["evicted"] > 0
    sd = a.state_dict()
    live = a.ids.stats()["live"]
    assert sd["weight"].shape[0] == live + (2 if fallback == "hash" else 0)  # grows with the live rows only
    assert sd["ids.ids"].tolist() == sorted(sd["ids.ids"].tolist())
    buffer = io.BytesIO()
    torch.save(sd, buffer)
    other = INDEXES[1 - INDEXES.index(index)]
    for capacity, where in ((10, index), (10, other), (live, index), (40, index)):
        buffer.seek(0)
        b = make(capacity, where)
        b.load_state_dict(torch.load(buffer, weights_only=True))
        a.eval(), b.eval()
        assert torch.equal(a(every), b(every))  # bitwise, for every id
        assert b.ids.stats() == {**a.ids.stats(), "capacity": capacity}
        if capacity == 10:  # training goes on exactly as it would have (evictions included)
            a2 = make(10, index)
            a2.load_state_dict(a.state_dict())
            b.train()
            # Bitwise on the same backend; the other index also updates with the other backend
            # (numba or torch ops), whose sums may round differently.
            same = torch.equal if where == index else torch.testing.assert_close
            for x, y in zip(_train(a2, stream[8:], 2), _train(b, stream[8:], 2)):
                assert same(x, y) in (True, None)
            assert torch.equal(a2.ids.live_ids(), b.ids.live_ids()) and a2.ids.stats() == b.ids.stats()
            a2.eval(), b.eval()
            assert same(a2(every), b(every)) in (True, None)
        a.train()


@pytest.mark.parametrize("index", INDEXES)
def test_checkpoint_loads_into_a_larger_table_and_trains_alike_without_eviction(index: str) -> None:
    def make(capacity: int) -> embtab.Embedding:
        return embtab.Embedding(capacity, 3, ids=Dynamic(evict=LFU()), optimizer=embtab.optim.AdamW(lr=0.1),
                                backend=index)

    stream = [torch.tensor(b) for b in _drifting(12, 10, 10, seed=6)]
    a = make(64)
    _train(a, stream[:6], 1)
    b = make(500)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(_train(a, stream[6:], 2), _train(b, stream[6:], 2)))
    assert a.ids.stats()["evicted"] == 0 and torch.equal(a.ids.live_ids(), b.ids.live_ids())


def test_checkpoint_refuses_too_small_a_table_and_corrupt_entries() -> None:
    a = _table(5)
    a(torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"4 live ids, more than this table's capacity num_embeddings=3"):
        _table(3).load_state_dict(a.state_dict())
    sd = a.state_dict()
    sd["ids.ids"] = sd["ids.ids"].flip(0)
    with pytest.raises(RuntimeError, match=r"ids.ids must be strictly ascending"):
        _table(5).load_state_dict(sd)
    sd = a.state_dict()
    del sd["ids.step"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*ids.step"):
        _table(5).load_state_dict(sd)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bags_pool_the_rows_of_live_ids(mode: str) -> None:
    bag = embtab.EmbeddingBag(6, 3, mode=mode, ids=Dynamic(admit=MinCount(2), fallback="shared"),
                              optimizer=embtab.optim.Adagrad(lr=0.1))
    ids = torch.tensor([4, 4, -9, 2**50, 4, -9, 8])
    offsets = torch.tensor([0, 3, 5])
    psw = torch.rand(7) if mode == "sum" else None
    out = bag(ids, offsets, psw)
    rows = bag.ids.rows_of(ids)
    rows = torch.where(rows < 0, torch.full_like(rows, 6), rows)  # the shared fallback row
    ref = torch.nn.functional.embedding_bag(rows, bag.weight.detach(), offsets, mode=mode, per_sample_weights=psw)
    torch.testing.assert_close(out, ref)
    out.sum().backward()


def test_a_collection_forward_is_one_step_of_each_table() -> None:
    tables = [embtab.TableConfig("item", 5, 4, feature_names=["item", "clicked"], ids=Dynamic(evict=LFU())),
              embtab.TableConfig("tag", 7, 2, pooling="mean", ids=embtab.ids.Hashed(2))]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.RowWiseAdagrad(lr=0.1))
    model = DynamicModel(5, 1, "lfu")
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        item = torch.randint(0, 9, (6,), generator=gen)
        clicked = torch.randint(5, 12, (4,), generator=gen)
        out = ebc({"item": (item, torch.tensor([0, 3])), "clicked": (clicked, torch.tensor([0, 1])),
                   "tag": (torch.tensor([3, -3, 2**61]), torch.tensor([0, 2]))})
        out.concat().sum().backward()
        model.train_step(item.tolist() + clicked.tolist())  # both features: one step
        stage = ebc.embedding_bags["item"].ids
        assert stage.live_ids().tolist() == sorted(model.row)
        assert stage.stats() == model.stats_dict()
        assert int(stage.state_dict()["step"]) == step + 1
        assert stage.rows_of(item).tolist() == [model.row.get(i, -1) for i in item.tolist()]
    sd = ebc.state_dict()
    assert "embedding_bags.item.ids.ids" in sd and "embedding_bags.tag.ids.importance.weight" in sd
    assert "embedding_bags.tag.ids.importance.optim_sum" in sd


def test_edge_ids_and_int32_input() -> None:
    for index in INDEXES:
        emb = _table(8, index=index)
        out64 = emb(torch.tensor(EDGE_IDS))
        assert emb.ids.live_ids().tolist() == sorted(EDGE_IDS)
        emb.eval()
        assert torch.equal(emb(torch.tensor(EDGE_IDS)), out64)
        small = torch.tensor([0, 1, -1], dtype=torch.int32)
        assert torch.equal(emb(small), emb(small.long()))


def test_refusals_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"oov='zero' does not apply with ids="):
        embtab.Embedding(4, 2, oov="zero", ids=Dynamic())
    with pytest.raises(ValueError, match=r"padding_idx=0 does not apply"):
        embtab.EmbeddingBag(4, 2, padding_idx=0, ids=Dynamic())
    with pytest.raises(ValueError, match=r"callable init= cannot"):
        embtab.Embedding(4, 2, init=lambda w: w, ids=Dynamic())
    with pytest.raises(ValueError, match=r"fallback='hash' needs fallback_buckets >= 1"):
        Dynamic(fallback="hash")
    with pytest.raises(TypeError, match=r"evict must be LRU or LFU or TTL"):
        Dynamic(evict="lru")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"steps must be >= 1"):
        TTL(0)
    with pytest.raises(TypeError, match=r"ids must be an embtab.ids id space"):
        embtab.TableConfig("t", 4, 2, ids="dynamic")
    with pytest.raises(ValueError, match=r"oov='hash' does not apply"):
        embtab.TableConfig("t", 4, 2, oov="hash", num_oov_buckets=2, ids=Dynamic())


def test_init_follows_the_table_or_dynamic_init() -> None:
    ids = torch.tensor([3, 4])
    emb = embtab.Embedding(4, 64, ids=Dynamic(), init="zeros")
    assert torch.equal(emb(ids), torch.zeros(2, 64))
    emb = embtab.Embedding(4, 5, ids=Dynamic(init=0.5, seed=2))
    assert emb(ids).tolist() == [[0.5 * v for v in seeded_rows_py(i, hash_key(2, 1), 5)] for i in (3, 4)]
    emb = embtab.Embedding(4, 3, ids=Dynamic(init=lambda i, seed, dim: i.float().unsqueeze(1).expand(-1, dim) + seed,
                                             seed=1))
    assert emb(ids).tolist() == [[4.0] * 3, [5.0] * 3]
    emb = embtab.Embedding(4096, 64, ids=Dynamic(), init="uniform")
    out = emb(torch.arange(4096))
    assert out.abs().max() <= 1 / 64 and out.std() > 0.8 / 64 / 3 ** 0.5


def test_module_copies_and_casts_keep_the_map() -> None:
    import copy

    emb = _table(6, dim=3)
    emb(torch.tensor([5, 6, 7]))
    twin = copy.deepcopy(emb)
    twin(torch.tensor([8]))
    assert emb.ids.live_ids().tolist() == [5, 6, 7] and twin.ids.live_ids().tolist() == [5, 6, 7, 8]
    emb.double()
    emb.eval()
    assert emb(torch.tensor([5])).dtype == torch.float64
    assert emb.ids.live_ids().tolist() == [5, 6, 7]


def test_under_torch_compile_training_matches_eager() -> None:
    eager = _table(4, dim=3)
    compiled_module = _table(4, dim=3)
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module)
    for batch in _drifting(5, 6, 9, seed=4):
        x = torch.tensor(batch)
        assert torch.equal(eager(x), compiled(x))
    assert torch.equal(eager.ids.live_ids(), compiled_module.ids.live_ids())


def test_a_compiled_collection_with_a_shared_dynamic_table_matches_eager() -> None:
    def make() -> embtab.EmbeddingBagCollection:
        torch.manual_seed(0)
        table = embtab.TableConfig("item", 6, 3, feature_names=["a", "b"], ids=Dynamic(evict=LFU()))
        return embtab.EmbeddingBagCollection([table], optimizer=embtab.optim.SGD(lr=0.1))

    eager, compiled_module = make(), make()
    compiled = torch.compile(compiled_module)
    for batch in _drifting(4, 6, 9, seed=8):
        x = {"a": (torch.tensor(batch[:4]), torch.tensor([0, 2])), "b": (torch.tensor(batch[4:]), torch.tensor([0, 1]))}
        out_e, out_c = eager(x).concat(), compiled(x).concat()
        assert torch.equal(out_e, out_c)
        out_e.sum().backward()
        out_c.sum().backward()
    stages = [m.embedding_bags["item"].ids for m in (eager, compiled_module)]
    assert stages[0].stats() == stages[1].stats() and stages[0].stats()["lookups"] == 24


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), spread=st.sampled_from([1, 5, 4094, 4096, 10**6, 2**40]), m=st.integers(0, 3000),
       hint=st.sampled_from(["low", "exact", "high"]), seed=st.integers(0, 2**31))
def test_victim_selection_equals_a_sort_of_score_then_id(n: int, spread: int, m: int, hint: str, seed: int) -> None:
    """The numba selection (histograms, a bisection when the cut lies far above the lowest
    score, a radix cut of the ties) against a plain sort, whatever its hint of the lowest score."""
    kernels = pytest.importorskip("embtab.ids._index_numba")
    rng = np.random.default_rng(seed)
    score = rng.integers(0, spread, n) + rng.integers(0, 3) * 7  # some ties, some far apart
    row_id = rng.choice(np.arange(-(2**62), 2**62, 2**44), n, replace=False)  # distinct ids, both signs
    t = 9
    last_seen = rng.choice([-1, 3, t, 5], n, p=[0.2, 0.4, 0.1, 0.3])  # free rows, and this step's rows
    eligible = np.nonzero((last_seen >= 0) & (last_seen != t))[0]
    lowest = int(score[eligible].min()) if eligible.size else 0
    lo = {"low": lowest - 3, "exact": lowest, "high": lowest + 2}[hint]
    got = kernels.victims(score, last_seen, row_id, t, m, lo)
    order = eligible[np.lexsort((row_id[eligible], score[eligible]))]
    assert sorted(got.tolist()) == sorted(order[:m].tolist())


def test_a_row_init_of_the_wrong_shape_is_refused_when_the_table_is_built() -> None:
    """Not when an id is first admitted: then only that id's owner would fail (a sharded
    table's other ranks would wait for it)."""
    def wrong(ids: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
        return torch.zeros(ids.numel(), dim + 1)

    with pytest.raises(ValueError, match=r"init\(ids, seed, dim\) must return a tensor of shape \(3, 4\), got \(3, 5\)"):
        embtab.Embedding(8, 4, ids=Dynamic(init=wrong))
    with pytest.raises(ValueError, match=r"must return a tensor of shape .* got list"):
        embtab.EmbeddingBagCollection([embtab.TableConfig("t", 8, 4, ids=Dynamic(init=lambda i, s, d: [0.0]))])
    table = embtab.Embedding(8, 4, ids=Dynamic(init=embtab.ids.normal_rows))  # a right one still works
    assert table(torch.tensor([5, 2**62])).shape == (2, 4)

    def reads_values(ids: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
        return torch.from_numpy(ids.numpy()).to(torch.float32).unsqueeze(1).expand(-1, dim)

    # a collection built on "meta" (for ed.shard): the init is tried on CPU ids, not meta ones
    embtab.EmbeddingBagCollection([embtab.TableConfig("t", 8, 4, ids=Dynamic(init=reads_values))], device="meta")
