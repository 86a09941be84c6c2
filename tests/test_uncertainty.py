"""Per-sample scores, the ensemble decomposition and the confidence loss against plain NumPy references."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import calibkit
from calibkit import uncertainty as unc

from conftest import load_real, random_probs
from reference import softmax
from subprocess_cases import simd_clone_outputs

DTYPES = (np.float16, np.float32, np.float64)


def tol(dtype):
    """float64 rows are computed in double precision; float32 / float16 rows with 8-lane float exp / log
    (relative error < 2.5e-7 per element, sums in double): about 1e-6 relative at worst."""
    return dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-7)


# -- references -------------------------------------------------------------------------------------------------

def ref_scores(x, from_logits, T=1.0):
    x = np.asarray(x, dtype=np.float64)
    K = x.shape[1]
    if from_logits:
        p = softmax(x / T)
        logp = x / T - logsumexp(x / T, axis=1, keepdims=True)
    else:
        p = x
        with np.errstate(divide="ignore"):
            logp = np.log(p)
    top = np.sort(p, axis=1)
    plogp = np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0)
    out = {
        "max_probability": top[:, -1],
        "margin": top[:, -1] - top[:, -2],
        "entropy": -plogp.sum(axis=1),
        "kl_to_uniform": -np.log(K) - logp.mean(axis=1),
    }
    if from_logits:
        out["energy"] = -T * logsumexp(x / T, axis=1)
        out["logit_norm"] = np.sqrt((x ** 2).sum(axis=1))
    return out


def ref_decompose(samples, from_logits):
    """An explicit loop over the S members."""
    S = samples.shape[0]
    members = [softmax(s) if from_logits else np.asarray(s, dtype=np.float64) for s in samples]
    mean = sum(members) / S

    def H(p):
        return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)

    pred = mean.argmax(axis=1)
    picked = np.stack([m[np.arange(len(pred)), pred] for m in members])
    total = H(mean)
    aleatoric = sum(H(m) for m in members) / S
    return dict(mean=mean, prediction=pred, total=total, aleatoric=aleatoric, epistemic=total - aleatoric,
                variance=picked.var(axis=0))


def ref_confidence_loss(zi, y, zo, beta):
    zi = np.asarray(zi, dtype=np.float64)
    zo = np.asarray(zo, dtype=np.float64)
    K = zi.shape[1]
    lsi = logsumexp(zi, axis=1)
    nll = np.mean(lsi - zi[np.arange(len(y)), y])
    logp_o = zo - logsumexp(zo, axis=1, keepdims=True)
    kl = np.mean(-np.log(K) - logp_o.mean(axis=1))
    gi = (softmax(zi) - np.eye(K)[y]) / len(zi)
    go = beta * (softmax(zo) - 1.0 / K) / len(zo)
    return nll + beta * kl, nll, kl, gi, go


def layouts(a):
    """The same values as C order, Fortran order and a strided view."""
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), dtype=a.dtype)
    wide[:, ::2] = a
    return {"C": np.ascontiguousarray(a), "F": np.asfortranarray(a), "strided": wide[:, ::2]}


# -- per-sample scores ------------------------------------------------------------------------------------------

ALL_KINDS = ("max_probability", "margin", "entropy", "energy", "logit_norm", "kl_to_uniform")
PROB_KINDS = ("max_probability", "margin", "entropy", "kl_to_uniform")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ("C", "F", "strided"))
@pytest.mark.parametrize("K", (2, 7, 8, 13, 100))
def test_scores_from_logits_match_reference(backend, dtype, layout, K):
    rng = np.random.default_rng(K)
    z = (rng.normal(size=(300, K)) * 4).astype(dtype)
    before = z.copy()
    x = layouts(z)[layout]
    got = unc.uncertainty_scores(x, ALL_KINDS, from_logits=True, backend=backend)
    want = ref_scores(z, True)
    for kind in ALL_KINDS:
        np.testing.assert_allclose(got[kind], want[kind], **tol(dtype), err_msg=kind)
    np.testing.assert_array_equal(z, before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ("C", "F", "strided"))
@pytest.mark.parametrize("K", (2, 9, 100))
def test_scores_from_probabilities_match_reference(backend, dtype, layout, K):
    rng = np.random.default_rng(K + 1)
    p = random_probs(rng, 300, K, dtype=dtype)
    x = layouts(p)[layout]
    got = unc.uncertainty_scores(x, PROB_KINDS, backend=backend)
    want = ref_scores(p, False)
    for kind in PROB_KINDS:
        np.testing.assert_allclose(got[kind], want[kind], **tol(dtype), err_msg=kind)


@pytest.mark.parametrize("T", (0.1, 0.5, 2.0, 37.0))
def test_temperature(backend, T):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 11)) * 3
    got = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True, temperature=T, backend=backend)
    want = ref_scores(z, True, T)
    for kind in ALL_KINDS:
        np.testing.assert_allclose(got[kind], want[kind], rtol=1e-12, atol=1e-12, err_msg=kind)


def test_single_score_functions_agree_with_the_fused_call(backend):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(100, 10)) * 2
    fused = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True, backend=backend)
    np.testing.assert_array_equal(calibkit.max_probability(z, from_logits=True, backend=backend),
                                  fused["max_probability"])
    np.testing.assert_array_equal(calibkit.margin(z, from_logits=True, backend=backend), fused["margin"])
    np.testing.assert_array_equal(calibkit.entropy(z, from_logits=True, backend=backend), fused["entropy"])
    np.testing.assert_array_equal(calibkit.energy(z, backend=backend), fused["energy"])
    np.testing.assert_array_equal(calibkit.logit_norm(z, backend=backend), fused["logit_norm"])
    np.testing.assert_array_equal(calibkit.kl_to_uniform(z, from_logits=True, backend=backend),
                                  fused["kl_to_uniform"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_backends_agree_on_real_logits(dtype):
    """Both backends run the same algorithm (the same float32 exp / log bits for float32 input)."""
    d = load_real("focal_cifar100_resnet50_brier.npz")
    z = d["test_logits"].astype(dtype)
    a = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True, backend="cpp")
    b = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True, backend="numba")
    for kind in ALL_KINDS:
        np.testing.assert_allclose(a[kind], b[kind], rtol=1e-12, atol=1e-13, err_msg=kind)
    p = calibkit.uncertainty.uncertainty_scores(z, ("max_probability",), from_logits=True)["max_probability"]
    probs = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype)
    a = unc.uncertainty_scores(probs, PROB_KINDS, backend="cpp")
    b = unc.uncertainty_scores(probs, PROB_KINDS, backend="numba")
    for kind in PROB_KINDS:
        np.testing.assert_allclose(a[kind], b[kind], rtol=1e-12, atol=1e-13, err_msg=kind)
    assert p.shape == (len(z),)


def test_large_logits_are_stable(backend):
    z = np.array([[1e4, 0.0, -1e4], [5e3, 5e3, 0.0], [-1e300, -1e300 + 1e285, 0.0]])
    s = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True, backend=backend)
    for kind in ALL_KINDS:
        assert np.all(np.isfinite(s[kind])), kind
    np.testing.assert_allclose(s["max_probability"][:2], [1.0, 0.5])
    np.testing.assert_allclose(s["margin"][:2], [1.0, 0.0])
    np.testing.assert_allclose(s["entropy"][:2], [0.0, np.log(2)], atol=1e-15)
    np.testing.assert_allclose(s["energy"][:2], [-1e4, -(5e3 + np.log(2))])
    np.testing.assert_allclose(s["logit_norm"], [np.sqrt(2) * 1e4, np.sqrt(2) * 5e3, np.sqrt(2) * 1e300])
    tiny = calibkit.logit_norm(np.array([[3e-200, 4e-200], [0.0, 0.0]]), backend=backend)
    np.testing.assert_allclose(tiny, [5e-200, 0.0], rtol=1e-15)


def test_entropy_edge_cases(backend):
    K = 6
    p = np.vstack([np.full(K, 1 / K), np.eye(K)[2], [0.5, 0.5, 0, 0, 0, 0]])
    h = calibkit.entropy(p, backend=backend)
    np.testing.assert_allclose(h, [np.log(K), 0.0, np.log(2)], atol=1e-15)
    np.testing.assert_allclose(calibkit.entropy(p, normalize=True, backend=backend), h / np.log(K))
    kl = calibkit.kl_to_uniform(p, backend=backend)
    assert kl[0] == pytest.approx(0.0, abs=1e-15) and np.isinf(kl[1]) and np.isinf(kl[2])
    # ties: the margin of a tied top two is 0
    assert calibkit.margin(p, backend=backend)[0] == 0.0
    assert calibkit.margin(p, backend=backend)[2] == 0.0


def test_subnormal_and_tiny_probabilities(backend):
    tiny = np.array([5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, 1e-20])
    p = np.stack([tiny, 1 - tiny], axis=1)
    kl = calibkit.kl_to_uniform(p, backend=backend)
    want = -np.log(2) - (np.log(tiny) + np.log1p(-tiny)) / 2
    np.testing.assert_allclose(kl, want, rtol=1e-14)


def test_scores_thread_count_invariant(threads):
    rng = np.random.default_rng(5)
    z = rng.normal(size=(20000, 30)).astype(np.float32)
    calibkit.set_num_threads(1)
    a = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True)
    calibkit.set_num_threads(2)
    b = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True)
    for kind in ALL_KINDS:
        np.testing.assert_array_equal(a[kind], b[kind])


def test_memmap_input(tmp_path, backend):
    rng = np.random.default_rng(6)
    z = rng.normal(size=(500, 12)).astype(np.float32)
    path = tmp_path / "z.npy"
    np.save(path, z)
    mm = np.load(path, mmap_mode="r")
    np.testing.assert_array_equal(calibkit.entropy(mm, from_logits=True, backend=backend),
                                  calibkit.entropy(z, from_logits=True, backend=backend))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(2, 20), st.integers(0, 2 ** 31))
def test_scores_follow_row_permutations(n, K, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, K)) * rng.uniform(0.1, 10)
    perm = rng.permutation(n)
    a = unc.uncertainty_scores(z, ALL_KINDS, from_logits=True)
    b = unc.uncertainty_scores(z[perm], ALL_KINDS, from_logits=True)
    for kind in ALL_KINDS:
        np.testing.assert_array_equal(a[kind][perm], b[kind])
    # monotone relations that hold for any row
    assert np.all(a["max_probability"] >= 1.0 / K - 1e-15)
    assert np.all(a["entropy"] <= np.log(K) + 1e-12)
    assert np.all((a["margin"] >= 0) & (a["margin"] <= a["max_probability"]))


# -- feature-based measures -------------------------------------------------------------------------------------

def test_feature_scores_match_reference():
    rng = np.random.default_rng(7)
    F = rng.normal(size=(257, 16))
    W = rng.normal(size=(10, 16))
    r = unc.feature_scores(F, W, chunk_size=50)
    norm = np.linalg.norm(F, axis=1)
    cos = (F @ W.T) / norm[:, None] / np.linalg.norm(W, axis=1)[None, :]
    fam = cos.max(axis=1)
    U = -1 / (1 + 9 * np.exp(-norm * (1 / 9 + fam)))
    np.testing.assert_allclose(r.norm, norm, rtol=1e-13)
    np.testing.assert_allclose(r.familiarity, fam, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.uncertainty, U, rtol=1e-12)
    # chunking does not change anything
    r2 = unc.feature_scores(F, W)
    np.testing.assert_allclose(r2.familiarity, r.familiarity, rtol=1e-14, atol=1e-15)


def test_feature_scores_zero_feature_row_is_documented():
    W = np.vstack([np.eye(3), np.ones((1, 3))])
    F = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    r = unc.feature_scores(F, W)
    assert r.norm[0] == 0.0 and r.familiarity[0] == 0.0
    assert r.uncertainty[0] == pytest.approx(-1 / 4)
    assert r.familiarity[1] == pytest.approx(1.0)


@pytest.mark.parametrize("F, W, exc, match", [
    (np.ones((3, 4)), np.ones((5, 3)), ValueError, r"weights has shape \(5, 3\).*D=4"),
    (np.ones((3, 4)), np.ones(4), ValueError, "weights must have shape"),
    (np.ones(4), np.ones((5, 4)), ValueError, "features must have shape"),
    (np.ones((0, 4)), np.ones((5, 4)), ValueError, "features must have shape"),
    (np.ones((3, 4)), np.vstack([np.ones((4, 4)), np.zeros((1, 4))]), ValueError, r"weights\[4\] has zero norm"),
    (np.array([[1.0, np.nan]]), np.ones((3, 2)), ValueError, r"features\[0, 1\] = nan"),
    (np.ones((3, 2)), np.array([[1.0, np.inf], [1.0, 1.0]]), ValueError, r"weights\[0, 1\] = inf"),
    (np.array([["a", "b"]]), np.ones((3, 2)), TypeError, "features must be an array of floats"),
])
def test_feature_scores_bad_input(F, W, exc, match):
    with pytest.raises(exc, match=match):
        unc.feature_scores(F, W)


# -- ensembles / MC dropout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("from_logits", (False, True))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", (2, 10, 33))
def test_decompose_matches_loop_over_members(backend, from_logits, dtype, K):
    rng = np.random.default_rng(K)
    S, N = 7, 120
    if from_logits:
        x = (rng.normal(size=(S, N, K)) * 2).astype(dtype)
    else:
        x = np.stack([random_probs(rng, N, K, concentration=1.0) for _ in range(S)]).astype(dtype)
    got = calibkit.decompose(x, from_logits=from_logits, backend=backend)
    want = ref_decompose(x, from_logits)
    if dtype == np.float64:
        np.testing.assert_array_equal(got.prediction, want["prediction"])
    else:  # float32 exp / log: a near-tie of two classes' means may resolve either way
        top = np.sort(want["mean"], axis=1)
        clear = top[:, -1] - top[:, -2] > 1e-5
        np.testing.assert_array_equal(got.prediction[clear], want["prediction"][clear])
    for f in ("mean", "total", "aleatoric", "epistemic", "variance"):
        np.testing.assert_allclose(getattr(got, f), want[f], **(tol(dtype) if dtype != np.float64 else
                                                                 dict(rtol=1e-11, atol=1e-14)), err_msg=f)
    assert np.all(got.epistemic >= 0)


def test_decompose_reads_any_layout_in_place():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(5, 40, 6)).astype(np.float32)
    want = calibkit.decompose(x, from_logits=True)
    for view in (np.asfortranarray(x), x.transpose(1, 0, 2).copy().transpose(1, 0, 2),
                 np.repeat(x, 2, axis=2)[:, :, ::2]):
        got = calibkit.decompose(view, from_logits=True)
        np.testing.assert_array_equal(got.mean, want.mean)
        np.testing.assert_array_equal(got.variance, want.variance)


def test_decompose_backends_agree_and_thread_invariant(threads):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(10, 3000, 20)).astype(np.float32)
    calibkit.set_num_threads(1)
    a = calibkit.decompose(x, from_logits=True)
    calibkit.set_num_threads(2)
    b = calibkit.decompose(x, from_logits=True)
    c = calibkit.decompose(x, from_logits=True, backend="numba")
    for f in ("mean", "prediction", "total", "aleatoric", "epistemic", "variance"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_allclose(getattr(a, f), getattr(c, f), rtol=1e-12, atol=1e-14)


def test_decompose_extremes(backend):
    # identical members: no epistemic part, no variance; disagreeing one-hot members: all epistemic
    p = random_probs(np.random.default_rng(10), 50, 4, concentration=1.0)
    d = calibkit.decompose(np.stack([p] * 5), backend=backend)
    np.testing.assert_allclose(d.epistemic, 0.0, atol=1e-15)
    np.testing.assert_allclose(d.variance, 0.0, atol=1e-16)
    onehots = np.stack([np.eye(4)[[k]] for k in range(4)])  # (4, 1, 4)
    d = calibkit.decompose(onehots, backend=backend)
    assert d.aleatoric[0] == 0.0
    assert d.total[0] == pytest.approx(np.log(4)) and d.epistemic[0] == pytest.approx(np.log(4))
    assert d.variance[0] == pytest.approx(0.25 * 0.75)


@pytest.mark.parametrize("from_logits", (False, True))
def test_streaming_decomposition_equals_one_shot(backend, from_logits):
    rng = np.random.default_rng(11)
    if from_logits:
        x = rng.normal(size=(9, 500, 12)).astype(np.float32)
    else:
        x = np.stack([random_probs(rng, 500, 12) for _ in range(9)])
    one = calibkit.decompose(x, from_logits=from_logits, backend=backend)
    acc = calibkit.EnsembleAccumulator(from_logits=from_logits, backend=backend)
    for member in x:
        acc.update(member)
    got = acc.compute()
    assert acc.count == 9
    # the same member probabilities added in the same order: equal to the last bit
    for f in ("mean", "prediction", "total", "aleatoric", "epistemic"):
        np.testing.assert_array_equal(getattr(got, f), getattr(one, f), err_msg=f)
    # the variance: Welford's update when streaming, two passes over the predicted class in one shot
    np.testing.assert_allclose(got.variance, one.variance, rtol=1e-12, atol=1e-17)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 30), st.integers(2, 9), st.integers(0, 2 ** 31))
def test_decompose_member_order_and_streaming_properties(S, N, K, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(S, N, K)) * rng.uniform(0.1, 5)
    a = calibkit.decompose(x, from_logits=True)
    b = calibkit.decompose(x[rng.permutation(S)], from_logits=True)
    for f in ("mean", "total", "aleatoric", "variance"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-9, atol=1e-13)
    acc = calibkit.EnsembleAccumulator(from_logits=True)
    for m in x:
        acc.update(m)
    c = acc.compute()
    for f in ("mean", "total", "aleatoric", "epistemic"):
        np.testing.assert_array_equal(getattr(a, f), getattr(c, f))
    np.testing.assert_allclose(a.variance, c.variance, rtol=1e-11, atol=1e-17)
    assert np.all(a.total <= np.log(K) + 1e-12) and np.all(a.aleatoric <= a.total + 1e-12)


def test_streaming_rejects_bad_member_without_changing_state(backend):
    rng = np.random.default_rng(12)
    p = random_probs(rng, 20, 5)
    acc = calibkit.EnsembleAccumulator(backend=backend)
    acc.update(p)
    before = acc.compute()
    bad = p.copy()
    bad[13, 2] = np.nan
    with pytest.raises(ValueError, match=r"member\[13, 2\] = nan is not finite"):
        acc.update(bad)
    with pytest.raises(ValueError, match=r"member has shape \(20, 6\) but earlier passes had shape \(20, 5\)"):
        acc.update(random_probs(rng, 20, 6))
    assert acc.count == 1
    np.testing.assert_array_equal(acc.compute().mean, before.mean)
    with pytest.raises(ValueError, match="no passes yet"):
        calibkit.EnsembleAccumulator().compute()


@pytest.mark.parametrize("samples, kwargs, exc, match", [
    (np.ones((4, 5)), {}, ValueError, r"samples must have shape \(S, N, K\)"),
    (np.ones((0, 5, 3)), {}, ValueError, "samples is empty"),
    (np.ones((2, 0, 3)), {}, ValueError, "samples is empty"),
    (np.ones((2, 5, 1)), {}, ValueError, "at least 2 classes"),
    (np.full((2, 3, 4), 2.0), {}, ValueError, r"samples\[0\]\[0, 0\] = 2.0 is not a probability"),
    (np.array([[[0.5, 0.5]], [[np.nan, 0.5]]]), {}, ValueError, r"samples\[1\]\[0, 0\] = nan is not finite"),
    (np.array([[[0.0, np.inf]]]), {"from_logits": True}, ValueError, r"samples\[0\]\[0, 1\] = inf"),
    (np.ones((2, 3, 4), dtype=complex), {}, TypeError, "samples must be an array of floats"),
    (np.ones((2, 3, 4)), {"from_logits": "yes"}, TypeError, "from_logits must be True or False"),
])
def test_decompose_bad_input(backend, samples, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        calibkit.decompose(samples, backend=backend, **kwargs)


# -- confidence loss --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", (0.0, 0.5, 1.0, 3.0))
def test_confidence_loss_matches_reference(backend, beta):
    rng = np.random.default_rng(13)
    zi, zo = rng.normal(size=(64, 10)) * 3, rng.normal(size=(40, 10)) * 3
    y = rng.integers(0, 10, 64)
    r = calibkit.confidence_loss(zi, y, zo, beta=beta, backend=backend)
    value, nll, kl, gi, go = ref_confidence_loss(zi, y, zo, beta)
    assert r.value == pytest.approx(value, rel=1e-13)
    assert r.nll == pytest.approx(nll, rel=1e-13) and r.kl == pytest.approx(kl, rel=1e-12)
    np.testing.assert_allclose(r.grad_in, gi, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(r.grad_out, go, rtol=1e-12, atol=1e-16)
    assert r.grad_in.dtype == np.float64


def test_confidence_loss_gradients_match_finite_differences(backend):
    rng = np.random.default_rng(14)
    zi, zo = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    y = rng.integers(0, 5, 6)
    r = calibkit.confidence_loss(zi, y, zo, beta=0.7, backend=backend)
    h = 1e-6
    for which, z, grad in (("in", zi, r.grad_in), ("out", zo, r.grad_out)):
        for i in range(z.shape[0]):
            for k in range(z.shape[1]):
                up, down = z.copy(), z.copy()
                up[i, k] += h
                down[i, k] -= h
                args_up = (up, y, zo) if which == "in" else (zi, y, up)
                args_down = (down, y, zo) if which == "in" else (zi, y, down)
                fd = (calibkit.confidence_loss(*args_up, beta=0.7).value
                      - calibkit.confidence_loss(*args_down, beta=0.7).value) / (2 * h)
                assert grad[i, k] == pytest.approx(fd, abs=1e-8), (which, i, k)


def test_confidence_loss_large_logits_and_dtypes(backend):
    zi = np.array([[1e4, 0.0, -1e4], [0.0, 2e4, 0.0]], dtype=np.float32)
    zo = np.array([[3e4, -3e4, 0.0]], dtype=np.float32)
    r = calibkit.confidence_loss(zi, [0, 0], zo, backend=backend)
    assert np.isfinite(r.value) and np.all(np.isfinite(r.grad_in)) and np.all(np.isfinite(r.grad_out))
    assert r.nll == pytest.approx(2e4 / 2)
    assert r.kl == pytest.approx(3e4 - np.log(3) - 0.0 + (0.0 - 0.0) / 3 + 0, rel=1e-6)
    assert r.grad_in.dtype == np.float32 and r.grad_out.dtype == np.float32
    r16 = calibkit.confidence_loss(zi.astype(np.float16) / np.float16(1e3), [0, 0], zo.astype(np.float16) / 1e3,
                                   backend=backend)
    assert r16.grad_in.dtype == np.float32


def test_confidence_loss_backends_agree():
    rng = np.random.default_rng(15)
    zi, zo = rng.normal(size=(3000, 50)).astype(np.float32), rng.normal(size=(2000, 50)).astype(np.float32)
    y = rng.integers(0, 50, 3000)
    a = calibkit.confidence_loss(zi, y, zo, backend="cpp")
    b = calibkit.confidence_loss(zi, y, zo, backend="numba")
    assert a.value == pytest.approx(b.value, rel=1e-12)
    np.testing.assert_allclose(a.grad_in, b.grad_in, rtol=1e-6, atol=1e-12)  # float32 gradients


@pytest.mark.parametrize("zi, y, zo, kwargs, exc, match", [
    (np.zeros((3, 4)), [0, 1, 4], np.zeros((2, 4)), {}, ValueError, r"labels\[2\] = 4 is out of range"),
    (np.zeros((3, 4)), [0, 1], np.zeros((2, 4)), {}, ValueError, "labels has 2 entries"),
    (np.zeros((3, 4)), [0, 1, 2], np.zeros((2, 5)), {}, ValueError, "logits_out has K=5"),
    (np.zeros((3, 4)), [0, 1, 2], np.zeros((0, 4)), {}, ValueError, "logits_out is empty"),
    (np.zeros((0, 4)), [], np.zeros((2, 4)), {}, ValueError, "logits_in is empty"),
    (np.array([[0.0, np.nan]]), [0], np.zeros((2, 2)), {}, ValueError, r"logits_in\[0, 1\] = nan"),
    (np.zeros((1, 2)), [0], np.array([[np.inf, 0.0]]), {}, ValueError, r"logits_out\[0, 0\] = inf"),
    (np.zeros((1, 2)), [0], np.zeros((1, 2)), {"beta": -1.0}, ValueError, "beta must be a finite number >= 0"),
    (np.zeros((1, 2)), [0], np.zeros((1, 2)), {"beta": np.nan}, ValueError, "beta"),
    (np.zeros((1, 2)), [0.5], np.zeros((1, 2)), {}, TypeError, "labels must be integers"),
])
def test_confidence_loss_bad_input(backend, zi, y, zo, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        calibkit.confidence_loss(zi, y, zo, backend=backend, **kwargs)


# -- bad input of the scores ------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, exc, match", [
    (lambda b: calibkit.entropy(np.array([[0.5, np.nan]]), backend=b), ValueError, r"scores\[0, 1\] = nan"),
    (lambda b: calibkit.entropy(np.array([[0.5, 0.5], [0.2, 1.5]]), backend=b), ValueError,
     r"scores\[1, 1\] = 1.5 is not a probability"),
    (lambda b: calibkit.max_probability(np.array([[0.5, -0.5]]), backend=b), ValueError, "not a probability"),
    (lambda b: calibkit.energy(np.array([[0.0, np.inf]]), backend=b), ValueError, r"scores\[0, 1\] = inf"),
    (lambda b: calibkit.energy(np.array([[0.2, 0.8]]), temperature=0.0, backend=b), ValueError, "temperature"),
    (lambda b: calibkit.energy(np.array([[0.2, 0.8]]), temperature=True, backend=b), TypeError, "temperature"),
    (lambda b: calibkit.entropy(np.array([[0.2, 0.8]]), temperature=2.0, backend=b), ValueError,
     "temperature applies to logits"),
    (lambda b: unc.uncertainty_scores(np.array([[0.2, 0.8]]), ("energy",), backend=b), ValueError,
     "energy is defined on logits"),
    (lambda b: unc.uncertainty_scores(np.array([[0.2, 0.8]]), ("entropyy",), backend=b), ValueError,
     "unknown score 'entropyy'"),
    (lambda b: unc.uncertainty_scores(np.array([[0.2, 0.8]]), (), backend=b), ValueError, "at least one"),
    (lambda b: calibkit.entropy(np.array([0.2, 0.8]), backend=b), ValueError, r"shape \(N, K\)"),
    (lambda b: calibkit.entropy(np.zeros((0, 3)), backend=b), ValueError, "scores is empty"),
    (lambda b: calibkit.entropy(np.ones((3, 1)), backend=b), ValueError, "at least 2 columns"),
    (lambda b: calibkit.entropy(np.array([["a", "b"]]), backend=b), TypeError, "array of floats"),
    (lambda b: calibkit.entropy(np.array([[0.2, 0.8]]), normalize=1, backend=b), TypeError, "normalize"),
    (lambda b: calibkit.entropy(np.array([[0.2, 0.8]]), backend="fortran"), ValueError, "backend must be one of"),
])
def test_scores_bad_input(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call(backend)


def test_avx2_and_portable_clones_are_bit_identical():
    """The uncertainty kernels give the same bits with and without their AVX2 clones (float and double paths)."""

    code = (
        "import numpy as np, calibkit\n"
        "rng = np.random.default_rng(0)\n"
        "out = []\n"
        "for k in (3, 8, 13, 100, 130):\n"
        "    for dt in (np.float16, np.float32, np.float64):\n"
        "        z = (rng.normal(scale=4, size=(3000, k))).astype(dt)\n"
        "        y = rng.integers(0, k, 3000)\n"
        "        p = np.exp(z - z.max(1, keepdims=True)); p = (p / p.sum(1, keepdims=True)).astype(dt)\n"
        "        s = calibkit.uncertainty.uncertainty_scores(z, ('max_probability', 'margin', 'entropy', 'energy',\n"
        "            'logit_norm', 'kl_to_uniform'), from_logits=True)\n"
        "        out += [v.tobytes().hex() for v in s.values()]\n"
        "        out += [calibkit.entropy(p).tobytes().hex(), calibkit.kl_to_uniform(p).tobytes().hex()]\n"
        "        d = calibkit.decompose(np.stack([z[:1000], z[1000:2000], z[2000:]]), from_logits=True)\n"
        "        out += [d.mean.tobytes().hex(), d.total.tobytes().hex(), d.variance.tobytes().hex()]\n"
        "        c = calibkit.confidence_loss(z[:2000], y[:2000], z[2000:])\n"
        "        out += [float(c.value).hex(), c.grad_in.tobytes().hex(), c.grad_out.tobytes().hex()]\n"
        "import hashlib\n"
        "print(hashlib.sha256(''.join(out).encode()).hexdigest())\n"
    )
    runs = simd_clone_outputs(code)
    assert runs[0] == runs[1]
