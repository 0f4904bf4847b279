"""embtab.TableConfig: checked on construction, errors that name the table, no aliasing."""

from __future__ import annotations

import dataclasses

import pytest

import embtab


def test_defaults_and_normalisation() -> None:
    names = ["a", "b"]
    t = embtab.TableConfig("user", 100, 8, feature_names=names, padding_idx=-1)
    assert t.feature_names == ("a", "b") and t.pooling == "sum" and t.oov == "error"
    names.append("c")  # the caller's list is copied, not kept
    assert t.feature_names == ("a", "b")
    assert t.padding_idx == 99  # negative counts from the end, as in torch
    assert embtab.TableConfig("item", 10, 4).feature_names == ("item",)
    assert embtab.TableConfig("h", 10, 4, oov="hash", num_oov_buckets=5).num_rows == 15
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.embedding_dim = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(embedding_dim=0), ValueError, r"TableConfig 'user': embedding_dim must be positive, got embedding_dim=0"),
        (dict(num_embeddings=2.5), TypeError, r"TableConfig 'user': num_embeddings must be an int, got 2.5"),
        (dict(pooling="avg"), ValueError, r"TableConfig 'user': pooling must be one of \('sum', 'mean', 'max'\)"),
        (dict(feature_names="user_id"), TypeError, r"feature_names must be a list of strings.*\['user_id'\]"),
        (dict(feature_names=[]), ValueError, r"TableConfig 'user': feature_names must name at least one feature"),
        (dict(feature_names=["x", "x"]), ValueError, r"feature_names lists \['x'\] more than once"),
        (dict(feature_names=["x", 3]), TypeError, r"feature names must be non-empty strings, got 3"),
        (dict(oov="padding"), ValueError, r"TableConfig 'user': oov='padding' maps out-of-range ids to padding_idx"),
        (dict(oov="hash"), ValueError, r"TableConfig 'user': oov='hash' needs num_oov_buckets >= 1"),
        (dict(padding_idx=10), ValueError, r"TableConfig 'user': padding_idx must be within num_embeddings"),
        (dict(init="glorot"), ValueError, r"TableConfig 'user': unknown init 'glorot'"),
    ],
)
def test_errors_name_the_table(kwargs: dict, error: type, match: str) -> None:
    base = dict(name="user", num_embeddings=10, embedding_dim=4)
    with pytest.raises(error, match=match):
        embtab.TableConfig(**{**base, **kwargs})


@pytest.mark.parametrize("name", ["", 3, None])
def test_bad_names(name: object) -> None:
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        embtab.TableConfig(name, 10, 4)  # type: ignore[arg-type]
