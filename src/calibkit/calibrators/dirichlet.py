"""Dirichlet calibration (Kull et al. 2019): multinomial logistic regression on log-probabilities."""

from __future__ import annotations

import numpy as np

from .. import _backend
from .._backend import BACKENDS
from .._typing import ArrayLike, Backend, FloatArray, IntArray
from .._validation import MAX_CLASSES
from ._base import (
    Calibrator, DenseFit, RowNamer, check_fit_inputs, check_int, check_logits, check_positive_number, chunk_rows,
    dense_predict, dense_route, dense_transform, fitted_array, fitted_int, softmax_rows,
)
from .scaling import _check_label_range, _lbfgs, _warn_unless_converged, softmax_nll_block

KINDS = ("full", "diagonal", "fixed_diagonal")
#: float64 probabilities are clipped to [TINY, 1] before the log (float64's smallest normal number, as
#: ``dirichletcal`` clips float64 input): a zero probability is the feature ln(TINY) ~ -708.4. float32 / float16
#: probabilities are clipped at float32's smallest normal number (ln = -87.3) and their log taken in float32.
TINY = float(np.finfo(np.float64).tiny)
#: Largest K of ``kind="full"`` (K (K + 1) parameters, a K x K gradient per pass): 4096.
MAX_FULL_CLASSES = 4096


class DirichletCalibration(Calibrator):
    r"""Dirichlet calibration (Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach 2019).

    Multinomial logistic regression on the log-probabilities x = ln p of an (N, K) matrix of
    probabilities (clipped to [``TINY``, 1], ln taken in the input's precision: float32 for float32 and
    float16 input, whose smallest normal number is then the clip; with ``from_logits=True``, x is the
    log-softmax of the logits in float64):

    .. math::

        q = \mathrm{softmax}(W x + c),

    equivalently the posterior of a Dirichlet distribution per class. ``kind`` chooses W:

    - ``"full"``: any K x K matrix W and intercept c, regularised by ODIR (off-diagonal and intercept
      regularisation) when ``reg_mu`` is given, by plain L2 on W and c otherwise;
    - ``"diagonal"``: W = diag(a), c free (Kull et al.'s diagonal variant; vector scaling on ln p);
    - ``"fixed_diagonal"``: W = a I, c = 0 (temperature scaling of ln p with 1 / T = a).

    Fitted by L-BFGS (``max_iter``, ``tol`` on the largest gradient component) on

    .. math::

        \frac{1}{\sum_i w_i} \sum_i w_i\,(-\ln q_{i, y_i}) +
        \begin{cases}
        \frac{\lambda}{K(K-1)} \sum_{j \ne k} W_{jk}^2 + \frac{\mu}{K} \sum_k c_k^2 & \text{ODIR} \\
        \frac{\lambda}{K(K+1)} \left(\sum_{j,k} W_{jk}^2 + \sum_k c_k^2\right) & \text{L2}
        \end{cases}

    with λ = ``reg_lambda``, μ = ``reg_mu``: the normalised regularisers of the paper, which are
    ``dirichletcal``'s with ``reg_norm=True``. The softmax does not change when one vector is added to
    every row of (W, c); with ``ref_row=True`` (``dirichletcal``'s default) the last row of W and of c is
    held at 0 and the regulariser applies to that representative, with ``ref_row=False`` to the
    unconstrained K x K matrix (the paper's formula, which is :class:`MatrixScaling` on ln p). Without
    regularisation both give the same probabilities. ``"diagonal"`` and ``"fixed_diagonal"`` take no
    regularisation (``reg_lambda=0``, ``reg_mu=None``); ``intercept_`` is given with its last entry 0 (the
    same probabilities).

    Every pass reads the scores in row chunks of about 32 MB (their log and logits): memory
    does not grow with N; the full kind's K (K + 1) parameters make it meant for K up to a few hundred
    (at most ``MAX_FULL_CLASSES`` = 4096). ``"diagonal"`` and ``"fixed_diagonal"`` take each chunk's
    loss and gradient from the vector-scaling kernel of ``backend``; ``"full"`` from BLAS.

    Differences from ``dirichletcal``: the NLL is not clipped (``dirichletcal`` clips the calibrated
    probabilities to [2.2e-16, 1 - 2.2e-16] inside its loss, which changes the optimum only where a
    row's calibrated probability of its label falls below 2.2e-16); the optimiser is L-BFGS for every K
    (``dirichletcal`` uses Newton for K <= 36).

    Parameters
    ----------
    kind : {"full", "diagonal", "fixed_diagonal"}
    reg_lambda : float, default 0
        λ >= 0 (``"full"`` only).
    reg_mu : float or None, default None
        μ >= 0: ODIR (``"full"`` only); None: L2 with λ on W and c.
    ref_row : bool, default True
        Hold the last row of W and c at 0 (see above; ``"full"`` only matters when regularised).
    from_logits : bool, default False
        The scores are logits (x = log-softmax) rather than probabilities.
    max_iter : int, default 1000
    tol : float, default 1e-8
    backend : {"auto", "cpp", "numba"}

    Attributes
    ----------
    coef_ : ndarray of shape (K, K)
        W (diagonal for the diagonal kinds; its last row 0 with ``ref_row=True``).
    intercept_ : ndarray of shape (K,)
        c.
    n_iter_, n_passes_, n_classes_ : int

    References
    ----------
    M. Kull, M. Perello-Nieto, M. Kängsepp, T. Silva Filho, H. Song and P. Flach, "Beyond temperature
    scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet calibration", NeurIPS 2019.

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 3000)
    >>> z = 3.0 * (rng.normal(size=(3000, 3)) + 1.5 * np.eye(3)[y])     # over-confident logits
    >>> p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    >>> dc = calibkit.DirichletCalibration(kind="diagonal").fit(p, y)
    >>> np.diag(dc.coef_).round(2)
    array([0.52, 0.54, 0.44])
    >>> q = dc.predict_proba(p)
    >>> bool(calibkit.nll(q, y) < calibkit.nll(p, y))
    True
    """

    _fitted_names = ("coef_", "intercept_", "n_iter_", "n_passes_", "n_classes_")

    def __init__(self, kind: str = "full", *, reg_lambda: float = 0.0, reg_mu: float | None = None,
                 ref_row: bool = True, from_logits: bool = False, max_iter: int = 1000, tol: float = 1e-8,
                 backend: Backend = "auto"):
        self.kind = kind
        self.reg_lambda = reg_lambda
        self.reg_mu = reg_mu
        self.ref_row = ref_row
        self.from_logits = from_logits
        self.max_iter = max_iter
        self.tol = tol
        self.backend = backend

    def _check_params(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        check_positive_number(self.reg_lambda, "reg_lambda", allow_zero=True)
        if self.reg_mu is not None:
            check_positive_number(self.reg_mu, "reg_mu", allow_zero=True)
        if self.kind != "full" and (self.reg_lambda != 0 or self.reg_mu is not None):
            raise ValueError(f"kind={self.kind!r} takes no regularisation: reg_lambda must be 0 and reg_mu None "
                             f"(got reg_lambda={self.reg_lambda!r}, reg_mu={self.reg_mu!r})")
        for name in ("ref_row", "from_logits"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_int(self.max_iter, "max_iter", 1)
        check_positive_number(self.tol, "tol")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")

    # -- the features, a chunk at a time ------------------------------------------------------------
    def _chunks(self, scores, check):
        """(start, x) for row chunks of the (N, K) scores: x = ln(clip(p)) or the log-softmax of logits, a
        new float64 array per chunk; with ``check`` the chunk's scores are validated first (the error names
        the element by its row in ``scores``)."""
        n, n_classes = scores.shape
        step = chunk_rows(n_classes)
        for start in range(0, n, step):
            yield start, self._features(scores[start:start + step], check, RowNamer(start, "scores", n_classes))

    def _features(self, block, check, where):
        """The features of one block of rows (a new array); ``where`` names its elements in the caller's terms
        (:class:`RowNamer` for 2-D scores, the dense namer for a piece of a map)."""
        # float32 / float16 probabilities: the features in float32 (NumPy's vector float log; the input's own
        # precision), clipped at float32's tiny (ln = -87.3, as dirichletcal clips at the input dtype's)
        dtype = np.float32 if block.dtype in (np.float32, np.float16) and not self.from_logits else np.float64
        tiny = np.finfo(dtype).tiny
        x = np.array(block, dtype=dtype)
        if check:
            where.check_finite(x)
            if not self.from_logits:
                outside = (x < -1e-6) | (x > 1 + 1e-6)
                if outside.any():
                    i, j = np.unravel_index(int(np.argmax(outside)), x.shape)
                    raise ValueError(f"{where.element(i, j)} = {float(x[i, j])!r} is not a probability "
                                     "in [0, 1]; pass from_logits=True for logits")
        if self.from_logits:
            x -= x.max(axis=1, keepdims=True)
            x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
        else:
            np.maximum(x, tiny, out=x)
            np.log(x, out=x)
        return x

    def _blocks(self, scores, labels, sample_weight, check):
        """(x, y, w, where) per chunk of 2-D scores."""
        for start, x in self._chunks(scores, check):
            y = labels[start:start + len(x)]
            w = None if sample_weight is None else sample_weight[start:start + len(x)]
            yield x, y, w, RowNamer(start, "scores", scores.shape[1])

    def _dense_blocks(self, data, check):
        """(x, y, w, where) per piece of a ``DenseFit`` (pieces of ``chunk_rows(K)`` rows)."""
        for p in data.pieces(chunk_rows(data.n_classes)):
            where = data.where(p)
            x = self._features(p.scores, check, where)
            if check:
                data.check_labels(p)
            yield x, p.labels, p.sample_weight, where

    # -- parameters <-> (W, c) -----------------------------------------------------------------------
    def _unpack(self, theta, n_classes):
        K = n_classes
        if self.kind == "fixed_diagonal":
            return np.eye(K) * theta[0], np.zeros(K)
        if self.kind == "diagonal":
            return np.diag(theta[:K]), theta[K:]
        rows = K - 1 if self.ref_row else K
        W = np.zeros((K, K))
        c = np.zeros(K)
        W[:rows] = theta[: rows * K].reshape(rows, K)
        c[:rows] = theta[rows * K:]
        return W, c

    def _start(self, n_classes):
        """The identity map (q = p), in the parametrisation of :meth:`_unpack`."""
        K = n_classes
        if self.kind == "fixed_diagonal":
            return np.ones(1)
        if self.kind == "diagonal":
            return np.concatenate([np.ones(K), np.zeros(K)])
        W = np.eye(K)
        if self.ref_row:  # the same map with the last row subtracted from every row
            W = (W - W[-1])[:-1]
        return np.concatenate([W.ravel(), np.zeros(W.shape[0])])

    def _penalty(self, W, c, n_classes):
        """(value, dW, dc) of the regulariser."""
        K, lam = n_classes, float(self.reg_lambda)
        if self.kind != "full" or (lam == 0 and not self.reg_mu):
            return 0.0, 0.0, 0.0
        if self.reg_mu is None:
            f = lam / (K * (K + 1))
            return f * (float((W * W).sum()) + float(c @ c)), 2.0 * f * W, 2.0 * f * c
        off = W - np.diag(np.diag(W))
        f, g = lam / (K * (K - 1)), float(self.reg_mu) / K
        return f * float((off * off).sum()) + g * float(c @ c), 2.0 * f * off, 2.0 * g * c

    def _objective(self, theta, scores, labels, sample_weight, check=False):
        """(objective, gradient in theta) of the fit: one pass over the scores."""
        return self._objective_blocks(theta, scores.shape[1], self._blocks(scores, labels, sample_weight, check))

    def _objective_blocks(self, theta, n_classes, blocks):
        W, c = self._unpack(theta, n_classes)
        loss, total = 0.0, 0.0
        gW = np.zeros((n_classes, n_classes)) if self.kind == "full" else None
        ga, gc = np.zeros(n_classes), np.zeros(n_classes)
        k = None if self.kind == "full" else _backend.kernels(self.backend)
        scale = np.ascontiguousarray(np.diag(W))
        for x, y, w, where in blocks:
            if k is None:
                part, G = softmax_nll_block(x @ W.T + c, y, np.ones(len(y)) if w is None else w)
                loss += part
                gW += G.T @ x
                gc += G.sum(axis=0)
                total += len(y) if w is None else float(w.sum())
            else:  # z = a x + c by the vector-scaling kernel, fused: loss and gradient of the chunk
                r = k.vector_scaling_nll(x, y, w, scale, c)
                where.fail(r["status"])
                loss += r["loss"]
                ga += r["grad_scale"]
                gc += r["grad_bias"]
                total += r["weight"]
        pen, pW, pc = self._penalty(W, c, n_classes)
        loss = loss / total + pen
        if self.kind == "fixed_diagonal":
            return loss, np.array([ga.sum() / total])
        if self.kind == "diagonal":
            return loss, np.concatenate([ga / total, gc / total])
        gW = gW / total + pW
        gc = gc / total + pc
        rows = n_classes - 1 if self.ref_row else n_classes
        return loss, np.concatenate([gW[:rows].ravel(), gc[:rows]])

    def _preconditioner(self, theta, scores, labels, sample_weight):
        """(to_theta, grad_in_v, v0, norm): the fit runs L-BFGS in v, theta = to_theta(v), where the objective's
        curvature at the start ``theta`` is about the identity (log-probability features of magnitudes up to
        ~700 against an intercept's 1, and strongly correlated columns, would otherwise take hundreds of steps).
        The curvature is estimated on at most 4096 rows (every m-th; at most one chunk). grad_in_v maps the
        gradient in theta to the gradient in v; |grad_theta|_inf <= norm |grad_v|_inf, so stopping on tol / norm
        in v stops on tol.

        ``"full"``: the Kronecker factors of the multinomial Hessian, A = E[diag(q) - q q^T] over the free rows
        and B = E[x x^T] of x = (ln p, 1) (plus ridges), theta = L_A^-T V L_B^-1 with A = L_A L_A^T and
        B = L_B L_B^T; ``"diagonal"``: per class the Cholesky factor of the (a_k, c_k) block of the Hessian's
        diagonal blocks; ``"fixed_diagonal"``: the square root of the curvature."""
        n, K = scores.shape
        m = min(4096, chunk_rows(K))  # rows of the estimate: one chunk
        rows = np.arange(0, n, max(1, n // m))[:m]
        return self._preconditioner_from(theta, scores[rows], None if sample_weight is None else sample_weight[rows])

    def _preconditioner_from(self, theta, sample, w):
        """:meth:`_preconditioner` from its curvature sample (scores (m, K) and weights or None)."""
        K = sample.shape[1]
        w = np.ones(len(sample)) if w is None else w
        w = w / max(float(w.sum()), 1e-300)
        (_, x), = self._chunks(sample, check=False)
        W, c = self._unpack(theta, K)
        q = np.empty(x.shape)
        softmax_rows(x @ W.T + c, q)
        if self.kind == "full":
            free = K - 1 if self.ref_row else K
            qf = q[:, :free]
            A = np.diag(w @ qf) - (qf * w[:, None]).T @ qf
            xt = np.hstack([x, np.ones((len(x), 1))])
            B = (xt * w[:, None]).T @ xt
            L_A = np.linalg.cholesky(A + (1e-3 * max(float(np.trace(A)) / free, 1e-12)) * np.eye(free))
            L_B = np.linalg.cholesky(B + (1e-6 * max(float(np.trace(B)) / (K + 1), 1e-12)) * np.eye(K + 1))
            inv_a, inv_b = np.linalg.inv(L_A), np.linalg.inv(L_B)

            def matrix(t):  # theta -> the (free, K + 1) matrix [W rows | c]
                return np.hstack([t[: free * K].reshape(free, K), t[free * K:, None]])

            def flat(M):
                return np.concatenate([M[:, :K].ravel(), M[:, K]])

            norm = float(np.abs(L_A).sum(axis=1).max() * np.abs(L_B).sum(axis=1).max())
            return (lambda v: flat(inv_a.T @ matrix(v) @ inv_b), lambda g: flat(inv_a @ matrix(g) @ inv_b.T),
                    flat(L_A.T @ matrix(theta) @ L_B), norm)
        v = q * (1.0 - q) * w[:, None]
        if self.kind == "fixed_diagonal":
            h = float((v * x * x).sum())
            d = np.sqrt(h + 1e-4 * max(h, 1e-12)) if np.isfinite(h) else 1.0
            return (lambda u: u / d), (lambda g: g / d), theta * d, float(d)
        # diagonal: per class the Cholesky factor of the 2 x 2 block [[H_aa, H_ac], [H_ac, H_cc]] of (a_k, c_k)
        # (ln p is far from 0, so a_k and c_k are strongly coupled), as VectorScaling's fit.
        def finite(h):
            return np.where(np.isfinite(h), h, 0.0)

        h_aa, h_ac, h_cc = finite((v * x * x).sum(axis=0)), finite((v * x).sum(axis=0)), finite(v.sum(axis=0))
        ridge = 1e-4 * max(float(np.mean(h_aa + h_cc)), 1e-12)
        l11 = np.sqrt(h_aa + ridge)
        l21 = h_ac / l11
        l22 = np.sqrt(np.maximum(h_cc + ridge - l21 * l21, ridge))

        def to_theta(u):  # theta = L^-T u per class
            c = u[K:] / l22
            return np.concatenate([(u[:K] - l21 * c) / l11, c])

        def grad_in_v(g):  # L^-1 g per class
            ga = g[:K] / l11
            return np.concatenate([ga, (g[K:] - l21 * ga) / l22])

        v0 = np.concatenate([l11 * theta[:K] + l21 * theta[K:], l22 * theta[K:]])
        norm = float(np.max(np.maximum(l11, np.abs(l21) + l22)))
        return to_theta, grad_in_v, v0, norm

    def _checked(self, scores):
        s = check_logits(scores, "scores")
        if s.shape[1] > MAX_CLASSES:
            raise ValueError(f"scores has {s.shape[1]} columns; at most {MAX_CLASSES} classes are supported")
        return s

    def loss_and_grad(self, params: ArrayLike, scores: ArrayLike, labels: ArrayLike,
                      sample_weight: ArrayLike | None = None) -> tuple[float, FloatArray]:
        """The objective and its gradient at ``params`` (the fit's parametrisation: [W rows, c] of the free
        rows for ``"full"``, [a, c] for ``"diagonal"``, [a] for ``"fixed_diagonal"``)."""
        self._check_params()
        scores, labels, sample_weight = check_fit_inputs(self._checked(scores), labels, sample_weight,
                                                         binary=False)
        _check_label_range(labels, scores.shape[1])
        theta = np.asarray(params, dtype=np.float64)
        if theta.shape != self._start(scores.shape[1]).shape:
            raise ValueError(f"params must have shape {self._start(scores.shape[1]).shape}, got {theta.shape}")
        return self._objective(theta, scores, labels, sample_weight, check=True)

    def fit(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
            axis: int = 1, ignore_index: int | None = None, mask: ArrayLike | None = None,
            max_rows: int | None = None) -> "DirichletCalibration":
        """Fit on held-out (N, K) probabilities (or logits with ``from_logits=True``) and labels (N,).

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``,
        ``ignore_index``, ``mask`` and ``max_rows``: as :meth:`TemperatureScaling.fit` (read in place, piece by
        piece of at most ``chunk_rows(K)`` pixels; ``max_rows`` keeps every s-th counted pixel). The loss and
        gradient are summed per piece, so the fit equals that of the flattened rows to rounding.
        """
        self._check_params()
        if dense_route(scores, ignore_index, mask, max_rows):
            data = DenseFit(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                            sample_weight=sample_weight, max_rows=max_rows, name="scores")
            n, n_classes = data.n_rows, data.n_classes
            if n_classes > MAX_CLASSES:
                raise ValueError(f"scores has {n_classes} classes; at most {MAX_CLASSES} classes are supported")

            def evaluate(theta, check):
                return self._objective_blocks(theta, n_classes, self._dense_blocks(data, check))

            def curvature(theta):
                m = min(4096, chunk_rows(n_classes))
                sample, _, w = data.gather(max(1, n // m))
                return self._preconditioner_from(theta, sample[:m], None if w is None else w[:m])
        else:
            scores, labels, sample_weight = check_fit_inputs(self._checked(scores), labels, sample_weight,
                                                             binary=False, scale_weights=True)  # scale-free fit
            n, n_classes = scores.shape
            _check_label_range(labels, n_classes)

            def evaluate(theta, check):
                return self._objective(theta, scores, labels, sample_weight, check=check)

            def curvature(theta):
                return self._preconditioner(theta, scores, labels, sample_weight)
        if self.kind == "full" and n_classes > MAX_FULL_CLASSES:
            raise ValueError(f"kind='full' fits K (K + 1) parameters: at most {MAX_FULL_CLASSES} classes, got "
                             f"{n_classes} (use kind='diagonal')")
        x0 = self._start(n_classes)
        if self.kind == "full" and self.reg_lambda == 0 and not self.reg_mu and n < x0.size:
            raise ValueError(f"full Dirichlet calibration has {x0.size} parameters but only {n} rows were given; "
                             "pass more rows, reg_lambda > 0 or kind='diagonal'")
        passes = [0]

        def objective(theta):
            passes[0] += 1
            return evaluate(theta, passes[0] == 1)

        first = objective(x0)
        to_theta, grad_in_v, v0, norm = curvature(x0)

        def transformed(v):
            f, g = first if np.array_equal(v, v0) else objective(to_theta(v))
            return f, grad_in_v(g)

        res = _lbfgs(transformed, v0, gtol=self.tol / norm, ftol=1e-14, maxiter=self.max_iter)
        res.x = to_theta(res.x)
        res.jac = objective(res.x)[1]  # the gradient in theta, which tol is about
        _warn_unless_converged(res, "Dirichlet calibration")
        W, c = self._unpack(res.x, n_classes)
        if self.kind == "diagonal":  # the same model with the last intercept at 0
            c = c - c[-1]
        self.coef_, self.intercept_ = W, c
        self.n_iter_ = int(res.nit)
        self.n_passes_ = passes[0]
        self.n_classes_ = int(n_classes)
        return self

    def _load_fitted(self, fitted):
        self.n_classes_ = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)
        K = self.n_classes_
        self.coef_ = fitted_array(fitted, "coef_", (K, K))
        self.intercept_ = fitted_array(fitted, "intercept_", (K,))
        off = self.coef_ - np.diag(np.diag(self.coef_))
        if self.kind != "full" and (off != 0).any():
            raise ValueError(f"learned value 'coef_' must be diagonal for kind={self.kind!r}")
        if self.kind == "fixed_diagonal" and ((np.diag(self.coef_) != self.coef_[0, 0]).any()
                                             or (self.intercept_ != 0).any()):
            raise ValueError("learned values of kind='fixed_diagonal' must be a multiple of the identity and "
                             "a zero intercept")
        self.n_iter_ = fitted_int(fitted, "n_iter_", 0)
        self.n_passes_ = fitted_int(fitted, "n_passes_", 0)

    def predict_proba(self, scores: ArrayLike, *, axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
        """Calibrated probabilities softmax(W ln p + c), float64 of shape (N, K).

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or channel-last (``axis=-1``) give probabilities of the same
        shape (class axis read with its stride, no flattened copy), written into ``out`` when given
        (``out=scores`` itself for in place; any float dtype). Each pixel is computed as the 2-D rows are.
        """
        self._check_fitted()
        if dense_route(scores, out):
            return dense_transform(scores, self._dense_block, n_classes=self.n_classes_, axis=axis, out=out,
                                   name="scores")
        scores = self._checked(scores)
        if scores.shape[1] != self.n_classes_:
            raise ValueError(f"scores has {scores.shape[1]} columns but the calibrator was fitted on "
                             f"{self.n_classes_} classes")
        out = np.empty(scores.shape)
        for start, x in self._chunks(scores, check=True):
            self._calibrated(x, out[start:start + len(x)])
        return out

    def _calibrated(self, x, out):
        diagonal = None if self.kind == "full" else np.diag(self.coef_)
        z = x @ self.coef_.T if diagonal is None else x * diagonal
        softmax_rows(z + self.intercept_, out)

    def _dense_block(self, block, where):
        out = np.empty(block.shape)
        self._calibrated(self._features(block, True, where), out)
        return out

    _probabilities = predict_proba

    def predict(self, scores: ArrayLike, *, axis: int = 1) -> IntArray:
        """Predicted class after calibration (``(N, *spatial)`` for dense scores)."""
        if dense_route(scores):
            self._check_fitted()
            return dense_predict(scores, self._dense_block, n_classes=self.n_classes_, axis=axis, name="scores")
        return np.argmax(self.predict_proba(scores), axis=1)
