"""calibkit.conformal: kernels against a NumPy reference (both backends), torchcp, coverage simulation, metrics,
the streaming accumulator and bad input."""

import math
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit._numba import conformal as nb_conformal

from conftest import load_real

KINDS = {"lac": 0, "thr": 0, "aps": 1, "raps": 2, "saps": 3}
CUMULATIVE = ("aps", "raps", "saps")
PARAMS = dict(penalty=0.05, kreg=2, weight=0.2)
# torchcp computes the RAPS penalty and the SAPS rank term in float32 (an int64 tensor times a Python float is a
# float32 tensor): against it, parameters that float32 holds exactly, so both compute the same numbers.
TCP_PARAMS = dict(penalty=0.0625, kreg=2, weight=0.25)


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# Plain NumPy reference: a full stable sort per row (classes by p descending, index ascending).

def ref_all_scores(p, score, penalty=0.05, kreg=2, weight=0.2, u=None):
    """The score of every class of every row, (N, K)."""
    p = np.asarray(p, dtype=np.float64)
    N, K = p.shape
    if KINDS[score] == 0:
        return 1.0 - p
    u = np.zeros(N) if u is None else u
    order = np.argsort(-p, axis=1, kind="stable")
    ordered = np.take_along_axis(p, order, axis=1)
    C = np.cumsum(ordered, axis=1)
    r = np.arange(K)
    U = u[:, None]
    if score == "aps":
        s = C - U * ordered
    elif score == "raps":
        s = (C - U * ordered) + penalty * np.maximum(0, r + 1 - kreg).astype(np.float64)
    else:
        pmax = ordered[:, :1]
        s = weight * (r[None, :].astype(np.float64) - U) + pmax
        s[:, 0] = pmax[:, 0] - u * pmax[:, 0]
    out = np.empty_like(s)
    np.put_along_axis(out, order, s, axis=1)
    return out


def ref_quantile(s, alpha):
    k = math.ceil((len(s) + 1) * (1 - alpha))
    return math.inf if k > len(s) else float(np.sort(s)[k - 1])


def kernel_label_scores(backend, x, y, from_logits, score, u=None, **kw):
    kw = {**PARAMS, **kw}
    mod = calibkit._core if backend == "cpp" else nb_conformal
    r = mod.conformal_label_scores(x, y, from_logits, KINDS[score], kw["penalty"], kw["kreg"], kw["weight"], u)
    assert r["status"][0] == 0, r["status"]
    return r["scores"]


def kernel_sets(backend, x, from_logits, score, q, u=None, **kw):
    kw = {**PARAMS, **kw}
    mod = calibkit._core if backend == "cpp" else nb_conformal
    N, K = x.shape
    out = np.empty((N, K), np.bool_)
    sizes = np.empty(N, np.int64)
    q = np.full(K, q, dtype=np.float64) if np.ndim(q) == 0 else np.asarray(q, np.float64)
    st = mod.conformal_sets(x, from_logits, KINDS[score], kw["penalty"], kw["kreg"], kw["weight"], q, u,
                            out.view(np.uint8), sizes)
    assert st[0] == 0, st
    np.testing.assert_array_equal(sizes, out.sum(axis=1))
    return out


def sample_labels(rng, p):
    """One label per row drawn from the row's probabilities (inverse CDF)."""
    return np.minimum((rng.random((p.shape[0], 1)) > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)


def random_rows(rng, n, k, concentration=0.5):
    return rng.dirichlet(np.full(k, concentration), size=n)


@pytest.mark.parametrize("score", ["lac", "aps", "raps", "saps"])
@pytest.mark.parametrize("randomized", [False, True])
def test_kernels_match_numpy_reference_on_probabilities(backend, score, randomized):
    rng = np.random.default_rng(1)
    p = random_rows(rng, 700, 13)
    p[5, 3] = p[5, 7] = 0.1  # a tie: ranked by class index
    y = rng.integers(0, 13, 700)
    u = rng.random(700) if randomized else None
    ref = ref_all_scores(p, score, u=u)
    got = kernel_label_scores(backend, p, y, False, score, u)
    np.testing.assert_array_equal(got, ref[np.arange(700), y])  # the same operations: the same bits
    for q in (np.quantile(ref, 0.3), np.quantile(ref, 0.8), -1.0, np.inf):
        np.testing.assert_array_equal(kernel_sets(backend, p, False, score, q, u), ref <= q)
    q = rng.uniform(0.2, 1.2, 13)  # per class (Mondrian)
    np.testing.assert_array_equal(kernel_sets(backend, p, False, score, q, u), ref <= q[None, :])


@pytest.mark.parametrize("score", ["aps", "raps", "saps"])
@pytest.mark.parametrize("randomized", [False, True])
def test_long_rows_candidate_buckets(backend, score, randomized):
    """Rows of more than 64 classes first drop, by buckets of magnitude, the classes that cannot enter the set:
    the sets stay those of the full sort, for small and large sets, ties and zeros included."""
    rng = np.random.default_rng(13)
    K = 300
    p = np.concatenate([random_rows(rng, 300, K, 0.05), random_rows(rng, 300, K, 5.0)])
    p[3, :] = 1.0 / K  # all tied
    p[4, 10:] = 0.0
    p[4, :10] = 0.1  # zeros
    u = rng.random(600) if randomized else None
    ref = ref_all_scores(p, score, u=u)
    for q in np.concatenate([np.quantile(ref.min(axis=1), [0.1, 0.5, 0.9]), np.quantile(ref, [0.01, 0.2, 0.6]),
                             [np.inf]]):
        np.testing.assert_array_equal(kernel_sets(backend, p, False, score, q, u), ref <= q)
    q = rng.uniform(0.0, 1.0, K) * ref.max()
    np.testing.assert_array_equal(kernel_sets(backend, p, False, score, q, u), ref <= q[None, :])


@pytest.mark.parametrize("score", ["lac", "aps", "raps", "saps"])
def test_kernels_from_logits(backend, score):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(500, 40)) * 3
    y = rng.integers(0, 40, 500)
    ref = ref_all_scores(softmax(z), score)
    got = kernel_label_scores(backend, z, y, True, score)
    np.testing.assert_allclose(got, ref[np.arange(500), y], rtol=0, atol=1e-13)
    q = float(np.quantile(got, 0.9))
    sets = kernel_sets(backend, z, True, score, q)
    clear = np.abs(ref - q) > 1e-12
    np.testing.assert_array_equal(sets[clear], (ref <= q)[clear])
    # float32 logits: the float exp (relative error < 3e-7)
    z32 = z.astype(np.float32)
    ref32 = ref_all_scores(softmax(z32), score)
    np.testing.assert_allclose(kernel_label_scores(backend, z32, y, True, score), ref32[np.arange(500), y],
                               rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("score", ["lac", "raps"])
def test_layouts_and_backends_agree(dtype, score):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(300, 20)) * 2).astype(dtype)
    y = rng.integers(0, 20, 300)
    u = rng.random(300)
    base = {b: kernel_label_scores(b, z, y, True, score, u) for b in ("cpp", "numba")}
    wide = np.zeros((300, 45), dtype)
    wide[:, ::2][:, :20] = z
    strided = wide[:, ::2][:, :20]
    fortran = np.asfortranarray(z)
    for b in ("cpp", "numba"):
        for x in (strided, fortran, z[::-1][::-1]):
            np.testing.assert_array_equal(kernel_label_scores(b, x, y, True, score, u), base[b])
    if dtype == np.float64:  # double exp and sum order differ by ulps between the backends
        np.testing.assert_allclose(base["cpp"], base["numba"], rtol=0, atol=1e-14)
    else:  # the float path is the same sequence of operations in both
        np.testing.assert_array_equal(base["cpp"], base["numba"])
    q = float(np.quantile(base["cpp"], 0.85))
    a, b = kernel_sets("cpp", z, True, score, q, u), kernel_sets("numba", z, True, score, q, u)
    assert (a != b).sum() <= (0 if dtype != np.float64 else 2)
    assert not np.shares_memory(z, a)


def test_thread_count_bit_identity(backend, threads):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(6000, 50)).astype(np.float32)
    y = rng.integers(0, 50, 6000)
    u = rng.random(6000)
    runs = []
    for t in (1, 2, 3):
        calibkit.set_num_threads(t)
        s = kernel_label_scores(backend, z, y, True, "aps", u)
        runs.append((s, kernel_sets(backend, z, True, "aps", float(np.median(s)), u)))
    for s, m in runs[1:]:
        np.testing.assert_array_equal(s, runs[0][0])
        np.testing.assert_array_equal(m, runs[0][1])


# ----------------------------------------------------------------------------------------------
# ConformalClassifier

@pytest.mark.parametrize("score", ["lac", "thr", "aps", "raps", "saps"])
def test_classifier_threshold_and_sets(backend, score):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(1500, 8)) * 2
    y = rng.integers(0, 8, 1500)
    cp = calibkit.ConformalClassifier(score=score, alpha=0.1, backend=backend, **PARAMS)
    cp.fit(z[:500], y[:500], from_logits=True)
    ref_cal = ref_all_scores(softmax(z[:500]), score)[np.arange(500), y[:500]]
    np.testing.assert_allclose(cp.calibration_scores_, ref_cal, atol=1e-13)
    k = math.ceil(501 * 0.9)
    assert cp.threshold_ == np.sort(cp.calibration_scores_)[k - 1]
    np.testing.assert_array_equal(cp.thresholds_, np.full(8, cp.threshold_))
    sets = cp.predict_sets(z[500:], from_logits=True)
    assert sets.dtype == np.bool_ and sets.shape == (1000, 8)
    np.testing.assert_array_equal(cp.set_sizes(z[500:], from_logits=True), sets.sum(axis=1))
    ref = ref_all_scores(softmax(z[500:]), score)
    clear = np.abs(ref - cp.threshold_) > 1e-12
    np.testing.assert_array_equal(sets[clear], (ref <= cp.threshold_)[clear])


def test_quantile_rank_and_infinite_threshold():
    assert calibkit.conformal_quantile([0.3, 0.1, 0.2], 0.5) == 0.2  # rank ceil(4 * 0.5) = 2
    assert calibkit.conformal_quantile([0.3, 0.1, 0.2], 0.2) == math.inf  # rank ceil(4 * 0.8) = 4 > 3
    assert calibkit.conformal_quantile([], 0.1) == math.inf
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    cp = calibkit.ConformalClassifier(score="aps", alpha=0.1).fit(p, [0, 1])
    assert cp.threshold_ == math.inf
    assert cp.predict_sets(p).all()


def test_class_conditional_thresholds(backend):
    rng = np.random.default_rng(6)
    p = random_rows(rng, 800, 5)
    y = rng.integers(0, 4, 800)  # class 4 never occurs: infinite threshold
    cp = calibkit.ConformalClassifier(score="aps", class_conditional=True, alpha=0.2, backend=backend).fit(p, y)
    s = ref_all_scores(p, "aps")[np.arange(800), y]
    np.testing.assert_array_equal(cp.thresholds_[:4], [ref_quantile(s[y == k], 0.2) for k in range(4)])
    assert cp.thresholds_[4] == math.inf
    assert cp.threshold_ == ref_quantile(s, 0.2)
    test = random_rows(rng, 300, 5)
    np.testing.assert_array_equal(cp.predict_sets(test), ref_all_scores(test, "aps") <= cp.thresholds_[None, :])
    assert cp.predict_sets(test)[:, 4].all()


def test_randomized_seed_is_documented():
    rng = np.random.default_rng(7)
    p = random_rows(rng, 400, 6)
    y = rng.integers(0, 6, 400)
    cp = calibkit.ConformalClassifier(score="raps", randomized=True, random_state=42, **PARAMS).fit(p[:200], y[:200])
    gen = np.random.default_rng(42)
    u_cal = gen.random(200)
    np.testing.assert_array_equal(cp.calibration_scores_, ref_all_scores(p[:200], "raps", u=u_cal)[np.arange(200),
                                                                                                    y[:200]])
    u_test = gen.random(200)
    np.testing.assert_array_equal(cp.predict_sets(p[200:]),
                                  ref_all_scores(p[200:], "raps", u=u_test) <= cp.threshold_)
    again = calibkit.ConformalClassifier(score="raps", randomized=True, random_state=42, **PARAMS)
    again.fit(p[:200], y[:200])
    np.testing.assert_array_equal(again.predict_sets(p[200:]), ref_all_scores(p[200:], "raps", u=u_test)
                                  <= cp.threshold_)  # the same seed, the same sequence of calls: the same sets


@pytest.mark.parametrize("score,randomized", [("lac", False), ("aps", False), ("raps", False), ("aps", True),
                                              ("saps", True)])
def test_coverage_simulation_within_finite_sample_bounds(score, randomized):
    """Exchangeable data: the mean coverage over many random splits is in [1 - a, 1 - a + 1/(n + 1)]."""
    rng = np.random.default_rng(8)
    K, n, m, splits, alpha = 10, 200, 1000, 200, 0.1
    z = rng.normal(size=(n + m, K)) * 1.5
    p = softmax(z)
    cov = np.empty(splits)
    for j in range(splits):
        # fresh exchangeable labels and a fresh split each time
        y = sample_labels(rng, p)
        perm = rng.permutation(n + m)
        cal, test = perm[:n], perm[n:]
        cp = calibkit.ConformalClassifier(score=score, alpha=alpha, randomized=randomized, random_state=j,
                                          **PARAMS).fit(p[cal], y[cal])
        cov[j] = calibkit.coverage(cp.predict_sets(p[test]), y[test])
    tol = 4 * cov.std(ddof=1) / math.sqrt(splits)
    assert 1 - alpha - tol <= cov.mean() <= 1 - alpha + 1 / (n + 1) + tol, (cov.mean(), tol)


# ----------------------------------------------------------------------------------------------
# Metrics

def test_metrics_small_example():
    sets = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    y = np.array([0, 2, 1, 0])
    assert calibkit.coverage(sets, y) == 0.5
    assert calibkit.average_set_size(sets) == 1.75
    assert calibkit.size_stratified_coverage(sets, y, 0.1) == pytest.approx(0.4)
    assert calibkit.size_stratified_coverage(sets, y, 0.1, strata=[(3, 3)]) == pytest.approx(0.1)
    assert calibkit.size_stratified_coverage(sets, y, 0.1, strata=[(5, 9)]) == -1.0
    # classes 0 (rows 0, 3: 1/2), 1 (row 2: 1), 2 (row 1: 0)
    assert calibkit.class_conditional_coverage_gap(sets, y, 0.1) == pytest.approx(100 * (0.4 + 0.1 + 0.9) / 3)


def test_metric_bad_input():
    sets = np.ones((3, 2), bool)
    with pytest.raises(ValueError, match=r"labels\[1\] = 5 is out of range for n_classes=2"):
        calibkit.coverage(sets, [0, 5, 1])
    with pytest.raises(ValueError, match=r"sets\[0, 1\] = 2 is not 0/1"):
        calibkit.coverage([[0, 2], [1, 1]], [0, 1])
    with pytest.raises(ValueError, match="alpha must be a number in"):
        calibkit.size_stratified_coverage(sets, [0, 1, 1], 1.5)
    with pytest.raises(ValueError, match=r"strata\[0\]"):
        calibkit.size_stratified_coverage(sets, [0, 1, 1], 0.1, strata=[(3, 1)])
    with pytest.raises(ValueError, match="shape"):
        calibkit.average_set_size(np.ones(3, bool))


# ----------------------------------------------------------------------------------------------
# Streaming

def test_accumulator_matches_one_shot_and_round_trips():
    rng = np.random.default_rng(9)
    p = random_rows(rng, 3000, 7)
    y = sample_labels(rng, p)
    cp = calibkit.ConformalClassifier(score="aps", alpha=0.1).fit(p[:1000], y[:1000])
    sets = cp.predict_sets(p[1000:])
    a = calibkit.ConformalAccumulator(cp).update(p[1000:1500], y[1000:1500])
    b = calibkit.ConformalAccumulator(alpha=0.1).update(sets[500:], y[1500:])
    m = (a + b).compute()
    yt = y[1000:]
    assert m.count == 2000
    assert m.coverage == pytest.approx(calibkit.coverage(sets, yt), abs=1e-15)
    assert m.average_set_size == pytest.approx(calibkit.average_set_size(sets), abs=1e-15)
    assert m.size_stratified_coverage == pytest.approx(calibkit.size_stratified_coverage(sets, yt, 0.1), abs=1e-15)
    assert m.class_conditional_coverage_gap == pytest.approx(
        calibkit.class_conditional_coverage_gap(sets, yt, 0.1), abs=1e-12)
    data = (a + b).to_bytes()
    again = calibkit.ConformalAccumulator.from_bytes(data)
    assert again.compute() == m
    with pytest.raises(ValueError):
        calibkit.ConformalAccumulator.from_bytes(data[:-5] + b"xxxxx")
    with pytest.raises(ValueError, match="needs a fitted ConformalClassifier"):
        calibkit.ConformalAccumulator().update(p[:5], y[:5])
    with pytest.raises(ValueError, match="n_classes=7"):
        a.update(np.ones((2, 3), bool), [0, 1])
    empty = calibkit.ConformalAccumulator.from_bytes(calibkit.ConformalAccumulator().to_bytes())
    assert empty.count == 0


def test_accumulator_rejects_inconsistent_state():
    from calibkit.streaming import encode_state

    meta = {"alpha": 0.1, "n_classes": 2, "strata": [[0, 1]]}
    arrays = {"class_count": np.array([1.0, 1.0]), "class_covered": np.array([2.0, 0.0]),
              "size_count": np.array([0.0, 2.0, 0.0]), "size_covered": np.array([0.0, 2.0, 0.0])}
    with pytest.raises(ValueError, match="inconsistent counts"):
        calibkit.ConformalAccumulator.from_bytes(encode_state("ConformalAccumulator", meta, arrays))
    arrays["class_covered"] = np.array([0.5, 0.0])
    with pytest.raises(ValueError, match="whole numbers"):
        calibkit.ConformalAccumulator.from_bytes(encode_state("ConformalAccumulator", meta, arrays))


# ----------------------------------------------------------------------------------------------
# Bad input: one clear error, in a subprocess (a crash fails the test instead of the run)

BAD = [
    ("import numpy as np, calibkit\nz = np.zeros((5, 3)); z[3, 2] = np.nan\n"
     "calibkit.ConformalClassifier(backend=B).fit(z, [0, 1, 2, 0, 1], from_logits=True)",
     r"cal_scores\[3, 2\] = nan is not finite"),
    ("import numpy as np, calibkit\np = np.full((4, 3), 1 / 3)\n"
     "calibkit.ConformalClassifier(score='aps', backend=B).fit(p, [0, 1, 3, 0])",
     r"cal_labels\[2\] = 3 is out of range for n_classes=3"),
    ("import numpy as np, calibkit\np = np.full((4, 3), 1 / 3); p[1, 0] = 1.5\n"
     "calibkit.ConformalClassifier(backend=B).fit(p, [0, 1, 2, 0])",
     r"cal_scores\[1, 0\] = 1.5 is not a probability"),
    ("import numpy as np, calibkit\np = np.full((4, 3), 1 / 3)\n"
     "cp = calibkit.ConformalClassifier(backend=B).fit(p, [0, 1, 2, 0]); cp.predict_sets(np.full((2, 4), .25))",
     "scores has 4 columns but the classifier was fitted on 3 classes"),
    ("import numpy as np, calibkit\np = np.full((4, 3), 1 / 3)\n"
     "cp = calibkit.ConformalClassifier(score='raps', backend=B).fit(p, [0, 1, 2, 0])\n"
     "z = np.zeros((3, 3)); z[2, 1] = np.inf; cp.predict_sets(z, from_logits=True)",
     r"scores\[2, 1\] = inf is not finite"),
    ("import numpy as np, calibkit\ncalibkit.ConformalClassifier(score='foo').fit(np.eye(3), [0, 1, 2])",
     "score must be one of"),
    ("import numpy as np, calibkit\ncalibkit.ConformalClassifier(kreg=-1).fit(np.eye(3), [0, 1, 2])",
     r"kreg must be in \[0, 1099511627776\]"),
    ("import numpy as np, calibkit\ncalibkit.ConformalClassifier(alpha=0).fit(np.eye(3), [0, 1, 2])",
     r"alpha must be a number in \(0, 1\)"),
    ("import numpy as np, calibkit\ncalibkit.ConformalClassifier().predict_sets(np.eye(3))", "not fitted"),
    ("import numpy as np, calibkit\ncalibkit.ConformalClassifier().fit(np.eye(3), [0, 1])",
     "cal_labels has 2 entries but scores has 3 rows"),
    ("import numpy as np, calibkit\nfrom calibkit._numba import conformal as nb\nk = calibkit._core if B == 'cpp' "
     "else nb\nk.conformal_sets(np.eye(3), False, 1, 0.0, 0, 1.0, np.zeros(3), np.array([0.5, 2.0, 0.1]), "
     "np.zeros((3, 3), np.uint8), np.zeros(3, np.int64))",
     r"u\[1\] = 2(\.0+)? is not in \[0, 1\)"),
    ("import numpy as np, calibkit\nfrom calibkit._numba import conformal as nb\nk = calibkit._core if B == 'cpp' "
     "else nb\nk.conformal_sets(np.eye(3), False, 1, 0.0, 0, 1.0, np.zeros(3), None, "
     "np.zeros((3, 2), np.uint8), np.zeros(3, np.int64))",
     r"out must have shape \(3, 3\)"),
    ("import numpy as np, calibkit\nfrom calibkit._numba import conformal as nb\nk = calibkit._core if B == 'cpp' "
     "else nb\nk.conformal_sets(np.eye(3), False, 7, 0.0, 0, 1.0, np.zeros(3), None, "
     "np.zeros((3, 3), np.uint8), np.zeros(3, np.int64))",
     r"kind must be in \[0, 3\]"),
    ("import numpy as np, calibkit\nfrom calibkit._numba import conformal as nb\nk = calibkit._core if B == 'cpp' "
     "else nb\nk.conformal_label_scores(np.eye(3), np.zeros(3, np.int64), False, 2, 0.0, 2**41, 1.0, None)",
     r"kreg must be <= 1099511627776"),
]


@pytest.mark.parametrize("code,message", BAD)
def test_bad_input_one_clear_error(backend, code, message):
    src = f"B = {backend!r}\n{code}"
    r = subprocess.run([sys.executable, "-c", src], timeout=120, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(("ValueError", "TypeError", "calibkit.NotFittedError",
                            "calibkit._validation.BadElementError")), last
    assert __import__("re").search(message, last), last


# ----------------------------------------------------------------------------------------------
# torchcp (the reference implementation)

def torchcp():
    """torchcp's score classes, ``calculate_conformal_value`` and metrics, as a namespace.

    ``import torchcp`` imports every subpackage (graph, llm, the losses), which need torch_geometric,
    transformers and torchsort (a C++ build); the conformal code needs none of them. Unless torchcp is already
    imported, its parent packages are registered here as empty packages (their ``__init__`` not run) and only
    the modules of the scores, the threshold and the metrics are loaded, unchanged.
    """
    import importlib
    import importlib.util
    import pathlib
    import types

    pytest.importorskip("torch")
    if "torchcp" not in sys.modules:
        spec = importlib.util.find_spec("torchcp")
        if spec is None:
            pytest.skip("torchcp is not installed")
        root = pathlib.Path(spec.origin).parent
        for sub in ("", "classification", "classification/score", "classification/utils", "utils"):
            name = "torchcp" + ("." + sub.replace("/", ".") if sub else "")
            if name not in sys.modules:
                package = types.ModuleType(name)
                package.__path__ = [str(root / sub)]
                sys.modules[name] = package
    ns = types.SimpleNamespace()
    for cls, module in (("LAC", "lac"), ("APS", "aps"), ("RAPS", "raps"), ("SAPS", "saps")):
        setattr(ns, cls, getattr(importlib.import_module(f"torchcp.classification.score.{module}"), cls))
    ns.calculate_conformal_value = importlib.import_module("torchcp.utils.common").calculate_conformal_value
    ns.metrics = importlib.import_module("torchcp.classification.utils.metrics")
    return ns


def _torchcp_score(score, randomized):
    tcp = torchcp()
    APS, LAC, RAPS, SAPS = tcp.APS, tcp.LAC, tcp.RAPS, tcp.SAPS

    if score in ("lac", "thr"):
        return LAC(score_type="softmax")
    if score == "aps":
        return APS(score_type="softmax", randomized=randomized)
    if score == "raps":
        return RAPS(score_type="softmax", randomized=randomized, penalty=TCP_PARAMS["penalty"],
                    kreg=TCP_PARAMS["kreg"])
    return SAPS(score_type="softmax", randomized=randomized, weight=TCP_PARAMS["weight"])


def _torchcp_split(score, cal_z, cal_y, test_z, alpha):
    torch = pytest.importorskip("torch")
    calculate_conformal_value = torchcp().calculate_conformal_value
    fn = _torchcp_score(score, False)
    cal = fn(torch.from_numpy(cal_z), torch.from_numpy(cal_y))
    if score == "saps":
        # torchcp gives a top-ranked calibration label the score U p_(0) = 0 (not randomized) but the top class of
        # a test row p_(0); calibkit uses p_(0) for both. Compare on the function the test rows use.
        p = torch.softmax(torch.from_numpy(cal_z), dim=-1)
        top = p.argmax(dim=-1) == torch.from_numpy(cal_y)
        cal = torch.where(top, p.max(dim=-1).values, cal)
    q = float(calculate_conformal_value(cal, alpha))
    test_scores = fn(torch.from_numpy(test_z)).numpy()
    return q, cal.numpy(), test_scores


@pytest.mark.parametrize("score", ["thr", "aps", "raps", "saps"])
@pytest.mark.parametrize("source", ["random", "focal_cifar100_resnet110_brier.npz", "focal_cifar10_resnet50_brier.npz"])
def test_same_thresholds_and_sets_as_torchcp(backend, score, source):
    torchcp()
    if source == "random":
        rng = np.random.default_rng(10)
        z = rng.normal(size=(4000, 30)) * 2.5
        y = rng.integers(0, 30, 4000)
        cal_z, cal_y, test_z = z[:2000], y[:2000], z[2000:]
    else:
        d = load_real(source)
        cal_z, cal_y = d["val_logits"].astype(np.float64), d["val_labels"]
        test_z = d["test_logits"].astype(np.float64)
    alpha = 0.1
    q_ref, cal_ref, test_ref = _torchcp_split(score, cal_z, cal_y, test_z, alpha)
    cp = calibkit.ConformalClassifier(score=score, alpha=alpha, backend=backend, **TCP_PARAMS)
    cp.fit(cal_z, cal_y, from_logits=True)
    np.testing.assert_allclose(cp.calibration_scores_, cal_ref, rtol=0, atol=1e-12)
    assert cp.threshold_ == pytest.approx(q_ref, abs=1e-12)
    sets = cp.predict_sets(test_z, from_logits=True)
    ref_sets = test_ref <= q_ref
    borderline = np.abs(test_ref - q_ref) <= 1e-12
    assert (sets != ref_sets)[~borderline].sum() == 0
    assert borderline.sum() <= 0.001 * borderline.size
    assert calibkit.coverage(sets, d["test_labels"] if source != "random" else y[2000:]) == pytest.approx(
        calibkit.coverage(ref_sets, d["test_labels"] if source != "random" else y[2000:]), abs=2e-3)


def test_metrics_match_torchcp():
    torch = pytest.importorskip("torch")
    tm = torchcp().metrics

    rng = np.random.default_rng(11)
    p = random_rows(rng, 5000, 30, 0.2)
    y = sample_labels(rng, p)
    y[y == 7] = 8  # a class without rows
    cp = calibkit.ConformalClassifier(score="raps", alpha=0.1, **PARAMS).fit(p[:2000], y[:2000])
    sets, yt = cp.predict_sets(p[2000:]), y[2000:]
    S, Y = torch.from_numpy(sets.astype(np.int64)), torch.from_numpy(yt)
    assert calibkit.coverage(sets, yt) == pytest.approx(tm.coverage_rate(S, Y), abs=1e-6)
    assert calibkit.average_set_size(sets) == pytest.approx(tm.average_size(S, Y), abs=1e-5)
    assert calibkit.size_stratified_coverage(sets, yt, 0.1) == pytest.approx(tm.SSCV(S, Y, 0.1), abs=1e-6)
    assert calibkit.class_conditional_coverage_gap(sets, yt, 0.1) == pytest.approx(tm.CovGap(S, Y, 0.1, 30),
                                                                                   abs=1e-4)


@pytest.mark.parametrize("score", ["aps", "raps", "saps"])
def test_randomized_same_distribution_as_torchcp(score):
    torch = pytest.importorskip("torch")
    tcp = torchcp()
    from scipy import stats

    rng = np.random.default_rng(12)
    z = rng.normal(size=(8000, 10)) * 1.5
    y = sample_labels(rng, softmax(z))
    torch.manual_seed(0)
    fn = _torchcp_score(score, True)
    cal_ref = fn(torch.from_numpy(z[:4000]), torch.from_numpy(y[:4000])).numpy()
    cp = calibkit.ConformalClassifier(score=score, alpha=0.1, randomized=True, random_state=0, **TCP_PARAMS)
    cp.fit(z[:4000], y[:4000], from_logits=True)
    # the calibration scores: the same distribution (two-sample Kolmogorov-Smirnov)
    assert stats.ks_2samp(cp.calibration_scores_, cal_ref).pvalue > 1e-3
    # the test sets: each class's inclusion has the same distribution, so coverage and size agree in mean
    q_ref = float(tcp.calculate_conformal_value(torch.from_numpy(cal_ref), 0.1))
    ref_sets = fn(torch.from_numpy(z[4000:])).numpy() <= q_ref
    sets = cp.predict_sets(z[4000:], from_logits=True)
    yt = y[4000:]
    cov, cov_ref = sets[np.arange(4000), yt], ref_sets[np.arange(4000), yt]
    se = math.sqrt(cov.var() / 4000 + cov_ref.var() / 4000) + 0.01  # + the spread of the two thresholds
    assert abs(cov.mean() - cov_ref.mean()) < 4 * se
    sz, sz_ref = sets.sum(1), ref_sets.sum(1)
    se = math.sqrt(sz.var() / 4000 + sz_ref.var() / 4000) + 0.05
    assert abs(sz.mean() - sz_ref.mean()) < 4 * se
