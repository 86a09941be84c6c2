"""Numba twins of cpp/include/calibkit/uncertainty.hpp: per-sample scores, ensemble decomposition, confidence loss.

Float32 / float16 rows take the single-precision path of the C++ kernels: the row in a float buffer padded with
zeros to a multiple of 8, exp_f32 / log_f32 computed by plain loops over that buffer (LLVM vectorises them), then
the float lane sums (element k in lane k % 8) flushed into double lanes every FLUSH elements, as the C++ kernels
add them. Float64 rows take the double path. The two paths are separate functions, so that each is typed only
for its own buffer type.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._common import (
    F32, HALF_TABLE, JITF, LABEL_OUT_OF_RANGE, LANE_FLUSH, LN2_HI, LN2_LO, MIN_PARALLEL_ELEMENTS,
    PROBABILITY_OUT_OF_RANGE, SCORE_NOT_FINITE, as_kernel_array, check_float_dtype, exp_f32, is_finite,
    lane_max_f32, lane_sums_f32, lane_top_two_f32, load, log_positive, merge_status, rows_per_chunk, run_locked,
    status_tuple, valid_probability,
)


MAX_PROBABILITY, MARGIN, ENTROPY, ENERGY, LOGIT_NORM, KL_TO_UNIFORM = range(6)
N_SCORES = 6


FLUSH = LANE_FLUSH  # elements per flush of the float partial sums (kFlushOctets octets in the C++ kernels)
EXP_MIN = -708.0  # kExpMin: t = max(b u, EXP_MIN), so e^t t never overflows nor meets 0 * inf
EXP_MIN_F = F32(-87.0)  # kExpMinF
F32_ZERO = F32(0.0)
F32_ONE = F32(1.0)
F32_NEG_INF = F32(-np.inf)
# The float bounds equivalent to [-PROBABILITY_TOLERANCE, 1 + PROBABILITY_TOLERANCE] for float values (scan_row_f).
PROB_LO_F = F32(-9.99999997e-07)
PROB_HI_F = F32(1.00000095)
_TINY_F = F32(1.17549435e-38)
_TWO24_F = F32(16777216.0)
_SQRT2_F = F32(1.4142135623730951)
_HALF_F = F32(0.5)
_EXP_BIAS_F = F32(8388608.0 + 127.0)
_TWENTY_FOUR_F = F32(24.0)
_L9, _L7, _L5, _L3 = F32(1.0 / 9.0), F32(1.0 / 7.0), F32(1.0 / 5.0), F32(1.0 / 3.0)


@intrinsic
def _f32_bits(typingctx, x):
    """The bits of a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, n):
    """The float32 whose bits are the low 32 bits of the integer n."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if n.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(n), codegen


@numba.njit(inline="always", **JITF)
def _log_f32(x):
    """log(x) for float32 x > 0: the same bits as simd.hpp's log_f32, exponent and
    mantissa taken from the bits (subnormals scaled by 2^24 first), straight-line code that LLVM vectorises."""
    tiny = x < _TINY_F
    x = x * _TWO24_F if tiny else x
    bits = _f32_bits(x)
    # the exponent as a float from its bits (2^23 + field, minus 2^23 + 127: exact), not through a 64-bit integer
    # (whose conversion to float AVX2 lacks, which kept this loop scalar)
    ef = _bits_f32(((bits >> 23) & 0xFF) | 0x4B000000) - _EXP_BIAS_F
    ef = ef - _TWENTY_FOUR_F if tiny else ef
    m = _bits_f32((bits & 0x007FFFFF) | 0x3F800000)  # [1, 2)
    big = m > _SQRT2_F
    m = m * _HALF_F if big else m
    ef = ef + F32_ONE if big else ef
    f = (m - F32_ONE) / (m + F32_ONE)
    f2 = f * f
    s = _L9
    s = _L7 + f2 * s
    s = _L5 + f2 * s
    s = _L3 + f2 * s
    s = F32_ONE + f2 * s
    log_m = (f + f) * s
    return ef * LN2_HI + (log_m + ef * LN2_LO)


@numba.njit(inline="always", **JITF)
def _lane_sums_f(x, y, Kp):
    """(sum_k x_k, sum_k x_k y_k) of float buffers of Kp (a multiple of 8) elements as the C++ float path adds
    them: element k in float lane k % 8, the float lanes flushed into double lanes every FLUSH elements, the
    double lanes combined by octet_sum (_common.lane_sums_f32, on <8 x float> vectors)."""
    return lane_sums_f32(x, y, Kp, 2)


@numba.njit(inline="always", **JITF)
def _value_sums(buf, Kp):
    """sum and sum of squares of a padded row (float or double) in double lanes (element k in lane k % 8), octet_sum."""
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = 0.0
    q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = 0.0
    for k0 in range(0, Kp, 8):
        v0, v1 = np.float64(buf[k0]), np.float64(buf[k0 + 1])
        v2, v3 = np.float64(buf[k0 + 2]), np.float64(buf[k0 + 3])
        v4, v5 = np.float64(buf[k0 + 4]), np.float64(buf[k0 + 5])
        v6, v7 = np.float64(buf[k0 + 6]), np.float64(buf[k0 + 7])
        d0 += v0
        d1 += v1
        d2 += v2
        d3 += v3
        d4 += v4
        d5 += v5
        d6 += v6
        d7 += v7
        q0 += v0 * v0
        q1 += v1 * v1
        q2 += v2 * v2
        q3 += v3 * v3
        q4 += v4 * v4
        q5 += v5 * v5
        q6 += v6 * v6
        q7 += v7 * v7
    return ((d0 + d4) + (d1 + d5)) + ((d2 + d6) + (d3 + d7)), ((q0 + q4) + (q1 + q5)) + ((q2 + q6) + (q3 + q7))


@numba.njit(inline="always", **JITF)
def _value_products(x, y, Kp):
    """(sum_k x_k, sum_k x_k y_k) of padded float64 rows, element k in lane k % 8, octet_sum."""
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = 0.0
    q0 = q1 = q2 = q3 = q4 = q5 = q6 = q7 = 0.0
    for k0 in range(0, Kp, 8):
        x0, x1, x2, x3 = x[k0], x[k0 + 1], x[k0 + 2], x[k0 + 3]
        x4, x5, x6, x7 = x[k0 + 4], x[k0 + 5], x[k0 + 6], x[k0 + 7]
        d0 += x0
        d1 += x1
        d2 += x2
        d3 += x3
        d4 += x4
        d5 += x5
        d6 += x6
        d7 += x7
        q0 += x0 * y[k0]
        q1 += x1 * y[k0 + 1]
        q2 += x2 * y[k0 + 2]
        q3 += x3 * y[k0 + 3]
        q4 += x4 * y[k0 + 4]
        q5 += x5 * y[k0 + 5]
        q6 += x6 * y[k0 + 6]
        q7 += x7 * y[k0 + 7]
    return ((d0 + d4) + (d1 + d5)) + ((d2 + d6) + (d3 + d7)), ((q0 + q4) + (q1 + q5)) + ((q2 + q6) + (q3 + q7))


@numba.njit(inline="always", **JITF)
def _max_f(buf, K, probabilities):
    """(largest value, number of bad elements) of a float row: NaN / inf, or (probabilities) outside the float
    bounds of [0, 1]. Eight lane maxima (the maximum is exact in any order) in <8 x float> vectors."""
    K8 = K - K % 8
    lanes = lane_max_f32(buf, K8)
    m0, m1, m2, m3, m4, m5, m6, m7 = lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7]
    bad = np.int64((((lanes[16] + lanes[17]) + (lanes[18] + lanes[19]))
                    + ((lanes[20] + lanes[21]) + (lanes[22] + lanes[23]))) != F32_ZERO)  # NaN after a NaN / inf
    for k in range(K8, K):
        v = buf[k]
        m0 = m0 if m0 > v else v
        bad += (v - v) != F32_ZERO
    if probabilities:
        for k in range(K):
            v = buf[k]
            bad += (v < PROB_LO_F) | (v > PROB_HI_F)
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7))), bad


@numba.njit(inline="always", **JITF)
def _fold_second(m2, seen, mj, m1):
    """Fold lane maximum mj into the running second largest m2, skipping the first lane maximum equal to m1."""
    if mj == m1 and not seen:
        return m2, True
    return (m2 if m2 > mj else mj), seen


@numba.njit(inline="always", **JITF)
def _top_two_f(buf, K):
    """(largest, second largest (the largest again when it occurs twice), number of NaN / inf) of a float logit
    row in one read: per lane j the two largest values seen (s_j = max(s_j, min(m_j, v)), m_j = max(m_j, v)),
    then the lanes combined. Order statistics are exact in any order: the same values as _max_f and _second_f."""
    K8 = K - K % 8
    lanes = lane_top_two_f32(buf, K8)
    m0, m1, m2, m3, m4, m5, m6, m7 = lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7]
    s0, s1, s2, s3 = lanes[8], lanes[9], lanes[10], lanes[11]
    s4, s5, s6, s7 = lanes[12], lanes[13], lanes[14], lanes[15]
    c0, c1, c2, c3 = lanes[16], lanes[17], lanes[18], lanes[19]
    c4, c5, c6, c7 = lanes[20], lanes[21], lanes[22], lanes[23]
    for k in range(K8, K):
        v = buf[k]
        t = m0 if m0 < v else v
        s0 = s0 if s0 > t else t
        m0 = m0 if m0 > v else v
        c0 += v - v
    bad = (((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7))) != F32_ZERO  # NaN when some v is NaN or inf
    best = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    second = max(max(max(s0, s1), max(s2, s3)), max(max(s4, s5), max(s6, s7)))
    seen = False
    second, seen = _fold_second(second, seen, m0, best)
    second, seen = _fold_second(second, seen, m1, best)
    second, seen = _fold_second(second, seen, m2, best)
    second, seen = _fold_second(second, seen, m3, best)
    second, seen = _fold_second(second, seen, m4, best)
    second, seen = _fold_second(second, seen, m5, best)
    second, seen = _fold_second(second, seen, m6, best)
    second, seen = _fold_second(second, seen, m7, best)
    return best, second, np.int64(bad)


@numba.njit(inline="always", **JITF)
def _second_f(buf, K, m1):
    """The second largest value of a float row whose largest is m1 (m1 again when it occurs twice)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F32_NEG_INF
    ties = 0
    K8 = K - K % 8
    for k0 in range(0, K8, 8):
        v0, v1, v2, v3 = buf[k0], buf[k0 + 1], buf[k0 + 2], buf[k0 + 3]
        v4, v5, v6, v7 = buf[k0 + 4], buf[k0 + 5], buf[k0 + 6], buf[k0 + 7]
        c0 = v0 if v0 < m1 else F32_NEG_INF
        c1 = v1 if v1 < m1 else F32_NEG_INF
        c2 = v2 if v2 < m1 else F32_NEG_INF
        c3 = v3 if v3 < m1 else F32_NEG_INF
        c4 = v4 if v4 < m1 else F32_NEG_INF
        c5 = v5 if v5 < m1 else F32_NEG_INF
        c6 = v6 if v6 < m1 else F32_NEG_INF
        c7 = v7 if v7 < m1 else F32_NEG_INF
        s0 = s0 if s0 > c0 else c0
        s1 = s1 if s1 > c1 else c1
        s2 = s2 if s2 > c2 else c2
        s3 = s3 if s3 > c3 else c3
        s4 = s4 if s4 > c4 else c4
        s5 = s5 if s5 > c5 else c5
        s6 = s6 if s6 > c6 else c6
        s7 = s7 if s7 > c7 else c7
        ties += ((v0 == m1) + (v1 == m1) + (v2 == m1) + (v3 == m1) + (v4 == m1) + (v5 == m1) + (v6 == m1)
                 + (v7 == m1))
    for k in range(K8, K):
        v = buf[k]
        c = v if v < m1 else F32_NEG_INF
        s0 = s0 if s0 > c else c
        ties += v == m1
    if ties > 1:
        return m1
    return max(max(max(s0, s1), max(s2, s3)), max(max(s4, s5), max(s6, s7)))


@numba.njit(inline="always", **JITF)
def _load_f(s, i, table, buf):
    """Row i of s (any dtype) into the float buffer buf (its padding stays 0)."""
    K = s.shape[1]
    for k in range(K):
        buf[k] = F32(load(s[i, k], table))


@numba.njit(inline="always", **JITF)
def _softmax_f(buf, K, best, b, ebuf, tbuf):
    """s0 = sum e^t, s1 = sum e^t t (t = max(b u, EXP_MIN_F), u = z - best) of a padded float row: e^t into
    ebuf, t into tbuf (their padding stays 0), then the float lane sums."""
    shift = F32(best)
    bf = F32(b)
    for k in range(K):
        t = bf * (buf[k] - shift)
        t = t if t > EXP_MIN_F else EXP_MIN_F
        tbuf[k] = t
        ebuf[k] = exp_f32(t)
    return _lane_sums_f(ebuf, tbuf, ebuf.shape[0])


@numba.njit(inline="always", **JITF)
def _entropy_f(buf, K, lbuf):
    """(sum p log p, sum log p, some p <= 0) of a padded float probability row; log p into lbuf (0 where
    p <= 0; the padding stays 0)."""
    zeros = 0
    for k in range(K):
        p = buf[k]
        positive = p > F32_ZERO
        zeros += not positive
        lbuf[k] = _log_f32(p if positive else F32_ONE) if positive else F32_ZERO
    sum_log, plogp = _lane_sums_f(lbuf, buf, lbuf.shape[0])
    return plogp, sum_log, zeros > 0


@numba.njit(**JITF)
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


@numba.njit(**JITF)
def _scan_d(buf, K, probabilities):
    """(m1, m2, number of bad elements) of a float64 row: the two largest values (equal if tied)."""
    m1 = -np.inf
    m2 = -np.inf
    bad = 0
    for k in range(K):
        v = buf[k]
        bad += not is_finite(v)
        if probabilities:
            bad += not valid_probability(v)
        if v > m1:
            m2 = m1
            m1 = v
        elif v > m2:
            m2 = v
    return m1, m2, bad


@numba.njit(**JITF)
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


@numba.njit(inline="always", **JITF)
def _entropy_d(dbuf, K, lbuf):
    """(sum p log p, sum log p, some p <= 0) of a padded float64 probability row as the C++ entropy_sums: log p
    (0 where p <= 0) into lbuf (its padding stays 0), then the sums in lane k % 8, octet_sum."""
    zeros = 0
    for k in range(K):
        p = dbuf[k]
        positive = p > 0.0
        zeros += not positive
        lbuf[k] = log_positive(p if positive else 1.0) if positive else 0.0
    sum_log, plogp = _value_products(lbuf, dbuf, lbuf.shape[0])
    return plogp, sum_log, zeros > 0


@numba.njit(**JITF)
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


@numba.njit(**JITF)
def _scaled_mean(buf, K):
    """sum_k x_k / K in index order (the C++ scaled_mean), for rows whose plain sum overflows."""
    inv = 1.0 / K
    m = 0.0
    for k in range(K):
        m += np.float64(buf[k]) * inv
    return m


@numba.njit(inline="always", **JITF)
def _logit_scores(buf, K, b, want, m1, m2, total, sq, s0, s1, out, i):
    logK = math.log(K)
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


@numba.njit(inline="always", **JITF)
def _probability_scores(K, want, m1, m2, plogp, sum_log, has_zero, out, i):
    if want[MAX_PROBABILITY]:
        out[MAX_PROBABILITY, i] = m1
    if want[MARGIN]:
        out[MARGIN, i] = m1 - m2
    if want[ENTROPY]:
        out[ENTROPY, i] = max(-plogp, 0.0)
    if want[KL_TO_UNIFORM]:
        out[KL_TO_UNIFORM, i] = np.inf if has_zero else max(-math.log(K) - sum_log / K, 0.0)


@numba.njit(inline="always", **JITF)
def _nan_scores(want, out, i):
    for c in range(N_SCORES):
        if want[c]:
            out[c, i] = np.nan


@numba.njit(**JITF)
def _row_scores_chunk_f(s, from_logits, b, want, table, out, begin, end, st):
    """The float32 / float16 rows of [begin, end)."""
    K = s.shape[1]
    Kp = (K + 7) // 8 * 8
    buf = np.zeros(Kp, np.float32)
    ebuf = np.zeros(Kp, np.float32)
    tbuf = np.zeros(Kp, np.float32)
    sums = from_logits and (want[LOGIT_NORM] or want[KL_TO_UNIFORM])
    for i in range(begin, end):
        _load_f(s, i, table, buf)
        if from_logits and want[MARGIN]:  # both in one read
            m1f, m2f, bad = _top_two_f(buf, K)
        else:
            m1f, bad = _max_f(buf, K, not from_logits)
            m2f = F32_NEG_INF
        if bad != 0 and not _check_row(buf, K, not from_logits, i, st):
            _nan_scores(want, out, i)
            continue
        m1 = np.float64(m1f)
        m2 = np.float64(m2f if from_logits else _second_f(buf, K, m1f)) if want[MARGIN] else -np.inf
        if from_logits:
            total, sq = _value_sums(buf, Kp) if sums else (0.0, 0.0)
            s0, s1 = _softmax_f(buf, K, m1, b, ebuf, tbuf)
            _logit_scores(buf, K, b, want, m1, m2, total, sq, s0, s1, out, i)
        else:
            plogp, sum_log, has_zero = 0.0, 0.0, False
            if want[ENTROPY] or want[KL_TO_UNIFORM]:
                plogp, sum_log, has_zero = _entropy_f(buf, K, tbuf)
            _probability_scores(K, want, m1, m2, plogp, sum_log, has_zero, out, i)


@numba.njit(**JITF)
def _row_scores_chunk_d(s, from_logits, b, want, table, out, begin, end, st):
    """The float64 rows of [begin, end)."""
    K = s.shape[1]
    Kp = (K + 7) // 8 * 8
    dbuf = np.zeros(Kp)
    lbufd = np.zeros(Kp)
    sums = from_logits and (want[LOGIT_NORM] or want[KL_TO_UNIFORM])
    for i in range(begin, end):
        for k in range(K):
            dbuf[k] = load(s[i, k], table)
        m1, m2, bad = _scan_d(dbuf, K, not from_logits)
        if bad != 0 and not _check_row(dbuf, K, not from_logits, i, st):
            _nan_scores(want, out, i)
            continue
        if from_logits:
            total, sq = _value_sums(dbuf, Kp) if sums else (0.0, 0.0)
            s0, s1 = _softmax_d(dbuf, K, m1, b, False)
            _logit_scores(dbuf, K, b, want, m1, m2, total, sq, s0, s1, out, i)
        else:
            plogp, sum_log, has_zero = 0.0, 0.0, False
            if want[ENTROPY] or want[KL_TO_UNIFORM]:
                plogp, sum_log, has_zero = _entropy_d(dbuf, K, lbufd)
            _probability_scores(K, want, m1, m2, plogp, sum_log, has_zero, out, i)


@numba.njit(parallel=True, **JITF)
def _row_scores_driver(s, from_logits, b, want, single, table, out, parallel):
    N, K = s.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    sts = np.zeros((n_chunks, 4))
    sts[:, 1:3] = -1.0
    if parallel:
        for c in numba.prange(n_chunks):
            if single:
                _row_scores_chunk_f(s, from_logits, b, want, table, out, c * chunk, min(N, (c + 1) * chunk), sts[c])
            else:
                _row_scores_chunk_d(s, from_logits, b, want, table, out, c * chunk, min(N, (c + 1) * chunk), sts[c])
    else:
        for c in range(n_chunks):
            if single:
                _row_scores_chunk_f(s, from_logits, b, want, table, out, c * chunk, min(N, (c + 1) * chunk), sts[c])
            else:
                _row_scores_chunk_d(s, from_logits, b, want, table, out, c * chunk, min(N, (c + 1) * chunk), sts[c])
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


@numba.njit(inline="always", **JITF)
def _member_f(m, i, from_logits, table, buf, ebuf, tbuf, st):
    """Member row i (float path) as the C++ RowWork::member: (ok, entropy, scale, row max, values) with the
    probabilities p_k = values[k] * scale (values: ebuf from logits, buf from probabilities)."""
    K = m.shape[1]
    _load_f(m, i, table, buf)
    m1f, bad = _max_f(buf, K, not from_logits)
    if bad != 0 and not _check_row(buf, K, not from_logits, i, st):
        return False, 0.0, 1.0, 0.0, buf
    if from_logits:
        best = np.float64(m1f)
        s0, s1 = _softmax_f(buf, K, best, 1.0, ebuf, tbuf)
        return True, min(max(math.log(s0) - s1 / s0, 0.0), math.log(K)), 1.0 / s0, best, ebuf
    plogp, _, _ = _entropy_f(buf, K, tbuf)
    return True, max(-plogp, 0.0), 1.0, 0.0, buf


@numba.njit(inline="always", **JITF)
def _member_d(m, i, from_logits, table, dbuf, lbuf, st):
    """Member row i (double path): (ok, entropy, scale, row max), dbuf[k] * scale = p_k."""
    K = m.shape[1]
    for k in range(K):
        dbuf[k] = load(m[i, k], table)
    best, _, bad = _scan_d(dbuf, K, not from_logits)
    if bad != 0 and not _check_row(dbuf, K, not from_logits, i, st):
        return False, 0.0, 1.0, 0.0
    if from_logits:
        s0, s1 = _softmax_d(dbuf, K, best, 1.0, True)
        return True, min(max(math.log(s0) - s1 / s0, 0.0), math.log(K)), 1.0 / s0, best
    plogp, _, _ = _entropy_d(dbuf, K, lbuf)
    return True, max(-plogp, 0.0), 1.0, 0.0


@numba.njit(inline="always", **JITF)
def _member_value(m, i, c, from_logits, single, table, scale, row_max):
    """p_c of member row i again (the same bits as _member_f / _member_d)."""
    v = load(m[i, c], table)
    if not from_logits:
        return v * scale
    if single:
        return np.float64(exp_f32(F32(1.0) * (F32(v) - F32(row_max)))) * scale
    return math.exp(max(1.0 * (v - row_max), EXP_MIN)) * scale


@numba.njit(**JITF)
def _welford(p, K, count, total, m2):
    inv_old = 1.0 / count if count > 0 else 0.0
    inv_new = 1.0 / (count + 1)
    for k in range(K):
        old_mean = total[k] * inv_old
        total[k] += p[k]
        new_mean = total[k] * inv_new
        m2[k] += (p[k] - old_mean) * (p[k] - new_mean)


@numba.njit(**JITF)
def _decompose_chunk(x, from_logits, single, table, mean, res, pred, begin, end, st):
    S, _, K = x.shape
    Kp = (K + 7) // 8 * 8
    buf = np.zeros(Kp, np.float32)
    ebuf = np.zeros(Kp, np.float32)
    tbuf = np.zeros(Kp, np.float32)
    dbuf = np.zeros(Kp)
    lbufd = np.zeros(Kp)
    total = np.empty(K)
    mrow = np.zeros(Kp)
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
            if single:
                ok, h, scale, mx, vals = _member_f(x[s], i, from_logits, table, buf, ebuf, tbuf, member_st)
                if ok:
                    for k in range(K):
                        total[k] += np.float64(vals[k]) * scale
            else:
                ok, h, scale, mx = _member_d(x[s], i, from_logits, table, dbuf, lbufd, member_st)
                if ok:
                    for k in range(K):
                        total[k] += dbuf[k] * scale
            if not ok:
                merge_status(st, int(member_st[0]), i, s * K + int(member_st[2]), member_st[3])
                break
            scales[s] = scale
            maxes[s] = mx
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
        plogp, _, _ = _entropy_d(mrow, K, lbufd)
        tot = max(-plogp, 0.0)
        alea = h_sum * inv
        res[0, i] = tot
        res[1, i] = alea
        res[2, i] = max(tot - alea, 0.0)
        res[3, i] = dev * inv
        pred[i] = best


@numba.njit(parallel=True, **JITF)
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


@numba.njit(**JITF)
def _update_chunk(m, from_logits, single, count, table, total, m2, h_sum, apply, begin, end, st):
    K = m.shape[1]
    Kp = (K + 7) // 8 * 8
    buf = np.zeros(Kp, np.float32)
    ebuf = np.zeros(Kp, np.float32)
    tbuf = np.zeros(Kp, np.float32)
    dbuf = np.zeros(Kp)
    lbufd = np.zeros(Kp)
    pbuf = np.empty(K)
    for i in range(begin, end):
        if single:
            ok, h, scale, _, vals = _member_f(m, i, from_logits, table, buf, ebuf, tbuf, st)
            if ok and apply:
                for k in range(K):
                    pbuf[k] = np.float64(vals[k]) * scale
        else:
            ok, h, scale, _ = _member_d(m, i, from_logits, table, dbuf, lbufd, st)
            if ok and apply:
                for k in range(K):
                    pbuf[k] = dbuf[k] * scale
        if not ok:
            if not apply:
                return
            continue
        if not apply:
            continue
        _welford(pbuf, K, count, total[i], m2[i])
        h_sum[i] += h


@numba.njit(parallel=True, **JITF)
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


@numba.njit(inline="always", **JITF)
def _confidence_grad(vals, K, y, has_labels, inv, invK, grad_scale, grad, i):
    """grad[i] = grad_scale (vals * inv - onehot(y)) (labels) or grad_scale (vals * inv - 1/K)."""
    if has_labels:
        for k in range(K):
            grad[i, k] = grad_scale * (np.float64(vals[k]) * inv)  # - 0.0 changes no bit here (e * inv >= 0)
        grad[i, y] = grad_scale * (np.float64(vals[y]) * inv - 1.0)
    else:
        for k in range(K):
            grad[i, k] = grad_scale * (np.float64(vals[k]) * inv - invK)


@numba.njit(**JITF)
def _confidence_chunk(z, labels, has_labels, single, grad_scale, table, grad, begin, end, acc, st):
    K = z.shape[1]
    Kp = (K + 7) // 8 * 8
    buf = np.zeros(Kp, np.float32)
    ebuf = np.zeros(Kp, np.float32)
    tbuf = np.zeros(Kp, np.float32)
    dbuf = np.zeros(Kp)
    logK = math.log(K)
    invK = 1.0 / K
    for i in range(begin, end):
        y = -1
        if has_labels:
            y = labels[i]
            if y < 0 or y >= K:
                merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
                continue
        if single:
            _load_f(z, i, table, buf)
            m1f, bad = _max_f(buf, K, False)
            if bad != 0 and not _check_row(buf, K, False, i, st):
                continue
            best = np.float64(m1f)
            z_label = np.float64(buf[y]) if has_labels else 0.0
            total = 0.0 if has_labels else _value_sums(buf, Kp)[0]
            s0, _ = _softmax_f(buf, K, best, 1.0, ebuf, tbuf)
        else:
            for k in range(K):
                dbuf[k] = load(z[i, k], table)
            best, _, bad = _scan_d(dbuf, K, False)
            if bad != 0 and not _check_row(dbuf, K, False, i, st):
                continue
            z_label = dbuf[y] if has_labels else 0.0
            total = 0.0 if has_labels else _value_sums(dbuf, Kp)[0]
            s0, _ = _softmax_d(dbuf, K, best, 1.0, True)
        log_s0 = math.log(s0)
        inv = 1.0 / s0
        if has_labels:
            acc[0] += log_s0 - (z_label - best)
        else:
            acc[0] += max(log_s0 - logK - (total * invK - best), 0.0)
        if single:
            _confidence_grad(ebuf, K, y, has_labels, inv, invK, grad_scale, grad, i)
        else:
            _confidence_grad(dbuf, K, y, has_labels, inv, invK, grad_scale, grad, i)


@numba.njit(parallel=True, **JITF)
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
