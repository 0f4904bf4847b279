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


# --- seeded hashes: several independent hashes of one id, and per-id random rows ---------------
#
# ``hash_key(seed, i)`` is the key of hash number ``i`` of a seed; hash ``i`` of an id is
# ``fmix64(id XOR key)``, a function of the raw id (hashes are never chained). Since
# fmix64(0) == 0, the key of (seed 0, hash 0) is 0 and that hash is :func:`hash_bucket`'s:
# ``embtab.ids.Hashed(1, importance=False)`` is exactly the hashing trick of ``oov="hash"``.


def hash_key(seed: int, i: int) -> int:
    """The key (an unsigned 64-bit int) of hash number ``i`` of ``seed``: ``fmix64(fmix64(seed) ^ i)``."""
    return fmix64_py(fmix64_py(seed) ^ (i & _MASK64))


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


def seeded_bucket(ids: Tensor, key: int, num_buckets: int) -> Tensor:
    """``fmix64(id ^ key) mod 2**63 mod num_buckets`` for each id (int64); see :func:`hash_key`."""
    ids = ids.to(torch.int64)
    if key:
        ids = ids ^ _signed(key)
    return (fmix64(ids) & _LOW63) % num_buckets


def seeded_bucket_py(id_: int, key: int, num_buckets: int) -> int:
    """Pure-Python twin of :func:`seeded_bucket` for one id."""
    return (fmix64_py((id_ & _MASK64) ^ key) & _LOW63) % num_buckets


# Per-id rows: element j of id x's row is drawn from h = fmix64(fmix64(x ^ key) + j) (wrapping).
# "normal": the four 16-bit quarters of h summed (Irwin-Hall, n = 4) and centred: mean 0,
# variance 1 after scaling by NORMAL_SCALE, within +-2*sqrt(3); integer arithmetic then one
# float32 multiply, so every device gives the same bits (no libm calls). "uniform": the top
# 24 bits of h as u in [0, 1), then 2u - 1 in [-1, 1), exact in float32.
NORMAL_SCALE = 3.0 ** 0.5 / 65536.0
_QUARTERS_MEAN = 2 * 65535  # mean of the sum of four 16-bit quarters
ROW_KINDS = ("normal", "uniform", "zeros")


def seeded_rows(ids: Tensor, key: int, dim: int, kind: str = "normal", scale: float = 1.0,
                clamp: float | None = None) -> Tensor:
    """``(M, dim)`` float32 rows, a pure function of each id and ``key`` (any device, any order).

    ``kind`` "normal": approximately N(0, scale^2); "uniform": U(-scale, scale); "zeros".
    ``clamp`` (normal only) limits the values to ``[-clamp * scale, clamp * scale]``.
    """
    ids = ids.to(torch.int64).reshape(-1)
    if kind == "zeros" or dim == 0:
        return torch.zeros(ids.numel(), dim, dtype=torch.float32, device=ids.device)
    base = fmix64(ids ^ _signed(key) if key else ids)  # (M,)
    h = fmix64(base.unsqueeze(1) + torch.arange(dim, dtype=torch.int64, device=ids.device))  # (M, dim)
    if kind == "uniform":
        u = ((h >> 40) & 0xFFFFFF).to(torch.float32) * (2.0 ** -24)
        return (u * 2.0 - 1.0) * _f32(scale)
    total = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + ((h >> 48) & 0xFFFF)
    z = (total - _QUARTERS_MEAN).to(torch.float32) * _f32(NORMAL_SCALE)
    if clamp is not None:
        z = z.clamp(-_f32(clamp), _f32(clamp))
    return z * _f32(scale)


def _f32(x: float) -> float:
    """``x`` rounded to float32 (the multiplier every device uses)."""
    import struct

    return struct.unpack("f", struct.pack("f", x))[0]


def seeded_rows_py(id_: int, key: int, dim: int, kind: str = "normal", scale: float = 1.0,
                   clamp: float | None = None) -> list[float]:
    """Pure-Python twin of :func:`seeded_rows` for one id (float32 values as Python floats)."""
    if kind == "zeros":
        return [0.0] * dim
    base = fmix64_py((id_ & _MASK64) ^ key)
    out = []
    for j in range(dim):
        h = fmix64_py((base + j) & _MASK64)
        if kind == "uniform":
            u = _f32((h >> 40) * 2.0 ** -24)
            out.append(_f32(_f32(u * 2.0 - 1.0) * _f32(scale)))
            continue
        total = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + (h >> 48)
        z = _f32(float(total - _QUARTERS_MEAN) * _f32(NORMAL_SCALE))
        if clamp is not None:
            z = max(-_f32(clamp), min(_f32(clamp), z))
        out.append(_f32(z * _f32(scale)))
    return out


# --- the rank that owns an id of a sharded table -------------------------------------------------
#
# A sharded dynamic table (``embtab.distributed``) gives each id to one rank: ``owner_of(id, W)``,
# the seeded bucket of the id among the ``W`` ranks with the key :data:`SHARD_KEY`. The key is
# ``hash_key(0, 2**32)``, a stream of seed 0 that no table's hashes use (they number their
# streams from 0 up), so which rank owns an id is independent of the rows, buckets and fresh
# values the table's own hashes give it.

SHARD_KEY = hash_key(0, 1 << 32)


def owner_of(ids: Tensor, world_size: int) -> Tensor:
    """The rank in ``[0, world_size)`` that owns each id of a sharded dynamic table (int64):
    ``seeded_bucket(id, SHARD_KEY, world_size)``; stable across runs, machines and devices."""
    return seeded_bucket(ids, SHARD_KEY, world_size)


def owner_of_py(id_: int, world_size: int) -> int:
    """Pure-Python twin of :func:`owner_of` for one id."""
    return seeded_bucket_py(id_, SHARD_KEY, world_size)
