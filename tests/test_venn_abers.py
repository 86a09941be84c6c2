"""VennAbers: against the definition (an isotonic fit per test point), the venn-abers package and real dumps."""

import json
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit.calibrators.venn_abers import venn_abers_values
from conftest import load_real

pytestmark = [pytest.mark.filterwarnings("ignore:only class:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")]  # the peer's


def _pav_at(x, y, s, label):
    """Plain reference: the isotonic fit (ties in x pooled) of (x, y) plus (s, label), at s."""
    xs, ys = np.append(x, s), np.append(y, label).astype(float)
    u, inv = np.unique(xs, return_inverse=True)
    w = np.bincount(inv).astype(float)
    t = np.bincount(inv, weights=ys)
    blocks = []  # [sum w, sum y, first group]
    for g in range(len(u)):
        blocks.append([w[g], t[g], g])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][0] >= blocks[-1][1] / blocks[-1][0]:
            sw, st, _ = blocks.pop()
            blocks[-1][0] += sw
            blocks[-1][1] += st
    g = int(np.searchsorted(u, s))
    for b in reversed(blocks):
        if b[2] <= g:
            return b[1] / b[0]


def _reference(x, y, tests):
    p0 = np.array([_pav_at(x, y, s, 0) for s in tests])
    p1 = np.array([_pav_at(x, y, s, 1) for s in tests])
    return p0, p1


def _test_points(x, rng):
    """Every calibration score, points between them, and points outside their range."""
    u = np.unique(x)
    mids = (u[1:] + u[:-1]) / 2 if len(u) > 1 else np.array([])
    return np.concatenate([u, mids, [u[0] - 1, u[-1] + 1], rng.choice(u, 5)])


CASES = {
    "random": lambda rng: (rng.random(60), rng.integers(0, 2, 60)),
    "tied": lambda rng: (rng.integers(0, 6, 80) / 5, rng.integers(0, 2, 80)),
    "one point": lambda rng: (np.array([0.3]), np.array([1])),
    "two points": lambda rng: (np.array([0.3, 0.7]), np.array([1, 0])),
    "all one score": lambda rng: (np.full(9, 0.5), rng.integers(0, 2, 9)),
    "all positive": lambda rng: (rng.random(20), np.ones(20, int)),
    "all negative": lambda rng: (rng.random(20), np.zeros(20, int)),
    "sorted labels": lambda rng: (np.arange(30.0), (np.arange(30) >= 15).astype(int)),
    "reversed labels": lambda rng: (np.arange(30.0), (np.arange(30) < 15).astype(int)),
    "alternating": lambda rng: (np.arange(40.0), np.arange(40) % 2),
    "heavy ties, reversed": lambda rng: (np.repeat([0.1, 0.2, 0.3], [20, 1, 20]), np.repeat([1, 0, 0], [20, 1, 20])),
    "logits": lambda rng: (rng.normal(scale=30, size=50), rng.integers(0, 2, 50)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_definition(case, backend):
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    x, y = CASES[case](rng)
    tests = _test_points(x, rng)
    va = calibkit.VennAbers(backend=backend).fit(x, y)
    p0, p1 = va.predict_interval(tests)
    r0, r1 = _reference(x, y, tests)
    np.testing.assert_allclose(p0, r0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p1, r1, rtol=0, atol=1e-12)
    assert (p0 <= p1).all() and (p1 > 0).all()
    p = va.predict_proba(tests)
    np.testing.assert_allclose(p[:, 1], r1 / (1 - r0 + r1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(va.predict(tests), (p[:, 1] >= 0.5).astype(int))


def test_many_random_against_definition():
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 40))
        x = rng.integers(0, int(rng.integers(1, 12)), n).astype(float)
        y = (rng.random(n) < rng.random()).astype(int)
        tests = _test_points(x, rng)
        p0, p1 = calibkit.VennAbers().fit(x, y).predict_interval(tests)
        r0, r1 = _reference(x, y, tests)
        np.testing.assert_allclose(p0, r0, atol=1e-12, err_msg=f"trial {trial}")
        np.testing.assert_allclose(p1, r1, atol=1e-12, err_msg=f"trial {trial}")


def test_backends_agree():
    rng = np.random.default_rng(3)
    x, y = rng.random(3000).round(3), rng.integers(0, 2, 3000)
    a = venn_abers_values(x, y, "cpp")
    b = venn_abers_values(x, y, "numba")
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_invariant_to_monotone_transform():
    rng = np.random.default_rng(4)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    t = rng.random(100)
    a = calibkit.VennAbers().fit(p, y).predict_interval(t)
    b = calibkit.VennAbers().fit(np.log(p / (1 - p)), y).predict_interval(np.log(t / (1 - t)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_multiclass_one_vs_rest(backend):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(400, 4)) * 2
    y = rng.integers(0, 4, 400)
    va = calibkit.VennAbers(from_logits=True, backend=backend).fit(z, y)
    zt = rng.normal(size=(50, 4))
    p0, p1 = va.predict_interval(zt)
    assert p0.shape == p1.shape == (50, 4)
    e = np.exp(z - z.max(1, keepdims=True))
    pc = e / e.sum(1, keepdims=True)
    e = np.exp(zt - zt.max(1, keepdims=True))
    pt = e / e.sum(1, keepdims=True)
    for k in range(4):
        b0, b1 = calibkit.VennAbers().fit(pc[:, k], (y == k).astype(int)).predict_interval(pt[:, k])
        np.testing.assert_allclose(p0[:, k], b0, atol=1e-15)
        np.testing.assert_allclose(p1[:, k], b1, atol=1e-15)
    q = p1 / (1 - p0 + p1)
    np.testing.assert_allclose(va.predict_proba(zt), q / q.sum(1, keepdims=True), atol=1e-15)
    np.testing.assert_array_equal(va.predict(zt), np.argmax(va.predict_proba(zt), 1))
    assert va.n_classes_ == 4 and not va.binary_
    np.testing.assert_array_equal(va.classes_, np.arange(4))


def test_round_trip():
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(3), 200)
    y = rng.integers(0, 3, 200)
    for scores in (p, p[:, 1]):
        labels = y if scores.ndim == 2 else (y == 1).astype(int)
        va = calibkit.VennAbers().fit(scores, labels)
        again = calibkit.Calibrator.from_dict(json.loads(json.dumps(va.to_dict())))
        assert isinstance(again, calibkit.VennAbers)
        t = rng.dirichlet(np.ones(3), 30)
        t = t if scores.ndim == 2 else t[:, 1]
        np.testing.assert_array_equal(again.predict_proba(t), va.predict_proba(t))


def _bad_dicts():
    va = calibkit.VennAbers().fit(np.array([0.1, 0.5, 0.9]), np.array([0, 1, 1]))
    good = va.to_dict()

    def edit(f):
        d = json.loads(json.dumps(good))
        f(d["fitted"])
        return d

    return [
        (edit(lambda f: f.update(score_thresholds_=[[0.5, 0.1, 0.9]])), "strictly increasing"),
        (edit(lambda f: f.update(p0_=[[0.0, 0.5]])), "shape"),
        (edit(lambda f: f.update(p1_=[[0.5, 0.5, 2.0, 1.0]])), "must lie in"),
        (edit(lambda f: f.update(p1_=[[0.5, 0.5, float("nan"), 1.0]])), "NaN"),
        (edit(lambda f: f.update(p0_=[])), "lists of 1"),
        (edit(lambda f: f.update(binary_=1)), "true or false"),
        (edit(lambda f: f.update(n_classes_=3)), "must be 2"),
        (edit(lambda f: f.pop("p1_")), "lacks"),
    ]


@pytest.mark.parametrize("data, message", _bad_dicts())
def test_bad_dicts(data, message):
    with pytest.raises(ValueError, match=message):
        calibkit.Calibrator.from_dict(data)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: calibkit.VennAbers().fit([0.1, np.nan], [0, 1]), ValueError, r"scores\[1\] = nan"),
    (lambda: calibkit.VennAbers().fit([0.1, 0.2], [0, 2]), ValueError, r"labels\[1\] = 2 is not 0 or 1"),
    (lambda: calibkit.VennAbers().fit([[0.5, 0.5], [0.2, 0.8]], [0, 2]), ValueError, r"labels\[1\] = 2 is out of range"),
    (lambda: calibkit.VennAbers().fit([0.1, 0.2], [0]), ValueError, "labels"),
    (lambda: calibkit.VennAbers().fit([[0.5, 1.5], [0.2, 0.8]], [0, 1]), ValueError, "not a probability"),
    (lambda: calibkit.VennAbers(from_logits=1).fit([0.1, 0.2], [0, 1]), TypeError, "from_logits"),
    (lambda: calibkit.VennAbers(backend="gpu").fit([0.1, 0.2], [0, 1]), ValueError, "backend"),
    (lambda: calibkit.VennAbers().predict_proba([0.1]), calibkit.NotFittedError, "not fitted"),
    (lambda: calibkit.VennAbers().fit([0.1, 0.2], [0, 1]).predict_proba([[0.1, 0.2]]), ValueError, "binary"),
    (lambda: calibkit.VennAbers().fit([0.1, 0.2], [0, 1]).predict_proba([0.1, np.inf]), ValueError,
     r"scores\[1\] = inf"),
    (lambda: calibkit.VennAbers().fit([[0.5, 0.5], [0.2, 0.8]], [0, 1]).predict_proba([[0.2, 0.3, 0.5]]),
     ValueError, "fitted on 2 classes"),
])
def test_bad_input(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_bad_input_in_subprocess():
    code = ("import numpy as np, calibkit\n"
            "va = calibkit.VennAbers()\n"
            "try:\n    va.fit(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 1]))\n"
            "except ValueError as e:\n    print('ValueError', e)\n"
            "va.fit(np.array([0.1, 0.2, 0.3]), np.array([0, 1, 1]))\n"
            "print(va.predict_proba(np.array([-1e308, 1e308, 0.2])).tolist())\n")
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ValueError" in r.stdout and "nan" in r.stdout


def test_sample_weight_refused_and_estimator_protocol():
    import pickle

    with pytest.raises(ValueError, match="does not take sample_weight"):
        calibkit.VennAbers().fit([0.1, 0.2], [0, 1], sample_weight=[1.0, 1.0])
    va = calibkit.VennAbers(from_logits=True)
    assert va.get_params() == {"backend": "auto", "from_logits": True}
    rng = np.random.default_rng(8)
    z, y = rng.normal(size=(60, 3)), np.arange(60) % 3
    va.fit(z, y)
    again = pickle.loads(pickle.dumps(va))
    np.testing.assert_array_equal(again.predict_proba(z), va.predict_proba(z))
    assert 0.0 <= va.score(z, y) <= 1.0


def test_empty_fit_raises():
    with pytest.raises(ValueError):
        calibkit.VennAbers().fit(np.zeros(0), np.zeros(0, int))


def _peer():
    venn_abers = pytest.importorskip("venn_abers")
    return venn_abers


def _peer_p0p1(x, y, tests):
    """p0, p1 of the venn-abers package's binary VennAbers (fed two-column probabilities)."""
    venn_abers = _peer()
    va = venn_abers.VennAbers()
    va.fit(np.column_stack([1 - x, x]), y)
    _, p0p1 = va.predict_proba(np.column_stack([1 - tests, tests]))
    return p0p1[:, 0], p0p1[:, 1]


@pytest.mark.parametrize("case", ["random", "tied", "alternating", "heavy ties, reversed", "all positive"])
def test_matches_venn_abers_package(case):
    _peer()
    rng = np.random.default_rng(11)
    x, y = CASES[case](rng)
    x = (x - x.min()) / (x.max() - x.min() + 1)  # probabilities for the peer
    tests = np.clip(_test_points(x, rng), 0, 1)
    p0, p1 = calibkit.VennAbers().fit(x, y).predict_interval(tests)
    q0, q1 = _peer_p0p1(x, y, tests)
    np.testing.assert_allclose(p0, q0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p1, q1, rtol=0, atol=1e-9)


def test_matches_venn_abers_package_on_real_dump():
    _peer()
    d = load_real("focal_cifar10_resnet50_brier.npz")
    z = d["val_logits"].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, correct = p.max(1), (p.argmax(1) == d["val_labels"]).astype(int)
    zt = d["test_logits"][:2000].astype(np.float64)
    pt = np.exp(zt - zt.max(1, keepdims=True))
    pt = (pt / pt.sum(1, keepdims=True)).max(1)
    p0, p1 = calibkit.VennAbers().fit(conf, correct).predict_interval(pt)
    q0, q1 = _peer_p0p1(conf, correct, pt)
    np.testing.assert_allclose(p0, q0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p1, q1, rtol=0, atol=1e-9)
    # and the definition on a few test points
    r0, r1 = _reference(conf, correct, pt[:20])
    np.testing.assert_allclose(p0[:20], r0, atol=1e-12)
    np.testing.assert_allclose(p1[:20], r1, atol=1e-12)


@pytest.mark.parametrize("pattern", ["alternating", "sawtooth", "rising rate", "ties"])
def test_large_structured_against_definition(pattern):
    """Sizes beyond the walk's test blocks (64, doubling), on patterns where the bridge changes often."""
    rng = np.random.default_rng(12)
    n = 1500
    x = np.arange(n, dtype=float)
    if pattern == "alternating":
        y = np.arange(n) % 2
    elif pattern == "sawtooth":
        y = ((np.arange(n) % 97) > 60).astype(int)
    elif pattern == "rising rate":
        y = (rng.random(n) < np.linspace(0, 1, n) ** 3).astype(int)
    else:
        x = rng.integers(0, 200, n).astype(float)
        y = (rng.random(n) < x / 200).astype(int)
    tests = np.concatenate([rng.choice(np.unique(x), 30), rng.uniform(x.min() - 1, x.max() + 1, 30)])
    p0, p1 = calibkit.VennAbers().fit(x, y).predict_interval(tests)
    r0, r1 = _reference(x, y, tests)
    np.testing.assert_allclose(p0, r0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p1, r1, rtol=0, atol=1e-12)
