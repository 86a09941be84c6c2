"""OOD-detection and selective-prediction metrics: scikit-learn, NumPy references, streaming bounds."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import calibkit
from calibkit import ood
from conftest import load_real

sk_metrics = pytest.importorskip("sklearn.metrics")

DTYPES = (np.float16, np.float32, np.float64)


def sklearn_ood(s_in, s_out, tpr=0.95):
    """The same metrics from scikit-learn's curves (in-distribution = positive class)."""
    s_in = np.asarray(s_in, dtype=np.float64)
    s_out = np.asarray(s_out, dtype=np.float64)
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr_curve, _ = sk_metrics.roc_curve(y, s, drop_intermediate=False)
    return dict(
        auroc=sk_metrics.roc_auc_score(y, s),
        aupr_in=sk_metrics.average_precision_score(y, s),
        aupr_out=sk_metrics.average_precision_score(1 - y, -s),
        fpr_at_tpr=fpr[np.searchsorted(tpr_curve, tpr, side="left")],
        detection_error=np.min(0.5 * (1 - tpr_curve) + 0.5 * fpr),
    )


def check_against_sklearn(m, s_in, s_out, tpr=0.95):
    want = sklearn_ood(s_in, s_out, tpr)
    for name, value in want.items():
        assert getattr(m, name) == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", (False, True))
def test_ood_metrics_match_sklearn(backend, dtype, ties):
    rng = np.random.default_rng(1)
    s_in = rng.normal(size=3000)
    s_out = rng.normal(size=2000) - 0.8
    if ties:
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    s_in, s_out = s_in.astype(dtype), s_out.astype(dtype)
    m = calibkit.ood_metrics(s_in, s_out, backend=backend)
    check_against_sklearn(m, s_in, s_out)
    assert calibkit.auroc(s_in, s_out, backend=backend) == m.auroc
    assert calibkit.aupr_in(s_in, s_out, backend=backend) == m.aupr_in
    assert calibkit.aupr_out(s_in, s_out, backend=backend) == m.aupr_out
    assert calibkit.fpr_at_tpr(s_in, s_out, backend=backend) == m.fpr_at_tpr
    assert calibkit.detection_error(s_in, s_out, backend=backend) == m.detection_error


@pytest.mark.parametrize("tpr", (0.0, 0.5, 0.8, 0.95, 0.99, 1.0))
def test_fpr_at_any_tpr(backend, tpr):
    rng = np.random.default_rng(2)
    s_in, s_out = rng.normal(size=500), rng.normal(size=700) - 1
    m = calibkit.ood_metrics(s_in, s_out, tpr=tpr, backend=backend)
    check_against_sklearn(m, s_in, s_out, tpr)
    # exact levels: 19 of 20 positives is TPR 0.95 exactly
    s_in = np.arange(20.0)
    s_out = np.array([0.5, 5.5, 10.5])
    assert calibkit.fpr_at_tpr(s_in, s_out, tpr=0.95, backend=backend) == pytest.approx(
        sklearn_ood(s_in, s_out, 0.95)["fpr_at_tpr"])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-5, 5), min_size=1, max_size=40), st.lists(st.integers(-5, 5), min_size=1, max_size=40))
def test_ood_metrics_match_sklearn_with_many_ties(s_in, s_out):
    s_in = np.array(s_in, dtype=np.float64) / 2
    s_out = np.array(s_out, dtype=np.float64) / 2
    for backend in ("cpp", "numba"):
        check_against_sklearn(calibkit.ood_metrics(s_in, s_out, backend=backend), s_in, s_out)


def test_separable_and_identical_distributions(backend):
    m = calibkit.ood_metrics([3.0, 4.0, 5.0], [0.0, 1.0], backend=backend)
    assert (m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_tpr, m.detection_error) == (1.0, 1.0, 1.0, 0.0, 0.0)
    m = calibkit.ood_metrics([0.0, 1.0], [3.0, 4.0, 5.0], backend=backend)
    assert m.auroc == 0.0 and m.fpr_at_tpr == 1.0 and m.detection_error == 0.5
    m = calibkit.ood_metrics(np.ones(10), np.ones(30), backend=backend)
    assert m.auroc == 0.5 and m.aupr_in == 0.25 and m.aupr_out == 0.75 and m.detection_error == 0.5
    # -0.0 and +0.0 are the same score
    assert calibkit.auroc([0.0], [-0.0], backend=backend) == 0.5


def test_ranking_thread_invariant_and_backends_agree(threads):
    rng = np.random.default_rng(3)
    s_in = rng.normal(size=300_000).astype(np.float32)
    s_out = (rng.normal(size=200_000) - 0.3).astype(np.float32)
    calibkit.set_num_threads(1)
    a = calibkit.ood_metrics(s_in, s_out)
    calibkit.set_num_threads(2)
    b = calibkit.ood_metrics(s_in, s_out)
    c = calibkit.ood_metrics(s_in, s_out, backend="numba")
    assert a == b
    for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "detection_error"):
        assert getattr(a, name) == pytest.approx(getattr(c, name), abs=1e-12)
    check_against_sklearn(a, s_in, s_out)


def test_real_data_in_vs_out_of_distribution():
    """CIFAR-10 test logits as in-distribution, CIFAR-100 test logits (another dataset) as out-of-distribution."""
    cifar10 = load_real("focal_cifar10_resnet110_brier.npz")["test_logits"]
    cifar100 = load_real("focal_cifar100_resnet110_brier.npz")["test_logits"]
    s_in = calibkit.max_probability(cifar10, from_logits=True)
    s_out = calibkit.max_probability(cifar100, from_logits=True)
    m = calibkit.ood_metrics(s_in, s_out)
    check_against_sklearn(m, s_in, s_out)
    assert 0.6 < m.auroc < 0.99
    assert m.fpr_at_tpr < 1.0 and m.detection_error < 0.4
    # the two files come from two models: scores whose scale depends on K or on the logit scale (energy,
    # unnormalised entropy) do not compare across them; the maximum probability does.


@pytest.mark.parametrize("call, exc, match", [
    (lambda b: calibkit.auroc([0.1, np.nan], [0.2], backend=b), ValueError, r"scores_in\[1\] = nan is not finite"),
    (lambda b: calibkit.auroc([0.1], [0.2, 0.3, np.inf], backend=b), ValueError, r"scores_out\[2\] = inf"),
    (lambda b: calibkit.auroc([], [0.2], backend=b), ValueError, "scores_in is empty"),
    (lambda b: calibkit.auroc([0.1], [], backend=b), ValueError, "scores_out is empty"),
    (lambda b: calibkit.auroc(np.ones((3, 2)), [0.2], backend=b), ValueError, r"scores_in must have shape \(N,\)"),
    (lambda b: calibkit.auroc(["a"], [0.2], backend=b), TypeError, "scores_in must be an array of floats"),
    (lambda b: calibkit.fpr_at_tpr([0.1], [0.2], tpr=1.5, backend=b), ValueError, r"tpr must be a number in \[0, 1\]"),
    (lambda b: calibkit.aurc([0.1, 0.2], [True], backend=b), ValueError, "correct has 1 entries"),
    (lambda b: calibkit.aurc([0.1, 0.2], [1, 2], backend=b), ValueError, r"correct\[1\] = 2 is not 0/1"),
    (lambda b: calibkit.aurc([0.1, np.nan], [1, 0], backend=b), ValueError, r"confidence\[\d\] = nan"),
    (lambda b: calibkit.aurc([], [], backend=b), ValueError, "confidence is empty"),
])
def test_bad_input(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call(backend)


# -- selective prediction ---------------------------------------------------------------------------------------

def ref_risk_coverage(conf, correct):
    """Plain loops: accept the distinct confidences from the highest down."""
    n = len(conf)
    cov, risk, thr = [], [], []
    for t in sorted(set(conf.tolist()), reverse=True):
        accepted = conf >= t
        cov.append(accepted.sum() / n)
        risk.append((~correct[accepted]).sum() / accepted.sum())
        thr.append(t)
    return np.array(cov), np.array(risk), np.array(thr)


def ref_aurc(conf, correct):
    cov, risk, _ = ref_risk_coverage(conf, correct)
    widths = np.diff(np.r_[0.0, cov])
    return float(np.sum(widths * risk))


@pytest.mark.parametrize("ties", (False, True))
def test_risk_coverage_matches_reference(backend, ties):
    rng = np.random.default_rng(4)
    conf = rng.uniform(size=400)
    if ties:
        conf = np.round(conf, 1)
    correct = rng.uniform(size=400) < conf
    c = calibkit.risk_coverage_curve(conf, correct, backend=backend)
    cov, risk, thr = ref_risk_coverage(conf, correct)
    np.testing.assert_allclose(c.coverage, cov, rtol=1e-15)
    np.testing.assert_allclose(c.risk, risk, rtol=1e-15)
    np.testing.assert_array_equal(c.thresholds, thr)
    assert calibkit.aurc(conf, correct, backend=backend) == pytest.approx(ref_aurc(conf, correct), abs=1e-14)


def test_aurc_without_ties_is_geifmans_sum(backend):
    rng = np.random.default_rng(5)
    conf = rng.uniform(size=1000)
    correct = rng.uniform(size=1000) < conf
    order = np.argsort(-conf)
    geifman = np.mean(np.cumsum(~correct[order]) / np.arange(1, 1001))
    assert calibkit.aurc(conf, correct, backend=backend) == pytest.approx(geifman, abs=1e-14)


def test_e_aurc(backend):
    rng = np.random.default_rng(6)
    correct = rng.uniform(size=2000) < 0.8
    perfect = correct + rng.uniform(0, 0.5, size=2000)  # every correct one above every error
    assert calibkit.e_aurc(perfect, correct, backend=backend) == pytest.approx(0.0, abs=1e-14)
    worst = -perfect
    assert calibkit.e_aurc(worst, correct, backend=backend) > 0.3
    # the optimum equals the AURC of the perfect ranking, and tends to r + (1 - r) log(1 - r)
    r = 1 - correct.mean()
    assert calibkit.aurc(perfect, correct, backend=backend) == pytest.approx(r + (1 - r) * np.log(1 - r), abs=2e-3)
    # all correct / all wrong
    assert calibkit.aurc([0.3, 0.9], [True, True], backend=backend) == 0.0
    assert calibkit.e_aurc([0.3, 0.9], [True, True], backend=backend) == 0.0
    assert calibkit.aurc([0.3, 0.9], [False, False], backend=backend) == 1.0
    assert calibkit.e_aurc([0.3, 0.9], [0, 0], backend=backend) == pytest.approx(0.0, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=1, max_size=50), st.integers(0, 2 ** 31))
def test_aurc_properties(pairs, seed):
    conf = np.array([p[0] for p in pairs], dtype=np.float64)
    correct = np.array([p[1] for p in pairs])
    a = calibkit.aurc(conf, correct)
    assert a == pytest.approx(ref_aurc(conf, correct), abs=1e-14)
    perm = np.random.default_rng(seed).permutation(len(conf))
    assert calibkit.aurc(conf[perm], correct[perm]) == pytest.approx(a, abs=1e-15)
    assert calibkit.aurc(conf, correct, backend="numba") == pytest.approx(a, abs=1e-15)
    assert calibkit.e_aurc(conf, correct) >= -1e-12


# -- streaming --------------------------------------------------------------------------------------------------

def assert_within_bounds(acc, s_in, s_out, tpr=0.95):
    exact = calibkit.ood_metrics(s_in, s_out, tpr=tpr)
    approx, bounds = acc.compute(tpr=tpr), acc.bounds(tpr=tpr)
    for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "detection_error"):
        err = abs(getattr(approx, name) - getattr(exact, name))
        assert err <= getattr(bounds, name) + 1e-12, (name, err, getattr(bounds, name))


@pytest.mark.parametrize("bits", (2, 5, 8, 12))
def test_streaming_error_bounds_hold(bits):
    rng = np.random.default_rng(bits)
    s_in, s_out = rng.normal(size=5000), rng.normal(size=4000) - 0.7
    acc = calibkit.OODAccumulator(precision_bits=bits)
    for i in range(0, 5000, 700):
        acc.update(s_in[i:i + 700], s_out[i:i + 700] if i < 4000 else None)
    assert acc.count_in == 5000 and acc.count_out == 4000
    for tpr in (0.5, 0.95):
        assert_within_bounds(acc, s_in, s_out, tpr)
    # finer buckets, tighter bounds
    if bits == 12:
        assert acc.bounds().auroc < 1e-3


def test_streaming_is_exact_when_no_bucket_mixes_values():
    rng = np.random.default_rng(7)
    s_in = rng.integers(0, 50, 3000).astype(np.float64)
    s_out = rng.integers(-20, 30, 2000).astype(np.float64)
    acc = calibkit.OODAccumulator(precision_bits=12).update(s_in, s_out)
    exact = calibkit.ood_metrics(s_in, s_out)
    got = acc.compute()
    for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_tpr", "detection_error"):
        assert getattr(got, name) == pytest.approx(getattr(exact, name), abs=1e-12), name


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
       st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=60),
       st.integers(1, 10), st.integers(1, 5), st.floats(0.0, 1.0))
def test_streaming_bounds_and_merge_properties(s_in, s_out, bits, n_parts, tpr):
    s_in, s_out = np.array(s_in), np.array(s_out)
    one = calibkit.OODAccumulator(precision_bits=bits).update(s_in, s_out)
    assert_within_bounds(one, s_in, s_out, tpr)
    parts = [calibkit.OODAccumulator(precision_bits=bits) for _ in range(n_parts)]
    for j, chunk in enumerate(np.array_split(s_in, n_parts)):
        if chunk.size:
            parts[j].update(scores_in=chunk)
    for j, chunk in enumerate(np.array_split(s_out, n_parts)):
        if chunk.size:
            parts[(j + 1) % n_parts].update(scores_out=chunk)
    merged = parts[0].copy()
    for p in parts[1:]:
        merged += p
    assert merged.compute(tpr=tpr) == one.compute(tpr=tpr)
    assert merged.to_bytes() == one.to_bytes()


def test_streaming_persistence():
    rng = np.random.default_rng(8)
    acc = calibkit.OODAccumulator(precision_bits=9).update(rng.normal(size=1000), rng.normal(size=800))
    blob = acc.to_bytes()
    back = calibkit.OODAccumulator.from_bytes(blob)
    assert back.compute() == acc.compute() and back.precision_bits == 9
    assert pickle.loads(pickle.dumps(acc)).compute() == acc.compute()
    from calibkit.streaming import load_state

    assert load_state(blob).compute() == acc.compute()
    # corruption anywhere is a ValueError, never a crash or a silent wrong state
    for i in range(0, len(blob), max(1, len(blob) // 50)):
        bad = bytearray(blob)
        bad[i] ^= 0x40
        with pytest.raises(ValueError):
            calibkit.OODAccumulator.from_bytes(bytes(bad))
    for cut in (0, 10, len(blob) // 2, len(blob) - 1):
        with pytest.raises(ValueError):
            calibkit.OODAccumulator.from_bytes(blob[:cut])
    with pytest.raises(ValueError, match="not an OODAccumulator"):
        calibkit.OODAccumulator.from_bytes(calibkit.CalibrationAccumulator().to_bytes())


def test_streaming_bad_input():
    acc = calibkit.OODAccumulator()
    with pytest.raises(ValueError, match=r"scores_out\[1\] = nan"):
        acc.update([0.1], [0.2, np.nan])
    assert acc.count_in == 0  # nothing was added: both sides are checked first
    with pytest.raises(ValueError, match="both in- and out-of-distribution scores are needed"):
        acc.update([0.3]).compute()
    with pytest.raises(ValueError, match="precision_bits"):
        calibkit.OODAccumulator(precision_bits=0)
    with pytest.raises(ValueError, match="cannot merge"):
        calibkit.OODAccumulator(precision_bits=4).merge(calibkit.OODAccumulator(precision_bits=5))
    with pytest.raises(TypeError, match="can only merge"):
        acc.merge(calibkit.CalibrationAccumulator())


def test_module_layout():
    assert ood.auroc is calibkit.auroc
    assert "OODAccumulator" in calibkit.__all__ and "decompose" in calibkit.__all__
