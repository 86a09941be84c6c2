"""The dense (pixel-contiguous, class-strided) path of the temperature fit's NLL pass.

The adapter (calibkit._dense) gives the kernels per-image (H W, K) row views of a (N, K, H, W) map whose row
stride is the itemsize and whose class stride is H W itemsize. For float16 / float32 logits,
``temperature_nll`` reads such rows in blocks of 64, class by class, and sums 8 rows at a time with SIMD
across rows (C++), or from a class-major block buffer (Numba). Every sum must be bit-identical to the generic
path on the same rows (forced by a C-ordered copy of the same rows), on both backends, for any thread count,
so the fitted temperature does not change; errors name the same element.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend

KEYS = ("count", "weight", "loss", "d1", "d2", "d3", "d4", "d5", "r4d2", "range")


def dense_view(x):
    """Rows of one image of a (K, H, W) map: (H W, K), row stride = itemsize (no copy)."""
    K = x.shape[0]
    v = np.moveaxis(x, 0, -1).reshape(-1, K)
    assert v.strides[0] == x.itemsize and np.shares_memory(v, x)
    return v


def logit_map(rng, K, H, W, dtype, scale=3.0):
    x = (scale * rng.standard_normal((K, H, W))).astype(dtype)
    y = rng.integers(0, K, H * W)
    x.reshape(K, -1)[y, np.arange(H * W)] += dtype(2.0)
    return x, y


def run(backend, s, y, w=None, b=1.0):
    return _backend.kernels(backend).temperature_nll(s, y, w, b)


def assert_same_bits(ra, rb):
    for key in KEYS:
        assert np.float64(ra[key]).tobytes() == np.float64(rb[key]).tobytes(), (key, ra[key], rb[key])
    assert repr(ra["status"]) == repr(rb["status"])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("K", [2, 3, 5, 8, 9, 15, 16, 17, 19, 24, 33, 40])
@pytest.mark.parametrize("b", [1.0, 0.37, 2.9])
def test_dense_rows_equal_the_generic_path(backend, dtype, K, b):
    rng = np.random.default_rng(K)
    x, y = logit_map(rng, K, 7, 11, dtype)  # 77 rows: not a multiple of 8
    v = dense_view(x)
    c = np.ascontiguousarray(v)
    assert_same_bits(run(backend, v, y, None, b), run(backend, c, y, None, b))
    w = rng.random(v.shape[0])
    assert_same_bits(run(backend, v, y, w, b), run(backend, c, y, w, b))
    # a piece starting inside an octet of rows and ending inside another (as the adapter's pieces may)
    assert_same_bits(run(backend, v[5:70], y[5:70], w[5:70], b), run(backend, c[5:70], y[5:70], w[5:70], b))
    # fewer rows than one octet: the generic loop alone
    assert_same_bits(run(backend, v[:5], y[:5], None, b), run(backend, c[:5], y[:5], None, b))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [2, 19, 40])
def test_large_logits_clamp_the_same(backend, dtype, K):
    # bf (z - max) below -87 is clamped (and counted in the row's range): large logits, a large b.
    rng = np.random.default_rng(10 + K)
    x, y = logit_map(rng, K, 5, 23, dtype, scale=60.0 if dtype == np.float32 else 20.0)
    v = dense_view(x)
    c = np.ascontiguousarray(v)
    for b in (1.0, 5.0, 300.0):
        assert_same_bits(run(backend, v, y, None, b), run(backend, c, y, None, b))
    # constant rows (every t = 0)
    x[:] = dtype(1.5)
    c = np.ascontiguousarray(v)
    assert_same_bits(run(backend, v, y, None, 0.8), run(backend, c, y, None, 0.8))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [19, 70])
def test_dense_rows_across_chunks_and_threads(backend, threads, dtype, K):
    # Several chunks, whose ends fall inside a block of 8 rows.
    rng = np.random.default_rng(1)
    x, y = logit_map(rng, K, 61, 97, dtype)
    v = dense_view(x)
    w = rng.random(v.shape[0])
    results = []
    for n in (1, 2, 3):
        calibkit.set_num_threads(n)
        results.append(run(backend, v, y, w, 0.7))
    generic = run(backend, np.ascontiguousarray(v), y, w, 0.7)
    for r in results:
        assert_same_bits(r, generic)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [3, 19, 33])
def test_backends_agree_on_dense_rows(dtype, K):
    rng = np.random.default_rng(2)
    x, y = logit_map(rng, K, 13, 29, dtype)
    v = dense_view(x)
    w = rng.random(v.shape[0])
    for b in (1.0, 1.7):
        assert_same_bits(run("cpp", v, y, w, b), run("numba", v, y, w, b))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "label", "negative_label", "weight", "nan_weight",
                                 "label_before_nan", "nan_before_label", "same_row"])
def test_errors_name_the_same_element(backend, dtype, bad):
    rng = np.random.default_rng(4)
    K = 19
    x, y = logit_map(rng, K, 9, 15, dtype)  # 135 rows
    y = y.copy()
    w = rng.random(y.shape[0])
    flat = x.reshape(K, -1)
    if bad in ("nan", "inf", "-inf"):
        flat[5, 77] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[bad]
        flat[2, 120] = np.nan
    elif bad == "label":
        y[70] = K
    elif bad == "negative_label":
        y[3] = -1
    elif bad == "weight":
        w[66] = -1.0
    elif bad == "nan_weight":
        w[130] = np.nan
    elif bad == "label_before_nan":
        y[65] = 40
        flat[7, 68] = np.nan
    elif bad == "nan_before_label":
        flat[7, 65] = np.nan
        y[68] = 40
    else:  # a bad label and a NaN in the same row: the label is reported (checked first)
        y[40] = K + 3
        flat[1, 40] = np.inf
    v = dense_view(x)
    c = np.ascontiguousarray(v)
    rd, rc = run(backend, v, y, w, 0.9), run(backend, c, y, w, 0.9)
    assert rd["status"][0] != 0
    assert_same_bits(rd, rc)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_errors_through_the_fit_name_the_caller_element(backend, dtype):
    rng = np.random.default_rng(5)
    K = 7
    x = rng.standard_normal((2, K, 6, 5)).astype(dtype)
    y = rng.integers(0, K, (2, 6, 5))
    x[1, 3, 2, 4] = np.nan
    with pytest.raises(ValueError, match=r"logits\[1, 3, 2, 4\] = nan"):
        calibkit.TemperatureScaling(backend=backend).fit(x, y)
    x[1, 3, 2, 4] = 0.0
    y[0, 4, 1] = K
    with pytest.raises(ValueError, match=rf"labels\[0, 4, 1\] = {K} is out of range"):
        calibkit.TemperatureScaling(backend=backend).fit(x, y)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_fit_on_a_map_equals_the_fit_on_piecewise_copies(backend, dtype):
    # The fitted T is unchanged by the dense path: the same sums as the C-ordered copy of every piece.
    rng = np.random.default_rng(6)
    K = 19
    x = (2.0 * rng.standard_normal((3, K, 9, 13))).astype(dtype)
    y = rng.integers(0, K, (3, 9, 13))
    dense = calibkit.TemperatureScaling(backend=backend).fit(x, y).temperature_
    k = _backend.kernels(backend)

    def sums(b):
        total = dict.fromkeys(KEYS, 0.0)
        for n in range(3):
            r = k.temperature_nll(np.ascontiguousarray(dense_view(x[n])), y[n].ravel(), None, b)
            for key in KEYS[:-1]:
                total[key] += r[key]
            total["range"] = max(total["range"], r["range"])
        return total

    copied = calibkit.TemperatureScaling(backend=backend).fit_from_sums(sums, K).temperature_
    assert dense == copied
