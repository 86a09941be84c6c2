"""Metrics against the plain NumPy reference, on both backends, random and adversarial data."""

import numpy as np
import pytest

import calibkit
from calibkit import metrics

import reference as ref
from conftest import labels_from, load_real, random_probs
from subprocess_cases import simd_clone_outputs

NORMS = ("l1", "l2", "max")


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("weighted", [False, True])
def test_top_label_probabilities_match_reference(backend, strategy, norm, weighted):
    rng = np.random.default_rng(1)
    probs = random_probs(rng, 3000, 7)
    y = labels_from(rng, probs)
    w = rng.random(3000) * 2 if weighted else None
    got = calibkit.calibration_error(probs, y, n_bins=12, strategy=strategy, norm=norm, sample_weight=w,
                                     backend=backend)
    want = ref.calibration_error(probs, y, 12, strategy, norm, sample_weight=w)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("norm", NORMS)
def test_top_label_logits_match_reference(backend, strategy, norm):
    rng = np.random.default_rng(2)
    logits = rng.normal(scale=3.0, size=(2000, 13))
    y = rng.integers(0, 13, 2000)
    got = calibkit.calibration_error(logits, y, strategy=strategy, norm=norm, from_logits=True, backend=backend)
    want = ref.calibration_error(logits, y, 15, strategy, norm, from_logits=True)
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_scores_match_reference(backend, strategy, from_logits):
    rng = np.random.default_rng(3)
    p = rng.random(5000)
    y = (rng.random(5000) < p**1.5).astype(np.int64)
    scores = np.log(p / (1 - p)) if from_logits else p
    for norm in NORMS:
        got = calibkit.calibration_error(scores, y, n_bins=10, strategy=strategy, norm=norm,
                                         from_logits=from_logits, backend=backend)
        want = ref.calibration_error(scores, y, 10, strategy, norm, from_logits=from_logits)
        assert got == pytest.approx(want, rel=1e-10), norm


def test_ece_and_mce_are_the_l1_and_max_forms(backend):
    rng = np.random.default_rng(4)
    probs = random_probs(rng, 1000, 4)
    y = labels_from(rng, probs)
    kw = dict(n_bins=8, backend=backend)
    assert calibkit.ece(probs, y, **kw) == calibkit.calibration_error(probs, y, norm="l1", **kw)
    assert calibkit.mce(probs, y, **kw) == calibkit.calibration_error(probs, y, norm="max", **kw)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("from_logits", [False, True])
def test_classwise_matches_reference(backend, norm, from_logits):
    rng = np.random.default_rng(5)
    if from_logits:
        scores = rng.normal(size=(1500, 6)) * 2
    else:
        scores = random_probs(rng, 1500, 6)
    y = rng.integers(0, 6, 1500)
    w = rng.random(1500)
    got = calibkit.classwise_calibration_error(scores, y, n_bins=10, norm=norm, from_logits=from_logits,
                                               sample_weight=w, backend=backend)
    want = ref.classwise_calibration_error(scores, y, 10, norm, from_logits=from_logits, sample_weight=w)
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_brier_and_nll_match_reference(backend, from_logits, weighted):
    rng = np.random.default_rng(6)
    scores = rng.normal(size=(2000, 9)) * 2 if from_logits else random_probs(rng, 2000, 9)
    y = rng.integers(0, 9, 2000)
    w = rng.random(2000) if weighted else None
    kw = dict(from_logits=from_logits, sample_weight=w, backend=backend)
    assert calibkit.brier_score(scores, y, **kw) == pytest.approx(ref.brier_score(scores, y, from_logits, w),
                                                                  rel=1e-12)
    assert calibkit.nll(scores, y, **kw) == pytest.approx(ref.nll(scores, y, from_logits, w), rel=1e-12)


def test_binary_brier_and_nll_match_reference(backend):
    rng = np.random.default_rng(7)
    p = rng.random(3000)
    p[:5] = [0.0, 1.0, 0.0, 1.0, 0.5]
    y = (rng.random(3000) < p).astype(np.int64)
    y[:4] = [0, 1, 1, 0]  # two certain mistakes: the clip decides the NLL
    assert calibkit.brier_score(p, y, backend=backend) == pytest.approx(ref.brier_score(p, y), rel=1e-12)
    assert calibkit.nll(p, y, backend=backend) == pytest.approx(ref.nll(p, y), rel=1e-12)


def test_reliability_table_matches_reference(backend):
    rng = np.random.default_rng(8)
    probs = random_probs(rng, 4000, 5)
    y = labels_from(rng, probs)
    t = calibkit.reliability_table(probs, y, n_bins=10, backend=backend)
    conf, pred = ref.top_label(probs)
    count, weight, sc, st = ref.binned(conf, (pred == y).astype(float), ref.equal_width_edges(10))
    np.testing.assert_array_equal(t.count, count)
    np.testing.assert_allclose(t.weight, weight, rtol=0)
    filled = weight > 0
    np.testing.assert_allclose(t.mean_confidence[filled], sc[filled] / weight[filled], rtol=1e-12)
    np.testing.assert_allclose(t.accuracy[filled], st[filled] / weight[filled], rtol=1e-12)
    assert np.isnan(t.gap[~filled]).all()
    np.testing.assert_allclose(t.gap, t.accuracy - t.mean_confidence)
    np.testing.assert_allclose(t.lower, np.arange(10) / 10)
    np.testing.assert_allclose(t.upper, np.arange(1, 11) / 10)
    errs = ref.errors(weight, sc, st)
    assert t.ece == pytest.approx(errs["l1"], rel=1e-12)
    assert t.mce == pytest.approx(errs["max"], rel=1e-12)
    assert t.rmsce == pytest.approx(errs["l2"], rel=1e-12)
    assert t.accuracy_overall == pytest.approx(np.mean(pred == y), rel=1e-12)
    assert t.mean_confidence_overall == pytest.approx(conf.mean(), rel=1e-12)
    text = repr(t)
    assert "ECE=" in text and text.count("\n") == 11
    assert t.to_dict()["count"] == count.tolist()


# ---------------------------------------------------------------------------
# Adversarial data
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [1, 2, 3, 5, 7, 10, 15, 100])
def test_confidences_exactly_on_bin_edges(backend, n_bins):
    # Every edge m/M (correctly rounded), 0 and 1: bin m holds ((m-1)/M, m/M].
    edges = np.array([m / n_bins for m in range(n_bins + 1)])
    p = np.repeat(edges, 3)
    y = np.tile([0, 1, 1], n_bins + 1)
    t = calibkit.reliability_table(p, y, n_bins=n_bins, backend=backend)
    want_count, _, _, _ = ref.binned(p, y, edges)
    np.testing.assert_array_equal(t.count, want_count)
    # 0 and 1/M share the first bin; every other edge m/M is alone in bin m.
    assert t.count[0] == 6 and (t.count[1:] == 3).all()
    for norm in NORMS:
        assert calibkit.calibration_error(p, y, n_bins=n_bins, norm=norm, backend=backend) == pytest.approx(
            ref.calibration_error(p, y, n_bins, "uniform", norm), rel=1e-12)


def test_top_label_confidences_on_edges(backend):
    # Two-class rows whose top probability is exactly k/10 for k = 5..10.
    tops = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    probs = np.stack([tops, 1 - tops], axis=1)
    y = np.array([0, 1, 0, 0, 1, 0])
    t = calibkit.reliability_table(probs, y, n_bins=10, backend=backend)
    np.testing.assert_array_equal(t.count, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert calibkit.ece(probs, y, n_bins=10, backend=backend) == pytest.approx(
        ref.calibration_error(probs, y, 10), rel=1e-12)


def test_ties_go_to_the_first_index(backend):
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.3, 0.3]])
    t = calibkit.reliability_table(probs, [0, 1, 0], n_bins=2, backend=backend)
    # argmax is class 0 on every row: rows 0 and 2 are correct, row 1 is not.
    assert t.accuracy_overall == pytest.approx(2 / 3)


def test_all_correct_all_wrong_and_one_class(backend):
    rng = np.random.default_rng(9)
    probs = random_probs(rng, 500, 4)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    assert calibkit.ece(probs, pred, backend=backend) == pytest.approx(1 - conf.mean(), rel=1e-12)
    wrong = (pred + 1) % 4
    assert calibkit.ece(probs, wrong, backend=backend) == pytest.approx(conf.mean(), rel=1e-12)
    one_class = np.zeros(500, dtype=np.int64)
    for norm in NORMS:
        assert calibkit.calibration_error(probs, one_class, norm=norm, backend=backend) == pytest.approx(
            ref.calibration_error(probs, one_class, norm=norm), rel=1e-12)
        assert calibkit.classwise_calibration_error(probs, one_class, norm=norm, backend=backend) == pytest.approx(
            ref.classwise_calibration_error(probs, one_class, norm=norm), rel=1e-12)


def test_perfect_calibration_one_hot(backend):
    y = np.arange(20) % 5
    probs = np.eye(5)[y]
    for norm in NORMS:
        assert calibkit.calibration_error(probs, y, norm=norm, backend=backend) == 0.0
    assert calibkit.brier_score(probs, y, backend=backend) == 0.0
    assert calibkit.nll(probs, y, backend=backend) == 0.0


def test_probability_zero_for_the_true_class_is_clipped(backend):
    probs = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    value = calibkit.nll(probs, [1, 0], backend=backend)
    eps = float(np.finfo(np.float32).eps)
    assert value == pytest.approx((-np.log(eps) + np.log(2)) / 2, rel=1e-12)
    assert np.isfinite(value)


def test_large_logits_are_stable(backend):
    z = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0], [3.0, 3.0, 3.0]])
    y = np.array([0, 0, 2])
    assert calibkit.nll(z, y, from_logits=True, backend=backend) == pytest.approx(
        (0.0 + 2e4 + np.log(3)) / 3, rel=1e-12)
    assert calibkit.brier_score(z, y, from_logits=True, backend=backend) == pytest.approx(
        ref.brier_score(z, y, from_logits=True), rel=1e-12)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_float16_inputs_read_exactly(backend, strategy):
    rng = np.random.default_rng(10)
    probs = random_probs(rng, 2000, 5, dtype=np.float16)
    y = labels_from(rng, probs)
    for norm in NORMS:
        got = calibkit.calibration_error(probs, y, strategy=strategy, norm=norm, backend=backend)
        want = ref.calibration_error(probs.astype(np.float64), y, 15, strategy, norm)
        assert got == pytest.approx(want, rel=1e-12)
    logits = rng.normal(size=(2000, 5)).astype(np.float16)
    assert calibkit.nll(logits, y, from_logits=True, backend=backend) == pytest.approx(
        ref.nll(logits.astype(np.float64), y, from_logits=True), rel=1e-12)


def test_quantile_bins_hold_equal_mass(backend):
    rng = np.random.default_rng(11)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(int)
    t = calibkit.reliability_table(p, y, n_bins=10, strategy="quantile", backend=backend)
    np.testing.assert_array_equal(t.count, np.full(10, 100))
    assert t.lower[0] == p.min() and t.upper[-1] == p.max()


def test_quantile_with_ties_skips_empty_bins(backend):
    p = np.array([0.2] * 50 + [0.9] * 50)
    y = np.array([0] * 40 + [1] * 10 + [1] * 45 + [0] * 5)
    t = calibkit.reliability_table(p, y, n_bins=4, strategy="quantile", backend=backend)
    assert t.count.sum() == 100
    assert calibkit.ece(p, y, n_bins=4, strategy="quantile", backend=backend) == pytest.approx(
        ref.calibration_error(p, y, 4, "quantile"), rel=1e-12)


def test_probabilities_within_tolerance_are_accepted(backend):
    probs = np.array([[1.0 + 5e-7, -5e-7], [0.3, 0.7]])
    assert np.isfinite(calibkit.ece(probs, [0, 1], backend=backend))


def test_zero_weights_are_ignored(backend):
    rng = np.random.default_rng(12)
    probs = random_probs(rng, 400, 3)
    y = labels_from(rng, probs)
    w = np.ones(400)
    w[::2] = 0
    for strategy in ("uniform", "quantile"):
        got = calibkit.ece(probs, y, strategy=strategy, sample_weight=w, backend=backend)
        assert got == pytest.approx(ref.calibration_error(probs, y, 15, strategy, sample_weight=w), rel=1e-12)
    assert calibkit.ece(probs, y, sample_weight=w, backend=backend) == pytest.approx(
        calibkit.ece(probs[1::2], y[1::2], backend=backend), rel=1e-12)


def test_integer_weights_equal_repeated_rows(backend):
    rng = np.random.default_rng(13)
    probs = random_probs(rng, 300, 4)
    y = labels_from(rng, probs)
    w = rng.integers(0, 4, 300)
    rep = np.repeat(np.arange(300), w)
    for fn in (calibkit.ece, calibkit.mce, calibkit.brier_score, calibkit.nll):
        assert fn(probs, y, sample_weight=w, backend=backend) == pytest.approx(
            fn(probs[rep], y[rep], backend=backend), rel=1e-12)


# ---------------------------------------------------------------------------
# Backends and threads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree_on_large_input(from_logits, dtype):
    rng = np.random.default_rng(14)
    n, k = 120_000, 10  # large enough for the parallel path
    scores = rng.normal(size=(n, k)).astype(dtype) if from_logits else random_probs(rng, n, k, dtype=dtype)
    y = rng.integers(0, k, n)
    w = rng.random(n)
    for fn in (calibkit.ece, calibkit.mce, calibkit.classwise_calibration_error, calibkit.brier_score,
               calibkit.nll):
        a = fn(scores, y, from_logits=from_logits, sample_weight=w, backend="cpp")
        b = fn(scores, y, from_logits=from_logits, sample_weight=w, backend="numba")
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), fn.__name__
    a = calibkit.ece(scores, y, strategy="quantile", from_logits=from_logits, backend="cpp")
    b = calibkit.ece(scores, y, strategy="quantile", from_logits=from_logits, backend="numba")
    assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
def test_bit_identical_for_any_thread_count(backend, threads, from_logits):
    rng = np.random.default_rng(15)
    n, k = 150_000, 8
    scores = rng.normal(size=(n, k)) if from_logits else random_probs(rng, n, k)
    y = rng.integers(0, k, n)
    results = []
    for t in (1, 2, 3):
        calibkit.set_num_threads(t)
        results.append([
            calibkit.ece(scores, y, from_logits=from_logits, backend=backend),
            calibkit.calibration_error(scores, y, norm="l2", strategy="quantile", from_logits=from_logits,
                                       backend=backend),
            calibkit.classwise_calibration_error(scores, y, from_logits=from_logits, backend=backend),
            calibkit.nll(scores, y, from_logits=from_logits, backend=backend),
            calibkit.brier_score(scores, y, from_logits=from_logits, backend=backend),
        ])
    assert results[0] == results[1] == results[2]  # exact, not approximate


def test_environment_variable_chooses_the_backend(monkeypatch):
    from calibkit import _backend

    monkeypatch.setenv("CALIBKIT_BACKEND", "numba")
    assert _backend.resolve_backend("auto") == "numba"
    monkeypatch.setenv("CALIBKIT_BACKEND", "cpp")
    assert _backend.resolve_backend("auto") == "cpp"
    assert _backend.resolve_backend("numba") == "numba"
    monkeypatch.setenv("CALIBKIT_BACKEND", "fortran")
    with pytest.raises(ValueError, match="CALIBKIT_BACKEND"):
        calibkit.ece(np.eye(2), [0, 1])


def test_num_threads_round_trip(threads):
    calibkit.set_num_threads(1)
    assert calibkit.get_num_threads() == 1
    calibkit.set_num_threads(2)
    assert calibkit.get_num_threads() == 2
    with pytest.raises(ValueError, match=r"n must be in \[1, 1024\], got 0"):
        calibkit.set_num_threads(0)
    with pytest.raises(TypeError):
        calibkit.set_num_threads(1.5)


def test_concurrent_calls_from_python_threads():
    # Numba's workqueue layer aborts on concurrent parallel kernels; the lock prevents it.
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(16)
    probs = random_probs(rng, 100_000, 10, dtype=np.float32)
    y = rng.integers(0, 10, 100_000)
    want = {b: calibkit.ece(probs, y, backend=b) for b in ("cpp", "numba")}
    with ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(calibkit.ece, probs, y, backend=b) for b in ("cpp", "numba") * 6]
        got = [f.result() for f in futures]
    assert got == [want[b] for b in ("cpp", "numba") * 6]


# ---------------------------------------------------------------------------
# Real model outputs (Mukhoti et al. 2020 pretrained models; see shared/data/README.md)
# ---------------------------------------------------------------------------

# Pre-temperature-scaling test ECE (15 bins, %) and test error (%), as published
# to two decimals in Mukhoti et al. 2020 for these models.
FOCAL = {
    "focal_cifar10_resnet50_brier.npz": (1.82, 5.00),
    "focal_cifar10_resnet110_brier.npz": (2.56, 5.48),
    "focal_cifar10_wrn26-10_brier.npz": (1.25, 4.08),
    "focal_cifar10_densenet121_brier.npz": (1.53, 5.11),
    "focal_cifar10_resnet50_flsd53.npz": (1.55, 4.98),
    "focal_cifar10_resnet110_flsd53.npz": (1.87, 5.42),
    "focal_cifar10_wrn26-10_flsd53.npz": (1.56, 4.01),
    "focal_cifar10_densenet121_flsd53.npz": (1.22, 5.46),
    "focal_cifar100_resnet50_brier.npz": (6.52, 23.39),
    "focal_cifar100_resnet110_brier.npz": (7.88, 25.10),
    "focal_cifar100_wrn26-10_brier.npz": (4.31, 20.59),
    "focal_cifar100_densenet121_brier.npz": (5.17, 23.75),
}


@pytest.mark.parametrize("name", sorted(FOCAL))
def test_real_model_outputs(backend, name):
    d = load_real(name)
    z, y = d["test_logits"], d["test_labels"]
    published_ece, published_error = FOCAL[name]
    t = calibkit.reliability_table(z, y, n_bins=15, from_logits=True, backend=backend)
    assert round(100 * t.ece, 2) == pytest.approx(published_ece, abs=0.0051)
    assert round(100 * (1 - t.accuracy_overall), 2) == pytest.approx(published_error, abs=1e-9)
    # The same numbers through the reference (softmax materialised in float64); float32 logits go through
    # the single-precision exp (relative error < 2.5e-7 per element).
    rel = 1e-9 if z.dtype == np.float64 else 1e-6
    assert t.ece == pytest.approx(ref.calibration_error(z, y, 15, from_logits=True), rel=rel)
    assert calibkit.nll(z, y, from_logits=True, backend=backend) == pytest.approx(
        ref.nll(z, y, from_logits=True), rel=rel)


def test_real_probabilities_with_top_probability_one(backend):
    d = load_real("netcal_cifar10_wrn16-4.npz")
    probs, y = d["probs"], d["labels"]
    assert (probs.max(axis=1) == 1.0).sum() > 1000
    for strategy in ("uniform", "quantile"):
        for norm in NORMS:
            got = calibkit.calibration_error(probs, y, strategy=strategy, norm=norm, backend=backend)
            assert got == pytest.approx(ref.calibration_error(probs, y, 15, strategy, norm), rel=1e-9)


def test_metrics_module_exports():
    for name in metrics.__all__:
        assert getattr(calibkit, name) is getattr(metrics, name)


# ---------------------------------------------------------------------------
# The vectorised row kernels: every row length, layout and instruction set
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", list(range(2, 19)) + [31, 64, 100])
def test_every_row_length(backend, k):
    rng = np.random.default_rng(k)
    logits = rng.normal(scale=3, size=(300, k))
    logits[::7, -1] = logits[::7].max(axis=1) + 1  # the maximum in the tail of the row
    logits[::5, 0] = logits[::5, -1]  # ties between the first and the last column
    y = rng.integers(0, k, 300)
    probs = ref.softmax(logits)
    for scores, fl in ((logits, True), (probs, False)):
        t = calibkit.reliability_table(scores, y, n_bins=10, from_logits=fl, backend=backend)
        conf, pred = ref.top_label(ref.softmax(scores) if fl else scores)
        count, _, _, st = ref.binned(conf, (pred == y).astype(float), ref.equal_width_edges(10))
        np.testing.assert_array_equal(t.count, count)
        assert t.ece == pytest.approx(ref.calibration_error(scores, y, 10, from_logits=fl), rel=1e-12)
        assert calibkit.nll(scores, y, from_logits=fl, backend=backend) == pytest.approx(
            ref.nll(scores, y, fl), rel=1e-12)
        assert calibkit.brier_score(scores, y, from_logits=fl, backend=backend) == pytest.approx(
            ref.brier_score(scores, y, fl), rel=1e-12)
        # Same sums in the same order whatever the memory layout.
        for other in (np.asfortranarray(scores), scores.astype(np.float32).astype(np.float64)[:, ::1]):
            a = calibkit.nll(other, y, from_logits=fl, backend=backend)
            b = calibkit.nll(np.ascontiguousarray(other), y, from_logits=fl, backend=backend)
            assert a == b


def test_logit_kernel_extreme_values(backend):
    # Differences beyond the exp underflow range, huge magnitudes, and all-equal rows.
    z = np.array([[0.0, -800.0, -1e300, 5.0], [1e300, -1e300, 0.0, 1e300], [-3e5, -3e5, -3e5, -3e5],
                  [700.0, -700.0, 0.0, 699.0]])
    y = np.array([1, 3, 2, 0])
    assert calibkit.nll(z, y, from_logits=True, backend=backend) == pytest.approx(
        ref.nll(z, y, from_logits=True), rel=1e-12)
    t = calibkit.reliability_table(z, y, n_bins=4, from_logits=True, backend=backend)
    assert t.accuracy_overall == 0.25  # argmax per row: 3, 0 (tie with 3), 0 (all tied), 0: only the last is right


def test_avx2_and_portable_clones_are_bit_identical():
    """The C++ kernels give the same bits with and without their AVX2 clones."""

    code = (
        "import numpy as np, calibkit\n"
        "rng = np.random.default_rng(0)\n"
        "out = []\n"
        "for k in (3, 8, 10, 13, 100):\n"
        "    z = rng.normal(scale=4, size=(20000, k)).astype(np.float32)\n"
        "    y = rng.integers(0, k, 20000)\n"
        "    p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)\n"
        "    for s, fl in ((z, True), (p, False)):\n"
        "        out += [calibkit.ece(s, y, from_logits=fl, backend='cpp'), calibkit.nll(s, y, from_logits=fl),\n"
        "                calibkit.brier_score(s, y, from_logits=fl),\n"
        "                calibkit.classwise_calibration_error(s, y, from_logits=fl)]\n"
        "print(repr([float(v).hex() for v in out]))\n"
    )
    runs = simd_clone_outputs(code)
    assert runs[0] == runs[1]


# ---------------------------------------------------------------------------
# The fused kernel: top-label statistics and class-wise bins in one pass, logits scaled by 1/T
# ---------------------------------------------------------------------------


def classwise_reference(probs, y, n_bins, w=None, class_edges=None):
    """Per class k and bin m: count, weight, sum w p_k, sum w 1[y = k] (bins as in reference.bin_index)."""
    n, K = probs.shape
    w = np.ones(n) if w is None else w
    out = {key: np.zeros((K, n_bins)) for key in ("count", "weight", "sum_score", "sum_target")}
    for k in range(K):
        edges = ref.equal_width_edges(n_bins) if class_edges is None else class_edges[k]
        b = np.searchsorted(edges[1:-1], probs[:, k], side="left")  # = ref.bin_index, vectorised
        np.add.at(out["count"][k], b, 1)
        np.add.at(out["weight"][k], b, w)
        np.add.at(out["sum_score"][k], b, w * probs[:, k])
        np.add.at(out["sum_target"][k], b, w * (y == k))
    return out


@pytest.mark.parametrize("K", [2, 3, 7, 8, 9, 15, 16, 17, 40, 1000])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("per_class_edges", [False, True])
def test_fused_classwise_bins_match_reference(backend, K, from_logits, weighted, per_class_edges):
    from calibkit import _backend

    rng = np.random.default_rng(K)
    n = 600 if K == 1000 else 2500
    z = rng.normal(scale=3.0, size=(n, K))
    probs = ref.softmax(z)
    scores = z if from_logits else probs
    y = rng.integers(0, K, n)
    w = rng.random(n) * 2 if weighted else None
    M = 12
    edges = None
    if per_class_edges:  # per-class edges, spread like the probabilities (not on data points)
        inner = np.sort(rng.random((K, M - 1)) ** 3, axis=1)
        edges = np.concatenate([np.zeros((K, 1)), inner, np.ones((K, 1))], axis=1)
    k = _backend.kernels(backend)
    fused = k.top_label_stats(scores, y, w, from_logits, 10, 1e-12, classwise_bins=M, class_edges=edges)
    plain = k.top_label_stats(scores, y, w, from_logits, 10, 1e-12)
    want = classwise_reference(probs, y, M, w, edges)
    got = {key: np.asarray(v).reshape(K, M) for key, v in fused["classwise"].items()}
    # Counts exact but for probabilities within rounding of an edge (p from logits is computed, not given).
    moved = np.abs(got["count"] - want["count"]).sum()
    assert moved == 0 if not from_logits else moved <= 2
    for key in ("weight", "sum_score", "sum_target"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12 if moved == 0 else 2.0, err_msg=key)
    # The top-label part is that of the call without class-wise bins.
    for key in ("count", "weight", "sum_score", "sum_target"):
        np.testing.assert_allclose(fused[key], plain[key], rtol=1e-13, atol=1e-13)
    for key in ("count", "weight", "correct", "confidence", "brier", "nll"):
        assert fused["totals"][key] == pytest.approx(plain["totals"][key], rel=1e-13, abs=1e-13)
    # classwise_stats is the same pass without the top-label bins.
    alone = k.classwise_stats(scores, y, w, from_logits, M, edges)
    for key in ("count", "weight", "sum_score", "sum_target"):
        np.testing.assert_array_equal(alone[key], fused["classwise"][key])


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("K", [4, 30])
def test_inverse_temperature_equals_scaled_logits(backend, dtype, K):
    from calibkit import _backend

    rng = np.random.default_rng(K)
    z = (rng.normal(scale=4.0, size=(3000, K))).astype(dtype)
    y = rng.integers(0, K, 3000)
    k = _backend.kernels(backend)
    b = 0.37
    scaled = z.astype(np.float64) * b
    conf_a, conf_b = np.empty(3000), np.empty(3000)
    corr_a, corr_b = np.empty(3000, np.uint8), np.empty(3000, np.uint8)
    a = k.top_label_stats(z, y, None, True, 15, 1e-12, conf_out=conf_a, correct_out=corr_a, inverse_temperature=b,
                          classwise_bins=15)
    want = k.top_label_stats(scaled, y, None, True, 15, 1e-12, conf_out=conf_b, correct_out=corr_b,
                             classwise_bins=15)
    # float32 / float16 logits go through the single-precision exp (relative error < 2.5e-7) with b rounded
    # to float and z - max taken in float: each probability within ~1e-6 of the float64 result.
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(conf_a, conf_b, rtol=tol / 10 if dtype == np.float64 else tol)
    np.testing.assert_array_equal(corr_a, corr_b)
    for key in ("correct", "confidence", "brier", "nll"):
        assert a["totals"][key] == pytest.approx(want["totals"][key], rel=tol)
    np.testing.assert_allclose(a["classwise"]["sum_score"], want["classwise"]["sum_score"], rtol=tol, atol=tol)
    assert abs(np.asarray(a["classwise"]["count"]) - want["classwise"]["count"]).sum() <= 2  # edge rounding
    p = ref.softmax(scaled)
    assert a["totals"]["nll"] / 3000 == pytest.approx(-np.log(p[np.arange(3000), y]).mean(), rel=tol)


@pytest.mark.parametrize("b, match", [(0.0, "inverse_temperature must be"), (-1.0, "inverse_temperature must be"),
                                      (np.inf, "inverse_temperature must be"), (np.nan, "inverse_temperature must be")])
def test_inverse_temperature_rejects_bad_values(backend, b, match):
    from calibkit import _backend

    k = _backend.kernels(backend)
    z, y = np.zeros((4, 3)), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=match):
        k.top_label_stats(z, y, None, True, 15, 1e-7, inverse_temperature=b)
    with pytest.raises(ValueError, match="logits only"):
        k.top_label_stats(np.full((4, 3), 1 / 3), y, None, False, 15, 1e-7, inverse_temperature=0.5)
    with pytest.raises(ValueError, match="classwise_bins must be >= 0"):
        k.top_label_stats(z, y, None, True, 15, 1e-7, classwise_bins=-1)
    with pytest.raises(ValueError, match="class_edges needs classwise_bins"):
        k.top_label_stats(z, y, None, True, 15, 1e-7, class_edges=np.zeros((3, 16)))


def test_fused_kernel_reports_bad_rows_once(backend):
    from calibkit import _backend

    k = _backend.kernels(backend)
    rng = np.random.default_rng(0)
    for K in (5, 40):
        z = rng.normal(size=(500, K))
        z[321, K - 1] = np.nan
        y = rng.integers(0, K, 500)
        r = k.top_label_stats(z, y, None, True, 15, 1e-7, classwise_bins=15)
        assert tuple(r["status"])[:3] == (1, 321, K - 1)
        assert r["totals"]["count"] == 499 and np.asarray(r["classwise"]["count"]).sum() == 499 * K
