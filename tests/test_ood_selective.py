"""Selective prediction: AURC rules, AUGRC, risk at coverage, coverage at risk (vs torch-uncertainty)."""

import importlib
import itertools
import math
import pathlib
import sys
import types

import numpy as np
import pytest

import calibkit
from conftest import load_real


def import_peer(package, module):
    """``package.module`` of an installed peer. The peers' top-level ``__init__`` imports torchvision (model zoos),
    which may be absent or built for another torch; the metric / detector modules themselves do not need it.
    Without torchvision, the parent packages are registered as empty packages (their ``__init__`` not run) and
    the module itself is imported from the installed source."""
    pytest.importorskip("torch")
    try:
        return importlib.import_module(f"{package}.{module}")
    except ImportError as e:
        if "torchvision" not in str(e) and "nms" not in str(e):
            pytest.skip(f"{package} does not import: {e}")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    parts = module.split(".")
    for i in range(len(parts)):
        name = ".".join([package, *parts[:i]])
        sys.modules.pop(name, None)
        stub = types.ModuleType(name)
        stub.__path__ = [str(root.joinpath(*parts[:i]))]
        sys.modules[name] = stub
    return importlib.import_module(f"{package}.{module}")


def torch_uncertainty():
    return import_peer("torch_uncertainty", "metrics.classification.risk_coverage")


def peer_value(metric, confidence, correct):
    """Feed torch-uncertainty a binary problem whose top-class confidence is `confidence` and whose prediction
    is right where `correct` is: probs (1 - c, c) with target 1 where correct, 0 where not (c > 0.5)."""
    import torch

    c = torch.tensor(confidence, dtype=torch.float64)
    probs = torch.stack([1 - c, c], dim=-1)
    metric.update(probs, torch.tensor(np.where(correct, 1, 0)))
    return float(metric.compute().reshape(-1)[0])


def sample(rng, n, ties=False):
    confidence = 0.5 + 0.5 * rng.uniform(0.02, 0.98, size=n)
    if ties:
        confidence = np.round(confidence, 2)
    correct = rng.uniform(size=n) < 0.3 + 0.7 * (confidence - 0.5) * 2
    return confidence, correct


def np_errors(confidence, correct, order=None):
    """Running errors among the k most confident, in a given order of the ties (stable descending by default)."""
    if order is None:
        order = np.argsort(-confidence, kind="stable")
    return np.cumsum(~correct[order]).astype(float)


# torch-uncertainty integrates over (and reports) a float32 coverage grid (torch.arange(1, N + 1) / N): its areas and coverages carry
# float32 rounding whatever the input dtype
PEER_AREA_RTOL = 2e-6


def np_trapezoid(y):
    x = np.arange(1, len(y) + 1) / len(y)
    return np.trapezoid(y, x) / (1 - 1 / len(y))


@pytest.mark.parametrize("n", (2, 3, 50, 2000))
def test_against_torch_uncertainty(backend, n):
    tu = torch_uncertainty()
    rng = np.random.default_rng(n)
    confidence, correct = sample(rng, n)
    assert calibkit.aurc(confidence, correct, rule="trapezoid", backend=backend) == pytest.approx(
        peer_value(tu.AURC(), confidence, correct), rel=PEER_AREA_RTOL)
    assert calibkit.augrc(confidence, correct, rule="trapezoid", backend=backend) == pytest.approx(
        peer_value(tu.AUGRC(), confidence, correct), rel=PEER_AREA_RTOL)
    for level in (0.05, 0.25, 0.5, 0.8, 1.0):
        if math.ceil(level * n) == math.ceil(__import__("fractions").Fraction(level) * n):
            assert calibkit.risk_at_coverage(confidence, correct, level, backend=backend) == pytest.approx(
                peer_value(tu.RiskAtxCov(level), confidence, correct), rel=1e-12, abs=1e-15)
    for level in (0.0, 0.05, 0.1, 0.3, 1.0):
        want = peer_value(tu.CovAtxRisk(level), confidence, correct)
        got = calibkit.coverage_at_risk(confidence, correct, level, backend=backend)
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=PEER_AREA_RTOL)


def test_real_dump_against_torch_uncertainty():
    tu = torch_uncertainty()
    d = load_real("focal_cifar10_resnet50_flsd53.npz")
    logits, labels = d["test_logits"].astype(np.float64), d["test_labels"]
    confidence = calibkit.max_probability(logits, from_logits=True)
    correct = logits.argmax(1) == labels
    # the peer takes the max of (1 - c, c): map the confidence monotonically into (0.5, 1]; the float32 logits
    # give ties: compare on the distinct values (the tie rule is tested below)
    c, first = np.unique(0.5 + confidence / 2, return_index=True)
    ok = correct[first]
    assert calibkit.aurc(c, ok, rule="trapezoid") == pytest.approx(peer_value(tu.AURC(), c, ok), rel=PEER_AREA_RTOL)
    assert calibkit.augrc(c, ok, rule="trapezoid") == pytest.approx(peer_value(tu.AUGRC(), c, ok), rel=PEER_AREA_RTOL)
    assert calibkit.risk_at_coverage(c, ok, 0.8) == pytest.approx(peer_value(tu.RiskAtxCov(0.8), c, ok), rel=1e-10)
    assert calibkit.coverage_at_risk(c, ok, 0.02) == pytest.approx(peer_value(tu.CovAtxRisk(0.02), c, ok), rel=PEER_AREA_RTOL)
    # and the whole dump runs (ties spread evenly)
    assert 0 < calibkit.augrc(confidence, correct) < calibkit.aurc(confidence, correct) < 1


@pytest.mark.parametrize("ties", (False, True))
def test_numpy_reference(backend, ties):
    rng = np.random.default_rng(11)
    confidence, correct = sample(rng, 300, ties)
    n = len(confidence)
    k = np.arange(1, n + 1)
    # the tie rule: the average over every order of the ties = errors spread evenly over each tie group
    e = np_errors(confidence, correct)
    groups = np.unique(-confidence, return_index=False, return_inverse=True)[1][np.argsort(-confidence, kind="stable")]
    spread = e.copy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        before = e[idx[0] - 1] if idx[0] else 0.0
        spread[idx] = before + (e[idx[-1]] - before) * np.arange(1, len(idx) + 1) / len(idx)
    assert calibkit.aurc(confidence, correct, rule="trapezoid", backend=backend) == pytest.approx(
        np_trapezoid(spread / k), rel=1e-12)
    assert calibkit.augrc(confidence, correct, rule="trapezoid", backend=backend) == pytest.approx(
        np_trapezoid(spread / n), rel=1e-12)
    # the sum rule: tie groups accepted together (today's AURC), generalized risk alike
    ends = np.r_[groups[1:] != groups[:-1], True]
    after = np.repeat(e[ends], np.diff(np.r_[-1, np.flatnonzero(ends)]))
    assert calibkit.aurc(confidence, correct, backend=backend) == pytest.approx(
        np.mean(after / np.repeat(k[ends], np.diff(np.r_[-1, np.flatnonzero(ends)]))), rel=1e-12)
    assert calibkit.augrc(confidence, correct, backend=backend) == pytest.approx(np.mean(after / n), rel=1e-12)
    for level in (0.01, 0.5, 0.7, 1.0):
        kk = next(k for k in range(1, n + 1) if k / n >= level)
        assert calibkit.risk_at_coverage(confidence, correct, level, backend=backend) == pytest.approx(
            spread[kk - 1] / kk, rel=1e-12)
    for risk in (0.0, 0.1, 0.2, 1.0):
        ok = np.flatnonzero(spread <= risk * k)
        want = (ok[-1] + 1) / n if ok.size else np.nan
        got = calibkit.coverage_at_risk(confidence, correct, risk, backend=backend)
        assert got == want or (np.isnan(got) and np.isnan(want))


def test_tie_rule_is_the_average_over_orders():
    confidence = np.array([0.9, 0.8, 0.8, 0.8, 0.7, 0.6, 0.6])
    correct = np.array([True, False, True, False, True, True, False])
    tied = [1, 2, 3], [5, 6]
    values = {"aurc": [], "augrc": [], "risk": []}
    for p in itertools.permutations(tied[0]):
        for q in itertools.permutations(tied[1]):
            order = np.array([0, *p, 4, *q])
            e = np_errors(confidence, correct, order)
            values["aurc"].append(np_trapezoid(e / np.arange(1, 8)))
            values["augrc"].append(np_trapezoid(e / 7))
            values["risk"].append(e[2] / 3)
    assert calibkit.aurc(confidence, correct, rule="trapezoid") == pytest.approx(np.mean(values["aurc"]))
    assert calibkit.augrc(confidence, correct, rule="trapezoid") == pytest.approx(np.mean(values["augrc"]))
    assert calibkit.risk_at_coverage(confidence, correct, 3 / 7) == pytest.approx(np.mean(values["risk"]))
    # and the order of the samples does not matter
    perm = np.random.default_rng(0).permutation(7)
    assert calibkit.aurc(confidence[perm], correct[perm], rule="trapezoid") == \
        calibkit.aurc(confidence, correct, rule="trapezoid")


def test_e_aurc_rules_and_edges(backend):
    rng = np.random.default_rng(12)
    confidence, correct = sample(rng, 400)
    perfect = correct.astype(float) + 0.1 * confidence
    for rule in ("sum", "trapezoid"):
        assert calibkit.e_aurc(perfect, correct, rule=rule, backend=backend) == pytest.approx(0.0, abs=1e-15)
        assert calibkit.e_aurc(confidence, correct, rule=rule, backend=backend) > 0
    assert calibkit.augrc(confidence, np.ones(400, bool), backend=backend) == 0.0
    # the default AURC is unchanged (Geifman's sum)
    e = np_errors(confidence, correct)
    assert calibkit.aurc(confidence, correct, backend=backend) == pytest.approx(np.mean(e / np.arange(1, 401)))
    # perfect ranking, sum rule: (1 + ... + N_e) / N^2
    n_e = int((~correct).sum())
    assert calibkit.augrc(perfect, correct, backend=backend) == pytest.approx(n_e * (n_e + 1) / 2 / 400 ** 2)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: calibkit.aurc([0.1, 0.2], [1, 0], rule="mid"), ValueError, r"rule must be one of \('sum', 'trapezoid'\)"),
    (lambda: calibkit.augrc([0.1], [1], rule="trapezoid"), ValueError, r"rule='trapezoid' needs at least 2"),
    (lambda: calibkit.risk_at_coverage([0.1, 0.2], [1, 0], 0.0), ValueError, r"coverage must be a number in \(0, 1\]"),
    (lambda: calibkit.risk_at_coverage([0.1, 0.2], [1, 0], True), ValueError, r"coverage must be a number"),
    (lambda: calibkit.coverage_at_risk([0.1, 0.2], [1, 0], -0.1), ValueError, r"risk must be a number in \[0, 1\]"),
    (lambda: calibkit.coverage_at_risk([0.1, np.nan], [1, 0], 0.1), ValueError, r"confidence\[\d\] = nan"),
    (lambda: calibkit.augrc([0.1, 0.2], [1, 2]), ValueError, r"correct\[1\] = 2 is not 0/1"),
    (lambda: calibkit.risk_at_coverage([], [], 0.5), ValueError, "confidence is empty"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_risk_at_coverage_count():
    confidence = np.linspace(1, 0.5, 10)
    correct = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 1], bool)
    assert calibkit.risk_at_coverage(confidence, correct, 0.7) == 0.0  # k = 7, not ceil(0.7 * 10) = 8
    assert calibkit.risk_at_coverage(confidence, correct, 0.71) == 1 / 8
    assert calibkit.risk_at_coverage(confidence, correct, 1e-300) == 0.0


def test_coverage_at_risk_none_admissible():
    assert np.isnan(calibkit.coverage_at_risk([0.9, 0.8], [0, 1], 0.4))
    assert calibkit.coverage_at_risk([0.9, 0.8], [0, 1], 0.5) == 1.0


def test_blocks_of_predictions_give_the_same_values(monkeypatch):
    from calibkit import ood

    rng = np.random.default_rng(13)
    confidence, correct = sample(rng, 1000, ties=True)
    calls = (lambda: calibkit.aurc(confidence, correct, rule="trapezoid"),
             lambda: calibkit.augrc(confidence, correct, rule="trapezoid"),
             lambda: calibkit.e_aurc(confidence, correct, rule="trapezoid"),
             lambda: calibkit.coverage_at_risk(confidence, correct, 0.2),
             lambda: calibkit.risk_at_coverage(confidence, correct, 0.33))
    whole = [f() for f in calls]
    monkeypatch.setattr(ood, "_K_BLOCK", 7)
    for f, want in zip(calls, whole):
        assert f() == pytest.approx(want, rel=1e-12)
