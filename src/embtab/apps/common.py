"""Shared plumbing of the applications: errors, messages on stderr, run folders, JSON files."""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .._io import atomic_write_text

RUN_FORMAT = "embtab.run"
RUN_FORMAT_VERSION = 1
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
    base = Path(root) / f"{app}-{stamp}"
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


def check_finite(cfg: Any) -> None:
    """Refuse NaN and infinite numbers in a config (they pass ``< 0`` checks silently)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise AppError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")


def load_run_config(run_dir: Path, app: str, cls: type) -> Any:
    """The ``cls`` config saved in ``run_dir`` by :func:`create_run_dir` (fields ``cls``
    no longer has are dropped)."""
    doc = read_json(run_dir / "config.json", "run config")
    if not isinstance(doc, dict) or doc.get("format") != RUN_FORMAT or doc.get("app") != app:
        raise AppError(f"{str(run_dir)!r} is not a {app} run folder (its config.json is not an embtab {app} run)")
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in doc["config"].items() if k in known})


def create_run_dir(cfg: Any, app: str) -> Path:
    """Create the new run folder ``cfg.out`` (chosen by :func:`start_run`) with its config."""
    run_dir = prepare_new_run_dir(cfg.out, quiet=cfg.quiet)
    write_json(run_dir / "config.json", {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
                                        "app": app, "config": asdict(cfg)})
    return run_dir


def run_outputs(run_dir: Path, checkpoints: dict[str, str], **extra: str) -> dict[str, str]:
    """The files of a finished run folder, by name (for ``metrics.json`` and the summary);
    the plots only when they were drawn."""
    plots = {k: str(run_dir / f"{k}.png") for k in ("curves", "embeddings") if (run_dir / f"{k}.png").is_file()}
    return {
        "run_dir": str(run_dir), "config": str(run_dir / "config.json"), "metrics": str(run_dir / "metrics.json"),
        **plots, **extra, **checkpoints,
    }


def start_run(cfg: Any, resume: str | None, app: str) -> tuple[Any, Path]:
    """The config a run goes on with and its run folder: the saved config when resuming
    (only the threads and the verbosity come from the command line: how to run, not what),
    else ``cfg`` with its run folder chosen (not created: bad input must leave nothing behind)."""
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise AppError(f"--resume {resume!r}: no such run folder")
        saved = load_run_config(run_dir, app, type(cfg))
        saved.threads, saved.quiet = cfg.threads, cfg.quiet
        cfg = saved
    check_finite(cfg)
    cfg.check()
    set_threads(cfg.threads)
    if resume is None:
        cfg.out = str(prepare_new_run_dir(cfg.out or default_run_dir(app), create=False))
    return cfg, Path(resume) if resume is not None else Path(cfg.out)


def resume_command(app: str, run_dir: str | os.PathLike[str], threads: int | None = None) -> str:
    """The command that resumes the run in ``run_dir`` (with its thread count, for equal metrics)."""
    words = ["embtab", "train", app, "--resume", str(run_dir)]
    if threads is not None:
        words += ["--threads", str(threads)]
    return " ".join(shlex.quote(w) for w in words)


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
