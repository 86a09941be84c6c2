"""pytest-benchmark micro-benchmarks of the calibrator kernels (run: python -m pytest benchmarks).

Each benchmark checks its result against a plain NumPy / SciPy reference before timing.
"""

import numpy as np
import pytest
from scipy.special import logsumexp

import calibkit
from calibkit import _backend

N, K = 200_000, 100


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((N, K), dtype=np.float32) * 3.0
    y = rng.integers(0, K, N)
    return z, y


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_temperature_nll(benchmark, logits, backend):
    z, y = logits
    bz = 0.7 * z[:2000].astype(np.float64)
    want = (logsumexp(bz, axis=1) - bz[np.arange(2000), y[:2000]]).sum()
    got = calibkit.temperature_nll(z[:2000], y[:2000], 0.7, backend=backend)["loss"]
    assert got == pytest.approx(want, rel=1e-12)
    benchmark(calibkit.temperature_nll, z, y, 0.7, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_temperature_fit(benchmark, logits, backend):
    z, y = logits
    benchmark(lambda: calibkit.TemperatureScaling(backend=backend).fit(z, y))


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_vector_scaling_nll(benchmark, logits, backend):
    z, y = logits
    k = _backend.kernels(backend)
    a, c = np.full(K, 0.8), np.zeros(K)
    s = z[:2000].astype(np.float64) * 0.8
    want = (logsumexp(s, axis=1) - s[np.arange(2000), y[:2000]]).sum()
    assert k.vector_scaling_nll(z[:2000], y[:2000], None, a, c)["loss"] == pytest.approx(want, rel=1e-12)
    benchmark(k.vector_scaling_nll, z, y, None, a, c)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_isotonic_fit(benchmark, backend):
    from scipy.optimize import isotonic_regression

    rng = np.random.default_rng(1)
    x = rng.random(1_000_000)
    y = (rng.random(len(x)) < x).astype(np.float64)
    order = np.argsort(x, kind="stable")
    got = calibkit.isotonic_regression(y, x=x, backend=backend).fitted
    np.testing.assert_allclose(got[order], isotonic_regression(y[order]).x, rtol=1e-12, atol=1e-12)
    benchmark(calibkit.isotonic_regression, y, x=x, backend=backend)
