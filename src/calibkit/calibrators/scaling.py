"""Scaling calibrators on logits: temperature, vector and matrix scaling (Guo et al. 2017)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np

from .. import _backend
from .._backend import BACKENDS
from .._typing import ArrayLike, Backend, FloatArray, IntArray
from .._validation import MAX_CLASSES, OK, BadElementError, raise_for_status
from ._base import (
    MAX_LEARNED, Calibrator, DenseFit, check_finite, check_fit_inputs, check_int, check_logits,
    check_positive_number, chunk_rows, dense_predict, dense_route, dense_transform, fitted_array, fitted_int,
    softmax_rows,
)


# Temperature fits of at least _WARM_START_ELEMENTS logits and _WARM_START_ROWS rows start from the fit of every
# c-th row, c (>= 4) the stride leaving at least _WARM_START_SUB_ROWS rows (Newton from b = 1: several passes, each
# over 1/c of the rows), moved by (usually one) Taylor step on every m-th row, m (2 to _WARM_START_STRIDE) the
# stride leaving at least _WARM_START_REFINE_ROWS rows: one full pass from there instead of four from T = 1 (a 10%
# validation split of a 2 GB K = 1000 dump holds 50,000 rows).
_WARM_START_ELEMENTS = 1 << 22
_WARM_START_SUB_ROWS = 2048
_WARM_START_STRIDE = 16
_WARM_START_ROWS = 4 * _WARM_START_SUB_ROWS
# A subsample of fewer rows than this is too noisy a start for the full pass to certify its first step (the
# optimum of 3,125 rows of a K = 1000 model is ~2% off that of all rows; the step's certificate grows as the fifth
# power of the distance). The Taylor step from the coarse subsample's optimum (a few % off) lands on the finer
# subsample's optimum to far less than their distance to the full optimum (its error is O(step^5)).
_WARM_START_REFINE_ROWS = 12_288
# The relative rounding of an objective that is a sum over many rows, below which _lbfgs's line search no longer
# trusts a difference of two values (and tests the decrease on the gradients instead).
_F_ROUNDING = 1e-11
# Vector scaling with at most _FULL_CURVATURE_CLASSES classes starts from its fit on every m-th row, m the stride
# leaving at least _VECTOR_WARM_ROWS rows and _VECTOR_WARM_ROWS_PER_CLASS per class, to a gradient of
# _VECTOR_WARM_GTOL (in (a, c)); all rows' fit is then preconditioned by the Hessian there with the classes coupled
# (its cost grows as K^2 per curvature row).
_FULL_CURVATURE_CLASSES = 128
_VECTOR_WARM_ROWS = 16_384
_VECTOR_WARM_ROWS_PER_CLASS = 128
_VECTOR_WARM_GTOL = 1e-5
# Vector scaling is preconditioned by the curvature of about this many rows (every m-th row).
_PRECONDITION_ROWS = 4096


def minimize(*args, **kwargs):
    """scipy.optimize.minimize, imported on first use (SciPy's optimiser takes ~0.15 s to import)."""
    from scipy.optimize import minimize as scipy_minimize

    return scipy_minimize(*args, **kwargs)


class _Minimum:
    """What :func:`_lbfgs` found: the fields of scipy's OptimizeResult that the fits read."""

    __slots__ = ("x", "fun", "jac", "nit", "status", "success", "message")

    def __init__(self, x, fun, jac, nit, status, message):
        self.x, self.fun, self.jac, self.nit, self.status, self.message = x, fun, jac, nit, status, message
        self.success = status == 0


def _lbfgs(fun, x0, *, gtol, ftol, maxiter, memory=10):
    """Minimise the smooth convex ``fun`` (x -> (f, gradient)) by L-BFGS (Nocedal 1980: the two-loop recursion
    over the last ``memory`` steps, initial scaling s'y / y'y) with a backtracking Armijo line search from the
    unit step (the first step limited to a unit length, as L-BFGS-B's).

    Stops (status 0) when max |gradient| <= gtol or the relative decrease of f,
    (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1), is <= ftol in two full (unit) steps in a row that passed the Armijo test (L-BFGS-B's two
    criteria, the second made robust to the loss's rounding); status 1 after maxiter
    steps; status 2 when no step along a descent direction lowers f (the loss is flat at float precision).
    Near the optimum the decrease that the Armijo test asks for is below f's rounding (a sum over many rows);
    a step is then accepted by Hager and Zhang's approximate Armijo test (2005: f rose by at most its rounding
    and the gradient at the new point has slope along d at most (1 - 2e-4) times minus the starting one, the
    quadratic model's decrease): without it every step there was halved until the rounding happened to favour
    it, one full pass per halving (64 passes for 25 steps on 200k x 100 rows).
    One call of ``fun`` per trial point, each point evaluated once; in pure NumPy (no SciPy import).
    """
    x = np.array(x0, dtype=np.float64)
    f, g = fun(x)
    steps, diffs = [], []
    nit, status, message, flat = 0, 1, "the maximum number of iterations was reached", 0
    while True:
        if not np.abs(g).max() > gtol:
            status, message = 0, "the gradient is below gtol"
            break
        if nit >= maxiter:
            break
        q = g.copy()
        history = []
        for s_k, y_k in zip(reversed(steps), reversed(diffs)):
            rho = 1.0 / float(y_k @ s_k)
            a = rho * float(s_k @ q)
            q -= a * y_k
            history.append((rho, a))
        if steps:
            q *= float(steps[-1] @ diffs[-1]) / float(diffs[-1] @ diffs[-1])
        for (s_k, y_k), (rho, a) in zip(zip(steps, diffs), reversed(history)):
            q += s_k * (a - rho * float(y_k @ q))
        d = -q
        slope = float(g @ d)
        if not slope < 0.0:  # not a descent direction (rounding): restart from the gradient
            steps.clear()
            diffs.clear()
            d, slope = -g, -float(g @ g)
        t = 1.0 if steps else min(1.0, 1.0 / float(np.sqrt(-slope)))
        while True:
            x_new = x + t * d
            f_new, g_new = fun(x_new)
            measured = f_new <= f + 1e-4 * t * slope
            if measured:
                break
            # Hager and Zhang's approximate Armijo test where f's rounding hides the decrease: f rose by at most
            # its rounding, and the mean of the end slopes (the secant of a quadratic) is a descent
            if f_new <= f + _F_ROUNDING * max(abs(f), 1.0) and float(g_new @ d) <= (1.0 - 2e-4) * -slope:
                break
            t *= 0.5
            if t < 1e-10 or t * float(np.abs(d).max()) <= 1e-16 * max(float(np.abs(x).max()), 1.0):
                f_new = None
                break
        if f_new is None:
            status, message = 2, "no step lowers the loss (flat at float precision)"
            break
        s_k, y_k = x_new - x, g_new - g
        if float(s_k @ y_k) > 1e-12 * float(y_k @ y_k):
            steps.append(s_k)
            diffs.append(y_k)
            if len(steps) > memory:
                del steps[0], diffs[0]
        decrease = (f - f_new) / max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        nit += 1
        # two full steps in a row that barely lower f (not steps cut short by the search, nor one step that
        # happens to land where the loss's rounding hides the decrease, nor steps whose decrease is below the
        # rounding: those go on while the gradient shows a descent)
        flat = flat + 1 if decrease <= ftol and t == 1.0 and measured else 0
        if flat == 2:
            status, message = 0, "the relative decrease of the loss is below ftol"
            break
    return _Minimum(x, f, g, nit, status, message)


def _vector_scale_kernel(backend):
    """``vector_scale`` (scaling.hpp) of the chosen backend."""
    if _backend.resolve_backend(backend) == "cpp":
        return _backend.kernels("cpp").vector_scale
    from .._numba.scaling import vector_scale

    return vector_scale


def _row_slices(n, chunk_size):
    if chunk_size is None or chunk_size >= n:
        yield slice(0, n)
        return
    for start in range(0, n, chunk_size):
        yield slice(start, min(n, start + chunk_size))


def temperature_nll(logits: ArrayLike, labels: ArrayLike, inverse_temperature: float, *,
                    sample_weight: ArrayLike | None = None, chunk_size: int | None = None,
                    backend: Backend = "auto") -> dict[str, float]:
    r"""Weighted NLL of softmax(b z) and its first four derivatives in b, in one fused pass.

    .. math::

        L(b) = \sum_i w_i [\mathrm{LSE}(b z_i) - b z_{i, y_i}], \quad
        L'(b) = \sum_i w_i (E_i[z] - z_{i, y_i}), \quad
        L''(b) = \sum_i w_i \mathrm{Var}_i[z] \ge 0,

    with E_i and Var_i under softmax(b z_i); L is convex in b. The same pass
    gives the third to fifth derivatives ``d3``, ``d4``, ``d5`` (the third to
    fifth cumulants of z under the softmax), which the fit uses for a quartic
    Taylor step. One exp per element, no N x K temporary, float16/32/64
    logits read in place: float64 logits use a double exp (~1 ulp); float32
    / float16 logits one 8-lane float exp (relative error < 2.5e-7, the
    input's own precision; fitted temperatures move by < 1e-8 relative). The
    sums are taken over t = max(b (z - max z), -708): no product overflows for
    any logit size, and a row that is not constant always adds a nonzero
    derivative (on separable data they do not underflow to 0).

    Parameters
    ----------
    logits : array of shape (N, K)
    labels : integer array of shape (N,)
    inverse_temperature : float > 0
        b = 1 / T.
    sample_weight : array of shape (N,), optional
    chunk_size : int, optional
        Call the kernel on row blocks of this size (each block is read once);
        sums are combined in block order. Default: the whole array at once.
    backend : {"auto", "cpp", "numba"}

    Returns
    -------
    dict with ``loss``, ``d1`` ... ``d5`` (sums, not means), ``weight`` (sum of w), ``count``, ``r4d2``
    (sum_i w_i r_i^4 Var_i[z], r_i = max_k z_ik - min_k z_ik the row's range) and ``range`` (max_i r_i: a
    maximum over rows, not a sum). The fit bounds the sixth derivative with the last two, see
    :class:`TemperatureScaling`.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> z = np.array([[2.0, 0.0], [0.0, 1.0]])
    >>> s = calibkit.temperature_nll(z, np.array([0, 0]), 1.0)
    >>> round(s["loss"] / s["weight"], 6)          # mean NLL at b = 1/T = 1
    0.720095
    >>> bool(s["d1"] > 0)                          # a smaller b (a larger T) lowers the NLL here
    True
    """
    logits = check_logits(logits, "logits")
    logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False)
    return _temperature_sums(_backend.kernels(backend), logits, labels, sample_weight,
                             float(inverse_temperature), chunk_size)


def _temperature_sums(k, logits, labels, sample_weight, b, chunk_size):
    total = dict.fromkeys(("count", "weight", "loss", "d1", "d2", "d3", "d4", "d5", "r4d2"), 0.0)
    largest = 0.0
    for rows in _row_slices(logits.shape[0], chunk_size):
        w = None if sample_weight is None else sample_weight[rows]
        r = k.temperature_nll(logits[rows], labels[rows], w, b)
        code, row, col, value = r["status"]
        raise_for_status((code, row + rows.start, col, value), n_classes=logits.shape[1], scores_name="logits")
        for key in total:
            total[key] += r[key]
        largest = max(largest, r["range"])
    total["range"] = largest
    return total


def _dense_temperature_sums(k, data, b, chunk_size):
    """:func:`_temperature_sums` over the pieces of a ``DenseFit`` (bad elements named in the caller's arrays)."""
    total = dict.fromkeys(("count", "weight", "loss", "d1", "d2", "d3", "d4", "d5", "r4d2"), 0.0)
    largest = 0.0
    for p in data.pieces(chunk_size):
        r = k.temperature_nll(p.scores, p.labels, p.sample_weight, b)
        data.raise_for_status(r["status"], p)
        for key in total:
            total[key] += r[key]
        largest = max(largest, r["range"])
    total["range"] = largest
    return total


def _checked_logits_for(calibrator, logits):
    calibrator._check_fitted()
    logits = check_logits(logits, "logits")
    if logits.shape[1] != calibrator.n_classes_:
        raise ValueError(f"logits have {logits.shape[1]} classes but the calibrator was fitted on "
                         f"{calibrator.n_classes_} classes")
    return logits


def _apply_chunks(calibrator, logits, *, probabilities):
    """calibrator._scaled(z) (and its softmax) chunk by chunk: only the output is N x K."""
    logits = _checked_logits_for(calibrator, logits)
    n, n_classes = logits.shape
    out = np.empty((n, n_classes))
    step = chunk_rows(n_classes)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        z = np.asarray(logits[rows], dtype=np.float64)
        check_finite(z, "logits", start)
        _scaled_block(calibrator, z, out[rows], probabilities, lambda row, start=start: f"logits[{start + row}]")
    return out


def _scaled_block(calibrator, z, out, probabilities, where):
    """out = calibrator._scaled(z) (or its softmax) of a block z of finite float64 logits; ``where(i)`` names
    row i in the caller's terms for the overflow error. The same operations for 2-D and dense input."""
    if probabilities and calibrator._shift_invariant:
        z = z - z.max(axis=1, keepdims=True)  # softmax(z / T) = softmax((z - max z) / T): no overflow
    with np.errstate(over="ignore", invalid="ignore"):
        z = calibrator._scaled(z)
    # softmax gives -inf a probability of 0, so predict_proba only needs each row's maximum finite
    ok = np.isfinite(z).all(axis=1) if not probabilities else \
        np.isfinite(z.max(axis=1)) & ~np.isnan(z).any(axis=1)
    if not ok.all():
        raise ValueError(f"{where(int(np.argmin(ok)))}: the calibrated logits overflow float64 (the logits are too "
                         "large for this calibrator's learned values)")
    if probabilities:
        softmax_rows(z, out)
    else:
        out[...] = z


def _dense_block(calibrator, probabilities):
    """The block function of :func:`dense_transform` for a logit calibrator (``_scaled``)."""
    def block(scores, where):
        z = np.asarray(scores, dtype=np.float64)
        where.check_finite(z)
        out = np.empty(z.shape)
        _scaled_block(calibrator, z, out, probabilities, where)
        return out
    return block


class _LogitCalibrator(Calibrator):
    """transform / predict_proba / predict for calibrators that map logits to logits (``_scaled``)."""

    # True when _scaled commutes with subtracting a row constant (softmax can then shift first).
    _shift_invariant = False

    def transform(self, logits: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated logits (float64, shape (N, K)).

        Dense logits ``(N, K, *spatial)`` (``axis=1``) or channel-last ``(N, *spatial, K)`` (``axis=-1``) give calibrated
        logits of the same shape, the class axis where it was; the class axis is read with its stride, no
        flattened copy is made. ``out`` (a writeable float array of the logits' shape, any float dtype) receives
        them; ``out=logits`` itself transforms a map in place (each piece of rows is computed before it is
        written; any other overlap with the logits is an error). Each pixel is computed as the 2-D transform
        computes that row: the result is bit for bit that of the flattened rows, reshaped back.
        """
        if dense_route(logits, out):
            self._check_fitted()
            return dense_transform(logits, _dense_block(self, False), n_classes=self.n_classes_, axis=axis, out=out)
        return _apply_chunks(self, logits, probabilities=False)

    def predict_proba(self, logits: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities, the softmax of :meth:`transform` (float64, shape (N, K)).

        Dense logits and ``out``: as :meth:`transform` (probabilities of the logits' shape, the softmax taken
        over the class axis; ``out=logits`` overwrites the logits with the probabilities).
        """
        if dense_route(logits, out):
            self._check_fitted()
            return dense_transform(logits, _dense_block(self, True), n_classes=self.n_classes_, axis=axis, out=out)
        return _apply_chunks(self, logits, probabilities=True)

    def predict(self, logits: ArrayLike, *, axis: int = 1) -> IntArray:
        """Predicted class after calibration (shape (N,), or ``(N, *spatial)`` for dense logits)."""
        if dense_route(logits):
            self._check_fitted()
            return dense_predict(logits, _dense_block(self, False), n_classes=self.n_classes_, axis=axis)
        return np.argmax(self.transform(logits), axis=1)

    def fit_transform(self, logits: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
                      axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
                      max_rows: int | None = None) -> FloatArray:
        """``fit(logits, labels, sample_weight, ...).transform(logits, axis=axis)`` (the keywords: see :meth:`fit`)."""
        return self.fit(logits, labels, sample_weight, axis=axis, ignore_index=ignore_index, mask=mask,
                        max_rows=max_rows).transform(logits, axis=axis)

    _probabilities = predict_proba


def _cubic_step(g, h, d3, d4, weight, b, d5=None):
    """The root d of the Taylor model g + h d + c3 d^2 / 2 + c4 d^3 / 6 (+ c5 d^4 / 24 when ``d5`` is given)
    of f' (c_j = d_j per unit weight) next to the Newton step -g / h, or None when the sums lack d3 / d4, the
    step is large (|d| > b / 8: the Taylor model is then not trusted) or the root is not found cleanly."""
    if d3 is None or d4 is None or not h > 0:
        return None
    c3, c4 = d3 / weight, d4 / weight
    c5 = 0.0 if d5 is None else d5 / weight
    d = -g / h
    if not (math.isfinite(c3) and math.isfinite(c4) and math.isfinite(c5) and abs(d) <= b / 8):
        return None
    newton = d
    for _ in range(20):
        q = _taylor_residual(g, h, c3, c4, c5, d)
        dq = h + d * (c3 + d * (c4 / 2 + d * c5 / 6))
        if not dq > 0:
            return None
        nxt = d - q / dq
        done = abs(nxt - d) <= 1e-16 * b
        d = nxt
        if done:
            break
    else:
        return None
    if not (math.isfinite(d) and abs(d - newton) <= 0.5 * abs(newton)):
        return None
    return d


def _step_target(g, h, s, b):
    """The b the Newton iteration moves to from b, given f' / f'' per unit weight (g, h) and the sums ``s`` at b:
    the root of the Taylor model of f' (:func:`_cubic_step`) when the sums have its derivatives and it is
    trusted, else a Newton step on log b (scale-free: far fewer passes when T is far from 1), on b when that
    step is undefined (f'' + f'/b <= 0 can happen on the concave side in log b), NaN when neither is.
    Returns (target, the cubic step or None)."""
    curvature = b * b * h + b * g
    if curvature > 0:
        newton = b * math.exp(max(min(-b * g / curvature, 5.0), -5.0))
    else:
        newton = b - g / h if h > 0 else math.nan
    cubic = _cubic_step(g, h, s.get("d3"), s.get("d4"), s["weight"], b, s.get("d5"))
    return (newton if cubic is None else b + cubic), cubic


def _taylor_residual(g, h, c3, c4, c5, d):
    """The quartic Taylor model of f' at step d: g + h d + c3 d^2 / 2 + c4 d^3 / 6 + c5 d^4 / 24."""
    return g + d * (h + d * (c3 / 2 + d * (c4 / 6 + d * c5 / 24)))


def _certified_error(s, d):
    r"""A rigorous bound on |b + d - b*| after the Taylor step d from b (b* the root of f'), or inf.

    ``s`` are the sums of :func:`temperature_nll` at b (f = loss / weight, the mean NLL). Every derivative
    of f is a weighted mean of the rows' cumulants of z under softmax(b z). For a row of range r_i
    (max z - min z) with central moments mu_j: |z - mu| <= r_i and mu_2 <= r_i^2 / 4, so

    .. math::

        |\kappa_3| = |\mu_3| \le r_i \mu_2, \qquad
        |\kappa_6| = |\mu_6 - 15 \mu_4 \mu_2 - 10 \mu_3^2 + 30 \mu_2^3|
        \le (15/4 + 10/4) r_i^4 \mu_2 = 6.25\, r_i^4 \mu_2

    (mu_6 <= r^4 mu_2, mu_4 <= r^2 mu_2, mu_3^2 <= r^2 mu_2^2; the positive terms give at most
    2.875 r^4 mu_2). As d mu_2 / db = kappa_3, each row's variance grows by at most e^{r_i |s|} over a step
    s, so with r = max_i r_i (``range``) and B = sum_i w_i r_i^4 mu_2,i / sum_i w_i (``r4d2`` / ``weight``):

    .. math::

        f''(b + s) \in [h e^{-r|s|}, h e^{r|s|}], \qquad |f^{(6)}(b + s)| \le 6.25 B e^{r|s|}.

    The remainder of the quartic Taylor model q of f' (from d1..d5 at b) is then
    |f'(b + d) - q(d)| <= R = 6.25 B e^{r|d|} |d|^5 / 120, and since f' is increasing with slope at least
    h e^{-r(|d| + delta)} within delta of b + d, the root is within

    .. math::

        \delta = 2 (R + |q(d)|) e^{r|d|} / h \qquad \text{whenever } r \delta \le \ln 2.

    This holds for the exact sums; their rounding (and, for float32 / float16 logits, the float exp) moves
    the optimum by far less (see :func:`temperature_nll`). None of ``d5``, ``r4d2``, ``range``: inf.
    """
    w = s["weight"]
    if any(s.get(key) is None for key in ("d3", "d4", "d5", "r4d2", "range")) or not w > 0:
        return math.inf
    g, h = s["d1"] / w, s["d2"] / w
    c3, c4, c5 = s["d3"] / w, s["d4"] / w, s["d5"] / w
    r, bound6 = float(s["range"]), float(s["r4d2"]) / w
    a = abs(d)
    if not (h > 0 and math.isfinite(r) and r >= 0 and math.isfinite(bound6) and r * a < 50):
        return math.inf
    grow = math.exp(r * a)
    remainder = 6.25 * bound6 * grow * a ** 5 / 120
    # Slack for the rounding of the bound and for float32 sums taken at float(b) (|b - bf| <= 6e-8 b).
    delta = 2 * (remainder + abs(_taylor_residual(g, h, c3, c4, c5, d))) * grow / h * (1 + 1e-4)
    if not (math.isfinite(delta) and r * delta <= math.log(2)):
        return math.inf
    return delta


class TemperatureScaling(_LogitCalibrator):
    r"""Temperature scaling (Guo et al. 2017): softmax(z / T) with one T > 0 fitted by NLL.

    The fit minimises the weighted mean NLL over b = 1/T by a safeguarded
    Newton method: each pass over the data returns the NLL and its first five
    derivatives in b (:func:`temperature_nll`; the NLL is convex in b).
    Steps are Newton steps in log b (from f' and f'' in b); within b/8 of
    the optimum, the root of the quartic Taylor model of f' (from the second
    to fifth derivatives), whose error is O(step^5). Steps that would
    leave the bracket [b_lo, b_hi] known to contain the minimum (from the
    sign of f') are replaced by its geometric midpoint, and b never leaves
    ``bounds``. Converges in a handful of passes; ``n_passes_`` counts them.

    Each Taylor step d is certified when it can be. With r_i the range
    max z - min z of row i, r = max_i r_i, mu_2,i its variance under the
    softmax, h = f'' and B = sum_i w_i r_i^4 mu_2,i / sum_i w_i (all from the
    same pass), the cumulant bounds |kappa_3| <= r_i mu_2 and
    |kappa_6| <= 6.25 r_i^4 mu_2 give |f'''| <= r f'' and
    |f^(6)(b + s)| <= 6.25 B e^{r|s|}, hence the rigorous bound

    .. math::

        |b + d - b^*| \le \delta = 2 \left(\frac{6.25 B e^{r|d|} |d|^5}{120}
        + |q(d)|\right) \frac{e^{r|d|}}{h}

    (q the quartic model's residual at d, valid when r delta <= ln 2; the
    derivation is in ``_certified_error``). The fit stops as soon as
    delta <= tol * b, so T is then within ``tol`` (relative) of the optimum
    of the computed NLL. On large inputs (at least 2^22 logits and 8,192 rows)
    Newton starts from the optimum of every c-th row (c >= 4 the stride
    leaving at least 2,048 rows; a strided view, no copy), moved by (usually
    one) Taylor step on every m-th row (m = 2 to 16 the stride leaving at least
    12,288 rows), so the full pass starts within about a percent of the
    answer and its step is usually certified: 1 full pass (a second one only
    when the certificate fails; the subsamples' passes cost 1/c each and 1/m
    and are not counted in ``n_passes_``). Float32 / float16 logits are
    summed with a float exp (see :func:`temperature_nll`); that moves the
    computed optimum by < 1e-8 relative. Dividing logits by T > 0 never changes the argmax (the predicted
    class).

    Parameters
    ----------
    bounds : (float, float), default (1e-3, 1e3)
        Allowed range of T. If the optimum is at a bound, T is set to the
        bound and a RuntimeWarning says which: at T_min the NLL keeps falling
        as T -> 0 (e.g. perfectly separable data); at T_max it keeps falling
        towards the uniform prediction (the logits carry no information about
        the labels). Both backends give the same T and warning, however large
        the logit gaps (the derivatives in b do not underflow, see
        :func:`temperature_nll`). Sample weights are divided by their largest
        (the fit does not depend on their scale).
    tol : float, default 1e-7
        Stop when a Taylor step is certified to within ``tol * b`` of the
        optimum (above), when a Newton step changes b by at most ``tol * b``,
        or a cubic step by at most ``0.1 * sqrt(tol) * b`` (the result is
        then within about ``tol**2``: Newton's error is quadratic in the
        step, the cubic model's quartic). Sums without ``d3`` / ``d4``
        (:meth:`fit_from_sums`) take Newton steps only; sums without
        ``d5``, ``r4d2`` and ``range`` are not certified.
    max_passes : int, default 50
    chunk_size : int, optional
        Rows per kernel call (see :func:`temperature_nll`); each chunk is read
        once per pass, so a memory-mapped dump is streamed from disk.
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    temperature_ : float
    n_passes_ : int
        Full passes over the data used by the fit.
    n_classes_ : int
    classes_ : ndarray of shape (K,)
        The classes 0, ..., K-1, as scikit-learn's classifiers (column k of :meth:`predict_proba` is class k).
    n_features_in_ : int
        K, the number of score columns.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 2000)
    >>> logits = 3.0 * (rng.normal(size=(2000, 3)) + 2.0 * np.eye(3)[y])  # over-confident
    >>> ts = calibkit.TemperatureScaling().fit(logits, y)
    >>> round(ts.temperature_, 2)
    1.57
    >>> ts.predict_proba(logits[:2]).round(3)
    array([[0.   , 0.002, 0.998],
           [0.564, 0.435, 0.001]])
    >>> ts.transform(logits[:1]).round(3)  # calibrated logits, logits / T
    array([[0.16 , 1.718, 8.054]])
    """

    _fitted_names = ("temperature_", "n_passes_", "n_classes_")

    def __init__(self, *, bounds: tuple[float, float] = (1e-3, 1e3), tol: float = 1e-7, max_passes: int = 50,
                 chunk_size: int | None = None, backend: Backend = "auto"):
        self.bounds = bounds
        self.tol = tol
        self.max_passes = max_passes
        self.chunk_size = chunk_size
        self.backend = backend

    def _check_params(self):
        try:
            t_min, t_max = (float(v) for v in self.bounds)
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be two numbers (T_min, T_max), got {self.bounds!r}") from None
        if not (0 < t_min < t_max < math.inf):
            raise ValueError(f"bounds must satisfy 0 < T_min < T_max < inf, got {self.bounds!r}")
        check_positive_number(self.tol, "tol")
        check_int(self.max_passes, "max_passes", 1)
        if self.chunk_size is not None:
            check_int(self.chunk_size, "chunk_size", 1)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        return t_min, t_max

    def fit(self, logits: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "TemperatureScaling":
        """Fit T on held-out logits (N, K) and labels (N,); returns self.

        The dense fit equals the fit of the flattened counted rows (``flat[::s]`` with ``max_rows``) to
        rounding: the NLL sums are added piece by piece (pieces of at most 2^20 pixels, or ``chunk_size``),
        so the sums agree with the flattened ones to about 1e-13 relative and T to well within ``tol``.

        Parameters
        ----------
        logits : array of shape (N, K), ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``)
            Dense logits (a segmentation map) are read in place: the class axis with its stride, piece by
            piece, no flattened or transposed copy (memory maps are streamed). Each pixel is a row.
        labels : integer array of shape (N,) or ``(N, *spatial)``
        sample_weight : array of the labels' shape, optional
        axis : int, default 1
            The class axis of dense logits: 1 (class second, PyTorch's layout) or -1 (channel-last).
        ignore_index : int, optional
            Pixels with this label (e.g. 255) are not counted.
        mask : bool array of the labels' shape, optional
            Only pixels where it is True are counted (combined with ``ignore_index``).
        max_rows : int, optional
            Fit on at most this many of the counted pixels: every s-th of them in order, s =
            ceil(n_counted / max_rows) (the rows 0, s, 2s, ... of the flattened counted pixels: deterministic,
            spread evenly over the images). Only those rows are read (values of the others are not checked).
            A subsample of a map with ignored pixels gathers only its own rows, piece by piece.
        """
        self._check_params()
        if dense_route(logits, ignore_index, mask, max_rows):
            return self._fit_dense(DenseFit(logits, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                                            sample_weight=sample_weight, max_rows=max_rows))
        logits = check_logits(logits, "logits")
        # The fit does not depend on the scale of the weights: divided by the largest (no overflow or subnormals).
        logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False,
                                                         scale_weights=True)
        k = _backend.kernels(self.backend)
        n, n_classes = logits.shape
        start = None
        if n * n_classes >= _WARM_START_ELEMENTS and n >= _WARM_START_ROWS:
            def sums_of(stride):  # the sums of every stride-th row (a strided view, no copy)
                sub = slice(None, None, stride)
                w = None if sample_weight is None else sample_weight[sub]
                if w is not None and not w.sum() > 0:
                    return None
                return lambda b: _temperature_sums(k, logits[sub], labels[sub], w, b, self.chunk_size)

            start = self._warm_start(sums_of, n)
        return self.fit_from_sums(
            lambda b: _temperature_sums(k, logits, labels, sample_weight, b, self.chunk_size), n_classes,
            start=start)

    def _fit_dense(self, data):
        """The fit of :meth:`fit` on dense rows (a ``DenseFit``): the same warm start and Newton iteration, the
        kernel's sums added over the pieces."""
        k = _backend.kernels(self.backend)
        n, n_classes = data.n_rows, data.n_classes
        start = None
        if n * n_classes >= _WARM_START_ELEMENTS and n >= _WARM_START_ROWS:
            def sums_of(stride):
                sub = data.subsample(stride)
                if data.dense.sample_weight is not None and not sum(float(p.sample_weight.sum())
                                                                    for p in sub.pieces()) > 0:
                    return None
                return lambda b: _dense_temperature_sums(k, sub, b, self.chunk_size)

            start = self._warm_start(sums_of, n)
        return self.fit_from_sums(lambda b: _dense_temperature_sums(k, data, b, self.chunk_size), n_classes,
                                  start=start)

    def _warm_start(self, sums_of, n):
        """The first b of the full fit of ``n`` rows: the optimum of every c-th row (c = n //
        ``_WARM_START_SUB_ROWS`` >= 4), then from there that of every m-th row (m = n // ``_WARM_START_REFINE_ROWS``
        within 2 to ``_WARM_START_STRIDE``; m < c), both by Newton stopped at the first Taylor step (on the finer
        subsample usually its first step). ``sums_of(stride)`` gives the sums
        function of every stride-th row, or None when its weights are all 0 (no start from a coarse subsample
        without weight; the coarse optimum itself from a fine one). None when no start is found (then the fit
        starts at b = 1)."""
        sums = sums_of(n // _WARM_START_SUB_ROWS)
        if sums is None:
            return None
        try:
            with warnings.catch_warnings():  # the subsamples only give the start: their warnings are not the fit's
                warnings.simplefilter("ignore")
                # Both subsamples' iterations stop at their first Taylor step (|d| <= b / 8, _cubic_step): its
                # target is the subsample's optimum to O(d^5), far closer than that is to the full optimum.
                start, _, _, _ = self._newton(sums, taylor_stop=True)
                # never every row (m >= 2: that would be a full pass), at most every 16th (the start is then
                # within about a percent of the full optimum on any large input)
                refine = sums_of(min(_WARM_START_STRIDE, max(2, n // _WARM_START_REFINE_ROWS)))
                if refine is not None:
                    # from the coarse optimum: usually that one step; Newton steps first when the coarse optimum is
                    # too far for the Taylor model (as 2,048 rows of weak binary scores can give)
                    start, _, _, _ = self._newton(refine, start, taylor_stop=True)
        except BadElementError:  # the full pass names the bad element by its own row
            return None
        return start

    def fit_from_sums(self, sums: Callable[[float], Mapping[str, float]], n_classes: int, *,
                      start: float | None = None) -> "TemperatureScaling":
        """Fit T given ``sums(b)``, the sums of :func:`temperature_nll` at inverse temperature b.

        For data that is not one array: ``sums`` may add the kernel's results
        over shards, files or the workers of a cluster (``calibkit.dask.fit_temperature``).
        Each Newton step calls it once: one pass over the data. ``d3``,
        ``d4``, ``d5`` are optional (without d3 / d4 every step is a Newton
        step, often one pass more); combining shards, add every key except
        ``range``, whose maximum is taken. Without ``d5``, ``r4d2`` and
        ``range`` no step is certified (usually one pass more). ``start`` is
        the first b = 1/T tried (default 1, clipped to ``bounds``).
        """
        t_min, t_max = self._check_params()
        b, passes, converged, degenerate = self._newton(sums, start)
        if degenerate:
            warnings.warn("every logit row is constant: the NLL does not depend on T; T = 1", RuntimeWarning,
                          stacklevel=2)
            b = 1.0
        elif not converged:
            warnings.warn(f"temperature fit did not converge in {passes} passes", RuntimeWarning, stacklevel=2)
        if not degenerate and b >= 1.0 / t_min * (1 - 1e-9):
            warnings.warn(f"the NLL optimum is at the lower bound T = {1.0 / b:g} (bounds={self.bounds}): "
                          "the NLL keeps falling as T -> 0, the data may be separable (every row's "
                          "largest logit is its label's)", RuntimeWarning, stacklevel=2)
        elif not degenerate and b <= 1.0 / t_max * (1 + 1e-9):
            warnings.warn(f"the NLL optimum is at the upper bound T = {1.0 / b:g} (bounds={self.bounds}): "
                          "the NLL keeps falling towards the uniform prediction, so the logits carry no "
                          "information about the labels (or less than a constant guess)", RuntimeWarning,
                          stacklevel=2)
        self.temperature_ = 1.0 / b
        self.n_passes_ = passes
        self.n_classes_ = int(n_classes)
        return self

    def _newton(self, sums, start=None, taylor_stop=False):
        """The safeguarded Newton iteration: (b, passes, converged, degenerate). ``taylor_stop``: end at the first
        Taylor step, certified or not (the warm start's subsamples)."""
        t_min, t_max = self._check_params()
        b_min, b_max = 1.0 / t_max, 1.0 / t_min
        lo, hi = b_min, b_max  # bracket of b = 1/T
        b = min(max(1.0 if start is None else float(start), lo), hi)
        passes, converged, degenerate = 0, False, False
        while passes < self.max_passes:
            s = sums(b)
            passes += 1
            g, h = s["d1"] / s["weight"], s["d2"] / s["weight"]
            if h <= 0.0 and g == 0.0:  # every row constant: any T gives the same NLL
                degenerate = converged = True
                break
            if g > 0:
                hi = b
            elif g < 0:
                lo = b
            else:
                converged = True
                break
            # Close to the optimum, the root of the cubic Taylor model of f' (from the third and fourth
            # derivatives, when the sums have them): its error is O(step^4) instead of Newton's O(step^2).
            newton, cubic = _step_target(g, h, s, b)
            if cubic is not None:
                # A certified step ends the fit at once (the usual case after a warm start: one full pass).
                if lo < newton < hi and (taylor_stop or _certified_error(s, cubic) <= self.tol * newton):
                    b = newton
                    converged = True
                    break
            step = abs(newton - b)
            # Newton's error after a step of tol b is ~ (tol b)^2; the cubic model's after a step of
            # sqrt(tol) b is ~ (sqrt(tol) b)^4: the same bound, usually one full pass sooner.
            if step <= self.tol * b or (cubic is not None and step <= math.sqrt(self.tol) * b * 1e-1):
                b = min(max(newton, lo), hi)
                converged = True
                break
            if g < 0 and b < b_max and step > 1e-3 * b and g * g < 2e-16 * h * max(1.0, s["loss"] / s["weight"]):
                # Far from converged (near the optimum g^2 / h is tiny too), yet the NLL falls by less
                # than rounding: separable data,
                # whose NLL decays exponentially in b (Newton would crawl). Try the bound.
                b = b_max
            elif lo < newton < hi:
                b = newton
            elif hi - lo <= self.tol * lo:
                converged = True
                break
            elif newton >= hi == b_max and b != b_max:
                b = b_max  # the step points past the upper bound: look at the bound itself
            elif newton <= lo == b_min and b != b_min:
                b = b_min
            else:
                b = math.sqrt(lo * hi)
        return b, passes, converged, degenerate

    def _load_fitted(self, fitted):
        self.temperature_ = float(fitted_array(fitted, "temperature_", (), positive=True, low=1.0 / MAX_LEARNED))
        self.n_passes_ = fitted_int(fitted, "n_passes_", 0)
        self.n_classes_ = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)

    _shift_invariant = True

    def _scaled(self, z):
        return z / self.temperature_


class _BlockCurvature:
    """Vector scaling's variables v = L^T x for the 2 x 2 Cholesky factors L of each class's (a_k, c_k) block
    of the Hessian (:meth:`VectorScaling._preconditioner`): x = L^-T v, the gradient in v is L^-1 grad."""

    def __init__(self, l11, l21, l22):
        self.l11, self.l21, self.l22 = l11, l21, l22
        # grad = L grad_v, so |grad|_inf <= |L|_inf |grad_v|_inf: stopping on tol / |L|_inf in v stops on tol in x
        self.norm = float(np.max(np.maximum(l11, np.abs(l21) + l22)))

    def coordinates(self, x):
        K = len(self.l11)
        return np.concatenate([self.l11 * x[:K] + self.l21 * x[K:], self.l22 * x[K:]])

    def params(self, v):
        K = len(self.l11)
        c = v[K:] / self.l22
        return np.concatenate([(v[:K] - self.l21 * c) / self.l11, c])

    def gradient(self, gv):
        """The gradient in x of the gradient gv in v (L gv)."""
        K = len(self.l11)
        return np.concatenate([gv[:K] * self.l11, gv[K:] * self.l22 + self.l21 * gv[:K]])

    def wrap(self, f):
        """f (x -> (loss, gradient)) in v."""
        def at(v):
            loss, grad = f(self.params(v))
            ga = grad[:len(self.l11)] / self.l11
            return loss, np.concatenate([ga, (grad[len(self.l11):] - self.l21 * ga) / self.l22])
        return at


class _FullCurvature(_BlockCurvature):
    """v = L^T x for the Cholesky factor L of a whole (2K, 2K) Hessian h, with a ridge of 1e-4 times its mean
    diagonal (vector scaling's loss does not change when every c_k moves by the same amount).

    The factor, its inverse and the products are element-wise NumPy (no BLAS / LAPACK call: OpenBLAS's threads
    on these small matrices stalled for up to 1.7 s of wall time on a loaded 2-core machine)."""

    def __init__(self, h):
        n = len(h)
        a = h + 1e-4 * max(float(np.mean(np.diag(h))), 1e-12) * np.eye(n)
        low = np.zeros((n, n))
        for j in range(n):  # outer-product Cholesky: column j, then the trailing block's update
            d = math.sqrt(max(a[j, j], 1e-300))
            low[j:, j] = a[j:, j] / d
            a[j + 1:, j + 1:] -= low[j + 1:, j, None] * low[None, j + 1:, j]
        inverse = np.zeros((n, n))
        for i in range(n):  # forward substitution of L X = I, row by row
            row = -(low[i, :i, None] * inverse[:i, :i + 1]).sum(axis=0)
            row[i] += 1.0
            inverse[i, :i + 1] = row / low[i, i]
        self.low, self.inverse = low, inverse
        self.norm = float(np.abs(low).sum(axis=1).max())

    def coordinates(self, x):
        return (self.low * x[:, None]).sum(axis=0)  # L^T x

    def params(self, v):
        return (self.inverse * v[:, None]).sum(axis=0)  # L^-T v

    def gradient(self, gv):
        return (self.low * gv).sum(axis=1)  # L gv

    def wrap(self, f):
        def at(v):
            loss, grad = f(self.params(v))
            return loss, (self.inverse * grad).sum(axis=1)  # L^-1 grad
        return at


class VectorScaling(_LogitCalibrator):
    r"""Vector scaling (Guo et al. 2017): softmax(a * z + c) with a, c in R^K.

    Fitted by minimising the weighted mean NLL plus ``reg / K * sum_k c_k^2``
    (the intercept part of ODIR, Kull et al. 2019) with L-BFGS (in NumPy, in
    variables preconditioned by each class's curvature on a subsample); the
    loss and its gradient come from one fused native pass
    (no N x K temporary). With at most 128 classes and at least
    2 * max(16384, 128 K) rows it starts from the fit on every m-th row
    (to a gradient of 1e-5) and preconditions by the Hessian there with the
    classes coupled (about 10 full passes instead of 25 on 200k x 100
    logits). Unlike temperature scaling it can change the argmax.

    Parameters
    ----------
    reg : float, default 0.0
    max_iter : int, default 500
        The most L-BFGS iterations.
    tol : float, default 1e-8
        The fit stops when the largest component of the gradient in (a, c) is at most ``tol`` (or when two
        full steps in a row lower the objective by at most 1e-14 relative).
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    scale_, bias_ : arrays of shape (K,)
    n_iter_, n_passes_ : int
        The L-BFGS iterations and the passes over all rows (the warm start's passes over every m-th row are
        not counted).
    n_classes_ : int
    classes_ : ndarray of shape (K,)
        The classes 0, ..., K-1.
    n_features_in_ : int
        K, the number of score columns.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 2000)
    >>> logits = 3.0 * (rng.normal(size=(2000, 3)) + 2.0 * np.eye(3)[y])  # over-confident
    >>> vs = calibkit.VectorScaling().fit(logits, y)
    >>> vs.scale_.round(2), vs.bias_.round(2)
    (array([0.65, 0.61, 0.65]), array([1.12, 1.35, 1.22]))
    >>> vs.predict_proba(logits[:4]).shape
    (4, 3)
    """

    _fitted_names = ("scale_", "bias_", "n_iter_", "n_passes_", "n_classes_")

    def __init__(self, *, reg: float = 0.0, max_iter: int = 500, tol: float = 1e-8, backend: Backend = "auto"):
        self.reg = reg
        self.max_iter = max_iter
        self.tol = tol
        self.backend = backend

    def _check_params(self):
        check_positive_number(self.reg, "reg", allow_zero=True)
        check_int(self.max_iter, "max_iter", 1)
        check_positive_number(self.tol, "tol")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    def loss_and_grad(self, params: ArrayLike, logits: ArrayLike, labels: ArrayLike,
                      sample_weight: ArrayLike | None = None) -> tuple[float, FloatArray]:
        """Objective and gradient at params = [a, c] (what the fit minimises)."""
        logits = check_logits(logits, "logits")
        logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False)
        return self._objective(np.asarray(params, np.float64), _backend.kernels(self.backend), logits, labels,
                               sample_weight)

    def _objective(self, params, k, logits, labels, sample_weight):
        n_classes = logits.shape[1]
        scale = np.ascontiguousarray(params[:n_classes])
        bias = np.ascontiguousarray(params[n_classes:])
        r = k.vector_scaling_nll(logits, labels, sample_weight, scale, bias)
        raise_for_status(r["status"], n_classes=n_classes, scores_name="logits")
        w = r["weight"]
        loss = r["loss"] / w + self.reg / n_classes * float(bias @ bias)
        grad = np.concatenate([r["grad_scale"] / w, r["grad_bias"] / w + 2.0 * self.reg / n_classes * bias])
        return loss, grad

    def fit(self, logits: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "VectorScaling":
        """Fit a and c on held-out logits (N, K) and labels (N,); returns self.

        Dense logits ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        ``ignore_index``, ``mask`` and ``max_rows``: as :meth:`TemperatureScaling.fit` (read in place, piece by
        piece; ``max_rows`` keeps every s-th counted pixel). The loss and gradient are the kernel's sums added over the pieces, so the fit
        equals that of the flattened rows to rounding (the parameters agree to about the fit's ``tol``).
        """
        self._check_params()
        k = _backend.kernels(self.backend)
        if dense_route(logits, ignore_index, mask, max_rows):
            data = DenseFit(logits, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                            sample_weight=sample_weight, max_rows=max_rows)
            n, n_classes = data.n_rows, data.n_classes

            def evaluate(x):
                return self._dense_objective(x, k, data)

            def sample(stride):
                return data.gather(stride)
        else:
            logits = check_logits(logits, "logits")
            logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False,
                                                             scale_weights=True)  # scale-free fit
            n, n_classes = logits.shape

            def evaluate(x):
                return self._objective(x, k, logits, labels, sample_weight)

            def sample(stride):  # every stride-th row: the logits in place, labels and weights copied
                sub = slice(None, None, stride)
                return (logits[sub], np.ascontiguousarray(labels[sub]),
                        None if sample_weight is None else np.ascontiguousarray(sample_weight[sub]))
        if self.reg == 0 and n < 2 * n_classes:
            raise ValueError(f"vector scaling has {2 * n_classes} parameters but only {n} rows were given; "
                             "pass more rows or reg > 0")
        x0 = np.concatenate([np.ones(n_classes), np.zeros(n_classes)])
        passes = [0]
        first = [None]

        def objective(x):
            if first[0] is not None and np.array_equal(x, first[0][0]):
                return first[0][1]
            passes[0] += 1
            return evaluate(x)

        # The first pass validates every row (bad input raises here, before the subsample is looked at).
        first[0] = (x0, objective(x0))
        curvature = sample(max(1, n // _PRECONDITION_ROWS))
        pre = _BlockCurvature(*self._preconditioner(curvature[0], curvature[2], x0))
        start = x0
        stride = n // max(_VECTOR_WARM_ROWS, _VECTOR_WARM_ROWS_PER_CLASS * n_classes)
        if stride >= 2 and n_classes <= _FULL_CURVATURE_CLASSES:
            # Warm start: the fit on every stride-th row to a looser gradient, then the full curvature there
            # (all classes coupled: the Hessian of the curvature sample) as the preconditioner of all rows' fit.
            zs, ys, ws = sample(stride)
            warm = _lbfgs(pre.wrap(lambda x: self._objective(x, k, zs, ys, ws)), pre.coordinates(start),
                          gtol=_VECTOR_WARM_GTOL / pre.norm, ftol=1e-14, maxiter=self.max_iter)
            start = pre.params(warm.x)
            h = self._hessian(curvature[0], curvature[2], start)
            if np.isfinite(h).all():  # else (z^2 overflows: |z| > 1e154) the block preconditioner goes on
                pre = _FullCurvature(h)
        res = _lbfgs(pre.wrap(objective), pre.coordinates(start), gtol=self.tol / pre.norm, ftol=1e-14,
                     maxiter=self.max_iter)
        x = pre.params(res.x)
        res.jac = pre.gradient(res.jac)
        _warn_unless_converged(res, "vector scaling")  # on the gradient in (a, c) = L grad_v
        self.scale_ = x[:n_classes].copy()
        self.bias_ = x[n_classes:].copy()
        self.n_iter_ = int(res.nit)
        self.n_passes_ = passes[0]
        self.n_classes_ = int(n_classes)
        return self

    def _dense_objective(self, params, k, data):
        """:meth:`_objective` with the kernel's sums added over the pieces of a ``DenseFit``."""
        n_classes = data.n_classes
        scale = np.ascontiguousarray(params[:n_classes])
        bias = np.ascontiguousarray(params[n_classes:])
        loss, w, g_scale, g_bias = 0.0, 0.0, np.zeros(n_classes), np.zeros(n_classes)
        for p in data.pieces():
            r = k.vector_scaling_nll(p.scores, p.labels, p.sample_weight, scale, bias)
            data.raise_for_status(r["status"], p)
            loss += r["loss"]
            w += r["weight"]
            g_scale += r["grad_scale"]
            g_bias += r["grad_bias"]
        loss = loss / w + self.reg / n_classes * float(bias @ bias)
        return loss, np.concatenate([g_scale / w, g_bias / w + 2.0 * self.reg / n_classes * bias])

    def _preconditioner(self, logits, sample_weight, x):
        """Cholesky factors (l11, l21, l22), one per class, of the 2 x 2 blocks [[H_aa, H_ac], [H_ac, H_cc]]
        of the objective's Hessian at x, estimated on every m-th row (about _PRECONDITION_ROWS rows).

        The fit runs L-BFGS in v = L^T x: a, c and the classes then have comparable curvature, which
        takes far fewer passes than in (a, c) itself (the scale of z makes a and c differ by orders of
        magnitude). A small ridge keeps every factor positive (classes the subsample never predicts).
        ``logits`` and ``sample_weight`` are that subsample (every m-th row)."""
        n_classes = logits.shape[1]
        z = np.asarray(logits, dtype=np.float64)
        w = np.ones(len(z)) if sample_weight is None else sample_weight
        total = float(w.sum())
        p = np.empty_like(z)
        softmax_rows(z * x[:n_classes] + x[n_classes:], p)
        q = p * (1.0 - p)
        q *= (w / total if total > 0 else np.full(len(z), 1.0 / len(z)))[:, None]
        h_cc = q.sum(axis=0) + 2.0 * self.reg / n_classes
        q *= z
        h_ac = q.sum(axis=0)
        q *= z
        h_aa = q.sum(axis=0)
        ok = np.isfinite(h_aa) & np.isfinite(h_ac) & np.isfinite(h_cc)
        h_aa, h_ac, h_cc = (np.where(ok, h, 0.0) for h in (h_aa, h_ac, h_cc))
        ridge = 1e-4 * max(float(np.mean(h_aa + h_cc)), 1e-12)
        l11 = np.sqrt(h_aa + ridge)
        l21 = h_ac / l11
        l22 = np.sqrt(np.maximum(h_cc + ridge - l21 * l21, ridge))
        return l11, l21, l22

    def _hessian(self, logits, sample_weight, x):
        """The objective's Hessian in (a, c) at x, all classes coupled, estimated on the rows ``logits``
        (every m-th row, weights ``sample_weight`` or None): per row, with s = a * z + c and p = softmax(s),
        J^T (diag(p) - p p^T) J for J = [diag(z), I], plus the regulariser's 2 reg / K on the c block."""
        K = logits.shape[1]
        z = np.asarray(logits, dtype=np.float64)
        w = np.ones(len(z)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        total = float(w.sum())
        w = w / total if total > 0 else np.full(len(z), 1.0 / len(z))
        p = np.empty_like(z)
        softmax_rows(z * x[:K] + x[K:], p)
        pz = p * z
        m = np.concatenate([pz, p], axis=1) * np.sqrt(w)[:, None]
        h = -np.einsum("ij,ik->jk", m, m)  # einsum's own loop, not a threaded BLAS call (see _FullCurvature)
        i = np.arange(K)
        h[i, i] += w @ (pz * z)
        h[K + i, K + i] += w @ p + 2.0 * self.reg / K
        cross = w @ pz
        h[i, K + i] += cross
        h[K + i, i] += cross
        return h

    def _load_fitted(self, fitted):
        self.n_classes_ = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)
        self.scale_ = fitted_array(fitted, "scale_", (self.n_classes_,))
        self.bias_ = fitted_array(fitted, "bias_", (self.n_classes_,))
        self.n_iter_ = fitted_int(fitted, "n_iter_", 0)
        self.n_passes_ = fitted_int(fitted, "n_passes_", 0)

    def _scaled(self, z):
        return z * self.scale_ + self.bias_

    def _scaled_into(self, z, out):
        """Whether every value is finite of out = :meth:`_scaled` of the (n, K) logits z (a float16/32/64
        array, read in place) written into the C-ordered float64 (n, K) array out: the same numbers (z widened
        to float64 exactly, then scaled and shifted), in one kernel pass (``vector_scale``, threaded over
        rows), no temporary."""
        scale = np.ascontiguousarray(self.scale_, dtype=np.float64)
        bias = np.ascontiguousarray(self.bias_, dtype=np.float64)
        return _vector_scale_kernel(self.backend)(z, scale, bias, out)[0] == OK


class MatrixScaling(_LogitCalibrator):
    r"""Matrix scaling (Guo et al. 2017) with ODIR regularisation (Kull et al. 2019).

    softmax(W z + c) with W in R^{K x K}, c in R^K, fitted by L-BFGS-B on

    .. math::

        \frac{1}{\sum w_i} \sum_i w_i \,\mathrm{NLL}_i
        + \frac{\lambda}{K(K-1)} \sum_{j \ne k} W_{jk}^2 + \frac{\mu}{K} \sum_k c_k^2,

    λ = ``reg`` (off-diagonal), μ = ``reg_intercept`` (default: ``reg``).
    Loss and gradient are computed with BLAS on row chunks of about 32 MB, so
    memory does not grow with N; K² parameters make it meant for K up to a few
    hundred.

    Attributes
    ----------
    weights_ : array (K, K)
    bias_ : array (K,)
    n_iter_, n_passes_, n_classes_ : int
    classes_ : ndarray of shape (K,)
        The classes 0, ..., K-1.
    n_features_in_ : int
        K, the number of score columns.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 2000)
    >>> logits = 3.0 * (rng.normal(size=(2000, 3)) + 2.0 * np.eye(3)[y])  # over-confident
    >>> ms = calibkit.MatrixScaling(reg=1e-2).fit(logits / 3.0, y)
    >>> ms.weights_.round(1) + 0.0
    array([[ 2. , -0.1,  0. ],
           [ 0. ,  1.9,  0. ],
           [ 0. ,  0.1,  1.9]])
    """

    _fitted_names = ("weights_", "bias_", "n_iter_", "n_passes_", "n_classes_")

    def __init__(self, *, reg: float = 0.0, reg_intercept: float | None = None, max_iter: int = 500,
                 tol: float = 1e-8):
        self.reg = reg
        self.reg_intercept = reg_intercept
        self.max_iter = max_iter
        self.tol = tol

    def _check_params(self):
        check_positive_number(self.reg, "reg", allow_zero=True)
        if self.reg_intercept is not None:
            check_positive_number(self.reg_intercept, "reg_intercept", allow_zero=True)
        check_int(self.max_iter, "max_iter", 1)
        check_positive_number(self.tol, "tol")

    def loss_and_grad(self, params: ArrayLike, logits: ArrayLike, labels: ArrayLike,
                      sample_weight: ArrayLike | None = None) -> tuple[float, FloatArray]:
        """Objective and gradient at params = [W.ravel(), c] (what the fit minimises)."""
        logits = check_logits(logits, "logits")
        logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False)
        _check_label_range(labels, logits.shape[1])
        return self._objective(np.asarray(params, np.float64), logits, labels, sample_weight)

    def _objective(self, params, logits, labels, sample_weight):
        n, n_classes = logits.shape

        def blocks():
            step = chunk_rows(n_classes)
            for start in range(0, n, step):
                rows = slice(start, min(n, start + step))
                z = np.asarray(logits[rows], dtype=np.float64)
                check_finite(z, "logits", start)
                yield z, labels[rows], (None if sample_weight is None else sample_weight[rows])

        return self._objective_blocks(params, n_classes, blocks())

    def _dense_objective(self, params, data):
        """:meth:`_objective` over the pieces of a ``DenseFit`` (each piece at most ``chunk_rows(K)`` rows)."""
        def blocks():
            for p in data.pieces(chunk_rows(data.n_classes)):
                z = np.asarray(p.scores, dtype=np.float64)
                data.check_finite(p, z)
                data.check_labels(p)
                yield z, p.labels, p.sample_weight

        return self._objective_blocks(params, data.n_classes, blocks())

    def _objective_blocks(self, params, n_classes, blocks):
        weights = params[: n_classes * n_classes].reshape(n_classes, n_classes)
        bias = params[n_classes * n_classes:]
        loss, grad_w, grad_c, total_w = 0.0, np.zeros((n_classes, n_classes)), np.zeros(n_classes), 0.0
        for z, y, w in blocks:
            w = np.ones(len(y)) if w is None else w
            part, p = softmax_nll_block(z @ weights.T + bias, y, w)
            loss += part
            grad_w += p.T @ z
            grad_c += p.sum(axis=0)
            total_w += float(w.sum())
        lam = self.reg
        mu = self.reg if self.reg_intercept is None else self.reg_intercept
        off = weights - np.diag(np.diag(weights))
        denom = n_classes * (n_classes - 1)
        loss = loss / total_w + lam / denom * float((off * off).sum()) + mu / n_classes * float(bias @ bias)
        grad_w = grad_w / total_w + 2.0 * lam / denom * off
        grad_c = grad_c / total_w + 2.0 * mu / n_classes * bias
        return loss, np.concatenate([grad_w.ravel(), grad_c])

    def fit(self, logits: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "MatrixScaling":
        """Fit W and c on held-out logits (N, K) and labels (N,); returns self.

        Dense logits ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        ``ignore_index``, ``mask`` and ``max_rows``: as :meth:`TemperatureScaling.fit` (read in place, piece by
        piece; ``max_rows`` keeps every s-th counted pixel). The loss and gradient are summed over pieces of ``chunk_rows(K)`` rows (the
        2-D fit's chunks, cut at image boundaries), so the fit equals that of the flattened rows to rounding.
        """
        self._check_params()
        if dense_route(logits, ignore_index, mask, max_rows):
            data = DenseFit(logits, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                            sample_weight=sample_weight, max_rows=max_rows)
            n, n_classes = data.n_rows, data.n_classes
            fun, args = self._dense_objective, (data,)
        else:
            logits = check_logits(logits, "logits")
            logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False,
                                                             scale_weights=True)  # scale-free fit
            n, n_classes = logits.shape
            _check_label_range(labels, n_classes)
            fun, args = self._objective, (logits, labels, sample_weight)
        n_params = n_classes * (n_classes + 1)
        if self.reg == 0 and n < n_params:
            raise ValueError(f"matrix scaling has {n_params} parameters but only {n} rows were given; "
                             "pass more rows or reg > 0 (ODIR)")
        x0 = np.concatenate([np.eye(n_classes).ravel(), np.zeros(n_classes)])
        res = minimize(fun, x0, args=args, jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter, "gtol": self.tol, "ftol": 1e-14})
        _warn_unless_converged(res, "matrix scaling")
        self.weights_ = res.x[: n_classes * n_classes].reshape(n_classes, n_classes).copy()
        self.bias_ = res.x[n_classes * n_classes:].copy()
        self.n_iter_ = int(res.nit)
        self.n_passes_ = int(res.nfev)
        self.n_classes_ = int(n_classes)
        return self

    def _load_fitted(self, fitted):
        self.n_classes_ = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)
        self.weights_ = fitted_array(fitted, "weights_", (self.n_classes_, self.n_classes_))
        self.bias_ = fitted_array(fitted, "bias_", (self.n_classes_,))
        self.n_iter_ = fitted_int(fitted, "n_iter_", 0)
        self.n_passes_ = fitted_int(fitted, "n_passes_", 0)

    def _scaled(self, z):
        return z @ self.weights_.T + self.bias_


def softmax_nll_block(s, y, w):
    """(sum_i w_i (lse(s_i) - s_i,y_i), G) for a block of logits s (n, K), labels y and weights w (n,), with G
    = w_i (softmax(s_i) - onehot(y_i)), the gradient of that sum in s (written over s: s is consumed)."""
    s -= s.max(axis=1, keepdims=True)
    lse = np.log(np.exp(s).sum(axis=1))
    idx = np.arange(len(y))
    loss = float(w @ (lse - s[idx, y]))
    p = np.exp(s - lse[:, None])
    p[idx, y] -= 1.0
    p *= w[:, None]
    return loss, p


def _check_label_range(labels, n_classes):
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels[{i}] = {labels[i]} is out of range for n_classes={n_classes}")


def _warn_unless_converged(res, what):
    # L-BFGS-B also stops with "ABNORMAL_TERMINATION_IN_LNSRCH" when the loss cannot be
    # lowered at float precision: that is an optimum, not a failure, if the gradient is small.
    if not res.success and not (res.status == 2 and np.abs(res.jac).max() <= 1e-6):
        warnings.warn(f"{what} fit stopped early: {res.message}", RuntimeWarning, stacklevel=3)


# -- ensemble temperature scaling -------------------------------------------------------------------------------

def _label_probabilities(logits, labels, temperature):
    """(softmax(z / T)[y], softmax(z)[y]) of each row, two (N,) float64 arrays, from row chunks of the logits
    (float64 temporaries of one chunk only)."""
    n, n_classes = logits.shape
    scaled, plain = np.empty(n), np.empty(n)
    step = chunk_rows(n_classes)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        _label_probabilities_block(logits[rows], labels[rows], temperature, scaled[rows], plain[rows])
    return scaled, plain


def _label_probabilities_block(logits, y, temperature, scaled, plain):
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    idx = np.arange(z.shape[0])
    for out, s in ((scaled, z / temperature), (plain, z)):
        lse = np.log(np.exp(s).sum(axis=1))
        out[...] = np.exp(s[idx, y] - lse)


def _dense_label_probabilities(data, temperature):
    """:func:`_label_probabilities` and the (scaled) weights of the rows of a ``DenseFit``: three (n,) arrays
    (O(n) memory, not O(n K)), filled piece by piece (pieces of ``chunk_rows(K)`` rows)."""
    n = data.n_rows
    scaled, plain = np.empty(n), np.empty(n)
    w = np.ones(n) if data.dense.sample_weight is None else np.empty(n)
    for p in data.pieces(chunk_rows(data.n_classes)):
        rows = slice(p.offset, p.offset + p.n_rows)
        _label_probabilities_block(p.scores, p.labels, temperature, scaled[rows], plain[rows])
        if p.sample_weight is not None:
            w[rows] = p.sample_weight
    return scaled, plain, w


def _simplex_mixture_nll(v, w):
    """Objective, gradient and Hessian of F(u) = -sum_i w_i log(v_i . u) / sum_i w_i at u (a function of u)."""
    total = float(w.sum())

    def at(u):
        q = v @ u
        with np.errstate(divide="ignore"):
            f = -float(np.sum(w * np.log(q))) / total if (q > 0).all() else math.inf
        if not math.isfinite(f):
            return f, None, None
        r = w / q
        g = -(v.T @ r) / total
        h = (v.T * (r / q)) @ v / total
        return f, g, h

    return at


def _simplex_qp(g, h, u):
    """The exact minimiser over the probability simplex of the quadratic model g.(x - u) + (x - u)' h (x - u) / 2
    (h positive semi-definite, a small ridge added): each face's equality-constrained minimiser is solved from its
    KKT system and the feasible one of least model value is kept (the model is convex, so its minimum over the
    simplex is the minimiser restricted to the face whose relative interior holds it)."""
    m = len(u)
    h = h + (1e-14 * max(float(np.trace(h)), 1e-300)) * np.eye(m)
    c = g - h @ u
    best, best_value = None, math.inf
    for mask in range(1, 1 << m):
        s = [j for j in range(m) if mask >> j & 1]
        k = len(s)
        kkt = np.zeros((k + 1, k + 1))
        kkt[:k, :k] = h[np.ix_(s, s)]
        kkt[:k, k] = kkt[k, :k] = 1.0
        rhs = np.concatenate([-c[s], [1.0]])
        try:
            sol = np.linalg.solve(kkt, rhs)
        except np.linalg.LinAlgError:
            continue
        if not np.isfinite(sol).all() or (sol[:k] < -1e-12).any():
            continue
        x = np.zeros(m)
        x[s] = np.maximum(sol[:k], 0.0)
        x /= x.sum()
        value = float(c @ x + 0.5 * x @ h @ x)
        if value < best_value:
            best, best_value = x, value
    return best


def _fit_simplex_weights(v, w, max_iter):
    """Projected Newton for min_u -sum_i w_i log(v_i . u) over the simplex: each step is the exact minimiser of
    the quadratic model over the simplex (:func:`_simplex_qp`) followed by a backtracking (Armijo) line search.
    Returns (u, n_iter, converged)."""
    fun = _simplex_mixture_nll(v, w)
    u = np.full(v.shape[1], 1.0 / v.shape[1])  # interior: every v_i . u > 0
    f, g, h = fun(u)
    for n_iter in range(1, max_iter + 1):
        target = _simplex_qp(g, h, u)
        if target is None:
            return u, n_iter, False
        d = target - u
        slope = float(g @ d)
        if not slope < 0.0 or float(np.abs(d).max()) <= 1e-13:
            return u, n_iter, True  # no descent direction left (KKT holds to rounding) or a step at rounding level
        t = 1.0
        while True:
            f_new, g_new, h_new = fun(u + t * d)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
            if t < 1e-12:
                # the model's decrease is below the loss's rounding: at the optimum to float precision
                return u, n_iter, -slope <= 1e-12 * max(1.0, abs(f))
        u = u + t * d
        u = np.maximum(u, 0.0)
        u /= u.sum()
        f, g, h = fun(u)
    return u, max_iter, False


class EnsembleTemperatureScaling(Calibrator):
    r"""Ensemble temperature scaling (Zhang, Kailkhura & Han 2020, "Mix-n-Match", ETS).

    .. math::

        p(z) = w_1\, \mathrm{softmax}(z / T) + w_2\, \mathrm{softmax}(z) + w_3 / K,
        \qquad w \ge 0, \quad w_1 + w_2 + w_3 = 1.

    T is fitted first by NLL exactly as :class:`TemperatureScaling` (the same
    ``bounds``, ``tol``, ``chunk_size`` and ``backend``), then w minimises the
    weighted mean NLL :math:`-\sum_i \omega_i \log(w_1 a_i + w_2 b_i + w_3 / K) / \sum_i \omega_i`,
    a_i = softmax(z_i / T)_{y_i}, b_i = softmax(z_i)_{y_i} (one more pass over the logits, in row chunks:
    no N x K temporary). That problem is convex in w; it is solved by projected Newton (each step the exact
    minimiser of the quadratic model over the simplex, then a backtracking line search) until the step is
    below 1e-13, i.e. to float precision. (The paper's code fits w by the mean squared error with SLSQP; the
    NLL is the paper's stated criterion for both T and w.) Dividing by T > 0 and mixing with the uniform
    distribution never changes the order of a row's probabilities, hence never the predicted class.

    Parameters
    ----------
    bounds : (float, float), default (1e-3, 1e3)
        Allowed range of T (see :class:`TemperatureScaling`).
    tol : float, default 1e-7
        Tolerance of the temperature fit (see :class:`TemperatureScaling`).
    max_iter : int, default 100
        The most projected Newton steps for w.
    chunk_size : int, optional
        Rows per kernel call of the temperature fit.
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    temperature_ : float
    weights_ : ndarray of shape (3,)
        (w1, w2, w3): the weights of softmax(z / T), softmax(z) and the uniform distribution.
    n_iter_ : int
        Projected Newton steps of the weight fit.
    n_passes_ : int
        Full passes over the logits (the temperature fit's, plus one).
    n_classes_ : int
    classes_ : ndarray of shape (K,)
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 2000)
    >>> logits = 3.0 * (rng.normal(size=(2000, 3)) + 2.0 * np.eye(3)[y])  # over-confident
    >>> ets = calibkit.EnsembleTemperatureScaling().fit(logits, y)
    >>> round(ets.temperature_, 2), ets.weights_.round(3)
    (1.57, array([0.992, 0.008, 0.   ]))
    >>> ets.predict_proba(logits[:2]).round(3)
    array([[0.   , 0.002, 0.998],
           [0.565, 0.435, 0.001]])
    """

    _fitted_names = ("temperature_", "weights_", "n_iter_", "n_passes_", "n_classes_")

    def __init__(self, *, bounds: tuple[float, float] = (1e-3, 1e3), tol: float = 1e-7, max_iter: int = 100,
                 chunk_size: int | None = None, backend: Backend = "auto"):
        self.bounds = bounds
        self.tol = tol
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.backend = backend

    def _temperature(self):
        return TemperatureScaling(bounds=self.bounds, tol=self.tol, chunk_size=self.chunk_size, backend=self.backend)

    def _check_params(self):
        self._temperature()._check_params()
        check_int(self.max_iter, "max_iter", 1)

    def fit(self, logits: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "EnsembleTemperatureScaling":
        """Fit T, then w, on held-out logits (N, K) and labels (N,); returns self.

        Dense logits ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        ``ignore_index``, ``mask`` and ``max_rows``: as :meth:`TemperatureScaling.fit` (T is fitted on the
        pieces in place). The weight fit needs a_i and b_i of every counted pixel: three float64 values per
        pixel (O(N * prod(spatial)), not times K; ``max_rows`` bounds it). T equals the fit of the flattened
        rows to rounding (within ``tol``), w then to about the same relative accuracy.
        """
        self._check_params()
        ts = self._temperature()
        if dense_route(logits, ignore_index, mask, max_rows):
            data = DenseFit(logits, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                            sample_weight=sample_weight, max_rows=max_rows)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ts._check_params()
                ts._fit_dense(data)  # checks every logit and label used (raises on bad input)
            n_classes = data.n_classes
            scaled, plain, w = _dense_label_probabilities(data, ts.temperature_)
        else:
            logits = check_logits(logits, "logits")
            logits, labels, sample_weight = check_fit_inputs(logits, labels, sample_weight, binary=False,
                                                             scale_weights=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ts.fit(logits, labels, sample_weight)  # checks every logit and label (raises on bad input)
            n_classes = logits.shape[1]
            scaled, plain = _label_probabilities(logits, labels, ts.temperature_)
            w = np.ones(len(scaled)) if sample_weight is None else sample_weight
        for caught_warning in caught:
            warnings.warn(f"ensemble temperature scaling: {caught_warning.message}", caught_warning.category,
                          stacklevel=2)
        v = np.column_stack([scaled, plain, np.full(len(scaled), 1.0 / n_classes)])
        weights, n_iter, converged = _fit_simplex_weights(v, w, self.max_iter)
        if not converged:
            warnings.warn(f"ensemble temperature scaling: the weight fit did not converge in {self.max_iter} "
                          "iterations", RuntimeWarning, stacklevel=2)
        self.temperature_ = float(ts.temperature_)
        self.weights_ = weights
        self.n_iter_ = int(n_iter)
        self.n_passes_ = int(ts.n_passes_) + 1
        self.n_classes_ = int(n_classes)
        return self

    def _load_fitted(self, fitted):
        self.temperature_ = float(fitted_array(fitted, "temperature_", (), positive=True, low=1.0 / MAX_LEARNED))
        weights = fitted_array(fitted, "weights_", (3,), low=0.0, high=1.0)
        if abs(float(weights.sum()) - 1.0) > 1e-9:
            raise ValueError(f"learned value 'weights_' must sum to 1, got {float(weights.sum())!r}")
        self.weights_ = weights
        self.n_iter_ = fitted_int(fitted, "n_iter_", 0)
        self.n_passes_ = fitted_int(fitted, "n_passes_", 0)
        self.n_classes_ = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)

    def predict_proba(self, logits: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities w1 softmax(z / T) + w2 softmax(z) + w3 / K (float64, shape (N, K)), computed in
        row chunks (the output is the only N x K array made).

        Dense logits ``(N, K, *spatial)`` (``axis=1``) or channel-last (``axis=-1``) and ``out`` (``out=logits`` for
        in place): as :meth:`TemperatureScaling.predict_proba` (bit for bit the 2-D result of the flattened rows).
        """
        if dense_route(logits, out):
            self._check_fitted()
            return dense_transform(logits, self._dense_block(False), n_classes=self.n_classes_, axis=axis, out=out)
        logits = _checked_logits_for(self, logits)
        n, n_classes = logits.shape
        out = np.empty((n, n_classes))
        step = chunk_rows(n_classes)
        for start in range(0, n, step):
            rows = slice(start, min(n, start + step))
            z = np.asarray(logits[rows], dtype=np.float64)
            check_finite(z, "logits", start)
            self._mixture(z, out[rows])
        return out

    def _mixture(self, z, block):
        """block = w1 softmax(z / T) + w2 softmax(z) + w3 / K of finite float64 logits z (m, K)."""
        w1, w2, w3 = (float(x) for x in self.weights_)
        z = z - z.max(axis=1, keepdims=True)
        softmax_rows(z / self.temperature_, block)
        block *= w1
        plain = np.empty_like(z)
        softmax_rows(z, plain)
        block += w2 * plain
        block += w3 / z.shape[1]

    def _dense_block(self, logarithm):
        def block(scores, where):
            z = np.asarray(scores, dtype=np.float64)
            where.check_finite(z)
            p = np.empty(z.shape)
            self._mixture(z, p)
            if logarithm:
                np.maximum(p, np.nextafter(0.0, 1.0), out=p)
                np.log(p, out=p)
            return p
        return block

    _probabilities = predict_proba

    def transform(self, logits: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated logits: the log of :meth:`predict_proba` (float64, shape (N, K); their softmax is the
        calibrated probabilities, as for the other scaling calibrators). Finite: the uniform part w3 / K keeps
        every probability positive unless w3 = 0, where a probability that underflows to 0 is a logit of
        -inf's stand-in -745 (log of the smallest subnormal). Dense logits and ``out``: as :meth:`predict_proba`."""
        if dense_route(logits, out):
            self._check_fitted()
            return dense_transform(logits, self._dense_block(True), n_classes=self.n_classes_, axis=axis, out=out)
        p = self.predict_proba(logits)
        np.maximum(p, np.nextafter(0.0, 1.0), out=p)
        return np.log(p, out=p)

    def fit_transform(self, logits: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
                      axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
                      max_rows: int | None = None) -> FloatArray:
        """``fit(logits, labels, sample_weight, ...).transform(logits, axis=axis)`` (the keywords: see :meth:`fit`)."""
        return self.fit(logits, labels, sample_weight, axis=axis, ignore_index=ignore_index, mask=mask,
                        max_rows=max_rows).transform(logits, axis=axis)

    def predict(self, logits: ArrayLike, *, axis: int = 1) -> IntArray:
        """Predicted class (the argmax of :meth:`predict_proba`, which is that of the logits); ``(N, *spatial)`` for
        dense logits."""
        if dense_route(logits):
            self._check_fitted()
            return dense_predict(logits, self._dense_block(False), n_classes=self.n_classes_, axis=axis)
        return np.argmax(self.predict_proba(logits), axis=1)
