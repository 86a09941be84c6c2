import os
import pathlib

import numpy as np
import pytest

import calibkit

BACKENDS = ("cpp", "numba")


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def data_dir() -> pathlib.Path:
    """The shared real-model outputs (../shared/data next to the checkout), or $CALIBKIT_DATA."""
    env = os.environ.get("CALIBKIT_DATA")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def load_real(name):
    path = data_dir() / name
    if not path.exists():
        pytest.skip(f"real-data file {path} not available")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def threads():
    """Restore the thread count after a test that changes it."""
    before = calibkit.get_num_threads()
    yield
    calibkit.set_num_threads(before)


def random_probs(rng, n, k, concentration=0.3, dtype=np.float64):
    p = rng.dirichlet(np.full(k, concentration), size=n)
    return p.astype(dtype)


def labels_from(rng, probs, flip=0.3):
    """Labels that mostly follow the argmax: a miscalibrated but informative classifier."""
    n, k = probs.shape
    y = np.asarray(probs, dtype=np.float64).argmax(axis=1)
    swap = rng.random(n) < flip
    y[swap] = rng.integers(0, k, swap.sum())
    return y


def overconfident_logits(n, k, seed):
    """float32 logits 3 * normal + 4 on the label (over-confident, as the temperature-fit benchmark's), and the
    labels."""
    rng = np.random.default_rng(seed)
    z = (3.0 * rng.standard_normal((n, k))).astype(np.float32)
    y = rng.integers(0, k, n)
    z[np.arange(n), y] += 4.0
    return z, y


STAT_KEYS = ("count", "weight", "sum_score", "sum_target")


def assert_same_stats(a, b):
    """Two ``(result, confidences, correct)`` of the ``top_label_stats`` kernel are the same bits: the bins, the
    totals, the status and the per-row outputs (None when not asked for)."""
    (ra, ca, ka), (rb, cb, kb) = a, b
    for key in STAT_KEYS:
        assert np.asarray(ra[key]).tobytes() == np.asarray(rb[key]).tobytes(), key
    for key, va in ra["totals"].items():
        assert np.float64(va).tobytes() == np.float64(rb["totals"][key]).tobytes(), (key, va, rb["totals"][key])
    assert repr(ra["status"]) == repr(rb["status"])
    assert (ca is None) == (cb is None)
    if ca is not None:
        assert ca.tobytes() == cb.tobytes() and ka.tobytes() == kb.tobytes()


def step_applier(calibrator):
    """``apply(p, out, check, softmax=False)``: ``step_apply_tables`` of a fitted one-vs-rest calibrator (isotonic,
    histogram) with its ``StepTables`` built once, as the report applies it block after block."""
    from calibkit.calibrators.nonparametric import _kernels

    apply_tables, tables = _kernels(calibrator.backend).step_apply_tables, calibrator._step_tables()
    return lambda p, out, check, softmax=False: apply_tables(p, tables, check, True, out, softmax)
