"""What a lookup does inside a ``torch.compile`` graph that a graph cannot express.

Three side effects need opaque operators (``torch.library`` custom ops, marked as
having side effects so the compiler keeps them): checking the ids of an ``oov="error"``
table (raising our error that names the id), checking offsets' values, and handing row
gradients to a fused optimizer in backward. Each runs the same Python as the eager
path at run time. A fused optimizer is named by an integer handle (custom ops take
no Python objects); see ``embtab/optim/optimizer.py``.

Eager code never comes here: these cost a dispatcher round trip each.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _checks


@torch.library.custom_op("embtab::check_ids", mutates_args=())
def _check_ids(ids: Tensor, num_embeddings: int, where: str, shape: list[int]) -> None:
    from ..ids.policies import raise_out_of_range

    raise_out_of_range(ids, num_embeddings, where, shape)


@_check_ids.register_fake
def _(ids: Tensor, num_embeddings: int, where: str, shape: list[int]) -> None:
    return None


@torch.library.custom_op("embtab::check_offsets", mutates_args=())
def _check_offsets(offsets: Tensor, num_ids: int, where: str) -> None:
    o = offsets.cpu()
    steps = o[1:] - o[:-1]
    low = int(steps.min()) if steps.numel() else 0
    _checks.check_offsets_values(int(o[0]), int(o[-1]), min(low, 0), num_ids, where)


@_check_offsets.register_fake
def _(offsets: Tensor, num_ids: int, where: str) -> None:
    return None


@torch.library.custom_op("embtab::deposit_bags", mutates_args=())
def _deposit_bags(handle: int, table: int, ids: Tensor, ends: Tensor, grad: Tensor, mean: bool,
                  psw: Tensor | None) -> None:
    from ..optim.optimizer import FusedOptimizer

    opt = FusedOptimizer.by_handle(handle)
    opt._deposit_bags(opt.tables[table], ids, ends, grad, mean, psw)


@_deposit_bags.register_fake
def _(handle: int, table: int, ids: Tensor, ends: Tensor, grad: Tensor, mean: bool, psw: Tensor | None) -> None:
    return None


@torch.library.custom_op("embtab::deposit_rows", mutates_args=())
def _deposit_rows(handle: int, table: int, rows: Tensor, grads: Tensor) -> None:
    from ..optim.optimizer import FusedOptimizer

    opt = FusedOptimizer.by_handle(handle)
    opt._deposit_rows(opt.tables[table], rows, grads)


@_deposit_rows.register_fake
def _(handle: int, table: int, rows: Tensor, grads: Tensor) -> None:
    return None


for _op in (torch.ops.embtab.check_ids.default, torch.ops.embtab.check_offsets.default,
            torch.ops.embtab.deposit_bags.default, torch.ops.embtab.deposit_rows.default):
    torch.fx.node.has_side_effect(_op)


def check_ids(ids: Tensor, num_embeddings: int, where: str, shape: list[int]) -> None:
    torch.ops.embtab.check_ids(ids, num_embeddings, where, shape)


def check_offsets(offsets: Tensor, num_ids: int, where: str) -> None:
    torch.ops.embtab.check_offsets(offsets, num_ids, where)


def deposit_bags(fused: Any, ids: Tensor, ends: Tensor, grad: Tensor, mean: bool, psw: Tensor | None) -> None:
    opt = fused.optimizer
    torch.ops.embtab.deposit_bags(opt.handle, opt.tables.index(fused.table), ids, ends, grad, mean,
                                  None if psw is None else psw.detach())


def deposit_rows(fused: Any, rows: Tensor, grads: Tensor) -> None:
    opt = fused.optimizer
    torch.ops.embtab.deposit_rows(opt.handle, opt.tables.index(fused.table), rows, grads)
