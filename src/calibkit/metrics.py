"""Calibration-error metrics, reliability tables, Brier score and NLL.

Every function reads ``scores`` once in a native kernel (C++ or Numba), in
place, whatever its float dtype, strides or memory mapping, and reduces it to
per-bin sums (count, weight, sum of confidences, sum of correctness) and a
few totals; the metrics are computed from those small arrays.

Conventions
-----------
*Top-label* (``scores`` of shape (N, K)): the confidence of a row is its
largest probability and the row is correct when its argmax (first index on
ties, as :func:`numpy.argmax`) equals the label (Guo et al. 2017).

*Binary* (``scores`` of shape (N,), the probability of class 1): the score
itself is binned against the 0/1 label (positive-class calibration, as
:func:`sklearn.calibration.calibration_curve` and torchmetrics'
``binary_calibration_error`` define it). Pass an (N, 2) array for the
top-label view of a binary problem.

*Bins*: ``strategy="uniform"`` uses M equal-width bins
I_m = ((m-1)/M, m/M] with a confidence of exactly 0 in the first bin
(Naeini et al. 2015; Guo et al. 2017); the edges m/M are correctly rounded.
``strategy="quantile"`` uses equal-mass bins (Nixon et al. 2019, "adaptive
ECE"): edges are the quantiles ``numpy.quantile(confidences, linspace(0, 1,
M + 1))`` (linear interpolation, the method of
``calibration_curve(strategy="quantile")``, which computes them as
``numpy.percentile(confidences, linspace(0, 1, M + 1) * 100)``: the scaling
by 100 can move an edge by one ulp, so when an edge falls on a data point
the two may put that point one bin apart; calibkit keeps the unscaled,
more exact quantiles) and bins are again left-open ((e_{m-1}, e_m], the smallest confidence in the
first bin). With ``sample_weight`` the quantiles are weighted
(``method="inverted_cdf"``, the only weighted method NumPy offers). Ties can
make quantile bins empty; empty bins are skipped.
``strategy="quantile_midpoint"`` uses uncertainty-calibration's equal-count
bins (see :func:`calibration_error`). ``n_bins`` may also be a rule,
``"cube_root"``, ``"sqrt"`` or ``"sweep"``, resolved from the rows.

With n = Σ_m w(B_m) the total weight, acc(B_m) and conf(B_m) the weighted mean
correctness and confidence of bin m::

    ECE   = Σ_m w(B_m)/n · |acc(B_m) − conf(B_m)|                 (norm="l1")
    RMSCE = sqrt(Σ_m w(B_m)/n · (acc(B_m) − conf(B_m))²)          (norm="l2")
    MCE   = max over non-empty m of |acc(B_m) − conf(B_m)|        (norm="max")

Dense predictions
-----------------
Every function here also takes segmentation maps: scores of shape
``(N, K, *spatial)`` (``axis=1``, the default) or ``(N, *spatial, K)``
(``axis=-1``) with labels (and ``mask``, ``sample_weight``) of shape
``(N, *spatial)``; every pixel (voxel) is a row. ``ignore_index`` (e.g. 255) and
``mask`` leave pixels out (also for (N, K) input). The class axis is read
with its stride, a piece of at most 4 MB of scores at a time (and at least
2**14 pixels): no transposed
or flattened copy of the scores is made; only pieces with ignored pixels
are gathered (their kept rows, one piece at a time). The results are those
of the same function on the explicitly flattened (N·H·W, K) copy with the
ignored pixels removed:

* equal-width bins, Brier score and NLL: the kernel's sums of each piece are
  added piece by piece, so the result equals the flattened computation to
  rounding (relative 1e-12; bit for bit when the input is one piece: at
  most 4 MB of scores, and at least 2**14 pixels);
* equal-mass bins (``strategy="quantile"``, ``"quantile_midpoint"``),
  ``n_bins="sweep"``, ``conditional_on_prediction`` and the debiased error
  with weights: each kept pixel's confidence and correctness (and weight,
  and predicted class) are written piece by piece into vectors of N·H·W
  values (17 bytes a pixel, not ·K), then binned as on (N, K) input: the
  same bits;
* bootstrap intervals (``ci``): the pieces are the stream's batches in row
  order, so every pixel gets the Poisson multiplicities of its row in the
  flattened copy: the same interval (the value to rounding).

``reduce="pooled"`` (the default) counts every kept pixel once, one set of
bins over all pixels, which is what most segmentation calibration papers
report; ``reduce="per_image"`` computes the metric on each image alone and
averages over the images that have a kept pixel (per-case metrics, common in
medical imaging). Class-wise errors never count ignored pixels, so the
ignore label is excluded from the classes.

Differences from the peers (each shown by a test)
-------------------------------------------------
* torchmetrics bins with ``torch.bucketize(..., right=True) - 1`` on
  ``linspace(0, 1, M + 1)``: bins are [lo, hi), and a confidence of exactly
  1.0 falls into an extra bin of its own. Results agree when no confidence
  lies on an edge or at 1.0.
* netcal clips confidences to [eps, 1 − eps] (eps = float32 eps) before
  binning; results agree when no confidence is within eps of 0 or 1.
* scikit-learn's ``calibration_curve(strategy="uniform")`` uses edges from
  ``numpy.linspace``, which can differ from m/M in the last bit; a confidence
  exactly on such an edge may then land one bin apart.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _backend
from ._dense import PIECE_ROWS, as_dense
from ._typing import ArrayLike, Backend, Norm, Strategy, StrPath
from ._validation import (
    MAX_BINS,
    MAX_SWEEP_BINS,
    MIN_STREAM_WEIGHT,
    ROW_SUM_TOLERANCE,
    WEIGHT_NEGATIVE,
    WEIGHT_NOT_FINITE,
    BadElementError,
    check_bool,
    check_bootstrap,
    check_cells,
    check_choice,
    check_probability_rows,
    check_labels,
    check_n_bins,
    check_sample_weight,
    check_scores,
    raise_for_status,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

STRATEGIES = ("uniform", "quantile", "quantile_midpoint")
NORMS = ("l1", "l2", "max")

__all__ = [
    "CalibrationErrorResult",
    "ReliabilityTable",
    "brier_score",
    "calibration_error",
    "classwise_calibration_error",
    "debiased_calibration_error",
    "ece",
    "mce",
    "nll",
    "reliability_table",
]


# ----------------------------------------------------------------------------
# Input handling and the kernel calls
# ----------------------------------------------------------------------------


# A probability of 0 for the true class has an infinite NLL; clip it at the
# machine epsilon of the input dtype, as sklearn.metrics.log_loss does.
_NLL_EPS = {np.dtype(t): float(np.finfo(t).eps) for t in (np.float16, np.float32, np.float64)}


def _nll_eps(dtype) -> float:
    eps = _NLL_EPS.get(dtype)
    return float(np.finfo(dtype).eps) if eps is None else eps


def _prepare(scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None, from_logits: bool,
             scale_weights: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """Checked inputs. ``scale_weights``: divide the weights by their largest (every metric here is
    invariant to their scale; a streaming update, whose batches weigh against each other, must not)."""
    scores = check_scores(scores)
    if from_logits is not True and from_logits is not False:
        from_logits = check_bool(from_logits, "from_logits")
    labels = check_labels(labels, scores.shape[0])
    if sample_weight is not None:
        sample_weight = check_sample_weight(sample_weight, scores.shape[0], scale=scale_weights)
    return scores, labels, sample_weight, from_logits


def _binary_probabilities(scores, from_logits):
    """(N,) scores as P(y=1); logits go through the logistic function (an (N,) float64 array)."""
    if not from_logits:
        return scores
    from scipy.special import expit  # imported here: SciPy costs ~0.2 s at import and most calls never need it

    z = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(z).all():
        bad = int(np.argmin(np.isfinite(z)))
        raise_for_status((1, bad, -1, float(z[bad])))
    return expit(z)


def _quantile_positions(n, n_bins):
    if n_bins <= 1024:  # cached for the usual bin counts (a few KB each)
        return _cached_quantile_positions(n, n_bins)
    return _quantile_positions_of(n, n_bins)


def _quantile_positions_of(n, n_bins):
    """numpy.quantile's (method="linear") neighbours and weights of the M + 1 quantiles linspace(0, 1, M + 1)
    of n sorted values: indices ``below``, ``above`` and ``gamma``, computed as NumPy computes them (read-only,
    shared)."""
    virtual = (n - 1) * np.linspace(0.0, 1.0, n_bins + 1)
    below = np.floor(virtual)
    at_end = virtual >= n - 1  # NumPy takes the last value there (both neighbours -1)
    below[at_end] = -1
    above = below + 1
    above[at_end] = -1
    gamma = virtual - below
    out = (below.astype(np.intp), above.astype(np.intp), gamma, gamma >= 0.5)
    for a in out:
        a.setflags(write=False)
    return out


_cached_quantile_positions = functools.lru_cache(maxsize=64)(_quantile_positions_of)


def _linear_quantiles(values, n_bins):
    """``numpy.quantile(values, linspace(0, 1, M + 1))`` (method="linear"), the same bits, at a fraction of its
    fixed cost (a sort and five small NumPy calls; the positions are cached by (n, M)): NumPy's _lerp,
    a + (b - a) * gamma, or b - (b - a) * (1 - gamma) where gamma >= 0.5."""
    return _linear_quantiles_sorted(np.sort(values), n_bins)


def _linear_quantiles_sorted(v, n_bins):
    """:func:`_linear_quantiles` of values already sorted."""
    below, above, gamma, upper = _quantile_positions(v.shape[0], n_bins)
    a = v[below]
    b = v[above]
    diff = b - a
    out = a + diff * gamma
    np.subtract(b, diff * (1 - gamma), out=out, where=upper)
    return out


def _quantile_edges(values, weights, n_bins):
    if weights is None:
        edges = _linear_quantiles(values, n_bins)
    else:
        q = np.linspace(0.0, 1.0, n_bins + 1)
        if not weights.any():
            raise ValueError("sample_weight sums to 0: no weighted rows to bin")
        edges = np.quantile(values, q, weights=weights, method="inverted_cdf")
    return np.ascontiguousarray(edges, dtype=np.float64)


@dataclasses.dataclass
class _Binned:
    edges: np.ndarray  # (M + 1,)
    count: np.ndarray
    weight: np.ndarray
    sum_confidence: np.ndarray
    sum_accuracy: np.ndarray
    totals: dict
    sq_weight: np.ndarray | None = None  # Σ w² per bin (square_weights=True with sample weights only)

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])


def _binned(scores, labels, sample_weight, *, n_bins, strategy, from_logits, backend,
            square_weights=False) -> _Binned:
    """Validate the inputs and run the kernels: per-bin sums and totals.

    ``n_bins`` may be a rule of :data:`BIN_RULES` (resolved here from the rows). ``square_weights``: also
    Σ w² per bin when there are sample weights (a second binning pass over the N confidences, with w² as
    the weights: the same kernel and so the same bins).
    """
    rule = check_n_bins(n_bins, rules=True)
    check_choice(strategy, "strategy", STRATEGIES)
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    squares = square_weights and sample_weight is not None
    vectors = strategy != "uniform" or rule == "sweep" or squares
    if scores.ndim == 1:
        probs = _binary_probabilities(scores, from_logits)
        eps = _nll_eps(probs.dtype)
        if vectors:
            # Validate the whole input (labels, weights, values) before using it.
            first = k.binary_stats(probs, labels, sample_weight, 0, None, eps, False)  # with_nll=False
            raise_for_status(first["status"], binary=True)
        n_bins = resolve_n_bins(rule, probs, labels, sample_weight, strategy)
        edges = _strategy_edges(probs, sample_weight, n_bins, strategy)
        n_bins = n_bins if edges is None else edges.shape[0] - 1  # quantile_midpoint can merge bins
        r = k.binary_stats(probs, labels, sample_weight, n_bins, edges, eps, False)  # no NLL: a log per row saved
        raise_for_status(r["status"], binary=True)
        conf, target = probs, labels
    else:
        eps = _nll_eps(scores.dtype)
        if not vectors:
            if isinstance(rule, str):  # cube_root / sqrt: N is known before the pass
                n_bins = resolve_n_bins(rule, None, None, None, strategy, n_rows=scores.shape[0])
            # with_nll=False, with_brier=False given by position (a keyword argument costs a pybind11 call a few
            # microseconds): only the bins and totals["weight"] are used, so the rows' squares are skipped
            r = k.top_label_stats(scores, labels, sample_weight, from_logits, n_bins, eps, False, None, None, 1.0, 0,
                                  None, False)
            raise_for_status(r["status"], n_classes=scores.shape[1])
            edges = None
        else:
            # One pass writes each row's confidence and correctness (N values,
            # not N x K), then those N values are binned.
            n = scores.shape[0]
            conf = np.empty(n, np.float64)
            target = np.empty(n, np.uint8)
            # with_nll=False, conf_out, correct_out by position (keywords cost a pybind11 call microseconds)
            first = k.top_label_stats(scores, labels, sample_weight, from_logits, 0, eps, False, conf, target)
            raise_for_status(first["status"], n_classes=scores.shape[1])
            n_bins = resolve_n_bins(rule, conf, target, sample_weight, strategy)
            edges = _strategy_edges(conf, sample_weight, n_bins, strategy)
            n_bins = n_bins if edges is None else edges.shape[0] - 1
            r = k.binary_stats(conf, target, sample_weight, n_bins, edges, eps, False)
            raise_for_status(r["status"])
            r["totals"] = first["totals"]
    totals = r["totals"]
    if not totals["weight"] > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    sq_weight = None
    if squares:
        sq_weight = k.binary_stats(conf, target, sample_weight * sample_weight, n_bins, edges, eps, False)["weight"]
    return _Binned(
        edges=_equal_width_edges(n_bins) if edges is None else edges,
        count=r["count"],
        weight=r["weight"],
        sum_confidence=r["sum_score"],
        sum_accuracy=r["sum_target"],
        totals=totals,
        sq_weight=sq_weight,
    )


def _strategy_edges(values, weights, n_bins, strategy):
    """The M + 1 edges of ``strategy`` over the confidences ``values`` (None: equal width, the kernels' own)."""
    if strategy == "uniform":
        return None
    if strategy == "quantile":
        return _quantile_edges(values, weights, n_bins)
    return _midpoint_edges(values, n_bins)


def _midpoint_edges(values, n_bins):
    """Edges of ``strategy="quantile_midpoint"``: uncertainty-calibration's ``get_equal_bins``.

    The sorted confidences are split as :func:`numpy.array_split` splits them into min(M, N) parts (the
    first N mod parts one value longer); an edge lies halfway between the last value of a part and the
    first of the next; equal edges are merged, as is an edge at 1.0 with the last one. Bins are
    (e_{m-1}, e_m] as everywhere in calibkit, which is that package's ``searchsorted(bins, p)`` rule.
    The number of bins can thus be smaller than M (ties). Weights do not move the edges.
    """
    v = np.sort(values)
    n = v.shape[0]
    parts = min(n_bins, n)
    q, extra = divmod(n, parts)
    starts = np.arange(1, parts) * q + np.minimum(np.arange(1, parts), extra)
    inner = np.unique((v[starts - 1] + v[starts]) / 2.0)
    inner = inner[inner < 1.0]
    return np.concatenate(([0.0], inner, [1.0])).astype(np.float64)


def resolve_n_bins(n_bins, confidence, target, sample_weight, strategy="uniform", *, n_rows=None):
    """The number of bins a rule gives for these rows (an int is returned as it is).

    ``"cube_root"``: round(N^(1/3)); ``"sqrt"``: round(N^(1/2)) (N rows, weights aside, at least 1 and at
    most MAX_BINS); ``"sweep"``: the largest M for which the bin accuracies of ``strategy``'s M bins are
    non-decreasing in m, and are so for every smaller M (Roelofs et al. 2022), trying M = 2, 3, ... up to
    min(N, MAX_SWEEP_BINS) (2048); empty bins are skipped. ``confidence`` and ``target`` are the N
    checked confidences and 0/1 targets.
    """
    if not isinstance(n_bins, str):
        return n_bins
    n = confidence.shape[0] if n_rows is None else n_rows
    if n_bins == "cube_root":
        return min(max(1, round(n ** (1.0 / 3.0))), MAX_BINS)
    if n_bins == "sqrt":
        return min(max(1, round(math.sqrt(n))), MAX_BINS)
    return _sweep_n_bins(confidence, target, sample_weight, strategy)


def _sweep_n_bins(confidence, target, sample_weight, strategy):
    order = np.argsort(confidence, kind="stable")
    v = np.asarray(confidence, dtype=np.float64)[order]
    y = np.asarray(target)[order]
    n = v.shape[0]
    if sample_weight is None:
        # Exact integer prefix sums: bin sums are differences of them.
        cum_n = np.arange(n + 1)
        cum_y = np.concatenate(([0], np.cumsum(y, dtype=np.int64)))
        w = wy = None
    else:
        w = sample_weight[order]
        wy = w * y
    best = 1
    for m in range(2, min(n, MAX_SWEEP_BINS) + 1):
        if strategy == "quantile":
            edges = _linear_quantiles_sorted(v, m) if w is None else _quantile_edges(v, w, m)
        elif strategy == "quantile_midpoint":
            edges = _midpoint_edges(v, m)
        else:
            edges = _equal_width_edges(m)
        # Rows up to each inner edge (bins are (e_{m-1}, e_m]): the bin boundaries in the sorted rows.
        bounds = np.concatenate(([0], v.searchsorted(edges[1:-1], side="right"), [n]))
        if w is None:
            bw = np.diff(cum_n[bounds])
            by = np.diff(cum_y[bounds])
        else:
            starts = bounds[:-1][bounds[:-1] < bounds[1:]]
            bw = np.add.reduceat(w, starts)
            by = np.add.reduceat(wy, starts)
        filled = bw > 0
        acc = by[filled] / bw[filled]
        if (acc[1:] < acc[:-1]).any():
            break
        best = m
    return best


@functools.lru_cache(maxsize=64)
def _equal_width_edges(n_bins):
    """The M + 1 edges m / M (read-only and shared: copy before handing them out)."""
    edges = np.arange(n_bins + 1, dtype=np.float64) / n_bins
    edges.setflags(write=False)
    return edges


#: Up to this many bins, _errors_from_bins sums in plain Python floats (a dozen NumPy calls on a
#: small array cost more than the loop); above it, in NumPy. Both sum in bin order.
_SMALL_BINS = 64


def _errors_from_bins(weight, sum_confidence, sum_accuracy):
    """(ECE, MCE, RMSCE) from per-bin sums; bins of zero weight are skipped.

    The sums run over the bins in order (sequentially, also for many bins: ``np.cumsum``), so the
    result does not depend on which of the two paths computed it.
    """
    if weight.shape[0] <= _SMALL_BINS:
        ws = weight.tolist()
        total = 0.0
        for x in ws:
            total += x
        ece = sq = mce = 0.0
        for x, c, a in zip(ws, sum_confidence.tolist(), sum_accuracy.tolist()):
            if x > 0:
                gap = a / x - c / x
                if gap < 0.0:  # abs() without a call (the same value)
                    gap = -gap
                part = x / total * gap
                ece += part
                sq += part * gap  # (frac * gap) * gap, as written before
                if gap > mce:
                    mce = gap
        return ece, mce, math.sqrt(sq)
    total = _sequential_sum(weight)
    filled = weight > 0
    w = weight[filled]
    gap = np.abs(sum_accuracy[filled] / w - sum_confidence[filled] / w)
    frac = w / total
    ece = _sequential_sum(frac * gap)
    mce = float(gap.max()) if gap.size else 0.0
    rmsce = math.sqrt(_sequential_sum(frac * gap * gap))
    return ece, mce, rmsce


def _sequential_sum(x) -> float:
    """x[0] + x[1] + ... in that order (as the Python loop above), 0.0 when empty."""
    return float(np.cumsum(x)[-1]) if x.shape[0] else 0.0


def _norm_value(errors, norm):
    ece_value, mce_value, rms_value = errors
    return ece_value if norm == "l1" else mce_value if norm == "max" else rms_value


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def calibration_error(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int | str = 15,
    strategy: Strategy = "uniform",
    norm: Norm = "l1",
    debias: bool = False,
    conditional_on_prediction: bool = False,
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    backend: Backend = "auto",
    axis: int = 1,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduce: str = "pooled",
) -> float | CalibrationErrorResult:
    r"""Top-label (or binary positive-class) calibration error.

    .. math::

        \mathrm{ECE} = \sum_{m=1}^{M} \frac{w(B_m)}{n}\,
        \bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    (Naeini et al. 2015; Guo et al. 2017), its root-mean-square form for
    ``norm="l2"`` and the maximum over non-empty bins (MCE) for
    ``norm="max"``. See the module docstring for the bin conventions and how
    they differ from torchmetrics, netcal and scikit-learn.

    Parameters
    ----------
    scores : array-like of shape (N, K), ``(N, K, *spatial)`` or (N,)
        Class probabilities (rows in [0, 1]; they need not sum to 1), or
        logits with ``from_logits=True``. float16/32/64, any strides,
        memory-mapped arrays are read in place. Shape (N,) is P(y=1) of a
        binary problem (or its logit), calibrated against the label.
        Dense predictions (segmentation maps): ``(N, K, *spatial)`` or, with
        ``axis=-1``, ``(N, *spatial, K)``; see "Dense predictions" in the
        module docstring.
    labels : array-like of int, shape (N,) or ``(N, *spatial)``
        True classes in [0, K) (0 or 1 for (N,) scores).
    n_bins : int or {"cube_root", "sqrt", "sweep"}, default 15
        Number of bins M >= 1 (at most 2**20), or a rule that picks it from
        the N rows: ``"cube_root"`` round(N^(1/3)), ``"sqrt"`` round(N^(1/2)),
        ``"sweep"`` the monotonic sweep of Roelofs, Cain, Shlens & Mozer
        (2022): the largest M for which the bin accuracies of M bins of
        ``strategy`` are non-decreasing, and are so for every smaller M
        (ECE_sweep with ``strategy="quantile"``, their equal-mass variant;
        ECE_EW_sweep with "uniform"); M = 2, 3, ... are tried up to
        min(N, ``MAX_SWEEP_BINS`` = 2048). The M used is
        ``reliability_table(...).n_bins`` and ``n_bins`` of a
        :class:`CalibrationErrorResult`.
    strategy : {"uniform", "quantile", "quantile_midpoint"}, default "uniform"
        Equal-width bins ((m-1)/M, m/M], or equal-mass bins (adaptive ECE,
        Nixon et al. 2019) at the quantiles of the confidences, or the
        equal-count bins of uncertainty-calibration's ``get_equal_bins``
        (``"quantile_midpoint"``: the sorted confidences split into
        min(M, N) parts of sizes as :func:`numpy.array_split` makes them,
        edges halfway between neighbouring parts, equal edges merged, so
        ties can give fewer bins; weights do not move these edges).
    norm : {"l1", "l2", "max"}, default "l1"
        ECE, RMS calibration error, or MCE.
    debias : bool, default False
        With ``norm="l2"`` only: the debiased estimator of the squared
        calibration error of Kumar, Liang & Ma (2019),

        .. math::

            \widehat{\mathrm{CE}^2} = \sum_{m:\, n_m \ge 2} \frac{n_m}{n}
            \Bigl[(\bar{y}_m - \bar{p}_m)^2
            - \frac{\bar{y}_m (1 - \bar{y}_m)}{n_m - 1}\Bigr],

        bins of one row adding 0 (as uncertainty-calibration's
        ``unbiased_square_ce``), reported as sqrt(max(0, CE²)). The signed
        CE² is ``debiased_calibration_error(...).squared``. With
        ``sample_weight``, n_m/n is the bin's share of the weight, the means
        are weighted, and n_m in the variance term is Kish's effective
        count (Σ_m w)² / Σ_m w² (bins whose effective count is at most 1
        add 0): the variance of a weighted mean of rows with one common
        mean, estimated without bias. With ``strategy="quantile_midpoint"``
        and ``n_bins=15`` this is
        ``calibration.get_calibration_error(probs, labels, p=2,
        debias=True, mode="top-label")`` for continuous probabilities
        (that package switches to one bin per distinct value when fewer
        than N/4 distinct values exist).
    conditional_on_prediction : bool, default False
        (N, K) scores only: the top-label calibration error of Gupta &
        Ramdas (2021), conditional on the predicted class:
        Σ_j (n_j/n) CE_j, CE_j the error of the rows predicted j, binned
        on their confidence (the same bins for every j). Confidence ECE
        asks whether P(correct | confidence) = confidence; this asks whether
        P(correct | confidence, predicted class) = confidence, so a model
        over-confident on one class and under-confident on another is not
        averaged out. ``strategy="uniform"`` only; ``norm="max"`` is the
        largest gap over (class, bin) cells; ``debias`` applies per cell.
    from_logits : bool, default False
        Whether ``scores`` are logits (softmax of each row, in one fused pass
        with a log-sum-exp; the logistic function for (N,) scores).
    sample_weight : array-like of shape (N,) or the labels' shape, optional
        Non-negative finite row weights, not all 0. Every metric is invariant
        to scaling all weights: they are divided by their largest before use
        (a copy of N values; for dense input the largest kept weight is
        found in a first read of the weights, and each piece's weights are
        divided as it is read), so weights near 1e308 or subnormal weights
        give the same result as weights of 1.
    ci : float in (0, 1), optional
        Also give a percentile bootstrap interval at this confidence level:
        the value and the α/2 and 1 − α/2 quantiles (``numpy.quantile``,
        linear) of the error over ``n_boot`` Poisson(1) bootstrap replicates
        of the rows. The replicates are those of a
        :class:`~calibkit.CalibrationAccumulator` with ``bootstrap=n_boot``
        and ``seed=seed`` (one pass fills the bins and every replicate), so
        the interval equals a streamed run's with the same seed; the value
        comes from the same pass (equal to the value without ``ci`` to
        rounding). The bins stay fixed across replicates (a rule such as
        ``"sweep"`` is resolved once, on all rows). Equal-width bins only;
        sample weights must be 0 or in [1e-300, 1e300], as in a stream.
    n_boot : int, default 1000
        Bootstrap replicates, 2 to ``MAX_BOOTSTRAP`` = 100000 (and
        ``n_boot * n_bins`` at most 2**26).
    seed : int, default 0
        Key of the bootstrap generator (0 to 2**64 - 1).
    backend : {"auto", "cpp", "numba"}, default "auto"
        Kernel implementation; "auto" is $CALIBKIT_BACKEND, else C++.
    axis : int, default 1
        Where the classes are in dense scores: 1 for ``(N, K, *spatial)`` (class
        axis second, PyTorch's layout), -1 for channel-last
        ``(N, *spatial, K)``; for (N, K) scores 1 and -1 are the same. Every pixel (voxel) is a
        row, with labels of shape ``(N, *spatial)``. The class axis is read with
        its stride, in pieces of at most 4 MB: no transposed or
        flattened copy of the scores is made (C order, channel-last, sliced,
        Fortran-ordered and memory-mapped arrays alike).
    mask : array-like of bool, optional
        Of the labels' shape: True where a pixel (row) is counted. Also for
        (N, K) and (N,) scores (for (N,) scores the kept rows are copied).
    ignore_index : int, optional
        A label whose pixels (rows) are never counted, e.g. 255 (combined
        with ``mask``: a pixel counts when it is in the mask and not
        ignored). A metric over no kept pixel raises a ValueError.
    reduce : {"pooled", "per_image"}, default "pooled"
        Dense scores: ``"pooled"`` counts every kept pixel of every image
        once (one set of bins over all pixels: what most segmentation
        calibration papers report); ``"per_image"`` computes the metric on
        each image (index of the first axis) alone and returns the
        unweighted mean over the images (as done e.g. in medical imaging,
        where a volume is the unit). Images with no kept pixel (or whose
        kept pixels all weigh 0) are skipped. ``"per_image"`` needs scores
        with spatial axes: for (N, K) or (N,) scores it raises a
        ValueError. Not with ``ci``.

    Returns
    -------
    float or CalibrationErrorResult
        A float, or with ``ci`` a :class:`CalibrationErrorResult` (``value``,
        ``ci``, ``n_bins``; ``float(result)`` is the value).

    Raises
    ------
    ValueError
        Mismatched shapes, labels outside [0, K), NaN/inf, probabilities
        outside [0, 1] (beyond 1e-6), negative weights, empty input,
        ``n_bins < 1``, unknown ``strategy``/``norm``/``backend``.
    TypeError
        Non-float scores or non-integer labels.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> round(calibkit.calibration_error(probs, labels, n_bins=10), 4)
    0.4
    """
    check_choice(norm, "norm", NORMS)
    if _is_dense_call(scores, axis, mask, ignore_index, reduce):
        spec = dict(n_bins=n_bins, strategy=strategy, norm=norm, debias=debias, ci=ci, n_boot=n_boot, seed=seed,
                    backend=backend, conditional=conditional_on_prediction)
        result = _dense_error(scores, labels, sample_weight, from_logits, axis, mask, ignore_index, reduce, spec,
                              lambda s, y, w: calibration_error(
                                  s, y, n_bins=n_bins, strategy=strategy, norm=norm, debias=debias,
                                  conditional_on_prediction=conditional_on_prediction, from_logits=from_logits,
                                  sample_weight=w, ci=ci, n_boot=n_boot, seed=seed, backend=backend))
        return result if ci is not None else float(result)
    if debias is False and conditional_on_prediction is False and ci is None:
        b = _binned(scores, labels, sample_weight, n_bins=n_bins, strategy=strategy, from_logits=from_logits,
                    backend=backend)
        return _norm_value(_errors_from_bins(b.weight, b.sum_confidence, b.sum_accuracy), norm)
    result = _error_result(scores, labels, n_bins=n_bins, strategy=strategy, norm=norm, debias=debias,
                           conditional=conditional_on_prediction, from_logits=from_logits,
                           sample_weight=sample_weight, ci=ci, n_boot=n_boot, seed=seed, backend=backend)
    return result if ci is not None else result.value


def ece(scores: ArrayLike, labels: ArrayLike, *, n_bins: int | str = 15, strategy: Strategy = "uniform",
        from_logits: bool = False, sample_weight: ArrayLike | None = None, backend: Backend = "auto",
        axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None,
        reduce: str = "pooled") -> float:
    """Expected calibration error: :func:`calibration_error` with ``norm="l1"``.

    Dense predictions (``(N, K, *spatial)`` scores with ``axis``, ``mask``,
    ``ignore_index``, ``reduce``) as in :func:`calibration_error`.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> round(calibkit.ece(probs, labels, n_bins=10), 4)
    0.4
    >>> round(calibkit.ece(probs, labels, n_bins=2, strategy="quantile"), 4)
    0.35
    >>> round(calibkit.ece(np.log(probs), labels, n_bins=10, from_logits=True), 4)  # the same, from logits
    0.4
    """
    return calibration_error(scores, labels, n_bins=n_bins, strategy=strategy, norm="l1", from_logits=from_logits,
                             sample_weight=sample_weight, backend=backend, axis=axis, mask=mask,
                             ignore_index=ignore_index, reduce=reduce)


def mce(scores: ArrayLike, labels: ArrayLike, *, n_bins: int | str = 15, strategy: Strategy = "uniform",
        from_logits: bool = False, sample_weight: ArrayLike | None = None, backend: Backend = "auto",
        axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None,
        reduce: str = "pooled") -> float:
    """Maximum calibration error: :func:`calibration_error` with ``norm="max"``.

    Dense predictions (``(N, K, *spatial)`` scores with ``axis``, ``mask``,
    ``ignore_index``, ``reduce``) as in :func:`calibration_error`.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> round(calibkit.mce(probs, labels, n_bins=10), 4)
    0.8
    """
    return calibration_error(scores, labels, n_bins=n_bins, strategy=strategy, norm="max", from_logits=from_logits,
                             sample_weight=sample_weight, backend=backend, axis=axis, mask=mask,
                             ignore_index=ignore_index, reduce=reduce)


def classwise_calibration_error(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int | str = 15,
    strategy: Strategy = "uniform",
    norm: Norm = "l1",
    debias: bool = False,
    aggregate: str = "mean",
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    backend: Backend = "auto",
    axis: int = 1,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduce: str = "pooled",
) -> float | CalibrationErrorResult:
    r"""Class-wise (marginal) calibration error (Kull et al. 2019).

    .. math::

        \mathrm{cwECE} = \frac{1}{K}\sum_{k=1}^{K}\sum_{m=1}^{M}
        \frac{w(B_{mk})}{n}\,\bigl|\bar{y}_k(B_{mk}) - \bar{p}_k(B_{mk})\bigr|

    where B_{mk} holds the rows whose probability of class k falls in the
    bin m, and \bar{y}_k is the fraction of them labelled k. Every class's
    one-vs-rest error CE_k uses the same ``norm`` as
    :func:`calibration_error`; ``aggregate`` combines them.

    Parameters
    ----------
    scores : array-like of shape (N, K)
        Probabilities, or logits with ``from_logits=True``.
    labels : array-like of int, shape (N,)
    n_bins : int or {"cube_root", "sqrt"}, default 15
        Bins per class, or a rule of N (as in :func:`calibration_error`;
        ``"sweep"`` is not offered per class).
    strategy : {"uniform", "quantile_midpoint"}, default "uniform"
        Equal-width bins, or per class the equal-count bins of
        uncertainty-calibration (see :func:`calibration_error`): one sort of
        each class's N probabilities (K sorts of an N-vector; from logits
        the probabilities of a class are recomputed in float64, a block of
        rows at a time).
    norm, from_logits, sample_weight, backend
        As in :func:`calibration_error`.
    debias : bool, default False
        With ``norm="l2"``: each CE_k² is Kumar et al.'s debiased estimate
        s_k (see :func:`calibration_error`) and CE_k = sqrt(max(0, s_k)).
    aggregate : {"mean", "sum", "power_mean"}, default "mean"
        ``"mean"``: (1/K) Σ_k CE_k (Kull et al. 2019); ``"sum"``: Σ_k CE_k;
        ``"power_mean"``: the p-norm mean (1/K Σ_k CE_k^p)^(1/p) with p = 1
        for ``"l1"``, 2 for ``"l2"``, and max_k CE_k for ``"max"``: the
        ``mode="marginal"`` aggregation of uncertainty-calibration, so that
        ``strategy="quantile_midpoint", norm="l2", debias=True,
        aggregate="power_mean"`` is ``calibration.get_calibration_error(
        probs, labels, p=2, debias=True, mode="marginal")`` for continuous
        probabilities (sqrt of the mean of max(0, s_k)). With ``debias``,
        ``debiased_calibration_error(...).squared`` is the signed mean
        (sum for ``"sum"``) of the s_k.
    ci, n_boot, seed
        A percentile bootstrap interval as in :func:`calibration_error`:
        for each class a binary :class:`~calibkit.CalibrationAccumulator`
        over its probabilities (all with the same ``seed``, so every class
        sees the same resampled rows), the classes aggregated per
        replicate. K passes over the rows, each drawing ``n_boot``
        multiplicities per row: meant for small K.
    axis, mask, ignore_index, reduce
        Dense predictions, as in :func:`calibration_error`. Pixels with
        ``ignore_index`` (e.g. 255) are never rows, so no class is made of
        them: the class-wise error over the K real classes with the ignore
        label excluded, as segmentation benchmarks report it.

    Returns
    -------
    float or CalibrationErrorResult
        A float, or with ``ci`` a :class:`CalibrationErrorResult`.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    >>> labels = np.array([0, 1, 2, 2])
    >>> round(calibkit.classwise_calibration_error(probs, labels, n_bins=5), 4)
    0.2833
    >>> round(calibkit.classwise_calibration_error(probs, labels, n_bins=5, aggregate="sum"), 4)
    0.85
    """
    check_choice(norm, "norm", NORMS)
    if _is_dense_call(scores, axis, mask, ignore_index, reduce):
        spec = dict(n_bins=n_bins, strategy=strategy, norm=norm, debias=debias, ci=ci, n_boot=n_boot, seed=seed,
                    backend=backend, classwise=True, aggregate=aggregate)
        result = _dense_error(scores, labels, sample_weight, from_logits, axis, mask, ignore_index, reduce, spec,
                              lambda s, y, w: classwise_calibration_error(
                                  s, y, n_bins=n_bins, strategy=strategy, norm=norm, debias=debias,
                                  aggregate=aggregate, from_logits=from_logits, sample_weight=w, ci=ci,
                                  n_boot=n_boot, seed=seed, backend=backend))
        return result if ci is not None else float(result)
    if debias is False and aggregate == "mean" and ci is None and strategy == "uniform":
        weight, sum_p, sum_y, _, _ = _classwise_bins(scores, labels, sample_weight, n_bins=n_bins,
                                                     strategy=strategy, from_logits=from_logits, backend=backend)
        # np.mean's sum and division without its Python layer (the same bits)
        return float(np.add.reduce(_classwise_errors(weight, sum_p, sum_y, norm)) / weight.shape[0])
    result = _error_result(scores, labels, n_bins=n_bins, strategy=strategy, norm=norm, debias=debias,
                           classwise=True, aggregate=aggregate, from_logits=from_logits,
                           sample_weight=sample_weight, ci=ci, n_boot=n_boot, seed=seed, backend=backend)
    return result if ci is not None else result.value


CLASSWISE_STRATEGIES = ("uniform", "quantile_midpoint")
AGGREGATES = ("mean", "sum", "power_mean")


def _classwise_bins(scores, labels, sample_weight, *, n_bins, strategy, from_logits, backend,
                    square_weights=False):
    """(K, M) per-class bin sums: weight, Σ w p, Σ w y, count and (``square_weights`` with weights) Σ w²."""
    rule = _classwise_rule(n_bins)
    check_choice(strategy, "strategy", CLASSWISE_STRATEGIES)
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, K) for the class-wise error, got shape {scores.shape}")
    n_rows, n_classes = scores.shape
    n_bins = resolve_n_bins(rule, None, None, None, n_rows=n_rows)
    class_edges = None
    if strategy == "quantile_midpoint":
        # Validate first (the kernel names a bad element), then one sort per class.
        check_cells(n_classes, "n_classes", min(n_bins, n_rows))
        r = k.classwise_stats(scores, labels, sample_weight, from_logits, 1, None)
        raise_for_status(r["status"], n_classes=n_classes)
        lse = _row_logsumexp(scores) if from_logits else None
        per_class = [_midpoint_edges(_class_column(scores, c, lse), n_bins) for c in range(n_classes)]
        n_bins = max(e.shape[0] for e in per_class) - 1
        class_edges = np.ones((n_classes, n_bins + 1))  # shorter edge lists padded with 1.0: empty bins
        for c, e in enumerate(per_class):
            class_edges[c, :e.shape[0]] = e
    check_cells(n_classes, "n_classes", n_bins)
    r = k.classwise_stats(scores, labels, sample_weight, from_logits, n_bins, class_edges)
    raise_for_status(r["status"], n_classes=n_classes)
    shape = (n_classes, n_bins)
    weight = np.asarray(r["weight"]).reshape(shape)
    if not weight[0].sum() > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    sum_p = np.asarray(r["sum_score"]).reshape(shape)
    sum_y = np.asarray(r["sum_target"]).reshape(shape)
    count = np.asarray(r["count"]).reshape(shape)
    sq = None
    if square_weights and sample_weight is not None:
        r2 = k.classwise_stats(scores, labels, sample_weight * sample_weight, from_logits, n_bins, class_edges)
        sq = np.asarray(r2["weight"]).reshape(shape)
    return weight, sum_p, sum_y, count, sq


def _classwise_rule(n_bins):
    rule = check_n_bins(n_bins, rules=True)
    if rule == "sweep":
        raise ValueError("n_bins='sweep' is not offered for the class-wise error: give an integer, 'cube_root' "
                         "or 'sqrt'")
    return rule


_LSE_ROWS = 1 << 14  # rows per block of the float64 softmax behind class columns from logits


def _row_logsumexp(scores):
    """log Σ_k exp(z_k) of every row in float64, a block of rows at a time (no N x K temporary)."""
    n = scores.shape[0]
    out = np.empty(n)
    for start in range(0, n, _LSE_ROWS):
        z = np.asarray(scores[start:start + _LSE_ROWS], dtype=np.float64)
        top = z.max(axis=1)
        out[start:start + _LSE_ROWS] = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return out


def _class_column(scores, c, lse):
    """The probabilities of class c (an N-vector, float64): the column, or exp(z_c - lse) from logits."""
    col = np.asarray(scores[:, c], dtype=np.float64)
    return col if lse is None else np.exp(col - lse)


_TINY = 5e-324  # the least positive float64


def _classwise_errors(weight, sum_p, sum_y, norm):
    """Per class (row), :func:`_errors_from_bins`'s ``norm`` value for every class at once, the same bits.

    Sums run along each row in bin order (``cumsum``: sequential), an empty bin adding an exact 0.0 to them,
    as the loop of _errors_from_bins skips it; a few NumPy calls on the K x M arrays instead of K loops.
    """
    total = weight.cumsum(axis=1)[:, -1:]
    filled = weight > 0
    # Empty bins divide by 1: no division by 0, no np.errstate. Their sums are 0 (a bin of weight 0 has
    # sums of w * value = 0: the kernels' sums, and the only ones passed here), so their gap is 0.
    w = np.where(filled, weight, 1.0)
    gap = np.abs(sum_y / w - sum_p / w)
    if norm == "max":
        return gap.max(axis=1)
    part = weight / np.maximum(total, _TINY) * gap  # a class of total weight 0 has only empty bins: 0 / tiny * 0
    if norm == "l1":
        return part.cumsum(axis=1)[:, -1]
    return np.sqrt((part * gap).cumsum(axis=1)[:, -1])


# ----------------------------------------------------------------------------
# Debiased, conditional and class-wise variants, and bootstrap intervals (one block)
# ----------------------------------------------------------------------------


class _ValueWithInterval:
    """What a dataclass result with a ``value`` and an optional ``ci`` (low, high) shares: ``float(result)`` is
    the value, ``to_dict()`` its JSON-safe fields."""

    value: float
    ci: tuple[float, float] | None

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (``ci`` as a list)."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        out["ci"] = None if self.ci is None else list(self.ci)
        return out


@dataclasses.dataclass(frozen=True)
class CalibrationErrorResult(_ValueWithInterval):
    """A calibration error with what produced it.

    Attributes
    ----------
    value : float
        The error (for ``debias=True`` the debiased RMS error sqrt(max(0, squared))).
    squared : float or None
        With ``debias=True``: the signed debiased estimate of the squared
        error (Kumar et al. 2019), which can be below 0 when the model is
        close to calibrated; None otherwise.
    n_bins : int
        Bins used (per class for the class-wise error): resolves rules such
        as ``n_bins="sweep"``, and counts the merged bins of
        ``strategy="quantile_midpoint"``.
    ci : tuple of float or None
        Percentile bootstrap interval (low, high) of ``value`` at
        ``confidence_level``; None without ``ci``.
    confidence_level : float or None
    n_boot : int
        Bootstrap replicates (0 without ``ci``).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(size=2000)
    >>> y = (rng.uniform(size=2000) < p).astype(int)
    >>> r = calibkit.debiased_calibration_error(p, y, n_bins=10)
    >>> r.n_bins, r.value == max(r.squared, 0.0) ** 0.5
    (10, True)
    """

    value: float
    squared: float | None
    n_bins: int
    ci: tuple[float, float] | None = None
    confidence_level: float | None = None
    n_boot: int = 0



def debiased_calibration_error(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int | str = 15,
    strategy: Strategy = "uniform",
    classwise: bool = False,
    aggregate: str = "mean",
    conditional_on_prediction: bool = False,
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    ci: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    backend: Backend = "auto",
    axis: int = 1,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
    reduce: str = "pooled",
) -> CalibrationErrorResult:
    r"""Debiased RMS calibration error (Kumar, Liang & Ma 2019), with its signed square.

    .. math::

        \widehat{\mathrm{CE}^2} = \sum_{m:\, n_m \ge 2} \frac{n_m}{n}
        \Bigl[(\bar{y}_m - \bar{p}_m)^2
        - \frac{\bar{y}_m (1 - \bar{y}_m)}{n_m - 1}\Bigr]

    The plug-in squared error (\bar{y}_m - \bar{p}_m)^2 overestimates the
    squared calibration error of the binned model by the variance of
    \bar{y}_m; the second term removes it (unbiased for binary labels).
    This is :func:`calibration_error` with ``norm="l2", debias=True``
    (``classwise=True``: :func:`classwise_calibration_error`), returned as
    a named result: ``value`` = sqrt(max(0, ``squared``)), ``squared`` the
    signed estimate, ``n_bins``, and with ``ci`` the bootstrap interval of
    ``value``. See :func:`calibration_error` for the parameters, the
    weighted estimator (Kish's effective count) and how to match
    uncertainty-calibration exactly, and for dense predictions (``axis``,
    ``mask``, ``ignore_index``, ``reduce``). With ``reduce="per_image"``,
    ``value`` and ``squared`` are the means over the images of each image's
    value and signed square, and ``n_bins`` the largest of the images' bins.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2]])
    >>> labels = np.array([0, 1, 1, 0, 0, 0])
    >>> r = calibkit.debiased_calibration_error(probs, labels, n_bins=2)
    >>> round(r.squared, 4), round(r.value, 4)
    (-0.0208, 0.0)
    """
    if _is_dense_call(scores, axis, mask, ignore_index, reduce):
        spec = dict(n_bins=n_bins, strategy=strategy, norm="l2", debias=True, ci=ci, n_boot=n_boot, seed=seed,
                    backend=backend, conditional=conditional_on_prediction,
                    classwise=check_bool(classwise, "classwise"), aggregate=aggregate)
        return _dense_error(scores, labels, sample_weight, from_logits, axis, mask, ignore_index, reduce, spec,
                            lambda s, y, w: debiased_calibration_error(
                                s, y, n_bins=n_bins, strategy=strategy, classwise=classwise, aggregate=aggregate,
                                conditional_on_prediction=conditional_on_prediction, from_logits=from_logits,
                                sample_weight=w, ci=ci, n_boot=n_boot, seed=seed, backend=backend),
                            combine=_mean_results)
    return _error_result(scores, labels, n_bins=n_bins, strategy=strategy, norm="l2", debias=True,
                         conditional=conditional_on_prediction, classwise=check_bool(classwise, "classwise"),
                         aggregate=aggregate, from_logits=from_logits, sample_weight=sample_weight, ci=ci,
                         n_boot=n_boot, seed=seed, backend=backend)


def _debiased_squares(count, weight, sum_p, sum_y, sq_weight=None):
    """Kumar et al.'s debiased squared error of each row of bins (along the last axis).

    n_m is ``count`` without weights, Kish's (Σw)²/Σw² with them (``sq_weight``); bins with n_m <= 1 (and empty
    bins) add 0, their weight still counting in n.
    """
    total = weight.sum(axis=-1, keepdims=True)
    if sq_weight is None:
        n_eff = count.astype(np.float64)
    else:  # Σw² can underflow to 0 for a bin of tiny weights: an infinite count, no variance term
        n_eff = np.divide(weight * weight, sq_weight, out=np.full(weight.shape, np.inf), where=sq_weight > 0)
    use = (weight > 0) & (n_eff > 1)
    w = np.where(use, weight, 1.0)
    ybar = sum_y / w
    gap = ybar - sum_p / w
    var = ybar * (1.0 - ybar) / np.where(use, n_eff - 1.0, 1.0)
    terms = np.where(use, weight / np.maximum(total, _TINY) * (gap * gap - var), 0.0)
    return terms.sum(axis=-1)


def _gap_errors(weight, sum_p, sum_y, norm):
    """The ``norm`` error of each row of bins (last axis), the replicates' vectorised form."""
    total = weight.sum(axis=-1)
    filled = weight > 0
    w = np.where(filled, weight, 1.0)
    gap = np.where(filled, np.abs(sum_y / w - sum_p / w), 0.0)
    if norm == "max":
        return gap.max(axis=-1)
    if norm == "l1":
        return (weight * gap).sum(axis=-1) / np.maximum(total, _TINY)
    return np.sqrt((weight * gap * gap).sum(axis=-1) / np.maximum(total, _TINY))


def _aggregate_classes(values, squares, norm, aggregate):
    """(value, squared) over the last (class) axis: mean, sum or p-norm mean; ``squares`` (debias) or None."""
    if aggregate == "sum":
        agg = values.sum(axis=-1)
        return agg, None if squares is None else squares.sum(axis=-1)
    sq = None if squares is None else squares.mean(axis=-1)
    if aggregate == "mean" or norm == "l1":
        return values.mean(axis=-1), sq
    if norm == "max":
        return values.max(axis=-1), sq
    return np.sqrt((values * values).mean(axis=-1)), sq  # "l2" power mean (values² = max(0, s_k) with debias)


def _values_from_bins(count, weight, sum_p, sum_y, sq_weight, norm, debias):
    """(value, signed square or None) of each row of bins."""
    if debias:
        sq = _debiased_squares(count, weight, sum_p, sum_y, sq_weight)
        return np.sqrt(np.maximum(sq, 0.0)), sq
    return _gap_errors(weight, sum_p, sum_y, norm), None


def _error_result(scores, labels, *, n_bins, strategy, norm, debias, from_logits, sample_weight, ci, n_boot, seed,
                  backend, conditional=False, classwise=False, aggregate="mean", src=None):
    """Every non-plain calibration error: debiased, conditional on the prediction, class-wise aggregates, and
    bootstrap intervals (a :class:`CalibrationErrorResult`). ``src``: a dense source (then ``scores``,
    ``labels``, ``sample_weight`` and ``from_logits`` are not used)."""
    check_choice(norm, "norm", NORMS)
    debias = check_bool(debias, "debias")
    conditional = check_bool(conditional, "conditional_on_prediction")
    check_choice(aggregate, "aggregate", AGGREGATES)
    if debias and norm != "l2":
        raise ValueError(f"debias=True needs norm='l2' (Kumar et al. debias the squared error), got norm={norm!r}")
    if ci is not None:
        ci, n_boot, seed = check_bootstrap(ci, n_boot, seed)
        if strategy != "uniform":
            raise ValueError(f"ci needs strategy='uniform' (the bootstrap replicates keep equal-width bins), "
                             f"got strategy={strategy!r}")
        if conditional:
            raise ValueError("ci is not available with conditional_on_prediction=True")
    if classwise:
        if conditional:
            raise ValueError("conditional_on_prediction applies to the top-label error, not the class-wise one")
        if ci is not None:
            if src is not None:
                return _dense_classwise_bootstrap(src, n_bins=n_bins, norm=norm, debias=debias, aggregate=aggregate,
                                                  ci=float(ci), n_boot=n_boot, seed=seed, backend=backend)
            return _classwise_bootstrap(scores, labels, sample_weight, n_bins=n_bins, norm=norm, debias=debias,
                                        aggregate=aggregate, from_logits=from_logits, ci=float(ci), n_boot=n_boot,
                                        seed=seed, backend=backend)
        if src is not None:
            weight, sum_p, sum_y, count, sq = _dense_classwise_bins(src, n_bins=n_bins, strategy=strategy,
                                                                    backend=backend, square_weights=debias)
        else:
            weight, sum_p, sum_y, count, sq = _classwise_bins(scores, labels, sample_weight, n_bins=n_bins,
                                                              strategy=strategy, from_logits=from_logits,
                                                              backend=backend, square_weights=debias)
        if src is not None and not debias and aggregate == "mean" and strategy == "uniform":
            # the (N, K) call's own formula (classwise_calibration_error's plain path), the same bits
            value = float(np.add.reduce(_classwise_errors(weight, sum_p, sum_y, norm)) / weight.shape[0])
            return CalibrationErrorResult(value, None, weight.shape[1])
        values, squares = _values_from_bins(count, weight, sum_p, sum_y, sq, norm, debias)
        value, squared = _aggregate_classes(values, squares, norm, aggregate)
        return CalibrationErrorResult(float(value), None if squared is None else float(squared), weight.shape[1])
    if conditional:
        if src is not None:
            count, weight, sum_p, sum_y, sq, m = _dense_conditional_cells(src, n_bins=n_bins, strategy=strategy,
                                                                          backend=backend, square_weights=debias)
        else:
            count, weight, sum_p, sum_y, sq, m = _conditional_cells(scores, labels, sample_weight, n_bins=n_bins,
                                                                    strategy=strategy, from_logits=from_logits,
                                                                    backend=backend, square_weights=debias)
    elif ci is not None:
        if src is not None:
            return _dense_bootstrap_result(src, n_bins=n_bins, norm=norm, debias=debias, ci=float(ci), n_boot=n_boot,
                                           seed=seed, backend=backend)
        return _bootstrap_result(scores, labels, sample_weight, n_bins=n_bins, norm=norm, debias=debias,
                                 from_logits=from_logits, ci=float(ci), n_boot=n_boot, seed=seed, backend=backend)
    elif src is not None:
        b = _dense_binned(src, n_bins=n_bins, strategy=strategy, backend=backend, square_weights=debias)
        count, weight, sum_p, sum_y, sq, m = (b.count, b.weight, b.sum_confidence, b.sum_accuracy, b.sq_weight,
                                              b.n_bins)
    else:
        b = _binned(scores, labels, sample_weight, n_bins=n_bins, strategy=strategy, from_logits=from_logits,
                    backend=backend, square_weights=debias)
        count, weight, sum_p, sum_y, sq, m = (b.count, b.weight, b.sum_confidence, b.sum_accuracy, b.sq_weight,
                                              b.n_bins)
    if debias:
        squared = float(_debiased_squares(count, weight, sum_p, sum_y, sq))
        return CalibrationErrorResult(math.sqrt(max(squared, 0.0)), squared, m)
    return CalibrationErrorResult(_norm_value(_errors_from_bins(weight, sum_p, sum_y), norm), None, m)


def _conditional_cells(scores, labels, sample_weight, *, n_bins, strategy, from_logits, backend, square_weights):
    """Sums over (predicted class, confidence bin) cells, flattened to K * M: count, weight, Σ w conf, Σ w correct,
    Σ w² (weighted and ``square_weights``), and M. N-vectors only (the confidences, the predicted classes)."""
    rule = check_n_bins(n_bins, rules=True)
    if strategy != "uniform":
        raise ValueError(f"conditional_on_prediction=True needs strategy='uniform', got strategy={strategy!r}")
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    if scores.ndim != 2:
        raise ValueError(f"conditional_on_prediction=True needs scores of shape (N, K), got shape {scores.shape}")
    n, n_classes = scores.shape
    conf = np.empty(n, np.float64)
    correct = np.empty(n, np.uint8)
    first = k.top_label_stats(scores, labels, sample_weight, from_logits, 0, _nll_eps(scores.dtype), False, conf,
                              correct)
    raise_for_status(first["status"], n_classes=n_classes)
    if not first["totals"]["weight"] > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return _cells_from_rows(conf, correct, np.argmax(scores, axis=1), sample_weight, rule, n_classes, square_weights)


def _cells_from_rows(conf, correct, predicted, sample_weight, rule, n_classes, square_weights):
    """The cells of :func:`_conditional_cells` from each row's confidence, correctness and predicted class."""
    n = conf.shape[0]
    m = resolve_n_bins(rule, conf, correct, sample_weight, "uniform")
    check_cells(n_classes, "n_classes", m)
    # The kernels' bin of c: #{inner edges m/M strictly below c}.
    cell = predicted * m + _equal_width_edges(m)[1:-1].searchsorted(conf, side="left")
    size = n_classes * m
    w = np.ones(n) if sample_weight is None else sample_weight
    count = np.bincount(cell, minlength=size)
    weight = np.bincount(cell, weights=w, minlength=size)
    sum_p = np.bincount(cell, weights=w * conf, minlength=size)
    sum_y = np.bincount(cell, weights=w * correct, minlength=size)
    sq = None
    if square_weights and sample_weight is not None:
        sq = np.bincount(cell, weights=w * w, minlength=size)
    return count, weight, sum_p, sum_y, sq, m


def _percentile_interval(replicates, level):
    """The percentile interval of the finite replicates (None with fewer than 2), as the streaming state."""
    replicates = replicates[np.isfinite(replicates)]
    if replicates.size < 2:
        return None
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _stream_states(batches, largest, *, n_bins, from_logits, n_boot, seed, backend, squares):
    """One pass of a :class:`~calibkit.CalibrationAccumulator` (bins and Poisson replicates) over the rows, and
    with ``squares`` (weighted, debiased) a second one with the weights squared, for Kish's counts: the same
    generator keys give every row the same multiplicities in both. Returns (bins, boot, sq_bins, sq_boot).

    ``batches()`` yields (scores, labels, weights or None, on_error or None) in row order (one batch for (N, K)
    input, the pieces of a dense one: the stream keys a row's multiplicities by its position, so these are the
    same); ``on_error(exc)`` re-raises a bad element's error named in the caller's coordinates. ``largest``: the
    largest weight (None without weights)."""
    from .streaming import CalibrationAccumulator  # streaming imports this module

    def state(transform):
        acc = CalibrationAccumulator(n_bins, from_logits=from_logits, bootstrap=n_boot, seed=seed, backend=backend)
        for scores, labels, weights, on_error in batches():
            try:
                acc.update(scores, labels, transform(weights))
            except BadElementError as exc:
                if on_error is None:
                    raise
                on_error(exc)
        return acc._bins, acc._boot

    bins, boot = state(lambda w: w)
    if not (squares and largest is not None):
        return bins, boot, None, None

    def squared(w):
        w2 = (np.asarray(w, dtype=np.float64) / largest) ** 2
        w2[w2 < MIN_STREAM_WEIGHT] = 0.0  # negligible rows: the stream refuses weights this small
        return w2

    sq_bins, sq_boot = state(squared)
    # Kish's count (Σw)²/Σw² is unchanged by a common scale: put Σw² in the units of the raw weights.
    return bins, boot, sq_bins[1] * largest * largest, sq_boot[:, 0] * largest * largest


def _bootstrap_result(scores, labels, sample_weight, *, n_bins, norm, debias, from_logits, ci, n_boot, seed,
                      backend):
    m = check_n_bins(n_bins, rules=True)
    # Checked as the metrics check them (a negative weight is named as such); the stream gets the raw weights.
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits)
    if sample_weight is not None:
        check_sample_weight(sample_weight, scores.shape[0], check_values=True)
    if isinstance(m, str):  # a rule is resolved once, on all the rows
        m = _binned(scores, labels, sample_weight, n_bins=m, strategy="uniform", from_logits=from_logits,
                    backend=backend).n_bins
    largest = None if sample_weight is None else float(np.asarray(sample_weight, dtype=np.float64).max())
    return _bootstrap_from(lambda: ((scores, labels, sample_weight, None),), m, largest, norm=norm, debias=debias,
                           from_logits=from_logits, ci=ci, n_boot=n_boot, seed=seed, backend=backend)


def _bootstrap_from(batches, m, largest, *, norm, debias, from_logits, ci, n_boot, seed, backend):
    """The value and interval of :func:`_bootstrap_result` from the stream batches (see :func:`_stream_states`)."""
    check_cells(n_boot, "n_boot", m)
    bins, boot, sq_bins, sq_boot = _stream_states(batches, largest, n_bins=m, from_logits=from_logits,
                                                  n_boot=n_boot, seed=seed, backend=backend, squares=debias)
    if not bins[1].sum() > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    squared = None
    if debias:
        squared = float(_debiased_squares(bins[0], bins[1], bins[2], bins[3], sq_bins))
        value = math.sqrt(max(squared, 0.0))
        # A replicate's rows are the original rows with multiplicities: unweighted, its count is its weight.
        reps = np.sqrt(np.maximum(_debiased_squares(boot[:, 0], boot[:, 0], boot[:, 1], boot[:, 2], sq_boot), 0.0))
    else:
        value = _norm_value(_errors_from_bins(bins[1], bins[2], bins[3]), norm)
        if norm == "l1":
            from .streaming import _replicate_ece  # the streaming state's own replicate ECE, the same bits

            with np.errstate(invalid="ignore", divide="ignore"):
                reps = _replicate_ece(boot)
        else:
            reps = np.where(boot[:, 0].sum(axis=1) > 0, _gap_errors(boot[:, 0], boot[:, 1], boot[:, 2], norm), np.nan)
    if debias:  # a replicate without rows has no error (NaN, left out of the interval)
        reps = np.where(boot[:, 0].sum(axis=1) > 0, reps, np.nan)
    return CalibrationErrorResult(value, squared, m, _percentile_interval(reps, ci), ci, n_boot)


def _classwise_bootstrap(scores, labels, sample_weight, *, n_bins, norm, debias, aggregate, from_logits, ci, n_boot,
                         seed, backend):
    """Class-wise error and interval: a binary stream state per class (same seed: the same resampled rows)."""
    rule = _classwise_rule(n_bins)
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits)
    if sample_weight is not None:
        check_sample_weight(sample_weight, scores.shape[0], check_values=True)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, K) for the class-wise error, got shape {scores.shape}")
    n_rows, n_classes = scores.shape
    m = resolve_n_bins(rule, None, None, None, n_rows=n_rows)
    check_cells(n_boot, "n_boot", m)
    check_cells(n_boot, "n_boot", n_classes)
    r = k.classwise_stats(scores, labels, sample_weight, from_logits, 1, None)  # validates every element first
    raise_for_status(r["status"], n_classes=n_classes)
    lse = _row_logsumexp(scores) if from_logits else None
    largest = None if sample_weight is None else float(np.asarray(sample_weight, dtype=np.float64).max())

    def columns(c):
        batch = ((_class_column(scores, c, lse), (labels == c).astype(np.int64), sample_weight, None),)
        return lambda: batch

    return _classwise_bootstrap_from(columns, m, n_classes, largest, norm=norm, debias=debias, aggregate=aggregate,
                                     ci=ci, n_boot=n_boot, seed=seed, backend=backend)


def _classwise_bootstrap_from(columns, m, n_classes, largest, *, norm, debias, aggregate, ci, n_boot, seed,
                              backend):
    """The class-wise value and interval from ``columns(c)``, the stream batches of class c (its probabilities
    and 0/1 labels; see :func:`_stream_states`)."""
    values = np.empty(n_classes)
    squares = np.empty(n_classes) if debias else None
    reps = np.empty((n_boot, n_classes))
    for c in range(n_classes):
        bins, boot, sq_bins, sq_boot = _stream_states(
            columns(c), largest, n_bins=m, from_logits=False, n_boot=n_boot, seed=seed, backend=backend,
            squares=debias)
        v, s = _values_from_bins(bins[0], bins[1], bins[2], bins[3], sq_bins, norm, debias)
        values[c] = v
        if debias:
            squares[c] = s
        reps[:, c] = _values_from_bins(boot[:, 0], boot[:, 0], boot[:, 1], boot[:, 2], sq_boot, norm, debias)[0]
    if not bins[1].sum() > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    value, squared = _aggregate_classes(values, squares, norm, aggregate)
    empty = boot[:, 0].sum(axis=1) == 0  # a replicate without rows (the same rows for every class)
    rep_values = np.where(empty, np.nan, _aggregate_classes(reps, None, norm, aggregate)[0])
    return CalibrationErrorResult(float(value), None if squared is None else float(squared), m,
                                  _percentile_interval(rep_values, ci), ci, n_boot)


@dataclasses.dataclass(frozen=True, repr=False)
class ReliabilityTable:
    """The data of a reliability diagram: one row per bin.

    Attributes
    ----------
    lower, upper : ndarray of shape (M,)
        Bin edges; bin m holds confidences c with lower < c <= upper (the
        first bin also holds c == lower).
    count : ndarray of int64
        Rows in each bin.
    weight : ndarray of float64
        Total sample weight in each bin (equals ``count`` without weights), in
        units of the largest sample weight (weights are divided by their
        largest, see :func:`calibration_error`).
    mean_confidence, accuracy : ndarray of float64
        Weighted mean confidence and accuracy (fraction correct, or fraction
        of positives for binary scores) of each bin; NaN for empty bins.
    gap : ndarray of float64
        ``accuracy - mean_confidence`` (negative = over-confident); NaN for
        empty bins.
    strategy : str

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> table = calibkit.reliability_table(probs, labels, n_bins=5)
    >>> table.count
    array([0, 0, 1, 2, 1])
    >>> round(table.ece, 4), round(table.mce, 4)
    (0.25, 0.4)
    >>> sorted(table.to_dict())[:4]
    ['accuracy', 'count', 'gap', 'lower']
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    weight: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    gap: np.ndarray
    strategy: str

    @property
    def n_bins(self) -> int:
        return int(self.count.shape[0])

    def plot(self, *, title: str | None = None, path: StrPath | None = None, **kwargs: Any) -> Figure:
        """Draw this table as a reliability diagram (see :func:`calibkit.plot.reliability_diagram`)."""
        from .plot import reliability_diagram

        return reliability_diagram(self, titles=None if title is None else [title], path=path, **kwargs)

    def _errors(self):
        filled = self.weight > 0
        sum_conf = np.where(filled, self.mean_confidence * self.weight, 0.0)
        sum_acc = np.where(filled, self.accuracy * self.weight, 0.0)
        return _errors_from_bins(self.weight, sum_conf, sum_acc)

    @property
    def ece(self) -> float:
        """Expected calibration error Σ w_m/n |gap_m|."""
        return self._errors()[0]

    @property
    def mce(self) -> float:
        """Maximum |gap_m| over non-empty bins."""
        return self._errors()[1]

    @property
    def rmsce(self) -> float:
        """Root-mean-square calibration error sqrt(Σ w_m/n gap_m²)."""
        return self._errors()[2]

    @property
    def accuracy_overall(self) -> float:
        """Weighted accuracy over all rows."""
        filled = self.weight > 0
        return float(np.sum(self.accuracy[filled] * self.weight[filled]) / self.weight.sum())

    @property
    def mean_confidence_overall(self) -> float:
        """Weighted mean confidence over all rows."""
        filled = self.weight > 0
        return float(np.sum(self.mean_confidence[filled] * self.weight[filled]) / self.weight.sum())

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, ready for JSON or a DataFrame (empty bins: None)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = [None if isinstance(v, float) and v != v else v for v in value.tolist()]
            out[f.name] = value
        return out

    def to_frame(self) -> pd.DataFrame:
        """The table as a :class:`pandas.DataFrame`: one row per bin (index ``bin``), the columns of
        :meth:`to_dict` (empty bins: NaN), ``strategy`` in ``frame.attrs``.

        Needs pandas (``pip install 'calibkit[pandas]'``)."""
        from ._frames import require_pandas

        pd = require_pandas()
        frame = pd.DataFrame({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                              if isinstance(getattr(self, f.name), np.ndarray)})
        frame.index.name = "bin"
        frame.attrs["strategy"] = self.strategy
        return frame

    def __repr__(self) -> str:
        head = (f"ReliabilityTable({self.n_bins} bins, strategy={self.strategy!r}, "
                f"n={int(self.count.sum())}, ECE={self.ece:.4f}, MCE={self.mce:.4f}, "
                f"RMSCE={self.rmsce:.4f})")
        lines = [head, f"{'bin':>4} {'lower':>7} {'upper':>7} {'count':>10} {'confidence':>10} "
                       f"{'accuracy':>9} {'gap':>8}"]
        for m in range(self.n_bins):
            if self.weight[m] > 0:
                stats = f"{self.mean_confidence[m]:>10.4f} {self.accuracy[m]:>9.4f} {self.gap[m]:>+8.4f}"
            else:
                stats = f"{'-':>10} {'-':>9} {'-':>8}"
            lines.append(f"{m:>4} {self.lower[m]:>7.4f} {self.upper[m]:>7.4f} {int(self.count[m]):>10} {stats}")
        return "\n".join(lines)


def reliability_table(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int | str = 15,
    strategy: Strategy = "uniform",
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    backend: Backend = "auto",
    axis: int = 1,
    mask: ArrayLike | None = None,
    ignore_index: int | None = None,
) -> ReliabilityTable:
    """Per-bin confidence and accuracy: the data of a reliability diagram.

    Same arguments and conventions as :func:`calibration_error` (top-label
    for (N, K) scores, positive-class for (N,) scores). For (N,) scores,
    ``mean_confidence`` and ``accuracy`` are ``prob_pred`` and ``prob_true``
    of :func:`sklearn.calibration.calibration_curve` (which drops the empty
    bins that this table keeps). Dense predictions (``axis``, ``mask``,
    ``ignore_index``) as in :func:`calibration_error`: one table over every
    kept pixel.

    Returns
    -------
    ReliabilityTable
        ``lower``, ``upper``, ``count``, ``weight``, ``mean_confidence``,
        ``accuracy``, ``gap`` per bin, and the ``ece``, ``mce``, ``rmsce``,
        ``accuracy_overall``, ``mean_confidence_overall`` properties.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> calibkit.reliability_table(probs, labels, n_bins=5)
    ReliabilityTable(5 bins, strategy='uniform', n=4, ECE=0.2500, MCE=0.4000, RMSCE=0.2716)
     bin   lower   upper      count confidence  accuracy      gap
       0  0.0000  0.2000          0          -         -        -
       1  0.2000  0.4000          0          -         -        -
       2  0.4000  0.6000          1     0.6000    1.0000  +0.4000
       3  0.6000  0.8000          2     0.7500    0.5000  -0.2500
       4  0.8000  1.0000          1     0.9000    1.0000  +0.1000
    """
    if _is_dense_call(scores, axis, mask, ignore_index, "pooled"):
        def compute(src):
            return _dense_binned(src, n_bins=n_bins, strategy=strategy, backend=backend)

        b = _dense_metric(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
                          from_logits=from_logits, reduce="pooled", compute=compute,
                          rows=lambda s, y, w: _binned(s, y, w, n_bins=n_bins, strategy=strategy,
                                                       from_logits=from_logits, backend=backend))
    else:
        b = _binned(scores, labels, sample_weight, n_bins=n_bins, strategy=strategy, from_logits=from_logits,
                    backend=backend)
    filled = b.weight > 0
    # Empty bins: NaN, and no division (np.errstate costs more than the divisions on a small table).
    conf = np.divide(b.sum_confidence, b.weight, out=np.full(b.weight.shape, np.nan), where=filled)
    acc = np.divide(b.sum_accuracy, b.weight, out=np.full(b.weight.shape, np.nan), where=filled)
    return ReliabilityTable(
        lower=b.edges[:-1].copy(),
        upper=b.edges[1:].copy(),
        count=b.count,
        weight=b.weight,
        mean_confidence=conf,
        accuracy=acc,
        gap=acc - conf,
        strategy=strategy,
    )


def _totals(scores, labels, sample_weight, from_logits, check_sums, backend):
    k = _backend.kernels(backend)
    check_sums = check_bool(check_sums, "check_sums")
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    if scores.ndim == 1:
        probs = _binary_probabilities(scores, from_logits)
        r = k.binary_stats(probs, labels, sample_weight, 0, None, _nll_eps(probs.dtype))
        raise_for_status(r["status"], binary=True)
    else:
        r = k.top_label_stats(scores, labels, sample_weight, from_logits, 0, _nll_eps(scores.dtype))
        raise_for_status(r["status"], n_classes=scores.shape[1])
        if check_sums and not from_logits:  # after the kernel: a bad element is named first
            check_probability_rows(scores)
    totals = r["totals"]
    if not totals["weight"] > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return totals


def brier_score(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                sample_weight: ArrayLike | None = None, check_sums: bool = True,
                backend: Backend = "auto", axis: int = 1, mask: ArrayLike | None = None,
                ignore_index: int | None = None, reduce: str = "pooled") -> float:
    r"""Brier score (Brier 1950), the mean squared error of the probability vector.

    .. math::

        \mathrm{BS} = \frac{1}{n}\sum_i w_i \sum_{k=1}^{K} (p_{ik} - \mathbb{1}[y_i = k])^2

    For (N, K) scores this is the multiclass form (range [0, 2]), the
    ``scale_by_half=False`` form of :func:`sklearn.metrics.brier_score_loss`.
    scikit-learn's default (``scale_by_half="auto"``) halves it for binary
    problems only: for (N, 2) scores calibkit gives twice scikit-learn's
    default, for K > 2 the same. For (N,) scores it is the binary form
    mean (p_i - y_i)², equal to scikit-learn's default.

    Parameters are as in :func:`calibration_error`; with ``from_logits=True``
    the softmax (or logistic) probabilities are used, in the same pass.

    check_sums : bool, default True
        Require every row of (N, K) probabilities to sum to 1 within 1e-2
        (float16), 1e-3 (float32) or 1e-5 (float64); a row that does not
        raises a ValueError naming it (a row summing to 5 would otherwise
        give a Brier score above its range). ``False`` skips the check (one
        extra read of the scores, in chunks) and scores the rows as they are.
        Ignored for logits and (N,) scores.
    axis, mask, ignore_index, reduce
        Dense predictions, as in :func:`calibration_error` (``"per_image"``:
        the mean over the images of each image's Brier score). The sums are
        added piece by piece, so the result equals the flattened
        computation to rounding (relative 1e-12).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> round(calibkit.brier_score(probs, labels), 4)
    0.45
    >>> round(calibkit.brier_score(probs[:, 1], labels), 4)  # binary form: P(y=1) of shape (N,)
    0.225
    """
    if _is_dense_call(scores, axis, mask, ignore_index, reduce):
        return _dense_mean_total("brier", scores, labels, sample_weight, from_logits, check_sums, backend, axis, mask,
                                 ignore_index, reduce, brier_score)
    t = _totals(scores, labels, sample_weight, from_logits, check_sums, backend)
    return float(t["brier"] / t["weight"])


def nll(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False, sample_weight: ArrayLike | None = None,
        check_sums: bool = True, backend: Backend = "auto", axis: int = 1, mask: ArrayLike | None = None,
        ignore_index: int | None = None, reduce: str = "pooled") -> float:
    r"""Mean negative log-likelihood of the true class, -1/n Σ_i w_i log p_{i,y_i}.

    From logits it is computed stably in the same pass as the row maximum:
    -log p_y = log Σ_k exp(z_k - max z) - (z_y - max z). From probabilities,
    p_y is clipped below at ``eps = numpy.finfo(scores.dtype).eps`` so that a
    probability of 0 gives a large finite value, as
    :func:`sklearn.metrics.log_loss` does (it clips every probability and
    renormalises rows; calibkit does not renormalise, so the two agree on
    rows that sum to 1). For (N,) scores it is the binary log-loss with p
    clipped to [eps, 1 - eps].

    ``check_sums`` (default True) requires rows of (N, K) probabilities to
    sum to 1, as in :func:`brier_score`; ``check_sums=False`` scores the rows
    as they are.

    Dense predictions (``axis``, ``mask``, ``ignore_index``, ``reduce``) as
    in :func:`brier_score`: per-piece sums, equal to the flattened
    computation to rounding (relative 1e-12).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> round(calibkit.nll(probs, labels), 4)
    0.6456
    >>> round(calibkit.nll(np.log(probs), labels, from_logits=True), 4)
    0.6456
    """
    if _is_dense_call(scores, axis, mask, ignore_index, reduce):
        return _dense_mean_total("nll", scores, labels, sample_weight, from_logits, check_sums, backend, axis, mask,
                                 ignore_index, reduce, nll)
    t = _totals(scores, labels, sample_weight, from_logits, check_sums, backend)
    return float(t["nll"] / t["weight"])


# ----------------------------------------------------------------------------
# Dense predictions: (N, K, *spatial) scores, ignore_index / mask, reduce="per_image"
# ----------------------------------------------------------------------------

REDUCES = ("pooled", "per_image")

#: Largest size of the scores of one dense piece (a gathered piece is a copy of this size at most).
_DENSE_PIECE_BYTES = 4 << 20

#: Elements per block of the dense row-sum check (float64 sums of one block of rows at a time).
_DENSE_ROW_SUM_ELEMENTS = 1 << 20


def _is_dense_call(scores, axis, mask, ignore_index, reduce) -> bool:
    """True when a call takes the dense path; otherwise the (N, K) / (N,) code runs unchanged."""
    return (mask is not None or ignore_index is not None or reduce != "pooled" or type(axis) is not int
            or (axis != 1 and axis != -1) or getattr(scores, "ndim", 0) > 2)


def _element_error(name, status, pos, what):
    """A BadElementError about ``name`` at ``pos`` (the caller's (N, *spatial) coordinates)."""
    exc = BadElementError(status)
    exc.args = (f"{name}[{', '.join(map(str, pos))}] = {float(status[3])!r} {what}",)
    exc.position = tuple(pos)
    return exc


def _row_blocks(shape):
    """Index tuples over the leading axes of an array of ``shape``, each selecting at most about
    ``PIECE_ROWS`` elements (the trailing axes whole)."""
    j, size = 0, math.prod(shape)
    while j < len(shape) and size > PIECE_ROWS:
        size //= shape[j]
        j += 1
    return np.ndindex(*shape[:j])


def _kept_weight_max(d) -> float:
    """The largest weight of a kept pixel, after checking that every kept weight is finite and >= 0.

    A read of the weights (and labels / mask) a block of at most ``PIECE_ROWS`` pixels at a time: no copy
    of them (float64 weights are read as they are), and the scores are not read.
    """
    w, labels, mask, ignore = d.sample_weight, d.labels, d.mask, d.ignore_index
    largest = 0.0
    for idx in _row_blocks(w.shape):
        wb = w[idx]
        if wb.dtype != np.float64:
            wb = wb.astype(np.float64)  # one block
        keep = None if mask is None else np.asarray(mask[idx])
        if ignore is not None and labels is not None:
            k2 = labels[idx] != ignore
            keep = k2 if keep is None else keep & k2
        for bad, code, what in ((~np.isfinite(wb), WEIGHT_NOT_FINITE, "is not finite"),
                                (wb < 0, WEIGHT_NEGATIVE, "is negative")):
            if keep is not None:
                bad &= keep
            if bad.any():
                at = np.unravel_index(int(np.argmax(bad)), wb.shape)
                pos = tuple(int(i) for i in idx) + tuple(int(i) for i in at)
                raise _element_error("sample_weight", (code, 0, -1, float(w[pos])), pos, what)
        if keep is None:
            top = float(wb.max())
        else:
            top = float(np.max(wb, where=keep, initial=0.0))
        if top > largest:
            largest = top
    return largest


class _DenseSource:
    """A validated dense input of a metric: kept rows in pieces, weights divided by their largest kept value."""

    def __init__(self, d, from_logits, *, strict=True):
        self.d = d
        self.from_logits = from_logits
        self.n_classes = d.n_classes
        self.eps = _nll_eps(d.scores.dtype)
        self.n_kept = d.check_some_kept() if strict else d.n_kept()
        self.weighted = d.sample_weight is not None
        row_bytes = self.n_classes * d.scores.dtype.itemsize
        self.piece_rows = max(1 << 14, min(PIECE_ROWS, _DENSE_PIECE_BYTES // row_bytes))
        self.largest = None
        self.usable = self.n_kept > 0
        if self.weighted and self.usable:
            self.largest = _kept_weight_max(d)
            if self.largest == 0.0:
                if strict:
                    raise ValueError("sample_weight sums to 0 (every weight of a kept pixel is 0): a weighted mean "
                                     "over no weight is undefined")
                self.usable = False

    def pieces(self):
        """(piece, its weights divided by the largest kept weight, or None), in row order.

        Pieces hold at most ``_DENSE_PIECE_BYTES`` of scores (at least 2**14 rows), so that a gathered piece
        (one with ignored pixels) stays small whatever K."""
        largest = self.largest
        for p in self.d.pieces(self.piece_rows):
            w = p.sample_weight
            yield p, (None if w is None else w / largest)

    def check(self, r, p):
        self.d.raise_for_status(r["status"], p, n_classes=self.n_classes)

    def row_vectors(self, k, predicted=False):
        """Each kept row's confidence (float64), correctness (uint8), scaled weight (or None) and, with
        ``predicted``, predicted class (int64): vectors of ``n_kept`` values, filled piece by piece by the
        kernel that the (N, K) path runs on all rows at once (the same values, bit for bit). Also the total
        weight."""
        n = self.n_kept
        conf = np.empty(n, np.float64)
        target = np.empty(n, np.uint8)
        w = np.empty(n, np.float64) if self.weighted else None
        pred = np.empty(n, np.int64) if predicted else None
        total = 0.0
        for p, pw in self.pieces():
            rows = slice(p.offset, p.offset + p.n_rows)
            first = k.top_label_stats(p.scores, p.labels, pw, self.from_logits, 0, self.eps, False, conf[rows],
                                      target[rows])
            self.check(first, p)
            total += first["totals"]["weight"]
            if w is not None:
                w[rows] = pw
            if pred is not None:
                pred[rows] = np.argmax(p.scores, axis=1)
        return conf, target, w, pred, total

    def class_column(self, c):
        """The kept rows' probabilities of class c (float64, ``n_kept`` values), as :func:`_class_column`."""
        col = np.empty(self.n_kept, np.float64)
        for p, _ in self.pieces():
            lse = _row_logsumexp(p.scores) if self.from_logits else None
            col[p.offset:p.offset + p.n_rows] = _class_column(p.scores, c, lse)
        return col


def _dense_input(scores, labels, *, axis, mask, ignore_index, sample_weight, from_logits, reduce):
    """The checked dense input (a :class:`~calibkit._dense.Dense`) and ``from_logits``; the clear error when every
    pixel is ignored; reduce="per_image" on scores without spatial axes is an error."""
    if from_logits is not True and from_logits is not False:
        from_logits = check_bool(from_logits, "from_logits")
    d = as_dense(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight)
    if reduce == "per_image" and d.scores.ndim == 2:
        raise ValueError(f"reduce='per_image' needs scores with spatial axes, (N, K, *spatial) or (N, *spatial, K) "
                         f"(one image per index of the first axis); got scores of shape {d.scores.shape}, where "
                         "every row would be its own image: use reduce='pooled'")
    d.check_some_kept()
    return d, from_logits


def _image_source(d, from_logits, n):
    """The source of image ``n`` of ``d`` alone (views of the caller's arrays); ``usable`` is False when the image
    has no kept pixel, or no kept weight."""
    one = slice(n, n + 1)
    sub = as_dense(d.scores[one], d.labels[one], axis=d.axis, mask=None if d.mask is None else d.mask[one],
                   ignore_index=d.ignore_index,
                   sample_weight=None if d.sample_weight is None else d.sample_weight[one], name=d.name)
    return _DenseSource(sub, from_logits, strict=False)


def _select_binary_rows(scores, labels, sample_weight, mask, ignore_index):
    """(N,) scores with ``mask`` / ``ignore_index``: the kept rows (a copy of N values; K = 1)."""
    s = check_scores(scores)
    lab = np.asarray(labels)
    if lab.shape != s.shape:
        raise ValueError(f"labels must have shape {s.shape} to match scores, got shape {lab.shape}")
    keep = np.ones(s.shape, bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != s.shape:
            raise ValueError(f"mask must have shape {s.shape} to match scores, got shape {m.shape}")
        if m.dtype != bool:
            raise TypeError(f"mask must be a boolean array (True where a row is counted), got dtype {m.dtype}")
        keep &= m
    if ignore_index is not None:
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, "
                            f"got {type(ignore_index).__name__}")
        keep &= lab != ignore_index
    if not keep.any():
        raise ValueError("every row of scores is ignored (labels == ignore_index or mask is False everywhere): "
                         "there is nothing to evaluate")
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight)
        if w.shape != s.shape:
            raise ValueError(f"sample_weight must have shape {s.shape} to match scores, got shape {w.shape}")
        w = w[keep]
    return s[keep], lab[keep], w


def _dense_metric(scores, labels, *, axis, mask, ignore_index, sample_weight, from_logits, reduce, compute,
                  rows, combine=None):
    """The dense path of a metric: ``compute(source)`` pooled, or its mean over images (``reduce="per_image"``).

    ``rows(scores, labels, sample_weight)`` is the (N, K) / (N,) metric, run on the kept rows of (N,) scores.
    ``combine(results)`` makes the per-image result from the images' results (default: the mean of their floats).
    """
    check_choice(reduce, "reduce", REDUCES)
    if getattr(scores, "ndim", None) is None:
        scores = np.asarray(scores)
    if scores.ndim == 1:
        if reduce == "per_image":
            raise ValueError(f"reduce='per_image' needs scores with spatial axes, (N, K, *spatial); got scores of "
                             f"shape {scores.shape}: use reduce='pooled'")
        return rows(*_select_binary_rows(scores, labels, sample_weight, mask, ignore_index))
    d, from_logits = _dense_input(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                                  sample_weight=sample_weight, from_logits=from_logits, reduce=reduce)
    if reduce == "pooled":
        return compute(_DenseSource(d, from_logits))
    values = []
    for n in range(d.n_images):
        try:
            sub = _image_source(d, from_logits, n)
            if not sub.usable:
                continue
            value = compute(sub)
        except ValueError as exc:  # a bad element (or row) named in image n alone: name it in the whole input
            raise _in_image(exc, n) from None
        values.append(value)
    if not values:
        raise ValueError("no image has a kept pixel of positive weight: there is nothing to evaluate")
    if combine is not None:
        return combine(values)
    return float(np.mean([float(v) for v in values]))


def _in_image(exc, n):
    """``exc`` (raised on image n alone, whose index there is 0) with the element named in the whole input."""
    msg = str(exc.args[0]) if exc.args else str(exc)
    head, sep, tail = msg.partition("[0")
    if sep and head.isidentifier() and tail[:1] in (",", "]"):
        msg = f"{head}[{n}{tail}"
    exc.args = (msg,)
    if getattr(exc, "position", None):
        exc.position = (n,) + tuple(exc.position[1:])
    return exc


def _dense_binned(src, *, n_bins, strategy, backend, square_weights=False) -> _Binned:
    """:func:`_binned` of a dense source: the same per-bin sums.

    Equal-width bins: the kernel's sums of each piece, added piece by piece (equal to the sums over the
    flattened rows to rounding). Other strategies, ``"sweep"`` and Σ w²: the per-row confidences and
    correctness (N·H·W values, not ·K) are written piece by piece, then binned as on (N, K) input (the
    same bits).
    """
    rule = check_n_bins(n_bins, rules=True)
    check_choice(strategy, "strategy", STRATEGIES)
    k = _backend.kernels(backend)
    squares = square_weights and src.weighted
    vectors = strategy != "uniform" or rule == "sweep" or squares
    sq_weight = None
    if not vectors:
        if isinstance(rule, str):
            n_bins = resolve_n_bins(rule, None, None, None, strategy, n_rows=src.n_kept)
        sums = None
        total = 0.0
        for p, w in src.pieces():
            r = k.top_label_stats(p.scores, p.labels, w, src.from_logits, n_bins, src.eps, False)
            src.check(r, p)
            part = (r["count"], r["weight"], r["sum_score"], r["sum_target"])
            if sums is None:
                sums = [np.array(a, copy=True) for a in part]
            else:
                for s, a in zip(sums, part):
                    s += a
            total += r["totals"]["weight"]
        count, weight, sum_score, sum_target = sums
        edges = None
    else:
        conf, target, w, _, total = src.row_vectors(k)
        n_bins = resolve_n_bins(rule, conf, target, w, strategy)
        edges = _strategy_edges(conf, w, n_bins, strategy)
        n_bins = n_bins if edges is None else edges.shape[0] - 1
        r = k.binary_stats(conf, target, w, n_bins, edges, src.eps, False)
        raise_for_status(r["status"])
        count, weight, sum_score, sum_target = r["count"], r["weight"], r["sum_score"], r["sum_target"]
        if squares:
            sq_weight = k.binary_stats(conf, target, w * w, n_bins, edges, src.eps, False)["weight"]
    if not total > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return _Binned(edges=_equal_width_edges(n_bins) if edges is None else edges, count=count, weight=weight,
                   sum_confidence=sum_score, sum_accuracy=sum_target, totals={"weight": total},
                   sq_weight=sq_weight)


def _dense_classwise_bins(src, *, n_bins, strategy, backend, square_weights=False):
    """:func:`_classwise_bins` of a dense source (per-piece sums added; per-class columns of N·H·W values for
    ``strategy="quantile_midpoint"``)."""
    rule = _classwise_rule(n_bins)
    check_choice(strategy, "strategy", CLASSWISE_STRATEGIES)
    k = _backend.kernels(backend)
    n_classes = src.n_classes
    n_rows = src.n_kept
    n_bins = resolve_n_bins(rule, None, None, None, n_rows=n_rows)
    class_edges = None
    if strategy == "quantile_midpoint":
        check_cells(n_classes, "n_classes", min(n_bins, n_rows))
        for p, w in src.pieces():  # validate every element first (the kernel names a bad one)
            src.check(k.classwise_stats(p.scores, p.labels, w, src.from_logits, 1, None), p)
        per_class = [_midpoint_edges(src.class_column(c), n_bins) for c in range(n_classes)]
        n_bins = max(e.shape[0] for e in per_class) - 1
        class_edges = np.ones((n_classes, n_bins + 1))
        for c, e in enumerate(per_class):
            class_edges[c, :e.shape[0]] = e
    check_cells(n_classes, "n_classes", n_bins)

    def sums(square):
        acc = None
        for p, w in src.pieces():
            if square and w is not None:
                w = w * w
            r = k.classwise_stats(p.scores, p.labels, w, src.from_logits, n_bins, class_edges)
            src.check(r, p)
            part = (r["weight"], r["sum_score"], r["sum_target"], r["count"])
            if acc is None:
                acc = [np.array(a, copy=True) for a in part]
            else:
                for s, a in zip(acc, part):
                    s += a
        return [np.asarray(a).reshape(n_classes, n_bins) for a in acc]

    weight, sum_p, sum_y, count = sums(False)
    if not weight[0].sum() > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    sq = sums(True)[0] if square_weights and src.weighted else None
    return weight, sum_p, sum_y, count, sq


def _dense_conditional_cells(src, *, n_bins, strategy, backend, square_weights):
    """:func:`_conditional_cells` of a dense source: the per-row confidence, correctness and predicted class
    (N·H·W values each, not ·K), then the same cells."""
    rule = check_n_bins(n_bins, rules=True)
    if strategy != "uniform":
        raise ValueError(f"conditional_on_prediction=True needs strategy='uniform', got strategy={strategy!r}")
    k = _backend.kernels(backend)
    conf, correct, w, pred, total = src.row_vectors(k, predicted=True)
    if not total > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return _cells_from_rows(conf, correct, pred, w, rule, src.n_classes, square_weights)


def _dense_bootstrap_result(src, *, n_bins, norm, debias, ci, n_boot, seed, backend):
    """:func:`_bootstrap_result` of a dense source: the pieces, in row order, are the stream's batches, so every
    kept row gets the Poisson multiplicities of its row in the flattened copy."""
    m = check_n_bins(n_bins, rules=True)
    if isinstance(m, str):
        m = _dense_binned(src, n_bins=m, strategy="uniform", backend=backend).n_bins

    def batches():
        for p in src.d.pieces(src.piece_rows):
            yield p.scores, p.labels, p.sample_weight, (lambda exc, p=p: src.d.raise_for_status(
                exc.status, p, n_classes=src.n_classes))

    return _bootstrap_from(batches, m, src.largest, norm=norm, debias=debias, from_logits=src.from_logits, ci=ci,
                           n_boot=n_boot, seed=seed, backend=backend)


def _dense_classwise_bootstrap(src, *, n_bins, norm, debias, aggregate, ci, n_boot, seed, backend):
    """:func:`_classwise_bootstrap` of a dense source: per class, a binary stream over the pieces' class
    probabilities (one piece at a time: nothing of N·H·W size)."""
    rule = _classwise_rule(n_bins)
    k = _backend.kernels(backend)
    n_classes = src.n_classes
    m = resolve_n_bins(rule, None, None, None, n_rows=src.n_kept)
    check_cells(n_boot, "n_boot", m)
    check_cells(n_boot, "n_boot", n_classes)
    for p, w in src.pieces():  # validates every element first
        src.check(k.classwise_stats(p.scores, p.labels, w, src.from_logits, 1, None), p)

    def columns(c):
        def batches():
            for p in src.d.pieces(src.piece_rows):
                lse = _row_logsumexp(p.scores) if src.from_logits else None
                yield _class_column(p.scores, c, lse), (p.labels == c).astype(np.int64), p.sample_weight, None
        return batches

    return _classwise_bootstrap_from(columns, m, n_classes, src.largest, norm=norm, debias=debias,
                                     aggregate=aggregate, ci=ci, n_boot=n_boot, seed=seed, backend=backend)


def _dense_totals(src, check_sums, backend):
    """:func:`_totals` of a dense source: the kernel's totals of each piece, added piece by piece."""
    k = _backend.kernels(backend)
    check_sums = check_bool(check_sums, "check_sums")
    total = {"weight": 0.0, "brier": 0.0, "nll": 0.0}
    for p, w in src.pieces():
        r = k.top_label_stats(p.scores, p.labels, w, src.from_logits, 0, src.eps)
        src.check(r, p)
        if check_sums and not src.from_logits:
            _check_rows_dense(src.d, p)
        t = r["totals"]
        for key in total:
            total[key] += t[key]
    if not total["weight"] > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return total


def _check_rows_dense(d, p):
    """:func:`check_probability_rows` of one piece, the row named at its place in the caller's scores."""
    scores = p.scores
    tol = ROW_SUM_TOLERANCE[scores.dtype]
    step = max(1, _DENSE_ROW_SUM_ELEMENTS // scores.shape[1])
    for start in range(0, scores.shape[0], step):
        sums = np.add.reduce(scores[start:start + step], axis=1, dtype=np.float64)
        bad = np.isfinite(sums) & (np.abs(sums - 1.0) > tol)
        if bad.any():
            i = int(np.argmax(bad))
            at = list(map(str, d.position(p, start + i)))
            at.insert(d.axis, ":")
            raise ValueError(f"{d.name}[{', '.join(at)}] sums to {float(sums[i])!r}, not 1 (tolerance {tol:g} for "
                             f"{scores.dtype}); pass from_logits=True for logits, or check_sums=False to skip "
                             "this check")


def _dense_error(scores, labels, sample_weight, from_logits, axis, mask, ignore_index, reduce, spec, rows,
                 combine=None):
    """The dense path of the calibration errors: :func:`_error_result` of each source (pooled, or each image)."""
    if spec["ci"] is not None and reduce == "per_image":
        raise ValueError("ci is not available with reduce='per_image': the bootstrap interval is of the pooled error")

    def compute(src):
        return _error_result(None, None, sample_weight=None, from_logits=src.from_logits, src=src, **spec)

    return _dense_metric(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                         sample_weight=sample_weight, from_logits=from_logits, reduce=reduce, compute=compute,
                         rows=rows, combine=combine)


def _mean_results(results):
    """Per-image :class:`CalibrationErrorResult` objects combined: the means of ``value`` and ``squared``."""
    squared = [r.squared for r in results]
    return CalibrationErrorResult(float(np.mean([r.value for r in results])),
                                  None if None in squared else float(np.mean(squared)),
                                  max(r.n_bins for r in results))


def _dense_mean_total(key, scores, labels, sample_weight, from_logits, check_sums, backend, axis, mask, ignore_index,
                      reduce, metric):
    """Brier score or NLL (``key``) of dense input."""
    def compute(src):
        t = _dense_totals(src, check_sums, backend)
        return float(t[key] / t["weight"])

    return _dense_metric(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
                         from_logits=from_logits, reduce=reduce, compute=compute,
                         rows=lambda s, y, w: metric(s, y, from_logits=from_logits, sample_weight=w,
                                                     check_sums=check_sums, backend=backend))


def _dense_rows(scores, labels, *, axis, mask, ignore_index, sample_weight, from_logits, backend, check_sums=False):
    """Dense (or masked) input as the binary problem of its kept rows, for the metrics that work on each row's
    confidence and outcome (cumulative, smooth and CORP): returns (scores, labels, sample_weight, from_logits) to
    pass on to their (N,) code.

    (N, K, *spatial) / (N, K) scores: each kept pixel's top-label confidence (float64), correctness (0/1) and
    weight divided by the largest kept weight, written piece by piece by the kernel the (N, K) path runs (N·H·W
    values each, not ·K; the same values, bit for bit), with ``from_logits=False``. ``check_sums``: probability
    rows must sum to 1 (as :func:`calibkit._validation.check_probability_rows`). (N,) scores: the kept rows.
    """
    if getattr(scores, "ndim", None) is None:
        scores = np.asarray(scores)
    if scores.ndim == 1:
        s, y, w = _select_binary_rows(scores, labels, sample_weight, mask, ignore_index)
        return s, y, w, from_logits
    d, from_logits = _dense_input(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                                  sample_weight=sample_weight, from_logits=from_logits, reduce="pooled")
    src = _DenseSource(d, from_logits)
    conf, target, w, _, total = src.row_vectors(_backend.kernels(backend))
    if check_sums and not from_logits:
        for p, _ in src.pieces():
            _check_rows_dense(d, p)
    if not total > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return conf, target, w, False
