"""Process groups for the multi-process tests: gloo on 127.0.0.1 with a free port.

``run(world_size, fn, *args)`` starts ``world_size`` processes that each join the group
and call ``fn(rank, world_size, *args)``; an exception in any of them fails the test
with its traceback, and a group that does not finish within ``timeout`` seconds (a
deadlock: a rank waiting for a collective the others never call) is killed and fails.
Processes come from a fork server that has imported torch and embtab once, so a group
starts in well under a second after the first.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# torch.optim.Optimizer imports torch._dynamo on first use (seconds): once, in the server.
_PRELOAD = ["torch", "torch._dynamo", "torch.distributed.checkpoint", "embtab", "embtab.distributed",
            "tests.distributed._spawn", "tests.distributed._warm"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)  # the machine's cores are shared: one thread per rank
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run(world_size: int, fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> None:
    """Run ``fn(rank, world_size, *args)`` on every rank of a fresh gloo group."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    port = free_port()
    procs = mp.start_processes(_entry, args=(world_size, port, fn, args), nprocs=world_size, join=False,
                               start_method="forkserver")
    deadline = time.monotonic() + timeout
    while not procs.join(timeout=0.5):
        if time.monotonic() > deadline:
            for p in procs.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"the {world_size} ranks did not finish within {timeout:.0f} s (a deadlock?)")


