"""The one lookup pipeline: check the call, canonical offsets, ids to rows, then the backend.

Used by the functional API, the modules and the collection alike::

    embedding(spec, weight, input)           unpooled:  check -> ids to rows -> lookup
    embedding_bag(spec, weight, input, ...)  pooled:    prepare_bags -> pool([feature])
    collection forward                       pooled:    prepare_bags per feature -> pool(features)

:func:`prepare_bags` is the only place where a bag lookup's input is checked and its
ids turned into rows by the table's ids stage; :attr:`Bags.ends` the only place where
its offsets are made canonical (flat ids (N,), offsets (B + 1,) ending at N). :func:`pool` looks up any number of prepared
features (one output ``(B, sum of D)``) through one autograd node
(``ops/autograd.BagsFunction``), or through ATen's own differentiable op where that
computes exactly the same thing faster (one table, the ``torch`` backend, no fused
optimizer; see :func:`_aten_bag_ok`). Backward hands a fused optimizer each table's
row gradients (``embtab.optim``); otherwise it returns dense or sparse weight gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence, cast

import numpy as np
import torch
from torch import Tensor

from .. import _checks
from ..ids.policies import POLICIES, ErrorPolicy, raise_out_of_range
from ..ops import registry
from ..ops.autograd import BagsFunction, BagsPlan, EmbeddingFunction, Fused
from ..ops.common import MODE_CODES, SKIP, BagAux, bag_of, offsets_decrease
from .spec import TableSpec

_INDEX_DTYPES = _checks.INDEX_DTYPES


class Bags:
    """One feature's bags, prepared: what the lookup and its backward read.

    ``ids`` (N,) are rows of the weight or SKIP, except when ``raw``: then they are the
    caller's ids, unresolved, and the kernel's own bounds check stands in for the
    policy's (``oov="error"`` only; a refusal is turned into our named error).
    ``offsets`` are the caller's offsets (None for a 2-D input). :attr:`ends`, the
    canonical offsets (B + 1,) ending at N, is computed (and checked) on first use: a
    CPU ATen kernel takes the caller's offsets as they are and checks them itself, so
    the common lookup never builds them. ``deferred``: nothing is resolved or checked
    yet; a backend that resolves the policies inside its kernel does all of it in one
    launch for every feature (``ops/triton/pooled.py``), and :meth:`resolved` does it
    here otherwise.
    """

    __slots__ = ("ids", "offsets", "last", "psw", "shape", "raw", "spec", "where", "_ends", "deferred", "counter",
                 "inner")

    def __init__(self, ids: Tensor, offsets: Tensor | None, last: bool, psw: Tensor | None, shape: torch.Size,
                 raw: bool, spec: TableSpec, where: str, ends: Tensor | None = None, *, deferred: bool = False,
                 counter: Tensor | None = None, inner: "Bags | None" = None) -> None:
        self.ids, self.offsets, self.last, self.psw = ids, offsets, last, psw
        self.shape, self.raw, self.spec, self.where = shape, raw, spec, where
        self._ends, self.deferred, self.counter = ends, deferred, counter
        # Bags whose pooled rows are this lookup's weight (per-id vectors of an expanding ids
        # stage under max pooling); see _expanded and pool.
        self.inner = inner

    def resolved(self, weight: Tensor, backend: registry.Backend) -> "Bags":
        """The ids stage applied (and, with ``max_norm``, the rows renormalised)."""
        spec = self.spec
        if spec.ids.expands:
            return self._expanded(weight, backend)
        rows, raw, has_skip = _resolve(spec, backend, self.ids, self.where, self.counter, self.shape)
        bags = Bags(rows, self.offsets, self.last, self.psw, self.shape, raw, spec, self.where, counter=self.counter)
        if has_skip and not backend.supports_skip:
            rows, ends, psw = _drop_skipped(rows, bags.ends, bags.psw)
            bags = Bags(rows, None, True, psw, self.shape, raw, spec, self.where, ends, counter=self.counter)
        if spec.max_norm is not None:
            backend.lookup.renorm_(weight.detach(), bags.ids, spec.max_norm, spec.norm_type)
        return bags

    def _expanded(self, weight: Tensor, backend: registry.Backend) -> "Bags":
        """Each id a weighted bag of rows (``IdStage.expand``: ``embtab.ids.Hashed``).

        Sum and mean: one bag lookup in ``"sum"`` mode over every id's rows, the per-sample
        weights being the stage's weights times the caller's (or 1 / the bag's count for a
        mean), so a bag pools the ids' vectors. Max pools the ids' vectors themselves:
        bags of per-id vectors, which :attr:`inner` (bags of each id's rows) computes.
        """
        spec = self.spec
        ends = canonical_bags(self.ids, self.offsets, self.last, True, self.where, self.shape).to(torch.int64)
        rows, w = spec.ids.expand(self.ids)  # (N, k), (N, k) or None
        n, k = rows.shape
        flat = rows.reshape(-1)
        if spec.max_norm is not None:
            backend.lookup.renorm_(weight.detach(), flat, spec.max_norm, spec.norm_type)
        summed = dataclasses.replace(spec, mode="sum")
        if spec.mode == "max":
            inner = Bags(flat, None, True, None if w is None else w.reshape(-1), self.shape, False, summed, self.where,
                         torch.arange(n + 1, device=flat.device) * k)
            per_id = dataclasses.replace(spec, ids=ErrorPolicy(), id_space=None, max_norm=None)
            return Bags(torch.arange(n, device=flat.device), None, True, None, self.shape, False, per_id, self.where,
                        ends, inner=inner)
        scale = self.psw  # (N,) or None
        if spec.mode == "mean":
            counts = (ends[1:] - ends[:-1]).clamp_min(1).to(weight.dtype)  # (B,) ids per bag
            scale = (1.0 / counts)[bag_of(ends, n)]
        if scale is not None:
            w = scale.unsqueeze(1).expand(n, k) if w is None else w * scale.unsqueeze(1)
        return Bags(flat, None, True, None if w is None else w.reshape(-1), self.shape, False, summed, self.where,
                    ends * k)

    @property
    def ends(self) -> Tensor:
        """Canonical offsets (B + 1,); computing them checks the offsets' values (on CUDA
        only under ``oov="error"``, which syncs anyway)."""
        if self._ends is None:
            check = self.ids.is_cpu or self.spec.oov == "error"
            self._ends = canonical_bags(self.ids, self.offsets, self.last, check, self.where, self.shape)
        return self._ends

    @property
    def num_bags(self) -> int:
        """B, without building :attr:`ends` (which a CPU ATen kernel does not need)."""
        if self._ends is not None:
            return self._ends.shape[0] - 1
        if self.offsets is None:
            return self.shape[0] if len(self.shape) == 2 else 0
        return self.offsets.shape[0] - int(self.last)

    def kernel_args(self, decrease: Callable[[Any], bool] = offsets_decrease) -> tuple[Tensor, Tensor, bool]:
        """``(ids, offsets, include_last_offset)`` for an ATen bag kernel: on CPU the caller's
        own offsets, checked only for order here (ATen's kernels refuse a first offset other
        than 0 and a last one past the input, but its one-thread path reads decreasing
        offsets without a word); else the canonical ones. Not with ``include_last_offset``:
        ATen's CPU kernels disagree among themselves about ids after the last offset (see
        :func:`canonical_bags`). ``decrease``: the order check (``Backend.offsets_decrease``)."""
        o = self.offsets
        if (self._ends is None and o is not None and not self.last and self.ids.is_cpu
                and not torch.compiler.is_compiling()):  # in a graph our checks run first (ops/compiled.py)
            if decrease(o.numpy()):
                self.name_error()
            return self.ids, o, False
        return self.ids, self.ends, True

    def name_error(self) -> None:
        """After a kernel refused this lookup: raise our error that names the bad offset or
        id, if there is one (the caller re-raises the kernel's error otherwise)."""
        if self.offsets is not None and self.offsets.numel() > 0:
            o = self.offsets.cpu()
            steps = o[1:] - o[:-1]
            low = int(steps.min()) if steps.numel() else 0
            _checks.check_offsets_values(int(o[0]), int(o[-1]), min(low, 0), self.ids.numel(), self.where)
        if self.raw:
            raise_out_of_range(self.ids, self.spec.num_embeddings, self.where, self.shape)


class Feature(NamedTuple):
    """A prepared lookup into one table: what :func:`pool` takes."""

    spec: TableSpec
    weight: Tensor
    backend: registry.Backend
    bags: Bags
    table: object | None = None  # the module a fused optimizer updates (its state lives there)


def backend_of(spec: TableSpec, weight: Tensor) -> registry.Backend:
    return registry.select(spec.backend, weight.device, weight.dtype, weight.is_contiguous(), spec.layout,
                           spec.embedding_dim)


def _check_ids(input: object, weight: Tensor, where: str) -> None:
    if type(input) is not Tensor or input.dtype not in _INDEX_DTYPES:  # type: ignore[union-attr]
        _checks.check_ids(input, "input", where)
    if input.device != weight.device:  # type: ignore[union-attr]
        _checks.check_same_device(input, weight, "input", where)  # type: ignore[arg-type]


def _resolve(
    spec: TableSpec, backend: registry.Backend, ids: Tensor, where: str, counter: Tensor | None, shape: torch.Size,
) -> tuple[Tensor, bool, bool]:
    """``(ids, raw, has_skip)``: the ids stage applied, or the ids left raw for the kernel."""
    stage = spec.ids
    if (stage.kernel_may_check and backend.checks_bounds and spec.max_norm is None
            and ids.is_cpu and not torch.compiler.is_compiling()):
        # The kernel refuses out-of-range ids itself; naming one only on failure saves a
        # pass over the ids on every call. (Not with max_norm: the renorm runs first and
        # would wrap a negative id around.)
        return ids, True, False
    rows, has_skip = stage.resolve(ids, spec.num_embeddings, where=where, counter=counter, shape=shape)
    return rows, False, has_skip


# --- unpooled lookups -----------------------------------------------------------------------


def embedding(
    spec: TableSpec, weight: Tensor, input: Tensor, *, where: str, counter: Tensor | None = None,
    fused: Fused | None = None,
) -> Tensor:
    """``(*) -> (*, D)``: the rows of ``input``'s ids, as ``torch.nn.functional.embedding``."""
    _check_ids(input, weight, where)
    backend = backend_of(spec, weight)
    if spec.ids.expands:  # each id a weighted bag of rows (embtab.ids.Hashed): bags of one id
        flat = input.reshape(-1)
        bags = Bags(flat, None, False, None, torch.Size([flat.numel(), 1]), True, spec, where).resolved(weight, backend)
        trains = fused is not None and weight.requires_grad
        out = pool((Feature(spec, weight, backend, bags, fused.table if trains else None),),  # type: ignore[union-attr]
                   fused.optimizer if trains else None)  # type: ignore[union-attr]
        return out.reshape(*input.shape, weight.shape[1])
    ids, raw, has_skip = _resolve(spec, backend, input, where, counter, input.shape)
    if has_skip and not backend.supports_skip:
        return _compacted(spec, weight, ids, backend, fused)
    if spec.max_norm is not None:
        backend.lookup.renorm_(weight.detach(), ids, spec.max_norm, spec.norm_type)
    if not raw:
        return _embedding_call(spec, weight, ids, backend, fused)
    try:
        return _embedding_call(spec, weight, ids, backend, fused)
    except (IndexError, RuntimeError):
        raise_out_of_range(ids, spec.num_embeddings, where, input.shape)
        raise


def _embedding_call(
    spec: TableSpec, weight: Tensor, ids: Tensor, backend: registry.Backend, fused: Fused | None,
) -> Tensor:
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return backend.lookup.embedding_forward(weight, ids)
    if fused is None and backend.native_autograd:
        # ATen's differentiable op: torch's own gradients (dense, sparse, double backward).
        pad = -1 if spec.padding_idx is None else spec.padding_idx
        if ids.dim() == 0 and spec.sparse:  # torch's sparse backward fails on 0-d ids with padding
            return torch.embedding(weight, ids.reshape(1), pad, spec.scale_grad_by_freq, True)[0]
        return torch.embedding(weight, ids, pad, spec.scale_grad_by_freq, spec.sparse)
    return EmbeddingFunction.apply(weight, ids, backend, spec, fused)


def _compacted(spec: TableSpec, weight: Tensor, ids: Tensor, backend: registry.Backend, fused: Fused | None) -> Tensor:
    """Lookup for a backend without SKIP support: look up the kept ids, zeros elsewhere."""
    flat = ids.reshape(-1)
    keep = flat >= 0  # (N,)
    kept = flat[keep]
    if spec.max_norm is not None:
        backend.lookup.renorm_(weight.detach(), kept, spec.max_norm, spec.norm_type)
    rows = _embedding_call(spec, weight, kept, backend, fused)
    out = rows.new_zeros(keep.numel(), weight.shape[1]).masked_scatter(keep.unsqueeze(1), rows)
    return out.reshape(*ids.shape, weight.shape[1])


# --- bags ----------------------------------------------------------------------------------


def embedding_bag(
    spec: TableSpec, weight: Tensor, input: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None,
    *, where: str, counter: Tensor | None = None, fused: Fused | None = None,
) -> Tensor:
    """``(B, D)``: each bag's rows reduced by ``spec.mode``, as ``torch.nn.functional.embedding_bag``."""
    backend = backend_of(spec, weight)
    bags = prepare_bags(spec, weight, backend, input, offsets, per_sample_weights, spec.include_last_offset,
                        where=where, counter=counter)
    if fused is None or not weight.requires_grad:
        return pool((Feature(spec, weight, backend, bags),))
    return pool((Feature(spec, weight, backend, bags, fused.table),), fused.optimizer)


def prepare_bags(
    spec: TableSpec, weight: Tensor, backend: registry.Backend, input: Tensor, offsets: Tensor | None,
    per_sample_weights: Tensor | None, include_last_offset: bool, *, where: str, counter: Tensor | None = None,
) -> Bags:
    """Check a bag lookup's input, resolve its ids (and, with ``max_norm``, renormalise the
    rows they name, in place, as torch does before a lookup). The offsets' values are
    checked when :attr:`Bags.ends` is first needed, or by the CPU kernel itself."""
    _check_ids(input, weight, where)
    if input.dim() == 1:
        if (type(offsets) is not Tensor or offsets.dtype not in _INDEX_DTYPES or offsets.dim() != 1
                or offsets.device != input.device or include_last_offset and offsets.numel() == 0):
            _checks.check_offsets_shape(input, offsets, include_last_offset, where)
        ids, psw = input, per_sample_weights
    else:
        if input.dim() != 2 or offsets is not None:
            _checks.check_offsets_shape(input, offsets, include_last_offset, where)
        ids, psw = input.reshape(-1), None if per_sample_weights is None else per_sample_weights.reshape(-1)
        offsets, include_last_offset = None, False
    if per_sample_weights is not None:
        _checks.check_per_sample_weights(per_sample_weights, input, weight, cast(str, spec.mode), where,
                                         backend.values_dtype)
    bags = Bags(ids, offsets, include_last_offset, psw, input.shape, True, spec, where, deferred=True, counter=counter)
    if _kernel_resolves(backend, spec):
        return bags
    return bags.resolved(weight, backend)


def _kernel_resolves(backend: registry.Backend, spec: TableSpec) -> bool:
    """The backend resolves this table's policy (and checks its input) inside its kernel."""
    return (backend.pooled is not None and spec.max_norm is None and type(spec.ids) in POLICIES
            and not torch.compiler.is_compiling())


def canonical_bags(
    ids: Tensor, offsets: Tensor | None, include_last_offset: bool, check_values: bool, where: str,
    shape: torch.Size,
) -> Tensor:
    """Canonical offsets (B + 1,) ending at N = ``ids.numel()``.

    ``offsets`` None: fixed-length bags of ``shape[1]`` ids (a 2-D input, flattened).
    With ``include_last_offset=True`` the last bag runs to the end of the input even when
    ``offsets[-1] < N``: what torch's CPU kernels do in float64, for ``mode="max"`` and
    whenever ``padding_idx`` is set (their float32 sum/mean path without padding sums
    only up to ``offsets[-1]`` but divides the mean by the count to the end, and its
    gradient follows the first rule; we do not copy that).
    """
    num_ids = ids.numel()
    if offsets is None:
        num_bags, length = (shape[0], shape[1]) if len(shape) == 2 else (0, 0)
        return torch.arange(num_bags + 1, dtype=ids.dtype, device=ids.device) * length
    if torch.compiler.is_compiling():
        from ..ops import compiled

        if check_values and offsets.numel() > 0:
            compiled.check_offsets(offsets, num_ids, where)
        starts = offsets[:-1] if include_last_offset else offsets
        return torch.cat([starts, starts.new_full((1,), num_ids)])
    # On CPU, numpy on a zero-copy view: a few microseconds, where each small torch op
    # costs about ten.
    o = offsets.numpy() if offsets.device.type == "cpu" else None
    if check_values and offsets.numel() > 0:
        if o is not None:
            first, last = int(o[0]), int(o[-1])
            low = 0
            if o.size > 1 and (o[1:] < o[:-1]).any():
                low = int((o[1:] - o[:-1]).min())
        else:
            steps = offsets[1:] - offsets[:-1]
            min_step = steps.min() if steps.numel() else offsets.new_zeros(())
            first, last, low = torch.stack([offsets[0], offsets[-1], min_step]).tolist()
        _checks.check_offsets_values(first, last, low, num_ids, where)
    if o is not None:
        starts = o[:-1] if include_last_offset else o
        ends_np = np.empty(starts.size + 1, dtype=o.dtype)
        ends_np[:-1] = starts
        ends_np[-1] = num_ids
        return torch.from_numpy(ends_np)
    starts_t = offsets[:-1] if include_last_offset else offsets
    return torch.cat([starts_t, starts_t.new_full((1,), num_ids)])


def _drop_skipped(ids: Tensor, ends: Tensor, psw: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Bags without their SKIP ids, for a backend that does not understand them:
    the ids dropped, the offsets shifted; ``psw[keep]`` keeps its autograd link."""
    keep = ids >= 0
    dropped = torch.cat([ids.new_zeros(1), torch.cumsum(~keep, 0).to(ids.dtype)])  # (N + 1,)
    ends = ends - dropped[ends.to(torch.int64)]
    return ids[keep], ends, None if psw is None else psw[keep]


def pool(features: Sequence[Feature], optimizer: object | None = None) -> Tensor:
    """Every feature's bags reduced, side by side: ``(B, sum of D)`` in the features' order.

    ``optimizer`` (a fused optimizer bound to the features' tables) makes backward
    update the rows instead of returning weight gradients.
    """
    if any(f.bags.spec is not f.spec for f in features):  # expanded ids (see Bags._expanded)
        features = [_expanded_feature(f, optimizer) if f.bags.spec is not f.spec else f for f in features]
    grad = torch.is_grad_enabled() and any(
        f.weight.requires_grad or (f.bags.psw is not None and f.bags.psw.requires_grad) for f in features
    )
    if any(f.bags.deferred for f in features):
        pooled = _pooled_runner(features)
        if pooled is None:  # not one batch: resolve here, feature by feature
            features = [f._replace(bags=f.bags.resolved(f.weight, f.backend)) if f.bags.deferred else f
                        for f in features]
        elif not grad:
            return pooled()[0]
        else:
            plan = BagsPlan(features, optimizer, pooled)
            return BagsFunction.apply(plan, *plan.weights, *[f.bags.psw for f in features])
    try:
        if not grad:
            return _inference(features)
        if len(features) == 1 and optimizer is None and _aten_bag_ok(features[0]):
            f = features[0]
            ids, offsets, last = f.bags.kernel_args(f.backend.offsets_decrease)
            return torch.embedding_bag(  # padding_idx None: no padding (-1 would be the last row here)
                f.weight, ids, offsets, False, MODE_CODES[f.spec.mode], f.spec.sparse, f.bags.psw, last,  # type: ignore[index]
                f.spec.padding_idx,
            )[0]
        plan = BagsPlan(features, optimizer)
        return BagsFunction.apply(plan, *plan.weights, *[f.bags.psw for f in features])
    except (IndexError, RuntimeError):
        for f in features:
            f.bags.name_error()
        raise  # not an input error after all


def _expanded_feature(f: Feature, optimizer: object | None) -> Feature:
    """A feature whose ids expanded into bags of rows: looked up with the bags' spec; under
    max pooling, over the ids' own vectors (pooled from the inner bags first, so gradients
    reach the rows and the stage's weights through them)."""
    b = f.bags
    if b.inner is None:
        return f._replace(spec=b.spec)
    inner = Feature(b.inner.spec, f.weight, f.backend, b.inner, f.table)
    vectors = pool((inner,), optimizer if f.table is not None else None)  # (N, D)
    return Feature(b.spec, vectors, backend_of(b.spec, vectors), b, None)


def _pooled_runner(features: Sequence[Feature]) -> Callable[[], tuple[Tensor, list[BagAux]]] | None:
    """A function running every feature in one batched launch (their backend's ``pooled``),
    or None when the features do not form one batch (other backends, dtypes or devices)."""
    first = features[0]
    pooled = first.backend.pooled
    if pooled is None or any(not f.bags.deferred or f.backend.lookup is not first.backend.lookup
                             or f.weight.dtype != first.weight.dtype or f.weight.device != first.weight.device
                             for f in features):
        return None

    def run() -> tuple[Tensor, list[BagAux]]:
        bags = [f.bags for f in features]
        policies = [(b.spec.ids.name, b.spec.num_embeddings, b.spec.ids.extra_rows) for b in bags]
        res = pooled(
            [f.weight.detach() for f in features], [b.ids for b in bags], [b.offsets for b in bags],
            [b.shape[1] if b.offsets is None and len(b.shape) == 2 else 0 for b in bags],
            [f.spec.mode for f in features], [f.spec.padding_idx for f in features], policies,
            [None if b.psw is None else b.psw.detach() for b in bags], [b.spec.oov == "error" for b in bags],
            _batch_size(bags),
        )
        if any(b.spec.oov == "error" for b in bags):
            flags = res.flags[:, :2].tolist()  # the one host sync: did any checked table see bad input?
            for b, (bad_ids, bad_offsets) in zip(bags, flags):
                if bad_ids or bad_offsets:
                    b.name_error()
        counters = [b.counter for b in bags if b.counter is not None and b.spec.oov != "error"]
        if counters:
            torch._foreach_add_(counters, [res.flags[f, 2] for f, b in enumerate(bags)
                                           if b.counter is not None and b.spec.oov != "error"])
        for f, b in enumerate(bags):  # what the backward reads: the rows the kernel resolved
            b.ids, b._ends, b.raw, b.deferred = res.rows[f], res.ends[f], False, False
        return res.out, res.aux

    return run


def _batch_size(bags: Sequence[Bags]) -> int:
    b = bags[0]
    if b.offsets is None:
        return b.shape[0] if len(b.shape) == 2 else 0
    return b.offsets.numel() - (1 if b.last else 0)


def _aten_bag_ok(f: Feature) -> bool:
    """ATen's bag op gives our results: the torch backend, a float weight, and not
    ``scale_grad_by_freq`` (its CPU kernel divides some rows by another id's count)."""
    return f.backend.native_autograd and not f.spec.scale_grad_by_freq and f.weight.is_floating_point()


def _inference(features: Sequence[Feature]) -> Tensor:
    """The pooled outputs when no gradient will be asked for (no autograd node)."""
    many = features[0].backend.inference_many
    if many is not None and len(features) > 1 and all(f.backend.inference_many is many for f in features):
        # One call for every feature (a backend that runs them all in one parallel pass).
        return many([(f.backend.lookup, f.weight, f.bags.ids, f.bags.ends, f.spec.mode, f.bags.psw,
                      f.spec.padding_idx) for f in features])
    outs = []
    for f in features:
        b, spec = f.bags, f.spec
        if _aten_bag_ok(f):  # torch's own no-grad kernel, on the caller's offsets where it checks them
            ids, offsets, last = b.kernel_args(f.backend.offsets_decrease)
            outs.append(torch._embedding_bag_forward_only(
                f.weight, ids, offsets, False, MODE_CODES[spec.mode], False, b.psw, last,  # type: ignore[index]
                -1 if spec.padding_idx is None else spec.padding_idx,
            )[0])
        else:
            outs.append(f.backend.lookup.embedding_bag_inference(f.weight, b.ids, b.ends, spec.mode, b.psw,
                                                                 spec.padding_idx))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


__all__ = ["Bags", "Feature", "TableSpec", "embedding", "embedding_bag", "pool", "prepare_bags", "SKIP"]
