"""The Numba dense logit path by lanes of 8 rows (``dense_lanes_f32``, binning.hpp's summarize_dense_logit_rows_f).

A dense (pixel-contiguous, class-strided) float16 / float32 logit matrix is summarised 8 rows at a time, one row
per float lane. Every result must be bit-identical to the generic row path on a C-ordered copy of the same rows,
to the C++ kernel, and for any thread count; it must agree with a plain NumPy softmax reference; a row holding
NaN / inf in any lane of an octet is reported as the generic path reports it. The class counts here reach past
one flush block of the float partials (64 classes) and end on and off a multiple of 8.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend

from conftest import assert_same_stats

N_BINS = 15


def dense_view(x):
    """Rows of a (K, H, W) map as an (H W, K) view: row stride = itemsize, class stride = H W itemsize."""
    v = np.moveaxis(x, 0, -1).reshape(-1, x.shape[0])
    assert v.strides[0] == x.itemsize
    return v


def logit_map(seed, K, H, W, dtype):
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal((K, H, W))).astype(dtype)
    y = rng.integers(0, K, H * W)
    x.reshape(K, -1)[y, np.arange(H * W)] += dtype(2.0)
    return x, y


def run(backend, s, y, w=None, inv_t=1.0, with_nll=True, with_brier=True):
    n = s.shape[0]
    conf, correct = np.full(n, -1.0), np.full(n, 7, np.uint8)
    r = _backend.kernels(backend).top_label_stats(s, y, w, True, N_BINS, 1e-7, with_nll, conf, correct, inv_t, 0,
                                                  None, with_brier)
    return r, conf, correct


def reference(s, y, w, inv_t):
    """Plain NumPy in float64: the softmax of inv_t z, its maximum and first argmax, the bins and totals."""
    z = inv_t * s.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    p_label = p[np.arange(len(y)), y]
    b = np.clip(np.ceil(conf * N_BINS).astype(np.int64) - 1, 0, N_BINS - 1)
    return {"count": np.bincount(b, minlength=N_BINS), "sum_score": np.bincount(b, w * conf, N_BINS),
            "sum_target": np.bincount(b, w * correct, N_BINS), "confidence": conf, "correct": correct,
            "nll": float(np.sum(-w * np.log(p_label))),
            "brier": float(np.sum(w * ((p * p).sum(axis=1) - 2.0 * p_label + 1.0)))}


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [16, 19, 64, 65, 71, 128, 130])
@pytest.mark.parametrize("inv_t", [1.0, 0.7])
def test_lanes_equal_the_generic_path_and_the_other_backend(dtype, K, inv_t):
    x, y = logit_map(K, K, 5, 23, dtype)  # 115 rows: the last octet of rows is partial
    v = dense_view(x)
    c = np.ascontiguousarray(v)
    w = np.random.default_rng(0).random(v.shape[0])
    for kw in ({}, {"w": w}, {"w": w, "with_nll": False, "with_brier": False}):
        got = run("numba", v, y, inv_t=inv_t, **kw)
        assert_same_stats(got, run("numba", c, y, inv_t=inv_t, **kw))
        assert_same_stats(got, run("cpp", v, y, inv_t=inv_t, **kw))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [19, 70])
def test_lanes_agree_with_a_numpy_reference(dtype, K):
    x, y = logit_map(100 + K, K, 9, 31, dtype)
    v = dense_view(x)
    w = np.random.default_rng(1).random(v.shape[0])
    for inv_t in (1.0, 0.5):
        (r, conf, correct) = run("numba", v, y, w, inv_t)
        ref = reference(v, y, w, inv_t)
        np.testing.assert_allclose(conf, ref["confidence"], rtol=1e-5)
        np.testing.assert_array_equal(correct, ref["correct"])
        edge = np.abs(ref["confidence"] * N_BINS - np.round(ref["confidence"] * N_BINS)) < 1e-4
        if not edge.any():  # no confidence within float error of a bin edge: the same bins
            np.testing.assert_array_equal(r["count"], ref["count"])
            np.testing.assert_allclose(r["sum_score"], ref["sum_score"], rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(r["sum_target"], ref["sum_target"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(r["totals"]["nll"], ref["nll"], rtol=1e-4)
        np.testing.assert_allclose(r["totals"]["brier"], ref["brier"], rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_one_and_two_threads_give_the_same_bits(dtype):
    K = 19
    x, y = logit_map(7, K, 64, 101, dtype)  # several chunks of 32768 / K rows, ending inside an octet
    v = dense_view(x)
    w = np.random.default_rng(2).random(v.shape[0])
    before = calibkit.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            calibkit.set_num_threads(n)
            results.append(run("numba", v, y, w, 0.8))
    finally:
        calibkit.set_num_threads(before)
    assert_same_stats(results[0], results[1])
    assert_same_stats(results[0], run("numba", np.ascontiguousarray(v), y, w, 0.8))


@pytest.mark.parametrize("lane", range(8))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_bad_value_in_any_lane_is_reported_as_the_generic_path_does(lane, value):
    K = 67
    x, y = logit_map(3, K, 4, 8, np.float32)  # 32 rows: four octets of rows
    x.reshape(K, -1)[66, 8 + lane] = value  # the last class: in the tail octet of the second flush block
    x.reshape(K, -1)[3, 24 + lane] = value
    v = dense_view(x)
    before = np.array(x, copy=True)
    got = run("numba", v, y)
    assert got[0]["status"][:3] == (1, 8 + lane, 66)
    assert_same_stats(got, run("numba", np.ascontiguousarray(v), y))
    assert_same_stats(got, run("cpp", v, y))
    assert x.tobytes() == before.tobytes()  # the input is not written
