"""Numba twin of cpp/include/calibkit/scaling.hpp: vector scaling's transform u = a * z + c."""

from __future__ import annotations

import numba
import numpy as np

from ._common import HALF_TABLE, JIT, OK, SCORE_NOT_FINITE, as_kernel_array, check_float_dtype, is_finite, load
from ._common import merge_status, next_ticket, run_locked, status_tuple


@numba.njit(**JIT)
def _scale_rows(z, table, a, c, out, begin, end, st):
    """Rows [begin, end) of vector_scale (scaling.hpp's chunk): u = z a, then u + c, into out; the spread
    sum of (u - u) (0 while every output is finite, NaN after any that is not) decides whether the chunk's
    first non-finite output is looked for (row-major order) and recorded in st."""
    K = z.shape[1]
    spread = 0.0
    for i in range(begin, end):
        for k in range(K):
            u = load(z[i, k], table) * a[k]
            out[i, k] = u + c[k]
        for k in range(K):
            spread += out[i, k] - out[i, k]
    if spread != 0.0:
        for i in range(begin, end):
            for k in range(K):
                if not is_finite(out[i, k]):
                    merge_status(st, SCORE_NOT_FINITE, i, k, out[i, k])
                    break
            if st[0] != OK:
                break


@numba.njit(**JIT)
def _new_statuses(n_chunks):
    """One status row per chunk (OK, -1, -1, 0) and a ticket counter, allocated outside the parallel region (in a
    ``parallel=True`` function every ``np.empty`` / ``np.zeros`` is a parallel region of its own)."""
    statuses = np.zeros((n_chunks, 4))
    for ch in range(n_chunks):
        statuses[ch, 1] = -1.0
        statuses[ch, 2] = -1.0
    return statuses, np.zeros(1, np.int64)


@numba.njit(parallel=True, **JIT)
def _vector_scale(z, table, a, c, out, chunk, parallel):
    """vector_scale of scaling.hpp: the statuses of the row chunks."""
    N = z.shape[0]
    n_chunks = (N + chunk - 1) // chunk
    statuses, ticket = _new_statuses(n_chunks)
    if parallel:
        # the threads take the chunks one at a time while some remain (as the C++ pool): a thread descheduled on
        # a loaded machine leaves its chunks to the others
        for _t in numba.prange(n_chunks):
            ch = next_ticket(ticket)
            while ch < n_chunks:
                _scale_rows(z, table, a, c, out, ch * chunk, min(N, (ch + 1) * chunk), statuses[ch])
                ch = next_ticket(ticket)
    else:
        for ch in range(n_chunks):
            _scale_rows(z, table, a, c, out, ch * chunk, min(N, (ch + 1) * chunk), statuses[ch])
    return statuses


def vector_scale(scores, scale, bias, out):
    """Same contract as ``calibkit._core.vector_scale``."""
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"scores must be a numpy array, got {type(scores).__name__}")
    check_float_dtype(scores, "scores")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (N, K), got {scores.ndim}-D array")
    N, K = scores.shape
    for name, p in (("scale", scale), ("bias", bias)):
        if not isinstance(p, np.ndarray) or p.dtype != np.float64 or p.shape != (K,) or not p.flags.c_contiguous:
            raise ValueError(f"{name} must be a contiguous float64 array of length K = {K}")
    if not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (N, K) \
            or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float64 array of shape {(N, K)}")
    if np.shares_memory(out, scores) and not (out.ctypes.data == scores.ctypes.data and scores.dtype == np.float64
                                              and scores.flags.c_contiguous):
        raise ValueError("out overlaps scores: it must be scores itself or separate memory")
    chunk = max(16, (1 << 14) // max(K, 1))
    statuses = run_locked(_vector_scale, as_kernel_array(scores), HALF_TABLE, scale, bias, out, chunk,
                          N * K >= (1 << 16))
    bad = statuses[statuses[:, 0] != OK]
    if bad.shape[0] == 0:
        return (OK, -1, -1, 0.0)
    return status_tuple(bad[np.lexsort((bad[:, 2], bad[:, 1]))[0]])
