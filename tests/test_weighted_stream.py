"""Weighted streams keep Σw² and Σw²·c(1 − c) per equal-width bin: debiased RMSCE and the cumulative sigma.

The state's ``squares`` (2, M) array (issue 15 follow-up): Kish's effective count (Σw)²/Σw² per bin gives the
debiased error of :func:`calibkit.debiased_calibration_error`, and Σ w² c (1 - c) the sigma of
:func:`calibkit.cumulative_calibration_error`, for weighted streams as for unweighted ones.
"""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import calibkit
from calibkit import CalibrationAccumulator, WindowedAccumulator
from calibkit.streaming import decode_state, encode_state, load_state

DATA = pathlib.Path(__file__).parent / "data"
M = 12


def top_label(n, k=5, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * 3).astype(dtype)
    y = np.argmax(z / 2 + rng.gumbel(size=(n, k)), axis=1)
    w = rng.random(n) * 3 + 0.01
    return z, y, w


def binary(n, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < np.clip(p + 0.1, 0, 1)).astype(np.int64)
    return p, y, rng.exponential(size=n)


def one_shot(scores, labels, w, from_logits, backend="cpp"):
    d = calibkit.debiased_calibration_error(scores, labels, n_bins=M, from_logits=from_logits, sample_weight=w,
                                            backend=backend)
    c = calibkit.cumulative_calibration_error(scores, labels, from_logits=from_logits, sample_weight=w,
                                              backend=backend)
    return d, c


def assert_matches(r, d, c):
    assert r.debiased_squared == pytest.approx(d.squared, rel=1e-12, abs=1e-15)
    assert r.debiased_rmsce == pytest.approx(d.value, rel=1e-12, abs=1e-15)
    s = r.cumulative
    assert s.sigma == pytest.approx(c.sigma, rel=1e-9) and s.sigma_bound == 0.0
    assert s.range - 1e-12 <= c.range <= s.range + s.range_bound + 1e-12
    assert s.range_sigma == pytest.approx(s.range / s.sigma, rel=1e-15)
    assert s.range_pvalue == calibkit.cumulative.kuiper_pvalue(s.range_sigma)


# -- one-shot equality -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_weighted_top_label_stream_equals_the_one_shot_values(backend, dtype):
    z, y, w = top_label(3000, dtype=dtype)
    acc = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend)
    for s in (slice(0, 700), slice(700, 701), slice(701, 3000)):
        acc.update(z[s], y[s], w[s])
    assert_matches(acc.compute(), *one_shot(z, y, w, True, backend))


def test_weighted_binary_stream_equals_the_one_shot_values(backend):
    p, y, w = binary(5000, seed=1)
    acc = CalibrationAccumulator(n_bins=M, backend=backend).update(p[:1234], y[:1234], w[:1234])
    acc.update(p[1234:], y[1234:], w[1234:])
    assert_matches(acc.compute(), *one_shot(p, y, w, False, backend))


def test_weighted_probabilities_strided_input(backend):
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4) * 0.4, 4000)
    wide = np.repeat(probs, 2, axis=0)[::2]  # strided rows
    y = rng.integers(0, 4, 4000)
    w = rng.random(8000)[::2]
    acc = CalibrationAccumulator(n_bins=M, backend=backend).update(wide, y, w)
    assert_matches(acc.compute(), *one_shot(probs, y, np.ascontiguousarray(w), False, backend))


def test_large_weighted_batch_over_many_chunks(backend):
    p, y, w = binary(200_000, seed=4)  # several chunks of the kernels: the reduced path
    acc = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w)
    assert_matches(acc.compute(), *one_shot(p, y, w, False, backend))


def test_unweighted_sigma_is_now_exact(backend):
    z, y, _ = top_label(2000, seed=5)
    r = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend).update(z, y).compute()
    _, c = one_shot(z, y, None, True, backend)
    assert r.cumulative.sigma == pytest.approx(c.sigma, rel=1e-12) and r.cumulative.sigma_bound == 0.0


def test_weights_of_any_common_scale_give_the_same_values(backend):
    p, y, w = binary(3000, seed=6)
    a = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w).compute()
    b = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w * 1e-100).compute()
    assert b.debiased_squared == pytest.approx(a.debiased_squared, rel=1e-12)
    assert b.cumulative.sigma == pytest.approx(a.cumulative.sigma, rel=1e-12)


def test_zero_weights_and_integer_weights(backend):
    p, y, _ = binary(2000, seed=7)
    w = np.where(np.arange(2000) % 3 == 0, 0.0, 2.0)
    r = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w).compute()
    assert_matches(r, *one_shot(p, y, w, False, backend))


def test_squares_overflow_or_underflow_give_none(backend):
    p, y, w = binary(500, seed=8)
    big = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w * 1e200)  # Σ w² would overflow
    assert big._squares is None
    r = big.compute()
    assert r.debiased_rmsce is None and r.cumulative.sigma is None and r.ece == pytest.approx(
        calibkit.ece(p, y, n_bins=M, sample_weight=w), rel=1e-12)
    tiny = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w * 1e-200)  # squares underflow
    r = tiny.compute()
    assert r.debiased_rmsce is None and r.cumulative.sigma is None
    # A later batch of ordinary weights makes the small squares negligible again.
    r = tiny.update(p, y, w).compute()
    assert r.debiased_rmsce is not None and r.cumulative.sigma is not None


# -- backends, threads, atomicity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [300, 70_000])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("kind", ["binary", "probs", "logits", "logits64"])
def test_both_backends_give_the_same_bits(n, weighted, kind):
    rng = np.random.default_rng(9)
    if kind == "binary":
        x, y, w = binary(n, seed=9)
    else:
        x = (rng.normal(size=(n, 6)) * 2).astype(np.float64 if kind == "logits64" else np.float32)
        if kind == "probs":
            x = rng.dirichlet(np.ones(6) * 0.5, n).astype(np.float32)
        y = rng.integers(0, 6, n)
        w = rng.random(n)
    w = w if weighted else None
    states = [CalibrationAccumulator(n_bins=M, from_logits=kind.startswith("logits"), bootstrap=2, backend=b)
              .update(x, y, w).update(x[:99], y[:99], None if w is None else w[:99]) for b in ("cpp", "numba")]
    if kind.startswith("logits"):  # the backends' softmax confidences agree to rounding (float32: its precision)
        np.testing.assert_allclose(states[0]._squares, states[1]._squares, rtol=1e-6 if kind == "logits" else 1e-12)
    else:
        assert states[0]._squares.tobytes() == states[1]._squares.tobytes()
        assert states[0]._bins.tobytes() == states[1]._bins.tobytes()
    if not weighted:
        np.testing.assert_array_equal(states[0]._squares[0], states[0]._bins[0])


def test_thread_count_does_not_change_a_bit(backend, threads):
    z, y, w = top_label(120_000, k=4, seed=10)
    out = []
    for n in (1, 2, 3):
        calibkit.set_num_threads(n)
        out.append(CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend).update(z, y, w)._squares.tobytes())
    assert out[0] == out[1] == out[2]


def test_bad_batch_leaves_the_squares_unchanged(backend):
    z, y, w = top_label(500, seed=11)
    acc = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend).update(z, y, w)
    before = acc._squares.copy()
    bad = y.copy()
    bad[-1] = 99
    with pytest.raises(ValueError, match=r"labels\[499\] = 99"):
        acc.update(z, bad, w)
    big = np.repeat(z, 100, axis=0)
    big_w = np.repeat(w, 100)
    big_w[-7] = np.nan
    with pytest.raises(ValueError, match="sample_weight"):
        acc.update(big, np.repeat(y, 100), big_w)
    np.testing.assert_array_equal(acc._squares, before)


def test_kernels_check_the_squares_array():
    """A wrong squares array is a named ValueError/TypeError from either backend (in a subprocess: no crash)."""
    code = r"""
import numpy as np
from calibkit import _core
from calibkit import _numba as nb
p = np.random.default_rng(0).random(50); y = (p > 0.5).astype(np.int64)
for k in (_core, nb):
    for bad, exc in ((np.zeros((3, 10)), ValueError), (np.zeros((2, 10), np.float32), TypeError),
                     (np.zeros((2, 10))[:, ::-1], ValueError)):
        try:
            k.stream_accumulate(p, y, None, 0, 10, 7, 36, 0, 0, np.zeros((4, 10)), np.zeros((5, 2 * (36 << 7))),
                                np.zeros((0, 3, 10)), bad)
        except (ValueError, TypeError) as e:
            assert "squares" in str(e), e
        else:
            raise SystemExit("accepted")
        try:
            k.stream_top_label(np.full((50, 2), 0.5), y, None, False, 1e-15, 1.0, 0, 10, 7, 36, 0, 0,
                               np.zeros((4, 10)), np.zeros((5, 2 * (36 << 7))), np.zeros((0, 3, 10)), np.zeros(6), 0,
                               None, bad)
        except (ValueError, TypeError) as e:
            assert "squares" in str(e), e
        else:
            raise SystemExit("accepted")
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")


# -- merge ------------------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, 1500), max_size=4), seed=st.integers(0, 1000),
       zeros=st.booleans(), backend=st.sampled_from(["cpp", "numba"]))
def test_split_and_merge_equals_one_pass(cuts, seed, zeros, backend):
    z, y, w = top_label(1500, k=3, seed=seed, dtype=np.float64)
    if zeros:
        w[::4] = 0.0
    bounds = [0, *sorted(cuts), 1500]
    whole = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend).update(z, y, w).compute()
    parts = [CalibrationAccumulator(n_bins=M, from_logits=True, start=a, backend=backend).update(
        z[a:b], y[a:b], w[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
    total = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend)
    for p in parts:
        total.merge(CalibrationAccumulator.from_bytes(p.to_bytes(), backend=backend))
    r = total.compute()
    assert r.debiased_squared == pytest.approx(whole.debiased_squared, rel=1e-12, abs=1e-15)
    assert r.cumulative.sigma == pytest.approx(whole.cumulative.sigma, rel=1e-12)


# -- groups and windows --------------------------------------------------------------------------------------------

def test_weighted_groups_have_sigma_and_debiased_values(backend):
    p, y, w = binary(4000, seed=12)
    g = np.random.default_rng(12).integers(0, 3, 4000)
    acc = CalibrationAccumulator(n_bins=M, n_groups=4, group_fine_bits=3, group_fine_levels=12, backend=backend)
    acc.update(p[:1500], y[:1500], w[:1500], groups=g[:1500]).update(p[1500:], y[1500:], w[1500:], groups=g[1500:])
    r = acc.compute()
    assert_matches(r, *one_shot(p, y, w, False, backend))
    sigmas = []
    for k in range(3):
        m = g == k
        gr = r.groups.results[k]
        assert_matches(gr, *one_shot(p[m], y[m], w[m], False, backend))
        sigmas.append(gr.cumulative.range_sigma)
    assert r.groups.results[3] is None
    assert r.groups.mce_sigma == max([r.cumulative.range_sigma, *sigmas])
    lo, hi = r.groups.mce_sigma_interval
    exact = max(one_shot(p[g == k], y[g == k], w[g == k], False, backend)[1].range_sigma for k in range(3))
    exact = max(exact, one_shot(p, y, w, False, backend)[1].range_sigma)
    assert lo - 1e-9 <= exact <= hi + 1e-9
    again = CalibrationAccumulator.from_bytes(acc.to_bytes(), backend=backend).compute()
    assert again.to_dict() == r.to_dict()


def test_weighted_window_equals_the_one_shot_values_of_its_rows(backend):
    z, y, w = top_label(3000, seed=13)
    win = WindowedAccumulator(1000, n_blocks=4, n_bins=M, from_logits=True, backend=backend)
    for a in range(0, 3000, 170):
        win.update(z[a:a + 170], y[a:a + 170], w[a:a + 170])
    kept = win.count
    r = WindowedAccumulator.from_bytes(win.to_bytes(), backend=backend).compute()
    assert_matches(r, *one_shot(z[-kept:], y[-kept:], w[-kept:], True, backend))


def test_decayed_stream_squares_fade_with_the_square(backend):
    z, y, w = top_label(2500, seed=14)
    decay = 0.999
    win = WindowedAccumulator(decay=decay, n_bins=M, from_logits=True, backend=backend)
    for a in range(0, 2500, 400):
        win.update(z[a:a + 400], y[a:a + 400], w[a:a + 400])
    faded = w * decay ** np.arange(2499, -1, -1, dtype=np.float64)
    r = WindowedAccumulator.from_bytes(win.to_bytes(), backend=backend).compute()
    d, c = one_shot(z, y, faded, True, backend)
    assert r.debiased_squared == pytest.approx(d.squared, rel=1e-9)
    assert r.cumulative.sigma == pytest.approx(c.sigma, rel=1e-9)
    # Unweighted rows faded by the decay: their weights are decay^j, so the squares are those of a weighted stream.
    plain = WindowedAccumulator(decay=decay, n_bins=M, from_logits=True, backend=backend)
    for a in range(0, 2500, 400):
        plain.update(z[a:a + 400], y[a:a + 400])
    d, c = one_shot(z, y, decay ** np.arange(2499, -1, -1, dtype=np.float64), True, backend)
    r = plain.compute()
    assert r.debiased_squared == pytest.approx(d.squared, rel=1e-9)
    assert r.cumulative.sigma == pytest.approx(c.sigma, rel=1e-9)


# -- serialisation: old states load, corrupt squares are rejected ---------------------------------------------------

def _without_squares(acc):
    kind, meta, arrays = decode_state(acc.to_bytes())
    return encode_state(kind, meta, {k: v for k, v in arrays.items() if not k.endswith("squares")})


def test_states_written_before_the_squares_load_and_give_none(backend):
    p, y, w = binary(2000, seed=15)
    weighted = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y, w)
    old = CalibrationAccumulator.from_bytes(_without_squares(weighted), backend=backend)
    r = old.compute()
    assert r.debiased_rmsce is None and r.debiased_squared is None and r.cumulative.sigma is None
    assert r.ece == weighted.compute().ece
    assert old.to_bytes() == _without_squares(weighted)  # nothing invented on the way back
    assert old.update(p, y, w).compute().cumulative.sigma is None  # still unknown after more rows
    merged = weighted.copy().merge(CalibrationAccumulator.from_bytes(_without_squares(weighted)))
    assert merged.compute().debiased_rmsce is None
    # Unweighted: the sigma bounded from the fine buckets, as before.
    plain = CalibrationAccumulator(n_bins=M, backend=backend).update(p, y)
    r = CalibrationAccumulator.from_bytes(_without_squares(plain), backend=backend).compute()
    _, c = one_shot(p, y, None, False, backend)
    assert r.cumulative.sigma_bound > 0 and abs(r.cumulative.sigma - c.sigma) <= r.cumulative.sigma_bound + 1e-15
    assert r.debiased_rmsce == plain.compute().debiased_rmsce
    # An empty old state learns its sums of squares from its first batch.
    empty = CalibrationAccumulator.from_bytes(_without_squares(CalibrationAccumulator(n_bins=M)), backend=backend)
    assert empty.update(p, y, w).compute().cumulative.sigma is not None


def test_stored_version_1_states_still_load():
    blob = (DATA / "accumulator_v1.bin").read_bytes()
    state = CalibrationAccumulator.from_bytes(blob)
    assert state._squares is None and state.to_bytes() == CalibrationAccumulator.from_bytes(state.to_bytes()).to_bytes()
    expected = json.loads((DATA / "accumulator_v1.json").read_text())
    assert state.compute().count == expected["count"]
    for name in ("windowed_v1", "decayed_v1"):
        blob = (DATA / f"{name}.bin").read_bytes()
        assert load_state(blob).to_bytes() == blob


def test_groups_written_before_the_squares_load(backend):
    p, y, w = binary(1000, seed=16)
    g = np.arange(1000) % 3
    acc = CalibrationAccumulator(n_bins=M, n_groups=3, group_fine_bits=2, group_fine_levels=8, backend=backend)
    acc.update(p, y, w, groups=g)
    old = CalibrationAccumulator.from_bytes(_without_squares(acc), backend=backend)
    r = old.compute()
    assert r.groups.mce_sigma is None and r.groups.results[0].debiased_rmsce is None


def _corrupt(acc, name, change):
    kind, meta, arrays = decode_state(acc.to_bytes())
    a = arrays[name].copy()
    change(a)
    return encode_state(kind, meta, dict(arrays, **{name: a}))


CORRUPTIONS = {
    "negative": (lambda a: a.__setitem__((1, 0), -1.0), "negative"),
    "nan": (lambda a: a.__setitem__((0, 0), np.nan), "NaN or inf"),
    "inf": (lambda a: a.__setitem__((0, -1), np.inf), "NaN or inf"),
    "variance above a quarter": (lambda a: a.__setitem__(1, a[0]), "quarter"),
    "above weight squared": (lambda a: a.__setitem__(0, a[0] * 1e9 + 1), "Cauchy-Schwarz|quarter"),
    "below weight squared over count": (lambda a: a.__setitem__(0, a[0] * 1e-9), "Cauchy-Schwarz|quarter"),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_squares_are_rejected(how):
    p, y, w = binary(3000, seed=17)
    acc = CalibrationAccumulator(n_bins=M).update(p, y, w)
    change, message = CORRUPTIONS[how]
    blob = _corrupt(acc, "squares", change)
    with pytest.raises(ValueError, match=f"corrupt calibration state.*({message})"):
        CalibrationAccumulator.from_bytes(blob)
    kind, meta, arrays = decode_state(blob)
    as_dict = {"format": "calibkit.CalibrationAccumulator", "version": 1, **meta,
               "arrays": {k: {"shape": list(v.shape), "data": v.ravel().tolist()} for k, v in arrays.items()}}
    if how not in ("nan", "inf"):  # JSON has no NaN / inf: those fail elsewhere
        with pytest.raises(ValueError, match=f"corrupt calibration state.*({message})"):
            CalibrationAccumulator.from_dict(as_dict)


def test_corrupt_squares_shapes_and_placements_are_rejected():
    p, y, w = binary(3000, seed=18)
    weighted = CalibrationAccumulator(n_bins=M).update(p[p > 0.2], y[p > 0.2], w[p > 0.2])  # bin 0 empty
    kind, meta, arrays = decode_state(weighted.to_bytes())
    for bad, message in ((np.zeros((3, M)), "squares has shape"), (np.zeros((2, M + 1)), "squares has shape")):
        with pytest.raises(ValueError, match=message):
            CalibrationAccumulator.from_bytes(encode_state(kind, meta, dict(arrays, squares=bad)))
    sq = arrays["squares"].copy()
    assert weighted._bins[0, 0] == 0
    sq[0, 0] = 1e-3
    with pytest.raises(ValueError, match="a bin without rows holds sums of squares"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, dict(arrays, squares=sq)))
    plain = CalibrationAccumulator(n_bins=M).update(p, y)
    with pytest.raises(ValueError, match="unweighted state's sum of w\\^2"):
        CalibrationAccumulator.from_bytes(_corrupt(plain, "squares", lambda a: a.__setitem__((0, 3), a[0, 3] + 0.5)))
    g = np.arange(3000) % 2
    grouped = CalibrationAccumulator(n_bins=M, n_groups=2, group_fine_bits=2, group_fine_levels=8).update(
        p, y, w, groups=g)
    with pytest.raises(ValueError, match="group 1: .*quarter"):
        CalibrationAccumulator.from_bytes(_corrupt(grouped, "group_squares",
                                                   lambda a: a.__setitem__((1, 1), a[1, 0])))
    kind, meta, arrays = decode_state(grouped.to_bytes())
    with pytest.raises(ValueError, match="group_squares has shape"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, dict(arrays, group_squares=np.zeros((3, 2, M)))))


def test_to_dict_round_trip_keeps_the_squares(backend):
    z, y, w = top_label(800, seed=19)
    acc = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend).update(z, y, w)
    back = CalibrationAccumulator.from_dict(json.loads(json.dumps(acc.to_dict())), backend=backend)
    assert back._squares.tobytes() == acc._squares.tobytes()
    assert back.compute().to_dict() == acc.compute().to_dict()
    assert math.isfinite(back.compute().debiased_rmsce)


@pytest.mark.parametrize("name", ["focal_cifar10_resnet110_brier.npz", "focal_cifar100_resnet50_brier.npz"])
def test_real_model_outputs_weighted(name, backend):
    from conftest import load_real

    d = load_real(name)
    z, y = d["test_logits"], d["test_labels"]
    w = np.random.default_rng(20).gamma(2.0, size=len(y))
    acc = CalibrationAccumulator(n_bins=M, from_logits=True, backend=backend)
    for a in range(0, len(y), 3000):
        acc.update(z[a:a + 3000], y[a:a + 3000], w[a:a + 3000])
    assert_matches(acc.compute(), *one_shot(z, y, w, True, backend))
