"""``embtab.EmbeddingBagCollection``: many pooled tables, one forward, one fused backward.

The recommender's layer: several tables of different sizes and dims, each looked up
by one or more features, pooled per bag. With a fused optimizer (``optimizer=``)
the whole collection is one autograd node: its backward sums every table's
duplicate ids across all its features and updates the touched rows of all tables in
one pass per table (FBGEMM's "table-batched" design), without building a gradient.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any, Iterator, Sequence, cast

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Module, ModuleDict

from .. import _checks, oov as _oov
from ..configs import TableConfig
from ..functional import (
    _canonical_bags, _check_table, _drop_skipped, _kernel_checks_range, _name_out_of_range_ids,
)
from ..ops import dispatch
from ..ops.autograd import EmbeddingBagFunction
from ..optim import _fused
from .embedding_bag import EmbeddingBag

_kernels: Any = "not loaded"  # the module ``_kernels``, or None without numba


def _scan_kernels() -> Any:
    """The one-pass input checks (numba), imported on first use so that ``import embtab``
    does not pay for numba; None where numba is missing (the functional's checks do
    the same work then)."""
    global _kernels
    if isinstance(_kernels, str):
        try:
            from . import _kernels as module
        except (ImportError, RuntimeError, OSError):  # no numba, or no cache folder for it
            module = None
        _kernels = module
    return _kernels

__all__ = ["EmbeddingBagCollection", "PooledEmbeddings"]

_WHERE = "EmbeddingBagCollection"


class PooledEmbeddings(Mapping):  # Mapping[str, Tensor]
    """The collection's output: a read-only mapping feature name -> pooled ``(B, D)`` tensor.

    Iterates in the collection's fixed feature order; :meth:`concat` gives the
    ``(B, sum of D)`` tensor in that order (what the dense layers usually take). The
    forward usually writes all features into that one tensor, so ``concat()`` costs
    nothing and the per-feature tensors are column views of it (split on first use).
    """

    def __init__(self, names: Sequence[str], values: Sequence[Tensor] | None = None, *,
                 full: Tensor | None = None, dims: Sequence[int] = ()) -> None:
        self._names = tuple(names)
        self._full = full
        self._dims = tuple(dims)
        self._values = None if values is None else dict(zip(self._names, values))

    def _split(self) -> dict[str, Tensor]:
        if self._values is None:
            self._values = dict(zip(self._names, torch.split(self._full, self._dims, dim=1)))  # type: ignore[arg-type]
        return self._values

    def __getitem__(self, key: str) -> Tensor:
        return self._split()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def concat(self) -> Tensor:
        """``(B, sum of D)``: the features side by side, in the collection's order."""
        if self._full is not None:
            return self._full
        return torch.cat([self._split()[n] for n in self._names], dim=1)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n!r}: {tuple(v.shape)}" for n, v in self._split().items())
        return f"PooledEmbeddings({{{shapes}}})"


class _Lookup:
    """One feature's lookup, checked: what the forward and the fused backward run.

    ``ids`` are resolved: the table's out-of-vocabulary policy has been applied (see
    ``_prepare``). ``unchecked``: the table
    has ``num_embeddings`` rows and, under ``oov="error"``, the lookup kernel's own
    bounds check stands in for ours (see ``functional._kernel_checks_range``);
    :meth:`checked` names a bad id.
    """

    __slots__ = ("table", "ids", "ends", "psw", "backend", "shape", "where", "unchecked",
                 "num_embeddings")

    def __init__(self, table: int, ids: Tensor, ends: Tensor, psw: Tensor | None, backend: Any,
                 shape: torch.Size, where: str) -> None:
        self.table, self.ids, self.ends, self.psw, self.backend = table, ids, ends, psw, backend
        self.shape, self.where = shape, where
        self.unchecked, self.num_embeddings = False, 0

    def checked(self) -> contextlib.AbstractContextManager[None]:
        """Around the lookup: turns the kernel's bare bounds error into ours."""
        if self.unchecked:
            return _name_out_of_range_ids(self.ids, self.num_embeddings, self.where, self.shape)
        return contextlib.nullcontext()


class EmbeddingBagCollection(Module):
    r"""A collection of pooled embedding tables, looked up by named features.

    Args:
        tables: the :class:`embtab.TableConfig` of each table (tables may differ in
            size, dim, pooling and out-of-vocabulary policy; several features may
            share one table). Weights are created in this order, so with the same
            seed they equal ``embtab.EmbeddingBag`` modules built in the same order.
        optimizer: a fused optimizer from :mod:`embtab.optim` (e.g.
            ``embtab.optim.RowWiseAdagrad(lr=0.05)``): ``backward()`` then updates the
            touched rows of every table in place (duplicates summed across all the
            table's features), no weight gets a ``.grad``, the per-row state is in the
            ``state_dict``, and ``collection.optimizer`` (a ``torch.optim.Optimizer``,
            one param group for all tables) holds the learning rate for schedulers.
            Without it the weights get ordinary dense gradients.
        device, dtype: of the weights.

    Input (``forward``): a mapping feature name -> ``(ids, offsets)`` or
    ``(ids, offsets, per_sample_weights)`` (1-D ids with ``offsets`` = the start of
    each bag, as ``torch.nn.EmbeddingBag``), or ``(ids_2d, None)`` / ``ids_2d`` for
    fixed-length bags; or a ``torchrec.KeyedJaggedTensor`` with these keys. Every
    feature needs the same batch size B.

    Output: :class:`PooledEmbeddings`, feature -> ``(B, embedding_dim)``;
    ``.concat()`` (or ``collection.concat(out)``) gives ``(B, sum of dims)``.

    State: ``embedding_bags.<table>.weight`` (TorchRec's names) and, with an optimizer,
    ``embedding_bags.<table>.optim_<state>``.

    Example:
        >>> tables = [TableConfig("item", 1000, 16), TableConfig("user", 500, 8, pooling="mean")]
        >>> ebc = EmbeddingBagCollection(tables, optimizer=embtab.optim.Adam(lr=1e-3))
        >>> out = ebc({"item": (torch.tensor([1, 2, 3]), torch.tensor([0, 2])),
        ...            "user": (torch.tensor([4, 5]), torch.tensor([0, 1]))})
        >>> out.concat().shape
        torch.Size([2, 24])
    """

    def __init__(
        self,
        tables: Sequence[TableConfig],
        *,
        optimizer: _fused.FusedSpec | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._tables = self._checked_tables(tables)
        self.feature_names: tuple[str, ...] = tuple(f for t in self._tables for f in t.feature_names)
        self._feature_table = {f: i for i, t in enumerate(self._tables) for f in t.feature_names}
        self._dims = tuple(self._tables[self._feature_table[f]].embedding_dim for f in self.feature_names)
        self._cols = tuple(sum(self._dims[:i]) for i in range(len(self._dims)))  # each feature's first column
        self._wheres = {
            f: f"{_WHERE} feature {f!r} (table {self._tables[self._feature_table[f]].name!r})" for f in self.feature_names
        }
        if optimizer is not None:
            _fused.check_spec(optimizer, _WHERE)
        self.embedding_bags = ModuleDict({
            t.name: EmbeddingBag(
                t.num_embeddings, t.embedding_dim, mode=t.pooling, padding_idx=t.padding_idx,
                device=device, dtype=dtype, oov=t.oov, num_oov_buckets=t.num_oov_buckets, init=t.init,
                optimizer=optimizer,
            )
            for t in self._tables
        })
        self._setup_cache: dict[int, Any] = {}
        self.optimizer: _fused.FusedOptimizer | None = None
        if optimizer is not None:
            # One optimizer, one param group, for all tables: one learning rate to schedule.
            self.optimizer = _fused.FusedOptimizer([b.weight for b in self._bags()], optimizer)
            for bag in self._bags():
                bag.optimizer = self.optimizer

    @staticmethod
    def _checked_tables(tables: Any) -> tuple[TableConfig, ...]:
        if isinstance(tables, TableConfig):
            raise TypeError(f"{_WHERE}: tables must be a list of TableConfig, got one TableConfig; wrap it: [config]")
        if isinstance(tables, (str, bytes)) or not isinstance(tables, Sequence):
            raise TypeError(f"{_WHERE}: tables must be a list of TableConfig, got {type(tables).__name__}")
        out = tuple(tables)
        if not out:
            raise ValueError(f"{_WHERE}: tables must hold at least one TableConfig, got an empty list")
        for i, t in enumerate(out):
            if not isinstance(t, TableConfig):
                raise TypeError(f"{_WHERE}: tables[{i}] must be a TableConfig, got {type(t).__name__}")
        seen: dict[str, str] = {}
        names: set[str] = set()
        for t in out:
            if t.name in names:
                raise ValueError(f"{_WHERE}: two tables are named {t.name!r}; table names must be unique")
            names.add(t.name)
            for f in t.feature_names:
                if f in seen:
                    raise ValueError(
                        f"{_WHERE}: feature {f!r} is listed by table {seen[f]!r} and by table {t.name!r}; "
                        f"a feature looks up one table (to share a table, list both features in it)"
                    )
                seen[f] = t.name
        return out

    # --- introspection -------------------------------------------------------------------

    @property
    def tables(self) -> tuple[TableConfig, ...]:
        """The table configs, in order."""
        return self._tables

    def _bags(self) -> list[EmbeddingBag]:
        return [self.embedding_bags[t.name] for t in self._tables]  # type: ignore[misc]

    @property
    def output_dim(self) -> int:
        """Width of :meth:`concat`'s output: the sum of the features' dims."""
        return sum(self._dims)

    def extra_repr(self) -> str:
        s = f"features={list(self.feature_names)}"
        if self.optimizer is not None:
            s += f", optimizer={self.optimizer.spec!r}"
        return s

    def concat(self, pooled: Mapping[str, Tensor]) -> Tensor:
        """``(B, output_dim)``: ``pooled``'s features side by side in the fixed order ``feature_names``."""
        missing = [f for f in self.feature_names if f not in pooled]
        if missing:
            raise KeyError(f"{_WHERE}.concat(): pooled lacks features {missing}; expected {list(self.feature_names)}")
        return torch.cat([pooled[f] for f in self.feature_names], dim=1)

    # --- forward ---------------------------------------------------------------------------

    def _inputs(self, features: Any) -> list[tuple[Tensor, Tensor | None, Tensor | None, bool]]:
        """Per feature, in order: (ids, offsets, per_sample_weights, include_last_offset)."""
        cls = type(features)
        if cls.__name__ == "KeyedJaggedTensor" and cls.__module__.startswith("torchrec"):
            return self._kjt_inputs(features)
        if not isinstance(features, Mapping):
            raise TypeError(
                f"{_WHERE}: features must be a mapping feature name -> (ids, offsets[, per_sample_weights]) "
                f"or a torchrec.KeyedJaggedTensor, got {cls.__name__}"
            )
        self._check_keys(list(features.keys()))
        out = []
        for f in self.feature_names:
            value = features[f]
            if isinstance(value, Tensor):
                out.append((value, None, None, False))
                continue
            if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
                raise TypeError(
                    f"{_WHERE}: feature {f!r} must be (ids, offsets) or (ids, offsets, per_sample_weights), "
                    f"got {type(value).__name__}" + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
                )
            ids, offsets = value[0], value[1]
            psw = value[2] if len(value) == 3 else None
            out.append((ids, offsets, psw, False))
        return out

    def _check_keys(self, keys: list[str]) -> None:
        missing = [f for f in self.feature_names if f not in keys]
        extra = [k for k in keys if k not in self._feature_table]
        if missing or extra:
            raise ValueError(
                f"{_WHERE}: the input must have exactly the features {list(self.feature_names)}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown {extra}" if extra else "")
            )

    def _kjt_inputs(self, kjt: Any) -> list[tuple[Tensor, Tensor | None, Tensor | None, bool]]:
        if getattr(kjt, "variable_stride_per_key", lambda: False)():
            raise ValueError(f"{_WHERE}: a KeyedJaggedTensor with a batch size per key is not supported; "
                             f"every feature needs the same batch size")
        self._check_keys(list(kjt.keys()))
        jagged = kjt.to_dict()
        out = []
        for f in self.feature_names:
            jt = jagged[f]
            # KJT offsets have B + 1 entries, like include_last_offset=True.
            out.append((jt.values(), jt.offsets(), jt.weights_or_none(), True))
        return out

    def forward(self, features: Any) -> PooledEmbeddings:
        inputs = self._inputs(features)
        bags = self._bags()
        lookups = [
            self._prepare(f, bags[self._feature_table[f]], *inp) for f, inp in zip(self.feature_names, inputs)
        ]
        self._check_batch([lk.ends for lk in lookups])
        grad_on = torch.is_grad_enabled()
        if self.optimizer is not None and grad_on and any(b.weight.requires_grad for b in bags):
            step = _FusedStep(self, bags, lookups)
            full = _FusedBagsFunction.apply(step, *[b.weight for b in bags], *[lk.psw for lk in lookups])
            return PooledEmbeddings(self.feature_names, full=full, dims=self._dims)
        if grad_on and any(
            bags[lk.table].weight.requires_grad or (lk.psw is not None and lk.psw.requires_grad) for lk in lookups
        ):
            outs = []
            for lk in lookups:  # as functional.embedding_bag, after its checks
                bag = bags[lk.table]
                with lk.checked():
                    outs.append(EmbeddingBagFunction.apply(
                        bag.weight, lk.psw, lk.ids, lk.ends, lk.backend, bag.mode, bag.padding_idx, False, False
                    ))
            return PooledEmbeddings(self.feature_names, outs)
        full, _ = self._lookup_all(bags, lookups, max_aux=False)
        return PooledEmbeddings(self.feature_names, full=full, dims=self._dims)

    def _lookup_all(
        self, bags: list[EmbeddingBag], lookups: list[_Lookup], max_aux: bool,
    ) -> tuple[Tensor, list[tuple[Tensor, ...] | None]]:
        """All features pooled into one ``(B, sum of D)`` tensor, outside autograd.

        Returns it and, per feature, the backend's ``aux``: with ``max_aux`` for max
        bags (the fused backward reads the rows that gave each maximum), else None.
        Every other lookup takes the backend's ``embedding_bag_inference``, which may
        skip the bookkeeping a backward would need.

        The features are looked up one after another, each kernel parallel on torch's
        own threads. (Features on threads of our own, one per feature, was faster on an
        idle machine, and much slower right after any torch op: torch's OpenMP workers
        spin on the cores for a while after each parallel region, and the first-touch
        page faults of the per-thread outputs add up.)
        """
        outs: list[Tensor] = []
        aux: list[tuple[Tensor, ...] | None] = [None] * len(lookups)
        with torch.no_grad():
            for i, lk in enumerate(lookups):
                bag = bags[lk.table]
                weight = bag.weight.detach()
                psw = None if lk.psw is None else lk.psw.detach()
                with lk.checked():
                    if max_aux and bag.mode == "max":
                        out, aux[i] = lk.backend.embedding_bag_forward(weight, lk.ids, lk.ends, bag.mode, psw,
                                                                       bag.padding_idx)
                    else:
                        out = lk.backend.embedding_bag_inference(weight, lk.ids, lk.ends, bag.mode, psw,
                                                                 bag.padding_idx)
                outs.append(out)
        return torch.cat(outs, dim=1), aux

    def _where(self, feature: str) -> str:
        return self._wheres[feature]

    def _check_batch(self, ends: list[Tensor]) -> None:
        sizes = [t.shape[0] - 1 for t in ends]  # (B + 1,) canonical offsets
        if len(set(sizes)) > 1:
            detail = ", ".join(f"{f!r}: {b}" for f, b in zip(self.feature_names, sizes))
            raise ValueError(f"{_WHERE}: every feature needs the same batch size, got {detail}")

    def _prepare(
        self, feature: str, bag: EmbeddingBag, ids: Tensor, offsets: Tensor | None, psw: Tensor | None, last: bool,
    ) -> _Lookup:
        """The checks and id resolution of ``functional.embedding_bag``, without the lookup."""
        where = self._where(feature)
        weight = bag.weight
        num_embeddings, _, _, be = self._table_setup(bag, where)
        _checks.check_ids(ids, "input", where)
        _checks.check_same_device(ids, weight, "input", where)
        _checks.check_offsets_shape(ids, offsets, last, where)
        _checks.check_per_sample_weights(psw, ids, weight, bag.mode, where)
        table = self._feature_table[feature]
        if ids.device.type == "cpu" and _scan_kernels() is not None:
            unchecked = _kernel_checks_range(be, ids, bag.oov, None)
            flat, ends, psw, lo, hi = self._canonical_cpu(ids, offsets, last, psw, where, not unchecked)
            lookup = _Lookup(table, flat, ends, psw, be, ids.shape, where)
            lookup.unchecked, lookup.num_embeddings = unchecked, num_embeddings  # (then lo, hi = 0, -1)
            if lo >= 0 and hi < num_embeddings:  # the common case: nothing to resolve
                return lookup
        else:
            check_values = ids.device.type == "cpu" or bag.oov == "error"
            flat, ends, psw = _canonical_bags(ids, offsets, psw, last, check_values, where)
            lookup = _Lookup(table, flat, ends, psw, be, ids.shape, where)
        self._resolve(lookup, bag)
        return lookup

    def _resolve(self, lk: _Lookup, bag: EmbeddingBag) -> None:
        """Apply the table's out-of-vocabulary policy to ``lk.ids``."""
        num_embeddings, padding_idx, buckets, be = self._table_setup(bag, lk.where)
        ids, has_skip = _oov.resolve(lk.ids, num_embeddings, bag.oov, padding_idx, buckets, lk.where,
                                     bag._oov_count, lk.shape)
        ends, psw = lk.ends, lk.psw
        if has_skip and not be.supports_skip:
            ids, ends, psw = _drop_skipped(ids, ends, psw)
        lk.ids, lk.ends, lk.psw = ids, ends, psw

    def _table_setup(self, bag: EmbeddingBag, where: str) -> tuple[int, int | None, int, Any]:
        """(num_embeddings, padding_idx, num_oov_buckets, backend) of a table, checked.

        Cached while nothing it depends on changes: these checks cost more than a
        small lookup, and a forward repeats them for every feature.
        """
        weight = bag.weight
        key = (id(weight), weight.shape, weight.dtype, weight.device, bag.padding_idx, bag.oov,
               bag.num_oov_buckets, bag.backend, os.environ.get(dispatch.ENV_VAR))
        cached = self._setup_cache.get(id(bag))
        if cached is not None and cached[0] == key:
            return cached[1]
        num_embeddings, padding_idx, buckets = _check_table(
            weight, bag.padding_idx, None, 2.0, False, False, bag.oov, bag.num_oov_buckets, bag.backend, where,
        )
        value = (num_embeddings, padding_idx, buckets, dispatch.select(bag.backend, weight.device, where))
        self._setup_cache[id(bag)] = (key, value)
        return value

    @staticmethod
    def _canonical_cpu(
        ids: Tensor, offsets: Tensor | None, last: bool, psw: Tensor | None, where: str, with_range: bool,
    ) -> tuple[Tensor, Tensor, Tensor | None, int, int]:
        """``_canonical_bags`` plus the ids' min and max, reading a CPU input once
        (not at all for the range without ``with_range``: then min, max = 0, -1).

        Returns (flat ids (N,), ends (B + 1,), flat per-sample weights, min id, max id).
        """
        if ids.dim() == 2:
            num_bags, length = ids.shape
            flat = ids.reshape(-1).contiguous()
            ends_np = np.arange(num_bags + 1, dtype=_NP_INT[ids.dtype]) * length
            lo, hi = 0, -1
            if with_range:
                lo, hi, *_ = _kernels.scan_bags(flat.numpy(), ends_np[:0], False, np.empty(1, ends_np.dtype), True)
            return flat, torch.from_numpy(ends_np), None if psw is None else psw.reshape(-1), lo, hi
        offsets = cast(Tensor, offsets)  # not None: check_offsets_shape saw to it
        ids = ids.contiguous()
        offs = offsets.contiguous().numpy()
        ends_np = np.empty(offs.shape[0] + (0 if last else 1), offs.dtype)
        lo, hi, first, last_offset, step, used = _kernels.scan_bags(ids.numpy(), offs, last, ends_np, with_range)
        if offs.shape[0] > 0:
            _checks.check_offsets_values(first, last_offset, step, ids.numel(), where)
        if used < ids.numel():  # torch ignores ids after the last offset; so do we
            ids = ids[:used]
            psw = None if psw is None else psw[:used]
        return ids, torch.from_numpy(ends_np), psw, lo, hi


_NP_INT = {torch.int64: np.int64, torch.int32: np.int32}


class _FusedStep:
    """Everything the fused Function needs that is not a tensor input."""

    def __init__(self, collection: EmbeddingBagCollection, bags: list[EmbeddingBag], lookups: list[_Lookup]) -> None:
        self.collection = collection
        self.optimizer = cast(_fused.FusedOptimizer, collection.optimizer)
        self.bags = bags
        self.lookups = lookups
        self.dims = collection._dims
        self.cols = collection._cols
        self.aux: list[tuple[Tensor, ...] | None] = []

    def psw_grad(self, i: int, grad: Tensor) -> Tensor:
        """d loss / d per_sample_weights of feature i (sum bags): the dot product of each
        id's row, as it was before the update, with its bag's output gradient."""
        lk = self.lookups[i]
        bag = self.bags[lk.table]
        g = grad[:, self.cols[i]:self.cols[i] + self.dims[i]]  # (B, D)
        ids = lk.ids.to(torch.int64)
        rows = bag.weight.detach().index_select(0, ids.clamp_min(0))  # (N, D)
        dots = (g[_fused.bag_of(lk.ends, ids.numel())] * rows).sum(1)
        return dots.masked_fill(~_fused.kept_mask(ids, bag.padding_idx), 0).reshape(lk.psw.shape)  # type: ignore[union-attr]

    def jobs(self, grad: Tensor) -> list[_fused.TableJob]:
        """One job per table, every feature of a table in it (shared tables sum across features)."""
        by_table: dict[int, list[int]] = {}
        for i, lk in enumerate(self.lookups):
            by_table.setdefault(lk.table, []).append(i)
        flat, bases, strides = _fused.flat_grads([grad])  # (B, sum of D): read in place
        jobs = []
        for t, features in by_table.items():
            bag = self.bags[t]
            if not bag.weight.requires_grad:  # a frozen table: its rows stay as they are
                continue
            state = _fused.module_state(bag, self.optimizer.spec)
            dtype = _fused.state_dtype(bag.weight.dtype)
            if bag.mode == "max":
                parts = [
                    _fused.max_rows_grads(self.lookups[i].ids, self.lookups[i].ends, self.aux[i][2],  # type: ignore[index]
                                          grad[:, self.cols[i]:self.cols[i] + self.dims[i]], bag.padding_idx, dtype)
                    for i in features
                ]
                rows, summed = parts[0]
                if len(parts) > 1:  # a shared max table: merge the features' rows
                    rows, inverse = torch.unique(torch.cat([p[0] for p in parts]), return_inverse=True)
                    summed = torch.zeros(rows.numel(), bag.weight.shape[1], dtype=dtype, device=rows.device)
                    summed.index_add_(0, inverse, torch.cat([p[1] for p in parts]))
                jobs.append(_fused.TableJob(bag.weight, state, rows=rows, grads=summed))
                continue
            sources = [
                _fused.BagSource(self.lookups[i].ids, self.lookups[i].ends, bases[0] + self.cols[i], strides[0],
                                 bag.mode == "mean", self.lookups[i].psw)
                for i in features
            ]
            jobs.append(_fused.TableJob(bag.weight, state, bag.padding_idx, False, flat, sources))
        return jobs


class _FusedBagsFunction(torch.autograd.Function):
    """All features of a collection in one autograd node, output ``(B, sum of D)``;
    its backward is one fused update of every table."""

    @staticmethod
    def forward(ctx: Any, step: _FusedStep, *tensors: Tensor | None) -> Tensor:  # type: ignore[override]
        full, step.aux = step.collection._lookup_all(step.bags, step.lookups, max_aux=True)
        ctx.step = step
        return full

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        step: _FusedStep = ctx.step
        num_tables = len(step.bags)
        psw_grads: list[Tensor | None] = [None] * len(step.lookups)
        for i in range(len(step.lookups)):
            # Per-sample-weight gradients first: they need the rows before the update.
            if ctx.needs_input_grad[1 + num_tables + i]:
                psw_grads[i] = step.psw_grad(i, grad)
        _fused.run_jobs(step.optimizer, step.jobs(grad))
        return (None, *([None] * num_tables), *psw_grads)
