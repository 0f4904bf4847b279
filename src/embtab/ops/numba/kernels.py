"""The CPU fast path of the fused update: numba-compiled kernels (imported only if numba is).

Two kernels do all the work of a backward pass, each run by a pool of plain
threads (``nogil`` kernels; see ``update.py``), not numba's ``prange``: the
threads then block instead of spinning between calls, and no second OpenMP
runtime competes with torch's for the cores.

- ``plan_table``: for one table, write where each occurrence's gradient row is,
  then sort the table's occurrences by row (an LSD radix sort: the rows are small
  integers, so two 10/11-bit passes sort a 1M-row table's ids, far cheaper than a
  comparison sort), and cut the sorted list into segments, one per distinct row.
- ``update_rows``: for a range of a table's distinct rows, sum each row's
  occurrences' gradient rows (the duplicates are summed *before* the update, in a
  D-element accumulator that stays in L1, never in a ``(U, D)`` buffer) and apply
  the optimizer to the weight row and its state in the same pass.

Why it is shaped so: a step touches tens of thousands of random rows per table, far
outside the caches, so the update is bound by memory latency, not arithmetic. Hence
the weight and state rows are prefetched 16 rows ahead (``llvm.prefetch``, as FBGEMM's
CPU kernels do), the rows are visited in ascending order (the sort: page-walk
locality, also under nested paging), and rows are indexed through 1-D views
(``w[r][d]``, not ``w[r, d]``: numba's wrap-around handling of a signed index
otherwise keeps LLVM from vectorising).

The optimizer kinds share one kernel (``kind`` is a branch per row, perfectly
predicted), so each weight dtype compiles once. ``cache=True`` stores the machine
code next to this file (or in numba's user cache), so only the first run ever pays
the compile.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..common import KIND_CODES

SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM, ADAMW = (KIND_CODES[k] for k in ("sgd", "adagrad", "rowwise_adagrad", "adam", "adamw"))

# Rows of look-ahead for the prefetches: enough to cover DRAM latency (and the
# nested page walks of a VM) with the row updates a core runs meanwhile.
PREFETCH_AHEAD = 16
# Reassociation lets LLVM vectorise the per-row sums of squares; no nnan/ninf, so
# NaN and inf propagate exactly as in the reference.
FASTMATH = {"reassoc", "contract", "nsz"}


def _make_prefetch(write: int):  # type: ignore[no-untyped-def]
    @intrinsic
    def _prefetch(typingctx, arr, index):  # type: ignore[no-untyped-def]
        """Hint the CPU to fetch the cache line holding ``arr.flat[index]``."""
        sig = types.void(arr, index)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            array = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            ptr = builder.bitcast(builder.gep(array.data, [args[1]]), i8p)
            i32 = ir.IntType(32)
            module = builder.module
            fn = module.globals.get("llvm.prefetch.p0")
            if fn is None:
                fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name="llvm.prefetch.p0")
            # (address, rw, locality 3 = keep in all cache levels, data cache)
            builder.call(fn, [ptr, ir.Constant(i32, write), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return sig, codegen

    return _prefetch


prefetch_read = _make_prefetch(0)
prefetch_write = _make_prefetch(1)


@njit(nogil=True, cache=True)
def offsets_decrease(offsets):  # type: ignore[no-untyped-def]
    """``ops.common.offsets_decrease`` in one pass, without temporaries (a tenth of its time
    on the offsets of a small batch)."""
    for i in range(1, offsets.shape[0]):
        if offsets[i] < offsets[i - 1]:
            return True
    return False


@njit(nogil=True, cache=True)
def radix_sort_rows(ids, lo, hi, pad, num_rows, keys, order, tmp_keys, tmp_order):  # type: ignore[no-untyped-def]
    """Sort the kept occurrences ``lo <= j < hi`` of one table by row (stably).

    Kept means ``0 <= ids[j]`` and ``ids[j] != pad``. Writes ``keys[lo:lo + M]`` (rows,
    ascending) and ``order[lo:lo + M]`` (their positions j); returns M.
    """
    m = 0
    for j in range(lo, hi):
        r = ids[j]
        if r >= 0 and r != pad:
            tmp_keys[lo + m] = r
            tmp_order[lo + m] = j
            m += 1
    if m == 0:
        return 0
    bits = 1
    while (1 << bits) < num_rows:
        bits += 1
    passes = (bits + 10) // 11
    width = (bits + passes - 1) // passes
    radix = 1 << width
    mask = radix - 1
    count = np.empty(radix, np.int64)
    src_k, src_o, dst_k, dst_o = tmp_keys, tmp_order, keys, order
    for p in range(passes):
        shift = p * width
        count[:] = 0
        for i in range(lo, lo + m):
            count[(src_k[i] >> shift) & mask] += 1
        total = lo
        for b in range(radix):
            c = count[b]
            count[b] = total
            total += c
        for i in range(lo, lo + m):
            k = src_k[i]
            b = (k >> shift) & mask
            o = count[b]
            count[b] = o + 1
            dst_k[o] = k
            dst_o[o] = src_o[i]
        src_k, src_o, dst_k, dst_o = dst_k, dst_o, src_k, src_o
    if passes % 2 == 0:  # the result sits in the scratch arrays
        keys[lo:lo + m] = tmp_keys[lo:lo + m]
        order[lo:lo + m] = tmp_order[lo:lo + m]
    return m


# Columns of the per-source table handed to ``plan_table``.
ID_LO, ID_HI, ENDS_LO, NUM_BAGS, BASE, STRIDE, FLAGS = 0, 1, 2, 3, 4, 5, 6
NUM_COLUMNS = 7
MEAN, PSW = 1, 2  # FLAGS bits


@njit(nogil=True, cache=True)
def plan_table(ids, ends, sources, s0, s1, pad, num_rows, psw, src, scale, keys, order, tmp_keys, tmp_order,
               starts, starts_lo, rows, sorted_scale):  # type: ignore[no-untyped-def]
    """Everything the update of one table needs, from its sources ``s0 <= s < s1``.

    Source s (one feature's lookup) holds occurrences ``ids[ID_LO:ID_HI]`` in NUM_BAGS
    bags cut by ``ends[ENDS_LO:]`` (relative to ID_LO); bag b's gradient row starts at
    ``BASE + b * STRIDE`` of the flat gradient. Writes per occurrence ``src[j]`` and,
    for mean bags or per-sample weights, ``scale[j]``; sorts the table's kept
    occurrences; writes the distinct rows to ``rows[lo:lo + U]`` (lo = the first
    source's ID_LO), segment starts to ``starts[starts_lo:starts_lo + U + 1]`` and, in
    sorted order, the occurrences' gradient offsets to ``order[lo:]`` (overwriting
    the positions) and scales to ``sorted_scale[lo:]``, so that the update reads
    them sequentially. Returns U.
    """
    lo = sources[s0, ID_LO]
    hi = sources[s1 - 1, ID_HI]
    need_scale = False  # one scaled source: the whole table's occurrences get a scale
    for s in range(s0, s1):
        if sources[s, FLAGS] != 0:
            need_scale = True
    for s in range(s0, s1):
        a, e = sources[s, ID_LO], sources[s, ENDS_LO]
        base, stride, flags = sources[s, BASE], sources[s, STRIDE], sources[s, FLAGS]
        for b in range(sources[s, NUM_BAGS]):
            b0, b1 = a + ends[e + b], a + ends[e + b + 1]
            off = base + b * stride
            for j in range(b0, b1):
                src[j] = off
            if not need_scale:
                continue
            if flags & MEAN:
                kept = 0
                for j in range(b0, b1):
                    r = ids[j]
                    if r >= 0 and r != pad:
                        kept += 1
                inv = 1.0 / max(kept, 1)
                for j in range(b0, b1):
                    scale[j] = inv
            else:
                for j in range(b0, b1):
                    scale[j] = 1.0
            if flags & PSW:
                for j in range(b0, b1):
                    scale[j] *= psw[j]
    m = radix_sort_rows(ids, lo, hi, pad, num_rows, keys, order, tmp_keys, tmp_order)
    u = 0
    prev = -1
    for i in range(lo, lo + m):
        k = keys[i]
        if k != prev:
            starts[starts_lo + u] = i
            rows[lo + u] = k
            u += 1
            prev = k
        j = order[i]
        order[i] = src[j]
        if need_scale:
            sorted_scale[i] = scale[j]
    starts[starts_lo + u] = lo + m
    return u


@njit(nogil=True, cache=True)
def chunk_bounds(starts, num_rows, num_chunks):  # type: ignore[no-untyped-def]
    """Split rows into chunks of about equal cost: a row costs its memory traffic
    (counted as 8 occurrences) plus one per occurrence, so a Zipf-hot row with
    thousands of duplicates does not leave one thread with all the work."""
    bounds = np.empty(num_chunks + 1, np.int64)
    first = starts[0]
    total = num_rows * 8 + (starts[num_rows] - first)
    bounds[0] = 0
    for c in range(1, num_chunks):
        target = total * c // num_chunks
        lo, hi = bounds[c - 1], num_rows
        while lo < hi:  # first u with cost(u) >= target
            mid = (lo + hi) // 2
            if mid * 8 + (starts[mid] - first) < target:
                lo = mid + 1
            else:
                hi = mid
        bounds[c] = lo
    bounds[num_chunks] = num_rows
    return bounds


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def update_rows(kind, w, s1, s2, step, rows, starts, src, scale, has_scale, grad, hyper, freq, u0, u1):  # type: ignore[no-untyped-def]
    """Sum each distinct row's gradient occurrences and apply the optimizer to it.

    Rows ``rows[u]`` for ``u0 <= u < u1``. w (V, D) weight; s1 (V, D1) first state
    (Adagrad sum (V, D), row-wise sum (V, 1), Adam exp_avg (V, D)); s2 (V, D) Adam
    exp_avg_sq; step (V,) Adam per-row steps; unused state arrays are (1, 1)/(1,)
    dummies. Row ``rows[u]`` sums ``scale[k] * grad[src[k]:src[k] + D]`` over
    ``starts[u] <= k < starts[u + 1]`` (``freq``: divided by the number of
    occurrences). hyper = (lr, eps, beta1, beta2, weight_decay) as float64.
    """
    if u1 <= u0:
        return
    dim = w.shape[1]
    # Hyperparameters in the weight's dtype, so the row loops run in float32 SIMD for
    # float32 tables (as torch and FBGEMM do); bias corrections are formed in float64.
    typed = np.empty(9, w.dtype)  # assignments round the float64 values to w's dtype
    typed[0] = hyper[0]
    typed[1] = hyper[1]
    typed[2] = 1.0 - hyper[2]
    typed[3] = hyper[3]
    typed[4] = 1.0 - hyper[3]
    typed[5] = hyper[4]
    typed[6] = 1.0 - hyper[0] * hyper[4]
    typed[7] = 1.0 / dim
    typed[8] = 0.0
    lr, eps, one_minus_beta1, beta2 = typed[0], typed[1], typed[2], typed[3]
    one_minus_beta2, wd, decay, inv_dim = typed[4], typed[5], typed[6], typed[7]
    zero = typed[8]
    w_flat = w.reshape(-1)
    s1_flat = s1.reshape(-1)
    s2_flat = s2.reshape(-1)
    line = 64 // w.itemsize  # elements per cache line
    acc = np.empty(dim, w.dtype)
    cast = np.empty(2, w.dtype)
    for u in range(u0, u1):
        ahead = u + PREFETCH_AHEAD
        if ahead < u1:
            ra = rows[ahead]
            for q in range(0, dim, line):
                prefetch_write(w_flat, ra * dim + q)
            if kind == ADAGRAD or kind == ADAM or kind == ADAMW:
                for q in range(0, dim, line):
                    prefetch_write(s1_flat, ra * dim + q)
            elif kind == ROWWISE_ADAGRAD:
                prefetch_write(s1_flat, ra)
            if kind == ADAM or kind == ADAMW:
                for q in range(0, dim, line):
                    prefetch_write(s2_flat, ra * dim + q)
            # ... and the first gradient row of that future row.
            oa = src[starts[ahead]]
            for q in range(0, dim, line):
                prefetch_read(grad, oa + q)
        # Duplicates summed first: the update sees one gradient per row. Rows are taken as
        # 1-D views indexed by range() loops: numba then knows the indices are not
        # negative and LLVM vectorises the loops (``w[r, d]`` with a signed ``r`` would
        # carry a wrap-around test per element and run ~7x slower).
        for d in range(dim):
            acc[d] = zero
        k0, k1 = starts[u], starts[u + 1]
        for k in range(k0, k1):
            o = src[k]
            g_row = grad[o:o + dim]
            if has_scale:
                sc = scale[k]
                for d in range(dim):
                    acc[d] += sc * g_row[d]
            else:
                for d in range(dim):
                    acc[d] += g_row[d]
        if freq:
            cast[0] = 1.0 / (k1 - k0)
            inv = cast[0]
            for d in range(dim):
                acc[d] *= inv
        r = rows[u]
        w_row = w[r]
        if kind == SGD:
            for d in range(dim):
                w_row[d] -= lr * (acc[d] + wd * w_row[d])
        elif kind == ADAGRAD:
            s_row = s1[r]
            for d in range(dim):
                g = acc[d] + wd * w_row[d]
                s = s_row[d] + g * g
                s_row[d] = s
                w_row[d] -= lr * g / (np.sqrt(s) + eps)
        elif kind == ROWWISE_ADAGRAD:
            sq = zero
            for d in range(dim):
                g = acc[d] + wd * w_row[d]
                acc[d] = g
                sq += g * g
            s = s1[r, 0] + sq * inv_dim
            s1[r, 0] = s
            m = lr / (np.sqrt(s) + eps)
            for d in range(dim):
                w_row[d] -= m * acc[d]
        else:  # ADAM, ADAMW: bias correction from this row's own step count
            t = step[r] + 1
            step[r] = t
            bc1 = 1.0 - hyper[2] ** t
            cast[0] = hyper[0] / bc1
            cast[1] = np.sqrt(1.0 - hyper[3] ** t)
            step_size, bc2_sqrt = cast[0], cast[1]
            m_row = s1[r]
            v_row = s2[r]
            if kind == ADAMW:
                for d in range(dim):
                    w_row[d] *= decay
            else:
                for d in range(dim):
                    acc[d] += wd * w_row[d]
            for d in range(dim):
                g = acc[d]
                m = m_row[d] + one_minus_beta1 * (g - m_row[d])
                v = v_row[d] * beta2 + one_minus_beta2 * g * g
                m_row[d] = m
                v_row[d] = v
                w_row[d] -= step_size * m / (np.sqrt(v) / bc2_sqrt + eps)
