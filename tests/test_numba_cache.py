"""Numba's on-disk cache of calibkit's kernels follows every change to calibkit's Numba sources
(calibkit/_numba/_cache.py): a kernel compiles in functions of other files, which Numba's own per-file key
misses."""

import os
import subprocess
import sys
import textwrap

import pytest

numba = pytest.importorskip("numba")

from calibkit._numba import _cache

# The probe package: b.probe() compiles in a.value() from another file of the same directory, as every
# calibkit kernel compiles in _common.py's exp_f32.
_A = "import numba\n\n@numba.njit(cache=True)\ndef value():\n    return {}\n"
_B = "import numba\nfrom .a import value\n\n@numba.njit(cache=True)\ndef probe():\n    return value()\n"
_RUN = textwrap.dedent("""
    import sys
    from calibkit._numba import _cache
    _cache.KernelLocator.directories.add(sys.argv[2])
    sys.path.insert(0, sys.argv[1])
    from probe.b import probe
    print(probe())
""")


def _run(root, directory):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}  # the in-tree __pycache__
    proc = subprocess.run([sys.executable, "-c", _RUN, str(root), str(directory)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


def test_a_change_in_another_file_recompiles(tmp_path):
    package = tmp_path / "probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(_A.format("1.0"))
    (package / "b.py").write_text(_B)
    assert _run(tmp_path, package) == 1.0
    assert any(name.endswith(".nbi") for name in os.listdir(package / "__pycache__"))  # cached ...
    assert _run(tmp_path, package) == 1.0  # ... and loaded
    (package / "a.py").write_text(_A.format("2.0"))  # b.py unchanged: Numba alone would load b's old probe
    assert _run(tmp_path, package) == 2.0


def test_digest_follows_each_file(tmp_path):
    (tmp_path / "x.py").write_text("a = 1\n")
    (tmp_path / "y.py").write_text("b = 2\n")
    (tmp_path / "notes.txt").write_text("not a source")
    first = _cache.sources_digest(str(tmp_path))
    assert _cache.sources_digest(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("still not a source")
    assert _cache.sources_digest(str(tmp_path)) == first
    (tmp_path / "y.py").write_text("b = 3\n")  # same size: the content counts
    later = os.stat(tmp_path / "y.py").st_mtime_ns + 10**9  # a later mtime, as a real edit's (the clock's tick
    os.utime(tmp_path / "y.py", ns=(later, later))  # can be coarser than these two writes' interval)
    second = _cache.sources_digest(str(tmp_path))
    assert second != first
    (tmp_path / "z.py").write_text("")
    assert _cache.sources_digest(str(tmp_path)) not in (first, second)


def test_calibkit_kernels_use_the_locator():
    from calibkit._numba import _common, uncertainty

    assert numba.core.caching.CacheImpl._locator_classes[0] is _cache.KernelLocator
    for kernel in (_common.exp_f32, uncertainty._softmax_f):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, _cache.KernelLocator)
        assert locator.get_source_stamp()[1] == _cache.sources_digest()


def test_unlistable_directory_falls_back_to_numbas_stamp(tmp_path):
    class Inner:  # the few methods KernelLocator forwards to the locator Numba chose
        def get_source_stamp(self):
            return "numba's stamp"

    locator = _cache.KernelLocator(Inner(), str(tmp_path / "missing"))
    assert locator.get_source_stamp() == ("numba's stamp", None)  # no crash at the kernel's first call
