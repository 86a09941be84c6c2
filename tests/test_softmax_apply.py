"""The report's calibrated pass kernels: softmax_into and step_apply(..., softmax=True) (pav.hpp), vector_scale
(scaling.hpp).

References: NumPy's softmax (np.exp(z - z.max(1)) / sum, in float64) and NumPy's z * a + c; every result bit
for bit, both backends, float16/32/64 and strided logits, any thread count; bad input named, in a subprocess.
The kernels take the C library's exp for float64 logits: NumPy's np.exp is that same function on this machine's
builds (the tests below then hold bit for bit), but a NumPy with its own AVX512F exp may differ by an ulp, so the
comparisons with NumPy's softmax allow NUMPY_EXP_RTOL; the backends and thread counts are compared bit for bit.
float32 / float16 logits take one float exp per logit (simd::exp_f32; sums and divisions in float64): against
NumPy's float64 softmax they are within the bound of their input's precision (softmax_bound of
tests/test_report_speed_kernels.py, which also checks their exact bits against a NumPy float32 reference).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import HistogramBinning, IsotonicCalibration, VectorScaling
from calibkit.calibrators.nonparametric import _kernels
from calibkit.calibrators.scaling import _vector_scale_kernel

from conftest import step_applier
from subprocess_cases import check_cases

DTYPES = [np.float16, np.float32, np.float64]
NUMPY_EXP_RTOL = 4e-16  # a softmax from an exp one ulp away (see the module docstring)


def _close_to_numpy_softmax(out, z):
    """float64 logits: NumPy's softmax to NUMPY_EXP_RTOL; float32 / float16: within the float exp's bound (the
    size of the input's own rounding: 2 (2.5e-7 + 2^-24 |z_k - max|) + 2^-23 max |z_j - max|, relative)."""
    want = _numpy_softmax(z)
    if np.asarray(z).dtype == np.float64:
        np.testing.assert_allclose(out, want, rtol=NUMPY_EXP_RTOL, atol=0)
        return
    zz = np.asarray(z, np.float64)
    d = np.abs(zz - zz.max(axis=1, keepdims=True))
    bound = 2 * (2.5e-7 + d * 2.0 ** -24) + 2 * d.max(axis=1, keepdims=True) * 2.0 ** -24
    assert (np.abs(out - want) <= want * bound + 1.7e-38).all()


def _numpy_softmax(z):
    """The softmax the calibrators computed with NumPy before these kernels (into a C-ordered array)."""
    q = np.subtract(z, z.max(axis=1, keepdims=True), out=np.empty(z.shape), dtype=np.float64)
    q[...] = np.frompyfunc(math.exp, 1, 1)(q)  # the C library's exp, the kernels' (NumPy 2.4's AVX-512 exp: an ulp off)
    q /= q.sum(axis=1, keepdims=True)
    return q


def _logits(rng, n, k, dtype, layout):
    z = rng.standard_normal((n, 2 * k)) * 4
    z[::7, 1] = 60.0  # one dominant logit: exp of very negative differences
    z = z.astype(dtype)
    if layout == "strided":
        return z[:, ::2]
    if layout == "fortran":
        return np.asfortranarray(z[:, :k])
    return np.ascontiguousarray(z[:, :k])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["c", "strided", "fortran"])
def test_softmax_into_matches_numpy(backend, dtype, layout):
    rng = np.random.default_rng(1)
    z = _logits(rng, 1500, 37, dtype, layout)
    out = np.empty(z.shape)
    before = z.copy()
    assert _kernels(backend).softmax_into(z, out)[0] == 0
    _close_to_numpy_softmax(out, z)
    np.testing.assert_array_equal(z, before)  # the input is not modified


def test_softmax_into_in_place_and_thread_counts(threads):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((20000, 9)) * 3
    want = _numpy_softmax(z)
    first = None
    for backend in ("cpp", "numba"):
        for n in (1, 2):
            calibkit.set_num_threads(n)
            out = np.empty(z.shape)
            assert _kernels(backend).softmax_into(z, out)[0] == 0
            np.testing.assert_allclose(out, want, rtol=NUMPY_EXP_RTOL, atol=0)
            first = out if first is None else first
            np.testing.assert_array_equal(out, first)  # backends and thread counts: the same bits
            a = z.copy()
            assert _kernels(backend).softmax_into(a, a)[0] == 0  # out may be the logits themselves
            np.testing.assert_array_equal(a, first)


def test_softmax_into_names_the_first_logit_that_is_not_finite(backend):
    z = np.zeros((300, 4), np.float32)
    z[200, 3] = np.nan
    z[120, 2] = -np.inf
    z[120, 3] = np.inf
    code, row, col, value = _kernels(backend).softmax_into(z, np.empty(z.shape))
    assert (code, row, col, value) == (1, 120, 2, -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["isotonic", "histogram"])
def test_fused_softmax_apply_is_softmax_then_apply(backend, dtype, method, threads):
    rng = np.random.default_rng(3)
    z = _logits(rng, 4000, 6, dtype, "strided")
    y = rng.integers(0, 6, 4000)
    c = (IsotonicCalibration if method == "isotonic" else HistogramBinning)(from_logits=True, backend=backend)
    c.fit(z[:2000], y[:2000])
    apply = step_applier(c)
    q = np.empty(z.shape)
    assert _kernels(backend).softmax_into(z, q)[0] == 0  # the kernel's softmax (see above)
    want = np.empty(z.shape)
    assert apply(q, want, 0)[0] == 0
    for n in (1, 2):
        calibkit.set_num_threads(n)
        got = np.empty(z.shape)
        assert apply(z, got, 1, True)[0] == 0
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(c.predict_proba(z), want)


def test_fused_apply_reports_a_bad_logit_and_predict_proba_raises(backend):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((500, 3))
    c = IsotonicCalibration(from_logits=True, backend=backend).fit(z, rng.integers(0, 3, 500))
    z[321, 1] = np.inf
    assert tuple(step_applier(c)(z, np.empty(z.shape), 1, True)[:3]) == (1, 321, 1)
    with pytest.raises(ValueError, match=r"scores\[321, 1\] = inf"):
        c.predict_proba(z)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["c", "strided", "fortran"])
def test_vector_scale_matches_numpy_and_transform(backend, dtype, layout, threads):
    rng = np.random.default_rng(5)
    z = _logits(rng, 9000, 11, dtype, layout)
    a, c = rng.random(11) + 0.5, rng.standard_normal(11)
    want = np.asarray(z, np.float64) * a + c
    for n in (1, 2):
        calibkit.set_num_threads(n)
        out = np.empty(z.shape)
        assert _vector_scale_kernel(backend)(z, a, c, out)[0] == 0
        np.testing.assert_array_equal(out, want)
    v = VectorScaling(backend=backend).fit(np.asarray(z, np.float64)[:3000], rng.integers(0, 11, 3000))
    out = np.empty(z.shape)
    assert v._scaled_into(z, out)
    np.testing.assert_array_equal(out, v.transform(z))


def test_vector_scale_in_place_and_overflow(backend):
    rng = np.random.default_rng(6)
    z = rng.standard_normal((40, 3))
    a, c = np.array([1.0, 2.0, 3.0]), np.zeros(3)
    want = z * a
    assert _vector_scale_kernel(backend)(z, a, c, z)[0] == 0
    np.testing.assert_array_equal(z, want)
    z[17, 2] = 1e308
    assert tuple(_vector_scale_kernel(backend)(z, a, c, np.empty(z.shape))[:3]) == (1, 17, 2)


BAD_CASES = [
    ("softmax_into(Z[:, 0].copy(), np.empty(4))", "ValueError", r"\(N, K\)"),
    ("softmax_into(Z, np.empty((4, 2)))", "ValueError", "out"),
    ("softmax_into(Z, np.empty((4, 3), np.float32))", "(Type|Value)Error", "out"),
    ("softmax_into(Z.astype(np.int64), OUT)", "TypeError", "float16, float32 or float64"),
    ("softmax_into(Z.tolist(), OUT)", "TypeError", "scores"),
    ("(lambda a: softmax_into(a[1:], a[:4]))(np.zeros((5, 3)))", "ValueError", "overlaps"),
    ("step_apply_tables(Z, T, 2, True, OUT, True)", "ValueError", "check"),
    ("step_apply_tables(Z[:, 0].copy(), T1, 1, False, np.empty(4), True)", "ValueError", r"\(N, K\)"),
    ("vector_scale(Z, np.ones(2), np.zeros(3), OUT)", "ValueError", "scale"),
    ("vector_scale(Z, np.ones(3), np.zeros(3, np.float32), OUT)", "(Type|Value)Error", "bias"),
    ("vector_scale(Z, np.ones(3), np.zeros(3), np.empty((3, 4)))", "ValueError", "out"),
    ("vector_scale(Z[:, 0].copy(), np.ones(3), np.zeros(3), OUT)", "ValueError", "scores"),
    ("vector_scale(Z.astype(np.int32), np.ones(3), np.zeros(3), OUT)", "TypeError", "float16, float32 or float64"),
    ("(lambda a: vector_scale(a[1:], np.ones(3), np.zeros(3), a[:4]))(np.zeros((5, 3)))", "ValueError", "overlaps"),
]

PRELUDE = textwrap.dedent('''
    import sys, numpy as np
    from calibkit import _core
    from calibkit._numba import pav, scaling
    if sys.argv[1] == "cpp":
        StepTables, step_apply_tables, softmax_into = _core.StepTables, _core.step_apply_tables, _core.softmax_into
        vector_scale = _core.vector_scale
    else:
        StepTables, step_apply_tables, softmax_into = pav.StepTables, pav.step_apply_tables, pav.softmax_into
        vector_scale = scaling.vector_scale
    Z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [30.0, -30.0, 1.0], [1.0, 2.0, 3.0]])
    OUT = np.empty((4, 3))
    XO = np.array([0, 2, 4, 6], np.int64)
    T = StepTables(np.tile([0.2, 0.8], 3), XO, np.tile([0.1, 0.9], 3), XO.copy(), 0)
    T1 = StepTables(np.array([0.2, 0.8]), XO[:2].copy(), np.array([0.1, 0.9]), XO[:2].copy(), 0)
    assert softmax_into(Z, OUT)[0] == 0 and np.allclose(OUT.sum(1), 1)
    assert step_apply_tables(Z, T, 1, True, OUT, True)[0] == 0 and np.allclose(OUT.sum(1), 1)
    assert vector_scale(Z, np.ones(3), np.zeros(3), OUT)[0] == 0 and np.array_equal(OUT, Z)
''')


@pytest.mark.parametrize("which", ["cpp", "numba"])
def test_bad_arguments_are_named_without_crashing(which):
    check_cases(PRELUDE, which, BAD_CASES)