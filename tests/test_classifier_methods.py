"""CalibratedClassifier with the calibrators of issue 16 (ets, beta, venn_abers, dirichlet, top_label): the same
probabilities as the calibrator fitted by hand on the classifier's scores, rows that sum to 1, binary and
multiclass."""

import warnings

import numpy as np
import pytest

import calibkit
from calibkit.calibrators import classifier as cc_module

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

NEW = ["ets", "beta", "venn_abers", "dirichlet", "top_label"]


def _split(load, a, b):
    X, y = load(return_X_y=True)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=10.0)).fit(X[:a], y[:a])
    return clf, (X[a:b], y[a:b]), X[b:]


@pytest.mark.parametrize("load,a,b", [(load_digits, 600, 1000), (load_breast_cancer, 200, 400)])
@pytest.mark.parametrize("method", NEW)
def test_same_as_the_calibrator_on_the_scores(load, a, b, method):
    clf, (Xc, yc), Xt = _split(load, a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        kw = {"reg_lambda": 1e-2, "reg_mu": 1e-2} if method == "dirichlet" else {}
        template = cc_module.METHODS[method](**kw)
        ours = calibkit.CalibratedClassifier(clf, method=template).fit(Xc, yc)
        P = ours.predict_proba(Xt)
        binary = len(clf.classes_) == 2
        if method == "ets":
            z = clf.decision_function(Xc)
            zt = clf.decision_function(Xt)
            if binary:
                z, zt = (np.column_stack([np.zeros(len(v)), v]) for v in (z, zt))
            want = cc_module.METHODS[method]().fit(z, yc).predict_proba(zt)
        else:
            pc, pt = clf.predict_proba(Xc), clf.predict_proba(Xt)
            if binary and method not in ("dirichlet", "top_label"):
                pc, pt = pc[:, 1], pt[:, 1]
            want = cc_module.METHODS[method](**kw).fit(pc, yc).predict_proba(pt)
    np.testing.assert_allclose(P, want, rtol=0, atol=1e-12)
    assert P.shape == (len(Xt), len(clf.classes_))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(Xt), clf.classes_[np.argmax(P, axis=1)])


@pytest.mark.parametrize("method", ["beta", "venn_abers", "dirichlet", "top_label"])
def test_probability_calibrators_refuse_decision_function(method):
    clf, (Xc, yc), _ = _split(load_breast_cancer, 200, 400)
    with pytest.raises(ValueError, match="calibrates probabilities: response_method"):
        calibkit.CalibratedClassifier(clf, method=method, response_method="decision_function").fit(Xc, yc)


def test_top_label_rows_sum_to_one_when_the_top_probability_rounds_to_one():
    """A float row whose top probability is 1.0 (or its predecessor) while the others add up to a few ulps: the
    other classes are scaled by their own sum, so the row still sums to 1."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(5, 0.05), 3000)
    y = np.array([rng.choice(5, p=r) for r in p])
    t = calibkit.TopLabelHistogramBinning(n_bins=5).fit(p, y)
    q = np.zeros((3, 5))
    q[:, 1] = [1.0, np.nextafter(1.0, 0.0), 1.0]
    q[0, 4] = 4.6e-16
    q[1, 2] = 3.3e-16
    out = t.predict_proba(q)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-15)
    assert (out.argmax(axis=1) == 1).all()
