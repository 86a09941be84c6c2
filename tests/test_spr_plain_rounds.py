"""The ECE's plain rounds of short probability rows (binning.hpp's top_label_short_rows, issue 13).

An unweighted ECE / MCE on float probability rows of K < 16 (no Brier, no NLL, no per-row outputs) takes
eight rows at a time without the per-batch bookkeeping, scanning their elements' bits as integers; the Numba
twin (_short_prob_chunk) takes the same rounds. Any round holding a bad label, a negative number (-0 or
-tol <= p < 0 included), a NaN or an element above 1 + tol goes the general way. Covered: a plain NumPy
reference for K = 2..15 and float16/32/64 in C and Fortran order, with and without weights; the plain rounds
against the general path of the same rows (the with_nll call) bit for bit; the rows that leave the plain
rounds (-0, tiny negatives, zero rows, ties, odd row counts); both backends bit-identical; 1 vs 2 threads
bit-identical; bad elements and labels named by row and column.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend

KEYS = ("count", "weight", "sum_score", "sum_target")
TOTALS = ("count", "weight", "correct", "confidence")


def _probs(rng, n, k, dtype):
    z = rng.normal(scale=2.5, size=(n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.astype(dtype)


def _ece_stats(backend, p, y, w=None, n_bins=15):
    """top_label_stats as the ECE calls it: with_nll=False, with_brier=False (by position, as metrics.py)."""
    return _backend.kernels(backend).top_label_stats(p, y, w, False, n_bins, 1e-7, False, None, None, 1.0, 0,
                                                     None, False)


def _bits(r):
    return [r[k].tobytes() for k in KEYS], [float(r["totals"][k]).hex() for k in TOTALS]


def _reference(p, y, w, n_bins):
    """Plain NumPy: the maximum (first index), bins ((m-1)/M, m/M], 0 in the first, float64 sums."""
    q = p.astype(np.float64)
    conf = q.max(1)
    correct = (q.argmax(1) == y).astype(np.float64)
    w = np.ones(len(y)) if w is None else w
    b = np.searchsorted(np.arange(1, n_bins, dtype=np.float64) / n_bins, conf, side="left")
    return {"count": np.bincount(b, minlength=n_bins), "weight": np.bincount(b, w, minlength=n_bins),
            "sum_score": np.bincount(b, w * conf, minlength=n_bins),
            "sum_target": np.bincount(b, w * correct, minlength=n_bins),
            "correct": (w * correct).sum(), "confidence": (w * conf).sum()}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_plain_rounds_match_numpy_every_k_and_layout(dtype, weighted):
    rng = np.random.default_rng(13)
    for k in range(2, 16):
        p = _probs(rng, 2053, k, dtype)
        y = rng.integers(0, k, p.shape[0])
        w = rng.uniform(0, 2, p.shape[0]) if weighted else None
        ref = _reference(p, y, w, 15)
        seen = []
        for backend in ("cpp", "numba"):
            for q in (np.ascontiguousarray(p), np.asfortranarray(p)):
                r = _ece_stats(backend, q, y, w)
                np.testing.assert_array_equal(r["count"], ref["count"])
                np.testing.assert_allclose(r["weight"], ref["weight"], rtol=1e-12)
                np.testing.assert_allclose(r["sum_score"], ref["sum_score"], rtol=1e-12)
                np.testing.assert_allclose(r["sum_target"], ref["sum_target"], rtol=1e-12)
                assert r["totals"]["count"] == len(y)
                assert r["totals"]["correct"] == pytest.approx(ref["correct"], rel=1e-12)
                assert r["totals"]["confidence"] == pytest.approx(ref["confidence"], rel=1e-12)
                seen.append(_bits(r))
        assert all(s == seen[0] for s in seen[1:]), (k, dtype)


def _awkward(rng, n, k, dtype):
    """Rows that leave the plain rounds mixed with rows that do not: -0, tiny negatives within the
    tolerance, all-zero rows, ties for the maximum, 1.0 exactly, rows not summing to 1."""
    p = _probs(rng, n, k, dtype)
    p[3::17, 0] = -0.0
    p[5::29, k - 1] = np.asarray(-1e-9 if dtype != np.float16 else -0.0, dtype)
    p[7::31] = 0
    p[11::13, :] = np.asarray(1.0 / k, dtype)
    p[2::19, 1] = p[2::19, 0]
    p[9::23] = 0
    p[9::23, k // 2] = 1.0
    p[4::37] *= np.asarray(0.5, dtype)
    return p


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_plain_rounds_equal_the_general_path(dtype):
    # The with_nll call takes the general path for every row: the same bins and totals, bit for bit.
    rng = np.random.default_rng(3)
    for k in (2, 3, 4, 5, 7, 8, 10, 12, 15):
        for n in (1, 7, 8, 9, 64, 1001, 4099):
            p = _awkward(rng, n, k, dtype)
            y = rng.integers(0, k, n)
            for backend in ("cpp", "numba"):
                plain = _ece_stats(backend, p, y)
                general = _backend.kernels(backend).top_label_stats(p, y, None, False, 15, 1e-7, with_nll=True)
                for key in KEYS:
                    np.testing.assert_array_equal(plain[key], general[key], err_msg=f"{backend} {k} {n} {key}")
                for key in TOTALS:
                    assert float(plain["totals"][key]).hex() == float(general["totals"][key]).hex(), (backend, k, key)
            assert _bits(_ece_stats("cpp", p, y)) == _bits(_ece_stats("numba", p, y)), (k, n)


@pytest.mark.parametrize("n_bins", [1, 2, 15, 33, 40])
def test_plain_rounds_backends_and_threads_bit_identical(n_bins):
    rng = np.random.default_rng(21)
    n = 300_007  # several chunks, and a partial last round
    p = _awkward(rng, n, 10, np.float32)
    y = rng.integers(0, 10, n)
    before = calibkit.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            calibkit.set_num_threads(threads)
            for backend in ("cpp", "numba"):
                results.append(_bits(_ece_stats(backend, p, y, n_bins=n_bins)))
    finally:
        calibkit.set_num_threads(before)
    assert all(r == results[0] for r in results[1:])
    ref = _reference(p, y, None, n_bins)
    got = _ece_stats("cpp", p, y, n_bins=n_bins)
    np.testing.assert_array_equal(got["count"], ref["count"])
    np.testing.assert_array_equal(got["sum_target"], ref["sum_target"])


def test_ece_equals_reference_both_backends():
    rng = np.random.default_rng(8)
    p = _awkward(rng, 50_001, 10, np.float32)
    y = rng.integers(0, 10, p.shape[0])
    ref = _reference(p, y, None, 15)
    want = np.abs(ref["sum_target"] - ref["sum_score"]).sum() / len(y)
    for backend in ("cpp", "numba"):
        assert calibkit.ece(p, y, backend=backend) == pytest.approx(want, rel=1e-10)
    assert calibkit.ece(p, y, backend="cpp") == calibkit.ece(p, y, backend="numba")


@pytest.mark.parametrize("backend", ["cpp", "numba"])
@pytest.mark.parametrize("bad", [np.nan, -np.nan, -0.01, 1.01, np.inf, -np.inf])
def test_bad_element_named_by_row_and_column(backend, bad):
    rng = np.random.default_rng(4)
    for k in (2, 5, 10, 15):
        for row, col in ((0, 0), (8, k - 1), (21, k // 2), (63, 1 % k)):
            p = _probs(rng, 64, k, np.float32)
            y = rng.integers(0, k, 64)
            p[row, col] = bad
            with pytest.raises(ValueError, match=rf"scores\[{row}, {col}\]"):
                calibkit.ece(p, y, backend=backend)
            r = _ece_stats(backend, p, y)
            assert r["status"][1:3] == (row, col)
            assert r["totals"]["count"] == 63


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_bad_label_named_and_round_left_to_the_general_path(backend):
    rng = np.random.default_rng(6)
    p = _probs(rng, 40, 10, np.float32)
    for bad in (-1, 10, 2**40):
        y = rng.integers(0, 10, 40)
        y[13] = bad
        with pytest.raises(ValueError, match=r"labels\[13\]"):
            calibkit.ece(p, y, backend=backend)
        r = _ece_stats(backend, p, y)
        assert r["status"][1] == 13
        keep = np.arange(40) != 13
        good = _ece_stats(backend, p[keep], y[keep])
        np.testing.assert_array_equal(r["count"], good["count"])
        np.testing.assert_array_equal(r["sum_target"], good["sum_target"])
