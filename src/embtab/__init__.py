"""embtab: embedding tables for PyTorch.

Drop-in ``Embedding`` / ``EmbeddingBag`` with exact torch semantics, explicit
out-of-vocabulary policies and init strategies, through an autograd path with a
pure-PyTorch reference implementation behind every faster backend.
"""

from . import functional as functional
from .nn import Embedding as Embedding, EmbeddingBag as EmbeddingBag
from .oov import hash_bucket as hash_bucket

__version__ = "0.1.0"

__all__ = ["Embedding", "EmbeddingBag", "functional", "hash_bucket", "__version__"]
