"""Per-call overhead on small inputs: one call on 40 ids, embtab against torch.

Cases (each against its torch twin, same weights, one thread):
- ``Embedding`` forward without grad, and forward+backward (``out.sum().backward()``);
- ``EmbeddingBag`` (sum, 8 bags of 5) forward without grad, and forward+backward;
- a fused SGD step (``embtab.EmbeddingBag(optimizer=SGD)``: forward+backward, the update
  inside) against torch's sparse step (``sparse=True`` module, forward+backward,
  ``torch.optim.SGD.step()``, ``zero_grad()``).

Prints the median and p20/p80 of per-call microseconds over interleaved rounds and the
ratio embtab / torch (the goal: <= 1.3x). Table V=10,000 x D=64 (the weight gradient of
the dense cases is a (V, D) tensor, as in any real model).

    python benchmarks/bench_overhead.py [--rounds 15] [--calls 400]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embtab  # noqa: E402
from _harness import machine_info, print_table  # noqa: E402


def interleaved_us(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, tuple[float, float, float]]:
    """(p50, p20, p80) microseconds per call; each round times ``calls`` calls of each function in turn."""
    for fn in fns.values():
        for _ in range(calls // 4):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=5)
        out[name] = (statistics.median(ts), q[0], q[3])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    V, D = args.rows, args.dim
    ids = torch.randint(0, V, (40,))
    offsets = torch.arange(0, 40, 5)
    print(machine_info())
    print(f"40 ids, table {V:,} x {D}, one thread; us per call, median [p20, p80] of {args.rounds} interleaved "
          f"rounds of {args.calls} calls; ratio = embtab / torch (goal <= 1.3)\n")

    t_emb = torch.nn.Embedding(V, D)
    e_emb = embtab.Embedding(V, D, _weight=t_emb.weight.detach().clone())
    t_bag = torch.nn.EmbeddingBag(V, D, mode="sum")
    e_bag = embtab.EmbeddingBag(V, D, mode="sum", _weight=t_bag.weight.detach().clone())
    t_sparse = torch.nn.EmbeddingBag(V, D, mode="sum", sparse=True, _weight=t_bag.weight.detach().clone())
    t_opt = torch.optim.SGD(t_sparse.parameters(), lr=0.01)
    e_fused = embtab.EmbeddingBag(V, D, mode="sum", _weight=t_bag.weight.detach().clone(),
                                  optimizer=embtab.optim.SGD(lr=0.01))

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return fn()
        return run

    def fwd_bwd(module: torch.nn.Module, *args: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            module.weight.grad = None
            module(*args).sum().backward()
        return run

    def torch_sparse_step() -> None:
        t_sparse(ids, offsets).sum().backward()
        t_opt.step()
        t_opt.zero_grad()

    def embtab_fused_step() -> None:
        e_fused(ids, offsets).sum().backward()

    cases = [
        ("Embedding forward (no grad)", no_grad(lambda: t_emb(ids)), no_grad(lambda: e_emb(ids))),
        ("Embedding forward+backward", fwd_bwd(t_emb, ids), fwd_bwd(e_emb, ids)),
        ("EmbeddingBag forward (no grad)", no_grad(lambda: t_bag(ids, offsets)), no_grad(lambda: e_bag(ids, offsets))),
        ("EmbeddingBag forward+backward", fwd_bwd(t_bag, ids, offsets), fwd_bwd(e_bag, ids, offsets)),
        ("fused SGD step vs torch sparse step", torch_sparse_step, embtab_fused_step),
    ]
    rows = []
    for name, torch_fn, ours_fn in cases:
        timed = interleaved_us({"torch": torch_fn, "embtab": ours_fn}, args.rounds, args.calls)
        (tp, t20, t80), (ep, e20, e80) = timed["torch"], timed["embtab"]
        rows.append([name, f"{tp:.1f} [{t20:.1f}, {t80:.1f}]", f"{ep:.1f} [{e20:.1f}, {e80:.1f}]", f"{ep / tp:.2f}"])
    print_table(["case", "torch us", "embtab us", "ratio"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
