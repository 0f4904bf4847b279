"""Memory for large CPU tables: transparent huge pages on Linux.

A lookup or a fused update touches rows scattered over a table of hundreds of
megabytes. With 4 KiB pages nearly every row costs a TLB miss and a page walk (two
nested walks in a virtual machine); with 2 MiB pages the same table needs 512x fewer
translations. Linux gives huge pages to memory that asks for them
(``madvise(MADV_HUGEPAGE)``, honoured when ``/sys/kernel/mm/transparent_hugepage/enabled``
is ``madvise`` or ``always``) if it asks before the pages are first touched. So a
large table gets a fresh anonymous mapping of its own, advised, then filled: memory
from ``torch.empty`` may be heap memory that an earlier tensor already touched.

Only advice: where the kernel or the platform says no, the table is on ordinary
pages and nothing else changes. ``EMBTAB_HUGE_PAGES=0`` turns it off. Such a tensor's
storage cannot grow in place (as any tensor made from a buffer); copies, saving,
pickling and ``share_memory_()`` work as usual.
"""

from __future__ import annotations

import math
import mmap
import os
import sys

import torch

ENV_VAR = "EMBTAB_HUGE_PAGES"
HUGE_PAGE = 2 << 20
MIN_BYTES = 2 * HUGE_PAGE  # smaller tables hold at most one whole huge page: not worth a mapping


def huge_page_bytes(t: torch.Tensor) -> int:
    """Bytes of huge pages in the mappings under ``t``'s memory (``/proc/self/smaps``;
    0 where there is no such file). For checks and benchmarks, not for the hot path."""
    start, end = t.data_ptr(), t.data_ptr() + t.nbytes
    huge, lo, hi = 0, 0, 0
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                elif head == "AnonHugePages:" and lo < end and hi > start:
                    huge += int(line.split()[1]) * 1024
    except OSError:
        return 0
    return huge


def wanted(nbytes: int, device: torch.device | str | None) -> bool:
    """Whether a table of ``nbytes`` on ``device`` goes on huge pages."""
    if nbytes < MIN_BYTES or os.environ.get(ENV_VAR, "1") == "0":
        return False
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    dev = torch.device(device) if device is not None else torch.get_default_device()
    return dev.type == "cpu"


def empty(shape: tuple[int, ...], *, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.empty``, on huge pages where it is a large CPU tensor (fill it next)."""
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    nbytes = math.prod(shape) * dtype.itemsize
    if wanted(nbytes, device):
        try:
            # Private: a shared anonymous mapping is shmem, whose huge pages are off by default.
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # fresh, freed with the tensor
            buf.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError):
            pass
        else:
            return torch.frombuffer(buf, dtype=dtype).view(shape)  # the tensor keeps ``buf`` alive
    return torch.empty(shape, dtype=dtype, device=device)
