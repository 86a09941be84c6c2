"""calibkit against its peers, on the same arrays, in one process.

Usage::

    python benchmarks/compare.py                 # every workload, full size
    python benchmarks/compare.py --quick         # small sizes, few repeats: a smoke run (under a minute)
    python benchmarks/compare.py --goals         # only the workloads that measure a goal of issue 13 or 17
    python benchmarks/compare.py --only metrics  # one area (workloads_<area>.py)
    python benchmarks/compare.py --match class-wise   # workloads whose name contains this (repeatable: any of)
    python benchmarks/compare.py --threads 1
    python benchmarks/compare.py --no-memory     # skip the peak-memory pass
    python benchmarks/compare.py --calibkit-only # no peers (their recipes take minutes at full size)

Every ``benchmarks/workloads_<area>.py`` provides ``workloads(quick) ->
list[Workload]``. Each contender (calibkit C++, calibkit Numba, each installed
peer) is called once untimed (Numba compiles there) and its result checked
against the reference before it is timed. For each workload the table gives
the median time (per call for per-call workloads), the ratio to one plain read
of the input (the memory-bandwidth floor; `cat` of the file for the report;
left out when that read takes under 0.1 ms, or `cat` under 50 ms: it then
measures a call or a process start, not bandwidth), the ratio to calibkit's C++ backend (so a peer's row reads "N x
slower"; left out where the rows do different things), and the peak extra
resident memory of the call (the RSS high-water mark above the memory in use
before it, native allocations of every library included; not in --quick).
Columns with nothing to show are left out; a peer that is not installed is one
"skipped" line. Below a table: the issue-13 and issue-17 goals it measures, each
on one line with the measured value, and the Numba / C++ ratio of each pair of
backend rows. The goal lines are repeated at the end as a summary. The last line
gives the wall and CPU time of the run (on a loaded machine the CPU time is what
the script itself costs) and the seconds Numba spent compiling or loading kernels.

``--quick`` runs every workload at small sizes, each contender timed for 0.1 s
(at least once): about 20 s on 2 cores once Numba's cache holds the kernels. The
first run after an install or a change to ``calibkit/_numba`` also compiles them
(about 100 s more on 2 cores, never inside a timed call; the last line says how
long Numba spent). ``--profile`` adds, under each table, where the workload's wall
time went (set-up, building the contenders: references and peer imports, each
first call, the timed calls) and at the end Numba's compile seconds by kernel.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import resource
import signal
import sys
import time

# OpenMP pools (torch's, Numba's omp layer) sleep instead of spinning while idle, unless the caller chose:
# on a shared, loaded machine a spinning pool turns a millisecond call into tens of milliseconds.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import NumbaClock, Phases, format_rows, machine_line, run_workload  # noqa: E402

REFERENCE = "calibkit (cpp)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats, for a smoke run")
    parser.add_argument("--goals", action="store_true", help="only the workloads that measure an issue-13 or issue-17 goal")
    parser.add_argument("--only", action="append", default=None, help="area(s) to run, e.g. metrics")
    parser.add_argument("--match", action="append", default=None,
                        help="only workloads whose name contains this text (repeat it for any of several)")
    parser.add_argument("--threads", type=int, default=None, help="calibkit threads (default: all cores)")
    parser.add_argument("--calibkit-only", action="store_true", help="leave out the peers (calibkit's rows only)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass (--quick skips it)")
    parser.add_argument("--profile", action="store_true",
                        help="after each workload, where its wall time went (set-up, references, first calls, ...)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # a terminated run still removes the files its workloads wrote (their finally blocks run on SystemExit)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    areas = sorted(p.stem[len("workloads_"):] for p in HERE.glob("workloads_*.py"))
    if args.only:
        unknown = set(args.only) - set(areas)
        if unknown:
            parser.error(f"unknown area(s) {sorted(unknown)}; known: {areas}")
        areas = [a for a in areas if a in args.only]

    def selected():
        for area in areas:
            for w in importlib.import_module(f"workloads_{area}").workloads(quick=args.quick):
                if (not args.match or any(m in w.name for m in args.match)) and (not args.goals or w.goals):
                    yield w

    numba_clock = NumbaClock().install()  # before calibkit's kernels are first called

    import calibkit

    if args.threads:
        calibkit.set_num_threads(args.threads)
    print(f"# calibkit {calibkit.__version__} | {machine_line()} | threads={calibkit.get_num_threads()}"
          + (" | quick" if args.quick else ""))
    # seconds of timed calls per contender (at least one call): keeps slow peers from dominating a quick run
    budget = 0.1 if args.quick else 20.0
    summary = []
    run_all(args, selected(), numba_clock, budget, summary)
    if summary:
        print("\n## summary: goals of issues 13 and 17" + (" (at --quick sizes: not judged)" if args.quick else "")
              + "\n" + "\n".join(summary))
    if args.profile and numba_clock.compiled:
        print("\n# Numba compiling by kernel (s): " + ", ".join(
            f"{name} {t:.1f}" for name, t in sorted(numba_clock.compiled.items(), key=lambda x: -x[1]) if t >= 0.1))
    cpu = sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))
    print(f"\n# compare.py ran in {time.perf_counter() - start:.1f} s wall, {cpu:.1f} s CPU (this process and "
          f"its children); Numba JIT in this process {numba_clock.jit:.1f} s wall, of which compiling "
          f"{numba_clock.compile:.1f} s (the rest: type dispatch and cache loads)")
    return 0


def run_all(args, workloads, numba_clock, budget, summary):
    """Run, print and collect the goal lines of each workload."""
    for w in workloads:
        t0, jit0 = time.perf_counter(), numba_clock.jit
        phases = Phases()
        rows = run_workload(w, measure_memory=not (args.no_memory or args.quick), budget=budget,
                            calibkit_only=args.calibkit_only, phases=phases)
        text = (format_rows(w, rows, REFERENCE, quick=args.quick)
                + f"\n(workload: {time.perf_counter() - t0:.1f} s"
                + (f"; Numba JIT {numba_clock.jit - jit0:.2f} s; {phases.line()})" if args.profile else ")"))
        print(text, flush=True)
        summary += [line for line in text.splitlines() if line.startswith("goal  ")]


if __name__ == "__main__":
    raise SystemExit(main())
