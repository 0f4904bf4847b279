"""Quantized tables: rows stored in 8, 4 or 2 bits (a scale and bias per row) or in 16-bit floats.

- :mod:`.layouts`: the row layouts (FBGEMM's fused row-wise formats) and their sizes;
- :mod:`.reference`: quantize, dequantize and look up in torch ops (the oracle);
- :mod:`.cpu`: the CPU lookups (numba), :mod:`.triton`: the CUDA lookups (Triton);
- :mod:`.lookup`: what the registry hands the lookup pipeline for a quantized table;
- :mod:`.modules`: ``QuantizedEmbedding``, ``QuantizedEmbeddingBag``, and
  ``embtab.quantize`` / ``dequantize`` / ``save_quantized`` / ``load_quantized``.

This package's ``__init__`` imports only the layouts: the table spec imports them while
``embtab.nn`` is still loading (the modules import ``embtab.nn``).
"""

from .layouts import DTYPES as DTYPES, LAYOUTS as LAYOUTS, Layout as Layout, layout_of as layout_of

__all__ = ["DTYPES", "LAYOUTS", "Layout", "layout_of"]
