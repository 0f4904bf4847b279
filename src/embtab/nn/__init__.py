"""Modules: thin holders of state whose forward is one functional call."""

from .embedding import Embedding as Embedding
from .embedding_bag import EmbeddingBag as EmbeddingBag
from .collection import EmbeddingBagCollection as EmbeddingBagCollection, PooledEmbeddings as PooledEmbeddings

__all__ = ["Embedding", "EmbeddingBag", "EmbeddingBagCollection", "PooledEmbeddings"]
