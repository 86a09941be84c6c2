"""OOD-detection and selective-prediction metrics.

OOD detection: ``scores_in`` are the scores of in-distribution samples,
``scores_out`` those of out-of-distribution samples, and a higher score means
"more in-distribution" (use ``max_probability``, ``-entropy``, ``-energy``, ...).
The in-distribution samples are the positives. Every metric is exact: each
sample is sorted once (a parallel radix sort in the native kernel) and one
merge of the two sorted samples walks the distinct thresholds; tied scores
form one step, exactly as in ``sklearn.metrics.roc_curve`` /
``precision_recall_curve``, so AUROC and AP agree with ``roc_auc_score`` and
``average_precision_score`` to rounding.

Selective prediction: ``confidence`` of each prediction and whether it was
``correct``; predictions are accepted from the most confident down.

:class:`OODAccumulator` is the streaming form: mergeable, serialisable fine
histograms of the two score distributions, with a proven error bound on each
metric.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._validation import MAX_PRECISION_BITS, check_correct, check_score_vector, raise_for_status


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


@dataclass(frozen=True)
class OODMetrics:
    """OOD-detection metrics; in-distribution samples are the positives.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> m = calibkit.ood_metrics([0.9, 0.8, 0.4], [0.5, 0.3])
    >>> m.auroc, m.tpr
    (0.8333333333333334, 0.95)
    """

    auroc: float            #: area under the ROC curve
    aupr_in: float          #: average precision, in-distribution as positives
    aupr_out: float         #: average precision, out-of-distribution as positives (scores negated)
    fpr_at_tpr: float       #: FPR at the first threshold reaching TPR >= tpr
    detection_error: float  #: min over thresholds of (1 - TPR) / 2 + FPR / 2
    tpr: float              #: the TPR level of fpr_at_tpr


def ood_metrics(scores_in: ArrayLike, scores_out: ArrayLike, *, tpr: float = 0.95,
                backend: Backend = "auto") -> OODMetrics:
    """All OOD-detection metrics from one sort of each sample.

    With P in- and N out-of-distribution samples, thresholds t running over the
    distinct scores from the highest down, TP(t) = #{in >= t}, FP(t) = #{out >= t}
    (Hendrycks & Gimpel 2017; Liang et al. 2018; Lee et al. 2018):

    - AUROC = sum_t (FP(t) - FP(t')) (TP(t) + TP(t')) / (2 P N), t' the previous
      threshold: the trapezoidal ROC area, i.e. P(s_in > s_out) + P(s_in = s_out) / 2.
      Computed with exact integers, then one division.
    - AUPR-In = sum_t (TP(t) - TP(t')) / P * TP(t) / (TP(t) + FP(t)) (average
      precision, as ``sklearn.metrics.average_precision_score``);
      AUPR-Out the same with the out-of-distribution samples as positives and
      the scores negated.
    - FPR at TPR: FP(t)/N at the highest t with TP(t)/P >= ``tpr``
      (``fpr[np.searchsorted(tpr_curve, tpr)]`` on ``sklearn.metrics.roc_curve``).
      The thresholds include "accept nothing" (TPR = FPR = 0, the first point of
      ``roc_curve``), so ``tpr=0`` gives 0.
    - Detection error: min over t, including "accept nothing", of
      (1 - TP(t)/P) / 2 + FP(t) / (2 N), at most 0.5.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> m = calibkit.ood_metrics(s_in, s_out)
    >>> m.auroc, m.fpr_at_tpr, m.detection_error
    (0.9, 0.25, 0.125)
    """
    tpr = _check_rate(tpr, "tpr")
    si, so = _in_out(scores_in, scores_out)
    r = _ranking(si, so, "scores_in", "scores_out", tpr=tpr, backend=backend)
    # tpr = 0 is reached by "accept nothing" (FPR 0), before the kernel's first threshold.
    fpr = 0.0 if tpr == 0.0 else r["fpr_at_tpr"]
    return OODMetrics(auroc=r["auroc"], aupr_in=r["ap_pos"], aupr_out=r["ap_neg"], fpr_at_tpr=fpr,
                      detection_error=r["detection_error"], tpr=tpr)


def auroc(scores_in: ArrayLike, scores_out: ArrayLike, *, backend: Backend = "auto") -> float:
    """Area under the ROC curve of in- vs out-of-distribution scores (ties count 1/2).

    Equal to ``sklearn.metrics.roc_auc_score(y, s)`` with y = 1 for in-distribution.
    See :func:`ood_metrics` for the formula.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> calibkit.auroc(s_in, s_out)
    0.9
    """
    return ood_metrics(scores_in, scores_out, backend=backend).auroc


def aupr_in(scores_in: ArrayLike, scores_out: ArrayLike, *, backend: Backend = "auto") -> float:
    """Average precision with the in-distribution samples as positives (see :func:`ood_metrics`).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> round(calibkit.aupr_in(s_in, s_out), 4)
    0.9267
    """
    return ood_metrics(scores_in, scores_out, backend=backend).aupr_in


def aupr_out(scores_in: ArrayLike, scores_out: ArrayLike, *, backend: Backend = "auto") -> float:
    """Average precision with the out-of-distribution samples as positives, on negated scores.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> round(calibkit.aupr_out(s_in, s_out), 4)
    0.9167
    """
    return ood_metrics(scores_in, scores_out, backend=backend).aupr_out


def fpr_at_tpr(scores_in: ArrayLike, scores_out: ArrayLike, *, tpr: float = 0.95,
               backend: Backend = "auto") -> float:
    """False-positive rate (out-of-distribution accepted) when TPR first reaches ``tpr`` (FPR95 by default).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> calibkit.fpr_at_tpr(s_in, s_out, tpr=0.8)
    0.25
    """
    return ood_metrics(scores_in, scores_out, tpr=tpr, backend=backend).fpr_at_tpr


def detection_error(scores_in: ArrayLike, scores_out: ArrayLike, *, backend: Backend = "auto") -> float:
    """min over thresholds of (1 - TPR) / 2 + FPR / 2 (Liang et al. 2018; Lee et al. 2018).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> s_in = np.array([0.9, 0.8, 0.75, 0.6, 0.55])
    >>> s_out = np.array([0.7, 0.5, 0.4, 0.3])
    >>> calibkit.detection_error(s_in, s_out)
    0.125
    """
    return ood_metrics(scores_in, scores_out, backend=backend).detection_error


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


def aurc(confidence: ArrayLike, correct: ArrayLike, *, backend: Backend = "auto") -> float:
    """Area under the risk-coverage curve (Geifman et al. 2019, "Bias-reduced uncertainty estimation").

    AURC = (1/N) sum_k risk_k, where risk_k is the error rate among the k most
    confident predictions. Tied confidences are accepted together: each of the
    n_g predictions of a tie group counts the risk after the whole group,
    AURC = sum_g (n_g / N) risk_g. Without ties this is exactly Geifman's sum.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> round(calibkit.aurc(confidence, correct), 4)
    0.1967
    """
    r, _, _ = _selective(confidence, correct, backend=backend)
    return float(r["aurc"])


def e_aurc(confidence: ArrayLike, correct: ArrayLike, *, backend: Backend = "auto") -> float:
    """Excess AURC: AURC minus the AURC of a perfect ranking of the same predictions (Geifman et al. 2019).

    The perfect ranking accepts the N_c correct predictions first:
    AURC* = (1/N) sum_{k=N_c+1}^{N} (k - N_c) / k = (N_e - N_c (H_N - H_{N_c})) / N,
    with H the harmonic numbers and N_e = N - N_c. Its limit for large N is
    the paper's r + (1 - r) log(1 - r), r the error rate; the exact finite form
    makes E-AURC 0 for a perfect ranking.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
    >>> correct = np.array([1, 1, 0, 1, 0])
    >>> round(calibkit.e_aurc(confidence, correct), 4)
    0.0667
    """
    r, n, ok = _selective(confidence, correct, backend=backend)
    return float(r["aurc"] - _optimal_aurc(int(ok.sum()), n))


def _optimal_aurc(n_correct, n):
    if n_correct == n:
        return 0.0
    from scipy.special import digamma

    harmonic = float(digamma(n + 1) - digamma(n_correct + 1))  # H_n - H_{n_correct}
    return ((n - n_correct) - n_correct * harmonic) / n


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
    "OODAccumulator", "OODBounds", "OODMetrics", "RiskCoverageCurve", "aupr_in", "aupr_out", "aurc", "auroc",
    "detection_error", "e_aurc", "fpr_at_tpr", "ood_metrics", "risk_coverage_curve",
]
