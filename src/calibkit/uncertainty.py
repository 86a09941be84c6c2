"""Per-sample uncertainty scores, the ensemble / MC-dropout decomposition and the confidence loss.

Every function reads its input once in a fused native kernel (C++ or Numba,
``backend=``): from logits, the max, the two largest values and the softmax
sums of a row come from one read, and no N x K softmax is materialised.

Score directions: ``max_probability``, ``margin``, ``logit_norm`` and
``kl_to_uniform`` are confidences (higher = more certain); ``entropy`` and
``energy`` are uncertainties (higher = less certain). For OOD detection with
:mod:`calibkit.ood` (higher score = more in-distribution) pass ``-entropy`` and
``-energy``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend, FloatArray
from ._validation import (
    check_bool, check_labels, check_samples, check_scores, raise_for_status,
)

_KINDS = {"max_probability": 0, "margin": 1, "entropy": 2, "energy": 3, "logit_norm": 4, "kl_to_uniform": 5}
_NEEDS_LOGITS = ("energy", "logit_norm")
#: A per-sample score name accepted by :func:`uncertainty_scores`.
ScoreKind = Literal["max_probability", "margin", "entropy", "energy", "logit_norm", "kl_to_uniform"]


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    t = float(temperature)
    if not (t > 0.0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def uncertainty_scores(scores: ArrayLike,
                       kinds: ScoreKind | Sequence[ScoreKind] = ("max_probability", "margin", "entropy"), *,
                       from_logits: bool = False, temperature: float = 1.0, normalize: bool = False,
                       backend: Backend = "auto") -> dict[str, FloatArray]:
    """Several per-sample scores from one pass over ``scores``.

    Parameters
    ----------
    scores : array-like of shape (N, K)
        Probabilities (rows in [0, 1]) or, with ``from_logits=True``, logits.
        float16/32/64, any memory layout, memory-mapped arrays are read in place.
    kinds : str or sequence of str
        Any of ``"max_probability"``, ``"margin"``, ``"entropy"``, ``"energy"``,
        ``"logit_norm"``, ``"kl_to_uniform"`` (the last two but one need logits).
    from_logits : bool
        Whether ``scores`` are logits (softmax is applied in the kernel).
    temperature : float
        Logits are divided by T before the softmax (and in the energy); ignored
        by ``logit_norm``. Must be 1 for probabilities.
    normalize : bool
        Divide the entropy by log K (so it lies in [0, 1]).
    backend : {"auto", "cpp", "numba"}

    Returns
    -------
    dict
        ``{kind: float64 array of shape (N,)}``.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> scores = calibkit.uncertainty_scores(logits, ("max_probability", "energy"), from_logits=True)
    >>> {k: v.round(4) for k, v in scores.items()}
    {'max_probability': array([0.659 , 0.3672]), 'energy': array([-2.417 , -1.5019])}
    """
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("kinds must name at least one score")
    for kind in kinds:
        if kind not in _KINDS:
            raise ValueError(f"unknown score {kind!r}; choose from {tuple(_KINDS)}")
    from_logits = check_bool(from_logits, "from_logits")
    normalize = check_bool(normalize, "normalize")
    t = _check_temperature(temperature)
    if not from_logits:
        needs = [k for k in kinds if k in _NEEDS_LOGITS]
        if needs:
            raise ValueError(f"{needs[0]} is defined on logits: pass logits with from_logits=True")
        if t != 1.0:
            raise ValueError("temperature applies to logits: pass from_logits=True (or temperature=1)")
    s = check_scores(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N, K), got shape {s.shape}")
    mask = 0
    for kind in kinds:
        mask |= 1 << _KINDS[kind]
    r = _backend.kernels(backend).row_scores(s, from_logits, 1.0 / t, mask)
    raise_for_status(r["status"], scores_name="scores")
    out = {kind: r[_KINDS[kind]] for kind in kinds}
    if normalize and "entropy" in out:
        out["entropy"] = out["entropy"] / math.log(s.shape[1])
    return out


def max_probability(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0,
                    backend: Backend = "auto") -> FloatArray:
    """Maximum softmax probability max_k p_k (Hendrycks & Gimpel 2017): a confidence.

    From logits z: 1 / sum_k exp((z_k - max z) / T), without forming the softmax.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.max_probability(logits, from_logits=True).round(4)
    array([0.659 , 0.3672])
    """
    return uncertainty_scores(scores, ("max_probability",), from_logits=from_logits, temperature=temperature,
                              backend=backend)["max_probability"]


def margin(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0,
           backend: Backend = "auto") -> FloatArray:
    """Top-1 minus top-2 probability, p_(1) - p_(2) (0 when the two largest are tied): a confidence.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.margin(logits, from_logits=True).round(4)
    array([0.4166, 0.0349])
    """
    return uncertainty_scores(scores, ("margin",), from_logits=from_logits, temperature=temperature,
                              backend=backend)["margin"]


def entropy(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0, normalize: bool = False,
            backend: Backend = "auto") -> FloatArray:
    """Predictive entropy H(p) = -sum_k p_k log p_k (natural log; 0 log 0 = 0): an uncertainty.

    From logits, H = log s0 - sum_k e^{t_k} t_k / s0 with t = max((z - max z) / T, x_min)
    and s0 = sum_k e^{t_k}: the row is shifted by its maximum before any product,
    and x_min (-708 for float64 input, -87 for float16/32, where the kernels' exp
    clamps) keeps every product e^t t finite, so H is finite and in [0, log K]
    for any finite logits, even near the largest float (a clamped element adds
    at most 2.4e-305, resp. 1.5e-36, to H). The result is clipped to
    [0, log K]. ``normalize=True`` divides by log K, the entropy of the uniform
    distribution.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.entropy(logits, from_logits=True, normalize=True).round(4)
    array([0.7707, 0.997 ])
    """
    return uncertainty_scores(scores, ("entropy",), from_logits=from_logits, temperature=temperature,
                              normalize=normalize, backend=backend)["entropy"]


def energy(logits: ArrayLike, *, temperature: float = 1.0, backend: Backend = "auto") -> FloatArray:
    """Free energy E(z) = -T log sum_k exp(z_k / T) (Liu et al. 2020, "Energy-based OOD detection").

    Lower energy means more in-distribution: use ``-energy(z)`` as an OOD score.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.energy(logits).round(4)
    array([-2.417 , -1.5019])
    """
    return uncertainty_scores(logits, ("energy",), from_logits=True, temperature=temperature,
                              backend=backend)["energy"]


def logit_norm(logits: ArrayLike, *, backend: Backend = "auto") -> FloatArray:
    """Euclidean norm of the logit vector, ||z||_2 (a confidence; Wei et al. 2022).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.logit_norm(logits).round(4)
    array([2.2383, 0.7071])
    """
    return uncertainty_scores(logits, ("logit_norm",), from_logits=True, backend=backend)["logit_norm"]


def kl_to_uniform(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0,
                  backend: Backend = "auto") -> FloatArray:
    """KL(U || p) = -log K - (1/K) sum_k log p_k, the divergence of p from the uniform distribution.

    The per-sample term of the confidence loss of Lee et al. (2018): 0 for a
    uniform prediction, large for a confident one (a confidence). From
    probabilities it is ``inf`` when some p_k is 0; from logits it is finite:
    log s0 - log K - mean_k(z_k - max z) / T.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.kl_to_uniform(logits, from_logits=True).round(4)
    array([0.2851, 0.0033])
    """
    return uncertainty_scores(scores, ("kl_to_uniform",), from_logits=from_logits, temperature=temperature,
                              backend=backend)["kl_to_uniform"]


# ---------------------------------------------------------------------------------------------
# Feature-based measures (Pearce, Brintrup & Zhu 2021)


@dataclass(frozen=True)
class FeatureScores:
    """Pearce et al. (2021) measures of final-layer features z = F[i] against class weights W.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> fs = calibkit.feature_scores([[3.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    >>> sorted(vars(fs))
    ['familiarity', 'norm', 'uncertainty']
    """

    norm: np.ndarray         #: ||z||_2
    familiarity: np.ndarray  #: max_k cos(w_k, z); 0 for a zero feature vector
    uncertainty: np.ndarray  #: U = -1 / (1 + (K - 1) exp(-||z|| (1/(K-1) + max_k cos)))


def feature_scores(features: ArrayLike, weights: ArrayLike, *, chunk_size: int | None = None) -> FeatureScores:
    """Feature norm, familiarity and mental-model uncertainty (Pearce, Brintrup & Zhu 2021).

    "Understanding softmax confidence and uncertainty": for final-layer features
    z (one row of ``features``, shape (N, D)) and the class weight matrix W
    (shape (K, D), one row per class),

    - norm ``||z||``,
    - familiarity ``max_k cos(w_k, z) = max_k w_k . z / (||w_k|| ||z||)``,
    - uncertainty ``U = -1 / (1 + (K - 1) exp(-||z|| (1/(K-1) + max_k cos)))``:
      higher means more uncertain; U lies in (-1, 0) and is -1/K for z = 0.

    A zero feature row has no direction: its familiarity is defined as 0 and
    its uncertainty is then -1/K. A class row of W with zero norm is an error.
    The cosines come from BLAS matrix products over blocks of rows
    (``chunk_size`` rows, default so that a block holds about 2^20 values):
    no N x K matrix is formed.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> features = np.array([[3.0, 0.0], [0.5, 0.5]])
    >>> weights = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> fs = calibkit.feature_scores(features, weights)
    >>> fs.norm.round(4), fs.familiarity.round(4)
    (array([3.    , 0.7071]), array([1.    , 0.7071]))
    """
    F = np.asarray(features)
    W = np.asarray(weights)
    for name, a in (("features", F), ("weights", W)):
        if a.dtype == object or a.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be an array of floats, got dtype {a.dtype}")
    if F.ndim != 2 or F.shape[0] == 0 or F.shape[1] == 0:
        raise ValueError(f"features must have shape (N, D) with N, D >= 1, got shape {F.shape}")
    if W.ndim != 2 or W.shape[0] < 2:
        raise ValueError(f"weights must have shape (K, D) with K >= 2 classes, got shape {W.shape}")
    if W.shape[1] != F.shape[1]:
        raise ValueError(f"weights has shape {W.shape} but features has D={F.shape[1]} columns: "
                         "weights must be (K, D), the final layer's class weight matrix")
    dtype = np.float64
    Wd = np.asarray(W, dtype=dtype)
    if not np.isfinite(Wd).all():
        i, j = np.argwhere(~np.isfinite(Wd))[0]
        raise ValueError(f"weights[{i}, {j}] = {float(Wd[i, j])!r} is not finite")
    w_norm = np.sqrt(np.einsum("kd,kd->k", Wd, Wd))
    if (w_norm == 0).any():
        raise ValueError(f"weights[{int(np.argmax(w_norm == 0))}] has zero norm: a class needs a direction")
    Wu = Wd / w_norm[:, None]
    N, D = F.shape
    K = W.shape[0]
    if chunk_size is None:
        chunk_size = max(1, (1 << 20) // max(K, D))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    norm = np.empty(N)
    familiarity = np.empty(N)
    for start in range(0, N, chunk_size):
        block = np.asarray(F[start:start + chunk_size], dtype=dtype)
        if not np.isfinite(block).all():
            i, j = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(f"features[{start + i}, {j}] = {float(block[i, j])!r} is not finite")
        n = np.sqrt(np.einsum("nd,nd->n", block, block))
        best = (block @ Wu.T).max(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(n > 0, best / np.where(n > 0, n, 1.0), 0.0)
        norm[start:start + len(block)] = n
        familiarity[start:start + len(block)] = np.clip(cos, -1.0, 1.0)
    uncertainty = -1.0 / (1.0 + (K - 1) * np.exp(-norm * (1.0 / (K - 1) + familiarity)))
    return FeatureScores(norm=norm, familiarity=familiarity, uncertainty=uncertainty)


# ---------------------------------------------------------------------------------------------
# Ensembles and MC dropout


@dataclass(frozen=True)
class Decomposition:
    """Predictive uncertainty of S stochastic passes (Gal & Ghahramani 2016; Depeweg et al. 2018).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> passes = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.7, 0.3], [0.2, 0.8]]])  # (S=2, N=2, K=2)
    >>> u = calibkit.decompose(passes)
    >>> np.allclose(u.total, u.aleatoric + u.epistemic)
    True
    """

    mean: np.ndarray        #: (N, K) predictive mean E_s[p_s]
    prediction: np.ndarray  #: (N,) argmax of the mean (first of ties)
    total: np.ndarray       #: (N,) H[E p], the total predictive entropy
    aleatoric: np.ndarray   #: (N,) E[H p], the expected entropy
    epistemic: np.ndarray   #: (N,) total - aleatoric: the mutual information (BALD), clipped at 0
    variance: np.ndarray    #: (N,) variance over passes of p_s[prediction] (divides by S)


def _raise_member_status(status, K, name):
    code, row, col, value = status
    if code == 0:
        return
    s, k = divmod(col, K)
    raise_for_status((code, row, k, value), scores_name=f"{name}[{s}]")


def decompose(samples: ArrayLike, *, from_logits: bool = False, backend: Backend = "auto") -> Decomposition:
    """Split the predictive uncertainty of an ensemble or of MC-dropout passes.

    For S members' probabilities p_s (softmax of logits with ``from_logits=True``)
    of shape (S, N, K):

    - mean ``p̄ = (1/S) sum_s p_s``, prediction ``argmax_k p̄_k``;
    - total ``H[p̄] = -sum_k p̄_k log p̄_k``;
    - aleatoric ``E[H] = (1/S) sum_s H[p_s]`` (from logits, each H[p_s] as in
      :func:`entropy`: finite and in [0, log K] for any finite logits);
    - epistemic ``H[p̄] - E[H]``, the mutual information between the label and
      the model (BALD; Houlsby et al. 2011, Gal & Ghahramani 2016), >= 0 by
      concavity of H (clipped at 0 against rounding);
    - variance ``(1/S) sum_s (p_s[c] - p̄_c)^2`` of the predicted class c.

    One pass over the samples, row by row (each member's softmax lives in a
    K-length buffer): no S x N x K array is formed, and any strides, dtypes
    and memory maps are read in place. Use :class:`EnsembleAccumulator` when
    the passes arrive one at a time.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> passes = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.7, 0.3], [0.2, 0.8]]])  # (S=2, N=2, K=2)
    >>> u = calibkit.decompose(passes)
    >>> u.prediction
    array([0, 1])
    >>> u.total.round(4), u.aleatoric.round(4), u.epistemic.round(4)
    (array([0.5004, 0.673 ]), array([0.468 , 0.5867]), array([0.0324, 0.0863]))
    """
    from_logits = check_bool(from_logits, "from_logits")
    x = check_samples(samples)
    r = _backend.kernels(backend).ensemble_decompose(x, from_logits)
    _raise_member_status(r["status"], x.shape[2], "samples")
    return Decomposition(mean=r["mean"], prediction=r["prediction"], total=r["total"], aleatoric=r["aleatoric"],
                         epistemic=r["epistemic"], variance=r["variance"])


class EnsembleAccumulator:
    """:func:`decompose` for passes that arrive one at a time (each of shape (N, K)).

    Keeps the running sum of the members' probabilities, their running sum of
    squared deviations (Welford's update, so the variance has no cancellation)
    and the sum of their entropies: 2 N K + N float64 values, whatever S is.
    ``compute()`` gives the same :class:`Decomposition` as ``decompose`` on the
    stacked passes: mean, prediction and entropies equal to the last bit (the
    same arithmetic in the same order); the variance to rounding (Welford's
    update here, two passes over the predicted class in ``decompose``).

    Examples
    --------
    >>> acc = EnsembleAccumulator(from_logits=True)
    >>> for _ in range(20):
    ...     acc.update(model_with_dropout(x))   # doctest: +SKIP
    >>> d = acc.compute()                      # doctest: +SKIP
    """

    def __init__(self, *, from_logits: bool = False, backend: Backend = "auto"):
        self.from_logits = check_bool(from_logits, "from_logits")
        self.backend = _backend.resolve_backend(backend)
        self.reset()

    def reset(self) -> None:
        """Forget every pass."""
        self._sum = self._m2 = self._entropy = None
        self.count = 0

    def update(self, member: ArrayLike) -> "EnsembleAccumulator":
        """Add one pass (N, K). A pass with bad values raises and leaves the state unchanged."""
        m = check_scores(member, "member")
        if m.ndim != 2:
            raise ValueError(f"member must have shape (N, K), got shape {m.shape}")
        if self._sum is None:
            N, K = m.shape
            self._sum, self._m2, self._entropy = np.zeros((N, K)), np.zeros((N, K)), np.zeros(N)
        elif m.shape != self._sum.shape:
            raise ValueError(f"member has shape {m.shape} but earlier passes had shape {self._sum.shape}")
        status = _backend.kernels(self.backend).ensemble_update(m, self.from_logits, self.count, self._sum,
                                                                self._m2, self._entropy)
        raise_for_status(status, scores_name="member")
        self.count += 1
        return self

    def compute(self) -> Decomposition:
        """The decomposition of the passes so far."""
        if self.count == 0:
            raise ValueError("no passes yet: call update(member) first")
        inv = 1.0 / self.count
        mean = self._sum * inv
        prediction = np.argmax(mean, axis=1)
        total = _backend.kernels(self.backend).row_scores(mean, False, 1.0, 1 << _KINDS["entropy"])[_KINDS["entropy"]]
        aleatoric = self._entropy * inv
        variance = self._m2[np.arange(mean.shape[0]), prediction] * inv
        return Decomposition(mean=mean, prediction=prediction, total=total, aleatoric=aleatoric,
                             epistemic=np.maximum(total - aleatoric, 0.0), variance=variance)

    def __repr__(self) -> str:
        shape = None if self._sum is None else self._sum.shape
        return f"EnsembleAccumulator(count={self.count}, shape={shape}, from_logits={self.from_logits})"


# ---------------------------------------------------------------------------------------------
# Confidence loss (Lee et al. 2018)


@dataclass(frozen=True)
class ConfidenceLoss:
    """Value and gradients of the confidence loss.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> r = calibkit.confidence_loss([[2.0, 0.0]], [0], [[0.0, 0.0]], beta=1.0)
    >>> round(r.value, 4), r.kl
    (0.1269, 0.0)
    """

    value: float           #: nll + beta * kl
    nll: float             #: mean NLL of the in-distribution rows
    kl: float              #: mean KL(U || softmax) of the out-of-distribution rows
    grad_in: np.ndarray    #: dL/d logits_in, shape (N_in, K)
    grad_out: np.ndarray   #: dL/d logits_out, shape (N_out, K)


def confidence_loss(logits_in: ArrayLike, labels: ArrayLike, logits_out: ArrayLike, *, beta: float = 1.0,
                    backend: Backend = "auto") -> ConfidenceLoss:
    """Confidence loss of Lee et al. (2018), with its gradients, in one fused pass.

    "Training confidence-calibrated classifiers for detecting out-of-distribution
    samples" (ICLR 2018), eq. (1) without the GAN term:

        L = (1/N_in) sum_i [LSE(z_i) - z_{i, y_i}] + beta (1/N_out) sum_j KL(U || softmax(z_j))

    with KL(U || p) = -log K - (1/K) sum_k log p_k, and

        dL/dz_i = (softmax(z_i) - onehot(y_i)) / N_in,   dL/dz_j = beta (softmax(z_j) - 1/K) / N_out.

    Every row is shifted by its maximum, so any logit size is stable. The
    gradients have the dtype of the logits (float32 for float16/float32 input,
    float64 for float64), ready to hand back to a training framework
    (``torch.from_numpy(result.grad_in)``).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits_in = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    >>> logits_out = np.array([[1.0, 1.0, 3.0]])
    >>> r = calibkit.confidence_loss(logits_in, np.array([0, 1]), logits_out, beta=0.5)
    >>> round(r.value, 4), round(r.nll, 4), round(r.kl, 4)
    (0.5978, 0.3606, 0.4743)
    >>> r.grad_in.shape, r.grad_out.shape
    ((2, 3), (1, 3))
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (beta >= 0 and math.isfinite(beta)):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    zi = check_scores(logits_in, "logits_in")
    zo = check_scores(logits_out, "logits_out")
    if zi.ndim != 2 or zo.ndim != 2:
        raise ValueError(f"logits_in and logits_out must have shape (N, K), got {zi.shape} and {zo.shape}")
    if zi.shape[1] != zo.shape[1]:
        raise ValueError(f"logits_in has K={zi.shape[1]} classes but logits_out has K={zo.shape[1]}")
    if zi.dtype != zo.dtype:
        common = np.result_type(zi.dtype, zo.dtype)
        zi, zo = zi.astype(common), zo.astype(common)
    y = check_labels(labels, zi.shape[0])
    r = _backend.kernels(backend).confidence_loss(zi, y, zo, float(beta))
    raise_for_status(r["status_in"], n_classes=zi.shape[1], scores_name="logits_in")
    raise_for_status(r["status_out"], scores_name="logits_out")
    return ConfidenceLoss(value=r["nll"] + float(beta) * r["kl"], nll=r["nll"], kl=r["kl"], grad_in=r["grad_in"],
                          grad_out=r["grad_out"])


__all__ = [
    "ConfidenceLoss", "Decomposition", "EnsembleAccumulator", "FeatureScores", "confidence_loss", "decompose",
    "energy", "entropy", "feature_scores", "kl_to_uniform", "logit_norm", "margin", "max_probability",
    "uncertainty_scores",
]
