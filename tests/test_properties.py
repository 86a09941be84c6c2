"""Hypothesis properties: permutation invariance, split-and-combine == one pass, thread invariance."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import calibkit
from calibkit import _backend
from calibkit.metrics import _errors_from_bins

import reference as ref

SETTINGS = dict(max_examples=60, deadline=None)
# The ECE is a difference of per-bin sums (mean confidence - accuracy): summing the same terms in another
# order moves it by about n * eps of the bin mass, not of the ECE, which can be far smaller (cancellation).
ECE_ABS = 1e-12


@st.composite
def problems(draw, max_rows=300):
    n = draw(st.integers(1, max_rows))
    k = draw(st.integers(2, 6))
    raw = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(0, 1, allow_subnormal=False)))
    # Rows of exact edges and ties as well as random ones.
    if draw(st.booleans()):
        raw = np.round(raw * 10) / 10
    labels = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    weights = draw(st.one_of(st.none(), hnp.arrays(np.float64, (n,), elements=st.floats(0, 5))))
    if weights is not None and not weights.sum() > 0:
        weights = None
    return raw, labels, weights


@settings(**SETTINGS)
@given(problem=problems(), seed=st.integers(0, 2**32 - 1), backend=st.sampled_from(["cpp", "numba"]),
       strategy=st.sampled_from(["uniform", "quantile"]), n_bins=st.integers(1, 20))
def test_permutation_invariance(problem, seed, backend, strategy, n_bins):
    p, y, w = problem
    perm = np.random.default_rng(seed).permutation(len(y))
    wp = None if w is None else w[perm]
    for norm in ("l1", "l2", "max"):
        a = calibkit.calibration_error(p, y, n_bins=n_bins, strategy=strategy, norm=norm, sample_weight=w,
                                       backend=backend)
        b = calibkit.calibration_error(p[perm], y[perm], n_bins=n_bins, strategy=strategy, norm=norm,
                                       sample_weight=wp, backend=backend)
        assert a == pytest.approx(b, rel=1e-12, abs=ECE_ABS)


@settings(**SETTINGS)
@given(problem=problems(), cut=st.floats(0, 1), backend=st.sampled_from(["cpp", "numba"]),
       n_bins=st.integers(1, 20), from_logits=st.booleans())
def test_split_and_combine_equals_one_pass(problem, cut, backend, n_bins, from_logits):
    p, y, w = problem
    scores = (p - 0.5) * 20 if from_logits else p
    k = _backend.kernels(backend)
    i = int(cut * len(y))
    parts = []
    for sl in (slice(0, i), slice(i, None)):
        if sl.start == sl.stop or (sl.stop is None and i == len(y)):
            continue
        ws = None if w is None else np.ascontiguousarray(w[sl])
        parts.append(k.top_label_stats(scores[sl], y[sl], ws, from_logits, n_bins, 1e-7))
    whole = k.top_label_stats(scores, y, w, from_logits, n_bins, 1e-7)
    count = sum(np.asarray(r["count"]) for r in parts)
    np.testing.assert_array_equal(count, whole["count"])
    merged = {key: sum(np.asarray(r[key]) for r in parts) for key in ("weight", "sum_score", "sum_target")}
    for key, value in merged.items():
        np.testing.assert_allclose(value, whole[key], rtol=1e-12, atol=1e-12)
    for key in ("correct", "confidence", "brier", "nll"):
        assert sum(r["totals"][key] for r in parts) == pytest.approx(whole["totals"][key], rel=1e-12, abs=1e-12)
    if merged["weight"].sum() > 0:
        got = _errors_from_bins(merged["weight"], merged["sum_score"], merged["sum_target"])
        want = calibkit.calibration_error(scores, y, n_bins=n_bins, from_logits=from_logits, sample_weight=w,
                                          backend=backend)
        assert got[0] == pytest.approx(want, rel=1e-12, abs=ECE_ABS)


@settings(**SETTINGS)
@given(problem=problems(), n_bins=st.integers(1, 20), strategy=st.sampled_from(["uniform", "quantile"]))
def test_backends_agree_and_match_reference(problem, n_bins, strategy):
    p, y, w = problem
    want = ref.calibration_error(p, y, n_bins, strategy, "l1", sample_weight=w)
    for backend in ("cpp", "numba"):
        got = calibkit.ece(p, y, n_bins=n_bins, strategy=strategy, sample_weight=w, backend=backend)
        assert got == pytest.approx(want, rel=1e-12, abs=ECE_ABS)


@pytest.fixture(scope="module")
def big_problem():
    rng = np.random.default_rng(0)
    n, k = 140_000, 6
    return rng.dirichlet(np.ones(k) * 0.4, size=n), rng.integers(0, k, n), rng.random(n)


@settings(max_examples=8, deadline=None)
@given(threads=st.integers(1, 4), backend=st.sampled_from(["cpp", "numba"]),
       strategy=st.sampled_from(["uniform", "quantile"]), n_bins=st.integers(1, 30))
def test_thread_count_invariance(big_problem, threads, backend, strategy, n_bins):
    p, y, w = big_problem
    before = calibkit.get_num_threads()
    try:
        calibkit.set_num_threads(1)
        one = calibkit.ece(p, y, n_bins=n_bins, strategy=strategy, sample_weight=w, backend=backend)
        calibkit.set_num_threads(threads)
        many = calibkit.ece(p, y, n_bins=n_bins, strategy=strategy, sample_weight=w, backend=backend)
    finally:
        calibkit.set_num_threads(before)
    assert one == many
