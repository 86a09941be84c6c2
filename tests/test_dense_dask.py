"""calibkit.dask on dense maps (issue 17): blocks along N and the spatial axes, ignore_index, mask.

Results equal the NumPy dense update (:meth:`calibkit.CalibrationAccumulator.update` on the computed
arrays) and the metrics of the explicitly flattened kept rows: counts exactly, sums to rounding (they are
added per block). The synchronous scheduler keeps these tests fast; one test runs on a LocalCluster.
"""

import re

import numpy as np
import pytest

import calibkit
from calibkit._dense import flatten_reference

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
ckdask = pytest.importorskip("calibkit.dask")

rng = np.random.default_rng(5)
N, K, H, W = 4, 5, 12, 10
Z = rng.normal(size=(N, K, H, W)) * 2
Y = np.argmax(Z + rng.gumbel(size=Z.shape) * 2, axis=1)
Y[0, :3] = 255
Y[3, 5, 2:] = 255
MASK = rng.random((N, H, W)) > 0.2


@pytest.fixture(autouse=True)
def synchronous():
    with dask.config.set(scheduler="synchronous"):
        yield


def layout(name, dtype, tmp_path):
    z = Z.astype(dtype)
    if name == "class-second":
        return z, Y, MASK, 1
    if name == "channel-last":
        return np.ascontiguousarray(np.moveaxis(z, 1, -1)), Y, MASK, -1
    if name == "sliced":
        return z[:, :, ::2, 1:], Y[:, ::2, 1:], MASK[:, ::2, 1:], 1
    if name == "fortran":
        return np.asfortranarray(z), Y, MASK, 1
    if name == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=dtype, shape=z.shape)
        m[...] = z
        m.flush()
        return np.load(tmp_path / "z.npy", mmap_mode="r"), Y, MASK, 1
    raise AssertionError(name)


def chunked(s, y, m, axis, spatial=(5, 4)):
    """Dask arrays chunked along N (2) and the spatial axes, labels / mask chunked differently on purpose."""
    h, w = spatial
    chunks = (2, -1, h, w) if axis == 1 else (2, h, w, -1)
    return da.from_array(s, chunks=chunks), da.from_array(y, chunks=(1, 6, -1)), da.from_array(m, chunks=3)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", ["class-second", "channel-last", "sliced", "fortran", "memmap"])
def test_dense_metrics_equal_numpy(name, dtype, backend, tmp_path):
    s, y, m, axis = layout(name, dtype, tmp_path)
    before = [np.array(a, copy=True) for a in (s, y, m)]
    ds, dy, dm = chunked(s, y, m, axis)
    kw = dict(axis=axis, ignore_index=255, mask=dm)
    acc = ckdask.accumulate(ds, dy, from_logits=True, classwise=True, backend=backend, **kw)
    ref = calibkit.CalibrationAccumulator(from_logits=True, classwise=True, backend=backend)
    ref.update(s, y, axis=axis, ignore_index=255, mask=m)
    a, b = acc.compute(), ref.compute()
    assert a.count == b.count == int((m & (y != 255)).sum())
    np.testing.assert_array_equal(acc._bins[0], ref._bins[0])
    np.testing.assert_array_equal(acc._fine[0], ref._fine[0])
    for f in ("ece", "mce", "rmsce", "ace", "classwise_ece", "brier", "nll", "accuracy", "mean_confidence"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-12, atol=1e-15, err_msg=f)
    fs, fy, _ = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m)
    for norm in ("l1", "l2", "max"):
        want = calibkit.calibration_error(fs, fy, from_logits=True, norm=norm, backend=backend)
        got = ckdask.calibration_error(ds, dy, from_logits=True, norm=norm, backend=backend, **kw)
        assert got == pytest.approx(want, rel=1e-12), norm
    t = ckdask.reliability_table(ds, dy, from_logits=True, backend=backend, **kw)
    rt = calibkit.reliability_table(fs, fy, from_logits=True, backend=backend)
    np.testing.assert_array_equal(t.count, rt.count)
    np.testing.assert_allclose(t.accuracy, rt.accuracy, rtol=1e-12)
    np.testing.assert_allclose(t.mean_confidence, rt.mean_confidence, rtol=1e-12)
    for x, x0 in zip((s, y, m), before):
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("name", ["class-second", "channel-last", "sliced"])
def test_dense_fit_temperature_equals_the_flattened_fit(name, backend, tmp_path):
    s, y, m, axis = layout(name, np.float32, tmp_path)
    ds, dy, _ = chunked(s, y, m, axis)
    ts = ckdask.fit_temperature(ds, dy, axis=axis, ignore_index=255, mask=m, backend=backend)
    fs, fy, _ = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m)
    ref = calibkit.TemperatureScaling(backend=backend).fit(fs, fy)
    assert ts.temperature_ == pytest.approx(ref.temperature_, rel=1e-10)
    assert ts.n_classes_ == K


def test_blocks_along_n_only_give_the_numpy_bootstrap():
    """Blocks of whole images without ignored pixels: the stream positions, hence the replicates, are NumPy's."""
    dz = da.from_array(Z, chunks=(1, -1, -1, -1))
    y = np.where(Y == 255, 0, Y)
    acc = ckdask.accumulate(dz, da.from_array(y, chunks=(1, -1, -1)), from_logits=True, bootstrap=5, axis=1,
                            mask=np.ones_like(MASK))
    ref = calibkit.CalibrationAccumulator(from_logits=True, bootstrap=5).update(Z, y)
    np.testing.assert_allclose(acc._boot, ref._boot, rtol=1e-12)
    np.testing.assert_array_equal(acc._boot[:, 0] > 0, ref._boot[:, 0] > 0)


def test_two_d_and_binary_input_with_mask_and_ignore_index():
    fs, fy, _ = flatten_reference(Z, Y)
    m = MASK.reshape(-1)
    keep = m & (fy != 255)
    # (N, K) rows chunked along K are rechunked (as without mask); maps chunked along K are an error
    got = ckdask.calibration_error(da.from_array(fs, chunks=(100, 2)), da.from_array(fy, chunks=70),
                                   from_logits=True, ignore_index=255, mask=m)
    assert got == pytest.approx(calibkit.calibration_error(fs[keep], fy[keep], from_logits=True), rel=1e-12)
    p = rng.random(300)
    y = rng.integers(0, 2, 300)
    y[::7] = -1
    keep = m[:300] & (y != -1)
    got = ckdask.calibration_error(da.from_array(p, chunks=64), da.from_array(y, chunks=64), ignore_index=-1,
                                   mask=m[:300])
    assert got == pytest.approx(calibkit.calibration_error(p[keep], y[keep]), rel=1e-12)
    bad = y.copy()
    i = int(np.flatnonzero(keep)[-3])
    bad[i] = 3
    with pytest.raises(ValueError, match=rf"labels\[{i}\] = 3 is not 0 or 1"):
        ckdask.accumulate(da.from_array(p, chunks=64), da.from_array(bad, chunks=64), ignore_index=-1, mask=m[:300])


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("what", ["label", "score"])
def test_errors_name_the_global_position(what, axis, backend):
    z, y = Z.copy(), Y.copy()
    if what == "label":
        y[3, 7, 6] = 9
        pattern = r"labels\[3, 7, 6\] = 9 is out of range for n_classes=5"
    else:
        z[3, 2, 7, 6] = np.inf
        pattern = r"scores\[3, 2, 7, 6\] = inf is not finite" if axis == 1 else \
            r"scores\[3, 7, 6, 2\] = inf is not finite"
    if axis == -1:
        z = np.moveaxis(z, 1, -1)
    ds, dy, dm = chunked(z, y, MASK, axis)
    with pytest.raises(ValueError, match=pattern) as info:
        ckdask.accumulate(ds, dy, from_logits=True, axis=axis, ignore_index=255, backend=backend)
    assert info.value.position == (3, 7, 6)
    with pytest.raises(ValueError, match=pattern.replace("scores", "logits")):
        ckdask.fit_temperature(ds, dy, axis=axis, ignore_index=255, backend=backend)


def test_all_ignored():
    ds, dy, _ = chunked(Z, Y, MASK, 1)
    nothing = np.zeros_like(MASK)
    message = "every pixel of scores is ignored (labels == ignore_index=255 or mask is False everywhere)"
    for f in (ckdask.calibration_error, ckdask.reliability_table):
        with pytest.raises(ValueError, match=re.escape(message)):
            f(ds, dy, from_logits=True, ignore_index=255, mask=nothing)
    with pytest.raises(ValueError, match=re.escape(message.replace("scores", "logits"))):
        ckdask.fit_temperature(ds, dy, ignore_index=255, mask=nothing)
    acc = ckdask.accumulate(ds, dy, from_logits=True, mask=nothing)  # a monitor's state: empty, not an error
    assert acc.count == 0
    # blocks with nothing kept next to blocks with rows: they add nothing
    part = np.zeros_like(MASK)
    part[1] = True
    got = ckdask.calibration_error(ds, dy, from_logits=True, ignore_index=255, mask=part)
    fs, fy, _ = flatten_reference(Z, Y, ignore_index=255, mask=part)
    assert got == pytest.approx(calibkit.calibration_error(fs, fy, from_logits=True), rel=1e-12)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda ds, dy: ckdask.accumulate(ds.rechunk({1: 2}), dy, ignore_index=255), ValueError,
     r"scores is chunked along its class axis 1 \(chunks \(2, 2, 1\)\).*rechunk\(\{1: -1\}\)"),
    (lambda ds, dy: ckdask.fit_temperature(ds.rechunk({1: 2}), dy), ValueError,
     "logits is chunked along its class axis 1"),
    (lambda ds, dy: ckdask.accumulate(ds, dy[:, 1:]), ValueError, r"labels must have shape \(4, 12, 10\)"),
    (lambda ds, dy: ckdask.accumulate(ds, dy, mask=MASK[:2]), ValueError, r"mask must have shape \(4, 12, 10\)"),
    (lambda ds, dy: ckdask.accumulate(ds, dy, mask=MASK.astype(np.uint8)), TypeError, "mask must be a boolean"),
    (lambda ds, dy: ckdask.accumulate(ds, dy, axis=2), ValueError, "axis must be 1"),
    (lambda ds, dy: ckdask.accumulate(ds, dy, ignore_index="255"), TypeError, "ignore_index must be an integer"),
    (lambda ds, dy: ckdask.calibration_error(ds[:, :, :0], dy[:, :0], ignore_index=255), ValueError,
     "the arrays have no rows"),
])
def test_bad_input_names_the_argument(call, exc, pattern):
    ds, dy, _ = chunked(Z, Y, MASK, 1)
    with pytest.raises(exc, match=pattern):
        call(ds, dy)


def test_unknown_chunk_sizes():
    ds, dy, _ = chunked(Z, Y, MASK, 1)
    sel = ds[da.from_array(np.array([True, False, True, True]), chunks=2)]
    with pytest.raises(ValueError, match="unknown chunk sizes.*compute_chunk_sizes"):
        ckdask.accumulate(sel, dy[:3], ignore_index=255)


def test_on_a_local_cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        ds, dy, dm = chunked(Z, Y, MASK, 1)
        got = ckdask.calibration_error(ds, dy, from_logits=True, ignore_index=255, mask=dm)
    fs, fy, _ = flatten_reference(Z, Y, ignore_index=255, mask=MASK)
    assert got == pytest.approx(calibkit.calibration_error(fs, fy, from_logits=True), rel=1e-12)
