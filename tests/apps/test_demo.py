"""``embtab demo``'s plumbing and summary table, on synthetic data (the real run takes minutes)."""

from __future__ import annotations

import json

import torch

from embtab.apps import demo


def test_demo_runs_both_apps_and_prints_one_table(tmp_path, text_csv, ratings_csv):
    n = torch.get_num_threads()
    try:
        s = demo.run(str(tmp_path / "demo"), threads=1, quiet=True,
                     text_options={"data": str(text_csv), "text_column": "message", "label_column": "topic",
                                   "epochs": 2, "buckets": 1024, "dim": 16},
                     recsys_options={"ratings": str(ratings_csv), "epochs": 2, "dim": 8, "neighbors": ["Movie 2"],
                                     "neighbor_min_ratings": 1})
    finally:
        torch.set_num_threads(n)
    table = "\n".join(demo.summary_table(s))
    assert "text classifier" in table and "movie recommender" in table
    assert f"{s['text']['test']['macro_f1']:.4f}" in table and f"{s['recsys']['test']['rmse']:.4f}" in table
    assert "bag-of-words LR" in table and "user+item biases" in table and "nearest to Movie 2" in table
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary) == {"text", "recsys", "seconds"}
    for app in ("text", "recsys"):
        assert (tmp_path / "demo" / app / "metrics.json").is_file()
