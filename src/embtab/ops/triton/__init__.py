"""The ``"triton"`` backend: Triton kernels for CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``).

Importing this package raises ``ImportError`` when Triton is not installed; the
dispatcher (``ops/dispatch.py``) relies on that to decide whether the backend exists.
Same functions and signatures as ``ops/reference.py``; one module per op:

- :mod:`.embedding`: the row gather and the Embedding gradient;
- :mod:`.embedding_bag`: bag reductions (sum / mean / max), their gradients;
- :mod:`.pooled`: every feature of a collection in one launch (ids resolved and input
  checked in the kernel);
- :mod:`.backward`: the row-scatter engine every gradient uses (atomic, or sorted
  segments when determinism is requested);
- :mod:`.renorm`: ``max_norm`` renormalisation in place;
- :mod:`.fused_optim`: backward fused with the optimizer update, table-batched.
"""

from __future__ import annotations

import triton  # noqa: F401  (ImportError here means: no Triton backend)

from .embedding import embedding_backward, embedding_forward
from .embedding_bag import embedding_bag_backward, embedding_bag_forward, embedding_bag_inference
from .pooled import pooled_forward
from .renorm import renorm_

name = "triton"
supports_skip = True

__all__ = [
    "embedding_backward",
    "embedding_bag_backward",
    "embedding_bag_forward",
    "embedding_bag_inference",
    "embedding_forward",
    "name",
    "pooled_forward",
    "renorm_",
    "supports_skip",
]
