"""Agreement with independent implementations, and the documented convention differences."""

import numpy as np
import pytest

import calibkit

from conftest import labels_from, random_probs

NORMS = ("l1", "l2", "max")


def continuous_probs(seed, n=4000, k=6):
    """Probabilities with no confidence on a bin edge, at 0 or at 1 (where conventions differ)."""
    rng = np.random.default_rng(seed)
    probs = random_probs(rng, n, k, concentration=0.5)
    y = labels_from(rng, probs)
    return probs, y


# ---------------------------------------------------------------------------
# torchmetrics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("n_bins", [5, 15])
def test_torchmetrics_multiclass(backend, norm, n_bins):
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    probs, y = continuous_probs(1)
    want = tmf.multiclass_calibration_error(torch.from_numpy(probs), torch.from_numpy(y), num_classes=6,
                                            n_bins=n_bins, norm=norm).item()
    got = calibkit.calibration_error(probs, y, n_bins=n_bins, norm=norm, backend=backend)
    assert got == pytest.approx(want, rel=1e-6)  # torchmetrics accumulates in float32


@pytest.mark.parametrize("norm", NORMS)
def test_torchmetrics_binary(backend, norm):
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(2)
    p = rng.random(5000)
    y = (rng.random(5000) < p**2).astype(np.int64)
    want = tmf.binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y), n_bins=10, norm=norm).item()
    got = calibkit.calibration_error(p, y, n_bins=10, norm=norm, backend=backend)
    assert got == pytest.approx(want, rel=1e-6)


def test_torchmetrics_gives_confidence_one_a_bin_of_its_own(backend):
    """torchmetrics bins [lo, hi) and puts confidence 1.0 in an extra bin; calibkit puts it in the last bin."""
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    p = np.array([1.0, 1.0, 0.92, 0.92])
    y = np.array([0, 0, 1, 1])
    ours = calibkit.ece(p, y, n_bins=10, backend=backend)
    theirs = tmf.binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y), n_bins=10).item()
    # calibkit: one bin (0.9, 1] with confidence 0.96 and accuracy 0.5.
    assert ours == pytest.approx(0.46)
    # torchmetrics: [0.9, 1.0) holds the 0.92s (gap 0.08), an extra bin the 1.0s (gap 1).
    assert theirs == pytest.approx(0.5 * 0.08 + 0.5 * 1.0, abs=1e-6)


def test_torchmetrics_bins_left_closed(backend):
    """A confidence exactly on an inner edge goes to the lower bin here, to the upper bin in torchmetrics."""
    torch = pytest.importorskip("torch")
    tmf = pytest.importorskip("torchmetrics.functional.classification")
    p = np.array([0.5, 0.5, 0.3, 0.7])
    y = np.array([1, 1, 0, 0])
    ours = calibkit.mce(p, y, n_bins=2, backend=backend)
    theirs = tmf.binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y), n_bins=2, norm="max").item()
    # calibkit: (0, 0.5] = {0.5, 0.5, 0.3} -> |2/3 - 13/30| ; (0.5, 1] = {0.7} -> 0.7.
    assert ours == pytest.approx(0.7)
    # torchmetrics: [0, 0.5) = {0.3} -> 0.3 ; [0.5, 1) = {0.5, 0.5, 0.7} -> |2/3 - 17/30|.
    assert theirs == pytest.approx(0.3, abs=1e-6)


# ---------------------------------------------------------------------------
# netcal
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_bins", [10, 15])
def test_netcal_ece_and_mce(backend, n_bins):
    netcal_metrics = pytest.importorskip("netcal.metrics")
    probs, y = continuous_probs(3)
    want_ece = netcal_metrics.ECE(bins=n_bins).measure(probs, y)
    want_mce = netcal_metrics.MCE(bins=n_bins).measure(probs, y)
    assert calibkit.ece(probs, y, n_bins=n_bins, backend=backend) == pytest.approx(want_ece, rel=1e-9)
    assert calibkit.mce(probs, y, n_bins=n_bins, backend=backend) == pytest.approx(want_mce, rel=1e-9)


def test_netcal_clips_confidences(backend):
    """netcal clips confidences to [eps, 1 - eps] before binning; calibkit bins the value as given."""
    netcal_metrics = pytest.importorskip("netcal.metrics")
    # Top confidences of exactly 1.0 (one right, one wrong) and 0.55.
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.55, 0.45], [0.55, 0.45]])
    y = np.array([0, 1, 0, 0])
    ours = calibkit.ece(probs, y, n_bins=10, backend=backend)
    theirs = netcal_metrics.ECE(bins=10).measure(probs, y)
    # calibkit: bin (0.9, 1] has confidence 1.0 and accuracy 0.5; bin (0.5, 0.6] confidence .55, accuracy 1.
    assert ours == pytest.approx(0.5 * 0.5 + 0.5 * 0.45)
    # netcal: the clipped confidence is 1 - eps, a gap larger by eps/2 in that bin.
    assert theirs != ours
    assert theirs == pytest.approx(ours, abs=1e-6)


# ---------------------------------------------------------------------------
# scikit-learn
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [5, 10, 20])
def test_sklearn_calibration_curve(backend, strategy, n_bins):
    calibration = pytest.importorskip("sklearn.calibration")
    rng = np.random.default_rng(4)
    p = rng.random(3000)
    y = (rng.random(3000) < np.sqrt(p)).astype(int)
    prob_true, prob_pred = calibration.calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    t = calibkit.reliability_table(p, y, n_bins=n_bins, strategy=strategy, backend=backend)
    filled = t.count > 0
    np.testing.assert_allclose(t.accuracy[filled], prob_true, rtol=1e-12)
    np.testing.assert_allclose(t.mean_confidence[filled], prob_pred, rtol=1e-12)


def test_sklearn_calibration_curve_on_top_label_confidences(backend):
    calibration = pytest.importorskip("sklearn.calibration")
    probs, y = continuous_probs(5)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(int)
    for strategy in ("uniform", "quantile"):
        prob_true, prob_pred = calibration.calibration_curve(correct, conf, n_bins=10, strategy=strategy)
        t = calibkit.reliability_table(probs, y, n_bins=10, strategy=strategy, backend=backend)
        filled = t.count > 0
        np.testing.assert_allclose(t.accuracy[filled], prob_true, rtol=1e-12)
        np.testing.assert_allclose(t.mean_confidence[filled], prob_pred, rtol=1e-12)


def test_sklearn_brier_and_log_loss(backend):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(6)
    probs = random_probs(rng, 2000, 5)
    probs /= probs.sum(axis=1, keepdims=True)
    y = labels_from(rng, probs)
    w = rng.random(2000)
    assert calibkit.brier_score(probs, y, sample_weight=w, backend=backend) == pytest.approx(
        skm.brier_score_loss(y, probs, sample_weight=w, scale_by_half=False), rel=1e-12)
    assert calibkit.nll(probs, y, sample_weight=w, backend=backend) == pytest.approx(
        skm.log_loss(y, probs, sample_weight=w, labels=range(5)), rel=1e-12)
    p = rng.random(2000)
    yb = (rng.random(2000) < p).astype(int)
    assert calibkit.brier_score(p, yb, backend=backend) == pytest.approx(skm.brier_score_loss(yb, p), rel=1e-12)
    assert calibkit.nll(p, yb, backend=backend) == pytest.approx(skm.log_loss(yb, p), rel=1e-12)


def test_sklearn_log_loss_with_zero_probability(backend):
    skm = pytest.importorskip("sklearn.metrics")
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0]])
    y = np.array([1, 2, 1])
    assert calibkit.nll(probs, y, backend=backend) == pytest.approx(skm.log_loss(y, probs, labels=range(3)),
                                                                    rel=1e-9)
