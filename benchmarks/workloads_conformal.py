"""Conformal prediction (APS / RAPS): the calibration scores of the labels and the prediction sets, calibkit
against torchcp on the same float32 logits.

torchcp sorts every row in full and keeps several N x K tensors (the sorted values, their int64 indices, the
cumulative sums, the all-class scores): at 200k x 1000 that is over 5 GB, so torchcp runs on the 20k x 1000
workload (seconds) and the 200k x 1000 one is calibkit's alone.
"""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing

PARAMS = dict(penalty=0.01, kreg=5, weight=0.2)


def _data(n, k, seed=0):
    """Logits of a calibrated model: each label drawn from the softmax of its row (the exchangeable setting
    conformal prediction assumes)."""
    rng = np.random.default_rng(seed)
    z = np.empty((n, k), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    step = 1 << 14
    for i in range(0, n, step):
        m = min(step, n - i)
        z[i:i + m] = rng.standard_normal((m, k), dtype=np.float32) * 3.0
        p = np.exp(z[i:i + m] - z[i:i + m].max(axis=1, keepdims=True), dtype=np.float64)
        c = np.cumsum(p, axis=1)
        y[i:i + m] = np.minimum((rng.random((m, 1)) * c[:, -1:] > c).sum(axis=1), k - 1)
    return {"logits": z, "labels": y}


def _calibkit(score, backend, z, y):
    import calibkit

    cp = calibkit.ConformalClassifier(score=score, alpha=0.1, backend=backend, **PARAMS)
    cp.fit(z, y, from_logits=True)
    return cp.threshold_, cp.predict_sets(z, from_logits=True)


def _agrees(want, max_fraction=1e-3, q_tol=1e-5):
    """The same threshold (to the float32 softmax's rounding) and sets differing in at most max_fraction of the
    cells (the cells whose score is within that rounding of the threshold)."""
    q0, s0 = want

    def check(got):
        q, s = got
        if abs(float(q) - q0) > q_tol:
            return f"threshold {float(q):.9g} vs {q0:.9g}"
        s = np.asarray(s, dtype=bool)
        frac = float(np.mean(s != s0))
        return None if frac <= max_fraction else f"{frac:.2e} of the set cells differ"
    return check


def _torchcp():
    """torchcp's APS, RAPS and calculate_conformal_value. ``import torchcp`` imports every subpackage (graph,
    llm, losses: torch_geometric, transformers, torchsort); unless it is already imported, its parent packages
    are registered empty (their ``__init__`` not run) and only the modules needed here are loaded, unchanged."""
    import importlib
    import importlib.util
    import pathlib
    import sys
    import types

    if "torchcp" not in sys.modules:
        spec = importlib.util.find_spec("torchcp")
        if spec is None:
            raise ImportError("No module named 'torchcp'")
        root = pathlib.Path(spec.origin).parent
        for sub in ("", "classification", "classification/score", "utils"):
            name = "torchcp" + ("." + sub.replace("/", ".") if sub else "")
            if name not in sys.modules:
                package = types.ModuleType(name)
                package.__path__ = [str(root / sub)]
                sys.modules[name] = package
    return (importlib.import_module("torchcp.classification.score.aps").APS,
            importlib.import_module("torchcp.classification.score.raps").RAPS,
            importlib.import_module("torchcp.utils.common").calculate_conformal_value)


def _contenders(score, with_torchcp):
    def make(d):
        z, y = d["logits"], d["labels"]
        want = _calibkit(score, "cpp", z, y)
        out = [Contender(f"calibkit {score.upper()} fit + sets ({b})", lambda b=b: _calibkit(score, b, z, y),
                         _agrees(want, 0.0, 0.0 if b == "cpp" else 1e-12)) for b in ("cpp", "numba")]
        if not with_torchcp:
            out.append(Contender("torchcp", None, skip_reason="needs > 5 GB at this size (full sorts, N x K int64 "
                                                              "indices); see the 20k x 1000 workload"))
            return out
        try:
            import torch

            APS, RAPS, calculate_conformal_value = _torchcp()
        except Exception as exc:  # noqa: BLE001 - any import failure makes the row "not installed"
            out.append(missing("torchcp", exc))
            return out
        fn = APS(score_type="softmax", randomized=False) if score == "aps" else \
            RAPS(score_type="softmax", randomized=False, penalty=PARAMS["penalty"], kreg=PARAMS["kreg"])
        tz, ty = torch.from_numpy(z), torch.from_numpy(y)

        def run():
            with torch.no_grad():
                q = calculate_conformal_value(fn(tz, ty), 0.1)
                return float(q), (fn(tz) <= q).numpy()

        out.append(Contender("torchcp score + SplitPredictor sets (float32)", run, _agrees(want), repeat=3))
        return out
    return make


def workloads(quick: bool = False) -> list[Workload]:
    n_small = 2_000 if quick else 20_000
    n_big = 4_000 if quick else 200_000
    k = 1000
    floor = lambda d: (lambda: np.add.reduce(d["logits"], axis=None))  # noqa: E731
    out = []
    for score in ("aps", "raps"):
        out.append(Workload("conformal", f"{score.upper()} scores + sets, N={n_small:,} x K={k} float32 logits",
                            lambda: _data(n_small, k), _contenders(score, True), floor))
        out.append(Workload("conformal", f"{score.upper()} scores + sets, N={n_big:,} x K={k} float32 logits",
                            lambda: _data(n_big, k), _contenders(score, False), floor))
    return out
