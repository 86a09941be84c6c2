"""calibkit against its peers, on the same arrays, in one process.

Usage::

    python benchmarks/compare.py                 # every workload, full size
    python benchmarks/compare.py --quick         # small sizes (smoke run)
    python benchmarks/compare.py --only metrics  # one area (workloads_<area>.py)
    python benchmarks/compare.py --match class-wise   # workloads whose name contains this
    python benchmarks/compare.py --threads 1

Every ``benchmarks/workloads_<area>.py`` provides ``workloads(quick) ->
list[Workload]``. For each workload the table gives the median time, the
ratio to one plain read of the input (the memory-bandwidth floor), the ratio
to calibkit's C++ backend (so a peer's row reads "N x slower"), and the peak
extra resident memory of the call (the RSS high-water mark above the memory
in use before it, native allocations of every library included).
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import format_rows, machine_line, run_workload  # noqa: E402

REFERENCE = "calibkit (cpp)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", default=None, help="area(s) to run, e.g. metrics")
    parser.add_argument("--match", default=None, help="only workloads whose name contains this text")
    parser.add_argument("--threads", type=int, default=None, help="calibkit threads (default: all cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    args = parser.parse_args(argv)

    import calibkit

    if args.threads:
        calibkit.set_num_threads(args.threads)
    print(f"# calibkit {calibkit.__version__} | {machine_line()} | threads={calibkit.get_num_threads()}")
    areas = sorted(p.stem[len("workloads_"):] for p in HERE.glob("workloads_*.py"))
    if args.only:
        unknown = set(args.only) - set(areas)
        if unknown:
            parser.error(f"unknown area(s) {sorted(unknown)}; known: {areas}")
        areas = [a for a in areas if a in args.only]
    for area in areas:
        module = importlib.import_module(f"workloads_{area}")
        for w in module.workloads(quick=args.quick):
            if args.match and args.match not in w.name:
                continue
            rows = run_workload(w, measure_memory=not args.no_memory)
            print(format_rows(w, rows, REFERENCE), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
