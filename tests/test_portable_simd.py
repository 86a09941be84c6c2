"""The portable lane path of the C++ kernels gives the vector path's results bit for bit.

``cpp/include/calibkit/simd.hpp`` has two implementations of the kernels' lanes: GCC/Clang vector
extensions (the default with those compilers; SSE2, plus AVX2 clones chosen at run time) and a
plain C++17 class, ``Lanes<T, N>``, that any C++17 compiler builds (and that the CMake option
``CALIBKIT_PORTABLE_SIMD=ON`` forces). This test builds a wheel of the checkout with the option
forced (one build, a few minutes), installs it into a fresh virtual environment the way
``tests/test_packaging.py`` does, and runs one script computing a fixed set of kernel results there
and in this interpreter (vector path, with the AVX2 clones and with ``CALIBKIT_NO_AVX2=1``): every
result must be the same bytes. It skips only without git, a git checkout or a C++ compiler.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import calibkit._core
from _wheel import build_wheel, clean_env, venv_with

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Computes the kernel results (C++ backend) and saves them to the .npz named by argv[1], with
# the lane path of the build under "simd_path".
SCRIPT = r'''
import sys
import numpy as np
import calibkit
import calibkit._core
from calibkit import datasets

out = {}

def put(name, value):
    if value is None or isinstance(value, str):
        return
    if isinstance(value, dict):
        for k in sorted(value):
            put(f"{name}.{k}", value[k])
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for k in value._fields:
            put(f"{name}.{k}", getattr(value, k))
    elif isinstance(value, (tuple, list)):
        for j, v in enumerate(value):
            put(f"{name}[{j}]", v)
    elif hasattr(value, "__dataclass_fields__"):
        for k in value.__dataclass_fields__:
            v = getattr(value, k)
            if isinstance(v, (int, float, np.ndarray, np.generic, tuple, list, dict)) and not isinstance(v, bool):
                put(f"{name}.{k}", v)
    else:
        a = np.asarray(value)
        assert a.dtype.kind in "fiub", (name, a.dtype)
        out[name] = a

def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)

rng = np.random.default_rng(20260514)
ex = datasets.load_example()
cases = {"example": (ex.test_logits[:4000], ex.test_labels[:4000])}  # real logits, K = 10
for K in (3, 7, 15, 16, 37, 200):                                       # short (K < 16) and long rows
    n = 3000 if K < 100 else 600
    z = rng.normal(0.0, 3.0, (n, K))
    y = np.where(rng.random(n) < 0.7, z.argmax(axis=1), rng.integers(0, K, n))
    cases[f"K{K}"] = (z, y)

for name, (z, y) in cases.items():
    n, K = z.shape
    w = rng.random(n) + 0.1
    for dt in (np.float64, np.float32):
        lg = np.ascontiguousarray(z, dtype=dt)
        pr = softmax(z.astype(np.float64)).astype(dt)
        for kind, s, fl in (("logits", lg, True), ("probs", pr, False)):
            key = f"{name}.{np.dtype(dt).name}.{kind}"
            for norm in ("l1", "l2", "max"):
                put(f"{key}.ece_{norm}", calibkit.calibration_error(s, y, norm=norm, from_logits=fl, backend="cpp"))
            put(f"{key}.ece_w", calibkit.calibration_error(s, y, from_logits=fl, sample_weight=w, backend="cpp"))
            put(f"{key}.ece_quantile", calibkit.calibration_error(s, y, strategy="quantile", from_logits=fl,
                                                                 backend="cpp"))
            put(f"{key}.cw_ece", calibkit.classwise_calibration_error(s, y, from_logits=fl, backend="cpp"))
            put(f"{key}.cw_ece_w", calibkit.classwise_calibration_error(s, y, from_logits=fl, sample_weight=w,
                                                                       backend="cpp"))
            t = calibkit.reliability_table(s, y, n_bins=10, from_logits=fl, sample_weight=w, backend="cpp")
            put(f"{key}.table", {k: getattr(t, k) for k in ("count", "weight", "mean_confidence", "accuracy")})
            put(f"{key}.brier", calibkit.brier_score(s, y, from_logits=fl, backend="cpp"))
            put(f"{key}.nll", calibkit.nll(s, y, from_logits=fl, sample_weight=w, backend="cpp"))
            put(f"{key}.scores", calibkit.uncertainty_scores(
                s, ("max_probability", "margin", "entropy"), from_logits=fl, backend="cpp"))
            put(f"{key}.kl", calibkit.kl_to_uniform(s, from_logits=fl, backend="cpp"))
            if fl:
                put(f"{key}.scores_t", calibkit.uncertainty_scores(s, ("max_probability", "entropy"),
                                                                  from_logits=True, temperature=1.7, backend="cpp"))
                put(f"{key}.energy", calibkit.energy(s, backend="cpp"))
                put(f"{key}.logit_norm", calibkit.logit_norm(s, backend="cpp"))
                for b in (0.5, 1.0, 2.25):
                    put(f"{key}.temperature_nll_{b}", calibkit.temperature_nll(s, y, b, sample_weight=w,
                                                                               backend="cpp"))
            # strided: every other row, the class axis read with its stride
            st = np.asfortranarray(s[::2])
            put(f"{key}.strided.ece", calibkit.calibration_error(st, y[::2], from_logits=fl, backend="cpp"))
            put(f"{key}.strided.cw_ece", calibkit.classwise_calibration_error(st, y[::2], from_logits=fl,
                                                                              backend="cpp"))
        put(f"{key}.float16", calibkit.calibration_error(lg.astype(np.float16), y, from_logits=True, backend="cpp"))
    # the calibrators' softmax transforms (fit and predict through the kernels)
    lg = np.ascontiguousarray(z, dtype=np.float32)
    ts = calibkit.TemperatureScaling(backend="cpp").fit(lg, y)
    put(f"{name}.temperature", ts.temperature_)
    put(f"{name}.temperature_proba", ts.predict_proba(lg))
    if K <= 40:
        vs = calibkit.VectorScaling(backend="cpp").fit(lg, y)
        put(f"{name}.vector_proba", vs.predict_proba(lg))
    # ensembles: five members as logits
    members = np.stack([z + rng.normal(0.0, 0.5, z.shape) for _ in range(5)])[:, :500]
    put(f"{name}.decompose", calibkit.decompose(members, from_logits=True, backend="cpp"))
    put(f"{name}.confidence_loss", calibkit.confidence_loss(z[:500], y[:500], z[500:1000] * 0.3, backend="cpp"))
    # ranking: AUROC's exact 128-bit sum (unsigned __int128, or two 64-bit words in the portable build)
    s_in, s_out = z.max(axis=1)[: len(z) // 2], z.max(axis=1)[len(z) // 2:] * 0.9
    m = calibkit.ood_metrics(s_in, s_out, backend="cpp")
    put(f"{name}.ood", np.array([m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_tpr]))

# binary: positive-class probabilities and logits
n = 5000
p1 = rng.beta(2.0, 3.0, n)
yb = (rng.random(n) < p1).astype(np.int64)
wb = rng.random(n) + 0.1
for dt in (np.float64, np.float32):
    p = p1.astype(dt)
    put(f"binary.{np.dtype(dt).name}.ece", calibkit.calibration_error(p, yb, backend="cpp"))
    put(f"binary.{np.dtype(dt).name}.ece_w", calibkit.calibration_error(p, yb, sample_weight=wb, backend="cpp"))
    put(f"binary.{np.dtype(dt).name}.brier", calibkit.brier_score(p, yb, backend="cpp"))
    put(f"binary.{np.dtype(dt).name}.nll", calibkit.nll(p, yb, backend="cpp"))
    lo = np.log(p1 / (1 - p1)).astype(dt)
    put(f"binary.{np.dtype(dt).name}.logit_ece", calibkit.calibration_error(lo, yb, from_logits=True, backend="cpp"))
# streaming: the accumulator's bins from chunks
acc = calibkit.CalibrationAccumulator(n_bins=15, from_logits=True, backend="cpp")
z, y = cases["K37"]
for a in range(0, len(y), 700):
    acc.update(z[a:a + 700].astype(np.float32), y[a:a + 700])
put("stream", acc.compute().to_dict())

out["simd_path"] = np.array(calibkit._core.simd_path())
np.savez(sys.argv[1], **out)
print(len(out), calibkit._core.simd_path(), calibkit.__file__)
'''


def _compiler():
    names = [os.environ.get("CXX", "")] + ["c++", "g++", "clang++", "cl"]
    return next((n for n in names if n and shutil.which(n.split()[0])), None)


def _checkout_copy(dest):
    """The checkout's files as git sees them (tracked and untracked-not-ignored, as in the working tree)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          capture_output=True, check=True, timeout=120)
    for rel in filter(None, proc.stdout.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is left out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def portable_python(tmp_path_factory):
    """A Python whose calibkit is a wheel built with CALIBKIT_PORTABLE_SIMD=ON."""
    if _compiler() is None:
        pytest.skip("no C++ compiler")
    tmp = tmp_path_factory.mktemp("portable")
    src = _checkout_copy(tmp / "calibkit-src")
    wheel = build_wheel(src, tmp / "dist", "cmake.define.CALIBKIT_PORTABLE_SIMD=ON")
    py = venv_with(wheel, tmp / "venv")
    return py


def _results(python, where, **env):
    out = where / f"results-{len(list(where.iterdir()))}.npz"
    proc = subprocess.run([str(python), "-c", SCRIPT, str(out)], cwd=where, capture_output=True, text=True,
                          timeout=900, env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}, proc.stdout


def test_this_build_uses_vector_extensions():
    # the default build with GCC or Clang (this machine) takes the vector path
    assert calibkit._core.simd_path() == "gnu-vector"


def test_portable_path_is_bit_identical(portable_python, tmp_path):
    portable, stdout = _results(portable_python, tmp_path)
    assert str(portable_python.parents[1]) in stdout, stdout  # calibkit came from the wheel
    assert str(portable["simd_path"]) == "portable"
    for label, env in (("vector (AVX2 clones where the CPU has them)", {}), ("vector, SSE2", {"CALIBKIT_NO_AVX2": "1"})):
        vector, _ = _results(sys.executable, tmp_path, **env)
        assert str(vector["simd_path"]) == "gnu-vector"
        assert sorted(vector) == sorted(portable)
        assert len(vector) > 500
        differ = [k for k in sorted(vector) if k != "simd_path" and (
            vector[k].dtype != portable[k].dtype or vector[k].shape != portable[k].shape
            or vector[k].tobytes() != portable[k].tobytes())]
        assert not differ, (label, len(differ), [
            (k, vector[k].ravel()[:3].tolist(), portable[k].ravel()[:3].tolist()) for k in differ[:5]])
