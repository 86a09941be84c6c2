"""ConformalClassifier.to_dict / from_dict: a JSON round trip gives the same sets; malformed payloads raise one
ValueError naming the key."""

import copy
import json

import numpy as np
import pytest

import calibkit


def _data(seed=0, n=1500, k=6):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2.0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=r) for r in p])
    return z, y


@pytest.mark.parametrize("score", ["lac", "aps", "raps", "saps"])
@pytest.mark.parametrize("class_conditional", [False, True])
@pytest.mark.parametrize("randomized", [False, True])
def test_json_round_trip_gives_the_same_sets(score, class_conditional, randomized, backend):
    z, y = _data()
    cp = calibkit.ConformalClassifier(score, alpha=0.1, class_conditional=class_conditional, randomized=randomized,
                                      random_state=7, backend=backend)
    cp.fit(z[:1000], y[:1000], from_logits=True)
    saved = json.loads(json.dumps(cp.to_dict(), allow_nan=False))  # strict JSON: inf is written as None
    again = calibkit.ConformalClassifier.from_dict(saved)
    np.testing.assert_array_equal(again.thresholds_, cp.thresholds_)
    assert again.threshold_ == cp.threshold_
    np.testing.assert_array_equal(again.calibration_scores_, cp.calibration_scores_)
    # the loaded one draws as the original right after fit
    np.testing.assert_array_equal(again.predict_sets(z[1000:], from_logits=True),
                                  cp.predict_sets(z[1000:], from_logits=True))


def test_infinite_thresholds_and_bad_payloads():
    z, y = _data(1, n=60, k=4)
    y[:] = np.where(np.arange(60) < 57, 0, 1)  # classes 2 and 3 absent, class 1 with 3 rows: +inf thresholds
    cp = calibkit.ConformalClassifier("aps", alpha=0.1, class_conditional=True).fit(z, y, from_logits=True)
    d = cp.to_dict()
    assert None in d["fitted"]["thresholds_"]
    assert np.isinf(calibkit.ConformalClassifier.from_dict(d).thresholds_).sum() == np.isinf(cp.thresholds_).sum()

    def bad(mutate, match):
        e = copy.deepcopy(d)
        mutate(e)
        with pytest.raises(ValueError, match=match):
            calibkit.ConformalClassifier.from_dict(e)

    bad(lambda e: e.update(format="x"), "not a calibkit conformal")
    bad(lambda e: e.update(version=2), "unsupported")
    bad(lambda e: e["params"].pop("alpha"), "'params' must be a dict")
    bad(lambda e: e["params"].update(alpha=1.5), "invalid parameters: alpha")
    bad(lambda e: e["params"].update(random_state="x"), "random_state")
    bad(lambda e: e["fitted"].update(n_classes_=0), "n_classes_")
    bad(lambda e: e["fitted"].update(thresholds_=[0.5]), "n_classes_ = 4")
    bad(lambda e: e["fitted"]["calibration_scores_"].__setitem__(0, float("nan")), "finite numbers")
    bad(lambda e: e["fitted"].update(threshold_=0.123), "conformal quantile")
    bad(lambda e: e["fitted"].update(threshold_=True), "threshold_")
    with pytest.raises(ValueError, match="random_state None or an integer"):
        calibkit.ConformalClassifier(random_state=np.random.default_rng(0)).fit(z, y, from_logits=True).to_dict()
    with pytest.raises(ValueError, match="not fitted"):
        calibkit.ConformalClassifier().to_dict()
