"""binary_stats' branch-free pass: unweighted bins in lanes, with_nll=False, a bad chunk re-run row by row.

References: np.searchsorted / np.bincount for the bins; the two backends bit for bit; 1 and 2 threads bit for bit.
"""

import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit import _backend
import calibkit._numba.binning as numba_binning

KEYS = ("count", "weight", "sum_score", "sum_target")
TOTALS = ("count", "weight", "correct", "confidence", "brier", "nll")
N = 70_001  # above two chunks of rows


def _data(rng, n, dtype, label_dtype=np.int64):
    p = rng.random(n).astype(dtype)
    p[:60] = np.round(p[:60], 1)  # on the edges of 10 and 5 bins
    p[60:62] = (0.0, 1.0)
    return p, (rng.random(n) < p).astype(label_dtype)


def _same(a, b):
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for key in TOTALS:
        x, y = a["totals"][key], b["totals"][key]
        assert x == y or (np.isnan(x) and np.isnan(y)), key
    assert tuple(a["status"]) == tuple(b["status"])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_bins,edges", [(15, None), (10, None), (1, None), (0, None), (5000, None),
                                          (4, np.array([0.0, 0.1, 0.5, 0.55, 1.0]))])
@pytest.mark.parametrize("with_nll", [True, False])
def test_backends_bit_identical_and_bins_match_numpy(dtype, weighted, n_bins, edges, with_nll):
    rng = np.random.default_rng(7)
    p, y = _data(rng, N, dtype)
    w = rng.uniform(0, 2, N) if weighted else None
    a = _backend.kernels("cpp").binary_stats(p, y, w, n_bins, edges, 1e-7, with_nll)
    b = numba_binning.binary_stats(p, y, w, n_bins, edges, 1e-7, with_nll)
    _same(a, b)
    if not with_nll:
        assert np.isnan(a["totals"]["nll"])
    if n_bins == 0:
        return
    inner = np.arange(1, n_bins) / n_bins if edges is None else edges[1:-1]
    idx = np.searchsorted(inner, p.astype(np.float64), side="left")
    ww = np.ones(N) if w is None else w
    np.testing.assert_array_equal(a["count"], np.bincount(idx, minlength=n_bins))
    np.testing.assert_allclose(a["weight"], np.bincount(idx, ww, minlength=n_bins), rtol=1e-12)
    np.testing.assert_allclose(a["sum_score"], np.bincount(idx, ww * p, minlength=n_bins), rtol=1e-12)
    np.testing.assert_allclose(a["sum_target"], np.bincount(idx, ww * y, minlength=n_bins), rtol=1e-12)
    if w is None:  # weights and positives of unweighted bins are exact integers
        np.testing.assert_array_equal(a["weight"], a["count"].astype(np.float64))


@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8])
def test_with_nll_false_changes_only_the_nll(backend, label_dtype):
    rng = np.random.default_rng(8)
    p, y = _data(rng, N, np.float64, label_dtype)
    k = _backend.kernels(backend)
    a = k.binary_stats(p, y, None, 15, None, 1e-15, True)
    b = k.binary_stats(p, y, None, 15, None, 1e-15, False)
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key])
    for key in TOTALS[:-1]:
        assert a["totals"][key] == b["totals"][key]
    assert np.isnan(b["totals"]["nll"])
    pc = np.clip(p, 1e-15, 1 - 1e-15)
    want = -np.sum(np.where(y == 1, np.log(pc), np.log1p(-pc)))
    assert a["totals"]["nll"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_bit_identical_for_any_thread_count(backend, threads, weighted):
    rng = np.random.default_rng(9)
    n = 300_000
    p, y = _data(rng, n, np.float64)
    w = rng.random(n) if weighted else None
    out = []
    for t in (1, 2):
        calibkit.set_num_threads(t)
        out.append(_backend.kernels(backend).binary_stats(p, y, w, 15, None, 1e-15, True))
    _same(*out)


_BAD_CODE = """
import numpy as np
from calibkit import _backend
import calibkit._numba.binning as nb
rng = np.random.default_rng(3)
n = 70001
out = []
for where in (0, 32767, 32768, 70000):
    for bad in ("nan", "inf", "-inf", "huge", "negative", "label2", "label-1", "label3", "label2**32+1", "u8label255",
                "wnan", "winf", "wneg"):
        p = rng.random(n); y = (rng.random(n) < p).astype(np.int64); w = rng.random(n) if bad[0] == "w" else None
        if bad == "label3": y[where] = 3
        if bad == "label2**32+1": y[where] = 2**32 + 1  # bit 0 set: only the other bits name it
        if bad == "u8label255": y = y.astype(np.uint8); y[where] = 255
        if bad in ("nan", "inf", "-inf"): p[where] = float(bad)
        if bad == "huge": p[where] = 1e300
        if bad == "negative": p[where] = -0.5
        if bad == "label2": y[where] = 2
        if bad == "label-1": y[where] = -1
        if bad == "wnan": w[where] = np.nan
        if bad == "winf": w[where] = np.inf
        if bad == "wneg": w[where] = -1.0
        for n_bins in (15, 5000, 1, 0):
            a = _backend.kernels("cpp").binary_stats(p, y, w, n_bins, None, 1e-7, False)["status"]
            b = nb.binary_stats(p, y, w, n_bins, None, 1e-7, False)["status"]
            assert repr(tuple(a)) == repr(tuple(b)), (bad, where, a, b)  # repr: NaN == NaN
            assert a[1] == where, (bad, where, a)
            out.append(a[0])
print(sorted(set(out)))
"""


def test_bad_element_named_by_both_backends_without_crash():
    """A NaN, infinite or huge score must not reach a bin index (a crash): run in a subprocess."""
    r = subprocess.run([sys.executable, "-c", _BAD_CODE], timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[1, 2, 3, 4, 5]"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int64, np.uint8])
@pytest.mark.parametrize("weighted", [False, True])
def test_strided_inputs_give_the_bits_of_contiguous_copies(backend, dtype, label_dtype, weighted):
    """Views with any step are read in place (the loop walks each input with its own stride), and every chunk
    length, a multiple of the four lanes or not, is covered: N = 70,001 leaves a last chunk of 4,465 rows."""
    rng = np.random.default_rng(10)
    p, y = _data(rng, N, dtype, label_dtype)
    p_view = np.empty(2 * N, dtype)[::2]
    p_view[:] = p
    y_view = np.empty(3 * N, label_dtype)[::-3]
    y_view[:] = y
    w = rng.uniform(0, 2, N) if weighted else None
    w_view = None if w is None else np.repeat(w, 2)[1::2]
    k = _backend.kernels(backend)
    for n_bins, edges in ((15, None), (5000, None), (4, np.array([0.0, 0.1, 0.5, 0.55, 1.0]))):
        want = k.binary_stats(p, y, w, n_bins, edges, 1e-7, True)
        got = k.binary_stats(p_view, y_view, w_view, n_bins, edges, 1e-7, True)
        _same(want, got)
        assert want["status"][0] == 0


def test_ece_message_names_the_row(backend):
    rng = np.random.default_rng(4)
    p, y = _data(rng, N, np.float64)
    y[40_000] = 3
    with pytest.raises(ValueError, match=r"labels\[40000\] = 3 is not 0 or 1"):
        calibkit.ece(p, y, backend=backend)
    y[40_000] = 1
    p[50_000] = 1.5
    with pytest.raises(ValueError, match=r"scores\[50000\] = 1.5 is not a probability"):
        calibkit.ece(p, y, backend=backend)


_GUARD_CODE = r"""
import ctypes, mmap
import numpy as np
from calibkit import _backend
import calibkit._numba.binning as nb

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def guarded(values):
    # values in the middle page(s) of a mapping whose first and last pages cannot be read or written
    n_pages = -(-values.nbytes // PAGE)
    buf = mmap.mmap(-1, (n_pages + 2) * PAGE)
    raw = np.frombuffer(buf, np.uint8)
    base = raw.ctypes.data
    start = PAGE + n_pages * PAGE - values.nbytes  # the data ends where the last guard page begins
    out = raw[start:start + values.nbytes].view(values.dtype)
    out[:] = values
    for at in (base, base + (n_pages + 1) * PAGE):
        assert libc.mprotect(at, PAGE, 0) == 0, ctypes.get_errno()  # PROT_NONE
    return out, buf


rng = np.random.default_rng(3)
n = 2 * PAGE // 8  # float64 scores fill two pages; the prefetch reads 256 rows past either end
p = rng.random(n)
y = (rng.random(n) < p).astype(np.int64)
gp, keep_p = guarded(p)
gy, keep_y = guarded(y)
for scores, labels in ((gp, gy), (gp[::-1], gy[::-1]), (gp[::-3], gy[::-3])):
    want = _backend.kernels("cpp").binary_stats(np.ascontiguousarray(scores), np.ascontiguousarray(labels), None,
                                                 15, None, 1e-7, False)
    idx = np.searchsorted(np.arange(1, 15) / 15, scores, side="left")  # NumPy's bins: counts are exact
    assert np.array_equal(want["count"], np.bincount(idx, minlength=15))
    assert np.array_equal(want["sum_target"], np.bincount(idx, labels, minlength=15))
    for got in (_backend.kernels("cpp").binary_stats(scores, labels, None, 15, None, 1e-7, False),
                nb.binary_stats(scores, labels, None, 15, None, 1e-7, False)):
        for key in ("count", "weight", "sum_score", "sum_target"):
            assert np.array_equal(got[key], want[key]), key
        assert got["totals"]["brier"] == want["totals"]["brier"]
print("ok")
"""


def test_rows_read_ahead_at_the_edges_of_a_mapping():
    """The pass prefetches rows ahead of the one it reads (kBinaryAhead, BINARY_AHEAD): past the end of a
    forward view and before the start of a reversed one. Scores and labels between pages that cannot be read,
    in a subprocess (a fault there fails this test, not the run): the same bits as contiguous copies."""
    r = subprocess.run([sys.executable, "-c", _GUARD_CODE], timeout=600, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"
