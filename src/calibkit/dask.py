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

Needs the optional extra ``dask`` (dask[array] and distributed).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import Backend, Norm
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
               classwise: bool = False, compute: bool = True, **kwargs: Any) -> CalibrationAccumulator | Delayed:
    """The :class:`CalibrationAccumulator` of Dask arrays ``scores`` (N, K) or (N,) and ``labels`` (N,).

    Keyword arguments are those of :class:`CalibrationAccumulator` (``bootstrap``,
    ``seed``, ``fine_bits``, ``backend``, ...). With ``compute=False`` the
    Delayed object is returned instead.

    Examples
    --------
    >>> import dask.array as da, calibkit, calibkit.dask
    >>> d = calibkit.datasets.load_example()
    >>> z, y = da.from_array(d.test_logits, chunks=(2500, 10)), da.from_array(d.test_labels, chunks=2500)
    >>> acc = calibkit.dask.accumulate(z, y, from_logits=True)
    >>> acc.count, round(acc.compute().ece, 4)
    (10000, 0.0182)
    """
    dask, _ = _dask()
    s_blocks, y_blocks, starts, scores = _blocks(scores, labels)
    config = dict(n_bins=n_bins, from_logits=from_logits, classwise=classwise, **kwargs)
    if classwise and scores.ndim == 2:
        config.setdefault("n_classes", int(scores.shape[1]))
    parts = [dask.delayed(_block_state)(s, y, int(a), config) for s, y, a in zip(s_blocks, y_blocks, starts)]
    tree = _tree(dask, parts, _merge)
    return tree.compute() if compute else tree


def reliability_table(scores: da.Array, labels: da.Array, *, n_bins: int = 15, from_logits: bool = False,
                      backend: Backend = "auto") -> ReliabilityTable:
    """The equal-width :class:`calibkit.ReliabilityTable` of Dask arrays (as :func:`calibkit.reliability_table`).

    Examples
    --------
    >>> import dask.array as da, calibkit, calibkit.dask
    >>> d = calibkit.datasets.load_example()
    >>> z, y = da.from_array(d.test_logits, chunks=(2500, 10)), da.from_array(d.test_labels, chunks=2500)
    >>> int(calibkit.dask.reliability_table(z, y, n_bins=10, from_logits=True).count.sum())
    10000
    """
    return accumulate(scores, labels, n_bins=n_bins, from_logits=from_logits, backend=backend).compute().table


def calibration_error(scores: da.Array, labels: da.Array, *, n_bins: int = 15, norm: Norm = "l1",
                      from_logits: bool = False, backend: Backend = "auto") -> float:
    """Top-label calibration error of Dask arrays, equal-width bins (as :func:`calibkit.calibration_error`).

    ``norm="l1"`` is the ECE, ``"l2"`` the RMS calibration error, ``"max"`` the
    MCE. Equal-mass bins need a global sort of the confidences, which this
    function does not do; ``accumulate(...).compute().ace`` is the streaming
    equal-mass ECE with its proven error bound ``ace_bound``.

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
    r = accumulate(scores, labels, n_bins=n_bins, from_logits=from_logits, backend=backend).compute()
    return {"l1": r.ece, "l2": r.rmsce, "max": r.mce}[norm]


def _block_sums(logits, labels, start, b, backend):
    try:
        return temperature_nll(logits, labels, b, backend=backend)
    except (ValueError, TypeError) as exc:
        raise _where(exc, start, start + len(labels)) from None


def _add_sums(a, b):
    """Sums add; the largest row range (``range``, which bounds the fit's error) is a maximum."""
    return {k: max(a[k], b[k]) if k == "range" else a[k] + b[k] for k in a}


def fit_temperature(logits: da.Array, labels: da.Array, *, bounds: tuple[float, float] = (1e-3, 1e3),
                    tol: float = 1e-7, max_passes: int = 50, backend: Backend = "auto") -> TemperatureScaling:
    """Fit temperature scaling on Dask arrays: one distributed pass per Newton step.

    The NLL and its first two derivatives in b = 1/T are sums over rows, so
    each step maps the fused kernel (:func:`calibkit.temperature_nll`) over the
    blocks and adds the three sums; the Newton iteration itself is that of
    :meth:`calibkit.TemperatureScaling.fit`, and so is the result (to rounding).
    Persist the logits (``logits.persist()``) when they are expensive to produce:
    every step reads them once.

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
    s_blocks, y_blocks, starts, logits = _blocks(logits, labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, K), got {logits.shape}")

    def sums(b):
        parts = [dask.delayed(_block_sums)(s, y, int(a), b, backend) for s, y, a in zip(s_blocks, y_blocks, starts)]
        return _tree(dask, parts, _add_sums).compute()

    ts = TemperatureScaling(bounds=bounds, tol=tol, max_passes=max_passes, backend=backend)
    return ts.fit_from_sums(sums, int(logits.shape[1]))


__all__ = ["accumulate", "calibration_error", "fit_temperature", "reliability_table"]
