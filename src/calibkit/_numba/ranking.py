"""Numba twin of cpp/include/calibkit/ranking.hpp: two-sample ranking metrics from one sort of each sample."""

from __future__ import annotations

import numba
import numpy as np

from ._common import HALF_TABLE, JIT, SCORE_NOT_FINITE, as_kernel_array, check_float_dtype, load, status_tuple
from .pav import _radix_argsort, _sort_keys


@numba.njit(**JIT)
def _as_float64(x, table):
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = load(x[i], table) + 0.0  # -0.0 -> +0.0, as the C++ keys
    return out


@numba.njit(**JIT)
def _first_bad(x):
    for i in range(x.shape[0]):
        if not (x[i] - x[i] == 0.0):
            return i
    return -1


@numba.njit(inline="always", **JIT)
def _next_distinct(a, na, i, b, nb, j, descending):
    """The next distinct value t of two ascending arrays walked from the top (or bottom), and the positions
    past every element equal to t in each."""
    if descending:
        if i < na and (j >= nb or a[na - 1 - i] >= b[nb - 1 - j]):
            t = a[na - 1 - i]
        else:
            t = b[nb - 1 - j]
        while i < na and a[na - 1 - i] == t:
            i += 1
        while j < nb and b[nb - 1 - j] == t:
            j += 1
    else:
        if i < na and (j >= nb or a[i] <= b[j]):
            t = a[i]
        else:
            t = b[j]
        while i < na and a[i] == t:
            i += 1
        while j < nb and b[j] == t:
            j += 1
    return t, i, j


@numba.njit(**JIT)
def _summary(pos, neg, target_tpr, want_curve):
    """merge_walk of ranking.hpp: the metrics accumulated during the walks (the curve stored only when asked)."""
    P = pos.shape[0]
    N = neg.shape[0]
    cap = P + N if want_curve else 0
    t_out = np.empty(cap)
    tp_out = np.empty(cap, np.int64)
    fp_out = np.empty(cap, np.int64)
    auc2 = 0.0  # exact: integer terms, total below 2^53 checked by the caller
    ap = 0.0
    aurc = 0.0
    best = 0.5
    fpr_at = 1.0
    found = False
    tp0 = 0
    fp0 = 0
    a = 0
    f = 0
    n = 0
    while a < P or f < N:
        t, a, f = _next_distinct(pos, P, a, neg, N, f, True)
        auc2 += float((f - fp0) * (a + tp0))
        acc = float(a + f)
        if a > tp0:
            ap += float(a - tp0) * (a / acc)
        aurc += float(a + f - tp0 - fp0) * (f / acc)
        tpr = a / P if P > 0 else 0.0
        fpr = f / N if N > 0 else 0.0
        best = min(best, 0.5 * (1.0 - tpr) + 0.5 * fpr)
        if not found and tpr >= target_tpr:
            fpr_at = fpr
            found = True
        if want_curve:
            t_out[n] = t
            tp_out[n] = a
            fp_out[n] = f
        n += 1
        tp0 = a
        fp0 = f
    ap_neg = 0.0
    tp0 = 0
    a = 0
    f = 0
    while a < N or f < P:
        _, a, f = _next_distinct(neg, N, a, pos, P, f, False)
        if a > tp0:
            ap_neg += float(a - tp0) * (a / float(a + f))
        tp0 = a
    if P == 0 or N == 0:
        res = np.array([np.nan, np.nan, np.nan, np.nan, np.nan, aurc * (1.0 / (P + N))])
    else:
        res = np.array([auc2 / (2.0 * P * N), ap * (1.0 / P), ap_neg * (1.0 / N), fpr_at, best,
                        aurc * (1.0 / (P + N))])
    return res, t_out[:n].copy(), tp_out[:n].copy(), fp_out[:n].copy()


def two_sample_ranking(pos, neg, target_tpr, want_curve):
    """Same contract as ``calibkit._core.two_sample_ranking``."""
    check_float_dtype(pos, "pos")
    if pos.dtype != neg.dtype:
        raise TypeError("pos and neg must have the same dtype")
    if pos.ndim != 1 or neg.ndim != 1:
        raise ValueError("pos and neg must be 1-D")
    if pos.shape[0] + neg.shape[0] < 1:
        raise ValueError("pos and neg must not both be empty")
    if not 0.0 <= target_tpr <= 1.0:
        raise ValueError("target_tpr must be in [0, 1]")
    p = _as_float64(as_kernel_array(pos), HALF_TABLE)
    n = _as_float64(as_kernel_array(neg), HALF_TABLE)
    for col, x in ((0, p), (1, n)):
        bad = _first_bad(x)
        if bad >= 0:
            nan = {k: np.nan for k in ("auroc", "ap_pos", "ap_neg", "fpr_at_tpr", "detection_error", "aurc")}
            return dict(nan, status=status_tuple(np.array([SCORE_NOT_FINITE, bad, col, x[bad]])))
    if float(p.shape[0]) * n.shape[0] >= 2.0 ** 51:
        raise ValueError("the numba backend supports up to 2^51 pairs; use backend='cpp'")
    # NumPy's default sort (SIMD quicksort where available): only the sorted values are used, so stability
    # does not matter (no NaN, -0.0 already +0.0). Then the same walk as the C++ kernel.
    p.sort()
    n.sort()
    res, t, tp, fp = _summary(p, n, float(target_tpr), bool(want_curve))
    out = {"auroc": res[0], "ap_pos": res[1], "ap_neg": res[2], "fpr_at_tpr": res[3], "detection_error": res[4],
           "aurc": res[5], "status": (0, -1, -1, 0.0)}
    if want_curve:
        out.update(thresholds=t, tp=tp, fp=fp)
    return out


__all__ = ["cumulative_differences", "two_sample_ranking"]


# -- cumulative differences (calibkit.cumulative) ---------------------------------------------------------------

@numba.njit(**JIT)
def _cumulative_walk(p, y, w, weighted, want_path):
    """cumulative_differences of bind_ranking.cpp: the stable radix order of p (the same order as the C++
    radix sort), then S_k = sum_{j<=k} w (y - p) walked in that order from 0, the sorted p read back from the
    sorted keys; sums in input order."""
    n = p.shape[0]
    for i in range(n):
        if not (p[i] - p[i] == 0.0) or y[i] > 1 or (weighted and not (w[i] - w[i] == 0.0)):
            return i, 0.0, 0.0, 0.0, 0.0, np.empty(0, np.int64), np.empty(0)
    keys = _sort_keys(p)
    order = np.arange(n)
    if n > 1:
        _radix_argsort(keys, order)
    total = 0.0
    variance = 0.0
    for i in range(n):
        wi = w[i] if weighted else 1.0
        total += wi
        variance += wi * wi * (p[i] * (1.0 - p[i]))
    path = np.empty(n if want_path else 0)
    sorted_p = _key_values(keys)
    s = 0.0
    hi = 0.0
    lo = 0.0
    for j in range(n):
        i = order[j]
        wi = w[i] if weighted else 1.0
        s += wi * (float(y[i]) - sorted_p[j])
        hi = s if s > hi else hi
        lo = s if s < lo else lo
        if want_path:
            path[j] = s
    return -1, hi - lo, max(hi, -lo), total, variance, order, path


_SIGN_BIT = np.uint64(0x8000000000000000)


@numba.njit(**JIT)
def _key_values(keys):
    """key_value of sort.hpp: the doubles back from their sort keys."""
    out = np.empty(keys.shape[0], np.uint64)
    for j in range(keys.shape[0]):
        k = keys[j]
        out[j] = (k & np.uint64(0x7FFFFFFFFFFFFFFF)) if k >= _SIGN_BIT else ~k
    return out.view(np.float64)



def cumulative_differences(scores, outcomes, sample_weight, want_path):
    """Same contract as ``calibkit._core.cumulative_differences``."""
    for name, a, dtype in (("scores", scores, np.float64), ("outcomes", outcomes, np.uint8)):
        if not isinstance(a, np.ndarray) or a.ndim != 1:
            raise ValueError(f"{name} must be 1-D")
        if a.dtype != dtype:
            raise TypeError(f"{name} must be a numpy array of dtype {np.dtype(dtype)}, got an array of dtype "
                            f"{a.dtype}")
    n = scores.shape[0]
    if n < 1:
        raise ValueError("scores must not be empty")
    if outcomes.shape[0] != n:
        raise ValueError(f"outcomes must have length {n}, got {outcomes.shape[0]}")
    weighted = sample_weight is not None
    if weighted and (not isinstance(sample_weight, np.ndarray) or sample_weight.dtype != np.float64
                     or sample_weight.shape != (n,)):
        raise TypeError(f"sample_weight must be a float64 array of shape ({n},) or None")
    if not isinstance(want_path, bool):
        raise TypeError("want_path must be a bool")
    bad, rng, max_abs, total, variance, order, path = _cumulative_walk(
        scores, outcomes, sample_weight if weighted else np.empty(1), weighted, want_path)
    if bad >= 0:
        raise ValueError(f"scores and sample_weight must be finite and outcomes 0 or 1; row {bad} is not")
    out = {"range": rng, "max_abs": max_abs, "total_weight": total, "variance": variance}
    if want_path:
        out.update(order=order, path=path)
    return out
