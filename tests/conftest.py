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
