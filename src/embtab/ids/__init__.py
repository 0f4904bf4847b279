"""Ids to rows: how a table turns the ids it is given into rows of its weight.

- Out-of-vocabulary policies (``oov=`` on every table; :mod:`embtab.ids.policies`), with
  :func:`hash_bucket`, their stable hash.
- Unbounded id spaces (``ids=`` on every table; any int64 id is valid):
  :class:`Hashed` (hash embeddings: each id pools ``num_hashes`` hashed rows with
  trainable importance weights) and :class:`Dynamic` (each admitted id owns a row while it
  is live: admission :class:`MinCount`, eviction :class:`LRU` / :class:`LFU`, expiry
  :class:`TTL`, rows reset when reassigned).

Example:
    >>> item = embtab.EmbeddingBag(100_000, 64, mode="sum", ids=embtab.ids.Dynamic(evict=embtab.ids.LFU()))
    >>> word = embtab.EmbeddingBag(10_000, 64, mode="mean", ids=embtab.ids.Hashed(2))
"""

from ._hash import (
    hash_bucket as hash_bucket,
    hash_bucket_py as hash_bucket_py,
    hash_key as hash_key,
    seeded_bucket as seeded_bucket,
    seeded_bucket_py as seeded_bucket_py,
    seeded_rows as seeded_rows,
    seeded_rows_py as seeded_rows_py,
)
from .dynamic import (
    LFU as LFU,
    LRU as LRU,
    TTL as TTL,
    Dynamic as Dynamic,
    DynamicIds as DynamicIds,
    MinCount as MinCount,
    normal_rows as normal_rows,
)
from .hashed import Hashed as Hashed, HashedIds as HashedIds
from .policies import IdSpace as IdSpace, IdStage as IdStage

__all__ = ["hash_bucket", "hash_bucket_py", "hash_key", "seeded_bucket", "seeded_bucket_py", "seeded_rows",
           "seeded_rows_py", "IdStage", "IdSpace", "Hashed", "HashedIds", "Dynamic", "DynamicIds", "MinCount",
           "LRU", "LFU", "TTL", "normal_rows"]
