"""Dense predictions in the metrics: (N, K, *spatial) scores, ignore_index / mask, reduce="per_image".

Every metric on dense input equals the same metric on the explicit flattened
copy with the ignored pixels removed (``flatten_reference``): bit for bit
where the summation order is the same (per-row vectors: equal-mass bins,
sweep, conditional, bootstrap intervals), else to 1e-12 relative (per-piece
sums of equal-width bins, Brier, NLL). ``reduce="per_image"`` equals a loop of
the flattened metric over the images.
"""

import re
import tracemalloc

import numpy as np
import pytest

import calibkit as ck
from calibkit._dense import flatten_reference

RTOL = 1e-12

rng = np.random.default_rng(17)
N, K, H, W = 3, 5, 6, 7
X = rng.normal(size=(N, K, H, W)) * 2.0
Y = rng.integers(0, K, (N, H, W))
Y[0, :2] = 255
Y[2, 3, 4] = 255
MASK = rng.random((N, H, W)) > 0.2
WEIGHT = rng.random((N, H, W)) + 0.1


def _close(a, r, exact):
    if exact:
        assert a == r, (a, r)
    else:
        np.testing.assert_allclose(a, r, rtol=RTOL, atol=1e-15)


# (id, function, keyword arguments, bit-identical to the flattened copy)
METRICS = [
    ("ece", ck.ece, {}, False),
    ("ece-quantile", ck.ece, dict(strategy="quantile"), True),
    ("ece-midpoint", ck.ece, dict(strategy="quantile_midpoint", n_bins=5), True),
    ("ece-sweep", ck.ece, dict(n_bins="sweep"), True),
    ("ece-cube-root", ck.ece, dict(n_bins="cube_root"), False),
    ("mce", ck.mce, {}, False),
    ("rmsce", ck.calibration_error, dict(norm="l2"), False),
    ("debiased", ck.calibration_error, dict(norm="l2", debias=True), False),
    ("conditional", ck.calibration_error, dict(conditional_on_prediction=True, n_bins=4), True),
    ("classwise", ck.classwise_calibration_error, {}, False),
    ("classwise-sum-l2", ck.classwise_calibration_error, dict(norm="l2", aggregate="sum"), False),
    ("classwise-midpoint", ck.classwise_calibration_error, dict(strategy="quantile_midpoint", n_bins=4), False),
    ("brier", ck.brier_score, {}, False),
    ("nll", ck.nll, {}, False),
]


def _value(f, *args, **kw):
    r = f(*args, **kw)
    return float(r)


@pytest.mark.parametrize("name, f, kw, exact", METRICS, ids=[m[0] for m in METRICS])
def test_equals_flattened_copy(backend, name, f, kw, exact):
    fs, fl, fw = flatten_reference(X, Y, mask=MASK, ignore_index=255, sample_weight=WEIGHT)
    got = _value(f, X, Y, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT, backend=backend, **kw)
    ref = _value(f, fs, fl, from_logits=True, sample_weight=fw, backend=backend, **kw)
    _close(got, ref, exact)
    # unweighted, ignore_index alone
    fs, fl, _ = flatten_reference(X, Y, ignore_index=255)
    got = _value(f, X, Y, from_logits=True, ignore_index=255, backend=backend, **kw)
    _close(got, _value(f, fs, fl, from_logits=True, backend=backend, **kw), exact)


def test_debiased_result_and_reliability_table(backend):
    fs, fl, fw = flatten_reference(X, Y, mask=MASK, ignore_index=255, sample_weight=WEIGHT)
    a = ck.debiased_calibration_error(X, Y, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT,
                                      backend=backend)
    r = ck.debiased_calibration_error(fs, fl, from_logits=True, sample_weight=fw, backend=backend)
    assert a == r  # weighted: the per-row vectors, the same bits
    for strategy in ("uniform", "quantile"):
        ta = ck.reliability_table(X, Y, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT,
                                  strategy=strategy, backend=backend)
        tr = ck.reliability_table(fs, fl, from_logits=True, sample_weight=fw, strategy=strategy, backend=backend)
        assert np.array_equal(ta.count, tr.count) and np.array_equal(ta.lower, tr.lower)
        np.testing.assert_allclose(ta.weight, tr.weight, rtol=RTOL)
        np.testing.assert_allclose(ta.accuracy, tr.accuracy, rtol=RTOL)
        np.testing.assert_allclose(ta.mean_confidence, tr.mean_confidence, rtol=RTOL)


@pytest.mark.parametrize("f, kw", [
    (ck.calibration_error, dict(n_bins=6)),
    (ck.calibration_error, dict(norm="l2", debias=True, n_bins="sqrt")),
    (ck.classwise_calibration_error, dict(n_bins=4)),
], ids=["ece", "debiased-sqrt", "classwise"])
def test_bootstrap_interval_equals_flattened(backend, f, kw):
    fs, fl, fw = flatten_reference(X, Y, mask=MASK, ignore_index=255, sample_weight=WEIGHT)
    a = f(X, Y, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT, ci=0.9, n_boot=40,
          backend=backend, **kw)
    r = f(fs, fl, from_logits=True, sample_weight=fw, ci=0.9, n_boot=40, backend=backend, **kw)
    assert a.n_bins == r.n_bins and a.n_boot == 40
    np.testing.assert_allclose(a.value, r.value, rtol=RTOL)
    np.testing.assert_allclose(a.ci, r.ci, rtol=1e-9)


def _layout(name, dtype, tmp_path):
    """(scores, labels, mask, weights, axis) of ``name``: the same pixels in another memory layout."""
    x = X.astype(dtype)
    if name == "class-second":
        return x, Y, MASK, WEIGHT, 1
    if name == "channel-last":
        return np.ascontiguousarray(np.moveaxis(x, 1, -1)), Y, MASK, WEIGHT, -1
    if name == "fortran":
        return np.asfortranarray(x), np.asfortranarray(Y), MASK, np.asfortranarray(WEIGHT), 1
    if name == "sliced":
        big = rng.normal(size=(N, K, 2 * H, W + 1)).astype(dtype)
        lab = rng.integers(0, K, (N, 2 * H, W + 1))
        lab[1, ::3] = 255
        m = rng.random(lab.shape) > 0.3
        return big[:, :, ::2, 1:], lab[:, ::2, 1:], m[:, ::2, 1:], WEIGHT, 1
    if name == "memmap":
        mm = np.lib.format.open_memmap(tmp_path / "scores.npy", mode="w+", dtype=dtype, shape=x.shape)
        mm[...] = x
        mm.flush()
        del mm
        return np.load(tmp_path / "scores.npy", mmap_mode="r"), Y, MASK, WEIGHT, 1
    raise AssertionError(name)


LAYOUT_METRICS = [m for m in METRICS if m[0] in ("ece", "ece-quantile", "classwise", "brier", "nll", "conditional")]


@pytest.mark.parametrize("layout", ["class-second", "channel-last", "fortran", "sliced", "memmap"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_layouts_and_dtypes(backend, layout, dtype, tmp_path):
    s, lab, m, w, axis = _layout(layout, dtype, tmp_path)
    before = (np.array(s), np.array(lab), np.array(m), np.array(w))
    fs, fl, fw = flatten_reference(s, lab, axis=axis, mask=m, ignore_index=255, sample_weight=w)
    for _, f, kw, exact in LAYOUT_METRICS:
        got = _value(f, s, lab, from_logits=True, axis=axis, mask=m, ignore_index=255, sample_weight=w,
                     backend=backend, **kw)
        _close(got, _value(f, fs, fl, from_logits=True, sample_weight=fw, backend=backend, **kw), exact)
    # probabilities (check_sums on), unweighted, mask only
    p = np.exp(s.astype(np.float64) - np.log(np.exp(s.astype(np.float64)).sum(axis=axis, keepdims=True)))
    p = p.astype(dtype)
    fp, fl2, _ = flatten_reference(p, lab, axis=axis, mask=m)
    lab2 = np.where(lab == 255, 0, lab)
    fp, fl2, _ = flatten_reference(p, lab2, axis=axis, mask=m)
    for f in (ck.ece, ck.brier_score, ck.nll):
        _close(f(p, lab2, axis=axis, mask=m, backend=backend), f(fp, fl2, backend=backend), False)
    for a, b in zip(before, (s, lab, m, w)):  # the inputs are never modified
        assert np.array_equal(a, np.asarray(b), equal_nan=True)


def _per_image_reference(f, s, lab, *, axis=1, mask=None, ignore_index=None, sample_weight=None, **kw):
    values = []
    for n in range(s.shape[0]):
        one = slice(n, n + 1)
        fs, fl, fw = flatten_reference(s[one], lab[one], axis=axis, mask=None if mask is None else mask[one],
                                       ignore_index=ignore_index,
                                       sample_weight=None if sample_weight is None else sample_weight[one])
        if fs.shape[0] == 0:
            continue  # an image with no kept pixel is skipped
        values.append(float(f(fs, fl, sample_weight=fw, **kw)))
    return float(np.mean(values))


PER_IMAGE = [m for m in METRICS if m[0] not in ("ece-sweep",)]


@pytest.mark.parametrize("name, f, kw, exact", PER_IMAGE, ids=[m[0] for m in PER_IMAGE])
def test_per_image_is_the_mean_over_images(backend, name, f, kw, exact):
    lab = Y.copy()
    lab[1] = 255  # image 1 has no kept pixel: skipped
    got = _value(f, X, lab, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT, reduce="per_image",
                 backend=backend, **kw)
    ref = _per_image_reference(f, X, lab, mask=MASK, ignore_index=255, sample_weight=WEIGHT, from_logits=True,
                               backend=backend, **kw)
    _close(got, ref, False)
    xl = np.ascontiguousarray(np.moveaxis(X, 1, -1))
    got = _value(f, xl, lab, axis=-1, from_logits=True, ignore_index=255, reduce="per_image", backend=backend, **kw)
    _close(got, _per_image_reference(f, X, lab, ignore_index=255, from_logits=True, backend=backend, **kw), False)


def test_per_image_debiased_result(backend):
    r = ck.debiased_calibration_error(X, Y, from_logits=True, ignore_index=255, reduce="per_image", n_bins=3,
                                      backend=backend)
    parts = [ck.debiased_calibration_error(*flatten_reference(X[n:n + 1], Y[n:n + 1], ignore_index=255)[:2],
                                           from_logits=True, n_bins=3, backend=backend) for n in range(N)]
    np.testing.assert_allclose(r.value, np.mean([p.value for p in parts]), rtol=RTOL)
    np.testing.assert_allclose(r.squared, np.mean([p.squared for p in parts]), rtol=RTOL)
    assert r.n_bins == 3


def test_per_image_skips_images_of_zero_weight():
    w = WEIGHT.copy()
    w[0] = 0.0
    got = ck.ece(X, Y, from_logits=True, sample_weight=w, ignore_index=255, reduce="per_image")
    ref = []
    for n in (1, 2):
        fs, fl, fw = flatten_reference(X[n:n + 1], Y[n:n + 1], ignore_index=255, sample_weight=w[n:n + 1])
        ref.append(ck.ece(fs, fl, sample_weight=fw, from_logits=True))
    ref = np.mean(ref)
    np.testing.assert_allclose(got, ref, rtol=RTOL)
    with pytest.raises(ValueError, match="no image has a kept pixel of positive weight"):
        ck.ece(X, Y, from_logits=True, sample_weight=np.zeros_like(w), ignore_index=255, reduce="per_image")


def test_two_dimensional_input_with_mask_and_ignore_index(backend):
    s = X[:, :, 0, 0]
    lab = Y[:, 0, 0].copy()
    lab[0] = 255
    fs, fl, _ = flatten_reference(s, lab, ignore_index=255, mask=np.array([True, True, False]))
    for f in (ck.ece, ck.nll, ck.brier_score, ck.classwise_calibration_error):
        _close(f(s, lab, from_logits=True, ignore_index=255, mask=np.array([True, True, False]), backend=backend),
               f(fs, fl, from_logits=True, backend=backend), True)
    clean = np.where(Y[:, 0, 0] == 255, 0, Y[:, 0, 0])
    assert ck.ece(s, clean, from_logits=True, axis=-1) == ck.ece(s, clean, from_logits=True)
    # (N,) binary scores: the kept rows
    p = rng.random(40)
    y = (rng.random(40) < p).astype(int)
    y[:5] = 255
    m = rng.random(40) > 0.1
    keep = m & (y != 255)
    for f in (ck.ece, ck.nll, ck.brier_score):
        assert f(p, y, ignore_index=255, mask=m, backend=backend) == f(p[keep], y[keep], backend=backend)


ALL_IGNORED = [ck.ece, ck.mce, ck.calibration_error, ck.classwise_calibration_error, ck.debiased_calibration_error,
               ck.reliability_table, ck.brier_score, ck.nll]


@pytest.mark.parametrize("f", ALL_IGNORED, ids=[f.__name__ for f in ALL_IGNORED])
def test_all_ignored_is_a_clear_error(f):
    with pytest.raises(ValueError, match=r"every pixel of scores is ignored \(labels == ignore_index=255"):
        f(X, np.full(Y.shape, 255), from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match="mask is False everywhere"):
        f(X, Y, from_logits=True, mask=np.zeros(Y.shape, bool))


BAD = [
    (dict(labels=Y[:, :3]), ValueError, r"labels must have shape \(3, 6, 7\)"),
    (dict(mask=MASK[:, :, :2]), ValueError, r"mask must have shape \(3, 6, 7\)"),
    (dict(mask=MASK.astype(int)), TypeError, "mask must be a boolean array"),
    (dict(sample_weight=WEIGHT.ravel()), ValueError, r"sample_weight must have shape \(3, 6, 7\)"),
    (dict(ignore_index=2.5), TypeError, "ignore_index must be an integer"),
    (dict(axis=2), ValueError, "axis must be 1"),
    (dict(reduce="mean"), ValueError, "reduce"),
]


@pytest.mark.parametrize("kw, exc, msg", BAD, ids=[next(iter(b[0])) + str(i) for i, b in enumerate(BAD)])
@pytest.mark.parametrize("f", [ck.ece, ck.classwise_calibration_error, ck.brier_score, ck.nll],
                         ids=["ece", "classwise", "brier", "nll"])
def test_bad_input_names_the_argument(f, kw, exc, msg):
    kw = dict(kw)
    labels = kw.pop("labels", Y)
    with pytest.raises(exc, match=msg):
        f(X, labels, from_logits=True, ignore_index=kw.pop("ignore_index", 255), **kw)


def test_per_image_and_ci_errors():
    with pytest.raises(ValueError, match=r"reduce='per_image' needs scores with spatial axes.*shape \(3, 5\)"):
        ck.ece(X[:, :, 0, 0], Y[:, 0, 0], from_logits=True, reduce="per_image")
    with pytest.raises(ValueError, match=r"reduce='per_image' needs scores with spatial axes"):
        ck.brier_score(rng.random(4), np.array([0, 1, 0, 1]), reduce="per_image")
    with pytest.raises(ValueError, match="ci is not available with reduce='per_image'"):
        ck.calibration_error(X, Y, from_logits=True, ignore_index=255, reduce="per_image", ci=0.9)


@pytest.mark.parametrize("reduce", ["pooled", "per_image"])
def test_bad_elements_are_named_where_they_are(backend, reduce):
    x = X.copy()
    x[1, 3, 2, 5] = np.nan
    with pytest.raises(ValueError, match=re.escape("scores[1, 3, 2, 5] = nan is not finite")):
        ck.ece(x, Y, from_logits=True, ignore_index=255, reduce=reduce, backend=backend)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    with pytest.raises(ValueError, match=re.escape("scores[1, 2, 5, 3] = nan is not finite")):
        ck.nll(xl, Y, axis=-1, from_logits=True, ignore_index=255, reduce=reduce, backend=backend)
    y = Y.copy()
    y[2, 4, 6] = 9
    with pytest.raises(ValueError, match=re.escape("labels[2, 4, 6] = 9 is out of range for n_classes=5")):
        ck.brier_score(X, y, from_logits=True, ignore_index=255, reduce=reduce, backend=backend)
    w = WEIGHT.copy()
    w[2, 1, 3] = -1.0
    with pytest.raises(ValueError, match=re.escape("sample_weight[2, 1, 3] = -1.0 is negative")):
        ck.ece(X, Y, from_logits=True, ignore_index=255, sample_weight=w, reduce=reduce, backend=backend)
    w[2, 1, 3] = np.inf
    with pytest.raises(ValueError, match=re.escape("sample_weight[2, 1, 3] = inf is not finite")):
        ck.classwise_calibration_error(X, Y, from_logits=True, ignore_index=255, sample_weight=w, reduce=reduce,
                                       backend=backend)
    w[0, 0, 0] = np.nan  # an ignored pixel's weight is never read as a weight
    w[2, 1, 3] = 1.0
    assert np.isfinite(ck.ece(X, Y, from_logits=True, ignore_index=255, sample_weight=w, reduce=reduce))
    p = np.exp(X) / np.exp(X).sum(axis=1, keepdims=True)
    p[2, :, 4, 1] *= 1.5
    with pytest.raises(ValueError, match=re.escape("scores[2, :, 4, 1] sums to")):
        ck.brier_score(p, Y, ignore_index=255, reduce=reduce, backend=backend)
    assert np.isfinite(ck.brier_score(p, Y, ignore_index=255, check_sums=False, reduce=reduce, backend=backend))


def test_no_copy_of_the_map():
    """Peak traced memory of a pooled ECE / NLL / class-wise error from logits on a class-second float32 map with
    ignored pixels does not grow with the number of images (pieces of one image at a time, no flattened copy)."""
    r = np.random.default_rng(1)
    s = r.normal(size=(16, 19, 64, 64)).astype(np.float32)  # 5 MB
    lab = r.integers(0, 19, (16, 64, 64))
    lab[:, :10] = 255
    ck.ece(s[:1], lab[:1], from_logits=True, ignore_index=255)  # warm up (kernels, caches)

    def peak(f, n):
        tracemalloc.start()
        try:
            f(s[:n], lab[:n], from_logits=True, ignore_index=255)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    for f in (ck.ece, ck.nll, ck.classwise_calibration_error):
        small, large = peak(f, 2), peak(f, 16)
        assert large < 1.5 * small + 65536, (f.__name__, small, large)
        assert large < s.nbytes / 4, (f.__name__, large, s.nbytes)


ROW_METRICS = ["smooth_ece", "cumulative_calibration_error", "score_decomposition", "corp_reliability_table",
               "cumulative_curve"]


def _row_metric(name):
    if name == "cumulative_curve":
        from calibkit.cumulative import cumulative_curve
        return cumulative_curve
    return getattr(ck, name)


def _as_numbers(r):
    if isinstance(r, dict):
        return np.concatenate([np.ravel(np.asarray(r[k], dtype=float)) for k in ("x", "cumulative", "scores")])
    if hasattr(r, "x") and hasattr(r, "y"):
        return np.concatenate([np.ravel(r.x), np.ravel(r.y)])
    if isinstance(r, float):
        return np.array([r])
    import dataclasses
    return np.array([v for v in dataclasses.asdict(r).values() if isinstance(v, float)])


@pytest.mark.parametrize("name", ROW_METRICS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_row_metrics_equal_flattened_copy(backend, name, dtype):
    """The confidence / correctness metrics (cumulative, smooth, CORP) on dense input: the binary problem of the
    kept pixels, the result of the flattened copy (bit for bit but for the smooth ECE of float32 logits)."""
    f = _row_metric(name)
    x = X.astype(dtype)
    fs, fl, fw = flatten_reference(x, Y, mask=MASK, ignore_index=255, sample_weight=WEIGHT)
    got = f(x, Y, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT, backend=backend)
    ref = f(fs, fl, from_logits=True, sample_weight=fw, backend=backend)
    a, r = _as_numbers(got), _as_numbers(ref)
    assert a.shape == r.shape and a.size > 0
    if name == "smooth_ece" and dtype == np.float32:
        np.testing.assert_allclose(a, r, rtol=1e-6)
    else:
        assert np.array_equal(a, r, equal_nan=True)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    got_l = f(xl, Y, axis=-1, from_logits=True, mask=MASK, ignore_index=255, sample_weight=WEIGHT, backend=backend)
    assert np.array_equal(_as_numbers(got_l), a, equal_nan=True)
    with pytest.raises(ValueError, match="every pixel of scores is ignored"):
        f(x, np.full(Y.shape, 255), from_logits=True, ignore_index=255, backend=backend)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 6, 7\)"):
        f(x, Y, from_logits=True, mask=MASK[:, 1:], backend=backend)
