r"""Score decomposition and the CORP reliability diagram (Dimitriadis, Gneiting & Jordan 2021).

CORP ("consistent, optimally binned, reproducible, PAV-based") replaces the bins
of a reliability diagram by the isotonic regression of the outcomes on the
scores: the recalibrated forecast :math:`\hat c(p)` is the pool-adjacent-violators
(PAV) fit of the 0/1 outcomes y on the scores p, a non-decreasing step
function that needs no bins and no bandwidth. With a proper scoring rule S
(Brier or log), the mean score of the forecast splits exactly into

.. math::

    \bar S = \underbrace{\bar S - \bar S_{rc}}_{\mathrm{MCB}}
             - \underbrace{(\bar S_{mg} - \bar S_{rc})}_{\mathrm{DSC}}
             + \underbrace{\bar S_{mg}}_{\mathrm{UNC}}

where :math:`\bar S_{rc}` is the mean score of the recalibrated forecast and
:math:`\bar S_{mg}` that of the marginal (climatological) forecast
:math:`\bar y`. MCB >= 0 measures miscalibration, DSC >= 0 discrimination
(resolution), UNC the uncertainty (entropy) of the outcomes.

Binary: ``scores`` of shape (N,) are P(y=1) against 0/1 labels. Top-label:
``scores`` of shape (N, K) (probabilities, or logits with ``from_logits=True``)
are reduced in one fused kernel pass (no N x K temporary) to the confidence
(largest probability) and the correctness (argmax == label, first index on
ties) of each row, which are then decomposed as a binary problem. From
float32 / float16 logits the kernels compute the confidence with a float32
exp (relative error < 3e-7, the input's own precision), so the terms agree
with those of a float64 softmax to about 1e-6 (to 1e-9 given the same
confidences); float64 logits give float64 confidences.

The PAV fit is calibkit's isotonic kernel (the one behind
:func:`calibkit.isotonic_regression`): points are sorted by score with a
stable radix sort and equal scores are pooled first into their weighted mean,
so equal scores get one recalibrated value.

Reference: ``model_diagnostics.scoring.decompose`` with ``SquaredError`` /
``LogLoss`` and ``model_diagnostics.calibration.plot_reliability_diagram``;
the tests check agreement to 1e-9.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend, FloatArray
from ._validation import MAX_CELLS, check_choice, check_probability_rows, check_size, raise_for_status
from .cumulative import BOOT_BLOCK_CELLS, _draw, _row_keys
from .metrics import _binary_probabilities, _nll_eps, _percentile_interval, _prepare

__all__ = ["CorpReliabilityTable", "ScoreDecomposition", "corp_reliability_table", "score_decomposition"]

SCORES = ("brier", "log")
#: Largest ``n_bootstrap`` of :func:`corp_reliability_table` and of the interval of :func:`score_decomposition`.
MAX_CORP_BOOTSTRAP = 10_000


@dataclasses.dataclass(frozen=True)
class ScoreDecomposition:
    """Result of :func:`score_decomposition`: ``score = miscalibration - discrimination + uncertainty``.

    Attributes
    ----------
    score : float
        Mean score of the forecast (Brier: mean (p - y)^2; log: mean -log of the probability given to the outcome).
    miscalibration : float
        MCB = score - score of the recalibrated (isotonic) forecast.
    discrimination : float
        DSC = uncertainty - score of the recalibrated forecast.
    uncertainty : float
        UNC = score of the constant forecast ybar (Brier: ybar (1 - ybar); log: the binary entropy of ybar).
    score_name : str
        ``"brier"`` or ``"log"``.
    ci : dict or None
        With ``ci=`` given: for each of the four terms its ``(low, high)`` percentile interval at level
        ``ci_level``, from a Poisson bootstrap; None otherwise.
    ci_level : float or None

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> d = calibkit.score_decomposition(np.array([0.2, 0.6, 0.9]), np.array([0, 1, 1]), score="log")
    >>> d.score_name, round(d.discrimination, 4) == round(d.uncertainty, 4)  # perfectly separated: DSC = UNC
    ('log', True)
    """

    score: float
    miscalibration: float
    discrimination: float
    uncertainty: float
    score_name: str = "brier"
    ci: dict | None = None
    ci_level: float | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class CorpReliabilityTable:
    """Result of :func:`corp_reliability_table`: the isotonic (CORP) reliability curve.

    Attributes
    ----------
    x : ndarray of shape (n_knots,)
        Knots of the PAV step function: the smallest and the largest score of each block (one knot when they are
        equal), increasing; ``sklearn.isotonic.IsotonicRegression``'s ``X_thresholds_``.
    y : ndarray of shape (n_knots,)
        Recalibrated value at each knot (``y_thresholds_``): the weighted share of positive outcomes of the block.
    block_fraction : ndarray of shape (n_blocks,)
        Share of the total weight (of the rows without weights) in each PAV block; sums to 1.
    lower, upper : ndarray of shape (n_knots,) or None
        The consistency band at each knot (None when ``n_bootstrap=0``).
    level : float
        Level of the band.
    n_bootstrap : int
        Number of resamples behind the band.
    decomposition : ScoreDecomposition
        The Brier decomposition of the same fit (what the CORP paper prints on its diagrams).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> t = calibkit.corp_reliability_table(np.array([0.2, 0.3, 0.6, 0.9]), np.array([1, 0, 1, 1]))
    >>> t.n_blocks, t.block_fraction
    (2, array([0.5, 0.5]))
    """

    x: FloatArray
    y: FloatArray
    block_fraction: FloatArray
    lower: FloatArray | None
    upper: FloatArray | None
    level: float
    n_bootstrap: int
    decomposition: ScoreDecomposition

    @property
    def n_blocks(self) -> int:
        """Number of PAV blocks (distinct recalibrated values)."""
        return int(self.block_fraction.shape[0])


# ----------------------------------------------------------------------------------------------------------------
# Inputs: scores, labels, weights -> checked (p, y, w) of the binary problem
# ----------------------------------------------------------------------------------------------------------------


#: Probabilities this far outside [0, 1] are accepted as rounding (the kernels' check, pav.hpp / binning.hpp).
_PROBABILITY_SLACK = 1e-6


def _binary_problem(scores, labels, sample_weight, from_logits, backend):
    """Checked inputs as the binary problem (p float64 in [0, 1], y float64 0/1, w float64 > 0 or None).

    (N, K) scores become the confidence and correctness of each row (one fused kernel pass, no N x K array).
    Rows of weight 0 are left out: they carry no information (and a log score of inf times 0 is not 0).
    """
    k = _backend.kernels(backend)
    scores, labels, w, from_logits = _prepare(scores, labels, sample_weight, from_logits, scale_weights=True)
    if scores.shape[0] == 0:
        raise ValueError("scores is empty: at least one row is needed")
    if scores.ndim == 1:
        p = _binary_probabilities(scores, from_logits)
        # Two reductions decide whether every score is a probability (NaN fails the comparisons) and every label
        # 0 or 1 (weights were checked by _prepare); only when one is not does the kernel's checking pass run,
        # to name the first bad element as every metric does.
        if not (float(p.min()) >= -_PROBABILITY_SLACK and float(p.max()) <= 1.0 + _PROBABILITY_SLACK
                and labels.min() >= 0 and labels.max() <= 1):
            r = k.binary_stats(p, labels, w, 0, None, _nll_eps(p.dtype), False)
            raise_for_status(r["status"], binary=True)
        y = labels
        p = np.asarray(p, dtype=np.float64)
    else:
        n = scores.shape[0]
        p = np.empty(n, np.float64)
        y = np.empty(n, np.uint8)
        # with_nll=False, conf_out, correct_out given by position (as metrics._binned does)
        r = k.top_label_stats(scores, labels, w, from_logits, 0, _nll_eps(scores.dtype), False, p, y)
        raise_for_status(r["status"], n_classes=scores.shape[1])
        if not from_logits:
            check_probability_rows(scores)
    # The kernels accept probabilities up to 1e-6 outside [0, 1] (rounding); they are scored as 0 or 1.
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        p = np.clip(p, 0.0, 1.0)
    if w is not None:
        keep = w > 0
        if not keep.all():
            p, y, w = p[keep], y[keep], w[keep]
    return np.ascontiguousarray(p), np.ascontiguousarray(y, dtype=np.float64), w


def _check_score(score):
    return check_choice(score, "score", SCORES)


def _check_level(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    return value


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be None or an integer >= 0, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------------------------------------------
# The decomposition
# ----------------------------------------------------------------------------------------------------------------


def _sum(x) -> float:
    """Deterministic sum (NumPy's pairwise summation, independent of threads)."""
    return float(np.add.reduce(x, axis=None))


def _entropy(v):
    """Binary entropy -v log v - (1 - v) log(1 - v), 0 at v = 0 and 1 (the log score of the forecast v at its mean)."""
    from scipy.special import entr  # SciPy is imported on first use, as in metrics

    return entr(v) + entr(1.0 - v)


def _mean_score(p, y, w, score):
    """Weighted mean score of the forecasts p against the outcomes y (log score: inf for p = 0 at y = 1)."""
    if score == "brier":
        d = p - y
        loss = d * d
    else:
        # -log of the probability given to the outcome; 1 - p is off by at most an ulp of 1 (1.1e-16), which
        # moves -log(1 - p) by at most about that much (as the reference's xlogy(1 - y, 1 - p) does)
        loss = np.where(y > 0.5, p, 1.0 - p)
        with np.errstate(divide="ignore"):  # a probability of 0 for what happened: inf, as the reference
            np.log(loss, out=loss)
        np.negative(loss, out=loss)
    if w is None:
        return _sum(loss) / loss.shape[0]
    return _sum(loss * w) / _sum(w)


def _block_score(values, weights, score):
    """Mean score of the recalibrated forecast from its PAV blocks: each block's outcomes are scored at their mean."""
    per_block = values * (1.0 - values) if score == "brier" else _entropy(values)
    return _sum(per_block * weights) / _sum(weights)


def _fit(p, y, w, backend):
    """The isotonic kernel on (p, y, w): blocks in score order (ties pooled)."""
    k = _backend.kernels(backend)
    return k.isotonic_fit(y, p, w, True)


def _terms(p, y, w, fit, score):
    s = _mean_score(p, y, w, score)
    ybar = (_sum(y) / y.shape[0]) if w is None else _sum(w * y) / _sum(w)
    unc = float(ybar * (1.0 - ybar)) if score == "brier" else float(_entropy(np.float64(ybar)))
    s_rc = _block_score(fit["values"], fit["weights"], score)
    return s, s - s_rc, unc - s_rc, unc


def _ties(p, order, w):
    """Groups of equal scores in sorted order: (first position of each group, its score, its weight)."""
    ps = p[order]
    first = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    if w is None:
        weight = np.diff(np.r_[first, ps.shape[0]]).astype(np.float64)
    else:
        weight = np.add.reduceat(w[order], first)
    return first, ps[first], weight


def _poisson_interval(p, y, w, fit, score, ci, n_boot, seed, backend):
    """Percentile intervals of the four terms from a Poisson bootstrap (each row weighted by Poisson(1) draws)."""
    k = _backend.kernels(backend)
    order = fit["order"]
    ys = y[order]
    ps = p[order]
    ws = None if w is None else w[order]
    first, _, _ = _ties(p, order, None)
    if seed is None:
        seed = int(np.random.default_rng().integers(2**63))
    keys = _row_keys(seed, order)  # row i of the sorted order is row order[i] of the input: its stream position
    out = np.empty((n_boot, 4))
    block = max(1, BOOT_BLOCK_CELLS // max(ps.shape[0], 1))  # replicates drawn at once (uint8 cells)
    draws = None
    for b in range(n_boot):
        if b % block == 0:
            draws = _draw(keys, b, min(block, n_boot - b))
        m = draws[b % block].astype(np.float64)
        if ws is not None:
            m *= ws
        gw = np.add.reduceat(m, first)
        gy = np.add.reduceat(m * ys, first)
        used = gw > 0
        if not used.any():
            out[b] = np.nan
            continue
        g = k.isotonic_fit(gy[used] / gw[used], None, gw[used], True)
        keep = m > 0
        out[b] = _terms(ps[keep], ys[keep], m[keep], g, score)
    names = ("score", "miscalibration", "discrimination", "uncertainty")
    return {name: _percentile_interval(out[:, i], ci) or (math.nan, math.nan) for i, name in enumerate(names)}


def score_decomposition(scores: ArrayLike, labels: ArrayLike, *, score: str = "brier", from_logits: bool = False,
                        sample_weight: ArrayLike | None = None, ci: float | None = None, n_boot: int = 1000,
                        seed: int | None = 0, backend: Backend = "auto",
                        axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None) -> ScoreDecomposition:
    r"""CORP decomposition of the Brier or log score into miscalibration, discrimination and uncertainty.

    With :math:`\hat c` the isotonic (PAV) regression of the outcomes on the
    scores (Dimitriadis, Gneiting & Jordan 2021, "Stable reliability diagrams
    for probabilistic classifiers", PNAS 118(8)) and :math:`\bar y` the
    (weighted) base rate,

    .. math::

        \mathrm{MCB} = \bar S(p) - \bar S(\hat c), \quad
        \mathrm{DSC} = \bar S(\bar y) - \bar S(\hat c), \quad
        \mathrm{UNC} = \bar S(\bar y), \quad
        \bar S(p) = \mathrm{MCB} - \mathrm{DSC} + \mathrm{UNC},

    where :math:`\bar S(f) = \sum_i w_i S(f_i, y_i) / \sum_i w_i` with the
    Brier score :math:`S(f, y) = (f - y)^2` or the log score
    :math:`S(f, y) = -y \log f - (1 - y) \log(1 - f)`. UNC is
    :math:`\bar y (1 - \bar y)` (Brier) or the binary entropy of
    :math:`\bar y` (log). MCB and DSC are >= 0 up to rounding (not clipped).

    Parameters
    ----------
    scores : array of shape (N,) or (N, K)
        (N,): P(y=1) (or its logit with ``from_logits=True``) against 0/1
        labels. (N, K): class probabilities (rows summing to 1) or logits;
        the top-label confidence is decomposed against the correctness of
        the argmax.
    labels : array of shape (N,)
        0/1 (binary) or class indices in [0, K).
    score : {"brier", "log"}
    from_logits : bool, default False
    sample_weight : array of shape (N,), optional
        Non-negative weights; rows of weight 0 are left out.
    ci : float in (0, 1), optional
        Also return percentile intervals at this level for the four terms,
        from a Poisson bootstrap: ``n_boot`` replicates, in each every row
        weighted by an independent Poisson(1) draw (times its weight), the
        isotonic fit redone on the replicate. Costs ``n_boot`` passes over the
        N rows (kept in their sorted order, no further sort).
    n_boot : int, default 1000
        Bootstrap replicates, at most 10 000 (``MAX_CORP_BOOTSTRAP``).
    seed : int or None, default 0
        Seed of the bootstrap: row i is drawn with the counter-based
        generator of the streaming state (:func:`calibkit.cumulative.poisson_multiplicities`
        at position i), so every measure with ``ci`` and the same seed resamples the
        same rows; None draws a seed.
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
    ScoreDecomposition
        ``score``, ``miscalibration``, ``discrimination``, ``uncertainty``
        (and ``ci`` when asked).

    Notes
    -----
    This is what ``model_diagnostics.scoring.decompose`` computes with
    ``SquaredError()`` / ``LogLoss()`` (equal to 1e-9 in the tests), with
    these differences: equal scores are pooled when exactly equal
    (scikit-learn's isotonic regression behind ``decompose`` also pools
    scores closer than 1e-15 absolute); rows of weight 0 are left out
    (``decompose`` scores them, so a weight-0 row with a log score of inf
    makes its result NaN). Like the reference, the log score is not clipped:
    a score of exactly 0 for an outcome that happens (or 1 for one that does
    not) gives a score and a miscalibration of inf. Probabilities within
    1e-6 outside [0, 1] (accepted as rounding) are scored as 0 or 1.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> d = calibkit.score_decomposition(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    >>> round(d.score, 6), round(d.miscalibration, 6), round(d.discrimination, 6), d.uncertainty
    (0.158125, 0.033125, 0.125, 0.25)
    >>> round(d.miscalibration - d.discrimination + d.uncertainty, 6)
    0.158125
    """
    if mask is not None or ignore_index is not None or type(axis) is not int or (axis != 1 and axis != -1) \
            or getattr(scores, "ndim", 0) > 2:
        from .metrics import _dense_rows

        scores, labels, sample_weight, from_logits = _dense_rows(
            scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
            from_logits=from_logits, backend=backend, check_sums=True)
    score = _check_score(score)
    if ci is not None:
        ci = _check_level(ci, "ci")
        n_boot = check_size(n_boot, "n_boot", 1, MAX_CORP_BOOTSTRAP)
    seed = _check_seed(seed)
    p, y, w = _binary_problem(scores, labels, sample_weight, from_logits, backend)
    fit = _fit(p, y, w, backend)
    s, mcb, dsc, unc = _terms(p, y, w, fit, score)
    interval = None
    if ci is not None:
        interval = _poisson_interval(p, y, w, fit, score, ci, n_boot, seed, backend)
    return ScoreDecomposition(float(s), float(mcb), float(dsc), float(unc), score, interval, ci)


# ----------------------------------------------------------------------------------------------------------------
# The reliability curve and its consistency band
# ----------------------------------------------------------------------------------------------------------------


def _knots(p, fit):
    """(x, y) knots of the PAV step function: first and last score of each block (one when equal)."""
    order, starts, values = fit["order"], fit["blocks"], fit["values"]
    lo = p[order[starts[:-1]]]
    hi = p[order[starts[1:] - 1]]
    x = np.column_stack([lo, hi]).ravel()
    y = np.repeat(values, 2)
    keep = np.ones(x.shape[0], bool)
    keep[1::2] = hi != lo
    return np.ascontiguousarray(x[keep]), np.ascontiguousarray(y[keep])


def _consistency_band(p, w, fit, x_knots, n_bootstrap, level, seed, backend):
    """Pointwise quantiles at the knots of the isotonic fits of outcomes drawn under calibration, y* ~ Bernoulli(p).

    The rows are grouped by equal score once (in the fitted sort order); each resample draws the positives of
    each group (Binomial(count, p) without weights, a Bernoulli per row with them), and PAV runs on the groups.
    """
    k = _backend.kernels(backend)
    order = fit["order"]
    first, u, gw = _ties(p, order, w)
    at = np.searchsorted(u, x_knots)
    rng = np.random.default_rng(seed)
    fits = np.empty((n_bootstrap, x_knots.shape[0]))
    if w is None:
        counts = gw.astype(np.int64)
    else:
        ps, ws = p[order], w[order]
    for b in range(n_bootstrap):
        if w is None:
            means = rng.binomial(counts, u) / gw
        else:
            hits = (rng.random(ps.shape[0]) < ps) * ws
            means = np.add.reduceat(hits, first) / gw
        fits[b] = k.isotonic_fit(means, None, gw, True)["fitted"][at]
    lower, upper = np.quantile(fits, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    return lower, upper


def corp_reliability_table(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                           sample_weight: ArrayLike | None = None, n_bootstrap: int = 0, level: float = 0.9,
                           seed: int | None = 0, backend: Backend = "auto",
                           axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None) -> CorpReliabilityTable:
    r"""The CORP reliability curve: the isotonic regression of the outcomes on the scores, with a consistency band.

    The curve is the PAV fit :math:`\hat c` of the 0/1 outcomes on the scores
    (Dimitriadis, Gneiting & Jordan 2021): a non-decreasing step function,
    optimally binned, with no bins or bandwidth to choose. It is returned by
    its knots (the smallest and the largest score of each block with the
    block's value), as ``sklearn.isotonic.IsotonicRegression`` keeps them and
    ``model_diagnostics.calibration.plot_reliability_diagram`` draws them.

    With ``n_bootstrap > 0`` a consistency band at ``level`` is added, as in
    the CORP paper: outcomes are redrawn under the hypothesis of calibration,
    :math:`y^*_i \sim \mathrm{Bernoulli}(p_i)`, the isotonic fit is redone,
    and the band at each knot is the pair of pointwise quantiles
    ``(1 - level) / 2`` and ``(1 + level) / 2`` of the refitted values. A
    curve leaving the band is evidence of miscalibration there.
    (``plot_reliability_diagram(n_bootstrap=...)`` of model_diagnostics draws
    a different band: a paired bootstrap confidence band around the curve.)

    Parameters
    ----------
    scores : array of shape (N,) or (N, K)
        As in :func:`score_decomposition` (binary P(y=1), or top-label).
    labels : array of shape (N,)
    from_logits : bool, default False
    sample_weight : array of shape (N,), optional
    n_bootstrap : int, default 0
        Resamples behind the band (0: no band), at most 10 000
        (``MAX_CORP_BOOTSTRAP``), and ``n_bootstrap * n_knots`` at most
        2**26 (checked before the band is allocated). Time is
        O(n_bootstrap * N) with weights, O(n_bootstrap * distinct scores)
        without.
    level : float in (0, 1), default 0.9
    seed : int or None, default 0
        Seed of the resampling (NumPy's ``default_rng``): the same seed gives
        the same band.
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
    CorpReliabilityTable
        ``x``, ``y`` (knots), ``block_fraction``, ``lower``, ``upper``,
        ``level``, ``n_bootstrap`` and the Brier ``decomposition``.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> t = calibkit.corp_reliability_table(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    >>> t.x, t.y
    (array([0.1 , 0.35, 0.4 , 0.8 ]), array([0. , 0.5, 0.5, 1. ]))
    >>> t = calibkit.corp_reliability_table(np.linspace(0, 1, 50), np.arange(50) % 2, n_bootstrap=100, seed=1)
    >>> bool((t.lower <= t.upper).all())
    True
    """
    if mask is not None or ignore_index is not None or type(axis) is not int or (axis != 1 and axis != -1) \
            or getattr(scores, "ndim", 0) > 2:
        from .metrics import _dense_rows

        scores, labels, sample_weight, from_logits = _dense_rows(
            scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
            from_logits=from_logits, backend=backend, check_sums=True)
    n_bootstrap = check_size(n_bootstrap, "n_bootstrap", 0, MAX_CORP_BOOTSTRAP)
    level = _check_level(level, "level")
    seed = _check_seed(seed)
    p, y, w = _binary_problem(scores, labels, sample_weight, from_logits, backend)
    fit = _fit(p, y, w, backend)
    s, mcb, dsc, unc = _terms(p, y, w, fit, "brier")
    x, yk = _knots(p, fit)
    lower = upper = None
    if n_bootstrap:
        if n_bootstrap * x.shape[0] > MAX_CELLS:
            raise ValueError(f"n_bootstrap * n_knots must be <= {MAX_CELLS}, got {n_bootstrap} * {x.shape[0]}")
        lower, upper = _consistency_band(p, w, fit, x, n_bootstrap, level, seed, backend)
    weights = np.asarray(fit["weights"], dtype=np.float64)
    return CorpReliabilityTable(x, yk, weights / _sum(weights), lower, upper, level, n_bootstrap,
                                ScoreDecomposition(float(s), float(mcb), float(dsc), float(unc), "brier"))
