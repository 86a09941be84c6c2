"""Streaming: CalibrationAccumulator against torchmetrics' stateful metric, on the same batches."""

from __future__ import annotations

import numpy as np

from harness import Contender, Goal, Workload, missing, realistic_logits, torch_one_thread

N_BINS = 15


def _make(n, k, seed=0):
    probs, labels = realistic_logits(n, k, seed, probabilities=True)
    return {"probs": probs, "labels": labels, "k": k}


def _stream(d, batch, bootstrap=0, backend="cpp"):
    import calibkit

    acc = calibkit.CalibrationAccumulator(N_BINS, bootstrap=bootstrap, backend=backend)
    p, y = d["probs"], d["labels"]
    for i in range(0, len(y), batch):
        acc.update(p[i:i + batch], y[i:i + batch])
    return acc.compute().ece


def _update_contenders(d, batch=1024):
    import calibkit

    want = calibkit.ece(d["probs"], d["labels"], n_bins=N_BINS)

    def close(rel):
        return lambda got: None if abs(got - want) <= rel * want else f"{got!r} != {want!r}"

    out = [
        Contender("calibkit (cpp)", lambda: _stream(d, batch), close(1e-9), repeat=3),
        Contender("calibkit (numba)", lambda: _stream(d, batch, backend="numba"), close(1e-9), repeat=3),
        Contender("calibkit, bootstrap=100", lambda: _stream(d, batch, bootstrap=100), close(1e-9), repeat=3),
    ]
    try:
        import torch
        from torchmetrics.classification import MulticlassCalibrationError

        tp, ty = torch.from_numpy(d["probs"]), torch.from_numpy(d["labels"])

        def torchmetrics_stream():
            m = MulticlassCalibrationError(num_classes=d["k"], n_bins=N_BINS, validate_args=False)
            for i in range(0, len(ty), batch):
                m.update(tp[i:i + batch], ty[i:i + batch])
            return m.compute().item()

        out.append(Contender("torchmetrics MulticlassCalibrationError", torchmetrics_stream, close(1e-4), repeat=3))
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    return out


def _tiny_contenders(d, calls=200):
    """Per-call cost of an update of 8 rows (the fixed overhead). As in _batch_contenders, only the updates
    are timed; each contender's state is computed and checked after its timed calls."""
    import calibkit

    p, y = d["probs"][:8], d["labels"][:8]
    want = calibkit.ece(p.astype(np.float64), y, n_bins=N_BINS)

    def close(rel, compute):
        def check(state):
            got = compute(state)
            return None if abs(got - want) <= rel * want else f"{got!r} != {want!r}"
        return check

    def ours(backend):
        acc = calibkit.CalibrationAccumulator(N_BINS, backend=backend)

        def run():
            for _ in range(calls):
                acc.update(p, y)
            return acc
        return run

    out = [Contender(f"calibkit ({b})", ours(b), close(1e-9, lambda acc: acc.compute().ece), repeat=5, calls=calls)
           for b in ("cpp", "numba")]
    try:
        import torch
        from torchmetrics.classification import MulticlassCalibrationError

        tp, ty = torch.from_numpy(p), torch.from_numpy(y)
        m = MulticlassCalibrationError(num_classes=d["k"], n_bins=N_BINS)

        def tm():
            for _ in range(calls):
                m.update(tp, ty)
            return m

        out.append(Contender("torchmetrics", torch_one_thread(tm),
                             close(1e-5, lambda m: torch_one_thread(lambda: m.compute().item())()),
                             repeat=5, calls=calls))
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    return out


def _merge_contenders(d):
    import calibkit

    p, y = d["probs"], d["labels"]
    states = [calibkit.CalibrationAccumulator(N_BINS).update(p[i::1000], y[i::1000]) for i in range(1000)]
    blobs = [s.to_bytes() for s in states]
    want = calibkit.ece(p, y, n_bins=N_BINS)

    def merge_all():
        total = calibkit.CalibrationAccumulator(N_BINS)
        for s in states:
            total.merge(s)
        return total.compute().ece

    def round_trip():
        for b in blobs[:100]:
            calibkit.CalibrationAccumulator.from_bytes(calibkit.CalibrationAccumulator.from_bytes(b).to_bytes())

    return [Contender("calibkit (cpp)", merge_all,
                      lambda got: None if abs(got - want) <= 1e-9 * want else f"{got} != {want}"),
            Contender("to_bytes + from_bytes, 100 states", round_trip)]


def _batch_contenders(d, calls=50):
    """One update of a 1024-row batch, per call: calibkit's accumulator (state: bin sums) against torchmetrics'
    stateful metric (state: every prediction, appended; torch on one thread, its fastest for such batches).

    Only the ``update`` calls are timed, each contender in its own warm loop of ``calls`` updates of the same
    batch into one state (built once, before timing). Each state is computed and checked against the ECE of
    the batch after the timed calls, outside the timed region: ``compute`` is not an update (calibkit's
    costs ~0.4 ms, mostly the equal-mass pass over its fine histogram, and torchmetrics' grows with every
    row it has kept), and charging it to the updates made calibkit's per-update time depend on ``calls``
    (50 updates + 1 compute measured 81 us per update against 50 us for the updates alone)."""
    import calibkit

    p, y = d["probs"], d["labels"]
    want = calibkit.ece(p.astype(np.float64), y, n_bins=N_BINS)

    def close(rel, compute):
        def check(state):
            got = compute(state)
            return None if abs(got - want) <= rel * want else f"{got!r} != {want!r}"
        return check

    def ours(backend):
        acc = calibkit.CalibrationAccumulator(N_BINS, backend=backend)

        def run():
            for _ in range(calls):
                acc.update(p, y)
            return acc  # the same batch repeated: the same ECE
        return run

    out = [Contender(f"calibkit update ({b})", ours(b), close(1e-9, lambda acc: acc.compute().ece), repeat=5,
                     calls=calls) for b in ("cpp", "numba")]
    try:
        import torch
        from torchmetrics.classification import MulticlassCalibrationError

        tp, ty = torch.from_numpy(p), torch.from_numpy(y)
        m = MulticlassCalibrationError(num_classes=d["k"], n_bins=N_BINS)  # default: validate_args=True

        def tm():
            for _ in range(calls):
                m.update(tp, ty)
            return m

        out.append(Contender("torchmetrics MulticlassCalibrationError.update", torch_one_thread(tm),
                             close(1e-5, lambda m: torch_one_thread(lambda: m.compute().item())()),
                             repeat=5, calls=calls))
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    return out


def _smooth_contenders(d):
    """One update of a smooth accumulator (smooth=True: the smooth ECE's grid sums kept too) with a whole batch of
    float32 logits: the grid sums come from the update's own pass (one exp per logit), not a second pass."""
    import calibkit

    z, y = d["logits"], d["labels"]
    want = calibkit.smooth_ece(z, y, from_logits=True)

    def run(backend):
        def update():
            acc = calibkit.CalibrationAccumulator(N_BINS, from_logits=True, smooth=True, backend=backend)
            return acc.update(z, y)
        return update

    def check(acc):
        got = acc.compute().smooth_ece
        return None if abs(got - want) <= 1e-9 + 1e-6 * want else f"{got!r} != {want!r}"

    return [Contender(f"calibkit update, smooth=True ({b})", run(b), check, repeat=3) for b in ("cpp", "numba")]


def _make_logits(n, k, seed=0):
    logits, labels = realistic_logits(n, k, seed)
    return {"logits": logits, "labels": labels}


def _update_goal():
    tm, ours = "torchmetrics MulticlassCalibrationError.update", "calibkit update (cpp)"
    return Goal("CalibrationAccumulator.update 1024 x 10, torchmetrics time / calibkit (cpp) time",
                lambda t: t[tm] / t[ours], 10.0, op=">=", now="1.5x (64-100 us per call)")


def workloads(quick: bool = False) -> list[Workload]:
    n = 50_000 if quick else 1_000_000
    return [
        Workload("streaming", "update of one batch of 1024 x K=10 float32 probabilities (time per call)",
                 lambda: _make(1024, 10), _batch_contenders,
                 lambda d: (lambda: np.add.reduce(d["probs"], axis=None)), goals=[_update_goal()]),
        Workload("streaming", f"update in batches of 1024 + compute, N={n:,} x K=10 float32",
                 lambda: _make(n, 10), _update_contenders,
                 lambda d: (lambda: np.add.reduce(d["probs"], axis=None))),
        Workload("streaming", f"update with smooth=True, one batch of {n // 5:,} x K=1000 float32 logits",
                 lambda: _make_logits(n // 5, 1000), _smooth_contenders,
                 lambda d: (lambda: np.add.reduce(d["logits"], axis=None))),
        Workload("streaming", "update of 8 rows x K=10 (time per call: the fixed overhead)", lambda: _make(8, 10),
                 _tiny_contenders),
        Workload("streaming", "merge 1000 states and compute; to_bytes/from_bytes round trips",
                 lambda: _make(20_000 if quick else 100_000, 10), _merge_contenders, relative=False),
    ]
