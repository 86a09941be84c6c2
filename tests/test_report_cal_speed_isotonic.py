"""The isotonic fit by runs (isotonic_column_runs of pav.hpp and its Numba twin): when one label is rare in a
column (one-vs-rest over many classes), only the rare rows are sorted and the common rows are counted into the
runs between them. The map must be the full sort's bit for bit: the weighted path with unit weights takes the
full sort (the same sums of 1.0 * y), so the two are compared on the same scores, for both backends."""

from __future__ import annotations

import numpy as np
import pytest

from calibkit.calibrators import nonparametric as npm


def _backends():
    return ["cpp", "numba"]


def _fit(backend, s, y, w=None, first_class=0):
    r = npm._kernels(backend).isotonic_fit_columns(np.ascontiguousarray(s), y.astype(np.int64), w, first_class,
                                                   npm._CHECK_FINITE)
    return r["x"], r["x_offsets"], r["y"], r["y_offsets"]


def _same(a, b):
    for u, v in zip(a, b):
        assert u.shape == v.shape
        assert np.array_equal(u.view(np.uint8), v.view(np.uint8)), "not bit-identical"


def _cases():
    rng = np.random.default_rng(7)
    n, k = 3000, 40
    z = rng.standard_normal((n, k)) * 3.0
    y = rng.integers(0, k, n)
    z[np.arange(n), y] += 4.0
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    yield "softmax", p, y
    # coarse scores: many exact ties, between rare rows, common rows and across the two
    yield "ties", np.round(p * 20) / 20, y
    # rare rows at the extremes, and scores below / above every rare score
    q = p.copy()
    q[y == 3, 3] = 0.0
    q[y == 4, 4] = 1.0
    yield "extremes", q, y
    # signed zeros (one key, two values: the earliest row's and the latest row's are kept)
    q = np.round(p * 4) / 4
    q[::3] = -q[::3]
    yield "signed zeros", q, y
    # a class that never occurs, and one that is every row's (one rare row or none)
    y2 = y.copy()
    y2[y2 == 5] = 6
    yield "absent class", p, y2
    yield "one label", p[:, :3], np.zeros(n, np.int64)
    yield "one rare row", p[:, :3], np.r_[1, np.zeros(n - 1, np.int64)]
    # the common label positive (binary scores with few negatives)
    yield "rare negatives", p[:, :2], (rng.random(n) < 0.95).astype(np.int64)
    # too few rows of either label: the full sort (both paths agree trivially, still bit-identical)
    yield "balanced", p[:, :2], (rng.random(n) < 0.5).astype(np.int64)
    yield "tiny", p[:5, :3], y[:5] % 3


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_runs_equal_the_full_sort(backend, case):
    _, s, y = case
    _same(_fit(backend, s, y), _fit(backend, s, y, np.ones(len(y))))


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_backends_agree(case):
    _, s, y = case
    _same(_fit("cpp", s, y), _fit("numba", s, y))


@pytest.mark.parametrize("backend", _backends())
def test_binary_first_class(backend):
    rng = np.random.default_rng(3)
    s = rng.random(2000)[:, None]
    y = (rng.random(2000) < 0.03).astype(np.int64)
    _same(_fit(backend, s, y, first_class=1), _fit(backend, s, y, np.ones(len(y)), first_class=1))


def test_isotonic_calibration_matches_reference():
    """The calibrator's map against a NumPy PAV over the fully sorted scores (ties pooled)."""
    rng = np.random.default_rng(11)
    n, k = 4000, 30
    p = rng.dirichlet(np.full(k, 0.3), n)
    y = np.array([rng.choice(k, p=row) for row in p])
    p = np.round(p, 3)
    for backend in _backends():
        x, xo, f, _ = _fit(backend, p, y)
        for c in (0, 7, 29):
            col = p[:, c]
            t = (y == c).astype(float)
            keys, inv = np.unique(col, return_inverse=True)
            sw = np.bincount(inv, minlength=len(keys)).astype(float)
            swy = np.bincount(inv, weights=t, minlength=len(keys))
            blocks = []  # [sum w, sum wy, first key index, last key index]
            for j in range(len(keys)):
                b = [sw[j], swy[j], j, j]
                while blocks and blocks[-1][1] / blocks[-1][0] >= b[1] / b[0]:
                    top = blocks.pop()
                    b = [top[0] + b[0], top[1] + b[1], top[2], b[3]]
                blocks.append(b)
            rx, ry = [], []
            for s_w, s_wy, a, b in blocks:
                rx.append(keys[a])
                ry.append(s_wy / s_w)
                if keys[b] != keys[a]:
                    rx.append(keys[b])
                    ry.append(s_wy / s_w)
            assert np.array_equal(x[xo[c]:xo[c + 1]], rx)
            assert np.array_equal(f[xo[c]:xo[c + 1]], ry)
