"""Dump.take of a file: the selected rows read straight into one array (``_RowFile.read_runs``: positioned
scatter reads, runs of rows close together by one read).

The plain NumPy reference is ``np.load(path)[mask]``. A file truncated after it was opened must raise a clear
DumpError and never crash the process: those cases run in a subprocess.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from calibkit import io


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3001,), (3001, 1), (3001, 7), (257, 1000)])
def test_take_equals_numpy_mask(tmp_path, monkeypatch, dtype, shape):
    rng = np.random.default_rng(5)
    z = rng.normal(size=shape).astype(dtype)
    y = rng.integers(0, 2 if len(shape) == 1 else shape[1], shape[0])
    np.save(tmp_path / "s.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", scores=z, labels=y)  # a stored member: its data at an odd offset in the zip
    before = (tmp_path / "s.npy").read_bytes()
    n = shape[0]
    masks = [io.split_mask(n, 0.1), io.split_mask(n, 0.5, seed=3), np.arange(n) == n - 1, np.arange(n) == 0,
             np.arange(n) % 97 == 5, np.arange(n) >= n - 10]
    for merge_bytes in (-1, 0, 3000, 1 << 16):
        monkeypatch.setattr(io, "_MERGE_BYTES", merge_bytes)
        for d in (io.open_dump(tmp_path / "s.npy", labels=tmp_path / "y.npy"), io.open_dump(tmp_path / "d.npz")):
            for mask in masks:
                s, lab = d.take(mask)
                assert s.dtype == z.dtype and s.shape == (int(mask.sum()),) + shape[1:]
                np.testing.assert_array_equal(s, z[mask])
                np.testing.assert_array_equal(lab, y[mask])
    assert (tmp_path / "s.npy").read_bytes() == before  # the input is not modified


def test_read_runs_checks_its_buffer(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((10, 2), np.float32))
    d = io.open_dump(tmp_path / "s.npy", labels=np.zeros(10, np.int64))
    with d._file() as f, pytest.raises(RuntimeError, match="do not fill their buffer"):
        f.read_runs(np.arange(10) < 3, np.empty((2, 2), np.float32))


TRUNCATED = textwrap.dedent('''
    import os, sys
    import numpy as np
    import calibkit
    from calibkit import io
    path, labels = sys.argv[1], sys.argv[2]
    keep, merge, part, threads = map(int, sys.argv[3:])
    if merge:
        io._MERGE_BYTES = merge
    if part:  # the rows cut into parts of this many bytes, read by `threads` threads
        io._PART_BYTES = part
        calibkit.set_num_threads(threads)
    d = io.open_dump(path, labels=labels)
    os.truncate(path, keep)  # after the dump was opened (and memory-mapped)
    try:
        d.take(io.split_mask(d.n_rows, 0.2))
    except io.DumpError as exc:
        print("DumpError:", exc)
    else:
        print("no error")
''')


@pytest.mark.parametrize("keep_fraction, merge, part, threads",
                         [(0.0, 1 << 15, 0, 0), (0.5, 1 << 15, 0, 0), (0.5, -1, 0, 0), (0.999, 1 << 20, 0, 0),
                          (0.0, 0, 1024, 2), (0.3, 0, 1024, 2), (0.8, 0, 1024, 2)])
def test_truncated_after_opening_raises_a_clear_error(tmp_path, keep_fraction, merge, part, threads):
    """The file shrinks between open_dump and take: a DumpError naming the file (the first read that comes back
    short), and no crash (the rows are read by positioned reads, never through the memory map). With `part`, the
    rows are read in parts by two threads: the first part or the second (a worker thread) finds the short read;
    either way one DumpError in the caller."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4000, 16)).astype(np.float32)
    path, labels = tmp_path / "logits.npy", tmp_path / "labels.npy"
    np.save(path, z)
    np.save(labels, rng.integers(0, 16, 4000))
    keep = int(path.stat().st_size * keep_fraction)
    proc = subprocess.run([sys.executable, "-c", TRUNCATED, str(path), str(labels), str(keep), str(merge), str(part),
                           str(threads)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7 would be SIGBUS
    assert proc.stdout.startswith("DumpError:"), proc.stdout + proc.stderr[-2000:]
    assert str(path) in proc.stdout and "ended early" in proc.stdout
