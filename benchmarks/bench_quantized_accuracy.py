"""The demo's two applications with their tables quantized: test metrics and table sizes.

Reads a finished text run and a finished recommender run (``embtab demo`` writes both:
``DEMO/text`` and ``DEMO/recsys``), replays each run's test split (same data, same
seed), and for every dtype and method quantizes the run's tables (``embtab.quantize``;
the dense layers stay float32) and scores the test split again:

- text classifier: macro-F1 and its change relative to the float32 model;
- recommender: RMSE and its change relative to the float32 model;
- the tables' own error (root mean square of read back minus float32, all values);
- each table's bytes against the analytic size ``rows * row_bytes(dim)``.

    python benchmarks/bench_quantized_accuracy.py runs/demo-20250101-120000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, print_table  # noqa: E402

import embtab  # noqa: E402
from embtab.apps import data as data_mod  # noqa: E402
from embtab.apps.common import Bags  # noqa: E402
from embtab.apps.metrics import classification_metrics, regression_metrics  # noqa: E402
from embtab.apps.serve import RecsysRun, TextRun  # noqa: E402
from embtab.quant import LAYOUTS  # noqa: E402

VARIANTS = [("int8", "minmax"), ("int8", "greedy"), ("int4", "minmax"), ("int4", "greedy"), ("int2", "minmax"),
            ("int2", "greedy"), ("float16", "minmax"), ("bfloat16", "minmax")]


def text_scorer(run: TextRun):  # type: ignore[no-untyped-def]
    """A function model -> test macro-F1 on the run's test split."""
    from embtab.apps.text import _load_data, tokenize

    cfg = run.config
    data = _load_data(cfg)
    class_id = {c: k for k, c in enumerate(run.classes)}
    y = np.array([class_id[c] for c in data.labels], dtype=np.int64)
    _, test_idx = data_mod.stratified_split(y, cfg.test_fraction, cfg.seed)
    bags = Bags.from_lists([run.featurize(tokenize(data.texts[i])) for i in test_idx])
    truth = torch.from_numpy(y[test_idx])

    def score(model: torch.nn.Module) -> float:
        with torch.no_grad():
            pred = model(bags.flat, bags.starts[:-1]).argmax(1)
        return float(classification_metrics(truth, pred, len(run.classes))["macro_f1"])

    return score


def recsys_scorer(run: RecsysRun):  # type: ignore[no-untyped-def]
    """A function model -> test RMSE on the run's test split."""
    cfg = run.config
    data = data_mod.load_movielens() if cfg.ratings is None else data_mod.load_ratings_file(cfg.ratings, cfg.movies)
    _, test_idx = data_mod.random_split(len(data.ratings), cfg.test_fraction, cfg.seed)
    pairs = list(zip(data.users[test_idx].tolist(), data.items[test_idx].tolist()))
    truth = torch.from_numpy(data.ratings[test_idx].astype(np.float32))

    def score(model: torch.nn.Module) -> float:
        saved, run.model = run.model, model.eval()
        try:
            pred = torch.tensor(run.predict(pairs))
        finally:
            run.model = saved
        return float(regression_metrics(pred, truth)["rmse"])

    return score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", help="a demo folder (with text/ and recsys/), or give --text and --recsys")
    parser.add_argument("--text", help="a text run folder (default: DEMO/text)")
    parser.add_argument("--recsys", help="a recommender run folder (default: DEMO/recsys)")
    args = parser.parse_args(argv)
    print(machine_info())
    runs = {"text": embtab.load_run(args.text or Path(args.demo) / "text"),
            "recsys": embtab.load_run(args.recsys or Path(args.demo) / "recsys")}
    scorers = {"text": text_scorer(runs["text"]), "recsys": recsys_scorer(runs["recsys"])}
    metric = {"text": "macro-F1", "recsys": "RMSE"}
    base = {app: scorers[app](runs[app].model) for app in runs}
    rows, sizes = [], []
    for app in ("text", "recsys"):
        rows.append((app, "float32", "-", f"{base[app]:.4f}", "-", "0", "-"))
        for dtype, method in VARIANTS:
            t0 = time.perf_counter()
            q = embtab.quantize(runs[app].model, dtype, method=method)
            seconds = time.perf_counter() - t0
            value = scorers[app](q)
            # The tables' own error: root mean square of (read back - float32) over every value.
            floats = {n: m.weight.detach() for n, m in runs[app].model.named_modules()
                      if isinstance(m, (embtab.Embedding, embtab.EmbeddingBag))}
            sq = sum(float((t.dequantized_weight() - floats[n]).double().pow(2).sum())
                     for n, t in q.quantized_tables().items())
            count = sum(t.numel() for t in floats.values())
            rows.append((app, dtype, method, f"{value:.4f}", f"{(value - base[app]) / base[app] * 100:+.3f}%",
                         f"{(sq / count) ** 0.5:.3e}", f"{seconds:.1f}"))
            if method == "minmax":
                for name, t in q.quantized_tables().items():
                    rows_, dim = t.spec.num_rows, t.spec.embedding_dim
                    analytic = LAYOUTS[dtype].table_bytes(rows_, dim)
                    sizes.append((app, name, dtype, f"{rows_:,} x {dim}", f"{t.nbytes:,}", f"{analytic:,}",
                                  f"{rows_ * dim * 4 / t.nbytes:.2f}x"))
    print(f"\ntest metric of each application, its tables quantized (dense layers float32): text {metric['text']}, "
          f"recommender {metric['recsys']}\n")
    print_table(["app", "dtype", "method", "test metric", "change vs float32", "table RMS error", "quantize s"], rows)
    print()
    print_table(["app", "table", "dtype", "rows x dim", "bytes", "analytic rows*row_bytes", "vs float32"], sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
