"""The small-batch streaming update (issue 13, round 3): CalibrationAccumulator.update of batches of at most one
chunk (stream_top_label_small in C++, its Numba twin). Reference: a plain NumPy update (the confidence, the
equal-width bin, the fine bucket and the per-bin / per-bucket sums added row by row with np.add.at, which adds
in row order: the kernels' order, so the same bits). Both backends; 1 vs 2 threads; one call vs many; batches
around the pass's prefetch distance (16 rows), more bins than the interleaved copy holds (256), bootstrap, and
confidences at a probability's tolerance above 1 (the last fine bucket, as FineGrid::bin). Behaviour only,
never times."""

import numpy as np
import pytest

import calibkit
from conftest import labels_from, random_probs

BITS, LEVELS = 7, 36


def _fine_bucket(c, bits=BITS, levels=LEVELS):
    """FineGrid::bin in NumPy: buckets of d = min(c, 1 - c) read from the bits of d; c <= 0 is the first
    bucket and c >= 1 the last."""
    c = np.asarray(c, np.float64)
    side = levels << bits
    upper = c > 0.5
    d = np.where(upper, 1.0 - c, c)
    u = np.maximum(d, 0.0).view(np.uint64)
    exponent = ((u >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    level = -exponent - 2
    mantissa = ((u >> np.uint64(52 - bits)) & np.uint64((1 << bits) - 1)).astype(np.int64)
    rank = np.where(level < 0, side - 1, np.where(level >= levels, 0, ((levels - 1 - level) << bits) + mantissa))
    rank = np.where(d > 0, rank, 0)
    return np.where(upper, 2 * side - 1 - rank, rank)


def _reference(batches, n_bins, weights=None):
    """bins [4, M], fine [5, R] and squares [2, M] of the rows of every batch, in order."""
    M, R = n_bins, 2 * (LEVELS << BITS)
    bins, fine, squares = np.zeros((4, M)), np.zeros((5, R)), np.zeros((2, M))
    inner = np.arange(1, M, dtype=np.float64) / np.float64(M)
    for i, (p, y) in enumerate(batches):
        p64 = np.asarray(p, np.float64)
        c = p64.max(axis=1)
        t = (p64.argmax(axis=1) == y).astype(np.float64)
        w = np.ones(len(y)) if weights is None else weights[i]
        b = (inner[None, :] < c[:, None]).sum(axis=1)
        f = _fine_bucket(c)
        for q, v in enumerate((np.ones(len(y)), w, w * c, w * t)):
            np.add.at(bins[q], b, v)
        for q, v in enumerate((np.ones(len(y)), w, w * c, w * t, w * np.abs(t - c))):
            np.add.at(fine[q], f, v)
        np.add.at(squares[0], b, w * w)
        np.add.at(squares[1], b, (w * w) * (c * (1.0 - c)))
    return bins, fine, squares


def _batches(seed, sizes, K, dtype):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        p = random_probs(rng, n, K, dtype=dtype)
        out.append((p, labels_from(rng, p)))
    return out


@pytest.mark.parametrize("sizes", [[1], [15], [16], [17], [40, 3, 16, 1], [1024]])
@pytest.mark.parametrize("n_bins", [1, 15, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_batches_equal_numpy_reference(backend, sizes, n_bins, dtype):
    batches = _batches(len(sizes) + n_bins, sizes, 10, dtype)
    acc = calibkit.CalibrationAccumulator(n_bins, backend=backend)
    for p, y in batches:
        acc.update(p, y)
    bins, fine, squares = _reference(batches, n_bins)
    np.testing.assert_array_equal(acc._bins, bins)
    np.testing.assert_array_equal(acc._fine, fine)
    np.testing.assert_array_equal(acc._squares, squares)
    assert acc.count == sum(sizes)


@pytest.mark.parametrize("n_bins", [15, 300])
def test_weighted_small_batches_equal_numpy_reference(backend, n_bins):
    rng = np.random.default_rng(3)
    batches = _batches(4, [33, 16, 200], 7, np.float32)
    weights = [rng.random(len(y)) * 4 for _, y in batches]
    weights[1][::3] = 0.0
    acc = calibkit.CalibrationAccumulator(n_bins, backend=backend)
    for (p, y), w in zip(batches, weights):
        acc.update(p, y, w)
    bins, fine, squares = _reference(batches, n_bins, weights)
    np.testing.assert_array_equal(acc._bins, bins)
    np.testing.assert_array_equal(acc._fine, fine)
    np.testing.assert_array_equal(acc._squares, squares)


def test_confidence_above_one_within_tolerance_is_the_last_fine_bucket(backend):
    # Probabilities may exceed 1 by up to 1e-6; such a confidence belongs to the last fine bucket (c >= 1), as
    # a confidence of exactly 1 (the C++ small path put it in the first bucket above 1/2 before round 3).
    p = np.array([[1.0 + 5e-7, 0.0], [0.3, 0.7], [1e-7, 1.0 + 1e-6], [1.0, 0.0], [0.5, 0.5]])
    y = np.array([0, 1, 1, 0, 1])
    acc = calibkit.CalibrationAccumulator(15, backend=backend).update(p, y)
    bins, fine, squares = _reference([(p, y)], 15)
    np.testing.assert_array_equal(acc._fine, fine)
    np.testing.assert_array_equal(acc._bins, bins)
    last = acc._fine.shape[1] - 1
    assert acc._fine[0, last] == 3
    for dtype in (np.float32, np.float16):  # the same rows in float32 / float16 (1 + 5e-7 rounds to 1 there)
        other = calibkit.CalibrationAccumulator(15, backend=backend).update(p.astype(dtype), y)
        assert other._fine[0, last] == 3


def test_backends_agree_bit_for_bit_on_small_batches():
    batches = _batches(8, [1, 16, 17, 255, 1024], 10, np.float32)
    states = []
    for backend in ("cpp", "numba"):
        acc = calibkit.CalibrationAccumulator(15, bootstrap=5, seed=3, backend=backend)
        for p, y in batches:
            acc.update(p, y)
        states.append(acc)
    a, b = states
    for name in ("_bins", "_fine", "_squares", "_boot"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_allclose(a._totals, b._totals, rtol=1e-12)


def test_one_call_equals_many_and_threads_do_not_matter(backend, threads):
    """Batches within one chunk add their rows straight into the state in row order: one call of 2048 rows and
    calls of 1024, 1000 + 24 or 16-row pieces give the same bins, fine sums, squares and bootstrap sums, at 1
    or 2 threads (the totals are summed per call: equal to rounding)."""
    (p, y), = _batches(9, [2048], 10, np.float32)
    results = []
    for n_threads in (1, 2):
        calibkit.set_num_threads(n_threads)
        for cuts in ([0, 2048], [0, 1024, 2048], [0, 1000, 1024, 2048], list(range(0, 2049, 16))):
            acc = calibkit.CalibrationAccumulator(15, bootstrap=3, backend=backend)
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                acc.update(p[lo:hi], y[lo:hi])
            results.append(acc)
    first = results[0]
    for acc in results[1:]:
        for name in ("_bins", "_fine", "_squares", "_boot"):
            np.testing.assert_array_equal(getattr(acc, name), getattr(first, name))
        np.testing.assert_allclose(acc._totals, first._totals, rtol=1e-13)
        assert acc.compute().ece == pytest.approx(first.compute().ece, rel=1e-12)


def test_bad_row_adds_nothing_and_state_stays_usable(backend):
    batches = _batches(10, [64], 10, np.float32)
    p, y = batches[0]
    acc = calibkit.CalibrationAccumulator(15, backend=backend).update(p, y)
    before = acc.to_bytes()
    bad = p.copy()
    bad[40, 3] = np.nan
    with pytest.raises(ValueError, match=r"scores\[40, 3\]"):
        acc.update(bad, y)
    y_bad = y.copy()
    y_bad[63] = 10
    with pytest.raises(ValueError, match="labels"):
        acc.update(p, y_bad)
    assert acc.to_bytes() == before
    acc.update(p, y)
    bins, fine, squares = _reference([(p, y), (p, y)], 15)
    np.testing.assert_array_equal(acc._fine, fine)
    np.testing.assert_array_equal(acc._bins, bins)


@pytest.mark.parametrize("seed", range(4))
def test_numba_checked_rows_equal_the_checking_pass(seed):
    """Numba stream_rows_checked (the small-batch path's stream pass) adds what _chunk adds, bit for bit: weighted or
    not, with or without squares and bootstrap, 1 to 300 bins, confidences at 0, -0, 1/2, the bin edges and a
    probability's tolerance above 1."""
    from calibkit._numba import stream as ns

    rng = np.random.default_rng(seed)
    special = np.array([0.0, -0.0, 1.0, 0.5, 0.25, 5e-324, 1 - 2**-53, 1 + 1e-6, 1 + 5e-7, 1 / 3, 2 / 3, 1 / 15,
                        14 / 15, 2**-40, 1 - 2**-40])
    for trial in range(40):
        n = int(rng.integers(1, 300))
        conf = np.concatenate([rng.random(n), rng.choice(special, 20), 1 - 10.0 ** -rng.uniform(0, 14, 20)])
        conf = conf[rng.permutation(conf.shape[0])]
        target = rng.integers(0, 2, conf.shape[0]).astype(np.uint8)
        has_w = bool(trial % 2)
        w = rng.random(conf.shape[0]) * 3 if has_w else ns._NO_WEIGHTS
        M = int(rng.choice([1, 2, 15, 300]))
        bits, levels = int(rng.choice([0, 3, 7])), int(rng.choice([1, 5, 36]))
        B = int(rng.choice([0, 3]))
        has_sq = bool(trial % 3)
        R = 2 * (levels << bits)
        states = []
        for checked in (False, True):
            bins, fine, boot, sq = np.zeros(4 * M), np.zeros(5 * R), np.zeros(B * 3 * M), np.zeros(2 * M)
            inner = ns._cached_inner(M)
            if checked:
                ns.stream_rows_checked(conf, target, w, has_w, np.uint64(5), inner, M, bits, levels, B, np.uint64(9),
                                       ns.POISSON1_CDF, bins, fine, boot, sq, has_sq)
            else:
                st = np.array([0.0, -1.0, -1.0, 0.0])
                ns._chunk(conf, target, w, has_w, np.uint64(5), inner, M, bits, levels, B, np.uint64(9),
                          ns.POISSON1_CDF, ns.HALF_TABLE, 0, conf.shape[0], bins, fine, boot, st, sq, has_sq)
                assert st[0] == 0
            states.append(np.concatenate([bins, fine, boot, sq]))
        assert states[0].tobytes() == states[1].tobytes()
