"""Quantized lookups: every kernel (numba on CPU, Triton under the interpreter, the torch
reference) against the float table of the dequantized rows, and against torch's own
quantized bag ops on the same bytes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab.quant import LAYOUTS, reference as R
from embtab.quant.modules import QuantizedEmbedding, QuantizedEmbeddingBag

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_TRITON = False
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the Triton kernels need triton")
POLICIES = ("error", "padding", "zero", "hash")
ATOL = {"sum": 1e-4, "mean": 1e-5, "max": 1e-6}  # sums of up to ~40 values of size ~1, in float32


def _tables(rows, dim, mode, dtype, oov, padding_idx, backend, seed, **extra):
    torch.manual_seed(seed)
    buckets = 3 if oov == "hash" else 0
    bag = embtab.EmbeddingBag(rows, dim, mode=mode, padding_idx=padding_idx, oov=oov, num_oov_buckets=buckets,
                              **extra)
    q = QuantizedEmbeddingBag.from_float(bag, dtype)
    q = QuantizedEmbeddingBag(rows, dim, dtype, mode, padding_idx, oov=oov, num_oov_buckets=buckets, backend=backend,
                              _weight=q.weight, **extra)
    oracle = embtab.EmbeddingBag(rows, dim, mode=mode, padding_idx=padding_idx, oov=oov, num_oov_buckets=buckets,
                                 _weight=q.dequantized_weight(), backend="torch", **extra)
    return q, oracle


@st.composite
def _bags(draw, rows):
    lengths = draw(st.lists(st.integers(0, 9), min_size=1, max_size=6))
    n = sum(lengths)
    ids = draw(st.lists(st.integers(-2, rows + 3), min_size=n, max_size=n))
    offsets = [0]
    for length in lengths[:-1]:
        offsets.append(offsets[-1] + length)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(offsets, dtype=torch.int64)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(list(LAYOUTS)), mode=st.sampled_from(["sum", "mean", "max"]),
       oov=st.sampled_from(POLICIES), dim=st.integers(1, 19), backend=st.sampled_from(["auto", "reference"]),
       with_padding=st.booleans(), with_psw=st.booleans())
def test_bags_equal_the_dequantized_table(data, dtype, mode, oov, dim, backend, with_padding, with_psw):
    rows = 12
    padding_idx = 2 if with_padding or oov == "padding" else None
    q, oracle = _tables(rows, dim, mode, dtype, oov, padding_idx, backend, data.draw(st.integers(0, 99)))
    ids, offsets = data.draw(_bags(rows))
    if oov == "error":  # in range here; out-of-range ids have their own test
        ids = ids.clamp(0, rows - 1)
    psw = torch.rand(ids.shape) if with_psw and mode == "sum" else None
    got = q(ids, offsets, psw)
    want = oracle(ids, offsets, psw)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=ATOL[mode], rtol=1e-5)
    assert q.oov_count == oracle.oov_count


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(list(LAYOUTS)), oov=st.sampled_from(POLICIES), dim=st.integers(1, 17),
       backend=st.sampled_from(["auto", "reference"]), shape=st.sampled_from([(), (5,), (3, 4)]), seed=st.integers(0, 99))
def test_rows_equal_the_dequantized_table(dtype, oov, dim, backend, shape, seed):
    """Unpooled lookups give each row read back exactly (the padding row too: it is a row)."""
    torch.manual_seed(seed)
    padding_idx = 1 if oov == "padding" else None
    buckets = 2 if oov == "hash" else 0
    emb = embtab.Embedding(10, dim, padding_idx=padding_idx, oov=oov, num_oov_buckets=buckets)
    q = QuantizedEmbedding.from_float(emb, dtype)
    q = QuantizedEmbedding(10, dim, dtype, padding_idx, oov=oov, num_oov_buckets=buckets, backend=backend,
                           _weight=q.weight)
    ids = torch.randint(-3, 14, shape) if oov != "error" else torch.randint(0, 10, shape)
    oracle = embtab.Embedding(10, dim, padding_idx=padding_idx, oov=oov, num_oov_buckets=buckets,
                              _weight=q.dequantized_weight())
    assert torch.equal(q(ids), oracle(ids))


@needs_triton
@pytest.mark.parametrize("dtype", list(LAYOUTS))
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_triton_kernel_equals_the_reference(dtype, mode):
    """The CUDA kernel, run by Triton's interpreter on CPU tensors."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 21, generator=g)
    data = R.quantize_rows(w, LAYOUTS[dtype])
    ids = torch.randint(0, 40, (70,), generator=g)
    ids[::7] = -1  # SKIP (what oov="zero" resolves to)
    ends = torch.tensor([0, 0, 9, 30, 31, 70])
    psw = torch.rand(70, generator=g) if mode == "sum" else None
    from embtab.quant import triton as T

    got = T.embedding_bag_inference(data, ids, ends, mode, psw, 5, LAYOUTS[dtype], 21)
    want = R.embedding_bag_inference(data, ids, ends, mode, psw, 5, LAYOUTS[dtype], 21)
    torch.testing.assert_close(got, want, atol=ATOL[mode], rtol=1e-5)
    assert torch.equal(T.embedding_forward(data, ids[:12].reshape(3, 4), LAYOUTS[dtype], 21),
                       R.embedding_forward(data, ids[:12].reshape(3, 4), LAYOUTS[dtype], 21))


@needs_triton
def test_triton_backend_through_the_module():
    torch.manual_seed(0)
    bag = embtab.EmbeddingBag(30, 8, mode="mean", padding_idx=0, oov="hash", num_oov_buckets=4)
    q = embtab.quantize(bag, "int4")
    qt = QuantizedEmbeddingBag(30, 8, "int4", "mean", 0, oov="hash", num_oov_buckets=4, backend="triton",
                               _weight=q.weight)
    ids, offsets = torch.tensor([1, 0, 77, 5, 5, 29]), torch.tensor([0, 2, 2])
    torch.testing.assert_close(qt(ids, offsets), q(ids, offsets), atol=1e-6, rtol=1e-6)
    assert qt.oov_count == q.oov_count == 1


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_same_bytes_same_bags_as_torch_quantized_ops(bits, weighted):
    """torch's own quantized bag ops read our bytes as we do (the layouts interchange).
    (They pool by sum only: their mode argument is not applied.)"""
    mode = "sum"
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(500, 64, generator=g)
    layout = LAYOUTS[f"int{bits}"]
    data = R.quantize_rows(w, layout)
    ids = torch.randint(0, 500, (300,), generator=g)
    offsets = torch.tensor([0, 10, 10, 150, 299])
    op = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if bits == 8
          else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
    psw = torch.rand(300, generator=g) if weighted else None
    theirs = op(data, ids, offsets, False, 0, False, psw, None, False)
    q = QuantizedEmbeddingBag(500, 64, f"int{bits}", mode, _weight=data)
    ours = q(ids, offsets, psw)
    torch.testing.assert_close(ours, theirs, atol=5e-4, rtol=1e-5)  # bags of up to 149 ids, in float32
    # Both round the float64 sums of the same values; ours no further from them than torch's.
    exact = torch.nn.functional.embedding_bag(ids, R.dequantize_rows(data, layout, 64).double(), offsets, mode=mode,
                                              per_sample_weights=None if psw is None else psw.double())
    assert (ours.double() - exact).abs().max() <= 2 * (theirs.double() - exact).abs().max() + 1e-6


def test_out_of_range_ids_are_named():
    q = embtab.quantize(embtab.EmbeddingBag(10, 4, mode="sum"), "int8")
    with pytest.raises(IndexError, match=r"id 12 at position 1 .* table of 10 rows"):
        q(torch.tensor([1, 12, 3]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="offsets must start at 0"):
        q(torch.tensor([1, 2, 3]), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"per_sample_weights must have the table value's dtype torch.float32"):
        q(torch.tensor([1, 2]), torch.tensor([0]), torch.rand(2, dtype=torch.float64))


def test_a_backward_is_refused_naming_dequantize():
    q = embtab.quantize(embtab.EmbeddingBag(10, 4, mode="sum"), "int4")
    psw = torch.rand(3, requires_grad=True)
    out = q(torch.tensor([1, 2, 3]), torch.tensor([0, 1]), psw)  # the forward runs
    with pytest.raises(RuntimeError, match=r"inference only.*dequantize\(\)"):
        out.sum().backward()
    assert q.weight.dtype == torch.uint8 and not list(q.parameters())


def test_collection_quantized_equals_its_dequantized_tables():
    tables = [embtab.TableConfig("item", 50, 8, feature_names=["item", "liked"]),
              embtab.TableConfig("user", 20, 4, pooling="mean", oov="hash", num_oov_buckets=3),
              embtab.TableConfig("tag", 9, 6, pooling="max", padding_idx=0)]
    ebc = embtab.EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=0.1))
    q = embtab.quantize(ebc, "int8", per_table={"user": "int2", "tag": "bfloat16"})
    batch = {"item": (torch.tensor([1, 2, 49]), torch.tensor([0, 2])), "liked": (torch.tensor([7]), torch.tensor([0, 1])),
             "user": (torch.tensor([3, 99]), torch.tensor([0, 1])), "tag": (torch.tensor([0, 4, 5]), torch.tensor([0, 1]))}
    out = q(batch)
    assert isinstance(out, embtab.nn.PooledEmbeddings) and out.concat().shape == (2, 8 + 8 + 4 + 6)
    float_again = q.dequantize()
    torch.testing.assert_close(out.concat(), float_again(batch).concat(), atol=1e-5, rtol=1e-5)
    assert {n: t.dtype for n, t in q.quantized_tables().items()} == {
        "embedding_bags.item": "int8", "embedding_bags.user": "int2", "embedding_bags.tag": "bfloat16"}
