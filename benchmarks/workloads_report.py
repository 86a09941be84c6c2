"""`calibkit report` on a generated float32 logits dump, as a whole command, against `cat` of the same file.

The dump (labels drawn; logits 3 N(0, 1) + 4 on the label column) is written to a temporary directory that is
removed after the workload, whatever happens; the workload is skipped when the disk has too little room.
The first (untimed) run of each backend compiles/loads its kernels and its JSON output is checked: the
raw top-label ECE of the evaluation rows against a float64 NumPy reference, the fitted temperature against
an independent float64 fit on the validation rows (1e-6 relative).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

from harness import Contender, Goal, Workload, free_disk_or_skip
from workloads_calibrators import reference_temperature
from workloads_metrics import ece_of, tolerance

VAL_FRACTION = 0.1


def _write_dump(n, k, seed=0):
    """A temporary directory with logits.npy (float32, n x k) and labels.npy, written in chunks."""
    tmp = tempfile.mkdtemp(prefix="calibkit-bench-")
    try:
        free_disk_or_skip(tmp, n * k * 4 + n * 8)
        path, labels_path = pathlib.Path(tmp) / "logits.npy", pathlib.Path(tmp) / "labels.npy"
        z = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k))
        rng = np.random.default_rng(seed)
        y = rng.integers(0, k, n)
        step = max(1, (1 << 22) // k)
        for i in range(0, n, step):
            m = min(step, n - i)
            block = rng.standard_normal((m, k), dtype=np.float32)
            block *= 3.0
            block[np.arange(m), y[i:i + m]] += 4.0
            z[i:i + m] = block
        z.flush()
        del z
        np.save(labels_path, y)
        return {"dir": tmp, "path": path, "labels_path": labels_path, "n": n, "k": k}
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


def _references(d):
    """Raw top-label ECE of the evaluation rows and the optimal temperature on the validation rows, in float64
    (row blocks: no float64 copy of the dump)."""
    from calibkit import io

    z = np.load(d["path"], mmap_mode="r")
    y = np.load(d["labels_path"])
    val = io.split_mask(len(y), VAL_FRACTION)
    conf, correct = [], []
    rows = max(1, (1 << 22) // d["k"])
    for a in range(0, len(y), rows):
        keep = ~val[a:a + rows]
        x = np.asarray(z[a:a + rows][keep], dtype=np.float64)
        m = x.max(axis=1, keepdims=True)
        conf.append(1.0 / np.exp(x - m).sum(axis=1))
        correct.append(x.argmax(axis=1) == y[a:a + rows][keep])
    d["ece"] = ece_of(np.concatenate(conf), np.concatenate(correct))
    d["n_eval"] = int((~val).sum())
    d["temperature"] = reference_temperature(np.asarray(z[val]), y[val])
    return d


# The command runs as an installed user's would: with Python's bytecode caches (pip compiles them at install).
# Where PYTHONDONTWRITEBYTECODE is set (as on the benchmark machine), every run would compile calibkit's
# sources again (0.2-0.3 s of each command); without it the untimed first run writes the caches.
_BYTECODE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _contenders(d, methods):
    def run(backend):
        out = pathlib.Path(d["dir"]) / f"report-{backend}.json"
        cmd = [sys.executable, "-m", "calibkit.cli", "report", str(d["path"]), "--labels", str(d["labels_path"]),
               "--from-logits", "--val-fraction", str(VAL_FRACTION), "--calibrate", methods, "--backend", backend,
               "--json", str(out), "--quiet"]

        def go():
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_BYTECODE_ENV)
            if proc.returncode != 0:
                raise RuntimeError(f"calibkit report exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
            return json.loads(out.read_text())
        return go

    def check(result):
        raw, t = result["rows"]["raw"], result["rows"]["temperature"]["params"]["temperature_"]
        if raw["n"] != d["n_eval"]:
            return f"{raw['n']} evaluation rows, expected {d['n_eval']}"
        if abs(raw["ece"] - d["ece"]) > tolerance(d["ece"], d["n_eval"], True, 1e-9):
            return f"raw ECE {raw['ece']!r} != {d['ece']!r}"
        if abs(t - d["temperature"]) > 1e-6 * d["temperature"]:
            return f"T = {t!r}, optimum {float(d['temperature'])!r}"
        bad = [m for m, row in result["rows"].items() if not all(np.isfinite(v) for k, v in row.items()
                                                                  if isinstance(v, float))]
        return f"non-finite metrics in {bad}" if bad else None

    return [Contender(f"calibkit report ({b})", run(b), check, repeat=3) for b in ("cpp", "numba")]


def _cat(d):
    return lambda: subprocess.run(["cat", str(d["path"])], stdout=subprocess.DEVNULL, check=True)


def _setup(n, k):
    d = _write_dump(n, k)
    try:
        subprocess.run(["cat", str(d["path"])], stdout=subprocess.DEVNULL, check=True)  # into the page cache
        return _references(d)
    except BaseException:
        _remove(d["dir"])
        raise


def _goal(label, limit, now):
    name = "calibkit report (cpp)"
    return Goal(f"{label}, {name} / cat", lambda t: t[name] / t["one read (floor)"], limit, now=now)


# `cat` of a file under ~100 MB (the --quick dumps) is mostly its process start: no column of ratios to it
CAT_MIN = 0.05


def _size(n, k):
    mb = n * k * 4 / 2**20
    return f"{mb:.0f} MiB" if mb >= 10 else f"{mb:.2g} MiB"


def workloads(quick: bool = False) -> list[Workload]:
    n1, k1 = (2_000, 1000) if quick else (500_000, 1000)  # full: 2 GB
    n2, k2 = (2_000, 20) if quick else (2_000_000, 100)  # full: 800 MB (quick: K=20, vector scaling is slow)
    four = "temperature,vector,isotonic,histogram"
    return [
        Workload("report", f"calibkit report --calibrate temperature --val-fraction 0.1, {n1:,} x K={k1} "
                 f"float32 logits ({_size(n1, k1)} .npy)",
                 lambda: _setup(n1, k1), lambda d: _contenders(d, "temperature"), _cat,
                 notes="whole command, Python start-up included", teardown=lambda d: _remove(d["dir"]),
                 floor_name="cat", floor_min=CAT_MIN,
                 goals=[_goal("report raw + temperature, 2 GB K=1000", 4.0, "15x")]),
        Workload("report", f"calibkit report --calibrate {four}, {n2:,} x K={k2} float32 logits "
                 f"({_size(n2, k2)} .npy)",
                 lambda: _setup(n2, k2), lambda d: _contenders(d, four), _cat,
                 notes="whole command, Python start-up included", teardown=lambda d: _remove(d["dir"]),
                 floor_name="cat", floor_min=CAT_MIN,
                 goals=[_goal("report 4 calibrators, 2M x 100", 8.0, "23-27 s")]),
    ]
