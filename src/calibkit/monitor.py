"""The engine of ``calibkit monitor``: calibration of a JSON Lines stream.

Each input line is one prediction::

    {"probs": [0.1, 0.7, 0.2], "label": 1}
    {"logits": [2.3, -0.4, 0.1], "label": 0, "weight": 2.0}
    {"confidence": 0.93, "correct": 1}

The first valid record fixes the kind of the stream (and K); a record of
another kind is rejected like any malformed one. A rejected line is never
fatal and never dropped silently: it is counted in ``rejected`` and reported
on stderr with its line number. Records are validated one by one and added to
the accumulator in batches (native kernels, no per-row Python beyond the JSON
parsing).

The state (accumulator, line and record counters) is saved atomically
(temporary file + rename) at every report and at exit, so a crash leaves the
previous consistent state. It records how many input lines it has consumed:
``resume_input=True`` skips that many lines of the input, so re-reading the
same file after a crash counts every record exactly once.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import sys
import threading
import time

import numpy as np

from ._files import atomic_write
from .streaming import CalibrationAccumulator, WindowedAccumulator, load_state

_BATCH = 1024
_KINDS = ("probs", "logits", "confidence")


class Monitor:
    """Consumes JSON Lines records and reports calibration metrics."""

    def __init__(self, *, window=None, n_bins=15, bootstrap=0, seed=0, state_path=None, backend="auto"):
        self.state_path = state_path
        self.lines = 0  # input lines consumed (the resume point)
        self.rejected = 0
        self.kind = None
        self.n_classes = None
        kwargs = dict(n_bins=n_bins, bootstrap=bootstrap, seed=seed, backend=backend)
        self.acc = None
        if state_path and os.path.exists(state_path):
            with open(state_path, "rb") as f:
                self.acc = load_state(f.read(), backend=backend)
            m = self.acc.metadata.get("monitor", {})
            self.lines, self.rejected = int(m.get("lines", 0)), int(m.get("rejected", 0))
            self.kind, self.n_classes = m.get("kind"), m.get("n_classes")
        self._kwargs = kwargs
        self._window = window
        self._pending = []  # validated records not yet in the accumulator
        self._pending_weights = []
        self._pending_labels = []

    def _make_accumulator(self, from_logits):
        if self._window:
            return WindowedAccumulator(self._window, from_logits=from_logits, **self._kwargs)
        return CalibrationAccumulator(from_logits=from_logits, **self._kwargs)

    # -- records -------------------------------------------------------------------

    def _parse(self, line: str):
        """(kind, values, label, weight) of a line, or raise ValueError saying what is wrong."""
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError("a record must be a JSON object")
        kinds = [k for k in _KINDS if k in rec]
        if len(kinds) != 1:
            raise ValueError('a record needs exactly one of "probs", "logits" or "confidence"')
        kind = kinds[0]
        weight = rec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if kind == "confidence":
            c, correct = rec["confidence"], rec.get("correct")
            if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or not 0 <= c <= 1:
                raise ValueError(f"confidence must be a number in [0, 1], got {c!r}")
            if correct not in (0, 1) or isinstance(correct, float):
                raise ValueError(f'"correct" must be 0 or 1, got {correct!r}')
            return kind, float(c), int(correct), float(weight)
        values, label = rec[kind], rec.get("label")
        if not isinstance(values, list) or len(values) < 2:
            raise ValueError(f"{kind} must be a list of at least 2 numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"{kind} must hold finite numbers only")
        if kind == "probs" and not all(-1e-6 <= v <= 1 + 1e-6 for v in values):
            raise ValueError("probs must lie in [0, 1]")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(values):
            raise ValueError(f"label must be an integer in [0, {len(values)}), got {label!r}")
        return kind, values, label, float(weight)

    def consume(self, line: str, lineno: int) -> bool:
        """Handle one input line; False (and a message on stderr) if it was rejected."""
        self.lines += 1
        if not line.strip():
            self.rejected += 1
            print(f"calibkit monitor: line {lineno}: empty line rejected", file=sys.stderr)
            return False
        try:
            kind, values, label, weight = self._parse(line)
            if self.kind is not None and kind != self.kind:
                raise ValueError(f'this stream holds "{self.kind}" records, not "{kind}"')
            if kind != "confidence" and self.n_classes is not None and len(values) != self.n_classes:
                raise ValueError(f"expected {self.n_classes} values, got {len(values)}")
        except (ValueError, KeyError) as exc:
            self.rejected += 1
            print(f"calibkit monitor: line {lineno}: rejected: {exc}", file=sys.stderr)
            return False
        if self.kind is None:
            self.kind = kind
            self.n_classes = None if kind == "confidence" else len(values)
        self._pending.append(values)
        self._pending_labels.append(label)
        self._pending_weights.append(weight)
        if len(self._pending) >= _BATCH:
            self.flush()
        return True

    def flush(self) -> None:
        """Move the validated records into the accumulator."""
        if not self._pending:
            return
        if self.acc is None:
            self.acc = self._make_accumulator(self.kind == "logits")
        scores = np.asarray(self._pending, dtype=np.float64)
        labels = np.asarray(self._pending_labels, dtype=np.int64)
        weights = np.asarray(self._pending_weights, dtype=np.float64)
        self.acc.update(scores, labels, None if (weights == 1.0).all() else weights)
        self._pending, self._pending_labels, self._pending_weights = [], [], []

    # -- output --------------------------------------------------------------------

    def report(self) -> dict:
        self.flush()
        out = {"lines": self.lines, "rejected": self.rejected, "kind": self.kind, "n_classes": self.n_classes,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        metrics = dict.fromkeys(("count", "ece", "ace", "mce", "rmsce", "accuracy", "mean_confidence", "brier",
                                 "nll", "ece_se", "ece_ci"))
        if self.acc is not None and self.acc.count > 0:
            r = self.acc.compute()
            metrics.update({k: getattr(r, k) for k in metrics})
            metrics["ece_ci"] = list(r.ece_ci) if r.ece_ci is not None else None
        out.update(metrics)
        return out

    def save(self) -> None:
        self.flush()
        if not self.state_path or self.acc is None:
            return
        self.acc.metadata["monitor"] = {"lines": self.lines, "rejected": self.rejected, "kind": self.kind,
                                        "n_classes": self.n_classes}
        atomic_write(self.state_path, self.acc.to_bytes())


def prometheus_text(report: dict) -> str:
    """The report's numbers in the Prometheus text exposition format (version 0.0.4)."""
    gauges = {
        "ece": "Expected calibration error, equal-width bins", "ace": "Calibration error, equal-mass bins",
        "mce": "Maximum calibration error", "rmsce": "Root-mean-square calibration error",
        "accuracy": "Accuracy", "mean_confidence": "Mean top-label confidence", "brier": "Brier score",
        "nll": "Negative log-likelihood", "ece_se": "Bootstrap standard error of the ECE",
        "count": "Rows in the window",
    }
    lines = []
    for key, help_text in gauges.items():
        value = report.get(key)
        if value is None:
            continue
        lines += [f"# HELP calibkit_{key} {help_text}.", f"# TYPE calibkit_{key} gauge", f"calibkit_{key} {value!r}"]
    if report.get("ece_ci"):
        lines += ["# HELP calibkit_ece_ci Bootstrap percentile interval of the ECE.", "# TYPE calibkit_ece_ci gauge",
                  f'calibkit_ece_ci{{bound="lower"}} {report["ece_ci"][0]!r}',
                  f'calibkit_ece_ci{{bound="upper"}} {report["ece_ci"][1]!r}']
    for key, help_text in (("lines", "Input lines consumed"), ("rejected", "Input lines rejected")):
        lines += [f"# HELP calibkit_{key}_total {help_text}.", f"# TYPE calibkit_{key}_total counter",
                  f"calibkit_{key}_total {report[key]}"]
    return "\n".join(lines) + "\n"


def run(source, *, every=1000, window=None, n_bins=15, bootstrap=0, seed=0, state=None, prometheus=None,
        resume_input=False, backend="auto", out=None) -> int:
    """Monitor `source` (a text stream); returns the process exit code."""
    out = out or sys.stdout
    mon = Monitor(window=window, n_bins=n_bins, bootstrap=bootstrap, seed=seed, state_path=state, backend=backend)
    skip = mon.lines if resume_input else 0
    lines = queue.Queue(maxsize=4 * _BATCH)
    stop = threading.Event()

    def reader():
        try:
            for line in source:
                lines.put(line)
        finally:
            lines.put(None)

    # The reader thread blocks on input; the main thread only waits on the
    # queue, so SIGINT/SIGTERM are handled promptly and between records.
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread: no handlers
            pass
    threading.Thread(target=reader, daemon=True).start()

    def emit():
        report = mon.report()
        mon.save()
        print(json.dumps(report), file=out, flush=True)
        if prometheus:
            atomic_write(prometheus, prometheus_text(report).encode())

    lineno = 0
    since_report = 0
    try:
        while not stop.is_set():
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            lineno += 1
            if lineno <= skip:
                continue
            mon.consume(line, lineno)
            since_report += 1
            if since_report >= every:
                emit()
                since_report = 0
        emit()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
