"""Shared plumbing of the applications: errors, messages on stderr, run folders, JSON files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._io import atomic_write_text

RUN_FORMAT = "embtab.run"
RUN_FORMAT_VERSION = 2  # 2: absolute input paths and their sha256 ("inputs")
FAILED = "failed.json"


class AppError(ValueError):
    """Bad input to an application (missing file, unknown column, ...).

    The command line prints its message as one line and exits with status 2, so the
    message must say what was wrong and what to do instead.
    """


def log(message: str, *, quiet: bool = False) -> None:
    """A progress message on stderr (stdout is kept for results)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def is_tty(stream: Any = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads (``None``: leave torch's default)."""
    if threads is not None:
        if threads < 1:
            raise AppError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def require(module: str, extra: str = "apps") -> Any:
    """Import an optional dependency or raise an :class:`AppError` with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AppError(
            f"this command needs the Python package {module!r} ({exc}); install it with "
            f"pip install 'embtab[{extra}]'"
        ) from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(_clean(obj), indent=2, default=_json_default, ensure_ascii=False) + "\n"
    atomic_write_text(path, text)


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AppError(f"{what} not found: {str(path)!r}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AppError(f"{what} {str(path)!r} is not valid JSON ({exc}); the file is corrupt") from None


def default_run_dir(app: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<app>-YYYYmmdd-HHMMSS`` (a suffix is added if that exists already)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return _unused(Path(root) / f"{app}-{stamp}")


def _unused(base: Path) -> Path:
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def warn(message: str) -> None:
    """A warning on stderr, shown even with ``--quiet`` (which silences progress only)."""
    print(f"embtab: warning: {message}", file=sys.stderr, flush=True)


# --- run folders ----------------------------------------------------------------------

# What a run writes in its folder: a failed run's folder holding only these may be reused.
_RUN_FILES = ("config.json", "baselines.json", "metrics.json", "vocab.json", FAILED, "curves.png", "embeddings.png")
_CHECKPOINT_FILES = ("last.safetensors", "best.safetensors")


def _is_run_file(p: Path) -> bool:
    name = p.name
    if name.endswith(".tmp") and name.startswith("."):
        return p.is_file()
    if p.is_dir():
        return name == "checkpoints" and all(
            c.is_file() and (c.name in _CHECKPOINT_FILES or (c.name.startswith(".") and c.name.endswith(".tmp")))
            for c in p.iterdir())
    return p.is_file() and (name in _RUN_FILES or (name.startswith("vocab_") and name.endswith(".json")))


def _failed_reason(path: Path) -> str | None:
    """Why the run in ``path`` failed, when it is a failed run's folder (its ``failed.json``)."""
    if not (path / FAILED).is_file() or (path / "metrics.json").exists():
        return None
    try:
        doc = json.loads((path / FAILED).read_text(encoding="utf-8"))
        return str(doc.get("reason", "")) or "unknown reason"
    except (OSError, ValueError, AttributeError):
        return "unknown reason"


def mark_failed(run_dir: Path, reason: str) -> None:
    """Record that the run in ``run_dir`` failed, so that a new run may reuse the folder."""
    if (run_dir / "config.json").is_file() and not (run_dir / "metrics.json").exists():
        write_json(run_dir / FAILED, {"reason": reason, "time": time.strftime("%Y-%m-%d %H:%M:%S")})


def prepare_new_run_dir(path: str | os.PathLike[str], *, create: bool = True, quiet: bool = False) -> Path:
    """Create a fresh run folder; refuse one that already holds files (use --resume).

    A failed run's folder (``failed.json``, written when training diverged or a new run
    stopped on an error) holding nothing but that run's files is emptied and reused.
    ``create=False`` only checks, so that a command can refuse early, before slow work.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AppError(f"--out {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        reason = _failed_reason(path)
        if reason is None:
            raise AppError(
                f"--out {str(path)!r} already holds files; choose a new folder, or continue that "
                f"run with --resume {shlex.quote(str(path))}"
            )
        foreign = sorted(p.name for p in path.iterdir() if not _is_run_file(p))
        if foreign:
            raise AppError(
                f"--out {str(path)!r} holds a failed run ({reason}) and files that are not the run's "
                f"({', '.join(foreign[:3])}); move those away to reuse the folder, or choose a new one"
            )
        if create:
            log(f"replacing the failed run in {path} ({reason})", quiet=quiet)
            for p in path.iterdir():
                if p.is_dir():
                    for c in p.iterdir():
                        c.unlink()
                    p.rmdir()
                elif p.name != FAILED:
                    p.unlink()
            (path / FAILED).unlink()  # last: a kill in between leaves a folder still marked failed
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


# --- configs --------------------------------------------------------------------------

_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "list[str]": "a list of strings", "None": "null"}


def _fits(value: Any, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True  # a type this check does not know: the config's own check() decides


def _line_of(text: str, key: str) -> int | None:
    """The line of ``"key":`` in the ``"config"`` object of a config.json text (1-based)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if '"config"' in ln), 0)
    for i in range(start, len(lines)):
        if lines[i].lstrip().startswith(f'"{key}":'):
            return i + 1
    return None


def check_finite(cfg: Any) -> None:
    """Refuse NaN and infinite numbers in a config (they pass ``< 0`` checks silently)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise AppError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


def load_run_config(run_dir: Path, app: str, cls: type) -> tuple[Any, dict[str, Any]]:
    """The ``cls`` config saved in ``run_dir`` by :func:`create_run_dir` (fields ``cls``
    no longer has are dropped), and the whole ``config.json`` document.

    A hand-edited value of the wrong type is an :class:`AppError` naming the file, the
    key, its line and the type expected.
    """
    path = run_dir / "config.json"
    doc = read_json(path, "run config")
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or doc.get("app") != app:
        raise AppError(f"{str(run_dir)!r} is not a {app} run folder (its config.json is not an embtab {app} run)")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > RUN_FORMAT_VERSION:
        raise AppError(f"{str(path)!r} has format_version {version!r}; this embtab reads up to "
                       f"{RUN_FORMAT_VERSION}: upgrade embtab")
    values = doc.get("config")
    if not isinstance(values, dict):
        raise AppError(f"{str(path)!r}: \"config\" must be an object of options, got {json.dumps(values)}")
    text = path.read_text(encoding="utf-8")
    # Options added since a run was written: the behaviour the run was trained with.
    for key, before in getattr(cls, "ABSENT", {}).items():
        values.setdefault(key, before)
    known = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            continue
        kinds = [k.strip() for k in str(f.type).split("|")]
        if not any(_fits(value, k) for k in kinds):
            line = _line_of(text, key)
            where = f"{str(path)!r}" + (f", line {line}" if line else "")
            expected = " or ".join(_TYPE_WORDS.get(k, k) for k in kinds)
            raise AppError(
                f"{where}: \"{key}\" must be {expected}, got {json.dumps(value)}; correct the file "
                f"(the default is {json.dumps(_default_of(f))}) or start a new run"
            )
        if "float" in kinds and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
    return cls(**{k: v for k, v in values.items() if k in known}), doc


def _default_of(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def _sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _input_fields(cfg: Any) -> tuple[str, ...]:
    """The config's fields that name input files (``data``, ``ratings``, ...)."""
    return tuple(getattr(cfg, "INPUT_FILES", ()))


# Run folders this process holds (real path -> an open descriptor carrying the lock).
_held: dict[str, int] = {}


def hold_run_dir(path: str | os.PathLike[str]) -> None:
    """Take the run folder for this process: another embtab process training in it (the
    same ``--out`` twice, a ``--resume`` of a run still going) is refused by name, instead
    of two runs writing one folder's checkpoints in turn. An exclusive ``flock`` on the
    folder itself, so the kernel drops it when the process ends, ``kill -9`` included.
    Held again by the same process: nothing to do. Where ``fcntl`` is missing (Windows): no lock."""
    try:
        import fcntl
    except ImportError:
        return
    key = os.path.realpath(path)
    if key in _held:
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AppError(f"{str(path)!r} is in use by another embtab process training in it; wait for it to end, "
                       f"or choose another folder") from None
    _held[key] = fd


def release_run_dir(path: str | os.PathLike[str] | None = None) -> None:
    """Let the run folder go (``None``: every folder this process holds)."""
    keys = list(_held) if path is None else [os.path.realpath(path)]
    for key in keys:
        fd = _held.pop(key, None)
        if fd is not None:
            os.close(fd)  # (closing the descriptor drops its flock)


def take_run_dir(cfg: Any, app: str, resume: Any, run_dir: Path) -> Path:
    """The run folder this process trains in, held (:func:`hold_run_dir`): ``run_dir`` when
    resuming, else the new one :func:`create_run_dir` makes now."""
    if resume is None:
        return create_run_dir(cfg, app)
    hold_run_dir(run_dir)
    return run_dir


def create_run_dir(cfg: Any, app: str) -> Path:
    """Create the new run folder ``cfg.out`` (chosen by :func:`start_run`) with its config.

    Input files are recorded by absolute path and sha256, so that the run resumes from
    any folder, and from a moved copy of its data (``--resume RUN --data NEW_PATH``).
    """
    inputs = {}
    for name in _input_fields(cfg):
        value = getattr(cfg, name)
        if value is not None and Path(value).is_file():
            inputs[name] = {"path": str(value), "sha256": _sha256(value), "bytes": Path(value).stat().st_size}
    run_dir = prepare_new_run_dir(cfg.out, quiet=cfg.quiet)
    hold_run_dir(run_dir)
    prepare_new_run_dir(run_dir, create=False)  # still new: another process may have taken it first
    write_json(run_dir / "config.json", {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                                        "app": app, "config": asdict(cfg), "inputs": inputs})
    return run_dir


def run_outputs(run_dir: Path, checkpoints: dict[str, str], **extra: str) -> dict[str, str]:
    """The files of a finished run folder, by name (for ``metrics.json`` and the summary);
    the plots only when they were drawn."""
    plots = {k: str(run_dir / f"{k}.png") for k in ("curves", "embeddings") if (run_dir / f"{k}.png").is_file()}
    return {
        "run_dir": str(run_dir), "config": str(run_dir / "config.json"), "metrics": str(run_dir / "metrics.json"),
        **plots, **extra, **checkpoints,
    }


# --- resuming -------------------------------------------------------------------------


@dataclass
class Resume:
    """How to go on with the run in ``run_dir`` (``train(cfg, resume=Resume(...))``; a plain
    path means ``Resume(path)``).

    Attributes:
        run_dir: the run folder.
        epochs: train on to this many epochs (``None``: the run's own).
        patience: a new early-stopping patience (``None``: the run's own).
        inputs: new locations of the run's input files, by config field (``{"data": path}``);
            each must hold the same bytes (sha256) as the file the run started with.
        from_best: go on from the best epoch's weights (``best.safetensors``), for when
            ``last.safetensors`` is damaged; the optimizer state starts afresh.
    """

    run_dir: str
    epochs: int | None = None
    patience: int | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    from_best: bool = False


def as_resume(resume: "str | os.PathLike[str] | Resume | None") -> Resume | None:
    if resume is None or isinstance(resume, Resume):
        return resume
    return Resume(str(resume))


def resume_command(app: str, run_dir: str | os.PathLike[str], threads: int | None = None) -> str:
    """The command that resumes the run in ``run_dir`` (with its thread count, for equal metrics)."""
    words = ["embtab", "train", app, "--resume", str(run_dir)]
    if threads is not None:
        words += ["--threads", str(threads)]
    return " ".join(shlex.quote(w) for w in words)


def command_line(app: str, cfg: Any, *, out: str | None = None) -> str:
    """The ``embtab train APP ...`` command that starts a run of ``cfg`` (the options that
    differ from the defaults) in ``out``."""
    words = ["embtab", "train", app]
    for f in fields(cfg):
        if f.name in ("out", "threads", "quiet"):
            continue
        value, default = getattr(cfg, f.name), _default_of(f)
        if value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, repr(value) if isinstance(value, float) else str(value)]
    if cfg.threads is not None:
        words += ["--threads", str(cfg.threads)]
    if out is not None:
        words += ["--out", out]
    return " ".join(shlex.quote(w) for w in words)


def _locate_inputs(saved: Any, doc: dict[str, Any], given: dict[str, str], run_dir: Path, quiet: bool) -> bool:
    """Point ``saved``'s input fields at the run's input files: where they were, or where
    ``given`` says they are now, checked by sha256. Returns whether a location changed."""
    if not isinstance(doc.get("inputs"), dict):
        doc["inputs"] = {}  # a run of format 1: its files get a record now
    records = doc["inputs"]
    unknown = set(given) - set(_input_fields(saved))
    if unknown:
        raise AppError(f"--resume: {sorted(unknown)} are not input files of this run")
    changed = False
    for name in _input_fields(saved):
        flag = "--" + name.replace("_", "-")
        old = getattr(saved, name)
        record = records.get(name) if isinstance(records.get(name), dict) else None
        want = record.get("sha256") if record else None
        new = given.get(name)
        if old is None:
            if new is not None:
                raise AppError(f"this run was started without {flag}; drop {flag}")
            continue
        if new is None:
            candidates = [Path(old)]
            # A file that moved together with one given anew: the same name in its new folder.
            candidates += [Path(p).parent / Path(old).name for p in given.values()]
        else:
            candidates = [Path(new)]
        found = None
        for cand in candidates:
            if not cand.is_file():
                continue
            if want is None or _sha256(cand) == want:
                found = cand
                break
            if new is not None:
                raise AppError(
                    f"{flag} {str(new)!r} is not the file this run was started with: its sha256 is "
                    f"{_sha256(cand)[:16]}..., the run's ({old!r}) was {want[:16]}...; give the run's own "
                    f"file, or start a new run on this one"
                )
            if cand == Path(old):
                raise AppError(
                    f"the run's {flag} file {old!r} has changed since the run started (sha256 "
                    f"{_sha256(cand)[:16]}..., was {want[:16]}...): a resumed run must see the same data; "
                    f"give a copy of the original with {flag} PATH, or start a new run"
                )
        if found is None:
            what = f"{str(new)!r} is" if new is not None else f"the run's {flag} file {old!r}" + (
                "" if Path(old).is_absolute() else " (relative to the folder the run started in)") + " is"
            hint = f" (its sha256 starts {want[:16]})" if want else ""
            raise AppError(
                f"{what} not there (moved or deleted?): give the file's location{hint}: embtab train "
                f"{doc.get('app')} --resume {shlex.quote(str(run_dir))} {flag} PATH"
            )
        path = os.path.abspath(found)
        if path != old or record is None or record.get("path") != path:
            if path != old:
                log(f"{flag}: {path} (the run's file, same sha256; it was at {old})", quiet=quiet)
            setattr(saved, name, path)
            records[name] = {"path": path, "sha256": want or _sha256(path), "bytes": Path(path).stat().st_size}
            changed = True
    return changed


def start_run(cfg: Any, resume: "str | os.PathLike[str] | Resume | None", app: str) -> tuple[Any, Path]:
    """The config a run goes on with and its run folder: the saved config when resuming
    (from the command line only the threads, the verbosity, a new ``epochs``/``patience``
    and new locations of the input files), else ``cfg`` with its run folder chosen (not
    created: bad input must leave nothing behind) and its input paths made absolute."""
    res = as_resume(resume)
    check_finite(cfg)
    if res is None:
        cfg.check()
        set_threads(cfg.threads)
        for name, path in (getattr(cfg, "implied_inputs", lambda: {})() or {}).items():
            setattr(cfg, name, path)
        for name in _input_fields(cfg):
            if getattr(cfg, name) is not None:
                setattr(cfg, name, os.path.abspath(getattr(cfg, name)))
        cfg.out = str(prepare_new_run_dir(cfg.out or default_run_dir(app), create=False))
        return cfg, Path(cfg.out)

    from . import checkpoint as ckpt_io  # (checkpoint imports this module)

    run_dir = Path(res.run_dir)
    if not run_dir.is_dir():
        raise AppError(f"--resume {res.run_dir!r}: no such run folder")
    saved, doc = load_run_config(run_dir, app, type(cfg))
    saved.threads, saved.quiet = cfg.threads, cfg.quiet
    reason = _failed_reason(run_dir)
    if reason is not None:
        log(f"this run failed before ({reason})", quiet=saved.quiet)
    try:
        check_finite(saved)
        saved.check()
    except AppError as exc:
        raise AppError(f"{str(run_dir / 'config.json')!r}: {exc}; correct the file or start a new run") from None
    changed = _locate_inputs(saved, doc, res.inputs, run_dir, saved.quiet)
    state = ckpt_io.resumable_state(run_dir, app=app, from_best=res.from_best,
                                    start_over=command_line(app, saved, out=str(_unused(run_dir))))
    for name in ("epochs", "patience"):
        value = getattr(res, name)
        if value is not None and value != getattr(saved, name):
            setattr(saved, name, value)
            changed = True
    saved.check()  # the new epochs / patience
    if state is not None and res.epochs is not None:
        done, bad = int(state.get("epoch", 0)), int(state.get("bad_epochs", 0))
        if saved.epochs < done:
            raise AppError(f"the run has trained {done} epochs already: --epochs must be at least {done}")
        if saved.epochs > done and saved.patience and bad >= saved.patience:
            raise AppError(
                f"the run stopped early after epoch {done} ({bad} epochs without a better validation score, "
                f"--patience {saved.patience}): to train on to {saved.epochs} epochs, also give --patience 0 "
                f"(never stop) or one above {bad}"
            )
    set_threads(saved.threads)
    if changed:
        doc["config"], doc["format_version"] = asdict(saved), RUN_FORMAT_VERSION
        write_json(run_dir / "config.json", doc)
    return saved, run_dir


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m{sec:02d}s"


@dataclass
class Bags:
    """Variable-length bags of ids: bag ``i`` is ``flat[starts[i]:starts[i + 1]]``."""

    flat: Tensor  # (N,) int64
    starts: Tensor  # (B + 1,) int64

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> "Bags":
        lengths = torch.tensor([len(x) for x in lists], dtype=torch.int64)
        starts = torch.zeros(len(lists) + 1, dtype=torch.int64)
        starts[1:] = torch.cumsum(lengths, 0)
        flat = torch.tensor([i for x in lists for i in x], dtype=torch.int64)
        return cls(flat, starts)

    def __len__(self) -> int:
        return self.starts.numel() - 1

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The ``input`` and ``offsets`` of ``EmbeddingBag`` for bags ``idx``."""
        begin, end = self.starts[idx], self.starts[idx + 1]  # (b,)
        lengths = end - begin
        offsets = torch.zeros_like(lengths)
        offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        total = int(lengths.sum())
        # Position of each output id in `flat`: its bag's start plus its rank in the bag.
        pos = torch.repeat_interleave(begin - offsets, lengths) + torch.arange(total)
        return self.flat[pos], offsets
