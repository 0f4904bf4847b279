"""Stable integer hashes of ids: the same on every run, machine and device.

``fmix64`` is MurmurHash3's 64-bit finaliser. The arithmetic is int64 with wrap-around,
which torch gives on every device; shifts are made logical by masking. The pure-Python
twins (``*_py``) are the definitions, in unsigned math, that the tests hold the tensor
versions to.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _checks

# fmix64's constants, written as signed int64.
_C1 = 0xFF51AFD7ED558CCD - (1 << 64)
_C2 = 0xC4CEB9FE1A85EC53 - (1 << 64)
_LOW31 = (1 << 31) - 1  # `(x >> 33) & _LOW31` is a logical shift of an int64
_LOW63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


def fmix64(x: Tensor) -> Tensor:
    """MurmurHash3's 64-bit finaliser of int64 ``x`` (as unsigned), as int64 bits."""
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _C1
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _C2
    return x ^ ((x >> 33) & _LOW31)


def hash_bucket(ids: Tensor, num_buckets: int) -> Tensor:
    """Stable bucket in ``[0, num_buckets)`` for each id: ``fmix64(id mod 2**64) mod num_buckets``.

    Example:
        >>> hash_bucket(torch.tensor([0, 1, 12345]), 1000).tolist()
        [0, 796, 753]
    """
    where = "hash_bucket()"
    _checks.check_ids(ids, "ids", where)
    _checks.check_positive_int(num_buckets, "num_buckets", where)
    return bucket_of(ids, num_buckets)


def bucket_of(ids: Tensor, num_buckets: int) -> Tensor:
    """:func:`hash_bucket` without the argument checks (for callers that made them)."""
    return (fmix64(ids.to(torch.int64)) & _LOW63) % num_buckets


def fmix64_py(x: int) -> int:
    """Pure-Python twin of :func:`fmix64` (unsigned result)."""
    x &= _MASK64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
    return x ^ (x >> 33)


def hash_bucket_py(id_: int, num_buckets: int) -> int:
    """Pure-Python twin of :func:`hash_bucket` for one id."""
    return (fmix64_py(id_) & _LOW63) % num_buckets
