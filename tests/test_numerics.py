"""Numbers that must not be silently wrong: extreme logits, extreme weights, degenerate fits, row sums.

Each case has a plain NumPy reference and runs on both backends where a kernel is involved.
"""

import math
import warnings

import numpy as np
import pytest

import calibkit
from calibkit import _validation
from calibkit.calibrators import PlattScaling, TemperatureScaling

# -- entropy and decompose of huge finite logits ----------------------------------------------------


def _softmax_entropy_reference(z, temperature=1.0):
    """-sum p log p of softmax(z / T) in float64, 0 log 0 = 0 (u = -inf gives p = 0)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = (z - z.max(axis=1, keepdims=True)) / temperature
    t = np.where(np.isnan(t), -np.inf, t)
    e = np.exp(t)
    s0 = e.sum(axis=1, keepdims=True)
    p = e / s0
    logp = np.where(p > 0, t - np.log(s0), 0.0)
    return -(p * logp).sum(axis=1), p


def _huge_rows(dtype):
    big = float(np.finfo(dtype).max) / 3.4 if dtype == np.float32 else 1e308
    top = float(np.finfo(dtype).max)
    rows = [
        [big, -big, 0.0],
        [big, 0.5 * big, -big],
        [top, -top, 0.0],          # z - max overflows to -inf
        [1.0, -big, -big],
        [big, big, big],           # uniform
        [big * 0.99999, big, 0.0],
        [-top, -top, top],
    ]
    return np.array(rows, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [1.0, 1e-3, 1e30])
def test_entropy_of_huge_logits_is_bounded_and_right(backend, dtype, temperature):
    z = _huge_rows(dtype)
    want, _ = _softmax_entropy_reference(z, temperature)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        got = calibkit.entropy(z, from_logits=True, temperature=temperature, backend=backend)
    assert np.isfinite(got).all()
    assert (got >= 0).all() and (got <= math.log(3)).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decompose_of_huge_logits_is_bounded_and_right(backend, dtype):
    z = _huge_rows(dtype)
    samples = np.stack([z, z[::-1], z])
    d = calibkit.decompose(samples, from_logits=True, backend=backend)
    hs, ps = zip(*(_softmax_entropy_reference(m) for m in samples))
    mean = np.mean(ps, axis=0)
    total = -np.where(mean > 0, mean * np.log(np.where(mean > 0, mean, 1.0)), 0.0).sum(axis=1)
    aleatoric = np.mean(hs, axis=0)
    for name, got, want in (("total", d.total, total), ("aleatoric", d.aleatoric, aleatoric),
                            ("epistemic", d.epistemic, np.maximum(total - aleatoric, 0.0))):
        assert np.isfinite(got).all(), name
        assert (got >= 0).all() and (got <= math.log(3) + 1e-12).all(), name
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(d.mean, mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_huge_logit_entropy_same_on_both_backends(dtype):
    rng = np.random.default_rng(0)
    z = (rng.uniform(-1.0, 1.0, size=(200, 11)) * float(np.finfo(dtype).max)).astype(dtype)
    a = calibkit.entropy(z, from_logits=True, backend="cpp")
    b = calibkit.entropy(z, from_logits=True, backend="numba")
    if dtype == np.float64:
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300)
    else:
        np.testing.assert_array_equal(a, b)
    want, _ = _softmax_entropy_reference(z)
    np.testing.assert_allclose(a, want, atol=1e-6)


def test_kl_to_uniform_when_the_logit_sum_overflows(backend):
    z = np.array([[1e308, 1e308, -1e308], [1e308, 1e308, 1e308], [1.0, 2.0, 3.0]])
    got = calibkit.kl_to_uniform(z, from_logits=True, backend=backend)
    # KL(U || softmax) = log s0 - log K - mean(z - max z), the mean taken as sum(z / K)
    mean_u = (z / 3).sum(axis=1) - z.max(axis=1)
    with np.errstate(over="ignore"):
        s0 = np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)
    want = np.maximum(np.log(s0) - np.log(3) - mean_u, 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] > 6e307 and got[1] == 0.0


# -- temperature fit: separable data, uninformative logits, constant rows ---------------------------


def _fit_with_warning(z, y, backend, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ts = TemperatureScaling(backend=backend, **kw).fit(z, y)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return ts, messages


@pytest.mark.parametrize("gap", [5.0, 100.0, 1e6, 1e300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_temperature_separable_gives_lower_bound_on_both_backends(gap, dtype):
    if dtype == np.float32 and gap > 1e38:
        gap = 1e38
    z = np.array([[gap, 0.0, -gap], [0.0, gap, 0.0], [0.0, -gap, gap], [gap, 0.0, 0.0]], dtype=dtype)
    y = np.array([0, 1, 2, 0])
    results = {}
    for be in ("cpp", "numba"):
        ts, messages = _fit_with_warning(z, y, be)
        assert ts.temperature_ == pytest.approx(1e-3), be
        assert len(messages) == 1 and "lower bound" in messages[0] and "separable" in messages[0], messages
        results[be] = (ts.temperature_, messages[0])
    assert results["cpp"] == results["numba"]


def test_temperature_derivatives_do_not_underflow(backend):
    z = np.array([[0.0, 100.0], [100.0, 0.0]])
    y = np.array([1, 0])
    s = calibkit.temperature_nll(z, y, 1000.0, backend=backend)
    assert s["d1"] < 0 and s["d2"] > 0  # the NLL still falls as b grows: not "constant rows"


def test_temperature_uninformative_logits_warn_upper_bound(backend):
    # Every row is the same non-constant logit vector, the labels are balanced: the best
    # prediction is uniform, reached only as T -> inf.
    z = np.tile([[2.0, 0.0]], (10, 1))
    y = np.arange(10) % 2
    ts, messages = _fit_with_warning(z, y, backend)
    assert ts.temperature_ == pytest.approx(1e3)
    assert len(messages) == 1 and "upper bound" in messages[0] and "no information" in messages[0], messages
    assert "separable" not in messages[0]


def test_temperature_constant_rows_both_backends(backend):
    ts, messages = _fit_with_warning(np.full((10, 3), 7.0), np.arange(10) % 3, backend)
    assert ts.temperature_ == 1.0
    assert len(messages) == 1 and "constant" in messages[0]


def test_temperature_reference_unchanged_on_ordinary_data(backend):
    rng = np.random.default_rng(3)
    z = rng.normal(scale=3.0, size=(500, 4))
    y = np.where(rng.random(500) < 0.7, z.argmax(axis=1), rng.integers(0, 4, 500))
    ts = TemperatureScaling(backend=backend).fit(z, y)
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    def loss(t):
        zt = z / t
        return np.mean(logsumexp(zt, axis=1) - zt[np.arange(500), y])

    want = minimize_scalar(loss, bounds=(1e-2, 1e2), method="bounded", options={"xatol": 1e-10}).x
    assert ts.temperature_ == pytest.approx(want, rel=1e-6)


# -- sample weights: scale invariance ---------------------------------------------------------------


@pytest.fixture
def weighted_problem():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.full(4, 0.5), size=300)
    y = np.where(rng.random(300) < 0.6, p.argmax(axis=1), rng.integers(0, 4, 300))
    return p, y


@pytest.mark.parametrize("value", [1e308, 5e-324, 3.0])
@pytest.mark.parametrize("binary", [False, True])
def test_constant_extreme_weights_equal_no_weights(backend, weighted_problem, value, binary):
    p, y = weighted_problem
    if binary:
        p, y = p[:, 0], (y == 0).astype(np.int64)
    w = np.full(len(y), value)
    ones = np.ones(len(y))
    for strategy in ("uniform", "quantile"):
        for norm in ("l1", "l2", "max"):
            a = calibkit.calibration_error(p, y, strategy=strategy, norm=norm, sample_weight=w, backend=backend)
            b = calibkit.calibration_error(p, y, strategy=strategy, norm=norm, sample_weight=ones, backend=backend)
            assert a == pytest.approx(b, rel=1e-12, abs=1e-15)
        ta = calibkit.reliability_table(p, y, strategy=strategy, sample_weight=w, backend=backend)
        tb = calibkit.reliability_table(p, y, strategy=strategy, sample_weight=ones, backend=backend)
        for field in ("lower", "upper", "count", "weight", "mean_confidence", "accuracy"):
            np.testing.assert_allclose(getattr(ta, field), getattr(tb, field), rtol=1e-12, err_msg=field)
    for f in (calibkit.brier_score, calibkit.nll):
        assert f(p, y, sample_weight=w, backend=backend) == pytest.approx(
            f(p, y, sample_weight=ones, backend=backend), rel=1e-12)
    if not binary:
        assert calibkit.classwise_calibration_error(p, y, sample_weight=w, backend=backend) == pytest.approx(
            calibkit.classwise_calibration_error(p, y, sample_weight=ones, backend=backend), rel=1e-12)


def test_scaled_weights_match_numpy_reference(backend, weighted_problem):
    p, y = weighted_problem
    rng = np.random.default_rng(6)
    w = rng.random(len(y))
    onehot = np.eye(4)[y]
    want_brier = np.sum(w * ((p - onehot) ** 2).sum(axis=1)) / w.sum()
    want_nll = -np.sum(w * np.log(p[np.arange(len(y)), y])) / w.sum()
    for scale in (1.0, 1e308 / w.max(), 1e-310):
        assert calibkit.brier_score(p, y, sample_weight=w * scale, backend=backend) == pytest.approx(want_brier,
                                                                                                       rel=1e-9)
        assert calibkit.nll(p, y, sample_weight=w * scale, backend=backend) == pytest.approx(want_nll, rel=1e-9)


def test_all_zero_weights_rejected(backend, weighted_problem):
    p, y = weighted_problem
    for f in (calibkit.ece, calibkit.brier_score, calibkit.nll, calibkit.reliability_table,
              calibkit.classwise_calibration_error):
        with pytest.raises(ValueError, match="sample_weight sums to 0"):
            f(p, y, sample_weight=np.zeros(len(y)), backend=backend)


def test_bad_weights_named_with_their_value(weighted_problem):
    p, y = weighted_problem
    w = np.ones(len(y))
    w[7] = -2.0
    with pytest.raises(ValueError, match=r"sample_weight\[7\] = -2.0 is negative"):
        calibkit.ece(p, y, sample_weight=w)
    w[7] = np.inf
    with pytest.raises(ValueError, match=r"sample_weight\[7\] = inf is not finite"):
        calibkit.brier_score(p, y, sample_weight=w)


def test_weight_scaling_does_not_modify_input(weighted_problem):
    p, y = weighted_problem
    w = np.full(len(y), 1e308)
    calibkit.ece(p, y, sample_weight=w)
    assert (w == 1e308).all()


def test_calibrator_fits_invariant_to_weight_scale(backend):
    rng = np.random.default_rng(8)
    z = rng.normal(scale=2.0, size=(400, 3))
    y = np.where(rng.random(400) < 0.7, z.argmax(axis=1), rng.integers(0, 3, 400))
    t1 = TemperatureScaling(backend=backend).fit(z, y).temperature_
    for value in (1e308, 5e-324):
        t = TemperatureScaling(backend=backend).fit(z, y, sample_weight=np.full(400, value)).temperature_
        assert t == pytest.approx(t1, rel=1e-9)
    from calibkit.calibrators import VectorScaling

    v1 = VectorScaling(backend=backend).fit(z, y)
    v2 = VectorScaling(backend=backend).fit(z, y, sample_weight=np.full(400, 1e308))
    np.testing.assert_allclose(v2.scale_, v1.scale_, rtol=1e-6)
    f = z[:, 0]
    yb = (y == 0).astype(np.int64)
    ref = PlattScaling(smooth_targets=False).fit(f, yb)  # Platt's prior depends on the weighted counts
    for value in (1e308, 5e-324):
        pl = PlattScaling(smooth_targets=False).fit(f, yb, sample_weight=np.full(400, value))
        assert (pl.a_, pl.b_) == pytest.approx((ref.a_, ref.b_), rel=1e-9)


# -- Platt scaling on constant scores ---------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, 0.5, 3.0, -1e300])
@pytest.mark.parametrize("smooth", [True, False])
def test_platt_constant_scores_predict_the_base_rate(value, smooth):
    y = np.array([0, 0, 0, 1] * 5)
    w = np.linspace(1.0, 2.0, 20)
    with pytest.warns(RuntimeWarning, match="constant"):
        pl = PlattScaling(smooth_targets=smooth).fit(np.full(20, value), y, sample_weight=w)
    n_pos, n_neg = w[y == 1].sum(), w[y == 0].sum()  # the prior uses the weights as given
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)) if smooth else y.astype(float)
    want = np.sum(w * t) / w.sum()
    assert pl.a_ == 0.0
    np.testing.assert_allclose(pl.predict_proba(np.array([value, value + 1.0]))[:, 1], want, rtol=1e-12)


# -- fpr_at_tpr at tpr = 0 --------------------------------------------------------------------------


def test_fpr_at_tpr_zero_is_accept_nothing(backend):
    sk = pytest.importorskip("sklearn.metrics")
    scores_in = np.array([0.9, 0.5, 0.3])
    scores_out = np.array([0.9, 0.2, 0.1])  # an OOD sample ties the highest score
    y = np.r_[np.ones(3), np.zeros(3)]
    fpr, tpr, _ = sk.roc_curve(y, np.r_[scores_in, scores_out])
    for level in (0.0, 1 / 3, 0.5, 0.95, 1.0):
        want = fpr[np.searchsorted(tpr, level)]
        got = calibkit.fpr_at_tpr(scores_in, scores_out, tpr=level, backend=backend)
        assert got == pytest.approx(want), level
    assert calibkit.fpr_at_tpr(scores_in, scores_out, tpr=0.0, backend=backend) == 0.0
    acc = calibkit.OODAccumulator() if hasattr(calibkit, "OODAccumulator") else None
    if acc is not None:
        acc.update(scores_in, scores_out)
        assert acc.compute(tpr=0.0).fpr_at_tpr == 0.0


# -- multiclass probabilities whose rows do not sum to 1 --------------------------------------------


def test_rows_not_summing_to_one_raise_naming_the_row(backend):
    p = np.full((6, 4), 0.25)
    p[3] = [1.0, 1.0, 1.0, 1.0]  # every value a valid probability, the row sums to 4
    y = np.arange(6) % 4
    for f in (calibkit.brier_score, calibkit.nll):
        with pytest.raises(ValueError, match=r"scores\[3\] sums to 4\.0, not 1 .*check_sums=False"):
            f(p, y, backend=backend)


def test_check_sums_false_scores_rows_as_they_are(backend):
    rng = np.random.default_rng(9)
    p = rng.random((50, 5))  # rows sum to about 2.5
    y = rng.integers(0, 5, 50)
    onehot = np.eye(5)[y]
    assert calibkit.brier_score(p, y, check_sums=False, backend=backend) == pytest.approx(
        np.mean(((p - onehot) ** 2).sum(axis=1)), rel=1e-12)
    assert calibkit.nll(p, y, check_sums=False, backend=backend) == pytest.approx(
        -np.mean(np.log(p[np.arange(50), y])), rel=1e-12)


@pytest.mark.parametrize("dtype,ok,bad", [(np.float16, 5e-3, 2e-2), (np.float32, 5e-4, 2e-3),
                                          (np.float64, 5e-6, 2e-5)])
def test_row_sum_tolerance_is_dtype_aware(dtype, ok, bad):
    y = np.array([0, 1])
    p = np.array([[0.5 + ok, 0.5], [0.25, 0.75]], dtype=dtype)
    calibkit.brier_score(p, y)
    p = np.array([[0.25, 0.75], [0.5 + bad, 0.5]], dtype=dtype)
    with pytest.raises(ValueError, match=r"scores\[1\] sums to"):
        calibkit.brier_score(p, y)


def test_row_sum_check_is_chunked(monkeypatch):
    monkeypatch.setattr(_validation, "_ROW_SUM_CHUNK", 8)  # 2 rows of 4 per chunk
    p = np.full((9, 4), 0.25)
    p[7, 0] = 0.5
    with pytest.raises(ValueError, match=r"scores\[7\] sums to 1\.25"):
        calibkit.nll(p, np.zeros(9, np.int64))


def test_row_sum_check_skips_logits_binary_and_non_finite():
    y = np.array([0, 1, 1])
    calibkit.brier_score(np.array([[3.0, 1.0], [0.0, 5.0], [2.0, 2.0]]), y, from_logits=True)
    calibkit.nll(np.array([0.2, 0.9, 0.6]), y)
    with pytest.raises(ValueError, match="not finite"):  # the kernel names the element
        calibkit.nll(np.array([[0.5, 0.5], [np.nan, 0.5], [0.5, 0.5]]), y)


# -- documented differences from scikit-learn --------------------------------------------------------


def test_brier_against_sklearn_defaults():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(10)
    p3 = rng.dirichlet(np.ones(3), size=40)
    y3 = rng.integers(0, 3, 40)
    assert calibkit.brier_score(p3, y3) == pytest.approx(sk.brier_score_loss(y3, p3, labels=[0, 1, 2]))
    p2 = rng.dirichlet(np.ones(2), size=40)
    y2 = rng.integers(0, 2, 40)
    assert calibkit.brier_score(p2, y2) == pytest.approx(2 * sk.brier_score_loss(y2, p2))
    assert calibkit.brier_score(p2[:, 1], y2) == pytest.approx(sk.brier_score_loss(y2, p2[:, 1]))


def test_quantile_edges_are_numpy_quantile_not_percentile():
    # 0.7 * 100 / 100 != 0.7: scikit-learn's np.percentile edge 7 of 10 differs in the last bit
    rng = np.random.default_rng(0)
    q = np.linspace(0, 1, 11)
    x = rng.random(20)
    assert not np.array_equal(np.quantile(x, q), np.percentile(x, q * 100))
    y = (rng.random(20) < x).astype(np.int64)
    t = calibkit.reliability_table(x, y, n_bins=10, strategy="quantile")
    np.testing.assert_array_equal(np.r_[t.lower, t.upper[-1]], np.quantile(x, q))


# -- weights and values a streaming state or a calibrator cannot represent ---------------------------------

@pytest.mark.parametrize("w", [1e308, 5e-324, 1e-310])
def test_stream_refuses_weights_it_cannot_sum(backend, w):
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(3), 50)
    y = rng.integers(0, 3, 50)
    acc = calibkit.CalibrationAccumulator(backend=backend)
    weights = np.ones(50)
    weights[7] = w
    with pytest.raises(ValueError, match=r"sample_weight\[7\] = .* is outside \[1e-300, 1e\+300\]"):
        acc.update(p, y, sample_weight=weights)
    assert acc.count == 0  # atomic: nothing was added


def test_stream_refuses_a_total_weight_that_would_overflow(backend):
    p = np.array([[0.7, 0.3], [0.2, 0.8]])
    acc = calibkit.CalibrationAccumulator(backend=backend).update(p, [0, 1], sample_weight=[4e299, 4e299])
    with pytest.raises(ValueError, match="total weight of the stream would pass 1e\\+300"):
        acc.update(p, [0, 1], sample_weight=[4e299, 4e299])
    assert acc.count == 2


def test_stream_scaled_weights_give_the_same_metrics(backend):
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(4), 200)
    y = rng.integers(0, 4, 200)
    w = rng.random(200)
    base = calibkit.CalibrationAccumulator(backend=backend).update(p, y, w).compute()
    for scale in (1e-290, 1e290):
        r = calibkit.CalibrationAccumulator(backend=backend).update(p, y, w * scale).compute()
        assert r.ece == pytest.approx(base.ece, rel=1e-12)
        assert r.brier == pytest.approx(base.brier, rel=1e-12)
        assert r.nll == pytest.approx(base.nll, rel=1e-12)


def test_decayed_window_flushes_faded_weights_instead_of_refusing_them():
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(3), 5000)
    y = rng.integers(0, 3, 5000)
    acc = calibkit.WindowedAccumulator(decay=0.5).update(p, y, np.full(5000, 1e-200))
    r = acc.compute()
    assert np.isfinite(r.ece) and 0 <= r.ece <= 1


def test_scaled_logits_that_overflow_are_an_error_not_nan():
    vs = calibkit.VectorScaling.from_dict({
        "format": "calibkit.calibrator", "version": 1, "class": "VectorScaling", "params": {},
        "fitted": {"scale_": [1e150, 1.0, 1.0], "bias_": [0.0, 0.0, 0.0], "n_classes_": 3,
                   "n_iter_": 1, "n_passes_": 1}})
    z = np.array([[1.0, 2.0, 3.0], [1e300, 0.0, 0.0]])
    for method in (vs.transform, vs.predict_proba):
        with pytest.raises(ValueError, match=r"logits\[1\]: the calibrated logits overflow float64"):
            method(z)
    # temperature scaling shifts by the row maximum first: huge logits still give probabilities
    ts = calibkit.TemperatureScaling.from_dict({
        "format": "calibkit.calibrator", "version": 1, "class": "TemperatureScaling", "params": {},
        "fitted": {"temperature_": 1e-100, "n_classes_": 3, "n_passes_": 1}})
    prob = ts.predict_proba(np.array([[1e300, -1e300, 0.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(prob, [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_set_num_threads_is_bounded(threads):
    with pytest.raises(ValueError, match=r"n must be in \[1, 1024\], got 5000"):
        calibkit.set_num_threads(5000)
    calibkit._core.set_num_threads(2 ** 31 - 1)  # the binding clamps to the same bound
    assert calibkit.get_num_threads() == 1024
