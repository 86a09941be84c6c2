// Fused log-softmax losses for the scaling calibrators: one read of each row,
// one exp per element, no N x K temporary.
//
// temperature_nll: for logits z_i, labels y_i, weights w_i and an inverse
// temperature b > 0,
//   L(b)   = sum_i w_i [LSE(b z_i) - b z_{i,y_i}]
//   L'(b)  = sum_i w_i [E_i[z] - z_{i,y_i}]
//   L''(b) = sum_i w_i Var_i[z]            (>= 0: L is convex in b)
//   L'''(b) = sum_i w_i kappa3_i[z],  L''''(b) = sum_i w_i kappa4_i[z],  L'''''(b) = sum_i w_i kappa5_i[z]
//   (cumulants; also r4d2 = sum_i w_i r_i^4 Var_i[z] and range = max_i r_i, r_i the row's range, which bound
//   the sixth derivative: |L''''''| <= 6.25 r4d2)
// where E_i, Var_i and the cumulants are under softmax(b z_i) (the higher two let
// the fit take the root of the cubic Taylor model of L' instead of a Newton step). Everything is computed on
// u = z - max(z) (so exp never overflows): LSE(b z) = b max + log sum e^{b u},
// E[z] - z_y = E[u] - u_y, Var[z] = E[u^2] - E[u]^2.
// The sums are taken over t = max(b u, -708) (where exp_nonpositive clamps):
//   E[u] = (sum e^t t) / (b sum e^t),  Var[u] = Var_t[t] / b^2,
// so every product is bounded (|e^t t| < 1/e, e^t t^2 < 0.6) whatever the
// logits' size, and a row that is not constant always adds a nonzero term: on
// separable data the derivatives stay negative and positive instead of
// underflowing to 0 (e^{b u} u with b u < -745), which would read as "every row
// is constant". A clamped element adds at most 2.4e-305 / b to E[u].
//
// Precision follows the input (as in uncertainty.hpp): float64 rows use the
// double exp (~1 ulp, 4 lanes); float32 / float16 rows are scanned once into L1
// (or read in place) and each element costs one 8-lane exp_f32 (relative error
// < 2.5e-7, the size of the input's own rounding) with t = max(bf (z - max), -87)
// in float, bf = float(b); the sums go to double every 64 elements, and the
// results are moved from bf to b by their Taylor expansion in b - bf.
//
// vector_scaling_nll: for z' = a * z + c (element-wise, a and c of length K),
//   L = sum_i w_i [LSE(z'_i) - z'_{i,y_i}],
//   dL/dc_k = sum_i w_i (p_ik - [y_i = k]),  dL/da_k = sum_i w_i (p_ik - [y_i = k]) z_ik.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "binning.hpp"
#include "uncertainty.hpp"
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace calibkit {

struct TemperatureSums {
    double count = 0.0, weight = 0.0, loss = 0.0, d1 = 0.0, d2 = 0.0, d3 = 0.0, d4 = 0.0, d5 = 0.0;
    // r4d2 = sum_i w_i r_i^4 Var_i[z] with r_i = max_k z_ik - min_k z_ik (-min t / b of the row): it bounds
    // the sixth derivative, |L''''''| <= 6.25 r4d2. range = max_i r_i (a maximum: the same for any chunking
    // and thread count). The fit certifies its step with them.
    double r4d2 = 0.0, range = 0.0;
    Status status;

    void merge(const TemperatureSums& o) {
        count += o.count;
        weight += o.weight;
        loss += o.loss;
        d1 += o.d1;
        d2 += o.d2;
        d3 += o.d3;
        d4 += o.d4;
        d5 += o.d5;
        r4d2 += o.r4d2;
        range = std::max(range, o.range);
        status.merge(o.status);
    }
};

// Adds one row's loss and derivatives to `acc` from S_j = sum_k e^{t_k} t_k^j
// (j = 0..5, t = bt u): the cumulants of t under the softmax, divided by bt^j,
// are those of u (= of z), the derivatives of the row's NLL in b.
// min_t = min_k bt u_k (before the clamp) gives the row's range -min_t / bt.
CALIBKIT_INLINE void add_temperature_row(const double* S, double bt, double u_label, double w, double min_t,
                                         TemperatureSums& acc) {
    const double m1 = S[1] / S[0], m2 = S[2] / S[0], m3 = S[3] / S[0], m4 = S[4] / S[0], m5 = S[5] / S[0];
    const double k2 = std::max(m2 - m1 * m1, 0.0);
    const double k3 = m3 - 3.0 * m2 * m1 + 2.0 * m1 * m1 * m1;
    const double k4 = m4 - 4.0 * m3 * m1 - 3.0 * m2 * m2 + 12.0 * m2 * m1 * m1 - 6.0 * (m1 * m1) * (m1 * m1);
    const double q1 = m1 * m1;
    const double k5 = m5 - 5.0 * m4 * m1 - 10.0 * m3 * m2 + 20.0 * m3 * q1 + 30.0 * m2 * m2 * m1 -
                      60.0 * m2 * q1 * m1 + 24.0 * (q1 * q1) * m1;
    const double b2 = bt * bt;
    const double r = -min_t / bt, var = k2 / b2;
    acc.count += 1.0;
    acc.weight += w;
    acc.loss += w * (std::log(S[0]) - bt * u_label);
    acc.d1 += w * (m1 / bt - u_label);
    acc.d2 += w * (k2 / b2);
    acc.d3 += w * (k3 / (b2 * bt));
    acc.d4 += w * (k4 / (b2 * b2));
    acc.d5 += w * (k5 / (b2 * b2 * bt));
    acc.r4d2 += w * ((r * r) * (r * r) * var);
    acc.range = std::max(acc.range, r);
}

// Row i of a float64 logit matrix: false (status set) on NaN/inf. Otherwise adds
// the row's loss and derivatives in b, times w, to `acc`. Double exp.
template <class T, bool Contiguous, class V>
CALIBKIT_INLINE bool temperature_row(const Matrix<T>& s, const simd::TailMask<V>& tail, int64_t i, int64_t label,
                                     double b, double w, TemperatureSums& acc) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int G = Octet<V>::n;
    const RowReader<T, Contiguous> r{reinterpret_cast<const char*>(s.row(i)), s.col_stride};
    const int64_t K = s.cols;
    const int64_t full = K - K % 8;
    const D zero = splat<D>(0.0), neg_inf = splat<D>(-INFINITY);
    I bad = (I)zero;
    Octet<V> mx;
    for (int g = 0; g < G; ++g) mx.v[g] = neg_inf;
    for (int64_t k = 0; k < full; k += 8) {
        const Octet<V> o = r.template octet<V>(k);
        for (int g = 0; g < G; ++g) {
            bad |= ~((o.v[g] - o.v[g]) == zero);  // NaN and inf
            mx.v[g] = vmax(o.v[g], mx.v[g]);
        }
    }
    if (tail.needed) {
        const Octet<V> o = tail.overlapped ? r.template octet<V>(tail.start) : r.template partial_octet<V>(0, K, 0.0);
        for (int g = 0; g < G; ++g) {
            bad |= ~((o.v[g] - o.v[g]) == zero);
            mx.v[g] = vmax(select(tail.valid[g], o.v[g], neg_inf), mx.v[g]);
        }
    }
    bool any_bad = false;
    for (int j = 0; j < V::width; ++j) any_bad |= bad[j] != 0;
    if (any_bad) {
        report_bad_element(r, i, K, true, acc.status);
        return false;
    }
    double best = -INFINITY;
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < V::width; ++j) best = mx.v[g][j] > best ? mx.v[g][j] : best;
    const D shift = splat<D>(best), scale = splat<D>(b), lowest = splat<D>(-708.0);
    Octet<V> a[6], lo;
    for (int j = 0; j < 6; ++j)
        for (int g = 0; g < G; ++g) a[j].v[g] = zero;
    for (int g = 0; g < G; ++g) lo.v[g] = zero;
    for (int64_t k = 0; k < full; k += 8) {
        const Octet<V> o = r.template octet<V>(k);
        for (int g = 0; g < G; ++g) {
            const D raw = scale * (o.v[g] - shift);
            lo.v[g] = vmin(raw, lo.v[g]);
            const D t = vmax(raw, lowest);
            const D e = exp_nonpositive<V>(t);
            const D e1 = e * t, e2 = e1 * t, e3 = e2 * t;
            a[0].v[g] += e;
            a[1].v[g] += e1;
            a[2].v[g] += e2;
            a[3].v[g] += e3;
            const D e4 = e3 * t;
            a[4].v[g] += e4;
            a[5].v[g] += e4 * t;
        }
    }
    if (tail.needed) {
        const Octet<V> o = tail.overlapped ? r.template octet<V>(tail.start) : r.template partial_octet<V>(0, K, 0.0);
        for (int g = 0; g < G; ++g) {
            const D raw = select(tail.valid[g], scale * (o.v[g] - shift), zero);
            lo.v[g] = vmin(raw, lo.v[g]);
            const D t = vmax(raw, lowest);
            const D e = select(tail.valid[g], exp_nonpositive<V>(t), zero);
            const D e1 = e * t, e2 = e1 * t, e3 = e2 * t;
            a[0].v[g] += e;
            a[1].v[g] += e1;
            a[2].v[g] += e2;
            a[3].v[g] += e3;
            const D e4 = e3 * t;
            a[4].v[g] += e4;
            a[5].v[g] += e4 * t;
        }
    }
    double S[6];
    for (int j = 0; j < 6; ++j) S[j] = octet_sum(a[j]);
    double min_t = 0.0;
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < V::width; ++j) min_t = lo.v[g][j] < min_t ? lo.v[g][j] : min_t;
    add_temperature_row(S, b, r.at(label) - best, w, min_t, acc);
    return true;
}

// p[j][g] += e t^j (j = 0..5), the powers taken by successive products (the float partial sums of the
// temperature kernels' S_j).
template <class F, int G>
CALIBKIT_INLINE void add_powers_f(F (&p)[6][G], int g, F e0, F t) {
    const F e1 = e0 * t, e2 = e1 * t, e3 = e2 * t;
    p[0][g] += e0;
    p[1][g] += e1;
    p[2][g] += e2;
    p[3][g] += e3;
    const F e4 = e3 * t;
    p[4][g] += e4;
    p[5][g] += e4 * t;
}

// S_j = sum_k e^{t_k} t_k^j (j = 0..5) of a loaded float row, t = max(bf (z - shift), -87)
// in float, one exp_f32 per element; float partial sums flushed into double every
// kFlushOctets octets (as softmax_sums_f in uncertainty.hpp). Returns min bf (z - shift) (before the clamp).
// The exps of kTemperatureBlock octets are computed in lockstep (exp_f32_n: the same bits as one at a time,
// several dependency chains side by side), then added octet by octet in order: the same sums.
constexpr int64_t kTemperatureBlock = 8;  // a divisor of kFlushOctets: a block never straddles a flush

template <class V>
CALIBKIT_INLINE float temperature_sums_f(const float* row, int64_t K, const PadMaskF<V>& pad, float bf,
                                         float shift_f, double* S) {
    using namespace simd;
    typedef typename V::fw F;
    constexpr int G = kFloatGroups<V>, U = static_cast<int>(kTemperatureBlock);
    static_assert(kFlushOctets % kTemperatureBlock == 0, "blocks do not straddle a flush");
    const F zero = splat_f<F>(0.0f), shift = splat_f<F>(shift_f), scale = splat_f<F>(bf);
    const F lowest = splat_f<F>(kExpMinF);
    Octet<V> acc[6];
    F p[6][G], lo[G];
    for (int g = 0; g < G; ++g) lo[g] = zero;
    for (int j = 0; j < 6; ++j) {
        for (int g = 0; g < Octet<V>::n; ++g) acc[j].v[g] = splat<typename V::d>(0.0);
        for (int g = 0; g < G; ++g) p[j][g] = zero;
    }
    // One block of octets from k0 (u_end of them); Masked: the block holds the last octet, whose padding lanes
    // take t = 0 and add e = 0 (the blocks before it need no select).
    const auto block = [&](auto masked, int64_t k0, int u_end) {
        constexpr bool Masked = decltype(masked)::value;
        F t[U * G], e[U * G];
        for (int u = 0; u < u_end; ++u) {
            const int64_t k = k0 + 8 * u;
            for (int g = 0; g < G; ++g) {
                F v = scale * (flanes_at<V>(row + k + g * 2 * V::width) - shift);
                if (Masked && k == pad.last) v = select_f(pad.valid[g], v, zero);
                lo[g] = vmin(v, lo[g]);
                v = vmax(v, lowest);
                t[u * G + g] = e[u * G + g] = v;
            }
        }
        for (int u = u_end; u < U; ++u)
            for (int g = 0; g < G; ++g) e[u * G + g] = zero;  // past the row: computed, not used
        exp_f32_n<V, U * G>(e);
        for (int u = 0; u < u_end; ++u) {
            const int64_t k = k0 + 8 * u;
            const bool last = Masked && k == pad.last;
            for (int g = 0; g < G; ++g) {
                F e0 = e[u * G + g];
                if (last) e0 = select_f(pad.valid[g], e0, zero);
                add_powers_f(p, g, e0, t[u * G + g]);
            }
            if ((k / 8 + 1) % kFlushOctets == 0 || last)
                for (int j = 0; j < 6; ++j) flush<V>(acc[j], p[j]);
        }
    };
    const int64_t n = padded_length(K);
    int64_t k0 = 0;
    for (; k0 + 8 * U <= pad.last; k0 += 8 * U) block(std::false_type(), k0, U);
    for (; k0 < n; k0 += 8 * U) block(std::true_type(), k0, static_cast<int>(std::min<int64_t>(U, (n - k0) / 8)));
    for (int j = 0; j < 6; ++j) S[j] = octet_sum(acc[j]);
    float m = 0.0f;
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < 2 * V::width; ++j) m = lo[g][j] < m ? lo[g][j] : m;
    return m;
}

// Dense float32 / float16 logit rows (a segmentation map read as rows: dense_float_rows in binning.hpp, the
// classes H W elements apart): each block of kDenseBlock rows is copied once, class-major, into a
// K x kDenseBlock float buffer (dense_block_copy: each cache line of the map fetched once), then
// kDenseRows = 8 rows at a time with SIMD ACROSS ROWS (lane r is row r). Every lane does its row's arithmetic
// of temperature_sums_f in the same order: t = bf (z - max) in float, its minimum, the clamp, one exp_f32,
// e t^j added to the float partial of class lane k mod 8 (the padding lanes of the generic path add +0, which
// leaves a partial unchanged, so they are skipped), the partials flushed into double after every
// kFlushOctets-th octet and after the last one, and octet_sum's order for S_j. So S, the row maximum and the
// minimum of t are bit-identical to the generic path's, and the caller adds the rows in order: the same sums.
// S[j][r] = S_j of row r; bad[r]: row r holds NaN / inf (its values are garbage; the caller reports it).
template <class V>
CALIBKIT_INLINE void temperature_dense_rows_f(const float* buf, int64_t K, float bf, double (*S)[kDenseRows],
                                              float* best, float* min_t, bool* bad) {
    using namespace simd;
    typedef typename V::fw F;
    typedef typename V::d D;
    constexpr int G = FOctet<V>::n, L = 2 * V::width, GD = Octet<V>::n, W = V::width;
    const auto at = [&](int64_t k) {
        FOctet<V> o;
        std::memcpy(&o.v[0], buf + k * kDenseBlock, sizeof o.v);
        return o;
    };
    // Read 1: maxima (exact in any order) and finiteness (chk is NaN when some element is NaN or inf).
    FOctet<V> mx = at(0), chk;
    for (int g = 0; g < G; ++g) chk.v[g] = mx.v[g] - mx.v[g];
    for (int64_t k = 1; k < K; ++k) {
        const FOctet<V> o = at(k);
        for (int g = 0; g < G; ++g) {
            mx.v[g] = vmax(o.v[g], mx.v[g]);
            chk.v[g] += o.v[g] - o.v[g];
        }
    }
    // Read 2: class lane by class lane (lane l holds the classes l, l + 8, ...: its partials and double sums
    // are its own, so the lanes can be taken one after the other), U octets' exps in lockstep.
    const F zero = splat_f<F>(0.0f), scale = splat_f<F>(bf), lowest = splat_f<F>(kExpMinF);
    F lo[G];
    for (int g = 0; g < G; ++g) lo[g] = zero;
    Octet<V> acc[6][8];
    for (int j = 0; j < 6; ++j)
        for (int l = 0; l < 8; ++l)
            for (int g = 0; g < GD; ++g) acc[j][l].v[g] = splat<D>(0.0);
    const int64_t n_oct = padded_length(K) / 8;
    constexpr int U = 4;  // a divisor of kFlushOctets
    for (int l = 0; l < 8; ++l) {
        F p[6][G];
        for (int j = 0; j < 6; ++j)
            for (int g = 0; g < G; ++g) p[j][g] = zero;
        for (int64_t o0 = 0; o0 < n_oct; o0 += U) {
            F t[U * G], e[U * G];
            for (int u = 0; u < U; ++u) {
                const int64_t k = (o0 + u) * 8 + l;
                if (k < K) {
                    const FOctet<V> o = at(k);
                    for (int g = 0; g < G; ++g) {
                        const F raw = scale * (o.v[g] - mx.v[g]);
                        lo[g] = vmin(raw, lo[g]);
                        t[u * G + g] = vmax(raw, lowest);
                    }
                } else {
                    for (int g = 0; g < G; ++g) t[u * G + g] = zero;
                }
                for (int g = 0; g < G; ++g) e[u * G + g] = t[u * G + g];
            }
            exp_f32_n<V, U * G>(e);
            for (int u = 0; u < U && o0 + u < n_oct; ++u) {
                if ((o0 + u) * 8 + l < K) {
                    for (int g = 0; g < G; ++g) add_powers_f(p, g, e[u * G + g], t[u * G + g]);
                }
                if ((o0 + u + 1) % kFlushOctets == 0 || o0 + u == n_oct - 1)
                    for (int j = 0; j < 6; ++j)
                        for (int g = 0; g < G; ++g) {
                            D a, b;
                            widen<V>(p[j][g], a, b);
                            acc[j][l].v[2 * g] += a;
                            acc[j][l].v[2 * g + 1] += b;
                            p[j][g] = zero;
                        }
            }
        }
    }
    // octet_sum of every row: ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)).
    for (int j = 0; j < 6; ++j)
        for (int g = 0; g < GD; ++g) {
            const D s = ((acc[j][0].v[g] + acc[j][4].v[g]) + (acc[j][1].v[g] + acc[j][5].v[g])) +
                        ((acc[j][2].v[g] + acc[j][6].v[g]) + (acc[j][3].v[g] + acc[j][7].v[g]));
            std::memcpy(S[j] + g * W, &s, sizeof s);
        }
    for (int g = 0; g < G; ++g) {
        const typename V::iw c = chk.v[g] != chk.v[g];
        for (int j = 0; j < L; ++j) {
            best[g * L + j] = mx.v[g][j];
            min_t[g * L + j] = lo[g][j];
            bad[g * L + j] = c[j] != 0;
        }
    }
}

// The rows [begin, end) of a dense matrix by blocks (as top_label_dense_rows); returns the first row left for
// the generic loop (end, except for fewer than kDenseRows rows at the end of the matrix).
template <class T, class V>
CALIBKIT_INLINE int64_t temperature_dense_rows(const Matrix<T>& s, const Vector<int64_t>& labels,
                                               const Weights& weights, float bf, TemperatureSums& part,
                                               int64_t begin, int64_t end) {
    const int64_t K = s.cols;
    std::vector<float> buffer(static_cast<size_t>(K * kDenseBlock));
    float* const buf = buffer.data();
    double S[6][kDenseRows];
    float best[kDenseRows], min_t[kDenseRows];
    bool bad[kDenseRows];
    int64_t b0 = begin;
    while (b0 < end) {
        // n rows counted; m >= n read (whole octets; past the matrix the generic loop takes the last rows).
        int64_t n = std::min(kDenseBlock, end - b0);
        int64_t m = (n + kDenseRows - 1) / kDenseRows * kDenseRows;
        if (b0 + m > s.rows) n = m = n / kDenseRows * kDenseRows;
        if (m == 0) break;
        dense_block_copy<T, V>(s, b0, m, b0 + kDenseBlock + m <= end, buf);
        for (int64_t q = 0; q < m; q += kDenseRows) {
            const int64_t i0 = b0 + q;
            const int64_t valid = std::min<int64_t>(kDenseRows, n - q);
            temperature_dense_rows_f<V>(buf + q, K, bf, S, best, min_t, bad);
            // Row by row, in order: the label / weight checks, then the scores' check, as the generic loop.
            for (int r = 0; r < valid; ++r) {
                const int64_t i = i0 + r;
                const int64_t y = labels.raw(i);
                if (y < 0 || y >= K) {
                    part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
                    continue;
                }
                const double w = weights.at(i);
                if (weights.present() && !check_weight(w, i, part.status)) continue;
                if (bad[r]) {
                    const simd::RowReader<T, false> rr{reinterpret_cast<const char*>(s.row(i)), s.col_stride};
                    report_bad_element(rr, i, K, true, part.status);
                    continue;
                }
                const double Sr[6] = {S[0][r], S[1][r], S[2][r], S[3][r], S[4][r], S[5][r]};
                const double zl = static_cast<double>(buf[q + y * kDenseBlock + r]);
                add_temperature_row(Sr, static_cast<double>(bf), zl - static_cast<double>(best[r]), w,
                                    static_cast<double>(min_t[r]), part);
            }
        }
        b0 += n;
    }
    return b0;
}

template <class T, class V>
inline void temperature_chunk(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights, double b,
                              TemperatureSums& part, int64_t begin, int64_t end) {
    constexpr bool single = !std::is_same_v<T, double>;
    const simd::TailMask<V> tail(s.cols);
    const bool contiguous = s.row_contiguous();
    std::optional<RowWork<T, V>> work;
    if constexpr (single) work.emplace(s.cols);
    const float bf = static_cast<float>(b);
    int64_t first = begin;
    if constexpr (single) {
        if (dense_float_rows(s)) first = temperature_dense_rows<T, V>(s, labels, weights, bf, part, begin, end);
    }
    for (int64_t i = first; i < end; ++i) {
        const int64_t y = labels.raw(i);
        if (y < 0 || y >= s.cols) {
            part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
            continue;
        }
        const double w = weights.at(i);
        if (weights.present() && !check_weight(w, i, part.status)) continue;
        if constexpr (single) {
            RowSums r;
            if (!work->scan(s, i, false, false, 1, r, part.status, true)) continue;
            double S[6];
            const float min_t = temperature_sums_f<V>(work->row, s.cols, work->padf, bf, static_cast<float>(r.max), S);
            add_temperature_row(S, static_cast<double>(bf), work->at(y) - r.max, w, static_cast<double>(min_t), part);
        } else if (contiguous) {
            temperature_row<T, true, V>(s, tail, i, y, b, w, part);
        } else {
            temperature_row<T, false, V>(s, tail, i, y, b, w, part);
        }
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void temperature_chunk_avx2(const Matrix<T>& s, const Vector<int64_t>& labels,
                                                const Weights& weights, double b, TemperatureSums& part,
                                                int64_t begin, int64_t end) {
    temperature_chunk<T, simd::Vec<4>>(s, labels, weights, b, part, begin, end);
}
#endif

// Weighted NLL of softmax(b z) and its first four derivatives in b, in one pass.
// float32 / float16 logits: the sums are taken at bf = float(b) with float exps
// and moved to b by their Taylor expansion in b - bf (|b - bf| <= 6e-8 b).
template <class T>
TemperatureSums temperature_nll(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                                double b) {
    const int64_t K = scores.cols;
    const bool avx2 = simd::use_avx2();
    TemperatureSums total;
    chunked_reduce(
        scores.rows, rows_per_chunk(K), K, 10, total, [] { return TemperatureSums(); },
        [&](TemperatureSums& part, int64_t begin, int64_t end) {
#if CALIBKIT_HAVE_AVX2_CLONES
            if (avx2) return temperature_chunk_avx2<T>(scores, labels, weights, b, part, begin, end);
#endif
            (void)avx2;
            temperature_chunk<T, simd::Vec<2>>(scores, labels, weights, b, part, begin, end);
        },
        [](TemperatureSums& acc, const TemperatureSums& part) { acc.merge(part); });
    if constexpr (!std::is_same_v<T, double>) {
        const double h = b - static_cast<double>(static_cast<float>(b));
        total.loss += h * (total.d1 + h * (total.d2 / 2.0 + h * total.d3 / 6.0));
        total.d1 += h * (total.d2 + h * total.d3 / 2.0);
        total.d2 += h * total.d3;
        total.d3 += h * total.d4;
        total.d4 += h * total.d5;
    }
    return total;
}

struct VectorScalingSums {
    double count = 0.0, weight = 0.0, loss = 0.0;
    std::vector<double> grad_scale, grad_bias;
    Status status;

    explicit VectorScalingSums(int64_t K = 0) : grad_scale(static_cast<size_t>(K)), grad_bias(static_cast<size_t>(K)) {}
    void merge(const VectorScalingSums& o) {
        count += o.count;
        weight += o.weight;
        loss += o.loss;
        for (size_t k = 0; k < grad_scale.size(); ++k) {
            grad_scale[k] += o.grad_scale[k];
            grad_bias[k] += o.grad_bias[k];
        }
        status.merge(o.status);
    }
};

// One chunk of vector_scaling_nll. Each row is loaded once into a zero-padded
// double buffer (in L1); z' = a z + c, its maximum, e^{z' - max} (the double
// exp, 4 lanes with AVX2) and the gradient updates run over whole octets.
template <class T, class V>
inline void vector_scaling_chunk(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights,
                                 const double* scale, const double* bias, VectorScalingSums& part, int64_t begin,
                                 int64_t end) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int W = V::width;
    const int64_t K = s.cols;
    const int64_t n = padded_length(K);
    // a and c padded: a = 0, c = -inf beyond K, so padding never wins the maximum.
    std::vector<double> a(static_cast<size_t>(n), 0.0), c(static_cast<size_t>(n), -INFINITY);
    std::vector<double> z(static_cast<size_t>(n)), e(static_cast<size_t>(n));
    std::vector<double> gs(static_cast<size_t>(n), 0.0), gb(static_cast<size_t>(n), 0.0);
    for (int64_t k = 0; k < K; ++k) a[static_cast<size_t>(k)] = scale[k], c[static_cast<size_t>(k)] = bias[k];
    const D zero = splat<D>(0.0);
    for (int64_t i = begin; i < end; ++i) {
        const int64_t y = labels.raw(i);
        if (y < 0 || y >= K) {
            part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
            continue;
        }
        const double w = weights.at(i);
        if (weights.present() && !check_weight(w, i, part.status)) continue;
        load_row(s, i, z.data());
        I bad = (I)zero;
        D mx = splat<D>(-INFINITY);
        for (int64_t k = 0; k < n; k += W) {
            const D v = lanes_at<V>(z.data() + k);
            bad |= ~((v - v) == zero);
            const D t = lanes_at<V>(a.data() + k) * v + lanes_at<V>(c.data() + k);
            store_lanes<V>(e.data() + k, t);
            mx = vmax(t, mx);
        }
        bool any_bad = false;
        for (int j = 0; j < W; ++j) any_bad |= bad[j] != 0;
        if (any_bad && find_bad(z.data(), K, false, i, part.status)) continue;
        double best = -INFINITY;
        for (int j = 0; j < W; ++j) best = mx[j] > best ? mx[j] : best;
        const D shift = splat<D>(best);
        Octet<V> tot;
        for (int g = 0; g < Octet<V>::n; ++g) tot.v[g] = zero;
        for (int64_t k = 0; k < n; k += 8)
            for (int g = 0; g < Octet<V>::n; ++g) {
                double* p = e.data() + k + g * W;
                const D v = exp_nonpositive<V>(lanes_at<V>(p) - shift);
                store_lanes<V>(p, v);
                tot.v[g] += v;
            }
        // Padding lanes (z' = -inf) got exp's clamp value 3.3e-308: it vanishes in a total that holds the
        // row maximum's 1, and the gradient gets exact zeros.
        for (int64_t k = K; k < n; ++k) e[static_cast<size_t>(k)] = 0.0;
        const double total = octet_sum(tot);
        const double shifted_label = scale[y] * z[static_cast<size_t>(y)] + bias[y] - best;
        part.count += 1.0;
        part.weight += w;
        part.loss += w * (std::log(total) - shifted_label);
        const D inv = splat<D>(w / total);
        for (int64_t k = 0; k < n; k += W) {
            const D g = lanes_at<V>(e.data() + k) * inv;
            store_lanes<V>(gb.data() + k, lanes_at<V>(gb.data() + k) + g);
            store_lanes<V>(gs.data() + k, lanes_at<V>(gs.data() + k) + g * lanes_at<V>(z.data() + k));
        }
        gb[static_cast<size_t>(y)] -= w;
        gs[static_cast<size_t>(y)] -= w * z[static_cast<size_t>(y)];
    }
    for (int64_t k = 0; k < K; ++k) {
        part.grad_bias[static_cast<size_t>(k)] += gb[static_cast<size_t>(k)];
        part.grad_scale[static_cast<size_t>(k)] += gs[static_cast<size_t>(k)];
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void vector_scaling_chunk_avx2(const Matrix<T>& s, const Vector<int64_t>& labels,
                                                   const Weights& weights, const double* scale, const double* bias,
                                                   VectorScalingSums& part, int64_t begin, int64_t end) {
    vector_scaling_chunk<T, simd::Vec<4>>(s, labels, weights, scale, bias, part, begin, end);
}
#endif

// Weighted NLL of softmax(scale * z + bias) and its gradient in (scale, bias).
template <class T>
VectorScalingSums vector_scaling_nll(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                                     const double* scale, const double* bias) {
    const int64_t K = scores.cols;
    const bool avx2 = simd::use_avx2();
    VectorScalingSums total(K);
    chunked_reduce(
        scores.rows, rows_per_chunk(K), 3 * K, 2 * K + 3, total, [K] { return VectorScalingSums(K); },
        [&](VectorScalingSums& part, int64_t begin, int64_t end) {
#if CALIBKIT_HAVE_AVX2_CLONES
            if (avx2) return vector_scaling_chunk_avx2<T>(scores, labels, weights, scale, bias, part, begin, end);
#endif
            (void)avx2;
            vector_scaling_chunk<T, simd::Vec<2>>(scores, labels, weights, scale, bias, part, begin, end);
        },
        [](VectorScalingSums& acc, const VectorScalingSums& part) { acc.merge(part); });
    return total;
}

}  // namespace calibkit
