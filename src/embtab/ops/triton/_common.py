"""Helpers shared by the Triton launchers: tile shapes, dtypes, layout checks.

Every embedding kernel is a gather or a scatter of whole rows: it moves bytes and does
almost no arithmetic, so the tile shapes below are chosen for memory-level parallelism
(enough bytes in flight per program to cover DRAM latency) and for vector loads (a
row segment of ``BLOCK_D`` contiguous elements per load, the inner dimension of every
tile), not for arithmetic throughput.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Bytes of table data one program keeps in flight per loop step. 16 KiB per program with
# 4 warps lets an H100/H200 SM hold ~8-16 programs, ~128-256 KiB in flight per SM,
# enough to saturate HBM (the anchors' naive gather reached 95% of copy bandwidth with
# 4096 fp32 elements per program).
TILE_BYTES = 16 * 1024
# Widest D tile (elements). Wider rows are split over a second grid axis, so one
# program never holds more than TILE_BYTES of a huge row (D=4096 bf16 -> 2 tiles).
MAX_BLOCK_D = 2048

# Triton element types of the accumulators: float32 for every float type except float64.
_ACC = {
    torch.float16: tl.float32,
    torch.bfloat16: tl.float32,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}
FLOAT_DTYPES = tuple(_ACC)


def interpreted() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors, one program at a time)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def acc_tl(dtype: torch.dtype) -> tl.dtype:
    """The Triton accumulator type for a weight / gradient dtype."""
    try:
        return _ACC[dtype]
    except KeyError:
        raise TypeError(
            f"embtab triton backend: unsupported dtype {dtype}; the kernels handle "
            f"float16, bfloat16, float32 and float64 (use backend='torch' for others)"
        ) from None


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch accumulator dtype (float32 for half types, as in ``ops/reference.py``)."""
    acc_tl(dtype)  # raises for unsupported dtypes
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_size(dtype: torch.dtype) -> int:
    """Bytes of one accumulator element (tiles held in registers are sized by it)."""
    return 8 if dtype == torch.float64 else 4


def block_d(dim: int) -> int:
    """D tile: the whole row when it fits (one masked tile for any D, odd ones included)."""
    return min(triton.next_power_of_2(max(dim, 1)), MAX_BLOCK_D)


def rows_per_program(bd: int, elem_size: int, cap: int = 256) -> int:
    """Rows per program so that one tile is about ``TILE_BYTES`` (a power of two)."""
    rows = max(1, TILE_BYTES // (bd * elem_size))
    return min(1 << (rows.bit_length() - 1), cap)  # round down to a power of two


def num_warps_for(tile_elems: int, per_thread: int = 32) -> int:
    """Warps so that each thread holds about ``per_thread`` elements of a tile (4 to 16).

    A plain gather keeps one tile live (32 per thread: 4 warps for 4096 elements, the
    anchors' shape); kernels that keep several tiles live (a gradient sum plus the
    weight and optimizer state) ask for 16 per thread, so registers do not spill or
    starve occupancy.
    """
    warps = tile_elems // (32 * per_thread)
    return min(16, max(4, 1 << max(0, warps.bit_length() - 1)))


def row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` if its rows are contiguous (stride(1) == 1), else a contiguous copy.

    Kernels take a row stride, so views with padded rows need no copy; only a
    transposed or strided inner dimension does.
    """
    if t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] == 1):
        return t
    return t.contiguous()


def flat_ids(ids: torch.Tensor) -> torch.Tensor:
    """(N,) contiguous view of the ids (int32 or int64 kept as is: kernels widen to int64)."""
    return ids.reshape(-1).contiguous()


def alignment(values: list[int], most: int = 16) -> int:
    """The largest power of two (up to ``most``) dividing every value: what ``tl.multiple_of``
    may promise about element offsets and strides, so loads become vector loads."""
    align = most
    for v in values:
        while v % align:
            align //= 2
    return align


def deterministic() -> bool:
    """Whether ``torch.use_deterministic_algorithms(True)`` asks for reproducible results."""
    return torch.are_deterministic_algorithms_enabled()
