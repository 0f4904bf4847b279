"""embtab.Embedding and embtab.functional.embedding against torch.nn, across the argument space."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab import functional as EF
from tests.conftest import TOLERANCES, assert_close_to_torch

BACKENDS = ["torch", "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@st.composite
def embedding_cases(draw: st.DrawFn) -> dict:
    num = draw(st.integers(1, 40))
    dim = draw(st.integers(1, 9))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)))
    # Few distinct ids so that duplicates (and the padding row) are common.
    pool = draw(st.lists(st.integers(0, num - 1), min_size=1, max_size=4))
    numel = 1
    for s in shape:
        numel *= s
    ids = draw(st.lists(st.sampled_from(pool), min_size=numel, max_size=numel))
    sparse = draw(st.booleans())
    return {
        "num": num,
        "dim": dim,
        "ids": torch.tensor(ids, dtype=draw(st.sampled_from([torch.int64, torch.int32]))).reshape(shape),
        "padding_idx": draw(st.none() | st.integers(-num, num - 1)),
        "max_norm": draw(st.none() | st.floats(0.1, 3.0)),
        "norm_type": draw(st.sampled_from([2.0, 1.0, 3.5])),
        "scale_grad_by_freq": False if sparse else draw(st.booleans()),
        "sparse": sparse,
        "dtype": draw(st.sampled_from(DTYPES)),
        "backend": draw(st.sampled_from(BACKENDS)),
    }


def _torch_lookup(module: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    # torch's sparse backward with padding_idx fails on 0-d ids (IndexError: too many
    # indices); ours does not, so the oracle sees them as 1-element vectors.
    if ids.dim() == 0:
        return module(ids.reshape(1)).reshape(module.embedding_dim)
    return module(ids)


@settings(max_examples=150, deadline=None)
@given(embedding_cases())
def test_module_matches_torch(case: dict) -> None:
    dtype = case["dtype"]
    kwargs = dict(
        padding_idx=case["padding_idx"], max_norm=case["max_norm"], norm_type=case["norm_type"],
        scale_grad_by_freq=case["scale_grad_by_freq"], sparse=case["sparse"], dtype=dtype,
    )
    ref = torch.nn.Embedding(case["num"], case["dim"], **kwargs)
    ours = embtab.Embedding(case["num"], case["dim"], backend=case["backend"], **kwargs)
    ours.load_state_dict(ref.state_dict())

    # float64 twin: the exact answer, for judging 16-bit results (see assert_close_to_torch).
    twin = None
    if dtype in (torch.float16, torch.bfloat16):
        twin = torch.nn.Embedding(case["num"], case["dim"], **{**kwargs, "dtype": torch.float64})
        twin.weight.data.copy_(ref.weight.detach())

    expected = _torch_lookup(ref, case["ids"])
    actual = ours(case["ids"])
    exact = None if twin is None else _torch_lookup(twin, case["ids"])
    assert actual.shape == (*case["ids"].shape, case["dim"])
    assert actual.dtype == dtype
    assert_close_to_torch(actual, expected, exact)
    # max_norm renormalises the referenced rows in place, identically.
    assert_close_to_torch(ours.weight.detach(), ref.weight.detach(), None if twin is None else twin.weight.detach())

    grad = torch.randn(expected.shape, dtype=torch.float64).to(dtype)
    expected.backward(grad)
    actual.backward(grad)
    if exact is not None:
        exact.backward(grad.double())
    assert ours.weight.grad.is_sparse == case["sparse"]
    assert_close_to_torch(ours.weight.grad, ref.weight.grad, None if twin is None else twin.weight.grad)


@settings(max_examples=60, deadline=None)
@given(embedding_cases())
def test_functional_matches_torch(case: dict) -> None:
    dtype = case["dtype"]
    w_ref = torch.randn(case["num"], case["dim"], dtype=torch.float64).to(dtype).requires_grad_()
    w_ours = w_ref.detach().clone().requires_grad_()
    args = (case["padding_idx"], case["max_norm"], case["norm_type"], case["scale_grad_by_freq"], case["sparse"])
    ref_ids = case["ids"].reshape(1) if case["ids"].dim() == 0 else case["ids"]  # see _torch_lookup
    w_twin = w_ref.detach().double().requires_grad_()  # the exact answer for 16-bit dtypes
    out_shape = (*case["ids"].shape, case["dim"])
    expected = torch.nn.functional.embedding(ref_ids, w_ref, *args).reshape(out_shape)
    actual = EF.embedding(case["ids"], w_ours, *args, backend=case["backend"])
    exact = torch.nn.functional.embedding(ref_ids, w_twin, *args).reshape(out_shape)
    assert_close_to_torch(actual, expected, exact)
    grad = torch.randn(expected.shape, dtype=torch.float64).to(dtype)
    expected.backward(grad)
    actual.backward(grad)
    exact.backward(grad.double())
    assert_close_to_torch(w_ours.grad, w_ref.grad, w_twin.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend: str) -> None:
    weight = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 2, 2], [6, 1, 2]])
    # padding_idx and scale_grad_by_freq deliberately depart from the true gradient;
    # those are checked against torch above.
    assert torch.autograd.gradcheck(lambda w: EF.embedding(ids, w, backend=backend), (weight,))
    hashed = lambda w: EF.embedding(ids * 3, w, oov="hash", num_oov_buckets=2, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(hashed, (weight,))


def test_default_init_is_torchs() -> None:
    """Same seed, same weights: N(0, 1) with the padding row zeroed, as torch does."""
    torch.manual_seed(3)
    ours = embtab.Embedding(20, 4, padding_idx=-1)
    torch.manual_seed(3)
    ref = torch.nn.Embedding(20, 4, padding_idx=-1)
    assert torch.equal(ours.weight, ref.weight)
    assert ours.padding_idx == ref.padding_idx == 19


def test_from_pretrained_keeps_padding_row_and_freezes() -> None:
    pre = torch.randn(5, 3)
    ours = embtab.Embedding.from_pretrained(pre, padding_idx=1)
    ref = torch.nn.Embedding.from_pretrained(pre, padding_idx=1)
    assert torch.equal(ours.weight, ref.weight)  # padding row not zeroed
    assert not ours.weight.requires_grad
    assert ours.weight.data_ptr() == pre.data_ptr()  # shares storage, like torch
    trainable = embtab.Embedding.from_pretrained(pre, freeze=False)
    assert trainable.weight.requires_grad


def test_state_dict_interchanges_with_torch() -> None:
    ours = embtab.Embedding(11, 5, padding_idx=0, oov="padding")
    assert list(ours.state_dict()) == ["weight"]
    ref = torch.nn.Embedding(11, 5, padding_idx=0)
    ref.load_state_dict(ours.state_dict())
    assert torch.equal(ref.weight, ours.weight)
    back = embtab.Embedding(11, 5, padding_idx=0)
    back.load_state_dict(ref.state_dict())
    assert torch.equal(back.weight, ref.weight)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding_idx": 3},
        {"max_norm": 1.5, "norm_type": 1.0},
        {"scale_grad_by_freq": True},
        {"sparse": True},
    ],
)
def test_extra_repr_like_torch(kwargs: dict) -> None:
    assert repr(embtab.Embedding(10, 4, **kwargs)) == repr(torch.nn.Embedding(10, 4, **kwargs))


def test_extra_repr_shows_our_options() -> None:
    r = repr(embtab.Embedding(10, 4, oov="hash", num_oov_buckets=3, init="uniform"))
    assert r == "Embedding(10, 4, oov='hash', num_oov_buckets=3, init='uniform')"


def test_device_and_dtype_factory_kwargs() -> None:
    emb = embtab.Embedding(4, 2, device="cpu", dtype=torch.float64)
    assert emb.weight.dtype == torch.float64 and emb.weight.device.type == "cpu"
    assert emb(torch.tensor([1])).dtype == torch.float64


def test_freeze_and_no_grad_paths() -> None:
    frozen = embtab.Embedding(4, 2, _freeze=True)
    assert not frozen.weight.requires_grad
    assert not frozen(torch.tensor([1, 2])).requires_grad
    emb = embtab.Embedding(4, 2)
    with torch.no_grad():
        out = emb(torch.tensor([1, 2]))
    assert not out.requires_grad
    assert torch.equal(out, emb.weight[[1, 2]])


def test_tolerance_table_covers_every_dtype() -> None:
    assert set(DTYPES) <= set(TOLERANCES)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("options", [{}, {"padding_idx": 2}, {"scale_grad_by_freq": True}], ids=["plain", "padding", "freq"])
def test_second_derivative_of_the_dense_gradient_is_torchs(backend: str, options: dict) -> None:
    """A gradient penalty: d/dw of ||dL/dw||^2, against torch.nn.functional.embedding."""
    ids = torch.tensor([[1, 2, 2], [4, 2, 0]])
    w0 = torch.randn(6, 3, dtype=torch.float64)
    results = []
    for fn in (lambda w: torch.nn.functional.embedding(ids, w, **options),
               lambda w: EF.embedding(ids, w, backend=backend, **options)):
        w = w0.clone().requires_grad_()
        (grad,) = torch.autograd.grad(fn(w).pow(3).sum(), w, create_graph=True)
        (penalty,) = torch.autograd.grad(grad.pow(2).sum(), w)
        results.append(penalty)
    torch.testing.assert_close(results[1], results[0])
    if not options.get("scale_grad_by_freq"):  # torch's own double backward leaves the scaling out
        assert torch.autograd.gradgradcheck(lambda w: EF.embedding(ids, w, backend=backend, **options).pow(2),
                                            (w0.clone().requires_grad_(),))


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_second_derivative_through_a_bag_is_refused(backend: str) -> None:
    w = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    out = EF.embedding_bag(torch.tensor([1, 2, 4]), w, torch.tensor([0, 1]), mode="sum", backend=backend,
                           scale_grad_by_freq=backend == "auto")  # ATen cannot serve this one: ours runs
    (grad,) = torch.autograd.grad(out.pow(3).sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match=r"derivative"):
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("cls", [embtab.Embedding, embtab.EmbeddingBag])
def test_from_pretrained_names_a_non_finite_row_and_keeps_it_only_when_asked(cls) -> None:
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    w[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"row 2 holds a non-finite value.*nonfinite='keep'"):
        cls.from_pretrained(w)
    m = cls.from_pretrained(w, nonfinite="keep", oov="hash", num_oov_buckets=3)
    assert torch.equal(m.weight[:5].isnan(), w.isnan())  # kept as given
    assert bool(torch.isfinite(m.weight[5:]).all())  # the hash rows' statistics skip the NaN row
