"""CalibratedClassifier: calibrate an already-fitted classifier on held-out data, without refitting it."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from .._typing import ArrayLike, FloatArray
from .._validation import check_sample_weight
from ._base import Calibrator, EstimatorProtocol, binary_column, not_fitted_error, two_columns
from .beta import BetaCalibration
from .dirichlet import DirichletCalibration
from .nonparametric import HistogramBinning, IsotonicCalibration, TopLabelHistogramBinning
from .platt import PlattScaling
from .scaling import EnsembleTemperatureScaling, MatrixScaling, TemperatureScaling, VectorScaling
from .venn_abers import VennAbers

#: The calibrator of each ``method`` name ("sigmoid" is scikit-learn's name for Platt scaling).
METHODS = {
    "temperature": TemperatureScaling,
    "vector": VectorScaling,
    "matrix": MatrixScaling,
    "platt": PlattScaling,
    "sigmoid": PlattScaling,
    "isotonic": IsotonicCalibration,
    "histogram": HistogramBinning,
    "ets": EnsembleTemperatureScaling,
    "beta": BetaCalibration,
    "venn_abers": VennAbers,
    "dirichlet": DirichletCalibration,
    "top_label": TopLabelHistogramBinning,
}
#: A ``method`` name (a key of :data:`METHODS`).
Method = Literal["temperature", "vector", "matrix", "platt", "sigmoid", "isotonic", "histogram", "ets", "beta",
                 "venn_abers", "dirichlet", "top_label"]
_LOGIT = (TemperatureScaling, VectorScaling, MatrixScaling, EnsembleTemperatureScaling)  # calibrate logits (N, K)
_ONE_SCORE = (PlattScaling, IsotonicCalibration)  # one score per class, one-vs-rest as scikit-learn
# calibrate the classifier's probabilities (predict_proba): P(y = 1) of shape (N,) or (N, K) ...
_PROBABILITY = (HistogramBinning, BetaCalibration, VennAbers, DirichletCalibration, TopLabelHistogramBinning)
_MATRIX = (DirichletCalibration, TopLabelHistogramBinning)  # ... (N, K) only: a binary P(y = 1) as (N, 2)
_WHAT = {HistogramBinning: "histogram binning"}
#: Added to probabilities before their log is taken as logits (what scikit-learn's temperature scaling adds).
LOG_EPS = 1e-12
RESPONSE_METHODS = ("auto", "predict_proba", "decision_function")


class CalibratedClassifier(EstimatorProtocol):
    r"""A fitted classifier calibrated on held-out data, without refitting it.

    ``fit(X_cal, y_cal)`` reads the classifier's scores on the calibration rows
    (``decision_function`` or ``predict_proba``) and fits one of calibkit's
    calibrators to them; ``predict_proba(X)`` gives the calibrated
    probabilities of ``classes_`` (the classifier's own classes, any labels:
    strings too), ``predict(X)`` the most probable class. The classifier is
    only read: never fitted, never copied. :func:`sklearn.base.clone` of a
    CalibratedClassifier shares its classifier (a frozen part, as scikit-learn's
    ``FrozenEstimator``) and refits only the calibration, so
    ``cross_val_score(CalibratedClassifier(clf), X_cal, y_cal)`` scores the
    calibration of ``clf``.

    Scores used (``response_method="auto"``, the order scikit-learn's
    ``CalibratedClassifierCV`` uses): ``decision_function`` when the classifier
    has it, else ``predict_proba``; the calibrators of probabilities
    (``"histogram"``, ``"beta"``, ``"venn_abers"``, ``"dirichlet"``, ``"top_label"``)
    always use ``predict_proba``.

    - ``"temperature"``, ``"vector"``, ``"matrix"``, ``"ets"``: the calibrator is fitted on
      logits: the decision function, or log(p + 1e-12) of the probabilities (the
      1e-12 of scikit-learn, so that a probability of 0 is a finite logit). A
      binary decision function x (one score per row) becomes the logits (0, x),
      whose softmax is sigmoid(x).
    - ``"platt"`` (or ``"sigmoid"``) and ``"isotonic"``: one binary calibrator on the
      score of the positive class (binary), or one per class on that class's column
      against 1[y = class] (one-vs-rest), whose outputs are divided by their sum
      (a row whose outputs are all 0 becomes uniform), as scikit-learn does.
    - ``"histogram"``, ``"beta"``, ``"venn_abers"``: :class:`HistogramBinning`,
      :class:`BetaCalibration`, :class:`VennAbers` of the probabilities (P(y = 1)
      of a binary classifier; one-vs-rest, renormalised, for K classes).
    - ``"dirichlet"``, ``"top_label"``: :class:`DirichletCalibration`,
      :class:`TopLabelHistogramBinning` of the (N, K) probabilities ((N, 2) for a
      binary classifier).

    Differences from ``CalibratedClassifierCV(FrozenEstimator(clf), method=...)``
    (by design): for ``"temperature"`` on a binary decision function x,
    scikit-learn uses the logits (-x, x), so its ``1 / beta_`` is twice this
    ``temperature_`` (the same probabilities, as the fitted families
    sigmoid(x / T) are the same); scikit-learn's sigmoid and temperature fits stop
    at its optimisers' tolerances (L-BFGS-B with ``gtol=1e-6`` on the summed loss;
    Brent on log beta), calibkit's at tighter ones, so probabilities agree to about
    1e-6 (sigmoid) and 1e-7 (temperature); isotonic fits are exact in both and agree
    to rounding (both pool sorted scores closer than 1e-15 as ties). Platt scaling here raises a ``ValueError`` for a class that has
    no calibration row (``"platt"`` one-vs-rest), where scikit-learn fits its
    smoothed targets.

    Parameters
    ----------
    estimator : fitted classifier
        Anything with ``predict_proba`` (any method) or ``decision_function``
        (every method but ``"histogram"``), and ``classes_`` (if it has none, the
        classes are ``0 .. K-1`` for K score columns).
    method : str or Calibrator, default "temperature"
        ``"temperature"``, ``"vector"``, ``"matrix"``, ``"platt"`` / ``"sigmoid"``,
        ``"isotonic"`` or ``"histogram"``; or an unfitted calibkit calibrator of one
        of these kinds, whose parameters are used (e.g. ``MatrixScaling(reg=1e-2)``).
    response_method : {"auto", "predict_proba", "decision_function"}, default "auto"
        Which scores of the classifier are calibrated (above).

    Attributes
    ----------
    calibrators_ : list of fitted calibrators
        One, or one per class (``"platt"`` and ``"isotonic"`` with more than two classes).
    classes_ : array of shape (K,)
        The classifier's classes; column k of :meth:`predict_proba` is ``classes_[k]``.
    response_method_ : str
        The scores used: ``"predict_proba"`` or ``"decision_function"``.
    n_features_in_ : int
        The classifier's, when it has one.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> import calibkit
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[:300], y[:300])
    >>> cal = calibkit.CalibratedClassifier(clf, method="isotonic").fit(X[300:450], y[300:450])
    >>> cal.predict_proba(X[450:]).shape
    (119, 2)
    >>> bool((cal.predict(X[450:]) == y[450:]).mean() > 0.9)
    True
    """

    _fitted_names = ("calibrators_", "classes_", "response_method_")

    def __init__(self, estimator: Any, method: Method | Calibrator = "temperature", *,
                 response_method: Literal["auto", "predict_proba", "decision_function"] = "auto"):
        self.estimator = estimator
        self.method = method
        self.response_method = response_method

    # -- parameters ---------------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters; with ``deep``, also the classifier's and the calibrator template's as ``estimator__name``
        and ``method__name`` (as scikit-learn's ``BaseEstimator``)."""
        params = super().get_params()
        if deep:
            for name in ("estimator", "method"):
                value = params[name]
                if hasattr(value, "get_params") and not isinstance(value, type):
                    params.update({f"{name}__{k}": v for k, v in value.get_params(deep=True).items()})
        return params

    def set_params(self, **params: Any) -> "CalibratedClassifier":
        """Set parameters by name (``estimator__name`` / ``method__name`` for the nested ones); returns self."""
        nested = {}
        for key in list(params):
            if "__" in key:
                head, sub = key.split("__", 1)
                nested.setdefault(head, {})[sub] = params.pop(key)
        super().set_params(**params)
        for head, sub in nested.items():
            if head not in ("estimator", "method") or not hasattr(getattr(self, head), "set_params"):
                raise ValueError(f"{type(self).__name__} has no nested parameters {head!r}__...")
            getattr(self, head).set_params(**sub)
        return self

    def __sklearn_clone__(self):
        """A new, unfitted CalibratedClassifier sharing this one's classifier (never refitted, so not copied)
        and a copy of the calibrator template."""
        method = self.method
        if isinstance(method, Calibrator):
            method = type(method)(**method.get_params())
        return type(self)(self.estimator, method, response_method=self.response_method)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags = None
        tags.classifier_tags.multi_class = True
        try:  # the classifier reads X: its input tags are ours
            from sklearn.utils import get_tags

            tags.input_tags = get_tags(self.estimator).input_tags
        except (AttributeError, TypeError, ValueError):
            pass
        return tags

    def _template(self):
        """An unfitted calibrator of the chosen method (a new one for each fit)."""
        method = self.method
        if isinstance(method, str):
            if method not in METHODS:
                raise ValueError(f"method must be one of {sorted(METHODS)} or a calibkit calibrator, got {method!r}")
            return METHODS[method]()
        if isinstance(method, (*_LOGIT, *_ONE_SCORE, *_PROBABILITY)):
            return type(method)(**method.get_params())
        names = ", ".join(c.__name__ for c in (*_LOGIT, *_ONE_SCORE, *_PROBABILITY))
        raise TypeError(f"method must be one of {sorted(METHODS)} or a calibkit calibrator ({names}), got {method!r}")

    def _response_name(self, template):
        if self.response_method not in RESPONSE_METHODS:
            raise ValueError(f"response_method must be one of {RESPONSE_METHODS}, got {self.response_method!r}")
        name = self.response_method
        if isinstance(template, _PROBABILITY):
            if name == "decision_function":
                raise ValueError(f"{_WHAT.get(type(template), type(template).__name__)} calibrates probabilities: response_method must be "
                                 "'predict_proba' or 'auto'")
            name = "predict_proba"
        elif name == "auto":
            name = "decision_function" if hasattr(self.estimator, "decision_function") else "predict_proba"
        if not callable(getattr(self.estimator, name, None)):
            raise TypeError(f"estimator {type(self.estimator).__name__} has no {name} method (a fitted classifier "
                            "with predict_proba or decision_function is needed)")
        return name

    # -- scores -------------------------------------------------------------------------------------
    def _raw(self, X, name, n_classes=None):
        """The classifier's scores: (N,) for two classes, (N, K) otherwise (checked against ``n_classes``)."""
        raw = np.asarray(getattr(self.estimator, name)(X))
        if not (raw.dtype.kind == "f" or raw.dtype.kind in "iub"):
            raise TypeError(f"estimator.{name} returned an array of dtype {raw.dtype}, expected numbers")
        raw = binary_column(raw)
        if raw.ndim == 2 and raw.shape[1] == 2 and name == "predict_proba":
            binary = True
        else:
            binary = raw.ndim == 1
        if raw.ndim not in (1, 2) or (raw.ndim == 2 and raw.shape[1] < 2):
            raise ValueError(f"estimator.{name} returned an array of shape {raw.shape}, expected (N,) or (N, K)")
        k = 2 if binary else raw.shape[1]
        if n_classes is not None and k != n_classes:
            raise ValueError(f"estimator.{name} gives scores of {k} classes but classes_ has {n_classes}")
        return raw, binary

    def _scores(self, raw, binary, name, template):
        """What the calibrator reads: logits (N, K), one score per row (N,), or probabilities."""
        if isinstance(template, _LOGIT):
            if name == "predict_proba":
                return np.log(np.asarray(raw, dtype=np.float64) + LOG_EPS)
            if binary:  # a binary decision function x: logits (0, x), whose softmax is (1 - sigmoid(x), sigmoid(x))
                z = np.zeros((raw.shape[0], 2))
                z[:, 1] = raw
                return z
            return raw
        if isinstance(template, _MATRIX) and binary:  # P(y = 1) or (N, 2) probabilities: (N, 2)
            return raw if raw.ndim == 2 else two_columns(np.asarray(raw, dtype=np.float64))
        if binary and raw.ndim == 2:  # predict_proba of two classes: the positive class's column
            return raw[:, 1]
        return raw

    def _encode(self, y, classes, n_rows):
        """Labels as indices into ``classes`` (ValueError naming the first label that is not a class)."""
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y must have shape (N,), got shape {y.shape}")
        if y.shape[0] != n_rows:
            raise ValueError(f"y has {y.shape[0]} entries but X has {n_rows} rows")
        order = np.argsort(classes, kind="stable")
        ordered = classes[order]
        try:
            pos = np.clip(np.searchsorted(ordered, y), 0, len(ordered) - 1)
            ok = ordered[pos] == y
        except (TypeError, ValueError):
            ok = np.zeros(len(y), bool)
            pos = np.zeros(len(y), np.int64)
        ok = np.asarray(ok, dtype=bool)
        if not ok.all():
            i = int(np.argmin(ok))
            raise ValueError(f"y[{i}] = {y[i].tolist()!r} is not one of the classifier's classes {classes.tolist()!r}")
        return order[pos].astype(np.int64)

    # -- fit and predict ----------------------------------------------------------------------------
    def fit(self, X: Any, y: ArrayLike, sample_weight: ArrayLike | None = None) -> "CalibratedClassifier":
        """Fit the calibration on held-out rows ``X`` (what the classifier reads) and labels ``y``; returns self.

        ``y`` holds labels of ``classes_`` (the classifier's classes). The classifier is not refitted.
        """
        template = self._template()
        name = self._response_name(template)
        classes = getattr(self.estimator, "classes_", None)
        raw, binary = self._raw(X, name, None if classes is None else len(classes))
        if classes is None:
            classes = np.arange(2 if binary else raw.shape[1])
        classes = np.asarray(classes)
        labels = self._encode(y, classes, raw.shape[0])
        if sample_weight is not None:
            sample_weight = check_sample_weight(sample_weight, raw.shape[0], check_values=True)
        scores = self._scores(raw, binary, name, template)
        if isinstance(template, _ONE_SCORE) and not binary:
            calibrators = [type(template)(**template.get_params()).fit(scores[:, k], (labels == k).astype(np.int64),
                                                                        sample_weight)
                           for k in range(len(classes))]
        else:
            calibrators = [template.fit(scores, labels, sample_weight)]
        self.calibrators_ = calibrators
        self.classes_ = classes
        self.response_method_ = name
        if hasattr(self.estimator, "n_features_in_"):
            self.n_features_in_ = self.estimator.n_features_in_
        return self

    def _check_fitted(self):
        if not self.__sklearn_is_fitted__():
            raise not_fitted_error()(f"this {type(self).__name__} is not fitted yet: call fit(X_cal, y_cal) first")

    def predict_proba(self, X: Any) -> FloatArray:
        """Calibrated probabilities of ``classes_``, shape (N, K) (K = 2 for a binary classifier)."""
        self._check_fitted()
        template = self.calibrators_[0]
        raw, binary = self._raw(X, self.response_method_, len(self.classes_))
        scores = self._scores(raw, binary, self.response_method_, template)
        if isinstance(template, _ONE_SCORE):
            if binary:
                return two_columns(template._probabilities(scores))
            proba = np.stack([c._probabilities(scores[:, k]) for k, c in enumerate(self.calibrators_)], axis=1)
            total = proba.sum(axis=1, keepdims=True)
            return np.divide(proba, total, out=np.full_like(proba, 1.0 / proba.shape[1]), where=total != 0)
        return template.predict_proba(scores)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class after calibration (a label of ``classes_``)."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X: Any, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """Mean (weighted) accuracy of :meth:`predict` on ``X`` against ``y`` (labels of ``classes_``)."""
        self._check_fitted()
        pred = self.predict(X)
        truth = self.classes_[self._encode(y, self.classes_, len(pred))]
        w = None if sample_weight is None else check_sample_weight(sample_weight, len(pred), check_values=True)
        return float(np.average(pred == truth, weights=w))
