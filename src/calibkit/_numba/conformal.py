"""Numba twins of cpp/include/calibkit/conformal.hpp: the calibration scores of the labels and the prediction sets.

A row's probabilities come from the softmax helpers of the uncertainty twins (float32 / float16 rows: the float
buffer, exp_f32 and the lane sums of the C++ float path, so the same bits; float64 rows: the double path, equal
to the C++ one up to the last bits of exp and of the sum). Classes are ranked by (p descending, index ascending);
the set kernel pops a binary heap of the row's classes until the (never decreasing) score passes the largest
threshold, the label kernel sorts only the classes ranked before the label. See conformal.hpp for the formulas.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    HALF_TABLE, f64_bits, JITF, LABEL_OUT_OF_RANGE, MIN_PARALLEL_ELEMENTS, as_kernel_array, check_float_dtype, load,
    merge_status, rows_per_chunk, run_locked, status_tuple,
)
from .uncertainty import _check_row, _load_f, _max_f, _scan_d, _softmax_d, _softmax_f

LAC, APS, RAPS, SAPS = range(4)
N_KINDS = 4
MAX_KREG = 1 << 40  # the C++ binding's bound on k_reg


@numba.njit(inline="always", **JITF)
def _ranks_before(pa, a, pb, b):
    return pa > pb or (pa == pb and a < b)


@numba.njit(inline="always", **JITF)
def _cumulative_score(kind, penalty, kreg, weight, C, o, r, p_max, u):
    """The score of the class at rank r (C = C_r, o = o_r), the same operations as the C++ cumulative_score."""
    if kind == APS:
        return C - u * o
    if kind == RAPS:
        return (C - u * o) + penalty * np.float64(max(0, r + 1 - kreg))
    if r == 0:
        return p_max - u * p_max
    return weight * (np.float64(r) - u) + p_max


@numba.njit(**JITF)
def _probabilities_f(s, i, from_logits, table, buf, ebuf, tbuf, p, st):
    """Row i of a float32 / float16 matrix: its probabilities into p (float64); False (status set) on bad input."""
    K = s.shape[1]
    _load_f(s, i, table, buf)
    m1f, bad = _max_f(buf, K, not from_logits)
    if bad != 0 and not _check_row(buf, K, not from_logits, i, st):
        return False
    if from_logits:
        s0, _ = _softmax_f(buf, K, np.float64(m1f), 1.0, ebuf, tbuf)
        for k in range(K):
            p[k] = np.float64(ebuf[k]) / s0
    else:
        for k in range(K):
            p[k] = np.float64(buf[k])
    return True


@numba.njit(**JITF)
def _probabilities_d(s, i, from_logits, table, dbuf, p, st):
    """Row i of a float64 matrix: its probabilities into p; False (status set) on bad input."""
    K = s.shape[1]
    for k in range(K):
        dbuf[k] = load(s[i, k], table)
    m1, _, bad = _scan_d(dbuf, K, not from_logits)
    if bad != 0 and not _check_row(dbuf, K, not from_logits, i, st):
        return False
    if from_logits:
        s0, _ = _softmax_d(dbuf, K, m1, 1.0, True)
        for k in range(K):
            p[k] = dbuf[k] / s0
    else:
        for k in range(K):
            p[k] = dbuf[k]
    return True


@numba.njit(inline="always", **JITF)
def _label_score(p, K, label, kind, penalty, kreg, weight, u, before):
    py = p[label]
    if kind == LAC:
        return 1.0 - py
    r = 0
    p_max = py
    for k in range(K):
        v = p[k]
        if _ranks_before(v, k, py, label):
            before[r] = v
            r += 1
        p_max = max(p_max, v)
    C = 0.0
    if kind != SAPS:
        ordered = before[:r]
        ordered.sort()  # ascending, in place: summed from the end, i.e. in rank order
        for j in range(r - 1, -1, -1):
            C += ordered[j]
        C += py
    return _cumulative_score(kind, penalty, kreg, weight, C, py, r, p_max, u)


@numba.njit(**JITF)
def _label_scores_chunk(s, labels, from_logits, single, kind, penalty, kreg, weight, u, has_u, table, out, begin,
                        end, st):
    K = s.shape[1]
    Kp = (K + 7) // 8 * 8
    buf = np.zeros(Kp, np.float32)
    ebuf = np.zeros(Kp, np.float32)
    tbuf = np.zeros(Kp, np.float32)
    dbuf = np.zeros(Kp)
    p = np.zeros(K)
    before = np.zeros(K)
    for i in range(begin, end):
        label = labels[i]
        if label < 0 or label >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, np.float64(label))
            out[i] = np.nan
            continue
        ok = _probabilities_f(s, i, from_logits, table, buf, ebuf, tbuf, p, st) if single else \
            _probabilities_d(s, i, from_logits, table, dbuf, p, st)
        if not ok:
            out[i] = np.nan
            continue
        out[i] = _label_score(p, K, label, kind, penalty, kreg, weight, u[i] if has_u else 0.0, before)


@numba.njit(inline="always", **JITF)
def _sift_down(heap, n, j, p):
    """Restore the heap below position j (the class ranked first on top)."""
    while True:
        left = 2 * j + 1
        if left >= n:
            return
        best = left
        right = left + 1
        if right < n and _ranks_before(p[heap[right]], heap[right], p[heap[left]], heap[left]):
            best = right
        if not _ranks_before(p[heap[best]], heap[best], p[heap[j]], heap[j]):
            return
        heap[j], heap[best] = heap[best], heap[j]
        j = best


BUCKET_MIN_CLASSES = 64  # kBucketMinClasses
N_BUCKETS = 64


@numba.njit(inline="always", **JITF)
def _score_lower_bound(kind, penalty, kreg, weight, above, r0, p_max, u):
    """As the C++ score_lower_bound: every class ranked at r0 or later scores at least this."""
    if kind == SAPS:
        return _cumulative_score(kind, penalty, kreg, weight, 0.0, 0.0, r0, p_max, u)
    if kind == RAPS:
        return above + penalty * np.float64(max(0, r0 + 1 - kreg))
    return above


@numba.njit(inline="always", **JITF)
def _bucket(v, e_max):
    if not v > 0.0:
        return N_BUCKETS - 1
    return min(N_BUCKETS - 1, e_max - ((f64_bits(v) >> 52) & 0x7FF))


@numba.njit(inline="always", **JITF)
def _candidates(p, K, kind, penalty, kreg, weight, q_max, u, cand, mass, count):
    """As the C++ candidate_classes: the classes that may enter the set into cand, their number returned."""
    if K > BUCKET_MIN_CLASSES and q_max < np.inf:
        p_max = p[0]
        for k in range(1, K):
            p_max = max(p_max, p[k])
        e_max = (f64_bits(p_max) >> 52) & 0x7FF
        mass[:] = 0.0
        count[:] = 0
        for k in range(K):
            b = _bucket(p[k], e_max)
            mass[b] += p[k]
            count[b] += 1
        limit = q_max + 1e-9 * max(1.0, abs(q_max))
        above = 0.0
        r0 = 0
        cut = N_BUCKETS
        for b in range(N_BUCKETS):
            if _score_lower_bound(kind, penalty, kreg, weight, above, r0, p_max, u) > limit:
                cut = b
                break
            above += mass[b]
            r0 += count[b]
        if cut < N_BUCKETS:
            n = 0
            for k in range(K):
                if _bucket(p[k], e_max) < cut:
                    cand[n] = k
                    n += 1
            return n
    for k in range(K):
        cand[k] = k
    return K


@numba.njit(inline="always", **JITF)
def _row_set(p, K, kind, penalty, kreg, weight, q, q_max, u, heap, mass, count, row):
    """The set of one row into row (0 / 1, zeroed first); returns its size."""
    for k in range(K):
        row[k] = 0
    size = 0
    if kind == LAC:
        for k in range(K):
            if 1.0 - p[k] <= q[k]:
                row[k] = 1
                size += 1
        return size
    m = _candidates(p, K, kind, penalty, kreg, weight, q_max, u, heap, mass, count)
    for j in range(m // 2 - 1, -1, -1):
        _sift_down(heap, m, j, p)
    n = m
    C = 0.0
    p_max = 0.0
    pop_limit = max(16, K // 8)
    rest = heap[:0]
    for r in range(m):
        if r < pop_limit:
            k = heap[0]
            n -= 1
            heap[0] = heap[n]
            _sift_down(heap, n, 0, p)
        else:
            if r == pop_limit:  # a large set: the classes left are sorted once, by (p descending, index ascending)
                rest = np.sort(heap[:n])
                rest = rest[np.argsort(-p[rest], kind="mergesort")]
            k = rest[r - pop_limit]
        o = p[k]
        if r == 0:
            p_max = o
        C += o
        score = _cumulative_score(kind, penalty, kreg, weight, C, o, r, p_max, u)
        if not score <= q_max:  # the scores never decrease along the ranks
            break
        if score <= q[k]:
            row[k] = 1
            size += 1
    return size


@numba.njit(**JITF)
def _sets_chunk(s, from_logits, single, kind, penalty, kreg, weight, q, q_max, u, has_u, table, out, sizes, begin,
                end, st):
    K = s.shape[1]
    Kp = (K + 7) // 8 * 8
    buf = np.zeros(Kp, np.float32)
    ebuf = np.zeros(Kp, np.float32)
    tbuf = np.zeros(Kp, np.float32)
    dbuf = np.zeros(Kp)
    p = np.zeros(K)
    heap = np.zeros(K, np.int64)
    mass = np.zeros(N_BUCKETS)
    count = np.zeros(N_BUCKETS, np.int64)
    for i in range(begin, end):
        ok = _probabilities_f(s, i, from_logits, table, buf, ebuf, tbuf, p, st) if single else \
            _probabilities_d(s, i, from_logits, table, dbuf, p, st)
        if not ok:
            for k in range(K):
                out[i, k] = 0
            sizes[i] = 0
            continue
        sizes[i] = _row_set(p, K, kind, penalty, kreg, weight, q, q_max, u[i] if has_u else 0.0, heap, mass,
                            count, out[i])


@numba.njit(parallel=True, **JITF)
def _label_scores_driver(s, labels, from_logits, single, kind, penalty, kreg, weight, u, has_u, table, out,
                         parallel):
    N, K = s.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            _label_scores_chunk(s, labels, from_logits, single, kind, penalty, kreg, weight, u, has_u, table, out,
                                c * chunk, min(N, (c + 1) * chunk), sts[c])
    else:
        for c in range(n_chunks):
            _label_scores_chunk(s, labels, from_logits, single, kind, penalty, kreg, weight, u, has_u, table, out,
                                c * chunk, min(N, (c + 1) * chunk), sts[c])
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for c in range(n_chunks):
        merge_status(st, int(sts[c, 0]), int(sts[c, 1]), int(sts[c, 2]), sts[c, 3])
    return st


@numba.njit(parallel=True, **JITF)
def _sets_driver(s, from_logits, single, kind, penalty, kreg, weight, q, q_max, u, has_u, table, out, sizes,
                 parallel):
    N, K = s.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            _sets_chunk(s, from_logits, single, kind, penalty, kreg, weight, q, q_max, u, has_u, table, out, sizes,
                        c * chunk, min(N, (c + 1) * chunk), sts[c])
    else:
        for c in range(n_chunks):
            _sets_chunk(s, from_logits, single, kind, penalty, kreg, weight, q, q_max, u, has_u, table, out, sizes,
                        c * chunk, min(N, (c + 1) * chunk), sts[c])
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for c in range(n_chunks):
        merge_status(st, int(sts[c, 0]), int(sts[c, 1]), int(sts[c, 2]), sts[c, 3])
    return st


def _check_params(kind, penalty, kreg, weight):
    if not 0 <= kind < N_KINDS:
        raise ValueError(f"kind must be in [0, {N_KINDS - 1}], got {kind}")
    if not (penalty >= 0.0 and math.isfinite(penalty)):
        raise ValueError(f"penalty must be a finite number >= 0, got {penalty}")
    if kreg < 0:
        raise ValueError(f"kreg must be >= 0, got {kreg}")
    if kreg > MAX_KREG:
        raise ValueError(f"kreg must be <= {MAX_KREG}, got {kreg}")
    if not (weight > 0.0 and math.isfinite(weight)):
        raise ValueError(f"weight must be a finite number > 0, got {weight}")


def _check_scores(scores):
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"scores must be a numpy array, got {type(scores).__name__}")
    check_float_dtype(scores, "scores")
    if scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D array, got a {scores.ndim}-D array")
    if scores.shape[1] < 1:
        raise ValueError("scores must have at least one column")


def _uniforms(u, n):
    if u is None:
        return np.zeros(0), False
    if not isinstance(u, np.ndarray) or u.dtype != np.float64:
        raise TypeError(f"u must be a numpy array of dtype float64 or None, got {type(u).__name__}")
    if u.ndim != 1:
        raise ValueError(f"u must be a 1-D array, got a {u.ndim}-D array")
    if u.shape[0] != n:
        raise ValueError(f"u has length {u.shape[0]}, expected {n}")
    bad = ~((u >= 0.0) & (u < 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"u[{i}] = {u[i]} is not in [0, 1)")
    return u, True


def conformal_label_scores(scores, labels, from_logits, kind, penalty, kreg, weight, u):
    """Same contract as ``calibkit._core.conformal_label_scores``."""
    _check_params(kind, penalty, kreg, weight)
    _check_scores(scores)
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64:
        raise TypeError("labels must have dtype int64")
    N, K = scores.shape
    if labels.ndim != 1 or labels.shape[0] != N:
        raise ValueError(f"labels has length {labels.shape[0] if labels.ndim == 1 else labels.shape}, expected {N}")
    u, has_u = _uniforms(u, N)
    out = np.empty(N)
    st = run_locked(_label_scores_driver, as_kernel_array(scores), labels, bool(from_logits),
                    scores.dtype != np.float64, int(kind), float(penalty), int(kreg), float(weight), u, has_u,
                    HALF_TABLE, out, N * K >= MIN_PARALLEL_ELEMENTS)
    return {"scores": out, "status": status_tuple(st)}


def conformal_sets(scores, from_logits, kind, penalty, kreg, weight, thresholds, u, out, sizes):
    """Same contract as ``calibkit._core.conformal_sets``."""
    _check_params(kind, penalty, kreg, weight)
    _check_scores(scores)
    N, K = scores.shape
    if not isinstance(thresholds, np.ndarray) or thresholds.dtype != np.float64 or thresholds.ndim != 1:
        raise TypeError("thresholds must be a 1-D numpy array of dtype float64")
    if thresholds.shape[0] != K:
        raise ValueError(f"thresholds has length {thresholds.shape[0]}, expected {K} (one per class)")
    if np.isnan(thresholds).any():
        raise ValueError(f"thresholds[{int(np.argmax(np.isnan(thresholds)))}] is NaN")
    u, has_u = _uniforms(u, N)
    for a, name, dtype, shape in ((out, "out", np.uint8, (N, K)), (sizes, "sizes", np.int64, (N,))):
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}")
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be C-contiguous and writeable")
    st = run_locked(_sets_driver, as_kernel_array(scores), bool(from_logits), scores.dtype != np.float64, int(kind),
                    float(penalty), int(kreg), float(weight), thresholds, float(thresholds.max()), u, has_u,
                    HALF_TABLE, out, sizes, N * K >= MIN_PARALLEL_ELEMENTS)
    return status_tuple(st)
