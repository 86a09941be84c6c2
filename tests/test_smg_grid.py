"""The smooth ECE's grid sums of a streaming update (issue 13): stream_top_label spreads the rows the top-label
pass has summarised (smooth_grid_checked_rows: a task per grid, one partial of its cells folded at each chunk's
end) with the bits of smooth_grid on the (N, K) scores (its chunks of smooth_rows_per_chunk(K, cells) rows, the
chunk partials folded in chunk order). Reference: a plain NumPy spread in those chunks; both backends, 1 and 2
threads, weights, merge == one pass. Behaviour only, never times."""

import numpy as np
import pytest

import calibkit
from calibkit import _backend
from calibkit.smooth import AUTO_GRID_SIZES
from calibkit.streaming import _fused_update
from conftest import labels_from, random_probs

M, B, BITS, LEVELS = 15, 0, 7, 36
CELLS = int(AUTO_GRID_SIZES.sum())


def _chunk_rows(K):
    """smooth.hpp's smooth_rows_per_chunk(K, cells)."""
    return max(1, max(1 << 15, 32 * CELLS) // K)


def _reference(p, y, w, sizes=AUTO_GRID_SIZES):
    """The grid sums (cells, 2) of top-label rows of probabilities p: each chunk's partial summed row by row
    from +0.0 (np.add.at adds in index order), the partials folded in chunk order."""
    n, K = p.shape
    f = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    w = np.ones(n) if w is None else w
    total = np.zeros((CELLS, 2))
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    chunk = _chunk_rows(K)
    for begin in range(0, n, chunk):
        part = np.zeros((CELLS, 2))
        fc, yc, wc = f[begin:begin + chunk], correct[begin:begin + chunk], w[begin:begin + chunk]
        wr = wc * (fc - yc)
        for G, off in zip(sizes.tolist(), offsets.tolist()):
            x = fc * float(G - 1)
            b = np.clip(x.astype(np.int64), 0, G - 2)
            t = x - b
            u = 1.0 - t
            cells = off + np.stack([b, b + 1], axis=1).ravel()  # row by row: cell b, then b + 1
            np.add.at(part[:, 0], cells, np.stack([u * wc, t * wc], axis=1).ravel())
            np.add.at(part[:, 1], cells, np.stack([u * wr, t * wr], axis=1).ravel())
        total += part
    return total


def _state(K):
    return {"bins": np.zeros((4, M)), "fine": np.zeros((5, 2 * (LEVELS << BITS))), "boot": np.zeros((B, 3, M)),
            "totals": np.zeros(6), "squares": np.zeros((2, M)), "smooth": np.zeros((CELLS, 2)),
            "classwise": np.zeros((3, K, M))}


def _update(k, s, p, y, w, classwise, offset=0):
    st = _fused_update(k)(p, y, w, False, 0.0, 1.0, offset, M, BITS, LEVELS, B, 11, s["bins"], s["fine"], s["boot"],
                          s["totals"], M if classwise else 0, s["classwise"] if classwise else None, s["squares"],
                          AUTO_GRID_SIZES, s["smooth"])
    assert st[0] == 0


def _inputs(n, K, seed, weighted):
    rng = np.random.default_rng(seed)
    p = random_probs(rng, n, K)
    y = labels_from(rng, p)
    w = rng.random(n) * 3 if weighted else None
    return p, y, w


# (rows, K): chunks of 332k rows at K = 2 (one), 6643 at K = 100 (three), 664 at K = 1000 (four, the last short)
CASES = [(5000, 2), (15000, 100), (2300, 1000), (1, 1000), (664, 1000)]


@pytest.mark.parametrize("n,K", CASES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("classwise", [False, True])
def test_stream_grid_sums_equal_numpy_reference(backend, n, K, weighted, classwise):
    p, y, w = _inputs(n, K, n + K, weighted)
    k = _backend.kernels(backend)
    s = _state(K)
    _update(k, s, p, y, w, classwise)
    np.testing.assert_array_equal(s["smooth"], _reference(p, y, w))  # bit for bit
    g = k.smooth_grid(p, y, w, False, AUTO_GRID_SIZES, False)  # the standalone pass over the scores
    assert g["status"][0] == 0
    np.testing.assert_array_equal(s["smooth"], g["grid"])


@pytest.mark.parametrize("n,K", [(15000, 100), (3000, 1000)])
def test_backends_and_thread_counts_agree(n, K, threads):
    p, y, w = _inputs(n, K, 7, True)
    got = []
    for backend in ("cpp", "numba"):
        for t in (1, 2):
            calibkit.set_num_threads(t)
            s = _state(K)
            _update(_backend.kernels(backend), s, p, y, w, True)
            got.append(s["smooth"])
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])


def test_merge_equals_one_stream(backend):
    p, y, w = _inputs(4000, 1000, 11, True)
    one = calibkit.CalibrationAccumulator(smooth=True, classwise=True, backend=backend)
    one.update(p[:2500], y[:2500], sample_weight=w[:2500]).update(p[2500:], y[2500:], sample_weight=w[2500:])
    a = calibkit.CalibrationAccumulator(smooth=True, classwise=True, backend=backend)
    b = calibkit.CalibrationAccumulator(smooth=True, classwise=True, backend=backend)
    a.update(p[:2500], y[:2500], sample_weight=w[:2500])
    b.update(p[2500:], y[2500:], sample_weight=w[2500:])
    a.merge(b)
    np.testing.assert_array_equal(a._smooth, one._smooth)
    assert a.compute().smooth_ece == one.compute().smooth_ece
