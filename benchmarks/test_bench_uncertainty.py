"""pytest-benchmark micro-benchmarks of the uncertainty and ranking kernels (run: python -m pytest benchmarks).

Each benchmark checks its result against a plain NumPy / SciPy / scikit-learn reference before timing.
"""

import numpy as np
import pytest
from scipy.special import log_softmax

import calibkit

N, K = 200_000, 100


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, K), dtype=np.float32) * 3.0


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_entropy_from_logits(benchmark, logits, backend):
    lp = log_softmax(logits[:2000].astype(np.float64), axis=1)
    want = -(np.exp(lp) * lp).sum(axis=1)
    got = calibkit.entropy(logits[:2000], from_logits=True, backend=backend)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)
    benchmark(calibkit.entropy, logits, from_logits=True, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_decompose(benchmark, logits, backend):
    passes = logits[: N // 10].reshape(10, N // 100, K)
    p = np.exp(log_softmax(passes.astype(np.float64), axis=2))
    mean = p.mean(axis=0)
    want = -(mean * np.log(mean)).sum(axis=1)
    got = calibkit.decompose(passes, from_logits=True, backend=backend).total
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-7)
    benchmark(calibkit.decompose, passes, from_logits=True, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_auroc(benchmark, backend):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(size=500_000) + 1, rng.normal(size=500_000)
    want = sk.roc_auc_score(np.r_[np.ones(s_in.size), np.zeros(s_out.size)], np.r_[s_in, s_out])
    assert calibkit.auroc(s_in, s_out, backend=backend) == pytest.approx(want, abs=1e-12)
    benchmark(calibkit.auroc, s_in, s_out, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_confidence_loss(benchmark, logits, backend):
    y = np.random.default_rng(2).integers(0, K, 4096)
    r = calibkit.confidence_loss(logits[:4096], y, logits[4096:8192], backend=backend)
    assert np.isfinite(r.value)
    benchmark(calibkit.confidence_loss, logits[:4096], y, logits[4096:8192], backend=backend)
