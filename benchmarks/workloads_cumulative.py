"""Cumulative calibration (ECCE-R / sigma, Arrieta-Ibarra et al. 2022): calibkit vs mcgrad and one read."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing, read_scores, realistic_logits


def _binary(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p ** 1.1).astype(np.int64)
    return {"scores": p, "labels": y, "from_logits": False}


def _top_label(n, k, seed=0):
    scores, labels = realistic_logits(n, k, seed)
    return {"scores": scores, "labels": labels, "from_logits": True}


def numpy_confidence(scores, labels, from_logits, rows=16384):
    """Top-label confidence and correctness in float64 NumPy, by blocks of rows (block x K temporaries):
    what a peer needs before it can sort."""
    n = scores.shape[0]
    conf = np.empty(n)
    correct = np.empty(n)
    for a in range(0, n, rows):
        s = scores[a:a + rows].astype(np.float64)
        if from_logits:
            conf[a:a + rows] = 1.0 / np.exp(s - s.max(axis=1, keepdims=True)).sum(axis=1)
        else:
            conf[a:a + rows] = s.max(axis=1)
        correct[a:a + rows] = s.argmax(axis=1) == labels[a:a + rows]
    return conf, correct


def _contenders(d):
    import calibkit

    s, y, fl = d["scores"], d["labels"], d["from_logits"]
    top = s.ndim == 2

    def close(want, rel):
        return lambda got: None if abs(got - want) <= rel * abs(want) else f"{got!r} != {want!r}"

    try:
        import mcgrad.metrics as mm
    except ImportError as exc:
        mm = None
        peer = missing("mcgrad", exc)
    if top:
        conf, correct = numpy_confidence(s, y, fl)
        # float32 logits: the kernel's float32 softmax moves confidences by < 3e-7 relative
        rel = 1e-4
    else:
        conf, correct = s, y.astype(np.float64)
        rel = 1e-9
    want = calibkit.cumulative_calibration_error(conf, correct.astype(np.int64)).range_sigma
    out = [Contender(f"calibkit ({b})",
                     lambda b=b: calibkit.cumulative_calibration_error(s, y, from_logits=fl, backend=b).range_sigma,
                     close(want, rel)) for b in ("cpp", "numba")]
    if mm is not None:
        if top:
            peer = Contender("mcgrad (+ NumPy confidences)",
                             lambda: mm.ecce_sigma(*numpy_confidence(s, y, fl)[::-1]), close(want, rel), repeat=3)
        else:
            peer = Contender("mcgrad", lambda: mm.ecce_sigma(correct, conf), close(want, rel), repeat=3)
    out.append(peer)
    return out


def workloads(quick: bool = False) -> list[Workload]:
    big_n = 200_000 if quick else 10_000_000
    wide_n = 4_000 if quick else 200_000
    return [
        Workload("cumulative", f"ECCE-R / sigma, binary, N={big_n:,} float64 scores", lambda: _binary(big_n),
                 _contenders, read_scores, notes="mcgrad: ecce_sigma (one np.argsort, then cumsum)"),
        Workload("cumulative", f"ECCE-R / sigma, top-label, N={wide_n:,} x K=1000 float32 logits",
                 lambda: _top_label(wide_n, 1000), _contenders, read_scores,
                 notes="mcgrad needs the confidences first: a NumPy softmax by row blocks before ecce_sigma"),
    ]
