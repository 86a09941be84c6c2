"""n_bins chosen by rule: "cube_root", "sqrt" and Roelofs et al.'s monotonic "sweep"."""

import numpy as np
import pytest

import calibkit
from calibkit._validation import BIN_RULES, MAX_SWEEP_BINS, check_n_bins
from calibkit.metrics import calibration_error, debiased_calibration_error

from conftest import load_real


def ref_sweep(conf, y, strategy, w=None, cap=MAX_SWEEP_BINS):
    """Roelofs et al. 2022: the largest b such that the bin accuracies are monotone for every b' <= b."""
    w = np.ones(conf.shape[0]) if w is None else w
    best = 1
    for b in range(2, min(conf.shape[0], cap) + 1):
        if strategy == "uniform":
            edges = np.arange(b + 1) / b
        elif w is None or np.all(w == 1):
            edges = np.quantile(conf, np.linspace(0, 1, b + 1))
        else:
            edges = np.quantile(conf, np.linspace(0, 1, b + 1), weights=w, method="inverted_cdf")
        idx = np.searchsorted(edges[1:-1], conf, side="left")
        acc = []
        for m in range(b):
            sel = idx == m
            if w[sel].sum() > 0:
                acc.append((w[sel] * y[sel]).sum() / w[sel].sum())
        if any(acc[i + 1] < acc[i] for i in range(len(acc) - 1)):
            break
        best = b
    return best


@pytest.mark.parametrize("n,cube,sq", [(1, 1, 1), (7, 2, 3), (1000, 10, 32), (12345, 23, 111)])
def test_cube_root_and_sqrt(n, cube, sq, backend):
    rng = np.random.default_rng(n)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(int)
    assert calibkit.reliability_table(p, y, n_bins="cube_root", backend=backend).n_bins == cube
    assert calibkit.reliability_table(p, y, n_bins="sqrt", backend=backend).n_bins == sq
    assert calibration_error(p, y, n_bins="sqrt", backend=backend) == calibration_error(p, y, n_bins=sq,
                                                                                         backend=backend)
    probs = np.column_stack([1 - p, p])
    assert debiased_calibration_error(probs, y, n_bins="cube_root", backend=backend).n_bins == cube
    assert calibkit.classwise_calibration_error(probs, y, n_bins="cube_root", backend=backend) == \
        calibkit.classwise_calibration_error(probs, y, n_bins=cube, backend=backend)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_matches_numpy_reference(strategy, seed, backend):
    rng = np.random.default_rng(seed)
    n = 3000
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p ** 1.5).astype(np.int64)  # miscalibrated, monotone: a long sweep
    expected = ref_sweep(p, y, strategy)
    table = calibkit.reliability_table(p, y, n_bins="sweep", strategy=strategy, backend=backend)
    assert table.n_bins == expected > 1
    assert calibration_error(p, y, n_bins="sweep", strategy=strategy, backend=backend) == calibration_error(
        p, y, n_bins=expected, strategy=strategy, backend=backend)


def test_sweep_weighted_and_top_label(backend):
    rng = np.random.default_rng(3)
    n = 1500
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(np.int64)
    w = rng.uniform(0.2, 2.0, size=n)
    assert calibkit.reliability_table(p, y, n_bins="sweep", strategy="quantile", sample_weight=w,
                                      backend=backend).n_bins == ref_sweep(p, y, "quantile", w / w.max())
    probs = rng.dirichlet(np.ones(4) * 0.5, size=n)
    labels = np.array([rng.choice(4, p=r) for r in probs])
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    r = debiased_calibration_error(probs, labels, n_bins="sweep", strategy="quantile", backend=backend)
    assert r.n_bins == ref_sweep(conf, correct, "quantile")


def test_sweep_adversarial(backend):
    # one label everywhere: accuracies never decrease, the sweep runs to min(N, MAX_SWEEP_BINS)
    p = np.linspace(0.0, 1.0, 60)
    assert calibkit.reliability_table(p, np.ones(60, int), n_bins="sweep", strategy="quantile",
                                      backend=backend).n_bins == 60
    # ties and confidences exactly 0 and 1
    rng = np.random.default_rng(4)
    q = rng.choice([0.0, 0.25, 0.5, 1.0], size=400)
    y = (rng.uniform(size=400) < q).astype(np.int64)
    for strategy in ("uniform", "quantile"):
        assert calibkit.reliability_table(q, y, n_bins="sweep", strategy=strategy,
                                          backend=backend).n_bins == ref_sweep(q, y, strategy)
    # a single row, two rows
    assert calibkit.reliability_table(np.array([0.3]), np.array([1]), n_bins="sweep").n_bins == 1
    assert calibkit.reliability_table(np.array([0.3, 0.8]), np.array([1, 0]), n_bins="sweep",
                                      strategy="quantile").n_bins == 1


def test_sweep_real_dump(backend):
    d = load_real("focal_cifar10_densenet121_brier.npz")
    z, labels = d["test_logits"], d["test_labels"]
    zz = z.astype(np.float64)
    p = np.exp(zz - zz.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf, correct = p.max(axis=1), (p.argmax(axis=1) == labels).astype(float)
    table = calibkit.reliability_table(z, labels, n_bins="sweep", strategy="quantile", from_logits=True,
                                       backend=backend)
    assert table.n_bins == ref_sweep(conf, correct, "quantile")


def test_check_n_bins_rules_and_messages():
    assert BIN_RULES == ("cube_root", "sqrt", "sweep")
    assert check_n_bins("sweep", rules=True) == "sweep"
    with pytest.raises(ValueError, match=r"n_bins must be an integer or one of \('cube_root', 'sqrt', 'sweep'\), "
                                         r"got 'auto'"):
        calibration_error(np.array([0.1, 0.9]), np.array([0, 1]), n_bins="auto")
    with pytest.raises(TypeError, match=r"n_bins must be an integer or one of .*got float"):
        calibration_error(np.array([0.1, 0.9]), np.array([0, 1]), n_bins=2.5)
    with pytest.raises(ValueError, match="n_bins='sweep' is a rule that needs all the data at once"):
        calibkit.CalibrationAccumulator(n_bins="sweep")
    with pytest.raises(ValueError, match="n_bins='cube_root' is a rule that needs all the data at once"):
        check_n_bins("cube_root")
    with pytest.raises(ValueError, match=r"n_bins must be an integer, got 'many'"):
        check_n_bins("many")
