"""The fused streaming update (issue 13): the small-batch path of stream_top_label (one pass, no per-call
allocation) and the smooth ECE's grid sums taken from the same pass. Reference: the separate kernel calls
(top_label_stats + stream_accumulate + smooth_grid), bit for bit; both backends. Behaviour only, never times."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import _backend
from calibkit.metrics import _nll_eps
from calibkit.smooth import AUTO_GRID_SIZES
from calibkit.streaming import _fused_update
from conftest import labels_from, random_probs

M, B, BITS, LEVELS = 15, 3, 7, 36
CELLS = int(AUTO_GRID_SIZES.sum())


def _state(K, classwise):
    return {"bins": np.zeros((4, M)), "fine": np.zeros((5, 2 * (LEVELS << BITS))), "boot": np.zeros((B, 3, M)),
            "totals": np.zeros(6), "squares": np.zeros((2, M)), "smooth": np.zeros((CELLS, 2)),
            "classwise": np.zeros((3, K, M)) if classwise else None}


def _fused(k, s, scores, y, w, logits, inv_t, offset, smooth=True):
    return _fused_update(k)(scores, y, w, logits, _nll_eps(scores.dtype), inv_t, offset, M, BITS, LEVELS, B, 11,
                            s["bins"], s["fine"], s["boot"], s["totals"], M if s["classwise"] is not None else 0,
                            s["classwise"], s["squares"], AUTO_GRID_SIZES if smooth else None,
                            s["smooth"] if smooth else None)


def _separate(k, s, scores, y, w, logits, inv_t, offset):
    """The same update as separate kernel calls: the reference."""
    n = scores.shape[0]
    conf, correct = np.empty(n), np.empty(n, np.uint8)
    cwb = M if s["classwise"] is not None else 0
    r = k.top_label_stats(scores, y, w, logits, 0, _nll_eps(scores.dtype), with_nll=True, conf_out=conf,
                          correct_out=correct, inverse_temperature=inv_t, classwise_bins=cwb)
    assert r["status"][0] == 0
    st = k.stream_accumulate(conf, correct, w, offset, M, BITS, LEVELS, B, 11, s["bins"], s["fine"], s["boot"],
                             s["squares"])
    assert st[0] == 0
    t = r["totals"]
    s["totals"] += (t["count"], t["weight"], t["correct"], t["confidence"], t["brier"], t["nll"])
    if cwb:
        c = r["classwise"]
        s["classwise"] += np.stack([np.asarray(c[key], np.float64).reshape(s["classwise"].shape[1:])
                                    for key in ("weight", "sum_score", "sum_target")])
    g = k.smooth_grid(scores, y, w, logits, AUTO_GRID_SIZES, False, inv_t)
    assert g["status"][0] == 0
    s["smooth"] += g["grid"]


CASES = [  # (rows, K, dtype, logits, weighted, classwise, strided); one chunk of K = 10 is 3276 rows
    (1, 10, np.float64, False, False, False, False), (7, 3, np.float32, True, True, False, False),
    (1024, 10, np.float32, False, False, False, False), (1024, 10, np.float16, False, True, False, True),
    (1024, 10, np.float64, True, False, False, False), (333, 40, np.float32, True, True, False, False),
    (819, 40, np.float64, False, False, False, True), (3276, 10, np.float32, False, True, True, False),
    (5000, 10, np.float32, True, False, False, False), (3000, 100, np.float32, True, True, False, True),
]


@pytest.mark.parametrize("n,K,dtype,logits,weighted,classwise,strided", CASES)
def test_fused_update_with_smooth_equals_separate_calls(backend, n, K, dtype, logits, weighted, classwise,
                                                        strided):
    rng = np.random.default_rng(n + K)
    p = random_probs(rng, n, K)
    y = labels_from(rng, p)
    scores = (np.log(p + 1e-9) * 1.7 if logits else p).astype(dtype)
    if strided:  # every other column of a wider array, read in place
        wide = np.zeros((n, 2 * K), dtype)
        wide[:, ::2] = scores
        scores = wide[:, ::2]
    w = rng.random(n) * 2 if weighted else None
    inv_t = 1 / 1.3 if logits else 1.0
    k = _backend.kernels(backend)
    fused, ref = _state(K, classwise), _state(K, classwise)
    for offset in (5, 5 + n):  # twice: into a state that already holds rows
        assert _fused(k, fused, scores, y, w, logits, inv_t, offset)[0] == 0
        _separate(k, ref, scores, y, w, logits, inv_t, offset)
    for name in fused:
        if fused[name] is not None:
            np.testing.assert_array_equal(fused[name], ref[name], err_msg=name)  # bit for bit


@pytest.mark.parametrize("n,K", [(1024, 10), (4000, 10), (200, 300)])
def test_fused_update_backends_and_threads_agree(n, K, threads):
    rng = np.random.default_rng(K)
    p = random_probs(rng, n, K).astype(np.float32)
    y = labels_from(rng, p)
    states = []
    for backend in ("cpp", "numba"):
        for t in (1, 2):
            calibkit.set_num_threads(t)
            s = _state(K, False)
            assert _fused(_backend.kernels(backend), s, p, y, None, False, 1.0, 0)[0] == 0
            states.append(s)
    for s in states[1:]:
        for name in s:
            if s[name] is not None:
                np.testing.assert_array_equal(s[name], states[0][name], err_msg=name)


def test_smooth_accumulator_equals_one_shot_smooth_ece(backend):
    rng = np.random.default_rng(3)
    p = random_probs(rng, 3000, 10)
    y = labels_from(rng, p)
    z = np.log(p + 1e-9).astype(np.float32)
    acc = calibkit.CalibrationAccumulator(from_logits=True, temperature=1.3, smooth=True, backend=backend)
    for i in range(0, 3000, 1000):
        acc.update(z[i:i + 1000], y[i:i + 1000])
    scaled = z.astype(np.float64) / 1.3
    want = calibkit.smooth_ece(scaled, y, from_logits=True)
    assert acc.compute().smooth_ece == pytest.approx(want, rel=1e-6, abs=1e-9)


BAD = [  # (scores change, labels change, weights change, message)
    ("s[700, 3] = np.nan", "", "", r"scores\[700, 3\] = nan is not finite"),
    ("s[5, 0] = 1.5", "", "", r"scores\[5, 0\] = 1.5 is not a probability"),
    ("", "y[900] = 10", "", r"labels\[900\] = 10 is out of range for n_classes=10"),
    ("", "", "w[1023] = -1.0", r"sample_weight\[1023\] = -1.0"),
    ("s[2, 2] = np.inf", "y[1] = -3", "", r"labels\[1\] = -3 is out of range"),
]


@pytest.mark.parametrize("bad_s,bad_y,bad_w,message", BAD)
def test_bad_batch_is_named_and_adds_nothing(backend, bad_s, bad_y, bad_w, message):
    code = f"""
        import numpy as np, calibkit, pickle
        rng = np.random.default_rng(0)
        s = rng.dirichlet(np.ones(10), 1024).astype(np.float32)
        y = rng.integers(0, 10, 1024)
        w = np.ones(1024)
        acc = calibkit.CalibrationAccumulator(smooth=True, bootstrap=3, backend={backend!r}).update(s, y, w)
        before = acc.to_bytes()
        {bad_s}
        {bad_y}
        {bad_w}
        try:
            acc.update(s, y, w)
        except ValueError as exc:
            print("ERR", exc)
        assert acc.to_bytes() == before, "a bad batch changed the state"
        print("SAME")
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "SAME" in r.stdout
    import re

    assert re.search(message, r.stdout), r.stdout


def test_smooth_arguments_are_checked(backend):
    k = _backend.kernels(backend)
    s = _state(10, False)
    p = np.full((4, 10), 0.1)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="together"):
        _fused_update(k)(p, y, None, False, 1e-15, 1.0, 0, M, BITS, LEVELS, B, 0, s["bins"], s["fine"], s["boot"],
                         s["totals"], 0, None, None, AUTO_GRID_SIZES, None)
    with pytest.raises(ValueError):
        _fused_update(k)(p, y, None, False, 1e-15, 1.0, 0, M, BITS, LEVELS, B, 0, s["bins"], s["fine"], s["boot"],
                         s["totals"], 0, None, None, AUTO_GRID_SIZES, np.zeros((CELLS - 1, 2)))
