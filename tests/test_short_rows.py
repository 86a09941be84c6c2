"""Short probability rows (K < 16, binning.hpp's short-row path) and the streaming update's large path (issue 13).

Covers: the top-label statistics of short rows against a plain NumPy reference for every K < 16 and
float16/32/64 input; the same bits for C-ordered, Fortran-ordered, strided and row-gapped input (the
contiguous float32 rows are transposed in registers, the others gathered); bad elements found in every
column (the overlapping last block of a contiguous row included) with the same first error on both
backends; the NLL at nll_eps = 0 and p_label = 0 (inf); C++ == Numba bit for bit; and the fused update of
more than one chunk (sparse fine partials, reused per chunk) against one row at a time.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend


def _probs(rng, n, k, dtype):
    z = rng.normal(scale=2.0, size=(n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.astype(dtype)


def _reference(p, y, n_bins, nll_eps):
    q = p.astype(np.float64)
    conf = q.max(1)
    correct = (q.argmax(1) == y).astype(np.float64)
    edges = np.arange(1, n_bins, dtype=np.float64) / n_bins
    b = np.searchsorted(edges, conf, side="left")
    p_label = q[np.arange(len(y)), y]
    return {
        "count": np.bincount(b, minlength=n_bins),
        "sum_score": np.bincount(b, conf, minlength=n_bins),
        "sum_target": np.bincount(b, correct, minlength=n_bins),
        "correct": correct.sum(),
        "confidence": conf.sum(),
        "brier": ((q * q).sum(1) - 2 * p_label + 1).sum(),
        "nll": -np.log(np.maximum(p_label, nll_eps)).sum(),
    }


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_short_rows_match_numpy(backend, dtype):
    rng = np.random.default_rng(7)
    k_ = _backend.kernels(backend)
    for k in range(2, 16):
        p = _probs(rng, 4099, k, dtype)
        y = rng.integers(0, k, p.shape[0])
        r = k_.top_label_stats(p, y, None, False, 15, 1e-7, with_nll=True)
        ref = _reference(p, y, 15, 1e-7)
        np.testing.assert_array_equal(r["count"], ref["count"])
        np.testing.assert_allclose(r["sum_score"], ref["sum_score"], rtol=1e-12)
        np.testing.assert_array_equal(r["sum_target"], ref["sum_target"])
        t = r["totals"]
        assert t["correct"] == ref["correct"]
        for key in ("confidence", "brier", "nll"):
            assert t[key] == pytest.approx(ref[key], rel=1e-12), (k, key)


def _layouts(p):
    k = p.shape[1]
    wide = np.zeros((p.shape[0] * 2, k * 3), p.dtype)
    wide[::2, ::3] = p  # gaps between elements and between rows
    gapped = np.zeros((p.shape[0], k + 5), p.dtype)
    gapped[:, 2:2 + k] = p  # contiguous elements, gaps between rows
    return {"C": np.ascontiguousarray(p), "F": np.asfortranarray(p), "strided": wide[::2, ::3],
            "gapped": gapped[:, 2:2 + k], "reversed rows": np.ascontiguousarray(p[::-1])[::-1]}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_short_rows_same_bits_for_every_layout(backend, dtype):
    rng = np.random.default_rng(11)
    k_ = _backend.kernels(backend)
    for k in (2, 3, 4, 5, 8, 10, 13, 15):
        p = _probs(rng, 3001, k, dtype)
        y = rng.integers(0, k, p.shape[0])
        w = rng.uniform(0, 2, p.shape[0])
        results = []
        for name, q in _layouts(p).items():
            np.testing.assert_array_equal(q, p)
            r = k_.top_label_stats(q, y, w, False, 10, 1e-7, with_nll=True)
            results.append((name, [r[n].tobytes() for n in ("count", "weight", "sum_score", "sum_target")],
                            [float(v).hex() for v in r["totals"].values()]))
        for name, bins, totals in results[1:]:
            assert bins == results[0][1], (k, name)
            assert totals == results[0][2], (k, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_short_rows_backends_bit_identical_with_ties(dtype):
    # Ties in the maximum (the first index wins), zeros and ones, the label's probability 0 at nll_eps = 0.
    rng = np.random.default_rng(5)
    for k in (2, 6, 10, 15):
        p = _probs(rng, 5003, k, dtype)
        p[::7] = 0
        p[::7, -1] = 1.0
        p[1::11] = np.asarray(1.0 / k, dtype)
        y = rng.integers(0, k, p.shape[0])
        for eps in (1e-7, 1e-15):
            a = _backend.kernels("cpp").top_label_stats(p, y, None, False, 15, eps, with_nll=True)
            b = _backend.kernels("numba").top_label_stats(p, y, None, False, 15, eps, with_nll=True)
            for key in ("count", "weight", "sum_score", "sum_target"):
                np.testing.assert_array_equal(a[key], b[key])
            assert a["totals"] == b["totals"]
            ref = _reference(p, y, 15, eps)
            np.testing.assert_array_equal(a["count"], ref["count"])
            assert a["totals"]["correct"] == ref["correct"]


@pytest.mark.parametrize("bad", [np.nan, -0.01, 1.01, np.inf])
def test_short_rows_bad_element_in_every_column(backend, bad):
    rng = np.random.default_rng(2)
    k_ = _backend.kernels(backend)
    for k in (3, 5, 10, 15):
        for col in range(k):
            p = _probs(rng, 37, k, np.float32)
            y = rng.integers(0, k, 37)
            p[21, col] = bad
            with pytest.raises(ValueError, match=rf"scores\[21, {col}\]"):
                calibkit.ece(p, y, backend=backend)
            r = k_.top_label_stats(p, y, None, False, 15, 1e-7, with_nll=True)
            assert r["status"][1:3] == (21, col)
            assert r["totals"]["count"] == 36


def test_fused_update_large_batch_equals_row_by_row(backend):
    # More than one chunk (32768 rows): the sparse, reused fine partials give the state of one call
    # per chunk-sized piece added in order, bit for bit on the fine counts and bins' counts.
    rng = np.random.default_rng(9)
    n = 70_001
    p = _probs(rng, n, 10, np.float32)
    y = rng.integers(0, 10, n)
    whole = calibkit.CalibrationAccumulator(n_bins=15, backend=backend).update(p, y)
    parts = calibkit.CalibrationAccumulator(n_bins=15, backend=backend)
    for s in range(0, n, 1000):
        parts.update(p[s:s + 1000], y[s:s + 1000])
    np.testing.assert_array_equal(whole._fine[0], parts._fine[0])
    np.testing.assert_array_equal(whole._bins[0], parts._bins[0])
    np.testing.assert_allclose(whole._fine, parts._fine, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(whole._totals, parts._totals, rtol=1e-12)
    assert whole.compute().ece == pytest.approx(parts.compute().ece, rel=1e-12)
    assert whole.compute().ace == pytest.approx(parts.compute().ace, rel=1e-12)
    before = calibkit.get_num_threads()
    for threads in (1, 2):
        calibkit.set_num_threads(threads)
        try:
            again = calibkit.CalibrationAccumulator(n_bins=15, backend=backend).update(p, y)
        finally:
            calibkit.set_num_threads(before)
        np.testing.assert_array_equal(again._fine, whole._fine)
        np.testing.assert_array_equal(again._bins, whole._bins)
