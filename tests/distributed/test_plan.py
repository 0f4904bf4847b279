"""Plans, kinds and the automatic planner (one process: no communication involved)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

import embtab
import embtab.distributed as ed
from embtab import TableConfig


@given(rows=st.integers(1, 200), world=st.integers(1, 9))
def test_row_wise_blocks_are_tensor_split_and_route_every_row_to_its_block(rows: int, world: int) -> None:
    pieces = ed.row_wise().pieces(rows, 3, world)
    expected = [r for r in torch.tensor_split(torch.arange(rows), world) if r.numel()]
    assert [(p.row0, p.rows) for p in pieces] == [(int(r[0]), r.numel()) for r in expected]
    assert [p.ranks for p in pieces] == [(k,) for k in range(len(pieces))]  # rank k holds block k
    all_rows = torch.arange(rows)
    owner = ed.row_wise().route(all_rows, pieces)
    for k, r in enumerate(expected):
        assert bool((owner[r] == k).all())


@given(dim=st.integers(1, 40), ranks=st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True))
def test_column_wise_splits_the_dim_as_tensor_split(dim: int, ranks: list[int]) -> None:
    if len(ranks) > dim:
        with pytest.raises(ValueError, match="column shards for a table of dim"):
            ed.column_wise(ranks=ranks).pieces(5, dim, 8)
        return
    pieces = ed.column_wise(ranks=ranks).pieces(5, dim, 8)
    expected = torch.tensor_split(torch.arange(dim), len(ranks))
    assert [(p.col0, p.cols, p.ranks) for p in pieces] == [(int(c[0]), c.numel(), (r,))
                                                           for c, r in zip(expected, ranks)]


def test_row_block_is_an_ids_stage_mapping_global_rows_to_the_block() -> None:
    stage = ed.RowBlock(7)
    assert isinstance(stage, embtab.ids.IdStage)
    rows, has_skip = stage.resolve(torch.tensor([7, 9, 12]), 6, where="test")
    assert rows.tolist() == [0, 2, 5] and not has_skip


TABLES = [TableConfig("item", 1000, 16), TableConfig("user", 500, 8), TableConfig("tag", 50, 4)]


def test_plan_errors_name_the_table_and_the_rank() -> None:
    with pytest.raises(ValueError, match="table 'tag' has no sharding kind"):
        ed.ShardingPlan({"item": ed.row_wise(), "user": ed.row_wise()}).check(TABLES, 2)
    with pytest.raises(ValueError, match="table 'other' is not a table of the collection"):
        ed.ShardingPlan({t.name: ed.row_wise() for t in TABLES} | {"other": ed.row_wise()}).check(TABLES, 2)
    with pytest.raises(ValueError, match=r"table 'user' \(table_wise\(rank=3\)\): rank 3 does not exist: the job has "
                                         r"ranks 0..1"):
        ed.ShardingPlan({"item": ed.row_wise(), "user": ed.table_wise(rank=3), "tag": ed.row_wise()}).check(TABLES, 2)
    with pytest.raises(ValueError, match=r"table 'tag' \(column_wise\(ranks=\[0, 5\]\)\): rank 5 does not exist"):
        ed.ShardingPlan({"item": ed.row_wise(), "user": ed.row_wise(),
                         "tag": ed.column_wise(ranks=[0, 5])}).check(TABLES, 2)
    with pytest.raises(ValueError, match="name a rank twice"):
        ed.column_wise(ranks=[1, 1])
    with pytest.raises(TypeError, match="expected a sharding kind"):
        ed.ShardingPlan({"item": "row_wise"})
    # 1000 x 16 float32 = 64000 bytes: table-wise on rank 0 does not fit 50000 bytes
    with pytest.raises(ValueError, match=r"table 'item' does not fit rank 0: its shard there takes 64,000 bytes"):
        ed.ShardingPlan({"item": ed.table_wise(rank=0), "user": ed.table_wise(rank=1), "tag": ed.row_wise()}).check(
            TABLES, 2, memory_per_rank=50_000)


def test_automatic_plan_replicates_small_splits_large_balances_the_rest() -> None:
    tables = [TableConfig("huge", 100_000, 64), TableConfig("a", 20_000, 32), TableConfig("b", 20_000, 32),
              TableConfig("c", 10_000, 32), TableConfig("country", 200, 8)]
    plan = ed.plan(tables, 4, memory_per_rank=2**24, replicate_below=2**16)
    assert plan["country"] == ed.data_parallel()
    assert plan["huge"] == ed.row_wise()  # 25.6 MB do not fit 16 MiB
    assert "does not fit one rank" in plan.reasons["huge"]
    placed = [plan[n].rank for n in ("a", "b", "c")]
    assert sorted(placed) == sorted(set(placed)), plan.explain()  # a, b, c each on its own rank
    assert "least loaded" in plan.reasons["a"]
    plan.check(tables, 4, memory_per_rank=2**24)
    assert plan.explain().splitlines()[0].startswith("huge: row_wise(): does not fit one rank")


def test_automatic_plan_counts_optimizer_state_and_refuses_what_does_not_fit() -> None:
    tables = [TableConfig("big", 100_000, 64)]
    # 25.6 MB of weights, split over 2 ranks: 12.8 MB each; with Adam's two moments (float32) and
    # its step count per row (int64): 50,000 rows x (64 x 3 x 4 + 8) bytes = 38.8 MB each
    ed.plan(tables, 2, memory_per_rank=13_000_000)
    with pytest.raises(ValueError, match=r"table 'big' does not fit rank 0: its shard there takes 38,800,000 bytes"):
        ed.plan(tables, 2, memory_per_rank=13_000_000, optimizer=embtab.optim.Adam())
