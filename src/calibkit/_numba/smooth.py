"""Numba twin of cpp/include/calibkit/smooth.hpp (same name, same algorithm, same chunks).

``smooth_grid`` spreads each row's weight w and weighted residual w (f - y) onto uniform grids on [0, 1] by
linear interpolation (relplot's ``smooth_round_to_grid``), one read of the input, float64 sums, chunk partials
folded in chunk order (bit-identical for any thread count).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    CHUNK_ELEMENTS,
    HALF_TABLE,
    JIT,
    LABEL_OUT_OF_RANGE,
    MIN_PARALLEL_ELEMENTS,
    PROBABILITY_OUT_OF_RANGE,
    SCORE_NOT_FINITE,
    as_kernel_array,
    check_float_dtype,
    group_size,
    is_finite,
    load,
    merge_status,
    run_locked,
    status_tuple,
    valid_probability,
)
from .binning import ROW_VALUES, _logit_row_f, _summarize_row, _weights_arg, check_weight

MAX_SMOOTH_CELLS = 1 << 20  # kMaxSmoothCells
MAX_SMOOTH_GRIDS = 64  # kMaxSmoothGrids


BLOCK = 256  # smooth.hpp's kSmoothBlock


@numba.njit(**JIT)
def _flush(sizes, offsets, channels, buf, n, cells, tot):
    """smooth.hpp's SmoothBlock::flush: the buffered rows (columns f, w, w (f - y), w y) onto every grid, one
    grid after the other, each cell receiving its rows in row order."""
    for g in range(sizes.shape[0]):
        last = sizes[g] - 1
        scale = np.float64(last)
        base = channels * offsets[g]
        for j in range(n):
            x = buf[j, 0] * scale
            b = min(max(np.int64(x), 0), last - 1)  # truncation, as numpy's astype(int)
            t = x - np.float64(b)
            u = 1.0 - t
            c = base + channels * b
            cells[c] += u * buf[j, 1]
            cells[c + 1] += u * buf[j, 2]
            if channels == 3:
                cells[c + 2] += u * buf[j, 3]
            cells[c + channels] += t * buf[j, 1]
            cells[c + channels + 1] += t * buf[j, 2]
            if channels == 3:
                cells[c + 5] += t * buf[j, 3]
    for j in range(n):
        tot[1] += buf[j, 1]
    tot[0] += n
    return 0


@numba.njit(inline="always", **JIT)
def _add(buf, n, f, w, y):
    buf[n, 0] = f
    buf[n, 1] = w
    buf[n, 2] = w * (f - y)
    buf[n, 3] = w * y
    return n + 1


@numba.njit(**JIT)
def _smooth_chunk(scores, labels, weights, has_w, binary, from_logits, single, inv_t, sizes, offsets, channels,
                  table, begin, end, cells, tot, st):
    buf = np.empty((BLOCK, 4))
    n = 0
    if binary:
        for i in range(begin, end):
            y = np.int64(labels[i])
            if y != 0 and y != 1:
                merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
                continue
            w = weights[i] if has_w else 1.0
            if has_w and not check_weight(w, i, st):
                continue
            p = load(scores[i, 0], table)
            if not valid_probability(p):
                merge_status(st, PROBABILITY_OUT_OF_RANGE if is_finite(p) else SCORE_NOT_FINITE, i, -1, p)
                continue
            n = _add(buf, n, p, w, np.float64(y))
            if n == BLOCK:
                n = _flush(sizes, offsets, channels, buf, n, cells, tot)
        _flush(sizes, offsets, channels, buf, n, cells, tot)
        return
    K = scores.shape[1]
    row = np.empty(ROW_VALUES)
    e = np.empty(K if from_logits and not single else 0)  # _logit_row_d's exps
    ef = np.zeros((K + 7) // 8 * 8 if single else 0, np.float32)
    for i in range(begin, end):
        y = np.int64(labels[i])
        if y < 0 or y >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        # binning's row summaries: [argmax, confidence, ...] with the row checks
        if single:
            if not _logit_row_f(scores, i, y, False, inv_t, table, st, row, ef):
                continue
        elif not _summarize_row(scores, i, y, from_logits, 0.0, False, inv_t, table, st, row, False, e):
            continue
        n = _add(buf, n, row[1], w, 1.0 if np.int64(row[0]) == y else 0.0)
        if n == BLOCK:
            n = _flush(sizes, offsets, channels, buf, n, cells, tot)
    _flush(sizes, offsets, channels, buf, n, cells, tot)


@numba.njit(parallel=True, **JIT)
def _smooth_driver(scores, labels, weights, has_w, binary, from_logits, single, inv_t, sizes, offsets, n_cells,
                   channels, chunk, table, parallel):
    N = scores.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    cells = np.zeros(channels * n_cells)
    tot = np.zeros(2)
    st = np.array([0.0, -1.0, -1.0, 0.0])
    group = group_size(n_chunks, channels * n_cells)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        p_cells = np.zeros((g, channels * n_cells))
        p_tot = np.zeros((g, 2))
        p_st = np.zeros((g, 4))
        if parallel:
            for j in numba.prange(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _smooth_chunk(scores, labels, weights, has_w, binary, from_logits, single, inv_t, sizes, offsets,
                              channels, table, c * chunk, min(N, (c + 1) * chunk), p_cells[j], p_tot[j], p_st[j])
        else:
            for j in range(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _smooth_chunk(scores, labels, weights, has_w, binary, from_logits, single, inv_t, sizes, offsets,
                              channels, table, c * chunk, min(N, (c + 1) * chunk), p_cells[j], p_tot[j], p_st[j])
        for j in range(g):
            for b in range(channels * n_cells):
                cells[b] += p_cells[j, b]
            tot[0] += p_tot[j, 0]
            tot[1] += p_tot[j, 1]
            merge_status(st, int(p_st[j, 0]), int(p_st[j, 1]), int(p_st[j, 2]), p_st[j, 3])
    return cells, tot, st


def smooth_rows_per_chunk(cols, n_cells):
    """smooth.hpp's smooth_rows_per_chunk: rows per chunk of the smooth grid sums."""
    return max(1, max(CHUNK_ELEMENTS, 32 * n_cells) // max(cols, 1))


@numba.njit(**JIT)
def smooth_grid_rows_of_grid(conf, correct, weights, has_w, chunk, size, out):
    """smooth.hpp's smooth_grid_rows_of_grid: one grid's two-channel sums of checked rows, a chunk at a time
    (the chunk's adds into a partial of the grid's cells, then folded into ``out`` and cleared)."""
    N = conf.shape[0]
    last = size - 1
    scale = np.float64(last)
    part = np.zeros(2 * size)
    for begin in range(0, N, chunk):
        for i in range(begin, min(N, begin + chunk)):
            f = conf[i]
            w = weights[i] if has_w else 1.0
            y = np.float64(correct[i])
            wr = w * (f - y)
            x = f * scale
            b = min(max(np.int64(x), 0), last - 1)  # truncation, as numpy's astype(int)
            t = x - np.float64(b)
            u = 1.0 - t
            p = 2 * b
            part[p] += u * w
            part[p + 1] += u * wr
            part[p + 2] += t * w
            part[p + 3] += t * wr
        for j in range(2 * size):
            out[j] += part[j]
            part[j] = 0.0
    return 0


@numba.njit(parallel=True, **JIT)
def _checked_rows_driver(conf, correct, weights, has_w, chunk, sizes, offsets, n_cells, parallel):
    cells = np.zeros(2 * n_cells)
    if parallel:
        for g in numba.prange(sizes.shape[0]):
            smooth_grid_rows_of_grid(conf, correct, weights, has_w, chunk, sizes[g],
                                     cells[2 * offsets[g]:2 * (offsets[g] + sizes[g])])
    else:
        for g in range(sizes.shape[0]):
            smooth_grid_rows_of_grid(conf, correct, weights, has_w, chunk, sizes[g],
                                     cells[2 * offsets[g]:2 * (offsets[g] + sizes[g])])
    N = conf.shape[0]
    tot = np.zeros(2)
    tot[0] = N
    for begin in range(0, N, chunk):  # the chunks' weights (_flush), folded
        weight = 0.0
        for i in range(begin, min(N, begin + chunk)):
            weight += weights[i] if has_w else 1.0
        tot[1] += weight
    return cells, tot


def smooth_grid_checked_rows(conf, correct, weights, has_w, K, sizes, offsets, n_cells):
    """smooth.hpp's smooth_grid_checked_rows: the two-channel grid sums (2 * n_cells,) and (count, weight) of
    rows already checked by a top-label pass (float64 confidences, uint8 correctness, float64 weights when
    ``has_w``), with the bits of ``smooth_grid`` on the (N, K) scores; a task per grid."""
    parallel = sizes.shape[0] * conf.shape[0] >= MIN_PARALLEL_ELEMENTS
    return run_locked(_checked_rows_driver, conf, correct, weights, has_w, smooth_rows_per_chunk(K, n_cells),
                      sizes, offsets, n_cells, parallel)


def _grid_sizes(grid_sizes):
    if not isinstance(grid_sizes, np.ndarray) or grid_sizes.dtype != np.int64 or grid_sizes.ndim != 1:
        raise TypeError("grid_sizes must be a 1-D numpy array of dtype int64")
    if not 1 <= grid_sizes.shape[0] <= MAX_SMOOTH_GRIDS:
        raise ValueError(f"len(grid_sizes) must be in [1, {MAX_SMOOTH_GRIDS}], got {grid_sizes.shape[0]}")
    if (grid_sizes < 2).any() or int(grid_sizes.sum()) > MAX_SMOOTH_CELLS or (grid_sizes > MAX_SMOOTH_CELLS).any():
        raise ValueError(f"grid_sizes must be >= 2 with sum(grid_sizes) <= {MAX_SMOOTH_CELLS}")
    sizes = np.ascontiguousarray(grid_sizes)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    return sizes, offsets, int(sizes.sum())


def smooth_grid(scores, labels, sample_weight, from_logits, grid_sizes, with_labels=False,
                inverse_temperature=1.0):
    """Same contract as ``calibkit._core.smooth_grid``."""
    sizes, offsets, n_cells = _grid_sizes(grid_sizes)
    inv_t = float(inverse_temperature)
    if not (inv_t > 0.0 and math.isfinite(inv_t)):
        raise ValueError("inverse_temperature must be a finite number > 0")
    if not from_logits and inv_t != 1.0:
        raise ValueError("inverse_temperature applies to logits only")
    check_float_dtype(scores, "scores")
    binary = scores.ndim == 1
    if binary:
        if from_logits:
            raise ValueError("from_logits applies to (N, K) scores; give (N,) probabilities")
        if labels.dtype not in (np.int64, np.uint8):
            raise TypeError(f"labels must have dtype int64 or uint8, got {labels.dtype}")
        matrix = scores[:, None]
    else:
        if scores.ndim != 2 or scores.shape[1] < 1:
            raise ValueError("scores must be 2-D with at least one column")
        if labels.dtype != np.int64:
            raise TypeError(f"labels must have dtype int64, got {labels.dtype}")
        matrix = scores
    N, K = matrix.shape
    if labels.ndim != 1 or labels.shape[0] != N:
        raise ValueError("labels must be 1-D with one label per row of scores")
    weights, has_w = _weights_arg(sample_weight, N)
    chunk = smooth_rows_per_chunk(K, n_cells)
    channels = 3 if with_labels else 2
    single = bool(from_logits) and scores.dtype != np.float64
    parallel = N * K >= MIN_PARALLEL_ELEMENTS
    cells, tot, st = run_locked(_smooth_driver, as_kernel_array(matrix), labels, weights, has_w, binary,
                                bool(from_logits), single, inv_t, sizes, offsets, n_cells, channels, chunk,
                                HALF_TABLE, parallel)
    return {"grid": cells.reshape(n_cells, channels), "count": int(tot[0]), "weight": float(tot[1]),
            "status": status_tuple(st)}
