"""What the ranks of the tests of sharded hashed and dynamic tables run (test_ids.py).

As in ``_cases``: every rank builds the same collection and draws every rank's batch from
one generator, so it computes the oracle itself: the unsharded collection on its own batch
(forward) or on all the ranks' batches with loss ``sum of the ranks' losses / W``
(training); for evicting dynamic tables, the dict-based model of ``tests/ids`` fed exactly
the ids this rank owns.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

import embtab
import embtab.distributed as ed
from embtab import TableConfig
from embtab.ids import LFU, LRU, TTL, Dynamic, Hashed, MinCount
from tests.ids.dynamic_model import DynamicModel

from ._cases import (TOL, Batch, assert_state_equal, clip_and_step, concat_batches, oracle,
                     same_pooled_and_weight_grads, train_steps)

# Raw ids spread over int64 (negative, huge, small): 24 distinct values, so that the dynamic tables'
# capacities below hold every one of them on every rank (no eviction unless a test wants some).
POOL = torch.tensor([(i * 0x9E3779B97F4A7C15) % 2**64 - 2**63 for i in range(1, 17)] + list(range(-4, 4)))


def draw(tables: list[TableConfig], size: int, gen: torch.Generator, *, psw: bool, dtype: torch.dtype,
         pool: torch.Tensor = POOL, max_len: int = 4) -> Batch:
    """Bags of 0..max_len ids (raw ids for tables with ids=, rows for the others), duplicates included."""
    batch: Batch = {}
    for t in tables:
        for f in t.feature_names:
            lengths = torch.randint(0, max_len + 1, (size,), generator=gen)
            n = int(lengths.sum())
            if t.ids is None:
                ids = torch.randint(0, t.num_embeddings, (n,), generator=gen)
            else:
                ids = pool[torch.randint(0, pool.numel(), (n,), generator=gen)]
            value: tuple[torch.Tensor, ...] = (ids, torch.cumsum(lengths, 0) - lengths)
            if psw and t.pooling == "sum":
                value = value + (torch.rand(n, generator=gen, dtype=dtype) + 0.5,)
            batch[f] = value
    return batch


def step_batches(tables: list[TableConfig], world: int, step: int, gen: torch.Generator,
                 dtype: torch.dtype) -> tuple[list[Batch], list[torch.Tensor]]:
    """Each rank's batch for one training step (0 to 3 bags; rank ``step % world`` at least one;
    per-sample weights every other step) and its regression targets."""
    sizes = torch.randint(0, 4, (world,), generator=gen).tolist()
    sizes[step % world] = max(sizes[step % world], 1)
    batches = [draw(tables, b, gen, psw=step % 2 == 1, dtype=dtype) for b in sizes]
    width = sum(t.embedding_dim * len(t.feature_names) for t in tables)
    return batches, [torch.randn(b, width, generator=gen, dtype=dtype) for b in sizes]


def _collection(tables: list[TableConfig], dtype: torch.dtype, spec: Any = None) -> embtab.EmbeddingBagCollection:
    torch.manual_seed(3)
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=spec, dtype=dtype)
    for t in tables:  # importance weights other than their initial ones, so that they count
        stage = ebc.embedding_bags[t.name]._modules.get("ids")
        if getattr(stage, "importance", None) is not None:
            with torch.no_grad():
                stage.importance.weight.uniform_(0.5, 1.5)
    return ebc


# --- hashed tables --------------------------------------------------------------------------------


def hashed_tables(pooling: str | None = None) -> list[TableConfig]:
    """Every kind a hashed table shards under; with and without importance weights; a plain table beside."""
    p = (lambda q: pooling or q)
    return [
        TableConfig("hr", 13, 4, pooling=p("sum"), ids=Hashed(2)),
        TableConfig("ht", 11, 3, pooling=p("mean"), ids=Hashed(3, seed=5, importance_rows=4),
                    feature_names=["ht1", "ht2"]),
        TableConfig("hc", 7, 5, pooling=p("max"), ids=Hashed(2, seed=1)),
        TableConfig("hd", 6, 2, pooling=p("sum"), ids=Hashed(2, seed=2)),
        TableConfig("hk", 9, 3, pooling=p("sum"), ids=Hashed(1, importance=False)),
        TableConfig("hn", 5, 3, pooling=p("mean"), ids=Hashed(2, importance=False, seed=3)),
        TableConfig("hx", 10, 2, pooling=p("max"), ids=Hashed(2, seed=6)),
        TableConfig("rw", 8, 2, pooling=p("sum")),
    ]


def hashed_plan(world: int) -> ed.ShardingPlan:
    return ed.ShardingPlan({
        "hr": ed.row_wise(), "ht": ed.table_wise(rank=world - 1), "hc": ed.column_wise(ranks=[world - 1, 0]),
        "hd": ed.data_parallel(), "hk": ed.row_wise(), "hn": ed.column_wise(ranks=list(range(world))),
        "hx": ed.row_wise(), "rw": ed.row_wise(),
    })


def hashed_forward(rank: int, world: int, dtype: torch.dtype = torch.float64) -> None:
    """Every kind x {sum, mean, max} x per-sample weights; a rank with an empty batch, all batches empty;
    per-sample-weight gradients."""
    for pooling in ("sum", "mean", "max"):
        tables = hashed_tables(pooling)
        ebc = _collection(tables, dtype)
        sharded = ed.shard(ebc, hashed_plan(world))
        for case in range(4):
            gen = torch.Generator().manual_seed(100 * case + world)
            sizes = torch.randint(1, 4, (world,), generator=gen).tolist()
            if case == 1:
                sizes[0] = 0  # rank 0 looks nothing up
            if case == 3:
                sizes = [0] * world
            psw = pooling == "sum" and case % 2 == 0
            batches = [draw(tables, b, gen, psw=psw, dtype=dtype) for b in sizes]
            same_pooled_and_weight_grads(sharded, ebc, batches[rank], gen, dtype, f"{pooling} case {case}")


def hashed_train(rank: int, world: int, spec: Any, dtype: torch.dtype = torch.float64, steps: int = 4,
                 clip: tuple[float, float] | None = None) -> None:
    """Sharded training = one process on the concatenated batch: rows, importance weights and their
    optimizer state, every kind, empty batches, per-sample weights."""
    tables = hashed_tables()
    ebc = _collection(tables, dtype, spec)
    sharded = ed.shard(ebc, hashed_plan(world))
    reference = oracle(ebc)
    gen = torch.Generator().manual_seed(11 + world)
    for step in range(steps):
        batches, targets = step_batches(tables, world, step, gen, dtype)
        ((sharded(batches[rank]).concat() - targets[rank]) ** 2).sum().backward()
        (((reference(concat_batches(batches)).concat() - torch.cat(targets)) ** 2).sum() / world).backward()
        if clip is not None:
            clip_and_step(sharded, reference, clip, dtype)
    assert_state_equal(sharded, reference, dtype, rank, f"hashed, {spec!r}")


# --- dynamic tables -------------------------------------------------------------------------------


def dynamic_tables() -> list[TableConfig]:
    """Capacities that hold all 24 ids on each rank (no eviction): every fallback, admission after 2
    sightings, TTL expiry, LFU, a table of two features (one step), a table-wise one, a plain table."""
    return [
        TableConfig("dl", 80, 4, ids=Dynamic()),
        TableConfig("dm", 80, 3, pooling="mean", ids=Dynamic(admit=MinCount(2))),  # "zero" + mean: counts come back
        TableConfig("dx", 80, 3, pooling="max", ids=Dynamic(admit=MinCount(2), evict=LFU(), init="uniform")),
        TableConfig("dh", 80, 2, ids=Dynamic(admit=MinCount(3), fallback="hash", fallback_buckets=3, seed=4),
                    feature_names=["dh1", "dh2"]),
        TableConfig("ds", 80, 3, pooling="mean", ids=Dynamic(fallback="shared", evict=TTL(2), init=0.5)),
        TableConfig("dt", 30, 3, ids=Dynamic(admit=MinCount(2), fallback="shared")),
        TableConfig("rw", 8, 2),
    ]


def dynamic_plan(world: int) -> ed.ShardingPlan:
    kinds: dict[str, Any] = {t.name: ed.row_wise() for t in dynamic_tables()}
    kinds["dt"] = ed.table_wise(rank=world - 1)
    return ed.ShardingPlan(kinds)


def _stats(sharded: Any, name: str) -> dict[str, int]:
    """A dynamic table's statistics summed over the ranks (live and pending included)."""
    stage = sharded.embedding_bags[name]._modules.get("ids")
    keys = ["live", "capacity", "lookups", "hits", "admitted", "evicted", "fallback_lookups", "rejected", "pending"]
    mine = stage.stats() if stage is not None else dict.fromkeys(keys, 0)
    t = torch.tensor([mine[k] for k in keys], dtype=torch.int64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def _local_state(sharded: Any) -> dict[str, torch.Tensor]:
    out = {}
    for name, table in sharded.embedding_bags.items():
        out[name + ".weight"] = table.weight.detach().clone()
        stage = table._modules.get("ids")
        if isinstance(stage, embtab.ids.DynamicIds):
            out.update({f"{name}.ids.{k}": v.clone() for k, v in stage.state_dict().items()})
            out[f"{name}.ids.stats()"] = torch.tensor(list(stage.stats().values()))
    return out


def dynamic_train(rank: int, world: int, spec: Any, dtype: torch.dtype = torch.float64, steps: int = 5,
                  clip: tuple[float, float] | None = None) -> None:
    """With capacities that never evict: outputs at every step, then rows, their values, optimizer
    state, pending counts, step and statistics (summed over the ranks) equal one process's; eval mode
    looks up as one process does and changes nothing on any rank."""
    tables = dynamic_tables()
    ebc = _collection(tables, dtype, spec)
    sharded = ed.shard(ebc, dynamic_plan(world))
    reference = oracle(ebc)
    gen = torch.Generator().manual_seed(21 + world)
    for step in range(steps):
        batches, targets = step_batches(tables, world, step, gen, dtype)
        out = sharded(batches[rank]).concat()
        full = reference(concat_batches(batches)).concat()
        start = sum(t.shape[0] for t in targets[:rank])
        torch.testing.assert_close(out, full[start:start + targets[rank].shape[0]], **TOL[dtype],
                                   msg=lambda m: f"step {step}: {m}")
        ((out - targets[rank]) ** 2).sum().backward()
        (((full - torch.cat(targets)) ** 2).sum() / world).backward()
        if clip is not None:
            clip_and_step(sharded, reference, clip, dtype)
    assert_state_equal(sharded, reference, dtype, rank, f"dynamic, {spec!r}")
    for t in tables:
        if t.ids is not None:
            assert _stats(sharded, t.name) == reference.embedding_bags[t.name].ids.stats(), t.name
    # eval mode: one process's lookups (unknown ids included), and no rank changes anything
    sharded.eval()
    reference.eval()
    before = _local_state(sharded)
    unseen = torch.tensor([7, 2**50, -(2**60)])
    gen = torch.Generator().manual_seed(5)
    batches = [draw(tables, 3, gen, psw=False, dtype=dtype, pool=torch.cat([POOL, unseen])) for _ in range(world)]
    with torch.no_grad():
        out = sharded(batches[rank]).concat()
        full = reference(concat_batches(batches)).concat()
    torch.testing.assert_close(out, full[3 * rank:3 * rank + 3], **TOL[dtype])
    after = _local_state(sharded)
    assert list(before) == list(after)
    for k in before:
        assert torch.equal(before[k], after[k]), f"rank {rank}: eval mode changed {k}"


def dynamic_evict(rank: int, world: int) -> None:
    """Capacities that evict: each rank's piece is the dict model of a table of its share of the
    capacity fed exactly the ids it owns (owner_of(id, W)), step by step: its live ids and their
    rows, pending counts and statistics."""
    specs = {"lru": Dynamic(), "lfu": Dynamic(admit=MinCount(2), evict=LFU()), "ttl": Dynamic(evict=TTL(2))}
    capacity = 3 * world + 1  # shares of 4, 3, ...: fewer than the 24 ids
    tables = [TableConfig(n, capacity, 2, ids=s, feature_names=[n + "1", n + "2"] if n == "lfu" else None)
              for n, s in specs.items()]
    ebc = _collection(tables, torch.float64, embtab.optim.SGD(lr=0.1))
    sharded = ed.shard(ebc, {t.name: ed.row_wise() for t in tables})
    share = sharded.embedding_bags["lru"].piece.rows
    models = {n: DynamicModel(share, min_count=s.admit.n, evict="lfu" if isinstance(s.evict, LFU) else "lru",
                              ttl=s.evict.steps if isinstance(s.evict, TTL) else 0) for n, s in specs.items()}
    gen = torch.Generator().manual_seed(8)
    for step in range(6):
        sizes = torch.randint(0, 5, (world,), generator=gen).tolist()
        batches = [draw(tables, b, gen, psw=False, dtype=torch.float64) for b in sizes]
        sharded(batches[rank]).concat().sum().backward()
        for t in tables:
            ids = torch.cat([b[f][0] for b in batches for f in t.feature_names])
            mine = ids[embtab.ids._hash.owner_of(ids, world) == rank]
            models[t.name].train_step(mine.tolist())
            stage = sharded.embedding_bags[t.name].ids
            model = models[t.name]
            live = stage.live_ids()
            what = f"rank {rank} step {step} table {t.name}"
            assert live.tolist() == sorted(model.row), what
            assert stage.rows_of(live).tolist() == [model.row[i] for i in sorted(model.row)], what
            assert stage.stats() == model.stats_dict(), (what, stage.stats(), model.stats_dict())
            state = stage.state_dict()
            assert dict(zip(state["pending_ids"].tolist(), state["pending_counts"].tolist())) == model.pending, what
    assert any(m.stats["evicted"] for m in models.values())  # (the test evicts)


# --- checkpoints ----------------------------------------------------------------------------------


def ckpt_tables() -> list[TableConfig]:
    return [
        TableConfig("hr", 13, 4, ids=Hashed(2)),
        TableConfig("hx", 9, 3, pooling="max", ids=Hashed(2, seed=7)),
        TableConfig("dr", 80, 3, ids=Dynamic(admit=MinCount(3), fallback="hash", fallback_buckets=3)),
        TableConfig("dm", 80, 2, pooling="mean", ids=Dynamic(admit=MinCount(2), evict=LFU())),
        TableConfig("dt", 60, 2, ids=Dynamic(fallback="shared")),
        TableConfig("rw", 8, 2),
    ]


def ckpt_plan(world: int, other: bool = False) -> ed.ShardingPlan:
    if not other:
        return ed.ShardingPlan({"hr": ed.row_wise(), "hx": ed.table_wise(rank=1), "dr": ed.row_wise(),
                                "dm": ed.row_wise(), "dt": ed.table_wise(rank=0), "rw": ed.row_wise()})
    return ed.ShardingPlan({"hr": ed.column_wise(ranks=[world - 1, 0]), "hx": ed.row_wise(),
                            "dr": ed.table_wise(rank=world - 1), "dm": ed.row_wise(), "dt": ed.row_wise(),
                            "rw": ed.table_wise(rank=0)})


def _train(sharded: Any, tables: list[TableConfig], world: int, rank: int, steps: int, seed: int,
           reference: Any = None) -> None:
    train_steps(sharded, tables, world, rank, steps, seed, reference,
                draw=lambda t, b, g: draw(t, b, g, psw=False, dtype=torch.float64))


def ckpt_save(rank: int, world: int, folder: str) -> None:
    """Train, save with torch.distributed.checkpoint, and the whole state (gathered) beside it."""
    import torch.distributed.checkpoint as dcp

    tables = ckpt_tables()
    ebc = _collection(tables, torch.float64, embtab.optim.Adam(lr=0.05))
    sharded = ed.shard(ebc, ckpt_plan(world))
    _train(sharded, tables, world, rank, 3, seed=1)
    state = sharded.state_dict()
    assert list(state) == list(ebc.state_dict())  # the plain collection's keys
    dcp.save(state, checkpoint_id=f"{folder}/ckpt")
    whole = ed.gather_state_dict(sharded, rank=0)
    if rank == 0:
        assert int(whole["embedding_bags.dr.ids.pending_ids"].numel()) > 0  # (pending counts are saved)
        torch.save(dict(whole), f"{folder}/whole.pt")


def ckpt_load(rank: int, world: int, folder: str, other: bool) -> None:
    """Load at this world size (another plan if ``other``): every entry equals the saved one; one more
    step equals one more step of one process; a whole state_dict and a round trip load too."""
    tables = ckpt_tables()
    torch.manual_seed(99)  # other initial values: everything must come from the checkpoint
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.05), dtype=torch.float64)
    plan = ckpt_plan(world, other)
    sharded = ed.shard(ebc, plan)
    ed.load_checkpoint(sharded, f"{folder}/ckpt")
    whole = torch.load(f"{folder}/whole.pt")
    ebc.load_state_dict(whole)
    assert_state_equal(sharded, ebc, torch.float64, rank, f"loaded at W={world}")
    dm = _stats(sharded, "dm")
    expected = ebc.embedding_bags["dm"].ids.stats()
    assert dm == {**expected, "capacity": 80}, (dm, expected)  # statistics summed over the ranks
    _train(sharded, tables, world, rank, 1, seed=2, reference=oracle(ebc))
    assert_state_equal(sharded, ebc, torch.float64, rank, f"trained on after loading at W={world}")
    sharded.load_state_dict(sharded.state_dict())  # a round trip
    assert_state_equal(sharded, ebc, torch.float64, rank, "after a round trip")
    fresh = ed.shard(embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.05), dtype=torch.float64),
                     plan)
    fresh.load_state_dict(whole)  # a whole (plain) state_dict
    ebc.load_state_dict(whole)
    assert_state_equal(fresh, ebc, torch.float64, rank, "loaded from a whole state_dict")


def ckpt_other_layout(rank: int, world: int, folder: str) -> None:
    """Blocks saved by another plan, loaded by dcp.load straight into a sharded dynamic table of
    the same live count, are refused (naming ed.load_checkpoint), not read under the wrong ids."""
    import torch.distributed.checkpoint as dcp

    tables = [TableConfig("d", 40, 3, ids=Dynamic())]
    batch = {"d": (torch.arange(12, dtype=torch.int64) * 7919, torch.tensor([0, 5]))}  # the same on every rank

    def trained(plan: dict[str, Any]) -> Any:
        torch.manual_seed(0)
        sharded = ed.shard(embtab.EmbeddingBagCollection(tables, dtype=torch.float64), ed.ShardingPlan(plan))
        sharded(batch)  # one training step: the 12 ids get rows (MinCount(1), no eviction)
        return sharded

    dcp.save(trained({"d": ed.table_wise(rank=world - 1)}).state_dict(), checkpoint_id=f"{folder}/tw")
    rowwise = trained({"d": ed.row_wise()})
    state = rowwise.state_dict()
    dcp.load(state, checkpoint_id=f"{folder}/tw")  # the same shapes: 12 live ids in all
    refused = 0
    try:
        rowwise.load_state_dict(state)
    except RuntimeError as exc:
        assert "does not own" in str(exc) and "ed.load_checkpoint" in str(exc), exc
        refused = 1
    total = torch.tensor([refused])
    dist.all_reduce(total)
    assert int(total) >= 1  # a rank given another rank's ids refused them
    ed.load_checkpoint(rowwise, f"{folder}/tw")  # what works: each id moved to its owner
    live = rowwise.embedding_bags["d"].ids.live_ids() if "d" in rowwise.embedding_bags else torch.zeros(0)
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([live.numel()]))
    assert sum(int(c) for c in counts) == 12


# --- communication volume -------------------------------------------------------------------------


def comm_volume(rank: int, world: int) -> None:
    """The bytes each rank sends equal ShardedEmbeddingBagCollection.step_bytes for hashed tables (rows
    out, rows back), dynamic ones (raw ids to their owners; counts back with a mean; the fallback rows'
    all-reduce) and a copied hashed table (its importance weights all-reduced too)."""
    from ._cases import only_step_collectives

    tables = [TableConfig("hr", 13, 4, ids=Hashed(2)), TableConfig("hm", 7, 3, pooling="max", ids=Hashed(3, seed=2)),
              TableConfig("dh", 40, 3, ids=Dynamic(fallback="hash", fallback_buckets=3)),
              TableConfig("dm", 40, 2, pooling="mean", ids=Dynamic(admit=MinCount(2))),
              TableConfig("hd", 5, 2, ids=Hashed(2, seed=4))]
    plan = {"hr": ed.row_wise(), "hm": ed.table_wise(rank=world - 1), "dh": ed.row_wise(), "dm": ed.row_wise(),
            "hd": ed.data_parallel()}
    ebc = _collection(tables, torch.float32, embtab.optim.SGD(lr=0.1))
    sharded = ed.shard(ebc, plan)

    def blocks(rows: torch.Tensor, n: int) -> list[int]:  # rows per row-wise block of n rows
        return [int(((rows >= b[0]) & (rows <= b[-1])).sum()) for b in torch.tensor_split(torch.arange(n), world)]

    gen = torch.Generator().manual_seed(4)
    for step in range(3):
        sizes = torch.randint(0, 5, (world,), generator=gen).tolist()
        batches = [draw(tables, b, gen, psw=False, dtype=torch.float32) for b in sizes]
        counts = []
        for b in batches:
            stage = ebc.embedding_bags["hr"].ids  # (the unsharded table's hashes)
            x = b["hr"][0]
            per = {"hr": blocks(stage.rows(x).reshape(-1), 13) + blocks(stage.importance_rows_of(x), 13)}
            n = b["hm"][0].numel()
            per["hm"] = [3 * n, n]  # the whole table on one rank: every row of every id, every importance row
            for f in ("dh", "dm"):
                per[f] = torch.bincount(embtab.ids._hash.owner_of(b[f][0], world), minlength=world).tolist()
            counts.append(per)
        sharded.comm_stats.reset()
        with only_step_collectives():
            sharded(batches[rank]).concat().sum().backward()
        expected = sharded.step_bytes(sizes, counts)
        got = dict(sharded.comm_stats.bytes)
        assert set(got) == set(expected), (sorted(got), sorted(expected))
        for k in expected:
            assert abs(got[k] - expected[k]) < 1e-6, (rank, step, k, got[k], expected[k])


# --- memory -------------------------------------------------------------------------------------


def _bytes_held(module: torch.nn.Module) -> int:
    """What a sharded table module really holds: its parameters and buffers (sub-modules'
    included, each storage once) and a dynamic table's CPU index; less the out-of-range
    counters (8 bytes a module), which table_bytes leaves out."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    for m in module.modules():
        index = getattr(m, "_index", None)
        total += index.nbytes() if index is not None else 0
        total -= m._buffers["_oov_count"].nbytes if "_oov_count" in m._buffers else 0
    return total


def bytes_per_rank(rank: int, world: int, spec: Any) -> None:
    """``table_bytes`` (what ``ed.plan`` and ``memory_per_rank`` count) is what each rank holds,
    for every kind, hashed tables (with their importance weights) and dynamic ones (their
    fallback rows on every piece, their id maps), after a training step."""
    from embtab.distributed.plan import table_bytes

    tables = [TableConfig("rw", 40, 4), TableConfig("cw", 12, 6), TableConfig("dp", 10, 3), TableConfig("tw", 9, 5),
              TableConfig("h", 32, 4, ids=Hashed(2)), TableConfig("ht", 16, 3, ids=Hashed(3, importance_rows=5)),
              TableConfig("d", 64, 4, ids=Dynamic(fallback="hash", fallback_buckets=3)),
              TableConfig("dt", 30, 2, ids=Dynamic(fallback="shared"))]
    plan = ed.ShardingPlan({"rw": ed.row_wise(), "cw": ed.column_wise(ranks=list(range(world))),
                            "dp": ed.data_parallel(), "tw": ed.table_wise(rank=world - 1), "h": ed.row_wise(),
                            "ht": ed.table_wise(rank=0), "d": ed.row_wise(), "dt": ed.table_wise(rank=1)})
    torch.manual_seed(0)
    sharded = ed.shard(embtab.EmbeddingBagCollection(tables, optimizer=spec), plan)
    gen = torch.Generator().manual_seed(rank)
    sharded({t.name: (torch.randint(0, 9, (6,), generator=gen), torch.tensor([0, 3])) for t in tables}
            ).concat().sum().backward()
    for t in tables:
        held = _bytes_held(sharded.embedding_bags[t.name])
        assert held == table_bytes(t, plan[t.name], world, spec).get(rank, 0), (t.name, rank, held)


# --- a piece that fails ---------------------------------------------------------------------------


def _init_refusing_seven(ids: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
    """A user's row init that passes the probe when the table is built, and fails on id 7."""
    if bool((ids == 7).any()):
        raise ValueError("my_init cannot draw a row for id 7")
    return torch.zeros(ids.numel(), dim)


def owner_failure(rank: int, world: int) -> None:
    """A piece that fails while looking up the ids it received (only the owner of id 7 sees
    it) raises on every rank, naming the owner, instead of leaving the others waiting."""
    from embtab.ids._hash import owner_of

    tables = [TableConfig("d", 16, 2, ids=Dynamic(init=_init_refusing_seven)), TableConfig("p", 9, 3)]
    sharded = ed.shard(embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.SGD(lr=0.1)),
                       {"d": ed.row_wise(), "p": ed.row_wise()})
    batch = {"d": (torch.tensor([7, 1] if rank == 0 else [2]), torch.tensor([0])),
             "p": (torch.tensor([rank]), torch.tensor([0]))}
    owner = int(owner_of(torch.tensor([7]), world))
    try:
        sharded(batch).concat().sum().backward()
    except ValueError as e:
        assert f"rank {owner}'s pieces failed to look up the ids they received" in str(e), str(e)
        assert "my_init cannot draw a row for id 7" in str(e), str(e)
    else:
        raise AssertionError(f"rank {rank}: no error")
    good = {"d": (torch.tensor([1, 2]), torch.tensor([0])), "p": (torch.tensor([rank]), torch.tensor([0]))}
    sharded(good).concat().sum().backward()  # the group goes on
