"""Smoke tests of benchmarks/compare.py and its harness: tables without nan, aligned columns, goal lines,
skipped peers and workloads, temporary files removed. Times are never asserted."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402


def _tables(text):
    """{workload title: [table lines]} (header and contender rows, without goal or timing lines)."""
    out, title = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            title = None if line.startswith("## summary") else line
            if title:
                out[title] = []
        elif title and line and not line.startswith(("goal  ", "(workload", "#")):
            out[title].append(line)
    return out


def _assert_aligned(lines):
    header = lines[0]
    assert header.startswith("contender")
    for line in lines[1:]:
        if "skipped:" in line or "WRONG:" in line or "failed:" in line:
            continue
        body = line.split("  (inexact")[0]
        assert len(body) == len(header), (header, line)
        # the right-aligned columns: each header's end is a cell's end in the row
        for m in list(re.finditer(r"\S+(?=\s{2}|$)", header))[1:]:
            end = m.end()
            assert end == len(body) or body[end] == " ", (header, line)


def test_compare_quick_one_small_workload():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), "--quick", "--match", "100 rows"],
        capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "nan" not in out.lower(), out
    tables = _tables(out)
    assert len(tables) == 1, out
    lines = next(iter(tables.values()))
    names = [line.split("  ")[0].strip() for line in lines[1:]]
    assert "calibkit (cpp)" in names and "calibkit (numba)" in names, out
    _assert_aligned(lines)
    assert "WRONG" not in out and "failed:" not in out, out
    goals = [line for line in out.splitlines() if line.startswith("goal  ")]
    # quick sizes are not the goals' workloads: the values are shown without a verdict
    assert any("100 rows" in g and "not judged" in g for g in goals), out
    assert any(g.startswith("goal  numba / cpp") for g in goals), out
    assert not any(g.endswith("met") for g in goals), out
    assert "## summary: goals of issues 13 and 17 (at --quick sizes: not judged)" in out
    assert re.search(r"ran in [\d.]+ s wall, [\d.]+ s CPU", out), out


def test_format_rows_drops_empty_columns_and_names_skipped_peers():
    w = harness.Workload("t", "tiny", dict, lambda d: [], floor=None,
                         goals=[harness.Goal("g", lambda t: t["calibkit (cpp)"] * 1e6, 20.0, unit=" us")])
    rows = [{"contender": "calibkit (cpp)", "time": 1e-5, "status": "ok", "mem": None},
            {"contender": "calibkit (numba)", "time": 3e-5, "status": "ok", "mem": None},
            {"contender": "somepeer", "time": float("nan"), "status": "skipped: not installed (x)", "mem": None}]
    text = harness.format_rows(w, rows, "calibkit (cpp)")
    assert "nan" not in text
    assert "x one read" not in text and "peak extra MB" not in text  # nothing to show in those columns
    assert re.search(r"^somepeer +skipped: not installed \(x\)$", text, re.MULTILINE), text
    assert "goal  g: 10.00 us  (goal <= 20 us)  met" in text
    assert "goal  numba / cpp, tiny: 3.00x  (goal <= 2x" in text and "NOT MET" in text
    quick = harness.format_rows(w, rows, "calibkit (cpp)", quick=True)
    assert "goal  g: 10.00 us at --quick size, not judged (run --goals)" in quick and "met" not in quick
    _assert_aligned([line for line in _tables(text)["## t: tiny"]])


def test_run_workload_warms_checks_skips_and_tears_down(tmp_path):
    calls = []
    marker = tmp_path / "big.bin"

    def setup():
        marker.write_bytes(b"x")
        return {"v": 2}

    def contenders(d):
        def counted():
            calls.append(1)
            return d["v"]
        return [harness.Contender("calibkit (cpp)", counted, lambda r: None if r == 2 else "bad", repeat=3),
                harness.Contender("wrong peer", lambda: 3, lambda r: None if r == 2 else f"{r} != 2"),
                harness.missing("absent peer", ImportError("No module named 'absent'"))]

    w = harness.Workload("t", "w", setup, contenders, floor=lambda d: (lambda: None),
                         teardown=lambda d: marker.unlink())
    rows = harness.run_workload(w, measure_memory=False)
    by = {r["contender"]: r for r in rows}
    assert len(calls) == 4  # one untimed warm-up call whose result is checked, then three timed
    assert by["calibkit (cpp)"]["status"] == "ok"
    assert by["wrong peer"]["status"].startswith("WRONG: 3 != 2")
    assert by["absent peer"]["status"].startswith("skipped: not installed")
    assert not marker.exists()

    def no_room():
        raise harness.SkipWorkload("needs 2.0 GiB")

    rows = harness.run_workload(harness.Workload("t", "w", no_room, contenders))
    assert rows[0]["status"] == "skipped: needs 2.0 GiB"


def test_free_disk_or_skip(tmp_path):
    harness.free_disk_or_skip(str(tmp_path), 1)
    with pytest.raises(harness.SkipWorkload, match="GiB free"):
        harness.free_disk_or_skip(str(tmp_path), 1 << 60)


def test_report_workload_removes_its_dump():
    import tempfile

    import workloads_report

    before = set(pathlib.Path(tempfile.gettempdir()).glob("calibkit-bench-*"))
    w = workloads_report.workloads(quick=True)[0]
    d = w.setup()
    assert pathlib.Path(d["path"]).exists() and d["temperature"] > 1.0
    w.teardown(d)
    assert set(pathlib.Path(tempfile.gettempdir()).glob("calibkit-bench-*")) == before
