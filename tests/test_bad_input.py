"""Every bad input gets a clear ValueError/TypeError naming the argument; nothing crashes."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit

P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
Y = np.array([0, 1, 2, 0])


def with_value(a, index, value):
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a


ALL_METRICS = [
    calibkit.ece,
    calibkit.mce,
    calibkit.calibration_error,
    calibkit.classwise_calibration_error,
    calibkit.reliability_table,
    calibkit.brier_score,
    calibkit.nll,
]

# (description, scores, labels, kwargs, exception, message regex)
BAD = [
    ("labels too short", P, Y[:3], {}, ValueError, r"labels has 3 entries but scores has 4 rows"),
    ("labels 2-D", P, np.ones((4, 2), int), {}, ValueError, r"labels must have shape \(N,\)"),
    ("label too large", P, [0, 1, 3, 0], {}, ValueError, r"labels\[2\] = 3 is out of range for n_classes=3"),
    ("label negative", P, [0, -1, 2, 0], {}, ValueError, r"labels\[1\] = -1 is out of range for n_classes=3"),
    ("float labels", P, Y.astype(float), {}, TypeError, r"labels must be integers, got dtype float64"),
    ("string labels", P, ["a", "b", "c", "d"], {}, TypeError, r"labels must be integers"),
    ("NaN score", with_value(P, (2, 1), np.nan), Y, {}, ValueError, r"scores\[2, 1\] = nan is not finite"),
    ("inf score", with_value(P, (0, 0), np.inf), Y, {}, ValueError, r"scores\[0, 0\] = inf is not finite"),
    ("NaN logit", with_value(P, (3, 2), np.nan), Y, {"from_logits": True}, ValueError,
     r"scores\[3, 2\] = nan is not finite"),
    ("-inf logit", with_value(P, (1, 0), -np.inf), Y, {"from_logits": True}, ValueError,
     r"scores\[1, 0\] = -inf is not finite"),
    ("probability > 1", with_value(P, (1, 1), 1.01), Y, {}, ValueError,
     r"scores\[1, 1\] = 1.01 is not a probability in \[0, 1\]; pass from_logits=True"),
    ("probability < 0", with_value(P, (0, 2), -0.5), Y, {}, ValueError,
     r"scores\[0, 2\] = -0.5 is not a probability"),
    ("first bad element wins", with_value(with_value(P, (3, 0), np.nan), (1, 2), 2.0), Y, {}, ValueError,
     r"scores\[1, 2\] = 2.0"),
    ("empty", np.empty((0, 3)), np.empty(0, int), {}, ValueError, r"scores is empty"),
    # 3-D scores are dense predictions (N, K, *spatial): the labels must then be (N, *spatial)
    ("3-D scores, 1-D labels", np.ones((2, 2, 2)) / 2, [0, 1], {}, ValueError, r"labels must have shape \(2, 2\)"),
    ("4-D scores, no spatial labels", np.ones((2, 2, 2, 2)) / 2, [0, 1], {}, ValueError,
     r"labels must have shape \(2, 2, 2\)"),
    ("one column", np.ones((4, 1)), Y, {}, ValueError, r"at least 2 columns"),
    ("scalar scores", 0.5, Y, {}, ValueError, r"scores must have shape"),
    ("string scores", np.array([["a", "b"]]), [0], {}, TypeError, r"scores must be an array of floats"),
    ("complex scores", P.astype(complex), Y, {}, TypeError, r"scores must be an array of floats"),
    ("object scores", np.array([[0.5, None]], dtype=object), [0], {}, TypeError, r"scores must be an array"),
    ("longdouble scores", P.astype(np.longdouble), Y, {}, TypeError, r"float16, float32 or float64"),
    ("negative weight", P, Y, {"sample_weight": [1, 1, -2, 1]}, ValueError,
     r"sample_weight\[2\] = -2.0 is negative"),
    ("NaN weight", P, Y, {"sample_weight": [1, np.nan, 1, 1]}, ValueError, r"sample_weight\[1\] = nan is not finite"),
    ("inf weight", P, Y, {"sample_weight": [1, 1, 1, np.inf]}, ValueError, r"sample_weight\[3\] = inf is not finite"),
    ("weights too long", P, Y, {"sample_weight": np.ones(5)}, ValueError,
     r"sample_weight has 5 entries but scores has 4 rows"),
    ("weights 2-D", P, Y, {"sample_weight": np.ones((4, 1))}, ValueError, r"sample_weight must have shape \(N,\)"),
    ("zero total weight", P, Y, {"sample_weight": np.zeros(4)}, ValueError, r"sample_weight sums to 0"),
    ("unknown backend", P, Y, {"backend": "cuda"}, ValueError, r"backend must be one of"),
    ("from_logits not bool", P, Y, {"from_logits": "yes"}, TypeError, r"from_logits must be True or False"),
]

BAD_BINNED = [
    ("n_bins zero", {"n_bins": 0}, ValueError, r"n_bins must be >= 1, got 0"),
    ("n_bins negative", {"n_bins": -3}, ValueError, r"n_bins must be >= 1, got -3"),
    ("n_bins float", {"n_bins": 2.5}, TypeError, r"n_bins must be an integer"),
    ("n_bins bool", {"n_bins": True}, TypeError, r"n_bins must be an integer"),
]

BAD_BINARY = [
    ("binary label 2", np.array([0.2, 0.9, 0.4]), [0, 2, 1], {}, ValueError, r"labels\[1\] = 2 is not 0 or 1"),
    ("binary probability 1.5", np.array([0.2, 1.5, 0.4]), [0, 1, 1], {}, ValueError,
     r"scores\[1\] = 1.5 is not a probability"),
    ("binary NaN", np.array([0.2, 0.5, np.nan]), [0, 1, 1], {}, ValueError, r"scores\[2\] = nan is not finite"),
    ("binary NaN logit", np.array([0.2, np.nan, 3.0]), [0, 1, 1], {"from_logits": True}, ValueError,
     r"scores\[1\] = nan is not finite"),
]


def call_all(fn, scores, labels, kwargs, backend):
    return fn(scores, labels, backend=backend, **kwargs) if "backend" not in kwargs else fn(scores, labels, **kwargs)


@pytest.mark.parametrize("fn", ALL_METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(backend, fn, case):
    _, scores, labels, kwargs, exc, msg = case
    with pytest.raises(exc, match=msg):
        call_all(fn, scores, labels, kwargs, backend)


@pytest.mark.parametrize("fn", [calibkit.ece, calibkit.mce, calibkit.calibration_error,
                                calibkit.classwise_calibration_error, calibkit.reliability_table],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD_BINNED, ids=[c[0] for c in BAD_BINNED])
def test_bad_n_bins(backend, fn, case):
    _, kwargs, exc, msg = case
    with pytest.raises(exc, match=msg):
        fn(P, Y, backend=backend, **kwargs)


@pytest.mark.parametrize("fn", [calibkit.ece, calibkit.calibration_error, calibkit.reliability_table,
                                calibkit.brier_score, calibkit.nll], ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD_BINARY, ids=[c[0] for c in BAD_BINARY])
def test_bad_binary_input(backend, fn, case):
    _, scores, labels, kwargs, exc, msg = case
    with pytest.raises(exc, match=msg):
        fn(scores, labels, backend=backend, **kwargs)


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_bad_values_are_reported_for_both_strategies(backend, strategy):
    with pytest.raises(ValueError, match=r"labels\[2\] = 3 is out of range"):
        calibkit.ece(P, [0, 1, 3, 0], strategy=strategy, backend=backend)
    with pytest.raises(ValueError, match=r"scores\[2, 1\] = nan"):
        calibkit.ece(with_value(P, (2, 1), np.nan), Y, strategy=strategy, backend=backend)


def test_unknown_strategy_and_norm(backend):
    with pytest.raises(ValueError, match=r"strategy must be one of \('uniform', 'quantile', 'quantile_midpoint'\), got 'equal'"):
        calibkit.ece(P, Y, strategy="equal", backend=backend)
    with pytest.raises(ValueError, match=r"norm must be one of \('l1', 'l2', 'max'\), got 'l3'"):
        calibkit.calibration_error(P, Y, norm="l3", backend=backend)
    with pytest.raises(ValueError, match=r"norm must be one of"):
        calibkit.classwise_calibration_error(P, Y, norm=None, backend=backend)


def test_classwise_needs_a_matrix(backend):
    with pytest.raises(ValueError, match=r"shape \(N, K\) for the class-wise error"):
        calibkit.classwise_calibration_error(np.array([0.2, 0.7]), [0, 1], backend=backend)


def test_first_bad_row_is_reported_in_row_order_across_chunks(backend):
    # Problems in several chunks, processed by several threads: the first in row order is named.
    n = 300_000
    probs = np.full((n, 2), 0.5)
    probs[250_000, 1] = np.nan
    probs[100_001, 0] = 7.0
    labels = np.zeros(n, dtype=np.int64)
    labels[200_000] = 5
    with pytest.raises(ValueError, match=r"scores\[100001, 0\] = 7.0"):
        calibkit.ece(probs, labels, backend=backend)
    probs[100_001, 0] = 0.5
    with pytest.raises(ValueError, match=r"labels\[200000\] = 5"):
        calibkit.ece(probs, labels, backend=backend)


def test_kernels_recheck_their_arguments():
    """The native entry points re-check shapes and dtypes rather than trusting the Python layer."""
    from calibkit import _core, _numba

    for k in (_core, _numba):
        with pytest.raises((ValueError, TypeError)):
            k.top_label_stats(P, Y[:2], None, False, 10, 1e-7)
        with pytest.raises((ValueError, TypeError)):
            k.top_label_stats(P, Y.astype(np.int32), None, False, 10, 1e-7)
        with pytest.raises((ValueError, TypeError)):
            k.top_label_stats(P.astype(np.int64), Y, None, False, 10, 1e-7)
        with pytest.raises((ValueError, TypeError)):
            k.top_label_stats(P, Y, np.ones(3), False, 10, 1e-7)
        with pytest.raises((ValueError, TypeError)):
            k.binary_stats(P[:, 0].copy(), Y, None, 3, np.array([0.0, 1.0]), 1e-7)
        with pytest.raises((ValueError, TypeError)):
            k.classwise_stats(P, Y, None, False, 0, None)
        with pytest.raises((ValueError, TypeError)):
            k.classwise_stats(P, Y, None, False, 2, np.zeros((2, 3)))


# ---------------------------------------------------------------------------
# Arbitrary arrays, in a subprocess: a crash fails the test instead of killing the run.
# ---------------------------------------------------------------------------

FUZZ = textwrap.dedent(
    """
    import numpy as np
    from hypothesis import given, settings, strategies as st, HealthCheck
    from hypothesis.extra import numpy as hnp
    import calibkit

    DTYPES = st.sampled_from(["float16", "float32", "float64", "int8", "int64", "uint8", "bool",
                              "complex64", ">f8", "<f4", "U3"])
    FUNCS = [calibkit.ece, calibkit.mce, calibkit.classwise_calibration_error, calibkit.reliability_table,
             calibkit.brier_score, calibkit.nll]

    @st.composite
    def arrays(draw):
        dtype = np.dtype(draw(DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
        a = draw(hnp.arrays(dtype, shape))
        if a.ndim >= 1 and a.size and draw(st.booleans()):
            a = a[::-1]
        if a.ndim == 2 and draw(st.booleans()):
            a = np.asfortranarray(a)
        return a

    @st.composite
    def near_valid(draw):
        # Matching shapes and mostly-valid values, so the kernels (not the checks) see the data.
        n = draw(st.integers(1, 8))
        k = draw(st.integers(2, 5))
        fdtype = draw(st.sampled_from(["float16", "float32", "float64"]))
        values = st.one_of(st.floats(0, 1, width=16), st.floats(allow_nan=True, allow_infinity=True, width=16),
                           st.sampled_from([0.0, 1.0, 1.0 + 1e-7, -1e-7, 1e300, -1e300]))
        shape = draw(st.sampled_from([(n, k), (n,)]))
        scores = draw(hnp.arrays(np.float64, shape, elements=values)).astype(fdtype)
        if scores.ndim == 2 and draw(st.booleans()):
            scores = np.asfortranarray(scores)
        if draw(st.booleans()):
            scores = scores[::-1]
        ldtype = draw(st.sampled_from(["int8", "int32", "int64", "uint8", "uint64"]))
        labels = draw(hnp.arrays(ldtype, (n,), elements=st.integers(-1, k) if ldtype[0] != "u" else
                                 st.integers(0, k)))
        weights = draw(st.one_of(st.none(), hnp.arrays(np.float64, (n,), elements=values)))
        return scores, labels, weights

    @settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "600")), deadline=None,
              suppress_health_check=list(HealthCheck), database=None)
    @given(case=st.one_of(st.tuples(arrays(), arrays(), st.one_of(st.none(), arrays())), near_valid()),
           fn=st.sampled_from(FUNCS), backend=st.sampled_from(["cpp", "numba"]),
           from_logits=st.booleans(), n_bins=st.integers(-2, 40),
           strategy=st.sampled_from(["uniform", "quantile"]))
    def fuzz(case, fn, backend, from_logits, n_bins, strategy):
        scores, labels, weights = case
        kw = dict(sample_weight=weights, backend=backend, from_logits=from_logits)
        if fn in (calibkit.ece, calibkit.mce, calibkit.reliability_table):
            kw.update(n_bins=n_bins, strategy=strategy)
        elif fn is calibkit.classwise_calibration_error:
            kw.update(n_bins=n_bins)
        try:
            fn(scores, labels, **kw)
        except (ValueError, TypeError):
            pass

    fuzz()
    print("FUZZ-OK")
    """
)


def test_arbitrary_arrays_never_crash():
    pytest.importorskip("hypothesis")
    env = dict(os.environ, FUZZ_EXAMPLES=os.environ.get("FUZZ_EXAMPLES", "600"))
    proc = subprocess.run([sys.executable, "-c", FUZZ], capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, (
        f"fuzz process exited with {proc.returncode} (negative = killed by a signal)\n"
        f"stdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-6000:]}"
    )
    assert "FUZZ-OK" in proc.stdout


def test_unpickled_arrays_are_accepted():
    """An unpickled int64 array has an equal but not identical dtype object (Dask ships blocks this way)."""
    import pickle

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    y2, p2 = pickle.loads(pickle.dumps(y)), pickle.loads(pickle.dumps(p))
    assert calibkit.ece(p2, y2) == calibkit.ece(p, y)
    assert calibkit.temperature_nll(np.log(p2), y2, 1.0)["loss"] == calibkit.temperature_nll(np.log(p), y, 1.0)["loss"]
