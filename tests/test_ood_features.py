"""Feature-space OOD scores: Mahalanobis, ViM, GEN, max-logit (NumPy references and pytorch-ood)."""

import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit import ood_features
from conftest import load_real
from test_ood_selective import import_peer


def blobs(rng, n=900, d=8, k=3, dtype=np.float64):
    labels = rng.integers(0, k, n)
    labels[:k] = np.arange(k)
    centers = rng.normal(size=(k, d)) * 3
    scale = np.linspace(2.0, 0.5, d)
    return (centers[labels] + rng.normal(size=(n, d)) * scale).astype(dtype), labels


def np_mahalanobis(f, labels, x):
    k = labels.max() + 1
    mu = np.stack([f[labels == c].mean(0) for c in range(k)])
    centred = f - mu[labels]
    cov = centred.T @ centred / len(f)
    prec = np.linalg.inv(cov)
    d = np.stack([np.einsum("nd,de,ne->n", x - m, prec, x - m) for m in mu], axis=1)
    return -d.min(1), mu, cov


def np_vim(W, b, n_principal, f, x):
    u = -np.linalg.pinv(W) @ b
    c = (f - u).T @ (f - u) / len(f)
    vals, vecs = np.linalg.eigh(c)
    R = vecs[:, :W.shape[1] - n_principal]
    alpha = (f @ W.T + b).max(1).mean() / np.linalg.norm((f - u) @ R, axis=1).mean()
    logits = x @ W.T + b
    energy = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return energy - alpha * np.linalg.norm((x - u) @ R, axis=1)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_mahalanobis_numpy_reference(dtype):
    rng = np.random.default_rng(0)
    f, labels = blobs(rng, dtype=dtype)
    x = rng.normal(size=(300, 8)).astype(dtype) * 3
    want, mu, cov = np_mahalanobis(f.astype(np.float64), labels, x.astype(np.float64))
    det = calibkit.Mahalanobis().fit(f, labels)
    np.testing.assert_allclose(det.means_, mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(det.covariance_, cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(det.score(x), want, rtol=1e-9, atol=1e-9)
    # chunking (rows a few at a time), strided and Fortran-ordered input give the same numbers
    old = ood_features._CHUNK_VALUES
    try:
        ood_features._CHUNK_VALUES = 40
        small = calibkit.Mahalanobis().fit(f, labels)
        np.testing.assert_allclose(small.score(x), want, rtol=1e-9, atol=1e-9)
    finally:
        ood_features._CHUNK_VALUES = old
    np.testing.assert_allclose(det.score(np.asfortranarray(x)), want, rtol=1e-9, atol=1e-9)
    wide = np.repeat(x, 2, axis=1)[:, ::2]
    np.testing.assert_allclose(det.score(wide), want, rtol=1e-9, atol=1e-9)


def test_mahalanobis_large_offset_and_singular():
    rng = np.random.default_rng(1)
    f, labels = blobs(rng)
    x = rng.normal(size=(50, 8))
    base = calibkit.Mahalanobis().fit(f, labels).score(x)
    shifted = calibkit.Mahalanobis().fit(f + 1e6, labels).score(x + 1e6)
    np.testing.assert_allclose(shifted, base, rtol=1e-5)
    # D > N: the pseudo-inverse (no error, finite scores, training points at distance ~0 from their class)
    g = rng.normal(size=(6, 10))
    det = calibkit.Mahalanobis().fit(g, np.array([0, 0, 0, 1, 1, 1]))
    assert np.isfinite(det.score(rng.normal(size=(4, 10)))).all()


def test_vim_numpy_reference():
    rng = np.random.default_rng(2)
    W, b = rng.normal(size=(5, 12)), rng.normal(size=5)
    f = rng.normal(size=(800, 12)) * np.linspace(3, 0.2, 12)
    x = rng.normal(size=(200, 12)) * 2
    det = calibkit.ViM(W, b, n_principal=6).fit(f)
    np.testing.assert_allclose(det.score(x), np_vim(W, b, 6, f, x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(det.score(x.astype(np.float32)),
                               np_vim(W, b, 6, f, x.astype(np.float32).astype(np.float64)), rtol=1e-9, atol=1e-9)


def test_gen_and_max_logit_reference():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 10)) * 3
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for gamma, m in ((0.1, None), (0.5, 3), (0.9, 10)):
        top = np.sort(p, axis=1)[:, ::-1][:, :m or 10]
        want = np.sum(top ** gamma * (1 - top) ** gamma, 1)
        np.testing.assert_allclose(calibkit.generalized_entropy(p, gamma=gamma, m=m), want, rtol=1e-12)
        np.testing.assert_allclose(calibkit.generalized_entropy(z, from_logits=True, gamma=gamma, m=m), want,
                                   rtol=1e-10)
    np.testing.assert_array_equal(calibkit.max_logit(z), z.max(1))
    np.testing.assert_array_equal(calibkit.max_logit(z.astype(np.float16)), z.astype(np.float16).max(1))


def test_real_dumps():
    d = load_real("focal_cifar10_resnet110_brier.npz")
    out = load_real("focal_cifar100_resnet110_brier.npz")["test_logits"][:, :10]
    val, labels = d["val_logits"], d["val_labels"]
    # logits as 10-dimensional "features" (the dumps hold no penultimate features)
    det = calibkit.Mahalanobis().fit(val, labels)
    m = calibkit.ood_metrics(det.score(d["test_logits"]), det.score(out))
    assert 0.5 < m.auroc <= 1.0
    g_in = -calibkit.generalized_entropy(d["test_logits"], from_logits=True)
    g_out = -calibkit.generalized_entropy(out, from_logits=True)
    assert 0.5 < calibkit.auroc(g_in, g_out) <= 1.0
    assert 0.5 < calibkit.auroc(calibkit.max_logit(d["test_logits"]), calibkit.max_logit(out)) <= 1.0


def test_against_pytorch_ood():
    torch = pytest.importorskip("torch")
    maha = import_peer("pytorch_ood", "detector.mahalanobis")
    vim = import_peer("pytorch_ood", "detector.vim")
    gen = import_peer("pytorch_ood", "detector.gen")
    maxlogit = import_peer("pytorch_ood", "detector.maxlogit")
    rng = np.random.default_rng(4)
    f, labels = blobs(rng, n=2000, d=6, k=4)
    x = np.r_[f[:200], rng.normal(size=(200, 6)) * 4]
    # Mahalanobis: pytorch-ood's outlier score = -ours / (2 N), up to its 1e-6 ridge and float32
    peer = maha.Mahalanobis(None).fit_features(torch.tensor(f), torch.tensor(labels))
    want = peer.predict_features(torch.tensor(x, dtype=torch.float32)).double().numpy()
    got = calibkit.Mahalanobis().fit(f, labels).score(x)
    np.testing.assert_allclose(-got / (2 * len(f)), want, rtol=2e-3, atol=1e-6)
    # ViM: pytorch-ood's outlier score = -ours (float32)
    W, b = rng.normal(size=(4, 6)), rng.normal(size=4)
    peer = vim.ViM(None, d=3, w=torch.tensor(W), b=torch.tensor(b)).fit_features(torch.tensor(f, dtype=torch.float32),
                                                                                  torch.tensor(labels))
    want = peer.predict_features(torch.tensor(x, dtype=torch.float32)).double().numpy()
    got = calibkit.ViM(W, b, n_principal=3).fit(f).score(x)
    np.testing.assert_allclose(-got, want, rtol=2e-3, atol=2e-3)
    # GEN: pytorch-ood's = ours with clip=1e-7, averaged over the m classes; MaxLogit = -max_logit
    z = rng.normal(size=(300, 10)) * 4
    for gamma, m in ((0.1, None), (0.3, 4)):
        want = gen.GEN(None, gamma=gamma, M=m).predict_logits(torch.tensor(z)).numpy()
        got = calibkit.generalized_entropy(z, from_logits=True, gamma=gamma, m=m, clip=1e-7)
        np.testing.assert_allclose(got / (m or 10), want, rtol=1e-9)
    np.testing.assert_array_equal(-calibkit.max_logit(z), maxlogit.MaxLogit(None).predict_logits(torch.tensor(z)).numpy())


def test_not_fitted_and_bad_input():
    with pytest.raises(calibkit.NotFittedError, match="Mahalanobis is not fitted"):
        calibkit.Mahalanobis().score(np.zeros((2, 3)))
    with pytest.raises(calibkit.NotFittedError, match="ViM is not fitted"):
        calibkit.ViM(np.eye(3), np.zeros(3), n_principal=1).score(np.zeros((2, 3)))
    cases = [
        (lambda: calibkit.Mahalanobis().fit(np.zeros((3, 2)), [0, 2, 2]), ValueError, "class 1 has no sample"),
        (lambda: calibkit.Mahalanobis().fit(np.zeros((3, 2)), [0, -1, 1]), ValueError, r"labels\[1\] = -1 is negative"),
        (lambda: calibkit.Mahalanobis().fit(np.zeros((3, 2)), [0, 1]), ValueError, "labels has 2 entries"),
        (lambda: calibkit.Mahalanobis().fit(np.array([[0.0, np.nan], [1, 1]]), [0, 1]), ValueError,
         r"features\[0, 1\] = nan is not finite"),
        (lambda: calibkit.Mahalanobis().fit(np.zeros(3), [0, 1, 1]), ValueError, r"features must have shape \(N, D\)"),
        (lambda: calibkit.Mahalanobis().fit(np.eye(2), [0, 1]).score(np.zeros((1, 3))), ValueError,
         "features has 3 columns but the detector was fitted on features of 2"),
        (lambda: calibkit.ViM(np.eye(3), np.zeros(2), n_principal=1), ValueError, r"bias must have shape \(3,\)"),
        (lambda: calibkit.ViM(np.eye(3), np.zeros(3), n_principal=3), ValueError, r"n_principal must be in \[1, 2\]"),
        (lambda: calibkit.ViM(np.ones((2, 1)), np.zeros(2), n_principal=1), ValueError, "D >= 2"),
        (lambda: calibkit.ViM(np.where(np.eye(3) > 0, np.inf, 0.0), np.zeros(3), n_principal=1), ValueError, r"weights\[0, 0\] = inf"),
        (lambda: calibkit.ViM(np.eye(3), np.zeros(3), n_principal=1).fit(np.zeros((4, 2))), ValueError,
         "features has 2 columns"),
        (lambda: calibkit.generalized_entropy([[0.5, 0.7]]), ValueError, r"scores\[0\] sums to 1.2, not 1"),
        (lambda: calibkit.generalized_entropy([[1.5, -0.5]]), ValueError, r"scores\[0, 0\] = 1.5 is not a probability"),
        (lambda: calibkit.generalized_entropy([[0.5, 0.5]], gamma=1.0), ValueError, r"gamma must be a number in \(0, 1\)"),
        (lambda: calibkit.generalized_entropy([[0.5, 0.5]], m=3), ValueError, r"m must be in \[1, 2\]"),
        (lambda: calibkit.generalized_entropy([[0.5, 0.5]], clip=0.5), ValueError, r"clip must be None or"),
        (lambda: calibkit.generalized_entropy([0.5, 0.5]), ValueError, r"scores must have shape \(N, K\)"),
        (lambda: calibkit.max_logit([[1.0, np.inf]]), ValueError, r"logits\[0, 1\] = inf is not finite"),
        (lambda: calibkit.max_logit([["a", "b"]]), TypeError, "logits must be an array of floats"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_huge_input_in_subprocess():
    """Values near the float64 limits give finite scores or a clear error, never a crash."""
    code = (
        "import numpy as np, calibkit\n"
        "f = np.array([[1e300, 0.0], [-1e300, 1.0], [1e300, 2.0], [-1e300, 3.0]])\n"
        "try:\n"
        "    print(calibkit.Mahalanobis().fit(f, [0, 0, 1, 1]).score(f))\n"
        "except ValueError as e:\n"
        "    print('ERR', e)\n"
        "print(calibkit.generalized_entropy(np.array([[1e308, -1e308]]), from_logits=True))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    err, gen = r.stdout.splitlines()
    assert err.startswith("ERR features: the scatter matrix of the features overflows float64")
    assert gen == "[0.]"


def test_to_dict_round_trip():
    import json

    rng = np.random.default_rng(5)
    f, labels = blobs(rng)
    x = rng.normal(size=(40, 8))
    det = calibkit.Mahalanobis().fit(f, labels)
    back = calibkit.Mahalanobis.from_dict(json.loads(json.dumps(det.to_dict())))
    np.testing.assert_allclose(back.score(x), det.score(x), rtol=1e-12, atol=1e-12)
    W, b = rng.normal(size=(3, 8)), rng.normal(size=3)
    vim = calibkit.ViM(W, b, n_principal=4).fit(f)
    back = calibkit.ViM.from_dict(json.loads(json.dumps(vim.to_dict())))
    np.testing.assert_array_equal(back.score(x), vim.score(x))
    state = vim.to_dict()
    bad = [
        ({**state, "kind": "Mahalanobis"}, "not a ViM state"),
        ({**state, "alpha": float("nan")}, "alpha must be a finite number"),
        ({**state, "residual_basis": state["residual_basis"][:2]}, r"residual_basis has shape \(2, 4\)"),
        ({**state, "extra": 1}, r"unknown keys \['extra'\]"),
        ({**state, "n_principal": 8}, r"n_principal must be in \[1, 7\]"),
        ({**state, "n_principal": "4"}, "n_principal must be an integer"),
        ({k: v for k, v in state.items() if k != "origin"}, "has no 'origin'"),
    ]
    for s, match in bad:
        with pytest.raises(ValueError, match=match):
            calibkit.ViM.from_dict(s)
    m = det.to_dict()
    with pytest.raises(ValueError, match="covariance has shape"):
        calibkit.Mahalanobis.from_dict({**m, "covariance": [[1.0]]})
    with pytest.raises(ValueError, match="means is not an array of numbers"):
        calibkit.Mahalanobis.from_dict({**m, "means": [["a"]]})
    with pytest.raises(calibkit.NotFittedError):
        calibkit.Mahalanobis().to_dict()
