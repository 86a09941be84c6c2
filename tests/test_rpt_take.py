"""Dump.take of a file read by several threads (``_RowFile.read_runs`` with ``threads``): the selected rows cut
into parts of about equal size, each part read by its own thread into its slice of the output.

The plain NumPy reference is ``np.load(path)[mask]``; the result is the same for 1, 2 and 3 threads (the same
bytes, read into the same places). A file truncated after it was opened, read in parts by two threads:
``test_truncated_after_opening_raises_a_clear_error`` in test_cli_take.py (in a subprocess).
"""

import threading

import numpy as np
import pytest

import calibkit
from calibkit import io


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
