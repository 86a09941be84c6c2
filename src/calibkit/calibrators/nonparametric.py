"""Isotonic regression (PAV) and histogram binning calibrators, binary and one-vs-rest multiclass."""

from __future__ import annotations

import typing
import warnings
from typing import Any, TypeVar

import numpy as np

from .. import _backend
from .._backend import BACKENDS
from .._typing import ArrayLike, Backend, FloatArray, IntArray, Strategy
from .._validation import (
    FLOAT_DTYPES, MAX_CELLS, MAX_CLASSES, OK, BadElementError, check_bool, check_cells, check_choice, check_n_bins,
    raise_for_status,
)
from ..metrics import _quantile_edges
from ._base import (
    Calibrator, binary_column, check_finite, check_fit_inputs, check_logits, dense_route, fitted_array, fitted_classes,
    fitted_int, two_columns,
)


_O = TypeVar("_O", bound="_OneVsRest")  # fit returns self, of the caller's class

class IsotonicRegressionResult(typing.NamedTuple):
    """Result of :func:`isotonic_regression`.

    Attributes
    ----------
    fitted : ndarray of shape (n,)
        The fitted value of each input point, in input order.
    values : ndarray of shape (n_blocks,)
        The value of each block (strictly monotone, unless ``y_min``/``y_max`` clipped neighbours to one value).
    weights : ndarray of shape (n_blocks,)
        The summed weight of each block.
    blocks : ndarray of shape (n_blocks + 1,)
        Block b is ``order[blocks[b]:blocks[b + 1]]`` of the points sorted by x (``order`` = identity when x
        is None), as in ``scipy.optimize.isotonic_regression``.
    order : ndarray of shape (n,) or None
        The stable sort order of x (with x values closer than the tie resolution merged, see
        :func:`isotonic_regression`), or None when x is None.
    x_thresholds, y_thresholds : ndarray of shape (m,)
        The knots of the fitted function: the first and the last x of each block (one knot when they are
        equal; positions 0..n-1 when x is None) with the block's value, x strictly increasing, as
        ``sklearn.isotonic.IsotonicRegression``'s ``X_thresholds_`` / ``y_thresholds_``. :meth:`predict`
        interpolates linearly between them.
    increasing : bool
        The direction fitted (the one chosen by ``increasing="auto"``).
    """

    fitted: np.ndarray
    values: np.ndarray
    weights: np.ndarray
    blocks: np.ndarray
    order: typing.Optional[np.ndarray]
    x_thresholds: typing.Optional[np.ndarray] = None
    y_thresholds: typing.Optional[np.ndarray] = None
    increasing: bool = True

    def predict(self, x: ArrayLike, out_of_bounds: str = "nan") -> FloatArray:
        """The fitted function at new points: linear interpolation between the knots
        (``x_thresholds``, ``y_thresholds``), as ``sklearn.isotonic.IsotonicRegression.predict``.

        Parameters
        ----------
        x : array of shape (n,)
            Finite numbers (NaN/inf raise a ValueError).
        out_of_bounds : {"nan", "clip", "raise"}, default "nan"
            For x outside [x_thresholds[0], x_thresholds[-1]]: NaN, the value at the nearest end, or a
            ValueError naming the first such element (scikit-learn's names and behaviour; unlike
            scikit-learn, a fit with a single knot is no exception: only x equal to it is in range).

        Returns
        -------
        ndarray of shape (n,), float64
        """
        check_choice(out_of_bounds, "out_of_bounds", ("nan", "clip", "raise"))
        if self.x_thresholds is None or self.y_thresholds is None:
            raise ValueError("this result has no knots (x_thresholds): it was not made by isotonic_regression")
        t = _finite_vector(x, "x", allow_empty=True)
        xk, yk = self.x_thresholds, self.y_thresholds
        out = np.interp(t, xk, yk)
        if out_of_bounds != "clip":
            outside = (t < xk[0]) | (t > xk[-1])
            if outside.any():
                if out_of_bounds == "raise":
                    i = int(np.argmax(outside))
                    raise ValueError(f"x[{i}] = {float(t[i])!r} is outside the fitted range [{float(xk[0])!r}, {float(xk[-1])!r}] "
                                     "(out_of_bounds='raise')")
                out[outside] = np.nan
        return out


def _finite_vector(a: ArrayLike, name: str, n: int | None = None, allow_empty: bool = False) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object or a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be an array of numbers, got dtype {a.dtype}")
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is None and a.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: at least one value is needed")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} entries but y has {n}")
    a = np.ascontiguousarray(a, dtype=np.float64)
    check_finite(a, name)
    return a


def _bound(value, name):
    """y_min / y_max: None or a finite number, as a float (or None)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise TypeError(f"{name} must be None or a finite number, got {value!r}")
    return float(value)


def _check_bounds(y_min, y_max, low=-np.inf, high=np.inf):
    """Checked (y_min, y_max): None or finite, y_min <= y_max, both in [low, high]."""
    y_min, y_max = _bound(y_min, "y_min"), _bound(y_max, "y_max")
    for name, v in (("y_min", y_min), ("y_max", y_max)):
        if v is not None and not low <= v <= high:
            raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {v!r}")
    if y_min is not None and y_max is not None and y_min > y_max:
        raise ValueError(f"y_min = {y_min!r} is above y_max = {y_max!r}")
    return y_min, y_max


def _check_increasing(increasing):
    if isinstance(increasing, str):
        if increasing != "auto":
            raise ValueError(f"increasing must be True, False or 'auto', got {increasing!r}")
        return increasing
    return check_bool(increasing, "increasing")


def _spearman_increasing(x, y):
    """scikit-learn's ``check_increasing`` rule: increasing when Spearman's rho of (x, y) is >= 0 (a constant
    x or y, where rho is undefined, gives decreasing, as scikit-learn; the fit is then the same either way).
    scikit-learn's warning when the confidence interval of rho spans 0 is not given."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = np.sqrt(np.dot(rx, rx) * np.dot(ry, ry))
    return bool(den > 0 and np.dot(rx, ry) / den >= 0)


def _tie_dtype(dtype) -> np.dtype:
    """The float type scikit-learn's IsotonicRegression works in: float32 input stays float32, everything else
    (float16, integers) becomes float64 (``check_array(..., dtype=[np.float64, np.float32])``)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float32 else np.dtype(np.float64)


def _tie_resolution(dtype) -> float:
    """The distance below which two x are one point: ``np.finfo(_tie_dtype(dtype)).resolution`` (1e-6 for
    float32 input, 1e-15 otherwise)."""
    return float(np.finfo(_tie_dtype(dtype)).resolution)


def _merge_close(x: np.ndarray, dtype) -> np.ndarray:
    """x with each value replaced by the first (smallest) value of its group, the groups made as
    scikit-learn's ``_make_unique``: over the sorted distinct values, a value starts a new group when it
    minus the group's first value is >= the resolution (computed in ``_tie_dtype(dtype)``); otherwise
    it joins the group. Returns x itself when no two distinct values are that close."""
    work = _tie_dtype(dtype)
    eps = work.type(_tie_resolution(dtype))
    u, inverse = np.unique(x.astype(work), return_inverse=True)
    close = np.flatnonzero(np.diff(u) < eps) + 1 if u.shape[0] > 1 else np.zeros(0, np.int64)
    if close.shape[0] == 0:
        return x
    first = u.copy()
    for j in close.tolist():  # only the values within eps of their predecessor can join a group
        if u[j] - first[j - 1] < eps:
            first[j] = first[j - 1]
    return first.astype(np.float64)[inverse.reshape(-1)]


def _knots(xs_sorted: np.ndarray, blocks: np.ndarray, values: np.ndarray):
    """The first and last sorted x of each block (one knot when equal) with the block's value."""
    first, last = xs_sorted[blocks[:-1]], xs_sorted[blocks[1:] - 1]
    x = np.column_stack([first, last]).ravel()
    y = np.repeat(values, 2)
    keep = np.ones(x.shape[0], dtype=bool)
    keep[1::2] = last != first
    return x[keep], y[keep]


def isotonic_regression(y: ArrayLike, *, x: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
                        increasing: bool | str = True, y_min: float | None = None, y_max: float | None = None,
                        backend: Backend = "auto") -> IsotonicRegressionResult:
    r"""Weighted isotonic regression by pool-adjacent-violators, in native code.

    Finds the monotone sequence f minimising :math:`\sum_i w_i (y_i - f_i)^2`
    subject to :math:`f_i \le f_j` whenever :math:`x_i < x_j` (``increasing``;
    reversed otherwise). Without ``x`` the points are taken in the given order
    (as ``scipy.optimize.isotonic_regression``); with ``x`` they are sorted by
    a stable native radix argsort and points with equal x are pooled first
    into their weighted mean (as ``sklearn.isotonic.IsotonicRegression``), so
    they get one fitted value. PAV (Ayer et al. 1955; Barlow et al. 1972)
    then runs in linear time.

    **Ties.** With ``x``, values closer than the resolution of its float type (``np.finfo(float32).resolution``
    = 1e-6 for float32 x, float64's 1e-15 for any other x, which scikit-learn converts to float64) are one
    point, by scikit-learn's rule
    (``sklearn/_isotonic.pyx``, ``_make_unique``): over the sorted distinct values, a value starts a new
    group when it minus the group's first value is >= the resolution (computed in the input's float type),
    and otherwise joins the group, whose points are pooled and placed at its first value. The resolution is
    absolute, as scikit-learn's: x values that all lie within 1e-15 of each other (say, probabilities
    below 1e-16) form one point.

    Parameters
    ----------
    y : array of shape (n,)
    x : array of shape (n,), optional
    sample_weight : array of shape (n,), optional
        Positive weights (default 1).
    increasing : bool or "auto", default True
        "auto": increasing when Spearman's rank correlation of (x, y) is >= 0 (x = 0..n-1 without ``x``),
        scikit-learn's ``check_increasing`` rule (without its warning); the direction chosen is the
        result's ``increasing``.
    y_min, y_max : float, optional
        Clip the fitted values (and the block values) to [y_min, y_max] after the fit, as scikit-learn's
        ``isotonic_regression`` and ``IsotonicRegression`` (the clipped function is still monotone, and
        is the least-squares fit under the bounds).
    backend : {"auto", "cpp", "numba"}

    Returns
    -------
    IsotonicRegressionResult
        ``fitted``, ``values``, ``weights``, ``blocks``, ``order``, the knots ``x_thresholds`` and
        ``y_thresholds``, ``increasing``; its ``predict(x_new, out_of_bounds="nan" | "clip" | "raise")``
        interpolates linearly between the knots (``sklearn.isotonic.IsotonicRegression.predict``).

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> r = calibkit.isotonic_regression(np.array([1.0, 3.0, 2.0, 4.0]))
    >>> r.fitted
    array([1. , 2.5, 2.5, 4. ])
    >>> r.values, r.blocks
    (array([1. , 2.5, 4. ]), array([0, 1, 3, 4]))
    >>> calibkit.isotonic_regression(np.array([1.0, 0.0, 1.0, 0.0]), x=np.array([0.9, 0.1, 0.5, 0.7])).fitted
    array([1. , 0. , 0.5, 0.5])
    >>> r = calibkit.isotonic_regression(np.array([1.0, 3.0, 2.0, 6.0]), x=np.array([0.0, 1.0, 2.0, 3.0]), y_max=5)
    >>> r.fitted, r.predict(np.array([0.5, 3.0, 4.0]))
    (array([1. , 2.5, 2.5, 5. ]), array([1.75, 5.  ,  nan]))
    >>> calibkit.isotonic_regression(np.array([3.0, 2.0, 2.5]), increasing="auto").increasing
    False
    """
    x_in = x
    y = _finite_vector(y, "y")
    n = y.shape[0]
    if x is not None:
        x = _finite_vector(x, "x", n)
    if sample_weight is not None:
        sample_weight = _finite_vector(sample_weight, "sample_weight", n)
        if not (sample_weight > 0).all():
            i = int(np.argmin(sample_weight > 0))
            raise ValueError(f"sample_weight[{i}] = {float(sample_weight[i])!r} is not positive (weights must be > 0)")
    increasing = _check_increasing(increasing)
    y_min, y_max = _check_bounds(y_min, y_max)
    if increasing == "auto":
        increasing = _spearman_increasing(np.arange(n) if x is None else x, y)
    kernels = _backend.kernels(backend)
    r = kernels.isotonic_fit(y, x, sample_weight, increasing)
    xs = np.arange(n, dtype=np.float64) if x is None else x[r["order"]]
    if x is not None:  # values closer than the resolution (not equal): fit again with them merged
        dtype = np.asarray(x_in).dtype
        work = _tie_dtype(dtype)
        gaps = np.diff(xs.astype(work, copy=False))
        if ((gaps > 0) & (gaps < work.type(_tie_resolution(dtype)))).any():
            x = _merge_close(x, dtype)
            r = kernels.isotonic_fit(y, x, sample_weight, increasing)
            xs = x[r["order"]]
    fitted, values, blocks, order = r["fitted"], r["values"], r["blocks"], r["order"]
    if y_min is not None or y_max is not None:
        lo = -np.inf if y_min is None else y_min
        hi = np.inf if y_max is None else y_max
        fitted, values = np.clip(fitted, lo, hi), np.clip(values, lo, hi)
    x_thresholds, y_thresholds = _knots(xs, np.asarray(blocks), values)
    return IsotonicRegressionResult(fitted, values, r["weights"], blocks, order, x_thresholds, y_thresholds,
                                    bool(increasing))


def _binary_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """(N,) float64 view/copy of binary scores with NaN/inf rejected."""
    z = np.asarray(scores, dtype=np.float64)
    check_finite(z, name)
    return z


def _probability_matrix(scores, from_logits, backend="auto"):
    """(N, K) probabilities as float64 (softmax of logits), checked.

    The reference path: the kernels validate while they read and, when they find a bad score, this
    function is run to raise the error it always raised (the same element, the same message).
    """
    if from_logits:
        return _softmax64(scores, backend)
    p = np.asarray(scores, dtype=np.float64)
    check_finite(p, "scores")
    outside = (p < -1e-6) | (p > 1 + 1e-6)
    if outside.any():
        i, j = np.unravel_index(int(np.argmax(outside)), p.shape)
        raise ValueError(f"scores[{i}, {j}] = {float(p[i, j])!r} is not a probability in [0, 1]; "
                         "pass from_logits=True for logits")
    return p


def _softmax64(scores, backend="auto"):
    """Checked (N, K) logits -> a new C-ordered float64 array of their softmax (the only N x K array made).

    One kernel pass (``softmax_into``, threaded over rows, the logits read in place whatever their float dtype):
    each row's maximum, the row's pairwise sum in float64 and one division per value. float64 logits: the
    differences in float64 and the C library's double exp, the arithmetic of ``np.exp(z - z.max(1)) / sum``.
    float32 / float16 logits: the differences in float and one 8-lane float exp per logit (``exp_f32``),
    within about 3e-7 + 1.2e-7 |z_k - max| relatively of NumPy's float64 softmax (see ``softmax_row`` in
    pav.hpp). The one-vs-rest calibrators' fused apply (``step_apply(..., softmax=True)``) computes the same
    numbers. A logit that is not finite raises the error of :func:`check_finite`.
    """
    z = _readable(check_logits(scores))
    out = np.empty(z.shape)
    status = _kernels(backend).softmax_into(z, out)
    if status[0] != OK:
        check_finite(z, "scores")
        raise_for_status(status)
    return out


def _readable(scores):
    """Scores as an array the kernels read in place (float16/32/64, native, aligned); a float64 copy otherwise."""
    a = np.asarray(scores)
    if a.dtype.type not in FLOAT_DTYPES or not (a.flags.aligned and a.dtype.isnative):
        a = np.asarray(a, dtype=np.float64)
    return a


def _kernels(backend):
    """The module with ``isotonic_fit_columns``, ``histogram_fit_columns``, ``StepTables``, ``step_apply`` and
    ``step_apply_tables`` of the chosen backend."""
    if _backend.resolve_backend(backend) == "cpp":
        return _backend.kernels("cpp")
    from .._numba import pav
    return pav


# Score checks of the kernels (pav.hpp): none (already checked), finite, probability in [-1e-6, 1 + 1e-6].
_CHECK_NONE, _CHECK_FINITE, _CHECK_PROBABILITY = 0, 1, 2
# Step modes of step_apply: np.interp between knots (isotonic), y[searchsorted(x, s, "left")] (histogram).
_STEP_INTERP, _STEP_LEFT = 0, 1


def _concatenated(xs, ys):
    """K per-class arrays -> (x, x_offsets, y, y_offsets) as step_apply takes them."""
    x_off = np.zeros(len(xs) + 1, np.int64)
    y_off = np.zeros(len(ys) + 1, np.int64)
    np.cumsum([len(a) for a in xs], out=x_off[1:])
    np.cumsum([len(a) for a in ys], out=y_off[1:])
    x = np.ascontiguousarray(np.concatenate(xs), dtype=np.float64)
    y = np.ascontiguousarray(np.concatenate(ys), dtype=np.float64)
    return x, x_off, y, y_off


def _check_label_range(labels, n_classes):
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels[{i}] = {labels[i]} is out of range for n_classes={n_classes}")


def _warn_single_class(labels, n_classes):
    present = np.unique(labels)
    if present.size < 2:
        warnings.warn(f"only class {present[0]} is present in labels: the fit is degenerate", RuntimeWarning,
                      stacklevel=3)


class _OneVsRest(Calibrator):
    """Shared fit/predict for calibrators that map one score to one probability.

    Binary: scores (N,) -> P(y=1) of shape (N,). Multiclass: scores (N, K)
    (probabilities, or logits with ``from_logits=True``), class k's column is
    calibrated against 1[y = k] and the calibrated rows are renormalised.
    """

    def _fit_one(self, s, t, w):  # pragma: no cover - subclasses override (or _fit_models)
        raise NotImplementedError

    def _check_n_classes(self, n_classes):
        """Refuse a number of classes whose per-class models would be too large (before fitting any)."""

    def _fit_models(self, scores, labels, sample_weight, binary):
        """Per-column models from checked inputs, one _fit_one per column (subclasses may fit all at once)."""
        if binary:
            _warn_single_class(labels, 2)
            return [self._fit_one(_binary_scores(scores), labels.astype(np.float64), sample_weight)]
        p = _probability_matrix(scores, self.from_logits, self.backend)
        n_classes = p.shape[1]
        self._check_n_classes(n_classes)
        _check_label_range(labels, n_classes)
        _warn_single_class(labels, n_classes)
        # One transposing copy (each class's column contiguous) rather than K strided column copies, each of
        # which would read every cache line of p.
        columns = np.ascontiguousarray(p.T)
        del p
        return [self._fit_one(columns[c], (labels == c).astype(np.float64), sample_weight)
                for c in range(n_classes)]

    def fit(self: _O, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> _O:
        """Fit on held-out scores ((N,) binary or (N, K)) and labels (N,); returns self.

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        and ``ignore_index`` / ``mask`` / ``max_rows`` (also for 2-D scores): the counted rows are gathered and
        fitted as the flattened rows (see ``Calibrator._fit_gathered``: n x K values in memory, bounded by
        ``max_rows``)."""
        self._check_params()
        if dense_route(scores, ignore_index, mask, max_rows):
            return self._fit_gathered(scores, labels, sample_weight, axis=axis, ignore_index=ignore_index, mask=mask,
                                      max_rows=max_rows)
        scores = binary_column(scores)
        binary = scores.ndim == 1
        scores, labels, sample_weight = check_fit_inputs(scores, labels, sample_weight, binary=binary)
        models = self._fit_models(scores, labels, sample_weight, binary)
        self.n_classes_ = 2 if binary else int(scores.shape[1])
        self.binary_ = binary
        self._set_models(models)
        return self

    def _step_models(self):  # pragma: no cover - subclasses override
        """(mode, x, x_offsets, y, y_offsets) of the K calibration maps for step_apply."""
        raise NotImplementedError

    def _step_tables(self):
        """The ``StepTables`` of the K maps (of this calibrator's backend), as :meth:`predict_proba` builds them
        for each call: for a caller that applies the calibrator to many blocks (``step_apply_tables``, or
        ``step_apply_many`` with other calibrators' tables). Those of the fitted values at this call: make new
        ones after a new fit."""
        self._check_fitted()
        mode, x, x_off, y, y_off = self._step_models()
        return _kernels(self.backend).StepTables(x, x_off, y, y_off, mode)

    def predict_proba(self, scores: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities, (N, K) rows summing to 1; binary scores (N,) (or (N, 1)) give the (N, 2)
        probabilities of classes 0 and 1, as every scikit-learn classifier (``predict_proba(s)[:, 1]`` is
        P(y = 1)). See :meth:`_probabilities` for the computation.
        Dense scores ``(N, K, *spatial)`` (``axis=1``, or channel-last ``axis=-1``) give probabilities of their
        shape, piece by piece, into ``out`` when given (``out=scores`` for in place): bit for bit the 2-D result of the flattened rows."""
        if dense_route(scores, out):
            return self._dense_probabilities(scores, axis=axis, out=out)
        p = self._probabilities(scores)
        return two_columns(p) if self.binary_ else p

    def _probabilities(self, scores):
        """Calibrated probabilities: (N,) P(y=1) for binary scores, (N, K) rows summing to 1 otherwise.

        One kernel pass: each score is looked up in its class's map (one short search from a table over
        [0, 1)) and each row is renormalised as it is written; the output is the only N x K array made
        (with ``from_logits=True``, the softmax of each chunk of rows is computed into it first, in the
        same pass: the numbers of :func:`_softmax64`).
        """
        self._check_fitted()
        kernels = _kernels(self.backend)
        mode, x, x_off, y, y_off = self._step_models()
        if self.binary_:
            s = binary_column(scores)
            if s.ndim != 1:
                raise ValueError(f"this calibrator was fitted on binary scores of shape (N,) or (N, 1), got shape "
                                 f"{s.shape}")
            s = _readable(s)
            out = np.empty(s.shape[0])
            status = kernels.step_apply(s, x, x_off, y, y_off, mode, _CHECK_FINITE, False, out)
            if status[0] != OK:
                _binary_scores(s)
                raise_for_status(status)
            return out
        if self.from_logits:
            z = _readable(check_logits(scores))
            if z.shape[1] != self.n_classes_:
                _softmax64(z, self.backend)  # a logit that is not finite is reported first, as it always was
                self._check_columns(z.shape)
            out = np.empty(z.shape)
            status = kernels.step_apply(z, x, x_off, y, y_off, mode, _CHECK_FINITE, True, out, True)
            if status[0] != OK:
                _softmax64(z, self.backend)  # raises the error of a logit that is not finite
                raise_for_status(status)
            return out
        p = _readable(scores)
        if p.ndim != 2 or p.shape[1] != self.n_classes_:
            _probability_matrix(p, False)  # a bad value is reported first, as it always was
            self._check_columns(p.shape)
        out = np.empty(p.shape)
        status = kernels.step_apply(p, x, x_off, y, y_off, mode, _CHECK_PROBABILITY, True, out)
        if status[0] != OK:
            _probability_matrix(p, False)
            raise_for_status(status)
        return out

    def _check_columns(self, shape):
        if len(shape) != 2 or shape[1] != self.n_classes_:
            raise ValueError(f"scores have shape {shape} but the calibrator was fitted on "
                             f"{self.n_classes_} classes")

    def _load_models(self, fitted, first, second, check):
        """Validated per-column arrays from a to_dict payload: check(a, b) -> (a, b) for each column."""
        self.n_classes_, binary = fitted_classes(fitted)
        self.binary_ = binary
        n_models = 1 if binary else self.n_classes_
        xs, ys = fitted[first], fitted[second]
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != n_models or len(ys) != n_models:
            raise ValueError(f"learned values {first!r} and {second!r} must be lists of {n_models} arrays "
                             f"(binary_ = {binary}, n_classes_ = {self.n_classes_})")
        self._set_models([check(c, x, y) for c, (x, y) in enumerate(zip(xs, ys))])

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name in self._fitted_names[:2]:  # lists of arrays
            d["fitted"][name] = [a.tolist() for a in getattr(self, name)]
        return d

    def predict(self, scores: ArrayLike, *, axis: int = 1) -> IntArray:
        """Predicted class after calibration (binary: P(y=1) >= 0.5). Dense scores give the ``(N, *spatial)`` map."""
        if dense_route(scores):
            return self._dense_probabilities(scores, axis=axis, predict=True)
        p = self._probabilities(scores)
        if self.binary_:
            return (p >= 0.5).astype(np.int64)
        return np.argmax(p, axis=1)


class IsotonicCalibration(_OneVsRest):
    """Isotonic-regression calibration (Zadrozny & Elkan 2002), binary or one-vs-rest.

    Each score column is mapped by the monotone step function fitted by
    :func:`isotonic_regression` (ties in the score pooled), interpolated
    linearly between the ends of neighbouring blocks and, by default, clipped outside the
    fitted range, as ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")``.
    Multiclass: the calibrated vector is divided by its sum; a row whose
    calibrated values are all 0 becomes uniform (1/K), as scikit-learn does.

    Scores closer than ``np.finfo(np.float64).resolution`` = 1e-15 are one point, by scikit-learn's rule
    (see :func:`isotonic_regression`): the fast native fit pools exact ties only, and a column where two
    neighbouring blocks meet closer than 1e-15 is fitted again with the rule, so the fitted values are
    scikit-learn's on float64 scores. Every score is read as float64, so float64's resolution applies
    to float16/float32 input too (scikit-learn would use float32's 1e-6 for float32 scores: give it
    float64 scores for the same numbers). The knots are the first and last score of each block
    (scikit-learn places a block's last knot at the first score of its last group of near-ties:
    predictions differ only for scores within 1e-15 of that knot).

    Parameters
    ----------
    from_logits : bool, default False
        For (N, K) input: softmax the scores first.
    y_min, y_max : float in [0, 1], optional
        Clip the calibrated values of each column to [y_min, y_max] (before the multiclass renormalisation),
        as scikit-learn's ``IsotonicRegression(y_min=..., y_max=...)``.
    increasing : bool or "auto", default True
        The direction of each column's map; "auto" chooses it per column by the sign of Spearman's rank
        correlation of the scores and the targets 1[y = k] (scikit-learn's ``check_increasing`` rule,
        without its warning). False or "auto" fits on a negated float64 copy of the scores.
    out_of_bounds : {"clip", "nan", "raise"}, default "clip"
        A score outside a column's fitted range [first knot, last knot] gets the value at the nearest end
        ("clip"), NaN ("nan"; for (N, K) scores the whole calibrated row is NaN, as it could not be
        renormalised), or raises a ValueError naming the element ("raise"), scikit-learn's names and
        behaviour. "nan" and "raise" compare every score with its column's range (one more pass).
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    x_thresholds_, y_thresholds_ : lists (one per calibrated column) of arrays
    n_classes_ : int
    binary_ : bool
    classes_ : ndarray of shape (K,)
        The classes 0, ..., K-1 (0 and 1 for binary scores).
    n_features_in_ : int
        K, or 1 for binary scores.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(size=2000)
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-2 * f))).astype(int)
    >>> p = 1 / (1 + np.exp(-f))  # binary scores (N,): probabilities of class 1, under-confident
    >>> iso = calibkit.IsotonicCalibration().fit(p, y)
    >>> iso.predict_proba(np.array([0.1, 0.5, 0.9])).round(2)  # (N, 2); [:, 1] is P(y = 1)
    array([[1.  , 0.  ],
           [0.5 , 0.5 ],
           [0.03, 0.97]])
    >>> iso = calibkit.IsotonicCalibration(y_min=0.01, y_max=0.99, out_of_bounds="nan").fit(p[:100], y[:100])
    >>> iso.predict_proba(np.array([0.0, 0.5]))[:, 1].round(2)
    array([ nan, 0.67])
    """

    _fitted_names = ("x_thresholds_", "y_thresholds_", "n_classes_", "binary_")

    def __init__(self, *, from_logits: bool = False, y_min: float | None = None, y_max: float | None = None,
                 increasing: bool | str = True, out_of_bounds: str = "clip", backend: Backend = "auto"):
        self.from_logits = from_logits
        self.y_min = y_min
        self.y_max = y_max
        self.increasing = increasing
        self.out_of_bounds = out_of_bounds
        self.backend = backend

    def _check_params(self):
        check_bool(self.from_logits, "from_logits")
        _check_bounds(self.y_min, self.y_max, 0.0, 1.0)
        _check_increasing(self.increasing)
        check_choice(self.out_of_bounds, "out_of_bounds", ("clip", "nan", "raise"))
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def _fit_models(self, scores, labels, sample_weight, binary):
        """All K maps in one kernel call (threaded across classes): the points of each class are
        sorted by score (ties pooled), PAV'd, and each block kept as its first and last score; then the
        options (direction, near ties, y_min / y_max) around it."""
        if binary:
            _warn_single_class(labels, 2)
            s, first_class, check = _readable(scores), 1, _CHECK_FINITE
        elif self.from_logits:
            s, first_class, check = _softmax64(scores, self.backend), 0, _CHECK_NONE
        else:
            s, first_class, check = scores, 0, _CHECK_PROBABILITY
        original = s  # the scores whose float type sets the tie resolution
        n_columns = 1 if binary else s.shape[1]
        increasing = [True] * n_columns
        if self.increasing is not True:
            if check != _CHECK_NONE:  # the errors the kernel would report, before the negated copy
                _binary_scores(s) if binary else _probability_matrix(s, False)
            s = np.array(s, dtype=np.float64)
            columns = [s] if binary else list(s.T)
            positive = [labels == first_class + c for c in range(n_columns)]
            keep = slice(None) if sample_weight is None else sample_weight > 0
            if self.increasing == "auto":
                increasing = [_spearman_increasing(col[keep], t[keep]) for col, t in zip(columns, positive)]
            else:
                increasing = [False] * n_columns
            sign = np.where(increasing, 1.0, -1.0)
            s *= sign[0] if binary else sign
            check = _CHECK_NONE
        r = _kernels(self.backend).isotonic_fit_columns(s, labels, sample_weight, first_class, check)
        if r["status"][0] != OK:
            _binary_scores(s) if binary else _probability_matrix(s, False)
            raise_for_status(r["status"])
        if not binary:
            _check_label_range(labels, s.shape[1])
            _warn_single_class(labels, s.shape[1])
        xs = np.split(r["x"], r["x_offsets"][1:-1])
        ys = np.split(r["y"], r["y_offsets"][1:-1])
        models = []
        eps = _tie_resolution(np.float64)
        for c, (x, y) in enumerate(zip(xs, ys)):
            if not increasing[c]:
                x, y = -x[::-1], y[::-1].copy()
            meet = np.flatnonzero(y[1:] != y[:-1])  # knot j ends a block, knot j + 1 starts the next
            if meet.shape[0] and ((x[meet + 1] - x[meet]) < eps).any():
                x, y = self._refit_column(original, binary, c, labels == first_class + c, sample_weight,
                                          increasing[c])
            if self.y_min is not None or self.y_max is not None:
                y = np.clip(y, 0.0 if self.y_min is None else self.y_min, 1.0 if self.y_max is None else self.y_max)
            models.append((x, y))
        return models

    def _refit_column(self, scores, binary, c, target, sample_weight, increasing):
        """Column c fitted by :func:`isotonic_regression` (scikit-learn's rule for near ties), as knots."""
        col = np.asarray(scores if binary else np.asarray(scores)[:, c], dtype=np.float64)
        w = None
        if sample_weight is not None:
            keep = sample_weight > 0
            col, target, w = col[keep], target[keep], sample_weight[keep]
        r = isotonic_regression(target.astype(np.float64), x=col, sample_weight=w, increasing=increasing,
                                backend=self.backend)
        return r.x_thresholds, r.y_thresholds

    def _set_models(self, models):
        self.x_thresholds_ = [m[0] for m in models]
        self.y_thresholds_ = [m[1] for m in models]

    def _step_models(self):
        return (_STEP_INTERP,) + _concatenated(self.x_thresholds_, self.y_thresholds_)

    def _probabilities(self, scores):
        """As :meth:`_OneVsRest._probabilities`, then ``out_of_bounds`` ("nan": NaN where a score is outside
        its column's fitted range, the whole row for (N, K) scores; "raise": a ValueError naming it)."""
        p = super()._probabilities(scores)
        if self.out_of_bounds == "clip":
            return p
        low = np.array([x[0] for x in self.x_thresholds_])
        high = np.array([x[-1] for x in self.x_thresholds_])
        if self.binary_:
            s = np.asarray(binary_column(scores), dtype=np.float64)
        elif self.from_logits:
            s = _softmax64(scores, self.backend)
        else:
            s = np.asarray(scores, dtype=np.float64)
        outside = (s < low) | (s > high) if s.ndim == 2 else (s < low[0]) | (s > high[0])
        rows = outside.any(axis=1) if outside.ndim == 2 else outside
        if rows.any():
            i = int(np.argmax(rows))
            if self.out_of_bounds == "raise":
                j = int(np.argmax(outside[i])) if outside.ndim == 2 else 0
                where = f"scores[{i}, {j}]" if outside.ndim == 2 else f"scores[{i}]"
                what = "softmax probability" if self.from_logits else "score"
                raise ValueError(f"{where} = {float(s[i, j] if s.ndim == 2 else s[i])!r} ({what}) is outside the "
                                 f"fitted range [{float(low[j])!r}, {float(high[j])!r}] of column {j} (out_of_bounds='raise')")
            p[rows] = np.nan
        return p

    def _load_fitted(self, fitted):
        direction = self.increasing

        def check(c, xs, ys):
            x_name, y_name = f"x_thresholds_[{c}]", f"y_thresholds_[{c}]"
            x = fitted_array({x_name: xs}, x_name, None)
            if x.ndim != 1 or x.shape[0] < 1 or (np.diff(x) <= 0).any():
                raise ValueError(f"learned value {x_name!r} must be a non-empty, strictly increasing 1-D array")
            y = fitted_array({y_name: ys}, y_name, None, low=0.0, high=1.0)
            if y.shape != x.shape:
                raise ValueError(f"learned values {x_name!r} and {y_name!r} have shapes {x.shape} and {y.shape}")
            up, down = not (np.diff(y) < 0).any(), not (np.diff(y) > 0).any()
            if not (up if direction is True else down if direction is False else up or down):
                kind = {True: "non-decreasing", False: "non-increasing"}.get(direction, "monotone")
                raise ValueError(f"learned value {y_name!r} must be {kind} (increasing={direction!r})")
            return x, y

        self._load_models(fitted, "x_thresholds_", "y_thresholds_", check)


class HistogramBinning(_OneVsRest):
    """Histogram binning (Zadrozny & Elkan 2001), binary or one-vs-rest.

    A score in bin m = (e_{m-1}, e_m] (0 in the first bin) is mapped to the
    weighted fraction of positives among the fitting rows in that bin; an
    empty bin maps to its midpoint. ``strategy="uniform"`` uses equal-width
    bins on [0, 1] (scores must be probabilities), ``"quantile"`` equal-mass
    bins of the fitting scores (``numpy.quantile``; scores outside the fitted
    range go to the first or last bin). Scores are probabilities in [0, 1]
    (or logits with ``from_logits=True`` for (N, K) input). Bin sums come from the native
    kernels in one pass ((N, K) scores: one row-major pass over all K classes). Multiclass: renormalised as
    :class:`IsotonicCalibration`.

    Parameters
    ----------
    n_bins : int, default 15
    strategy : {"uniform", "quantile"}, default "uniform"
    from_logits : bool, default False
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    bin_edges_ : list of arrays (n_bins + 1,), one per calibrated column
    bin_values_ : list of arrays (n_bins,)
    n_classes_ : int
    binary_ : bool
    classes_ : ndarray of shape (K,)
        The classes 0, ..., K-1 (0 and 1 for binary scores).
    n_features_in_ : int
        K, or 1 for binary scores.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> f = rng.normal(size=2000)
    >>> y = (rng.random(2000) < 1 / (1 + np.exp(-2 * f))).astype(int)
    >>> p = 1 / (1 + np.exp(-f))
    >>> hb = calibkit.HistogramBinning(n_bins=10).fit(p, y)
    >>> hb.predict_proba(np.array([0.1, 0.5, 0.9]))[:, 1].round(2)
    array([0.  , 0.39, 0.96])
    """

    _fitted_names = ("bin_edges_", "bin_values_", "n_classes_", "binary_")

    def __init__(self, n_bins: int = 15, *, strategy: Strategy = "uniform", from_logits: bool = False,
                 backend: Backend = "auto"):
        self.n_bins = n_bins
        self.strategy = strategy
        self.from_logits = from_logits
        self.backend = backend

    def _check_params(self):
        check_n_bins(self.n_bins)
        check_choice(self.strategy, "strategy", ("uniform", "quantile"))
        check_bool(self.from_logits, "from_logits")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def _check_n_classes(self, n_classes):
        check_cells(n_classes, "n_classes", self.n_bins)

    def _fit_models(self, scores, labels, sample_weight, binary):
        """Multiclass: the bin sums of all K classes in one row-major kernel pass (``histogram_fit_columns``), the
        same numbers as :meth:`_fit_one` on each column (the sums in the same order); binary: :meth:`_fit_one`."""
        if binary:
            return super()._fit_models(scores, labels, sample_weight, binary)
        p = _probability_matrix(scores, self.from_logits, self.backend)
        n_classes = p.shape[1]
        self._check_n_classes(n_classes)
        _check_label_range(labels, n_classes)
        _warn_single_class(labels, n_classes)
        n_bins = self.n_bins
        if self.strategy == "uniform":
            edges = np.tile(np.linspace(0.0, 1.0, n_bins + 1), (n_classes, 1))
        else:
            columns = np.ascontiguousarray(p.T)  # each class's column contiguous, for numpy.quantile
            edges = np.stack([_quantile_edges(columns[c], sample_weight, n_bins) for c in range(n_classes)])
            del columns
        r = _kernels(self.backend).histogram_fit_columns(p, labels, sample_weight, edges, 0)
        weight, hits = np.asarray(r["weight"]), np.asarray(r["hits"])
        midpoint = 0.5 * (edges[:, :-1] + edges[:, 1:])
        values = np.divide(hits, weight, out=midpoint, where=weight > 0)
        return [(edges[c].copy(), values[c].copy()) for c in range(n_classes)]

    def _fit_one(self, s, t, w):
        n_bins = self.n_bins
        if self.strategy == "uniform":
            edges = np.linspace(0.0, 1.0, n_bins + 1)
        else:
            edges = _quantile_edges(s, w, n_bins)
        r = _backend.kernels(self.backend).binary_stats(s, t.astype(np.int64), w, n_bins, edges, 1e-15)
        raise_for_status(r["status"], binary=True)
        weight, hits = np.asarray(r["weight"]), np.asarray(r["sum_target"])
        midpoint = 0.5 * (edges[:-1] + edges[1:])
        values = np.divide(hits, weight, out=midpoint.copy(), where=weight > 0)
        return edges, values

    def _set_models(self, models):
        self.bin_edges_ = [m[0] for m in models]
        self.bin_values_ = [m[1] for m in models]

    def _step_models(self):
        return (_STEP_LEFT,) + _concatenated([e[1:-1] for e in self.bin_edges_], self.bin_values_)

    def _load_fitted(self, fitted):
        def check(c, es, vs):
            e_name, v_name = f"bin_edges_[{c}]", f"bin_values_[{c}]"
            e = fitted_array({e_name: es}, e_name, (self.n_bins + 1,))
            if (np.diff(e) < 0).any():
                raise ValueError(f"learned value {e_name!r} must be non-decreasing")
            return e, fitted_array({v_name: vs}, v_name, (self.n_bins,), low=0.0, high=1.0)

        n_classes = fitted["n_classes_"]
        if isinstance(n_classes, int) and n_classes * self.n_bins > MAX_CELLS:
            raise ValueError(f"learned value 'n_classes_' = {n_classes} times n_bins = {self.n_bins} is above "
                             f"{MAX_CELLS} (2**26)")
        self._load_models(fitted, "bin_edges_", "bin_values_", check)


# -- top-label histogram binning (Gupta & Ramdas 2021) -----------------------------------------------------------

from ._base import check_int, chunk_rows  # noqa: E402  (kept with the one class that uses them)


class TopLabelHistogramBinning(Calibrator):
    r"""Top-label histogram binning (Gupta & Ramdas 2021, "Top-label calibration and multiclass-to-binary
    reductions", ICLR 2022).

    The prediction c(x) = argmax_k p_k(x) is kept; only its confidence
    g(x) = max_k p_k(x) is recalibrated. For each class c, the validation rows
    predicted c (n_c of them) are split into B_c = min(``n_bins``,
    floor(n_c / ``min_bin_size``)) equal-mass bins of g: the sorted
    confidences are cut into B_c groups of floor(n_c / B_c) or
    ceil(n_c / B_c) rows (``numpy.array_split``), a bin is
    (e_{j-1}, e_j] with e_j the largest confidence of group j (the last
    bin is open above, the first below; equal upper edges, from tied
    confidences, are merged, so every bin holds rows). The calibrated
    top-label confidence h(x) is the bin's accuracy, the fraction of its
    rows whose label is c. Each bin then holds at least
    m = floor(n_c / B_c) rows and, with probability 1 - alpha, every bin's
    value is within :math:`\sqrt{\log(2 B_c / \alpha) / (2 (m - 1))} + 1 / m`
    of the true accuracy of the rows predicted c in that bin (Gupta & Ramdas'
    distribution-free bound, which needs m >= 2).

    Fallback: a class predicted on fewer than ``min_bin_size`` validation rows
    (B_c = 0, including classes never predicted) is not recalibrated: its
    confidence is kept (Gupta & Ramdas' rule).

    :meth:`predict_top_label` gives (c, h). :meth:`predict_proba` gives full
    rows summing to 1 whose column c is h and whose argmax is c: the other
    K - 1 probabilities are those of the input scaled to sum to 1 - h
    (p_k (1 - h) / S, S = the sum of the other K - 1, which is 1 - g for a row
    summing to 1) when all of those stay below h; otherwise mixed
    with the uniform u = (1 - h) / (K - 1) by the weight lambda that brings
    the largest of them to (h + u) / 2, strictly below h (the order of the
    other classes is kept). When S = 0 they are uniform. When h < 1 / K no row
    summing to 1 can have c as its argmax: such a row is uniform (1 / K each,
    c tied with every class) and :meth:`predict` still returns c. No
    ``sample_weight``: the equal-mass bins and their guarantee are defined on
    row counts.

    Parameters
    ----------
    n_bins : int, default 15
        The most bins per class.
    min_bin_size : int, default 10
        The fewest rows per bin: class c gets min(n_bins, n_c // min_bin_size) bins.
    from_logits : bool, default False
        Scores are logits: softmax them first (the kernels of the chosen backend).
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    bin_edges_ : list of K arrays
        Class c's inner upper edges e_1 < ... < e_{B_c - 1} (empty when B_c <= 1).
    bin_values_ : list of K arrays
        Class c's bin accuracies (B_c values; empty: the class is not recalibrated).
    n_classes_ : int
    classes_ : ndarray of shape (K,)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(4000, 3))
    >>> y = np.argmax(z + rng.gumbel(size=(4000, 3)), axis=1)
    >>> p = np.exp(3 * z) / np.exp(3 * z).sum(axis=1, keepdims=True)  # over-confident
    >>> tl = calibkit.TopLabelHistogramBinning(n_bins=10).fit(p, y)
    >>> [len(v) for v in tl.bin_values_]
    [10, 10, 10]
    >>> classes, confidence = tl.predict_top_label(p[:3])
    >>> classes, confidence.round(3)
    (array([2, 2, 0]), array([0.467, 0.474, 0.455]))
    >>> q = tl.predict_proba(p[:3])
    >>> bool((q.argmax(axis=1) == classes).all()), q.sum(axis=1).round(12)
    (True, array([1., 1., 1.]))
    """

    _fitted_names = ("bin_edges_", "bin_values_", "n_classes_")

    def __init__(self, n_bins: int = 15, *, min_bin_size: int = 10, from_logits: bool = False,
                 backend: Backend = "auto"):
        self.n_bins = n_bins
        self.min_bin_size = min_bin_size
        self.from_logits = from_logits
        self.backend = backend

    def _check_params(self):
        check_n_bins(self.n_bins)
        check_int(self.min_bin_size, "min_bin_size", 1)
        check_bool(self.from_logits, "from_logits")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def _checked_probabilities(self, scores):
        """(N, K) float64 probabilities (the softmax of logits with from_logits), K >= 2, checked."""
        s = check_logits(scores) if self.from_logits else np.asarray(scores)
        if s.ndim != 2:
            raise ValueError(f"scores must have shape (N, K) (top-label binning needs K >= 2 class scores), got "
                             f"shape {s.shape}; for binary scores use HistogramBinning")
        return _probability_matrix(s, self.from_logits, self.backend)

    def fit(self, scores: ArrayLike, labels: ArrayLike,
            sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "TopLabelHistogramBinning":
        """Fit the per-class bins on held-out scores (N, K) and labels (N,); returns self.

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        and ``ignore_index`` / ``mask`` / ``max_rows`` (also for 2-D scores, as :meth:`TemperatureScaling.fit`):
        the map is read in place piece by piece and only each counted pixel's predicted class and confidence
        are kept (two values per pixel, O(N * prod(spatial)), not times K); the fit is then bit for bit that of
        the flattened counted rows."""
        self._check_params()
        if sample_weight is not None:
            raise ValueError("sample_weight must be None: TopLabelHistogramBinning's equal-mass bins (and their "
                             "guarantee) are defined on row counts")
        if dense_route(scores, ignore_index, mask, max_rows):
            return self._fit_dense(scores, labels, axis=axis, ignore_index=ignore_index, mask=mask,
                                   max_rows=max_rows)
        scores = binary_column(scores)
        if np.ndim(scores) != 2:
            raise ValueError(f"scores must have shape (N, K) (top-label binning needs K >= 2 class scores), got "
                             f"shape {np.shape(scores)}; for binary scores use HistogramBinning")
        scores, labels, _ = check_fit_inputs(scores, labels, None, binary=False)
        p = self._checked_probabilities(scores)
        n_classes = p.shape[1]
        _check_label_range(labels, n_classes)
        predicted = np.argmax(p, axis=1)
        confidence = p[np.arange(p.shape[0]), predicted]
        del p
        return self._fit_top_label(predicted, confidence, labels, n_classes)

    def _fit_dense(self, scores, labels, **dense):
        """:meth:`fit` of dense scores: (predicted class, confidence) of each counted pixel, piece by piece."""
        from ._base import DenseFit

        binary = binary_column(scores)
        if np.ndim(binary) == 1:
            raise ValueError(f"scores must have shape (N, K) (top-label binning needs K >= 2 class scores), got "
                             f"shape {np.shape(binary)}; for binary scores use HistogramBinning")
        data = DenseFit(scores, labels, name="scores", scale_weights=False, **dense)
        n = data.n_rows
        predicted, confidence, y = np.empty(n, np.int64), np.empty(n), np.empty(n, np.int64)
        for part in data.pieces(chunk_rows(data.n_classes)):
            data.check_labels(part)
            try:
                p = self._checked_probabilities(part.scores)
            except BadElementError as exc:
                data.raise_for_status(exc.status, part)
            rows = slice(part.offset, part.offset + part.n_rows)
            predicted[rows] = np.argmax(p, axis=1)
            confidence[rows] = p[np.arange(p.shape[0]), predicted[rows]]
            y[rows] = part.labels
        return self._fit_top_label(predicted, confidence, y, data.n_classes)

    def _fit_top_label(self, predicted, confidence, labels, n_classes):
        """The per-class equal-mass bins from each row's predicted class, confidence and label."""
        order = np.argsort(predicted, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(predicted, minlength=n_classes))])
        edges, values = [], []
        for c in range(n_classes):
            rows = order[bounds[c]:bounds[c + 1]]
            n_bins = min(self.n_bins, len(rows) // self.min_bin_size)
            if n_bins == 0:
                edges.append(np.empty(0))
                values.append(np.empty(0))
                continue
            g = np.sort(confidence[rows])
            upper = np.unique([group[-1] for group in np.array_split(g, n_bins)[:-1]])
            upper = upper[upper < g[-1]]  # every bin holds rows
            hit = labels[rows] == c
            b = np.searchsorted(upper, confidence[rows], side="left")
            count = np.bincount(b, minlength=len(upper) + 1)
            values.append(np.bincount(b, weights=hit, minlength=len(upper) + 1) / count)
            edges.append(upper)
        self.bin_edges_, self.bin_values_, self.n_classes_ = edges, values, int(n_classes)
        return self

    def _load_fitted(self, fitted):
        self.n_classes_ = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)
        es, vs = fitted["bin_edges_"], fitted["bin_values_"]
        if not isinstance(es, list) or not isinstance(vs, list) or len(es) != self.n_classes_ \
                or len(vs) != self.n_classes_:
            raise ValueError(f"learned values 'bin_edges_' and 'bin_values_' must be lists of n_classes_ = "
                             f"{self.n_classes_} arrays")
        edges, values = [], []
        for c in range(self.n_classes_):
            e_name, v_name = f"bin_edges_[{c}]", f"bin_values_[{c}]"
            e = fitted_array({e_name: es[c]}, e_name, None, low=0.0, high=1.0)
            v = fitted_array({v_name: vs[c]}, v_name, None, low=0.0, high=1.0)
            if e.ndim != 1 or v.ndim != 1 or (np.diff(e) <= 0).any():
                raise ValueError(f"learned value {e_name!r} must be a strictly increasing 1-D array")
            if len(v) > self.n_bins or not (len(v) == len(e) + 1 or len(v) == len(e) == 0):
                raise ValueError(f"learned values {e_name!r} and {v_name!r} must hold B - 1 edges and B values, "
                                 f"1 <= B <= n_bins = {self.n_bins} (or both be empty), got {len(e)} and {len(v)}")
            edges.append(e)
            values.append(v)
        self.bin_edges_, self.bin_values_ = edges, values

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        for name in ("bin_edges_", "bin_values_"):  # lists of arrays
            d["fitted"][name] = [a.tolist() for a in getattr(self, name)]
        return d

    def _top_label(self, p):
        """(predicted class, input confidence g, calibrated confidence h) of (n, K) float64 probabilities."""
        predicted = np.argmax(p, axis=1)
        g = p[np.arange(p.shape[0]), predicted]
        h = g.copy()
        order = np.argsort(predicted, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(predicted, minlength=self.n_classes_))])
        for c in range(self.n_classes_):
            if len(self.bin_values_[c]) and bounds[c + 1] > bounds[c]:
                rows = order[bounds[c]:bounds[c + 1]]
                h[rows] = self.bin_values_[c][np.searchsorted(self.bin_edges_[c], g[rows], side="left")]
        return predicted, g, h

    def _checked_for_predict(self, scores):
        self._check_fitted()
        p = self._checked_probabilities(scores)
        if p.shape[1] != self.n_classes_:
            raise ValueError(f"scores have {p.shape[1]} classes but the calibrator was fitted on "
                             f"{self.n_classes_} classes")
        return p

    def _predict_scores(self, scores):
        """The rows whose argmax :meth:`predict` is (the input's probabilities: top-label binning keeps it)."""
        return self._checked_for_predict(scores)

    def predict_top_label(self, scores: ArrayLike) -> tuple[IntArray, FloatArray]:
        """(predicted class c, calibrated top-label confidence h), two (N,) arrays: the calibrator's own output."""
        predicted, _, h = self._top_label(self._checked_for_predict(scores))
        return predicted, h

    def predict_proba(self, scores: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Rows summing to 1 whose argmax is the input's and whose top probability is the calibrated confidence
        (the other K - 1 filled as described in the class docstring), float64 (N, K).
        Dense scores ``(N, K, *spatial)`` (``axis=1``, or channel-last ``axis=-1``) give probabilities of their
        shape, piece by piece, into ``out`` when given (``out=scores`` for in place): bit for bit the 2-D result of the flattened rows."""
        if dense_route(scores, out):
            return self._dense_probabilities(scores, axis=axis, out=out)
        p = self._checked_for_predict(scores)
        if not self.from_logits and np.shares_memory(p, np.asarray(scores)):
            p = p.copy()  # _probability_matrix returns the caller's float64 array itself: never write over it
        n, k = p.shape
        step = chunk_rows(k)
        for start in range(0, n, step):
            block = p[start:start + step]
            c, g, h = self._top_label(block)
            idx = np.arange(block.shape[0])
            h = np.maximum(h, 1.0 / k)  # below 1/K no row summing to 1 has c as its argmax: uniform
            rest = 1.0 - h
            block[idx, c] = -np.inf
            second = block.max(axis=1)
            block[idx, c] = 0.0
            # The other classes' own sum (1 - g for a row that sums to 1 exactly; a float row is off by a few
            # ulps, which 1 - g near g = 1 would magnify into a row that does not sum to 1).
            others = block.sum(axis=1)
            positive = others > 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(positive, rest / others, 0.0)
            uniform = rest / (k - 1)
            largest = second * scale
            lam = np.where(positive, 1.0, 0.0)
            over = (largest >= h) & positive  # the largest other class would reach h: cap it halfway to the uniform
            lam[over] = 0.5 * (h[over] - uniform[over]) / np.maximum(largest[over] - uniform[over], 1e-300)
            lam = np.clip(lam, 0.0, 1.0)
            block *= (lam * scale)[:, None]
            block += ((1.0 - lam) * uniform)[:, None]
            block[idx, c] = h
        return p

    _probabilities = predict_proba

    def predict(self, scores: ArrayLike, *, axis: int = 1) -> IntArray:
        """The predicted class: the argmax of the scores (top-label binning keeps it). Dense scores give the ``(N, *spatial)`` map."""
        if dense_route(scores):
            return self._dense_probabilities(scores, axis=axis, predict=True)
        return self.predict_top_label(scores)[0]
