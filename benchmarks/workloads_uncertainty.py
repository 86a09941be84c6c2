"""Uncertainty scores, the ensemble decomposition, OOD / selective-prediction metrics and the confidence loss
against NumPy/SciPy, PyTorch, scikit-learn and torchmetrics on the same arrays."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing


def _close(want, rtol=1e-9, atol=1e-12):
    def check(got):
        if isinstance(want, dict):
            for k, v in want.items():
                if not np.allclose(np.asarray(got[k], dtype=np.float64), v, rtol=rtol, atol=atol):
                    return f"{k} differs"
            return None
        return None if np.allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol) else "differs"
    return check


def _logits(n, k, seed=0):
    rng = np.random.default_rng(seed)
    z = np.empty((n, k), dtype=np.float32)
    step = 1 << 14
    for i in range(0, n, step):
        m = min(step, n - i)
        z[i:i + m] = rng.standard_normal((m, k), dtype=np.float32) * 3.0
    return {"logits": z}


def _scores_contenders(d):
    import calibkit
    from scipy.special import log_softmax, logsumexp

    z = d["logits"]
    kinds = ("max_probability", "margin", "entropy", "energy")
    want = calibkit.uncertainty.uncertainty_scores(z, kinds, from_logits=True)
    want_entropy = want["entropy"]
    out = []
    for backend in ("cpp", "numba"):
        out.append(Contender(f"calibkit entropy ({backend})",
                             lambda b=backend: calibkit.entropy(z, from_logits=True, backend=b),
                             _close(want_entropy)))
        out.append(Contender(f"calibkit 4 scores fused ({backend})",
                             lambda b=backend: calibkit.uncertainty.uncertainty_scores(z, kinds, from_logits=True,
                                                                                       backend=b),
                             _close(want)))

    def scipy_entropy():
        lp = log_softmax(z.astype(np.float64), axis=1)
        return -(np.exp(lp) * lp).sum(axis=1)

    # calibkit reads float32 rows with float32 exp (relative error < 1e-6): compare at that precision
    out.append(Contender("SciPy log_softmax + NumPy entropy (float64)", scipy_entropy,
                         _close(want_entropy, rtol=2e-6, atol=2e-7), repeat=3))

    def scipy_four():
        x = z.astype(np.float64)
        lse = logsumexp(x, axis=1)
        lp = x - lse[:, None]
        p = np.exp(lp)
        top = np.partition(p, -2, axis=1)[:, -2:]
        return {"max_probability": top[:, 1], "margin": top[:, 1] - top[:, 0], "entropy": -(p * lp).sum(axis=1),
                "energy": -lse}

    out.append(Contender("SciPy/NumPy 4 scores (float64)", scipy_four, _close(want, rtol=2e-6, atol=2e-7), repeat=3))
    try:
        import torch

        tz = torch.from_numpy(z)

        def torch_entropy():  # float32, as people run it
            with torch.no_grad():
                lp = torch.log_softmax(tz, dim=1)
                return -(lp.exp() * lp).sum(dim=1).numpy()

        out.append(Contender("PyTorch log_softmax entropy (float32)", torch_entropy,
                             _close(want_entropy, rtol=1e-4, atol=1e-4)))

        def torch_four():
            with torch.no_grad():
                lse = torch.logsumexp(tz, dim=1)
                lp = tz - lse[:, None]
                p = lp.exp()
                top = torch.topk(p, 2, dim=1).values
                return {"max_probability": top[:, 0].numpy(), "margin": (top[:, 0] - top[:, 1]).numpy(),
                        "entropy": (-(p * lp).sum(dim=1)).numpy(), "energy": (-lse).numpy()}

        out.append(Contender("PyTorch 4 scores (float32)", torch_four, _close(want, rtol=1e-4, atol=1e-4)))
    except ImportError as exc:
        out.append(missing("PyTorch", exc))
    return out


def _samples(S, n, k, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, k), dtype=np.float32) * 3.0
    x = np.empty((S, n, k), dtype=np.float32)
    for s in range(S):  # members = a shared signal plus dropout-like noise, as probabilities
        z = base + rng.standard_normal((n, k), dtype=np.float32)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        x[s] = z
    return {"samples": x}


def _decompose_contenders(d):
    import calibkit

    x = d["samples"]
    ref = calibkit.decompose(x)
    want = {"total": ref.total, "aleatoric": ref.aleatoric, "epistemic": ref.epistemic}

    def ours(backend):
        def run():
            r = calibkit.decompose(x, backend=backend)
            return {"total": r.total, "aleatoric": r.aleatoric, "epistemic": r.epistemic}
        return run

    out = [Contender("calibkit (cpp)", ours("cpp"), _close(want)),
           Contender("calibkit (numba)", ours("numba"), _close(want))]

    def numpy_recipe():  # the usual MC-dropout code: float64 stack, entropies with xlogy
        from scipy.special import xlogy

        p = x.astype(np.float64)
        mean = p.mean(axis=0)
        total = -xlogy(mean, mean).sum(axis=1)
        aleatoric = (-xlogy(p, p).sum(axis=2)).mean(axis=0)
        return {"total": total, "aleatoric": aleatoric, "epistemic": total - aleatoric}

    out.append(Contender("NumPy/SciPy xlogy (float64)", numpy_recipe, _close(want, rtol=2e-6, atol=2e-7), repeat=3))
    try:
        import torch

        tx = torch.from_numpy(x)

        def torch_recipe():
            with torch.no_grad():
                mean = tx.mean(dim=0)
                total = -torch.special.xlogy(mean, mean).sum(dim=1)
                aleatoric = (-torch.special.xlogy(tx, tx).sum(dim=2)).mean(dim=0)
                return {"total": total.numpy(), "aleatoric": aleatoric.numpy(),
                        "epistemic": (total - aleatoric).numpy()}

        out.append(Contender("PyTorch xlogy (float32)", torch_recipe, _close(want, rtol=1e-3, atol=1e-4)))
    except ImportError as exc:
        out.append(missing("PyTorch", exc))
    return out


def _ood_scores(n, seed=0):
    rng = np.random.default_rng(seed)
    s_in = rng.standard_normal(n // 2) + 1.0
    s_out = rng.standard_normal(n - n // 2)
    return {"in": s_in, "out": s_out, "y": np.r_[np.ones(s_in.size), np.zeros(s_out.size)],
            "s": np.r_[s_in, s_out]}


def _auroc_contenders(d):
    import calibkit

    s_in, s_out, y, s = d["in"], d["out"], d["y"], d["s"]
    want = calibkit.auroc(s_in, s_out)
    out = [Contender("calibkit auroc (cpp)", lambda: calibkit.auroc(s_in, s_out, backend="cpp"), _close(want),
                     repeat=3),
           Contender("calibkit auroc (numba)", lambda: calibkit.auroc(s_in, s_out, backend="numba"), _close(want),
                     repeat=3),
           Contender("calibkit all 5 OOD metrics (cpp)", lambda: calibkit.ood_metrics(s_in, s_out).auroc,
                     _close(want), repeat=3)]
    try:
        from sklearn.metrics import roc_auc_score

        out.append(Contender("sklearn roc_auc_score", lambda: roc_auc_score(y, s), _close(want), repeat=3))
    except ImportError as exc:
        out.append(missing("scikit-learn", exc))
    try:
        import torch
        from torchmetrics.functional.classification import binary_auroc

        ts, ty = torch.from_numpy(s), torch.from_numpy(y.astype(np.int64))
        out.append(Contender("torchmetrics binary_auroc (exact)", lambda: float(binary_auroc(ts, ty)),
                             _close(want, rtol=1e-6), repeat=3))
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    return out


def _selective(n, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    return {"conf": conf, "correct": rng.random(n) < conf}


def _aurc_contenders(d):
    import calibkit

    conf, correct = d["conf"], d["correct"]
    want = calibkit.aurc(conf, correct)

    def numpy_recipe():  # Geifman et al.'s code: argsort, cumulative risk, mean
        order = np.argsort(-conf, kind="stable")
        errors = np.cumsum(~correct[order])
        return float(np.mean(errors / np.arange(1, len(conf) + 1)))

    return [Contender("calibkit aurc (cpp)", lambda: calibkit.aurc(conf, correct, backend="cpp"), _close(want),
                      repeat=3),
            Contender("calibkit aurc (numba)", lambda: calibkit.aurc(conf, correct, backend="numba"), _close(want),
                      repeat=3),
            Contender("NumPy argsort + cumsum", numpy_recipe, _close(want), repeat=3)]


def _confidence_inputs(n_in, n_out, k, seed=0):
    rng = np.random.default_rng(seed)
    return {"zi": rng.standard_normal((n_in, k), dtype=np.float32) * 3,
            "zo": rng.standard_normal((n_out, k), dtype=np.float32) * 3,
            "y": rng.integers(0, k, n_in)}


def _confidence_contenders(d):
    import calibkit

    zi, zo, y = d["zi"], d["zo"], d["y"]
    ref = calibkit.confidence_loss(zi, y, zo)
    out = [Contender(f"calibkit value + gradients ({b})", lambda b=b: calibkit.confidence_loss(zi, y, zo, backend=b)
                     .grad_in, _close(ref.grad_in, rtol=1e-5, atol=1e-9)) for b in ("cpp", "numba")]
    try:
        import torch

        ty = torch.from_numpy(y)
        K = zi.shape[1]

        def torch_autograd():  # the training-loop formulation: forward + backward
            ti = torch.from_numpy(zi).requires_grad_()
            to = torch.from_numpy(zo).requires_grad_()
            nll = torch.nn.functional.cross_entropy(ti, ty)
            kl = (-np.log(K) - torch.log_softmax(to, dim=1).mean(dim=1)).mean()
            (nll + kl).backward()
            return ti.grad.numpy()

        out.append(Contender("PyTorch forward + backward (float32)", torch_autograd,
                             _close(ref.grad_in, rtol=1e-4, atol=1e-8)))
    except ImportError as exc:
        out.append(missing("PyTorch", exc))
    return out


# -- issue 16: OOD conventions, AUGRC, feature-space detectors -----------------------------------------------

def _import_peer(package, module):
    """``package.module`` of a peer whose top-level ``__init__`` imports torchvision (absent, or built for another
    torch): then the parent packages are registered empty and the module is imported from the installed source
    (the metric / detector modules themselves do not use torchvision; the same rule as tests/test_ood_selective)."""
    import importlib
    import importlib.util
    import pathlib
    import sys
    import types

    try:
        return importlib.import_module(f"{package}.{module}")
    except ImportError as exc:
        if "torchvision" not in str(exc) and "nms" not in str(exc):
            raise
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join([package, *parts[:i]])
        sys.modules.pop(name, None)
        stub = types.ModuleType(name)
        stub.__path__ = [str(root.joinpath(*parts[:i]))]
        sys.modules[name] = stub
    return importlib.import_module(f"{package}.{module}")


def _openood_contenders(d):
    import calibkit

    s_in, s_out = d["in"], d["out"]
    m = calibkit.ood_metrics(s_in, s_out, convention="openood")
    want = {"fpr": m.fpr_at_tpr, "auroc": m.auroc, "aupr_in": m.aupr_in, "aupr_out": m.aupr_out}

    def as_dict(r):
        return {"fpr": r.fpr_at_tpr, "auroc": r.auroc, "aupr_in": r.aupr_in, "aupr_out": r.aupr_out}

    out = [Contender(f"calibkit ood_metrics(convention='openood') ({b})",
                     lambda b=b: as_dict(calibkit.ood_metrics(s_in, s_out, convention="openood", backend=b)),
                     _close(want, rtol=1e-10)) for b in ("cpp", "numba")]
    try:
        from sklearn import metrics

        def openood_recipe():  # OpenOOD v1.5's formulas: OOD positive, scores negated, trapezoidal AUPR
            conf = np.r_[s_in, s_out]
            ood = np.r_[np.zeros(s_in.size), np.ones(s_out.size)]
            fpr, tpr, _ = metrics.roc_curve(ood, -conf)
            p_in, r_in, _ = metrics.precision_recall_curve(1 - ood, conf)
            p_out, r_out, _ = metrics.precision_recall_curve(ood, -conf)
            return {"fpr": fpr[np.argmax(tpr >= 0.95)], "auroc": metrics.auc(fpr, tpr),
                    "aupr_in": metrics.auc(r_in, p_in), "aupr_out": metrics.auc(r_out, p_out)}

        out.append(Contender("scikit-learn roc_curve + 2 precision_recall_curve + auc (OpenOOD's recipe)",
                             openood_recipe, _close(want, rtol=1e-10), repeat=3))
    except ImportError as exc:
        out.append(missing("scikit-learn", exc))
    return out


def _augrc_contenders(d):
    import calibkit

    conf, correct = d["conf"], d["correct"]
    want = calibkit.augrc(conf, correct, rule="trapezoid")
    out = [Contender(f"calibkit augrc(rule='trapezoid') ({b})",
                     lambda b=b: calibkit.augrc(conf, correct, rule="trapezoid", backend=b), _close(want),
                     repeat=3) for b in ("cpp", "numba")]
    try:
        import torch

        risk_coverage = _import_peer("torch_uncertainty", "metrics.classification.risk_coverage")
        c = torch.from_numpy(0.5 + conf / 2)  # binary probabilities (1 - c, c) whose top class is c
        probs = torch.stack([1 - c, c], dim=-1)
        targets = torch.from_numpy(np.where(correct, 1, 0))

        def tu_augrc():
            metric = risk_coverage.AUGRC()
            metric.update(probs, targets)
            return float(metric.compute().reshape(-1)[0])

        # torch-uncertainty integrates over a float32 coverage grid
        out.append(Contender("torch-uncertainty AUGRC", tu_augrc, _close(want, rtol=2e-6), repeat=3))
    except ImportError as exc:
        out.append(missing("torch-uncertainty", exc))
    return out


def _features(n, dim, k, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)
    centers = rng.standard_normal((k, dim)).astype(np.float32) * 2
    f = centers[labels] + rng.standard_normal((n, dim), dtype=np.float32)
    return {"features": f, "labels": labels, "W": rng.standard_normal((k, dim)) / np.sqrt(dim),
            "b": rng.standard_normal(k) * 0.1}


def _feature_detector_contenders(d):
    import calibkit

    f, labels, W, b = d["features"], d["labels"], d["W"], d["b"]
    n, dim = f.shape
    n_principal = dim // 2
    maha = calibkit.Mahalanobis().fit(f, labels).score(f)
    vim = calibkit.ViM(W, b, n_principal=n_principal).fit(f).score(f)
    out = [Contender("calibkit Mahalanobis fit + score", lambda: calibkit.Mahalanobis().fit(f, labels).score(f),
                     _close(maha), repeat=3),
           Contender("calibkit ViM fit + score",
                     lambda: calibkit.ViM(W, b, n_principal=n_principal).fit(f).score(f), _close(vim), repeat=3)]
    try:
        import torch

        tm = _import_peer("pytorch_ood", "detector.mahalanobis")
        tv = _import_peer("pytorch_ood", "detector.vim")
        tf, ty = torch.from_numpy(f), torch.from_numpy(labels)

        def pood_maha():  # outlier score = -ours / (2 N) (it inverts the scatter matrix, in float32)
            return tm.Mahalanobis(None).fit_features(tf, ty).predict_features(tf).double().numpy()

        def pood_vim():  # outlier score = -ours (float32)
            det = tv.ViM(None, d=n_principal, w=torch.from_numpy(W), b=torch.from_numpy(b))
            return det.fit_features(tf, ty).predict_features(tf).double().numpy()

        out.append(Contender("pytorch-ood Mahalanobis fit_features + predict_features (float32)", pood_maha,
                             _close(-maha / (2 * n), rtol=5e-3, atol=1e-5), repeat=1, time_if_wrong=True))
        out.append(Contender("pytorch-ood ViM fit_features + predict_features (float32)", pood_vim,
                             _close(-vim, rtol=5e-3, atol=5e-3), repeat=3, time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("pytorch-ood", exc))
    return out


def workloads(quick: bool = False) -> list[Workload]:
    n, k = (2_000, 1000) if quick else (200_000, 1000)
    S, ns, ks = (10, 2_000, 100) if quick else (20, 100_000, 100)
    n_auc = 100_000 if quick else 10_000_000
    n_conf = 1024 if quick else 8192
    return [
        Workload("uncertainty", f"per-sample scores, N={n:,} x K={k} float32 logits", lambda: _logits(n, k),
                 _scores_contenders, lambda d: (lambda: np.add.reduce(d["logits"], axis=None))),
        Workload("uncertainty", f"decompose, S={S} x N={ns:,} x K={ks} float32 probabilities",
                 lambda: _samples(S, ns, ks), _decompose_contenders,
                 lambda d: (lambda: np.add.reduce(d["samples"], axis=None))),
        Workload("uncertainty", f"exact AUROC, {n_auc:,} float64 scores (half in, half out)",
                 lambda: _ood_scores(n_auc), _auroc_contenders,
                 lambda d: (lambda: (np.add.reduce(d["in"]), np.add.reduce(d["out"])))),
        Workload("uncertainty", f"AURC, {n_auc:,} float64 confidences", lambda: _selective(n_auc), _aurc_contenders,
                 lambda d: (lambda: np.add.reduce(d["conf"]))),
        Workload("uncertainty", f"confidence loss + gradients, {n_conf} in + {n_conf} out rows x K=1000 float32",
                 lambda: _confidence_inputs(n_conf, n_conf, 1000), _confidence_contenders,
                 lambda d: (lambda: (np.add.reduce(d["zi"], axis=None), np.add.reduce(d["zo"], axis=None)))),
    ] + _issue16_ood_workloads(quick)


def _issue16_ood_workloads(quick):
    n_ood = 100_000 if quick else 2_000_000
    # pytorch-ood's Mahalanobis scores class by class (K products of N x D by D x D): 50k x 256 with K = 100 is
    # about the largest it does in a minute here
    nf, df, kf = (2_000, 64, 10) if quick else (50_000, 256, 100)
    return [
        Workload("uncertainty", f"OpenOOD metrics, {n_ood:,} float64 scores (half in, half out)",
                 lambda: _ood_scores(n_ood), _openood_contenders,
                 lambda d: (lambda: (np.add.reduce(d["in"]), np.add.reduce(d["out"])))),
        Workload("uncertainty", f"AUGRC (trapezoid), {n_ood:,} float64 confidences", lambda: _selective(n_ood),
                 _augrc_contenders, lambda d: (lambda: np.add.reduce(d["conf"]))),
        Workload("uncertainty", f"Mahalanobis / ViM fit + score, N={nf:,} x D={df} float32 features, K={kf}",
                 lambda: _features(nf, df, kf), _feature_detector_contenders,
                 lambda d: (lambda: np.add.reduce(d["features"], axis=None))),
    ]
