"""calibkit's calibrators in scikit-learn: the estimator protocol (check_estimator), Pipeline, GridSearchCV,
cross_val_score, clone, pickle; CalibratedClassifier against scikit-learn's CalibratedClassifierCV."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import calibkit
from calibkit import (
    BetaCalibration, CalibratedClassifier, DirichletCalibration, EnsembleTemperatureScaling, HistogramBinning,
    IsotonicCalibration, MatrixScaling, PlattScaling, TemperatureScaling, TopLabelHistogramBinning, VectorScaling,
    VennAbers,
)

sklearn = pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.calibration import CalibratedClassifierCV  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.exceptions import NotFittedError as SkNotFittedError  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.naive_bayes import GaussianNB  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402
from sklearn.utils.validation import check_is_fitted  # noqa: E402


# -- check_estimator -------------------------------------------------------------------------------------------
# scikit-learn's checks feed generic features (any real numbers, any number of columns) and generic labels (strings,
# floats, labels unrelated to the columns). A calibrator reads scores: one column per class with labels 0 .. K-1
# (column k is class k), probabilities in [0, 1] for isotonic / histogram calibration of (N, K) scores, one score
# per row for the binary calibrators. The checks below fail for that reason, or because calibkit's messages name
# scores / logits / labels in its own words; each is declared with the reason. Every other check passes.
GENERIC_X = ("generic features are not scores: a label k needs a column k (logits / scores of shape (N, K), labels "
             "0 .. K-1), isotonic / histogram calibration of (N, K) scores needs probabilities in [0, 1], and the "
             "binary calibrators take one score per row")
REASONS = {
    "check_fit_score_takes_y": "fit(scores, labels) / fit(logits, labels): the arguments are named for what they "
                               "are; scikit-learn (Pipeline, GridSearchCV, cross_val_score) passes them by position",
    "check_sample_weight_equivalence_on_dense_data": "the check passes y=... by keyword; the argument is `labels`",
    "check_transformer_data_not_an_array": "the check passes y=... by keyword; the argument is `labels`",
    "check_transformer_general": "the check passes y=... by keyword; the argument is `labels`",
    "check_classifiers_classes": "labels are class indices 0 .. K-1 (column k is class k), not strings; "
                                 "CalibratedClassifier maps any labels",
    "check_requires_y_none": "labels must be integers: the error is calibkit's (TypeError 'labels must be "
                             "integers'), not scikit-learn's wording",
    "check_classifiers_regression_target": "float labels raise calibkit's TypeError 'labels must be integers', not "
                                           "'Unknown label type'",
    "check_supervised_y_no_nan": "float labels (with NaN / inf) raise calibkit's TypeError 'labels must be integers'",
    "check_supervised_y_2d": "labels of shape (N, 1) are taken as (N,) without a DataConversionWarning",
    "check_all_zero_sample_weights_error": "all-zero weights raise calibkit's message ('sample_weight sums to 0 "
                                           "(every weight is 0)'), not the pattern the check looks for",
    "check_complex_data": "complex scores raise calibkit's TypeError ('must be an array of floats'), not "
                          "'Complex data not supported'",
    "check_dtype_object": "object arrays raise calibkit's TypeError ('must be an array of floats')",
    "check_estimators_empty_data_messages": "empty input raises calibkit's message, not scikit-learn's wording",
    "check_estimators_nan_inf": "NaN / inf raise calibkit's message naming the element ('scores[3, 1] = nan is not "
                                "finite'), not scikit-learn's wording",
    "check_estimator_sparse_tag": "scores are dense arrays; sparse input is refused with calibkit's TypeError",
    "check_estimator_sparse_array": "scores are dense arrays; sparse input is refused with calibkit's TypeError",
    "check_estimator_sparse_matrix": "scores are dense arrays; sparse input is refused with calibkit's TypeError",
    "check_classifiers_one_label": "one class in the labels: calibration is degenerate (a RuntimeWarning or a "
                                   "ValueError), not a classifier that predicts that class",
    "check_classifiers_one_label_sample_weights": "one class in the labels: calibration is degenerate (a "
                                                  "RuntimeWarning or a ValueError naming the labels)",
    "check_fit2d_1feature": "one column is binary scores (one-score calibrators) or too few classes for logits "
                            "(K >= 2), refused with calibkit's message",
    "check_fit2d_1sample": "one row cannot fit the calibrator (more parameters than rows); calibkit's message",
    "check_fit2d_predict1d": "1-D input is binary scores or refused with calibkit's message ('shape (N, K)'), not "
                             "'Reshape your data'",
    "check_n_features_in_after_fitting": "a wrong number of columns raises calibkit's message ('logits have 3 "
                                         "classes but the calibrator was fitted on 4 classes')",
    "check_fit1d": "1-D input is the binary calibrators' own input (one score per row)",
    "check_classifier_not_supporting_multiclass": "PlattScaling is binary: labels other than 0 / 1 raise calibkit's "
                                                  "message ('is not 0 or 1')",
}
for name in ("check_classifier_data_not_an_array", "check_classifiers_train", "check_dict_unchanged",
             "check_dont_overwrite_parameters", "check_estimators_dtypes", "check_estimators_fit_returns_self",
             "check_estimators_overwrite_params", "check_estimators_pickle", "check_f_contiguous_array_estimator",
             "check_fit_check_is_fitted", "check_fit_idempotent", "check_methods_sample_order_invariance",
             "check_methods_subset_invariance", "check_n_features_in", "check_pipeline_consistency",
             "check_non_transformer_estimators_n_iter", "check_sample_weights_list",
             "check_sample_weights_pandas_series",
             "check_positive_only_tag_during_fit", "check_readonly_memmap_input", "check_sample_weights_not_an_array",
             "check_sample_weights_not_overwritten", "check_sample_weights_shape"):
    REASONS[name] = GENERIC_X

# The checks each calibrator fails (scikit-learn 1.9.1), all for the reasons above.
_ALL = {"check_all_zero_sample_weights_error", "check_classifier_data_not_an_array", "check_classifiers_classes",
        "check_classifiers_one_label", "check_classifiers_regression_target", "check_classifiers_train",
        "check_complex_data", "check_dtype_object", "check_estimator_sparse_array", "check_estimator_sparse_matrix",
        "check_estimator_sparse_tag", "check_estimators_empty_data_messages", "check_estimators_nan_inf",
        "check_fit2d_1feature", "check_fit2d_predict1d", "check_fit_score_takes_y",
        "check_n_features_in_after_fitting", "check_requires_y_none", "check_sample_weight_equivalence_on_dense_data",
        "check_sample_weights_not_an_array", "check_sample_weights_not_overwritten", "check_sample_weights_shape",
        "check_sample_weights_pandas_series",  # skipped when pandas is not installed
        "check_supervised_y_2d"}
_LOGIT = {"check_estimators_fit_returns_self", "check_estimators_overwrite_params", "check_readonly_memmap_input",
          "check_supervised_y_no_nan", "check_transformer_data_not_an_array", "check_transformer_general"}
_ONE_SCORE = {"check_dict_unchanged", "check_dont_overwrite_parameters", "check_estimators_dtypes",
              "check_f_contiguous_array_estimator", "check_fit2d_1sample", "check_methods_sample_order_invariance",
              "check_methods_subset_invariance", "check_n_features_in"}
_STEP = {"check_estimators_fit_returns_self", "check_estimators_overwrite_params", "check_estimators_pickle",
         "check_fit_check_is_fitted", "check_fit_idempotent", "check_pipeline_consistency",
         "check_positive_only_tag_during_fit", "check_readonly_memmap_input", "check_supervised_y_no_nan"}
FAILING = {
    "TemperatureScaling": _ALL | _LOGIT,
    "VectorScaling": _ALL | _LOGIT | {"check_classifiers_one_label_sample_weights", "check_fit2d_1sample"},
    "MatrixScaling": _ALL | _LOGIT | {"check_classifiers_one_label_sample_weights", "check_fit2d_1sample",
                                      "check_estimators_dtypes"},
    "PlattScaling": _ALL | {"check_estimators_dtypes", "check_estimators_fit_returns_self",
                            "check_estimators_overwrite_params", "check_estimators_pickle",
                            "check_pipeline_consistency", "check_positive_only_tag_during_fit",
                            "check_readonly_memmap_input", "check_supervised_y_no_nan",
                            "check_classifier_not_supporting_multiclass", "check_non_transformer_estimators_n_iter"},
    "IsotonicCalibration": _ALL | _ONE_SCORE | _STEP,
    "HistogramBinning": _ALL | _ONE_SCORE | _STEP,
    # issue 16's calibrators: of logits (ETS) as the scaling ones, of probabilities as histogram binning
    "EnsembleTemperatureScaling": _ALL | _LOGIT,
    "BetaCalibration": _ALL | _ONE_SCORE | _STEP | {"check_non_transformer_estimators_n_iter"},
    "DirichletCalibration": _ALL | _ONE_SCORE | _STEP | {"check_non_transformer_estimators_n_iter"},
    "TopLabelHistogramBinning": _ALL | _ONE_SCORE | _STEP | {"check_classifiers_one_label_sample_weights",
                                                             "check_sample_weights_list"},
    "VennAbers": _ALL | _ONE_SCORE | _STEP | {"check_classifiers_one_label_sample_weights",
                                              "check_sample_weights_list"},
}


def expected_failed_checks(estimator):
    return {name: REASONS[name] for name in FAILING[type(estimator).__name__]}


with warnings.catch_warnings():
    # calibkit's estimators implement the protocol (get_params, __sklearn_tags__, ...) without deriving from
    # sklearn.base.BaseEstimator, so that `import calibkit` does not import scikit-learn (see _base.EstimatorProtocol);
    # parametrize_with_checks warns about that, and the checks below show the protocol holds.
    warnings.filterwarnings("ignore", message="Estimator .* does not inherit from", category=UserWarning)
    _CHECKS = parametrize_with_checks([TemperatureScaling(), VectorScaling(), MatrixScaling(), PlattScaling(),
                                       IsotonicCalibration(), HistogramBinning(), EnsembleTemperatureScaling(),
                                       BetaCalibration(), DirichletCalibration(kind="diagonal"),
                                       TopLabelHistogramBinning(), VennAbers()],
                                      expected_failed_checks=expected_failed_checks)


@_CHECKS
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate fits on generic data warn
        check(estimator)


def test_every_declared_failure_has_a_reason():
    for names in FAILING.values():
        assert names <= set(REASONS)


# -- the protocol, piece by piece ------------------------------------------------------------------------------

def _logits(seed=0, n=600, k=4, scale=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.5
    return z * scale, y


def _binary(seed=1, n=600):
    rng = np.random.default_rng(seed)
    f = rng.normal(scale=2.0, size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-f))).astype(int)
    return f, y


def _fitted_all():
    z, y = _logits()
    f, yb = _binary()
    p = 1 / (1 + np.exp(-f))
    return [(TemperatureScaling().fit(z, y), z, y), (VectorScaling().fit(z, y), z, y),
            (MatrixScaling(reg=1e-2).fit(z, y), z, y), (PlattScaling().fit(f, yb), f, yb),
            (IsotonicCalibration().fit(p, yb), p, yb), (HistogramBinning().fit(p, yb), p, yb),
            (IsotonicCalibration(from_logits=True).fit(z, y), z, y),
            (HistogramBinning(from_logits=True).fit(z, y), z, y)]


def test_binary_predict_proba_is_two_columns_and_classes_and_n_features_in():
    for cal, x, y in _fitted_all():
        p = cal.predict_proba(x)
        k = len(np.unique(y))
        assert p.shape == (len(x), k)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_array_equal(cal.classes_, np.arange(k))
        assert cal.n_features_in_ == (1 if x.ndim == 1 else x.shape[1])
        # binary: class 1 where P(y = 1) >= 0.5 (a tie at 0.5 goes to class 1, as documented), else the argmax
        want = (p[:, 1] >= 0.5).astype(int) if k == 2 else np.argmax(p, axis=1)
        np.testing.assert_array_equal(cal.predict(x), want)
        if x.ndim == 1:  # one column works too, and column 1 is P(y = 1)
            np.testing.assert_array_equal(cal.predict_proba(x[:, None]), p)
            np.testing.assert_array_equal(p[:, 0], 1.0 - p[:, 1])
        assert 0.0 <= cal.score(x, y) <= 1.0
        assert cal.score(x, y) == pytest.approx(np.mean(cal.predict(x) == y))
        assert sklearn.base.is_classifier(cal)
        check_is_fitted(cal)


def test_clone_pickle_and_params_round_trip():
    for cal, x, _ in _fitted_all():
        params = cal.get_params()
        assert type(cal)(**params).get_params() == params  # stored unmodified
        c = clone(cal)
        assert c.get_params() == params
        with pytest.raises(SkNotFittedError):
            check_is_fitted(c)
        assert not hasattr(c, "classes_") and not hasattr(c, "n_features_in_")
        again = pickle.loads(pickle.dumps(cal))
        np.testing.assert_array_equal(again.predict_proba(x), cal.predict_proba(x))
    # validation happens in fit, not in the constructor (set_params accepts anything, fit names the parameter)
    ts = TemperatureScaling(tol=-1.0)
    assert ts.get_params()["tol"] == -1.0
    with pytest.raises(ValueError, match="tol"):
        ts.fit(*_logits())


def test_not_fitted_error_is_sklearns():
    assert issubclass(calibkit.NotFittedError, SkNotFittedError)
    assert issubclass(calibkit.NotFittedError, ValueError) and issubclass(calibkit.NotFittedError, AttributeError)
    assert calibkit.NotFittedError is calibkit.calibrators.NotFittedError
    from calibkit import NotFittedError
    assert NotFittedError is calibkit.NotFittedError
    for cal in (TemperatureScaling(), PlattScaling(), IsotonicCalibration(), CalibratedClassifier(GaussianNB())):
        with pytest.raises(SkNotFittedError, match="not fitted"):
            cal.predict_proba(np.zeros((3, 2)))
        with pytest.raises(calibkit.NotFittedError):
            cal.predict(np.zeros((3, 2)))


def test_without_sklearn_in_a_subprocess():
    """scikit-learn stays optional: calibkit imports, fits and raises its NotFittedError with sklearn blocked;
    and a plain ``import calibkit`` does not import scikit-learn even when it is installed."""
    code = textwrap.dedent("""
        import sys
        sys.modules["sklearn"] = None  # any import of sklearn now raises ImportError
        import numpy as np, calibkit
        z = np.random.default_rng(0).normal(size=(200, 3)); y = np.arange(200) % 3
        ts = calibkit.TemperatureScaling().fit(z, y)
        assert ts.predict_proba(z).shape == (200, 3) and list(ts.classes_) == [0, 1, 2]
        assert calibkit.PlattScaling().fit(z[:, 0], y % 2).predict_proba(z[:, 0]).shape == (200, 2)
        E = calibkit.NotFittedError
        assert E.__bases__ == (ValueError, AttributeError), E.__bases__
        try:
            calibkit.TemperatureScaling().predict_proba(z)
        except E as e:
            print("ok", type(e).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok NotFittedError"
    code = "import sys, calibkit; calibkit.TemperatureScaling(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- Pipeline, GridSearchCV, cross_val_score -----------------------------------------------------------------

def _two_step(cal):
    """A pipeline whose first step turns features into logits (a fitted model, frozen) and whose last is `cal`."""
    X, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=300).fit(X[:700], y[:700])
    return Pipeline([("logits", FunctionTransformer(model.decision_function)), ("cal", cal)]), X[700:], y[700:]


@pytest.mark.parametrize("cal", [TemperatureScaling(), VectorScaling(), MatrixScaling(reg=1.0),
                                 IsotonicCalibration(from_logits=True), HistogramBinning(from_logits=True)])
def test_pipeline_predict_proba_transform_and_scoring(cal):
    pipe, X, y = _two_step(cal)
    pipe.fit(X[:500], y[:500])
    p = pipe.predict_proba(X[500:])
    assert p.shape == (len(X) - 500, 10)
    np.testing.assert_allclose(p, pipe[-1].predict_proba(pipe[0].transform(X[500:])))
    if hasattr(cal, "transform"):
        assert pipe.transform(X[500:]).shape == p.shape
    scores = cross_val_score(pipe, X, y, scoring="neg_log_loss", cv=3, error_score="raise")
    assert np.isfinite(scores).all() and (scores < 0).all()


def test_grid_search_with_neg_log_loss_scores_every_candidate():
    pipe, X, y = _two_step(VectorScaling())
    grid = GridSearchCV(pipe, {"cal__reg": [0.0, 1e-2, 1.0]}, scoring="neg_log_loss", cv=3, error_score="raise")
    grid.fit(X, y)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    assert grid.best_params_["cal__reg"] in (0.0, 1e-2, 1.0)
    assert grid.predict_proba(X).shape == (len(X), 10)


def test_binary_calibrator_in_pipeline_with_neg_log_loss():
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[:250], y[:250])
    for cal in (PlattScaling(), IsotonicCalibration()):
        pipe = Pipeline([("score", FunctionTransformer(lambda a: model.decision_function(a)[:, None])), ("cal", cal)])
        scores = cross_val_score(pipe, X[250:], y[250:], scoring="neg_log_loss", cv=3, error_score="raise")
        assert np.isfinite(scores).all()
        assert pipe.fit(X[250:], y[250:]).predict_proba(X[:5]).shape == (5, 2)


# -- CalibratedClassifier against CalibratedClassifierCV(FrozenEstimator(clf)) ---------------------------------

def _split(loader, n_fit, n_cal):
    X, y = loader(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))
    X, y = X[idx], y[idx]
    return (X[:n_fit], y[:n_fit]), (X[n_fit:n_fit + n_cal], y[n_fit:n_fit + n_cal]), X[n_fit + n_cal:]


def _both(clf, method, fit, cal, X_test):
    clf.fit(*fit)
    ours = CalibratedClassifier(clf, method=method).fit(*cal)
    theirs = CalibratedClassifierCV(FrozenEstimator(clf), method=method).fit(*cal)
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    return ours, ours.predict_proba(X_test), theirs.predict_proba(X_test)


# Tolerances. Isotonic: both fits are exact PAV on the same points (ties pooled, the same interpolation and clip),
# so only rounding differs: 1e-12. Sigmoid: scikit-learn's L-BFGS-B stops at gtol=1e-6 on the *summed* loss of
# ~300-600 rows, calibkit's Newton at a gradient of 1e-12 x the weight: (A, B) differ by ~1e-6 / (N * curvature),
# so probabilities by well under 1e-6: 1e-6. Temperature: scikit-learn's Brent on log beta stops at xatol=1.4e-14,
# but a minimum is only located to ~sqrt(eps) ~ 1e-8 relative of the loss's flatness; calibkit's T is certified to
# tol=1e-7 relative: a relative change d of T moves p by at most |z| p (1 - p) d <= 1e-7 * max|log p| (~30 here):
# 1e-6 covers both.
TOL = {"isotonic": 1e-12, "sigmoid": 1e-6, "temperature": 1e-6}


@pytest.mark.parametrize("method", ["sigmoid", "isotonic", "temperature"])
@pytest.mark.parametrize("make", [lambda: make_pipeline(StandardScaler(), LogisticRegression()),
                                  lambda: RandomForestClassifier(n_estimators=50, random_state=0)],
                         ids=["logreg", "forest"])
def test_matches_sklearn_binary_breast_cancer(method, make):
    fit, cal, X_test = _split(load_breast_cancer, 250, 200)
    ours, p, q = _both(make(), method, fit, cal, X_test)
    assert p.shape == q.shape == (len(X_test), 2)
    np.testing.assert_allclose(p, q, rtol=0, atol=TOL[method])
    np.testing.assert_array_equal(ours.predict(X_test), ours.classes_[np.argmax(p, axis=1)])


@pytest.mark.parametrize("method", ["sigmoid", "isotonic", "temperature"])
@pytest.mark.parametrize("make", [lambda: LogisticRegression(max_iter=2000),
                                  lambda: RandomForestClassifier(n_estimators=50, random_state=0)],
                         ids=["logreg", "forest"])
def test_matches_sklearn_multiclass_digits(method, make):
    fit, cal, X_test = _split(load_digits, 700, 600)
    _, p, q = _both(make(), method, fit, cal, X_test)
    assert p.shape == q.shape == (len(X_test), 10)
    np.testing.assert_allclose(p, q, rtol=0, atol=TOL[method])


@pytest.mark.parametrize("method", ["sigmoid", "temperature"])
def test_matches_sklearn_gaussian_nb(method):
    """GaussianNB has no decision_function: both calibrate predict_proba (temperature: log(p + 1e-12))."""
    fit, cal, X_test = _split(load_digits, 700, 600)
    _, p, q = _both(GaussianNB(), method, fit, cal, X_test)
    np.testing.assert_allclose(p, q, rtol=0, atol=TOL[method])


def _sklearn_tie_groups(x):
    """scikit-learn's IsotonicRegression pools sorted scores closer than 1e-15 (absolute) to the first of their
    group (``_make_unique``): each score mapped to that first score."""
    order = np.argsort(x, kind="stable")
    out = np.empty_like(x)
    current = x[order[0]]
    for i in order:
        if x[i] - current >= np.finfo(np.float64).resolution:
            current = x[i]
        out[i] = current
    return out


def test_isotonic_near_ties_as_sklearn():
    """GaussianNB's probabilities go down to 1e-300: scikit-learn pools every score within 1e-15 of the first of
    a group as a tie, and so does calibkit now (``isotonic_regression``'s near-tie rule), so the calibrated
    probabilities are scikit-learn's; pooling those groups by hand first gives the same."""
    fit, (X_cal, y_cal), X_test = _split(load_digits, 700, 600)
    clf = GaussianNB().fit(*fit)
    P, Pt = clf.predict_proba(X_cal), clf.predict_proba(X_test)
    theirs = CalibratedClassifierCV(FrozenEstimator(clf), method="isotonic").fit(X_cal, y_cal).predict_proba(X_test)
    ours = CalibratedClassifier(clf, method="isotonic").fit(X_cal, y_cal).predict_proba(X_test)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    cols = []
    for k in range(10):
        iso = IsotonicCalibration().fit(_sklearn_tie_groups(P[:, k]), (y_cal == k).astype(int))
        cols.append(iso.predict_proba(Pt[:, k])[:, 1])
    q = np.stack(cols, axis=1)
    total = q.sum(axis=1, keepdims=True)
    q = np.divide(q, total, out=np.full_like(q, 0.1), where=total != 0)
    np.testing.assert_allclose(q, theirs, rtol=0, atol=1e-12)


def test_temperature_binary_decision_function_is_half_sklearns():
    """Documented difference: a binary decision function x is the logits (0, x) here, (-x, x) in scikit-learn, so
    scikit-learn's 1 / beta_ is twice calibkit's temperature_ (and the probabilities agree)."""
    fit, cal, X_test = _split(load_breast_cancer, 250, 200)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(*fit)
    ours = CalibratedClassifier(clf, method="temperature").fit(*cal)
    theirs = CalibratedClassifierCV(FrozenEstimator(clf), method="temperature").fit(*cal)
    beta = float(theirs.calibrated_classifiers_[0].calibrators[0].beta_)
    assert 1.0 / beta == pytest.approx(2.0 * ours.calibrators_[0].temperature_, rel=1e-6)


# -- CalibratedClassifier itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["temperature", "vector", "matrix", "platt", "sigmoid", "isotonic", "histogram",
                                    MatrixScaling(reg=1e-1), HistogramBinning(n_bins=5, strategy="quantile")])
def test_every_method_with_string_labels(method):
    X, y = load_digits(return_X_y=True)
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    labels = names[y]
    clf = GaussianNB().fit(X[:700], labels[:700])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cc = CalibratedClassifier(clf, method=method).fit(X[700:1300], labels[700:1300])
    p = cc.predict_proba(X[1300:])
    assert p.shape == (len(X) - 1300, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(cc.classes_, clf.classes_)
    pred = cc.predict(X[1300:])
    assert pred.dtype == clf.classes_.dtype and set(pred) <= set(names)
    assert cc.score(X[1300:], labels[1300:]) > 0.5
    assert calibkit.nll(p, np.searchsorted(cc.classes_, labels[1300:])) < \
        calibkit.nll(np.clip(clf.predict_proba(X[1300:]), 1e-12, 1), np.searchsorted(clf.classes_, labels[1300:]))


def test_classifier_is_not_refitted_and_clone_shares_it():
    fit, (X_cal, y_cal), X_test = _split(load_breast_cancer, 250, 200)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(*fit)
    coef = clf[-1].coef_.copy()
    cc = CalibratedClassifier(clf, method="isotonic").fit(X_cal, y_cal)
    np.testing.assert_array_equal(clf[-1].coef_, coef)
    c = clone(cc)
    assert c.estimator is clf and not hasattr(c, "calibrators_")
    np.testing.assert_array_equal(c.fit(X_cal, y_cal).predict_proba(X_test), cc.predict_proba(X_test))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(cc)).predict_proba(X_test), cc.predict_proba(X_test))
    scores = cross_val_score(CalibratedClassifier(clf, "sigmoid"), X_cal, y_cal, scoring="neg_log_loss", cv=4,
                             error_score="raise")
    assert np.isfinite(scores).all()
    grid = GridSearchCV(CalibratedClassifier(clf), {"method": ["temperature", "sigmoid", "isotonic"]},
                        scoring="neg_log_loss", cv=3, error_score="raise").fit(X_cal, y_cal)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()


def test_calibrated_classifier_params_and_nested():
    cc = CalibratedClassifier(LogisticRegression(), method=MatrixScaling(reg=0.5))
    params = cc.get_params()
    assert params["estimator__C"] == 1.0 and params["method__reg"] == 0.5
    cc.set_params(method__reg=2.0, estimator__C=3.0, response_method="predict_proba")
    assert cc.method.reg == 2.0 and cc.estimator.C == 3.0 and cc.response_method == "predict_proba"
    assert "CalibratedClassifier(estimator=LogisticRegression(C=3.0)" in repr(cc)


def test_calibrated_classifier_bad_input():
    fit, (X_cal, y_cal), _ = _split(load_breast_cancer, 250, 200)
    clf = GaussianNB().fit(*fit)
    with pytest.raises(ValueError, match="method must be one of"):
        CalibratedClassifier(clf, method="gamma").fit(X_cal, y_cal)
    with pytest.raises(TypeError, match="method must be one of"):
        CalibratedClassifier(clf, method=3).fit(X_cal, y_cal)
    with pytest.raises(ValueError, match="response_method must be one of"):
        CalibratedClassifier(clf, response_method="predict").fit(X_cal, y_cal)
    with pytest.raises(TypeError, match="has no decision_function"):
        CalibratedClassifier(clf, response_method="decision_function").fit(X_cal, y_cal)
    with pytest.raises(ValueError, match="histogram binning calibrates probabilities"):
        CalibratedClassifier(clf, "histogram", response_method="decision_function").fit(X_cal, y_cal)
    with pytest.raises(ValueError, match=r"y\[3\] = 7 is not one of the classifier's classes \[0, 1\]"):
        CalibratedClassifier(clf).fit(X_cal, np.r_[y_cal[:3], 7, y_cal[4:]])
    with pytest.raises(ValueError, match=r"y\[0\] = 'a' is not one of the classifier's classes"):
        CalibratedClassifier(clf).fit(X_cal, np.array(["a"] * len(y_cal)))
    with pytest.raises(ValueError, match="entries but X has"):
        CalibratedClassifier(clf).fit(X_cal, y_cal[:-1])
    with pytest.raises(SkNotFittedError):  # the classifier itself is not fitted: scikit-learn says so
        CalibratedClassifier(GaussianNB()).fit(X_cal, y_cal)
    y_nan = np.where(np.arange(len(y_cal)) == 5, 0.5, y_cal)
    with pytest.raises(ValueError, match=r"y\[5\] = 0.5 is not one of"):
        CalibratedClassifier(clf).fit(X_cal, y_nan)


# -- docstring examples --------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["scaling", "platt", "nonparametric", "classifier"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"calibkit.calibrators.{module}")
    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0 and result.failed == 0, result


def test_report_keeps_the_one_column_binary_probabilities():
    """`calibkit report` / `calibkit apply` read binary calibrators through the (N,) accessor: P(y = 1), the same
    numbers as predict_proba(...)[:, 1]."""
    from calibkit import report

    rng = np.random.default_rng(3)
    s = rng.random(300)
    y = (rng.random(300) < s).astype(int)
    for method in ("isotonic", "histogram"):
        cal = report.fit_calibrator(method, s, y, False)
        p = report.calibrated_probabilities(cal, method, s, False)
        assert p.shape == (300,)
        np.testing.assert_array_equal(p, cal.predict_proba(s)[:, 1])
