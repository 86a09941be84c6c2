"""``calibkit report`` / :func:`calibkit.report.report` / :func:`calibkit.io.open_dump` on dense dumps.

A dense dump (scores (N, K, H, W) or (N, K, D, H, W), float16 common, labels (N, H, W) with an ignore label
255) must give the table the report gives on the explicitly flattened dump (``flatten_reference``: the class
axis moved last, the pixels as rows, the ignored ones removed). The numbers agree to rounding (relative
1e-12 here, checked at 1e-10): the report adds the sums of each block, and a dense dump's blocks end where
an image or an adapter piece ends, the flattened dump's at multiples of the chunk size. The row counts, the
validation split and the rows the calibrators are fitted on are identical.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from calibkit import io, report
from calibkit._dense import flatten_reference

N, K, H, W = 3, 4, 16, 16
RTOL, ATOL = 1e-10, 1e-13


def _maps(dtype=np.float16, seed=0, shape=(N, K, H, W)):
    rng = np.random.default_rng(seed)
    s = (2.0 * rng.normal(size=shape)).astype(dtype)
    y = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    # confident and right on a block, so the numbers are not those of noise
    y[0, 4:10] = np.argmax(s[0, :, 4:10], axis=0)
    y[0, :3] = 255
    y[-1, ..., 5:9, 2:7] = 255
    return s, y.astype(np.uint8)


def _mask(shape=(N, H, W)):
    m = np.ones(shape, dtype=bool)
    m[1, :, :2] = False
    return m


def _flat_dump(s, y, axis=1, mask=None, ignore_index=255, from_logits=True):
    fs, fy, _ = flatten_reference(s, y, axis=axis, mask=mask, ignore_index=ignore_index)
    return io.Dump(np.ascontiguousarray(fs), fy, from_logits, "flat")


def _same_rows(r_dense, r_flat):
    assert r_dense["rows"].keys() == r_flat["rows"].keys()
    for name, row in r_flat["rows"].items():
        got = r_dense["rows"][name]
        assert got.keys() == row.keys()
        for key, want in row.items():
            if key == "params":
                continue
            have = got[key]
            if key == "n" or want is None:
                assert have == want, (name, key)
            else:
                assert math.isclose(have, want, rel_tol=RTOL, abs_tol=ATOL) or (have != have and want != want), \
                    (name, key, have, want)
        if "params" in row:  # fitted on the same rows in the same order: the same parameters
            assert json.dumps(got["params"]) == json.dumps(row["params"]), name


def _write(tmp_path, layout, s, y):
    """The dense dump in one of the layouts a file can hold; returns (open_dump kwargs, axis)."""
    if layout == "npy":
        np.save(tmp_path / "logits.npy", s)
        np.save(tmp_path / "labels.npy", y)
        return dict(path=tmp_path / "logits.npy", labels=tmp_path / "labels.npy"), 1
    if layout == "channel-last":
        np.save(tmp_path / "logits.npy", np.ascontiguousarray(np.moveaxis(s, 1, -1)))
        np.save(tmp_path / "labels.npy", y)
        return dict(path=tmp_path / "logits.npy", labels=tmp_path / "labels.npy", axis=-1), -1
    if layout == "fortran":
        np.save(tmp_path / "logits.npy", np.asfortranarray(s))
        np.save(tmp_path / "labels.npy", np.asfortranarray(y))
        return dict(path=tmp_path / "logits.npy", labels=tmp_path / "labels.npy"), 1
    if layout == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=s.dtype, shape=s.shape)
        m[...] = s
        m.flush()
        del m
        np.save(tmp_path / "labels.npy", y)
        return dict(path=tmp_path / "logits.npy", labels=tmp_path / "labels.npy"), 1
    if layout == "npz":
        np.savez(tmp_path / "d.npz", logits=s, labels=y)
        return dict(path=tmp_path / "d.npz"), 1
    if layout == "npz-compressed":
        np.savez_compressed(tmp_path / "d.npz", logits=s, labels=y)
        return dict(path=tmp_path / "d.npz"), 1
    raise AssertionError(layout)


LAYOUTS = ["npy", "channel-last", "fortran", "memmap", "npz", "npz-compressed"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_report_equals_flattened_dump(tmp_path, layout, dtype, backend):
    s, y = _maps(dtype)
    kw, axis = _write(tmp_path, layout, s, y)
    before = (tmp_path / kw["path"].name).read_bytes()
    path = kw.pop("path")
    dump = io.open_dump(path, ignore_index=255, **kw)
    assert isinstance(dump, io.DenseDump)
    flat = _flat_dump(s, y)
    assert dump.n_rows == flat.n_rows == int(np.count_nonzero(y != 255))
    assert dump.n_pixels == N * H * W and dump.n_classes == K
    _same_rows(report.report(dump, backend=backend), report.report(flat, backend=backend))
    # the validation split (pixel j of the flattened order without the ignored ones) and the fits
    vm = io.split_mask(dump.n_rows, 0.3, seed=1)
    methods = ["temperature", "isotonic"]
    r_dense = report.report(dump, val_mask=vm, methods=methods, backend=backend)
    r_flat = report.report(flat, val_mask=vm, methods=methods, backend=backend)
    _same_rows(r_dense, r_flat)
    assert r_dense["n_val"] == r_flat["n_val"] == int(vm.sum())
    assert r_dense["dense"] == {"shape": list(np.moveaxis(s, 1, -1).shape if axis == -1 else s.shape),
                                "class_axis": axis, "pixels": N * H * W, "ignored": int(np.sum(y == 255)),
                                "ignore_index": 255, "mask": False}
    assert (tmp_path / path.name).read_bytes() == before  # never written to


def test_small_blocks_and_rows_are_the_flattened_rows(tmp_path):
    s, y = _maps(np.float32)
    kw, _ = _write(tmp_path, "npy", s, y)
    m = _mask()
    dump = io.open_dump(kw.pop("path"), ignore_index=255, mask=m, **kw)
    fs, fy, _ = flatten_reference(s, y, mask=m, ignore_index=255)
    assert dump.n_rows == len(fy)
    got = list(dump.chunks(50))
    assert all(len(b[2]) <= 50 for b in got)
    assert [b[0] for b in got] == list(np.cumsum([0] + [len(b[2]) for b in got[:-1]]))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), fs)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in got]), fy)
    # a row range, and rows(a, b)
    part = list(dump.chunks(50, start=70, stop=333))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in part]), fs[70:333])
    assert part[0][0] == 70
    np.testing.assert_array_equal(dump.rows(70, 333), fs[70:333])
    # split by a mask over the counted pixels, and take
    vm = io.split_mask(dump.n_rows, 0.4)
    held_s, kept_s = [], []
    for blk in dump.split_chunks(vm, 64):
        np.testing.assert_array_equal(blk.held_mask, vm[blk.first_row:blk.first_row + blk.n_rows])
        kept_s.append(blk.scores)
        held_s.append(blk.held_scores)
    np.testing.assert_array_equal(np.concatenate(kept_s), fs[~vm])
    np.testing.assert_array_equal(np.concatenate(held_s), fs[vm])
    ts, ty = dump.take(vm)
    np.testing.assert_array_equal(ts, fs[vm])
    np.testing.assert_array_equal(ty, fy[vm])
    # the pixel of a row
    keep = ((y != 255) & m).reshape(-1)
    for row in (0, 17, dump.n_rows - 1):
        assert dump.pixel(row) == tuple(int(i) for i in np.unravel_index(np.flatnonzero(keep)[row], y.shape))


@pytest.mark.parametrize("case", ["sliced", "5d", "mask-and-ignore", "2d-ignore", "probabilities-channel-last"])
def test_other_inputs_equal_flattened(case, backend):
    s, y = _maps(np.float32)
    mask, axis, from_logits, methods = None, 1, True, ["temperature", "vector"]
    if case == "sliced":  # a non-contiguous view (in memory: open_dump reads files, a DenseDump takes arrays)
        s, y = s[:, :, ::2, 1:], y[:, ::2, 1:]
    elif case == "5d":
        s, y = _maps(np.float16, shape=(2, K, 3, 8, 8))
    elif case == "mask-and-ignore":
        mask = _mask()
    elif case == "2d-ignore":  # (N, K) rows with ignore_index take the same path
        s, y, _ = flatten_reference(s, y)
    elif case == "probabilities-channel-last":
        s = np.random.default_rng(1).dirichlet(np.full(K, 0.5), size=(N, H, W)).astype(np.float16)
        axis, from_logits, methods = -1, False, ["temperature", "isotonic", "histogram"]
    copies = (s.copy(), y.copy())
    dump = io._dense_dump(io.Dump(s, y, from_logits, "x"), axis, 255, mask, "y")
    fs, fy, _ = flatten_reference(s, y, axis=axis, mask=mask, ignore_index=255)
    flat = io.Dump(np.ascontiguousarray(fs), fy, from_logits, "flat")
    _same_rows(report.report(dump, backend=backend), report.report(flat, backend=backend))
    vm = io.split_mask(dump.n_rows, 0.5)
    _same_rows(report.report(dump, val_mask=vm, methods=methods, backend=backend),
               report.report(flat, val_mask=vm, methods=methods, backend=backend))
    np.testing.assert_array_equal(s, copies[0])
    np.testing.assert_array_equal(y, copies[1])


def test_out_of_core_temperature_and_val_dump(tmp_path):
    s, y = _maps(np.float32)
    dump = io._dense_dump(io.Dump(s, y, True, "x"), 1, 255, None, "y")
    flat = _flat_dump(s, y)
    vm = io.split_mask(dump.n_rows, 0.5)
    a = report.report(dump, val_mask=vm, methods=["temperature"], max_val_bytes=10, chunk_rows=64)
    b = report.report(flat, val_mask=vm, methods=["temperature"], max_val_bytes=10, chunk_rows=64)
    assert math.isclose(a["rows"]["temperature"]["params"]["temperature_"],
                        b["rows"]["temperature"]["params"]["temperature_"], rel_tol=1e-9)
    sv, yv = _maps(np.float32, seed=3)
    val = io._dense_dump(io.Dump(sv, yv, True, "v"), 1, 255, None, "yv")
    _same_rows(report.report(dump, val=val, methods=["temperature"]),
               report.report(flat, val=_flat_dump(sv, yv), methods=["temperature"]))


def test_html_details_have_the_first_image_map(tmp_path):
    pytest.importorskip("matplotlib")
    from calibkit import html

    s, y = _maps(np.float32)
    dump = io._dense_dump(io.Dump(s, y, True, "x"), 1, 255, None, "y")
    r = report.report(dump, details=True)
    maps = r["dense_map"]
    assert maps["uncertainty"].shape == (H, W) and maps["error"].shape == (H, W)
    np.testing.assert_array_equal(maps["error"] == 2, y[0] == 255)
    assert "dense_map" not in report.json_safe(r)
    json.dumps(report.json_safe(r))
    page = html.report_html(r)
    assert 'id="uncertainty-map"' in page and "ignored pixels" in page
    flat = report.report(_flat_dump(s, y), details=True)
    assert 'id="uncertainty-map"' not in html.report_html(flat)


# -- bad dense dumps: one clear error naming the file (and the pixel) ------------------------------------------------

def _files(tmp_path, s, y, name="labels.npy"):
    np.save(tmp_path / "logits.npy", s)
    np.save(tmp_path / name, y)
    return tmp_path / "logits.npy", tmp_path / name


def test_labels_shape_mismatch(tmp_path):
    s, y = _maps()
    p, lp = _files(tmp_path, s, y[:, :, :-1])
    with pytest.raises(io.DumpError, match=r"labels\.npy: labels have shape \(3, 16, 15\), but scores .*logits\.npy "
                                           r"of shape \(3, 4, 16, 16\) .* need labels of shape \(3, 16, 16\)$"):
        io.open_dump(p, labels=lp, ignore_index=255)
    # channel-last scores read with the default axis: the message says which axis fits
    p, lp = _files(tmp_path, np.ascontiguousarray(np.moveaxis(s, 1, -1)), y)
    with pytest.raises(io.DumpError, match=r"they fit scores with classes on axis -1: give axis=-1"):
        io.open_dump(p, labels=lp)


def test_all_ignored(tmp_path):
    s, y = _maps()
    p, lp = _files(tmp_path, s, np.full_like(y, 255))
    with pytest.raises(io.DumpError, match=r"labels\.npy: every pixel of scores is ignored \(labels == "
                                           r"ignore_index=255 everywhere\)"):
        io.open_dump(p, labels=lp, ignore_index=255)
    p, lp = _files(tmp_path, s, y)
    with pytest.raises(io.DumpError, match=r"every pixel of scores is ignored .*mask is False"):
        io.open_dump(p, labels=lp, ignore_index=255, mask=np.zeros(y.shape, bool))


def test_label_out_of_range_names_the_pixel(tmp_path, backend):
    s, y = _maps()
    y[1, 7, 5] = 40
    p, lp = _files(tmp_path, s, y)
    dump = io.open_dump(p, labels=lp, ignore_index=255)
    with pytest.raises(io.DumpError, match=r"^.*labels\.npy: labels\[1, 7, 5\] = 40 is out of range for n_classes=4$"):
        report.report(dump, backend=backend)
    # without --ignore-index, 255 itself is the bad label, with the advice
    dump = io.open_dump(p, labels=lp)
    with pytest.raises(io.DumpError, match=r"labels\[0, 0, 0\] = 255 is out of range for n_classes=4; if 255 "
                                           r"marks pixels without ground truth, leave them out with ignore_index=255"):
        report.report(dump, backend=backend)
    # in the validation rows (the fit) as in the evaluated ones
    y[1, 7, 5] = 1
    y[2, 12, 13] = 9
    p, lp = _files(tmp_path, s, y)
    dump = io.open_dump(p, labels=lp, ignore_index=255)
    for frac in (0.01, 0.99):
        with pytest.raises(io.DumpError, match=r"labels\[2, 12, 13\] = 9 is out of range"):
            report.report(dump, val_mask=io.split_mask(dump.n_rows, frac), methods=["temperature"], backend=backend)


def test_bad_score_names_the_pixel(tmp_path):
    s, y = _maps(np.float32)
    s[2, 1, 3, 4] = np.nan
    p, lp = _files(tmp_path, s, y)
    dump = io.open_dump(p, labels=lp, ignore_index=255)
    with pytest.raises(io.DumpError, match=r"logits\.npy: scores\[2, 1, 3, 4\] = nan is not finite"):
        report.report(dump)
    cl = np.ascontiguousarray(np.moveaxis(s, 1, -1))
    dump = io._dense_dump(io.Dump(cl, y, True, "cl.npy"), -1, 255, None, "y")
    with pytest.raises(io.DumpError, match=r"cl\.npy: scores\[2, 3, 4, 1\] = nan is not finite"):
        report.report(dump)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(mask=np.ones((N, H, W - 1), bool)), io.DumpError,
     r"mask has shape \(3, 16, 15\).*mask of shape \(3, 16, 16\)"),
    (dict(mask=np.ones((N, H, W), np.uint8)), io.DumpError, r"mask must be a boolean array"),
    (dict(axis=2), io.DumpError, r"axis must be 1 .* or -1"),
    (dict(ignore_index=2.5), TypeError, r"ignore_index must be an integer label"),
])
def test_bad_options(tmp_path, kwargs, exc, pattern):
    s, y = _maps()
    p, lp = _files(tmp_path, s, y)
    with pytest.raises(exc, match=pattern):
        io.open_dump(p, labels=lp, **kwargs)


def test_bad_dense_arrays(tmp_path):
    s, y = _maps()
    p, lp = _files(tmp_path, s.astype(np.int32), y)
    with pytest.raises(io.DumpError, match=r"logits\.npy: dense scores must be floats"):
        io.open_dump(p, labels=lp)
    p, lp = _files(tmp_path, s, y.astype(np.float32))
    with pytest.raises(io.DumpError, match=r"labels\.npy: labels must be integers"):
        io.open_dump(p, labels=lp)
    p, lp = _files(tmp_path, s[:, :1], y)
    with pytest.raises(io.DumpError, match=r"at least 2 are needed"):
        io.open_dump(p, labels=lp)
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "a.npz", logits=s, labels=y)
    with pytest.raises(io.DumpError, match=r"dense dumps are read from one \.npy or \.npz file"):
        io.open_dump(tmp_path / "shards")
    with pytest.raises(io.DumpError, match=r"not a directory of shards"):
        io.open_dump(tmp_path / "shards", ignore_index=255)


# -- the command, end to end in a subprocess ---------------------------------------------------------------------------

def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "calibkit.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})


def test_cli_end_to_end(tmp_path):
    s, y = _maps(np.float16)
    p, lp = _files(tmp_path, s, y)
    out = tmp_path / "r.json"
    out.write_text("old")
    r = _run("report", p, "--labels", lp, "--ignore-index", "255", "--from-logits", "--val-fraction", "0.3",
             "--calibrate", "temperature", "--json", out, "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{int(np.sum(y != 255)):,} pixels of (3, 4, 16, 16) (classes on axis 1, " in r.stdout
    got = json.loads(out.read_text())
    flat = _flat_dump(s, y)
    want = report.report(flat, val_mask=io.split_mask(flat.n_rows, 0.3), methods=["temperature"])
    for name in ("raw", "temperature"):
        for key in ("n", "accuracy", "ece", "nll"):
            assert math.isclose(got["rows"][name][key], want["rows"][name][key], rel_tol=RTOL, abs_tol=ATOL)
    assert got["dense"]["ignored"] == int(np.sum(y == 255))
    assert sorted(f.name for f in tmp_path.iterdir()) == ["labels.npy", "logits.npy", "r.json"]  # no temporary left
    # channel-last, with the HTML page
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "cl_logits.npy", np.ascontiguousarray(np.moveaxis(s, 1, -1)))
    r = _run("report", tmp_path / "cl_logits.npy", "--labels", lp, "--ignore-index", "255", "--class-axis", "-1",
             "--html", tmp_path / "r.html", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'id="uncertainty-map"' in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("case, pattern", [
    ("shape", r"^calibkit: .*bad\.npy: labels have shape \(3, 16, 15\), but scores .*logits\.npy of shape "
              r"\(3, 4, 16, 16\)"),
    ("all-ignored", r"^calibkit: .*bad\.npy: every pixel of scores is ignored"),
    ("out-of-range", r"^calibkit: .*bad\.npy: labels\[1, 7, 5\] = 40 is out of range for 4 classes \(0 to 3\)$"),
    ("no-ignore", r"^calibkit: .*bad\.npy: labels\[0, 0, 0\] = 255 is out of range for 4 classes \(0 to 3\); if 255 "
                  r"marks pixels without ground truth, leave them out with --ignore-index 255$"),
    ("axis", r"they fit scores with classes on axis -1: give --class-axis -1$"),
])
def test_cli_bad_dense_dumps(tmp_path, case, pattern):
    s, y = _maps()
    flags = ["--ignore-index", "255"]
    if case == "shape":
        y = y[:, :, :-1]
    elif case == "all-ignored":
        y = np.full_like(y, 255)
    elif case == "out-of-range":
        y[1, 7, 5] = 40
    elif case == "no-ignore":
        flags = []
    elif case == "axis":
        s = np.ascontiguousarray(np.moveaxis(s, 1, -1))
    p, lp = _files(tmp_path, s, y, "bad.npy")
    r = _run("report", p, "--labels", lp, *flags, "--json", tmp_path / "out.json", cwd=tmp_path)
    assert r.returncode == 2, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and __import__("re").search(pattern, lines[0]), r.stderr
    assert not (tmp_path / "out.json").exists()


def test_cli_fit_and_apply_on_dense(tmp_path):
    from calibkit import TemperatureScaling

    s, y = _maps(np.float32)
    np.savez(tmp_path / "d.npz", logits=s, labels=y)
    r = _run("fit", tmp_path / "d.npz", "--ignore-index", "255", "--method", "temperature", "--out",
             tmp_path / "t.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    fs, fy, _ = flatten_reference(s, y, ignore_index=255)
    want = TemperatureScaling().fit(fs, fy).temperature_
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["input"]["n_rows"] == len(fy)
    assert math.isclose(got["fitted"]["temperature_"], want, rel_tol=1e-12)
    r = _run("apply", tmp_path / "t.json", tmp_path / "d.npz", "--out", tmp_path / "p.npy", cwd=tmp_path)
    assert r.returncode == 2 and "holds dense scores (3, 4, 16, 16)" in r.stderr
    assert not (tmp_path / "p.npy").exists()


def test_progress_counts_pixels_and_volumes_get_a_map():
    s, y = _maps(np.float16, shape=(2, K, 5, 8, 8))
    dump = io._dense_dump(io.Dump(s, y, True, "x"), 1, 255, None, "y")
    seen = []
    r = report.report(dump, progress=seen.append, chunk_rows=40, details=True)
    assert seen[-1] == dump.n_rows == int(np.sum(y != 255)) and seen == sorted(seen)
    maps = r["dense_map"]
    assert maps["section"] == (2,) and maps["uncertainty"].shape == (8, 8)
    np.testing.assert_array_equal(maps["error"] == 2, y[0, 2] == 255)


MEMORY = r"""
import sys, tracemalloc, numpy as np
from calibkit import io, report
n = int(sys.argv[1]); d = sys.argv[2]
rng = np.random.default_rng(0)
np.save(f"{d}/logits.npy", rng.normal(size=(n, 4, 128, 128)).astype(np.float16))
y = rng.integers(0, 4, (n, 128, 128)).astype(np.uint8); y[:, :9] = 255
np.save(f"{d}/labels.npy", y)
dump = io.open_dump(f"{d}/logits.npy", labels=f"{d}/labels.npy", ignore_index=255, from_logits=True)
report.report(dump, smooth=False)  # once: the kernels' first-call state is not what is measured
tracemalloc.start()
report.report(dump, smooth=False)
print(tracemalloc.get_traced_memory()[1])
"""


def test_peak_memory_does_not_grow_with_the_map(tmp_path):
    """The report on a memory-mapped (N, 4, 128, 128) float16 map: the Python-heap peak (tracemalloc, which sees
    NumPy's buffers) is the same for N = 2 and N = 16 (per-piece buffers only; the flattened copy at N = 16 would
    be 2 MiB)."""
    peaks = {}
    for n in (2, 48):
        r = subprocess.run([sys.executable, "-c", MEMORY, str(n), str(tmp_path)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        peaks[n] = int(r.stdout.split()[-1])
    flat_copy = 48 * 4 * 128 * 128 * 2
    assert peaks[48] < peaks[2] + 64 * 1024, peaks
    assert peaks[48] < flat_copy / 4, peaks


def test_real_dump_with_a_mask_and_an_ignore_label(tmp_path, backend):
    """(N, K) rows with ``mask`` / ``ignore_index`` take the dense path: real CIFAR-100 logits, with some rows
    masked out and some labels replaced by an ignore label, give the report of the rows that are left."""
    from conftest import data_dir

    path = data_dir() / "focal_cifar100_resnet50_brier.npz"
    if not path.exists():
        pytest.skip(f"real-data file {path} not available")
    with np.load(path) as z:
        logits, labels = z["test_logits"], z["test_labels"]
    y = labels.copy()
    y[::7] = 255
    mask = np.ones(len(y), bool)
    mask[5::11] = False
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "labels.npy", y)
    dump = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy", ignore_index=255, mask=mask)
    assert isinstance(dump, io.DenseDump)
    keep = (y != 255) & mask
    flat = io.Dump(logits[keep], labels[keep], True, "flat")
    vm = io.split_mask(dump.n_rows, 0.2)
    _same_rows(report.report(dump, val_mask=vm, methods=["temperature", "histogram"], backend=backend),
               report.report(flat, val_mask=vm, methods=["temperature", "histogram"], backend=backend))
