"""score_decomposition, corp_reliability_table and plot.corp_reliability_diagram (issue 15, section 4).

References: model_diagnostics (scoring.decompose with SquaredError / LogLoss, calibration.plot_reliability_diagram),
scikit-learn's IsotonicRegression, and a plain-NumPy PAV below.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import calibkit
from calibkit import decomposition
from conftest import labels_from, load_real, random_probs

TERMS = ("score", "miscalibration", "discrimination", "uncertainty")
TOL = 1e-9


# ----------------------------------------------------------------------------------------------------------------
# Plain NumPy references
# ----------------------------------------------------------------------------------------------------------------


def numpy_pav(x, y, w=None):
    """Isotonic regression of y on x (ties in x pooled first), by a plain stack PAV: fitted values in input order."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = np.ones_like(x) if w is None else np.asarray(w, float)
    order = np.argsort(x, kind="stable")
    xs, ys, ws = x[order], y[order], w[order]
    blocks = []  # [sum w, sum w y, count of sorted points]
    i = 0
    while i < len(xs):
        j = i
        while j < len(xs) and xs[j] == xs[i]:
            j += 1
        blocks.append([ws[i:j].sum(), (ws[i:j] * ys[i:j]).sum(), j - i])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] >= blocks[-1][1] / blocks[-1][0]:
            top = blocks.pop()
            blocks[-1] = [blocks[-1][0] + top[0], blocks[-1][1] + top[1], blocks[-1][2] + top[2]]
        i = j
    fitted = np.repeat([b[1] / b[0] for b in blocks], [b[2] for b in blocks])
    out = np.empty_like(fitted)
    out[order] = fitted
    return out


def numpy_decomposition(p, y, w=None, score="brier"):
    p, y = np.asarray(p, float), np.asarray(y, float)
    w = np.ones_like(p) if w is None else np.asarray(w, float)

    def mean_score(f):
        if score == "brier":
            s = (f - y) ** 2
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                s = -np.where(y == 1, np.log(f), np.log(1 - f))
        return float(np.sum(w * s) / np.sum(w))

    ybar = np.sum(w * y) / np.sum(w)
    s, s_rc, unc = mean_score(p), mean_score(numpy_pav(p, y, w)), mean_score(np.full_like(p, ybar))
    return {"score": s, "miscalibration": s - s_rc, "discrimination": unc - s_rc, "uncertainty": unc}


def top_label(probs, labels):
    """Confidence and correctness of (N, K) probabilities (float64), as the top-label view defines them."""
    p = np.asarray(probs, np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == labels).astype(np.int64)


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def reference(p, y, w=None, score="brier"):
    """model_diagnostics' decomposition as a dict."""
    md = pytest.importorskip("model_diagnostics.scoring")
    fn = md.SquaredError() if score == "brier" else md.LogLoss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = md.decompose(np.asarray(y), np.asarray(p, float), w, scoring_function=fn).row(0, named=True)
    return {k: row[k] for k in TERMS}


def assert_terms(d, ref, tol=TOL):
    for k in TERMS:
        a, b = getattr(d, k), ref[k]
        if np.isinf(b):
            assert a == b, (k, a, b)
        else:
            assert abs(a - b) <= tol * max(1.0, abs(b)), (k, a, b)


def assert_identity(d):
    if np.isfinite(d.score):
        assert abs(d.score - (d.miscalibration - d.discrimination + d.uncertainty)) <= 1e-12
    else:
        assert d.miscalibration == np.inf


def binary_data(seed, n, ties=False):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)
    y = (rng.random(n) < p ** 1.4).astype(np.int64)
    return p, y, rng.random(n) + 0.05


# ----------------------------------------------------------------------------------------------------------------
# Against model_diagnostics and the NumPy reference
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["brier", "log"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_binary_matches_model_diagnostics(backend, score, weighted, ties):
    for seed in range(3):
        p, y, w = binary_data(seed, 1500, ties)
        w = w if weighted else None
        d = calibkit.score_decomposition(p, y, score=score, sample_weight=w, backend=backend)
        assert_terms(d, reference(p, y, w, score))
        assert_terms(d, numpy_decomposition(p, y, w, score))
        assert_identity(d)
        assert d.score_name == score


@pytest.mark.parametrize("score", ["brier", "log"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_top_label_matches_model_diagnostics(backend, score, from_logits):
    rng = np.random.default_rng(5)
    probs = random_probs(rng, 2000, 7)
    labels = labels_from(rng, probs)
    scores = np.log(probs + 1e-12) if from_logits else probs
    conf, correct = top_label(softmax64(scores) if from_logits else probs, labels)
    d = calibkit.score_decomposition(scores, labels, score=score, from_logits=from_logits, backend=backend)
    assert_terms(d, reference(conf, correct, None, score))
    assert_identity(d)


def test_binary_logits_are_the_logistic_of_the_scores(backend):
    p, y, _ = binary_data(7, 800)
    z = np.log(p) - np.log1p(-p)
    d = calibkit.score_decomposition(z, y, from_logits=True, backend=backend)
    ref = calibkit.score_decomposition(1 / (1 + np.exp(-z)), y, backend=backend)
    assert_terms(d, {k: getattr(ref, k) for k in TERMS}, 1e-12)


@pytest.mark.parametrize("case", [
    ([0.2, 0.7], [1, 0]),                                   # n = 2, reversed
    ([0.2, 0.2], [1, 0]),                                   # n = 2, tied
    ([0.3, 0.6], [0, 1]),                                   # n = 2, perfectly separated
    ([0.0, 1.0, 0.0, 1.0, 0.5], [0, 1, 0, 1, 1]),           # scores 0 and 1, right: finite log score
    ([0.0, 1.0, 0.3], [1, 1, 0]),                           # a score of 0 for an event: log score inf
    ([0.0, 1.0, 0.3], [1, 0, 0]),
    ([0.3, 0.6, 0.6], [1, 1, 1]),                           # one class
    ([0.3, 0.6, 0.6], [0, 0, 0]),
    ([0.0, 0.0, 0.0], [0, 0, 0]),
    ([1.0, 1.0, 0.5, 0.5, 0.5], [1, 0, 1, 1, 0]),           # ties at 1
])
@pytest.mark.parametrize("score", ["brier", "log"])
def test_adversarial_matches_model_diagnostics(backend, case, score):
    p, y = np.array(case[0]), np.array(case[1])
    d = calibkit.score_decomposition(p, y, score=score, backend=backend)
    assert_terms(d, reference(p, y, None, score))
    assert_terms(d, numpy_decomposition(p, y, None, score))
    assert_identity(d)


def test_near_ties_are_not_pooled_as_documented(backend):
    # Scores 2 ulps apart are two points for calibkit (exact ties only), one for scikit-learn's isotonic
    # regression behind model_diagnostics (it pools scores closer than 1e-15): the documented difference.
    p = np.array([0.3, 0.3 + 2e-16, 0.5])
    y = np.array([0, 1, 1])
    d = calibkit.score_decomposition(p, y, backend=backend)
    assert_terms(d, numpy_decomposition(p, y))
    assert d.score - d.miscalibration == 0.0  # perfectly separated: the recalibration is exact
    assert reference(p, y)["miscalibration"] < d.miscalibration


@pytest.mark.parametrize("score", ["brier", "log"])
def test_single_row(backend, score):
    # n = 1: the recalibrated forecast is the outcome itself (model_diagnostics refuses one row: its isotonic
    # regression returns NaN there); MCB = score, DSC = UNC = 0.
    for p, y in [(0.3, 1), (0.3, 0), (1.0, 1)]:
        d = calibkit.score_decomposition([p], [y], score=score, backend=backend)
        assert_terms(d, numpy_decomposition([p], [y], None, score))
        assert d.discrimination == 0.0 and d.uncertainty == 0.0


def test_sklearn_isotonic_is_the_recalibration():
    sk = pytest.importorskip("sklearn.isotonic")
    p, y, w = binary_data(11, 3000, ties=True)
    fitted = sk.IsotonicRegression().fit(p, y, sample_weight=w).predict(p)
    s_rc = np.sum(w * (fitted - y) ** 2) / np.sum(w)
    d = calibkit.score_decomposition(p, y, sample_weight=w)
    assert abs((d.score - d.miscalibration) - s_rc) <= 1e-12


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_strides(backend, dtype):
    rng = np.random.default_rng(3)
    probs = random_probs(rng, 1200, 5, dtype=dtype)
    labels = labels_from(rng, probs)
    big = np.zeros((1200, 10), dtype)
    big[:, ::2] = probs  # strided view on both axes
    conf, correct = top_label(probs, labels)
    for s in (probs, big[:, ::2], np.asfortranarray(probs)):
        d = calibkit.score_decomposition(s, labels, backend=backend)
        assert_terms(d, reference(conf, correct))
    pb = np.zeros(2400, dtype)
    pb[::2] = probs[:, 0]
    yb = (labels == 0).astype(np.int64)
    d = calibkit.score_decomposition(pb[::2], yb, backend=backend)
    assert_terms(d, reference(probs[:, 0].astype(np.float64), yb))


def test_float32_logits_use_float64_confidences(backend):
    rng = np.random.default_rng(4)
    z = (rng.normal(size=(3000, 20)) * 3).astype(np.float32)
    y = rng.integers(0, 20, 3000)
    conf, correct = top_label(softmax64(z), y)
    kconf, kcorrect, _ = decomposition._binary_problem(z, y, None, True, backend)
    # float32 logits: the kernels' float32 exp (relative error < 3e-7, the input's own precision)
    assert np.abs(kconf / conf - 1).max() <= 3e-7 and np.array_equal(kcorrect, correct)
    for score in ("brier", "log"):
        d = calibkit.score_decomposition(z, y, from_logits=True, score=score, backend=backend)
        assert_terms(d, reference(kconf, kcorrect, None, score))  # the same confidences: to 1e-9
        assert_terms(d, reference(conf, correct, None, score), 1e-6)  # a float64 softmax: to the input precision


def test_backends_agree():
    p, y, w = binary_data(9, 5000, ties=True)
    for score in ("brier", "log"):
        a = calibkit.score_decomposition(p, y, score=score, sample_weight=w, backend="cpp")
        b = calibkit.score_decomposition(p, y, score=score, sample_weight=w, backend="numba")
        assert a == b


def test_thread_count_does_not_change_the_result(threads):
    p, y, w = binary_data(12, 300_000)
    calibkit.set_num_threads(1)
    one = calibkit.score_decomposition(p, y, sample_weight=w)
    t1 = calibkit.corp_reliability_table(p, y, sample_weight=w)
    calibkit.set_num_threads(2)
    assert calibkit.score_decomposition(p, y, sample_weight=w) == one
    t2 = calibkit.corp_reliability_table(p, y, sample_weight=w)
    assert np.array_equal(t1.x, t2.x) and np.array_equal(t1.y, t2.y)


# ----------------------------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------------------------

_rows = st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) | st.floats(0, 1),
                           st.integers(0, 1), st.integers(1, 4)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_rows, st.sampled_from(["brier", "log"]), st.randoms(use_true_random=False))
def test_properties(rows, score, random):
    p = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    w = np.array([r[2] for r in rows], float)
    d = calibkit.score_decomposition(p, y, score=score, sample_weight=w)
    assert_terms(d, numpy_decomposition(p, y, w, score), 1e-12)
    assert_identity(d)
    if np.isfinite(d.score):
        assert d.miscalibration >= -1e-12 and d.discrimination >= -1e-12
    assert d.uncertainty >= 0 and d.discrimination <= d.uncertainty + 1e-12
    perm = np.array(random.sample(range(len(rows)), len(rows)))  # rows in any order: the same terms
    e = calibkit.score_decomposition(p[perm], y[perm], score=score, sample_weight=w[perm])
    assert_terms(e, {k: getattr(d, k) for k in TERMS}, 1e-12)
    t = calibkit.corp_reliability_table(p, y, sample_weight=w)
    assert (np.diff(t.x) > 0).all()  # knots strictly increasing: equal scores are in one block
    assert (np.diff(t.y) >= 0).all()  # the recalibration is monotone


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------


def test_integer_weights_are_repetitions(backend):
    p, y, _ = binary_data(21, 400, ties=True)
    reps = np.random.default_rng(1).integers(1, 4, 400)
    for score in ("brier", "log"):
        a = calibkit.score_decomposition(p, y, score=score, sample_weight=reps, backend=backend)
        b = calibkit.score_decomposition(np.repeat(p, reps), np.repeat(y, reps), score=score, backend=backend)
        assert_terms(a, {k: getattr(b, k) for k in TERMS}, 1e-12)


def test_zero_weights_leave_rows_out(backend):
    p, y, w = binary_data(22, 500)
    w[::3] = 0.0
    p[0], y[0] = 0.0, 1  # a log score of inf on a row of weight 0 does not count
    keep = w > 0
    for score in ("brier", "log"):
        a = calibkit.score_decomposition(p, y, score=score, sample_weight=w, backend=backend)
        b = calibkit.score_decomposition(p[keep], y[keep], score=score, sample_weight=w[keep], backend=backend)
        assert a == b
        assert np.isfinite(a.score)


def test_weight_scale_does_not_matter(backend):
    p, y, w = binary_data(23, 500)
    a = calibkit.score_decomposition(p, y, sample_weight=w, backend=backend)
    b = calibkit.score_decomposition(p, y, sample_weight=w * 1e300, backend=backend)
    assert_terms(a, {k: getattr(b, k) for k in TERMS}, 1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Real model outputs
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["focal_cifar10_resnet50_brier.npz", "focal_cifar100_densenet121_brier.npz",
                                  "netcal_cifar10_lenet5.npz", "kumar_cifar10_vgg.npz"])
@pytest.mark.parametrize("score", ["brier", "log"])
def test_real_dumps(backend, name, score):
    z = load_real(name)
    if "test_logits" in z:
        scores, labels, from_logits = z["test_logits"], z["test_labels"], True
        conf, correct = top_label(softmax64(scores), labels)
    else:
        scores, labels, from_logits = z["probs"], z["labels"], False
        conf, correct = top_label(scores, labels)
    d = calibkit.score_decomposition(scores, labels, score=score, from_logits=from_logits, backend=backend)
    kconf, kcorrect, _ = decomposition._binary_problem(scores, labels, None, from_logits, backend)
    assert np.array_equal(kcorrect, correct)
    assert_terms(d, reference(kconf, kcorrect, None, score))
    # float32 logits: confidences from the kernels' float32 exp, compared to a float64 softmax at 1e-6
    assert_terms(d, reference(conf, correct, None, score), 1e-6 if from_logits else TOL)
    assert_identity(d)
    # binary: class 0 against the rest, with weights
    p0 = softmax64(scores)[:, 0] if from_logits else scores[:, 0].astype(np.float64)
    y0 = (labels == 0).astype(np.int64)
    w = np.random.default_rng(0).random(len(y0)) + 0.5
    d0 = calibkit.score_decomposition(p0, y0, score=score, sample_weight=w, backend=backend)
    assert_terms(d0, reference(p0, y0, w, score))


# ----------------------------------------------------------------------------------------------------------------
# The reliability curve and its band
# ----------------------------------------------------------------------------------------------------------------


def test_knots_match_sklearn_and_model_diagnostics(backend):
    sk = pytest.importorskip("sklearn.isotonic")
    for ties in (False, True):
        p, y, w = binary_data(31, 2000, ties)
        iso = sk.IsotonicRegression().fit(p, y, sample_weight=w)
        t = calibkit.corp_reliability_table(p, y, sample_weight=w, backend=backend)
        assert np.array_equal(t.x, iso.X_thresholds_)
        assert np.abs(t.y - iso.y_thresholds_).max() <= 1e-12
        assert t.block_fraction.sum() == pytest.approx(1.0, rel=1e-12)
        share = [w[(p >= lo) & (p <= hi)].sum() / w.sum() for lo, hi in zip(t.x[np.r_[True, t.y[1:] != t.y[:-1]]],
                                                                          t.x[np.r_[t.y[1:] != t.y[:-1], True]])]
        np.testing.assert_allclose(t.block_fraction, share, rtol=1e-12)
        assert t.n_blocks == len(np.unique(t.y))
        assert t.lower is None and t.upper is None
        d = calibkit.score_decomposition(p, y, sample_weight=w, backend=backend)
        assert t.decomposition == d


def test_curve_is_what_model_diagnostics_draws():
    pytest.importorskip("matplotlib")
    mdc = pytest.importorskip("model_diagnostics.calibration")
    from matplotlib.figure import Figure

    p, y, _ = binary_data(32, 1500)
    ax = Figure().subplots()
    mdc.plot_reliability_diagram(y, p, ax=ax)
    x_md, y_md = ax.lines[-1].get_data()
    t = calibkit.corp_reliability_table(p, y)
    assert np.array_equal(t.x, x_md)
    assert np.abs(t.y - y_md).max() <= 1e-12


def numpy_band(p, w, x_knots, n_bootstrap, level, seed):
    """The consistency band by the same draws, refitted with the NumPy PAV (per row for weights, per tie group
    with Binomial draws without)."""
    rng = np.random.default_rng(seed)
    fits = np.empty((n_bootstrap, len(x_knots)))
    if w is None:
        u, counts = np.unique(p, return_counts=True)
        at = np.searchsorted(u, x_knots)
        for b in range(n_bootstrap):
            ystar = rng.binomial(counts, u) / counts
            fits[b] = numpy_pav(u, ystar, counts)[at]
    else:
        order = np.argsort(p, kind="stable")
        ps, ws = p[order], w[order]
        for b in range(n_bootstrap):
            ystar = (rng.random(len(ps)) < ps).astype(float)
            f = numpy_pav(ps, ystar, ws)
            fits[b] = f[np.searchsorted(ps, x_knots)]
    return np.quantile(fits, [(1 - level) / 2, (1 + level) / 2], axis=0)


@pytest.mark.parametrize("weighted", [False, True])
def test_band_matches_numpy_reference(backend, weighted):
    p, y, w = binary_data(33, 300, ties=True)
    w = w if weighted else None
    t = calibkit.corp_reliability_table(p, y, sample_weight=w, n_bootstrap=40, level=0.8, seed=5, backend=backend)
    lo, hi = numpy_band(p, w, t.x, 40, 0.8, 5)
    np.testing.assert_allclose(t.lower, lo, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t.upper, hi, rtol=0, atol=1e-12)
    assert t.n_bootstrap == 40 and t.level == 0.8


def test_band_is_deterministic_for_a_seed(backend):
    p, y, _ = binary_data(34, 1000)
    a = calibkit.corp_reliability_table(p, y, n_bootstrap=50, seed=3, backend=backend)
    b = calibkit.corp_reliability_table(p, y, n_bootstrap=50, seed=3, backend=backend)
    c = calibkit.corp_reliability_table(p, y, n_bootstrap=50, seed=4, backend=backend)
    assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)
    assert not (np.array_equal(a.lower, c.lower) and np.array_equal(a.upper, c.upper))
    assert (a.lower <= a.upper).all()


def test_band_holds_a_calibrated_curve():
    # Calibrated data: the recalibrated curve stays inside a 90% consistency band at most knots.
    rng = np.random.default_rng(35)
    p = rng.random(4000)
    y = (rng.random(4000) < p).astype(int)
    t = calibkit.corp_reliability_table(p, y, n_bootstrap=200, level=0.9, seed=0)
    inside = (t.y >= t.lower - 1e-12) & (t.y <= t.upper + 1e-12)
    assert inside.mean() >= 0.8
    # and a badly miscalibrated forecast leaves it
    t = calibkit.corp_reliability_table(p ** 3, y, n_bootstrap=200, level=0.9, seed=0)
    assert ((t.y < t.lower) | (t.y > t.upper)).mean() >= 0.5


def test_band_size_is_bounded_before_allocating(monkeypatch):
    p, y, _ = binary_data(36, 500)
    monkeypatch.setattr(decomposition, "MAX_CELLS", 10)
    with pytest.raises(ValueError, match=r"n_bootstrap \* n_knots must be <= 10, got 5 \* \d+"):
        calibkit.corp_reliability_table(p, y, n_bootstrap=5)


def test_huge_n_bootstrap_is_refused_in_a_subprocess():
    code = ("import numpy as np, calibkit\n"
            "try:\n"
            "    calibkit.corp_reliability_table(np.random.rand(10**5), np.zeros(10**5, int), n_bootstrap=10**12)\n"
            "except ValueError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "n_bootstrap must be in [0, 10000], got 1000000000000" in r.stdout


def test_top_label_table(backend):
    rng = np.random.default_rng(37)
    z = rng.normal(size=(1000, 4)) * 2
    y = rng.integers(0, 4, 1000)
    conf, correct = top_label(softmax64(z), y)
    t = calibkit.corp_reliability_table(z, y, from_logits=True, backend=backend)
    u = calibkit.corp_reliability_table(conf, correct, backend=backend)
    assert np.abs(t.x - u.x).max() <= 1e-15 and np.abs(t.y - u.y).max() <= 1e-15


# ----------------------------------------------------------------------------------------------------------------
# Poisson-bootstrap intervals
# ----------------------------------------------------------------------------------------------------------------


def test_interval_is_deterministic_and_brackets_the_estimate(backend):
    p, y, w = binary_data(41, 800)
    a = calibkit.score_decomposition(p, y, ci=0.9, n_boot=200, seed=1, sample_weight=w, backend=backend)
    b = calibkit.score_decomposition(p, y, ci=0.9, n_boot=200, seed=1, sample_weight=w, backend=backend)
    assert a == b and a.ci_level == 0.9
    plain = calibkit.score_decomposition(p, y, sample_weight=w, backend=backend)
    assert_terms(a, {k: getattr(plain, k) for k in TERMS}, 0)
    for k in TERMS:
        lo, hi = a.ci[k]
        assert lo <= getattr(a, k) <= hi, k
    assert calibkit.score_decomposition(p, y, ci=0.9, n_boot=200, seed=2, backend=backend).ci != a.ci


def test_interval_coverage_on_simulated_data():
    # Perfectly calibrated data of known base rate: the 90% interval of UNC = ybar (1 - ybar) covers the true
    # value 0.3 * 0.7 in most of 60 independent samples (binomial sd of the coverage is about 0.04).
    rng = np.random.default_rng(42)
    hits = 0
    for rep in range(60):
        p = np.full(400, 0.3) + rng.uniform(-0.2, 0.2, 400)
        y = (rng.random(400) < p).astype(int)
        lo, hi = calibkit.score_decomposition(p, y, ci=0.9, n_boot=150, seed=rep).ci["uncertainty"]
        hits += lo <= 0.21 <= hi
    assert hits >= 45


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one ValueError / TypeError naming the argument
# ----------------------------------------------------------------------------------------------------------------

P = np.array([0.2, 0.6, 0.9])
Y = np.array([0, 1, 1])

BAD = [
    (lambda: calibkit.score_decomposition(P, Y, score="crps"), ValueError, r"score must be one of"),
    (lambda: calibkit.score_decomposition(P, np.array([0, 2, 1])), ValueError, r"labels\[1\] = 2 is not 0 or 1"),
    (lambda: calibkit.score_decomposition(np.array([0.2, np.nan, 0.9]), Y), ValueError,
     r"scores\[1\] = nan is not finite"),
    (lambda: calibkit.score_decomposition(np.array([0.2, 1.5, 0.9]), Y), ValueError,
     r"scores\[1\] = 1.5 is not a probability"),
    (lambda: calibkit.score_decomposition(P, Y, sample_weight=[1, -1, 1]), ValueError,
     r"sample_weight\[1\] = -1.0 is negative"),
    (lambda: calibkit.score_decomposition(P, Y, sample_weight=[0, 0, 0]), ValueError, r"sample_weight sums to 0"),
    (lambda: calibkit.score_decomposition(P, Y[:2]), ValueError, r"labels has 2 entries but scores has 3 rows"),
    (lambda: calibkit.score_decomposition(np.array([]), np.array([], int)), ValueError, r"scores is empty"),
    (lambda: calibkit.score_decomposition(np.array([[0.5, 0.6], [0.2, 0.8]]), [0, 1]), ValueError,
     r"row 0|scores\[0\]"),
    (lambda: calibkit.score_decomposition(np.eye(3), [0, 1, 3]), ValueError,
     r"labels\[2\] = 3 is out of range for n_classes=3"),
    (lambda: calibkit.score_decomposition(P, Y, ci=1.5), ValueError, r"ci must be in \(0, 1\), got 1.5"),
    (lambda: calibkit.score_decomposition(P, Y, ci="0.9"), TypeError, r"ci must be a number"),
    (lambda: calibkit.score_decomposition(P, Y, ci=0.9, n_boot=0), ValueError, r"n_boot must be in \[1, 10000\]"),
    (lambda: calibkit.score_decomposition(P, Y, seed=-1), ValueError, r"seed must be None or an integer >= 0, got -1"),
    (lambda: calibkit.score_decomposition(P, Y, backend="gpu"), ValueError, r"backend must be one of"),
    (lambda: calibkit.score_decomposition(P, Y, from_logits="yes"), TypeError, r"from_logits"),
    (lambda: calibkit.corp_reliability_table(P, Y, n_bootstrap=-1), ValueError,
     r"n_bootstrap must be in \[0, 10000\], got -1"),
    (lambda: calibkit.corp_reliability_table(P, Y, n_bootstrap=2.5), TypeError, r"n_bootstrap must be an integer"),
    (lambda: calibkit.corp_reliability_table(P, Y, level=1.0), ValueError, r"level must be in \(0, 1\), got 1.0"),
    (lambda: calibkit.corp_reliability_table(P, Y, seed=1.5), TypeError, r"seed must be None or an integer"),
    (lambda: calibkit.plot.corp_reliability_diagram(P), TypeError, r"table must be a CorpReliabilityTable"),
]


@pytest.mark.parametrize("call, exc, message", BAD)
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_inputs_are_not_modified():
    p, y, w = binary_data(51, 300)
    p[0] = 1.0 + 1e-7  # accepted as rounding, scored as 1: the caller's array keeps its value
    copies = p.copy(), y.copy(), w.copy()
    calibkit.score_decomposition(p, y, sample_weight=w, ci=0.9, n_boot=20)
    calibkit.corp_reliability_table(p, y, sample_weight=w, n_bootstrap=20)
    for a, b in zip((p, y, w), copies):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------------------------------------
# The figure
# ----------------------------------------------------------------------------------------------------------------


def test_corp_reliability_diagram(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    p, y, _ = binary_data(61, 500)
    t = calibkit.corp_reliability_table(p, y, n_bootstrap=30)
    path = tmp_path / "corp.png"
    fig = calibkit.plot.corp_reliability_diagram(t, name="model", path=path)
    assert path.stat().st_size > 0
    ax = fig.axes[0]
    x, yy = ax.lines[0].get_data()
    assert np.array_equal(x, t.x) and np.array_equal(yy, t.y)
    assert "MCB" in ax.lines[0].get_label()
    ax2 = Figure().subplots()
    assert calibkit.plot.corp_reliability_diagram(calibkit.corp_reliability_table(p, y), ax=ax2) is ax2.figure


def test_module_exports():
    for name in decomposition.__all__:
        assert getattr(calibkit, name) is getattr(decomposition, name)
    assert calibkit.plot.corp_reliability_diagram.__module__ == "calibkit.plot"


def test_concurrent_calls_in_a_subprocess():
    # Two Python threads deciding at once on both backends (Numba's parallel kernels must not abort the process).
    code = ("import threading, numpy as np, calibkit\n"
            "rng = np.random.default_rng(0); p = rng.random(300_000); y = (rng.random(300_000) < p).astype(int)\n"
            "z = rng.normal(size=(20_000, 50))\n"
            "want = {b: calibkit.score_decomposition(p, y, backend=b) for b in ('cpp', 'numba')}\n"
            "bad = []\n"
            "def run(b):\n"
            "    for _ in range(3):\n"
            "        if calibkit.score_decomposition(p, y, backend=b) != want[b]: bad.append(b)\n"
            "        calibkit.score_decomposition(z, rng.integers(0, 50, 20_000), from_logits=True, backend=b)\n"
            "ts = [threading.Thread(target=run, args=(b,)) for b in ('cpp', 'numba', 'numba', 'cpp')]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print('bad', bad)\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bad []" in r.stdout
