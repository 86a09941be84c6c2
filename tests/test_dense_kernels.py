"""The dense (pixel-contiguous, class-strided) path of the binning kernels.

A (N, K, H, W) segmentation map read by the adapter (calibkit._dense) gives the kernels per-image
(H W, K) row views whose row stride is the itemsize and whose class stride is H W itemsize. For float16 /
float32 logits with K >= 16, ``top_label_stats`` reads such rows in blocks, class by class, and summarises
8 rows at a time with SIMD across rows (C++), or from a class-major block buffer (Numba). Every result must
be bit-identical to the generic path on the same rows (forced here by a C-ordered copy of the same rows),
on both backends, for any thread count; errors name the same element.
"""

import numpy as np
import pytest

import calibkit
from calibkit import _backend
from calibkit._dense import as_dense
from subprocess_cases import simd_clone_outputs

KEYS = ("count", "weight", "sum_score", "sum_target")


def dense_view(x):
    """Rows of one image of a (K, H, W) map: (H W, K), row stride = itemsize (no copy)."""
    K = x.shape[0]
    v = np.moveaxis(x, 0, -1).reshape(-1, K)
    assert v.strides[0] == x.itemsize and not np.shares_memory(v, np.empty(1)) and v.base is not None
    return v


def logit_map(rng, K, H, W, dtype, scale=3.0):
    x = (scale * rng.standard_normal((K, H, W))).astype(dtype)
    y = rng.integers(0, K, H * W)
    x.reshape(K, -1)[y, np.arange(H * W)] += dtype(2.0)
    return x, y


def run(backend, s, y, w=None, inv_t=1.0, n_bins=15, with_nll=True):
    n = s.shape[0]
    conf, correct = np.full(n, -1.0), np.full(n, 7, np.uint8)
    r = _backend.kernels(backend).top_label_stats(s, y, w, True, n_bins, 1e-7, with_nll, conf, correct, inv_t)
    return r, conf, correct


def assert_same_bits(a, b):
    (ra, ca, ka), (rb, cb, kb) = a, b
    for key in KEYS:
        np.testing.assert_array_equal(np.asarray(ra[key]), np.asarray(rb[key]), err_msg=key)
    for key, va in ra["totals"].items():
        vb = rb["totals"][key]
        assert np.asarray(va).tobytes() == np.asarray(vb).tobytes(), (key, va, vb)
    assert repr(ra["status"]) == repr(rb["status"])
    assert ca.tobytes() == cb.tobytes()
    np.testing.assert_array_equal(ka, kb)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("K", [2, 3, 15, 16, 17, 19, 24, 40])
@pytest.mark.parametrize("inv_t", [1.0, 0.6])
def test_dense_rows_equal_the_generic_path(backend, dtype, K, inv_t):
    rng = np.random.default_rng(K)
    x, y = logit_map(rng, K, 7, 11, dtype)  # 77 rows: not a multiple of 8
    v = dense_view(x)
    c = np.ascontiguousarray(v)
    assert_same_bits(run(backend, v, y, inv_t=inv_t), run(backend, c, y, inv_t=inv_t))
    w = rng.random(v.shape[0])
    assert_same_bits(run(backend, v, y, w, inv_t), run(backend, c, y, w, inv_t))
    assert_same_bits(run(backend, v, y, n_bins=0, with_nll=False), run(backend, c, y, n_bins=0, with_nll=False))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [16, 19, 70])
def test_dense_rows_across_chunks_and_threads(backend, threads, dtype, K):
    # Several chunks (a chunk is 32768 / K rows), whose ends fall inside a block of 8 rows.
    rng = np.random.default_rng(1)
    x, y = logit_map(rng, K, 61, 97, dtype)
    v = dense_view(x)
    w = rng.random(v.shape[0])
    results = []
    for n in (1, 2, 3):
        calibkit.set_num_threads(n)
        results.append(run(backend, v, y, w))
    generic = run(backend, np.ascontiguousarray(v), y, w)
    for r in results:
        assert_same_bits(r, generic)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("K", [16, 19, 33])
def test_backends_agree_on_dense_rows(dtype, K):
    rng = np.random.default_rng(2)
    x, y = logit_map(rng, K, 13, 29, dtype)
    v = dense_view(x)
    w = rng.random(v.shape[0])
    for inv_t in (1.0, 1.7):
        assert_same_bits(run("cpp", v, y, w, inv_t), run("numba", v, y, w, inv_t))


def test_every_float16_value_is_read_exactly(backend):
    # The vector float16 -> float conversion on every finite float16 (zeros, subnormals, the extremes).
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = bits.view(np.float16)[np.isfinite(bits.view(np.float16))]
    K = 16
    rows = finite.shape[0] // K
    rng = np.random.default_rng(3)
    vals = rng.permutation(finite)[: rows * K]
    x = np.ascontiguousarray(vals.reshape(rows, K).T).reshape(K, rows, 1)
    y = rng.integers(0, K, rows)
    v = dense_view(x)
    assert_same_bits(run(backend, v, y), run(backend, np.ascontiguousarray(v), y))
    # small values only, so the maxima and exps are not dominated by +-65504
    small = finite[np.abs(finite.astype(np.float32)) < 8]
    vals = rng.choice(small, rows * K)
    x = np.ascontiguousarray(vals.reshape(rows, K).T).reshape(K, rows, 1)
    v = dense_view(x)
    assert_same_bits(run(backend, v, y), run(backend, np.ascontiguousarray(v), y))


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
    elif bad == "same_row":  # the label is checked before the scores, as in the generic loop
        flat[1, 66] = np.inf
        y[66] = 99
    v = dense_view(x)
    a = run(backend, v, y, w)
    b = run(backend, np.ascontiguousarray(v), y, w)
    assert a[0]["status"][0] != 0
    assert_same_bits(a, b)


LAYOUTS = ["class_second", "channel_last", "slice", "fortran", "memmap"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_adapter_pieces_equal_their_c_ordered_copies(backend, layout, dtype, tmp_path):
    # Every piece the adapter gives the kernel (dense or not) gives the same bits as its C-ordered copy.
    rng = np.random.default_rng(5)
    N, K, H, W = 2, 19, 10, 13
    x = (3 * rng.standard_normal((N, K, H, W))).astype(dtype)
    y = rng.integers(0, K, (N, H, W))
    y[0, 1, 2] = 255
    mask = rng.random((N, H, W)) > 0.1
    axis = 1
    if layout == "channel_last":
        x, axis = np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1
    elif layout == "slice":
        x, y, mask = x[:, :, ::2, 1:], y[:, ::2, 1:], mask[:, ::2, 1:]
    elif layout == "fortran":
        x = np.asfortranarray(x)
    elif layout == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=dtype, shape=x.shape)
        m[...] = x
        m.flush()
        x = np.load(tmp_path / "x.npy", mmap_mode="r")
    before = np.array(x, copy=True)
    for kw in ({}, {"ignore_index": 255, "mask": mask}):
        d = as_dense(x, y, axis=axis, **kw)
        n = 0
        for p in d.pieces():
            a = run(backend, p.scores, p.labels)
            b = run(backend, np.ascontiguousarray(p.scores), p.labels)
            assert_same_bits(a, b)
            n += p.scores.shape[0]
        assert n == d.n_kept()
    np.testing.assert_array_equal(np.asarray(x), before)


def test_dense_rows_need_no_copy_of_the_map(backend):
    # The kernel reads the strided view itself: a read-only view of a map works (nothing is written to it).
    rng = np.random.default_rng(6)
    x, y = logit_map(rng, 19, 16, 16, np.float16)
    x.flags.writeable = False
    v = dense_view(x)
    assert_same_bits(run(backend, v, y), run(backend, np.ascontiguousarray(v), y))


def test_sse2_and_avx2_clones_give_the_same_bits_on_dense_rows():
    # The dense path's SSE2 clone (CALIBKIT_NO_AVX2=1) and AVX2 clone: the same bits as each other and as
    # the generic path (the clone is chosen once per process: one subprocess each).

    code = (
        "import numpy as np\n"
        "from calibkit import _core\n"
        "rng = np.random.default_rng(7)\n"
        "out = []\n"
        "for dt in (np.float16, np.float32):\n"
        "    for K in (16, 19, 41):\n"
        "        x = (3 * rng.standard_normal((K, 23, 37))).astype(dt)\n"
        "        y = rng.integers(0, K, 23 * 37)\n"
        "        v = np.moveaxis(x, 0, -1).reshape(-1, K)\n"
        "        for s in (v, np.ascontiguousarray(v)):\n"
        "            conf = np.empty(v.shape[0]); cor = np.empty(v.shape[0], np.uint8)\n"
        "            r = _core.top_label_stats(s, y, None, True, 15, 1e-7, True, conf, cor, 0.8)\n"
        "            out.append(repr(sorted(r['totals'].items())) + r['sum_score'].tobytes().hex() + conf.tobytes().hex())\n"
        "        assert out[-1] == out[-2], (dt, K)\n"
        "print(hash(tuple(out)))\n"
    )
    seen = [o.strip() for o in simd_clone_outputs(code)]
    assert seen[0] == seen[1]
