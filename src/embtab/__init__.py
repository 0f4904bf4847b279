"""embtab: embedding tables for PyTorch.

Drop-in ``Embedding`` / ``EmbeddingBag`` with exact torch semantics, explicit
out-of-vocabulary policies and init strategies, through an autograd path with a
pure-PyTorch reference implementation behind every faster backend.
"""

from . import functional as functional
from .nn import Embedding as Embedding, EmbeddingBag as EmbeddingBag
from .ids import hash_bucket as hash_bucket
from . import ids as ids
from .ops.registry import backends as backends
from .configs import TableConfig as TableConfig
from .nn import EmbeddingBagCollection as EmbeddingBagCollection
from . import optim as optim
from .vocab import Vocab as Vocab
from . import vectors as vectors
from .quant.modules import (
    QuantizedEmbedding as QuantizedEmbedding, QuantizedEmbeddingBag as QuantizedEmbeddingBag,
    dequantize as dequantize, load_quantized as load_quantized, quantize as quantize, save_quantized as save_quantized,
)


def load_run(path, **kwargs):  # type: ignore[no-untyped-def]
    """A trained run (a run folder, or a model file written by ``embtab export``), ready to
    ``predict``; see :func:`embtab.apps.serve.load_run`."""
    from .apps.serve import load_run as _load_run

    return _load_run(path, **kwargs)


__version__ = "0.1.0"

__all__ = ["Embedding", "EmbeddingBag", "functional", "hash_bucket", "Vocab", "vectors", "__version__",
           "TableConfig", "EmbeddingBagCollection", "optim", "ids", "backends", "quantize", "dequantize",
           "save_quantized", "load_quantized", "load_run", "QuantizedEmbedding", "QuantizedEmbeddingBag"]
