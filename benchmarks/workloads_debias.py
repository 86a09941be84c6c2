"""Debiased RMS calibration error (Kumar, Liang & Ma 2019): calibkit vs uncertainty-calibration.

The reference, ``calibration.get_calibration_error(probs, labels, p=2, debias=True, mode=...)``, bins
continuous probabilities with its ``get_equal_bins`` (15 equal-count bins, midpoint edges): calibkit's
``strategy="quantile_midpoint"``. It takes probabilities, so for the logits workload it gets their softmax
(made in the untimed set-up); calibkit reads the logits.
"""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing, read_scores, realistic_logits


def _binary(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p ** 1.3).astype(np.int64)  # a little miscalibrated
    return {"scores": p, "labels": y, "probs": p, "from_logits": False}


def _top_label(n, k, seed=0):
    z, y = realistic_logits(n, k, seed)
    probs = np.empty_like(z)
    step = max(1, (1 << 22) // k)
    for i in range(0, n, step):  # float32 softmax in row blocks, for the reference (untimed)
        b = z[i:i + step] - z[i:i + step].max(axis=1, keepdims=True)
        np.exp(b, out=b)
        b /= b.sum(axis=1, keepdims=True)
        probs[i:i + step] = b
    return {"scores": z, "labels": y, "probs": probs, "from_logits": True}


def _contenders(d):
    import calibkit

    s, y, fl, probs = d["scores"], d["labels"], d["from_logits"], d["probs"]

    def mine(backend):
        return lambda: calibkit.calibration_error(s, y, norm="l2", debias=True, strategy="quantile_midpoint",
                                                  from_logits=fl, backend=backend)

    want = mine("cpp")()
    # The reference's float32 top-label means and float32 probabilities move the value by float32 rounding.
    rel = 1e-9 if s.ndim == 1 else 1e-4

    def close(got):
        return None if abs(got - want) <= rel * abs(want) + 1e-12 else f"{got!r} != {want!r}"

    out = [
        Contender("calibkit (cpp)", mine("cpp"), close),
        Contender("calibkit (numba)", mine("numba"), close),
        Contender("calibkit (cpp), equal-width bins",
                  lambda: calibkit.calibration_error(s, y, norm="l2", debias=True, from_logits=fl, backend="cpp")),
    ]
    try:
        import calibration

        mode = "top-label" if s.ndim == 2 else "marginal"
        out.append(Contender("uncertainty-calibration",
                             lambda: float(calibration.get_calibration_error(probs, y, p=2, debias=True, mode=mode)),
                             close, repeat=1, time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("uncertainty-calibration", exc))
    return out


def workloads(quick: bool = False) -> list[Workload]:
    big_n = 200_000 if quick else 10_000_000
    wide_n = 4_000 if quick else 200_000
    return [
        Workload("debias", f"debiased RMSCE, N={big_n:,} binary float64 probabilities",
                 lambda: _binary(big_n), _contenders, read_scores,
                 notes="uncertainty-calibration builds a Python list of (p, y) tuples: seconds per million rows"),
        Workload("debias", f"debiased RMSCE top-label, N={wide_n:,} x K=1000 float32 logits",
                 lambda: _top_label(wide_n, 1000), _contenders, read_scores,
                 notes="the reference gets the float32 softmax (untimed set-up)"),
    ]
