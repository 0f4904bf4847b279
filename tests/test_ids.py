"""Out-of-vocabulary policies: error, padding, zero, hash; counting; the stable hash."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab import functional as EF
from embtab.ids import hash_bucket, hash_bucket_py

BACKENDS = ["torch", "reference"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20), st.integers(1, 10**6))
def test_hash_matches_its_pure_python_definition(ids: list[int], buckets: int) -> None:
    got = hash_bucket(torch.tensor(ids), buckets).tolist()
    assert got == [hash_bucket_py(i, buckets) for i in ids]
    assert all(0 <= b < buckets for b in got)


def test_hash_is_stable_across_runs_and_dtypes() -> None:
    # Pinned values: a change here breaks every checkpoint trained with oov="hash".
    ids = torch.tensor([-1, 0, 1, 1000, 2**40])
    assert hash_bucket(ids, 1000).tolist() == [289, 0, 796, 913, 742]
    assert hash_bucket(ids, 1000).tolist() == [hash_bucket_py(i, 1000) for i in ids.tolist()]
    assert hash_bucket(ids[:4].int(), 97).tolist() == hash_bucket(ids[:4], 97).tolist() == [10, 0, 48, 23]


def test_hash_spreads_ids_over_buckets() -> None:
    counts = torch.bincount(hash_bucket(torch.arange(10_000, 110_000), 100), minlength=100)
    assert counts.min() > 800 and counts.max() < 1200  # 1000 expected per bucket


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_names_id_position_count_and_range(backend: str) -> None:
    emb = embtab.Embedding(10, 3, backend=backend)
    with pytest.raises(IndexError) as info:
        emb(torch.tensor([[1, 2, 3], [4, 12, -1]]))
    msg = str(info.value)
    assert "id 12 at position (1, 1)" in msg
    assert "2 of 6 ids are out of range" in msg
    assert "0..9" in msg and "oov=" in msg


def test_error_position_in_a_bag_uses_the_input_shape() -> None:
    bag = embtab.EmbeddingBag(10, 3)
    with pytest.raises(IndexError, match=r"id 10 at position 3 .* 1 of 4"):
        bag(torch.tensor([1, 2, 3, 10]), torch.tensor([0, 2]))
    with pytest.raises(IndexError, match=r"id -2 at position \(1, 0\)"):
        bag(torch.tensor([[1, 2], [-2, 3]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_policy_reads_and_trains_like_the_padding_id(backend: str) -> None:
    emb = embtab.Embedding(10, 3, padding_idx=0, oov="padding", backend=backend)
    with torch.no_grad():
        emb.weight[0] = torch.tensor([1.0, 2.0, 3.0])  # a visible padding row
    ids = torch.tensor([4, 99, -7, 0])
    out = emb(ids)
    ref = torch.nn.functional.embedding(torch.tensor([4, 0, 0, 0]), emb.weight, padding_idx=0)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert torch.equal(emb.weight.grad[0], torch.zeros(3))
    assert emb.oov_count == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sparse", [False, True])
def test_zero_policy_gives_zero_rows_and_no_gradient(backend: str, sparse: bool) -> None:
    emb = embtab.Embedding(10, 3, oov="zero", sparse=sparse, max_norm=0.5, backend=backend)
    before = emb.weight.detach().clone()
    ids = torch.tensor([[3, 10], [-1, 3]])
    out = emb(ids)
    assert torch.equal(out[0, 1], torch.zeros(3)) and torch.equal(out[1, 0], torch.zeros(3))
    # Only row 3 was referenced: only it was renormalised.
    changed = (emb.weight.detach() != before).any(1)
    assert changed.nonzero().flatten().tolist() == ([3] if before[3].norm() > 0.5 else [])
    out.sum().backward()
    grad = emb.weight.grad.to_dense() if sparse else emb.weight.grad
    expected = torch.zeros(10, 3)
    expected[3] = 2.0
    assert torch.equal(grad, expected)
    assert emb.oov_count == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_zero_policy_drops_the_id_from_its_bag(backend: str, mode: str) -> None:
    bag = embtab.EmbeddingBag(10, 3, mode=mode, oov="zero", backend=backend)
    out = bag(torch.tensor([1, 50, 2, -3, -4, 7]), torch.tensor([0, 3, 5]))
    ref = torch.nn.functional.embedding_bag(
        torch.tensor([1, 2, 7]), bag.weight, torch.tensor([0, 2, 2]), mode=mode
    )
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert bag.weight.grad[[0, 3, 4, 5, 6, 8, 9]].abs().sum() == 0
    assert bag.oov_count == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_policy_per_sample_weights_gradient(backend: str) -> None:
    w = torch.randn(5, 2, dtype=torch.float64)
    psw = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out = EF.embedding_bag(torch.tensor([1, 9, 2, 3]), w, torch.tensor([0, 2]), mode="sum",
                           per_sample_weights=psw, oov="zero", backend=backend)
    out.sum().backward()
    expected = torch.stack([w[1].sum(), torch.tensor(0.0, dtype=torch.float64), w[2].sum(), w[3].sum()])
    torch.testing.assert_close(psw.grad, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hash_policy_uses_bucket_rows(backend: str) -> None:
    emb = embtab.Embedding(10, 4, oov="hash", num_oov_buckets=5, backend=backend)
    assert emb.weight.shape == (15, 4)
    ids = torch.tensor([3, 12345, -8])
    out = emb(ids)
    buckets = 10 + hash_bucket(torch.tensor([12345, -8]), 5)
    assert torch.equal(out, emb.weight[torch.cat([torch.tensor([3]), buckets])])
    out.sum().backward()
    assert set(emb.weight.grad.abs().sum(1).nonzero().flatten().tolist()) == {3, *buckets.tolist()}
    assert emb.oov_count == 2
    # The same id always lands in the same bucket: the one the documented hash names.
    assert torch.equal(emb(torch.tensor([12345])), emb.weight[10 + hash_bucket_py(12345, 5)].unsqueeze(0))


def test_hash_policy_in_bags_matches_explicit_bucket_ids() -> None:
    bag = embtab.EmbeddingBag(10, 4, mode="mean", oov="hash", num_oov_buckets=3, padding_idx=0)
    ids = torch.tensor([1, 500, 0, 20])
    mapped = torch.where(ids >= 10, 10 + hash_bucket(ids, 3), ids)
    ref = torch.nn.functional.embedding_bag(mapped, bag.weight, torch.tensor([0, 2]), mode="mean", padding_idx=0)
    torch.testing.assert_close(bag(ids, torch.tensor([0, 2])), ref)


def test_counter_accumulates_and_resets() -> None:
    emb = embtab.Embedding(5, 2, oov="zero")
    emb(torch.tensor([1, 7]))
    emb(torch.tensor([[9, 9], [2, -1]]))
    assert emb.oov_count == 4
    emb.reset_oov_count()
    assert emb.oov_count == 0
    assert "_oov_count" not in emb.state_dict()


def test_from_pretrained_with_hash_buckets() -> None:
    pre = torch.randn(6, 3)
    emb = embtab.Embedding.from_pretrained(pre, oov="hash", num_oov_buckets=4, freeze=False)
    assert emb.weight.shape == (10, 3) and emb.num_embeddings == 6
    assert torch.equal(emb.weight[:6], pre)


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_policies_keep_int32_ids_working(ids_dtype: torch.dtype) -> None:
    for oov, extra in (("padding", {"padding_idx": 1}), ("zero", {}), ("hash", {"num_oov_buckets": 2})):
        emb = embtab.Embedding(4, 2, oov=oov, **extra)
        assert emb(torch.tensor([0, 5, -1], dtype=ids_dtype)).shape == (3, 2)
