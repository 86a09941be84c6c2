"""Shared pieces of the Numba kernels: float16 loads, chunking, status codes.

Mirrors cpp/include/calibkit/common.hpp and parallel.hpp: the same chunk
sizes and the same in-order combination of chunk partials, so the Numba
backend computes the same sums in the same order as the C++ one.
"""

from __future__ import annotations

import functools
import os
import threading
import types as pytypes

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .. import _backend

# All 65536 float16 bit patterns as float32: a float16 load is a table lookup.
HALF_TABLE = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

CHUNK_ELEMENTS = 1 << 15
MIN_PARALLEL_ELEMENTS = 1 << 16
MAX_GROUP = 256  # parallel.hpp's kMaxGroup: chunks per parallel region at most
GROUP_BUDGET_VALUES = 1 << 18  # parallel.hpp's kGroupBudgetValues

OK = 0
SCORE_NOT_FINITE = 1
PROBABILITY_OUT_OF_RANGE = 2
LABEL_OUT_OF_RANGE = 3
WEIGHT_NOT_FINITE = 4
WEIGHT_NEGATIVE = 5
PROBABILITY_TOLERANCE = 1e-6

JIT = dict(nogil=True, cache=True, fastmath=False)


def load(x, table):  # pragma: no cover - replaced by the overload inside jitted code
    raise NotImplementedError


@overload(load, inline="always")
def _load_overload(x, table):
    if isinstance(x, types.Integer) and x.bitwidth == 16 and not x.signed:
        return lambda x, table: np.float64(table[x])
    return lambda x, table: np.float64(x)


@numba.njit(inline="always", **JIT)
def valid_probability(p):
    return p >= -PROBABILITY_TOLERANCE and p <= 1.0 + PROBABILITY_TOLERANCE


@numba.njit(inline="always", **JIT)
def is_finite(v):
    return v - v == 0.0


@numba.njit(**JIT)
def rows_per_chunk(cols, min_rows):
    return max(min_rows, CHUNK_ELEMENTS // max(cols, 1))


@numba.njit(**JIT)
def group_size(n_chunks, partial_values):
    budget = GROUP_BUDGET_VALUES // max(partial_values, 1)
    return min(max(min(MAX_GROUP, budget), 4), n_chunks)


@intrinsic
def next_ticket(typingctx, counter):
    """``counter[0]++`` as one atomic read-modify-write (returns the old value) on a 1-D int64 array: the
    threads of a parallel region take the chunks of a group one at a time, as the C++ pool's ``next_``
    counter hands them out (a thread descheduled on a loaded machine leaves its chunks to the others,
    where prange's static split would make every thread wait for it)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", arr.data, ir.Constant(ir.IntType(64), 1), "seq_cst")

    return types.int64(counter), codegen


def _prefetch_intrinsic(name, write, locality, doc):
    """An intrinsic f(arr, i): llvm.prefetch of element i of a 1-D array (CALIBKIT_PREFETCH(p, write,
    locality)); i may be past the end: a prefetch never faults."""

    def typer(typingctx, arr, i):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            a = context.make_array(signature.args[0])(context, builder, args[0])
            i64, i32, i8p = ir.IntType(64), ir.IntType(32), ir.IntType(8).as_pointer()
            stride = cgutils.unpack_tuple(builder, a.strides, 1)[0]
            index = context.cast(builder, args[1], signature.args[1], types.int64)
            address = builder.add(builder.ptrtoint(a.data, i64), builder.mul(index, stride))
            fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p],
                                                  ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            builder.call(fn, [builder.inttoptr(address, i8p), ir.Constant(i32, int(write)),
                              ir.Constant(i32, locality), ir.Constant(i32, 1)])  # 1: the data cache
            return context.get_dummy_value()

        return types.void(arr, i), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


prefetch = _prefetch_intrinsic(
    "prefetch", False, 0,
    """prefetch(arr, i): a hint to read element i of a 1-D array into cache (CALIBKIT_PREFETCH(p, 0, 0): for
    reading, no temporal locality).""")
prefetch_for_read = _prefetch_intrinsic(
    "prefetch_for_read", False, 3,
    """prefetch_for_read(arr, i): a hint that element i of a 1-D array is about to be read (CALIBKIT_PREFETCH(p,
    0, 3): for reading, kept in every cache level).""")
prefetch_for_write = _prefetch_intrinsic(
    "prefetch_for_write", True, 3,
    """prefetch_for_write(arr, i): a hint that element i of a 1-D array is about to be written
    (CALIBKIT_PREFETCH(p, 1, 3): for writing, kept in every cache level).""")


@numba.njit(inline="always", **JIT)
def merge_status(st, code, row, col, value):
    """Keep the first problem in row-major order; st = float64 [code, row, col, value]. Inlined, to call
    _merge_status with typed arguments: callers pass codes (and columns) as literals, each combination of
    which was a signature of its own to compile."""
    _merge_status(st, np.int64(code), np.int64(row), np.int64(col), np.float64(value))


@numba.njit(**JIT)
def _merge_status(st, code, row, col, value):
    if code == OK:
        return
    if st[0] == OK or row < st[1] or (row == st[1] and col < st[2]):
        st[0] = code
        st[1] = row
        st[2] = col
        st[3] = value


# Single-precision exp: the same sequence of IEEE float operations as exp_f32
# in cpp/include/calibkit/simd.hpp, one value at a time, so both backends
# compute the same bits. (log_f32's twin, used only by the uncertainty kernels,
# is _log_f32 in _numba/uncertainty.py.)
F32 = np.float32
_EXP_MIN = F32(-87.0)
_SHIFTER = F32(12582912.0)
_LOG2E = F32(1.4426950408889634)
LN2_HI = F32(0.693145751953125)
LN2_LO = F32(0.6931471805599453 - 0.693145751953125)
# e^r = 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3) on |r| <= ln2/2 (simd.hpp's kExpC2F..kExpC5F)
_EXP_C5, _EXP_C4, _EXP_C3, _EXP_C2 = F32(0.00831253), F32(0.04189011), F32(0.16667114), F32(0.4999923)
_ONE = F32(1.0)


@intrinsic
def _pow2_f32(typingctx, n):
    """2^n as float32 for an integral n in [-126, 127] (float32, or float64 where a caller's buffer is float64):
    (n + 127) << 23 as the bits of a float, in 32-bit integers (as simd.hpp does), so that LLVM vectorises it."""
    if n not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127)), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(n), codegen


@intrinsic
def f64_bits(typingctx, x):
    """The bits of the float64 ``x`` as an int64 (std::memcpy of a double into an integer in C++)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@numba.njit(inline="always", **JIT)
def exp_f32(x):
    """exp(x) for float32 x <= 0 (see simd.hpp)."""
    x = x if x > _EXP_MIN else _EXP_MIN
    t = x * _LOG2E + _SHIFTER
    n = t - _SHIFTER
    r = x - n * LN2_HI
    r = r - n * LN2_LO
    p = _EXP_C4 + r * _EXP_C5
    p = _EXP_C3 + r * p
    p = _EXP_C2 + r * p
    p = _ONE + r * p
    p = _ONE + r * p
    # 2^n (n in [-126, 0]) exactly, built in the exponent bits as in simd.hpp: straight-line code that
    # LLVM vectorises in the kernels' lane loops.
    return p * _pow2_f32(n)


@intrinsic
def _pow2_f64(typingctx, n):
    """2^n as float64 for an integral float64 n in [-1022, 1023]: (n + 1023) << 52 as the bits of a double
    (exp_nonpositive in simd.hpp), straight-line code that LLVM vectorises."""
    if n != types.float64:
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = builder.shl(builder.add(builder.fptosi(args[0], i64), ir.Constant(i64, 1023)), ir.Constant(i64, 52))
        return builder.bitcast(bits, ir.DoubleType())

    return types.float64(n), codegen


@numba.njit(inline="always", **JIT)
def exp_nonpositive(x):
    """exp(x) for x <= 0 in double, clamped at -708: the same sequence of IEEE operations as exp_nonpositive in
    simd.hpp (Cody-Waite reduction, the degree-12 polynomial by Estrin's scheme, 2^n in the exponent bits), so
    the same bits; a loop of it vectorises."""
    x = x if x > -708.0 else -708.0
    t = x * 1.4426950408889634 + 6755399441055744.0
    n = t - 6755399441055744.0
    r = x - n * 6.93147180369123816490e-01
    r = r - n * 1.90821492927058770002e-10
    r2 = r * r
    r4 = r2 * r2
    r8 = r4 * r4
    q0 = 1.0 + r
    q1 = 1.0 / 2.0 + r * (1.0 / 6.0)
    q2 = 1.0 / 24.0 + r * (1.0 / 120.0)
    q3 = 1.0 / 720.0 + r * (1.0 / 5040.0)
    q4 = 1.0 / 40320.0 + r * (1.0 / 362880.0)
    q5 = 1.0 / 3628800.0 + r * (1.0 / 39916800.0)
    q6 = 1.0 / 479001600.0
    s0 = q0 + q1 * r2
    s1 = q2 + q3 * r2
    s2 = q4 + q5 * r2
    p = (s0 + s1 * r4) + (s2 + q6 * r4) * r8
    return p * _pow2_f64(n)


@numba.njit(**JIT)
def octet_sum(d):
    """The fixed combination order of the C++ octet_sum: lanes j and j + 4 first."""
    return ((d[0] + d[4]) + (d[1] + d[5])) + ((d[2] + d[6]) + (d[3] + d[7]))


# IEEE division (no ZeroDivisionError branch, which keeps LLVM from vectorising a loop with a division, as
# log_f32's): for functions whose every divisor is checked or positive by construction (s0 >= 1, K >= 1, b > 0).
JITF = dict(JIT, error_model="numpy")


def splat_ir(builder, x, vt):
    """LLVM IR: the scalar x in every lane of the vector type vt (or of vt lanes of x's type, given a count), an
    insertelement into lane 0 and a shufflevector with an all-zero mask (the broadcast LLVM lowers to one
    instruction). The one broadcast of every intrinsic here."""
    if isinstance(vt, int):
        vt = ir.VectorType(x.type, vt)
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(i32, 0))
    return builder.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, vt.count),
                                                                                [0] * vt.count))


def _lane_scan_codegen(two):
    """LLVM IR of the octet loop of _max_f (two=False) or _top_two_f (two=True) over the first K8 (a multiple
    of 8) elements of a contiguous float32 array, on <8 x float> vectors: lane j sees the elements k = j mod 8
    in index order, m_j = m_j > v ? m_j : v (s_j = max(s_j, min(m_j, v)) before it, with two), c_j += v - v,
    the same operations as the scalar lane code, so the same values. Numba does not vectorise those loops
    itself (a select-based maximum is not a reduction it may reorder without fast-math flags)."""
    def codegen(context, builder, signature, args):
        arr_t = signature.args[0]
        arr = context.make_array(arr_t)(context, builder, args[0])
        k8 = args[1]
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, 8)
        i64 = ir.IntType(64)
        neg = ir.Constant(vec, [float("-inf")] * 8)
        zero = ir.Constant(vec, [0.0] * 8)
        data = builder.bitcast(arr.data, f32.as_pointer())
        if not two:
            return _lane_max_blocked(context, builder, signature, data, k8, vec, neg, zero)
        entry = builder.block
        loop = builder.append_basic_block("lanes.loop")
        body = builder.append_basic_block("lanes.body")
        done = builder.append_basic_block("lanes.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        i = builder.phi(i64)
        m = builder.phi(vec)
        sv = builder.phi(vec)
        c = builder.phi(vec)
        builder.cbranch(builder.icmp_signed("<", i, k8), body, done)
        builder.position_at_end(body)
        ptr = builder.bitcast(builder.gep(data, [i]), vec.as_pointer())
        v = builder.load(ptr, align=4)
        if two:
            t = builder.select(builder.fcmp_ordered("<", m, v), m, v)
            s_new = builder.select(builder.fcmp_ordered(">", sv, t), sv, t)
        else:
            s_new = sv
        m_new = builder.select(builder.fcmp_ordered(">", m, v), m, v)
        c_new = builder.fadd(c, builder.fsub(v, v))
        i_new = builder.add(i, ir.Constant(i64, 8))
        builder.branch(loop)
        i.add_incoming(ir.Constant(i64, 0), entry)
        i.add_incoming(i_new, body)
        m.add_incoming(neg, entry)
        m.add_incoming(m_new, body)
        sv.add_incoming(neg, entry)
        sv.add_incoming(s_new, body)
        c.add_incoming(zero, entry)
        c.add_incoming(c_new, body)
        builder.position_at_end(done)
        out = []
        for vv in (m, sv, c):
            out.extend(builder.extract_element(vv, ir.Constant(ir.IntType(32), j)) for j in range(8))
        return context.make_tuple(builder, signature.return_type, out)
    return codegen


LANE_MAX_BLOCK = 4  # octets per block of lane_max_f32's loop: independent maxima, one per octet of a block


def _lane_max_blocked(context, builder, signature, data, k8, vec, neg, zero):
    """The octet loop of _max_f with LANE_MAX_BLOCK independent (m, c) vector pairs (octet u of each block of
    LANE_MAX_BLOCK octets in pair u, the last octets short of a block in pair 0), then combined per lane:
    m_j = m_j > m'_j ? m_j : m'_j and c_j += c'_j. A maximum is exact in any order (the signs of a zero
    maximum may differ, which no caller can see: -0 == 0, and z - (+-0) is the same number), and c_j is 0
    or NaN in any order, so the same values as the single chain; the pairs do not wait on one another."""
    i64 = ir.IntType(64)
    U = LANE_MAX_BLOCK
    entry = builder.block
    loop = builder.append_basic_block("lmax.loop")
    body = builder.append_basic_block("lmax.body")
    tail = builder.append_basic_block("lmax.tail")
    tail_body = builder.append_basic_block("lmax.tail.body")
    done = builder.append_basic_block("lmax.done")
    full = builder.sub(k8, builder.srem(k8, ir.Constant(i64, 8 * U)))
    builder.branch(loop)
    builder.position_at_end(loop)
    i = builder.phi(i64)
    m = [builder.phi(vec) for _ in range(U)]
    c = [builder.phi(vec) for _ in range(U)]
    builder.cbranch(builder.icmp_signed("<", i, full), body, tail)
    builder.position_at_end(body)
    m_new, c_new = [], []
    for u in range(U):
        ptr = builder.bitcast(builder.gep(data, [builder.add(i, ir.Constant(i64, 8 * u))]), vec.as_pointer())
        v = builder.load(ptr, align=4)
        m_new.append(builder.select(builder.fcmp_ordered(">", m[u], v), m[u], v))
        c_new.append(builder.fadd(c[u], builder.fsub(v, v)))
    i_new = builder.add(i, ir.Constant(i64, 8 * U))
    builder.branch(loop)
    i.add_incoming(ir.Constant(i64, 0), entry)
    i.add_incoming(i_new, body)
    for u in range(U):
        m[u].add_incoming(neg, entry)
        m[u].add_incoming(m_new[u], body)
        c[u].add_incoming(zero, entry)
        c[u].add_incoming(c_new[u], body)
    builder.position_at_end(tail)
    t = builder.phi(i64)
    tm = builder.phi(vec)
    tc = builder.phi(vec)
    builder.cbranch(builder.icmp_signed("<", t, k8), tail_body, done)
    builder.position_at_end(tail_body)
    v = builder.load(builder.bitcast(builder.gep(data, [t]), vec.as_pointer()), align=4)
    tm_new = builder.select(builder.fcmp_ordered(">", tm, v), tm, v)
    tc_new = builder.fadd(tc, builder.fsub(v, v))
    t_new = builder.add(t, ir.Constant(i64, 8))
    builder.branch(tail)
    t.add_incoming(i, loop)
    t.add_incoming(t_new, tail_body)
    tm.add_incoming(m[0], loop)
    tm.add_incoming(tm_new, tail_body)
    tc.add_incoming(c[0], loop)
    tc.add_incoming(tc_new, tail_body)
    builder.position_at_end(done)
    mm, cc = tm, tc
    for u in range(1, U):
        mm = builder.select(builder.fcmp_ordered(">", mm, m[u]), mm, m[u])
        cc = builder.fadd(cc, c[u])
    out = []
    for vv in (mm, neg, cc):
        out.extend(builder.extract_element(vv, ir.Constant(ir.IntType(32), j)) for j in range(8))
    return context.make_tuple(builder, signature.return_type, out)


@intrinsic
def lane_max_f32(typingctx, buf, k8):
    """(m_0..m_7, s_0..s_7 (all -inf), c_0..c_7) of the octet loop of _max_f (see _lane_scan_codegen)."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.float32 and buf.ndim == 1 and buf.layout == "C"):
        return None
    return types.UniTuple(types.float32, 24)(buf, types.int64), _lane_scan_codegen(False)


@intrinsic
def lane_top_two_f32(typingctx, buf, k8):
    """(m_0..m_7, s_0..s_7, c_0..c_7) of the octet loop of _top_two_f (see _lane_scan_codegen)."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.float32 and buf.ndim == 1 and buf.layout == "C"):
        return None
    return types.UniTuple(types.float32, 24)(buf, types.int64), _lane_scan_codegen(True)


def _prob_row_lanes_codegen(context, builder, signature, args):
    """LLVM IR of prob_row_lanes: the octets of row i on <8 x T> vectors (T the row's float type), lane j of the
    octet at column k holding element k + j; the masked octet ending at K last (its lanes below 8 - K % 8, all
    when K % 8 == 0, add nothing: 0 to the sums, -inf / +inf to the maxima / minima)."""
    i64, i32 = ir.IntType(64), ir.IntType(32)
    arr_t = signature.args[0]
    arr = context.make_array(arr_t)(context, builder, args[0])
    row = context.cast(builder, args[1], signature.args[1], types.int64)
    elem = context.get_value_type(arr_t.dtype)
    size = context.get_abi_sizeof(elem)
    vec, dvec, ivec = ir.VectorType(elem, 8), ir.VectorType(ir.DoubleType(), 8), ir.VectorType(i64, 8)
    lanes = ir.Constant(ivec, list(range(8)))

    splat = functools.partial(splat_ir, builder)

    K = builder.extract_value(arr.shape, 1)
    rest = builder.srem(K, ir.Constant(i64, 8))
    k8 = builder.sub(K, rest)
    base = builder.gep(builder.bitcast(arr.data, ir.IntType(8).as_pointer()),
                       [builder.mul(row, builder.extract_value(arr.strides, 0))])
    data = builder.bitcast(base, elem.as_pointer())

    def octet(k, s, m, n, a, valid=None):
        v = builder.load(builder.bitcast(builder.gep(data, [k]), vec.as_pointer()), align=size)
        vm, vn, vs = v, v, v
        if valid is not None:
            vm = builder.select(valid, v, ir.Constant(vec, [float("-inf")] * 8))
            vn = builder.select(valid, v, ir.Constant(vec, [float("inf")] * 8))
            vs = builder.select(valid, v, ir.Constant(vec, [0.0] * 8))
        d = vs if elem == ir.DoubleType() else builder.fpext(vs, dvec)
        s = builder.fadd(s, builder.fmul(d, d))
        greater = builder.fcmp_ordered(">", vm, m)
        m = builder.select(greater, vm, m)
        a = builder.select(greater, builder.add(splat(k, ivec), lanes), a)
        n = builder.select(builder.fcmp_ordered("<", vn, n), vn, n)
        return s, m, n, a

    start = (ir.Constant(dvec, [0.0] * 8), ir.Constant(vec, [float("-inf")] * 8),
             ir.Constant(vec, [float("inf")] * 8), ir.Constant(ivec, [0] * 8))
    entry = builder.block
    loop = builder.append_basic_block("prow.loop")
    body = builder.append_basic_block("prow.body")
    done = builder.append_basic_block("prow.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    phis = [builder.phi(c.type) for c in start]
    builder.cbranch(builder.icmp_signed("<", k, k8), body, done)
    builder.position_at_end(body)
    new = octet(k, *phis)
    k_next = builder.add(k, ir.Constant(i64, 8))
    builder.branch(loop)
    k.add_incoming(ir.Constant(i64, 0), entry)
    k.add_incoming(k_next, body)
    for phi, c, x in zip(phis, start, new):
        phi.add_incoming(c, entry)
        phi.add_incoming(x, body)
    builder.position_at_end(done)
    first = builder.select(builder.icmp_signed("==", rest, ir.Constant(i64, 0)), ir.Constant(i64, 8),
                           builder.sub(ir.Constant(i64, 8), rest))
    valid = builder.icmp_signed(">=", lanes, splat(first, ivec))
    s, m, n, a = octet(builder.sub(K, ir.Constant(i64, 8)), *phis, valid=valid)
    if elem != ir.DoubleType():
        m, n = builder.fpext(m, dvec), builder.fpext(n, dvec)
    out = []
    for vv in (s, m, n, builder.sitofp(a, dvec)):
        out.extend(builder.extract_element(vv, ir.Constant(i32, j)) for j in range(8))
    return context.make_tuple(builder, signature.return_type, out)


def prob_row_lanes_ok(scores):
    """prob_row_lanes reads this matrix type: float32 / float64, each row contiguous (layout C), aligned."""
    return (isinstance(scores, types.Array) and scores.ndim == 2 and scores.layout == "C" and scores.aligned
            and scores.dtype in (types.float32, types.float64))


@intrinsic
def prob_row_lanes(typingctx, scores, i):
    """The lanes of binning.hpp's summarize_prob_row over row i (K >= 8 elements) of a C-ordered float32 /
    float64 matrix: (s_0..s_7, m_0..m_7, n_0..n_7, a_0..a_7) in double, lane j's sum of squares, maximum (v > m:
    a lane keeps its first maximum, NaN never replaces it), minimum (NaN never replaces it) and the column of
    its maximum. Element k of the whole octets is in lane k % 8, element K - 8 + j of the octet ending at K in
    lane j from lane 8 - K % 8 on (as TailMask). The squares are summed in double, as the C++ kernel sums
    them, so the same bits; the maxima and minima are exact."""
    if not (prob_row_lanes_ok(scores) and isinstance(i, types.Integer)):
        return None
    return types.UniTuple(types.float64, 32)(scores, i), _prob_row_lanes_codegen


def _classwise_octets_codegen(weighted):
    """LLVM IR of classwise_octets_f32: binning.hpp's classwise_octets_f on <8 x float> / <8 x double> vectors."""
    def codegen(context, builder, signature, args):
        i64, f32, f64 = ir.IntType(64), ir.FloatType(), ir.DoubleType()
        vec, dvec = ir.VectorType(f32, 8), ir.VectorType(f64, 8)

        def data(j, elem):
            a = context.make_array(signature.args[j])(context, builder, args[j])
            return builder.bitcast(a.data, elem.as_pointer())

        splat = functools.partial(splat_ir, builder)

        e, sum0, weight0, lst = data(0, f32), data(5, f64), data(6, f64), data(7, i64)
        k8 = args[1]
        vtf, vs, vw = splat(args[2], vec), splat(args[3], dvec), splat(args[4], dvec)
        zero_f, one_f = ir.Constant(vec, [0.0] * 8), ir.Constant(vec, [1.0] * 8)
        entry = builder.block
        loop = builder.append_basic_block("cwo.loop")
        body = builder.append_basic_block("cwo.body")
        done = builder.append_basic_block("cwo.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        listed = builder.phi(i64)
        builder.cbranch(builder.icmp_signed("<", k, k8), body, done)
        builder.position_at_end(body)
        ev = builder.load(builder.bitcast(builder.gep(e, [k]), vec.as_pointer()), align=4)
        above = builder.fcmp_ordered(">", ev, vtf)
        cand = builder.zext(builder.bitcast(above, ir.IntType(8)), i64)
        pd = builder.fpext(builder.select(above, zero_f, ev), dvec)  # candidates add 0
        add = builder.fmul(pd, vs)
        if weighted:
            add = builder.fmul(add, vw)
        ptr = builder.bitcast(builder.gep(sum0, [k]), dvec.as_pointer())
        builder.store(builder.fadd(builder.load(ptr, align=8), add), ptr, align=8)
        if weighted:  # and no weight: w * 1 is w exactly
            wd = builder.fmul(builder.fpext(builder.select(above, zero_f, one_f), dvec), vw)
            ptr = builder.bitcast(builder.gep(weight0, [k]), dvec.as_pointer())
            builder.store(builder.fadd(builder.load(ptr, align=8), wd), ptr, align=8)
        builder.store(builder.or_(builder.shl(k, ir.Constant(i64, 8)), cand), builder.gep(lst, [listed]), align=8)
        listed_new = builder.add(listed, builder.zext(builder.icmp_unsigned("!=", cand, ir.Constant(i64, 0)), i64))
        k_next = builder.add(k, ir.Constant(i64, 8))
        builder.branch(loop)
        k.add_incoming(ir.Constant(i64, 0), entry)
        k.add_incoming(k_next, body)
        listed.add_incoming(ir.Constant(i64, 0), entry)
        listed.add_incoming(listed_new, body)
        builder.position_at_end(done)
        return listed
    return codegen


@intrinsic(prefer_literal=True)
def classwise_octets_f32(typingctx, e, k8, tf, scale, w, sum0, weight0, lst, weighted):
    """binning.hpp's classwise_octets_f: the octets [0, k8) (k8 a multiple of 8, at most K) of a row of float32
    exponentials into bin 0's sums of a shared-edge class-wise spec, for a literal ``weighted``: lane j of the
    octet at k is element k + j; an element above ``tf`` (float32) adds 0 to sum0 (and, weighted, to weight0),
    and each octet holding one is listed in ``lst`` (uint64, k8 / 8 entries at least) as k << 8 | one bit per
    lane above; the others add e * scale (times w, weighted) and w. Returns the number listed. The same
    operations, element by element, as the C++ lanes (widened to double, then the products and sums in double
    without fused multiply-adds), so the same bits."""
    if not (isinstance(weighted, types.BooleanLiteral) and _contiguous_f32(e) and isinstance(k8, types.Integer)):
        return None
    f64_c = [isinstance(a, types.Array) and a.dtype == types.float64 and a.ndim == 1 and a.layout == "C"
             for a in (sum0, weight0)]
    if not (all(f64_c) and isinstance(lst, types.Array) and lst.dtype == types.uint64 and lst.ndim == 1
            and lst.layout == "C"):
        return None
    inner = _classwise_octets_codegen(weighted.literal_value)

    def codegen(context, builder, signature, args):
        vals = list(args)
        for j, t in ((1, types.int64), (2, types.float32), (3, types.float64), (4, types.float64)):
            vals[j] = context.cast(builder, args[j], signature.args[j], t)
        return inner(context, builder, signature, vals)

    return types.int64(e, k8, tf, scale, w, sum0, weight0, lst, weighted), codegen


LANE_FLUSH = 64  # elements per flush of the float lane partials into double lanes (8 octets, as in C++)


def _octet_sum_ir(builder, d):
    """octet_sum of the eight double lanes of d, in IR: ((d0 + d4) + (d1 + d5)) + ((d2 + d6) + (d3 + d7))."""
    lane = [builder.extract_element(d, ir.Constant(ir.IntType(32), q)) for q in range(8)]
    lo = builder.fadd(builder.fadd(lane[0], lane[4]), builder.fadd(lane[1], lane[5]))
    hi = builder.fadd(builder.fadd(lane[2], lane[6]), builder.fadd(lane[3], lane[7]))
    return builder.fadd(lo, hi)


def _lane_sums_codegen(n):
    """LLVM IR of the float lane sums of two contiguous float32 arrays x, y over their first Kp (a multiple of
    8) elements, on <8 x float> vectors: p_0 = x_k, p_j = p_{j-1} * y_k (j < n), each added to its float lane
    partial a_j (element k in lane k % 8, in index order), the partials widened to double and added to the
    double lanes d_j after every LANE_FLUSH elements (and after the last), then each d_j combined in
    octet_sum's order. The same float operations, in the same order, as the scalar lane loops the C++ float
    paths are written against, so the same bits; Numba keeps those loops scalar itself."""
    def codegen(context, builder, signature, args):
        x_t, y_t = signature.args[0], signature.args[1]
        xa = context.make_array(x_t)(context, builder, args[0])
        ya = context.make_array(y_t)(context, builder, args[1])
        kp = args[2]
        f32 = ir.FloatType()
        f64 = ir.DoubleType()
        fvec = ir.VectorType(f32, 8)
        dvec = ir.VectorType(f64, 8)
        i64 = ir.IntType(64)
        fzero = ir.Constant(fvec, [0.0] * 8)
        dzero = ir.Constant(dvec, [0.0] * 8)
        xp = builder.bitcast(xa.data, f32.as_pointer())
        yp = builder.bitcast(ya.data, f32.as_pointer())
        entry = builder.block
        outer = builder.append_basic_block("lanesum.outer")
        outer_body = builder.append_basic_block("lanesum.outer.body")
        inner = builder.append_basic_block("lanesum.inner")
        inner_body = builder.append_basic_block("lanesum.inner.body")
        flush = builder.append_basic_block("lanesum.flush")
        done = builder.append_basic_block("lanesum.done")
        builder.branch(outer)
        # outer: one flush block of LANE_FLUSH elements (fewer at the end)
        builder.position_at_end(outer)
        f = builder.phi(i64)
        d = [builder.phi(dvec) for _ in range(n)]
        builder.cbranch(builder.icmp_signed("<", f, kp), outer_body, done)
        builder.position_at_end(outer_body)
        f_end = builder.add(f, ir.Constant(i64, LANE_FLUSH))
        stop = builder.select(builder.icmp_signed("<", f_end, kp), f_end, kp)
        builder.branch(inner)
        # inner: the octets of the block
        builder.position_at_end(inner)
        k = builder.phi(i64)
        a = [builder.phi(fvec) for _ in range(n)]
        builder.cbranch(builder.icmp_signed("<", k, stop), inner_body, flush)
        builder.position_at_end(inner_body)
        xv = builder.load(builder.bitcast(builder.gep(xp, [k]), fvec.as_pointer()), align=4)
        yv = builder.load(builder.bitcast(builder.gep(yp, [k]), fvec.as_pointer()), align=4) if n > 1 else None
        p = xv
        a_new = [builder.fadd(a[0], p)]
        for j in range(1, n):
            p = builder.fmul(p, yv)
            a_new.append(builder.fadd(a[j], p))
        k_new = builder.add(k, ir.Constant(i64, 8))
        builder.branch(inner)
        # flush: the float partials into the double lanes
        builder.position_at_end(flush)
        d_new = [builder.fadd(d[j], builder.fpext(a[j], dvec)) for j in range(n)]
        builder.branch(outer)
        f.add_incoming(ir.Constant(i64, 0), entry)
        f.add_incoming(stop, flush)
        k.add_incoming(f, outer_body)
        k.add_incoming(k_new, inner_body)
        for j in range(n):
            d[j].add_incoming(dzero, entry)
            d[j].add_incoming(d_new[j], flush)
            a[j].add_incoming(fzero, outer_body)
            a[j].add_incoming(a_new[j], inner_body)
        builder.position_at_end(done)
        return context.make_tuple(builder, signature.return_type, [_octet_sum_ir(builder, d[j]) for j in range(n)])
    return codegen


def _contiguous_f32(a):
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1 and a.layout == "C"


@intrinsic(prefer_literal=True)
def lane_sums_f32(typingctx, x, y, kp, n):
    """(S_0, ..., S_{n-1}), S_j = sum_k x_k y_k^j in double, of contiguous float32 arrays x, y over their first
    kp elements (a multiple of 8, at most their length; the caller pads with zeros), for a literal n in 1..6:
    the products chained in float (x_k y_k, then (x_k y_k) y_k, ...), each summed in float lane k % 8 and
    flushed into double lanes every LANE_FLUSH elements, the double lanes combined in octet_sum's order (see
    _lane_sums_codegen). x and y may be the same array (S_1 is then the sum of squares)."""
    if not (isinstance(n, types.IntegerLiteral) and 1 <= n.literal_value <= 6):
        return None
    if not (_contiguous_f32(x) and _contiguous_f32(y) and isinstance(kp, types.Integer)):
        return None
    count = n.literal_value

    def codegen(context, builder, signature, args):
        kp64 = context.cast(builder, args[2], signature.args[2], types.int64)
        inner = _lane_sums_codegen(count)
        sig = types.UniTuple(types.float64, count)(signature.args[0], signature.args[1], types.int64)
        return inner(context, builder, sig, [args[0], args[1], kp64])

    return types.UniTuple(types.float64, count)(x, y, kp, n), codegen


def _exp_lane_sums_codegen(count, use_b):
    """LLVM IR of exp_lane_sums_f32. A whole flush block (LANE_FLUSH = 64 elements) is four <16 x float> steps
    in straight-line code (the exps of two octets at once, as wide as this CPU's vectors go; each step's low
    octet is added to the float lane partials before its high one, so every lane takes its elements in index
    order), then the flush into the double lanes; the last block (under 64 elements) goes octet by octet, its
    elements past K masked to 0, then its flush."""
    def codegen(context, builder, signature, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        dvec = ir.VectorType(ir.DoubleType(), 8)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        xp = builder.bitcast(arr.data, f32.as_pointer())
        k_all = context.cast(builder, args[1], signature.args[1], types.int64)
        kp = builder.and_(builder.add(k_all, ir.Constant(i64, 7)), ir.Constant(i64, -8))
        full = builder.sub(k_all, builder.srem(k_all, ir.Constant(i64, LANE_FLUSH)))  # whole blocks of K, unmasked

        splat = functools.partial(splat_ir, builder)

        shift = {w: splat(args[2], w) for w in (8, 16)}
        b = {w: splat(args[3], w) for w in (8, 16)}
        fzero, dzero = ir.Constant(ir.VectorType(f32, 8), [0.0] * 8), ir.Constant(dvec, [0.0] * 8)
        k_vec, lanes8 = splat(k_all, 8), ir.Constant(ir.VectorType(i64, 8), list(range(8)))

        def exps(k, w, masked=False):  # exp_f32 (b (z - best)) of elements [k, k + w), stored back
            ptr = builder.bitcast(builder.gep(xp, [k]), ir.VectorType(f32, w).as_pointer())
            x = builder.fsub(builder.load(ptr, align=4), shift[w])
            e = _exp_f32_vec(builder, builder.fmul(b[w], x) if use_b else x)
            if masked:
                e = builder.select(builder.icmp_signed("<", builder.add(splat(k, 8), lanes8), k_vec), e, fzero)
            builder.store(e, ptr, align=4)
            return e

        def add(a, e):
            a = list(a)
            a[0] = builder.fadd(a[0], e)
            if count > 1:
                a[1] = builder.fadd(a[1], builder.fmul(e, e))
            return a

        def flush(d, a):
            return [builder.fadd(d[j], builder.fpext(a[j], dvec)) for j in range(count)]

        entry = builder.block
        outer = builder.append_basic_block("expsum.outer")
        block = builder.append_basic_block("expsum.block")
        tail = builder.append_basic_block("expsum.tail")
        tail_body = builder.append_basic_block("expsum.tail.body")
        done = builder.append_basic_block("expsum.done")
        builder.branch(outer)
        builder.position_at_end(outer)  # whole blocks of LANE_FLUSH elements
        f = builder.phi(i64)
        d = [builder.phi(dvec) for _ in range(count)]
        builder.cbranch(builder.icmp_signed("<", f, full), block, tail)
        builder.position_at_end(block)
        a = [fzero] * count
        for u in range(LANE_FLUSH // 16):
            e = exps(builder.add(f, ir.Constant(i64, 16 * u)), 16)
            for half in (range(8), range(8, 16)):
                a = add(a, builder.shuffle_vector(e, e, ir.Constant(ir.VectorType(i32, 8), list(half))))
        d_block = flush(d, a)
        f_next = builder.add(f, ir.Constant(i64, LANE_FLUSH))
        builder.branch(outer)
        f.add_incoming(ir.Constant(i64, 0), entry)
        f.add_incoming(f_next, block)
        for j in range(count):
            d[j].add_incoming(dzero, entry)
            d[j].add_incoming(d_block[j], block)
        builder.position_at_end(tail)  # the last octets, one at a time, then their flush
        k = builder.phi(i64)
        at = [builder.phi(fzero.type) for _ in range(count)]
        builder.cbranch(builder.icmp_signed("<", k, kp), tail_body, done)
        builder.position_at_end(tail_body)
        at_new = add(at, exps(k, 8, masked=True))
        k_next = builder.add(k, ir.Constant(i64, 8))
        builder.branch(tail)
        k.add_incoming(f, outer)
        k.add_incoming(k_next, tail_body)
        for j in range(count):
            at[j].add_incoming(fzero, outer)
            at[j].add_incoming(at_new[j], tail_body)
        builder.position_at_end(done)
        return context.make_tuple(builder, signature.return_type, [_octet_sum_ir(builder, dj) for dj in flush(d, at)])
    return codegen


@intrinsic(prefer_literal=True)
def exp_lane_sums_f32(typingctx, buf, K, best, bf, scaled, n):
    """binning.hpp summarize_logit_row_f's read 2 on a float row already in ``buf`` (contiguous float32, K values
    and room for (K + 7) // 8 * 8): e_k = exp_f32(z_k - best), or exp_f32(bf (z_k - best)) for a literal
    ``scaled`` True, written back over z_k (the padding up to a multiple of 8 set to 0), and (sum e_k) or
    (sum e_k, sum e_k^2) for a literal n of 1 or 2, in float lanes flushed into double lanes as
    lane_sums_f32 sums them. One pass over the row, where an exp loop then lane_sums_f32 read it twice; the
    same operations on every element (exp_f32's, then the lane sums'), so the same bits."""
    if not (isinstance(scaled, types.BooleanLiteral) and isinstance(n, types.IntegerLiteral)
            and n.literal_value in (1, 2) and _contiguous_f32(buf) and isinstance(K, types.Integer)
            and best == types.float32 and bf == types.float32):
        return None
    return (types.UniTuple(types.float64, n.literal_value)(buf, K, best, bf, scaled, n),
            _exp_lane_sums_codegen(n.literal_value, scaled.literal_value))


@intrinsic
def lane_find_f32(typingctx, buf, k8, value):
    """The start of the first octet of buf[:k8] (k8 a multiple of 8; a contiguous float32 array) holding an
    element equal to value, or k8 when none does: <8 x float> compares, one branch per octet. The caller
    finishes element by element (the first index of the maximum, NumPy's rule)."""
    if not (_contiguous_f32(buf) and isinstance(k8, types.Integer) and value == types.float32):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        k8v = context.cast(builder, args[1], signature.args[1], types.int64)
        f32 = ir.FloatType()
        vec = ir.VectorType(f32, 8)
        i64 = ir.IntType(64)
        target = splat_ir(builder, args[2], vec)
        data = builder.bitcast(arr.data, f32.as_pointer())
        entry = builder.block
        loop = builder.append_basic_block("find.loop")
        body = builder.append_basic_block("find.body")
        done = builder.append_basic_block("find.done")
        builder.branch(loop)
        builder.position_at_end(loop)
        k = builder.phi(i64)
        more = builder.icmp_signed("<", k, k8v)
        builder.cbranch(more, body, done)
        builder.position_at_end(body)
        v = builder.load(builder.bitcast(builder.gep(data, [k]), vec.as_pointer()), align=4)
        hits = builder.bitcast(builder.fcmp_ordered("==", v, target), ir.IntType(8))
        k_new = builder.add(k, ir.Constant(i64, 8))
        found = builder.icmp_unsigned("!=", hits, ir.Constant(ir.IntType(8), 0))
        k.add_incoming(ir.Constant(i64, 0), entry)
        k.add_incoming(k_new, body)
        body_end = builder.block
        builder.cbranch(found, done, loop)
        builder.position_at_end(done)
        res = builder.phi(i64)
        res.add_incoming(k, loop)
        res.add_incoming(k, body_end)
        return res

    return types.int64(buf, k8, value), codegen


def _exp_f32_vec(builder, x):
    """exp_f32 on a vector of floats: the same IEEE operations in the same order (no contraction, no fast-math
    flags), so every lane holds the bits of the scalar exp_f32."""
    vt = x.type
    lanes = vt.count

    def splat(value):
        return ir.Constant(vt, [float(F32(value))] * lanes)

    x = builder.select(builder.fcmp_ordered(">", x, splat(_EXP_MIN)), x, splat(_EXP_MIN))
    t = builder.fadd(builder.fmul(x, splat(_LOG2E)), splat(_SHIFTER))
    n = builder.fsub(t, splat(_SHIFTER))
    r = builder.fsub(x, builder.fmul(n, splat(LN2_HI)))
    r = builder.fsub(r, builder.fmul(n, splat(LN2_LO)))
    p = splat(_EXP_C5)
    for c in (_EXP_C4, _EXP_C3, _EXP_C2, _ONE, _ONE):
        p = builder.fadd(splat(c), builder.fmul(r, p))
    ivt = ir.VectorType(ir.IntType(32), lanes)
    bits = builder.shl(builder.add(builder.fptosi(n, ivt), ir.Constant(ivt, [127] * lanes)),
                       ir.Constant(ivt, [23] * lanes))
    return builder.fmul(p, builder.bitcast(bits, vt))


def _log_positive_ir(builder, x):
    """LLVM IR of simd.hpp's log_positive (log of a finite double x > 0) on a double or a vector of doubles: the
    exponent and mantissa from the bits (subnormals scaled by 2^54 first), the mantissa in [sqrt(2)/2, sqrt(2)),
    f = (m - 1) / (m + 1) and 2 f (1 + f^2/3 + ... + f^20/21) by Estrin's scheme, e ln2 in two parts. The same
    IEEE operations in the same order as the C++ (no contraction, no fast-math flags), so the same bits in every
    lane; the one body of the scalar log_positive and of nll_lanes."""
    vt = x.type
    lanes = vt.count if isinstance(vt, ir.VectorType) else None
    ivt = ir.IntType(64) if lanes is None else ir.VectorType(ir.IntType(64), lanes)

    def splat(value):
        return ir.Constant(vt, float(value) if lanes is None else [float(value)] * lanes)

    def isplat(value):
        return ir.Constant(ivt, int(value) if lanes is None else [int(value)] * lanes)

    tiny = builder.fcmp_ordered("<", x, splat(2.2250738585072014e-308))
    x = builder.select(tiny, builder.fmul(x, splat(18014398509481984.0)), x)
    bits = builder.bitcast(x, ivt)
    field = builder.or_(builder.and_(builder.lshr(bits, isplat(52)), isplat(0x7FF)), isplat(0x4330000000000000))
    e = builder.fsub(builder.bitcast(field, vt), splat(4503599627370496.0 + 1023.0))
    e = builder.fsub(e, builder.select(tiny, splat(54.0), splat(0.0)))
    m = builder.bitcast(builder.or_(builder.and_(bits, isplat(0x000FFFFFFFFFFFFF)), isplat(0x3FF0000000000000)), vt)
    big = builder.fcmp_ordered(">", m, splat(1.4142135623730951))
    m = builder.select(big, builder.fmul(m, splat(0.5)), m)
    e = builder.fadd(e, builder.select(big, splat(1.0), splat(0.0)))
    f = builder.fdiv(builder.fsub(m, splat(1.0)), builder.fadd(m, splat(1.0)))
    f2 = builder.fmul(f, f)
    f4 = builder.fmul(f2, f2)
    f8 = builder.fmul(f4, f4)

    def pair(c0, c1):  # c0 + f2 * c1
        return builder.fadd(splat(c0), builder.fmul(f2, splat(c1)))

    a0 = pair(1.0, 1.0 / 3.0)
    a1 = pair(1.0 / 5.0, 1.0 / 7.0)
    a2 = pair(1.0 / 9.0, 1.0 / 11.0)
    a3 = pair(1.0 / 13.0, 1.0 / 15.0)
    a4 = pair(1.0 / 17.0, 1.0 / 19.0)
    b0 = builder.fadd(a0, builder.fmul(a1, f4))
    b1 = builder.fadd(a2, builder.fmul(a3, f4))
    b2 = builder.fadd(a4, builder.fmul(splat(1.0 / 21.0), f4))
    series = builder.fadd(builder.fadd(b0, builder.fmul(b1, f8)), builder.fmul(builder.fmul(b2, f8), f8))
    log_m = builder.fmul(builder.fadd(f, f), series)
    return builder.fadd(builder.fmul(e, splat(6.93147180369123816490e-01)),
                        builder.fadd(log_m, builder.fmul(e, splat(1.90821492927058770002e-10))))


@intrinsic
def log_positive(typingctx, x):
    """log(x) for a finite float64 x > 0 (simd.hpp's log_positive, the same bits: _log_positive_ir); straight-line
    code that LLVM vectorises in a loop. Meaningless (but no error) for other x: callers pass x > 0."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return _log_positive_ir(builder, args[0])

    return types.float64(x), codegen


DENSE_ROWS = 8  # kDenseRows: rows summarised together, one per float lane


def _dense_lanes_codegen(context, builder, signature, args):
    arr = context.make_array(signature.args[0])(context, builder, args[0])
    out = context.make_array(signature.args[4])(context, builder, args[4])
    i64 = ir.IntType(64)
    i32 = ir.IntType(32)
    f32 = ir.FloatType()
    f64 = ir.DoubleType()
    L = DENSE_ROWS
    fvec = ir.VectorType(f32, L)
    dvec = ir.VectorType(f64, L)
    ivec = ir.VectorType(i32, L)
    q = context.cast(builder, args[1], signature.args[1], types.int64)
    K = context.cast(builder, args[2], signature.args[2], types.int64)

    splat = functools.partial(splat_ir, builder)

    b = splat(args[3], fvec)
    stride = builder.sdiv(builder.extract_value(arr.strides, 0), ir.Constant(i64, 4))
    base = builder.gep(builder.bitcast(arr.data, f32.as_pointer()), [q])

    def column(k):
        ptr = builder.gep(base, [builder.mul(k, stride)])
        return builder.load(builder.bitcast(ptr, fvec.as_pointer()), align=4)

    def c64(x):
        return ir.Constant(i64, x)

    fzero = ir.Constant(fvec, [0.0] * L)
    dzero = ir.Constant(dvec, [0.0] * L)
    # Read 1: the maxima, the first class holding each (strict >: NaN never replaces a maximum), NaN / inf
    # (v - v is NaN for those, and a NaN stays in the sum).
    v0 = column(c64(0))
    chk0 = builder.fsub(v0, v0)
    entry = builder.block
    mloop = builder.append_basic_block("dense.max")
    mbody = builder.append_basic_block("dense.max.body")
    mdone = builder.append_basic_block("dense.max.done")
    builder.branch(mloop)
    builder.position_at_end(mloop)
    k = builder.phi(i64)
    mx = builder.phi(fvec)
    arg = builder.phi(ivec)
    chk = builder.phi(fvec)
    builder.cbranch(builder.icmp_signed("<", k, K), mbody, mdone)
    builder.position_at_end(mbody)
    v = column(k)
    gt = builder.fcmp_ordered(">", v, mx)
    mx_new = builder.select(gt, v, mx)
    arg_new = builder.select(gt, splat(builder.trunc(k, i32), ivec), arg)
    chk_new = builder.fadd(chk, builder.fsub(v, v))
    k_new = builder.add(k, c64(1))
    builder.branch(mloop)
    k.add_incoming(c64(1), entry)
    k.add_incoming(k_new, mbody)
    mx.add_incoming(v0, entry)
    mx.add_incoming(mx_new, mbody)
    arg.add_incoming(ir.Constant(ivec, [0] * L), entry)
    arg.add_incoming(arg_new, mbody)
    chk.add_incoming(chk0, entry)
    chk.add_incoming(chk_new, mbody)
    builder.position_at_end(mdone)

    # Read 2: e_k into float partial k % 8 of (sum, sum of squares); the partials into double lanes after every
    # LANE_FLUSH classes (the last block: after its tail octet, whose classes past K add 0).
    def octet(k0, ps, pq, masked):
        ps, pq = list(ps), list(pq)
        last = builder.sub(K, c64(1))
        for lane in range(8):
            c = builder.add(k0, c64(lane))
            if masked:
                inside = builder.icmp_signed("<", c, K)
                c = builder.select(inside, c, last)
            e = _exp_f32_vec(builder, builder.fmul(b, builder.fsub(column(c), mx)))
            if masked:
                e = builder.select(inside, e, fzero)
            ps[lane] = builder.fadd(ps[lane], e)
            pq[lane] = builder.fadd(pq[lane], builder.fmul(e, e))
        return ps, pq

    full = builder.sub(K, builder.srem(K, c64(8)))
    kp = builder.mul(builder.sdiv(builder.add(K, c64(7)), c64(8)), c64(8))
    outer = builder.append_basic_block("dense.outer")
    outer_body = builder.append_basic_block("dense.outer.body")
    inner = builder.append_basic_block("dense.inner")
    inner_body = builder.append_basic_block("dense.inner.body")
    after = builder.append_basic_block("dense.after")
    tail = builder.append_basic_block("dense.tail")
    flush = builder.append_basic_block("dense.flush")
    done = builder.append_basic_block("dense.done")
    builder.branch(outer)
    builder.position_at_end(outer)
    f = builder.phi(i64)
    ds = [builder.phi(dvec) for _ in range(8)]
    dq = [builder.phi(dvec) for _ in range(8)]
    builder.cbranch(builder.icmp_signed("<", f, kp), outer_body, done)
    builder.position_at_end(outer_body)
    f_end = builder.add(f, c64(LANE_FLUSH))
    stop = builder.select(builder.icmp_signed("<", f_end, kp), f_end, kp)
    fstop = builder.select(builder.icmp_signed("<", stop, full), stop, full)
    builder.branch(inner)
    builder.position_at_end(inner)
    kk = builder.phi(i64)
    ps = [builder.phi(fvec) for _ in range(8)]
    pq = [builder.phi(fvec) for _ in range(8)]
    builder.cbranch(builder.icmp_signed("<", kk, fstop), inner_body, after)
    builder.position_at_end(inner_body)
    ps_new, pq_new = octet(kk, ps, pq, False)
    kk_new = builder.add(kk, c64(8))
    inner_end = builder.block
    builder.branch(inner)
    builder.position_at_end(after)
    builder.cbranch(builder.icmp_signed("<", fstop, stop), tail, flush)
    builder.position_at_end(tail)
    ps_tail, pq_tail = octet(fstop, ps, pq, True)
    tail_end = builder.block
    builder.branch(flush)
    builder.position_at_end(flush)
    ds_new, dq_new = [], []
    for lane in range(8):
        a = builder.phi(fvec)
        a.add_incoming(ps[lane], after)
        a.add_incoming(ps_tail[lane], tail_end)
        s = builder.phi(fvec)
        s.add_incoming(pq[lane], after)
        s.add_incoming(pq_tail[lane], tail_end)
        ds_new.append(a)
        dq_new.append(s)
    ds_new = [builder.fadd(ds[lane], builder.fpext(ds_new[lane], dvec)) for lane in range(8)]
    dq_new = [builder.fadd(dq[lane], builder.fpext(dq_new[lane], dvec)) for lane in range(8)]
    flush_end = builder.block
    builder.branch(outer)
    f.add_incoming(c64(0), mdone)
    f.add_incoming(stop, flush_end)
    kk.add_incoming(f, outer_body)
    kk.add_incoming(kk_new, inner_end)
    for lane in range(8):
        ds[lane].add_incoming(dzero, mdone)
        ds[lane].add_incoming(ds_new[lane], flush_end)
        dq[lane].add_incoming(dzero, mdone)
        dq[lane].add_incoming(dq_new[lane], flush_end)
        ps[lane].add_incoming(fzero, outer_body)
        ps[lane].add_incoming(ps_new[lane], inner_end)
        pq[lane].add_incoming(fzero, outer_body)
        pq[lane].add_incoming(pq_new[lane], inner_end)
    builder.position_at_end(done)

    def octet_sum(d):
        return builder.fadd(builder.fadd(builder.fadd(d[0], d[4]), builder.fadd(d[1], d[5])),
                            builder.fadd(builder.fadd(d[2], d[6]), builder.fadd(d[3], d[7])))

    bad = builder.uitofp(builder.fcmp_unordered("uno", chk, chk), dvec)
    rows = (octet_sum(ds), octet_sum(dq), builder.fpext(mx, dvec), builder.sitofp(arg, dvec), bad)
    res = builder.bitcast(out.data, dvec.as_pointer())
    row_stride = builder.sdiv(builder.extract_value(out.strides, 0), c64(8 * L))
    for j, vals in enumerate(rows):
        builder.store(vals, builder.gep(res, [builder.mul(c64(j), row_stride)]), align=8)
    return context.get_dummy_value()


@intrinsic
def dense_lanes_f32(typingctx, buf, q, K, bf, res):
    """The sums of DENSE_ROWS rows of logits held class-major in buf (a C-contiguous 2-D float32 array: class k
    of row r at buf[k, q + r], k < K), row r in float lane r (binning.hpp's summarize_dense_logit_rows_f):
    res[0, r] = the row's sum of e_k = exp_f32(bf (z_k - max)), res[1, r] its sum of e_k^2, res[2, r] the
    maximum, res[3, r] the first class holding it, res[4, r] = 1 when the row holds NaN / inf (its other results
    are then meaningless). res: a C-contiguous float64 array of shape (5, DENSE_ROWS). Each lane does the
    operations of _logit_row_f_loaded on its row in the same order: e_k into the float partial of lane k % 8
    (the padding of the last octet adds nothing: + 0 leaves a sum of non-negative terms unchanged), the
    partials widened into double lanes after every LANE_FLUSH classes and at the end, octet_sum's order for
    the totals (bf = 1 multiplies exactly). So the same bits as the row path."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.float32 and buf.ndim == 2 and buf.layout == "C"):
        return None
    if not (isinstance(res, types.Array) and res.dtype == types.float64 and res.ndim == 2 and res.layout == "C"):
        return None
    if not (isinstance(q, types.Integer) and isinstance(K, types.Integer) and bf == types.float32):
        return None
    return types.none(buf, q, K, bf, res), _dense_lanes_codegen


def as_kernel_array(a):
    """float16 arrays are read by the kernels as raw uint16 bits (same strides)."""
    if a.dtype == np.float16:
        return a.view(np.uint16)
    return a


def check_float_dtype(a, name):
    if a.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{name} must be float16, float32 or float64, got {a.dtype}")


def _prefer_fork_safe_layer():
    """Ask Numba for a fork-safe threading layer unless the user chose one.

    Numba's default picks GNU OpenMP on Linux when TBB is absent, and a child
    forked after an OpenMP parallel region is killed at its next parallel
    region ("fork() called from a process already using GNU OpenMP").
    GNU OpenMP also spin-waits, which on a loaded machine made each parallel
    call several times slower than workqueue. "forksafe" is TBB when installed,
    else the built-in workqueue. The choice is process-wide: workqueue is not
    thread-safe, which calibkit's kernels handle (``run_locked``) but a user's
    own parallel Numba functions called from several threads do not; such a
    user sets NUMBA_THREADING_LAYER. Nothing changes when NUMBA_THREADING_LAYER
    is set, numba.config.THREADING_LAYER was set, or Numba's threads are already
    running (its layer is then fixed).
    """
    if os.environ.get("NUMBA_THREADING_LAYER") or str(numba.config.THREADING_LAYER).lower() != "default":
        return
    try:
        numba.threading_layer()  # raises ValueError while no threading layer is loaded
    except ValueError:
        numba.config.THREADING_LAYER = "forksafe"


_prefer_fork_safe_layer()

# True in a process forked from one whose Numba threading layer was GNU OpenMP
# with its threads started: any parallel region there kills the process, so
# every kernel runs its serial twin (same result).
_parallel_unsafe = False


def _after_fork_in_child():
    global _parallel_unsafe, _twins_lock
    _twins_lock = threading.Lock()  # fork() copies it in whatever state another thread left it
    try:
        layer = numba.threading_layer()
    except ValueError:
        return
    if layer == "omp":
        _parallel_unsafe = True


_twins = {}
_copies = {}  # (fn, suffix) -> specialised copy
_twins_lock = threading.Lock()
os.register_at_fork(after_in_child=_after_fork_in_child)


def _copy(fn, suffix, constants, options):
    """A new ``numba.njit(**options)`` function compiled from the Python code of the jitted ``fn``, named
    ``fn``'s name + ``suffix`` (so its own on-disk cache entry), with the globals ``constants`` (name -> value)
    in place of its module's (Numba reads a global as a compile-time constant)."""
    py = fn.py_func
    glb = py.__globals__
    if constants:
        glb = dict(glb)
        glb.update(constants)
    clone = pytypes.FunctionType(py.__code__, glb, py.__name__ + suffix, py.__defaults__, py.__closure__)
    clone.__qualname__ = py.__qualname__ + suffix
    clone.__module__ = py.__module__
    options = {k: v for k, v in options.items() if k != "nopython"}  # a dispatcher's targetoptions: njit's own
    return numba.njit(**dict(options, cache=True))(clone)


def _serial_twin(fn):
    """``fn`` (an ``njit(parallel=True)`` driver) compiled without ``parallel=True``, and the index of its
    ``parallel`` argument.

    With parallel=True Numba also turns every ``np.zeros`` of a driver into a parallel region, so even its
    ``parallel=False`` branch wakes the threading layer. The twin compiles the same Python code serially
    (``prange`` is ``range``): the same chunks in the same order, so bit-identical results. It has its own
    name, hence its own on-disk cache entry. Made on first use, compiled on its first call: a driver whose
    input is always one parallel chunk or more on several threads never compiles its twin.
    """
    entry = _twins.get(fn)  # lock-free once made (a dict read is atomic)
    if entry is not None:
        return entry
    with _twins_lock:
        entry = _twins.get(fn)
        if entry is None:
            code = fn.py_func.__code__
            index = code.co_varnames[: code.co_argcount].index("parallel")
            entry = _twins[fn] = (_copy(fn, "_serial", {}, JIT), index)
        return entry


def specialised(fn, suffix, constants):
    """``fn`` (a jitted function) compiled with some of its globals fixed: ``constants`` maps a global name to
    its value in this copy, named ``fn``'s name + ``suffix`` (one copy per (fn, suffix), made once).

    Numba reads a global as a compile-time constant and drops a branch that compares two constants
    (``if ROWS == ROWS_SINGLE:``) before typing it: the copy compiles only the code of its own case, where the
    function itself would compile every case for every signature. A constant may also be another
    specialised function (a caller's copy calls its callee's copy). The same Python code, so the same bits.
    """
    key = (fn, suffix)
    entry = _copies.get(key)  # lock-free once made
    if entry is not None:
        return entry
    with _twins_lock:
        entry = _copies.get(key)
        if entry is None:
            entry = _copies[key] = _copy(fn, suffix, constants, fn.targetoptions)
        return entry


def run_locked(fn, *args):
    """Run the Numba driver ``fn(*args)`` (it has a boolean ``parallel`` argument) on the right path.

    Parallel (``parallel=True`` compiled, ``min(calibkit.get_num_threads(), NUMBA_NUM_THREADS)`` threads)
    only when the driver was asked for it (the input is at least one parallel chunk), more than one
    thread is configured, no other Python thread is inside a parallel kernel (the workqueue layer is not
    thread-safe), and the process is not a fork of a GNU OpenMP one. Otherwise the serial twin runs on
    the calling thread, without touching Numba's threading layer, so a small call stays cheap on a busy
    machine. Both paths give bit-identical results.
    """
    serial, index = _serial_twin(fn)
    if not args[index] or _parallel_unsafe:  # below one parallel chunk: never ask for the thread count
        return serial(*args)
    threads = _backend.get_num_threads()
    if threads <= 1:
        return serial(*args)
    lock = _backend.numba_lock
    if not lock.acquire(blocking=False):
        return serial(*args)
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        return fn(*args)
    finally:
        lock.release()


def new_status():
    return np.array([OK, -1.0, -1.0, 0.0])


def status_tuple(st):
    return (int(st[0]), int(st[1]), int(st[2]), float(st[3]))


MAX_VECTOR_EDGES = 32  # kMaxVectorEdges: up to this many inner edges, short rows count the edges below them
SHORT_SCAN_ROWS = 8  # rows scanned together by short_scan8, one per double lane


@intrinsic
def nll_lanes(typingctx, buf):
    """The negative log of each of the first SHORT_SCAN_ROWS values of buf (a C-contiguous float64 array of at
    least SHORT_SCAN_ROWS elements: one value per row of a scanned eight), in place, in <8 x double> lanes: x > 0
    becomes -log_positive(x) (the scalar function's bits), any other value (0, negative, NaN) +inf, as the
    scalar NLL of the row paths. A row loop taking the scalar log per row stalled on its division."""
    if not (isinstance(buf, types.Array) and buf.dtype == types.float64 and buf.ndim == 1 and buf.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        vt = ir.VectorType(ir.DoubleType(), SHORT_SCAN_ROWS)
        ptr = builder.bitcast(a.data, vt.as_pointer())
        x = builder.load(ptr, align=8)
        log = _log_positive_ir(builder, x)
        neg = builder.fsub(ir.Constant(vt, [-0.0] * SHORT_SCAN_ROWS), log)
        positive = builder.fcmp_ordered(">", x, ir.Constant(vt, [0.0] * SHORT_SCAN_ROWS))
        inf = ir.Constant(vt, [float("inf")] * SHORT_SCAN_ROWS)
        builder.store(builder.select(positive, neg, inf), ptr, align=8)
        return context.get_dummy_value()

    return types.void(buf), codegen


def _scan8_typed(scores, i, table, inner, res):
    """The argument types of short_scan8 and plain_scan8: a 2-D float16 (as uint16 bits) / float32 / float64
    matrix, an integer row, the float32 table of float16 values, C-contiguous float64 edges and output."""
    if not (isinstance(scores, types.Array) and scores.ndim == 2
            and scores.dtype in (types.float32, types.float64, types.uint16) and isinstance(i, types.Integer)):
        return False
    if not (isinstance(table, types.Array) and table.dtype == types.float32 and table.layout == "C"):
        return False
    return all(isinstance(a, types.Array) and a.dtype == types.float64 and a.layout == "C" for a in (inner, res))


class _Scan8Rows:
    """The IR short_scan8 and plain_scan8 start from (arguments scores, i, table, inner, res): the matrix's dtype
    `dt`, K, column stride `s1` (bytes) and the bases of rows i .. i + 7, the edges and output array structs,
    `splat(x, vector type)`, and `column(k)`: element k of the eight rows as one vector (lane r = row r; float16
    read through the table as float32, so <8 x float> for float16 / float32, <8 x double> for float64)."""

    def __init__(self, context, builder, signature, args):
        R = SHORT_SCAN_ROWS
        i64 = ir.IntType(64)
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        tab = context.make_array(signature.args[2])(context, builder, args[2])
        self.edges = context.make_array(signature.args[3])(context, builder, args[3])
        self.out = context.make_array(signature.args[4])(context, builder, args[4])
        self.builder, self.dt = builder, signature.args[0].dtype
        row = context.cast(builder, args[1], signature.args[1], types.int64)
        self.K = builder.extract_value(arr.shape, 1)
        s0 = builder.extract_value(arr.strides, 0)
        self.s1 = builder.extract_value(arr.strides, 1)
        self.elem = context.get_value_type(self.dt)
        data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
        self.tdata = builder.bitcast(tab.data, ir.FloatType().as_pointer())
        self.bases = [builder.gep(data, [builder.mul(builder.add(row, ir.Constant(i64, r)), s0)]) for r in range(R)]

    def splat(self, x, vt):
        return splat_ir(self.builder, x, vt)

    def column(self, k):
        b, i32 = self.builder, ir.IntType(32)
        lane = ir.DoubleType() if self.dt == types.float64 else ir.FloatType()
        v = ir.Constant(ir.VectorType(lane, SHORT_SCAN_ROWS), ir.Undefined)
        off = b.mul(k, self.s1)  # byte strides: any layout
        for r in range(SHORT_SCAN_ROWS):
            x = b.load(b.bitcast(b.gep(self.bases[r], [off]), self.elem.as_pointer()))
            if self.dt == types.uint16:
                x = b.load(b.gep(self.tdata, [b.zext(x, ir.IntType(64))]))
            v = b.insert_element(v, x, ir.Constant(i32, r))
        return v


def _edges_below(builder, edges, best, splat, name):
    """LLVM IR of short_scan8 / plain_scan8: the int64 lanes #{e : edges[e] < best lane} (the bin of each row's
    maximum), `edges` the float64 array's struct, `best` a vector of doubles, `splat(x, vector type)`."""
    i64 = ir.IntType(64)
    dvec = best.type
    ivec = ir.VectorType(i64, dvec.count)
    n_edges = builder.extract_value(edges.shape, 0)
    entry = builder.block
    loop = builder.append_basic_block(name + ".edges")
    body = builder.append_basic_block(name + ".edges.body")
    done = builder.append_basic_block(name + ".edges.done")
    builder.branch(loop)
    builder.position_at_end(loop)
    e = builder.phi(i64)
    m = builder.phi(ivec)
    builder.cbranch(builder.icmp_signed("<", e, n_edges), body, done)
    builder.position_at_end(body)
    edge = splat(builder.load(builder.gep(edges.data, [e])), dvec)
    m_new = builder.sub(m, builder.sext(builder.fcmp_ordered("<", edge, best), ivec))
    e_new = builder.add(e, ir.Constant(i64, 1))
    builder.branch(loop)
    e.add_incoming(ir.Constant(i64, 0), entry)
    e.add_incoming(e_new, body)
    m.add_incoming(ir.Constant(ivec, [0] * dvec.count), entry)
    m.add_incoming(m_new, body)
    builder.position_at_end(done)
    return m


def _scan_columns(builder, rows, start, step, name, overlap):
    """LLVM IR of short_scan8 / plain_scan8: columns 0 .. K - 1 of the eight rows stepped, in column order, into
    the values `start` (a sequence of vectors) by step(col, k, *vals) -> vals, col the column's <8 x float> (float16
    through the table, float32) or <8 x double> (float64), lane r = row r. Contiguous float32 rows go four columns
    at a time: one <4 x float> load per row and a transpose by shuffles (only data movement: the same columns in
    the same order). Their last K % 4 columns are stepped by the element loop, or, when `overlap` (a step that
    leaves the values unchanged on a column it has seen), in the block of the last four columns (K >= 4), as
    binning.hpp's overlapping last block. Every column of other layouts by the element loop. Returns the values
    after the last column."""
    i64, i32 = ir.IntType(64), ir.IntType(32)
    R = SHORT_SCAN_ROWS
    K, s1, bases = rows.K, rows.s1, rows.bases
    entry = builder.block
    loop = builder.append_basic_block(name + ".loop")
    body = builder.append_basic_block(name + ".body")
    done = builder.append_basic_block(name + ".done")
    k_from, from_vals, joins = ir.Constant(i64, 0), list(start), []
    if rows.dt == types.float32:
        f4p = ir.VectorType(ir.FloatType(), 4).as_pointer()
        bloop = builder.append_basic_block(name + ".blocks")
        bbody = builder.append_basic_block(name + ".blocks.body")
        after = builder.append_basic_block(name + ".blocks.after")
        builder.branch(bloop)
        builder.position_at_end(bloop)
        bk = builder.phi(i64)
        carried = [builder.phi(c.type) for c in start]
        packed = builder.icmp_signed("==", s1, ir.Constant(i64, 4))
        more = builder.and_(packed, builder.icmp_signed("<=", builder.add(bk, ir.Constant(i64, 4)), K))
        builder.cbranch(more, bbody, after)

        def block(k0, vals):
            """Columns k0 .. k0 + 3 of the eight rows stepped into vals."""
            off4 = builder.mul(k0, ir.Constant(i64, 4))
            rows4 = [builder.load(builder.bitcast(builder.gep(bases[r], [off4]), f4p), align=4) for r in range(R)]

            def cat(x, y, n):
                return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, 2 * n), list(range(2 * n))))

            pairs = [cat(rows4[r], rows4[r + 1], 4) for r in range(0, R, 2)]
            allr = cat(cat(pairs[0], pairs[1], 8), cat(pairs[2], pairs[3], 8), 16)  # row r's column c: 4 r + c
            for c in range(4):
                col = builder.shuffle_vector(allr, ir.Constant(allr.type, ir.Undefined),
                                             ir.Constant(ir.VectorType(i32, R), [4 * r + c for r in range(R)]))
                vals = list(step(col, builder.add(k0, ir.Constant(i64, c)), *vals))
            return vals

        builder.position_at_end(bbody)
        vals = block(bk, carried)
        bk_next = builder.add(bk, ir.Constant(i64, 4))
        bbody_end = builder.block
        builder.branch(bloop)
        bk.add_incoming(ir.Constant(i64, 0), entry)
        bk.add_incoming(bk_next, bbody_end)
        for ph, s_, v_ in zip(carried, start, vals):
            ph.add_incoming(s_, entry)
            ph.add_incoming(v_, bbody_end)
        builder.position_at_end(after)
        if overlap:
            last = builder.append_basic_block(name + ".blocks.last")
            tail = builder.and_(packed, builder.and_(builder.icmp_signed("<", bk, K),
                                                     builder.icmp_signed(">=", K, ir.Constant(i64, 4))))
            builder.cbranch(tail, last, loop)
            builder.position_at_end(last)
            last_vals = block(builder.sub(K, ir.Constant(i64, 4)), carried)
            joins.append((builder.block, K, last_vals))  # the element loop has no column left
        builder.branch(loop)
        k_from, from_vals, entry = bk, carried, after
    else:
        builder.branch(loop)
    builder.position_at_end(loop)
    k = builder.phi(i64)
    cur = [builder.phi(c.type) for c in start]
    builder.cbranch(builder.icmp_signed("<", k, K), body, done)
    builder.position_at_end(body)
    new = step(rows.column(k), k, *cur)
    k_new = builder.add(k, ir.Constant(i64, 1))
    body_end = builder.block
    builder.branch(loop)
    for blk, k_in, vals_in in [(entry, k_from, from_vals), (body_end, k_new, new)] + joins:
        k.add_incoming(k_in, blk)
        for ph, v_ in zip(cur, vals_in):
            ph.add_incoming(v_, blk)
    builder.position_at_end(done)
    return cur


@intrinsic
def short_scan8(typingctx, scores, i, table, inner, res):
    """The scan of rows i .. i + 7 of a 2-D (any strides) float16 (as uint16 bits, read through the float32
    `table`), float32 or float64 matrix, into res (a C-contiguous float64 array of shape (5, 8)): per row r the
    running maximum res[0, r] (NaN never replaces it), the first column holding it res[1, r], the running
    minimum res[2, r] and the sum of squares res[3, r], all in double and in column order, the eight rows in the
    eight lanes of <8 x double> vectors; then res[4, r] = #{e : inner[e] < res[0, r]}, the row's bin by the
    convention itself (binning.hpp's vector bins: no branch on the data, whose bins are unpredictable; `inner`
    a C-contiguous float64 array, empty for no bins). The same operations as the scalar row loop
    (b = v > b ? v : b, a = v > b ? k : a, l = v < l ? v : l, q += v v), so the same values; the eight rows'
    chains advance together instead of one row after another. Contiguous float32 rows are read four columns at a
    time (_scan_columns), the last K % 4 columns one by one."""
    if not _scan8_typed(scores, i, table, inner, res):
        return None
    R = SHORT_SCAN_ROWS

    def codegen(context, builder, signature, args):
        rows = _Scan8Rows(context, builder, signature, args)
        edges, out, splat = rows.edges, rows.out, rows.splat
        i64 = ir.IntType(64)
        dvec = ir.VectorType(ir.DoubleType(), R)
        ivec = ir.VectorType(i64, R)

        def step(v, k, b, a, lo, q):
            if rows.dt != types.float64:  # float16 / float32: the eight floats widened to double at once (exact)
                v = builder.fpext(v, dvec)
            gt = builder.fcmp_ordered(">", v, b)
            lt = builder.fcmp_ordered("<", v, lo)
            return (builder.select(gt, v, b), builder.select(gt, splat(k, ivec), a), builder.select(lt, v, lo),
                    builder.fadd(q, builder.fmul(v, v)))

        start = (ir.Constant(dvec, [float("-inf")] * R), ir.Constant(ivec, [0] * R),
                 ir.Constant(dvec, [float("inf")] * R), ir.Constant(dvec, [0.0] * R))
        # no overlapping last block: a sum of squares counts a column seen twice twice
        b, a, lo, q = _scan_columns(builder, rows, start, step, "scan8", overlap=False)
        m = _edges_below(builder, edges, b, splat, "scan8")  # the bins
        dst = builder.bitcast(out.data, dvec.as_pointer())
        for t, vals in enumerate((b, builder.sitofp(a, dvec), lo, q, builder.sitofp(m, dvec))):
            builder.store(vals, builder.gep(dst, [ir.Constant(i64, t)]), align=8)
        return context.get_dummy_value()

    return types.none(scores, i, table, inner, res), codegen



def _plain_hi_bits():
    """The bits (as an int32) of the largest float32 at or below 1 + PROBABILITY_TOLERANCE: binning.hpp's
    ShortProbBounds.hi."""
    hi_d = 1.0 + PROBABILITY_TOLERANCE
    hi = np.float32(hi_d)
    if float(hi) > hi_d:
        hi = np.nextafter(hi, np.float32(-np.inf))
    return int(hi.view(np.int32))


@intrinsic
def plain_scan8(typingctx, scores, i, table, inner, res):
    """short_scan8 of the ECE's plain rounds (binning.hpp's scan_short_float_bits): rows i .. i + 7 of float16
    or float32 rows (False at once for float64 rows, which have no plain rounds), their elements' bits as int32
    lanes; for a float without the sign bit the integer order is the float order, NaN above +inf. Contiguous
    float32 rows go four columns at a time (one <4 x float> load per row, a transpose by shuffles), the last
    K % 4 columns in the block of the last four (binning.hpp's overlapping last block). Into res (C-contiguous
    float64, (5, 8)): per row r the maximum res[0, r] (as a double), its first column res[1, r] and
    res[4, r] = #{e : inner[e] < res[0, r]} (its bin). Returns True when all eight rows are good for a plain
    round (no element with the sign bit, none NaN or above 1 + tol): their maximum, argmax and bin are then
    short_scan8's; a round with a row that is not good is scanned again by short_scan8."""
    if not _scan8_typed(scores, i, table, inner, res):
        return None
    R = SHORT_SCAN_ROWS

    def codegen(context, builder, signature, args):
        if signature.args[0].dtype == types.float64:
            return ir.Constant(ir.IntType(1), 0)
        rows = _Scan8Rows(context, builder, signature, args)
        edges, out, splat = rows.edges, rows.out, rows.splat
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        dvec = ir.VectorType(ir.DoubleType(), R)
        bvec = ir.VectorType(i32, R)
        fvec = ir.VectorType(ir.FloatType(), R)  # float16 is read as float32

        def step(col, k, mx, arg, sign):
            """Column k (lane r = row r), as its bits, into the maximum, its first column and the sign OR."""
            bits = builder.bitcast(col, bvec)
            gt = builder.icmp_signed(">", bits, mx)  # strict: the first maximum wins
            return (builder.select(gt, bits, mx),
                    builder.select(gt, splat(builder.trunc(k, i32), bvec), arg),
                    builder.or_(sign, bits))

        start = (ir.Constant(bvec, [-1] * R),  # below every float without the sign bit
                 ir.Constant(bvec, [0] * R), ir.Constant(bvec, [0] * R))
        # Stepping a column again changes nothing (its bits are not above the maximum, which already holds them:
        # the first maximum keeps its column; the sign OR is idempotent): the overlapping last block.
        mx, arg, sign = _scan_columns(builder, rows, start, step, "plain8", overlap=True)
        best = builder.fpext(builder.bitcast(mx, fvec), dvec)
        hi = ir.Constant(bvec, [_plain_hi_bits()] * R)
        bad = builder.or_(builder.icmp_signed("<", sign, ir.Constant(bvec, [0] * R)),
                          builder.icmp_signed(">", mx, hi))
        any_bad = builder.icmp_unsigned("!=", builder.bitcast(bad, ir.IntType(R)), ir.Constant(ir.IntType(R), 0))
        m = _edges_below(builder, edges, best, splat, "plain8")  # the bins
        dst = builder.bitcast(out.data, dvec.as_pointer())
        for t, val in ((0, best), (1, builder.sitofp(arg, dvec)), (4, builder.sitofp(m, dvec))):
            builder.store(val, builder.gep(dst, [ir.Constant(i64, t)]), align=8)
        return builder.not_(any_bad)

    return types.boolean(scores, i, table, inner, res), codegen
