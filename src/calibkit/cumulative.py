"""Cumulative calibration: the cumulative-differences statistics of Arrieta-Ibarra, Gujral, Tannen, Tygert & Xu.

No bins and no bandwidth: the rows are sorted by score once (the native radix sort, stable) and the
calibration error is read off the path of the cumulative differences between outcomes and scores.
Under perfect calibration that path, scaled by its standard deviation, behaves like a standard Brownian
motion on [0, 1], so its range and its largest absolute value have known distributions (Kuiper and
Kolmogorov-Smirnov) that give p-values.

Reference: I. Arrieta-Ibarra, P. Gujral, J. Tannen, M. Tygert and C. Xu, "Metrics of calibration for
probabilistic predictions", Journal of Machine Learning Research 23(351), 2022. The reference
implementation checked by the tests is ``mcgrad.metrics`` (``ecce``, ``ecce_sigma``, ``ecce_pvalue``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._validation import raise_for_status

__all__ = ["CumulativeCalibrationResult", "cumulative_calibration_error"]

_EPS = sys.float_info.epsilon
#: At or above this sigma-scaled range the Kuiper p-value is machine epsilon (mcgrad's ECCE_SIGMA_MAX).
KUIPER_MAX = 8.26732673
#: Below this sigma-scaled statistic the p-value is 1 (mcgrad's ECCE_SIGMA_MIN).
STAT_MIN = 1e-20


@dataclasses.dataclass(frozen=True)
class CumulativeCalibrationResult:
    """Cumulative-differences calibration statistics (see :func:`cumulative_calibration_error`).

    Attributes
    ----------
    range : float
        ECCE-R, max - min of the cumulative differences C_0 = 0, C_1, ..., C_n.
    max_abs : float
        ECCE-MAD, max |C_k|.
    sigma : float
        Standard deviation of C_n under perfect calibration.
    range_sigma, max_abs_sigma : float
        ``range / sigma`` and ``max_abs / sigma`` (inf when sigma is 0 and the statistic is not, 0.0 when
        both are 0).
    range_pvalue : float
        P-value of ``range_sigma`` under the Kuiper distribution (range of a standard Brownian motion).
    max_abs_pvalue : float
        P-value of ``max_abs_sigma`` under the Kolmogorov-Smirnov distribution (maximum of the absolute
        value of a standard Brownian motion).
    count : int
        Rows.
    weight : float
        Total weight of the rows: the row count without weights; with weights, their sum after they are
        divided by the largest (every statistic here is invariant to the scale of the weights).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> r = calibkit.cumulative_calibration_error(np.array([0.2, 0.6, 0.9]), np.array([0, 1, 1]))
    >>> r.count, round(r.range, 4), round(r.max_abs, 4)
    (3, 0.1667, 0.1)
    """

    range: float
    max_abs: float
    sigma: float
    range_sigma: float
    max_abs_sigma: float
    range_pvalue: float
    max_abs_pvalue: float
    count: int
    weight: float

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dictionary."""
        return dataclasses.asdict(self)


def _scaled(stat: float, sigma: float) -> float:
    """stat / sigma with mcgrad's conventions for sigma == 0."""
    if sigma == 0:
        return math.inf if stat != 0 else 0.0
    return stat / sigma


def kuiper_pvalue(x: float) -> float:
    """P(range of a standard Brownian motion on [0, 1] >= x): the p-value of a sigma-scaled ECCE-R.

    The CDF is the series sum_{k>=0} (8/x^2 + 2/(pi^2 (k+1/2)^2)) exp(-2 pi^2 (k+1/2)^2 / x^2), summed to
    machine precision; as mcgrad does, the p-value is 1 below ``STAT_MIN`` = 1e-20 and machine epsilon
    (2.2e-16) at or above ``KUIPER_MAX`` = 8.26732673.
    """
    x = float(x)
    if not x >= STAT_MIN:  # NaN included: no evidence
        return 1.0
    if x >= KUIPER_MAX:
        return _EPS
    # Terms needed for a truncation error below eps (the bound of the series' tail).
    fact = 4.0 / math.sqrt(2.0 * math.pi) * (1.0 / x + x / math.pi ** 2)
    kmax = math.ceil(0.5 + x / math.pi / math.sqrt(2.0) * math.sqrt(math.log(fact / _EPS)))
    cdf = 0.0
    for k in range(kmax):
        h = k + 0.5
        cdf += (8.0 / x ** 2 + 2.0 / (h * h * math.pi ** 2)) * math.exp(-2.0 * h * h * math.pi ** 2 / x ** 2)
    return 1.0 - cdf


def ks_pvalue(x: float) -> float:
    """P(max |B_t| over [0, 1] >= x) for a standard Brownian motion B: the p-value of a sigma-scaled ECCE-MAD.

    For x < 1 from the theta series of the CDF, (4/pi) sum_{k>=0} (-1)^k/(2k+1) exp(-(2k+1)^2 pi^2 / (8 x^2));
    for x >= 1 from the reflection series 4 sum_{j>=0} (-1)^j Q((2j+1) x) (Q the standard normal tail), which
    keeps small p-values accurate. Floored at machine epsilon and 1 below ``STAT_MIN``, as the Kuiper p-value.
    """
    from scipy.special import ndtr  # imported here: SciPy costs ~0.2 s at import

    x = float(x)
    if not x >= STAT_MIN:
        return 1.0
    if x < 1.0:
        cdf = 0.0
        for k in range(8):
            m = 2 * k + 1
            cdf += (-1) ** k / m * math.exp(-m * m * math.pi ** 2 / (8.0 * x * x))
        p = 1.0 - 4.0 / math.pi * cdf
    else:
        p = 4.0 * sum((-1) ** j * float(ndtr(-(2 * j + 1) * x)) for j in range(8))
    return min(1.0, max(_EPS, p))


def _confidence_outcome(scores, labels, sample_weight, from_logits, backend):
    """Checked (N,) float64 scores and outcomes and the (scaled) weights: binary scores are P(y=1) with
    outcome y; (N, K) rows give the top-label confidence and correctness from one fused pass (no N x K
    temporary). Returns (p, y as 0/1 uint8, w, total weight)."""
    from .metrics import _binary_probabilities, _nll_eps, _prepare

    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    if scores.ndim == 1:
        probs = _binary_probabilities(scores, from_logits)
        r = k.binary_stats(probs, labels, sample_weight, 0, None, _nll_eps(probs.dtype))
        raise_for_status(r["status"], binary=True)
        p = np.asarray(probs, dtype=np.float64)
        y = labels.astype(np.uint8)  # 0/1, checked above
    else:
        n = scores.shape[0]
        p = np.empty(n, np.float64)
        correct = np.empty(n, np.uint8)
        r = k.top_label_stats(scores, labels, sample_weight, from_logits, 0, _nll_eps(scores.dtype), False, p,
                              correct)
        raise_for_status(r["status"], n_classes=scores.shape[1])
        y = correct
    weight = float(r["totals"]["weight"])
    if not weight > 0:
        raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
    if not p.flags.c_contiguous:
        p = np.ascontiguousarray(p)
    return p, y, sample_weight, weight


def _cumulative(scores, labels, sample_weight, from_logits, backend, want_path):
    p, y, w, _ = _confidence_outcome(scores, labels, sample_weight, from_logits, backend)
    r = _backend.kernels(backend).cumulative_differences(p, y, w, want_path)
    return p, y, w, r


def cumulative_calibration_error(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                                 sample_weight: ArrayLike | None = None,
                                 backend: Backend = "auto") -> CumulativeCalibrationResult:
    r"""Cumulative calibration error (ECCE-R and ECCE-MAD) with its scale and p-values.

    Rows are sorted by score p (binary: P(y=1) with outcome y; top-label: the confidence with outcome
    "the prediction is correct"); with weights w and W = sum w, the cumulative differences are

    .. math:: C_0 = 0, \qquad C_k = \frac{1}{W} \sum_{j \le k} w_j (y_j - p_j),

    and under perfect calibration C_n has the standard deviation

    .. math:: \sigma = \frac{1}{W} \sqrt{\sum_j w_j^2 \, p_j (1 - p_j)}.

    ``range`` (ECCE-R) is max_k C_k - min_k C_k, ``max_abs`` (ECCE-MAD) is max_k |C_k|; scaled by sigma
    they follow, asymptotically under perfect calibration, the distributions of the range (Kuiper) and of
    the largest absolute value (Kolmogorov-Smirnov) of a standard Brownian motion on [0, 1], which give
    ``range_pvalue`` and ``max_abs_pvalue`` (floored at machine epsilon, see :func:`kuiper_pvalue`).

    Arrieta-Ibarra, Gujral, Tannen, Tygert & Xu, "Metrics of calibration for probabilistic predictions",
    JMLR 23(351), 2022. ``range``, ``sigma``, ``range_sigma`` and ``range_pvalue`` equal
    ``mcgrad.metrics.ecce``, ``ecce_sigma`` / ``ecce``, ``ecce_sigma`` and ``ecce_pvalue`` (to 1e-9).

    Parameters
    ----------
    scores : array-like of shape (N,) or (N, K)
        Binary P(y=1) (or logits with ``from_logits=True``), or K-class probabilities or logits.
    labels : array-like of shape (N,)
        Binary labels 0/1, or class indices in [0, K).
    from_logits : bool, default False
        Whether ``scores`` are logits (binary: the logistic function; K classes: softmax, fused with the
        confidence pass).
    sample_weight : array-like of shape (N,), optional
        Non-negative row weights (not all 0).
    backend : {"auto", "cpp", "numba"}

    Returns
    -------
    CumulativeCalibrationResult

    Notes
    -----
    Ties: rows with equal scores are taken in their input order (a stable sort; one radix sort of the N
    scores). Within a run of tied scores the path, and so ``range`` and ``max_abs``, can depend on that
    order; the values at the ends of a run do not. mcgrad orders ties with NumPy's default argsort, which
    is not stable and differs between machines (SIMD sorts), so with tied scores of mixed outcomes the two
    can differ by at most the weight of a tied run over W; without such ties they agree.

    Memory: N float64 scores and outcomes, N int64 sort positions and keys (about 32 bytes a row).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> p = rng.random(2000)
    >>> y = (rng.random(2000) < p).astype(int)
    >>> r = calibkit.cumulative_calibration_error(p, y)
    >>> round(r.range, 4), round(r.range_sigma, 2), r.range_pvalue > 0.05
    (0.0104, 1.14, True)
    """
    _, _, _, r = _cumulative(scores, labels, sample_weight, from_logits, backend, False)
    return _result(r["range"], r["max_abs"], r["variance"], r["total_weight"], _count(scores))


def _count(scores):
    shape = getattr(scores, "shape", None)
    return int(shape[0]) if shape is not None else len(scores)


def _result(range_sum, max_abs_sum, variance, total, count) -> CumulativeCalibrationResult:
    """The result from the path's sums (range and max |S| of S = W C, sum w^2 p (1 - p), W)."""
    rng = range_sum / total
    max_abs = max_abs_sum / total
    sigma = math.sqrt(variance) / total
    range_sigma = _scaled(rng, sigma)
    max_abs_sigma = _scaled(max_abs, sigma)
    return CumulativeCalibrationResult(
        range=rng, max_abs=max_abs, sigma=sigma, range_sigma=range_sigma, max_abs_sigma=max_abs_sigma,
        range_pvalue=kuiper_pvalue(range_sigma), max_abs_pvalue=ks_pvalue(max_abs_sigma), count=count,
        weight=total)


def cumulative_curve(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                     sample_weight: ArrayLike | None = None, backend: Backend = "auto") -> dict[str, Any]:
    """The path behind :func:`cumulative_calibration_error`, for plotting.

    Returns a dictionary with ``x`` (the cumulative weight fraction, 0 then k-th row's, n + 1 values),
    ``cumulative`` (C_0 = 0, ..., C_n), ``scores`` (the sorted scores, n values), ``sigma`` and ``result``
    (the :class:`CumulativeCalibrationResult`).

    Examples
    --------
    >>> import calibkit.cumulative as cu
    >>> c = cu.cumulative_curve([0.2, 0.9, 0.6], [0, 1, 1])
    >>> [round(float(v), 3) for v in c["cumulative"]]
    [0.0, -0.067, 0.067, 0.1]
    """
    p, _, w, r = _cumulative(scores, labels, sample_weight, from_logits, backend, True)
    order = r["order"]
    total = r["total_weight"]
    cw = np.cumsum(w[order]) if w is not None else np.arange(1, p.shape[0] + 1, dtype=np.float64)
    result = _result(r["range"], r["max_abs"], r["variance"], total, p.shape[0])
    return {"x": np.concatenate(([0.0], cw / total)), "cumulative": np.concatenate(([0.0], r["path"] / total)),
            "scores": p[order], "sigma": result.sigma, "result": result}


# -- from a streaming state ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class StreamedCumulative:
    """ECCE-R / ECCE-MAD of a :class:`calibkit.CalibrationAccumulator`, read from its fine histogram.

    The fine buckets are contiguous in confidence, so the cumulative differences at the bucket boundaries are
    those of the one-shot path (to rounding); inside a bucket f the path moves by at most A_f = sum w |y - c|
    (kept by the state), and with D_f = sum w (y - c) it stays within [(S + S' - A_f) / 2, (S + S' + A_f) / 2]
    between its values S and S' at the bucket's ends. Hence, exactly (not statistically),

        range <= one-shot range <= range + range_bound,  max_abs <= one-shot max_abs <= max_abs + max_abs_bound.

    ``sigma`` needs sum w^2 c (1 - c): for an unweighted stream it is bounded per bucket from the bucket's
    confidence interval [lo, hi] and sum c (sum c^2 lies in [s^2 / n, (lo + hi) s - n lo hi]), and reported as
    the middle of that interval with ``sigma_bound`` its half-width; a weighted stream keeps no sum of w^2,
    so its ``sigma``, ``range_sigma`` and p-values are None. ``range_sigma`` and the p-values use the
    reported ``range``, ``max_abs`` and ``sigma``.
    """

    range: float
    range_bound: float
    max_abs: float
    max_abs_bound: float
    sigma: float | None
    sigma_bound: float | None
    range_sigma: float | None
    max_abs_sigma: float | None
    range_pvalue: float | None
    max_abs_pvalue: float | None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dictionary."""
        return dataclasses.asdict(self)


def _fine_confidence_intervals(index, fine_bits, fine_levels):
    """[lo, hi] of the confidences a fine bucket can hold (the FineGrid of stream.hpp: per side of 1/2,
    2**fine_bits buckets per octave of d = min(c, 1 - c), the lowest also holding every d < 2**-(levels+1))."""
    side = fine_levels << fine_bits
    upper = index >= side
    r = np.where(upper, 2 * side - 1 - index, index)
    level = fine_levels - 1 - (r >> fine_bits)
    m = r & ((1 << fine_bits) - 1)
    scale = np.ldexp(1.0, -(level + 2).astype(np.int64)) / (1 << fine_bits)
    d_lo = np.where(r == 0, 0.0, scale * ((1 << fine_bits) + m))
    d_hi = scale * ((1 << fine_bits) + m + 1)
    return np.where(upper, 1.0 - d_hi, d_lo), np.where(upper, 1.0 - d_lo, d_hi)


def _from_fine(fine, fine_bits, fine_levels, weighted, variance=None) -> StreamedCumulative:
    """The :class:`StreamedCumulative` of a fine histogram ((5, R): count, sum w, sum w c, sum w y, sum w |y - c|).

    ``variance`` is the stream's sum of w^2 c (1 - c) when the state keeps it (None: unknown, as in states written
    before it was kept): sigma is then exact (``sigma_bound`` 0), weighted or not. Without it, an unweighted
    stream's sigma is bounded from the fine buckets and a weighted stream has none.
    """
    nz = (fine[0] > 0).nonzero()[0]
    count, w, sc, sy, a = fine.take(nz, axis=1)
    total = float(w.sum())
    end = np.cumsum(sy - sc)
    start = np.concatenate(([0.0], end[:-1]))
    hi_b = max(0.0, float(end.max()))
    lo_b = min(0.0, float(end.min()))
    hi = max(hi_b, float(((start + end + a) / 2).max()))
    lo = min(lo_b, float(((start + end - a) / 2).min()))
    rng = (hi_b - lo_b) / total
    max_abs = max(hi_b, -lo_b) / total
    range_bound = max(0.0, (hi - lo) / total - rng)
    max_abs_bound = max(0.0, max(hi, -lo) / total - max_abs)
    sigma = sigma_bound = range_sigma = max_abs_sigma = range_pvalue = max_abs_pvalue = None
    if variance is not None:
        sigma, sigma_bound = math.sqrt(max(0.0, variance)) / total, 0.0
        range_sigma, max_abs_sigma = _scaled(rng, sigma), _scaled(max_abs, sigma)
        range_pvalue, max_abs_pvalue = kuiper_pvalue(range_sigma), ks_pvalue(max_abs_sigma)
    elif not weighted and np.array_equal(count, w):  # every row of weight 1 (a faded or forged state is not)
        c_lo, c_hi = _fine_confidence_intervals(nz, fine_bits, fine_levels)
        sq_hi = np.maximum((c_lo + c_hi) * sc - count * c_lo * c_hi, sc * sc / count)
        v_lo = max(0.0, float(np.sum(sc - sq_hi)))
        v_hi = max(0.0, float(np.sum(sc - sc * sc / count)))
        s_lo, s_hi = math.sqrt(v_lo) / total, math.sqrt(v_hi) / total
        sigma, sigma_bound = (s_lo + s_hi) / 2, (s_hi - s_lo) / 2
        range_sigma, max_abs_sigma = _scaled(rng, sigma), _scaled(max_abs, sigma)
        range_pvalue, max_abs_pvalue = kuiper_pvalue(range_sigma), ks_pvalue(max_abs_sigma)
    return StreamedCumulative(range=rng, range_bound=range_bound, max_abs=max_abs, max_abs_bound=max_abs_bound,
                              sigma=sigma, sigma_bound=sigma_bound, range_sigma=range_sigma,
                              max_abs_sigma=max_abs_sigma, range_pvalue=range_pvalue, max_abs_pvalue=max_abs_pvalue)
