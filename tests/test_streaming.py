"""CalibrationAccumulator / WindowedAccumulator: one-shot equivalence, merging, persistence, windows, bootstrap."""

import json
import pathlib
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import calibkit
from calibkit import CalibrationAccumulator, WindowedAccumulator
from calibkit.streaming import decode_state, encode_state

from conftest import labels_from, load_real, random_probs

DATA = pathlib.Path(__file__).resolve().parent / "data"


def problem(seed, n=3000, k=6, logits=False):
    rng = np.random.default_rng(seed)
    if logits:
        scores = rng.normal(scale=3, size=(n, k))
        y = rng.integers(0, k, n)
    else:
        scores = random_probs(rng, n, k)
        y = labels_from(rng, scores)
    return scores, y, rng.random(n)


def feed(acc, scores, y, w=None, cuts=(0.3, 0.5, 0.9)):
    n = len(y)
    bounds = [0, *[int(c * n) for c in cuts], n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        acc.update(scores[a:b], y[a:b], None if w is None else w[a:b])
    return acc


@pytest.mark.parametrize("logits", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_one_shot_metrics(backend, logits, weighted):
    scores, y, w = problem(1, logits=logits)
    w = w if weighted else None
    acc = feed(CalibrationAccumulator(n_bins=12, from_logits=logits, classwise=True, backend=backend), scores, y, w)
    r = acc.compute()
    kw = dict(from_logits=logits, sample_weight=w, backend=backend)
    assert r.count == len(y)
    assert r.ece == pytest.approx(calibkit.ece(scores, y, n_bins=12, **kw), rel=1e-12)
    assert r.mce == pytest.approx(calibkit.mce(scores, y, n_bins=12, **kw), rel=1e-12)
    assert r.rmsce == pytest.approx(calibkit.calibration_error(scores, y, n_bins=12, norm="l2", **kw), rel=1e-12)
    assert r.classwise_ece == pytest.approx(calibkit.classwise_calibration_error(scores, y, n_bins=12, **kw),
                                            rel=1e-12)
    assert r.brier == pytest.approx(calibkit.brier_score(scores, y, **kw), rel=1e-12)
    assert r.nll == pytest.approx(calibkit.nll(scores, y, **kw), rel=1e-12)
    table = calibkit.reliability_table(scores, y, n_bins=12, **kw)
    np.testing.assert_array_equal(r.reliability_table().count, table.count)
    assert r.accuracy == pytest.approx(table.accuracy_overall, rel=1e-12)
    assert r.mean_confidence == pytest.approx(table.mean_confidence_overall, rel=1e-12)
    exact_ace = calibkit.ece(scores, y, n_bins=12, strategy="quantile", **kw)
    assert abs(r.ace - exact_ace) <= r.ace_bound + 1e-12
    assert 0 <= r.ace_bound < 0.2


def test_binary_stream(backend):
    rng = np.random.default_rng(2)
    p = rng.random(4000)
    y = (rng.random(4000) < p**2).astype(int)
    acc = feed(CalibrationAccumulator(n_bins=10, backend=backend), p, y)
    r = acc.compute()
    assert r.ece == pytest.approx(calibkit.ece(p, y, n_bins=10), rel=1e-12)
    assert r.brier == pytest.approx(calibkit.brier_score(p, y), rel=1e-12)
    assert abs(r.ace - calibkit.ece(p, y, n_bins=10, strategy="quantile")) <= r.ace_bound + 1e-12
    with pytest.raises(ValueError, match="holds a binary stream"):
        acc.update(np.array([[0.5, 0.5]]), [0])


@pytest.mark.parametrize("name", ["focal_cifar10_resnet110_brier.npz", "focal_cifar100_resnet50_brier.npz"])
def test_real_data_ace_bound(name):
    d = load_real(name)
    z, y = d["test_logits"], d["test_labels"]
    acc = feed(CalibrationAccumulator(from_logits=True), z, y)
    r = acc.compute()
    exact = calibkit.ece(z, y, from_logits=True, strategy="quantile")
    assert abs(r.ace - exact) <= r.ace_bound + 1e-12
    assert r.ace_bound < 0.01
    assert r.ece == pytest.approx(calibkit.ece(z, y, from_logits=True), rel=1e-12)


@st.composite
def splits(draw):
    n = draw(st.integers(1, 400))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    return n, cuts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split=splits(), order=st.randoms(use_true_random=False), backend=st.sampled_from(["cpp", "numba"]),
       weighted=st.booleans(), seed=st.integers(0, 2**32))
def test_any_chunking_and_merge_tree_gives_one_pass(split, order, backend, weighted, seed):
    n, cuts = split
    rng = np.random.default_rng(seed)
    scores = random_probs(rng, n, 4)
    tie = rng.random(n) < 0.2
    scores[tie] = np.round(scores[tie], 1)  # confidences on bin edges, ties
    y = rng.integers(0, 4, n)
    w = rng.random(n) if weighted else None
    cfg = dict(n_bins=7, classwise=True, bootstrap=5, seed=11, backend=backend)
    whole = CalibrationAccumulator(**cfg).update(scores, y, w)
    bounds = [0, *cuts, n]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        acc = CalibrationAccumulator(**cfg, start=a)
        if b > a:
            acc.update(scores[a:b], y[a:b], None if w is None else w[a:b])
        parts.append(acc)
    # Merge in a random tree.
    while len(parts) > 1:
        i = order.randrange(len(parts) - 1)
        left, right = parts[i], parts[i + 1]
        merged = left + right if order.random() < 0.5 else right.copy().merge(left)
        parts[i:i + 2] = [merged]
    total = parts[0]
    np.testing.assert_array_equal(total._bins[0], whole._bins[0])  # counts exact
    np.testing.assert_array_equal(total._fine[0], whole._fine[0])
    for name in ("_bins", "_fine", "_boot", "_totals", "_classwise_bins"):
        np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-12, atol=1e-12)
    a, b = total.compute(), whole.compute()
    for field in ("ece", "mce", "rmsce", "ace", "classwise_ece", "brier", "nll", "ece_se"):
        assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-12, abs=1e-14), field


def test_backends_give_the_same_state():
    scores, y, w = problem(3, n=50_000, logits=True)
    states = []
    for backend in ("cpp", "numba"):
        acc = CalibrationAccumulator(from_logits=True, bootstrap=8, classwise=True, backend=backend)
        states.append(feed(acc, scores, y, w))
    a, b = states
    for name in ("_bins", "_fine", "_boot", "_totals", "_classwise_bins"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-12)


def test_state_is_thread_count_invariant(threads):
    scores, y, w = problem(4, n=120_000, k=3)
    states = []
    for t in (1, 2):
        calibkit.set_num_threads(t)
        states.append(CalibrationAccumulator(bootstrap=4).update(scores, y, w).to_bytes())
    assert states[0] == states[1]


def test_state_size_does_not_grow_with_rows():
    scores, y, _ = problem(5, n=2000)
    acc = CalibrationAccumulator(bootstrap=10)
    sizes = []
    for _ in range(3):
        acc.update(scores, y)
        sizes.append(len(acc.to_bytes()))
    assert sizes[0] == sizes[1] == sizes[2]


def test_update_is_atomic(backend):
    scores, y, _ = problem(6, n=100)
    acc = CalibrationAccumulator(backend=backend, classwise=True).update(scores, y)
    before = acc.to_bytes()
    bad = scores.copy()
    bad[70, 2] = np.nan
    with pytest.raises(ValueError, match=r"scores\[70, 2\] = nan"):
        acc.update(bad, y)
    bad_labels = y.copy()
    bad_labels[99] = 17
    with pytest.raises(ValueError, match=r"labels\[99\] = 17 is out of range"):
        acc.update(scores, bad_labels)
    with pytest.raises(ValueError, match="scores has 3 columns but the accumulator has n_classes=6"):
        acc.update(scores[:, :3], y)
    assert acc.to_bytes() == before


def test_configuration_errors_and_merge_mismatch():
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        CalibrationAccumulator(0)
    with pytest.raises(TypeError, match="bootstrap must be an integer"):
        CalibrationAccumulator(bootstrap=1.5)
    with pytest.raises(ValueError, match="confidence_level"):
        CalibrationAccumulator(confidence_level=1.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        CalibrationAccumulator(backend="gpu")
    with pytest.raises(ValueError, match="different n_bins"):
        CalibrationAccumulator(10).merge(CalibrationAccumulator(15))
    with pytest.raises(ValueError, match="different from_logits"):
        CalibrationAccumulator(from_logits=True).merge(CalibrationAccumulator())
    with pytest.raises(TypeError, match="can only merge"):
        CalibrationAccumulator().merge(3)
    a = CalibrationAccumulator().update(np.eye(3), [0, 1, 2])
    b = CalibrationAccumulator().update(np.eye(4), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="different n_classes"):
        a.merge(b)
    with pytest.raises(ValueError, match="empty"):
        CalibrationAccumulator().compute()
    with pytest.raises(ValueError, match="classwise=True needs scores of shape"):
        CalibrationAccumulator(classwise=True).update(np.array([0.5, 0.2]), [1, 0])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_temperature_equals_scaled_logits(backend, dtype):
    scores, y, w = problem(21, n=4000, k=7, logits=True)
    scores = scores.astype(dtype)
    T = 1.7
    acc = feed(CalibrationAccumulator(n_bins=12, from_logits=True, temperature=T, classwise=True, backend=backend),
               scores, y, w)
    ref_acc = feed(CalibrationAccumulator(n_bins=12, from_logits=True, classwise=True, backend=backend),
                   scores.astype(np.float64) / T, y, w)
    got, want = acc.compute(), ref_acc.compute()
    for field in ("ece", "mce", "rmsce", "ace", "classwise_ece", "brier", "nll", "accuracy", "mean_confidence"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-9, abs=1e-12), field
    kw = dict(from_logits=True, sample_weight=w, backend=backend)
    assert got.nll == pytest.approx(calibkit.nll(scores.astype(np.float64) / T, y, **kw), rel=1e-12)
    # the temperature is part of the state: saved, restored, and checked on merge
    restored = CalibrationAccumulator.from_bytes(acc.to_bytes())
    assert restored.temperature == T and restored.compute().ece == got.ece
    with pytest.raises(ValueError, match="different temperature"):
        acc.merge(CalibrationAccumulator(n_bins=12, from_logits=True, classwise=True))
    binary = CalibrationAccumulator(from_logits=True, temperature=T).update(scores[:, 0], y % 2)
    assert binary.compute().brier == pytest.approx(
        calibkit.brier_score(scores[:, 0].astype(np.float64) / T, y % 2, from_logits=True), rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(from_logits=True, temperature=0.0), "temperature must be a finite number > 0"),
    (dict(from_logits=True, temperature=-2.0), "temperature must be a finite number > 0"),
    (dict(from_logits=True, temperature=float("nan")), "temperature must be a finite number > 0"),
    (dict(from_logits=True, temperature=float("inf")), "temperature must be a finite number > 0"),
    (dict(from_logits=True, temperature="2"), "temperature must be a finite number > 0"),
    (dict(temperature=2.0), "temperature applies to logits"),
])
def test_temperature_configuration_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibrationAccumulator(**kwargs)


def test_reset_and_merge_with_empty():
    scores, y, _ = problem(7, n=300)
    acc = CalibrationAccumulator().update(scores, y)
    r = acc.compute()
    assert acc.copy().merge(CalibrationAccumulator()).compute().ece == r.ece
    assert (CalibrationAccumulator() + acc).compute().ece == r.ece
    acc.reset()
    assert acc.count == 0
    with pytest.raises(ValueError, match="empty"):
        acc.compute()


# ---------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------


def test_round_trips():
    scores, y, w = problem(8, n=500)
    acc = feed(CalibrationAccumulator(n_bins=9, classwise=True, bootstrap=6, seed=3), scores, y, w)
    want = acc.compute()
    for other in (CalibrationAccumulator.from_bytes(acc.to_bytes()), pickle.loads(pickle.dumps(acc)),
                  CalibrationAccumulator.from_dict(json.loads(json.dumps(acc.to_dict())))):
        got = other.compute()
        assert got.to_dict() == want.to_dict()
        assert other.to_bytes() == acc.to_bytes()
    # A restored state keeps counting stream positions where it stopped.
    more = CalibrationAccumulator.from_bytes(acc.to_bytes()).update(scores, y, w)
    again = feed(CalibrationAccumulator(n_bins=9, classwise=True, bootstrap=6, seed=3), scores, y, w).update(
        scores, y, w)
    assert more.to_bytes() == again.to_bytes()


def test_corrupt_states_are_rejected():
    scores, y, _ = problem(9, n=200)
    blob = CalibrationAccumulator(bootstrap=2).update(scores, y).to_bytes()
    with pytest.raises(ValueError, match="bad magic"):
        CalibrationAccumulator.from_bytes(b"XXXXXXXX" + blob[8:])
    with pytest.raises(ValueError, match="too short"):
        CalibrationAccumulator.from_bytes(blob[:10])
    with pytest.raises(ValueError, match="checksum"):
        CalibrationAccumulator.from_bytes(blob[:-5] + bytes([blob[-5] ^ 1]) + blob[-4:])
    with pytest.raises(ValueError, match="checksum"):
        CalibrationAccumulator.from_bytes(blob[:-100])
    with pytest.raises(TypeError, match="state must be bytes"):
        CalibrationAccumulator.from_bytes("text")
    # A well-formed file of a newer version.
    kind, meta, arrays = decode_state(blob)
    import struct
    import zlib

    body = bytearray(blob[:-4])
    body[8:12] = struct.pack("<I", 99)
    with pytest.raises(ValueError, match="unsupported state version 99"):
        CalibrationAccumulator.from_bytes(bytes(body) + struct.pack("<I", zlib.crc32(bytes(body))))
    # Valid framing, but contents that do not describe a state.
    arrays["bins"] = -arrays["bins"]
    with pytest.raises(ValueError, match="negative counts"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, arrays))
    arrays["bins"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="bins has shape"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, arrays))
    del arrays["bins"]
    with pytest.raises(ValueError, match="arrays"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, arrays))
    with pytest.raises(ValueError, match="bad configuration"):
        CalibrationAccumulator.from_bytes(encode_state(kind, {"config": {}}, {}))
    with pytest.raises(ValueError, match="not a CalibrationAccumulator"):
        CalibrationAccumulator.from_bytes(encode_state("Other", meta, {}))
    with pytest.raises(ValueError, match="not a calibkit"):
        CalibrationAccumulator.from_dict({"format": "x"})


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzzed_states_never_load_wrong(data):
    base = CalibrationAccumulator(n_bins=4, fine_bits=1, fine_levels=4, bootstrap=1).update(
        np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]), [0, 0, 1]).to_bytes()
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "splice"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(base) - 1))
        blob = base[:i] + bytes([base[i] ^ (1 << data.draw(st.integers(0, 7)))]) + base[i + 1:]
    elif kind == "truncate":
        blob = base[:data.draw(st.integers(0, len(base) - 1))]
    elif kind == "random":
        blob = data.draw(st.binary(max_size=400))
    else:
        blob = base + data.draw(st.binary(min_size=1, max_size=20))
    with pytest.raises(ValueError):
        CalibrationAccumulator.from_bytes(blob)


def test_stored_version_1_state_still_loads():
    """A state written by calibkit 0.1 (format version 1) must load in every later release."""
    blob = (DATA / "accumulator_v1.bin").read_bytes()
    expected = json.loads((DATA / "accumulator_v1.json").read_text())
    got = CalibrationAccumulator.from_bytes(blob).compute().to_dict()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


# ---------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------


def test_window_keeps_whole_recent_blocks(backend):
    scores, y, _ = problem(10, n=5000)
    win = WindowedAccumulator(1000, n_blocks=4, backend=backend)
    for a in range(0, 5000, 170):
        win.update(scores[a:a + 170], y[a:a + 170])
    # Blocks of 250 rows; 3 full blocks and the current partial one are kept.
    kept = win.count
    assert 750 < kept <= 1000
    r = win.compute()
    assert r.count == kept
    assert r.ece == pytest.approx(calibkit.ece(scores[-kept:], y[-kept:]), rel=1e-12)
    restored = WindowedAccumulator.from_bytes(win.to_bytes())
    assert restored.compute().to_dict() == r.to_dict()
    assert pickle.loads(pickle.dumps(win)).compute().ece == r.ece


def test_window_rejects_bad_batches_atomically():
    scores, y, _ = problem(11, n=600)
    win = WindowedAccumulator(500, n_blocks=5).update(scores[:300], y[:300])
    before = win.to_bytes()
    bad = y[300:].copy()
    bad[-1] = 99
    with pytest.raises(ValueError, match="out of range"):
        win.update(scores[300:], bad)
    assert win.to_bytes() == before


def test_exponential_decay_equals_weighted_metric():
    scores, y, _ = problem(12, n=3000)
    decay = 0.998
    win = WindowedAccumulator(decay=decay, n_bins=10)
    for a in range(0, 3000, 400):
        win.update(scores[a:a + 400], y[a:a + 400])
    weights = decay ** np.arange(2999, -1, -1, dtype=float)
    r = win.compute()
    assert r.ece == pytest.approx(calibkit.ece(scores, y, n_bins=10, sample_weight=weights), rel=1e-9)
    assert r.nll == pytest.approx(calibkit.nll(scores, y, sample_weight=weights), rel=1e-9)
    assert r.count == 3000


def test_window_configuration():
    with pytest.raises(ValueError, match="exactly one of window= or decay="):
        WindowedAccumulator()
    with pytest.raises(ValueError, match="decay must be in"):
        WindowedAccumulator(decay=1.5)
    with pytest.raises(ValueError, match="window must be in"):
        WindowedAccumulator(0)


# ---------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------


def synthetic(rng, n):
    """An over-confident classifier with known generator: conf ~ Beta(5, 1), P(correct) = conf^2."""
    conf = rng.beta(5, 1, n)
    correct = (rng.random(n) < conf**2).astype(np.int64)
    return conf, correct


def test_bootstrap_standard_error_matches_the_sampling_distribution():
    rng = np.random.default_rng(13)
    n = 2000
    observed = [calibkit.ece(*synthetic(rng, n), n_bins=10) for _ in range(200)]
    true_se = np.std(observed, ddof=1)
    estimates = []
    for seed in range(8):
        conf, correct = synthetic(rng, n)
        r = CalibrationAccumulator(n_bins=10, bootstrap=200, seed=seed).update(conf, correct).compute()
        estimates.append(r.ece_se)
        assert r.ece_ci[0] < r.ece < r.ece_ci[1]
    assert abs(np.mean(estimates) / true_se - 1) < 0.25


def test_bootstrap_is_reproducible_and_seeded():
    conf, correct = synthetic(np.random.default_rng(14), 1000)
    a = CalibrationAccumulator(bootstrap=50, seed=1).update(conf, correct).compute()
    b = CalibrationAccumulator(bootstrap=50, seed=1)
    b.update(conf[:300], correct[:300]).update(conf[300:], correct[300:])
    c = CalibrationAccumulator(bootstrap=50, seed=2).update(conf, correct).compute()
    assert a.ece_ci == pytest.approx(b.compute().ece_ci, rel=1e-12)
    assert a.ece_ci != c.ece_ci
