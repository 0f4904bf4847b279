"""``embtab predict`` from a cold start of a model file: one request, and a batch of 10,000.

Each measurement is a fresh process (``python -m embtab.cli predict ...``), timed from
its start to its exit (importing torch and embtab, reading the model file, predicting,
printing), median of ``--repeat`` runs; the in-process time of the predictions alone
(``load_run`` once, then ``predict``) is given beside it.

    python benchmarks/bench_predict.py --text text.safetensors --recsys recsys.safetensors
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, print_table  # noqa: E402


def _cold(argv: list[str], stdin: bytes | None, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "embtab.cli", "predict", *argv], input=stdin,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"embtab predict {' '.join(argv)} failed: {proc.stderr.decode()}")
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="a text model file (embtab export)")
    parser.add_argument("--recsys", help="a recommender model file (embtab export)")
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    import embtab

    print(machine_info())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.text:
            run = embtab.load_run(args.text)
            texts = [f"Thank you Ohio {i}! Make America great again, join me live tonight" for i in range(args.batch)]
            one = _cold([args.text, texts[0]], None, args.repeat)
            many = _cold([args.text, "-"], "\n".join(texts).encode(), args.repeat)
            t0 = time.perf_counter()
            run.predict(texts)
            warm = time.perf_counter() - t0
            rows += [("text: one text", f"{one * 1e3:.0f}", "-"),
                     (f"text: {args.batch:,} texts (stdin)", f"{many * 1e3:.0f}",
                      f"{warm * 1e3:.0f} ({args.batch / warm:,.0f} texts/s)")]
        if args.recsys:
            run = embtab.load_run(args.recsys)
            users, items = run.users, run.items
            pairs = [(users[i % len(users)], items[(i * 7) % len(items)]) for i in range(args.batch)]
            csv = Path(tmp) / "pairs.csv"
            csv.write_text("userId,movieId\n" + "".join(f"{u},{m}\n" for u, m in pairs))
            one = _cold([args.recsys, "--user", users[0], "--movie", items[0]], None, args.repeat)
            many = _cold([args.recsys, "--pairs", str(csv)], None, args.repeat)
            rec = _cold([args.recsys, "--recommend", users[0], "-k", "10"], None, args.repeat)
            t0 = time.perf_counter()
            run.predict(pairs)
            warm = time.perf_counter() - t0
            t0 = time.perf_counter()
            run.recommend(users[0], 10)
            warm_rec = time.perf_counter() - t0
            rows += [("recommender: one pair", f"{one * 1e3:.0f}", "-"),
                     (f"recommender: {args.batch:,} pairs (--pairs)", f"{many * 1e3:.0f}",
                      f"{warm * 1e3:.0f} ({args.batch / warm:,.0f} pairs/s)"),
                     ("recommender: --recommend, k 10", f"{rec * 1e3:.0f}", f"{warm_rec * 1e3:.1f}")]
    print()
    print_table(["request", "cold start to exit, ms (median)", "predictions alone in process, ms"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
