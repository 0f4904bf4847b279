"""State shared by ``Embedding`` and ``EmbeddingBag``: the weight and the table's options.

A module holds state and checks its options once here; the functional does the work.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module, Parameter

from .. import _checks, _memory
from ..init import Init, apply_init, check_init
from ..ops import dispatch
from ..optim import _fused


class _Table(Module):
    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None
    max_norm: float | None
    norm_type: float
    scale_grad_by_freq: bool
    sparse: bool
    oov: str
    num_oov_buckets: int
    init: Init
    backend: str
    weight: Tensor
    optimizer: _fused.FusedOptimizer | None

    def _setup_table(
        self,
        where: str,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None,
        max_norm: float | None,
        norm_type: float,
        scale_grad_by_freq: bool,
        sparse: bool,
        _weight: Tensor | None,
        requires_grad: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
        oov: str,
        num_oov_buckets: int,
        init: Init,
        backend: str,
    ) -> None:
        self.num_embeddings = _checks.check_positive_int(num_embeddings, "num_embeddings", where)
        self.embedding_dim = _checks.check_positive_int(embedding_dim, "embedding_dim", where)
        self.padding_idx = _checks.normalize_padding_idx(padding_idx, self.num_embeddings, where)
        self.num_oov_buckets = _checks.check_oov(oov, num_oov_buckets, self.padding_idx, where)
        _checks.check_max_norm(max_norm, norm_type, where)
        _checks.check_sparse(sparse, scale_grad_by_freq, where)
        self.oov = oov
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.sparse = sparse
        self.init = check_init(init, where)
        self.backend = dispatch.check_backend_name(backend, where)
        rows = self.num_embeddings + self.num_oov_buckets
        if _weight is None:
            # Empty and on huge pages where large (see _memory), then filled by reset_parameters.
            self.weight = Parameter(
                _memory.empty((rows, self.embedding_dim), dtype=dtype, device=device), requires_grad=requires_grad
            )
            self.reset_parameters()
        else:
            _checks.check_weight(_weight, where, "_weight")
            if tuple(_weight.shape) != (rows, self.embedding_dim):
                extra = f" + num_oov_buckets={self.num_oov_buckets}" if self.num_oov_buckets else ""
                raise ValueError(
                    f"{where}: _weight must have shape (num_embeddings{extra}, embedding_dim) = "
                    f"{(rows, self.embedding_dim)}, got {tuple(_weight.shape)}"
                )
            self.weight = Parameter(_weight, requires_grad=requires_grad)
        # Out-of-range ids seen so far; a tensor so that counting never syncs with the GPU.
        # Not persistent: the state_dict holds exactly `weight`, as torch's does.
        self.register_buffer(
            "_oov_count", torch.zeros((), dtype=torch.int64, device=self.weight.device), persistent=False
        )

    def _setup_optimizer(self, optimizer: _fused.FusedSpec | None, where: str) -> None:
        """Bind a fused optimizer: its per-row state becomes buffers ``optim_<name>``."""
        if optimizer is not None and self.sparse:
            raise ValueError(
                f"{where}: optimizer= updates the rows during backward, so no gradient is built "
                f"and sparse=True has nothing to do; drop sparse=True (or drop optimizer= and "
                f"use embtab.optim.SparseAdamW / SparseRowWiseAdagrad on sparse gradients)"
            )
        self.optimizer = _fused.bind(self, optimizer, where)

    def _fused_target(self) -> _fused.FusedTarget | None:
        """What the functional needs to run the fused backward, or None without an optimizer."""
        opt = self.optimizer
        if opt is None:
            return None
        return _fused.FusedTarget(opt, self.weight, _fused.module_state(self, opt.spec))

    def reset_optimizer_state(self) -> None:
        """Reset the fused optimizer's per-row state to its initial values."""
        if self.optimizer is not None:
            layout = self.optimizer.spec.state_layout(*self.weight.shape)
            for name, (_, _, fill) in layout.items():  # in place: no second state allocated
                getattr(self, _fused.STATE_PREFIX + name).fill_(fill)

    def reset_parameters(self) -> None:
        """Re-initialise the weight with ``init`` and zero the padding row."""
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
        if getattr(self, "optimizer", None) is not None:
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
    _checks.check_weight(embeddings, where, "embeddings")
    if nonfinite not in NONFINITE:
        raise ValueError(f"{where}: nonfinite must be one of {NONFINITE}, got nonfinite={nonfinite!r}")
    finite = torch.isfinite(embeddings.detach()).all(1) if embeddings.is_floating_point() else None
    if finite is not None and nonfinite == "error" and not bool(finite.all()):
        bad = (~finite).nonzero().squeeze(1)
        row = int(bad[0])
        raise ValueError(
            f"{where}: embeddings row {row} holds a non-finite value ({embeddings[row][~torch.isfinite(embeddings[row])][0].item()}); "
            f"{bad.numel()} of {embeddings.shape[0]} rows do. Fix the vectors, or pass nonfinite='keep' to keep them "
            f"(they are never used to initialise other rows)"
        )
    if not num_oov_buckets:
        return embeddings
    good = embeddings.detach() if finite is None else embeddings.detach()[finite]
    std = float(good.float().std()) if good.numel() > 1 else 1.0
    extra = torch.randn(
        num_oov_buckets, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device
    ) * std
    return torch.cat([embeddings.detach(), extra])
