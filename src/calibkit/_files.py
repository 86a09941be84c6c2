"""The one place that writes output files: atomically, never over an input.

Every file calibkit writes (calibrated scores, calibrator JSON, reports,
monitor state, Prometheus text) goes through :func:`atomic_output`: the bytes
go to a temporary file in the destination's folder, which is flushed, synced
and renamed over the destination only when the writer finished without an
exception; the folder is synced after the rename. A reader (or a crash,
``kill -9`` or a power loss) therefore sees the old file or the new one,
never a mix. The new file keeps the permission bits of the
file it replaces; a new file gets the usual ``0666 & ~umask`` (``mkstemp``
alone would make every output 0600, unreadable to e.g. a node_exporter
running as another user).

A temporary left by a killed process is named ``.<name>.calibkit-tmp-<pid>-*``
and is removed by the next write to the same destination once its process is
gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile

from ._typing import StrPath

_TMP_TAG = ".calibkit-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Remove temporaries of `name` left in `directory` by processes that no longer run."""
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}{_TMP_TAG}*")):
        rest = os.path.basename(tmp)[len(name) + 1 + len(_TMP_TAG):]
        pid_text = rest.split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid != os.getpid() and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def same_file(a: StrPath, b: StrPath) -> bool:
    """True when paths `a` and `b` name the same existing file (hard links and symlinks included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@contextlib.contextmanager
def atomic_output(path, mode: str = "wb", *, inputs=(), encoding=None):
    """Open a temporary file that replaces `path` only if the block exits without an exception.

    Parameters
    ----------
    path : str or os.PathLike
        The destination. Its folder must exist.
    mode : {"wb", "w"}
        Binary or text.
    inputs : sequence of paths
        Files the caller reads while writing: a destination that is the same
        file as any of them is refused with ``ValueError`` before anything is
        opened, so an input is never truncated.
    encoding : str, optional
        For text mode (default UTF-8).

    Yields
    ------
    file object
        Write the output to it; do not close it.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    for src in inputs:
        if src is not None and same_file(path, src):
            raise ValueError(f"output {path} is the same file as the input {os.fspath(src)}; "
                             "choose another output path (calibkit never writes over an input)")
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: No such file or directory {directory} (create the folder "
                                "first)")
    name = os.path.basename(path)
    _remove_stale_temporaries(directory, name)
    try:
        file_mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        file_mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{name}{_TMP_TAG}{os.getpid()}-", dir=directory)
    try:
        os.fchmod(fd, file_mode)
        with os.fdopen(fd, mode, **({"encoding": encoding or "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    """fsync the folder so the rename itself survives a power loss (best effort: not every OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: StrPath, data: bytes) -> None:
    """Write `data` to `path` atomically (see :func:`atomic_output`)."""
    with atomic_output(path, "wb") as f:
        f.write(data)
