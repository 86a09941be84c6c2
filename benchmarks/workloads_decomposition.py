"""CORP score decomposition (issue 15, section 4): calibkit vs model_diagnostics.scoring.decompose and one read."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing, read_scores, realistic_logits

TERMS = ("score", "miscalibration", "discrimination", "uncertainty")


def _binary(n, seed=0):
    """P(y=1) in float64 (rounded to 1e-6, so there are ties as in real scores) and labels drawn from p^1.3:
    an over-confident forecast."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.random(n), 6)
    y = (rng.random(n) < p ** 1.3).astype(np.int64)
    return {"scores": p, "labels": y, "from_logits": False}


def _top_label(n, k, seed=0):
    scores, labels = realistic_logits(n, k, seed)
    return {"scores": scores, "labels": labels, "from_logits": True}


def _confidence(scores, labels, from_logits):
    """The peer's input: (N,) as given, or the float64 softmax confidence and correctness of the rows (in row
    blocks, as a careful user would, to keep the N x K temporaries small)."""
    if scores.ndim == 1:
        return scores, labels
    n = scores.shape[0]
    conf = np.empty(n)
    correct = np.empty(n, np.int64)
    for a in range(0, n, 8192):
        z = scores[a:a + 8192].astype(np.float64)
        if from_logits:
            z = np.exp(z - z.max(axis=1, keepdims=True))
            z /= z.sum(axis=1, keepdims=True)
        conf[a:a + 8192] = z.max(axis=1)
        correct[a:a + 8192] = z.argmax(axis=1) == labels[a:a + 8192]
    return conf, correct


def _terms(d):
    return np.array([getattr(d, k) for k in TERMS])


def _contenders(score):
    def build(d):
        import calibkit

        s, y, fl = d["scores"], d["labels"], d["from_logits"]
        # float32 logits: the kernels' confidences come from a float32 exp (relative error < 3e-7)
        rel = 1e-6 if fl and s.dtype != np.float64 else 1e-9
        out = []
        want = None
        try:
            from model_diagnostics.scoring import LogLoss, SquaredError, decompose

            fn = SquaredError() if score == "brier" else LogLoss()

            def peer():
                conf, correct = _confidence(s, y, fl)
                row = decompose(correct, conf, scoring_function=fn).row(0, named=True)
                return np.array([row[k] for k in TERMS])

            want = peer()
            out.append(Contender("model_diagnostics" + (" (+ numpy softmax)" if s.ndim == 2 else ""), peer,
                                 repeat=3))
        except ImportError as exc:
            out.append(missing("model_diagnostics", exc))
        if want is None:  # no peer: calibkit's two backends are checked against each other
            want = _terms(calibkit.score_decomposition(s, y, score=score, from_logits=fl, backend="cpp"))

        def check(got):
            err = np.abs(_terms(got) - want)
            return None if (err <= rel * np.maximum(1.0, np.abs(want))).all() else f"{_terms(got)!r} != {want!r}"

        for b in ("cpp", "numba"):
            out.insert(0 if b == "cpp" else 1, Contender(
                f"calibkit ({b})", lambda b=b: calibkit.score_decomposition(s, y, score=score, from_logits=fl,
                                                                            backend=b), check))
        return out
    return build


def workloads(quick: bool = False) -> list[Workload]:
    big_n = 200_000 if quick else 10_000_000
    wide_n = 4_000 if quick else 200_000
    return [
        Workload("decomposition", f"Brier decomposition, binary N={big_n:,} float64 probabilities",
                 lambda: _binary(big_n), _contenders("brier"), read_scores),
        Workload("decomposition", f"log-score decomposition, binary N={big_n:,} float64 probabilities",
                 lambda: _binary(big_n), _contenders("log"), read_scores),
        Workload("decomposition", f"Brier decomposition, top-label N={wide_n:,} x K=1000 float32 logits",
                 lambda: _top_label(wide_n, 1000), _contenders("brier"), read_scores,
                 notes="model_diagnostics takes the confidences: its row includes a float64 softmax in row blocks"),
    ]
