"""The short paths of small calls (issue 13): the fused streaming update, the serial small-batch path,
the small-bin error sums and the validation fast paths. Behaviour only, never times."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import _backend
from calibkit.metrics import _errors_from_bins, _nll_eps
from calibkit.streaming import CalibrationAccumulator, _fused_update
from conftest import labels_from, random_probs


def _run(code, env=None, timeout=120):
    import os

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _two_step(k, scores, labels, weights, from_logits, inv_t, offset, n_bins, n_boot, classwise_bins, state):
    """The update as two kernel calls (top_label_stats, then stream_accumulate): the reference of the fused one."""
    bins, fine, boot, totals, cw = state
    n = scores.shape[0]
    conf, correct = np.empty(n), np.empty(n, np.uint8)
    r = k.top_label_stats(scores, labels, weights, from_logits, 0, _nll_eps(scores.dtype), with_nll=True,
                          conf_out=conf, correct_out=correct, inverse_temperature=inv_t,
                          classwise_bins=classwise_bins)
    assert r["status"][0] == 0
    st = k.stream_accumulate(conf, correct, weights, offset, n_bins, 7, 36, n_boot, 3, bins, fine, boot)
    assert st[0] == 0
    t = r["totals"]
    totals += (t["count"], t["weight"], t["correct"], t["confidence"], t["brier"], t["nll"])
    if classwise_bins:
        c = r["classwise"]
        cw += np.stack([np.asarray(c[key], np.float64).reshape(cw.shape[1:]) for key in
                        ("weight", "sum_score", "sum_target")])


def _new_state(K, n_bins, n_boot, classwise_bins):
    cw = np.zeros((3, K, classwise_bins)) if classwise_bins else None
    return [np.zeros((4, n_bins)), np.zeros((5, 2 * (36 << 7))), np.zeros((n_boot, 3, n_bins)), np.zeros(6), cw]


FUSED_CASES = [  # (rows, dtype, logits, weighted, classwise); one chunk of K = 10 is 3276 rows
    (1, np.float64, False, False, False), (37, np.float16, True, True, True), (1024, np.float32, False, False, False),
    (1024, np.float32, True, True, True), (1024, np.float64, False, True, True), (3276, np.float16, False, False, True),
    (3277, np.float32, True, False, False), (20000, np.float32, False, True, True), (20000, np.float64, True, True, False),
]


@pytest.mark.parametrize("n,dtype,logits,weighted,classwise", FUSED_CASES)
def test_fused_update_equals_the_two_kernel_calls(backend, n, dtype, logits, weighted, classwise):
    rng = np.random.default_rng(n)
    K, M, B = 10, 15, 3
    p = random_probs(rng, n, K)
    y = labels_from(rng, p)
    scores = (np.log(p + 1e-9) * 1.7 if logits else p).astype(dtype)
    w = rng.random(n) * 2 if weighted else None
    inv_t = 1 / 1.3 if logits else 1.0
    cwb = M if classwise else 0
    k = _backend.kernels(backend)
    fused, ref = _new_state(K, M, B, cwb), _new_state(K, M, B, cwb)
    for offset in (5, 5 + n):  # twice: adds into a state that already holds rows
        st = _fused_update(k)(scores, y, w, logits, _nll_eps(scores.dtype), inv_t, offset, M, 7, 36, B, 3,
                              *fused[:4], cwb, fused[4])
        assert st[0] == 0
        _two_step(k, scores, y, w, logits, inv_t, offset, M, B, cwb, ref)
    for a, b in zip(fused, ref):
        if a is not None:
            np.testing.assert_array_equal(a, b)  # bit for bit


@pytest.mark.parametrize("n", [50, 5000])
def test_fused_update_agrees_across_backends_and_threads(n, threads):
    rng = np.random.default_rng(1)
    p = random_probs(rng, n, 10, dtype=np.float32)
    y = labels_from(rng, p)
    states = []
    for backend in ("cpp", "numba"):
        for t in (1, 2):
            calibkit.set_num_threads(t)
            acc = CalibrationAccumulator(backend=backend, classwise=True, bootstrap=4)
            acc.update(p, y).update(p[: n // 2], y[: n // 2])
            states.append(acc)
    for other in states[1:]:
        np.testing.assert_array_equal(other._bins, states[0]._bins)
        np.testing.assert_array_equal(other._fine, states[0]._fine)
        np.testing.assert_array_equal(other._boot, states[0]._boot)
        np.testing.assert_allclose(other._totals, states[0]._totals, rtol=1e-12)
        np.testing.assert_allclose(other._classwise_bins, states[0]._classwise_bins, rtol=1e-12)
    # bit-identical for any thread count within a backend
    for i in (0, 2):
        np.testing.assert_array_equal(states[i]._totals, states[i + 1]._totals)
        np.testing.assert_array_equal(states[i]._classwise_bins, states[i + 1]._classwise_bins)


BAD_BATCHES = [
    ("label", lambda p, y, w: (p, np.where(np.arange(len(y)) == 17, 12, y), w),
     r"labels\[17\] = 12 is out of range for n_classes=10"),
    ("negative label", lambda p, y, w: (p, np.where(np.arange(len(y)) == 3, -1, y), w),
     r"labels\[3\] = -1 is out of range for n_classes=10"),
    ("nan", lambda p, y, w: (np.where((np.arange(p.size) == 42).reshape(p.shape), np.nan, p), y, w),
     r"scores\[4, 2\] = nan is not finite"),
    ("probability", lambda p, y, w: (np.where((np.arange(p.size) == 55).reshape(p.shape), 1.5, p), y, w),
     r"scores\[5, 5\] = 1.5 is not a probability in \[0, 1\]"),
    ("negative weight", lambda p, y, w: (p, y, np.where(np.arange(len(y)) == 9, -2.0, w)),
     r"sample_weight\[9\] = -2.0 is outside \[1e-300, 1e\+300\]"),
    ("nan weight", lambda p, y, w: (p, y, np.where(np.arange(len(y)) == 11, np.nan, w)),
     r"sample_weight\[11\] = nan is not finite"),
]


@pytest.mark.parametrize("name,corrupt,match", BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES])
@pytest.mark.parametrize("n", [100, 5000])
def test_bad_batch_gives_the_same_error_and_adds_nothing(backend, name, corrupt, match, n):
    rng = np.random.default_rng(2)
    p = random_probs(rng, n, 10)
    y = labels_from(rng, p)
    w = np.ones(n)
    acc = CalibrationAccumulator(backend=backend, classwise=True, bootstrap=2)
    fresh = CalibrationAccumulator(backend=backend, classwise=True, bootstrap=2)
    bp, by, bw = corrupt(p, y, w)
    with pytest.raises(ValueError, match=match):
        acc.update(bp, by, bw)
    assert acc._kind is None and acc._classwise_bins is None and acc.n_classes is None
    assert acc.count == 0 and not acc._bins.any() and not acc._fine.any() and not acc._boot.any()
    acc.update(p, y, w)  # after an error the accumulator is as new
    fresh.update(p, y, w)
    np.testing.assert_array_equal(acc._bins, fresh._bins)
    np.testing.assert_array_equal(acc._totals, fresh._totals)
    with pytest.raises(ValueError, match=match):
        acc.update(bp, by, bw)
    np.testing.assert_array_equal(acc._totals, fresh._totals)
    np.testing.assert_array_equal(acc._classwise_bins, fresh._classwise_bins)


def test_fused_binding_checks_its_arguments():
    """The C++ entry point checks every argument (in a subprocess: a bad buffer must not crash the run)."""
    code = """
    import numpy as np
    from calibkit import _core
    from calibkit._numba.stream import stream_top_label as numba_fused
    p = np.full((4, 3), 1 / 3); y = np.zeros(4, np.int64)
    def state(M=15, K=3, cw=0):
        return [np.zeros((4, M)), np.zeros((5, 2 * (36 << 7))), np.zeros((0, 3, M)), np.zeros(6),
                np.zeros((3, K, cw)) if cw else None]
    def call(f, *, scores=p, labels=y, st=None, cwb=0, inv_t=1.0, logits=False):
        s = st or state(cw=cwb)
        return f(scores, labels, None, logits, 1e-7, inv_t, 0, 15, 7, 36, 0, 0, *s[:4], cwb, s[4])
    cases = {
        "totals shape": dict(st=state()[:3] + [np.zeros(5), None]),
        "bins shape": dict(st=[np.zeros((4, 14))] + state()[1:]),
        "classwise missing": dict(cwb=15, st=state()),
        "classwise given without bins": dict(st=state(cw=15)),
        "labels dtype": dict(labels=y.astype(np.int32)),
        "labels length": dict(labels=y[:3]),
        "scores ndim": dict(scores=p[0]),
        "inverse temperature of probabilities": dict(inv_t=0.5),
    }
    for name, kw in cases.items():
        for backend, f in (("cpp", _core.stream_top_label), ("numba", numba_fused)):
            try:
                call(f, **kw)
            except (ValueError, TypeError) as exc:
                print(backend, name, "->", type(exc).__name__)
            else:
                print(backend, name, "-> accepted")
    """
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert "accepted" not in r.stdout, r.stdout
    assert r.stdout.count("->") == 16


def test_small_calls_never_start_threads():
    """A batch below one chunk runs on the calling thread: the C++ pool makes no thread, Numba loads no
    threading layer; a big call does start them (so the probe works)."""
    code = """
    import os, numpy as np, numba, calibkit
    calibkit.set_num_threads(2)
    def n_threads():
        return len(os.listdir("/proc/self/task"))
    def numba_layer():
        try:
            return numba.threading_layer()
        except ValueError:
            return None
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), 1024).astype(np.float32); y = rng.integers(0, 10, 1024)
    def small_calls(backend):
        acc = calibkit.CalibrationAccumulator(backend=backend, classwise=True)
        for _ in range(3):
            acc.update(p, y)
            calibkit.ece(p[:100], y[:100], backend=backend)
            calibkit.brier_score(p[:100], y[:100], backend=backend)
            calibkit.reliability_table(p[:100], y[:100], backend=backend)
    before = n_threads()
    small_calls("cpp")  # the first C++ calls of the process: a pool would start its workers here
    cpp_new = n_threads() - before
    small_calls("numba")  # loads the Numba functions (its runtime may start a helper thread once)
    before = n_threads()
    small_calls("numba")
    print("small", cpp_new, n_threads() - before, numba_layer())
    before = n_threads()
    big = np.tile(p, (64, 1)); yb = np.tile(y, 64)
    calibkit.ece(big, yb, backend="cpp")
    calibkit.ece(big, yb, backend="numba")
    print("big", n_threads() - before, numba_layer())
    """
    r = _run(code, env={"CALIBKIT_NUM_THREADS": "2"}, timeout=300)
    assert r.returncode == 0, r.stderr
    small, big = r.stdout.split("\n")[:2]
    assert small == "small 0 0 None", r.stdout
    assert big.split()[1] != "0" and big.split()[2] != "None", r.stdout


@pytest.mark.parametrize("M", [1, 2, 15, 64, 65, 1000])
def test_errors_from_bins_small_and_large_paths(M):
    """Both paths (Python floats up to 64 bins, NumPy above) sum the bins in order: same numbers."""
    rng = np.random.default_rng(M)
    w = rng.random(M) * (rng.random(M) < 0.7)
    sc = w * rng.random(M)
    sa = w * rng.random(M)
    ece, mce, rms = _errors_from_bins(w, sc, sa)
    filled = w > 0
    gap = np.abs(sa[filled] / w[filled] - sc[filled] / w[filled])
    frac = w[filled] / np.cumsum(w)[-1] if M else w
    assert ece == float(np.cumsum(frac * gap)[-1]) if gap.size else ece == 0.0
    assert mce == (float(gap.max()) if gap.size else 0.0)
    assert rms == (math.sqrt(float(np.cumsum(frac * gap * gap)[-1])) if gap.size else 0.0)
    assert isinstance(ece, float) and isinstance(mce, float) and isinstance(rms, float)


def test_errors_from_bins_with_every_bin_empty():
    assert _errors_from_bins(np.zeros(5), np.zeros(5), np.zeros(5)) == (0.0, 0.0, 0.0)
    assert _errors_from_bins(np.zeros(100), np.zeros(100), np.zeros(100)) == (0.0, 0.0, 0.0)


def test_stream_compute_still_equals_the_one_shot_metric(backend):
    rng = np.random.default_rng(3)
    p = random_probs(rng, 700, 10, dtype=np.float32)
    y = labels_from(rng, p)
    acc = CalibrationAccumulator(n_bins=15, backend=backend)
    for i in range(0, 700, 100):
        acc.update(p[i:i + 100], y[i:i + 100])
    r = acc.compute()
    assert r.ece == pytest.approx(calibkit.ece(p, y, backend=backend), rel=1e-12)
    assert r.mce == pytest.approx(calibkit.mce(p, y, backend=backend), rel=1e-12)


@pytest.mark.parametrize("layout", ["byteswapped", "fortran", "strided", "readonly", "misaligned", "list"])
def test_validation_fast_path_keeps_every_layout(backend, layout):
    rng = np.random.default_rng(4)
    p = random_probs(rng, 200, 10)
    y = labels_from(rng, p)
    expected = calibkit.ece(p, y, backend=backend)
    q, z = p, y
    if layout == "byteswapped":
        q, z = p.astype(p.dtype.newbyteorder()), y.astype(y.dtype.newbyteorder())
    elif layout == "fortran":
        q = np.asfortranarray(p)
    elif layout == "strided":
        q2, z2 = np.repeat(p, 2, axis=0), np.repeat(y, 2)
        q, z = q2[::2], z2[::2]
    elif layout == "readonly":
        q, z = p.copy(), y.copy()
        q.setflags(write=False)
        z.setflags(write=False)
    elif layout == "misaligned":
        buf = np.zeros(p.size * 8 + 1, np.uint8)
        q = buf[1:].view(np.float64).reshape(p.shape)
        q[...] = p
        buf2 = np.zeros(y.size * 8 + 1, np.uint8)
        z = buf2[1:].view(np.int64)
        z[...] = y
    elif layout == "list":
        q, z = p.tolist(), y.tolist()
    assert calibkit.ece(q, z, backend=backend) == expected
    acc, ref = CalibrationAccumulator(backend=backend), CalibrationAccumulator(backend=backend)
    acc.update(q, z)
    ref.update(p, y)
    np.testing.assert_array_equal(acc._totals, ref._totals)


@pytest.mark.parametrize("labels,exc,match", [
    (np.zeros(5, np.int32) + 1, None, None),
    (np.zeros(5, np.uint64), None, None),
    (np.zeros(5, bool), None, None),
    (np.zeros((5, 1), np.int64), None, None),
    (np.zeros(4, np.int64), ValueError, r"labels has 4 entries but scores has 5 rows"),
    (np.zeros((5, 2), np.int64), ValueError, r"labels must have shape \(N,\), got shape \(5, 2\)"),
    (np.zeros(5, np.float64), TypeError, r"labels must be integers, got dtype float64"),
])
def test_label_checks_after_the_fast_path(backend, labels, exc, match):
    p = np.full((5, 3), 1 / 3)
    if exc is None:
        expected = calibkit.ece(p, np.asarray(labels).reshape(-1).astype(np.int64), backend=backend)
        assert calibkit.ece(p, labels, backend=backend) == expected
        CalibrationAccumulator(backend=backend).update(p, labels)
    else:
        with pytest.raises(exc, match=match):
            calibkit.ece(p, labels, backend=backend)
        with pytest.raises(exc, match=match):
            CalibrationAccumulator(backend=backend).update(p, labels)


def test_reliability_table_edges_are_fresh_copies(backend):
    p = np.full((5, 3), 1 / 3)
    y = np.zeros(5, np.int64)
    t1 = calibkit.reliability_table(p, y, n_bins=4, backend=backend)
    t1.lower[0] = 99.0  # a user may write into the table: the cached edges must not change
    t2 = calibkit.reliability_table(p, y, n_bins=4, backend=backend)
    np.testing.assert_array_equal(t2.lower, [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_array_equal(t2.upper, [0.25, 0.5, 0.75, 1.0])
    assert t2.lower.flags.writeable


def test_fused_numba_small_path_does_not_use_the_general_kernels(monkeypatch):
    """A Numba batch of at most one chunk runs the serial fused function only."""
    from calibkit._numba import stream as numba_stream

    def refuse(*args, **kwargs):
        raise AssertionError("the small path called a general kernel")

    monkeypatch.setattr(numba_stream, "top_label_stats", refuse)
    monkeypatch.setattr(numba_stream, "run_locked", refuse)
    rng = np.random.default_rng(5)
    p = random_probs(rng, 3276, 10, dtype=np.float32)
    y = labels_from(rng, p)
    acc = CalibrationAccumulator(backend="numba", classwise=True)
    acc.update(p, y)
    assert acc.count == 3276
    with pytest.raises(AssertionError, match="general kernel"):
        acc.update(np.concatenate([p, p[:1]]), np.concatenate([y, y[:1]]))  # 3277 rows: two chunks
    assert acc.count == 3276


# -- the Numba one-call path of top_label_stats and the idle thread pools ------------------------------

SMALL_TLS_CASES = [  # (rows, K, dtype, logits, weighted, n_bins, with_nll, inverse temperature)
    (1, 2, np.float64, False, False, 15, True, 1.0), (100, 10, np.float32, False, False, 15, False, 1.0),
    (100, 10, np.float16, False, True, 15, True, 1.0), (100, 10, np.float32, True, False, 0, True, 0.7),
    (257, 40, np.float32, True, True, 1, True, 1.0), (257, 40, np.float64, True, False, 7, False, 2.0),
    (3276, 10, np.float32, False, True, 15, True, 1.0),  # one chunk exactly
    (3277, 10, np.float32, False, True, 15, True, 1.0),  # two chunks: binning's driver
]


@pytest.mark.parametrize("n,K,dtype,logits,weighted,n_bins,with_nll,inv_t", SMALL_TLS_CASES)
def test_numba_small_top_label_stats_is_the_drivers(n, K, dtype, logits, weighted, n_bins, with_nll, inv_t):
    """calibkit._numba.top_label_stats (one jitted call for an input of one chunk) gives the threaded
    driver's sums bit for bit, in the same format; bad rows give the same status."""
    from calibkit import _numba
    from calibkit._numba import binning

    rng = np.random.default_rng(n + K)
    scores = (rng.normal(size=(n, K)) * 3).astype(dtype) if logits else random_probs(rng, n, K, dtype=dtype)
    labels = rng.integers(0, K, n)
    w = rng.random(n) if weighted else None
    args = (scores, labels, w, logits, n_bins, _nll_eps(scores.dtype), with_nll)
    fast = _numba.top_label_stats(*args, inverse_temperature=inv_t)
    ref = binning.top_label_stats(*args, inverse_temperature=inv_t)
    assert fast.keys() == ref.keys()
    for key in ("count", "weight", "sum_score", "sum_target"):
        assert fast[key].dtype == ref[key].dtype and np.array_equal(fast[key], ref[key]), key
    assert fast["status"] == ref["status"] == (0, -1, -1, 0.0)
    for key, value in ref["totals"].items():
        got = fast["totals"][key]
        assert type(got) is type(value) and (got == value or (math.isnan(got) and math.isnan(value))), key
    bad_labels = labels.copy()
    bad_labels[n // 2] = K
    assert (_numba.top_label_stats(scores, bad_labels, *args[2:])["status"]
            == binning.top_label_stats(scores, bad_labels, *args[2:])["status"])


def test_numba_fine_bin_matches_a_frexp_reference():
    """The fine bucket of a confidence, read from its bits, is the one of the frexp definition."""
    from calibkit._numba.stream import fine_bin

    rng = np.random.default_rng(3)
    cs = np.concatenate([rng.random(2000), 1 - rng.random(2000) ** 8, rng.random(2000) ** 30,
                         [0.0, -0.0, 0.25, 0.5, 0.75, 1.0, 1.0000001, 5e-324, 1e-310, 2.0 ** -37, 2.0 ** -38,
                          1 - 2.0 ** -53, np.nextafter(0.5, 0), np.nextafter(0.5, 1)]])

    def reference(c, bits, levels):
        size, side = 2 * (levels << bits), levels << bits
        if not c > 0:
            return 0
        if not c < 1:
            return size - 1

        def rank(d):
            m, e = math.frexp(d)
            level = -(e - 1) - 2
            if level < 0:
                return side - 1
            if level >= levels:
                return 0
            return ((levels - 1 - level) << bits) + int(math.floor((2 * m - 1) * (1 << bits)))
        return rank(c) if c <= 0.5 else size - 1 - rank(1.0 - c)

    for bits, levels in ((0, 1), (7, 36), (12, 1000), (3, 5)):
        got = [fine_bin(float(c), bits, levels) for c in cs]
        assert got == [reference(float(c), bits, levels) for c in cs], (bits, levels)


def test_idle_pools_do_not_spin():
    """After a parallel call, the idle worker threads of both backends sleep: they use (almost) no CPU
    while the caller sleeps or runs small calls. CPU ticks, not wall-clock times: a spinning worker
    would use about all of them. Numba's threading layer is not GNU OpenMP (which spin-waits)."""
    code = """
    import os, time, numpy as np, numba, calibkit
    calibkit.set_num_threads(2)
    me = str(os.getpid())
    def others():
        total = 0
        for t in os.listdir("/proc/self/task"):
            if t == me:
                continue
            try:
                stat = open(f"/proc/self/task/{t}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        return total
    rng = np.random.default_rng(0)
    big = rng.dirichlet(np.ones(10), 100000).astype(np.float32); yb = rng.integers(0, 10, 100000)
    for backend in ("cpp", "numba"):
        acc = calibkit.CalibrationAccumulator(backend=backend)
        calibkit.ece(big, yb, backend=backend)  # a parallel call: the workers exist and have run
        before = others()
        time.sleep(0.5)
        t0 = time.time()
        while time.time() - t0 < 0.5:
            acc.update(big[:1000], yb[:1000])
        print(backend, others() - before)
    print("layer", numba.threading_layer())
    """
    r = _run(code, env={"CALIBKIT_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split() for line in r.stdout.strip().splitlines())
    ticks = os.sysconf("SC_CLK_TCK")
    for backend in ("cpp", "numba"):
        assert int(lines[backend]) < 0.2 * ticks, r.stdout  # a spinning worker: ~1 s of CPU here
    assert lines["layer"] != "omp", r.stdout


# -- round 2: compute(), class-wise and quantile small calls, the stream pass ----------------------------------


def _equal_mass_reference(acc):
    """The equal-mass pass as a mask over all fine buckets (the implementation before the compressed one)."""
    from calibkit.metrics import _errors_from_bins as errors

    count, w, sc, sy, spread = acc._fine
    total = w.sum()
    cum = np.cumsum(w)
    M, R = acc.n_bins, acc.fine_bins
    targets = np.arange(1, M) * (total / M)
    coarse = np.searchsorted(targets, cum - w + w / 2, side="left")
    ace = errors(*(np.bincount(coarse, weights=x, minlength=M) for x in (w, sc, sy)))[0]
    holds_edge = np.zeros(R, dtype=bool)
    if acc._weighted:
        holds_edge[np.minimum(np.searchsorted(cum, targets, side="left"), R - 1)] = True
    else:
        n = int(round(count.sum()))
        ccount = np.cumsum(count)
        p = np.arange(1, M) * (n - 1) / M
        lo = np.searchsorted(ccount, np.floor(p), side="right")
        hi = np.searchsorted(ccount, np.ceil(p), side="right")
        for a, b in zip(lo, hi):
            holds_edge[a:min(b, R - 1) + 1] = True
    return ace, float(2.0 * spread[holds_edge].sum() / total)


@pytest.mark.parametrize("seed", range(40))
def test_equal_mass_over_rows_buckets_equals_the_full_mask(seed):
    """compute()'s equal-mass pass runs on the buckets holding rows only: the same ace and bound, bit for bit."""
    rng = np.random.default_rng(seed)
    n, K, M = int(rng.integers(1, 3000)), int(rng.integers(2, 6)), int(rng.integers(1, 40))
    p = rng.dirichlet(np.ones(K) * rng.choice([0.05, 0.5, 3.0]), size=n)
    if seed % 4 == 0:
        p = np.round(p, 2) + 1e-3
        p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, K, n)
    w = None if seed % 2 else rng.random(n) * (rng.random(n) < 0.7) + (np.arange(n) == 0)
    acc = CalibrationAccumulator(M, fine_bits=int(rng.integers(0, 8)), fine_levels=int(rng.integers(1, 40)))
    acc.update(p, y, w)
    if seed % 5 == 0:
        acc.update(p[::-1], y, w)
    assert acc._equal_mass() == _equal_mass_reference(acc)


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_classwise_errors_equal_the_per_class_loop(norm):
    from calibkit.metrics import _classwise_errors, _norm_value

    rng = np.random.default_rng(5)
    for M in (1, 2, 15, 64, 65, 200):
        K = int(rng.integers(2, 12))
        w = rng.random((K, M)) * (rng.random((K, M)) < 0.6)
        w[0] = 0.0  # a class without weight (0 in both)
        if M % 2:
            w = np.round(w * 5)
        sp, sy = w * rng.random((K, M)), w * rng.random((K, M))
        want = [_norm_value(_errors_from_bins(w[c], sp[c], sy[c]), norm) for c in range(K)]
        got = _classwise_errors(w, sp, sy, norm)
        np.testing.assert_array_equal(got, want)
        assert np.add.reduce(got) / K == np.mean(want)  # classwise_calibration_error's mean


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_linear_quantiles_are_numpys(dtype):
    from calibkit.metrics import _linear_quantiles

    rng = np.random.default_rng(6)
    for trial in range(300):
        n, M = int(rng.integers(1, 400)), int(rng.choice([1, 2, 3, 10, 15, 50, 2000]))
        x = rng.random(n).astype(dtype)
        if trial % 3 == 0:
            x = np.round(x, 1).astype(dtype)  # ties
        want = np.quantile(x, np.linspace(0, 1, M + 1))
        got = _linear_quantiles(x, M)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_stream_state_on_special_confidences_agrees_across_backends():
    """Confidences at 0, 1, 1/2, subnormal, tiny and next to 1 land in the same bins and fine buckets on both
    backends (the C++ stream pass finds checked rows' fine buckets without branches), bit for bit."""
    rng = np.random.default_rng(8)
    special = np.array([0.0, 1.0, 0.5, 0.25, 0.75, 5e-324, 1e-310, 2.0 ** -37, 2.0 ** -38, 1e-12, 1 - 2.0 ** -53,
                        np.nextafter(0.5, 0), np.nextafter(0.5, 1), 1 / 3, 2 / 3, 0.1, 0.9])
    conf = np.concatenate([np.tile(special, 20), rng.random(500), 1 - rng.random(500) ** 12])
    target = rng.integers(0, 2, conf.shape[0]).astype(np.uint8)
    for weights in (None, rng.random(conf.shape[0])):
        for bits, levels in ((0, 1), (7, 36), (3, 5), (12, 60)):
            states = []
            for b in ("cpp", "numba"):
                k = _backend.kernels(b)
                bins, fine = np.zeros((4, 15)), np.zeros((5, 2 * (levels << bits)))
                boot = np.zeros((3, 3, 15))
                assert k.stream_accumulate(conf, target, weights, 7, 15, bits, levels, 3, 1, bins, fine, boot)[0] == 0
                states.append((bins, fine, boot))
            for x, y in zip(*states):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("n,K,dtype,logits,weighted,n_bins", [
    (1, 2, np.float64, False, False, 1), (100, 10, np.float32, False, False, 15), (100, 10, np.float32, True, True, 15),
    (37, 40, np.float16, True, False, 7), (3000, 3, np.float64, False, True, 20), (500, 4, np.float32, False, False, 300),
])
def test_numba_small_classwise_stats_is_the_drivers(n, K, dtype, logits, weighted, n_bins):
    """The Numba one-call class-wise path gives binning.classwise_stats' result, bit for bit, and its errors."""
    from calibkit import _numba
    from calibkit._numba import binning

    rng = np.random.default_rng(n + K)
    scores = (rng.normal(size=(n, K)) * 3 if logits else random_probs(rng, n, K)).astype(dtype)
    labels = rng.integers(0, K, n)
    w = rng.random(n) if weighted else None
    fast = _numba.classwise_stats(scores, labels, w, logits, n_bins, None)
    ref = binning.classwise_stats(scores, labels, w, logits, n_bins, None)
    assert fast.keys() == ref.keys()
    for key in ("count", "weight", "sum_score", "sum_target"):
        assert fast[key].dtype == ref[key].dtype and np.array_equal(fast[key], ref[key]), key
    assert tuple(fast["status"]) == tuple(ref["status"]) == (0, -1, -1, 0.0)
    bad_labels = labels.copy()
    bad_labels[-1] = K
    assert (tuple(_numba.classwise_stats(scores, bad_labels, w, logits, n_bins, None)["status"])
            == tuple(binning.classwise_stats(scores, bad_labels, w, logits, n_bins, None)["status"]))


@pytest.mark.parametrize("n,K,dtype,logits,weighted", [
    (1, 2, np.float64, False, False), (100, 10, np.float32, False, True), (100, 40, np.float16, True, False),
    (3276, 10, np.float32, True, True),
])
def test_numba_small_top_label_stats_with_row_outputs_is_the_drivers(n, K, dtype, logits, weighted):
    """The one-call path also writes the per-row confidences and correctness (the quantile metrics need them)."""
    from calibkit import _numba
    from calibkit._numba import binning

    rng = np.random.default_rng(n * K)
    scores = (rng.normal(size=(n, K)) * 3 if logits else random_probs(rng, n, K)).astype(dtype)
    labels = rng.integers(0, K, n)
    w = rng.random(n) if weighted else None
    outs = []
    for f in (_numba.top_label_stats, binning.top_label_stats):
        conf, correct = np.full(n, -1.0), np.full(n, 7, np.uint8)
        r = f(scores, labels, w, logits, 0, 1e-7, False, conf, correct)
        outs.append((r, conf, correct))
    (fast, c1, y1), (ref, c2, y2) = outs
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(y1, y2)
    assert fast["totals"] == pytest.approx(ref["totals"], nan_ok=True, rel=0, abs=0)
    assert tuple(fast["status"]) == tuple(ref["status"]) == (0, -1, -1, 0.0)
    with pytest.raises(ValueError):  # a wrong output still gets binning's error
        _numba.top_label_stats(scores, labels, w, logits, 0, 1e-7, False, np.empty(n + 1), np.empty(n, np.uint8))
