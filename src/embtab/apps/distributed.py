"""An application on several processes: launching them, the process group, the model's checkpoints.

``--nproc N`` starts ``N`` processes on this machine (gloo on 127.0.0.1), each running
the same training with its share of every batch; under ``torchrun`` the launcher has
started them and set ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``, and
each joins the group from there (NCCL when the process has a GPU, gloo otherwise).
Rank 0 writes the run folder; the other ranks write their checkpoints (the same
gathered, plain state) to a scratch folder of their own, which is removed at the end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.nn import Module

from .common import AppError


def env_world_size() -> int:
    """The world size a launcher (``torchrun``) gave this process, or 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def join_from_env() -> None:
    """Join the process group a launcher described in the environment (once)."""
    if dist.is_initialized() or env_world_size() <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, init_method="env://")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, nproc: int, port: int, target: Callable[..., Any], args: tuple[Any, ...],
            threads: int | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    # The machine's cores, shared: without --threads each process takes its share.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // nproc))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nproc)
    try:
        target(*args)
    except BaseException:
        if rank:
            # The ranks usually stop on the same error (they decide alike); let rank 0's, which
            # names the run folder, be the one reported (the first to end is).
            time.sleep(1.0)
        raise
    finally:
        dist.destroy_process_group()
        for folder in _scratch:
            remove_scratch(folder)


def launch(nproc: int, target: Callable[..., Any], *args: Any, threads: int | None = None) -> None:
    """Run ``target(*args)`` in ``nproc`` new processes joined in a gloo group on this machine."""
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_worker, args=(nproc, _free_port(), target, args, threads), nprocs=nproc, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "failed"
        reason = last.split(": ", 1)[1] if ": " in last else last
        raise AppError(f"rank {exc.error_index} of {nproc} stopped: {reason}") from None
    except mp.ProcessExitedException as exc:
        raise AppError(f"rank {exc.error_index} of {nproc} exited ({exc}); see its messages above") from None


_scratch: list[Path] = []


def scratch_dir(rank: int, resume_from: Path | None) -> Path:
    """A rank's own folder for what it writes (removed when the process ends); on resume,
    with rank 0's checkpoints in it."""
    folder = Path(tempfile.mkdtemp(prefix=f"embtab-rank{rank}-"))
    if not _scratch:
        atexit.register(lambda: [remove_scratch(f) for f in _scratch])
    _scratch.append(folder)
    if resume_from is not None and (resume_from / "checkpoints").is_dir():
        shutil.copytree(resume_from / "checkpoints", folder / "checkpoints")
    return folder


def remove_scratch(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (set-up only)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_values(values: list[float]) -> list[float]:
    """Rank 0's ``values`` on every rank: decisions (early stopping) that must agree."""
    rank, _ = rank_and_world()
    t = torch.tensor(values if rank == 0 else [0.0] * len(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def global_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


class GatheredModel(Module):
    """A model whose embedding collections are sharded, seen by the training loop as the
    plain model: ``state_dict()`` is the whole plain state on every rank (what a
    one-process run would save), ``load_state_dict`` takes one and keeps each rank's pieces."""

    def __init__(self, model: Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        from ..distributed import gather_state_dict

        return gather_state_dict(self.inner, rank=None)

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Any, strict: bool = True, assign: bool = False,
    ) -> Any:
        return self.inner.load_state_dict(state_dict, strict, assign)
