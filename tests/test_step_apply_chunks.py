"""apply_columns' chunks (pav.hpp step_chunk, its AVX2 clone, and _apply_chunk of the Numba twin): each chunk's
softmax once into a per-thread scratch, each set of one-vs-rest maps into a second scratch, its rows renormalised
from there into the output; the softmax's row maximum in eight lanes; np.interp's end values in one test.

References: NumPy. The softmax of float32 / float16 logits is numpy_softmax_f32 (exp_f32 in NumPy float32, from
test_report_speed_kernels.py), of float64 logits NumPy's float64 softmax with math.exp (both bit for bit); the maps
are np.interp and y[np.searchsorted(x, s, side="left")] of each column, each row divided by its NumPy sum (a row
summing to 0: 1/K). Bit for bit: both backends, 1 and 2 threads, the SSE2 and AVX2 clones (in subprocesses), odd
row counts and K (chunk edges, the lanes' tail, K above 128), one call after another of other shapes (the scratch
grows), in place, without renormalisation; values on knots and outside [0, 1]; zero maxima of either sign; a logit
that is not finite named by row and class. Chunks have step_apply_rows(K) = max(16384 // K, 16, min(128, 2^18 // K)) rows.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import pytest

import calibkit
from calibkit import HistogramBinning, IsotonicCalibration
from calibkit.calibrators.nonparametric import _kernels
from subprocess_cases import simd_clone_outputs
from test_report_speed_kernels import numpy_softmax_f32


def _numpy_softmax(z):
    if z.dtype != np.float64:
        return numpy_softmax_f32(z)
    q = np.subtract(z, z.max(axis=1, keepdims=True), out=np.empty(z.shape), dtype=np.float64)
    q[...] = np.frompyfunc(math.exp, 1, 1)(q)  # the C library's exp, as the kernels
    return q / q.sum(axis=1, keepdims=True)


def _numpy_map(q, models, renormalise=True):
    """The one-vs-rest maps (mode, x_k, y_k) of the columns of q, rows renormalised."""
    K = q.shape[1]
    out = np.empty(q.shape)
    for k, (mode, x, y) in enumerate(models):
        out[:, k] = np.interp(q[:, k], x, y) if mode == 0 else y[np.searchsorted(x, q[:, k], side="left")]
    if renormalise:
        total = out.sum(axis=1, keepdims=True)
        np.divide(out, total, out=out, where=total > 0)
        out[total[:, 0] <= 0] = 1.0 / K
    return out


def _models(rng, K, mode):
    """K models of mode 0 (isotonic: m knots, m values) or 1 (histogram: m inner edges, m + 1 values), m from 1
    (the end values only) to a few hundred, with knots in [0, 1] and some on its ends."""
    models = []
    for k in range(K):
        m = (1, 2, 3, 15, 240)[k % 5]
        x = np.unique(np.concatenate([rng.random(m) ** 4, [0.0, 1.0][: k % 3]]))
        y = np.sort(rng.random(x.shape[0] + mode))
        if k % 7 == 3:
            y[:] = 0.0  # a column that maps everything to 0 (rows of zeros when every column does)
        models.append((mode, x, y))
    return models


def _tables(backend, models):
    off = np.array([0] + [len(x) for _, x, _ in models], np.int64).cumsum()
    yoff = np.array([0] + [len(y) for _, _, y in models], np.int64).cumsum()
    x = np.concatenate([x for _, x, _ in models])
    y = np.concatenate([y for _, _, y in models])
    return _kernels(backend).StepTables(x, off, y, yoff, models[0][0])


def _logits(rng, n, k, dtype):
    z = rng.standard_normal((n, k)) * 3
    z[::5, 0] = 25.0  # one dominant logit
    z[1::9, k // 2] = 90.0  # differences below -87 (exp_f32's clamp)
    return z.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 3, 8, 9, 19, 100, 131, 1030])
def test_odd_shapes_are_numpy_bit_for_bit(backend, dtype, K, threads):
    rng = np.random.default_rng(K)
    chunk = max(16, (1 << 14) // K, min(128, (1 << 18) // K))  # step_apply_rows of pav.hpp
    N = 2 * chunk + 3
    z = _logits(rng, N, K, dtype)
    sets = [_models(rng, K, 0), _models(rng, K, 1)]
    q = _numpy_softmax(z)
    want = [_numpy_map(q, models) for models in sets]
    tables = [_tables(backend, models) for models in sets]
    got = []
    for n in (1, 2):
        calibkit.set_num_threads(n)
        for rows in (N, 1, chunk, chunk + 1):  # the whole block, and blocks ending inside and on a chunk
            out = np.full((2, rows, K), np.nan)
            assert _kernels(backend).step_apply_many(z[:rows], tables, 1, True, out, True) == (0, -1, -1, 0.0)
            for j in range(2):
                np.testing.assert_array_equal(out[j], want[j][:rows])
            got.append(out[:, :1])
        # probabilities in: the same maps, each set on its own
        for j in range(2):
            out = np.empty((1, N, K))
            assert _kernels(backend).step_apply_many(q, tables[j:j + 1], 2, True, out)[0] == 0
            np.testing.assert_array_equal(out[0], want[j])


def test_the_scratch_follows_each_call(backend, threads):
    """Calls of other shapes one after another (a larger K, fewer rows per chunk, a smaller K again; 4100 classes:
    63-row chunks, under the scratch's cap; 17000: 16-row chunks, a scratch released after each chunk) on the same
    threads: each is its NumPy reference."""
    rng = np.random.default_rng(3)
    for n in (1, 2):
        calibkit.set_num_threads(n)
        for K, N in ((3, 7000), (700, 100), (2100, 37), (4100, 130), (17000, 35), (5, 30), (700, 5)):
            z = _logits(rng, N, K, np.float32)
            models = _models(rng, K, 0)
            out = np.empty((1, N, K))
            assert _kernels(backend).step_apply_many(z, [_tables(backend, models)], 1, True, out, True)[0] == 0
            np.testing.assert_array_equal(out[0], _numpy_map(numpy_softmax_f32(z), models))


@pytest.mark.parametrize("renormalise", [True, False])
def test_in_place_and_without_renormalisation(backend, renormalise, threads):
    rng = np.random.default_rng(4)
    K, N = 11, 3001
    p = rng.dirichlet(np.full(K, 0.3), N)
    p[5] = 0.0  # a row of zeros
    p[6, 2] = 1.0  # on a knot's end
    zeros = [(1, x, np.zeros_like(y)) for _, x, y in _models(rng, K, 1)]  # every row sums to 0: 1/K
    for models in (_models(rng, K, 1), zeros):
        want = _numpy_map(p, models, renormalise)
        for n in (1, 2):
            calibkit.set_num_threads(n)
            s = p.copy()
            assert _kernels(backend).step_apply_tables(s, _tables(backend, models), 2, renormalise, s)[0] == 0
            np.testing.assert_array_equal(s, want)


def test_values_on_knots_outside_the_unit_interval_and_at_the_ends(backend):
    """np.interp's end values (below the first knot, on and above the last, every value of a one-knot model) and
    values on inner knots, exactly and one ulp either side, with 0, -0.0, 1 and values outside [0, 1]."""
    rng = np.random.default_rng(5)
    K = 10
    models = _models(rng, K, 0)
    cols = []
    for _, x, _ in models:
        c = np.concatenate([x, np.nextafter(x, 2), np.nextafter(x, -1), [0.0, -0.0, 1.0, -1e-7, 1 + 1e-7, 3.0, -2.0]])
        cols.append(rng.permutation(np.resize(c, 500)))
    s = np.stack(cols, axis=1)
    for renormalise in (False, True):
        out = np.empty((1,) + s.shape)
        assert _kernels(backend).step_apply_many(s, [_tables(backend, models)], 0, renormalise, out)[0] == 0
        np.testing.assert_array_equal(out[0], _numpy_map(s, models, renormalise))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_row_maximum_in_any_lane_and_zero_maxima(backend, dtype):
    """The row maximum in each of 19 places (the eight lanes, and the tail past the last whole eight), ties of
    it, all-equal rows, zero maxima of either sign (+0.0 and -0.0 in either order) and -inf below them."""
    K = 19
    rows = []
    for at in range(K):
        r = -np.arange(1, K + 1, dtype=np.float64) / 4
        r[at] = 3.0
        rows.append(r)
        t = r.copy()
        t[(at + 8) % K] = 3.0
        rows.append(t)
    rows.append(np.full(K, 2.5))
    for first, second in ((0.0, -0.0), (-0.0, 0.0)):
        r = -np.arange(K, dtype=np.float64)
        r[0], r[11] = first, second
        rows.append(r)
        rows.append(r[::-1].copy())
    z = np.array(rows).astype(dtype)
    q = np.empty(z.shape)
    assert _kernels(backend).softmax_into(z, q)[0] == 0
    np.testing.assert_array_equal(q, _numpy_softmax(z))
    models = _models(np.random.default_rng(6), K, 0)
    out = np.empty((1,) + z.shape)
    assert _kernels(backend).step_apply_many(z, [_tables(backend, models)], 1, True, out, True)[0] == 0
    np.testing.assert_array_equal(out[0], _numpy_map(q, models))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("col", [0, 7, 8, 17])
def test_a_logit_that_is_not_finite_is_named_in_any_lane(backend, bad, col, threads):
    rng = np.random.default_rng(7)
    K = 18
    z = _logits(rng, 2000, K, np.float32)
    z[1234, col] = bad
    z[1234, (col + 9) % K] = bad  # a second one in the row: the first is named
    z[1500, 3] = bad
    tables = [_tables(backend, _models(rng, K, 0)), _tables(backend, _models(rng, K, 1))]
    for n in (1, 2):
        calibkit.set_num_threads(n)
        code, row, c, _ = _kernels(backend).step_apply_many(z, tables, 1, True, np.empty((2,) + z.shape), True)
        assert (code, row, c) == (1, 1234, min(col, (col + 9) % K))
        code, row, c, _ = _kernels(backend).softmax_into(z, np.empty(z.shape))
        assert (code, row, c) == (1, 1234, min(col, (col + 9) % K))


def test_calibrators_predict_proba_are_the_maps(backend):
    rng = np.random.default_rng(8)
    z = _logits(rng, 4000, 13, np.float32)
    y = rng.integers(0, 13, 4000)
    iso = IsotonicCalibration(from_logits=True, backend=backend).fit(z[:2000], y[:2000])
    hist = HistogramBinning(n_bins=15, from_logits=True, backend=backend).fit(z[:2000], y[:2000])
    out = np.empty((2,) + z.shape)
    assert _kernels(backend).step_apply_many(z, [iso._step_tables(), hist._step_tables()], 1, True, out, True)[0] == 0
    np.testing.assert_array_equal(out[0], iso.predict_proba(z))
    np.testing.assert_array_equal(out[1], hist.predict_proba(z))


_HASH_CODE = r"""
import hashlib, sys
import numpy as np
import calibkit
sys.path.insert(0, sys.argv[1])
from test_step_apply_chunks import _digest
calibkit.set_num_threads(int(sys.argv[3]))
print(_digest(sys.argv[2]))
"""


def _digest(backend):
    """A hash of step_apply_many's outputs over dtypes, shapes and check modes (the SSE2 / AVX2 clone test)."""
    h = hashlib.sha256()
    for K, N, dtype in ((1, 50, np.float32), (9, 2000, np.float16), (19, 700, np.float32), (100, 900, np.float64),
                        (131, 300, np.float32)):
        rng = np.random.default_rng(K)
        z = _logits(rng, N, K, dtype)
        tables = [_tables(backend, _models(rng, K, 0)), _tables(backend, _models(rng, K, 1))]
        out = np.empty((2, N, K))
        h.update(repr(_kernels(backend).step_apply_many(z, tables, 1, True, out, True)).encode())
        h.update(out.tobytes())
        q = np.empty((N, K))
        _kernels(backend).softmax_into(z, q)
        h.update(repr(_kernels(backend).step_apply_many(q, tables[1:], 2, False, out[:1])).encode())
        h.update(out[0].tobytes())
    return h.hexdigest()


def test_sse2_and_avx2_clones_and_the_numba_twin_agree():
    here = os.path.dirname(os.path.abspath(__file__))
    got = set()
    for threads in ("1", "2"):
        got.update(o.strip() for o in simd_clone_outputs(_HASH_CODE, here, "cpp", threads))
    got.add(_digest("numba"))
    assert len(got) == 1
