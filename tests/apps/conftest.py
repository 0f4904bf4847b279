"""Small synthetic data sets, written by the tests under ``tmp_path``, so the app tests stay fast."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from embtab.cli import main

GENRES = ("Action", "Comedy", "Drama", "Sci-Fi")


def write_text_csv(path: Path, n: int = 600, seed: int = 0) -> Path:
    """Three classes, each with its own indicative words among shared filler words."""
    rng = np.random.default_rng(seed)
    filler = [f"w{i}" for i in range(150)]
    labels = ["red", "green", "blue"]
    cue = {lab: [f"{lab}{i}" for i in range(15)] for lab in labels}
    rows = []
    for k in range(n):
        lab = labels[k % 3] if rng.random() < 0.8 else labels[int(rng.integers(3))]
        words = list(rng.choice(filler, size=int(rng.integers(6, 14))))
        words += list(rng.choice(cue[lab], size=int(rng.integers(1, 4))))
        if rng.random() < 0.15:  # label noise, so no method is perfect
            lab = labels[int(rng.integers(3))]
        rng.shuffle(words)
        rows.append((" ".join(words), lab))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["message", "topic"])
        w.writerows(rows)
    return path


def write_ratings(folder: Path, users: int = 120, items: int = 100, n: int = 5000, seed: int = 0,
                  movies: bool = True) -> Path:
    """MovieLens-format ratings.csv (+ movies.csv): rank-3 preferences, biases, noise, half stars."""
    rng = np.random.default_rng(seed)
    pu, qi = rng.normal(0, 0.7, (users, 3)), rng.normal(0, 0.7, (items, 3))
    bu, bi = rng.normal(0, 0.3, users), rng.normal(0, 0.4, items)
    # Popularity is skewed, as in real data.
    pop = rng.zipf(1.6, items).astype(float)
    u = rng.integers(0, users, n)
    i = rng.choice(items, size=n, p=pop / pop.sum())
    r = 3.5 + bu[u] + bi[i] + (pu[u] * qi[i]).sum(1) + rng.normal(0, 0.5, n)
    r = np.clip(np.round(r * 2) / 2, 0.5, 5.0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ratings.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for k in range(n):
            w.writerow([int(u[k]) + 1, int(i[k]) + 10, r[k], 1_000_000 + k])
    if movies:
        with open(folder / "movies.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["movieId", "title", "genres"])
            for j in range(items):
                g = "|".join(GENRES[k] for k in range(4) if qi[j, k % 3] * (1 if k < 3 else -1) > 0.3) or "(no genres listed)"
                w.writerow([j + 10, f"Movie {j} ({1970 + j % 40})", g])
    return path


@pytest.fixture
def text_csv(tmp_path: Path) -> Path:
    return write_text_csv(tmp_path / "texts.csv")


@pytest.fixture
def ratings_csv(tmp_path: Path) -> Path:
    return write_ratings(tmp_path / "ml")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``embtab ARGV`` in this process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line (progress lines may come before it), last on stderr."""
    errors = [ln for ln in err.splitlines() if ln.startswith("embtab: error: ")]
    assert len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0], err
    return errors[0]
