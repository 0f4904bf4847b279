"""Table configurations: what a collection of embedding tables is built from.

A :class:`TableConfig` is a frozen dataclass checked on construction, with errors
that name the table (``TableConfig 'user_id': embedding_dim must be positive, got 0``).
It copies what it is given (``feature_names`` becomes a tuple) and never changes the
caller's objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from . import _checks
from .init import Init, check_init

__all__ = ["TableConfig", "POOLINGS"]

POOLINGS = _checks.BAG_MODES  # ("sum", "mean", "max")


@dataclass(frozen=True)
class TableConfig:
    """One embedding table of an :class:`embtab.EmbeddingBagCollection`.

    Args:
        name: the table's name: the key of its module in ``collection.embedding_bags``
            and of its weight in the ``state_dict`` (``embedding_bags.<name>.weight``).
        num_embeddings: in-vocabulary rows (ids ``0 .. num_embeddings - 1``).
        embedding_dim: size of each vector.
        feature_names: the input features looked up in this table; default ``(name,)``.
            Several features may share one table (their gradients are summed).
        pooling: ``"sum"`` (default), ``"mean"`` or ``"max"``.
        init: an init strategy name or callable, as in :class:`embtab.Embedding`.
        oov: what an out-of-range id does: ``"error"``, ``"padding"``, ``"zero"``, ``"hash"``.
        num_oov_buckets: extra hash rows for ``oov="hash"``.
        padding_idx: a row left out of every bag (negative counts from the end).
        ids: an unbounded id space, ``embtab.ids.Hashed(...)`` or ``embtab.ids.Dynamic(...)``
            (``num_embeddings`` is then the rows the table holds: buckets or capacity, and
            any int64 id is valid; ``oov`` does not apply). Each table builds its own
            stage from it (``collection.embedding_bags[name].ids``).

    Example:
        >>> TableConfig("user", 1000, 16, feature_names=["user_id", "friend_id"]).feature_names
        ('user_id', 'friend_id')
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: Sequence[str] | None = None
    pooling: str = "sum"
    init: Init = "normal"
    oov: str = "error"
    num_oov_buckets: int = 0
    padding_idx: int | None = None
    ids: Any = None  # embtab.ids.IdSpace

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(
                f"TableConfig: name must be a non-empty string, got {self.name!r} "
                f"(it becomes a module name in the state_dict)"
            )
        where = f"TableConfig {self.name!r}"
        _checks.check_positive_int(self.num_embeddings, "num_embeddings", where)
        _checks.check_positive_int(self.embedding_dim, "embedding_dim", where)
        object.__setattr__(self, "feature_names", self._checked_features(where))
        if self.pooling not in POOLINGS:
            raise ValueError(f"{where}: pooling must be one of {POOLINGS}, got pooling={self.pooling!r}")
        check_init(self.init, where)
        padding_idx = _checks.normalize_padding_idx(self.padding_idx, int(self.num_embeddings), where)
        object.__setattr__(self, "padding_idx", padding_idx)
        _checks.check_oov(self.oov, self.num_oov_buckets, padding_idx, where)
        if self.ids is not None:
            _checks.check_id_space(self.ids, self.oov, self.num_oov_buckets, padding_idx, False, where)

    def _checked_features(self, where: str) -> tuple[str, ...]:
        features = self.feature_names
        if features is None:
            return (self.name,)
        if isinstance(features, str) or not isinstance(features, Sequence):
            raise TypeError(
                f"{where}: feature_names must be a list of strings, got {features!r}; "
                f"for one feature write feature_names=[{features!r}]"
            )
        out = tuple(features)
        if not out:
            raise ValueError(f"{where}: feature_names must name at least one feature, got an empty list")
        for f in out:
            if not isinstance(f, str) or not f:
                raise TypeError(f"{where}: feature names must be non-empty strings, got {f!r}")
        duplicates = sorted({f for f in out if out.count(f) > 1})
        if duplicates:
            raise ValueError(f"{where}: feature_names lists {duplicates} more than once")
        return out

    @property
    def num_rows(self) -> int:
        """Rows of the weight: ``num_embeddings + num_oov_buckets`` (or + the fallback rows of ``ids``)."""
        return int(self.num_embeddings) + int(self.num_oov_buckets) + (self.ids.extra_rows if self.ids else 0)

