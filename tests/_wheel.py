"""Build a wheel of a source tree and install it into a fresh venv (the packaging and portable-SIMD tests)."""

from __future__ import annotations

import os
import pathlib
import site
import subprocess
import sys


def clean_env(**extra) -> dict:
    """This process's environment without what points calibkit at the checkout or picks a backend."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CALIBKIT_DATA", "PYTHONPATH", "CALIBKIT_BACKEND", "CALIBKIT_NO_AVX2")}
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra)
    return env


def build_wheel(src: pathlib.Path, dist: pathlib.Path, *config: str, timeout: float = 1800) -> pathlib.Path:
    """``pip wheel`` of ``src`` into ``dist`` (``config``: extra ``-C`` settings); the wheel's path."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           *(f"-C{c}" for c in config), "-w", str(dist), str(src)],
                          capture_output=True, text=True, timeout=timeout, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(dist.glob("calibkit-*.whl"))


def venv_with(wheel: pathlib.Path, venv: pathlib.Path) -> pathlib.Path:
    """A fresh venv whose calibkit is ``wheel``; its Python.

    The dependencies come from this interpreter's site-packages, added as a plain path (not a site dir: their
    .pth files, such as an editable install's import hook, are not run). ``--ignore-installed``: the calibkit
    this interpreter has installed is on the venv's path too, and must not count as "already satisfied".
    """
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site_dir = next((venv / "lib").glob("python*/site-packages"))
    (site_dir / "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    py = venv / "bin" / "python"
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return py


__all__ = ["build_wheel", "clean_env", "venv_with"]
