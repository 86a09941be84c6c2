"""Calibrators on dense logits (N, K, *spatial): fitted in place, transformed into out= or in place (issue 17).

Every fit on dense input equals the fit on ``flatten_reference(...)`` (the explicit (rows, K) copy with the
ignored pixels removed) to a stated tolerance (the sums are added piece by piece, so they agree to rounding, and
the optimum to well within the fit's tolerance); every transform equals the 2-D transform of the flattened rows
reshaped back, bit for bit.
"""

import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import calibkit
from calibkit._dense import flatten_reference

K = 5
rng = np.random.default_rng(17)
Y = rng.integers(0, K, (3, 7, 11))
# informative, over-confident logits: T about 1.2
X64 = 3.0 * (rng.normal(size=(3, K, 7, 11)) + 2.0 * np.moveaxis(np.eye(K)[Y], -1, 1))
Y_IGN = Y.copy()
Y_IGN[0, 0, :] = 255
Y_IGN[2, 3:5, 2:9] = 255
MASK = rng.random((3, 7, 11)) > 0.2
WEIGHT = rng.random((3, 7, 11)) + 0.1


def layouts(tmp_path=None):
    """name -> (scores, labels, mask, weight, axis): the layouts of COMMON17 (memmap added by the caller)."""
    x32 = X64.astype(np.float32)
    out = {
        "float64": (X64, Y_IGN, MASK, WEIGHT, 1),
        "float32": (x32, Y_IGN, MASK, WEIGHT, 1),
        "float16": (X64.astype(np.float16), Y_IGN, MASK, WEIGHT, 1),
        "channel-last": (np.ascontiguousarray(np.moveaxis(x32, 1, -1)), Y_IGN, MASK, WEIGHT, -1),
        "sliced": (x32[:, :, ::2, 1:], Y_IGN[:, ::2, 1:], MASK[:, ::2, 1:], WEIGHT[:, ::2, 1:], 1),
        "fortran": (np.asfortranarray(x32), np.asfortranarray(Y_IGN), MASK, WEIGHT, 1),
    }
    return out


LAYOUTS = sorted(layouts()) + ["memmap"]


def get_layout(name, tmp_path):
    if name == "memmap":
        path = tmp_path / "logits.npy"
        m = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=X64.shape)
        m[...] = X64.astype(np.float32)
        m.flush()
        del m
        return np.load(path, mmap_mode="r"), Y_IGN, MASK, WEIGHT, 1
    return layouts()[name]


def flat_rows(scores, axis):
    """The 2-D (rows, K) view/copy of all pixels (no filtering), for the transform's reference."""
    ax = 1 if axis == 1 else scores.ndim - 1
    return np.moveaxis(np.asarray(scores), ax, -1).reshape(-1, scores.shape[ax])


def back(flat, scores, axis):
    """Reshape (rows, K) calibrated rows back to the scores' layout (class axis where it was)."""
    ax = 1 if axis == 1 else scores.ndim - 1
    moved_shape = np.moveaxis(np.empty(scores.shape, dtype=np.uint8), ax, -1).shape
    return np.moveaxis(flat.reshape(moved_shape), -1, ax)


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


# -- temperature scaling --------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("filtered", ["none", "ignore+mask", "ignore+mask+weight"])
def test_temperature_fit_equals_flattened(backend, layout, filtered, tmp_path):
    s, y, m, w, axis = get_layout(layout, tmp_path)
    before = np.array(s)
    kw = {} if filtered == "none" else dict(ignore_index=255, mask=m)
    sw = w if filtered.endswith("weight") else None
    if filtered == "none":
        y = np.where(y == 255, 0, y)
    ts = calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit(s, y, sw, axis=axis, **kw)
    fs, fl, fw = flatten_reference(s, y, axis=axis, sample_weight=sw, **kw)
    ref = calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit(fs, fl, fw)
    # the NLL sums are added per piece (one piece per image here): equal to rounding, T to 1e-9 relative
    assert ts.temperature_ == pytest.approx(ref.temperature_, rel=1e-9)
    assert 0.5 < ts.temperature_ < 5.0
    assert ts.n_classes_ == K
    assert np.array_equal(np.asarray(s), before)  # the input is never modified


def test_temperature_fit_2d_with_mask_and_ignore_index(backend):
    s = flat_rows(X64, 1)
    y, m = Y_IGN.reshape(-1), MASK.reshape(-1)
    ts = calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit(s, y, ignore_index=255, mask=m)
    keep = m & (y != 255)
    ref = calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit(s[keep], y[keep])
    assert ts.temperature_ == pytest.approx(ref.temperature_, rel=1e-12)
    # plain 2-D input without the new keywords still takes the unchanged path: bit for bit as before
    plain = calibkit.TemperatureScaling(backend=backend).fit(s[keep], y[keep])
    assert plain.temperature_ == calibkit.TemperatureScaling(backend=backend).fit(s[keep], y[keep]).temperature_


@pytest.mark.parametrize("max_rows", [1, 7, 100, 150, 10_000])
def test_max_rows_is_the_flattened_stride(backend, max_rows):
    s = X64.astype(np.float32)
    kw = dict(ignore_index=255, mask=MASK)
    fs, fl, fw = flatten_reference(s, Y_IGN, sample_weight=WEIGHT, **kw)
    stride = -(-len(fs) // max_rows)
    from calibkit.calibrators._base import DenseFit

    data = DenseFit(s, Y_IGN, sample_weight=WEIGHT, max_rows=max_rows, **kw)
    assert data.n_rows == len(fs[::stride]) <= max_rows
    rows = np.concatenate([np.asarray(p.scores) for p in data.pieces()])
    assert np.array_equal(rows, fs[::stride])  # exactly the rows the user would take from the flattened copy
    assert np.array_equal(np.concatenate([p.labels for p in data.pieces()]), fl[::stride])
    small = list(data.pieces(10))  # many pieces per image: the stride is counted across pieces
    assert np.array_equal(np.concatenate([np.asarray(p.scores) for p in small]), fs[::stride])
    assert np.array_equal(np.concatenate([p.sample_weight for p in small]), fw[::stride] / fw[::stride].max())
    assert [p.offset for p in small] == list(np.cumsum([0] + [p.n_rows for p in small[:-1]]))
    for p in small[:3]:  # positions in the caller's coordinates
        for i in range(p.n_rows):
            n, h, w_ = data.dense.position(p, i)
            assert np.array_equal(np.asarray(p.scores[i]), s[n, :, h, w_])
    if max_rows == 1:
        return  # one row: no temperature to fit against
    a = quiet(calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit, s, Y_IGN, WEIGHT, max_rows=max_rows, **kw)
    b = quiet(calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit, s, Y_IGN, WEIGHT, max_rows=max_rows, **kw)
    ref = quiet(calibkit.TemperatureScaling(backend=backend, tol=1e-12).fit, fs[::stride], fl[::stride],
                fw[::stride])
    assert a.temperature_ == b.temperature_  # deterministic
    assert a.temperature_ == pytest.approx(ref.temperature_, rel=1e-9)


def test_max_rows_bad_value():
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        calibkit.TemperatureScaling().fit(X64, Y, max_rows=0)
    with pytest.raises(TypeError, match="max_rows must be an integer"):
        calibkit.TemperatureScaling().fit(X64, Y, max_rows=2.5)


def test_large_map_warm_start_and_max_rows(backend):
    """A map large enough for the warm start (>= 2^22 logits): same T as the flattened fit; max_rows reads less."""
    r = np.random.default_rng(3)
    lab = r.integers(0, 19, (2, 256, 512)).astype(np.uint8)
    lab[:, :8] = 255
    z = r.normal(size=(2, 19, 256, 512)).astype(np.float16)
    z += (2.5 * (np.arange(19)[None, :, None, None] == lab[:, None])).astype(np.float16)
    ts = calibkit.TemperatureScaling(backend=backend, tol=1e-10).fit(z, lab, ignore_index=255)
    fs, fl, _ = flatten_reference(z, lab, ignore_index=255)
    ref = calibkit.TemperatureScaling(backend=backend, tol=1e-10).fit(fs, fl)
    assert ts.temperature_ == pytest.approx(ref.temperature_, rel=1e-9)
    sub = calibkit.TemperatureScaling(backend=backend, tol=1e-10).fit(z, lab, ignore_index=255, max_rows=20_000)
    stride = -(-len(fs) // 20_000)
    ref_sub = calibkit.TemperatureScaling(backend=backend, tol=1e-10).fit(fs[::stride], fl[::stride])
    assert sub.temperature_ == pytest.approx(ref_sub.temperature_, rel=1e-9)
    assert sub.temperature_ == pytest.approx(ts.temperature_, rel=0.05)


# -- transform / predict_proba / predict ------------------------------------------------------------------------

_FITTED = {}


def fitted(cls, backend):
    """A calibrator fitted once per (class, backend) on the flattened rows (the transform tests share it)."""
    if (cls, backend) not in _FITTED:
        _FITTED[cls, backend] = _fit(cls, backend)
    return _FITTED[cls, backend]


def _fit(cls, backend):
    kw = {} if cls is calibkit.MatrixScaling else {"backend": backend}
    if cls is calibkit.MatrixScaling:
        kw["reg"] = 1e-2
    return quiet(cls(**kw).fit, flat_rows(X64, 1), Y.reshape(-1))


LOGIT_CALIBRATORS = [calibkit.TemperatureScaling, calibkit.VectorScaling, calibkit.MatrixScaling,
                     calibkit.EnsembleTemperatureScaling]


@pytest.mark.parametrize("cls", LOGIT_CALIBRATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_transform_is_the_flattened_transform(backend, cls, layout, tmp_path):
    cal = fitted(cls, backend)
    s, _, _, _, axis = get_layout(layout, tmp_path)
    before = np.array(s)
    rows = flat_rows(s, axis)
    for method in ("predict_proba", "transform"):
        got = getattr(cal, method)(s, axis=axis)
        assert got.shape == s.shape and got.dtype == np.float64
        assert np.array_equal(got, back(getattr(cal, method)(rows), s, axis))  # bit for bit
    pred = cal.predict(s, axis=axis)
    assert pred.shape == Y.shape[:1] + tuple(np.delete(s.shape, 1 if axis == 1 else s.ndim - 1)[1:])
    assert np.array_equal(pred.reshape(-1), cal.predict(rows))
    assert np.array_equal(np.asarray(s), before)


@pytest.mark.parametrize("cls", LOGIT_CALIBRATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_transform_into_out_and_in_place(backend, cls, dtype):
    cal = fitted(cls, backend)
    s = X64.astype(dtype)
    expect = back(cal.predict_proba(flat_rows(s, 1)), s, 1)
    out = np.full(s.shape, -1.0, dtype=np.float32)
    assert cal.predict_proba(s, out=out) is out
    assert np.array_equal(out, expect.astype(np.float32))
    # out with another layout (Fortran order) receives the same values
    out_f = np.asfortranarray(np.zeros(s.shape))
    cal.predict_proba(s, out=out_f)
    assert np.array_equal(out_f, expect)
    # in place: out=scores itself
    work = s.copy()
    assert cal.predict_proba(work, out=work) is work
    assert np.array_equal(work, expect.astype(dtype))
    work = s.copy()
    cal.transform(work, out=work)
    assert np.array_equal(work, back(cal.transform(flat_rows(s, 1)), s, 1).astype(dtype))
    # in place on channel-last
    cl = np.ascontiguousarray(np.moveaxis(s, 1, -1))
    cal.predict_proba(cl, axis=-1, out=cl)
    assert np.array_equal(np.moveaxis(cl, -1, 1), expect.astype(dtype))


def test_transform_2d_out():
    cal = fitted(calibkit.TemperatureScaling, "auto")
    s = flat_rows(X64, 1)
    out = np.empty_like(s)
    assert cal.predict_proba(s, out=out) is out
    assert np.array_equal(out, cal.predict_proba(s))


def test_transform_out_errors():
    cal = fitted(calibkit.TemperatureScaling, "auto")
    s = X64.copy()
    with pytest.raises(ValueError, match=re.escape("out must have the shape of logits, (3, 5, 7, 11), got shape (3, 7, 11)")):
        cal.predict_proba(s, out=np.empty((3, 7, 11)))
    with pytest.raises(TypeError, match="out must be a float array"):
        cal.predict_proba(s, out=np.empty(s.shape, dtype=np.int64))
    with pytest.raises(TypeError, match="out must be a NumPy array"):
        cal.predict_proba(s, out=[[0.0]])
    ro = np.empty(s.shape)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        cal.predict_proba(s, out=ro)
    # overlap other than out=scores itself: an error, and the scores are untouched
    big = np.zeros((3, 6, 7, 11))
    big[:, :5] = X64
    keep = big.copy()
    with pytest.raises(ValueError, match="out overlaps logits"):
        cal.predict_proba(big[:, :5], out=big[:, 1:])
    assert np.array_equal(big, keep)
    with pytest.raises(ValueError, match="logits have 4 classes .* fitted on 5 classes"):
        cal.predict_proba(X64[:, :4])
    with pytest.raises(ValueError, match="axis must be 1"):
        cal.predict_proba(X64, axis=2)


def test_transform_names_bad_element_in_caller_coordinates(backend):
    cal = fitted(calibkit.TemperatureScaling, backend)
    s = X64.copy()
    s[1, 3, 2, 5] = np.nan
    with pytest.raises(ValueError, match=re.escape("logits[1, 3, 2, 5] = nan is not finite")):
        cal.predict_proba(s)
    cl = np.ascontiguousarray(np.moveaxis(s, 1, -1))
    with pytest.raises(ValueError, match=re.escape("logits[1, 2, 5, 3] = nan is not finite")):
        cal.transform(cl, axis=-1)


def test_unfitted_dense_transform():
    with pytest.raises(calibkit.NotFittedError):
        calibkit.TemperatureScaling().predict_proba(X64)


# -- the other scaling calibrators: fits ------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_vector_scaling_fit_equals_flattened(backend, layout, tmp_path):
    s, y, m, w, axis = get_layout(layout, tmp_path)
    a = calibkit.VectorScaling(backend=backend).fit(s, y, w, axis=axis, ignore_index=255, mask=m)
    fs, fl, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
    b = calibkit.VectorScaling(backend=backend).fit(fs, fl, fw)
    # the same preconditioner sample and L-BFGS path; the sums differ by rounding only
    assert np.allclose(a.scale_, b.scale_, rtol=1e-7, atol=1e-9)
    assert np.allclose(a.bias_, b.bias_, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("layout", ["channel-last", "sliced", "memmap"])
def test_matrix_scaling_fit_equals_flattened(layout, tmp_path):
    s, y, m, w, axis = get_layout(layout, tmp_path)
    a = calibkit.MatrixScaling(reg=1e-2, tol=1e-9).fit(s, y, w, axis=axis, ignore_index=255, mask=m)
    fs, fl, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
    b = calibkit.MatrixScaling(reg=1e-2, tol=1e-9).fit(fs, fl, fw)
    # L-BFGS-B's stopping rule sees the per-piece rounding of the sums: parameters agree to 1e-5
    assert np.allclose(a.weights_, b.weights_, atol=1e-5)
    assert np.allclose(a.bias_, b.bias_, atol=1e-5)


@pytest.mark.parametrize("layout", ["float64", "float16", "channel-last", "fortran"])
def test_ets_fit_equals_flattened(backend, layout, tmp_path):
    s, y, m, w, axis = get_layout(layout, tmp_path)
    a = quiet(calibkit.EnsembleTemperatureScaling(backend=backend, tol=1e-12).fit, s, y, w, axis=axis,
              ignore_index=255, mask=m)
    fs, fl, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
    b = quiet(calibkit.EnsembleTemperatureScaling(backend=backend, tol=1e-12).fit, fs, fl, fw)
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-9)
    assert np.allclose(a.weights_, b.weights_, atol=1e-7)


# -- errors shared by every dense fit -----------------------------------------------------------------------

def _fit_calls(backend):
    return [
        lambda *a, **k: calibkit.TemperatureScaling(backend=backend).fit(*a, **k),
        lambda *a, **k: calibkit.VectorScaling(backend=backend).fit(*a, **k),
        lambda *a, **k: calibkit.MatrixScaling(reg=1e-2).fit(*a, **k),
        lambda *a, **k: calibkit.EnsembleTemperatureScaling(backend=backend).fit(*a, **k),
    ]


@pytest.mark.parametrize("which", range(4))
def test_fit_errors(backend, which):
    fit = _fit_calls(backend)[which]
    with pytest.raises(ValueError, match="every pixel of logits is ignored"):
        fit(X64, np.full(Y.shape, 255), ignore_index=255)
    with pytest.raises(ValueError, match="every pixel of logits is ignored"):
        fit(X64, Y, mask=np.zeros(Y.shape, bool))
    with pytest.raises(ValueError, match=re.escape("labels must have shape (3, 7, 11)")):
        fit(X64, Y[:, :6])
    with pytest.raises(ValueError, match=re.escape("mask must have shape (3, 7, 11)")):
        fit(X64, Y, mask=MASK[:2])
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        fit(X64, Y, mask=MASK.astype(int))
    with pytest.raises(ValueError, match=re.escape("sample_weight must have shape (3, 7, 11)")):
        fit(X64, Y, WEIGHT.reshape(-1))
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        fit(X64, Y, ignore_index=2.5)
    bad = Y.copy()
    bad[2, 4, 6] = 9
    with pytest.raises(ValueError, match=re.escape("labels[2, 4, 6] = 9 is out of range for n_classes=5")):
        fit(X64, bad)
    s = X64.copy()
    s[1, 3, 2, 5] = np.inf
    with pytest.raises(ValueError, match=re.escape("logits[1, 3, 2, 5] = inf is not finite")):
        fit(s, Y)
    w = WEIGHT.copy()
    w[0, 1, 2] = -1.0
    with pytest.raises(ValueError, match=re.escape("sample_weight[0, 1, 2] = -1.0 is negative")):
        fit(X64, Y, w)
    with pytest.raises(ValueError, match="sample_weight sums to 0"):
        fit(X64, Y, np.zeros(Y.shape))


def test_all_ignored_2d():
    with pytest.raises(ValueError, match="every pixel of logits is ignored"):
        calibkit.TemperatureScaling().fit(flat_rows(X64, 1), np.full(Y.size, 255), ignore_index=255)


def test_fit_transform_dense(backend):
    ts = calibkit.TemperatureScaling(backend=backend)
    p = ts.fit_transform(X64, Y_IGN, ignore_index=255)
    assert p.shape == X64.shape
    assert np.array_equal(p, ts.transform(X64))


def test_huge_max_rows_and_labels_do_not_crash():
    """Out-of-range sizes and labels in a subprocess: a clear error, never a crash."""
    code = (
        "import numpy as np, calibkit\n"
        "x = np.zeros((1, 3, 4, 4), np.float32); y = np.zeros((1, 4, 4), np.int64); y[0, 1, 1] = -7\n"
        "for kw in ({'max_rows': 2**70}, {}):\n"
        "    try:\n"
        "        calibkit.TemperatureScaling().fit(x, y, **kw)\n"
        "    except ValueError as e:\n"
        "        print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("labels[0, 1, 1] = -7 is out of range") == 2


# -- Dirichlet calibration --------------------------------------------------------------------------------------

def _probs(s):
    # the C library's exp (math.exp), not NumPy 2.4's AVX-512 exp (an ulp off): the same probabilities on any build
    e = np.frompyfunc(math.exp, 1, 1)(s - s.max(axis=1, keepdims=True)).astype(s.dtype)
    return (e / e.sum(axis=1, keepdims=True)).astype(s.dtype)


@pytest.mark.parametrize("kind", ["full", "diagonal", "fixed_diagonal"])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("layout", ["float32", "float64", "channel-last", "sliced"])
def test_dirichlet_dense_equals_flattened(backend, kind, from_logits, layout, tmp_path):
    s, y, m, w, axis = get_layout(layout, tmp_path)
    if not from_logits:
        ax = 1 if axis == 1 else s.ndim - 1
        s = np.moveaxis(_probs(np.moveaxis(np.asarray(s), ax, 1)), 1, ax)
    kw = dict(kind=kind, from_logits=from_logits, backend=backend, reg_lambda=1e-2 if kind == "full" else 0.0)
    a = quiet(calibkit.DirichletCalibration(**kw).fit, s, y, w, axis=axis, ignore_index=255, mask=m)
    fs, fl, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
    b = quiet(calibkit.DirichletCalibration(**kw).fit, fs, fl, fw)
    # the same features, preconditioner sample and L-BFGS path; the sums differ by rounding only, which moves
    # where L-BFGS stops (gradient below tol = 1e-8) by up to ~1e-5 on the ill-conditioned full problem
    atol = 1e-5 if kind == "full" else 1e-9
    assert np.allclose(a.coef_, b.coef_, rtol=0, atol=atol)
    assert np.allclose(a.intercept_, b.intercept_, rtol=0, atol=atol)
    assert np.allclose(a.predict_proba(fs), b.predict_proba(fs), rtol=0, atol=1e-5)  # 1.4e-6 seen
    got = a.predict_proba(s, axis=axis)
    assert np.array_equal(got, back(a.predict_proba(flat_rows(s, axis)), s, axis))
    assert np.array_equal(a.predict(s, axis=axis).reshape(-1), a.predict(flat_rows(s, axis)))


def test_dirichlet_dense_errors_and_in_place():
    s = _probs(X64.astype(np.float32))
    d = calibkit.DirichletCalibration(kind="diagonal").fit(s, Y)
    work = s.copy()
    assert d.predict_proba(work, out=work) is work
    assert np.array_equal(work, d.predict_proba(s).astype(np.float32))
    bad = s.copy()
    bad[2, 1, 3, 4] = 1.5
    with pytest.raises(ValueError, match=re.escape("scores[2, 1, 3, 4] = 1.5 is not a probability")):
        d.predict_proba(bad)
    with pytest.raises(ValueError, match=re.escape("scores[2, 1, 3, 4] = 1.5 is not a probability")):
        calibkit.DirichletCalibration(kind="diagonal").fit(bad, Y)
    lab = Y.copy()
    lab[1, 1, 1] = 7
    with pytest.raises(ValueError, match=re.escape("labels[1, 1, 1] = 7 is out of range for n_classes=5")):
        calibkit.DirichletCalibration().fit(s, lab)
    with pytest.raises(ValueError, match="every pixel of scores is ignored"):
        calibkit.DirichletCalibration().fit(s, Y, mask=np.zeros(Y.shape, bool))


# -- probability-input calibrators (the fit gathers the counted rows) ------------------------------------------

GATHERED = [
    (calibkit.IsotonicCalibration, {}, True),
    (calibkit.HistogramBinning, {}, True),
    (calibkit.TopLabelHistogramBinning, {"n_bins": 5, "min_bin_size": 5}, False),
    (calibkit.PlattScaling, {}, True),
    (calibkit.BetaCalibration, {}, True),
    (calibkit.VennAbers, {}, False),
]


def _prob_layout(layout, tmp_path):
    s, y, m, w, axis = get_layout(layout, tmp_path)
    ax = 1 if axis == 1 else s.ndim - 1
    p = np.moveaxis(_probs(np.moveaxis(np.asarray(s), ax, 1)), 1, ax)
    if layout == "memmap":
        path = tmp_path / "probs.npy"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=p.dtype, shape=p.shape)
        mm[...] = p
        mm.flush()
        del mm
        p = np.load(path, mmap_mode="r")
    elif layout == "sliced":
        full = np.moveaxis(_probs(np.moveaxis(np.asarray(X64.astype(np.float32)), 1, 1)), 1, 1)
        p = full[:, :, ::2, 1:]
    elif layout == "fortran":
        p = np.asfortranarray(p)
    return p, y, m, w, axis


@pytest.mark.parametrize("cls, kw, weighted", GATHERED, ids=[c[0].__name__ for c in GATHERED])
@pytest.mark.parametrize("layout", ["float32", "float16", "channel-last", "sliced", "fortran", "memmap"])
def test_gathered_fit_and_transform_equal_flattened(backend, cls, kw, weighted, layout, tmp_path):
    s, y, m, w, axis = _prob_layout(layout, tmp_path)
    before = np.array(s)
    if "backend" in cls().get_params():
        kw = dict(kw, backend=backend)
    elif backend != "cpp":
        pytest.skip(f"{cls.__name__} has no backend parameter: the cpp run covers it")
    w = w if weighted else None
    a = quiet(cls(**kw).fit, s, y, w, axis=axis, ignore_index=255, mask=m)
    fs, fl, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
    b = quiet(cls(**kw).fit, fs, fl, fw)
    assert a.to_dict() == b.to_dict()  # the same rows in the same order: the same fit, bit for bit
    got = a.predict_proba(s, axis=axis)
    assert got.shape == s.shape
    assert np.array_equal(got, back(a.predict_proba(flat_rows(s, axis)), s, axis))
    assert np.array_equal(a.predict(s, axis=axis).reshape(-1), a.predict(flat_rows(s, axis)))
    assert np.array_equal(np.asarray(s), before)


@pytest.mark.parametrize("cls, kw, weighted", GATHERED, ids=[c[0].__name__ for c in GATHERED])
def test_gathered_max_rows_and_in_place(cls, kw, weighted):
    s = _probs(X64.astype(np.float32))
    a = quiet(cls(**kw).fit, s, Y_IGN, ignore_index=255, max_rows=100)
    fs, fl, _ = flatten_reference(s, Y_IGN, ignore_index=255)
    stride = -(-len(fs) // 100)
    assert a.to_dict() == quiet(cls(**kw).fit, fs[::stride], fl[::stride]).to_dict()
    work = s.copy()
    expect = a.predict_proba(s)
    assert a.predict_proba(work, out=work) is work
    assert np.array_equal(work, expect.astype(np.float32))
    with pytest.raises(ValueError, match="every pixel of scores is ignored"):
        cls(**kw).fit(s, Y, mask=np.zeros(Y.shape, bool))
    lab = Y.copy()
    lab[1, 2, 3] = 11
    with pytest.raises(ValueError, match=re.escape("labels[1, 2, 3] = 11 is out of range for n_classes=5")):
        cls(**kw).fit(s, lab)


def test_gathered_bad_probability_named_in_caller_coordinates():
    s = _probs(X64.astype(np.float32))
    s[2, 1, 3, 4] = np.nan
    with pytest.raises(ValueError, match=re.escape("scores[2, 1, 3, 4] = nan")):
        calibkit.IsotonicCalibration().fit(s, Y)
    iso = calibkit.IsotonicCalibration().fit(_probs(X64.astype(np.float32)), Y)
    with pytest.raises(ValueError, match=re.escape("scores[2, 1, 3, 4] = nan")):
        iso.predict_proba(s)


@pytest.mark.parametrize("cls", [calibkit.IsotonicCalibration, calibkit.PlattScaling, calibkit.BetaCalibration,
                                 calibkit.HistogramBinning, calibkit.VennAbers], ids=lambda c: c.__name__)
def test_binary_scores_with_mask_and_ignore_index(cls):
    r = np.random.default_rng(5)
    y = r.integers(0, 2, 400)
    p = np.clip(0.3 + 0.4 * y + 0.2 * r.normal(size=400), 0.01, 0.99)
    y_ign = y.copy()
    y_ign[::7] = 255
    m = r.random(400) > 0.1
    keep = m & (y_ign != 255)
    a = quiet(cls().fit, p, y_ign, ignore_index=255, mask=m)
    b = quiet(cls().fit, p[keep], y[keep])
    assert a.to_dict() == b.to_dict()
    c = quiet(cls().fit, p, y_ign, ignore_index=255, mask=m, max_rows=50)
    rows = np.flatnonzero(keep)
    rows = rows[::-(-len(rows) // 50)]
    assert c.to_dict() == quiet(cls().fit, p[rows], y[rows]).to_dict()
    with pytest.raises(ValueError, match="dense input needs class scores"):
        a.predict_proba(np.zeros((2, 2, 3)))
