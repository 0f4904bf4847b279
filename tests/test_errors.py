"""Every bad input gets a clear exception, the same type and wording from module and functional.

Where torch refuses the same input, the exception is also an instance of torch's class
(tests/test_torch_errors.py holds each case to torch's own behaviour).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import embtab
from embtab import functional as EF
from embtab._checks import UnsupportedArgumentError

W = torch.randn(10, 3)
IDS = torch.tensor([1, 2, 3, 4])
OFF = torch.tensor([0, 2])

# (name, functional call, module call, exception, message pattern shared by both)
CASES: list[tuple[str, Callable, Callable, type, str]] = [
    ("float ids",
     lambda: EF.embedding(IDS.float(), W), lambda: embtab.Embedding(10, 3)(IDS.float()),
     TypeError, r"input must hold int64 or int32 ids, got dtype torch.float32; convert it with input.long\(\)"),
    ("list ids",
     lambda: EF.embedding([1, 2], W), lambda: embtab.Embedding(10, 3)([1, 2]),
     TypeError, r"input must be a torch.Tensor .* got list"),
    ("padding_idx out of range",
     lambda: EF.embedding(IDS, W, padding_idx=10), lambda: embtab.Embedding(10, 3, padding_idx=10),
     ValueError, r"padding_idx must be within num_embeddings, i.e. in \[-10, 9\], got padding_idx=10"),
    ("negative padding_idx out of range",
     lambda: EF.embedding_bag(IDS, W, OFF, padding_idx=-11), lambda: embtab.EmbeddingBag(10, 3, padding_idx=-11),
     ValueError, r"got padding_idx=-11"),
    ("non-positive max_norm",
     lambda: EF.embedding(IDS, W, max_norm=0.0), lambda: embtab.Embedding(10, 3, max_norm=0.0),
     ValueError, r"max_norm must be positive, got max_norm=0.0"),
    ("unknown oov",
     lambda: EF.embedding(IDS, W, oov="ignore"), lambda: embtab.Embedding(10, 3, oov="ignore"),
     ValueError, r"oov must be one of .*got oov='ignore'"),
    ("padding policy without padding_idx",
     lambda: EF.embedding(IDS, W, oov="padding"), lambda: embtab.Embedding(10, 3, oov="padding"),
     ValueError, r"oov='padding' .* padding_idx is None"),
    ("hash without buckets",
     lambda: EF.embedding(IDS, W, oov="hash"), lambda: embtab.Embedding(10, 3, oov="hash"),
     ValueError, r"oov='hash' needs num_oov_buckets >= 1"),
    ("buckets without hash",
     lambda: EF.embedding(IDS, W, num_oov_buckets=2), lambda: embtab.Embedding(10, 3, num_oov_buckets=2),
     ValueError, r"num_oov_buckets=2 is only used with oov='hash'"),
    ("sparse with scale_grad_by_freq",
     lambda: EF.embedding(IDS, W, sparse=True, scale_grad_by_freq=True),
     lambda: embtab.Embedding(10, 3, sparse=True, scale_grad_by_freq=True),
     ValueError, r"scale_grad_by_freq=True is not supported with sparse=True"),
    ("unknown mode",
     lambda: EF.embedding_bag(IDS, W, OFF, mode="median"), lambda: embtab.EmbeddingBag(10, 3, mode="median"),
     ValueError, r"mode must be one of \('sum', 'mean', 'max'\), got mode='median'"),
    ("max with sparse",
     lambda: EF.embedding_bag(IDS, W, OFF, mode="max", sparse=True),
     lambda: embtab.EmbeddingBag(10, 3, mode="max", sparse=True),
     ValueError, r"mode='max' does not support sparse=True"),
    ("max with scale_grad_by_freq",
     lambda: EF.embedding_bag(IDS, W, OFF, mode="max", scale_grad_by_freq=True),
     lambda: embtab.EmbeddingBag(10, 3, mode="max", scale_grad_by_freq=True),
     ValueError, r"mode='max' does not support scale_grad_by_freq=True"),
    ("offsets not starting at 0",
     lambda: EF.embedding_bag(IDS, W, torch.tensor([3, 4])),
     lambda: embtab.EmbeddingBag(10, 3)(IDS, torch.tensor([3, 4])),
     ValueError, r"offsets must start at 0 .* got offsets\[0\] = 3"),
    ("decreasing offsets",
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0, 3, 1])),
     lambda: embtab.EmbeddingBag(10, 3)(IDS, torch.tensor([0, 3, 1])),
     ValueError, r"offsets must be non-decreasing"),
    ("offsets past the end",
     lambda: EF.embedding_bag(IDS, W, torch.tensor([0, 7])),
     lambda: embtab.EmbeddingBag(10, 3)(IDS, torch.tensor([0, 7])),
     ValueError, r"offsets\[-1\] = 7 but input has 4 ids"),
    ("2-D offsets",
     lambda: EF.embedding_bag(IDS, W, OFF.reshape(1, 2)),
     lambda: embtab.EmbeddingBag(10, 3)(IDS, OFF.reshape(1, 2)),
     ValueError, r"offsets must be 1-D, got shape \(1, 2\)"),
    ("1-D input without offsets",
     lambda: EF.embedding_bag(IDS, W), lambda: embtab.EmbeddingBag(10, 3)(IDS),
     ValueError, r"a 1-D input needs offsets"),
    ("2-D input with offsets",
     lambda: EF.embedding_bag(IDS.reshape(2, 2), W, OFF),
     lambda: embtab.EmbeddingBag(10, 3)(IDS.reshape(2, 2), OFF),
     ValueError, r"input is 2-D \(2, 2\).* offsets must be None"),
    ("3-D bag input",
     lambda: EF.embedding_bag(IDS.reshape(1, 2, 2), W),
     lambda: embtab.EmbeddingBag(10, 3)(IDS.reshape(1, 2, 2)),
     ValueError, r"input must be 1-D \(with offsets\) or 2-D"),
    ("float offsets",
     lambda: EF.embedding_bag(IDS, W, OFF.float()),
     lambda: embtab.EmbeddingBag(10, 3)(IDS, OFF.float()),
     TypeError, r"offsets must hold int64 or int32 ids"),
    ("per_sample_weights with mean",
     lambda: EF.embedding_bag(IDS, W, OFF, mode="mean", per_sample_weights=torch.ones(4)),
     lambda: embtab.EmbeddingBag(10, 3, mode="mean")(IDS, OFF, torch.ones(4)),
     UnsupportedArgumentError, r"per_sample_weights is only supported for mode='sum', got mode='mean'"),
    ("per_sample_weights of the wrong shape",
     lambda: EF.embedding_bag(IDS, W, OFF, mode="sum", per_sample_weights=torch.ones(3)),
     lambda: embtab.EmbeddingBag(10, 3, mode="sum")(IDS, OFF, torch.ones(3)),
     ValueError, r"per_sample_weights must have the same shape as the input \(4,\), got \(3,\)"),
    ("per_sample_weights of another dtype",
     lambda: EF.embedding_bag(IDS, W, OFF, mode="sum", per_sample_weights=torch.ones(4, dtype=torch.float64)),
     lambda: embtab.EmbeddingBag(10, 3, mode="sum")(IDS, OFF, torch.ones(4, dtype=torch.float64)),
     TypeError, r"per_sample_weights must have the weight's dtype torch.float32, got torch.float64"),
    ("unknown backend",
     lambda: EF.embedding(IDS, W, backend="cuda"), lambda: embtab.Embedding(10, 3, backend="cuda"),
     ValueError, r"unknown backend 'cuda'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_module_and_functional_raise_the_same(case: tuple) -> None:
    _, functional, module, exc, pattern = case
    messages = []
    for call in (functional, module):
        with pytest.raises(exc, match=pattern) as info:
            call()
        messages.append((type(info.value), str(info.value).split(": ", 1)[1]))  # drop the "where" prefix
    assert messages[0] == messages[1]


def test_weight_errors() -> None:
    with pytest.raises(ValueError, match=r"weight must be 2-D .* got a tensor of shape \(10,\)"):
        EF.embedding(IDS, torch.randn(10))
    with pytest.raises(TypeError, match=r"weight must be a floating-point tensor or an integer one, got torch.complex64"):
        EF.embedding(IDS, torch.ones(10, 3, dtype=torch.complex64))
    with pytest.raises(RuntimeError, match=r"weight must be a floating-point tensor, got torch.int64.*Half, BFloat16"):
        EF.embedding_bag(IDS, torch.ones(10, 3, dtype=torch.long), OFF)
    with pytest.raises(ValueError, match=r"_weight must have shape .* \(10, 3\), got \(9, 3\)"):
        embtab.Embedding(10, 3, _weight=torch.randn(9, 3))
    with pytest.raises(ValueError, match=r"embeddings must be 2-D"):
        embtab.Embedding.from_pretrained(torch.randn(3))


@pytest.mark.parametrize("bad, error, reason", [
    (-3, ValueError, "must be non-negative"), (2.5, TypeError, "must be an int"), (True, TypeError, "must be an int"),
])
def test_sizes_must_be_non_negative_ints(bad: object, error: type, reason: str) -> None:
    with pytest.raises(error, match=f"num_embeddings {reason}, got"):
        embtab.Embedding(bad, 3)  # type: ignore[arg-type]
    with pytest.raises(error, match=f"embedding_dim {reason}, got"):
        embtab.EmbeddingBag(3, bad)  # type: ignore[arg-type]


def test_unsupported_error_is_also_torchs_exception_type() -> None:
    """Code written for torch (which raises NotImplementedError here) still catches ours."""
    with pytest.raises(NotImplementedError):
        EF.embedding_bag(IDS, W, OFF, mode="max", per_sample_weights=torch.ones(4))


def test_explicit_triton_backend_without_gpu_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from embtab.ops import registry

    # Imported (its kernels decorated) under the interpreter first: a kernel module imported
    # without it would hold compiled kernels that later interpreted tests cannot launch.
    pytest.importorskip("embtab.ops.triton")
    pytest.importorskip("embtab.ops.triton.fused_optim")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    registry.refresh()  # choices are made once per (backend, device, dtype): forget the interpreter's
    try:
        with pytest.raises(RuntimeError, match=r"runs contiguous float tables on CUDA.*TRITON_INTERPRET=1"):
            EF.embedding(IDS, W, backend="triton")
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_env_var_overrides_auto(set_backend) -> None:  # type: ignore[no-untyped-def]
    from embtab.ops import registry

    cpu = torch.device("cpu")
    set_backend("reference")
    assert registry.select("auto", cpu, torch.float32).lookup.name == "reference"
    assert registry.select("torch", cpu, torch.float32).lookup.name == "torch"  # explicit stays explicit
    set_backend("bogus")
    with pytest.raises(ValueError, match="EMBTAB_BACKEND"):
        registry.select("auto", cpu, torch.float32)
    set_backend("")
    assert registry.select("auto", cpu, torch.float32).lookup.name == "torch"


@pytest.mark.parametrize("backend", ["auto", "torch"])  # the order check of numba / of numpy
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("offsets", [[0, 3, 1], [0, 2, 2, 1], [0, 4, 2]])
def test_decreasing_offsets_are_refused_on_every_path(offsets: list[int], grad: bool, threads: int, backend: str,
                                                      set_backend) -> None:
    """ATen's one-thread CPU path reads decreasing offsets without a word: we check them."""
    set_backend(backend)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for call in (lambda w: EF.embedding_bag(IDS, w, torch.tensor(offsets), mode="sum"),
                     lambda w: embtab.EmbeddingBag.from_pretrained(w, freeze=False, optimizer=embtab.optim.SGD())(
                         IDS, torch.tensor(offsets))):
            with pytest.raises(ValueError, match=r"offsets must be non-decreasing"):
                with torch.set_grad_enabled(grad):
                    call(W.clone().requires_grad_(grad))
    finally:
        torch.set_num_threads(before)


def test_ids_on_another_device_are_refused() -> None:
    meta_ids = torch.tensor([1, 2], device="meta")
    with pytest.raises(ValueError, match=r"input is on meta but weight is on cpu; move it with input.to\(weight.device\)"):
        EF.embedding(meta_ids, W)


@given(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12), st.sampled_from([np.int32, np.int64]))
@settings(max_examples=60, deadline=None)
def test_the_numba_order_check_is_the_numpy_one(offsets: list[int], dtype: type) -> None:
    numba_update = pytest.importorskip("embtab.ops.numba.update")
    from embtab.ops.common import offsets_decrease

    view = np.array(offsets, dtype=dtype)
    assert numba_update.offsets_decrease(view) == offsets_decrease(view) == any(
        b < a for a, b in zip(offsets, offsets[1:]))
