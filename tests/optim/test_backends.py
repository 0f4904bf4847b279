"""Each fused-update backend against ``embtab.optim.reference`` (float64), function by function."""

from __future__ import annotations

import pytest
import torch

from embtab.optim import _fused, _torch_backend, reference
from tests.conftest import assert_close

try:
    from embtab.optim import _numba_backend
except ImportError:  # pragma: no cover
    _numba_backend = None

FAST = [_torch_backend] + ([_numba_backend] if _numba_backend is not None else [])
SPECS = [
    _fused.SGD(lr=0.3, weight_decay=0.1),
    _fused.Adagrad(lr=0.2, weight_decay=0.1, initial_accumulator_value=0.05),
    _fused.RowWiseAdagrad(lr=0.2, weight_decay=0.1, initial_accumulator_value=0.05),
    _fused.Adam(lr=0.05, weight_decay=0.1),
    _fused.AdamW(lr=0.05, weight_decay=0.1),
]


def _setup(spec: _fused.FusedSpec, dtype: torch.dtype, rows: int = 40, dim: int = 19):
    weight = torch.randn(rows, dim, dtype=dtype)
    state = _fused.new_state(spec, weight)
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
def test_fused_update_matches_reference(backend, spec: _fused.FusedSpec, dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
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
def test_segment_update_sums_occurrences_then_updates(backend, spec: _fused.FusedSpec, freq: bool) -> None:  # type: ignore[no-untyped-def]
    weight, state = _setup(spec, torch.float64)
    ids = torch.tensor([5, -1, 5, 3, 39, 3, 3, 0, 5, 7])  # duplicates, a skipped id, padding row 7
    grad_flat = torch.randn(200, dtype=torch.float64)
    src = torch.randint(0, 200 - 19, (10,))
    scale = torch.rand(10, dtype=torch.float64)
    rows, starts, order = _torch_backend.plan(ids, padding_idx=7)
    assert rows.tolist() == [0, 3, 5, 39] and starts.tolist() == [0, 1, 4, 7, 8]
    assert order.tolist() == [7, 3, 5, 6, 0, 2, 8, 4]  # stable: positions ascending per row
    summed = torch.zeros(4, 19, dtype=torch.float64)  # the sum, written out by hand
    for u, r in enumerate(rows.tolist()):
        occ = [j for j in range(10) if ids[j] == r]
        for j in occ:
            summed[u] += scale[j] * grad_flat[src[j]:src[j] + 19]
        if freq:
            summed[u] /= len(occ)
    w_ref, s_ref = _copy(weight, state)
    hyper = spec.hyper(spec.hyperparameters())
    reference.fused_update(w_ref, s_ref, rows, summed, hyper)
    backend.segment_update(weight, state, rows, starts, order, src, scale, grad_flat, hyper, freq)
    assert_close(weight, w_ref)


def _jobs(dtype: torch.dtype, spec: _fused.FusedSpec) -> tuple[list[_fused.TableJob], torch.Tensor]:
    """Three tables sharing one flat gradient (B = 4, widths 5 + 3 + 5 + 5), one table
    with two sources (shared), mean bags, per-sample weights, padding, empty bags."""
    gen = torch.Generator().manual_seed(3)
    grad_flat = torch.randn(4 * 18, dtype=dtype, generator=gen)
    tables = [(30, 5), (9, 3), (25, 5)]
    weights = [torch.randn(r, d, dtype=dtype, generator=gen) for r, d in tables]
    jobs = []
    s0 = _fused.BagSource(torch.tensor([1, 2, 2, 29, 1]), torch.tensor([0, 2, 2, 4, 5]), 0, 18)
    s1 = _fused.BagSource(torch.tensor([0, 8, 8, 8]), torch.tensor([0, 0, 1, 3, 4]), 5, 18, mean=True)
    s2 = _fused.BagSource(torch.tensor([3, 3, 24, 0, 4]), torch.tensor([0, 1, 3, 3, 5]), 8, 18,
                          per_sample_weights=torch.rand(5, dtype=dtype, generator=gen))
    s3 = _fused.BagSource(torch.tensor([24, 7, -1]), torch.tensor([0, 1, 1, 3, 3]), 13, 18)
    for (rows, dim), w, sources, pad in zip(tables, weights, [[s0], [s1], [s2, s3]], [None, 0, 7]):
        jobs.append(_fused.TableJob(w, _fused.new_state(spec, w), pad, False, grad_flat, sources))
    return jobs, grad_flat


@pytest.mark.skipif(_numba_backend is None, reason="numba is not installed")
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
@pytest.mark.parametrize("threads", [1, 2])
def test_numba_run_jobs_matches_generic_reference(spec: _fused.FusedSpec, threads: int) -> None:
    torch.set_num_threads(threads)  # the fixture restores it
    jobs, _ = _jobs(torch.float64, spec)
    expected, _ = _jobs(torch.float64, spec)
    hyper = spec.hyper(spec.hyperparameters())
    _fused.generic_run(reference, expected, hyper)
    _numba_backend.run_jobs(jobs, hyper)
    for job, ref in zip(jobs, expected):
        assert_close(job.weight, ref.weight)
        for name in job.state:
            torch.testing.assert_close(job.state[name], ref.state[name])


@pytest.mark.skipif(_numba_backend is None, reason="numba is not installed")
def test_numba_threads_split_a_large_table_like_one_thread() -> None:
    spec = _fused.RowWiseAdagrad(lr=0.1)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(5000, 16, generator=gen)
        state = _fused.new_state(spec, w)
        ids = torch.randint(0, 5000, (20000,), generator=gen)
        ids[::3] = 17  # a hot row: the split is by cost, not by row count
        grad = torch.randn(2000 * 16, generator=gen)
        job = _fused.TableJob(w, state, None, False, grad,
                              [_fused.BagSource(ids, torch.arange(0, 20001, 10), 0, 16)])
        _numba_backend.run_jobs([job], spec.hyper(spec.hyperparameters()))
        results.append(w)
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)  # same sums, same order
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS[:2], ids=lambda s: s.kind)
def test_job_occurrences_expand_sources(spec: _fused.FusedSpec) -> None:
    jobs, grad_flat = _jobs(torch.float64, spec)
    ids, src, scale = jobs[1].occurrences()  # one mean source: bags [], [0], [8, 8], [8]
    assert ids.tolist() == [0, 8, 8, 8]
    assert src.tolist() == [5 + 18, 5 + 36, 5 + 36, 5 + 54]
    # bag [0] holds only the padding row (no kept id: scale 1, and no update anyway)
    assert scale.tolist() == [1.0, 0.5, 0.5, 1.0]
    ids, src, scale = jobs[2].occurrences()  # psw source then a plain one: ones fill in
    assert scale[5:].tolist() == [1.0, 1.0, 1.0]


def test_select_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert _fused.select_backend(cpu, torch.float16).name == "torch"  # numba has no 16-bit floats
    assert _fused.select_backend(cpu, torch.float32, contiguous=False).name == "torch"
    if _numba_backend is not None:
        assert _fused.select_backend(cpu, torch.float32).name == "numba"
    monkeypatch.setattr(_fused, "_numba_available", lambda: False)
    assert _fused.select_backend(cpu, torch.float32).name == "torch"  # the fallback without numba
    monkeypatch.setenv(_fused.ENV_VAR, "reference")
    assert _fused.select_backend(cpu, torch.float32).name == "reference"
    monkeypatch.setenv(_fused.ENV_VAR, "numba")
    with pytest.raises(RuntimeError, match="numba runs on CPU tensors"):
        _fused.select_backend(torch.device("meta"), torch.float32)


@pytest.mark.parametrize("case", ["sgd", "adagrad", "adam", "adamw"])
def test_reference_update_matches_torch_optim_when_every_row_is_touched(case: str) -> None:
    """The float64 oracle itself against torch.optim: with every row looked up in every
    step, the lazy per-row update is the dense one."""
    lr, wd, eps = 0.05, 0.1, 1e-8
    spec, make = {
        "sgd": (_fused.SGD(lr=lr, weight_decay=wd), lambda p: torch.optim.SGD(p, lr=lr, weight_decay=wd)),
        "adagrad": (_fused.Adagrad(lr=lr, weight_decay=wd, eps=eps, initial_accumulator_value=0.05),
                    lambda p: torch.optim.Adagrad(p, lr=lr, weight_decay=wd, eps=eps, initial_accumulator_value=0.05)),
        "adam": (_fused.Adam(lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9)),
                 lambda p: torch.optim.Adam(p, lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9))),
        "adamw": (_fused.AdamW(lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9)),
                  lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=wd, eps=eps, betas=(0.8, 0.9))),
    }[case]
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    state = _fused.new_state(spec, weight)
    param = torch.nn.Parameter(weight.clone())
    opt = make([param])
    hyper = spec.hyper(spec.hyperparameters())
    for _ in range(3):
        grads = torch.randn(6, 4, dtype=torch.float64, generator=gen)
        reference.fused_update(weight, state, torch.arange(6), grads, hyper)
        param.grad = grads.clone()
        opt.step()
    torch.testing.assert_close(weight, param.detach(), rtol=1e-12, atol=1e-12)
