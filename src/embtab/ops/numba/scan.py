"""CPU kernel for the collection's forward checks (numba; imported only if numba is).

``functional.embedding_bag`` checks a lookup with a few small torch ops (min and
max of the ids, the offsets' first, last and smallest step), each a separate pass
and call; for a collection of many features that overhead rivals the lookups. This
kernel reads the ids and offsets once and returns every number those checks need.
(A numba pooling kernel was tried too: FBGEMM's, inside torch, was 1.7x faster.)
"""

from __future__ import annotations

from numba import njit


@njit(nogil=True, cache=True)
def scan_bags(ids, offsets, include_last, ends, with_range):  # type: ignore[no-untyped-def]
    """Everything the checks of one bag lookup need, in one pass; also writes the
    canonical offsets ``ends`` (B + 1,): the bag starts, then the number of ids used.

    Returns (min id, max id, offsets[0], offsets[-1], smallest offsets step, number of
    ids used). With ``include_last`` the last offset ends the last bag, and ids after
    it are not used (nor scanned), as in torch. Empty ids, or ``with_range`` False
    (the ids are not read at all), give (0, -1); empty or one-element ``offsets``
    give a step of 0. The caller checks the offsets' values.
    """
    n = offsets.shape[0]
    first, last, step = 0, 0, 0
    if n > 0:
        first = offsets[0]
        last = offsets[n - 1]
        if n > 1:
            step = offsets[1] - offsets[0]
            for i in range(2, n):
                d = offsets[i] - offsets[i - 1]
                if d < step:
                    step = d
    num_ids = ids.shape[0]
    if include_last and n > 0 and 0 <= last < num_ids:
        num_ids = last
    lo, hi = 0, -1
    if with_range and num_ids > 0:
        lo = ids[0]
        hi = ids[0]
        for i in range(1, num_ids):
            x = ids[i]
            if x < lo:
                lo = x
            if x > hi:
                hi = x
    starts = n - 1 if include_last else n
    for i in range(starts):
        ends[i] = offsets[i]
    ends[starts] = num_ids
    return lo, hi, first, last, step, num_ids
