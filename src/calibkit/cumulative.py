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
import functools
import math
import sys
from typing import Any

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._validation import check_bootstrap, raise_for_status
from .metrics import _percentile_interval

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
    ci : dict or None
        With ``ci=`` given: the percentile bootstrap interval ``(low, high)`` at ``confidence_level`` of
        each of ``"range"``, ``"max_abs"``, ``"range_sigma"`` and ``"max_abs_sigma"``; None otherwise.
    confidence_level : float or None
    n_boot : int
        Bootstrap replicates (0 without ``ci``).

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
    ci: dict | None = None
    confidence_level: float | None = None
    n_boot: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dictionary (intervals as lists)."""
        out = dataclasses.asdict(self)
        if self.ci is not None:
            out["ci"] = {name: list(v) if v is not None else None for name, v in self.ci.items()}
        return out


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
        # Q(z) = erfc(z / sqrt 2) / 2, from the math module (accurate in the far tail; no SciPy import, which
        # costs 0.2-0.7 s and this is called by every CalibrationAccumulator.compute())
        p = 2.0 * sum((-1) ** j * math.erfc((2 * j + 1) * x / math.sqrt(2.0)) for j in range(8))
    return min(1.0, max(_EPS, p))


# -- Poisson bootstrap (also used by calibkit.smooth) -----------------------------------------------------------

#: Cells (replicates x rows) of one block of bootstrap multiplicities: the memory of the replicates is bounded
#: by a few arrays of this many elements (about 16 MB each), whatever N and n_boot.
BOOT_BLOCK_CELLS = 1 << 21
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _mix64(z):
    """SplitMix64's finaliser (stream.hpp's mix64) on a new uint64 array ``z``, in place (uint64 arithmetic
    wraps as in C++)."""
    t = np.right_shift(z, np.uint64(30))
    z ^= t
    z *= np.uint64(0xBF58476D1CE4E5B9)
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= np.uint64(0x94D049BB133111EB)
    np.right_shift(z, np.uint64(31), out=t)
    z ^= t
    return z


def poisson_multiplicities(seed: int, positions: np.ndarray, first: int, count: int) -> np.ndarray:
    """Poisson(1) multiplicities of the rows at stream ``positions`` in replicates ``first .. first + count - 1``.

    The counter-based generator of :class:`~calibkit.CalibrationAccumulator` (``bootstrap=B, seed=seed``,
    stream.hpp's ``RowDraws`` and ``poisson1``), so a row has the same multiplicity in replicate b here as in
    a streamed run, and in :func:`calibkit.calibration_error` with ``ci`` and the same seed: a pure function
    of (seed, position, replicate), independent of backends, threads and of the order rows are asked in.
    Returns a (count, len(positions)) uint8 array (values 0 to 12).

    Examples
    --------
    >>> import numpy as np
    >>> from calibkit.cumulative import poisson_multiplicities
    >>> m = poisson_multiplicities(0, np.arange(100000), 0, 2)
    >>> m.shape, bool(abs(m.mean() - 1) < 0.01)
    ((2, 100000), True)
    """
    return _draw(_row_keys(seed, positions), first, count)


def _row_keys(seed, positions):
    """stream.hpp's RowDraws key of each row: mix64(seed ^ mix64(position))."""
    positions = np.asarray(positions).astype(np.uint64)  # a copy, mixed in place
    return _mix64(np.uint64(seed) ^ _mix64(positions))


def _draw(key, first, count):
    """:func:`poisson_multiplicities` from the rows' keys (computed once for every block of replicates)."""
    out = np.zeros((count, key.shape[0]), np.uint8)
    hit = np.empty(key.shape[0], bool)
    thresholds = _poisson_thresholds()
    for pair in range(first // 2, (first + count + 1) // 2):
        h = _mix64(key + np.uint64(((pair + 1) * _GOLDEN) & _MASK64))
        for s, shift in ((2 * pair, 32), (2 * pair + 1, 0)):
            if first <= s < first + count:
                word = (h >> np.uint64(shift)).astype(np.uint32)  # high, then low 32 bits
                k = out[s - first]
                for t in thresholds[:3]:  # k = #{j : word / 2**32 >= cdf[j]}: densely for k <= 3,
                    np.greater_equal(word, t, out=hit)
                    np.add(k, hit, out=k, casting="unsafe")
                tail = np.flatnonzero(hit)  # then on the 2% of rows with k = 3
                if tail.size:
                    k[tail] += (word[tail, None] >= thresholds[None, 3:]).sum(axis=1, dtype=np.uint8)
    return out


@functools.lru_cache(maxsize=1)
def _poisson_thresholds():
    """The stream's Poisson(1) CDF table (P(X <= k), k = 0..14, correctly rounded: stream.hpp's ``poisson1``)
    as 32-bit thresholds: a word w (u = w / 2**32 exactly) has u >= cdf[k] exactly when
    w >= ceil(cdf[k] * 2**32); thresholds of 2**32 and above are never reached. Derived here in 50-digit
    decimal arithmetic rather than imported from the Numba twin (importing Numba costs a second); the
    tests check it equals the kernels' table."""
    import decimal

    ctx = decimal.Context(prec=50)
    e_inv = ctx.exp(decimal.Decimal(-1))
    total, term, cdf = decimal.Decimal(0), decimal.Decimal(1), []
    for k in range(15):
        if k:
            term = ctx.divide(term, k)
        total = ctx.add(total, term)
        cdf.append(float(ctx.multiply(total, e_inv)))
    thresholds = np.ceil(np.array(cdf) * 4294967296.0)
    return thresholds[thresholds < 4294967296.0].astype(np.uint32)


def _replicate_blocks(n_rows, n_boot):
    """(first, count) blocks of replicates with count * n_rows <= BOOT_BLOCK_CELLS (one replicate at least)."""
    step = max(1, BOOT_BLOCK_CELLS // max(n_rows, 1))
    return [(b, min(step, n_boot - b)) for b in range(0, n_boot, step)]


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
        r = k.binary_stats(probs, labels, sample_weight, 0, None, _nll_eps(probs.dtype), False)  # checks only
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
                                 sample_weight: ArrayLike | None = None, ci: float | None = None,
                                 n_boot: int = 1000, seed: int = 0,
                                 backend: Backend = "auto",
                                 axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None) -> CumulativeCalibrationResult:
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
    ci : float in (0, 1), optional
        Also give percentile bootstrap intervals at this confidence level (``result.ci``) of ``range``,
        ``max_abs``, ``range_sigma`` and ``max_abs_sigma``: the α/2 and 1 − α/2 quantiles
        (``numpy.quantile``, linear) of each statistic over ``n_boot`` Poisson(1) bootstrap replicates of
        the rows, replicates that yield no rows left out. Row i enters replicate b with the
        multiplicity a :class:`~calibkit.CalibrationAccumulator` with ``bootstrap=n_boot`` and ``seed=seed``
        gives it (:func:`poisson_multiplicities`: the same resampled rows as
        :func:`~calibkit.calibration_error` and :func:`~calibkit.smooth_ece` with that seed). The rows are
        sorted once; each replicate is the cumulative sum in that order of the rows repeated by their
        multiplicities (no re-sort, so tied scores keep their order; a row drawn k times adds k w to the
        sums and k w^2 p (1 - p) to sigma's variance, as k copies of it do), vectorised in blocks of
        replicates of at most ``BOOT_BLOCK_CELLS`` = 2**21 replicate x row cells (one replicate when N is
        larger). Memory: besides the N-vectors of the point value, a few arrays of max(N, 2**21) doubles,
        whatever ``n_boot``; time: about 40 ns per row and replicate (NumPy). The point values are those
        without ``ci``.
    n_boot : int, default 1000
        Bootstrap replicates, 2 to ``MAX_BOOTSTRAP`` = 100000.
    seed : int, default 0
        Key of the bootstrap generator (0 to 2**64 - 1).
    backend : {"auto", "cpp", "numba"}

    axis, mask, ignore_index
        Dense predictions, as in :func:`calibkit.calibration_error`: scores
        ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with
        labels ``(N, *spatial)``, read in place; ``ignore_index`` / ``mask`` leave
        pixels (rows) out. The kept pixels' top-label confidences and
        correctness (N·H·W values each, not ·K) are gathered piece by piece,
        then the binary problem of those rows is solved: the same result as
        on the flattened (N·H·W, K) copy.

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
    if mask is not None or ignore_index is not None or type(axis) is not int or (axis != 1 and axis != -1) \
            or getattr(scores, "ndim", 0) > 2:
        from .metrics import _dense_rows

        scores, labels, sample_weight, from_logits = _dense_rows(
            scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
            from_logits=from_logits, backend=backend)
    if ci is None:
        _, _, _, r = _cumulative(scores, labels, sample_weight, from_logits, backend, False)
        return _result(r["range"], r["max_abs"], r["variance"], r["total_weight"], _count(scores))
    level, n_boot, seed = check_bootstrap(ci, n_boot, seed)
    p, y, w, r = _cumulative(scores, labels, sample_weight, from_logits, backend, True)
    result = _result(r["range"], r["max_abs"], r["variance"], r["total_weight"], p.shape[0])
    reps = _cumulative_replicates(p, y, w, r["order"], n_boot, seed)
    intervals = {name: _percentile_interval(reps[:, j], level) for j, name in enumerate(_CI_FIELDS)}
    return dataclasses.replace(result, ci=intervals, confidence_level=level, n_boot=n_boot)


_CI_FIELDS = ("range", "max_abs", "range_sigma", "max_abs_sigma")


def _cumulative_replicates(p, y, w, order, n_boot, seed):
    """(n_boot, 4) range, max_abs, range_sigma, max_abs_sigma of the Poisson replicates (NaN for a replicate
    without rows). Rows are taken in the full sample's sorted order; blocks of replicates bound the memory."""
    ps = p[order]
    resid = y[order] - ps  # float64
    q = ps * (1.0 - ps)
    ws = None if w is None else np.asarray(w, dtype=np.float64)[order]
    if ws is not None:
        q *= ws * ws
    out = np.empty((n_boot, 4))
    keys = _row_keys(seed, order)  # the generator keyed by the rows' positions, in sorted order
    for first, count in _replicate_blocks(p.shape[0], n_boot):
        m = _draw(keys, first, count).astype(np.float64)
        # A row drawn k times is k rows: k w^2 p (1 - p) in the variance (not (k w)^2), k w in the sums.
        variance = (m * q).sum(axis=1)
        if ws is not None:
            m *= ws
        total = m.sum(axis=1)
        m *= resid
        path = np.cumsum(m, axis=1)
        hi = np.maximum(path.max(axis=1), 0.0)
        lo = np.minimum(path.min(axis=1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rng = (hi - lo) / total
            max_abs = np.maximum(hi, -lo) / total
            sigma = np.sqrt(variance) / total
            block = out[first:first + count]
            block[:, 0] = rng
            block[:, 1] = max_abs
            for j, stat in ((2, rng), (3, max_abs)):  # mcgrad's conventions for sigma == 0, as _scaled
                block[:, j] = np.where(sigma > 0, stat / np.where(sigma > 0, sigma, 1.0),
                                       np.where(stat != 0, np.inf, 0.0))
        block[total <= 0] = np.nan
    return out


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
                     sample_weight: ArrayLike | None = None, backend: Backend = "auto",
                     axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None) -> dict[str, Any]:
    """The path behind :func:`cumulative_calibration_error`, for plotting.

    Returns a dictionary with ``x`` (the cumulative weight fraction, 0 then k-th row's, n + 1 values),
    ``cumulative`` (C_0 = 0, ..., C_n), ``scores`` (the sorted scores, n values), ``sigma`` and ``result``
    (the :class:`CumulativeCalibrationResult`).

    axis, mask, ignore_index
        Dense predictions, as in :func:`calibkit.calibration_error`: scores
        ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with
        labels ``(N, *spatial)``, read in place; ``ignore_index`` / ``mask`` leave
        pixels (rows) out. The kept pixels' top-label confidences and
        correctness (N·H·W values each, not ·K) are gathered piece by piece,
        then the binary problem of those rows is solved: the same result as
        on the flattened (N·H·W, K) copy.

    Examples
    --------
    >>> import calibkit.cumulative as cu
    >>> c = cu.cumulative_curve([0.2, 0.9, 0.6], [0, 1, 1])
    >>> [round(float(v), 3) for v in c["cumulative"]]
    [0.0, -0.067, 0.067, 0.1]
    """
    if mask is not None or ignore_index is not None or type(axis) is not int or (axis != 1 and axis != -1) \
            or getattr(scores, "ndim", 0) > 2:
        from .metrics import _dense_rows

        scores, labels, sample_weight, from_logits = _dense_rows(
            scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
            from_logits=from_logits, backend=backend)
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

    ``sigma`` needs sum w^2 c (1 - c), which the state keeps (per equal-width bin, in the same pass): it is then
    exact (``sigma_bound`` 0), weighted or not. States written before it was kept have, for an unweighted
    stream, a bound per bucket from the bucket's confidence interval [lo, hi] and sum c (sum c^2 lies in
    [s^2 / n, (lo + hi) s - n lo hi]), reported as the middle of that interval with ``sigma_bound`` its
    half-width, and for a weighted stream None (so ``range_sigma`` and the p-values are None too).
    ``range_sigma`` and the p-values use the reported ``range``, ``max_abs`` and ``sigma``.
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
