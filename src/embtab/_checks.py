"""Validation of user input, in one place.

Every public entry point (modules, functionals, collections) checks its arguments
here, so the same mistake raises the same exception type with the same wording
wherever it is made. Messages say what was expected, what arrived and how to fix it.
Never ``assert``: assertions vanish under ``python -O``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

OOV_POLICIES = ("error", "padding", "zero", "hash")
BAG_MODES = ("sum", "mean", "max")
INDEX_DTYPES = (torch.int32, torch.int64)


class UnsupportedArgumentError(ValueError, NotImplementedError):
    """An argument combination that torch refuses with ``NotImplementedError``.

    It is also a ``ValueError`` (our convention for bad input), so code written
    against either library catches it.
    """


def check_positive_int(value: Any, name: str, where: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    low = 0 if allow_zero else 1
    if value < low:
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{where}: {name} must be {bound}, got {name}={value}")
    return value


def check_weight(weight: Any, where: str, name: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(
            f"{where}: {name} must be 2-D (num_rows, embedding_dim), "
            f"got a tensor of shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise TypeError(
            f"{where}: {name} must be a floating-point tensor, got {weight.dtype}; "
            f"convert it with {name}.float()"
        )


def check_ids(ids: Any, name: str, where: str) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"{where}: {name} must be a torch.Tensor of int64 or int32 ids, "
            f"got {type(ids).__name__}; wrap it with torch.as_tensor({name})"
        )
    if ids.dtype not in INDEX_DTYPES:
        raise TypeError(
            f"{where}: {name} must hold int64 or int32 ids, got dtype {ids.dtype}; "
            f"convert it with {name}.long()"
        )


def check_same_device(ids: torch.Tensor, weight: torch.Tensor, name: str, where: str) -> None:
    if ids.device != weight.device:
        raise ValueError(
            f"{where}: {name} is on {ids.device} but weight is on {weight.device}; "
            f"move it with {name}.to(weight.device)"
        )


def check_oov(oov: Any, num_oov_buckets: Any, padding_idx: int | None, where: str) -> int:
    """Check the out-of-vocabulary policy; return ``num_oov_buckets`` as an int."""
    if oov not in OOV_POLICIES:
        raise ValueError(f"{where}: oov must be one of {OOV_POLICIES}, got oov={oov!r}")
    buckets = check_positive_int(num_oov_buckets, "num_oov_buckets", where, allow_zero=True)
    if oov == "hash" and buckets < 1:
        raise ValueError(
            f"{where}: oov='hash' needs num_oov_buckets >= 1 extra rows to hash "
            f"out-of-range ids into, got num_oov_buckets={buckets}"
        )
    if oov != "hash" and buckets != 0:
        raise ValueError(
            f"{where}: num_oov_buckets={buckets} is only used with oov='hash', "
            f"got oov={oov!r}; pass oov='hash' or drop num_oov_buckets"
        )
    if oov == "padding" and padding_idx is None:
        raise ValueError(
            f"{where}: oov='padding' maps out-of-range ids to padding_idx, "
            f"but padding_idx is None; pass padding_idx=<row> or choose oov='zero'"
        )
    return buckets


def normalize_padding_idx(padding_idx: Any, num_embeddings: int, where: str) -> int | None:
    """Negative values count from the end, as in torch; returns a row in [0, num_embeddings)."""
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"{where}: padding_idx must be an int or None, got {padding_idx!r}")
    padding_idx = int(padding_idx)
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"{where}: padding_idx must be within num_embeddings, i.e. in "
            f"[{-num_embeddings}, {num_embeddings - 1}], got padding_idx={padding_idx}"
        )
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def check_max_norm(max_norm: Any, norm_type: Any, where: str) -> None:
    if max_norm is not None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
            raise TypeError(f"{where}: max_norm must be a float or None, got {max_norm!r}")
        if not max_norm > 0 or math.isnan(max_norm):
            raise ValueError(f"{where}: max_norm must be positive, got max_norm={max_norm}")
    if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
        raise TypeError(f"{where}: norm_type must be a float, got {norm_type!r}")


def num_embeddings_of(rows: int, num_oov_buckets: int, where: str) -> int:
    """In-vocabulary rows of a weight of ``rows`` rows whose last ``num_oov_buckets`` are hash buckets."""
    if rows < num_oov_buckets + 1:
        raise ValueError(
            f"{where}: weight has {rows} rows, too few for num_oov_buckets={num_oov_buckets} "
            f"hash buckets plus at least one in-vocabulary row"
        )
    return rows - num_oov_buckets


def check_sparse(sparse: Any, scale_grad_by_freq: Any, where: str) -> None:
    if sparse and scale_grad_by_freq:
        raise ValueError(
            f"{where}: scale_grad_by_freq=True is not supported with sparse=True gradients "
            f"(torch fails in backward); use sparse=False or drop scale_grad_by_freq"
        )


def check_bag_mode(mode: Any, scale_grad_by_freq: bool, sparse: bool, where: str) -> None:
    if mode not in BAG_MODES:
        raise ValueError(f"{where}: mode must be one of {BAG_MODES}, got mode={mode!r}")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError(
            f"{where}: mode='max' does not support scale_grad_by_freq=True "
            f"(torch refuses it too); use mode='sum' or 'mean'"
        )
    if mode == "max" and sparse:
        raise ValueError(
            f"{where}: mode='max' does not support sparse=True gradients "
            f"(torch refuses it too); use sparse=False or mode='sum'/'mean'"
        )


def check_per_sample_weights(
    per_sample_weights: Any, input: torch.Tensor, weight: torch.Tensor, mode: str, where: str
) -> None:
    if per_sample_weights is None:
        return
    if not isinstance(per_sample_weights, torch.Tensor):
        raise TypeError(
            f"{where}: per_sample_weights must be a torch.Tensor or None, "
            f"got {type(per_sample_weights).__name__}"
        )
    if mode != "sum":
        raise UnsupportedArgumentError(
            f"{where}: per_sample_weights is only supported for mode='sum', got mode={mode!r}"
        )
    if per_sample_weights.shape != input.shape:
        raise ValueError(
            f"{where}: per_sample_weights must have the same shape as input "
            f"{tuple(input.shape)}, got {tuple(per_sample_weights.shape)}"
        )
    if per_sample_weights.dtype != weight.dtype:
        raise TypeError(
            f"{where}: per_sample_weights must have the weight's dtype {weight.dtype}, "
            f"got {per_sample_weights.dtype}; convert with per_sample_weights.to(weight.dtype)"
        )
    check_same_device(per_sample_weights, weight, "per_sample_weights", where)


def check_offsets_shape(input: torch.Tensor, offsets: Any, include_last_offset: bool, where: str) -> None:
    """Shape and dtype of ``offsets`` given the input's rank (values are checked later)."""
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(
                f"{where}: input is 2-D {tuple(input.shape)}, a batch of fixed-length bags, "
                f"so offsets must be None; pass a 1-D input with offsets for bags of varying length"
            )
        return
    if input.dim() != 1:
        raise ValueError(
            f"{where}: input must be 1-D (with offsets) or 2-D (B, L), "
            f"got a tensor of shape {tuple(input.shape)}"
        )
    if offsets is None:
        raise ValueError(
            f"{where}: a 1-D input needs offsets, the start of each bag in input; "
            f"for one bag pass offsets=torch.tensor([0])"
        )
    check_ids(offsets, "offsets", where)
    if offsets.dim() != 1:
        raise ValueError(f"{where}: offsets must be 1-D, got shape {tuple(offsets.shape)}")
    if include_last_offset and offsets.numel() < 1:
        raise ValueError(
            f"{where}: with include_last_offset=True offsets needs at least one element "
            f"(the end of the last bag), got an empty tensor"
        )
    check_same_device(offsets, input, "offsets", where)


def check_offsets_values(first: int, last: int, min_step: int, num_ids: int, where: str) -> None:
    """Values of the offsets, read from the tensor by the caller (one read for all).

    With ``include_last_offset=True`` a last offset below the number of ids ends the
    last bag early and the trailing ids are ignored, as in torch.
    """
    if first != 0:
        raise ValueError(
            f"{where}: offsets must start at 0 (the first bag starts at the first id), "
            f"got offsets[0] = {first}"
        )
    if min_step < 0:
        raise ValueError(f"{where}: offsets must be non-decreasing, got a decrease of {-min_step}")
    if last > num_ids:
        raise ValueError(
            f"{where}: offsets point past the end of input: offsets[-1] = {last} "
            f"but input has {num_ids} ids"
        )
