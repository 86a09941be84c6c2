"""Backend choice and thread control.

Every kernel exists twice, in C++ (``calibkit._core``) and in Numba
(``calibkit._numba``), with the same names and the same algorithm. Public
functions take ``backend="auto" | "cpp" | "numba"``; ``"auto"`` means the
``CALIBKIT_BACKEND`` environment variable if set, else C++.

Processes and threads. Both backends survive ``fork`` (the default start method
of ``multiprocessing`` on Linux): the C++ pool is re-created in the child, and
importing the Numba backend asks Numba for its "forksafe" threading layer (TBB
if installed, else workqueue) unless ``NUMBA_THREADING_LAYER`` is set or Numba's
threads already run; a child forked from a process running GNU OpenMP kernels
runs the Numba kernels serially. Kernels may be called from several Python
threads at once. An exception in a C++ pool task is re-raised in the caller.
"""

from __future__ import annotations

import os
import threading

from . import _core

BACKENDS = ("auto", "cpp", "numba")
#: Largest thread count of set_num_threads (the C++ pool clamps to the same kMaxThreads).
MAX_THREADS = 1024

# Numba's workqueue threading layer aborts the process when two Python threads
# run parallel kernels at once: a parallel Numba kernel runs only while holding
# this lock (a caller that finds it taken runs the serial twin instead, see
# calibkit._numba._common.run_locked).
numba_lock = threading.Lock()


def _new_lock_in_child():
    # fork() copies the lock in whatever state another thread left it; the child has no such thread.
    global numba_lock
    numba_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


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


_numba_kernels = None  # calibkit._numba once imported (the import statement costs ~1 us per call)


def kernels(backend: str | None):
    """The module holding the kernels of the chosen backend."""
    global _numba_kernels
    if backend == "cpp" or resolve_backend(backend) == "cpp":
        return _core
    if _numba_kernels is None:
        from . import _numba

        _numba_kernels = _numba
    return _numba_kernels


def set_num_threads(n: int) -> None:
    """Set the number of threads the native kernels use (both backends).

    Results do not depend on it: work is split into fixed-size chunks combined
    in a fixed order, so any thread count gives bit-identical results.

    Parameters
    ----------
    n : int
        Threads per kernel call, the calling thread included (1 to
        ``MAX_THREADS`` = 1024). The Numba
        backend uses at most ``NUMBA_NUM_THREADS`` of them (Numba's pool size,
        fixed when its threads start). Inputs smaller than one parallel chunk
        always run on the calling thread.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> previous = calibkit.get_num_threads()
    >>> calibkit.set_num_threads(1)
    >>> calibkit.get_num_threads()
    1
    >>> calibkit.set_num_threads(previous)
    """
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"n must be in [1, {MAX_THREADS}], got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """Number of threads the native kernels use (both backends).

    The default, fixed at the first kernel call of the process, is the number
    of CPUs the process may use (its CPU affinity, as ``os.sched_getaffinity``
    and ``taskset`` see it, lowered to a cgroup CPU quota when one is set),
    capped by ``CALIBKIT_NUM_THREADS`` when that is a positive integer, else by
    ``OMP_NUM_THREADS`` (its first entry). Other values of those variables are
    ignored. :func:`set_num_threads` replaces the default.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> calibkit.get_num_threads() >= 1
    True
    """
    return int(_core.get_num_threads())
