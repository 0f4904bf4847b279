"""``embtab.EmbeddingBag``: a drop-in ``torch.nn.EmbeddingBag`` with explicit out-of-vocabulary policies."""

from __future__ import annotations

import torch
from torch import Tensor

from ..ids.policies import IdSpace
from ..init import Init
from ..optim.specs import FusedSpec
from ..tables import pipeline
from ..tables.spec import TableSpec
from .table import Table, spec_property, check_trainable, pretrained_weight


class EmbeddingBag(Table, torch.nn.EmbeddingBag):
    r"""Sums, means or maxes of bags of embeddings, without materialising the rows.

    Same arguments, results, gradients and ``state_dict`` as ``torch.nn.EmbeddingBag``,
    plus the keyword-only ``oov``, ``num_oov_buckets``, ``init``, ``backend``,
    ``optimizer`` (a fused optimizer from :mod:`embtab.optim`) and ``ids`` (an unbounded
    id space: ``embtab.ids.Hashed`` or ``embtab.ids.Dynamic``) of :class:`embtab.Embedding`.
    Under ``oov="zero"`` an out-of-range id is dropped from its bag (it adds nothing
    and is not counted by the mean), like a padding id.

    Shape:
        input ``(B, L)`` (fixed-length bags, ``offsets=None``) or ``(N,)`` with
        ``offsets`` ``(B,)`` (``(B + 1,)`` with ``include_last_offset=True``);
        ``per_sample_weights`` the input's shape (``mode="sum"`` only);
        output ``(B, embedding_dim)``. Empty bags give zeros.

    Examples:
        >>> bag = EmbeddingBag(10, 3, mode="sum")
        >>> bag(torch.tensor([1, 2, 4, 5, 4]), torch.tensor([0, 2])).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Tensor | None = None,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
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
            "EmbeddingBag", num_embeddings, embedding_dim, padding_idx=padding_idx, max_norm=max_norm,
            norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, sparse=sparse, mode=mode,
            include_last_offset=include_last_offset, oov=oov, num_oov_buckets=num_oov_buckets, backend=backend,
            id_space=ids,
        )
        self._setup_table(spec, _weight, True, device, dtype, init, "EmbeddingBag")
        self._setup_optimizer(optimizer, "EmbeddingBag")

    mode = spec_property("mode", "The bag reduction: 'sum', 'mean' or 'max'.")
    include_last_offset = spec_property("include_last_offset", "Offsets hold B + 1 entries, the last the end.")

    def forward(
        self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None
    ) -> Tensor:
        weight, counter = self._state()
        return pipeline.embedding_bag(self.spec, weight, input, offsets, per_sample_weights,
                                      where="EmbeddingBag", counter=counter, fused=self._fused)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        if self.norm_type != 2:
            s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq is not False:
            s += f", scale_grad_by_freq={self.scale_grad_by_freq}"
        s += f", mode={self.mode!r}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        return s + self._extra_repr_tail()

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        *,
        oov: str = "error",
        num_oov_buckets: int = 0,
        backend: str = "auto",
        optimizer: FusedSpec | None = None,
        nonfinite: str = "error",
    ) -> "EmbeddingBag":
        """An ``EmbeddingBag`` whose in-vocabulary rows are ``embeddings`` (V, D); see
        :meth:`embtab.Embedding.from_pretrained`."""
        where = "EmbeddingBag.from_pretrained"
        check_trainable(freeze, optimizer, where)
        weight = pretrained_weight(embeddings, num_oov_buckets, where, nonfinite)
        bag = cls(
            embeddings.shape[0], embeddings.shape[1], max_norm, norm_type, scale_grad_by_freq,
            mode, sparse, _weight=weight, include_last_offset=include_last_offset,
            padding_idx=padding_idx, oov=oov, num_oov_buckets=num_oov_buckets, backend=backend,
            optimizer=optimizer,
        )
        bag.weight.requires_grad = not freeze and bag.weight.is_floating_point()
        return bag
