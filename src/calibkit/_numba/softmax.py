"""Numba twins of cpp/include/calibkit/softmax.hpp: fused NLL of scaled softmax and its derivatives."""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    F32, HALF_TABLE, JIT, LABEL_OUT_OF_RANGE, MIN_PARALLEL_ELEMENTS, SCORE_NOT_FINITE, as_kernel_array,
    check_float_dtype, exp_f32, group_size, is_finite, load, merge_status, octet_sum, rows_per_chunk, run_locked,
    status_tuple,
)
from .binning import _weights_arg, check_weight
from .uncertainty import EXP_MIN_F, FLUSH


@numba.njit(**JIT)
def _add_temperature_row(S, bt, u_label, w, acc):
    """add_temperature_row of softmax.hpp: the row's loss and derivatives in b from S_j = sum e^t t^j."""
    m1 = S[1] / S[0]
    m2 = S[2] / S[0]
    m3 = S[3] / S[0]
    m4 = S[4] / S[0]
    k2 = max(m2 - m1 * m1, 0.0)
    k3 = m3 - 3.0 * m2 * m1 + 2.0 * m1 * m1 * m1
    k4 = m4 - 4.0 * m3 * m1 - 3.0 * m2 * m2 + 12.0 * m2 * m1 * m1 - 6.0 * (m1 * m1) * (m1 * m1)
    b2 = bt * bt
    acc[0] += 1.0
    acc[1] += w
    acc[2] += w * (math.log(S[0]) - bt * u_label)
    acc[3] += w * (m1 / bt - u_label)
    acc[4] += w * (k2 / b2)
    acc[5] += w * (k3 / (b2 * bt))
    acc[6] += w * (k4 / (b2 * b2))


@numba.njit(**JIT)
def _sums_f(fbuf, K, best, bf, S, p, d):
    """temperature_sums_f of softmax.hpp: float t and exp_f32, float partial sums per lane (k % 8) flushed
    into double every FLUSH elements, lanes combined in the C++ order."""
    shift = F32(best)
    p[:, :] = 0.0
    d[:, :] = 0.0
    for k0 in range(0, K, 8):
        n = min(8, K - k0)
        for j in range(n):
            t = bf * (fbuf[k0 + j] - shift)
            t = t if t > EXP_MIN_F else EXP_MIN_F
            e = exp_f32(t)
            e1 = e * t
            e2 = e1 * t
            e3 = e2 * t
            p[0, j] += e
            p[1, j] += e1
            p[2, j] += e2
            p[3, j] += e3
            p[4, j] += e3 * t
        if (k0 + 8) % FLUSH == 0 or k0 + 8 >= K:
            for q in range(5):
                for j in range(8):
                    d[q, j] += np.float64(p[q, j])
                    p[q, j] = 0.0
    for q in range(5):
        S[q] = octet_sum(d[q])


@numba.njit(**JIT)
def _sums_d(scores, i, K, best, b, table, S):
    """The float64 path: double exp, lanes k % 8 combined in the C++ order."""
    d = np.zeros((5, 8))
    for k in range(K):
        t = max(b * (load(scores[i, k], table) - best), -708.0)
        e = math.exp(t)
        e1 = e * t
        e2 = e1 * t
        e3 = e2 * t
        j = k % 8
        d[0, j] += e
        d[1, j] += e1
        d[2, j] += e2
        d[3, j] += e3
        d[4, j] += e3 * t
    for q in range(5):
        S[q] = octet_sum(d[q])


@numba.njit(**JIT)
def _temperature_chunk(scores, labels, weights, has_w, b, single, table, begin, end, acc, st):
    K = scores.shape[1]
    fbuf = np.empty(K, np.float32)
    S = np.empty(5)
    p = np.zeros((5, 8), np.float32)
    d = np.zeros((5, 8))
    bf = F32(b)
    for i in range(begin, end):
        y = labels[i]
        if y < 0 or y >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        best = -np.inf
        bad = False
        for k in range(K):
            z = load(scores[i, k], table)
            if not is_finite(z):
                merge_status(st, SCORE_NOT_FINITE, i, k, z)
                bad = True
                break
            if single:
                fbuf[k] = F32(z)
            if z > best:
                best = z
        if bad:
            continue
        u_label = load(scores[i, y], table) - best
        if single:
            _sums_f(fbuf, K, best, bf, S, p, d)
            _add_temperature_row(S, np.float64(bf), u_label, w, acc)
        else:
            _sums_d(scores, i, K, best, b, table, S)
            _add_temperature_row(S, b, u_label, w, acc)


@numba.njit(parallel=True, **JIT)
def _temperature_driver(scores, labels, weights, has_w, b, single, table, parallel):
    N, K = scores.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    total = np.zeros(7)
    st = np.array([0.0, -1.0, -1.0, 0.0])
    group = group_size(n_chunks, 7)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        acc = np.zeros((g, 7))
        p_st = np.zeros((g, 4))
        if parallel:
            for j in numba.prange(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _temperature_chunk(scores, labels, weights, has_w, b, single, table, c * chunk,
                                   min(N, (c + 1) * chunk), acc[j], p_st[j])
        else:
            for j in range(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _temperature_chunk(scores, labels, weights, has_w, b, single, table, c * chunk,
                                   min(N, (c + 1) * chunk), acc[j], p_st[j])
        for j in range(g):
            for t in range(7):
                total[t] += acc[j, t]
            merge_status(st, int(p_st[j, 0]), int(p_st[j, 1]), int(p_st[j, 2]), p_st[j, 3])
    return total, st


def _check_inputs(scores, labels):
    check_float_dtype(scores, "scores")
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError("scores must be 2-D with at least one column")
    if labels.dtype != np.int64 or labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError("labels must be a 1-D int64 array of length N")


def temperature_nll(scores, labels, sample_weight, inverse_temperature):
    """Same contract as ``calibkit._core.temperature_nll``."""
    _check_inputs(scores, labels)
    b = float(inverse_temperature)
    if not (b > 0.0 and math.isfinite(b)):
        raise ValueError("inverse_temperature must be a positive finite number")
    N, K = scores.shape
    weights, has_w = _weights_arg(sample_weight, N)
    single = scores.dtype != np.float64
    total, st = run_locked(_temperature_driver, as_kernel_array(scores), labels, weights, has_w, b, single,
                           HALF_TABLE, N * K >= MIN_PARALLEL_ELEMENTS)
    loss, d1, d2, d3, d4 = (float(v) for v in total[2:])
    if single:  # the sums were taken at float(b): moved to b as in the C++ kernel
        h = b - float(np.float32(b))
        loss += h * (d1 + h * (d2 / 2.0 + h * d3 / 6.0))
        d1 += h * (d2 + h * d3 / 2.0)
        d2 += h * d3
        d3 += h * d4
    return {"count": float(total[0]), "weight": float(total[1]), "loss": loss, "d1": d1, "d2": d2, "d3": d3,
            "d4": d4, "status": status_tuple(st)}


@numba.njit(**JIT)
def _vector_chunk(scores, labels, weights, has_w, scale, bias, table, begin, end, acc, grad_scale, grad_bias, st):
    K = scores.shape[1]
    e = np.empty(K)  # one row of exp(z' - max): O(K), not O(N K)
    for i in range(begin, end):
        y = labels[i]
        if y < 0 or y >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        best = -np.inf
        bad = False
        for k in range(K):
            z = load(scores[i, k], table)
            if not is_finite(z):
                merge_status(st, SCORE_NOT_FINITE, i, k, z)
                bad = True
                break
            v = scale[k] * z + bias[k]
            e[k] = v
            if v > best:
                best = v
        if bad:
            continue
        total = 0.0
        for k in range(K):
            v = math.exp(e[k] - best)
            e[k] = v
            total += v
        shifted_label = scale[y] * load(scores[i, y], table) + bias[y] - best
        acc[0] += 1.0
        acc[1] += w
        acc[2] += w * (math.log(total) - shifted_label)
        inv = w / total
        for k in range(K):
            g = e[k] * inv - (w if k == y else 0.0)
            grad_bias[k] += g
            grad_scale[k] += g * load(scores[i, k], table)


@numba.njit(parallel=True, **JIT)
def _vector_driver(scores, labels, weights, has_w, scale, bias, table, parallel):
    N, K = scores.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    total = np.zeros(3)
    g_scale = np.zeros(K)
    g_bias = np.zeros(K)
    st = np.array([0.0, -1.0, -1.0, 0.0])
    group = group_size(n_chunks, 2 * K + 3)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        acc = np.zeros((g, 3))
        p_scale = np.zeros((g, K))
        p_bias = np.zeros((g, K))
        p_st = np.zeros((g, 4))
        if parallel:
            for j in numba.prange(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _vector_chunk(scores, labels, weights, has_w, scale, bias, table, c * chunk,
                              min(N, (c + 1) * chunk), acc[j], p_scale[j], p_bias[j], p_st[j])
        else:
            for j in range(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _vector_chunk(scores, labels, weights, has_w, scale, bias, table, c * chunk,
                              min(N, (c + 1) * chunk), acc[j], p_scale[j], p_bias[j], p_st[j])
        for j in range(g):
            for t in range(3):
                total[t] += acc[j, t]
            for k in range(K):
                g_scale[k] += p_scale[j, k]
                g_bias[k] += p_bias[j, k]
            merge_status(st, int(p_st[j, 0]), int(p_st[j, 1]), int(p_st[j, 2]), p_st[j, 3])
    return total, g_scale, g_bias, st


def vector_scaling_nll(scores, labels, sample_weight, scale, bias):
    """Same contract as ``calibkit._core.vector_scaling_nll``."""
    _check_inputs(scores, labels)
    N, K = scores.shape
    for name, p in (("scale", scale), ("bias", bias)):
        if not isinstance(p, np.ndarray) or p.dtype != np.float64 or p.shape != (K,) or not p.flags.c_contiguous:
            raise ValueError(f"{name} must be a contiguous float64 array of length K")
    weights, has_w = _weights_arg(sample_weight, N)
    total, g_scale, g_bias, st = run_locked(_vector_driver, as_kernel_array(scores), labels, weights, has_w, scale,
                                            bias, HALF_TABLE, N * K * 3 >= MIN_PARALLEL_ELEMENTS)
    return {"count": float(total[0]), "weight": float(total[1]), "loss": float(total[2]), "grad_scale": g_scale,
            "grad_bias": g_bias, "status": status_tuple(st)}


__all__ = ["temperature_nll", "vector_scaling_nll"]
