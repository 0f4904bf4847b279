"""The training loop both applications share: epochs, progress, validation, early
stopping, checkpoints after every epoch, and exact resume.

Reproducibility and resume. The model is built after ``torch.manual_seed(seed)``; the
data order of every epoch is drawn from a dedicated ``torch.Generator`` seeded with
``seed``; dropout draws from torch's global RNG. A checkpoint written at the end of an
epoch holds the weights, the optimizer states, both RNG states (and numpy's and
Python's) and the loop state (epoch, history, best score, patience counter), so a run
resumed from it makes exactly the calls an uninterrupted run makes, and reaches the
same final metrics bit for bit (on the same machine and thread count).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from .._io import remove_stale_temps
from . import checkpoint as ckpt_io
from .common import FAILED, AppError, Resume, format_seconds, is_tty, log, mark_failed

LAST = "last.safetensors"
BEST = "best.safetensors"


class Task(Protocol):
    """What an application gives the loop."""

    model: torch.nn.Module
    #: ``torch.optim`` optimizers (fused optimizers live in the model and its state_dict).
    optimizers: dict[str, torch.optim.Optimizer]
    num_train: int
    batch_size: int

    def train_batches(self, order: torch.Tensor) -> Iterator[tuple[Any, int]]:
        """Batches of the training examples in ``order``: ``(batch, size)``."""
        ...

    def train_step(self, batch: Any) -> float:
        """Forward, backward, update; the batch's mean loss."""
        ...

    def validate(self) -> dict[str, float]:
        """Metrics on the validation split (the model is left in training mode after)."""
        ...

    # Optional: ``divergence_causes() -> list[str]``, the options and data properties that
    # likely made the loss non-finite (named in the error when training diverges).


@dataclass
class LoopConfig:
    epochs: int
    patience: int
    monitor: str  # a key of Task.validate()'s result
    mode: str  # "max" or "min"
    seed: int
    quiet: bool = False


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None
    train_seconds: float
    checkpoints: dict[str, str] = field(default_factory=dict)


def _improved(score: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return score > best if mode == "max" else score < best


class _Progress:
    """A tqdm bar on a terminal; otherwise a plain line every ``every`` seconds."""

    def __init__(self, total: int, desc: str, quiet: bool, every: float = 30.0) -> None:
        self.total, self.desc, self.quiet, self.every = total, desc, quiet, every
        self.bar = None
        self.start = self.last_line = time.perf_counter()
        if not quiet and is_tty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False,
                            dynamic_ncols=True)

    def update(self, done: int, examples: int, loss: float) -> None:
        now = time.perf_counter()
        rate = examples / max(now - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(1)
            if done % 10 == 0 or done == self.total:
                self.bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate:,.0f}", refresh=False)
        elif not self.quiet and now - self.last_line >= self.every:
            self.last_line = now
            log(f"  {self.desc}: {done}/{self.total} batches, loss {loss:.4f}, {rate:,.0f} examples/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def fit(task: Task, loop: LoopConfig, run_dir: Path, *, resume: bool | str | Resume | None = False) -> FitResult:
    """Train ``task`` for up to ``loop.epochs`` epochs, then load its best weights.

    With ``resume`` (true, a run folder, or a :class:`~embtab.apps.common.Resume`) the loop
    continues from ``run_dir/checkpoints/last.safetensors`` if there is one (otherwise it
    starts from the beginning, in the same folder), or from ``best.safetensors`` with
    ``Resume(from_best=True)``: the best epoch's weights and loop state, the data order
    where it was, the optimizer state afresh.
    """
    if loop.mode not in ("max", "min"):
        raise ValueError(f"fit(): mode must be 'max' or 'min', got {loop.mode!r}")
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ckpt_dir / LAST, ckpt_dir / BEST
    generator = torch.Generator().manual_seed(loop.seed)
    state: dict[str, Any] = {
        "epoch": 0, "history": [], "best_score": None, "best_epoch": 0, "bad_epochs": 0,
        "stopped_early": False, "train_seconds": 0.0,
    }
    resumed_from = None
    if resume:
        for folder in (run_dir, ckpt_dir):  # what a killed run was writing (metrics, plots, checkpoints)
            remove_stale_temps(folder)
        if isinstance(resume, Resume) and resume.from_best:
            info = ckpt_io.load_weights(best_path, task.model)
            epoch = int(info["epoch"])
            state = info.get("state") or {**state, "epoch": epoch, "best_epoch": epoch,
                                          "best_score": info.get(loop.monitor)}
            for _ in range(epoch):  # the data order of the epochs to come, as in the run
                torch.randperm(task.num_train, generator=generator)
            resumed_from = epoch
            log(f"going on after the best epoch {epoch} from {best_path}, with fresh optimizer state",
                quiet=loop.quiet)
        elif last_path.is_file():
            ckpt = ckpt_io.load_checkpoint(last_path)
            ckpt_io.restore(ckpt, task.model, task.optimizers)
            ckpt_io.restore_rng(ckpt, generator)
            state = ckpt.state
            resumed_from = int(state["epoch"])
            log(f"resuming after epoch {resumed_from} from {last_path}", quiet=loop.quiet)
        else:
            log(f"no complete checkpoint in {ckpt_dir}: starting from the beginning", quiet=loop.quiet)
        # A new --patience (or --epochs) on resume: whether the run has stopped is the patience's call.
        state["stopped_early"] = bool(loop.patience and state["bad_epochs"] >= loop.patience)

    task.model.train()
    while state["epoch"] < loop.epochs and not state["stopped_early"]:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        order = torch.randperm(task.num_train, generator=generator)
        num_batches = -(-task.num_train // max(task.batch_size, 1))
        progress = _Progress(num_batches, f"epoch {epoch}/{loop.epochs}", loop.quiet)
        loss_sum, seen, done = 0.0, 0, 0
        try:
            for batch, size in task.train_batches(order):
                loss = task.train_step(batch)
                if not math.isfinite(loss):
                    _diverged(task, run_dir, loss, epoch, done + 1, num_batches)
                loss_sum += loss * size
                seen += size
                done += 1
                progress.update(done, seen, loss_sum / seen)
        finally:
            progress.close()
        train_time = time.perf_counter() - t0
        val = task.validate()
        task.model.train()
        score = float(val[loop.monitor])
        improved = _improved(score, state["best_score"], loop.mode)
        if improved:
            state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch, 0
        else:
            state["bad_epochs"] += 1
            if loop.patience and state["bad_epochs"] >= loop.patience:
                state["stopped_early"] = True
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1),
                  **{f"val_{k}": v for k, v in val.items()}, "seconds": train_time,
                  "examples_per_s": seen / max(train_time, 1e-9)}
        state["history"].append(record)
        state["epoch"] = epoch
        state["train_seconds"] += time.perf_counter() - t0
        if improved:
            # The best weights first, then the checkpoint that records them as best: a kill
            # in between leaves an older checkpoint, whose epoch is simply run again. The
            # loop state goes along, for going on from the best epoch (--from-best).
            ckpt_io.save_weights(best_path, task.model, {"epoch": epoch, loop.monitor: score, "state": state})
        ckpt_io.save_checkpoint(last_path, model=task.model, optimizers=task.optimizers, state=state,
                                generator=generator)
        shown = "  ".join(f"val_{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
        log(
            f"epoch {epoch}/{loop.epochs}  loss {record['train_loss']:.4f}  {shown}  "
            f"{record['examples_per_s']:,.0f} ex/s  {format_seconds(train_time)}"
            + ("  * best" if improved else "")
            + ("  (early stop)" if state["stopped_early"] else ""),
            quiet=loop.quiet,
        )

    if not best_path.is_file():
        raise AppError(f"no best weights in {ckpt_dir}: train for at least one epoch (--epochs)")
    ckpt_io.load_weights(best_path, task.model)
    (run_dir / FAILED).unlink(missing_ok=True)  # a run that failed once and then went through
    task.model.eval()
    return FitResult(
        history=state["history"], best_epoch=int(state["best_epoch"]),
        best_score=float(state["best_score"]), epochs_run=int(state["epoch"]),
        stopped_early=bool(state["stopped_early"]), resumed_from=resumed_from,
        train_seconds=float(state["train_seconds"]),
        checkpoints={"last": str(last_path), "best": str(best_path)},
    )


def _diverged(task: Task, run_dir: Path, loss: float, epoch: int, batch: int, num_batches: int) -> None:
    """Mark the run failed and raise the error that names the likely causes."""
    causes = list(getattr(task, "divergence_causes", lambda: [])())
    reason = f"training diverged: the loss is {loss} in epoch {epoch} (batch {batch} of {num_batches})"
    mark_failed(run_dir, reason)
    raise AppError(
        f"{reason}; likely cause{'s' if len(causes) > 1 else ''}: {'; '.join(causes) or 'a learning rate too high for this data: lower --lr'}. "
        f"Start a new run with other options (the same --out {str(run_dir)!r} may be reused)"
    )
