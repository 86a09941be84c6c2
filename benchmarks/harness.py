"""Shared timing harness for ``benchmarks/compare.py``.

A *workload* is one input (made once) and several *contenders* run on it in
the same process: calibkit (both backends), the peers, and the memory-bandwidth
floor (one plain read of the input, e.g. ``np.add.reduce``). Each contender is
called once before it is timed: that call compiles the Numba kernels it needs
(outside the timed region) and its result is checked against the reference; a
wrong result is reported instead of timed. A peer whose checked call alone
outlasts the timing budget is timed by that call.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import platform
import shutil
import statistics
import time
import tracemalloc
from typing import Callable

import numpy as np

FLOOR = "one read (floor)"


class SkipWorkload(Exception):
    """Raised by a workload's setup when it cannot run here (too little disk, a missing tool)."""


@dataclasses.dataclass
class Contender:
    name: str
    run: Callable[[], object] | None
    # Returns None if the result is acceptable, else a message. None = unchecked.
    check: Callable[[object], str | None] | None = None
    repeat: int = 5
    # Time it even when the check fails (a peer's recipe that stops short of the optimum):
    # the row then carries the check's message.
    time_if_wrong: bool = False
    # run() makes this many calls: the table shows the time per call.
    calls: int = 1
    # Set (and run None) for a peer that is not installed: the row says so in one line.
    skip_reason: str | None = None


def missing(name: str, exc: BaseException) -> Contender:
    """The row of a peer that cannot be imported."""
    return Contender(name, None, skip_reason=f"not installed ({exc!s:.60})")


@dataclasses.dataclass
class Goal:
    """One line of issue 13's table: ``value(times)`` (times by contender name, FLOOR included) against
    ``limit``; ``now`` is the issue's measured value, quoted beside."""
    label: str
    value: Callable[[dict], float]
    limit: float
    op: str = "<="  # or ">="
    unit: str = "x"
    now: str = ""

    def line(self, times: dict, quick: bool = False) -> str:
        """The goal's line; at --quick sizes the value is printed without a verdict (the goal is
        defined at full size)."""
        try:
            v = float(self.value(times))
        except (KeyError, ZeroDivisionError, TypeError):
            v = float("nan")
        if not math.isfinite(v):
            return f"goal  {self.label}: not measured (goal {self.op} {self.limit:g}{self.unit})"
        if quick:
            return f"goal  {self.label}: {v:.2f}{self.unit} at --quick size, not judged (run --goals)"
        met = v <= self.limit if self.op == "<=" else v >= self.limit
        now = f"; issue: {self.now}" if self.now else ""
        return (f"goal  {self.label}: {v:.2f}{self.unit}  (goal {self.op} {self.limit:g}{self.unit}{now})  "
                f"{'met' if met else 'NOT MET'}")


def ratio_to_floor(name: str, label: str, limit: float, now: str = "", what: str = "one read") -> Goal:
    return Goal(f"{label}, {name} / {what}", lambda t: t[name] / t[FLOOR], limit, now=now)


@dataclasses.dataclass
class Workload:
    area: str  # "metrics", "calibrators", "uncertainty", "streaming", "report", ...
    name: str
    setup: Callable[[], dict]  # builds the arrays; called once
    contenders: Callable[[dict], list[Contender]]  # built from the setup's dict
    floor: Callable[[dict], Callable[[], object]] | None = None  # one plain read
    notes: str = ""
    goals: list[Goal] = dataclasses.field(default_factory=list)  # issue-13 goals measured by this workload
    teardown: Callable[[dict], None] | None = None  # removes what setup made (files), always called
    floor_name: str = "one read"
    # A floor shorter than this measures a call (or a process start), not a read: no column of ratios to it.
    floor_min: float = 1e-4
    # False when the contenders do different things (no column of ratios to calibkit's C++ row)
    relative: bool = True


def read_scores(d: dict) -> Callable[[], object]:
    """The floor of a workload on ``d["scores"]``: one plain read of it (``np.add.reduce`` over every element)."""
    s = d["scores"]
    return lambda: np.add.reduce(s, axis=None)


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1, budget: float = math.inf) -> float:
    """Median of ``repeat`` timed calls (after ``warmup`` untimed ones); stops early, after at least one
    timed call, once ``budget`` seconds have been spent timing. The garbage collector runs once before and
    is off during the calls (as in timeit). The objects alive after that collection are then frozen
    (``gc.freeze``), so the next workload's collection scans only what was made since: a full collection
    costs 0.1-0.6 s once torch is imported, and made up 115 s of a 195 s ``--quick`` run."""
    for _ in range(warmup):
        fn()
    times = []
    spent = 0.0
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            spent += times[-1]
            if spent >= budget:
                break
    finally:
        gc.enable()
    return statistics.median(times)


def free_disk_or_skip(directory: str, needed: int) -> None:
    """Raise SkipWorkload unless ``directory`` has ``needed`` bytes free plus 1 GiB to spare."""
    free = shutil.disk_usage(directory).free
    if free < needed + 2**30:
        raise SkipWorkload(f"needs {needed / 2**30:.1f} GiB + 1 GiB spare in {directory}, "
                           f"{free / 2**30:.1f} GiB free")


def realistic_logits(n: int, k: int, seed: int = 0, probabilities: bool = False):
    """Labels drawn uniformly; float32 logits = 3 * N(0, 1) + 4 on the label column (or their softmax).

    Informative and over-confident, as real classifiers are (random labels would drive a fitted
    temperature to its bound). Built in chunks, so set-up memory stays small."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    scores = np.empty((n, k), dtype=np.float32)
    step = max(1, (1 << 22) // k)
    for i in range(0, n, step):
        m = min(step, n - i)
        z = rng.standard_normal((m, k), dtype=np.float32)
        z *= 3.0
        z[np.arange(m), labels[i:i + m]] += 4.0
        if probabilities:
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
        scores[i:i + m] = z
    return scores, labels


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


class NumbaClock:
    """Seconds Numba spent, since :meth:`install`, holding its compiler lock (``jit``: type inference, compiling or
    loading a cached kernel, the first call of each signature) and compiling (``compile``: cache misses only),
    from Numba's own events; the outermost event of each nesting is counted."""

    def __init__(self):
        self.jit = self.compile = 0.0
        self.compiled = {}  # seconds of compiling by kernel name ("module.function")

    def install(self) -> "NumbaClock":
        from numba.core import event

        clock = self

        class _Outermost(event.Listener):
            def __init__(self, field):
                self.field, self.depth, self.t0 = field, 0, 0.0

            def on_start(self, ev):
                if self.depth == 0:
                    self.t0 = time.perf_counter()
                    self.what = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
                self.depth += 1

            def on_end(self, ev):
                self.depth -= 1
                if self.depth == 0:
                    dt = time.perf_counter() - self.t0
                    setattr(clock, self.field, getattr(clock, self.field) + dt)
                    if self.what is not None:
                        fn = self.what.py_func
                        name = f"{fn.__module__}.{fn.__qualname__}"
                        clock.compiled[name] = clock.compiled.get(name, 0.0) + dt

        event.register("numba:compiler_lock", _Outermost("jit"))
        event.register("numba:compile", _Outermost("compile"))
        return self


class Phases:
    """Where a workload's wall time went: ``add(what, seconds)`` in order; :meth:`line` sums them."""

    def __init__(self):
        self.parts = []

    def add(self, what: str, seconds: float) -> None:
        self.parts.append((what, seconds))

    def timed(self, what: str, fn: Callable[[], object]):
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.add(what, time.perf_counter() - t0)

    def line(self, min_seconds: float = 0.05) -> str:
        """The parts of at least ``min_seconds``, largest first, and the rest summed."""
        big = sorted((p for p in self.parts if p[1] >= min_seconds), key=lambda p: -p[1])
        rest = sum(s for _, s in self.parts) - sum(s for _, s in big)
        return ", ".join([f"{what} {s:.2f}" for what, s in big] + ([f"other {rest:.2f}"] if rest >= 0.005 else []))


def run_workload(w: Workload, measure_memory: bool = True, budget: float = math.inf,
                 calibkit_only: bool = False, phases: Phases | None = None) -> list[dict]:
    """Rows {contender, time (per call), status, mem, note} of one workload; one "skipped" row when its
    setup raises SkipWorkload. ``budget``: seconds of timed calls per contender (at least one call);
    ``calibkit_only``: leave out the peers; ``phases``: receives the seconds of each step (set-up, the
    contenders' construction, each contender's first call and its timed calls, teardown)."""
    phases = Phases() if phases is None else phases
    try:
        data = phases.timed("set-up", w.setup)
    except SkipWorkload as exc:
        return [{"contender": "(workload)", "time": float("nan"), "status": f"skipped: {exc}", "mem": None}]
    try:
        return _run(w, data, measure_memory, budget, calibkit_only, phases)
    finally:
        if w.teardown is not None:
            phases.timed("teardown", lambda: w.teardown(data))


def _run(w, data, measure_memory, budget, calibkit_only, phases):
    rows = []
    if w.floor is not None:
        floor_t = phases.timed("floor", lambda: median_time(w.floor(data), repeat=5, budget=budget))
        rows.append({"contender": FLOOR, "time": floor_t, "status": "ok", "mem": None})
    for c in phases.timed("contenders built (references, imports)", lambda: w.contenders(data)):
        if calibkit_only and not c.name.startswith("calibkit"):
            continue
        if c.skip_reason is not None:
            rows.append({"contender": c.name, "time": float("nan"), "status": f"skipped: {c.skip_reason}",
                         "mem": None})
            continue
        try:
            t0 = time.perf_counter()
            result = c.run()  # the warm-up: compiles Numba kernels, outside the timed region
            first = time.perf_counter() - t0
            phases.add(f"{c.name} first call", first)
            msg = phases.timed(f"{c.name} check", lambda: c.check(result)) if c.check is not None else None
            if msg is not None and not c.time_if_wrong:
                rows.append({"contender": c.name, "time": float("nan"), "status": f"WRONG: {msg}", "mem": None})
                continue
            if first >= budget and not c.name.startswith("calibkit"):
                # a peer whose one call outlasts the budget (minutes for some recipes at full size) is timed by
                # that call: a second one would only double the run; calibkit's first call may include a
                # Numba compile, so calibkit is always timed again
                t = first / c.calls
            else:
                t = phases.timed(f"{c.name} timed", lambda: median_time(c.run, repeat=c.repeat, warmup=0,
                                                                         budget=budget)) / c.calls
            mem = phases.timed(f"{c.name} memory", lambda: peak_extra_memory(c.run)) if measure_memory else None
            rows.append({"contender": c.name, "time": t, "status": "ok", "mem": mem,
                         "note": None if msg is None else f"inexact: {msg}"})
        except Exception as exc:  # a peer that fails on this input
            rows.append({"contender": c.name, "time": float("nan"), "status": f"failed: {exc!s:.100}",
                         "mem": None})
    return rows


def torch_one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with torch on one thread (restored after): for small batches, where torch's thread pool only
    costs (it spin-waits, and on a loaded machine a call then takes milliseconds)."""
    import torch

    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
    return run


def format_time(t: float) -> str:
    if t >= 1.0:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def _reference_name(rows, reference):
    names = [r["contender"] for r in rows if r["status"] == "ok"]
    if reference in names:
        return reference
    return next((n for n in names if n.startswith("calibkit") and n.endswith("(cpp)")), None)


def backend_pairs(rows) -> list[tuple[str, float]]:
    """(name, numba time / cpp time) for each "X (cpp)" row with an "X (numba)" twin."""
    t = {r["contender"]: r["time"] for r in rows if r["status"] == "ok"}
    out = []
    for name, v in t.items():
        if name.endswith("(cpp)"):
            twin = name[:-len("(cpp)")] + "(numba)"
            if twin in t and v > 0:
                out.append((name[:-len(" (cpp)")], t[twin] / v))
    return out


def format_rows(w: Workload, rows: list[dict], reference: str, numba_goal: float = 2.0, quick: bool = False) -> str:
    """The workload's table: only columns that carry a meaningful number for some row, aligned; then the goal
    lines and the Numba / C++ ratio of each pair of backend rows (without a verdict at --quick sizes)."""
    ref_name = _reference_name(rows, reference)
    ok = [r for r in rows if r["status"] == "ok"]
    times = {r["contender"]: r["time"] for r in ok}
    floor = times.get(FLOOR)
    ref = times.get(ref_name)
    columns = [("median", lambda r: format_time(r["time"]))]
    if floor and floor >= w.floor_min:
        columns.append((f"x {w.floor_name}", lambda r: f"{r['time'] / floor:.2f}"))
    if ref and w.relative and any(r["contender"] not in (ref_name, FLOOR) for r in ok):
        columns.append((f"x {ref_name}", lambda r: "" if r["contender"] == FLOOR else f"{r['time'] / ref:.2f}"))
    if any(r.get("mem") is not None for r in ok):
        columns.append(("peak extra MB", lambda r: "" if r.get("mem") is None else f"{r['mem'] / 2**20:.1f}"))
    name_w = max([len("contender")] + [len(r["contender"]) for r in rows])
    cells = [[f(r) for _, f in columns] for r in ok]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _) in enumerate(columns)]
    out = [f"\n## {w.area}: {w.name}" + (f"  ({w.notes})" if w.notes else "")]
    out.append("  ".join([f"{'contender':<{name_w}}"] + [f"{h:>{wd}}" for (h, _), wd in zip(columns, widths)]))
    cell_of = {id(r): c for r, c in zip(ok, cells)}
    for r in rows:
        if r["status"] != "ok":
            out.append(f"{r['contender']:<{name_w}}  {r['status']}")
            continue
        note = f"  ({r['note']})" if r.get("note") else ""
        out.append("  ".join([f"{r['contender']:<{name_w}}"]
                             + [f"{c:>{wd}}" for c, wd in zip(cell_of[id(r)], widths)]) + note)
    for g in w.goals:
        out.append(g.line(times, quick))
    for name, ratio in backend_pairs(rows):
        what = w.name if name == "calibkit" else f"{w.name}: {name}"
        verdict = ("at --quick size, not judged (run --goals)" if quick else
                   f"(goal <= {numba_goal:g}x; issue: 1.8-6.4x)  {'met' if ratio <= numba_goal else 'NOT MET'}")
        out.append(f"goal  numba / cpp, {what}: {ratio:.2f}x  {verdict}")
    return "\n".join(out)
