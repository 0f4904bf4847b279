"""Loading pretrained vectors: embtab.vectors.load against gensim, and the cache format.

Generates a GloVe-style text file (default 400,000 tokens x 300 dims, tokens of 2-14
letters, one in 250 with a space, as in glove.840B) in a temp folder, plus a twin with
those spaces replaced by "_" (gensim splits tokens on spaces, so it cannot read the
first file). Each load runs in a fresh subprocess, so that its peak memory is its own:

* time: wall time of the load call (median of --repeat runs for embtab and the cache,
  one run for gensim, which takes minutes);
* peak memory: the process's peak RSS during the load (``VmHWM``, reset after the
  imports through ``/proc/self/clear_refs``) minus its RSS before the load: everything
  the load held at its peak, the final matrix included; "x matrix" divides it by the
  bytes of the float32 matrix. Linux only.

Run: python benchmarks/bench_vectors.py [--rows 400000] [--dim 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, print_table  # noqa: E402

SPACE_EVERY = 250


def generate(path_spaces: Path, path_plain: Path, rows: int, dim: int, seed: int = 0) -> int:
    """Write the two files; return how many tokens have a space."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    # Values look like GloVe's ("0.418", "-0.0066023"): a table of 2**16 formatted
    # N(0, 0.4) samples, so that writing 120M values takes seconds, not minutes.
    table = [f"{x:.6g}".encode() for x in rng.normal(0, 0.4, 1 << 16)]
    seen: set[str] = set()
    spaced = 0
    block = 10_000
    with open(path_spaces, "wb") as fs, open(path_plain, "wb") as fp:
        for start in range(0, rows, block):
            n = min(block, rows - start)
            idx = rng.integers(0, len(table), size=(n, dim)).tolist()
            out_s, out_p = [], []
            for i, row in enumerate(idx):
                while True:
                    tok = "".join(pick.choices(string.ascii_lowercase, k=pick.randint(2, 14)))
                    if (start + i) % SPACE_EVERY == SPACE_EVERY - 1:
                        cut = pick.randint(1, len(tok) - 1)
                        tok = tok[:cut] + " " + tok[cut:]
                    if tok not in seen and tok.replace(" ", "_") not in seen:
                        seen.add(tok)
                        break
                spaced += " " in tok
                values = b" ".join(table[j] for j in row)
                out_s.append(tok.encode() + b" " + values + b"\n")
                out_p.append(tok.replace(" ", "_").encode() + b" " + values + b"\n")
            fs.write(b"".join(out_s))
            fp.write(b"".join(out_p))
    return spaced


# ---------------------------------------------------------------------- child processes
def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(loader: str, path: str, cache: str) -> None:
    if loader == "gensim":
        from gensim.models import KeyedVectors
    else:
        import embtab  # noqa: F401
    # Reset the peak-RSS mark (VmHWM) after the imports, so the peak is the load's own.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_mb("VmRSS")
    start = time.perf_counter()
    result: dict[str, object] = {}
    try:
        if loader == "gensim":
            kv = KeyedVectors.load_word2vec_format(path, no_header=True)
            shape = kv.vectors.shape
        else:
            v = embtab.vectors.load(path)
            shape = tuple(v.vectors.shape)
            if loader == "cache":
                float(v.vectors[len(v) // 2].sum())  # touch a row: the mapping works
        result["seconds"] = time.perf_counter() - start
        result["shape"] = list(shape)
        result["peak_increase_mb"] = _status_mb("VmHWM") - base  # the load's peak, before the cache write
        if loader == "embtab" and cache:
            t = time.perf_counter()
            v.save(cache)
            result["save_seconds"] = time.perf_counter() - t
    except Exception as e:  # reported, not raised: gensim fails on tokens with spaces
        result["error"] = f"{type(e).__name__}: {str(e)[:70]}"
        result["seconds"] = time.perf_counter() - start
        result["peak_increase_mb"] = _status_mb("VmHWM") - base
    print(json.dumps(result))


def run_child(loader: str, path: Path, cache: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", loader, str(path), str(cache or "")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{loader} child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(loader: str, path: Path, repeat: int, cache: Path | None = None) -> dict:
    runs = [run_child(loader, path, cache) for _ in range(repeat)]
    runs.sort(key=lambda r: r["seconds"])
    best = runs[len(runs) // 2]
    best["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3, help="runs of the embtab and cache loads (median)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="bench_vectors_") as tmp:
        spaces, plain, cache = Path(tmp) / "glove_spaces.txt", Path(tmp) / "glove_plain.txt", Path(tmp) / "v.safetensors"
        t = time.perf_counter()
        n_spaced = generate(spaces, plain, args.rows, args.dim)
        matrix_mb = args.rows * args.dim * 4 / 2**20
        print(
            f"file: {args.rows:,} tokens x {args.dim} dims, {plain.stat().st_size / 2**20:,.0f} MiB of text "
            f"({n_spaced:,} tokens with a space in the first file), float32 matrix {matrix_mb:,.0f} MiB; "
            f"generated in {time.perf_counter() - t:.0f} s"
        )
        print("time: wall seconds of the load call in a fresh process (median of runs for embtab and the cache); "
              "peak: peak RSS during the load minus RSS before it (VmHWM reset after imports)")
        ours_plain = median_run("embtab", plain, args.repeat, cache)
        ours_spaces = median_run("embtab", spaces, 1)
        theirs = run_child("gensim", plain)
        theirs_spaces = run_child("gensim", spaces)
        cached = median_run("cache", cache, max(args.repeat, 5))

        def row(name: str, file: str, r: dict) -> list[object]:
            if "error" in r:
                return [name, file, f"fails after {r['seconds']:.1f} s: {r['error']}", "-", "-", "-"]
            ratio = r["peak_increase_mb"] / matrix_mb
            return [name, file, r["seconds"], r["peak_increase_mb"], f"{ratio:.2f}", r["shape"][0]]

        print_table(
            ["loader", "file", "time (s)", "peak RSS increase (MiB)", "x matrix", "rows"],
            [
                row("embtab.vectors.load", "plain", ours_plain),
                row("gensim load_word2vec_format(no_header=True)", "plain", theirs),
                row("embtab.vectors.load", "tokens with spaces", ours_spaces),
                row("gensim load_word2vec_format(no_header=True)", "tokens with spaces", theirs_spaces),
                row("embtab.vectors.load (cache, mmap)", "v.safetensors", cached),
            ],
        )
        if "error" not in theirs:
            print(f"embtab / gensim time: {ours_plain['seconds'] / theirs['seconds']:.3f} "
                  f"(embtab {theirs['seconds'] / ours_plain['seconds']:.1f}x faster); "
                  f"embtab runs: {ours_plain['all_seconds']} s; cache runs: {cached['all_seconds']} s; "
                  f"cache written in {ours_plain.get('save_seconds', float('nan')):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
