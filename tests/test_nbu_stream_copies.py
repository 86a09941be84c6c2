"""The Numba small-batch stream kernels compiled per stream (issue 13, cold-start compile time): the accumulator's
kernel runs a copy made for the batch's row path and for the stream's squares and smooth sums
(stream._stream_kernel, _common.specialised), whose stream_rows_checked compiles two loops (weighted or not), not
four, and whose _top_label_small has no _stream_smooth call without smooth sums (_stream_smooth: the checked rows
through smooth's blocks, without _smooth_chunk). Checked: which copies are made, that a small update compiles
only those (in a fresh process and Numba cache), and that every case gives the C++ kernel's bits (weights on/off,
squares on/off, bootstrap, class-wise bins, smooth sums; each row path) with 1 and 2 threads. Behaviour only,
never times."""

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
from calibkit._numba import stream as ns
from calibkit.metrics import _nll_eps
from calibkit.smooth import AUTO_GRID_SIZES
from conftest import labels_from, random_probs

M, BITS, LEVELS = 15, 7, 36
CELLS = int(AUTO_GRID_SIZES.sum())


def test_copies_are_made_once_and_named_by_stream():
    plain = ns._stream_kernel(ns._top_label_plain, binning.ROWS_SHORT_PROB, False, True, False)
    assert ns._stream_kernel(ns._top_label_plain, binning.ROWS_SHORT_PROB, False, True, False) is plain
    assert plain.py_func.__name__ == "_top_label_plain_short_prob_sq"
    small = plain.py_func.__globals__["_top_label_small"]
    assert small.py_func.__name__ == "_top_label_small_short_prob_sq"
    assert small.py_func.__globals__["SMOOTHED"] is False
    assert small.py_func.__globals__["ROWS"] == binning.ROWS_SHORT_PROB  # on binning.for_rows's copy
    rows = small.py_func.__globals__["stream_rows_checked"]
    assert rows.py_func.__name__ == "stream_rows_checked_sq"
    assert rows.py_func.__globals__["SQUARED"] is True
    full = ns._stream_kernel(ns._top_label_small, binning.ROWS_SINGLE, True, False, True)
    assert full.py_func.__name__ == "_top_label_small_single_cw_nosq_sm"
    assert full.py_func.__globals__["SMOOTHED"] is True
    assert full.py_func.__globals__["stream_rows_checked"].py_func.__name__ == "stream_rows_checked_nosq"
    # the module's own functions read their arguments
    assert ns.SQUARED is None and ns.SMOOTHED is None


_COMPILES = textwrap.dedent("""
    import numpy as np
    import calibkit
    from calibkit._numba import smooth, stream as ns
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), 1024).astype(np.float32)
    y = rng.integers(0, 10, 1024)
    a = calibkit.CalibrationAccumulator(15, backend="numba")
    a.update(p, y)
    a.compute()
    a.update(p, y, sample_weight=rng.random(1024))  # the same copy: the weights are chosen per call
    a.compute()
    for f in (ns.stream_rows_checked, ns._top_label_small, ns._top_label_plain, ns._stream_smooth):
        print(f.py_func.__name__, len(f.signatures))
    b = calibkit.CalibrationAccumulator(15, smooth=True, backend="numba")
    b.update(p, y)
    b.compute()
    print("smooth_stream", len(ns._stream_smooth.signatures))
    print("smooth_chunk", len(smooth._smooth_chunk.signatures))
    plain = ns._stream_copies[(ns._top_label_plain, 0, False, True, False)]
    small = plain.py_func.__globals__["_top_label_small"]
    for f in (plain, small, small.py_func.__globals__["stream_rows_checked"]):
        print(f.py_func.__name__, len(f.signatures))
    print("copies", len(ns._stream_copies))  # and the smooth stream's
    c = calibkit.CalibrationAccumulator(15, backend="numba")  # a binary stream: _small's chunk, then _driver's
    c.update(rng.random(1000), rng.integers(0, 2, 1000))
    c.update(rng.random(40000), rng.integers(0, 2, 40000))
    print("binary_chunk", len(ns._chunk.signatures))
""")


def test_small_update_compiles_only_its_copy(tmp_path):
    """1024 x 10 float32 probabilities, unweighted then weighted, in a fresh process and Numba cache: the
    copies for a stream with squares and without smooth sums, one signature each; the module's functions and
    _stream_smooth never compile. Then a smooth stream: _stream_smooth compiles, not smooth._smooth_chunk (its
    checks and row paths of scores). Then a binary stream's small and large batches: one signature of _chunk
    (_small passes it typed bounds, as _driver)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _COMPILES], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr
    got = {name: int(n) for name, n in (line.rsplit(" ", 1) for line in r.stdout.split("\n") if line)}
    assert got == {"stream_rows_checked": 0, "_top_label_small": 0, "_top_label_plain": 0, "_stream_smooth": 0,
                   "_top_label_plain_short_prob_sq": 1, "_top_label_small_short_prob_sq": 1,
                   "stream_rows_checked_sq": 1, "copies": 2, "smooth_stream": 1, "smooth_chunk": 0,
                   "binary_chunk": 1}


def _state(K, boot, classwise, squares, smooth):
    return {"bins": np.zeros((4, M)), "fine": np.zeros((5, 2 * (LEVELS << BITS))), "boot": np.zeros((boot, 3, M)),
            "totals": np.zeros(6), "classwise": np.zeros((3, K, M)) if classwise else None,
            "squares": np.zeros((2, M)) if squares else None, "smooth": np.zeros((CELLS, 2)) if smooth else None}


def _update(k, s, scores, y, w, logits, offset, boot):
    return k.stream_top_label(scores, y, w, logits, _nll_eps(scores.dtype), 1.0, offset, M, BITS, LEVELS, boot, 7,
                              s["bins"], s["fine"], s["boot"], s["totals"], M if s["classwise"] is not None else 0,
                              s["classwise"], s["squares"], None if s["smooth"] is None else AUTO_GRID_SIZES,
                              s["smooth"])


def _bytes(s):
    return b"".join(a.tobytes() for a in s.values() if a is not None)


INPUTS = [(10, np.float32, False), (10, np.float64, False), (20, np.float32, True), (20, np.float16, False),
          (12, np.float64, True)]  # (K, dtype, logits): each row path


@pytest.mark.parametrize("K,dtype,logits", INPUTS)
@pytest.mark.parametrize("squares", [True, False])
@pytest.mark.parametrize("boot,classwise,smooth", [(0, False, False), (3, False, False), (0, True, False),
                                                   (0, False, True), (2, True, True)])
def test_numba_copies_give_the_cpp_bits(K, dtype, logits, squares, boot, classwise, smooth, threads):
    """Three small batches (unweighted, weighted, unweighted) into one state: Numba 1 thread = 2 threads = C++ bit
    for bit (to rounding on the double-precision logit path, whose exponentials differ between the backends)."""
    rng = np.random.default_rng(K + 3 * boot + 5 * classwise + 7 * smooth)
    batches = []
    for n, weighted in ((300, False), (257, True), (1, False)):
        p = random_probs(rng, n, K)
        y = labels_from(rng, p)
        scores = (np.log(p + 1e-9) * 1.7 if logits else p).astype(dtype)
        batches.append((scores, y, rng.random(n) * 2 if weighted else None))
    got = {}
    for backend, n_threads in (("cpp", 2), ("numba", 1), ("numba", 2)):
        k = _core if backend == "cpp" else nb
        s = _state(K, boot, classwise, squares, smooth)
        offset = 0
        calibkit.set_num_threads(n_threads)
        for scores, y, w in batches:
            st = _update(k, s, scores, y, w, logits, offset, boot)
            assert st[0] == 0, st
            offset += scores.shape[0]
        got[backend, n_threads] = s
    assert _bytes(got["numba", 1]) == _bytes(got["numba", 2])
    if binning.rows_path(logits, K, scores.dtype) != binning.ROWS_LOGIT:
        assert _bytes(got["numba", 2]) == _bytes(got["cpp", 2])
    else:  # double-precision logit rows: the two backends' exponentials differ in the last bits (test_nbc_row_paths)
        for name, a in got["cpp", 2].items():
            if a is not None and a.size:
                np.testing.assert_allclose(got["numba", 2][name], a, rtol=1e-9, atol=1e-9 * np.abs(a).max(),
                                           err_msg=name)


def test_bad_batch_leaves_the_state_through_a_copy():
    """A bad label in a small batch: the copy reports it and adds nothing, as C++."""
    rng = np.random.default_rng(1)
    p = random_probs(rng, 50, 10).astype(np.float32)
    y = labels_from(rng, p)
    y[17] = 10
    for k in (_core, nb):
        s = _state(10, 2, False, True, False)
        st = _update(k, s, p, y, None, False, 0, 2)
        assert st[0] != 0 and int(st[1]) == 17
        assert not any(a.any() for a in s.values() if a is not None)
