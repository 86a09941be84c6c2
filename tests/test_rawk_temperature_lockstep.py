"""temperature_nll on float rows: the exps of eight octets are computed in lockstep, the last (padded) octet
masked on its own; the sums are the same numbers added in the same order as one octet at a time.

Checked against a plain NumPy (float64) reference, on every padding of the last octet (K mod 8) and on rows
shorter than one block, for both backends; 1 vs 2 threads and one call vs row chunks bit-identical.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend

KEYS = ("count", "weight", "loss", "d1", "d2", "d3", "d4", "d5", "r4d2", "range")


def reference(z, y, w, b):
    """loss, d1, d2 in float64 from the float logits (softmax of b z)."""
    z = np.asarray(z, dtype=np.float64)
    u = z - z.max(axis=1, keepdims=True)
    e = np.exp(b * u)
    s = e.sum(axis=1)
    p = e / s[:, None]
    mean = (p * u).sum(axis=1)
    var = (p * u * u).sum(axis=1) - mean**2
    uy = u[np.arange(len(y)), y]
    return {"loss": np.sum(w * (np.log(s) - b * uy)), "d1": np.sum(w * (mean - uy)), "d2": np.sum(w * var)}


def logits(rng, n, k, dtype):
    z = (3.0 * rng.standard_normal((n, k))).astype(dtype)
    y = rng.integers(0, k, n)
    z[np.arange(n), y] += dtype(2.0)
    return z, y


def run(backend, z, y, w, b):
    return _backend.kernels(backend).temperature_nll(z, y, w, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("K", [1, 2, 7, 8, 9, 31, 63, 64, 65, 72, 127, 129, 1000, 1001])
@pytest.mark.parametrize("b", [1.0, 0.37, 2.9])
def test_matches_numpy_reference(backend, dtype, K, b):
    rng = np.random.default_rng(K)
    z, y = logits(rng, 301, K, dtype)
    w = rng.random(301)
    r = run(backend, z, y, w, b)
    ref = reference(z, y, w, b)
    assert r["count"] == 301 and r["weight"] == pytest.approx(w.sum(), rel=1e-12)
    scale = np.sum(w) * max(1.0, np.abs(np.asarray(z, dtype=np.float64)).max())
    for key in ("loss", "d1", "d2"):
        assert abs(r[key] - ref[key]) <= 1e-5 * scale, (key, r[key], ref[key])


@pytest.mark.parametrize("K", [5, 64, 100, 1001])
def test_threads_and_chunks_bit_identical(threads, K):
    rng = np.random.default_rng(100 + K)
    z, y = logits(rng, 5000, K, np.float32)
    w = rng.random(5000)
    out = []
    for n in (1, 2):
        calibkit.set_num_threads(n)
        out.append(run("cpp", z, y, w, 0.77))
    for key in KEYS:
        assert np.float64(out[0][key]).tobytes() == np.float64(out[1][key]).tobytes(), key
    whole = calibkit.temperature_nll(z, y, 0.77, sample_weight=w, backend="cpp")
    parts = calibkit.temperature_nll(z, y, 0.77, sample_weight=w, chunk_size=777, backend="cpp")
    for key in ("loss", "d1", "d2"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)


@pytest.mark.parametrize("K", [3, 65, 1001])
def test_backends_agree(K):
    rng = np.random.default_rng(200 + K)
    z, y = logits(rng, 2000, K, np.float32)
    c = run("cpp", z, y, None, 1.3)
    nb = run("numba", z, y, None, 1.3)
    for key in ("loss", "d1", "d2", "d3"):
        assert nb[key] == pytest.approx(c[key], rel=1e-12, abs=1e-9)


def test_bad_element_in_the_masked_octet_is_named(backend):
    z, y = logits(np.random.default_rng(9), 20, 67, np.float32)
    z[13, 66] = np.nan  # in the last, padded octet of its row
    r = run(backend, z, y, None, 1.0)
    assert r["status"][0] != 0 and r["status"][1] == 13
