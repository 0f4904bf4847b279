"""What ``Embedding`` and ``EmbeddingBag`` share: a weight, a checked :class:`TableSpec`, an
ids stage, an out-of-range counter and, optionally, a fused optimizer with its state.

A module holds state; the lookup pipeline (``tables/pipeline.py``) does the work. The
torch attributes (``padding_idx``, ``max_norm``, ``sparse``, ...) read and write the spec,
so assigning one (``emb.max_norm = 1.0``) is checked like a constructor argument.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from .. import _checks, _memory
from ..init import Init, apply_init, check_init
from ..ops.autograd import Fused
from ..ops.common import acc_dtype
from ..optim.optimizer import FusedOptimizer
from ..optim.specs import FusedSpec, check_spec, new_state
from ..tables.spec import TableSpec

STATE_PREFIX = "optim_"


def spec_property(name: str, doc: str, *, settable: bool = True) -> property:
    """A table module's attribute read from its spec (set: a new spec, checked)."""
    def get(self: Any) -> Any:
        return getattr(self.spec, name)

    def set(self: Any, value: Any) -> None:
        self.spec = self.spec.replace(type(self).__name__, **{name: value})

    return property(get, set if settable else None, doc=doc)


class Table(Module):
    """Base of the table modules (not used directly)."""

    spec: TableSpec
    weight: Tensor
    optimizer: FusedOptimizer | None
    init: Init

    num_embeddings = spec_property("num_embeddings", "In-vocabulary rows.")
    embedding_dim = spec_property("embedding_dim", "Size of each vector.")
    padding_idx = spec_property("padding_idx", "The padding row (normalised to [0, num_embeddings)), or None.")
    max_norm = spec_property("max_norm", "Renormalise looked-up rows to this norm (None: off).")
    norm_type = spec_property("norm_type", "The p of the p-norm for max_norm.")
    scale_grad_by_freq = spec_property("scale_grad_by_freq", "Divide gradients by the id's count.")
    sparse = spec_property("sparse", "Sparse COO weight gradients.")
    oov = spec_property("oov", "The out-of-vocabulary policy.")
    num_oov_buckets = spec_property("num_oov_buckets", "Hash rows after the vocabulary (oov='hash').")
    backend = spec_property("backend", "'auto' or a backend name (see embtab.backends()).")

    def __init__(self) -> None:
        # Module's, not torch's Embedding/EmbeddingBag's (a subclass's other base): the spec
        # holds their attributes, checked.
        Module.__init__(self)

    def _setup_table(self, spec: TableSpec, _weight: Tensor | None, requires_grad: bool,
                     device: Any, dtype: torch.dtype | None, init: Init, where: str) -> None:
        self.spec = spec
        self.init = check_init(init, where)
        shape = (spec.num_rows, spec.embedding_dim)
        if _weight is None:
            # Empty and on huge pages where large (see _memory), then filled by reset_parameters.
            self.weight = Parameter(_memory.empty(shape, dtype=dtype, device=device), requires_grad=requires_grad)
            self.reset_parameters()
        else:
            _checks.check_weight(_weight, where, "_weight", pooled=spec.mode is not None)
            if tuple(_weight.shape) != shape:
                extra = f" + num_oov_buckets={spec.num_oov_buckets}" if spec.num_oov_buckets else ""
                raise _checks.WeightShapeError(
                    f"{where}: _weight must have shape (num_embeddings{extra}, embedding_dim) = "
                    f"{shape}, got {tuple(_weight.shape)} (Shape of weight does not match num_embeddings "
                    f"and embedding_dim)"
                )
            if requires_grad and not _weight.is_floating_point():
                raise _checks.WeightDtypeError(
                    f"{where}: an integer table ({_weight.dtype}) can be looked up but not trained; pass "
                    f"freeze=True, or convert it with .float() (Only Tensors of floating point and complex "
                    f"dtype can require gradients)"
                )
            self.weight = Parameter(_weight, requires_grad=requires_grad)
        # Out-of-range ids seen so far; a tensor so that counting never syncs with the GPU.
        # Not persistent: the state_dict holds exactly `weight` (and optimizer state), as torch's does.
        self.register_buffer(
            "_oov_count", torch.zeros((), dtype=torch.int64, device=self.weight.device), persistent=False
        )
        self.optimizer = None
        self._fused: Fused | None = None
        spec.ids.bind(self)  # a stage with state or tables of its own becomes this module's ``ids``

    # --- the fused optimizer -------------------------------------------------------------------

    def _setup_optimizer(self, optimizer: FusedSpec | None, where: str) -> None:
        """Bind a fused optimizer to this table alone."""
        if optimizer is None:
            return
        spec = check_spec(optimizer, where)
        tables = self._trained_tables()
        for table in tables:
            table._add_optimizer_state(spec, where)
        fused = FusedOptimizer(tables, spec)
        for table in tables:
            table._use_optimizer(fused)

    def _trained_tables(self) -> list["Table"]:
        """This table and those of its ids stage (``embtab.ids.Hashed``'s importance weights):
        what a fused optimizer bound to this table trains."""
        return [self, *self.spec.ids.tables()]

    def _add_optimizer_state(self, spec: FusedSpec, where: str) -> None:
        """Register the per-row state of ``spec`` as buffers ``optim_<name>``."""
        if self.spec.sparse:
            raise ValueError(
                f"{where}: optimizer= updates the rows during backward, so no gradient is built "
                f"and sparse=True has nothing to do; drop sparse=True (or drop optimizer= and "
                f"use embtab.optim.SparseAdamW / SparseRowWiseAdagrad on sparse gradients)"
            )
        if not self.weight.is_floating_point():
            raise TypeError(f"{where}: optimizer= trains the table, but its weight is {self.weight.dtype}; "
                            f"use a floating-point weight")
        for name, tensor in new_state(spec, self.weight).items():
            self.register_buffer(STATE_PREFIX + name, tensor)

    def _use_optimizer(self, optimizer: FusedOptimizer) -> None:
        self.optimizer = optimizer
        self._fused = Fused(optimizer, self)

    def _optim_state(self) -> dict[str, Tensor]:
        """The optimizer's per-row state tensors (looked up per call: ``.to()`` replaces them)."""
        assert self.optimizer is not None  # internal: only the bound optimizer calls this
        return {name: getattr(self, STATE_PREFIX + name) for name in self.optimizer.spec.state_layout()}

    def _state(self) -> tuple[Tensor, Tensor]:
        """``(weight, out-of-range counter)`` for a forward: read from the module's dicts
        directly (``self.weight`` goes through ``Module.__getattr__``, a microsecond a call)."""
        return self._parameters["weight"], self._buffers["_oov_count"]  # type: ignore[return-value]

    def reset_optimizer_state(self, rows: Tensor | None = None) -> None:
        """Reset the fused optimizer's per-row state to its initial values: every row, or ``rows``."""
        if self.optimizer is None:
            return
        with torch.no_grad():
            for name, f in self.optimizer.spec.state_layout().items():
                state = getattr(self, STATE_PREFIX + name)
                if rows is None:
                    state.fill_(f.initial)  # in place: no second state allocated
                else:
                    state.index_fill_(0, rows.to(device=state.device, dtype=torch.int64), f.initial)

    def reset_rows(self, rows: Tensor, values: Tensor) -> None:
        """Give ``rows`` a fresh start: weight ``values`` (len(rows), dim) and the fused
        optimizer's initial state (an ids stage hands over the rows it reassigns)."""
        if rows.numel() == 0:
            return
        with torch.no_grad():
            index = rows.to(device=self.weight.device, dtype=torch.int64)
            self.weight.index_copy_(0, index, values.to(device=self.weight.device, dtype=self.weight.dtype))
        self.reset_optimizer_state(rows)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        self.spec.ids.pack_state(self, destination, prefix)  # a dynamic table saves its live rows only

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "Table":
        """``.to()``, ``.half()``, ``.cuda()``...: the optimizer state follows the weight's device,
        and stays in its accumulation dtype (float32 for 16-bit tables), cast from the original."""
        state = {k: b for k, b in self._buffers.items() if k.startswith(STATE_PREFIX) and b is not None}
        for k in state:
            del self._buffers[k]
        try:
            super()._apply(fn, recurse)
        finally:
            for k, b in state.items():
                moved = fn(b)
                want = b.dtype if not b.is_floating_point() else acc_dtype(self.weight.dtype)
                if moved.dtype != want:
                    moved = b.to(device=moved.device, dtype=want)
                self._buffers[k] = moved
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        self.spec.ids.unpack_state(self, state_dict, prefix)
        if self.optimizer is not None:
            for name, f in self.optimizer.spec.state_layout().items():
                key = prefix + STATE_PREFIX + name
                value = state_dict.get(key)
                if isinstance(value, Tensor) and value.numel():
                    bad = ~torch.isfinite(value) if value.is_floating_point() else torch.zeros_like(value, dtype=torch.bool)
                    if f.nonnegative:
                        bad |= value < 0
                    if bool(bad.any()):
                        at = int(bad.reshape(-1).nonzero()[0, 0])
                        raise ValueError(
                            f"{type(self).__name__}.load_state_dict: {key} holds an invalid value "
                            f"{value.reshape(-1)[at].item()} at flat index {at} (optimizer state must be finite"
                            f"{' and >= 0' if f.nonnegative else ''}); the rows would become NaN at the next "
                            f"update. Fix the checkpoint, or load the weights alone and reset_optimizer_state()"
                        )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --- weights ---------------------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """Re-initialise the weight with ``init`` and zero the padding row."""
        if self.weight.numel():
            apply_init(self.weight, self.init)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    @property
    def oov_count(self) -> int:
        """How many out-of-range ids this module has looked up (reads the device once)."""
        return int(self._oov_count)

    def reset_oov_count(self) -> None:
        self._oov_count.zero_()

    def _extra_repr_tail(self) -> str:
        s = ""
        if self.oov != "error":
            s += f", oov={self.oov!r}"
        if self.num_oov_buckets:
            s += f", num_oov_buckets={self.num_oov_buckets}"
        if self.init != "normal":
            name = self.init if isinstance(self.init, str) else getattr(self.init, "__name__", "custom")
            s += f", init={name!r}"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.optimizer is not None:
            s += f", optimizer={self.optimizer.spec!r}"
        return s

    @classmethod
    def from_vectors(cls, vectors, vocab, **kwargs):  # type: ignore[no-untyped-def]
        """A table aligned to ``vocab`` from pretrained ``vectors``, and its coverage report.

        Works for ``Embedding`` and ``EmbeddingBag`` alike (built with the class's
        ``from_pretrained``); see :func:`embtab.vectors.align.embedding_from_vectors`
        for the arguments.
        """
        from ..vectors.align import embedding_from_vectors

        return embedding_from_vectors(vectors, vocab, embedding_cls=cls, **kwargs)


NONFINITE = ("error", "keep")


def pretrained_weight(embeddings: Tensor, num_oov_buckets: int, where: str, nonfinite: str = "error") -> Tensor:
    """``embeddings`` plus ``num_oov_buckets`` hash rows drawn from N(0, std^2), std over the
    finite rows of ``embeddings``.

    A row holding NaN or inf is refused (naming it) unless ``nonfinite="keep"``; kept
    rows never reach the statistics that initialise other rows. Without buckets the
    tensor itself is returned, so the module shares its storage as torch's
    ``from_pretrained`` does.
    """
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        _checks.check_weight(embeddings, where, "embeddings")
    if nonfinite not in NONFINITE:
        raise ValueError(f"{where}: nonfinite must be one of {NONFINITE}, got nonfinite={nonfinite!r}")
    finite = torch.isfinite(embeddings.detach()).all(1) if embeddings.is_floating_point() else None
    if finite is not None and nonfinite == "error" and not bool(finite.all()):
        bad = (~finite).nonzero().squeeze(1)
        row = int(bad[0])
        value = embeddings[row][~torch.isfinite(embeddings[row])][0].item()
        raise ValueError(
            f"{where}: embeddings row {row} holds a non-finite value ({value}); {bad.numel()} of "
            f"{embeddings.shape[0]} rows do. Fix the vectors, or pass nonfinite='keep' to keep them "
            f"(they are never used to initialise other rows)"
        )
    if not num_oov_buckets:
        return embeddings
    good = embeddings.detach() if finite is None else embeddings.detach()[finite]
    std = float(good.double().std()) if good.numel() > 1 else 1.0
    if not math.isfinite(std):
        std = 1.0
    shape = (num_oov_buckets, embeddings.shape[1])
    if not embeddings.is_floating_point():  # an integer table's bucket rows start at zero
        return torch.cat([embeddings.detach(), embeddings.new_zeros(shape)])
    extra = torch.randn(shape, dtype=embeddings.dtype, device=embeddings.device) * std
    return torch.cat([embeddings.detach(), extra])


def check_trainable(freeze: bool, optimizer: object, where: str) -> None:
    """``from_pretrained(..., optimizer=...)`` needs ``freeze=False``: a frozen table never trains."""
    if optimizer is not None and freeze:
        raise ValueError(
            f"{where}: optimizer= trains the table, but freeze=True (the default) keeps it fixed, so it "
            f"would never change; pass freeze=False"
        )
