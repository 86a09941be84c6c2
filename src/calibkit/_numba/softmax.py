"""Numba twins of cpp/include/calibkit/softmax.hpp: fused NLL of scaled softmax and its derivatives."""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    HALF_TABLE, JIT, LABEL_OUT_OF_RANGE, MIN_PARALLEL_ELEMENTS, SCORE_NOT_FINITE, as_kernel_array,
    check_float_dtype, group_size, is_finite, load, merge_status, rows_per_chunk, run_locked,
    status_tuple,
)
from .binning import _weights_arg, check_weight


@numba.njit(**JIT)
def _temperature_chunk(scores, labels, weights, has_w, b, table, begin, end, acc, st):
    K = scores.shape[1]
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
            if z > best:
                best = z
        if bad:
            continue
        # sums over t = max(b u, -708), as the C++ kernel (see softmax.hpp): bounded, never underflow to 0
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        for k in range(K):
            t = max(b * (load(scores[i, k], table) - best), -708.0)
            e = math.exp(t)
            s0 += e
            s1 += e * t
            s2 += (e * t) * t
        mean_t = s1 / s0
        second_t = s2 / s0
        u_label = load(scores[i, y], table) - best
        acc[0] += 1.0
        acc[1] += w
        acc[2] += w * (math.log(s0) - b * u_label)
        acc[3] += w * (mean_t / b - u_label)
        acc[4] += w * (max(second_t - mean_t * mean_t, 0.0) / b / b)


@numba.njit(parallel=True, **JIT)
def _temperature_driver(scores, labels, weights, has_w, b, table, parallel):
    N, K = scores.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    total = np.zeros(5)
    st = np.array([0.0, -1.0, -1.0, 0.0])
    group = group_size(n_chunks, 5)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        acc = np.zeros((g, 5))
        p_st = np.zeros((g, 4))
        if parallel:
            for j in numba.prange(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _temperature_chunk(scores, labels, weights, has_w, b, table, c * chunk, min(N, (c + 1) * chunk),
                                   acc[j], p_st[j])
        else:
            for j in range(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _temperature_chunk(scores, labels, weights, has_w, b, table, c * chunk, min(N, (c + 1) * chunk),
                                   acc[j], p_st[j])
        for j in range(g):
            for t in range(5):
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
    total, st = run_locked(_temperature_driver, as_kernel_array(scores), labels, weights, has_w, b, HALF_TABLE,
                           N * K >= MIN_PARALLEL_ELEMENTS)
    return {"count": float(total[0]), "weight": float(total[1]), "loss": float(total[2]), "d1": float(total[3]),
            "d2": float(total[4]), "status": status_tuple(st)}


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
