"""simd.hpp's lane maximum, minimum and sign-bit masks give the same bits on every path (issue 13).

``vmax`` / ``vmin`` are one maxps / maxpd (minps / minpd) on x86-64 and ``lane_bits`` / ``any_lane`` of a
32-byte mask one vmovmskps, where GCC lowered the C expressions to several instructions. Those
instructions compute exactly ``a > b ? a : b`` (``a < b ? a : b``; b when unordered or equal) and the
lanes' sign bits, so nothing may change. Covered, on inputs that exercise the semantics (ties for the
maximum, maxima of +0 and -0, rows of one value, large negative logits that hit exp's clamp, probabilities
of exactly 0, 1 and -0): a plain NumPy reference for the argmax and confidence; the AVX2 clones against the
SSE2 path (``CALIBKIT_NO_AVX2=1``, in subprocesses) on the top-label, class-wise, temperature and
uncertainty kernels, hashed; C++ against Numba bit for bit.
"""

import inspect

import numpy as np
import pytest

import calibkit
from calibkit import _backend
from subprocess_cases import simd_clone_outputs


def edge_logits(dtype, n=517, k=203, seed=0):
    """Logit rows that exercise the maximum's semantics, one kind every 7th row."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, k))
    z[0::7, 5] = z[0::7].max(1) + 1.0  # a clear maximum
    z[1::7, [3, 150]] = z[1::7].max(1)[:, None] + 2.0  # ties for the maximum: the first index wins
    z[2::7] = 0.0  # rows of one value
    z[3::7, :] = -0.0
    z[3::7, 11] = 0.0  # -0 everywhere, +0 once: a maximum of zero
    z[4::7, 60:] = -200.0  # exps clamped (t < -87)
    z[5::7, 9] = 1e4  # every other element far below
    return np.ascontiguousarray(z.astype(dtype))


def edge_probs(dtype, n=517, k=203, seed=1):
    """Probability rows with exact zeros, -0, ties and one-hot rows, one kind every 5th row."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.3), n)
    p[0::5] = 0.0
    p[0::5, 7] = 1.0  # one-hot rows
    p[1::5, [0, 100]] = 0.5  # ties
    p[1::5, 1:100] = 0.0
    p[1::5, 101:] = -0.0
    p[2::5] = 1.0 / k  # uniform rows
    return np.ascontiguousarray(p.astype(dtype))


# The inputs above, then the kernels of the C++ backend hashed (the same bytes on every lane path).
_SCRIPT = "import numpy as np\n" + inspect.getsource(edge_logits) + inspect.getsource(edge_probs) + """
import hashlib
import calibkit
from calibkit import _backend
from calibkit.calibrators import scaling
k = _backend.kernels("cpp")
h = hashlib.sha256()
def add(x):
    h.update(np.ascontiguousarray(x).tobytes())
for dtype in (np.float16, np.float32, np.float64):
    z = edge_logits(dtype)
    p = edge_probs(dtype)
    y = np.arange(len(z)) % z.shape[1]
    for s, fl in ((z, True), (p, False)):
        t = k.top_label_stats(s, y, None, fl, 15, 1e-7, True)
        add(t["sum_score"]); add(t["count"]); h.update(repr(sorted(t["totals"].items())).encode())
        c = k.classwise_stats(s, y, None, fl, 10, None)
        for key in ("count", "weight", "sum_score", "sum_target"):
            add(c[key])
        u = calibkit.uncertainty_scores(s, ("max_probability", "margin", "entropy"), from_logits=fl,
                                        backend="cpp")
        for key in sorted(u):
            add(u[key])
    r = scaling.temperature_nll(z, y, 0.7, backend="cpp")
    h.update(repr(sorted(r.items())).encode())
print(h.hexdigest())
"""


def test_avx2_clones_equal_sse2_path():
    out = [o.strip() for o in simd_clone_outputs(_SCRIPT)]
    assert len(out[0]) == 64 and out[0] == out[1]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_argmax_and_confidence_match_numpy(dtype, backend):
    for s, from_logits in ((edge_logits(dtype), True), (edge_probs(dtype), False)):
        y = np.arange(len(s)) % s.shape[1]
        q = s.astype(np.float64)
        first = q.argmax(1)  # NumPy's first index of the maximum (+0 and -0 compare equal)
        if from_logits:
            e = np.exp(q - q.max(1, keepdims=True))
            conf = 1.0 / e.sum(1)
        else:
            conf = q.max(1)
        conf_out = np.empty(len(s))
        correct_out = np.empty(len(s), np.uint8)
        r = _backend.kernels(backend).top_label_stats(s, y, None, from_logits, 0, 1e-7, False, conf_out,
                                                      correct_out)
        np.testing.assert_array_equal(correct_out.astype(bool), first == y)
        np.testing.assert_allclose(conf_out, conf, rtol=1e-6)
        assert r["totals"]["count"] == len(s)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree_bit_for_bit(dtype):
    z = edge_logits(dtype)
    p = edge_probs(dtype)
    y = np.arange(len(z)) % z.shape[1]
    for s, fl in ((z, True), (p, False)):
        a, b = (_backend.kernels(be).classwise_stats(s, y, None, fl, 10, None) for be in ("cpp", "numba"))
        for key in ("count", "weight", "sum_score", "sum_target"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        a, b = (calibkit.ece(s, y, from_logits=fl, backend=be) for be in ("cpp", "numba"))
        assert a == b
