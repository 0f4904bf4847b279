"""A dynamic table at scale on CPU: embtab.ids.Dynamic vs TorchRec's MCHManagedCollisionModule.

A Zipf(1.05) stream of ``--ids`` ids (default 10M) over ``--distinct`` ids (default 10^8),
scrambled by a fixed bijection (fmix64) into [0, 2^62), in batches of ``--batch`` (65,536),
into a table of ``--capacity`` rows (1M) of dim ``--dim`` (64), LFU eviction, one thread on
both sides (``torch.set_num_threads(1)``). Per batch, timed one after the other (so a
neighbour's load hits both alike):

- TorchRec: ``profile()`` + ``remap()`` of the same ids (capacity, LFU, eviction every step);
  the remapped ids of an embedding lookup, no lookup.
- embtab, step: a training-mode forward of an ``embtab.EmbeddingBag`` (one id per bag) with
  ``ids=Dynamic(evict=LFU())``: id resolution, admission, eviction, reset of the reassigned
  rows (weight and optimizer state), and the lookup.
- embtab, step + update: the same, plus backward with a fused ``RowWiseAdagrad`` update
  of the looked-up rows (the whole training step of the table).

Also printed: the hit rate (ids whose id had a row before their batch) against an exact
LFU cache simulated id by id on the same stream, with the offline ceiling (the traffic share
of the ``capacity`` most frequent ids); the index and metadata memory against the table's
bytes; and the time to save and load the table's ``state_dict`` against its live count.

    python benchmarks/bench_dynamic.py                       # the issue's sizes (~2 GB of RAM)
    python benchmarks/bench_dynamic.py --ids 2000000 --capacity 262144   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, print_table  # noqa: E402

import embtab  # noqa: E402
from embtab.ids import _index_numba as kernels  # noqa: E402


def zipf_stream(n: int, distinct: int, exponent: float, seed: int) -> np.ndarray:
    """``n`` ids: ranks 1..distinct with P(k) ~ k^-exponent (continuous inverse-CDF of a bounded
    power law), scrambled into [0, 2^62) by fmix64 (a bijection of 64-bit words), so the hot
    ids are spread over the id space like hashed ids."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    a = 1.0 - exponent
    top = (distinct + 1.0) ** a
    ranks = np.floor((1.0 + u * (top - 1.0)) ** (1.0 / a)).astype(np.int64)
    ranks = np.clip(ranks, 1, distinct)
    return kernels.fmix64(ranks) & ((1 << 62) - 1)


def lfu_hit_rate(stream: np.ndarray, capacity: int) -> float:
    """Hits of an exact LFU cache, one id at a time (evict the fewest sightings, ties by id;
    an evicted id's count is forgotten), over the whole stream."""
    uniq, dense = np.unique(stream, return_inverse=True)
    return _lfu(dense.astype(np.int64), uniq.size, capacity) / stream.size


def _lfu_kernel():  # type: ignore[no-untyped-def]
    from numba import njit

    @njit(cache=True)
    def lfu(ids, universe, capacity):  # type: ignore[no-untyped-def]
        # An indexed binary min-heap of the cached ids keyed by (count, id).
        heap = np.empty(capacity, np.int64)
        pos = np.full(universe, -1, np.int64)
        count = np.zeros(universe, np.int64)
        size = 0
        hits = 0

        def less(a, b):  # type: ignore[no-untyped-def]
            return count[a] < count[b] or (count[a] == count[b] and a < b)

        def sift_down(p, item, size):  # type: ignore[no-untyped-def]
            """The slot for ``item`` at or below ``p``; the smaller children move up on its way."""
            while True:
                c = 2 * p + 1
                if c >= size:
                    return p
                if c + 1 < size and less(heap[c + 1], heap[c]):
                    c += 1
                if not less(heap[c], item):
                    return p
                heap[p] = heap[c]
                pos[heap[p]] = p
                p = c

        for i in ids:
            p = pos[i]
            if p >= 0:
                hits += 1
                count[i] += 1
                p = sift_down(p, i, size)
                heap[p] = i
                pos[i] = p
                continue
            if size == capacity:  # evict the root
                old = heap[0]
                pos[old] = -1
                count[old] = 0
                size -= 1
                last = heap[size]
                p = sift_down(0, last, size)
                if size:
                    heap[p] = last
                    pos[last] = p
            count[i] = 1
            p = size
            size += 1
            while p > 0:  # sift up
                parent = (p - 1) // 2
                if not less(i, heap[parent]):
                    break
                heap[p] = heap[parent]
                pos[heap[p]] = p
                p = parent
            heap[p] = i
            pos[i] = p
        return hits

    return lfu


_lfu = _lfu_kernel()


def offline_ceiling(stream: np.ndarray, capacity: int) -> float:
    """The traffic share of the ``capacity`` most frequent ids (no cache does better)."""
    _, counts = np.unique(stream, return_counts=True)
    counts.sort()
    return float(counts[-capacity:].sum()) / stream.size


def torchrec_module(capacity: int):  # type: ignore[no-untyped-def]
    try:
        from torchrec.modules.mc_modules import LFU_EvictionPolicy, MCHManagedCollisionModule
        from torchrec.sparse.jagged_tensor import JaggedTensor
    except ImportError as exc:
        print(f"torchrec not available ({exc}): its column is skipped")
        return None
    module = MCHManagedCollisionModule(zch_size=capacity, device=torch.device("cpu"),
                                       eviction_policy=LFU_EvictionPolicy(), eviction_interval=1)
    module.train()

    def step(ids: torch.Tensor) -> None:
        features = {"f": JaggedTensor(values=ids, lengths=torch.ones(ids.numel(), dtype=torch.int32))}
        module.profile(features)
        module.remap(features)

    return step


def checkpoint_times(table: torch.nn.Module, fresh: torch.nn.Module, batch: int) -> list[str]:
    """Save ``table``'s state_dict to a file and load it into ``fresh``: the times and the size."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "table.pt")
        t0 = time.perf_counter()
        torch.save(table.state_dict(), path)
        save_s = time.perf_counter() - t0
        size = os.path.getsize(path)
        t0 = time.perf_counter()
        fresh.load_state_dict(torch.load(path, weights_only=True))
        load_s = time.perf_counter() - t0
    return [str(batch), f"{table.ids.stats()['live']:,}", f"{size / 2**20:.1f}", f"{save_s:.2f}", f"{load_s:.2f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--distinct", type=int, default=10**8)
    parser.add_argument("--exponent", type=float, default=1.05)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--capacity", type=int, default=1 << 20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="batches not timed (numba compiles, the table fills)")
    parser.add_argument("--no-torchrec", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_info())
    print(f"stream: {args.ids:,} ids, Zipf({args.exponent}) over {args.distinct:,} ids scrambled into [0, 2^62); "
          f"batches of {args.batch:,}; capacity {args.capacity:,} rows x dim {args.dim}; LFU; one thread")

    t0 = time.perf_counter()
    stream = zipf_stream(args.ids, args.distinct, args.exponent, seed=0)
    batches = [torch.from_numpy(stream[s:s + args.batch]) for s in range(0, stream.size, args.batch)]
    print(f"stream drawn in {time.perf_counter() - t0:.1f} s: {len(batches)} batches, "
          f"{np.unique(stream).size:,} distinct ids")

    bag = embtab.EmbeddingBag(args.capacity, args.dim, mode="sum",
                              ids=embtab.ids.Dynamic(evict=embtab.ids.LFU()),
                              optimizer=embtab.optim.RowWiseAdagrad(lr=0.01))
    twin = embtab.EmbeddingBag(args.capacity, args.dim, mode="sum", ids=embtab.ids.Dynamic(evict=embtab.ids.LFU()))
    torchrec_step = None if args.no_torchrec else torchrec_module(args.capacity)
    offsets = torch.arange(args.batch)

    def ours_forward(ids: torch.Tensor) -> None:
        twin(ids, offsets[:ids.numel()])

    def ours_full(ids: torch.Tensor) -> None:
        out = bag(ids, offsets[:ids.numel()])
        out.sum().backward()

    fns = {"torchrec": torchrec_step, "forward": ours_forward, "full": ours_full}
    fns = {k: f for k, f in fns.items() if f is not None}
    times: dict[str, list[float]] = {k: [] for k in fns}
    checkpoints = {len(batches) * k // 8 - 1 for k in (1, 2, 4, 8)}  # save and load as the live rows grow
    saved = []
    fresh = embtab.EmbeddingBag(args.capacity, args.dim, mode="sum", ids=embtab.ids.Dynamic(evict=embtab.ids.LFU()),
                                optimizer=embtab.optim.RowWiseAdagrad(lr=0.01))
    for b, ids in enumerate(batches):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(ids)
            if b >= args.warmup:
                times[name].append(time.perf_counter() - start)
        if b in checkpoints:  # outside the timed steps
            saved.append(checkpoint_times(bag, fresh, b + 1))
    timed_ids = sum(x.numel() for x in batches[args.warmup:])

    rows = []
    base = sum(times["torchrec"]) if "torchrec" in times else float("nan")
    labels = {"torchrec": "TorchRec MCH (LFU): profile + remap",
              "forward": "embtab Dynamic(LFU): training forward (resolve, admit, evict, reset, lookup)",
              "full": "embtab Dynamic(LFU): forward + backward + fused RowWiseAdagrad"}
    for name, ts in times.items():
        total = sum(ts)
        rows.append([labels[name], f"{np.median(ts) * 1e3:.1f}", f"{timed_ids / total / 1e6:.2f}",
                     "1.00" if name == "torchrec" else f"{base / total:.2f}"])
    print()
    print_table(["", "ms / batch (p50)", "M ids/s", "speed vs TorchRec"], rows)
    if "torchrec" in times:
        for name in ("forward", "full"):
            ratio = base / sum(times[name])
            print(f"goal >= 3x TorchRec's ids/s, {name}: {ratio:.2f}x: {'met' if ratio >= 3 else 'MISSED'}")

    stats = bag.ids.stats()
    ours = stats["hits"] / stats["lookups"]
    t0 = time.perf_counter()
    exact = lfu_hit_rate(stream, args.capacity)
    ceiling = offline_ceiling(stream, args.capacity)
    print()
    print_table(["hit rate (id had a row before its batch)", "%"], [
        ["embtab Dynamic(LFU), batches", f"{100 * ours:.2f}"],
        ["exact LFU, one id at a time (simulated)", f"{100 * exact:.2f}"],
        ["offline ceiling: traffic share of the capacity most frequent ids", f"{100 * ceiling:.2f}"],
    ])
    gap = 100 * abs(ours - exact)
    print(f"goal: within 2 points of exact LFU: {gap:.2f} points: {'met' if gap <= 2 else 'MISSED'} "
          f"(simulation {time.perf_counter() - t0:.1f} s); stats: {stats}")

    table_bytes = bag.weight.numel() * bag.weight.element_size()
    index_bytes = bag.ids.index_bytes()
    print()
    print(f"index and metadata: {index_bytes / 2**20:.1f} MiB = {100 * index_bytes / table_bytes:.1f}% of the "
          f"table's {table_bytes / 2**20:.1f} MiB (goal <= 25%: {'met' if index_bytes <= table_bytes / 4 else 'MISSED'})")

    print()
    print_table(["checkpoint after batch", "live rows", "file MiB", "save s (state_dict + torch.save)",
                 "load s (torch.load + load_state_dict)"], saved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
