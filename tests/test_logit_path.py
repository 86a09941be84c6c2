"""The logit path of the binning kernel (top-label and class-wise), both backends.

Class-wise rows take a fast path for octets whose eight probabilities all fall in bin 0 (a float threshold
per row in C++, a branch-free first pass in Numba); these tests put many probabilities on and around the
edges of bin 0 so that both sides of every test are taken, and check the result bit for bit between the
backends, thread counts and instruction sets, and against a float64 reference.

Rows summed in double precision (float64 logits of any K, and float logits of K < 16) take the same operations
in both backends: exp_nonpositive of simd.hpp, in eight lanes (summarize_logit_row) or in column order (the
short rows of summarize_short_rows), so their top-label, class-wise, stream and smooth sums agree to the bit.
"""

from __future__ import annotations


import numpy as np
import pytest

import calibkit
from calibkit import _backend
from subprocess_cases import simd_clone_outputs


def _edge_logits(N, K, M, dtype, seed):
    """Logits whose softmax puts many p_k exactly near 1 / M (the upper edge of bin 0) and some far above."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 0.3, (N, K))
    # A few classes per row carry most of the mass, so the others sit just below or above 1 / M.
    for i in range(N):
        hot = rng.choice(K, size=rng.integers(1, 4), replace=False)
        z[i, hot] += rng.uniform(1.0, 6.0, hot.size)
    # Rows whose probabilities are all 1 / K: for K = M every p_k is on the edge of bin 0.
    z[: N // 8] = 0.0
    return z.astype(dtype)


def _reference(z, y, M, w=None):
    """float64 class-wise bins: count and sum of p per (class, bin), sum of w * 1[y == k]."""
    z = z.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    N, K = p.shape
    w = np.ones(N) if w is None else w
    b = np.clip(np.ceil(p * M).astype(np.int64) - 1, 0, M - 1)
    idx = (np.arange(K)[None, :] * M + b).ravel()
    count = np.bincount(idx, minlength=K * M)
    score = np.bincount(idx, weights=(p * w[:, None]).ravel(), minlength=K * M)
    target = np.zeros(K * M)
    np.add.at(target, y * M + b[np.arange(N), y], w)
    return count, score, target, p


def _stats(backend, z, y, M, w=None, class_edges=None):
    return _backend.kernels(backend).classwise_stats(z, y, w, True, M, class_edges)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("K,M", [(16, 16), (24, 10), (37, 15), (200, 15)])
@pytest.mark.parametrize("weighted", [False, True])
def test_classwise_logits_cpp_equals_numba_and_reference(dtype, K, M, weighted):
    N = 400
    z = _edge_logits(N, K, M, dtype, seed=K + M)
    y = np.random.default_rng(1).integers(0, K, N)
    w = np.random.default_rng(2).uniform(0.0, 3.0, N) if weighted else None
    a, b = _stats("cpp", z, y, M, w), _stats("numba", z, y, M, w)
    for key in ("count", "weight", "sum_score", "sum_target"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["status"] == b["status"]
    count, score, target, p = _reference(z, y, M, w)
    # Counts are exact except for probabilities within float32 rounding of an edge.
    near = np.abs(p * M - np.round(p * M)) < 1e-5 * M
    moved = np.abs(a["count"] - count).sum()
    assert moved <= 2 * near.sum()
    assert a["count"].sum() == N * K
    np.testing.assert_allclose(a["sum_score"].sum(), score.sum(), rtol=1e-6)
    np.testing.assert_allclose(a["sum_target"].sum(), target.sum(), rtol=1e-12)
    if not near.any():
        np.testing.assert_array_equal(a["count"], count)
        np.testing.assert_allclose(a["sum_score"], score, rtol=2e-6, atol=1e-9)


def _state(backend, z, y, w, temperature):
    acc = calibkit.CalibrationAccumulator(15, from_logits=True, temperature=temperature, classwise=True,
                                          n_classes=z.shape[1], smooth=True, backend=backend)
    acc.update(z, y, sample_weight=w)
    plain = calibkit.CalibrationAccumulator(15, from_logits=True, temperature=temperature, backend=backend)
    plain.update(z[:60], y[:60])  # one small batch: the fused small-batch path
    return [acc._bins, acc._fine, acc._totals, acc._classwise_bins, acc._smooth, plain._bins, plain._fine,
            plain._totals]


@pytest.mark.parametrize("dtype, K", [(np.float64, K) for K in (2, 5, 8, 9, 15, 16, 17, 23, 100)]
                         + [(dt, K) for dt in (np.float32, np.float16) for K in (2, 7, 8, 9, 15)])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("weighted", [False, True])
def test_double_precision_logit_rows_cpp_equals_numba_and_reference(dtype, K, temperature, weighted):
    N = 1500
    rng = np.random.default_rng(K)
    z = (rng.standard_normal((N, K)) * 4).astype(dtype)
    z[::7, K // 2] = -800.0  # exps below the clamp of exp_nonpositive (e^-708)
    z[1::11] = 3.0  # rows of one value: ties for the maximum
    y = rng.integers(0, K, N)
    w = rng.uniform(0.0, 2.0, N) if weighted else None
    states = [_state(b, z, y, w, temperature) for b in ("cpp", "numba")]
    for a, b in zip(*states):
        np.testing.assert_array_equal(a, b)
    for metric in (calibkit.ece, calibkit.nll, calibkit.brier_score, calibkit.classwise_calibration_error):
        a, b = (metric(z, y, from_logits=True, sample_weight=w, backend=be) for be in ("cpp", "numba"))
        assert a == b, metric.__name__
    # the float64 reference: NumPy's softmax of z / T
    x = z.astype(np.float64) / temperature
    shifted = x - x.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    nll = np.log(p.sum(axis=1)) - shifted[np.arange(N), y]  # log-sum-exp: finite for a label of e^-800
    p /= p.sum(axis=1, keepdims=True)
    ww = np.ones(N) if w is None else w
    onehot = np.eye(K)[y]
    totals = states[0][2]
    assert totals[5] / totals[1] == pytest.approx(np.average(nll, weights=ww), rel=1e-12)
    assert totals[4] / totals[1] == pytest.approx(np.average(((p - onehot) ** 2).sum(1), weights=ww), rel=1e-12)


@pytest.mark.parametrize("M", [1, 2, 7])
def test_classwise_logits_bin_counts(backend, M):
    """Every element lands in exactly one bin of its class; M = 1 is all bin 0."""
    N, K = 300, 33
    z = _edge_logits(N, K, M, np.float32, seed=M)
    y = np.random.default_rng(3).integers(0, K, N)
    r = _stats(backend, z, y, M)
    count = r["count"].reshape(K, M)
    np.testing.assert_array_equal(count.sum(axis=1), np.full(K, N))
    np.testing.assert_array_equal(r["weight"], r["count"].astype(np.float64))
    ref = _reference(z, y, M)
    np.testing.assert_allclose(r["sum_score"].reshape(K, M).sum(axis=1), ref[1].reshape(K, M).sum(axis=1),
                               rtol=1e-6)


def test_classwise_logits_class_edges_backends_agree():
    N, K, M = 300, 40, 6
    z = _edge_logits(N, K, M, np.float32, seed=7)
    y = np.random.default_rng(4).integers(0, K, N)
    rng = np.random.default_rng(5)
    inner = np.sort(rng.uniform(0.0, 0.3, (K, M - 1)), axis=1)
    edges = np.concatenate([np.zeros((K, 1)), inner, np.ones((K, 1))], axis=1)
    a, b = _stats("cpp", z, y, M, class_edges=edges), _stats("numba", z, y, M, class_edges=edges)
    for key in ("count", "weight", "sum_score", "sum_target"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_classwise_logits_thread_counts_bit_identical(backend):
    N, K, M = 3000, 64, 15
    z = _edge_logits(N, K, M, np.float32, seed=11)
    y = np.random.default_rng(6).integers(0, K, N)
    before = calibkit.get_num_threads()
    try:
        results = []
        for n in (1, 2, 4):
            calibkit.set_num_threads(n)
            results.append(_stats(backend, z, y, M))
    finally:
        calibkit.set_num_threads(before)
    for r in results[1:]:
        for key in ("count", "weight", "sum_score", "sum_target"):
            np.testing.assert_array_equal(results[0][key], r[key], err_msg=key)


_CLONE_CODE = """
import numpy as np, hashlib
from calibkit import _backend
rng = np.random.default_rng(0)
z = rng.normal(0, 0.3, (500, 50)).astype(np.float32)
z[:, :3] += 4.0
z[:60] = 0.0
y = rng.integers(0, 50, 500)
w = rng.uniform(0, 2, 500)
k = _backend.kernels("cpp")
h = hashlib.sha256()
for M in (1, 10, 50):
    for weights in (None, w):
        r = k.classwise_stats(z, y, weights, True, M, None)
        for key in ("count", "weight", "sum_score", "sum_target"):
            h.update(np.ascontiguousarray(r[key]).tobytes())
    t = k.top_label_stats(z, y, None, True, M, 1e-15, True)
    h.update(repr(sorted(t["totals"].items())).encode())
    h.update(t["sum_score"].tobytes())
print(h.hexdigest())
"""


def test_classwise_logits_sse2_equals_avx2():
    out = [o.strip() for o in simd_clone_outputs(_CLONE_CODE)]
    assert out[0] == out[1]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_classwise_logits_non_finite_named(backend, bad):
    N, K = 50, 40
    z = _edge_logits(N, K, 10, np.float32, seed=2)
    z[17, 23] = bad
    y = np.zeros(N, np.int64)
    with pytest.raises(ValueError, match=r"scores\[17, 23\]"):
        calibkit.classwise_calibration_error(z, y, from_logits=True, backend=backend)
