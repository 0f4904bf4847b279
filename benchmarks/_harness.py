"""Shared benchmark harness: machine info, warm-up then median timing, ratio tables."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Iterable, Sequence

import torch


def machine_info() -> str:
    """One line: CPU, cores, torch/Triton versions, threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
        f"GPU: {gpu}; python {platform.python_version()}, torch {torch.__version__}, triton {triton_v}"
    )


def add_table_args(parser: argparse.ArgumentParser, *, rounds: int, warmup: int) -> None:
    """The arguments of a benchmark over T tables of E x D rows, B bags of L ids
    (defaults: 8 x 1,000,000 x 64, B 2048, L 20), timed ``rounds`` times after ``warmup``."""
    parser.add_argument("--tables", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--bag", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--warmup", type=int, default=warmup)


def interleaved_ms(
    fns: dict[str, Callable[[], object]], *, warmup: int = 2, repeat: int = 7
) -> dict[str, tuple[float, float, float]]:
    """(p50, p20, p80) ms of each function, timed round-robin: one call of each per round.

    On a shared VM the cost of fresh memory (page faults) and the other tenants' load
    drift over seconds; interleaving exposes every implementation to the same drift,
    so their ratio is fairer than timing one after the other.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    out = {}
    for name, ts in times.items():
        ts.sort()
        q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
        out[name] = (statistics.median(ts), q[0], q[3])
    return out


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table (pastes into an issue note as is)."""
    rows = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
