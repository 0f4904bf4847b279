"""Core lookups on CPU: embtab.Embedding / EmbeddingBag against torch.nn, forward and forward+backward.

Shapes (issue 2): Embedding V=1,000,000 x D=64 with 327,680 ids; EmbeddingBag over 8 tables
of that size, batch 2048, bag size 20. Prints one table: median ms (p20-p80), and the
ratio ours / torch (< 1 is faster). Run: python benchmarks/bench_core_cpu.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embtab  # noqa: E402
from _harness import interleaved_ms, machine_info, print_table  # noqa: E402


def bench_embedding(V: int, D: int, N: int, repeat: int) -> list[list[object]]:
    ids = torch.randint(0, V, (N,))
    grad = torch.randn(N, D)
    rows: list[list[object]] = []
    torch_mod = torch.nn.Embedding(V, D)
    impls = {
        "torch.nn.Embedding": torch_mod,
        "embtab (auto)": embtab.Embedding(V, D, _weight=torch_mod.weight.detach().clone()),
        "embtab (reference)": embtab.Embedding(V, D, _weight=torch_mod.weight.detach().clone(), backend="reference"),
    }
    def fwd(mod: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                mod(ids)
        return run

    def fwd_bwd(mod: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            mod.weight.grad = None
            mod(ids).backward(grad)
        return run

    for what, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
        timed = interleaved_ms({name: make(mod) for name, mod in impls.items()}, repeat=repeat)
        base = timed["torch.nn.Embedding"][0]
        for name, (p50, p20, p80) in timed.items():
            rows.append([f"Embedding {what}", name, p50, f"{p20:.1f}-{p80:.1f}", p50 / base])
    return rows


def bench_bags(T: int, V: int, D: int, B: int, L: int, mode: str, sparse: bool, repeat: int) -> list[list[object]]:
    ids = [torch.randint(0, V, (B * L,)) for _ in range(T)]
    offsets = torch.arange(0, B * L, L)
    grad = torch.randn(B, T * D)
    torch_bags = [torch.nn.EmbeddingBag(V, D, mode=mode, sparse=sparse) for _ in range(T)]
    impls = {
        "torch.nn.EmbeddingBag": torch_bags,
        "embtab (auto)": [embtab.EmbeddingBag(V, D, mode=mode, sparse=sparse, _weight=b.weight.detach().clone())
                          for b in torch_bags],
        "embtab (reference)": [embtab.EmbeddingBag(V, D, mode=mode, sparse=sparse, backend="reference",
                                                   _weight=b.weight.detach().clone()) for b in torch_bags],
    }
    rows: list[list[object]] = []
    label = f"EmbeddingBag x{T} {mode}{' sparse' if sparse else ''}"

    def fwd(bags: list[torch.nn.Module]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                torch.cat([b(i, offsets) for b, i in zip(bags, ids)], 1)
        return run

    def fwd_bwd(bags: list[torch.nn.Module]) -> Callable[[], None]:
        def run() -> None:
            for b in bags:
                b.weight.grad = None
            torch.cat([b(i, offsets) for b, i in zip(bags, ids)], 1).backward(grad)
        return run

    for what, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
        timed = interleaved_ms({name: make(bags) for name, bags in impls.items()}, repeat=repeat)
        base = timed["torch.nn.EmbeddingBag"][0]
        for name, (p50, p20, p80) in timed.items():
            rows.append([f"{label} {what}", name, p50, f"{p20:.1f}-{p80:.1f}", p50 / base])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes, fewer repeats (smoke test)")
    args = parser.parse_args()
    V, D, N, T, B, L = 1_000_000, 64, 327_680, 8, 2048, 20
    repeat = 7
    if args.quick:
        V, N, T, B, repeat = 10_000, 4096, 2, 256, 3
    torch.manual_seed(0)
    print(machine_info())
    print(f"Embedding V={V:,} D={D} ids={N:,}; EmbeddingBag {T} tables V={V:,} D={D} B={B} L={L}; "
          f"median of {repeat} rounds, implementations interleaved, after 2 warm-ups; "
          f"ratio = ours / torch (lower is faster)\n")
    rows = bench_embedding(V, D, N, repeat)
    for mode, sparse in (("sum", False), ("sum", True), ("mean", False)):
        rows += bench_bags(T, V, D, B, L, mode, sparse, repeat)
    print_table(["case", "implementation", "ms (p50)", "p20-p80", "ratio vs torch"], rows)


if __name__ == "__main__":
    main()
