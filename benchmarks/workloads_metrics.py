"""Top-label ECE on large dumps: calibkit vs NumPy, torchmetrics, netcal and one read of the input."""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload

N_BINS = 15


def numpy_ece(scores, labels, from_logits, n_bins=N_BINS):
    """A careful vectorised NumPy ECE: one max/argmax, bincount for the bins (float64 sums)."""
    if from_logits:
        m = scores.max(axis=1, keepdims=True)
        sum_exp = np.exp(scores - m).sum(axis=1, dtype=np.float64)  # N x K temporary
        conf = 1.0 / sum_exp
        pred = scores.argmax(axis=1)
    else:
        pred = scores.argmax(axis=1)
        conf = np.take_along_axis(scores, pred[:, None], axis=1)[:, 0].astype(np.float64)
    correct = (pred == labels).astype(np.float64)
    edges = np.arange(1, n_bins) / n_bins
    idx = np.searchsorted(edges, conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    filled = count > 0
    gap = np.abs(sum_acc[filled] - sum_conf[filled])
    return float(gap.sum() / len(labels))


def numpy_classwise_ece(scores, labels, from_logits, n_bins=N_BINS, rows=8192):
    """Vectorised NumPy class-wise ECE (Kull et al. 2019), in row blocks: softmax, bin index of every
    element, three bincounts over class * M + bin (float64 sums)."""
    n, k = scores.shape
    edges = np.arange(1, n_bins) / n_bins
    count = np.zeros(k * n_bins)
    sum_p = np.zeros(k * n_bins)
    sum_y = np.zeros(k * n_bins)
    offset = np.arange(k) * n_bins
    for a in range(0, n, rows):
        z = scores[a:a + rows].astype(np.float64)
        if from_logits:
            z = np.exp(z - z.max(axis=1, keepdims=True))
            z /= z.sum(axis=1, keepdims=True)
        flat = (np.searchsorted(edges, z, side="left") + offset).ravel()
        count += np.bincount(flat, minlength=k * n_bins)
        sum_p += np.bincount(flat, weights=z.ravel(), minlength=k * n_bins)
        y = labels[a:a + rows]
        sum_y += np.bincount(flat.reshape(z.shape)[np.arange(len(y)), y], minlength=k * n_bins)
    return float(np.abs(sum_y - sum_p).reshape(k, n_bins).sum(axis=1).mean() / n)


def _classwise_contenders(d):
    import calibkit

    s, y, fl = d["scores"], d["labels"], d["from_logits"]
    want = numpy_classwise_ece(s, y, fl)

    def close(rel):
        return lambda got: None if abs(got - want) <= rel * abs(want) else f"{got!r} != {want!r}"

    return [
        Contender("calibkit (cpp)", lambda: calibkit.classwise_calibration_error(s, y, from_logits=fl, backend="cpp"),
                  close(1e-9)),
        Contender("calibkit (numba)",
                  lambda: calibkit.classwise_calibration_error(s, y, from_logits=fl, backend="numba"), close(1e-9)),
        Contender("numpy (vectorised, row blocks)", lambda: numpy_classwise_ece(s, y, fl), close(1e-9), repeat=3),
    ]


def _make(n, k, from_logits, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    scores = np.empty((n, k), dtype=np.float32)
    step = 1 << 18
    for i in range(0, n, step):  # build in chunks to keep set-up memory small
        z = rng.standard_normal((min(step, n - i), k), dtype=np.float32)
        z *= 2.5
        z[np.arange(len(z)), labels[i:i + len(z)]] += 2.0  # informative, over-confident logits
        if from_logits:
            scores[i:i + len(z)] = z
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            scores[i:i + len(z)] = e / e.sum(axis=1, keepdims=True)
    return {"scores": scores, "labels": labels, "from_logits": from_logits}


def _contenders(d):
    import calibkit

    s, y, fl = d["scores"], d["labels"], d["from_logits"]
    want = numpy_ece(s.astype(np.float64), y, fl)  # the reference, in float64

    def close(rel):
        return lambda got: None if abs(got - want) <= rel * abs(want) else f"{got!r} != {want!r}"

    out = [
        Contender("calibkit (cpp)", lambda: calibkit.ece(s, y, from_logits=fl, backend="cpp"), close(1e-9)),
        Contender("calibkit (numba)", lambda: calibkit.ece(s, y, from_logits=fl, backend="numba"), close(1e-9)),
        Contender("numpy (vectorised)", lambda: numpy_ece(s, y, fl), close(1e-6), repeat=3),
    ]
    try:
        import torch
        from torchmetrics.functional.classification import multiclass_calibration_error

        ts, ty = torch.from_numpy(s), torch.from_numpy(y)
        k = s.shape[1]
        out.append(Contender(
            "torchmetrics",
            lambda: multiclass_calibration_error(ts, ty, num_classes=k, n_bins=N_BINS, validate_args=False).item(),
            close(1e-3), repeat=3))  # float32 accumulation: ~3e-4 relative off at N = 10^7
    except ImportError:
        pass
    try:
        from netcal.metrics import ECE
        from scipy.special import softmax

        metric = ECE(bins=N_BINS)
        if fl:
            run = lambda: float(metric.measure(softmax(s, axis=1), y))  # noqa: E731 - netcal needs probabilities
        else:
            run = lambda: float(metric.measure(s, y))  # noqa: E731
        out.append(Contender("netcal" + (" (+ scipy softmax)" if fl else ""), run, close(1e-4), repeat=3))
    except ImportError:
        pass
    return out


def _floor(d):
    s = d["scores"]
    return lambda: np.add.reduce(s, axis=None)


def workloads(quick: bool = False) -> list[Workload]:
    big_n = 500_000 if quick else 10_000_000
    wide_n = 20_000 if quick else 200_000
    return [
        Workload("metrics", f"top-label ECE, N={big_n:,} x K=10 float32 probabilities",
                 lambda: _make(big_n, 10, False), _contenders, _floor),
        Workload("metrics", f"top-label ECE, N={wide_n:,} x K=1000 float32 probabilities",
                 lambda: _make(wide_n, 1000, False), _contenders, _floor),
        Workload("metrics", f"top-label ECE, N={wide_n:,} x K=1000 float32 logits",
                 lambda: _make(wide_n, 1000, True), _contenders, _floor),
        Workload("metrics", f"class-wise ECE, N={wide_n:,} x K=1000 float32 logits",
                 lambda: _make(wide_n, 1000, True), _classwise_contenders, _floor,
                 notes="no peer computes class-wise ECE in one call (torchmetrics and netcal are top-label)"),
    ]
