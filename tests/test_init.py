"""Initialisation strategies by name or callable; padding row zeroed after any of them."""

from __future__ import annotations

import math

import pytest
import torch

import embtab
from embtab.init import INITS


@pytest.mark.parametrize("name", sorted(INITS))
@pytest.mark.parametrize("cls", [embtab.Embedding, embtab.EmbeddingBag])
def test_every_named_init_zeroes_padding(name: str, cls: type) -> None:
    table = cls(200, 16, padding_idx=5, init=name)
    assert torch.equal(table.weight[5], torch.zeros(16))
    assert torch.isfinite(table.weight).all()


def test_init_distributions() -> None:
    w = embtab.Embedding(4000, 50, init="normal").weight.detach()
    assert abs(float(w.std()) - 1.0) < 0.02
    w = embtab.Embedding(4000, 50, init="uniform").weight.detach()
    bound = 1 / math.sqrt(4000)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    w = embtab.Embedding(4000, 50, init="truncated_normal").weight.detach()
    assert float(w.abs().max()) <= 2.0
    assert torch.count_nonzero(embtab.Embedding(10, 3, init="zeros").weight) == 0
    # xavier_uniform on a (V, D) tensor: bound sqrt(6 / (V + D)), torch's fan convention.
    w = embtab.Embedding(4000, 50, init="xavier_uniform").weight.detach()
    assert float(w.abs().max()) <= math.sqrt(6 / 4050)


def test_named_init_matches_torch_init_with_same_seed() -> None:
    torch.manual_seed(1)
    ours = embtab.Embedding(30, 8, init="kaiming_normal").weight.detach()
    torch.manual_seed(1)
    ref = torch.nn.init.kaiming_normal_(torch.empty(30, 8))
    assert torch.equal(ours, ref)


def test_callable_init_and_hash_rows() -> None:
    emb = embtab.Embedding(5, 3, padding_idx=0, oov="hash", num_oov_buckets=2, init=lambda t: t.fill_(0.5))
    expected = torch.full((7, 3), 0.5)
    expected[0] = 0
    assert torch.equal(emb.weight.detach(), expected)


def test_reset_parameters_reapplies_init() -> None:
    emb = embtab.Embedding(5, 3, init="zeros")
    with torch.no_grad():
        emb.weight.fill_(1)
    emb.reset_parameters()
    assert torch.count_nonzero(emb.weight) == 0


def test_unknown_init_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown init 'gaussian'.*xavier_uniform"):
        embtab.Embedding(5, 3, init="gaussian")
