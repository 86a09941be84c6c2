"""The temperature fit's nested warm start (issue 13): Newton on a coarse subsample of at least 2,048 rows (every
c-th row), then one Taylor step on every m-th row (m = 2 to 16, at least 12,288 rows), then the full pass."""

import numpy as np
import pytest
from scipy.optimize import brentq

import calibkit
from calibkit import TemperatureScaling
from calibkit.calibrators import scaling

from conftest import BACKENDS, overconfident_logits


def _reference_temperature(z, y):
    """Plain NumPy float64: the root in b of the mean of E_softmax(b z)[z] - z_y, by brentq."""
    z = np.asarray(z, np.float64)
    zy = z[np.arange(len(y)), y]

    def d1(b):
        s = b * z
        e = np.exp(s - s.max(1, keepdims=True))
        return ((e * z).sum(1) / e.sum(1) - zy).mean()

    return 1.0 / brentq(d1, 1e-3, 1e3, xtol=1e-15, rtol=1e-15)


def _record_strides(n):
    """The strides _warm_start asks for on n rows, and the passes taken on each (any data: 64 x 8 rows)."""
    passes = []
    z, y = overconfident_logits(4096, 8, seed=0)

    def sums_of(stride):
        passes.append([stride, 0])

        def sums(b):
            passes[-1][1] += 1
            return scaling._temperature_sums(scaling._backend.kernels("cpp"), z, y, None, b, None)
        return sums

    start = TemperatureScaling(backend="cpp")._warm_start(sums_of, n)
    return start, passes


@pytest.mark.parametrize("n", [8192, 20_000, 34_815, 34_816, 100_000, 196_607, 196_608, 200_000, 10_000_000])
def test_coarse_newton_then_one_taylor_step_on_a_finer_subsample(n):
    start, passes = _record_strides(n)
    assert start is not None and np.isfinite(start) and start > 0
    (coarse, newton_passes), (fine, taylor_passes) = passes
    assert coarse == n // scaling._WARM_START_SUB_ROWS >= 4 and n // coarse >= scaling._WARM_START_SUB_ROWS
    assert taylor_passes == 1 and 2 <= fine < coarse and fine <= scaling._WARM_START_STRIDE
    assert n // fine >= scaling._WARM_START_REFINE_ROWS or fine == 2
    assert newton_passes >= 1


def test_the_warm_start_costs_a_tenth_of_a_pass_on_the_benchmark_shape(monkeypatch):
    """200k rows (K = 21: the same strides as the 200k x 1000 benchmark): the subsamples' passes add up to
    about 0.1 of a full pass (they were 4 passes over every 16th row, 0.25, before the coarse level; on the
    benchmark's logits: 3 passes over 2,062 rows and one over 12,500)."""
    n = 200_000
    z, y = overconfident_logits(n, 21, seed=1)
    assert z.size >= scaling._WARM_START_ELEMENTS
    rows = []
    inner = scaling._temperature_sums

    def counted(k, logits, labels, sample_weight, b, chunk_size):
        rows.append(logits.shape[0])
        return inner(k, logits, labels, sample_weight, b, chunk_size)

    monkeypatch.setattr(scaling, "_temperature_sums", counted)
    ts = TemperatureScaling(backend="cpp").fit(z, y)
    full = sum(r == n for r in rows)
    assert full == ts.n_passes_ == 1
    assert sum(r for r in rows if r < n) / n <= 0.12, rows
    assert ts.temperature_ == pytest.approx(_reference_temperature(z, y), rel=1e-7)


@pytest.mark.parametrize("n, k", [(60_000, 80), (120_000, 40)])
def test_nested_warm_start_reaches_the_independent_optimum(n, k):
    z, y = overconfident_logits(n, k, seed=n + k)
    want = _reference_temperature(z, y)
    got = {}
    for backend in BACKENDS:
        ts = TemperatureScaling(backend=backend).fit(z, y)
        assert ts.temperature_ == pytest.approx(want, rel=1e-7)
        assert 1 <= ts.n_passes_ <= 2
        got[backend] = ts.temperature_
    assert got["cpp"] == pytest.approx(got["numba"], rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_and_two_threads_give_the_same_bits(backend):
    z, y = overconfident_logits(60_000, 80, seed=5)
    before = calibkit.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            calibkit.set_num_threads(threads)
            ts = TemperatureScaling(backend=backend).fit(z, y)
            out.append((ts.temperature_, ts.n_passes_))
    finally:
        calibkit.set_num_threads(before)
    assert out[0] == out[1]


def test_a_coarse_subsample_without_weight_gives_no_start():
    calls = []
    assert TemperatureScaling()._warm_start(lambda stride: calls.append(stride), 100_000) is None
    assert calls == [100_000 // scaling._WARM_START_SUB_ROWS]


def test_a_fine_subsample_without_weight_keeps_the_coarse_optimum():
    z, y = overconfident_logits(2048, 8, seed=2)

    def sums(b):
        return scaling._temperature_sums(scaling._backend.kernels("cpp"), z, y, None, b, None)

    ts = TemperatureScaling(backend="cpp")
    start = ts._warm_start(lambda stride: sums if stride > 16 else None, 100_000)
    alone, _, _, _ = ts._newton(sums, taylor_stop=True)
    assert start == alone


@pytest.mark.parametrize("k, scale, seed", [(2, 2.0, 0), (10, 3.0, 1), (100, 3.0, 2), (1000, 3.0, 3), (50, 8.0, 4)])
def test_the_coarse_newton_stops_in_the_trust_region_near_its_optimum(k, scale, seed):
    """Stopped once a step is within b / 8 (the quartic Taylor model's region), the coarse iteration is within
    1e-4 of its own optimum (iterated to tol = 1e-7), in fewer passes; far less than the coarse optimum's distance
    to the full one (about 1%), which the Taylor step on the finer subsample then closes."""
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((2048, k))).astype(np.float32)
    y = rng.integers(0, k, 2048)
    z[np.arange(2048), y] += 4.0
    for backend in BACKENDS:
        kern = scaling._backend.kernels(backend)

        def sums(b):
            return scaling._temperature_sums(kern, z, y, None, b, None)

        ts = TemperatureScaling(backend=backend)
        loose, loose_passes, converged, _ = ts._newton(sums, taylor_stop=True)
        tight, tight_passes, _, _ = ts._newton(sums)
        assert converged and loose_passes <= tight_passes
        assert loose == pytest.approx(tight, rel=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_zero_on_the_coarse_rows_fall_back_to_the_cold_fit(backend):
    n, k = 60_000, 80
    z, y = overconfident_logits(n, k, seed=7)
    w = np.random.default_rng(7).random(n)
    w[::n // scaling._WARM_START_SUB_ROWS] = 0.0
    ts = TemperatureScaling(backend=backend).fit(z, y, sample_weight=w)
    cold = TemperatureScaling(backend=backend).fit_from_sums(
        lambda b: calibkit.temperature_nll(z, y, b, sample_weight=w, backend=backend), k)
    assert ts.n_passes_ == cold.n_passes_
    assert ts.temperature_ == pytest.approx(cold.temperature_, rel=1e-9)


def test_a_far_coarse_optimum_takes_newton_steps_on_the_finer_subsample():
    """Weak binary scores: the 2,048-row optimum is more than b / 8 from every 16th row's, so the finer
    subsample takes Newton steps before its Taylor step, and the start is still that subsample's optimum."""
    n = (1 << 21) + 1
    rng = np.random.default_rng(2)
    z = (0.5 * rng.standard_normal((n, 2))).astype(np.float32)
    y = np.argmax(z.astype(np.float64) / 2.5 + rng.gumbel(size=(n, 2)), axis=1)
    for backend in BACKENDS:
        kern = scaling._backend.kernels(backend)
        passes = []

        def sums_of(stride):
            passes.append([stride, 0])

            def sums(b):
                passes[-1][1] += 1
                return scaling._temperature_sums(kern, z[::stride], y[::stride], None, b, None)
            return sums

        ts = TemperatureScaling(backend=backend)
        start = ts._warm_start(sums_of, n)
        (coarse, _), (fine, fine_passes) = passes
        assert (coarse, fine) == (1024, 16) and fine_passes >= 2
        own, _, _, _ = ts._newton(lambda b: scaling._temperature_sums(kern, z[::16], y[::16], None, b, None))
        assert start == pytest.approx(own, rel=1e-6)
        assert TemperatureScaling(backend=backend).fit(z, y).n_passes_ == 1
