"""step_apply_many (pav.hpp apply_columns over several sets of models, and its Numba twin): the report's one
kernel call per block for isotonic calibration and histogram binning, each chunk's softmax computed once.

References: NumPy's np.interp (isotonic) and y[np.searchsorted(x, s, side="left")] (histogram) of each column
of the kernel's softmax (softmax_into, itself checked against NumPy in test_softmax_apply.py), each row then
divided by its NumPy sum; bit for bit, both backends, float16/32/64 and strided logits, 1 and 2 threads; the
calibrators' own predict_proba; values exactly on knots and outside [0, 1]; a logit that is not finite named by
row and class; bad arguments named, in a subprocess.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import HistogramBinning, IsotonicCalibration
from calibkit.calibrators.nonparametric import _kernels
from calibkit.report import _CalibratedInputs
from subprocess_cases import check_cases

DTYPES = [np.float16, np.float32, np.float64]


def _logits(rng, n, k, dtype, strided):
    z = rng.standard_normal((n, 2 * k)) * 3
    z[::5, 0] = 25.0  # one dominant logit: probabilities near 0 and 1
    z = z.astype(dtype)
    return z[:, ::2] if strided else np.ascontiguousarray(z[:, :k])


def _fitted(backend, z, y):
    iso = IsotonicCalibration(from_logits=True, backend=backend).fit(z, y)
    hist = HistogramBinning(n_bins=12, from_logits=True, backend=backend).fit(z, y)
    return iso, hist


def _numpy_maps(q, iso, hist):
    """The two calibrators' maps of the probabilities q by NumPy, rows renormalised (a zero row: 1/K)."""
    K = q.shape[1]
    a = np.empty(q.shape)
    b = np.empty(q.shape)
    for k in range(K):
        a[:, k] = np.interp(q[:, k], iso.x_thresholds_[k], iso.y_thresholds_[k])
        edges = hist.bin_edges_[k][1:-1]
        b[:, k] = hist.bin_values_[k][np.searchsorted(edges, q[:, k], side="left")]
    for p in (a, b):
        total = p.sum(axis=1, keepdims=True)
        np.divide(p, total, out=p, where=total > 0)
        p[total[:, 0] <= 0] = 1.0 / K
    return a, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
def test_many_is_numpy_and_predict_proba_bit_for_bit(backend, dtype, strided, threads):
    rng = np.random.default_rng(11)
    z = _logits(rng, 6000, 9, dtype, strided)
    y = rng.integers(0, 9, 6000)
    iso, hist = _fitted(backend, z[:3000], y[:3000])
    kernels = _kernels(backend)
    q = np.empty(z.shape)
    assert kernels.softmax_into(z, q)[0] == 0
    want_iso, want_hist = _numpy_maps(q, iso, hist)
    tables = [iso._step_tables(), hist._step_tables()]
    for n in (1, 2):
        calibkit.set_num_threads(n)
        out = np.full((2,) + z.shape, np.nan)
        assert kernels.step_apply_many(z, tables, 1, True, out, True) == (0, -1, -1, 0.0)
        np.testing.assert_array_equal(out[0], want_iso)
        np.testing.assert_array_equal(out[1], want_hist)
        np.testing.assert_array_equal(out[0], iso.predict_proba(z))
        np.testing.assert_array_equal(out[1], hist.predict_proba(z))
        # probabilities in (no softmax), checked as probabilities: the same maps
        out2 = np.empty_like(out)
        assert kernels.step_apply_many(q, tables[::-1], 2, True, out2)[0] == 0
        np.testing.assert_array_equal(out2[0], want_hist)
        np.testing.assert_array_equal(out2[1], want_iso)


def test_backends_agree_bit_for_bit(threads):
    rng = np.random.default_rng(12)
    z = _logits(rng, 20000, 30, np.float32, False)  # several chunks of rows per thread
    y = rng.integers(0, 30, 20000)
    outs = []
    for backend in ("cpp", "numba"):
        iso, hist = _fitted(backend, z[:5000], y[:5000])
        for n in (1, 2):
            calibkit.set_num_threads(n)
            out = np.empty((2,) + z.shape)
            assert _kernels(backend).step_apply_many(z, [hist._step_tables(), iso._step_tables()], 1, True, out,
                                                     True)[0] == 0
            outs.append(out)
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


def test_values_on_knots_and_outside_the_unit_interval(backend):
    rng = np.random.default_rng(13)
    z = _logits(rng, 3000, 4, np.float64, False)
    y = rng.integers(0, 4, 3000)
    iso, hist = _fitted(backend, z, y)
    # probabilities placed exactly on every knot and bin edge of each column, and just outside [0, 1]
    cols = []
    for k in range(4):
        c = np.concatenate([iso.x_thresholds_[k], hist.bin_edges_[k], [0.0, 1.0, -1e-7, 1 + 1e-7, 0.5]])
        cols.append(rng.permutation(np.resize(c, 400)))
    p = np.stack(cols, axis=1)
    want_iso, want_hist = _numpy_maps(p, iso, hist)
    out = np.empty((2,) + p.shape)
    assert _kernels(backend).step_apply_many(p, [iso._step_tables(), hist._step_tables()], 2, True, out)[0] == 0
    np.testing.assert_array_equal(out[0], want_iso)
    np.testing.assert_array_equal(out[1], want_hist)
    # one out of range is named (probability check), by row and class
    p[123, 2] = 1.5
    assert tuple(_kernels(backend).step_apply_many(p, [iso._step_tables()], 2, True, out[:1])[:3]) == (2, 123, 2)


def test_knots_and_values_on_the_bucket_edges(backend):
    """The search table's buckets (pav.hpp knot_bucket: 64 per binary octave from 2**-40 to 1, the first one also
    holding [0, 2**-40)): knots and values exactly on their edges, one ulp either side, below 2**-40, subnormal,
    0, -0.0, 1, outside [0, 1] and NaN-free; knots dense inside one bucket and spread over many. np.interp and
    np.searchsorted(side="left") of the same knots, bit for bit."""
    rng = np.random.default_rng(16)
    edges = np.ldexp(1 + np.arange(64) / 64, np.arange(-40, 0)[:, None]).ravel()
    dense = np.unique(0.25 + rng.random(40) / 256)  # ~40 knots in one bucket of [0.25, 0.5)
    for xt in (np.unique(edges[::7]), dense, np.unique(rng.random(300)), np.array([0.0, 2.0 ** -41, 1.0]),
               np.array([0.5])):
        s = np.concatenate([edges, np.nextafter(edges, 2), np.nextafter(edges, -1), xt, np.nextafter(xt, 2),
                            np.nextafter(xt, -1), [0.0, -0.0, 1.0, -1e-7, 1 + 1e-7, 5e-324, 2.0 ** -41, 7.0, -3.0],
                            rng.random(300)])
        m = xt.shape[0]
        yt = np.sort(rng.random(m))
        yh = rng.random(m + 1)
        off = np.array([0, m], np.int64)
        for mode, y, want in ((0, yt, np.interp(s, xt, yt)), (1, yh, yh[np.searchsorted(xt, s, side="left")])):
            out = np.empty((1, s.shape[0], 1))
            t = _kernels(backend).StepTables(xt, off, y, np.array([0, y.shape[0]], np.int64), mode)
            assert _kernels(backend).step_apply_many(s, [t], 0, False, out)[0] == 0
            np.testing.assert_array_equal(out[0, :, 0], want)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_logit_that_is_not_finite_is_named_by_row_and_class(backend, bad, threads):
    rng = np.random.default_rng(14)
    z = _logits(rng, 5000, 5, np.float32, False)
    iso, hist = _fitted(backend, z, rng.integers(0, 5, 5000))
    z[4321, 3] = bad
    z[4400, 1] = bad
    for n in (1, 2):
        calibkit.set_num_threads(n)
        code, row, col, _ = _kernels(backend).step_apply_many(z, [iso._step_tables(), hist._step_tables()], 1,
                                                              True, np.empty((2,) + z.shape), True)
        assert (code, row, col) == (1, 4321, 3)
    # the report's calibrated inputs then raise the calibrator's own error
    inputs = _CalibratedInputs({"isotonic": iso, "histogram": hist}, True, 5000, 5)
    with pytest.raises(ValueError, match=r"scores\[4321, 3\]"):
        inputs(z)


@pytest.mark.parametrize("from_logits", [True, False])
def test_report_inputs_are_predict_proba_for_every_block(backend, from_logits):
    rng = np.random.default_rng(15)
    z = _logits(rng, 7000, 6, np.float32, True)
    y = rng.integers(0, 6, 7000)
    s = z if from_logits else IsotonicCalibration(from_logits=True, backend=backend).fit(z, y).predict_proba(z)
    iso = IsotonicCalibration(from_logits=from_logits, backend=backend).fit(s[:2000], y[:2000])
    hist = HistogramBinning(from_logits=from_logits, backend=backend).fit(s[:2000], y[:2000])
    inputs = _CalibratedInputs({"histogram": hist, "isotonic": iso}, from_logits, 3000, 6)
    for a in range(0, 7000, 3000):  # the last block is shorter
        block = s[a:a + 3000]
        got = inputs(block)
        assert list(got) == ["histogram", "isotonic"]
        np.testing.assert_array_equal(got["isotonic"], iso.predict_proba(block))
        np.testing.assert_array_equal(got["histogram"], hist.predict_proba(block))


BAD_CASES = [
    ("step_apply_many(Z, [], 1, True, np.empty((0, 4, 3)), True)", "ValueError", "1 to 16"),
    ("step_apply_many(Z, [T] * 17, 1, True, np.empty((17, 4, 3)), True)", "ValueError", "1 to 16"),
    ("step_apply_many(Z, [T, None], 1, True, np.empty((2, 4, 3)), True)", "TypeError", r"tables\[1\]"),
    ("step_apply_many(Z, [T, T1], 1, True, np.empty((2, 4, 3)), True)", "ValueError", r"tables\[1\] holds 1"),
    ("step_apply_many(Z, [T, T], 1, True, np.empty((2, 4, 4)), True)", "ValueError", "out"),
    ("step_apply_many(Z, [T, T], 1, True, np.empty((2, 4, 3), np.float32), True)", "(Type|Value)Error", "out"),
    ("step_apply_many(Z, [T, T], 1, True, np.empty((2, 4, 3))[:, ::-1], True)", "ValueError", "out"),
    ("step_apply_many(Z, [T, T], 2, True, np.empty((2, 4, 3)), True)", "ValueError", "check"),
    ("step_apply_many(Z, [T], 1, True, Z[None], True)", "ValueError", "overlaps"),
    ("(lambda a: step_apply_many(a[1:], [T], 1, True, a[None, :3], True))(np.zeros((4, 3)))", "ValueError",
     "overlaps"),
    ("step_apply_many(Z.astype(np.int64), [T], 1, True, np.empty((1, 4, 3)), True)", "TypeError",
     "float16, float32 or float64"),
]

PRELUDE = textwrap.dedent('''
    import sys, numpy as np
    from calibkit import _core
    from calibkit._numba import pav
    m = _core if sys.argv[1] == "cpp" else pav
    StepTables, step_apply_many = m.StepTables, m.step_apply_many
    Z = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [30.0, -30.0, 1.0], [1.0, 2.0, 3.0]])
    XO = np.array([0, 2, 4, 6], np.int64)
    T = StepTables(np.tile([0.2, 0.8], 3), XO, np.tile([0.1, 0.9], 3), XO.copy(), 0)
    T1 = StepTables(np.array([0.2, 0.8]), XO[:2].copy(), np.array([0.1, 0.9]), XO[:2].copy(), 0)
    OUT = np.empty((2, 4, 3))
    assert step_apply_many(Z, [T, T], 1, True, OUT, True)[0] == 0 and np.array_equal(OUT[0], OUT[1])
''')


@pytest.mark.parametrize("which", ["cpp", "numba"])
def test_bad_arguments_are_named_without_crashing(which):
    check_cases(PRELUDE, which, BAD_CASES)
