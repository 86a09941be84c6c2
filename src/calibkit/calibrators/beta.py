"""Beta calibration (Kull, Silva Filho & Flach 2017), binary and one-vs-rest."""

from __future__ import annotations

import math
import warnings

import numpy as np

from .._backend import BACKENDS
from .._typing import ArrayLike, Backend, FloatArray, IntArray
from .._validation import check_bool, check_choice
from ._base import (
    Calibrator, binary_column, check_fit_inputs, check_int, dense_route, fitted_array, fitted_classes, two_columns,
)
from .nonparametric import _binary_scores, _probability_matrix
from .platt import expit

#: betacal's ``LogisticRegression(C=99999999999)``: the coefficients (not the intercept) carry the ridge
#: ||coef||^2 / (2 C) next to the summed weighted log-loss.
_BETACAL_C = 99999999999.0
PARAMETERS = ("abm", "am", "ab")


def _logistic_fit(x, t, w, ridge, max_iter):
    """Weighted logistic regression by Newton's method: argmin over beta of
    sum_i w_i [log(1 + exp(eta_i)) - t_i eta_i] + ridge . beta^2 / 2, eta = x beta (x of shape (n, d), the
    intercept a column of ones with ridge 0). Returns (beta, n_iter, converged)."""
    beta = np.zeros(x.shape[1])

    def loss(b):
        eta = x @ b
        # np.sum(w * v), not w @ v: a threaded BLAS dot of long vectors stalls on a loaded machine
        return float(np.sum(w * (np.logaddexp(0.0, eta) - t * eta))) + 0.5 * float(ridge @ (b * b))

    f = loss(beta)
    total = float(w.sum())
    for n_iter in range(1, max_iter + 1):
        eta = x @ beta
        p = expit(eta)
        g = x.T @ (w * (p - t)) + ridge * beta
        if float(np.abs(g).max()) <= 1e-13 * total:
            return beta, n_iter, True
        h = (x.T * (w * p * (1.0 - p))) @ x + np.diag(ridge)
        try:
            d = -np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            d = -np.linalg.lstsq(h, g, rcond=None)[0]
        slope = float(g @ d)
        if not slope < 0.0:
            return beta, n_iter, True  # no descent direction left at float precision
        step = 1.0
        while True:
            new = beta + step * d
            f_new = loss(new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return beta, n_iter, True  # the loss cannot be lowered at float precision: the optimum
        beta, f = new, f_new
        if float(np.abs(step * d).max()) <= 1e-14 * (1.0 + float(np.abs(beta).max())):
            return beta, n_iter, True
    return beta, max_iter, False


def _features(s, eps):
    """(ln s, -ln(1 - s)) of the scores clipped to [eps, 1 - eps] (betacal's clipping), shape (n, 2)."""
    s = np.clip(s, eps, 1.0 - eps)
    return np.column_stack([np.log(s), -np.log1p(-s)])


def _fit_beta(s, positive, w, parameters, eps, max_iter, what):
    """(a, b, c) of p = sigmoid(a ln s - b ln(1 - s) + c) fitted as betacal fits them."""
    n = s.shape[0]
    if float(w[positive].sum()) == 0 or float(w[~positive].sum()) == 0:
        raise ValueError(f"labels hold only one class{what}: beta calibration needs examples of both 0 and 1")
    largest = float(w.max())
    w = w / largest  # the same optimum (the ridge scaled alike), no overflow or subnormal sums
    ridge_c = 1.0 / (_BETACAL_C * largest)
    t = positive.astype(np.float64)
    x = _features(s, eps)
    ones = np.ones((n, 1))
    iterations, converged = 0, True

    def fit(columns, intercept):
        nonlocal iterations, converged
        design = np.hstack([x[:, columns], ones]) if intercept else x[:, columns]
        ridge = np.array([ridge_c] * len(columns) + ([0.0] if intercept else []))
        beta, it, ok = _logistic_fit(design, t, w, ridge, max_iter)
        iterations += it
        converged &= ok
        return beta

    if parameters == "abm":
        beta = fit([0, 1], True)
        if beta[0] < 0:  # betacal's fallback: refit without ln s (a = 0)
            one = fit([1], True)
            a, b, c = 0.0, float(one[0]), float(one[1])
        elif beta[1] < 0:  # ... or without -ln(1 - s) (b = 0)
            one = fit([0], True)
            a, b, c = float(one[0]), 0.0, float(one[1])
        else:
            a, b, c = (float(v) for v in beta)
    elif parameters == "am":  # one slope on ln(s / (1 - s)) = ln s - ln(1 - s), and an intercept
        x = x[:, :1] + x[:, 1:]
        beta = fit([0], True)
        a, b, c = float(beta[0]), float(beta[0]), float(beta[1])
    else:  # "ab": ln(2 s) and ln(2 (1 - s)), no intercept (m = 1/2): c = (a - b) ln 2
        x = np.column_stack([x[:, 0] + math.log(2.0), -x[:, 1] + math.log(2.0)])
        beta = fit([0, 1], False)
        a, b = float(beta[0]), -float(beta[1])
        c = (a - b) * math.log(2.0)
    if not converged:
        warnings.warn(f"beta calibration did not converge in {max_iter} Newton iterations{what}", RuntimeWarning,
                      stacklevel=3)
    return a, b, c, iterations


def _check_probabilities(s):
    """Binary scores (N,) as float64, finite and in [0, 1] (1e-6 of slack, as the one-vs-rest calibrators)."""
    p = _binary_scores(s)
    outside = (p < -1e-6) | (p > 1 + 1e-6)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(f"scores[{i}] = {float(p[i])!r} is not a probability in [0, 1] (beta calibration "
                         "calibrates probabilities)")
    return p


class BetaCalibration(Calibrator):
    r"""Beta calibration (Kull, Silva Filho & Flach 2017, "Beta calibration: a well-founded and easily
    implemented improvement on logistic calibration for binary classifiers", AISTATS), binary and one-vs-rest.

    .. math::

        P(y = 1 \mid s) = \frac{1}{1 + e^{-(a \ln s - b \ln(1 - s) + c)}},
        \qquad c = b \ln(1 - m) - a \ln m,

    fitted as the reference implementation ``betacal`` fits it: a logistic regression of the label on
    (ln s, -ln(1 - s)) with an intercept, the coefficients carrying betacal's ridge
    ||coef||^2 / (2 C), C = 99999999999 (practically none), minimised here by Newton's method to float
    precision. ``parameters="abm"``: if the fitted a < 0 the model is refitted on -ln(1 - s) alone (a = 0),
    else if b < 0 on ln s alone (b = 0), betacal's rule for the paper's constraint a, b >= 0 (the refitted
    coefficient is kept whatever its sign, as betacal keeps it). ``"am"``: a = b, one slope on
    ln(s / (1 - s)) and an intercept. ``"ab"``: m = 1/2, no intercept, the regression on
    (ln 2s, ln 2(1 - s)), so c = (a - b) ln 2. Scores are clipped to [eps, 1 - eps] first, eps the
    machine epsilon of the scores' float dtype (``numpy.finfo(dtype).eps``, betacal's clipping; float64 for
    integer input and for the softmax of logits); the arithmetic is float64 whatever the dtype (betacal's
    float32 scores stay float32 in its logistic regression: there the two differ by float32 rounding).
    ``betacal``'s own fit stops at scikit-learn's L-BFGS tolerance (``tol=1e-4``); this one at the optimum,
    so the probabilities agree to the precision of betacal's fit (about 1e-6 on well-conditioned data).

    Multiclass scores (N, K), K >= 2, are probabilities (or logits with ``from_logits=True``): column k is
    calibrated against 1[y = k] and each calibrated row is divided by its sum (a row whose values all
    underflow to 0 becomes uniform), as the other one-vs-rest calibrators do.

    Parameters
    ----------
    parameters : {"abm", "am", "ab"}, default "abm"
    from_logits : bool, default False
        For (N, K) input: softmax the scores first.
    max_iter : int, default 100
        The most Newton iterations of each logistic fit.
    backend : {"auto", "cpp", "numba"}
        The kernels of the softmax with ``from_logits=True``.

    Attributes
    ----------
    a_, b_, c_ : float, or ndarray of shape (K,) for multiclass scores
    n_classes_ : int
    binary_ : bool
    classes_ : ndarray of shape (2,) or (K,)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> s = rng.beta(2, 2, size=4000)                            # scores of class 1
    >>> y = (rng.random(4000) < s ** 3 / (s ** 3 + (1 - s) ** 2)).astype(int)
    >>> bc = calibkit.BetaCalibration().fit(s, y)
    >>> round(bc.a_, 1), round(bc.b_, 1)
    (3.7, 1.6)
    >>> bc.predict_proba(np.array([0.2, 0.5, 0.8]))[:, 1].round(2)
    array([0.01, 0.34, 0.93])
    """

    _fitted_names = ("a_", "b_", "c_", "n_classes_", "binary_")

    def __init__(self, parameters: str = "abm", *, from_logits: bool = False, max_iter: int = 100,
                 backend: Backend = "auto"):
        self.parameters = parameters
        self.from_logits = from_logits
        self.max_iter = max_iter
        self.backend = backend

    def _check_params(self):
        check_choice(self.parameters, "parameters", PARAMETERS)
        check_bool(self.from_logits, "from_logits")
        check_int(self.max_iter, "max_iter", 1)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def _scores(self, scores, n_classes=None):
        """(probabilities as float64, eps of the clipping, binary) of checked scores."""
        s = binary_column(scores)
        if s.ndim == 1:
            return _check_probabilities(s), float(np.finfo(_dtype(s)).eps), True
        if s.ndim != 2 or (n_classes is not None and s.shape[1] != n_classes):
            expected = "(N,), (N, 1) or (N, K)" if n_classes is None else f"(N, {n_classes})"
            raise ValueError(f"scores must have shape {expected}, got shape {s.shape}")
        p = _probability_matrix(s, self.from_logits, self.backend)
        return p, float(np.finfo(np.float64 if self.from_logits else _dtype(s)).eps), False

    def fit(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "BetaCalibration":
        """Fit on held-out scores ((N,) probabilities of class 1, or (N, K)) and labels (N,); returns self.

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
        p, eps, binary = self._scores(scores)
        w = np.ones(p.shape[0]) if sample_weight is None else sample_weight
        if binary:
            self.a_, self.b_, self.c_, _ = _fit_beta(p, labels == 1, w, self.parameters, eps, self.max_iter, "")
            self.n_classes_, self.binary_ = 2, True
            return self
        n_classes = p.shape[1]
        bad = (labels < 0) | (labels >= n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"labels[{i}] = {labels[i]} is out of range for n_classes={n_classes}")
        columns = np.ascontiguousarray(p.T)
        del p
        fits = [_fit_beta(columns[k], labels == k, w, self.parameters, eps, self.max_iter, f" (class {k})")
                for k in range(n_classes)]
        self.a_, self.b_, self.c_ = (np.array([f[j] for f in fits]) for j in range(3))
        self.n_classes_, self.binary_ = int(n_classes), False
        return self

    def _load_fitted(self, fitted):
        self.n_classes_, binary = fitted_classes(fitted)
        self.binary_ = binary
        shape = () if binary else (self.n_classes_,)
        for name in ("a_", "b_", "c_"):
            value = fitted_array(fitted, name, shape)
            setattr(self, name, float(value) if binary else value)
        if self.parameters == "am" and not np.array_equal(self.a_, self.b_):
            raise ValueError("learned values 'a_' and 'b_' must be equal for parameters='am'")

    def _probabilities(self, scores):
        """P(y = 1), shape (N,), for binary scores; the renormalised (N, K) probabilities for multiclass."""
        self._check_fitted()
        s = binary_column(scores)
        if self.binary_ != (np.ndim(s) == 1):
            raise ValueError(f"this calibrator was fitted on {'binary scores of shape (N,) or (N, 1)' if self.binary_ else f'scores of shape (N, {self.n_classes_})'}, got shape {np.shape(s)}")
        p, eps, binary = self._scores(s, None if self.binary_ else self.n_classes_)
        p = np.clip(p, eps, 1.0 - eps)
        eta = self.a_ * np.log(p) - self.b_ * np.log1p(-p) + self.c_
        q = expit(eta)
        if binary:
            return q
        total = q.sum(axis=1, keepdims=True)
        zero = total[:, 0] == 0
        q[zero] = 1.0
        total[zero] = self.n_classes_
        q /= total
        return q

    def predict_proba(self, scores: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities: (N, 2) of classes 0 and 1 for binary scores (``[:, 1]`` is P(y = 1)), or
        (N, K) rows summing to 1.
        Dense scores ``(N, K, *spatial)`` (``axis=1``, or channel-last ``axis=-1``) give probabilities of their
        shape, piece by piece, into ``out`` when given (``out=scores`` for in place): bit for bit the 2-D result of the flattened rows."""
        if dense_route(scores, out):
            return self._dense_probabilities(scores, axis=axis, out=out)
        p = self._probabilities(scores)
        return two_columns(p) if self.binary_ else p

    def predict(self, scores: ArrayLike, *, axis: int = 1) -> IntArray:
        """Binary: 1 where P(y = 1) >= 0.5, else 0; multiclass: the most probable class. Dense scores give the ``(N, *spatial)`` map."""
        if dense_route(scores):
            return self._dense_probabilities(scores, axis=axis, predict=True)
        p = self._probabilities(scores)
        return (p >= 0.5).astype(np.int64) if self.binary_ else np.argmax(p, axis=1)


def _dtype(a):
    """The float dtype whose eps clips the scores: the array's own (float16/32/64), float64 otherwise."""
    dtype = np.asarray(a).dtype
    return dtype if dtype.kind == "f" else np.dtype(np.float64)
