"""``embtab.Embedding``: a drop-in ``torch.nn.Embedding`` with explicit out-of-vocabulary policies."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ids.policies import IdSpace
from ..init import Init
from ..optim.specs import FusedSpec
from ..tables import pipeline
from ..tables.spec import TableSpec
from .table import Table, check_trainable, pretrained_weight


class Embedding(Table, torch.nn.Embedding):
    r"""A lookup table of ``num_embeddings`` learnable vectors of size ``embedding_dim``.

    Same arguments, results, gradients and ``state_dict`` as ``torch.nn.Embedding``
    (a checkpoint loads into either), plus keyword-only options.

    Args:
        num_embeddings: in-vocabulary rows; ids ``0 .. num_embeddings - 1``.
        embedding_dim: size of each vector.
        padding_idx: a row that gets no gradient and starts at zero (negative values
            count from the end).
        max_norm: rescale each looked-up row whose norm exceeds it, in place.
        norm_type: the p of the p-norm for ``max_norm``.
        scale_grad_by_freq: divide gradients by the id's frequency in the batch.
        sparse: produce a sparse COO weight gradient.
        oov: what an id ``< 0`` or ``>= num_embeddings`` does: ``"error"`` (default;
            ``IndexError`` naming the id, its position and the valid range),
            ``"padding"`` (look up ``padding_idx``), ``"zero"`` (a zero vector, no
            gradient) or ``"hash"`` (one of ``num_oov_buckets`` extra trainable rows,
            by :func:`embtab.oov.hash_bucket`).
        num_oov_buckets: extra rows after the vocabulary, for ``oov="hash"``.
        optimizer: a fused optimizer from :mod:`embtab.optim` (e.g.
            ``embtab.optim.Adam(lr=1e-3)``): backward then updates the looked-up
            rows in place, ``weight.grad`` stays None, the optimizer's per-row state
            is in the ``state_dict`` and ``module.optimizer`` holds the learning rate.
        init: ``"normal"`` (N(0, 1), torch's default), ``"uniform"``,
            ``"xavier_uniform"``, ``"xavier_normal"``, ``"kaiming_uniform"``,
            ``"kaiming_normal"``, ``"truncated_normal"``, ``"zeros"``, or a callable
            that fills a tensor in place. The padding row is zeroed afterwards.
        backend: ``"auto"``, ``"torch"``, ``"reference"`` or ``"triton"``.
        ids: an unbounded id space, ``embtab.ids.Hashed(...)`` (each id hashed to
            ``num_hashes`` of the ``num_embeddings`` rows, with trainable importance
            weights) or ``embtab.ids.Dynamic(...)`` (each admitted id owns one of the
            ``num_embeddings`` rows while it is live; ``module.ids.stats()``). Any int64
            id is then valid; ``oov=``, ``padding_idx`` and ``scale_grad_by_freq`` do not
            apply. See :mod:`embtab.ids`.

    Shape:
        input ``(*)`` int64 or int32 ids; output ``(*, embedding_dim)``.

    Attributes:
        weight: ``(num_embeddings + num_oov_buckets, embedding_dim)``.
        oov_count: out-of-range ids seen so far.

    Examples:
        >>> emb = Embedding(10, 3, padding_idx=0, oov="padding")
        >>> emb(torch.tensor([[1, 2, 42]])).shape   # 42 reads the padding row
        torch.Size([1, 3, 3])
        >>> emb.oov_count
        1
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: Tensor | None = None,
        _freeze: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        oov: str = "error",
        num_oov_buckets: int = 0,
        init: Init = "normal",
        backend: str = "auto",
        optimizer: FusedSpec | None = None,
        ids: IdSpace | None = None,
    ) -> None:
        super().__init__()
        spec = TableSpec.make(
            "Embedding", num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
            norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, oov=oov,
            num_oov_buckets=num_oov_buckets, backend=backend, id_space=ids,
        )
        self._setup_table(spec, _weight, not _freeze, device, dtype, init, "Embedding")
        self._setup_optimizer(optimizer, "Embedding")

    def forward(self, input: Tensor) -> Tensor:
        weight, counter = self._state()
        return pipeline.embedding(self.spec, weight, input, where="Embedding", counter=counter, fused=self._fused)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq is not False:
            s += f", scale_grad_by_freq={self.scale_grad_by_freq}"
        if self.sparse is not False:
            s += ", sparse=True"
        return s + self._extra_repr_tail()

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        *,
        oov: str = "error",
        num_oov_buckets: int = 0,
        backend: str = "auto",
        optimizer: FusedSpec | None = None,
        nonfinite: str = "error",
    ) -> "Embedding":
        """An ``Embedding`` whose in-vocabulary rows are ``embeddings`` (V, D).

        The padding row keeps its pretrained values. With ``oov="hash"`` the
        ``num_oov_buckets`` bucket rows are appended, drawn from N(0, std^2) with the std
        of the finite rows. A row holding NaN or inf is refused unless ``nonfinite="keep"``.
        """
        where = "Embedding.from_pretrained"
        check_trainable(freeze, optimizer, where)
        weight = pretrained_weight(embeddings, num_oov_buckets, where, nonfinite)
        return cls(
            embeddings.shape[0], embeddings.shape[1], padding_idx, max_norm, norm_type,
            scale_grad_by_freq, sparse, _weight=weight, _freeze=freeze, oov=oov,
            num_oov_buckets=num_oov_buckets, backend=backend, optimizer=optimizer,
        )
