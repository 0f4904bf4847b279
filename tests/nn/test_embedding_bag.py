"""embtab.EmbeddingBag and embtab.functional.embedding_bag against torch.nn, across the argument space."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab import functional as EF
from tests.conftest import assert_close, assert_close_to_torch

BACKENDS = ["torch", "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def bag_cases(draw: st.DrawFn) -> dict:
    num = draw(st.integers(1, 30))
    dim = draw(st.integers(1, 9))
    mode = draw(st.sampled_from(["sum", "mean", "max"]))
    sparse = draw(st.booleans()) if mode != "max" else False
    sgbf = draw(st.booleans()) if mode != "max" and not sparse else False
    pool = draw(st.lists(st.integers(0, num - 1), min_size=1, max_size=5))
    id_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    two_d = draw(st.booleans())
    if two_d:
        # torch fails on (B, 0) inputs ("step must be nonzero"); tested on its own below.
        rows, length = draw(st.integers(0, 5)), draw(st.integers(1, 6))
        ids = torch.tensor(draw(st.lists(st.sampled_from(pool), min_size=rows * length, max_size=rows * length)),
                           dtype=id_dtype).reshape(rows, length)
        offsets, include_last = None, False
    else:
        lengths = draw(st.lists(st.integers(0, 5), min_size=1, max_size=6))  # empty bags included
        n = sum(lengths)
        ids = torch.tensor(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=id_dtype)
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        include_last = draw(st.booleans())
        offsets = torch.tensor(starts + [n] if include_last else starts,
                               dtype=draw(st.sampled_from([torch.int64, torch.int32])))
    return {
        "num": num, "dim": dim, "mode": mode, "sparse": sparse, "scale_grad_by_freq": sgbf,
        "ids": ids, "offsets": offsets, "include_last_offset": include_last,
        "padding_idx": draw(st.none() | st.integers(-num, num - 1)),
        "max_norm": draw(st.none() | st.floats(0.1, 3.0)),
        "psw": mode == "sum" and draw(st.booleans()),
        "dtype": draw(st.sampled_from(DTYPES)),
        "backend": draw(st.sampled_from(BACKENDS)),
    }


@settings(max_examples=200, deadline=None)
@given(bag_cases())
def test_module_matches_torch(case: dict) -> None:
    dtype = case["dtype"]
    kwargs = dict(
        max_norm=case["max_norm"], scale_grad_by_freq=case["scale_grad_by_freq"], mode=case["mode"],
        sparse=case["sparse"], include_last_offset=case["include_last_offset"],
        padding_idx=case["padding_idx"], dtype=dtype,
    )
    ours = embtab.EmbeddingBag(case["num"], case["dim"], backend=case["backend"], **kwargs)
    kwargs["scale_grad_by_freq"] = False  # torch's is wrong on CPU: see _freq_scaled
    ref = torch.nn.EmbeddingBag(case["num"], case["dim"], **kwargs)
    ours.load_state_dict(ref.state_dict())
    psw_ref = psw_ours = None
    if case["psw"]:
        psw_ref = torch.randn(case["ids"].shape, dtype=torch.float64).to(dtype).requires_grad_()
        psw_ours = psw_ref.detach().clone().requires_grad_()

    # float64 twin: the exact answer, for judging 16-bit results (see assert_close_to_torch).
    twin = psw_twin = None
    if dtype in (torch.float16, torch.bfloat16):
        twin = torch.nn.EmbeddingBag(case["num"], case["dim"], **{**kwargs, "dtype": torch.float64})
        twin.weight.data.copy_(ref.weight.detach())
        if case["psw"]:
            psw_twin = psw_ref.detach().double().requires_grad_()

    expected = ref(case["ids"], case["offsets"], psw_ref)
    actual = ours(case["ids"], case["offsets"], psw_ours)
    exact = None if twin is None else twin(case["ids"], case["offsets"], psw_twin)
    assert actual.shape == expected.shape and actual.dtype == dtype
    assert_close_to_torch(actual, expected, exact)
    # max_norm renorm, in place
    assert_close_to_torch(ours.weight.detach(), ref.weight.detach(), None if twin is None else twin.weight.detach())

    grad = torch.randn(expected.shape, dtype=torch.float64).to(dtype)
    expected.backward(grad)
    actual.backward(grad)
    if exact is not None:
        exact.backward(grad.double())
    assert ours.weight.grad.is_sparse == case["sparse"]
    expected_grad, exact_grad = ref.weight.grad, None if twin is None else twin.weight.grad
    if case["scale_grad_by_freq"]:
        expected_grad = _freq_scaled(expected_grad, case["ids"], case["num"])
        exact_grad = None if exact_grad is None else _freq_scaled(exact_grad, case["ids"], case["num"])
    assert_close_to_torch(ours.weight.grad, expected_grad, exact_grad)
    if case["psw"]:
        assert_close_to_torch(psw_ours.grad, psw_ref.grad, None if psw_twin is None else psw_twin.grad)


@settings(max_examples=60, deadline=None)
@given(bag_cases())
def test_functional_matches_torch(case: dict) -> None:
    dtype = case["dtype"]
    w_ref = torch.randn(case["num"], case["dim"], dtype=torch.float64).to(dtype).requires_grad_()
    w_ours = w_ref.detach().clone().requires_grad_()
    args = lambda w, sgbf: (  # noqa: E731
        case["ids"], w, case["offsets"], case["max_norm"], 2.0, sgbf, case["mode"],
        case["sparse"], None, case["include_last_offset"], case["padding_idx"],
    )
    w_twin = w_ref.detach().double().requires_grad_()  # the exact answer for 16-bit dtypes
    expected = torch.nn.functional.embedding_bag(*args(w_ref, False))
    actual = EF.embedding_bag(*args(w_ours, case["scale_grad_by_freq"]), backend=case["backend"])
    exact = torch.nn.functional.embedding_bag(*args(w_twin, False))
    assert_close_to_torch(actual, expected, exact)
    grad = torch.randn(expected.shape, dtype=torch.float64).to(dtype)
    expected.backward(grad)
    actual.backward(grad)
    exact.backward(grad.double())
    expected_grad, exact_grad = w_ref.grad, w_twin.grad
    if case["scale_grad_by_freq"]:
        expected_grad = _freq_scaled(expected_grad, case["ids"], case["num"])
        exact_grad = _freq_scaled(exact_grad, case["ids"], case["num"])
    assert_close_to_torch(w_ours.grad, expected_grad, exact_grad)


def _freq_scaled(grad: torch.Tensor, ids: torch.Tensor, num: int) -> torch.Tensor:
    """torch.nn.Embedding's scale_grad_by_freq applied to an unscaled bag gradient.

    torch.nn.EmbeddingBag's own CPU kernel divides some rows by another id's count
    (ids [0, 0, 1] give row 1 half its gradient), so the oracle for this option is the
    documented rule, which nn.Embedding follows: each id's gradient divided by its count
    in the batch. All occurrences of a row share that count, so the summed row divides.
    """
    counts = torch.bincount(ids.reshape(-1).long(), minlength=num).clamp_min(1)
    return grad / counts.to(grad.dtype).unsqueeze(1)


def test_torch_bag_scale_grad_by_freq_bug_is_fixed_here() -> None:
    """The case that shows torch's bug: our result is nn.Embedding's, torch.nn.EmbeddingBag's is not."""
    ids = torch.tensor([[0, 0, 1]])
    emb = torch.nn.Embedding(2, 1, scale_grad_by_freq=True)
    emb(ids).sum().backward()
    for backend in BACKENDS:
        ours = embtab.EmbeddingBag(2, 1, mode="sum", scale_grad_by_freq=True, backend=backend)
        ours(ids).sum().backward()
        assert torch.equal(ours.weight.grad, emb.weight.grad), backend  # rows [1, 1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gradcheck_float64(backend: str, mode: str) -> None:
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 2, 2, 8, 1, 5, 5])
    offsets = torch.tensor([0, 3, 3, 5])  # one empty bag
    fn = lambda w: EF.embedding_bag(ids, w, offsets, mode=mode, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (weight,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_per_sample_weights(backend: str) -> None:
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    psw = torch.randn(7, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([0, 2, 2, 8, 1, 5, 5])
    offsets = torch.tensor([0, 3, 3, 5])
    fn = lambda w, p: EF.embedding_bag(ids, w, offsets, mode="sum", per_sample_weights=p, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (weight, psw))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_length_2d_bags_are_zero(backend: str) -> None:
    bag = embtab.EmbeddingBag(5, 3, mode="max", backend=backend)
    out = bag(torch.zeros(4, 0, dtype=torch.long))
    assert torch.equal(out, torch.zeros(4, 3))


def test_all_padding_and_empty_bags_are_zero() -> None:
    bag = embtab.EmbeddingBag(5, 3, mode="mean", padding_idx=0)
    out = bag(torch.tensor([0, 0, 3]), torch.tensor([0, 2, 2]))
    assert torch.equal(out[0], torch.zeros(3))  # all padding
    assert torch.equal(out[1], torch.zeros(3))  # empty
    assert torch.allclose(out[2], bag.weight[3])


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_include_last_offset_shorter_than_input_keeps_trailing_ids_in_the_last_bag(
    mode: str, padding_idx: int | None, dtype: torch.dtype, backend: str,
) -> None:
    """With offsets[-1] < len(input) the last bag runs to the end of the input, as torch's
    CPU kernels do in float64, for max and with padding_idx (its float32 sum/mean path
    without padding disagrees with itself: PyTorch issue 89677); the gradient follows."""
    w = torch.randn(6, 2, dtype=torch.float64)
    ids, offsets = torch.tensor([1, 2, 3, 4, 5]), torch.tensor([0, 2, 3])
    ref_w = w.clone().requires_grad_()
    expected = torch.nn.functional.embedding_bag(ids, ref_w, offsets, mode=mode, include_last_offset=True,
                                                 padding_idx=padding_idx)
    expected.sum().backward()
    ours_w = w.to(dtype).requires_grad_()
    out = EF.embedding_bag(ids, ours_w, offsets, mode=mode, include_last_offset=True, padding_idx=padding_idx,
                           backend=backend)
    out.sum().backward()
    assert_close(out.double(), expected.detach(), dtype)
    assert_close(ours_w.grad.double(), ref_w.grad, dtype)


@pytest.mark.parametrize("kwargs", [{}, {"mode": "sum"}, {"padding_idx": 2, "max_norm": 1.0}, {"norm_type": 3.0}])
def test_extra_repr_like_torch(kwargs: dict) -> None:
    assert repr(embtab.EmbeddingBag(10, 4, **kwargs)) == repr(torch.nn.EmbeddingBag(10, 4, **kwargs))


def test_from_pretrained_like_torch() -> None:
    pre = torch.randn(6, 3)
    ours = embtab.EmbeddingBag.from_pretrained(pre, mode="sum", padding_idx=2)
    ref = torch.nn.EmbeddingBag.from_pretrained(pre, mode="sum", padding_idx=2)
    ids, offsets = torch.tensor([1, 2, 4, 2]), torch.tensor([0, 2])
    assert torch.equal(ours(ids, offsets), ref(ids, offsets))
    assert not ours.weight.requires_grad
    assert torch.equal(ours.weight, pre)


def test_state_dict_interchanges_with_torch() -> None:
    ours = embtab.EmbeddingBag(8, 3, mode="max")
    ref = torch.nn.EmbeddingBag(8, 3, mode="max")
    ref.load_state_dict(ours.state_dict())
    ids = torch.tensor([[1, 2, 3], [7, 7, 0]])
    assert torch.equal(ref(ids), ours(ids))
    assert list(ours.state_dict()) == ["weight"]
