"""Each row-update backend against ``ops/update_reference.py`` (float64), function by function."""

from __future__ import annotations

import warnings

import pytest
import torch

from embtab import optim
from embtab.ops import registry, update_reference as reference, update_torch
from embtab.ops.common import BagSource, TableJob
from embtab.optim.specs import FusedSpec, new_state
from tests.conftest import assert_close

try:
    from embtab.ops.numba import update as numba_update
except ImportError:  # pragma: no cover
    numba_update = None

FAST = [update_torch] + ([numba_update] if numba_update is not None else [])
SPECS = [
    optim.SGD(lr=0.3, weight_decay=0.1),
    optim.Adagrad(lr=0.2, weight_decay=0.1, initial_accumulator_value=0.05),
    optim.RowWiseAdagrad(lr=0.2, weight_decay=0.1, initial_accumulator_value=0.05),
    optim.Adam(lr=0.05, weight_decay=0.1),
    optim.AdamW(lr=0.05, weight_decay=0.1),
]


def _setup(spec: FusedSpec, dtype: torch.dtype, rows: int = 40, dim: int = 19):
    weight = torch.randn(rows, dim, dtype=dtype)
    state = new_state(spec, weight)
    for name, s in state.items():  # non-trivial starting state
        if name == "step":
            s.copy_(torch.randint(0, 5, s.shape))
        elif name == "exp_avg":
            s.copy_(torch.randn(s.shape) * 0.1)
        else:
            s.copy_(torch.rand(s.shape))
    return weight, state


def _copy(weight: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
    return weight.clone(), {k: v.clone() for k, v in state.items()}


@pytest.mark.parametrize("backend", FAST, ids=lambda m: m.name)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_update_matches_reference(backend, spec: FusedSpec, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    weight, state = _setup(spec, dtype)
    rows = torch.randperm(40)[:17]
    grads = torch.randn(17, 19, dtype=dtype)
    hyper = spec.hyper(spec.hyperparameters())
    w_ref, s_ref = _copy(weight, state)
    reference.fused_update(w_ref, s_ref, rows, grads, hyper)
    backend.fused_update(weight, state, rows, grads, hyper)
    assert_close(weight, w_ref)
    for name in state:
        torch.testing.assert_close(state[name], s_ref[name], **({} if name == "step" else dict(
            atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5 if dtype == torch.float32 else 1e-10)))


@pytest.mark.parametrize("backend", FAST + [reference], ids=lambda m: m.name)
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("freq", [False, True])
def test_run_jobs_sums_occurrences_then_updates(backend, spec: FusedSpec, freq: bool) -> None:  # type: ignore[no-untyped-def]
    """A job of two sources (a mean bag lookup; one with per-sample weights, a skipped
    id and the padding row) against the sum written out by hand, then the reference update."""
    weight, state = _setup(spec, torch.float64)
    dim = 19
    grad_flat = torch.randn(5 * 40, dtype=torch.float64)
    ids_a, ends_a = torch.tensor([5, 3, 5, 3]), torch.tensor([0, 3, 3, 4])  # bags [5, 3, 5], [], [3]
    ids_b, ends_b = torch.tensor([39, -1, 7, 5, 3]), torch.tensor([0, 2, 5])  # bags [39, -1], [7, 5, 3]
    psw = torch.rand(5, dtype=torch.float64)
    sources = [BagSource(ids_a, ends_a, 0, 40, mean=True), BagSource(ids_b, ends_b, 20, 40, per_sample_weights=psw)]
    summed: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def add(row: int, g: torch.Tensor) -> None:
        summed[row] = summed.get(row, torch.zeros(dim, dtype=torch.float64)) + g
        counts[row] = counts.get(row, 0) + 1

    for b, (lo, hi) in enumerate([(0, 3), (3, 3), (3, 4)]):
        for j in range(lo, hi):
            add(int(ids_a[j]), grad_flat[b * 40:b * 40 + dim] / (hi - lo))
    for b, (lo, hi) in enumerate([(0, 2), (2, 5)]):
        for j in range(lo, hi):
            if int(ids_b[j]) not in (-1, 7):  # skipped, padding
                add(int(ids_b[j]), psw[j] * grad_flat[20 + b * 40:20 + b * 40 + dim])
    rows = torch.tensor(sorted(summed))
    grads = torch.stack([summed[r] / (counts[r] if freq else 1) for r in rows.tolist()])
    w_ref, s_ref = _copy(weight, state)
    hyper = spec.hyper(spec.hyperparameters())
    reference.fused_update(w_ref, s_ref, rows, grads, hyper)
    if backend is update_torch:
        got_rows, got_grads = update_torch.reduce(TableJob(weight, state, 7, freq, grad_flat, sources))
        assert got_rows.tolist() == rows.tolist()
        assert_close(got_grads, grads)
    backend.run_jobs([TableJob(weight, state, 7, freq, grad_flat, sources)], hyper)
    assert_close(weight, w_ref)
    for name in state:
        assert_close(state[name].double(), s_ref[name].double())


def _jobs(dtype: torch.dtype, spec: FusedSpec) -> tuple[list[TableJob], torch.Tensor]:
    """Three tables sharing one flat gradient (B = 4, widths 5 + 3 + 5 + 5), one table
    with two sources (shared), mean bags, per-sample weights, padding, empty bags."""
    gen = torch.Generator().manual_seed(3)
    grad_flat = torch.randn(4 * 18, dtype=dtype, generator=gen)
    tables = [(30, 5), (9, 3), (25, 5)]
    weights = [torch.randn(r, d, dtype=dtype, generator=gen) for r, d in tables]
    jobs = []
    s0 = BagSource(torch.tensor([1, 2, 2, 29, 1]), torch.tensor([0, 2, 2, 4, 5]), 0, 18)
    s1 = BagSource(torch.tensor([0, 8, 8, 8]), torch.tensor([0, 0, 1, 3, 4]), 5, 18, mean=True)
    s2 = BagSource(torch.tensor([3, 3, 24, 0, 4]), torch.tensor([0, 1, 3, 3, 5]), 8, 18,
                          per_sample_weights=torch.rand(5, dtype=dtype, generator=gen))
    s3 = BagSource(torch.tensor([24, 7, -1]), torch.tensor([0, 1, 1, 3, 3]), 13, 18)
    for (rows, dim), w, sources, pad in zip(tables, weights, [[s0], [s1], [s2, s3]], [None, 0, 7]):
        jobs.append(TableJob(w, new_state(spec, w), pad, False, grad_flat, sources))
    return jobs, grad_flat


@pytest.mark.skipif(numba_update is None, reason="numba is not installed")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("threads", [1, 2])
def test_numba_run_jobs_matches_reference(spec: FusedSpec, threads: int) -> None:
    torch.set_num_threads(threads)  # the fixture restores it
    jobs, _ = _jobs(torch.float64, spec)
    expected, _ = _jobs(torch.float64, spec)
    hyper = spec.hyper(spec.hyperparameters())
    reference.run_jobs(expected, hyper)
    numba_update.run_jobs(jobs, hyper)
    for job, ref in zip(jobs, expected):
        assert_close(job.weight, ref.weight)
        for name in job.state:
            torch.testing.assert_close(job.state[name], ref.state[name])


@pytest.mark.skipif(numba_update is None, reason="numba is not installed")
def test_numba_threads_split_a_large_table_like_one_thread() -> None:
    spec = optim.RowWiseAdagrad(lr=0.1)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(5000, 16, generator=gen)
        state = new_state(spec, w)
        ids = torch.randint(0, 5000, (20000,), generator=gen)
        ids[::3] = 17  # a hot row: the split is by cost, not by row count
        grad = torch.randn(2000 * 16, generator=gen)
        job = TableJob(w, state, None, False, grad,
                              [BagSource(ids, torch.arange(0, 20001, 10), 0, 16)])
        numba_update.run_jobs([job], spec.hyper(spec.hyperparameters()))
        results.append(w)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)  # same sums, same order
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.kind)
def test_job_occurrences_expand_sources(spec: FusedSpec) -> None:
    jobs, grad_flat = _jobs(torch.float64, spec)
    ids, src, scale = jobs[1].occurrences()  # one mean source: bags [], [0], [8, 8], [8]
    assert ids.tolist() == [0, 8, 8, 8]
    assert src.tolist() == [5 + 18, 5 + 36, 5 + 36, 5 + 54]
    # bag [0] holds only the padding row (no kept id: scale 1, and no update anyway)
    assert scale.tolist() == [1.0, 0.5, 0.5, 1.0]
    ids, src, scale = jobs[2].occurrences()  # psw source then a plain one: ones fill in
    assert scale[5:].tolist() == [1.0, 1.0, 1.0]


def test_registry_picks_one_backend_for_lookups_and_updates(set_backend) -> None:  # type: ignore[no-untyped-def]
    from embtab.ops import native, reference as lookup_reference

    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = registry.select("auto", cpu, torch.float16)
        strided = registry.select("auto", cpu, torch.float32, contiguous=False)
    assert (half.lookup, half.update) == (native, update_torch)  # numba has no 16-bit floats
    assert strided.update is update_torch
    if numba_update is not None:
        assert registry.select("auto", cpu, torch.float32).update is numba_update
    ref = registry.select("reference", cpu, torch.float32)
    assert (ref.lookup, ref.update) == (lookup_reference, reference)  # the name reaches both halves
    set_backend("reference")  # $EMBTAB_BACKEND replaces "auto"
    assert registry.select("auto", cpu, torch.float32).update is reference
    with pytest.raises(RuntimeError, match=r"backend='numba' updates contiguous float32/float64 tables on CPU"):
        registry.select("numba", torch.device("meta"), torch.float32)


def test_auto_falls_back_once_with_a_warning_when_numba_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._optional, "embtab.ops.numba.update", ImportError("No module named 'numba'"))
    monkeypatch.setattr(registry, "_warned", set())
    registry.refresh()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a lookup alone does not warn: it needs no update
            backend = registry.select("auto", torch.device("cpu"), torch.float32)
        with pytest.warns(RuntimeWarning, match=r"numba is not available.*pip install 'embtab\[jit\]'"):
            assert backend.updater() is update_torch
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            registry.refresh()
            registry.select("auto", torch.device("cpu"), torch.float32).updater()
        assert "numba not available" in str(registry.backends())
        with pytest.raises(RuntimeError, match=r"backend='numba' needs numba"):
            registry.select("numba", torch.device("cpu"), torch.float32)
    finally:
        monkeypatch.undo()
        registry.refresh()


@pytest.mark.parametrize("case", ["sgd", "adagrad", "adam", "adamw"])
def test_reference_update_matches_torch_optim_when_every_row_is_touched(case: str) -> None:
    """The float64 oracle itself against torch.optim: with every row looked up in every
    step, the lazy per-row update is the dense one."""
    lr, wd, eps = 0.05, 0.1, 1e-8
    spec, make = {
        "sgd": (optim.SGD(lr=lr, weight_decay=wd), lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd)),
        "adagrad": (optim.Adagrad(lr=lr, weight_decay=wd, eps=eps, initial_accumulator_value=0.05),
                    lambda p: torch.optim.Adagrad(p, lr=lr, weight_decay=wd, eps=eps, initial_accumulator_value=0.05)),
        "adam": (optim.Adam(lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9)),
                 lambda p: torch.optim.Adam(p, lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9))),
        "adamw": (optim.AdamW(lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9)),
                  lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9))),
    }[case]
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    state = new_state(spec, weight)
    param = torch.nn.Parameter(weight.clone())
    opt = make([param])
    hyper = spec.hyper(spec.hyperparameters())
    for _ in range(3):
        grads = torch.randn(6, 4, dtype=torch.float64, generator=gen)
        reference.fused_update(weight, state, torch.arange(6), grads, hyper)
        param.grad = grads.clone()
        opt.step()
    torch.testing.assert_close(weight, param.detach(), rtol=1e-12, atol=1e-12)
