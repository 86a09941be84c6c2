"""OOD-detection and selective-prediction metrics.

OOD detection: ``scores_in`` are the scores of in-distribution samples,
``scores_out`` those of out-of-distribution samples, and a higher score means
"more in-distribution" (use ``max_probability``, ``-entropy``, ``-energy``, ...).

Default convention: the in-distribution samples are the positives
(``positive="in"``) and AUPR is the average precision
(``aupr="average_precision"``), as in Hendrycks & Gimpel (2017) and
scikit-learn's ``average_precision_score``. Every metric takes the other
conventions as options: ``positive="out"`` (out-of-distribution positive,
detected by low scores), ``aupr="trapezoid"`` (the trapezoidal area under the
precision-recall curve), and ``ood_metrics(..., convention="openood")`` for
exactly the numbers of OpenOOD v1.5's ``compute_all_metrics`` (out-of-
distribution positive, trapezoidal AUPR, FPR@95 on scikit-learn's default ROC
points); also ``auroc(max_fpr=...)`` (scikit-learn's standardised partial
AUC) and ``sample_weight_in`` / ``sample_weight_out``. See :func:`ood_metrics`.

Every metric is exact: each sample is sorted once (a parallel radix sort in
the native kernel) and one merge of the two sorted samples walks the distinct
thresholds; tied scores form one step, exactly as in
``sklearn.metrics.roc_curve`` / ``precision_recall_curve``, so AUROC and AP
agree with ``roc_auc_score`` and ``average_precision_score`` to rounding.

Selective prediction: ``confidence`` of each prediction and whether it was
``correct``; predictions are accepted from the most confident down. AURC,
E-AURC, AUGRC (Traub et al. 2024), ``risk_at_coverage`` and
``coverage_at_risk``; the area rule is ``rule="sum"`` (Geifman's sum, the
default) or ``"trapezoid"`` (torch-uncertainty's).

:class:`OODAccumulator` is the streaming form: mergeable, serialisable fine
histograms of the two score distributions, with a proven error bound on each
metric.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._validation import (MAX_PRECISION_BITS, SCORE_NOT_FINITE, check_choice, check_correct, check_score_vector,
                          raise_for_status)


def _check_rate(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _ranking(pos, neg, pos_name, neg_name, *, tpr=0.95, curve=False, backend="auto"):
    if pos.dtype != neg.dtype:
        common = np.result_type(pos.dtype, neg.dtype)
        pos, neg = pos.astype(common), neg.astype(common)
    r = _backend.kernels(backend).two_sample_ranking(pos, neg, tpr, curve)
    code, row, col, value = r["status"]
    if code:
        raise_for_status((code, row, -1, value), scores_name=pos_name if col == 0 else neg_name)
    return r


def _in_out(scores_in, scores_out):
    return check_score_vector(scores_in, "scores_in"), check_score_vector(scores_out, "scores_out")


_CONVENTIONS = ("calibkit", "openood")
_POSITIVES = ("in", "out")
_AUPR_RULES = ("average_precision", "trapezoid")


def _settings(convention, positive, aupr):
    """(convention, positive, aupr) with the convention's defaults filled in; a contradiction is an error."""
    convention = check_choice(convention, "convention", _CONVENTIONS)
    defaults = {"positive": "out", "aupr": "trapezoid"} if convention == "openood" else \
        {"positive": "in", "aupr": "average_precision"}
    chosen = {}
    for name, value, choices in (("positive", positive, _POSITIVES), ("aupr", aupr, _AUPR_RULES)):
        if value is None:
            chosen[name] = defaults[name]
            continue
        check_choice(value, name, choices)
        if convention == "openood" and value != defaults[name]:
            raise ValueError(f"convention='openood' uses {name}={defaults[name]!r}; got {name}={value!r} "
                             f"(leave {name} unset, or use convention='calibkit')")
        chosen[name] = value
    return convention, chosen["positive"], chosen["aupr"]


def _side_weight(weight, n, name):
    """One side's sample weights as float64 (finite, >= 0), or None."""
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.dtype == object or w.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numbers, got dtype {w.dtype}")
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one weight per score), got shape {w.shape}")
    w = w.astype(np.float64)
    finite = np.isfinite(w)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{name}[{i}] = {float(w[i])!r} is not finite")
    if (w < 0).any():
        i = int(np.argmax(w < 0))
        raise ValueError(f"{name}[{i}] = {float(w[i])!r} is negative")
    return w


def _weights(w_in, w_out, n_in, n_out):
    """Both sides' weights (ones where not given), scaled by the largest so that sums neither overflow nor
    underflow (every metric here is a ratio of sums of weights on both sides)."""
    w_in = np.ones(n_in) if w_in is None else w_in
    w_out = np.ones(n_out) if w_out is None else w_out
    for name, w in (("sample_weight_in", w_in), ("sample_weight_out", w_out)):
        if not w.any():
            raise ValueError(f"{name} sums to 0 (every weight is 0): that side has no samples to rank")
    largest = max(float(w_in.max()), float(w_out.max()))
    w_in, w_out = w_in / largest, w_out / largest
    for name, w in (("sample_weight_in", w_in), ("sample_weight_out", w_out)):
        if not w.any():
            raise ValueError(f"{name} is too small next to the other side's weights: divided by the largest "
                             f"weight ({largest!r}) every weight underflows to 0")
    return w_in, w_out


def _check_finite(x, name):
    finite = np.isfinite(x)
    if not finite.all():
        i = int(np.argmin(finite))
        raise_for_status((SCORE_NOT_FINITE, i, -1, float(x[i])), scores_name=name)


def _weighted_curve(si, so, w_in, w_out):
    """The descending walk of the distinct scores with weighted counts: (tp, fp) after each, as
    ``sklearn.metrics.roc_curve`` builds it (samples of weight 0 dropped first, as scikit-learn does)."""
    _check_finite(si, "scores_in")
    _check_finite(so, "scores_out")
    s = np.concatenate([si.astype(np.float64), so.astype(np.float64)])
    w = np.concatenate([w_in, w_out])
    is_in = np.arange(s.shape[0]) < si.shape[0]
    keep = w != 0
    s, w, is_in = s[keep], w[keep], is_in[keep]
    order = np.argsort(-s, kind="stable")
    s, w, is_in = s[order], w[order], is_in[order]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    return np.cumsum(np.where(is_in, w, 0.0))[last], np.cumsum(np.where(is_in, 0.0, w))[last]


def _flip(tp, fp):
    """The walk with the roles swapped: out-of-distribution as positives, scores from the lowest up."""
    return (fp[-1] - np.r_[0.0, fp[:-1]])[::-1], (tp[-1] - np.r_[0.0, tp[:-1]])[::-1]


def _previous(x):
    return np.r_[0.0, x[:-1]]


def _roc_area(pos, neg):
    """Trapezoidal ROC area of a walk (the positives' and negatives' running totals)."""
    return float(np.sum((neg - _previous(neg)) * (pos + _previous(pos))) / (2.0 * pos[-1] * neg[-1]))


def _average_precision(pos, neg):
    return float(np.sum((pos - _previous(pos)) * (pos / (pos + neg))) / pos[-1])


def _trapezoid_pr(pos, neg):
    """Trapezoidal area under (recall, precision) from (0, 1) through each threshold: ``sklearn.metrics.auc``
    of ``precision_recall_curve``."""
    recall = np.r_[0.0, pos / pos[-1]]
    precision = np.r_[1.0, pos / (pos + neg)]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def _detection_error(pos, neg):
    return float(min(0.5, np.min(0.5 * (1.0 - pos / pos[-1]) + 0.5 * (neg / neg[-1]))))


def _fpr_at(pos, neg, level, openood):
    """FPR at the first threshold with TPR >= level ("accept nothing" first). ``openood``: on the points
    ``sklearn.metrics.roc_curve`` keeps with its default ``drop_intermediate=True`` (a point whose both
    running totals change by the same amounts as at the step before is dropped), as OpenOOD reads it."""
    if openood and pos.shape[0] > 2:
        keep = np.r_[True, (np.diff(neg, 2) != 0) | (np.diff(pos, 2) != 0), True]
        pos, neg = pos[keep], neg[keep]
    tpr = np.r_[0.0, pos / pos[-1]]
    fpr = np.r_[0.0, neg / neg[-1]]
    return float(fpr[int(np.argmax(tpr >= level))])


def _partial_auc(pos, neg, max_fpr):
    """scikit-learn's standardised partial AUC up to FPR = max_fpr (McClish 1989)."""
    fpr = np.r_[0.0, neg / neg[-1]]
    tpr = np.r_[0.0, pos / pos[-1]]
    stop = int(np.searchsorted(fpr, max_fpr, "right"))
    y = np.interp(max_fpr, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])
    x = np.r_[fpr[:stop], max_fpr]
    y = np.r_[tpr[:stop], y]
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    min_area, max_area = 0.5 * max_fpr ** 2, max_fpr
    return 0.5 * (1.0 + (area - min_area) / (max_area - min_area))


def _check_max_fpr(max_fpr):
    if max_fpr is None:
        return None
    if isinstance(max_fpr, bool) or not isinstance(max_fpr, numbers.Real) or not 0.0 < float(max_fpr) <= 1.0:
        raise ValueError(f"max_fpr must be None or a number in (0, 1], got {max_fpr!r}")
    return None if float(max_fpr) == 1.0 else float(max_fpr)  # 1: the full area, as scikit-learn


def _ood(scores_in, scores_out, *, tpr=0.95, positive=None, aupr=None, convention="calibkit", max_fpr=None,
         sample_weight_in=None, sample_weight_out=None, backend="auto"):
    """(OODMetrics, partial AUC or None): every OOD metric under the chosen convention."""
    tpr = _check_rate(tpr, "tpr")
    convention, positive, aupr = _settings(convention, positive, aupr)
    max_fpr = _check_max_fpr(max_fpr)
    si, so = _in_out(scores_in, scores_out)
    w_in = _side_weight(sample_weight_in, si.shape[0], "sample_weight_in")
    w_out = _side_weight(sample_weight_out, so.shape[0], "sample_weight_out")
    fields = dict(tpr=tpr, positive=positive, aupr_rule=aupr, convention=convention)
    weighted = w_in is not None or w_out is not None
    if not weighted and positive == "in" and aupr == "average_precision" and convention == "calibkit" \
            and max_fpr is None:
        r = _ranking(si, so, "scores_in", "scores_out", tpr=tpr, backend=backend)
        # tpr = 0 is reached by "accept nothing" (FPR 0), before the kernel's first threshold.
        fpr = 0.0 if tpr == 0.0 else r["fpr_at_tpr"]
        return OODMetrics(auroc=r["auroc"], aupr_in=r["ap_pos"], aupr_out=r["ap_neg"], fpr_at_tpr=fpr,
                          detection_error=r["detection_error"], **fields), None
    if weighted:
        tp, fp = _weighted_curve(si, so, *_weights(w_in, w_out, si.shape[0], so.shape[0]))
        flipped = _flip(tp, fp)
        summary = dict(auroc=_roc_area(tp, fp), aupr_in=_average_precision(tp, fp),
                       aupr_out=_average_precision(*flipped), detection_error=_detection_error(tp, fp))
    else:  # the kernel's walk: exact AUROC and AP, and the curve for the rest
        r = _ranking(si, so, "scores_in", "scores_out", tpr=tpr, curve=True, backend=backend)
        tp, fp = r["tp"].astype(np.float64), r["fp"].astype(np.float64)
        flipped = _flip(tp, fp)
        summary = dict(auroc=r["auroc"], aupr_in=r["ap_pos"], aupr_out=r["ap_neg"],
                       detection_error=r["detection_error"])
    if aupr == "trapezoid":
        summary.update(aupr_in=_trapezoid_pr(tp, fp), aupr_out=_trapezoid_pr(*flipped))
    pos, neg = (tp, fp) if positive == "in" else flipped
    fpr = _fpr_at(pos, neg, tpr, openood=convention == "openood")
    partial = None if max_fpr is None else _partial_auc(pos, neg, max_fpr)
    return OODMetrics(fpr_at_tpr=fpr, **summary, **fields), partial


_CONVENTION_DOC = """Conventions. Scores are always "higher = more in-distribution". By default
    (``convention="calibkit"``, ``positive="in"``, ``aupr="average_precision"``)
    the in-distribution samples are the positives and AUPR is the average
    precision (``sklearn.metrics.average_precision_score``), as in Hendrycks &
    Gimpel (2017). ``positive="out"`` makes the out-of-distribution samples the
    positives, detected by low scores: TPR is then the fraction of
    out-of-distribution samples with score <= t and FPR that of
    in-distribution ones (AUROC and the detection error do not change; FPR at
    TPR and the partial AUROC do). ``aupr="trapezoid"`` integrates the
    precision-recall curve from (recall 0, precision 1) by the trapezoid rule
    (``sklearn.metrics.auc(recall, precision)`` on ``precision_recall_curve``),
    which OpenOOD reports. ``convention="openood"`` gives OpenOOD v1.5's
    ``compute_all_metrics`` (Zhang et al. 2023): out-of-distribution positive,
    trapezoidal AUPR-In and AUPR-Out, and FPR at ``tpr`` read on the points that
    ``sklearn.metrics.roc_curve`` keeps by default (``drop_intermediate=True``
    drops each point at which both running counts change by the same amounts
    as at the step before, which can move the first point reaching the TPR
    level one step further and give a larger FPR than ``positive="out"``).

    Weights. ``sample_weight_in`` / ``sample_weight_out`` (one non-negative
    weight per score of that side; either may be left None = all ones) give
    the weighted metrics of ``sklearn.metrics.roc_auc_score`` /
    ``average_precision_score`` / ``roc_curve`` called with the concatenated
    scores and weights; samples of weight 0 are dropped first, as scikit-learn
    does. A side whose weights are all 0 is an error (the metrics need both
    sides). The weighted path sorts in NumPy (``argsort`` of the concatenated
    scores, O(P + N) temporaries); the unweighted one uses the native kernel.
"""


@dataclass(frozen=True)
class OODMetrics:
    """OOD-detection metrics, with the convention they were computed in (see :func:`ood_metrics`).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> m = calibkit.ood_metrics([0.9, 0.8, 0.4], [0.5, 0.3])
    >>> m.auroc, m.tpr
    (0.8333333333333334, 0.95)
    """

    auroc: float            #: area under the ROC curve
    aupr_in: float          #: AUPR, in-distribution as positives
    aupr_out: float         #: AUPR, out-of-distribution as positives (scores negated)
    fpr_at_tpr: float       #: FPR at the first threshold reaching TPR >= tpr (of the ``positive`` side)
    detection_error: float  #: min over thresholds of (1 - TPR) / 2 + FPR / 2
    tpr: float              #: the TPR level of fpr_at_tpr
    positive: str = "in"    #: which side is the positive class of fpr_at_tpr: "in" or "out"
    aupr_rule: str = "average_precision"  #: how both AUPRs integrate: "average_precision" or "trapezoid"
    convention: str = "calibkit"          #: "calibkit" or "openood"


def ood_metrics(scores_in: ArrayLike, scores_out: ArrayLike, *, tpr: float = 0.95, positive: str | None = None,
                aupr: str | None = None, convention: str = "calibkit", sample_weight_in: ArrayLike | None = None,
                sample_weight_out: ArrayLike | None = None, backend: Backend = "auto") -> OODMetrics:
    """All OOD-detection metrics from one sort of each sample.

    With P in- and N out-of-distribution samples, thresholds t running over the
    distinct scores from the highest down, TP(t) = #{{in >= t}}, FP(t) = #{{out >= t}}
    (Hendrycks & Gimpel 2017; Liang et al. 2018; Lee et al. 2018), in the default
    convention (in-distribution positive, AUPR = average precision):

    - AUROC = sum_t (FP(t) - FP(t')) (TP(t) + TP(t')) / (2 P N), t' the previous
      threshold: the trapezoidal ROC area, i.e. P(s_in > s_out) + P(s_in = s_out) / 2.
      Computed with exact integers, then one division.
    - AUPR-In = sum_t (TP(t) - TP(t')) / P * TP(t) / (TP(t) + FP(t)) (average
      precision, as ``sklearn.metrics.average_precision_score``);
      AUPR-Out the same with the out-of-distribution samples as positives and
      the scores negated. With ``aupr="trapezoid"``: the trapezoidal area under
      (recall, precision) = (TP/P, TP/(TP+FP)), starting from (0, 1).
    - FPR at TPR: FP(t)/N at the highest t with TP(t)/P >= ``tpr``
      (``fpr[np.searchsorted(tpr_curve, tpr)]`` on ``sklearn.metrics.roc_curve``).
      The thresholds include "accept nothing" (TPR = FPR = 0, the first point of
      ``roc_curve``), so ``tpr=0`` gives 0.
    - Detection error: min over t, including "accept nothing", of
      (1 - TP(t)/P) / 2 + FP(t) / (2 N), at most 0.5.

    {conventions}
    Parameters
    ----------
    scores_in, scores_out : array-like of shape (P,) and (N,)
        Scores of the in- and out-of-distribution samples, higher = more in-distribution; finite, non-empty.
    tpr : float, default 0.95
        TPR level of ``fpr_at_tpr``, in [0, 1].
    positive : {{"in", "out"}}, optional
        The positive class of ``fpr_at_tpr``; default "in" ("out" with ``convention="openood"``).
    aupr : {{"average_precision", "trapezoid"}}, optional
        The AUPR rule of ``aupr_in`` and ``aupr_out``; default "average_precision" ("trapezoid" for OpenOOD).
    convention : {{"calibkit", "openood"}}, default "calibkit"
        "openood" reproduces OpenOOD v1.5's ``compute_all_metrics`` (FPR@95, AUROC, AUPR-In, AUPR-Out); the
        detection error is calibkit's in both.
    sample_weight_in, sample_weight_out : array-like of shape (P,) and (N,), optional
        Non-negative weights of the scores of each side.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> m = calibkit.ood_metrics(s_in, s_out)
    >>> m.auroc, m.fpr_at_tpr, m.detection_error
    (0.9, 0.25, 0.125)
    >>> o = calibkit.ood_metrics(s_in, s_out, convention="openood")
    >>> o.auroc, o.fpr_at_tpr, round(o.aupr_in, 4), round(o.aupr_out, 4)
    (0.9, 0.4, 0.9183, 0.9083)
    """
    return _ood(scores_in, scores_out, tpr=tpr, positive=positive, aupr=aupr, convention=convention,
                sample_weight_in=sample_weight_in, sample_weight_out=sample_weight_out, backend=backend)[0]


if ood_metrics.__doc__:  # None under python -OO
    ood_metrics.__doc__ = ood_metrics.__doc__.format(conventions=_CONVENTION_DOC)


def _pixel_split(scores, ood_labels, ignore_index, mask):
    """The scores of the counted in- and out-of-distribution pixels of a map (1-D copies)."""
    from ._validation import _as_array, _float_array, _in_place

    s = _in_place(_float_array(scores, "scores"))
    if s.ndim < 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty map of shape (N, *spatial), got shape {s.shape}")
    lab = _as_array(ood_labels, "ood_labels")
    if lab.shape != s.shape:
        raise ValueError(f"ood_labels must have the shape of scores, {s.shape} (N, *spatial), got shape {lab.shape}")
    if lab.dtype == np.bool_:
        lab = lab.view(np.uint8)
    if lab.dtype.kind not in "iu":
        raise TypeError(f"ood_labels must be integers (0 = in-distribution, 1 = out-of-distribution) or booleans, "
                        f"got dtype {lab.dtype}")
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_))
                                     or not isinstance(ignore_index, (int, np.integer))):
        raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, got {type(ignore_index).__name__}")
    keep = np.ones(s.shape, bool) if ignore_index is None else lab != int(ignore_index)
    if mask is not None:
        m = _as_array(mask, "mask")
        if m.shape != s.shape:
            raise ValueError(f"mask must have the shape of scores, {s.shape}, got shape {m.shape}")
        if m.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True where a pixel is counted), got dtype {m.dtype}")
        keep &= m
    bad = keep & (lab != 0) & (lab != 1)
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"ood_labels[{', '.join(map(str, i))}] = {int(lab[i])} is not 0 (in-distribution), "
                         f"1 (out-of-distribution) or ignore_index={ignore_index}")
    nonfinite = keep & ~np.isfinite(s)
    if nonfinite.any():
        i = tuple(int(v) for v in np.argwhere(nonfinite)[0])
        raise ValueError(f"scores[{', '.join(map(str, i))}] = {float(s[i])!r} is not finite (NaN and inf are not "
                         "accepted)")
    is_out = lab == 1
    s_in, s_out = s[keep & ~is_out], s[keep & is_out]
    if s_in.size == 0 or s_out.size == 0:
        side = "in-distribution (label 0)" if s_in.size == 0 else "out-of-distribution (label 1)"
        raise ValueError(f"no counted {side} pixel: per-pixel OOD metrics need both kinds of pixels "
                         f"(after ignore_index / mask)")
    return s_in, s_out


def pixel_ood_metrics(scores: ArrayLike, ood_labels: ArrayLike, *, ignore_index: int | None = 255,
                      mask: ArrayLike | None = None, tpr: float = 0.95, positive: str | None = "out",
                      aupr: str | None = None, convention: str = "calibkit", backend: Backend = "auto"
                      ) -> OODMetrics:
    """Per-pixel OOD detection (anomaly segmentation) metrics of a score map.

    The protocol of the anomaly-segmentation benchmarks (Fishyscapes, Blum et al. 2021; SegmentMeIfYouCan,
    Chan et al. 2021): every pixel is a sample, ``ood_labels`` (the maps' shape ``(N, *spatial)``) says 0 for an
    in-distribution pixel, 1 for an anomaly, and ``ignore_index`` (255, the void label) for a pixel that is
    not counted; ``mask`` (bool, True = counted) leaves out more. The counted pixels of all images are pooled
    (as the benchmarks do) and :func:`ood_metrics` is computed on them, with the anomalies as the positive
    class of ``fpr_at_tpr`` by default (``positive="out"``): ``fpr_at_tpr`` is then the benchmarks' FPR95 (the
    fraction of in-distribution pixels flagged when 95% of the anomaly pixels are), and ``aupr_out`` their
    AUPRC / AP (average precision with the anomalies as positives). ``auroc`` does not depend on the side.

    ``scores`` is a map, higher = more in-distribution: e.g. :func:`calibkit.max_probability` or
    ``-calibkit.energy(...)`` of dense logits (pass minus an anomaly score). The counted pixels' scores are
    copied into one vector per side (memory proportional to N * prod(spatial), not times K), then ranked as
    in :func:`ood_metrics`: the result equals ``ood_metrics(scores[in_pixels], scores[out_pixels])``.

    Parameters
    ----------
    scores : array-like of shape ``(N, *spatial)``
        Per-pixel scores, higher = more in-distribution; finite.
    ood_labels : array-like of shape ``(N, *spatial)``
        0 (in-distribution), 1 (out-of-distribution) or ``ignore_index``; booleans are accepted.
    ignore_index : int or None, default 255
        The void label, never counted.
    mask : bool array-like of shape ``(N, *spatial)``, optional
        True where a pixel is counted.
    tpr, positive, aupr, convention, backend
        As :func:`ood_metrics` (``positive`` defaults to "out" here).

    Returns
    -------
    OODMetrics

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> scores = np.array([[[0.9, 0.8], [0.2, 0.7]]])         # (N=1, H=2, W=2), higher = in-distribution
    >>> labels = np.array([[[0, 0], [1, 255]]])                # one anomaly pixel, one void pixel
    >>> m = calibkit.pixel_ood_metrics(scores, labels)
    >>> m.auroc, m.aupr_out, m.fpr_at_tpr
    (1.0, 1.0, 0.0)
    """
    s_in, s_out = _pixel_split(scores, ood_labels, ignore_index, mask)
    return _ood(s_in, s_out, tpr=tpr, positive=positive, aupr=aupr, convention=convention, backend=backend)[0]


def auroc(scores_in: ArrayLike, scores_out: ArrayLike, *, max_fpr: float | None = None, positive: str = "in",
          sample_weight_in: ArrayLike | None = None, sample_weight_out: ArrayLike | None = None,
          backend: Backend = "auto") -> float:
    """Area under the ROC curve of in- vs out-of-distribution scores (ties count 1/2).

    Equal to ``sklearn.metrics.roc_auc_score(y, s, max_fpr=max_fpr, sample_weight=w)`` with y = 1 for
    in-distribution (``positive="in"``) or y = 1 for out-of-distribution and s negated (``positive="out"``).
    See :func:`ood_metrics` for the formula and the conventions. The full area does not depend on
    ``positive``; the partial one does.

    With ``max_fpr`` = m < 1: the standardised partial AUC of scikit-learn (McClish 1989), from the area A of
    the ROC curve over FPR in [0, m] (the curve interpolated linearly at m):
    0.5 (1 + (A - m^2 / 2) / (m - m^2 / 2)), 0.5 for a random ranking and 1 for a perfect one.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> calibkit.auroc(s_in, s_out)
    0.9
    >>> round(calibkit.auroc(s_in, s_out, max_fpr=0.5), 4)
    0.8667
    """
    check_choice(positive, "positive", _POSITIVES)
    m, partial = _ood(scores_in, scores_out, positive=positive, max_fpr=max_fpr, sample_weight_in=sample_weight_in,
                      sample_weight_out=sample_weight_out, backend=backend)
    return m.auroc if partial is None else partial


def aupr(scores_in: ArrayLike, scores_out: ArrayLike, *, positive: str = "in", aupr: str = "average_precision",
         sample_weight_in: ArrayLike | None = None, sample_weight_out: ArrayLike | None = None,
         backend: Backend = "auto") -> float:
    """Area under the precision-recall curve of the ``positive`` side: :func:`aupr_in` or :func:`aupr_out`.

    ``positive="in"``: the in-distribution samples are the positives, detected by high scores
    (AUPR-In); ``positive="out"``: the out-of-distribution samples, detected by low scores (AUPR-Out).
    ``aupr="average_precision"`` (default, ``sklearn.metrics.average_precision_score``) or
    ``"trapezoid"`` (``sklearn.metrics.auc`` of ``precision_recall_curve``, as OpenOOD). See
    :func:`ood_metrics`.

    Empty samples: with no negatives (``scores_out`` empty for ``positive="in"``,
    ``scores_in`` for ``"out"``) the precision is 1 at every recall and the AUPR
    is 1.0, as scikit-learn gives for an all-positive set. With no positives it
    is undefined (scikit-learn warns and returns 0 or 0.5 depending on the rule):
    a ValueError, as for every other metric here, which all need both samples.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> round(calibkit.aupr(s_in, s_out, positive="out", aupr="trapezoid"), 4)
    0.9083
    """
    check_choice(positive, "positive", _POSITIVES)
    check_choice(aupr, "aupr", _AUPR_RULES)
    sides = {"in": ("scores_in", scores_in, "sample_weight_in", sample_weight_in),
             "out": ("scores_out", scores_out, "sample_weight_out", sample_weight_out)}
    negative = sides["out" if positive == "in" else "in"]
    if np.ndim(negative[1]) == 1 and np.shape(negative[1])[0] == 0:
        # No negatives: every accepted sample is a positive, precision 1 at every recall (scikit-learn's 1.0).
        name, x, weight_name, weight = sides[positive]
        x = check_score_vector(x, name)
        _check_finite(x, name)
        w = _side_weight(weight, x.shape[0], weight_name)
        if w is not None and not w.any():
            raise ValueError(f"{weight_name} sums to 0 (every weight is 0): that side has no samples to rank")
        _side_weight(negative[3], 0, negative[2])
        return 1.0
    m = _ood(scores_in, scores_out, aupr=aupr, sample_weight_in=sample_weight_in,
             sample_weight_out=sample_weight_out, backend=backend)[0]
    return m.aupr_in if positive == "in" else m.aupr_out


def aupr_in(scores_in: ArrayLike, scores_out: ArrayLike, *, aupr: str = "average_precision",
            sample_weight_in: ArrayLike | None = None, sample_weight_out: ArrayLike | None = None,
            backend: Backend = "auto") -> float:
    """AUPR with the in-distribution samples as positives: average precision by default (see :func:`aupr`).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> round(calibkit.aupr_in(s_in, s_out), 4)
    0.9267
    """
    return _aupr_fn(scores_in, scores_out, positive="in", aupr=aupr, sample_weight_in=sample_weight_in,
                   sample_weight_out=sample_weight_out, backend=backend)


def aupr_out(scores_in: ArrayLike, scores_out: ArrayLike, *, aupr: str = "average_precision",
             sample_weight_in: ArrayLike | None = None, sample_weight_out: ArrayLike | None = None,
             backend: Backend = "auto") -> float:
    """AUPR with the out-of-distribution samples as positives, on negated scores (see :func:`aupr`).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> round(calibkit.aupr_out(s_in, s_out), 4)
    0.9167
    """
    return _aupr_fn(scores_in, scores_out, positive="out", aupr=aupr, sample_weight_in=sample_weight_in,
                   sample_weight_out=sample_weight_out, backend=backend)


_aupr_fn = aupr  # the function, for the callers whose `aupr` argument hides it


def fpr_at_tpr(scores_in: ArrayLike, scores_out: ArrayLike, *, tpr: float = 0.95, positive: str | None = None,
               convention: str = "calibkit", sample_weight_in: ArrayLike | None = None,
               sample_weight_out: ArrayLike | None = None, backend: Backend = "auto") -> float:
    """False-positive rate when TPR first reaches ``tpr`` (FPR95 by default).

    ``positive="in"`` (default): the fraction of out-of-distribution samples accepted when a fraction
    ``tpr`` of the in-distribution ones is. ``positive="out"``: the fraction of in-distribution samples
    flagged when a fraction ``tpr`` of the out-of-distribution ones is (low scores flagged first).
    ``convention="openood"``: OpenOOD v1.5's FPR@95 (out-of-distribution positive, on the points
    ``sklearn.metrics.roc_curve`` keeps by default). See :func:`ood_metrics`.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> calibkit.fpr_at_tpr(s_in, s_out, tpr=0.8)
    0.25
    >>> calibkit.fpr_at_tpr(s_in, s_out, tpr=1.0, positive="out")
    0.4
    """
    return _ood(scores_in, scores_out, tpr=tpr, positive=positive, convention=convention,
                sample_weight_in=sample_weight_in, sample_weight_out=sample_weight_out, backend=backend)[0].fpr_at_tpr


def detection_error(scores_in: ArrayLike, scores_out: ArrayLike, *, sample_weight_in: ArrayLike | None = None,
                    sample_weight_out: ArrayLike | None = None, backend: Backend = "auto") -> float:
    """min over thresholds of (1 - TPR) / 2 + FPR / 2 (Liang et al. 2018; Lee et al. 2018).

    The same for either side as the positive class; weights as in :func:`ood_metrics`.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> calibkit.detection_error(s_in, s_out)
    0.125
    """
    return _ood(scores_in, scores_out, sample_weight_in=sample_weight_in, sample_weight_out=sample_weight_out,
                backend=backend)[0].detection_error


# ---------------------------------------------------------------------------------------------
# Selective prediction


@dataclass(frozen=True)
class RiskCoverageCurve:
    """Risk (error rate among accepted) against coverage (fraction accepted), thresholds descending.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> curve = calibkit.risk_coverage_curve([0.9, 0.7, 0.6], [1, 0, 1])
    >>> curve.coverage.round(3), curve.risk.round(3)
    (array([0.333, 0.667, 1.   ]), array([0.   , 0.5  , 0.333]))
    """

    coverage: np.ndarray    #: accepted / N after each threshold
    risk: np.ndarray        #: errors among accepted / accepted
    thresholds: np.ndarray  #: the distinct confidences, highest first


def _selective(confidence, correct, *, curve=False, backend="auto"):
    c = check_score_vector(confidence, "confidence")
    ok = check_correct(correct, c.shape[0])
    return _ranking(c[ok], c[~ok], "confidence", "confidence", curve=curve, backend=backend), c.shape[0], ok


def risk_coverage_curve(confidence: ArrayLike, correct: ArrayLike, *,
                        backend: Backend = "auto") -> RiskCoverageCurve:
    """Risk-coverage curve of selective prediction (Geifman & El-Yaniv 2017).

    Predictions are accepted from the most confident down; predictions of equal
    confidence are accepted together (one point per distinct confidence), so
    the curve does not depend on the order of the samples.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> curve = calibkit.risk_coverage_curve(confidence, correct)
    >>> curve.coverage
    array([0.2, 0.4, 0.6, 0.8, 1. ])
    >>> curve.risk.round(3)
    array([0.   , 0.   , 0.333, 0.25 , 0.4  ])
    """
    r, n, _ = _selective(confidence, correct, curve=True, backend=backend)
    accepted = r["tp"] + r["fp"]
    return RiskCoverageCurve(coverage=accepted / n, risk=r["fp"] / accepted, thresholds=r["thresholds"])


_RULES = ("sum", "trapezoid")


_K_BLOCK = 1 << 20  # predictions per block of the per-prediction curves (bounded temporaries)


def _expected_errors(r, k):
    """E_k for the counts k (ascending, in 1..n): the errors among the k most confident predictions, ties broken
    in random order and averaged (within a tie group the errors are spread evenly: a linear interpolation of
    the running count between the group's ends). Without ties, exactly the running count of errors."""
    ends = r["tp"] + r["fp"]                      # accepted after each tie group
    errors = r["fp"]                              # errors after each tie group
    g = np.searchsorted(ends, k)                  # the group holding the k-th prediction
    start = np.where(g > 0, ends[g - 1], 0)
    e0 = np.where(g > 0, errors[g - 1], 0).astype(np.float64)
    return e0 + (k - start) * ((errors[g] - e0) / (ends[g] - start))


def _blocks(n):
    """k = 1..n in blocks of at most _K_BLOCK."""
    for first in range(1, n + 1, _K_BLOCK):
        yield np.arange(first, min(first + _K_BLOCK, n + 1), dtype=np.int64)


def _trapezoid_mean(curve, n):
    """torch-uncertainty's rule: trapezoids over coverage k/N, k = 1..N, divided by the support 1 - 1/N;
    ``curve(k)`` gives the curve at a block of counts k. Sum y_k - (y_1 + y_N) / 2, over N - 1."""
    if n < 2:
        raise ValueError("rule='trapezoid' needs at least 2 predictions (the curve runs from coverage 1/N to 1)")
    total = sum(float(np.sum(curve(k))) for k in _blocks(n))
    ends = curve(np.array([1, n], dtype=np.int64))
    return (total - 0.5 * float(ends[0] + ends[1])) / (n - 1)


def _area(r, n, rule, generalized):
    """AURC (generalized=False) or AUGRC (True) of the kernel's walk under `rule`."""
    if rule == "sum":
        if not generalized:
            return float(r["aurc"])
        ends = r["tp"] + r["fp"]
        size = np.diff(np.r_[0, ends]).astype(np.float64)
        return float(np.sum(size * r["fp"]) / n / n)
    if generalized:
        return _trapezoid_mean(lambda k: _expected_errors(r, k) / n, n)
    return _trapezoid_mean(lambda k: _expected_errors(r, k) / k, n)


def _selective_rule(rule):
    return check_choice(rule, "rule", _RULES)


def aurc(confidence: ArrayLike, correct: ArrayLike, *, rule: str = "sum", backend: Backend = "auto") -> float:
    """Area under the risk-coverage curve (Geifman et al. 2019, "Bias-reduced uncertainty estimation").

    ``rule="sum"`` (default): AURC = (1/N) sum_k risk_k, where risk_k is the
    error rate among the k most confident predictions (Geifman's sum). Tied
    confidences are accepted together: each of the n_g predictions of a tie
    group counts the risk after the whole group, AURC = sum_g (n_g / N) risk_g.
    Without ties this is exactly Geifman's sum.

    ``rule="trapezoid"``: the trapezoidal area over the points (k/N, risk_k),
    k = 1..N, divided by the support 1 - 1/N:
    AURC = 1/(N - 1) sum_{k<N} (risk_k + risk_{k+1}) / 2, as
    ``torch_uncertainty.metrics.AURC`` (needs N >= 2). Ties: the errors of a
    tie group are spread evenly over its predictions (the average over random
    orders of the tie, so the result does not depend on the sample order);
    without ties this is exactly torch-uncertainty's value.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> round(calibkit.aurc(confidence, correct), 4)
    0.1967
    >>> round(calibkit.aurc(confidence, correct, rule="trapezoid"), 4)
    0.1958
    """
    rule = _selective_rule(rule)
    r, n, _ = _selective(confidence, correct, curve=rule == "trapezoid", backend=backend)
    return _area(r, n, rule, generalized=False)


def augrc(confidence: ArrayLike, correct: ArrayLike, *, rule: str = "sum", backend: Backend = "auto") -> float:
    """Area under the generalized risk-coverage curve (Traub et al. 2024).

    "Overcoming common flaws in the evaluation of selective classification
    systems": the generalized risk at coverage k/N is the joint probability of
    an error and its acceptance, E_k / N, with E_k the errors among the k most
    confident predictions (the risk of :func:`aurc` times the coverage).
    ``rule="sum"`` (default, the same rule as :func:`aurc`):
    AUGRC = (1/N) sum_k E_k / N, tie groups accepted together
    (sum_g (n_g / N) E_g / N). ``rule="trapezoid"``: the trapezoids over
    (k/N, E_k/N), k = 1..N, divided by 1 - 1/N, as
    ``torch_uncertainty.metrics.AUGRC`` (needs N >= 2; ties spread evenly as
    in :func:`aurc`). 0 for a classifier without errors; for a perfect ranking
    of N_e errors among N, (sum_{j=1}^{N_e} j) / N^2 with the sum rule.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> round(calibkit.augrc(confidence, correct), 4)
    0.16
    >>> round(calibkit.augrc(confidence, correct, rule="trapezoid"), 4)
    0.15
    """
    rule = _selective_rule(rule)
    r, n, _ = _selective(confidence, correct, curve=True, backend=backend)
    return _area(r, n, rule, generalized=True)


def e_aurc(confidence: ArrayLike, correct: ArrayLike, *, rule: str = "sum", backend: Backend = "auto") -> float:
    """Excess AURC: AURC minus the AURC of a perfect ranking of the same predictions (Geifman et al. 2019).

    The perfect ranking accepts the N_c correct predictions first. With ``rule="sum"`` (default):
    AURC* = (1/N) sum_{k=N_c+1}^{N} (k - N_c) / k = (N_e - N_c (H_N - H_{N_c})) / N,
    with H the harmonic numbers and N_e = N - N_c. Its limit for large N is
    the paper's r + (1 - r) log(1 - r), r the error rate; the exact finite form
    makes E-AURC 0 for a perfect ranking. With ``rule="trapezoid"`` both areas
    use the trapezoid rule of :func:`aurc`.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> round(calibkit.e_aurc(confidence, correct), 4)
    0.0667
    """
    rule = _selective_rule(rule)
    r, n, ok = _selective(confidence, correct, curve=rule == "trapezoid", backend=backend)
    n_correct = int(ok.sum())
    if rule == "sum":
        return float(r["aurc"] - _optimal_aurc(n_correct, n))
    optimal = _trapezoid_mean(lambda k: np.maximum(k - n_correct, 0) / k, n)
    return _area(r, n, rule, generalized=False) - optimal


def _optimal_aurc(n_correct, n):
    if n_correct == n:
        return 0.0
    from scipy.special import digamma

    harmonic = float(digamma(n + 1) - digamma(n_correct + 1))  # H_n - H_{n_correct}
    return ((n - n_correct) - n_correct * harmonic) / n


def _check_level(value, name, low_open):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            (0.0 < float(value) if low_open else 0.0 <= float(value)) and float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return float(value)


def _count_at(coverage, n):
    """The smallest k in 1..n with k / n >= coverage (in floating point)."""
    k = min(max(math.ceil(coverage * n), 1), n)
    while k > 1 and (k - 1) / n >= coverage:
        k -= 1
    while k < n and k / n < coverage:
        k += 1
    return k


def risk_at_coverage(confidence: ArrayLike, correct: ArrayLike, coverage: float, *,
                     backend: Backend = "auto") -> float:
    """Error rate among the k = ceil(coverage N) most confident predictions (selective risk at a coverage).

    As ``torch_uncertainty.metrics.RiskAtxCov``: risk_k = E_k / k, E_k the errors
    among the k most confident of the N predictions, k the smallest count whose
    coverage k / N (in floating point) reaches ``coverage``. torch-uncertainty
    takes ``ceil(coverage * N)``, which the rounding of the product can make one
    more (k = 8 for 0.7 x 10, as 0.7 * 10 = 7.000000000000001); it also reads
    coverage 0 as the full risk: here coverage must be in (0, 1]. Ties: the errors of a tie group cut by k are spread
    evenly over it (the average over random orders of the tie), so the
    result does not depend on the sample order.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> calibkit.risk_at_coverage(confidence, correct, 0.6)
    0.3333333333333333
    """
    coverage = _check_level(coverage, "coverage", low_open=True)
    r, n, _ = _selective(confidence, correct, curve=True, backend=backend)
    k = _count_at(coverage, n)
    return float(_expected_errors(r, np.array([k]))[0] / k)


def coverage_at_risk(confidence: ArrayLike, correct: ArrayLike, risk: float, *,
                     backend: Backend = "auto") -> float:
    """The largest coverage k/N whose selective risk E_k / k is at most ``risk`` (NaN if none is).

    As ``torch_uncertainty.metrics.CovAtxRisk``: the risk-coverage curve need
    not be monotone; this is the largest k with risk_k <= ``risk`` (in [0, 1]),
    and NaN when even the most confident prediction alone is above it. Ties
    as in :func:`risk_at_coverage` (errors of a tie group spread evenly).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> calibkit.coverage_at_risk(confidence, correct, 0.3)
    0.8
    """
    risk = _check_level(risk, "risk", low_open=False)
    r, n, _ = _selective(confidence, correct, curve=True, backend=backend)
    best = 0
    for k in _blocks(n):
        admissible = np.flatnonzero(_expected_errors(r, k) <= risk * k)
        if admissible.size:
            best = int(k[admissible[-1]])
    return best / n if best else float("nan")


# ---------------------------------------------------------------------------------------------
# Streaming


def _bucket_keys(x, shift):
    """Order-preserving integer key of each value's bucket: its float64 bits without the low `shift` mantissa bits."""
    bits = (np.asarray(x, dtype=np.float64) + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into +0.0
    negative = (bits >> np.uint64(63)).astype(bool)
    keys = np.where(negative, ~bits, bits | np.uint64(1 << 63))
    return keys >> np.uint64(shift)


def _add_counts(keys, counts, new_keys, new_counts):
    k = np.concatenate([keys, new_keys])
    c = np.concatenate([counts, new_counts])
    order = np.argsort(k, kind="stable")
    k, c = k[order], c[order]
    if k.size == 0:
        return k, c
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    return k[starts], np.add.reduceat(c, starts)


@dataclass(frozen=True)
class OODBounds:
    """Proven bounds on |streaming estimate - exact value| of each :class:`OODMetrics` field.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> acc = calibkit.OODAccumulator(precision_bits=8).update([0.9, 0.8, 0.4], [0.5, 0.3])
    >>> acc.bounds().auroc >= 0
    True
    """

    auroc: float
    aupr_in: float
    aupr_out: float
    fpr_at_tpr: float
    detection_error: float


class OODAccumulator:
    """Streaming OOD-detection metrics from fine histograms of the two score distributions.

    Each score falls in a bucket of relative width 2^-precision_bits (its float64
    value with the low mantissa bits dropped: the same relative resolution at
    every scale, for any sign); the state keeps the occupied buckets only and
    their in / out counts. ``update`` adds scores, ``merge`` (or ``+``) adds
    another state, ``to_bytes`` / ``from_bytes`` store it in the checksummed
    format of :class:`calibkit.CalibrationAccumulator`. ``compute()`` gives the
    metrics of the data with every score replaced by its bucket (scores in one
    bucket are ties), and ``bounds()`` how far each can be from the exact value
    on the raw scores:

    - AUROC: half the fraction of (in, out) pairs sharing a bucket,
      sum_b n_in(b) n_out(b) / (2 P N) (those pairs count 1/2 instead of 0 or 1);
    - FPR at TPR: n_out(b*) / N, b* the bucket where TPR crosses the level;
    - detection error: max_b min(n_in(b)/P, n_out(b)/N) / 2;
    - AP: sum_b n_pos(b)/P (hi_b - lo_b), where [lo_b, hi_b] is the range of
      precisions that an ordering inside bucket b can give its positives.

    The bounds are 0 when no bucket mixes values that the exact metric would
    separate, and shrink as ``precision_bits`` grows (the state grows with the
    number of occupied buckets, at most 2^(precision_bits+1) per octave of scores).

    Parameters
    ----------
    precision_bits : int, default 12
        Bucket resolution, an integer in [1, ``MAX_PRECISION_BITS`` = 40].

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> s_in, s_out = rng.normal(1.0, 1.0, 10_000), rng.normal(0.0, 1.0, 10_000)
    >>> acc = calibkit.OODAccumulator(precision_bits=12)
    >>> acc = acc.update(s_in[:5000], s_out[:5000]).update(s_in[5000:], s_out[5000:])
    >>> abs(acc.compute().auroc - calibkit.auroc(s_in, s_out)) <= acc.bounds().auroc
    True
    >>> round(acc.compute().auroc, 3)
    0.762
    """

    _KIND = "OODAccumulator"

    def __init__(self, *, precision_bits: int = 12):
        if isinstance(precision_bits, (bool, np.bool_)) or not isinstance(precision_bits, numbers.Integral) \
                or not 1 <= precision_bits <= MAX_PRECISION_BITS:
            raise ValueError(f"precision_bits must be an integer in [1, {MAX_PRECISION_BITS}], got {precision_bits!r}")
        self.precision_bits = int(precision_bits)
        self.reset()

    @property
    def _shift(self):
        return 52 - self.precision_bits

    def reset(self) -> None:
        """Forget all scores."""
        empty = np.empty(0, np.uint64), np.empty(0, np.int64)
        self._hist = {"in": empty, "out": empty}
        self._pending = {"in": [], "out": []}
        self._pending_size = 0

    def update(self, scores_in: ArrayLike | None = None, scores_out: ArrayLike | None = None) -> "OODAccumulator":
        """Add in-distribution and/or out-of-distribution scores (1-D, finite)."""
        batches = {}
        for side, name, x in (("in", "scores_in", scores_in), ("out", "scores_out", scores_out)):
            if x is None:
                continue
            a = check_score_vector(x, name)
            finite = np.isfinite(a)
            if not finite.all():
                i = int(np.argmin(finite))
                raise ValueError(f"{name}[{i}] = {float(a[i])!r} is not finite (NaN and inf are not accepted)")
            batches[side] = _bucket_keys(a, self._shift)
        for side, keys in batches.items():  # only after both sides are checked
            self._pending[side].append(keys)
            self._pending_size += keys.size
        if self._pending_size > max(1 << 16, self._hist["in"][0].size + self._hist["out"][0].size):
            self._compact()
        return self

    def _compact(self):
        for side in ("in", "out"):
            if self._pending[side]:
                keys, counts = np.unique(np.concatenate(self._pending[side]), return_counts=True)
                self._hist[side] = _add_counts(*self._hist[side], keys, counts.astype(np.int64))
                self._pending[side] = []
        self._pending_size = 0

    def _histograms(self):
        self._compact()
        return self._hist["in"], self._hist["out"]

    @property
    def count_in(self) -> int:
        """Number of in-distribution scores seen."""
        return int(self._histograms()[0][1].sum())

    @property
    def count_out(self) -> int:
        """Number of out-of-distribution scores seen."""
        return int(self._histograms()[1][1].sum())

    def merge(self, other: "OODAccumulator") -> "OODAccumulator":
        """Add the scores of another accumulator (same precision_bits) to this one."""
        if not isinstance(other, OODAccumulator):
            raise TypeError(f"can only merge an OODAccumulator, got {type(other).__name__}")
        if other.precision_bits != self.precision_bits:
            raise ValueError(f"cannot merge states with precision_bits {self.precision_bits} and "
                             f"{other.precision_bits}")
        (ki, ci), (ko, co) = other._histograms()
        self._compact()
        self._hist["in"] = _add_counts(*self._hist["in"], ki, ci)
        self._hist["out"] = _add_counts(*self._hist["out"], ko, co)
        return self

    def copy(self) -> "OODAccumulator":
        new = OODAccumulator(precision_bits=self.precision_bits)
        return new.merge(self)

    def __add__(self, other):
        return self.copy().merge(other)

    def __iadd__(self, other):
        return self.merge(other)

    def _table(self):
        """Union of buckets, highest first: n_in and n_out per bucket."""
        (ki, ci), (ko, co) = self._histograms()
        if ci.sum() == 0 or co.sum() == 0:
            raise ValueError("both in- and out-of-distribution scores are needed (count_in="
                             f"{int(ci.sum())}, count_out={int(co.sum())})")
        keys = np.union1d(ki, ko)[::-1]
        n_in = np.zeros(keys.size)
        n_out = np.zeros(keys.size)
        # keys are descending: search in the ascending reversed copy
        asc = keys[::-1]
        n_in[keys.size - 1 - np.searchsorted(asc, ki)] = ci
        n_out[keys.size - 1 - np.searchsorted(asc, ko)] = co
        return keys, n_in, n_out

    @staticmethod
    def _average_precision(pos, neg):
        """AP of tied groups (rows in walk order), and its bound."""
        P = pos.sum()
        tp = np.cumsum(pos)
        fp = np.cumsum(neg)
        tp0, fp0 = tp - pos, fp - neg
        has = pos > 0
        pos, neg, tp, fp, tp0, fp0 = pos[has], neg[has], tp[has], fp[has], tp0[has], fp0[has]
        ap = np.sum(pos * (tp / (tp + fp))) / P
        hi = (tp0 + pos) / (tp0 + pos + fp0)
        lo = (tp0 + 1) / (tp0 + 1 + fp0 + neg)
        bound = np.sum(pos * (hi - lo)) / P
        return float(ap), float(bound)

    def _compute(self, tpr):
        keys, n_in, n_out = self._table()
        P, N = n_in.sum(), n_out.sum()
        tp, fp = np.cumsum(n_in), np.cumsum(n_out)
        tp0 = tp - n_in
        au = float(np.sum(n_out * (tp + tp0)) / (2 * P * N))
        ap_in, ap_in_bound = self._average_precision(n_in, n_out)
        ap_out, ap_out_bound = self._average_precision(n_out[::-1], n_in[::-1])
        tpr_curve = tp / P
        at = int(np.argmax(tpr_curve >= tpr))
        fpr = 0.0 if tpr == 0.0 else float(fp[at] / N)  # tpr = 0: "accept nothing", as ood_metrics
        err = float(min(0.5, np.min(0.5 * (1 - tp / P) + 0.5 * fp / N)))
        metrics = OODMetrics(auroc=au, aupr_in=ap_in, aupr_out=ap_out, fpr_at_tpr=fpr, detection_error=err, tpr=tpr)
        bounds = OODBounds(auroc=float(np.sum(n_in * n_out) / (2 * P * N)), aupr_in=ap_in_bound,
                           aupr_out=ap_out_bound, fpr_at_tpr=0.0 if tpr == 0.0 else float(n_out[at] / N),
                           detection_error=float(0.5 * np.max(np.minimum(n_in / P, n_out / N))))
        return metrics, bounds

    def compute(self, *, tpr: float = 0.95) -> OODMetrics:
        """The metrics of the bucketed scores (see the class docstring and :meth:`bounds`)."""
        return self._compute(_check_rate(tpr, "tpr"))[0]

    def bounds(self, *, tpr: float = 0.95) -> OODBounds:
        """Bounds on |compute() - exact| for each metric (see the class docstring)."""
        return self._compute(_check_rate(tpr, "tpr"))[1]

    # -- persistence --------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The state in calibkit's versioned, checksummed binary format."""
        from .streaming import encode_state

        (ki, ci), (ko, co) = self._histograms()
        return encode_state(self._KIND, {"precision_bits": self.precision_bits},
                            {"keys_in": ki.astype(np.float64), "counts_in": ci.astype(np.float64),
                             "keys_out": ko.astype(np.float64), "counts_out": co.astype(np.float64)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "OODAccumulator":
        """Rebuild a state written by :meth:`to_bytes`; malformed data raises ValueError.

        Besides the checks of the format (see :func:`calibkit.streaming.decode_state`), the state must be
        one that scores can produce: bucket keys of finite float64 values at this precision, strictly
        increasing, counts whole numbers >= 1 adding up to less than 2**53 per side.
        """
        from .streaming import decode_state

        kind, meta, arrays = decode_state(data)
        if kind != cls._KIND:
            raise ValueError(f"state holds a {kind}, not an {cls._KIND}")
        if set(meta) != {"precision_bits"}:
            raise ValueError(f"corrupt OOD state: header keys {sorted(meta)}, expected ['precision_bits']")
        bits = meta["precision_bits"]
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_PRECISION_BITS:
            raise ValueError(f"corrupt OOD state: precision_bits = {bits!r} is not an integer in "
                             f"[1, {MAX_PRECISION_BITS}]")
        expected = {f"{a}_{side}" for a in ("keys", "counts") for side in ("in", "out")}
        if set(arrays) != expected:
            raise ValueError(f"corrupt OOD state: arrays {sorted(arrays)}, expected {sorted(expected)}")
        acc = cls(precision_bits=bits)
        # Keys of finite scores lie between those of the most negative and the largest finite float64.
        lowest, highest = (float(k) for k in _bucket_keys(np.array([-np.finfo(np.float64).max,
                                                                      np.finfo(np.float64).max]), acc._shift))
        for side in ("in", "out"):
            keys, counts = arrays[f"keys_{side}"], arrays[f"counts_{side}"]
            if keys.ndim != 1 or keys.shape != counts.shape:
                raise ValueError(f"corrupt OOD state: bad {side} histogram shapes {keys.shape} and {counts.shape}")
            if not (np.all(keys >= lowest) and np.all(keys <= highest) and np.all(keys == np.floor(keys))
                    and np.all(np.diff(keys) > 0)):
                raise ValueError(f"corrupt OOD state: bad {side} bucket keys (not increasing whole numbers "
                                 "of finite scores)")
            if not (np.all(counts >= 1) and np.all(counts == np.floor(counts)) and counts.sum() < 2.0 ** 53):
                raise ValueError(f"corrupt OOD state: bad {side} counts (whole numbers >= 1 adding up to "
                                 "less than 2**53)")
            acc._hist[side] = keys.astype(np.uint64), counts.astype(np.int64)
        return acc

    def __reduce__(self):
        return (OODAccumulator.from_bytes, (self.to_bytes(),))

    def __repr__(self) -> str:
        return (f"OODAccumulator(precision_bits={self.precision_bits}, count_in={self.count_in}, "
                f"count_out={self.count_out})")


__all__ = [
    "OODAccumulator", "OODBounds", "OODMetrics", "RiskCoverageCurve", "aupr", "aupr_in", "aupr_out", "aurc", "auroc",
    "augrc", "coverage_at_risk", "detection_error", "e_aurc", "fpr_at_tpr", "ood_metrics", "pixel_ood_metrics",
    "risk_at_coverage",
    "risk_coverage_curve",
]
