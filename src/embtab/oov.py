"""Out-of-vocabulary ids: the explicit policies.

An id is out of vocabulary when ``id < 0`` or ``id >= num_embeddings``. torch raises an
``IndexError`` without the id on CPU and hits a device-side assert on CUDA; here the
behaviour is a choice made when the table is built:

``"error"``   raise ``IndexError`` naming the first bad id, its position, how many ids
              were bad and the valid range. On CUDA this costs one host sync per call.
``"padding"`` look up ``padding_idx`` instead.
``"zero"``    a zero vector with no gradient (in a bag the id is dropped, like padding).
``"hash"``    one of ``num_oov_buckets`` extra trainable rows after the in-vocabulary
              rows, chosen by :func:`hash_bucket`.

Backends never see an out-of-range id. After :func:`resolve` every id is a valid row,
or ``-1`` (``SKIP``) under the ``"zero"`` policy, meaning "contributes nothing".
"""

from __future__ import annotations

import torch

SKIP = -1

# MurmurHash3's 64-bit finaliser (fmix64) constants, written as signed int64.
_C1 = 0xFF51AFD7ED558CCD - (1 << 64)
_C2 = 0xC4CEB9FE1A85EC53 - (1 << 64)
_LOW31 = (1 << 31) - 1  # keeps the low 31 bits: `(x >> 33) & _LOW31` is a logical shift
_LOW63 = (1 << 63) - 1


def hash_bucket(ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Stable bucket in ``[0, num_buckets)`` for each id: ``fmix64(id mod 2**64) mod num_buckets``.

    ``fmix64`` is MurmurHash3's 64-bit finaliser. The arithmetic is int64 with
    wrap-around, which torch gives on every device, so the result is the same on every
    run, machine and device; :func:`hash_bucket_py` is its pure-Python twin.
    """
    x = ids.to(torch.int64)
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _C1
    x = x ^ ((x >> 33) & _LOW31)
    x = x * _C2
    x = x ^ ((x >> 33) & _LOW31)
    return (x & _LOW63) % num_buckets


def hash_bucket_py(id_: int, num_buckets: int) -> int:
    """Pure-Python twin of :func:`hash_bucket` for one id (the definition, in unsigned math)."""
    mask = (1 << 64) - 1
    x = id_ & mask
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & mask
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & mask
    x ^= x >> 33
    return (x & _LOW63) % num_buckets


def _raise_out_of_range(ids: torch.Tensor, num_embeddings: int, where: str, shape: torch.Size) -> None:
    bad = (ids < 0) | (ids >= num_embeddings)
    count = int(bad.sum())
    first = int(bad.reshape(-1).nonzero()[0, 0])
    value = int(ids.reshape(-1)[first])
    position = tuple(int(p) for p in torch.unravel_index(torch.tensor(first), shape)) if len(shape) > 1 else first
    raise IndexError(
        f"{where}: id {value} at position {position} is out of range for a table of "
        f"{num_embeddings} rows (valid ids are 0..{num_embeddings - 1}); {count} of "
        f"{ids.numel()} ids are out of range. Fix the ids, or choose a policy with "
        f"oov='padding', 'zero' or 'hash'."
    )


def resolve(
    ids: torch.Tensor,
    num_embeddings: int,
    policy: str,
    padding_idx: int | None,
    num_oov_buckets: int,
    where: str,
    counter: torch.Tensor | None = None,
    shape: torch.Size | None = None,
) -> tuple[torch.Tensor, bool]:
    """Apply ``policy``; return ``(ids, has_skip)``.

    ``has_skip`` is True when the result may hold ``SKIP`` entries. ``counter`` (a 0-d
    int64 tensor on the ids' device) is incremented by the number of out-of-range ids
    without a host sync. ``shape`` is the user's input shape, for error positions.
    """
    if ids.numel() == 0:
        return ids, False
    if ids.device.type == "cpu" or policy == "error":
        # The range answers "is anything out of range?"; the common case stops here.
        if ids.device.type == "cpu":
            view = ids.numpy()  # zero-copy; numpy's min/max beat small torch ops' overhead
            lo_v, hi_v = int(view.min()), int(view.max())
        else:
            lo, hi = torch.aminmax(ids)
            lo_v, hi_v = torch.stack([lo, hi]).tolist()  # one host sync on CUDA
        if lo_v >= 0 and hi_v < num_embeddings:
            return ids, False
        if policy == "error":
            _raise_out_of_range(ids, num_embeddings, where, shape if shape is not None else ids.shape)
    bad = (ids < 0) | (ids >= num_embeddings)
    if counter is not None:
        counter.add_(bad.sum())
    if policy == "padding":
        return torch.where(bad, torch.full_like(ids, padding_idx), ids), False
    if policy == "zero":
        return torch.where(bad, torch.full_like(ids, SKIP), ids), True
    buckets = (num_embeddings + hash_bucket(ids, num_oov_buckets)).to(ids.dtype)
    return torch.where(bad, buckets, ids), False
