"""CPU kernels of the dynamic table's index (numba; imported only when numba is).

The index is an open-addressing hash table of ``slots`` (int32 rows, -1 empty; a power of
two, at least twice the capacity) over the per-row arrays the stage owns: ``row_id`` (the
id a row holds), ``last_seen`` (the last training step it was seen, -1: the row is free)
and ``count`` (its sightings). A slot stores a row, never an id, so any int64 is a valid
id (no sentinel) and the slots cost 4 bytes each; an id's home slot is
``fmix64(id) & (slots - 1)``, with linear probing, and deletion shifts the following
entries back (no tombstones, so lookups never slow down with churn).

Every kernel keeps the decisions of ``_index_torch.py`` (the canonical rules, any device):
which ids are live, which rows are evicted and which free rows new ids get. The tests
hold the two to each other and to a dict-based model.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_SIGN = np.uint64(1 << 63)
_BINS = 4096  # score histogram bins of the victim selection


@njit(inline="always")
def _fmix(x):  # type: ignore[no-untyped-def]
    x ^= x >> _S33
    x *= _C1
    x ^= x >> _S33
    x *= _C2
    x ^= x >> _S33
    return x


@njit(inline="always")
def _home(id_, mask):  # type: ignore[no-untyped-def]
    return np.int64(_fmix(np.uint64(id_)) & np.uint64(mask))


@njit(nogil=True, cache=True)
def fmix64(x):  # type: ignore[no-untyped-def]
    """fmix64 of int64 ``x`` (as unsigned), returned as int64 bits (for the tests)."""
    out = np.empty(x.size, np.int64)
    for i in range(x.size):
        out[i] = np.int64(_fmix(np.uint64(x[i])))
    return out


@njit(inline="always")
def _find(slots, row_id, id_):  # type: ignore[no-untyped-def]
    mask = slots.size - 1
    s = _home(id_, mask)
    while True:
        r = slots[s]
        if r < 0:
            return -1
        if row_id[r] == id_:
            return np.int64(r)
        s = (s + 1) & mask


@njit(inline="always")
def _insert(slots, row_id, r):  # type: ignore[no-untyped-def]
    mask = slots.size - 1
    s = _home(row_id[r], mask)
    while slots[s] >= 0:
        s = (s + 1) & mask
    slots[s] = r


@njit(inline="always")
def _delete(slots, row_id, r):  # type: ignore[no-untyped-def]
    """Remove row ``r`` (``row_id[r]`` still its id) and shift the entries after it back."""
    mask = slots.size - 1
    i = _home(row_id[r], mask)
    while slots[i] != r:
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        rj = slots[j]
        if rj < 0:
            break
        k = _home(row_id[rj], mask)
        # rj stays if its home k lies cyclically in (i, j]; otherwise it moves into the hole.
        if i <= j:
            stays = i < k and k <= j
        else:
            stays = k > i or k <= j
        if not stays:
            slots[i] = rj
            i = j
    slots[i] = -1


@njit(nogil=True, cache=True)
def rebuild(slots, row_id, last_seen):  # type: ignore[no-untyped-def]
    """The slots of every live row (after a load, a move between devices, or a copy)."""
    slots[:] = -1
    live = 0
    for r in range(last_seen.size):
        if last_seen[r] >= 0:
            _insert(slots, row_id, r)
            live += 1
    return live


@njit(nogil=True, cache=True)
def lookup(x, slots, row_id, out):  # type: ignore[no-untyped-def]
    """``out[j]``: the row of id ``x[j]``, or -1."""
    for j in range(x.size):
        out[j] = _find(slots, row_id, x[j])


@njit(nogil=True, cache=True)
def probe(x, slots, row_id, last_seen, count, t, train):  # type: ignore[no-untyped-def]
    """A batch's distinct ids (in order of first occurrence), their counts in the batch,
    their rows before the batch (-1: none) and each occurrence's index among them.
    With ``train``: the rows of ids seen are marked seen at step ``t`` and counted."""
    n = x.size
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    local = np.full(size, -1, np.int64)
    uniq = np.empty(n, np.int64)
    bcnt = np.zeros(n, np.int64)
    row_u = np.empty(n, np.int64)
    inv = np.empty(n, np.int64)
    u = 0
    for j in range(n):
        v = x[j]
        s = _home(v, mask)
        while True:
            q = local[s]
            if q < 0:
                q = u
                u += 1
                local[s] = q
                uniq[q] = v
                row_u[q] = _find(slots, row_id, v)
                break
            if uniq[q] == v:
                break
            s = (s + 1) & mask
        bcnt[q] += 1
        inv[j] = q
    if train:
        for q in range(u):
            r = row_u[q]
            if r >= 0:
                last_seen[r] = t
                count[r] += bcnt[q]
    return uniq[:u], bcnt[:u], row_u[:u], inv


@njit(nogil=True, cache=True)
def free(slots, row_id, last_seen, rows):  # type: ignore[no-untyped-def]
    for r in rows:
        _delete(slots, row_id, r)
        last_seen[r] = -1


@njit(nogil=True, cache=True)
def expired(last_seen, threshold):  # type: ignore[no-untyped-def]
    """Live rows last seen at or before step ``threshold``, ascending."""
    n = 0
    for r in range(last_seen.size):
        if 0 <= last_seen[r] <= threshold:
            n += 1
    out = np.empty(n, np.int64)
    n = 0
    for r in range(last_seen.size):
        if 0 <= last_seen[r] <= threshold:
            out[n] = r
            n += 1
    return out


@njit(nogil=True, cache=True)
def lowest_free(last_seen, a, start):  # type: ignore[no-untyped-def]
    """The first ``a`` free rows at or after ``start`` (fewer if there are not that many)."""
    out = np.empty(a, np.int64)
    n = 0
    r = start
    while n < a and r < last_seen.size:
        if last_seen[r] < 0:
            out[n] = r
            n += 1
        r += 1
    return out[:n]


@njit(nogil=True, cache=True)
def assign(slots, row_id, last_seen, count, rows, ids, counts, t):  # type: ignore[no-untyped-def]
    for i in range(rows.size):
        r = rows[i]
        row_id[r] = ids[i]
        last_seen[r] = t
        count[r] = counts[i]
        _insert(slots, row_id, r)


@njit(nogil=True, cache=True)
def _histogram(score, last_seen, t, lo, hist):  # type: ignore[no-untyped-def]
    """Scores of the eligible rows (live, not seen at step ``t``): ``hist[b]`` counts score
    ``lo + b``, the last bin every score above. Returns (eligible, lowest, highest, below lo)."""
    hist[:] = 0
    last = hist.size - 1
    eligible = 0
    under = 0
    low = np.int64(1 << 62)
    top = np.int64(-(1 << 62))
    for r in range(score.size):
        ls = last_seen[r]
        if ls >= 0 and ls != t:
            s = score[r]
            eligible += 1
            low = min(low, s)
            top = max(top, s)
            if s < lo:
                under += 1
            else:
                hist[min(s - lo, last)] += 1
    return eligible, low, top, under


@njit(inline="always")
def _cut_bin(hist, need):  # type: ignore[no-untyped-def]
    cum = 0
    b = 0
    while cum + hist[b] < need:
        cum += hist[b]
        b += 1
    return b


@njit(nogil=True, cache=True)
def victims(score, last_seen, row_id, t, m, lo):  # type: ignore[no-untyped-def]
    """The ``m`` live rows not seen at step ``t`` with the lowest ``(score, id)`` (fewer if
    there are not that many), in no particular order; ``lo``: a guess of the lowest score.

    A selection, not a sort of the table: a histogram of the scores (one bin per score from
    ``lo`` up, the last bin open-ended) finds the cut score ``s`` of the m-th row in one
    pass over the rows; every row scored below ``s`` goes, and the rows scored ``s`` are cut
    by id (see :func:`_collect`).
    """
    hist = np.zeros(_BINS, np.int64)
    eligible, low, top, under = _histogram(score, last_seen, t, lo, hist)
    need = min(m, eligible)
    if need == 0:
        return np.empty(0, np.int64)
    b = _cut_bin(hist, need)
    if under or (b == _BINS - 1 and low > lo):  # the guess was off: bins from the lowest score
        lo = low
        _histogram(score, last_seen, t, lo, hist)
        b = _cut_bin(hist, need)
    if b < _BINS - 1:
        return _collect(score, last_seen, row_id, t, need, lo + b, hist[b])
    # Rare: the cut lies more than _BINS - 1 scores above the lowest: bisect for it.
    a, z = lo + _BINS - 1, top
    while a < z:
        mid = a + (z - a) // 2
        n = 0
        for r in range(score.size):
            ls = last_seen[r]
            if ls >= 0 and ls != t and score[r] <= mid:
                n += 1
        if n >= need:
            z = mid
        else:
            a = mid + 1
    ties = 0
    for r in range(score.size):
        ls = last_seen[r]
        if ls >= 0 and ls != t and score[r] == a:
            ties += 1
    return _collect(score, last_seen, row_id, t, need, a, ties)


@njit(nogil=True, cache=True)
def _collect(score, last_seen, row_id, t, need, cut, ties):  # type: ignore[no-untyped-def]
    """Every eligible row scored below ``cut``, then the lowest ids among the ``ties`` rows
    scored ``cut``, ``need`` rows in all. Ids are compared as signed int64 (unsigned keys
    with the sign bit flipped), 16 bits at a time from the top: a histogram of the digit
    finds the cut digit, the rows below it go, the rows at it are cut by the next digit."""
    out = np.empty(need, np.int64)
    tie_rows = np.empty(ties, np.int64)
    k = 0
    nt = 0
    for r in range(score.size):
        ls = last_seen[r]
        if ls >= 0 and ls != t:
            s = score[r]
            if s < cut:
                out[k] = r
                k += 1
            elif s == cut:
                tie_rows[nt] = r
                nt += 1
    want = need - k
    cand = tie_rows
    hist = np.zeros(65536, np.int64)
    shift = 48
    while want > 0:
        if want >= cand.size:
            out[k:k + cand.size] = cand
            k += cand.size
            break
        hist[:] = 0
        for i in range(cand.size):
            hist[np.int64((np.uint64(row_id[cand[i]]) ^ _SIGN) >> np.uint64(shift)) & 0xFFFF] += 1
        b = _cut_bin(hist, want)
        nxt = np.empty(hist[b], np.int64)
        nn = 0
        for i in range(cand.size):
            d = np.int64((np.uint64(row_id[cand[i]]) ^ _SIGN) >> np.uint64(shift)) & 0xFFFF
            if d < b:
                out[k] = cand[i]
                k += 1
                want -= 1
            elif d == b:
                nxt[nn] = cand[i]
                nn += 1
        cand = nxt
        shift -= 16  # ids are distinct: after the last digit at most one candidate is left
    return out[:k]


@njit(nogil=True, cache=True)
def seeded_rows(ids, key, kind, scale, clamp, out):  # type: ignore[no-untyped-def]
    """``out[i]``: the row of ``ids[i]``, as ``_hash.seeded_rows`` (kind 0 normal, 1 uniform),
    bit for bit: integer arithmetic, then float32 multiplies."""
    dim = out.shape[1]
    k = np.uint64(key)
    sc = np.float32(scale)
    ns = np.float32(3.0 ** 0.5 / 65536.0)
    cl = np.float32(clamp)
    for i in range(ids.size):
        base = _fmix(np.uint64(ids[i]) ^ k)
        row = out[i]
        for j in range(dim):
            h = _fmix(base + np.uint64(j))
            if kind == 1:
                u = np.float32(np.int64(h >> np.uint64(40))) * np.float32(2.0 ** -24)
                row[j] = (u * np.float32(2.0) - np.float32(1.0)) * sc
            else:
                total = (np.int64(h & np.uint64(0xFFFF)) + np.int64((h >> np.uint64(16)) & np.uint64(0xFFFF))
                         + np.int64((h >> np.uint64(32)) & np.uint64(0xFFFF)) + np.int64(h >> np.uint64(48)))
                z = np.float32(total - 131070) * ns
                if clamp > 0:
                    if z > cl:
                        z = cl
                    elif z < -cl:
                        z = -cl
                row[j] = z * sc
