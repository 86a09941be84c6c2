// Per-sample uncertainty scores, the ensemble / MC-dropout decomposition and
// the confidence loss, each one fused pass over the rows.
//
// A row is first copied into a small per-thread buffer (padded with zeros to a
// multiple of 8, so the vector loops need no scalar tail; a contiguous float32
// row of a multiple of 8 elements is read in place); everything after that
// reads the buffer, which stays in L1. From logits z and an inverse
// temperature b, with u = z - max z and t = max(b u, x_min):
//   s0 = sum_k e^{t_k},  s1 = sum_k e^{t_k} t_k,  LSE(b z) = b max z + log s0,
//   max softmax = 1 / s0,  margin = (1 - e^{b (z_(2) - z_(1))}) / s0,
//   entropy = min(max(log s0 - s1 / s0, 0), log K),  energy = -LSE(b z) / b,
//   KL(U || softmax) = log s0 - log K - b mean(u),  logit norm = ||z||_2.
// From probabilities p: entropy = -sum p log p (0 log 0 = 0), KL(U || p) =
// -log K - mean(log p) (inf when some p_k = 0).
//
// x_min is where the exp clamps its argument (-708 in double, -87 in float):
// e^{t} is then at least the smallest normal number and |e^{t} t| < 1/e, so no
// product in s1 overflows or meets 0 * inf, however large the logits (u may
// overflow to -inf when the logits span more than the largest finite value).
// Each clamped element adds at most 2.4e-305 (double) / 1.5e-36 (float) to s1.
//
// Precision follows the input: float64 rows are read into a double buffer and
// every exp / log is a double one (~1 ulp); float32 / float16 rows are read
// into a float buffer and exp / log run on 8 float lanes (relative error
// < 2.5e-7 per element, the size of the input's own rounding; < 1e-6 in every
// score) -- twice the lanes and a shorter polynomial, which is what keeps these
// kernels near the memory bandwidth. Sums are accumulated in double (the float
// path adds float partial sums of at most 8 terms into them every 64 elements).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "binning.hpp"
#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace calibkit {

enum ScoreKind : int {
    kMaxProbability = 0,
    kMargin = 1,
    kEntropy = 2,
    kEnergy = 3,
    kLogitNorm = 4,
    kKlToUniform = 5,
    kNumScores = 6,
};

inline int64_t padded_length(int64_t K) { return (K + 7) / 8 * 8; }

// Row i of s into buf[0..K) as doubles, zeros up to padded_length(K).
template <class T>
CALIBKIT_INLINE void load_row(const Matrix<T>& s, int64_t i, double* buf) {
    const int64_t K = s.cols;
    if (s.row_contiguous()) {
        const T* r = s.row(i);
        for (int64_t k = 0; k < K; ++k) buf[k] = load(r + k);
    } else {
        for (int64_t k = 0; k < K; ++k) buf[k] = s(i, k);
    }
    for (int64_t k = K; k < padded_length(K); ++k) buf[k] = 0.0;
}

// Valid-lane masks of the last octet of a padded row of K elements.
template <class V>
struct PadMask {
    typename V::i valid[simd::Octet<V>::n];
    int64_t last;  // first element of the last octet
    explicit PadMask(int64_t K) {
        last = padded_length(K) - 8;
        for (int g = 0; g < simd::Octet<V>::n; ++g)
            for (int j = 0; j < V::width; ++j) valid[g][j] = (last + g * V::width + j < K) ? -1 : 0;
    }
};

template <class V>
CALIBKIT_INLINE typename V::d lanes_at(const double* p) {
    typename V::d v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <class V>
CALIBKIT_INLINE void store_lanes(double* p, typename V::d v) {
    std::memcpy(p, &v, sizeof v);
}

// Row i of s (float32 or float16) into buf[0..K) as floats, zeros up to padded_length(K).
template <class T>
CALIBKIT_INLINE void load_row_f(const Matrix<T>& s, int64_t i, float* buf) {
    const int64_t K = s.cols;
    if (s.row_contiguous()) {
        const T* r = s.row(i);
        for (int64_t k = 0; k < K; ++k) buf[k] = load_float(r + k);
    } else {
        for (int64_t k = 0; k < K; ++k)
            buf[k] = load_float(reinterpret_cast<const T*>(s.data + i * s.row_stride + k * s.col_stride));
    }
    for (int64_t k = K; k < padded_length(K); ++k) buf[k] = 0.0f;
}

// Float rows: an octet of 8 floats is 8 / (2 width) registers of 2 width lanes.
template <class V>
constexpr int kFloatGroups = 8 / (2 * V::width);

template <class V>
struct PadMaskF {
    typename V::iw valid[kFloatGroups<V>];
    int64_t last;
    explicit PadMaskF(int64_t K) {
        last = padded_length(K) - 8;
        for (int g = 0; g < kFloatGroups<V>; ++g)
            for (int j = 0; j < 2 * V::width; ++j) valid[g][j] = (last + g * 2 * V::width + j < K) ? -1 : 0;
    }
};

template <class V>
CALIBKIT_INLINE typename V::fw flanes_at(const float* p) {
    typename V::fw v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Adds the float lanes of x (float group g of an octet) to double accumulators.
template <class V>
CALIBKIT_INLINE void add_widened(simd::Octet<V>& acc, int g, typename V::fw x) {
    typename V::d lo, hi;
    simd::widen<V>(x, lo, hi);
    acc.v[2 * g] += lo;
    acc.v[2 * g + 1] += hi;
}

template <class V>
CALIBKIT_INLINE void add_widened_product(simd::Octet<V>& acc, int g, typename V::fw x, typename V::fw y) {
    typename V::d xl, xh, yl, yh;
    simd::widen<V>(x, xl, xh);
    simd::widen<V>(y, yl, yh);
    acc.v[2 * g] += xl * yl;
    acc.v[2 * g + 1] += xh * yh;
}

// What one pass over a row gives.
struct RowSums {
    double max = -INFINITY, second = -INFINITY;  // the two largest values (equal if tied)
    double sum = 0.0, sum_sq = 0.0;              // of the values (logits)
    double s0 = 0.0, s1 = 0.0;                   // softmax sums (logits)
    double plogp = 0.0, sum_log = 0.0;           // sum p log p, sum log p (probabilities)
    bool has_zero = false;                       // some p_k <= 0 (probabilities)
};

// First element of a row that is not finite (or, for probabilities, not in
// [0, 1]); false if there is none.
template <class E>
bool find_bad(const E* buf, int64_t K, bool probabilities, int64_t i, Status& st) {
    for (int64_t k = 0; k < K; ++k) {
        const double v = static_cast<double>(buf[k]);
        if (!is_finite(v)) {
            st.set(kScoreNotFinite, i, k, v);
            return true;
        }
        if (probabilities && !valid_probability(v)) {
            st.set(kProbabilityOutOfRange, i, k, v);
            return true;
        }
    }
    return false;
}

// The overall top two of per-lane (max, second) pairs.
inline void top_two(double a, double b, double& m1, double& m2) {
    if (a > m1) {
        m2 = std::max(m1, b);
        m1 = a;
    } else {
        m2 = std::max(m2, a);
    }
}

// Checks, the largest value (top >= 1) and the second largest (top == 2; equal
// if tied) and (logits) the value sums of a loaded row. False (status set) on
// bad input.
template <class V>
CALIBKIT_INLINE bool scan_row(const double* buf, int64_t K, const PadMask<V>& pad, bool probabilities, int top,
                              int64_t i, RowSums& r, Status& st) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int G = Octet<V>::n;
    const D zero = splat<D>(0.0), neg_inf = splat<D>(-INFINITY);
    const D lo = splat<D>(-kProbabilityTolerance), hi = splat<D>(1.0 + kProbabilityTolerance);
    I bad = (I)zero;
    D mx[G], sc[G], sum[G], sq[G];
    for (int g = 0; g < G; ++g) mx[g] = sc[g] = neg_inf, sum[g] = sq[g] = zero;
    const int64_t n = padded_length(K);
    for (int64_t k = 0; k < n; k += 8) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            D v = lanes_at<V>(buf + k + g * V::width);
            bad |= ~((v - v) == zero);
            if (probabilities) bad |= ~((v >= lo) & (v <= hi));
            sum[g] += v;
            sq[g] += v * v;
            if (top > 0) {
                if (last) v = select(pad.valid[g], v, neg_inf);
                if (top > 1) sc[g] = vmax(sc[g], vmin(mx[g], v));
                mx[g] = vmax(mx[g], v);
            }
        }
    }
    bool any_bad = false;
    for (int j = 0; j < V::width; ++j) any_bad |= bad[j] != 0;
    if (any_bad && find_bad(buf, K, probabilities, i, st)) return false;
    // The overall top two are among the lanes' top two.
    double m1 = -INFINITY, m2 = -INFINITY, s = 0.0, q = 0.0;
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < V::width; ++j) {
            if (top > 1) top_two(mx[g][j], sc[g][j], m1, m2);
            else m1 = std::max(m1, mx[g][j]);
        }
    Octet<V> os, oq;
    for (int g = 0; g < G; ++g) os.v[g] = sum[g], oq.v[g] = sq[g];
    s = octet_sum(os);
    q = octet_sum(oq);
    r.max = m1;
    r.second = m2;
    r.sum = s;
    r.sum_sq = q;
    return true;
}

// The argument below which exp_nonpositive / exp_f32 clamp (see the header comment).
constexpr double kExpMin = -708.0;
constexpr float kExpMinF = -87.0f;

// s0 and s1 of a logit row after scan_row; with `store`, buf[k] becomes e^{t_k}
// (0 in the padding).
template <class V>
CALIBKIT_INLINE void softmax_sums(double* buf, int64_t K, const PadMask<V>& pad, double b, bool store,
                                  RowSums& r) {
    using namespace simd;
    typedef typename V::d D;
    constexpr int G = Octet<V>::n;
    const D zero = splat<D>(0.0), shift = splat<D>(r.max), scale = splat<D>(b), lowest = splat<D>(kExpMin);
    Octet<V> s0, s1;
    for (int g = 0; g < G; ++g) s0.v[g] = s1.v[g] = zero;
    const int64_t n = padded_length(K);
    for (int64_t k = 0; k < n; k += 8) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            double* p = buf + k + g * V::width;
            D t = vmax(scale * (lanes_at<V>(p) - shift), lowest);
            D e = exp_nonpositive<V>(t);
            if (last) {
                t = select(pad.valid[g], t, zero);
                e = select(pad.valid[g], e, zero);
            }
            s0.v[g] += e;
            s1.v[g] += e * t;
            if (store) store_lanes<V>(p, e);
        }
    }
    r.s0 = octet_sum(s0);
    r.s1 = octet_sum(s1);
}

// sum p log p (and, with `logs`, sum log p) of a probability row after scan_row.
template <class V>
CALIBKIT_INLINE void entropy_sums(const double* buf, int64_t K, const PadMask<V>& pad, bool logs, RowSums& r) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int G = Octet<V>::n;
    const D zero = splat<D>(0.0);
    Octet<V> a, l;
    I zeros = (I)zero;
    for (int g = 0; g < G; ++g) a.v[g] = l.v[g] = zero;
    const int64_t n = padded_length(K);
    for (int64_t k = 0; k < n; k += 8) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            const D p = lanes_at<V>(buf + k + g * V::width);
            I positive = p > zero;
            const D lg = select(positive, log_positive<V>(select(positive, p, splat<D>(1.0))), zero);
            if (last) {
                zeros |= ~positive & pad.valid[g];
            } else {
                zeros |= ~positive;
            }
            a.v[g] += p * lg;
            if (logs) l.v[g] += lg;
        }
    }
    r.plogp = octet_sum(a);
    r.sum_log = octet_sum(l);
    bool z = false;
    for (int j = 0; j < V::width; ++j) z |= zeros[j] != 0;
    r.has_zero = z;
}

// The float-row twins of scan_row, softmax_sums and entropy_sums: the same
// results from float lanes (sums in double). `sums`: whether sum / sum_sq are needed.
template <class V>
CALIBKIT_INLINE bool scan_row_f(const float* buf, int64_t K, const PadMaskF<V>& pad, bool probabilities, bool sums,
                                int top, int64_t i, RowSums& r, Status& st) {
    using namespace simd;
    typedef typename V::fw F;
    typedef typename V::iw I;
    constexpr int G = kFloatGroups<V>;
    const F zero = splat_f<F>(0.0f), neg_inf = splat_f<F>(-INFINITY);
    // The float bounds equivalent to [-kProbabilityTolerance, 1 + kProbabilityTolerance] for float values.
    const F lo = splat_f<F>(-9.99999997e-07f), hi = splat_f<F>(1.00000095f);
    I bad = (I)zero;
    F mx[G], sc[G];
    Octet<V> sum, sq;
    for (int g = 0; g < G; ++g) mx[g] = sc[g] = neg_inf;
    for (int g = 0; g < Octet<V>::n; ++g) sum.v[g] = sq.v[g] = splat<typename V::d>(0.0);
    const int64_t n = padded_length(K);
    for (int64_t k = 0; k < n; k += 8) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            F v = flanes_at<V>(buf + k + g * 2 * V::width);
            bad |= ~((v - v) == zero);
            if (probabilities) bad |= ~((v >= lo) & (v <= hi));
            if (sums) {
                add_widened<V>(sum, g, v);
                add_widened_product<V>(sq, g, v, v);
            }
            if (top > 0) {
                if (last) v = select_f(pad.valid[g], v, neg_inf);
                if (top > 1) sc[g] = vmax(sc[g], vmin(mx[g], v));
                mx[g] = vmax(mx[g], v);
            }
        }
    }
    bool any_bad = false;
    for (int j = 0; j < 2 * V::width; ++j) any_bad |= bad[j] != 0;
    if (any_bad && find_bad(buf, K, probabilities, i, st)) return false;
    double m1 = -INFINITY, m2 = -INFINITY;
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < 2 * V::width; ++j) {
            if (top > 1) top_two(mx[g][j], sc[g][j], m1, m2);
            else m1 = std::max(m1, static_cast<double>(mx[g][j]));
        }
    r.max = m1;
    r.second = m2;
    if (sums) {
        r.sum = octet_sum(sum);
        r.sum_sq = octet_sum(sq);
    }
    return true;
}

// Float partial sums are flushed into the double accumulators every kFlushOctets
// octets: each float partial adds at most 8 terms of one sign (relative error
// < 5e-7), and the flush pattern depends only on the element index, so the
// SSE2 and AVX2 clones (and the Numba twin) add the same numbers in the same order.
constexpr int64_t kFlushOctets = 8;

template <class V>
CALIBKIT_INLINE void flush(simd::Octet<V>& acc, typename V::fw* part) {
    for (int g = 0; g < kFloatGroups<V>; ++g) {
        add_widened<V>(acc, g, part[g]);
        part[g] = simd::splat_f<typename V::fw>(0.0f);
    }
}

// s0 (and with `with_s1`, s1) of a float row after scan_row_f; with Store,
// out[k] = e^{t_k} (0 in the padding; out may be buf).
template <class V, bool Store>
CALIBKIT_INLINE void softmax_sums_f(const float* buf, float* out, int64_t K, const PadMaskF<V>& pad, float b,
                                    bool with_s1, RowSums& r) {
    using namespace simd;
    typedef typename V::fw F;
    constexpr int G = kFloatGroups<V>;
    const F zero = splat_f<F>(0.0f), shift = splat_f<F>(static_cast<float>(r.max)), scale = splat_f<F>(b);
    const F lowest = splat_f<F>(kExpMinF);
    Octet<V> s0, s1;
    for (int g = 0; g < Octet<V>::n; ++g) s0.v[g] = s1.v[g] = splat<typename V::d>(0.0);
    F p0[G], p1[G];
    for (int g = 0; g < G; ++g) p0[g] = p1[g] = zero;
    const int64_t n = padded_length(K);
    for (int64_t k = 0, octet = 1; k < n; k += 8, ++octet) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            const int64_t at = k + g * 2 * V::width;
            F t = vmax(scale * (flanes_at<V>(buf + at) - shift), lowest);
            F e = exp_f32<V>(t);
            if (last) {
                t = select_f(pad.valid[g], t, zero);
                e = select_f(pad.valid[g], e, zero);
            }
            p0[g] += e;
            if (with_s1) p1[g] += e * t;
            if constexpr (Store) std::memcpy(out + at, &e, sizeof e);
        }
        if (octet % kFlushOctets == 0 || last) {
            flush<V>(s0, p0);
            if (with_s1) flush<V>(s1, p1);
        }
    }
    r.s0 = octet_sum(s0);
    r.s1 = with_s1 ? octet_sum(s1) : 0.0;
}

template <class V>
CALIBKIT_INLINE void entropy_sums_f(const float* buf, int64_t K, const PadMaskF<V>& pad, bool logs, RowSums& r) {
    using namespace simd;
    typedef typename V::fw F;
    typedef typename V::iw I;
    constexpr int G = kFloatGroups<V>;
    const F zero = splat_f<F>(0.0f);
    Octet<V> a, l;
    for (int g = 0; g < Octet<V>::n; ++g) a.v[g] = l.v[g] = splat<typename V::d>(0.0);
    F pa[G], pl[G];
    for (int g = 0; g < G; ++g) pa[g] = pl[g] = zero;
    I zeros = (I)zero;
    const int64_t n = padded_length(K);
    for (int64_t k = 0, octet = 1; k < n; k += 8, ++octet) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            const F p = flanes_at<V>(buf + k + g * 2 * V::width);
            const I positive = p > zero;
            const F lg = select_f(positive, log_f32<V>(select_f(positive, p, splat_f<F>(1.0f))), zero);
            zeros |= last ? (~positive & pad.valid[g]) : ~positive;
            pa[g] += p * lg;
            if (logs) pl[g] += lg;
        }
        if (octet % kFlushOctets == 0 || last) {
            flush<V>(a, pa);
            if (logs) flush<V>(l, pl);
        }
    }
    r.plogp = octet_sum(a);
    r.sum_log = logs ? octet_sum(l) : 0.0;
    bool z = false;
    for (int j = 0; j < 2 * V::width; ++j) z |= zeros[j] != 0;
    r.has_zero = z;
}

// Row scores of one scanned row (see the header comment); `want` is a bit mask of ScoreKind.
inline void row_score_values(const RowSums& r, int64_t K, double logK, bool from_logits, double b, unsigned want,
                             double* out) {
    if (from_logits) {
        const double log_s0 = std::log(r.s0);
        if (want & (1u << kMaxProbability)) out[kMaxProbability] = 1.0 / r.s0;
        if (want & (1u << kMargin)) out[kMargin] = (1.0 - simd::exp_nonpositive(b * (r.second - r.max))) / r.s0;
        if (want & (1u << kEntropy)) out[kEntropy] = std::min(std::max(log_s0 - r.s1 / r.s0, 0.0), logK);
        if (want & (1u << kEnergy)) out[kEnergy] = -(r.max + log_s0 / b);
        if (want & (1u << kLogitNorm)) out[kLogitNorm] = std::sqrt(r.sum_sq);
        if (want & (1u << kKlToUniform)) {
            const double mean_u = r.sum / static_cast<double>(K) - r.max;
            out[kKlToUniform] = std::max(log_s0 - logK - b * mean_u, 0.0);
        }
    } else {
        if (want & (1u << kMaxProbability)) out[kMaxProbability] = r.max;
        if (want & (1u << kMargin)) out[kMargin] = r.max - r.second;
        if (want & (1u << kEntropy)) out[kEntropy] = std::max(-r.plogp, 0.0);
        if (want & (1u << kKlToUniform))
            out[kKlToUniform] = r.has_zero ? INFINITY : std::max(-logK - r.sum_log / static_cast<double>(K), 0.0);
    }
}

// ||x||_2 without overflow or underflow: max |x_k| times the norm of x / max |x_k|.
template <class E>
double scaled_norm(const E* x, int64_t K) {
    double big = 0.0;
    for (int64_t k = 0; k < K; ++k) big = std::max(big, std::fabs(static_cast<double>(x[k])));
    if (big == 0.0) return 0.0;
    double q = 0.0;
    for (int64_t k = 0; k < K; ++k) {
        const double v = static_cast<double>(x[k]) / big;
        q += v * v;
    }
    return big * std::sqrt(q);
}

// The mean of x without overflow: sum_k x_k / K, in index order (when the plain sum overflows).
template <class E>
double scaled_mean(const E* x, int64_t K) {
    const double inv = 1.0 / static_cast<double>(K);
    double m = 0.0;
    for (int64_t k = 0; k < K; ++k) m += static_cast<double>(x[k]) * inv;
    return m;
}

// One thread's working state for rows of a Matrix<T>: the row buffer (double
// for float64 input, float for float32 / float16) and the pad masks.
template <class T, class V>
struct RowWork {
    static constexpr bool single = !std::is_same_v<T, double>;
    int64_t K;
    double logK;
    PadMask<V> pad;
    PadMaskF<V> padf;
    std::vector<double> d;  // the row (double path)
    std::vector<float> f;   // the row (float path)
    const float* row = nullptr;  // the float row being read: f, or the input itself when it needs no padding

    explicit RowWork(int64_t cols)
        : K(cols), logK(std::log(static_cast<double>(cols))), pad(cols), padf(cols), d(single ? 0 : static_cast<size_t>(padded_length(cols))),
          f(single ? static_cast<size_t>(padded_length(cols)) : 0) {}

    // Loads and checks row i; the top two values and (with `sums`) the value sums.
    // `in_place`: a contiguous float32 row of a multiple of 8 elements is read
    // where it is (no copy); softmax(.., store=true) needs in_place = false.
    CALIBKIT_INLINE bool scan(const Matrix<T>& s, int64_t i, bool probabilities, bool sums, int top, RowSums& r,
                              Status& st, bool in_place = false) {
        if constexpr (single) {
            if (std::is_same_v<T, float> && in_place && K % 8 == 0 && s.row_contiguous()) {
                row = reinterpret_cast<const float*>(s.row(i));
            } else {
                load_row_f(s, i, f.data());
                row = f.data();
            }
            return scan_row_f<V>(row, K, padf, probabilities, sums, top, i, r, st);
        } else {
            (void)sums;
            load_row(s, i, d.data());
            return scan_row<V>(d.data(), K, pad, probabilities, top, i, r, st);
        }
    }
    // The value at k of the loaded row (or, after softmax(.., true), e^{b u_k}).
    CALIBKIT_INLINE double at(int64_t k) const {
        if constexpr (single) return static_cast<double>(row[k]);
        else return d[static_cast<size_t>(k)];
    }
    CALIBKIT_INLINE void softmax(double b, bool store, bool with_s1, RowSums& r) {
        if constexpr (single) {
            if (store) softmax_sums_f<V, true>(f.data(), f.data(), K, padf, static_cast<float>(b), with_s1, r);
            else softmax_sums_f<V, false>(row, nullptr, K, padf, static_cast<float>(b), with_s1, r);
        } else {
            softmax_sums<V>(d.data(), K, pad, b, store, r);
        }
    }
    CALIBKIT_INLINE void entropy(bool logs, RowSums& r) {
        if constexpr (single) entropy_sums_f<V>(row, K, padf, logs, r);
        else entropy_sums<V>(d.data(), K, pad, logs, r);
    }
    CALIBKIT_INLINE double norm() const {
        if constexpr (single) return scaled_norm(row, K);
        else return scaled_norm(d.data(), K);
    }
    CALIBKIT_INLINE double mean() const {
        if constexpr (single) return scaled_mean(row, K);
        else return scaled_mean(d.data(), K);
    }
    // Scans ensemble member row i and computes its entropy; afterwards its
    // probabilities are p_k = at(k) * *scale. False (status set) on bad input.
    CALIBKIT_INLINE bool member(const Matrix<T>& m, int64_t i, bool from_logits, double* row_entropy, double* scale,
                                double* row_max, Status& st) {
        RowSums r;
        if (!scan(m, i, !from_logits, false, from_logits ? 1 : 0, r, st, !from_logits)) return false;
        if (from_logits) {
            softmax(1.0, true, true, r);
            *scale = 1.0 / r.s0;
            *row_max = r.max;
            *row_entropy = std::min(std::max(std::log(r.s0) - r.s1 / r.s0, 0.0), logK);
        } else {
            entropy(false, r);
            *scale = 1.0;
            *row_max = 0.0;
            *row_entropy = std::max(-r.plogp, 0.0);
        }
        return true;
    }
    // p_c of member row i again, one element (the same bits as member() gave).
    static CALIBKIT_INLINE double member_value(const Matrix<T>& m, int64_t i, int64_t c, bool from_logits,
                                               double scale, double row_max) {
        const T* at = reinterpret_cast<const T*>(m.data + i * m.row_stride + c * m.col_stride);
        if (!from_logits) return static_cast<double>(load(at)) * scale;
        if constexpr (single) {
            const float u = load_float(at) - static_cast<float>(row_max);
            return static_cast<double>(simd::exp_f32(1.0f * u)) * scale;
        } else {
            return simd::exp_nonpositive(1.0 * (load(at) - row_max)) * scale;
        }
    }
};

template <class T, class V>
void row_scores_chunk(const Matrix<T>& s, bool from_logits, double b, unsigned want, double* const* outs,
                      Status& st, int64_t begin, int64_t end) {
    const int64_t K = s.cols;
    RowWork<T, V> w(K);
    const unsigned softmax_kinds = (1u << kMaxProbability) | (1u << kMargin) | (1u << kEntropy) | (1u << kEnergy) |
                                   (1u << kKlToUniform);
    const bool need_softmax = from_logits && (want & softmax_kinds);
    const bool need_entropy = !from_logits && (want & ((1u << kEntropy) | (1u << kKlToUniform)));
    const bool need_sums = from_logits && (want & ((1u << kLogitNorm) | (1u << kKlToUniform)));
    // the row maximum: from logits for the softmax, from probabilities for max_probability / margin
    const int top = (want & (1u << kMargin)) ? 2 : (from_logits || (want & (1u << kMaxProbability))) ? 1 : 0;
    const double logK = std::log(static_cast<double>(K));
    double values[kNumScores];
    for (int64_t i = begin; i < end; ++i) {
        RowSums r;
        if (!w.scan(s, i, !from_logits, need_sums, top, r, st, true)) {
            for (int c = 0; c < kNumScores; ++c)
                if (outs[c]) outs[c][i] = NAN;
            continue;
        }
        if (need_softmax) w.softmax(b, false, (want >> kEntropy) & 1u, r);
        if (need_entropy) w.entropy((want >> kKlToUniform) & 1u, r);
        row_score_values(r, K, logK, from_logits, b, want, values);
        if ((want & (1u << kLogitNorm)) && !(r.sum_sq > 1e-280 && r.sum_sq < 1e280))
            values[kLogitNorm] = w.norm();  // the plain sum of squares over- or underflowed
        if (from_logits && (want & (1u << kKlToUniform)) && !is_finite(r.sum)) {
            // the plain sum of the logits overflowed: KL from their mean taken term by term
            const double log_s0 = std::log(r.s0);
            values[kKlToUniform] = std::max(log_s0 - logK - b * (w.mean() - r.max), 0.0);
        }
        for (int c = 0; c < kNumScores; ++c)
            if (outs[c]) outs[c][i] = values[c];
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void row_scores_chunk_avx2(const Matrix<T>& s, bool from_logits, double b, unsigned want,
                                               double* const* outs, Status& st, int64_t begin, int64_t end) {
    row_scores_chunk<T, simd::Vec<4>>(s, from_logits, b, want, outs, st, begin, end);
}
#endif

// Per-row scores into outs[kind][0..N) for each kind whose pointer is not null.
template <class T>
Status row_scores(const Matrix<T>& s, bool from_logits, double b, double* const* outs) {
    unsigned want = 0;
    for (int c = 0; c < kNumScores; ++c)
        if (outs[c]) want |= 1u << c;
    const int64_t chunk = rows_per_chunk(s.cols);
    const int64_t n_chunks = (s.rows + chunk - 1) / chunk;
    std::vector<Status> found(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    const bool avx2 = simd::use_avx2();
    chunked_for(s.rows, chunk, s.cols, [&](int64_t begin, int64_t end) {
        Status& st = found[static_cast<size_t>(begin / chunk)];
#if CALIBKIT_HAVE_AVX2_CLONES
        if (avx2) return row_scores_chunk_avx2<T>(s, from_logits, b, want, outs, st, begin, end);
#endif
        (void)avx2;
        row_scores_chunk<T, simd::Vec<2>>(s, from_logits, b, want, outs, st, begin, end);
    });
    Status out;
    for (const Status& x : found) out.merge(x);
    return out;
}

// ---------------------------------------------------------------------------
// Ensembles / MC dropout: S passes (S, N, K) through strides.

template <class T>
struct Passes {
    const char* data;
    int64_t S, N, K;
    int64_t s_stride, n_stride, k_stride;  // bytes
    Matrix<T> pass(int64_t s) const { return Matrix<T>{data + s * s_stride, N, K, n_stride, k_stride}; }
};

// Welford's update of the running sum and the sum of squared deviations of
// one member's probabilities p_k = at(k) * scale (`count` members seen before).
template <class W>
CALIBKIT_INLINE void welford_update(const W& w, double scale, int64_t count, double* sum, double* m2) {
    const double inv_old = count > 0 ? 1.0 / static_cast<double>(count) : 0.0;
    const double inv_new = 1.0 / static_cast<double>(count + 1);
    for (int64_t k = 0; k < w.K; ++k) {
        const double p = w.at(k) * scale;
        const double old_mean = sum[k] * inv_old;
        sum[k] += p;
        const double new_mean = sum[k] * inv_new;
        m2[k] += (p - old_mean) * (p - new_mean);
    }
}

// Entropy of a probability row held in buf (padded).
template <class V>
CALIBKIT_INLINE double row_entropy(const double* buf, int64_t K, const PadMask<V>& pad) {
    RowSums r;
    entropy_sums<V>(buf, K, pad, false, r);
    return std::max(-r.plogp, 0.0);
}

struct DecomposeOut {
    double* mean;          // N x K, C order
    double* total;         // N: H[E p]
    double* aleatoric;     // N: E[H p]
    double* epistemic;     // N: total - aleatoric (mutual information)
    double* variance;      // N: Var over members of p[argmax E p]
    int64_t* prediction;   // N: argmax E p
};

// Rows [begin, end) are done member by member (each member's rows of the chunk
// are one contiguous read), with the chunk's running sums in a small buffer.
template <class T, class V>
void decompose_chunk(const Passes<T>& x, bool from_logits, const DecomposeOut& out, Status& st, int64_t begin,
                     int64_t end) {
    const int64_t K = x.K, S = x.S, B = end - begin;
    RowWork<T, V> w(K);
    std::vector<double> sum(static_cast<size_t>(B * K), 0.0), entropy_sum(static_cast<size_t>(B), 0.0);
    std::vector<double> scale(static_cast<size_t>(B * S)), row_max(static_cast<size_t>(B * S));
    std::vector<char> ok(static_cast<size_t>(B), 1);
    for (int64_t s = 0; s < S; ++s) {
        const Matrix<T> m = x.pass(s);
        for (int64_t b = 0; b < B; ++b) {
            if (!ok[b]) continue;
            const int64_t i = begin + b;
            double h;
            Status member;
            if (!w.member(m, i, from_logits, &h, &scale[b * S + s], &row_max[b * S + s], member)) {
                member.col = s * K + member.col;  // position in the (S, N, K) array: (s, i, k)
                st.merge(member);
                ok[b] = 0;
                continue;
            }
            const double c = scale[b * S + s];
            double* acc = sum.data() + b * K;
            for (int64_t k = 0; k < K; ++k) acc[k] += w.at(k) * c;
            entropy_sum[b] += h;
        }
    }
    std::vector<double> mean_row(static_cast<size_t>(padded_length(K)), 0.0);
    const double inv = 1.0 / static_cast<double>(S);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t i = begin + b;
        double* mean = out.mean + i * K;
        if (!ok[b]) {
            std::fill(mean, mean + K, NAN);
            out.total[i] = out.aleatoric[i] = out.epistemic[i] = out.variance[i] = NAN;
            out.prediction[i] = -1;
            continue;
        }
        int64_t best = 0;
        for (int64_t k = 0; k < K; ++k) {
            mean_row[k] = sum[b * K + k] * inv;
            mean[k] = mean_row[k];
            if (mean_row[k] > mean_row[best]) best = k;
        }
        // Variance of the predicted class: a second pass over its S values only.
        double dev = 0.0;
        for (int64_t s = 0; s < S; ++s) {
            const double p =
                RowWork<T, V>::member_value(x.pass(s), i, best, from_logits, scale[b * S + s], row_max[b * S + s]);
            dev += (p - mean_row[best]) * (p - mean_row[best]);
        }
        const double total = row_entropy<V>(mean_row.data(), K, w.pad);
        const double aleatoric = entropy_sum[b] * inv;
        out.total[i] = total;
        out.aleatoric[i] = aleatoric;
        out.epistemic[i] = std::max(total - aleatoric, 0.0);
        out.variance[i] = dev * inv;
        out.prediction[i] = best;
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void decompose_chunk_avx2(const Passes<T>& x, bool from_logits, const DecomposeOut& out,
                                              Status& st, int64_t begin, int64_t end) {
    decompose_chunk<T, simd::Vec<4>>(x, from_logits, out, st, begin, end);
}
#endif

// Predictive mean, total / aleatoric / epistemic entropy and the variance of the
// predicted class's probability over S members, row by row (no S x N x K softmax).
template <class T>
Status decompose(const Passes<T>& x, bool from_logits, const DecomposeOut& out) {
    const int64_t chunk = rows_per_chunk(x.S * x.K);
    const int64_t n_chunks = (x.N + chunk - 1) / chunk;
    std::vector<Status> found(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    const bool avx2 = simd::use_avx2();
    chunked_for(x.N, chunk, x.S * x.K, [&](int64_t begin, int64_t end) {
        Status& st = found[static_cast<size_t>(begin / chunk)];
#if CALIBKIT_HAVE_AVX2_CLONES
        if (avx2) return decompose_chunk_avx2<T>(x, from_logits, out, st, begin, end);
#endif
        (void)avx2;
        decompose_chunk<T, simd::Vec<2>>(x, from_logits, out, st, begin, end);
    });
    Status st;
    for (const Status& s : found) st.merge(s);
    return st;
}

// The streaming form: add one member (N, K) to the running state (sum and m2,
// N x K C order; entropy_sum, N), `count` members having been added before.
// All rows are checked before anything is changed, so a rejected member leaves
// the state as it was.
template <class T, class V>
void ensemble_update_chunk(const Matrix<T>& m, bool from_logits, int64_t count, double* sum, double* m2,
                           double* entropy_sum, bool apply, Status& st, int64_t begin, int64_t end) {
    const int64_t K = m.cols;
    RowWork<T, V> w(K);
    for (int64_t i = begin; i < end; ++i) {
        double h, scale, row_max;
        if (!w.member(m, i, from_logits, &h, &scale, &row_max, st)) {
            if (!apply) return;
            continue;
        }
        if (!apply) continue;
        welford_update(w, scale, count, sum + i * K, m2 + i * K);
        entropy_sum[i] += h;
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void ensemble_update_chunk_avx2(const Matrix<T>& m, bool from_logits, int64_t count,
                                                    double* sum, double* m2, double* entropy_sum, bool apply,
                                                    Status& st, int64_t begin, int64_t end) {
    ensemble_update_chunk<T, simd::Vec<4>>(m, from_logits, count, sum, m2, entropy_sum, apply, st, begin, end);
}
#endif

template <class T>
Status ensemble_update(const Matrix<T>& m, bool from_logits, int64_t count, double* sum, double* m2,
                       double* entropy_sum) {
    const int64_t chunk = rows_per_chunk(m.cols);
    const int64_t n_chunks = (m.rows + chunk - 1) / chunk;
    const bool avx2 = simd::use_avx2();
    // Pass 1 checks (nothing written), pass 2 applies: a bad member changes nothing.
    for (int apply = 0; apply < 2; ++apply) {
        std::vector<Status> found(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
        chunked_for(m.rows, chunk, m.cols, [&](int64_t begin, int64_t end) {
            Status& st = found[static_cast<size_t>(begin / chunk)];
#if CALIBKIT_HAVE_AVX2_CLONES
            if (avx2)
                return ensemble_update_chunk_avx2<T>(m, from_logits, count, sum, m2, entropy_sum, apply, st, begin,
                                                     end);
#endif
            (void)avx2;
            ensemble_update_chunk<T, simd::Vec<2>>(m, from_logits, count, sum, m2, entropy_sum, apply, st, begin,
                                                    end);
        });
        Status st;
        for (const Status& s : found) st.merge(s);
        if (st.code != kOk) return st;
    }
    return Status();
}

// ---------------------------------------------------------------------------
// Confidence loss (Lee et al. 2018):
//   L = (1/N_in) sum_i [LSE(z_i) - z_{i,y_i}] + beta (1/N_out) sum_j KL(U || softmax(z_j))
//   dL/dz_i = (softmax(z_i) - onehot(y_i)) / N_in,  dL/dz_j = beta (softmax(z_j) - 1/K) / N_out.

struct ConfidenceLossSums {
    double nll = 0.0, kl = 0.0;
    Status status;
};

template <class T, class O, class V>
void confidence_rows(const Matrix<T>& z, const Vector<int64_t>* labels, double grad_scale, O* grad,
                     ConfidenceLossSums& part, int64_t begin, int64_t end) {
    const int64_t K = z.cols;
    RowWork<T, V> w(K);
    const double logK = std::log(static_cast<double>(K)), invK = 1.0 / static_cast<double>(K);
    for (int64_t i = begin; i < end; ++i) {
        int64_t y = -1;
        if (labels) {
            y = labels->raw(i);
            if (y < 0 || y >= K) {
                part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
                continue;
            }
        }
        RowSums r;
        if (!w.scan(z, i, false, labels == nullptr, 1, r, part.status)) continue;
        const double z_label = labels ? w.at(y) : 0.0;
        w.softmax(1.0, true, false, r);
        const double log_s0 = std::log(r.s0), inv = 1.0 / r.s0;
        O* g = grad + i * K;
        if (labels) {
            part.nll += log_s0 - (z_label - r.max);
            for (int64_t k = 0; k < K; ++k) g[k] = static_cast<O>(grad_scale * (w.at(k) * inv - (k == y ? 1.0 : 0.0)));
        } else {
            part.kl += std::max(log_s0 - logK - (r.sum * invK - r.max), 0.0);
            for (int64_t k = 0; k < K; ++k) g[k] = static_cast<O>(grad_scale * (w.at(k) * inv - invK));
        }
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T, class O>
CALIBKIT_AVX2_CLONE void confidence_rows_avx2(const Matrix<T>& z, const Vector<int64_t>* labels, double grad_scale,
                                              O* grad, ConfidenceLossSums& part, int64_t begin, int64_t end) {
    confidence_rows<T, O, simd::Vec<4>>(z, labels, grad_scale, grad, part, begin, end);
}
#endif

// Sums of NLL (labels given) or KL(U || softmax) (labels null) over the rows of
// z, and their gradient times grad_scale into grad (rows x K, C order).
template <class T, class O>
ConfidenceLossSums confidence_sums(const Matrix<T>& z, const Vector<int64_t>* labels, double grad_scale, O* grad) {
    const int64_t K = z.cols;
    const bool avx2 = simd::use_avx2();
    ConfidenceLossSums total;
    chunked_reduce(
        z.rows, rows_per_chunk(K), K, 2, total, [] { return ConfidenceLossSums(); },
        [&](ConfidenceLossSums& part, int64_t begin, int64_t end) {
#if CALIBKIT_HAVE_AVX2_CLONES
            if (avx2) return confidence_rows_avx2<T, O>(z, labels, grad_scale, grad, part, begin, end);
#endif
            (void)avx2;
            confidence_rows<T, O, simd::Vec<2>>(z, labels, grad_scale, grad, part, begin, end);
        },
        [](ConfidenceLossSums& acc, const ConfidenceLossSums& part) {
            acc.nll += part.nll;
            acc.kl += part.kl;
            acc.status.merge(part.status);
        });
    return total;
}

}  // namespace calibkit
