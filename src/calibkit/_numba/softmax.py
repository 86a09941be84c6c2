"""Numba twins of cpp/include/calibkit/softmax.hpp: fused NLL of scaled softmax and its derivatives."""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._common import (
    F32, HALF_TABLE, JIT, LABEL_OUT_OF_RANGE, MIN_PARALLEL_ELEMENTS, SCORE_NOT_FINITE,
    as_kernel_array, check_float_dtype, exp_f32, group_size, is_finite, lane_sums_f32, load, merge_status,
    LANE_FLUSH, _exp_f32_vec, exp_nonpositive, next_ticket, octet_sum, rows_per_chunk, run_locked, specialised,
    splat_ir, status_tuple,
)
from .binning import (
    DENSE_BLOCK, PARTIAL_ROW, _dense_block_copy, _weights_arg, check_weight, fold_status, new_status_rows,
)
from .uncertainty import EXP_MIN_F, _check_row, _load_f, _max_f

F32_INF = F32(np.inf)


@numba.njit(**JIT)
def _add_temperature_row(S, bt, u_label, w, min_t, acc):
    """add_temperature_row of softmax.hpp: the row's loss and derivatives 1-5 in b from S_j = sum e^t t^j
    (j = 0..5), w r^4 Var[z] (acc[8]) and the largest row range r = -min_t / bt (acc[9], a maximum)."""
    m1 = S[1] / S[0]
    m2 = S[2] / S[0]
    m3 = S[3] / S[0]
    m4 = S[4] / S[0]
    m5 = S[5] / S[0]
    k2 = max(m2 - m1 * m1, 0.0)
    k3 = m3 - 3.0 * m2 * m1 + 2.0 * m1 * m1 * m1
    k4 = m4 - 4.0 * m3 * m1 - 3.0 * m2 * m2 + 12.0 * m2 * m1 * m1 - 6.0 * (m1 * m1) * (m1 * m1)
    q1 = m1 * m1
    k5 = (m5 - 5.0 * m4 * m1 - 10.0 * m3 * m2 + 20.0 * m3 * q1 + 30.0 * m2 * m2 * m1
          - 60.0 * m2 * q1 * m1 + 24.0 * (q1 * q1) * m1)
    b2 = bt * bt
    r = -min_t / bt
    var = k2 / b2
    acc[0] += 1.0
    acc[1] += w
    acc[2] += w * (math.log(S[0]) - bt * u_label)
    acc[3] += w * (m1 / bt - u_label)
    acc[4] += w * (k2 / b2)
    acc[5] += w * (k3 / (b2 * bt))
    acc[6] += w * (k4 / (b2 * b2))
    acc[7] += w * (k5 / (b2 * b2 * bt))
    acc[8] += w * ((r * r) * (r * r) * var)
    acc[9] = max(acc[9], r)


@numba.njit(inline="always", **JIT)
def _min_f(buf, K):
    """The smallest of the first K values of a float row (eight lane minima: exact in any order, vectorised)."""
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = F32_INF
    K8 = K - K % 8
    for k0 in range(0, K8, 8):
        v0, v1, v2, v3 = buf[k0], buf[k0 + 1], buf[k0 + 2], buf[k0 + 3]
        v4, v5, v6, v7 = buf[k0 + 4], buf[k0 + 5], buf[k0 + 6], buf[k0 + 7]
        m0 = m0 if m0 < v0 else v0
        m1 = m1 if m1 < v1 else v1
        m2 = m2 if m2 < v2 else v2
        m3 = m3 if m3 < v3 else v3
        m4 = m4 if m4 < v4 else v4
        m5 = m5 if m5 < v5 else v5
        m6 = m6 if m6 < v6 else v6
        m7 = m7 if m7 < v7 else v7
    for k in range(K8, K):
        v = buf[k]
        m0 = m0 if m0 < v else v
    return min(min(min(m0, m1), min(m2, m3)), min(min(m4, m5), min(m6, m7)))


@numba.njit(**JIT)
def _sums_f(fbuf, K, best, bf, S, ebuf, tbuf):
    """temperature_sums_f of softmax.hpp: t = max(bf (z - best), EXP_MIN_F) and e^t (exp_f32) in float into
    tbuf / ebuf (their padding stays 0), then the float lane sums of e t^j (e t^j = (e t^(j-1)) t, as in C++),
    flushed into double every LANE_FLUSH elements, all six in one read of the buffers (lane_sums_f32, the C++
    order). Returns min bf (z - best) before the clamp: bf (min z - best) (the float rounding is monotone)."""
    shift = F32(best)
    for k in range(K):
        t = bf * (fbuf[k] - shift)
        t = t if t > EXP_MIN_F else EXP_MIN_F
        tbuf[k] = t
        ebuf[k] = exp_f32(t)
    S[0], S[1], S[2], S[3], S[4], S[5] = lane_sums_f32(ebuf, tbuf, ebuf.shape[0], 6)
    return np.float64(bf * (_min_f(fbuf, K) - shift))


@numba.njit(inline="always", **JIT)
def _add_powers_d(d, j, raw, valid):
    """Element of lane j of temperature_row (softmax.hpp): t = max(raw, -708), e = exp_nonpositive(t) (0 for a
    padding lane: valid False), e t^q (q = 0..5, successive products) added to d[q, j]."""
    t = max(raw, -708.0)
    e = exp_nonpositive(t) if valid else 0.0
    e1 = e * t
    e2 = e1 * t
    e3 = e2 * t
    d[0, j] += e
    d[1, j] += e1
    d[2, j] += e2
    d[3, j] += e3
    e4 = e3 * t
    d[4, j] += e4
    d[5, j] += e4 * t


@numba.njit(**JIT)
def _sums_d(scores, i, K, best, b, table, S, d):
    """The float64 path (temperature_row of softmax.hpp): double exp_nonpositive, element k of the whole
    octets in lane k % 8; for K % 8 != 0 the last octet is the one ending at K (lane l is element K - 8 + l,
    only the lanes past the whole octets counted), or for K < 8 the row itself padded with zeros; lanes
    combined by octet_sum. Returns min b (z - best)."""
    d[:, :] = 0.0
    lo = 0.0
    full = K - K % 8
    for k in range(full):
        raw = b * (load(scores[i, k], table) - best)
        lo = raw if raw < lo else lo
        _add_powers_d(d, k % 8, raw, True)
    if full < K:
        start = K - 8 if K >= 8 else 0
        first = 8 - K % 8 if K >= 8 else 0
        last = 8 if K >= 8 else K
        for j in range(8):
            valid = j >= first and j < last
            raw = b * (load(scores[i, start + j], table) - best) if valid else 0.0
            lo = raw if raw < lo else lo
            _add_powers_d(d, j, raw, valid)
    for q in range(6):
        S[q] = octet_sum(d[q])
    return lo


DENSE_ROWS = 8  # kDenseRows: dense rows summed together, one per float lane


def _temperature_dense_codegen(context, builder, signature, args):
    """LLVM IR of temperature_dense_lanes_f32 (temperature_dense_rows_f of softmax.hpp)."""
    arr = context.make_array(signature.args[0])(context, builder, args[0])
    out = context.make_array(signature.args[4])(context, builder, args[4])
    i64, f32, f64 = ir.IntType(64), ir.FloatType(), ir.DoubleType()
    L = DENSE_ROWS
    fvec, dvec = ir.VectorType(f32, L), ir.VectorType(f64, L)
    q = context.cast(builder, args[1], signature.args[1], types.int64)
    K = context.cast(builder, args[2], signature.args[2], types.int64)

    def c64(x):
        return ir.Constant(i64, x)

    splat = functools.partial(splat_ir, builder)

    bf = splat(args[3], fvec)
    stride = builder.sdiv(builder.extract_value(arr.strides, 0), c64(4))
    base = builder.gep(builder.bitcast(arr.data, f32.as_pointer()), [q])

    def column(k):
        ptr = builder.gep(base, [builder.mul(k, stride)])
        return builder.load(builder.bitcast(ptr, fvec.as_pointer()), align=4)

    fzero = ir.Constant(fvec, [0.0] * L)
    dzero = ir.Constant(dvec, [0.0] * L)
    lowest = ir.Constant(fvec, [float(EXP_MIN_F)] * L)
    # Read 1: the maxima (exact in any order) and finiteness (chk is NaN when some element is NaN or inf).
    v0 = column(c64(0))
    chk0 = builder.fsub(v0, v0)
    entry = builder.block
    mloop = builder.append_basic_block("tdense.max")
    mbody = builder.append_basic_block("tdense.max.body")
    mdone = builder.append_basic_block("tdense.max.done")
    builder.branch(mloop)
    builder.position_at_end(mloop)
    k = builder.phi(i64)
    mx = builder.phi(fvec)
    chk = builder.phi(fvec)
    builder.cbranch(builder.icmp_signed("<", k, K), mbody, mdone)
    builder.position_at_end(mbody)
    v = column(k)
    mx_new = builder.select(builder.fcmp_ordered(">", v, mx), v, mx)
    chk_new = builder.fadd(chk, builder.fsub(v, v))
    k_next = builder.add(k, c64(1))
    builder.branch(mloop)
    k.add_incoming(c64(1), entry)
    k.add_incoming(k_next, mbody)
    mx.add_incoming(v0, entry)
    mx.add_incoming(mx_new, mbody)
    chk.add_incoming(chk0, entry)
    chk.add_incoming(chk_new, mbody)
    builder.position_at_end(mdone)

    def element(kk, lo, p):
        """One class of the 8 rows: t = max(bf (z - max), -87), its minimum before the clamp, exp_f32, the
        float partials p_j += e t^j (successive products, as lane_sums_f32)."""
        raw = builder.fmul(bf, builder.fsub(column(kk), mx))
        lo_new = builder.select(builder.fcmp_ordered("<", raw, lo), raw, lo)
        t = builder.select(builder.fcmp_ordered(">", raw, lowest), raw, lowest)
        e = _exp_f32_vec(builder, t)
        p_new = [builder.fadd(p[0], e)]
        for j in range(1, 6):
            e = builder.fmul(e, t)
            p_new.append(builder.fadd(p[j], e))
        return lo_new, p_new

    # Read 2: class lane by class lane (lane l holds the classes l, l + 8, ...: its float partials and double
    # sums are its own), the partials flushed into double after every LANE_FLUSH / 8-th octet and after the last
    # octet (whose classes past K add nothing: + 0 leaves those sums unchanged).
    acc = cgutils.alloca_once(builder, dvec, size=6 * 8)  # in the entry block: once per function
    n_oct = builder.sdiv(builder.add(K, c64(7)), c64(8))
    last = builder.sub(n_oct, c64(1))
    flush_mask = c64(LANE_FLUSH // 8 - 1)
    lloop = builder.append_basic_block("tdense.lane")
    lbody = builder.append_basic_block("tdense.lane.body")
    oloop = builder.append_basic_block("tdense.oct")
    obody = builder.append_basic_block("tdense.oct.body")
    otail = builder.append_basic_block("tdense.oct.last")
    ldone = builder.append_basic_block("tdense.lane.done")
    pre = builder.block
    builder.branch(lloop)
    builder.position_at_end(lloop)
    lane = builder.phi(i64)
    lo_l = builder.phi(fvec)
    builder.cbranch(builder.icmp_signed("<", lane, c64(8)), lbody, ldone)
    builder.position_at_end(lbody)
    builder.branch(oloop)
    builder.position_at_end(oloop)
    o = builder.phi(i64)
    lo = builder.phi(fvec)
    p = [builder.phi(fvec) for _ in range(6)]
    a = [builder.phi(dvec) for _ in range(6)]
    builder.cbranch(builder.icmp_signed("<", o, last), obody, otail)
    builder.position_at_end(obody)  # octets before the last: every class exists
    lo_o, p_o = element(builder.add(builder.mul(o, c64(8)), lane), lo, p)
    o_next = builder.add(o, c64(1))
    flush = builder.icmp_signed("==", builder.and_(o_next, flush_mask), c64(0))
    a_o = [builder.select(flush, builder.fadd(a[j], builder.fpext(p_o[j], dvec)), a[j]) for j in range(6)]
    p_o = [builder.select(flush, fzero, p_o[j]) for j in range(6)]
    obody_end = builder.block
    builder.branch(oloop)
    o.add_incoming(c64(0), lbody)
    o.add_incoming(o_next, obody_end)
    lo.add_incoming(lo_l, lbody)
    lo.add_incoming(lo_o, obody_end)
    for j in range(6):
        p[j].add_incoming(fzero, lbody)
        p[j].add_incoming(p_o[j], obody_end)
        a[j].add_incoming(dzero, lbody)
        a[j].add_incoming(a_o[j], obody_end)
    builder.position_at_end(otail)  # the last octet: class 8 last + l may be past K (read K - 1, not added)
    kk = builder.add(builder.mul(last, c64(8)), lane)
    valid = builder.icmp_signed("<", kk, K)
    lo_t, p_t = element(builder.select(valid, kk, builder.sub(K, c64(1))), lo, p)
    lo_t = builder.select(valid, lo_t, lo)
    for j in range(6):
        a_j = builder.fadd(a[j], builder.fpext(builder.select(valid, p_t[j], p[j]), dvec))
        builder.store(a_j, builder.gep(acc, [builder.add(c64(8 * j), lane)]))
    lane_next = builder.add(lane, c64(1))
    otail_end = builder.block
    builder.branch(lloop)
    lane.add_incoming(c64(0), pre)
    lane.add_incoming(lane_next, otail_end)
    lo_l.add_incoming(fzero, pre)
    lo_l.add_incoming(lo_t, otail_end)
    builder.position_at_end(ldone)
    # octet_sum of every row: ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)).
    res = builder.bitcast(out.data, dvec.as_pointer())
    row_stride = builder.sdiv(builder.extract_value(out.strides, 0), c64(8 * L))
    for j in range(6):
        d = [builder.load(builder.gep(acc, [c64(8 * j + m)])) for m in range(8)]
        sj = builder.fadd(builder.fadd(builder.fadd(d[0], d[4]), builder.fadd(d[1], d[5])),
                          builder.fadd(builder.fadd(d[2], d[6]), builder.fadd(d[3], d[7])))
        builder.store(sj, builder.gep(res, [builder.mul(c64(j), row_stride)]), align=8)
    bad = builder.uitofp(builder.fcmp_unordered("uno", chk, chk), dvec)
    for j, vals in ((6, builder.fpext(mx, dvec)), (7, builder.fpext(lo_l, dvec)), (8, bad)):
        builder.store(vals, builder.gep(res, [builder.mul(c64(j), row_stride)]), align=8)
    return context.get_dummy_value()


@intrinsic
def temperature_dense_lanes_f32(typingctx, buf, q, K, bf, res):
    """The temperature sums of DENSE_ROWS rows held class-major in buf (a C-contiguous 2-D float32 array: class
    k of row r at buf[k, q + r], k < K, K >= 1), row r in float lane r (temperature_dense_rows_f of
    softmax.hpp): res[j, r] = S_j (j = 0..5) of _sums_f, res[6, r] the row's maximum, res[7, r] = min bf (z -
    max), res[8, r] = 1 when the row holds NaN / inf (its other results are then meaningless). res: a
    C-contiguous float64 array of shape (9, DENSE_ROWS). Each lane does _sums_f's float operations on its row
    in the same order (t, the clamp, exp_f32, e t^j by successive products into the float partial of class
    lane k % 8, the partials flushed into double every LANE_FLUSH classes and at the end, octet_sum's order):
    the same bits as the row path."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.float32 and buf.ndim == 2 and buf.layout == "C"):
        return None
    if not (isinstance(res, types.Array) and res.dtype == types.float64 and res.ndim == 2 and res.layout == "C"):
        return None
    if not (isinstance(q, types.Integer) and isinstance(K, types.Integer) and bf == types.float32):
        return None
    return types.none(buf, q, K, bf, res), _temperature_dense_codegen


# The row paths of the temperature sums. Which one an input takes is known before the call (_temperature_path),
# and the driver runs a copy of _temperature_chunk compiled for that path only (_temperature_driver_for): compiling
# the three for every signature made a cold cache's first fit twice as long.
T_DENSE = 0  # float32 / float16 rows adjacent in memory (a map): blocks of DENSE_ROWS rows in float lanes
T_SINGLE = 1  # other float32 / float16 rows: float exps, row by row
T_DOUBLE = 2  # float64 rows: double exps, row by row
_T_NAMES = ("dense", "single", "double")
TPATH = T_DOUBLE  # a global read as a compile-time constant: each copy has its own (the module's is never run)


def _temperature_path(scores, single):
    """The row path of the (kernel-ready) scores: the test _temperature_buffers makes for its dense buffer."""
    if single and scores.strides[0] == scores.itemsize and scores.shape[1] >= 2:
        return T_DENSE
    return T_SINGLE if single else T_DOUBLE


def _temperature_driver_for(path):
    """_temperature_driver calling the copy of _temperature_chunk compiled for ``path`` (_common.specialised)."""
    suffix = "_" + _T_NAMES[path]
    chunk = specialised(_temperature_chunk, suffix, {"TPATH": path})
    return specialised(_temperature_driver, suffix, {"_temperature_chunk": chunk})


@numba.njit(**JIT)
def _temperature_buffers(scores, single):
    """The row buffers of _temperature_chunk (fbuf, ebuf, tbuf: K rounded up to whole octets, zero padded;
    S; d; dbuf, the class-major block of dense float rows, empty otherwise; dres, the results of one group
    of DENSE_ROWS dense rows), allocated once per thread of a call and reused by all its chunks (a chunk
    overwrites every element it reads; the padding stays 0)."""
    K = scores.shape[1]
    Kp = (K + 7) // 8 * 8
    dense = single and scores.strides[0] == scores.itemsize and K >= 2
    return (np.zeros(Kp, np.float32), np.zeros(Kp, np.float32), np.zeros(Kp, np.float32), np.empty(6),
            np.zeros((6, 8)), np.zeros((K if dense else 0, DENSE_BLOCK), np.float32), np.zeros((9, DENSE_ROWS)))


@numba.njit(**JIT)
def _temperature_dense(scores, labels, weights, has_w, bf, table, begin, end, acc, st, fbuf, S, dbuf, dres):
    """Dense float rows (a segmentation map: rows adjacent, classes far apart), as temperature_dense_rows in
    softmax.hpp: blocks of DENSE_BLOCK rows copied class by class (contiguous reads, each cache line once) into
    the class-major float buffer, then DENSE_ROWS rows at a time, one per float lane
    (temperature_dense_lanes_f32: the bits of the row path's sums); the rows' checks and sums then taken row by
    row, in order, as the generic loop does (columns past the block's rows are computed, not used)."""
    K = scores.shape[1]
    i0 = begin
    while i0 < end:
        b_end = _dense_block_copy(scores, i0, end, table, dbuf)
        for q in range(0, b_end - i0, DENSE_ROWS):
            temperature_dense_lanes_f32(dbuf, q, K, bf, dres)
            for r in range(min(DENSE_ROWS, b_end - i0 - q)):
                i = i0 + q + r
                y = labels[i]
                if y < 0 or y >= K:
                    merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
                    continue
                w = weights[i] if has_w else 1.0
                if has_w and not check_weight(w, i, st):
                    continue
                if dres[8, r] != 0.0:
                    for k in range(K):
                        fbuf[k] = dbuf[k, q + r]
                    _check_row(fbuf, K, False, i, st)
                    continue
                for j in range(6):
                    S[j] = dres[j, r]
                u_label = np.float64(dbuf[y, q + r]) - dres[6, r]
                _add_temperature_row(S, np.float64(bf), u_label, w, dres[7, r], acc)
        i0 = b_end


@numba.njit(**JIT)
def _temperature_chunk(scores, labels, weights, has_w, b, single, table, begin, end, acc, st, fbuf, ebuf, tbuf, S, d,
                       dbuf, dres):
    K = scores.shape[1]
    bf = F32(b)
    if TPATH == T_DENSE:
        _temperature_dense(scores, labels, weights, has_w, bf, table, begin, end, acc, st, fbuf, S, dbuf, dres)
        return
    for i in range(begin, end):
        y = labels[i]
        if y < 0 or y >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        if TPATH == T_SINGLE:
            _load_f(scores, i, table, fbuf)
            mx, bad = _max_f(fbuf, K, False)
            if bad > 0:
                _check_row(fbuf, K, False, i, st)
                continue
            best = np.float64(mx)
            min_t = _sums_f(fbuf, K, best, bf, S, ebuf, tbuf)
            _add_temperature_row(S, np.float64(bf), np.float64(fbuf[y]) - best, w, min_t, acc)
        else:
            best = -np.inf
            bad = False
            for k in range(K):
                z = load(scores[i, k], table)
                if not is_finite(z):
                    merge_status(st, SCORE_NOT_FINITE, i, k, z)
                    bad = True
                    break
                if z > best:
                    best = z
            if bad:
                continue
            min_t = _sums_d(scores, i, K, best, b, table, S, d)
            _add_temperature_row(S, b, load(scores[i, y], table) - best, w, min_t, acc)


@numba.njit(**JIT)
def _new_partials(g, width):
    """The chunk partials of a group of g chunks (each row PARTIAL_ROW doubles or more apart: two chunks on two
    threads never write to one cache line), their statuses and a ticket counter for next_ticket, allocated once
    per call outside the parallel regions (in a ``parallel=True`` driver every ``np.zeros`` is a parallel region
    of its own) and cleared as they are folded."""
    return _zero_rows(g, width), new_status_rows(g), np.zeros(1, np.int64)


@numba.njit(**JIT)
def _zero_rows(g, width):
    """g rows of zeros, max(width, PARTIAL_ROW) doubles apart (allocated outside the parallel regions)."""
    return np.zeros((g, max(width, PARTIAL_ROW)))


@numba.njit(parallel=True, **JIT)
def _temperature_driver(scores, labels, weights, has_w, b, single, table, parallel):
    N, K = scores.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    group = group_size(n_chunks, 10)
    total, st, _ = _new_partials(1, 10)
    total, st = total[0], st[0]
    acc, p_st, ticket = _new_partials(group, 10)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        if parallel:
            # One parallel region per group; the threads take its chunks one at a time (next_ticket) while some
            # remain, each with its own row buffers (as _top_label_driver in binning.py).
            ticket[0] = 0
            for _t in numba.prange(g):
                j = next_ticket(ticket)
                if j < g:
                    fbuf, ebuf, tbuf, S, d, dbuf, dres = _temperature_buffers(scores, single)
                    while j < g:
                        c = first + j
                        _temperature_chunk(scores, labels, weights, has_w, b, single, table, c * chunk,
                                           min(N, (c + 1) * chunk), acc[j], p_st[j], fbuf, ebuf, tbuf, S, d, dbuf,
                                           dres)
                        j = next_ticket(ticket)
        else:
            fbuf, ebuf, tbuf, S, d, dbuf, dres = _temperature_buffers(scores, single)
            for j in range(g):
                c = first + j
                _temperature_chunk(scores, labels, weights, has_w, b, single, table, c * chunk,
                                   min(N, (c + 1) * chunk), acc[j], p_st[j], fbuf, ebuf, tbuf, S, d, dbuf, dres)
        for j in range(g):
            for t in range(9):
                total[t] += acc[j, t]
                acc[j, t] = 0.0
            total[9] = max(total[9], acc[j, 9])
            acc[j, 9] = 0.0
            fold_status(st, p_st, j)
    return total, st


def _check_inputs(scores, labels):
    check_float_dtype(scores, "scores")
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ValueError("scores must be 2-D with at least one column")
    if labels.dtype != np.int64 or labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError("labels must be a 1-D int64 array of length N")


def temperature_nll(scores, labels, sample_weight, inverse_temperature):
    """Same contract as ``calibkit._core.temperature_nll``."""
    _check_inputs(scores, labels)
    b = float(inverse_temperature)
    if not (b > 0.0 and math.isfinite(b)):
        raise ValueError("inverse_temperature must be a positive finite number")
    N, K = scores.shape
    weights, has_w = _weights_arg(sample_weight, N)
    single = scores.dtype != np.float64
    scores = as_kernel_array(scores)
    total, st = run_locked(_temperature_driver_for(_temperature_path(scores, single)), scores, labels, weights,
                           has_w, b, single, HALF_TABLE, N * K >= MIN_PARALLEL_ELEMENTS)
    loss, d1, d2, d3, d4, d5 = (float(v) for v in total[2:8])
    if single:  # the sums were taken at float(b): moved to b as in the C++ kernel
        h = b - float(np.float32(b))
        loss += h * (d1 + h * (d2 / 2.0 + h * d3 / 6.0))
        d1 += h * (d2 + h * d3 / 2.0)
        d2 += h * d3
        d3 += h * d4
        d4 += h * d5
    return {"count": float(total[0]), "weight": float(total[1]), "loss": loss, "d1": d1, "d2": d2, "d3": d3,
            "d4": d4, "d5": d5, "r4d2": float(total[8]), "range": float(total[9]), "status": status_tuple(st)}


@numba.njit(**JIT)
def _vector_buffers(K):
    """Per-thread row buffers of _vector_chunk, K rounded up to whole octets: z (the row, zero padded), e, the
    chunk's gradient sums gs and gb, and the eight lane sums."""
    n = (K + 7) // 8 * 8
    return np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(8)


@numba.njit(**JIT)
def _vector_chunk(scores, labels, weights, has_w, a, c, table, begin, end, acc, grad_scale, grad_bias, st, z, e, gs,
                  gb, lanes):
    """vector_scaling_chunk of softmax.hpp, in its order of operations: the row loaded once into the padded double
    buffer z; z' = a z + c and its maximum over the padded row (a = 0, c = -inf beyond K); e = exp_nonpositive(z' -
    max) (padding: the clamp's 3.3e-308, as in C++); its total by lanes k % 8 (octet_sum); the gradient sums of
    the chunk in gs / gb (the label's -w added after the row's sweep), added to the chunk's partial at the end."""
    K = scores.shape[1]
    n = z.shape[0]
    for k in range(n):
        gs[k] = 0.0
        gb[k] = 0.0
    for i in range(begin, end):
        y = labels[i]
        if y < 0 or y >= K:
            merge_status(st, LABEL_OUT_OF_RANGE, i, -1, float(y))
            continue
        w = weights[i] if has_w else 1.0
        if has_w and not check_weight(w, i, st):
            continue
        for k in range(K):
            z[k] = load(scores[i, k], table)
        chk = 0.0
        best = -np.inf
        for k in range(n):
            v = z[k]
            chk += v - v
            t = a[k] * v + c[k]
            e[k] = t
            best = t if t > best else best
        if chk != 0.0:  # NaN: some element is NaN or inf (the first one is reported)
            for k in range(K):
                if not is_finite(z[k]):
                    merge_status(st, SCORE_NOT_FINITE, i, k, z[k])
                    break
            continue
        for k in range(n):
            e[k] = exp_nonpositive(e[k] - best)
        for q in range(8):
            lanes[q] = 0.0
        for k0 in range(0, n, 8):
            for q in range(8):
                lanes[q] += e[k0 + q]
        for k in range(K, n):
            e[k] = 0.0
        total = octet_sum(lanes)
        shifted_label = a[y] * z[y] + c[y] - best
        acc[0] += 1.0
        acc[1] += w
        acc[2] += w * (math.log(total) - shifted_label)
        inv = w / total
        for k in range(n):
            g = e[k] * inv
            gb[k] += g
            gs[k] += g * z[k]
        gb[y] -= w
        gs[y] -= w * z[y]
    for k in range(K):
        grad_bias[k] += gb[k]
        grad_scale[k] += gs[k]


@numba.njit(**JIT)
def _padded_parameters(scale, bias):
    """a and c padded to whole octets: a = 0 and c = -inf beyond K (padding never wins the maximum)."""
    K = scale.shape[0]
    n = (K + 7) // 8 * 8
    a = np.zeros(n)
    c = np.full(n, -np.inf)
    for k in range(K):
        a[k] = scale[k]
        c[k] = bias[k]
    return a, c


@numba.njit(parallel=True, **JIT)
def _vector_driver(scores, labels, weights, has_w, scale, bias, table, parallel):
    N, K = scores.shape
    chunk = rows_per_chunk(K, 1)
    n_chunks = (N + chunk - 1) // chunk
    group = group_size(n_chunks, 2 * K + 3)
    a, c = _padded_parameters(scale, bias)
    total, st, _ = _new_partials(1, 3)
    total, st = total[0], st[0]
    g_scale, g_bias = _zero_rows(1, K)[0], _zero_rows(1, K)[0]
    acc, p_st, ticket = _new_partials(group, 3)
    p_scale, p_bias = _zero_rows(group, K), _zero_rows(group, K)
    for first in range(0, n_chunks, group):
        g = min(group, n_chunks - first)
        if parallel:
            # as _temperature_driver: one region per group, chunks taken one at a time by ticket
            ticket[0] = 0
            for _t in numba.prange(g):
                j = next_ticket(ticket)
                if j < g:
                    z, e, gs, gb, lanes = _vector_buffers(K)
                    while j < g:
                        ch = first + j
                        _vector_chunk(scores, labels, weights, has_w, a, c, table, ch * chunk,
                                      min(N, (ch + 1) * chunk), acc[j], p_scale[j], p_bias[j], p_st[j], z, e, gs,
                                      gb, lanes)
                        j = next_ticket(ticket)
        else:
            z, e, gs, gb, lanes = _vector_buffers(K)
            for j in range(g):
                ch = first + j
                _vector_chunk(scores, labels, weights, has_w, a, c, table, ch * chunk, min(N, (ch + 1) * chunk),
                              acc[j], p_scale[j], p_bias[j], p_st[j], z, e, gs, gb, lanes)
        for j in range(g):
            for t in range(3):
                total[t] += acc[j, t]
                acc[j, t] = 0.0
            for k in range(K):
                g_scale[k] += p_scale[j, k]
                g_bias[k] += p_bias[j, k]
                p_scale[j, k] = 0.0
                p_bias[j, k] = 0.0
            fold_status(st, p_st, j)
    return total, g_scale[:K], g_bias[:K], st


def vector_scaling_nll(scores, labels, sample_weight, scale, bias):
    """Same contract as ``calibkit._core.vector_scaling_nll``."""
    _check_inputs(scores, labels)
    N, K = scores.shape
    for name, p in (("scale", scale), ("bias", bias)):
        if not isinstance(p, np.ndarray) or p.dtype != np.float64 or p.shape != (K,) or not p.flags.c_contiguous:
            raise ValueError(f"{name} must be a contiguous float64 array of length K")
    weights, has_w = _weights_arg(sample_weight, N)
    total, g_scale, g_bias, st = run_locked(_vector_driver, as_kernel_array(scores), labels, weights, has_w, scale,
                                            bias, HALF_TABLE, N * K * 3 >= MIN_PARALLEL_ELEMENTS)
    return {"count": float(total[0]), "weight": float(total[1]), "loss": float(total[2]), "grad_scale": g_scale,
            "grad_bias": g_bias, "status": status_tuple(st)}


__all__ = ["temperature_nll", "vector_scaling_nll"]
