"""Dump.take of a file read by several threads (``_RowFile.read_runs`` with ``threads``): the selected rows cut
into parts of about equal size, each part read by its own thread into its slice of the output.

The plain NumPy reference is ``np.load(path)[mask]``; the result is the same for 1, 2 and 3 threads (the same
bytes, read into the same places). A file truncated after it was opened raises a clear DumpError from whichever
thread found it, and never crashes the process: those cases run in a subprocess.
"""

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import calibkit
from calibkit import io


@pytest.fixture
def threads():
    before = calibkit.get_num_threads()
    yield
    calibkit.set_num_threads(before)


def _masks(n):
    r = np.arange(n)
    return [io.split_mask(n, 0.1), io.split_mask(n, 0.5, seed=3), r == n - 1, r == 0, r % 97 == 5, r >= n - 10,
            r < 3, np.ones(n, bool), (r % 2 == 0) & (r < n // 2)]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3001,), (3001, 7), (257, 1000)])
def test_take_by_threads_equals_numpy_mask(tmp_path, monkeypatch, threads, dtype, shape):
    rng = np.random.default_rng(11)
    z = rng.normal(size=shape).astype(dtype)
    y = rng.integers(0, 2 if len(shape) == 1 else shape[1], shape[0])
    np.save(tmp_path / "s.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "d.npz", scores=z, labels=y)  # a stored member: its data at an odd offset in the zip
    before = (tmp_path / "s.npy").read_bytes()
    monkeypatch.setattr(io, "_PART_BYTES", 1)  # every take is cut into parts, however small
    for merge_bytes in (-1, 3000, 1 << 16):
        monkeypatch.setattr(io, "_MERGE_BYTES", merge_bytes)
        for d in (io.open_dump(tmp_path / "s.npy", labels=tmp_path / "y.npy"), io.open_dump(tmp_path / "d.npz")):
            for mask in _masks(shape[0]):
                got = []
                for n_threads in (1, 2, 3):
                    calibkit.set_num_threads(n_threads)
                    s, lab = d.take(mask)
                    assert s.dtype == z.dtype and s.shape == (int(mask.sum()),) + shape[1:]
                    np.testing.assert_array_equal(s, z[mask])
                    np.testing.assert_array_equal(lab, y[mask])
                    got.append(s.tobytes())
                assert got[0] == got[1] == got[2]
    assert (tmp_path / "s.npy").read_bytes() == before  # the input is not modified


def test_parts_are_read_by_their_own_threads(tmp_path, monkeypatch, threads):
    z = np.arange(4000 * 8, dtype=np.float32).reshape(4000, 8)
    np.save(tmp_path / "s.npy", z)
    d = io.open_dump(tmp_path / "s.npy", labels=np.zeros(4000, np.int64))
    seen = []
    part = io._RowFile._read_part

    def spy(self, mask, out, row0):
        seen.append((threading.get_ident(), row0, len(out)))
        return part(self, mask, out, row0)

    monkeypatch.setattr(io._RowFile, "_read_part", spy)
    mask = io.split_mask(4000, 0.3)
    monkeypatch.setattr(io, "_PART_BYTES", 1 << 30)  # too small to cut: one part, on the calling thread
    calibkit.set_num_threads(2)
    np.testing.assert_array_equal(d.take(mask)[0], z[mask])
    assert [(t, f) for t, f, _ in seen] == [(threading.get_ident(), 0)]
    seen.clear()
    monkeypatch.setattr(io, "_PART_BYTES", 1024)
    np.testing.assert_array_equal(d.take(mask)[0], z[mask])
    assert len(seen) == 2 and len({t for t, _, _ in seen}) == 2
    assert sum(n for _, _, n in seen) == int(mask.sum())
    assert abs(seen[0][2] - seen[1][2]) <= 1  # about equal parts


def test_read_runs_checks_its_buffer_with_threads(tmp_path):
    np.save(tmp_path / "s.npy", np.zeros((10, 2), np.float32))
    d = io.open_dump(tmp_path / "s.npy", labels=np.zeros(10, np.int64))
    for n_threads in (1, 2):
        with d._file() as f, pytest.raises(RuntimeError, match="do not fill their buffer"):
            f.read_runs(np.arange(10) < 3, np.empty((2, 2), np.float32), n_threads)
        with d._file() as f, pytest.raises(RuntimeError, match="do not fill their buffer"):
            f.read_runs(np.arange(10) < 3, np.empty((4, 2), np.float32), n_threads)


TRUNCATED = textwrap.dedent('''
    import os, sys
    import numpy as np
    import calibkit
    from calibkit import io
    path, labels, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    io._PART_BYTES = 1024
    calibkit.set_num_threads(2)
    d = io.open_dump(path, labels=labels)
    os.truncate(path, keep)  # after the dump was opened (and memory-mapped)
    try:
        d.take(io.split_mask(d.n_rows, 0.2))
    except io.DumpError as exc:
        print("DumpError:", exc)
    else:
        print("no error")
''')


@pytest.mark.parametrize("keep_fraction", [0.0, 0.3, 0.8])
def test_truncated_file_read_by_threads_raises_a_clear_error(tmp_path, keep_fraction):
    """The file shrinks between open_dump and a take in two parts: the first part or the second (a worker
    thread) finds the short read; either way one DumpError naming the file in the caller, and no crash."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4000, 16)).astype(np.float32)
    path, labels = tmp_path / "logits.npy", tmp_path / "labels.npy"
    np.save(path, z)
    np.save(labels, rng.integers(0, 16, 4000))
    keep = int(path.stat().st_size * keep_fraction)
    proc = subprocess.run([sys.executable, "-c", TRUNCATED, str(path), str(labels), str(keep)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # -7 would be SIGBUS
    assert proc.stdout.startswith("DumpError:"), proc.stdout + proc.stderr[-2000:]
    assert str(path) in proc.stdout and "ended early" in proc.stdout
