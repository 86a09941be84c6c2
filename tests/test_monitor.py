"""End-to-end tests of ``calibkit monitor`` in a subprocess: malformed lines, kills, resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import calibkit
from calibkit.monitor import prometheus_text

MONITOR = [sys.executable, "-m", "calibkit.cli", "monitor"]

BAD_LINES = [
    "not json",
    json.dumps({"logits": [1.0, 2.0], "label": 0}),  # wrong length
    json.dumps({"logits": [1.0, float("nan"), 0.0, 1.0], "label": 0}),  # NaN (Python writes it as NaN)
    json.dumps({"logits": [1.0, 2.0, 0.0, 1.0], "label": 4}),  # label out of range
    json.dumps({"probs": [0.25, 0.25, 0.25, 0.25], "label": 1}),  # another kind of record
    json.dumps([1, 2, 3]),
    "",
    json.dumps({"logits": [1.0, 2.0, 0.0, 1.0], "label": 1, "weight": -1}),
]


def make_stream(path, n=1200, seed=0):
    rng = np.random.default_rng(seed)
    logits = np.round(rng.normal(scale=2, size=(n, 4)), 5)
    labels = rng.integers(0, 4, n)
    lines, valid = [], []
    bad_every = n // len(BAD_LINES)
    for i in range(n):
        if i % bad_every == 7 and (i // bad_every) < len(BAD_LINES):
            lines.append(BAD_LINES[i // bad_every])
        else:
            lines.append(json.dumps({"logits": logits[i].tolist(), "label": int(labels[i])}))
            valid.append(i)
    path.write_text("\n".join(lines) + "\n")
    return lines, logits[valid], labels[valid]


def last_report(stdout):
    reports = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert reports, "no report written"
    return reports[-1]


def test_monitor_whole_file(tmp_path):
    path = tmp_path / "stream.jsonl"
    lines, z, y = make_stream(path)
    prom = tmp_path / "metrics.prom"
    proc = subprocess.run([*MONITOR, str(path), "--every", "500", "--bootstrap", "20", "--prometheus", str(prom)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["lines"] for r in reports] == [500, 1000, 1200]
    final = reports[-1]
    assert final["rejected"] == len(BAD_LINES)
    assert final["count"] == len(y)
    assert final["ece"] == pytest.approx(calibkit.ece(z, y, from_logits=True), rel=1e-12)
    assert final["nll"] == pytest.approx(calibkit.nll(z, y, from_logits=True), rel=1e-12)
    assert final["ece_ci"][0] < final["ece"] < final["ece_ci"][1]
    # One stderr line per reason per interval, with the first line number; here each reason occurs once.
    assert final["rejected_by_reason"] == {"wrong_n_classes": 1, "empty": 1, "label_out_of_range": 1,
                                           "negative_weight": 1, "not_finite": 1, "not_json": 1,
                                           "not_object": 1, "wrong_kind": 1}
    assert proc.stderr.count("rejected") == len(BAD_LINES)
    assert "1 line rejected (not_json: not JSON), first at line 8: Expecting value" in proc.stderr
    text = prom.read_text()
    assert f"calibkit_ece {final['ece']!r}" in text and 'calibkit_rejected_total{reason="not_json"} 1' in text
    assert 'calibkit_rejected_total{reason="too_deep"} 0' in text
    assert text == prometheus_text(final)


def test_monitor_stdin_window_and_confidence_records(tmp_path):
    rng = np.random.default_rng(1)
    c = rng.random(700)
    correct = (rng.random(700) < c).astype(int)
    records = "\n".join(json.dumps({"confidence": float(a), "correct": int(b)}) for a, b in zip(c, correct))
    proc = subprocess.run([*MONITOR, "--window", "400", "--every", "1000"], input=records + "\n", capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    final = last_report(proc.stdout)
    assert final["rejected"] == 0 and final["kind"] == "confidence"
    kept = final["count"]
    assert 375 < kept <= 400
    assert final["ece"] == pytest.approx(calibkit.ece(c[-kept:], correct[-kept:]), rel=1e-12)


def _wait_for_report(proc, timeout=60):
    start = time.time()
    line = proc.stdout.readline()
    while not line.strip():
        if time.time() - start > timeout:
            raise AssertionError("no report from the monitor")
        line = proc.stdout.readline()
    return json.loads(line)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_kill_and_resume_counts_every_record_once(tmp_path, how):
    path = tmp_path / "stream.jsonl"
    lines, z, y = make_stream(path, n=1600, seed=2)
    state = tmp_path / "state.bin"
    proc = subprocess.Popen([*MONITOR, "--every", "100", "--state", str(state)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdin.write("\n".join(lines[:700]) + "\n")
    proc.stdin.flush()
    first = _wait_for_report(proc)
    assert first["lines"] == 100
    time.sleep(0.3)
    proc.send_signal(getattr(signal, how))
    out, err = proc.communicate(timeout=60)
    if how != "SIGKILL":
        assert proc.returncode == 0, err
        final = json.loads(out.splitlines()[-1])
        # The state written at exit holds exactly the lines consumed so far.
    assert state.exists()
    saved = calibkit.streaming.load_state(state.read_bytes())
    consumed = saved.metadata["monitor"]["lines"]
    assert 100 <= consumed <= 700
    if how != "SIGKILL":
        assert consumed == final["lines"]
    # Resume on the whole file: the consumed lines are skipped, the rest counted once.
    proc2 = subprocess.run([*MONITOR, str(path), "--every", "100000", "--state", str(state), "--resume-input"],
                           capture_output=True, text=True, timeout=300)
    assert proc2.returncode == 0, proc2.stderr
    final = last_report(proc2.stdout)
    assert final["lines"] == len(lines)
    assert final["rejected"] == len(BAD_LINES)
    assert final["count"] == len(y)
    assert final["ece"] == pytest.approx(calibkit.ece(z, y, from_logits=True), rel=1e-12)
    assert final["brier"] == pytest.approx(calibkit.brier_score(z, y, from_logits=True), rel=1e-12)


def test_state_file_is_replaced_atomically(tmp_path):
    from calibkit._files import atomic_write

    target = tmp_path / "x.bin"
    atomic_write(str(target), b"one")
    atomic_write(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]  # no temporary files left


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    state = tmp_path / "state.bin"
    state.write_bytes(b"garbage" * 10)
    proc = subprocess.run([*MONITOR, "--state", str(state)], input="", capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "not a calibkit state" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.path.getsize(state) == 70  # untouched


def test_state_file_of_another_kind_is_a_clear_error(tmp_path):
    """A saved OODAccumulator is a valid calibkit state, but not a monitor's: one line naming it, no traceback."""
    state = tmp_path / "ood.bin"
    acc = calibkit.OODAccumulator()
    acc.update(np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    blob = acc.to_bytes()
    state.write_bytes(blob)
    proc = subprocess.run([*MONITOR, "--state", str(state)], input="", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "OODAccumulator" in proc.stderr and "Traceback" not in proc.stderr
    assert state.read_bytes() == blob  # untouched
