"""Dense predictions: scores of shape (N, K, *spatial) read in place as rows.

A segmentation model scores every pixel: its output is (N, K, H, W) (class
axis second, PyTorch's layout) or (N, H, W, K) (channel-last), with labels of
shape (N, H, W) in which some pixels carry an ignore label (255) or are masked
out. Every pixel is a row of K scores. This module is the one place that turns
such an array into the 2-D row views the kernels read, without a transposed or
flattened copy of the scores:

* the class axis is moved last in a *view* (``np.moveaxis``), and as many
  trailing pixel axes as the strides of every array allow (scores, labels,
  mask, weights, ``out``) are merged into one row axis of a strided view; the
  remaining leading pixel axes (the image axis for class-second input, any
  axis that a slice made non-contiguous) are iterated over;
* each row range is cut into pieces of at most ``piece_rows`` rows, so the
  only per-pixel memory ever allocated (labels converted to int64, the kept
  rows of a piece with ignored pixels, float64 weights) is O(piece_rows · K),
  independent of N · H · W;
* pixels whose label is ``ignore_index`` or whose ``mask`` is False are left
  out: a piece with some of them is gathered into a (kept, K) copy of that
  piece only, a piece with none of them is passed as the view itself.

The rows come in the order of ``np.moveaxis(scores, axis, -1).reshape(-1, K)``
with the ignored rows removed (image by image, pixels in C order), so a kernel
that folds its pieces in order computes what it computes on that flattened
copy, up to the association of the sums across pieces (the totals of each
piece are added, where the flattened copy would be summed in fixed chunks).

Positions in error messages are given in the caller's own coordinates
(``labels[3, 17, 5] = 255 is out of range for n_classes=19``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ._validation import (
    BadElementError,
    _as_array,
    _float_array,
    _in_place,
    check_labels,
)

#: Largest number of rows (pixels) in one piece: bounds the per-piece memory
#: (int64 labels, float64 weights, a gathered copy of kept rows) to
#: ``PIECE_ROWS * (16 + K * itemsize)`` bytes.
PIECE_ROWS = 1 << 20


def is_dense(scores, class_ndim: int = 2) -> bool:
    """True if ``scores`` has trailing spatial axes beyond (N, K) (``class_ndim`` = 2), i.e. ndim > ``class_ndim``."""
    return getattr(scores, "ndim", 0) > class_ndim


def check_class_axis(axis, ndim: int) -> int:
    """The class axis of an ndim-dimensional dense array as a non-negative int: 1 (class second) or ndim - 1."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer (1 for (N, K, *spatial), -1 for channel-last), "
                        f"got {type(axis).__name__}")
    a = int(axis)
    if a < 0:
        a += ndim
    if a not in (1, ndim - 1):
        raise ValueError(f"axis must be 1 (classes second: (N, K, *spatial)) or -1 (channel-last: "
                         f"(N, *spatial, K)) for scores of ndim {ndim}, got {axis}")
    return a


@dataclass
class Piece:
    """One block of rows of a dense input, ready for a kernel.

    ``scores`` is (m, K) (a strided view of the caller's array, or a gathered
    copy when some of the block's pixels are ignored); ``labels`` (m,) int64 or
    None; ``sample_weight`` (m,) float64 or None; ``out`` a writeable (m,) view
    of the caller's ``out`` map (only for inputs without ignored pixels);
    ``offset`` the number of kept rows before this piece; ``image`` the index
    along axis 0 when the piece lies in one image (always, with
    ``split_images=True``), else None.
    """

    scores: np.ndarray
    labels: np.ndarray | None
    sample_weight: np.ndarray | None
    out: np.ndarray | None
    offset: int
    image: int | None
    _outer: tuple
    _start: int
    _index: np.ndarray | None

    @property
    def n_rows(self) -> int:
        return self.scores.shape[0]


class Dense:
    """A validated dense input: see :func:`as_dense`. Iterate with :meth:`pieces`."""

    def __init__(self, scores, axis, labels, mask, ignore_index, sample_weight, out, name, split_images,
                 piece_rows):
        self.scores = scores
        self.axis = axis
        self.name = name
        self.n_classes = scores.shape[axis]
        moved = np.moveaxis(scores, axis, -1)
        self.row_shape = moved.shape[:-1]  # (N, *spatial)
        self.n_images = self.row_shape[0]
        self.labels = labels
        self.mask = mask
        self.ignore_index = ignore_index
        self.sample_weight = sample_weight
        self.out = out
        self.piece_rows = piece_rows
        self._moved = moved
        # out of the scores' shape (calibrated scores) is read with its class axis last, as the scores
        self._out_rows = None if out is None else (np.moveaxis(out, axis, -1) if out.ndim == scores.ndim else out)
        arrays = [moved] + [a for a in (labels, mask, sample_weight, self._out_rows) if a is not None]
        self._n_outer = _merge_point(self.row_shape, arrays, 1 if split_images else 0)
        self._n_kept = None

    @property
    def n_rows(self) -> int:
        """All rows (pixels), ignored ones included: N · prod(spatial)."""
        return math.prod(self.row_shape)

    @property
    def filtered(self) -> bool:
        """True if some rows may be left out (``ignore_index`` or ``mask`` given)."""
        return self.mask is not None or (self.ignore_index is not None and self.labels is not None)

    def n_kept(self) -> int:
        """The number of rows that are counted (a pass over labels / mask, not over the scores)."""
        if self._n_kept is None:
            if not self.filtered:
                self._n_kept = self.n_rows
            else:
                self._n_kept = sum(int(np.count_nonzero(self._keep(outer, 0, self._inner_size)))
                                   for outer in np.ndindex(*self.row_shape[:self._n_outer]))
        return self._n_kept

    def check_some_kept(self) -> int:
        """The number of kept rows; ValueError if there is none (every pixel ignored or masked)."""
        n = self.n_kept()
        if n == 0:
            why = []
            if self.ignore_index is not None and self.labels is not None:
                why.append(f"labels == ignore_index={self.ignore_index}")
            if self.mask is not None:
                why.append("mask is False")
            raise ValueError(f"every pixel of {self.name} is ignored ({' or '.join(why)} everywhere): "
                             "there is nothing to evaluate")
        return n

    @property
    def _inner_size(self) -> int:
        return math.prod(self.row_shape[self._n_outer:])

    def _view(self, a, outer, writeable=False):
        """``a[outer]`` with its inner row axes merged into one: shape (inner,) + a's axes after the row axes."""
        sub = a[outer]
        inner = self.row_shape[self._n_outer:]
        stride = _block_stride(sub.strides[:len(inner)], inner)
        shape = (self._inner_size,) + sub.shape[len(inner):]
        strides = (stride,) + sub.strides[len(inner):]
        return np.lib.stride_tricks.as_strided(sub, shape=shape, strides=strides,
                                               writeable=writeable)

    def _keep(self, outer, start, stop):
        keep = None
        if self.mask is not None:
            keep = np.asarray(self._view(self.mask, outer)[start:stop], dtype=bool)
        if self.ignore_index is not None and self.labels is not None:
            lab = self._view(self.labels, outer)[start:stop]
            k = lab != self.ignore_index
            keep = k if keep is None else keep & k
        return keep

    def pieces(self, piece_rows: int | None = None, *, stride: int = 1) -> Iterator[Piece]:
        """The kept rows, in order, as :class:`Piece` objects of at most ``piece_rows`` rows.

        ``stride`` > 1: every ``stride``-th kept row (rows 0, stride, 2 stride, ... of the kept rows, counted
        across pieces: ``flat[::stride]`` of the flattened copy), a strided view where no pixel of the block is
        ignored, else a gather of those rows only; ``offset`` is then counted in these rows.
        """
        step = max(int(piece_rows or self.piece_rows), 1)
        stride = max(int(stride), 1)
        inner = self._inner_size
        offset = 0
        counted = 0  # kept rows before the block (for the stride)
        for outer in np.ndindex(*self.row_shape[:self._n_outer]):
            s_all = self._view(self._moved, outer)
            lab_all = None if self.labels is None else self._view(self.labels, outer)
            w_all = None if self.sample_weight is None else self._view(self.sample_weight, outer)
            out_all = None if self.out is None else self._view(self._out_rows, outer, writeable=True)
            image = outer[0] if outer else None
            for start in range(0, inner, step):
                stop = min(start + step, inner)
                if image is None:
                    first = start // max(inner // self.row_shape[0], 1)
                    last = (stop - 1) // max(inner // self.row_shape[0], 1)
                    img = first if first == last else None
                else:
                    img = image
                keep = self._keep(outer, start, stop)
                index = None  # the kept rows of the block, when not all of it
                if keep is not None and not keep.all():
                    index = np.flatnonzero(keep)
                rows = slice(start, stop)
                if stride > 1:
                    n_kept = stop - start if index is None else index.shape[0]
                    skip = (-counted) % stride
                    counted += n_kept
                    if index is None:
                        rows = slice(start + skip, stop, stride)
                        index = np.arange(skip, stop - start, stride)  # positions, for position()
                        gather = False
                    else:
                        index = index[skip::stride]
                        gather = True
                else:
                    gather = index is not None
                if index is not None and index.shape[0] == 0:
                    continue
                s = s_all[rows]
                lab = None if lab_all is None else lab_all[rows]
                w = None if w_all is None else w_all[rows]
                o = None if out_all is None or stride > 1 else out_all[rows]
                if gather:
                    s = s_all[start:stop][index]
                    lab = None if lab is None else lab_all[start:stop][index]
                    w = None if w is None else w_all[start:stop][index]
                    o = None
                if lab is not None:
                    lab = check_labels(lab, s.shape[0])
                if w is not None and (w.dtype != np.float64 or not w.flags.aligned):
                    w = w.astype(np.float64)
                yield Piece(s, lab, w, o, offset, img, outer, start, index)
                offset += s.shape[0]

    def values(self, a, piece: Piece) -> np.ndarray:
        """The values of another (N, *spatial) array ``a`` (group ids, a second map) at ``piece``'s rows, in the
        piece's order: a view when ``a``'s pixel axes merge as the scores' do, else a copy of the piece's block
        of ``a`` only (one image at most, never the whole array)."""
        if a.shape != self.row_shape:
            raise ValueError(f"the array must have shape {self.row_shape}, got {a.shape}")
        block = a[piece._outer].reshape(-1)  # a view if a's inner axes merge, else a copy of that block
        rows = block[piece._start:piece._start + (piece.n_rows if piece._index is None else 0)]
        return rows if piece._index is None else block[piece._start + piece._index]

    def position(self, piece: Piece, row: int) -> tuple:
        """The index (n, *spatial) of row ``row`` of ``piece`` in the caller's (N, *spatial) arrays."""
        p = piece._start + (row if piece._index is None else int(piece._index[row]))
        return tuple(int(i) for i in piece._outer) + tuple(
            int(i) for i in np.unravel_index(p, self.row_shape[self._n_outer:]))

    def raise_for_status(self, status, piece: Piece, **context) -> None:
        """Raise the kernel's error for ``piece`` with the element named at its place in the caller's arrays."""
        if status[0] == 0:
            return
        err = BadElementError(status, **context)
        pos = self.position(piece, int(status[1]))
        col = int(status[2])
        labels_at = ", ".join(map(str, pos))
        if col < 0:
            scores_at = list(map(str, pos))
            scores_at.insert(self.axis, ":")
        else:
            scores_at = list(map(str, pos))
            scores_at.insert(self.axis, str(col))
        msg = str(err)
        row_text = f"[{int(status[1])}]" if col < 0 else f"[{int(status[1])}, {col}]"
        name = context.get("scores_name", "scores")
        if msg.startswith(name + row_text):
            msg = f"{name}[{', '.join(scores_at)}]" + msg[len(name + row_text):]
        else:
            for arg in ("labels", "sample_weight"):
                if msg.startswith(f"{arg}[{int(status[1])}]"):
                    msg = f"{arg}[{labels_at}]" + msg[len(f"{arg}[{int(status[1])}]"):]
        exc = BadElementError(status, **context)
        exc.args = (msg,)
        exc.position = pos
        raise exc


def _block_stride(strides, shape):
    """The one stride of a block of axes that merge: that of its innermost axis of size > 1 (0 if none)."""
    for st, n in zip(reversed(strides), reversed(shape)):
        if n != 1:
            return st
    return 0


def _merge_point(row_shape, arrays, min_outer):
    """The number of leading row axes that cannot be merged with the ones after them, in every array.

    Axes ``[j, R)`` of (N, *spatial) form one strided row axis of every array
    when, for each array, each axis's stride is the next one's times its size
    (size-1 axes always merge).
    """
    R = len(row_shape)
    j = R - 1
    size = row_shape[R - 1]
    inner = [a.strides[R - 1] for a in arrays]
    while j > min_outer:
        i = j - 1
        n = row_shape[i]
        if n == 1:
            j = i
            continue
        if size == 1:
            inner = [a.strides[i] for a in arrays]
            size = n
            j = i
            continue
        if all(a.strides[i] == st * size for a, st in zip(arrays, inner)):
            size *= n
            j = i
            continue
        break
    return j


def as_dense(scores, labels=None, *, axis=1, mask=None, ignore_index=None, sample_weight=None, out=None,
             name: str = "scores", split_images: bool = False, piece_rows: int = PIECE_ROWS,
             out_dtype=None, out_like_scores: bool = False, allow_in_place: bool = False,
             labels_name: str = "labels") -> Dense:
    """Validate a dense input of shape (N, K, *spatial) (``axis=1``) or (N, *spatial, K) (``axis=-1``).

    (N, K) scores are accepted too (no spatial axis: one piece per
    ``piece_rows`` rows), so that ``mask`` / ``ignore_index`` on plain
    classification input take the same path.

    ``labels``, ``mask`` (bool) and ``sample_weight`` must have the shape
    (N, *spatial); ``out``, when given, too (a writeable float array: the
    per-pixel map a score writes), or with ``out_like_scores=True`` the shape
    of ``scores`` (calibrated scores; ``allow_in_place=True`` accepts ``out``
    being ``scores`` itself, for a row-by-row in-place transform; any other
    overlap is an error). ``ignore_index`` is an integer label whose
    pixels are never counted. Nothing is copied here: contents (NaN, labels
    out of range, negative weights) are checked by the kernels piece by piece.
    ``split_images=True`` keeps every piece within one image (for
    ``reduce="per_image"``). ``name`` / ``labels_name`` are the caller's
    argument names, used in the error messages.
    """
    s = scores if type(scores) is np.ndarray else _as_array(scores, name)
    s = _in_place(_float_array(s, name))
    if s.ndim < 2:
        raise ValueError(f"{name} must have shape (N, K) or (N, K, *spatial) to be read as rows of class scores, "
                         f"got shape {s.shape}")
    ax = check_class_axis(axis, s.ndim)
    K = s.shape[ax]
    if K < 2:
        raise ValueError(f"{name} must have at least 2 classes along axis {axis}, got shape {s.shape}")
    row_shape = s.shape[:ax] + s.shape[ax + 1:]
    if 0 in row_shape:
        raise ValueError(f"{name} is empty: got shape {s.shape}")

    def same_shape(a, arg):
        if a.shape != row_shape:
            where = "(N, *spatial)" if ax == 1 else "(N, *spatial) (scores without their last axis)"
            raise ValueError(f"{arg} must have shape {row_shape} {where} to match {name} of shape {s.shape} "
                             f"with classes on axis {axis}, got shape {a.shape}")
        return a

    if labels is not None:
        labels = same_shape(_as_array(labels, labels_name), labels_name)
        if labels.dtype == bool:
            labels = labels.view(np.uint8)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{labels_name} must be integers, got dtype {labels.dtype}")
        if not labels.flags.aligned or not labels.dtype.isnative:
            labels = labels.astype(labels.dtype.newbyteorder("="))
    if mask is not None:
        mask = same_shape(_as_array(mask, "mask"), "mask")
        if mask.dtype != bool:
            raise TypeError(f"mask must be a boolean array (True where a pixel is counted), got dtype {mask.dtype}")
    if ignore_index is not None:
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, "
                            f"got {type(ignore_index).__name__}")
        ignore_index = int(ignore_index)
    if sample_weight is not None:
        sample_weight = same_shape(_as_array(sample_weight, "sample_weight"), "sample_weight")
        if sample_weight.dtype == object or sample_weight.dtype.kind not in "fiub":
            raise TypeError(f"sample_weight must be numbers, got dtype {sample_weight.dtype}")
    if out is not None:
        want = s.shape if out_like_scores else row_shape
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a NumPy array of shape {want}, got {type(out).__name__}")
        if out_like_scores:
            if out.shape != s.shape:
                raise ValueError(f"out must have the shape of {name}, {s.shape}, got shape {out.shape}")
        else:
            same_shape(out, "out")
        if out_dtype is not None and out.dtype != np.dtype(out_dtype):
            raise TypeError(f"out must have dtype {np.dtype(out_dtype)}, got {out.dtype}")
        if out.dtype.kind != "f":
            raise TypeError(f"out must be a float array, got dtype {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out is read-only: a writeable array is needed")
        same = (out_like_scores and allow_in_place and out.dtype == s.dtype
                and out.__array_interface__["data"][0] == s.__array_interface__["data"][0]
                and out.strides == s.strides)
        if not same and np.shares_memory(out, s):
            raise ValueError(f"out overlaps {name}: the output would be written over the scores it is computed "
                             f"from" + (f" (only out={name} itself is accepted, for an in-place transform)"
                                        if allow_in_place else ""))
    return Dense(s, ax, labels, mask, ignore_index, sample_weight, out, name, split_images, piece_rows)


def flatten_reference(scores, labels=None, *, axis=1, mask=None, ignore_index=None, sample_weight=None):
    """The explicit copy a user would make: (rows, K) scores and (rows,) labels / weights, ignored rows removed.

    For tests and benchmarks (it copies the whole input); the library never calls it.
    """
    s = np.asarray(scores)
    ax = check_class_axis(axis, s.ndim)
    K = s.shape[ax]
    flat = np.moveaxis(s, ax, -1).reshape(-1, K)
    keep = np.ones(flat.shape[0], bool)
    lab = None if labels is None else np.asarray(labels).reshape(-1)
    if mask is not None:
        keep &= np.asarray(mask).reshape(-1)
    if ignore_index is not None and lab is not None:
        keep &= lab != ignore_index
    w = None if sample_weight is None else np.asarray(sample_weight).reshape(-1)[keep]
    return flat[keep], (None if lab is None else lab[keep]), w
