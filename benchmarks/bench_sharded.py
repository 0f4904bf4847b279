"""Sharded collections on one machine (gloo): per-rank memory, bytes per step against the
formula, and step time per plan kind, against one process with the whole collection.

    python benchmarks/bench_sharded.py                    # 8 x 1,000,000 x 64, W = 1, 2, 4
    python benchmarks/bench_sharded.py --rows 100000      # a smaller, quicker run

Every table is sharded by the same kind (row_wise; table_wise, table i on rank i mod W;
column_wise over every rank; data_parallel, only at the world sizes of --dp-worlds: a
copy of 8 x 1M x 64 on each rank and a dense all-reduce of it a step is what the kind
is not for). The collection trains with RowWiseAdagrad fused into backward. A step is
forward + backward (+ update) of a global batch of --batch bags of --pooling-factor
uniform ids per table, cut into W local batches (``torch.tensor_split``). The sharded
collections are built from a collection on the meta device: no process ever holds the
whole tables, except rank 0 for the baseline.

Measured per world size W and kind: the table bytes each rank holds (weights and
optimizer state; goal: the total / W plus at most 5 %), the bytes each rank sends in a
step (``comm_stats``, against ``ShardedEmbeddingBagCollection.step_bytes``: the formula,
printed below), and the step time (p50 [p20, p80] over --steps steps after --warmup, the
slowest rank's). The baseline is one process with the whole, unsharded collection on
the global batch, on rank 0, one step right after each sharded step while the other
ranks wait (interleaved: both meet the same load). Kinds run one after the other (each
needs its memory). The machine's cores are shared (W = 4 runs four processes on what
cores there are), so the times say what this machine shows, not what W GPUs would.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, print_table  # noqa: E402

import embtab  # noqa: E402
import embtab.distributed as ed  # noqa: E402

KINDS = ("row_wise", "table_wise", "column_wise", "data_parallel")

FORMULA = """\
Bytes rank r sends in one step (W ranks; s = 4 bytes per float32 element; a unit is a
feature's share of one piece of its table, owned by the piece's rank d; n_{r,u} the ids
rank r sends to unit u; C_d the columns of d's units; B_r rank r's bags):

    header            8 K (W - 1)              K = 6 + ceil(F/62) + F + U   (all_gather)
    ids               8 sum_{d != r} sum_{u of d} (B_r + n_{r,u})         (all_to_all_single)
    pooled            s C_r sum_{q != r} B_q                              (all_to_all_single)
    grads             s B_r sum_{d != r} C_d                              (all_to_all_single, backward)
    replicated grads  2 (W - 1)/W s rows (D + 1) per data-parallel table  (all_reduce, ring)
    row-wise Adagrad  2 (k - 1)/k s U_t per column-wise table on k ranks  (all_reduce, ring)

Row-wise: n_{r,u} = rank r's ids in the block (about N_r / W each, uniform ids);
table-wise and column-wise: n_{r,u} = all of rank r's ids of the feature, sent to each
piece; data-parallel: no ids travel.

On NCCL with GPUs the bytes are the same formulas (NCCL's all_to_all is point-to-point
sends of these payloads; its ring all_reduce sends 2 (W - 1)/W of the buffer); what
changes is the time per byte (NVLink or InfiniBand instead of loopback TCP), the kernels
(Triton lookups and updates), and one host sync a step (the header's counts size the
exchanges). Over NVLink at bandwidth b a step's exchange costs about
(ids + pooled + grads) / b plus a few collective latencies, none of which one CPU
machine can show.
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tables(args: argparse.Namespace) -> list[embtab.TableConfig]:
    return [embtab.TableConfig(f"t{i}", args.rows, args.dim) for i in range(args.tables)]


def _plan(kind: str, tables: list[embtab.TableConfig], world: int) -> ed.ShardingPlan:
    make = {
        "row_wise": lambda i: ed.row_wise(),
        "table_wise": lambda i: ed.table_wise(rank=i % world),
        "column_wise": lambda i: ed.column_wise(ranks=list(range(world))),
        "data_parallel": lambda i: ed.data_parallel(),
    }[kind]
    return ed.ShardingPlan({t.name: make(i) for i, t in enumerate(tables)})


def _global_batches(args: argparse.Namespace, tables: list[embtab.TableConfig], steps: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        ids = {t.name: torch.randint(0, t.num_rows, (args.batch, args.pooling_factor), generator=gen) for t in tables}
        out.append(ids)
    return out


def _local(batch: dict[str, torch.Tensor], world: int, rank: int) -> dict[str, Any]:
    out = {}
    for name, ids in batch.items():
        mine = torch.tensor_split(ids, world)[rank]  # (B_r, L)
        lengths = torch.full((mine.shape[0],), mine.shape[1], dtype=torch.int64)
        out[name] = (mine.reshape(-1), torch.cumsum(lengths, 0) - lengths)
    return out


def _counts(sharded: Any, batch: dict[str, torch.Tensor], world: int) -> tuple[list[int], list[dict[str, list[int]]]]:
    """B_s and the ids rank s sends to each piece of each table, from the raw ids."""
    sizes, counts = [], []
    for s in range(world):
        local = _local(batch, world, s)
        sizes.append(next(iter(local.values()))[1].numel())
        per = {}
        for t in sharded.tables:
            kind = sharded.plan[t.name]
            ids = local[t.name][0]
            if kind.routing == "rows":
                per[t.name] = [int(((ids >= p.row0) & (ids < p.row0 + p.rows)).sum())
                               for p in kind.pieces(t.num_rows, t.embedding_dim, world)]
            elif kind.routing == "each":
                per[t.name] = [ids.numel()] * len(kind.pieces(t.num_rows, t.embedding_dim, world))
        counts.append(per)
    return sizes, counts


def _table_bytes(sharded: Any) -> int:
    return sum(t.numel() * t.element_size() for m in sharded.embedding_bags.values()
               for t in [m.weight, *(b for n, b in m.named_buffers() if n.startswith("optim_"))])


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, kinds: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    tables = _tables(args)
    spec = embtab.optim.RowWiseAdagrad(lr=0.01)
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=spec, device="meta")
    # The baseline, on rank 0: the whole collection, one step on the global batch after each
    # sharded step (the other ranks wait), so that both meet the same load of the machine.
    base = embtab.EmbeddingBagCollection(tables, optimizer=spec) if rank == 0 else None
    if base is not None:  # one process's training on purpose: a hook for no table says so, and keeps its fast path
        base.optimizer.register_row_grad_hook(lambda row_grads: None, tables=())
    batches = _global_batches(args, tables, args.warmup + args.steps)
    results = []
    for kind in kinds:
        sharded = ed.shard(ebc, _plan(kind, tables, world), device="cpu")
        memory = _table_bytes(sharded)
        times, base_times, measured, expected = [], [], [], []
        for step, batch in enumerate(batches):
            local = _local(batch, world, rank)
            dist.barrier()
            sharded.comm_stats.reset()
            t0 = time.perf_counter()
            sharded(local).concat().sum().backward()
            elapsed = time.perf_counter() - t0
            slowest = torch.tensor([elapsed], dtype=torch.float64)
            dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            base_elapsed = 0.0
            if base is not None:
                whole = _local(batch, 1, 0)
                t0 = time.perf_counter()
                base(whole).concat().sum().backward()
                base_elapsed = time.perf_counter() - t0
            if step >= args.warmup:
                times.append(float(slowest) * 1e3)
                base_times.append(base_elapsed * 1e3)
                if step == args.warmup:
                    sizes, counts = _counts(sharded, batch, world)
                    touched = {t.name: int(batch[t.name].unique().numel()) for t in tables}
                    expected = sharded.step_bytes(sizes, counts, touched=touched)
                    measured = dict(sharded.comm_stats.bytes)
        results.append({"kind": kind, "rank": rank, "memory": memory, "times": times, "base": base_times,
                        "measured": measured, "expected": expected})
        del sharded
        gc.collect()
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        Path(out).write_text(json.dumps([r for per_rank in gathered for r in per_rank]))
    dist.destroy_process_group()


def _quantiles(ts: list[float]) -> tuple[float, float, float]:
    ts = sorted(ts)
    pick = lambda q: ts[min(len(ts) - 1, int(round(q * (len(ts) - 1))))]  # noqa: E731
    return pick(0.5), pick(0.2), pick(0.8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096, help="bags per step, all ranks together")
    parser.add_argument("--pooling-factor", type=int, default=4, help="ids per bag")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dp-worlds", type=int, nargs="*", default=[1, 2],
                        help="world sizes at which data_parallel runs (a whole copy per rank)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    print(machine_info() + "; 1 torch thread per process; the machine is shared with other users")
    total = args.tables * args.rows * (args.dim + 1) * 4  # float32 weights + one float32 accumulator per row
    print(f"{args.tables} tables x {args.rows:,} rows x {args.dim} (float32, RowWiseAdagrad): "
          f"{total / 2**20:,.0f} MiB of weights and state; global batch {args.batch} bags x {args.pooling_factor} ids "
          f"per table, uniform ids")
    rows_mem, rows_bytes, rows_time = [], [], []
    for world in args.worlds:
        kinds = [k for k in args.kinds if k != "data_parallel" or world in args.dp_worlds]
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "results.json")
            mp.start_processes(_worker, args=(world, _free_port(), args, kinds, out), nprocs=world, join=True,
                               start_method="spawn")
            results = json.loads(Path(out).read_text())
        for kind in kinds:
            mine = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["rank"])
            most = max(r["memory"] for r in mine)
            share = total / world
            rows_mem.append([kind, world, f"{most / 2**20:,.1f}", f"{share / 2**20:,.1f}", f"{most / share:.3f}",
                             "met" if most <= 1.05 * share else "not met (by design)" if kind == "data_parallel"
                             else "MISSED"])
            equal = all(abs(r["measured"].get(k, 0.0) - r["expected"].get(k, 0.0)) < 1e-6  # (W = 1: no exchange)
                        for r in mine for k in {*r["measured"], *r["expected"]})
            sent = " / ".join(f"{sum(r['measured'].values()) / 2**20:,.2f}" for r in mine)
            formula = " / ".join(f"{sum(r['expected'].values()) / 2**20:,.2f}" for r in mine)
            rows_bytes.append([kind, world, sent, formula, "yes" if equal else "NO"])
            p50, p20, p80 = _quantiles(mine[0]["times"])  # (every rank recorded the slowest rank's time)
            b50, b20, b80 = _quantiles(mine[0]["base"])  # (rank 0's)
            rows_time.append([kind, world, f"{p50:,.1f} [{p20:,.1f}, {p80:,.1f}]",
                              f"{b50:,.1f} [{b20:,.1f}, {b80:,.1f}]", f"{p50 / b50:.2f}"])
    print("\n### Table memory per rank (weights + optimizer state), the largest rank's\n")
    print_table(["kind", "W", "MiB on the rank", "total / W", "ratio", "goal <= 1.05"], rows_mem)
    print("\n### Bytes sent per rank per step (MiB, rank 0 / 1 / ...), measured and from the formula\n")
    print_table(["kind", "W", "measured", "formula", "every rank equal"], rows_bytes)
    print("\n### Step time, ms (forward + backward + update), p50 [p20, p80]: the sharded step's slowest rank, and "
          "one unsharded step on the global batch timed right after each (rank 0, the others waiting)\n")
    print_table(["kind", "W", "sharded", "unsharded, 1 process", "sharded / unsharded"], rows_time)
    print("\n" + FORMULA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
