"""Numba twin of cpp/include/calibkit/stream.hpp: streaming state accumulation."""

from __future__ import annotations

import math

import numba
import numpy as np

from ._common import (
    CHUNK_ELEMENTS,
    OK,
    JIT,
    LABEL_OUT_OF_RANGE,
    MIN_PARALLEL_ELEMENTS,
    PROBABILITY_OUT_OF_RANGE,
    SCORE_NOT_FINITE,
    HALF_TABLE,
    as_kernel_array,
    check_float_dtype,
    f64_bits,
    group_size,
    is_finite,
    load,
    merge_status,
    run_locked,
    specialised,
    status_tuple,
    valid_probability,
)
from . import binning
from .smooth import BLOCK as SMOOTH_BLOCK, _add, _flush, _grid_sizes, smooth_grid, smooth_grid_checked_rows
from .binning import (
    ROWS_SINGLE, SHORT_ROW, _classwise_spec, _top_label_chunk, check_weight, equal_width_inner, find_bin, for_rows,
    top_label_stats,
)

# P(X <= k) for X ~ Poisson(1), k = 0..14 (as in stream.hpp).
POISSON1_CDF = np.array([
    0.36787944117144233, 0.7357588823428847, 0.9196986029286058, 0.9810118431238462, 0.9963401531726563,
    0.9994058151824183, 0.999916758850712, 0.9999897508033253, 0.999998874797402, 0.9999998885745217,
    0.9999999899522336, 0.9999999991683892, 0.9999999999364022, 0.9999999999954802, 0.9999999999997,
])

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(inline="always", **JIT)
def mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always", **JIT)
def poisson1(u, cdf):
    k = 0
    while k < 15 and u >= cdf[k]:
        k += 1
    return k


@numba.njit(inline="always", **JIT)
def fine_rank(d, bits, levels):
    """As FineGrid::rank in stream.hpp: exponent and leading mantissa bits read from the bits of d."""
    u = f64_bits(d)
    exponent = ((u >> 52) & 0x7FF) - 1023  # d in [2^exponent, 2^(exponent+1))
    level = -exponent - 2  # 0 for d in [1/4, 1/2)
    if level < 0:
        return (levels << bits) - 1  # d == 1/2
    if level >= levels:
        return 0
    mantissa = (u >> (52 - bits)) & ((1 << bits) - 1)
    return ((levels - 1 - level) << bits) + mantissa


@numba.njit(inline="always", **JIT)
def fine_bin(c, bits, levels):
    size = 2 * (levels << bits)
    if not (c > 0.0):
        return 0
    if not (c < 1.0):
        return size - 1
    if c <= 0.5:
        return fine_rank(c, bits, levels)
    return size - 1 - fine_rank(1.0 - c, bits, levels)


@numba.njit(inline="always", **JIT)
def _add_row(c, y, w, inner, fine_bits, fine_levels, M, R, bins, fine, sq, has_sq):
    """add_stream_row: one checked row (confidence c, target y, weight w) into the bins, the fine sums and, with
    has_sq, the squares sum w^2 and sum w^2 c (1 - c) per bin (w = 1 gives the same bits). Returns its bin."""
    b = find_bin(c, inner, True)
    # unsigned indices (all >= 0): Numba adds no negative-index wraparound to them (2.5 us of a 1024-row update)
    ub = np.uint64(b)
    uf = np.uint64(fine_bin(c, fine_bits, fine_levels))
    uM = np.uint64(M)
    uR = np.uint64(R)
    bins[ub] += 1.0
    bins[uM + ub] += w
    bins[uM + uM + ub] += w * c
    bins[uM + uM + uM + ub] += w * y
    fine[uf] += 1.0
    fine[uR + uf] += w
    fine[uR + uR + uf] += w * c
    fine[uR + uR + uR + uf] += w * y
    fine[uR + uR + uR + uR + uf] += w * abs(y - c)
    if has_sq:
        ww = w * w
        sq[ub] += ww
        sq[uM + ub] += ww * (c * (1.0 - c))
    return b


@numba.njit(**JIT)
def _chunk(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed, cdf, table,
           begin, end, bins, fine, boot, st, sq, has_sq):
    M = n_bins
    R = 2 * (fine_levels << fine_bits)
    for i in range(begin, end):
        t = np.int64(target[i])
        if t != 0 and t != 1:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(t))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        c = load(conf[i], table)
        if not valid_probability(c):
            merge_status(st, PROBABILITY_OUT_OF_RANGE if is_finite(c) else SCORE_NOT_FINITE, i, -1, c)
            continue
        y = float(t)
        b = _add_row(c, y, w, inner, fine_bits, fine_levels, M, R, bins, fine, sq, has_sq)
        if n_boot > 0:
            _boot_row(seed, offset + np.uint64(i), n_boot, M, b, c, y, w, cdf, boot)


@numba.njit(inline="always", **JIT)
def _boot_row(seed, position, n_boot, M, b, c, y, w, cdf, boot):
    """stream_boot_row: the Poisson(1) bootstrap replicates of one row (bin b, confidence c, target y, weight w)."""
    key = mix64(seed ^ mix64(position))
    for r in range(0, n_boot, 2):
        h = mix64(key + np.uint64(r // 2 + 1) * _GOLDEN)
        for s in range(r, min(r + 2, n_boot)):
            word = (h >> np.uint64(32)) if s == r else (h & np.uint64(0xFFFFFFFF))
            k = poisson1(np.float64(word) * (1.0 / 4294967296.0), cdf)
            if k == 0:
                continue
            wk = w * k
            base = s * 3 * M
            boot[base + b] += wk
            boot[base + M + b] += wk * c
            boot[base + 2 * M + b] += wk * y


@numba.njit(inline="always", **JIT)
def _checked_rows(conf, target, weights, has_w, inner, n_bins, fine_bits, fine_levels, bins, fine, sq, has_sq):
    """The bins, fine sums and squares of the checked rows; inlined where has_w and has_sq are
    constants, so that the loop has no branch on them (as the Weighted instance of stream_rows_checked)."""
    M = n_bins
    R = 2 * (fine_levels << fine_bits)
    for i in range(conf.shape[0]):  # i >= 0: no wraparound of the row indices
        c = conf[i]
        y = float(target[i])
        w = weights[i] if has_w else 1.0
        _add_row(c, y, w, inner, fine_bits, fine_levels, M, R, bins, fine, sq, has_sq)


# The compile-time constants of the copies of the small-batch stream kernels (_stream_kernel), fixed per stream: a
# state with the squares sums (stream_rows_checked), smooth ECE grid sums (_top_label_small). None in the module's
# own functions, which read their has_sq and has_sm arguments instead.
SQUARED = None
SMOOTHED = None


@numba.njit(**JIT)
def stream_rows_checked(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed,
                        cdf, bins, fine, boot, sq, has_sq):
    """Twin of stream_rows_checked in stream.hpp: the rows (positions offset, offset + 1, ...) that a top-label pass has checked
    (confidences within a probability's tolerance of [0, 1], 0/1 targets, weights finite and >= 0) into the
    state without checking them again, the weights branch taken once per call (not per row), the bootstrap
    replicates in a second loop over the rows. Every state element gets _chunk's adds in row order: the same
    bits. A 1024-row batch: 14.4 -> 11.4 us against _chunk (in-process A/B, CPU time). A copy (_stream_kernel)
    has has_sq as the compile-time constant SQUARED: it compiles two loops (weighted or not) without a branch
    on it, not four (the module's own function branches on has_sq per row)."""
    squared = has_sq if SQUARED is None else SQUARED
    if has_w:
        _checked_rows(conf, target, weights, True, inner, n_bins, fine_bits, fine_levels, bins, fine, sq, squared)
    else:
        _checked_rows(conf, target, weights, False, inner, n_bins, fine_bits, fine_levels, bins, fine, sq, squared)
    if n_boot > 0:
        for i in range(conf.shape[0]):
            c = conf[i]
            _boot_row(seed, offset + np.uint64(i), n_boot, n_bins, find_bin(c, inner, True), c, float(target[i]),
                      weights[i] if has_w else 1.0, cdf, boot)


@numba.njit(**JIT)
def _small(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed, cdf, table,
           bins, fine, boot, sq, has_sq):
    """One chunk: check every row first, then add straight into the state (as stream.hpp)."""
    n = conf.shape[0]
    st = np.array([0.0, -1.0, -1.0, 0.0])
    for i in range(n):
        t = np.int64(target[i])
        if t != 0 and t != 1:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(t))
            return st
        if has_w and not check_weight(weights[i], i, st):
            return st
        c = load(conf[i], table)
        if not valid_probability(c):
            merge_status(st, PROBABILITY_OUT_OF_RANGE if is_finite(c) else SCORE_NOT_FINITE, i, -1, c)
            return st
    # np.int64(0), not a literal 0 (a signature of its own): the chunk's signature of _driver's calls
    _chunk(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed, cdf, table,
           np.int64(0), n, bins, fine, boot, st, sq, has_sq)
    return st


@numba.njit(parallel=True, **JIT)
def _driver(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed, cdf, table,
            parallel, has_sq):
    N = conf.shape[0]
    chunk = CHUNK_ELEMENTS
    n_chunks = (N + chunk - 1) // chunk
    nb, nf, nr = 4 * n_bins, 5 * 2 * (fine_levels << fine_bits), 3 * n_boot * n_bins
    nq = 2 * n_bins if has_sq else 0
    bins = np.zeros(nb)
    sq = np.zeros(max(nq, 1))
    fine = np.zeros(nf)
    boot = np.zeros(max(nr, 1))
    st = np.array([0.0, -1.0, -1.0, 0.0])
    group = group_size(n_chunks, nb + nf + nr + nq)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        p_bins = np.zeros((g, nb))
        p_fine = np.zeros((g, nf))
        p_boot = np.zeros((g, max(nr, 1)))
        p_sq = np.zeros((g, max(nq, 1)))
        p_st = np.zeros((g, 4))
        if parallel:
            for j in numba.prange(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _chunk(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed,
                       cdf, table, c * chunk, min(N, (c + 1) * chunk), p_bins[j], p_fine[j], p_boot[j], p_st[j],
                       p_sq[j], has_sq)
        else:
            for j in range(g):
                p_st[j, 1] = -1.0
                p_st[j, 2] = -1.0
                c = first + j
                _chunk(conf, target, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot, seed,
                       cdf, table, c * chunk, min(N, (c + 1) * chunk), p_bins[j], p_fine[j], p_boot[j], p_st[j],
                       p_sq[j], has_sq)
        for j in range(g):
            for k in range(nb):
                bins[k] += p_bins[j, k]
            for k in range(nf):
                fine[k] += p_fine[j, k]
            for k in range(nr):
                boot[k] += p_boot[j, k]
            for k in range(nq):
                sq[k] += p_sq[j, k]
            merge_status(st, int(p_st[j, 0]), int(p_st[j, 1]), int(p_st[j, 2]), p_st[j, 3])
    return bins, fine, boot, sq, st


def _state(a, name, shape):
    if not isinstance(a, np.ndarray) or a.dtype != np.float64:
        raise TypeError(f"{name} must be float64")
    if not a.flags.c_contiguous or not a.flags.writeable or a.shape != shape:
        raise ValueError(f"{name} must be a writeable C-contiguous array of shape {shape}")
    return a.reshape(-1)


def stream_accumulate(confidence, target, sample_weight, offset, n_bins, fine_bits, fine_levels, n_boot, seed,
                      bins, fine, boot, squares=None):
    """Same contract as ``calibkit._core.stream_accumulate``."""
    if n_bins < 1 or not 0 <= fine_bits <= 20 or not 1 <= fine_levels <= 1000 or n_boot < 0:
        raise ValueError("invalid streaming configuration")
    check_float_dtype(confidence, "confidence")
    if confidence.ndim != 1:
        raise ValueError("confidence must be 1-D")
    if target.dtype not in (np.int64, np.uint8):
        raise TypeError(f"target must have dtype int64 or uint8, got {target.dtype}")
    n = confidence.shape[0]
    if target.ndim != 1 or target.shape[0] != n:
        raise ValueError("target must be 1-D with the length of confidence")
    if sample_weight is None:
        weights, has_w = np.empty(1), False
    else:
        if sample_weight.dtype != np.float64 or sample_weight.shape != (n,):
            raise ValueError("sample_weight must be a 1-D float64 array of length N")
        weights, has_w = sample_weight, True
    flat_bins = _state(bins, "bins", (4, n_bins))
    flat_fine = _state(fine, "fine", (5, 2 * (fine_levels << fine_bits)))
    flat_boot = _state(boot, "boot", (n_boot, 3, n_bins))
    has_sq = squares is not None
    flat_sq = _state(squares, "squares", (2, n_bins)) if has_sq else _NO_SQUARES
    if n <= CHUNK_ELEMENTS:
        # _small is serial (no threading layer): no lock, cheap on a busy machine.
        st = _small(as_kernel_array(confidence), target, weights, has_w, np.uint64(offset),
                    equal_width_inner(n_bins), int(n_bins), int(fine_bits), int(fine_levels), int(n_boot),
                    np.uint64(seed), POISSON1_CDF, HALF_TABLE, flat_bins, flat_fine, flat_boot, flat_sq, has_sq)
        return status_tuple(st)
    add_bins, add_fine, add_boot, add_sq, st = run_locked(
        _driver, as_kernel_array(confidence), target, weights, has_w, np.uint64(offset), equal_width_inner(n_bins),
        int(n_bins), int(fine_bits), int(fine_levels), int(n_boot), np.uint64(seed), POISSON1_CDF, HALF_TABLE,
        n >= MIN_PARALLEL_ELEMENTS, has_sq)
    if int(st[0]) == 0:
        flat_bins += add_bins
        flat_fine += add_fine
        if has_sq:
            flat_sq += add_sq
        if flat_boot.size:
            flat_boot += add_boot[: flat_boot.size]
    return status_tuple(st)


# -- the fused update of a top-label stream (twin of stream_top_label in stream.hpp) ------------------

_NO_INNER = np.zeros(0)
_NO_SQUARES = np.zeros(1)  # the squares state of a call without one (never written: has_sq is False)
_NO_CLASSWISE = np.zeros((0, 0, 0))  # the class-wise state of a call without class-wise bins
_inner_cache = {}  # n_bins -> inner edges (read only by the kernels)
_classwise_cache = {}  # (K, M) -> equal-width class-wise spec


def _cached_inner(n_bins):
    inner = _inner_cache.get(n_bins)
    if inner is None:
        if len(_inner_cache) > 64:
            _inner_cache.clear()
        inner = _inner_cache[n_bins] = equal_width_inner(n_bins)
    return inner


def _cached_classwise(K, M):
    spec = _classwise_cache.get((K, M))
    if spec is None:
        if len(_classwise_cache) > 64:
            _classwise_cache.clear()
        spec = _classwise_cache[(K, M)] = _classwise_spec(K, M, None)
    return spec


@numba.njit(**JIT)
def _top_label_small(scores, labels, weights, has_w, from_logits, single, nll_eps, inv_t, offset_bits, seed_bits,
                     table, cw_M, cw_inners, cw_uniform, cw_upper, inner, n_bins, fine_bits, fine_levels, n_boot, cdf,
                     bins2, fine2, boot3, totals, cw3, sq2, has_sq, sm_sizes, sm_offsets, sm2, has_sm):
    """A batch of one top-label chunk, serially: the chunk of binning's top-label pass (confidences,
    correctness, totals, class-wise bins), then the stream pass; the state changes only if both are clean.
    The arguments from ``table`` on are a :func:`_plan`'s (the state arrays as the accumulator holds them,
    checked by it) and the status is returned as a (code, row, col, value) tuple: one Numba entry call, no
    array returned to Python.
    ``offset_bits`` and ``seed_bits`` are the uint64 position and seed as int64 of the same bits (a Python
    int is typed without the cost of building a NumPy scalar). With ``has_sm``, the rows' smooth ECE grid sums
    (one smooth chunk: smooth_grid's, the same bits) are spread from the summaries and added to ``sm2``."""
    N, K = scores.shape
    offset = np.uint64(offset_bits)
    seed = np.uint64(seed_bits)
    bins = bins2.reshape(bins2.size)
    fine = fine2.reshape(fine2.size)
    boot = boot3.reshape(boot3.size)
    cw_state = cw3.reshape(cw3.size)
    sq = sq2.reshape(sq2.size)
    # the scratch in three allocations: the float sums and the status, the counts, the correctness
    KM = K * cw_M
    sums = np.zeros(13 + 3 * KM + N)
    st = sums[0:4]
    st[0] = OK
    st[1] = -1.0
    st[2] = -1.0
    wsum = sums[4:5]
    sconf = sums[5:6]
    scorr = sums[6:7]
    tot = sums[7:13]
    q_w = sums[13:13 + KM]
    q_score = sums[13 + KM:13 + 2 * KM]
    q_target = sums[13 + 2 * KM:13 + 3 * KM]
    conf = sums[13 + 3 * KM:]
    counts = np.zeros(1 + KM, np.int64)
    count = counts[0:1]
    q_count = counts[1:]
    correct = np.empty(N, np.uint8)
    _top_label_chunk(scores, labels, weights, has_w, from_logits, single, np.empty(0), np.int64(0), nll_eps,
                     np.bool_(True), inv_t, conf, correct, np.bool_(True), table, np.int64(0), N, count, wsum, sconf,
                     scorr, tot, st, cw_M, cw_inners, cw_uniform, cw_upper, q_count, q_w, q_score, q_target,
                     np.bool_(True))  # typed constants: the chunk's signature of every caller (see _top_label_chunk)
    if st[0] == OK:
        # Rows the top-label pass has checked (confidences within a probability's tolerance of [0, 1], 0/1
        # targets, clean weights): straight into the state, without checking them again.
        stream_rows_checked(conf, correct, weights, has_w, offset, inner, n_bins, fine_bits, fine_levels, n_boot,
                            seed, cdf, bins, fine, boot, sq, has_sq)
    if (has_sm if SMOOTHED is None else SMOOTHED) and st[0] == OK:  # a copy without smooth sums has no such call
        _stream_smooth(conf, correct, weights, has_w, sm_sizes, sm_offsets, sm2.reshape(sm2.size))
    if st[0] == OK:
        totals[0] += float(int(tot[0]))
        for t in range(1, 6):
            totals[t] += tot[t]
        for j in range(KM):
            cw_state[j] += q_w[j]
        for j in range(KM):
            cw_state[KM + j] += q_score[j]
        for j in range(KM):
            cw_state[2 * KM + j] += q_target[j]
    return int(st[0]), int(st[1]), int(st[2]), st[3]


@numba.njit(**JIT)
def _top_label_plain(scores, labels, weights, has_w, from_logits, single, nll_eps, inv_t, offset_bits, seed_bits,
                     table, inner, n_bins, fine_bits, fine_levels, n_boot, cdf, bins2, fine2, boot3, totals, sq2,
                     has_sq):
    """:func:`_top_label_small` of a stream without class-wise bins or smooth ECE grid sums: six arrays
    fewer to unbox per call (their empty stand-ins are made here)."""
    no_sizes = np.zeros(1, np.int64)
    # typed constants (np.int64, np.bool_), not literals: the signature of _top_label_small's other callers
    return _top_label_small(scores, labels, weights, has_w, from_logits, single, nll_eps, inv_t, offset_bits,
                            seed_bits, table, np.int64(0), np.zeros((1, 0)), np.bool_(True), np.zeros(0), inner,
                            n_bins, fine_bits, fine_levels, n_boot, cdf, bins2, fine2, boot3, totals,
                            np.zeros((0, 0, 0)), sq2, has_sq, no_sizes, no_sizes, np.zeros((1, 2)), np.bool_(False))


@numba.njit(**JIT)
def _stream_smooth(conf, correct, weights, has_w, sizes, offsets, state):
    """The smooth ECE grid sums of checked top-label rows (confidence, correctness, weight) as one chunk of
    smooth_grid, added to ``state``: the rows through smooth's blocks (_add, _flush; SmoothBlock in stream.hpp's
    fused_pass2), without the checks of smooth._smooth_chunk's binary rows, which these rows pass. The same
    adds in the same order as that chunk, so the same bits; its row paths of scores are not compiled. (The
    literal 2 channels, as that chunk had them: _flush is compiled for two channels only.)"""
    cells = np.zeros(state.shape[0])
    tot = np.zeros(2)
    buf = np.empty((SMOOTH_BLOCK, 4))
    n = np.int64(0)  # typed: a literal 0 would make _flush's last call a signature of its own
    for i in range(conf.shape[0]):
        n = _add(buf, n, conf[i], weights[i] if has_w else 1.0, np.float64(correct[i]))
        if n == SMOOTH_BLOCK:
            n = _flush(sizes, offsets, 2, buf, n, cells, tot)
    _flush(sizes, offsets, 2, buf, n, cells, tot)
    for j in range(state.shape[0]):
        state[j] += cells[j]


_F64 = np.dtype(np.float64)
_F16 = np.dtype(np.float16)
_I64 = np.dtype(np.int64)
_I63 = 1 << 63  # a Python int below this is its own int64 bits
_FLOAT_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def _int64_bits(u):
    """The int64 with the bits of the uint64 ``u`` (0 <= u < 2**64)."""
    u = int(u)
    if not 0 <= u < 1 << 64:
        raise ValueError(f"{u} does not fit in 64 unsigned bits")
    return u - (1 << 64) if u >= 1 << 63 else u


def _state_ok(a, shape):
    """True if ``a`` is a writeable C-contiguous float64 array of this shape (the cheap check;
    :func:`_state` names what is wrong)."""
    if type(a) is not np.ndarray or a.dtype != _F64 or a.shape != shape:
        return False
    flags = a.flags
    return flags.c_contiguous and flags.writeable


_plans = {}  # id(bins) -> _plan (which holds bins: the id is its own while the plan is kept)


def _plan(n_bins, fine_bits, fine_levels, n_boot, K, classwise_bins, bins, fine, boot, totals, classwise, squares,
          grids, smooth):
    """The checked configuration and state arrays of a stream's updates, kept (in ``_plans``) for its next ones.

    A plan is the tuple ``(bins, fine, boot, totals, squares, classwise, grids, smooth, config, chunk, cw_M,
    kernel, args, copies)``:
    the state arrays it checked (an update passing the very same objects, the same ``config`` =
    (n_bins, fine_bits, fine_levels, n_boot, classwise_bins, K) and the same cached smooth ``grids`` has its
    plan; a state replaced, e.g. by ``from_bytes`` or ``merge``, is checked again), the rows of one
    top-label chunk, the class-wise bins, and the small-batch kernel (:func:`_top_label_plain` without
    class-wise bins or smooth grid sums, else :func:`_top_label_small`) with its constant arguments, and the
    kernel's copies (:func:`_stream_kernel`) the stream's batches have run, by row path.
    """
    if n_bins < 1 or not 0 <= fine_bits <= 20 or not 1 <= fine_levels <= 1000 or n_boot < 0 or classwise_bins < 0:
        raise ValueError("invalid streaming configuration")
    R = 2 * (fine_levels << fine_bits)
    for a, name, shape in ((bins, "bins", (4, n_bins)), (fine, "fine", (5, R)), (boot, "boot", (n_boot, 3, n_bins)),
                           (totals, "totals", (6,))):
        if not _state_ok(a, shape):
            _state(a, name, shape)
    has_sq = squares is not None
    if has_sq and not _state_ok(squares, (2, n_bins)):
        _state(squares, "squares", (2, n_bins))
    cw_M = int(classwise_bins)
    if cw_M > 0:
        if not _state_ok(classwise, (3, K, cw_M)):
            _state(classwise, "classwise", (3, K, cw_M))
        cw_spec = _cached_classwise(K, cw_M)
        chunk = max(64 * cw_M, CHUNK_ELEMENTS // K)  # rows_per_chunk of the top-label driver
    else:
        if classwise is not None:
            raise ValueError("classwise needs classwise_bins >= 1")
        cw_spec = _NO_SPEC
        chunk = max(1, CHUNK_ELEMENTS // K)
    has_sm = smooth is not None
    if has_sm:
        sm_sizes, sm_offsets, n_cells = grids
        if not _state_ok(smooth, (n_cells, 2)):
            _state(smooth, "smooth", (n_cells, 2))
    else:
        sm_sizes, sm_offsets = _NO_SIZES, _NO_SIZES
    inner, sq_state = _cached_inner(n_bins), squares if has_sq else _NO_SQUARES
    if cw_M == 0 and not has_sm:
        kernel = _top_label_plain
        args = (HALF_TABLE, inner, int(n_bins), int(fine_bits), int(fine_levels), int(n_boot), POISSON1_CDF, bins,
                fine, boot, totals, sq_state, has_sq)
    else:
        kernel = _top_label_small
        args = (HALF_TABLE, cw_M, *cw_spec, inner, int(n_bins), int(fine_bits), int(fine_levels), int(n_boot),
                POISSON1_CDF, bins, fine, boot, totals, _NO_CLASSWISE if classwise is None else classwise, sq_state,
                has_sq, sm_sizes, sm_offsets, smooth if has_sm else _NO_SMOOTH, has_sm)
    plan = (bins, fine, boot, totals, squares, classwise, grids, smooth,
            (n_bins, fine_bits, fine_levels, n_boot, classwise_bins, K), chunk, cw_M, kernel, args, {})
    if len(_plans) >= 16:
        _plans.clear()
    _plans[id(bins)] = plan
    return plan


def stream_top_label(scores, labels, sample_weight, from_logits, nll_eps, inverse_temperature, offset, n_bins,
                     fine_bits, fine_levels, n_boot, seed, bins, fine, boot, totals, classwise_bins, classwise,
                     squares=None, smooth_grid_sizes=None, smooth=None):
    """Same contract as ``calibkit._core.stream_top_label``.

    A batch of at most one top-label chunk is one call of one serial jitted function (no threading layer,
    no lock, no array returned to Python); a larger one runs ``top_label_stats`` and ``stream_accumulate``
    one after the other (threaded). Both give the sums of the two separate calls, bit for bit. The batch's
    types and shapes are checked on every call (its values by the kernels); the configuration and the state
    arrays once per stream (:func:`_plan`, again when an array is replaced).
    """
    dtype = scores.dtype
    if dtype not in _FLOAT_DTYPES:
        check_float_dtype(scores, "scores")  # raises the TypeError naming the dtype
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError("scores must be 2-D with at least one column")
    N, K = scores.shape
    if labels.dtype != _I64 or labels.ndim != 1 or labels.shape[0] != N:
        raise ValueError("labels must be a 1-D int64 array of length N")
    inv_t = float(inverse_temperature)
    if not (inv_t > 0.0 and math.isfinite(inv_t)):
        raise ValueError("inverse_temperature must be a finite number > 0")
    if not from_logits and inv_t != 1.0:
        raise ValueError("inverse_temperature applies to logits only")
    if sample_weight is None:
        weights, has_w = _NO_WEIGHTS, False
    else:
        if sample_weight.dtype != _F64 or sample_weight.shape != (N,):
            raise ValueError("sample_weight must be a 1-D float64 array of length N")
        weights, has_w = sample_weight, True
    if (smooth_grid_sizes is None) != (smooth is None):
        raise ValueError("smooth_grid_sizes and smooth must be given together")
    if smooth is not None and from_logits and K < SHORT_ROW:
        # logit rows shorter than SHORT_ROW: the top-label pass and smooth_grid sum their exponentials in
        # different orders (and precisions): their grid sums keep their own pass (as stream.hpp)
        n_cells = _cached_grids(smooth_grid_sizes)[2]
        if not _state_ok(smooth, (n_cells, 2)):
            _state(smooth, "smooth", (n_cells, 2))
        st = stream_top_label(scores, labels, sample_weight, from_logits, nll_eps, inverse_temperature, offset,
                              n_bins, fine_bits, fine_levels, n_boot, seed, bins, fine, boot, totals, classwise_bins,
                              classwise, squares)
        if st[0] == OK:
            smooth += smooth_grid(scores, labels, sample_weight, True, smooth_grid_sizes, False, inv_t)["grid"]
        return st
    grids = None if smooth is None else _cached_grids(smooth_grid_sizes)
    plan = _plans.get(id(bins))
    if (plan is None or plan[0] is not bins or plan[1] is not fine or plan[2] is not boot or plan[3] is not totals
            or plan[4] is not squares or plan[5] is not classwise or plan[6] is not grids or plan[7] is not smooth
            or plan[8] != (n_bins, fine_bits, fine_levels, n_boot, classwise_bins, K)):
        plan = _plan(n_bins, fine_bits, fine_levels, n_boot, K, classwise_bins, bins, fine, boot, totals, classwise,
                     squares, grids, smooth)
    if N <= plan[9]:
        # the kernel's copy for the batch's row path (binning.for_rows; float32 / float16 logit rows of at least
        # SHORT_ROW elements: the single-precision path, as in binning.top_label_stats) and stream (_stream_kernel)
        logits = bool(from_logits)
        path = binning.rows_path(logits, K, dtype)
        kernel = plan[13].get(path)
        if kernel is None:
            kernel = plan[13][path] = _stream_kernel(plan[11], path, plan[10] > 0, plan[4] is not None,
                                                     plan[7] is not None)
        return kernel(
            scores.view(np.uint16) if dtype == _F16 else scores, labels, weights, has_w, logits, path == ROWS_SINGLE,
            float(nll_eps), inv_t, offset if type(offset) is int and 0 <= offset < _I63 else _int64_bits(offset),
            seed if type(seed) is int and 0 <= seed < _I63 else _int64_bits(seed), *plan[12])
    cw_M = plan[10]
    flat_totals = totals.reshape(-1)
    conf = np.empty(N)
    correct = np.empty(N, np.uint8)
    r = top_label_stats(scores, labels, sample_weight, bool(from_logits), 0, nll_eps, True, conf, correct, inv_t,
                        cw_M, None)
    if r["status"][0] != OK:
        return r["status"]
    st = stream_accumulate(conf, correct, sample_weight, offset, n_bins, fine_bits, fine_levels, n_boot, seed, bins,
                           fine, boot, squares)
    if st[0] != OK:
        return st
    if smooth is not None:  # the smooth grid sums from the rows' summaries, in smooth_grid's chunks (the scores are not read again)
        sm_sizes, sm_offsets, n_cells = grids
        cells, _ = smooth_grid_checked_rows(conf, correct, weights, has_w, K, sm_sizes, sm_offsets, n_cells)
        smooth += cells.reshape(n_cells, 2)
    t = r["totals"]
    flat_totals += (t["count"], t["weight"], t["correct"], t["confidence"], t["brier"], t["nll"])
    if cw_M > 0:
        flat_cw = classwise.reshape(-1)
        c = r["classwise"]
        KM = K * cw_M
        flat_cw[:KM] += c["weight"]
        flat_cw[KM:2 * KM] += c["sum_score"]
        flat_cw[2 * KM:] += c["sum_target"]
    return st


def _stream_kernel(kernel, rows, classwise, squared, smoothed):
    """``kernel`` (:func:`_top_label_plain` or :func:`_top_label_small`) compiled for a batch's row path with or
    without class-wise bins (binning.for_rows), and for a stream with or without the squares sums and smooth
    ECE grid sums (SQUARED, SMOOTHED: _common.specialised), calling the copies of _top_label_small and
    stream_rows_checked for the same. Numba drops the other cases before typing them: a copy compiles two loops
    of stream_rows_checked (weighted or not, chosen per call), not four, and _stream_smooth only with smooth
    sums. The same Python code, so the same bits."""
    key = (kernel, rows, classwise, squared, smoothed)
    got = _stream_copies.get(key)  # lock-free once made
    if got is None:
        suffix = "_sq" if squared else "_nosq"
        checked = specialised(stream_rows_checked, suffix, {"SQUARED": bool(squared)})
        suffix += "_sm" if smoothed else ""
        got = specialised(for_rows(_top_label_small, rows, classwise), suffix,
                          {"SMOOTHED": bool(smoothed), "stream_rows_checked": checked})
        if kernel is _top_label_plain:
            got = specialised(for_rows(_top_label_plain, rows, classwise), suffix, {"_top_label_small": got})
        _stream_copies[key] = got
    return got


_stream_copies = {}  # (kernel, rows, classwise, squared, smoothed) -> _stream_kernel's copy
_NO_WEIGHTS = np.empty(1)
_NO_SPEC = _classwise_spec(1, 0, None)
_NO_SIZES = np.zeros(1, np.int64)
_NO_SMOOTH = np.zeros((1, 2))
_grids_cache = {}  # bytes of the grid sizes -> (sizes, offsets, cells)


def _cached_grids(grid_sizes):
    """smooth._grid_sizes (checked sizes, offsets, cells), cached by the sizes (an accumulator passes the same
    AUTO_GRID_SIZES with every batch)."""
    key = grid_sizes.tobytes() if type(grid_sizes) is np.ndarray and grid_sizes.dtype == _I64 else None
    got = _grids_cache.get(key) if key is not None else None
    if got is None:
        got = _grid_sizes(grid_sizes)
        if key is not None:
            if len(_grids_cache) > 16:
                _grids_cache.clear()
            _grids_cache[key] = got
    return got


# -- top-label statistics of a small input in one serial call (twin of top_label_stats for one chunk) -------


@numba.njit(**JIT)
def _top_label_one_chunk(scores, labels, weights, has_w, from_logits, single, inner, n_bins, nll_eps, with_nll,
                         inv_t, table, count, sums, tot, conf_out, correct_out, has_out, with_brier):
    """binning's top-label driver for an input of one chunk, serially and in one Numba entry call: the chunk's
    sums go into the zeroed ``count`` (M,), ``sums`` (3, M) (weight, sum confidence, sum correct) and ``tot``
    (6,), as the driver's partials of chunk 0 (added to zeros: the same bits). Returns the status tuple."""
    st = np.empty(4)
    st[0] = OK
    st[1] = -1.0
    st[2] = -1.0
    st[3] = 0.0
    N = scores.shape[0]
    none = np.empty(0)  # the outputs and class-wise arrays this call does not use (writeable, unlike globals)
    _top_label_chunk(scores, labels, weights, has_w, from_logits, single, inner, n_bins, nll_eps, with_nll, inv_t,
                     conf_out, correct_out, has_out, table, np.int64(0), N, count, sums[0], sums[1], sums[2], tot, st,
                     np.int64(0), np.empty((1, 0)), np.bool_(True), none, np.empty(0, np.int64), none, none, none,
                     with_brier)  # typed constants: the chunk's signature of every caller (see _top_label_chunk)
    return int(st[0]), int(st[1]), int(st[2]), st[3]


def _outputs_ok(scores, conf_out, correct_out):
    """Whether the fast path can write these per-row outputs (else binning's checks name what is wrong)."""
    if not (type(scores) is np.ndarray and scores.ndim == 2 and type(conf_out) is np.ndarray
            and type(correct_out) is np.ndarray and conf_out.dtype == _F64 and correct_out.dtype == _U8):
        return False
    n = (scores.shape[0],)
    if conf_out.shape != n or correct_out.shape != n:
        return False
    a, b = conf_out.flags, correct_out.flags
    return a.c_contiguous and a.writeable and b.c_contiguous and b.writeable


def top_label_stats_any(scores, labels, sample_weight, from_logits, n_bins, nll_eps, with_nll=True, conf_out=None,
                        correct_out=None, inverse_temperature=1.0, classwise_bins=0, class_edges=None,
                        with_brier=True):
    """``binning.top_label_stats`` (same contract, same bits), with a fast path for the common small call.

    An input of at most one chunk (rows_per_chunk(K) rows) asking for bins, totals and optionally the per-row
    outputs (writeable C-contiguous float64 and uint8 arrays of length N), without class-wise bins, runs
    :func:`_top_label_one_chunk`: one serial Numba entry call, no threading layer, no lock, three small
    arrays returned. Anything else (and any argument the fast path
    does not recognise, so that binning's checks name it) goes to ``binning.top_label_stats``.
    """
    if conf_out is None and correct_out is None:
        outputs_ok, out, out_correct = True, _NO_CONF, _NO_CORRECT
    else:
        outputs_ok, out, out_correct = _outputs_ok(scores, conf_out, correct_out), conf_out, correct_out
    if (outputs_ok and class_edges is None and classwise_bins == 0 and type(scores) is np.ndarray
            and type(labels) is np.ndarray and type(n_bins) is int and 0 <= n_bins <= _MAX_SMALL_BINS
            and scores.ndim == 2 and scores.dtype in _FLOAT_DTYPES and labels.dtype == _I64 and labels.ndim == 1):
        N, K = scores.shape
        inv_t = float(inverse_temperature)
        if (0 < K and N <= max(1, CHUNK_ELEMENTS // K) and labels.shape[0] == N
                and (inv_t == 1.0 or (from_logits and inv_t > 0.0 and math.isfinite(inv_t)))
                and (sample_weight is None or (type(sample_weight) is np.ndarray and sample_weight.dtype == _F64
                                               and sample_weight.shape == (N,)))):
            M = max(n_bins, 1)
            count = np.zeros(M, np.int64)
            sums = np.zeros((3, M))
            tot = np.zeros(6)
            path = binning.rows_path(from_logits, K, scores.dtype)
            status = for_rows(_top_label_one_chunk, path, False)(
                scores.view(np.uint16) if scores.dtype == _F16 else scores, labels,
                _NO_WEIGHTS if sample_weight is None else sample_weight, sample_weight is not None,
                bool(from_logits), path == ROWS_SINGLE, _cached_inner(n_bins) if n_bins > 0 else _NO_INNER, n_bins,
                float(nll_eps), bool(with_nll), inv_t, HALF_TABLE, count, sums, tot, out, out_correct,
                out is not _NO_CONF, bool(with_brier))
            if n_bins < M:
                count, sums = count[:0], sums[:, :0]
            t = tot.tolist()
            return {"count": count, "weight": sums[0], "sum_score": sums[1], "sum_target": sums[2],
                    "totals": {"count": int(t[0]), "weight": t[1], "correct": t[2], "confidence": t[3],
                               "brier": t[4] if with_brier else float("nan"),
                               "nll": t[5] if with_nll else float("nan")},
                    "status": status}
    return binning.top_label_stats(scores, labels, sample_weight, from_logits, n_bins, nll_eps, with_nll, conf_out,
                                   correct_out, inverse_temperature, classwise_bins, class_edges, with_brier)


_MAX_SMALL_BINS = 1 << 20  # MAX_BINS: the fast path allocates (3 M + M) values
_NO_CONF = np.empty(0)  # the per-row outputs of a call without them (never written: has_out is False)
_NO_CORRECT = np.empty(0, np.uint8)
_U8 = np.dtype(np.uint8)


# -- class-wise statistics of a small input in one serial call (twin of classwise_stats for one chunk) ---------

_MAX_CLASSWISE_CELLS = 1 << 26  # kMaxClasswiseBins: K * n_bins of a class-wise call


@numba.njit(**JIT)
def _classwise_one_chunk(scores, labels, weights, has_w, from_logits, single, table, cw_M, cw_inners, cw_uniform,
                         cw_upper, cw_count, cw_w, cw_score, cw_target):
    """binning's top-label driver without top-label bins (classwise_stats) for an input of one chunk, serially
    and in one Numba entry call: the class-wise sums go into the zeroed (K * M,) arrays, as the driver's
    partials of chunk 0 (added to zeros: the same bits). Returns the status tuple."""
    st = np.empty(4)
    st[0] = OK
    st[1] = -1.0
    st[2] = -1.0
    st[3] = 0.0
    N = scores.shape[0]
    none = np.empty(0)
    one = np.zeros(1)
    no = np.bool_(False)  # typed constants: the chunk's signature of every caller (see _top_label_chunk)
    _top_label_chunk(scores, labels, weights, has_w, from_logits, single, none, np.int64(0), 0.0, no, 1.0, none,
                     np.empty(0, np.uint8), no, table, np.int64(0), N, np.zeros(1, np.int64), one, np.zeros(1),
                     np.zeros(1), np.zeros(6), st, cw_M, cw_inners, cw_uniform, cw_upper, cw_count, cw_w, cw_score,
                     cw_target, no)  # the totals are not returned: no Brier term (as classwise_stats)
    return int(st[0]), int(st[1]), int(st[2]), st[3]


def classwise_stats_any(scores, labels, sample_weight, from_logits, n_bins, class_edges):
    """``binning.classwise_stats`` (same contract, same bits), with a fast path for the common small call.

    An input of at most one class-wise chunk (rows_per_chunk(K, 64 M) rows) with equal-width bins runs
    :func:`_classwise_one_chunk`: one serial Numba entry call, no threading layer, no lock. Anything else
    (and any argument the fast path does not recognise, so that binning's checks name it) goes to
    ``binning.classwise_stats``.
    """
    if (class_edges is None and type(scores) is np.ndarray and type(labels) is np.ndarray and type(n_bins) is int
            and 1 <= n_bins <= _MAX_SMALL_BINS and scores.ndim == 2 and scores.dtype in _FLOAT_DTYPES
            and labels.dtype == _I64 and labels.ndim == 1):
        N, K = scores.shape
        if (0 < K and K * n_bins <= _MAX_CLASSWISE_CELLS and N <= max(64 * n_bins, CHUNK_ELEMENTS // K)
                and labels.shape[0] == N
                and (sample_weight is None or (type(sample_weight) is np.ndarray and sample_weight.dtype == _F64
                                               and sample_weight.shape == (N,)))):
            KM = K * n_bins
            cw_count = np.zeros(KM, np.int64)
            cw_w = np.zeros(KM)
            cw_score = np.zeros(KM)
            cw_target = np.zeros(KM)
            cw_inners, cw_uniform, cw_upper = _cached_classwise(K, n_bins)
            path = binning.rows_path(from_logits, K, scores.dtype)
            status = for_rows(_classwise_one_chunk, path, True)(
                scores.view(np.uint16) if scores.dtype == _F16 else scores, labels,
                _NO_WEIGHTS if sample_weight is None else sample_weight, sample_weight is not None,
                bool(from_logits), path == ROWS_SINGLE, HALF_TABLE, n_bins, cw_inners, cw_uniform, cw_upper,
                cw_count, cw_w, cw_score, cw_target)
            return {"count": cw_count, "weight": cw_w, "sum_score": cw_score, "sum_target": cw_target,
                    "status": status}
    return binning.classwise_stats(scores, labels, sample_weight, from_logits, n_bins, class_edges)
