"""The engine of ``calibkit monitor``: calibration of a JSON Lines stream.

Each input line is one prediction::

    {"probs": [0.1, 0.7, 0.2], "label": 1}
    {"logits": [2.3, -0.4, 0.1], "label": 0, "weight": 2.0}
    {"confidence": 0.93, "correct": 1}

``"weight"`` is optional (default 1; any finite number >= 0, 0 included);
``"correct"`` is 0 or 1 (``true`` / ``false`` too). The first *valid* record
fixes the kind of the stream (and K, the number of classes); a record of
another kind or another K is rejected like any malformed one, and a rejected
record never fixes anything.

Every input line is either counted or rejected, and the process never stops
because of a line: the input is read as bytes and decoded line by line, and
whatever is wrong with one line (not UTF-8, not JSON, a number too large for a
float, nesting deeper than the JSON parser's limit, a line longer than
:data:`MAX_LINE_BYTES`, a wrong field, ...) rejects that line only. Rejections
are counted by reason (the keys of :data:`REASONS`) in ``rejected`` and
``rejected_by_reason`` of every report, and summarised on stderr with one line
per reason per reporting interval (with the first offending line number and
what was wrong with it). Valid records are added to the accumulator in
batches (native kernels, no per-row Python beyond the JSON parsing).

A report whose window holds no rows, or only rows of weight 0, gives its
``count`` and ``weight`` with null metrics.

The state (accumulator, line and rejection counters) is saved atomically
(temporary file + rename, see :mod:`calibkit._files`) at every report and at
exit, always at a consistent point: every line it counts as consumed has been
added to the accumulator or counted as rejected, and no other. So after a
crash or ``kill -9``, ``resume_input=True`` skips the consumed lines of the
same input and the final state equals that of an uninterrupted run (counts
exactly, sums to rounding).
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, TextIO

import numpy as np

from ._files import atomic_write, same_file
from ._typing import Backend, StrPath
from ._validation import MAX_STREAM_WEIGHT, MIN_STREAM_WEIGHT
from .streaming import CalibrationAccumulator, WindowedAccumulator, load_state

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

MAX_LINE_BYTES = 1 << 24
"""Longest accepted input line, newline included (16 MiB); a longer line is rejected as ``too_long``."""

_MAX_QUEUED_BYTES = 1 << 26  # input read ahead of the parser (64 MiB)
_BATCH = 1024
_KINDS = ("probs", "logits", "confidence")

REASONS = {
    "empty": "empty line",
    "too_long": f"line longer than {MAX_LINE_BYTES} bytes",
    "not_utf8": "not UTF-8",
    "not_json": "not JSON",
    "too_deep": "too deeply nested",
    "number_out_of_range": "number out of range",
    "not_object": "not a JSON object",
    "no_kind": 'not exactly one of "probs", "logits", "confidence"',
    "wrong_kind": "another kind of record than the stream's",
    "bad_scores": "scores not a list of at least 2 numbers",
    "wrong_n_classes": "wrong number of classes",
    "not_finite": "NaN or infinity",
    "out_of_range": "probability or confidence outside [0, 1]",
    "bad_label": "label missing or not an integer",
    "label_out_of_range": "label out of range",
    "bad_correct": '"correct" not 0 or 1',
    "bad_weight": "weight not a number",
    "negative_weight": "negative weight",
    "weight_out_of_range": "non-zero weight outside [1e-300, 1e300]",
    "internal": "unexpected error",
}
"""Reasons a line is rejected: the key is the name in reports and Prometheus, the value its description."""


class _Rejected(Exception):
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason


_TOO_LONG = object()  # what the reader passes on instead of an over-long line


def _describe(v) -> str:
    """A short description of a JSON value for a message (never a huge or deeply recursive repr)."""
    if isinstance(v, list):
        return f"a list of {len(v)} items"
    if isinstance(v, dict):
        return f"an object of {len(v)} keys"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10 ** 20:
        return f"an integer of {len(str(abs(v)))} digits"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(v, what, bad_reason) -> float:
    if type(v) not in (int, float):
        raise _Rejected(bad_reason, f"{what} must be a number, got {_describe(v)}")
    try:
        x = float(v)
    except OverflowError:
        raise _Rejected("number_out_of_range", f"{what} = {_describe(v)} is too large for a float") from None
    if not math.isfinite(x):
        raise _Rejected("not_finite", f"{what} = {x!r} is not finite")
    return x


# With cumulative=True: ECCE-R of Arrieta-Ibarra et al. 2022 from the state's fine histogram (the exact value lies in
# [ecce_r, ecce_r + ecce_r_bound]), ECCE-R / sigma and its Kuiper p-value (None for weighted records).
_CUMULATIVE_KEYS = ("ecce_r", "ecce_r_bound", "ecce_r_sigma", "ecce_pvalue")


class Monitor:
    """Consumes JSON Lines records and reports calibration metrics (see the module docstring).

    Examples
    --------
    >>> from calibkit.monitor import Monitor
    >>> mon = Monitor(n_bins=10)
    >>> mon.consume(b'{"probs": [0.2, 0.8], "label": 1}\\n', 1)
    True
    >>> mon.consume(b'not json\\n', 2)
    False
    >>> r = mon.report()
    >>> r["count"], r["rejected"], r["rejected_by_reason"], round(r["ece"], 3)
    (1, 1, {'not_json': 1}, 0.2)
    """

    def __init__(self, *, window: int | None = None, n_bins: int = 15, bootstrap: int = 0, seed: int = 0,
                 state_path: StrPath | None = None, smooth: bool = False, cumulative: bool = False,
                 backend: Backend = "auto"):
        self.state_path = state_path
        self.lines = 0  # input lines consumed (the resume point)
        self.rejected = 0
        self.rejected_by_reason = {}
        self.kind = None
        self.n_classes = None
        self.acc = None
        self._kwargs = dict(n_bins=n_bins, bootstrap=bootstrap, seed=seed, smooth=bool(smooth), backend=backend)
        self._cumulative = bool(cumulative)
        self._window = window
        self._make_accumulator(False)  # a bad configuration (e.g. n_bins=0, window=0) fails now, not at a report
        if state_path and os.path.exists(state_path):
            with open(state_path, "rb") as f:
                acc = load_state(f.read(), backend=backend)
            if not isinstance(acc, (CalibrationAccumulator, WindowedAccumulator)):
                raise ValueError(f"{state_path} holds a {type(acc).__name__} state, not a monitor's calibration "
                                 "state (CalibrationAccumulator or WindowedAccumulator)")
            self._load_counters(acc.metadata.get("monitor", {}))
            if self.kind is None and "monitor" in acc.metadata:
                acc = None  # counters only, no valid record yet: the first valid one makes the accumulator
            self.acc = acc
        self._interval = {}  # reason -> [lines, first line number, first detail] since the last report
        self._pending = []  # validated records not yet in the accumulator: (scores, label, weight, lineno)

    def _load_counters(self, m) -> None:
        try:
            lines, rejected = m.get("lines", 0), m.get("rejected", 0)
            kind, n_classes = m.get("kind"), m.get("n_classes")
            by_reason = dict(m.get("rejected_by_reason", {}))
            ok = (all(type(x) is int and x >= 0 for x in (lines, rejected, *by_reason.values()))
                  and kind in (None, *_KINDS) and (n_classes is None or (type(n_classes) is int and n_classes >= 2)))
        except (AttributeError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"corrupt monitor state in {self.state_path}: bad counters {m!r:.200}")
        self.lines, self.rejected, self.kind, self.n_classes = lines, rejected, kind, n_classes
        self.rejected_by_reason = by_reason

    def _make_accumulator(self, from_logits):
        if self._window is not None:
            return WindowedAccumulator(self._window, from_logits=from_logits, **self._kwargs)
        return CalibrationAccumulator(from_logits=from_logits, **self._kwargs)

    # -- records -------------------------------------------------------------------

    def _parse(self, line):
        """(kind, scores, label, weight) of a line; raises _Rejected saying what is wrong."""
        if line is _TOO_LONG:
            raise _Rejected("too_long", f"longer than {MAX_LINE_BYTES} bytes")
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _Rejected("not_utf8", f"byte {exc.start} is not UTF-8 ({exc.reason})") from None
        if not line.strip():
            raise _Rejected("empty", "empty line")
        try:
            rec = json.loads(line)
        except RecursionError:
            raise _Rejected("too_deep", "nested deeper than the JSON parser's limit") from None
        except json.JSONDecodeError as exc:
            raise _Rejected("not_json", f"{exc.msg} at column {exc.colno}") from None
        except ValueError:  # an integer of more than sys.get_int_max_str_digits() digits
            raise _Rejected("number_out_of_range",
                            f"an integer of more than {sys.get_int_max_str_digits()} digits") from None
        if not isinstance(rec, dict):
            raise _Rejected("not_object", f"a record must be a JSON object, got {_describe(rec)}")
        kinds = [k for k in _KINDS if k in rec]
        if len(kinds) != 1:
            raise _Rejected("no_kind", 'a record needs exactly one of "probs", "logits" or "confidence"')
        kind = kinds[0]
        if self.kind is not None and kind != self.kind:
            raise _Rejected("wrong_kind", f'this stream holds "{self.kind}" records, not "{kind}"')
        if kind == "confidence":
            c = _number(rec["confidence"], "confidence", "out_of_range")
            if not 0 <= c <= 1:
                raise _Rejected("out_of_range", f"confidence = {c!r} is not in [0, 1]")
            correct = rec.get("correct")
            if correct not in (0, 1) or type(correct) is float:
                raise _Rejected("bad_correct", f'"correct" must be 0 or 1, got {_describe(correct)}')
            scores, label = c, int(correct)
        else:
            values = rec[kind]
            if not isinstance(values, list) or len(values) < 2:
                raise _Rejected("bad_scores", f"{kind} must be a list of at least 2 numbers, got {_describe(values)}")
            if self.n_classes is not None and len(values) != self.n_classes:
                raise _Rejected("wrong_n_classes", f"expected {self.n_classes} {kind}, got {len(values)}")
            for i, v in enumerate(values):
                if type(v) not in (int, float):
                    raise _Rejected("bad_scores", f"{kind}[{i}] must be a number, got {_describe(v)}")
            try:
                scores = np.array(values, dtype=np.float64)
            except OverflowError:
                big = next(i for i, v in enumerate(values) if type(v) is int and abs(v) >= 10 ** 300)
                raise _Rejected("number_out_of_range",
                                f"{kind}[{big}] = {_describe(values[big])} is too large for a float") from None
            finite = np.isfinite(scores)
            if not finite.all():
                i = int(np.argmin(finite))
                raise _Rejected("not_finite", f"{kind}[{i}] = {float(scores[i])!r} is not finite")
            if kind == "probs":
                outside = (scores < -1e-6) | (scores > 1 + 1e-6)
                if outside.any():
                    i = int(np.argmax(outside))
                    raise _Rejected("out_of_range", f"probs[{i}] = {float(scores[i])!r} is not in [0, 1]")
            label = rec.get("label")
            if type(label) is not int:
                raise _Rejected("bad_label", f"label must be an integer, got {_describe(label)}")
            if not 0 <= label < len(values):
                raise _Rejected("label_out_of_range",
                                f"label = {_describe(label)} is out of range for n_classes={len(values)}")
        weight = _number(rec.get("weight", 1.0), "weight", "bad_weight")
        if weight < 0:
            raise _Rejected("negative_weight", f"weight = {weight!r} is negative")
        if weight != 0 and not MIN_STREAM_WEIGHT <= weight <= MAX_STREAM_WEIGHT:
            raise _Rejected("weight_out_of_range", f"weight = {weight!r} is outside [{MIN_STREAM_WEIGHT:g}, "
                                                   f"{MAX_STREAM_WEIGHT:g}] (0 is allowed)")
        return kind, scores, label, weight

    def _reject(self, reason, detail, lineno) -> None:
        self.rejected += 1
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        seen = self._interval.setdefault(reason, [0, lineno, detail])
        seen[0] += 1

    def consume(self, line: bytes | str, lineno: int) -> bool:
        """Handle one input line (bytes or str); False if it was rejected (it is then counted by reason).

        Nothing a line holds makes this raise.
        """
        self.lines += 1
        try:
            kind, scores, label, weight = self._parse(line)
        except _Rejected as exc:
            self._reject(exc.reason, str(exc), lineno)
            return False
        except Exception as exc:  # noqa: BLE001 - a line must never stop the stream
            self._reject("internal", f"{type(exc).__name__}: {str(exc)[:200]}", lineno)
            return False
        if self.kind is None:
            self.kind = kind
            self.n_classes = None if kind == "confidence" else len(scores)
        self._pending.append((scores, label, weight, lineno))
        if len(self._pending) >= _BATCH:
            self.flush()
        return True

    def _update(self, records) -> None:
        scores = np.array([r[0] for r in records], dtype=np.float64)
        labels = np.array([r[1] for r in records], dtype=np.int64)
        weights = np.array([r[2] for r in records], dtype=np.float64)
        self.acc.update(scores, labels, None if (weights == 1.0).all() else weights)

    def flush(self) -> None:
        """Move the validated records into the accumulator."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if self.acc is None:
            self.acc = self._make_accumulator(self.kind == "logits")
        try:
            self._update(pending)
        except Exception:  # noqa: BLE001 - records are validated above; should the kernel still refuse one,
            for record in pending:  # it alone is rejected (the update of a batch is atomic)
                try:
                    self._update([record])
                except Exception as exc:  # noqa: BLE001
                    self._reject("internal", f"{type(exc).__name__}: {str(exc)[:200]}", record[3])

    # -- output --------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The current counters and metrics (null metrics when the window is empty or of weight 0)."""
        self.flush()
        out = {"lines": self.lines, "rejected": self.rejected,
               "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
               "kind": self.kind, "n_classes": self.n_classes,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        metrics = dict.fromkeys(("count", "weight", "ece", "ace", "mce", "rmsce", "accuracy", "mean_confidence",
                                 "brier", "nll", "ece_se", "ece_ci")
                                + (("smooth_ece",) if self._kwargs["smooth"] else ())
                                + (_CUMULATIVE_KEYS if self._cumulative else ()))
        metrics["count"] = self.acc.count if self.acc is not None else 0
        metrics["weight"] = 0.0
        if metrics["count"] > 0:
            try:
                r = self.acc.compute()
            except ValueError:  # every row in the window has weight 0
                pass
            else:
                metrics.update({k: getattr(r, k) for k in metrics if not k.startswith("ecce_")})
                if self._cumulative and r.cumulative is not None:
                    c = r.cumulative
                    metrics.update(ecce_r=c.range, ecce_r_bound=c.range_bound, ecce_r_sigma=c.range_sigma,
                                   ecce_pvalue=c.range_pvalue)
                metrics["ece_ci"] = list(r.ece_ci) if r.ece_ci is not None else None
        out.update(metrics)
        return out

    def rejection_summary(self) -> list[str]:
        """One stderr line per reason of the lines rejected since the last call (and start a new interval)."""
        lines = []
        for reason, (n, first, detail) in sorted(self._interval.items()):
            what = "line" if n == 1 else "lines"
            lines.append(f"calibkit monitor: {n} {what} rejected ({reason}: {REASONS[reason]}), "
                         f"first at line {first}: {' '.join(detail.split())}")
        self._interval = {}
        return lines

    def save(self) -> None:
        """Write the state (accumulator and counters) atomically; a consistent point: everything is flushed."""
        self.flush()
        if not self.state_path:
            return
        acc = self.acc if self.acc is not None else self._make_accumulator(False)  # counters only
        acc.metadata["monitor"] = {"lines": self.lines, "rejected": self.rejected,
                                   "rejected_by_reason": dict(self.rejected_by_reason), "kind": self.kind,
                                   "n_classes": self.n_classes}
        atomic_write(self.state_path, acc.to_bytes())


def _prometheus_families(report: dict) -> list:
    """The report's metrics as (name, type, help, [(labels, value), ...]), the one list both the text file
    (:func:`prometheus_text`) and the HTTP endpoint (``--serve``) expose. Counter names end in ``_total``."""
    gauges = {
        "ece": "Expected calibration error, equal-width bins", "ace": "Calibration error, equal-mass bins",
        "mce": "Maximum calibration error", "rmsce": "Root-mean-square calibration error",
        "accuracy": "Accuracy", "mean_confidence": "Mean top-label confidence", "brier": "Brier score",
        "nll": "Negative log-likelihood", "ece_se": "Bootstrap standard error of the ECE",
        "count": "Rows in the window", "weight": "Total weight of the rows in the window",
        "smooth_ece": "Smooth ECE (Blasiok & Nakkiran 2023)", "ecce_r": "ECCE-R, cumulative calibration error",
        "ecce_r_sigma": "ECCE-R divided by its standard deviation under perfect calibration",
        "ecce_pvalue": "Kuiper p-value of ECCE-R under perfect calibration",
    }
    families = []
    for key, help_text in gauges.items():
        value = report.get(key)
        if value is not None:
            families.append((f"calibkit_{key}", "gauge", f"{help_text}.", [({}, value)]))
    if report.get("ece_ci"):
        lower, upper = report["ece_ci"]
        families.append(("calibkit_ece_ci", "gauge", "Bootstrap percentile interval of the ECE.",
                         [({"bound": "lower"}, lower), ({"bound": "upper"}, upper)]))
    families.append(("calibkit_lines_total", "counter", "Input lines consumed.", [({}, report["lines"])]))
    by_reason = report.get("rejected_by_reason", {})
    families.append(("calibkit_rejected_total", "counter", "Input lines rejected, by reason.",
                     [({"reason": reason}, by_reason.get(reason, 0)) for reason in sorted({*REASONS, *by_reason})]))
    return families


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(report: dict[str, Any]) -> str:
    """The report's numbers in the Prometheus text exposition format (version 0.0.4).

    Metrics that are null (empty or zero-weight window) are left out;
    ``calibkit_rejected_total`` has one sample per reason of :data:`REASONS`
    (``sum(calibkit_rejected_total)`` is the total). ``calibkit monitor
    --serve`` exposes the same metrics over HTTP (:class:`MetricsServer`).

    Examples
    --------
    >>> from calibkit.monitor import prometheus_text
    >>> text = prometheus_text({"lines": 3, "rejected": 1, "rejected_by_reason": {"not_json": 1},
    ...                         "count": 2, "weight": 2.0, "ece": 0.25})
    >>> for line in text.splitlines():
    ...     if not line.startswith("#") and not line.endswith("} 0"):
    ...         print(line)
    calibkit_ece 0.25
    calibkit_count 2
    calibkit_weight 2.0
    calibkit_lines_total 3
    calibkit_rejected_total{reason="not_json"} 1
    """
    lines = []
    for name, kind, help_text, samples in _prometheus_families(report):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            label_text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {value!r}" if labels else f"{name} {value!r}")
    return "\n".join(lines) + "\n"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6; port 0 picks a free one) as ``(host, port)``; ValueError otherwise.

    Examples
    --------
    >>> from calibkit.monitor import parse_address
    >>> parse_address("127.0.0.1:9100"), parse_address("[::1]:0")
    (('127.0.0.1', 9100), ('::1', 0))
    """
    host, sep, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--serve must be HOST:PORT with a port in 0..65535 (e.g. 127.0.0.1:9100), got {text!r}")
    return host, int(port)


class MetricsServer:
    """An HTTP ``/metrics`` endpoint in the Prometheus format, serving the latest report of a monitor.

    Needs ``prometheus_client`` (the optional extra ``prometheus``). The server
    runs in background threads and only reads the report last given to
    :meth:`publish`, so a scrape (even a malformed or aborted request) never
    touches, blocks or stops the monitor. :meth:`close` stops it; it is also a
    context manager.

    Parameters
    ----------
    host, port : str, int
        Address to listen on; port 0 picks a free port (see :attr:`port`).
    report : dict
        The first report to serve (as from ``Monitor.report()``).
    """

    def __init__(self, host: str, port: int, report: dict[str, Any]):
        try:
            import prometheus_client
            from prometheus_client.registry import CollectorRegistry
        except ImportError:
            raise ImportError("--serve needs prometheus_client: pip install 'calibkit[prometheus]'") from None
        self._metric = prometheus_client.Metric
        self._lock = threading.Lock()
        self._report = report
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        try:
            started = prometheus_client.start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise OSError(f"--serve {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        if not isinstance(started, tuple):  # before 0.20 it returned nothing, leaving no way to stop it
            raise ImportError("--serve needs prometheus_client >= 0.20: pip install 'calibkit[prometheus]'")
        self._server, self._thread = started
        self.host = host
        self.port = self._server.server_address[1]

    def publish(self, report: dict[str, Any]) -> None:
        """Serve `report` from now on."""
        with self._lock:
            self._report = report

    def collect(self) -> Iterator[Metric]:
        """The prometheus_client collector protocol: the metrics of the latest report."""
        with self._lock:
            report = self._report
        for name, kind, help_text, samples in _prometheus_families(report):
            metric = self._metric(name[:-len("_total")] if kind == "counter" else name, help_text, kind)
            for labels, value in samples:
                metric.add_sample(name, labels, float(value))
            yield metric

    def close(self) -> None:
        """Stop serving and release the port (waits for the request in progress, if any)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LineQueue:
    """Lines from the reader thread to the parser, with at most _MAX_QUEUED_BYTES read ahead."""

    def __init__(self):
        self._items = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()

    def put(self, item, size) -> None:
        with self._cond:
            while self._items and self._bytes + size > _MAX_QUEUED_BYTES:
                self._cond.wait()
            self._items.append((item, size))
            self._bytes += size
            self._cond.notify_all()

    def get(self, timeout):
        """The next item, or raise TimeoutError after `timeout` seconds without one."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: self._items, timeout):
                raise TimeoutError
            item, size = self._items.popleft()
            self._bytes -= size
            self._cond.notify_all()
            return item


def _read_lines(source, out: _LineQueue, failure: list) -> None:
    """Put every line of `source` on `out` (over-long lines as _TOO_LONG), then None; an error goes to `failure`."""
    try:
        newline = "\n" if isinstance(source, io.TextIOBase) else b"\n"
        while True:
            line = source.readline(MAX_LINE_BYTES + 1)
            if not line:
                break
            if len(line) > MAX_LINE_BYTES:
                while not line.endswith(newline):  # skip the rest of the line
                    line = source.readline(MAX_LINE_BYTES)
                    if not line:
                        break
                out.put(_TOO_LONG, 0)
            else:
                out.put(line, len(line))
    except BaseException as exc:  # noqa: BLE001 - reported by the main thread
        failure.append(exc)
    finally:
        out.put(None, 0)


def _check_output(path, flag, input_path) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder, not a file")
    if input_path is not None and same_file(path, input_path):
        raise ValueError(f"{flag} {path} is the input file; choose another path")


def run(source: IO[bytes] | IO[str], *, every: int = 1000, window: int | None = None, n_bins: int = 15,
        bootstrap: int = 0, seed: int = 0, state: StrPath | None = None, prometheus: StrPath | None = None,
        serve: str | None = None, resume_input: bool = False, smooth: bool = False, cumulative: bool = False,
        backend: Backend = "auto", out: TextIO | None = None, input_path: StrPath | None = None) -> int:
    """Monitor `source` (a binary or text stream); returns the process exit code.

    A text stream with a binary ``buffer`` (``sys.stdin``, a file opened in
    text mode) is read through it, so decoding is per line. The folders of
    `state` and `prometheus` are checked before anything is read (ValueError);
    `input_path`, when given, is the file behind `source`, which is never
    written over. An error reading the input raises (after the final report).

    `serve` (``"HOST:PORT"``) also exposes the metrics of the latest report
    on ``http://HOST:PORT/metrics`` while the monitor runs (see
    :class:`MetricsServer`; needs the extra ``prometheus``); the address
    served is printed on stderr, and the server stops at the end of the
    input or on SIGINT/SIGTERM.

    Examples
    --------
    >>> import io, json
    >>> from calibkit import monitor
    >>> records = b'{"confidence": 0.9, "correct": 1}\\n{"confidence": 0.6, "correct": 0}\\n'
    >>> out = io.StringIO()
    >>> monitor.run(io.BytesIO(records), every=10, out=out)
    0
    >>> report = json.loads(out.getvalue())
    >>> report["lines"], report["count"], round(report["ece"], 3)
    (2, 2, 0.35)
    """
    out = out or sys.stdout
    for path, flag in ((state, "--state"), (prometheus, "--prometheus")):
        if path:
            _check_output(path, flag, input_path)
    address = parse_address(serve) if serve else None
    if hasattr(source, "buffer") and hasattr(source, "encoding"):
        source = source.buffer
    mon = Monitor(window=window, n_bins=n_bins, bootstrap=bootstrap, seed=seed, state_path=state, smooth=smooth,
                  cumulative=cumulative, backend=backend)
    skip = mon.lines if resume_input else 0
    lines = _LineQueue()
    failure = []
    stop = threading.Event()

    # The reader thread blocks on input; the main thread only waits on the
    # queue, so SIGINT/SIGTERM are handled promptly and between records.
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        except ValueError:  # not the main thread: no handlers
            pass
    server = None  # the /metrics endpoint, started once the handlers are in place (a signal then stops it)

    def emit():
        report = mon.report()
        mon.save()  # before anything is printed: a report on stdout always has its state on disk
        for text in mon.rejection_summary():
            print(text, file=sys.stderr, flush=True)
        print(json.dumps(report), file=out, flush=True)
        if prometheus:
            atomic_write(prometheus, prometheus_text(report).encode())
        if server is not None:
            server.publish(report)

    lineno = 0
    since_report = 0
    try:
        if address:
            server = MetricsServer(*address, mon.report())
            host = f"[{server.host}]" if ":" in server.host else server.host
            print(f"calibkit monitor: serving http://{host}:{server.port}/metrics", file=sys.stderr, flush=True)
        threading.Thread(target=_read_lines, args=(source, lines, failure), daemon=True).start()
        while not stop.is_set():
            try:
                line = lines.get(timeout=0.1)
            except TimeoutError:
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
        if server is not None:
            server.close()
    if failure:
        exc = failure[0]
        raise OSError(f"reading the input failed after line {lineno}: {type(exc).__name__}: {exc}")
    return 0
