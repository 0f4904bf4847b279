"""Quantize and dequantize: FBGEMM's bytes exactly, torch's greedy ranges exactly, error bounds per dtype."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from embtab.quant import LAYOUTS
from embtab.quant import reference as R

try:
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    HAS_FBGEMM = True
except ImportError:  # pragma: no cover - depends on the environment
    HAS_FBGEMM = False
needs_fbgemm = pytest.mark.skipif(not HAS_FBGEMM, reason="fbgemm-gpu-cpu is the oracle for the bytes")

INTEGER = ("int8", "int4", "int2")


def _same_values(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    big = theirs.abs().amax(1, keepdim=True)
    assert bool(((ours - theirs).abs() <= big * 2.0 ** -22).all())


def _rows(rows: int, dim: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, dim, generator=g) * scale
    w[0] = 0.25  # a constant row: range 0
    if rows > 1:
        w[1, 0] = 70_000.0 if scale > 10 else w[1, 0]  # beyond float16's range in a float16 bias/scale row
    return w


@needs_fbgemm
@pytest.mark.parametrize("dim", [4, 8, 16, 64, 100])
@pytest.mark.parametrize("scale", [1e-4, 1.0, 300.0])
def test_int8_bytes_are_fbgemms(dim, scale):
    w = _rows(300, dim, scale, dim)
    theirs = torch.ops.fbgemm.FloatToFused8BitRowwiseQuantized(w)
    ours = R.quantize_rows(w, LAYOUTS["int8"])
    assert ours.shape == (300, LAYOUTS["int8"].row_bytes(dim)) == theirs.shape
    assert torch.equal(ours, theirs)
    # ... and they read back as FBGEMM reads them (its AVX2 kernel fuses scale * code + bias
    # into one rounding, the reference rounds twice: an ulp apart at most).
    _same_values(R.dequantize_rows(ours, LAYOUTS["int8"], dim), torch.ops.fbgemm.Fused8BitRowwiseQuantizedToFloat(theirs))


@needs_fbgemm
@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("dim", [8, 16, 24, 64, 128])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_nbit_bytes_are_fbgemms(bits, dim, scale):
    w = _rows(300, dim, scale, dim + bits)
    layout = LAYOUTS[f"int{bits}"]
    theirs = torch.ops.fbgemm.FloatToFusedNBitRowwiseQuantizedSBHalf(w, bits)
    ours = R.quantize_rows(w, layout)
    assert torch.equal(ours, theirs)
    _same_values(R.dequantize_rows(ours, layout, dim), torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(theirs, bits))


@needs_fbgemm
@pytest.mark.parametrize("dim", [8, 32, 100])
def test_bfloat16_bytes_are_fbgemms(dim):
    w = _rows(200, dim, 1.0, dim)
    theirs = torch.ops.fbgemm.FloatToBfloat16Quantized(w)
    ours = R.quantize_rows(w, LAYOUTS["bfloat16"])
    assert torch.equal(ours.view(torch.int16), theirs.view(torch.int16))
    assert torch.equal(R.dequantize_rows(ours, LAYOUTS["bfloat16"], dim),
                       torch.ops.fbgemm.Bfloat16QuantizedToFloat(theirs))


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("dim", [8, 12, 64])
@pytest.mark.parametrize("scale", [1e-3, 1.0])
@pytest.mark.parametrize("path", ["numba", "torch"])
def test_greedy_codes_are_torchs_optimized_qparams(bits, dim, scale, path, monkeypatch):
    """method='greedy' is torch.ops.quantized's optimized qparams search, to the byte: the
    numba fast path (CPU) and the torch-ops reference alike."""
    if path == "torch":
        monkeypatch.setattr(R, "_fast_greedy", lambda: None)
    else:
        pytest.importorskip("numba")
    w = _rows(400, dim, scale, 7 * dim + bits)
    prepack = torch.ops.quantized.embedding_bag_4bit_prepack if bits == 4 else torch.ops.quantized.embedding_bag_2bit_prepack
    theirs = prepack(w, optimized_qparams=True)
    ours = R.quantize_rows(w, LAYOUTS[f"int{bits}"], "greedy")
    assert torch.equal(ours, theirs)


def _sse(w: torch.Tensor, data: torch.Tensor, name: str) -> torch.Tensor:
    return (R.dequantize_rows(data, LAYOUTS[name], w.shape[1]).double() - w.double()).pow(2).sum(1)


@pytest.mark.parametrize("name", INTEGER)
def test_greedy_fast_path_equals_the_reference(name):
    pytest.importorskip("numba")
    from embtab.quant import cpu

    w = torch.randn(300, 40) * torch.rand(300, 1) * 10
    ours = cpu.greedy_range(w, LAYOUTS[name])
    reference = R.greedy_range(w, w.amin(1), w.amax(1), LAYOUTS[name])
    assert torch.equal(ours[0], reference[0]) and torch.equal(ours[1], reference[1])


@pytest.mark.parametrize("name", INTEGER)
def test_greedy_beats_minmax(name):
    """Never worse on any row; better in total (measured on these rows: int8 by 0.04%, int4
    by 18%, int2 by 6%)."""
    w = torch.randn(500, 32)
    minmax, greedy = (_sse(w, R.quantize_rows(w, LAYOUTS[name], m), name) for m in ("minmax", "greedy"))
    assert bool((greedy <= minmax * (1 + 1e-5) + 1e-12).all())
    assert greedy.sum() < minmax.sum() * {"int8": 1.0, "int4": 0.9, "int2": 0.97}[name]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), dim=st.integers(1, 37), name=st.sampled_from(list(LAYOUTS)),
       log_scale=st.floats(-4, 3), offset=st.floats(-100, 100), seed=st.integers(0, 2**16))
def test_round_trip_error_bounds(rows, dim, name, log_scale, offset, seed):
    """Every value comes back within its dtype's bound: half a step of its row (plus the
    rounding of a float16 scale and bias), or one rounding of the 16-bit float."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, dim, generator=g) * 10.0 ** log_scale + offset
    layout = LAYOUTS[name]
    data = R.quantize_rows(w, layout)
    assert data.dtype == torch.uint8 and data.shape == (rows, layout.row_bytes(dim))
    back = R.dequantize_rows(data, layout, dim).double()
    err = (back - w.double()).abs()
    x = w.double()
    if name == "float16":
        assert bool((err <= x.abs() * 2.0 ** -11 + 2.0 ** -25).all())
    elif name == "bfloat16":
        assert bool((err <= x.abs() * 2.0 ** -8).all())
    else:
        lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
        step = (hi - lo) / layout.qmax
        big = torch.maximum(lo.abs(), hi.abs())
        if name == "int8":  # float32 scale and bias: half a step, plus float32 rounding
            bound = 0.5 * step * (1 + 1e-5) + big * 1e-6
        else:  # float16 scale and bias: their roundings too (and a clamped top code)
            bound = 0.5 * step + layout.qmax * step * 2.0 ** -10 + big * 2.0 ** -10 + 1e-6
        assert bool((err <= bound).all()), float((err - bound).max())
    # Unused high bits of a last partial byte are zero (FBGEMM's reference does the same).
    if layout.integer and dim % layout.per_byte:
        last = data[:, layout.data_bytes(dim) - 1].to(torch.int32)
        assert bool((last >> ((dim % layout.per_byte) * layout.bits) == 0).all())


def test_sizes_are_the_analytic_sizes():
    for name, per_row in (("int8", 64 + 8), ("int4", 32 + 4), ("int2", 16 + 4), ("float16", 128), ("bfloat16", 128)):
        assert LAYOUTS[name].row_bytes(64) == per_row
        assert R.quantize_rows(torch.randn(10, 64), LAYOUTS[name]).numel() == LAYOUTS[name].table_bytes(10, 64)
    assert LAYOUTS["int4"].row_bytes(129) == 65 + 4 and LAYOUTS["int2"].row_bytes(129) == 33 + 4
