"""GPU benchmark of the Triton backend against torch, as % of the memory-bandwidth floor.

An embedding step moves bytes and does almost no arithmetic, so each case counts the
bytes it must move at least (the byte floor, accounted as in ``../shared/anchors/``),
and reports ours and torch's time as effective GB/s and as % of a device-to-device
copy measured in the same run (read + write). Cases: issue 6's table (rec shape
V=10M x D=128 fp32 with 1M ids, LM shape V=128k x D=4096 bf16 with 16k ids, training
steps with SGD / Adagrad / row-wise Adagrad, EmbeddingBag V=1M B=16384 L=20) and
FBGEMM's table-batched shape (32 tables x 100k x 128 fp32, B in {512, 16384}, L=20,
Zipf 1.15 ids). Times are medians of ``triton.testing.do_bench``.

Example (on a machine with a CUDA GPU; writes the table to stdout and JSON to $OUT)::

    PYTHONPATH=src python benchmarks/bench_gpu.py            # everything, ~3 minutes on an H100
    PYTHONPATH=src python benchmarks/bench_gpu.py --quick    # shapes / 10, a smoke run
    PYTHONPATH=src python benchmarks/bench_gpu.py --only tbe --json /tmp/tbe.json

Our training steps go through the public modules (``embtab.Embedding``,
``embtab.EmbeddingBagCollection`` with a fused optimizer, ``oov="zero"`` so the step
has no host sync); torch's are ``nn.Embedding`` / ``nn.EmbeddingBag`` with
``sparse=True`` (and ``sparse=False`` for SGD) and the matching ``torch.optim``
optimizer, as a user writes them. "speed-up" is torch's fastest path / ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Callable

import torch
import torch.nn.functional as F

from _harness import machine_info, print_table


DEV = "cuda"  # "cpu" only for --cpu-dry-run
DRY_RUN = False


def _bench(fn: Callable[[], Any], rep: int) -> float:
    if DRY_RUN:  # exercise the code path once; the time is meaningless
        fn()
        return 1.0
    import triton

    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


class Report:
    """Rows of (case, ours, torch, byte floor) and the goal each case is held to."""

    def __init__(self, copy_gbps: float, rep: int, path: str, header: dict[str, Any]) -> None:
        self.copy = copy_gbps
        self.rep = rep
        self.rows: list[dict[str, Any]] = []
        self.path = path
        self.header = header

    def save(self, **extra: Any) -> None:
        """Rewrite the JSON after every case: a run cut short still leaves its numbers."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            json.dump({**self.header, "copy_GBps": self.copy, "rows": self.rows, **extra}, f, indent=1)

    def pct(self, nbytes: float, ms: float) -> float:
        return 100 * nbytes / (ms * 1e-3) / 1e9 / self.copy

    def add(self, case: str, nbytes: float, ours: Callable[[], Any] | None,
            torch_fns: dict[str, Callable[[], Any]], goal: str = "") -> None:
        """Time ``ours`` and every torch variant; the fastest torch variant is the baseline."""
        row: dict[str, Any] = {"case": case, "bytes": nbytes, "goal": goal}
        if ours is not None:
            row["ours_ms"] = _bench(ours, self.rep)
            row["ours_GBps"] = nbytes / (row["ours_ms"] * 1e-3) / 1e9
            row["ours_pct"] = self.pct(nbytes, row["ours_ms"])
        for name, fn in torch_fns.items():
            row[f"torch_{name}_ms"] = _bench(fn, self.rep)
        if torch_fns:
            best = min(torch_fns, key=lambda n: row[f"torch_{n}_ms"])
            row["torch_best"] = best
            row["torch_ms"] = row[f"torch_{best}_ms"]
            row["torch_pct"] = self.pct(nbytes, row["torch_ms"])
            if ours is not None:
                row["speedup"] = row["torch_ms"] / row["ours_ms"]
        self.rows.append(row)
        self.save()
        fmt = lambda k: f"{row[k]:.3f}" if k in row else "-"  # noqa: E731
        print(f"{case:58s} ours {fmt('ours_ms')} ms ({row.get('ours_pct', 0):5.1f}%)  "
              f"torch {fmt('torch_ms')} ms ({row.get('torch_pct', 0):5.1f}%)  x{row.get('speedup', 0):.2f}",
              file=sys.stderr, flush=True)

    def table(self) -> None:
        headers = ["case", "ours ms", "ours GB/s", "ours % floor", "torch ms", "torch % floor",
                   "speed-up", "goal"]
        print_table(headers, [
            [r["case"], r.get("ours_ms", "-"), r.get("ours_GBps", "-"), r.get("ours_pct", "-"),
             f"{r['torch_ms']:.3f} ({r['torch_best']})" if "torch_ms" in r else "-",
             r.get("torch_pct", "-"), r.get("speedup", "-"), r["goal"]]
            for r in self.rows
        ])


# --- ids ------------------------------------------------------------------------------------


def log_uniform_ids(n: int, num_rows: int, device: str) -> torch.Tensor:
    """The anchors' "zipf" ids: rank exp(U * ln V), then a random permutation of rows."""
    u = torch.rand(n, device=device, dtype=torch.float64)
    r = torch.floor(torch.exp(torch.log(torch.tensor(float(num_rows), device=device, dtype=torch.float64)) * u))
    return torch.randperm(num_rows, device=device)[r.long().clamp_(0, num_rows - 1)]


def zipf_ids(n: int, num_rows: int, s: float, device: str) -> torch.Tensor:
    """FBGEMM's Zipf(s) ids: P(rank r) ~ r^-s, ranks permuted over the rows."""
    p = torch.arange(1, num_rows + 1, device=device, dtype=torch.float64).pow(-s)
    return torch.randperm(num_rows, device=device)[torch.multinomial(p / p.sum(), n, replacement=True)]


# --- cases ----------------------------------------------------------------------------------


def copy_bandwidth(rep: int) -> float:
    if DRY_RUN:
        return 1.0
    a = torch.empty(2 * 1024**3 // 4, device=DEV).normal_()
    b = torch.empty_like(a)
    ms = _bench(lambda: b.copy_(a), rep)
    del a, b
    torch.cuda.empty_cache()
    return 2 * 2 * 1024**3 / (ms * 1e-3) / 1e9


def lookup_cases(rep: Report, scale: int) -> None:
    """F.embedding forward and the dense backward: rec and LM shapes."""
    from embtab.ops import triton as T
    from embtab.ops.triton import backward as BW

    for name, V, D, dtype, N in (
        ("rec V=10M D=128 fp32 N=1M", 10_000_000 // scale, 128, torch.float32, (1 << 20) // scale),
        ("lm V=128k D=4096 bf16 N=16k", 128_000 // scale, 4096, torch.bfloat16, 16384 // scale),
    ):
        W = torch.randn(V, D, device=DEV, dtype=dtype)
        es = W.element_size()
        for dist in ("uniform", "zipf"):
            idx = torch.randint(0, V, (N,), device=DEV) if dist == "uniform" else log_uniform_ids(N, V, DEV)
            torch.testing.assert_close(T.embedding_forward(W, idx), F.embedding(idx, W), rtol=0, atol=0)
            fwd = N * D * es * 2 + N * 8
            rep.add(f"{name} {dist} fwd", fwd, lambda: T.embedding_forward(W, idx),
                    {"F.embedding": lambda: F.embedding(idx, W)}, goal=">= 90% (rec)" if es == 4 else "")
            g = torch.randn(N, D, device=DEV, dtype=dtype)
            dense = V * D * es + N * D * es
            torch_bwd = {"dense_backward": lambda: torch.ops.aten.embedding_dense_backward(g, idx, V, -1, False)}
            rep.add(f"{name} {dist} bwd dense", dense, lambda: BW.scatter_rows(g, idx, V, deterministic=False), torch_bwd)
            rep.add(f"{name} {dist} bwd dense deterministic", dense,
                    lambda: BW.scatter_rows(g, idx, V, deterministic=True), {})
            del g
        del W
        torch.cuda.empty_cache()


def step_cases(rep: Report, scale: int) -> None:
    """Training steps on the rec shape: fused SGD / Adagrad / row-wise Adagrad vs torch."""
    import embtab

    V, D, N = 10_000_000 // scale, 128, (1 << 20) // scale
    for dist in ("uniform", "zipf"):
        idx = torch.randint(0, V, (N,), device=DEV) if dist == "uniform" else log_uniform_ids(N, V, DEV)
        U = int(torch.unique(idx).numel())
        g = torch.randn(N, D, device=DEV)
        fwd = N * D * 4 * 2 + N * 8
        for opt, state_bytes, torch_opt in (
            ("SGD", 0, torch.optim.SGD), ("Adagrad", D * 4, torch.optim.Adagrad),
            ("RowWiseAdagrad", 4, torch.optim.Adagrad),  # torch has no row-wise Adagrad: Adagrad stands in
        ):
            floor = fwd + N * D * 4 + 2 * U * (D * 4 + state_bytes)
            ours_mod = embtab.Embedding(V, D, device=DEV, oov="zero", backend="triton",
                                        optimizer=getattr(embtab.optim, opt)(lr=0.1))

            def ours() -> None:
                ours_mod(idx).backward(g)

            variants = {}
            torch_mods = []
            for sparse in ((True, False) if opt == "SGD" else (True,)):
                emb = torch.nn.Embedding(V, D, sparse=sparse, device=DEV)
                o = torch_opt(emb.parameters(), lr=0.1)
                torch_mods.append((emb, o))

                def step(emb: torch.nn.Module = emb, o: torch.optim.Optimizer = o) -> None:
                    o.zero_grad(set_to_none=True)
                    emb(idx).backward(g)
                    o.step()

                variants[f"sparse={sparse}"] = step
            goal = ">= 60% floor, >= 3x" if opt != "Adagrad" else ">= 10x"
            rep.add(f"rec {dist} step {opt} (U={U})", floor, ours, variants, goal=goal)
            del ours_mod, torch_mods, variants
            torch.cuda.empty_cache()


def bag_cases(rep: Report, scale: int) -> None:
    """EmbeddingBag sum, V=1M D=128 B=16384 L=20: forward, and forward + dense backward."""
    from embtab.ops import triton as T

    V, D, B, L = 1_000_000 // scale, 128, 16384 // scale, 20
    bag = torch.nn.EmbeddingBag(V, D, mode="sum", device=DEV)
    W = bag.weight.detach()
    idx = torch.randint(0, V, (B * L,), device=DEV)
    offs = torch.arange(0, B * L, L, device=DEV)
    ends = torch.arange(0, B * L + 1, L, device=DEV)
    out, _ = T.embedding_bag_forward(W, idx, ends, "sum", None, None)
    torch.testing.assert_close(out, bag(idx, offs))
    fb = B * L * D * 4 + B * D * 4 + B * L * 8
    rep.add("bag V=1M D=128 B=16k L=20 sum fwd", fb, lambda: T.embedding_bag_forward(W, idx, ends, "sum", None, None),
            {"nn.EmbeddingBag": lambda: bag(idx, offs)}, goal=">= 80%")
    gb = torch.randn(B, D, device=DEV)
    w_ours = W.clone().requires_grad_()

    def ours() -> None:
        import embtab

        w_ours.grad = None
        embtab.functional.embedding_bag(idx, w_ours, offs, mode="sum", oov="zero", backend="triton").backward(gb)

    def torch_step() -> None:
        bag.zero_grad(set_to_none=True)
        bag(idx, offs).backward(gb)

    rep.add("bag V=1M D=128 B=16k L=20 sum fwd+bwd(dense)", fb + V * D * 4 + B * D * 4, ours, {"nn.EmbeddingBag": torch_step})


def tbe_cases(rep: Report, scale: int) -> None:
    """FBGEMM's default TBE shape: T=32 tables x 100k x 128 fp32, L=20, Zipf(1.15)."""
    import embtab

    T_, E, D, L = 32, 100_000 // scale, 128, 20
    for B in (max(1, 512 // max(1, scale // 10)), 16384 // scale):  # 512 exactly unless dry-running
        ids = [zipf_ids(B * L, E, 1.15, DEV) for _ in range(T_)]
        offs = torch.arange(0, B * L, L, device=DEV)
        U = sum(int(torch.unique(i).numel()) for i in ids)
        g = torch.randn(B, T_ * D, device=DEV)
        fwd = T_ * B * L * (D * 4 + 8) + T_ * B * D * 4
        tables = [embtab.TableConfig(f"t{i}", E, D, oov="zero") for i in range(T_)]
        feats = {f"t{i}": (ids[i], offs) for i in range(T_)}
        bags = torch.nn.ModuleList([torch.nn.EmbeddingBag(E, D, mode="sum", sparse=True, device=DEV) for _ in range(T_)])

        def torch_fwd() -> torch.Tensor:
            return torch.cat([m(i, offs) for m, i in zip(bags, ids)], 1)

        def torch_fwd_no_grad() -> None:  # what ours_fwd measures: no autograd records
            with torch.no_grad():
                torch_fwd()

        ebc = embtab.EmbeddingBagCollection(tables, device=DEV, backend="triton")  # one launch per pooling mode

        def ours_fwd() -> None:
            with torch.no_grad():
                ebc(feats).concat()

        baselines = {"per-table nn.EmbeddingBag": torch_fwd_no_grad}
        tbe = _fbgemm_tbe(T_, E, D)
        if tbe is not None:
            all_ids, all_offs = torch.cat(ids), torch.arange(0, T_ * B * L + 1, L, device=DEV)

            def fbgemm_fwd() -> None:
                with torch.no_grad():
                    tbe(all_ids, all_offs)

            baselines["FBGEMM TBE"] = fbgemm_fwd
        rep.add(f"tbe B={B} fwd (32 tables)", fwd, ours_fwd, baselines,
                goal="<= 1.5x the faster baseline")
        del ebc
        for opt, state_bytes, torch_opt in (("SGD", 0, torch.optim.SGD), ("Adagrad", D * 4, torch.optim.Adagrad),
                                            ("RowWiseAdagrad", 4, torch.optim.Adagrad)):
            floor = fwd + T_ * B * D * 4 + 2 * U * (D * 4 + state_bytes)
            fused = embtab.EmbeddingBagCollection(tables, device=DEV, optimizer=getattr(embtab.optim, opt)(lr=0.01),
                                                  backend="triton")
            o = torch_opt(bags.parameters(), lr=0.01)

            def ours() -> None:
                fused(feats).concat().backward(g)

            def torch_step() -> None:
                o.zero_grad(set_to_none=True)
                torch_fwd().backward(g)
                o.step()

            goal = ">= 60% floor, >= 3x" if opt != "Adagrad" else ">= 10x"
            rep.add(f"tbe B={B} step {opt} (U={U})", floor, ours, {"per-table sparse": torch_step}, goal=goal)
            del fused, o
            torch.cuda.empty_cache()
        del bags
        torch.cuda.empty_cache()


def _fbgemm_tbe(num_tables: int, rows: int, dim: int) -> Any:
    """FBGEMM's table-batched embedding bags on the GPU (forward baseline), or None without it."""
    try:
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        return SplitTableBatchedEmbeddingBagsCodegen(
            [(rows, dim, EmbeddingLocation.DEVICE, ComputeDevice.CUDA)] * num_tables, pooling_mode=PoolingMode.SUM,
        )
    except Exception as exc:  # not installed, or a CPU-only build
        print(f"FBGEMM TBE baseline skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


CASES = {"lookup": lookup_cases, "step": step_cases, "bag": bag_cases, "tbe": tbe_cases}


def main(argv: list[str] | None = None) -> int:
    global DEV, DRY_RUN
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Example" + __doc__.split("Example", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=sorted(CASES), help="run only these groups (repeatable)")
    parser.add_argument("--quick", action="store_true", help="shapes divided by 10: a smoke run")
    parser.add_argument("--rep", type=int, default=200, help="do_bench's time budget per measurement, ms")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "/tmp"), "bench_gpu.json"))
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="tiny shapes on CPU under TRITON_INTERPRET=1, each case run once: checks the script")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        DEV, DRY_RUN = "cpu", True
        os.environ["TRITON_INTERPRET"] = "1"  # before embtab.ops.triton imports triton kernels
        os.environ["EMBTAB_FUSED_BACKEND"] = "triton"  # CPU would pick numba: check our path
    elif not torch.cuda.is_available():
        print("bench_gpu.py: no CUDA device; this benchmark needs a GPU", file=sys.stderr)
        return 2
    import triton

    torch.manual_seed(0)
    print(machine_info(), flush=True)
    device = "cpu (dry run)" if DRY_RUN else torch.cuda.get_device_name()
    header = {"device": device, "torch": torch.__version__, "triton": triton.__version__, "quick": args.quick}
    rep = Report(copy_bandwidth(args.rep), args.rep, args.json, header)
    print(f"copy bandwidth (read + write): {rep.copy:.1f} GB/s", flush=True)
    failed = []
    for name in args.only or list(CASES):
        try:
            CASES[name](rep, 1000 if args.cpu_dry_run else 10 if args.quick else 1)
        except Exception:  # keep the other groups' numbers: a GPU hour is precious
            failed.append(name)
            traceback.print_exc()
        torch.cuda.empty_cache()
    rep.table()
    rep.save(failed_groups=failed, complete=True)
    print(f"wrote {args.json}" + (f"; FAILED groups: {failed}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
