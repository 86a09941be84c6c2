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
from ._dense import as_dense, check_class_axis
from ._validation import (
    _float_array, _in_place, check_bool, check_labels, check_samples, check_scores, raise_for_status,
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
                       backend: Backend = "auto", axis: int = 1,
                       out: dict[str, np.ndarray] | None = None) -> dict[str, FloatArray]:
    """Several per-sample scores from one pass over ``scores``.

    Dense predictions (a segmentation model's (N, K, H, W) logits, or any
    ``(N, K, *spatial)`` array) give one map of shape ``(N, *spatial)`` per score:
    every pixel is a row of K class scores. The class axis is read with its
    stride, piece by piece (``calibkit._dense``): no transposed or flattened
    copy of the scores is made, and each pixel's value is computed exactly as
    for that row of the flattened (N * H * W, K) copy (per-row results: equal
    to the last bit). The only memory allocated is the maps themselves (none
    when ``out`` holds them all) and per-piece temporaries.

    Parameters
    ----------
    scores : array-like of shape (N, K), ``(N, K, *spatial)`` or ``(N, *spatial, K)``
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
    axis : int, default 1
        The class axis: 1 for ``(N, K, *spatial)`` (PyTorch's layout; for 2-D
        input 1 and -1 are the same), -1 for channel-last ``(N, *spatial, K)``.
    out : dict of {kind: ndarray}, optional
        Caller-supplied maps of shape ``(N, *spatial)`` (float dtype, writeable,
        any strides, not overlapping ``scores`` or each other) for some or all
        of ``kinds``; each is written piece by piece (values cast to its dtype,
        e.g. float32 to halve a large map) and returned in the result. Kinds
        without an entry are allocated (float64).

    Returns
    -------
    dict
        ``{kind: float64 array of shape (N,)}``, or of shape ``(N, *spatial)`` for
        dense input (the arrays of ``out`` where given).

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
    mask = 0
    for kind in kinds:
        mask |= 1 << _KINDS[kind]
    if _is_dense_call(scores, out):
        return _dense_row_scores(scores, kinds, from_logits, t, normalize, backend, axis, out, mask)
    s = check_scores(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N, K), got shape {s.shape}")
    check_class_axis(axis, 2)
    r = _backend.kernels(backend).row_scores(s, from_logits, 1.0 / t, mask)
    raise_for_status(r["status"], scores_name="scores")
    out = {kind: r[_KINDS[kind]] for kind in kinds}
    if normalize and "entropy" in out:
        out["entropy"] = out["entropy"] / math.log(s.shape[1])
    return out


# ---------------------------------------------------------------------------------------------
# Dense (N, K, *spatial) input: per-pixel maps written piece by piece


def _is_dense_call(scores, out) -> bool:
    """The dense path is taken for scores of ndim > 2 or when ``out=`` is given."""
    return out is not None or np.ndim(scores) > 2


def _write_rows(dest, start, values, n_row_axes):
    """Write ``values`` ``(m, *trailing)`` into rows [start, start + m) of ``dest`` (row_shape + trailing).

    Rows are numbered in C order over the first ``n_row_axes`` axes of ``dest`` (the order of the dense
    adapter's pieces); ``dest`` may have any strides: no copy of it is made.
    """
    m = values.shape[0]
    if m == 0:
        return
    if n_row_axes == 1:
        dest[start:start + m] = values
        return
    if dest.flags.c_contiguous:
        dest.reshape((-1,) + dest.shape[n_row_axes:])[start:start + m] = values
        return
    inner = math.prod(dest.shape[1:n_row_axes])
    stop = start + m
    pos = 0
    while start < stop:
        i, local = divmod(start, inner)
        take = min(inner - local, stop - start)
        _write_rows(dest[i], local, values[pos:pos + take], n_row_axes - 1)
        start += take
        pos += take


def _check_out_map(out, shape, name, input_, input_name, kinds="f", what="a float array"):
    """Validate a caller-supplied output map: ndarray of ``shape``, dtype kind in ``kinds``, writeable, no overlap."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array of shape {shape}, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (N, *spatial), got shape {out.shape}")
    if out.dtype.kind not in kinds:
        raise TypeError(f"{name} must be {what}, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only: a writeable array is needed")
    if np.shares_memory(out, input_):
        raise ValueError(f"{name} overlaps {input_name}: the output would be written over the input it is "
                         "computed from")
    return out


def _check_outs_disjoint(outs: dict, name="out"):
    items = list(outs.items())
    for i, (ka, a) in enumerate(items):
        for kb, b in items[i + 1:]:
            if np.shares_memory(a, b):
                raise ValueError(f"{name}[{ka!r}] and {name}[{kb!r}] overlap: each map needs its own memory")


def _one_out(kind, out):
    """The ``out=`` of a single-score function as uncertainty_scores' dict (an array is required)."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array of shape (N, *spatial), got {type(out).__name__}")
    return {kind: out}


def _dense_row_scores(scores, kinds, from_logits, t, normalize, backend, axis, out, bits):
    """uncertainty_scores on ``(N, K, *spatial)`` input (or with out=): maps written piece by piece."""
    if out is not None:
        if not isinstance(out, dict):
            raise TypeError(f"out must be a dict {{kind: array of shape (N, *spatial)}}, got {type(out).__name__} "
                            "(the single-score functions take an array)")
        extra = [k for k in out if k not in kinds]
        if extra:
            raise ValueError(f"out has a map for {extra[0]!r}, which is not among kinds {kinds}")
        out = {k: out[k] for k in kinds if k in out and out[k] is not None}
    else:
        out = {}
    kernels = _backend.kernels(backend)
    primary = next(iter(out), None)
    d = as_dense(scores, axis=axis, out=None if primary is None else out[primary], name="scores")
    for k, o in out.items():
        if k != primary:
            _check_out_map(o, d.row_shape, f"out[{k!r}]", d.scores, "scores")
    _check_outs_disjoint(out)
    maps = {k: out[k] if k in out else np.empty(d.row_shape) for k in kinds}
    n_axes = len(d.row_shape)
    log_k = math.log(d.n_classes)
    for p in d.pieces():
        r = kernels.row_scores(p.scores, from_logits, 1.0 / t, bits)
        d.raise_for_status(r["status"], p, scores_name="scores")
        for k in kinds:
            v = r[_KINDS[k]]
            if normalize and k == "entropy":
                v = v / log_k
            if k == primary and p.out is not None:
                p.out[...] = v
            else:
                _write_rows(maps[k], p.offset, v, n_axes)
    return maps


def max_probability(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0,
                    backend: Backend = "auto", axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
    """Maximum softmax probability max_k p_k (Hendrycks & Gimpel 2017): a confidence.

    From logits z: 1 / sum_k exp((z_k - max z) / T), without forming the softmax.

    Dense input ``(N, K, *spatial)`` with the class axis at ``axis`` (1, or -1
    for channel-last) gives a map of shape ``(N, *spatial)``, read in place and
    equal to the last bit to the function on the flattened (N * H * W, K)
    copy. ``out``: a caller-supplied writeable float array of that shape (any
    strides, not overlapping the input), written piece by piece and returned;
    without it the map is allocated once (float64).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.max_probability(logits, from_logits=True).round(4)
    array([0.659 , 0.3672])
    """
    return uncertainty_scores(scores, ("max_probability",), from_logits=from_logits, temperature=temperature,
                              backend=backend, axis=axis, out=_one_out("max_probability", out))["max_probability"]


def margin(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0,
           backend: Backend = "auto", axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
    """Top-1 minus top-2 probability, p_(1) - p_(2) (0 when the two largest are tied): a confidence.

    Dense input ``(N, K, *spatial)`` with the class axis at ``axis`` (1, or -1
    for channel-last) gives a map of shape ``(N, *spatial)``, read in place and
    equal to the last bit to the function on the flattened (N * H * W, K)
    copy. ``out``: a caller-supplied writeable float array of that shape (any
    strides, not overlapping the input), written piece by piece and returned;
    without it the map is allocated once (float64).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.margin(logits, from_logits=True).round(4)
    array([0.4166, 0.0349])
    """
    return uncertainty_scores(scores, ("margin",), from_logits=from_logits, temperature=temperature,
                              backend=backend, axis=axis, out=_one_out("margin", out))["margin"]


def entropy(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0, normalize: bool = False,
            backend: Backend = "auto", axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
    """Predictive entropy H(p) = -sum_k p_k log p_k (natural log; 0 log 0 = 0): an uncertainty.

    From logits, H = log s0 - sum_k e^{t_k} t_k / s0 with t = max((z - max z) / T, x_min)
    and s0 = sum_k e^{t_k}: the row is shifted by its maximum before any product,
    and x_min (-708 for float64 input, -87 for float16/32, where the kernels' exp
    clamps) keeps every product e^t t finite, so H is finite and in [0, log K]
    for any finite logits, even near the largest float (a clamped element adds
    at most 2.4e-305, resp. 1.5e-36, to H). The result is clipped to
    [0, log K]. ``normalize=True`` divides by log K, the entropy of the uniform
    distribution.

    Dense input ``(N, K, *spatial)`` with the class axis at ``axis`` (1, or -1
    for channel-last) gives a map of shape ``(N, *spatial)``, read in place and
    equal to the last bit to the function on the flattened (N * H * W, K)
    copy. ``out``: a caller-supplied writeable float array of that shape (any
    strides, not overlapping the input), written piece by piece and returned;
    without it the map is allocated once (float64).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.entropy(logits, from_logits=True, normalize=True).round(4)
    array([0.7707, 0.997 ])
    """
    return uncertainty_scores(scores, ("entropy",), from_logits=from_logits, temperature=temperature,
                              normalize=normalize, backend=backend, axis=axis,
                              out=_one_out("entropy", out))["entropy"]


def energy(logits: ArrayLike, *, temperature: float = 1.0, backend: Backend = "auto", axis: int = 1,
           out: np.ndarray | None = None) -> FloatArray:
    """Free energy E(z) = -T log sum_k exp(z_k / T) (Liu et al. 2020, "Energy-based OOD detection").

    Lower energy means more in-distribution: use ``-energy(z)`` as an OOD score.

    Dense input ``(N, K, *spatial)`` with the class axis at ``axis`` (1, or -1
    for channel-last) gives a map of shape ``(N, *spatial)``, read in place and
    equal to the last bit to the function on the flattened (N * H * W, K)
    copy. ``out``: a caller-supplied writeable float array of that shape (any
    strides, not overlapping the input), written piece by piece and returned;
    without it the map is allocated once (float64).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.energy(logits).round(4)
    array([-2.417 , -1.5019])
    """
    return uncertainty_scores(logits, ("energy",), from_logits=True, temperature=temperature,
                              backend=backend, axis=axis, out=_one_out("energy", out))["energy"]


def logit_norm(logits: ArrayLike, *, backend: Backend = "auto", axis: int = 1,
               out: np.ndarray | None = None) -> FloatArray:
    """Euclidean norm of the logit vector, ||z||_2 (a confidence; Wei et al. 2022).

    Dense input ``(N, K, *spatial)`` with the class axis at ``axis`` (1, or -1
    for channel-last) gives a map of shape ``(N, *spatial)``, read in place and
    equal to the last bit to the function on the flattened (N * H * W, K)
    copy. ``out``: a caller-supplied writeable float array of that shape (any
    strides, not overlapping the input), written piece by piece and returned;
    without it the map is allocated once (float64).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.logit_norm(logits).round(4)
    array([2.2383, 0.7071])
    """
    return uncertainty_scores(logits, ("logit_norm",), from_logits=True, backend=backend, axis=axis,
                              out=_one_out("logit_norm", out))["logit_norm"]


def kl_to_uniform(scores: ArrayLike, *, from_logits: bool = False, temperature: float = 1.0,
                  backend: Backend = "auto", axis: int = 1, out: np.ndarray | None = None) -> FloatArray:
    """KL(U || p) = -log K - (1/K) sum_k log p_k, the divergence of p from the uniform distribution.

    The per-sample term of the confidence loss of Lee et al. (2018): 0 for a
    uniform prediction, large for a confident one (a confidence). From
    probabilities it is ``inf`` when some p_k is 0; from logits it is finite:
    log s0 - log K - mean_k(z_k - max z) / T.

    Dense input ``(N, K, *spatial)`` with the class axis at ``axis`` (1, or -1
    for channel-last) gives a map of shape ``(N, *spatial)``, read in place and
    equal to the last bit to the function on the flattened (N * H * W, K)
    copy. ``out``: a caller-supplied writeable float array of that shape (any
    strides, not overlapping the input), written piece by piece and returned;
    without it the map is allocated once (float64).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.5, 0.4, 0.3]])
    >>> calibkit.kl_to_uniform(logits, from_logits=True).round(4)
    array([0.2851, 0.0033])
    """
    return uncertainty_scores(scores, ("kl_to_uniform",), from_logits=from_logits, temperature=temperature,
                              backend=backend, axis=axis, out=_one_out("kl_to_uniform", out))["kl_to_uniform"]


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

    #: (N, K) predictive mean E_s[p_s]; for dense passes ``(N, K, *spatial)`` with the class axis where the
    #: members have it, or None (dense input without ``return_mean=True``)
    mean: np.ndarray | None
    prediction: np.ndarray  #: (N,) argmax of the mean (first of ties); ``(N, *spatial)`` for dense passes
    total: np.ndarray       #: (N,) H[E p], the total predictive entropy; ``(N, *spatial)`` for dense passes
    aleatoric: np.ndarray   #: (N,) E[H p], the expected entropy
    epistemic: np.ndarray   #: (N,) total - aleatoric: the mutual information (BALD), clipped at 0
    variance: np.ndarray    #: (N,) variance over passes of p_s[prediction] (divides by S)


def _raise_member_status(status, K, name):
    code, row, col, value = status
    if code == 0:
        return
    s, k = divmod(col, K)
    raise_for_status((code, row, k, value), scores_name=f"{name}[{s}]")


def decompose(samples: ArrayLike, *, from_logits: bool = False, backend: Backend = "auto", axis: int = 2,
              out: dict[str, np.ndarray] | None = None, return_mean: bool | None = None) -> Decomposition:
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

    Dense passes (segmentation: S passes of (N, K, H, W) logits) have shape
    ``(S, N, K, *spatial)``, the class axis at ``axis=2`` (the default, for any
    ndim; ``axis=-1`` for channel-last ``(S, N, *spatial, K)``). Every pixel is a
    row: each term is a map of shape ``(N, *spatial)``, equal to the last bit to
    ``decompose`` of the flattened (S, N * H * W, K) copy (per-row results).
    The passes are read in place, one piece of pixels at a time for all S
    members (the sample axis with its stride): no transposed or flattened copy
    is made. The mean has the shape of one member, K times a map, so for dense
    passes it is only computed with ``return_mean=True`` (else ``mean`` is
    None); ``return_mean`` is True by default for (S, N, K) input.

    ``out``: a dict of caller-supplied maps of shape ``(N, *spatial)`` for any of
    ``"total"``, ``"aleatoric"``, ``"epistemic"``, ``"variance"`` (writeable
    float arrays) and ``"prediction"`` (a writeable integer array), any
    strides, not overlapping the samples or each other; they are written
    piece by piece and returned in the :class:`Decomposition`; terms without
    an entry are allocated (float64, int64). ``out`` also works for (S, N, K)
    input (maps of shape (N,)).

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
    if out is not None or np.ndim(samples) > 3:
        return _dense_decompose(samples, from_logits, backend, axis, out, return_mean)
    x = check_samples(samples)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or int(axis) not in (2, -1):
        raise ValueError(f"axis must be 2 (or -1, the same for (S, N, K) samples: the class axis), got {axis!r}")
    if return_mean is not None:
        check_bool(return_mean, "return_mean")
    r = _backend.kernels(backend).ensemble_decompose(x, from_logits)
    _raise_member_status(r["status"], x.shape[2], "samples")
    return Decomposition(mean=None if return_mean is False else r["mean"], prediction=r["prediction"],
                         total=r["total"], aleatoric=r["aleatoric"], epistemic=r["epistemic"],
                         variance=r["variance"])


_TERMS = ("total", "aleatoric", "epistemic", "variance", "prediction")


def _dense_decompose(samples, from_logits, backend, axis, out, return_mean):
    """decompose on ``(S, N, K, *spatial)`` passes (or with out=): maps written piece by piece."""
    x = _in_place(_float_array(samples, "samples"))
    if x.ndim < 3:
        raise ValueError(f"samples must have shape (S, N, K) or (S, N, K, *spatial), got shape {x.shape}")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer (2 for (S, N, K, *spatial), -1 for channel-last), "
                        f"got {type(axis).__name__}")
    ax = int(axis) + x.ndim if axis < 0 else int(axis)
    if ax not in (2, x.ndim - 1):
        raise ValueError(f"axis must be 2 (classes third: (S, N, K, *spatial)) or -1 (channel-last: "
                         f"(S, N, *spatial, K)) for samples of ndim {x.ndim}, got {axis}")
    S = x.shape[0]
    if S == 0:
        raise ValueError(f"samples is empty: got shape {x.shape}")
    return_mean = (x.ndim == 3) if return_mean is None else check_bool(return_mean, "return_mean")
    d = as_dense(x[0], axis=ax - 1, name="samples")
    K, row_shape = d.n_classes, d.row_shape
    if out is None:
        out = {}
    elif not isinstance(out, dict):
        raise TypeError(f"out must be a dict {{term: array of shape (N, *spatial)}} for terms among {_TERMS}, "
                        f"got {type(out).__name__}")
    for k, o in out.items():
        if k not in _TERMS:
            raise ValueError(f"out has a map for {k!r}; the terms are {_TERMS}")
        if k == "prediction":
            _check_out_map(o, row_shape, "out['prediction']", x, "samples", "iu", "an integer array")
        else:
            _check_out_map(o, row_shape, f"out[{k!r}]", x, "samples")
    _check_outs_disjoint(out)
    maps = {k: out[k] if k in out else np.empty(row_shape, np.int64 if k == "prediction" else np.float64)
            for k in _TERMS}
    mean_rows = np.empty(row_shape + (K,)) if return_mean else None
    n_axes = len(row_shape)
    kernels = _backend.kernels(backend)
    for p in d.pieces():
        # the piece is a strided view of member 0: the same rows of every member are that view moved along S
        v = np.lib.stride_tricks.as_strided(p.scores, shape=(S,) + p.scores.shape,
                                            strides=(x.strides[0],) + p.scores.strides, writeable=False)
        r = kernels.ensemble_decompose(v, from_logits)
        code, row, col, value = r["status"]
        if code != 0:
            s, k = divmod(int(col), K) if col >= 0 else (0, -1)
            d.raise_for_status((code, row, k, value), p, scores_name=f"samples[{s}]")
        for k in _TERMS:
            _write_rows(maps[k], p.offset, r[k], n_axes)
        if mean_rows is not None:
            _write_rows(mean_rows, p.offset, r["mean"], n_axes)
    mean = None if mean_rows is None else np.moveaxis(mean_rows, -1, ax - 1)
    return Decomposition(mean=mean, **maps)


class EnsembleAccumulator:
    """:func:`decompose` for passes that arrive one at a time (each of shape (N, K)).

    Keeps the running sum of the members' probabilities, their running sum of
    squared deviations (Welford's update, so the variance has no cancellation)
    and the sum of their entropies: 2 N K + N float64 values, whatever S is.
    ``compute()`` gives the same :class:`Decomposition` as ``decompose`` on the
    stacked passes: mean, prediction and entropies equal to the last bit (the
    same arithmetic in the same order); the variance to rounding (Welford's
    update here, two passes over the predicted class in ``decompose``).

    Dense passes (a segmentation model's (N, K, H, W) outputs under MC dropout): ``update(member, axis=1)``
    takes members of shape ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``), read in
    place piece by piece, and ``compute()`` returns maps of shape ``(N, *spatial)`` (and the mean in the
    members' layout). The state is then 2 N K prod(spatial) + N prod(spatial) float64 values (the running sums
    of every pixel's class probabilities: what the decomposition needs). A dense member is checked for bad
    values in a first read before the state is touched (a second read of the member), so a bad pass still
    leaves the state unchanged.

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
        self._dense = None  # (row_shape, class axis) of dense members
        self.count = 0

    def update(self, member: ArrayLike, *, axis: int = 1) -> "EnsembleAccumulator":
        """Add one pass (N, K), or a dense pass ``(N, K, *spatial)`` / ``(N, *spatial, K)`` with its class axis
        at ``axis``. A pass with bad values raises and leaves the state unchanged."""
        if np.ndim(member) > 2 or self._dense is not None:
            return self._update_dense(member, axis)
        check_class_axis(axis, 2)
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

    def _update_dense(self, member, axis):
        d = as_dense(member, axis=axis, name="member")
        K = d.n_classes
        if self._sum is None:
            n = d.n_rows
            state = (np.zeros((n, K)), np.zeros((n, K)), np.zeros(n))
        else:
            state = None
            if self._dense is None or (d.row_shape, d.axis) != self._dense or K != self._sum.shape[1]:
                before = self._sum.shape if self._dense is None else self._dense[0]
                raise ValueError(f"member has shape {d.scores.shape} (classes on axis {axis}) but earlier passes "
                                 f"had {'shape ' + str(before) if self._dense is None else 'rows ' + str(before)} "
                                 f"with {self._sum.shape[1]} classes")
        kernels = _backend.kernels(self.backend)
        for p in d.pieces():  # first read: every value checked before the state changes
            status = kernels.row_scores(p.scores, self.from_logits, 1.0, 1 << _KINDS["max_probability"])["status"]
            d.raise_for_status(status, p, scores_name="member")
        if state is not None:
            self._sum, self._m2, self._entropy = state
            self._dense = (d.row_shape, d.axis)
        for p in d.pieces():
            a, b = p.offset, p.offset + p.n_rows
            status = kernels.ensemble_update(p.scores, self.from_logits, self.count, self._sum[a:b], self._m2[a:b],
                                             self._entropy[a:b])
            d.raise_for_status(status, p, scores_name="member")
        self.count += 1
        return self

    def compute(self) -> Decomposition:
        """The decomposition of the passes so far (maps of shape ``(N, *spatial)`` for dense passes)."""
        if self.count == 0:
            raise ValueError("no passes yet: call update(member) first")
        if self._dense is not None:
            row_shape, ax = self._dense
            flat = self._compute_rows()
            K = self._sum.shape[1]
            return Decomposition(mean=np.moveaxis(flat.mean.reshape(row_shape + (K,)), -1, ax),
                                 **{t: getattr(flat, t).reshape(row_shape) for t in _TERMS})
        return self._compute_rows()

    def _compute_rows(self) -> Decomposition:
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
