"""Streaming ECCE (CalibrationResult.cumulative, bounded against the one-shot value) and per-group states
(CalibrationAccumulator(n_groups=G)): results per group, worst groups, mcgrad's multicalibration error,
merge, serialisation, bad input."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import calibkit
from calibkit import CalibrationAccumulator, cumulative_calibration_error as cce

DATA = pathlib.Path(__file__).parent / "data"
TOL = 1e-12


def binary(n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < np.clip(p + shift, 0, 1)).astype(np.int64)
    return p, y, rng.random(n) * 2


def assert_brackets(streamed, one):
    """The exact one-shot value lies in [streamed, streamed + bound] (to rounding)."""
    c = streamed
    assert c.range - TOL <= one.range <= c.range + c.range_bound + TOL
    assert c.max_abs - TOL <= one.max_abs <= c.max_abs + c.max_abs_bound + TOL
    if c.sigma is not None:
        assert abs(c.sigma - one.sigma) <= c.sigma_bound + 1e-15


# -- ECCE from the fine histogram ------------------------------------------------------------------------------

@pytest.mark.parametrize("fine_bits", [0, 3, 7, 12])
@pytest.mark.parametrize("weighted", [False, True])
def test_stream_ecce_bound_binary(backend, fine_bits, weighted):
    p, y, w = binary(5000, fine_bits, shift=0.03)
    w = w if weighted else None
    acc = CalibrationAccumulator(fine_bits=fine_bits, backend=backend)
    for lo in range(0, 5000, 1300):
        acc.update(p[lo:lo + 1300], y[lo:lo + 1300], None if w is None else w[lo:lo + 1300])
    c = acc.compute().cumulative
    one = cce(p, y, sample_weight=w, backend=backend)
    assert_brackets(c, one)
    assert c.sigma == pytest.approx(one.sigma, rel=1e-9) and c.sigma_bound == 0.0  # the state keeps sum w^2 c(1-c)
    assert c.range_sigma == pytest.approx(c.range / c.sigma)
    assert c.range_pvalue == calibkit.cumulative.kuiper_pvalue(c.range_sigma)


def test_stream_ecce_bound_top_label_and_extremes(backend):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(4000, 6)) * 4
    labels = rng.integers(0, 6, 4000)
    acc = CalibrationAccumulator(from_logits=True, backend=backend).update(z, labels)
    assert_brackets(acc.compute().cumulative, cce(z, labels, from_logits=True, backend=backend))
    # Confidences exactly 0, 1/2 and 1 and below the fine range.
    p = np.concatenate([[0.0, 1.0, 0.5, 0.25, 0.75], rng.random(50) * 1e-14, 1 - rng.random(50) * 1e-14,
                        rng.random(500)])
    y = rng.integers(0, 2, p.size)
    acc = CalibrationAccumulator(backend=backend).update(p, y)
    assert_brackets(acc.compute().cumulative, cce(p, y, backend=backend))


def test_stream_ecce_fine_enough_is_tight():
    # Few distinct confidences, each in its own bucket: the boundaries are the whole path's tie-run ends.
    p = np.repeat([0.1, 0.3, 0.6, 0.9], 50)
    y = np.tile([0, 1], 100)
    c = CalibrationAccumulator().update(p, y).compute().cumulative
    one = cce(np.sort(p), y[np.argsort(p, kind="stable")])
    assert c.range <= one.range + TOL


def test_fine_intervals_hold_their_rows():
    from calibkit.cumulative import _fine_confidence_intervals

    rng = np.random.default_rng(0)
    c = np.concatenate([rng.random(300), rng.random(100) ** 20, 1 - rng.random(100) ** 20, [0, 0.5, 1, 0.25]])
    for bits, levels in ((7, 36), (0, 1), (3, 12), (12, 2)):
        acc = CalibrationAccumulator(fine_bits=bits, fine_levels=levels)
        lo, hi = _fine_confidence_intervals(np.arange(acc.fine_bins), bits, levels)
        assert (lo <= hi).all() and (np.diff(lo) >= 0).all()
        for v in c:
            f = int(CalibrationAccumulator(fine_bits=bits, fine_levels=levels).update([v], [0])._fine[0].argmax())
            assert lo[f] <= v <= hi[f], (v, bits, levels, f)


# -- groups ----------------------------------------------------------------------------------------------------

def grouped(n, G, seed):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    p = rng.random(n)
    y = (rng.random(n) < np.clip(p + 0.08 * (g == 1), 0, 1)).astype(np.int64)
    return p, y, g, rng.random(n)


def test_groups_equal_separate_accumulators(backend):
    p, y, g, w = grouped(3000, 4, 1)
    acc = CalibrationAccumulator(n_groups=5, group_fine_bits=3, group_fine_levels=12, backend=backend)
    acc.update(p[:1000], y[:1000], w[:1000], groups=g[:1000]).update(p[1000:], y[1000:], w[1000:], groups=g[1000:])
    r = acc.compute()
    assert r.count == 3000 and r.groups.results[4] is None
    for k in range(4):
        m = g == k
        alone = CalibrationAccumulator(fine_bits=3, fine_levels=12, backend=backend)
        alone.update(p[:1000][m[:1000]], y[:1000][m[:1000]], w[:1000][m[:1000]])
        alone.update(p[1000:][m[1000:]], y[1000:][m[1000:]], w[1000:][m[1000:]])
        assert r.groups.results[k].to_dict() == alone.compute().to_dict()
    assert r.groups.worst["ece"] == 1 and r.groups.worst["ecce_range"] == 1
    assert r.groups.mce_sigma is not None  # weighted: the state keeps sum w^2 c(1-c)


def test_groups_top_label_logits(backend):
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2000, 4)) * 2
    labels = rng.integers(0, 4, 2000)
    g = rng.integers(0, 3, 2000)
    acc = CalibrationAccumulator(from_logits=True, temperature=1.5, n_groups=3, backend=backend)
    r = acc.update(z, labels, groups=g).compute()
    for k in range(3):
        m = g == k
        one = CalibrationAccumulator(from_logits=True, temperature=1.5, backend=backend).update(z[m], labels[m])
        assert r.groups.results[k].ece == one.compute().ece
        assert_brackets(r.groups.results[k].cumulative, cce(z[m] / 1.5, labels[m], from_logits=True))


def test_multicalibration_matches_mcgrad(backend):
    pd = pytest.importorskip("pandas")
    mm = pytest.importorskip("mcgrad.metrics")
    G = 6
    p, y, g, _ = grouped(6000, G, 3)
    df = pd.DataFrame({"y": y, "p": p, "g": g})
    ref = mm.MulticalibrationError(df, "y", "p", categorical_segment_columns=["g"], max_depth=1,
                                   max_values_per_segment_feature=G, min_samples_per_segment=1, max_n_segments=None,
                                   precision_dtype="float64")
    # Its segments: the whole data, then one per group value; each segment's ECCE-sigma is our one-shot value.
    values = ref._segments[1].sort_values("idx_segment")["value"].astype(int).tolist()
    sig = ref.segments_ecce_sigma
    assert abs(sig[0] - cce(p, y, backend=backend).range_sigma) <= 1e-9
    for idx, k in enumerate(values, start=1):
        assert abs(sig[idx] - cce(p[g == k], y[g == k], backend=backend).range_sigma) <= 1e-9
    acc = CalibrationAccumulator(n_groups=G, fine_bits=12, group_fine_bits=12, backend=backend)
    for lo in range(0, 6000, 2500):
        acc.update(p[lo:lo + 2500], y[lo:lo + 2500], groups=g[lo:lo + 2500])
    r = acc.compute().groups
    lo, hi = r.mce_sigma_interval
    assert lo - 1e-9 <= ref.mce_sigma <= hi + 1e-9
    assert r.mce_sigma == pytest.approx(ref.mce_sigma, rel=1e-3)
    assert r.mce_pvalue == pytest.approx(mm.ecce_pvalue_from_sigma(r.mce_sigma), abs=1e-12)
    assert r.worst["ecce_range_sigma"] == 1


def test_groups_serialise_and_old_states(backend, tmp_path):
    p, y, g, _ = grouped(800, 3, 5)
    acc = CalibrationAccumulator(n_groups=3, group_fine_bits=2, group_fine_levels=8, backend=backend)
    acc.update(p, y, groups=g)
    for back in (CalibrationAccumulator.from_bytes(acc.to_bytes()), CalibrationAccumulator.from_dict(acc.to_dict()),
                 acc.copy()):
        assert back.to_bytes() == acc.to_bytes()
        assert back.compute().to_dict() == acc.compute().to_dict()
    empty = CalibrationAccumulator(n_groups=2)
    assert CalibrationAccumulator.from_bytes(empty.to_bytes()).n_groups == 2
    # States written before groups existed still load (and get the streaming ECCE).
    old = CalibrationAccumulator.from_bytes((DATA / "accumulator_v1.bin").read_bytes())
    assert old.n_groups == 0 and old.compute().cumulative is not None


def test_corrupt_group_state():
    from calibkit.streaming import decode_state, encode_state

    p, y, g, _ = grouped(300, 2, 6)
    acc = CalibrationAccumulator(n_groups=2, group_fine_bits=1, group_fine_levels=2).update(p, y, groups=g)
    kind, meta, arrays = decode_state(acc.to_bytes())
    bad = dict(arrays, group_totals=arrays["group_totals"].copy())
    bad["group_totals"][0, 0] += 1
    with pytest.raises(ValueError, match="group"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, bad))
    bad = dict(arrays, group_weighted=np.array([0.5, 0.0]))
    with pytest.raises(ValueError, match="group_weighted"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, bad))
    bad = {k: v for k, v in arrays.items() if k != "group_fine"}
    with pytest.raises(ValueError, match="arrays"):
        CalibrationAccumulator.from_bytes(encode_state(kind, meta, bad))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, 400), max_size=4), weighted=st.booleans(), seed=st.integers(0, 2**16),
       backend=st.sampled_from(["cpp", "numba"]))
def test_split_merge_equals_one_pass(cuts, weighted, seed, backend):
    p, y, g, w = grouped(400, 4, seed)
    w = w if weighted else None
    kw = dict(n_groups=4, group_fine_bits=3, group_fine_levels=10, backend=backend)
    one = CalibrationAccumulator(**kw).update(p, y, w, groups=g)
    bounds = [0, *sorted(cuts), 400]
    merged = CalibrationAccumulator(**kw)
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            part = CalibrationAccumulator(**kw).update(p[a:b], y[a:b], None if w is None else w[a:b],
                                                        groups=g[a:b])
            merged.merge(CalibrationAccumulator.from_bytes(part.to_bytes()))
    r1, r2 = one.compute(), merged.compute()
    assert r1.count == r2.count
    for k in range(4):
        a, b = r1.groups.results[k], r2.groups.results[k]
        assert (a is None) == (b is None)
        if a is not None:
            assert a.count == b.count
            assert a.ece == pytest.approx(b.ece, abs=1e-12)
            assert a.cumulative.range == pytest.approx(b.cumulative.range, abs=1e-12)
    assert r1.groups.worst.keys() == r2.groups.worst.keys()
    assert r1.groups.mce_sigma == pytest.approx(r2.groups.mce_sigma, rel=1e-9)


# -- bad input -------------------------------------------------------------------------------------------------

def test_bad_groups():
    p, y, g, _ = grouped(50, 3, 7)
    acc = CalibrationAccumulator(n_groups=3)
    bad = g.copy()
    bad[17] = 12
    with pytest.raises(ValueError, match=r"groups\[17\] = 12 is out of range for n_groups=3"):
        acc.update(p, y, groups=bad)
    bad[17] = -1
    with pytest.raises(ValueError, match=r"groups\[17\] = -1"):
        acc.update(p, y, groups=bad)
    with pytest.raises(TypeError, match="groups must be integer"):
        acc.update(p, y, groups=g.astype(float))
    with pytest.raises(ValueError, match=r"groups must have shape \(50,\)"):
        acc.update(p, y, groups=g[:10])
    with pytest.raises(ValueError, match="give update"):
        acc.update(p, y)
    with pytest.raises(ValueError, match="n_groups > 0"):
        CalibrationAccumulator().update(p, y, groups=g)
    assert acc.count == 0 and all(s.count == 0 for s in acc._groups)  # nothing added
    # A bad row in the scores: nothing added to the whole state or any group.
    q = p.copy()
    q[3] = 2.0
    with pytest.raises(ValueError, match=r"scores\[3\]"):
        acc.update(q, y, groups=g)
    assert acc.count == 0 and all(s.count == 0 for s in acc._groups)
    with pytest.raises(ValueError, match="n_groups"):
        CalibrationAccumulator(n_groups=2).merge(CalibrationAccumulator(n_groups=3))


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"n_groups": -1}, ValueError, "n_groups must be in"),
    ({"n_groups": 1 << 17}, ValueError, "n_groups must be in"),
    ({"n_groups": 2.5}, TypeError, "n_groups must be an integer"),
    ({"n_groups": 60000}, ValueError, "MAX_GROUP_VALUES"),
    ({"n_groups": 2, "group_fine_bits": 13}, ValueError, "group_fine_bits"),
    ({"n_groups": 2, "group_fine_bits": 12, "group_fine_levels": 1000}, ValueError, "group_fine"),
])
def test_bad_group_config_allocates_nothing(kwargs, exc, match):
    # In a subprocess with a memory limit: a size check after an allocation would fail there, not here.
    code = textwrap.dedent(f"""
        import resource, calibkit
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        try:
            calibkit.CalibrationAccumulator(**{kwargs!r})
        except {exc.__name__} as e:
            print(str(e))
        else:
            print("no error")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert pytest.importorskip("re").search(match, proc.stdout), proc.stdout


# -- calibkit report --groups ------------------------------------------------------------------------------------

def _dump(tmp_path):
    rng = np.random.default_rng(8)
    z = rng.normal(size=(3000, 4)).astype(np.float32) * 2
    labels = rng.integers(0, 4, 3000)
    g = rng.integers(0, 5, 3000)
    path = tmp_path / "d.npz"
    np.savez(path, logits=z, labels=labels, source=g)
    np.save(tmp_path / "g.npy", g)
    return path, z, labels, g


@pytest.mark.filterwarnings("ignore:the NLL optimum")
def test_report_groups(tmp_path, capsys):
    import json

    from calibkit import cli, io, report

    path, z, labels, g = _dump(tmp_path)
    for spec in ("source", str(tmp_path / "g.npy")):
        assert cli.main(["report", str(path), "--groups", spec, "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "multicalibration ECCE-R/sigma" in out and "worst by ecce_r_sigma" in out
    assert cli.main(["report", str(path), "--groups", "source", "--quiet", "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)["groups"]
    r = report.report(io.open_dump(path), groups=g)["groups"]
    assert summary["mce_sigma"] == pytest.approx(r["mce_sigma"])
    for row in summary["groups"]:
        m = g == row["group"]
        assert row["n"] == m.sum()
        assert row["ece"] == pytest.approx(calibkit.ece(z[m], labels[m], from_logits=True), abs=1e-6)
    # Held-out rows (--val-fraction) leave the groups too.
    mask = io.split_mask(3000, 0.3, seed=0)
    held = report.report(io.open_dump(path), val_mask=mask, methods=["temperature"], groups=g)["groups"]
    assert sum(row["n"] for row in held["groups"]) == (~mask).sum()


def test_report_groups_bad(tmp_path, capsys):
    from calibkit import cli, io, report

    path, _, _, g = _dump(tmp_path)
    assert cli.main(["report", str(path), "--groups", "nope", "--quiet"]) != 0
    assert "holds no array 'nope'" in capsys.readouterr().err
    bad = g.copy()
    bad[5] = -2
    with pytest.raises(ValueError, match=r"groups\[5\] = -2"):
        report.report(io.open_dump(path), groups=bad)
    with pytest.raises(ValueError, match="one id per row"):
        report.report(io.open_dump(path), groups=g[:10])
    with pytest.raises(TypeError, match="integer"):
        report.report(io.open_dump(path), groups=g.astype(float))


def test_windowed_and_decayed_streams():
    p, y, _ = binary(3000, 12, shift=0.02)
    win = calibkit.WindowedAccumulator(window=1000, n_blocks=4)
    for lo in range(0, 3000, 700):
        win.update(p[lo:lo + 700], y[lo:lo + 700])
    r = win.compute()
    held = r.count  # the most recent rows
    assert_brackets(r.cumulative, cce(p[-held:], y[-held:]))
    # A decayed window weighs its rows (the squares fade by fade^2): sigma as for any weighted stream.
    dec = calibkit.WindowedAccumulator(decay=0.999).update(p, y).compute().cumulative
    assert dec.sigma is not None and dec.range_pvalue is not None and dec.range > 0
