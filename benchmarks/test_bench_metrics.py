"""pytest-benchmark micro-benchmarks of the binning kernels (run: python -m pytest benchmarks).

Each benchmark checks its result against the plain NumPy reference before timing.
"""

import numpy as np
import pytest

import calibkit

from workloads_metrics import numpy_ece

N, K = 1_000_000, 10


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, K), dtype=np.float32) * 2.5
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, K, N)
    return {"logits": logits, "probs": probs, "labels": labels}


@pytest.mark.parametrize("backend", ["cpp", "numba"])
@pytest.mark.parametrize("kind", ["probs", "logits"])
def test_top_label_ece(benchmark, data, backend, kind):
    scores, y, fl = data[kind], data["labels"], kind == "logits"
    want = numpy_ece(scores.astype(np.float64), y, fl)
    assert calibkit.ece(scores, y, from_logits=fl, backend=backend) == pytest.approx(want, rel=1e-9)
    benchmark(calibkit.ece, scores, y, from_logits=fl, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_adaptive_ece(benchmark, data, backend):
    probs, y = data["probs"], data["labels"]
    benchmark(calibkit.ece, probs, y, strategy="quantile", backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_classwise_ece(benchmark, data, backend):
    probs, y = data["probs"], data["labels"]
    benchmark(calibkit.classwise_calibration_error, probs, y, backend=backend)


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_nll_and_brier(benchmark, data, backend):
    logits, y = data["logits"], data["labels"]
    benchmark(lambda: (calibkit.nll(logits, y, from_logits=True, backend=backend),
                       calibkit.brier_score(logits, y, from_logits=True, backend=backend)))


def test_binary_reliability(benchmark, data):
    p = data["probs"][:, 0].astype(np.float64)
    y = (data["labels"] == 0).astype(np.int64)
    benchmark(calibkit.reliability_table, p, y, n_bins=20)


def test_one_read_floor(benchmark, data):
    benchmark(np.add.reduce, data["probs"], axis=None)
