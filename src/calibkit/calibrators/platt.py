"""Platt scaling for binary scores."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._typing import ArrayLike, FloatArray, IntArray
from .._validation import check_bool
from ._base import (
    Calibrator, binary_column, check_fit_inputs, check_int, check_positive_number, fitted_array, fitted_int,
    two_columns,
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

    Parameters
    ----------
    smooth_targets : bool, default True
    max_iter : int, default 100
    tol : float, default 1e-12
        Stop when the gradient is below ``tol`` times the total weight.

    Attributes
    ----------
    a_, b_ : float
    n_iter_ : int
    classes_ : ndarray of shape (2,)
        The classes 0 and 1.
    n_features_in_ : int
        1, one score per row.

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

    _binary_input = True

    def fit(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None) -> "PlattScaling":
        """Fit (A, B) on binary scores (N,) (or (N, 1)) and labels in {0, 1}; returns self."""
        self._check_params()
        scores = binary_column(scores)
        scores, labels, sample_weight = check_fit_inputs(scores, labels, sample_weight, binary=True)
        f = _binary_scores(scores)
        w = np.ones(f.shape[0]) if sample_weight is None else sample_weight
        positive = labels == 1
        with np.errstate(over="ignore"):  # the weighted counts may overflow to inf: handled below
            n_pos, n_neg = float(w[positive].sum()), float(w[~positive].sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError("labels hold only one class: Platt scaling needs examples of both 0 and 1")
        if self.smooth_targets:  # Platt's prior, from the weighted counts as given
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
            warnings.warn("scores are constant: Platt scaling sets A = 0 and predicts the (weighted) rate of "
                          "class 1 for every score", RuntimeWarning, stacklevel=2)
            mean_t = float(w @ t) / float(w.sum())
            self.a_, self.b_, self.n_iter_ = 0.0, math.log((1.0 - mean_t) / mean_t), 0
            return self
        a, b = 0.0, math.log(start)
        loss = _platt_loss(a, b, f, t, w)
        total, sigma, converged = float(w.sum()), 1e-12, False
        n_iter = 0
        for n_iter in range(1, self.max_iter + 1):
            p = expit(-(a * f + b))  # P(y = 1)
            d1 = w * (t - p)
            d2 = w * p * (1.0 - p)
            g1, g2 = float(f @ d1), float(d1.sum())
            if abs(g1) <= self.tol * total and abs(g2) <= self.tol * total:
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
            warnings.warn(f"Platt scaling did not converge in {self.max_iter} iterations", RuntimeWarning,
                          stacklevel=2)
        self.a_, self.b_, self.n_iter_ = float(a), float(b), int(n_iter)
        return self

    def _load_fitted(self, fitted):
        self.a_ = float(fitted_array(fitted, "a_", ()))
        self.b_ = float(fitted_array(fitted, "b_", ()))
        self.n_iter_ = fitted_int(fitted, "n_iter_", 0)

    def predict_proba(self, scores: ArrayLike) -> FloatArray:
        """Calibrated probabilities of classes 0 and 1 for binary scores (N,) (or (N, 1)): shape (N, 2), as
        every scikit-learn classifier; ``predict_proba(scores)[:, 1]`` is P(y = 1)."""
        return two_columns(self._probabilities(scores))

    def _probabilities(self, scores):
        """P(y = 1), shape (N,)."""
        self._check_fitted()
        s = binary_column(scores)
        if s.ndim != 1:
            raise ValueError(f"scores must have shape (N,) or (N, 1), got shape {s.shape}")
        return expit(-(self.a_ * _binary_scores(s) + self.b_))

    def predict(self, scores: ArrayLike) -> IntArray:
        """1 where P(y = 1) >= 0.5, else 0."""
        return (self._probabilities(scores) >= 0.5).astype(np.int64)
