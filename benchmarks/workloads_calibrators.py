"""Calibrator fits: temperature scaling against the recipes people copy, isotonic regression against
scikit-learn and SciPy, on the same arrays."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing, ratio_to_floor

TRUE_T = 2.0


def _make_logits(n, k, seed=0):
    """float32 logits and labels drawn from softmax(z / TRUE_T) (Gumbel-max, in chunks)."""
    rng = np.random.default_rng(seed)
    logits = np.empty((n, k), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    step = 1 << 14
    for i in range(0, n, step):
        m = min(step, n - i)
        z = rng.standard_normal((m, k), dtype=np.float32) * 3.0
        logits[i:i + m] = z
        labels[i:i + m] = np.argmax(z / TRUE_T + rng.gumbel(size=(m, k)).astype(np.float32), axis=1)
    return {"logits": logits, "labels": labels}


def reference_temperature(z, y, t0=1.0, rows=4096, tol=1e-13, max_iter=50):
    """The NLL-optimal temperature in float64, independently of calibkit: Newton on b = 1/T, where the NLL
    mean(logsumexp(b z) - b z_y) is convex, with its exact derivatives (mean of E_p[z] - z_y and of Var_p[z]),
    a step halved while it does not lower the NLL. Each iteration is one float64 pass over z in row blocks."""
    n = len(y)

    def derivatives(b):
        f = g = h = 0.0
        for a in range(0, n, rows):
            x = z[a:a + rows].astype(np.float64)
            zy = x[np.arange(len(x)), y[a:a + rows]]
            s = b * x
            m = s.max(axis=1, keepdims=True)
            e = np.exp(s - m)
            tot = e.sum(axis=1)
            mean = (e * x).sum(axis=1) / tot
            f += (np.log(tot) + m[:, 0] - b * zy).sum()
            g += (mean - zy).sum()
            h += ((e * x * x).sum(axis=1) / tot - mean * mean).sum()
        return f / n, g / n, h / n

    b = 1.0 / t0
    f, g, h = derivatives(b)
    for _ in range(max_iter):
        step = g / h
        while True:
            f_new, g_new, h_new = derivatives(b - step)
            if f_new <= f or abs(step) <= tol * b:
                break
            step /= 2
        b -= step
        f, g, h = f_new, g_new, h_new
        if abs(step) <= tol * b:
            break
    return 1.0 / b


def _temperature_contenders(d):
    import calibkit

    z, y = d["logits"], d["labels"]
    want = d["reference_t"]

    def close(rel):
        return lambda got: None if abs(got - want) <= rel * want else f"T = {got!r}, optimum {want!r}"

    passes = {}

    def ours(backend):
        def run():
            ts = calibkit.TemperatureScaling(backend=backend).fit(z, y)
            passes[backend] = ts.n_passes_
            return ts.temperature_
        return run

    # the goal of issue 13: the same optimum, within 1e-6 relative in T of an independent float64 fit
    out = [Contender("calibkit (cpp)", ours("cpp"), close(1e-6), repeat=3),
           Contender("calibkit (numba)", ours("numba"), close(1e-6), repeat=3)]

    from scipy.optimize import minimize
    from scipy.special import log_softmax

    def scipy_recipe():  # the blog recipe: minimize over a NumPy log-softmax NLL, numerical gradient
        rows = np.arange(len(y))

        def nll(t):
            return -log_softmax(z / t[0], axis=1)[rows, y].mean()

        return float(minimize(nll, x0=[1.0], method="L-BFGS-B", bounds=[(0.05, 20.0)]).x[0])

    out.append(Contender("scipy.optimize.minimize + NumPy", scipy_recipe, close(1e-3), repeat=1,
                             time_if_wrong=True))
    try:
        import torch

        tz, ty = torch.from_numpy(z), torch.from_numpy(y)

        def torch_recipe():  # the widely copied temperature_scaling.py (Guo et al.'s code)
            temperature = torch.nn.Parameter(torch.ones(1) * 1.5)
            criterion = torch.nn.CrossEntropyLoss()
            optimizer = torch.optim.LBFGS([temperature], lr=0.01, max_iter=50)

            def closure():
                optimizer.zero_grad()
                loss = criterion(tz / temperature, ty)
                loss.backward()
                return loss

            optimizer.step(closure)
            return float(temperature.item())

        out.append(Contender("PyTorch LBFGS recipe (lr=0.01, 50 it)", torch_recipe, close(1e-3), repeat=1,
                             time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("PyTorch", exc))
    try:
        from netcal.scaling import TemperatureScaling as NetcalTemperature
        from scipy.special import softmax

        def netcal_fit():  # netcal takes probabilities; its `temperature` is the inverse 1/T
            m = NetcalTemperature()
            m.fit(softmax(z, axis=1), y, tensorboard=False)
            return 1.0 / float(np.asarray(m.temperature).ravel()[0])

        out.append(Contender("netcal (+ scipy softmax)", netcal_fit, close(1e-3), repeat=1,
                             time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("netcal", exc))
    return out


def _make_isotonic(n, seed=0):
    from scipy.optimize import isotonic_regression

    rng = np.random.default_rng(seed)
    x = rng.random(n)
    y = (rng.random(n) < x).astype(np.float64)
    order = np.argsort(x, kind="stable")
    ref = np.empty(n)
    ref[order] = isotonic_regression(y[order]).x
    return {"x": x, "y": y, "ref": ref, "sample": rng.integers(0, n, 1000)}


def _isotonic_contenders(d):
    import calibkit

    x, y, ref, sample = d["x"], d["y"], d["ref"], d["sample"]

    def same_fitted(got):
        return None if np.allclose(got, ref, rtol=1e-12, atol=1e-12) else "fitted values differ"

    out = [
        Contender("calibkit (cpp)", lambda: calibkit.isotonic_regression(y, x=x, backend="cpp").fitted,
                  same_fitted, repeat=3),
        Contender("calibkit (numba)", lambda: calibkit.isotonic_regression(y, x=x, backend="numba").fitted,
                  same_fitted, repeat=3),
    ]
    from scipy.optimize import isotonic_regression

    def argsort_scipy():
        order = np.argsort(x)
        fitted = np.empty_like(y)
        fitted[order] = isotonic_regression(y[order]).x
        return fitted

    out.append(Contender("np.argsort + scipy isotonic_regression", argsort_scipy, same_fitted, repeat=3))
    try:
        from sklearn.isotonic import IsotonicRegression

        def sklearn_check(model):
            return None if np.allclose(model.predict(x[sample]), ref[sample], rtol=1e-12, atol=1e-12) \
                else "predictions differ"

        out.append(Contender("sklearn IsotonicRegression.fit", lambda: IsotonicRegression().fit(x, y),
                             sklearn_check, repeat=3))
    except ImportError as exc:
        out.append(missing("scikit-learn", exc))
    return out


def _make_ovr(n, k, seed=1):
    """float32 probabilities (softmax of _make_logits' logits) and labels, for the one-vs-rest calibrators."""
    d = _make_logits(n, k, seed)
    z = d["logits"]
    p = np.empty_like(z)
    for i in range(0, n, 1 << 14):
        e = np.exp(z[i:i + (1 << 14)] - z[i:i + (1 << 14)].max(axis=1, keepdims=True))
        p[i:i + (1 << 14)] = e / e.sum(axis=1, keepdims=True)
    return {"probs": p, "labels": d["labels"]}


def _renormalise(q):
    """Rows divided by their sum; an all-zero row becomes uniform (calibkit's and scikit-learn's rule)."""
    s = q.sum(axis=1, keepdims=True)
    zero = s[:, 0] == 0
    q[zero] = 1.0 / q.shape[1]
    s[zero] = 1.0
    return q / s


def _ovr_contenders(d):
    """One-vs-rest isotonic and histogram calibration, fit + apply on the same rows: calibkit (the K fits in
    one kernel call, the K maps applied from StepTables with the rows renormalised as written) against a
    loop of scikit-learn IsotonicRegression per class and a NumPy histogram binning per class."""
    import calibkit

    p, y = d["probs"], d["labels"]
    n, k = p.shape

    def sklearn_isotonic():
        from sklearn.isotonic import IsotonicRegression

        q = np.empty(p.shape)
        for c in range(k):
            col = p[:, c].astype(np.float64)
            q[:, c] = IsotonicRegression(out_of_bounds="clip").fit(col, y == c).predict(col)
        return _renormalise(q)

    def numpy_histogram(edges):
        q = np.empty(p.shape)
        m = len(edges) - 1
        for c in range(k):
            col = p[:, c].astype(np.float64)
            b = np.clip(np.searchsorted(edges, col, side="left") - 1, 0, m - 1)
            count = np.bincount(b, minlength=m)
            pos = np.bincount(b, weights=(y == c).astype(np.float64), minlength=m)
            value = np.where(count > 0, pos / np.maximum(count, 1), (edges[:-1] + edges[1:]) / 2)
            q[:, c] = value[b]
        return _renormalise(q)

    iso_ref = sklearn_isotonic()
    hist_ref = numpy_histogram(calibkit.HistogramBinning().fit(p[:100], y[:100]).bin_edges_[0])

    def close(ref):
        return lambda got: None if np.allclose(got, ref, rtol=1e-9, atol=1e-12) else \
            f"max difference {np.abs(got - ref).max():.3g}"

    out = []
    for backend in ("cpp", "numba"):
        out.append(Contender(f"calibkit isotonic ({backend})",
                             lambda b=backend: calibkit.IsotonicCalibration(backend=b).fit(p, y).predict_proba(p),
                             close(iso_ref), repeat=3))
    for backend in ("cpp", "numba"):
        out.append(Contender(f"calibkit histogram ({backend})",
                             lambda b=backend: calibkit.HistogramBinning(backend=b).fit(p, y).predict_proba(p),
                             close(hist_ref), repeat=3))
    out.append(Contender("sklearn IsotonicRegression per class", sklearn_isotonic, close(iso_ref), repeat=1))
    out.append(Contender("NumPy histogram binning per class",
                         lambda: numpy_histogram(np.linspace(0.0, 1.0, 16)), close(hist_ref), repeat=1))
    return out


def _temperature_setup(n, k):
    d = _make_logits(n, k)
    d["reference_t"] = reference_temperature(d["logits"], d["labels"])
    return d


def workloads(quick: bool = False) -> list[Workload]:
    n, k = (300, 1000) if quick else (200_000, 1000)
    iso = [100_000] if quick else [1_000_000, 10_000_000]
    out = [Workload("calibrators", f"temperature fit, N={n:,} x K={k} float32 logits (true T={TRUE_T})",
                    lambda: _temperature_setup(n, k), _temperature_contenders,
                    lambda d: (lambda: np.add.reduce(d["logits"], axis=None)),
                    notes="T checked against an independent float64 Newton fit, 1e-6 relative",
                    goals=[ratio_to_floor("calibkit (cpp)", "TemperatureScaling().fit 200k x 1000 logits", 4.0,
                                          "10-12x")])]
    n_ovr, k_ovr = (2_000, 20) if quick else (200_000, 100)
    out.append(Workload("calibrators", f"one-vs-rest isotonic / histogram fit + apply, {n_ovr:,} x {k_ovr} float32 "
                        "probabilities", lambda: _make_ovr(n_ovr, k_ovr), _ovr_contenders,
                        lambda d: (lambda: np.add.reduce(d["probs"], axis=None)),
                        notes="probabilities checked against the peers' to 1e-9"))
    for m in iso:
        out.append(Workload("calibrators", f"isotonic fit, n={m:,} float64 (x, y)", lambda m=m: _make_isotonic(m),
                            _isotonic_contenders,
                            lambda d: (lambda: (np.add.reduce(d["x"]), np.add.reduce(d["y"])))))
    return out
