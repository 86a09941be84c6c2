"""Vector scaling's warm start (the fit on every m-th row, then all rows preconditioned by the coupled Hessian) and
the L-BFGS line search's approximate Armijo test: the same optimum as an independent fit, in few passes."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

import calibkit
from calibkit.calibrators import VectorScaling, scaling


def problem(seed, n, k, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 2.0
    z *= 3.0
    z[:, : max(1, k // 4)] *= 1.5
    z[:, k // 4: k // 2] += 1.0
    return z.astype(dtype), y


def reference(z, y, w, reg):
    """Plain L-BFGS-B in (a, c) on a float64 NumPy objective, tight tolerances."""
    z = np.asarray(z, np.float64)
    n, k = z.shape
    w = np.ones(n) if w is None else w / w.sum() * n
    w = w / n
    onehot = np.zeros_like(z)
    onehot[np.arange(n), y] = 1.0

    def f(x):
        s = z * x[:k] + x[k:]
        lse = logsumexp(s, axis=1)
        r = (np.exp(s - lse[:, None]) - onehot) * w[:, None]
        loss = w @ (lse - s[np.arange(n), y]) + reg / k * x[k:] @ x[k:]
        return loss, np.concatenate([(r * z).sum(0), r.sum(0) + 2 * reg / k * x[k:]])

    res = minimize(f, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="L-BFGS-B",
                   options={"maxiter": 5000, "gtol": 1e-11, "ftol": 1e-16})
    return res, f


# n >= 2 * max(_VECTOR_WARM_ROWS, 128 K): the warm-started path
CASES = [(40_000, 8, 0.0, False), (36_000, 12, 0.05, True)]


@pytest.mark.parametrize("n, k, reg, weighted", CASES)
def test_warm_start_reaches_the_independent_optimum(backend, n, k, reg, weighted):
    assert n // max(scaling._VECTOR_WARM_ROWS, scaling._VECTOR_WARM_ROWS_PER_CLASS * k) >= 2
    z, y = problem(n + k, n, k)
    w = np.random.default_rng(k).random(n) + 0.1 if weighted else None
    vs = VectorScaling(reg=reg, backend=backend).fit(z, y, sample_weight=w)
    ref, f = reference(z, y, w, reg)
    x = np.concatenate([vs.scale_, vs.bias_])
    loss, grad = f(x)
    assert loss == pytest.approx(ref.fun, rel=1e-9)
    assert np.abs(grad).max() <= 1e-7
    np.testing.assert_allclose(vs.scale_, ref.x[:k], atol=1e-4)
    centred = (lambda c: c - c.mean()) if reg == 0 else (lambda c: c)
    np.testing.assert_allclose(centred(vs.bias_), centred(ref.x[k:]), atol=1e-4)
    assert vs.n_passes_ <= 15


def test_warm_start_takes_fewer_passes_than_the_block_preconditioner(monkeypatch):
    z, y = problem(3, 40_000, 10)
    warm = VectorScaling(backend="cpp").fit(z, y)
    monkeypatch.setattr(scaling, "_FULL_CURVATURE_CLASSES", 0)  # the block-diagonal path from x0
    cold = VectorScaling(backend="cpp").fit(z, y)
    assert warm.n_passes_ < cold.n_passes_
    np.testing.assert_allclose(warm.scale_, cold.scale_, atol=1e-6)
    np.testing.assert_allclose(warm.predict_proba(z[:500]), cold.predict_proba(z[:500]), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_warm_start_is_the_same_for_any_thread_count_and_close_across_backends(dtype, threads):
    z, y = problem(5, 40_000, 8, dtype)
    fits = []
    for t in (1, 2):
        calibkit.set_num_threads(t)
        fits.append(VectorScaling(backend="cpp").fit(z, y))
    assert np.array_equal(fits[0].scale_, fits[1].scale_) and np.array_equal(fits[0].bias_, fits[1].bias_)
    nb = VectorScaling(backend="numba").fit(z, y)
    np.testing.assert_allclose(nb.scale_, fits[0].scale_, atol=1e-6)


def test_dense_route_equals_the_flattened_rows(backend):
    """Dense logits (N, K, H, W) take the same warm start (every m-th counted pixel) as their flattened rows."""
    z, y = problem(9, 40_000, 8)
    dense = np.ascontiguousarray(z.reshape(100, 20, 20, 8).transpose(0, 3, 1, 2))
    labels = y.reshape(100, 20, 20)
    a = VectorScaling(backend=backend).fit(dense, labels, axis=1)
    b = VectorScaling(backend=backend).fit(z, y)
    np.testing.assert_allclose(a.scale_, b.scale_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.bias_, b.bias_, rtol=1e-7, atol=1e-8)


def test_hessian_matches_finite_differences_of_the_gradient():
    z, y = problem(11, 3000, 4)
    vs = VectorScaling(reg=0.1)
    x = np.concatenate([np.full(4, 0.7), np.linspace(-0.3, 0.3, 4)])
    h = vs._hessian(z, None, x)
    eps = 1e-6
    fd = np.empty_like(h)
    for j in range(8):
        e = np.zeros(8)
        e[j] = eps
        fd[:, j] = (vs.loss_and_grad(x + e, z, y)[1] - vs.loss_and_grad(x - e, z, y)[1]) / (2 * eps)
    np.testing.assert_allclose(h, fd, atol=1e-6)


def test_line_search_accepts_steps_below_the_loss_rounding():
    """A smooth convex loss rounded to 1e-10: the approximate Armijo test lets L-BFGS reach the gradient
    tolerance in few evaluations (31) instead of halving steps until the rounding favours them (93)."""
    scale = np.logspace(0, 1, 10)
    calls = [0]

    def fun(x):
        calls[0] += 1
        r = np.sqrt(1.0 + x * x)
        return 1.0 + round(float(scale @ (r - 1.0)), 10), scale * x / r

    res = scaling._lbfgs(fun, np.linspace(-2.0, 2.0, 10), gtol=1e-9, ftol=-1.0, maxiter=200)  # no stop on f
    assert res.status == 0 and np.abs(res.jac).max() <= 1e-9
    assert calls[0] <= 40


def test_huge_logits_keep_the_block_preconditioner():
    """Logits whose squares overflow (|z| > 1e154): the coupled Hessian is not finite, the block one is used."""
    z, y = problem(13, 40_000, 4)
    z[0, 0] = 1e160
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the loss overflows: the fit stays near its start
        vs = VectorScaling().fit(z, y)
    assert np.isfinite(vs.scale_).all() and np.isfinite(vs.bias_).all()
