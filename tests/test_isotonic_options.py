"""isotonic_regression / IsotonicCalibration options (y_min, y_max, increasing, out_of_bounds, near ties,
interpolating predict) against scikit-learn's IsotonicRegression and SciPy, with scikit-learn's own test cases."""

import json

import numpy as np
import pytest

import calibkit
from calibkit import isotonic_regression


def _sk():
    return pytest.importorskip("sklearn.isotonic")


def _sk_fit(x, y, w=None, **kw):
    return _sk().IsotonicRegression(**kw).fit(x, y, sample_weight=w)


# -- scikit-learn's test_isotonic.py cases, on calibkit -----------------------------------------------------

def test_sklearn_basic_and_all_x_equal(backend):
    np.testing.assert_array_equal(isotonic_regression([3, 7, 5, 9, 8, 7, 10], backend=backend).fitted,
                                  [3, 6, 6, 8, 8, 8, 10])
    np.testing.assert_array_equal(isotonic_regression([10, 0, 2], backend=backend).fitted, [4, 4, 4])
    r = isotonic_regression([10, 0, 2], x=np.ones(3), backend=backend)
    np.testing.assert_array_equal(r.fitted, 4.0)
    np.testing.assert_array_equal(r.predict([1.0]), [4.0])
    r = isotonic_regression([10, 0, 2], x=np.arange(3), y_min=0.0, y_max=1.0, backend=backend)
    np.testing.assert_array_equal(r.fitted, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("x, y, expected", [
    ([1, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 6], [1.5, 1.5, 3, 4, 5, 6]),  # ties on the minimum
    ([1, 2, 3, 4, 5, 5], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5.5, 5.5]),  # ties on the maximum
    ([0, 1, 1, 2, 3, 4], [0, 0, 1, 0, 0, 1], [0.0, 0.25, 0.25, 0.25, 0.25, 1.0]),  # differently sized groups
])
def test_sklearn_ties(x, y, expected, backend):
    r = isotonic_regression(y, x=x, backend=backend)
    np.testing.assert_allclose(r.fitted, expected, rtol=1e-15)
    np.testing.assert_allclose(r.predict(x), expected, rtol=1e-15)


def test_sklearn_ties_secondary_pituitary(backend):
    x = [8, 8, 8, 10, 10, 10, 12, 12, 12, 14, 14]
    y = [21, 23.5, 23, 24, 21, 25, 21.5, 22, 19, 23.5, 25]
    expected = [22.22222] * 9 + [24.25] * 2
    r = isotonic_regression(y, x=x, backend=backend)
    np.testing.assert_array_almost_equal(r.fitted, expected, 4)
    np.testing.assert_array_almost_equal(r.predict(x), expected, 4)


def test_sklearn_reversed_and_auto(backend):
    y = np.array([10, 9, 10, 7, 6, 6.1, 5])
    expected = [10, 9.5, 9.5, 7, 6.05, 6.05, 5]
    np.testing.assert_allclose(isotonic_regression(y, increasing=False, backend=backend).fitted, expected)
    r = isotonic_regression(y, x=np.arange(7), increasing=False, backend=backend)
    np.testing.assert_allclose(r.fitted, expected)
    assert (np.diff(r.fitted) <= 0).all() and not r.increasing
    r = isotonic_regression(y, x=np.arange(7), increasing="auto", backend=backend)
    assert not r.increasing and r.fitted[0] > r.fitted[-1]
    r = isotonic_regression([5, 6.1, 6, 7, 10, 9, 10], x=np.arange(7), increasing="auto", backend=backend)
    assert r.increasing and r.fitted[0] < r.fitted[-1]


def test_sklearn_min_max_boundaries_and_weights(backend):
    r = isotonic_regression(np.arange(6), x=np.arange(6), y_min=2, y_max=4, backend=backend)
    np.testing.assert_array_equal(np.round(r.fitted), [2, 2, 2, 3, 4, 4])
    r = isotonic_regression([1, 41, 51, 1, 2, 5, 24], x=[1, 2, 3, 4, 5, 6, 7], sample_weight=[1, 2, 3, 4, 5, 6, 7],
                            backend=backend)
    np.testing.assert_allclose(r.fitted, [1, 13.95, 13.95, 13.95, 13.95, 13.95, 24], rtol=1e-14)


def test_sklearn_out_of_bounds():
    y = np.array([3, 7, 5, 9, 8, 7, 10])
    x = np.arange(len(y))
    r = isotonic_regression(y, x=x, increasing="auto")
    with pytest.raises(ValueError, match=r"x\[0\] = -10.0 is outside the fitted range"):
        r.predict([min(x) - 10, max(x) + 10], out_of_bounds="raise")
    y1 = r.predict([min(x) - 10, max(x) + 10], out_of_bounds="clip")
    y2 = r.predict(x, out_of_bounds="clip")
    assert max(y1) == max(y2) and min(y1) == min(y2)
    assert np.isnan(r.predict([min(x) - 10, max(x) + 10])).sum() == 2


def test_sklearn_duplicate_min_entry_and_ymin_ymax():
    assert np.isfinite(isotonic_regression([0, 0, 1], x=[0, 0, 1]).predict([0, 0, 1], out_of_bounds="clip")).all()
    x = np.array([1.263, 1.318, -0.572, 0.307, -0.707, -0.176, -1.599, 1.059, 1.396, 1.906, 0.210, 0.028, -0.081,
                  0.444, 0.018, -0.377, -0.896, -0.377, -1.327, 0.180])
    for kw in ({"y_min": 0.0, "y_max": 0.1}, {"y_min": 0.0, "y_max": 0.1, "increasing": False},
               {"y_min": 0.0, "increasing": False}):
        f = isotonic_regression(x, **kw).fitted
        assert (f >= 0).all() and (f <= kw.get("y_max", np.inf)).all()
        np.testing.assert_allclose(f, _sk().isotonic_regression(x, **kw), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sklearn_make_unique_tolerance(dtype):
    x = np.array([0, 1e-16, 1, 1 + 1e-14], dtype=dtype)
    r = isotonic_regression(x.astype(np.float64), x=x)
    expected = [0, 1, 1 + 1e-14] if dtype == np.float64 else [0, 1]
    np.testing.assert_array_equal(np.unique(r.x_thresholds), np.array(expected, dtype=dtype).astype(np.float64))
    x = np.array([0, 1, 1 + 1e-16, 2], dtype=np.float64)
    r = isotonic_regression(np.array([0, 1, 2, 3.0]), x=x)
    np.testing.assert_array_equal(r.predict([0, 0.5, 1, 1.5, 2]), [0, 0.75, 1.5, 2.25, 3])
    np.testing.assert_array_equal(r.x_thresholds, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(r.y_thresholds, [0.0, 1.5, 3.0])


def test_sklearn_inf_slope():
    r = isotonic_regression([0.42, 0.42, 0.44, 0.44], x=[0.0, 4.1e-320, 4.4e-314, 1.0])
    assert np.isfinite(r.predict([0, 2.1e-319, 5.4e-316, 1e-10])).all()


@pytest.mark.parametrize("increasing", [True, False])
def test_sklearn_thresholds(increasing):
    rng = np.random.RandomState(42)
    x, y = rng.normal(size=30), rng.normal(size=30)
    r = isotonic_regression(y, x=x, increasing=increasing)
    assert r.x_thresholds.shape == r.y_thresholds.shape
    assert r.x_thresholds.shape[0] < 30 and np.isin(r.x_thresholds, x).all()
    assert r.y_thresholds.max() <= y.max() and r.y_thresholds.min() >= y.min()
    assert (np.diff(r.x_thresholds) > 0).all()
    assert (np.diff(r.y_thresholds) >= 0).all() if increasing else (np.diff(r.y_thresholds) <= 0).all()
    ir = _sk_fit(x, y, increasing=increasing)
    np.testing.assert_array_equal(r.x_thresholds, ir.X_thresholds_)
    np.testing.assert_allclose(r.y_thresholds, ir.y_thresholds_, rtol=1e-14)


# -- random agreement with scikit-learn and SciPy ------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("increasing", [True, False, "auto"])
def test_matches_sklearn_random(seed, increasing, backend):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    x = rng.integers(0, max(2, n // 3), n) / 7.0
    if seed % 2:
        x = x + rng.choice([0.0, 3e-16, 1e-13], n)  # near ties, some merged (below 1e-15), some not
    y = rng.normal(size=n) + (x if seed % 3 else -x)
    w = rng.random(n) + 0.1 if seed % 2 else None
    kw = {"y_min": -0.5, "y_max": 1.5} if seed >= 3 else {}
    r = isotonic_regression(y, x=x, sample_weight=w, increasing=increasing, backend=backend, **kw)
    ir = _sk_fit(x, y, w, increasing=increasing, out_of_bounds="nan", **kw)
    np.testing.assert_allclose(r.fitted, ir.predict(x), rtol=1e-12, atol=1e-12)
    assert r.increasing == bool(ir.increasing_)
    t = np.concatenate([rng.uniform(x.min() - 1, x.max() + 1, 50), x])
    for oob in ("nan", "clip"):
        ir.set_params(out_of_bounds=oob)
        np.testing.assert_allclose(r.predict(t, out_of_bounds=oob), ir.predict(t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("increasing", [True, False])
def test_matches_scipy(increasing, backend):
    optimize = pytest.importorskip("scipy.optimize")
    if not hasattr(optimize, "isotonic_regression"):
        pytest.skip("scipy < 1.12")
    rng = np.random.default_rng(1)
    y, w = rng.normal(size=500), rng.random(500) + 0.01
    r = isotonic_regression(y, sample_weight=w, increasing=increasing, backend=backend)
    s = optimize.isotonic_regression(y, weights=w, increasing=increasing)
    np.testing.assert_allclose(r.fitted, s.x, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(r.blocks, s.blocks)


def test_predict_without_x_uses_positions():
    r = isotonic_regression([1.0, 3.0, 2.0, 4.0])
    np.testing.assert_array_equal(r.x_thresholds, [0, 1, 2, 3])
    np.testing.assert_array_equal(r.predict([0.5, 1.5, 5.0], out_of_bounds="clip"), [1.75, 2.5, 4.0])


# -- IsotonicCalibration -------------------------------------------------------------------------------------

def _binary_data(rng, n=400):
    p = rng.random(n).round(3)
    y = (rng.random(n) < p).astype(int)
    return p, y


@pytest.mark.parametrize("increasing", [True, False, "auto"])
def test_calibration_matches_sklearn(increasing, backend):
    rng = np.random.default_rng(2)
    p, y = _binary_data(rng)
    if increasing is False:
        p = 1 - p
    w = rng.random(p.shape[0])
    w[::7] = 0  # zero weights: left out, as scikit-learn does
    kw = {"y_min": 0.05, "y_max": 0.9}
    iso = calibkit.IsotonicCalibration(increasing=increasing, out_of_bounds="clip", backend=backend, **kw)
    iso.fit(p, y, sample_weight=w)
    knots = iso.x_thresholds_[0]
    t = np.concatenate([rng.uniform(knots[0], knots[-1], 100), [-0.5, 1.5]])
    ir = _sk_fit(p, y, w, increasing=increasing, out_of_bounds="clip", **kw)
    np.testing.assert_allclose(iso.predict_proba(t)[:, 1], ir.predict(t), rtol=1e-12, atol=1e-12)
    iso.set_params(out_of_bounds="nan")
    ir.set_params(out_of_bounds="nan")
    np.testing.assert_allclose(iso.predict_proba(t)[:, 1], ir.predict(t), rtol=1e-12, atol=1e-12)
    iso.set_params(out_of_bounds="raise")
    with pytest.raises(ValueError, match=r"scores\[100\] = -0.5 \(score\) is outside the fitted range"):
        iso.predict_proba(t)
    iso.predict_proba(t[:100])


def test_calibration_near_ties_match_sklearn(backend):
    rng = np.random.default_rng(3)
    base = rng.random(60).round(2)
    p = np.concatenate([base, base + 4e-16])  # pairs closer than float64's resolution: one point each
    y = rng.integers(0, 2, 120)
    iso = calibkit.IsotonicCalibration(backend=backend).fit(p, y)
    ir = _sk_fit(p, y, out_of_bounds="clip")
    t = np.concatenate([p, rng.random(50)])
    np.testing.assert_allclose(iso.predict_proba(p)[:, 1], ir.predict(p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(iso.predict_proba(t)[:, 1], ir.predict(t), rtol=1e-12, atol=1e-12)
    # float32 scores are read as float64: float64's resolution (scikit-learn on the same float64 scores)
    p32 = (rng.random(200) * 1e-4).astype(np.float32)
    y32 = rng.integers(0, 2, 200)
    iso = calibkit.IsotonicCalibration(backend=backend).fit(p32, y32)
    ir = _sk_fit(p32.astype(np.float64), y32, out_of_bounds="clip")
    np.testing.assert_allclose(iso.predict_proba(p32)[:, 1], ir.predict(p32.astype(np.float64)), rtol=1e-12,
                               atol=1e-15)
    assert len(iso.x_thresholds_[0]) > 2


def test_calibration_multiclass_options(backend):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(300, 3)) * 2
    y = rng.integers(0, 3, 300)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    iso = calibkit.IsotonicCalibration(increasing="auto", y_min=0.01, out_of_bounds="nan", backend=backend)
    iso.fit(p, y)
    t = rng.dirichlet(np.ones(3), 40)
    t[0] = [0.0, 0.0, 1.0]  # outside every column's fitted range: a NaN row
    cols = []
    for k in range(3):
        ir = _sk_fit(p[:, k], (y == k).astype(float), increasing="auto", y_min=0.01, out_of_bounds="nan")
        cols.append(ir.predict(t[:, k]))
    q = np.column_stack(cols)
    expected = q / q.sum(1, keepdims=True)
    got = iso.predict_proba(t)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.isnan(got[0]).all()
    again = calibkit.Calibrator.from_dict(json.loads(json.dumps(iso.to_dict())))
    np.testing.assert_array_equal(again.predict_proba(t), got)


def test_decreasing_round_trip_and_checks():
    rng = np.random.default_rng(5)
    p, y = _binary_data(rng)
    iso = calibkit.IsotonicCalibration(increasing=False).fit(1 - p, y)
    assert (np.diff(iso.y_thresholds_[0]) <= 0).all()
    d = json.loads(json.dumps(iso.to_dict()))
    np.testing.assert_array_equal(calibkit.Calibrator.from_dict(d).predict_proba(p), iso.predict_proba(p))
    d["params"]["increasing"] = True
    with pytest.raises(ValueError, match="non-decreasing"):
        calibkit.Calibrator.from_dict(d)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: isotonic_regression([1.0, 2.0], increasing="up"), ValueError, "increasing must be True, False or 'auto'"),
    (lambda: isotonic_regression([1.0, 2.0], y_min=2.0, y_max=1.0), ValueError, "y_min = 2.0 is above y_max = 1.0"),
    (lambda: isotonic_regression([1.0, 2.0], y_min=np.nan), TypeError, "y_min must be None or a finite number"),
    (lambda: isotonic_regression([1.0, 2.0], y_max="1"), TypeError, "y_max"),
    (lambda: isotonic_regression([1.0, 2.0]).predict([0.5], out_of_bounds="extrapolate"), ValueError,
     "out_of_bounds"),
    (lambda: isotonic_regression([1.0, 2.0]).predict([np.nan]), ValueError, r"x\[0\] = nan"),
    (lambda: isotonic_regression([1.0, 2.0]).predict([5.0], out_of_bounds="raise"), ValueError,
     r"x\[0\] = 5.0 is outside the fitted range \[0.0, 1.0\]"),
    (lambda: calibkit.IsotonicCalibration(y_max=1.5).fit([0.1, 0.2], [0, 1]), ValueError, r"y_max must lie in \[0, 1\]"),
    (lambda: calibkit.IsotonicCalibration(out_of_bounds="x").fit([0.1, 0.2], [0, 1]), ValueError, "out_of_bounds"),
    (lambda: calibkit.IsotonicCalibration(increasing=None).fit([0.1, 0.2], [0, 1]), TypeError, "increasing"),
    (lambda: calibkit.IsotonicCalibration(increasing=False).fit([0.1, np.nan], [0, 1]), ValueError,
     r"scores\[1\] = nan"),
    (lambda: calibkit.IsotonicCalibration(increasing="auto").fit([[0.5, 1.5], [0.2, 0.8]], [0, 1]), ValueError,
     "not a probability"),
    (lambda: calibkit.IsotonicCalibration(out_of_bounds="raise").fit([[0.5, 0.5], [0.2, 0.8]], [0, 1])
     .predict_proba([[0.9, 0.1]]), ValueError, r"scores\[0, 0\] = 0.9 \(score\) is outside"),
])
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_tie_resolution_follows_sklearn_dtype(dtype):
    """float32 x: float32's resolution 1e-6; float16 and integers: converted to float64 (1e-15), as scikit-learn."""
    rng = np.random.default_rng(9)
    x = rng.integers(0, 50, 300).astype(dtype) if dtype == np.int64 else (rng.random(300) * 1e-4).astype(dtype)
    y = rng.normal(size=300)
    r = isotonic_regression(y, x=x)
    ir = _sk_fit(x, y, out_of_bounds="clip")
    tol = 2e-6 if dtype == np.float32 else 1e-12  # scikit-learn returns float32 for float32 x
    # (a point of a merged group is predicted between its group's knot and the next, as scikit-learn)
    np.testing.assert_allclose(r.predict(x, out_of_bounds="clip"), ir.predict(x), rtol=tol, atol=tol)
    np.testing.assert_array_equal(np.unique(r.x_thresholds),
                                  np.unique(np.asarray(ir.X_thresholds_, dtype=np.float64)))
