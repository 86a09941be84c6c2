"""Dense predictions (issue 17): ECE and the temperature fit on a (16, 19, 512, 1024) float16 segmentation map.

The map is class-second (PyTorch's layout), 318 MB; labels are (16, 512, 1024) uint8. calibkit reads the map in
place (the class axis with its stride); the contenders are what a user does today:

(a) calibkit on the flattened copy: ``np.moveaxis(x, 1, -1).reshape(-1, K)`` (a 318 MB copy) and the labels
    raveled, the time and the memory of the copy included;
(b) torchmetrics on the permuted and flattened tensor (``x.permute(0, 2, 3, 1).reshape(-1, K)``), in float32
    (torch's CPU softmax of float16 is far slower);
(c) MONAI's ``CalibrationErrorMetric``: per image and class from softmax probabilities and one-hot labels of the
    map's shape (its only input format), averaged: compared with calibkit's class-wise ECE per image
    (``reduce="per_image"``). MONAI's bins are [a, b) and calibkit's (a, b], so the values agree only to the
    weight of confidences on an edge (checked to 1e-3).

The floor is one read of the map (``np.add.reduce`` over its float16 elements). A second workload has 10% of
the pixels on the ignore label (255), in a band at the bottom of each image as segmentation ground truths have.
"""

from __future__ import annotations

import numpy as np

from harness import Contender, Workload, missing, ratio_to_floor, realistic_logits

N_BINS = 15


def _map(n, k, h, w, ignore=False, seed=0):
    """(n, k, h, w) float16 logits, image by image from realistic (over-confident) rows; labels (n, h, w) uint8.
    With ``ignore``: 10% of each image's rows (a band at the bottom, as the ego-vehicle in Cityscapes) are 255."""
    x = np.empty((n, k, h, w), np.float16)
    y = np.empty((n, h, w), np.uint8)
    for i in range(n):
        s, lab = realistic_logits(h * w, k, seed=seed + i)
        x[i] = s.T.reshape(k, h, w)
        y[i] = lab.reshape(h, w)
    if ignore:
        y[:, int(h * 0.9):, :] = 255
    return {"scores": x, "labels": y, "ignore_index": 255 if ignore else None}


def _flat(x, y, ignore_index):
    k = x.shape[1]
    fs = np.moveaxis(x, 1, -1).reshape(-1, k)  # the copy users make
    fy = y.reshape(-1)
    if ignore_index is not None:
        keep = fy != ignore_index
        fs, fy = fs[keep], fy[keep]
    return fs, fy.astype(np.int64)


def _close(want, rel):
    return lambda got: None if abs(float(got) - want) <= rel * max(abs(want), 1e-12) else f"{float(got)!r} != {want!r}"


def _ece_contenders(d):
    import calibkit

    x, y, ig = d["scores"], d["labels"], d["ignore_index"]
    k = x.shape[1]

    def ours(backend):
        return lambda: calibkit.calibration_error(x, y, from_logits=True, n_bins=N_BINS, ignore_index=ig,
                                                  backend=backend)

    def flattened():
        fs, fy = _flat(x, y, ig)
        return calibkit.calibration_error(fs, fy, from_logits=True, n_bins=N_BINS)

    want = float(flattened())
    out = [Contender(f"calibkit ({b})", ours(b), _close(want, 1e-9)) for b in ("cpp", "numba")]
    out.append(Contender("calibkit on the flattened copy (copy included)", flattened, _close(want, 1e-12),
                         repeat=3))
    try:
        import torch
        from torchmetrics.functional.classification import multiclass_calibration_error

        tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

        def tm():
            flat = tx.permute(0, 2, 3, 1).reshape(-1, k).float()
            return multiclass_calibration_error(flat, ty.reshape(-1), num_classes=k, n_bins=N_BINS,
                                                ignore_index=ig, validate_args=False).item()
        out.append(Contender("torchmetrics (permuted + flattened, float32)", tm, _close(want, 1e-3), repeat=1,
                             time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("torchmetrics", exc))
    return out


def _monai_contenders(d):
    import calibkit

    x, y = d["scores"], d["labels"]
    k = x.shape[1]

    def ours(backend):
        return lambda: calibkit.classwise_calibration_error(x, y, from_logits=True, n_bins=N_BINS,
                                                            reduce="per_image", backend=backend)

    want = float(ours("cpp")())
    out = [Contender(f"calibkit ({b}) class-wise, per image", ours(b), _close(want, 1e-9)) for b in ("cpp", "numba")]
    try:
        import torch
        from monai.metrics import CalibrationErrorMetric

        tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

        def monai():
            p = torch.softmax(tx.float(), dim=1)
            onehot = torch.nn.functional.one_hot(ty, k).permute(0, 3, 1, 2).float()
            metric = CalibrationErrorMetric(num_bins=N_BINS, calibration_reduction="expected")
            metric(y_pred=p, y=onehot)
            return float(metric.aggregate())
        out.append(Contender("MONAI CalibrationErrorMetric (softmax + one-hot)", monai, _close(want, 1e-3),
                             repeat=1, time_if_wrong=True))
    except ImportError as exc:
        out.append(missing("monai", exc))
    return out


def _fit_contenders(d):
    import calibkit

    x, y, ig = d["scores"], d["labels"], d["ignore_index"]

    def ours(backend):
        return lambda: calibkit.TemperatureScaling(backend=backend).fit(x, y, ignore_index=ig).temperature_

    def flattened():
        fs, fy = _flat(x, y, ig)
        return calibkit.TemperatureScaling().fit(fs, fy).temperature_

    want = float(flattened())
    return [Contender(f"calibkit ({b})", ours(b), _close(want, 1e-9), repeat=3) for b in ("cpp", "numba")] + [
        Contender("calibkit on the flattened copy (copy included)", flattened, _close(want, 1e-12), repeat=3)]


def _read_map(d):
    x = d["scores"]

    def read():
        with np.errstate(over="ignore"):  # a float16 sum of 10^8 logits overflows: only the read is timed
            return np.add.reduce(x, axis=None)
    return read


def workloads(quick: bool = False) -> list[Workload]:
    shape = (2, 19, 128, 256) if quick else (16, 19, 512, 1024)
    n, k, h, w = shape
    what = f"({n}, {k}, {h}, {w}) float16 logits, class axis second"
    return [
        Workload("dense", f"top-label ECE of a {what}, read in place",
                 lambda: _map(*shape), _ece_contenders, _read_map,
                 goals=[ratio_to_floor("calibkit (cpp)", "issue 17: dense ECE from float16 logits", 2.0,
                                       what="one read of the map")]),
        Workload("dense", f"top-label ECE of a {what}, 10% of pixels on ignore_index=255",
                 lambda: _map(*shape, ignore=True), _ece_contenders, _read_map),
        Workload("dense", f"class-wise ECE per image of a {what} (MONAI's convention)",
                 lambda: _map(*shape), _monai_contenders, _read_map),
        Workload("dense", f"TemperatureScaling().fit on a {what}",
                 lambda: _map(*shape), _fit_contenders, _read_map),
    ]
