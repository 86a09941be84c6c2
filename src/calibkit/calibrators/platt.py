"""Platt scaling for binary scores, and one-vs-rest for multiclass decision scores."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._typing import ArrayLike, FloatArray, IntArray
from .._validation import MAX_CLASSES, check_bool
from ._base import (
    Calibrator, binary_column, check_fit_inputs, check_int, check_positive_number, dense_route, fitted_array,
    fitted_int, two_columns,
)
from .nonparametric import _binary_scores


def expit(x):
    """The logistic function (SciPy's, imported on first use: SciPy is slow to import)."""
    from scipy.special import expit as scipy_expit

    return scipy_expit(x)


def _platt_loss(a, b, f, t, w):
    z = a * f + b
    return float(w @ (t * z + np.logaddexp(0.0, -z)))


class PlattScaling(Calibrator):
    r"""Platt scaling (Platt 1999): P(y = 1 | f) = 1 / (1 + exp(A f + B)) for a binary score f.

    (A, B) minimise the weighted logistic NLL
    :math:`\sum_i w_i [t_i (A f_i + B) + \log(1 + e^{-(A f_i + B)})]`
    by Newton's method with a backtracking line search (Lin, Lin & Weng 2007,
    "A note on Platt's probabilistic outputs for support vector machines").
    Constant scores leave A undefined: the fit then sets A = 0 and B so that
    every score gets the weighted rate of class 1 (of the targets t), with a
    RuntimeWarning. The loss is minimised with the sample weights divided by
    their largest (weights near 1e308 or subnormal do not overflow or vanish);
    with ``smooth_targets=True`` the targets come from the weighted class
    counts as given, so only that prior depends on the scale of the weights.
    With ``smooth_targets=True`` (Platt's prior correction, as
    ``sklearn.calibration._sigmoid_calibration``) the targets are
    t+ = (N+ + 1) / (N+ + 2) and t- = 1 / (N- + 2), N± being the (weighted)
    class counts; otherwise t = y. Note the sign: A < 0 when higher scores
    mean class 1.

    Multiclass decision scores (N, K), K >= 2 (one score per class, e.g. a
    one-vs-rest decision function or log-probabilities): column k is fitted
    as above against 1[y = k] (each class needs rows of its own and of the
    others), and :meth:`predict_proba` divides the K sigmoids by their row sum,
    as scikit-learn's ``CalibratedClassifierCV(method="sigmoid")`` does (for
    more than two classes). The targets and their Platt prior (from the
    weighted class counts) are scikit-learn's ``_SigmoidCalibration``'s (1.9);
    it differs in that its L-BFGS-B stops at ``gtol=1e-6`` where this Newton
    method reaches the optimum to ``tol`` (the probabilities agree to about
    1e-6), that with float32 scores it computes in float32 (here float64),
    and that it fits a class without rows of its own (here a ValueError).

    Parameters
    ----------
    smooth_targets : bool, default True
    max_iter : int, default 100
    tol : float, default 1e-12
        Stop when the gradient is below ``tol`` times the total weight.

    Attributes
    ----------
    a_, b_ : float, or ndarray of shape (K,) for multiclass scores
    n_iter_ : int
        Newton iterations (multiclass: the most over the classes).
    n_classes_ : int
        2 for binary scores, else K.
    binary_ : bool
        Whether the scores were binary (N,).
    classes_ : ndarray of shape (2,) or (K,)
        The classes 0 and 1 (binary), or 0, ..., K-1.
    n_features_in_ : int
        1 (one score per row) or K.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(size=2000)
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-2 * f))).astype(int)
    >>> pl = calibkit.PlattScaling().fit(f, y)
    >>> round(pl.a_, 2), round(pl.b_, 2)
    (-2.14, -0.04)
    >>> pl.predict_proba(np.array([-1.0, 0.0, 1.0])).round(2)  # (N, 2), as scikit-learn's classifiers
    array([[0.89, 0.11],
           [0.49, 0.51],
           [0.1 , 0.9 ]])
    >>> pl.predict_proba(np.array([-1.0, 0.0, 1.0]))[:, 1].round(2)  # P(y = 1), shape (N,)
    array([0.11, 0.51, 0.9 ])
    >>> z = rng.normal(size=(3000, 3))                       # multiclass decision scores (N, K)
    >>> y3 = np.argmax(2 * z + rng.gumbel(size=(3000, 3)), axis=1)
    >>> ovr = calibkit.PlattScaling().fit(z, y3)             # one sigmoid per class, then renormalised
    >>> ovr.a_.shape, ovr.predict_proba(z[:2]).sum(axis=1).round(12)
    ((3,), array([1., 1.]))
    """

    _fitted_names = ("a_", "b_", "n_iter_")

    def __init__(self, *, smooth_targets: bool = True, max_iter: int = 100, tol: float = 1e-12):
        self.smooth_targets = smooth_targets
        self.max_iter = max_iter
        self.tol = tol

    def _check_params(self):
        check_bool(self.smooth_targets, "smooth_targets")
        check_int(self.max_iter, "max_iter", 1)
        check_positive_number(self.tol, "tol")

    def fit(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "PlattScaling":
        """Fit (A, B) on binary scores (N,) (or (N, 1)) and labels in {0, 1}, or one (A_k, B_k) per column of
        multiclass decision scores (N, K), K >= 2, and labels in [0, K); returns self.

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        and ``ignore_index`` / ``mask`` / ``max_rows`` (also for 2-D scores): the counted rows are gathered and
        fitted as the flattened rows (see ``Calibrator._fit_gathered``: n x K values in memory, bounded by
        ``max_rows``)."""
        self._check_params()
        if dense_route(scores, ignore_index, mask, max_rows):
            return self._fit_gathered(scores, labels, sample_weight, axis=axis, ignore_index=ignore_index, mask=mask,
                                      max_rows=max_rows)
        scores = binary_column(scores)
        binary = np.ndim(scores) != 2
        scores, labels, sample_weight = check_fit_inputs(scores, labels, sample_weight, binary=binary)
        f = _binary_scores(scores)
        if binary:
            self.a_, self.b_, self.n_iter_ = _fit_sigmoid(f, labels == 1, sample_weight, self.smooth_targets,
                                                          self.max_iter, self.tol, "")
            self.binary_, self.n_classes_ = True, 2
            return self
        n_classes = f.shape[1]
        if n_classes > MAX_CLASSES:
            raise ValueError(f"scores have {n_classes} columns, more than MAX_CLASSES = {MAX_CLASSES}")
        bad = (labels < 0) | (labels >= n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"labels[{i}] = {labels[i]} is out of range for n_classes={n_classes}")
        columns = np.ascontiguousarray(f.T)  # each class's scores contiguous
        fits = [_fit_sigmoid(columns[c], labels == c, sample_weight, self.smooth_targets, self.max_iter, self.tol,
                             f" (class {c})") for c in range(n_classes)]
        self.a_ = np.array([r[0] for r in fits])
        self.b_ = np.array([r[1] for r in fits])
        self.n_iter_ = max(r[2] for r in fits)
        self.binary_, self.n_classes_ = False, int(n_classes)
        return self

    def _load_fitted(self, fitted):
        a, b = fitted["a_"], fitted["b_"]
        if isinstance(a, list) != isinstance(b, list) or isinstance(a, list) and len(a) != len(b):
            raise ValueError("learned values 'a_' and 'b_' must both be numbers (binary scores) or both lists of "
                             "the same length (one per class)")
        if isinstance(a, list):  # multiclass: one (A_k, B_k) per column
            if not 2 <= len(a) <= MAX_CLASSES:
                raise ValueError(f"learned value 'a_' must be a number or a list of 2 to {MAX_CLASSES} numbers")
            self.a_ = fitted_array(fitted, "a_", (len(a),))
            self.b_ = fitted_array(fitted, "b_", (len(a),))
            self.binary_, self.n_classes_ = False, len(a)
        else:
            self.a_ = float(fitted_array(fitted, "a_", ()))
            self.b_ = float(fitted_array(fitted, "b_", ()))
            self.binary_, self.n_classes_ = True, 2
        self.n_iter_ = fitted_int(fitted, "n_iter_", 0)

    def predict_proba(self, scores: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities: for binary scores (N,) (or (N, 1)) those of classes 0 and 1, shape (N, 2), as
        every scikit-learn classifier (``predict_proba(scores)[:, 1]`` is P(y = 1)); for multiclass scores
        (N, K) the K one-vs-rest sigmoids divided by their row sum (a row whose sigmoids all underflow to 0
        becomes uniform, 1/K), as ``CalibratedClassifierCV(method="sigmoid")``.
        Dense scores ``(N, K, *spatial)`` (``axis=1``, or channel-last ``axis=-1``) give probabilities of their
        shape, piece by piece, into ``out`` when given (``out=scores`` for in place): bit for bit the 2-D result of the flattened rows."""
        if dense_route(scores, out):
            return self._dense_probabilities(scores, axis=axis, out=out)
        p = self._probabilities(scores)
        return two_columns(p) if self.binary_ else p

    def _probabilities(self, scores):
        """P(y = 1), shape (N,), for binary scores; the renormalised (N, K) probabilities for multiclass."""
        self._check_fitted()
        s = binary_column(scores)
        if self.binary_:
            if s.ndim != 1:
                raise ValueError(f"scores must have shape (N,) or (N, 1), got shape {s.shape}")
            return expit(-(self.a_ * _binary_scores(s) + self.b_))
        if s.ndim != 2 or s.shape[1] != self.n_classes_:
            raise ValueError(f"scores have shape {s.shape} but the calibrator was fitted on multiclass scores of "
                             f"shape (N, {self.n_classes_})")
        f = _binary_scores(s)
        p = expit(-(f * self.a_ + self.b_))
        total = p.sum(axis=1, keepdims=True)
        zero = total[:, 0] == 0
        p[zero] = 1.0
        total[zero] = self.n_classes_
        p /= total
        return p

    def predict(self, scores: ArrayLike, *, axis: int = 1) -> IntArray:
        """Binary: 1 where P(y = 1) >= 0.5, else 0; multiclass: the most probable class. Dense scores give the ``(N, *spatial)`` map."""
        if dense_route(scores):
            return self._dense_probabilities(scores, axis=axis, predict=True)
        p = self._probabilities(scores)
        return (p >= 0.5).astype(np.int64) if self.binary_ else np.argmax(p, axis=1)


def _fit_sigmoid(f, positive, sample_weight, smooth_targets, max_iter, tol, what):
    """(A, B, n_iter) of Platt scaling on the scores f (N,) against the boolean targets ``positive``, each
    warning and error ending with ``what`` (which class)."""
    w = np.ones(f.shape[0]) if sample_weight is None else sample_weight
    with np.errstate(over="ignore"):  # the weighted counts may overflow to inf: handled below
        n_pos, n_neg = float(w[positive].sum()), float(w[~positive].sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"labels hold only one class{what}: Platt scaling needs examples of both 0 and 1")
    if smooth_targets:  # Platt's prior, from the weighted counts as given
        t_pos = (n_pos + 1.0) / (n_pos + 2.0) if math.isfinite(n_pos) else 1.0
        t = np.where(positive, t_pos, 1.0 / (n_neg + 2.0))
    else:
        t = positive.astype(np.float64)
    start = (n_neg + 1.0) / (n_pos + 1.0)
    if sample_weight is not None:
        # The loss is minimised with the weights divided by their largest (same optimum, no
        # overflow for weights near 1e308, no subnormal sums).
        w = sample_weight / float(sample_weight.max())  # checked by check_fit_inputs: finite, >= 0, not all 0
        if not (math.isfinite(start) and start > 0.0):
            start = float(w[~positive].sum()) / float(w[positive].sum())
    if f.min() == f.max():
        # A is not identifiable: with A = 0 the NLL is minimised by P(y = 1) = the weighted mean target.
        warnings.warn(f"scores are constant{what}: Platt scaling sets A = 0 and predicts the (weighted) rate of "
                      "class 1 for every score", RuntimeWarning, stacklevel=3)
        mean_t = float(w @ t) / float(w.sum())
        return 0.0, math.log((1.0 - mean_t) / mean_t), 0
    a, b = 0.0, math.log(start)
    loss = _platt_loss(a, b, f, t, w)
    total, sigma, converged = float(w.sum()), 1e-12, False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        p = expit(-(a * f + b))  # P(y = 1)
        d1 = w * (t - p)
        d2 = w * p * (1.0 - p)
        g1, g2 = float(f @ d1), float(d1.sum())
        if abs(g1) <= tol * total and abs(g2) <= tol * total:
            converged = True
            break
        h11, h22, h21 = float(f * f @ d2) + sigma, float(d2.sum()) + sigma, float(f @ d2)
        det = h11 * h22 - h21 * h21
        if not det > 0.0 or not math.isfinite(det):  # Hessian singular to rounding: no Newton step
            break
        da, db = -(h22 * g1 - h21 * g2) / det, -(-h21 * g1 + h11 * g2) / det
        slope = g1 * da + g2 * db
        step = 1.0
        while step >= 1e-12:
            new_a, new_b = a + step * da, b + step * db
            new_loss = _platt_loss(new_a, new_b, f, t, w)
            if new_loss <= loss + 1e-4 * step * slope:
                break
            step /= 2.0
        else:  # no decrease possible: at the optimum to machine precision
            converged = True
            break
        a, b, loss = new_a, new_b, new_loss
        if abs(step * da) <= 1e-13 * (1 + abs(a)) and abs(step * db) <= 1e-13 * (1 + abs(b)):
            converged = True  # Newton steps at rounding level: the gradient is noise
            break
    if not converged:
        warnings.warn(f"Platt scaling did not converge in {max_iter} iterations{what}", RuntimeWarning,
                      stacklevel=3)
    return float(a), float(b), int(n_iter)
