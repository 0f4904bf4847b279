"""Ids to rows: how a table turns the ids it is given into rows of its weight.

Today's kinds are the out-of-vocabulary policies (``oov=`` on every table; see
:mod:`embtab.ids.policies`); :func:`hash_bucket` is their stable hash.
"""

from ._hash import hash_bucket as hash_bucket, hash_bucket_py as hash_bucket_py
from .policies import IdStage as IdStage

__all__ = ["hash_bucket", "hash_bucket_py", "IdStage"]
