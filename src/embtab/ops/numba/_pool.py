"""A small pool of worker threads that take work items as they come.

Used by the fused update (numba ``nogil`` kernels). Plain Python threads, so it needs
nothing beyond the standard library and never spins: an idle worker blocks on a queue.

torch's own OpenMP workers do spin for a few milliseconds after each parallel region
(libgomp's default), and on a machine with few cores they then hold the cores our
workers wait for: ``OMP_WAIT_POLICY=PASSIVE`` in the environment (read when torch
loads) removes that wait; see the README's notes on CPU speed.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable


class _Job:
    """Items ``0 .. n - 1`` handed out one at a time to whichever thread asks first."""

    def __init__(self, fn: Callable[[int], None], n: int) -> None:
        self.fn, self.n = fn, n
        self.next = self.active = 0
        self.closed = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    def work(self) -> None:
        while True:
            with self.cond:
                if self.closed or self.next >= self.n:
                    return
                i = self.next
                self.next += 1
                self.active += 1
            try:
                self.fn(i)
            except BaseException as exc:  # re-raised on the calling thread
                self.error = self.error or exc
            finally:
                with self.cond:
                    self.active -= 1
                    self.cond.notify_all()

    def finish(self) -> None:
        """Close the job (a pool thread that starts late takes nothing) and wait for the
        items in progress."""
        with self.cond:
            self.closed = True
            while self.active:
                self.cond.wait()
        if self.error is not None:
            raise self.error


class _Pool:
    """``run(fn, n, threads)``: ``fn(i)`` for every item, on the calling thread and pool threads.

    Items go to whichever thread is free, and the caller never waits for a pool
    thread that has not started yet. On a shared machine a woken thread can wait
    many milliseconds for a core; then the caller simply does more of the items, so
    a step is never much slower than on one thread (static splits, and OpenMP's
    barriers, wait for the slowest thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0
        self._pid = -1

    def _get(self, size: int) -> ThreadPoolExecutor:
        with self._lock:
            # A forked child inherits the executor but not its threads: start afresh.
            if self._executor is None or self._size < size or self._pid != os.getpid():
                self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="embtab-pool")
                self._size, self._pid = size, os.getpid()
            return self._executor

    def run(self, fn: Callable[[int], None], n: int, threads: int) -> None:
        helpers = min(threads, n) - 1
        if helpers <= 0:
            for i in range(n):
                fn(i)
            return
        job = _Job(fn, n)
        executor = self._get(helpers)
        for _ in range(helpers):
            executor.submit(job.work)
        job.work()
        job.finish()


POOL = _Pool()
