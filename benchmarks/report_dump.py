"""`calibkit report` on a large memory-mapped dump: peak resident memory and wall time against one read.

    python benchmarks/report_dump.py [--rows 1000000] [--classes 1000] [--dir /tmp/calibkit-dump]

Writes (once) a float32 logits .npy of rows x classes (4 GB at the defaults) and its labels, warms the
page cache, then measures in the same run:
  - one plain read of the file from page cache (`cat`, and calibkit.io's chunked reads),
  - `calibkit report DUMP --labels L --val-fraction 0.1 --calibrate temperature` under /usr/bin/time -v
    (wall time and maximum resident set size).
"""

from __future__ import annotations

import argparse
import pathlib
import re
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dir", default="/tmp/calibkit-dump")
    args = parser.parse_args()
    from calibkit import io

    path, labels = make_dump(pathlib.Path(args.dir), args.rows, args.classes)
    size = path.stat().st_size
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    t_cat = time.perf_counter() - t0
    dump = io.open_dump(path, labels=labels)
    t0 = time.perf_counter()
    for _ in dump.chunks():
        pass
    t_read = time.perf_counter() - t0
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "calibkit.cli", "report", str(path), "--labels", str(labels),
           "--val-fraction", "0.1", "--calibrate", "temperature", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    seconds = (int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    print(proc.stdout)
    print(f"dump: {path} ({size / 2**30:.2f} GiB)")
    print(f"one read from page cache: cat {t_cat:.3f} s, calibkit.io chunks {t_read:.3f} s")
    print(f"calibkit report: {seconds:.2f} s wall = {seconds / t_read:.1f}x the chunked read "
          f"({seconds / t_cat:.1f}x cat); peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
