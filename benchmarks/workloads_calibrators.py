"""Calibrator fits: temperature scaling against the recipes people copy, isotonic regression against
scikit-learn and SciPy, on the same arrays."""

from __future__ import annotations

import contextlib
import io

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
        return lambda got: None if abs(got - want) <= rel * want else f"T = {float(got)!r}, optimum {float(want)!r}"

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

        def torch_recipe(tz, ty):  # the widely copied temperature_scaling.py (Guo et al.'s code)
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

        # torch's first optimizer step loads and initialises its autograd and optimizer machinery (1-4 s here):
        # done once on a tiny problem, so the checked first call (which times a slow peer) is a plain one
        torch_recipe(torch.zeros((2, 2)), torch.zeros(2, dtype=torch.int64))
        tz, ty = torch.from_numpy(z), torch.from_numpy(y)
        out.append(Contender("PyTorch LBFGS recipe (lr=0.01, 50 it)", lambda: torch_recipe(tz, ty), close(1e-3),
                             repeat=1, time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("PyTorch", exc))
    try:
        from netcal.scaling import TemperatureScaling as NetcalTemperature
        from scipy.special import softmax

        def netcal_fit():  # netcal takes probabilities; its `temperature` is the inverse 1/T
            m = NetcalTemperature()
            with contextlib.redirect_stdout(io.StringIO()):  # its warning when a class has no row (--quick)
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



# -- issue 16, section 1: beta, ensemble temperature scaling, top-label binning, multiclass Platt ----------------

def _make_beta(n, seed=2):
    rng = np.random.default_rng(seed)
    s = rng.beta(0.7, 1.3, size=n)
    y = (rng.random(n) < s ** 2.5 / (s ** 2.5 + 0.6 * (1 - s) ** 1.5)).astype(np.int64)
    return {"scores": s, "labels": y}


def _beta_contenders(d):
    import calibkit

    s, y = d["scores"], d["labels"]
    ref = calibkit.BetaCalibration().fit(s, y).predict_proba(s)[:, 1]

    def close(got):
        return None if np.allclose(got, ref, rtol=0, atol=1e-6) else f"max difference {np.abs(got - ref).max():.3g}"

    out = [Contender("calibkit BetaCalibration (abm)",
                     lambda: calibkit.BetaCalibration().fit(s, y).predict_proba(s)[:, 1], close, repeat=3)]
    try:
        import warnings

        from betacal import BetaCalibration as Betacal

        def betacal_run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Betacal("abm").fit(s, y).predict(s)

        out.append(Contender("betacal BetaCalibration (abm)", betacal_run, close, repeat=1, time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("betacal", exc))
    return out


def _ets_reference_fit(z, y, rows=4096):
    """ETS by the recipe: T by an independent float64 Newton fit, then the NLL-optimal simplex weights by
    SciPy's SLSQP on the per-row label probabilities (one float64 pass in row blocks for them)."""
    from scipy.optimize import minimize

    t = reference_temperature(z, y)
    n, k = z.shape
    a, b = np.empty(n), np.empty(n)
    for i in range(0, n, rows):
        x = z[i:i + rows].astype(np.float64)
        x -= x.max(axis=1, keepdims=True)
        idx = np.arange(len(x))
        for out, v in ((a, x / t), (b, x)):
            lse = np.log(np.exp(v).sum(axis=1))
            out[i:i + rows] = np.exp(v[idx, y[i:i + rows]] - lse)

    def nll(u):
        return -float(np.mean(np.log(u[0] * a + u[1] * b + u[2] / k)))

    r = minimize(nll, [1 / 3, 1 / 3, 1 / 3], method="SLSQP", bounds=[(0, 1)] * 3,
                 constraints=[{"type": "eq", "fun": lambda u: u.sum() - 1}], options={"ftol": 1e-15})
    return t, r.x, nll


def _ets_contenders(d):
    import calibkit

    z, y = d["logits"], d["labels"]
    _, ref_w, nll = d["ets_reference"]
    best = nll(ref_w)

    def check(got):
        return None if nll(got) <= best + 1e-9 else f"NLL {nll(got)!r} above the SLSQP fit's {best!r}"

    out = [Contender(f"calibkit EnsembleTemperatureScaling ({b})",
                     lambda b=b: calibkit.EnsembleTemperatureScaling(backend=b).fit(z, y).weights_, check, repeat=3)
           for b in ("cpp", "numba")]
    out.append(Contender("NumPy Newton T + scipy SLSQP weights", lambda: _ets_reference_fit(z, y)[1], check,
                         repeat=1))
    return out


def _ets_setup(n, k):
    d = _make_logits(n, k, seed=3)
    d["ets_reference"] = _ets_reference_fit(d["logits"], d["labels"])
    return d


def _toplabel_numpy(p_fit, y_fit, p_new, n_bins=15, min_bin_size=10):
    """Top-label histogram binning in NumPy (Gupta & Ramdas' recipe): per predicted class, equal-mass bins of
    the confidence, each bin's accuracy; returns the calibrated top-label confidence of p_new's rows."""
    pred, conf = p_fit.argmax(axis=1), p_fit.max(axis=1)
    pred_new, out = p_new.argmax(axis=1), p_new.max(axis=1).astype(np.float64)
    for c in range(p_fit.shape[1]):
        mask = pred == c
        b = min(n_bins, int(mask.sum()) // min_bin_size)
        if b == 0:
            continue
        g = np.sort(conf[mask])
        edges = np.unique([grp[-1] for grp in np.array_split(g, b)[:-1]])
        edges = edges[edges < g[-1]]
        j = np.searchsorted(edges, conf[mask], side="left")
        values = np.bincount(j, weights=(y_fit[mask] == c), minlength=len(edges) + 1) / np.bincount(
            j, minlength=len(edges) + 1)
        sel = pred_new == c
        out[sel] = values[np.searchsorted(edges, out[sel], side="left")]
    return out


def _toplabel_contenders(d):
    """Fit + apply from float32 logits: calibkit (softmax by the backend's kernel) against SciPy's softmax and the
    NumPy recipe."""
    import calibkit

    z, y = d["logits"], d["labels"]

    def numpy_recipe():
        from scipy.special import softmax

        p = softmax(z.astype(np.float64), axis=1)
        return _toplabel_numpy(p, y, p)

    ref = numpy_recipe()
    # A class predicted on fewer than min_bin_size = 10 rows keeps its confidence: the softmax of the float32
    # logits, which calibkit computes with a float32 exp, documented (softmax_row in cpp/include/calibkit/pav.hpp,
    # _softmax64 in calibrators/nonparametric.py) within 3e-7 + 1.2e-7 |z_k - max| of NumPy's float64 softmax,
    # relatively. Taken at the row's largest gap it bounds the error of every term of the row's sum, so of the
    # confidence 1 / sum. Every other row gets its bin's accuracy (a ratio of counts): checked to 1e-12.
    pred = z.argmax(axis=1)
    kept = np.bincount(pred, minlength=z.shape[1])[pred] < 10
    gap = z.max(axis=1).astype(np.float64) - z.min(axis=1)
    tol = np.where(kept, (3e-7 + 1.2e-7 * gap) * ref, 1e-12)

    def close(got):
        err = np.abs(got - ref)
        return None if (err <= tol).all() else \
            f"max difference {err.max():.3g} ({(err / tol).max():.3g}x the allowed)"

    def ours(b):
        tl = calibkit.TopLabelHistogramBinning(from_logits=True, backend=b)
        return lambda: tl.fit(z, y).predict_top_label(z)[1]

    out = [Contender(f"calibkit TopLabelHistogramBinning ({b})", ours(b), close, repeat=3) for b in ("cpp", "numba")]
    out.append(Contender("scipy softmax + NumPy top-label binning", numpy_recipe, close, repeat=1))
    return out


def _platt_ovr_contenders(d):
    import calibkit

    f, y = d["logits"], d["labels"]
    n, k = f.shape
    f64 = f.astype(np.float64)

    def sklearn_sigmoid():
        from sklearn.calibration import _SigmoidCalibration

        q = np.column_stack([_SigmoidCalibration().fit(f64[:, c], (y == c).astype(int)).predict(f64[:, c])
                             for c in range(k)])
        return q / q.sum(axis=1, keepdims=True)

    ref = calibkit.PlattScaling().fit(f, y).predict_proba(f)

    def close(got):
        return None if np.allclose(got, ref, rtol=0, atol=1e-5) else f"max difference {np.abs(got - ref).max():.3g}"

    out = [Contender("calibkit PlattScaling one-vs-rest", lambda: calibkit.PlattScaling().fit(f, y).predict_proba(f),
                     close, repeat=3)]
    try:
        import sklearn  # noqa: F401

        out.append(Contender("sklearn _SigmoidCalibration per class", sklearn_sigmoid, close, repeat=1))
    except ImportError as exc:
        out.append(missing("scikit-learn", exc))
    return out


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
    # issue 16, section 1: the new calibrators against their references
    n_beta = 20_000 if quick else 1_000_000
    out.append(Workload("calibrators", f"beta calibration (abm) fit + apply, n={n_beta:,} float64 binary scores",
                        lambda: _make_beta(n_beta), _beta_contenders,
                        lambda d: (lambda: np.add.reduce(d["scores"])),
                        notes="probabilities checked against calibkit's to 1e-6"))
    out.append(Workload("calibrators", f"ensemble temperature scaling fit, N={n:,} x K={k} float32 logits",
                        lambda: _ets_setup(n, k), _ets_contenders,
                        lambda d: (lambda: np.add.reduce(d["logits"], axis=None)),
                        notes="weights checked: NLL at most the SLSQP fit's + 1e-9"))
    # quick: about 10 rows per predicted class, so some classes get bins and some keep their confidence
    n_tl, k_tl = (1_000, 100) if quick else (n, k)
    out.append(Workload("calibrators", f"top-label histogram binning fit + apply, N={n_tl:,} x K={k_tl} float32 "
                        "logits", lambda: _make_logits(n_tl, k_tl, seed=5), _toplabel_contenders,
                        lambda d: (lambda: np.add.reduce(d["logits"], axis=None)),
                        notes="top-label confidences checked against the NumPy recipe's: bin values to 1e-12, kept "
                              "confidences to the documented float32 softmax accuracy"))
    n_pl, k_pl = (2_000, 10) if quick else (200_000, 20)
    out.append(Workload("calibrators", f"Platt one-vs-rest fit + apply, {n_pl:,} x {k_pl} float32 decision scores",
                        lambda: _make_logits(n_pl, k_pl, seed=4), _platt_ovr_contenders,
                        lambda d: (lambda: np.add.reduce(d["logits"], axis=None)),
                        notes="probabilities checked against scikit-learn's to 1e-5"))
    return out
