"""The temperature fit: kernel cumulant sums, float32 exp path, passes, and T against an independent fit."""

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import logsumexp, softmax

import calibkit
from calibkit import _core, _numba
from calibkit.calibrators import TemperatureScaling, scaling, temperature_nll

from conftest import load_real

KEYS = ("loss", "d1", "d2", "d3", "d4")


def reference_sums(z, y, w, b):
    """loss and its first four derivatives in b, in float64 NumPy (cumulants of z under softmax(b z))."""
    z = np.asarray(z, np.float64)
    w = np.ones(len(y)) if w is None else w
    p = softmax(b * z, axis=1)
    m = (p * z).sum(1)
    c = z - m[:, None]
    k2 = (p * c ** 2).sum(1)
    k3 = (p * c ** 3).sum(1)
    k4 = (p * c ** 4).sum(1) - 3 * k2 ** 2
    zy = z[np.arange(len(y)), y]
    lse = logsumexp(b * z, axis=1)
    return {"loss": (w * (lse - b * zy)).sum(), "d1": (w * (m - zy)).sum(), "d2": (w * k2).sum(),
            "d3": (w * k3).sum(), "d4": (w * k4).sum()}


def reference_temperature(z, y, w=None):
    """Independent fit: the root of the mean derivative by brentq (xtol 1e-15) on float64 NumPy with np.exp."""
    z = np.asarray(z, np.float64)
    zy = z[np.arange(len(y)), y]
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)

    def d1(b):
        s = b * z
        e = np.exp(s - s.max(1, keepdims=True))
        return (w * ((e * z).sum(1) / e.sum(1) - zy)).sum() / w.sum()

    return 1.0 / brentq(d1, 1e-3, 1e3, xtol=1e-15, rtol=1e-15)


def overconfident(rng, n, k, s, dtype=np.float32):
    """Labels drawn, logits = s * (normal + 4 on the label): an overconfident model for s > 1."""
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 4.0
    return (s * z).astype(dtype), y


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 7, 33])
def test_kernel_cumulant_sums_match_reference(backend, dtype, k):
    rng = np.random.default_rng(k)
    z, y, w = rng.normal(scale=4, size=(2000, k)).astype(dtype), rng.integers(0, k, 2000), rng.random(2000)
    for b in (0.3, 1.1):
        r = temperature_nll(z, y, b, sample_weight=w, backend=backend)
        ref = reference_sums(z, y, w, b)
        # float64: double exp (~1 ulp). float32 / float16: one float exp per element (relative error < 2.5e-7,
        # the input's own precision); d4 is a difference of raw moments, so it keeps ~1e-7 of that.
        tight = dtype == np.float64
        for key in KEYS:
            rel = 1e-11 if tight else (1e-5 if key == "d4" else 1e-7)
            assert r[key] == pytest.approx(ref[key], rel=rel, abs=1e-9 * np.abs(z).max() * len(z)), key


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("layout", ["C", "F", "strided", "K=1000"])
def test_float_path_same_bits_on_both_backends_and_thread_counts(dtype, layout, threads):
    rng = np.random.default_rng(3)
    k = 1000 if layout == "K=1000" else 13
    z = rng.normal(scale=5, size=(3000 if k > 100 else 40_000, 2 * k if layout == "strided" else k)).astype(dtype)
    z = z[:, ::2] if layout == "strided" else (np.asfortranarray(z) if layout == "F" else z)
    y = rng.integers(0, k, len(z))
    w = rng.random(len(z))
    results = []
    for n in (1, 2):
        calibkit.set_num_threads(n)
        results.append(_core.temperature_nll(z, y, w, 0.7))
        results.append(_numba.temperature_nll(z, y, w, 0.7))
    for r in results[1:]:
        for key in KEYS + ("weight", "count"):
            assert r[key] == results[0][key], key


CASES = [(k, s) for k in (2, 10, 100, 1000) for s in (1, 3, 10)]


@pytest.mark.parametrize("k, s", CASES)
def test_temperature_matches_independent_fit(backend, k, s):
    rng = np.random.default_rng(k * 10 + s)
    n = max(2000, 200_000 // k)
    z, y = overconfident(rng, n, k, s)
    want = reference_temperature(z, y)
    ts = TemperatureScaling(backend=backend).fit(z, y)
    assert ts.temperature_ == pytest.approx(want, rel=1e-7)
    assert ts.n_passes_ <= 8


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_temperature_float16_float64_and_weighted(backend, dtype):
    rng = np.random.default_rng(21)
    z, y = overconfident(rng, 20_000, 10, 3.0, dtype)
    w = rng.random(len(y)) + 0.05
    for weights in (None, w):
        ts = TemperatureScaling(backend=backend).fit(z, y, sample_weight=weights)
        assert ts.temperature_ == pytest.approx(reference_temperature(z, y, weights),
                                                rel=1e-12 if dtype == np.float64 else 1e-7)


@pytest.mark.parametrize("name, split", [("focal_cifar100_resnet110_brier.npz", "val"),
                                         ("netcal_cifar10_lenet5.npz", None)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_temperature_real_dumps_match_independent_fit(name, split, dtype):
    d = load_real(name)
    z, y = (d["val_logits"], d["val_labels"]) if split else (d["logits"], d["labels"])
    z = z.astype(dtype)
    want = reference_temperature(z, y)
    for backend in ("cpp", "numba"):
        ts = TemperatureScaling(backend=backend).fit(z, y)
        assert ts.temperature_ == pytest.approx(want, rel=1e-12 if dtype == np.float64 else 1e-7)


def test_large_fit_takes_two_full_passes(backend):
    """Warm start from every 16th row, then the cubic Taylor step: two full passes, the same optimum."""
    rng = np.random.default_rng(17)
    n = scaling._WARM_START_ROWS + 100
    z, y = overconfident(rng, n, 64, 3.0)
    assert z.size >= scaling._WARM_START_ELEMENTS
    ts = TemperatureScaling(backend=backend).fit(z, y)
    assert ts.n_passes_ <= 2
    assert ts.temperature_ == pytest.approx(reference_temperature(z, y), rel=1e-7)


def test_sums_without_higher_derivatives_still_converge():
    """fit_from_sums with only loss, d1 and d2 (older callers, other shards) falls back to Newton steps."""
    rng = np.random.default_rng(4)
    z, y = overconfident(rng, 20_000, 10, 3.0, np.float64)

    def plain(b):
        r = temperature_nll(z, y, b)
        return {key: r[key] for key in ("count", "weight", "loss", "d1", "d2")}

    a = TemperatureScaling().fit_from_sums(plain, 10)
    b = TemperatureScaling().fit(z, y)
    assert a.temperature_ == pytest.approx(b.temperature_, rel=1e-12)
    assert b.n_passes_ < a.n_passes_


def test_separable_rule_does_not_fire_near_the_optimum():
    """Near the optimum g^2 / h is tiny too: that is convergence, not separable data (once cost 25 passes)."""
    rng = np.random.default_rng(0)
    z, y = overconfident(rng, 200_000, 2, 1.0)
    ts = TemperatureScaling().fit(z, y)
    assert ts.n_passes_ <= 8
    assert ts.temperature_ == pytest.approx(reference_temperature(z, y), rel=1e-7)
