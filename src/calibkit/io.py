"""Evaluation dumps: opened without loading, read in fixed-size row chunks.

A dump is scores (N, K) logits or probabilities, or (N,) binary scores, and
integer labels (N,). Supported layouts:

- ``.npy``: the scores, memory-mapped; the labels in a second ``.npy`` (``labels=``).
- ``.npz``: arrays named ``logits`` / ``probs`` (or ``probabilities``, ``scores``)
  and ``labels``, or split arrays ``val_logits`` / ``val_labels`` and
  ``test_logits`` / ``test_labels`` (choose with ``split=``). Members stored
  without compression (``np.savez``) are memory-mapped where they lie in the
  zip file; compressed members (``np.savez_compressed``) are inflated block
  by block as the rows are read (a compressed (N, K) member in Fortran order
  cannot be read by rows: up to ``MAX_FORTRAN_INFLATE_BYTES`` it is inflated
  whole, beyond that it is refused). Every member's header must account
  exactly for the member's size.
- ``.parquet`` and Arrow IPC (``.arrow`` / ``.feather``) files (with pyarrow,
  the optional extra ``parquet``): the scores in a fixed-size-list or list
  column of floats (all rows of one length K) or a float column (binary
  scores), the labels in an integer column. Parquet is read by row group,
  Arrow IPC files are memory-mapped.
- a directory of such files (shards, in file-name order): one dump of their
  rows, shards checked for the same K, dtype and kind of scores.
- dense predictions in an ``.npy`` or ``.npz``: scores ``(N, K, *spatial)``
  (or channel-last with ``axis=-1``) and labels ``(N, *spatial)``, opened as a
  :class:`DenseDump` whose rows are the counted pixels (``ignore_index=`` and
  ``mask=`` leave pixels out), read as strided views of the memory map by
  :func:`calibkit._dense.as_dense` (a compressed member one image at a time).

Every consumer reads a dump through :meth:`Dump.chunks` (or
:meth:`Dump.split_chunks`, which splits each block by a row mask), so peak
memory is bounded by the chunk size, not by the dump. An ``.npy`` file or a
stored ``.npz`` member is read with positioned reads on one descriptor, the OS
told the reads are sequential and asked to fetch the next block ahead, while
a reading thread fetches the next block as the caller works on this one; a
split block's rows are scattered into their two parts by the read itself
(``preadv``), so splitting costs no copy.

A file that cannot be read (missing, a directory, empty, truncated, not an
.npy / .npz file, an array of Python objects, a header inconsistent with the
data) raises :class:`DumpError`, one line naming the file and saying what to
do. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import os
import pathlib
import sys
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import _backend
from ._typing import ArrayLike, BoolArray, StrPath

if TYPE_CHECKING:
    from ._validation import BadElementError

SCORE_NAMES = ("logits", "probs", "probabilities", "scores")
LABEL_NAMES = ("labels", "targets", "y")
# 16 MB blocks: glibc hands out blocks below its 32 MB mmap threshold from the heap and reuses them, while
# larger ones are fresh mappings whose page faults cost more than the read itself (measured: a 4 GB dump
# read from page cache in 0.31 s in 16 MB blocks, 0.45-0.8 s in 64 MB blocks).
DEFAULT_CHUNK_BYTES = 16 << 20


class DumpError(ValueError):
    """A dump that cannot be read: missing array, inconsistent shards, truncated file, ..."""


# A compressed Fortran-ordered (N, K) member cannot be read by row blocks (its rows are spread over the whole
# stream): up to this size it is inflated whole, beyond it refused with advice.
MAX_FORTRAN_INFLATE_BYTES = 64 << 20
_SAVE_ADVICE = "write dumps with np.save / np.savez / np.savez_compressed"


def _npy_header(f, where):
    """Read an .npy header from the file object `f`; return (shape, fortran, dtype, data_bytes).

    Every failure is a :class:`DumpError` naming `where` (a file, or a file and a member): not an .npy array,
    an unknown format version, an array of Python objects. NumPy's advice about ``allow_pickle`` is never
    passed on: calibkit reads numbers only and never unpickles.
    """
    try:
        version = np.lib.format.read_magic(f)
    except (ValueError, EOFError, OSError):
        raise DumpError(f"{where}: not an .npy array (it does not start with the .npy header); "
                        f"{_SAVE_ADVICE}") from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DumpError(f"{where}: .npy format version {version[0]}.{version[1]} is not read by calibkit "
                            f"(only 1.0 and 2.0, which hold every numeric array); {_SAVE_ADVICE}")
    except DumpError:
        raise
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise DumpError(f"{where}: corrupt or truncated .npy header ({_one_line(exc)}); {_SAVE_ADVICE}") from None
    if dtype.hasobject:
        raise DumpError(f"{where}: the array holds Python objects (dtype {dtype}); calibkit reads numeric arrays "
                        "only: save the scores and labels as numbers (e.g. np.asarray(x, dtype=np.float32))")
    return tuple(shape), bool(fortran), dtype, math.prod(shape) * dtype.itemsize


def _one_line(exc) -> str:
    return " ".join(str(exc).split())


def _mapped(path, offset, shape, fortran, dtype, data_bytes):
    if data_bytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class _ZipMemberRows:
    """A compressed .npz member as a read-only array (row slices only), inflated block by block.

    Reading rows [a, b) seeks the member's stream to them (forward seeks inflate and discard in bounded
    blocks; a backward seek starts the stream again) and inflates only those rows, so memory is bounded by
    the block read, never by the member.
    """

    def __init__(self, path, name, data_offset, shape, dtype):
        self.path, self.name = path, name
        self.data_offset = data_offset
        self.shape, self.dtype, self.ndim = shape, dtype, len(shape)
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self._zf = self._f = None
        self._lock = threading.Lock()

    def __len__(self):
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        """The whole member in memory (for an explicit ``np.asarray``; calibkit itself reads row blocks)."""
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def close(self):
        with self._lock:
            for h in (self._f, self._zf):
                if h is not None:
                    h.close()
            self._zf = self._f = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("compressed .npz members are read by contiguous row ranges")
        a, b, _ = key.indices(self.shape[0])
        b = max(a, b)
        out = np.empty((b - a,) + self.shape[1:], dtype=self.dtype)
        if out.nbytes == 0:
            return out
        where = f"{self.path}: cannot read array {self.name!r}"
        with self._lock:
            try:
                if self._f is None:
                    self._zf = zipfile.ZipFile(self.path)
                    self._f = self._zf.open(self.name)
                self._f.seek(self.data_offset + a * self.row_bytes)
                got = self._f.readinto(memoryview(out).cast("B"))
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, ValueError, KeyError) as exc:
                raise DumpError(f"{where}: cannot inflate rows {a}..{b - 1} ({_one_line(exc)}); the file is "
                                "corrupt or truncated") from None
        if got != out.nbytes:
            raise DumpError(f"{where}: the member ended early (rows {a}..{b - 1}); the file is truncated")
        return out


def _npy_member(path, zf, info):
    """A .npz member as a read-only array-like: memory-mapped when stored, inflated block by block when
    compressed. The header's shape and dtype must account exactly for the member's uncompressed size."""
    where = f"{path}: cannot read array {info.filename!r}"
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as f:
            shape, fortran, dtype, data_bytes = _npy_header(f, where)
            header_bytes = f.tell()
    else:
        with open(path, "rb") as raw:
            raw.seek(info.header_offset)
            local = raw.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise DumpError(f"{where}: corrupt zip entry; the file is damaged or truncated")
            name_len = int.from_bytes(local[26:28], "little")
            extra_len = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            raw.seek(start)
            shape, fortran, dtype, data_bytes = _npy_header(raw, where)
            header_bytes = raw.tell() - start
    if header_bytes + data_bytes != info.file_size:
        raise DumpError(f"{where}: its header declares {dtype} {shape} ({data_bytes:,} bytes of data) but the "
                        f"member holds {max(0, info.file_size - header_bytes):,}; the file is corrupt or "
                        "truncated")
    if info.compress_type == zipfile.ZIP_STORED:
        if start + header_bytes + data_bytes > os.path.getsize(path):
            raise DumpError(f"{where}: the file is truncated")
        return _mapped(path, start + header_bytes, shape, fortran, dtype, data_bytes)
    if fortran and len(shape) == 2 and shape[1] > 1:
        if data_bytes > MAX_FORTRAN_INFLATE_BYTES:
            raise DumpError(f"{where}: a compressed array in Fortran order ({data_bytes / 2**20:,.0f} MiB) cannot "
                            "be read by rows; save it in C order (np.ascontiguousarray) or with np.savez")
        with zf.open(info) as f:
            f.seek(header_bytes)
            flat = np.frombuffer(f.read(data_bytes), dtype=dtype)
        if flat.nbytes != data_bytes:
            raise DumpError(f"{where}: the member ended early; the file is truncated")
        return flat.reshape(shape, order="F")
    return _ZipMemberRows(path, info.filename, header_bytes, shape, dtype)


def _load_npy(path):
    """A .npy file as a read-only memory-mapped array (header checked; see :func:`_npy_header`)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise DumpError(f"{path}: empty file, not an .npy array; {_SAVE_ADVICE}")
            shape, fortran, dtype, data_bytes = _npy_header(f, path)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise DumpError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DumpError(f"{path}: is a directory, not an .npy file") from None
    except OSError as exc:
        raise DumpError(f"{path}: cannot read it ({exc.strerror or _one_line(exc)})") from None
    if offset + data_bytes > size:
        raise DumpError(f"{path}: the file is truncated: its header declares {dtype} {shape} "
                        f"({data_bytes:,} bytes of data) but {max(0, size - offset):,} follow")
    return _mapped(path, offset, shape, fortran, dtype, data_bytes)


def _npz_arrays(path):
    """{name: array-like} of a .npz file, members memory-mapped where stored, streamed where compressed.

    A member that cannot be read maps to its :class:`DumpError`, raised when that member is chosen.
    """
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise DumpError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DumpError(f"{path}: is a directory, not an .npz file") from None
    except zipfile.BadZipFile:
        empty = os.path.exists(path) and os.path.getsize(path) == 0
        raise DumpError(f"{path}: {'empty file' if empty else 'not an .npz (zip) file'}, or a truncated one; "
                        f"{_SAVE_ADVICE}") from None
    except OSError as exc:
        raise DumpError(f"{path}: cannot read it ({exc.strerror or _one_line(exc)})") from None
    with zf:
        out = {}
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                out[info.filename[:-4]] = _npy_member(path, zf, info)
            except DumpError as exc:
                out[info.filename[:-4]] = exc
            except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                    zlib.error) as exc:
                out[info.filename[:-4]] = DumpError(f"{path}: cannot read array {info.filename!r} "
                                                    f"({_one_line(exc)}); the file is corrupt or truncated")
    return out


def _member(arrays, key):
    """arrays[key], raising the member's DumpError if it could not be read."""
    a = arrays[key]
    if isinstance(a, DumpError):
        raise a
    return a


def _choose(arrays, names, prefix, what, path, explicit=None):
    if explicit is not None:
        if explicit not in arrays:
            raise DumpError(f"{path}: no array {explicit!r} (it has {sorted(arrays)})")
        return explicit
    for n in names:
        if prefix + n in arrays:
            return prefix + n
    raise DumpError(f"{path}: no {what} array: cannot tell which array holds the {what} (looked for "
                    f"{[prefix + n for n in names]}; it has {sorted(arrays)}); name it with --{what}-key "
                    f"({what}_key=)")


def _splits_of(names):
    return sorted({k.split("_", 1)[0] for k in names if "_" in k and k.split("_", 1)[1] in SCORE_NAMES})


def splits(path: StrPath) -> list[str]:
    """The splits (``val``, ``test``, ...) of an .npz holding ``<split>_logits``-style arrays; [] otherwise."""
    if not str(path).endswith(".npz"):
        return []
    try:
        with zipfile.ZipFile(path) as zf:
            return _splits_of([n[:-4] for n in zf.namelist() if n.endswith(".npy")])
    except (OSError, zipfile.BadZipFile):
        return []


_HAVE_PREADV = hasattr(os, "preadv")


def _libc_preadv():
    """The C library's ``preadv`` through ctypes (which releases the GIL during the call), or None where it is
    missing or its ``off_t`` may not be 64-bit (then a split block is read whole and copied apart)."""
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        f = ctypes.CDLL(None, use_errno=True).preadv
    except (OSError, AttributeError, TypeError):
        return None
    f.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64)
    f.restype = ctypes.c_ssize_t
    return f


_preadv = _libc_preadv()
# Selected rows this close (bytes of rows between them) are read by one scatter read, the rows between them into
# a scratch buffer: copying 32 KB from the page cache costs about one read call.
_MERGE_BYTES = 32 << 10
_IOV_MAX = 1024  # buffers per scatter read (the POSIX minimum of IOV_MAX is 16; Linux and macOS allow 1024)
# Dump.take reads its rows in parts of at least this many bytes, one thread per part (calibkit.get_num_threads()).
_PART_BYTES = DEFAULT_CHUNK_BYTES
# Block buffers a _RowFile keeps for reuse (Dump._blocks has at most three blocks alive at once).
_POOL_BUFFERS = 4


def _unreferenced_count():
    """sys.getrefcount of a list's element that nothing else references (the list's reference and the call's)."""
    held = [np.empty(1, dtype=np.uint8)]
    return sys.getrefcount(held[0])


_UNREFERENCED = _unreferenced_count()


class SplitBlock(NamedTuple):
    """A block of rows split by a mask (see :meth:`Dump.split_chunks`)."""

    first_row: int
    n_rows: int
    held_mask: np.ndarray           #: (n_rows,) bool: the rows of the block that are held out
    scores: np.ndarray              #: the rows not held out
    labels: np.ndarray
    held_scores: np.ndarray | None  #: the held-out rows (None when not asked for)
    held_labels: np.ndarray | None


class _RowFile:
    """Rows of a C-ordered memory-mapped array, read from its file with positioned reads on one descriptor.

    A context manager (the file is open inside it). Reads never share a file position, so a reading thread
    and the caller may use it at once; ``read_split`` scatters a block's rows into two buffers in one
    ``os.preadv`` per ``_IOV_MAX`` runs, so splitting rows costs no copy beyond the read itself.
    """

    def __init__(self, array, name):
        self.path, self.offset, self.name = array.filename, int(array.offset), name
        self.tail, self.dtype = tuple(array.shape[1:]), array.dtype
        self.row_bytes = math.prod(self.tail) * array.dtype.itemsize
        self._f = None
        self._lock = threading.Lock()
        self._scratch = None  # where read_split drops the held rows it does not keep (one reader at a time)
        self._pool = []  # block buffers (uint8) for _empty to reuse

    def __enter__(self):
        try:
            self._f = open(self.path, "rb", buffering=0)
        except OSError as exc:
            raise DumpError(f"{self.name}: cannot read it ({exc.strerror or _one_line(exc)})") from None
        return self

    def __exit__(self, *exc_info):
        self._f.close()
        self._f = None

    def _advise(self, a, b, name):
        advice = getattr(os, name, None)
        if advice is None or not hasattr(os, "posix_fadvise") or b <= a:
            return
        try:
            os.posix_fadvise(self._f.fileno(), self.offset + a * self.row_bytes, (b - a) * self.row_bytes, advice)
        except OSError:  # advice only
            pass

    def advise_sequential(self, a, b):
        """Rows [a, b) will be read in order: the OS may read further ahead."""
        self._advise(a, b, "POSIX_FADV_SEQUENTIAL")

    def advise_willneed(self, a, b):
        """Rows [a, b) will be read soon: the OS starts reading them in the background."""
        self._advise(a, b, "POSIX_FADV_WILLNEED")

    def _empty(self, rows, capacity=0):
        """An uninitialised array of ``rows`` rows, in the memory of an earlier block when nothing references that
        any more (no array, view or memoryview of it is left: its reference count says so), else new (room for
        ``capacity`` rows, if more, so that the parts of blocks of one size fit the same buffers). A block
        (16 MB) is too large for the allocator to keep for reuse: each new one was a fresh mapping, its pages
        zeroed by the kernel on first touch, which cost about as much CPU as reading the block."""
        nbytes = rows * self.row_bytes
        with self._lock:
            for j in range(len(self._pool)):
                if self._pool[j].nbytes >= nbytes and sys.getrefcount(self._pool[j]) == _UNREFERENCED:
                    buf = self._pool[j]
                    break
            else:
                buf = np.empty(max(rows, capacity) * self.row_bytes, dtype=np.uint8)
                if len(self._pool) < _POOL_BUFFERS:
                    self._pool.append(buf)
        return buf[:nbytes].view(self.dtype).reshape((rows,) + self.tail)

    def read(self, a, b):
        """Rows [a, b) as an array of their own (see _empty)."""
        out = self._empty(b - a)
        if out.nbytes:
            self._read_into([memoryview(out).cast("B")], a)
        return out

    def read_split(self, a, b, held, keep_held=True):
        """Rows [a, b) where the bool array ``held`` is False, and (with ``keep_held``, else None) those where it
        is True, each read straight into an array of its own (see _empty)."""
        n_held = int(np.count_nonzero(held))
        kept = self._empty(b - a - n_held, b - a)
        if n_held == 0 or self.row_bytes == 0:
            if kept.nbytes:
                self._read_into([memoryview(kept).cast("B")], a)
            return kept, (self._empty(n_held) if keep_held else None)
        edges = np.flatnonzero(held[1:] != held[:-1]) + 1
        starts = np.concatenate(([0], edges))
        stops = np.concatenate((edges, [b - a]))
        is_held = held[starts]
        lengths = (stops - starts) * self.row_bytes
        dest = np.zeros_like(lengths)
        for flag in (False, True) if keep_held else (False,):
            sel = is_held == flag
            dest[sel] = np.cumsum(lengths[sel]) - lengths[sel]
        # Held rows not kept are read over one another into a buffer of the longest held run.
        if keep_held:
            held_out = self._empty(n_held)
        else:
            rows = int(((stops - starts)[is_held]).max())
            if self._scratch is None or len(self._scratch) < rows:  # one scratch buffer, grown as needed
                self._scratch = np.empty((max(rows, 256),) + self.tail, dtype=self.dtype)
            held_out = self._scratch
        # One iovec (address, length) per run, straight into its buffer: built in NumPy, read in one call per
        # _IOV_MAX runs with the GIL released, so a block's thousands of runs cost no Python work per run.
        iov = np.empty((len(starts), 2), dtype=np.uint64)
        iov[:, 0] = np.where(is_held, np.uint64(held_out.ctypes.data), np.uint64(kept.ctypes.data))
        iov[:, 0] += dest.astype(np.uint64)
        iov[:, 1] = lengths
        end = dest + lengths  # every run inside its buffer (checked: the addresses go to C unchecked)
        if end[~is_held].max(initial=0) > kept.nbytes or end[is_held].max(initial=0) > held_out.nbytes:
            raise RuntimeError(f"calibkit internal error: a split read of rows {a}..{b - 1} overruns its buffer")
        self._read_iov(iov, a)
        return kept, (held_out if keep_held else None)

    def read_runs(self, mask, out, threads=1):
        """The rows where the bool array ``mask`` (over the whole file) is True, read into ``out`` (their count
        of rows, in order). Runs of selected rows closer than ``_MERGE_BYTES`` are read by one scatter read, the
        rows between them into a scratch buffer (a read costs about as much as copying that many bytes);
        farther ones by a read of their own. No row beyond the last selected one is read.

        With ``threads`` > 1 the selected rows are cut into up to that many parts of about equal size (at least
        ``_PART_BYTES`` each), read at once, each by its own thread into its slice of ``out`` (positioned reads
        share no file position): the copies out of the page cache and the first touch of ``out``'s fresh pages
        run in parallel. The same bytes land in the same places whatever the thread count; an error in a
        part is raised in the caller."""
        n = len(out)
        if int(np.count_nonzero(mask)) != n:
            raise RuntimeError("calibkit internal error: the rows to read do not fill their buffer")
        parts = max(1, min(int(threads), n, out.nbytes // _PART_BYTES))
        if parts == 1:
            self._read_part(mask, out, 0)
            return
        at = [n * p // parts for p in range(parts + 1)]  # part p: out[at[p]:at[p + 1]], file rows cuts[p]..
        rows = np.flatnonzero(mask)
        cuts = [0] + [int(rows[a]) for a in at[1:-1]] + [len(mask)]
        with ThreadPoolExecutor(parts - 1, thread_name_prefix="calibkit-read") as pool:
            pending = [pool.submit(self._read_part, mask[cuts[p]:cuts[p + 1]], out[at[p]:at[p + 1]], cuts[p])
                       for p in range(1, parts)]
            self._read_part(mask[:cuts[1]], out[:at[1]], 0)
            for f in pending:
                f.result()

    def _read_part(self, mask, out, row0):
        """:meth:`read_runs` of one part: the rows ``row0 + i`` where ``mask[i]``, into ``out`` (their count)."""
        rb = self.row_bytes
        m = np.concatenate(([False], mask, [False])).view(np.int8)
        edges = np.flatnonzero(m[1:] != m[:-1]) + row0
        starts, stops = edges[0::2], edges[1::2]
        if int((stops - starts).sum()) != len(out):
            raise RuntimeError("calibkit internal error: the rows to read do not fill their buffer")
        if len(starts) == 0 or rb == 0:
            return
        lengths = (stops - starts) * rb
        dest = np.cumsum(lengths) - lengths
        gaps = (starts[1:] - stops[:-1]) * rb
        merge = gaps <= _MERGE_BYTES
        if _preadv is None or not merge.any():
            view = memoryview(out).cast("B")
            for a, at, n in zip(starts.tolist(), dest.tolist(), lengths.tolist()):
                self._read_into([view[at:at + n]], a)
            return
        scratch = np.empty(int(gaps[merge].max()), dtype=np.uint8)
        n = len(starts)
        # (address, length) of each run, then of each merged gap between runs (all gaps go to one scratch buffer)
        iov = np.empty((2 * n - 1, 2), dtype=np.uint64)
        iov[0::2, 0] = np.uint64(out.ctypes.data) + dest.astype(np.uint64)
        iov[0::2, 1] = lengths
        iov[1::2, 0] = np.uint64(scratch.ctypes.data)
        iov[1::2, 1] = gaps
        keep = np.ones(2 * n - 1, dtype=bool)
        keep[1::2] = merge
        iov = np.ascontiguousarray(iov[keep])
        first = np.concatenate(([0], np.flatnonzero(~merge) + 1))  # the first run of each group
        last = np.append(first[1:], n) - 1
        at = (np.arange(n) + np.concatenate(([0], np.cumsum(merge))))[first]  # its row in `iov`
        to = np.append(at[1:], len(iov))
        span = (stops[last] - starts[first]) * rb
        base, fd = iov.ctypes.data, self._f.fileno()
        for i, j, a, nbytes in zip(at.tolist(), to.tolist(), starts[first].tolist(), span.tolist()):
            if j - i > _IOV_MAX or _preadv(fd, base + 16 * i, j - i, self.offset + a * rb) != nbytes:
                self._read_iov(iov[i:j].copy(), a)  # a long group, a short read or an error: the careful way

    def _read_iov(self, iov, a):
        """Fill the (address, length) iovecs ``iov`` (uint64 (n, 2), consumed) from the file from row ``a``."""
        pos = self.offset + a * self.row_bytes
        i, n = 0, len(iov)
        while i < n:
            count = min(_IOV_MAX, n - i)
            got = _preadv(self._f.fileno(), iov[i:].ctypes.data, count, pos)
            if got < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                raise DumpError(f"{self.name}: cannot read it ({os.strerror(err)})")
            ends = np.cumsum(iov[i:i + count, 1])
            if got == int(ends[-1]):
                pos += got
                i += count
                continue
            if got == 0:
                raise DumpError(f"{self.name}: the file ended early (truncated?)")
            pos += got  # a short read: go on from the first byte not read
            full = int(np.searchsorted(ends, got, side="right"))
            rest = got - (int(ends[full - 1]) if full else 0)
            i += full
            iov[i, 0] += np.uint64(rest)
            iov[i, 1] -= np.uint64(rest)

    def _read_into(self, views, a):
        """Fill the byte buffers ``views`` (a list, consumed) from the file, end to end from row ``a``."""
        pos = self.offset + a * self.row_bytes
        i = 0
        try:
            while i < len(views):
                group = views[i:i + _IOV_MAX]
                if _HAVE_PREADV:
                    got = os.preadv(self._f.fileno(), group, pos)
                else:
                    with self._lock:
                        self._f.seek(pos)
                        got = self._f.readinto(group[0])
                    group = group[:1]
                if got == sum(map(len, group)):
                    pos += got
                    i += len(group)
                    continue
                if not got:
                    raise DumpError(f"{self.name}: the file ended early (truncated?)")
                pos += got  # a short read: go on from the first byte not read
                while got >= len(views[i]):
                    got -= len(views[i])
                    i += 1
                views[i] = views[i][got:]
        except OSError as exc:
            raise DumpError(f"{self.name}: cannot read it ({exc.strerror or _one_line(exc)})") from None


@dataclass
class Dump:
    """Scores and labels of one evaluation dump; arrays stay on disk until a chunk is read."""

    scores: Any               #: (N, K) or (N,) array-like; slicing a row range gives an ndarray
    labels: Any               #: (N,) integer array-like, or None
    from_logits: bool         #: whether the scores are logits
    name: str                 #: where it came from, for messages
    shards: list = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.scores.shape[1]) if len(self.scores.shape) == 2 else 2

    @property
    def row_bytes(self) -> int:
        width = self.scores.shape[1] if len(self.scores.shape) == 2 else 1
        return int(width * np.dtype(self.scores.dtype).itemsize)

    def chunk_rows(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        return max(1, int(chunk_bytes) // max(1, self.row_bytes))

    def _file(self):
        """A :class:`_RowFile` over the scores when they are a C-ordered array in a file (an ``.npy`` or a
        stored ``.npz`` member), read with plain positioned reads; None otherwise."""
        s = self.scores
        if isinstance(s, np.memmap) and s.flags.c_contiguous and getattr(s, "filename", None):
            return _RowFile(s, self.name)
        return None

    def rows(self, a: int, b: int) -> np.ndarray:
        """Scores of rows [a, b) as an ndarray.

        A C-ordered memory-mapped array is read with plain file reads rather
        than through the mapping: pages of a mapping stay in the process's
        resident set, reads into a fresh buffer do not, so reading a dump
        larger than memory keeps the resident set at about one chunk.
        """
        f = self._file()
        if f is None:
            return np.asarray(self.scores[a:b])
        with f:
            return f.read(a, b)

    def _need_labels(self):
        if self.labels is None:
            raise DumpError(f"{self.name}: no labels (give them with labels=... / --labels)")

    def _blocks(self, ranges, block, prefetch):
        """``block(f, a, b)`` for each range, ``f`` the open :class:`_RowFile` (or None); with ``prefetch`` the
        next block is read in a background thread while the caller works on this one."""
        f = self._file()
        with f if f is not None else contextlib.nullcontext():
            if f is not None and ranges:
                f.advise_sequential(ranges[0][0], ranges[-1][1])
            if not prefetch or len(ranges) < 2:
                for a, b in ranges:
                    yield block(f, a, b)
                return

            def ahead(j):
                if f is not None and j + 1 < len(ranges):
                    f.advise_willneed(*ranges[j + 1])  # the block after: the OS reads it ahead while we copy this one
                return block(f, *ranges[j])

            with ThreadPoolExecutor(1, thread_name_prefix="calibkit-read") as pool:
                pending = pool.submit(ahead, 0)
                for j in range(len(ranges)):
                    done = pending.result()
                    if j + 1 < len(ranges):
                        pending = pool.submit(ahead, j + 1)
                    yield done
                    del done

    def _ranges(self, chunk_rows, start, stop):
        chunk_rows = chunk_rows or self.chunk_rows()
        stop = self.n_rows if stop is None else stop
        return [(a, min(stop, a + chunk_rows)) for a in range(start, stop, chunk_rows)]

    def chunks(self, chunk_rows: int | None = None, *, start: int = 0, stop: int | None = None,
               prefetch: bool = True,
               prepare: Callable[[int, np.ndarray, np.ndarray], Any] | None = None) -> Iterator[Any]:
        """Yield ``(first_row, scores, labels)`` for consecutive row blocks of ``chunk_rows`` rows.

        With ``prefetch`` (the default), a background thread reads the next
        block while the caller works on this one (file reads and calibkit's
        kernels both release the GIL), so reading and computing overlap; at
        most three blocks are alive at once. ``prepare(first_row, scores,
        labels)``, if given, runs in that thread on each block and its result
        is yielded instead (e.g. splitting off validation rows). A file is
        read sequentially with one open descriptor, the OS told to read ahead.
        """
        self._need_labels()

        def block(f, a, b):
            s = self.rows(a, b) if f is None else f.read(a, b)
            y = np.asarray(self.labels[a:b])
            return (a, s, y) if prepare is None else prepare(a, s, y)

        yield from self._blocks(self._ranges(chunk_rows, start, stop), block, prefetch)

    def split_chunks(self, mask: ArrayLike, chunk_rows: int | None = None, *, held: bool = True,
                     prefetch: bool = True) -> Iterator[SplitBlock]:
        """Yield the blocks of :meth:`chunks`, each split by the bool (N,) ``mask``: :class:`SplitBlock`
        ``(first_row, n_rows, held_mask, scores, labels, held_scores, held_labels)`` where ``scores`` and
        ``labels`` are the block's rows where ``mask`` is False and ``held_*`` those where it is True (None
        when ``held`` is False: the held-out rows are then read but not kept).

        A file is read straight into the two parts (one positioned scatter read per block, ``os.preadv``):
        no copy of the block is made to split it.
        """
        self._need_labels()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError(f"mask must have shape ({self.n_rows},), got {mask.shape}")

        def block(f, a, b):
            h = mask[a:b]
            y = np.asarray(self.labels[a:b])
            kept = ~h
            if f is not None and _preadv is not None:
                s, hs = f.read_split(a, b, h, held)
            else:
                whole = self.rows(a, b) if f is None else f.read(a, b)
                s, hs = whole[kept], (whole[h] if held else None)
            return SplitBlock(a, b - a, h, s, y[kept], hs, y[h] if held else None)

        yield from self._blocks(self._ranges(chunk_rows, 0, None), block, prefetch)

    def take(self, mask: ArrayLike, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The rows where ``mask`` (bool, (N,)) is True, gathered chunk by chunk into one array (a file's rows are
        read straight into it, with no block in between, in parts read at once by up to
        :func:`calibkit.get_num_threads` threads)."""
        self._need_labels()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError(f"mask must have shape ({self.n_rows},), got {mask.shape}")
        n = int(mask.sum())
        if n == 0:
            raise DumpError(f"{self.name}: the selection holds no rows")
        scores = np.empty((n,) + tuple(self.scores.shape[1:]), dtype=self.scores.dtype)
        labels = np.empty(n, dtype=np.asarray(self.labels[:1]).dtype)
        at = 0
        f = self._file()
        if f is not None and scores.nbytes:
            # straight from the file into `scores`: the selected rows only, one read per run of them
            with f:
                if n == self.n_rows:
                    f.advise_sequential(0, n)
                f.read_runs(mask, scores, _backend.get_num_threads())
            labels[:] = np.asarray(self.labels[:])[mask] if n < self.n_rows else np.asarray(self.labels[:n])
            return scores, labels
        for blk in self.split_chunks(~mask, chunk_rows, held=False):
            k = len(blk.labels)
            scores[at:at + k] = blk.scores
            labels[at:at + k] = blk.labels
            at += k
        return scores, labels


@dataclass
class DenseDump(Dump):
    """A dump of dense predictions: scores ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)``
    (``axis=-1``) and labels ``(N, *spatial)``, every pixel (voxel) a row, pixels labelled ``ignore_index`` or
    where ``mask`` is False left out.

    Its rows are the kept pixels in the order of ``np.moveaxis(scores, axis, -1).reshape(-1, K)`` with the
    ignored ones removed, so :meth:`chunks`, :meth:`split_chunks` and :meth:`take` give what a :class:`Dump` of
    that explicitly flattened copy gives, in blocks of at most ``chunk_rows`` rows; ``n_rows`` counts the kept
    pixels. The blocks are the pieces of :func:`calibkit._dense.as_dense`: strided views of the memory-mapped
    scores (the class axis read with its stride, no transposed or flattened copy), or, for a block with
    ignored pixels, a copy of that block's kept rows only. A compressed ``.npz`` member is inflated one image at
    a time. Errors name the pixel in the dump's own coordinates (``labels[2, 7, 11] = 9 is out of range ...``).
    """

    axis: int = 1                 #: the class axis as given (1 or -1)
    mask: Any = None              #: bool ``(N, *spatial)`` array-like, True where a pixel is counted, or None
    ignore_index: int | None = None
    labels_name: str | None = None  #: where the labels came from, for messages (None: the dump itself)

    def __post_init__(self):
        from ._dense import check_class_axis

        self._axis = check_class_axis(self.axis, len(self.scores.shape))
        self._kept = None  # kept pixels per image, computed on first use (a pass over the labels / mask)

    @property
    def class_axis(self) -> int:
        """The class axis as a non-negative index into ``scores.shape``."""
        return self._axis

    @property
    def n_classes(self) -> int:
        return int(self.scores.shape[self._axis])

    @property
    def pixel_shape(self) -> tuple:
        """``(N, *spatial)``: the shape of the labels."""
        s = tuple(int(n) for n in self.scores.shape)
        return s[:self._axis] + s[self._axis + 1:]

    @property
    def n_pixels(self) -> int:
        """All pixels, ignored ones included: N * prod(spatial)."""
        return math.prod(self.pixel_shape)

    @property
    def n_rows(self) -> int:
        """The pixels that are counted (not ``ignore_index``, not masked out)."""
        return int(self.kept_per_image().sum())

    @property
    def row_bytes(self) -> int:
        return int(self.n_classes * np.dtype(self.scores.dtype).itemsize)

    @property
    def filtered(self) -> bool:
        return self.mask is not None or (self.ignore_index is not None and self.labels is not None)

    def _keep_block(self, a, b) -> np.ndarray | None:
        """Bool (b - a, *spatial) of images [a, b): the kept pixels (None when nothing is left out)."""
        keep = None
        if self.mask is not None:
            keep = np.asarray(self.mask[a:b]).astype(bool, copy=False)
        if self.ignore_index is not None and self.labels is not None:
            k = np.asarray(self.labels[a:b]) != self.ignore_index
            keep = k if keep is None else keep & k
        return keep

    def _image_keep(self, i) -> np.ndarray | None:
        """Bool (*spatial) of image ``i``: the kept pixels (None when nothing is left out)."""
        keep = self._keep_block(i, i + 1)
        return None if keep is None else keep[0]

    def kept_per_image(self) -> np.ndarray:
        """int64 (N,): the kept pixels of each image (one pass over the labels / mask, in blocks of about
        2^20 pixels)."""
        if self._kept is None:
            n, per = self.pixel_shape[0], math.prod(self.pixel_shape[1:])
            if not self.filtered:
                self._kept = np.full(n, per, dtype=np.int64)
            else:
                step = max(1, (1 << 20) // max(per, 1))
                parts = []
                for a in range(0, n, step):
                    keep = self._keep_block(a, min(n, a + step))
                    parts.append(np.count_nonzero(keep.reshape(keep.shape[0], -1), axis=1))
                self._kept = np.concatenate(parts).astype(np.int64)
        return self._kept

    def _in_memory_arrays(self) -> bool:
        return all(a is None or isinstance(a, np.ndarray) for a in (self.scores, self.labels, self.mask))

    def _dense_groups(self):
        """``(first_image, Dense)``: the whole dump as one adapter when every array is an ndarray (a memory map),
        else one image at a time (a compressed member is inflated image by image)."""
        from ._dense import as_dense

        kw = dict(axis=self.axis, ignore_index=self.ignore_index, name="scores")
        if self._in_memory_arrays():
            yield 0, as_dense(self.scores, self.labels, mask=self.mask, **kw)
            return
        for i in range(self.pixel_shape[0]):
            yield i, as_dense(np.asarray(self.scores[i:i + 1]),
                              None if self.labels is None else np.asarray(self.labels[i:i + 1]),
                              mask=None if self.mask is None else np.asarray(self.mask[i:i + 1]), **kw)

    def _pieces(self, chunk_rows):
        """``(first_row, scores (m, K), labels (m,) int64)`` of every piece, rows numbered among the kept pixels."""
        rows = chunk_rows or self.chunk_rows()
        kept = self.kept_per_image()
        before = np.concatenate(([0], np.cumsum(kept)))
        for first_image, dense in self._dense_groups():
            base = int(before[first_image])
            for p in dense.pieces(rows):
                yield base + p.offset, p.scores, p.labels

    def pixel(self, row: int) -> tuple:
        """The position ``(n, *spatial)`` of kept row ``row`` in the labels' coordinates."""
        kept = self.kept_per_image()
        before = np.cumsum(kept)
        i = int(np.searchsorted(before, row, side="right"))
        r = row - (int(before[i - 1]) if i else 0)
        keep = self._image_keep(i)
        p = r if keep is None else int(np.flatnonzero(keep.reshape(-1))[r])
        return (i,) + tuple(int(j) for j in np.unravel_index(p, self.pixel_shape[1:]))

    def chunks(self, chunk_rows: int | None = None, *, start: int = 0, stop: int | None = None,
               prefetch: bool = True,
               prepare: Callable[[int, np.ndarray, np.ndarray], Any] | None = None) -> Iterator[Any]:
        """``(first_row, scores, labels)`` of consecutive blocks of at most ``chunk_rows`` kept pixels (rows
        [start, stop) only, when given). ``prefetch`` is accepted for the signature of :meth:`Dump.chunks`: the
        blocks are views of the memory map, read by the kernels as they go."""
        self._need_labels()
        stop = self.n_rows if stop is None else stop
        for a, s, y in self._pieces(chunk_rows):
            lo, hi = max(a, start), min(a + len(s), stop)
            if hi <= lo:
                if a >= stop:
                    return
                continue
            if (lo, hi) != (a, a + len(s)):
                s, y = s[lo - a:hi - a], y[lo - a:hi - a]
            yield (lo, s, y) if prepare is None else prepare(lo, s, y)

    def split_chunks(self, mask: ArrayLike, chunk_rows: int | None = None, *, held: bool = True,
                     prefetch: bool = True) -> Iterator[SplitBlock]:
        """The blocks of :meth:`chunks`, each split by the bool (n_rows,) ``mask`` over the kept pixels (see
        :meth:`Dump.split_chunks`); the two parts of a block are gathered copies of its rows."""
        self._need_labels()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError(f"mask must have shape ({self.n_rows},) (one per counted pixel), got {mask.shape}")
        for a, s, y in self._pieces(chunk_rows):
            h = mask[a:a + len(y)]
            kept = ~h
            yield SplitBlock(a, len(y), h, s[kept], y[kept], s[h] if held else None, y[h] if held else None)

    def take(self, mask: ArrayLike, chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The kept pixels where ``mask`` (bool, (n_rows,)) is True, gathered into one (n, K) array and their
        (n,) int64 labels."""
        self._need_labels()
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.n_rows,):
            raise ValueError(f"mask must have shape ({self.n_rows},) (one per counted pixel), got {mask.shape}")
        n = int(mask.sum())
        if n == 0:
            raise DumpError(f"{self.name}: the selection holds no rows")
        scores = np.empty((n, self.n_classes), dtype=self.scores.dtype)
        labels = np.empty(n, dtype=np.int64)
        at = 0
        for a, s, y in self._pieces(chunk_rows):
            sel = mask[a:a + len(y)]
            k = int(np.count_nonzero(sel))
            if k:
                scores[at:at + k] = s[sel]
                labels[at:at + k] = y[sel]
                at += k
        return scores, labels

    def rows(self, a: int, b: int) -> np.ndarray:
        """Scores of kept rows [a, b) as an (b - a, K) ndarray."""
        parts = []
        for o, s, _ in self._pieces(None):
            if o >= b:
                break
            if o + len(s) > a:
                parts.append(np.asarray(s[max(a, o) - o:min(b, o + len(s)) - o]))
        if not parts:
            return np.empty((0, self.n_classes), dtype=self.scores.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def first_image(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(scores, labels, mask)`` of image 0 as arrays with a leading axis of 1 (a view of a memory map, or
        that one image inflated)."""
        s = self.scores[0:1]
        y = None if self.labels is None else np.asarray(self.labels[0:1])
        m = None if self.mask is None else np.asarray(self.mask[0:1])
        return (s if isinstance(s, np.ndarray) else np.asarray(s)), y, m

    def describe(self) -> dict:
        """JSON-safe facts of the dense layout: shape, class axis, pixels, ignored pixels, ignore_index, mask."""
        return {"shape": [int(n) for n in self.scores.shape], "class_axis": int(self.axis),
                "pixels": self.n_pixels, "ignored": self.n_pixels - self.n_rows,
                "ignore_index": self.ignore_index, "mask": self.mask is not None}


class _ShardRows:
    """The rows of several arrays, end to end, as one read-only array (slices only)."""

    def __init__(self, parts):
        self.parts = parts
        self.offsets = np.cumsum([0] + [p.shape[0] for p in parts])
        self.shape = (int(self.offsets[-1]),) + tuple(parts[0].shape[1:])
        self.dtype = parts[0].dtype
        self.ndim = parts[0].ndim

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("sharded dumps are read by contiguous row ranges")
        a, b, _ = key.indices(self.shape[0])
        out = []
        for j, p in enumerate(self.parts):
            lo, hi = self.offsets[j], self.offsets[j + 1]
            if hi <= a or lo >= b:
                continue
            out.append(np.asarray(p[max(a, lo) - lo:min(b, hi) - lo]))
        if not out:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)


class _ArrowRows:
    """A list (or float) column of a Parquet / Arrow IPC file as a read-only (N, K) or (N,) array (slices only)."""

    def __init__(self, path, column):
        import pyarrow as pa

        self.path, self.column = path, column
        self._pa = pa
        self._ipc = None
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            self._file = pq.ParquetFile(path)
            meta = self._file.metadata
            counts = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            schema = self._file.schema_arrow
        else:
            import pyarrow.ipc as ipc

            self._ipc = ipc.open_file(pa.memory_map(str(path), "r"))
            counts = [self._ipc.get_batch(g).num_rows for g in range(self._ipc.num_record_batches)]
            schema = self._ipc.schema
        self.offsets = np.cumsum([0] + counts)
        field_type = schema.field(column).type
        if pa.types.is_fixed_size_list(field_type) or pa.types.is_list(field_type) \
                or pa.types.is_large_list(field_type):
            value_type = field_type.value_type
            first = self._group(0) if counts and counts[0] else None
            k = len(first[0]) if first is not None and len(first) else 0
            if pa.types.is_fixed_size_list(field_type):
                k = field_type.list_size
            self.shape = (int(self.offsets[-1]), int(k))
        else:
            value_type = field_type
            self.shape = (int(self.offsets[-1]),)
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
            raise DumpError(f"{path}: column {column!r} holds {field_type}, not numbers or lists of numbers")
        self.dtype = np.dtype(value_type.to_pandas_dtype())
        self.ndim = len(self.shape)

    def _group(self, g):
        if self._ipc is not None:
            col = self._ipc.get_batch(g).column(self.column)
        else:
            col = self._file.read_row_group(g, columns=[self.column]).column(0)
            col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
        return col

    def _to_numpy(self, col):
        pa = self._pa
        if col.null_count:
            raise DumpError(f"{self.path}: column {self.column!r} has missing values")
        if len(self.shape) == 1:
            return col.to_numpy(zero_copy_only=False)
        if pa.types.is_fixed_size_list(col.type):
            return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), self.shape[1])
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        if len(lengths) and (lengths != self.shape[1]).any():
            bad = int(np.argmax(lengths != self.shape[1]))
            raise DumpError(f"{self.path}: row {bad} of column {self.column!r} has {lengths[bad]} values, "
                            f"the first row {self.shape[1]}")
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), self.shape[1])

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("Parquet / Arrow dumps are read by contiguous row ranges")
        a, b, _ = key.indices(self.shape[0])
        out = []
        for g in range(len(self.offsets) - 1):
            lo, hi = self.offsets[g], self.offsets[g + 1]
            if hi <= a or lo >= b:
                continue
            out.append(self._to_numpy(self._group(g))[max(a, lo) - lo:min(b, hi) - lo])
        if not out:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)


def _open_arrow(p, *, labels, scores_key, labels_key, from_logits):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DumpError(f"{p}: reading Parquet / Arrow needs pyarrow: pip install 'calibkit[parquet]'") from None
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.ParquetFile(p).schema_arrow.names
        else:
            import pyarrow as pa
            import pyarrow.ipc as ipc

            names = ipc.open_file(pa.memory_map(str(p), "r")).schema.names
    except DumpError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types
        raise DumpError(f"{p}: cannot read it as {p.suffix[1:]} ({exc}); is the file truncated?") from None
    cols = {n: n for n in names}
    skey = _choose(cols, SCORE_NAMES, "", "scores", p, scores_key)
    scores = _ArrowRows(p, skey)
    if labels is not None:
        y = _load_npy(labels) if isinstance(labels, (str, os.PathLike)) else np.asarray(labels)
    else:
        lkey = _choose(cols, LABEL_NAMES, "", "labels", p, labels_key)
        y = _ArrowRows(p, lkey)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DumpError(f"{p}: labels column {lkey!r} must hold integers")
    return Dump(scores, y, _kind(skey, from_logits), f"{p}:{skey}")


def _kind(name, from_logits):
    return ("logit" in name.lower()) if from_logits is None else bool(from_logits)


def open_dump(path: StrPath, *, labels: StrPath | ArrayLike | None = None, split: str | None = None,
              scores_key: str | None = None, labels_key: str | None = None,
              from_logits: bool | None = None, axis: int = 1, ignore_index: int | None = None,
              mask: StrPath | ArrayLike | None = None) -> Dump:
    """Open an evaluation dump without loading it (see the module docstring for the layouts).

    Scores with spatial axes, ``(N, K, *spatial)`` (a segmentation model's (N, K, H, W), float16 is common) or
    channel-last ``(N, *spatial, K)`` with ``axis=-1``, and labels ``(N, *spatial)``, open as a :class:`DenseDump`:
    every pixel is a row, the class axis is read with its stride where the array lies in the file (no
    transposed or flattened copy), and the pixels labelled ``ignore_index`` or where ``mask`` is False are
    left out. Its rows are those of ``np.moveaxis(scores, axis, -1).reshape(-1, K)`` without the ignored
    pixels, so every consumer of a dump (``calibkit report``, its validation split, the calibrators) sees what
    it would see on that explicitly flattened copy. ``ignore_index`` / ``mask`` on (N, K) scores take the same
    path.

    Parameters
    ----------
    path : str or path-like
        ``.npy`` scores, ``.npz`` file or a directory of shards.
    labels : str, path-like or array-like, optional
        The labels when they are not inside the dump (a ``.npy`` file or an array).
    split : str, optional
        For ``.npz`` files with ``val_*`` / ``test_*`` arrays: which split (default
        ``"test"`` when the file has splits).
    scores_key, labels_key : str, optional
        Array names inside an ``.npz`` file.
    from_logits : bool, optional
        Whether the scores are logits; by default, when the array's (or file's)
        name contains "logit".
    axis : {1, -1}
        The class axis of scores with spatial axes: 1 for ``(N, K, *spatial)`` (PyTorch's layout, the default),
        -1 for channel-last ``(N, *spatial, K)``.
    ignore_index : int, optional
        A label whose pixels (rows) are never counted (e.g. 255).
    mask : str, path-like or bool array-like, optional
        Of the labels' shape (a ``.npy`` file or an array): True where a pixel is counted.

    Examples
    --------
    >>> import calibkit
    >>> from calibkit import io
    >>> dump = io.open_dump(calibkit.datasets.example_path(), split="test")
    >>> dump.n_rows, dump.n_classes, dump.from_logits
    (10000, 10, True)
    >>> sum(len(labels) for first_row, scores, labels in dump.chunks(4096))
    10000
    """
    p = pathlib.Path(path)
    if p.is_dir() and (ignore_index is not None or mask is not None):
        raise DumpError(f"{p}: ignore_index / mask are read with one .npy or .npz dump (scores (N, K, *spatial)), "
                        "not a directory of shards")
    if p.is_dir():
        return _open_shards(p, labels=labels, split=split, scores_key=scores_key, labels_key=labels_key,
                            from_logits=from_logits)
    if not p.exists():
        raise DumpError(f"{p}: no such file or directory")
    labels_name = str(p)
    if p.suffix == ".npy":
        scores = _load_npy(p)
        y = None
        if labels is not None:
            y = _load_npy(labels) if isinstance(labels, (str, os.PathLike)) else np.asarray(labels)
        dump = Dump(scores, y, _kind(p.name, from_logits), str(p))
    elif p.suffix == ".npz":
        arrays = _npz_arrays(p)
        splits = _splits_of(arrays)
        prefix = ""
        if split is not None or (splits and not any(n in arrays for n in SCORE_NAMES)):
            split = split or ("test" if "test" in splits else splits[0])
            if split not in splits:
                raise DumpError(f"{p}: no split {split!r} (it has {splits or 'no splits'})")
            prefix = split + "_"
        skey = _choose(arrays, SCORE_NAMES, prefix, "scores", p, scores_key)
        y = None
        if labels is not None:
            y = _load_npy(labels) if isinstance(labels, (str, os.PathLike)) else np.asarray(labels)
        else:
            lkey = _choose(arrays, LABEL_NAMES, prefix, "labels", p, labels_key)
            y = _member(arrays, lkey)
            labels_name = f"{p}:{lkey}"
        dump = Dump(_member(arrays, skey), y, _kind(skey, from_logits), f"{p}:{skey}")
    elif p.suffix in (".parquet", ".arrow", ".feather"):
        dump = _open_arrow(p, labels=labels, scores_key=scores_key, labels_key=labels_key, from_logits=from_logits)
    else:
        raise DumpError(f"{p}: unknown dump format {p.suffix!r} (use .npy, .npz, .parquet, .arrow or a directory "
                        "of them)")
    if len(dump.scores.shape) > 2 or ignore_index is not None or mask is not None:
        if labels is not None:
            labels_name = str(labels) if isinstance(labels, (str, os.PathLike)) else "labels"
        return _dense_dump(dump, axis, ignore_index, mask, labels_name)
    _check(dump)
    return dump


def _dense_dump(dump, axis, ignore_index, mask, labels_name):
    """The :class:`DenseDump` of ``dump`` (scores ``(N, K, *spatial)`` or (N, K)), every shape and dtype checked
    (one DumpError naming the file), and the clear error of :meth:`calibkit._dense.Dense.check_some_kept` when
    every pixel is ignored."""
    from ._dense import as_dense, check_class_axis

    s, name = dump.scores, dump.name
    shape = tuple(int(n) for n in s.shape)
    if len(shape) < 2 or 0 in shape:
        raise DumpError(f"{name}: scores must have shape (N, K, *spatial) or (N, K) with ignore_index / mask, got "
                        f"{shape}")
    if np.dtype(s.dtype).kind != "f":
        raise DumpError(f"{name}: dense scores must be floats (float16, float32 or float64), got dtype {s.dtype}")
    try:
        ax = check_class_axis(axis, len(shape))
    except (TypeError, ValueError) as exc:
        raise DumpError(f"{name}: {_one_line(exc)}") from None
    if shape[ax] < 2:
        raise DumpError(f"{name}: scores of shape {shape} have {shape[ax]} class on axis {axis}; at least 2 are "
                        "needed (is the class axis right? give axis=1 or axis=-1)")
    want = shape[:ax] + shape[ax + 1:]
    where = "(N, K, *spatial)" if ax == 1 else "(N, *spatial, K)"

    def hint(got):
        other = shape[:-1] if ax == 1 else shape[:1] + shape[2:]
        if len(shape) > 2 and got == other:
            flag = "-1" if ax == 1 else "1"
            return f"; they fit scores with classes on axis {flag}: give axis={flag}"
        return ""

    y = dump.labels
    if y is not None:
        got = tuple(int(n) for n in y.shape)
        if got != want:
            raise DumpError(f"{labels_name}: labels have shape {got}, but scores {name} of shape {shape} {where} "
                            f"need labels of shape {want}{hint(got)}")
        if np.dtype(y.dtype).kind not in "iub":
            raise DumpError(f"{labels_name}: labels must be integers, got dtype {y.dtype}")
    m, mask_name = mask, "mask"
    if mask is not None:
        if isinstance(mask, (str, os.PathLike)):
            mask_name = str(mask)
            m = _load_npy(mask)
        elif not isinstance(mask, np.ndarray):
            m = np.asarray(mask)
        got = tuple(int(n) for n in m.shape)
        if got != want:
            raise DumpError(f"{mask_name}: mask has shape {got}, but scores {name} of shape {shape} {where} need a "
                            f"mask of shape {want}{hint(got)}")
        if m.dtype != bool:
            raise DumpError(f"{mask_name}: mask must be a boolean array (True where a pixel is counted), got dtype "
                            f"{m.dtype}")
    if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_))
                                     or not isinstance(ignore_index, (int, np.integer))):
        raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, got {type(ignore_index).__name__}")
    out = DenseDump(s, y, dump.from_logits, name, axis=axis, mask=m,
                    ignore_index=None if ignore_index is None else int(ignore_index), labels_name=labels_name)
    if out.n_rows == 0:
        first = as_dense(np.asarray(s[0:1]) if not isinstance(s, np.ndarray) else s[0:1],
                         None if y is None else np.asarray(y[0:1]), axis=axis, ignore_index=out.ignore_index,
                         mask=None if m is None else np.asarray(m[0:1]))
        try:
            first.check_some_kept()
        except ValueError as exc:
            raise DumpError(f"{labels_name if y is not None else name}: {_one_line(exc)}") from None
    return out


def _check(dump):
    s = dump.scores
    if len(s.shape) not in (1, 2) or s.shape[0] == 0:
        raise DumpError(f"{dump.name}: scores must have shape (N, K) or (N,) with N >= 1, got {tuple(s.shape)}")
    if np.dtype(s.dtype).kind not in "fiu":
        raise DumpError(f"{dump.name}: scores must be numbers, got dtype {s.dtype}")
    if dump.labels is not None:
        y = dump.labels
        if len(y.shape) != 1 or np.dtype(y.dtype).kind not in "iub":
            raise DumpError(f"{dump.name}: labels must be integers of shape (N,), got {y.dtype} {tuple(y.shape)}")
        if y.shape[0] != s.shape[0]:
            raise DumpError(f"{dump.name}: {y.shape[0]} labels for {s.shape[0]} rows of scores")


def _open_shards(directory, **kw):
    files = sorted(f for f in directory.iterdir()
                   if f.suffix in (".npy", ".npz", ".parquet", ".arrow", ".feather") and not f.name.startswith("."))
    if kw.get("labels") is None:
        files = [f for f in files if f.suffix != ".npy"]
    if not files:
        raise DumpError(f"{directory}: no .npz / .parquet / .arrow shards (or .npy shards with labels=) in the "
                        "directory")
    shards = [open_dump(f, **kw) for f in files]
    for s in shards:
        if isinstance(s, DenseDump):
            raise DumpError(f"{directory}: shard {s.name} holds dense scores {tuple(s.scores.shape)}; dense dumps are "
                            "read from one .npy or .npz file (memory-mapped), not a directory of shards")
    first = shards[0]
    for s in shards[1:]:
        if s.scores.shape[1:] != first.scores.shape[1:] or s.scores.dtype != first.scores.dtype \
                or s.from_logits != first.from_logits:
            raise DumpError(f"{directory}: shard {s.name} has scores {s.scores.dtype} {tuple(s.scores.shape)} "
                            f"({'logits' if s.from_logits else 'probabilities'}) but {first.name} has "
                            f"{first.scores.dtype} {tuple(first.scores.shape)} "
                            f"({'logits' if first.from_logits else 'probabilities'})")
        if (s.labels is None) != (first.labels is None):
            raise DumpError(f"{directory}: some shards have labels and some do not")
    labels = None if first.labels is None else _ShardRows([s.labels for s in shards])
    return Dump(_ShardRows([s.scores for s in shards]), labels, first.from_logits, f"{directory}/ ({len(shards)} shards)",
                shards=shards)


def located(exc: BadElementError, dump: Dump, first_row: int = 0, skipped: ArrayLike | None = None) -> DumpError:
    """A :class:`~calibkit._validation.BadElementError` about a row of a block of ``dump`` (the block starts
    at ``first_row``; the rows where the bool array ``skipped`` is True were left out of it) as a DumpError
    naming the row in the whole dump: ``logits.npy: labels[523417] = 12 is out of range ...``."""
    row = exc.row if skipped is None else int(np.flatnonzero(~np.asarray(skipped, dtype=bool))[exc.row])
    if isinstance(dump, DenseDump):
        return _located_pixel(exc, dump, first_row + row)
    return DumpError(f"{dump.name}: {exc.at_row(first_row + row)}")


def _located_pixel(exc, dump, row):
    """The error about kept row ``row`` of a :class:`DenseDump`, the element named at its pixel
    (``labels.npy: labels[2, 7, 11] = 9 is out of range ...``, ``scores.npy: scores[0, :, 3, 5] = nan ...``),
    the file being that of the labels for a label, else that of the scores."""
    from ._validation import LABEL_OUT_OF_RANGE

    pos = dump.pixel(row)
    code, r, col, value = exc.status
    msg = str(exc)
    name = exc._context.get("scores_name", "scores")
    for prefix in (f"{name}[{r}, {col}]", f"{name}[{r}]"):
        if msg.startswith(prefix):
            at = [str(i) for i in pos]
            at.insert(dump.class_axis, str(col) if col >= 0 else ":")
            return DumpError(f"{dump.name}: {name}[{', '.join(at)}]{msg[len(prefix):]}")
    for arg in ("labels", "sample_weight"):
        prefix = f"{arg}[{r}]"
        if msg.startswith(prefix):
            where = dump.labels_name if arg == "labels" and dump.labels_name else dump.name
            advice = ""
            if arg == "labels" and dump.ignore_index is None and int(code) == LABEL_OUT_OF_RANGE:
                advice = (f"; if {int(value)} marks pixels without ground truth, leave them out with "
                          f"ignore_index={int(value)}")
            return DumpError(f"{where}: {arg}[{', '.join(map(str, pos))}]{msg[len(prefix):]}{advice}")
    return DumpError(f"{dump.name}: {msg} (pixel {pos})")


def split_mask(n_rows: int, fraction: float, seed: int = 0) -> BoolArray:
    """A deterministic pseudo-random row split: True for about ``fraction`` of the rows.

    Row i is chosen when splitmix64(i + seed * 2^32) / 2^64 < fraction, so the
    split does not depend on the order the dump was written in (sorted by class,
    say) and is the same on every machine.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction!r}")
    i = np.arange(n_rows, dtype=np.uint64) + np.uint64((seed & 0xFFFFFFFF) << 32)
    with np.errstate(over="ignore"):
        z = i + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53 < fraction


__all__ = ["DenseDump", "Dump", "DumpError", "SplitBlock", "located", "open_dump", "split_mask", "splits"]
