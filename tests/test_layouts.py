"""dtype x layout grid, array-likes, memory maps; inputs are never modified or copied needlessly."""

import tracemalloc

import numpy as np
import pytest

import calibkit
from calibkit._numba._common import CHUNK_ELEMENTS, MAX_GROUP

import reference as ref
from conftest import labels_from, random_probs

N, K = 600, 7


def layouts(base, tmp_path):
    """The same values in every memory layout the kernels must read in place."""
    yield "C", np.ascontiguousarray(base)
    yield "F", np.asfortranarray(base)
    wide = np.zeros((base.shape[0] * 2, base.shape[1] * 3), dtype=base.dtype)
    wide[::2, 1::3] = base
    yield "strided", wide[::2, 1::3]
    yield "reversed", np.ascontiguousarray(base[::-1])[::-1]
    ro = np.array(base)
    ro.flags.writeable = False
    yield "readonly", ro
    path = tmp_path / f"scores_{base.dtype}.npy"
    np.save(path, base)
    yield "memmap", np.load(path, mmap_mode="r")
    yield "transposed-view", np.ascontiguousarray(base.T).T


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [False, True])
def test_dtype_layout_grid(backend, dtype, from_logits, tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.normal(size=(N, K)) * 2 if from_logits else random_probs(rng, N, K)).astype(dtype)
    y = labels_from(rng, np.asarray(base, dtype=np.float64))
    exact = base.astype(np.float64)
    want = {
        "ece": ref.calibration_error(exact, y, 15, from_logits=from_logits),
        "ace": ref.calibration_error(exact, y, 15, "quantile", from_logits=from_logits),
        "cw": ref.classwise_calibration_error(exact, y, 15, from_logits=from_logits),
        "brier": ref.brier_score(exact, y, from_logits),
        "nll": ref.nll(base, y, from_logits),
    }
    for name, scores in layouts(base, tmp_path):
        before = np.array(scores, copy=True)
        kw = dict(from_logits=from_logits, backend=backend)
        got = {
            "ece": calibkit.ece(scores, y, **kw),
            "ace": calibkit.ece(scores, y, strategy="quantile", **kw),
            "cw": calibkit.classwise_calibration_error(scores, y, **kw),
            "brier": calibkit.brier_score(scores, y, **kw),
            "nll": calibkit.nll(scores, y, **kw),
        }
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-10, abs=1e-14), (name, key)
        np.testing.assert_array_equal(np.asarray(scores), before)  # not modified


@pytest.mark.parametrize("label_dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64])
def test_any_integer_label_dtype(backend, label_dtype):
    rng = np.random.default_rng(1)
    probs = random_probs(rng, 300, 4)
    y = labels_from(rng, probs)
    want = calibkit.ece(probs, y, backend=backend)
    labels = y.astype(label_dtype)
    assert calibkit.ece(probs, labels, backend=backend) == want
    assert calibkit.ece(probs, labels[::-1][::-1], backend=backend) == want
    assert calibkit.ece(probs, labels.reshape(-1, 1), backend=backend) == want


def test_big_endian_and_unaligned_inputs(backend):
    rng = np.random.default_rng(2)
    probs = random_probs(rng, 200, 3)
    y = labels_from(rng, probs)
    want = calibkit.ece(probs, y, backend=backend)
    assert calibkit.ece(probs.astype(">f8"), y.astype(">i8"), backend=backend) == want
    raw = np.zeros(probs.nbytes + 1, dtype=np.uint8)
    unaligned = raw[1:].view(np.float64).reshape(probs.shape)
    unaligned[...] = probs
    assert calibkit.ece(unaligned, y, backend=backend) == want


def test_array_likes(backend):
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]
    y = [0, 0, 0]
    want = calibkit.ece(np.array(probs), np.array(y), backend=backend)
    assert calibkit.ece(probs, y, backend=backend) == want
    assert calibkit.ece(tuple(map(tuple, probs)), tuple(y), backend=backend) == want

    class HasArray:
        def __init__(self, a):
            self.a = np.asarray(a)

        def __array__(self, dtype=None, copy=None):
            return self.a

    assert calibkit.ece(HasArray(probs), HasArray(y), backend=backend) == want
    # Integer scores (0/1 probabilities) are accepted as floats.
    assert calibkit.ece(np.array([[1, 0], [0, 1]]), [0, 0], backend=backend) == 0.5


def test_torch_tensors_are_read_without_copy(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    probs = random_probs(rng, 500, 5, dtype=np.float32)
    y = labels_from(rng, probs)
    want = calibkit.ece(probs, y, backend=backend)
    assert calibkit.ece(torch.from_numpy(probs), torch.from_numpy(y), backend=backend) == want
    t = torch.from_numpy(probs).requires_grad_(True)
    assert calibkit.ece(t, torch.from_numpy(y), backend=backend) == want
    # A non-contiguous tensor view (every other column pair) is read through its strides.
    wide = torch.zeros(500, 10)
    wide[:, ::2] = torch.from_numpy(probs)
    assert calibkit.ece(wide[:, ::2], y, backend=backend) == want


def test_validation_does_not_copy_readable_arrays():
    from calibkit._validation import check_labels, check_sample_weight, check_scores

    for a in (np.ones((5, 3), np.float16), np.ones((5, 3), np.float32).T.T, np.asfortranarray(np.ones((5, 3))),
              np.ones((10, 6))[::2, ::2]):
        assert check_scores(a) is a
    y = np.zeros(5, np.int64)
    assert check_labels(y, 5) is y
    w = np.ones(5)
    assert check_sample_weight(w, 5) is w


def _peak(fn, *args, **kwargs):
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("from_logits", [False, True])
def test_no_n_by_k_temporary(backend, from_logits):
    """Extra memory is independent of N (uniform bins) or O(N) (quantile), never O(N x K). Independent of N
    once a call has more chunks than one group holds (MAX_GROUP, kMaxGroup: the partials alive at once; a call
    of fewer chunks has fewer), as both calls here have."""
    rng = np.random.default_rng(4)
    k = 50
    n = 2 * (MAX_GROUP + 16) * (CHUNK_ELEMENTS // k)  # 356,320 rows: the half has 272 chunks of 655 rows
    scores = (rng.normal(size=(n, k)) if from_logits else random_probs(rng, n, k)).astype(np.float32)
    y = rng.integers(0, k, n)
    half = n // 2
    kw = dict(from_logits=from_logits, backend=backend)
    for fn, extra in [(calibkit.ece, {}), (calibkit.nll, {}), (calibkit.classwise_calibration_error, {}),
                      (calibkit.ece, {"strategy": "quantile"})]:
        fn(scores, y, **kw, **extra)  # warm up (JIT, imports)
        small = _peak(fn, scores[:half], y[:half], **kw, **extra)
        full = _peak(fn, scores, y, **kw, **extra)
        assert full < scores.nbytes / 4, (fn.__name__, extra, full)
        if extra:  # N confidences (float64) and N correctness flags, plus NumPy's quantile
            assert full < 4 * n * 8, (fn.__name__, extra, full)
        else:  # independent of N
            assert full <= 1.05 * small + 16 * 1024, (fn.__name__, small, full)
