"""Validation of user input, in one place.

Every public entry point (modules, functionals, collections) checks its arguments
here, so the same mistake raises the same exception type with the same wording
wherever it is made. Messages say what was expected, what arrived and how to fix it.
Never ``assert``: assertions vanish under ``python -O``.

Where torch refuses the same mistake, our exception is also an instance of torch's
class for that case (each error class below derives from both), and the message
contains torch's phrase, so code written as ``except RuntimeError:`` around torch's
calls, or tests that match torch's text, keep working with embtab swapped in.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

OOV_POLICIES = ("error", "padding", "zero", "hash")
BAG_MODES = ("sum", "mean", "max")
INDEX_DTYPES = (torch.int32, torch.int64)


class BadArgumentError(ValueError):
    """A value torch has no counterpart for (an embtab option): a plain ``ValueError``."""


class UnsupportedArgumentError(ValueError, NotImplementedError):
    """An argument combination that torch refuses with ``NotImplementedError``."""


class SizeError(ValueError, RuntimeError):
    """A negative table size (torch: ``RuntimeError``, "Trying to create tensor with negative dimension")."""


class WeightShapeError(ValueError, RuntimeError, AssertionError):
    """A weight that is not 2-D. torch raises ``RuntimeError`` ("'weight' must be 2-D") in
    ``F.embedding``, ``ValueError`` in ``F.embedding_bag`` and ``AssertionError`` in
    ``from_pretrained``; this is all three."""


class WeightDtypeError(TypeError, RuntimeError):
    """A weight of a dtype the lookup cannot use (torch: ``RuntimeError``)."""


class IdsDtypeError(TypeError, RuntimeError):
    """Ids or offsets that are not int32/int64 (torch: ``RuntimeError``)."""


class PaddingIdxError(ValueError, AssertionError, RuntimeError):
    """``padding_idx`` outside the table (torch: ``AssertionError`` in modules and
    ``F.embedding``, ``RuntimeError`` in ``F.embedding_bag``)."""


class OffsetsError(ValueError, RuntimeError):
    """Offsets whose values do not describe bags of the input (torch: ``RuntimeError``)."""


class PerSampleWeightsDtypeError(TypeError, RuntimeError):
    """``per_sample_weights`` of another dtype than the weight (torch: ``RuntimeError``)."""


class IdOutOfRangeError(IndexError, RuntimeError):
    """An id outside the table under ``oov="error"`` (torch: ``IndexError`` in
    ``F.embedding``, ``RuntimeError`` in ``F.embedding_bag``)."""


def check_flag(value: Any, name: str, where: str) -> None:
    if not isinstance(value, (bool, int)) or isinstance(value, float):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")


def check_positive_int(value: Any, name: str, where: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r} ({type(value).__name__})")
    value = int(value)
    low = 0 if allow_zero else 1
    if value < low:
        bound = "non-negative" if allow_zero else "positive"
        error = SizeError if value < 0 and name in ("num_embeddings", "embedding_dim") else ValueError
        raise error(
            f"{where}: {name} must be {bound}, got {name}={value} "
            f"(torch: Trying to create tensor with negative dimension)"
            if error is SizeError else f"{where}: {name} must be {bound}, got {name}={value}"
        )
    return value


def check_weight(weight: Any, where: str, name: str = "weight", *, pooled: bool = False) -> None:
    """A 2-D tensor. Integer tables are allowed for unpooled lookups (looked up, never
    differentiated), as in torch; bags need floats (torch's kernels reduce in the weight's type)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise WeightShapeError(
            f"{where}: {name} must be 2-D (num_rows, embedding_dim), got a tensor of shape "
            f"{tuple(weight.shape)} ('weight' must be 2-D; weight has to be a 2D Tensor; "
            f"Embeddings parameter is expected to be 2-dimensional)"
        )
    if weight.is_complex() or (pooled and not weight.is_floating_point()):
        raise WeightDtypeError(
            f"{where}: {name} must be a floating-point tensor{'' if pooled else ' or an integer one'}, got "
            f"{weight.dtype}; convert it with {name}.float() (Expected tensor for argument #1 'weight' to have "
            f"one of the following scalar types: Half, BFloat16, Float, Double)"
        )


def check_ids(ids: Any, name: str, where: str) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"{where}: {name} must be a torch.Tensor of int64 or int32 ids, "
            f"got {type(ids).__name__}; wrap it with torch.as_tensor({name})"
        )
    if ids.dtype not in INDEX_DTYPES:
        raise IdsDtypeError(
            f"{where}: {name} must hold int64 or int32 ids, got dtype {ids.dtype}; convert it with "
            f"{name}.long() (Expected tensor for argument #1 'indices' to have one of the following "
            f"scalar types: Long, Int)"
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
        raise BadArgumentError(f"{where}: oov must be one of {OOV_POLICIES}, got oov={oov!r}")
    buckets = check_positive_int(num_oov_buckets, "num_oov_buckets", where, allow_zero=True)
    if oov == "hash" and buckets < 1:
        raise BadArgumentError(
            f"{where}: oov='hash' needs num_oov_buckets >= 1 extra rows to hash "
            f"out-of-range ids into, got num_oov_buckets={buckets}"
        )
    if oov != "hash" and buckets != 0:
        raise BadArgumentError(
            f"{where}: num_oov_buckets={buckets} is only used with oov='hash', "
            f"got oov={oov!r}; pass oov='hash' or drop num_oov_buckets"
        )
    if oov == "padding" and padding_idx is None:
        raise BadArgumentError(
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
        raise PaddingIdxError(
            f"{where}: padding_idx must be within num_embeddings, i.e. in "
            f"[{-num_embeddings}, {num_embeddings - 1}], got padding_idx={padding_idx} (torch: Padding_idx "
            f"must be within num_embeddings; padding_idx must be within the number of embeddings)"
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
    if not norm_type > 0:  # also NaN; torch silently skips the renorm for these
        raise ValueError(
            f"{where}: norm_type must be > 0 (the p of a p-norm; inf for the max-norm), got norm_type={norm_type}"
        )


def num_embeddings_of(rows: int, extra_rows: int, where: str) -> int:
    """In-vocabulary rows of a weight of ``rows`` rows whose last ``extra_rows`` are hash buckets."""
    if rows < extra_rows:
        raise ValueError(
            f"{where}: weight has {rows} rows, too few for num_oov_buckets={extra_rows} hash buckets"
        )
    return rows - extra_rows


def check_sparse(sparse: Any, scale_grad_by_freq: Any, where: str) -> None:
    if sparse and scale_grad_by_freq:
        raise ValueError(
            f"{where}: scale_grad_by_freq=True is not supported with sparse=True gradients "
            f"(torch fails in backward); use sparse=False or drop scale_grad_by_freq"
        )


def check_bag_mode(mode: Any, scale_grad_by_freq: bool, sparse: bool, where: str) -> None:
    if mode not in BAG_MODES:
        raise ValueError(f"{where}: mode must be one of {BAG_MODES}, got mode={mode!r} "
                         f"(mode has to be one of sum, mean or max)")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError(
            f"{where}: mode='max' does not support scale_grad_by_freq=True "
            f"(torch refuses it too: max mode does not support scaling the gradient by the frequency); "
            f"use mode='sum' or 'mean'"
        )
    if mode == "max" and sparse:
        raise ValueError(
            f"{where}: mode='max' does not support sparse=True gradients "
            f"(torch refuses it too: max mode does not support sparse weights); use sparse=False or mode='sum'/'mean'"
        )


def check_per_sample_weights(
    per_sample_weights: Any, input: torch.Tensor, weight: torch.Tensor, mode: str, where: str,
    dtype: torch.dtype | None = None,
) -> None:
    """``dtype``: the dtype of the table's values when it is not the weight's (a quantized
    table's bytes are read as float32)."""
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
            f"{where}: per_sample_weights must have the same shape as the input "
            f"{tuple(input.shape)}, got {tuple(per_sample_weights.shape)}"
        )
    expected = weight.dtype if dtype is None else dtype
    if per_sample_weights.dtype != expected:
        raise PerSampleWeightsDtypeError(
            f"{where}: per_sample_weights must have the {'weight' if dtype is None else 'table value'}'s dtype {expected}, "
            f"got {per_sample_weights.dtype}; convert with per_sample_weights.to({'weight.dtype' if dtype is None else expected}) "
            f"(Expected tensor for argument #1 'weight' to have the same type as tensor for "
            f"argument #1 'per_sample_weights')"
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
            f"got a tensor of shape {tuple(input.shape)} (input has to be 1D or 2D Tensor)"
        )
    if offsets is None:
        raise ValueError(
            f"{where}: a 1-D input needs offsets, the start of each bag in input; "
            f"for one bag pass offsets=torch.tensor([0]) (offsets has to be a 1D Tensor but got None)"
        )
    check_ids(offsets, "offsets", where)
    if offsets.dim() != 1:
        raise ValueError(f"{where}: offsets must be 1-D, got shape {tuple(offsets.shape)} "
                         f"(offsets has to be a 1D Tensor)")
    if include_last_offset and offsets.numel() < 1:
        raise OffsetsError(
            f"{where}: with include_last_offset=True offsets needs at least one element "
            f"(the end of the last bag), got an empty tensor "
            f"(include_last_offset: number of offset should be at least 1)"
        )
    check_same_device(offsets, input, "offsets", where)


def check_offsets_values(first: int, last: int, min_step: int, num_ids: int, where: str) -> None:
    """Values of the offsets, read from the tensor by the caller (one read for all)."""
    if first != 0:
        raise OffsetsError(
            f"{where}: offsets must start at 0 (the first bag starts at the first id), "
            f"got offsets[0] = {first} (offsets[0] has to be 0)"
        )
    if min_step < 0:
        raise OffsetsError(f"{where}: offsets must be non-decreasing, got a decrease of {-min_step}")
    if last > num_ids:
        raise OffsetsError(
            f"{where}: offsets point past the end of input: offsets[-1] = {last} "
            f"but input has {num_ids} ids (offsets[-1] can not be greater than input's length)"
        )


# --- quantized tables --------------------------------------------------------------------


class QuantizedBackwardError(RuntimeError):
    """A gradient asked of a quantized (inference-only) table."""


def refuse_quantized_backward(layout: str, what: str = "a lookup") -> None:
    """Raise the error of a backward through a quantized table (it has no gradient)."""
    raise QuantizedBackwardError(
        f"embtab: {what} of a quantized table ({layout}) has no gradient: quantized tables are inference only. "
        f"To train, call dequantize() on the model (or the table) for float tables, train them, then quantize "
        f"again; to fine-tune only the layers after the table, leave per_sample_weights without requires_grad"
    )


def check_quantizable(weight: torch.Tensor, where: str) -> None:
    """A float table whose values are all finite (a NaN or inf has no scale and bias)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise TypeError(
            f"{where}: only floating-point tables are quantized, got "
            f"{type(weight).__name__ if not isinstance(weight, torch.Tensor) else f'a {weight.dtype} tensor of shape {tuple(weight.shape)}'}"
        )
    finite = torch.isfinite(weight.detach()).all(1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        count = int((~finite).sum())
        raise ValueError(
            f"{where}: row {row} holds a non-finite value ({count} of {weight.shape[0]} rows do); a row with "
            f"NaN or inf cannot be quantized. Fix or reset those rows first (e.g. weight[rows] = 0)"
        )


def check_quantize_method(method: Any, where: str) -> None:
    if method not in ("minmax", "greedy"):
        raise BadArgumentError(
            f"{where}: method must be 'minmax' (each row's own min and max) or 'greedy' (the range that "
            f"minimises the row's squared error), got method={method!r}"
        )
