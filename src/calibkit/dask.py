"""calibkit on Dask arrays: the same kernels on every row block, mergeable states tree-reduced.

Each row block of the scores (and the matching block of the labels) goes
through the native kernels on whichever worker holds it; what travels is small
sufficient statistics (a :class:`calibkit.CalibrationAccumulator`, or the
temperature NLL's three sums), combined pairwise in block order. Results equal
the single-machine ones: counts exactly, floats to rounding (the sums are only
grouped differently). A worker lost mid-computation is handled by Dask: its
tasks are recomputed elsewhere, which changes nothing since every task is a
pure function of its block.

Zero-length row blocks are skipped. Row chunk sizes must be known: after
boolean indexing call ``x.compute_chunk_sizes()`` first (a ValueError says so).

Dense maps (issue 17): scores ``(N, K, *spatial)`` (``axis=1``) or channel-last
``(N, *spatial, K)`` (``axis=-1``) chunked along N and the spatial axes (never along
K: a block needs whole rows; a ValueError says how to rechunk), labels and an
optional ``mask`` (Dask or NumPy, bool) of shape ``(N, *spatial)``, rechunked to the
scores' blocks, ``ignore_index=``. Each block goes through the dense adapter
(:mod:`calibkit._dense`: the class axis read with its stride, no flattened copy);
a bad element is named at its place in the whole array (the block's offset added
to its position in the block).

Needs the optional extra ``dask`` (dask[array] and distributed).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import Backend, Norm
from ._dense import as_dense, check_class_axis
from ._validation import BadElementError
from .calibrators import TemperatureScaling
from .calibrators.scaling import temperature_nll
from .streaming import CalibrationAccumulator

if TYPE_CHECKING:
    import dask.array as da
    from dask.delayed import Delayed

    from .metrics import ReliabilityTable


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ImportError("calibkit.dask needs Dask: pip install 'calibkit[dask]'") from None
    return dask, da


def _check_known_chunks(a, name):
    if any(math.isnan(c) for c in a.chunks[0]):
        raise ValueError(f"{name} has unknown chunk sizes (shape {a.shape}, e.g. after boolean indexing): "
                         f"call {name}.compute_chunk_sizes() first, or index with a computed mask")


def _blocks(scores, labels):
    """Non-empty delayed row blocks of scores (whole rows) with the matching label blocks and their first rows."""
    _, da = _dask()
    scores = da.asarray(scores)
    labels = da.asarray(labels)
    _check_known_chunks(scores, "scores")
    _check_known_chunks(labels, "labels")
    if scores.ndim not in (1, 2):
        raise ValueError(f"scores must have shape (N, K) or (N,), got {scores.shape}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must have shape ({scores.shape[0]},), got {labels.shape}")
    if scores.ndim == 2 and scores.numblocks[1] != 1:
        scores = scores.rechunk({1: -1})  # a kernel needs whole rows
    labels = labels.rechunk({0: scores.chunks[0]})
    sizes = scores.chunks[0]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    keep = [i for i, n in enumerate(sizes) if n > 0]  # a zero-length block is valid Dask chunking: nothing to add
    s_blocks, y_blocks = scores.to_delayed().ravel(), labels.to_delayed().ravel()
    return [s_blocks[i] for i in keep], [y_blocks[i] for i in keep], starts[keep], scores


def _tree(dask, parts, combine):
    """Pairwise combination in block order: a tree of depth log2(len(parts))."""
    if not parts:
        raise ValueError("the arrays have no rows")
    while len(parts) > 1:
        parts = [dask.delayed(combine)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _where(exc, start, stop):
    """The error of a block's kernel call, about the whole array: a bad element is named by its global row."""
    if isinstance(exc, BadElementError):
        return exc.at_row(start + exc.row)
    return type(exc)(f"rows [{start}, {stop}) of the Dask array: {exc}")


# -- dense maps ------------------------------------------------------------------------------


def _is_dense(scores, mask, ignore_index) -> bool:
    return getattr(scores, "ndim", 2) > 2 or mask is not None or ignore_index is not None


class _DenseBlocks:
    """The blocks of a dense (or masked) Dask input: delayed scores, labels and mask blocks, each block's
    offset into the ``(N, *spatial)`` pixel grid and its stream start (the pixels of the blocks before it)."""

    def __init__(self, scores, labels, axis, mask, ignore_index, name="scores"):
        _, da = _dask()
        scores = da.asarray(scores)
        labels = da.asarray(labels)
        for a, arg in ((scores, name), (labels, "labels")):
            if any(math.isnan(c) for chunks in a.chunks for c in chunks):
                raise ValueError(f"{arg} has unknown chunk sizes (shape {a.shape}, e.g. after boolean indexing): "
                                 f"call {arg}.compute_chunk_sizes() first, or index with a computed mask")
        if scores.ndim == 1:  # binary scores with mask / ignore_index: rows only
            if axis not in (1, -1) or isinstance(axis, bool):
                raise ValueError(f"axis must be 1 or -1 (the class axis); binary {name} of shape {scores.shape} "
                                 f"have none, got axis={axis!r}")
            ax = None
            row_chunks = scores.chunks
        else:
            ax = check_class_axis(axis, scores.ndim)
            if scores.ndim == 2 and scores.numblocks[ax] != 1:
                scores = scores.rechunk({ax: -1})  # (N, K) rows, as the plain path does
            if scores.numblocks[ax] != 1:
                raise ValueError(f"{name} is chunked along its class axis {ax} (chunks {scores.chunks[ax]}): every "
                                 f"block needs whole rows of {scores.shape[ax]} classes; chunk along N and the "
                                 f"spatial axes only, e.g. {name}.rechunk({{{ax}: -1}})")
            row_chunks = scores.chunks[:ax] + scores.chunks[ax + 1:]
        row_shape = tuple(sum(c) for c in row_chunks)
        if labels.shape != row_shape:
            raise ValueError(f"labels must have shape {row_shape} (N, *spatial) to match {name} of shape "
                             f"{scores.shape} with classes on axis {axis}, got shape {labels.shape}")
        labels = labels.rechunk(row_chunks)
        if mask is not None:
            mask = da.asarray(mask)
            if mask.shape != row_shape:
                raise ValueError(f"mask must have shape {row_shape} (N, *spatial) to match {name} of shape "
                                 f"{scores.shape}, got shape {mask.shape}")
            if mask.dtype != bool:
                raise TypeError(f"mask must be a boolean array (True where a pixel is counted), got dtype "
                                f"{mask.dtype}")
            mask = mask.rechunk(row_chunks)
        if ignore_index is not None and (isinstance(ignore_index, (bool, np.bool_))
                                         or not isinstance(ignore_index, (int, np.integer))):
            raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, got "
                            f"{type(ignore_index).__name__}")
        self.scores, self.axis, self.ignore_index, self.name = scores, axis, ignore_index, name
        self.n_classes = None if ax is None else int(scores.shape[ax])
        s_del, y_del = scores.to_delayed(), labels.to_delayed()
        m_del = None if mask is None else mask.to_delayed()
        starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in row_chunks]
        self.blocks = []
        position = 0
        for index in np.ndindex(*(len(c) for c in row_chunks)):
            size = math.prod(c[i] for c, i in zip(row_chunks, index))
            if size == 0:
                continue  # a zero-length block is valid Dask chunking: nothing to add
            s_index = index if ax is None else index[:ax] + (0,) + index[ax:]
            offsets = tuple(int(st[i]) for st, i in zip(starts, index))
            self.blocks.append((s_del[s_index], y_del[index], None if m_del is None else m_del[index], offsets,
                                position))
            position += size

    def nothing_kept(self):
        why = []
        if self.ignore_index is not None:
            why.append(f"labels == ignore_index={self.ignore_index}")
        if any(b[2] is not None for b in self.blocks):
            why.append("mask is False")
        return ValueError(f"every pixel of {self.name} is ignored ({' or '.join(why)} everywhere): there is "
                          "nothing to evaluate")


_AT = re.compile(r"^(\w+)\[([^\]]*)\](.*)$", re.S)


def _dense_where(exc, offsets, ndim, axis):
    """The error of a block, about the whole array: the element's block position plus the block's offset."""
    pos = getattr(exc, "position", None)
    if isinstance(exc, BadElementError) and pos is None and len(offsets) == 1:  # rows of a 1-D / 2-D input
        pos = (exc.row,)
        exc = exc.at_row(exc.row)
    m = _AT.match(str(exc)) if pos is not None else None
    if m is None:
        return type(exc)(f"the block at {tuple(offsets)} of the Dask array: {exc}")
    glob = tuple(int(p) + o for p, o in zip(pos, offsets))
    entries = m.group(2).split(", ")
    if len(entries) == len(glob) + 1:  # scores[...]: the class axis stays as it is
        ax = axis % ndim
        entries = [str(g) for g in glob[:ax]] + [entries[ax]] + [str(g) for g in glob[ax:]]
    elif len(entries) == len(glob):
        entries = [str(g) for g in glob]
    else:
        return type(exc)(f"the block at {tuple(offsets)} of the Dask array: {exc}")
    new = BadElementError(exc.status, **exc._context) if isinstance(exc, BadElementError) else type(exc)()
    new.args = (f"{m.group(1)}[{', '.join(entries)}]{m.group(3)}",)
    new.position = glob
    return new


def _dense_block_state(scores, labels, mask, offsets, start, axis, ignore_index, config):
    acc = CalibrationAccumulator(start=int(start), **config)
    try:
        acc.update(scores, labels, axis=axis, ignore_index=ignore_index, mask=mask)
    except (ValueError, TypeError) as exc:
        raise _dense_where(exc, offsets, np.ndim(scores), axis) from None
    return acc


def _dense_block_sums(logits, labels, mask, offsets, axis, ignore_index, b, backend):
    """The temperature NLL sums of a block's kept pixels (None when every pixel is ignored)."""
    d = as_dense(logits, labels, axis=axis, mask=mask, ignore_index=ignore_index, name="logits")
    total = None
    for piece in d.pieces():
        try:
            try:
                r = temperature_nll(piece.scores, piece.labels, b, backend=backend)
            except BadElementError as exc:
                d.raise_for_status(exc.status, piece, **exc._context)
                raise
        except (ValueError, TypeError) as exc:
            raise _dense_where(exc, offsets, np.ndim(logits), axis) from None
        total = r if total is None else _add_sums(total, r)
    return total


def _block_state(scores, labels, start, config):
    acc = CalibrationAccumulator(start=int(start), **config)
    try:
        acc.update(scores, labels)
    except (ValueError, TypeError) as exc:
        raise _where(exc, start, start + len(labels)) from None
    return acc


def _merge(a, b):
    return a.copy().merge(b)


def accumulate(scores: da.Array, labels: da.Array, *, n_bins: int = 15, from_logits: bool = False,
               classwise: bool = False, compute: bool = True, axis: int = 1, ignore_index: int | None = None,
               mask: da.Array | np.ndarray | None = None, **kwargs: Any) -> CalibrationAccumulator | Delayed:
    """The :class:`CalibrationAccumulator` of Dask arrays ``scores`` (N, K) or (N,) and ``labels`` (N,).

    Keyword arguments are those of :class:`CalibrationAccumulator` (``bootstrap``,
    ``seed``, ``fine_bits``, ``backend``, ...). With ``compute=False`` the
    Delayed object is returned instead.

    Dense maps: ``scores`` ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``), chunked along N
    and the spatial axes only (a ValueError if K is chunked), ``labels`` and ``mask`` (a Dask or NumPy bool
    array, True = counted) of shape ``(N, *spatial)``, rechunked to the scores' blocks; ``ignore_index`` and
    ``mask`` work for (N, K) and (N,) scores too. Each block is read in place by
    :meth:`CalibrationAccumulator.update` (no flattened copy) and the states are merged in block order: the
    counts equal those of the NumPy dense update exactly, the sums to rounding. The rows of a block take
    the stream positions from the number of pixels in the blocks before it (C order of the block grid), so
    the bootstrap replicates (``bootstrap=``) are a valid online bootstrap, but the same replicates as the
    NumPy update only when the blocks split N alone and no pixel is ignored. A map whose every pixel is
    ignored gives an empty accumulator (``count`` 0), as an update of the accumulator would.
    A bad element is named at its place in the whole array (``labels[12, 300, 4] = 40 is out of range``).

    Examples
    --------
    >>> import dask.array as da, calibkit, calibkit.dask
    >>> d = calibkit.datasets.load_example()
    >>> z, y = da.from_array(d.test_logits, chunks=(2500, 10)), da.from_array(d.test_labels, chunks=2500)
    >>> acc = calibkit.dask.accumulate(z, y, from_logits=True)
    >>> acc.count, round(acc.compute().ece, 4)
    (10000, 0.0182)
    """
    return _accumulate(scores, labels, n_bins=n_bins, from_logits=from_logits, classwise=classwise, compute=compute,
                       axis=axis, ignore_index=ignore_index, mask=mask, **kwargs)[0]


def _accumulate(scores, labels, *, n_bins=15, from_logits=False, classwise=False, compute=True, axis=1,
                ignore_index=None, mask=None, **kwargs):
    """accumulate(), and the dense blocks (None for plain (N, K) / (N,) input)."""
    dask, _ = _dask()
    config = dict(n_bins=n_bins, from_logits=from_logits, classwise=classwise, **kwargs)
    if _is_dense(scores, mask, ignore_index):
        blocks = _DenseBlocks(scores, labels, axis, mask, ignore_index)
        if classwise and blocks.n_classes is not None:
            config.setdefault("n_classes", blocks.n_classes)
        parts = [dask.delayed(_dense_block_state)(s, y, m, off, start, axis, ignore_index, config)
                 for s, y, m, off, start in blocks.blocks]
    else:
        blocks = None
        s_blocks, y_blocks, starts, scores = _blocks(scores, labels)
        if classwise and scores.ndim == 2:
            config.setdefault("n_classes", int(scores.shape[1]))
        parts = [dask.delayed(_block_state)(s, y, int(a), config) for s, y, a in zip(s_blocks, y_blocks, starts)]
    tree = _tree(dask, parts, _merge)
    return (tree.compute() if compute else tree), blocks


def _evaluated(scores, labels, axis, ignore_index, mask, **config):
    """The computed accumulator of a one-shot metric; the clear error when every pixel is ignored."""
    acc, blocks = _accumulate(scores, labels, axis=axis, ignore_index=ignore_index, mask=mask, **config)
    if blocks is not None and acc.count == 0:
        raise blocks.nothing_kept()
    return acc.compute()


def reliability_table(scores: da.Array, labels: da.Array, *, n_bins: int = 15, from_logits: bool = False,
                      backend: Backend = "auto", axis: int = 1, ignore_index: int | None = None,
                      mask: da.Array | np.ndarray | None = None) -> ReliabilityTable:
    """The equal-width :class:`calibkit.ReliabilityTable` of Dask arrays (as :func:`calibkit.reliability_table`).

    Dense maps, ``axis``, ``ignore_index`` and ``mask`` as in :func:`accumulate`; a ValueError when every
    pixel is ignored.

    Examples
    --------
    >>> import dask.array as da, calibkit, calibkit.dask
    >>> d = calibkit.datasets.load_example()
    >>> z, y = da.from_array(d.test_logits, chunks=(2500, 10)), da.from_array(d.test_labels, chunks=2500)
    >>> int(calibkit.dask.reliability_table(z, y, n_bins=10, from_logits=True).count.sum())
    10000
    """
    return _evaluated(scores, labels, axis, ignore_index, mask, n_bins=n_bins, from_logits=from_logits,
                      backend=backend).table


def calibration_error(scores: da.Array, labels: da.Array, *, n_bins: int = 15, norm: Norm = "l1",
                      from_logits: bool = False, backend: Backend = "auto", axis: int = 1,
                      ignore_index: int | None = None, mask: da.Array | np.ndarray | None = None) -> float:
    """Top-label calibration error of Dask arrays, equal-width bins (as :func:`calibkit.calibration_error`).

    ``norm="l1"`` is the ECE, ``"l2"`` the RMS calibration error, ``"max"`` the
    MCE. Equal-mass bins need a global sort of the confidences, which this
    function does not do; ``accumulate(...).compute().ace`` is the streaming
    equal-mass ECE with its proven error bound ``ace_bound``. Dense maps, ``axis``,
    ``ignore_index`` and ``mask`` as in :func:`accumulate` (the bin sums are added per block and per
    piece, so the result equals the NumPy one to rounding); a ValueError when every pixel is ignored.

    Examples
    --------
    >>> import dask.array as da, calibkit, calibkit.dask
    >>> d = calibkit.datasets.load_example()
    >>> z, y = da.from_array(d.test_logits, chunks=(2500, 10)), da.from_array(d.test_labels, chunks=2500)
    >>> round(calibkit.dask.calibration_error(z, y, from_logits=True), 4)
    0.0182
    >>> round(calibkit.ece(d.test_logits, d.test_labels, from_logits=True), 4)
    0.0182
    """
    if norm not in ("l1", "l2", "max"):
        raise ValueError(f"norm must be one of ('l1', 'l2', 'max'), got {norm!r}")
    r = _evaluated(scores, labels, axis, ignore_index, mask, n_bins=n_bins, from_logits=from_logits, backend=backend)
    return {"l1": r.ece, "l2": r.rmsce, "max": r.mce}[norm]


def _block_sums(logits, labels, start, b, backend):
    try:
        return temperature_nll(logits, labels, b, backend=backend)
    except (ValueError, TypeError) as exc:
        raise _where(exc, start, start + len(labels)) from None


def _add_sums(a, b):
    """Sums add; the largest row range (``range``, which bounds the fit's error) is a maximum."""
    if a is None or b is None:  # a block whose every pixel is ignored
        return b if a is None else a
    return {k: max(a[k], b[k]) if k == "range" else a[k] + b[k] for k in a}


def fit_temperature(logits: da.Array, labels: da.Array, *, bounds: tuple[float, float] = (1e-3, 1e3),
                    tol: float = 1e-7, max_passes: int = 50, backend: Backend = "auto", axis: int = 1,
                    ignore_index: int | None = None,
                    mask: da.Array | np.ndarray | None = None) -> TemperatureScaling:
    """Fit temperature scaling on Dask arrays: one distributed pass per Newton step.

    The NLL and its first two derivatives in b = 1/T are sums over rows, so
    each step maps the fused kernel (:func:`calibkit.temperature_nll`) over the
    blocks and adds the three sums; the Newton iteration itself is that of
    :meth:`calibkit.TemperatureScaling.fit`, and so is the result (to rounding).
    Persist the logits (``logits.persist()``) when they are expensive to produce:
    every step reads them once.

    Dense logits ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``), chunked along N and the
    spatial axes (not K), with ``labels`` / ``mask`` (Dask or NumPy bool) of shape ``(N, *spatial)`` and
    ``ignore_index``: every kept pixel is a row; each block's rows are read in place piece by piece (no
    flattened copy) and the sums added per piece and per block, so the fit equals the fit on the flattened
    kept rows to rounding. A ValueError when every pixel is ignored.

    Examples
    --------
    >>> import dask.array as da, calibkit, calibkit.dask
    >>> d = calibkit.datasets.load_example()
    >>> z, y = da.from_array(d.val_logits, chunks=(1000, 10)), da.from_array(d.val_labels, chunks=1000)
    >>> ts = calibkit.dask.fit_temperature(z, y)
    >>> in_memory = calibkit.TemperatureScaling().fit(d.val_logits, d.val_labels)
    >>> round(ts.temperature_, 4) == round(in_memory.temperature_, 4)
    True
    """
    dask, _ = _dask()
    if _is_dense(logits, mask, ignore_index):
        blocks = _DenseBlocks(logits, labels, axis, mask, ignore_index, name="logits")
        if blocks.n_classes is None:
            raise ValueError(f"logits must have shape (N, K) or (N, K, *spatial), got {blocks.scores.shape}")
        n_classes = blocks.n_classes

        def sums(b):
            parts = [dask.delayed(_dense_block_sums)(s, y, m, off, axis, ignore_index, b, backend)
                     for s, y, m, off, _ in blocks.blocks]
            total = _tree(dask, parts, _add_sums).compute()
            if total is None:
                raise blocks.nothing_kept()
            return total
    else:
        s_blocks, y_blocks, starts, logits = _blocks(logits, labels)
        if logits.ndim != 2:
            raise ValueError(f"logits must have shape (N, K), got {logits.shape}")
        n_classes = int(logits.shape[1])

        def sums(b):
            parts = [dask.delayed(_block_sums)(s, y, int(a), b, backend)
                     for s, y, a in zip(s_blocks, y_blocks, starts)]
            return _tree(dask, parts, _add_sums).compute()

    ts = TemperatureScaling(bounds=bounds, tol=tol, max_passes=max_passes, backend=backend)
    return ts.fit_from_sums(sums, n_classes)


__all__ = ["accumulate", "calibration_error", "fit_temperature", "reliability_table"]
