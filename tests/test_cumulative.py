"""cumulative_calibration_error (ECCE-R / ECCE-MAD, Arrieta-Ibarra et al. 2022): NumPy reference, mcgrad
parity, p-values, both backends, dtypes and layouts, thread counts, bad input and the raw binding."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import cumulative_calibration_error as cce
from calibkit.cumulative import cumulative_curve, ks_pvalue, kuiper_pvalue

from conftest import load_real


# -- plain NumPy reference -------------------------------------------------------------------------------------

def reference(p, y, w=None):
    """Stable sort, cumulative differences, range, max |C|, sigma: the formulas of the paper, nothing shared."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.ones_like(p) if w is None else np.asarray(w, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    total = w.sum()
    c = np.concatenate(([0.0], np.cumsum(w[order] * (y[order] - p[order])) / total))
    sigma = math.sqrt(float(np.sum(w * w * p * (1 - p)))) / total
    return float(np.ptp(c)), float(np.max(np.abs(c))), sigma


def top_label(probs, labels):
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.int64)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def binary_data(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    if ties:
        p = np.round(p, 1)
    y = (rng.random(n) < p ** 1.3).astype(np.int64)
    return p, y, rng.random(n) * 3


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000])
@pytest.mark.parametrize("weighted", [False, True])
def test_numpy_reference(backend, n, weighted):
    p, y, w = binary_data(n, n)
    w = w if weighted else None
    r = cce(p, y, sample_weight=w, backend=backend)
    rng, max_abs, sigma = reference(p, y, w)
    assert r.range == pytest.approx(rng, abs=1e-12)
    assert r.max_abs == pytest.approx(max_abs, abs=1e-12)
    assert r.sigma == pytest.approx(sigma, rel=1e-12)
    assert r.count == n
    assert r.range_sigma == pytest.approx(rng / sigma, rel=1e-9)
    assert r.max_abs_sigma == pytest.approx(max_abs / sigma, rel=1e-9)
    assert 0 < r.range_pvalue <= 1 and 0 < r.max_abs_pvalue <= 1


def test_ties_input_order(backend):
    # Tied scores of mixed outcomes: the input order inside a tie (a stable sort) decides the path.
    p = np.array([0.5, 0.5, 0.5, 0.5, 0.2])
    y = np.array([1, 1, 0, 0, 0])
    r = cce(p, y, backend=backend)
    assert r.range == pytest.approx(reference(p, y)[0], abs=1e-15)
    r2 = cce(p[[0, 2, 1, 3, 4]], y[[0, 2, 1, 3, 4]], backend=backend)
    assert r2.range == pytest.approx(reference(p[[0, 2, 1, 3, 4]], y[[0, 2, 1, 3, 4]])[0], abs=1e-15)
    assert r2.range < r.range


def test_backends_agree_and_threads(threads):
    p, y, w = binary_data(300_000, 5, ties=True)
    results = []
    for backend in ("cpp", "numba"):
        for t in (1, 2):
            calibkit.set_num_threads(t)
            results.append(cce(p, y, sample_weight=w, backend=backend))
    assert all(r == results[0] for r in results), results


def test_permutation_invariance_distinct_scores(backend):
    p, y, w = binary_data(500, 7)
    perm = np.random.default_rng(1).permutation(500)
    a = cce(p, y, sample_weight=w, backend=backend)
    b = cce(p[perm], y[perm], sample_weight=w[perm], backend=backend)
    assert a.range == pytest.approx(b.range, abs=1e-14)
    assert a.max_abs == pytest.approx(b.max_abs, abs=1e-14)
    assert a.sigma == pytest.approx(b.sigma, rel=1e-13)


def test_weights_scale_and_integer_repeats(backend):
    p, y, _ = binary_data(200, 3)
    k = np.random.default_rng(2).integers(1, 4, 200)
    a = cce(p, y, sample_weight=k.astype(float), backend=backend)
    b = cce(p, y, sample_weight=7.5 * k, backend=backend)
    rep = cce(np.repeat(p, k), np.repeat(y, k), backend=backend)
    assert a.range == pytest.approx(b.range, abs=1e-14)
    assert a.range == pytest.approx(rep.range, abs=1e-14)
    assert a.max_abs == pytest.approx(rep.max_abs, abs=1e-14)
    # sigma uses sum w^2 p (1 - p) (mcgrad's): repeats are not the same as integer weights there.
    assert a.sigma == pytest.approx(reference(p, y, k)[2], rel=1e-12)


def test_zero_weight_rows_drop_out(backend):
    p, y, w = binary_data(300, 4)
    w[::3] = 0.0
    keep = w > 0
    a = cce(p, y, sample_weight=w, backend=backend)
    b = cce(p[keep], y[keep], sample_weight=w[keep], backend=backend)
    assert a.range == pytest.approx(b.range, abs=1e-14)
    assert a.sigma == pytest.approx(b.sigma, rel=1e-13)


def test_top_label_probs_and_logits(backend):
    rng = np.random.default_rng(11)
    z = rng.normal(size=(3000, 7)) * 2
    labels = rng.integers(0, 7, 3000)
    probs = softmax(z)
    conf, correct = top_label(probs, labels)
    ref = reference(conf, correct)
    for scores, from_logits in ((probs, False), (z, True), (z.astype(np.float32), True)):
        r = cce(scores, labels, from_logits=from_logits, backend=backend)
        tol = 1e-6 if scores.dtype == np.float32 else 1e-12
        assert r.range == pytest.approx(ref[0], abs=tol)
        assert r.max_abs == pytest.approx(ref[1], abs=tol)
        assert r.sigma == pytest.approx(ref[2], rel=tol)


def test_binary_from_logits(backend):
    rng = np.random.default_rng(12)
    z = rng.normal(size=1000)
    y = rng.integers(0, 2, 1000)
    p = 1 / (1 + np.exp(-z))
    r = cce(z, y, from_logits=True, backend=backend)
    assert r.range == pytest.approx(reference(p, y)[0], abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_strides(backend, dtype):
    rng = np.random.default_rng(13)
    probs = softmax(rng.normal(size=(600, 5))).astype(dtype)
    labels = rng.integers(0, 5, 600)
    wide = np.zeros((600, 10), dtype)
    wide[:, ::2] = probs
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    before = strided.copy()
    a = cce(probs, labels, backend=backend)
    b = cce(strided, labels, backend=backend)
    f = np.asfortranarray(probs)
    c = cce(f, labels, backend=backend)
    assert a == b == c
    np.testing.assert_array_equal(strided, before)
    conf, correct = top_label(probs.astype(np.float64), labels)
    assert a.range == pytest.approx(reference(conf, correct)[0], abs=1e-12)
    binary = probs[:, 0].copy()
    yb = (labels == 0).astype(np.int64)
    assert cce(binary, yb, backend=backend).range == pytest.approx(reference(binary, yb)[0], abs=1e-12)
    assert cce(wide[:, 0], yb, backend=backend) == cce(binary, yb, backend=backend)


def test_degenerate(backend):
    # Scores 0 and 1 only: sigma is 0.
    r = cce([0.0, 1.0, 1.0], [0, 1, 1], backend=backend)
    assert (r.range, r.sigma, r.range_sigma, r.range_pvalue, r.max_abs_pvalue) == (0.0, 0.0, 0.0, 1.0, 1.0)
    r = cce([0.0, 1.0], [1, 1], backend=backend)
    assert r.range == 0.5 and r.sigma == 0.0 and r.range_sigma == math.inf
    assert r.range_pvalue == sys.float_info.epsilon == r.max_abs_pvalue
    # One class, n = 1.
    r = cce([0.3], [0], backend=backend)
    assert r.range == pytest.approx(0.3) and r.max_abs == pytest.approx(0.3)
    assert r.sigma == pytest.approx(math.sqrt(0.21))
    d = r.to_dict()
    assert d["count"] == 1 and set(d) >= {"range", "max_abs", "sigma", "range_pvalue", "max_abs_pvalue"}


# -- mcgrad parity ---------------------------------------------------------------------------------------------

def mcgrad_values(p, y, w=None):
    mm = pytest.importorskip("mcgrad.metrics")
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return mm.ecce(y, p, w), mm.ecce_sigma(y, p, w), mm.ecce_pvalue(y, p, w), \
        mm._ecce_standard_deviation(p, y, w)


def assert_mcgrad(r, p, y, w=None):
    ecce, sig, pv, sd = mcgrad_values(p, y, w)
    assert abs(r.range - ecce) <= 1e-9
    assert abs(r.sigma - sd) <= 1e-9
    assert r.range_sigma == pytest.approx(sig, rel=1e-9, abs=1e-9) or (math.isinf(sig) and r.range_sigma == sig)
    assert abs(r.range_pvalue - pv) <= 1e-9


@pytest.mark.parametrize("n", [1, 2, 5, 100, 20_000])
@pytest.mark.parametrize("weighted", [False, True])
def test_mcgrad_random(backend, n, weighted):
    p, y, w = binary_data(n, 100 + n)
    w = w if weighted else None
    assert_mcgrad(cce(p, y, sample_weight=w, backend=backend), p, y, w)


@pytest.mark.parametrize("case", ["zeros_ones", "one_class_0", "one_class_1", "n1", "n2", "ties_same_label",
                                  "extreme", "tiny_weights"])
def test_mcgrad_adversarial(backend, case):
    rng = np.random.default_rng(7)
    w = None
    if case == "zeros_ones":
        p = rng.choice([0.0, 1.0, 0.5], 300)
        y = rng.integers(0, 2, 300)
        y[p == 0.0] = 0  # within each tie run of 0 or 1 one outcome, so the tie order does not matter
        y[p == 1.0] = 1
        y[p == 0.5] = 1
    elif case.startswith("one_class"):
        p = rng.random(400)
        y = np.full(400, int(case[-1]))
    elif case == "n1":
        p, y = np.array([0.7]), np.array([0])
    elif case == "n2":
        p, y = np.array([0.7, 0.7]), np.array([1, 1])
    elif case == "ties_same_label":
        # Many ties, each tie run of one outcome: the path is monotone inside a run, so any tie order gives the
        # same range (mcgrad's NumPy argsort is not stable).
        values = rng.random(50)
        p = rng.choice(values, 5000)
        y = np.isin(p, values[::2]).astype(np.int64)
    elif case == "extreme":
        p = np.concatenate([rng.random(100) * 1e-12, 1 - rng.random(100) * 1e-12, [0.0, 1.0]])
        y = rng.integers(0, 2, 202)
    else:
        # mcgrad squares the weights unscaled (1e-400 underflows to 0, so its sigma is 0); calibkit scales the
        # weights by their largest first, and every value here is invariant to that scale.
        p, y, w = binary_data(500, 9)
        assert_mcgrad(cce(p, y, sample_weight=w * 1e-200, backend=backend), p, y, w)
        return
    assert_mcgrad(cce(p, y, sample_weight=w, backend=backend), p, y, w)


def test_mcgrad_ties_mixed_outcomes(backend):
    # Tied scores with both outcomes: mcgrad's tie order is NumPy's (unstable, machine-dependent) argsort, ours
    # the input order. The values at the ends of each tie run agree, so the ranges differ by at most the weight
    # of the largest tie run over W (and by much less in practice).
    p, y, w = binary_data(5000, 21, ties=True)
    r = cce(p, y, sample_weight=w, backend=backend)
    ecce, _, _, sd = mcgrad_values(p, y, w)
    largest_run = max(w[p == v].sum() for v in np.unique(p)) / w.sum()
    assert abs(r.range - ecce) <= largest_run
    assert abs(r.sigma - sd) <= 1e-12
    # Ours is the stable-order value (the plain NumPy reference).
    assert r.range == pytest.approx(reference(p, y, w)[0], abs=1e-12)


def test_mcgrad_top_label_and_logits(backend):
    rng = np.random.default_rng(31)
    z = rng.normal(size=(4000, 10)).astype(np.float64) * 3
    labels = rng.integers(0, 10, 4000)
    conf, correct = top_label(softmax(z), labels)
    assert_mcgrad(cce(z, labels, from_logits=True, backend=backend), conf, correct)
    assert_mcgrad(cce(softmax(z), labels, backend=backend), conf, correct)


@pytest.mark.parametrize("name", ["focal_cifar10_resnet50_brier.npz", "focal_cifar100_densenet121_brier.npz",
                                  "netcal_cifar10_lenet5.npz", "kumar_cifar10_vgg.npz"])
def test_mcgrad_real_dumps(backend, name):
    d = load_real(name)
    if "test_logits" in d:
        z, labels = d["test_logits"], d["test_labels"]
        r = cce(z, labels, from_logits=True, backend=backend)
        conf, correct = top_label(softmax(z), labels)
        tol = 1e-6  # float32 logits: the kernel's float32 softmax
    else:
        probs, labels = d["probs"], d["labels"]
        r = cce(probs, labels, backend=backend)
        conf, correct = top_label(probs.astype(np.float64), labels)
        tol = 1e-9
    ecce, sig, pv, sd = mcgrad_values(conf, correct)
    # Ties in float32 confidences with mixed correctness: bounded by the largest tie run (see above).
    _, counts = np.unique(conf, return_counts=True)
    assert abs(r.range - ecce) <= tol + counts.max() / conf.shape[0]
    assert r.range == pytest.approx(reference(conf, correct)[0], abs=tol)
    assert r.sigma == pytest.approx(sd, abs=tol)
    if counts.max() == 1:
        assert abs(r.range - ecce) <= tol and abs(r.range_pvalue - pv) <= 1e3 * tol
    # Binary: the real P(class 0) against "label is 0".
    p0 = (softmax(d["test_logits"]) if "test_logits" in d else d["probs"].astype(np.float64))[:, 0]
    y0 = (labels == 0).astype(np.int64)
    rb = cce(p0, y0, backend=backend)
    _, counts = np.unique(p0, return_counts=True)
    if counts.max() == 1:
        assert_mcgrad(rb, p0, y0)


# -- p-values --------------------------------------------------------------------------------------------------

def test_kuiper_pvalue_matches_mcgrad():
    mm = pytest.importorskip("mcgrad.metrics")
    xs = np.concatenate([[0.0, 1e-21, 1e-20, 0.1, 0.5], np.linspace(0.6, 9, 300), [8.26732672, 8.26732673, 50,
                                                                                         np.inf]])
    for x in xs:
        assert abs(kuiper_pvalue(x) - mm.ecce_pvalue_from_sigma(float(x))) <= 1e-12, x


def _ks_theta(x, terms=400):
    k = np.arange(terms)
    m = 2 * k + 1
    return 1 - 4 / np.pi * np.sum((-1.0) ** k / m * np.exp(-m * m * np.pi ** 2 / (8 * x * x)))


def test_ks_pvalue_series():
    for x in [0.05, 0.3, 0.7, 0.999, 1.0, 1.3, 2.0, 3.0]:
        assert ks_pvalue(x) == pytest.approx(_ks_theta(x), abs=1e-13), x
    assert ks_pvalue(0.0) == 1.0 and ks_pvalue(math.nan) == 1.0
    assert ks_pvalue(40.0) == sys.float_info.epsilon and kuiper_pvalue(math.inf) == sys.float_info.epsilon
    # Small tails from the reflection series: 4 Q(x) dominates.
    from scipy.special import ndtr
    assert ks_pvalue(6.0) == pytest.approx(4 * ndtr(-6.0), rel=1e-10)
    # Monotone, and the KS p-value is below the Kuiper one (max |B| <= range).
    xs = np.linspace(0.2, 8, 200)
    ks = [ks_pvalue(x) for x in xs]
    ku = [kuiper_pvalue(x) for x in xs]
    assert all(a >= b for a, b in zip(ks, ks[1:])) and all(a >= b for a, b in zip(ku, ku[1:]))
    assert all(a <= b + 1e-15 for a, b in zip(ks, ku))


def test_pvalues_by_simulation():
    # Random walks of Gaussian steps: P(max |S| / sd >= x) and P(range / sd >= x) against the formulas.
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(2000, 2000)).cumsum(axis=1) / math.sqrt(2000)
    walks = np.concatenate([np.zeros((2000, 1)), steps], axis=1)
    max_abs = np.abs(walks).max(axis=1)
    ranges = walks.max(axis=1) - walks.min(axis=1)
    for x in (1.0, 1.5, 2.0):
        assert np.mean(max_abs >= x) == pytest.approx(ks_pvalue(x), abs=0.035)
    for x in (1.5, 2.0, 2.5):
        assert np.mean(ranges >= x) == pytest.approx(kuiper_pvalue(x), abs=0.035)


def test_calibrated_data_uniform_pvalues(backend):
    rng = np.random.default_rng(3)
    pv = []
    for _ in range(200):
        p = rng.random(400)
        y = (rng.random(400) < p).astype(np.int64)
        pv.append(cce(p, y, backend=backend).range_pvalue)
    assert 0.02 <= np.mean(np.array(pv) < 0.1) <= 0.2


# -- curve and plot --------------------------------------------------------------------------------------------

def test_curve(backend):
    p, y, w = binary_data(300, 2)
    c = cumulative_curve(p, y, sample_weight=w, backend=backend)
    r = cce(p, y, sample_weight=w, backend=backend)
    assert c["result"] == r
    assert c["x"][0] == 0.0 and c["x"][-1] == pytest.approx(1.0)
    assert np.ptp(c["cumulative"]) == pytest.approx(r.range, abs=1e-15)
    assert np.all(np.diff(c["scores"]) >= 0)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    p, y, _ = binary_data(5000, 2)
    out = tmp_path / "cum.png"
    fig = calibkit.plot.cumulative_calibration(p, y, name="model", path=out)
    assert out.stat().st_size > 1000
    assert "ECCE-R" in fig._suptitle.get_text()


# -- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, exc, match", [
    (([0.2, 1.5], [0, 1]), {}, ValueError, r"scores\[1\]"),
    (([0.2, np.nan], [0, 1]), {}, ValueError, r"scores\[1\]"),
    (([0.2, 0.3], [0, 2]), {}, ValueError, r"labels\[1\] = 2"),
    (([[0.2, 0.8], [0.5, 0.5]], [0, 2]), {}, ValueError, r"labels\[1\] = 2"),
    (([0.2, 0.3], [0, 1, 1]), {}, ValueError, "labels"),
    (([0.2, 0.3], [0, 1]), {"sample_weight": [1.0, -1.0]}, ValueError, r"sample_weight\[1\]"),
    (([0.2, 0.3], [0, 1]), {"sample_weight": [0.0, 0.0]}, ValueError, "sample_weight sums to 0"),
    (([0.2, 0.3], [0, 1]), {"backend": "gpu"}, ValueError, "backend"),
    (([0.2, 0.3], [0, 1]), {"from_logits": "yes"}, (TypeError, ValueError), "from_logits"),
    (([], []), {}, ValueError, "empty|at least"),
    ((["a", "b"], [0, 1]), {}, (TypeError, ValueError), "scores"),
])
def test_bad_input(backend, args, kwargs, exc, match):
    kwargs = {"backend": backend, **kwargs}
    with pytest.raises(exc, match=match):
        cce(*args, **kwargs)


def test_binding_bad_calls_in_subprocess():
    code = textwrap.dedent("""
        import numpy as np
        from calibkit import _core, _numba
        p = np.array([0.2, 0.5, 0.9]); y = np.array([0, 1, 1], np.uint8)
        calls = [
            (p.astype(np.float32), y, None, False), (p, y[:2], None, False), (p, y, np.ones(2), False),
            (p, y, np.ones(3, np.float32), False), (np.array([0.1, np.nan, 0.2]), y, None, False),
            (p, np.array([0, 2, 1], np.uint8), None, False), (p, y.astype(float), None, False),
            (np.zeros(0), np.zeros(0, np.uint8), None, False),
            (p.reshape(3, 1), y, None, False), ([0.2, 0.5, 0.9], y, None, False), (p, y, None, 1),
            (p, y, np.array([1.0, np.nan, 1.0]), True),
        ]
        for k in (_core, _numba):
            for c in calls:
                try:
                    k.cumulative_differences(*c)
                except (TypeError, ValueError):
                    continue
                raise SystemExit(f"{k.__name__} accepted {c!r}")
            r = k.cumulative_differences(p, y, None, True)
            assert list(r["order"]) == [0, 1, 2], r
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
