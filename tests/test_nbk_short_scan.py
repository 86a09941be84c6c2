"""The Numba short probability rows (K < 16) by groups of 8 (``short_scan8``, binning.hpp's top_label_short_rows).

Groups of 8 rows whose labels and weights are good are scanned together (maximum, first argmax, minimum, sum of
squares, and the bin by counting the edges below the maximum when there are at most 32 inner edges); unweighted
chunks keep their counts (rows, correct rows, per lane bin) as integers. Every result must be bit-identical to
the C++ kernel and for any thread count, agree with a plain NumPy reference, and report the first bad element
as before, wherever it falls in a group.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend

from conftest import assert_same_stats


def probs(seed, n, K, dtype):
    rng = np.random.default_rng(seed)
    z = 3.0 * rng.standard_normal((n, K))
    y = rng.integers(0, K, n)
    z[np.arange(n), y] += 2.0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(dtype), y


def run(backend, s, y, w=None, n_bins=15, with_nll=True, with_brier=True, out=False):
    n = s.shape[0]
    conf, correct = (np.full(n, -1.0), np.full(n, 7, np.uint8)) if out else (None, None)
    r = _backend.kernels(backend).top_label_stats(s, y, w, False, n_bins, 1e-7, with_nll, conf, correct, 1.0, 0,
                                                  None, with_brier)
    return r, conf, correct


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 2, 7, 10, 15])
@pytest.mark.parametrize("n_bins", [0, 1, 15, 33, 40])
def test_backends_agree_bit_for_bit(dtype, K, n_bins):
    s, y = probs(K, 1003, K, dtype)  # 1003 rows: groups of 8 and a remainder
    w = np.random.default_rng(0).random(s.shape[0])
    for kw in ({}, {"w": w}, {"with_nll": False, "with_brier": False}, {"w": w, "out": True},
               {"out": True, "with_nll": False}):
        assert_same_stats(run("numba", s, y, n_bins=n_bins, **kw), run("cpp", s, y, n_bins=n_bins, **kw))


@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_reference(weighted):
    s, y = probs(5, 4099, 10, np.float32)
    w = np.random.default_rng(1).random(s.shape[0]) if weighted else np.ones(s.shape[0])
    r, conf, correct = run("numba", s, y, w if weighted else None, out=True)
    p = s.astype(np.float64)
    ref_conf = p.max(axis=1)
    ref_correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.clip(np.ceil(ref_conf * 15).astype(np.int64) - 1, 0, 14)
    np.testing.assert_array_equal(conf, ref_conf)
    np.testing.assert_array_equal(correct, ref_correct)
    np.testing.assert_array_equal(r["count"], np.bincount(b, minlength=15))
    np.testing.assert_allclose(r["weight"], np.bincount(b, w, 15), rtol=1e-12)
    np.testing.assert_allclose(r["sum_score"], np.bincount(b, w * ref_conf, 15), rtol=1e-12)
    np.testing.assert_allclose(r["sum_target"], np.bincount(b, w * ref_correct, 15), rtol=1e-12)
    t = r["totals"]
    p_label = p[np.arange(len(y)), y]
    assert t["count"] == len(y)
    np.testing.assert_allclose(t["weight"], w.sum(), rtol=1e-12)
    np.testing.assert_allclose(t["correct"], (w * ref_correct).sum(), rtol=1e-12)
    np.testing.assert_allclose(t["confidence"], (w * ref_conf).sum(), rtol=1e-12)
    np.testing.assert_allclose(t["brier"], (w * ((p * p).sum(axis=1) - 2 * p_label + 1)).sum(), rtol=1e-10)
    np.testing.assert_allclose(t["nll"], (w * -np.log(np.maximum(p_label, 1e-7))).sum(), rtol=1e-10)


def test_one_and_two_threads_give_the_same_bits():
    s, y = probs(6, 50_001, 10, np.float32)  # several chunks
    w = np.random.default_rng(2).random(s.shape[0])
    before = calibkit.get_num_threads()
    try:
        for kw in ({}, {"w": w}):
            results = []
            for n in (1, 2):
                calibkit.set_num_threads(n)
                results.append(run("numba", s, y, **kw))
            assert_same_stats(results[0], results[1])
            assert_same_stats(results[0], run("cpp", s, y, **kw))
    finally:
        calibkit.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [4, 8, 16])
def test_confidences_exactly_on_an_edge(dtype, n_bins):
    """Bins are right-closed ((e_{b-1}, e_b]): a top confidence equal to an inner edge (0.25, 0.5, ... exact in
    every float type) is counted in the bin below it, by short_scan8's edge count as by the scalar search."""
    rng = np.random.default_rng(3)
    n = 4096
    top = rng.choice(np.array([0.25, 0.5, 0.75, 1.0, 0.375, 0.625]), n)
    rest = (1.0 - top) / 4.0  # exact: multiples of 1/32
    s = np.column_stack([top, rest, rest, rest, rest]).astype(dtype)
    y = rng.integers(0, 5, n)
    got = run("numba", s, y, n_bins=n_bins)
    assert_same_stats(got, run("cpp", s, y, n_bins=n_bins))
    edges = np.arange(1, n_bins) / n_bins
    want = np.bincount(np.searchsorted(edges, top, side="left"), minlength=n_bins)
    assert np.array_equal(np.asarray(got[0]["count"]), want)


@pytest.mark.parametrize("where", range(8))
@pytest.mark.parametrize("bad", ["nan", "above", "below", "label", "negative_label", "weight", "nan_weight"])
def test_bad_rows_anywhere_in_a_group(where, bad):
    s, y = probs(7, 64, 10, np.float32)
    w = np.random.default_rng(3).random(s.shape[0])
    row = 16 + where
    if bad == "nan":
        s[row, 3] = np.nan
    elif bad == "above":
        s[row, 9] = 1.01
    elif bad == "below":
        s[row, 0] = -0.01
    elif bad == "label":
        y[row] = 10
    elif bad == "negative_label":
        y[row] = -1
    elif bad == "weight":
        w[row] = -1.0
    elif bad == "nan_weight":
        w[row] = np.nan
    before = (s.copy(), y.copy(), w.copy())
    for weights in (None, w):
        if weights is None and bad in ("weight", "nan_weight"):
            continue
        got = run("numba", s, y, weights, out=True)
        assert got[0]["status"][0] != 0 and got[0]["status"][1] == row
        assert got[0]["totals"]["count"] == 63
        assert_same_stats(got, run("cpp", s, y, weights, out=True))
    for a, b in zip(before, (s, y, w)):
        assert a.tobytes() == b.tobytes()  # inputs are not written
