"""Using a trained run: :func:`load_run`, ``predict``, ``recommend``, and the model file.

``load_run(RUN)`` takes a run folder (``embtab train ...``) or a model file
(``embtab export``) and returns what serves it:

- :class:`TextRun`: the text classifier, its vocabulary and labels;
  ``predict(["some text", ...])`` -> ``[{"label": ..., "probabilities": {label: p}}, ...]``.
- :class:`RecsysRun`: the recommender, its user and movie id maps, titles, each movie's
  features and each user's rated movies; ``predict([(user, movie), ...])`` -> ratings,
  ``recommend(user, k)`` -> ``[{"movie", "title", "rating"}, ...]``, best first, among the
  movies the user did not rate in the run's training data. Ids are the dataset's own
  (``userId``, ``movieId``), as strings or numbers.

A run folder is read as training left it: ``config.json``, the vocabularies,
``checkpoints/best.safetensors`` (the best epoch's weights); the recommender reads its
data again (the same file, checked by the run's own loader, and the same split) for the
titles, features and rated movies. A model file (:meth:`TextRun.export`) holds all of
it: the quantized weights (``embtab.save_quantized``'s format) and, in its metadata, the
run's config, vocabularies and serving data, so it needs nothing else.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

import embtab

from ..quant.modules import QuantizedModel, read_quantized
from . import checkpoint as ckpt_io
from . import data as data_mod
from .common import AppError, Bags, load_run_config, read_json

__all__ = ["load_run", "TextRun", "RecsysRun", "MODEL_FILE_APP"]

MODEL_FILE_APP = "embtab.run_model"  # info["kind"] of a model file written by export


def load_run(path: str | os.PathLike[str]) -> "TextRun | RecsysRun":
    """The trained model of a run folder or a model file, ready to ``predict``."""
    p = Path(path)
    if p.is_dir():
        doc = read_json(p / "config.json", "run config")
        app = doc.get("app") if isinstance(doc, dict) else None
        if app == "text":
            return TextRun.from_run(p)
        if app == "recsys":
            return RecsysRun.from_run(p)
        raise AppError(f"{str(p)!r} is not an embtab run folder (its config.json names no app)")
    if p.is_file():
        try:
            f = read_quantized(p)
        except ValueError as exc:
            raise AppError(f"{str(p)!r}: not a model file or run folder ({exc})") from None
        info = f.info
        if info.get("kind") != MODEL_FILE_APP or info.get("app") not in ("text", "recsys"):
            raise AppError(f"{str(p)!r} holds quantized tables but not a run's model; write one with "
                           f"embtab export RUN --out FILE")
        return (TextRun if info["app"] == "text" else RecsysRun).from_model_file(p, info)
    raise AppError(f"no such run folder or model file: {str(p)!r}")


def _config(cls: type, values: Mapping[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _best_weights(run_dir: Path, app: str) -> Path:
    best = run_dir / "checkpoints" / "best.safetensors"
    if not best.is_file():
        raise AppError(f"{str(run_dir)!r} has no trained weights yet (no checkpoints/best.safetensors): train "
                       f"at least one epoch: embtab train {app} --resume {run_dir}")
    return best


def _quantize(model: torch.nn.Module, dtype: str, method: str, per_table: Mapping[str, str] | None) -> torch.nn.Module:
    if isinstance(model, QuantizedModel):
        raise AppError("this model is quantized already: export it from its run folder")
    try:
        return embtab.quantize(model, dtype, per_table=per_table, method=method)
    except ValueError as exc:
        raise AppError(str(exc)) from None


class _Run:
    app: str
    model: torch.nn.Module
    config: Any
    source: str

    @property
    def quantized(self) -> bool:
        """Whether the tables are quantized (a model file, or after :meth:`quantize`)."""
        return isinstance(self.model, QuantizedModel)

    def _info(self) -> dict[str, Any]:
        raise NotImplementedError

    def export(self, path: str | os.PathLike[str], dtype: str = "int8", *, method: str = "minmax",
               per_table: Mapping[str, str] | None = None) -> None:
        """Write the model file: the tables quantized to ``dtype``, and all that serving needs."""
        q = _quantize(self.model, dtype, method, per_table)
        info = {"kind": MODEL_FILE_APP, "app": self.app, "config": asdict(self.config), **self._info()}
        embtab.save_quantized(q, path, info=info)

    def quantize(self, dtype: str = "int8", *, method: str = "minmax",
                 per_table: Mapping[str, str] | None = None) -> "_Run":
        """This run with its tables quantized (a copy; the run is unchanged)."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.model = _quantize(self.model, dtype, method, per_table).eval()
        return out


# --- the text classifier -----------------------------------------------------------------


class TextRun(_Run):
    """A trained text classifier: ``predict(texts)``."""

    app = "text"

    def __init__(self, model: torch.nn.Module, vocab: embtab.Vocab, config: Any, classes: Sequence[str],
                 source: str) -> None:
        from .text import Featurizer

        self.model = model.eval()
        self.vocab, self.config, self.classes, self.source = vocab, config, list(classes), source
        self.featurize = Featurizer(vocab, config.word_ngrams, config.char_range())

    @staticmethod
    def _model(config: Any, vocab: embtab.Vocab, classes: Sequence[str], dim: int) -> torch.nn.Module:
        from .text import TextClassifier

        return TextClassifier(len(vocab), len(classes), dim=dim, hidden=config.hidden, dropout=config.dropout,
                              num_buckets=config.buckets, padding_idx=vocab.pad_id, init="zeros")

    @classmethod
    def from_run(cls, run_dir: Path) -> "TextRun":
        from .text import TextConfig

        config, _ = load_run_config(run_dir, "text", TextConfig)
        metrics_path = run_dir / "metrics.json"
        if not metrics_path.is_file():
            raise AppError(f"the run in {str(run_dir)!r} has not finished (no metrics.json, which names its "
                           f"labels): finish it with embtab train text --resume {run_dir}")
        classes = read_json(metrics_path, "run metrics").get("classes")
        vocab = embtab.Vocab.load(run_dir / "vocab.json")
        best = _best_weights(run_dir, "text")
        dim = _shapes(best)["embed.weight"][1]
        model = cls._model(config, vocab, classes, dim)
        ckpt_io.load_weights(best, model)
        return cls(model, vocab, config, classes, str(run_dir))

    @classmethod
    def from_model_file(cls, path: Path, info: dict[str, Any]) -> "TextRun":
        from .text import TextConfig

        config = _config(TextConfig, info["config"])
        vocab = embtab.Vocab.from_dict(info["vocab"], where=f"model file {str(path)!r}")
        classes = info["classes"]
        model = cls._model(config, vocab, classes, int(info["dim"]))
        return cls(embtab.load_quantized(path, model=model), vocab, config, classes, str(path))

    def _info(self) -> dict[str, Any]:
        return {"vocab": self.vocab.to_dict(), "classes": self.classes, "dim": int(self.model.embed.embedding_dim)}

    def probabilities(self, texts: Sequence[str], batch: int = 4096) -> Tensor:
        """``(len(texts), classes)`` class probabilities."""
        from .text import tokenize

        if isinstance(texts, str):
            raise TypeError("predict() takes a list of texts; wrap one text in a list: predict([text])")
        out = []
        with torch.no_grad():
            for s in range(0, len(texts), batch):
                bags = Bags.from_lists([self.featurize(tokenize(t)) for t in texts[s:s + batch]])
                out.append(torch.softmax(self.model(bags.flat, bags.starts[:-1]), dim=1))
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """``[{"label": ..., "probabilities": {label: p, ...}}, ...]``, one per text."""
        probs = self.probabilities(texts)
        out = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.classes[best], "probabilities": dict(zip(self.classes, row))})
        return out


# --- the recommender ----------------------------------------------------------------------


def _key(x: Any) -> str:
    """A dataset id as the runs store it: ``"42"`` for 42, 42.0 or "42"."""
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    return str(x).strip()


class RecsysRun(_Run):
    """A trained recommender: ``predict(pairs)``, ``recommend(user, k)``."""

    app = "recsys"

    def __init__(self, model: torch.nn.Module, config: Any, users: Sequence[str], items: Sequence[str],
                 features: Sequence[str], titles: Mapping[str, str], item_features: Mapping[str, Sequence[str]],
                 train_pairs: np.ndarray, clamp: tuple[float, float], source: str) -> None:
        from .recsys import History

        self.model = model.eval()
        self.config, self.source = config, source
        self.users, self.items, self.features = list(users), list(items), list(features)
        self.user_index = {u: i for i, u in enumerate(self.users)}
        self.item_index = {m: i for i, m in enumerate(self.items)}
        self.titles = dict(titles)
        self.item_features = {k: list(v) for k, v in item_features.items()}
        f_index = {f: i for i, f in enumerate(self.features)}
        # Feature bags of every movie the run knows (rated in training or only in its data).
        self.catalog = sorted(set(self.items) | set(self.item_features))
        self.catalog_index = {m: i for i, m in enumerate(self.catalog)}
        # (a last, empty bag: the features of a movie the run has never heard of)
        self.feature_bags = Bags.from_lists([[f_index.get(f, -1) for f in self.item_features.get(m, [])]
                                             for m in self.catalog] + [[]])
        self._item_catalog = torch.tensor([self.catalog_index[m] for m in self.items], dtype=torch.int64)
        self.train_pairs = train_pairs  # (P, 2) int64: (user row, movie row) rated in training
        pairs = torch.from_numpy(train_pairs)
        self.history = (History.build(pairs[:, 0], pairs[:, 1], len(self.users), config.implicit_max, config.seed)
                        if getattr(model, "has_implicit", False) else None)
        bounds = np.searchsorted(train_pairs[:, 0], np.arange(len(self.users) + 1))
        self._rated_bounds = bounds
        self.clamp = clamp

    @staticmethod
    def _model(config: Any, num_users: int, num_items: int, num_features: int, implicit: bool) -> torch.nn.Module:
        from .recsys import BiasedMF

        if getattr(config, "ids", "full") != "full":
            raise AppError(f"serving a recommender trained with --ids {config.ids} is not supported yet (its tables "
                           f"look up raw ids, not the run's vocabulary); train with --ids full to serve it")
        return BiasedMF(num_users, num_items, num_features, config.dim, init_std=config.init_std, implicit=implicit)

    @classmethod
    def from_run(cls, run_dir: Path) -> "RecsysRun":
        from .recsys import RecsysConfig

        config, _ = load_run_config(run_dir, "recsys", RecsysConfig)
        best = _best_weights(run_dir, "recsys")
        users = embtab.Vocab.load(run_dir / "vocab_users.json")
        items = embtab.Vocab.load(run_dir / "vocab_items.json")
        features_path = run_dir / "vocab_features.json"
        features = embtab.Vocab.load(features_path) if features_path.is_file() else None
        try:
            data = (data_mod.load_movielens() if config.ratings is None
                    else data_mod.load_ratings_file(config.ratings, config.movies))
        except (OSError, AppError) as exc:
            raise AppError(f"the run's data is needed for titles and rated movies and could not be read ({exc}); "
                           f"or serve the run's model file: embtab export {run_dir} --out model.safetensors") from None
        n = len(data.ratings)
        rest, _ = data_mod.random_split(n, config.test_fraction, config.seed)
        tr_pos, _ = data_mod.random_split(len(rest), config.val_fraction, config.seed + 1)
        train_idx = rest[tr_pos]
        u_index, i_index = {t: k for k, t in enumerate(users.tokens)}, {t: k for k, t in enumerate(items.tokens)}
        pairs = np.unique(np.array([[u_index[u], i_index[i]] for u, i in zip(data.users[train_idx], data.items[train_idx])],
                                   dtype=np.int64).reshape(-1, 2), axis=0)
        ratings = data.ratings[train_idx]
        implicit = "tables.embedding_bags.implicit.weight" in _shapes(best)
        model = cls._model(config, len(users), len(items), len(features) if features is not None else 0, implicit)
        ckpt_io.load_weights(best, model)
        catalog = set(data.items.tolist())
        return cls(model, config, users.tokens, items.tokens, features.tokens if features is not None else [],
                   {m: t for m, t in data.item_titles.items() if m in catalog},
                   {m: f for m, f in data.item_features.items() if m in catalog} if features is not None else {},
                   pairs, (float(ratings.min()), float(ratings.max())), str(run_dir))

    @classmethod
    def from_model_file(cls, path: Path, info: dict[str, Any]) -> "RecsysRun":
        from .recsys import RecsysConfig

        config = _config(RecsysConfig, info["config"])
        users, items, features = info["users"], info["items"], info["features"]
        model = cls._model(config, len(users), len(items), len(features), bool(info["implicit"]))
        pairs = np.asarray(info["train_pairs"], dtype=np.int64).reshape(-1, 2)
        return cls(embtab.load_quantized(path, model=model), config, users, items, features, info["titles"],
                   info["item_features"], pairs, tuple(info["clamp"]), str(path))  # type: ignore[arg-type]

    def _info(self) -> dict[str, Any]:
        return {"users": self.users, "items": self.items, "features": self.features, "titles": self.titles,
                "item_features": self.item_features, "train_pairs": self.train_pairs.reshape(-1).tolist(),
                "clamp": list(self.clamp), "implicit": self.history is not None}

    # --- predictions -------------------------------------------------------------------------

    def _scores(self, user_rows: Tensor, item_rows: Tensor, catalog_rows: Tensor) -> Tensor:
        with torch.no_grad():
            fids = foffs = None
            if getattr(self.model, "has_features", False):
                fids, foffs = self.feature_bags.take(catalog_rows)
            history = self.history.take(user_rows) if self.history is not None else None
            return self.model(user_rows, item_rows, fids, foffs, history).clamp(*self.clamp)

    def _rows(self, pairs: Iterable[tuple[Any, Any]]) -> tuple[Tensor, Tensor, Tensor]:
        users, items, catalog = [], [], []
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"predict() takes (user, movie) pairs, got {pair!r}")
            u, m = _key(pair[0]), _key(pair[1])
            users.append(self.user_index.get(u, -1))  # unseen: -1, the tables' oov="zero"
            items.append(self.item_index.get(m, -1))
            catalog.append(self.catalog_index.get(m, len(self.catalog)))
        return (torch.tensor(users, dtype=torch.int64), torch.tensor(items, dtype=torch.int64),
                torch.tensor(catalog, dtype=torch.int64))

    def predict(self, pairs: Sequence[tuple[Any, Any]], batch: int = 65536) -> list[float]:
        """The predicted rating of each ``(user, movie)`` pair (dataset ids). A user or movie
        the run never saw in training gets the global mean plus what is known of the other
        (its bias, a new movie's genres and year)."""
        pairs = list(pairs)
        out: list[float] = []
        for s in range(0, len(pairs), batch):
            out += self._scores(*self._rows(pairs[s:s + batch])).tolist()
        return out

    def _user_scores(self, row: int) -> Tensor:
        """``(num_items,)`` predicted ratings of user ``row`` for every movie of the training data:
        the model's ``pred`` with the user's side (vector, implicit bag, bias) computed once."""
        m, n, d = self.model, len(self.items), self.model.dim
        none = torch.full((n,), -1, dtype=torch.int64)  # oov="zero": no user part on the item side
        with torch.no_grad():
            fids = foffs = None
            if m.has_features:
                fids, foffs = self.feature_bags.take(self._item_catalog)
            no_history = None
            if self.history is not None:
                no_history = (torch.zeros(0, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
                              torch.zeros(0, dtype=torch.float32))
            side = m.parts(none, torch.arange(n), fids, foffs, no_history)  # (n, ...) the movies' parts
            q, bi = side["q"], side["bi"]
            if "f" in side:
                q, bi = q + side["f"][:, :d], bi + side["f"][:, d]
            me = torch.tensor([row])
            fids1 = foffs1 = None
            if m.has_features:
                fids1, foffs1 = self.feature_bags.take(torch.tensor([len(self.catalog)]))  # (an empty bag)
            user = m.parts(me, torch.tensor([-1]), fids1, foffs1,
                           self.history.take(me) if self.history is not None else None)
            p = user["p"] + user["y"] if "y" in user else user["p"]  # (1, D)
            return (m.global_mean + user["bu"] + bi + (q * p).sum(-1)).clamp(*self.clamp)

    def rated(self, user: Any) -> list[str]:
        """The movies ``user`` rated in the run's training data."""
        row = self.user_index.get(_key(user))
        if row is None:
            return []
        lo, hi = self._rated_bounds[row], self._rated_bounds[row + 1]
        return [self.items[i] for i in self.train_pairs[lo:hi, 1].tolist()]

    def recommend(self, user: Any, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` movies with the highest predicted rating for ``user``, best first, among the
        movies of the training data the user did not rate there: ``[{"movie", "title", "rating"}]``."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"recommend(): k must be a positive int, got {k!r}")
        u = _key(user)
        if u not in self.user_index:
            raise KeyError(f"user {u!r} has no ratings in the run's training data ({len(self.users):,} users); "
                           f"recommend() ranks movies for a known user")
        row = self.user_index[u]
        n = len(self.items)
        scores = self._user_scores(row)
        lo, hi = self._rated_bounds[row], self._rated_bounds[row + 1]
        scores[torch.from_numpy(self.train_pairs[lo:hi, 1])] = -math.inf
        top = torch.topk(scores, min(k, n - (hi - lo))).indices.tolist()
        return [{"movie": self.items[i], "title": self.titles.get(self.items[i], ""), "rating": float(scores[i])}
                for i in top]
