"""Backend choice and thread control.

Every kernel exists twice, in C++ (``calibkit._core``) and in Numba
(``calibkit._numba``), with the same names and the same algorithm. Public
functions take ``backend="auto" | "cpp" | "numba"``; ``"auto"`` means the
``CALIBKIT_BACKEND`` environment variable if set, else C++.
"""

from __future__ import annotations

import os
import threading

from . import _core

BACKENDS = ("auto", "cpp", "numba")

# Numba's default (workqueue) threading layer aborts the process when two
# Python threads run parallel kernels at once: Numba kernels run under this lock.
numba_lock = threading.Lock()


def resolve_backend(backend: str | None) -> str:
    """Return ``"cpp"`` or ``"numba"`` for a user's ``backend=`` argument."""
    if backend is None:
        backend = "auto"
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("CALIBKIT_BACKEND", "cpp").strip().lower() or "cpp"
        if env not in ("cpp", "numba"):
            raise ValueError(f"CALIBKIT_BACKEND must be 'cpp' or 'numba', got {env!r}")
        return env
    return backend


def kernels(backend: str | None):
    """The module holding the kernels of the chosen backend."""
    if resolve_backend(backend) == "cpp":
        return _core
    from . import _numba

    return _numba


def set_num_threads(n: int) -> None:
    """Set the number of threads the native kernels use (both backends).

    Results do not depend on it: work is split into fixed-size chunks combined
    in a fixed order, so any thread count gives bit-identical results.
    """
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Number of threads the native kernels use (default: all cores)."""
    return int(_core.get_num_threads())
