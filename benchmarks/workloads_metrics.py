"""Top-label ECE on large dumps: calibkit vs NumPy, torchmetrics, netcal and one read of the input."""

from __future__ import annotations

import numpy as np

from harness import (Contender, Goal, Workload, missing, ratio_to_floor, read_scores, realistic_logits,
                     torch_one_thread)

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
    return ece_of(conf, pred == labels, n_bins)


def ece_of(conf, correct, n_bins=N_BINS):
    """Top-label ECE (equal-width bins ((m-1)/M, m/M], 0 in the first) of float64 confidences and
    correctness flags, with bincount sums in float64."""
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.arange(1, n_bins) / n_bins
    idx = np.searchsorted(edges, conf, side="left")
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    filled = count > 0
    gap = np.abs(sum_acc[filled] - sum_conf[filled])
    return float(gap.sum() / len(correct))


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
        tol = tolerance(want, len(y) * s.shape[1], fl, rel)
        return lambda got: None if abs(got - want) <= tol else f"{got!r} != {want!r}"

    return [
        Contender("calibkit (cpp)", lambda: calibkit.classwise_calibration_error(s, y, from_logits=fl, backend="cpp"),
                  close(1e-9)),
        Contender("calibkit (numba)",
                  lambda: calibkit.classwise_calibration_error(s, y, from_logits=fl, backend="numba"), close(1e-9)),
        Contender("numpy (vectorised, row blocks)", lambda: numpy_classwise_ece(s, y, fl), close(1e-9), repeat=3),
    ]


def _make(n, k, from_logits, seed=0):
    scores, labels = realistic_logits(n, k, seed, probabilities=not from_logits)
    return {"scores": scores, "labels": labels, "from_logits": from_logits}


def tolerance(want, n, from_logits, rel=1e-9):
    """Allowed |got - want| against a float64 reference. From float32 logits a kernel may use a float32 exp
    (relative error < 3e-7): a confidence that close to a bin edge can change bin, which moves the ECE by
    up to 2/n per such row; allow a few of them."""
    return rel * abs(want) + (8.0 / n if from_logits else 0.0)


def _contenders(d):
    import calibkit

    s, y, fl = d["scores"], d["labels"], d["from_logits"]
    want = numpy_ece(s.astype(np.float64), y, fl)  # the reference, in float64

    def close(rel):
        tol = tolerance(want, len(y), fl, rel)
        return lambda got: None if abs(got - want) <= tol else f"{got!r} != {want!r}"

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
            close(1e-3), repeat=3, time_if_wrong=True))  # float32 sums: ~1e-2 relative off at N = 10^7
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    try:
        from netcal.metrics import ECE
        from scipy.special import softmax

        metric = ECE(bins=N_BINS)
        if fl:
            run = lambda: float(metric.measure(softmax(s, axis=1), y))  # noqa: E731 - netcal needs probabilities
        else:
            run = lambda: float(metric.measure(s, y))  # noqa: E731
        out.append(Contender("netcal" + (" (+ scipy softmax)" if fl else ""), run, close(1e-4), repeat=3))
    except ImportError as exc:
        out.append(missing("netcal", exc))
    return out


def _tiny_contenders(d, calls=100, peer_calls=10):
    """Per-call cost of a metric on 100 rows: the fixed overhead of a call (validation, dispatch, threads)."""
    import calibkit

    s, y = d["scores"], d["labels"]
    want = numpy_ece(s.astype(np.float64), y, False)

    def close(rel):
        return lambda got: None if abs(got - want) <= rel * abs(want) else f"{got!r} != {want!r}"

    def loop(f, calls=calls):
        def run():
            for _ in range(calls):
                r = f()
            return r
        return run

    out = [Contender(f"calibkit ({b})", loop(lambda b=b: calibkit.ece(s, y, backend=b)), close(1e-9),
                     repeat=5, calls=calls) for b in ("cpp", "numba")]
    try:
        import torch
        from torchmetrics.functional.classification import multiclass_calibration_error

        ts, ty = torch.from_numpy(s), torch.from_numpy(y)
        out.append(Contender("torchmetrics (torch on 1 thread)", torch_one_thread(loop(
            lambda: multiclass_calibration_error(ts, ty, num_classes=s.shape[1], n_bins=N_BINS).item(), peer_calls)),
            close(1e-5), repeat=5, calls=peer_calls))
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    try:
        from netcal.metrics import ECE

        metric = ECE(bins=N_BINS)
        out.append(Contender("netcal", loop(lambda: float(metric.measure(s, y)), peer_calls), close(1e-5),
                             repeat=5, calls=peer_calls))
    except ImportError as exc:
        out.append(missing("netcal", exc))
    return out


def _binary_make(n, seed=0):
    """(N,) float64 P(y=1) with int64 labels drawn from them (a calibrated binary model)."""
    rng = np.random.default_rng(seed)
    p = rng.beta(2.0, 5.0, n)
    return {"scores": p, "labels": (rng.random(n) < p).astype(np.int64)}


def _binary_contenders(d):
    """Binary (positive-class) ECE and smooth ECE of (N,) scores; the NumPy ECE as the reference and a peer."""
    import calibkit

    p, y = d["scores"], d["labels"]
    want = ece_of(p, y)

    def close(rel):
        return lambda got: None if abs(got - want) <= rel * abs(want) else f"{got!r} != {want!r}"

    out = [Contender(f"calibkit ({b})", lambda b=b: calibkit.ece(p, y, backend=b), close(1e-9))
           for b in ("cpp", "numba")]
    out += [Contender(f"calibkit smooth_ece ({b})", lambda b=b: calibkit.smooth_ece(p, y, backend=b))
            for b in ("cpp", "numba")]
    out.append(Contender("numpy (vectorised)", lambda: ece_of(p, y), close(1e-6), repeat=3))
    return out


def _binary_floor(d):
    """One read of the scores and of the labels (np.add.reduce over each)."""
    p, y = d["scores"], d["labels"]
    return lambda: (np.add.reduce(p, axis=None), np.add.reduce(y, axis=None))


def _per_call_goal(backend):
    name = f"calibkit ({backend})"
    return Goal(f"any metric on 100 rows, {name} per call", lambda t: t[name] * 1e6, 20.0, unit=" us",
                now="C++ 40 us, Numba 100 us")


def workloads(quick: bool = False) -> list[Workload]:
    big_n = 200_000 if quick else 10_000_000
    wide_n = 4_000 if quick else 200_000
    return [
        Workload("metrics", f"top-label ECE, N={big_n:,} x K=10 float32 probabilities",
                 lambda: _make(big_n, 10, False), _contenders, read_scores,
                 goals=[ratio_to_floor("calibkit (cpp)", "top-label ECE 10M x 10 probabilities", 1.5, "2.4x")]),
        Workload("metrics", f"top-label ECE, N={wide_n:,} x K=1000 float32 probabilities",
                 lambda: _make(wide_n, 1000, False), _contenders, read_scores),
        Workload("metrics", f"top-label ECE, N={wide_n:,} x K=1000 float32 logits",
                 lambda: _make(wide_n, 1000, True), _contenders, read_scores,
                 goals=[ratio_to_floor("calibkit (cpp)", "top-label ECE 200k x 1000 logits", 1.5, "3.3x")]),
        Workload("metrics", f"class-wise ECE, N={wide_n:,} x K=1000 float32 logits",
                 lambda: _make(wide_n, 1000, True), _classwise_contenders, read_scores,
                 notes="no peer computes class-wise ECE in one call (torchmetrics and netcal are top-label)",
                 goals=[ratio_to_floor("calibkit (cpp)", "class-wise ECE 200k x 1000 logits", 2.0, "4.7x")]),
        Workload("metrics", "top-label ECE on 100 rows x K=10 float32 probabilities (time per call)",
                 lambda: _make(100, 10, False), _tiny_contenders,
                 goals=[_per_call_goal("cpp"), _per_call_goal("numba")]),
        Workload("metrics", f"binary ECE, N={big_n:,} float64 P(y=1), int64 labels",
                 lambda: _binary_make(big_n), _binary_contenders, _binary_floor,
                 floor_name="one read of scores and labels",
                 goals=[ratio_to_floor("calibkit (cpp)", "binary ECE 10M", 3.0, "14x"),
                        ratio_to_floor("calibkit (numba)", "binary ECE 10M", 3.0, "14x")]),
    ]
