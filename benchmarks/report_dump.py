"""`calibkit report` on a large memory-mapped dump: peak resident memory and wall time against one read.

    python benchmarks/report_dump.py [--rows 1000000] [--classes 1000] [--dir /tmp/calibkit-dump] [--repeat 3]

Writes (once) a float32 logits .npy of rows x classes (4 GB at the defaults) and its labels, warms the
page cache, then measures in the same run:
  - one plain read of the file from page cache (`cat`, and calibkit.io's chunked reads),
  - `calibkit report DUMP --labels L --val-fraction 0.1 --calibrate temperature` under /usr/bin/time -v
    (wall time and maximum resident set size; the median and the largest over --repeat runs),
  - where that time goes (in this process): reading the validation rows, the fit, the one pass over the
    evaluation rows (raw and calibrated metrics), and the calibrated kernel alone on that pass's rows.
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


def breakdown(dump):
    """Seconds of: reading the validation rows, the fit, the pass (raw and calibrated metrics), and the calibrated
    kernel alone over the pass's rows (from memory)."""
    from calibkit import io, report
    from calibkit.streaming import CalibrationAccumulator

    mask = io.split_mask(dump.n_rows, 0.1)
    marks = []
    result = report.report(dump, val_mask=mask, methods=["temperature"],
                           stage=lambda name, rows: marks.append((name.split(":")[0], time.perf_counter())))
    marks.append(("end", time.perf_counter()))
    spans = {name: t1 - t0 for (name, t0), (_, t1) in zip(marks, marks[1:])}
    kernel = 0.0
    temperature = result["rows"]["temperature"]["params"]["temperature_"]
    acc = CalibrationAccumulator(15, from_logits=True, temperature=temperature, classwise=True,
                                 n_classes=dump.n_classes)
    for a, s, y in dump.chunks():
        kept = ~mask[a:a + len(y)]
        s, y = s[kept], y[kept]
        t = time.perf_counter()
        acc.update(s, y)
        kernel += time.perf_counter() - t
    return {"validation rows": spans["pass 1/2"], "fit": spans["fit 1/1"], "pass": spans["pass 2/2"],
            "calibrated kernel alone (the pass's rows)": kernel}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dir", default="/tmp/calibkit-dump")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
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
    parts = breakdown(dump)
    print("in-process breakdown: " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))


if __name__ == "__main__":
    main()
