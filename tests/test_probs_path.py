"""The probability-row path of the top-label kernel and the fused streaming update (issue 13).

Covers: the equal-width bin index (an integer guess settled against the exact edges) at and
beside every edge; the chunk-level label / weight pre-check of short probability rows (the same
first error as the per-row checks); the fused update's stream pass on rows already checked (the
same state as the two separate calls, C++ == Numba bit for bit), including float32 logit rows of
K >= 16 on the Numba backend (the single-precision flag of its small-batch path).
"""


import numpy as np
import pytest

import calibkit
from calibkit import _backend
from calibkit.streaming import _fused_update
from subprocess_cases import simd_clone_outputs


def _kernels(backend):
    return _backend.kernels(backend)


def _probs(rng, n, k, dtype=np.float32):
    z = rng.normal(scale=2.0, size=(n, k))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.astype(dtype)


@pytest.mark.parametrize("n_bins", [2, 3, 7, 10, 15, 49, 100])
def test_bins_at_and_beside_every_edge(backend, n_bins):
    # Confidences exactly on an edge m / M (the bin below it), one ulp either side, and 0 / 1.
    edges = np.arange(1, n_bins, dtype=np.float64) / n_bins
    c = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, 1), [0.0, 1.0, 0.5, 1e-300]])
    c = np.clip(c, 0.0, 1.0)
    y = (np.arange(c.size) % 2).astype(np.int64)
    r = _kernels(backend).binary_stats(c, y, None, n_bins, None, 1e-15)
    expect = np.bincount(np.searchsorted(edges, c, side="left"), minlength=n_bins)
    np.testing.assert_array_equal(r["count"], expect)


@pytest.mark.parametrize("n_bins", [3, 10, 15])
def test_top_label_bins_match_searchsorted(backend, n_bins):
    rng = np.random.default_rng(n_bins)
    p = _probs(rng, 5000, 10, np.float64)
    # Rows whose maximum sits exactly on an edge.
    p[:n_bins - 1] = 0.0
    for m in range(1, n_bins):
        if m / n_bins >= 0.5:
            p[m - 1, 0], p[m - 1, 1] = m / n_bins, 1 - m / n_bins
    p = p[(p.max(1) > 0)]
    y = rng.integers(0, 10, p.shape[0])
    r = _kernels(backend).top_label_stats(p, y, None, False, n_bins, 1e-15, with_nll=False)
    edges = np.arange(1, n_bins, dtype=np.float64) / n_bins
    np.testing.assert_array_equal(r["count"], np.bincount(np.searchsorted(edges, p.max(1)), minlength=n_bins))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
def test_short_prob_rows_backends_bit_identical(dtype, weighted):
    rng = np.random.default_rng(3)
    for k in (2, 5, 10, 15):
        p = _probs(rng, 70001, k, dtype)
        y = rng.integers(0, k, p.shape[0])
        w = rng.uniform(0, 2, p.shape[0]) if weighted else None
        a = _kernels("cpp").top_label_stats(p, y, w, False, 15, 1e-7, with_nll=True)
        b = _kernels("numba").top_label_stats(p, y, w, False, 15, 1e-7, with_nll=True)
        for key in ("count", "weight", "sum_score", "sum_target"):
            np.testing.assert_array_equal(a[key], b[key])
        for key in ("count", "weight", "correct", "confidence", "brier", "nll"):
            assert a["totals"][key] == b["totals"][key], key


@pytest.mark.parametrize("where", [0, 1, 40000, 70000])
@pytest.mark.parametrize("bad", ["label", "negative_label", "nan_weight", "inf_weight", "negative_weight"])
def test_first_bad_label_or_weight_named(backend, where, bad):
    rng = np.random.default_rng(5)
    p = _probs(rng, 70001, 10)
    y = rng.integers(0, 10, p.shape[0])
    w = np.ones(p.shape[0])
    if bad == "label":
        y[where] = 10
        msg = rf"labels\[{where}\] = 10"
    elif bad == "negative_label":
        y[where] = -3
        msg = rf"labels\[{where}\] = -3"
    else:
        w[where] = {"nan_weight": np.nan, "inf_weight": np.inf, "negative_weight": -1.0}[bad]
        msg = rf"sample_weight\[{where}\]"
    if where + 7 < p.shape[0]:  # a later bad row must not win
        y[where + 7] = 11
    with pytest.raises(ValueError, match=msg):
        calibkit.ece(p, y, sample_weight=w, backend=backend)
    acc = calibkit.CalibrationAccumulator(n_bins=10, backend=backend)
    with pytest.raises(ValueError, match=msg):
        acc.update(p[:1024] if where < 1024 else p, y[:1024] if where < 1024 else y,
                   sample_weight=w[:1024] if where < 1024 else w)


def test_bad_probability_still_named_after_clean_meta(backend):
    rng = np.random.default_rng(6)
    p = _probs(rng, 3000, 10)
    y = rng.integers(0, 10, 3000)
    p[2100, 4] = 1.5
    with pytest.raises(ValueError, match=r"2100.*4|1\.5"):
        calibkit.ece(p, y, backend=backend)
    p[2100, 4] = np.nan
    with pytest.raises(ValueError, match="2100"):
        calibkit.CalibrationAccumulator(backend=backend).update(p[:3000], y)


def _fresh_state(n_bins, fine_bits, fine_levels, n_boot):
    R = 2 * (fine_levels << fine_bits)
    return (np.zeros((4, n_bins)), np.zeros((5, R)), np.zeros((n_boot, 3, n_bins)), np.zeros(6))


@pytest.mark.parametrize("n_rows", [1, 17, 1024, 3276, 40000])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n_boot", [0, 3])
def test_fused_update_equals_separate_calls(backend, n_rows, weighted, n_boot):
    rng = np.random.default_rng(n_rows)
    p = _probs(rng, n_rows, 10)
    y = rng.integers(0, 10, n_rows)
    w = rng.uniform(0, 3, n_rows) if weighted else None
    k = _kernels(backend)
    bins, fine, boot, totals = _fresh_state(15, 7, 36, n_boot)
    st = _fused_update(k)(p, y, w, False, 1e-7, 1.0, 5, 15, 7, 36, n_boot, 9, bins, fine, boot, totals, 0, None)
    assert st[0] == 0
    conf = np.empty(n_rows)
    correct = np.empty(n_rows, np.uint8)
    r = k.top_label_stats(p, y, w, False, 0, 1e-7, True, conf, correct)
    b2, f2, r2, _ = _fresh_state(15, 7, 36, n_boot)
    assert k.stream_accumulate(conf, correct, w, 5, 15, 7, 36, n_boot, 9, b2, f2, r2)[0] == 0
    np.testing.assert_array_equal(bins, b2)
    np.testing.assert_array_equal(fine, f2)
    np.testing.assert_array_equal(boot, r2)
    t = r["totals"]
    np.testing.assert_array_equal(totals, [t["count"], t["weight"], t["correct"], t["confidence"], t["brier"],
                                           t["nll"]])


@pytest.mark.parametrize("from_logits,k", [(False, 10), (False, 3), (True, 10), (True, 20), (True, 100)])
def test_fused_update_backends_bit_identical(from_logits, k):
    rng = np.random.default_rng(k)
    z = rng.normal(scale=3, size=(1024, k)).astype(np.float32)
    s = z if from_logits else _probs(rng, 1024, k)
    y = rng.integers(0, k, 1024)
    states = []
    for backend in ("cpp", "numba"):
        acc = calibkit.CalibrationAccumulator(n_bins=15, from_logits=from_logits, bootstrap=2, backend=backend)
        for _ in range(3):
            acc.update(s, y)
        states.append({n: getattr(acc, n).copy() for n in ("_bins", "_fine", "_boot", "_totals")})
    for name in states[0]:
        if from_logits and k < 16:  # short double logit rows: the backends' exps agree to rounding only
            np.testing.assert_allclose(states[0][name], states[1][name], rtol=1e-12, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(states[0][name], states[1][name], err_msg=name)


def test_sse2_and_avx2_and_threads_identical():
    code = (
        "import numpy as np, calibkit\n"
        "rng = np.random.default_rng(1)\n"
        "out = []\n"
        "for k in (2, 7, 10, 15):\n"
        "    z = rng.normal(scale=2, size=(90001, k))\n"
        "    p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)\n"
        "    y = rng.integers(0, k, 90001); w = rng.uniform(0, 2, 90001)\n"
        "    for dt in (np.float32, np.float64):\n"
        "        q = p.astype(dt)\n"
        "        for t in (1, 2, 3):\n"
        "            calibkit.set_num_threads(t)\n"
        "            out += [calibkit.ece(q, y, n_bins=15), calibkit.ece(q, y, n_bins=10, sample_weight=w),\n"
        "                    calibkit.brier_score(q, y), calibkit.nll(q, y)]\n"
        "            acc = calibkit.CalibrationAccumulator(n_bins=15).update(q[:1024], y[:1024])\n"
        "            out += [float(acc._fine.sum()), float(acc._bins.sum())]\n"
        "print(repr([float(v).hex() for v in out]))\n"
    )

    runs = simd_clone_outputs(code)
    assert runs[0] == runs[1]
    values = eval(runs[0])
    # each group of 6 values repeats for threads 1, 2, 3
    for g in range(0, len(values), 18):
        assert values[g:g + 6] == values[g + 6:g + 12] == values[g + 12:g + 18]


def _octet_sum_sq(row):
    """binning.hpp's summarize_prob_row sum of squares of one row, in plain Python floats: element k of the
    whole octets in lane k % 8, the rest from the octet ending at K (lane j: element K - 8 + j), the lanes
    combined in octet_sum's order."""
    K = len(row)
    full = K - K % 8
    lanes = [0.0] * 8
    for k in range(full):
        lanes[k % 8] += row[k] * row[k]
    for j in range(8 - K % 8 if K % 8 else 8, 8):
        lanes[j] += row[K - 8 + j] * row[K - 8 + j]
    return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))


@pytest.mark.parametrize("k", [16, 21, 22, 32, 37, 49, 100, 1000])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_long_probability_rows_same_bits_in_both_backends(k, dtype):
    """Rows of K >= 16 probabilities: the row's sum of squares (the Brier term) in the lanes of binning.hpp's
    summarize_prob_row in both backends, not in column order (Numba summed them in column order: the Brier
    score differed from C++ in the last bit for most K). Checked against the lane order in plain Python, and
    C++ == Numba bit for bit on C-ordered, strided and Fortran-ordered rows, weighted, with class-wise bins
    (the rows stored for them) and on 1 and 2 threads."""
    from calibkit._numba import binning as nb

    rng = np.random.default_rng(k)
    n = 3000
    p = _probs(rng, n, k, dtype)
    y = rng.integers(0, k, n)
    w = rng.random(n)
    one = p[:1].astype(np.float64)[0].tolist()
    r = _kernels("cpp").top_label_stats(p[:1], y[:1], None, False, 0, 1e-7, False, None, None, 1.0, 0, None, True)
    assert r["totals"]["brier"] == (_octet_sum_sq(one) - 2.0 * one[y[0]]) + 1.0
    views = {"C": p, "strided": np.repeat(p, 2, axis=1)[:, ::2], "F": np.asfortranarray(p)}
    previous = calibkit.get_num_threads()
    try:
        for name, s in views.items():
            for weights, cw in ((None, 0), (w, 0), (None, 15), (w, 15)):
                got = []
                for mod, threads in ((_kernels("cpp"), 1), (nb, 1), (nb, 2)):
                    calibkit.set_num_threads(threads)
                    got.append(mod.top_label_stats(s, y, weights, False, 15, 1e-7, True, None, None, 1.0, cw, None,
                                                   True))
                for g in got[1:]:
                    for key in ("count", "weight", "sum_score", "sum_target"):
                        assert np.asarray(g[key]).tobytes() == np.asarray(got[0][key]).tobytes(), (name, key)
                    for key, v in got[0]["totals"].items():
                        assert np.float64(g["totals"][key]).tobytes() == np.float64(v).tobytes(), (name, key)
                    if cw:
                        for key in ("count", "weight", "sum_score", "sum_target"):
                            a, b = np.asarray(g["classwise"][key]), np.asarray(got[0]["classwise"][key])
                            assert a.tobytes() == b.tobytes(), (name, "classwise", key)
    finally:
        calibkit.set_num_threads(previous)
    assert calibkit.brier_score(p, y, backend="numba") == calibkit.brier_score(p, y, backend="cpp")
