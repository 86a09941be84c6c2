"""Dense conformal prediction: fit / predict_sets / set_sizes / coverage metrics / ConformalAccumulator on
(N, K, *spatial) scores with ignore_index and mask, equal to the same calls on the explicit flattened copy with
the ignored pixels removed (``flatten_reference``), to the last bit, on both backends, for every layout."""

import functools
import re

import numpy as np
import pytest

import calibkit
import calibkit.conformal as conf
from calibkit._dense import as_dense, flatten_reference

rng = np.random.default_rng(7)
K = 5
BASE = rng.normal(size=(3, K, 6, 9)) * 2  # (N, K, H, W) logits
LABELS = rng.integers(0, K, (3, 6, 9))
LABELS[0, 1, :4] = 255
LABELS[2, 5, 3] = 255
MASK = rng.random((3, 6, 9)) < 0.85
METRICS = (calibkit.coverage, calibkit.size_stratified_coverage, calibkit.class_conditional_coverage_gap)


def _layout(name, dtype, tmp_path):
    x = BASE.astype(dtype)
    lab, mask = LABELS, MASK
    if name == "class-second":
        return x, lab, mask, 1
    if name == "channel-last":
        return np.ascontiguousarray(np.moveaxis(x, 1, -1)), lab, mask, -1
    if name == "sliced":
        return x[:, :, ::2, 1:], lab[:, ::2, 1:], mask[:, ::2, 1:], 1
    if name == "fortran":
        return np.asfortranarray(x), np.asfortranarray(lab), mask, 1
    if name == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "scores.npy", mode="w+", dtype=dtype, shape=x.shape)
        m[...] = x
        m.flush()
        return np.load(tmp_path / "scores.npy", mmap_mode="r"), lab, mask, 1
    raise AssertionError(name)


LAYOUTS = ("class-second", "channel-last", "sliced", "fortran", "memmap")


def _params(score, randomized, cc, backend):
    return dict(score=score, alpha=0.2, randomized=randomized, class_conditional=cc, random_state=5,
                backend=backend)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_fit_predict_equal_flattened(backend, layout, dtype, tmp_path):
    s, lab, mask, axis = _layout(layout, dtype, tmp_path)
    before = np.array(s, copy=True)
    kw = dict(axis=axis, ignore_index=255, mask=mask)
    fs, fy, _ = flatten_reference(s, lab, axis=axis, mask=mask, ignore_index=255)
    for score, randomized, cc in (("lac", False, False), ("aps", True, True), ("raps", False, True),
                                  ("saps", True, False)):
        p = _params(score, randomized, cc, backend)
        a = calibkit.ConformalClassifier(**p).fit(s, lab, from_logits=True, **kw)
        b = calibkit.ConformalClassifier(**p).fit(fs, fy, from_logits=True)
        np.testing.assert_array_equal(a.calibration_scores_, b.calibration_scores_)
        np.testing.assert_array_equal(a.thresholds_, b.thresholds_)
        assert a.threshold_ == b.threshold_
        # predictions of every pixel (no labels needed), class axis where the scores have it
        all_rows, _, _ = flatten_reference(s, axis=axis)
        sets, sizes = a.predict_sets_and_sizes(s, from_logits=True, axis=axis)
        rsets, rsizes = b.predict_sets_and_sizes(all_rows, from_logits=True)
        assert sets.shape == s.shape and sets.dtype == np.bool_ and sets.flags.c_contiguous
        rs = np.moveaxis(s, axis, -1).shape[:-1]
        assert sizes.shape == rs
        np.testing.assert_array_equal(np.moveaxis(sets, axis, -1).reshape(-1, K), rsets)
        np.testing.assert_array_equal(sizes.reshape(-1), rsizes)
        if not randomized:
            np.testing.assert_array_equal(a.predict_sets(s, from_logits=True, axis=axis), sets)
            np.testing.assert_array_equal(a.set_sizes(s, from_logits=True, axis=axis), sizes)
        # the coverage metrics of the dense sets with ignored pixels
        ref_sets = rsets[_kept_index(lab, mask)]
        for fn in METRICS:
            args = () if fn is calibkit.coverage else (0.2,)
            assert fn(sets, lab, *args, **kw) == fn(ref_sets, fy, *args), fn.__name__
        assert calibkit.average_set_size(sets, labels=lab, **kw) == calibkit.average_set_size(ref_sets)
        # the accumulator, from dense sets and from dense scores
        acc_sets = calibkit.ConformalAccumulator(a).update(sets, lab, **kw).compute()
        ref = calibkit.ConformalAccumulator(b).update(ref_sets, fy).compute()
        assert acc_sets == ref
        if not randomized:
            acc_scores = calibkit.ConformalAccumulator(a).update(s, lab, from_logits=True, **kw).compute()
            assert acc_scores == ref
    np.testing.assert_array_equal(np.asarray(s), before)


def _kept_index(lab, mask):
    keep = (np.asarray(lab) != 255) & np.asarray(mask)
    return np.flatnonzero(keep.reshape(-1))


def test_many_pieces_and_randomized_draws(backend, monkeypatch):
    """Pieces of 7 rows: the uniforms are drawn piece by piece in row order, as one draw of every row."""
    s = BASE.astype(np.float32)
    p = _params("aps", True, False, backend)
    whole = calibkit.ConformalClassifier(**p).fit(s, LABELS, from_logits=True, ignore_index=255, mask=MASK)
    w_sets, w_sizes = whole.predict_sets_and_sizes(s, from_logits=True)
    monkeypatch.setattr(conf, "as_dense", functools.partial(as_dense, piece_rows=7))
    cut = calibkit.ConformalClassifier(**p).fit(s, LABELS, from_logits=True, ignore_index=255, mask=MASK)
    np.testing.assert_array_equal(cut.calibration_scores_, whole.calibration_scores_)
    c_sets, c_sizes = cut.predict_sets_and_sizes(s, from_logits=True)
    np.testing.assert_array_equal(c_sets, w_sets)
    np.testing.assert_array_equal(c_sizes, w_sizes)


def test_out(backend):
    s = BASE.astype(np.float32)
    cp = calibkit.ConformalClassifier(score="aps", alpha=0.2, backend=backend).fit(s, LABELS, from_logits=True,
                                                                                    ignore_index=255)
    ref = cp.predict_sets(s, from_logits=True)
    out = np.zeros(s.shape, bool, order="F")
    assert cp.predict_sets(s, from_logits=True, out=out) is out
    np.testing.assert_array_equal(out, ref)
    sz = np.zeros((3, 9, 6), np.int32).transpose(0, 2, 1)
    assert cp.set_sizes(s, from_logits=True, out=sz) is sz
    np.testing.assert_array_equal(sz, ref.sum(axis=1))
    bad = [
        (dict(out=np.zeros((3, K, 6, 8), bool)), ValueError, "out must have the shape of scores"),
        (dict(out=np.zeros(s.shape, np.uint8)), TypeError, "out must be a bool array"),
        (dict(out=[[True]]), TypeError, "out must be a NumPy bool array"),
    ]
    ro = np.zeros(s.shape, bool)
    ro.flags.writeable = False
    bad.append((dict(out=ro), ValueError, "read-only"))
    for kw, exc, msg in bad:
        with pytest.raises(exc, match=msg):
            cp.predict_sets(s, from_logits=True, **kw)
    with pytest.raises(TypeError, match="out must be an integer array"):
        cp.set_sizes(s, from_logits=True, out=np.zeros((3, 6, 9)))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 6, 9\)"):
        cp.set_sizes(s, from_logits=True, out=np.zeros((3, 6), np.int64))


def test_2d_with_mask_and_ignore_index(backend):
    """mask / ignore_index on (N, K) input take the same path and equal the filtered rows."""
    z = BASE[:, :, 0, :].transpose(0, 2, 1).reshape(-1, K)
    y = LABELS[:, 0, :].reshape(-1).copy()
    m = MASK[:, 0, :].reshape(-1)
    keep = m & (y != 255)
    a = calibkit.ConformalClassifier(backend=backend).fit(z, y, from_logits=True, ignore_index=255, mask=m)
    b = calibkit.ConformalClassifier(backend=backend).fit(z[keep], y[keep], from_logits=True)
    np.testing.assert_array_equal(a.calibration_scores_, b.calibration_scores_)
    sets = a.predict_sets(z, from_logits=True)
    assert calibkit.coverage(sets, y, ignore_index=255, mask=m) == calibkit.coverage(sets[keep], y[keep])
    acc = calibkit.ConformalAccumulator(a).update(z, y, from_logits=True, ignore_index=255, mask=m)
    assert acc.compute() == calibkit.ConformalAccumulator(b).update(sets[keep], y[keep]).compute()


def test_errors(backend):
    s = BASE.astype(np.float64)
    cp = calibkit.ConformalClassifier(backend=backend)
    with pytest.raises(ValueError, match="every pixel of cal_scores is ignored"):
        cp.fit(s, np.full((3, 6, 9), 255), from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match="every pixel of cal_scores is ignored"):
        cp.fit(s, LABELS, from_logits=True, mask=np.zeros((3, 6, 9), bool))
    bad = LABELS.copy()
    bad[1, 2, 3] = 7
    with pytest.raises(ValueError, match=re.escape("cal_labels[1, 2, 3] = 7 is out of range for n_classes=5")):
        cp.fit(s, bad, from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 6, 9\)"):
        cp.fit(s, LABELS[:, :5], from_logits=True)
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 6, 9\)"):
        cp.fit(s, LABELS, from_logits=True, ignore_index=255, mask=MASK[:2])
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        cp.fit(s, LABELS, from_logits=True, ignore_index=255, mask=MASK.astype(int))
    nan = s.copy()
    nan[2, 1, 4, 5] = np.nan
    with pytest.raises(ValueError, match=re.escape("cal_scores[2, 1, 4, 5] = nan")):
        cp.fit(nan, LABELS, from_logits=True, ignore_index=255)
    cp.fit(s, LABELS, from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match=re.escape("scores[2, 1, 4, 5] = nan")):
        cp.predict_sets(nan, from_logits=True)
    with pytest.raises(ValueError, match="fitted on 5 classes"):
        cp.predict_sets(s[:, :4], from_logits=True)
    with pytest.raises(ValueError, match="axis must be 1"):
        cp.predict_sets(s, from_logits=True, axis=2)
    sets = cp.predict_sets(s, from_logits=True)
    with pytest.raises(ValueError, match=re.escape("labels[1, 2, 3] = 7 is out of range for n_classes=5")):
        calibkit.coverage(sets, bad, ignore_index=255)
    with pytest.raises(ValueError, match="every pixel of sets is ignored"):
        calibkit.coverage(sets, np.full((3, 6, 9), 255), ignore_index=255)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 6, 9\)"):
        calibkit.coverage(sets, LABELS[:, :, :8])
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 6, 9\)"):
        calibkit.coverage(sets, LABELS, mask=MASK[0])
    with pytest.raises(ValueError, match="ignore_index needs labels"):
        calibkit.average_set_size(sets, ignore_index=255)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        calibkit.coverage(sets, LABELS, ignore_index=2.5)
    two = sets.astype(np.int8)
    two[0, 2, 3, 4] = 2
    with pytest.raises(ValueError, match=re.escape("sets[0, 2, 3, 4] = 2 is not 0/1")):
        calibkit.coverage(two, LABELS, ignore_index=255)
    acc = calibkit.ConformalAccumulator(cp)
    with pytest.raises(ValueError, match=re.escape("labels[1, 2, 3] = 7 is out of range")):
        acc.update(s, bad, from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match=re.escape("labels[1, 2, 3] = 7 is out of range")):
        acc.update(sets, bad, ignore_index=255)
    assert acc.count == 0  # a bad batch leaves the state unchanged
    with pytest.raises(ValueError, match="n_classes=5"):
        acc.update(sets[:, :4], LABELS, ignore_index=255)
    with pytest.raises(ValueError, match="needs a fitted ConformalClassifier"):
        calibkit.ConformalAccumulator().update(s, LABELS, ignore_index=255)
    np.testing.assert_array_equal(s, BASE)
