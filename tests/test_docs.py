"""The documentation site (docs/, Sphinx + numpydoc) builds with warnings as errors, and its examples run.

The build needs the `docs` extra (``pip install ".[docs]"``) and is skipped without it; the pages' ``>>>``
examples run as doctests either way."""

import doctest
import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))


def test_pages_listed():
    names = {p.stem for p in PAGES}
    assert {"index", "getting_started", "evaluation", "streaming", "embedding", "metrics", "cli", "api"} <= names
    index = (DOCS / "index.rst").read_text()
    for name in names - {"index"}:
        assert f"   {name}\n" in index, f"{name}.rst is not in the toctree"


def test_build_warnings_as_errors(tmp_path):
    for module in ("sphinx", "numpydoc"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install '.[docs]')")
    out = tmp_path / "html"
    r = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                        "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    for page in PAGES:
        assert (out / f"{page.stem}.html").is_file()
    api = (out / "api.html").read_text()
    for name in ("calibkit.metrics.calibration_error", "calibkit.streaming.CalibrationAccumulator",
                 "calibkit.monitor.MetricsServer", "calibkit.datasets.load_example"):
        assert f'id="{name}"' in api, name
    assert "usage: calibkit monitor" in (out / "cli.html").read_text()
    assert not list(DOCS.glob("_build"))  # the build wrote nothing into the source tree


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    failed, _ = doctest.testfile(str(page), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE
                                 | doctest.ELLIPSIS, verbose=False, raise_on_error=False, report=True)
    assert failed == 0
