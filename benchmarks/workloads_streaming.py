"""Streaming: CalibrationAccumulator against torchmetrics' stateful metric, on the same batches."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload

N_BINS = 15


def _make(n, k, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k), dtype=np.float32) * 2.5
    e = np.exp(z - z.max(axis=1, keepdims=True))
    probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return {"probs": probs, "labels": rng.integers(0, k, n), "k": k}


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
    except ImportError:
        pass
    return out


def _tiny_contenders(d):
    import calibkit

    p, y = d["probs"][:8], d["labels"][:8]
    acc = calibkit.CalibrationAccumulator(N_BINS)
    acc_numba = calibkit.CalibrationAccumulator(N_BINS, backend="numba")
    acc_numba.update(p, y)

    def loop(a):
        def run():
            for _ in range(1000):
                a.update(p, y)
        return run

    out = [Contender("calibkit (cpp), 1000 updates", loop(acc), repeat=5),
           Contender("calibkit (numba), 1000 updates", loop(acc_numba), repeat=5)]
    try:
        import torch
        from torchmetrics.classification import MulticlassCalibrationError

        m = MulticlassCalibrationError(num_classes=d["k"], n_bins=N_BINS)
        tp, ty = torch.from_numpy(p), torch.from_numpy(y)

        def tm():
            for _ in range(1000):
                m.update(tp, ty)

        out.append(Contender("torchmetrics, 1000 updates", tm, repeat=5))
    except ImportError:
        pass
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


def workloads(quick: bool = False) -> list[Workload]:
    n = 100_000 if quick else 1_000_000
    return [
        Workload("streaming", f"update in batches of 1024 + compute, N={n:,} x K=10 float32",
                 lambda: _make(n, 10), _update_contenders,
                 lambda d: (lambda: np.add.reduce(d["probs"], axis=None))),
        Workload("streaming", "1000 updates of 8 rows (per-call overhead = time / 1000)", lambda: _make(8, 10),
                 _tiny_contenders),
        Workload("streaming", "merge 1000 states and compute; to_bytes/from_bytes round trips",
                 lambda: _make(100_000, 10), _merge_contenders),
    ]
