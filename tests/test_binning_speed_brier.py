"""top_label_stats(with_brier=False) and the short-row fast loop: the same sums, bit for bit.

with_brier=False skips the rows' sums of squares (the Brier term); every other returned sum must be the
same bits as with_brier=True, for both backends, any thread count, probabilities and logits, short and long
rows, with NaN rows, weights and class-wise bins. The C++ short probability rows take a branch-free loop
when a batch is clean and no per-row output is asked for: the same bins as the per-row loop (which a
conf_out / correct_out request forces).
"""

from __future__ import annotations

import numpy as np
import pytest

import calibkit
from calibkit import _backend

BACKENDS = ["cpp", "numba"]
SUMS = ("count", "weight", "sum_score", "sum_target")


def _case(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.choice([2, 3, 7, 10, 15, 16, 17, 40]))
    N = int(rng.integers(1, 7000))
    dt = rng.choice([np.float16, np.float32, np.float64])
    fl = bool(rng.integers(2))
    z = rng.normal(size=(N, K)) * 3
    s = z if fl else np.exp(z) / np.exp(z).sum(1, keepdims=True)
    s = s.astype(dt)
    if rng.random() < 0.3:
        s = np.asfortranarray(s)
    y = rng.integers(0, K, N)
    w = rng.random(N) if rng.random() < 0.3 else None
    if rng.random() < 0.3:
        s[rng.integers(N), rng.integers(K)] = np.nan
    return s, y, w, fl, int(rng.choice([0, 10, 15])), int(rng.choice([0, 0, 15]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(24))
def test_without_brier_same_sums(backend, seed):
    if backend == "numba":
        from calibkit._numba import binning as k  # the binning kernel itself (the exported one adds a small path)
    else:
        k = _backend.kernels(backend)
    s, y, w, fl, n_bins, cw = _case(seed)
    previous = calibkit.get_num_threads()
    for threads in (1, 2):
        calibkit.set_num_threads(threads)
        try:
            a = k.top_label_stats(s, y, w, fl, n_bins, 1e-7, False, None, None, 1.0, cw, None, True)
            b = k.top_label_stats(s, y, w, fl, n_bins, 1e-7, False, None, None, 1.0, cw, None, False)
        finally:
            calibkit.set_num_threads(previous)
        for key in SUMS:
            np.testing.assert_array_equal(a[key], b[key])
        for key in ("count", "weight", "correct", "confidence"):
            assert a["totals"][key] == b["totals"][key] or (np.isnan(a["totals"][key]) and np.isnan(b["totals"][key]))
        assert np.isnan(b["totals"]["brier"])
        assert str(a["status"]) == str(b["status"])
        if cw:
            for key in SUMS:
                np.testing.assert_array_equal(a["classwise"][key], b["classwise"][key])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [2, 5, 10, 15])
def test_short_rows_plain_loop_same_bins(dtype, K):
    """The C++ clean-batch loop (no outputs) against the per-row loop (conf_out given), and Numba."""
    rng = np.random.default_rng(K)
    N = 20_011
    z = rng.normal(size=(N, K)) * 2
    p = (np.exp(z) / np.exp(z).sum(1, keepdims=True)).astype(dtype)
    y = rng.integers(0, K, N)
    y[::97] = K + 3  # bad labels: batches that are not clean
    p[5, 1] = np.nan
    kc = _backend.kernels("cpp")
    conf, corr = np.empty(N), np.empty(N, np.uint8)
    for with_brier in (True, False):
        a = kc.top_label_stats(p, y, None, False, 15, 1e-7, False, None, None, 1.0, 0, None, with_brier)
        b = kc.top_label_stats(p, y, None, False, 15, 1e-7, False, conf, corr, 1.0, 0, None, with_brier)
        from calibkit._numba import binning as nb
        c = nb.top_label_stats(p, y, None, False, 15, 1e-7, False, None, None, 1.0, 0, None, with_brier)
        for key in SUMS:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
        assert a["status"][:3] == b["status"][:3] == c["status"][:3]
        for key in ("count", "weight", "correct", "confidence", "brier"):
            assert str(a["totals"][key]) == str(b["totals"][key]) == str(c["totals"][key])


def test_classwise_ece_unchanged():
    """classwise_stats skips the Brier term inside: the class-wise error is the same for both backends."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(3000, 50)).astype(np.float32) * 3
    y = rng.integers(0, 50, 3000)
    a = calibkit.classwise_calibration_error(z, y, from_logits=True, backend="cpp")
    b = calibkit.classwise_calibration_error(z, y, from_logits=True, backend="numba")
    assert a == b
