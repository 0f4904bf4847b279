"""``embtab.EmbeddingBagCollection``: many pooled tables behind one forward and one fused backward.

The recommender's layer: several tables of different sizes and dims, each looked up
by one or more features, pooled per bag. The collection is a container of table
modules (``EmbeddingBag``; each holds its weight, spec and optimizer state). Its
forward prepares every feature with the same pipeline as a single module
(``tables.pipeline.prepare_bags``) and looks them all up through one autograd node
(``tables.pipeline.pool``); with a fused optimizer (``optimizer=``) the backward hands
each table's row gradients to one optimizer, which updates every touched row of
every table in one table-batched pass when backward ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn import Module

from .. import _checks
from ..configs import TableConfig
from ..optim.optimizer import FusedOptimizer
from ..optim.specs import FusedSpec, check_spec
from ..tables.pipeline import Feature, backend_of, pool, prepare_bags
from .embedding_bag import EmbeddingBag

__all__ = ["EmbeddingBagCollection", "PooledEmbeddings"]

_WHERE = "EmbeddingBagCollection"


class PooledEmbeddings(Mapping):  # Mapping[str, Tensor]
    """The collection's output: a read-only mapping feature name -> pooled ``(B, D)`` tensor.

    Iterates in the collection's fixed feature order; :meth:`concat` gives the
    ``(B, sum of D)`` tensor in that order (what the dense layers usually take). The
    forward writes all features into that one tensor, so ``concat()`` costs nothing
    and the per-feature tensors are column views of it (split on first use).
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

    def to_dict(self) -> dict[str, Tensor]:
        """A plain ``dict`` feature -> ``(B, D)`` (as torchrec's ``KeyedTensor.to_dict()``)."""
        return dict(self._split())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n!r}: {tuple(v.shape)}" for n, v in self._split().items())
        return f"PooledEmbeddings({{{shapes}}})"


class TableDict(Module):
    """The collection's tables by name. Any non-empty string is a name (``"items"``,
    ``"type"``, ``"to"`` included): modules are kept in ``_modules`` directly, not as
    attributes, so a name never collides with a method. State-dict keys are
    ``<name>.weight`` as in a ``ModuleDict``."""

    def __init__(self, tables: Mapping[str, Module]) -> None:
        super().__init__()
        for name, module in tables.items():
            self._modules[name] = module

    def __getitem__(self, name: str) -> Module:
        return self._modules[name]  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def keys(self) -> Any:
        return self._modules.keys()

    def values(self) -> Any:
        return self._modules.values()

    def items(self) -> Any:
        return self._modules.items()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        before = len(unexpected_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                       error_msgs)
        # torch finds a key's module by its text up to the first '.': a table named "a.b"
        # owns "a.b.weight", which the children load themselves.
        unexpected_keys[before:] = [k for k in unexpected_keys[before:]
                                    if not any(k.startswith(f"{prefix}{name}.") for name in self._modules)]


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
        backend: ``"auto"`` or a backend name for every table (see :func:`embtab.backends`).

    Input (``forward``): a mapping feature name -> ``(ids, offsets)`` or
    ``(ids, offsets, per_sample_weights)`` (1-D ids with ``offsets`` = the start of
    each bag, as ``torch.nn.EmbeddingBag``), ``(ids_2d, None)`` / ``ids_2d`` for
    fixed-length bags, or a ``torchrec.JaggedTensor``; or a
    ``torchrec.KeyedJaggedTensor`` with these keys. Every feature needs the same batch size B.

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
        optimizer: FusedSpec | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self._tables = self._checked_tables(tables)
        self.feature_names: tuple[str, ...] = tuple(f for t in self._tables for f in t.feature_names)
        self._feature_table = {f: t.name for t in self._tables for f in t.feature_names}
        self._dims = tuple(t.embedding_dim for t in self._tables for _ in t.feature_names)
        self._wheres = {f: f"{_WHERE} feature {f!r} (table {t.name!r})" for t in self._tables for f in t.feature_names}
        spec = check_spec(optimizer, _WHERE) if optimizer is not None else None
        self.embedding_bags = TableDict({
            t.name: EmbeddingBag(
                t.num_embeddings, t.embedding_dim, mode=t.pooling, padding_idx=t.padding_idx,
                device=device, dtype=dtype, oov=t.oov, num_oov_buckets=t.num_oov_buckets, init=t.init,
                backend=backend, ids=t.ids,
            )
            for t in self._tables
        })
        self.optimizer: FusedOptimizer | None = None
        if spec is not None:
            # One optimizer, one param group, for all tables: one learning rate to schedule,
            # and one table-batched update per backward pass.
            bags = []  # each table, and the tables of its ids stage (embtab.ids.Hashed's importance)
            for t, bag in zip(self._tables, self._bags()):
                for trained in bag._trained_tables():
                    trained._add_optimizer_state(spec, f"{_WHERE} table {t.name!r}")
                    bags.append(trained)
            self.optimizer = FusedOptimizer(bags, spec)
            for bag in bags:
                bag._use_optimizer(self.optimizer)
        # Tables whose ids stage takes one training step per forward (embtab.ids.Dynamic):
        # table name -> its features, when looked up by several.
        self._steps = {t.name: t.feature_names for t in self._tables
                       if self.embedding_bags[t.name].spec.ids.stateful and len(t.feature_names) > 1}

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

    def forward(self, features: Any) -> PooledEmbeddings:
        inputs = self._inputs(features)
        steps = self._open_steps(inputs) if self._steps else None
        try:
            prepared = []
            for f, (ids, offsets, psw, last) in zip(self.feature_names, inputs):
                bag = self.embedding_bags[self._feature_table[f]]
                spec, (weight, counter) = bag.spec, bag._state()
                backend = backend_of(spec, weight)
                bags = prepare_bags(spec, weight, backend, ids, offsets, psw, last, where=self._wheres[f],
                                    counter=counter)
                prepared.append(Feature(spec, weight, backend, bags, bag))
        finally:
            if steps is not None:
                steps.close()
        sizes = [p.bags.num_bags for p in prepared]
        if len(set(sizes)) > 1:
            detail = ", ".join(f"{f!r}: {b}" for f, b in zip(self.feature_names, sizes))
            raise ValueError(f"{_WHERE}: every feature needs the same batch size, got {detail}")
        full = pool(prepared, self.optimizer)
        return PooledEmbeddings(self.feature_names, full=full, dims=self._dims)

    @torch.compiler.disable
    def _open_steps(self, inputs: list[tuple[Tensor, Tensor | None, Tensor | None, bool]]) -> contextlib.ExitStack:
        """One training step of each table whose ids stage takes steps, over all its features' ids."""
        steps = contextlib.ExitStack()
        by_feature = dict(zip(self.feature_names, inputs))
        for name, names in self._steps.items():
            stage = self.embedding_bags[name].spec.ids
            steps.enter_context(stage.step([by_feature[f][0] for f in names], f"{_WHERE} table {name!r}"))
        return steps

    def _inputs(self, features: Any) -> list[tuple[Tensor, Tensor | None, Tensor | None, bool]]:
        """Per feature, in order: (ids, offsets, per_sample_weights, include_last_offset)."""
        if _is_torchrec(features, "KeyedJaggedTensor"):
            return self._kjt_inputs(features)
        if not isinstance(features, Mapping):
            raise TypeError(
                f"{_WHERE}: features must be a mapping feature name -> (ids, offsets[, per_sample_weights]) "
                f"or a torchrec.KeyedJaggedTensor, got {type(features).__name__}"
            )
        self._check_keys(list(features.keys()))
        out = []
        for f in self.feature_names:
            value = features[f]
            if isinstance(value, Tensor):
                out.append((value, None, None, False))
            elif _is_torchrec(value, "JaggedTensor"):
                # offsets have B + 1 entries, like include_last_offset=True
                out.append((value.values(), value.offsets(), value.weights_or_none(), True))
            elif isinstance(value, (tuple, list)) and len(value) in (2, 3):
                out.append((value[0], value[1], value[2] if len(value) == 3 else None, False))
            else:
                raise TypeError(
                    f"{_WHERE}: feature {f!r} must be (ids, offsets), (ids, offsets, per_sample_weights) or a "
                    f"torchrec.JaggedTensor, got {type(value).__name__}"
                    + (f" of length {len(value)}" if isinstance(value, (tuple, list)) else "")
                )
        return out

    def _check_keys(self, keys: list[str]) -> None:
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"{_WHERE}: the input names features {duplicated} more than once")
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
        """A ``KeyedJaggedTensor``'s features, checked (lengths against values, weights against
        values, one batch size), without torchrec's own splitting."""
        if getattr(kjt, "variable_stride_per_key", lambda: False)():
            raise ValueError(f"{_WHERE}: a KeyedJaggedTensor with a batch size per key is not supported; "
                             f"every feature needs the same batch size")
        keys = list(kjt.keys())
        self._check_keys(keys)
        values, lengths, weights = kjt.values(), kjt.lengths(), kjt.weights_or_none()
        stride = kjt.stride()
        if lengths.numel() != len(keys) * stride:
            raise ValueError(f"{_WHERE}: the KeyedJaggedTensor has {lengths.numel()} lengths for {len(keys)} keys "
                             f"of batch size {stride}; expected {len(keys) * stride}")
        per_key = lengths.reshape(len(keys), stride).to(torch.int64).sum(1).tolist() if keys else []
        if sum(per_key) != values.numel():
            detail = ", ".join(f"{k!r}: {n}" for k, n in zip(keys, per_key))
            raise ValueError(f"{_WHERE}: the KeyedJaggedTensor's lengths sum to {sum(per_key)} ({detail}) but it "
                             f"holds {values.numel()} values; lengths and values must agree")
        if weights is not None and weights.shape != values.shape:
            raise ValueError(f"{_WHERE}: the KeyedJaggedTensor's weights have shape {tuple(weights.shape)}, its "
                             f"values {tuple(values.shape)}; give one weight per value")
        starts = [0]
        for n in per_key:
            starts.append(starts[-1] + n)
        by_key = {}
        for i, k in enumerate(keys):
            lk = lengths[i * stride:(i + 1) * stride].to(torch.int64)
            offsets = torch.zeros(stride + 1, dtype=torch.int64, device=lk.device)
            torch.cumsum(lk, 0, out=offsets[1:])
            a, b = starts[i], starts[i + 1]
            by_key[k] = (values[a:b], offsets.to(values.dtype) if values.dtype in _checks.INDEX_DTYPES else offsets,
                         None if weights is None else weights[a:b], True)
        return [by_key[f] for f in self.feature_names]


def _is_torchrec(value: Any, name: str) -> bool:
    cls = type(value)
    return cls.__name__ == name and cls.__module__.startswith("torchrec")
