"""Inductive Venn-Abers predictors (issue 16, section 1): calibkit.VennAbers vs the venn-abers package and one read.

The peer's ``calc_p0p1`` recomputes a minimum slope over the remaining points each time the walk turns, which is
quadratic in the number of distinct calibration scores: on this machine it takes about 8 s at N = 200,000 and 150 s
at N = 1,000,000, so the full-size workload is N = 600,000 (about a minute per call of the peer; it runs twice,
the warm-up and one timed call). calibkit: one sort, the PAV kernel for the first minorant and a linear walk.
"""

from __future__ import annotations

import warnings

import numpy as np

from harness import Contender, Workload, missing, read_scores


def _binary(n, seed=0):
    """Continuous float64 scores (all distinct: the peer's worst case is many distinct scores), labels drawn
    from p^1.3 (an over-confident forecast); the same scores are the test scores."""
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p ** 1.3).astype(np.int64)
    return {"scores": p, "labels": y}


def _contenders(d):
    import calibkit

    s, y = d["scores"], d["labels"]

    def ours(backend):
        def run():
            return calibkit.VennAbers(backend=backend).fit(s, y).predict_interval(s)
        return run

    want = ours("cpp")()

    def check(got):
        err = max(np.abs(got[0] - want[0]).max(), np.abs(got[1] - want[1]).max())
        return None if err <= 1e-9 else f"p0/p1 differ by {err:.3g}"

    out = [Contender(f"calibkit ({b})", ours(b), check, repeat=3) for b in ("cpp", "numba")]
    try:
        from venn_abers import VennAbers

        two = np.column_stack([1.0 - s, s])

        def peer():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                va = VennAbers()
                va.fit(two, y)
                _, p0p1 = va.predict_proba(two)
            return p0p1[:, 0], p0p1[:, 1]

        out.append(Contender("venn-abers (VennAbers)", peer, check, repeat=1))
    except ImportError as exc:
        out.append(missing("venn-abers", exc))
    return out


def workloads(quick: bool = False) -> list[Workload]:
    n = 50_000 if quick else 600_000
    return [
        Workload("venn_abers", f"Venn-Abers fit + (p0, p1) of N={n:,} binary float64 scores (all distinct)",
                 lambda: _binary(n), _contenders, read_scores,
                 notes="the peer is quadratic in the distinct scores: N=600,000 is about a minute per call"),
    ]
