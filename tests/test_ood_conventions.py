"""OOD metrics in every convention: positive side, AUPR rule, OpenOOD v1.5, partial AUROC, sample weights."""

import subprocess
import sys

import numpy as np
import pytest

import calibkit
from conftest import load_real

sk = pytest.importorskip("sklearn.metrics")


def openood_reference(s_in, s_out, recall=0.95):
    """OpenOOD v1.5's compute_all_metrics (openood/evaluators/metrics.py) restated with NumPy and scikit-learn:
    OOD is the positive class scored by -conf; FPR at the first point of roc_curve (default
    drop_intermediate=True) with TPR >= recall; AUROC = auc(roc); AUPR-In / AUPR-Out = auc(recall, precision)
    of precision_recall_curve with ID / OOD positive (scores conf / -conf)."""
    conf = np.r_[s_in, s_out].astype(np.float64)
    is_ood = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    fpr_curve, tpr_curve, _ = sk.roc_curve(is_ood, -conf)
    p_in, r_in, _ = sk.precision_recall_curve(1 - is_ood, conf)
    p_out, r_out, _ = sk.precision_recall_curve(is_ood, -conf)
    return dict(fpr_at_tpr=fpr_curve[np.argmax(tpr_curve >= recall)], auroc=sk.auc(fpr_curve, tpr_curve),
                aupr_in=sk.auc(r_in, p_in), aupr_out=sk.auc(r_out, p_out))


def check_openood(s_in, s_out, backend="auto", **weights):
    m = calibkit.ood_metrics(s_in, s_out, convention="openood", backend=backend)
    want = openood_reference(s_in, s_out)
    assert m.fpr_at_tpr == want["fpr_at_tpr"]
    for name in ("auroc", "aupr_in", "aupr_out"):
        assert getattr(m, name) == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
    assert (m.positive, m.aupr_rule, m.convention) == ("out", "trapezoid", "openood")
    assert calibkit.fpr_at_tpr(s_in, s_out, convention="openood", backend=backend) == m.fpr_at_tpr
    return m


@pytest.mark.parametrize("dtype", (np.float16, np.float32, np.float64))
@pytest.mark.parametrize("ties", (False, True))
def test_openood_convention_random(backend, dtype, ties):
    rng = np.random.default_rng(3)
    s_in, s_out = rng.normal(size=1500), rng.normal(size=900) - 0.7
    if ties:
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    check_openood(s_in.astype(dtype), s_out.astype(dtype), backend)


def test_openood_drop_intermediate_moves_fpr():
    """A collinear run of ROC points: roc_curve drops the first point reaching 95%, OpenOOD reads the next."""
    # OOD (positive, low scores first) 0..19; the last three tied with one ID each: equal (1, 1) steps, so the
    # points (18, 1) and (19, 2) are dropped and the first kept point with TPR >= 0.95 is (20, 3)
    s_out = np.arange(20.0)
    s_in = np.r_[17.0, 18.0, 19.0, np.full(17, 100.0)]
    m = check_openood(s_in, s_out)
    plain = calibkit.fpr_at_tpr(s_in, s_out, positive="out")
    fpr, tpr, _ = sk.roc_curve(np.r_[np.zeros(20), np.ones(20)], -np.r_[s_in, s_out], drop_intermediate=False)
    assert plain == fpr[np.searchsorted(tpr, 0.95)]
    assert (plain, m.fpr_at_tpr) == (0.1, 0.15)  # the documented difference of OpenOOD's rule


def test_openood_many_small_cases():
    rng = np.random.default_rng(4)
    for _ in range(300):
        s_in = rng.integers(-4, 5, size=rng.integers(1, 30)) / 2
        s_out = rng.integers(-5, 3, size=rng.integers(1, 30)) / 2
        for b in ("cpp", "numba"):
            check_openood(s_in, s_out, b)


def test_openood_real_dumps():
    cifar10 = load_real("focal_cifar10_resnet110_brier.npz")["test_logits"]
    cifar100 = load_real("focal_cifar100_resnet110_brier.npz")["test_logits"]
    for score in (calibkit.max_probability, lambda x, from_logits: -calibkit.entropy(x, from_logits=from_logits)):
        s_in, s_out = score(cifar10, from_logits=True), score(cifar100, from_logits=True)
        m = check_openood(s_in, s_out)
        assert 0.6 < m.auroc < 0.99
    netcal = load_real("netcal_cifar10_lenet5.npz")["probs"]
    check_openood(calibkit.max_probability(netcal)[:4000], calibkit.max_probability(netcal)[4000:] * 0.9)


@pytest.mark.parametrize("ties", (False, True))
def test_positive_out_and_trapezoid_match_sklearn(backend, ties):
    rng = np.random.default_rng(5)
    s_in, s_out = rng.normal(size=700), rng.normal(size=500) - 0.5
    if ties:
        s_in, s_out = np.round(s_in * 2) / 2, np.round(s_out * 2) / 2
    y = np.r_[np.ones(700), np.zeros(500)]
    s = np.r_[s_in, s_out]
    for tpr in (0.0, 0.3, 0.95, 1.0):
        fpr_c, tpr_c, _ = sk.roc_curve(1 - y, -s, drop_intermediate=False)
        want = fpr_c[np.searchsorted(tpr_c, tpr)]
        assert calibkit.fpr_at_tpr(s_in, s_out, tpr=tpr, positive="out", backend=backend) == pytest.approx(want)
    p, r, _ = sk.precision_recall_curve(y, s)
    assert calibkit.aupr_in(s_in, s_out, aupr="trapezoid", backend=backend) == pytest.approx(sk.auc(r, p), rel=1e-12)
    assert calibkit.aupr(s_in, s_out, aupr="trapezoid", backend=backend) == pytest.approx(sk.auc(r, p), rel=1e-12)
    p, r, _ = sk.precision_recall_curve(1 - y, -s)
    assert calibkit.aupr_out(s_in, s_out, aupr="trapezoid", backend=backend) == pytest.approx(sk.auc(r, p),
                                                                                               rel=1e-12)
    assert calibkit.aupr(s_in, s_out, positive="out", backend=backend) == calibkit.aupr_out(s_in, s_out)
    # AUROC and the detection error do not depend on the positive side
    m_in = calibkit.ood_metrics(s_in, s_out, backend=backend)
    m_out = calibkit.ood_metrics(s_in, s_out, positive="out", backend=backend)
    assert m_out.auroc == m_in.auroc and m_out.detection_error == m_in.detection_error
    assert m_out.aupr_in == m_in.aupr_in and m_out.aupr_out == m_in.aupr_out
    assert calibkit.auroc(s_in, s_out, positive="out", backend=backend) == m_in.auroc


@pytest.mark.parametrize("max_fpr", (0.01, 0.1, 0.37, 0.5, 0.99, 1.0))
@pytest.mark.parametrize("ties", (False, True))
def test_partial_auroc_matches_sklearn(backend, max_fpr, ties):
    rng = np.random.default_rng(6)
    s_in, s_out = rng.normal(size=400), rng.normal(size=300) - 0.6
    if ties:
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    y = np.r_[np.ones(400), np.zeros(300)]
    s = np.r_[s_in, s_out]
    got = calibkit.auroc(s_in, s_out, max_fpr=max_fpr, backend=backend)
    assert got == pytest.approx(sk.roc_auc_score(y, s, max_fpr=max_fpr), rel=1e-12)
    got = calibkit.auroc(s_in, s_out, max_fpr=max_fpr, positive="out", backend=backend)
    assert got == pytest.approx(sk.roc_auc_score(1 - y, -s, max_fpr=max_fpr), rel=1e-12)


@pytest.mark.parametrize("ties", (False, True))
def test_sample_weight_matches_sklearn(backend, ties):
    rng = np.random.default_rng(7)
    s_in, s_out = rng.normal(size=600), rng.normal(size=450) - 0.5
    if ties:
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    w_in, w_out = rng.exponential(size=600), rng.exponential(size=450)
    w_in[::7] = 0.0  # zero weights are dropped, as scikit-learn does
    y = np.r_[np.ones(600), np.zeros(450)]
    s, w = np.r_[s_in, s_out], np.r_[w_in, w_out]
    kw = dict(sample_weight_in=w_in, sample_weight_out=w_out, backend=backend)
    m = calibkit.ood_metrics(s_in, s_out, **kw)
    assert m.auroc == pytest.approx(sk.roc_auc_score(y, s, sample_weight=w), rel=1e-12)
    assert m.aupr_in == pytest.approx(sk.average_precision_score(y, s, sample_weight=w), rel=1e-12)
    assert m.aupr_out == pytest.approx(sk.average_precision_score(1 - y, -s, sample_weight=w), rel=1e-12)
    fpr, tpr, _ = sk.roc_curve(y, s, sample_weight=w, drop_intermediate=False)
    assert m.fpr_at_tpr == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], rel=1e-12)
    assert m.detection_error == pytest.approx(np.min(0.5 * (1 - tpr) + 0.5 * fpr), rel=1e-12)
    assert calibkit.auroc(s_in, s_out, max_fpr=0.2, **kw) == pytest.approx(
        sk.roc_auc_score(y, s, sample_weight=w, max_fpr=0.2), rel=1e-12)
    p, r, _ = sk.precision_recall_curve(1 - y, -s, sample_weight=w)
    assert calibkit.aupr_out(s_in, s_out, aupr="trapezoid", **kw) == pytest.approx(sk.auc(r, p), rel=1e-12)
    # weights of one side only; unit weights give the unweighted metrics
    assert calibkit.auroc(s_in, s_out, sample_weight_out=w_out, backend=backend) == pytest.approx(
        sk.roc_auc_score(y, s, sample_weight=np.r_[np.ones(600), w_out]), rel=1e-12)
    ones = calibkit.ood_metrics(s_in, s_out, sample_weight_in=np.ones(600), backend=backend)
    plain = calibkit.ood_metrics(s_in, s_out, backend=backend)
    for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "detection_error"):
        assert getattr(ones, name) == pytest.approx(getattr(plain, name), rel=1e-12), name
    # the scale of the weights does not matter, even at the ends of the float64 range
    big = calibkit.ood_metrics(s_in, s_out, sample_weight_in=w_in * 1e300, sample_weight_out=w_out * 1e300)
    assert big.auroc == pytest.approx(m.auroc, rel=1e-12) and big.aupr_in == pytest.approx(m.aupr_in, rel=1e-12)


def test_no_negatives_as_sklearn():
    """An all-positive set: AUPR 1.0 in both rules, as scikit-learn gives."""
    s = np.array([0.3, 0.5, 0.5, 0.9])
    assert sk.average_precision_score(np.ones(4), s) == 1.0
    for rule in ("average_precision", "trapezoid"):
        assert calibkit.aupr_in(s, [], aupr=rule) == 1.0
        assert calibkit.aupr_out([], s, aupr=rule) == 1.0
        assert calibkit.aupr(s, np.empty(0), aupr=rule, sample_weight_in=[1, 2, 3, 4]) == 1.0


def test_defaults_unchanged(backend):
    rng = np.random.default_rng(8)
    s_in, s_out = rng.normal(size=300), rng.normal(size=200)
    m = calibkit.ood_metrics(s_in, s_out, backend=backend)
    assert (m.positive, m.aupr_rule, m.convention) == ("in", "average_precision", "calibkit")
    assert calibkit.ood_metrics(s_in, s_out, positive="in", aupr="average_precision", backend=backend) == m
    assert calibkit.auroc(s_in, s_out, max_fpr=1.0, backend=backend) == m.auroc


@pytest.mark.parametrize("call, exc, match", [
    (lambda: calibkit.ood_metrics([0.1], [0.2], positive="ood"), ValueError, r"positive must be one of \('in', 'out'\), got 'ood'"),
    (lambda: calibkit.ood_metrics([0.1], [0.2], aupr="auc"), ValueError, r"aupr must be one of \('average_precision', 'trapezoid'\), got 'auc'"),
    (lambda: calibkit.ood_metrics([0.1], [0.2], convention="x"), ValueError, r"convention must be one of"),
    (lambda: calibkit.ood_metrics([0.1], [0.2], convention="openood", positive="in"), ValueError,
     r"convention='openood' uses positive='out'; got positive='in'"),
    (lambda: calibkit.ood_metrics([0.1], [0.2], convention="openood", aupr="average_precision"), ValueError,
     r"convention='openood' uses aupr='trapezoid'"),
    (lambda: calibkit.auroc([0.1], [0.2], max_fpr=0.0), ValueError, r"max_fpr must be None or a number in \(0, 1\]"),
    (lambda: calibkit.auroc([0.1], [0.2], max_fpr=1.5), ValueError, r"max_fpr must be None or a number in \(0, 1\]"),
    (lambda: calibkit.auroc([0.1], [0.2], positive=1), ValueError, r"positive must be one of"),
    (lambda: calibkit.auroc([0.1, 0.3], [0.2], sample_weight_in=[1.0]), ValueError,
     r"sample_weight_in must have shape \(2,\) \(one weight per score\), got shape \(1,\)"),
    (lambda: calibkit.auroc([0.1, 0.3], [0.2], sample_weight_in=[1.0, np.nan]), ValueError,
     r"sample_weight_in\[1\] = nan is not finite"),
    (lambda: calibkit.auroc([0.1], [0.2, 0.3], sample_weight_out=[1.0, -2.0]), ValueError,
     r"sample_weight_out\[1\] = -2.0 is negative"),
    (lambda: calibkit.auroc([0.1], [0.2, 0.3], sample_weight_out=[0.0, 0.0]), ValueError,
     r"sample_weight_out sums to 0"),
    (lambda: calibkit.auroc([0.1], [0.2], sample_weight_out=["a"]), TypeError, r"sample_weight_out must be numbers"),
    (lambda: calibkit.auroc([0.1, np.inf], [0.2], sample_weight_out=[1.0]), ValueError,
     r"scores_in\[1\] = inf is not finite"),
    (lambda: calibkit.auroc([0.1], [0.2, np.nan], positive="out"), ValueError, r"scores_out\[1\] = nan is not finite"),
    (lambda: calibkit.aupr([0.1], [], positive="out"), ValueError, "scores_out is empty"),
    (lambda: calibkit.aupr([], [0.1]), ValueError, "scores_in is empty"),
    (lambda: calibkit.aupr([0.1, np.nan], []), ValueError, r"scores_in\[1\] = nan is not finite"),
    (lambda: calibkit.aupr_in([0.1], [], sample_weight_in=[0.0]), ValueError, "sample_weight_in sums to 0"),
    (lambda: calibkit.aupr_in([0.1], [], sample_weight_out=[1.0]), ValueError,
     r"sample_weight_out must have shape \(0,\)"),
    (lambda: calibkit.fpr_at_tpr([0.1], []), ValueError, "scores_out is empty"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_weights_in_subprocess():
    """Huge, subnormal and mismatched weights never crash the process."""
    code = (
        "import numpy as np, calibkit\n"
        "s = np.linspace(0, 1, 50)\n"
        "print(calibkit.auroc(s, s[::-1] - 0.1, sample_weight_in=np.full(50, 1e308), sample_weight_out=np.full(50, 1e-10)))\n"
        "try:\n"
        "    calibkit.auroc(s, s, sample_weight_in=np.full(50, 1e308), sample_weight_out=np.full(50, 5e-324))\n"
        "except ValueError as e:\n"
        "    print('ERR', e)\n"
        "try:\n"
        "    calibkit.auroc(s, s, sample_weight_in=np.ones((50, 1)))\n"
        "except ValueError as e:\n"
        "    print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    value, tiny, err = r.stdout.splitlines()
    assert 0.0 <= float(value) <= 1.0
    assert tiny.startswith("ERR sample_weight_out is too small next to the other side's weights")
    assert err.startswith("ERR sample_weight_in must have shape (50,)")


def test_thread_invariant_and_backends_agree(threads):
    rng = np.random.default_rng(9)
    s_in = np.round(rng.normal(size=300_001), 2)[::3]  # strided, with ties
    s_out = np.round(rng.normal(size=70_000) - 0.5, 2).astype(np.float32)
    results = []
    for n_threads in (1, 2, 3):
        calibkit.set_num_threads(n_threads)
        results.append((calibkit.ood_metrics(s_in, s_out, convention="openood"),
                        calibkit.auroc(s_in, s_out, max_fpr=0.1, positive="out"),
                        calibkit.ood_metrics(s_in, s_out, aupr="trapezoid", positive="out")))
    assert results[0] == results[1] == results[2]
    numba = (calibkit.ood_metrics(s_in, s_out, convention="openood", backend="numba"),
             calibkit.auroc(s_in, s_out, max_fpr=0.1, positive="out", backend="numba"),
             calibkit.ood_metrics(s_in, s_out, aupr="trapezoid", positive="out", backend="numba"))
    assert numba[0].fpr_at_tpr == results[0][0].fpr_at_tpr and numba[2].fpr_at_tpr == results[0][2].fpr_at_tpr
    assert numba[1] == pytest.approx(results[0][1], rel=1e-12)
    for name in ("auroc", "aupr_in", "aupr_out", "detection_error"):
        assert getattr(numba[0], name) == pytest.approx(getattr(results[0][0], name), rel=1e-12)


@pytest.mark.parametrize("s_in, s_out", [
    ([0.5], [0.5]),                                    # one sample each, tied
    ([1.0, 1.0, 1.0], [1.0, 1.0]),                     # every score equal
    ([1e308, -1e308, 5e-324], [-5e-324, 0.0, -0.0]),   # extremes, subnormals, signed zeros
    ([3.0], [1.0, 2.0, 3.0, 4.0]),                     # one positive among ties
    (np.r_[np.zeros(50), np.ones(50)], np.r_[np.zeros(3), np.ones(97)]),
])
def test_openood_adversarial(backend, s_in, s_out):
    s_in, s_out = np.asarray(s_in, dtype=np.float64), np.asarray(s_out, dtype=np.float64)
    check_openood(s_in, s_out, backend)
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    for max_fpr in (0.3, 1.0):
        assert calibkit.auroc(s_in, s_out, max_fpr=max_fpr, backend=backend) == pytest.approx(
            sk.roc_auc_score(y, s, max_fpr=max_fpr), rel=1e-12)
    w = np.linspace(0.5, 2.0, len(s))
    m = calibkit.ood_metrics(s_in, s_out, sample_weight_in=w[:len(s_in)], sample_weight_out=w[len(s_in):],
                             backend=backend)
    assert m.auroc == pytest.approx(sk.roc_auc_score(y, s, sample_weight=w), rel=1e-12)
    assert m.aupr_in == pytest.approx(sk.average_precision_score(y, s, sample_weight=w), rel=1e-12)
