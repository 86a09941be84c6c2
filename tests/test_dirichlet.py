"""DirichletCalibration against an independent NumPy/SciPy reference of Kull et al.'s objective.

``dirichletcal`` (the authors' package) cannot be installed here: its only release on PyPI (0.3.dev4) has a
malformed ``install_requires`` that pip refuses, and its code needs ``jax.config`` and ``scipy.linalg.pinv2``,
both removed upstream. The reference below writes its objective out from its source (mean NLL of
softmax(W ln p + c), W's last row subtracted from every row (``ref_row=True``), the regulariser on that
representative, normalised as with ``reg_norm=True``) and minimises it with SciPy's BFGS: the issue's
tolerances (NLL at the optimum to 1e-6 relative, probabilities to 1e-4) are checked against it.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit.calibrators.dirichlet import TINY
from conftest import load_real

scipy_optimize = pytest.importorskip("scipy.optimize")


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _reference_objective(W, c, p, y, lam=0.0, mu=None, ref_row=True, w=None):
    """Kull et al.'s regularised mean NLL, written out independently (no calibkit code)."""
    K = p.shape[1]
    x = np.log(np.clip(p.astype(np.float64), TINY, 1.0))
    if ref_row:
        W, c = W - W[-1], c - c[-1]
    q = _softmax(x @ W.T + c)
    nll = -np.log(q[np.arange(len(y)), y])
    w = np.ones(len(y)) if w is None else w
    loss = float(w @ nll / w.sum())
    if mu is None:
        loss += lam / (K * (K + 1)) * (float((W ** 2).sum()) + float((c ** 2).sum()))
    else:
        off = W - np.diag(np.diag(W))
        loss += lam / (K * (K - 1)) * float((off ** 2).sum()) + mu / K * float((c ** 2).sum())
    return loss


def _reference_fit(p, y, kind, lam=0.0, mu=None, w=None):
    """(W, c, objective) minimising the reference objective by damped Newton with the exact Hessian, written
    from the model alone: logits s_n = J_n theta + s0 with J_n (K x P) the Jacobian of the row's logits in the
    parameters, gradient sum_n w_n J_n^T (q_n - y_n) / sum w, Hessian sum_n w_n J_n^T (diag q_n - q_n q_n^T) J_n
    / sum w, plus the regulariser's (a quadratic R(theta) = theta^T D theta with D diagonal)."""
    n, K = p.shape
    x = np.log(np.clip(p.astype(np.float64), TINY, 1.0))
    Y = np.eye(K)[y]
    w = np.ones(n) if w is None else w
    w = w / w.sum()
    if kind == "fixed_diagonal":
        J = x[:, :, None]                                             # theta = [a]
    elif kind == "diagonal":                                          # theta = [a (K), c (K - 1)]
        J = np.concatenate([x[:, :, None] * np.eye(K), np.broadcast_to(np.eye(K)[:, :K - 1], (n, K, K - 1))], 2)
    else:                                                             # theta = (K - 1, K + 1) rows [W_r | c_r]
        xt = np.hstack([x, np.ones((n, 1))])
        J = np.zeros((n, K, (K - 1) * (K + 1)))
        for r in range(K - 1):
            J[:, r, r * (K + 1):(r + 1) * (K + 1)] = xt
    P = J.shape[2]
    D = np.zeros(P)
    if kind == "full" and (lam or mu):
        for r in range(K - 1):
            for j in range(K + 1):
                if mu is None:
                    D[r * (K + 1) + j] = lam / (K * (K + 1))
                elif j == K:
                    D[r * (K + 1) + j] = mu / K
                elif j != r:
                    D[r * (K + 1) + j] = lam / (K * (K - 1))
    theta = {"fixed_diagonal": np.ones(1), "diagonal": np.concatenate([np.ones(K), np.zeros(K - 1)]),
             "full": np.hstack([np.eye(K) - np.eye(K)[-1], np.zeros((K, 1))])[:-1].ravel()}[kind]

    def unpack(t):
        if kind == "fixed_diagonal":
            return np.eye(K) * t[0], np.zeros(K)
        if kind == "diagonal":
            return np.diag(t[:K]), np.concatenate([t[K:], [0.0]])
        M = np.vstack([t.reshape(K - 1, K + 1), np.zeros(K + 1)])
        return M[:, :K], M[:, K]

    def f(t):
        W, c = unpack(t)
        return _reference_objective(W, c, p, y, lam, mu, w=w)

    for _ in range(200):
        W, c = unpack(theta)
        q = _softmax(x @ W.T + c)
        J2 = J.reshape(n * K, P)
        g = J2.T @ (w[:, None] * (q - Y)).ravel() + 2 * D * theta
        Jq = (J * q[:, :, None]).sum(axis=1)
        H = (J2 * (w[:, None] * q).ravel()[:, None]).T @ J2 - (Jq * w[:, None]).T @ Jq + 2 * np.diag(D)
        step = np.linalg.lstsq(H, g, rcond=None)[0]
        if float(g @ step) < 1e-15:  # the Newton decrement (~ 2 (f - f*)): at the optimum to rounding
            break
        f0, t = f(theta), 1.0
        while f(theta - t * step) > f0 and t > 1e-12:
            t /= 2
        if t <= 1e-12:
            break
        theta = theta - t * step
    W, c = unpack(theta)
    return W, c, f(theta)


def _data(rng, n=3000, k=4, sharp=3.0):
    y = rng.integers(0, k, n)
    z = sharp * (rng.normal(size=(n, k)) + 1.2 * np.eye(k)[y])
    return _softmax(z), y


@pytest.mark.parametrize("kind,lam,mu", [("fixed_diagonal", 0.0, None), ("diagonal", 0.0, None),
                                         ("full", 0.0, None), ("full", 1e-2, None), ("full", 5e-2, 1e-2)])
def test_matches_reference_fit(kind, lam, mu, backend):
    rng = np.random.default_rng(1)
    p, y = _data(rng)
    dc = calibkit.DirichletCalibration(kind, reg_lambda=lam, reg_mu=mu, tol=1e-10, backend=backend).fit(p, y)
    W, c, ref = _reference_fit(p, y, kind, lam, mu)
    ours = _reference_objective(dc.coef_, dc.intercept_, p, y, lam, mu)
    assert abs(ours - ref) <= 1e-6 * abs(ref)
    x = np.log(np.clip(p, TINY, 1.0))
    np.testing.assert_allclose(dc.predict_proba(p), _softmax(x @ W.T + c), atol=1e-4)
    # the fit's own objective is the reference objective
    theta = dc._start(p.shape[1]) * 0 + 0.3
    f, _ = dc.loss_and_grad(theta, p, y)
    Wt, ct = dc._unpack(theta, p.shape[1])
    assert f == pytest.approx(_reference_objective(Wt, ct, p, y, lam, mu), rel=1e-12)


@pytest.mark.parametrize("kind", ["fixed_diagonal", "diagonal", "full"])
def test_gradient_is_the_derivative(kind):
    rng = np.random.default_rng(2)
    p, y = _data(rng, n=500, k=3)
    dc = calibkit.DirichletCalibration(kind, reg_lambda=0.1 if kind == "full" else 0.0,
                                       reg_mu=0.05 if kind == "full" else None)
    theta = rng.normal(size=dc._start(3).shape) * 0.5 + dc._start(3)
    f, g = dc.loss_and_grad(theta, p, y)
    h = 1e-6
    num = np.array([(dc.loss_and_grad(theta + h * e, p, y)[0] - dc.loss_and_grad(theta - h * e, p, y)[0]) / (2 * h)
                    for e in np.eye(theta.size)])
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_kinds_are_the_scaling_calibrators_on_log_probabilities(backend):
    """fixed_diagonal = temperature scaling of ln p (a = 1 / T); diagonal = vector scaling of ln p (its last
    intercept moved to 0); full without ref_row = matrix scaling of ln p with the same ODIR."""
    rng = np.random.default_rng(3)
    p, y = _data(rng, n=4000, k=5)
    x = np.log(p)
    fd = calibkit.DirichletCalibration("fixed_diagonal", tol=1e-12, backend=backend).fit(p, y)
    ts = calibkit.TemperatureScaling(backend=backend).fit(x, y)
    assert fd.coef_[0, 0] == pytest.approx(1.0 / ts.temperature_, rel=1e-6)
    dg = calibkit.DirichletCalibration("diagonal", tol=1e-10, backend=backend).fit(p, y)
    vs = calibkit.VectorScaling(tol=1e-10, backend=backend).fit(x, y)
    np.testing.assert_allclose(dg.predict_proba(p), vs.predict_proba(x), atol=1e-6)
    np.testing.assert_allclose(np.diag(dg.coef_), vs.scale_, rtol=1e-4)
    fl = calibkit.DirichletCalibration("full", reg_lambda=0.3, reg_mu=0.1, ref_row=False, tol=1e-10).fit(p, y)
    ms = calibkit.MatrixScaling(reg=0.3, reg_intercept=0.1, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(fl.coef_, ms.weights_, atol=1e-5)
    np.testing.assert_allclose(fl.intercept_, ms.bias_, atol=1e-5)


def test_from_logits_is_log_softmax():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 4, 2000)
    z = 2.5 * (rng.normal(size=(2000, 4)) + np.eye(4)[y])
    a = calibkit.DirichletCalibration("full", reg_lambda=1e-3, reg_mu=1e-3, from_logits=True).fit(z, y)
    b = calibkit.DirichletCalibration("full", reg_lambda=1e-3, reg_mu=1e-3).fit(_softmax(z), y)
    np.testing.assert_allclose(a.predict_proba(z), b.predict_proba(_softmax(z)), atol=1e-8)


def test_weights_equal_repeated_rows_and_dtypes(backend):
    rng = np.random.default_rng(5)
    p, y = _data(rng, n=800, k=3)
    counts = rng.integers(0, 3, len(y))
    a = calibkit.DirichletCalibration("diagonal", tol=1e-11, backend=backend).fit(p, y, sample_weight=counts)
    b = calibkit.DirichletCalibration("diagonal", tol=1e-11, backend=backend).fit(np.repeat(p, counts, 0),
                                                                                  np.repeat(y, counts))
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-6)
    # float32 probabilities: the log in float32 (the input's precision): the fit moves by about that much
    p32 = p.astype(np.float32)
    c = calibkit.DirichletCalibration("diagonal", tol=1e-11, backend=backend).fit(p32, y)
    d = calibkit.DirichletCalibration("diagonal", tol=1e-11, backend=backend).fit(p32.astype(np.float64), y)
    np.testing.assert_allclose(c.coef_, d.coef_, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(c.predict_proba(p32), d.predict_proba(p32.astype(np.float64)), atol=1e-6)
    strided = np.asfortranarray(np.repeat(p, 2, axis=1))[:, ::2]
    e = calibkit.DirichletCalibration("diagonal", backend=backend).fit(strided, y)
    f = calibkit.DirichletCalibration("diagonal", backend=backend).fit(p, y)
    np.testing.assert_array_equal(e.coef_, f.coef_)


def test_backends_agree():
    rng = np.random.default_rng(6)
    p, y = _data(rng, n=3000, k=6)
    # the kernels agree to rounding; the fits to the optimiser's resolution (it stops when the loss, flat to
    # second order at the optimum, no longer moves at 1e-14 relative: parameters ~1e-7 apart)
    a = calibkit.DirichletCalibration("diagonal", backend="cpp").fit(p, y)
    b = calibkit.DirichletCalibration("diagonal", backend="numba").fit(p, y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.predict_proba(p), b.predict_proba(p), rtol=0, atol=1e-7)
    fa = a.loss_and_grad(np.concatenate([np.diag(a.coef_), a.intercept_]), p, y)[0]
    fb = b.loss_and_grad(np.concatenate([np.diag(b.coef_), b.intercept_]), p, y)[0]
    assert fa == pytest.approx(fb, rel=1e-12)


def test_real_dump_lowers_nll_and_matches_reference():
    d = load_real("focal_cifar10_resnet110_flsd53.npz")
    # the first 2000 validation rows (the reference's exact Hessian makes it slow on all 5000)
    pv, yv = _softmax(d["val_logits"][:2000].astype(np.float64)), d["val_labels"][:2000]
    pt, yt = _softmax(d["test_logits"].astype(np.float64)), d["test_labels"]
    for kind, lam, mu in [("diagonal", 0.0, None), ("full", 1e-2, 1e-2)]:
        dc = calibkit.DirichletCalibration(kind, reg_lambda=lam, reg_mu=mu, tol=1e-10).fit(pv, yv)
        W, c, ref = _reference_fit(pv, yv, kind, lam, mu)
        assert abs(_reference_objective(dc.coef_, dc.intercept_, pv, yv, lam, mu) - ref) <= 1e-6 * ref
        if kind == "diagonal":  # (the full kind's 99 parameters overfit 2000 rows at this weak ODIR)
            assert calibkit.nll(dc.predict_proba(pt), yt) < calibkit.nll(pt, yt)


def test_round_trip_and_validation():
    rng = np.random.default_rng(7)
    p, y = _data(rng, n=600, k=3)
    for kind in ("full", "diagonal", "fixed_diagonal"):
        dc = calibkit.DirichletCalibration(kind).fit(p, y)
        again = calibkit.Calibrator.from_dict(json.loads(json.dumps(dc.to_dict())))
        np.testing.assert_array_equal(again.predict_proba(p), dc.predict_proba(p))
    data = calibkit.DirichletCalibration("diagonal").fit(p, y).to_dict()
    data["fitted"]["coef_"][0][1] = 0.5
    with pytest.raises(ValueError, match="must be diagonal"):
        calibkit.Calibrator.from_dict(data)
    data = calibkit.DirichletCalibration("fixed_diagonal").fit(p, y).to_dict()
    data["fitted"]["intercept_"][0] = 0.5
    with pytest.raises(ValueError, match="multiple of the identity"):
        calibkit.Calibrator.from_dict(data)
    data = calibkit.DirichletCalibration().fit(p, y).to_dict()
    data["fitted"]["coef_"] = [[1.0, 2.0]]
    with pytest.raises(ValueError, match="coef_"):
        calibkit.Calibrator.from_dict(data)


def _run(code):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.parametrize("backend_name", ["cpp", "numba"])
def test_bad_input_one_clear_error(backend_name):
    out = _run(f"""
        import numpy as np, calibkit
        p = np.full((50, 3), 1 / 3); y = np.arange(50) % 3
        def err(f):
            try:
                f()
            except (ValueError, TypeError) as e:
                print(type(e).__name__ + ": " + str(e).splitlines()[0])
            else:
                print("no error")
        D = lambda **kw: calibkit.DirichletCalibration(backend={backend_name!r}, **kw)
        q = p.copy(); q[17, 2] = np.nan
        err(lambda: D(kind="diagonal").fit(q, y))
        err(lambda: D(kind="full").fit(q, y))
        q = p.copy(); q[5, 1] = 1.5
        err(lambda: D(kind="diagonal").fit(q, y))
        z = y.copy(); z[9] = 3
        err(lambda: D(kind="diagonal").fit(p, z))
        err(lambda: D(kind="diagonal", reg_lambda=0.1).fit(p, y))
        err(lambda: D(kind="bogus").fit(p, y))
        err(lambda: D(kind="full", reg_mu=-1.0).fit(p, y))
        err(lambda: D(kind="full").fit(p[:5], y[:5]))
        err(lambda: D(kind="diagonal").fit(p[:, 0], y))
        d = D(kind="diagonal").fit(p, y)
        err(lambda: d.predict_proba(np.full((4, 5), 0.2)))
        q = p.copy(); q[3, 0] = np.inf
        err(lambda: d.predict_proba(q))
    """).splitlines()
    assert out[0] == "ValueError: scores[17, 2] = nan is not finite" or "scores[17, 2]" in out[0], out[0]
    assert "scores[17, 2]" in out[1]
    assert "scores[5, 1] = 1.5 is not a probability" in out[2]
    assert "labels[9] = 3" in out[3]
    assert "takes no regularisation" in out[4]
    assert "kind must be one of" in out[5]
    assert "reg_mu" in out[6]
    assert "parameters but only 5 rows" in out[7]
    assert "shape (N, K)" in out[8]
    assert "fitted on 3 classes" in out[9]
    assert "scores[3, 0]" in out[10]


def test_many_classes_and_sparse_weights():
    """K above one chunk's 4096 rows of the curvature estimate (a chunk is ~4M / K rows), and weights that are
    zero on most rows: the fit runs (the preconditioner's sample is one chunk)."""
    rng = np.random.default_rng(8)
    n, K = 1500, 1500
    p = rng.dirichlet(np.ones(K), n)
    y = np.argmax(np.log(p) + rng.gumbel(size=(n, K)), axis=1)
    d = calibkit.DirichletCalibration("diagonal", max_iter=30)
    with pytest.warns(RuntimeWarning, match="stopped early"):
        d.fit(p, y)
    assert np.isfinite(d.coef_).all() and d.n_passes_ > 1
    w = np.zeros(n)
    w[::7] = 1.0
    f = calibkit.DirichletCalibration("fixed_diagonal").fit(p, y, sample_weight=w)
    g = calibkit.DirichletCalibration("fixed_diagonal").fit(p[::7], y[::7])
    assert f.coef_[0, 0] == pytest.approx(g.coef_[0, 0], rel=1e-6)
