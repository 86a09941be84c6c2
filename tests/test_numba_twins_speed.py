"""The Numba twins made faster for issue 13 (isotonic fit by radix sort, ranking walks without curve arrays,
vectorised float32 row scans and logs) give the C++ kernels' results: bit for bit where both compute the same
float operations, on odd shapes, strides, ties and bad rows. Correctness only: no timings here."""

from __future__ import annotations

import numpy as np
import pytest

import calibkit
from calibkit import _core
from calibkit._numba import ranking as numba_ranking
from calibkit._numba import uncertainty as numba_uncertainty


def _same_bits(a, b):
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 70_000])
@pytest.mark.parametrize("kind", ["random", "ties", "signed_zeros"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("increasing", [True, False])
def test_isotonic_fit_on_x_is_bitwise_the_cpp_fit(n, kind, weighted, increasing):
    rng = np.random.default_rng(n)
    x = rng.random(n)
    if kind == "ties":
        x = np.round(x * 7) / 7 - 0.5
    elif kind == "signed_zeros":  # -0.0 and 0.0 are one value, kept in input order (stable sort)
        x = np.where(rng.random(n) < 0.5, -0.0, 0.0) + np.where(rng.random(n) < 0.3, rng.standard_normal(n), 0.0)
    y = (rng.random(n) < 0.5).astype(np.float64)
    w = rng.random(n) + 0.1 if weighted else None
    a = calibkit.isotonic_regression(y, x=x, sample_weight=w, increasing=increasing, backend="cpp")
    b = calibkit.isotonic_regression(y, x=x, sample_weight=w, increasing=increasing, backend="numba")
    for field in ("fitted", "order", "blocks", "values", "weights"):
        assert _same_bits(getattr(a, field), getattr(b, field)), field
    assert np.array_equal(b.order, np.argsort(x, kind="stable"))


@pytest.mark.parametrize("sizes", [(0, 5), (5, 0), (1, 1), (7, 3), (1000, 999), (30_000, 20_000)])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_ranking_walks_are_bitwise_the_cpp_walks(sizes, ties, dtype):
    P, N = sizes
    rng = np.random.default_rng(P + N)
    p, n = rng.standard_normal(P) + 0.5, rng.standard_normal(N)
    if ties:
        p, n = np.round(p * 3) / 3, np.round(n * 3) / 3
    p, n = p.astype(dtype), n.astype(dtype)
    for want_curve in (False, True):
        a = _core.two_sample_ranking(p, n, 0.95, want_curve)
        b = numba_ranking.two_sample_ranking(p, n, 0.95, want_curve)
        assert sorted(a) == sorted(b)
        for key in a:
            if key == "status":
                assert a[key] == b[key]
            else:
                assert _same_bits(a[key], b[key]), key


def _logit_rows(K, dtype, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((40, K)) * 3).astype(dtype)
    z[::3, 0] = z[::3, -1]  # the maximum twice (margin 0)
    z[1::5] = np.round(z[1::5])  # many ties
    z[2, :] = 1.0  # all equal
    z[6, :] = -5.0
    z[6, K // 2] = 7.0  # one peak
    return z


@pytest.mark.parametrize("K", [1, 2, 7, 8, 9, 17, 100, 1001])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", ["C", "reversed", "fortran"])
def test_float_row_scores_match_cpp(K, dtype, layout):
    z = _logit_rows(K, dtype, K)
    z = {"C": z, "reversed": z[:, ::-1], "fortran": np.asfortranarray(z)}[layout]
    for b in (1.0, 0.7):
        a = _core.row_scores(z, True, b, 63)
        c = numba_uncertainty.row_scores(z, True, b, 63)
        assert a["status"] == c["status"]
        for kind in range(6):
            if kind == numba_uncertainty.MARGIN:  # 1 - e^{b (m2 - m1)} in double: libm exp vs simd.hpp's
                np.testing.assert_allclose(c[kind], a[kind], rtol=1e-13, atol=1e-300)
            else:
                assert _same_bits(a[kind], c[kind]), kind


@pytest.mark.parametrize("K", [2, 9, 100])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_bad_float_rows_are_named_as_in_cpp(K, bad):
    z = _logit_rows(K, np.float32, 3)
    z[4, K - 1] = bad
    z[9, 0] = bad
    for kinds in (63, 2, 4):
        a = _core.row_scores(z, True, 1.0, kinds)
        c = numba_uncertainty.row_scores(z, True, 1.0, kinds)
        assert repr(a["status"]) == repr(c["status"])
        for kind in a:
            if kind != "status":
                assert np.isnan(c[kind][[4, 9]]).all()
                np.testing.assert_allclose(c[kind], a[kind], rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("K", [1, 3, 8, 13, 100])
@pytest.mark.parametrize("from_logits", [False, True])
def test_float32_decompose_matches_cpp(K, from_logits):
    rng = np.random.default_rng(K)
    z = rng.standard_normal((5, 37, K)).astype(np.float32) * 2
    if from_logits:
        x = z
    else:
        e = np.exp(z - z.max(axis=2, keepdims=True))
        x = (e / e.sum(axis=2, keepdims=True)).astype(np.float32)
        x[:, 3, 0] = 0.0  # a zero probability
    a = _core.ensemble_decompose(x, from_logits)
    b = numba_uncertainty.ensemble_decompose(x, from_logits)
    assert a["status"] == b["status"]
    assert np.array_equal(a["prediction"], b["prediction"])
    for key in ("mean", "total", "aleatoric", "epistemic", "variance"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-12, atol=1e-15)
