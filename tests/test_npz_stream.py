"""Compressed .npz members are inflated by row blocks: same numbers as uncompressed dumps, bounded memory,
and a member header inconsistent with the member is one clear error."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from calibkit import cli, io, report


def _dumps(tmp_path, n=7000, k=6):
    rng = np.random.default_rng(11)
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.argmax(z / 2 + rng.gumbel(size=(n, k)), axis=1)
    np.savez(tmp_path / "plain.npz", logits=z, labels=y)
    np.savez_compressed(tmp_path / "packed.npz", logits=z, labels=y)
    return z, y


def test_compressed_gives_the_same_report_as_uncompressed(tmp_path, backend):
    z, y = _dumps(tmp_path)
    plain, packed = io.open_dump(tmp_path / "plain.npz"), io.open_dump(tmp_path / "packed.npz")
    assert isinstance(plain.scores, np.memmap) and not isinstance(packed.scores, np.ndarray)
    mask = io.split_mask(plain.n_rows, 0.25)
    kw = dict(val_mask=mask, methods=["temperature", "isotonic"], chunk_rows=900, backend=backend)
    a, b = report.report(plain, **kw), report.report(packed, **kw)
    assert a["rows"] == b["rows"]  # bit for bit
    # out-of-core temperature fit: the compressed member is read again from the start at every Newton step
    kw.update(methods=["temperature"], max_val_bytes=1000)
    assert report.report(plain, **kw)["rows"] == report.report(packed, **kw)["rows"]


def test_cli_numbers_are_the_same(tmp_path, capsys):
    _dumps(tmp_path, 3000, 4)
    out = {}
    for name in ("plain", "packed"):
        assert cli.main(["report", str(tmp_path / f"{name}.npz"), "--val-fraction", "0.3", "--calibrate",
                         "temperature,vector", "--json", str(tmp_path / f"{name}.json"), "--quiet"]) == 0
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
        capsys.readouterr()
        assert cli.main(["evaluate", str(tmp_path / f"{name}.npz"), "--json"]) == 0
        out[name + "_ev"] = json.loads(capsys.readouterr().out)
    assert out["plain"]["rows"] == out["packed"]["rows"] and out["plain"]["rows"]["vector"]["ece"] > 0
    out["plain_ev"].pop("dump"), out["packed_ev"].pop("dump")
    assert out["plain_ev"] == out["packed_ev"]


def test_row_blocks_in_any_order(tmp_path):
    z, y = _dumps(tmp_path, 1000, 3)
    d = io.open_dump(tmp_path / "packed.npz")
    for a, b in [(500, 700), (0, 10), (990, 1000), (10, 10), (999, 5000), (0, 1000), (300, 301)]:
        np.testing.assert_array_equal(d.rows(a, min(b, 1000)), z[a:b])
        np.testing.assert_array_equal(np.asarray(d.labels[a:b]), y[a:b])
    np.testing.assert_array_equal(np.asarray(d.scores), z)
    np.testing.assert_array_equal(np.concatenate([s for _, s, _ in d.chunks(77)]), z)
    f = np.asfortranarray(z)
    np.savez_compressed(tmp_path / "f.npz", logits=f, labels=y)  # small Fortran member: inflated whole
    np.testing.assert_array_equal(io.open_dump(tmp_path / "f.npz").rows(0, 1000), z)


def _member(zf, name, dtype, shape, data_bytes=None, block=4 << 20):
    """Write an .npy member of zeros without holding it in memory; `data_bytes` (default: what the shape
    needs) forges an inconsistent header."""
    dtype = np.dtype(dtype)
    with zf.open(name + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        total = int(np.prod(shape, dtype=object)) * dtype.itemsize if data_bytes is None else data_bytes
        zeros = bytes(block)
        while total:
            w = min(total, block)
            f.write(zeros[:w])
            total -= w


def _run(code, limit_bytes=None, timeout=240):
    """Run `code` in a fresh interpreter, under an address-space limit if given (with few threads, so that
    thread stacks and malloc arenas do not count against it on a machine with many cores)."""
    prefix = ""
    if limit_bytes:
        prefix = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes}))\n"
    env = dict(os.environ, MALLOC_ARENA_MAX="2", NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True, timeout=timeout,
                          env=env)


REPORT = """
import sys, numpy as np, calibkit
from calibkit import io, report
calibkit.set_num_threads(2)
d = io.open_dump({path!r})
if {whole}:
    d.scores = np.asarray(d.scores)  # the old way: the member inflated whole
print(report.format_table(report.report(d)))
"""


def test_memory_is_bounded_by_the_chunk(tmp_path):
    """A 400 MB member of zeros (a ~400 kB zip) is reported under an address-space limit that the same
    report with the member inflated whole exceeds (the control run)."""
    n, k = 10_000_000, 10  # float32 logits: 400 MB
    path = tmp_path / "zeros.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        _member(zf, "logits", "<f4", (n, k))
        _member(zf, "labels", "|i1", (n,))
    assert path.stat().st_size < 2 << 20
    limit = 800 << 20
    control = _run(REPORT.format(path=str(path), whole=True), limit)
    assert control.returncode != 0 and "MemoryError" in control.stderr, control.stderr[-500:]
    r = _run(REPORT.format(path=str(path), whole=False), limit)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "10,000,000 rows x 10 classes" in r.stdout and "2.30259" in r.stdout  # log(10): uniform softmax


@pytest.mark.parametrize("compression", (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED))
def test_forged_member_header_is_one_line(tmp_path, compression):
    """A member whose header claims 745 GiB (the member holds 1 kB): one line, exit 2, nothing allocated."""
    path = tmp_path / "forged.npz"
    with zipfile.ZipFile(path, "w", compression) as zf:
        _member(zf, "logits", "<f4", (100_000_000_000, 2), data_bytes=1024)
        _member(zf, "labels", "<i8", (10,))
    code = f"import sys, calibkit.cli\nsys.exit(calibkit.cli.main(['{{}}', {str(path)!r}]))"
    for command in ("report", "evaluate"):
        r = _run(code.format(command), 2 << 30, timeout=120)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "MemoryError" not in r.stderr
        assert "forged.npz: cannot read array 'logits.npy': its header declares float32 (100000000000, 2) " \
               "(800,000,000,000 bytes of data) but the member holds 1,024" in r.stderr


def test_member_longer_than_its_header_says(tmp_path):
    path = tmp_path / "long.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        _member(zf, "logits", "<f4", (10, 2), data_bytes=200)
        _member(zf, "labels", "<i8", (10,))
    with pytest.raises(io.DumpError, match=r"long.npz: cannot read array 'logits.npy': its header declares "
                                           r"float32 \(10, 2\) \(80 bytes of data\) but the member holds 200"):
        io.open_dump(path)


def test_big_fortran_member_is_refused_with_advice(tmp_path, monkeypatch):
    z, y = _dumps(tmp_path, 1000, 3)
    np.savez_compressed(tmp_path / "f.npz", logits=np.asfortranarray(z), labels=y)
    monkeypatch.setattr(io, "MAX_FORTRAN_INFLATE_BYTES", 1000)
    with pytest.raises(io.DumpError, match=r"f.npz: cannot read array 'logits.npy': a compressed array in "
                                           r"Fortran order .* save it in C order"):
        io.open_dump(tmp_path / "f.npz")


def test_corrupt_compressed_data_is_one_error(tmp_path):
    z, y = _dumps(tmp_path, 20000, 4)
    blob = bytearray((tmp_path / "packed.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "packed.npz") as zf:
        info = zf.getinfo("logits.npy")
    mid = info.header_offset + 30 + len("logits.npy") + info.compress_size // 2
    blob[mid:mid + 64] = bytes(64)  # damage the deflate stream in the middle
    (tmp_path / "bad.npz").write_bytes(bytes(blob))
    d = io.open_dump(tmp_path / "bad.npz")
    with pytest.raises(io.DumpError, match=r"bad.npz: cannot read array 'logits.npy'.*corrupt or truncated"):
        for _ in d.chunks(1000):
            pass
