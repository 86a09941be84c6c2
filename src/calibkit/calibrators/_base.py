"""What every calibrator shares: scikit-learn style parameters, input checks, JSON persistence."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from .._validation import (
    LABEL_OUT_OF_RANGE, BadElementError, MAX_CLASSES, SCORE_NOT_FINITE, WEIGHT_NEGATIVE, WEIGHT_NOT_FINITE, check_labels,
    check_sample_weight, check_scores, raise_for_status,
)
from .._typing import ArrayLike, FloatArray, IntArray

_E = TypeVar("_E", bound="EstimatorProtocol")  # set_params returns self, of the caller's class

FORMAT = "calibkit.calibrator"
FORMAT_VERSION = 1


_NOT_FITTED_ERROR: list[type[ValueError]] = []  # the class, made on first use (see not_fitted_error)


def not_fitted_error() -> type[ValueError]:
    """``calibkit.NotFittedError``: the error of a calibrator used before ``fit``, made on first use.

    When scikit-learn is installed it derives from ``sklearn.exceptions.NotFittedError`` (itself a
    ``ValueError`` and an ``AttributeError``), so ``except sklearn.exceptions.NotFittedError`` and
    ``sklearn.utils.validation.check_is_fitted`` see it; without scikit-learn it derives from
    ``ValueError`` and ``AttributeError``. It is made on first use (an unfitted calibrator is used, or
    ``calibkit.NotFittedError`` is looked up) rather than at ``import calibkit``: importing scikit-learn
    takes about a second (it imports SciPy's optimiser), which every ``import calibkit`` and every
    ``calibkit`` command would otherwise pay. It is made once: the same class afterwards.
    """
    if not _NOT_FITTED_ERROR:
        try:
            from sklearn.exceptions import NotFittedError as base
            bases = (base,)
        except ImportError:
            bases = (ValueError, AttributeError)
        doc = ("A calibrator was used before ``fit`` (scikit-learn's ``NotFittedError`` when scikit-learn is "
               "installed; otherwise a ``ValueError`` and an ``AttributeError``, the same bases as scikit-learn's).\n"
               "\n"
               "Examples\n"
               "--------\n"
               ">>> import numpy as np\n"
               ">>> import calibkit\n"
               ">>> try:\n"
               "...     calibkit.TemperatureScaling().predict_proba(np.zeros((2, 3)))\n"
               "... except calibkit.NotFittedError as exc:\n"
               "...     print(isinstance(exc, ValueError))\n"
               "True\n")
        cls = type("NotFittedError", bases, {"__doc__": doc, "__module__": "calibkit"})
        _NOT_FITTED_ERROR.append(cls)
    return _NOT_FITTED_ERROR[0]


def __getattr__(name):
    if name == "NotFittedError":
        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_REGISTRY: dict[str, type] = {}


class EstimatorProtocol:
    """What scikit-learn (>= 1.6) asks of an estimator, without importing scikit-learn.

    Parameters are the ``__init__`` arguments, stored as given (checked in ``fit``); ``get_params`` /
    ``set_params`` round-trip them (``sklearn.base.clone``, ``GridSearchCV``); ``__sklearn_tags__`` says
    what the estimator is; ``score`` is the mean accuracy (as ``ClassifierMixin.score``). scikit-learn is
    imported only when it calls these methods: ``import calibkit`` does not need it (and does not pay the
    second it takes to import).
    """

    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind in kinds)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this calibrator (``sklearn.base.clone`` uses this)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self: _E, **params: Any) -> _E:
        """Set parameters by name; returns self."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}; valid: {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({args})"

    def __sklearn_is_fitted__(self):
        """True once :meth:`fit` (or :meth:`from_dict`) has set the learned values."""
        return all(name in self.__dict__ for name in self._fitted_names)

    # The scikit-learn protocol (scikit-learn >= 1.6) without importing scikit-learn: it is imported by the
    # methods below only when scikit-learn itself calls them (see not_fitted_error for why).
    _binary_input = False  # True when the calibrator takes one score per row (X of shape (N,) or (N, 1))

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags: a classifier (``classes_``, ``predict_proba``) that needs ``y``,
        takes finite numbers (scores or logits, not generic features) and, for the logit calibrators, a
        transformer (``transform`` gives the calibrated logits)."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    transformer_tags=TransformerTags() if hasattr(self, "transform") else None,
                    classifier_tags=ClassifierTags(multi_class=not self._binary_input),
                    input_tags=InputTags(two_d_array=True))

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """Mean (weighted) accuracy of :meth:`predict` on ``X`` against labels ``y`` (as scikit-learn's
        ``ClassifierMixin.score``)."""
        pred = self.predict(X)
        y = check_labels(y, len(pred))
        w = None if sample_weight is None else check_sample_weight(sample_weight, len(pred), check_values=True)
        return float(np.average(pred == y, weights=w))


class Calibrator(EstimatorProtocol):
    """Base class: parameters are the ``__init__`` arguments; learned values end in ``_``.

    Subclasses define ``_fitted_names`` (the learned attributes saved by
    :meth:`to_dict`) and ``_load_fitted`` (their validation on load).

    Examples
    --------
    >>> import numpy as np
    >>> import calibkit
    >>> rng = np.random.default_rng(0)
    >>> logits, labels = rng.normal(size=(500, 4)), rng.integers(0, 4, 500)
    >>> ts = calibkit.TemperatureScaling().fit(logits, labels)
    >>> saved = ts.to_dict()                       # JSON-ready: parameters and learned values
    >>> again = calibkit.Calibrator.from_dict(saved)
    >>> type(again).__name__, again.temperature_ == ts.temperature_
    ('TemperatureScaling', True)
    """

    _fitted_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            _REGISTRY[cls.__name__] = cls

    def _check_fitted(self):
        if not self.__sklearn_is_fitted__():
            raise not_fitted_error()(f"this {type(self).__name__} is not fitted yet: call fit(scores, labels) "
                                     "first")

    @property
    def classes_(self) -> IntArray:
        """The class labels 0 to K-1 (column k of :meth:`predict_proba` is class k), once fitted."""
        self._check_fitted()
        return np.arange(self._n_outputs())

    @property
    def n_features_in_(self) -> int:
        """Columns of the input ``X``: K for (N, K) scores or logits, 1 for binary scores, once fitted."""
        self._check_fitted()
        return 1 if self._binary_input or getattr(self, "binary_", False) else self._n_outputs()

    def _n_outputs(self):
        return 2 if self._binary_input else int(self.n_classes_)

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description: format, version, class, parameters, learned values."""
        self._check_fitted()
        fitted = {}
        for name in self._fitted_names:
            value = getattr(self, name)
            fitted[name] = value.tolist() if isinstance(value, np.ndarray) else value
        return {"format": FORMAT, "version": FORMAT_VERSION, "class": type(self).__name__,
                "params": self.get_params(), "fitted": fitted}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibrator":
        """Rebuild a fitted calibrator from :meth:`to_dict` output; malformed input raises ValueError.

        Every key of ``params`` and ``fitted`` is checked (other top-level keys are the caller's, e.g.
        the ``"input"`` that ``calibkit fit`` records): no key may be missing or unknown, parameters
        must pass the checks of :meth:`fit`, and every learned value must be of the right type and
        shape, finite, of magnitude at most ``MAX_LEARNED`` = 1e150 (a temperature in [1e-150, 1e150]) and in its range
        (probabilities in [0, 1], thresholds sorted), so that :meth:`predict_proba` of logits up to
        1e150 in magnitude gives finite probabilities. The error names the offending key.
        """
        if not isinstance(data, dict):
            raise ValueError(f"calibrator data must be a dict, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(f"not a calibkit calibrator: format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported calibrator format version {data.get('version')!r} "
                             f"(this calibkit reads version {FORMAT_VERSION})")
        name = data.get("class")
        target = _REGISTRY.get(name) if isinstance(name, str) else None
        if target is None:
            raise ValueError(f"unknown calibrator class {name!r}")
        if cls is not Calibrator and target is not cls:
            raise ValueError(f"data describes a {name}, not a {cls.__name__}")
        params, fitted = data.get("params"), data.get("fitted")
        if not isinstance(params, dict) or not isinstance(fitted, dict):
            raise ValueError("calibrator data must hold 'params' and 'fitted' dicts")
        unknown = set(params) - set(target._param_names())
        if unknown:
            raise ValueError(f"unknown parameters for {name}: {sorted(map(str, unknown))}")
        missing = set(target._fitted_names) - set(fitted)
        if missing:
            raise ValueError(f"{name} data lacks the learned values {sorted(missing)}")
        unknown = set(fitted) - set(target._fitted_names)
        if unknown:
            raise ValueError(f"unknown learned values for {name}: {sorted(map(str, unknown))}")
        # One parameter at a time (the others at their defaults) first, so that the error names it.
        for key in sorted(params):
            try:
                target(**{key: params[key]})._check_params()
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(f"invalid parameters for {name} ({key!r}): {exc}") from None
        try:
            obj = target(**params)
            obj._check_params()
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"invalid parameters for {name}: {exc}") from None
        try:
            obj._load_fitted(fitted)
        except (TypeError, OverflowError) as exc:  # a learned value of an unexpected type
            raise ValueError(f"invalid learned values for {name}: {exc}") from None
        return obj

    def _check_params(self):
        """Validate the parameters (called by fit and from_dict)."""

    # -- dense input for the calibrators whose fit needs every row in memory -----------------------------
    def _fit_gathered(self, scores, labels, sample_weight, *, axis=1, ignore_index=None, mask=None, max_rows=None):
        """``fit`` on dense scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``), or on 2-D
        scores with ``mask`` / ``ignore_index`` / ``max_rows``, for the calibrators whose fit holds every row
        (one-vs-rest isotonic / histogram / Platt / beta / Venn-Abers: every column of every row).

        The counted pixels (every s-th of them with ``max_rows``, s = ceil(n_counted / max_rows), as
        :meth:`TemperatureScaling.fit`) are gathered piece by piece into one (n, K) array in the scores' own
        dtype, with their labels and weights, and the 2-D fit runs on it: the result is bit for bit the fit
        of the flattened counted rows. That copy is n x K values (the 2-D fit itself makes one more, its
        column-major copy): ``max_rows`` bounds both. Binary scores (N,) take ``mask`` / ``ignore_index`` /
        ``max_rows`` the same way (no class axis). Bad elements are named in the caller's coordinates.
        """
        binary = binary_column(scores)
        if np.ndim(binary) == 1:
            s = check_scores(binary)
            y = check_labels(labels, s.shape[0])
            keep = np.ones(s.shape[0], bool)
            if mask is not None:
                m = np.asarray(mask)
                if m.shape != s.shape:
                    raise ValueError(f"mask must have shape {s.shape} to match scores of shape {s.shape}, got shape "
                                     f"{m.shape}")
                if m.dtype != bool:
                    raise TypeError(f"mask must be a boolean array (True where a row is counted), got dtype {m.dtype}")
                keep &= m
            if ignore_index is not None:
                if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, numbers.Integral):
                    raise TypeError(f"ignore_index must be an integer label or None, got {type(ignore_index).__name__}")
                keep &= y != ignore_index
            rows = np.flatnonzero(keep)
            if rows.shape[0] == 0:
                raise ValueError("every row of scores is ignored (labels == ignore_index or mask is False "
                                 "everywhere): there is nothing to fit")
            if max_rows is not None:
                rows = rows[::-(-rows.shape[0] // check_int(max_rows, "max_rows", 1))]
            w = None if sample_weight is None else check_sample_weight(sample_weight, s.shape[0])[rows]
            return type(self).fit(self, s[rows], y[rows], w)
        data = DenseFit(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
                        max_rows=max_rows, name="scores", scale_weights=False)
        parts = list(data.pieces())
        for part in parts:
            data.check_labels(part)
        s = np.concatenate([part.scores for part in parts])
        y = np.concatenate([part.labels for part in parts])
        w = None if sample_weight is None else np.concatenate([part.sample_weight for part in parts])
        try:
            return type(self).fit(self, s, y, w)
        except BadElementError as exc:  # name the element at its place in the caller's arrays
            row = int(exc.status[1])
            i = max(j for j, part in enumerate(parts) if part.offset <= row)
            code, _, col, value = exc.status
            data.raise_for_status((code, row - parts[i].offset, col, value), parts[i])
            raise  # pragma: no cover - raise_for_status raised

    def _predict_scores(self, scores):
        """The (n, K) rows whose argmax is :meth:`predict` of 2-D ``scores`` (default: the probabilities)."""
        return self._probabilities(scores)

    def _dense_probabilities(self, scores, *, axis=1, out=None, predict=False):
        """``_probabilities`` of dense scores ``(N, K, *spatial)``, piece by piece, into ``out`` (see
        :func:`dense_transform`; bit for bit the 2-D result of the flattened rows); ``predict``: the argmax map."""
        self._check_fitted()
        if getattr(self, "binary_", False):
            raise ValueError("this calibrator was fitted on binary scores of shape (N,): dense input needs class "
                             "scores (N, K, *spatial); fit it on such scores")

        compute = self._predict_scores if predict else self._probabilities

        def block(z, where):
            try:
                return compute(z)
            except BadElementError as exc:
                where.fail(exc.status)

        if predict:
            return dense_predict(scores, block, n_classes=self._n_outputs(), axis=axis, name="scores")
        return dense_transform(scores, block, n_classes=self._n_outputs(), axis=axis, out=out, name="scores")

    def _load_fitted(self, fitted):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


# -- small checks shared by the calibrators ---------------------------------------------------

def check_positive_number(value, name, *, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


#: Largest magnitude of a learned value read by :meth:`Calibrator.from_dict` (temperatures: [1/MAX_LEARNED,
#: MAX_LEARNED]); logits up to 1e150 in magnitude then scale to finite values.
MAX_LEARNED = 1e150
#: Largest integer learned value (iteration counts) read by :meth:`Calibrator.from_dict`.
MAX_COUNT = (1 << 63) - 1


def check_int(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def fitted_int(fitted, name, minimum, maximum=MAX_COUNT):
    """An integer learned value from a to_dict payload, in [minimum, maximum]; ValueError naming it."""
    value = fitted[name]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or not minimum <= value <= maximum:
        raise ValueError(f"learned value {name!r} must be an integer in [{minimum}, {maximum}], got {value!r}"[:300])
    return int(value)


def fitted_classes(fitted):
    """(n_classes_, binary_) of the to_dict payload of a calibrator of binary (N,) or (N, K) scores, validated:
    n_classes_ an integer in [2, MAX_CLASSES], binary_ a bool, and n_classes_ 2 when binary_ is true."""
    n_classes = fitted_int(fitted, "n_classes_", 2, MAX_CLASSES)
    binary = fitted["binary_"]
    if not isinstance(binary, bool):
        raise ValueError("learned value 'binary_' must be true or false")
    if binary and n_classes != 2:
        raise ValueError(f"learned value 'n_classes_' must be 2 when 'binary_' is true, got {n_classes}")
    return n_classes, binary


def fitted_array(fitted, name, shape, *, positive=False, low=-MAX_LEARNED, high=MAX_LEARNED):
    """A learned array from a to_dict payload: numbers only, right shape, finite, in [low, high] (> 0 when asked).

    Strings, booleans, None, ragged lists and integers too large for a float are rejected with a
    ValueError naming the value (``np.asarray`` would turn "1.5" into 1.5 and 10**400 into an error).
    """
    value = fitted[name]
    try:
        a = np.asarray(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"learned value {name!r} is not an array of numbers") from None
    if a.dtype.kind not in "iuf" and not (a.size == 0 and isinstance(value, list)):
        raise ValueError(f"learned value {name!r} is not an array of numbers (got {str(value)[:80]})")
    a = a.astype(np.float64)
    if shape is not None and a.shape != shape:
        raise ValueError(f"learned value {name!r} has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"learned value {name!r} holds NaN or inf")
    if positive and not (a > 0).all():
        raise ValueError(f"learned value {name!r} must be > 0")
    if not ((a >= low) & (a <= high)).all():
        raise ValueError(f"learned value {name!r} must lie in [{low:g}, {high:g}]")
    return a


def check_logits(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """(N, K) float logits, K >= 2, readable in place; NaN/inf are checked by the kernels."""
    a = check_scores(scores, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be logits of shape (N, K), got shape {a.shape}")
    return a


def check_fit_inputs(scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None, *, binary: bool,
                     scale_weights: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Checked (scores, labels, sample_weight) for fit; binary: scores (N,), labels 0/1.

    The weights are checked (finite, >= 0, not all 0); with ``scale_weights`` (a fit whose optimum does
    not depend on their scale) they come back divided by their largest (see ``check_sample_weight``).
    """
    scores = check_scores(scores)
    if binary and scores.ndim != 1:
        raise ValueError(f"scores must have shape (N,) (one score per sample), got shape {scores.shape}")
    labels = check_labels(labels, scores.shape[0])
    sample_weight = check_sample_weight(sample_weight, scores.shape[0], check_values=True, scale=scale_weights)
    if binary:
        bad = (labels != 0) & (labels != 1)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"labels[{i}] = {labels[i]} is not 0 or 1 (binary scores of shape (N,))")
    return scores, labels, sample_weight


def binary_column(scores: ArrayLike) -> np.ndarray:
    """Binary scores given as one column, (N, 1), as a (N,) array (a view); anything else as given (an array)."""
    s = np.asarray(scores)
    return s[:, 0] if s.ndim == 2 and s.shape[1] == 1 else s


def two_columns(p1: np.ndarray) -> FloatArray:
    """(N, 2) probabilities [1 - p, p] of classes 0 and 1 from P(y = 1) of shape (N,), as scikit-learn's
    classifiers give them (column 1 is ``p1`` itself, bit for bit)."""
    out = np.empty((p1.shape[0], 2))
    np.subtract(1.0, p1, out=out[:, 0])
    out[:, 1] = p1
    return out


def check_finite(a, name, row_offset=0):
    """Raise a ValueError naming the first NaN/inf element of `a` (rows counted from `row_offset`)."""
    finite = np.isfinite(a)
    if not finite.all():
        idx = np.unravel_index(int(np.argmin(finite)), a.shape)
        col = int(idx[1]) if a.ndim == 2 else -1
        raise_for_status((SCORE_NOT_FINITE, int(idx[0]) + row_offset, col, float(a[idx])), scores_name=name)


def chunk_rows(n_cols, budget_values=1 << 22):
    """Rows per chunk so that a float64 temporary of (rows, n_cols) stays near 32 MB."""
    return max(1, budget_values // max(int(n_cols), 1))


def softmax_rows(z, out):
    """out = softmax(z) row-wise, stably, written straight into `out` (a float64 view)."""
    np.subtract(z, z.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)


# -- dense input: ``(N, K, *spatial)`` logits / scores, ignore_index, mask, max_rows ----------------------------------
# The one place where the calibrators meet calibkit._dense: a fit reads the kept rows piece by piece (strided views
# of the caller's array, a gathered copy only of a piece with ignored pixels), a transform writes piece by piece
# into a map of the scores' shape. Nothing proportional to N * prod(spatial) * K is ever allocated.

def dense_route(scores, *options) -> bool:
    """True when a call takes the dense path: scores of ndim > 2, or any of ``options`` (mask, ignore_index,
    max_rows, out) given. Otherwise the 2-D code runs unchanged."""
    ndim = scores.ndim if isinstance(scores, np.ndarray) else np.ndim(scores)
    return ndim > 2 or any(o is not None for o in options)


class DenseFit:
    """The rows a calibrator is fitted on, from dense input (see :func:`calibkit._dense.as_dense`).

    The kept rows (``ignore_index`` / ``mask`` applied) in the order of
    ``np.moveaxis(scores, axis, -1).reshape(-1, K)``; with ``max_rows`` every ``stride``-th of them, stride =
    ceil(n_kept / max_rows) (the rows 0, stride, 2 stride, ... of the kept rows: deterministic, evenly spread
    over the images, at most ``max_rows`` rows, and exactly ``flat[::stride]`` of the flattened copy). A piece of
    the subsample is a strided view of the piece it comes from (no copy). Sample weights are checked on the rows
    used (finite, >= 0, not all 0) and, with ``scale_weights``, divided by their largest, as ``check_fit_inputs``
    does on 2-D input, so that the fit sees the same numbers as the fit of the flattened rows.
    """

    def __init__(self, scores, labels, *, axis=1, mask=None, ignore_index=None, sample_weight=None, max_rows=None,
                 name="logits", scale_weights=True):
        from .._dense import as_dense

        if labels is None:
            raise TypeError("labels are needed to fit a calibrator")
        self.dense = as_dense(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index,
                              sample_weight=sample_weight, name=name)
        self.name = name
        self.n_classes = int(self.dense.n_classes)
        n = self.dense.check_some_kept()
        self.stride = 1
        if max_rows is not None:
            max_rows = check_int(max_rows, "max_rows", 1)
            self.stride = -(-n // max_rows)
        self.n_kept = n
        self._largest = None
        if sample_weight is not None:
            largest = 0.0
            for p in self.pieces(scaled=False):
                w = p.sample_weight
                finite = np.isfinite(w)
                if not finite.all():
                    i = int(np.argmin(finite))
                    self.dense.raise_for_status((WEIGHT_NOT_FINITE, i, -1, float(w[i])), p)
                if (w < 0).any():
                    i = int(np.argmax(w < 0))
                    self.dense.raise_for_status((WEIGHT_NEGATIVE, i, -1, float(w[i])), p)
                largest = max(largest, float(w.max()))
            if largest == 0.0:
                raise ValueError("sample_weight sums to 0 over the pixels counted (every weight is 0): a weighted "
                                 "mean over no weight is undefined")
            self._largest = largest if scale_weights else None

    @property
    def n_rows(self) -> int:
        """The rows the fit uses: ceil(n_kept / stride)."""
        return -(-self.n_kept // self.stride)

    def subsample(self, stride: int) -> "DenseFit":
        """Every ``stride``-th row of these rows (weights scaled as these), as another DenseFit (no pass, no copy)."""
        sub = object.__new__(DenseFit)
        sub.__dict__.update(self.__dict__)
        sub.stride = self.stride * max(int(stride), 1)
        return sub

    def pieces(self, piece_rows=None, *, scaled=True):
        """The rows as :class:`calibkit._dense.Piece` objects (scores (m, K), labels (m,) int64, sample_weight
        (m,) float64 or None, ``offset`` counted in these rows) of at most ``piece_rows`` rows of the kept rows:
        every ``stride``-th kept row (``Dense.pieces(stride=)``: a strided view, or a gather of those rows only
        in a block with ignored pixels)."""
        for p in self.dense.pieces(piece_rows, stride=self.stride):
            if scaled and p.sample_weight is not None and self._largest is not None:
                p.sample_weight = p.sample_weight / self._largest
            yield p

    def raise_for_status(self, status, piece, **context) -> None:
        """The kernel's error for ``piece``, the element named at its place in the caller's arrays."""
        context.setdefault("scores_name", self.name)
        context.setdefault("n_classes", self.n_classes)
        self.dense.raise_for_status(status, piece, **context)

    def where(self, piece) -> "_Where":
        """The namer of ``piece``'s rows and elements (see :class:`_Where`)."""
        return _Where(self.dense, piece, self.name, self.n_classes)

    def check_labels(self, piece) -> None:
        """ValueError naming the first label of ``piece`` outside [0, K) (for fits that index by label in NumPy)."""
        y = piece.labels
        bad = (y < 0) | (y >= self.n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            self.raise_for_status((LABEL_OUT_OF_RANGE, i, -1, int(y[i])), piece)

    def check_finite(self, piece, z) -> None:
        """ValueError naming the first NaN / inf of ``z`` (the piece's rows, float64), in the caller's coordinates."""
        finite = np.isfinite(z)
        if not finite.all():
            i, j = np.unravel_index(int(np.argmin(finite)), z.shape)
            self.raise_for_status((SCORE_NOT_FINITE, int(i), int(j), float(z[i, j])), piece)

    def gather(self, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(scores (n, K) in their dtype, labels (n,), weights (n,) or None) of every ``stride``-th row: a small
        copy (for a preconditioner's curvature sample; ``flat[::stride]`` of the flattened rows)."""
        sub = self.subsample(stride)
        parts = list(sub.pieces())
        z = np.concatenate([p.scores for p in parts])
        y = np.concatenate([p.labels for p in parts])
        w = None if self.dense.sample_weight is None else np.concatenate([p.sample_weight for p in parts])
        return z, y, w


def dense_transform(scores, block, *, n_classes, axis=1, out=None, name="logits"):
    """Calibrated scores of dense ``scores`` ``(N, K, *spatial)`` (or (N, K)), of the scores' shape.

    ``block(z, where)`` maps one piece (m, K) of rows (a view of the caller's array, any float dtype) to a
    C-ordered float64 (m, K) array; ``where(i)`` names row i in the caller's coordinates and ``fail(status)``
    raises a kernel-style error for it (both passed as ``where``, with ``where.fail``). The result is written
    into ``out`` (any float dtype, the scores' shape; ``out=scores`` itself is accepted: the pieces are computed
    before they are written) or a new C-ordered float64 array. Pieces are of ``chunk_rows(K)`` rows (32 MB of
    float64), so the only temporaries are per piece. The rows are computed as the 2-D transform computes the
    flattened rows, so the result is bit for bit the 2-D transform's, reshaped back (cast to ``out``'s dtype).
    """
    from .._dense import as_dense

    d = as_dense(scores, axis=axis, name=name)
    if d.n_classes != n_classes:
        raise ValueError(f"{name} have {d.n_classes} classes (on axis {axis}) but the calibrator was fitted on "
                         f"{n_classes} classes")
    if out is None:
        out = np.empty(d.scores.shape, dtype=np.float64)
    d = as_dense(d.scores, axis=axis, out=out, out_like_scores=True, allow_in_place=True, name=name,
                 piece_rows=chunk_rows(n_classes))
    for p in d.pieces():
        p.out[...] = block(p.scores, _Where(d, p, name, n_classes))
    return out


def dense_predict(scores, block, *, n_classes, axis=1, name="logits"):
    """The argmax over classes of ``block`` (see :func:`dense_transform`) per pixel: int64 ``(N, *spatial)``."""
    from .._dense import as_dense

    d = as_dense(scores, axis=axis, name=name, piece_rows=chunk_rows(n_classes))
    if d.n_classes != n_classes:
        raise ValueError(f"{name} have {d.n_classes} classes (on axis {axis}) but the calibrator was fitted on "
                         f"{n_classes} classes")
    result = np.empty(d.row_shape, dtype=np.int64)
    flat = result.reshape(-1)
    for p in d.pieces():  # no labels: every row kept, offset = the row's place in ``(N, *spatial)`` C order
        flat[p.offset:p.offset + p.n_rows] = np.argmax(block(p.scores, _Where(d, p, name, n_classes)), axis=1)
    return result


class _Where:
    """Names a row of a piece in the caller's coordinates (``where(i)``), raises a kernel status (``fail``)."""

    __slots__ = ("dense", "piece", "name", "n_classes")

    def __init__(self, dense, piece, name, n_classes):
        self.dense, self.piece, self.name, self.n_classes = dense, piece, name, n_classes

    def __call__(self, row) -> str:
        pos = [str(i) for i in self.dense.position(self.piece, int(row))]
        pos.insert(self.dense.axis, ":")
        return f"{self.name}[{', '.join(pos)}]"

    def fail(self, status):
        self.dense.raise_for_status(status, self.piece, n_classes=self.n_classes, scores_name=self.name)

    def element(self, row, col) -> str:
        """The element (row, col) of the piece as the caller indexes it (the class index at the class axis)."""
        pos = [str(i) for i in self.dense.position(self.piece, int(row))]
        pos.insert(self.dense.axis, str(int(col)))
        return f"{self.name}[{', '.join(pos)}]"

    def check_finite(self, z):
        finite = np.isfinite(z)
        if not finite.all():
            i, j = np.unravel_index(int(np.argmin(finite)), z.shape)
            self.fail((SCORE_NOT_FINITE, int(i), int(j), float(z[i, j])))


class RowNamer:
    """:class:`_Where` for a block of rows of 2-D scores starting at row ``start``."""

    __slots__ = ("start", "name", "n_classes")

    def __init__(self, start, name, n_classes=None):
        self.start, self.name, self.n_classes = start, name, n_classes

    def __call__(self, row) -> str:
        return f"{self.name}[{self.start + int(row)}]"

    def element(self, row, col) -> str:
        return f"{self.name}[{self.start + int(row)}, {int(col)}]"

    def fail(self, status):
        code, row, col, value = status
        raise_for_status((code, int(row) + self.start, col, value), n_classes=self.n_classes, scores_name=self.name)

    def check_finite(self, z):
        check_finite(z, self.name, self.start)
