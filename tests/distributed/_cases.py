"""What the ranks of the multi-process tests run (imported by name in each process).

Every rank builds the same collection (same seed) and draws every rank's batch from
one shared generator, so each rank can compute the oracle itself: the unsharded
collection in this process, on this rank's batch (forward) or on the concatenation of
all the ranks' batches with loss ``sum of the ranks' losses / W`` (training). The
oracle's fused optimizer gets a no-op row-gradient hook: it runs in a multi-process
job but on purpose updates from the whole batch, which embtab would otherwise refuse.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

import embtab
import embtab.distributed as ed
from embtab import TableConfig

Batch = dict[str, tuple[torch.Tensor, ...]]

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5)}


# --- collections, plans, batches ------------------------------------------------------------


def mixed_tables(pooling: str, world: int) -> list[TableConfig]:
    """Every kind, with the id policies, padding, a shared table and a table with fewer rows than ranks."""
    return [
        TableConfig("rw", 11, 4, pooling=pooling),
        TableConfig("tw", 7, 3, pooling=pooling, feature_names=["tw1", "tw2"]),
        TableConfig("cw", 6, 5, pooling=pooling),
        TableConfig("dp", 5, 2, pooling=pooling),
        TableConfig("tiny", world - 1, 3, pooling=pooling),  # fewer rows than ranks
        TableConfig("pad", 9, 4, pooling=pooling, padding_idx=3, oov="padding"),
        TableConfig("zero", 8, 3, pooling=pooling, oov="zero"),
        TableConfig("hash", 6, 2, pooling=pooling, oov="hash", num_oov_buckets=3),
        TableConfig("cwdp", 4, 7, pooling=pooling, padding_idx=0),
    ]


def mixed_plan(world: int) -> ed.ShardingPlan:
    return ed.ShardingPlan({
        "rw": ed.row_wise(), "tw": ed.table_wise(rank=world - 1), "cw": ed.column_wise(ranks=[world - 1, 0]),
        "dp": ed.data_parallel(), "tiny": ed.row_wise(), "pad": ed.row_wise(),
        "zero": ed.column_wise(ranks=list(range(world))), "hash": ed.row_wise(), "cwdp": ed.column_wise(ranks=[1]),
    })


def boundary_ids(table: TableConfig, world: int) -> list[int]:
    """The first and last row of each row-wise block (the ids on shard boundaries)."""
    out = []
    for p in ed.row_wise().pieces(table.num_rows, table.embedding_dim, world):
        out += [p.row0, p.row0 + p.rows - 1]
    return [i for i in out if i < table.num_embeddings]


def draw_batch(tables: list[TableConfig], size: int, gen: torch.Generator, world: int, *, psw: bool,
               dtype: torch.dtype, max_len: int = 4) -> Batch:
    """Bags of random lengths (0 included); out-of-range ids for the tables whose policy takes them,
    ids on the row-wise boundaries, duplicates."""
    batch: Batch = {}
    for t in tables:
        for f in t.feature_names:
            lengths = torch.randint(0, max_len + 1, (size,), generator=gen)
            n = int(lengths.sum())
            low, high = (-2, t.num_embeddings + 3) if t.oov != "error" else (0, t.num_embeddings)
            ids = torch.randint(low, high, (n,), generator=gen)
            edges = torch.tensor(boundary_ids(t, world), dtype=torch.int64)
            if n and edges.numel():
                pick = torch.rand(n, generator=gen) < 0.3
                ids[pick] = edges[torch.randint(0, edges.numel(), (int(pick.sum()),), generator=gen)]
            offsets = torch.cumsum(lengths, 0) - lengths  # (B,) starts
            value: tuple[torch.Tensor, ...] = (ids, offsets)
            if psw and t.pooling == "sum":  # (torch takes per-sample weights with sum only)
                value = (ids, offsets, torch.rand(n, generator=gen, dtype=dtype) + 0.5)
            batch[f] = value
    return batch


def concat_batches(batches: list[Batch]) -> Batch:
    """One batch of every rank's bags, rank after rank."""
    out: Batch = {}
    for f in batches[0]:
        ids, offsets, psws, base = [], [], [], 0
        for b in batches:
            ids.append(b[f][0])
            offsets.append(b[f][1] + base)
            base += b[f][0].numel()
            if len(b[f]) == 3:
                psws.append(b[f][2])
        value = (torch.cat(ids), torch.cat(offsets))
        out[f] = value + ((torch.cat(psws),) if psws else ())
    return out


def sizes_of(batch: Batch) -> int:
    return next(iter(batch.values()))[1].numel()


def oracle(ebc: embtab.EmbeddingBagCollection) -> embtab.EmbeddingBagCollection:
    if ebc.optimizer is not None:
        ebc.optimizer.register_row_grad_hook(lambda row_grads: None)
    return ebc


def assert_state_equal(sharded: Any, reference: torch.nn.Module, dtype: torch.dtype, rank: int, what: str) -> None:
    state = ed.gather_state_dict(sharded, rank=0)
    if rank != 0:
        assert state is None
        return
    expected = reference.state_dict()
    assert list(state) == list(expected), (list(state), list(expected))
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, msg=lambda m: f"{what}: {k}: {m}", **TOL.get(v.dtype, {}))


# --- forward -----------------------------------------------------------------------------------


def same_pooled_and_weight_grads(sharded: Any, ebc: embtab.EmbeddingBagCollection, batch: Batch,
                                 gen: torch.Generator, dtype: torch.dtype, label: str) -> None:
    """The sharded collection pools ``batch`` as the plain one does, and the gradients of the
    per-sample weights (features given them) are the plain one's."""
    mine = {f: v[:2] + (v[2].clone().requires_grad_(),) if len(v) == 3 else v for f, v in batch.items()}
    ref_in = {f: v[:2] + (v[2].detach().clone().requires_grad_(),) if len(v) == 3 else v for f, v in mine.items()}
    out, expected = sharded(mine), ebc(ref_in)
    assert list(out) == list(expected)
    for f in expected:
        torch.testing.assert_close(out[f], expected[f], **TOL[dtype], msg=lambda m: f"{label} feature {f}: {m}")
    if any(len(v) == 3 for v in mine.values()):
        weights = torch.randn(out.concat().shape, generator=gen, dtype=dtype)
        (out.concat() * weights).sum().backward()
        (expected.concat() * weights).sum().backward()
        for f, v in mine.items():
            if len(v) == 3:
                torch.testing.assert_close(v[2].grad, ref_in[f][2].grad, **TOL[dtype], msg=f"{label} feature {f}")


def forward_equality(rank: int, world: int, dtype: torch.dtype = torch.float64) -> None:
    """Every kind x {sum, mean, max} x per-sample weights, empty bags, boundary ids, a rank
    with an empty batch, all batches empty; per-sample-weight gradients too."""
    for pooling in ("sum", "mean", "max"):
        tables = mixed_tables(pooling, world)
        torch.manual_seed(0)
        ebc = embtab.EmbeddingBagCollection(tables, dtype=dtype)
        sharded = ed.shard(ebc, mixed_plan(world))
        for case in range(6):
            gen = torch.Generator().manual_seed(100 * case + world)
            sizes = torch.randint(1, 5, (world,), generator=gen).tolist()
            if case % 3 == 1:
                sizes[case % world] = 0  # one rank has nothing to look up
            if case == 5:
                sizes = [0] * world
            psw = pooling == "sum" and case % 2 == 0
            batches = [draw_batch(tables, b, gen, world, psw=psw, dtype=dtype) for b in sizes]
            same_pooled_and_weight_grads(sharded, ebc, batches[rank], gen, dtype, f"{pooling} case {case}")
    # fixed-length bags (2-D ids)
    tables = [TableConfig("a", 5, 3), TableConfig("b", 4, 3, pooling="max")]
    torch.manual_seed(1)
    ebc = embtab.EmbeddingBagCollection(tables, dtype=dtype)
    sharded = ed.shard(ebc, {"a": ed.row_wise(), "b": ed.column_wise(ranks=list(range(world)))})
    gen = torch.Generator().manual_seed(7)
    batches = [{"a": torch.randint(0, 5, (r + 1, 3), generator=gen),
                "b": torch.randint(0, 4, (r + 1, 3), generator=gen)} for r in range(world)]
    with torch.no_grad():
        out, expected = sharded(batches[rank]), ebc(batches[rank])
    torch.testing.assert_close(out.concat(), expected.concat(), **TOL[dtype])


# --- training ------------------------------------------------------------------------------------


def clip_and_step(sharded: Any, reference: torch.nn.Module, clip: tuple[float, float], dtype: torch.dtype) -> bool:
    """``clip_grad_norm_`` on both (the sharded one's norm is over every rank: it must be the
    one process's), then ``step()``; returns whether the gradients were clipped."""
    got = embtab.optim.clip_grad_norm_(sharded.optimizer, *clip)
    want = embtab.optim.clip_grad_norm_(reference.optimizer, *clip)  # type: ignore[arg-type]
    torch.testing.assert_close(got.to(want), want, **TOL[dtype])
    sharded.optimizer.step()
    reference.optimizer.step()  # type: ignore[operator, union-attr]
    return bool(want > clip[0])


def train_equal(rank: int, world: int, spec: Any, plan: Callable[[int], ed.ShardingPlan] | None = None,
                dtype: torch.dtype = torch.float64, steps: int = 4, accumulate: int = 1,
                clip: tuple[float, float] | None = None) -> None:
    """``steps`` steps sharded equal ``steps`` steps of one process on the concatenated batch
    (``clip``: ``(max_norm, norm_type)`` of ``clip_grad_norm_`` before each step)."""
    tables = mixed_tables("sum", world) + [TableConfig("m", 6, 4, pooling="mean"),
                                           TableConfig("x", 7, 3, pooling="max")]
    kinds = dict(mixed_plan(world))
    kinds.update({"m": ed.row_wise(), "x": ed.row_wise()})
    the_plan = plan(world) if plan is not None else ed.ShardingPlan(kinds)
    tables = [t for t in tables if t.name in the_plan]
    torch.manual_seed(3)
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=spec, dtype=dtype)
    sharded = ed.shard(ebc, the_plan)
    reference = oracle(ebc)
    gen = torch.Generator().manual_seed(11 + world)
    clipped = False
    for step in range(steps):
        for _ in range(accumulate):
            sizes = torch.randint(0, 4, (world,), generator=gen).tolist()
            sizes[step % world] = max(sizes[step % world], 1)
            batches = [draw_batch(tables, b, gen, world, psw=step % 2 == 1, dtype=dtype) for b in sizes]
            targets = [torch.randn(b, sum(t.embedding_dim for t in tables for _ in t.feature_names), generator=gen,
                                   dtype=dtype) for b in sizes]
            mine = batches[rank]
            whole = concat_batches(batches)
            if step == 3:  # per-sample weights that require grad: their gradient is this rank's loss's
                mine = {f: v[:2] + (v[2].clone().requires_grad_(),) if len(v) == 3 else v for f, v in mine.items()}
                whole = {f: v[:2] + (v[2].clone().requires_grad_(),) if len(v) == 3 else v for f, v in whole.items()}
            out = sharded(mine).concat()
            ((out - targets[rank]) ** 2).sum().backward()  # this rank's loss
            full = reference(whole).concat()
            (((full - torch.cat(targets)) ** 2).sum() / world).backward()  # sum of the ranks' losses / W
            if step == 3:
                for f, v in mine.items():
                    if len(v) == 3:  # rank's slice of the oracle's, times W (the oracle's loss is divided by W)
                        start = sum(b[f][0].numel() for b in batches[:rank])
                        expected = whole[f][2].grad[start:start + v[2].numel()] * world
                        torch.testing.assert_close(v[2].grad, expected, **TOL[dtype])
        if clip is not None:
            clipped = clip_and_step(sharded, reference, clip, dtype) or clipped
        elif accumulate > 1:
            sharded.optimizer.step()
            reference.optimizer.step()
    assert clip is None or clipped, "no step was clipped: the case tests nothing"
    assert_state_equal(sharded, reference, dtype, rank, f"{spec!r}")


# --- errors ------------------------------------------------------------------------------------


def errors_on_every_rank(rank: int, world: int) -> None:
    """A batch refused on one rank raises on every rank, naming it; the group goes on after."""
    tables = [TableConfig("a", 5, 3), TableConfig("b", 4, 2, oov="zero")]
    torch.manual_seed(0)
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.SGD(lr=0.1))
    sharded = ed.shard(ebc, {"a": ed.row_wise(), "b": ed.table_wise(rank=1)})
    good = {"a": (torch.tensor([0, 4]), torch.tensor([0, 1])), "b": (torch.tensor([1, 9]), torch.tensor([0, 1]))}

    def expect(exc: type[BaseException], batch: Any, *words: str) -> None:
        try:
            sharded(batch)
        except exc as e:
            for w in words:
                assert w in str(e), (w, str(e))
        else:
            raise AssertionError(f"rank {rank}: expected {exc.__name__}")

    # a rank whose batch names other features
    expect(ValueError, good if rank == 0 else {"a": good["a"]}, "rank 0: ['a', 'b']", "rank 1: ['a']",
           "every rank must pass every feature")
    # an out-of-range id on rank 1 (table a refuses them): IndexError on both, naming rank 1 and the id
    bad = {"a": (torch.tensor([0, 5]), torch.tensor([0, 1])), "b": good["b"]}
    expect(IndexError, bad if rank == 1 else good, "rank 1's batch was refused", "id 5", "table 'a'")
    # different batch sizes for two features on rank 0
    odd = {"a": good["a"], "b": (torch.tensor([1]), torch.tensor([0]))}
    expect(ValueError, odd if rank == 0 else good, "rank 0's batch was refused", "same batch size")
    # one rank with gradients, the other without
    try:
        with torch.set_grad_enabled(rank == 0):
            sharded(good)
    except RuntimeError as e:
        assert "without (torch.no_grad())" in str(e), str(e)
    else:
        raise AssertionError("expected RuntimeError")
    # and the group still works
    out = sharded(good)
    torch.testing.assert_close(out.concat(), ebc(good).concat())
    out.concat().sum().backward()


# --- DistributedDataParallel -------------------------------------------------------------------


class _Net(torch.nn.Module):
    """An embedding table and a linear layer (a dense part for DDP to average too)."""

    def __init__(self, emb: torch.nn.Module) -> None:
        super().__init__()
        self.emb, self.out = emb, torch.nn.Linear(emb.weight.shape[1], 1)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.emb(ids) if offsets is None else self.emb(ids, offsets)
        return self.out(rows)


def ddp_sparse_like_torch(rank: int, world: int) -> None:
    """``embtab.EmbeddingBag(sparse=True)`` / ``embtab.Embedding(sparse=True)`` inside DDP train as
    ``torch.nn.EmbeddingBag(sparse=True)`` / ``torch.nn.Embedding(sparse=True)`` do in the same script."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    gen = torch.Generator().manual_seed(5)
    for ours, theirs, kwargs in ((embtab.EmbeddingBag, torch.nn.EmbeddingBag, dict(mode="sum", sparse=True)),
                                 (embtab.EmbeddingBag, torch.nn.EmbeddingBag,
                                  dict(mode="mean", sparse=True, padding_idx=0)),
                                 (embtab.Embedding, torch.nn.Embedding, dict(sparse=True))):
        models = []
        for cls in (ours, theirs):
            torch.manual_seed(0)
            model = _Net(cls(10, 3, **kwargs))
            models.append((model, DDP(model), torch.optim.SGD(model.parameters(), lr=0.1)))
        for step in range(3):
            ids = torch.randint(0, 10, (world, 4), generator=gen)[rank]
            for model, ddp, opt in models:
                opt.zero_grad()
                bags = "mode" in kwargs
                out = (ddp(ids, torch.tensor([0, 2])) if bags else ddp(ids)).sum()
                out.backward()
                assert model.emb.weight.grad.is_sparse
                opt.step()
        (a, _, _), (b, _, _) = models
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p, q, msg=lambda m: f"{ours.__name__} {kwargs} {name}: {m}")
        # and every rank holds the same weights (the updates were synchronised)
        w = a.emb.weight.detach().clone()
        dist.all_reduce(w)
        torch.testing.assert_close(w / world, a.emb.weight.detach())


def ddp_refuses_fused(rank: int, world: int) -> None:
    """A plain DDP around a module with a fused optimizer raises (on every rank) an error
    that points to ed.shard, instead of letting the copies diverge."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    for module in (embtab.EmbeddingBag(10, 3, optimizer=embtab.optim.SGD(lr=0.1)),
                   embtab.EmbeddingBagCollection([TableConfig("t", 10, 3)], optimizer=embtab.optim.Adam())):
        model = DDP(module)
        batch = (torch.tensor([1, 2]), torch.tensor([0, 1]))
        out = model(*batch) if isinstance(module, embtab.EmbeddingBag) else model({"t": batch}).concat()
        try:
            out.sum().backward()
        except RuntimeError as e:
            assert "ed.shard" in str(e) and "diverge" in str(e), str(e)
        else:
            raise AssertionError("expected the refusal")


# --- checkpoints -------------------------------------------------------------------------------


def ckpt_tables(world: int) -> list[TableConfig]:
    return mixed_tables("sum", world) + [TableConfig("m", 6, 4, pooling="mean")]


def other_plan(world: int) -> ed.ShardingPlan:
    """Every table under another kind than in mixed_plan."""
    return ed.ShardingPlan({
        "rw": ed.table_wise(rank=0), "tw": ed.row_wise(), "cw": ed.data_parallel(),
        "dp": ed.column_wise(ranks=[1, 0]), "tiny": ed.table_wise(rank=world - 1), "pad": ed.column_wise(ranks=[0, 1]),
        "zero": ed.row_wise(), "hash": ed.data_parallel(), "cwdp": ed.row_wise(),
        "m": ed.column_wise(ranks=[world - 1]),
    })


def train_steps(sharded: Any, tables: list[TableConfig], world: int, rank: int, steps: int, seed: int,
                reference: Any = None, draw: Callable[..., Batch] | None = None) -> None:
    """``steps`` steps of 1 to 3 bags a rank (``draw(tables, size, gen)``: default
    :func:`draw_batch`), and of ``reference`` on the ranks' batches together."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        sizes = torch.randint(1, 4, (world,), generator=gen).tolist()
        batches = [draw_batch(tables, b, gen, world, psw=False, dtype=torch.float64) if draw is None
                   else draw(tables, b, gen) for b in sizes]
        sharded(batches[rank]).concat().pow(2).sum().backward()
        if reference is not None:
            (reference(concat_batches(batches)).concat().pow(2).sum() / world).backward()


def ckpt_save(rank: int, world: int, folder: str) -> None:
    """Train 2 steps under mixed_plan, save with torch.distributed.checkpoint, and the whole
    state (gathered) beside it for the other tests to compare with."""
    import torch.distributed.checkpoint as dcp

    tables = ckpt_tables(world)
    torch.manual_seed(3)
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.05), dtype=torch.float64)
    sharded = ed.shard(ebc, ed.ShardingPlan({**mixed_plan(world), "m": ed.row_wise()}))
    train_steps(sharded, tables, world, rank, 2, seed=1)
    state = sharded.state_dict()
    assert list(state) == list(ebc.state_dict())  # the plain collection's keys
    dcp.save(state, checkpoint_id=f"{folder}/ckpt")
    whole = ed.gather_state_dict(sharded, rank=0)
    if rank == 0:
        torch.save(dict(whole), f"{folder}/whole.pt")


def ckpt_load(rank: int, world: int, folder: str, plan: str) -> None:
    """Load the checkpoint at this world size under another plan: tables and optimizer state
    equal the saved ones; one more step equals one more step of one process."""
    import torch.distributed.checkpoint as dcp

    tables = ckpt_tables(2)
    torch.manual_seed(99)  # other initial values: everything must come from the checkpoint
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.05), dtype=torch.float64)
    the_plan = other_plan(world) if plan == "other" else ed.plan(tables, world)
    sharded = ed.shard(ebc, the_plan)
    state = sharded.state_dict()
    dcp.load(state, checkpoint_id=f"{folder}/ckpt")
    sharded.load_state_dict(state)  # (a no-op after dcp.load's in-place load; must accept it)
    whole = torch.load(f"{folder}/whole.pt")
    ebc.load_state_dict(whole)
    assert_state_equal(sharded, ebc, torch.float64, rank, f"loaded at W={world} ({plan})")
    train_steps(sharded, tables, world, rank, 1, seed=2, reference=oracle(ebc))
    assert_state_equal(sharded, ebc, torch.float64, rank, f"trained on after loading at W={world}")
    # a whole (plain) state_dict loads too
    torch.manual_seed(5)
    fresh = ed.shard(embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.05), dtype=torch.float64),
                     the_plan)
    fresh.load_state_dict(whole)
    ebc.load_state_dict(whole)
    assert_state_equal(fresh, ebc, torch.float64, rank, "loaded from a whole state_dict")


# --- communication volume ----------------------------------------------------------------------


@contextlib.contextmanager
def only_step_collectives() -> Iterator[None]:
    """Every other torch.distributed collective raises inside the block."""
    names = ["broadcast", "gather", "scatter", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_gather_object",
             "broadcast_object_list", "gather_object", "send", "recv", "isend", "irecv", "barrier", "all_to_all"]
    saved = {n: getattr(dist, n) for n in names if hasattr(dist, n)}

    def refuse(name: str) -> Callable[..., Any]:
        def f(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"a step called torch.distributed.{name}")
        return f

    for n in saved:
        setattr(dist, n, refuse(n))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(dist, n, fn)


def comm_volume(rank: int, world: int) -> None:
    """The bytes each rank sends in a step equal the formula (ShardedEmbeddingBagCollection.step_bytes),
    fed with counts computed here from the raw ids."""
    tables = [TableConfig("rw", 10, 4), TableConfig("tw", 6, 3, feature_names=["tw1", "tw2"]),
              TableConfig("cw", 7, 5, pooling="max"), TableConfig("dp", 4, 2)]
    plan = ed.ShardingPlan({"rw": ed.row_wise(), "tw": ed.table_wise(rank=1), "cw": ed.column_wise(ranks=[0, 2]),
                            "dp": ed.data_parallel()})
    torch.manual_seed(0)
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.RowWiseAdagrad(lr=0.1))
    sharded = ed.shard(ebc, plan)
    gen = torch.Generator().manual_seed(4)
    for step in range(3):
        sizes = torch.randint(0, 6, (world,), generator=gen).tolist()
        batches = [draw_batch(tables, b, gen, world, psw=True, dtype=torch.float32) for b in sizes]
        for b in batches:  # per-sample weights on "rw" only, requiring grad on the last step
            for f in list(b):
                if f != "rw" and len(b[f]) == 3:
                    b[f] = b[f][:2]
            b["rw"] = (b["rw"][0], b["rw"][1], b["rw"][2].clone().requires_grad_(step == 2))
        counts = []
        for b in batches:
            per = {}
            for t in tables:
                for f in t.feature_names:
                    ids = b[f][0]
                    if plan[t.name].kind == "row_wise":
                        blocks = [r for r in torch.tensor_split(torch.arange(t.num_rows), world) if r.numel()]
                        per[f] = [int(((ids >= r[0]) & (ids <= r[-1])).sum()) for r in blocks]
                    elif plan[t.name].kind != "data_parallel":
                        per[f] = [ids.numel()] * len(plan[t.name].ranks(world))
            counts.append(per)
        touched = {"cw": int(torch.cat([b["cw"][0] for b in batches]).unique().numel())}
        sharded.comm_stats.reset()
        with only_step_collectives():
            sharded(batches[rank]).concat().sum().backward()
        assert set(sharded.comm_stats.calls) <= {"all_gather", "all_to_all_single", "all_reduce"}
        expected = sharded.step_bytes(sizes, counts, weights=["rw"], weights_grad=step == 2, touched=touched)
        got = dict(sharded.comm_stats.bytes)
        assert set(got) == set(expected), (sorted(got), sorted(expected))
        for k in expected:
            assert abs(got[k] - expected[k]) < 1e-6, (rank, step, k, got[k], expected[k])


class _Recommender(torch.nn.Module):
    """Tables and a dense layer on their pooled vectors."""

    def __init__(self, tables: list[TableConfig], spec: Any) -> None:
        super().__init__()
        self.tables = embtab.EmbeddingBagCollection(tables, optimizer=spec, dtype=torch.float64)
        self.mlp = torch.nn.Linear(sum(t.embedding_dim * len(t.feature_names) for t in tables), 2, dtype=torch.float64)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.mlp(self.tables(batch).concat())


def distributed_model(rank: int, world: int) -> None:
    """ed.DistributedModel (tables sharded, the linear layer in DDP) trains as one process on
    the concatenated batch; its state_dict has the plain model's keys."""
    import copy

    tables = mixed_tables("mean", world)
    torch.manual_seed(0)
    model = _Recommender(tables, embtab.optim.Adagrad(lr=0.1))
    reference = copy.deepcopy(model)
    oracle(reference.tables)
    keys = list(model.state_dict())
    dm = ed.DistributedModel(model, mixed_plan(world))
    assert list(dm.state_dict()) == keys
    assert isinstance(model.tables, ed.ShardedEmbeddingBagCollection)
    dense = torch.optim.SGD([p for n, p in dm.named_parameters() if "mlp" in n], lr=0.1)
    dense_ref = torch.optim.SGD(reference.mlp.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(8)
    for step in range(3):
        sizes = torch.randint(0, 4, (world,), generator=gen).tolist()
        sizes[step % world] += 1
        batches = [draw_batch(tables, b, gen, world, psw=False, dtype=torch.float64) for b in sizes]
        dense.zero_grad()
        dm(batches[rank]).pow(2).sum().backward()
        dense.step()
        dense_ref.zero_grad()
        (reference(concat_batches(batches)).pow(2).sum() / world).backward()
        dense_ref.step()
    state = ed.gather_state_dict(dm, rank=None)  # on every rank
    assert state is not None and list(state) == keys
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(state[k], v, **TOL[torch.float64], msg=lambda m: f"{k}: {m}")
