"""Dense (N, K, *spatial) uncertainty maps and the ensemble decomposition of (S, N, K, *spatial) passes.

Every map must equal the 2-D function on the explicit flattened copy (``flatten_reference``) reshaped back,
to the last bit (per-row results: no summation across rows), on both backends, for float16/32/64, class-second,
channel-last, a non-contiguous slice, Fortran order and a memory map; with ``out=`` given and not.
"""

import functools
import re
import tracemalloc

import numpy as np
import pytest

import calibkit
import calibkit.uncertainty as unc
from calibkit._dense import as_dense, flatten_reference

KINDS = ("max_probability", "margin", "entropy", "energy", "logit_norm", "kl_to_uniform")
rng = np.random.default_rng(17)
BASE = rng.normal(size=(3, 5, 6, 9)) * 3  # (N, K, H, W)


def _layout(name, dtype, tmp_path):
    x = BASE.astype(dtype)
    if name == "class-second":
        return x, 1
    if name == "channel-last":
        return np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1
    if name == "sliced":
        return x[:, :, ::2, 1:], 1
    if name == "fortran":
        return np.asfortranarray(x), 1
    if name == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "scores.npy", mode="w+", dtype=dtype, shape=x.shape)
        m[...] = x
        m.flush()
        return np.load(tmp_path / "scores.npy", mmap_mode="r"), 1
    if name == "5d":
        return x[..., None], 1
    raise AssertionError(name)


LAYOUTS = ("class-second", "channel-last", "sliced", "fortran", "memmap", "5d")


def _row_shape(s, axis):
    return np.moveaxis(s, axis, -1).shape[:-1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_maps_equal_flattened(backend, layout, dtype, tmp_path):
    s, axis = _layout(layout, dtype, tmp_path)
    before = np.array(s, copy=True)
    flat, _, _ = flatten_reference(s, axis=axis)
    rs = _row_shape(s, axis)
    got = calibkit.uncertainty_scores(s, KINDS, from_logits=True, temperature=1.5, axis=axis, backend=backend)
    ref = calibkit.uncertainty_scores(flat, KINDS, from_logits=True, temperature=1.5, backend=backend)
    for k in KINDS:
        assert got[k].shape == rs and got[k].dtype == np.float64
        np.testing.assert_array_equal(got[k], ref[k].reshape(rs), err_msg=k)
    # the single-score functions, probabilities too
    p = np.exp(BASE - BASE.max(axis=1, keepdims=True))
    p = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    ps = np.ascontiguousarray(np.moveaxis(p, 1, -1)) if axis == -1 else p
    pflat, _, _ = flatten_reference(ps, axis=axis)
    prs = _row_shape(ps, axis)
    for fn in (calibkit.max_probability, calibkit.margin, calibkit.entropy, calibkit.kl_to_uniform):
        np.testing.assert_array_equal(fn(ps, axis=axis, backend=backend),
                                      fn(pflat, backend=backend).reshape(prs), err_msg=fn.__name__)
    np.testing.assert_array_equal(calibkit.entropy(s, from_logits=True, normalize=True, axis=axis, backend=backend),
                                  calibkit.entropy(flat, from_logits=True, normalize=True,
                                                   backend=backend).reshape(rs))
    for fn in (calibkit.energy, calibkit.logit_norm):
        np.testing.assert_array_equal(fn(s, axis=axis, backend=backend), fn(flat, backend=backend).reshape(rs))
    np.testing.assert_array_equal(np.asarray(s), before)  # the input is never modified


def test_many_pieces(backend, monkeypatch):
    """Pieces of 7 rows (maps written across image and row boundaries) give the same maps."""
    s = BASE[:, :, ::2].astype(np.float32)
    whole = calibkit.uncertainty_scores(s, KINDS, from_logits=True, backend=backend)
    monkeypatch.setattr(unc, "as_dense", functools.partial(as_dense, piece_rows=7))
    out = np.empty((3, 9, 3)).transpose(0, 2, 1)  # strided out: written through p.out views
    cut = calibkit.uncertainty_scores(s, KINDS, from_logits=True, backend=backend, out={"energy": out})
    for k in KINDS:
        np.testing.assert_array_equal(cut[k], whole[k], err_msg=k)
    assert cut["energy"] is out


@pytest.mark.parametrize("out_dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F", "transposed"])
def test_out(backend, out_dtype, order):
    s = BASE.astype(np.float32)
    ref = calibkit.entropy(s, from_logits=True, backend=backend)
    if order == "transposed":
        out = np.zeros((3, 9, 6), out_dtype).transpose(0, 2, 1)
    else:
        out = np.zeros((3, 6, 9), out_dtype, order=order)
    got = calibkit.entropy(s, from_logits=True, backend=backend, out=out)
    assert got is out
    np.testing.assert_array_equal(out, ref.astype(out_dtype))
    # uncertainty_scores: several outs, the rest allocated
    o1, o2 = np.empty((3, 6, 9)), np.empty((3, 6, 9), out_dtype, order="F")
    r = calibkit.uncertainty_scores(s, ("margin", "energy", "max_probability"), from_logits=True, backend=backend,
                                    out={"energy": o1, "margin": o2})
    assert r["energy"] is o1 and r["margin"] is o2
    np.testing.assert_array_equal(o1, calibkit.energy(s, backend=backend))
    np.testing.assert_array_equal(o2, calibkit.margin(s, from_logits=True, backend=backend).astype(out_dtype))
    np.testing.assert_array_equal(r["max_probability"], calibkit.max_probability(s, from_logits=True,
                                                                                  backend=backend))


def test_out_on_2d_input(backend):
    z = BASE[:, :, 0, 0]
    out = np.empty(3)
    assert calibkit.energy(z, out=out, backend=backend) is out
    np.testing.assert_array_equal(out, calibkit.energy(z, backend=backend))
    with pytest.raises(ValueError, match=r"out must have shape \(3,\)"):
        calibkit.energy(z, out=np.empty(4))


def test_2d_path_unchanged(backend):
    z = BASE[:, :, 0, 0]
    np.testing.assert_array_equal(calibkit.entropy(z, from_logits=True, axis=-1, backend=backend),
                                  calibkit.entropy(z, from_logits=True, backend=backend))
    with pytest.raises(ValueError, match="axis"):
        calibkit.entropy(z, from_logits=True, axis=0)


def test_out_errors():
    s = BASE.astype(np.float64)
    cases = [
        (np.empty((3, 6, 8)), ValueError, r"out must have shape \(3, 6, 9\)"),
        (np.empty((3, 6, 9), np.int64), TypeError, "out must be a float array"),
        (np.empty((3, 6, 9))[None][0].view(), None, None),
        ([[0.0]], TypeError, "out must be a NumPy array"),
        (s[:, 0], ValueError, "out overlaps scores"),
    ]
    ro = np.empty((3, 6, 9))
    ro.flags.writeable = False
    cases.append((ro, ValueError, "out is read-only"))
    for out, exc, msg in cases:
        if exc is None:
            continue
        with pytest.raises(exc, match=msg):
            calibkit.entropy(s, from_logits=True, out=out)
    with pytest.raises(ValueError, match="not among kinds"):
        calibkit.uncertainty_scores(s, ("entropy",), from_logits=True, out={"energy": np.empty((3, 6, 9))})
    with pytest.raises(TypeError, match="out must be a dict"):
        calibkit.uncertainty_scores(s, ("entropy",), from_logits=True, out=np.empty((3, 6, 9)))
    o = np.empty((3, 6, 9))
    with pytest.raises(ValueError, match=r"out\['margin'\] and out\['energy'\] overlap|overlap"):
        calibkit.uncertainty_scores(s, ("energy", "margin"), from_logits=True, out={"energy": o, "margin": o})
    with pytest.raises(ValueError, match=r"out\['margin'\] must have shape"):
        calibkit.uncertainty_scores(s, ("energy", "margin"), from_logits=True,
                                    out={"energy": o, "margin": np.empty(3)})
    np.testing.assert_array_equal(s, BASE)


def test_bad_input_named_in_place(backend):
    s = BASE.astype(np.float32).copy()
    s[2, 3, 4, 5] = np.nan
    with pytest.raises(ValueError, match=re.escape("scores[2, 3, 4, 5] = nan")):
        calibkit.entropy(s, from_logits=True, backend=backend)
    sl = np.ascontiguousarray(np.moveaxis(s, 1, -1))
    with pytest.raises(ValueError, match=re.escape("scores[2, 4, 5, 3] = nan")):
        calibkit.entropy(sl, from_logits=True, axis=-1, backend=backend)
    with pytest.raises(ValueError, match="axis must be 1"):
        calibkit.entropy(BASE, from_logits=True, axis=2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        calibkit.entropy(BASE[:, :1], from_logits=True)


def test_no_copy_of_the_scores(backend):
    """Peak traced memory: the map and per-piece temporaries, far below one copy of the scores."""
    s = np.random.default_rng(1).normal(size=(2, 19, 64, 96)).astype(np.float32)  # 0.93 MB
    out = np.empty((2, 64, 96))
    calibkit.energy(s, backend=backend, out=out)  # warm up (JIT compilation, thread pool)
    tracemalloc.start()
    try:
        calibkit.energy(s, backend=backend, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the kernel's per-piece output (98 KB; the Numba twin allocates its six score rows: 590 KB) and small objects
    assert peak < s.nbytes * 0.8, peak


# ---------------------------------------------------------------------------------------------
# the ensemble / MC-dropout decomposition

TERMS = ("total", "aleatoric", "epistemic", "variance", "prediction")
PASSES = rng.normal(size=(4, 2, 5, 6, 7)) * 2  # (S, N, K, H, W)


def _passes(name, dtype, tmp_path):
    x = PASSES.astype(dtype)
    if name == "class-second":
        return x, 2
    if name == "channel-last":
        return np.ascontiguousarray(np.moveaxis(x, 2, -1)), -1
    if name == "sliced":
        return x[:, :, :, ::2, 1:], 2
    if name == "fortran":
        return np.asfortranarray(x), 2
    if name == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "passes.npy", mode="w+", dtype=dtype, shape=x.shape)
        m[...] = x
        m.flush()
        return np.load(tmp_path / "passes.npy", mmap_mode="r"), 2
    if name == "5d":
        return x[..., None], 2
    raise AssertionError(name)


def _flat_passes(x, axis):
    m = np.moveaxis(np.asarray(x), axis, -1)
    return m.reshape(m.shape[0], -1, m.shape[-1]), m.shape[1:-1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [True, False])
def test_decompose_maps_equal_flattened(backend, layout, dtype, from_logits, tmp_path):
    x, axis = _passes(layout, dtype, tmp_path)
    if not from_logits:
        e = np.exp(np.asarray(x, np.float64) - np.asarray(x, np.float64).max(axis=axis, keepdims=True))
        x = (e / e.sum(axis=axis, keepdims=True)).astype(dtype)
    before = np.array(x, copy=True)
    flat, rs = _flat_passes(x, axis)
    got = calibkit.decompose(x, from_logits=from_logits, axis=axis, backend=backend, return_mean=True)
    ref = calibkit.decompose(flat, from_logits=from_logits, backend=backend)
    for t in TERMS:
        assert getattr(got, t).shape == rs
        np.testing.assert_array_equal(getattr(got, t), getattr(ref, t).reshape(rs), err_msg=t)
    assert got.prediction.dtype == np.int64
    member_axis = axis - 1 if axis > 0 else -1
    assert got.mean.shape == np.asarray(x).shape[1:]
    np.testing.assert_array_equal(np.moveaxis(got.mean, member_axis, -1).reshape(-1, got.mean.shape[member_axis]),
                                  ref.mean)
    assert calibkit.decompose(x, from_logits=from_logits, axis=axis, backend=backend).mean is None
    np.testing.assert_array_equal(np.asarray(x), before)


def test_decompose_many_pieces_and_out(backend, monkeypatch):
    x = PASSES[:, :, :, 1:].astype(np.float32)
    whole = calibkit.decompose(x, from_logits=True, backend=backend, return_mean=True)
    monkeypatch.setattr(unc, "as_dense", functools.partial(as_dense, piece_rows=5))
    outs = {"total": np.empty((2, 5, 7)), "epistemic": np.empty((2, 7, 5), np.float32).transpose(0, 2, 1),
            "prediction": np.empty((2, 5, 7), np.int32, order="F")}
    got = calibkit.decompose(x, from_logits=True, backend=backend, out=outs, return_mean=True)
    assert got.total is outs["total"] and got.epistemic is outs["epistemic"] and got.prediction is outs["prediction"]
    for t in TERMS:
        np.testing.assert_array_equal(getattr(got, t), getattr(whole, t).astype(getattr(got, t).dtype), err_msg=t)
    np.testing.assert_array_equal(got.mean, whole.mean)


def test_decompose_3d_unchanged_and_out(backend):
    x = PASSES[:, :, :, 0, 0]  # (S, N, K)
    a = calibkit.decompose(x, from_logits=True, backend=backend)
    assert a.mean.shape == (2, 5)
    o = np.empty(2)
    b = calibkit.decompose(x, from_logits=True, backend=backend, out={"aleatoric": o})
    assert b.aleatoric is o
    for t in TERMS:
        np.testing.assert_array_equal(getattr(a, t), getattr(b, t))
    np.testing.assert_array_equal(a.mean, b.mean)
    assert calibkit.decompose(x, from_logits=True, backend=backend, return_mean=False).mean is None
    np.testing.assert_array_equal(calibkit.decompose(x, from_logits=True, backend=backend, axis=-1).total, a.total)
    with pytest.raises(ValueError, match="axis must be 2"):
        calibkit.decompose(x, from_logits=True, axis=1)


def test_decompose_errors(backend):
    x = PASSES.astype(np.float64).copy()
    cases = [
        (dict(out={"bogus": np.empty((2, 6, 7))}), ValueError, "the terms are"),
        (dict(out=np.empty((2, 6, 7))), TypeError, "out must be a dict"),
        (dict(out={"total": np.empty((2, 6, 6))}), ValueError, r"out\['total'\] must have shape \(2, 6, 7\)"),
        (dict(out={"total": np.empty((2, 6, 7), np.int64)}), TypeError, r"out\['total'\] must be a float array"),
        (dict(out={"prediction": np.empty((2, 6, 7))}), TypeError, r"out\['prediction'\] must be an integer"),
        (dict(out={"total": x[0, :, 0]}), ValueError, r"out\['total'\] overlaps samples"),
        (dict(axis=1), ValueError, "axis must be 2"),
        (dict(axis=2.0), TypeError, "axis must be an integer"),
        (dict(return_mean="yes"), TypeError, "return_mean"),
    ]
    o = np.empty((2, 6, 7))
    cases.append((dict(out={"total": o, "variance": o}), ValueError, "overlap"))
    ro = np.empty((2, 6, 7))
    ro.flags.writeable = False
    cases.append((dict(out={"variance": ro}), ValueError, "read-only"))
    for kw, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            calibkit.decompose(x, from_logits=True, backend=backend, **kw)
    x[3, 1, 2, 4, 5] = np.inf
    with pytest.raises(ValueError, match=re.escape("samples[3][1, 2, 4, 5] = inf")):
        calibkit.decompose(x, from_logits=True, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        calibkit.decompose(PASSES[:0], from_logits=True)


# ---------------------------------------------------------------------------------------------
# per-pixel OOD detection (anomaly segmentation)


def test_pixel_ood_metrics_equal_split(backend, tmp_path):
    r = np.random.default_rng(3)
    logits = r.normal(size=(2, 4, 8, 10)).astype(np.float32)
    ood = (r.random((2, 8, 10)) < 0.2).astype(np.uint8)
    logits[:, 0] += 2.0 * (1 - ood)  # in-distribution pixels are more confident
    ood[0, :2, :3] = 255
    mask = r.random((2, 8, 10)) < 0.9
    m = np.lib.format.open_memmap(tmp_path / "map.npy", mode="w+", dtype=np.float32, shape=(2, 10, 8))
    m[...] = calibkit.max_probability(logits, from_logits=True, backend=backend).astype(np.float32).transpose(0, 2, 1)
    m.flush()
    score_map = np.load(tmp_path / "map.npy", mmap_mode="r").transpose(0, 2, 1)  # a strided memory map
    keep = mask & (ood != 255)
    for kw in (dict(), dict(positive="in"), dict(convention="openood", positive=None),
               dict(aupr="trapezoid", tpr=0.8)):
        got = calibkit.pixel_ood_metrics(score_map, ood, mask=mask, backend=backend, **kw)
        kw.setdefault("positive", "out")
        ref = calibkit.ood_metrics(np.asarray(score_map)[keep & (ood == 0)], np.asarray(score_map)[keep & (ood == 1)],
                                   backend=backend, **kw)
        assert got == ref
    assert 0.5 < got.auroc <= 1.0
    b = calibkit.pixel_ood_metrics(score_map, ood == 1, ignore_index=None, backend=backend)
    assert b == calibkit.ood_metrics(np.asarray(score_map)[ood != 1], np.asarray(score_map)[ood == 1],
                                     positive="out", backend=backend)


def test_pixel_ood_errors():
    s = np.random.default_rng(0).random((2, 3, 4))
    lab = np.zeros((2, 3, 4), np.int64)
    lab[1, 2, 3] = 1
    bad = lab.copy()
    bad[0, 1, 2] = 3
    with pytest.raises(ValueError, match=re.escape("ood_labels[0, 1, 2] = 3 is not 0")):
        calibkit.pixel_ood_metrics(s, bad)
    with pytest.raises(ValueError, match="ood_labels must have the shape of scores"):
        calibkit.pixel_ood_metrics(s, lab[0])
    with pytest.raises(ValueError, match="mask must have the shape of scores"):
        calibkit.pixel_ood_metrics(s, lab, mask=np.ones(3, bool))
    with pytest.raises(TypeError, match="ood_labels must be integers"):
        calibkit.pixel_ood_metrics(s, lab.astype(float))
    with pytest.raises(ValueError, match=r"no counted out-of-distribution \(label 1\) pixel"):
        calibkit.pixel_ood_metrics(s, np.zeros((2, 3, 4), int))
    with pytest.raises(ValueError, match=r"no counted in-distribution \(label 0\) pixel"):
        calibkit.pixel_ood_metrics(s, np.where(lab == 1, 1, 255))
    nan = s.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape("scores[0, 0, 0] = nan is not finite")):
        calibkit.pixel_ood_metrics(nan, lab)
    np.testing.assert_array_equal(calibkit.pixel_ood_metrics(nan, np.where(np.isnan(nan), 255, lab)).auroc,
                                  calibkit.pixel_ood_metrics(s, np.where(np.isnan(nan), 255, lab)).auroc)


@pytest.mark.parametrize("layout", ["class-second", "channel-last", "sliced"])
def test_ensemble_accumulator_dense(backend, layout, tmp_path):
    x, axis = _passes(layout, np.float32, tmp_path)
    member_axis = 1 if axis == 2 else -1
    acc = calibkit.EnsembleAccumulator(from_logits=True, backend=backend)
    for s in range(x.shape[0]):
        acc.update(x[s], axis=member_axis)
    got = acc.compute()
    ref = calibkit.decompose(x, from_logits=True, axis=axis, backend=backend, return_mean=True)
    for t in ("total", "aleatoric", "epistemic", "prediction"):
        np.testing.assert_array_equal(getattr(got, t), getattr(ref, t), err_msg=t)
    np.testing.assert_allclose(got.variance, ref.variance, rtol=1e-12, atol=1e-15)  # Welford vs two passes
    np.testing.assert_array_equal(got.mean, ref.mean)
    bad = np.array(x[0], copy=True)
    idx = (1, 2, 2, 3) if axis == 2 else (1, 2, 3, 2)
    bad[idx] = np.nan
    state = acc._sum.copy()
    with pytest.raises(ValueError, match=re.escape(f"member[{', '.join(map(str, idx))}] = nan")):
        acc.update(bad, axis=member_axis)
    assert acc.count == x.shape[0] and np.array_equal(acc._sum, state)  # unchanged by the bad pass
    with pytest.raises(ValueError, match="earlier passes"):
        acc.update(np.asarray(x[0])[:1], axis=member_axis)
    with pytest.raises(ValueError, match="earlier passes"):
        acc.update(np.asarray(x[0])[:, :, 0, 0] if axis == 2 else np.asarray(x[0])[:, 0, 0])
