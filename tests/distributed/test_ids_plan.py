"""Which kinds shard tables with ids= (one process: no communication involved): the owner hash,
the refusals, and what the automatic planner picks for them."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, strategies as st

import embtab
import embtab.distributed as ed
from embtab import TableConfig
from embtab.ids import Dynamic, Hashed
from embtab.ids._hash import owner_of, owner_of_py

INT64 = st.integers(-(2**63), 2**63 - 1)


@given(ids=st.lists(INT64, min_size=1, max_size=20), world=st.integers(1, 9))
def test_owner_of_is_its_pure_python_twin(ids: list[int], world: int) -> None:
    got = owner_of(torch.tensor(ids), world).tolist()
    assert got == [owner_of_py(i, world) for i in ids]
    assert all(0 <= r < world for r in got)


def test_owner_of_is_stable_and_spreads_ids() -> None:
    # frozen values: a change of the hash would move every checkpointed id to another rank
    assert owner_of(torch.tensor([0, 1, 12345, -1, 2**62, -(2**63)]), 7).tolist() == [0, 1, 2, 6, 1, 5]
    counts = torch.bincount(owner_of(torch.arange(30_000), 3), minlength=3)
    assert int(counts.min()) > 9_500  # about a third each


@pytest.mark.parametrize("kind, words", [
    (ed.column_wise(ranks=[0, 1]), "every column rank"),
    (ed.data_parallel(), "every copy"),
])
def test_dynamic_tables_refuse_kinds_whose_maps_would_diverge(kind: ed.Sharding, words: str) -> None:
    tables = [TableConfig("item", 100, 4, ids=Dynamic())]
    expected = rf"table 'item' \({re.escape(repr(kind))}\).*{words}.*diverge.*ed.row_wise\(\)"
    with pytest.raises(ValueError, match=expected) as e:
        ed.ShardingPlan({"item": kind}).check(tables, 2)
    assert isinstance(e.value, NotImplementedError)  # (UnsupportedArgumentError)


def test_a_dynamic_table_needs_a_row_per_rank_row_wise() -> None:
    tables = [TableConfig("item", 2, 4, ids=Dynamic())]
    with pytest.raises(ValueError, match=r"num_embeddings=2 gives some of the 3 ranks no row; use ed.table_wise"):
        ed.ShardingPlan({"item": ed.row_wise()}).check(tables, 3)
    ed.ShardingPlan({"item": ed.table_wise(rank=2)}).check(tables, 3)


def test_hashed_tables_shard_under_every_kind() -> None:
    tables = [TableConfig("h", 50, 6, ids=Hashed(2))]
    for kind in (ed.row_wise(), ed.table_wise(rank=1), ed.column_wise(ranks=[1, 0]), ed.data_parallel()):
        ed.ShardingPlan({"h": kind}).check(tables, 2)


def test_automatic_plan_puts_dynamic_tables_row_wise_and_the_rest_by_size() -> None:
    tables = [TableConfig("user", 1000, 8, ids=Dynamic()), TableConfig("tiny", 2, 8, ids=Dynamic()),
              TableConfig("word", 50, 4, ids=Hashed(2)), TableConfig("big", 20_000, 32, ids=Hashed(2)),
              TableConfig("tag", 10, 4)]
    plan = ed.plan(tables, 3)
    assert plan["user"] == ed.row_wise() and "owner_of(x, 3)" in plan.reasons["user"]
    assert plan["tiny"].kind == "table_wise"  # a capacity of 2 cannot give 3 ranks a row each
    assert plan["word"] == ed.data_parallel()  # small: copied (its importance weights too)
    assert plan["big"] == ed.row_wise()
    plan.check(tables, 3)
    assert ed.plan([TableConfig("user", 1000, 8, ids=Dynamic())], 1)["user"].kind == "table_wise"
