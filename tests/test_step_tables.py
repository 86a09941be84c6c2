"""Prebuilt step tables (StepTables / step_apply_tables) and the one-pass histogram fit (histogram_fit_columns).

References: np.interp / np.searchsorted per column for the step functions, binary_stats per column for the
histogram sums; every result bit for bit, both backends, any thread count, any split of the rows into calls.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import HistogramBinning, IsotonicCalibration
from calibkit.calibrators.nonparametric import _concatenated, _kernels

from conftest import step_applier
from subprocess_cases import check_cases


def _models(rng, K, dense):
    """K sorted knot arrays in [0, 1) with their values: spread, and (dense) crowded into one table bucket so
    that the fixed-length search spans 1 .. 64 knots."""
    xs, ys = [], []
    for k in range(K):
        m = int(rng.integers(1, 200))
        x = np.sort(rng.random(m) ** 4)
        if dense:
            crowd = 2 ** (k % 7)  # 1, 2, 4, ..., 64 knots in [0.5, 0.5 + 2**-12)
            x = np.sort(np.concatenate([x, 0.5 + rng.random(crowd) * 2.0 ** -12]))
        x = np.unique(x)
        xs.append(x)
        ys.append(np.sort(rng.random(x.shape[0])))
    return xs, ys


def _values(rng, xs, n):
    """(n, K) values: random, on the knots, next to them, on bucket edges, outside [0, 1), 1.0, -0.0."""
    K = len(xs)
    v = rng.random((n, K)) ** 3
    for k, x in enumerate(xs):
        special = np.concatenate([x, np.nextafter(x, 2), np.nextafter(x, -1), [0.0, -0.0, 1.0, -0.5, 1.5, 2.0 ** -40,
                                  2.0 ** -10, 3 / 1024, 2.0 ** -41, 0.5, 0.5 + 2.0 ** -13, 5e-324,
                                  np.nextafter(1.0, 0), np.nextafter(2.0 ** -10, 0), np.nextafter(2.0 ** -40, 0)]])
        v[:special.shape[0], k] = special[:n]
    return v


@pytest.mark.parametrize("dense", [False, True])
def test_tables_match_interp_and_searchsorted(backend, dense):
    rng = np.random.default_rng(11)
    K = 9
    xs, ys = _models(rng, K, dense)
    v = _values(rng, xs, 700)
    kernels = _kernels(backend)
    interp = kernels.StepTables(*_concatenated(xs, ys), 0)
    out = np.empty_like(v)
    assert kernels.step_apply_tables(v, interp, 0, False, out)[0] == 0
    expected = np.stack([np.interp(v[:, k], xs[k], ys[k]) for k in range(K)], axis=1)
    np.testing.assert_array_equal(out, expected)
    hy = [np.sort(rng.random(x.shape[0] + 1)) for x in xs]
    x, x_off, y, y_off = _concatenated(xs, hy)
    left = kernels.StepTables(x, x_off, y, y_off, 1)
    assert kernels.step_apply_tables(v, left, 0, False, out)[0] == 0
    expected = np.stack([hy[k][np.searchsorted(xs[k], v[:, k], side="left")] for k in range(K)], axis=1)
    np.testing.assert_array_equal(out, expected)
    # step_apply (tables built per call) gives the same bits
    again = np.empty_like(v)
    assert kernels.step_apply(v, x, x_off, y, y_off, 1, 0, False, again)[0] == 0
    np.testing.assert_array_equal(again, out)


def test_tables_reused_over_blocks_and_threads_agree_bitwise():
    rng = np.random.default_rng(12)
    K = 30
    xs, ys = _models(rng, K, True)
    v = _values(rng, xs, 3000)
    args = _concatenated(xs, ys)
    whole = np.empty_like(v)
    before = calibkit.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            calibkit.set_num_threads(threads)
            for backend in ("cpp", "numba"):
                kernels = _kernels(backend)
                tables = kernels.StepTables(*args, 0)
                out = np.empty_like(v)
                for a in range(0, v.shape[0], 457):  # many calls on one table
                    status = kernels.step_apply_tables(v[a:a + 457], tables, 0, True, out[a:a + 457])
                    assert status[0] == 0
                results.append(out)
                kernels.step_apply(v, *args, 0, 0, True, whole)
                np.testing.assert_array_equal(whole, out)
    finally:
        calibkit.set_num_threads(before)
    for out in results[1:]:
        np.testing.assert_array_equal(out, results[0])


def test_tables_report_the_first_bad_score(backend):
    kernels = _kernels(backend)
    x, x_off, y, y_off = _concatenated([np.array([0.2, 0.7])] * 3, [np.array([0.1, 0.9])] * 3)
    tables = kernels.StepTables(x, x_off, y, y_off, 0)
    p = np.full((5, 3), 0.3)
    p[3, 2], p[4, 0] = np.nan, 1.5
    out = np.empty_like(p)
    status = kernels.step_apply_tables(p, tables, 2, True, out)
    assert tuple(status[:3]) == tuple(kernels.step_apply(p, x, x_off, y, y_off, 0, 2, True, out)[:3])
    assert (status[1], status[2]) == (3, 2)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("weighted", [False, True])
def test_histogram_fit_columns_matches_binary_stats_per_class(backend, strategy, weighted):
    """Above two chunks of rows (the sums go chunk by chunk): the same bin sums as binary_stats on each column."""
    rng = np.random.default_rng(13)
    n, K, n_bins = 70_000, 4, 9
    z = rng.standard_normal((n, K)) * 2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p = np.round(p, 3)  # scores on the edges
    labels = rng.integers(0, K, n)
    w = rng.random(n) * 3 if weighted else None
    cal = HistogramBinning(n_bins=n_bins, strategy=strategy, backend=backend).fit(p, labels, sample_weight=w)
    stats = _kernels("cpp") if backend == "cpp" else __import__("calibkit._numba", fromlist=["binning"]).binning
    for c in range(K):
        edges = cal.bin_edges_[c]
        col = np.ascontiguousarray(p[:, c])
        r = stats.binary_stats(col, (labels == c).astype(np.int64), w, n_bins, edges, 1e-15)
        weight, hits = np.asarray(r["weight"]), np.asarray(r["sum_target"])
        midpoint = 0.5 * (edges[:-1] + edges[1:])
        np.testing.assert_array_equal(cal.bin_values_[c], np.divide(hits, weight, out=midpoint, where=weight > 0))


def test_histogram_fit_is_the_same_for_any_thread_count_and_backend():
    rng = np.random.default_rng(14)
    n, K = 70_000, 5
    p = rng.dirichlet(np.ones(K), n)
    labels = rng.integers(0, K, n)
    w = rng.random(n)
    before = calibkit.get_num_threads()
    fits = []
    try:
        for threads in (1, 2):
            calibkit.set_num_threads(threads)
            for backend in ("cpp", "numba"):
                fits.append(HistogramBinning(n_bins=12, backend=backend).fit(p, labels, sample_weight=w)
                            .to_dict()["fitted"])
    finally:
        calibkit.set_num_threads(before)
    assert all(f == fits[0] for f in fits[1:])


BAD_CASES = [
    ("StepTables(X, XO, Y, YO, 2)", "ValueError", r"mode must be in \[0, 1\]"),
    ("StepTables(X, np.array([0], np.int64), Y, YO, 0)", "ValueError", "x_offsets"),
    ("StepTables(X[::-1].copy(), XO, Y, YO, 0)", "ValueError", "must be sorted"),
    ("StepTables(X, XO, Y[:-1].copy(), YO, 0)", "ValueError", "y_offsets"),
    ("step_apply_tables(P, T, 2, True, np.empty((4, 2)))", "ValueError", "out"),
    ("step_apply_tables(P[:, :2], T, 2, True, np.empty((4, 2)))", "ValueError", "3 models"),
    ("step_apply_tables(P, None, 2, True, OUT)", "TypeError", "tables"),
    ("step_apply_tables(P, T, 5, True, OUT)", "ValueError", "check"),
    ("(lambda a: step_apply_tables(a[1:], T, 0, True, a[:4]))(np.full((5, 3), 0.3))", "ValueError", "overlaps"),
    ("histogram_fit_columns(P, L, None, np.zeros((2, 4)), 0)", "ValueError", "edges"),
    ("histogram_fit_columns(P, L, None, np.array([[0, .5, .2, 1.]] * 3), 0)", "ValueError", "sorted"),
    ("histogram_fit_columns(P, L, None, np.full((3, 4), np.nan), 0)", "ValueError", "sorted"),
    ("histogram_fit_columns(P, L[:2], None, E, 0)", "ValueError", "labels"),
    ("histogram_fit_columns(P, L.astype(np.int32), None, E, 0)", "(Type|Value)Error", "labels"),
]

PRELUDE = textwrap.dedent('''
    import sys, numpy as np
    from calibkit import _core
    from calibkit._numba import pav as _numba_pav
    mod = _core if sys.argv[1] == "cpp" else _numba_pav
    globals().update({n: getattr(mod, n) for n in ("StepTables", "step_apply_tables", "histogram_fit_columns")})
    P = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4]])
    X = np.array([0.1, 0.5, 0.2, 0.6, 0.3, 0.9]); XO = np.array([0, 2, 4, 6], np.int64)
    Y = np.array([0.0, 1.0, 0.2, 0.4, 0.1, 0.7]); YO = XO.copy(); OUT = np.empty((4, 3))
    L = np.array([0, 1, 2, 0], np.int64); E = np.tile(np.linspace(0, 1, 4), (3, 1))
    T = StepTables(X, XO, Y, YO, 0)
    assert T.n_models == 3 and step_apply_tables(P, T, 2, True, OUT)[0] == 0 and np.allclose(OUT.sum(1), 1)
    h = histogram_fit_columns(P, L, None, E, 0)
    assert np.asarray(h["weight"]).sum() == 12 and np.asarray(h["hits"]).sum() == 4, h
''')


@pytest.mark.parametrize("which", ["cpp", "numba"])
def test_bad_arguments_are_named_without_crashing(which):
    check_cases(PRELUDE, which, BAD_CASES)


def test_applier_gives_predict_proba_bits(backend):
    rng = np.random.default_rng(15)
    K = 6
    p = rng.dirichlet(np.ones(K) * 0.3, 2000)
    labels = rng.integers(0, K, 2000)
    for cal in (IsotonicCalibration(backend=backend), HistogramBinning(n_bins=8, backend=backend)):
        cal.fit(p, labels)
        apply = step_applier(cal)
        out = np.empty_like(p)
        for a in range(0, 2000, 300):
            assert apply(p[a:a + 300], out[a:a + 300], 2)[0] == 0
        np.testing.assert_array_equal(out, cal.predict_proba(p))
