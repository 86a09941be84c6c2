"""The single-precision logit path of the binning kernels (float32 / float16 logits, K >= 16).

Rows of at least 16 float32 / float16 logits take one 8-lane float exp per logit
(relative error < 2.5e-7) with sums in double; both backends compute the same bits,
for any thread count and for the SSE2 and AVX2 clones.
"""


import numpy as np
import pytest

import calibkit
from calibkit import _backend

import reference as ref
from subprocess_cases import simd_clone_outputs

KEYS = ("count", "weight", "sum_score", "sum_target")


def realistic_logits(rng, n, k, dtype=np.float32):
    y = rng.integers(0, k, n)
    z = 3.0 * rng.standard_normal((n, k))
    z[np.arange(n), y] += 4.0
    return z.astype(dtype), y


def fused(backend, z, y, w=None, inv_t=1.0):
    n = z.shape[0]
    conf, correct = np.empty(n), np.empty(n, np.uint8)
    r = _backend.kernels(backend).top_label_stats(z, y, w, True, 15, 1e-7, True, conf, correct, inv_t, 15)
    return r, conf, correct


def assert_same_bits(a, b):
    (ra, ca, ka), (rb, cb, kb) = a, b
    for key in KEYS:
        np.testing.assert_array_equal(np.asarray(ra[key]), np.asarray(rb[key]), err_msg=key)
        np.testing.assert_array_equal(ra["classwise"][key], rb["classwise"][key], err_msg="classwise " + key)
    assert ra["totals"] == rb["totals"]
    assert ra["status"] == rb["status"]
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_array_equal(ka, kb)


@pytest.mark.parametrize("K", [16, 23, 100, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_float_logits_match_float64_reference(backend, K, dtype):
    rng = np.random.default_rng(K)
    z, y = realistic_logits(rng, 2000, K, dtype)
    exact = z.astype(np.float64)
    kw = dict(from_logits=True, backend=backend)
    # Each probability within ~1e-6 relative of the float64 softmax; a sum over rows within that too.
    assert calibkit.calibration_error(z, y, **kw) == pytest.approx(ref.calibration_error(exact, y, 15, from_logits=True),
                                                                   rel=1e-5, abs=1e-7)
    assert calibkit.classwise_calibration_error(z, y, **kw) == pytest.approx(
        ref.classwise_calibration_error(exact, y, 15, from_logits=True), rel=1e-5, abs=1e-7)
    assert calibkit.brier_score(z, y, **kw) == pytest.approx(ref.brier_score(exact, y, True), rel=1e-6)
    assert calibkit.nll(z, y, **kw) == pytest.approx(ref.nll(exact, y, True), rel=1e-6)
    # The argmax is exact: accuracy equals NumPy's first-index argmax.
    t = calibkit.reliability_table(z, y, n_bins=15, **kw)
    assert t.accuracy_overall == np.mean(exact.argmax(axis=1) == y)


def test_float64_logits_keep_the_double_path(backend):
    rng = np.random.default_rng(1)
    z, y = realistic_logits(rng, 1500, 40, np.float64)
    got = calibkit.calibration_error(z, y, from_logits=True, backend=backend)
    assert got == pytest.approx(ref.calibration_error(z, y, 15, from_logits=True), rel=1e-10)


@pytest.mark.parametrize("K", [16, 17, 23, 64, 130])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
@pytest.mark.parametrize("inv_t", [1.0, 0.37])
def test_cpp_and_numba_give_the_same_bits(K, dtype, layout, inv_t):
    rng = np.random.default_rng(K + 7)
    z, y = realistic_logits(rng, 700, K, dtype)
    z[5, 3] = z[5].max()  # a tie: the first index wins
    if layout == "F":
        z = np.asfortranarray(z)
    elif layout == "strided":
        wide = np.zeros((z.shape[0], 2 * K), dtype)
        wide[:, ::2] = z
        z = wide[:, ::2]
    w = rng.random(700)
    for weights in (None, w):
        assert_same_bits(fused("cpp", z, y, weights, inv_t), fused("numba", z, y, weights, inv_t))


@pytest.mark.parametrize("backend_name", ["cpp", "numba"])
def test_thread_counts_give_the_same_bits(backend_name, threads):
    rng = np.random.default_rng(11)
    z, y = realistic_logits(rng, 4000, 100)
    results = []
    for n in (1, 2, 4):
        calibkit.set_num_threads(n)
        results.append(fused(backend_name, z, y))
    for other in results[1:]:
        assert_same_bits(results[0], other)


def test_avx2_and_sse2_clones_give_the_same_bits():
    code = (
        "import numpy as np, calibkit\n"
        "from calibkit import _backend\n"
        "rng = np.random.default_rng(0)\n"
        "out = []\n"
        "for k in (16, 21, 100, 1000):\n"
        "    for dt in (np.float32, np.float16):\n"
        "        y = rng.integers(0, k, 3000)\n"
        "        z = 3 * rng.standard_normal((3000, k)); z[np.arange(3000), y] += 4; z = z.astype(dt)\n"
        "        c, cc = np.empty(3000), np.empty(3000, np.uint8)\n"
        "        for w in (None, rng.uniform(0.0, 2.0, 3000)):\n"
        "            r = _backend.kernels('cpp').top_label_stats(z, y, w, True, 15, 1e-7, True, c, cc, 0.7, 15)\n"
        "            cw = r['classwise']\n"
        "            sums = [r['sum_score'], cw['sum_score'], cw['weight'], c]\n"
        "            out += [float(v).hex() for v in np.concatenate(sums)]\n"
        "            out += [float(r['totals'][key]).hex() for key in ('confidence', 'brier', 'nll')]\n"
        "print(hash(tuple(out)), len(out))\n"
    )
    runs = simd_clone_outputs(code)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("bad, col", [(np.nan, 17), (np.inf, 0), (-np.inf, 39)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_float_logits_are_named(backend, bad, col, dtype):
    rng = np.random.default_rng(2)
    z, y = realistic_logits(rng, 300, 40, dtype)
    z[123, col] = bad
    z[200, 5] = np.nan  # a later row: the first problem is reported
    with pytest.raises(ValueError, match=rf"scores\[123, {col}\]"):
        calibkit.calibration_error(z, y, from_logits=True, backend=backend)
    with pytest.raises(ValueError, match=rf"scores\[123, {col}\]"):
        calibkit.classwise_calibration_error(z, y, from_logits=True, backend=backend)


def test_huge_float_logits_stay_finite(backend):
    # z - max overflows to -inf in float for the smallest logits: those terms vanish, nothing is NaN.
    z = np.full((4, 20), -3e38, np.float32)
    z[:, 3] = 3e38
    z[1, 7] = 3e38  # a tie in row 1
    y = np.array([3, 7, 3, 0])
    t = calibkit.reliability_table(z, y, n_bins=10, from_logits=True, backend=backend)
    assert t.accuracy_overall == 0.5  # rows 0 and 2 right (argmax 3); row 1 argmax 3 (first), label 7
    assert np.isfinite(calibkit.calibration_error(z, y, from_logits=True, backend=backend))
