"""Every user mistake on the command line: exit 2, one line naming the file and saying what to do; never a
traceback, never NumPy's allow_pickle advice, never a destroyed input or a half-written output."""

import json
import os
import re
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from calibkit import _validation, cli

N, K = 300, 4


def _good(tmp):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, K)).astype(np.float32)
    y = rng.integers(0, K, N)
    np.save(tmp / "good_logits.npy", z)
    np.save(tmp / "labels.npy", y)
    np.savez(tmp / "good.npz", logits=z, labels=y)
    return z, y


def _truncated(src, dst, keep=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])


def _forged_npy(path):
    """An .npy whose header claims 745 GiB, followed by 64 bytes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (100_000_000_000, 2)})
        f.write(bytes(64))


def _object_npz(path):
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("logits.npy", "w") as f:
            np.save(f, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        with zf.open("labels.npy", "w") as f:
            np.save(f, np.zeros(2, dtype=np.int64))


# kind -> (file name, how to make it, regex of the one line after the file name)
KINDS = {
    "missing": ("missing.npz", lambda p, t: None, r"no such file"),
    "directory": ("folder.npz", lambda p, t: p.mkdir(), r"no \.npz / \.parquet / \.arrow shards"),
    "empty npy": ("empty.npy", lambda p, t: p.write_bytes(b""), r"empty file, not an \.npy array; write dumps "
                                                                 r"with np\.save"),
    "empty npz": ("empty.npz", lambda p, t: p.write_bytes(b""), r"empty file, or a truncated one"),
    "truncated npy": ("cut.npy", lambda p, t: _truncated(t / "good_logits.npy", p), r"the file is truncated"),
    "truncated npz": ("cut.npz", lambda p, t: _truncated(t / "good.npz", p), r"truncated"),
    "text as npz": ("text.npz", lambda p, t: p.write_text("logits,labels\n0.1,1\n"),
                    r"not an \.npz \(zip\) file"),
    "text as npy": ("text.npy", lambda p, t: p.write_text("0.1 0.9\n"), r"not an \.npy array"),
    "pickle as npy": ("pickled.npy", lambda p, t: np.save(p, np.array([[1, None]], dtype=object), allow_pickle=True),
                      r"holds Python objects .* save the scores and labels as numbers"),
    "object member": ("objects.npz", lambda p, t: _object_npz(p), r"'logits\.npy': the array holds Python objects"),
    "forged npy": ("forged.npy", lambda p, t: _forged_npy(p), r"the file is truncated: its header declares float32 "
                                                               r"\(100000000000, 2\)"),
}
COMMANDS = {
    "evaluate": ["evaluate", "{bad}"],
    "report": ["report", "{bad}", "--quiet"],
    "report --val": ["report", "{good}", "--val", "{bad}", "--calibrate", "temperature", "--quiet"],
    "fit": ["fit", "{bad}", "--method", "temperature", "--out", "{tmp}/out.json"],
    "apply": ["apply", "{cal}", "{bad}", "--out", "{tmp}/out.npy", "--quiet"],
    "evaluate --labels": ["evaluate", "{tmp}/good_logits.npy", "--labels", "{bad}"],
    "report --labels": ["report", "{tmp}/good_logits.npy", "--labels", "{bad}", "--quiet"],
}


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _temporaries(folder):
    return [n for n in os.listdir(folder) if ".calibkit-tmp-" in n]


@pytest.fixture
def workdir(tmp_path, capsys):
    _good(tmp_path)
    assert cli.main(["fit", str(tmp_path / "good.npz"), "--method", "temperature", "--out",
                     str(tmp_path / "cal.json")]) == 0
    capsys.readouterr()
    return tmp_path


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_bad_file_is_one_line_exit_2(workdir, capsys, command, kind):
    name, make, regex = KINDS[kind]
    if "--labels" in command and not name.endswith(".npy"):
        pytest.skip("labels are an .npy file")
    if "--labels" in command and kind == "pickle as npy":
        regex = r"holds Python objects"
    bad = workdir / name
    make(bad, workdir)
    before = sorted(os.listdir(workdir))
    argv = [a.format(bad=bad, good=workdir / "good.npz", tmp=workdir, cal=workdir / "cal.json")
            for a in COMMANDS[command]]
    if command in ("evaluate", "report", "fit") and name.endswith(".npy"):
        argv += ["--labels", str(workdir / "labels.npy")]
    code, out, err = _run(argv, capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err and "allow_pickle" not in err, err
    import re

    assert re.search(re.escape(str(bad)) + r".*" + regex, err), err
    assert sorted(os.listdir(workdir)) == before  # no output, no temporary left
    assert not _temporaries(workdir)


def test_evaluate_and_report_read_the_same_dumps(workdir, capsys):
    """One loading path: a .npy with --labels, a directory of shards and --scores/--labels all work in
    evaluate as in report."""
    z, y = np.load(workdir / "good_logits.npy"), np.load(workdir / "labels.npy")
    shards = workdir / "shards"
    shards.mkdir()
    np.savez(shards / "a.npz", logits=z[:100], labels=y[:100])
    np.savez_compressed(shards / "b.npz", logits=z[100:], labels=y[100:])
    results = []
    for argv in (["{tmp}/good.npz"], ["{tmp}/good_logits.npy", "--labels", "{tmp}/labels.npy"],
                 ["--scores", "{tmp}/good_logits.npy", "--labels", "{tmp}/labels.npy"], ["{tmp}/shards"]):
        code, out, err = _run(["evaluate", *[a.format(tmp=workdir) for a in argv], "--json"], capsys)
        assert code == 0, err
        r = json.loads(out)
        r.pop("dump")
        results.append(r)
    assert all(r == results[0] for r in results[1:])
    assert results[0]["from_logits"] is True and results[0]["rows"]["raw"]["n"] == N


@pytest.mark.parametrize("argv, message", [
    (["evaluate"], r"calibkit evaluate: give a DUMP"),
    (["evaluate", "{tmp}/good.npz", "--scores", "{tmp}/good_logits.npy"], r"not both"),
    (["evaluate", "{tmp}/good.npz", "--n-bins", "0"], r"calibkit evaluate: --n-bins must be >= 1, got 0"),
    (["report", "{tmp}/good.npz", "--n-bins", "-3"], r"calibkit report: --n-bins must be >= 1, got -3"),
    (["evaluate", "{tmp}/good_logits.npy"], r"good_logits.npy: no labels \(give them with .*--labels\)"),
    (["evaluate", "{tmp}/good.npz", "--scores-key", "nope"], r"good.npz: no array 'nope'"),
    (["report", "{tmp}/good.npz", "--plot", "{tmp}/d.xyz"], r"--plot .*d.xyz: unknown figure format 'xyz'"),
    (["evaluate", "--json", "{tmp}/good.npz"], r"--json took .*good.npz as the file to write; give the DUMP before"),
    # refused before any work: the (missing) dump is not even opened
    (["evaluate", "{tmp}/missing.npz", "--plot", "{tmp}/d.xyz"], r"calibkit evaluate: --plot .*d.xyz: unknown figure"),
    (["report", "{tmp}/good.npz", "--json", "{tmp}/no/such/folder/r.json"],
     r"r.json: no such file or directory .*no/such/folder \(create the folder first\)"),
    (["apply", "{tmp}/good.npz", "{tmp}/good.npz", "--out", "{tmp}/o.npy"], r"cannot read .*good.npz"),
])
def test_flag_errors_are_one_line(workdir, capsys, argv, message):
    import re

    code, out, err = _run([a.format(tmp=workdir) for a in argv], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not _temporaries(workdir)


# Python keyword arguments and reprs that must never reach the command line's messages.
KEYWORDS = re.compile(r"\b\w+=(True|False|\.\.\.|\)|\d)|from_logits|check_sums|n_bins|n_classes|sample_weight|"
                      r"val_mask|\[Errno|No such file")


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/good_logits.npy"], r"good_logits.npy: no labels \(give them with --labels\)"),
    (["evaluate", "{tmp}/good_logits.npy"], r"good_logits.npy: no labels \(give them with --labels\)"),
    (["fit", "{tmp}/good_logits.npy", "--method", "temperature", "--out", "{tmp}/c.json"], r"give them with --labels"),
    (["report", "{tmp}/good_logits.npy", "--labels", "{tmp}/labels.npy", "--probabilities"],
     r"good_logits.npy: scores\[0, \d\] = .* is not a probability in \[0, 1\]; give --from-logits for logits"),
    (["fit", "{tmp}/good_logits.npy", "--labels", "{tmp}/labels.npy", "--probabilities", "--method", "isotonic",
      "--out", "{tmp}/c.json"], r"good_logits.npy: scores\[0, \d\] = .*; give --from-logits for logits"),
    (["report", "{tmp}/good.npz", "--labels", "{tmp}/labels9.npy"], r"labels\[0\] = 9 is out of range for 4 classes \(0 to 3\)"),
    (["report", "{tmp}/npy_shards"], r"npy_shards: no .* shards \(or .npy shards with --labels\)"),
    (["report", "{tmp}/good.npz", "--n-bins", "0"], r"calibkit report: --n-bins must be >= 1, got 0"),
    (["report", "{tmp}/good_logits.npy", "--labels", "{tmp}/missing.npy"], r"missing.npy: no such file or directory"),
    (["evaluate", "{tmp}/missing.npz"], r"missing.npz: no such file or directory"),
    (["apply", "{tmp}/missing.json", "{tmp}/good.npz", "--out", "{tmp}/o.npy"],
     r"cannot read .*missing.json: .*missing.json: no such file or directory"),
    (["fit", "{tmp}/good.npz", "--method", "temperature", "--out", "{tmp}/nope/c.json"], r"no such file or directory"),
    (["report", "{tmp}/good.npz", "--calibrate", "temperature", "--val-fraction", "1.5"],
     r"--val-fraction must be in \(0, 1\), got 1.5"),
    (["report", "{tmp}/good.npz", "--calibrate", "temperature,bogus", "--val-fraction", "0.5"],
     r"--calibrate: unknown calibration method 'bogus'; choose from temperature, "),
    (["report", "{tmp}/good.npz", "--calibrate", "temperature"], r"give --val DUMP or --val-fraction F"),
    (["evaluate", "{tmp}/good.npz", "--html", "{tmp}/r.unknown/x.html"], r"no such file or directory"),
])
def test_errors_speak_of_flags_not_keywords(workdir, capsys, argv, message):
    """Every error path of every dump subcommand: one line, in the command line's words (its flags), never a
    Python keyword argument of the library underneath (labels=..., from_logits=True, n_bins, n_classes=...)."""
    np.save(workdir / "labels9.npy", np.full(N, 9))
    (workdir / "npy_shards").mkdir()
    np.save(workdir / "npy_shards" / "a.npy", np.zeros((3, 2)))
    code, out, err = _run([a.format(tmp=workdir) for a in argv], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(message, err), err
    assert not KEYWORDS.search(err.replace(str(workdir), "TMP")), err
    assert not _temporaries(workdir)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["report", "x.npz", "--n-bins", "many"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "argument --n-bins: invalid int value: 'many'" in err and "--help" in err


@pytest.mark.skipif(not hasattr(_validation, "MAX_BINS"), reason="check_n_bins has no MAX_BINS yet")
def test_huge_n_bins_is_refused_before_anything_is_allocated(workdir):
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "import calibkit.cli\n"
            f"sys.exit(calibkit.cli.main(['{{}}', {str(workdir / 'good.npz')!r}, '--n-bins', '100000000']))")
    for command in ("report", "evaluate"):
        r = subprocess.run([sys.executable, "-c", code.format(command)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"calibkit {command}: --n-bins" in r.stderr, \
            r.stderr[-1000:]


def _link(kind, src, dst):
    if kind == "hard link":
        os.link(src, dst)
    elif kind == "symlink":
        os.symlink(src, dst)
    return dst if kind != "same path" else src


@pytest.mark.parametrize("dtype", ("float32", "float64"))
@pytest.mark.parametrize("link", ("same path", "hard link", "symlink"))
def test_apply_never_writes_over_its_input(workdir, capsys, link, dtype):
    src = workdir / "scores_logits.npy"
    np.save(src, np.load(workdir / "good_logits.npy").astype(dtype))
    before = src.read_bytes()
    out = _link(link, src, workdir / "alias.npy")
    code, _, err = _run(["apply", str(workdir / "cal.json"), str(src), "--out", str(out), "--dtype", dtype,
                         "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is the same file as the input" in err, err
    assert src.read_bytes() == before and not _temporaries(workdir)


@pytest.mark.parametrize("argv", [
    ["fit", "{tmp}/good.npz", "--method", "temperature", "--out", "{tmp}/good.npz"],
    ["fit", "{tmp}/good_logits.npy", "--labels", "{tmp}/labels.npy", "--method", "temperature", "--out",
     "{tmp}/labels.npy"],
    ["apply", "{tmp}/cal.json", "{tmp}/good.npz", "--out", "{tmp}/cal.json"],
    ["report", "{tmp}/good.npz", "--json", "{tmp}/good.npz", "--quiet"],
    ["report", "{tmp}/good_logits.npy", "--labels", "{tmp}/labels.npy", "--json", "{tmp}/labels.npy", "--quiet"],
    ["report", "{tmp}/shards", "--json", "{tmp}/shards/a.npz", "--quiet"],
    ["report", "{tmp}/good.npz", "--plot", "{tmp}/alias.png", "--quiet"],  # a symlink to good.npz
])
def test_no_output_is_an_input(workdir, capsys, argv):
    (workdir / "shards").mkdir()
    np.savez(workdir / "shards" / "a.npz", logits=np.zeros((3, 2)), labels=np.zeros(3, int))
    os.symlink(workdir / "good.npz", workdir / "alias.png")
    files = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    code, _, err = _run([a.format(tmp=workdir) for a in argv], capsys)
    assert code == 2 and err.count("\n") == 1 and "is the same file as the input" in err, err
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == files


def test_failed_apply_keeps_the_old_output(workdir, capsys):
    z = np.load(workdir / "good_logits.npy")
    z[-3, 1] = np.nan  # found while the rows are written
    np.save(workdir / "bad_logits.npy", z)
    out = workdir / "out.npy"
    out.write_bytes(b"the previous output")
    code, _, err = _run(["apply", str(workdir / "cal.json"), str(workdir / "bad_logits.npy"), "--out", str(out),
                         "--quiet"], capsys)
    assert code == 2 and f"bad_logits.npy: scores[{N - 3}, 1] = nan is not finite" in err
    assert out.read_bytes() == b"the previous output" and not _temporaries(workdir)


def _dead_pid():
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_apply_output_is_complete_and_stale_temporaries_go(workdir, capsys):
    out = workdir / "out.npy"
    stale = workdir / f".out.npy.calibkit-tmp-{_dead_pid()}-xyz"
    stale.write_bytes(b"left by kill -9")
    alive = workdir / f".out.npy.calibkit-tmp-{os.getppid()}-abc"  # a running process's: kept
    alive.write_bytes(b"being written")
    code, _, err = _run(["apply", str(workdir / "cal.json"), str(workdir / "good.npz"), "--out", str(out),
                         "--dtype", "float64", "--quiet"], capsys)
    assert code == 0, err
    assert not stale.exists() and alive.exists()
    got = np.load(out)
    assert got.shape == (N, K) and got.dtype == np.float64
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)


def test_output_mode_kept_or_from_umask(workdir, capsys):
    out = workdir / "out.npy"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    cal = workdir / "cal2.json"
    old_mask = os.umask(0o077)
    try:
        assert _run(["apply", str(workdir / "cal.json"), str(workdir / "good.npz"), "--out", str(out), "--quiet"],
                    capsys)[0] == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o640  # the replaced file's mode
        os.umask(0o022)
        assert _run(["fit", str(workdir / "good.npz"), "--method", "isotonic", "--out", str(cal)], capsys)[0] == 0
        assert stat.S_IMODE(cal.stat().st_mode) == 0o644  # a new file: 0666 & ~umask
        os.umask(0o027)
        assert _run(["report", str(workdir / "good.npz"), "--json", str(workdir / "r.json"), "--quiet"],
                    capsys)[0] == 0
        assert stat.S_IMODE((workdir / "r.json").stat().st_mode) == 0o640
    finally:
        os.umask(old_mask)
    assert json.loads(cal.read_text())["input"]["method"] == "isotonic"
    assert not _temporaries(workdir)


def test_sigterm_during_apply_keeps_the_old_output(workdir):
    """SIGTERM while the rows are written: exit 143, the old output as it was, no temporary."""
    rng = np.random.default_rng(1)
    np.save(workdir / "big_logits.npy", rng.normal(size=(200_000, K)).astype(np.float32))
    out = workdir / "out.npy"
    out.write_bytes(b"the previous output")
    code = f"""
import os, signal, sys
from calibkit import cli, io, report
io.Dump.chunk_rows = lambda self, chunk_bytes=None: 10_000
calls = []
real = report.calibrated_probabilities

def slow(*a):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*a)

report.calibrated_probabilities = slow
sys.exit(cli.main(["apply", {str(workdir / "cal.json")!r}, {str(workdir / "big_logits.npy")!r}, "--out",
                   {str(out)!r}, "--quiet"]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 143, r.stderr[-1000:]
    assert out.read_bytes() == b"the previous output" and not _temporaries(workdir)


def test_fit_on_a_dump_larger_than_memory_is_one_line(tmp_path):
    """A consistent compressed member too big to gather for a fit: one line saying what to do. (`calibkit
    evaluate` is `calibkit report`, which reads it chunk by chunk.)"""
    path = tmp_path / "big.npz"
    n = 8_000_000  # 1.3 GB of float64 logits, ~6 MB compressed
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, descr, shape in (("logits", "<f8", (n, 20)), ("labels", "|i1", (n,))):
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
                left, block = n * (160 if name == "logits" else 1), bytes(16 << 20)
                while left:
                    f.write(block[:min(left, len(block))])
                    left -= min(left, len(block))
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            f"import calibkit.cli\nsys.exit(calibkit.cli.main(['fit', {str(path)!r}, '--method', 'temperature', "
            f"'--out', {str(tmp_path / 'c.json')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MALLOC_ARENA_MAX="2", NUMBA_NUM_THREADS="2", OPENBLAS_NUM_THREADS="1"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-1000:]
    assert "big.npz:logits: its 8,000,000 rows (1.2 GiB) do not fit in memory; fit on a smaller split" in r.stderr
