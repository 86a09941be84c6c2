"""Inductive Venn-Abers predictors (Vovk & Petej 2014; Vovk, Petej & Fedorova 2015), binary and one-vs-rest."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import BACKENDS
from .._typing import ArrayLike, Backend, FloatArray, IntArray
from .._validation import MAX_CLASSES, check_bool
from ._base import (
    Calibrator, binary_column, check_fit_inputs, dense_route, fitted_array, fitted_classes, two_columns,
)
from .nonparametric import (
    _binary_scores, _check_label_range, _probability_matrix, _warn_single_class, isotonic_regression,
)


def _upper_values(weight: np.ndarray, positives: np.ndarray, backend: Backend = "auto") -> np.ndarray:
    """p1 at each of the k distinct calibration scores, then 1: an array of k + 1 values.

    ``weight[j]`` is the number of calibration points at the j-th smallest distinct score s'_(j+1) and
    ``positives[j]`` how many of them have label 1. Value i - 1 (i = 1..k) is the isotonic fit at s'_i of the
    calibration points with (s'_i, 1) added; value k (a test score above every calibration score) is 1.
    See :class:`VennAbers` for the algorithm.
    """
    k = weight.shape[0]
    # The cumulative sum diagram P_0 = (0, 0), P_j = (W_j, Y_j), with the shifted origin P_0 - (1, 1) in front.
    xs = np.empty(k + 2)
    ys = np.empty(k + 2)
    xs[:2] = ys[:2] = (-1.0, 0.0)
    np.cumsum(weight, out=xs[2:])
    np.cumsum(positives, out=ys[2:])
    # Its greatest convex minorant by the PAV kernel: the slopes of the minorant are the isotonic fit of the
    # sequence (1 point of label 1, group 1, ..., group k), its corners the block boundaries.
    steps = np.concatenate(([1.0], weight))
    rises = np.concatenate(([1.0], positives))
    blocks = isotonic_regression(rises / steps, sample_weight=steps, backend=backend).blocks
    # The minorant as a stack whose top (the end of the lists) is its leftmost corner.
    cx = xs[blocks[::-1]].tolist()
    cy = ys[blocks[::-1]].tolist()
    px = xs[2:] - 1.0  # P_j - (1, 1), j = 1..k: the points that join the left set
    py = ys[2:] - 1.0
    out = np.empty(k + 1)
    out[k] = 1.0
    i, step = 0, 64
    while i < k:
        tx, ty, nx, ny = cx[-1], cy[-1], cx[-2], cy[-2]
        slope = (ny - ty) / (nx - tx)
        # The bridge stays while the new left points lie on or above it (most of them: the chain changes at a
        # few percent of the points), so they are tested a block at a time, the blocks doubling while none
        # is below; the point tested at i is P_(i+1) - (1, 1), which joins after p1 at s'_(i+1) is read.
        end = min(i + step, k - 1)
        below = np.flatnonzero((nx - tx) * (py[i:end] - ty) - (ny - ty) * (px[i:end] - tx) < 0.0)
        if below.shape[0] == 0:
            out[i:end] = slope
            if end == k - 1:
                out[end] = slope
                break
            i, step = end, 2 * step
            continue
        j = i + int(below[0])
        out[i:j + 1] = slope
        ax, ay = float(px[j]), float(py[j])
        cx.pop()
        cy.pop()
        while len(cx) >= 2:  # pop the corners on or above the chord from A to the corner after them
            tx, ty, nx, ny = cx[-1], cy[-1], cx[-2], cy[-2]
            if (nx - ax) * (ty - ay) - (ny - ay) * (tx - ax) < 0.0:
                break
            cx.pop()
            cy.pop()
        cx.append(ax)
        cy.append(ay)
        i, step = j + 1, 64
    return out


def venn_abers_values(scores: np.ndarray, targets: np.ndarray, backend: Backend = "auto"):
    """(thresholds, p0, p1) of one binary Venn-Abers predictor: the k distinct calibration scores (increasing)
    and two arrays of k + 1 values; a test score s gets ``p0[searchsorted(thresholds, s, "right")]`` and
    ``p1[searchsorted(thresholds, s, "left")]``."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    new = np.empty(s.shape[0], dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    thresholds = s[starts]
    weight = np.diff(np.append(starts, s.shape[0])).astype(np.float64)
    positives = np.add.reduceat(targets[order].astype(np.float64), starts)
    p1 = _upper_values(weight, positives, backend)
    # p0 by symmetry: (s, 0) added to (x, y) is (-s, 1) added to (-x, 1 - y), whose fit is 1 - the fit here.
    p0 = 1.0 - _upper_values(weight[::-1].copy(), (weight - positives)[::-1].copy(), backend)[::-1]
    return thresholds, p0, p1


class VennAbers(Calibrator):
    r"""Inductive Venn-Abers predictor (Vovk & Petej 2014), binary or one-vs-rest.

    For a test score s, let :math:`g_0` (:math:`g_1`) be the isotonic regression
    (:func:`~calibkit.isotonic_regression`, ties in the score pooled) of the calibration labels on the
    calibration scores with the point (s, 0) (respectively (s, 1)) added, and
    :math:`p_0 = g_0(s)`, :math:`p_1 = g_1(s)`. The pair :math:`(p_0, p_1)` (``predict_interval``) is a
    multiprobabilistic prediction, one of which is perfectly calibrated (Vovk & Petej 2014);
    ``predict_proba`` merges them as

    .. math:: p = \frac{p_1}{1 - p_0 + p_1},

    the probability whose worst-case log-loss regret against the two is smallest (the log-loss merge of Vovk,
    Petej & Fedorova 2015, "Large-scale probabilistic predictors with and without guarantees of validity").

    **Algorithm** (O(n log n): one sort, then linear time, then a binary search per test score). Sort the
    calibration scores once and group equal ones: k distinct scores :math:`s'_1 < \dots < s'_k` with
    :math:`w_j` points of which :math:`y_j` are positive; cumulative sums :math:`W_j, Y_j` give the cumulative
    sum diagram :math:`P_0 = (0, 0)`, :math:`P_j = (W_j, Y_j)`. Adding (s, 1) at a calibration score
    :math:`s'_i` gives, after moving the points left of the test point down by (1, 1), the diagram
    :math:`\{P_a - (1, 1)\}_{a < i} \cup \{P_b\}_{b \ge i - 1}`, and :math:`p_1(s'_i)` is the slope of its
    greatest convex minorant across the test point: the lower bridge between the two sets,
    :math:`\max_{a < i} \min_{b \ge i-1} (Y_b - Y_a + 1) / (W_b - W_a + 1)`. The minorant for i = 1 is
    computed by the PAV kernel (its slopes are an isotonic fit, its corners the block boundaries); then for
    i = 2, ..., k the bridge moves right: the new left point :math:`P_{i-1} - (1, 1)` replaces the left end of
    the chain when it lies below the current bridge, popping the corners above its chord (each corner is
    popped at most once: linear time). The chain changes at few of the points (about 1% on random scores),
    so the new left points are tested against the bridge in vectorised blocks that double while none is
    below it. :math:`p_0` follows by symmetry (negate the scores, flip the labels:
    :math:`p_0 = 1 - p_1` of the mirrored data). A test score strictly between :math:`s'_{i-1}` and
    :math:`s'_i` gets :math:`p_1(s'_i)` and :math:`p_0(s'_{i-1})` (the test point with label 1 pools with
    the group to its right, with label 0 with the group to its left), below :math:`s'_1`
    :math:`p_0 = 0`, above :math:`s'_k` :math:`p_1 = 1`. This is the algorithm of Vovk, Petej & Fedorova
    (2015, Algorithms 1-4) with the first minorant from PAV.

    Ties among the calibration scores are exact equality (as the ``venn-abers`` package); the scores only
    matter through their order, so binary scores may be any finite numbers (probabilities, logits, margins).

    Multiclass (scores of shape (N, K), probabilities, or logits with ``from_logits=True``): one-vs-rest,
    column k against 1[y = k], each giving :math:`(p_0^k, p_1^k)` and :math:`p^k` as above; the row of
    :math:`p^k` is then divided by its sum (never 0: :math:`p_1^k \ge 1/(n+1)`), as the other one-vs-rest
    calibrators (:class:`IsotonicCalibration`). ``predict_interval`` returns the per-class :math:`p_0^k,
    p_1^k` before renormalisation.

    Parameters
    ----------
    from_logits : bool, default False
        For (N, K) input: softmax the scores first.
    backend : {"auto", "cpp", "numba"}
        The backend of the PAV and softmax kernels.

    Attributes
    ----------
    score_thresholds_ : list (one per calibrated column) of arrays (k,)
        The distinct calibration scores, increasing.
    p0_, p1_ : lists of arrays (k + 1,)
        A test score s gets ``p0_[c][searchsorted(score_thresholds_[c], s, "right")]`` and
        ``p1_[c][searchsorted(score_thresholds_[c], s, "left")]``.
    n_classes_ : int
    binary_ : bool

    Notes
    -----
    The fitted model holds 3 k + 2 numbers per class (k distinct calibration scores of that class's column).
    No ``sample_weight``: the validity of Venn-Abers predictors is for exchangeable, unweighted points.

    References
    ----------
    V. Vovk and I. Petej, "Venn-Abers predictors", UAI 2014.
    V. Vovk, I. Petej and V. Fedorova, "Large-scale probabilistic predictors with and without guarantees of
    validity", NeurIPS 2015.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> scores = np.array([0.1, 0.3, 0.4, 0.6, 0.8, 0.9])
    >>> labels = np.array([0, 0, 1, 0, 1, 1])
    >>> va = calibkit.VennAbers().fit(scores, labels)
    >>> p0, p1 = va.predict_interval(np.array([0.05, 0.5, 0.95]))
    >>> p0.round(3), p1.round(3)
    (array([0.   , 0.333, 0.667]), array([0.333, 0.667, 1.   ]))
    >>> va.predict_proba(np.array([0.5]))[:, 1].round(3)   # p1 / (1 - p0 + p1)
    array([0.5])
    """

    _fitted_names = ("score_thresholds_", "p0_", "p1_", "n_classes_", "binary_")

    def __init__(self, *, from_logits: bool = False, backend: Backend = "auto"):
        self.from_logits = from_logits
        self.backend = backend

    def _check_params(self):
        check_bool(self.from_logits, "from_logits")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def fit(self, scores: ArrayLike, labels: ArrayLike, sample_weight: None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "VennAbers":
        """Fit on held-out scores ((N,) binary, any finite numbers, or (N, K)) and labels (N,); returns self.

        ``sample_weight`` is accepted only as None (the calibrators' common signature): Venn-Abers
        predictors are defined for unweighted, exchangeable points.

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        and ``ignore_index`` / ``mask`` / ``max_rows`` (also for 2-D scores): the counted rows are gathered and
        fitted as the flattened rows (see ``Calibrator._fit_gathered``: n x K values in memory, bounded by
        ``max_rows``)."""
        self._check_params()
        if dense_route(scores, ignore_index, mask, max_rows):
            return self._fit_gathered(scores, labels, sample_weight, axis=axis, ignore_index=ignore_index, mask=mask,
                                      max_rows=max_rows)
        if sample_weight is not None:
            raise ValueError("VennAbers does not take sample_weight (Venn-Abers predictors are defined for "
                             "unweighted points); got an array")
        scores = binary_column(scores)
        binary = scores.ndim == 1
        scores, labels, _ = check_fit_inputs(scores, labels, None, binary=binary)
        if binary:
            _warn_single_class(labels, 2)
            models = [venn_abers_values(_binary_scores(scores), labels, self.backend)]
        else:
            p = _probability_matrix(scores, self.from_logits, self.backend)
            n_classes = p.shape[1]
            if n_classes > MAX_CLASSES:
                raise ValueError(f"scores have {n_classes} columns, above MAX_CLASSES = {MAX_CLASSES}")
            _check_label_range(labels, n_classes)
            _warn_single_class(labels, n_classes)
            columns = np.ascontiguousarray(p.T)
            del p
            models = [venn_abers_values(columns[c], labels == c, self.backend) for c in range(n_classes)]
        self.n_classes_ = 2 if binary else int(scores.shape[1])
        self.binary_ = binary
        self._set_models(models)
        return self

    def _set_models(self, models):
        self.score_thresholds_ = [m[0] for m in models]
        self.p0_ = [m[1] for m in models]
        self.p1_ = [m[2] for m in models]

    def _columns(self, scores):
        """Checked test scores as a list of columns (one for binary scores)."""
        self._check_fitted()
        if self.binary_:
            s = binary_column(scores)
            if s.ndim != 1:
                raise ValueError(f"this calibrator was fitted on binary scores of shape (N,) or (N, 1), got shape "
                                 f"{np.shape(s)}")
            return [_binary_scores(s)]
        p = _probability_matrix(scores, self.from_logits, self.backend)
        if p.ndim != 2 or p.shape[1] != self.n_classes_:
            raise ValueError(f"scores have shape {p.shape} but the calibrator was fitted on {self.n_classes_} "
                             "classes")
        return list(np.ascontiguousarray(p.T))

    def _interval(self, columns):
        p0 = np.empty((len(columns), columns[0].shape[0]))
        p1 = np.empty_like(p0)
        for c, s in enumerate(columns):
            t = self.score_thresholds_[c]
            left = np.searchsorted(t, s, "left")  # one binary search: "right" is one more on a threshold
            right = left + (np.take(t, left, mode="clip") == s)
            np.take(self.p0_[c], right, out=p0[c])
            np.take(self.p1_[c], left, out=p1[c])
        return p0, p1

    def predict_interval(self, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
        """The Venn-Abers interval (p0, p1) of each test score: two (N,) arrays for binary scores (bounds of
        P(y = 1)), two (N, K) arrays (class k's one-vs-rest bounds in column k) otherwise. Always
        0 <= p0 <= p1 <= 1 (an isotonic fit does not decrease when a label is raised) and p1 > 0."""
        p0, p1 = self._interval(self._columns(scores))
        if self.binary_:
            return p0[0], p1[0]
        return np.ascontiguousarray(p0.T), np.ascontiguousarray(p1.T)

    def _probabilities(self, scores):
        p0, p1 = self._interval(self._columns(scores))
        p = p1 / (1.0 - p0 + p1)
        if self.binary_:
            return p[0]
        p = np.ascontiguousarray(p.T)
        p /= p.sum(axis=1, keepdims=True)  # every p^k > 0 (p1 >= 1 / (n + 1)): no row sums to 0
        return p

    def predict_proba(self, scores: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities p = p1 / (1 - p0 + p1): (N, 2) for binary scores (column 1 is P(y = 1)),
        (N, K) rows summing to 1 otherwise.
        Dense scores ``(N, K, *spatial)`` (``axis=1``, or channel-last ``axis=-1``) give probabilities of their
        shape, piece by piece, into ``out`` when given (``out=scores`` for in place): bit for bit the 2-D result of the flattened rows."""
        if dense_route(scores, out):
            return self._dense_probabilities(scores, axis=axis, out=out)
        p = self._probabilities(scores)
        return two_columns(p) if self.binary_ else p

    def predict(self, scores: ArrayLike, *, axis: int = 1) -> IntArray:
        """Predicted class after calibration (binary: p >= 0.5). Dense scores give the ``(N, *spatial)`` map."""
        if dense_route(scores):
            return self._dense_probabilities(scores, axis=axis, predict=True)
        p = self._probabilities(scores)
        if self.binary_:
            return (p >= 0.5).astype(np.int64)
        return np.argmax(p, axis=1)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name in self._fitted_names[:3]:
            d["fitted"][name] = [a.tolist() for a in getattr(self, name)]
        return d

    def _load_fitted(self, fitted):
        self.n_classes_, binary = fitted_classes(fitted)
        n_models = 1 if binary else self.n_classes_
        lists = [fitted[name] for name in self._fitted_names[:3]]
        if not all(isinstance(a, list) and len(a) == n_models for a in lists):
            raise ValueError(f"learned values 'score_thresholds_', 'p0_' and 'p1_' must be lists of {n_models} "
                             f"arrays (binary_ = {binary}, n_classes_ = {self.n_classes_})")
        models = []
        for c in range(n_models):
            t_name, p0_name, p1_name = (f"{name}[{c}]" for name in self._fitted_names[:3])
            t = fitted_array({t_name: lists[0][c]}, t_name, None)
            if t.ndim != 1 or t.shape[0] < 1 or (np.diff(t) <= 0).any():
                raise ValueError(f"learned value {t_name!r} must be a non-empty, strictly increasing 1-D array")
            shape = (t.shape[0] + 1,)
            p0 = fitted_array({p0_name: lists[1][c]}, p0_name, shape, low=0.0, high=1.0)
            p1 = fitted_array({p1_name: lists[2][c]}, p1_name, shape, low=0.0, high=1.0)
            models.append((t, p0, p1))
        self.binary_ = binary
        self._set_models(models)
