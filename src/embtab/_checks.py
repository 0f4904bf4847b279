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


# --- sharding (embtab.distributed) ----------------------------------------------------------


def check_rank(rank: Any, world_size: int, where: str) -> int:
    """A rank the job has: an int in ``[0, world_size)``."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"{where}: a rank must be an int, got {rank!r} ({type(rank).__name__})")
    if not 0 <= int(rank) < world_size:
        raise ValueError(
            f"{where}: rank {rank} does not exist: the job has ranks 0..{world_size - 1} (world size "
            f"{world_size}); choose a rank below {world_size}, or launch more processes"
        )
    return int(rank)


def check_plan_tables(tables: list[str], planned: list[str], unknown_ok: bool = False) -> None:
    """A plan names every table of the collection (and, unless ``unknown_ok``, no other)."""
    missing = [t for t in tables if t not in planned]
    if missing:
        raise ValueError(
            f"ShardingPlan: table {missing[0]!r} has no sharding kind"
            + (f" (nor {missing[1:]})" if len(missing) > 1 else "")
            + f"; add it to the plan, e.g. {{{missing[0]!r}: ed.row_wise()}}, or build the plan with "
            f"ed.plan(tables, world_size)"
        )
    unknown = [t for t in planned if t not in tables]
    if unknown and not unknown_ok:
        raise ValueError(
            f"ShardingPlan: table {unknown[0]!r} is not a table of the collection (its tables: {tables}); "
            f"remove it from the plan or correct its name"
        )


def check_fits(table: str, rank: int, table_bytes: int, rank_bytes: int, memory_per_rank: int) -> None:
    """A table's shard on ``rank`` fits ``memory_per_rank`` with what the rank holds already."""
    if rank_bytes > memory_per_rank:
        raise ValueError(
            f"ShardingPlan: table {table!r} does not fit rank {rank}: its shard there takes {table_bytes:,} bytes "
            f"(weights and optimizer state), which brings the rank to {rank_bytes:,} bytes, above "
            f"memory_per_rank={memory_per_rank:,}; raise memory_per_rank, launch more ranks, or shard the "
            f"table over more ranks (ed.row_wise())"
        )


def check_column_ranks(ranks: Any, dim: int | None, where: str) -> tuple[int, ...]:
    """Column-wise ranks: a non-empty list of distinct ints, no more than the table's dim."""
    if isinstance(ranks, (str, bytes)) or not hasattr(ranks, "__iter__"):
        raise TypeError(f"{where}: ranks must be a list of ranks, e.g. ranks=[0, 1], got {ranks!r}")
    out = tuple(ranks)
    if not out:
        raise ValueError(f"{where}: ranks must name at least one rank, got an empty list")
    for r in out:
        if isinstance(r, bool) or not isinstance(r, numbers.Integral):
            raise TypeError(f"{where}: a rank must be an int, got {r!r} ({type(r).__name__})")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: ranks {list(out)} name a rank twice; each column shard goes to another rank")
    if dim is not None and len(out) > dim:
        raise ValueError(f"{where}: {len(out)} column shards for a table of dim {dim}; use at most {dim} ranks")
    return tuple(int(r) for r in out)


def refuse_id_space_kind(table: str, kind: str, ids: Any, reason: str | None) -> None:
    """A sharding kind that cannot shard a table with ``ids=`` (``reason``: why, and what to use)."""
    if reason is None:
        reason = (f"no sharding of {type(ids).__name__} tables is registered for this kind; shard the table "
                  f"ed.row_wise() or ed.table_wise(rank=...)")
    raise UnsupportedArgumentError(f"ShardingPlan: table {table!r} ({kind}) has ids={ids!r}: {reason}")


def check_capacity_per_rank(table: str, kind: str, capacity: int, world_size: int) -> None:
    """A dynamic table split over ``world_size`` ranks gives each rank a share of its capacity."""
    if capacity < world_size:
        raise ValueError(
            f"ShardingPlan: table {table!r} ({kind}): a dynamic table's capacity is split over the ranks, but "
            f"num_embeddings={capacity} gives some of the {world_size} ranks no row; use ed.table_wise(rank=...), "
            f"or num_embeddings >= {world_size}"
        )


def check_owned_capacity(table: str, rank: int, world_size: int, owned: int, capacity: int, prefix: str) -> None:
    """A rank's piece of a sharded dynamic table holds the live ids it owns in a loaded state."""
    if owned > capacity:
        raise ValueError(
            f"ShardedEmbeddingBagCollection.load_state_dict: {prefix}ids.ids holds {owned} live ids that rank {rank} "
            f"of {world_size} owns (table {table!r}), more than its share of the capacity, {capacity} rows; build "
            f"the table with a larger num_embeddings, or load it at another world size"
        )


def check_same_features(by_rank: list[tuple[list[str], int]], features: list[str], where: str) -> None:
    """Every rank's batch names the same features: ``by_rank[r]`` is (the collection's
    features rank r named, how many other names it gave)."""
    if len({(tuple(f), u) for f, u in by_rank}) <= 1:
        return
    detail = "; ".join(f"rank {r}: {names}" + (f" and {u} unknown name(s)" if u else "")
                       for r, (names, u) in enumerate(by_rank))
    raise ValueError(
        f"{where}: the ranks' batches name different features ({detail}); every rank must pass every feature "
        f"of the collection {features} at every step (a rank with nothing to look up passes empty bags)"
    )


# --- unbounded id spaces (embtab.ids.Hashed, embtab.ids.Dynamic) --------------------------------


def check_id_space(ids: Any, oov: Any, num_oov_buckets: Any, padding_idx: int | None, scale_grad_by_freq: bool,
                   where: str) -> None:
    """``ids=`` of a table: an ``embtab.ids`` id space, without the options it replaces."""
    from .ids.policies import IdSpace

    if not isinstance(ids, IdSpace):
        raise TypeError(
            f"{where}: ids must be an embtab.ids id space such as embtab.ids.Hashed(2) or "
            f"embtab.ids.Dynamic(), got {ids!r} ({type(ids).__name__})"
        )
    if oov != "error" or num_oov_buckets:
        raise BadArgumentError(
            f"{where}: oov={oov!r} does not apply with ids={ids!r}: every int64 id is valid there "
            f"(ids with no row of their own are the id space's business, e.g. Dynamic(fallback=...)); "
            f"drop oov= and num_oov_buckets="
        )
    if padding_idx is not None:
        raise BadArgumentError(
            f"{where}: padding_idx={padding_idx} does not apply with ids={ids!r}: rows are not ids there, "
            f"so no id can name the padding row; drop padding_idx (leave padding ids out of the input, or "
            f"give them per_sample_weights 0)"
        )
    if scale_grad_by_freq:
        raise BadArgumentError(
            f"{where}: scale_grad_by_freq=True is not supported with ids={ids!r}; drop it"
        )


def check_int_at_least(value: Any, name: str, low: int, where: str) -> int:
    """An int >= ``low`` (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if int(value) < low:
        raise ValueError(f"{where}: {name} must be >= {low}, got {name}={value}")
    return int(value)


def check_seed(seed: Any, where: str) -> int:
    """A seed of the stable hashes: an int in [0, 2**63)."""
    seed = check_int_at_least(seed, "seed", 0, where)
    if seed >= 1 << 63:
        raise ValueError(f"{where}: seed must be < 2**63, got seed={seed}")
    return seed


def check_choice(value: Any, name: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise BadArgumentError(f"{where}: {name} must be one of {choices}, got {name}={value!r}")
    return value  # type: ignore[no-any-return]


def check_instance(value: Any, name: str, types: tuple[type, ...], example: str, where: str) -> Any:
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in types)
        raise TypeError(f"{where}: {name} must be {names}, e.g. {name}={example}, got {value!r}")
    return value


def check_fallback(fallback: Any, fallback_buckets: Any, where: str) -> int:
    """``Dynamic(fallback=..., fallback_buckets=...)``; returns the buckets as an int."""
    check_choice(fallback, "fallback", ("zero", "shared", "hash"), where)
    buckets = check_int_at_least(fallback_buckets, "fallback_buckets", 0, where)
    if fallback == "hash" and buckets < 1:
        raise BadArgumentError(
            f"{where}: fallback='hash' needs fallback_buckets >= 1 trainable rows to hash ids without a row "
            f"into, got fallback_buckets={buckets}"
        )
    if fallback != "hash" and buckets:
        raise BadArgumentError(
            f"{where}: fallback_buckets={buckets} is only used with fallback='hash', got fallback={fallback!r}; "
            f"pass fallback='hash' or drop fallback_buckets"
        )
    return buckets


def check_row_init(init: Any, where: str) -> None:
    """``Dynamic(init=...)``: None, an init name, a std (float >= 0) or a callable."""
    from .init import INITS

    if init is None or callable(init):
        return
    if isinstance(init, str):
        if init not in INITS:
            raise BadArgumentError(f"{where}: unknown init {init!r}; choose one of {sorted(INITS)}, a std, or a "
                                   f"callable init(ids, seed, dim)")
        return
    if isinstance(init, bool) or not isinstance(init, numbers.Real) or not math.isfinite(init) or init < 0:
        raise TypeError(f"{where}: init must be None, an init name, a finite std >= 0 or a callable "
                        f"init(ids, seed, dim), got {init!r}")


def check_dynamic_state(values: dict[str, torch.Tensor], capacity: int, prefix: str, where: str) -> dict[str, torch.Tensor]:
    """The ``ids.*`` entries of a dynamic table's checkpoint (int64 CPU tensors): consistent, or an error naming the key."""
    def bad(key: str, what: str) -> ValueError:
        return ValueError(f"{where}: {prefix}{key} {what}; the checkpoint is not a dynamic table's, or it is corrupt")

    ids, last_seen, count = values["ids"], values["last_seen"], values["count"]
    pids, pcounts, step, stats = values["pending_ids"], values["pending_counts"], values["step"], values["stats"]
    for key, t in (("ids", ids), ("last_seen", last_seen), ("count", count), ("pending_ids", pids),
                   ("pending_counts", pcounts)):
        if t.dim() != 1:
            raise bad(key, f"must be 1-D, got shape {tuple(t.shape)}")
    if step.numel() != 1 or int(step) < 0:
        raise bad("step", f"must be one int >= 0, got {step.tolist()}")
    if stats.dim() != 1 or stats.numel() != 6 or bool((stats < 0).any()):
        raise bad("stats", f"must hold 6 counts >= 0, got {stats.tolist()}")
    if last_seen.numel() != ids.numel() or count.numel() != ids.numel():
        raise bad("ids", f"has {ids.numel()} ids but last_seen {last_seen.numel()} and count {count.numel()} values")
    if ids.numel() > capacity:
        raise bad("ids", f"holds {ids.numel()} live ids, more than the capacity {capacity}")
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise bad("ids", "must be strictly ascending (distinct live ids, sorted)")
    if ids.numel() and (int(last_seen.min()) < 0 or int(last_seen.max()) > int(step)):
        raise bad("last_seen", f"must lie in [0, step={int(step)}]")
    if ids.numel() and int(count.min()) < 0:
        raise bad("count", "must be >= 0")
    if pcounts.numel() != pids.numel():
        raise bad("pending_counts", f"has {pcounts.numel()} values for {pids.numel()} pending ids")
    if pids.numel() > 1 and not bool((pids[1:] > pids[:-1]).all()):
        raise bad("pending_ids", "must be strictly ascending")
    if pids.numel() and int(pcounts.min()) < 1:
        raise bad("pending_counts", "must be >= 1")
    return {**values, "step": step.reshape(())}


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
