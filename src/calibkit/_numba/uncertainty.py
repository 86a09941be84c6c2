"""Numba twins of cpp/include/calibkit/uncertainty.hpp: per-sample scores, ensemble decomposition, confidence loss."""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    F32, HALF_TABLE, JIT, LABEL_OUT_OF_RANGE, MIN_PARALLEL_ELEMENTS, PROBABILITY_OUT_OF_RANGE, SCORE_NOT_FINITE,
    as_kernel_array, check_float_dtype, exp_f32, is_finite, load, log_f32, merge_status, octet_sum, rows_per_chunk,
    run_locked, status_tuple, valid_probability,
)

MAX_PROBABILITY, MARGIN, ENTROPY, ENERGY, LOGIT_NORM, KL_TO_UNIFORM = range(6)
N_SCORES = 6


FLUSH = 64  # elements per flush of the float partial sums (kFlushOctets octets in the C++ kernels)
EXP_MIN = -708.0  # kExpMin: t = max(b u, EXP_MIN), so e^t t never overflows nor meets 0 * inf
EXP_MIN_F = F32(-87.0)  # kExpMinF


@numba.njit(**JIT)
def _load_row(s, i, table, single, fbuf, dbuf):
    """Row i into fbuf (float32 / float16 input: the single-precision path) or dbuf (float64)."""
    K = s.shape[1]
    if single:
        for k in range(K):
            fbuf[k] = F32(load(s[i, k], table))
    else:
        for k in range(K):
            dbuf[k] = load(s[i, k], table)


@numba.njit(**JIT)
def _check_row(buf, K, probabilities, i, st):
    """False (status set) on NaN/inf or a probability outside [0, 1]."""
    for k in range(K):
        v = np.float64(buf[k])
        if not is_finite(v):
            merge_status(st, SCORE_NOT_FINITE, i, k, v)
            return False
        if probabilities and not valid_probability(v):
            merge_status(st, PROBABILITY_OUT_OF_RANGE, i, k, v)
            return False
    return True


@numba.njit(**JIT)
def _top_two(buf, K):
    m1 = -np.inf
    m2 = -np.inf
    for k in range(K):
        v = np.float64(buf[k])
        if v > m1:
            m2 = m1
            m1 = v
        elif v > m2:
            m2 = v
    return m1, m2


@numba.njit(**JIT)
def _value_sums(buf, K):
    """sum and sum of squares, element k in lane k % 8 (the C++ lane order)."""
    d = np.zeros(8)
    q = np.zeros(8)
    for k in range(K):
        v = np.float64(buf[k])
        d[k % 8] += v
        q[k % 8] += v * v
    return octet_sum(d), octet_sum(q)


@numba.njit(**JIT)
def _softmax_f(fbuf, K, best, b, store, with_s1):
    """s0 = sum e^t, s1 = sum e^t t (t = max(b u, EXP_MIN_F)) of a float row: float lanes, partial sums
    flushed to double every FLUSH elements."""
    shift = F32(best)
    bf = F32(b)
    p0 = np.zeros(8, np.float32)
    p1 = np.zeros(8, np.float32)
    d0 = np.zeros(8)
    d1 = np.zeros(8)
    for k0 in range(0, K, 8):
        n = min(8, K - k0)
        for j in range(n):
            t = bf * (fbuf[k0 + j] - shift)
            t = t if t > EXP_MIN_F else EXP_MIN_F
            e = exp_f32(t)
            p0[j] += e
            p1[j] += e * t
            if store:
                fbuf[k0 + j] = e
        if (k0 + 8) % FLUSH == 0 or k0 + 8 >= K:
            for j in range(8):
                d0[j] += np.float64(p0[j])
                d1[j] += np.float64(p1[j])
                p0[j] = 0.0
                p1[j] = 0.0
    return octet_sum(d0), (octet_sum(d1) if with_s1 else 0.0)


@numba.njit(**JIT)
def _softmax_d(dbuf, K, best, b, store):
    """s0 = sum e^t, s1 = sum e^t t with t = max(b u, EXP_MIN) (as the C++ exp_nonpositive clamps)."""
    s0 = 0.0
    s1 = 0.0
    for k in range(K):
        t = max(b * (dbuf[k] - best), EXP_MIN)
        e = math.exp(t)
        s0 += e
        s1 += e * t
        if store:
            dbuf[k] = e
    return s0, s1


@numba.njit(**JIT)
def _entropy_f(fbuf, K):
    """sum p log p and sum log p of a float row (float lanes, flushed to double), and whether some p <= 0."""
    pa = np.zeros(8, np.float32)
    pl = np.zeros(8, np.float32)
    da = np.zeros(8)
    dl = np.zeros(8)
    zero = F32(0.0)
    has_zero = False
    for k0 in range(0, K, 8):
        n = min(8, K - k0)
        for j in range(n):
            p = fbuf[k0 + j]
            lg = zero
            if p > zero:
                lg = log_f32(p)
            else:
                has_zero = True
            pa[j] += p * lg
            pl[j] += lg
        if (k0 + 8) % FLUSH == 0 or k0 + 8 >= K:
            for j in range(8):
                da[j] += np.float64(pa[j])
                dl[j] += np.float64(pl[j])
                pa[j] = 0.0
                pl[j] = 0.0
    return octet_sum(da), octet_sum(dl), has_zero


@numba.njit(**JIT)
def _entropy_d(dbuf, K):
    plogp = 0.0
    sum_log = 0.0
    has_zero = False
    for k in range(K):
        p = dbuf[k]
        if p > 0.0:
            lg = math.log(p)
            plogp += p * lg
            sum_log += lg
        else:
            has_zero = True
    return plogp, sum_log, has_zero


@numba.njit(**JIT)
def _scaled_norm(buf, K):
    big = 0.0
    for k in range(K):
        big = max(big, abs(np.float64(buf[k])))
    if big == 0.0:
        return 0.0
    q = 0.0
    for k in range(K):
        v = np.float64(buf[k]) / big
        q += v * v
    return big * math.sqrt(q)


@numba.njit(**JIT)
def _scaled_mean(buf, K):
    """sum_k x_k / K in index order (the C++ scaled_mean), for rows whose plain sum overflows."""
    inv = 1.0 / K
    m = 0.0
    for k in range(K):
        m += np.float64(buf[k]) * inv
    return m


@numba.njit(**JIT)
def _scores_of_row(buf, K, from_logits, b, want, single, out, i):
    logK = math.log(K)
    m1, m2 = _top_two(buf, K)
    if from_logits:
        total, sq = _value_sums(buf, K)
        if single:
            s0, s1 = _softmax_f(buf, K, m1, b, False, want[ENTROPY])
        else:
            s0, s1 = _softmax_d(buf, K, m1, b, False)
        log_s0 = math.log(s0)
        if want[MAX_PROBABILITY]:
            out[MAX_PROBABILITY, i] = 1.0 / s0
        if want[MARGIN]:
            out[MARGIN, i] = (1.0 - math.exp(b * (m2 - m1))) / s0
        if want[ENTROPY]:
            out[ENTROPY, i] = min(max(log_s0 - s1 / s0, 0.0), logK)
        if want[ENERGY]:
            out[ENERGY, i] = -(m1 + log_s0 / b)
        if want[LOGIT_NORM]:
            out[LOGIT_NORM, i] = math.sqrt(sq) if 1e-280 < sq < 1e280 else _scaled_norm(buf, K)
        if want[KL_TO_UNIFORM]:
            mean = total / K if is_finite(total) else _scaled_mean(buf, K)
            out[KL_TO_UNIFORM, i] = max(log_s0 - logK - b * (mean - m1), 0.0)
    else:
        if want[MAX_PROBABILITY]:
            out[MAX_PROBABILITY, i] = m1
        if want[MARGIN]:
            out[MARGIN, i] = m1 - m2
        if want[ENTROPY] or want[KL_TO_UNIFORM]:
            if single:
                plogp, sum_log, has_zero = _entropy_f(buf, K)
            else:
                plogp, sum_log, has_zero = _entropy_d(buf, K)
            if want[ENTROPY]:
                out[ENTROPY, i] = max(-plogp, 0.0)
            if want[KL_TO_UNIFORM]:
                out[KL_TO_UNIFORM, i] = np.inf if has_zero else max(-logK - sum_log / K, 0.0)


@numba.njit(**JIT)
def _row_scores_chunk(s, from_logits, b, want, single, table, out, begin, end, st):
    K = s.shape[1]
    fbuf = np.empty(K, np.float32)
    dbuf = np.empty(K)
    for i in range(begin, end):
        _load_row(s, i, table, single, fbuf, dbuf)
        ok = _check_row(fbuf, K, not from_logits, i, st) if single else _check_row(dbuf, K, not from_logits, i, st)
        if not ok:
            for c in range(N_SCORES):
                if want[c]:
                    out[c, i] = np.nan
            continue
        if single:
            _scores_of_row(fbuf, K, from_logits, b, want, True, out, i)
        else:
            _scores_of_row(dbuf, K, from_logits, b, want, False, out, i)


@numba.njit(parallel=True, **JIT)
def _row_scores_driver(s, from_logits, b, want, single, table, out, parallel):
    N, K = s.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            _row_scores_chunk(s, from_logits, b, want, single, table, out, c * chunk, min(N, (c + 1) * chunk),
                              sts[c])
    else:
        for c in range(n_chunks):
            _row_scores_chunk(s, from_logits, b, want, single, table, out, c * chunk, min(N, (c + 1) * chunk),
                              sts[c])
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for c in range(n_chunks):
        merge_status(st, int(sts[c, 0]), int(sts[c, 1]), int(sts[c, 2]), sts[c, 3])
    return st


def _check_matrix(a, name):
    check_float_dtype(a, name)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must be 2-D with at least one column")


def row_scores(scores, from_logits, inverse_temperature, kinds):
    """Same contract as ``calibkit._core.row_scores``."""
    _check_matrix(scores, "scores")
    b = float(inverse_temperature)
    if not (b > 0.0 and math.isfinite(b)):
        raise ValueError("inverse_temperature must be a positive finite number")
    if not 0 < kinds < (1 << N_SCORES):
        raise ValueError("kinds must be a bit mask of score kinds")
    want = np.array([(kinds >> c) & 1 for c in range(N_SCORES)], dtype=np.bool_)
    if not from_logits and (want[ENERGY] or want[LOGIT_NORM]):
        raise ValueError("energy and logit_norm need logits (from_logits=True)")
    N, K = scores.shape
    out = np.empty((N_SCORES, N))
    st = run_locked(_row_scores_driver, as_kernel_array(scores), bool(from_logits), b, want,
                    scores.dtype != np.float64, HALF_TABLE, out, N * K >= MIN_PARALLEL_ELEMENTS)
    d = {c: out[c].copy() for c in range(N_SCORES) if want[c]}
    d["status"] = status_tuple(st)
    return d


@numba.njit(**JIT)
def _member(m, i, from_logits, single, table, fbuf, dbuf, pbuf, st):
    """Probabilities of member row i into pbuf; returns (ok, entropy, scale, row max) as the C++ RowWork::member."""
    K = m.shape[1]
    _load_row(m, i, table, single, fbuf, dbuf)
    ok = _check_row(fbuf, K, not from_logits, i, st) if single else _check_row(dbuf, K, not from_logits, i, st)
    if not ok:
        return False, 0.0, 1.0, 0.0
    if from_logits:
        if single:
            best, _ = _top_two(fbuf, K)
            s0, s1 = _softmax_f(fbuf, K, best, 1.0, True, True)
        else:
            best, _ = _top_two(dbuf, K)
            s0, s1 = _softmax_d(dbuf, K, best, 1.0, True)
        scale = 1.0 / s0
        h = min(max(math.log(s0) - s1 / s0, 0.0), math.log(K))
    else:
        best = 0.0
        scale = 1.0
        if single:
            plogp, _, _ = _entropy_f(fbuf, K)
        else:
            plogp, _, _ = _entropy_d(dbuf, K)
        h = max(-plogp, 0.0)
    for k in range(K):
        pbuf[k] = (np.float64(fbuf[k]) if single else dbuf[k]) * scale
    return True, h, scale, best


@numba.njit(**JIT)
def _member_value(m, i, c, from_logits, single, table, scale, row_max):
    """p_c of member row i again (the same bits as _member)."""
    v = load(m[i, c], table)
    if not from_logits:
        return v * scale
    if single:
        return np.float64(exp_f32(F32(1.0) * (F32(v) - F32(row_max)))) * scale
    return math.exp(max(1.0 * (v - row_max), EXP_MIN)) * scale


@numba.njit(**JIT)
def _welford(p, K, count, total, m2):
    inv_old = 1.0 / count if count > 0 else 0.0
    inv_new = 1.0 / (count + 1)
    for k in range(K):
        old_mean = total[k] * inv_old
        total[k] += p[k]
        new_mean = total[k] * inv_new
        m2[k] += (p[k] - old_mean) * (p[k] - new_mean)


@numba.njit(**JIT)
def _decompose_chunk(x, from_logits, single, table, mean, res, pred, begin, end, st):
    S, _, K = x.shape
    fbuf = np.empty(K, np.float32)
    dbuf = np.empty(K)
    pbuf = np.empty(K)
    total = np.empty(K)
    mrow = np.empty(K)
    scales = np.empty(S)
    maxes = np.empty(S)
    member_st = np.empty(4)
    inv = 1.0 / S
    for i in range(begin, end):
        total[:] = 0.0
        h_sum = 0.0
        ok = True
        for s in range(S):
            member_st[0] = 0.0
            member_st[1] = -1.0
            member_st[2] = -1.0
            ok, h, scales[s], maxes[s] = _member(x[s], i, from_logits, single, table, fbuf, dbuf, pbuf, member_st)
            if not ok:
                merge_status(st, int(member_st[0]), i, s * K + int(member_st[2]), member_st[3])
                break
            for k in range(K):
                total[k] += pbuf[k]
            h_sum += h
        if not ok:
            mean[i, :] = np.nan
            res[:, i] = np.nan
            pred[i] = -1
            continue
        best = 0
        for k in range(K):
            mrow[k] = total[k] * inv
            mean[i, k] = mrow[k]
            if mrow[k] > mrow[best]:
                best = k
        dev = 0.0
        for s in range(S):
            p = _member_value(x[s], i, best, from_logits, single, table, scales[s], maxes[s])
            dev += (p - mrow[best]) * (p - mrow[best])
        plogp, _, _ = _entropy_d(mrow, K)
        tot = max(-plogp, 0.0)
        alea = h_sum * inv
        res[0, i] = tot
        res[1, i] = alea
        res[2, i] = max(tot - alea, 0.0)
        res[3, i] = dev * inv
        pred[i] = best


@numba.njit(parallel=True, **JIT)
def _decompose_driver(x, from_logits, single, table, mean, res, pred, parallel):
    S, N, K = x.shape
    chunk = rows_per_chunk(S * K, 1)
    n_chunks = (N + chunk - 1) // chunk
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            _decompose_chunk(x, from_logits, single, table, mean, res, pred, c * chunk, min(N, (c + 1) * chunk),
                             sts[c])
    else:
        for c in range(n_chunks):
            _decompose_chunk(x, from_logits, single, table, mean, res, pred, c * chunk, min(N, (c + 1) * chunk),
                             sts[c])
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for c in range(n_chunks):
        merge_status(st, int(sts[c, 0]), int(sts[c, 1]), int(sts[c, 2]), sts[c, 3])
    return st


def ensemble_decompose(samples, from_logits):
    """Same contract as ``calibkit._core.ensemble_decompose``."""
    check_float_dtype(samples, "samples")
    if samples.ndim != 3:
        raise ValueError("samples must be 3-D (S, N, K)")
    S, N, K = samples.shape
    if S < 1 or N < 1 or K < 1:
        raise ValueError("samples must not be empty")
    mean = np.empty((N, K))
    res = np.empty((4, N))
    pred = np.empty(N, np.int64)
    st = run_locked(_decompose_driver, as_kernel_array(samples), bool(from_logits), samples.dtype != np.float64,
                    HALF_TABLE, mean, res, pred, S * N * K >= MIN_PARALLEL_ELEMENTS)
    return {"mean": mean, "total": res[0].copy(), "aleatoric": res[1].copy(), "epistemic": res[2].copy(),
            "variance": res[3].copy(), "prediction": pred, "status": status_tuple(st)}


@numba.njit(**JIT)
def _update_chunk(m, from_logits, single, count, table, total, m2, h_sum, apply, begin, end, st):
    K = m.shape[1]
    fbuf = np.empty(K, np.float32)
    dbuf = np.empty(K)
    pbuf = np.empty(K)
    for i in range(begin, end):
        ok, h, _, _ = _member(m, i, from_logits, single, table, fbuf, dbuf, pbuf, st)
        if not ok:
            if not apply:
                return
            continue
        if not apply:
            continue
        _welford(pbuf, K, count, total[i], m2[i])
        h_sum[i] += h


@numba.njit(parallel=True, **JIT)
def _update_driver(m, from_logits, single, count, table, total, m2, h_sum, apply, parallel):
    N, K = m.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            _update_chunk(m, from_logits, single, count, table, total, m2, h_sum, apply, c * chunk,
                          min(N, (c + 1) * chunk), sts[c])
    else:
        for c in range(n_chunks):
            _update_chunk(m, from_logits, single, count, table, total, m2, h_sum, apply, c * chunk,
                          min(N, (c + 1) * chunk), sts[c])
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for c in range(n_chunks):
        merge_status(st, int(sts[c, 0]), int(sts[c, 1]), int(sts[c, 2]), sts[c, 3])
    return st


def _state(a, name, size):
    if (not isinstance(a, np.ndarray) or a.dtype != np.float64 or not a.flags.c_contiguous or not a.flags.writeable
            or a.size != size):
        raise ValueError(f"{name} must be a writeable C-contiguous float64 array of {size} elements")
    return a


def ensemble_update(member, from_logits, count, sum, m2, entropy_sum):  # noqa: A002 - the C++ argument name
    """Same contract as ``calibkit._core.ensemble_update``."""
    _check_matrix(member, "member")
    if count < 0:
        raise ValueError("count must be >= 0")
    N, K = member.shape
    total = _state(sum, "sum", N * K).reshape(N, K)
    sq = _state(m2, "m2", N * K).reshape(N, K)
    h = _state(entropy_sum, "entropy_sum", N)
    m = as_kernel_array(member)
    for apply in (False, True):
        st = run_locked(_update_driver, m, bool(from_logits), member.dtype != np.float64, int(count), HALF_TABLE,
                        total, sq, h, apply, N * K >= MIN_PARALLEL_ELEMENTS)
        if st[0] != 0:
            return status_tuple(st)
    return (0, -1, -1, 0.0)


@numba.njit(**JIT)
def _confidence_chunk(z, labels, has_labels, single, grad_scale, table, grad, begin, end, acc, st):
    K = z.shape[1]
    fbuf = np.empty(K, np.float32)
    dbuf = np.empty(K)
    logK = math.log(K)
    invK = 1.0 / K
    for i in range(begin, end):
        y = -1
        if has_labels:
            y = labels[i]
            if y < 0 or y >= K:
                merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
                continue
        _load_row(z, i, table, single, fbuf, dbuf)
        ok = _check_row(fbuf, K, False, i, st) if single else _check_row(dbuf, K, False, i, st)
        if not ok:
            continue
        if single:
            z_label = np.float64(fbuf[y]) if has_labels else 0.0
            total, _ = _value_sums(fbuf, K)
            best, _ = _top_two(fbuf, K)
            s0, _ = _softmax_f(fbuf, K, best, 1.0, True, False)
        else:
            z_label = dbuf[y] if has_labels else 0.0
            total, _ = _value_sums(dbuf, K)
            best, _ = _top_two(dbuf, K)
            s0, _ = _softmax_d(dbuf, K, best, 1.0, True)
        log_s0 = math.log(s0)
        inv = 1.0 / s0
        if has_labels:
            acc[0] += log_s0 - (z_label - best)
        else:
            acc[0] += max(log_s0 - logK - (total * invK - best), 0.0)
        for k in range(K):
            e = np.float64(fbuf[k]) if single else dbuf[k]
            if has_labels:
                grad[i, k] = grad_scale * (e * inv - (1.0 if k == y else 0.0))
            else:
                grad[i, k] = grad_scale * (e * inv - invK)


@numba.njit(parallel=True, **JIT)
def _confidence_driver(z, labels, has_labels, single, grad_scale, table, grad, parallel):
    N, K = z.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    acc = np.zeros((n_chunks, 1))
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            _confidence_chunk(z, labels, has_labels, single, grad_scale, table, grad, c * chunk,
                              min(N, (c + 1) * chunk), acc[c], sts[c])
    else:
        for c in range(n_chunks):
            _confidence_chunk(z, labels, has_labels, single, grad_scale, table, grad, c * chunk,
                              min(N, (c + 1) * chunk), acc[c], sts[c])
    total = 0.0
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for c in range(n_chunks):
        total += acc[c, 0]
        merge_status(st, int(sts[c, 0]), int(sts[c, 1]), int(sts[c, 2]), sts[c, 3])
    return total, st


def confidence_loss(logits_in, labels, logits_out, beta):
    """Same contract as ``calibkit._core.confidence_loss``."""
    _check_matrix(logits_in, "logits_in")
    _check_matrix(logits_out, "logits_out")
    if logits_in.dtype != logits_out.dtype:
        raise TypeError("logits_in and logits_out must have the same dtype")
    if labels.dtype != np.int64 or labels.ndim != 1 or labels.shape[0] != logits_in.shape[0]:
        raise ValueError("labels must be a 1-D int64 array of length N")
    if not (beta >= 0.0 and math.isfinite(beta)):
        raise ValueError("beta must be a finite number >= 0")
    (ni, K), (no, K2) = logits_in.shape, logits_out.shape
    if ni < 1 or no < 1:
        raise ValueError("logits_in and logits_out must not be empty")
    if K != K2:
        raise ValueError("logits_in and logits_out must have the same number of columns")
    out_dtype = np.float64 if logits_in.dtype == np.float64 else np.float32
    grad_in = np.empty((ni, K), out_dtype)
    grad_out = np.empty((no, K), out_dtype)
    single = logits_in.dtype != np.float64
    nll, st_in = run_locked(_confidence_driver, as_kernel_array(logits_in), labels, True, single, 1.0 / ni,
                            HALF_TABLE, grad_in, ni * K >= MIN_PARALLEL_ELEMENTS)
    kl, st_out = run_locked(_confidence_driver, as_kernel_array(logits_out), labels, False, single,
                            float(beta) / no, HALF_TABLE, grad_out, no * K >= MIN_PARALLEL_ELEMENTS)
    return {"nll": nll / ni, "kl": kl / no, "grad_in": grad_in, "grad_out": grad_out,
            "status_in": status_tuple(st_in), "status_out": status_tuple(st_out)}


__all__ = ["confidence_loss", "ensemble_decompose", "ensemble_update", "row_scores"]
