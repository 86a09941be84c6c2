"""`calibkit report` on a large memory-mapped dump: peak resident memory and wall time against one read.

    python benchmarks/report_dump.py [--rows 1000000] [--classes 1000] [--dir /tmp/calibkit-dump] [--repeat 3]
    python benchmarks/report_dump.py --stages LOGITS.npy LABELS.npy [--repeat 3]   # only the stage table

Writes (once) a float32 logits .npy of rows x classes (4 GB at the defaults) and its labels, warms the
page cache, then measures in the same run:
  - one plain read of the file from page cache (`cat`, and calibkit.io's chunked reads),
  - `calibkit report DUMP --labels L --val-fraction 0.1 --calibrate temperature` under /usr/bin/time -v
    (wall time and maximum resident set size; the median and the largest over --repeat runs),
  - where that time goes, for each backend (the fastest of --repeat runs): the wall and CPU time (all threads)
    of each stage of the command, from the interpreter's start to its exit (start-up, imports, opening the
    dump, reading the validation rows, the fit, the pass over the evaluation rows, the output).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import statistics
import subprocess
import sys
import time

import numpy as np


def make_dump(directory, n, k):
    directory.mkdir(parents=True, exist_ok=True)
    path, labels = directory / f"logits_{n}x{k}.npy", directory / f"labels_{n}.npy"
    if path.exists() and labels.exists():
        return path, labels
    z = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
    y = np.empty(n, dtype=np.int64)
    rng = np.random.default_rng(0)
    step = 1 << 14
    for i in range(0, n, step):
        m = min(step, n - i)
        block = rng.standard_normal((m, k), dtype=np.float32) * 3.0
        z[i:i + m] = block
        y[i:i + m] = np.argmax(block / 2.0 + rng.gumbel(size=(m, k)).astype(np.float32), axis=1)  # true T = 2
    z.flush()
    del z
    np.save(labels, y)
    return path, labels


def run_report(path, labels):
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "calibkit.cli", "report", str(path), "--labels", str(labels),
           "--val-fraction", "0.1", "--calibrate", "temperature", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    return proc.stdout, seconds, rss


# `calibkit report` in a child process, a mark (wall clock, CPU time of the process) where each stage ends: the
# report's stage hook marks the end of one stage and the start of the next. The parent adds the interpreter's
# start-up (from its spawn) and exit (to its wait) around the child's marks.
_STAGED_CHILD = r"""
import json, resource, sys, time
def end(name):
    ru = resource.getrusage(resource.RUSAGE_SELF)
    marks.append((name, time.time(), ru.ru_utime + ru.ru_stime))
marks = []
end("python start-up")
out, argv = sys.argv[1], sys.argv[2:]
import numpy
end("import numpy")
import calibkit.cli as cli
from calibkit import report
end("import calibkit.cli")
run, current = report.report, ["report: checks"]
def hooked(*args, **kwargs):
    end("arguments, open the dump, split mask")
    result = run(*args, **kwargs)
    end(current[0] + " (and the results)")
    return result
def staged(quiet, what, unit="rows"):
    def stage(name, rows):
        end(current[0])
        current[0] = name
    return None, stage, lambda: None
report.report, cli._staged_progress = hooked, staged
sys.argv[1:] = argv
try:
    if hasattr(cli, "run"):
        cli.run()  # as the command runs: main(), then the exit
    raise SystemExit(cli.main())  # a checkout from before cli.run
finally:
    end("format, write the JSON")
    with open(out, "w") as f:
        json.dump(marks, f)
"""


def stage_times(path, labels, backend, args=("--val-fraction", "0.1", "--calibrate", "temperature")):
    """``[(stage, wall seconds, CPU seconds)]`` of one ``calibkit report`` command: Python start-up, imports,
    opening the dump, each stage the report names (the validation rows, each fit, the pass), the output and the
    interpreter's exit. CPU time is that of all the process's threads (more than the wall time where a stage
    runs on several)."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="calibkit-stages-") as tmp:
        marks_file = os.path.join(tmp, "marks.json")
        cmd = [sys.executable, "-c", _STAGED_CHILD, marks_file, "report", str(path), "--labels", str(labels),
               *args, "--backend", backend, "--json", os.path.join(tmp, "out.json"), "--quiet"]
        t0 = time.time()
        # with Python's bytecode caches, as an installed user's command runs (see workloads_report.py)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        t1 = time.time()
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"calibkit report exited {os.waitstatus_to_exitcode(status)}")
        with open(marks_file) as f:
            marks = json.load(f)
    marks.append(("interpreter exit", t1, usage.ru_utime + usage.ru_stime))
    out, wall0, cpu0 = [], t0, 0.0
    for name, wall, cpu in marks:
        out.append((name, wall - wall0, cpu - cpu0))
        wall0, cpu0 = wall, cpu
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dir", default="/tmp/calibkit-dump")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", nargs=2, metavar=("LOGITS", "LABELS"),
                        help="only the stage table, of this .npy dump and its labels")
    args = parser.parse_args()
    if args.stages:
        print_stages(*args.stages, args.repeat)
        return
    from calibkit import io

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from harness import machine_line

    path, labels = make_dump(pathlib.Path(args.dir), args.rows, args.classes)
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    cats, reads = [], []
    dump = io.open_dump(path, labels=labels)
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
        cats.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in dump.chunks():
            pass
        reads.append(time.perf_counter() - t0)
    t_cat, t_read = min(cats), min(reads)
    runs = [run_report(path, labels) for _ in range(args.repeat)]
    wall = statistics.median(r[1] for r in runs)
    rss = max(r[2] for r in runs)
    print(f"# {machine_line()}")
    print(runs[0][0])
    print(f"dump: {path} ({size / 2**30:.2f} GiB)")
    print(f"one read from page cache (best of 3): cat {t_cat:.3f} s, calibkit.io chunks {t_read:.3f} s")
    print(f"calibkit report ({args.repeat} runs: {', '.join(f'{r[1]:.2f}' for r in runs)} s): median {wall:.2f} s "
          f"= {wall / t_read:.1f}x the chunked read ({wall / t_cat:.1f}x cat); peak RSS {rss:.0f} MiB")
    print_stages(path, labels, args.repeat)


def print_stages(path, labels, repeat):
    for backend in ("cpp", "numba"):
        stage_times(path, labels, backend)  # untimed: Numba's cache written, the bytecode compiled
        runs = [stage_times(path, labels, backend) for _ in range(repeat)]
        best = min(runs, key=lambda r: sum(w for _, w, _ in r))
        print(f"stages of the fastest of {repeat} runs ({backend}): wall, CPU of all threads")
        for name, wall, cpu in best + [("total", sum(r[1] for r in best), sum(r[2] for r in best))]:
            print(f"  {name[:60]:<60} {wall * 1e3:8.1f} ms {cpu * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
