"""Issue 16, section 1: beta calibration, ensemble temperature scaling, top-label histogram binning and
multiclass Platt scaling, against their references (betacal, scikit-learn, NumPy / SciPy fits)."""

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

import calibkit
from calibkit.calibrators import (
    BetaCalibration, Calibrator, EnsembleTemperatureScaling, NotFittedError, PlattScaling, TemperatureScaling,
    TopLabelHistogramBinning,
)

from conftest import labels_from, load_real, random_probs


def _binary_beta_data(rng, n=3000, dtype=np.float64):
    s = rng.beta(0.7, 1.3, size=n)
    y = (rng.random(n) < s ** 2.5 / (s ** 2.5 + (1 - s) ** 1.5 * 0.6)).astype(np.int64)
    return s.astype(dtype), y


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _renormalise(q):
    s = q.sum(axis=1, keepdims=True)
    return q / s


# -- beta calibration -----------------------------------------------------------------------------------------

def _betacal_reference(s, y, parameters, sample_weight=None, tight=True):
    """betacal's fit; with ``tight`` its scikit-learn LogisticRegression runs to tol=1e-14 instead of its default
    1e-4 (at the default, betacal stops short of the optimum of its own objective: probabilities ~1e-4 off)."""
    betacal = pytest.importorskip("betacal")
    import betacal.beta_calibration as module
    from sklearn.linear_model import LogisticRegression

    original = module.LogisticRegression
    if tight:
        module.LogisticRegression = lambda **kw: LogisticRegression(**kw, tol=1e-14, max_iter=100_000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = betacal.BetaCalibration(parameters=parameters).fit(s, y, sample_weight)
    finally:
        module.LogisticRegression = original
    return ref


@pytest.mark.parametrize("parameters", ["abm", "am", "ab"])
def test_beta_matches_betacal(parameters):
    rng = np.random.default_rng(0)
    s, y = _binary_beta_data(rng)
    ref = _betacal_reference(s, y, parameters)
    ours = BetaCalibration(parameters).fit(s, y)
    grid = np.concatenate([np.linspace(0.0, 1.0, 201), s[:500], [1e-300, 1 - 1e-17]])
    np.testing.assert_allclose(ours.predict_proba(grid)[:, 1], ref.predict(grid), rtol=0, atol=1e-6)
    a, b, _ = ref.calibrator_.map_
    assert ours.a_ == pytest.approx(a, rel=1e-7) and ours.b_ == pytest.approx(b, rel=1e-7)
    # betacal as shipped (scikit-learn's tol=1e-4) stops short: within 1e-3, and its NLL is not below ours
    loose = _betacal_reference(s, y, parameters, tight=False)
    np.testing.assert_allclose(ours.predict_proba(grid)[:, 1], loose.predict(grid), rtol=0, atol=1e-3)
    p_ours, p_loose = ours.predict_proba(s)[:, 1], loose.predict(s)
    nll = [-np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)) for p in (p_ours, p_loose)]
    assert nll[0] <= nll[1] + 1e-9


def test_beta_fallbacks_match_betacal():
    """abm with a fitted a < 0 (resp. b < 0) is refitted on one feature, as betacal does."""
    rng = np.random.default_rng(1)
    s = rng.random(4000)
    # P(y = 1) falls then rises near 0: the full fit has a < 0
    for prob, which in ((0.5 - 0.45 * np.sqrt(s) + 0.4 * s ** 4, "a"), (0.1 + 0.5 * s ** 0.3 * (1 - s) ** 0.2, "b")):
        y = (rng.random(4000) < np.clip(prob, 0, 1)).astype(int)
        ref = _betacal_reference(s, y, "abm")
        ours = BetaCalibration().fit(s, y)
        assert (ours.a_ if which == "a" else ours.b_) == 0.0
        assert ref.calibrator_.map_[0 if which == "a" else 1] == 0
        np.testing.assert_allclose(ours.predict_proba(s)[:, 1], ref.predict(s), atol=1e-6)


def test_beta_sample_weight_matches_betacal_and_repeats():
    rng = np.random.default_rng(2)
    s, y = _binary_beta_data(rng, 1500)
    w = rng.integers(1, 4, size=len(s)).astype(np.float64)
    ours = BetaCalibration().fit(s, y, sample_weight=w)
    repeated = BetaCalibration().fit(np.repeat(s, w.astype(int)), np.repeat(y, w.astype(int)))
    np.testing.assert_allclose([ours.a_, ours.b_, ours.c_], [repeated.a_, repeated.b_, repeated.c_], rtol=1e-9)
    ref = _betacal_reference(s, y, "abm", w)
    np.testing.assert_allclose(ours.predict_proba(s)[:, 1], ref.predict(s), atol=1e-6)


def test_beta_is_the_optimum_of_its_objective():
    """Independently of betacal: the (a, b, c) found minimise the logistic loss on (ln s, -ln(1 - s))."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    s, y = _binary_beta_data(rng)
    ours = BetaCalibration().fit(s, y)
    x = np.column_stack([np.log(s), -np.log1p(-s), np.ones_like(s)])

    def nll(beta):
        eta = x @ beta
        return float(np.sum(np.logaddexp(0, eta) - y * eta))

    ref = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10})
    assert ours.a_ > 0 and ours.b_ > 0
    assert nll(np.array([ours.a_, ours.b_, ours.c_])) <= ref.fun + 1e-9
    np.testing.assert_allclose([ours.a_, ours.b_, ours.c_], ref.x, rtol=1e-4)


def test_beta_clipping_follows_the_dtype():
    """Scores of 0 and 1 are clipped to [eps, 1 - eps] with eps of their float dtype (betacal's rule);
    float32 scores are computed in float64 here (betacal keeps float32): they agree to float32 rounding."""
    rng = np.random.default_rng(4)
    s, y = _binary_beta_data(rng, 2000, np.float32)
    s[:20] = 0.0
    s[20:40] = 1.0
    y[:20], y[20:40] = 0, 1
    ours = BetaCalibration().fit(s, y)
    eps32 = float(np.finfo(np.float32).eps)
    p = ours.predict_proba(np.array([0.0, 1.0], np.float32))[:, 1]
    eta = ours.a_ * np.log([eps32, 1 - eps32]) - ours.b_ * np.log1p(-np.array([eps32, 1 - eps32])) + ours.c_
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-eta)), rtol=1e-12)
    # betacal on the float64 scores clipped with the float32 eps: the same model, to 1e-6
    clipped = np.clip(s.astype(np.float64), eps32, 1 - eps32)
    ref = _betacal_reference(clipped, y, "abm")
    np.testing.assert_allclose(ours.predict_proba(s)[:, 1], ref.predict(clipped), atol=1e-6)
    # betacal on the float32 scores themselves computes in float32: the difference is float32 rounding
    ref32 = _betacal_reference(s, y, "abm")
    np.testing.assert_allclose(ours.predict_proba(s)[:, 1], ref32.predict(s), atol=1e-4)


def test_beta_one_vs_rest_on_real_dump():
    d = load_real("netcal_cifar10_wrn16-4.npz")  # 2472 rows whose float32 top probability is exactly 1.0
    p, y = d["probs"][:4000], d["labels"][:4000]
    ours = BetaCalibration().fit(p, y)
    assert ours.a_.shape == (10,) and not ours.binary_
    q = ours.predict_proba(d["probs"][4000:])
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
    # betacal per class on the float64 scores clipped with the float32 eps (ours clips float32 scores so)
    eps32 = float(np.finfo(np.float32).eps)
    fit64 = np.clip(p.astype(np.float64), eps32, 1 - eps32)
    new64 = np.clip(d["probs"][4000:].astype(np.float64), eps32, 1 - eps32)
    cols = [_betacal_reference(fit64[:, k], (y == k).astype(int), "abm").predict(new64[:, k]) for k in range(10)]
    np.testing.assert_allclose(q, _renormalise(np.column_stack(cols)), atol=1e-6)


def test_beta_from_logits_both_backends(backend):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1500, 4)) * 2
    y = np.argmax(z + rng.gumbel(size=z.shape), axis=1)
    a = BetaCalibration(from_logits=True, backend=backend).fit(z, y)
    b = BetaCalibration().fit(_softmax(z), y)
    np.testing.assert_allclose(a.predict_proba(z), b.predict_proba(_softmax(z)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("parameters", ["abm", "am", "ab"])
def test_beta_round_trip(parameters):
    rng = np.random.default_rng(6)
    s, y = _binary_beta_data(rng, 800)
    p3 = random_probs(rng, 800, 3)
    y3 = labels_from(rng, p3)
    for cal, x in ((BetaCalibration(parameters).fit(s, y), s), (BetaCalibration(parameters).fit(p3, y3), p3)):
        again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        np.testing.assert_array_equal(again.predict_proba(x), cal.predict_proba(x))
        np.testing.assert_array_equal(again.predict(x), cal.predict(x))


def test_beta_bad_input():
    rng = np.random.default_rng(7)
    s, y = _binary_beta_data(rng, 200)
    with pytest.raises(ValueError, match="parameters"):
        BetaCalibration("abc").fit(s, y)
    with pytest.raises(ValueError, match=r"scores\[3\] = 1.5 is not a probability"):
        BetaCalibration().fit(np.where(np.arange(200) == 3, 1.5, s), y)
    with pytest.raises(ValueError, match="not 0 or 1"):
        BetaCalibration().fit(s, np.full(200, 2))
    with pytest.raises(ValueError, match="only one class"):
        BetaCalibration().fit(s, np.zeros(200, int))
    with pytest.raises(ValueError, match="not finite|NaN"):
        BetaCalibration().fit(np.where(np.arange(200) == 5, np.nan, s), y)
    with pytest.raises(ValueError, match=r"labels\[0\] = 5 is out of range for n_classes=3"):
        BetaCalibration().fit(random_probs(rng, 50, 3), np.full(50, 5))
    with pytest.raises(NotFittedError):
        BetaCalibration().predict_proba(s)
    cal = BetaCalibration().fit(s, y)
    with pytest.raises(ValueError, match="binary scores"):
        cal.predict_proba(random_probs(rng, 5, 3))
    payload = cal.to_dict()
    payload["fitted"]["a_"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="'a_'"):
        Calibrator.from_dict(payload)
    payload = cal.to_dict()
    payload["fitted"]["c_"] = float("nan")
    with pytest.raises(ValueError, match="'c_'"):
        Calibrator.from_dict(payload)


# -- ensemble temperature scaling -----------------------------------------------------------------------------

def _ets_reference(z, y, temperature, w=None):
    """The NLL-optimal simplex weights by SciPy's SLSQP at a tight tolerance, independently of calibkit."""
    from scipy.optimize import minimize

    n, k = z.shape
    idx = np.arange(n)
    a = _softmax(z / temperature)[idx, y]
    b = _softmax(z)[idx, y]
    w = np.ones(n) if w is None else w

    def nll(u):
        return -float(w @ np.log(u[0] * a + u[1] * b + u[2] / k)) / w.sum()

    best = None
    for start in ([1 / 3, 1 / 3, 1 / 3], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]):
        r = minimize(nll, start, method="SLSQP", bounds=[(0, 1)] * 3,
                     constraints=[{"type": "eq", "fun": lambda u: u.sum() - 1}], options={"ftol": 1e-15,
                                                                                           "maxiter": 500})
        if best is None or r.fun < best.fun:
            best = r
    return best.x, best.fun, nll


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ets_matches_a_scipy_fit(seed, backend):
    rng = np.random.default_rng(seed)
    n, k = 3000, 5
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k)) * 3 + 4 * np.eye(k)[y] * rng.random((n, 1))
    z[: n // 5] = rng.normal(size=(n // 5, k)) * 4  # a share of rows that carry no information: w3 > 0
    ets = EnsembleTemperatureScaling(backend=backend).fit(z, y)
    ts = TemperatureScaling(backend=backend).fit(z, y)
    assert ets.temperature_ == ts.temperature_
    ref_w, ref_f, nll = _ets_reference(z, y, ets.temperature_)
    assert nll(ets.weights_) <= ref_f + 1e-12
    np.testing.assert_allclose(ets.weights_, ref_w, atol=2e-5)
    assert ets.weights_.sum() == pytest.approx(1.0, abs=1e-15) and (ets.weights_ >= 0).all()
    p = ets.predict_proba(z)
    w1, w2, w3 = ets.weights_
    np.testing.assert_allclose(p, w1 * _softmax(z / ets.temperature_) + w2 * _softmax(z) + w3 / k, rtol=1e-12)
    np.testing.assert_array_equal(ets.predict(z), np.argmax(z, axis=1))


def test_ets_on_real_dump_backends_agree():
    d = load_real("focal_cifar100_resnet50_brier.npz")
    fits = [EnsembleTemperatureScaling(backend=b).fit(d["val_logits"], d["val_labels"]) for b in ("cpp", "numba")]
    np.testing.assert_allclose(fits[0].weights_, fits[1].weights_, atol=1e-9)
    assert fits[0].temperature_ == pytest.approx(fits[1].temperature_, rel=1e-9)
    ref_w, ref_f, nll = _ets_reference(d["val_logits"].astype(np.float64), d["val_labels"], fits[0].temperature_)
    assert nll(fits[0].weights_) <= ref_f + 1e-12
    test_nll = calibkit.nll(fits[0].predict_proba(d["test_logits"]), d["test_labels"])
    ts_nll = calibkit.nll(TemperatureScaling().fit(d["val_logits"], d["val_labels"]).predict_proba(d["test_logits"]),
                          d["test_labels"])
    assert test_nll <= ts_nll + 5e-3  # ETS never does much worse than its own temperature


def test_ets_sample_weight_equals_repeats():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 4, 600)
    z = rng.normal(size=(600, 4)) * 3 + 2 * np.eye(4)[y]
    w = rng.integers(1, 4, 600)
    a = EnsembleTemperatureScaling(tol=1e-12).fit(z, y, sample_weight=w.astype(float))
    b = EnsembleTemperatureScaling(tol=1e-12).fit(np.repeat(z, w, axis=0), np.repeat(y, w))
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-9)
    np.testing.assert_allclose(a.weights_, b.weights_, atol=1e-8)


def test_ets_round_trip_and_bad_input():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 3, 300)
    z = rng.normal(size=(300, 3)) * 2 + 2 * np.eye(3)[y]
    ets = EnsembleTemperatureScaling().fit(z, y)
    again = Calibrator.from_dict(json.loads(json.dumps(ets.to_dict())))
    np.testing.assert_array_equal(again.predict_proba(z), ets.predict_proba(z))
    payload = ets.to_dict()
    payload["fitted"]["weights_"] = [0.5, 0.6, 0.1]
    with pytest.raises(ValueError, match="'weights_' must sum to 1"):
        Calibrator.from_dict(payload)
    payload["fitted"]["weights_"] = [1.5, -0.5, 0.0]
    with pytest.raises(ValueError, match="'weights_'"):
        Calibrator.from_dict(payload)
    with pytest.raises(ValueError, match=r"labels\[0\] = 7"):
        EnsembleTemperatureScaling().fit(z, np.full(300, 7))
    with pytest.raises(ValueError, match="max_iter"):
        EnsembleTemperatureScaling(max_iter=0).fit(z, y)
    with pytest.raises(ValueError, match="bounds"):
        EnsembleTemperatureScaling(bounds=(2.0, 1.0)).fit(z, y)
    with pytest.raises(ValueError, match=r"logits\[4, 1\]"):
        EnsembleTemperatureScaling().fit(np.where((np.arange(300) == 4)[:, None] & (np.arange(3) == 1), np.inf, z), y)
    with pytest.raises(ValueError, match="fitted on 3 classes"):
        ets.predict_proba(z[:, :2])
    with pytest.raises(ValueError, match=r"logits\[1, 0\]"):
        ets.predict_proba(np.where((np.arange(300) == 1)[:, None] & (np.arange(3) == 0), np.nan, z))


# -- top-label histogram binning ------------------------------------------------------------------------------

def _toplabel_reference(p_fit, y_fit, p_new, n_bins, min_bin_size):
    """A plain NumPy top-label HB (Gupta & Ramdas): the calibrated top-label confidence of each new row."""
    pred, conf = p_fit.argmax(axis=1), p_fit.max(axis=1)
    pred_new, conf_new = p_new.argmax(axis=1), p_new.max(axis=1)
    out = conf_new.copy()
    for c in range(p_fit.shape[1]):
        mask = pred == c
        n_c = int(mask.sum())
        b = min(n_bins, n_c // min_bin_size)
        if b == 0:
            continue
        g = np.sort(conf[mask])
        groups = np.array_split(g, b)
        edges = sorted({grp.max() for grp in groups[:-1]} - {g.max()})
        edges = [e for e in edges if e < g.max()]
        fit_bin = np.array([sum(x > e for e in edges) for x in conf[mask]])
        hits = (y_fit[mask] == c).astype(float)
        values = np.array([hits[fit_bin == j].mean() for j in range(len(edges) + 1)])
        sel = pred_new == c
        out[sel] = values[[sum(x > e for e in edges) for x in conf_new[sel]]]
    return pred_new, out


@pytest.mark.parametrize("n_bins, min_bin_size", [(10, 10), (5, 40), (30, 3)])
def test_toplabel_matches_numpy_reference(n_bins, min_bin_size):
    rng = np.random.default_rng(10)
    p = random_probs(rng, 1500, 6)
    y = labels_from(rng, p)
    p[:50] = np.round(p[:50], 1)  # ties
    p[:50] /= p[:50].sum(axis=1, keepdims=True)
    tl = TopLabelHistogramBinning(n_bins, min_bin_size=min_bin_size).fit(p[:1000], y[:1000])
    c, h = tl.predict_top_label(p[1000:])
    ref_c, ref_h = _toplabel_reference(p[:1000], y[:1000], p[1000:], n_bins, min_bin_size)
    np.testing.assert_array_equal(c, ref_c)
    np.testing.assert_array_equal(h, ref_h)


def test_toplabel_predict_proba_keeps_the_argmax_and_sums_to_one():
    rng = np.random.default_rng(11)
    p = random_probs(rng, 3000, 5, concentration=0.5)
    y = labels_from(rng, p, flip=0.6)
    tl = TopLabelHistogramBinning(8).fit(p[:2000], y[:2000])
    q = tl.predict_proba(p[2000:])
    c, h = tl.predict_top_label(p[2000:])
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
    above = h > 1 / 5
    assert above.mean() > 0.9
    np.testing.assert_array_equal(q[above].argmax(axis=1), c[above])
    np.testing.assert_array_equal(q[np.arange(1000), c][above], h[above])
    np.testing.assert_allclose(q[~above], 1 / 5)
    np.testing.assert_array_equal(tl.predict(p[2000:]), p[2000:].argmax(axis=1))
    assert (q >= 0).all()
    # the other classes keep their order when no mixing with the uniform is needed
    other = p[2000:].copy()
    other[np.arange(1000), c] = -1
    kept = np.argsort(-other, axis=1, kind="stable")[:, :2]
    q2 = q.copy()
    q2[np.arange(1000), c] = -1
    assert (q2[np.arange(1000), kept[:, 0]] >= q2[np.arange(1000), kept[:, 1]]).all()


def test_toplabel_fallback_keeps_confidence_of_rare_classes():
    rng = np.random.default_rng(12)
    p = random_probs(rng, 500, 4)
    p[:, 3] *= 0.01  # class 3 is (almost) never predicted
    p /= p.sum(axis=1, keepdims=True)
    y = labels_from(rng, p)
    tl = TopLabelHistogramBinning(10, min_bin_size=20).fit(p, y)
    assert len(tl.bin_values_[3]) == 0 and len(tl.bin_edges_[3]) == 0
    new = np.array([[0.1, 0.1, 0.1, 0.7]])
    c, h = tl.predict_top_label(new)
    assert c[0] == 3 and h[0] == 0.7


def test_toplabel_ece_guarantee_on_simulation():
    """Gupta & Ramdas' bound: with probability 1 - alpha every bin's value is within
    sqrt(log(2 B / alpha) / (2 (m - 1))) + 1 / m of the true accuracy of its rows (m the fewest rows per bin).
    Over 30 seeds the bound fails in at most alpha of them (plus slack), and the true top-label ECE stays below it."""
    k, n, alpha, n_bins = 3, 3000, 0.1, 10
    failures, eces, raws, bound = 0, [], [], 0.0
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)

        def draw(m):
            x = rng.normal(size=(m, k))
            true = _softmax(1.5 * x)  # the true P(y | x)
            scores = _softmax(4.0 * x + 0.5)  # an over-confident model of it
            y = (rng.random((m, 1)) > np.cumsum(true, axis=1)[:, :-1]).sum(axis=1)
            return scores, true, y

        s, _, y = draw(n)
        tl = TopLabelHistogramBinning(n_bins, min_bin_size=50).fit(s, y)
        s_new, true_new, _ = draw(100_000)
        c, h = tl.predict_top_label(s_new)
        acc = true_new[np.arange(len(c)), c]  # the true probability that the predicted class is right
        worst, ece, raw = 0.0, 0.0, 0.0
        pred_fit = s.argmax(axis=1)
        for cls in range(k):
            n_c = int((pred_fit == cls).sum())
            b = min(n_bins, n_c // 50)
            m = n_c // b
            eps = math.sqrt(math.log(2 * k * b / alpha) / (2 * (m - 1))) + 1 / m
            bound = max(bound, eps)
            sel = c == cls
            for v in np.unique(h[sel]):
                in_bin = sel & (h == v)
                gap = abs(acc[in_bin].mean() - v)
                worst = max(worst, gap / eps)
                ece += in_bin.mean() * gap
                raw += in_bin.mean() * abs(acc[in_bin].mean() - s_new[in_bin].max(axis=1).mean())
        failures += worst > 1
        eces.append(ece)
        raws.append(raw)
    assert failures <= 30 * alpha + 3
    assert np.mean(eces) <= bound
    assert np.mean(eces) < 0.25 * np.mean(raws)  # the over-confident model's error on the same bins


def test_toplabel_real_dump_and_from_logits(backend):
    d = load_real("focal_cifar10_resnet110_flsd53.npz")
    tl = TopLabelHistogramBinning(15, from_logits=True, backend=backend).fit(d["val_logits"], d["val_labels"])
    p_val, p_test = _softmax(d["val_logits"].astype(np.float64)), _softmax(d["test_logits"].astype(np.float64))
    c, h = tl.predict_top_label(d["test_logits"])
    ref_c, ref_h = _toplabel_reference(p_val, d["val_labels"], p_test, 15, 10)
    np.testing.assert_array_equal(c, ref_c)
    np.testing.assert_allclose(h, ref_h, atol=1e-12)
    before = calibkit.ece(p_test, d["test_labels"], strategy="quantile")
    after = calibkit.ece(tl.predict_proba(d["test_logits"]), d["test_labels"], strategy="quantile")
    assert after < before


def test_toplabel_round_trip_and_bad_input():
    rng = np.random.default_rng(13)
    p = random_probs(rng, 600, 4)
    y = labels_from(rng, p)
    tl = TopLabelHistogramBinning(6).fit(p, y)
    again = Calibrator.from_dict(json.loads(json.dumps(tl.to_dict())))
    np.testing.assert_array_equal(again.predict_proba(p), tl.predict_proba(p))
    before = p.copy()
    tl.predict_proba(p)
    np.testing.assert_array_equal(p, before)  # the input is not written over
    payload = tl.to_dict()
    payload["fitted"]["bin_edges_"][0] = payload["fitted"]["bin_edges_"][0][::-1]
    with pytest.raises(ValueError, match=r"'bin_edges_\[0\]' must be a strictly increasing"):
        Calibrator.from_dict(payload)
    payload = tl.to_dict()
    payload["fitted"]["bin_values_"][1] = payload["fitted"]["bin_values_"][1][:-1]
    with pytest.raises(ValueError, match=r"B - 1 edges and B values"):
        Calibrator.from_dict(payload)
    with pytest.raises(ValueError, match="shape \\(N, K\\)"):
        TopLabelHistogramBinning().fit(p[:, 0], y % 2)
    with pytest.raises(ValueError, match="sample_weight must be None"):
        TopLabelHistogramBinning().fit(p, y, sample_weight=np.ones(600))
    with pytest.raises(ValueError, match=r"labels\[0\] = 9 is out of range for n_classes=4"):
        TopLabelHistogramBinning().fit(p, np.full(600, 9))
    with pytest.raises(ValueError, match="min_bin_size"):
        TopLabelHistogramBinning(min_bin_size=0).fit(p, y)
    with pytest.raises(ValueError, match="n_bins"):
        TopLabelHistogramBinning(0).fit(p, y)
    with pytest.raises(ValueError, match="not a probability"):
        TopLabelHistogramBinning().fit(p * 3, y)
    with pytest.raises(ValueError, match="fitted on 4 classes"):
        tl.predict_proba(p[:, :3])


# -- Platt scaling on multiclass decision scores --------------------------------------------------------------

def test_platt_multiclass_matches_sklearn_sigmoid_per_class():
    from_sklearn = pytest.importorskip("sklearn.calibration")
    rng = np.random.default_rng(14)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    f = rng.normal(size=(n, k)) * 2 + 3 * np.eye(k)[y]
    w = rng.random(n) + 0.5
    for sample_weight in (None, w):
        ours = PlattScaling().fit(f, y, sample_weight=sample_weight)
        cols = []
        for c in range(k):
            ref = from_sklearn._SigmoidCalibration().fit(f[:, c], (y == c).astype(int), sample_weight)
            assert ours.a_[c] == pytest.approx(ref.a_, rel=1e-4) and ours.b_[c] == pytest.approx(ref.b_, abs=1e-4)
            cols.append(ref.predict(f[:, c]))
        np.testing.assert_allclose(ours.predict_proba(f), _renormalise(np.column_stack(cols)), atol=2e-6)
        # each class alone is the binary fit
        binary = PlattScaling().fit(f[:, 2], (y == 2).astype(int), sample_weight=sample_weight)
        np.testing.assert_allclose([binary.a_, binary.b_], [ours.a_[2], ours.b_[2]], rtol=1e-8)


def test_platt_multiclass_as_calibrated_classifier_cv():
    pytest.importorskip("sklearn")
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.datasets import load_iris
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(15)
    order = rng.permutation(len(y))
    X, y = X[order], y[order]
    clf = LogisticRegression(max_iter=1000).fit(X[:60], y[:60])
    ref = CalibratedClassifierCV(FrozenEstimator(clf), method="sigmoid").fit(X[60:], y[60:])
    ours = PlattScaling().fit(clf.decision_function(X[60:]), y[60:])
    np.testing.assert_allclose(ours.predict_proba(clf.decision_function(X)), ref.predict_proba(X), atol=2e-5)


def test_platt_multiclass_real_dump():
    d = load_real("focal_cifar10_wrn26-10_brier.npz")
    pl = PlattScaling().fit(d["val_logits"], d["val_labels"])
    assert pl.a_.shape == (10,) and (pl.a_ < 0).all()
    q = pl.predict_proba(d["test_logits"])
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-12)
    assert (pl.predict(d["test_logits"]) == q.argmax(axis=1)).all()
    sk = pytest.importorskip("sklearn.calibration")
    cols = [sk._SigmoidCalibration().fit(d["val_logits"][:, c].astype(np.float64), d["val_labels"] == c)
            .predict(d["test_logits"][:, c].astype(np.float64)) for c in range(10)]
    np.testing.assert_allclose(q, _renormalise(np.column_stack(cols)), atol=1e-5)


def test_platt_multiclass_round_trip_binary_payload_and_bad_input():
    rng = np.random.default_rng(16)
    y = rng.integers(0, 3, 400)
    f = rng.normal(size=(400, 3)) + 2 * np.eye(3)[y]
    pl = PlattScaling().fit(f, y)
    assert pl.n_features_in_ == 3 and list(pl.classes_) == [0, 1, 2]
    again = Calibrator.from_dict(json.loads(json.dumps(pl.to_dict())))
    np.testing.assert_array_equal(again.predict_proba(f), pl.predict_proba(f))
    # a payload of a binary fit (as saved before multiclass support) still loads
    binary = PlattScaling().fit(f[:, 0], (y == 0).astype(int))
    old = {"format": "calibkit.calibrator", "version": 1, "class": "PlattScaling", "params": binary.get_params(),
           "fitted": {"a_": binary.a_, "b_": binary.b_, "n_iter_": binary.n_iter_}}
    loaded = Calibrator.from_dict(old)
    assert loaded.binary_ and loaded.n_features_in_ == 1
    np.testing.assert_array_equal(loaded.predict_proba(f[:, 0]), binary.predict_proba(f[:, 0]))
    payload = pl.to_dict()
    payload["fitted"]["b_"] = [0.0, 1.0]
    with pytest.raises(ValueError, match="'a_' and 'b_' must both be numbers"):
        Calibrator.from_dict(payload)
    payload["fitted"]["a_"] = [1.0]
    payload["fitted"]["b_"] = [1.0]
    with pytest.raises(ValueError, match="'a_' must be a number or a list of 2"):
        Calibrator.from_dict(payload)
    payload["fitted"]["a_"] = [1.0, "x"]
    payload["fitted"]["b_"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="'a_' is not an array of numbers"):
        Calibrator.from_dict(payload)
    with pytest.raises(ValueError, match=r"labels\[0\] = 3 is out of range for n_classes=3"):
        PlattScaling().fit(f, np.full(400, 3))
    with pytest.raises(ValueError, match=r"only one class \(class 2\)"):
        PlattScaling().fit(f, np.where(y == 2, 0, y))
    with pytest.raises(ValueError, match=r"fitted on multiclass scores of shape \(N, 3\)"):
        pl.predict_proba(f[:, :2])
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 1\)"):
        binary.predict_proba(f)
    with pytest.raises(ValueError, match=r"scores\[2, 1\]"):
        pl.predict_proba(np.where((np.arange(400) == 2)[:, None] & (np.arange(3) == 1), np.inf, f))


# -- every new calibrator: crashes stay in a subprocess, extreme inputs give one clear error ---------------------

def test_extreme_inputs_do_not_crash():
    code = """
import numpy as np, calibkit
rng = np.random.default_rng(0)
z = rng.normal(size=(50, 3)) * 1e300
y = rng.integers(0, 3, 50)
for make in (lambda: calibkit.PlattScaling().fit(z, y), lambda: calibkit.BetaCalibration(from_logits=True).fit(z, y),
             lambda: calibkit.TopLabelHistogramBinning(from_logits=True).fit(z, y),
             lambda: calibkit.EnsembleTemperatureScaling().fit(z, y)):
    try:
        with np.errstate(all="ignore"):
            cal = make()
            p = cal.predict_proba(z)
        assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1), type(cal).__name__
    except ValueError as exc:
        print("ValueError", exc)
print("done")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("done")


# -- from_dict of hostile payloads: always one ValueError naming the key (test_state_fuzz's mutations) ------------

_RELATED = [{"a_", "b_", "c_", "n_classes_", "binary_", "parameters"},
            {"bin_edges_", "bin_values_", "n_classes_", "n_bins", "min_bin_size"}]


def _new_fitted_calibrators():
    rng = np.random.default_rng(17)
    p = random_probs(rng, 300, 3)
    y = labels_from(rng, p)
    s, yb = _binary_beta_data(rng, 300)
    z = np.log(p) * 2
    return [(BetaCalibration().fit(s, yb), s), (BetaCalibration("am").fit(p, y), p),
            (EnsembleTemperatureScaling().fit(z, y), z), (TopLabelHistogramBinning(5).fit(p, y), p),
            (PlattScaling().fit(z, y), z)]


@pytest.mark.parametrize("index", range(5))
def test_new_calibrators_from_dict_fuzz(index):
    from test_state_fuzz import _check_predictions, _mutations

    cal, x = _new_fitted_calibrators()[index]
    d = json.loads(json.dumps(cal.to_dict()))
    _check_predictions(Calibrator.from_dict(d), x)
    for key, m in _mutations(d):
        try:
            loaded = Calibrator.from_dict(m)
        except ValueError as exc:
            message = str(exc)
            if key is not None:
                assert key in message or any(key in g and any(k in message for k in g) for g in _RELATED), \
                    (key, message)
            continue
        with np.errstate(all="ignore"):
            _check_predictions(loaded, x)
