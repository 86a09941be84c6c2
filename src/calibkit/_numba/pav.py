"""Numba twins of cpp/include/calibkit/pav.hpp: stable argsort, weighted pool-adjacent-violators, and the
one-vs-rest calibration maps (fit of K isotonic columns, application of K step functions to a block)."""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    HALF_TABLE, JIT, OK, PROBABILITY_OUT_OF_RANGE, PROBABILITY_TOLERANCE, SCORE_NOT_FINITE, as_kernel_array,
    check_float_dtype, exp_f32, f64_bits, is_finite, load, merge_status, new_status, run_locked, status_tuple,
)


@numba.njit(**JIT)
def _pav(y, w, weighted, order, has_order, x_sorted, has_x, increasing, fitted):
    n = y.shape[0]
    sign = 1.0 if increasing else -1.0
    sum_w = np.empty(n)
    sum_wy = np.empty(n)
    mean = np.empty(n)
    start = np.empty(n + 1, np.int64)
    nb = 0
    j = 0
    while j < n:
        first = j
        sw = 0.0
        swy = 0.0
        while True:
            i = order[j] if has_order else j
            wi = w[i] if weighted else 1.0
            sw += wi
            swy += wi * (sign * y[i])
            j += 1
            if not (has_x and j < n and x_sorted[j] == x_sorted[first]):
                break
        start[nb] = first
        sum_w[nb] = sw
        sum_wy[nb] = swy
        mean[nb] = swy / sw
        nb += 1
        while nb >= 2 and mean[nb - 2] >= mean[nb - 1]:
            sum_w[nb - 2] += sum_w[nb - 1]
            sum_wy[nb - 2] += sum_wy[nb - 1]
            mean[nb - 2] = sum_wy[nb - 2] / sum_w[nb - 2]
            nb -= 1
    start[nb] = n
    values = np.empty(nb)
    for b in range(nb):
        values[b] = sign * mean[b]
        for jj in range(start[b], start[b + 1]):
            fitted[order[jj] if has_order else jj] = values[b]
    return start[: nb + 1].copy(), values, sum_w[:nb].copy()


@numba.njit(**JIT)
def _isotonic_on_x(y, x, w, weighted, increasing, fitted):
    """isotonic() of pav.hpp with x: the stable order of x by the radix sort of its keys (the order of
    np.argsort(x, kind="stable"), ties in x pooled through equal keys), y and w gathered into sorted order
    before PAV, the block values scattered back to the input positions."""
    n = y.shape[0]
    keys = _sort_keys(x)
    order = np.arange(n)
    if n > 1:
        _radix_argsort(keys, order)
    ys = np.empty(n)
    ws = np.empty(n if weighted else 1)
    for j in range(n):
        ys[j] = y[order[j]]
    if weighted:
        for j in range(n):
            ws[j] = w[order[j]]
    sorted_fit = np.empty(n)
    starts, values, weights = _pav(ys, ws, weighted, order, False, keys, True, increasing, sorted_fit)
    for j in range(n):
        fitted[order[j]] = sorted_fit[j]
    return order, starts, values, weights


def _float64_vector(a, name, n):
    if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.shape != (n,):
        raise ValueError(f"{name} must be a 1-D float64 array of length {n}")
    return a


def isotonic_fit(y, x, sample_weight, increasing):
    """Same contract as ``calibkit._core.isotonic_fit``."""
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        raise ValueError("y must be 1-D")
    n = y.shape[0]
    _float64_vector(y, "y", n)
    weighted = sample_weight is not None
    w = _float64_vector(sample_weight, "sample_weight", n) if weighted else np.empty(1)
    fitted = np.empty(n)
    if x is not None:
        _float64_vector(x, "x", n)
        order, blocks, values, weights = _isotonic_on_x(y, x, w, weighted, bool(increasing), fitted)
    else:
        order = None
        blocks, values, weights = _pav(y, w, weighted, np.empty(1, np.int64), False, np.empty(1), False,
                                       bool(increasing), fitted)
    return {"fitted": fitted, "order": order, "blocks": blocks, "values": values, "weights": weights}


# -- one-vs-rest calibration maps (IsotonicCalibration, HistogramBinning) -------------------------------------

CHECK_NONE, CHECK_FINITE, CHECK_PROBABILITY = 0, 1, 2
STEP_INTERP, STEP_LEFT = 0, 1
# Buckets of the search table over [0, 1), as in pav.hpp: KNOT_LOG_SUB per octave from 2**-40 to 1, the first
# one also holding [0, 2**-40).
KNOT_LOG_BITS = 6
KNOT_LOG_SUB = 1 << KNOT_LOG_BITS
KNOT_TABLE_SIZE = 40 * KNOT_LOG_SUB
KNOT_LOG_SHIFT = 52 - KNOT_LOG_BITS
KNOT_LOG_BASE = (1023 - 40) << KNOT_LOG_BITS  # bits(2**-40) >> KNOT_LOG_SHIFT
ISOTONIC_GROUP = 16  # classes fitted together, as kIsotonicGroup in pav.hpp
_RADIX_BITS = 11
_RADIX_BUCKETS = 1 << _RADIX_BITS
_SIGN = np.uint64(0x8000000000000000)


@numba.njit(**JIT)
def _sort_keys(v):
    """sort_key of pav.hpp for each value: an order-preserving uint64 (-0.0 read as +0.0)."""
    bits = (v + 0.0).view(np.uint64)
    keys = np.empty(v.shape[0], np.uint64)
    for i in range(v.shape[0]):
        b = bits[i]
        keys[i] = ~b if b >= _SIGN else b | _SIGN
    return keys


@numba.njit(**JIT)
def _radix_argsort(keys, order):
    """Stable ascending LSD radix sort of keys (11-bit digits, a digit all keys share is skipped), `order`
    moved alongside: the same stable order as radix_sort in sort.hpp."""
    n = keys.shape[0]
    hist = np.zeros((6, _RADIX_BUCKETS), np.int64)
    for i in range(n):
        k = keys[i]
        for d in range(6):
            hist[d, np.int64((k >> np.uint64(_RADIX_BITS * d)) & np.uint64(_RADIX_BUCKETS - 1))] += 1
    src_k, src_o = keys, order
    dst_k, dst_o = np.empty_like(keys), np.empty_like(order)
    swapped = False
    offsets = np.empty(_RADIX_BUCKETS, np.int64)
    for d in range(6):
        shift = np.uint64(_RADIX_BITS * d)
        if hist[d, np.int64((keys[0] >> shift) & np.uint64(_RADIX_BUCKETS - 1))] == n:
            continue  # every key has this digit
        running = 0
        for b in range(_RADIX_BUCKETS):
            offsets[b] = running
            running += hist[d, b]
        for i in range(n):
            k = src_k[i]
            b = np.int64((k >> shift) & np.uint64(_RADIX_BUCKETS - 1))
            at = offsets[b]
            offsets[b] = at + 1
            dst_k[at] = k
            dst_o[at] = src_o[i]
        src_k, dst_k = dst_k, src_k
        src_o, dst_o = dst_o, src_o
        swapped = not swapped
    if swapped:
        keys[:] = src_k
        order[:] = src_o


MSD_BITS = 11  # kMsdBits of sort.hpp
MSD_SMALL = 24  # kMsdSmall of sort.hpp


@numba.njit(**JIT)
def _msd_sort(keys, order):
    """msd_sort of sort.hpp: stable ascending sort of keys with `order` moved alongside (the order of
    radix_sort / _radix_argsort: a stable sort by key is unique). The ranges still to sort are kept on a stack
    (disjoint, of 2 keys or more: at most n / 2) instead of C++'s recursion; each range is split, scattered
    and sorted by the same steps."""
    n = keys.shape[0]
    keys_tmp = np.empty_like(keys)
    order_tmp = np.empty_like(order)
    counts = np.empty((1 << MSD_BITS) + 1, np.int64)
    nxt = np.empty(1 << MSD_BITS, np.int64)
    stack = np.empty((n // 2 + 1, 2), np.int64)
    sp = 0
    if n > 1:
        stack[0, 0] = 0
        stack[0, 1] = n
        sp = 1
    while sp > 0:
        sp -= 1
        lo = stack[sp, 0]
        size = stack[sp, 1]
        if size <= MSD_SMALL:
            for i in range(lo + 1, lo + size):
                k = keys[i]
                o = order[i]
                j = i
                while j > lo and keys[j - 1] > k:
                    keys[j] = keys[j - 1]
                    order[j] = order[j - 1]
                    j -= 1
                keys[j] = k
                order[j] = o
            continue
        kmin = keys[lo]
        kmax = keys[lo]
        for i in range(lo + 1, lo + size):
            k = keys[i]
            kmin = k if k < kmin else kmin
            kmax = k if k > kmax else kmax
        if kmin == kmax:
            continue
        x = kmin ^ kmax
        varying = 0
        while x != np.uint64(0):
            x >>= np.uint64(1)
            varying += 1
        bits = 4
        while bits < MSD_BITS and (1 << (bits + 2)) < size:
            bits += 1
        shift = np.uint64(max(0, varying - bits))
        base = kmin >> shift
        n_buckets = np.int64((kmax >> shift) - base) + 1
        for b in range(n_buckets + 1):
            counts[b] = 0
        for i in range(lo, lo + size):
            counts[np.int64((keys[i] >> shift) - base) + 1] += 1
        for b in range(n_buckets):
            counts[b + 1] += counts[b]
        for b in range(n_buckets):
            nxt[b] = counts[b]
        for i in range(lo, lo + size):
            b = np.int64((keys[i] >> shift) - base)
            at = lo + nxt[b]
            nxt[b] += 1
            keys_tmp[at] = keys[i]
            order_tmp[at] = order[i]
        for i in range(lo, lo + size):
            keys[i] = keys_tmp[i]
            order[i] = order_tmp[i]
        for b in range(n_buckets):
            part = counts[b + 1] - counts[b]
            if part > 1:
                stack[sp, 0] = lo + counts[b]
                stack[sp, 1] = part
                sp += 1


RUNS_RATIO = 8  # kRunsRatio of pav.hpp
RUNS_BUCKETS = 8192  # kRunsBuckets of pav.hpp
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(**JIT)
def _runs_push(sum_w, sum_wy, mean, first_row, last_row, nb, sw, swy, first, last):
    """One pooled point onto the PAV stack of _isotonic_column_runs; returns the new stack size."""
    m = swy / sw
    while nb > 0 and mean[nb - 1] >= m:
        nb -= 1
        sw += sum_w[nb]
        swy += sum_wy[nb]
        m = swy / sw
        first = first_row[nb]
    sum_w[nb] = sw
    sum_wy[nb] = swy
    mean[nb] = m
    first_row[nb] = first
    last_row[nb] = last
    return nb + 1


@numba.njit(**JIT)
def _push_knots(xo, yo, count, first, last, value):
    """A PAV block's knots at xo[count:], yo[count:]: (first, value), and (last, value) when last != first;
    returns the new count."""
    xo[count] = first
    yo[count] = value
    count += 1
    if last != first:
        xo[count] = last
        yo[count] = value
        count += 1
    return count


@numba.njit(**JIT)
def _isotonic_column_runs(v, labels, positive, xo, yo):
    """isotonic_column_runs of pav.hpp (unweighted, one label rare): only the rare rows sorted, each common
    row counted into its run between two rare scores by the same table and fixed-length search, PAV over
    the pooled points; returns the map's length, or -1 when the rare label is not rare enough."""
    n = v.shape[0]
    n_pos = 0
    for i in range(n):
        n_pos += 1 if labels[i] == positive else 0
    rare_positive = n_pos <= n - n_pos
    n_rare = n_pos if rare_positive else n - n_pos
    if n_rare * RUNS_RATIO > n:
        return -1
    if n == 0:
        return 0
    keys_all = _sort_keys(v)
    keys = np.empty(max(n_rare, 1), np.uint64)
    rows = np.empty(max(n_rare, 1), np.int64)
    r = 0
    for i in range(n):
        if (labels[i] == positive) == rare_positive:
            keys[r] = keys_all[i]
            rows[r] = i
            r += 1
    _msd_sort(keys[:n_rare], rows[:n_rare])
    uk = np.empty(n_rare + 1, np.uint64)  # (+ the padding below, re-allocated)
    rare_count = np.zeros(n_rare + 1, np.int64)
    tie_count = np.zeros(n_rare + 1, np.int64)
    tie_first = np.empty(n_rare + 1, np.int64)
    tie_last = np.empty(n_rare + 1, np.int64)
    U = 0
    for j in range(n_rare):
        k = keys[j]
        row = rows[j]
        if U == 0 or uk[U - 1] != k:
            uk[U] = k
            tie_first[U] = row
            tie_last[U] = row
            U += 1
        rare_count[U - 1] += 1
        tie_first[U - 1] = min(tie_first[U - 1], row)
        tie_last[U - 1] = max(tie_last[U - 1], row)
    klo = uk[0] if U > 0 else np.uint64(0)
    khi = uk[U - 1] if U > 0 else np.uint64(0)
    shift = 0
    while ((khi - klo) >> np.uint64(shift)) >= np.uint64(RUNS_BUCKETS):
        shift += 1
    sh = np.uint64(shift)
    n_buckets = np.int64((khi - klo) >> sh) + 1
    table = np.empty(n_buckets + 1, np.int64)
    span = 1
    j = 0
    for bk in range(n_buckets + 1):
        while j < U and np.int64((uk[j] - klo) >> sh) < bk:
            j += 1
        table[bk] = j
        if bk > 0:
            span = max(span, j - table[bk - 1])
    pow2 = 1
    while pow2 < span:
        pow2 *= 2
    u = np.empty(U + pow2, np.uint64)
    for j in range(U):
        u[j] = uk[j]
    for j in range(U, U + pow2):
        u[j] = _ALL_ONES  # no score's key is all ones (NaN is refused)
    run_count = np.zeros(U + 1, np.int64)
    run_lo = np.zeros(U + 1, np.int64)
    run_hi = np.zeros(U + 1, np.int64)
    lo_key = np.full(U + 1, _ALL_ONES, np.uint64)
    hi_key = np.zeros(U + 1, np.uint64)
    for i in range(n):
        if (labels[i] == positive) == rare_positive:
            continue
        k = keys_all[i]
        kc = min(max(k, klo), khi)
        at = table[np.int64((kc - klo) >> sh)]
        step = pow2 // 2
        while step >= 1:
            at += step if u[at + step - 1] < k else 0
            step //= 2
        g = at + (1 if u[at] < k else 0)
        if u[g] == k:
            tie_count[g] += 1
            tie_first[g] = min(tie_first[g], i)
            tie_last[g] = max(tie_last[g], i)
        else:
            run_count[g] += 1
            if k < lo_key[g]:
                lo_key[g] = k
                run_lo[g] = i
            if k >= hi_key[g]:
                hi_key[g] = k
                run_hi[g] = i
    common_y = 0.0 if rare_positive else 1.0
    cap = 2 * U + 1
    sum_w = np.empty(cap)
    sum_wy = np.empty(cap)
    mean = np.empty(cap)
    first_row = np.empty(cap, np.int64)
    last_row = np.empty(cap, np.int64)
    nb = 0
    for g in range(U + 1):
        if run_count[g] > 0:
            c = float(run_count[g])
            nb = _runs_push(sum_w, sum_wy, mean, first_row, last_row, nb, c, c * common_y, run_lo[g], run_hi[g])
        if g < U:
            rare = float(rare_count[g])
            common = float(tie_count[g])
            nb = _runs_push(sum_w, sum_wy, mean, first_row, last_row, nb, rare + common,
                            rare if rare_positive else common, tie_first[g], tie_last[g])
    count = 0
    for b in range(nb):
        count = _push_knots(xo, yo, count, v[first_row[b]], v[last_row[b]], mean[b])
    return count


@numba.njit(**JIT)
def _isotonic_column(v, labels, positive, w, weighted, xo, yo):
    """isotonic_column of pav.hpp: the map of the scores v into xo, yo; returns its length."""
    n = v.shape[0]
    if not weighted:
        count = _isotonic_column_runs(v, labels, positive, xo, yo)
        if count >= 0:
            return count
    vals = np.empty(n)
    order = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if weighted and not (w[i] > 0.0):
            continue
        vals[m] = v[i]
        order[m] = i
        m += 1
    if m == 0:
        return 0
    order = order[:m]
    keys = _sort_keys(vals[:m])
    _msd_sort(keys, order)
    targets = np.empty(m)  # in sorted order, as the weights
    ws = np.empty(m if weighted else 1)
    for j in range(m):
        targets[j] = 1.0 if labels[order[j]] == positive else 0.0
        if weighted:
            ws[j] = w[order[j]]
    starts, values, _ = _pav(targets, ws, weighted, order, False, keys, True, True, vals)
    count = 0
    for b in range(values.shape[0]):
        count = _push_knots(xo, yo, count, v[order[starts[b]]], v[order[starts[b + 1] - 1]], values[b])
    return count


@numba.njit(parallel=True, **JIT)
def _isotonic_columns(s, table, labels, w, weighted, first_class, group, parallel):
    n, K = s.shape
    offsets = np.empty(K + 1, np.int64)
    offsets[0] = 0
    values = np.empty((group, n))  # a group's columns, copied out of the rows in one pass (ISOTONIC_GROUP)
    xbuf = np.empty((group, n))
    ybuf = np.empty((group, n))
    counts = np.empty(group, np.int64)
    cap = 1024
    out_x = np.empty(cap)
    out_y = np.empty(cap)
    total = 0
    for g0 in range(0, K, group):
        g = min(group, K - g0)
        for i in range(n):
            for j in range(g):
                values[j, i] = load(s[i, g0 + j], table)
        for j in numba.prange(g):
            counts[j] = _isotonic_column(values[j], labels, first_class + g0 + j, w, weighted, xbuf[j], ybuf[j])
        for j in range(g):
            c = counts[j]
            while total + c > cap:
                cap *= 2
                grown_x = np.empty(cap)
                grown_y = np.empty(cap)
                for t in range(total):
                    grown_x[t] = out_x[t]
                    grown_y[t] = out_y[t]
                out_x, out_y = grown_x, grown_y
            for t in range(c):
                out_x[total + t] = xbuf[j, t]
                out_y[total + t] = ybuf[j, t]
            total += c
            offsets[g0 + j + 1] = total
    x = np.empty(total)
    y = np.empty(total)
    for t in range(total):
        x[t] = out_x[t]
        y[t] = out_y[t]
    return x, y, offsets


@numba.njit(inline="always", **JIT)
def _bad_score(v, check):
    """Status code of a score under `check` (OK when it passes)."""
    if not is_finite(v):
        return SCORE_NOT_FINITE
    if check == CHECK_PROBABILITY and not (v >= -PROBABILITY_TOLERANCE and v <= 1.0 + PROBABILITY_TOLERANCE):
        return PROBABILITY_OUT_OF_RANGE
    return OK


@numba.njit(**JIT)
def _check_columns(s, table, check, st):
    """check_columns of pav.hpp: the first bad score in row-major order into st."""
    if check == CHECK_NONE:
        return
    for i in range(s.shape[0]):
        for k in range(s.shape[1]):
            v = load(s[i, k], table)
            code = _bad_score(v, check)
            if code != OK:
                merge_status(st, code, i, k, v)
                return


def _columns(scores, name="scores"):
    """(N, K) view of (N,) or (N, K) scores, float16 as raw bits (no copy)."""
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(scores).__name__}")
    check_float_dtype(scores, name)
    if scores.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (N,) or (N, K), got {scores.ndim}-D array")
    s = as_kernel_array(scores)
    return s[:, None] if s.ndim == 1 else s


def isotonic_fit_columns(scores, labels, sample_weight, first_class, check):
    """Same contract as ``calibkit._core.isotonic_fit_columns``."""
    s = _columns(scores)
    n, K = s.shape
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (n,):
        raise ValueError(f"labels must be a 1-D int64 array of length {n}")
    weighted = sample_weight is not None
    w = _float64_vector(sample_weight, "sample_weight", n) if weighted else np.empty(1)
    if check not in (CHECK_NONE, CHECK_FINITE, CHECK_PROBABILITY):
        raise ValueError(f"check must be in [0, 2], got {check}")
    st = new_status()
    _check_columns(s, HALF_TABLE, check, st)
    if st[0] != OK:
        empty = np.empty(0)
        return {"x": empty, "x_offsets": np.zeros(1, np.int64), "y": empty, "y_offsets": np.zeros(1, np.int64),
                "status": status_tuple(st)}
    parallel = n * K >= (1 << 16) and K > 1
    group = min(ISOTONIC_GROUP, K)
    x, y, offsets = run_locked(_isotonic_columns, s, HALF_TABLE, labels, w, weighted, int(first_class), group,
                               parallel)
    return {"x": x, "x_offsets": offsets, "y": y, "y_offsets": offsets.copy(), "status": status_tuple(st)}


@numba.njit(**JIT)
def _knot_edge(b):
    """knot_edge of pav.hpp: the lower edge of bucket b (powers of two times short fractions: exact)."""
    if b == 0:
        return 0.0
    q, r = divmod(b, KNOT_LOG_SUB)
    return math.ldexp(1.0 + r / KNOT_LOG_SUB, q - 40)


@numba.njit(**JIT)
def _knot_table(x, lo, m, tables, k):
    j = 0
    for b in range(KNOT_TABLE_SIZE + 1):
        edge = 1.0 if b == KNOT_TABLE_SIZE else _knot_edge(b)
        while j < m and x[lo + j] < edge:
            j += 1
        tables[k, b] = j


@numba.njit(inline="always", **JIT)
def _count_sorted(x, lo, m, v, right):
    """Number of the sorted knots x[lo:lo + m] < v (right False) or <= v (right True): count_sorted of
    pav.hpp (a binary search of all m knots)."""
    base = lo
    n = m
    while n > 1:
        half = n // 2
        if (x[base + half] <= v) if right else (x[base + half] < v):
            base += half
        n -= half
    if n == 1 and ((x[base] <= v) if right else (x[base] < v)):
        base += 1
    return base - lo


@numba.njit(inline="always", **JIT)
def _interp_at(x, y, slopes, lo, ly, m, c, v):
    """np.interp(v, xp, fp) by NumPy's arithmetic, xp = x[lo:lo + m], fp = y[ly:ly + m], slopes[lo + j] the
    slope of knot j; c = number of knots <= v (interp_at of pav.hpp)."""
    if m == 1 or c == 0:
        return y[ly]
    j = c - 1
    if j >= m - 1:
        return y[ly + m - 1]
    if x[lo + j] == v:
        return y[ly + j]
    slope = slopes[lo + j]
    y0 = y[ly + j]
    y1 = y[ly + j + 1]
    r = slope * (v - x[lo + j]) + y0
    # NaN (inf * 0) fallbacks as selects, not branches: the same values as interp_at's branches, and half the
    # time per value in Numba (a branch here, never taken, kept LLVM from overlapping the rows' searches)
    r2 = slope * (v - x[lo + j + 1]) + y1
    r2 = r2 if (r2 == r2 or y0 != y1) else y0
    return r if r == r else r2


@numba.njit(inline="always", **JIT)
def _pairwise_block(a, lo, n):
    """pairwise_sum of pav.hpp for n <= 128 (NumPy's order for a contiguous row)."""
    if n < 8:
        r = 0.0
        for i in range(n):
            r += a[lo + i]
        return r
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(**JIT)
def _pairwise_sum(a, lo, n):
    """pairwise_sum of pav.hpp (NumPy's order for a contiguous row), recursive above 128."""
    if n <= 128:
        return _pairwise_block(a, lo, n)
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, lo, n2) + _pairwise_sum(a, lo + n2, n - n2)


@numba.njit(inline="always", **JIT)
def _count_span(x, at, span, v, right):
    """Knots of x[at:at + span] before v (< v, or <= v when right), span a power of two (count_span /
    count_pow2 of pav.hpp: the same count as a full search, the knots past a bucket never counting)."""
    # comparisons added as integers (no branch on their outcome, as the C++ templates)
    if span <= 8:
        c = 0
        if right:
            for j in range(span):
                c += np.int64(x[at + j] <= v)
        else:
            for j in range(span):
                c += np.int64(x[at + j] < v)
        return c
    pos = 0
    step = span // 2
    while step >= 1:
        below = (x[at + pos + step - 1] <= v) if right else (x[at + pos + step - 1] < v)
        pos += step * np.int64(below)
        step //= 2
    below = (x[at + pos] <= v) if right else (x[at + pos] < v)
    return pos + np.int64(below)


STEP_BATCH = 32  # kStepBatch of pav.hpp


@numba.njit(**JIT)
def _map_columns(s, table, xs, xs_off, m_of, span_of, y, y_off, slopes, tables, g0, mode, check, out, begin, end, st):
    """The K models g0..g0 + K - 1 applied to rows [begin, end) of s, row i written into row i - begin of out
    (apply_column of pav.hpp: rows in batches of STEP_BATCH, first the values and their buckets' table entries,
    then the counts and the maps)."""
    K = s.shape[1]
    vb = np.empty(STEP_BATCH)
    ab = np.empty(STEP_BATCH, np.int64)
    for k in range(K):
        g = g0 + k
        lo = xs_off[g]
        ly = y_off[g]
        m = m_of[g]
        span = span_of[g]
        tab = tables[g]
        for i0 in range(begin, end, STEP_BATCH):
            n = min(STEP_BATCH, end - i0)
            for j in range(n):
                v = load(s[i0 + j, k], table)
                # knot_bucket of pav.hpp: the bits shifted (negative for a negative v, -0.0 and a negative NaN),
                # less the base (below 2**-40: bucket 0); outside [0, 1): a search of all knots (-1)
                t = f64_bits(v) >> KNOT_LOG_SHIFT
                b = max(t, KNOT_LOG_BASE) - KNOT_LOG_BASE
                inside = (t >= 0) & (b < KNOT_TABLE_SIZE)
                first = lo + np.int64(tab[b if inside else 0])  # the bucket's first knot in xs
                vb[j] = v
                ab[j] = first if inside else -1
            if check != CHECK_NONE:
                for j in range(n):
                    code = _bad_score(vb[j], check)
                    if code != OK:
                        merge_status(st, code, i0 + j, k, vb[j])
            # the mode (and a span of 1, histogram binning's) decided once per batch, not per value (the
            # templates of apply_column)
            if mode == STEP_INTERP:
                for j in range(n):
                    v = vb[j]
                    a = ab[j]
                    c = a - lo + _count_span(xs, a, span, v, True) if a >= 0 else _count_sorted(xs, lo, m, v, True)
                    out[i0 - begin + j, k] = _interp_at(xs, y, slopes, lo, ly, m, c, v)
            elif span == 1:
                for j in range(n):
                    v = vb[j]
                    a = ab[j]
                    c = a - lo + np.int64(xs[a] < v) if a >= 0 else _count_sorted(xs, lo, m, v, False)
                    out[i0 - begin + j, k] = y[ly + c]
            else:
                for j in range(n):
                    v = vb[j]
                    a = ab[j]
                    c = a - lo + _count_span(xs, a, span, v, False) if a >= 0 else _count_sorted(xs, lo, m, v, False)
                    out[i0 - begin + j, k] = y[ly + c]


SOFTMAX_PAD = 16  # kSoftmaxPad of pav.hpp


def _softmax_scratch(s):
    """The float32 scratch of _softmax_row for logits s (kernel array): none for float64 (softmax_scratch_size of
    pav.hpp; a buffer per chunk is made inside the kernels, of this length)."""
    return 0 if s.dtype == np.float64 else (s.shape[1] + SOFTMAX_PAD - 1) // SOFTMAX_PAD * SOFTMAX_PAD


@numba.njit(**JIT)
def _softmax_row(z, table, i, out, r, st, check, scratch):
    """softmax_row of pav.hpp: row i of the logits z -> its softmax in out[r], the first logit that is not finite
    named in st when check is not CHECK_NONE. float64 logits (an empty scratch): each difference and math.exp
    (the C library's exp, as std::exp) in float64; float32 / float16 logits: the values and their maximum in
    float32, the differences in float32 and exp_f32 (the bits of simd::exp_f32), widened to float64. Sums and
    divisions in float64."""
    K = z.shape[1]
    finite = True
    if scratch.shape[0] == 0:
        m = -np.inf
        for k in range(K):
            v = load(z[i, k], table)
            out[r, k] = v
            finite = finite and is_finite(v)
            m = v if v > m else m
        for k in range(K):
            out[r, k] = math.exp(out[r, k] - m)
    else:
        mf = np.float32(-np.inf)
        for k in range(K):
            v = np.float32(load(z[i, k], table))
            scratch[k] = v
            finite = finite and v - v == np.float32(0.0)
            mf = v if v > mf else mf
        for k in range(K):
            scratch[k] = exp_f32(scratch[k] - mf)
        for k in range(K):
            out[r, k] = scratch[k]
    if not finite and check != CHECK_NONE:
        for k in range(K):
            v = load(z[i, k], table)
            if not is_finite(v):
                merge_status(st, SCORE_NOT_FINITE, i, k, v)
                break
    flat = out.reshape(out.shape[0] * K)
    total = _pairwise_block(flat, r * K, K) if K <= 128 else _pairwise_sum(flat, r * K, K)
    for k in range(K):
        out[r, k] /= total


@numba.njit(**JIT)
def _apply_chunk(s, table, xs, xs_off, m_of, span_of, y, y_off, slopes, tables, modes, check, renormalise, outs,
                 begin, end, st, softmax, n_scratch):
    """The chunk [begin, end) of apply_columns of pav.hpp (step_chunk): with softmax, the chunk's softmax once
    into a scratch, then each set j of K models (models j K .. j K + K - 1 of the stacked arrays) mapped into a
    second scratch (the chunk's rows) and its rows renormalised from there into outs[j]; without
    renormalisation, mapped straight into outs[j]."""
    K = s.shape[1]
    n = end - begin
    q = np.empty((n if softmax else 0, K))
    scratch_rows = np.empty((n if renormalise else 0, K))
    if softmax:
        scratch = np.empty(n_scratch, np.float32)
        for i in range(begin, end):
            _softmax_row(s, table, i, q, i - begin, st, check, scratch)
    uniform = 1.0 / K
    flat = scratch_rows.reshape(scratch_rows.shape[0] * K)
    for j in range(outs.shape[0]):
        out = outs[j]
        mapped = scratch_rows if renormalise else out[begin:end]
        if softmax:
            _map_columns(q, table, xs, xs_off, m_of, span_of, y, y_off, slopes, tables, j * K, modes[j], CHECK_NONE,
                         mapped, 0, n, st)
        else:  # the same scores for every set: checked once
            _map_columns(s, table, xs, xs_off, m_of, span_of, y, y_off, slopes, tables, j * K, modes[j],
                         check if j == 0 else CHECK_NONE, mapped, begin, end, st)
        if not renormalise:
            continue
        for i in range(n):
            total = _pairwise_block(flat, i * K, K) if K <= 128 else _pairwise_sum(flat, i * K, K)
            if total > 0.0:
                for k in range(K):
                    out[begin + i, k] = mapped[i, k] / total
            else:
                for k in range(K):
                    out[begin + i, k] = uniform


@numba.njit(parallel=True, **JIT)
def _softmax_rows(z, table, out, chunk, parallel, n_scratch):
    """softmax_rows of pav.hpp: the statuses of the row chunks."""
    N = z.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    statuses = np.empty((n_chunks, 4))
    for c in numba.prange(n_chunks):
        statuses[c, 0] = OK
        statuses[c, 1] = -1.0
        statuses[c, 2] = -1.0
        statuses[c, 3] = 0.0
        scratch = np.empty(n_scratch, np.float32)
        for i in range(c * chunk, min(N, (c + 1) * chunk)):
            _softmax_row(z, table, i, out, i, statuses[c], CHECK_FINITE, scratch)
    return statuses


@numba.njit(parallel=True, **JIT)
def _build_tables(x, x_off, y, y_off, mode, K, parallel):
    """step_tables of pav.hpp: the bucket tables, each model's span, its knots padded with span copies of +inf,
    and np.interp's slopes."""
    tables = np.empty((K, KNOT_TABLE_SIZE + 1), np.int64)
    m_of = np.empty(K, np.int64)
    span_of = np.empty(K, np.int64)
    for k in numba.prange(K):
        mk = x_off[k + 1] - x_off[k]
        _knot_table(x, x_off[k], mk, tables, k)
        widest = 0
        for b in range(KNOT_TABLE_SIZE):
            widest = max(widest, tables[k, b + 1] - tables[k, b])
        span = 1 if widest > 0 else 0
        while span < widest:
            span *= 2
        m_of[k] = mk
        span_of[k] = span
    xs_off = np.empty(K + 1, np.int64)
    xs_off[0] = 0
    for k in range(K):
        xs_off[k + 1] = xs_off[k] + m_of[k] + span_of[k]
    xs = np.full(xs_off[K], np.inf)
    slopes = np.zeros(xs_off[K])
    for k in range(K):
        lo = xs_off[k]
        for j in range(m_of[k]):
            xs[lo + j] = x[x_off[k] + j]
        if mode == STEP_INTERP:
            for j in range(m_of[k] - 1):
                jy = y_off[k] + j
                slopes[lo + j] = (y[jy + 1] - y[jy]) / (xs[lo + j + 1] - xs[lo + j])
    return tables, m_of, span_of, xs, xs_off, slopes


@numba.njit(parallel=True, **JIT)
def _step_apply(s, table, xs, xs_off, m_of, span_of, y, y_off, slopes, tables, modes, check, renormalise, outs,
                chunk, parallel, softmax, n_scratch):
    """apply_columns of pav.hpp over the stacked sets of models: the statuses of the row chunks."""
    N = s.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    statuses = np.empty((n_chunks, 4))
    for c in numba.prange(n_chunks):
        statuses[c, 0] = OK
        statuses[c, 1] = -1.0
        statuses[c, 2] = -1.0
        statuses[c, 3] = 0.0
        _apply_chunk(s, table, xs, xs_off, m_of, span_of, y, y_off, slopes, tables, modes, check, renormalise, outs,
                     c * chunk, min(N, (c + 1) * chunk), statuses[c], softmax, n_scratch)
    return statuses


class StepTables:
    """The K step functions of :func:`step_apply` (same arguments, same checks), prepared once: the twin of
    ``calibkit._core.StepTables``. Its arrays are private copies."""

    __slots__ = ("mode", "n_models", "_arrays")

    def __init__(self, x, x_offsets, y, y_offsets, mode):
        if mode not in (STEP_INTERP, STEP_LEFT):
            raise ValueError(f"mode must be in [0, 1], got {mode}")
        if not isinstance(x_offsets, np.ndarray) or x_offsets.ndim != 1 or x_offsets.shape[0] < 2:
            raise ValueError(f"x_offsets must be a 1-D array of K + 1 >= 2 offsets, got shape {np.shape(x_offsets)}")
        self.mode, self.n_models = int(mode), x_offsets.shape[0] - 1
        self._arrays = _checked_models(x, x_offsets, y, y_offsets, mode, self.n_models)


def _checked_models(x, x_offsets, y, y_offsets, mode, K):
    for name, a in (("x", x), ("y", y)):
        if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous 1-D float64 array")
    for name, o, size in (("x_offsets", x_offsets, x.shape[0]), ("y_offsets", y_offsets, y.shape[0])):
        if not isinstance(o, np.ndarray) or o.dtype != np.int64 or o.shape != (K + 1,) or o[0] != 0 \
                or o[-1] != size or (np.diff(o) < 0).any():
            raise ValueError(f"{name} must be {K + 1} non-decreasing int64 offsets from 0 to {size}")
    mx, my = np.diff(x_offsets), np.diff(y_offsets)
    ok = ((mx >= 1) & (my == mx)) if mode == STEP_INTERP else (my == mx + 1)
    if not ok.all():
        k = int(np.argmin(ok))
        raise ValueError(f"model {k} has {int(mx[k])} x and {int(my[k])} y values; mode {mode} needs "
                         + ("as many y as x (at least 1)" if mode == STEP_INTERP else "one y more than x"))
    unsorted = ~(x[1:] >= x[:-1])
    inside = np.ones(x.shape[0], bool)
    inside[x_offsets[:-1]] = False  # a model's first knot is not compared with the previous model's last
    if (unsorted & inside[1:]).any():
        j = int(np.argmax(unsorted & inside[1:])) + 1
        raise ValueError(f"x[{j}] is below x[{j - 1}]: the knots of each model must be sorted")
    tables, m_of, span_of, xs, xs_off, slopes = run_locked(_build_tables, x, x_offsets, y, y_offsets, int(mode), K,
                                                                K * KNOT_TABLE_SIZE >= (1 << 16))
    if K > 0 and m_of.max() <= 65535:
        tables = tables.astype(np.uint16)  # the narrow tables of step_tables (pav.hpp)
    return xs, xs_off, m_of, span_of, np.array(y), np.array(y_offsets), slopes, tables


def _checked_out(scores, out, N, K, renormalise):
    if renormalise and scores.ndim != 2:
        raise ValueError("renormalise needs scores of shape (N, K)")
    shape = (N, K) if scores.ndim == 2 else (N,)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != shape \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float64 array of shape {shape}")
    if np.shares_memory(out, scores) and not (out is scores or (out.ctypes.data == scores.ctypes.data
                                                                  and scores.dtype == np.float64
                                                                  and scores.flags.c_contiguous)):
        raise ValueError("out overlaps scores: it must be scores itself or separate memory")
    return out.reshape(N, K)


def _first_status(statuses):
    bad = statuses[statuses[:, 0] != OK]
    if bad.shape[0] == 0:
        return (OK, -1, -1, 0.0)
    return status_tuple(bad[np.lexsort((bad[:, 2], bad[:, 1]))[0]])


def _chunk_rows(K):
    return max(16, (1 << 14) // max(K, 1))  # step_chunk_rows of pav.hpp


STEP_APPLY_ROWS = 128  # kStepApplyRows of pav.hpp
STEP_APPLY_VALUES = 1 << 18  # kStepApplyValues of pav.hpp


def _apply_rows(K):
    return max(_chunk_rows(K), min(STEP_APPLY_ROWS, STEP_APPLY_VALUES // max(K, 1)))  # step_apply_rows of pav.hpp


def _stacked(sets):
    """The arrays of several StepTables (each `_arrays`) as those of one: set j's models are models
    j K .. j K + K - 1, offsets into the concatenated knots and values (wide tables if any set has them)."""
    if len(sets) == 1:
        return sets[0]
    xs, xs_off, m_of, span_of, y, y_off, slopes, tables = (list(a) for a in zip(*sets))
    for j in range(1, len(sets)):
        xs_off[j] = xs_off[j][1:] + xs_off[j - 1][-1]
        y_off[j] = y_off[j][1:] + y_off[j - 1][-1]
    wide = np.int64 if len({t.dtype for t in tables}) > 1 else tables[0].dtype
    return (np.concatenate(xs), np.concatenate(xs_off), np.concatenate(m_of), np.concatenate(span_of),
            np.concatenate(y), np.concatenate(y_off), np.concatenate(slopes),
            np.concatenate([t.astype(wide, copy=False) for t in tables]))


def _apply_tables(s, arrays, modes, check, renormalise, outs, softmax):
    """Apply stacked StepTables arrays (`_stacked`; `modes` the sets' modes) to the (N, K) view s, set j into
    the C-ordered (N, K) outs[j] of the (n_sets, N, K) outs."""
    N, K = s.shape
    parallel = N * K * outs.shape[0] >= (1 << 16)
    statuses = run_locked(_step_apply, s, HALF_TABLE, *arrays, np.array(modes, np.int64), int(check),
                          bool(renormalise), outs, _apply_rows(K), parallel, bool(softmax),
                          _softmax_scratch(s) if softmax else 0)
    return _first_status(statuses)


def _check_softmax(scores, check, softmax):
    if not isinstance(softmax, bool):
        raise TypeError(f"softmax must be a bool, got {type(softmax).__name__}")
    if softmax and scores.ndim != 2:
        raise ValueError(f"softmax needs logits of shape (N, K), got {scores.ndim}-D array")
    if softmax and check == CHECK_PROBABILITY:
        raise ValueError("check = 2 (probabilities) does not apply to logits")


def step_apply(scores, x, x_offsets, y, y_offsets, mode, check, renormalise, out, softmax=False):
    """Same contract as ``calibkit._core.step_apply``."""
    s = _columns(scores)
    N, K = s.shape
    if mode not in (STEP_INTERP, STEP_LEFT) or check not in (CHECK_NONE, CHECK_FINITE, CHECK_PROBABILITY):
        raise ValueError(f"mode must be in [0, 1] and check in [0, 2], got {mode} and {check}")
    _check_softmax(scores, check, softmax)
    tables = _checked_models(x, x_offsets, y, y_offsets, mode, K)
    out2 = _checked_out(scores, out, N, K, renormalise)
    return _apply_tables(s, tables, [int(mode)], check, renormalise, out2[None], softmax)


def step_apply_tables(scores, tables, check, renormalise, out, softmax=False):
    """Same contract as ``calibkit._core.step_apply_tables``."""
    s = _columns(scores)
    N, K = s.shape
    if check not in (CHECK_NONE, CHECK_FINITE, CHECK_PROBABILITY):
        raise ValueError(f"check must be in [0, 2], got {check}")
    _check_softmax(scores, check, softmax)
    if not isinstance(tables, StepTables):
        raise TypeError(f"tables must be StepTables, got {type(tables).__name__}")
    if K != tables.n_models:
        raise ValueError(f"scores have {K} columns but the tables hold {tables.n_models} models")
    out2 = _checked_out(scores, out, N, K, renormalise)
    return _apply_tables(s, tables._arrays, [tables.mode], check, renormalise, out2[None], softmax)


MAX_SETS = 16  # kMaxSets of bind_isotonic.cpp
_last_stack = [((), None)]  # (tables, their stacked arrays) of the last step_apply_many call: one swap


def step_apply_many(scores, tables, check, renormalise, out, softmax=False):
    """Same contract as ``calibkit._core.step_apply_many``."""
    s = _columns(scores)
    N, K = s.shape
    if check not in (CHECK_NONE, CHECK_FINITE, CHECK_PROBABILITY):
        raise ValueError(f"check must be in [0, 2], got {check}")
    _check_softmax(scores, check, softmax)
    if renormalise and scores.ndim != 2:
        raise ValueError("renormalise needs scores of shape (N, K)")
    tables = tuple(tables)
    if not 1 <= len(tables) <= MAX_SETS:
        raise ValueError(f"tables must hold 1 to {MAX_SETS} StepTables, got {len(tables)}")
    for j, t in enumerate(tables):
        if not isinstance(t, StepTables):
            raise TypeError(f"tables[{j}] must be StepTables, got {type(t).__name__}")
        if K != t.n_models:
            raise ValueError(f"scores have {K} columns but tables[{j}] holds {t.n_models} models")
    shape = (len(tables), N, K)
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != shape \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float64 array of shape {shape}")
    if N > 0 and np.shares_memory(out, scores):
        raise ValueError("out overlaps scores: it must be separate memory")
    held, arrays = _last_stack[0]
    if not (len(held) == len(tables) and all(a is b for a, b in zip(held, tables))):
        arrays = _stacked([t._arrays for t in tables])  # once per pass of the report
        _last_stack[0] = (tables, arrays)
    return _apply_tables(s, arrays, [t.mode for t in tables], check, renormalise, out, softmax)


def softmax_into(scores, out):
    """Same contract as ``calibkit._core.softmax_into``."""
    s = _columns(scores)
    N, K = s.shape
    _check_softmax(scores, CHECK_FINITE, True)
    out2 = _checked_out(scores, out, N, K, False)
    statuses = run_locked(_softmax_rows, s, HALF_TABLE, out2, _chunk_rows(K), N * K >= (1 << 16),
                          _softmax_scratch(s))
    return _first_status(statuses)


# -- one-vs-rest histogram binning fit -----------------------------------------------------------------------

HISTOGRAM_CHUNK = 1 << 15  # rows per chunk: kHistogramChunk of pav.hpp (binary_stats' chunk)


@numba.njit(inline="always", **JIT)
def _count_below(e, lo, n, v):
    """Number of e[lo:lo + n] < v (sorted): count_sorted<false> of pav.hpp."""
    base = lo
    while n > 1:
        half = n // 2
        if e[base + half] < v:
            base += half
        n -= half
    if n == 1 and e[base] < v:
        base += 1
    return base - lo


@numba.njit(**JIT)
def _histogram_chunk(s, table, labels, w, weighted, edges, first_class, begin, end, pw, ph):
    K = s.shape[1]
    n_bins = edges.shape[1] - 1
    for i in range(begin, end):
        wi = w[i] if weighted else 1.0
        positive = labels[i] - first_class
        for k in range(K):
            b = 0 if n_bins <= 1 else _count_below(edges[k], 1, n_bins - 1, load(s[i, k], table))
            pw[k, b] += wi
            ph[k, b] += wi * (1.0 if k == positive else 0.0)


@numba.njit(parallel=True, **JIT)
def _histogram_columns(s, table, labels, w, weighted, edges, first_class, group, parallel):
    N, K = s.shape
    n_bins = edges.shape[1] - 1
    weight = np.zeros((K, n_bins))
    hits = np.zeros((K, n_bins))
    pw = np.empty((group, K, n_bins))
    ph = np.empty((group, K, n_bins))
    n_chunks = (N + HISTOGRAM_CHUNK - 1) // HISTOGRAM_CHUNK
    for first in range(0, n_chunks, group):
        count = min(group, n_chunks - first)
        for j in numba.prange(count):
            pw[j] = 0.0
            ph[j] = 0.0
            c = first + j
            _histogram_chunk(s, table, labels, w, weighted, edges, first_class, c * HISTOGRAM_CHUNK,
                             min(N, (c + 1) * HISTOGRAM_CHUNK), pw[j], ph[j])
        for j in range(count):  # in chunk order
            for k in range(K):
                for b in range(n_bins):
                    weight[k, b] += pw[j, k, b]
                    hits[k, b] += ph[j, k, b]
    return weight, hits


def histogram_fit_columns(scores, labels, sample_weight, edges, first_class):
    """Same contract as ``calibkit._core.histogram_fit_columns``."""
    s = _columns(scores)
    n, K = s.shape
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (n,):
        raise ValueError(f"labels must be a 1-D int64 array of length {n}")
    weighted = sample_weight is not None
    w = _float64_vector(sample_weight, "sample_weight", n) if weighted else np.empty(1)
    if not isinstance(edges, np.ndarray) or edges.dtype != np.float64 or edges.ndim != 2 or edges.shape[0] != K \
            or edges.shape[1] < 2 or not edges.flags.c_contiguous:
        raise ValueError(f"edges must be a C-contiguous (K, n_bins + 1) float64 array with K = {K} and n_bins >= 1, "
                         f"got shape {np.shape(edges)}")
    n_bins = edges.shape[1] - 1
    if K * n_bins > (1 << 26):
        raise ValueError(f"K * n_bins = {K * n_bins} is above 2**26")
    bad = ~(edges[:, 1:] >= edges[:, :-1])
    if bad.any():
        k, j = np.unravel_index(int(np.argmax(bad)), bad.shape)
        raise ValueError(f"edges[{k}, {j + 1}] is below edges[{k}, {j}]: edges must be sorted")
    # partial sums of at most ~2**22 values in flight (chunks summed in chunk order whatever the group)
    group = int(max(1, min(16, (1 << 22) // (2 * K * n_bins))))
    weight, hits = run_locked(_histogram_columns, s, HALF_TABLE, labels, w, weighted, edges, int(first_class), group,
                              n * K >= (1 << 16))
    return {"weight": weight, "hits": hits}
