"""The Numba binning drivers' parallel path (one parallel region per group of chunks, chunks handed out by an
atomic ticket, partials allocated once and cleared as they are folded): the same bits on 1 and 2 threads, the
same as the C++ kernels, and a plain NumPy reference of the bins."""

import subprocess
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import calibkit
from calibkit import _core
from calibkit._numba import binning as nb
from calibkit._numba._common import CHUNK_ELEMENTS, MAX_GROUP, next_ticket


@pytest.fixture
def threads():
    before = calibkit.get_num_threads()
    yield lambda n: calibkit.set_num_threads(n)
    calibkit.set_num_threads(before)


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == np.asarray(b).dtype and a.tobytes() == np.asarray(b).tobytes()
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b)
    else:
        assert a == b


def _probabilities(n, k, dtype, seed):
    rng = np.random.default_rng(seed)
    p = rng.random((n, k)) ** 4
    return (p / p.sum(1, keepdims=True)).astype(dtype), rng.integers(0, k, n)


def _reference_bins(conf, correct, n_bins):
    """Counts and sums of confidence / correctness per equal-width bin ((m-1)/M, m/M], 0 in the first."""
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return (np.bincount(b, minlength=n_bins), np.bincount(b, conf, n_bins), np.bincount(b, correct, n_bins))


@numba.njit
def _tickets(counter, n):
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = next_ticket(counter)
    return out


def test_next_ticket_counts_up():
    c = np.array([5], np.int64)
    assert _tickets(c, 4).tolist() == [5, 6, 7, 8]
    assert c[0] == 9


# Sizes around one chunk, one group (MAX_GROUP chunks) and two groups; K = 10 rows: 3276 rows per chunk.
@pytest.mark.parametrize("n", [1, 3275, 3277, MAX_GROUP * 3276 + 1, (MAX_GROUP + 30) * 3276 + 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_label_probabilities(n, dtype, threads):
    s, y = _probabilities(n, 10, dtype, n)
    w = np.random.default_rng(1).random(n)
    unweighted = None
    for weights in (None, w):
        got = []
        for t in (1, 2):
            threads(t)
            got.append(nb.top_label_stats(s, y, weights, False, 15, 1e-7))
        _same(got[0], got[1])
        _same(got[0], _core.top_label_stats(s, y, weights, False, 15, 1e-7))
        unweighted = got[0] if unweighted is None else unweighted
    conf = s.max(1).astype(np.float64)
    correct = (s.argmax(1) == y).astype(np.float64)
    count, sconf, scorr = _reference_bins(conf, correct, 15)
    r = unweighted
    np.testing.assert_array_equal(r["count"], count)
    np.testing.assert_allclose(r["sum_score"], sconf, rtol=1e-12)
    np.testing.assert_array_equal(r["sum_target"], scorr)
    assert r["totals"]["count"] == n


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_top_label_logits_and_classwise(dtype, threads):
    rng = np.random.default_rng(3)
    z = (rng.standard_normal((70_000, 40)) * 3).astype(dtype)
    y = rng.integers(0, 40, 70_000)
    for args in ((None, True, 15, 1e-7, True), (None, True, 0, 0.0, False, None, None, 1.0, 5, None, False)):
        got = []
        for t in (1, 2):
            threads(t)
            got.append(nb.top_label_stats(z, y, *args))
        _same(got[0], got[1])
        _same(got[0], _core.top_label_stats(z, y, *args))


def test_dense_class_strided_rows(threads):
    rng = np.random.default_rng(4)
    m = (rng.standard_normal((19, 300_000)) * 4).astype(np.float16)
    s = m.T  # rows adjacent, classes far apart: a segmentation map's layout
    y = rng.integers(0, 19, 300_000)
    got = []
    for t in (1, 2):
        threads(t)
        got.append(nb.top_label_stats(s, y, None, True, 15, 1e-7, False, None, None, 1.0, 0, None, False))
    _same(got[0], got[1])
    _same(got[0], _core.top_label_stats(s, y, None, True, 15, 1e-7, False, None, None, 1.0, 0, None, False))


def test_first_bad_value_across_groups(threads):
    s, y = _probabilities((MAX_GROUP + 40) * 3276, 10, np.float32, 5)
    s[(MAX_GROUP + 10) * 3276 + 3, 4] = np.nan  # a later group
    s[100 * 3276 + 9, 2] = 1.5  # the first problem in row order, in an earlier group
    y[(MAX_GROUP + 20) * 3276] = 10
    for t in (1, 2):
        threads(t)
        st = nb.top_label_stats(s, y, None, False, 15, 1e-7)["status"]
        assert st == _core.top_label_stats(s, y, None, False, 15, 1e-7)["status"]
        assert st[:3] == (2, 100 * 3276 + 9, 2)


@pytest.mark.parametrize("n", [CHUNK_ELEMENTS - 1, MAX_GROUP * CHUNK_ELEMENTS + 5, (MAX_GROUP + 20) * CHUNK_ELEMENTS])
def test_binary(n, threads):
    rng = np.random.default_rng(n)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int64)
    w = rng.random(n)
    results = []
    for args in ((None, 15, None, 1e-7), (w, 15, None, 1e-7, False)):
        got = []
        for t in (1, 2):
            threads(t)
            got.append(nb.binary_stats(p, y, *args))
        _same(got[0], got[1])
        _same(got[0], _core.binary_stats(p, y, *args))
        results.append(got[0])
    count, sconf, scorr = _reference_bins(p, y.astype(np.float64), 15)
    np.testing.assert_array_equal(results[0]["count"], count)
    np.testing.assert_allclose(results[0]["sum_score"], sconf, rtol=1e-10)
    np.testing.assert_array_equal(results[0]["sum_target"], scorr)


def test_concurrent_calls_in_a_subprocess():
    # Python threads calling the Numba drivers at once (one takes the parallel path, the others the serial twin)
    code = ("import threading, numpy as np, calibkit\n"
            "rng = np.random.default_rng(0); p = rng.random((400_000, 10)).astype(np.float32)\n"
            "y = rng.integers(0, 10, 400_000); q = rng.random(500_000); t = (rng.random(500_000) < q).astype(int)\n"
            "calibkit.set_num_threads(2)\n"
            "want = (calibkit.ece(p, y, backend='cpp'), calibkit.ece(q, t, backend='cpp'))\n"
            "bad = []\n"
            "def run():\n"
            "    for _ in range(4):\n"
            "        got = (calibkit.ece(p, y, backend='numba'), calibkit.ece(q, t, backend='numba'))\n"
            "        if got != want: bad.append(got)\n"
            "ts = [threading.Thread(target=run) for _ in range(3)]\n"
            "[x.start() for x in ts]; [x.join() for x in ts]\n"
            "print('bad', bad)\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bad []" in r.stdout
