"""Bootstrap intervals of the smooth ECE and of the cumulative measures (issue 15, section 5)."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import load_real

import calibkit
from calibkit import cumulative as cu
from calibkit import smooth as sm
from calibkit.cumulative import poisson_multiplicities


def _data(seed, n=300, power=1.5):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p ** power).astype(np.int64)
    return p, y


# -- the Poisson multiplicities are the stream's ---------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 12345, 2**64 - 1])
def test_multiplicities_are_the_streams(backend, seed):
    """Replicate b of row i has the multiplicity of CalibrationAccumulator(bootstrap=B, seed=seed): with one bin,
    the state's replicate sums are the sums of the multiplicities (and of the multiplicities times the label)."""
    p, y = _data(1, n=3000)
    n_boot = 9
    acc = calibkit.CalibrationAccumulator(1, bootstrap=n_boot, seed=seed, backend=backend)
    acc.update(p, y)
    m = poisson_multiplicities(seed, np.arange(p.shape[0]), 0, n_boot)
    assert m.dtype == np.uint8 and m.shape == (n_boot, p.shape[0])
    np.testing.assert_array_equal(acc._boot[:, 0, 0], m.sum(axis=1))
    np.testing.assert_array_equal(acc._boot[:, 2, 0], (m * y).sum(axis=1))
    # any block of replicates, any order of positions: a pure function of (seed, position, replicate)
    np.testing.assert_array_equal(poisson_multiplicities(seed, np.arange(p.shape[0]), 3, 5), m[3:8])
    perm = np.random.default_rng(2).permutation(p.shape[0])
    np.testing.assert_array_equal(poisson_multiplicities(seed, perm, 1, 4), m[1:5][:, perm])


def test_poisson_table_is_the_kernels():
    from calibkit._numba.stream import POISSON1_CDF

    thresholds = np.ceil(POISSON1_CDF * 2.0**32)
    np.testing.assert_array_equal(cu._poisson_thresholds(), thresholds[thresholds < 2.0**32])


def test_multiplicities_are_poisson_one():
    m = poisson_multiplicities(7, np.arange(200000), 0, 2).ravel()
    freq = np.bincount(m, minlength=6)[:6] / m.size
    expected = np.exp(-1.0) / np.array([1, 1, 2, 6, 24, 120])
    np.testing.assert_allclose(freq, expected, atol=0.003)


# -- cumulative ------------------------------------------------------------------------------------------------

def _cumulative_reference(p, y, w):
    """Plain NumPy: the four statistics of one weighted sample (stable sort, C_0 = 0 included)."""
    order = np.argsort(p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    total = ws.sum()
    path = np.concatenate(([0.0], np.cumsum(ws * (ys - ps)))) / total
    sigma = np.sqrt(np.sum(ws * ws * ps * (1 - ps))) / total
    rng, max_abs = path.max() - path.min(), np.abs(path).max()
    return rng, max_abs, rng / sigma, max_abs / sigma


@pytest.mark.parametrize("weighted", [False, True])
def test_cumulative_replicates_match_reference(weighted):
    """Each replicate is the full computation on the rows repeated by their multiplicities (a stable sort keeps
    the copies of a row together, in the order of the full sample)."""
    p, y = _data(3, n=500, power=2.0)
    w = np.random.default_rng(4).random(p.shape[0]) + 0.1 if weighted else np.ones(p.shape[0])
    order = np.argsort(p, kind="stable")
    n_boot = 12
    reps = cu._cumulative_replicates(p, y.astype(np.uint8), w / w.max() if weighted else None, order, n_boot, 5)
    m = poisson_multiplicities(5, np.arange(p.shape[0]), 0, n_boot)
    for b in range(n_boot):
        rows = np.repeat(np.arange(p.shape[0]), m[b])
        ref = _cumulative_reference(p[rows], y[rows], w[rows])
        np.testing.assert_allclose(reps[b], ref, rtol=1e-10)
        r = calibkit.cumulative_calibration_error(p[rows], y[rows], sample_weight=w[rows] if weighted else None)
        np.testing.assert_allclose(reps[b], [r.range, r.max_abs, r.range_sigma, r.max_abs_sigma], rtol=1e-10)


def test_cumulative_ci_deterministic_backends_threads_blocks(backend, threads, monkeypatch):
    p, y = _data(5, n=2000, power=2.0)
    ref = calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=200, seed=11, backend="cpp")
    again = calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=200, seed=11, backend=backend)
    assert again == ref
    plain = calibkit.cumulative_calibration_error(p, y, backend=backend)
    assert plain.ci is None and plain.n_boot == 0 and plain.confidence_level is None
    assert (ref.range, ref.max_abs, ref.sigma, ref.range_pvalue) == (plain.range, plain.max_abs, plain.sigma,
                                                                      plain.range_pvalue)
    assert ref.n_boot == 200 and ref.confidence_level == 0.9
    other = calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=200, seed=12, backend=backend)
    assert other.ci != ref.ci
    calibkit.set_num_threads(1)
    assert calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=200, seed=11, backend=backend) == ref
    monkeypatch.setattr(cu, "BOOT_BLOCK_CELLS", 3000)  # one replicate (1 x 2000 cells) per block
    assert calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=200, seed=11, backend=backend) == ref


def test_cumulative_ci_contains_value_and_top_label(backend):
    p, y = _data(6, n=3000, power=2.0)
    r = calibkit.cumulative_calibration_error(p, y, ci=0.95, n_boot=300, seed=1, backend=backend)
    for name in ("range", "max_abs", "range_sigma", "max_abs_sigma"):
        lo, hi = r.ci[name]
        assert lo <= getattr(r, name) <= hi, name
    d = r.to_dict()
    assert d["ci"]["range"] == list(r.ci["range"]) and d["n_boot"] == 300
    # top-label from logits: the replicates are those of the binary (confidence, correct) rows
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(1500, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 1500)
    t = calibkit.cumulative_calibration_error(logits, labels, from_logits=True, ci=0.9, n_boot=100, seed=2,
                                              backend=backend)
    conf, correct, _, _ = cu._confidence_outcome(logits, labels, None, True, backend)
    b = calibkit.cumulative_calibration_error(conf, correct.astype(np.int64), ci=0.9, n_boot=100, seed=2,
                                              backend=backend)
    assert t.ci == b.ci and t.range == b.range


def test_cumulative_ci_coverage():
    """Scores uniform on [0, 1], P(y = 1 | p) = p^2: the population path is C(t) = t^3/3 - t^2/2, decreasing
    from 0 to -1/6, so ECCE-R = ECCE-MAD = 1/6. The 90 % percentile interval should cover it in about 90 % of
    repetitions (n = 400, 300 repetitions, 200 replicates each)."""
    reps, covered_range, covered_max = 300, 0, 0
    for i in range(reps):
        p, y = _data(10_000 + i, n=400, power=2.0)
        r = calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=200, seed=i)
        covered_range += r.ci["range"][0] <= 1 / 6 <= r.ci["range"][1]
        covered_max += r.ci["max_abs"][0] <= 1 / 6 <= r.ci["max_abs"][1]
    # Binomial(300, 0.9): sd 5.2 (17 %); the band [0.8, 0.97] is about +-6 sd wide on each side of 270.
    for covered in (covered_range, covered_max):
        assert 0.80 * reps <= covered <= 0.97 * reps, covered


# -- smooth ECE ------------------------------------------------------------------------------------------------

def test_smooth_replicates_match_weighted_calls():
    """A replicate is smooth_ece of the rows weighted by their multiplicities (σ searched again with "auto")."""
    p, y = _data(8, n=400)
    n_boot = 4
    m = poisson_multiplicities(3, np.arange(p.shape[0]), 0, n_boot)
    for bandwidth in ("auto", 0.07):
        reps = sm._smooth_replicates(p, y, None, False, bandwidth, "reflected_gaussian", n_boot, 3, "cpp")
        ref = [calibkit.smooth_ece(p, y, sample_weight=m[b].astype(float), bandwidth=bandwidth)
               for b in range(n_boot)]
        np.testing.assert_allclose(reps, ref, rtol=1e-12, atol=1e-15)
    w = np.random.default_rng(9).random(p.shape[0])
    reps = sm._smooth_replicates(p, y, w, False, "auto", "gaussian", n_boot, 3, "cpp")
    ref = [calibkit.smooth_ece(p, y, sample_weight=m[b] * w, kernel="gaussian") for b in range(n_boot)]
    np.testing.assert_allclose(reps, ref, rtol=1e-12, atol=1e-15)


def test_smooth_ci_deterministic_backends_threads(backend, threads):
    p, y = _data(10, n=1000)
    ref = calibkit.smooth_ece(p, y, ci=0.9, n_boot=30, seed=4, backend="cpp")
    assert isinstance(ref, sm.SmoothECEResult)
    assert calibkit.smooth_ece(p, y, ci=0.9, n_boot=30, seed=4, backend=backend) == ref
    calibkit.set_num_threads(1)
    assert calibkit.smooth_ece(p, y, ci=0.9, n_boot=30, seed=4, backend=backend) == ref
    plain = calibkit.smooth_ece(p, y, backend=backend)
    assert isinstance(plain, float) and plain == ref.value == float(ref)
    assert ref.bandwidth == calibkit.smooth_reliability_curve(p, y).bandwidth
    assert ref.ci[0] <= ref.value <= ref.ci[1] and ref.n_boot == 30 and ref.confidence_level == 0.9
    assert calibkit.smooth_ece(p, y, ci=0.9, n_boot=30, seed=5, backend=backend).ci != ref.ci
    assert ref.to_dict()["ci"] == list(ref.ci)


def test_smooth_ci_top_label_and_weights(backend):
    z = load_real("netcal_cifar10_lenet5.npz")
    logits, labels = z["logits"][:1500], z["labels"][:1500]
    r = calibkit.smooth_ece(logits, labels, from_logits=True, ci=0.95, n_boot=20, seed=1, backend=backend)
    assert r.value == calibkit.smooth_ece(logits, labels, from_logits=True, backend=backend)
    assert r.ci[0] <= r.value <= r.ci[1]
    w = np.random.default_rng(0).random(1500)
    rw = calibkit.smooth_ece(logits, labels, from_logits=True, sample_weight=w, bandwidth=0.05, ci=0.95,
                             n_boot=20, seed=1, backend=backend)
    assert rw.bandwidth == 0.05 and rw.ci[0] <= rw.value <= rw.ci[1]


def test_smooth_ci_coverage():
    """Fixed σ = 0.1, P(y = 1 | p) = p^2 with p uniform: the "true" smECE_0.1 is the value on 2 * 10^6 rows.
    The 90 % interval from n = 500 rows should cover it in about 90 % of 80 repetitions (40 replicates each:
    a coarse interval, hence a loose band)."""
    big_p, big_y = _data(99, n=2_000_000, power=2.0)
    truth = calibkit.smooth_ece(big_p, big_y, bandwidth=0.1)
    reps, covered = 80, 0
    for i in range(reps):
        p, y = _data(20_000 + i, n=500, power=2.0)
        r = calibkit.smooth_ece(p, y, bandwidth=0.1, ci=0.9, n_boot=40, seed=i)
        covered += r.ci[0] <= truth <= r.ci[1]
    # Binomial(80, 0.9): sd 2.7; [0.7, 1] leaves room for the coarse 40-replicate quantiles and a small bias.
    assert covered >= 0.7 * reps, covered


# -- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("func", [calibkit.smooth_ece, calibkit.cumulative_calibration_error])
@pytest.mark.parametrize("kwargs, exc, message", [
    ({"ci": 1.5}, ValueError, r"ci must be a confidence level in \(0, 1\), got 1.5"),
    ({"ci": 0}, ValueError, r"ci must be a confidence level in \(0, 1\), got 0"),
    ({"ci": True}, ValueError, r"ci must be a confidence level in \(0, 1\), got True"),
    ({"ci": "0.9"}, ValueError, r"ci must be a confidence level in \(0, 1\), got '0.9'"),
    ({"ci": 0.9, "n_boot": 1}, ValueError, r"n_boot must be in \[2, 100000\], got 1"),
    ({"ci": 0.9, "n_boot": 100001}, ValueError, r"n_boot must be in \[2, 100000\], got 100001"),
    ({"ci": 0.9, "n_boot": 2.5}, TypeError, "n_boot must be an integer, got float"),
    ({"ci": 0.9, "seed": -1}, ValueError, r"seed must be in \[0, 18446744073709551615\], got -1"),
    ({"ci": 0.9, "seed": None}, TypeError, "seed must be an integer, got NoneType"),
])
def test_bad_bootstrap_arguments(func, kwargs, exc, message):
    p, y = np.array([0.2, 0.7, 0.9]), np.array([0, 1, 1])
    with pytest.raises(exc, match=message):
        func(p, y, **kwargs)


def test_bad_rows_still_named_with_ci():
    with pytest.raises(ValueError, match="labels"):
        calibkit.smooth_ece(np.array([0.2, 0.7]), np.array([0, 3]), ci=0.9, n_boot=10)
    with pytest.raises(ValueError, match="labels"):
        calibkit.cumulative_calibration_error(np.array([0.2, 0.7]), np.array([0, 3]), ci=0.9, n_boot=10)


def test_huge_n_boot_refused_before_any_work():
    """A huge n_boot on a large input is refused at once (nothing allocated, no pass), in a subprocess."""
    code = ("import numpy as np, calibkit\n"
            "p = np.full(10**6, 0.5); y = np.zeros(10**6, dtype=np.int64)\n"
            "for f in (calibkit.smooth_ece, calibkit.cumulative_calibration_error):\n"
            "    try:\n"
            "        f(p, y, ci=0.9, n_boot=10**12)\n"
            "    except ValueError as e:\n"
            "        print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("n_boot must be in [2, 100000], got 1000000000000") == 2


def test_replicate_without_rows_is_left_out():
    """One row: some replicates draw it 0 times (no rows, left out of the interval), the rest give the value."""
    r = calibkit.cumulative_calibration_error(np.array([0.3]), np.array([1]), ci=0.9, n_boot=50, seed=0)
    assert r.ci["range"] == pytest.approx((r.range, r.range), rel=1e-12)
    s = calibkit.smooth_ece(np.array([0.3]), np.array([1]), ci=0.9, n_boot=20, seed=0)
    assert s.ci[0] <= s.value <= s.ci[1]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtypes_and_strides(dtype):
    """A strided float16/32/64 column gives the interval of its float64 copy (same rows, same draws)."""
    rng = np.random.default_rng(0)
    scores = rng.random((600, 2)).astype(dtype)
    y = (rng.random(600) < scores[:, 0].astype(np.float64)).astype(np.int64)
    p = scores[:, 0]
    assert not p.flags.c_contiguous
    p64 = p.astype(np.float64)
    assert (calibkit.cumulative_calibration_error(p, y, ci=0.9, n_boot=50, seed=1)
            == calibkit.cumulative_calibration_error(p64, y, ci=0.9, n_boot=50, seed=1))
    assert calibkit.smooth_ece(p, y, ci=0.9, n_boot=8, seed=1) == calibkit.smooth_ece(p64, y, ci=0.9, n_boot=8, seed=1)
    assert (p == scores[:, 0]).all()  # input not modified
