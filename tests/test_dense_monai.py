"""calibkit's dense metrics against MONAI's ``CalibrationErrorMetric`` on the same (N, K, H, W) maps.

MONAI (1.5+) computes, for every (image, channel) pair, the one-vs-rest ECE of
that channel's probabilities against that channel of a one-hot target, in
float32, and by default averages those values over images and channels. In
calibkit's terms that is the class-wise error per image:
``classwise_calibration_error(probs, labels, n_bins=M, reduce="per_image")``.
Where the conventions agree the numbers agree (to float32 rounding); each
difference is shown by one test:

* input: MONAI takes probabilities and a one-hot target of the same shape;
  calibkit takes the label map (and probabilities or ``from_logits=True``);
* aggregation: MONAI is per image (then averaged); calibkit's default is
  pooled over all pixels;
* bin edges: MONAI's edges are ``linspace(0, 1 + eps32, M + 1)`` in float32
  (``torch.bucketize``; the default ``right=False`` puts a value on an edge in
  the lower bin, as calibkit's (lo, hi] bins do), so its edges are m/M · (1 +
  eps32), a float32 ulp or so above calibkit's m/M;
* ignored pixels: MONAI has no ignore label or mask; a pixel whose one-hot
  target is all zeros still counts, as a negative of every class, where
  calibkit's ``ignore_index`` leaves it out;
* MONAI has no top-label ECE (calibkit's ``ece`` default) and its
  ``include_background=False`` drops channel 0 (calibkit: binary errors of
  the remaining classes).
"""

import numpy as np
import pytest

import calibkit as ck

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

rng = np.random.default_rng(5)
N, K, H, W = 3, 4, 12, 10
LOGITS = (rng.normal(size=(N, K, H, W)) * 2).astype(np.float32)
PROBS = (np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)).astype(np.float32)
LABELS = rng.integers(0, K, (N, H, W))
ATOL = 2e-6  # MONAI sums in float32


def _one_hot(labels, k=K):
    """(N, H, W) labels as the (N, K, H, W) float one-hot target MONAI takes; labels >= k give all-zero rows."""
    return (labels[:, None] == np.arange(k)[None, :, None, None]).astype(np.float32)


def _monai(probs, target, **kw):
    metric = monai_metrics.CalibrationErrorMetric(**kw)
    metric(y_pred=torch.from_numpy(np.ascontiguousarray(probs)), y=torch.from_numpy(target))
    reduction = kw.get("metric_reduction", "mean")
    value = metric.aggregate(reduction).numpy().astype(np.float64)
    return float(value.reshape(-1)[0]) if reduction == "mean" else value


def test_per_image_classwise_equals_monai(backend):
    for m in (5, 15, 20):
        ours = ck.classwise_calibration_error(PROBS, LABELS, n_bins=m, reduce="per_image", backend=backend)
        assert abs(ours - (_monai(PROBS, _one_hot(LABELS), num_bins=m))) < ATOL
        # from the logits, channel-last: the same numbers
        ours_l = ck.classwise_calibration_error(np.ascontiguousarray(np.moveaxis(LOGITS, 1, -1)), LABELS, axis=-1,
                                                n_bins=m, from_logits=True, reduce="per_image", backend=backend)
        assert abs(ours_l - ours) < 1e-6


def test_per_image_and_class_values_are_binary_errors():
    """MONAI's metric_reduction="none" gives an (N, K) table: each entry is calibkit's binary (positive-class)
    error of that image's channel against its one-hot target."""
    table = _monai(PROBS, _one_hot(LABELS), num_bins=10, metric_reduction="none")
    assert table.shape == (N, K)
    for n in range(N):
        for c in range(K):
            ours = ck.calibration_error(PROBS[n, c].ravel(), (LABELS[n] == c).ravel().astype(int), n_bins=10)
            assert abs(ours - table[n, c]) < ATOL
    mce = _monai(PROBS, _one_hot(LABELS), num_bins=10, calibration_reduction="maximum", metric_reduction="none")
    assert abs(ck.mce(PROBS[1, 2].ravel(), (LABELS[1] == 2).ravel().astype(int), n_bins=10) - mce[1, 2]) < ATOL


def test_pooled_is_not_per_image():
    """calibkit's default pools every pixel of every image into one set of bins; MONAI averages per image."""
    pooled = ck.classwise_calibration_error(PROBS, LABELS, n_bins=15)
    per_image = ck.classwise_calibration_error(PROBS, LABELS, n_bins=15, reduce="per_image")
    theirs = (_monai(PROBS, _one_hot(LABELS), num_bins=15))
    assert abs(per_image - theirs) < ATOL
    assert abs(pooled - theirs) > 1e-3


def test_one_hot_input_and_top_label():
    """MONAI needs probabilities and a one-hot target of the scores' shape; calibkit reads the label map. MONAI has
    no top-label ECE: calibkit's ``ece`` (the confidence of the argmax) is another number."""
    with pytest.raises(ValueError, match="same shape"):
        _monai(PROBS, LABELS[:, None].astype(np.float32), num_bins=15)
    top = ck.ece(PROBS, LABELS, n_bins=15, reduce="per_image")
    theirs = (_monai(PROBS, _one_hot(LABELS), num_bins=15))
    assert abs(top - theirs) > 1e-3


def test_bin_edges_differ_by_a_float32_ulp():
    """A probability just above m/M (by one float32 ulp) is in bin m + 1 for calibkit ((m/M, (m+1)/M]) and in bin
    m for MONAI, whose edges are m/M · (1 + eps32)."""
    half = np.float32(0.5)
    above = np.nextafter(half, np.float32(1))
    p = np.array([above, 0.2, 0.9, 0.95], np.float32)  # one pixel per value, channel 1 of a 2-class map
    probs = np.stack([1 - p, p])[None, :, :, None].astype(np.float32)  # (1, 2, 4, 1)
    labels = np.array([[[1], [0], [1], [1]]])
    ours = ck.calibration_error(p, labels.ravel(), n_bins=2)
    table = _monai(probs, _one_hot(labels, 2), num_bins=2, metric_reduction="none")
    # calibkit: bin 0 = {0.2}, bin 1 = {0.5+, 0.9, 0.95}; MONAI: bin 0 = {0.2, 0.5+}, bin 1 = {0.9, 0.95}
    want_ours = (0.2 + abs(3 - (float(above) + 0.9 + 0.95)) / 1) / 4
    want_theirs = (abs(1 - (0.2 + float(above))) + abs(2 - (0.9 + 0.95))) / 4
    assert abs(ours - want_ours) < 1e-6
    assert abs(table[0, 1] - want_theirs) < 1e-6
    assert abs(ours - table[0, 1]) > 0.05


def test_ignored_pixels():
    """MONAI has no ignore label: a pixel whose one-hot row is all zeros counts as a negative of every class.
    calibkit's ignore_index leaves it out; MONAI's number is calibkit's binary error with those pixels as
    negatives."""
    labels = LABELS.copy()
    labels[:, :3] = 255
    target = _one_hot(labels)  # all zeros on the ignored rows
    ours = ck.classwise_calibration_error(PROBS, labels, n_bins=10, ignore_index=255, reduce="per_image")
    theirs = (_monai(PROBS, target, num_bins=10))
    assert abs(ours - theirs) > 1e-3
    # the same pixels left out of MONAI's input (crop the ignored rows): the numbers agree
    cropped = (_monai(PROBS[:, :, 3:], target[:, :, 3:], num_bins=10))
    assert abs(ours - cropped) < ATOL
    # MONAI's number, rebuilt from calibkit's binary errors with the ignored pixels as negatives
    rebuilt = np.mean([ck.calibration_error(PROBS[n, c].ravel(), target[n, c].ravel().astype(int), n_bins=10)
                       for n in range(N) for c in range(K)])
    assert abs(rebuilt - theirs) < ATOL
    # a mask does the same as the ignore label
    mask = labels != 255
    assert ck.classwise_calibration_error(PROBS, np.where(mask, labels, 0), n_bins=10, mask=mask,
                                          reduce="per_image") == ours


def test_include_background_false():
    """include_background=False drops channel 0: the mean of calibkit's binary errors of classes 1..K-1."""
    theirs = (_monai(PROBS, _one_hot(LABELS), num_bins=10, include_background=False))
    ours = np.mean([ck.calibration_error(PROBS[n, c].ravel(), (LABELS[n] == c).ravel().astype(int), n_bins=10)
                    for n in range(N) for c in range(1, K)])
    assert abs(ours - theirs) < ATOL
