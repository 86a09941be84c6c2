"""Calibrators and their kernels: NumPy references, peers (scikit-learn, SciPy), both backends, bad input."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq, minimize
from scipy.special import logsumexp, softmax

import calibkit
from calibkit import _core, _numba
from calibkit.calibrators import (
    Calibrator, HistogramBinning, IsotonicCalibration, MatrixScaling, NotFittedError, PlattScaling,
    TemperatureScaling, VectorScaling, isotonic_regression, temperature_nll,
)

from conftest import BACKENDS, load_real

FOCAL = ["focal_cifar10_resnet50_brier.npz", "focal_cifar100_resnet110_brier.npz",
         "focal_cifar10_wrn26-10_flsd53.npz"]


# -- plain NumPy references ---------------------------------------------------------------------

def ref_temperature(z, y, w, b):
    z = np.asarray(z, np.float64)
    w = np.ones(len(y)) if w is None else w
    bz = b * z
    lse = logsumexp(bz, axis=1)
    p = np.exp(bz - lse[:, None])
    mean = (p * z).sum(1)
    var = (p * z * z).sum(1) - mean ** 2
    zy = z[np.arange(len(y)), y]
    return (w * (lse - b * zy)).sum(), (w * (mean - zy)).sum(), (w * var).sum()


def ref_vector(z, y, w, a, c):
    z = np.asarray(z, np.float64)
    w = np.ones(len(y)) if w is None else w
    s = z * a + c
    lse = logsumexp(s, axis=1)
    p = np.exp(s - lse[:, None])
    p[np.arange(len(y)), y] -= 1
    g = p * w[:, None]
    return (w * (lse - s[np.arange(len(y)), y])).sum(), (g * z).sum(0), g.sum(0)


def ref_pav(y, w, increasing=True):
    """Textbook PAV: repeatedly pool the first adjacent violating pair."""
    sign = 1.0 if increasing else -1.0
    blocks = [[sign * v * wi, wi, 1] for v, wi in zip(y, w)]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] / blocks[i][1] >= blocks[i + 1][0] / blocks[i + 1][1]:
            a, b = blocks[i], blocks.pop(i + 1)
            a[0] += b[0]
            a[1] += b[1]
            a[2] += b[2]
            i = max(i - 1, 0)
        else:
            i += 1
    return np.concatenate([np.full(c, sign * s / wt) for s, wt, c in blocks])


def synthetic_logits(rng, n, k, temperature, dtype=np.float64):
    z = rng.normal(scale=3.0, size=(n, k))
    p = softmax(z / temperature, axis=1)
    y = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z.astype(dtype), y


# -- kernels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("k", [2, 7, 10, 33])
def test_temperature_kernel_matches_reference(backend, dtype, layout, k):
    rng = np.random.default_rng(k)
    z = (rng.normal(scale=4, size=(3000, 2 * k)) if layout == "strided" else rng.normal(scale=4, size=(3000, k)))
    z = z.astype(dtype)
    z = z[:, ::2] if layout == "strided" else (np.asfortranarray(z) if layout == "F" else z)
    y = rng.integers(0, k, len(z))
    w = rng.random(len(z))
    for b in (0.1, 0.9, 3.0):
        r = temperature_nll(z, y, b, sample_weight=w, backend=backend)
        loss, d1, d2 = ref_temperature(z, y, w, b)
        if dtype == np.float64:
            assert r["loss"] == pytest.approx(loss, rel=1e-12)
            assert r["d1"] == pytest.approx(d1, rel=1e-10, abs=1e-9)
            assert r["d2"] == pytest.approx(d2, rel=1e-10)
        else:  # float32 / float16 input: one float exp per element, relative error < 2.5e-7 (the input's precision)
            scale = 1e-7 * np.abs(z.astype(np.float64)).max() * len(z)
            assert r["loss"] == pytest.approx(loss, rel=1e-6)
            assert r["d1"] == pytest.approx(d1, rel=1e-6, abs=scale)
            assert r["d2"] == pytest.approx(d2, rel=1e-6)
        assert r["count"] == len(z) and r["weight"] == pytest.approx(w.sum(), rel=1e-14)


def test_temperature_kernel_derivatives_by_finite_differences():
    rng = np.random.default_rng(3)
    z, y = rng.normal(scale=2, size=(500, 6)), rng.integers(0, 6, 500)
    b, h = 0.8, 1e-5
    f = lambda v: temperature_nll(z, y, v)  # noqa: E731
    r = f(b)
    assert r["d1"] == pytest.approx((f(b + h)["loss"] - f(b - h)["loss"]) / (2 * h), rel=1e-6)
    assert r["d2"] == pytest.approx((f(b + h)["d1"] - f(b - h)["d1"]) / (2 * h), rel=1e-6)


def test_temperature_kernel_backends_and_threads_agree(threads):
    rng = np.random.default_rng(5)
    z, y = rng.normal(scale=5, size=(200_000, 12)).astype(np.float32), rng.integers(0, 12, 200_000)
    results = []
    for n in (1, 2):
        calibkit.set_num_threads(n)
        results.append(_core.temperature_nll(z, y, None, 0.7))
    assert results[0] == results[1]  # bit-identical
    nb = _numba.temperature_nll(z, y, None, 0.7)
    for key in ("loss", "d1", "d2"):
        assert nb[key] == pytest.approx(results[0][key], rel=1e-12)


def test_temperature_kernel_chunking_is_exact():
    rng = np.random.default_rng(6)
    z, y = rng.normal(size=(10_001, 5)), rng.integers(0, 5, 10_001)
    whole = temperature_nll(z, y, 1.3)
    parts = temperature_nll(z, y, 1.3, chunk_size=777)
    for key in ("loss", "d1", "d2"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_vector_scaling_kernel_matches_reference(backend, dtype):
    rng = np.random.default_rng(8)
    k = 9
    z, y, w = rng.normal(scale=3, size=(4000, k)).astype(dtype), rng.integers(0, k, 4000), rng.random(4000)
    a, c = rng.random(k) + 0.5, rng.normal(size=k)
    r = calibkit._backend.kernels(backend).vector_scaling_nll(z, y, w, a, c)
    loss, ga, gc = ref_vector(z, y, w, a, c)
    assert r["loss"] == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(r["grad_scale"], ga, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(r["grad_bias"], gc, rtol=1e-10, atol=1e-9)


# -- temperature scaling -----------------------------------------------------------------------------

def high_precision_temperature(z, y):
    """Root of the NLL's derivative in b, by brentq on a plain NumPy derivative."""
    z = np.asarray(z, np.float64)
    zy = z[np.arange(len(y)), y]

    def d1(b):
        return ((softmax(b * z, axis=1) * z).sum(1) - zy).mean()

    return 1.0 / brentq(d1, 1e-3, 1e3, xtol=1e-15, rtol=1e-15)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_temperature_recovers_known_temperature(backend, true_t):
    rng = np.random.default_rng(int(true_t * 10))
    z, y = synthetic_logits(rng, 50_000, 10, true_t)
    ts = TemperatureScaling(backend=backend).fit(z, y)
    assert ts.temperature_ == pytest.approx(high_precision_temperature(z, y), rel=1e-9)
    assert ts.temperature_ == pytest.approx(true_t, rel=0.05)
    assert ts.n_passes_ <= 6


@pytest.mark.parametrize("name", FOCAL)
def test_temperature_on_real_validation_splits(name):
    d = load_real(name)
    ts = TemperatureScaling().fit(d["val_logits"], d["val_labels"])
    assert ts.temperature_ == pytest.approx(high_precision_temperature(d["val_logits"], d["val_labels"]), rel=1e-6)
    assert ts.n_passes_ <= 6
    zt, yt = d["test_logits"], d["test_labels"]
    assert calibkit.nll(ts.transform(zt), yt, from_logits=True) < calibkit.nll(zt, yt, from_logits=True)
    np.testing.assert_array_equal(ts.predict(zt), np.argmax(zt, axis=1))  # argmax unchanged


def test_temperature_weighted_float16_memmap_and_chunks(tmp_path):
    rng = np.random.default_rng(11)
    z, y = synthetic_logits(rng, 30_000, 8, 1.7, dtype=np.float16)
    w = rng.random(len(y)) + 0.1
    path = tmp_path / "logits.npy"
    np.save(path, z)
    mm = np.load(path, mmap_mode="r")
    a = TemperatureScaling().fit(mm, y, sample_weight=w)
    b = TemperatureScaling(chunk_size=4096).fit(z, y, sample_weight=w)
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-12)
    # weights = repeating rows
    reps = rng.integers(1, 4, len(y))
    c = TemperatureScaling().fit(z, y, sample_weight=reps.astype(float))
    d = TemperatureScaling().fit(np.repeat(z, reps, axis=0), np.repeat(y, reps))
    assert c.temperature_ == pytest.approx(d.temperature_, rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_temperature_warm_start_on_large_inputs(backend, weighted):
    """Large fits start from the fit of every 16th row: the same optimum, in fewer full passes."""
    from calibkit.calibrators import scaling

    rng = np.random.default_rng(13)
    n = scaling._WARM_START_ELEMENTS // 64 + 1000  # stride 16
    z, y = synthetic_logits(rng, n, 64, 3.0, dtype=np.float32)
    assert z.size >= scaling._WARM_START_ELEMENTS
    w = None
    if weighted:
        w = rng.random(n)
        w[::16] = 0.0  # the subsample carries no weight: no warm start, the plain iteration
    ts = TemperatureScaling(backend=backend).fit(z, y, sample_weight=w)
    cold = TemperatureScaling(backend=backend).fit_from_sums(
        lambda b: calibkit.temperature_nll(z, y, b, sample_weight=w, backend=backend), 64)
    # both fits stop at a certified tolerance of 1e-7 relative in b = 1/T (they agree to ~1e-9)
    assert ts.temperature_ == pytest.approx(cold.temperature_, rel=1e-9)
    if weighted:
        assert ts.n_passes_ == cold.n_passes_
    else:
        assert ts.n_passes_ < cold.n_passes_, (ts.n_passes_, cold.n_passes_)
        # float32 logits: the fit's optimum is that of the sums of single-precision exps (relative error
        # < 2.5e-7 each), about 1e-9 from the float64 optimum here (-7.0e-10 with the degree-6 Taylor exp,
        # +1.1e-9 with the degree-5 one): no bound guarantees 1e-9, 1e-8 leaves a margin of ten
        assert ts.temperature_ == pytest.approx(high_precision_temperature(z, y), rel=1e-8)


def test_temperature_predict_proba_and_transform():
    rng = np.random.default_rng(12)
    z, y = synthetic_logits(rng, 2000, 5, 2.0, dtype=np.float32)
    ts = TemperatureScaling().fit(z, y)
    np.testing.assert_allclose(ts.transform(z), z.astype(np.float64) / ts.temperature_, rtol=1e-15)
    np.testing.assert_allclose(ts.predict_proba(z), softmax(z.astype(np.float64) / ts.temperature_, axis=1),
                               rtol=1e-12)


def test_temperature_separable_data_warns_at_bound():
    z = np.array([[5.0, 0.0], [0.0, 5.0], [3.0, 1.0]])
    y = np.array([0, 1, 0])
    with pytest.warns(RuntimeWarning, match="bound"):
        ts = TemperatureScaling().fit(z, y)
    assert ts.temperature_ == pytest.approx(1e-3)


def test_temperature_constant_rows_warn():
    with pytest.warns(RuntimeWarning, match="constant"):
        ts = TemperatureScaling().fit(np.zeros((10, 3)), np.arange(10) % 3)
    assert ts.temperature_ == 1.0


# -- vector and matrix scaling -----------------------------------------------------------------------

def test_vector_scaling_gradient_and_reference_fit(backend):
    rng = np.random.default_rng(13)
    k = 4
    z = rng.normal(scale=2, size=(3000, k))
    true_a, true_c = np.array([0.5, 1.0, 1.5, 0.8]), np.array([0.3, -0.2, 0.0, 0.1])
    p = softmax(z * true_a + true_c, axis=1)
    y = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)
    vs = VectorScaling(reg=0.01, backend=backend)
    x = np.concatenate([rng.random(k) + 0.5, rng.normal(size=k)])
    f, g = vs.loss_and_grad(x, z, y)
    h = 1e-6
    fd = [(vs.loss_and_grad(x + h * e, z, y)[0] - vs.loss_and_grad(x - h * e, z, y)[0]) / (2 * h)
          for e in np.eye(2 * k)]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)
    vs.fit(z, y)

    def reference(x):
        s = z * x[:k] + x[k:]
        return (logsumexp(s, 1) - s[np.arange(len(y)), y]).mean() + 0.01 / k * (x[k:] @ x[k:])

    ref = minimize(reference, np.concatenate([np.ones(k), np.zeros(k)]), method="L-BFGS-B",
                   options={"gtol": 1e-10, "ftol": 1e-15})
    assert reference(np.concatenate([vs.scale_, vs.bias_])) <= ref.fun + 1e-9
    np.testing.assert_allclose(vs.scale_, ref.x[:k], atol=1e-3)
    np.testing.assert_allclose(vs.scale_, true_a, atol=0.15)


def test_matrix_scaling_gradient_and_fit_lowers_nll():
    rng = np.random.default_rng(14)
    k = 5
    z = rng.normal(scale=2, size=(4000, k)).astype(np.float32)
    mix = np.eye(k) * 0.6 + rng.normal(scale=0.1, size=(k, k))
    p = softmax(z.astype(float) @ mix.T, axis=1)
    y = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)
    ms = MatrixScaling(reg=0.05, reg_intercept=0.01)
    x = rng.normal(size=k * k + k) * 0.3
    f, g = ms.loss_and_grad(x, z, y)
    h = 1e-6
    for j in rng.choice(len(x), 8, replace=False):
        e = np.zeros_like(x)
        e[j] = h
        fd = (ms.loss_and_grad(x + e, z, y)[0] - ms.loss_and_grad(x - e, z, y)[0]) / (2 * h)
        assert g[j] == pytest.approx(fd, rel=1e-5, abs=1e-8)
    zv, yv = z[:2000], y[:2000]
    ms.fit(zv, yv)
    before = calibkit.nll(zv, yv, from_logits=True)
    assert calibkit.nll(ms.transform(zv), yv, from_logits=True) < before
    np.testing.assert_allclose(ms.predict_proba(z).sum(1), 1.0, rtol=1e-12)


def test_scaling_too_few_rows():
    with pytest.raises(ValueError, match="parameters"):
        VectorScaling().fit(np.zeros((3, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="ODIR"):
        MatrixScaling().fit(np.zeros((10, 4)), np.arange(10) % 4)


# -- isotonic regression --------------------------------------------------------------------------------

def test_isotonic_textbook_cases(backend):
    # scikit-learn's test_isotonic_regression and test_isotonic_regression_ties_min
    r = isotonic_regression([3, 7, 5, 9, 8, 7, 10], backend=backend)
    np.testing.assert_allclose(r.fitted, [3, 6, 6, 8, 8, 8, 10])
    r = isotonic_regression([1, 2, 3, 4, 5, 6], x=[1, 1, 2, 3, 4, 5], backend=backend)
    np.testing.assert_allclose(r.fitted, [1.5, 1.5, 3, 4, 5, 6])
    # SciPy's: a reversed sequence pools into its mean; decreasing fits leave it alone
    np.testing.assert_allclose(isotonic_regression([5, 4, 3, 2, 1], backend=backend).fitted, 3.0)
    np.testing.assert_allclose(isotonic_regression([5, 4, 3, 2, 1], increasing=False, backend=backend).fitted,
                               [5, 4, 3, 2, 1])
    r = isotonic_regression([1, 3, 2, 4], sample_weight=[1, 2, 3, 4], backend=backend)
    np.testing.assert_allclose(r.fitted, [1, 2.4, 2.4, 4])
    np.testing.assert_array_equal(r.blocks, [0, 1, 3, 4])


@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_isotonic_matches_sklearn_and_scipy(backend, increasing, seed):
    sklearn_isotonic = pytest.importorskip("sklearn.isotonic")
    from scipy.optimize import isotonic_regression as scipy_isotonic

    rng = np.random.default_rng(seed)
    n = 2000
    x = rng.integers(0, 300, n).astype(float)  # many ties
    y = rng.normal(size=n) + (x / 100 if increasing else -x / 100)
    w = rng.random(n) + 0.05
    ours = isotonic_regression(y, x=x, sample_weight=w, increasing=increasing, backend=backend)
    sk = sklearn_isotonic.IsotonicRegression(increasing=increasing).fit_transform(x, y, sample_weight=w)
    np.testing.assert_allclose(ours.fitted, sk, rtol=1e-12, atol=1e-12)
    ours = isotonic_regression(y, sample_weight=w, increasing=increasing, backend=backend)
    sp = scipy_isotonic(y, weights=w, increasing=increasing)
    np.testing.assert_allclose(ours.fitted, sp.x, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ours.blocks, sp.blocks)
    np.testing.assert_allclose(ours.weights, sp.weights, rtol=1e-12)
    np.testing.assert_allclose(ours.fitted, ref_pav(y, w, increasing), rtol=1e-12, atol=1e-12)


def test_isotonic_backends_agree_and_argsort_is_stable(threads):
    rng = np.random.default_rng(21)
    x = np.round(rng.normal(size=300_000), 2)
    x[::5] = -0.0
    x[1::5] = 0.0
    y = rng.random(len(x))
    calibkit.set_num_threads(1)
    one = _core.isotonic_fit(y, x, None, True)
    calibkit.set_num_threads(2)
    two = _core.isotonic_fit(y, x, None, True)
    nb = _numba.isotonic_fit(y, x, None, True)
    np.testing.assert_array_equal(one["order"], np.argsort(x, kind="stable"))
    for other in (two, nb):
        np.testing.assert_array_equal(one["order"], other["order"])
        np.testing.assert_array_equal(one["fitted"], other["fitted"])
        np.testing.assert_array_equal(one["blocks"], other["blocks"])


finite_floats = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite_floats, st.floats(0.01, 100.0), st.integers(0, 20)), min_size=1, max_size=60),
       st.booleans(), st.sampled_from(BACKENDS))
def test_isotonic_properties(points, increasing, backend):
    y = np.array([p[0] for p in points])
    w = np.array([p[1] for p in points])
    x = np.array([float(p[2]) for p in points])
    r = isotonic_regression(y, x=x, sample_weight=w, increasing=increasing, backend=backend)
    f = r.fitted[np.argsort(x, kind="stable")]
    d = np.diff(f)
    scale = 1e-9 * (1 + np.abs(y).max())
    assert (d >= -scale).all() if increasing else (d <= scale).all()  # monotone
    assert np.dot(w, r.fitted) == pytest.approx(np.dot(w, y), rel=1e-9, abs=scale * len(y))  # mean preserved
    again = isotonic_regression(r.fitted, x=x, sample_weight=w, increasing=increasing, backend=backend)
    np.testing.assert_allclose(again.fitted, r.fitted, rtol=1e-12, atol=scale)  # idempotent
    for v in np.unique(x):  # ties share one value
        assert np.ptp(r.fitted[x == v]) <= scale


@pytest.mark.parametrize("call, exc, match", [
    (lambda: isotonic_regression([1.0, np.nan, 0.5]), ValueError, r"y\[1\] = nan is not finite"),
    (lambda: isotonic_regression([1.0, 2.0], x=[0.0, np.inf]), ValueError, r"x\[1\] = inf"),
    (lambda: isotonic_regression([1.0, 2.0], sample_weight=[1.0, 0.0]), ValueError, "not positive"),
    (lambda: isotonic_regression([1.0, 2.0], sample_weight=[1.0, -1.0]), ValueError, "not positive"),
    (lambda: isotonic_regression([]), ValueError, "empty"),
    (lambda: isotonic_regression([[1.0, 2.0]]), ValueError, "1-D"),
    (lambda: isotonic_regression([1.0, 2.0], x=[1.0]), ValueError, "entries"),
    (lambda: isotonic_regression(["a", "b"]), TypeError, "numbers"),
])
def test_isotonic_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# -- Platt, histogram binning, isotonic calibration ------------------------------------------------------

def test_platt_reference_case():
    # scikit-learn's test_sigmoid_calibration: libsvm's (A, B) for these scores
    pl = PlattScaling().fit(np.array([5.0, -4.0, 1.0]), np.array([1, 0, 0]))
    assert pl.a_ == pytest.approx(-0.20261354391187855, abs=1e-5)
    assert pl.b_ == pytest.approx(0.65236314980010512, abs=1e-5)
    calibration = pytest.importorskip("sklearn.calibration")
    a, b = calibration._sigmoid_calibration(np.array([5.0, -4.0, 1.0]), np.array([1, -1, -1]))
    assert pl.a_ == pytest.approx(a, abs=1e-5) and pl.b_ == pytest.approx(b, abs=1e-5)


def test_platt_recovers_logistic_model():
    rng = np.random.default_rng(31)
    f = rng.normal(scale=2, size=200_000)
    y = (rng.random(len(f)) < 1 / (1 + np.exp(-(1.5 * f - 0.5)))).astype(int)
    pl = PlattScaling(smooth_targets=False).fit(f, y)
    assert pl.a_ == pytest.approx(-1.5, rel=0.03) and pl.b_ == pytest.approx(0.5, rel=0.06)
    p = pl.predict_proba(f)
    assert p.shape == (len(f), 2)
    np.testing.assert_array_equal(p[:, 0], 1.0 - p[:, 1])
    assert calibkit.ece(p[:, 1], y) < 0.01
    with pytest.raises(ValueError, match="one class"):
        PlattScaling().fit(f, np.zeros(len(f), int))


def test_histogram_binning_binary_reference(backend):
    rng = np.random.default_rng(32)
    p = rng.random(5000)
    y = (rng.random(5000) < p ** 2).astype(int)
    p[:10] = np.linspace(0, 1, 15)[:10]  # exactly on edges
    hb = HistogramBinning(n_bins=15, backend=backend).fit(p, y)
    idx = np.clip(np.ceil(p * 15).astype(int) - 1, 0, 14)
    expected = np.array([y[idx == m].mean() for m in range(15)])
    np.testing.assert_allclose(hb.bin_values_[0], expected, rtol=1e-12)
    np.testing.assert_allclose(hb.predict_proba(p)[:, 1], expected[idx], rtol=1e-12)
    hq = HistogramBinning(n_bins=10, strategy="quantile", backend=backend).fit(p, y)
    assert calibkit.ece(hq.predict_proba(p)[:, 1], y, n_bins=10, strategy="quantile") < calibkit.ece(p, y, n_bins=10)


@pytest.mark.parametrize("cls", [HistogramBinning, IsotonicCalibration])
def test_one_vs_rest_multiclass(cls):
    d = load_real("focal_cifar10_resnet50_brier.npz")
    cal = cls(from_logits=True).fit(d["val_logits"], d["val_labels"])
    q = cal.predict_proba(d["test_logits"])
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-12)
    assert (q >= 0).all()
    assert calibkit.ece(q, d["test_labels"]) < calibkit.ece(d["test_logits"], d["test_labels"], from_logits=True)


def test_isotonic_calibration_matches_sklearn(backend):
    sklearn_isotonic = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(33)
    p = np.round(rng.random(3000), 3)
    y = (rng.random(3000) < p ** 1.5).astype(int)
    w = rng.random(3000) + 0.1
    ours = IsotonicCalibration(backend=backend).fit(p, y, sample_weight=w)
    sk = sklearn_isotonic.IsotonicRegression(out_of_bounds="clip").fit(p, y, sample_weight=w)
    new = np.concatenate([rng.random(1000), [-0.5, 0.0, 1.0, 2.0]])
    np.testing.assert_allclose(ours.predict_proba(new)[:, 1], sk.predict(new), rtol=1e-12, atol=1e-12)


def test_renormalisation_of_all_zero_rows_is_uniform():
    p = np.array([[0.9, 0.1, 0.0], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.05, 0.05, 0.9]] * 5)
    y = np.array([0, 1, 2, 2] * 5)
    cal = IsotonicCalibration().fit(p, y)
    q = cal.predict_proba(np.array([[0.0, 0.0, 0.0]]))
    assert q.shape == (1, 3)
    np.testing.assert_allclose(q.sum(), 1.0)


# -- persistence, clone, parameters ------------------------------------------------------------------------

def fitted_calibrators():
    rng = np.random.default_rng(40)
    z, y = synthetic_logits(rng, 3000, 4, 1.5)
    f = rng.normal(size=3000)
    yb = (rng.random(3000) < 1 / (1 + np.exp(-f))).astype(int)
    return [
        (TemperatureScaling().fit(z, y), z),
        (VectorScaling().fit(z, y), z),
        (MatrixScaling(reg=0.01).fit(z, y), z),
        (PlattScaling().fit(f, yb), f),
        (HistogramBinning(strategy="quantile").fit(1 / (1 + np.exp(-f)), yb), 1 / (1 + np.exp(-f))),
        (IsotonicCalibration().fit(f, yb), f),
        (IsotonicCalibration(from_logits=True).fit(z, y), z),
        (HistogramBinning(from_logits=True).fit(z, y), z),
    ]


def test_to_dict_round_trip_through_json():
    for cal, x in fitted_calibrators():
        payload = json.loads(json.dumps(cal.to_dict()))
        again = Calibrator.from_dict(payload)
        assert type(again) is type(cal)
        np.testing.assert_array_equal(again.predict_proba(x), cal.predict_proba(x))
        np.testing.assert_array_equal(type(cal).from_dict(payload).predict(x), cal.predict(x))


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(format="other"), "not a calibkit calibrator"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.update({"class": "Nope"}), "unknown calibrator class"),
    (lambda d: d["params"].update(bogus=1), "unknown parameters"),
    (lambda d: d["params"].update(bounds="x"), "invalid parameters"),
    (lambda d: d["fitted"].pop("temperature_"), "lacks"),
    (lambda d: d["fitted"].update(temperature_=-1.0), "> 0"),
    (lambda d: d["fitted"].update(temperature_="abc"), "not an array of numbers"),
    (lambda d: d["fitted"].update(temperature_=float("nan")), "NaN"),
    (lambda d: d["fitted"].update(n_classes_=1), "n_classes_"),
    (lambda d: d.update(fitted=[]), "'fitted' dicts"),
])
def test_from_dict_rejects_malformed_payloads(mutate, match):
    cal, _ = fitted_calibrators()[0]
    payload = json.loads(json.dumps(cal.to_dict()))
    mutate(payload)
    with pytest.raises(ValueError, match=match):
        Calibrator.from_dict(payload)
    with pytest.raises(ValueError):
        VectorScaling.from_dict(cal.to_dict())  # a TemperatureScaling payload
    with pytest.raises(ValueError):
        Calibrator.from_dict("not a dict")


def test_malformed_threshold_payloads():
    for cal, _ in fitted_calibrators()[4:]:
        payload = json.loads(json.dumps(cal.to_dict()))
        key = "x_thresholds_" if "x_thresholds_" in payload["fitted"] else "bin_edges_"
        payload["fitted"][key] = payload["fitted"][key][:-1] if len(payload["fitted"][key]) > 1 else []
        with pytest.raises(ValueError):
            Calibrator.from_dict(payload)


def test_sklearn_clone_and_params():
    base = pytest.importorskip("sklearn.base")
    for cal, _ in fitted_calibrators():
        c = base.clone(cal)
        assert type(c) is type(cal) and c.get_params() == cal.get_params()
        assert not hasattr(c, cal._fitted_names[0])
    ts = TemperatureScaling().set_params(tol=1e-9)
    assert ts.tol == 1e-9 and "tol=1e-09" in repr(ts)
    with pytest.raises(ValueError, match="no parameter"):
        ts.set_params(bogus=1)


# -- bad input ---------------------------------------------------------------------------------------------

def test_bad_input_is_a_clear_error():
    rng = np.random.default_rng(50)
    z, y = synthetic_logits(rng, 200, 3, 1.0)
    ts = TemperatureScaling().fit(z, y)
    with pytest.raises(NotFittedError):
        TemperatureScaling().predict_proba(z)
    with pytest.raises(ValueError, match="3 classes"):
        ts.predict_proba(np.zeros((5, 4)))
    bad = z.copy()
    bad[7, 1] = np.nan
    for cal in (TemperatureScaling(), VectorScaling(), MatrixScaling()):
        with pytest.raises(ValueError, match=r"logits\[7, 1\] = nan is not finite"):
            cal.fit(bad, y)
    with pytest.raises(ValueError, match=r"logits\[7, 1\] = nan"):
        ts.predict_proba(bad)
    with pytest.raises(ValueError, match="out of range"):
        TemperatureScaling().fit(z, np.full(200, 3))
    with pytest.raises(ValueError, match="out of range"):
        MatrixScaling().fit(z, np.full(200, 3))
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        TemperatureScaling().fit(z[:, 0], y)
    with pytest.raises(ValueError, match="entries"):
        TemperatureScaling().fit(z, y[:10])
    with pytest.raises(ValueError, match="negative"):
        TemperatureScaling().fit(z, y, sample_weight=-np.ones(200))
    with pytest.raises(ValueError, match="sums to 0"):
        TemperatureScaling().fit(z, y, sample_weight=np.zeros(200))
    with pytest.raises(ValueError, match="bounds"):
        TemperatureScaling(bounds=(2.0, 1.0)).fit(z, y)
    with pytest.raises(ValueError, match="empty"):
        TemperatureScaling().fit(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="not 0 or 1"):
        PlattScaling().fit(rng.normal(size=10), np.arange(10))
    with pytest.raises(ValueError, match=r"labels must have shape \(200, 1\)"):  # (N, K, 1): a dense map
        PlattScaling().fit(z[:, :, None], y)
    with pytest.raises(ValueError, match=r"at least 2 classes along axis 1"):
        PlattScaling().fit(z[:, 0][None, None], y)
    with pytest.raises(ValueError, match="not a probability"):
        HistogramBinning().fit(rng.normal(size=50) * 3, rng.integers(0, 2, 50))
    with pytest.raises(ValueError, match="not a probability"):
        IsotonicCalibration().fit(z, y)  # logits without from_logits=True
    with pytest.raises(ValueError, match="binary scores"):
        IsotonicCalibration().fit(rng.random(10), rng.integers(0, 2, 10)).predict_proba(np.zeros((2, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="only class"):
            IsotonicCalibration().fit(rng.random(10), np.ones(10, int))


@pytest.mark.parametrize("b", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_nll_bad_inverse_temperature(backend, b):
    with pytest.raises(ValueError, match="inverse_temperature must be a positive finite number"):
        temperature_nll(np.zeros((3, 2)), [0, 1, 0], b, backend=backend)


def test_temperature_nll_bad_input(backend):
    z = np.zeros((4, 3))
    z[2, 1] = np.inf
    with pytest.raises(ValueError, match=r"logits\[2, 1\] = inf is not finite"):
        temperature_nll(z, [0, 1, 2, 0], 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"logits\[1, 0\] = nan"):
        temperature_nll(np.array([[0.0, 1.0], [np.nan, 0.0]]), [0, 1], 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"labels\[3\] = 3 is out of range for n_classes=3"):
        temperature_nll(np.zeros((4, 3)), [0, 1, 2, 3], 1.0, backend=backend)
    with pytest.raises(ValueError, match=r"logits\[4, 0\] = nan"):  # row index counted across chunks
        bad = np.zeros((6, 2))
        bad[4, 0] = np.nan
        temperature_nll(bad, [0] * 6, 1.0, chunk_size=3, backend=backend)
    with pytest.raises(TypeError, match="must be an array of floats"):
        temperature_nll(np.zeros((2, 2), dtype=np.complex128), [0, 1], 1.0, backend=backend)
