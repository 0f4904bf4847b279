"""What a table is: :class:`TableSpec`, one frozen, checked object.

Every lookup (the functional API, the modules, the collection) carries its table's
options as one ``TableSpec`` instead of a dozen positional arguments. It is built and
checked once: by a module at construction (and again when an option is assigned), by
the functional API once per distinct set of arguments.

A spec does not hold the weight, its dtype or its device: those belong to the tensor
(``module.to()`` changes them, as in torch); backends are chosen per call from the
weight (see ``ops/registry.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import _checks
from ..ids.policies import IdSpace, IdStage, policy
from ..ops import registry
from ..quant import layouts as quant_layouts

LAYOUTS = ("dense",) + quant_layouts.DTYPES  # dense float weights, or quantized rows (embtab.quant)


@dataclass(frozen=True)
class TableSpec:
    """A table's options, checked.

    Attributes:
        num_embeddings: in-vocabulary rows: ids ``0 .. num_embeddings - 1``.
        embedding_dim: size of each vector.
        padding_idx: a row in ``[0, num_embeddings)`` (normalised), or None.
        max_norm, norm_type: renormalise looked-up rows (``max_norm`` None: off).
        scale_grad_by_freq: divide an id's gradient by its count in the input.
        sparse: weight gradients as sparse COO tensors.
        mode: ``None`` for an unpooled lookup (``Embedding``), or the bag reduction
            ``"sum"``, ``"mean"``, ``"max"``.
        include_last_offset: offsets hold B + 1 entries (bag lookups).
        oov, num_oov_buckets: the out-of-vocabulary policy and its hash rows.
        backend: ``"auto"`` or a backend name (``ops/registry.py``).
        layout: how rows are stored: ``"dense"`` (a float weight of ``num_rows`` rows) or a
            quantized layout (``"int8"``, ``"int4"``, ``"int2"``, ``"float16"``, ``"bfloat16"``:
            a uint8 weight of ``num_rows`` rows of bytes, see ``embtab/quant/layouts.py``).
        ids: the ids-to-rows stage (from ``oov``, or built from ``id_space``).
        id_space: ``ids=`` of the table (``embtab.ids.Hashed`` / ``Dynamic``), or None.
    """

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    sparse: bool = False
    mode: str | None = None
    include_last_offset: bool = False
    oov: str = "error"
    num_oov_buckets: int = 0
    backend: str = "auto"
    layout: str = "dense"
    ids: IdStage = dataclasses.field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    id_space: IdSpace | None = None

    @classmethod
    def make(cls, where: str, num_embeddings: Any, embedding_dim: Any, **options: Any) -> "TableSpec":
        """Check every option (errors name ``where``) and build the spec."""
        num_embeddings = _checks.check_positive_int(num_embeddings, "num_embeddings", where, allow_zero=True)
        embedding_dim = _checks.check_positive_int(embedding_dim, "embedding_dim", where, allow_zero=True)
        padding_idx = _checks.normalize_padding_idx(options.get("padding_idx"), num_embeddings, where)
        oov = options.get("oov", "error")
        buckets = _checks.check_oov(oov, options.get("num_oov_buckets", 0), padding_idx, where)
        max_norm, norm_type = options.get("max_norm"), options.get("norm_type", 2.0)
        _checks.check_max_norm(max_norm, norm_type, where)
        scale, sparse = options.get("scale_grad_by_freq", False), options.get("sparse", False)
        _checks.check_flag(scale, "scale_grad_by_freq", where)
        _checks.check_flag(sparse, "sparse", where)
        _checks.check_sparse(sparse, scale, where)
        mode = options.get("mode")
        if mode is not None:
            _checks.check_bag_mode(mode, scale, sparse, where)
        last = options.get("include_last_offset", False)
        _checks.check_flag(last, "include_last_offset", where)
        backend = registry.check_name(options.get("backend", "auto"), where)
        layout = options.get("layout", "dense")
        if layout not in LAYOUTS:
            raise _checks.BadArgumentError(f"{where}: unknown layout {layout!r}; choose one of {LAYOUTS}")
        id_space = options.get("id_space")
        if id_space is None:
            stage = policy(oov, padding_idx, buckets)
        else:  # an unbounded id space: its stage (kept by replace(), it may hold state)
            _checks.check_id_space(id_space, oov, buckets, padding_idx, bool(scale), where)
            stage = options.get("_stage") or id_space.stage(num_embeddings, embedding_dim, where)
        return cls(
            num_embeddings, embedding_dim, padding_idx, None if max_norm is None else float(max_norm),
            float(norm_type), bool(scale), bool(sparse), mode, bool(last), oov, buckets, backend, layout,
            stage, id_space,
        )

    def replace(self, where: str, **changes: Any) -> "TableSpec":
        """A checked copy with some options changed (a module's ``emb.max_norm = 1.0``)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ids"}
        if self.id_space is not None:
            fields["_stage"] = self.ids
        fields.update(changes)
        return TableSpec.make(where, **fields)

    @property
    def num_rows(self) -> int:
        """Rows of the weight: ``num_embeddings`` plus the policy's extra rows (hash buckets)."""
        return self.num_embeddings + self.ids.extra_rows

