"""Quantized word vectors: ``Vectors.quantize("int8")``.

:class:`QuantizedVectors` keeps the matrix as the rows' bytes (``embtab.quant``'s
layouts: int8 is about a quarter of float32) and reads rows back only where they are
used: ``v.vectors`` is a :class:`QuantizedRows`, which dequantizes the rows an index or
slice names (``v.vectors[i]``, ``v.vectors[a:b]``, ``v.vectors[ids]``), as
``most_similar`` and the evaluations read the matrix block by block. The whole float
matrix is :meth:`QuantizedVectors.dequantize`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..quant import reference
from ..quant.layouts import Layout, layout_of
from .core import Vectors

# Rows read back at a time when all are needed (norms): bounds the float32 temporaries.
_BLOCK_ROWS = 65536


class QuantizedRows:
    """The ``(n, dim)`` matrix of quantized vectors, read back (float32) where indexed."""

    dtype = torch.float32

    def __init__(self, data: Tensor, layout: Layout, dim: int) -> None:
        self.data, self.layout, self._dim = data, layout, dim

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.data.shape[0], self._dim))

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def ndim(self) -> int:
        return 2

    def dim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, tuple):
            raise TypeError("QuantizedVectors.vectors takes a row index, slice or index tensor (then index the "
                            "rows it returns)")
        rows = self.data[key]
        if rows.dim() == 1:
            return reference.dequantize_rows(rows.unsqueeze(0), self.layout, self._dim)[0]
        return reference.dequantize_rows(rows, self.layout, self._dim)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"QuantizedVectors.vectors reads rows back where it is indexed (v.vectors[i], v.vectors[a:b], "
            f"v.vectors[ids]) and has no {name!r}; for the whole float matrix use v.dequantize().vectors"
        )


class QuantizedVectors(Vectors):
    """Vectors whose matrix is stored quantized (see the module docstring); made by :meth:`Vectors.quantize`."""

    vectors: QuantizedRows  # type: ignore[assignment]

    def __init__(self, source: Vectors, dtype: str, method: str = "minmax") -> None:
        from .. import _checks

        where = "Vectors.quantize"
        layout = layout_of(dtype, where)
        _checks.check_quantize_method(method, where)
        _checks.check_quantizable(source.vectors, where)
        self.__dict__.update(source.__dict__)
        self.vectors = QuantizedRows(reference.quantize_rows(source.vectors, layout, method), layout, source.dim)
        self._norms = None

    @property
    def dtype(self) -> str:
        return self.vectors.layout.name

    @property
    def nbytes(self) -> int:
        """Bytes of the stored rows."""
        return self.vectors.data.numel()

    def __repr__(self) -> str:
        return super().__repr__().replace("Vectors(", "QuantizedVectors(", 1).replace(
            ", float32", f", {self.vectors.layout.name}", 1)

    def _norms_of(self) -> Tensor:
        if self._norms is None:
            n = len(self)
            parts = [torch.linalg.vector_norm(self.vectors[s:s + _BLOCK_ROWS], dim=1) for s in range(0, n, _BLOCK_ROWS)]
            self._norms = ((), torch.cat(parts) if parts else torch.zeros(0))
        return self._norms[1]

    def dequantize(self) -> Vectors:
        """The vectors read back, as a float32 :class:`Vectors`."""
        return Vectors(self.tokens, self.vectors[:], format=self.format, source=self.source, _index=self._index,
                       _info=self._info)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Vectors:  # type: ignore[override]
        """The vectors read back as float (``dtype``, default float32) on ``device``."""
        return self.dequantize().to(device=device, dtype=dtype)

    def quantize(self, dtype: str = "int8", *, method: str = "minmax") -> "QuantizedVectors":
        raise ValueError("Vectors.quantize: these vectors are quantized already; quantize the original vectors")

    def save(self, path: Any) -> None:
        """Write the cache of the vectors read back (float32; see :meth:`Vectors.save`)."""
        self.dequantize().save(path)

    def export(self, path: Any, format: str = "word2vec") -> None:
        """Write the vectors read back as text or binary (see :meth:`Vectors.export`)."""
        self.dequantize().export(path, format)
