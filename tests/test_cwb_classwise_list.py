"""The class-wise bins' branch-free octet pass (binning.hpp, classwise_row): every octet adds into the bin-0 sums
and the octets holding elements above bin 0 are listed, their elements binned after the row. Checked against a
NumPy reference, C++ against Numba bit for bit, 1 against 2 threads, on rows with few, many and only elements
above bin 0 (per-class edges with a tiny first edge list every octet), K below, at and not a multiple of 8,
weights, and probabilities exactly on an edge."""

import numpy as np
import pytest

import calibkit
from calibkit import _backend

KEYS = ("count", "weight", "sum_score", "sum_target")


def numpy_classwise(p, y, edges, w=None):
    """(K, M) count, weight, sum w p, sum w [y == k]; class k's bins are (e_{m-1}, e_m] of edges[k] (K x (M+1)),
    anything at or below e_1 in the first."""
    n, k = p.shape
    n_bins = edges.shape[1] - 1
    w = np.ones(n) if w is None else w
    out = {key: np.zeros((k, n_bins)) for key in KEYS}
    for c in range(k):
        b = np.searchsorted(edges[c, 1:-1], p[:, c], side="left")
        out["count"][c] = np.bincount(b, minlength=n_bins)
        out["weight"][c] = np.bincount(b, weights=w, minlength=n_bins)
        out["sum_score"][c] = np.bincount(b, weights=w * p[:, c], minlength=n_bins)
        out["sum_target"][c] = np.bincount(b, weights=w * (y == c), minlength=n_bins)
    return out


def run(backend, s, y, from_logits, n_bins, class_edges=None, w=None, threads=1):
    previous = calibkit.get_num_threads()
    calibkit.set_num_threads(threads)
    try:
        r = _backend.kernels(backend).classwise_stats(s, y, w, from_logits, n_bins, class_edges)
    finally:
        calibkit.set_num_threads(previous)
    assert r["status"][0] == 0
    return {key: np.asarray(r[key]).reshape(s.shape[1], n_bins) for key in KEYS}


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def equal_width(k, n_bins):
    return np.tile(np.linspace(0.0, 1.0, n_bins + 1), (k, 1))


def check_all(s, y, from_logits, n_bins, class_edges=None, w=None, exact_counts=True):
    """1 / 2 threads agree bit for bit, and both backends; the result matches the NumPy reference. (From double
    logits, and from float32 logits in rows shorter than 16, the backends' exponentials may differ in the last
    bit, as before this change: their sums are compared to 1e-12 there.)"""
    got = run("cpp", s, y, from_logits, n_bins, class_edges, w)
    same_exps = not from_logits or (s.dtype == np.float32 and s.shape[1] >= 16)
    for backend, threads in (("cpp", 2), ("numba", 1), ("numba", 2)):
        other = run(backend, s, y, from_logits, n_bins, class_edges, w, threads)
        for key in KEYS:
            msg = f"{backend}, {threads} threads: {key}"
            if backend == "cpp" or same_exps:
                np.testing.assert_array_equal(other[key], got[key], err_msg=msg)
            else:
                np.testing.assert_allclose(other[key], got[key], rtol=1e-12, atol=0, err_msg=msg)
    p = softmax(s.astype(np.float64)) if from_logits else s.astype(np.float64)
    edges = equal_width(s.shape[1], n_bins) if class_edges is None else class_edges
    want = numpy_classwise(p, y, edges, w)
    if exact_counts:
        np.testing.assert_array_equal(got["count"], want["count"])
    for key in KEYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-9 if exact_counts else 4.0)
    return got


@pytest.mark.parametrize("k", [3, 8, 13, 16, 29, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_against_numpy(k, dtype):
    rng = np.random.default_rng(k)
    n = 3000  # several chunks (at least 960 rows each)
    y = rng.integers(0, k, n)
    z = 3.0 * rng.standard_normal((n, k))
    z[np.arange(n), y] += 4.0
    # float32 logits take a float32 exp: a probability within its rounding of an edge may change bin
    check_all(z.astype(dtype), y, True, 15, exact_counts=False)
    check_all(z.astype(dtype), y, True, 15, w=rng.uniform(0.0, 3.0, n), exact_counts=False)


@pytest.mark.parametrize("k", [5, 8, 21, 64])
def test_probabilities_many_above_bin0(k):
    """Flat probabilities and M = 40 bins: most octets hold elements above the first edge 1/40."""
    rng = np.random.default_rng(10 + k)
    n = 2500
    p = softmax(0.3 * rng.standard_normal((n, k)))
    y = rng.integers(0, k, n)
    w = rng.uniform(0.0, 3.0, n)
    check_all(p, y, False, 40)
    check_all(p, y, False, 40, w=w)
    check_all(p.astype(np.float32), y, False, 40)


@pytest.mark.parametrize("from_logits", [False, True])
def test_every_element_above_bin0(from_logits):
    """Per-class edges with a first edge of 1e-12: every element is above bin 0, every octet is listed."""
    rng = np.random.default_rng(3)
    n, k, m = 2100, 19, 6
    edges = np.tile(np.array([0.0, 1e-12, 0.1, 0.2, 0.5, 0.7, 1.0]), (k, 1))
    edges[::2, 2] = 0.05  # and not all classes alike
    z = rng.standard_normal((n, k))
    y = rng.integers(0, k, n)
    s = z if from_logits else softmax(z)
    got = check_all(s, y, from_logits, m, class_edges=edges, w=rng.uniform(0.5, 2.0, n))
    assert got["count"][:, 0].sum() == 0


def test_probabilities_on_an_edge():
    """Probabilities exactly on an inner edge go to the bin below (right-closed bins), in every lane of an octet."""
    k, m = 12, 4
    rows = []
    for j in range(k):
        p = np.zeros(k)
        p[j], p[(j + 1) % k], p[(j + 2) % k] = 0.25, 0.25, 0.5  # on the edges 1/4 and 2/4
        rows.append(p)
    p = np.array(rows * 90)
    y = np.arange(p.shape[0]) % k
    got = check_all(p, y, False, m)
    assert got["count"][:, 0].sum() == p.shape[0] * (k - 3) + p.shape[0] * 2  # the zeros and the 0.25s
    assert got["count"][:, 1].sum() == p.shape[0]  # the 0.5s


def test_unit_weights_equal_no_weights():
    """Weights of 1 take the weighted instance and give the unweighted bits (w * x is x; the weights are counts)."""
    rng = np.random.default_rng(5)
    n, k = 4000, 100
    y = rng.integers(0, k, n)
    z = (3.0 * rng.standard_normal((n, k))).astype(np.float32)
    z[np.arange(n), y] += 4.0
    for from_logits, s in ((True, z), (False, softmax(z.astype(np.float64)))):
        plain = run("cpp", s, y, from_logits, 15)
        for backend, threads in (("cpp", 2), ("numba", 1)):
            ones = run(backend, s, y, from_logits, 15, w=np.ones(n), threads=threads)
            for key in KEYS:
                np.testing.assert_array_equal(ones[key], plain[key])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("k", [16, 24, 37])
def test_float_rows_at_the_first_edge(dtype, k):
    """Float logit rows whose probabilities straddle the first edge 1/M within a few ulps: the float threshold
    of the octet pass lists every element just above it, and those still at or below the edge in double go to
    bin 0 after the octets (C++ classwise_octets_f, Numba classwise_octets_f32: the same bits, any K % 8)."""
    rng = np.random.default_rng(k)
    n, m = 2400, 15
    p = np.empty((n, k))
    near = min(k - 2, 10)  # near the edge; the rest share what is left
    spread = 1e-6 if dtype == np.float32 else 3e-3  # a few of the logits' ulps
    p[:, :near] = (1.0 / m) * (1.0 + spread * rng.standard_normal((n, near)))
    p[:, near:] = (1.0 - p[:, :near].sum(axis=1, keepdims=True)) / (k - near)
    for row in p:
        rng.shuffle(row)
    y = rng.integers(0, k, n)
    z = np.log(p).astype(dtype)
    # Within a few ulps of the edge the float32 exps and NumPy's double softmax may bin an element apart, so
    # the backends and thread counts are compared with each other, bit for bit, and not with NumPy.
    for w in (None, rng.uniform(0.0, 3.0, n)):
        got = run("cpp", z, y, True, m, w=w)
        for backend, threads in (("cpp", 2), ("numba", 1), ("numba", 2)):
            other = run(backend, z, y, True, m, w=w, threads=threads)
            for key in KEYS:
                np.testing.assert_array_equal(other[key], got[key], err_msg=f"{backend}, {threads} threads: {key}")
        np.testing.assert_array_equal(got["count"].sum(axis=1), n)
        assert (got["count"][:, 0] > 0).all() and (got["count"][:, 1] > n // 10).all()  # both sides of the edge


@pytest.mark.parametrize("n", [1, 2, 959, 961, 1921])
def test_each_rows_adds_land_in_its_chunk(n):
    """A row's adds above bin 0 and to its label's bin are applied at the next row of its chunk, those of the
    chunk's last row at the chunk's end (binning.hpp, ClasswiseScratch::apply_pending; Numba, _apply_pending):
    chunks of 960 rows, the last one of one or two rows, one and several chunks per thread."""
    rng = np.random.default_rng(n)
    k = 40  # float32 logits, K >= 16: the float octet path, chunks of 64 M = 960 rows
    y = rng.integers(0, k, n)
    z = (3.0 * rng.standard_normal((n, k))).astype(np.float32)
    z[np.arange(n), y] += 4.0
    check_all(z, y, True, 15, exact_counts=False)
    check_all(z, y, True, 15, w=rng.uniform(0.0, 3.0, n), exact_counts=False)
