"""Smooth ECE (calibkit.smooth_ece, smooth_reliability_curve, the smooth_grid kernels, streaming)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import calibkit
from calibkit import _backend
from calibkit.smooth import AUTO_GRID_SIZES, grid_size
from calibkit.streaming import encode_state

from conftest import data_dir

TOL = 1e-9


def _relplot():
    return pytest.importorskip("relplot")


def _binary(rng, n, power=1.5):
    p = rng.random(n)
    return p, (rng.random(n) < p ** power).astype(np.int64)


def _top_label(rng, n, k, scale=3.0):
    z = rng.normal(size=(n, k)) * scale
    return z, rng.integers(0, k, n)


def _confidences(scores, labels, from_logits):
    """relplot's own (confidence, correctness) of float64 rows."""
    relplot = _relplot()
    return relplot.multiclass_logits_to_confidences(np.asarray(scores, np.float64), labels, probs=not from_logits)


# ----------------------------------------------------------------------------
# Against relplot
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 500, 4000])
def test_binary_matches_relplot(backend, n):
    relplot = _relplot()
    rng = np.random.default_rng(n)
    for power in (1.0, 2.0, 0.5):
        p, y = _binary(rng, n, power)
        assert calibkit.smooth_ece(p, y, backend=backend) == pytest.approx(relplot.smECE(p, y), abs=TOL)
        for sigma in (0.003, 0.05, 0.3):
            got = calibkit.smooth_ece(p, y, bandwidth=sigma, backend=backend)
            assert got == pytest.approx(relplot.smECE_sigma(p, y, sigma), abs=TOL)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("k", [2, 5, 40])
def test_top_label_matches_relplot(backend, from_logits, k):
    relplot = _relplot()
    rng = np.random.default_rng(k)
    z, y = _top_label(rng, 3000, k)
    scores = z if from_logits else np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    f, c = _confidences(scores, y, from_logits)
    assert calibkit.smooth_ece(scores, y, from_logits=from_logits, backend=backend) == pytest.approx(
        relplot.smECE(f, c), abs=TOL)
    assert calibkit.smooth_ece(scores, y, from_logits=from_logits, bandwidth=0.02, backend=backend) == \
        pytest.approx(relplot.smECE_sigma(f, c, 0.02), abs=TOL)


def test_plain_gaussian_kernel_matches_relplot(backend, monkeypatch):
    relplot = _relplot()
    from relplot import kernels, metrics

    rng = np.random.default_rng(7)
    p, y = _binary(rng, 2000)
    monkeypatch.setattr(metrics, "_get_default_kernel", lambda: kernels.GaussianKernel)
    assert calibkit.smooth_ece(p, y, kernel="gaussian", backend=backend) == pytest.approx(relplot.smECE(p, y), abs=TOL)
    assert calibkit.smooth_ece(p, y, kernel="gaussian", bandwidth=0.07, backend=backend) == pytest.approx(
        relplot.smECE_sigma(p, y, 0.07), abs=TOL)


@pytest.mark.parametrize("case", ["ties", "zeros_and_ones", "one_class_0", "one_class_1", "one_row", "two_rows",
                                  "all_at_half", "well_calibrated"])
def test_adversarial_binary_matches_relplot(backend, case):
    relplot = _relplot()
    rng = np.random.default_rng(11)
    n = 3000
    if case == "ties":
        p = rng.choice([0.1, 0.25, 0.5, 0.9], n)
        y = (rng.random(n) < p).astype(np.int64)
    elif case == "zeros_and_ones":
        p = rng.choice([0.0, 1.0, 0.3], n)
        y = rng.integers(0, 2, n)
    elif case.startswith("one_class"):
        p = rng.random(n)
        y = np.full(n, int(case[-1]))
    elif case == "one_row":
        p, y = np.array([0.7]), np.array([0])
    elif case == "two_rows":
        p, y = np.array([0.0, 1.0]), np.array([1, 1])
    elif case == "all_at_half":
        p = np.full(n, 0.5)
        y = rng.integers(0, 2, n)
    else:  # a tiny smECE: the bisection goes down to its smallest bandwidths and grids
        p = rng.random(200000)
        y = (rng.random(200000) < p).astype(np.int64)
    got = calibkit.smooth_ece(p, y, backend=backend)
    assert got == pytest.approx(relplot.smECE(p, y), abs=TOL)
    curve = calibkit.smooth_reliability_curve(p, y, backend=backend)
    assert curve.smooth_ece == got


def test_real_dumps_match_relplot(backend):
    relplot = _relplot()
    root = data_dir()
    files = ["netcal_cifar10_lenet5.npz", "focal_cifar10_resnet50_brier.npz", "focal_cifar100_densenet121_brier.npz"]
    if not all((root / f).exists() for f in files):
        pytest.skip("the shared data are not available")
    for name in files:
        d = np.load(root / name)
        if "probs" in d:
            probs, y = d["probs"], d["labels"]
            f, c = _confidences(probs, y, False)
            assert calibkit.smooth_ece(probs, y, backend=backend) == pytest.approx(relplot.smECE(f, c), abs=TOL)
        logits, y = (d["logits"], d["labels"]) if "logits" in d else (d["test_logits"], d["test_labels"])
        f, c = _confidences(logits, y, True)
        expected = relplot.smECE(f, c)
        # float64 rows: relplot's value to 1e-9; the float32 rows as shipped: the float softmax's exp has a
        # relative error below 3e-7 (binning.hpp), so the confidences, and the smooth ECE, move by that much
        assert calibkit.smooth_ece(logits.astype(np.float64), y, from_logits=True, backend=backend) == \
            pytest.approx(expected, abs=TOL)
        assert calibkit.smooth_ece(logits, y, from_logits=True, backend=backend) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("kind", ["binary", "top-label"])
def test_curve_matches_relplot_diagram_data(backend, kind):
    relplot = _relplot()
    rng = np.random.default_rng(5)
    if kind == "binary":
        scores, y = _binary(rng, 3000)
        f, c = scores, y
    else:
        scores, y = _top_label(rng, 3000, 6)
        f, c = _confidences(scores, y, True)
    d = relplot.prepare_rel_diagram(f, c, plot_confidence_band=False, report_CE_std=False)
    got = calibkit.smooth_reliability_curve(scores, y, from_logits=kind != "binary", backend=backend)
    np.testing.assert_allclose(got.mesh, d["mesh"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(got.curve, d["mu"], rtol=0, atol=TOL)
    np.testing.assert_allclose(got.density, d["density"], rtol=0, atol=TOL)
    assert got.bandwidth == d["sigma"]
    assert got.smooth_ece == pytest.approx(d["ce"], abs=TOL)
    fixed = calibkit.smooth_reliability_curve(scores, y, from_logits=kind != "binary", bandwidth=0.1,
                                              n_points=50, backend=backend)
    ker = relplot.kernels.ReflectedGaussianKernel(0.1)
    t = np.linspace(0, 1, 50)
    np.testing.assert_allclose(fixed.curve, ker.smooth(f, np.asarray(c, np.float64), t)[0], rtol=0, atol=TOL)
    np.testing.assert_allclose(fixed.density, ker.kde(f, t), rtol=0, atol=TOL)


# ----------------------------------------------------------------------------
# The kernel against a NumPy reference, dtypes, layouts, backends, threads
# ----------------------------------------------------------------------------


def _reference_grid(f, y, w, sizes, with_labels=False):
    """Plain NumPy: each value spread onto each grid by linear interpolation (relplot's smooth_round_to_grid)."""
    out = []
    for G in sizes:
        x = f * (G - 1)
        b = np.clip(x.astype(np.int64), 0, G - 2)
        t = x - b
        cols = [w, w * (f - y)] + ([w * y] if with_labels else [])
        g = np.zeros((G, len(cols)))
        for j, v in enumerate(cols):
            np.add.at(g[:, j], b, (1 - t) * v)
            np.add.at(g[:, j], b + 1, t * v)
        out.append(g)
    return np.concatenate(out)


def _kernel(backend):
    return _backend.kernels(backend)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_grid_matches_numpy_reference(backend, dtype, layout):
    rng = np.random.default_rng(3)
    n, k = 700, 6
    probs = rng.dirichlet(np.ones(k) * 0.5, n).astype(dtype)
    if layout == "F":
        probs = np.asfortranarray(probs)
    elif layout == "strided":  # every other row and column of a larger array, columns reversed
        base = np.zeros((2 * n, 2 * k), dtype)
        base[::2, ::-2] = probs
        probs = base[::2, ::-2]
    y = rng.integers(0, k, n)
    w = rng.random(n)
    before = probs.copy()
    sizes = np.array([5, 1001, 77], np.int64)
    r = _kernel(backend).smooth_grid(probs, y, w, False, sizes, True)
    p64 = probs.astype(np.float64)
    f = p64.max(axis=1)
    c = (p64.argmax(axis=1) == y).astype(np.float64)
    np.testing.assert_allclose(r["grid"], _reference_grid(f, c, w, sizes, True), rtol=1e-12, atol=1e-12)
    assert r["count"] == n and r["weight"] == pytest.approx(w.sum(), rel=1e-14)
    np.testing.assert_array_equal(probs, before)  # read in place, never written
    # binary rows of every dtype and a strided view
    pb = rng.random(2 * n).astype(dtype)[::2]
    yb = rng.integers(0, 2, n)
    r = _kernel(backend).smooth_grid(pb, yb, None, False, sizes)
    f = pb.astype(np.float64)
    np.testing.assert_allclose(r["grid"], _reference_grid(f, yb, np.ones(n), sizes), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_backends_agree(dtype):
    """The same grid sums, bit for bit, except from float64 logits (binning's double softmax: the C++ lanes'
    exp and Numba's math.exp differ in the last bits)."""
    rng = np.random.default_rng(9)
    n = 5000
    p = rng.random(n).astype(dtype)
    yb = rng.integers(0, 2, n)
    w = rng.random(n)
    grids = [_kernel(b).smooth_grid(p, yb, w, False, AUTO_GRID_SIZES, True) for b in ("cpp", "numba")]
    assert np.array_equal(grids[0]["grid"], grids[1]["grid"]) and grids[0]["weight"] == grids[1]["weight"]
    for k in (2, 5, 16, 40):
        z = (rng.normal(size=(n, k)) * 3).astype(dtype)
        y = rng.integers(0, k, n)
        probs = np.exp(z.astype(np.float64))
        probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype)
        a, b = (_kernel(x).smooth_grid(probs, y, None, False, AUTO_GRID_SIZES)["grid"] for x in ("cpp", "numba"))
        assert np.array_equal(a, b)
        a, b = (_kernel(x).smooth_grid(z, y, None, True, AUTO_GRID_SIZES)["grid"] for x in ("cpp", "numba"))
        if dtype == np.float64:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-10)
        else:
            assert np.array_equal(a, b)
        a, b = (calibkit.smooth_ece(z, y, from_logits=True, backend=x) for x in ("cpp", "numba"))
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)


def test_bit_identical_for_any_thread_count(backend):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(30000, 100)).astype(np.float32)  # 4 chunks of 6643 rows (and a part)
    y = rng.integers(0, 100, 30000)
    p, yb = _binary(rng, 1_500_000)  # 3 chunks of 664384 rows
    previous = calibkit.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            calibkit.set_num_threads(threads)
            k = _kernel(backend)
            results.append((k.smooth_grid(z, y, None, True, AUTO_GRID_SIZES)["grid"],
                            k.smooth_grid(p, yb, None, False, AUTO_GRID_SIZES)["grid"]))
    finally:
        calibkit.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


def test_weights_rescaled_to_mean_one(backend):
    rng = np.random.default_rng(4)
    p, y = _binary(rng, 1000)
    plain = calibkit.smooth_ece(p, y, backend=backend)
    assert calibkit.smooth_ece(p, y, sample_weight=np.full(1000, 7.0), backend=backend) == pytest.approx(plain,
                                                                                                       abs=1e-12)
    # integer weights of 0/1 select rows (the normalisation to mean 1 then uses all N rows: not the subset)
    w = rng.random(1000)
    a = calibkit.smooth_ece(p, y, sample_weight=w, backend=backend)
    assert a == pytest.approx(calibkit.smooth_ece(p, y, sample_weight=w * 1e-3, backend=backend), abs=1e-12)


def test_auto_grid_sizes_cover_every_bandwidth_the_search_tries():
    sigmas = [1.0] + [k / 1024 for k in range(2, 1024)]
    assert {grid_size(s) for s in sigmas} == set(AUTO_GRID_SIZES.tolist())
    assert len(AUTO_GRID_SIZES) == 10


# ----------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 400), cuts=st.lists(st.integers(0, 400), max_size=4), weighted=st.booleans(),
       top_label=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_split_merge_equals_one_pass(n, cuts, weighted, top_label, seed):
    rng = np.random.default_rng(seed)
    if top_label:
        scores, y = _top_label(rng, n, 4)
    else:
        scores, y = _binary(rng, n)
        scores[rng.random(n) < 0.1] = 1.0  # scores exactly 1 (and ties)
    w = rng.random(n) if weighted else None
    bounds = sorted({0, n, *[c % (n + 1) for c in cuts]})
    total = calibkit.CalibrationAccumulator(smooth=True, from_logits=top_label)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi == lo:
            continue
        part = calibkit.CalibrationAccumulator(smooth=True, from_logits=top_label)
        part.update(scores[lo:hi], y[lo:hi], None if w is None else w[lo:hi])
        total.merge(calibkit.CalibrationAccumulator.from_bytes(part.to_bytes()))
    expected = calibkit.smooth_ece(scores, y, from_logits=top_label, sample_weight=w)
    assert total.compute().smooth_ece == pytest.approx(expected, abs=TOL)


def test_streaming_both_backends_temperature_and_binary_logits(backend):
    rng = np.random.default_rng(8)
    z, y = _top_label(rng, 5000, 7)
    z = z.astype(np.float32)
    acc = calibkit.CalibrationAccumulator(smooth=True, from_logits=True, temperature=2.0, backend=backend)
    for lo in range(0, 5000, 1300):
        acc.update(z[lo:lo + 1300], y[lo:lo + 1300])
    expected = calibkit.smooth_ece(z.astype(np.float64) / 2.0, y, from_logits=True, backend=backend)
    assert acc.compute().smooth_ece == pytest.approx(expected, abs=1e-6)  # float32 logits: the float softmax
    s = rng.normal(size=3000)
    yb = rng.integers(0, 2, 3000)
    acc = calibkit.CalibrationAccumulator(smooth=True, from_logits=True, backend=backend).update(s, yb)
    assert acc.compute().smooth_ece == pytest.approx(calibkit.smooth_ece(s, yb, from_logits=True), abs=TOL)
    assert calibkit.CalibrationAccumulator(from_logits=True, backend=backend).update(s, yb).compute().smooth_ece \
        is None


def test_state_roundtrip_and_old_states_load():
    rng = np.random.default_rng(1)
    p, y = _binary(rng, 2000)
    acc = calibkit.CalibrationAccumulator(smooth=True).update(p, y)
    back = calibkit.CalibrationAccumulator.from_bytes(acc.to_bytes())
    assert back.smooth and back.compute().smooth_ece == acc.compute().smooth_ece
    assert calibkit.CalibrationAccumulator.from_dict(acc.to_dict()).compute().smooth_ece == acc.compute().smooth_ece
    assert acc.compute().to_dict()["smooth_ece"] == acc.compute().smooth_ece
    # a state written before smooth ECE existed: no "smooth" key, no array
    old = calibkit.CalibrationAccumulator().update(p, y)
    meta = old._meta()
    assert "smooth" not in meta["config"] and "smooth" not in old._arrays()  # the same bytes as before
    loaded = calibkit.CalibrationAccumulator.from_bytes(encode_state("CalibrationAccumulator", meta, old._arrays()))
    assert loaded.to_bytes() == old.to_bytes()
    assert not loaded.smooth and loaded.compute().smooth_ece is None
    assert loaded.compute().ece == old.compute().ece
    with pytest.raises(ValueError, match="cannot merge accumulators with different smooth"):
        acc.merge(old)
    # a smooth state missing its array, or with a forged one, is rejected
    arrays = acc._arrays()
    del arrays["smooth"]
    with pytest.raises(ValueError, match="corrupt calibration state: arrays"):
        calibkit.CalibrationAccumulator.from_bytes(encode_state("CalibrationAccumulator", acc._meta(), arrays))
    arrays = acc._arrays()
    arrays["smooth"] = arrays["smooth"][::-1] * [1.0, 2.0]
    with pytest.raises(ValueError, match="corrupt calibration state: the smooth grids do not add up"):
        calibkit.CalibrationAccumulator.from_bytes(encode_state("CalibrationAccumulator", acc._meta(), arrays))


def test_state_with_scores_at_zero_and_one_loads():
    p = np.array([0.0, 0.5, 1.0, 0.2])
    y = np.array([0, 1, 1, 0])
    acc = calibkit.CalibrationAccumulator(smooth=True).update(p, y)
    back = calibkit.CalibrationAccumulator.from_bytes(acc.to_bytes())
    assert back.compute().smooth_ece == calibkit.smooth_ece(p, y)


def test_windowed_smooth(backend):
    rng = np.random.default_rng(6)
    p, y = _binary(rng, 5000)
    win = calibkit.WindowedAccumulator(window=1600, n_blocks=4, smooth=True, backend=backend)
    for lo in range(0, 5000, 1000):
        win.update(p[lo:lo + 1000], y[lo:lo + 1000])
    n = win.count
    expected = calibkit.smooth_ece(p[-n:], y[-n:], backend=backend)
    assert win.compute().smooth_ece == pytest.approx(expected, abs=TOL)
    assert calibkit.WindowedAccumulator.from_bytes(win.to_bytes()).compute().smooth_ece == win.compute().smooth_ece
    decay = 0.999
    dec = calibkit.WindowedAccumulator(decay=decay, smooth=True, backend=backend)
    for lo in range(0, 5000, 1000):
        dec.update(p[lo:lo + 1000], y[lo:lo + 1000])
    w = decay ** np.arange(4999, -1, -1, dtype=np.float64)
    assert dec.compute().smooth_ece == pytest.approx(calibkit.smooth_ece(p, y, sample_weight=w), abs=TOL)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

P = np.array([0.2, 0.7, 0.9])
Y = np.array([0, 1, 1])
Z = np.array([[0.1, 2.0], [1.0, np.nan], [0.3, 0.1]])


@pytest.mark.parametrize("call, exc, message", [
    (lambda b: calibkit.smooth_ece(P, Y, kernel="box", backend=b), ValueError,
     r"kernel must be one of \('reflected_gaussian', 'gaussian'\), got 'box'"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth="fast", backend=b), ValueError,
     r"bandwidth must be 'auto' or a finite number >= 0.0001, got 'fast'"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth=0, backend=b), ValueError, r"bandwidth must be .* got 0"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth=-0.1, backend=b), ValueError, r"bandwidth .* got -0.1"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth=float("nan"), backend=b), ValueError, r"bandwidth .* got nan"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth=float("inf"), backend=b), ValueError, r"bandwidth .* got inf"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth=1e-5, backend=b), ValueError, r"bandwidth .* got 1e-05"),
    (lambda b: calibkit.smooth_ece(P, Y, bandwidth=True, backend=b), ValueError, r"bandwidth .* got True"),
    (lambda b: calibkit.smooth_ece(np.array([0.2, np.nan, 0.1]), Y, backend=b), ValueError,
     r"scores\[1\] = nan is not finite"),
    (lambda b: calibkit.smooth_ece(np.array([0.2, 1.5, 0.1]), Y, backend=b), ValueError,
     r"scores\[1\] = 1.5 is not a probability"),
    (lambda b: calibkit.smooth_ece(P, np.array([0, 2, 1]), backend=b), ValueError, r"labels\[1\] = 2 is not 0 or 1"),
    (lambda b: calibkit.smooth_ece(Z, np.array([0, 1, 0]), from_logits=True, backend=b), ValueError,
     r"scores\[1, 1\] = nan is not finite"),
    (lambda b: calibkit.smooth_ece(Z[[0, 2]], np.array([0, 5]), from_logits=True, backend=b), ValueError,
     r"labels\[1\] = 5 is out of range for n_classes=2"),
    (lambda b: calibkit.smooth_ece(P, Y, sample_weight=[1.0, -1.0, 1.0], backend=b), ValueError,
     r"sample_weight\[1\] = -1.0 is negative"),
    (lambda b: calibkit.smooth_ece(P, Y, sample_weight=[0.0, 0.0, 0.0], backend=b), ValueError,
     r"sample_weight sums to 0"),
    (lambda b: calibkit.smooth_reliability_curve(P, Y, n_points=1, backend=b), ValueError,
     r"n_points must be an integer in \[2, 100000\], got 1"),
    (lambda b: calibkit.CalibrationAccumulator(smooth="yes", backend=b), TypeError,
     r"smooth must be True or False, got 'yes'"),
    (lambda b: calibkit.plot.smooth_reliability_diagram(P), TypeError, r"curve must be a SmoothReliabilityCurve"),
])
def test_bad_input(backend, call, exc, message):
    with pytest.raises(exc, match=message):
        call(backend)


def test_bad_stream_batch_adds_nothing(backend):
    acc = calibkit.CalibrationAccumulator(smooth=True, backend=backend).update(P, Y)
    before = acc._smooth.copy()
    with pytest.raises(ValueError, match=r"scores\[1\] = nan"):
        acc.update(np.array([0.2, np.nan, 0.1]), Y)
    assert np.array_equal(acc._smooth, before)


RISKY = textwrap.dedent("""
    import numpy as np
    import calibkit._core as core
    from calibkit import _numba as nb
    p = np.random.default_rng(0).random(100)
    y = np.zeros(100, np.int64)
    z = np.zeros((100, 3))
    cases = [
        (p, y, None, False, np.array([2**40], np.int64)),
        (p, y, None, False, np.array([-5], np.int64)),
        (p, y, None, False, np.array([], np.int64)),
        (p, y, None, False, np.full(65, 10, np.int64)),
        (p, y, None, False, np.array([1001.0])),
        (p, y, None, False, [1001]),
        (p, y[:50], None, False, np.array([1001], np.int64)),
        (p, y, np.ones(3), False, np.array([1001], np.int64)),
        (p, y.astype(np.int32), None, False, np.array([1001], np.int64)),
        (p, y, None, True, np.array([1001], np.int64)),
        (z, y[:99], None, False, np.array([1001], np.int64)),
        (z.astype(np.int64), y, None, False, np.array([1001], np.int64)),
        (np.zeros((100, 0)), y, None, False, np.array([1001], np.int64)),
        (np.zeros((2, 2, 2)), y[:2], None, False, np.array([1001], np.int64)),
    ]
    for mod in (core, nb):
        for i, args in enumerate(cases):
            try:
                mod.smooth_grid(*args)
            except (TypeError, ValueError) as exc:
                continue
            raise SystemExit(f"{mod.__name__} case {i} did not raise")
        try:
            mod.smooth_grid(z, y, None, True, np.array([1001], np.int64), False, 0.0)
        except ValueError as exc:
            assert "inverse_temperature" in str(exc)
        else:
            raise SystemExit("inverse_temperature=0 did not raise")
    print("ok")
""")


def test_risky_native_calls_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-c", RISKY], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    p, y = _binary(rng, 1000)
    curve = calibkit.smooth_reliability_curve(p, y)
    ax = Figure().subplots()
    fig = calibkit.plot.smooth_reliability_diagram(curve, ax=ax, name="model")
    assert fig is ax.figure and len(ax.lines) == 2
    path = tmp_path / "smooth.png"
    curve.plot(path=path)
    assert path.stat().st_size > 1000
    assert curve.to_dict()["bandwidth"] == curve.bandwidth
