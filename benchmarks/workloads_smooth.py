"""Smooth ECE (automatic bandwidth): calibkit vs relplot (its grid path, relplot.smECE) and one read of the input.

relplot takes (confidence, correctness) pairs: for the top-label workload they are computed from the logits
in float64 during set-up, untimed. relplot runs first; its (warm-up) value is the reference every calibkit
result is checked against before it is timed.
"""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing, read_scores, realistic_logits


def _binary(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p ** 1.3).astype(np.int64)
    return {"scores": p, "labels": y, "from_logits": False, "f": p, "c": y}


def _top_label(n, k, seed=0):
    scores, labels = realistic_logits(n, k, seed)
    f = np.empty(n)
    c = np.empty(n)
    step = max(1, (1 << 22) // k)
    for i in range(0, n, step):  # relplot's input, in float64 (softmax max, argmax == label), untimed
        z = scores[i:i + step].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        f[i:i + step] = z.max(axis=1) / z.sum(axis=1)
        c[i:i + step] = z.argmax(axis=1) == labels[i:i + step]
    return {"scores": scores, "labels": labels, "from_logits": True, "f": f, "c": c}


def _contenders(d):
    import calibkit

    s, y, fl = d["scores"], d["labels"], d["from_logits"]
    ref = {}
    # float32 logits: calibkit's float softmax has a relative error < 3e-7 in each confidence
    tol = 1e-6 if fl else 1e-9

    def close(got):
        want = ref.get("value")
        if want is None:
            return None
        return None if abs(got - want) <= tol else f"{got!r} != relplot's {want!r}"

    out = []
    try:
        import relplot

        def keep(got):
            ref["value"] = got
            return None

        out.append(Contender("relplot (smECE, grid path)", lambda: relplot.smECE(d["f"], d["c"]), keep, repeat=1))
    except ImportError as exc:
        out.append(missing("relplot", exc))
    out += [Contender(f"calibkit ({b})", lambda b=b: calibkit.smooth_ece(s, y, from_logits=fl, backend=b), close)
            for b in ("cpp", "numba")]
    return out


def workloads(quick: bool = False) -> list[Workload]:
    big_n = 200_000 if quick else 10_000_000
    wide_n = 4_000 if quick else 200_000
    return [
        Workload("smooth", f"smooth ECE (auto bandwidth), N={big_n:,} binary float64 probabilities",
                 lambda: _binary(big_n), _contenders, read_scores),
        Workload("smooth", f"smooth ECE (auto bandwidth), N={wide_n:,} x K=1000 float32 logits (top-label)",
                 lambda: _top_label(wide_n, 1000), _contenders, read_scores,
                 notes="relplot gets float64 confidences and correctness computed from the logits, untimed"),
    ]
