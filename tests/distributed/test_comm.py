"""Per step only all_gather, all_to_all_single and all_reduce, and the bytes each rank sends
equal the analytic formula (the one bench_sharded.py prints)."""

from __future__ import annotations

from . import _cases
from ._spawn import run


def test_bytes_sent_per_step_equal_the_formula() -> None:
    run(3, _cases.comm_volume)
