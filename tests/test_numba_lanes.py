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


@numba.njit
def _exp_sums(buf, k, best, bf, scaled, n2):
    if scaled:
        if n2:
            return _common.exp_lane_sums_f32(buf, k, best, bf, True, 2)
        return _common.exp_lane_sums_f32(buf, k, best, bf, True, 1) + (0.0,)
    if n2:
        return _common.exp_lane_sums_f32(buf, k, best, bf, False, 2)
    return _common.exp_lane_sums_f32(buf, k, best, bf, False, 1) + (0.0,)


@numba.njit
def _exps_then_sums(buf, k, best, bf, scaled):
    """The two loops exp_lane_sums_f32 fuses: exp_f32 element by element, padding 0, then lane_sums_f32."""
    for j in range(k):
        buf[j] = _common.exp_f32(bf * (buf[j] - best) if scaled else buf[j] - best)
    for j in range(k, buf.shape[0]):
        buf[j] = 0.0
    return _common.lane_sums_f32(buf, buf, buf.shape[0], 2)


@pytest.mark.parametrize("k", [1, 7, 8, 9, 63, 64, 65, 127, 128, 136, 1000, 1031])
@pytest.mark.parametrize("scaled", [False, True])
def test_exp_lane_sums_are_the_two_loops_they_fuse(k, scaled):
    """exp_lane_sums_f32 (two octets per step in whole flush blocks, octet by octet after them) gives the bits of
    an exp loop then lane_sums_f32, for every K % 64 and K % 8, with and without the temperature; the row it
    leaves holds the same exponentials and a padding of 0."""
    rng = np.random.default_rng(k)
    z = (3.0 * rng.standard_normal(k)).astype(np.float32)
    z[rng.integers(0, k)] = -200.0  # below exp_f32's clamp
    kp = (k + 7) // 8 * 8
    best, bf = np.float32(z.max()), np.float32(0.7 if scaled else 1.0)
    want_buf = np.full(kp, np.nan, np.float32)  # the padding starts as anything
    want_buf[:k] = z
    got_buf = want_buf.copy()
    want = _exps_then_sums(want_buf, k, best, bf, scaled)
    got = _exp_sums(got_buf, k, best, bf, scaled, True)
    assert got == want
    assert _exp_sums(np.pad(z, (0, kp - k)), k, best, bf, scaled, False)[0] == want[0]  # n = 1: the same sum
    np.testing.assert_array_equal(got_buf, want_buf)


@numba.njit
def _octets(e, k8, tf, scale, w, sum0, weight0, lst, weighted):
    if weighted:
        return _common.classwise_octets_f32(e, k8, tf, scale, w, sum0, weight0, lst, True)
    return _common.classwise_octets_f32(e, k8, tf, scale, w, sum0, weight0, lst, False)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("k", [0, 8, 16, 100, 1000])
def test_classwise_octets_against_numpy(k, weighted):
    """classwise_octets_f32: elements at or below tf add e * scale (times w) to sum0 and w to weight0, the others
    0, each octet with one above listed as k << 8 | its lanes above, in order; NumPy's float64 products are the
    same IEEE operations."""
    rng = np.random.default_rng(k)
    e = (rng.random(k + 8) ** 4).astype(np.float32)
    k8 = k - k % 8
    tf, scale, w = np.float32(0.5), 0.37, (1.7 if weighted else 1.0)
    sum0, weight0 = rng.random(k + 8), rng.random(k + 8)
    want_sum0, want_weight0 = sum0.copy(), weight0.copy()
    lst = np.zeros(k // 8 + 1, np.uint64)
    listed = _octets(e, k8, tf, scale, w, sum0, weight0, lst, weighted)
    below = e[:k8] <= tf
    add = e[:k8].astype(np.float64) * scale
    if weighted:
        add = add * w
    want_sum0[:k8] += np.where(below, add, 0.0)
    if weighted:
        want_weight0[:k8] += np.where(below, w, 0.0)
    np.testing.assert_array_equal(sum0, want_sum0)
    np.testing.assert_array_equal(weight0, want_weight0)
    want_list = [q << 8 | int(sum(1 << j for j in range(8) if not below[q + j]))
                 for q in range(0, k8, 8) if not below[q:q + 8].all()]
    assert listed == len(want_list)
    assert [int(v) for v in lst[:listed]] == want_list


@numba.njit
def _nll_lanes(x):
    buf = x.copy()
    _common.nll_lanes(buf)
    return buf


@numba.njit
def _nll_scalar(x):
    out = np.empty(x.shape[0])
    for j in range(x.shape[0]):
        out[j] = -_common.log_positive(x[j]) if x[j] > 0.0 else np.inf
    return out


def _log_positive_numpy(x):
    """simd.hpp's log_positive in NumPy float64 operations, one by one in its order (each IEEE-rounded as the
    kernels' own): exponent and mantissa from the bits, subnormals scaled by 2^54, the mantissa in
    [sqrt(2)/2, sqrt(2)), 2 f (1 + f^2/3 + ... + f^20/21) by Estrin's scheme, e ln2 in two parts."""
    x = np.asarray(x, np.float64)
    tiny = x < 2.2250738585072014e-308
    x = np.where(tiny, x * 18014398509481984.0, x)
    bits = x.view(np.int64)
    e = (((bits >> 52) & 0x7FF) | 0x4330000000000000).view(np.float64) - (4503599627370496.0 + 1023.0)
    e = e - np.where(tiny, 54.0, 0.0)
    m = ((bits & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000).view(np.float64)
    big = m > 1.4142135623730951
    m = np.where(big, m * 0.5, m)
    e = e + np.where(big, 1.0, 0.0)
    f = (m - 1.0) / (m + 1.0)
    f2 = f * f
    f4 = f2 * f2
    f8 = f4 * f4
    b0 = (1.0 + f2 * (1.0 / 3.0)) + (1.0 / 5.0 + f2 * (1.0 / 7.0)) * f4
    b1 = (1.0 / 9.0 + f2 * (1.0 / 11.0)) + (1.0 / 13.0 + f2 * (1.0 / 15.0)) * f4
    b2 = (1.0 / 17.0 + f2 * (1.0 / 19.0)) + (1.0 / 21.0) * f4
    series = (b0 + b1 * f8) + (b2 * f8) * f8
    return e * 6.93147180369123816490e-01 + ((f + f) * series + e * 1.90821492927058770002e-10)


def test_log_positive_scalar_and_lanes_are_its_operations_bit_for_bit():
    # log_positive (scalar) and nll_lanes (eight double lanes) against the same operations done one by one in
    # NumPy: the same bits for every positive double (subnormals, the sqrt(2) split of the mantissa, the
    # largest), +inf for 0, negatives and NaN; and within 1e-15 of np.log
    rng = np.random.default_rng(3)
    edge = [5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, 1e-12, 0.5, 1.0, 1.0 + 2**-52, 1.4142135623730950,
            1.4142135623730951, 1.4142135623730952, 2.0, 1e300, np.finfo(np.float64).max, np.inf, 0.0, -0.0, -1.0,
            np.nan]
    x = np.concatenate([edge, np.exp(rng.uniform(-745, 709, 4000)), rng.random(4000)])
    x = np.concatenate([x, np.zeros(-len(x) % 8)])
    positive = (x > 0) & np.isfinite(x)
    want = np.full(len(x), np.inf)
    with np.errstate(all="ignore"):
        want[positive] = -_log_positive_numpy(x[positive])
    lanes = np.concatenate([_nll_lanes(x[i:i + 8]) for i in range(0, len(x), 8)])
    scalar = _nll_scalar(x)
    assert np.array_equal(lanes[positive].view(np.int64), want[positive].view(np.int64))
    assert np.array_equal(scalar[positive].view(np.int64), want[positive].view(np.int64))
    assert np.all(np.isinf(lanes[~(x > 0)])) and np.all(np.isinf(scalar[~(x > 0)]))
    assert np.allclose(lanes[positive], -np.log(x[positive]), rtol=1e-15, atol=0)
