"""The Triton backend against the reference oracle and torch.nn.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py``) on CPU tensors; with one, the same tests run the compiled kernels
on CUDA tensors. The interpreter runs one program at a time, so the shapes are small
and deliberately odd (D = 1, 3, 33, 130; empty bags; SKIP and padding ids; rows
repeated more than ``PIECE`` times so the second reduction pass runs).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

try:  # optional here, so a bare GPU image without hypothesis still runs every other test
    from hypothesis import given, settings, strategies as st
except ImportError:  # pragma: no cover - the dev environment has it
    st = None

from embtab import functional as EF  # noqa: E402
from embtab.ops import registry, reference as R  # noqa: E402
from tests.conftest import assert_close, deterministic, needs_cuda  # noqa: E402

T = pytest.importorskip("embtab.ops.triton")
from embtab.ops.triton import backward as BW  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DIMS = [1, 3, 33, 130]


def make_ids(n: int, num_rows: int, *, skip: bool = True, hot: int | None = None,
             dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Random ids with duplicates; every other id is ``hot`` if given; ~1/6 SKIP."""
    ids = torch.randint(0, num_rows, (n,))
    if hot is not None:
        ids[::2] = hot
    if skip and n >= 6:
        ids[torch.randperm(n)[: n // 6]] = -1
    return ids.to(dtype).to(DEVICE)


def randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32).to(dtype).to(DEVICE)


def dense(t: torch.Tensor) -> torch.Tensor:
    return t.coalesce().to_dense() if t.is_sparse else t


# --- the backend module ---------------------------------------------------------------


def test_module_has_the_reference_functions_with_the_same_signatures() -> None:
    import inspect

    assert T.name == "triton" and T.supports_skip is True
    for fn in ("embedding_forward", "embedding_backward", "embedding_bag_forward",
               "embedding_bag_inference", "embedding_bag_backward", "renorm_"):
        ours, ref = inspect.signature(getattr(T, fn)), inspect.signature(getattr(R, fn))
        assert list(ours.parameters) == list(ref.parameters), fn


def test_registry_selects_triton_by_name_and_auto_only_for_cuda() -> None:
    assert registry.select("triton", DEVICE, torch.float32).lookup is T
    assert registry.select("auto", torch.device("cpu"), torch.float32).lookup.name == "torch"
    if torch.cuda.is_available():
        assert registry.select("auto", torch.device("cuda"), torch.float32).lookup is T


def test_unsupported_dtype_raises_a_clear_type_error() -> None:
    w = torch.zeros(4, 3, dtype=torch.int32, device=DEVICE)
    with pytest.raises(TypeError, match="float16, bfloat16, float32 and float64"):
        T.embedding_forward(w, torch.tensor([0, 1], device=DEVICE))


# --- Embedding ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
def test_embedding_forward(dtype: torch.dtype, dim: int) -> None:
    id_dtype = torch.int32 if dim % 2 else torch.int64
    w = randn(11, dim, dtype=dtype)
    ids = make_ids(14, 11, dtype=id_dtype).reshape(2, 7)
    out = T.embedding_forward(w, ids)
    assert out.shape == (2, 7, dim) and out.dtype == dtype
    assert torch.equal(out, R.embedding_forward(w, ids))  # a gather is exact


def test_embedding_forward_empty_and_strided_weight() -> None:
    w = randn(6, 8, dtype=torch.float32)
    assert T.embedding_forward(w, torch.empty(0, 3, dtype=torch.int64, device=DEVICE)).shape == (0, 3, 8)
    view = w[:, 2:7]  # rows with a stride of 8, not 5
    ids = make_ids(9, 6)
    assert torch.equal(T.embedding_forward(view, ids), R.embedding_forward(view, ids))


@pytest.mark.parametrize("dtype,dim", [(d, 33) for d in DTYPES] + [(torch.float32, 1), (torch.bfloat16, 1)])
@pytest.mark.parametrize("det", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("padding_idx,freq", [(None, False), (4, False), (4, True)])
def test_embedding_backward_dense(dtype: torch.dtype, dim: int, det: bool, padding_idx: int | None,
                                  freq: bool) -> None:
    # Row 2 appears ~40 times: more than one PIECE, so its partial sums take the second pass.
    ids = make_ids(80, 9, hot=2)
    grad = randn(80, dim, dtype=dtype)
    with deterministic(det):
        ours = T.embedding_backward(grad, ids, 9, padding_idx, freq, False)
    ref = R.embedding_backward(grad, ids, 9, padding_idx, freq, False)
    assert ours.dtype == dtype and ours.shape == (9, dim)
    assert_close(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx,freq", [(None, False), (4, False), (4, True)])
def test_embedding_backward_sparse(dtype: torch.dtype, padding_idx: int | None, freq: bool) -> None:
    ids = make_ids(30, 9, hot=4).reshape(5, 6)
    grad = randn(5, 6, 33, dtype=dtype)
    ours = T.embedding_backward(grad, ids, 9, padding_idx, freq, True)
    ref = R.embedding_backward(grad, ids, 9, padding_idx, freq, True)
    assert ours.is_sparse and ours.dtype == dtype
    # Same entries as torch: one per contributing id (no padding, no SKIP entries).
    assert ours._nnz() == ref._nnz()
    assert_close(ours, ref)


@pytest.mark.cuda
@needs_cuda  # the interpreter runs programs one after another: two runs always agree there
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_mode_is_bitwise_reproducible(dtype: torch.dtype) -> None:
    ids = make_ids(120, 7, hot=3)  # long segment: both passes of the sorted reduction
    grad = randn(120, 33, dtype=dtype)
    offsets = torch.tensor([0, 40, 40, 100, 120], device=DEVICE)
    bag_grad = randn(4, 33, dtype=dtype)
    w = randn(7, 33, dtype=dtype)
    with deterministic(True):
        runs = []
        for _ in range(2):
            _, aux = T.embedding_bag_forward(w, ids, offsets, "mean", None, None)
            gw, _ = T.embedding_bag_backward(bag_grad, w, ids, offsets, aux, "mean", None, None,
                                             False, False, True, False)
            runs.append((T.embedding_backward(grad, ids, 7, None, False, False), gw))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_plan_cuts_long_rows_into_pieces() -> None:
    ids = torch.tensor([5] * 70 + [1, -1, 2, 2], device=DEVICE)[torch.randperm(74, device=DEVICE)]
    plan = BW.plan_segments(ids, 8, padding_idx=2)
    pieces = int(plan.num_pieces)
    starts = plan.piece_start[: pieces + 1].tolist()
    assert starts[0] == 0 and all(b - a <= BW.PIECE for a, b in zip(starts, starts[1:]))
    keys = plan.keys.tolist()
    assert keys == sorted(keys) and keys[-3:] == [8, 8, 8]  # SKIP and padding sort last
    # Row 5's 70 ids span several pieces, none of them whole; row 1's single id is whole.
    first_of = {keys[s]: j for j, s in reversed(list(enumerate(starts[:-1])))}
    assert not bool(plan.whole[first_of[5]]) and bool(plan.whole[first_of[1]])


# --- EmbeddingBag ---------------------------------------------------------------------


def bag_case(dim: int, dtype: torch.dtype, *, hot: int | None = None) -> tuple[torch.Tensor, ...]:
    """7 bags over 40 ids, bags 1 and 5 empty, some SKIP ids; max ties on row 6."""
    w = randn(10, dim, dtype=dtype)
    w[6] = w[6].abs() + 3  # row 6 is the max of every bag holding it: ties across duplicates
    ids = make_ids(40, 10, hot=hot)
    offsets = torch.tensor([0, 6, 6, 13, 20, 33, 33, 40], device=DEVICE)
    return w, ids, offsets


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_forward(dtype: torch.dtype, dim: int, mode: str) -> None:
    w, ids, offsets = bag_case(dim, dtype, hot=6)
    psw = randn(40, dtype=dtype) if mode == "sum" and dim != 1 else None
    padding_idx = 3 if dim in (3, 130) else None
    out, aux = T.embedding_bag_forward(w, ids, offsets, mode, psw, padding_idx)
    ref, ref_aux = R.embedding_bag_forward(w, ids, offsets, mode, psw, padding_idx)
    assert out.dtype == dtype and out.shape == (7, dim)
    assert_close(out, ref)
    assert torch.equal(aux.counts.long(), ref_aux.counts)  # ids that count per bag
    if mode == "max":
        assert torch.equal(aux.max_rows, ref_aux.max_rows)  # the row giving each column's max
        assert torch.equal(out, ref)  # a max is exact


# float16/bfloat16 always take the sorted path; float32/float64 take atomics unless
# determinism is requested, so the deterministic runs cover float32 and bfloat16.
@pytest.mark.parametrize("dtype,det", [(d, False) for d in DTYPES] + [(torch.float32, True), (torch.bfloat16, True)])
@pytest.mark.parametrize("mode,sparse", [("sum", False), ("sum", True), ("mean", False), ("mean", True),
                                         ("max", False)])
def test_embedding_bag_backward(dtype: torch.dtype, mode: str, sparse: bool, det: bool) -> None:
    dim = 33
    w, ids, offsets = bag_case(dim, dtype, hot=6)
    psw = randn(40, dtype=dtype) if mode == "sum" else None
    padding_idx = 3
    freq = mode == "mean" and not sparse
    grad = randn(7, dim, dtype=dtype)
    _, aux = T.embedding_bag_forward(w, ids, offsets, mode, psw, padding_idx)
    _, ref_aux = R.embedding_bag_forward(w, ids, offsets, mode, psw, padding_idx)
    args = (mode, psw, padding_idx, freq, sparse, True, psw is not None)
    with deterministic(det):
        gw, gp = T.embedding_bag_backward(grad, w, ids, offsets, aux, *args)
    ref_gw, ref_gp = R.embedding_bag_backward(grad, w, ids, offsets, ref_aux, *args)
    assert gw.is_sparse == sparse and gw.dtype == dtype
    assert_close(dense(gw), dense(ref_gw))
    if psw is not None:
        assert gp.dtype == dtype
        assert_close(gp, ref_gp)


def test_embedding_bag_psw_grad_only() -> None:
    w, ids, offsets = bag_case(130, torch.float32)
    psw = randn(40, dtype=torch.float32)
    grad = randn(7, 130, dtype=torch.float32)
    _, aux = T.embedding_bag_forward(w, ids, offsets, "sum", psw, None)
    _, ref_aux = R.embedding_bag_forward(w, ids, offsets, "sum", psw, None)
    args = ("sum", psw, None, False, False, False, True)
    gw, gp = T.embedding_bag_backward(grad, w, ids, offsets, aux, *args)
    _, ref_gp = R.embedding_bag_backward(grad, w, ids, offsets, ref_aux, *args)
    assert gw is None
    assert_close(gp, ref_gp)


def test_embedding_bag_no_bags_and_no_ids() -> None:
    w = randn(5, 4, dtype=torch.float32)
    empty = torch.empty(0, dtype=torch.int64, device=DEVICE)
    out, _ = T.embedding_bag_forward(w, empty, torch.zeros(1, dtype=torch.int64, device=DEVICE), "sum", None, None)
    assert out.shape == (0, 4)
    out, aux = T.embedding_bag_forward(w, empty, torch.zeros(3, dtype=torch.int64, device=DEVICE), "max", None, None)
    assert torch.equal(out, torch.zeros(2, 4, device=DEVICE)) and bool((aux.max_rows == -1).all())


if st is not None:

    @st.composite
    def bag_args(draw: st.DrawFn) -> dict:
        num_rows = draw(st.integers(1, 12))
        dim = draw(st.sampled_from([1, 2, 5, 17]))
        lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=5))
        n = sum(lengths)
        ids = draw(st.lists(st.integers(-1, num_rows - 1), min_size=n, max_size=n))
        mode = draw(st.sampled_from(["sum", "mean", "max"]))
        return dict(
            num_rows=num_rows, dim=dim, lengths=lengths, ids=ids, mode=mode,
            padding_idx=draw(st.one_of(st.none(), st.integers(0, num_rows - 1))),
            psw=mode == "sum" and draw(st.booleans()),
            dtype=draw(st.sampled_from(DTYPES)), det=draw(st.booleans()),
        )

    @settings(max_examples=12, deadline=None)
    @given(bag_args())
    def test_embedding_bag_matches_reference_property(case: dict) -> None:
        dtype, dim = case["dtype"], case["dim"]
        w = randn(case["num_rows"], dim, dtype=dtype)
        ids = torch.tensor(case["ids"], dtype=torch.int64, device=DEVICE)
        offsets = torch.tensor([0, *torch.tensor(case["lengths"]).cumsum(0).tolist()], device=DEVICE)
        psw = randn(ids.numel(), dtype=dtype) if case["psw"] else None
        grad = randn(len(case["lengths"]), dim, dtype=dtype)
        mode, pad = case["mode"], case["padding_idx"]
        out, aux = T.embedding_bag_forward(w, ids, offsets, mode, psw, pad)
        ref, ref_aux = R.embedding_bag_forward(w, ids, offsets, mode, psw, pad)
        assert_close(out, ref)
        args = (mode, psw, pad, False, False, True, psw is not None)
        with deterministic(case["det"]):
            gw, gp = T.embedding_bag_backward(grad, w, ids, offsets, aux, *args)
        ref_gw, ref_gp = R.embedding_bag_backward(grad, w, ids, offsets, ref_aux, *args)
        assert_close(gw, ref_gw)
        if psw is not None:
            assert_close(gp, ref_gp)


# --- max_norm ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf"), 3.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_renorm(norm_type: float, dtype: torch.dtype) -> None:
    w = randn(9, 33, dtype=dtype) * 2
    ids = torch.tensor([1, 1, 3, -1, 5, 5, 8, 1], device=DEVICE)
    ours, ref = w.clone(), w.clone()
    T.renorm_(ours, ids, 1.5, norm_type)
    R.renorm_(ref, ids, 1.5, norm_type)
    assert_close(ours, ref)
    assert torch.equal(ours[[0, 2, 4, 6, 7]], w[[0, 2, 4, 6, 7]])  # rows not referenced: untouched


# --- end to end through embtab.functional -------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sparse", [False, True])
def test_functional_embedding_matches_torch(dtype: torch.dtype, sparse: bool) -> None:
    w0 = randn(12, 7, dtype=dtype)
    ids = make_ids(15, 12, skip=False, hot=5).reshape(3, 5)
    ours_w, torch_w = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    ours = EF.embedding(ids, ours_w, padding_idx=2, max_norm=2.0, sparse=sparse, backend="triton")
    ref = F.embedding(ids, torch_w, padding_idx=2, max_norm=2.0, sparse=sparse)
    assert_close(ours, ref)
    assert_close(ours_w.detach(), torch_w.detach())  # renormalised in place alike
    g = randn(3, 5, 7, dtype=dtype)
    ours.backward(g)
    ref.backward(g)
    assert ours_w.grad.is_sparse == sparse
    assert_close(dense(ours_w.grad), dense(torch_w.grad))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_functional_embedding_bag_matches_torch(mode: str) -> None:
    w0 = randn(12, 5, dtype=torch.float32)
    ids = make_ids(20, 12, skip=False, hot=1)
    offsets = torch.tensor([0, 4, 4, 11], device=DEVICE)  # 4 bags: the last is ids[11:]
    psw0 = randn(20, dtype=torch.float32) if mode == "sum" else None
    ours_w, torch_w = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    ours_p = psw0.clone().requires_grad_() if psw0 is not None else None
    torch_p = psw0.clone().requires_grad_() if psw0 is not None else None
    # scale_grad_by_freq is compared with the reference above: with mode="mean" every
    # embtab backend (torch's own ATen kernels included) differs from F.embedding_bag.
    kw = dict(mode=mode, padding_idx=7)
    ours = EF.embedding_bag(ids, ours_w, offsets, per_sample_weights=ours_p, backend="triton", **kw)
    ref = F.embedding_bag(ids, torch_w, offsets, per_sample_weights=torch_p, **kw)
    assert_close(ours, ref)
    g = randn(4, 5, dtype=torch.float32)
    ours.backward(g)
    ref.backward(g)
    assert_close(ours_w.grad, torch_w.grad)
    if psw0 is not None:
        assert_close(ours_p.grad, torch_p.grad)


def test_functional_oov_zero_skips_like_the_reference() -> None:
    w0 = randn(6, 4, dtype=torch.float32)
    ids = torch.tensor([0, 9, 5, -3, 5, 2], device=DEVICE)  # 9 and -3 are out of range
    offsets = torch.tensor([0, 2, 6], device=DEVICE)
    results = []
    for backend in ("triton", "reference"):
        w = w0.clone().requires_grad_()
        out = EF.embedding_bag(ids, w, offsets, mode="mean", oov="zero", backend=backend)
        out.backward(torch.ones_like(out))
        results.append((out, w.grad))
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1], results[1][1])


# --- GPU only ---------------------------------------------------------------------------

cuda = needs_cuda


def zipf_ids(n: int, num_rows: int, s: float = 1.15) -> torch.Tensor:
    r = torch.arange(1, num_rows + 1, dtype=torch.float64, device="cuda").pow(-s)
    return torch.randperm(num_rows, device="cuda")[torch.multinomial(r / r.sum(), n, replacement=True)]


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_large_zipf_matches_reference(dtype: torch.dtype) -> None:
    num_rows, dim, bags, length = 50_000, 128, 2048, 20
    w = torch.randn(num_rows, dim, device="cuda", dtype=dtype)
    ids = zipf_ids(bags * length, num_rows)
    offsets = torch.arange(0, bags * length + 1, length, device="cuda")
    grad = torch.randn(bags, dim, device="cuda", dtype=dtype)
    for mode in ("sum", "mean", "max"):
        out, aux = T.embedding_bag_forward(w, ids, offsets, mode, None, 0)
        ref, ref_aux = R.embedding_bag_forward(w, ids, offsets, mode, None, 0)
        assert_close(out, ref)
        for det in (False, True):
            with deterministic(det):
                gw, _ = T.embedding_bag_backward(grad, w, ids, offsets, aux, mode, None, 0, False, False, True, False)
            ref_gw, _ = R.embedding_bag_backward(grad, w, ids, offsets, ref_aux, mode, None, 0, False, False, True, False)
            torch.testing.assert_close(gw.float(), ref_gw.float(), atol=5e-2 if dtype == torch.bfloat16 else 1e-3,
                                       rtol=2e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.cuda
@cuda
def test_gpu_deterministic_bitwise_and_large_ids() -> None:
    ids = zipf_ids(1 << 18, 100_000)
    grad = torch.randn(ids.numel(), 64, device="cuda")
    with deterministic(True):
        a = T.embedding_backward(grad, ids, 100_000, None, False, False)
        b = T.embedding_backward(grad, ids, 100_000, None, False, False)
    assert torch.equal(a, b)
    # Hot Zipf rows sum thousands of float32 terms, in another order than the reference:
    # judge against the float64 sum, with a tolerance for float32 accumulation.
    exact = R.embedding_backward(grad.double(), ids, 100_000, None, False, False)
    torch.testing.assert_close(a.double(), exact, atol=1e-3, rtol=1e-4)


@pytest.mark.cuda
@cuda
def test_gpu_no_host_sync_in_the_dense_training_path() -> None:
    w = torch.randn(10_000, 64, device="cuda", requires_grad=True)
    ids = torch.randint(0, 10_000, (4096,), device="cuda")
    offsets = torch.arange(0, 4097, 8, device="cuda")
    # Warm up (compiles kernels, which may sync), then forbid syncs.
    for det in (False, True):
        with deterministic(det):
            EF.embedding_bag(ids, w, offsets, mode="mean", oov="padding", padding_idx=0).sum().backward()
            EF.embedding(ids, w, oov="zero").sum().backward()
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                EF.embedding_bag(ids, w, offsets, mode="mean", oov="padding", padding_idx=0).sum().backward()
                EF.embedding(ids, w, oov="zero").sum().backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
