"""Shared timing harness for ``benchmarks/compare.py``.

A *workload* is one input (made once) and several *contenders* run on it in
the same process: calibkit (both backends), the peers, and the memory-bandwidth
floor (one plain read of the input, e.g. ``np.add.reduce``). Each contender's
result is checked against the reference before it is timed.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import statistics
import time
import tracemalloc
from typing import Callable

import numpy as np


@dataclasses.dataclass
class Contender:
    name: str
    run: Callable[[], object]
    # Returns None if the result is acceptable, else a message. None = unchecked.
    check: Callable[[object], str | None] | None = None
    repeat: int = 5
    # Time it even when the check fails (a peer's recipe that stops short of the optimum):
    # the row then carries the check's message.
    time_if_wrong: bool = False


@dataclasses.dataclass
class Workload:
    area: str  # "metrics", "calibrators", "uncertainty", "streaming", ...
    name: str
    setup: Callable[[], dict]  # builds the arrays; called once
    contenders: Callable[[dict], list[Contender]]  # built from the setup's dict
    floor: Callable[[dict], Callable[[], object]] | None = None  # one plain read
    notes: str = ""


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeat)):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_memory(fn: Callable[[], object]) -> int:
    """Peak extra memory while fn() runs: the larger of the Python/NumPy peak
    (tracemalloc) and, on Linux, the resident high-water mark above the memory in
    use before the call (/proc/self/clear_refs + VmHWM), which sees native
    allocations of every library.
    """
    gc.collect()
    tracemalloc.start()  # catches NumPy temporaries that reuse already-resident pages
    try:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = _proc_status("VmRSS")
        except OSError:
            before = None
        fn()
        traced = tracemalloc.get_traced_memory()[1]
        rss = 0 if before is None else max(0, _proc_status("VmHWM") - before)
        return max(traced, rss)
    finally:
        tracemalloc.stop()


def machine_line() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}"


def run_workload(w: Workload, measure_memory: bool = True) -> list[dict]:
    data = w.setup()
    rows = []
    floor_t = None
    if w.floor is not None:
        floor_fn = w.floor(data)
        floor_t = median_time(floor_fn, repeat=5)
        rows.append({"contender": "one read (floor)", "time": floor_t, "status": "ok", "mem": None})
    for c in w.contenders(data):
        try:
            result = c.run()
            msg = c.check(result) if c.check is not None else None
            if msg is not None and not c.time_if_wrong:
                rows.append({"contender": c.name, "time": float("nan"), "status": f"WRONG: {msg}", "mem": None})
                continue
            t = median_time(c.run, repeat=c.repeat, warmup=0)
            mem = peak_extra_memory(c.run) if measure_memory else None
            rows.append({"contender": c.name, "time": t, "status": "ok", "mem": mem,
                         "note": None if msg is None else f"inexact: {msg}"})
        except Exception as exc:  # a missing peer or a peer that fails on this input
            rows.append({"contender": c.name, "time": float("nan"), "status": f"skipped: {exc!s:.80}", "mem": None})
    return rows


def format_rows(w: Workload, rows: list[dict], reference: str) -> str:
    # The reference row: `reference` itself, else the first calibkit C++ row ("calibkit entropy (cpp)").
    ref_name = next((r["contender"] for r in rows if r["contender"] == reference),
                    next((r["contender"] for r in rows if r["contender"].startswith("calibkit")
                          and r["contender"].endswith("(cpp)")), None))
    ref = next((r["time"] for r in rows if r["contender"] == ref_name), float("nan"))
    floor = next((r["time"] for r in rows if r["contender"] == "one read (floor)"), float("nan"))
    out = [f"\n## {w.area}: {w.name}" + (f"  ({w.notes})" if w.notes else "")]
    out.append(f"{'contender':<34} {'median s':>10} {'x floor':>8} {'vs ' + reference:>16} {'peak extra MB':>14}")
    for r in rows:
        t = r["time"]
        if r["status"] != "ok":
            out.append(f"{r['contender']:<34} {r['status']}")
            continue
        mem = "" if r["mem"] is None else f"{r['mem'] / 2**20:.2f}"
        ratio = t / ref if ref == ref and ref > 0 else float("nan")
        note = f"  ({r['note']})" if r.get("note") else ""
        out.append(f"{r['contender']:<34} {t:>10.4f} {t / floor:>8.2f} {ratio:>15.2f}x {mem:>14}{note}")
    return "\n".join(out)
