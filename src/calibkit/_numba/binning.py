"""Numba twin of cpp/include/calibkit/binning.hpp (same names, same algorithm).

See binning.hpp for the bin convention: bin(c) = #{inner edges strictly below c}.
Chunks and the order partials are folded in match the C++ kernels exactly.
"""

from __future__ import annotations

import math

import numba
from numba.extending import overload
import numpy as np

from ._common import (
    JIT,
    LABEL_OUT_OF_RANGE,
    LANE_FLUSH,
    MAX_VECTOR_EDGES,
    SHORT_SCAN_ROWS,
    MIN_PARALLEL_ELEMENTS,
    PROBABILITY_OUT_OF_RANGE,
    PROBABILITY_TOLERANCE,
    SCORE_NOT_FINITE,
    WEIGHT_NEGATIVE,
    WEIGHT_NOT_FINITE,
    CHUNK_ELEMENTS,
    DENSE_ROWS,
    F32,
    HALF_TABLE,
    as_kernel_array,
    check_float_dtype,
    classwise_octets_f32,
    dense_lanes_f32,
    exp_f32,
    exp_lane_sums_f32,
    exp_nonpositive,
    group_size,
    is_finite,
    lane_find_f32,
    load,
    log_positive,
    merge_status,
    next_ticket,
    nll_lanes,
    octet_sum,
    plain_scan8,
    prefetch,
    prefetch_for_read,
    prefetch_for_write,
    prob_row_lanes,
    prob_row_lanes_ok,
    rows_per_chunk,
    run_locked,
    short_scan8,
    specialised,
    status_tuple,
    valid_probability,
)
from .uncertainty import _load_f, _max_f

# Totals slots, as in binning.hpp's Totals.
T_COUNT, T_WEIGHT, T_CORRECT, T_CONF, T_BRIER, T_NLL = range(6)


def equal_width_inner(n_bins):
    return np.arange(1, n_bins, dtype=np.float64) / np.float64(n_bins)


@numba.njit(inline="always", **JIT)
def find_bin(c, inner, uniform):
    n_inner = inner.shape[0]
    if n_inner <= 0:
        return 0
    if uniform:
        # floor(c M) by truncation of the clamped product (no libm call), settled against the edges
        guess = min(max(c * (n_inner + 1), 0.0), float(n_inner))
        m = int(guess)
        while m > 0 and not (inner[m - 1] < c):
            m -= 1
        while m < n_inner and inner[m] < c:
            m += 1
        return m
    return np.searchsorted(inner, c)  # side="left" == std::lower_bound


@numba.njit(inline="always", **JIT)
def check_weight(w, i, st):
    if not is_finite(w):
        merge_status(st, WEIGHT_NOT_FINITE, i, -1, w)
        return False
    if w < 0:
        merge_status(st, WEIGHT_NEGATIVE, i, -1, w)
        return False
    return True


TOTAL_LANES = 8  # kTotalLanes: the interleaved partial sums of a short-row chunk's totals


@numba.njit(inline="always", **JIT)
def _fold_lanes(lane):
    """binning.hpp's fold_lanes: the TOTAL_LANES partial sums in a fixed order."""
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))


SHORT_ROW = 16  # kShortRow: shorter probability rows take the short-row path; shorter logit rows the double one
FLUSH = LANE_FLUSH  # elements per flush of the float partial sums (kRowFlushOctets octets in binning.hpp)


@numba.njit(**JIT)
def _logit_row_f(scores, i, y, with_nll, inv_t, table, st, out, row_out, with_sq=True):
    """Float32 / float16 logits (binning.hpp, summarize_logit_row_f): the maximum and finiteness check, the
    first index of the maximum, then e_k = exp_f32(b (z_k - max)) in float into row_out (a float32 buffer of
    a multiple of 8 elements, the padding set to 0), element k in lane k % 8, float partial sums flushed into
    double lanes every FLUSH elements. Same bits as the C++ kernel."""
    # The next row's lines are requested first (as the C++ row loop does during its exps): it then comes from
    # cache, and its memory traffic overlaps this row's work. A prefetch never faults, whatever the layout.
    if i + 1 < scores.shape[0]:
        following = scores[i + 1]
        for k in range(0, scores.shape[1], 64 // scores.itemsize):
            prefetch_for_read(following, k)
    # Read 1: the row into the float buffer, then its maximum and NaN / inf count on <8 x float> lanes (the
    # maximum is exact in any order).
    _load_f(scores, i, table, row_out)
    return _logit_row_f_loaded(scores, i, y, with_nll, inv_t, table, st, out, row_out, with_sq)


@numba.njit(**JIT)
def _logit_row_f_loaded(scores, i, y, with_nll, inv_t, table, st, out, row_out, with_sq=True):
    """_logit_row_f on a row already in row_out (its K values as float32; padding to a multiple of 8).
    with_sq=False: the sum of squares is not computed (out[3] = 0; the total is the same sum)."""
    K = scores.shape[1]
    best, bad = _max_f(row_out, K, False)
    if bad != 0:
        for k in range(K):
            v = load(scores[i, k], table)
            if not is_finite(v):
                merge_status(st, SCORE_NOT_FINITE, i, k, v)
                return False
    arg = lane_find_f32(row_out, K - K % 8, best)  # the first octet holding the maximum, then its element
    while row_out[arg] != best:
        arg += 1
    z_label = row_out[y]
    bf = F32(inv_t)
    # The exps in place (padding 0) and their float lane sums of e and e^2 (element k in lane k % 8, flushed
    # into double lanes every FLUSH elements, octet_sum's order) in one vector loop (exp_lane_sums_f32). b = 1
    # multiplies exactly: that loop skips the product.
    sum_sq = 0.0
    if inv_t == 1.0:
        if with_sq:
            total, sum_sq = exp_lane_sums_f32(row_out, K, best, bf, False, 2)
        else:
            (total,) = exp_lane_sums_f32(row_out, K, best, bf, False, 1)
    elif with_sq:
        total, sum_sq = exp_lane_sums_f32(row_out, K, best, bf, True, 2)
    else:
        (total,) = exp_lane_sums_f32(row_out, K, best, bf, True, 1)
    _logit_row_out(arg, best, z_label, total, sum_sq, bf, inv_t, with_nll, out)
    return True


@numba.njit(inline="always", **JIT)
def _logit_row_out(arg, best, z_label, total, sum_sq, bf, inv_t, with_nll, out):
    """out = [argmax, confidence, p_label, sum p^2, nll] of a float logit row from its maximum `best`, the
    label's logit, and its sums of e_k and e_k^2 (summarize_logit_row_f's last step)."""
    out[0] = arg
    out[1] = 1.0 / total
    out[2] = np.float64(exp_f32(bf * (z_label - best))) / total
    out[3] = sum_sq / (total * total)
    out[4] = math.log(total) - inv_t * (np.float64(z_label) - np.float64(best)) if with_nll else 0.0


# Values of a row summary (`out` of _summarize_row / _logit_row_d): the five results [argmax, confidence,
# p_label, sum p^2, nll], then 2 x 8 lane sums of the double-precision logit path (scratch).
ROW_VALUES = 21


@numba.njit(**JIT)
def _summarize_row(scores, i, y, from_logits, nll_eps, with_nll, inv_t, table, st, out, store, row_out):
    """Fill out = [argmax, confidence, p_label, sum_sq, nll] (out holds ROW_VALUES values); False on bad data.
    Logits: row_out[k] (K values or more) gets e^{b(z_k - max)} (b = inv_t), the sums in octets
    (summarize_logit_row of binning.hpp, as summarize_row computes them for any K); probabilities: with
    `store`, row_out[k] gets p_k."""
    if from_logits:
        return _logit_row_d(scores, i, y, with_nll, inv_t, table, st, out, row_out, True)
    return _long_prob_row(scores, i, y, nll_eps, with_nll, table, st, out, store, row_out)


@numba.njit(**JIT)
def _logit_row_d(scores, i, y, with_nll, inv_t, table, st, out, row_out, octets):
    """A logit row in double precision: e_k = exp_nonpositive(b (z_k - max)) (b = inv_t) into row_out (K values
    or more), the row's maximum and its first index, confidence 1 / sum e, p_label, sum p^2 and the NLL
    log(sum e) - b (z_y - max), into out (ROW_VALUES values; out[5:21] hold the lane sums). octets: the sums as
    summarize_logit_row of binning.hpp adds them (element k of the whole octets in lane k % 8; for K % 8 != 0
    the last octet is the one ending at K, lane l element K - 8 + l, or for K < 8 the row itself, its lanes
    already counted or past K adding exp_nonpositive(-inf) and its square, as the C++ kernel's masked lanes;
    lanes combined by octet_sum); otherwise in column order, as summarize_short_rows adds a row of
    K < kShortRow in its lane. The same operations as the C++ kernel, so the same bits. The exps are one plain
    loop (LLVM vectorises it), the lane sums a second one over row_out."""
    K = scores.shape[1]
    best = load(scores[i, 0], table)
    arg = 0
    finite = True
    for k in range(K):
        v = load(scores[i, k], table)
        finite &= is_finite(v)
        if v > best:
            best = v
            arg = k
    if not finite:
        for k in range(K):
            v = load(scores[i, k], table)
            if not is_finite(v):
                merge_status(st, SCORE_NOT_FINITE, i, k, v)
                return False
    b = inv_t
    for k in range(K):
        row_out[k] = exp_nonpositive(b * (load(scores[i, k], table) - best))
    if octets:
        for j in range(16):
            out[5 + j] = 0.0
        full = K - K % 8
        for k0 in range(0, full, 8):
            for j in range(8):
                e = row_out[k0 + j]
                out[5 + j] += e
                out[13 + j] += e * e
        if full < K:
            start = K - 8 if K >= 8 else 0
            first = 8 - K % 8 if K >= 8 else 0
            last = 8 if K >= 8 else K
            for j in range(8):
                e = row_out[start + j] if j >= first and j < last else exp_nonpositive(-np.inf)
                out[5 + j] += e
                out[13 + j] += e * e
        total = octet_sum(out[5:13])
        total_sq = octet_sum(out[13:21])
    else:
        total = 0.0
        total_sq = 0.0
        for k in range(K):
            e = row_out[k]
            total += e
            total_sq += e * e
    shifted = b * (load(scores[i, y], table) - best)
    out[0] = arg
    out[1] = 1.0 / total
    out[2] = exp_nonpositive(shifted) / total
    out[3] = total_sq / (total * total)
    out[4] = math.log(total) - shifted if with_nll else 0.0
    return True


@numba.njit(inline="always", **JIT)
def _prob_lane(v, s, m, n):
    """One element v into its lane (_prob_lanes_scalar): the lane's sum of squares s, its maximum m (v > m: a
    lane keeps its first maximum, NaN never replaces it) and its minimum n (NaN never replaces it either)."""
    return s + v * v, v if v > m else m, v if v < n else n


@numba.njit(**JIT)
def _prob_lanes_scalar(scores, i, table):
    """prob_row_lanes (_common.py) of row i of any probability matrix (float16 read through `table`, any
    strides, any K >= 1; for K < 8 the lanes from K on are padding), in scalars without branches, and without
    the columns of the maxima (-1: the caller finds the first column holding the maximum)."""
    K = scores.shape[1]
    full = K - K % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = -np.inf
    n0 = n1 = n2 = n3 = n4 = n5 = n6 = n7 = np.inf
    for k in range(0, full, 8):
        u = np.uint64(k)  # unsigned: no negative-index wraparound on each read
        v0 = load(scores[i, u], table)
        v1 = load(scores[i, u + np.uint64(1)], table)
        v2 = load(scores[i, u + np.uint64(2)], table)
        v3 = load(scores[i, u + np.uint64(3)], table)
        v4 = load(scores[i, u + np.uint64(4)], table)
        v5 = load(scores[i, u + np.uint64(5)], table)
        v6 = load(scores[i, u + np.uint64(6)], table)
        v7 = load(scores[i, u + np.uint64(7)], table)
        s0, m0, n0 = _prob_lane(v0, s0, m0, n0)
        s1, m1, n1 = _prob_lane(v1, s1, m1, n1)
        s2, m2, n2 = _prob_lane(v2, s2, m2, n2)
        s3, m3, n3 = _prob_lane(v3, s3, m3, n3)
        s4, m4, n4 = _prob_lane(v4, s4, m4, n4)
        s5, m5, n5 = _prob_lane(v5, s5, m5, n5)
        s6, m6, n6 = _prob_lane(v6, s6, m6, n6)
        s7, m7, n7 = _prob_lane(v7, s7, m7, n7)
    if full < K:
        t = K - 8 if K >= 8 else 0
        first = 8 - K % 8 if K >= 8 else 0
        last = 8 if K >= 8 else K
        if first <= 0 < last:
            s0, m0, n0 = _prob_lane(load(scores[i, t], table), s0, m0, n0)
        if first <= 1 < last:
            s1, m1, n1 = _prob_lane(load(scores[i, t + 1], table), s1, m1, n1)
        if first <= 2 < last:
            s2, m2, n2 = _prob_lane(load(scores[i, t + 2], table), s2, m2, n2)
        if first <= 3 < last:
            s3, m3, n3 = _prob_lane(load(scores[i, t + 3], table), s3, m3, n3)
        if first <= 4 < last:
            s4, m4, n4 = _prob_lane(load(scores[i, t + 4], table), s4, m4, n4)
        if first <= 5 < last:
            s5, m5, n5 = _prob_lane(load(scores[i, t + 5], table), s5, m5, n5)
        if first <= 6 < last:
            s6, m6, n6 = _prob_lane(load(scores[i, t + 6], table), s6, m6, n6)
        if first <= 7 < last:
            s7, m7, n7 = _prob_lane(load(scores[i, t + 7], table), s7, m7, n7)
    return (s0, s1, s2, s3, s4, s5, s6, s7,
            m0, m1, m2, m3, m4, m5, m6, m7,
            n0, n1, n2, n3, n4, n5, n6, n7,
            -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0)


def _prob_lanes(scores, i, table):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(_prob_lanes)
def _prob_lanes_overload(scores, i, table):
    """The lanes of row i of a probability matrix: prob_row_lanes (vectors) where it reads the matrix type
    and K >= 8, else _prob_lanes_scalar. The same values either way (the columns only from the vectors)."""
    if prob_row_lanes_ok(scores):
        return lambda scores, i, table: (prob_row_lanes(scores, i) if scores.shape[1] >= 8 else
                                         _prob_lanes_scalar(scores, i, table))
    return lambda scores, i, table: _prob_lanes_scalar(scores, i, table)


@numba.njit(**JIT)
def _long_prob_row(scores, i, y, nll_eps, with_nll, table, st, out, store, row_out):
    """_summarize_row of a probability row of K >= SHORT_ROW elements, as binning.hpp's summarize_prob_row
    computes it: in octets, element k of the whole octets in lane k % 8; for K % 8 != 0 the last octet is the
    one ending at K (lane j: element K - 8 + j), and its lanes already counted add nothing (for K < 8, as
    smooth_grid reads any row here: the row itself, lanes from K on padding). sum p^2 is the lanes' sums of
    squares in octet_sum's order, the maximum the largest lane maximum (lanes in order, LaneMax::best), the
    argmax its first column (LaneMax::first_index: the smallest column of the lanes holding it). The same
    operations as the C++ kernel, so the same bits; a sum in column order differs from it in the last bits.
    The row is good when every element is in [-tol, 1 + tol]: the lanes' minima and maxima are, and no sum of
    squares is NaN. With `store`, row_out[k] gets p_k. A row with a bad element goes to _prob_row, which names
    the first one."""
    K = scores.shape[1]
    lanes = _prob_lanes(scores, i, table)
    best = -np.inf
    low = np.inf
    for j in range(8):
        m = lanes[8 + j]
        n = lanes[16 + j]
        best = m if m > best else best
        low = n if n < low else low
    sum_sq = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
    if not (low >= _PROB_LO and best <= _PROB_HI and sum_sq == sum_sq):  # sum_sq is NaN with a NaN element
        return _prob_row(scores, i, y, table, st, out, False, row_out)  # names the first bad element
    if lanes[24] >= 0.0:
        arg = K
        for j in range(8):
            a = int(lanes[24 + j])
            arg = a if lanes[8 + j] == best and a < arg else arg
    else:
        arg = 0
        while arg < K - 1 and load(scores[i, arg], table) != best:  # the first column holding the maximum
            arg += 1
    if store:
        for k in range(K):
            row_out[k] = load(scores[i, k], table)
    out[0] = arg
    out[1] = best
    out[2] = load(scores[i, y], table)
    out[3] = sum_sq
    out[4] = -math.log(max(out[2], nll_eps)) if with_nll else 0.0
    return True


@numba.njit(inline="always", **JIT)
def _prob_row(scores, i, y, table, st, out, store, row_out):
    """One read of a probability row: out[0:4] = [argmax, max, p_label, sum p^2] in column order, with the
    [0, 1] check on every element (False and the status set on bad data); with `store`, row_out[k] = p_k."""
    K = scores.shape[1]
    best = -np.inf
    arg = 0
    sum_sq = 0.0
    ok = True
    for k in range(K):
        v = load(scores[i, k], table)
        ok &= valid_probability(v)
        sum_sq += v * v
        if v > best:
            best = v
            arg = k
        if store:
            row_out[k] = v
    if not ok:
        for k in range(K):
            v = load(scores[i, k], table)
            if not is_finite(v):
                merge_status(st, SCORE_NOT_FINITE, i, k, v)
                return False
            if not valid_probability(v):
                merge_status(st, PROBABILITY_OUT_OF_RANGE, i, k, v)
                return False
    out[0] = arg
    out[1] = best
    out[2] = load(scores[i, y], table)
    out[3] = sum_sq
    return True


@numba.njit(**JIT)
def _short_prob_row(scores, i, y, nll_eps, with_nll, table, st, out, store, row_out):
    """A probability row of K < SHORT_ROW elements (binning.hpp, summarize_short_rows, one row per lane): its sums
    in column order (_prob_row), and the NLL by the vector log_positive's twin (the same bits)."""
    if not _prob_row(scores, i, y, table, st, out, store, row_out):
        return False
    p_label = out[2]
    nll = 0.0
    if with_nll:
        x = nll_eps if p_label < nll_eps else p_label
        nll = -log_positive(x) if x > 0.0 else np.inf
    out[4] = nll
    return True


@numba.njit(inline="always", **JIT)
def _classwise_row(e, scale, y, w, has_w, inners, uniform, upper, M, sum0, weight0, cw_count, cw_w,
                   cw_score, cw_target, flags):
    """One row into the class-wise bins (binning.hpp, classwise_row): p_k = e[k] * scale. Pass 1, without
    branches (LLVM vectorises it): bin 0's sums take every p_k, those above bin 0 adding 0 (which leaves a
    sum of non-negative terms unchanged), and each element's flag (1 when above bin 0) goes to ``flags`` (a
    uint8 scratch of (K + 7) // 8 * 8, its padding 0). Pass 2, only when some are above: the flags are read
    eight at a time (one uint64 word, as the C++ lists its octets with some), and the elements of a word
    that is not 0 go into their bins. Each element's arithmetic is unchanged, so the same bits. Bin 0's count
    is implied (rows minus the other bins' counts)."""
    K = e.shape[0]
    above = 0
    if has_w:
        for k in range(K):
            p = np.float64(e[k]) * scale
            ok = p <= upper[k]
            sum0[k] += w * p if ok else 0.0
            weight0[k] += w if ok else 0.0
            flags[k] = not ok
            above += not ok
    else:
        for k in range(K):
            p = np.float64(e[k]) * scale
            ok = p <= upper[k]
            sum0[k] += p if ok else 0.0
            flags[k] = not ok
            above += not ok
    if above > 0:
        words = flags.view(np.uint64)
        for q in range(words.shape[0]):
            if words[q] == 0:
                continue
            for k in range(8 * q, min(K, 8 * q + 8)):
                if flags[k]:
                    p = np.float64(e[k]) * scale
                    at = k * M + find_bin(p, inners[0] if uniform else inners[k], uniform)
                    cw_count[at] += 1
                    cw_score[at] += w * p if has_w else p
                    if has_w:
                        cw_w[at] += w
    py = np.float64(e[y]) * scale
    cw_target[y * M + find_bin(py, inners[0] if uniform else inners[y], uniform)] += w


_FLT_MAX = float(np.finfo(np.float32).max)


@numba.njit(inline="always", **JIT)
def _apply_pending(pend_at, pend_p, pend, has_w, cw_count, cw_w, cw_score, cw_target):
    """ClasswiseScratch::apply_pending: the last row's adds above bin 0 (their bin indices k * M + m and p in
    pend_at / pend_p, their number pend[0]) and to its label's bin (pend[1], -1 for none), its weight pend[2];
    then nothing is pending. _classwise_row_f leaves its row's adds for the next row (or the chunk's end) and
    requests their lines: between two visits of a class the row stream pushes the bins out of cache. Each bin
    still takes its adds in row order: the same sums."""
    w = pend[2]
    for q in range(np.int64(pend[0])):
        at = pend_at[q]
        p = pend_p[q]
        cw_count[at] += 1
        cw_score[at] += w * p if has_w else p
        if has_w:
            cw_w[at] += w
    t = np.int64(pend[1])
    if t >= 0:
        cw_target[t] += w
    pend[0] = 0.0
    pend[1] = -1.0


@numba.njit(inline="always", **JIT)
def _classwise_row_f(ef, K, scale, y, w, has_w, inners, uniform, upper, M, sum0, weight0, cw_count, cw_w,
                     cw_score, cw_target, flags, lst, pend_at, pend_p, pend):
    """_classwise_row of a row of float exponentials (``ef``, padded to a multiple of 8), as binning.hpp's
    classwise_row for float rows: with one set of edges (``uniform``), the octets are compared in float with a
    threshold tf (e <= tf implies p = e * scale <= upper: p is monotone in e) by classwise_octets_f32, which
    adds bin 0's sums and lists the octets with elements above tf; the listed elements, and the last K % 8,
    then go one by one, p recomputed (the same product) and checked against upper in double (an element just
    above tf may still be in bin 0: its sum took 0 in the octet and takes p now, the same sum). Otherwise
    _classwise_row. The same sums as adding each p to its bin, so the same bits as the C++ kernel. The adds
    above bin 0 and to the label's bin are left pending (pend_at, pend_p, pend: see _apply_pending), the last
    row's applied first."""
    _apply_pending(pend_at, pend_p, pend, has_w, cw_count, cw_w, cw_score, cw_target)
    if not uniform:
        _classwise_row(ef[:K], scale, y, w, has_w, inners, uniform, upper, M, sum0, weight0, cw_count, cw_w,
                       cw_score, cw_target, flags)
        return
    up = upper[0]
    tf = np.float32(min(up / scale, _FLT_MAX))
    while tf > np.float32(0.0) and np.float64(tf) * scale > up:
        tf = np.nextafter(tf, np.float32(0.0))
    k8 = K - K % 8
    if has_w:
        listed = classwise_octets_f32(ef, k8, tf, scale, w, sum0, weight0, lst, True)
    else:
        listed = classwise_octets_f32(ef, k8, tf, scale, w, sum0, weight0, lst, False)
    inner = inners[0]
    n = 0  # the row's pending adds
    for q in range(listed + (K - k8)):
        if q < listed:
            k0 = np.int64(lst[q] >> np.uint64(8))
            cand = np.int64(lst[q] & np.uint64(0xFF))
        else:  # the last K % 8 elements, one at a time
            k0 = k8 + (q - listed)
            cand = 1
        for j in range(8):
            if (cand >> j) & 1:
                k = k0 + j
                p = np.float64(ef[k]) * scale
                if p <= up:
                    sum0[k] += w * p if has_w else p
                    if has_w:
                        weight0[k] += w
                else:
                    at = k * M + find_bin(p, inner, True)
                    pend_at[n] = at
                    pend_p[n] = p
                    n += 1
                    prefetch_for_write(cw_count, at)
                    prefetch_for_write(cw_score, at)
                    if has_w:
                        prefetch_for_write(cw_w, at)
    py = np.float64(ef[y]) * scale
    t = y * M + find_bin(py, inner, True)
    prefetch_for_write(cw_target, t)
    pend[0] = n
    pend[1] = t
    pend[2] = w


@numba.njit(inline="always", **JIT)
def _fold_lane_bins(n_bins, l_count, l_w, l_conf, l_corr, count, wsum, sconf, scorr):
    """LaneBins::fold_into: the four copies of each bin (row i in copy i % 4) in order."""
    for b in range(n_bins):
        j = 4 * b
        count[b] += ((l_count[j] + l_count[j + 1]) + l_count[j + 2]) + l_count[j + 3]
        wsum[b] += ((l_w[j] + l_w[j + 1]) + l_w[j + 2]) + l_w[j + 3]
        sconf[b] += ((l_conf[j] + l_conf[j + 1]) + l_conf[j + 2]) + l_conf[j + 3]
        scorr[b] += ((l_corr[j] + l_corr[j + 1]) + l_corr[j + 2]) + l_corr[j + 3]


_PROB_LO = -PROBABILITY_TOLERANCE
_PROB_HI = 1.0 + PROBABILITY_TOLERANCE


_DBL_MAX = float(np.finfo(np.float64).max)


@numba.njit(**JIT)
def _short_prob_chunk(scores, labels, weights, has_w, inner, n_bins, nll_eps, with_nll, conf_out, correct_out,
                      has_out, table, begin, end, count, wsum, sconf, scorr, tot, st, with_brier=True):
    """A chunk of probability rows of K < SHORT_ROW elements without class-wise bins (binning.hpp,
    top_label_short_rows): one scalar pass per row keeping the maximum (the first index of it), the minimum and
    the sum of squares in column order; every element is in [-tol, 1 + tol] exactly when the minimum and the
    maximum are and the sum of squares is not NaN (a NaN skips both comparisons). Rows go by eights whose
    labels and weights are all good (the usual case): the eight scans in one loop over the columns
    (short_scan8), so that their dependency chains (the sum of squares, the running maximum) overlap, and with
    at most MAX_VECTOR_EDGES inner edges their bins counted there too (no branch on the data); each row's
    arithmetic and the order the rows are added in are unchanged. Unweighted, the sums of ones (rows, correct
    rows; per lane bin packed in one integer, as binning.hpp's packed lane bins) are kept as integers: exact,
    so the same values. Unweighted without per-row outputs, Brier or NLL (an ECE), a clean eight of float rows
    whose elements are all good for a plain round (plain_scan8, binning.hpp's scan_short_float_bits) goes
    straight to the lane bins and the confidence lanes. Same sums, bins and lanes as the C++ kernel, so the same
    bits. (Written out in one body: inlined helpers taking arrays cost reference-count calls per row.)"""
    K = scores.shape[1]
    row = np.empty(5)
    l_count = np.zeros(4 * n_bins, np.int64)
    l_w = np.zeros(4 * n_bins)
    l_conf = np.zeros(4 * n_bins)
    l_corr = np.zeros(4 * n_bins)
    lanes = np.zeros((6, TOTAL_LANES))
    vector_bins = n_bins > 0 and inner.shape[0] <= MAX_VECTOR_EDGES
    edges = inner if vector_bins else inner[:0]  # short_scan8 counts the edges below each row's maximum
    scan = np.zeros((5, SHORT_SCAN_ROWS))
    nll8 = np.zeros(SHORT_SCAN_ROWS)  # the NLL of each row of a scanned eight
    good = 0  # unweighted: the rows added and the correct ones (their lanes' sums of ones)
    n_correct = 0
    packed = not has_w and end - begin < (1 << 31)  # unweighted lane bins: count | correct count << 32
    # The usual rows of an ECE (unweighted, no per-row outputs, Brier or NLL): a clean eight whose rows are all
    # good go straight to the packed lane bins and the confidence lanes (w = 1: w * x = x, the same sums).
    plain = packed and vector_bins and not has_out and not with_brier and not with_nll
    i = begin
    while i < end:
        n = 1
        if i + SHORT_SCAN_ROWS <= end:
            clean = True
            for j in range(SHORT_SCAN_ROWS):
                yj = labels[np.uint64(i + j)]
                clean &= (yj >= 0) & (yj < K)
                if has_w:
                    wj = weights[np.uint64(i + j)]
                    clean &= (wj >= 0.0) & (wj <= _DBL_MAX)  # false for NaN, inf and negatives
            if clean:
                n = SHORT_SCAN_ROWS
                # top_label_short_rows' plain round: eight good rows' bins and sums, nothing else
                if plain and plain_scan8(scores, i, table, edges, scan):
                    for j in range(SHORT_SCAN_ROWS):
                        u = np.uint64(i + j)
                        conf = scan[0, j]
                        correct = np.int64(np.int64(scan[1, j]) == labels[u])
                        b = np.uint64(np.int64(scan[4, j])) * np.uint64(4) + (u & np.uint64(3))
                        l_count[b] += 1 + (correct << 32)
                        l_conf[b] += conf
                        lanes[3, np.uint64((i + j - begin) & (TOTAL_LANES - 1))] += conf
                        n_correct += correct
                    good += SHORT_SCAN_ROWS
                    i += SHORT_SCAN_ROWS
                    continue
                short_scan8(scores, i, table, edges, scan)
                if with_nll:
                    # the eight rows' NLLs in double lanes (nll_lanes: a scalar log per row stalled the row loop
                    # on its division), each the scalar one's bits. A row found bad below never reads its value
                    # (the labels are in range: any element is safe to read).
                    for j in range(SHORT_SCAN_ROWS):
                        u = np.uint64(i + j)
                        p = load(scores[u, np.uint64(labels[u])], table)
                        nll8[j] = nll_eps if p < nll_eps else p
                    nll_lanes(nll8)
        for j in range(n):
            # Unsigned indices (rows, lanes, bins): Numba adds no negative-index wraparound to them.
            ii = i + j
            u = np.uint64(ii)
            uj = np.uint64(j)
            y = labels[u]
            w = weights[u] if has_w else 1.0
            m = np.uint64(0)
            if n > 1:
                best = scan[0, uj]
                arg = np.int64(scan[1, uj])
                low = scan[2, uj]
                sq = scan[3, uj]
                m = np.uint64(scan[4, uj])
            else:
                if y < 0 or y >= K:
                    merge_status(st, LABEL_OUT_OF_RANGE, ii, -1, float(y))
                    continue
                if has_w and not check_weight(w, ii, st):
                    continue
                best = -np.inf
                low = np.inf
                arg = 0
                sq = 0.0
                for k in range(K):
                    v = load(scores[ii, k], table)
                    sq += v * v
                    arg = k if v > best else arg
                    best = v if v > best else best
                    low = v if v < low else low
            if not (low >= _PROB_LO and best <= _PROB_HI and sq == sq):
                _prob_row(scores, ii, y, table, st, row, False, row)  # names the first bad element
                continue
            p_label = load(scores[ii, y], table) if with_brier or with_nll else 0.0
            nll = 0.0
            if with_nll:
                if n > 1:
                    nll = nll8[uj]
                else:
                    x = nll_eps if p_label < nll_eps else p_label
                    nll = -log_positive(x) if x > 0.0 else np.inf
            conf = best
            correct = 1.0 if arg == y else 0.0
            if n_bins > 0:
                if n > 1 and vector_bins:
                    b = m * np.uint64(4) + (u & np.uint64(3))
                else:
                    b = np.uint64(find_bin(conf, inner, True)) * np.uint64(4) + (u & np.uint64(3))
                if packed:  # binning.hpp's packed lane bins: the count and the correct count in one integer
                    l_count[b] += 1 + (np.int64(correct) << 32)
                    l_conf[b] += conf
                else:
                    l_count[b] += 1
                    l_w[b] += w
                    l_conf[b] += w * conf
                    l_corr[b] += w * correct
            if has_out:
                conf_out[u] = conf
                correct_out[u] = np.uint8(correct)
            r = np.uint64((ii - begin) & (TOTAL_LANES - 1))
            if has_w:
                lanes[0, r] += 1.0
                lanes[1, r] += w
                lanes[2, r] += w * correct
            else:  # sums of ones: integers, the same in any order
                good += 1
                n_correct += np.int64(correct)
            lanes[3, r] += w * conf
            if with_brier:
                lanes[4, r] += w * ((sq - 2.0 * p_label) + 1.0)
            if with_nll:  # else nll = 0: + 0 leaves the lane (+0) as it is
                lanes[5, r] += w * nll
        i += n
    if not has_w:  # sums of ones (weights, targets): the counts, exactly
        lanes[0, 0] = lanes[1, 0] = float(good)
        lanes[2, 0] = float(n_correct)
    if packed:
        for j in range(4 * n_bins):
            both = l_count[j]
            l_count[j] = both & 0xFFFFFFFF
            l_w[j] = float(l_count[j])
            l_corr[j] = float(both >> 32)
    for t in range(6):
        tot[t] += _fold_lanes(lanes[t])
    _fold_lane_bins(n_bins, l_count, l_w, l_conf, l_corr, count, wsum, sconf, scorr)


DENSE_BLOCK = 64  # kDenseBlock: rows per block of a dense (pixel-contiguous, class-strided) matrix


@numba.njit(**JIT)
def _dense_block_copy(scores, i0, end, table, dbuf):
    """Rows [i0, min(i0 + DENSE_BLOCK, end)) of a dense matrix into dbuf[:K, :] (class-major: for each class,
    the block's consecutive values, one contiguous run of the map). Returns the block's end row."""
    K = scores.shape[1]
    n = min(DENSE_BLOCK, end - i0)
    for k in range(K):
        col = scores[i0:i0 + n, k]
        for r in range(n):
            dbuf[k, r] = F32(load(col[r], table))
    return i0 + n


# The row paths of a top-label chunk. Which one an input takes is known before the call (rows_path), and each
# caller runs a copy of _top_label_chunk compiled for its path only, with or without class-wise bins (for_rows):
# compiling every path for every signature took most of a cold Numba cache's first call.
ROWS_SHORT_PROB = 0  # probability rows of K < SHORT_ROW elements: _short_prob_chunk (_short_prob_row class-wise)
ROWS_SINGLE = 1  # float32 / float16 logit rows of K >= SHORT_ROW: the single-precision path (dense or by rows)
ROWS_LOGIT = 2  # other logit rows (float64, or K < SHORT_ROW): the double-precision path, _logit_row_d
ROWS_PROB = 3  # probability rows of K >= SHORT_ROW elements: _long_prob_row
_ROWS_NAMES = ("short_prob", "single", "logit", "prob")
# Globals read as compile-time constants: each copy of _top_label_chunk has its own (for_rows); these are the
# module's own function's, which no caller runs.
ROWS = ROWS_LOGIT
CLASSWISE = False
# The jitted functions whose copies for a row path call the copies of these (they call _top_label_chunk,
# directly or through one another): stream's one-call paths of small inputs.
_ROWS_CALLEES = ("_top_label_chunk", "_top_label_small")
_rows_copies = {}  # (fn, rows, classwise) -> fn's copy


def rows_path(from_logits, K, dtype):
    """The row path (ROWS_*) of a top-label pass over scores of K columns and this dtype."""
    if not from_logits:
        return ROWS_SHORT_PROB if K < SHORT_ROW else ROWS_PROB
    return ROWS_SINGLE if K >= SHORT_ROW and dtype != np.float64 else ROWS_LOGIT


def for_rows(fn, rows, classwise):
    """``fn`` (_top_label_chunk, or a jitted function calling it directly or through one of _ROWS_CALLEES)
    compiled for one row path (ROWS = ``rows``), with or without class-wise bins (CLASSWISE = ``classwise``,
    which must be cw_M > 0 of its calls), each of _ROWS_CALLEES it calls being that callee's copy for the same
    (_common.specialised)."""
    key = (fn, rows, bool(classwise))
    got = _rows_copies.get(key)  # lock-free once made
    if got is None:
        glb = fn.py_func.__globals__
        constants = {"ROWS": rows, "CLASSWISE": classwise}
        for name in _ROWS_CALLEES:
            if name in fn.py_func.__code__.co_names:
                constants[name] = for_rows(glb[name], rows, classwise)
        suffix = "_" + _ROWS_NAMES[rows] + ("_cw" if classwise else "")
        got = _rows_copies[key] = specialised(fn, suffix, constants)
    return got


@numba.njit(**JIT)
def _top_label_chunk(scores, labels, weights, has_w, from_logits, single, inner, n_bins, nll_eps, with_nll, inv_t,
                     conf_out, correct_out, has_out, table, begin, end, count, wsum, sconf, scorr, tot, st,
                     cw_M, cw_inners, cw_uniform, cw_upper, cw_count, cw_w, cw_score, cw_target, with_brier=True):
    """The rows [begin, end) of a top-label pass into the chunk's partial sums, on the row path ROWS, with
    class-wise bins if CLASSWISE (a copy per path, for_rows: the branches on them are decided at compile time;
    ``single`` is ROWS == ROWS_SINGLE, cw_M > 0 is CLASSWISE). Callers pass typed (np.int64, np.bool_), not
    literal, constants: one signature for every caller."""
    K = scores.shape[1]
    classwise = CLASSWISE
    if ROWS == ROWS_SHORT_PROB:
        if not CLASSWISE:
            _short_prob_chunk(scores, labels, weights, has_w, inner, n_bins, nll_eps, with_nll, conf_out,
                              correct_out, has_out, table, begin, end, count, wsum, sconf, scorr, tot, st, with_brier)
            return
    row = np.empty(ROW_VALUES)
    e = np.empty(K if classwise or ROWS == ROWS_LOGIT else 0)  # _logit_row_d's exps
    ef = np.zeros((K + 7) // 8 * 8 if single else 0, np.float32)
    sum0 = np.zeros(K if classwise else 0)
    weight0 = np.zeros(K if classwise else 0)
    cw_flags = np.zeros((K + 7) // 8 * 8 if classwise else 0, np.uint8)  # _classwise_row's (padding 0)
    cw_list = np.zeros(K // 8 if classwise and single else 0, np.uint64)  # _classwise_row_f's octets
    pend_at = np.zeros(K if classwise and single else 0, np.int64)  # _classwise_row_f's pending adds
    pend_p = np.zeros(K if classwise and single else 0)
    pend = np.array([0.0, -1.0, 0.0])
    rows = 0  # rows of the chunk added to the class-wise bins: bin 0's count is implied
    l_count = np.zeros(4 * n_bins, np.int64)
    l_w = np.zeros(4 * n_bins)
    l_conf = np.zeros(4 * n_bins)
    l_corr = np.zeros(4 * n_bins)
    # Short rows (binning.hpp, top_label_short_rows): row begin + r's totals into lane r % TOTAL_LANES, folded
    # by _fold_lanes at the end of the chunk. Longer rows: one running sum per total.
    short = K < SHORT_ROW
    lanes = np.zeros((6, TOTAL_LANES))
    # Dense float rows (a segmentation map: rows adjacent, classes far apart): read by blocks of DENSE_BLOCK
    # rows, class by class (contiguous reads, each cache line once), into a class-major float buffer; each
    # row then takes the generic single-precision path from the buffer (the same values: the same bits).
    dense = single and not classwise and scores.strides[0] == scores.itemsize and K >= 2
    dbuf = np.zeros((K if dense else 0, DENSE_BLOCK + DENSE_ROWS), np.float32)
    dres = np.zeros((5, DENSE_ROWS))
    bf = F32(inv_t)
    b_start = begin
    b_end = begin
    for i in range(begin, end):
        if ROWS == ROWS_SINGLE:
            if dense and i >= b_end:
                # the block of rows holding row i in the class-major buffer (binning.hpp, dense_block_copy)
                b_start = i
                b_end = _dense_block_copy(scores, i, end, table, dbuf)
            if dense and (i - b_start) % DENSE_ROWS == 0:
                # the sums of this row and the next DENSE_ROWS - 1, one per float lane (lanes past the block's
                # end hold stale values, never read); binning.hpp, summarize_dense_logit_rows_f
                dense_lanes_f32(dbuf, i - b_start, K, bf, dres)
        y = labels[i]
        if y < 0 or y >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        if ROWS == ROWS_SINGLE:
            if dense:
                # the row's sums from its lane (the same bits as the generic single-precision path on the row);
                # a row holding NaN / inf takes that path, which names the first one
                r = i - b_start
                j = r % DENSE_ROWS
                if dres[4, j] != 0.0:
                    for k in range(K):
                        ef[k] = dbuf[k, r]
                    _logit_row_f_loaded(scores, i, y, with_nll, inv_t, table, st, row, ef, with_brier)
                    continue
                _logit_row_out(int(dres[3, j]), F32(dres[2, j]), dbuf[y, r], dres[0, j],
                               dres[1, j] if with_brier else 0.0, bf, inv_t, with_nll, row)
            elif not _logit_row_f(scores, i, y, with_nll, inv_t, table, st, row, ef, with_brier):
                continue
        elif ROWS == ROWS_SHORT_PROB:
            if not _short_prob_row(scores, i, y, nll_eps, with_nll, table, st, row, classwise, e):
                continue
        elif ROWS == ROWS_LOGIT:
            if not _logit_row_d(scores, i, y, with_nll, inv_t, table, st, row, e, K >= SHORT_ROW):
                continue
        elif not _long_prob_row(scores, i, y, nll_eps, with_nll, table, st, row, classwise, e):
            continue
        conf = row[1]
        correct = 1.0 if int(row[0]) == y else 0.0
        if n_bins > 0:  # binning.hpp's LaneBins: row i into copy i % 4 of its bin
            b = find_bin(conf, inner, True) * 4 + (i & 3)
            l_count[b] += 1
            l_w[b] += w
            l_conf[b] += w * conf
            l_corr[b] += w * correct
        if has_out:
            conf_out[i] = conf
            correct_out[i] = np.uint8(correct)
        if short:
            r = (i - begin) & (TOTAL_LANES - 1)
            lanes[0, r] += 1.0
            lanes[1, r] += w
            lanes[2, r] += w * correct
            lanes[3, r] += w * conf
            if with_brier:
                lanes[4, r] += w * ((row[3] - 2.0 * row[2]) + 1.0)
            lanes[5, r] += w * row[4]
        else:
            tot[0] += 1.0
            tot[1] += w
            tot[2] += w * correct
            tot[3] += w * conf
            if with_brier:
                tot[4] += w * (row[3] - 2.0 * row[2] + 1.0)
            tot[5] += w * row[4]
        if CLASSWISE:
            rows += 1
            if ROWS == ROWS_SINGLE:
                _classwise_row_f(ef, K, conf, y, w, has_w, cw_inners, cw_uniform, cw_upper, cw_M, sum0, weight0,
                                 cw_count, cw_w, cw_score, cw_target, cw_flags, cw_list, pend_at, pend_p, pend)
            else:
                _classwise_row(e, conf if from_logits else 1.0, y, w, has_w, cw_inners, cw_uniform, cw_upper,
                               cw_M, sum0, weight0, cw_count, cw_w, cw_score, cw_target, cw_flags)
    if short:
        for t in range(6):
            tot[t] += _fold_lanes(lanes[t])
    _fold_lane_bins(n_bins, l_count, l_w, l_conf, l_corr, count, wsum, sconf, scorr)
    if CLASSWISE:
        _apply_pending(pend_at, pend_p, pend, has_w, cw_count, cw_w, cw_score, cw_target)
        for k in range(K):  # ClasswiseScratch::fold_into: bin 0's count = rows - the other bins' counts
            at = k * cw_M
            others = 0
            for m in range(1, cw_M):
                others += cw_count[at + m]
            cw_count[at] += rows - others
            cw_score[at] += sum0[k]
            if has_w:
                cw_w[at] += weight0[k]
        if not has_w:
            for j in range(cw_count.shape[0]):
                cw_w[j] = float(cw_count[j])


PARTIAL_ROW = 16  # doubles (128 bytes): a totals (6) or status (4) row shares no 64-byte line with the next


@numba.njit(**JIT)
def new_status_rows(g):
    """The statuses of a group of g chunks, each (OK, -1, -1, 0), PARTIAL_ROW doubles apart (two chunks on two
    threads never write to one cache line), allocated outside the parallel regions."""
    p_st = np.zeros((g, PARTIAL_ROW))
    for j in range(g):
        p_st[j, 1] = -1.0
        p_st[j, 2] = -1.0
    return p_st


@numba.njit(**JIT)
def fold_status(st, p_st, j):
    """Chunk j's status into st (in chunk order, by the caller), then cleared for the next group."""
    merge_status(st, int(p_st[j, 0]), int(p_st[j, 1]), int(p_st[j, 2]), p_st[j, 3])
    p_st[j, 0] = 0.0
    p_st[j, 1] = -1.0
    p_st[j, 2] = -1.0
    p_st[j, 3] = 0.0


@numba.njit(**JIT)
def _new_partials(g, M, KM):
    """The chunk partials of a group of g chunks, allocated once per call outside the parallel regions (in a
    ``parallel=True`` driver every ``np.zeros`` is a parallel region of its own) and cleared as they are
    folded (_fold_partial). A ticket counter for next_ticket comes last. The totals and status rows (a chunk
    of long rows adds to its totals row by row) are PARTIAL_ROW doubles apart: two chunks running at once on
    two threads never write to one cache line."""
    p_st = new_status_rows(g)
    return (np.zeros((g, M), np.int64), np.zeros((g, M)), np.zeros((g, M)), np.zeros((g, M)),
            np.zeros((g, PARTIAL_ROW)), p_st, np.zeros((g, KM), np.int64), np.zeros((g, KM)), np.zeros((g, KM)),
            np.zeros((g, KM)), np.zeros(1, np.int64))


@numba.njit(**JIT)
def _fold_partial(j, M, KM, count, wsum, sconf, scorr, tot, st, cw_count, cw_w, cw_score, cw_target,
                  p_count, p_w, p_conf, p_corr, p_tot, p_st, q_count, q_w, q_score, q_target):
    """Chunk partial j into the totals (in chunk order, by the caller), then cleared for the next group.
    Returns the partial's row count."""
    for b in range(M):
        count[b] += p_count[j, b]
        wsum[b] += p_w[j, b]
        sconf[b] += p_conf[j, b]
        scorr[b] += p_corr[j, b]
        p_count[j, b] = 0
        p_w[j, b] = 0.0
        p_conf[j, b] = 0.0
        p_corr[j, b] = 0.0
    for b in range(KM):
        cw_count[b] += q_count[j, b]
        cw_w[b] += q_w[j, b]
        cw_score[b] += q_score[j, b]
        cw_target[b] += q_target[j, b]
        q_count[j, b] = 0
        q_w[j, b] = 0.0
        q_score[j, b] = 0.0
        q_target[j, b] = 0.0
    rows = int(p_tot[j, 0])
    for t in range(1, 6):
        tot[t] += p_tot[j, t]
    p_tot[j, :] = 0.0
    fold_status(st, p_st, j)
    return rows


@numba.njit(parallel=True, **JIT)
def _top_label_driver(scores, labels, weights, has_w, from_logits, single, inner, n_bins, nll_eps, with_nll, inv_t,
                      conf_out, correct_out, has_out, table, parallel, cw_M, cw_inners, cw_uniform, cw_upper,
                      with_brier):
    N, K = scores.shape
    M = max(n_bins, 1)
    KM = K * cw_M
    chunk = rows_per_chunk(K, 64 * cw_M) if cw_M > 0 else rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    group = group_size(n_chunks, 4 * (n_bins + KM))
    count, wsum, sconf, scorr, tot, st, cw_count, cw_w, cw_score, cw_target, _ = _new_partials(1, M, KM)
    count, wsum, sconf, scorr, tot, st = count[0], wsum[0], sconf[0], scorr[0], tot[0], st[0]
    cw_count, cw_w, cw_score, cw_target = cw_count[0], cw_w[0], cw_score[0], cw_target[0]
    p_count, p_w, p_conf, p_corr, p_tot, p_st, q_count, q_w, q_score, q_target, ticket = _new_partials(group, M, KM)
    total_count = 0
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        if parallel:
            # One parallel region per group. prange splits its g iterations evenly between the threads; the
            # first iteration a thread runs takes chunks one at a time (next_ticket) until none is left, and
            # its other iterations find none: each thread runs chunks as long as some remain.
            ticket[0] = 0
            for _t in numba.prange(g):
                j = next_ticket(ticket)
                while j < g:
                    c = first + j
                    _top_label_chunk(scores, labels, weights, has_w, from_logits, single, inner, n_bins, nll_eps,
                                     with_nll, inv_t, conf_out, correct_out, has_out, table, c * chunk,
                                     min(N, (c + 1) * chunk), p_count[j], p_w[j], p_conf[j], p_corr[j], p_tot[j],
                                     p_st[j], cw_M, cw_inners, cw_uniform, cw_upper, q_count[j], q_w[j], q_score[j],
                                     q_target[j], with_brier)
                    j = next_ticket(ticket)
        else:
            for j in range(g):
                c = first + j
                _top_label_chunk(scores, labels, weights, has_w, from_logits, single, inner, n_bins, nll_eps, with_nll,
                                 inv_t, conf_out, correct_out, has_out, table, c * chunk, min(N, (c + 1) * chunk),
                                 p_count[j], p_w[j], p_conf[j], p_corr[j], p_tot[j], p_st[j],
                                 cw_M, cw_inners, cw_uniform, cw_upper, q_count[j], q_w[j], q_score[j], q_target[j],
                                 with_brier)
        for j in range(g):
            total_count += _fold_partial(j, M, KM, count, wsum, sconf, scorr, tot, st, cw_count, cw_w, cw_score,
                                         cw_target, p_count, p_w, p_conf, p_corr, p_tot, p_st, q_count, q_w, q_score,
                                         q_target)
    return count, wsum, sconf, scorr, total_count, tot, st, cw_count, cw_w, cw_score, cw_target


def _dummy_out():
    return np.empty(0, np.float64), np.empty(0, np.uint8)


def _weights_arg(sample_weight, n):
    if sample_weight is None:
        return np.empty(1, np.float64), False
    if sample_weight.dtype != np.float64 or sample_weight.ndim != 1 or sample_weight.shape[0] != n:
        raise ValueError("sample_weight must be a 1-D float64 array of length N")
    return sample_weight, True


def _bins_dict(count, wsum, sconf, scorr, n_bins):
    return {"count": count[:n_bins].copy(), "weight": wsum[:n_bins].copy(),
            "sum_score": sconf[:n_bins].copy(), "sum_target": scorr[:n_bins].copy()}


def _totals_dict(total_count, tot):
    return {"count": int(total_count), "weight": float(tot[1]), "correct": float(tot[2]),
            "confidence": float(tot[3]), "brier": float(tot[4]), "nll": float(tot[5])}


def _classwise_spec(K, n_bins, class_edges):
    """(inners (1 or K, M - 1), uniform, bin-0 upper edge per class) as in binning.hpp's ClasswiseSpec."""
    if n_bins < 0:
        raise ValueError("classwise_bins must be >= 0")
    if n_bins == 0:
        if class_edges is not None:
            raise ValueError("class_edges needs classwise_bins >= 1")
        return np.zeros((1, 0)), True, np.zeros(0)
    if class_edges is None:
        inners, uniform = equal_width_inner(n_bins)[None, :], True
        upper = np.full(K, inners[0, 0] if n_bins > 1 else np.inf)
    else:
        class_edges = np.ascontiguousarray(class_edges, dtype=np.float64)
        if class_edges.shape != (K, n_bins + 1):
            raise ValueError("class_edges must be a float64 array of shape (K, n_bins + 1)")
        inners, uniform = np.ascontiguousarray(class_edges[:, 1:n_bins]), False
        upper = class_edges[:, 1].copy() if n_bins > 1 else np.full(K, np.inf)
    return inners, uniform, upper


def top_label_stats(scores, labels, sample_weight, from_logits, n_bins, nll_eps, with_nll=True, conf_out=None,
                    correct_out=None, inverse_temperature=1.0, classwise_bins=0, class_edges=None, with_brier=True):
    """Same contract as ``calibkit._core.top_label_stats``."""
    check_float_dtype(scores, "scores")
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError("scores must be 2-D with at least one column")
    if labels.dtype != np.int64 or labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError("labels must be a 1-D int64 array of length N")
    if n_bins < 0:
        raise ValueError("n_bins must be >= 0")
    inv_t = float(inverse_temperature)
    if not (inv_t > 0.0 and math.isfinite(inv_t)):
        raise ValueError("inverse_temperature must be a finite number > 0")
    if not from_logits and inv_t != 1.0:
        raise ValueError("inverse_temperature applies to logits only")
    N, K = scores.shape
    cw_inners, cw_uniform, cw_upper = _classwise_spec(K, int(classwise_bins), class_edges)
    weights, has_w = _weights_arg(sample_weight, N)
    has_out = conf_out is not None
    if has_out:
        if conf_out.shape != (N,) or correct_out is None or correct_out.shape != (N,):
            raise ValueError("conf_out and correct_out must both be given with length N")
    else:
        conf_out, correct_out = _dummy_out()
    parallel = N * K >= MIN_PARALLEL_ELEMENTS
    # float32 / float16 logit rows of at least SHORT_ROW elements: the single-precision path (_logit_row_f)
    single = bool(from_logits) and scores.dtype != np.float64 and K >= SHORT_ROW
    driver = for_rows(_top_label_driver, rows_path(from_logits, K, scores.dtype), classwise_bins > 0)
    count, wsum, sconf, scorr, total_count, tot, st, cw_count, cw_w, cw_score, cw_target = run_locked(
        driver, as_kernel_array(scores), labels, weights, has_w, bool(from_logits), single,
        equal_width_inner(n_bins), int(n_bins), float(nll_eps), bool(with_nll), inv_t, conf_out, correct_out,
        has_out, HALF_TABLE, parallel, int(classwise_bins), cw_inners, cw_uniform, cw_upper, bool(with_brier))
    out = _bins_dict(count, wsum, sconf, scorr, n_bins)
    out["totals"] = _totals_dict(total_count, tot)
    if not with_nll:
        out["totals"]["nll"] = float("nan")
    if not with_brier:
        out["totals"]["brier"] = float("nan")
    out["status"] = status_tuple(st)
    if classwise_bins > 0:
        out["classwise"] = {"count": cw_count, "weight": cw_w, "sum_score": cw_score, "sum_target": cw_target}
    return out


BINARY_LANE_BINS = 4096  # kBinaryLaneBins: unweighted binary bins up to this many go to 4 lanes per bin
BINARY_AHEAD = 256  # kBinaryAhead: rows prefetched ahead (scores and labels)
BIN_LANES = 4  # LaneBins::kLanes


@numba.njit(**JIT)
def _binary_rows_checked(probs, targets, weights, has_w, inner, uniform, n_bins, nll_eps, with_nll, table, begin,
                         end, count, wsum, sconf, scorr, tot, st):
    """binning.hpp's binary_rows_checked: every check per row, a bad row reported and left out."""
    for i in range(begin, end):
        y = np.int64(targets[i])
        if y != 0 and y != 1:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        p = load(probs[i], table)
        if not valid_probability(p):
            merge_status(st, PROBABILITY_OUT_OF_RANGE if is_finite(p) else SCORE_NOT_FINITE, i, -1, p)
            continue
        target = float(y)
        if n_bins > 0:
            b = find_bin(p, inner, uniform)
            count[b] += 1
            wsum[b] += w
            sconf[b] += w * p
            scorr[b] += w * target
        tot[0] += 1.0
        tot[1] += w
        tot[2] += w * target
        tot[3] += w * p
        tot[4] += w * (p - target) * (p - target)
        if with_nll:
            pc = min(max(p, nll_eps), 1.0 - nll_eps)
            tot[5] -= w * (math.log(pc) if y == 1 else math.log1p(-pc))


# The case a copy of the binary loop is compiled for (binary_driver_for: globals read as compile-time constants,
# as binary_stats' template arguments in C++; tested per row, these flags made the loop about 1.6x slower). The
# module's own functions keep these values, and no caller runs them.
BINARY_WEIGHTED = False  # sample weights
BINARY_LANES = True  # unweighted, at most BINARY_LANE_BINS bins: bins in lanes
BINARY_UNIFORM = True  # equal-width edges and more than one bin


@numba.njit(**JIT)
def _binary_rows_fast(probs, targets, weights, inner, bounds, n_bins, nll_eps, with_nll, table, begin, end, count,
                      wsum, sconf, scorr, tot):
    """binning.hpp's binary_rows_fast: no branch per row for the checks (False: a bad element in the chunk);
    unweighted with at most BINARY_LANE_BINS bins, row begin + r goes to lane r % 4 of its bin (a count plus
    2**32 times the count of positives, packed as _short_prob_chunk's lane bins, and the sum of p, folded in lane
    order); otherwise the per-bin sums go in row order. ``bounds``: -inf, the inner edges, +inf. The rows go four
    at a time, the lane a constant of each.
    Compiled for the case of BINARY_WEIGHTED, BINARY_LANES and BINARY_UNIFORM (binary_driver_for)."""
    has_w = BINARY_WEIGHTED
    lanes = BINARY_LANES
    uniform_bins = BINARY_UNIFORM
    nl = BIN_LANES * n_bins if lanes else 0
    l_pack = np.zeros(nl, np.int64)
    l_sum = np.zeros(nl)
    scale = float(n_bins)
    last = float(n_bins - 1)
    binned = n_bins > 0
    conf = 0.0
    brier = 0.0
    nll = 0.0
    wtot = 0.0
    correct = 0.0
    pos = 0
    labels_or = 0
    bad = False
    for i0 in range(begin, end, BIN_LANES):
        prefetch(probs, i0 + BINARY_AHEAD)
        prefetch(targets, i0 + BINARY_AHEAD)
        for lane in range(BIN_LANES):
            i = i0 + lane
            if i >= end:
                break
            iu = np.uint64(i)  # an unsigned index: no negative-index wraparound
            yr = targets[iu]
            raw_p = load(probs[iu], table)
            labels_or |= np.int64(yr)
            ok = (raw_p >= -PROBABILITY_TOLERANCE) & (raw_p <= 1.0 + PROBABILITY_TOLERANCE)  # valid_probability
            bad |= not ok
            p = raw_p if ok else 0.0  # a NaN must not reach the bin index
            y = np.int64(yr) & 1
            target = float(y)
            w = 1.0
            if has_w:
                w = weights[iu]
                bad |= (not (w >= 0.0)) | (not (w - w == 0.0))  # negative, NaN or infinite
            # Unsigned indices: Numba adds no negative-index wraparound to them.
            b = np.uint64(0)
            if uniform_bins:
                x = p * scale
                x = x if x > 0.0 else 0.0
                x = x if x < last else last
                b = np.uint64(x)
                b -= np.uint64(not (bounds[b] < p))
                b += np.uint64(bounds[b + np.uint64(1)] < p)
            elif n_bins > 1:
                b = np.uint64(np.searchsorted(inner, p))
            if binned:
                if lanes:
                    j = b * np.uint64(BIN_LANES) + np.uint64(lane)
                    l_pack[j] += 1 + (y << 32)
                    l_sum[j] += p
                else:
                    count[b] += 1
                    wsum[b] += w
                    sconf[b] += w * p
                    scorr[b] += w * target
            conf += w * p
            brier += w * (p - target) * (p - target)
            if has_w:
                wtot += w
                correct += w * target
            else:
                pos += y
    if bad or (labels_or & ~1) != 0:
        return False
    if with_nll:
        # A loop of its own (the chunk is still in cache): a log call in the loop above slows it down even
        # where it is skipped. The same row order, so the same sum as one loop (the C++ twin's WithNll).
        for i in range(begin, end):
            p = load(probs[i], table)
            w = weights[i] if has_w else 1.0
            pc = min(max(p, nll_eps), 1.0 - nll_eps)
            nll -= w * (math.log(pc) if targets[i] == 1 else math.log1p(-pc))
    if lanes:
        for m in range(n_bins):
            j = m * BIN_LANES
            both = ((l_pack[j] + l_pack[j + 1]) + l_pack[j + 2]) + l_pack[j + 3]
            count[m] = both & 0xFFFFFFFF
            wsum[m] = float(count[m])
            scorr[m] = float(both >> 32)
            sconf[m] = ((l_sum[j] + l_sum[j + 1]) + l_sum[j + 2]) + l_sum[j + 3]
    if not has_w:
        wtot = float(end - begin)
        correct = float(pos)
    tot[0] = float(end - begin)
    tot[1] = wtot
    tot[2] = correct
    tot[3] = conf
    tot[4] = brier
    tot[5] = nll
    return True


@numba.njit(**JIT)
def _binary_chunk(probs, targets, weights, has_w, inner, bounds, uniform, n_bins, nll_eps, with_nll, table, begin,
                  end, count, wsum, sconf, scorr, tot, st):
    ok = _binary_rows_fast(probs, targets, weights, inner, bounds, n_bins, nll_eps, with_nll, table, begin, end,
                           count, wsum, sconf, scorr, tot)
    if ok:
        return
    count[:] = 0
    wsum[:] = 0.0
    sconf[:] = 0.0
    scorr[:] = 0.0
    tot[:] = 0.0
    _binary_rows_checked(probs, targets, weights, has_w, inner, uniform, n_bins, nll_eps, with_nll, table, begin,
                         end, count, wsum, sconf, scorr, tot, st)


def binary_driver_for(has_w, n_bins, uniform):
    """_binary_driver calling the copy of _binary_rows_fast compiled for this case (BINARY_WEIGHTED, BINARY_LANES,
    BINARY_UNIFORM; _common.specialised): a call compiles the one copy it runs."""
    lanes = (not has_w) and n_bins <= BINARY_LANE_BINS
    uniform = uniform and n_bins > 1
    suffix = "_" + ("w" if has_w else "") + ("lanes" if lanes else "rows") + ("_equal" if uniform else "_edges")
    rows = specialised(_binary_rows_fast, suffix,
                       {"BINARY_WEIGHTED": bool(has_w), "BINARY_LANES": lanes, "BINARY_UNIFORM": uniform})
    chunk = specialised(_binary_chunk, suffix, {"_binary_rows_fast": rows})
    return specialised(_binary_driver, suffix, {"_binary_chunk": chunk})


@numba.njit(parallel=True, **JIT)
def _binary_driver(probs, targets, weights, has_w, inner, bounds, uniform, n_bins, nll_eps, with_nll, table,
                   parallel):
    N = probs.shape[0]
    M = max(n_bins, 1)
    chunk = CHUNK_ELEMENTS
    n_chunks = (N + chunk - 1) // chunk
    group = group_size(n_chunks, 4 * n_bins)
    count, wsum, sconf, scorr, tot, st, e_count, e_w, e_score, e_target, _ = _new_partials(1, M, 0)
    count, wsum, sconf, scorr, tot, st = count[0], wsum[0], sconf[0], scorr[0], tot[0], st[0]
    e_count, e_w, e_score, e_target = e_count[0], e_w[0], e_score[0], e_target[0]  # no class-wise bins
    p_count, p_w, p_conf, p_corr, p_tot, p_st, q_count, q_w, q_score, q_target, ticket = _new_partials(group, M, 0)
    total_count = 0
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        if parallel:
            ticket[0] = 0
            for _t in numba.prange(g):  # as in _top_label_driver
                j = next_ticket(ticket)
                while j < g:
                    c = first + j
                    _binary_chunk(probs, targets, weights, has_w, inner, bounds, uniform, n_bins, nll_eps, with_nll,
                                  table, c * chunk, min(N, (c + 1) * chunk), p_count[j], p_w[j], p_conf[j], p_corr[j],
                                  p_tot[j], p_st[j])
                    j = next_ticket(ticket)
        else:
            for j in range(g):
                c = first + j
                _binary_chunk(probs, targets, weights, has_w, inner, bounds, uniform, n_bins, nll_eps, with_nll,
                              table, c * chunk, min(N, (c + 1) * chunk), p_count[j], p_w[j], p_conf[j], p_corr[j],
                              p_tot[j], p_st[j])
        for j in range(g):
            total_count += _fold_partial(j, M, 0, count, wsum, sconf, scorr, tot, st, e_count, e_w, e_score,
                                         e_target, p_count, p_w, p_conf, p_corr, p_tot, p_st, q_count, q_w, q_score,
                                         q_target)
    return count, wsum, sconf, scorr, total_count, tot, st


def binary_stats(scores, labels, sample_weight, n_bins, edges, nll_eps, with_nll=True):
    """Same contract as ``calibkit._core.binary_stats``."""
    check_float_dtype(scores, "scores")
    if scores.ndim != 1:
        raise ValueError("scores must be 1-D")
    if labels.dtype not in (np.int64, np.uint8):
        raise TypeError(f"labels must have dtype int64 or uint8, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError("labels must be 1-D with the length of scores")
    if n_bins < 0:
        raise ValueError("n_bins must be >= 0")
    if with_nll is not True and with_nll is not False:
        raise TypeError(f"with_nll must be True or False, got {with_nll!r}")
    N = scores.shape[0]
    weights, has_w = _weights_arg(sample_weight, N)
    if edges is None:
        inner, uniform = equal_width_inner(n_bins), True
    else:
        edges = np.ascontiguousarray(edges, dtype=np.float64)
        if edges.ndim != 1 or edges.shape[0] != n_bins + 1:
            raise ValueError("edges must be a 1-D float64 array of length n_bins + 1")
        inner, uniform = edges[1:n_bins].copy(), False
    bounds = np.concatenate(([-np.inf], inner, [np.inf]))
    parallel = N >= MIN_PARALLEL_ELEMENTS
    count, wsum, sconf, scorr, total_count, tot, st = run_locked(
        binary_driver_for(has_w, n_bins, uniform), as_kernel_array(scores), labels, weights, has_w, inner, bounds,
        uniform, int(n_bins), float(nll_eps), with_nll, HALF_TABLE, parallel)
    out = _bins_dict(count, wsum, sconf, scorr, n_bins)
    out["totals"] = _totals_dict(total_count, tot)
    if not with_nll:
        out["totals"]["nll"] = float("nan")
    out["status"] = status_tuple(st)
    return out


def classwise_stats(scores, labels, sample_weight, from_logits, n_bins, class_edges):
    """Same contract as ``calibkit._core.classwise_stats``: the fused pass without top-label bins."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    r = top_label_stats(scores, labels, sample_weight, from_logits, 0, 0.0, False, None, None, 1.0, n_bins,
                        class_edges, False)  # the totals are not returned: no Brier term
    out = r["classwise"]
    out["status"] = r["status"]
    return out
