"""The temperature fit: kernel cumulant sums, float32 exp path, passes, and T against an independent fit."""

import functools

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import logsumexp, softmax

import calibkit
from calibkit import _core, _numba
from calibkit.calibrators import TemperatureScaling, scaling, temperature_nll

from conftest import load_real

KEYS = ("loss", "d1", "d2", "d3", "d4", "d5", "r4d2", "range")


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
    k5 = (p * c ** 5).sum(1) - 10 * k3 * k2
    r = z.max(1) - z.min(1)
    zy = z[np.arange(len(y)), y]
    lse = logsumexp(b * z, axis=1)
    return {"loss": (w * (lse - b * zy)).sum(), "d1": (w * (m - zy)).sum(), "d2": (w * k2).sum(),
            "d3": (w * k3).sum(), "d4": (w * k4).sum(), "d5": (w * k5).sum(), "r4d2": (w * r ** 4 * k2).sum(),
            "range": r.max()}


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
            # d5 is a difference of raw moments too (float32 / float16: ~1e-4 of the float exp's error left);
            # range (and r4d2, with range^4) come from the float t = bf (z - max): two float roundings.
            loose = {"d4": 1e-5, "d5": 1e-4, "range": 3e-7, "r4d2": 1e-6}
            rel = (1e-9 if key == "d5" else 1e-11) if tight else loose.get(key, 1e-7)
            assert r[key] == pytest.approx(ref[key], rel=rel, abs=1e-9 * float(np.abs(z).max()) * len(z)), key


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


def drawn_at(rng, n, k, t, dtype=np.float32, scale=3.0):
    """Logits scale * normal and labels drawn from softmax(z / t) (Gumbel-max): the NLL optimum is near t."""
    z = (scale * rng.standard_normal((n, k))).astype(dtype)
    y = np.argmax(z.astype(np.float64) / t + rng.gumbel(size=(n, k)), axis=1)
    return z, y


def count_full_passes(monkeypatch, n):
    """Records every _temperature_sums call over all n rows (a full pass); the subsample's are not counted."""
    calls = []
    inner = scaling._temperature_sums

    def counted(k, logits, labels, sample_weight, b, chunk_size):
        if logits.shape[0] == n:
            calls.append(b)
        return inner(k, logits, labels, sample_weight, b, chunk_size)

    monkeypatch.setattr(scaling, "_temperature_sums", counted)
    return calls


@functools.cache
def large_case(t):
    """2^18 x 16 float32 logits drawn at temperature t, and their independent optimum."""
    z, y = drawn_at(np.random.default_rng(int(t * 10)), 1 << 18, 16, t)
    return z, y, reference_temperature(z, y)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 3.0, 10.0])
def test_large_fit_takes_one_full_pass(backend, t, monkeypatch):
    """Warm start from every 16th row, then one full pass whose quartic Taylor step is certified: the usual
    case is ONE full pass (counted by n_passes_ and by the calls), with T within 1e-7 of an independent fit.
    (The subsample's optimum is typically 0.3-3% from the full one; from a start further off than about 1%
    on 16k-row subsamples the certificate can fail, and the fit takes a second full pass: about 1 in 4 of
    the seeds tried at 2^17 x 32.)"""
    z, y, want = large_case(t)
    n = len(y)
    assert z.size >= scaling._WARM_START_ELEMENTS and n >= scaling._WARM_START_ROWS
    calls = count_full_passes(monkeypatch, n)
    ts = TemperatureScaling(backend=backend).fit(z, y)
    assert ts.n_passes_ == 1 == len(calls)
    assert ts.temperature_ == pytest.approx(want, rel=1e-7)


def test_large_fit_second_pass_only_when_the_certificate_fails(monkeypatch):
    """With the certificate refused, the same fit takes the old path (two full passes) to the same T."""
    z, y, _ = large_case(2.0)
    one = TemperatureScaling().fit(z, y)
    monkeypatch.setattr(scaling, "_certified_error", lambda s, d: np.inf)
    two = TemperatureScaling().fit(z, y)
    assert (one.n_passes_, two.n_passes_) == (1, 2)
    assert one.temperature_ == pytest.approx(two.temperature_, rel=1e-7)


@pytest.mark.parametrize("k", [2, 10, 100])
@pytest.mark.parametrize("offset", [1e-4, -1e-3, 3e-3, -1e-2, 3e-2])
def test_certificate_bounds_the_true_error(k, offset):
    """The certified distance holds against a high-precision root: |b0 + d - b*| <= delta, from starts
    0.01% to 3% away, float64 logits (exact sums up to rounding), also where it is too large to stop."""
    rng = np.random.default_rng(k)
    z, y = drawn_at(rng, 20_000 if k < 100 else 4000, k, 2.0, np.float64)
    b_star = 1.0 / reference_temperature(z, y)
    b0 = b_star * (1 + offset)
    s = temperature_nll(z, y, b0)
    d = scaling._cubic_step(s["d1"] / s["weight"], s["d2"] / s["weight"], s["d3"], s["d4"], s["weight"], b0,
                            s["d5"])
    assert d is not None
    delta = scaling._certified_error(s, d)
    assert delta > 0
    if np.isfinite(delta):
        assert abs(b0 + d - b_star) <= delta + 1e-13 * b_star
    if abs(offset) <= 1e-3:
        assert delta <= 1e-7 * b0  # close starts are certified


def test_certificate_needs_all_its_sums():
    """Sums without d5 / r4d2 / range (older callers, shards) are never certified: Newton / Taylor only."""
    rng = np.random.default_rng(8)
    z, y = drawn_at(rng, 5000, 10, 2.0, np.float64)
    s = temperature_nll(z, y, 0.5)
    for key in ("d5", "r4d2", "range"):
        part = {k: v for k, v in s.items() if k != key}
        assert scaling._certified_error(part, 1e-4) == np.inf
    assert scaling._certified_error(dict(s, range=np.inf), 1e-4) == np.inf


T_GRID = [0.5, 1.0, 3.0, 10.0]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("k", [2, 10, 100, 1000])
def test_temperature_grid_matches_independent_fit(backend, dtype, k):
    """K in {2, 10, 100, 1000} x T in {0.5, 1, 3, 10} x float16/32/64, with and without weights: T within
    1e-7 (relative) of brentq on float64 NumPy."""
    rng = np.random.default_rng(k)
    n = max(1000, 100_000 // k)
    for t in T_GRID:
        z, y = drawn_at(rng, n, k, t, dtype)
        w = rng.random(n) + 0.05
        for weights in (None, w):
            want = reference_temperature(z, y, weights)
            got = TemperatureScaling(backend=backend).fit(z, y, sample_weight=weights).temperature_
            assert got == pytest.approx(want, rel=1e-7), (t, weights is None)


def test_separable_data_goes_to_the_lower_bound(backend):
    """Every row's largest logit is its label's: the NLL falls as T -> 0, T = T_min with the warning."""
    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 10))
    y = np.argmax(z, axis=1)
    with pytest.warns(RuntimeWarning, match="lower bound"):
        ts = TemperatureScaling(backend=backend).fit(z.astype(np.float32), y)
    assert ts.temperature_ == pytest.approx(1e-3, rel=1e-9)


REAL = ["focal_cifar100_densenet121_brier.npz", "focal_cifar100_resnet110_brier.npz",
        "focal_cifar100_resnet50_brier.npz", "focal_cifar100_wrn26-10_brier.npz",
        "focal_cifar10_densenet121_brier.npz", "focal_cifar10_densenet121_flsd53.npz",
        "focal_cifar10_resnet110_brier.npz", "focal_cifar10_resnet110_flsd53.npz",
        "focal_cifar10_resnet50_brier.npz", "focal_cifar10_resnet50_flsd53.npz",
        "focal_cifar10_wrn26-10_brier.npz", "focal_cifar10_wrn26-10_flsd53.npz", "kumar_cifar10_vgg.npz",
        "netcal_cifar100_wrn16-4.npz", "netcal_cifar10_lenet5.npz", "netcal_cifar10_wrn16-4.npz"]


@pytest.mark.parametrize("name", REAL)
def test_every_real_dump_matches_independent_fit(name):
    """Every logit array of every real dump (val and test splits), float32 and float64, both backends."""
    d = load_real(name)
    for prefix in ("val_", "test_", ""):
        if prefix + "logits" not in d:
            continue
        z64, y = d[prefix + "logits"].astype(np.float64), d[prefix + "labels"]
        want = reference_temperature(z64, y)
        for dtype in (np.float32, np.float64):
            for backend in ("cpp", "numba"):
                got = TemperatureScaling(backend=backend).fit(z64.astype(dtype), y).temperature_
                assert got == pytest.approx(want, rel=1e-7), (prefix, dtype, backend)


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
