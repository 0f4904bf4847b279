"""``embtab demo``: both applications end to end on the default data, then one summary table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from . import recsys, text
from .common import default_run_dir, format_seconds, log, prepare_new_run_dir, write_json


def run(
    out: str | None = None, *, threads: int | None = None, quiet: bool = False,
    text_options: dict[str, Any] | None = None, recsys_options: dict[str, Any] | None = None,
    started: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the text classifier and the recommender with their default settings.

    ``text_options`` / ``recsys_options`` override fields of :class:`~embtab.apps.text.TextConfig`
    / :class:`~embtab.apps.recsys.RecsysConfig` (other data, fewer epochs, ...).

    ``started(run_dir)`` is called as each application's run begins (the command line
    uses it to say, on Ctrl-C, which run to resume).

    Returns ``{"text": metrics, "recsys": metrics, "seconds": total, "run_dir": folder}``;
    also written to ``<folder>/summary.json``.
    """
    started = started or (lambda run_dir: None)
    t0 = time.perf_counter()
    root = prepare_new_run_dir(out or default_run_dir("demo"))
    log(f"embtab demo -> {root}", quiet=quiet)
    log("[1/2] text classifier: which phone or client sent a tweet, from its text", quiet=quiet)
    started(str(root / "text"))
    text_m = text.train(text.TextConfig(out=str(root / "text"), threads=threads, quiet=quiet, **(text_options or {})))
    log("[2/2] movie recommender: biased matrix factorisation on MovieLens ratings", quiet=quiet)
    started(str(root / "recsys"))
    rec_m = recsys.train(recsys.RecsysConfig(out=str(root / "recsys"), threads=threads, quiet=quiet,
                                             **(recsys_options or {})))
    summary = {"text": text_m, "recsys": rec_m, "seconds": time.perf_counter() - t0, "run_dir": str(root)}
    write_json(Path(root) / "summary.json", {
        "text": {"test": text_m["test"], "baselines": text_m["baselines"], "seconds": text_m["seconds"]},
        "recsys": {"test": rec_m["test"], "baselines": rec_m["baselines"], "seconds": rec_m["seconds"],
                   "neighbors": rec_m["neighbors"]},
        "seconds": summary["seconds"],
    })
    return summary


def summary_table(s: dict[str, Any]) -> list[str]:
    """One table: each application's test metrics next to its baselines, time, outputs."""
    t, r = s["text"], s["recsys"]
    tb, rb = t["baselines"], r["baselines"]
    head = f"{'application':19s} {'test metric':12s} {'model':>7s}   {'baselines (same split)':44s} {'time':>6s}"
    rows = [
        head,
        "-" * len(head),
        f"{'text classifier':19s} {'macro-F1':12s} {t['test']['macro_f1']:7.4f}   "
        f"{'bag-of-words LR ' + format(tb['bow_logistic_regression']['test']['macro_f1'], '.4f') + ', majority ' + format(tb['majority_class']['test']['macro_f1'], '.4f'):44s} "
        f"{format_seconds(t['seconds']):>6s}",
        f"{'':19s} {'accuracy':12s} {t['test']['accuracy']:7.4f}   "
        f"{'bag-of-words LR ' + format(tb['bow_logistic_regression']['test']['accuracy'], '.4f') + ', majority ' + format(tb['majority_class']['test']['accuracy'], '.4f'):44s}",
        f"{'movie recommender':19s} {'RMSE':12s} {r['test']['rmse']:7.4f}   "
        f"{'user+item biases ' + format(rb['user_item_bias']['test']['rmse'], '.4f') + ', global mean ' + format(rb['global_mean']['test']['rmse'], '.4f'):44s} "
        f"{format_seconds(r['seconds']):>6s}",
        f"{'':19s} {'MAE':12s} {r['test']['mae']:7.4f}   "
        f"{'user+item biases ' + format(rb['user_item_bias']['test']['mae'], '.4f') + ', global mean ' + format(rb['global_mean']['test']['mae'], '.4f'):44s}",
    ]
    out = ["", "embtab demo: results on the held-out test splits (used once)", ""] + [r.rstrip() for r in rows]
    out.append("")
    for nb in r["neighbors"]:
        if nb["found"]:
            out.append(f"nearest to {nb['movie']}: " + "; ".join(x["movie"] for x in nb["neighbors"]))
    note = recsys.neighbors_note(r)
    if note:
        out.append(f"note: {note}")
    out += [
        "",
        f"total {format_seconds(s['seconds'])}; outputs in {s['run_dir']}/",
        f"  text/    {_files(t)}  ({t['test']['macro_f1'] - tb['bow_logistic_regression']['test']['macro_f1']:+.4f} macro-F1 vs bag-of-words LR)",
        f"  recsys/  {_files(r)}  ({r['test']['rmse'] - rb['user_item_bias']['test']['rmse']:+.4f} RMSE vs biases)",
    ]
    return out


def _files(m: dict[str, Any]) -> str:
    """The files a run wrote, as the summary lists them (the plots only when drawn)."""
    plots = [f"{k}.png" for k in ("curves", "embeddings") if k in m.get("outputs", {"curves": 1, "embeddings": 1})]
    return "  ".join(["metrics.json", *plots, "checkpoints/"])
