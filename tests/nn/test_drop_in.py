"""Behaviour that PyTorch's own embedding tests pin, each against torch itself.

Sparse gradients that own their indices, integer tables, zero-size tables, the checks
on ``norm_type`` and ``hash_bucket``. (include_last_offset: tests/nn/test_embedding_bag.py;
double backward: tests/nn/test_embedding.py; error classes: tests/test_torch_errors.py.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import embtab
from embtab import functional as EF


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_a_sparse_gradient_owns_its_indices(backend: str) -> None:
    """An id buffer reused between backward passes (gradient accumulation) must not change
    the gradient already accumulated: torch's indices are its own."""
    results = []
    for make in (lambda: torch.nn.Embedding(10, 4, sparse=True), lambda: embtab.Embedding(10, 4, sparse=True, backend=backend)):
        torch.manual_seed(0)
        e = make()
        buf = torch.empty(2, dtype=torch.long)
        for micro in ([1, 2], [3, 4]):
            buf.copy_(torch.tensor(micro))
            e(buf).sum().backward()
        results.append(e.weight.grad.coalesce().to_dense()[:, 0])
    assert results[1].tolist() == results[0].tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 0, 0]


def test_a_sparse_gradient_accumulates_like_torchs() -> None:
    ids = torch.tensor([7, 1, 3])
    grads = []
    for e in (torch.nn.Embedding(10, 3, sparse=True), embtab.Embedding(10, 3, sparse=True)):
        e(ids).sum().backward()
        e(ids).sum().backward()
        grads.append(e.weight.grad)
    assert grads[1]._indices().shape == grads[0]._indices().shape  # uncoalesced, as torch's
    torch.testing.assert_close(grads[1].to_dense(), grads[0].to_dense())


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_integer_tables_are_looked_up_like_torchs(dtype: torch.dtype) -> None:
    table = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=dtype)
    ids = torch.tensor([[2, 0], [1, 1]])
    expected = torch.nn.Embedding.from_pretrained(table)(ids)
    got = embtab.Embedding.from_pretrained(table)(ids)
    assert got.dtype == dtype and torch.equal(got, expected)
    assert not embtab.Embedding.from_pretrained(table).weight.requires_grad
    assert torch.equal(EF.embedding(ids, table), F.embedding(ids, table))


def test_an_integer_table_cannot_train() -> None:
    table = torch.tensor([[1, 2], [3, 4]])
    with pytest.raises(RuntimeError, match="floating point"):
        torch.nn.Embedding.from_pretrained(table, freeze=False)
    with pytest.raises(RuntimeError, match="floating point"):
        embtab.Embedding.from_pretrained(table, freeze=False)
    with pytest.raises(RuntimeError):
        embtab.EmbeddingBag.from_pretrained(table)  # torch: the same RuntimeError, even frozen


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("rows, dim, ids", [(0, 0, []), (10, 0, [[0, 2, 4, 5], [4, 3, 0, 9]]), (0, 4, []), (10, 4, [])])
def test_zero_size_tables_and_inputs_like_torch(rows: int, dim: int, ids: list, sparse: bool) -> None:
    ids_t = torch.tensor(ids, dtype=torch.long)
    outs, grads = [], []
    for cls in (torch.nn.Embedding, embtab.Embedding):
        e = cls(rows, dim, sparse=sparse)
        out = e(ids_t)
        out.sum().backward()
        outs.append(out)
        grads.append(e.weight.grad.to_dense() if e.weight.grad.is_sparse else e.weight.grad)
    assert outs[1].shape == outs[0].shape and grads[1].shape == grads[0].shape
    assert grads[1].sum() == 0


def test_zero_size_functional_and_bag_like_torch() -> None:
    empty, w = torch.tensor([], dtype=torch.long), torch.empty(0, 4)
    assert EF.embedding(empty, w).shape == F.embedding(empty, w).shape == (0, 4)
    torch.testing.assert_close(EF.embedding_bag(empty, w, torch.tensor([0, 0]), mode="sum"),
                               F.embedding_bag(empty, w, torch.tensor([0, 0]), mode="sum"))
    torch.testing.assert_close(embtab.EmbeddingBag(0, 4)(empty, torch.tensor([0])),
                               torch.nn.EmbeddingBag(0, 4)(empty, torch.tensor([0])))
    assert embtab.Embedding.from_pretrained(torch.empty(0, 4)).weight.shape == (0, 4)


@pytest.mark.parametrize("norm_type", [0.0, -1.0, float("nan"), float("-inf")])
def test_norm_types_that_would_silently_skip_the_renorm_are_refused(norm_type: float) -> None:
    with pytest.raises(ValueError, match=r"norm_type must be > 0 .*inf for the max-norm"):
        embtab.Embedding(10, 3, max_norm=1.0, norm_type=norm_type)
    with pytest.raises(ValueError, match=r"norm_type must be > 0"):
        EF.embedding_bag(torch.tensor([1]), torch.randn(10, 3), torch.tensor([0]), max_norm=1.0, norm_type=norm_type)


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.5, float("inf")])
def test_max_norm_renormalises_like_torch(norm_type: float) -> None:
    w = torch.randn(8, 5) * 3
    ids = torch.tensor([1, 2, 2, 7])
    ours, theirs = w.clone(), w.clone()
    torch.testing.assert_close(EF.embedding(ids, ours, max_norm=1.0, norm_type=norm_type),
                               F.embedding(ids, theirs, max_norm=1.0, norm_type=norm_type))
    torch.testing.assert_close(ours, theirs)


def test_hash_bucket_refuses_zero_buckets_and_float_ids() -> None:
    with pytest.raises(ValueError, match=r"hash_bucket\(\): num_buckets must be positive, got num_buckets=0"):
        embtab.hash_bucket(torch.tensor([1, 2]), 0)
    with pytest.raises(TypeError, match=r"hash_bucket\(\): ids must hold int64 or int32 ids, got dtype torch.float32"):
        embtab.hash_bucket(torch.tensor([1.5, 2.0]), 7)
