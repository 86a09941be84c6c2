"""Debiased calibration error (Kumar et al. 2019), Gupta & Ramdas's conditional top-label error, class-wise
aggregates and bootstrap intervals: NumPy references, uncertainty-calibration, both backends."""

import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit.metrics import (
    CalibrationErrorResult,
    calibration_error,
    classwise_calibration_error,
    debiased_calibration_error,
)

from conftest import load_real


# ----------------------------------------------------------------------------
# Plain NumPy references
# ----------------------------------------------------------------------------


def ref_bins_index(conf, edges):
    """calibkit's bin of c: #{inner edges strictly below c}."""
    return np.searchsorted(edges[1:-1], conf, side="left")


def ref_debiased_square(conf, y, edges, w=None):
    """Kumar et al.'s estimator over the bins of ``edges``; weighted rows with Kish's effective count."""
    w = np.ones(conf.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
    idx = ref_bins_index(conf, edges)
    total = w.sum()
    out = 0.0
    for m in range(edges.shape[0] - 1):
        sel = idx == m
        wm = w[sel]
        if wm.sum() <= 0:
            continue
        if np.count_nonzero(wm) <= 1:  # one row of positive weight: n_eff = 1 exactly (a rounded ratio may not be)
            continue
        n_eff = wm.sum() ** 2 / (wm ** 2).sum()
        if n_eff <= 1:
            continue
        ybar = (wm * y[sel]).sum() / wm.sum()
        pbar = (wm * conf[sel]).sum() / wm.sum()
        out += wm.sum() / total * ((ybar - pbar) ** 2 - ybar * (1 - ybar) / (n_eff - 1))
    return out


def top_label(p):
    return p.max(axis=1), (p.argmax(axis=1))


def miscalibrated(rng, n, k, temperature=2.0):
    """Labels drawn from softmax(z), probabilities softmax(temperature * z): over-confident."""
    z = rng.normal(size=(n, k))
    truth = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y = (truth.cumsum(axis=1) < rng.uniform(size=(n, 1))).sum(axis=1)
    p = np.exp(temperature * z)
    return p / p.sum(axis=1, keepdims=True), np.minimum(y, k - 1)


def uniform_edges(m):
    return np.arange(m + 1) / m


# ----------------------------------------------------------------------------
# Debiased estimator
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_debiased_top_label_and_binary_match_numpy(backend, weighted):
    rng = np.random.default_rng(1)
    p, y = miscalibrated(rng, 2000, 4)
    w = rng.uniform(0.1, 3.0, 2000) if weighted else None
    conf, pred = top_label(p)
    correct = (pred == y).astype(float)
    for m in (1, 7, 15):
        r = debiased_calibration_error(p, y, n_bins=m, sample_weight=w, backend=backend)
        expected = ref_debiased_square(conf, correct, uniform_edges(m), w)
        assert r.squared == pytest.approx(expected, abs=1e-13)
        assert r.value == np.sqrt(max(r.squared, 0.0))
        assert r.n_bins == m
        assert calibration_error(p, y, n_bins=m, norm="l2", debias=True, sample_weight=w,
                                 backend=backend) == r.value
    pb = p[:, 0]
    yb = (y == 0).astype(int)
    r = debiased_calibration_error(pb, yb, n_bins=10, sample_weight=w, backend=backend)
    assert r.squared == pytest.approx(ref_debiased_square(pb, yb.astype(float), uniform_edges(10), w), abs=1e-13)
    r = debiased_calibration_error(pb, yb, n_bins=10, strategy="quantile", sample_weight=w, backend=backend)
    edges = calibkit.reliability_table(pb, yb, n_bins=10, strategy="quantile", sample_weight=w)
    e = np.concatenate(([edges.lower[0]], edges.upper))
    assert r.squared == pytest.approx(ref_debiased_square(pb, yb.astype(float), e, w), abs=1e-13)


def test_equal_weights_give_the_unweighted_estimate(backend):
    rng = np.random.default_rng(2)
    p, y = miscalibrated(rng, 1500, 3)
    plain = debiased_calibration_error(p, y, n_bins=10, backend=backend)
    weighted = debiased_calibration_error(p, y, n_bins=10, sample_weight=np.full(1500, 3.5), backend=backend)
    assert weighted.squared == pytest.approx(plain.squared, abs=1e-14)


def test_backends_agree():
    rng = np.random.default_rng(3)
    p, y = miscalibrated(rng, 3000, 5)
    w = rng.uniform(size=3000)
    for kw in ({}, {"sample_weight": w}, {"strategy": "quantile"}, {"conditional_on_prediction": True},
               {"classwise": True, "aggregate": "power_mean"}):
        a = debiased_calibration_error(p, y, backend="cpp", **kw)
        b = debiased_calibration_error(p, y, backend="numba", **kw)
        assert a.squared == pytest.approx(b.squared, abs=1e-14)


def test_debias_needs_l2():
    with pytest.raises(ValueError, match="debias=True needs norm='l2'"):
        calibration_error(np.array([0.2, 0.7]), np.array([0, 1]), debias=True)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_strides(backend, dtype):
    rng = np.random.default_rng(4)
    p, y = miscalibrated(rng, 1200, 6)
    big = np.zeros((1200, 12), dtype=dtype)
    big[:, ::2] = p.astype(dtype)
    view = big[:, ::2]  # strided, no copy
    as64 = view.astype(np.float64)
    r = debiased_calibration_error(view, y, n_bins=8, backend=backend)
    conf, pred = top_label(as64)
    assert r.squared == pytest.approx(ref_debiased_square(conf, (pred == y).astype(float), uniform_edges(8)),
                                      abs=1e-13)
    assert np.array_equal(big[:, ::2], p.astype(dtype))  # input untouched


# ----------------------------------------------------------------------------
# uncertainty-calibration, exactly (same bins)
# ----------------------------------------------------------------------------


def _uc():
    return pytest.importorskip("calibration")


def test_matches_uncertainty_calibration_random(backend):
    uc = _uc()
    rng = np.random.default_rng(5)
    p, y = miscalibrated(rng, 3000, 5)
    assert not uc.utils.is_discrete(p)  # get_calibration_error takes its equal-count path
    ref = uc.get_calibration_error(p, y, p=2, debias=True, mode="top-label")
    mine = calibration_error(p, y, norm="l2", debias=True, strategy="quantile_midpoint", backend=backend)
    assert ref > 0.01 and mine == pytest.approx(ref, abs=1e-12)
    ref = uc.get_calibration_error(p, y, p=2, debias=True, mode="marginal")
    mine = classwise_calibration_error(p, y, norm="l2", debias=True, strategy="quantile_midpoint",
                                       aggregate="power_mean", backend=backend)
    assert ref > 0.01 and mine == pytest.approx(ref, abs=1e-12)
    pb, yb = p[:, 1], (y == 1).astype(np.int64)
    ref = uc.get_calibration_error(pb, yb, p=2, debias=True)
    mine = calibration_error(pb, yb, norm="l2", debias=True, strategy="quantile_midpoint", backend=backend)
    assert mine == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("p_norm,norm", [(1, "l1"), (2, "l2")])
def test_plugin_marginal_power_mean_matches_uncertainty_calibration(p_norm, norm):
    uc = _uc()
    rng = np.random.default_rng(6)
    p, y = miscalibrated(rng, 2000, 4)
    ref = uc.lower_bound_scaling_ce(p, y, p=p_norm, debias=False, num_bins=15, mode="marginal")
    mine = classwise_calibration_error(p, y, norm=norm, strategy="quantile_midpoint", aggregate="power_mean")
    assert mine == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("case", ["ties", "zero_one", "tiny", "one_class", "one_row_bins"])
def test_matches_uncertainty_calibration_adversarial(case):
    uc = _uc()
    rng = np.random.default_rng(7)
    m = 15
    if case == "ties":
        pb = np.round(rng.uniform(size=400), 1)
        yb = (rng.uniform(size=400) < pb).astype(np.int64)
    elif case == "zero_one":
        pb = rng.choice([0.0, 1.0, 0.3, 0.9], size=300)
        yb = (rng.uniform(size=300) < 0.5).astype(np.int64)
    elif case == "tiny":
        pb = np.array([0.2, 0.9, 0.6])
        yb = np.array([0, 1, 1])
    elif case == "one_class":
        pb = rng.uniform(size=200)
        yb = np.ones(200, np.int64)
    else:  # n = 20 rows in 15 parts: most bins hold one row and add 0
        pb = rng.uniform(size=20)
        yb = (rng.uniform(size=20) < 0.5).astype(np.int64)
    # The equal-count rule called directly (get_calibration_error would switch to one bin per value on ties).
    ref = uc.lower_bound_scaling_ce(pb, yb, p=2, debias=True, num_bins=m)
    mine = calibration_error(pb, yb, n_bins=m, norm="l2", debias=True, strategy="quantile_midpoint")
    assert mine == pytest.approx(ref, abs=1e-12)
    bins = uc.get_equal_bins(list(pb), num_bins=m)
    assert debiased_calibration_error(pb, yb, n_bins=m, strategy="quantile_midpoint").n_bins == len(bins)
    # top-label of the same rows as a 2-class problem
    p2 = np.stack([1 - pb, pb], axis=1)
    ref = uc.lower_bound_scaling_ce(p2, yb, p=2, debias=True, num_bins=m, mode="top-label")
    mine = calibration_error(p2, yb, n_bins=m, norm="l2", debias=True, strategy="quantile_midpoint")
    assert mine == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("name", ["focal_cifar10_resnet50_brier.npz", "kumar_cifar10_vgg.npz"])
def test_matches_uncertainty_calibration_real(name, backend):
    uc = _uc()
    d = load_real(name)
    if "probs" in d:
        p, y = d["probs"].astype(np.float64), d["labels"]
    else:
        z = d["test_logits"].astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        y = d["test_labels"]
    ref = uc.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=15, mode="top-label")
    mine = calibration_error(p, y, norm="l2", debias=True, strategy="quantile_midpoint", backend=backend)
    assert mine == pytest.approx(ref, abs=1e-12)
    ref = uc.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=15, mode="marginal")
    mine = classwise_calibration_error(p, y, norm="l2", debias=True, strategy="quantile_midpoint",
                                       aggregate="power_mean", backend=backend)
    assert mine == pytest.approx(ref, abs=1e-12)


def test_real_logits_debiased_is_below_plugin(backend):
    d = load_real("focal_cifar10_resnet110_flsd53.npz")
    z, y = d["test_logits"], d["test_labels"]
    r = debiased_calibration_error(z, y, from_logits=True, backend=backend)
    plugin = calibration_error(z, y, from_logits=True, norm="l2", backend=backend)
    assert r.squared < plugin ** 2 and r.value > 0


# ----------------------------------------------------------------------------
# Gupta & Ramdas: conditional on the predicted class
# ----------------------------------------------------------------------------


def ref_conditional(p, y, m, norm, w=None):
    conf, pred = top_label(p)
    correct = (pred == y).astype(float)
    w = np.ones(len(y)) if w is None else w
    idx = ref_bins_index(conf, uniform_edges(m))
    parts, gaps = [], []
    for j in range(p.shape[1]):
        for b in range(m):
            sel = (pred == j) & (idx == b)
            if w[sel].sum() > 0:
                gap = abs((w[sel] * correct[sel]).sum() / w[sel].sum() - (w[sel] * conf[sel]).sum() / w[sel].sum())
                parts.append((w[sel].sum() / w.sum(), gap))
                gaps.append(gap)
    if norm == "max":
        return max(gaps)
    if norm == "l1":
        return sum(f * g for f, g in parts)
    return np.sqrt(sum(f * g * g for f, g in parts))


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_conditional_on_prediction_matches_numpy(backend, norm):
    rng = np.random.default_rng(8)
    p, y = miscalibrated(rng, 2500, 4)
    w = rng.uniform(size=2500)
    for weights in (None, w):
        mine = calibration_error(p, y, n_bins=10, norm=norm, conditional_on_prediction=True, sample_weight=weights,
                                 backend=backend)
        assert mine == pytest.approx(ref_conditional(p, y, 10, norm, weights), abs=1e-12)
    # one predicted class only: the confidence ECE itself
    q = np.column_stack([np.full(50, 0.9), np.full(50, 0.1)])
    yy = rng.integers(0, 2, 50)
    assert calibration_error(q, yy, conditional_on_prediction=True, norm=norm) == pytest.approx(
        calibration_error(q, yy, norm=norm), abs=1e-12)


def test_conditional_from_logits_and_debias():
    rng = np.random.default_rng(9)
    p, y = miscalibrated(rng, 1000, 3)
    a = calibration_error(p, y, conditional_on_prediction=True)
    b = calibration_error(np.log(p), y, conditional_on_prediction=True, from_logits=True)
    assert a == pytest.approx(b, abs=1e-12)
    r = debiased_calibration_error(p, y, n_bins=5, conditional_on_prediction=True)
    conf, pred = top_label(p)
    correct = (pred == y).astype(float)
    # per predicted class, the class's share times its own debiased estimate
    expected = sum((pred == j).mean() * ref_debiased_square(conf[pred == j], correct[pred == j], uniform_edges(5))
                   for j in range(3))
    assert r.squared == pytest.approx(expected, abs=1e-13)


def test_conditional_bad_input():
    with pytest.raises(ValueError, match=r"needs scores of shape \(N, K\)"):
        calibration_error(np.array([0.2, 0.7]), np.array([0, 1]), conditional_on_prediction=True)
    with pytest.raises(ValueError, match="strategy='uniform'"):
        calibration_error(np.array([[0.2, 0.8]]), np.array([0]), conditional_on_prediction=True, strategy="quantile")
    with pytest.raises(TypeError, match="conditional_on_prediction must be True or False"):
        calibration_error(np.array([[0.2, 0.8]]), np.array([0]), conditional_on_prediction="yes")


# ----------------------------------------------------------------------------
# Class-wise aggregation
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_classwise_aggregates(backend, norm):
    rng = np.random.default_rng(10)
    p, y = miscalibrated(rng, 2000, 5)
    per_class = []
    for c in range(5):
        per_class.append(calibration_error(p[:, c], (y == c).astype(int), n_bins=10, norm=norm, backend=backend))
    per_class = np.array(per_class)
    mean = classwise_calibration_error(p, y, n_bins=10, norm=norm, backend=backend)
    assert mean == pytest.approx(per_class.mean(), abs=1e-14)
    assert classwise_calibration_error(p, y, n_bins=10, norm=norm, aggregate="sum",
                                       backend=backend) == pytest.approx(per_class.sum(), abs=1e-13)
    power = {"l1": per_class.mean(), "l2": np.sqrt((per_class ** 2).mean()), "max": per_class.max()}[norm]
    assert classwise_calibration_error(p, y, n_bins=10, norm=norm, aggregate="power_mean",
                                       backend=backend) == pytest.approx(power, abs=1e-14)


def test_classwise_debiased_squared_is_the_mean_of_signed_squares(backend):
    rng = np.random.default_rng(11)
    p, y = miscalibrated(rng, 800, 4)
    s = np.array([ref_debiased_square(p[:, c], (y == c).astype(float), uniform_edges(6)) for c in range(4)])
    for aggregate, squared, value in (("mean", s.mean(), np.sqrt(np.maximum(s, 0)).mean()),
                                      ("sum", s.sum(), np.sqrt(np.maximum(s, 0)).sum()),
                                      ("power_mean", s.mean(), np.sqrt(np.maximum(s, 0).mean()))):
        r = debiased_calibration_error(p, y, n_bins=6, classwise=True, aggregate=aggregate, backend=backend)
        assert r.squared == pytest.approx(squared, abs=1e-13)
        assert r.value == pytest.approx(value, abs=1e-13)


def test_classwise_quantile_midpoint_from_logits():
    rng = np.random.default_rng(12)
    p, y = miscalibrated(rng, 900, 3)
    a = classwise_calibration_error(p, y, strategy="quantile_midpoint", norm="l2", debias=True)
    b = classwise_calibration_error(np.log(p), y, strategy="quantile_midpoint", norm="l2", debias=True,
                                    from_logits=True)
    assert a == pytest.approx(b, abs=1e-10)


def test_classwise_bad_input():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    with pytest.raises(ValueError, match=r"aggregate must be one of \('mean', 'sum', 'power_mean'\)"):
        classwise_calibration_error(p, [0, 1], aggregate="median")
    with pytest.raises(ValueError, match="strategy must be one of"):
        classwise_calibration_error(p, [0, 1], strategy="quantile")
    with pytest.raises(ValueError, match="not offered for the class-wise error"):
        classwise_calibration_error(p, [0, 1], n_bins="sweep")
    with pytest.raises(ValueError, match=r"labels\[1\] = 7 is out of range for n_classes=2"):
        classwise_calibration_error(p, [0, 7], strategy="quantile_midpoint")


# ----------------------------------------------------------------------------
# Bootstrap intervals
# ----------------------------------------------------------------------------


def test_one_shot_interval_equals_streamed_run(backend):
    rng = np.random.default_rng(13)
    p, y = miscalibrated(rng, 3000, 4)
    r = calibration_error(p, y, n_bins=12, ci=0.9, n_boot=300, seed=42, backend=backend)
    assert isinstance(r, CalibrationErrorResult) and r.n_boot == 300 and r.confidence_level == 0.9
    acc = calibkit.CalibrationAccumulator(n_bins=12, bootstrap=300, seed=42, confidence_level=0.9, backend=backend)
    for chunk in np.array_split(np.arange(3000), 4):
        acc.update(p[chunk], y[chunk])
    streamed = acc.compute()
    assert r.ci == streamed.ece_ci
    assert r.value == pytest.approx(streamed.ece, abs=1e-12)
    assert r.value == pytest.approx(calibration_error(p, y, n_bins=12, backend=backend), abs=1e-12)
    assert float(r) == r.value
    # binary rows, weighted
    w = rng.uniform(0.5, 2, 3000)
    r = calibration_error(p[:, 0], (y == 0).astype(int), n_bins=12, ci=0.9, n_boot=300, seed=42, sample_weight=w,
                          backend=backend)
    acc = calibkit.CalibrationAccumulator(n_bins=12, bootstrap=300, seed=42, confidence_level=0.9, backend=backend)
    streamed = acc.update(p[:, 0], (y == 0).astype(int), w).compute()
    assert r.ci == streamed.ece_ci


def test_interval_contains_value_and_is_seeded():
    rng = np.random.default_rng(14)
    p, y = miscalibrated(rng, 2000, 3)
    for kw in ({"norm": "l2"}, {"norm": "max"}, {"norm": "l2", "debias": True},
               {"norm": "l2", "debias": True, "sample_weight": rng.uniform(size=2000)}):
        a = calibration_error(p, y, ci=0.95, n_boot=200, seed=1, **kw)
        b = calibration_error(p, y, ci=0.95, n_boot=200, seed=1, **kw)
        c = calibration_error(p, y, ci=0.95, n_boot=200, seed=2, **kw)
        assert a == b and a.ci != c.ci
        assert a.ci[0] <= a.ci[1]
        plain = calibration_error(p, y, **kw)
        assert a.value == pytest.approx(plain, abs=1e-12)
    r = debiased_calibration_error(p, y, ci=0.95, n_boot=200, seed=1, classwise=True)
    assert r.ci[0] <= r.ci[1] and r.value == pytest.approx(
        classwise_calibration_error(p, y, norm="l2", debias=True), abs=1e-12)
    r = calibration_error(p, y, n_bins="sqrt", ci=0.95, n_boot=50)
    assert r.n_bins == 45


def test_debiased_interval_coverage_on_calibrated_data():
    """Perfectly calibrated rows (y ~ Bernoulli(p)): the true binned error is 0. The debiased interval should
    contain 0 in about 95 % of repetitions (loose band: a percentile bootstrap near a boundary is approximate)."""
    covered = 0
    reps = 200
    for i in range(reps):
        rng = np.random.default_rng(1000 + i)
        p = rng.uniform(size=300)
        y = (rng.uniform(size=300) < p).astype(np.int64)
        r = calibration_error(p, y, n_bins=5, norm="l2", debias=True, ci=0.95, n_boot=200, seed=i)
        covered += r.ci[0] <= 0.0
    # Binomial(200, 0.95) lies in [176, 200] with probability > 0.999; allow a loose [0.85, 1] band.
    assert covered >= 0.85 * reps


def test_interval_bad_input():
    p, y = np.array([0.2, 0.7, 0.9]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"ci must be a confidence level in \(0, 1\), got 1.5"):
        calibration_error(p, y, ci=1.5)
    with pytest.raises(ValueError, match=r"n_boot must be in \[2, 100000\], got 1"):
        calibration_error(p, y, ci=0.9, n_boot=1)
    with pytest.raises(ValueError, match="ci needs strategy='uniform'"):
        calibration_error(p, y, ci=0.9, strategy="quantile")
    with pytest.raises(TypeError, match="n_boot must be an integer"):
        calibration_error(p, y, ci=0.9, n_boot=2.5)


def test_huge_n_boot_is_refused_before_allocating():
    code = ("import numpy as np, calibkit\n"
            "try:\n"
            "    calibkit.metrics.calibration_error(np.array([0.2, 0.7]), np.array([0, 1]), ci=0.9, n_boot=10**12)\n"
            "except ValueError as e:\n"
            "    print('refused:', e)\n"
            "try:\n"
            "    calibkit.metrics.calibration_error(np.array([0.2, 0.7]), np.array([0, 1]), ci=0.9, n_boot=100000,"
            " n_bins=100000)\n"
            "except ValueError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "n_boot must be in [2, 100000]" in out.stdout
    assert "n_boot * n_bins must be <= 67108864" in out.stdout


# ----------------------------------------------------------------------------
# Threads, bad elements
# ----------------------------------------------------------------------------


def test_bit_identical_for_any_thread_count(backend, threads):
    rng = np.random.default_rng(15)
    n = 400_000  # several chunks: the kernels split the work
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p ** 1.2).astype(np.int64)
    w = rng.uniform(size=n)
    probs = np.column_stack([1 - p, p])
    calls = [
        lambda: debiased_calibration_error(p, y, sample_weight=w, backend=backend).squared,
        lambda: debiased_calibration_error(probs, y, strategy="quantile_midpoint", backend=backend).squared,
        lambda: debiased_calibration_error(probs, y, classwise=True, backend=backend).squared,
        lambda: calibration_error(probs, y, conditional_on_prediction=True, backend=backend),
        lambda: calibkit.reliability_table(p, y, n_bins="sweep", strategy="quantile", backend=backend).n_bins,
    ]
    calibkit.set_num_threads(1)
    one = [f() for f in calls]
    calibkit.set_num_threads(2)
    assert [f() for f in calls] == one


BAD = [
    ("nan binary midpoint", dict(scores=np.array([0.2, np.nan, 0.5]), labels=[0, 1, 1],
                                 kw=dict(norm="l2", debias=True, strategy="quantile_midpoint")),
     ValueError, r"scores\[1\] = nan is not finite"),
    ("label 2 binary debias", dict(scores=np.array([0.2, 0.4, 0.5]), labels=[0, 2, 1],
                                   kw=dict(norm="l2", debias=True)),
     ValueError, r"labels\[1\] = 2 is not 0 or 1"),
    ("prob > 1 conditional", dict(scores=np.array([[0.2, 0.8], [0.1, 1.5]]), labels=[0, 1],
                                  kw=dict(conditional_on_prediction=True)),
     ValueError, r"scores\[1, 1\] = 1.5 is not a probability"),
    ("negative weight ci", dict(scores=np.array([0.2, 0.4, 0.5]), labels=[0, 1, 1],
                                kw=dict(ci=0.9, sample_weight=[1.0, -1.0, 1.0])),
     ValueError, r"sample_weight\[1\] = -1.0 is negative"),
    ("label out of range sweep", dict(scores=np.array([[0.2, 0.8], [0.6, 0.4]]), labels=[0, 3],
                                      kw=dict(n_bins="sweep")),
     ValueError, r"labels\[1\] = 3 is out of range for n_classes=2"),
    ("debias l1", dict(scores=np.array([0.2, 0.4]), labels=[0, 1], kw=dict(debias=True, norm="l1")),
     ValueError, r"debias=True needs norm='l2'"),
    ("debias not bool", dict(scores=np.array([0.2, 0.4]), labels=[0, 1], kw=dict(debias="yes", norm="l2")),
     TypeError, r"debias must be True or False"),
    ("unknown strategy", dict(scores=np.array([0.2, 0.4]), labels=[0, 1], kw=dict(strategy="midpoint")),
     ValueError, r"strategy must be one of \('uniform', 'quantile', 'quantile_midpoint'\)"),
]


@pytest.mark.parametrize("case,args,exc,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input(case, args, exc, message, backend):
    with pytest.raises(exc, match=message):
        calibration_error(args["scores"], np.array(args["labels"]), backend=backend, **args["kw"])


def test_classwise_ci_with_logits_matches_probabilities():
    rng = np.random.default_rng(16)
    p, y = miscalibrated(rng, 600, 3)
    a = classwise_calibration_error(p, y, ci=0.9, n_boot=100, seed=5, norm="l2", aggregate="power_mean")
    b = classwise_calibration_error(np.log(p), y, ci=0.9, n_boot=100, seed=5, norm="l2", aggregate="power_mean",
                                    from_logits=True)
    assert a.value == pytest.approx(b.value, abs=1e-10)
    assert a.ci == pytest.approx(b.ci, abs=1e-10)
    assert a.value == pytest.approx(classwise_calibration_error(p, y, norm="l2", aggregate="power_mean"), abs=1e-12)


# ----------------------------------------------------------------------------
# Hypothesis: any small input (ties, exact edges, 0 and 1, zero weights, one row)
# ----------------------------------------------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


@st.composite
def binary_problems(draw, max_rows=200):
    n = draw(st.integers(1, max_rows))
    p = draw(hnp.arrays(np.float64, (n,), elements=st.floats(0, 1, allow_subnormal=False)))
    if draw(st.booleans()):
        p = np.round(p * 10) / 10
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 1)))
    # 0 or at least 1e-3: a streaming state (behind ci) refuses non-zero weights below 1e-300
    w = draw(st.one_of(st.none(), hnp.arrays(np.float64, (n,), elements=st.one_of(st.just(0.0), st.floats(1e-3, 5)))))
    if w is not None and not w.sum() > 0:
        w = None
    return p, y, w


@settings(max_examples=80, deadline=None)
@given(binary_problems(), st.integers(1, 20))
def test_property_debiased_matches_reference(problem, m):
    p, y, w = problem
    r = debiased_calibration_error(p, y, n_bins=m, sample_weight=w)
    wn = None if w is None else w / w.max()
    assert r.squared == pytest.approx(ref_debiased_square(p, y.astype(float), uniform_edges(m), wn), abs=1e-12)
    # the streamed interval's replicates: the same seed gives the same interval however the rows are split
    one = calibration_error(p, y, n_bins=m, ci=0.8, n_boot=20, seed=9, sample_weight=w)
    acc = calibkit.CalibrationAccumulator(n_bins=m, bootstrap=20, seed=9, confidence_level=0.8)
    half = len(p) // 2
    acc.update(p[:half], y[:half], None if w is None else w[:half]) if half else None
    other = calibkit.CalibrationAccumulator(n_bins=m, bootstrap=20, seed=9, confidence_level=0.8, start=half)
    other.update(p[half:], y[half:], None if w is None else w[half:])
    merged = acc.merge(other).compute().ece_ci  # merged sums: equal to rounding
    assert (one.ci is None) == (merged is None)
    if one.ci is not None:
        assert one.ci == pytest.approx(merged, abs=1e-12)
