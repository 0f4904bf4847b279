"""Imported by the fork server before it forks the ranks: the kernels a step runs are
loaded once there (numba's cache, the first call of each path), not once per rank."""

from __future__ import annotations

import torch

import embtab

for _dtype in (torch.float32, torch.float64):
    for _spec in (embtab.optim.SGD(lr=0.1), embtab.optim.RowWiseAdagrad(), embtab.optim.Adam()):
        _bag = embtab.EmbeddingBagCollection([embtab.TableConfig("t", 4, 2)], optimizer=_spec, dtype=_dtype)
        _bag({"t": (torch.tensor([0, 1, 1]), torch.tensor([0, 2]))}).concat().sum().backward()
        _bag.optimizer.register_row_grad_hook(lambda rg: None)
        _bag({"t": (torch.tensor([0, 1, 1]), torch.tensor([0, 2]))}).concat().sum().backward()
