"""Quantized table modules, and ``embtab.quantize`` / ``dequantize`` / ``save_quantized`` / ``load_quantized``.

A quantized table (:class:`QuantizedEmbedding`, :class:`QuantizedEmbeddingBag`) holds
one uint8 buffer ``weight`` of ``num_rows`` rows of bytes in FBGEMM's layout
(``quant/layouts.py``) and a :class:`~embtab.tables.spec.TableSpec` whose ``layout``
names it; its forward is the same pipeline call as the float module's, and the
registry gives it the quantized lookups. Its output is float32. It is inference only:
a gradient through it is refused with an error that names :meth:`dequantize`.

:func:`quantize` turns every ``embtab.Embedding`` and ``embtab.EmbeddingBag`` of a model
(those inside an ``EmbeddingBagCollection`` included) into quantized tables and leaves
the rest as it was, in a copy: the model passed in is unchanged. The copy's class is a
subclass of the model's own (``QuantizedTextClassifier`` for a ``TextClassifier``), so
its attributes, ``isinstance`` and ``state_dict`` keys are the model's; it adds
:meth:`QuantizedModel.dequantize`. A table with ``max_norm`` is quantized with its
rows renormalised (what its lookups would do to each row first); fused optimizers are
dropped (nothing to update).

:func:`save_quantized` writes the model's ``state_dict`` (each table one uint8 tensor)
and a description of its tables to one safetensors file, atomically;
:func:`load_quantized` reads it back: a table or a collection by itself, any other
model into an instance of its class passed as ``model=``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor
from torch.nn import Module

from .. import _checks, _memory
from .._io import SAFETENSORS_DTYPES, check_safetensors_data, write_safetensors
from ..configs import TableConfig
from ..nn.collection import EmbeddingBagCollection
from ..nn.embedding import Embedding
from ..nn.embedding_bag import EmbeddingBag
from ..nn.table import Table, spec_property
from ..ops import reference as dense_reference
from ..tables import pipeline
from ..tables.spec import TableSpec
from . import reference
from .layouts import LAYOUTS, Layout, layout_of

__all__ = [
    "QuantizedEmbedding", "QuantizedEmbeddingBag", "QuantizedModel", "QuantizedTable",
    "quantize", "dequantize", "save_quantized", "load_quantized", "FORMAT_NAME",
]

FORMAT_NAME = "embtab.quantized"
FORMAT_VERSION = 1


class QuantizedTable(Module):
    """Base of the quantized table modules: the byte rows, the spec, an out-of-range counter."""

    spec: TableSpec
    weight: Tensor

    num_embeddings = spec_property("num_embeddings", "In-vocabulary rows.", settable=False)
    embedding_dim = spec_property("embedding_dim", "Values per row.", settable=False)
    padding_idx = spec_property("padding_idx", "The padding row, or None.", settable=False)
    oov = spec_property("oov", "The out-of-vocabulary policy.", settable=False)
    num_oov_buckets = spec_property("num_oov_buckets", "Hash rows after the vocabulary (oov='hash').", settable=False)
    backend = spec_property("backend", "'auto' or a backend name (see embtab.backends()).", settable=False)

    def _setup(self, spec: TableSpec, data: Tensor | None, device: Any, where: str) -> None:
        self.spec = spec
        shape = (spec.num_rows, self.layout.row_bytes(spec.embedding_dim))
        if data is None:  # (huge pages for a large CPU table, as the float tables)
            data = _memory.empty(shape, dtype=torch.uint8, device=device).zero_()
        elif data.dtype != torch.uint8 or tuple(data.shape) != shape:
            raise _checks.WeightShapeError(
                f"{where}: a {spec.layout} table of {spec.num_rows} rows of {spec.embedding_dim} values stores a "
                f"uint8 tensor of shape {shape}, got {data.dtype} {tuple(data.shape)}"
            )
        self.register_buffer("weight", data)
        self.register_buffer("_oov_count", torch.zeros((), dtype=torch.int64, device=data.device), persistent=False)

    @property
    def layout(self) -> Layout:
        """The row layout (``layout.name``: ``"int8"``, ``"int4"``, ...)."""
        return LAYOUTS[self.spec.layout]

    @property
    def dtype(self) -> str:
        """The quantized dtype's name."""
        return self.spec.layout

    @property
    def nbytes(self) -> int:
        """Bytes of the stored rows: ``num_rows * layout.row_bytes(embedding_dim)``."""
        return self.weight.numel()

    @property
    def oov_count(self) -> int:
        """How many out-of-range ids this table has looked up."""
        return int(self._oov_count)

    def reset_oov_count(self) -> None:
        self._oov_count.zero_()

    def _state(self) -> tuple[Tensor, Tensor]:
        """``(weight, out-of-range counter)`` for a forward (what a collection reads)."""
        return self._buffers["weight"], self._buffers["_oov_count"]  # type: ignore[return-value]

    def dequantized_weight(self) -> Tensor:
        """``(num_rows, embedding_dim)`` float32: every row read back."""
        return reference.dequantize_rows(self.weight, self.layout, self.spec.embedding_dim)

    def _float_kwargs(self) -> dict[str, Any]:
        s = self.spec
        return {"padding_idx": s.padding_idx, "oov": s.oov, "num_oov_buckets": s.num_oov_buckets, "backend": s.backend}

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        value = state_dict.get(prefix + "weight")
        if isinstance(value, Tensor) and (value.dtype != torch.uint8 or value.shape != self.weight.shape):
            error_msgs.append(
                f"{prefix}weight: this {self.spec.layout} table stores uint8 {tuple(self.weight.shape)}, the state_dict "
                f"holds {value.dtype} {tuple(value.shape)}; load the state_dict of the same quantized model (a float "
                f"checkpoint loads into the float model: load it there, then quantize)"
            )
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _repr_tail(self) -> str:
        s = f", dtype={self.spec.layout!r}"
        if self.spec.padding_idx is not None:
            s += f", padding_idx={self.spec.padding_idx}"
        if self.spec.oov != "error":
            s += f", oov={self.spec.oov!r}"
        if self.spec.num_oov_buckets:
            s += f", num_oov_buckets={self.spec.num_oov_buckets}"
        if self.spec.backend != "auto":
            s += f", backend={self.spec.backend!r}"
        return s


class QuantizedEmbedding(QuantizedTable):
    """An inference-only ``Embedding`` whose rows are stored quantized.

    Args:
        num_embeddings, embedding_dim, padding_idx, oov, num_oov_buckets, backend: as
            :class:`embtab.Embedding`.
        dtype: ``"int8"``, ``"int4"``, ``"int2"``, ``"float16"`` or ``"bfloat16"``.

    The rows start at zero (bytes of zeros); fill them with ``load_state_dict`` or make
    the table with :meth:`from_float` / :func:`embtab.quantize`.

    Shape: input ``(*)`` ids; output ``(*, embedding_dim)`` float32.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: str = "int8", padding_idx: int | None = None,
                 *, oov: str = "error", num_oov_buckets: int = 0, backend: str = "auto",
                 device: torch.device | str | None = None, _spec: TableSpec | None = None,
                 _weight: Tensor | None = None) -> None:
        super().__init__()
        where = "QuantizedEmbedding"
        spec = _spec or TableSpec.make(where, num_embeddings, embedding_dim, padding_idx=padding_idx, oov=oov,
                                       num_oov_buckets=num_oov_buckets, backend=backend,
                                       layout=layout_of(dtype, where).name)
        self._setup(spec, _weight, device, where)

    @classmethod
    def from_float(cls, module: Embedding, dtype: str = "int8", method: str = "minmax") -> "QuantizedEmbedding":
        """The quantized copy of an ``embtab.Embedding``."""
        return _quantized_table(module, layout_of(dtype, "QuantizedEmbedding.from_float"), method,
                                "QuantizedEmbedding.from_float")  # type: ignore[return-value]

    def forward(self, input: Tensor) -> Tensor:
        weight, counter = self._state()
        return pipeline.embedding(self.spec, weight, input, where="QuantizedEmbedding", counter=counter)

    def dequantize(self) -> Embedding:
        """An ``embtab.Embedding`` holding the rows read back (float32, trainable)."""
        return Embedding(self.spec.num_embeddings, self.spec.embedding_dim, _weight=self.dequantized_weight(),
                         **self._float_kwargs())

    def extra_repr(self) -> str:
        return f"{self.spec.num_embeddings}, {self.spec.embedding_dim}" + self._repr_tail()


class QuantizedEmbeddingBag(QuantizedTable):
    """An inference-only ``EmbeddingBag`` whose rows are stored quantized.

    Args: as :class:`QuantizedEmbedding`, plus ``mode`` and ``include_last_offset`` of
    :class:`embtab.EmbeddingBag`. Same call as ``EmbeddingBag`` (``input``, ``offsets``,
    ``per_sample_weights``, float32 for the weights); output ``(B, embedding_dim)`` float32.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: str = "int8", mode: str = "mean",
                 padding_idx: int | None = None, include_last_offset: bool = False, *, oov: str = "error",
                 num_oov_buckets: int = 0, backend: str = "auto", device: torch.device | str | None = None,
                 _spec: TableSpec | None = None, _weight: Tensor | None = None) -> None:
        super().__init__()
        where = "QuantizedEmbeddingBag"
        spec = _spec or TableSpec.make(where, num_embeddings, embedding_dim, padding_idx=padding_idx, mode=mode,
                                       include_last_offset=include_last_offset, oov=oov,
                                       num_oov_buckets=num_oov_buckets, backend=backend,
                                       layout=layout_of(dtype, where).name)
        self._setup(spec, _weight, device, where)

    mode = spec_property("mode", "The bag reduction: 'sum', 'mean' or 'max'.", settable=False)
    include_last_offset = spec_property("include_last_offset", "Offsets hold B + 1 entries.", settable=False)

    @classmethod
    def from_float(cls, module: EmbeddingBag, dtype: str = "int8", method: str = "minmax") -> "QuantizedEmbeddingBag":
        """The quantized copy of an ``embtab.EmbeddingBag``."""
        return _quantized_table(module, layout_of(dtype, "QuantizedEmbeddingBag.from_float"), method,
                                "QuantizedEmbeddingBag.from_float")  # type: ignore[return-value]

    def forward(self, input: Tensor, offsets: Tensor | None = None,
                per_sample_weights: Tensor | None = None) -> Tensor:
        weight, counter = self._state()
        return pipeline.embedding_bag(self.spec, weight, input, offsets, per_sample_weights,
                                      where="QuantizedEmbeddingBag", counter=counter)

    def dequantize(self) -> EmbeddingBag:
        """An ``embtab.EmbeddingBag`` holding the rows read back (float32, trainable)."""
        s = self.spec
        return EmbeddingBag(s.num_embeddings, s.embedding_dim, mode=s.mode or "mean", _weight=self.dequantized_weight(),
                            include_last_offset=s.include_last_offset, **self._float_kwargs())

    def extra_repr(self) -> str:
        return f"{self.spec.num_embeddings}, {self.spec.embedding_dim}, mode={self.spec.mode!r}" + self._repr_tail()


# --- quantize / dequantize a model -------------------------------------------------------


class QuantizedModel:
    """Mixed into the class of a model returned by :func:`quantize` (before the model's own class)."""

    _float_class: type

    def dequantize(self) -> Module:
        """A copy with float tables (``embtab.Embedding`` / ``EmbeddingBag``) again, of the model's own class."""
        return dequantize(self)  # type: ignore[arg-type]

    def quantized_tables(self) -> dict[str, QuantizedTable]:
        """The quantized tables by module name."""
        return {n: m for n, m in self.named_modules() if isinstance(m, QuantizedTable)}  # type: ignore[attr-defined]


_CLASSES: dict[type, type] = {}


def _quantized_class(cls: type) -> type:
    if issubclass(cls, QuantizedModel):
        return cls
    got = _CLASSES.get(cls)
    if got is None:
        got = type(f"Quantized{cls.__name__}", (QuantizedModel, cls), {"_float_class": cls, "__module__": cls.__module__})
        _CLASSES[cls] = got
    return got


def _renormed(table: Table) -> Tensor:
    """The table's weight with every row renormalised to ``max_norm`` (what a lookup would do first)."""
    weight = table.weight.detach().clone()
    spec = table.spec
    dense_reference.renorm_(weight, torch.arange(weight.shape[0], device=weight.device), spec.max_norm,
                            spec.norm_type)
    return weight


def _quantized_table(table: Table, layout: Layout, method: str, where: str, *,
                     compute: bool = True) -> QuantizedTable:
    """The quantized copy of ``table`` (``compute=False``: the structure only, rows of zeros)."""
    _checks.check_quantize_method(method, where)
    if not isinstance(table, Table):
        raise TypeError(f"{where}: expected an embtab.Embedding or EmbeddingBag, got {type(table).__name__}")
    if table.spec.id_space is not None:
        # Its id stage (a dynamic table's id -> row map, a hashed table's importance weights)
        # is a module of the float table; a quantized copy would share it, and the model file
        # has no place for it yet.
        raise _checks.BadArgumentError(
            f"{where}: tables with ids={table.spec.id_space!r} cannot be quantized yet (only tables with an oov "
            f"policy); serve this model with float tables"
        )
    spec = table.spec.replace(where, layout=layout.name, max_norm=None, sparse=False, scale_grad_by_freq=False)
    data = None
    if compute:
        weight = table.weight.detach() if table.spec.max_norm is None else _renormed(table)
        _checks.check_quantizable(weight, where)
        data = reference.quantize_rows(weight, layout, method)
    cls = QuantizedEmbeddingBag if spec.mode is not None else QuantizedEmbedding
    device = "cpu" if table.weight.is_meta else table.weight.device  # (a structure built on "meta" to be loaded)
    return cls(spec.num_embeddings, spec.embedding_dim, _spec=spec, _weight=data, device=device)


def _tables(model: Module, kind: type) -> list[tuple[str, Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


def _aliases(name: str) -> set[str]:
    """The names ``per_table`` may use for a table: its module path, and its last part (the
    table's name in a collection: ``"item"`` for ``"tables.embedding_bags.item"``)."""
    return {name, name.rsplit(".", 1)[-1]} if name else {name}


def _layouts(tables: list[tuple[str, Module]], default: Layout, per_table: Mapping[str, Any] | None,
             where: str) -> dict[str, Layout]:
    chosen = {name: default for name, _ in tables}
    if not per_table:
        return chosen
    if not isinstance(per_table, Mapping):
        raise TypeError(f"{where}: per_table must be a mapping table name -> dtype, got {type(per_table).__name__}")
    for key, value in per_table.items():
        hits = [name for name, _ in tables if key in _aliases(name)]
        if not hits:
            known = sorted({a for name, _ in tables for a in _aliases(name) if a})
            raise _checks.BadArgumentError(
                f"{where}: per_table names {key!r}, which is no table of this model; its tables are {known}"
            )
        for name in hits:
            chosen[name] = layout_of(value, f"{where}: per_table[{key!r}]")
    return chosen


def quantize(model: Module, dtype: str = "int8", *, per_table: Mapping[str, str] | None = None,
             method: str = "minmax") -> Module:
    """A copy of ``model`` whose embedding tables are quantized; ``model`` is unchanged.

    Args:
        model: an ``embtab.Embedding``, ``EmbeddingBag``, ``EmbeddingBagCollection``, or
            any ``nn.Module`` holding them (the other modules are copied unchanged, and a
            dense head can still be trained).
        dtype: ``"int8"``, ``"int4"``, ``"int2"`` (row-wise: a scale and bias per row),
            ``"float16"`` or ``"bfloat16"``.
        per_table: another dtype for some tables, by name: a table's module path
            (``"embed"``, ``"tables.embedding_bags.item"``) or its last part (a collection's
            table name, ``"item"``).
        method: ``"minmax"`` (each row's range is its min and max, FBGEMM's quantizer) or
            ``"greedy"`` (each row's range narrowed to lower its squared error, as
            ``torch.ops.quantized``'s optimized qparams; better at 4 and 2 bits).

    Returns:
        A single table: its :class:`QuantizedEmbedding` / :class:`QuantizedEmbeddingBag`.
        A model: a copy of the model's own class (plus :class:`QuantizedModel`: ``dequantize()``).

    Example:
        >>> q = embtab.quantize(model, "int8", per_table={"item": "int4"}, method="greedy")  # doctest: +SKIP
        >>> q(ids, offsets)            # the same call and output as model's  # doctest: +SKIP
    """
    where = "embtab.quantize"
    default = layout_of(dtype, where)
    _checks.check_quantize_method(method, where)
    if isinstance(model, (QuantizedTable, QuantizedModel)):
        raise _checks.BadArgumentError(f"{where}: the model is quantized already; dequantize() it first to quantize "
                                       f"it otherwise")
    if isinstance(model, Table):
        if per_table:
            raise _checks.BadArgumentError(f"{where}: per_table names the tables of a model; for a single table "
                                           f"pass dtype= alone")
        return _quantized_table(model, default, method, where)
    if not isinstance(model, Module):
        raise TypeError(f"{where}: expected a torch.nn.Module, got {type(model).__name__}")
    tables = _tables(model, Table)
    if not tables:
        raise _checks.BadArgumentError(f"{where}: {type(model).__name__} holds no embtab.Embedding or EmbeddingBag "
                                       f"table: nothing to quantize")
    layouts = _layouts(tables, default, per_table, where)
    return _replaced(model, {name: _quantized_table(t, layouts[name], method, f"{where}: table {name!r}")  # type: ignore[arg-type]
                             for name, t in tables})


def _replaced(model: Module, new: dict[str, Module]) -> Module:
    """A deep copy of ``model`` with its submodules named in ``new`` replaced (never copied)."""
    memo: dict[int, Any] = {id(m): new[n] for n, m in model.named_modules() if n in new}
    for m in model.modules():
        if isinstance(m, (Table, EmbeddingBagCollection)) and getattr(m, "optimizer", None) is not None:
            memo[id(m.optimizer)] = None  # a fused optimizer holds the float weights: not copied
    out = copy.deepcopy(model, memo)
    out.__class__ = _quantized_class(type(model))
    return out


def dequantize(model: Module) -> Module:
    """A copy of a quantized model (or table) with float tables again (its rows read back)."""
    if isinstance(model, QuantizedTable):
        return model.dequantize()  # type: ignore[operator]
    if not isinstance(model, QuantizedModel):
        raise _checks.BadArgumentError(f"dequantize: {type(model).__name__} is not a quantized model")
    new = {n: t.dequantize() for n, t in _tables(model, QuantizedTable)}  # type: ignore[attr-defined]
    memo: dict[int, Any] = {id(m): new[n] for n, m in model.named_modules() if n in new}
    out = copy.deepcopy(model, memo)
    out.__class__ = type(model)._float_class
    return out


# --- the model file -----------------------------------------------------------------------


def _table_meta(t: QuantizedTable) -> dict[str, Any]:
    s = t.spec
    return {"kind": "EmbeddingBag" if s.mode is not None else "Embedding", "dtype": s.layout,
            "num_embeddings": s.num_embeddings, "embedding_dim": s.embedding_dim, "padding_idx": s.padding_idx,
            "mode": s.mode, "include_last_offset": s.include_last_offset, "oov": s.oov,
            "num_oov_buckets": s.num_oov_buckets, "row_bytes": t.layout.row_bytes(s.embedding_dim)}


def _table_from_meta(m: dict[str, Any], where: str) -> QuantizedTable:
    common = {"padding_idx": m["padding_idx"], "oov": m["oov"], "num_oov_buckets": m["num_oov_buckets"]}
    if m["kind"] == "EmbeddingBag":
        return QuantizedEmbeddingBag(m["num_embeddings"], m["embedding_dim"], m["dtype"], m["mode"],
                                     include_last_offset=m["include_last_offset"], device="cpu", **common)
    return QuantizedEmbedding(m["num_embeddings"], m["embedding_dim"], m["dtype"], device="cpu", **common)


def _root_meta(model: Module) -> dict[str, Any]:
    cls = type(model)._float_class if isinstance(model, QuantizedModel) else type(model)
    root: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    if isinstance(model, QuantizedTable):
        root["kind"] = "table"
    elif isinstance(model, EmbeddingBagCollection):
        root["kind"] = "collection"
        root["tables"] = [{"name": t.name, "num_embeddings": t.num_embeddings, "embedding_dim": t.embedding_dim,
                           "feature_names": list(t.feature_names or ()), "pooling": t.pooling, "oov": t.oov,
                           "num_oov_buckets": t.num_oov_buckets, "padding_idx": t.padding_idx} for t in model.tables]
    else:
        root["kind"] = "model"
    return root


def save_quantized(model: Module, path: str | os.PathLike[str], *, info: Mapping[str, Any] | None = None) -> None:
    """Write a quantized model (or table) to one safetensors file, atomically.

    The file holds the model's ``state_dict`` (each quantized table one uint8 tensor,
    rows x row bytes, in FBGEMM's layout; the other modules' tensors as they are) and,
    in its metadata, each table's options and dtype, the model's class and ``info``
    (any JSON-serialisable mapping: a vocabulary, labels, ...).
    """
    where = "save_quantized"
    tables = {n: _table_meta(t) for n, t in _tables(model, QuantizedTable)}  # type: ignore[arg-type]
    if not tables:
        raise _checks.BadArgumentError(f"{where}: {type(model).__name__} holds no quantized table; quantize it first: "
                                       f"embtab.save_quantized(embtab.quantize(model), path)")
    entries = []
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        entries.append((name, SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], tuple(t.shape),
                        t.reshape(-1).view(torch.uint8).numpy()))
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "tables": json.dumps(tables),
                "model": json.dumps(_root_meta(model)), "info": json.dumps(dict(info or {}))}
    write_safetensors(path, entries, metadata, checksum=True)


class QuantizedFile:
    """What :func:`read_quantized` read: tensors, table descriptions, model description, info."""

    def __init__(self, path: Path, tensors: dict[str, Tensor], tables: dict[str, dict[str, Any]],
                 model: dict[str, Any], info: dict[str, Any]) -> None:
        self.path, self.tensors, self.tables, self.model, self.info = path, tensors, tables, model, info


def read_quantized(path: str | os.PathLike[str]) -> QuantizedFile:
    """Read a file written by :func:`save_quantized`; a foreign or damaged file is a ``ValueError``."""
    from safetensors import safe_open

    path = Path(path)
    where = "load_quantized"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file: {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own types for a damaged header
        raise ValueError(f"{where}: {str(path)!r} is not a readable safetensors file ({exc})") from None
    problem = check_safetensors_data(path, meta)
    if problem is not None:
        raise ValueError(f"{where}: {str(path)!r} is corrupt: {problem}")
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{where}: {str(path)!r} is not an embtab quantized model file (format "
                         f"{meta.get('format')!r}); write one with embtab.save_quantized or embtab export")
    version = meta.get("format_version", "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ValueError(f"{where}: {str(path)!r} has format version {version!r}; this embtab reads up to "
                         f"{FORMAT_VERSION}: upgrade embtab")
    try:
        tables, model, info = (json.loads(meta[k]) for k in ("tables", "model", "info"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{where}: {str(path)!r} has damaged metadata ({exc})") from None
    return QuantizedFile(path, tensors, tables, model, info)


def _structure(model: Module, tables: dict[str, dict[str, Any]], where: str) -> Module:
    """``model`` (float) with its tables replaced by empty quantized tables of the file's dtypes."""
    found = dict(_tables(model, Table))
    if set(found) != set(tables):
        raise ValueError(f"{where}: the model's tables {sorted(found)} are not the file's {sorted(tables)}; pass a "
                         f"model built with the options the file's model was built with")
    new = {}
    for name, t in found.items():
        m = tables[name]
        q = _quantized_table(t, LAYOUTS[m["dtype"]], "minmax", f"{where}: table {name!r}", compute=False)  # type: ignore[arg-type]
        if q.spec.num_rows != t.spec.num_rows or q.spec.embedding_dim != m["embedding_dim"]:  # type: ignore[attr-defined]
            raise ValueError(f"{where}: table {name!r} is {t.spec.num_rows} rows x {t.spec.embedding_dim} in the "  # type: ignore[attr-defined]
                             f"model, {m['num_embeddings'] + m['num_oov_buckets']} x {m['embedding_dim']} in the file; "
                             f"pass a model built with the options the file's model was built with")
        new[name] = q
    return _replaced(model, new)


def load_quantized(path: str | os.PathLike[str], model: Module | None = None) -> Module:
    """Read a quantized model (or table) written by :func:`save_quantized`.

    Args:
        path: the file.
        model: for a model other than a table or an ``EmbeddingBagCollection``, an
            instance of its class built as the saved one was (float tables; its values
            do not matter): its tables are replaced by the file's quantized tables and
            every tensor is loaded. Its ``info`` is in ``model.quantized_info``.

    Returns:
        The quantized model on the CPU (``.to(device)`` moves it).
    """
    where = "load_quantized"
    f = read_quantized(path)
    root = f.model
    if model is None:
        if root.get("kind") == "table":
            module: Module = _table_from_meta(f.tables[""], where)
        elif root.get("kind") == "collection":
            configs = [TableConfig(t["name"], t["num_embeddings"], t["embedding_dim"], feature_names=t["feature_names"],
                                   pooling=t["pooling"], oov=t["oov"], num_oov_buckets=t["num_oov_buckets"],
                                   padding_idx=t["padding_idx"], init="zeros") for t in root["tables"]]
            module = _structure(EmbeddingBagCollection(configs, device="meta"), f.tables, where)
        else:
            raise ValueError(f"{where}: {str(f.path)!r} holds a {root.get('class')} model; pass model=<an instance of "
                             f"it built as the saved one was> to load it")
    elif isinstance(model, QuantizedModel) or isinstance(model, QuantizedTable):
        module = copy.deepcopy(model)
    else:
        module = _structure(model, f.tables, where)
    try:
        module.load_state_dict(f.tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{where}: {str(f.path)!r} does not fit the model ({str(exc).strip().splitlines()[-1]})") from None
    module.quantized_info = f.info  # type: ignore[assignment]
    return module
