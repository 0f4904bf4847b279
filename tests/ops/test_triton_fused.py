"""The Triton fused backward + optimizer against ``ops/update_reference.py`` (float64).

Two tables of different D share one gradient buffer (column slices of a (B, 8) pooled
gradient, as a collection's backward hands them over), so one batched call covers
the table lookup by binary search, per-table D, padding, SKIP ids, mean scales, and a
hot row repeated more than ``PIECE`` times (its partial sums take the second pass).
Under the interpreter on CPU tensors without a GPU, compiled on CUDA with one.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

import embtab  # noqa: E402
from embtab import optim  # noqa: E402
from embtab.ops import update_reference as OR  # noqa: E402
from embtab.ops.common import BagSource, Hyper, TableJob  # noqa: E402
from embtab.optim.optimizer import flat_grads  # noqa: E402
from embtab.optim.specs import FusedSpec, new_state  # noqa: E402
from tests.conftest import TOLERANCES, deterministic, needs_cuda  # noqa: E402

FO = pytest.importorskip("embtab.ops.triton.fused_optim")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SPECS = {
    "sgd": optim.SGD(lr=0.1, weight_decay=0.01),
    "sgd_plain": optim.SGD(lr=0.1),  # the atomic path when determinism is not requested
    "adagrad": optim.Adagrad(lr=0.1, initial_accumulator_value=0.1, weight_decay=0.01),
    "rowwise_adagrad": optim.RowWiseAdagrad(lr=0.1),
    "adam": optim.Adam(lr=0.01, weight_decay=0.01),
    "adamw": optim.AdamW(lr=0.01),
}
DIMS, ROWS, BAGS, LENGTH = (3, 5), (7, 11), 4, 12


def make_tables(spec: FusedSpec, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[dict]]:
    weights = [torch.randn(v, d).to(dtype).to(DEVICE) for v, d in zip(ROWS, DIMS)]
    states = [new_state(spec, w) for w in weights]
    for st in states:  # non-trivial state: the update must read it, not assume zeros
        for s in st.values():
            s.copy_(torch.randint(0, 5, s.shape) if s.dtype == torch.int64 else torch.rand(s.shape) + 0.1)
    return weights, states


def make_jobs(weights: list[torch.Tensor], states: list[dict], dtype: torch.dtype) -> list[TableJob]:
    grad = torch.randn(BAGS, sum(DIMS)).to(dtype).to(DEVICE)  # the pooled gradient (B, 3 + 5)
    flat, bases, strides = flat_grads([grad[:, :DIMS[0]], grad[:, DIMS[0]:]])
    jobs = []
    for t, (mode, pad) in enumerate((("sum", None), ("mean", 1))):
        n = BAGS * LENGTH
        ids = torch.randint(0, ROWS[t], (n,))
        ids[::3] = 2  # 16 of 48 ids on row 2, plus its random hits
        ids[5] = -1  # a SKIP id
        ids = ids.to(DEVICE)
        ends = torch.arange(0, n + 1, LENGTH, device=DEVICE)
        psw = torch.rand(n).to(dtype).to(DEVICE) if mode == "sum" else None
        source = BagSource(ids, ends, bases[t], strides[t], mode == "mean", psw)
        jobs.append(TableJob(weights[t], states[t], pad, False, flat, [source]))
    return jobs


def reference_update(jobs: list[TableJob], hyper: Hyper) -> tuple[list, list]:
    weights = [j.weight.clone() for j in jobs]
    states = [{k: s.clone() for k, s in j.state.items()} for j in jobs]
    OR.run_jobs([TableJob(w, st, j.padding_idx, j.scale_grad_by_freq, j.grad_flat, j.sources)
                 for j, w, st in zip(jobs, weights, states)], hyper)
    return weights, states


def assert_tables_close(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    for a, b in zip(ours, ref):
        if a.dtype == torch.int64:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, **TOLERANCES[a.dtype])


# Determinism only changes the path of plain SGD (atomics vs the sorted reduction).
CASES = [(name, False) for name in SPECS] + [("sgd_plain", True)]


@pytest.mark.parametrize("name,det", CASES, ids=[f"{n}-{'det' if d else 'default'}" for n, d in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_update_matches_reference(name: str, dtype: torch.dtype, det: bool) -> None:
    spec = SPECS[name]
    hyper = spec.hyper(spec.hyperparameters())
    weights, states = make_tables(spec, dtype)
    jobs = make_jobs(weights, states, dtype)
    ref_w, ref_s = reference_update(jobs, hyper)
    with deterministic(det):
        FO.run_jobs(jobs, hyper)
    assert_tables_close(weights, ref_w)
    for st, rst in zip(states, ref_s):
        assert_tables_close([st[k] for k in sorted(st)], [rst[k] for k in sorted(rst)])


@pytest.mark.parametrize("name", ["adagrad", "adam"])
def test_float64_and_scale_grad_by_freq(name: str) -> None:
    spec = SPECS[name]
    hyper = spec.hyper(spec.hyperparameters())
    weights, states = make_tables(spec, torch.float64)
    jobs = make_jobs(weights, states, torch.float64)
    for job in jobs:
        job.scale_grad_by_freq = True
    ref_w, _ = reference_update(jobs, hyper)
    FO.run_jobs(jobs, hyper)
    assert_tables_close(weights, ref_w)


@pytest.mark.parametrize("name", ["rowwise_adagrad", "adamw"])
def test_fused_update_from_summed_rows(name: str) -> None:
    spec = SPECS[name]
    hyper = spec.hyper(spec.hyperparameters())
    weights, states = make_tables(spec, torch.float32)
    w, st = weights[1], states[1]
    rows = torch.tensor([0, 3, 4, 10], device=DEVICE)
    grads = torch.randn(4, DIMS[1], device=DEVICE)
    ref_w, ref_st = w.clone(), {k: s.clone() for k, s in st.items()}
    OR.fused_update(ref_w, ref_st, rows, grads, hyper)
    FO.fused_update(w, st, rows, grads, hyper)
    assert_tables_close([w, *st.values()], [ref_w, *ref_st.values()])


@pytest.mark.cuda
@needs_cuda  # the interpreter runs programs one after another: two runs always agree there
def test_deterministic_mode_is_bitwise_reproducible() -> None:
    spec = SPECS["rowwise_adagrad"]
    hyper = spec.hyper(spec.hyperparameters())
    weights, states = make_tables(spec, torch.float32)
    jobs = make_jobs(weights, states, torch.float32)
    start = [w.clone() for w in weights], [{k: s.clone() for k, s in st.items()} for st in states]
    results = []
    with deterministic(True):
        for _ in range(2):
            for w, w0 in zip(weights, start[0]):
                w.copy_(w0)
            for st, st0 in zip(states, start[1]):
                for k in st:
                    st[k].copy_(st0[k])
            FO.run_jobs(jobs, hyper)
            results.append([w.clone() for w in weights] + [st["sum"].clone() for st in states])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_module_with_fused_optimizer_matches_the_reference_backend() -> None:
    """End to end: embtab.EmbeddingBag(optimizer=...) with the Triton backend (lookups and update)."""
    results = []
    for backend in ("triton", "reference"):
        torch.manual_seed(1)
        bag = embtab.EmbeddingBag(20, 6, mode="mean", padding_idx=0, device=DEVICE, backend=backend,
                                  optimizer=embtab.optim.Adam(lr=0.05))
        ids = torch.tensor([1, 2, 2, 0, 7, 1, 9, 9], device=DEVICE)
        offsets = torch.tensor([0, 3, 3, 6], device=DEVICE)
        for _ in range(2):
            bag(ids, offsets).pow(2).sum().backward()
        results.append((bag.weight.detach().clone(), bag.optim_exp_avg.clone(), bag.optim_step.clone()))
    assert_tables_close(list(results[0]), list(results[1]))


def test_collection_with_fused_optimizer_matches_the_reference_backend() -> None:
    """End to end: a collection of 4 tables (D = 8..11, sum and mean) in one batched update."""
    tables = [embtab.TableConfig(f"t{i}", 30, 8 + i, oov="zero", pooling="mean" if i % 2 else "sum")
              for i in range(4)]
    ids = [torch.randint(-2, 33, (24,), device=DEVICE) for _ in range(4)]  # some out of range: SKIP
    for x in ids:
        x[::2] = 3
    offsets = torch.arange(0, 24, 4, device=DEVICE)
    features = {f"t{i}": (ids[i], offsets) for i in range(4)}
    results = []
    for backend in ("triton", "reference"):
        torch.manual_seed(1)
        ebc = embtab.EmbeddingBagCollection(tables, device=DEVICE, optimizer=embtab.optim.RowWiseAdagrad(lr=0.1),
                                            backend=backend)
        for _ in range(2):
            ebc(features).concat().pow(2).sum().backward()
        bags = list(ebc.embedding_bags.values())
        results.append([b.weight.detach().clone() for b in bags] + [b.optim_sum.clone() for b in bags])
    assert_tables_close(results[0], results[1])


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available(),
                    reason="needs a CUDA device")
@pytest.mark.cuda
def test_gpu_fused_step_has_no_host_sync() -> None:
    spec = SPECS["rowwise_adagrad"]
    hyper = spec.hyper(spec.hyperparameters())
    weights, states = make_tables(spec, torch.float32)
    jobs = make_jobs(weights, states, torch.float32)
    FO.run_jobs(jobs, hyper)  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        FO.run_jobs(jobs, hyper)
    finally:
        torch.cuda.set_sync_debug_mode("default")
