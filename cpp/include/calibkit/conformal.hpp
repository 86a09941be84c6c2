// Conformal prediction sets: the non-conformity scores of the calibration
// labels and the prediction sets, each one fused pass over the rows.
//
// A row's probabilities p_k come from the softmax of uncertainty.hpp (RowWork:
// the row scanned and checked, then e^{z_k - max z} stored in the row buffer,
// p_k = e_k / s0 in double; float32 / float16 rows use the float exp of that
// kernel) or are read as given (from_logits = false). Classes are ranked by
// (p_k descending, k ascending): a strict order, so every kernel and backend
// ranks a row the same way. With o_r the "mass" of rank r and C_r = o_0 + ... + o_r
// (summed in rank order), the scores of the class at rank r are, for a uniform
// U of the row (0 when not randomized):
//   LAC / THR:  1 - p_k                                       (Sadinle et al. 2019)
//   APS:        C_r - U o_r,           o_r = p_(r)            (Romano et al. 2020)
//   RAPS:       C_r - U o_r + lambda max(0, r + 1 - k_reg)    (Angelopoulos et al. 2021)
//   SAPS:       (1 - U) p_(0) at r = 0, p_(0) + w (r - U) at r >= 1   (Huang et al. 2024)
// The cumulative scores never decrease along the ranks (also after rounding:
// every operation is monotone), so a prediction set {k : s_k <= q_k} needs the
// ranks only until the score passes max_k q_k: a heap of the row's classes is
// built in O(K) and popped until then (O(K + m log K) for a set of m classes),
// instead of a full sort; a row whose set passes max(16, K / 8) classes sorts
// the classes left in the heap once instead of popping them one by one (the
// order is the same strict order, so the result is the same). The calibration score of label y needs no heap: the
// classes ranked before y are gathered and only they are sorted, so that C_r
// is summed in the same (rank) order as the set kernel sums it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"
#include "uncertainty.hpp"

namespace calibkit {

enum ConformalScoreKind : int {
    kConformalLac = 0,
    kConformalAps = 1,
    kConformalRaps = 2,
    kConformalSaps = 3,
    kNumConformalScores = 4,
};

struct ConformalParams {
    int kind = kConformalLac;
    double penalty = 0.0;  // RAPS lambda >= 0
    int64_t kreg = 0;      // RAPS k_reg >= 0
    double weight = 1.0;   // SAPS w > 0
};

// The probabilities of row i into p[0..K); false (status set) on bad input.
template <class T, class V>
CALIBKIT_INLINE bool conformal_row(RowWork<T, V>& w, const Matrix<T>& s, int64_t i, bool from_logits, double* p,
                                   Status& st) {
    RowSums r;
    if (!w.scan(s, i, !from_logits, false, from_logits ? 1 : 0, r, st, !from_logits)) return false;
    const int64_t K = s.cols;
    if (from_logits) {
        w.softmax(1.0, true, false, r);
        const double s0 = r.s0;
        for (int64_t k = 0; k < K; ++k) p[k] = w.at(k) / s0;
    } else {
        for (int64_t k = 0; k < K; ++k) p[k] = w.at(k);
    }
    return true;
}

// The score of the class at (0-based) rank r with cumulative mass C = C_r and own mass o = o_r (APS / RAPS),
// p_max = p_(0) (SAPS) and the row's U.
CALIBKIT_INLINE double cumulative_score(const ConformalParams& c, double C, double o, int64_t r, double p_max,
                                        double u) {
    switch (c.kind) {
        case kConformalAps: return C - u * o;
        case kConformalRaps:
            return (C - u * o) + c.penalty * static_cast<double>(std::max<int64_t>(0, r + 1 - c.kreg));
        default:  // SAPS
            if (r == 0) return p_max - u * p_max;
            return c.weight * (static_cast<double>(r) - u) + p_max;
    }
}

// A lower bound of the score of every class ranked at r0 or later, when the classes ranked before r0 hold
// the mass `above` (the scores never decrease along the ranks: s_r >= C_{r-1} for APS, plus the penalty for RAPS;
// SAPS's score depends on the rank alone).
CALIBKIT_INLINE double score_lower_bound(const ConformalParams& c, double above, int64_t r0, double p_max,
                                         double u) {
    if (c.kind == kConformalSaps) return cumulative_score(c, 0.0, 0.0, r0, p_max, u);
    if (c.kind == kConformalRaps)
        return above + c.penalty * static_cast<double>(std::max<int64_t>(0, r0 + 1 - c.kreg));
    return above;
}

// Rows longer than this first drop the classes that cannot enter the set (see candidate_classes).
constexpr int64_t kBucketMinClasses = 64;
constexpr int kBuckets = 64;

// The bucket of a probability: how many binary orders of magnitude it is below the row's largest, e_max the
// biased exponent of that largest (0 .. 63; values <= 0 in the last). Larger p, smaller or equal bucket.
CALIBKIT_INLINE int probability_bucket(double v, int64_t e_max) {
    if (!(v > 0.0)) return kBuckets - 1;
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    return static_cast<int>(std::min<int64_t>(kBuckets - 1, e_max - static_cast<int64_t>((bits >> 52) & 0x7ff)));
}

// The classes that may enter the set, into cand; returns their number. They are the classes of the buckets
// above the first bucket whose classes all score above q_max by score_lower_bound (with a relative slack of
// 1e-9 for the order in which the bucket masses are summed): by value, hence exactly the top classes of the
// rank order.
CALIBKIT_INLINE int64_t candidate_classes(const ConformalParams& c, const double* p, int64_t K, double q_max,
                                          double u, int64_t* cand) {
    if (K > kBucketMinClasses && q_max < INFINITY) {
        double p_max = p[0];
        for (int64_t k = 1; k < K; ++k) p_max = std::max(p_max, p[k]);
        uint64_t bits;
        std::memcpy(&bits, &p_max, sizeof bits);
        const int64_t e_max = static_cast<int64_t>((bits >> 52) & 0x7ff);
        double mass[kBuckets] = {};
        int64_t count[kBuckets] = {};
        for (int64_t k = 0; k < K; ++k) {
            const int b = probability_bucket(p[k], e_max);
            mass[b] += p[k];
            ++count[b];
        }
        const double limit = q_max + 1e-9 * std::max(1.0, std::fabs(q_max));
        double above = 0.0;
        int64_t r0 = 0;
        int cut = kBuckets;
        for (int b = 0; b < kBuckets; ++b) {
            if (score_lower_bound(c, above, r0, p_max, u) > limit) {
                cut = b;
                break;
            }
            above += mass[b];
            r0 += count[b];
        }
        if (cut < kBuckets) {
            int64_t n = 0;
            for (int64_t k = 0; k < K; ++k)
                if (probability_bucket(p[k], e_max) < cut) cand[n++] = k;
            return n;
        }
    }
    for (int64_t k = 0; k < K; ++k) cand[k] = k;
    return K;
}

// (p_a, a) ranks before (p_b, b): p descending, index ascending.
CALIBKIT_INLINE bool ranks_before(double pa, int64_t a, double pb, int64_t b) {
    return pa > pb || (pa == pb && a < b);
}

template <class T, class V>
void label_scores_chunk(const Matrix<T>& s, const Vector<int64_t>& y, bool from_logits, const ConformalParams& c,
                        const double* u, double* out, Status& st, int64_t begin, int64_t end) {
    const int64_t K = s.cols;
    RowWork<T, V> w(K);
    std::vector<double> p(static_cast<size_t>(K)), before(static_cast<size_t>(K));
    for (int64_t i = begin; i < end; ++i) {
        const int64_t label = y.raw(i);
        if (label < 0 || label >= K) {
            st.set(kLabelOutOfRange, i, -1, static_cast<double>(label));
            out[i] = NAN;
            continue;
        }
        if (!conformal_row(w, s, i, from_logits, p.data(), st)) {
            out[i] = NAN;
            continue;
        }
        const double py = p[static_cast<size_t>(label)];
        if (c.kind == kConformalLac) {
            out[i] = 1.0 - py;
            continue;
        }
        const double ui = u ? u[i] : 0.0;
        int64_t r = 0;
        double p_max = py;
        for (int64_t k = 0; k < K; ++k) {
            const double v = p[static_cast<size_t>(k)];
            if (ranks_before(v, k, py, label)) before[static_cast<size_t>(r++)] = v;
            p_max = std::max(p_max, v);
        }
        double C = 0.0;
        if (c.kind != kConformalSaps) {
            std::sort(before.begin(), before.begin() + r, std::greater<double>());
            for (int64_t j = 0; j < r; ++j) C += before[static_cast<size_t>(j)];
            C += py;
        }
        out[i] = cumulative_score(c, C, py, r, p_max, ui);
    }
}

// Row i's set into out[0..K) (0 / 1) and its size; q[k] is class k's threshold, q_max = max_k q[k].
template <class T, class V>
void sets_chunk(const Matrix<T>& s, bool from_logits, const ConformalParams& c, const double* q, double q_max,
                const double* u, uint8_t* out, int64_t* sizes, Status& st, int64_t begin, int64_t end) {
    const int64_t K = s.cols;
    RowWork<T, V> w(K);
    std::vector<double> p(static_cast<size_t>(K));
    std::vector<int64_t> heap(static_cast<size_t>(K));
    // std::*_heap keep the "largest" on top: the class ranked first.
    const auto later = [&p](int64_t a, int64_t b) {
        return ranks_before(p[static_cast<size_t>(b)], b, p[static_cast<size_t>(a)], a);
    };
    const auto first = [&p](int64_t a, int64_t b) {
        return ranks_before(p[static_cast<size_t>(a)], a, p[static_cast<size_t>(b)], b);
    };
    const int64_t pop_limit = std::max<int64_t>(16, K / 8);
    for (int64_t i = begin; i < end; ++i) {
        uint8_t* row = out + i * K;
        std::memset(row, 0, static_cast<size_t>(K));
        int64_t size = 0;
        if (!conformal_row(w, s, i, from_logits, p.data(), st)) {
            sizes[i] = 0;
            continue;
        }
        if (c.kind == kConformalLac) {
            for (int64_t k = 0; k < K; ++k) {
                const uint8_t in = (1.0 - p[static_cast<size_t>(k)]) <= q[k] ? 1 : 0;
                row[k] = in;
                size += in;
            }
            sizes[i] = size;
            continue;
        }
        const double ui = u ? u[i] : 0.0;
        const int64_t n = candidate_classes(c, p.data(), K, q_max, ui, heap.data());
        std::make_heap(heap.begin(), heap.begin() + n, later);
        auto top = heap.begin() + n;
        double C = 0.0, p_max = 0.0;
        for (int64_t r = 0; r < n; ++r) {
            int64_t k;
            if (r < pop_limit) {
                std::pop_heap(heap.begin(), top, later);
                --top;
                k = *top;
            } else {
                // A large set: the classes left are sorted once (cheaper than popping them one by one).
                if (r == pop_limit) std::sort(heap.begin(), top, first);
                k = heap[static_cast<size_t>(r - pop_limit)];
            }
            const double o = p[static_cast<size_t>(k)];
            if (r == 0) p_max = o;
            C += o;
            const double score = cumulative_score(c, C, o, r, p_max, ui);
            if (!(score <= q_max)) break;  // the scores never decrease along the ranks
            if (score <= q[k]) {
                row[k] = 1;
                ++size;
            }
        }
        sizes[i] = size;
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void label_scores_chunk_avx2(const Matrix<T>& s, const Vector<int64_t>& y, bool from_logits,
                                                 const ConformalParams& c, const double* u, double* out, Status& st,
                                                 int64_t begin, int64_t end) {
    label_scores_chunk<T, simd::Vec<4>>(s, y, from_logits, c, u, out, st, begin, end);
}
template <class T>
CALIBKIT_AVX2_CLONE void sets_chunk_avx2(const Matrix<T>& s, bool from_logits, const ConformalParams& c,
                                         const double* q, double q_max, const double* u, uint8_t* out,
                                         int64_t* sizes, Status& st, int64_t begin, int64_t end) {
    sets_chunk<T, simd::Vec<4>>(s, from_logits, c, q, q_max, u, out, sizes, st, begin, end);
}
#endif

// The score of each row's label into out[0..N); u (length N) or null. Rows with bad input get NaN and the
// first problem in row-major order is returned.
template <class T>
Status conformal_label_scores(const Matrix<T>& s, const Vector<int64_t>& y, bool from_logits,
                              const ConformalParams& c, const double* u, double* out) {
    const int64_t chunk = rows_per_chunk(s.cols);
    const int64_t n_chunks = (s.rows + chunk - 1) / chunk;
    std::vector<Status> found(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    const bool avx2 = simd::use_avx2();
    chunked_for(s.rows, chunk, s.cols, [&](int64_t begin, int64_t end) {
        Status& st = found[static_cast<size_t>(begin / chunk)];
#if CALIBKIT_HAVE_AVX2_CLONES
        if (avx2) return label_scores_chunk_avx2<T>(s, y, from_logits, c, u, out, st, begin, end);
#endif
        (void)avx2;
        label_scores_chunk<T, simd::Vec<2>>(s, y, from_logits, c, u, out, st, begin, end);
    });
    Status total;
    for (const Status& x : found) total.merge(x);
    return total;
}

// The prediction sets into out (N x K, C order, 0 / 1) and their sizes; q: K thresholds; u (length N) or null.
template <class T>
Status conformal_sets(const Matrix<T>& s, bool from_logits, const ConformalParams& c, const double* q,
                      const double* u, uint8_t* out, int64_t* sizes) {
    double q_max = -INFINITY;
    for (int64_t k = 0; k < s.cols; ++k) q_max = std::max(q_max, q[k]);
    const int64_t chunk = rows_per_chunk(s.cols);
    const int64_t n_chunks = (s.rows + chunk - 1) / chunk;
    std::vector<Status> found(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    const bool avx2 = simd::use_avx2();
    chunked_for(s.rows, chunk, s.cols, [&](int64_t begin, int64_t end) {
        Status& st = found[static_cast<size_t>(begin / chunk)];
#if CALIBKIT_HAVE_AVX2_CLONES
        if (avx2) return sets_chunk_avx2<T>(s, from_logits, c, q, q_max, u, out, sizes, st, begin, end);
#endif
        (void)avx2;
        sets_chunk<T, simd::Vec<2>>(s, from_logits, c, q, q_max, u, out, sizes, st, begin, end);
    });
    Status total;
    for (const Status& x : found) total.merge(x);
    return total;
}

}  // namespace calibkit
