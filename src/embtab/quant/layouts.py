"""Quantized row layouts: how one table row is stored as bytes.

Every layout is FBGEMM's (``fbgemm_gpu``'s ``SparseType``), so a table's bytes
interchange with FBGEMM and TorchRec:

============  =====================================================  ======================
layout        one row of ``dim`` values                              bytes per row
============  =====================================================  ======================
``int8``      ``dim`` uint8 codes, then float32 scale, float32 bias  ``dim + 8``
``int4``      codes packed two per byte (low bits first), then       ``ceil(dim / 2) + 4``
              float16 scale, float16 bias
``int2``      codes packed four per byte (low bits first), then      ``ceil(dim / 4) + 4``
              float16 scale, float16 bias
``float16``   ``dim`` float16 values                                 ``2 * dim``
``bfloat16``  ``dim`` bfloat16 values                                ``2 * dim``
============  =====================================================  ======================

A value is ``scale * code + bias`` (each row has its own scale and bias). Any ``dim``
fits: when a packed row's last byte is not full (an odd ``dim`` at 4 bits), its unused
high bits are zero (FBGEMM's own reference quantizer does the same; its fast one
accepts only ``dim`` a multiple of the codes per byte). Multi-byte numbers are
little-endian, as on every machine FBGEMM runs on.

A leaf module (torch only), so that the table spec and the registry can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Layout", "LAYOUTS", "DTYPES", "layout_of"]


@dataclass(frozen=True)
class Layout:
    """One row layout (see the module docstring).

    Attributes:
        name: ``"int8"``, ``"int4"``, ``"int2"``, ``"float16"`` or ``"bfloat16"``.
        bits: bits per value.
        params_dtype: dtype of the row's scale and bias (None: a float layout has none).
        values_dtype: the torch dtype of a float layout's values (None for integer codes).
    """

    name: str
    bits: int
    params_dtype: torch.dtype | None
    values_dtype: torch.dtype | None = None

    @property
    def integer(self) -> bool:
        """Codes with a scale and bias per row (not a float layout)."""
        return self.values_dtype is None

    @property
    def per_byte(self) -> int:
        """Codes per byte (1 for int8 and the float layouts)."""
        return 8 // self.bits if self.bits < 8 else 1

    @property
    def qmax(self) -> int:
        """The largest code: ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def data_bytes(self, dim: int) -> int:
        """Bytes of a row's values (codes), before its scale and bias."""
        if not self.integer:
            return dim * (self.bits // 8)
        return (dim + self.per_byte - 1) // self.per_byte

    def params_bytes(self) -> int:
        """Bytes of a row's scale and bias: 8 (two float32), 4 (two float16) or 0."""
        return 0 if self.params_dtype is None else 2 * torch.empty((), dtype=self.params_dtype).element_size()

    def row_bytes(self, dim: int) -> int:
        """Bytes of one stored row of ``dim`` values."""
        return self.data_bytes(dim) + self.params_bytes()

    def table_bytes(self, rows: int, dim: int) -> int:
        """The analytic size of a table: ``rows * row_bytes(dim)``."""
        return rows * self.row_bytes(dim)


LAYOUTS: dict[str, Layout] = {
    "int8": Layout("int8", 8, torch.float32),
    "int4": Layout("int4", 4, torch.float16),
    "int2": Layout("int2", 2, torch.float16),
    "float16": Layout("float16", 16, None, torch.float16),
    "bfloat16": Layout("bfloat16", 16, None, torch.bfloat16),
}
DTYPES = tuple(LAYOUTS)


def layout_of(name: object, where: str) -> Layout:
    """The layout named ``name`` (a ``torch.float16``/``torch.bfloat16`` dtype is accepted
    for the float layouts); a clear error otherwise."""
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    found = LAYOUTS.get(name) if isinstance(name, str) else None
    if found is None:
        from .. import _checks

        raise _checks.BadArgumentError(
            f"{where}: unknown quantized dtype {name!r}; choose one of {list(DTYPES)} (int8/int4/int2: row-wise "
            f"codes with a scale and bias per row; float16/bfloat16: the values rounded)"
        )
    return found
