"""chunked_reduce (parallel.hpp) folds its chunk partials in chunk order: the same bits for any thread count,
serial fallback, instruction set and number of chunks (more chunks than partial slots included, so slots are
reused), checked against NumPy references."""

import threading

import numpy as np
import pytest

import calibkit
from calibkit import _backend
from subprocess_cases import simd_clone_outputs

KEYS = ("count", "weight", "sum_score", "sum_target")


def logits(rng, n, k, dtype=np.float32):
    y = rng.integers(0, k, n)
    z = 3.0 * rng.standard_normal((n, k))
    z[np.arange(n), y] += 4.0
    return z.astype(dtype), y


def numpy_classwise(p, y, n_bins, w=None):
    """(K, M) count, weight, sum w p, sum w [y == k] with bins ((m-1)/M, m/M], 0 in the first."""
    n, k = p.shape
    w = np.ones(n) if w is None else w
    edges = np.arange(1, n_bins) / n_bins
    flat = (np.searchsorted(edges, p, side="left") + np.arange(k) * n_bins).ravel()
    ww = np.repeat(w, k)
    onehot = np.zeros((n, k))
    onehot[np.arange(n), y] = 1.0
    out = {
        "count": np.bincount(flat, minlength=k * n_bins),
        "weight": np.bincount(flat, weights=ww, minlength=k * n_bins),
        "sum_score": np.bincount(flat, weights=ww * p.ravel(), minlength=k * n_bins),
        "sum_target": np.bincount(flat, weights=ww * onehot.ravel(), minlength=k * n_bins),
    }
    return {key: v.reshape(k, n_bins) for key, v in out.items()}


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def classwise(backend, z, y, from_logits, n_bins=15, w=None):
    r = _backend.kernels(backend).classwise_stats(z, y, w, from_logits, n_bins, None)
    assert r["status"][0] == 0
    return {key: np.asarray(r[key]).reshape(z.shape[1], n_bins) for key in KEYS}


def top_label(backend, z, y, from_logits, w=None):
    r = _backend.kernels(backend).top_label_stats(z, y, w, from_logits, 15, 1e-7, True)
    assert r["status"][0] == 0
    return r


def same_bits(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same_bits(a[key], b[key])
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes()
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("weighted", [False, True])
def test_classwise_many_chunks_matches_numpy(backend, weighted):
    # K = 20: 1,638-row chunks and 208 partial slots (the 2^18-value budget), so 400,000 rows are 245 chunks
    # (slots reused).
    rng = np.random.default_rng(0)
    z, y = logits(rng, 400_000, 20, np.float64)
    w = rng.uniform(0.0, 2.0, len(y)) if weighted else None
    want = numpy_classwise(softmax(z), y, 15, w)
    got = classwise(backend, z, y, True, w=w)
    np.testing.assert_array_equal(got["count"], want["count"])
    for key in ("weight", "sum_score", "sum_target"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-9, err_msg=key)


def test_top_label_many_chunks_matches_numpy(backend):
    # K = 10 probabilities: 3,276-row chunks and 256 slots (kMaxGroup), so 1,000,000 rows are 306 chunks.
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(10, 0.3), 1_000_000).astype(np.float32)
    y = rng.integers(0, 10, len(p))
    r = top_label(backend, p, y, False)
    conf = p.max(axis=1).astype(np.float64)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    b = np.searchsorted(np.arange(1, 15) / 15, conf, side="left")
    np.testing.assert_array_equal(np.asarray(r["count"]), np.bincount(b, minlength=15))
    np.testing.assert_allclose(np.asarray(r["sum_score"]), np.bincount(b, conf, 15), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(r["sum_target"]), np.bincount(b, correct, 15))


# (what, rows, K): more chunks than slots in each (class-wise K = 1000: 960-row chunks, 4 slots; K = 20: 1,638-row
# chunks, 208 slots; top-label: 32- and 3,276-row chunks, 256 slots).
CASES = [
    ("classwise", 19 * 960 + 7, 1000),
    ("classwise", 230 * 1638, 20),
    ("top_label_logits", 9000, 1000),
    ("top_label_probs", 1_000_001, 10),
]


def run_case(backend, what, n, k, seed=3):
    rng = np.random.default_rng(seed)
    z, y = logits(rng, n, k)
    if what == "classwise":
        return classwise(backend, z, y, True)
    if what == "top_label_logits":
        return top_label(backend, z, y, True)
    return top_label(backend, softmax(z.astype(np.float64)).astype(np.float32), y, False)


@pytest.mark.parametrize("what, n, k", CASES)
def test_thread_counts_give_the_same_bits(backend, threads, what, n, k):
    results = []
    for t in (1, 2, 3, 5):
        calibkit.set_num_threads(t)
        results.append(run_case(backend, what, n, k))
    for other in results[1:]:
        same_bits(results[0], other)


@pytest.mark.parametrize("what, n, k", CASES[:1] + CASES[2:3])
def test_concurrent_calls_give_the_same_bits(threads, what, n, k):
    # Two Python threads at once: one call has the pool, the other runs its chunks on its own thread
    # (the serial fallback, which folds each chunk right after computing it).
    calibkit.set_num_threads(2)
    want = run_case("cpp", what, n, k)
    got = [None, None]

    def call(j):
        got[j] = run_case("cpp", what, n, k)

    workers = [threading.Thread(target=call, args=(j,)) for j in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for g in got:
        same_bits(want, g)


@pytest.mark.parametrize("n", [1, 959, 960, 961, 17 * 960, 17 * 960 + 1, 35 * 960 - 1])
def test_chunk_boundaries_two_threads(threads, n):
    # Fewer, as many, and more chunks than the 17 slots of K = 1000 class-wise partials.
    calibkit.set_num_threads(1)
    want = run_case("cpp", "classwise", n, 1000, seed=n)
    calibkit.set_num_threads(2)
    same_bits(want, run_case("cpp", "classwise", n, 1000, seed=n))


def test_avx2_and_sse2_give_the_same_bits():
    # vmax / vmin are maxps / minps: the max in the logit rows, exp's clamp, the temperature kernels.
    code = (
        "import numpy as np\n"
        "from calibkit import _backend\n"
        "from calibkit.calibrators.scaling import temperature_nll\n"
        "k = _backend.kernels('cpp')\n"
        "rng = np.random.default_rng(0)\n"
        "out = []\n"
        "for K in (10, 37, 1000):\n"
        "    for dt in (np.float64, np.float32, np.float16):\n"
        "        y = rng.integers(0, K, 2000)\n"
        "        z = 3 * rng.standard_normal((2000, K)); z[np.arange(2000), y] += 4; z = z.astype(dt)\n"
        "        r = k.top_label_stats(z, y, None, True, 15, 1e-7, True, None, None, 0.7, 15)\n"
        "        out += [v.hex() for v in np.concatenate([r['sum_score'], r['classwise']['sum_score']])]\n"
        "        out += [float(r['totals'][key]).hex() for key in ('confidence', 'brier', 'nll')]\n"
        "        t = temperature_nll(z, y, 0.7, backend='cpp')\n"
        "        out += [float(t[key]).hex() for key in sorted(t)]\n"
        "print(hash(tuple(out)), len(out))\n"
    )
    runs = simd_clone_outputs(code)
    assert runs[0] == runs[1]
