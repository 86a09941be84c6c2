"""The fit kernels' Numba twins (softmax.py, scaling.py): temperature_nll, vector_scaling_nll and vector_scale
give the bits of the C++ kernels for every dtype (float64 temperature rows and vector scaling now use the twin of
simd.hpp's exp_nonpositive and the C++ lane order; dense float rows are summed 8 at a time, one per float lane),
the same bits for 1 and 2 threads and for several groups of chunks (the drivers hand the chunks out by ticket,
with partials allocated once per call), and agree with plain NumPy references."""

import threading

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

import calibkit
from calibkit import _backend
from calibkit._numba._common import CHUNK_ELEMENTS, MAX_GROUP, exp_nonpositive
from conftest import overconfident_logits

CPP, NB = _backend.kernels("cpp"), _backend.kernels("numba")
TEMPERATURE_KEYS = ("count", "weight", "loss", "d1", "d2", "d3", "d4", "d5", "r4d2", "range", "status")


def data(rng, n, k, dtype, layout="C"):
    z = rng.normal(scale=3.0, size=(n, k)).astype(dtype)
    if layout == "F":
        z = np.asfortranarray(z)
    elif layout == "strided":
        z = np.repeat(z, 2, axis=1)[:, ::2]
    return z, rng.integers(0, k, n), rng.random(n)


def numpy_temperature(z, y, w, b):
    """Loss, d1 and d2 of sum_i w_i [LSE(b z_i) - b z_iy] in b, float64."""
    z = np.asarray(z, np.float64)
    p = softmax(b * z, axis=1)
    zy = z[np.arange(len(y)), y]
    mean = (p * z).sum(1)
    return {"loss": float((w * (logsumexp(b * z, axis=1) - b * zy)).sum()),
            "d1": float((w * (mean - zy)).sum()), "d2": float((w * ((p * z * z).sum(1) - mean ** 2)).sum())}


def numpy_vector(z, y, w, a, c):
    z = np.asarray(z, np.float64)
    u = z * a + c
    p = softmax(u, axis=1)
    g = p.copy()
    g[np.arange(len(y)), y] -= 1.0
    g *= w[:, None]
    return float((w * (logsumexp(u, axis=1) - u[np.arange(len(y)), y])).sum()), (g * z).sum(0), g.sum(0)


def same_vector(r, s):
    for key in ("count", "weight", "loss", "status"):
        assert r[key] == s[key], key
    np.testing.assert_array_equal(r["grad_scale"], s["grad_scale"])
    np.testing.assert_array_equal(r["grad_bias"], s["grad_bias"])


def test_exp_nonpositive_is_accurate():
    x = np.concatenate([-np.logspace(-12, np.log10(708), 2001), [0.0, -1e-300, -708.0]])
    got = np.array([exp_nonpositive(v) for v in x])
    np.testing.assert_allclose(got, np.exp(x), rtol=2e-16 * 4)
    assert exp_nonpositive(-800.0) == exp_nonpositive(-708.0) == exp_nonpositive(-np.inf)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3, 8, 9, 20, 100])
def test_temperature_twin_has_the_cpp_bits(dtype, k):
    rng = np.random.default_rng(k)
    z, y, w = data(rng, 700, k, dtype)
    for weights in (None, w):
        r, s = CPP.temperature_nll(z, y, weights, 0.7), NB.temperature_nll(z, y, weights, 0.7)
        assert r == s
        ref = numpy_temperature(z, y, np.ones(len(y)) if weights is None else weights, 0.7)
        for key, v in ref.items():
            assert s[key] == pytest.approx(v, rel=1e-5 if dtype != np.float64 else 1e-10, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("k", [2, 9, 19, 100])
def test_dense_temperature_rows_have_the_cpp_bits(threads, dtype, k):
    """Dense rows (a map's pixels, classes far apart): blocks copied class-major, 8 rows summed at a time (one per
    float lane); bad elements, bad labels, blocks and groups of 8 cut short by a chunk's or the input's end."""
    rng = np.random.default_rng(k + 7)
    n = 5000
    x = (rng.normal(size=(k, n)) * 3).astype(dtype)
    x[k - 1, 3001] = np.inf
    s, y, w = x.T, rng.integers(0, k, n), rng.random(n)
    y[77] = -1
    ref = numpy_temperature(np.delete(s, [77, 3001], 0), np.delete(y, [77, 3001]), np.ones(n - 2), 0.6)
    for t in (1, 2):
        calibkit.set_num_threads(t)
        for weights in (None, w):
            r = NB.temperature_nll(s, y, weights, 0.6)
            assert r == CPP.temperature_nll(s, y, weights, 0.6)
            assert r["status"][:2] == (3, 77)
        for rows in (slice(200, 201), slice(200, 205), slice(200, 264)):  # fewer than 8 rows, one block
            assert NB.temperature_nll(s[rows], y[rows], w[rows], 0.6) == CPP.temperature_nll(s[rows], y[rows], w[rows],
                                                                                              0.6)
        part = NB.temperature_nll(s[100:3000], y[100:3000], None, 0.6)
        assert part == CPP.temperature_nll(s[100:3000], y[100:3000], None, 0.6) and part["status"][0] == 0
    r = NB.temperature_nll(np.delete(s, [77, 3001], 0).T.copy().T, np.delete(y, [77, 3001]), None, 0.6)
    for key, v in ref.items():
        assert r[key] == pytest.approx(v, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3, 8, 9, 100, 1000])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_vector_twin_has_the_cpp_bits(dtype, k, layout):
    rng = np.random.default_rng(k + 1)
    z, y, w = data(rng, 300, k, dtype, layout)
    a, c = rng.random(k) + 0.5, rng.normal(size=k)
    for weights in (None, w):
        r, s = CPP.vector_scaling_nll(z, y, weights, a, c), NB.vector_scaling_nll(z, y, weights, a, c)
        same_vector(r, s)
        loss, ga, gc = numpy_vector(z, y, np.ones(len(y)) if weights is None else weights, a, c)
        assert s["loss"] == pytest.approx(loss, rel=1e-12)
        np.testing.assert_allclose(s["grad_scale"], ga, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(s["grad_bias"], gc, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_bad_rows_are_reported_alike(dtype):
    rng = np.random.default_rng(3)
    z, y, w = data(rng, 5000, 12, dtype)
    z[4000, 7] = np.inf
    z[2100, 11] = np.nan
    z[2100, 3] = -np.inf
    y[4500] = 12
    w[100] = 0.0
    a, c = rng.random(12) + 0.5, rng.normal(size=12)
    for weights in (None, w):
        r, s = CPP.vector_scaling_nll(z, y, weights, a, c), NB.vector_scaling_nll(z, y, weights, a, c)
        same_vector(r, s)
        assert s["status"][:3] == (1, 2100, 3)
        assert CPP.temperature_nll(z, y, weights, 1.3) == NB.temperature_nll(z, y, weights, 1.3)
    w[50] = -1.0
    same_vector(CPP.vector_scaling_nll(z, y, w, a, c), NB.vector_scaling_nll(z, y, w, a, c))
    assert CPP.temperature_nll(z, y, w, 1.3) == NB.temperature_nll(z, y, w, 1.3)


@pytest.mark.parametrize("k", [1000, 100])
def test_one_and_two_threads_and_many_groups_give_the_same_bits(threads, k):
    """More than one group of MAX_GROUP chunks (partials cleared and reused), tickets, 1 vs 2 threads, both
    backends."""
    n = (MAX_GROUP + 30) * (CHUNK_ELEMENTS // k)
    rng = np.random.default_rng(n)
    z, y, w = data(rng, n, k, np.float32)
    a, c = rng.random(k) + 0.5, rng.normal(size=k)
    out = {}
    for t in (1, 2):
        calibkit.set_num_threads(t)
        for name, kern in (("cpp", CPP), ("numba", NB)):
            out[t, name] = (kern.temperature_nll(z, y, w, 0.55), kern.vector_scaling_nll(z, y, None, a, c))
    first = out[1, "cpp"]
    for v in out.values():
        assert v[0] == first[0]
        same_vector(v[1], first[1])


def test_concurrent_numba_calls_give_the_same_bits(threads):
    """Two Python threads in the Numba fit kernels at once (one of them runs the serial twin): the same bits."""
    calibkit.set_num_threads(2)
    rng = np.random.default_rng(9)
    z, y, w = data(rng, 4000, 300, np.float32)
    a, c = rng.random(300) + 0.5, rng.normal(size=300)
    want = (NB.temperature_nll(z, y, w, 0.8), NB.vector_scaling_nll(z, y, w, a, c))
    got = [None, None]

    def call(j):
        got[j] = [(NB.temperature_nll(z, y, w, 0.8), NB.vector_scaling_nll(z, y, w, a, c)) for _ in range(3)]

    workers = [threading.Thread(target=call, args=(j,)) for j in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for results in got:
        for r in results:
            assert r[0] == want[0]
            same_vector(r[1], want[1])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (3000, 9), (40_000, 100)])
def test_vector_scale_twin(threads, dtype, shape):
    from calibkit._numba.scaling import vector_scale

    n, k = shape
    rng = np.random.default_rng(n + k)
    z = rng.normal(scale=3.0, size=(n, k)).astype(dtype)
    a, c = rng.random(k) + 0.5, rng.normal(size=k)
    want = np.asarray(z, np.float64) * a + c
    for t in (1, 2):
        calibkit.set_num_threads(t)
        out, ref = np.empty((n, k)), np.empty((n, k))
        assert vector_scale(z, a, c, out) == CPP.vector_scale(z, a, c, ref) == (0, -1, -1, 0.0)
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(out, ref)
    if n > 100:  # the first non-finite output in row-major order, whichever chunk finds it first
        z[n - 1, 0] = np.inf
        z[n // 2, k - 1] = np.nan
        for t in (1, 2):
            calibkit.set_num_threads(t)
            out, ref = np.empty((n, k)), np.empty((n, k))
            s, r = vector_scale(z, a, c, out), CPP.vector_scale(z, a, c, ref)
            assert s[:3] == r[:3] == (1, n // 2, k - 1)
            np.testing.assert_array_equal(out, ref)


def test_fits_agree_across_backends():
    z, y = overconfident_logits(20_000, 300, 4)  # a warm-started fit (subsamples, then one full pass)
    fits = [calibkit.TemperatureScaling(backend=b).fit(z, y) for b in ("cpp", "numba")]
    assert fits[0].temperature_ == fits[1].temperature_ and fits[0].n_passes_ == fits[1].n_passes_
    assert fits[0].temperature_ > 1.0
    rng = np.random.default_rng(4)
    p = softmax(rng.normal(size=(3000, 6)) * 2, axis=1).astype(np.float32)
    yy = rng.integers(0, 6, 3000)
    fits = [calibkit.DirichletCalibration("diagonal", backend=b).fit(p, yy) for b in ("cpp", "numba")]
    np.testing.assert_array_equal(fits[0].coef_, fits[1].coef_)
    np.testing.assert_array_equal(fits[0].intercept_, fits[1].intercept_)


@pytest.mark.parametrize("dtype, layout, want", [(np.float32, "F", "dense"), (np.float16, "F", "dense"),
                                                 (np.float32, "C", "single"), (np.float16, "strided", "single"),
                                                 (np.float64, "F", "double"), (np.float64, "C", "double")])
def test_temperature_driver_copy_per_row_path(dtype, layout, want):
    """temperature_nll runs the driver's copy for the input's row path (its chunk compiled for that path only),
    and that copy gives the C++ bits."""
    from calibkit._numba import softmax as nbs

    z, y, w = data(np.random.default_rng(3), 300, 12, dtype, layout)
    kz = nbs.as_kernel_array(z)
    path = nbs._temperature_path(kz, dtype != np.float64)
    assert nbs._T_NAMES[path] == want
    assert nbs._temperature_driver_for(path).py_func.__name__ == f"_temperature_driver_{want}"
    assert NB.temperature_nll(z, y, w, 0.7) == CPP.temperature_nll(z, y, w, 0.7)
