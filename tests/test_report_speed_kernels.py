"""The report's faster calibrated-pass kernels (issue 13): the float32/float16 softmax (one 8-lane float exp per
logit, sums and divisions in float64), the MSD sort of the isotonic fit, and the narrow (uint16) step tables.

References, all plain NumPy:
- float32 / float16 logits: ``numpy_softmax_f32`` below does exp_f32's float operations (simd.hpp) in NumPy float32
  arithmetic, then NumPy's float64 pairwise row sum and division: the kernels must give its bits exactly; and
  against NumPy's float64 softmax they must stay within the bound of pav.hpp's softmax_row (the error of a float
  exp plus the rounding of z_k - max to float, the size of the input's own rounding).
- float64 logits keep NumPy's float64 softmax (tests/test_softmax_apply.py).
- the isotonic fit: scikit-learn's order (a stable sort by score), i.e. the per-column reference of
  tests/test_isotonic_speed.py, on score distributions that exercise every branch of the sort.
- the step maps: np.interp / np.searchsorted per column, with tables narrow (<= 65535 knots) and wide.
Both backends, strided input, any thread count, bad input named in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import HistogramBinning, IsotonicCalibration, _core
from calibkit.calibrators.nonparametric import _concatenated, _kernels

from conftest import step_applier

F = np.float32


def numpy_exp_f32(x):
    """exp_f32 of simd.hpp in NumPy float32 operations (no fused multiply-add: the same bits)."""
    x = np.maximum(np.asarray(x, F), F(-87.0))
    shifter = F(12582912.0)
    t = x * F(1.4426950408889634) + shifter
    n = t - shifter
    hi, lo = F(0.693145751953125), F(0.6931471805599453 - 0.693145751953125)
    r = (x - n * hi) - n * lo
    p = F(0.04189011) + r * F(0.00831253)
    for c in (F(0.16667114), F(0.4999923), F(1.0), F(1.0)):
        p = c + r * p
    scale = ((t.view(np.int32) - shifter.view(np.int32) + 127) << 23).view(F)  # 2^n
    return p * scale


def test_exp_f32_relative_error():
    """exp_f32's documented bound (simd.hpp): relative error below 2.5e-7 against float64 exp, here on every
    97th float in [-87, 0] (the exhaustive worst case is 2.0e-7), and 0 error at x = 0."""
    bits = np.arange(0x80000000, 0xC2AE0001, 97, dtype=np.uint64).astype(np.uint32)
    x = bits.view(F)
    err = np.abs(numpy_exp_f32(x).astype(np.float64) / np.exp(x.astype(np.float64)) - 1.0)
    assert err.max() < 2.5e-7
    assert numpy_exp_f32(F(0.0)) == F(1.0)


def numpy_softmax_f32(z):
    """pav.hpp's softmax_row for float32 / float16 logits: z_k - max in float32, exp_f32, widened; the float64
    row sums in NumPy's pairwise order and one division per value."""
    z = np.asarray(z, F)
    e = numpy_exp_f32(z - z.max(axis=1, keepdims=True)).astype(np.float64)
    e = np.ascontiguousarray(e)
    return e / e.sum(axis=1, keepdims=True)


def numpy_softmax64(z):
    q = np.asarray(z, np.float64)
    q = np.exp(q - q.max(axis=1, keepdims=True))
    return q / q.sum(axis=1, keepdims=True)


def softmax_bound(z):
    """The relative bound of softmax_row's float path against NumPy's float64 softmax, per value: twice (the
    value and the row sum) the exp's 2.5e-7 plus the rounding of |z_k - max| to float (2^-24 of it), and an
    absolute 1.7e-38 where the difference is below -87 (exp_f32 clamps there)."""
    z = np.asarray(z, np.float64)
    d = np.abs(z - z.max(axis=1, keepdims=True))
    return 2 * (2.5e-7 + d * 2.0 ** -24) + 2 * d.max(axis=1, keepdims=True) * 2.0 ** -24


def _logits(rng, n, k, dtype, layout):
    z = rng.standard_normal((n, 2 * k)) * 4
    z[::7, 0] = 60.0  # a dominant logit
    if 2 * k > 2:
        z[::14, 2] = -40.0  # and differences below -87 (exp_f32's clamp)
    z = z.astype(dtype)
    if layout == "strided":
        return z[:, ::2]
    if layout == "fortran":
        return np.asfortranarray(z[:, :k])
    return np.ascontiguousarray(z[:, :k])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("layout", ["c", "strided"])
@pytest.mark.parametrize("k", [1, 16, 130])
def test_float_softmax_is_the_numpy_float_exp_reference(backend, dtype, layout, k):
    rng = np.random.default_rng(k)
    z = _logits(rng, 700, k, dtype, layout)
    before = z.copy()
    out = np.empty(z.shape)
    assert _kernels(backend).softmax_into(z, out)[0] == 0
    np.testing.assert_array_equal(out, numpy_softmax_f32(z))
    np.testing.assert_array_equal(z, before)
    ref = numpy_softmax64(z)
    err = np.abs(out - ref)
    assert (err <= ref * softmax_bound(z) + 1.7e-38).all(), float((err / np.maximum(ref, 1e-300)).max())
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-15 * k + 1e-15)


def test_float64_softmax_keeps_the_double_exp(backend):
    rng = np.random.default_rng(3)
    z = _logits(rng, 500, 9, np.float64, "c")
    out = np.empty(z.shape)
    assert _kernels(backend).softmax_into(z, out)[0] == 0
    np.testing.assert_allclose(out, numpy_softmax64(z), rtol=4e-16, atol=0)
    assert not np.array_equal(out, numpy_softmax_f32(z))  # not the float path


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("method", ["isotonic", "histogram"])
def test_float_softmax_backends_and_thread_counts_agree_bitwise(dtype, method, threads):
    rng = np.random.default_rng(5)
    z = _logits(rng, 6000, 23, dtype, "strided")
    y = rng.integers(0, 23, 6000)
    first = {}
    for backend in ("cpp", "numba"):
        for n in (1, 2):
            calibkit.set_num_threads(n)
            q = np.empty(z.shape)
            assert _kernels(backend).softmax_into(z, q)[0] == 0
            cls = IsotonicCalibration if method == "isotonic" else HistogramBinning
            c = cls(from_logits=True, backend=backend).fit(z[:3000], y[:3000])
            got = {"softmax": q, "proba": c.predict_proba(z[3000:]),
                   "fused": np.empty((3000, 23))}
            assert step_applier(c)(z[3000:], got["fused"], 1, True)[0] == 0
            np.testing.assert_array_equal(got["fused"], got["proba"])
            for key, value in got.items():
                first.setdefault(key, value)
                np.testing.assert_array_equal(value, first[key])
    np.testing.assert_array_equal(first["softmax"], numpy_softmax_f32(z))


def test_isotonic_from_float_logits_is_the_reference_on_the_float_softmax(backend):
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((800, 5)) * 3).astype(np.float32)
    y = rng.integers(0, 5, 800)
    cal = IsotonicCalibration(from_logits=True, backend=backend).fit(z, y)
    p = numpy_softmax_f32(z)
    for c in range(5):
        want_x, want_y = _reference_map(np.ascontiguousarray(p[:, c]), (y == c).astype(float))
        np.testing.assert_array_equal(cal.x_thresholds_[c], want_x)
        np.testing.assert_array_equal(cal.y_thresholds_[c], want_y)
    q = np.stack([np.interp(p[:, c], cal.x_thresholds_[c], cal.y_thresholds_[c]) for c in range(5)], axis=1)
    np.testing.assert_array_equal(cal.predict_proba(z), q / q.sum(axis=1, keepdims=True))


# -- the isotonic fit's sort ----------------------------------------------------------------------------------

def _reference_map(s, t, w=None):
    """IsotonicCalibration's map of one column (tests/test_isotonic_speed.py): the blocks of the stable order."""
    if w is not None:
        keep = w > 0
        s, t, w = np.ascontiguousarray(s[keep]), t[keep], w[keep]
    # the fit kernel itself, exact ties only (isotonic_regression also merges near ties, as scikit-learn does)
    r = _core.isotonic_fit(np.ascontiguousarray(t, dtype=np.float64), s,
                           None if w is None else np.ascontiguousarray(w, dtype=np.float64), True)
    order, blocks = r["order"], r["blocks"]
    np.testing.assert_array_equal(order, np.argsort(s, kind="stable"))  # the stable order (stable_argsort)
    xs = s[order]
    first, last = xs[blocks[:-1]], xs[blocks[1:] - 1]
    x_thr = np.empty(2 * len(first))
    x_thr[0::2], x_thr[1::2] = first, last
    keep = np.ones(len(x_thr), bool)
    keep[1::2] = last != first
    return x_thr[keep], np.repeat(r["values"], 2)[keep]


def _columns(rng, n):
    """Score columns for every branch of msd_sort: spread, all equal, two values, a tiny range (only the low
    mantissa bits vary), many ties, negative and positive, -0.0 with 0.0, and sizes around kMsdSmall."""
    cols = [rng.random(n) ** 6, np.full(n, 0.25), np.where(rng.random(n) < 0.5, 0.1, 0.2),
            0.5 + rng.integers(0, 40, n) * 2.0 ** -52, np.round(rng.random(n), 2), rng.standard_normal(n) * 1e3,
            np.where(rng.random(n) < 0.5, -0.0, 0.0) + (rng.random(n) < 0.1), np.exp(-rng.random(n) * 700)]
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("n", [1, 2, 24, 25, 5000, 70001])
def test_isotonic_fit_sort_gives_the_stable_order(backend, n, threads):
    rng = np.random.default_rng(n)
    s = _columns(rng, n)
    K = s.shape[1]
    y = rng.integers(0, K, n)
    r = _kernels(backend).isotonic_fit_columns(s, y, None, 0, 0)
    assert r["status"][0] == 0
    xs = np.split(r["x"], r["x_offsets"][1:-1])
    ys = np.split(r["y"], r["y_offsets"][1:-1])
    for c in range(K):
        want_x, want_y = _reference_map(np.ascontiguousarray(s[:, c]), (y == c).astype(float))
        np.testing.assert_array_equal(xs[c], want_x)
        np.testing.assert_array_equal(ys[c], want_y)
    calibkit.set_num_threads(1)
    again = _kernels(backend).isotonic_fit_columns(s, y, None, 0, 0)
    np.testing.assert_array_equal(again["x"], r["x"])
    np.testing.assert_array_equal(again["y"], r["y"])


def test_isotonic_fit_sort_weighted_ties_sum_in_row_order(backend):
    # ties pooled with weights: the pooled sums are in row order (a stable sort), so the bits are the reference's
    rng = np.random.default_rng(9)
    n = 3000
    s = np.round(rng.random((n, 3)), 1)
    y = rng.integers(0, 3, n)
    w = rng.random(n) * (rng.random(n) > 0.1) + rng.random(n) * 1e-9
    w[::5] = 0.0  # left out of the fit
    r = _kernels(backend).isotonic_fit_columns(s, y, w, 0, 0)
    xs = np.split(r["x"], r["x_offsets"][1:-1])
    ys = np.split(r["y"], r["y_offsets"][1:-1])
    for c in range(3):
        want_x, want_y = _reference_map(np.ascontiguousarray(s[:, c]), (y == c).astype(float), w)
        np.testing.assert_array_equal(xs[c], want_x)
        np.testing.assert_array_equal(ys[c], want_y)


# -- narrow and wide step tables ------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [3, 65535, 65536, 70000])
def test_step_tables_narrow_and_wide_match_interp_and_searchsorted(backend, m):
    rng = np.random.default_rng(m)
    K = 3
    xs = [np.unique(rng.random(m) ** 3) for _ in range(K)]
    xs = [np.concatenate([x, 1.0 + np.arange(m - len(x)) * 1e-3]) if len(x) < m else x for x in xs]  # m knots
    assert all(len(x) == m for x in xs)
    ys = [np.sort(rng.random(m)) for _ in range(K)]
    v = rng.random((3000, K)) ** 3
    v[:50] = np.stack([x[:50] for x in xs], axis=1) if m >= 50 else v[:50]
    v[50:60] = [[-0.5], [0.0], [-0.0], [1.0], [1.5], [2.0 ** -40], [2.0 ** -10], [5e-324], [0.999], [1.0005]]
    kernels = _kernels(backend)
    for mode in (0, 1):
        yy = ys if mode == 0 else [np.concatenate([y, [1.0]]) for y in ys]
        tables = kernels.StepTables(*_concatenated(xs, yy), mode)
        out = np.empty_like(v)
        assert kernels.step_apply_tables(v, tables, 0, False, out)[0] == 0
        if mode == 0:
            want = np.stack([np.interp(v[:, k], xs[k], ys[k]) for k in range(K)], axis=1)
        else:
            want = np.stack([yy[k][np.searchsorted(xs[k], v[:, k], side="left")] for k in range(K)], axis=1)
        np.testing.assert_array_equal(out, want)


def test_step_map_batches_do_not_depend_on_the_rows_per_call(backend, threads):
    # rows in batches of 32 per column: any split of the rows into calls, any thread count, the same bits
    rng = np.random.default_rng(12)
    z = rng.standard_normal((5000, 7)).astype(np.float32) * 3
    y = rng.integers(0, 7, 5000)
    c = IsotonicCalibration(from_logits=True, backend=backend).fit(z, y)
    apply = step_applier(c)
    whole = np.empty(z.shape)
    assert apply(z, whole, 1, True)[0] == 0
    for n in (1, 2):
        calibkit.set_num_threads(n)
        parts = np.empty(z.shape)
        for a, b in ((0, 1), (1, 33), (33, 100), (100, 5000)):
            assert apply(z[a:b], parts[a:b], 1, True)[0] == 0
        np.testing.assert_array_equal(parts, whole)


BAD = textwrap.dedent('''
    import sys, numpy as np
    from calibkit import _core
    from calibkit._numba import pav
    k = _core if sys.argv[1] == "cpp" else pav
    z = np.zeros((300, 20), np.float16)
    z[250, 4] = np.nan
    z[130, 7] = -np.inf
    print(tuple(k.softmax_into(z, np.empty(z.shape))[:3]))
    z32 = np.zeros((300, 20), np.float32)
    z32[299, 19] = np.inf
    print(tuple(k.softmax_into(z32, np.empty(z32.shape))[:3]))
    p = np.full((300, 3), 0.3)
    p[77, 1] = 1.5
    p[200, 0] = np.nan
    xo = np.array([0, 2, 4, 6], np.int64)
    t = k.StepTables(np.tile([0.2, 0.8], 3), xo, np.tile([0.1, 0.9], 3), xo.copy(), 0)
    print(tuple(k.step_apply_tables(p, t, 2, True, np.empty(p.shape))[:3]))
    try:
        k.softmax_into(z32.astype(np.int32), np.empty(z32.shape))
    except TypeError as exc:
        print("TypeError", exc)
''')


@pytest.mark.parametrize("which", ["cpp", "numba"])
def test_bad_scores_are_named_without_crashing(which):
    proc = subprocess.run([sys.executable, "-c", BAD, which], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "(1, 130, 7)"
    assert lines[1] == "(1, 299, 19)"
    assert lines[2] == "(2, 77, 1)"
    assert lines[3].startswith("TypeError") and "float16, float32 or float64" in lines[3]
