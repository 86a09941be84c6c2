"""Numba's on-disk cache for calibkit's kernels, keyed on all of calibkit's Numba sources.

Numba keys a cached function on the one source file that defines it (its content, or its mtime in older
releases). But a kernel compiles in the functions it calls from other files: every kernel inlines ``exp_f32``
and the checks of ``_common.py``. After an upgrade in place that changes ``_common.py`` only, Numba would load
the other modules' kernels from the cache with the old ``exp_f32`` compiled in: numbers that differ from the
C++ backend's, silently. (A CI environment that keeps its ``__pycache__`` between runs saw exactly this.)

`KernelLocator` keys calibkit's kernels on the digest of every ``.py`` file of this directory as well, so that
a change to any of them recompiles all of them. Where the cache lives (``NUMBA_CACHE_DIR``, the in-tree
``__pycache__``, the user-wide directory) and its file names stay Numba's own: the locator wraps the locator
Numba would have chosen. Functions outside this directory are left to Numba.

The locator is registered when ``calibkit._numba`` is imported, before any kernel is decorated. A user who sets
``NUMBA_CACHE_LOCATOR_CLASSES`` replaces Numba's list, and with it this locator.
"""

import functools
import hashlib
import os
from typing import ClassVar

from numba.core import caching

DIRECTORY = os.path.dirname(os.path.abspath(__file__))


@functools.cache
def _digest(directory, stats):
    h = hashlib.sha256()
    for name, _, _ in stats:
        h.update(name.encode() + b"\0")
        with open(os.path.join(directory, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def sources_digest(directory=DIRECTORY):
    """SHA-256 of the names and contents of the ``.py`` files of ``directory``, in name order (re-read only
    when a file's size or mtime changes)."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".py"))
    stats = []
    for name in names:
        st = os.stat(os.path.join(directory, name))
        stats.append((name, st.st_mtime_ns, st.st_size))
    return _digest(directory, tuple(stats))


_IMPL = caching.CacheImpl  # its _locator_classes: the list Numba tries in order (Numba 0.60 to 0.68 alike)


class KernelLocator(caching._CacheLocator):
    """The locator Numba would choose for a function of a registered directory, with that directory's
    `sources_digest` added to its source stamp."""

    directories: ClassVar[set] = {DIRECTORY}  # the tests add their own

    def __init__(self, inner, directory):
        self._inner = inner
        self._directory = directory
        self._py_file = getattr(inner, "_py_file", None)  # Numba's error messages read it

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        # Numba's own stamp too: in a frozen application it is that of the executable.
        try:
            digest = sources_digest(self._directory)
        except OSError:  # a directory that cannot be listed: Numba's stamp alone
            digest = None
        return self._inner.get_source_stamp(), digest

    @classmethod
    def from_function(cls, py_func, py_file):
        directory = os.path.dirname(os.path.abspath(py_file))
        if directory not in cls.directories:
            return None
        for other in _IMPL._locator_classes:
            if other is not cls:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner, directory)
        return None


def register():
    """Put `KernelLocator` first in Numba's list of locators (once)."""
    if KernelLocator not in _IMPL._locator_classes:
        _IMPL._locator_classes.insert(0, KernelLocator)
