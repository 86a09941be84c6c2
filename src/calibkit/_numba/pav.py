"""Numba twins of cpp/include/calibkit/pav.hpp: stable argsort and weighted pool-adjacent-violators."""

from __future__ import annotations

import numba
import numpy as np

from ._common import JIT


@numba.njit(**JIT)
def _argsort(x):
    # mergesort is stable; -0.0 == 0.0 compares equal, as the C++ radix keys do.
    return np.argsort(x, kind="mergesort")


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
        order = _argsort(x)
        x_sorted = x[order]
        blocks, values, weights = _pav(y, w, weighted, order, True, x_sorted, True, bool(increasing), fitted)
    else:
        order = None
        blocks, values, weights = _pav(y, w, weighted, np.empty(1, np.int64), False, np.empty(1), False,
                                       bool(increasing), fitted)
    return {"fitted": fitted, "order": order, "blocks": blocks, "values": values, "weights": weights}
