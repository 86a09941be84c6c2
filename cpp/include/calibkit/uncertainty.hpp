// Per-sample uncertainty scores, the ensemble / MC-dropout decomposition and
// the confidence loss, each one fused pass over the rows.
//
// A row is first copied into a small per-thread buffer of doubles (padded to a
// multiple of 8, so the vector loops need no scalar tail); everything after
// that reads the buffer, which stays in L1. From logits z and an inverse
// temperature b, with u = z - max z:
//   s0 = sum_k e^{b u_k},  s1 = sum_k e^{b u_k} u_k,  LSE(b z) = b max z + log s0,
//   max softmax = 1 / s0,  margin = (1 - e^{b (z_(2) - z_(1))}) / s0,
//   entropy = log s0 - b s1 / s0,  energy = -LSE(b z) / b,
//   KL(U || softmax) = log s0 - log K - b mean(u),  logit norm = ||z||_2.
// From probabilities p: entropy = -sum p log p (0 log 0 = 0), KL(U || p) =
// -log K - mean(log p) (inf when some p_k = 0).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
inline bool find_bad(const double* buf, int64_t K, bool probabilities, int64_t i, Status& st) {
    for (int64_t k = 0; k < K; ++k) {
        if (!is_finite(buf[k])) {
            st.set(kScoreNotFinite, i, k, buf[k]);
            return true;
        }
        if (probabilities && !valid_probability(buf[k])) {
            st.set(kProbabilityOutOfRange, i, k, buf[k]);
            return true;
        }
    }
    return false;
}

// Checks, the two largest values and (logits) the value sums of a loaded row.
// False (status set) on bad input.
template <class V>
CALIBKIT_INLINE bool scan_row(const double* buf, int64_t K, const PadMask<V>& pad, bool probabilities, int64_t i,
                              RowSums& r, Status& st) {
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
            if (last) v = select(pad.valid[g], v, neg_inf);
            sc[g] = vmax(sc[g], vmin(mx[g], v));
            mx[g] = vmax(mx[g], v);
        }
    }
    bool any_bad = false;
    for (int j = 0; j < V::width; ++j) any_bad |= bad[j] != 0;
    if (any_bad && find_bad(buf, K, probabilities, i, st)) return false;
    // The overall top two are among the lanes' top two.
    double m1 = -INFINITY, m2 = -INFINITY, s = 0.0, q = 0.0;
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < V::width; ++j) {
            const double a = mx[g][j], b = sc[g][j];
            if (a > m1) {
                m2 = std::max(m1, b);
                m1 = a;
            } else {
                m2 = std::max(m2, a);
            }
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

// s0 and s1 of a logit row after scan_row; with `store`, buf[k] becomes e^{b u_k}
// (0 in the padding).
template <class V>
CALIBKIT_INLINE void softmax_sums(double* buf, int64_t K, const PadMask<V>& pad, double b, bool store,
                                  RowSums& r) {
    using namespace simd;
    typedef typename V::d D;
    constexpr int G = Octet<V>::n;
    const D zero = splat<D>(0.0), shift = splat<D>(r.max), scale = splat<D>(b);
    Octet<V> s0, s1;
    for (int g = 0; g < G; ++g) s0.v[g] = s1.v[g] = zero;
    const int64_t n = padded_length(K);
    for (int64_t k = 0; k < n; k += 8) {
        const bool last = k == pad.last;
        for (int g = 0; g < G; ++g) {
            double* p = buf + k + g * V::width;
            D u = lanes_at<V>(p) - shift;
            D e = exp_nonpositive<V>(scale * u);
            if (last) {
                u = select(pad.valid[g], u, zero);
                e = select(pad.valid[g], e, zero);
            }
            s0.v[g] += e;
            s1.v[g] += e * u;
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

// Row scores of one scanned row (see the header comment); `want` is a bit mask of ScoreKind.
inline void row_score_values(const RowSums& r, int64_t K, bool from_logits, double b, unsigned want,
                             double* out) {
    const double logK = std::log(static_cast<double>(K));
    if (from_logits) {
        const double log_s0 = std::log(r.s0);
        if (want & (1u << kMaxProbability)) out[kMaxProbability] = 1.0 / r.s0;
        if (want & (1u << kMargin)) out[kMargin] = (1.0 - simd::exp_nonpositive(b * (r.second - r.max))) / r.s0;
        if (want & (1u << kEntropy)) out[kEntropy] = std::max(log_s0 - b * (r.s1 / r.s0), 0.0);
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
inline double scaled_norm(const double* x, int64_t K) {
    double big = 0.0;
    for (int64_t k = 0; k < K; ++k) big = std::max(big, std::fabs(x[k]));
    if (big == 0.0) return 0.0;
    double q = 0.0;
    for (int64_t k = 0; k < K; ++k) q += (x[k] / big) * (x[k] / big);
    return big * std::sqrt(q);
}

template <class T, class V>
void row_scores_chunk(const Matrix<T>& s, bool from_logits, double b, unsigned want, double* const* outs,
                      Status& st, int64_t begin, int64_t end) {
    const int64_t K = s.cols;
    const PadMask<V> pad(K);
    std::vector<double> buf(static_cast<size_t>(padded_length(K)));
    const unsigned softmax_kinds = (1u << kMaxProbability) | (1u << kMargin) | (1u << kEntropy) | (1u << kEnergy) |
                                   (1u << kKlToUniform);
    const bool need_softmax = from_logits && (want & softmax_kinds);
    const bool need_entropy = !from_logits && (want & ((1u << kEntropy) | (1u << kKlToUniform)));
    double values[kNumScores];
    for (int64_t i = begin; i < end; ++i) {
        load_row(s, i, buf.data());
        RowSums r;
        if (!scan_row<V>(buf.data(), K, pad, !from_logits, i, r, st)) {
            for (int c = 0; c < kNumScores; ++c)
                if (outs[c]) outs[c][i] = NAN;
            continue;
        }
        if (need_softmax) softmax_sums<V>(buf.data(), K, pad, b, false, r);
        if (need_entropy) entropy_sums<V>(buf.data(), K, pad, (want >> kKlToUniform) & 1u, r);
        row_score_values(r, K, from_logits, b, want, values);
        if ((want & (1u << kLogitNorm)) && !(r.sum_sq > 1e-280 && r.sum_sq < 1e280))
            values[kLogitNorm] = scaled_norm(buf.data(), K);  // the plain sum of squares over- or underflowed
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

// Softmax (from logits) or the probabilities of row i of pass m into buf, its
// entropy into *entropy; false (status set, row = i, col = k) on bad input.
template <class T, class V>
CALIBKIT_INLINE bool member_probabilities(const Matrix<T>& m, int64_t i, bool from_logits, const PadMask<V>& pad,
                                          double* buf, double* entropy, Status& st) {
    const int64_t K = m.cols;
    load_row(m, i, buf);
    RowSums r;
    if (!scan_row<V>(buf, K, pad, !from_logits, i, r, st)) return false;
    if (from_logits) {
        softmax_sums<V>(buf, K, pad, 1.0, true, r);
        const double inv = 1.0 / r.s0;
        for (int64_t k = 0; k < padded_length(K); ++k) buf[k] *= inv;
        *entropy = std::max(std::log(r.s0) - r.s1 / r.s0, 0.0);
    } else {
        entropy_sums<V>(buf, K, pad, false, r);
        *entropy = std::max(-r.plogp, 0.0);
    }
    return true;
}

// Welford's update of the running sum and the sum of squared deviations of
// one member's probabilities (`count` members seen before this one).
CALIBKIT_INLINE void welford_update(const double* p, int64_t K, int64_t count, double* sum, double* m2) {
    const double n_old = static_cast<double>(count), n_new = static_cast<double>(count + 1);
    for (int64_t k = 0; k < K; ++k) {
        const double old_mean = count > 0 ? sum[k] / n_old : 0.0;
        sum[k] += p[k];
        const double new_mean = sum[k] / n_new;
        m2[k] += (p[k] - old_mean) * (p[k] - new_mean);
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

template <class T, class V>
void decompose_chunk(const Passes<T>& x, bool from_logits, const DecomposeOut& out, Status& st, int64_t begin,
                     int64_t end) {
    const int64_t K = x.K, S = x.S;
    const PadMask<V> pad(K);
    const int64_t Kp = padded_length(K);
    std::vector<double> buf(static_cast<size_t>(Kp)), sum(static_cast<size_t>(Kp)), m2(static_cast<size_t>(K));
    for (int64_t i = begin; i < end; ++i) {
        std::fill(sum.begin(), sum.end(), 0.0);
        std::fill(m2.begin(), m2.end(), 0.0);
        double entropy_sum = 0.0;
        bool ok = true;
        for (int64_t s = 0; s < S && ok; ++s) {
            double h;
            Status member;
            ok = member_probabilities<T, V>(x.pass(s), i, from_logits, pad, buf.data(), &h, member);
            if (!ok) {
                member.col = s * K + member.col;  // position in the (S, N, K) array: (s, i, k)
                st.merge(member);
                break;
            }
            welford_update(buf.data(), K, s, sum.data(), m2.data());
            entropy_sum += h;
        }
        double* mean = out.mean + i * K;
        if (!ok) {
            std::fill(mean, mean + K, NAN);
            out.total[i] = out.aleatoric[i] = out.epistemic[i] = out.variance[i] = NAN;
            out.prediction[i] = -1;
            continue;
        }
        const double inv = 1.0 / static_cast<double>(S);
        int64_t best = 0;
        for (int64_t k = 0; k < K; ++k) {
            buf[k] = sum[k] * inv;
            mean[k] = buf[k];
            if (buf[k] > buf[best]) best = k;
        }
        for (int64_t k = K; k < Kp; ++k) buf[k] = 0.0;
        const double total = row_entropy<V>(buf.data(), K, pad);
        const double aleatoric = entropy_sum * inv;
        out.total[i] = total;
        out.aleatoric[i] = aleatoric;
        out.epistemic[i] = std::max(total - aleatoric, 0.0);
        out.variance[i] = m2[best] * inv;
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
    const PadMask<V> pad(K);
    std::vector<double> buf(static_cast<size_t>(padded_length(K)));
    for (int64_t i = begin; i < end; ++i) {
        double h;
        if (!member_probabilities<T, V>(m, i, from_logits, pad, buf.data(), &h, st)) {
            if (!apply) return;
            continue;
        }
        if (!apply) continue;
        welford_update(buf.data(), K, count, sum + i * K, m2 + i * K);
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
    const PadMask<V> pad(K);
    std::vector<double> buf(static_cast<size_t>(padded_length(K)));
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
        load_row(z, i, buf.data());
        const double z_label = labels ? buf[y] : 0.0;
        RowSums r;
        if (!scan_row<V>(buf.data(), K, pad, false, i, r, part.status)) continue;
        softmax_sums<V>(buf.data(), K, pad, 1.0, true, r);
        const double log_s0 = std::log(r.s0), inv = 1.0 / r.s0;
        O* g = grad + i * K;
        if (labels) {
            part.nll += log_s0 - (z_label - r.max);
            for (int64_t k = 0; k < K; ++k) g[k] = static_cast<O>(grad_scale * (buf[k] * inv - (k == y ? 1.0 : 0.0)));
        } else {
            part.kl += std::max(log_s0 - logK - (r.sum * invK - r.max), 0.0);
            for (int64_t k = 0; k < K; ++k) g[k] = static_cast<O>(grad_scale * (buf[k] * inv - invK));
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
