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

With n = Σ_m w(B_m) the total weight, acc(B_m) and conf(B_m) the weighted mean
correctness and confidence of bin m::

    ECE   = Σ_m w(B_m)/n · |acc(B_m) − conf(B_m)|                 (norm="l1")
    RMSCE = sqrt(Σ_m w(B_m)/n · (acc(B_m) − conf(B_m))²)          (norm="l2")
    MCE   = max over non-empty m of |acc(B_m) − conf(B_m)|        (norm="max")

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
from ._typing import ArrayLike, Backend, Norm, Strategy, StrPath
from ._validation import (
    check_bool,
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

STRATEGIES = ("uniform", "quantile")
NORMS = ("l1", "l2", "max")

__all__ = [
    "ReliabilityTable",
    "brier_score",
    "calibration_error",
    "classwise_calibration_error",
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
    v = np.sort(values)
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


def _binned(scores, labels, sample_weight, *, n_bins, strategy, from_logits, backend) -> _Binned:
    """Validate the inputs and run the kernels: per-bin sums and totals."""
    n_bins = check_n_bins(n_bins)
    check_choice(strategy, "strategy", STRATEGIES)
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    if scores.ndim == 1:
        probs = _binary_probabilities(scores, from_logits)
        eps = _nll_eps(probs.dtype)
        edges = None
        if strategy == "quantile":
            # Validate the whole input (labels, weights, values) before using it.
            first = k.binary_stats(probs, labels, sample_weight, 0, None, eps)
            raise_for_status(first["status"], binary=True)
            edges = _quantile_edges(probs, sample_weight, n_bins)
        r = k.binary_stats(probs, labels, sample_weight, n_bins, edges, eps)
        raise_for_status(r["status"], binary=True)
        if edges is None:
            edges = _equal_width_edges(n_bins)
    else:
        eps = _nll_eps(scores.dtype)
        if strategy == "uniform":
            # with_nll=False given by position: a keyword argument costs a pybind11 call a few microseconds
            r = k.top_label_stats(scores, labels, sample_weight, from_logits, n_bins, eps, False)
            raise_for_status(r["status"], n_classes=scores.shape[1])
            edges = _equal_width_edges(n_bins)
        else:
            # One pass writes each row's confidence and correctness (N values,
            # not N x K), then those N values are binned at their quantiles.
            n = scores.shape[0]
            conf = np.empty(n, np.float64)
            correct = np.empty(n, np.uint8)
            # with_nll=False, conf_out, correct_out by position (keywords cost a pybind11 call microseconds)
            first = k.top_label_stats(scores, labels, sample_weight, from_logits, 0, eps, False, conf, correct)
            raise_for_status(first["status"], n_classes=scores.shape[1])
            edges = _quantile_edges(conf, sample_weight, n_bins)
            r = k.binary_stats(conf, correct, sample_weight, n_bins, edges, eps)
            raise_for_status(r["status"])
            r["totals"] = first["totals"]
    totals = r["totals"]
    if not totals["weight"] > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    return _Binned(
        edges=edges,
        count=r["count"],
        weight=r["weight"],
        sum_confidence=r["sum_score"],
        sum_accuracy=r["sum_target"],
        totals=totals,
    )


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
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    norm: Norm = "l1",
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    backend: Backend = "auto",
) -> float:
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
    scores : array-like of shape (N, K) or (N,)
        Class probabilities (rows in [0, 1]; they need not sum to 1), or
        logits with ``from_logits=True``. float16/32/64, any strides,
        memory-mapped arrays are read in place. Shape (N,) is P(y=1) of a
        binary problem (or its logit), calibrated against the label.
    labels : array-like of int, shape (N,)
        True classes in [0, K) (0 or 1 for (N,) scores).
    n_bins : int, default 15
        Number of bins M >= 1.
    strategy : {"uniform", "quantile"}, default "uniform"
        Equal-width bins ((m-1)/M, m/M], or equal-mass bins (adaptive ECE,
        Nixon et al. 2019) at the quantiles of the confidences.
    norm : {"l1", "l2", "max"}, default "l1"
        ECE, RMS calibration error, or MCE.
    from_logits : bool, default False
        Whether ``scores`` are logits (softmax of each row, in one fused pass
        with a log-sum-exp; the logistic function for (N,) scores).
    sample_weight : array-like of shape (N,), optional
        Non-negative finite row weights, not all 0. Every metric is invariant
        to scaling all weights: they are divided by their largest before use
        (a copy of N values), so weights near 1e308 or subnormal weights give
        the same result as weights of 1.
    backend : {"auto", "cpp", "numba"}, default "auto"
        Kernel implementation; "auto" is $CALIBKIT_BACKEND, else C++.

    Returns
    -------
    float

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
    b = _binned(scores, labels, sample_weight, n_bins=n_bins, strategy=strategy, from_logits=from_logits,
                backend=backend)
    return _norm_value(_errors_from_bins(b.weight, b.sum_confidence, b.sum_accuracy), norm)


def ece(scores: ArrayLike, labels: ArrayLike, *, n_bins: int = 15, strategy: Strategy = "uniform",
        from_logits: bool = False, sample_weight: ArrayLike | None = None, backend: Backend = "auto") -> float:
    """Expected calibration error: :func:`calibration_error` with ``norm="l1"``.

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
                             sample_weight=sample_weight, backend=backend)


def mce(scores: ArrayLike, labels: ArrayLike, *, n_bins: int = 15, strategy: Strategy = "uniform",
        from_logits: bool = False, sample_weight: ArrayLike | None = None, backend: Backend = "auto") -> float:
    """Maximum calibration error: :func:`calibration_error` with ``norm="max"``.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> labels = np.array([0, 1, 1, 0])
    >>> round(calibkit.mce(probs, labels, n_bins=10), 4)
    0.8
    """
    return calibration_error(scores, labels, n_bins=n_bins, strategy=strategy, norm="max", from_logits=from_logits,
                             sample_weight=sample_weight, backend=backend)


def classwise_calibration_error(
    scores: ArrayLike,
    labels: ArrayLike,
    *,
    n_bins: int = 15,
    norm: Norm = "l1",
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    backend: Backend = "auto",
) -> float:
    r"""Class-wise (marginal) calibration error (Kull et al. 2019).

    .. math::

        \mathrm{cwECE} = \frac{1}{K}\sum_{k=1}^{K}\sum_{m=1}^{M}
        \frac{w(B_{mk})}{n}\,\bigl|\bar{y}_k(B_{mk}) - \bar{p}_k(B_{mk})\bigr|

    where B_{mk} holds the rows whose probability of class k falls in the
    equal-width bin m, and \bar{y}_k is the fraction of them labelled k. Every
    class's one-vs-rest error uses the same bins and the same ``norm`` as
    :func:`calibration_error`; the result is their mean over the K classes.
    Equal-width bins only: equal-mass bins per class would need K sorts of
    N values.

    Parameters
    ----------
    scores : array-like of shape (N, K)
        Probabilities, or logits with ``from_logits=True``.
    labels : array-like of int, shape (N,)
    n_bins, norm, from_logits, sample_weight, backend
        As in :func:`calibration_error`.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]])
    >>> labels = np.array([0, 1, 2, 2])
    >>> round(calibkit.classwise_calibration_error(probs, labels, n_bins=5), 4)
    0.2833
    """
    n_bins = check_n_bins(n_bins)
    check_choice(norm, "norm", NORMS)
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, K) for the class-wise error, got shape {scores.shape}")
    n_classes = scores.shape[1]
    check_cells(n_classes, "n_classes", n_bins)
    r = k.classwise_stats(scores, labels, sample_weight, from_logits, n_bins, None)
    raise_for_status(r["status"], n_classes=n_classes)
    weight = np.asarray(r["weight"]).reshape(n_classes, n_bins)
    if not weight[0].sum() > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    sum_p = np.asarray(r["sum_score"]).reshape(n_classes, n_bins)
    sum_y = np.asarray(r["sum_target"]).reshape(n_classes, n_bins)
    # np.mean's sum and division without its Python layer (the same bits)
    return float(np.add.reduce(_classwise_errors(weight, sum_p, sum_y, norm)) / n_classes)


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
    n_bins: int = 15,
    strategy: Strategy = "uniform",
    from_logits: bool = False,
    sample_weight: ArrayLike | None = None,
    backend: Backend = "auto",
) -> ReliabilityTable:
    """Per-bin confidence and accuracy: the data of a reliability diagram.

    Same arguments and conventions as :func:`calibration_error` (top-label
    for (N, K) scores, positive-class for (N,) scores). For (N,) scores,
    ``mean_confidence`` and ``accuracy`` are ``prob_pred`` and ``prob_true``
    of :func:`sklearn.calibration.calibration_curve` (which drops the empty
    bins that this table keeps).

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
                backend: Backend = "auto") -> float:
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
    t = _totals(scores, labels, sample_weight, from_logits, check_sums, backend)
    return float(t["brier"] / t["weight"])


def nll(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False, sample_weight: ArrayLike | None = None,
        check_sums: bool = True, backend: Backend = "auto") -> float:
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
    t = _totals(scores, labels, sample_weight, from_logits, check_sums, backend)
    return float(t["nll"] / t["weight"])
