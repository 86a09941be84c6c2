"""The package as a user gets it: licence, metadata, and the example dump inside every wheel and sdist.

The wheel test builds calibkit from a clean ``git archive`` of HEAD (no ``../shared`` beside it, no
``CALIBKIT_DATA``), installs it into a fresh virtual environment and runs ``calibkit report --example``
there. It compiles the extension (about a minute) and needs a git checkout; it skips cleanly otherwise.
"""

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest

import calibkit
from calibkit import datasets
from _wheel import build_wheel, clean_env, venv_with

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = f"calibkit/data/{datasets.EXAMPLE_FILE}"


def test_licence_file_and_metadata():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    meta = importlib.metadata.metadata("calibkit")
    assert meta["License-Expression"] == "MIT"
    assert "LICENSE" in (meta.get_all("License-File") or [])


def test_load_example_returns_the_splits():
    d = datasets.load_example()
    assert d.val_logits.shape == (5000, 10) and d.val_logits.dtype == np.float32
    assert d.val_labels.shape == (5000,) and d.val_labels.dtype == np.int64
    assert d.test_logits.shape == (10000, 10) and d.test_labels.shape == (10000,)
    assert d.test_labels.min() == 0 and d.test_labels.max() == 9
    assert "10 classes" in repr(d) and "Mukhoti" in repr(d)
    # new arrays on every call: a user's change does not leak into the next load
    d.test_logits[0, 0] = 1e9
    assert datasets.load_example().test_logits[0, 0] != 1e9
    assert calibkit.datasets is datasets


def test_example_is_the_shared_dump():
    shared = ROOT.parent / "shared" / "data" / datasets.EXAMPLE_FILE
    if not shared.exists():
        pytest.skip("no ../shared/data beside the checkout")
    with np.load(shared) as a, np.load(datasets.example_path()) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def _git_archive(dest):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    archive = dest / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), "HEAD"], check=True,
                   timeout=120)
    src = dest / "calibkit-src"
    src.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(src, filter="data")
    if not (src / "src" / EXAMPLE).exists():
        pytest.skip("HEAD predates the packaged example dump")
    return src


def test_sdist_has_licence_and_example(tmp_path):
    src = _git_archive(tmp_path)
    code = f"from scikit_build_core.build import build_sdist; print(build_sdist({str(tmp_path / 'dist')!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = proc.stdout.split()[-1]
    with tarfile.open(tmp_path / "dist" / name) as t:
        names = t.getnames()
    top = name[: -len(".tar.gz")]
    assert f"{top}/LICENSE" in names and f"{top}/src/{EXAMPLE}" in names, names


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_wheel_from_clean_archive_runs_the_example(tmp_path):
    src = _git_archive(tmp_path)
    before = _tree(src)
    wheel = build_wheel(src, tmp_path / "dist", timeout=1200)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert EXAMPLE in names and "calibkit/py.typed" in names, names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    # the build wrote nothing into the source tree (a read-only checkout builds)
    assert _tree(src) == before, sorted(set(_tree(src)) - set(before))[:20]
    # a fresh environment: calibkit from the wheel, run from a folder with nothing beside it
    venv = tmp_path / "venv"
    py = venv_with(wheel, venv)
    run = tmp_path / "elsewhere"
    run.mkdir()
    proc = subprocess.run([str(venv / "bin" / "calibkit"), "report", "--example", "--calibrate", "temperature",
                           "--quiet"], cwd=run, capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "10,000 rows x 10 classes" in proc.stdout and "temperature" in proc.stdout, proc.stdout
    proc = subprocess.run([str(py), "-c", "import calibkit, calibkit.datasets as d; print(calibkit.__file__); "
                           "print(d.load_example().test_logits.shape)"], cwd=run, capture_output=True, text=True,
                          timeout=300, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(venv) in proc.stdout and "(10000, 10)" in proc.stdout, proc.stdout
