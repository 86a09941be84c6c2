"""The vector scaling fit: preconditioned L-BFGS-B reaches the same optimum as a plain fit in far fewer passes."""

import functools
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp

import calibkit
from calibkit.calibrators import VectorScaling


def problem(seed, n, k, dtype=np.float64):
    """Overconfident logits with per-class miscalibration (different scales and offsets per class)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 3.0
    z *= 2.5
    z[:, : max(1, k // 10)] *= 1.5
    z[:, k // 10: k // 5] += 2.0
    return z.astype(dtype), y


def reference_fit(z, y, w, reg):
    """Independent fit: plain L-BFGS-B in (a, c) on a float64 NumPy objective, tight tolerances."""
    z = np.asarray(z, np.float64)
    n, k = z.shape
    w = np.ones(n) if w is None else np.asarray(w, np.float64)
    w = w / w.sum()
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


def case(n, k, weighted):
    z, y = problem(n + k, n, k)
    return z, y, (np.random.default_rng(k).random(n) + 0.1 if weighted else None)


@functools.lru_cache(maxsize=None)
def cached_reference(n, k, reg, weighted):
    """The reference fit of a case, computed once for both backends (it is the slow part)."""
    return reference_fit(*case(n, k, weighted), reg)


@pytest.mark.parametrize("n, k, reg, weighted", [(4000, 10, 0.0, False), (2000, 20, 0.0, True),
                                                 (3000, 30, 0.1, False), (20_000, 3, 0.0, True)])
def test_same_optimum_as_an_independent_fit(backend, n, k, reg, weighted):
    z, y, w = case(n, k, weighted)
    vs = VectorScaling(reg=reg, backend=backend).fit(z, y, sample_weight=w)
    ref, f = cached_reference(n, k, reg, weighted)
    x = np.concatenate([vs.scale_, vs.bias_])
    loss, grad = f(x)
    assert loss == pytest.approx(ref.fun, rel=1e-9)
    assert np.abs(grad).max() <= 1e-7  # the promise: |gradient| <= tol (1e-8, up to the kernel's rounding)
    np.testing.assert_allclose(vs.scale_, ref.x[:k], atol=1e-4)
    if reg > 0:  # with reg = 0 the loss does not change when every c_k moves by the same amount
        np.testing.assert_allclose(vs.bias_, ref.x[k:], atol=1e-4)
    else:
        np.testing.assert_allclose(vs.bias_ - vs.bias_.mean(), ref.x[k:] - ref.x[k:].mean(), atol=1e-4)


def test_far_fewer_passes_than_plain_lbfgs():
    """Preconditioning by the per-class curvature: a fraction of the plain fit's kernel passes."""
    z, y = problem(5, 6000, 40)
    vs = VectorScaling(backend="cpp")
    plain = minimize(vs.loss_and_grad, np.concatenate([np.ones(40), np.zeros(40)]), args=(z, y), jac=True,
                     method="L-BFGS-B", options={"maxiter": 500, "gtol": 1e-8, "ftol": 1e-14})
    vs.fit(z, y)
    assert vs.n_passes_ * 2 <= plain.nfev
    assert vs.loss_and_grad(np.concatenate([vs.scale_, vs.bias_]), z, y)[0] <= plain.fun * (1 + 1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_backends_and_thread_counts_agree(dtype, threads):
    z, y = problem(7, 5000, 12, dtype)
    fits = []
    for t in (1, 2):
        calibkit.set_num_threads(t)
        fits.append(VectorScaling(backend="cpp").fit(z, y))
    assert np.array_equal(fits[0].scale_, fits[1].scale_) and np.array_equal(fits[0].bias_, fits[1].bias_)
    nb = VectorScaling(backend="numba").fit(z, y)
    np.testing.assert_allclose(nb.scale_, fits[0].scale_, atol=1e-6)


def test_bad_input_errors_name_the_element(backend):
    z = np.zeros((50, 3))
    z[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"logits\[4, 1\] = nan is not finite"):
        VectorScaling(backend=backend).fit(z, np.zeros(50, np.int64))
    with pytest.raises(ValueError, match=r"labels\[0\] = 5 is out of range for n_classes=3"):
        VectorScaling(backend=backend).fit(np.zeros((50, 3)), np.full(50, 5))


def test_constant_logits_and_a_class_never_seen():
    """Degenerate curvature (constant logits, a class with no rows) still gives a finite, converged fit."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(500, 4))
    z[:, 3] = 0.0
    y = rng.integers(0, 3, 500)
    vs = VectorScaling().fit(z, y)
    assert np.isfinite(vs.scale_).all() and np.isfinite(vs.bias_).all()
    assert vs.predict_proba(z)[:, 3].max() < 0.05


def test_importing_calibkit_does_not_import_the_optimiser():
    code = "import sys, calibkit, calibkit.calibrators; print('scipy.optimize' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
