"""``calibkit monitor``: no record stops the process or is lost; SIGKILL + --resume-input equals one run.

Every monitor run is a subprocess (a record that killed the process would fail the test, not the run).
"""

import io
import json
import os
import random
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit import monitor
from calibkit.streaming import load_state

MONITOR = [sys.executable, "-m", "calibkit.cli", "monitor"]
K = 4

# One line of each kind of bad record (bytes), with the reason it must be counted under.
BAD = [
    (b'{"logits": [1.0, 2.0], "label": 1', "not_json"),
    (b"", "empty"),
    (b"   \t", "empty"),
    (b'{"logits": [1.0, 2.0, 0.5, \xff], "label": 1}', "not_utf8"),
    (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
    (b'{"logits": [' + b"[" * 5000 + b"]" * 5000 + b', 1, 2, 3], "label": 1}', "too_deep"),
    (b'{"logits": [' + b"9" * 401 + b", 1, 2, 3], \"label\": 1}", "number_out_of_range"),
    (b'{"logits": [' + b"9" * 5000 + b", 1, 2, 3], \"label\": 1}", "number_out_of_range"),
    (b'{"logits": [1, 1, 2, 3], "label": 1, "weight": ' + b"9" * 401 + b"}", "number_out_of_range"),
    (b'{"logits": [1, 1, 2, 3], "label": ' + b"9" * 401 + b"}", "label_out_of_range"),
    (b"[1, 2, 3]", "not_object"),
    (b'"a string"', "not_object"),
    (b'{"label": 1}', "no_kind"),
    (b'{"logits": [1, 2, 3, 4], "probs": [0.25, 0.25, 0.25, 0.25], "label": 1}', "no_kind"),
    (b'{"probs": [0.25, 0.25, 0.25, 0.25], "label": 1}', "wrong_kind"),
    (b'{"confidence": 0.5, "correct": 1}', "wrong_kind"),
    (b'{"logits": 3, "label": 1}', "bad_scores"),
    (b'{"logits": [1, "2", 3, 4], "label": 1}', "bad_scores"),
    (b'{"logits": [1, true, 3, 4], "label": 1}', "bad_scores"),
    (b'{"logits": [1, 2], "label": 1}', "wrong_n_classes"),
    (b'{"logits": [1, NaN, 3, 4], "label": 1}', "not_finite"),
    (b'{"logits": [1, 1e400, 3, 4], "label": 1}', "not_finite"),
    (b'{"logits": [1, 2, 3, 4], "label": 1, "weight": Infinity}', "not_finite"),
    (b'{"logits": [1, 2, 3, 4]}', "bad_label"),
    (b'{"logits": [1, 2, 3, 4], "label": 1.0}', "bad_label"),
    (b'{"logits": [1, 2, 3, 4], "label": true}', "bad_label"),
    (b'{"logits": [1, 2, 3, 4], "label": 4}', "label_out_of_range"),
    (b'{"logits": [1, 2, 3, 4], "label": -1}', "label_out_of_range"),
    (b'{"logits": [1, 2, 3, 4], "label": 1, "weight": "2"}', "bad_weight"),
    (b'{"logits": [1, 2, 3, 4], "label": 1, "weight": -0.5}', "negative_weight"),
    (b"x" * (monitor.MAX_LINE_BYTES + 10), "too_long"),
]


def _run(args, *, input=None, timeout=120, **kwargs):
    return subprocess.run([*MONITOR, *args], input=input, capture_output=True, timeout=timeout, **kwargs)


def _reports(stdout):
    return [json.loads(line) for line in stdout.decode().splitlines() if line.strip()]


def _valid_stream(n, seed, *, zero_weights=True):
    rng = np.random.default_rng(seed)
    z = np.round(rng.normal(scale=2, size=(n, K)), 4)
    y = rng.integers(0, K, n)
    w = np.round(rng.random(n) * 2, 3)
    if zero_weights:
        w[rng.random(n) < 0.05] = 0.0
    lines = [json.dumps({"logits": z[i].tolist(), "label": int(y[i]), "weight": float(w[i])}).encode()
             for i in range(n)]
    return lines, z, y, w


def _mix(valid, bad, seed):
    """`valid` lines with the `bad` ones at random places (the first line is a bad record of another K)."""
    rng = random.Random(seed)
    lines = list(valid)
    for line in bad:
        lines.insert(rng.randrange(1, len(lines)), line)
    return [b'{"logits": [1.0, 2.0], "label": 5}', *lines]  # rejected: must not fix K = 2


def test_every_bad_record_is_counted_by_reason_and_the_valid_ones_exactly(tmp_path):
    valid, z, y, w = _valid_stream(3000, seed=0)
    bad = [line for line, _ in BAD] + [b"not json either"]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join(_mix(valid, bad, seed=1)) + b"\n")
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(valid) + b"\n")

    proc = _run([str(mixed), "--every", "100000", "--bootstrap", "10", "--state", str(tmp_path / "m.state")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = _run([str(clean), "--every", "100000", "--bootstrap", "10"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    got, want = _reports(proc.stdout)[-1], _reports(ref.stdout)[-1]

    expected = {}
    for _, reason in [*BAD, (None, "not_json"), (None, "label_out_of_range")]:
        expected[reason] = expected.get(reason, 0) + 1
    assert got["rejected_by_reason"] == expected
    assert got["rejected"] == len(BAD) + 2
    assert got["lines"] == len(valid) + len(BAD) + 2
    assert got["kind"] == "logits" and got["n_classes"] == K
    assert got["count"] == want["count"] == len(valid)
    for key in ("weight", "ece", "ace", "mce", "rmsce", "accuracy", "mean_confidence", "brier", "nll", "ece_se"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key
    assert got["ece"] == pytest.approx(calibkit.ece(z, y, from_logits=True, sample_weight=w), rel=1e-12)
    # One stderr line per reason (a single interval), each with its first line number; no traceback.
    err = proc.stderr.decode().splitlines()
    assert len(err) == len(expected), err
    assert "Traceback" not in proc.stderr.decode()
    assert any(line.startswith("calibkit monitor: 2 lines rejected (not_json: not JSON), first at line ")
               for line in err)
    assert any(line.startswith("calibkit monitor: 4 lines rejected (label_out_of_range: label out of range), "
                               "first at line 1: label = 5 is out of range for n_classes=2") for line in err)
    assert all(len(line) < 300 for line in err)
    # The state holds the same counters.
    saved = load_state((tmp_path / "m.state").read_bytes())
    assert saved.metadata["monitor"]["rejected_by_reason"] == expected
    assert saved.metadata["monitor"]["lines"] == got["lines"]


def test_stderr_has_one_line_per_reason_per_interval(tmp_path):
    valid, _, _, _ = _valid_stream(40, seed=3, zero_weights=False)
    lines = [*valid[:10], b"bad", b"bad", b"bad", *valid[10:20], b"bad", *valid[20:]]  # intervals of 20 lines
    proc = _run(["--every", "20"], input=b"\n".join(lines) + b"\n")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode().splitlines()
    assert [line.split(" rejected")[0] for line in err] == ["calibkit monitor: 3 lines", "calibkit monitor: 1 line"]
    assert "first at line 11:" in err[0] and "first at line 24:" in err[1]
    assert [r["rejected"] for r in _reports(proc.stdout)] == [3, 4, 4]


def test_a_line_that_is_not_utf8_rejects_that_line_only(tmp_path):
    valid, z, y, w = _valid_stream(500, seed=4, zero_weights=False)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([*valid[:100], b'{"logits": [1, 2, 3, 4], "label": 1, "\xe9": 1}', *valid[100:]]))
    proc = _run([str(path)])
    assert proc.returncode == 0, proc.stderr
    final = _reports(proc.stdout)[-1]
    assert final["rejected_by_reason"] == {"not_utf8": 1}
    assert final["lines"] == 501 and final["count"] == 500  # the last line has no newline: still read
    assert final["ece"] == pytest.approx(calibkit.ece(z, y, from_logits=True, sample_weight=w), rel=1e-12)


def test_zero_weight_and_empty_windows_report_null_metrics_and_save_state(tmp_path):
    state = tmp_path / "s.state"
    zero = b'{"confidence": 0.9, "correct": 1, "weight": 0}\n{"confidence": 0.2, "correct": 0, "weight": 0}\n'
    proc = _run(["--every", "1", "--state", str(state)], input=zero)
    assert proc.returncode == 0, proc.stderr
    reports = _reports(proc.stdout)
    assert [r["count"] for r in reports] == [1, 2, 2]
    assert all(r["weight"] == 0.0 and r["ece"] is None and r["nll"] is None for r in reports)
    assert load_state(state.read_bytes()).metadata["monitor"]["lines"] == 2
    # Only rejected lines: the state keeps the counters; a resumed run goes on from there.
    state2 = tmp_path / "s2.state"
    proc = _run(["--state", str(state2), "--prometheus", str(tmp_path / "m.prom")], input=b"oops\n\n")
    assert proc.returncode == 0, proc.stderr
    r = _reports(proc.stdout)[-1]
    assert (r["count"], r["weight"], r["ece"], r["kind"], r["rejected"]) == (0, 0.0, None, None, 2)
    prom = (tmp_path / "m.prom").read_text()
    assert "calibkit_count 0" in prom and "calibkit_ece " not in prom
    proc = _run(["--state", str(state2), "--resume-input"],
                input=b'oops\n\n{"probs": [0.2, 0.8], "label": 1}\n')
    assert proc.returncode == 0, proc.stderr
    r = _reports(proc.stdout)[-1]
    assert (r["lines"], r["rejected"], r["count"], r["kind"], r["n_classes"]) == (3, 2, 1, "probs", 2)
    assert r["ece"] == pytest.approx(0.2)


@pytest.mark.parametrize("flag", ["--state", "--prometheus"])
def test_missing_output_folder_is_refused_at_start(tmp_path, flag):
    target = tmp_path / "missing" / "out.file"
    proc = _run([flag, str(target)], input=b'{"probs": [0.2, 0.8], "label": 1}\n')
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "does not exist" in err and flag in err and "Traceback" not in err
    assert proc.stdout == b""  # refused before reading anything


@pytest.mark.parametrize("option, message", [("--n-bins=0", "--n-bins must be >= 1"), ("--window=0", "window must be")])
def test_bad_configuration_is_refused_at_start(option, message):
    proc = _run([option], input=b'{"probs": [0.2, 0.8], "label": 1}\n')
    assert proc.returncode == 2
    assert proc.stderr.decode().count("\n") == 1 and message in proc.stderr.decode()
    assert proc.stdout == b""


def _umask(mask):
    return lambda: os.umask(mask)


def test_output_files_follow_the_umask_and_keep_the_replaced_mode(tmp_path):
    state, prom = tmp_path / "s.state", tmp_path / "m.prom"
    record = b'{"probs": [0.2, 0.8], "label": 1}\n'
    proc = _run(["--state", str(state), "--prometheus", str(prom)], input=record, preexec_fn=_umask(0o027))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o640
    assert stat.S_IMODE(prom.stat().st_mode) == 0o640
    os.chmod(prom, 0o644)
    os.chmod(state, 0o600)
    proc = _run(["--state", str(state), "--prometheus", str(prom)], input=record, preexec_fn=_umask(0o077))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # a node_exporter of another user can still read it
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.prom", "s.state"]


def test_a_read_error_is_not_taken_for_the_end_of_the_input():
    class Failing(io.RawIOBase):
        def __init__(self):
            self.lines = [b'{"probs": [0.2, 0.8], "label": 1}\n'] * 3

        def readline(self, size=-1):
            if self.lines:
                return self.lines.pop()
            raise OSError(5, "Input/output error")

    out = io.StringIO()
    with pytest.raises(OSError, match="reading the input failed after line 3: OSError"):
        monitor.run(Failing(), out=out)
    assert json.loads(out.getvalue().splitlines()[-1])["count"] == 3  # what was read is reported


def test_sigkill_at_random_moments_then_resume_equals_one_run(tmp_path):
    valid, _, _, _ = _valid_stream(10_000, seed=5)
    lines = _mix(valid, [line for line, _ in BAD if len(line) < 1_000_000], seed=6)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    options = ["--every", "500", "--bootstrap", "8", "--window", "4000"]  # 6 MB states: few saves

    ref_state = tmp_path / "ref.state"
    ref = _run([str(path), *options, "--state", str(ref_state)])
    assert ref.returncode == 0, ref.stderr[-2000:]

    state = tmp_path / "killed.state"
    rng = random.Random(7)
    kills = 0
    for attempt in range(20):
        args = [*MONITOR, str(path), *options, "--state", str(state)] + (["--resume-input"] if attempt else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            if kills < 3:
                for _ in range(rng.randint(1, 5)):  # let it write a few reports, then kill it mid-interval
                    if not proc.stdout.readline():
                        break
                sig_delay = rng.random() * 0.05
                try:
                    proc.wait(timeout=sig_delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    kills += 1
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
    assert proc.returncode == 0 and kills >= 1

    a, b = load_state(state.read_bytes()), load_state(ref_state.read_bytes())
    assert a.metadata["monitor"] == b.metadata["monitor"]
    assert a.metadata["monitor"]["lines"] == len(lines)
    assert a.count == b.count
    ra, rb = a.compute(), b.compute()
    assert ra.count == rb.count
    np.testing.assert_array_equal(ra.table.count, rb.table.count)
    for key in ("weight", "ece", "ace", "mce", "rmsce", "accuracy", "mean_confidence", "brier", "nll", "ece_se"):
        assert getattr(ra, key) == pytest.approx(getattr(rb, key), rel=1e-12, abs=1e-15), key
    assert ra.ece_ci == pytest.approx(rb.ece_ci, rel=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "killed.state", "ref.state"]  # no temporaries
