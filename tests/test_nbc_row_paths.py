"""The Numba top-label pass compiled per row path (issue 13, cold-start compile time): each caller runs a copy of
binning._top_label_chunk compiled for the input's row path (binning.rows_path) with or without class-wise bins
(binning.for_rows, _common.specialised), and every caller passes it the same argument types. Checked: the path
table, which copies a small call compiles (its own only, one signature each), and that every path gives the
bits of the C++ kernel where the two share their arithmetic (probabilities, float32 / float16 logit rows of at
least 16), the NumPy reference otherwise, and the same bits for 1 and 2 threads, one call and many chunks. Behaviour
only, never times. The compile checks run in a fresh process (a signature loaded from Numba's cache counts)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import _core
from calibkit import _numba as nb
from calibkit._numba import binning
from conftest import assert_same_stats


def test_rows_path_table():
    rp = binning.rows_path
    assert rp(False, 15, np.float32) == rp(False, 1, np.float64) == binning.ROWS_SHORT_PROB
    assert rp(False, 16, np.float16) == rp(False, 100, np.float64) == binning.ROWS_PROB
    assert rp(True, 16, np.float32) == rp(True, 1000, np.float16) == binning.ROWS_SINGLE
    assert rp(True, 16, np.float64) == rp(True, 15, np.float32) == rp(True, 2, np.float16) == binning.ROWS_LOGIT


def test_copies_are_made_once_and_named_by_path():
    a = binning.for_rows(binning._top_label_chunk, binning.ROWS_SINGLE, True)
    assert binning.for_rows(binning._top_label_chunk, binning.ROWS_SINGLE, True) is a
    assert a.py_func.__name__ == "_top_label_chunk_single_cw"
    d = binning.for_rows(binning._top_label_driver, binning.ROWS_PROB, False)
    assert d.py_func.__name__ == "_top_label_driver_prob"
    # the driver's copy calls the chunk's copy for the same path
    assert d.py_func.__globals__["_top_label_chunk"] is binning.for_rows(binning._top_label_chunk,
                                                                         binning.ROWS_PROB, False)
    assert d.targetoptions.get("parallel") is True


_COMPILES = textwrap.dedent("""
    import numpy as np
    from calibkit import metrics, streaming
    from calibkit._numba import binning, _common, stream
    rng = np.random.default_rng(0)
    x = rng.standard_normal((100, 10)).astype(np.float32)
    y = rng.integers(0, 10, 100)
    metrics.ece(x, y, from_logits=True, backend="numba")
    metrics.ece(x.astype(np.float64), y, from_logits=True, backend="numba")
    metrics.classwise_calibration_error(x, y, from_logits=True, backend="numba")
    a = streaming.CalibrationAccumulator(15, from_logits=True, n_classes=10, backend="numba")
    a.update(x, y)
    a.update(x, y)
    for (fn, rows, cw), copy in sorted(binning._rows_copies.items(), key=lambda kv: kv[1].py_func.__name__):
        print(copy.py_func.__name__, len(copy.signatures))
    for copy in stream._stream_copies.values():
        print(copy.py_func.__name__, len(copy.signatures))
    print("_top_label_chunk", len(binning._top_label_chunk.signatures))
    print("_merge_status", len(_common._merge_status.signatures))
""")


def test_small_calls_compile_their_own_path_only():
    """Float32 / float64 logit rows of 10 (the double-precision path): the top-label ECE, the class-wise ECE and an
    accumulator make the LOGIT copies only, with and without class-wise bins, one signature per dtype for each
    entry point, the chunk's shared by every caller; _top_label_chunk itself never compiles, nor do the
    accumulator's copies for the path (the bases of stream._stream_kernel's copy for its squares and smooth sums).
    (A function loaded from Numba's cache brings its callees' code with it: the callees then show no signature,
    hence <=.)"""
    r = subprocess.run([sys.executable, "-c", _COMPILES], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    got = {name: int(n) for name, n in (line.rsplit(" ", 1) for line in r.stdout.split("\n") if line)}
    entry_points = {"_top_label_one_chunk_logit": 2, "_classwise_one_chunk_logit_cw": 1,
                    "_top_label_plain_logit_sq": 1}
    callees = {"_top_label_chunk_logit": 2,  # float32 and float64 scores: ece (both) and the accumulator's update
               "_top_label_chunk_logit_cw": 1, "_merge_status": 1}
    bases = {"_top_label_chunk", "_top_label_plain_logit", "_top_label_small_logit"}
    assert set(got) == set(entry_points) | set(callees) | bases
    for name in bases:
        assert got[name] == 0, name
    for name, n in entry_points.items():
        assert got[name] == n, name
    for name, n in callees.items():
        assert got[name] <= n, name


def _inputs(path, dtype, n, k, rng):
    z = 3.0 * rng.standard_normal((n, k))
    if path in ("short_prob", "prob"):
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(dtype), False
    return z.astype(dtype), True


# (path, dtype, K): each row path, K below and above SHORT_ROW and not a multiple of 8
CASES = [("short_prob", np.float32, 5), ("short_prob", np.float64, 15), ("prob", np.float16, 16),
         ("prob", np.float64, 37), ("single", np.float32, 20), ("single", np.float16, 33),
         ("logit", np.float64, 20), ("logit", np.float32, 10)]


@pytest.mark.parametrize("path,dtype,k", CASES)
@pytest.mark.parametrize("cw", [0, 4])
def test_paths_one_vs_many_chunks_threads_and_cpp(path, dtype, k, cw, threads):
    # weights on one dtype of each path; Fortran order (the dense path of float logit rows) on the float32 ones
    weighted = dtype == CASES[[c[0] for c in CASES].index(path)][1]
    layout = "F" if dtype == np.float32 else "C"
    rng = np.random.default_rng(k + cw)
    n = 70_000 // k + 7  # several chunks and above the parallel threshold
    s, logits = _inputs(path, dtype, n, k, rng)
    assert binning._ROWS_NAMES[binning.rows_path(logits, k, s.dtype)] == path
    if layout == "F":
        s = np.asfortranarray(s)  # the dense path of float logit rows
    y = rng.integers(0, k, n)
    y[:40] = s[:40].astype(np.float64).argmax(axis=1)
    w = rng.random(n) * 2.0 if weighted else None

    def run(mod, rows, thr):
        calibkit.set_num_threads(thr)
        conf, ok = np.empty(rows), np.empty(rows, np.uint8)
        r = mod.top_label_stats(s[:rows], y[:rows], None if w is None else w[:rows], logits, 15, 1e-7, True,
                                conf, ok, 1.25 if logits else 1.0, cw, None, True)
        assert r["status"][0] == 0
        return r, conf, ok

    same_bits_as_cpp = not logits or path == "single"
    for rows in (n, 60):  # the driver (many chunks), the one-call path of a small input
        one = run(nb, rows, 1)
        assert_same_stats(one, run(nb, rows, 2))
        cpp = run(_core, rows, 1)
        if same_bits_as_cpp:
            assert_same_stats(one, cpp)
        else:  # double-precision exponentials: the backends may differ in the last bit (as before)
            for key in ("count", "weight"):
                np.testing.assert_array_equal(one[0][key], cpp[0][key])
            np.testing.assert_allclose(one[0]["sum_score"], cpp[0]["sum_score"], rtol=1e-12)
            np.testing.assert_allclose(one[1], cpp[1], rtol=1e-12)
        if cw:
            for key in ("count", "weight", "sum_score", "sum_target"):
                a, b = one[0]["classwise"][key], cpp[0]["classwise"][key]
                if same_bits_as_cpp or key == "count":
                    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), key
                else:
                    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    # many chunks == the sum of their rows' reference: the confidences and bins of the NumPy reference
    conf = run(nb, n, 1)[1]
    p = s.astype(np.float64)
    if logits:
        z = 1.25 * p
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(conf, p.max(axis=1), rtol=1e-6 if dtype != np.float64 else 1e-12)


@pytest.mark.parametrize("path,dtype,k", CASES)
def test_bad_rows_still_named(path, dtype, k):
    """A NaN / out-of-range score and a bad label are reported at the same (row, column) on every path, as C++."""
    rng = np.random.default_rng(3)
    s, logits = _inputs(path, dtype, 300, k, rng)
    y = rng.integers(0, k, 300)
    s[17, k - 1] = np.nan
    y[9] = k  # the first problem in row order
    for cw in (0, 3):
        a = nb.top_label_stats(s, y, None, logits, 10, 1e-7, True, None, None, 1.0, cw, None, True)["status"]
        b = _core.top_label_stats(s, y, None, logits, 10, 1e-7, True, None, None, 1.0, cw, None, True)["status"]
        assert a[:3] == b[:3] == (3, 9, -1)
        y[9] = 0
        a = nb.top_label_stats(s, y, None, logits, 10, 1e-7, True, None, None, 1.0, cw, None, True)["status"]
        b = _core.top_label_stats(s, y, None, logits, 10, 1e-7, True, None, None, 1.0, cw, None, True)["status"]
        assert a[:3] == b[:3] == (1, 17, k - 1)
        y[9] = k
