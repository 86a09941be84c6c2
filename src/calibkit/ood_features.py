"""OOD scores from final-layer features and logits: Mahalanobis, ViM, GEN and max-logit.

Every score here follows the convention of :func:`calibkit.ood_metrics`: higher
means more in-distribution, so ``ood_metrics(detector.score(f_in),
detector.score(f_out))`` needs no sign flip. The exceptions are named after an
uncertainty (:func:`generalized_entropy`, like :func:`calibkit.entropy`): pass
their negation. pytorch-ood's detectors return outlier scores (higher = more
out-of-distribution); each docstring says how its value relates to theirs.

Features are read in chunks of rows (about 2^20 values each, converted to
float64 one chunk at a time): no N x D or N x K temporary is formed beyond a
chunk, whatever N. :class:`Mahalanobis` fits in one pass over the features,
:class:`ViM` in two (the principal subspace must be known before the residual
norms that set alpha), and each ``score`` is one pass.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._typing import ArrayLike, FloatArray
from ._validation import (_float_array, check_bool, check_labels, check_probability_rows, check_scores,
                          check_size)
from .calibrators._base import not_fitted_error

_CHUNK_VALUES = 1 << 20  # values per chunk of rows


def _matrix(x, name, n_cols=None, what="features"):
    a = _float_array(x, name)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N, D >= 1, got shape {a.shape}")
    if n_cols is not None and a.shape[1] != n_cols:
        raise ValueError(f"{name} has {a.shape[1]} columns but the detector was fitted on {what} of {n_cols}")
    return a


def _finite(block, name, start=0):
    if not np.isfinite(block).all():
        bad = np.argwhere(~np.isfinite(block))[0]
        where = ", ".join(str(int(v) + (start if i == 0 else 0)) for i, v in enumerate(bad))
        raise ValueError(f"{name}[{where}] = {float(block[tuple(bad)])!r} is not finite")
    return block


def _chunks(a, name, width):
    """(start, float64 block) over the rows of `a`, about 2^20 values per block, each checked finite."""
    step = max(1, _CHUNK_VALUES // max(width, 1))
    for start in range(0, a.shape[0], step):
        yield start, _finite(np.asarray(a[start:start + step], dtype=np.float64), name, start)


def _require_fitted(detector, attribute):
    if getattr(detector, attribute, None) is None:
        raise not_fitted_error()(f"this {type(detector).__name__} is not fitted yet: call fit(...) first")


def _check_covariance(scatter):
    if not np.isfinite(scatter).all():
        raise ValueError("features: the scatter matrix of the features overflows float64 (feature values of "
                         "about 1e150 or more); rescale the features")


def _logsumexp_rows(z):
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _state_array(state, key, shape, kind):
    """A finite float64 array of `shape` from a to_dict state (None entries in `shape` are free)."""
    if key not in state:
        raise ValueError(f"{kind} state has no {key!r}")
    try:
        a = np.asarray(state[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind} state: {key} is not an array of numbers ({exc})") from None
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        raise ValueError(f"{kind} state: {key} has shape {a.shape}, expected {tuple(shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{kind} state: {key} has a non-finite value")
    return a


def _check_kind(state, kind, keys):
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise ValueError(f"not a {kind} state: expected a dict with kind={kind!r}")
    extra = set(state) - set(keys) - {"kind"}
    if extra:
        raise ValueError(f"{kind} state has unknown keys {sorted(extra)}")


class Mahalanobis:
    """Mahalanobis-distance OOD detector with class means and one shared covariance (Lee et al. 2018).

    "A simple unified framework for detecting out-of-distribution samples and
    adversarial attacks": fitted on in-distribution features z_i with labels
    y_i in 0..K-1, mu_k = mean of the class-k features and
    Sigma = (1/N) sum_i (z_i - mu_{y_i}) (z_i - mu_{y_i})^T (the maximum-likelihood
    shared covariance; its pseudo-inverse is the precision, so singular
    covariances, e.g. D > N, work). The score of a feature vector z is
    ``-min_k (z - mu_k)^T Sigma^+ (z - mu_k)``: higher = more in-distribution.
    Every class 0..K-1 must have a sample.

    pytorch-ood's ``Mahalanobis`` (no input preprocessing) inverts the scatter
    matrix N Sigma plus 1e-6 I and halves the distance: its outlier score is
    ``-score / (2 N)`` up to that ridge and its float32 arithmetic.

    The fit is one pass over the features (the scatter about a shift, the first
    chunk's mean, so that large common offsets do not cancel digits);
    ``to_dict`` / ``from_dict`` save and restore a fitted detector (JSON-safe).
    ``score`` is one pass, from ``d_k = q - 2 z^T P mu_k + mu_k^T P mu_k`` with
    q = z^T P z (a chunk of rows against all classes in one matrix product,
    clipped at 0 against rounding), after centring on the mean of the class means.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 3, 600)
    >>> f_in = rng.normal(size=(600, 4)) + 3.0 * np.eye(3, 4)[labels]
    >>> det = calibkit.Mahalanobis().fit(f_in, labels)
    >>> det.means_.shape, det.covariance_.shape
    ((3, 4), (4, 4))
    >>> f_out = rng.normal(size=(400, 4)) * 3.0
    >>> calibkit.auroc(det.score(f_in), det.score(f_out)) > 0.8
    True
    """

    def __init__(self):
        self.means_ = None
        self.covariance_ = None
        self.precision_ = None

    def fit(self, features: ArrayLike, labels: ArrayLike) -> "Mahalanobis":
        """Fit class means and the shared covariance on in-distribution ``features`` (N, D) with ``labels`` (N,)."""
        F = _matrix(features, "features")
        y = check_labels(labels, F.shape[0])
        if y.min() < 0:
            bad = int(np.argmax(y < 0))
            raise ValueError(f"labels[{bad}] = {int(y[bad])} is negative: labels are class indices 0..K-1")
        K = int(y.max()) + 1
        counts = np.bincount(y, minlength=K)
        if (counts == 0).any():
            k = int(np.argmax(counts == 0))
            raise ValueError(f"class {k} has no sample in labels: every class in 0..{K - 1} needs one "
                             "(relabel the classes present as 0..K-1)")
        N, D = F.shape
        sums = np.zeros((K, D))
        scatter = np.zeros((D, D))
        shift = None
        for start, block in _chunks(F, "features", D):
            if shift is None:
                shift = block.mean(axis=0)
            block = block - shift
            scatter += block.T @ block
            yc = y[start:start + block.shape[0]]
            order = np.argsort(yc, kind="stable")
            first = np.flatnonzero(np.r_[True, np.diff(yc[order]) != 0])
            sums[yc[order][first]] += np.add.reduceat(block[order], first, axis=0)
        means = sums / counts[:, None]
        scatter -= (means * counts[:, None]).T @ means
        _check_covariance(scatter)
        self.covariance_ = (scatter + scatter.T) / (2.0 * N)
        self.precision_ = np.linalg.pinv(self.covariance_, hermitian=True)
        self.means_ = means + shift
        self.n_features_in_ = D
        return self

    def score(self, features: ArrayLike) -> FloatArray:
        """``-min_k`` squared Mahalanobis distance of each row of ``features`` (N, D): higher = more in-distribution."""
        _require_fitted(self, "precision_")
        F = _matrix(features, "features", self.n_features_in_)
        P = self.precision_
        center = self.means_.mean(axis=0)
        M = self.means_ - center
        MP = M @ P
        const = np.einsum("kd,kd->k", MP, M)
        out = np.empty(F.shape[0])
        for start, block in _chunks(F, "features", max(F.shape[1], M.shape[0])):
            block = block - center
            quad = np.einsum("nd,nd->n", block @ P, block)
            d = quad[:, None] - 2.0 * (block @ MP.T) + const
            out[start:start + block.shape[0]] = -np.maximum(d.min(axis=1), 0.0)
        return out

    def to_dict(self) -> dict:
        """The fitted state as JSON-safe lists (the precision is recomputed from the covariance on load)."""
        _require_fitted(self, "precision_")
        return {"kind": "Mahalanobis", "means": self.means_.tolist(), "covariance": self.covariance_.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> "Mahalanobis":
        """Rebuild a fitted detector from :meth:`to_dict`; a malformed state raises ValueError."""
        _check_kind(state, "Mahalanobis", ("means", "covariance"))
        means = _state_array(state, "means", (None, None), "Mahalanobis")
        D = means.shape[1]
        cov = _state_array(state, "covariance", (D, D), "Mahalanobis")
        if means.shape[0] < 1 or D < 1 or not np.array_equal(cov, cov.T):
            raise ValueError("Mahalanobis state: means must be (K, D) with K, D >= 1 and covariance symmetric (D, D)")
        det = cls()
        det.means_, det.covariance_ = means, cov
        det.precision_ = np.linalg.pinv(cov, hermitian=True)
        det.n_features_in_ = D
        return det

    def __repr__(self) -> str:
        return "Mahalanobis()"


class ViM:
    """Virtual-logit matching OOD detector (Wang et al. 2022, "ViM: out-of-distribution with virtual-logit matching").

    With the final layer's weights W (K, D) and bias b (K,), the origin
    u = -W^+ b, and the features centred on it x = z - u: fitted on
    in-distribution features, the principal subspace is spanned by the
    ``n_principal`` eigenvectors of largest eigenvalue of (1/N) sum x x^T, and
    R (D x (D - n_principal)) spans the rest; the residual norm is ||x R|| and
    alpha = mean_i max_k l_ik / mean_i ||x_i R|| (l = z W^T + b, the logits).
    The score is the energy minus the virtual logit:
    ``logsumexp_k(l_k) - alpha ||x R||``, higher = more in-distribution; this
    is pytorch-ood's ``ViM`` outlier score negated (pytorch-ood computes in
    float32). ``n_principal`` must be in [1, D - 1].

    The fit reads the features twice (the covariance and the mean max-logit,
    then the residual norms); ``score`` once. ``to_dict`` / ``from_dict`` save
    and restore a fitted detector (JSON-safe).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(1)
    >>> W, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    >>> f_in = rng.normal(size=(500, 6)) @ np.diag([3, 3, 3, 0.3, 0.3, 0.3])
    >>> det = calibkit.ViM(W, b, n_principal=3).fit(f_in)
    >>> det.residual_basis_.shape
    (6, 3)
    >>> f_out = rng.normal(size=(300, 6)) * 2.0
    >>> calibkit.auroc(det.score(f_in), det.score(f_out)) > 0.9
    True
    """

    def __init__(self, weights: ArrayLike, bias: ArrayLike, *, n_principal: int):
        W = _finite(np.asarray(_matrix(weights, "weights"), dtype=np.float64), "weights")
        if W.shape[0] < 2:
            raise ValueError(f"weights must have shape (K, D) with K >= 2 classes, got shape {W.shape}")
        b = np.asarray(_float_array(bias, "bias"), dtype=np.float64)
        if b.shape != (W.shape[0],):
            raise ValueError(f"bias must have shape ({W.shape[0]},) (one per class of weights), got shape {b.shape}")
        _finite(b, "bias")
        self.weights = W
        self.bias = b
        if W.shape[1] < 2:
            raise ValueError(f"ViM needs features of D >= 2 dimensions (a principal and a residual part), got "
                             f"weights of shape {W.shape}")
        self.n_principal = check_size(n_principal, "n_principal", 1, W.shape[1] - 1)
        self.origin_ = None
        self.residual_basis_ = None
        self.alpha_ = None

    def _logits(self, block):
        return block @ self.weights.T + self.bias

    def fit(self, features: ArrayLike, labels: ArrayLike | None = None) -> "ViM":
        """Fit the principal subspace and alpha on in-distribution ``features`` (N, D); ``labels`` are not used."""
        D = self.weights.shape[1]
        F = _matrix(features, "features", D, what="weights with D")
        origin = -(np.linalg.pinv(self.weights) @ self.bias)
        cov = np.zeros((D, D))
        max_logit = 0.0
        for _, block in _chunks(F, "features", max(D, self.weights.shape[0])):
            max_logit += float(self._logits(block).max(axis=1).sum())
            x = block - origin
            cov += x.T @ x
        _check_covariance(cov)
        cov = (cov + cov.T) / (2.0 * F.shape[0])
        _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
        basis = np.ascontiguousarray(vectors[:, :D - self.n_principal])
        residual = 0.0
        for _, block in _chunks(F, "features", D):
            residual += float(np.linalg.norm((block - origin) @ basis, axis=1).sum())
        if residual == 0.0:
            raise ValueError("the in-distribution features have no residual outside the principal subspace "
                             f"(n_principal={self.n_principal}): alpha is undefined; use a smaller n_principal")
        self.origin_ = origin
        self.residual_basis_ = basis
        self.alpha_ = max_logit / residual  # (sum / N) / (sum / N)
        return self

    def score(self, features: ArrayLike) -> FloatArray:
        """Energy minus virtual logit of each row of ``features`` (N, D): higher = more in-distribution."""
        _require_fitted(self, "alpha_")
        F = _matrix(features, "features", self.weights.shape[1], what="weights with D")
        out = np.empty(F.shape[0])
        for start, block in _chunks(F, "features", max(F.shape[1], self.weights.shape[0])):
            energy = _logsumexp_rows(self._logits(block))
            virtual = np.linalg.norm((block - self.origin_) @ self.residual_basis_, axis=1)
            out[start:start + block.shape[0]] = energy - self.alpha_ * virtual
        return out

    def to_dict(self) -> dict:
        """Parameters and fitted state as JSON-safe lists."""
        _require_fitted(self, "alpha_")
        return {"kind": "ViM", "weights": self.weights.tolist(), "bias": self.bias.tolist(),
                "n_principal": self.n_principal, "origin": self.origin_.tolist(),
                "residual_basis": self.residual_basis_.tolist(), "alpha": self.alpha_}

    @classmethod
    def from_dict(cls, state: dict) -> "ViM":
        """Rebuild a fitted detector from :meth:`to_dict`; a malformed state raises ValueError."""
        _check_kind(state, "ViM", ("weights", "bias", "n_principal", "origin", "residual_basis", "alpha"))
        if isinstance(state.get("n_principal"), bool) or not isinstance(state.get("n_principal"), numbers.Integral):
            raise ValueError(f"ViM state: n_principal must be an integer, got {state.get('n_principal')!r}")
        det = cls(_state_array(state, "weights", (None, None), "ViM"), _state_array(state, "bias", (None,), "ViM"),
                  n_principal=state.get("n_principal"))
        D = det.weights.shape[1]
        det.origin_ = _state_array(state, "origin", (D,), "ViM")
        det.residual_basis_ = _state_array(state, "residual_basis", (D, D - det.n_principal), "ViM")
        alpha = state.get("alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha):
            raise ValueError(f"ViM state: alpha must be a finite number, got {alpha!r}")
        det.alpha_ = float(alpha)
        return det

    def __repr__(self) -> str:
        return f"ViM(n_principal={self.n_principal}, K={self.weights.shape[0]}, D={self.weights.shape[1]})"


def generalized_entropy(scores: ArrayLike, *, from_logits: bool = False, gamma: float = 0.1, m: int | None = None,
                        clip: float | None = None, check_sums: bool = True) -> FloatArray:
    """Generalized entropy G_gamma of each row (Liu et al. 2023, "GEN: pushing the limits of softmax-based OOD detection").

    G = sum over the ``m`` largest probabilities p of p^gamma (1 - p)^gamma
    (all K classes when ``m`` is None), gamma in (0, 1): an uncertainty, higher
    = more out-of-distribution, so pass ``-generalized_entropy(...)`` to
    :func:`calibkit.ood_metrics`. From logits (``from_logits=True``) the
    softmax is computed a chunk of rows at a time. ``clip`` = c clips the
    probabilities to [c, 1 - c] first: pytorch-ood's ``GEN`` clips at 1e-7 and
    averages over the m classes instead of summing, so its score is
    ``generalized_entropy(..., clip=1e-7) / m``. Probabilities must lie in
    [0, 1] and (unless ``check_sums=False``) each row sum to 1 within the
    tolerance of the metrics.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> p = np.array([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3]])
    >>> calibkit.generalized_entropy(p).round(4)
    array([1.9355, 2.578 ])
    """
    if not isinstance(from_logits, (bool, np.bool_)):
        raise TypeError(f"from_logits must be True or False, got {from_logits!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not 0.0 < float(gamma) < 1.0:
        raise ValueError(f"gamma must be a number in (0, 1), got {gamma!r}")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real)
                             or not 0.0 <= float(clip) < 0.5):
        raise ValueError(f"clip must be None or a number in [0, 0.5), got {clip!r}")
    S = check_scores(scores, "scores")
    if S.ndim != 2:
        raise ValueError(f"scores must have shape (N, K) with K >= 2 classes, got shape {S.shape}")
    K = S.shape[1]
    m = K if m is None else check_size(m, "m", 1, K)
    if not from_logits and check_bool(check_sums, "check_sums"):
        check_probability_rows(S, "scores")
    out = np.empty(S.shape[0])
    for start, block in _chunks(S, "scores", K):
        if from_logits:
            with np.errstate(over="ignore"):  # a gap beyond the float64 range: exp(-inf) = 0, as it should
                block = np.exp(block - block.max(axis=1, keepdims=True))
            block /= block.sum(axis=1, keepdims=True)
        elif (block < 0).any() or (block > 1).any():
            i, j = np.argwhere((block < 0) | (block > 1))[0]
            raise ValueError(f"scores[{start + i}, {j}] = {float(block[i, j])!r} is not a probability in [0, 1]; "
                             "pass from_logits=True for logits")
        if clip is not None:
            block = np.clip(block, clip, 1.0 - clip)
        if m < K:
            block = np.partition(block, K - m, axis=1)[:, K - m:]
        out[start:start + block.shape[0]] = np.sum(block ** gamma * (1.0 - block) ** gamma, axis=1)
    return out


def max_logit(logits: ArrayLike) -> FloatArray:
    """The largest logit of each row (Hendrycks et al. 2022, "Scaling out-of-distribution detection for real-world settings").

    Higher = more in-distribution; pytorch-ood's ``MaxLogit`` outlier score is its negation.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> calibkit.max_logit(np.array([[2.0, -1.0, 0.5], [0.1, 0.3, 0.2]]))
    array([2. , 0.3])
    """
    Z = check_scores(logits, "logits")
    if Z.ndim != 2:
        raise ValueError(f"logits must have shape (N, K) with K >= 2 classes, got shape {Z.shape}")
    out = np.empty(Z.shape[0])
    for start, block in _chunks(Z, "logits", Z.shape[1]):
        out[start:start + block.shape[0]] = block.max(axis=1)
    return out


__all__ = ["Mahalanobis", "ViM", "generalized_entropy", "max_logit"]
