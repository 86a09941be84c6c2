"""One-vs-rest IsotonicCalibration / HistogramBinning through the block kernels (isotonic_fit_columns, step_apply).

The reference is the per-class NumPy path these kernels replaced: isotonic_regression per column, np.interp /
np.searchsorted per column, then each row divided by q.sum(axis=1). Results must be bit-identical to it, for
both backends and any thread count.
"""

from __future__ import annotations

import math
import textwrap
import warnings

import numpy as np
import pytest

import calibkit
from calibkit import HistogramBinning, IsotonicCalibration, isotonic_regression
from calibkit.calibrators import Calibrator
from calibkit.calibrators.nonparametric import _kernels
from subprocess_cases import check_cases


# -- plain NumPy reference ------------------------------------------------------------------------------------

def _reference_isotonic_map(s, t, w):
    if w is not None:
        keep = w > 0
        s, t, w = s[keep], t[keep], w[keep]
    r = isotonic_regression(t, x=s, sample_weight=w, backend="cpp")
    xs = s[r.order]
    first, last = xs[r.blocks[:-1]], xs[r.blocks[1:] - 1]
    x_thr = np.empty(2 * len(first))
    x_thr[0::2], x_thr[1::2] = first, last
    keep = np.ones(len(x_thr), bool)
    keep[1::2] = last != first
    return x_thr[keep], np.repeat(r.values, 2)[keep]


def _softmax(z):
    """NumPy's softmax with the C library's exp (math.exp), the exp both backends take for float64 logits: a NumPy
    built with its own AVX-512 exp may differ from it by an ulp (tests/test_softmax_apply.py)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    z = np.frompyfunc(math.exp, 1, 1)(z).astype(np.float64)
    return z / z.sum(axis=1, keepdims=True)


def _reference_isotonic(p_fit, y, w, p_new):
    """(x_thresholds, y_thresholds, predict_proba(p_new)) of one-vs-rest isotonic calibration, column by column."""
    p_fit = np.ascontiguousarray(p_fit, dtype=np.float64)
    p_new = np.ascontiguousarray(p_new, dtype=np.float64)
    maps = [_reference_isotonic_map(np.ascontiguousarray(p_fit[:, c]), (y == c).astype(float), w)
            for c in range(p_fit.shape[1])]
    q = np.empty_like(p_new)
    for c, (xt, yt) in enumerate(maps):
        q[:, c] = np.interp(p_new[:, c], xt, yt)
    total = q.sum(axis=1, keepdims=True)
    out = np.divide(q, total, out=np.full_like(q, 1.0 / q.shape[1]), where=total > 0)
    return [m[0] for m in maps], [m[1] for m in maps], out


def _data(rng, n, K, dtype=np.float64, rounded=False):
    z = rng.standard_normal((n, K)) * 3
    p = _softmax(z)
    if rounded:  # many ties
        p = np.round(p, 2)
    return z.astype(dtype), p.astype(dtype), rng.integers(0, K, n)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("rounded", [False, True])
def test_isotonic_multiclass_matches_per_column_reference(backend, dtype, weighted, rounded):
    rng = np.random.default_rng(3)
    _, p, y = _data(rng, 700, 5, dtype, rounded)
    w = rng.random(700) * (rng.random(700) > 0.2) if weighted else None
    cal = IsotonicCalibration(backend=backend).fit(p, y, sample_weight=w)
    xs, ys, expected = _reference_isotonic(p, y, w, p)
    for c in range(5):
        np.testing.assert_array_equal(cal.x_thresholds_[c], xs[c])
        np.testing.assert_array_equal(cal.y_thresholds_[c], ys[c])
    np.testing.assert_array_equal(cal.predict_proba(p), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_isotonic_from_logits_matches_reference(backend, dtype):
    # float64 logits: NumPy's softmax; float32: the one-float-exp softmax of the kernels (its bits: NumPy's
    # float32 reference in tests/test_report_speed_kernels.py), the isotonic maps then bit for bit
    from calibkit.calibrators.nonparametric import _softmax64

    rng = np.random.default_rng(4)
    z, _, y = _data(rng, 500, 4, dtype)
    cal = IsotonicCalibration(from_logits=True, backend=backend).fit(z, y)
    soft = _softmax if dtype == np.float64 else (lambda a: _softmax64(a, "cpp"))
    xs, ys, expected = _reference_isotonic(soft(z), y, None, soft(z[:200]))
    for c in range(4):
        np.testing.assert_array_equal(cal.x_thresholds_[c], xs[c])
    np.testing.assert_array_equal(cal.predict_proba(z[:200]), expected)


def test_isotonic_binary_matches_reference(backend):
    rng = np.random.default_rng(5)
    s = rng.standard_normal(400)  # binary scores need not be probabilities
    y = (rng.random(400) < 1 / (1 + np.exp(-s))).astype(int)
    cal = IsotonicCalibration(backend=backend).fit(s, y)
    xt, yt = _reference_isotonic_map(s, y.astype(float), None)
    np.testing.assert_array_equal(cal.x_thresholds_[0], xt)
    new = np.concatenate([rng.standard_normal(300) * 3, xt, [xt[0] - 1, xt[-1] + 1, 0.0, -0.0, 1.0]])
    np.testing.assert_array_equal(cal.predict_proba(new)[:, 1], np.interp(new, xt, yt))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_histogram_matches_searchsorted_reference(backend, strategy):
    rng = np.random.default_rng(6)
    _, p, y = _data(rng, 600, 6, np.float32, rounded=True)
    cal = HistogramBinning(n_bins=7, strategy=strategy, backend=backend).fit(p, y)
    p64 = p.astype(np.float64)
    q = np.empty_like(p64)
    for c in range(6):
        q[:, c] = cal.bin_values_[c][np.searchsorted(cal.bin_edges_[c][1:-1], p64[:, c], side="left")]
    total = q.sum(axis=1, keepdims=True)
    expected = np.divide(q, total, out=np.full_like(q, 1 / 6), where=total > 0)
    np.testing.assert_array_equal(cal.predict_proba(p), expected)
    # binary, scores exactly on the edges
    hb = HistogramBinning(n_bins=10, backend=backend).fit(p64[:, 0], (y == 0).astype(int))
    e = hb.bin_edges_[0]
    s = np.concatenate([e, np.nextafter(e, 2), np.nextafter(e, -1)[1:], p64[:, 0]])
    np.testing.assert_array_equal(hb.predict_proba(s)[:, 1], hb.bin_values_[0][np.searchsorted(e[1:-1], s, side="left")])


def test_knot_search_edges_and_dense_buckets(backend):
    """Values on the knots, on the table's bucket edges (b / 1024 above 2**-10; 32 per octave, by the bit
    pattern, from 2**-40 to 2**-10; 2**-40 itself), at 0, -0.0, 1 and just outside [0, 1]; knots dense inside
    one bucket (the search inside a bucket), spread over many, and on a log scale down to 1e-300 (softmax
    probabilities)."""
    rng = np.random.default_rng(7)
    dense = np.sort(rng.random(3000) * 1e-3)  # ~3000 knots inside the first few buckets
    spread = np.sort(rng.random(300))
    log_spread = np.sort(10.0 ** rng.uniform(-300, 0, 2000))
    tiny = np.sort(rng.random(500) * 2.0 ** -40)  # all in the first bucket
    log_edges = np.ldexp(1 + np.arange(32) / 32, np.arange(-40, -10)[:, None]).ravel()
    for xt in (np.unique(dense), np.unique(spread), np.unique(log_spread), np.unique(tiny), np.unique(log_edges),
               np.array([0.5]), np.array([0.0, 1.0])):
        yt = np.sort(rng.random(xt.shape[0]))
        edges = np.concatenate([np.arange(1025) / 1024, log_edges, [2.0 ** -40, 2.0 ** -10, 5e-324]])
        s = np.concatenate([xt, np.nextafter(xt, 2), np.nextafter(xt, -1), edges, np.nextafter(edges, -1),
                            np.nextafter(edges, 2), [0.0, -0.0, 1.0, -1e-7, 1 + 1e-7], rng.random(500),
                            rng.random(500) * 1e-3, 10.0 ** rng.uniform(-320, 0, 2000)])
        cal = IsotonicCalibration.from_dict({
            "format": "calibkit.calibrator", "version": 1, "class": "IsotonicCalibration",
            "params": {"from_logits": False, "backend": backend},
            "fitted": {"x_thresholds_": [xt.tolist()], "y_thresholds_": [yt.tolist()], "n_classes_": 2,
                       "binary_": True}})
        np.testing.assert_array_equal(cal.predict_proba(s)[:, 1], np.interp(s, xt, yt))
        # the histogram step (np.searchsorted side="left") on the same knots and values
        m = xt.shape[0]
        yh = rng.random(m + 1)
        out = np.empty(s.shape[0])
        status = _kernels(backend).step_apply(s, xt, np.array([0, m], np.int64), yh, np.array([0, m + 1], np.int64),
                                              1, 0, False, out)
        assert status[0] == 0
        np.testing.assert_array_equal(out, yh[np.searchsorted(xt, s, side="left")])


def test_backends_and_thread_counts_agree_bitwise():
    rng = np.random.default_rng(8)
    _, p, y = _data(rng, 3000, 40, np.float32)  # above one parallel chunk: the pools are used
    w = rng.random(3000)
    results = []
    before = calibkit.get_num_threads()
    try:
        for threads in (1, 2, 3):
            calibkit.set_num_threads(threads)
            for backend in ("cpp", "numba"):
                for cls in (IsotonicCalibration, HistogramBinning):
                    cal = cls(backend=backend).fit(p, y, sample_weight=w)
                    results.append((cls.__name__, cal.to_dict()["fitted"], cal.predict_proba(p)))
    finally:
        calibkit.set_num_threads(before)
    for name, fitted, out in results:
        ref = next(r for r in results if r[0] == name)
        assert fitted == ref[1]
        np.testing.assert_array_equal(out, ref[2])


@pytest.mark.parametrize("cls", [IsotonicCalibration, HistogramBinning])
def test_layouts_give_the_same_probabilities(backend, cls):
    """Fortran order, strided and read-only input: one row sum order (the C-ordered pairwise sum)."""
    rng = np.random.default_rng(9)
    _, p, y = _data(rng, 400, 9, np.float64)
    cal = cls(backend=backend).fit(p, y)
    expected = cal.predict_proba(p)
    wide = np.zeros((400, 18))
    wide[:, ::2] = p
    ro = p.copy()
    ro.flags.writeable = False
    for variant in (np.asfortranarray(p), wide[:, ::2], ro):
        np.testing.assert_array_equal(cal.predict_proba(variant), expected)
    assert cls(backend=backend).fit(np.asfortranarray(p), y).to_dict()["fitted"] == cal.to_dict()["fitted"]


def test_rows_whose_calibrated_values_are_all_zero_become_uniform(backend):
    p = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9], [0.2, 0.3, 0.5]] * 5)
    y = np.array([0, 1, 2, 2] * 5)
    cal = IsotonicCalibration(backend=backend).fit(p, y)
    out = cal.predict_proba(np.array([[0.0, 0.0, 0.0], [0.9, 0.1, 0.0]]))
    np.testing.assert_array_equal(out[0], np.full(3, 1 / 3))
    assert out.dtype == np.float64 and out.flags.c_contiguous


@pytest.mark.parametrize("cls", [IsotonicCalibration, HistogramBinning])
def test_round_trip_predicts_identically(backend, cls):
    rng = np.random.default_rng(10)
    _, p, y = _data(rng, 300, 4, np.float32)
    cal = cls(backend=backend).fit(p, y)
    back = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_array_equal(back.predict_proba(p), cal.predict_proba(p))
    b = cls(backend=backend).fit(p[:, 0], (y == 0).astype(int))
    np.testing.assert_array_equal(Calibrator.from_dict(b.to_dict()).predict_proba(p[:, 0]), b.predict_proba(p[:, 0]))


@pytest.mark.parametrize("cls", [IsotonicCalibration, HistogramBinning])
def test_bad_scores_are_named(backend, cls):
    rng = np.random.default_rng(11)
    _, p, y = _data(rng, 50, 3, np.float32)
    bad = p.copy()
    bad[7, 2] = np.nan
    bad[3, 1] = 1.5  # earlier in the rows, but the NaN is reported first, as it always was
    with pytest.raises(ValueError, match=r"scores\[7, 2\] = nan is not finite"):
        cls(backend=backend).fit(bad, y)
    cal = cls(backend=backend).fit(p, y)
    with pytest.raises(ValueError, match=r"scores\[7, 2\] = nan is not finite"):
        cal.predict_proba(bad)
    bad[7, 2] = 0.5
    with pytest.raises(ValueError, match=r"scores\[3, 1\] = 1.5 is not a probability"):
        cal.predict_proba(bad)
    with pytest.raises(ValueError, match=r"scores\[3, 1\] = 1.5 is not a probability"):
        cls(backend=backend).fit(bad, y)
    with pytest.raises(ValueError, match=r"fitted on 3 classes"):
        cal.predict_proba(p[:, :2])
    with pytest.raises(ValueError, match=r"labels\[0\] = 7 is out of range for n_classes=3"):
        cls(backend=backend).fit(p, np.r_[7, y[1:]])
    b = cls(backend=backend).fit(p[:, 0], (y == 0).astype(int))
    with pytest.raises(ValueError, match=r"scores\[4\] = inf is not finite"):
        b.predict_proba(np.r_[p[:4, 0], np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"scores\[1\] = nan is not finite"):
            cls(backend=backend).fit(np.r_[0.5, np.nan, 0.2], [0, 1, 1])


def test_empty_block_and_single_knot(backend):
    cal = IsotonicCalibration(backend=backend).fit(np.full((10, 2), 0.5), np.r_[np.zeros(5, int), np.ones(5, int)])
    assert [len(x) for x in cal.x_thresholds_] == [1, 1]
    np.testing.assert_array_equal(cal.predict_proba(np.array([[0.1, 0.9], [0.7, 0.2]])), np.full((2, 2), 0.5))
    assert cal.predict_proba(np.empty((0, 2))).shape == (0, 2)


# -- the raw kernels: bad arguments give errors, never a crash (in a subprocess) ---------------------------------

KERNEL_CASES = [
    ("step_apply(P, X, XO, Y, YO, 0, 2, True, np.empty((5, 3)))", "ValueError", r"out must .*shape \(4, 3\)"),
    ("step_apply(P, X, XO, Y, YO, 0, 2, True, np.empty((4, 3), np.float32))", "TypeError|ValueError", r"out"),
    ("step_apply(P, X, XO, Y, YO, 0, 2, True, np.empty((3, 4)).T)", "ValueError", r"C-contiguous|shape"),
    ("step_apply(P, X, np.array([0, 2, 4], np.int64), Y, YO, 0, 2, True, OUT)", "ValueError", r"x_offsets"),
    ("step_apply(P, X, np.array([0, 4, 2, 6], np.int64), Y, YO, 0, 2, True, OUT)", "ValueError", r"x_offsets"),
    ("step_apply(P, X, XO, Y, np.array([0, 1, 4, 6], np.int64), 0, 2, True, OUT)", "ValueError", r"model 0"),
    ("step_apply(P, X[::-1].copy(), XO, Y, YO, 0, 2, True, OUT)", "ValueError", r"sorted"),
    ("step_apply(WW[:4], X, XO, Y, YO, 0, 0, True, WW[1:])", "ValueError", r"out overlaps scores"),
    ("step_apply(P.copy(), X, XO, Y, YO, 0, 2, True, OUT) if step_apply(P, X, XO, Y, YO, 0, 2, True, P) else 0",
     "NO ERROR", r""),  # in place (out is scores) is allowed
    ("step_apply(P, X, XO, Y, YO, 2, 2, True, OUT)", "ValueError", r"mode"),
    ("step_apply(P, X, XO, Y, YO, 0, 3, True, OUT)", "ValueError", r"check"),
    ("step_apply(P, X, XO, Y, YO, 1, 2, True, OUT)", "ValueError", r"one y more than x"),
    ("step_apply(P[:, 0].copy(), X[:2].copy(), XO[:2].copy(), Y[:2].copy(), XO[:2].copy(), 0, 2, True, "
     "np.empty(4))", "ValueError", r"renormalise"),
    ("step_apply(P.tolist(), X, XO, Y, YO, 0, 2, True, OUT)", "TypeError", r"scores"),
    ("step_apply(P.astype(np.int64), X, XO, Y, YO, 0, 2, True, OUT)", "TypeError", r"float16, float32 or float64"),
    ("isotonic_fit_columns(P, np.zeros(3, np.int64), None, 0, 2)", "ValueError", r"labels"),
    ("isotonic_fit_columns(P, np.zeros(4, np.int32), None, 0, 2)", "TypeError|ValueError", r"labels"),
    ("isotonic_fit_columns(P, np.zeros(4, np.int64), np.ones(3), 0, 2)", "ValueError", r"sample_weight"),
    ("isotonic_fit_columns(P, np.zeros(4, np.int64), None, 0, 5)", "ValueError", r"check"),
    ("isotonic_fit_columns(np.zeros((2, 2, 2)), np.zeros(2, np.int64), None, 0, 2)", "ValueError", r"shape"),
]

KERNEL_PRELUDE = textwrap.dedent('''
    import sys, numpy as np
    from calibkit import _core
    from calibkit._numba import pav as _numba_pav
    mod = _core if sys.argv[1] == "cpp" else _numba_pav
    globals().update({n: getattr(mod, n) for n in ("step_apply", "isotonic_fit_columns")})
    P = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.3, 0.3, 0.4]])
    X = np.array([0.1, 0.5, 0.2, 0.6, 0.3, 0.9]); XO = np.array([0, 2, 4, 6], np.int64)
    Y = np.array([0.0, 1.0, 0.2, 0.4, 0.1, 0.7]); YO = XO.copy(); OUT = np.empty((4, 3)); WW = np.full((5, 3), 0.3)
    ok = step_apply(P, X, XO, Y, YO, 0, 2, True, OUT)
    assert ok[0] == 0 and np.allclose(OUT.sum(1), 1), (ok, OUT)
    ok = step_apply(P, X, XO, Y, YO, 0, 2, True, OUT)
''')


@pytest.mark.parametrize("which", ["cpp", "numba"])
def test_kernels_reject_bad_arguments_without_crashing(which):
    check_cases(KERNEL_PRELUDE, which, KERNEL_CASES)