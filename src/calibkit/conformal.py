"""Conformal prediction sets for classifiers and their coverage metrics.

Split conformal prediction (Vovk, Gammerman & Shafer 2005; Papadopoulos et al. 2002): a non-conformity score
s(x, y) is computed for each of n calibration pairs (x_i, y_i); the threshold q is the
ceil((n + 1)(1 - alpha))-th smallest of them (+inf when that rank exceeds n), and the prediction set of a new x
is {k : s(x, k) <= q}. When the calibration and test pairs are exchangeable, the set contains the true label with
probability at least 1 - alpha, and (scores without ties) at most 1 - alpha + 1 / (n + 1).

Scores (p the softmax of the logits, or the probabilities as given; classes ranked by p descending, ties by
class index ascending; r the 0-based rank of class k, p_(j) the probability at rank j, C_r = p_(0) + ... + p_(r)
summed in rank order; U a uniform of the row, 0 unless ``randomized=True``):

- ``"lac"`` / ``"thr"``: 1 - p_k (Sadinle, Lei & Wasserman 2019; torchcp's THR / LAC);
- ``"aps"``: C_r - U p_(r) (Romano, Sesia & Candes 2020, "Classification with valid and adaptive coverage");
- ``"raps"``: C_r - U p_(r) + penalty max(0, r + 1 - kreg) (Angelopoulos, Bates, Malik & Jordan 2021,
  "Uncertainty sets for image classifiers using conformal prediction");
- ``"saps"``: (1 - U) p_(0) at r = 0 and p_(0) + weight (r - U) at r >= 1 (Huang et al. 2024, "Conformal
  prediction for deep classifier via label ranking").

These are torchcp's formulas (``torchcp.classification.score``), with one difference: torchcp's SAPS gives the
top-ranked calibration label the score U p_(0) (0 when not randomized) but the top-ranked class of a test row
(1 - U) p_(0) (p_(0) when not randomized); here both are (1 - U) p_(0), the same function at calibration and at
prediction (which the coverage guarantee needs). With ``randomized=True`` the distribution of every score is the
same as torchcp's.

The kernels (C++ and Numba) compute the softmax and the scores in one pass per row, without an N x K temporary.
The cumulative scores never decrease along the ranks, so a set is found by popping a heap of the row's classes
only until the score passes the largest threshold (O(K + m log K) for a set of m classes), not by a full sort.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._dense import PIECE_ROWS, as_dense, check_class_axis
from ._validation import MAX_CLASSES, _as_array, check_bool, check_choice, check_labels, check_scores, raise_for_status

__all__ = [
    "ConformalAccumulator", "ConformalClassifier", "ConformalMetrics", "average_set_size",
    "class_conditional_coverage_gap", "conformal_quantile", "coverage", "size_stratified_coverage",
]

SCORES = ("lac", "thr", "aps", "raps", "saps")
_KIND = {"lac": 0, "thr": 0, "aps": 1, "raps": 2, "saps": 3}
#: Largest ``kreg`` accepted (the kernels' bound; any value >= the class count acts as the class count).
MAX_KREG = 1 << 40
#: ``format`` / ``version`` of :meth:`ConformalClassifier.to_dict`.
FORMAT, FORMAT_VERSION = "calibkit.conformal", 1
#: The set-size strata of :func:`size_stratified_coverage` by default (Angelopoulos et al. 2021; torchcp's SSCV).
DEFAULT_STRATA = ((0, 1), (2, 3), (4, 10), (11, 100), (101, 1000))


def _check_alpha(alpha):
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _rank(n, alpha):
    """ceil((n + 1)(1 - alpha)), computed as torchcp computes it (float64 arithmetic)."""
    return math.ceil((n + 1) * (1 - alpha))


def conformal_quantile(scores: ArrayLike, alpha: float) -> float:
    """The split-conformal threshold: the ceil((n + 1)(1 - alpha))-th smallest of n scores.

    The rank is computed in float64 as ``math.ceil((n + 1) * (1 - alpha))`` (as torchcp's
    ``calculate_conformal_value`` does); when it exceeds n (too few scores for this alpha, n = 0 included)
    the threshold is +inf: every class enters every set.

    Parameters
    ----------
    scores : array-like of shape (n,)
        Non-conformity scores of the calibration labels (finite; may be empty).
    alpha : float
        Miscoverage level in (0, 1).

    Returns
    -------
    float

    Examples
    --------
    >>> import calibkit
    >>> calibkit.conformal_quantile([0.1, 0.4, 0.2, 0.3], alpha=0.5)  # rank ceil(5 * 0.5) = 3
    0.3
    >>> calibkit.conformal_quantile([0.1, 0.4], alpha=0.1)  # rank 3 > 2
    inf
    """
    alpha = _check_alpha(alpha)
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must have shape (n,), got shape {s.shape}")
    if not np.isfinite(s).all():
        i = int(np.argmin(np.isfinite(s)))
        raise ValueError(f"scores[{i}] = {float(s[i])!r} is not finite (NaN and inf are not accepted)")
    k = _rank(s.size, alpha)
    if k > s.size:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


def _check_sets(sets, name="sets"):
    a = np.asarray(sets)
    if a.ndim != 2:
        raise ValueError(f"{name} must be an (N, K) boolean mask, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one row is needed")
    if a.dtype != np.bool_:
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a boolean mask (or 0/1), got dtype {a.dtype}")
        bad = ~((a == 0) | (a == 1))
        if bad.any():
            i, k = np.unravel_index(int(np.argmax(bad)), a.shape)
            raise ValueError(f"{name}[{i}, {k}] = {a[i, k].item()!r} is not 0/1 or a boolean")
        a = a.astype(np.bool_)
    return a


def _check_set_labels(sets, labels):
    y = check_labels(labels, sets.shape[0])
    K = sets.shape[1]
    bad = (y < 0) | (y >= K)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels[{i}] = {int(y[i])} is out of range for n_classes={K}")
    return y


def _is_dense(a, mask, ignore_index):
    return mask is not None or ignore_index is not None or np.ndim(a) > 2


def _set_counts(sets, labels, axis, mask, ignore_index, *, need_labels=True):
    """Per-class and per-size counts of the counted pixels of dense (or masked) sets.

    Returns (class_count, class_covered, size_count, size_covered) as int64 arrays of K, K, K+1, K+1 entries
    (the class arrays are None without labels). Reads ``sets`` in blocks of whole images along axis 0 (at most
    about ``PIECE_ROWS`` pixels each): the temporaries are O(block), never a flattened copy of the sets.
    """
    s = sets if isinstance(sets, np.ndarray) else _as_array(sets, "sets")
    if s.ndim < 2:
        raise ValueError(f"sets must be an (N, K) or (N, K, *spatial) boolean mask, got shape {s.shape}")
    ax = check_class_axis(axis, s.ndim)
    if s.dtype != np.bool_ and (s.dtype == object or s.dtype.kind not in "iuf"):
        raise TypeError(f"sets must be a boolean mask (or 0/1), got dtype {s.dtype}")
    K = s.shape[ax]
    row_shape = s.shape[:ax] + s.shape[ax + 1:]
    if 0 in s.shape:
        raise ValueError(f"sets is empty: got shape {s.shape}")

    def same_shape(a, name):
        a = _as_array(a, name)
        if a.shape != row_shape:
            raise ValueError(f"{name} must have shape {row_shape} (N, *spatial) to match sets of shape {s.shape} "
                             f"with classes on axis {axis}, got shape {a.shape}")
        return a

    y = None
    if labels is not None:
        y = same_shape(labels, "labels")
        if y.dtype == np.bool_:
            y = y.view(np.uint8)
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    elif need_labels:
        raise ValueError("labels are needed")
    if ignore_index is not None:
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, "
                            f"got {type(ignore_index).__name__}")
        if y is None:
            raise ValueError("ignore_index needs labels (the pixels whose label is ignore_index are not counted)")
    if mask is not None:
        mask = same_shape(mask, "mask")
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True where a pixel is counted), got dtype {mask.dtype}")
    per_image = math.prod(row_shape[1:])
    step = max(1, PIECE_ROWS // max(per_image, 1))
    class_count = np.zeros(K, np.int64)
    class_covered = np.zeros(K, np.int64)
    size_count = np.zeros(K + 1, np.int64)
    size_covered = np.zeros(K + 1, np.int64)
    for n0 in range(0, row_shape[0], step):
        blk = s[n0:n0 + step]
        if blk.dtype != np.bool_:
            bad = ~((blk == 0) | (blk == 1))
            if bad.any():
                i = tuple(int(v) for v in np.argwhere(bad)[0])
                i = (i[0] + n0,) + i[1:]
                raise ValueError(f"sets[{', '.join(map(str, i))}] = {s[i].item()!r} is not 0/1 or a boolean")
            blk = blk != 0
        keep = None if mask is None else np.asarray(mask[n0:n0 + step])
        yb = None
        if y is not None:
            yb = np.asarray(y[n0:n0 + step]).astype(np.int64, copy=False)
            if ignore_index is not None:
                k = yb != int(ignore_index)
                keep = k if keep is None else keep & k
            bad = (yb < 0) | (yb >= K)
            if keep is not None:
                bad &= keep
            if bad.any():
                i = tuple(int(v) for v in np.argwhere(bad)[0])
                i = (i[0] + n0,) + i[1:]
                raise ValueError(f"labels[{', '.join(map(str, i))}] = {int(y[i])} is out of range for "
                                 f"n_classes={K}")
        size = np.count_nonzero(blk, axis=ax)
        if keep is not None:
            size = size[keep]
        size_count += np.bincount(size.ravel(), minlength=K + 1)
        if yb is not None:
            safe = yb if keep is None else np.where(keep, yb, 0)
            covered = np.take_along_axis(blk, np.expand_dims(safe, ax), axis=ax).squeeze(ax)
            yk = yb if keep is None else yb[keep]
            ck = covered if keep is None else covered[keep]
            yk, ck = yk.ravel(), ck.ravel()
            class_count += np.bincount(yk, minlength=K)
            class_covered += np.bincount(yk[ck], minlength=K)
            size_covered += np.bincount(size.ravel()[ck], minlength=K + 1)
    n = int(size_count.sum())
    if n == 0:
        why = []
        if ignore_index is not None:
            why.append(f"labels == ignore_index={int(ignore_index)}")
        if mask is not None:
            why.append("mask is False")
        raise ValueError(f"every pixel of sets is ignored ({' or '.join(why)} everywhere): there is nothing to "
                         "evaluate")
    if y is None:
        return None, None, size_count, None
    return class_count, class_covered, size_count, size_covered


def coverage(sets: ArrayLike, labels: ArrayLike, *, axis: int = 1, ignore_index: int | None = None,
             mask: ArrayLike | None = None) -> float:
    """Empirical coverage: the fraction of rows whose set contains the label.

    coverage = (1/N) sum_i 1[y_i in C(x_i)] (torchcp's ``coverage_rate``).
    Dense sets (segmentation: one set per pixel) are a boolean array of shape ``(N, K, *spatial)`` with the class
    axis at ``axis`` (1, or -1 for channel-last ``(N, *spatial, K)``), as ``ConformalClassifier.predict_sets`` gives
    for dense scores; ``labels`` and ``mask`` have the shape ``(N, *spatial)``. Pixels whose label is
    ``ignore_index`` (e.g. 255) or whose ``mask`` is False are not counted (``mask`` and ``ignore_index`` work
    for (N, K) sets too). The class axis is read with its stride, a block of images at a time (temporaries of
    the block's pixels, never a flattened copy); the result equals the function on the flattened (pixels, K)
    copy with the ignored pixels removed, to the last bit (every sum is a count).

    Parameters
    ----------
    sets : array-like of shape (N, K) or ``(N, K, *spatial)``
        Prediction sets as a boolean mask (``ConformalClassifier.predict_sets``).
    labels : array-like of shape (N,) or ``(N, *spatial)``
        True labels in [0, K) (except ``ignore_index``).
    axis : int, default 1
        The class axis of ``sets`` (1 or -1).
    ignore_index : int, optional
        A label whose pixels are not counted.
    mask : bool array-like of the labels' shape, optional
        True where a pixel is counted.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> sets = np.array([[True, False], [True, True], [False, True]])
    >>> calibkit.coverage(sets, [0, 1, 0])
    0.6666666666666666
    """
    if _is_dense(sets, mask, ignore_index):
        class_count, class_covered, _, _ = _set_counts(sets, labels, axis, mask, ignore_index)
        return float(int(class_covered.sum()) / int(class_count.sum()))
    s = _check_sets(sets)
    check_class_axis(axis, 2)
    y = _check_set_labels(s, labels)
    return float(np.mean(s[np.arange(s.shape[0]), y]))


def average_set_size(sets: ArrayLike, *, axis: int = 1, labels: ArrayLike | None = None,
                     ignore_index: int | None = None, mask: ArrayLike | None = None) -> float:
    """Mean number of classes per prediction set (torchcp's ``average_size``).

    Dense sets (segmentation) and ignored pixels: as :func:`coverage` (``axis``, ``ignore_index``, ``mask``). ``labels`` is only needed here
    with ``ignore_index`` (to know which pixels to leave out).

    Parameters
    ----------
    sets : array-like of shape (N, K) or ``(N, K, *spatial)``
        Prediction sets as a boolean mask.
    axis : int, default 1
        The class axis of ``sets`` (1 or -1).
    ignore_index : int, optional
        A label whose pixels are not counted.
    mask : bool array-like of the labels' shape, optional
        True where a pixel is counted.
    labels : array-like of shape ``(N, *spatial)``, optional
        Only to leave out the pixels labelled ``ignore_index``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> calibkit.average_set_size(np.array([[True, False], [True, True]]))
    1.5
    """
    if _is_dense(sets, mask, ignore_index) or labels is not None:
        _, _, size_count, _ = _set_counts(sets, labels, axis, mask, ignore_index, need_labels=False)
        return float(int(np.dot(np.arange(size_count.size), size_count)) / int(size_count.sum()))
    s = _check_sets(sets)
    check_class_axis(axis, 2)
    return float(np.mean(np.count_nonzero(s, axis=1)))


def _check_strata(strata):
    try:
        pairs = [tuple(p) for p in strata]
    except TypeError:
        raise TypeError(f"strata must be a sequence of (min_size, max_size) pairs, got {strata!r}") from None
    if not pairs:
        raise ValueError("strata must not be empty")
    out = []
    for j, p in enumerate(pairs):
        if len(p) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                                  for v in p):
            raise TypeError(f"strata[{j}] must be a pair of integers (min_size, max_size), got {p!r}")
        lo, hi = int(p[0]), int(p[1])
        if not 0 <= lo <= hi:
            raise ValueError(f"strata[{j}] = {p!r} must satisfy 0 <= min_size <= max_size")
        out.append((lo, hi))
    return out


def _sscv(size_count, size_covered, alpha, strata):
    """SSCV from per-size counts (index = set size)."""
    sizes = np.arange(size_count.size)
    worst = -1.0
    for lo, hi in strata:
        m = (sizes >= lo) & (sizes <= hi)
        n = size_count[m].sum()
        if n > 0:
            worst = max(worst, abs((1 - alpha) - size_covered[m].sum() / n))
    return float(worst)


def size_stratified_coverage(sets: ArrayLike, labels: ArrayLike, alpha: float, *,
                             strata: Sequence[tuple[int, int]] = DEFAULT_STRATA, axis: int = 1,
                             ignore_index: int | None = None, mask: ArrayLike | None = None) -> float:
    """Size-stratified coverage violation (SSCV; Angelopoulos et al. 2021), as torchcp's ``SSCV``.

    SSCV = max over strata S_j with at least one set of |(1 - alpha) - coverage of the rows whose set size is
    in S_j|. Rows whose size falls in no stratum are ignored; when no stratum has a row the result is -1.0
    (torchcp's value).

    Dense sets (segmentation) and ignored pixels: as :func:`coverage` (``axis``, ``ignore_index``, ``mask``).

    Parameters
    ----------
    sets : array-like of shape (N, K)
        Prediction sets as a boolean mask.
    labels : array-like of shape (N,)
        True labels in [0, K).
    alpha : float
        The miscoverage level the sets were made for, in (0, 1).
    strata : sequence of (min_size, max_size) pairs, default ((0, 1), (2, 3), (4, 10), (11, 100), (101, 1000))
        Inclusive ranges of set sizes.
    axis : int, default 1
        The class axis of ``sets`` (1 or -1).
    ignore_index : int, optional
        A label whose pixels are not counted.
    mask : bool array-like of the labels' shape, optional
        True where a pixel is counted.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> sets = np.array([[True, False, False], [True, True, False], [True, True, True], [False, True, False]])
    >>> # sizes 1, 2, 3, 1; stratum [0, 1]: coverage 1/2, stratum [2, 3]: coverage 1/2
    >>> round(calibkit.size_stratified_coverage(sets, [0, 2, 1, 0], alpha=0.1), 6)
    0.4
    """
    if _is_dense(sets, mask, ignore_index):
        alpha = _check_alpha(alpha)
        strata = _check_strata(strata)
        _, _, size_count, size_covered = _set_counts(sets, labels, axis, mask, ignore_index)
        return _sscv(size_count, size_covered, alpha, strata)
    s = _check_sets(sets)
    check_class_axis(axis, 2)
    y = _check_set_labels(s, labels)
    alpha = _check_alpha(alpha)
    strata = _check_strata(strata)
    size = np.count_nonzero(s, axis=1)
    covered = s[np.arange(s.shape[0]), y]
    count = np.bincount(size, minlength=s.shape[1] + 1)
    hit = np.bincount(size, weights=covered, minlength=s.shape[1] + 1)
    return _sscv(count, hit, alpha, strata)


def _covgap(class_count, class_covered, alpha):
    has = class_count > 0
    return float(100.0 * np.mean(np.abs(class_covered[has] / class_count[has] - (1 - alpha))))


def class_conditional_coverage_gap(sets: ArrayLike, labels: ArrayLike, alpha: float, *, axis: int = 1,
                                   ignore_index: int | None = None, mask: ArrayLike | None = None) -> float:
    """Average class-conditional coverage gap (CovGap; Ding et al. 2023), as torchcp's ``CovGap``, in percent.

    CovGap = 100 * mean over the classes k present in ``labels`` of |coverage of the rows of class k -
    (1 - alpha)|.

    Dense sets (segmentation) and ignored pixels: as :func:`coverage` (``axis``, ``ignore_index``, ``mask``).

    Parameters
    ----------
    sets : array-like of shape (N, K)
        Prediction sets as a boolean mask.
    labels : array-like of shape (N,)
        True labels in [0, K).
    alpha : float
        The miscoverage level the sets were made for, in (0, 1).
    axis : int, default 1
        The class axis of ``sets`` (1 or -1).
    ignore_index : int, optional
        A label whose pixels are not counted.
    mask : bool array-like of the labels' shape, optional
        True where a pixel is counted.

    Returns
    -------
    float
        The gap in percent (as Ding et al. and torchcp report it).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> sets = np.array([[True, False], [False, True], [True, True], [True, False]])
    >>> round(calibkit.class_conditional_coverage_gap(sets, [0, 0, 1, 1], alpha=0.1), 6)  # |0.5-0.9|, |0.5-0.9|
    40.0
    """
    if _is_dense(sets, mask, ignore_index):
        alpha = _check_alpha(alpha)
        class_count, class_covered, _, _ = _set_counts(sets, labels, axis, mask, ignore_index)
        return _covgap(class_count, class_covered, alpha)
    s = _check_sets(sets)
    check_class_axis(axis, 2)
    y = _check_set_labels(s, labels)
    alpha = _check_alpha(alpha)
    K = s.shape[1]
    covered = s[np.arange(s.shape[0]), y]
    return _covgap(np.bincount(y, minlength=K), np.bincount(y, weights=covered, minlength=K), alpha)


def _check_real(value, name, *, positive=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


class ConformalClassifier:
    """Split-conformal prediction sets for a classifier (marginal or class-conditional / Mondrian).

    ``fit`` computes the non-conformity score of each calibration label (see :mod:`calibkit.conformal` for the
    five scores) and the threshold q = the ceil((n + 1)(1 - alpha))-th smallest of the n scores (+inf when that
    rank exceeds n); ``predict_sets`` returns {k : s(x, k) <= q}. With exchangeable data, P(y in set) >= 1 -
    alpha (Vovk et al. 2005). With ``class_conditional=True`` (Mondrian conformal prediction, Vovk et al. 2005,
    ch. 4) class k has its own threshold q_k from the n_k calibration rows labelled k, and P(y in set | y = k)
    >= 1 - alpha for every class.

    Randomization. With ``randomized=True`` each row gets one uniform U: ``fit`` creates
    ``numpy.random.default_rng(random_state)`` (a ``Generator`` passed as ``random_state`` is used as it is)
    and draws the n calibration uniforms with ``Generator.random(n)`` (one per row, in row order); every later
    ``predict_sets`` / ``set_sizes`` call draws ``Generator.random(N)`` for its N rows from the same generator,
    so a fixed seed gives the same sets for the same sequence of calls. One U per row (as Romano et al. and
    Angelopoulos et al. define it) makes the sets nested in the rank order; torchcp draws one U per (row,
    class) at prediction, which gives each class's score the same distribution.

    Parameters
    ----------
    score : {"lac", "thr", "aps", "raps", "saps"}, default "lac"
        The non-conformity score ("thr" is another name of "lac").
    alpha : float, default 0.1
        Miscoverage level in (0, 1).
    class_conditional : bool, default False
        One threshold per class (Mondrian) instead of one for all.
    randomized : bool, default False
        Randomized APS / RAPS / SAPS scores (no effect on LAC).
    penalty : float, default 0.01
        RAPS regularisation weight lambda >= 0.
    kreg : int, default 5
        RAPS: ranks from kreg + 1 on are penalised, an integer in [0, ``MAX_KREG`` = 2**40].
    weight : float, default 0.2
        SAPS rank weight > 0 (torchcp's default).
    random_state : None, int or numpy.random.Generator, default None
        Seed of the uniforms when ``randomized=True``.
    backend : {"auto", "cpp", "numba"}, default "auto"

    Attributes
    ----------
    threshold_ : float
        The marginal conformal threshold (also computed when ``class_conditional=True``, for reference).
    thresholds_ : ndarray of shape (K,)
        The threshold of each class that ``predict_sets`` uses (all equal to ``threshold_`` unless
        ``class_conditional=True``; +inf for a class with too few calibration rows).
    calibration_scores_ : ndarray of shape (n,)
        The non-conformity scores of the calibration labels.
    n_classes_ : int

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(2000, 10)) * 2
    >>> labels = np.array([rng.choice(10, p=np.exp(z) / np.exp(z).sum()) for z in logits])
    >>> cp = calibkit.ConformalClassifier(score="aps", alpha=0.1).fit(logits[:1000], labels[:1000],
    ...                                                                from_logits=True)
    >>> sets = cp.predict_sets(logits[1000:], from_logits=True)
    >>> sets.shape, sets.dtype
    ((1000, 10), dtype('bool'))
    >>> bool(abs(calibkit.coverage(sets, labels[1000:]) - 0.9) < 0.03)
    True
    """

    def __init__(self, score: str = "lac", alpha: float = 0.1, class_conditional: bool = False,
                 randomized: bool = False, penalty: float = 0.01, kreg: int = 5, weight: float = 0.2,
                 random_state: int | np.random.Generator | None = None, backend: Backend = "auto"):
        self.score = score
        self.alpha = alpha
        self.class_conditional = class_conditional
        self.randomized = randomized
        self.penalty = penalty
        self.kreg = kreg
        self.weight = weight
        self.random_state = random_state
        self.backend = backend

    def _check_params(self):
        check_choice(self.score, "score", SCORES)
        alpha = _check_alpha(self.alpha)
        check_bool(self.class_conditional, "class_conditional")
        check_bool(self.randomized, "randomized")
        penalty = _check_real(self.penalty, "penalty")
        kreg = self.kreg
        if isinstance(kreg, (bool, np.bool_)) or not isinstance(kreg, numbers.Integral):
            raise TypeError(f"kreg must be an integer, got {type(kreg).__name__}")
        if not 0 <= int(kreg) <= MAX_KREG:
            raise ValueError(f"kreg must be in [0, {MAX_KREG}], got {kreg}")
        weight = _check_real(self.weight, "weight", positive=True)
        _backend.resolve_backend(self.backend)
        return alpha, penalty, int(kreg), weight

    def _uniforms(self, n):
        if not self.randomized or _KIND[self.score] == 0:
            return None
        return self._rng.random(n)

    def _matrix(self, scores, name):
        s = check_scores(scores, name)
        if s.ndim != 2:
            raise ValueError(f"{name} must have shape (N, K), got shape {s.shape}")
        return s

    def fit(self, cal_scores: ArrayLike, cal_labels: ArrayLike, *, from_logits: bool = False, axis: int = 1,
            ignore_index: int | None = None, mask: ArrayLike | None = None) -> "ConformalClassifier":
        """Compute the calibration scores and the threshold(s).

        Dense calibration data (segmentation: every pixel is a calibration row) are scores of shape
        ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``; pixels
        labelled ``ignore_index`` or with ``mask`` False are left out. The class axis is read with its
        stride, piece by piece: no transposed or flattened copy of the scores is made, and the fit equals
        ``fit`` on the flattened (pixels, K) copy with the ignored pixels removed, to the last bit (the
        uniforms of ``randomized=True`` are drawn for the kept pixels in that order). ``calibration_scores_``
        holds one score per kept pixel (memory proportional to N * prod(spatial), not times K; so does the
        labels' copy made for ``class_conditional=True``).

        Parameters
        ----------
        cal_scores : array-like of shape (n, K), ``(N, K, *spatial)`` or ``(N, *spatial, K)``
            Probabilities (each in [0, 1]; rows are not renormalised) or, with ``from_logits=True``, logits.
        cal_labels : array-like of shape (n,) or ``(N, *spatial)``
            True labels in [0, K) (except ``ignore_index``).
        from_logits : bool, default False
        axis : int, default 1
            The class axis (1, or -1 for channel-last).
        ignore_index : int, optional
            A label whose pixels are not used (e.g. 255).
        mask : bool array-like of the labels' shape, optional
            True where a pixel is used.

        Returns
        -------
        self
        """
        alpha, penalty, kreg, weight = self._check_params()
        from_logits = check_bool(from_logits, "from_logits")
        if _is_dense(cal_scores, mask, ignore_index):
            scores, y, K = self._dense_label_scores(cal_scores, cal_labels, from_logits, axis, ignore_index, mask,
                                                    penalty, kreg, weight)
        else:
            s = self._matrix(cal_scores, "cal_scores")
            check_class_axis(axis, 2)
            n, K = s.shape
            y = check_labels(cal_labels, n, "cal_labels")
            self._rng = np.random.default_rng(self.random_state) if self.randomized else None
            r = _backend.kernels(self.backend).conformal_label_scores(s, y, from_logits, _KIND[self.score], penalty,
                                                                      kreg, weight, self._uniforms(n))
            code, row, col, value = r["status"]
            if code == 3:
                raise ValueError(f"cal_labels[{row}] = {int(value)} is out of range for n_classes={K}")
            raise_for_status(r["status"], n_classes=K, scores_name="cal_scores")
            scores = r["scores"]
        self.calibration_scores_ = scores
        self.n_classes_ = K
        self.threshold_ = conformal_quantile(scores, alpha)
        if self.class_conditional:
            order = np.argsort(y, kind="stable")
            bounds = np.searchsorted(y[order], np.arange(K + 1))
            self.thresholds_ = np.array([conformal_quantile(scores[order[bounds[k]:bounds[k + 1]]], alpha)
                                         for k in range(K)])
        else:
            self.thresholds_ = np.full(K, self.threshold_)
        return self

    def _dense_label_scores(self, cal_scores, cal_labels, from_logits, axis, ignore_index, mask, penalty, kreg,
                            weight):
        """fit's calibration scores of dense (or masked) input, piece by piece: (scores, labels, K)."""
        d = as_dense(cal_scores, cal_labels, axis=axis, mask=mask, ignore_index=ignore_index, name="cal_scores",
                     labels_name="cal_labels")
        n = d.check_some_kept()
        K = d.n_classes
        kernels = _backend.kernels(self.backend)
        self._rng = np.random.default_rng(self.random_state) if self.randomized else None
        scores = np.empty(n)
        y = np.empty(n, np.int64)
        for p in d.pieces():
            m = p.n_rows
            r = kernels.conformal_label_scores(p.scores, p.labels, from_logits, _KIND[self.score], penalty, kreg,
                                               weight, self._uniforms(m))
            code, row, col, value = r["status"]
            if code == 3:
                at = ", ".join(map(str, d.position(p, int(row))))
                raise ValueError(f"cal_labels[{at}] = {int(value)} is out of range for n_classes={K}")
            d.raise_for_status(r["status"], p, n_classes=K, scores_name="cal_scores")
            scores[p.offset:p.offset + m] = r["scores"]
            y[p.offset:p.offset + m] = p.labels
        return scores, y, K

    def _check_fitted(self):
        if not hasattr(self, "thresholds_"):
            from .calibrators._base import not_fitted_error

            raise not_fitted_error()("this ConformalClassifier is not fitted yet: call fit(cal_scores, cal_labels) "
                                     "first")

    # -- persistence ----------------------------------------------------------------------------------
    _PARAMS = ("score", "alpha", "class_conditional", "randomized", "penalty", "kreg", "weight", "random_state",
               "backend")

    def to_dict(self) -> dict:
        """A JSON-safe description: format, version, parameters and the fitted values (``threshold_``,
        ``thresholds_``, ``calibration_scores_``, ``n_classes_``; an infinite threshold is written as None).

        ``random_state`` must be None or an integer (a ``Generator`` cannot be written). A classifier read back
        by :meth:`from_dict` with ``randomized=True`` draws its prediction uniforms as the original did right
        after ``fit``: from ``default_rng(random_state)`` past the n calibration draws.
        """
        self._check_fitted()
        rs = self.random_state
        if rs is not None and (isinstance(rs, (bool, np.bool_)) or not isinstance(rs, numbers.Integral)):
            raise ValueError(f"to_dict needs random_state None or an integer, got {type(rs).__name__}")
        params = {name: getattr(self, name) for name in self._PARAMS}
        params["random_state"] = None if rs is None else int(rs)

        def number(t):
            return None if math.isinf(t) else float(t)

        return {"format": FORMAT, "version": FORMAT_VERSION, "class": "ConformalClassifier", "params": params,
                "fitted": {"threshold_": number(self.threshold_),
                           "thresholds_": [number(t) for t in self.thresholds_],
                           "calibration_scores_": [float(v) for v in self.calibration_scores_],
                           "n_classes_": int(self.n_classes_)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ConformalClassifier":
        """Rebuild a fitted classifier from :meth:`to_dict` output; malformed input raises ValueError naming
        the key. The parameters must pass ``fit``'s checks; ``calibration_scores_`` must be finite numbers whose
        conformal quantile at ``alpha`` is ``threshold_``; ``thresholds_`` K numbers (None = +inf), all equal
        to ``threshold_`` unless ``class_conditional``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a calibkit conformal classifier: format is "
                             f"{data.get('format') if isinstance(data, dict) else type(data).__name__!r}, "
                             f"expected {FORMAT!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported conformal classifier version {data.get('version')!r} (this calibkit "
                             f"reads version {FORMAT_VERSION})")
        params, fitted = data.get("params"), data.get("fitted")
        if not isinstance(params, dict) or set(params) != set(cls._PARAMS):
            raise ValueError(f"'params' must be a dict with the keys {sorted(cls._PARAMS)}")
        keys = {"threshold_", "thresholds_", "calibration_scores_", "n_classes_"}
        if not isinstance(fitted, dict) or set(fitted) != keys:
            raise ValueError(f"'fitted' must be a dict with the keys {sorted(keys)}")
        rs = params["random_state"]
        if rs is not None and (isinstance(rs, bool) or not isinstance(rs, int)):
            raise ValueError(f"params 'random_state' must be None or an integer, got {rs!r}")
        obj = cls(**params)
        try:
            alpha = obj._check_params()[0]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid parameters: {exc}") from None
        K = fitted["n_classes_"]
        if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= MAX_CLASSES:
            raise ValueError(f"learned value 'n_classes_' must be an integer in [1, {MAX_CLASSES}], got {K!r}")

        def numbers_of(name, allow_none):
            v = fitted[name]
            ok = isinstance(v, list) and all(
                (x is None and allow_none) or (isinstance(x, (int, float)) and not isinstance(x, bool)
                                               and math.isfinite(x)) for x in v)
            if not ok:
                raise ValueError(f"learned value {name!r} must be a list of finite numbers"
                                 f"{' or None (+inf)' if allow_none else ''}")
            return np.array([np.inf if x is None else float(x) for x in v])

        scores = numbers_of("calibration_scores_", False)
        thresholds = numbers_of("thresholds_", True)
        if thresholds.shape != (K,):
            raise ValueError(f"learned value 'thresholds_' must hold n_classes_ = {K} numbers, got {thresholds.size}")
        t = fitted["threshold_"]
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)):
            raise ValueError(f"learned value 'threshold_' must be a finite number or None (+inf), got {t!r}")
        threshold = np.inf if t is None else float(t)
        if scores.size == 0 or conformal_quantile(scores, alpha) != threshold:
            raise ValueError("learned value 'threshold_' is not the conformal quantile of 'calibration_scores_' at "
                             f"alpha={alpha}")
        if not params["class_conditional"] and not (thresholds == threshold).all():
            raise ValueError("learned value 'thresholds_' must all equal 'threshold_' (class_conditional=False)")
        obj.calibration_scores_, obj.n_classes_ = scores, K
        obj.threshold_, obj.thresholds_ = threshold, thresholds
        obj._rng = None
        if obj.randomized:
            obj._rng = np.random.default_rng(rs)
            if _KIND[obj.score] != 0:
                obj._rng.random(scores.size)  # past the calibration draws (none for LAC), as right after fit
        return obj

    def _sets(self, scores, from_logits):
        self._check_fitted()
        _, penalty, kreg, weight = self._check_params()
        from_logits = check_bool(from_logits, "from_logits")
        s = self._matrix(scores, "scores")
        N, K = s.shape
        if K != self.n_classes_:
            raise ValueError(f"scores has {K} columns but the classifier was fitted on {self.n_classes_} classes")
        out = np.empty((N, K), np.bool_)
        sizes = np.empty(N, np.int64)
        status = _backend.kernels(self.backend).conformal_sets(s, from_logits, _KIND[self.score], penalty, kreg, weight,
                                                       self.thresholds_, self._uniforms(N), out.view(np.uint8),
                                                       sizes)
        raise_for_status(status, n_classes=K, scores_name="scores")
        return out, sizes

    def _piece_sets(self, d, from_logits):
        """(piece, sets (m, K) bool, sizes (m,)) for each piece of the dense input ``d``, in order."""
        self._check_fitted()
        _, penalty, kreg, weight = self._check_params()
        from_logits = check_bool(from_logits, "from_logits")
        K = d.n_classes
        if K != self.n_classes_:
            raise ValueError(f"{d.name} has {K} classes (axis {d.axis}) but the classifier was fitted on "
                             f"{self.n_classes_} classes")
        kernels = _backend.kernels(self.backend)
        for p in d.pieces():
            m = p.n_rows
            sets = np.empty((m, K), np.bool_)
            sizes = np.empty(m, np.int64)
            status = kernels.conformal_sets(p.scores, from_logits, _KIND[self.score], penalty, kreg, weight,
                                            self.thresholds_, self._uniforms(m), sets.view(np.uint8), sizes)
            d.raise_for_status(status, p, n_classes=K, scores_name=d.name)
            yield p, sets, sizes

    def _dense_sets(self, scores, from_logits, axis, want_sets, out, sizes_out):
        """Sets (the scores' shape, class axis in place) and sizes ``(N, *spatial)`` of dense scores."""
        d = as_dense(scores, axis=axis, name="scores")
        self._check_fitted()
        sets = None
        if want_sets:
            if out is None:
                sets = np.empty(d.scores.shape, np.bool_)
            else:
                if not isinstance(out, np.ndarray):
                    raise TypeError(f"out must be a NumPy bool array of shape {d.scores.shape}, "
                                    f"got {type(out).__name__}")
                if out.shape != d.scores.shape:
                    raise ValueError(f"out must have the shape of scores, {d.scores.shape}, got shape {out.shape}")
                if out.dtype != np.bool_:
                    raise TypeError(f"out must be a bool array, got dtype {out.dtype}")
                if not out.flags.writeable:
                    raise ValueError("out is read-only: a writeable array is needed")
                if np.shares_memory(out, d.scores):
                    raise ValueError("out overlaps scores: the sets would be written over the scores")
                sets = out
        if sizes_out is None:
            sizes = np.empty(d.row_shape, np.int64)
        else:
            from .uncertainty import _check_out_map

            sizes = _check_out_map(sizes_out, d.row_shape, "out", d.scores, "scores", "iu", "an integer array")
            if sets is not None and np.shares_memory(sizes, sets):
                raise ValueError("the sizes' out overlaps the sets' out")
        from .uncertainty import _write_rows

        rows = None if sets is None else np.moveaxis(sets, d.axis, -1)
        n_axes = len(d.row_shape)
        for p, ps, pz in self._piece_sets(d, from_logits):
            if rows is not None:
                _write_rows(rows, p.offset, ps, n_axes)
            _write_rows(sizes, p.offset, pz, n_axes)
        return sets, sizes

    def predict_sets(self, scores: ArrayLike, *, from_logits: bool = False, axis: int = 1,
                     out: np.ndarray | None = None) -> np.ndarray:
        """The prediction sets {k : s(x, k) <= q_k} as an (N, K) boolean mask.

        Dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) give one set per pixel:
        a bool array of the scores' shape, the class axis where it was (C order), equal to the sets of the
        flattened (pixels, K) copy to the last bit (per-row results; with ``randomized=True`` the uniforms are
        drawn for the pixels in that order). The class axis is read with its stride, piece by piece; the
        only memory allocated is the result (none with ``out``) and per-piece temporaries.

        Parameters
        ----------
        scores : array-like of shape (N, K), ``(N, K, *spatial)`` or ``(N, *spatial, K)``
            Probabilities or, with ``from_logits=True``, logits (as given to ``fit``).
        from_logits : bool, default False
        axis : int, default 1
            The class axis (1, or -1 for channel-last).
        out : ndarray of bool of the scores' shape, optional
            Written in place (any strides, not overlapping ``scores``) and returned.

        Returns
        -------
        ndarray of bool, shape (N, K) or the scores' shape
        """
        if out is not None or np.ndim(scores) > 2:
            return self._dense_sets(scores, from_logits, axis, True, out, None)[0]
        check_class_axis(axis, 2)
        return self._sets(scores, from_logits)[0]

    def set_sizes(self, scores: ArrayLike, *, from_logits: bool = False, axis: int = 1,
                  out: np.ndarray | None = None) -> np.ndarray:
        """The size of each prediction set (int64, shape (N,)); with ``randomized=True``, of a new draw.

        Dense scores (see :meth:`predict_sets`) give a map of shape ``(N, *spatial)``, without forming the sets
        of more than one piece; ``out``: a writeable integer array of that shape, written and returned.
        """
        if out is not None or np.ndim(scores) > 2:
            return self._dense_sets(scores, from_logits, axis, False, None, out)[1]
        check_class_axis(axis, 2)
        return self._sets(scores, from_logits)[1]

    def predict_sets_and_sizes(self, scores: ArrayLike, *, from_logits: bool = False, axis: int = 1
                               ) -> tuple[np.ndarray, np.ndarray]:
        """``(sets, sizes)`` of one draw: the (N, K) mask and its row sums, from one pass (dense scores: the
        sets of the scores' shape and the ``(N, *spatial)`` sizes, see :meth:`predict_sets`)."""
        if np.ndim(scores) > 2:
            return self._dense_sets(scores, from_logits, axis, True, None, None)
        check_class_axis(axis, 2)
        return self._sets(scores, from_logits)


@dataclass(frozen=True)
class ConformalMetrics:
    """Coverage metrics of a stream of prediction sets (:class:`ConformalAccumulator`).

    Examples
    --------
    >>> import calibkit
    >>> m = calibkit.ConformalMetrics(count=10, coverage=0.9, average_set_size=1.5,
    ...                               size_stratified_coverage=0.05, class_conditional_coverage_gap=3.0)
    >>> m.coverage
    0.9
    """

    count: int
    coverage: float
    average_set_size: float
    size_stratified_coverage: float
    class_conditional_coverage_gap: float


class ConformalAccumulator:
    """Streaming coverage and set-size monitoring of conformal prediction sets.

    The state is a few counts per class and per set size: rows and covered rows by true class, rows and covered
    rows by set size (0..K). ``compute()`` gives exactly what :func:`coverage`, :func:`average_set_size`,
    :func:`size_stratified_coverage` and :func:`class_conditional_coverage_gap` give on all the rows seen.
    ``update`` takes prediction sets, or scores together with a fitted :class:`ConformalClassifier` (given to
    the constructor) that turns them into sets. ``merge`` (or ``+``) adds another state; ``to_bytes`` /
    ``from_bytes`` store it in calibkit's checksummed state format.

    Parameters
    ----------
    classifier : ConformalClassifier, optional
        A fitted classifier, needed to update from scores; its ``alpha`` is the default of ``alpha``.
    alpha : float, optional
        The target miscoverage of SSCV and CovGap (default: the classifier's, else 0.1).
    n_classes : int, optional
        K; taken from the classifier or the first update when not given (1 to 2**24).
    strata : sequence of (min_size, max_size) pairs
        The strata of SSCV (default ``DEFAULT_STRATA``).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(1)
    >>> p = rng.dirichlet(np.ones(5), size=3000)
    >>> y = np.array([rng.choice(5, p=row) for row in p])
    >>> cp = calibkit.ConformalClassifier(score="lac", alpha=0.2).fit(p[:1000], y[:1000])
    >>> acc = calibkit.ConformalAccumulator(cp)
    >>> acc = acc.update(p[1000:2000], y[1000:2000]).update(cp.predict_sets(p[2000:]), y[2000:])
    >>> m = acc.compute()
    >>> m.count, abs(m.coverage - calibkit.coverage(cp.predict_sets(p[1000:]), y[1000:])) < 1e-12
    (2000, True)
    """

    _KIND = "ConformalAccumulator"
    MAX_CLASSES = 1 << 24

    def __init__(self, classifier: ConformalClassifier | None = None, *, alpha: float | None = None,
                 n_classes: int | None = None, strata: Sequence[tuple[int, int]] = DEFAULT_STRATA):
        if classifier is not None and not isinstance(classifier, ConformalClassifier):
            raise TypeError(f"classifier must be a ConformalClassifier, got {type(classifier).__name__}")
        self.classifier = classifier
        if alpha is None:
            alpha = classifier.alpha if classifier is not None else 0.1
        self.alpha = _check_alpha(alpha)
        self.strata = tuple(_check_strata(strata))
        if n_classes is None and classifier is not None and hasattr(classifier, "n_classes_"):
            n_classes = classifier.n_classes_
        self.n_classes = None
        if n_classes is not None:
            self._allocate(self._check_k(n_classes))

    @classmethod
    def _check_k(cls, k):
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or not 1 <= k <= cls.MAX_CLASSES:
            raise ValueError(f"n_classes must be an integer in [1, {cls.MAX_CLASSES}], got {k!r}")
        return int(k)

    def _allocate(self, K):
        self.n_classes = K
        self.reset()

    def reset(self) -> None:
        """Forget all rows (the number of classes is kept)."""
        if self.n_classes is None:
            return
        K = self.n_classes
        self._class_count = np.zeros(K, np.int64)
        self._class_covered = np.zeros(K, np.int64)
        self._size_count = np.zeros(K + 1, np.int64)
        self._size_covered = np.zeros(K + 1, np.int64)

    def update(self, sets_or_scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False, axis: int = 1,
               ignore_index: int | None = None, mask: ArrayLike | None = None) -> "ConformalAccumulator":
        """Add rows: an (N, K) boolean mask of sets, or (N, K) float scores (probabilities, or logits with
        ``from_logits=True``) that the classifier turns into sets; ``labels`` the true classes.

        Dense batches (segmentation monitoring): sets or scores of shape ``(N, K, *spatial)`` (``axis=1``) or
        ``(N, *spatial, K)`` (``axis=-1``) with labels ``(N, *spatial)``; every pixel is a row, pixels labelled
        ``ignore_index`` or with ``mask`` False are not counted (both work for (N, K) input too). Scores are
        turned into sets piece by piece (never the sets of the whole batch; uniforms drawn for the kept
        pixels in order); the counts equal those of the flattened copy with the ignored pixels removed. A
        batch with a bad value raises and leaves the state unchanged.
        """
        a = sets_or_scores if isinstance(sets_or_scores, np.ndarray) else np.asarray(sets_or_scores)
        if _is_dense(a, mask, ignore_index):
            return self._update_dense(a, labels, from_logits, axis, ignore_index, mask)
        if a.dtype == np.bool_:
            sets = _check_sets(a)
        else:
            if self.classifier is None:
                raise ValueError("updating from scores needs a fitted ConformalClassifier (ConformalAccumulator("
                                 "classifier)); or pass the prediction sets as a boolean mask")
            sets = self.classifier.predict_sets(a, from_logits=from_logits)
        K = sets.shape[1]
        if self.n_classes is None:
            self._allocate(self._check_k(K))
        elif K != self.n_classes:
            raise ValueError(f"sets have {K} columns but this accumulator has n_classes={self.n_classes}")
        y = _check_set_labels(sets, labels)
        covered = sets[np.arange(sets.shape[0]), y]
        size = np.count_nonzero(sets, axis=1)
        self._class_count += np.bincount(y, minlength=K)
        self._class_covered += np.bincount(y[covered], minlength=K)
        self._size_count += np.bincount(size, minlength=K + 1)
        self._size_covered += np.bincount(size[covered], minlength=K + 1)
        return self

    def _update_dense(self, a, labels, from_logits, axis, ignore_index, mask):
        if a.dtype == np.bool_:
            K = a.shape[check_class_axis(axis, max(a.ndim, 2))] if a.ndim >= 2 else 0
            if self.n_classes is not None and a.ndim >= 2 and K != self.n_classes:
                raise ValueError(f"sets have {K} classes but this accumulator has n_classes={self.n_classes}")
            counts = _set_counts(a, labels, axis, mask, ignore_index)
        else:
            if self.classifier is None:
                raise ValueError("updating from scores needs a fitted ConformalClassifier (ConformalAccumulator("
                                 "classifier)); or pass the prediction sets as a boolean mask")
            d = as_dense(a, labels, axis=axis, mask=mask, ignore_index=ignore_index, name="scores")
            d.check_some_kept()
            K = d.n_classes
            if self.n_classes is not None and K != self.n_classes:
                raise ValueError(f"scores have {K} classes but this accumulator has n_classes={self.n_classes}")
            counts = [np.zeros(K, np.int64), np.zeros(K, np.int64), np.zeros(K + 1, np.int64),
                      np.zeros(K + 1, np.int64)]
            for p, sets, sizes in self.classifier._piece_sets(d, from_logits):
                y = p.labels
                bad = (y < 0) | (y >= K)
                if bad.any():
                    i = int(np.argmax(bad))
                    at = ", ".join(map(str, d.position(p, i)))
                    raise ValueError(f"labels[{at}] = {int(y[i])} is out of range for n_classes={K}")
                covered = sets[np.arange(sets.shape[0]), y]
                counts[0] += np.bincount(y, minlength=K)
                counts[1] += np.bincount(y[covered], minlength=K)
                counts[2] += np.bincount(sizes, minlength=K + 1)
                counts[3] += np.bincount(sizes[covered], minlength=K + 1)
        if self.n_classes is None:
            self._allocate(self._check_k(K))
        self._class_count += counts[0]
        self._class_covered += counts[1]
        self._size_count += counts[2]
        self._size_covered += counts[3]
        return self

    @property
    def count(self) -> int:
        """Rows seen."""
        return 0 if self.n_classes is None else int(self._class_count.sum())

    def merge(self, other: "ConformalAccumulator") -> "ConformalAccumulator":
        """Add the rows of another accumulator (same n_classes, alpha and strata) to this one."""
        if not isinstance(other, ConformalAccumulator):
            raise TypeError(f"can only merge a ConformalAccumulator, got {type(other).__name__}")
        if other.alpha != self.alpha or other.strata != self.strata:
            raise ValueError("cannot merge accumulators with different alpha or strata")
        if other.n_classes is None:
            return self
        if self.n_classes is None:
            self._allocate(other.n_classes)
        if other.n_classes != self.n_classes:
            raise ValueError(f"cannot merge states with n_classes {self.n_classes} and {other.n_classes}")
        self._class_count += other._class_count
        self._class_covered += other._class_covered
        self._size_count += other._size_count
        self._size_covered += other._size_covered
        return self

    def copy(self) -> "ConformalAccumulator":
        new = ConformalAccumulator(self.classifier, alpha=self.alpha, n_classes=self.n_classes, strata=self.strata)
        return new.merge(self)

    def __add__(self, other):
        return self.copy().merge(other)

    def __iadd__(self, other):
        return self.merge(other)

    def compute(self) -> ConformalMetrics:
        """The metrics of every row seen (ValueError before any row)."""
        n = self.count
        if n == 0:
            raise ValueError("no rows seen yet: call update() first")
        sizes = np.arange(self.n_classes + 1)
        return ConformalMetrics(
            count=n,
            coverage=float(self._class_covered.sum() / n),
            average_set_size=float(np.dot(sizes, self._size_count) / n),
            size_stratified_coverage=_sscv(self._size_count, self._size_covered, self.alpha, self.strata),
            class_conditional_coverage_gap=_covgap(self._class_count, self._class_covered, self.alpha),
        )

    def to_bytes(self) -> bytes:
        """The state in calibkit's versioned, checksummed binary format (the classifier is not stored)."""
        from .streaming import encode_state

        K = self.n_classes or 0
        arrays = {}
        if K:
            arrays = {"class_count": self._class_count, "class_covered": self._class_covered,
                      "size_count": self._size_count, "size_covered": self._size_covered}
        return encode_state(self._KIND, {"alpha": self.alpha, "n_classes": K,
                                         "strata": [list(p) for p in self.strata]},
                            {k: v.astype(np.float64) for k, v in arrays.items()})

    @classmethod
    def from_bytes(cls, data: bytes, classifier: ConformalClassifier | None = None) -> "ConformalAccumulator":
        """Rebuild a state written by :meth:`to_bytes` (optionally with a classifier for score updates);
        malformed data raises ValueError. Counts must be whole numbers >= 0 below 2**53, covered <= count,
        and the per-class and per-size totals must agree."""
        from .streaming import decode_state

        kind, meta, arrays = decode_state(data)
        if kind != cls._KIND:
            raise ValueError(f"not a {cls._KIND} state (got {kind!r})")
        try:
            alpha, K, strata = meta["alpha"], meta["n_classes"], meta["strata"]
            acc = cls(classifier, alpha=alpha, strata=[tuple(p) for p in strata])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"corrupt {cls._KIND} state: bad metadata ({exc})") from None
        if isinstance(K, bool) or not isinstance(K, int) or not 0 <= K <= cls.MAX_CLASSES:
            raise ValueError(f"corrupt {cls._KIND} state: n_classes {K!r}")
        expected = {} if K == 0 else {"class_count": (K,), "class_covered": (K,), "size_count": (K + 1,),
                                      "size_covered": (K + 1,)}
        if set(arrays) != set(expected) or any(arrays[k].shape != s for k, s in expected.items()):
            raise ValueError(f"corrupt {cls._KIND} state: arrays {sorted(arrays)} do not match n_classes={K}")
        if K == 0:
            return acc
        for name, a in arrays.items():
            if not (np.isfinite(a).all() and (a >= 0).all() and (a == np.floor(a)).all() and (a < 2.0**53).all()):
                raise ValueError(f"corrupt {cls._KIND} state: {name} must hold whole numbers in [0, 2**53)")
        if (arrays["class_covered"] > arrays["class_count"]).any() or \
                (arrays["size_covered"] > arrays["size_count"]).any() or \
                arrays["class_count"].sum() != arrays["size_count"].sum() or \
                arrays["class_covered"].sum() != arrays["size_covered"].sum():
            raise ValueError(f"corrupt {cls._KIND} state: inconsistent counts")
        acc._allocate(K)
        acc._class_count = arrays["class_count"].astype(np.int64)
        acc._class_covered = arrays["class_covered"].astype(np.int64)
        acc._size_count = arrays["size_count"].astype(np.int64)
        acc._size_covered = arrays["size_covered"].astype(np.int64)
        return acc
