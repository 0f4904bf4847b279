"""Fused-optimizer training steps on CPU: embtab vs torch.nn.EmbeddingBag vs FBGEMM's TBE.

One training step (forward, backward, update) over T tables of E x D fp32 rows,
batch B, L ids per bag, sum pooling, for uniform and Zipf(1.05) ids; plus forward
only. Prints ms per step (p50 [p20, p80]) and the ratios against the issue's goals.

    python benchmarks/bench_fused_cpu.py                 # 8 x 1,000,000 x 64, B 2048, L 20
    python benchmarks/bench_fused_cpu.py --rows 100000   # a smaller, quicker run

Fairness: every path trains the *same* weight tensors (torch's modules and FBGEMM's
buffer are pointed at one allocation), so no path gets colder memory than another,
and the paths are timed round-robin (one step of each per round, ``--rounds``
rounds after ``--warmup``), so a neighbour's load on a shared machine hits them
alike. Needs ~11 GB of RAM at the default size. FBGEMM rows are skipped when
``fbgemm_gpu`` does not import.

On a machine with few cores, torch's OpenMP workers spin for a few milliseconds
after each parallel op and slow whatever runs next on threads of its own (embtab's
update pool; torch's and FBGEMM's kernels run on those same OpenMP workers); run
once as is and once with ``OMP_WAIT_POLICY=PASSIVE`` to see the difference here.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import add_table_args, interleaved_ms, machine_info, print_table  # noqa: E402

import embtab  # noqa: E402
from embtab import _memory  # noqa: E402


def _verdict(r: float, goal: float) -> str:
    if not goal:
        return "-"
    if r != r:  # nan: the baseline (FBGEMM) did not run
        return f">= {goal:g}x: not measured"
    return f">= {goal:g}x: " + ("met" if r >= goal else "MISSED")


def zipf_ids(rows: int, n: int, exponent: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` ids with P(rank k) ~ 1 / k**exponent, ranks scattered over the rows by a fixed
    permutation (hashed ids: the hot rows are not neighbours)."""
    ranks = torch.arange(1, rows + 1, dtype=torch.float64)
    cdf = torch.cumsum(ranks.pow(-exponent), 0)
    cdf /= cdf[-1].clone()
    picked = torch.searchsorted(cdf, torch.rand(n, generator=gen, dtype=torch.float64)).clamp_max(rows - 1)
    return torch.randperm(rows, generator=gen)[picked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_table_args(parser, rounds=9, warmup=2)
    parser.add_argument("--dense-rounds", type=int, default=3, help="rounds for the slow sparse=False path")
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args(argv)
    T, E, D, B, L = args.tables, args.rows, args.dim, args.batch, args.bag
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
        has_fbgemm = True
    except ImportError as exc:  # pragma: no cover - depends on the environment
        print(f"fbgemm_gpu does not import ({exc}); FBGEMM rows skipped", file=sys.stderr)
        has_fbgemm = False

    print(machine_info())
    print(f"T={T} tables x E={E:,} rows x D={D} fp32, batch B={B}, bag L={L}, sum pooling, lr={args.lr}; "
          f"p50 [p20, p80] ms over {args.rounds} interleaved rounds (dense: {args.dense_rounds})")
    gen = torch.Generator().manual_seed(0)
    # One weight allocation for everyone (values drift a little as all paths train them),
    # made as embtab makes its tables: on 2 MiB pages where Linux allows (see
    # embtab/_memory.py). Optimizer state is each library's own: embtab's on huge pages
    # too, torch's and FBGEMM's as they allocate it (THP_MEM_ALLOC_ENABLE=1 in the
    # environment puts torch's large allocations on huge pages as well).
    flat = _memory.empty((T * E * D,))
    flat.normal_(generator=gen)
    print(f"weights on huge pages: {min(1.0, _memory.huge_page_bytes(flat) / flat.nbytes):.0%} of them; "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
          f"{_memory.ENV_VAR}={os.environ.get(_memory.ENV_VAR, 'unset')}")
    weights = [flat[t * E * D:(t + 1) * E * D].view(E, D) for t in range(T)]
    offsets = torch.arange(0, B * L, L)
    grad = torch.randn(B, T * D, generator=gen)

    def noop_init(w: torch.Tensor) -> None:  # the weights are swapped in below
        pass

    def collection(spec: embtab.optim.FusedSpec) -> embtab.EmbeddingBagCollection:
        tables = [embtab.TableConfig(f"t{t}", E, D, init=noop_init) for t in range(T)]
        ebc = embtab.EmbeddingBagCollection(tables, optimizer=spec)
        for t, bag in enumerate(ebc.embedding_bags.values()):
            bag.weight.data = weights[t]
        return ebc

    def torch_bags(sparse: bool) -> torch.nn.ModuleList:
        return torch.nn.ModuleList(
            [torch.nn.EmbeddingBag(E, D, mode="sum", sparse=sparse, _weight=weights[t]) for t in range(T)]
        )

    def fbgemm(optimizer: object):  # type: ignore[no-untyped-def]
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(E, D, EmbeddingLocation.HOST, ComputeDevice.CPU)] * T, optimizer=optimizer,
            learning_rate=args.lr, eps=1e-8, pooling_mode=PoolingMode.SUM,
        )
        tbe.weights_host.data = flat  # tables back to back, as TBE lays them out
        return tbe

    goals: list[tuple[str, str, float, float]] = []
    for dist in ("uniform", "zipf(1.05)"):
        ids = [
            torch.randint(0, E, (B * L,), generator=gen) if dist == "uniform" else zipf_ids(E, B * L, 1.05, gen)
            for _ in range(T)
        ]
        features = {f"t{t}": (ids[t], offsets) for t in range(T)}
        all_ids, all_offsets = torch.cat(ids), torch.arange(0, T * B * L + 1, L)
        unique = sum(torch.unique(i).numel() for i in ids) / T
        print(f"\n## {dist} ids: {unique:,.0f} distinct rows per table of {B * L:,} ids")

        def embtab_step(ebc: embtab.EmbeddingBagCollection) -> Callable[[], None]:
            def step() -> None:
                ebc(features).concat().backward(grad)
            return step

        def torch_step(bags: torch.nn.ModuleList, opt: torch.optim.Optimizer) -> Callable[[], None]:
            def step() -> None:
                opt.zero_grad(set_to_none=True)
                torch.cat([b(i, offsets) for b, i in zip(bags, ids)], 1).backward(grad)
                opt.step()
            return step

        def tbe_step(tbe) -> Callable[[], None]:  # type: ignore[no-untyped-def]
            def step() -> None:
                tbe(all_ids, all_offsets).backward(grad)
            return step

        results: dict[str, tuple[float, float, float]] = {}
        # SGD family
        ebc = collection(embtab.optim.SGD(lr=args.lr))
        sparse = torch_bags(True)
        fns = {"embtab SGD": embtab_step(ebc),
               "torch sparse=True + SGD": torch_step(sparse, torch.optim.SGD(sparse.parameters(), lr=args.lr))}
        if has_fbgemm:
            tbe = fbgemm(EmbOptimType.EXACT_SGD)
            fns["FBGEMM exact SGD"] = tbe_step(tbe)
        results.update(interleaved_ms(fns, repeat=args.rounds, warmup=args.warmup))
        dense = torch_bags(False)
        results.update(interleaved_ms(
            {"torch sparse=False + SGD": torch_step(dense, torch.optim.SGD(dense.parameters(), lr=args.lr))},
            repeat=args.dense_rounds, warmup=1,
        ))
        fwd = {
            "embtab forward": lambda: ebc(features).concat(),
            "torch forward": lambda: torch.cat([b(i, offsets) for b, i in zip(sparse, ids)], 1),
        }
        if has_fbgemm:
            fwd["FBGEMM forward"] = lambda: tbe(all_ids, all_offsets)
        with torch.no_grad():
            results.update(interleaved_ms(fwd, repeat=args.rounds, warmup=args.warmup))
        del ebc, dense, fns, fwd
        if has_fbgemm:
            del tbe
        # Adagrad family (each keeps a state as large as its weights, except row-wise)
        ebc_ada = collection(embtab.optim.Adagrad(lr=args.lr))
        ebc_rw = collection(embtab.optim.RowWiseAdagrad(lr=args.lr))
        fns = {"embtab Adagrad": embtab_step(ebc_ada), "embtab RowWiseAdagrad": embtab_step(ebc_rw),
               "torch sparse=True + Adagrad": torch_step(sparse, torch.optim.Adagrad(sparse.parameters(), lr=args.lr))}
        if has_fbgemm:
            tbe = fbgemm(EmbOptimType.EXACT_ROWWISE_ADAGRAD)
            fns["FBGEMM exact row-wise Adagrad"] = tbe_step(tbe)
        results.update(interleaved_ms(fns, repeat=args.rounds, warmup=args.warmup))
        del ebc_ada, ebc_rw, fns, sparse
        if has_fbgemm:
            del tbe
        ebc_adam = collection(embtab.optim.Adam(lr=args.lr))
        results.update(interleaved_ms({"embtab Adam": embtab_step(ebc_adam)}, repeat=args.rounds, warmup=args.warmup))
        del ebc_adam

        order = ["embtab SGD", "embtab Adagrad", "embtab RowWiseAdagrad", "embtab Adam", "torch sparse=False + SGD",
                 "torch sparse=True + SGD", "torch sparse=True + Adagrad", "FBGEMM exact SGD",
                 "FBGEMM exact row-wise Adagrad", "embtab forward", "torch forward", "FBGEMM forward"]
        print_table(["path", "ms / step (p50)", "p20", "p80"],
                    [[k, *results[k]] for k in order if k in results])

        def ratio(base: str, ours: str) -> float:
            return results[base][0] / results[ours][0] if base in results and ours in results else float("nan")

        checks = [
            ("embtab SGD vs torch sparse SGD", ratio("torch sparse=True + SGD", "embtab SGD"), 2.0),
            ("embtab SGD vs FBGEMM exact SGD", ratio("FBGEMM exact SGD", "embtab SGD"), 1.0),
            ("embtab RowWiseAdagrad vs FBGEMM row-wise", ratio("FBGEMM exact row-wise Adagrad", "embtab RowWiseAdagrad"), 1.0),
            ("embtab Adagrad vs torch sparse Adagrad", ratio("torch sparse=True + Adagrad", "embtab Adagrad"), 4.0),
            ("embtab SGD vs torch sparse=False SGD", ratio("torch sparse=False + SGD", "embtab SGD"), 0.0),
            ("embtab forward vs torch forward", ratio("torch forward", "embtab forward"), 1.0),
            ("embtab forward vs FBGEMM forward", ratio("FBGEMM forward", "embtab forward"), 0.0),
        ]
        print()
        print_table(["speed-up (baseline ms / embtab ms)", "ratio", "goal"],
                    [[name, f"{r:.2f}x", _verdict(r, goal)] for name, r, goal in checks])
        for name, r, goal in checks:
            if goal and r == r:  # a goal whose baseline did not run (nan) is not counted
                goals.append((dist, name, r, goal))
    missed = [g for g in goals if not g[2] >= g[3]]
    print(f"\ngoals met: {len(goals) - len(missed)} of {len(goals)}" + "".join(
        f"\n  missed: {d}: {n} {r:.2f}x < {g:g}x" for d, n, r, g in missed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
