"""The shared Numba lane intrinsics (_numba/_common.py) against plain NumPy references of the same order."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from calibkit._numba import _common


def _octet_sum(d):
    return ((d[0] + d[4]) + (d[1] + d[5])) + ((d[2] + d[6]) + (d[3] + d[7]))


def _reference(x, y, kp, n):
    """S_j = sum x y^j: products chained in float32, element k in float lane k % 8, flushed to double every
    LANE_FLUSH elements, octet_sum: NumPy float32 vectors of 8 lanes do the same IEEE operations."""
    d = np.zeros((n, 8))
    for f in range(0, kp, _common.LANE_FLUSH):
        a = np.zeros((n, 8), np.float32)
        for k in range(f, min(f + _common.LANE_FLUSH, kp), 8):
            p = x[k:k + 8].copy()
            a[0] += p
            for j in range(1, n):
                p = p * y[k:k + 8]
                a[j] += p
        d += a.astype(np.float64)
    return tuple(float(_octet_sum(d[j])) for j in range(n))


@numba.njit
def _sums2(x, y, kp):
    return _common.lane_sums_f32(x, y, kp, 2)


@numba.njit
def _sums6(x, y, kp):
    return _common.lane_sums_f32(x, y, kp, 6)


@numba.njit
def _squares(x, kp):
    return _common.lane_sums_f32(x, x, kp, 2)


@pytest.mark.parametrize("kp", [0, 8, 56, 64, 72, 128, 1000, 1024 + 8])
def test_lane_sums_match_the_lane_order(kp):
    rng = np.random.default_rng(kp)
    x = (rng.random(kp + 8) * rng.choice([1e-3, 1.0, 1e3], kp + 8)).astype(np.float32)
    y = (rng.standard_normal(kp + 8) * 4).astype(np.float32)
    assert _sums2(x, y, kp) == _reference(x, y, kp, 2)
    assert _sums6(x, y, kp) == _reference(x, y, kp, 6)
    assert _squares(x, kp) == _reference(x, x, kp, 2)


def test_lane_sums_are_not_a_plain_sum():
    # the float partials round: the lane order is visible in the result, so the test above checks it
    x = np.full(4096, 0.1, np.float32)
    ref = _reference(x, x, 4096, 2)
    assert ref[0] != float(np.sum(x.astype(np.float64)))
    assert _squares(x, 4096) == ref


def test_lane_sums_vectorise():
    llvm = "\n".join(_sums6.inspect_llvm().values())
    assert "<8 x float>" in llvm and "<8 x double>" in llvm


@numba.njit
def _first_index(buf, k, value):
    at = _common.lane_find_f32(buf, k - k % 8, value)
    while buf[at] != value:
        at += 1
    return at


@pytest.mark.parametrize("k", [1, 7, 8, 9, 16, 17, 100, 1000])
def test_lane_find_gives_the_first_index_of_the_maximum(k):
    rng = np.random.default_rng(k)
    for _ in range(50):
        buf = rng.integers(0, 4, k + 8).astype(np.float32)  # ties: the first index counts
        buf[k:] = 9.0  # beyond k: never searched
        assert _first_index(buf, k, buf[:k].max()) == int(np.argmax(buf[:k]))
