"""Dirichlet calibration fits against the recipe a user writes without calibkit: SciPy's L-BFGS-B on a NumPy
objective of the whole matrix (the authors' ``dirichletcal`` cannot be installed: its only PyPI release has
malformed requirements, and its code needs removed jax / SciPy functions)."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload


def _make(n, k, seed=0):
    """float32 over-confident probabilities (softmax of 3 z) and labels drawn from softmax(z)."""
    rng = np.random.default_rng(seed)
    probs = np.empty((n, k), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    step = 1 << 14
    for i in range(0, n, step):
        m = min(step, n - i)
        z = rng.standard_normal((m, k)) * 2.0
        labels[i:i + m] = np.argmax(z + rng.gumbel(size=(m, k)), axis=1)
        e = np.exp(3.0 * (z - z.max(axis=1, keepdims=True)))
        probs[i:i + m] = e / e.sum(axis=1, keepdims=True)
    return {"probs": probs, "labels": labels}


def _scipy_recipe(p, y, kind):
    """The mean NLL of softmax(W ln p + c) over the whole (N, K) matrix with its gradient, L-BFGS-B."""
    from scipy.optimize import minimize

    n, k = p.shape
    x = np.log(np.clip(p.astype(np.float64), np.finfo(np.float64).tiny, 1.0))
    rows = np.arange(n)

    def fun(t):
        if kind == "diagonal":
            s = x * t[:k] + t[k:]
        else:
            s = x @ t[: k * k].reshape(k, k).T + t[k * k:]
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        tot = e.sum(axis=1)
        loss = float(np.mean(np.log(tot) - s[rows, y]))
        g = e / tot[:, None]
        g[rows, y] -= 1.0
        g /= n
        if kind == "diagonal":
            return loss, np.concatenate([(g * x).sum(axis=0), g.sum(axis=0)])
        return loss, np.concatenate([(g.T @ x).ravel(), g.sum(axis=0)])

    t0 = np.concatenate([np.ones(k), np.zeros(k)]) if kind == "diagonal" else \
        np.concatenate([np.eye(k).ravel(), np.zeros(k)])
    return float(minimize(fun, t0, jac=True, method="L-BFGS-B", options={"maxiter": 1000, "gtol": 1e-8}).fun)


def _contenders(kind):
    def build(d):
        import calibkit

        p, y = d["probs"], d["labels"]
        want = {}

        def ours(backend):
            def run():  # the fit, then the mean NLL of its probabilities (the unregularised objective)
                dc = calibkit.DirichletCalibration(kind, backend=backend).fit(p, y)
                f = float(calibkit.nll(dc.predict_proba(p), y))
                want.setdefault("nll", f)
                return f
            return run

        def close(got):
            ref = want.get("nll")
            return None if ref is None or abs(got - ref) <= 1e-6 * abs(ref) else f"NLL {got!r}, calibkit {ref!r}"

        out = [Contender("calibkit (cpp)", ours("cpp"), close, repeat=3)]
        if kind == "diagonal":
            out.append(Contender("calibkit (numba)", ours("numba"), close, repeat=3))
        out.append(Contender("scipy L-BFGS-B + NumPy (whole matrix)", lambda: _scipy_recipe(p, y, kind), close,
                             repeat=1, time_if_wrong=True))
        return out
    return build


def workloads(quick: bool = False) -> list[Workload]:
    sizes = {"diagonal": (2_000, 20) if quick else (200_000, 100), "full": (2_000, 10) if quick else (50_000, 100)}
    return [Workload("dirichlet", f"Dirichlet calibration ({kind}) fit, {n:,} x {k} float32 probabilities",
                     lambda n=n, k=k: _make(n, k), _contenders(kind),
                     lambda d: (lambda: np.add.reduce(d["probs"], axis=None)),
                     notes="the NLL at the optimum checked against calibkit's to 1e-6 relative")
            for kind, (n, k) in sizes.items()]
