// Confidence / correctness binning for the ECE family of metrics.
//
// Bin convention (Guo et al. 2017; Naeini et al. 2015): with edges
// e_0 < e_1 < ... < e_M, bin m holds the confidences c with e_{m-1} < c <= e_m,
// and anything at or below e_1 (a confidence of exactly 0 included) falls in the
// first bin. Equivalently: bin(c) = #{inner edges e_1..e_{M-1} strictly below c},
// which is numpy.searchsorted(edges[1:-1], c, side="left"). Equal-width edges
// are e_m = m / M, correctly rounded.
//
// Every kernel reads its input once, in place, accumulates in double precision
// and is deterministic for any thread count (see parallel.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"

namespace calibkit {

// Rows per chunk are chosen so that a chunk is about this many elements.
constexpr int64_t kChunkElements = 1 << 15;

inline int64_t rows_per_chunk(int64_t cols, int64_t min_rows = 1) {
    return std::max<int64_t>(min_rows, kChunkElements / std::max<int64_t>(cols, 1));
}

// Bin edges e_0 < ... < e_M. `bounds` holds -inf, e_1, ..., e_{M-1}, +inf, so
// bin m is bounds[m] < c <= bounds[m + 1] for any c.
struct BinEdges {
    std::vector<double> bounds;
    bool uniform = true;
    int64_t n_bins = 0;
    double scale = 0.0;  // M
    double last = 0.0;   // M - 1

    static BinEdges equal_width(int64_t n_bins) {
        BinEdges b;
        b.n_bins = n_bins;
        b.uniform = true;
        b.scale = static_cast<double>(n_bins);
        b.last = static_cast<double>(n_bins - 1);
        b.bounds.push_back(-INFINITY);
        for (int64_t m = 1; m < n_bins; ++m) b.bounds.push_back(static_cast<double>(m) / static_cast<double>(n_bins));
        b.bounds.push_back(INFINITY);
        return b;
    }
    static BinEdges explicit_edges(const double* edges, int64_t n_bins) {
        BinEdges b;
        b.n_bins = n_bins;
        b.uniform = false;
        b.bounds.push_back(-INFINITY);
        b.bounds.insert(b.bounds.end(), edges + 1, edges + n_bins);
        b.bounds.push_back(INFINITY);
        return b;
    }

    // c must not be NaN.
    int64_t bin(double c) const {
        if (n_bins <= 1) return 0;
        if (uniform) {
            // floor(c M) (a truncating conversion of the clamped product: no libm ceil/floor
            // call without SSE4.1) is the bin up to one step either way; settle it against the
            // exact edges without branches (the product errs by far less than a bin).
            int64_t m = static_cast<int64_t>(std::min(std::max(c * scale, 0.0), last));  // minsd/maxsd, cvttsd2si
            const double* e = bounds.data();
            m -= static_cast<int64_t>(!(e[m] < c));
            m += static_cast<int64_t>(e[m + 1] < c);
            return m;
        }
        // bounds[1..M-1] are the inner edges: the bin is how many lie strictly below c.
        return std::lower_bound(bounds.begin() + 1, bounds.end() - 1, c) - (bounds.begin() + 1);
    }
};

// Per-bin sums (weighted) for one group of bins.
struct BinSums {
    std::vector<int64_t> count;
    std::vector<double> weight, sum_score, sum_target;

    explicit BinSums(int64_t n = 0)
        : count(n, 0), weight(n, 0.0), sum_score(n, 0.0), sum_target(n, 0.0) {}

    void add(int64_t b, double w, double score, double target) {
        count[b] += 1;
        weight[b] += w;
        sum_score[b] += w * score;
        sum_target[b] += w * target;
    }
    void reset() {
        std::fill(count.begin(), count.end(), 0);
        std::fill(weight.begin(), weight.end(), 0.0);
        std::fill(sum_score.begin(), sum_score.end(), 0.0);
        std::fill(sum_target.begin(), sum_target.end(), 0.0);
    }
    void merge(const BinSums& o) {
        for (size_t b = 0; b < count.size(); ++b) {
            count[b] += o.count[b];
            weight[b] += o.weight[b];
            sum_score[b] += o.sum_score[b];
            sum_target[b] += o.sum_target[b];
        }
    }
};

// Per-bin sums split over four interleaved copies (row i goes to copy i mod 4),
// folded in copy order at the end of a chunk. Consecutive rows usually fall in
// the same bin; separate copies break the store-to-load dependency between them.
struct LaneBins {
    static constexpr int kLanes = 4;
    std::vector<int64_t> count;
    std::vector<double> weight, sum_score, sum_target;

    explicit LaneBins(int64_t n)
        : count(n * kLanes, 0), weight(n * kLanes, 0.0), sum_score(n * kLanes, 0.0), sum_target(n * kLanes, 0.0) {}

    CALIBKIT_INLINE void add(int64_t b, int64_t row, double w, double score, double target) {
        const int64_t j = b * kLanes + (row & (kLanes - 1));
        count[j] += 1;
        weight[j] += w;
        sum_score[j] += w * score;
        sum_target[j] += w * target;
    }
    void fold_into(BinSums& out) const {
        for (size_t b = 0; b < out.count.size(); ++b) {
            const size_t j = b * kLanes;
            out.count[b] += ((count[j] + count[j + 1]) + count[j + 2]) + count[j + 3];
            out.weight[b] += ((weight[j] + weight[j + 1]) + weight[j + 2]) + weight[j + 3];
            out.sum_score[b] += ((sum_score[j] + sum_score[j + 1]) + sum_score[j + 2]) + sum_score[j + 3];
            out.sum_target[b] += ((sum_target[j] + sum_target[j + 1]) + sum_target[j + 2]) + sum_target[j + 3];
        }
    }
};

// Whole-sample sums that come for free from the same pass.
struct Totals {
    int64_t count = 0;
    double weight = 0, correct = 0, confidence = 0, brier = 0, nll = 0;
    void merge(const Totals& o) {
        count += o.count;
        weight += o.weight;
        correct += o.correct;
        confidence += o.confidence;
        brier += o.brier;
        nll += o.nll;
    }
};

struct BinningResult {
    BinSums bins;
    Totals totals;
    Status status;
    BinSums classwise;  // K x M class-wise bins (index k * M + m), empty unless asked for
    explicit BinningResult(int64_t n_bins = 0, int64_t n_classwise = 0) : bins(n_bins), classwise(n_classwise) {}
    void reset() {
        bins.reset();
        totals = Totals();
        status = Status();
        classwise.reset();
    }
    void merge(const BinningResult& o) {
        bins.merge(o.bins);
        totals.merge(o.totals);
        status.merge(o.status);
        classwise.merge(o.classwise);
    }
};

// Optional per-row weights (nullptr data = all ones).
struct Weights {
    Vector<double> v{nullptr, 0, 0};
    bool present() const { return v.data != nullptr; }
    double at(int64_t i) const { return present() ? v[i] : 1.0; }
};

inline bool check_weight(double w, int64_t i, Status& st) {
    if (!is_finite(w)) {
        st.set(kWeightNotFinite, i, -1, w);
        return false;
    }
    if (w < 0) {
        st.set(kWeightNegative, i, -1, w);
        return false;
    }
    return true;
}

// Summary of one row of an N x K score matrix.
struct RowSummary {
    int64_t argmax;
    double confidence;  // max probability
    double p_label;     // probability of the labelled class
    double sum_sq;      // sum_k p_k^2
    double nll;         // -log p_label (probabilities: clipped below at nll_eps); 0 unless asked for
};

// Rows are read eight elements ("an octet", simd.hpp) at a time, as 8/W vectors
// of W doubles: W = 2 in the portable build, W = 4 in the AVX2 clones. Every
// element has a fixed lane: lane k mod 8 for the full octets, and for the last,
// overlapping octet of a row whose length is not a multiple of 8, lane
// k - (K - 8). Sums over a row are accumulated per lane and combined in the
// fixed order of octet_sum, so they are bit-identical for any layout, dtype,
// vector width and thread count. Maxima are exact; argmax is the smallest index
// among the lanes holding the maximum (NumPy's first-index rule).

// Locate the first element that failed a row check, in column order.
template <class R>
inline void report_bad_element(const R& r, int64_t i, int64_t K, bool from_logits, Status& st) {
    for (int64_t k = 0; k < K; ++k) {
        const double v = r.at(k);
        if (!is_finite(v)) {
            st.set(kScoreNotFinite, i, k, v);
            return;
        }
        if (!from_logits && !valid_probability(v)) {
            st.set(kProbabilityOutOfRange, i, k, v);
            return;
        }
    }
}

// Running maximum and the index where each lane first reached it.
template <class V>
struct LaneMax {
    typedef typename V::d D;
    typedef typename V::i I;
    static constexpr int G = simd::Octet<V>::n;
    D value[G];
    I index[G];
    I lane[G];

    CALIBKIT_INLINE LaneMax() {
        for (int g = 0; g < G; ++g) {
            value[g] = simd::splat<D>(-INFINITY);
            for (int j = 0; j < V::width; ++j) {
                index[g][j] = 0;
                lane[g][j] = g * V::width + j;
            }
        }
    }
    CALIBKIT_INLINE void update(int g, D a, int64_t k) {
        const I greater = a > value[g];  // strict: a lane keeps its first maximum
        value[g] = simd::select(greater, a, value[g]);
        // One vector add (the scalar broadcast): a loop adding k lane by lane became an extract and an
        // insert per lane, about a tenth of a probability row's instructions.
        index[g] = simd::select_int(greater, lane[g] + k, index[g]);
    }
    CALIBKIT_INLINE double best() const {
        double b = -INFINITY;
        for (int g = 0; g < G; ++g)
            for (int j = 0; j < V::width; ++j) b = value[g][j] > b ? value[g][j] : b;
        return b;
    }
    CALIBKIT_INLINE int64_t first_index(double b) const {
        // Branch-free: the smallest index among the lanes whose maximum is b.
        const D target = simd::splat<D>(b);
        I none, arg;
        for (int j = 0; j < V::width; ++j) none[j] = INT64_MAX;
        arg = none;
        for (int g = 0; g < G; ++g) {
            const I candidate = simd::select_int(value[g] == target, index[g], none);
            arg = simd::select_int(candidate < arg, candidate, arg);
        }
        int64_t result = arg[0];
        for (int j = 1; j < V::width; ++j) result = arg[j] < result ? arg[j] : result;
        return result;
    }
};

// An octet of a row, as doubles, into `at` (the row buffer of the class-wise bins).
template <class V>
CALIBKIT_INLINE void store_octet(const simd::Octet<V>& o, double* at) {
    for (int g = 0; g < simd::Octet<V>::n; ++g) std::memcpy(at + g * V::width, &o.v[g], sizeof o.v[g]);
}

// The valid lanes of a row's last, overlapping octet (the others were stored from the octet before).
template <class V>
CALIBKIT_INLINE void store_tail(const simd::Octet<V>& o, const simd::TailMask<V>& tail, double* row_out) {
    for (int g = 0; g < simd::Octet<V>::n; ++g)
        for (int j = 0; j < V::width; ++j)
            if (tail.valid[g][j]) row_out[tail.start + g * V::width + j] = o.v[g][j];
}

// One read of a probability row: max/argmax, p_y, sum p^2, with the [0, 1]
// check on every element. Returns false (and sets `st`) on bad data. Store:
// the row goes to `row_out` too.
template <class T, bool Contiguous, class V, bool Store>
CALIBKIT_INLINE bool summarize_prob_row(const Matrix<T>& s, const simd::TailMask<V>& tail, int64_t i, int64_t label,
                                        double nll_eps, bool with_nll, RowSummary& out, Status& st,
                                        double* row_out) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int G = Octet<V>::n;
    const RowReader<T, Contiguous> r{reinterpret_cast<const char*>(s.row(i)), s.col_stride};
    const int64_t K = s.cols;
    const D lo = splat<D>(-kProbabilityTolerance), hi = splat<D>(1.0 + kProbabilityTolerance);
    const D zero = splat<D>(0.0), neg_inf = splat<D>(-INFINITY);
    LaneMax<V> mx;
    Octet<V> sq;
    I bad = (I)zero;
    for (int g = 0; g < G; ++g) sq.v[g] = zero;
    const int64_t full = K - K % 8;
    for (int64_t k = 0; k < full; k += 8) {
        const Octet<V> o = r.template octet<V>(k);
        for (int g = 0; g < G; ++g) {
            const D a = o.v[g];
            bad |= ~((a >= lo) & (a <= hi));  // NaN compares false
            mx.update(g, a, k);
            sq.v[g] += a * a;
        }
        if constexpr (Store) store_octet(o, row_out + k);
    }
    if (tail.needed) {
        const Octet<V> o = tail.overlapped ? r.template octet<V>(tail.start) : r.template partial_octet<V>(0, K, 0.0);
        for (int g = 0; g < G; ++g) {
            const D a = o.v[g];
            bad |= ~((a >= lo) & (a <= hi));
            mx.update(g, select(tail.valid[g], a, neg_inf), tail.start);
            const D counted = select(tail.valid[g], a, zero);
            sq.v[g] += counted * counted;
        }
        if constexpr (Store) store_tail(o, tail, row_out);
    }
    bool any_bad = false;
    for (int j = 0; j < V::width; ++j) any_bad |= bad[j] != 0;
    if (any_bad) {
        report_bad_element(r, i, K, false, st);
        return false;
    }
    out.confidence = mx.best();
    out.argmax = mx.first_index(out.confidence);
    out.sum_sq = octet_sum(sq);
    out.p_label = r.at(label);
    out.nll = with_nll ? -std::log(std::max(out.p_label, nll_eps)) : 0.0;
    return true;
}

// A logit row in two reads of the (cache-resident) row: max/argmax with the
// finiteness check, then sum_k e^{b(z_k - max)} and sum_k e^{2b(z_k - max)} with
// one vectorised exp per element (b = 1/T > 0, the inverse temperature: the
// softmax of z / T; b = 1 multiplies exactly). Store: the e^{b(z_k - max)} go
// to `row_out` too.
template <class T, bool Contiguous, class V, bool Store>
CALIBKIT_INLINE bool summarize_logit_row(const Matrix<T>& s, const simd::TailMask<V>& tail, int64_t i,
                                         int64_t label, bool with_nll, double inv_t, RowSummary& out, Status& st,
                                         double* row_out) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int G = Octet<V>::n;
    const RowReader<T, Contiguous> r{reinterpret_cast<const char*>(s.row(i)), s.col_stride};
    const int64_t K = s.cols;
    const D zero = splat<D>(0.0), neg_inf = splat<D>(-INFINITY);
    LaneMax<V> mx;
    I bad = (I)zero;
    const int64_t full = K - K % 8;
    for (int64_t k = 0; k < full; k += 8) {
        const Octet<V> o = r.template octet<V>(k);
        for (int g = 0; g < G; ++g) {
            bad |= ~((o.v[g] - o.v[g]) == zero);  // true for NaN and inf
            mx.update(g, o.v[g], k);
        }
    }
    if (tail.needed) {
        const Octet<V> o = tail.overlapped ? r.template octet<V>(tail.start) : r.template partial_octet<V>(0, K, 0.0);
        for (int g = 0; g < G; ++g) {
            bad |= ~((o.v[g] - o.v[g]) == zero);
            mx.update(g, select(tail.valid[g], o.v[g], neg_inf), tail.start);
        }
    }
    bool any_bad = false;
    for (int j = 0; j < V::width; ++j) any_bad |= bad[j] != 0;
    if (any_bad) {
        report_bad_element(r, i, K, true, st);
        return false;
    }
    const double best = mx.best();
    const D shift = splat<D>(best), b = splat<D>(inv_t);
    Octet<V> sum, sq;
    for (int g = 0; g < G; ++g) sum.v[g] = sq.v[g] = zero;
    for (int64_t k = 0; k < full; k += 8) {
        Octet<V> o = r.template octet<V>(k);
        for (int g = 0; g < G; ++g) {
            const D e = exp_nonpositive<V>(b * (o.v[g] - shift));
            sum.v[g] += e;
            sq.v[g] += e * e;
            o.v[g] = e;
        }
        if constexpr (Store) store_octet(o, row_out + k);
    }
    if (tail.needed) {  // lanes not counted here give exp(-708), which vanishes in the sums
        Octet<V> o = tail.overlapped ? r.template octet<V>(tail.start) : r.template partial_octet<V>(0, K, 0.0);
        for (int g = 0; g < G; ++g) {
            const D e = exp_nonpositive<V>(b * (select(tail.valid[g], o.v[g], neg_inf) - shift));
            sum.v[g] += e;
            sq.v[g] += e * e;
            o.v[g] = e;
        }
        if constexpr (Store) store_tail(o, tail, row_out);
    }
    const double total = octet_sum(sum);
    const double shifted_label = inv_t * (r.at(label) - best);
    out.argmax = mx.first_index(best);
    out.confidence = 1.0 / total;
    out.p_label = exp_nonpositive(shifted_label) / total;
    out.sum_sq = octet_sum(sq) / (total * total);
    out.nll = with_nll ? std::log(total) - shifted_label : 0.0;
    return true;
}

// Float32 / float16 logit rows: the single-precision path. Read 1 (from memory):
// the maximum and the finiteness check on 8 float lanes; the argmax is then the
// first element equal to the maximum (a short scan of the row, now in cache).
// Read 2 (from cache): e_k = exp_f32(b (z_k - max)) in float (relative error
// < 2.5e-7, the size of the input's own rounding; one exp per logit), summed
// (and squared) in float partials of at most 8 terms per lane that are flushed
// into double lanes every kRowFlushOctets octets. Element k is lane k mod 8; the
// last octet of a row is padded (its pad lanes add 0), so the Numba twin adds
// the same numbers in the same order. Store: the e_k go to `row_out` (a float
// buffer of a multiple of 8 elements; the pad lanes get 0).
constexpr int64_t kRowFlushOctets = 8;  // the same as uncertainty.hpp's kFlushOctets
constexpr int kRowBlock = 8;              // octets per block of the unrolled loops
constexpr int kExpOctets = 4;             // octets per exp_f32_n batch of read 2 (a divisor of kRowBlock)

template <class T, bool Contiguous, class V, bool Store, bool Unscaled, bool Sq = true>
CALIBKIT_INLINE bool summarize_logit_row_f(const Matrix<T>& s, int64_t i, int64_t label, bool with_nll, double inv_t,
                                           RowSummary& out, Status& st, float* row_out) {
    using namespace simd;
    typedef typename V::fw F;
    typedef typename V::iw I;
    constexpr int G = FOctet<V>::n, L = 2 * V::width;
    const RowReader<T, Contiguous> r{reinterpret_cast<const char*>(s.row(i)), s.col_stride};
    const int64_t K = s.cols, rest = K % 8, full = K - rest;
    const F zero = splat_f<F>(0.0f), lowest = splat_f<F>(-FLT_MAX);
    // Read 1: kRowBlock independent maxima and checks (exact and order-free), so that
    // consecutive octets do not wait on one another's adds.
    F mx[kRowBlock][G], chk[kRowBlock][G];
    for (int u = 0; u < kRowBlock; ++u)
        for (int g = 0; g < G; ++g) {
            mx[u][g] = lowest;
            chk[u][g] = zero;
        }
    int64_t k = 0;
    for (; k + 8 * kRowBlock <= full; k += 8 * kRowBlock)
        for (int u = 0; u < kRowBlock; ++u) {
            const FOctet<V> o = r.template foctet<V>(k + 8 * u);
            for (int g = 0; g < G; ++g) {
                mx[u][g] = vmax(mx[u][g], o.v[g]);
                chk[u][g] += o.v[g] - o.v[g];  // 0, or NaN from then on once a NaN or inf was met
            }
        }
    for (; k < full; k += 8) {
        const FOctet<V> o = r.template foctet<V>(k);
        for (int g = 0; g < G; ++g) {
            mx[0][g] = vmax(mx[0][g], o.v[g]);
            chk[0][g] += o.v[g] - o.v[g];
        }
    }
    if (rest) {
        const FOctet<V> o = r.template partial_foctet<V>(full, rest, -FLT_MAX);
        for (int g = 0; g < G; ++g) {
            mx[0][g] = vmax(mx[0][g], o.v[g]);
            chk[0][g] += o.v[g] - o.v[g];
        }
    }
    for (int u = 1; u < kRowBlock; ++u)
        for (int g = 0; g < G; ++g) {
            mx[0][g] = vmax(mx[0][g], mx[u][g]);
            chk[0][g] += chk[u][g];
        }
    I bad = chk[0][0] != zero;
    for (int g = 1; g < G; ++g) bad |= chk[0][g] != zero;
    if (any_lane(bad)) {
        report_bad_element(r, i, K, true, st);
        return false;
    }
    float best = mx[0][0][0];
    for (int g = 0; g < G; ++g)
        for (int j = 0; j < L; ++j) best = mx[0][g][j] > best ? mx[0][g][j] : best;
    // The first index holding the maximum (NumPy's rule): skip octets without it.
    int64_t arg = 0;
    {
        const F target = splat_f<F>(best);
        for (; arg < full; arg += 8) {
            const FOctet<V> o = r.template foctet<V>(arg);
            I hit = o.v[0] == target;
            for (int g = 1; g < G; ++g) hit |= o.v[g] == target;
            if (any_lane(hit)) break;
        }
        while (r.atf(arg) != best) ++arg;
    }
    const float bf = static_cast<float>(inv_t);
    const F shift = splat_f<F>(best), b = splat_f<F>(bf);
    // b = 1 multiplies exactly: skip the product.
    const auto scaled = [&](F z) { return Unscaled ? z - shift : b * (z - shift); };
    Octet<V> sum, sq;
    for (int g = 0; g < Octet<V>::n; ++g) sum.v[g] = sq.v[g] = splat<typename V::d>(0.0);
    FOctet<V> ps, pq;
    for (int g = 0; g < G; ++g) ps.v[g] = pq.v[g] = zero;
    // Read 2, kRowFlushOctets octets between flushes, in blocks of kRowBlock octets whose exps go
    // kExpOctets octets at a time in lockstep (exp_f32_n; eight at once kept more temporaries than the
    // sixteen AVX2 registers hold, and four measured 3% faster on one thread); each lane's partials
    // still take the octets in order, so the bits do not depend on kExpOctets.
    static_assert(kRowFlushOctets % kRowBlock == 0, "blocks do not straddle a flush");
    const char* next = i + 1 < s.rows ? reinterpret_cast<const char*>(s.row(i + 1)) : nullptr;
    for (k = 0; k < full;) {
        const int64_t stop = std::min(full, k + 8 * kRowFlushOctets);
        for (; k + 8 * kRowBlock <= stop; k += 8 * kRowBlock) {
            if constexpr (Contiguous && std::is_same<T, float>::value) {
                // The next row's lines are requested while this one computes: its read 1 then
                // comes from cache and the memory traffic overlaps the exps.
                if (next)
                    for (int c = 0; c < 8 * kRowBlock * 4; c += 64) CALIBKIT_PREFETCH(next + 4 * k + c, 0, 3);
            }
            for (int u0 = 0; u0 < kRowBlock; u0 += kExpOctets) {
                F e[kExpOctets * G];
                for (int u = 0; u < kExpOctets; ++u) {
                    const FOctet<V> o = r.template foctet<V>(k + 8 * (u0 + u));
                    for (int g = 0; g < G; ++g) e[u * G + g] = scaled(o.v[g]);
                }
                exp_f32_n<V, kExpOctets * G>(e);
                for (int u = 0; u < kExpOctets; ++u)
                    for (int g = 0; g < G; ++g) {
                        const F ev = e[u * G + g];
                        ps.v[g] += ev;
                        if constexpr (Sq) pq.v[g] += ev * ev;
                        if constexpr (Store) store_f(row_out + k + 8 * (u0 + u) + g * L, ev);
                    }
            }
        }
        for (; k < stop; k += 8) {
            const FOctet<V> o = r.template foctet<V>(k);
            for (int g = 0; g < G; ++g) {
                const F e = exp_f32<V>(scaled(o.v[g]));
                ps.v[g] += e;
                if constexpr (Sq) pq.v[g] += e * e;
                if constexpr (Store) std::memcpy(row_out + k + g * L, &e, sizeof e);
            }
        }
        if (k % (8 * kRowFlushOctets) == 0) {  // after every kRowFlushOctets-th octet
            flush_float_octet<V>(sum, ps);
            if constexpr (Sq) flush_float_octet<V>(sq, pq);
        }
    }
    if (rest) {
        const FOctet<V> o = r.template partial_foctet<V>(full, rest, 0.0f);
        for (int g = 0; g < G; ++g) {
            I valid;
            for (int j = 0; j < L; ++j) valid[j] = g * L + j < rest ? -1 : 0;
            const F e = select_f(valid, exp_f32<V>(scaled(o.v[g])), zero);
            ps.v[g] += e;
            if constexpr (Sq) pq.v[g] += e * e;
            if constexpr (Store) std::memcpy(row_out + full + g * L, &e, sizeof e);
        }
    }
    flush_float_octet<V>(sum, ps);
    if constexpr (Sq) flush_float_octet<V>(sq, pq);
    const double total = octet_sum(sum);  // >= 1: the maximum adds exp_f32(0) = 1
    out.argmax = arg;
    out.confidence = 1.0 / total;
    out.p_label = static_cast<double>(exp_f32(bf * (r.atf(label) - best))) / total;
    out.sum_sq = Sq ? octet_sum(sq) / (total * total) : 0.0;
    out.nll = with_nll ? std::log(total) - inv_t * (r.at(label) - static_cast<double>(best)) : 0.0;
    return true;
}

template <class T, bool Contiguous, class V, bool Store, bool Unscaled>
CALIBKIT_INLINE bool summarize_logit_row_f_sq(const Matrix<T>& s, int64_t i, int64_t label, bool with_nll,
                                              bool with_sq, double inv_t, RowSummary& out, Status& st,
                                              float* row_out) {
    return with_sq ? summarize_logit_row_f<T, Contiguous, V, Store, Unscaled, true>(s, i, label, with_nll, inv_t, out,
                                                                                    st, row_out)
                   : summarize_logit_row_f<T, Contiguous, V, Store, Unscaled, false>(s, i, label, with_nll, inv_t,
                                                                                     out, st, row_out);
}

// with_sq: the row's sum of squared probabilities (the Brier term) is wanted (false: sum_sq is 0, for the
// float logit rows; the other paths compute it anyway).
template <class T, class V, bool Store>
CALIBKIT_INLINE bool summarize_row(const Matrix<T>& s, const simd::TailMask<V>& tail, int64_t i, int64_t label,
                                   bool from_logits, double nll_eps, bool with_nll, double inv_t, RowSummary& out,
                                   Status& st, double* row_out, float* frow_out, bool with_sq = true) {
    if constexpr (!std::is_same<T, double>::value) {
        if (from_logits) {
            if (inv_t == 1.0)
                return s.row_contiguous()
                           ? summarize_logit_row_f_sq<T, true, V, Store, true>(s, i, label, with_nll, with_sq, inv_t,
                                                                               out, st, frow_out)
                           : summarize_logit_row_f_sq<T, false, V, Store, true>(s, i, label, with_nll, with_sq, inv_t,
                                                                                out, st, frow_out);
            return s.row_contiguous()
                       ? summarize_logit_row_f_sq<T, true, V, Store, false>(s, i, label, with_nll, with_sq, inv_t, out,
                                                                            st, frow_out)
                       : summarize_logit_row_f_sq<T, false, V, Store, false>(s, i, label, with_nll, with_sq, inv_t,
                                                                             out, st, frow_out);
        }
    }
    (void)frow_out;
    if (s.row_contiguous()) {
        return from_logits
                   ? summarize_logit_row<T, true, V, Store>(s, tail, i, label, with_nll, inv_t, out, st, row_out)
                   : summarize_prob_row<T, true, V, Store>(s, tail, i, label, nll_eps, with_nll, out, st, row_out);
    }
    return from_logits
               ? summarize_logit_row<T, false, V, Store>(s, tail, i, label, with_nll, inv_t, out, st, row_out)
               : summarize_prob_row<T, false, V, Store>(s, tail, i, label, nll_eps, with_nll, out, st, row_out);
}

// Rows shorter than this are summarised W rows at a time, one row per lane,
// reading the elements in column order (sums in plain column order); longer rows
// one at a time in octets. The choice depends on K only, never on the layout or
// the instruction set, so results do not either.
constexpr int64_t kShortRow = 16;

// Summaries of 2 W rows (one per lane, two vectors whose dependency chains
// interleave) of a short-row matrix. `rows[j]` are the row indices (repeated
// when fewer rows are left), `labels[j]` valid labels.
constexpr int kShortGroups = 2;

template <class V>
struct RowsSummary {
    typename V::d confidence[kShortGroups], p_label[kShortGroups], sum_sq[kShortGroups], nll[kShortGroups];
    typename V::i argmax[kShortGroups], bad[kShortGroups];
    typename V::fw fconfidence;  // float32 / float16 probability rows: the 2 W maxima as floats
};

// [-tol, 1 + tol] as float bounds: for a float v, v >= lo (<= hi) exactly when the double
// v >= -tol (<= 1 + tol), so the float probability rows check their range in float lanes.
struct ShortProbBounds {
    float lo, hi;
    ShortProbBounds() {
        const double lo_d = -kProbabilityTolerance, hi_d = 1.0 + kProbabilityTolerance;
        lo = static_cast<float>(lo_d);
        if (static_cast<double>(lo) < lo_d) lo = std::nextafter(lo, std::numeric_limits<float>::infinity());
        hi = static_cast<float>(hi_d);
        if (static_cast<double>(hi) > hi_d) hi = std::nextafter(hi, -std::numeric_limits<float>::infinity());
    }
};

// Column k of a batch of 2 W float32 / float16 rows into cols[k] (lane j = row j, rows of the
// batch at `base`). Rows with contiguous float32 elements and K >= 4 are read four elements at
// a time and transposed four rows by four in registers (the last block overlaps the one
// before when K % 4 != 0); otherwise element by element. Only data movement: the values, and
// so every result, are the same for any layout.
template <class T, class V>
CALIBKIT_INLINE void short_float_columns(const Matrix<T>& s, const char* const* base, float (*cols)[2 * V::width]) {
    constexpr int B = 2 * V::width;
    const int64_t K = s.cols;
    if constexpr (std::is_same<T, float>::value) {
        if (s.col_stride == static_cast<int64_t>(sizeof(float)) && K >= 4) {
            typedef simd::Vec<2>::fw F4;  // four float lanes
            for (int64_t k0 = 0;; k0 += 4) {
                const int64_t k = std::min(k0, K - 4);
                for (int q = 0; q < B; q += 4) {
                    F4 r0, r1, r2, r3;
                    std::memcpy(&r0, reinterpret_cast<const float*>(base[q]) + k, sizeof r0);
                    std::memcpy(&r1, reinterpret_cast<const float*>(base[q + 1]) + k, sizeof r1);
                    std::memcpy(&r2, reinterpret_cast<const float*>(base[q + 2]) + k, sizeof r2);
                    std::memcpy(&r3, reinterpret_cast<const float*>(base[q + 3]) + k, sizeof r3);
                    const F4 t0 = simd::shuffle<0, 4, 1, 5>(r0, r1);
                    const F4 t1 = simd::shuffle<0, 4, 1, 5>(r2, r3);
                    const F4 t2 = simd::shuffle<2, 6, 3, 7>(r0, r1);
                    const F4 t3 = simd::shuffle<2, 6, 3, 7>(r2, r3);
                    const F4 c0 = simd::shuffle<0, 1, 4, 5>(t0, t1);
                    const F4 c1 = simd::shuffle<2, 3, 6, 7>(t0, t1);
                    const F4 c2 = simd::shuffle<0, 1, 4, 5>(t2, t3);
                    const F4 c3 = simd::shuffle<2, 3, 6, 7>(t2, t3);
                    std::memcpy(&cols[k][q], &c0, sizeof c0);
                    std::memcpy(&cols[k + 1][q], &c1, sizeof c1);
                    std::memcpy(&cols[k + 2][q], &c2, sizeof c2);
                    std::memcpy(&cols[k + 3][q], &c3, sizeof c3);
                }
                if (k0 + 4 >= K) return;
            }
        }
    }
    for (int64_t k = 0; k < K; ++k)
        for (int j = 0; j < B; ++j) cols[k][j] = load_float(reinterpret_cast<const T*>(base[j] + k * s.col_stride));
}

// The columns of a batch of 2 W contiguous float32 rows with K >= 4, transposed in registers and passed to
// step(column) in order 0..K-1 (lane j = row j); false (nothing done) for other rows. Four columns at a
// time: each row's four elements are one 16-byte load (with 2 W = 8 lanes, row j and row j + 4 share one
// register, a half each), and a 4 x 4 transpose within each 16-byte half (unpack, then move pairs) gives
// the four column registers directly, without the store and reload of short_float_columns (16-byte
// stores reloaded as 32 bytes do not forward). The last block overlaps the one before when K % 4 != 0;
// its columns already passed are skipped. Only data movement: the same values in the same order.
template <class T, class V, class Step>
CALIBKIT_INLINE bool short_float_columns_in_registers(const Matrix<T>& s, const char* const* base, Step& step) {
    if constexpr (std::is_same<T, float>::value) {
        typedef typename V::fw F;
        typedef simd::Vec<2>::fw F4;  // four float lanes
        constexpr int W = V::width;
        const int64_t K = s.cols;
        if (s.col_stride != static_cast<int64_t>(sizeof(float)) || K < 4) return false;
        const auto load4 = [&](int j, int64_t k) {
            F4 r;
            std::memcpy(&r, reinterpret_cast<const float*>(base[j]) + k, sizeof r);
            return r;
        };
        F c0, c1, c2, c3;
        const auto block = [&](int64_t k) {  // columns k .. k + 3 into c0 .. c3
            if constexpr (W == 4) {
                F r[4];
                for (int j = 0; j < 4; ++j) r[j] = simd::concat_f<F>(load4(j, k), load4(j + 4, k));
                const F t0 = simd::shuffle8<0, 8, 1, 9, 4, 12, 5, 13>(r[0], r[1]);  // unpacklo within halves
                const F t1 = simd::shuffle8<0, 8, 1, 9, 4, 12, 5, 13>(r[2], r[3]);
                const F t2 = simd::shuffle8<2, 10, 3, 11, 6, 14, 7, 15>(r[0], r[1]);  // unpackhi
                const F t3 = simd::shuffle8<2, 10, 3, 11, 6, 14, 7, 15>(r[2], r[3]);
                c0 = simd::shuffle8<0, 1, 8, 9, 4, 5, 12, 13>(t0, t1);
                c1 = simd::shuffle8<2, 3, 10, 11, 6, 7, 14, 15>(t0, t1);
                c2 = simd::shuffle8<0, 1, 8, 9, 4, 5, 12, 13>(t2, t3);
                c3 = simd::shuffle8<2, 3, 10, 11, 6, 7, 14, 15>(t2, t3);
            } else {
                static_assert(W == 2, "two or four double lanes");
                const F4 r0 = load4(0, k), r1 = load4(1, k), r2 = load4(2, k), r3 = load4(3, k);
                const F4 t0 = simd::shuffle<0, 4, 1, 5>(r0, r1);
                const F4 t1 = simd::shuffle<0, 4, 1, 5>(r2, r3);
                const F4 t2 = simd::shuffle<2, 6, 3, 7>(r0, r1);
                const F4 t3 = simd::shuffle<2, 6, 3, 7>(r2, r3);
                c0 = simd::shuffle<0, 1, 4, 5>(t0, t1);
                c1 = simd::shuffle<2, 3, 6, 7>(t0, t1);
                c2 = simd::shuffle<0, 1, 4, 5>(t2, t3);
                c3 = simd::shuffle<2, 3, 6, 7>(t2, t3);
            }
        };
        int64_t k0 = 0;
        for (; k0 + 4 <= K; k0 += 4) {
            block(k0);
            step(c0);
            step(c1);
            step(c2);
            step(c3);
        }
        if (k0 < K) {
            block(K - 4);
            switch (k0 - (K - 4)) {  // the columns of this block not passed yet
                case 1:
                    step(c1);
                    [[fallthrough]];
                case 2:
                    step(c2);
                    [[fallthrough]];
                default:
                    step(c3);
            }
        }
        return true;
    }
    return false;
}

// -log(max(p, nll_eps)) per lane (+inf where that is 0), by the vector log_positive.
template <class V>
CALIBKIT_INLINE typename V::d short_row_nll(typename V::d p, double nll_eps) {
    typedef typename V::d D;
    const D eps = simd::splat<D>(nll_eps), zero = simd::splat<D>(0.0);
    const D x = simd::select(p < eps, eps, p);  // std::max(p, nll_eps)
    const typename V::i positive = x > zero;
    return simd::select(positive, zero - simd::log_positive<V>(simd::select(positive, x, simd::splat<D>(1.0))),
                        simd::splat<D>(INFINITY));
}

// The float scan of summarize_short_rows for the usual rows (top_label_short_rows' plain round), on the
// elements' bits as int32 lanes: for floats without the sign bit the integer order is the float order, NaN
// above +inf. imx is the bits of the running maximum, iarg its first column, sign the OR of all the bits. A
// row whose sign lane is >= 0 (no negative number, -0 or negative NaN) and imx <= the bits of hi (no NaN,
// nothing above hi) is good, with summarize_short_rows' maximum and argmax (one operation fewer per column
// than its minimum and sum); any other row is left to summarize_short_rows.
template <class T, class V>
CALIBKIT_INLINE void scan_short_float_bits(const Matrix<T>& s, const char* const* base, typename V::iw& imx,
                                          typename V::iw& iarg, typename V::iw& sign) {
    using namespace simd;
    typedef typename V::fw F;
    typedef typename V::iw IW;
    constexpr int W = V::width;
    IW kk = IW{};
    imx = IW{} - 1;  // below the bits of every float without the sign bit
    iarg = sign = IW{};
    const auto column_step = [&](const F v) {
        const IW b = (IW)v;
        const IW greater = b > imx;  // strict: the first maximum wins
        imx = select_int(greater, b, imx);
        iarg = select_int(greater, kk, iarg);
        sign |= b;
        kk += 1;
    };
    if (!short_float_columns_in_registers<T, V>(s, base, column_step)) {
        float cols[kShortRow][2 * W];
        short_float_columns<T, V>(s, base, cols);
        for (int64_t k = 0; k < s.cols; ++k) {
            F v;
            std::memcpy(&v, cols[k], sizeof v);
            column_step(v);
        }
    }
}

// Sq = false (float32 / float16 probability rows only; no NLL asked): the rows' sums of squares and p_label
// are not computed (0); a NaN is then found by a float sum of the row instead (the same rows are bad).
template <class T, class V, bool Sq = true>
CALIBKIT_INLINE void summarize_short_rows(const Matrix<T>& s, const int64_t* rows, const int64_t* labels,
                                          bool from_logits, double nll_eps, bool with_nll, double inv_t,
                                          RowsSummary<V>& out) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int W = V::width, G = kShortGroups;
    static_assert(G == 2, "a batch of float rows is one register of 2 W float lanes");
    const int64_t K = s.cols;
    const char* base[G * W];
    for (int j = 0; j < G * W; ++j) base[j] = reinterpret_cast<const char*>(s.row(rows[j]));
    const auto column = [&](int g, int64_t k) {
        if constexpr (std::is_same<T, float>::value) {  // gather as floats, one conversion
            typename V::f f;
            for (int j = 0; j < W; ++j) f[j] = *reinterpret_cast<const float*>(base[g * W + j] + k * s.col_stride);
            return convert<D>(f);
        } else {
            D v;
            for (int j = 0; j < W; ++j) v[j] = load(reinterpret_cast<const T*>(base[g * W + j] + k * s.col_stride));
            return v;
        }
    };
    const D zero = splat<D>(0.0), neg_inf = splat<D>(-INFINITY);
    D mx[G], p_label[G];
    I arg[G], bad[G];
    constexpr bool no_sq = !Sq && !std::is_same<T, double>::value;  // the float probability rows' Sq = false
    for (int g = 0; g < G; ++g) {
        if (no_sq && !from_logits) {
            p_label[g] = zero;
        } else {
            for (int j = 0; j < W; ++j)
                p_label[g][j] = load(reinterpret_cast<const T*>(base[g * W + j] + labels[g * W + j] * s.col_stride));
        }
        mx[g] = neg_inf;
        arg[g] = bad[g] = (I)zero;
    }
    if (!from_logits) {
        D sq[G];
        for (int g = 0; g < G; ++g) sq[g] = zero;
        if constexpr (!std::is_same<T, double>::value) {
            // float32 / float16: the batch's 2 W rows in the float lanes of one register; the
            // checks, maximum and argmax are exact in float, the squares summed in double.
            typedef typename V::fw F;
            typedef typename V::iw IW;
            static const ShortProbBounds bounds;
            const F lo = broadcast_f<F>(bounds.lo), hi = broadcast_f<F>(bounds.hi);
            F fmx = broadcast_f<F>(-INFINITY), fmn = broadcast_f<F>(INFINITY), fsum = F{};
            IW farg = IW{}, kk = IW{};
            D sq0 = zero, sq1 = zero;  // locals, not sq[]: the sums stay in registers
            // Column k (lane j = row j) into the running maximum, argmax, minimum and sums; the columns
            // in order 0..K-1.
            const auto column_step = [&](const F v) {
                const IW greater = v > fmx;  // strict: the first maximum wins (NaN never)
                fmx = vmax(v, fmx);          // maxps: v when v > fmx, else fmx (the select's semantics)
                farg = select_int(greater, kk, farg);
                fmn = vmin(v, fmn);  // minps: v when v < fmn, else fmn (NaN skipped), as the select
                if constexpr (Sq) {
                    D v0, v1;
                    widen<V>(v, v0, v1);
                    sq0 += v0 * v0;
                    sq1 += v1 * v1;
                } else {
                    fsum += v;
                }
                kk += 1;
            };
            if (!short_float_columns_in_registers<T, V>(s, base, column_step)) {
                float cols[kShortRow][2 * W];
                short_float_columns<T, V>(s, base, cols);
                for (int64_t k = 0; k < K; ++k) {
                    F v;
                    std::memcpy(&v, cols[k], sizeof v);
                    column_step(v);
                }
            }
            sq[0] = sq0;
            sq[1] = sq1;
            // Every element is in [lo, hi] exactly when the minimum and maximum are and none is
            // NaN; a NaN (skipped by both) makes the sum of squares NaN (Sq = false: the float sum,
            // which is finite otherwise when the minimum and maximum are in range).
            IW fbad = ~((fmn >= lo) & (fmx <= hi));
            if constexpr (!Sq) fbad |= ~(fsum == fsum);
            out.fconfidence = fmx;
            widen<V>(fmx, mx[0], mx[1]);
            typedef typename V::ih IH;
            IH h0, h1;
            std::memcpy(&h0, &farg, sizeof h0);
            std::memcpy(&h1, reinterpret_cast<const char*>(&farg) + sizeof h0, sizeof h1);
            arg[0] = convert<I>(h0);
            arg[1] = convert<I>(h1);
            std::memcpy(&h0, &fbad, sizeof h0);
            std::memcpy(&h1, reinterpret_cast<const char*>(&fbad) + sizeof h0, sizeof h1);
            bad[0] = convert<I>(h0) | ~(sq[0] == sq[0]);
            bad[1] = convert<I>(h1) | ~(sq[1] == sq[1]);
        } else {
            const D lo = splat<D>(-kProbabilityTolerance), hi = splat<D>(1.0 + kProbabilityTolerance);
            I kk = (I)zero;
            for (int64_t k = 0; k < K; ++k, kk += 1) {
                for (int g = 0; g < G; ++g) {
                    const D v = column(g, k);
                    bad[g] |= ~((v >= lo) & (v <= hi));  // NaN compares false
                    const I greater = v > mx[g];          // strict: the first maximum wins
                    mx[g] = select(greater, v, mx[g]);
                    arg[g] = select_int(greater, kk, arg[g]);
                    sq[g] += v * v;
                }
            }
        }
        for (int g = 0; g < G; ++g) {
            out.confidence[g] = mx[g];
            out.argmax[g] = arg[g];
            out.sum_sq[g] = sq[g];
            out.p_label[g] = p_label[g];
            out.bad[g] = bad[g];
            out.nll[g] = with_nll ? short_row_nll<V>(p_label[g], nll_eps) : zero;
        }
        return;
    }
    I kk = (I)zero;
    for (int64_t k = 0; k < K; ++k, kk += 1) {
        for (int g = 0; g < G; ++g) {
            const D v = column(g, k);
            bad[g] |= ~((v - v) == zero);  // NaN and inf
            const I greater = v > mx[g];
            mx[g] = select(greater, v, mx[g]);
            arg[g] = select_int(greater, kk, arg[g]);
        }
    }
    D sum[G], sq[G];
    for (int g = 0; g < G; ++g) {
        mx[g] = select(bad[g], zero, mx[g]);  // keep bad lanes harmless: their results are discarded
        sum[g] = sq[g] = zero;
    }
    const D b = splat<D>(inv_t);
    for (int64_t k = 0; k < K; ++k) {
        for (int g = 0; g < G; ++g) {
            const D e = exp_nonpositive<V>(b * (select(bad[g], neg_inf, column(g, k)) - mx[g]));
            sum[g] += e;
            sq[g] += e * e;
        }
    }
    for (int g = 0; g < G; ++g) {
        const D shifted = select(bad[g], zero, b * (p_label[g] - mx[g]));
        out.bad[g] = bad[g];
        out.argmax[g] = arg[g];
        out.confidence[g] = splat<D>(1.0) / sum[g];
        out.p_label[g] = exp_nonpositive<V>(shifted) / sum[g];
        out.sum_sq[g] = sq[g] / (sum[g] * sum[g]);
        for (int j = 0; j < W; ++j) out.nll[g][j] = with_nll ? std::log(sum[g][j]) - shifted[j] : 0.0;
    }
}

// Class-wise (marginal) bins, filled in the same pass as the top-label ones: for
// every class k and every row, p_k goes into bin(p_k) of class k with target
// 1[y == k] (Kull et al. 2019). Bins are equal-width, or per-class explicit
// edges (K x (M + 1), row-major). Output index k * M + m.
//
// Most of a row's K probabilities are small: at most M - 1 of them (they sum to
// 1) exceed an equal-width first edge 1/M. Every octet of a row is added to
// per-class bin-0 sums (K-long arrays) with vector operations, its elements above
// bin 0 adding 0; the few octets holding such elements are listed without a
// branch, and their elements go to their bins one by one after the row's octets.
// Each class's sums still take the rows in order, so the result is the same as
// adding every element to its bin one at a time.
struct ClasswiseSpec {
    int64_t n_bins = 0;              // M; 0: no class-wise bins
    std::vector<BinEdges> edges;     // one (equal-width, shared) or one per class
    std::vector<double> bin0_upper;  // per class: p <= bin0_upper[k] is bin 0

    ClasswiseSpec() = default;
    ClasswiseSpec(int64_t K, int64_t M, const double* class_edges) : n_bins(M) {
        if (class_edges) {
            for (int64_t k = 0; k < K; ++k) edges.push_back(BinEdges::explicit_edges(class_edges + k * (M + 1), M));
        } else {
            edges.push_back(BinEdges::equal_width(M));
        }
        for (int64_t k = 0; k < K; ++k) bin0_upper.push_back(of(k).bounds[1]);  // +inf when M = 1
    }
    bool on() const { return n_bins > 0; }
    const BinEdges& of(int64_t k) const { return edges.size() == 1 ? edges[0] : edges[static_cast<size_t>(k)]; }
};

// Per-chunk scratch of the class-wise path: one row of probabilities (or
// exponentials; `frow` for the float logit path, padded to a multiple of 8) and
// the bin-0 sums of each class. Bin 0's count is not kept per element: it is the
// chunk's row count minus the other bins' counts (exact integers).
//
// A row's adds above bin 0 and to its label's bin are applied one row later
// (defer, then apply_pending at the next row or at the fold), their bins' lines
// requested when the row lists them: between two visits of a class the row
// stream pushes the K x M bins out of L2, and adds applied at once waited on
// memory. Each bin still takes its adds in row order: the same sums.
struct ClasswiseScratch {
    std::vector<double> row, sum0, weight0;
    std::vector<float> frow;
    std::vector<uint64_t> above;  // classwise_row's list of a row's octets with elements above bin 0 (K / 8)
    std::vector<int64_t> pending_at;  // the last row's adds above bin 0: bin index (k * M + m) and p
    std::vector<double> pending_p;
    int64_t n_pending = 0;
    int64_t pending_target = -1;  // the last row's label bin, or -1
    double pending_w = 0.0;       // the last row's weight
    int64_t rows = 0;  // rows of the chunk added so far
    explicit ClasswiseScratch(int64_t K)
        : row(K),
          sum0(K, 0.0),
          weight0(K, 0.0),
          frow(K > 0 ? static_cast<size_t>((K + 7) / 8 * 8) : 0, 0.0f),
          above(static_cast<size_t>(K / 8)),
          pending_at(K),
          pending_p(K) {}

    // Starts a row of weight w (the last row's adds applied first).
    void start_row(BinSums& bins, bool weighted, double w) {
        apply_pending(bins, weighted);
        pending_w = w;
        rows += 1;
    }
    // An add above bin 0 of the current row (at most one per class: K slots), its lines requested now.
    void defer(BinSums& bins, bool weighted, int64_t at, double p) {
        pending_at[static_cast<size_t>(n_pending)] = at;
        pending_p[static_cast<size_t>(n_pending)] = p;
        n_pending += 1;
        CALIBKIT_PREFETCH(bins.count.data() + at, 1, 3);
        CALIBKIT_PREFETCH(bins.sum_score.data() + at, 1, 3);
        if (weighted) CALIBKIT_PREFETCH(bins.weight.data() + at, 1, 3);
    }
    void defer_target(BinSums& bins, int64_t at) {
        pending_target = at;
        CALIBKIT_PREFETCH(bins.sum_target.data() + at, 1, 3);
    }
    void apply_pending(BinSums& bins, bool weighted) {
        const double w = pending_w;
        for (int64_t q = 0; q < n_pending; ++q) {
            const size_t at = static_cast<size_t>(pending_at[static_cast<size_t>(q)]);
            const double p = pending_p[static_cast<size_t>(q)];
            bins.count[at] += 1;
            bins.sum_score[at] += weighted ? w * p : p;
            if (weighted) bins.weight[at] += w;
        }
        if (pending_target >= 0) bins.sum_target[static_cast<size_t>(pending_target)] += w;
        n_pending = 0;
        pending_target = -1;
    }

    // The last row's adds, then bin 0 of each class into the chunk's bins (which held nothing there yet).
    void fold_into(BinSums& bins, int64_t M, bool weighted) {
        apply_pending(bins, weighted);
        for (size_t k = 0; k < sum0.size(); ++k) {
            const size_t at = k * static_cast<size_t>(M);
            int64_t others = 0;
            for (int64_t m = 1; m < M; ++m) others += bins.count[at + static_cast<size_t>(m)];
            bins.count[at] += rows - others;
            bins.sum_score[at] += sum0[k];
            if (weighted) bins.weight[at] += weight0[k];
        }
        // Without weights every weight is 1: weight = count, exactly.
        if (!weighted)
            for (size_t j = 0; j < bins.count.size(); ++j) bins.weight[j] = static_cast<double>(bins.count[j]);
    }
};

// The octets [0, K8) of a row of float exponentials into bin 0's sums of a shared-edge class-wise spec (see
// classwise_row): sum0[k] += e[k] * scale (times w), weight0[k] += w, for the e[k] not above tf; the others
// add 0 (a sum of non-negative terms is unchanged) and their octet is listed in `list` (its offset << 8 and
// a bit per lane above tf). Returns the number listed. Branch-free. Called through an outlined copy
// (classwise_octets_f_call): inlined into the row loop of a chunk, it lost its pointers and a vector to the
// stack (three reloads and a store-reload per octet), with its own registers it keeps them.
template <class V, bool Weighted>
CALIBKIT_INLINE int64_t classwise_octets_f(const float* e, int64_t K8, float tf, double scale, double w,
                                           double* sum0, double* weight0, uint64_t* list) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::fw F;
    typedef typename V::iw IF;
    constexpr int W = V::width, GF = FOctet<V>::n, LF = 2 * W;
    const D vs = splat<D>(scale), vw = splat<D>(w);
    const F vtf = splat_f<F>(tf), zero_f = splat_f<F>(0.0f), one_f = splat_f<F>(1.0f);
    int64_t listed = 0;
    for (int64_t k = 0; k < K8; k += 8) {
        unsigned cand = 0;
        for (int g = 0; g < GF; ++g) {
            F ev;
            std::memcpy(&ev, e + k + g * LF, sizeof(F));
            const IF above = ev > vtf;
            cand |= lane_bits(above) << (g * LF);
            D pd[2], wd[2];
            widen<V>(select_f(above, zero_f, ev), pd[0], pd[1]);  // candidates add 0
            if constexpr (Weighted) widen<V>(select_f(above, zero_f, one_f), wd[0], wd[1]);  // and no weight
            for (int h = 0; h < 2; ++h) {
                const int64_t at = k + g * LF + h * W;
                D s0;
                std::memcpy(&s0, sum0 + at, sizeof s0);
                s0 += Weighted ? (pd[h] * vs) * vw : pd[h] * vs;
                std::memcpy(sum0 + at, &s0, sizeof s0);
                if constexpr (Weighted) {  // w * 1 is w exactly
                    D w0;
                    std::memcpy(&w0, weight0 + at, sizeof w0);
                    w0 += wd[h] * vw;
                    std::memcpy(weight0 + at, &w0, sizeof w0);
                }
            }
        }
        list[listed] = static_cast<uint64_t>(k) << 8 | cand;
        listed += cand != 0;
    }
    return listed;
}

template <bool Weighted>
CALIBKIT_NOINLINE int64_t classwise_octets_f_sse(const float* e, int64_t K8, float tf, double scale, double w,
                                                 double* sum0, double* weight0, uint64_t* list) {
    return classwise_octets_f<simd::Vec<2>, Weighted>(e, K8, tf, scale, w, sum0, weight0, list);
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <bool Weighted>
CALIBKIT_AVX2_CLONE CALIBKIT_NOINLINE int64_t classwise_octets_f_avx2(const float* e, int64_t K8, float tf,
                                                                     double scale, double w, double* sum0,
                                                                     double* weight0, uint64_t* list) {
    return classwise_octets_f<simd::Vec<4>, Weighted>(e, K8, tf, scale, w, sum0, weight0, list);
}
#endif

// classwise_octets_f through its outlined copy for the lanes of V (Vec<4>: only in AVX2 code).
template <class V, bool Weighted>
CALIBKIT_INLINE int64_t classwise_octets_f_call(const float* e, int64_t K8, float tf, double scale, double w,
                                                double* sum0, double* weight0, uint64_t* list) {
#if CALIBKIT_HAVE_AVX2_CLONES
    if constexpr (V::width == 4)
        return classwise_octets_f_avx2<Weighted>(e, K8, tf, scale, w, sum0, weight0, list);
    else
#endif
        return classwise_octets_f_sse<Weighted>(e, K8, tf, scale, w, sum0, weight0, list);
}

// One row's class-wise update: p_k = e[k] * scale (scale = 1 / sum of the row's
// exponentials for logits, 1 for probabilities; e is double, or float from the
// float logit path). Shared: one set of edges for all classes. Each octet costs a
// few vector operations (bin 0's sums only: its count is implied, see
// ClasswiseScratch) and no branch: the elements above bin 0, in the octets listed
// in sc.above, go element by element afterwards. (A branch per octet on "any
// element above bin 0" mispredicts often when K / 8 is not much more than the
// M - 1 elements that can be above: at K = 100 it cost a quarter of the pass.)
template <class V, bool Weighted, bool Shared, class E>
CALIBKIT_INLINE void classwise_row(const ClasswiseSpec& cw, ClasswiseScratch& sc, BinSums& bins, int64_t K,
                                   int64_t y, double w, double scale, const E* e) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int W = V::width, G = 8 / W;
    const int64_t M = cw.n_bins;
    const double* upper = cw.bin0_upper.data();
    double* sum0 = sc.sum0.data();
    double* weight0 = sc.weight0.data();
    sc.start_row(bins, Weighted, w);
    const auto add_above = [&](int64_t k, double p) {  // p above bin 0's upper edge
        sc.defer(bins, Weighted, k * M + (Shared ? cw.edges[0] : cw.of(k)).bin(p), p);
    };
    const auto add = [&](int64_t k, double p) {
        if (p <= upper[k]) {
            sum0[k] += Weighted ? w * p : p;
            if (Weighted) weight0[k] += w;
            return;
        }
        add_above(k, p);
    };
    const int64_t K8 = K - K % 8;
    if constexpr (Shared && std::is_same<E, float>::value) {
        // Float exponentials, one set of edges: a float threshold `tf` with e <= tf => p = e * scale
        // <= upper (p is monotone in e), so the octets are compared in float (classwise_octets_f); the
        // listed elements go one by one afterwards, as below.
        float tf = static_cast<float>(std::min(upper[0] / scale, static_cast<double>(FLT_MAX)));
        while (tf > 0.0f && static_cast<double>(tf) * scale > upper[0]) tf = std::nextafter(tf, 0.0f);
        uint64_t* const list = sc.above.data();
        const int64_t listed = classwise_octets_f_call<V, Weighted>(e, K8, tf, scale, w, sum0, weight0, list);
        for (int64_t q = 0; q < listed; ++q) {
            const int64_t k = static_cast<int64_t>(list[q] >> 8);
            for (unsigned cand = static_cast<unsigned>(list[q] & 0xff); cand != 0; cand &= cand - 1) {
                const int64_t j = k + simd::ctz(cand);
                add(j, static_cast<double>(e[j]) * scale);
            }
        }
    } else {
        // As above: bin 0's sums take every element of the octet, those above it adding 0; an octet with
        // elements above is listed (two bits per lane: lane_bits of 64-bit lanes), and after the octets the
        // listed elements go into their bins (their p recomputed, the same product).
        const D vs = splat<D>(scale), vw = splat<D>(w), zero = splat<D>(0.0);
        const D shared_upper = splat<D>(upper[0]);
        uint64_t* const list = sc.above.data();
        int64_t listed = 0;
        for (int64_t k = 0; k < K8; k += 8) {
            unsigned lanes = 0;
            for (int g = 0; g < G; ++g) {
                const D p = GroupLoad<E, V>::contiguous(e + k + g * W) * vs;
                D t;
                if constexpr (Shared) {
                    t = shared_upper;
                } else {
                    std::memcpy(&t, upper + k + g * W, sizeof t);
                }
                const I above = ~(p <= t);
                lanes |= lane_bits(above) << (2 * W * g);
                D s0;
                std::memcpy(&s0, sum0 + k + g * W, sizeof s0);
                s0 += select(above, zero, Weighted ? p * vw : p);
                std::memcpy(sum0 + k + g * W, &s0, sizeof s0);
                if constexpr (Weighted) {
                    D w0;
                    std::memcpy(&w0, weight0 + k + g * W, sizeof w0);
                    w0 += select(above, zero, vw);
                    std::memcpy(weight0 + k + g * W, &w0, sizeof w0);
                }
            }
            list[listed] = static_cast<uint64_t>(k) << 16 | lanes;
            listed += lanes != 0;
        }
        for (int64_t q = 0; q < listed; ++q) {
            const int64_t k = static_cast<int64_t>(list[q] >> 16);
            for (unsigned lanes = static_cast<unsigned>(list[q] & 0xffff); lanes != 0; lanes &= lanes - 1) {
                const int64_t j = k + simd::ctz(lanes) / 2;
                lanes &= lanes - 1;  // the lane's second bit
                add_above(j, static_cast<double>(e[j]) * scale);
            }
        }
    }
    for (int64_t k = K8; k < K; ++k) add(k, static_cast<double>(e[k]) * scale);
    const double py = static_cast<double>(e[y]) * scale;
    sc.defer_target(bins, y * M + cw.of(y).bin(py));
}

template <class V, class E>
CALIBKIT_INLINE void classwise_row(const ClasswiseSpec& cw, ClasswiseScratch& sc, BinSums& bins, int64_t K,
                                   int64_t y, double w, bool weighted, double scale, const E* e) {
    const bool shared = cw.edges.size() == 1;
    if (weighted) {
        shared ? classwise_row<V, true, true>(cw, sc, bins, K, y, w, scale, e)
               : classwise_row<V, true, false>(cw, sc, bins, K, y, w, scale, e);
    } else {
        shared ? classwise_row<V, false, true>(cw, sc, bins, K, y, w, scale, e)
               : classwise_row<V, false, false>(cw, sc, bins, K, y, w, scale, e);
    }
}

// A short row's probabilities (or exponentials, returning the scale 1 / sum) into
// sc.row, for the class-wise path; the row has passed its checks.
template <class T>
CALIBKIT_INLINE double short_row_values(const Matrix<T>& s, int64_t i, bool from_logits, double inv_t,
                                        ClasswiseScratch& sc) {
    const int64_t K = s.cols;
    double* e = sc.row.data();
    for (int64_t k = 0; k < K; ++k) e[k] = s(i, k);
    if (!from_logits) return 1.0;
    double best = e[0];
    for (int64_t k = 1; k < K; ++k) best = std::max(best, e[k]);
    double sum = 0.0;
    for (int64_t k = 0; k < K; ++k) {
        e[k] = simd::exp_nonpositive(inv_t * (e[k] - best));
        sum += e[k];
    }
    return 1.0 / sum;
}

template <class T>
struct TopLabelArgs {
    const Matrix<T>& scores;
    const Vector<int64_t>& labels;
    const Weights& weights;
    bool from_logits;
    bool with_nll;
    double nll_eps;
    double inv_t;  // inverse temperature of logits (1: none)
    const BinEdges& edges;
    const ClasswiseSpec& classwise;
    double* conf_out;
    uint8_t* correct_out;
    bool with_brier;  // false: the Brier total is not asked for (NaN), nor the rows' sums of squares
};

template <class T>
CALIBKIT_INLINE void accumulate_row(const TopLabelArgs<T>& a, BinningResult& part, LaneBins& bins, int64_t i,
                                    int64_t y, double w, int64_t bin, const RowSummary& row) {
    const double correct = row.argmax == y ? 1.0 : 0.0;
    if (a.edges.n_bins > 0) bins.add(bin, i, w, row.confidence, correct);
    if (a.conf_out) a.conf_out[i] = row.confidence;
    if (a.correct_out) a.correct_out[i] = static_cast<uint8_t>(correct);
    Totals& t = part.totals;
    t.count += 1;
    t.weight += w;
    t.correct += w * correct;
    t.confidence += w * row.confidence;
    if (a.with_brier) t.brier += w * (row.sum_sq - 2.0 * row.p_label + 1.0);
    t.nll += w * row.nll;
}

// Checks the label and weight of row i; false (and the status set) if either is bad.
template <class T>
CALIBKIT_INLINE bool row_meta(const TopLabelArgs<T>& a, BinningResult& part, int64_t i, int64_t& y, double& w) {
    y = a.labels.raw(i);
    if (y < 0 || y >= a.scores.cols) {
        part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
        return false;
    }
    w = a.weights.at(i);
    return !a.weights.present() || check_weight(w, i, part.status);
}

// Short rows (K < kShortRow) add their totals to kTotalLanes interleaved partial sums, row
// begin + r of a chunk into lane r % kTotalLanes, in vector lanes; the chunk's lanes are folded
// by fold_lanes (a fixed order, the same for every instruction set and the Numba twin).
constexpr int kTotalLanes = 8;

inline double fold_lanes(const double* l) {
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// Up to this many inner edges, a short row's bin is found by counting the edges strictly below
// its confidence in vector lanes (which is the bin's definition, so the same bin as BinEdges::bin).
constexpr int64_t kMaxVectorEdges = 32;

template <class T, class V, bool Classwise>
CALIBKIT_INLINE void top_label_short_rows(const TopLabelArgs<T>& a, BinningResult& part, LaneBins& bins,
                                          ClasswiseScratch& scratch, int64_t begin, int64_t end) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    constexpr int W = V::width, G = kShortGroups, B = W * G, H = kTotalLanes / B, Q = H * G;
    static_assert(kTotalLanes % B == 0, "a round of the total lanes is a whole number of batches");
    const int64_t K = a.scores.cols;
    const bool binned = a.edges.n_bins > 0;
    const bool weighted = a.weights.present();
    const int64_t n_inner = binned ? a.edges.n_bins - 1 : 0;
    const bool vector_bins = n_inner <= kMaxVectorEdges;  // top-label edges: equal-width, in bounds[1..M-1]
    const double* const inner = a.edges.bounds.data() + 1;
    // Float probability rows count in float lanes: for a float c, double(c) > e exactly when
    // c >= the least float above e.
    constexpr bool float_rows = !std::is_same<T, double>::value;
    const bool float_bins = float_rows && !a.from_logits && binned && vector_bins;
    float above[kMaxVectorEdges];
    for (int64_t e = 0; float_bins && e < n_inner; ++e) {
        above[e] = static_cast<float>(inner[e]);
        if (!(static_cast<double>(above[e]) > inner[e]))
            above[e] = std::nextafter(above[e], std::numeric_limits<float>::infinity());
    }
    // The edges broadcast to lanes once per chunk (a splat in the batch loop costs one insert per lane). A
    // float c (not NaN) is >= above[e] > 0 exactly when its bits as an int32 exceed those of above[e] less 1
    // (a negative float's bits are negative): one integer compare with an operand in memory.
    typedef typename V::fw F;
    typedef typename V::iw IW;
    IW above_bits_v[kMaxVectorEdges];
    D inner_v[kMaxVectorEdges];
    for (int64_t e = 0; binned && vector_bins && e < n_inner; ++e) {
        int32_t bits = 0;
        if (float_bins) std::memcpy(&bits, &above[e], sizeof bits);
        above_bits_v[e] = IW{} + (bits - 1);
        inner_v[e] = splat<D>(inner[e]);
    }
    // Unweighted rows: a lane bin's count and correct count share one integer (low and high 32
    // bits); its weight and target sums are those counts (sums of ones: exact, the same bits).
    const bool packed = !weighted && end - begin < (int64_t(1) << 31);
    // The usual batch (every row good, packed bins counted by vector lanes, no per-row outputs): the
    // rows' bin updates in a loop without the per-row branches (the same adds in the same order).
    const bool plain_rows = !Classwise && packed && binned && vector_bins && !a.conf_out && !a.correct_out;
    const uint64_t n_classes = static_cast<uint64_t>(K);
    const D zero = splat<D>(0.0), one = splat<D>(1.0), two = splat<D>(2.0);
    D s_weight[Q], s_correct[Q], s_conf[Q], s_brier[Q], s_nll[Q];
    I s_count[Q];
    for (int q = 0; q < Q; ++q) {
        s_weight[q] = s_correct[q] = s_conf[q] = s_brier[q] = s_nll[q] = zero;
        s_count[q] = (I)zero;
    }
    // The lane bins through local pointers: the stores to conf_out / correct_out could otherwise
    // alias them and force a reload per row.
    int64_t* const lane_count = bins.count.data();
    double* const lane_weight = bins.weight.data();
    double* const lane_score = bins.sum_score.data();
    double* const lane_target = bins.sum_target.data();
    RowsSummary<V> batch{};  // fconfidence is filled by float probability rows only
    // The bins of 2 W float confidences (float_bins; their bits as int32 lanes), by counting the edges below
    // them; two counts (integer sums: any order) so the compares do not wait on one another.
    const auto float_bin = [&](const IW c) {
        IW m = IW{}, m1 = IW{};
        int64_t e = 0;
        for (; e + 2 <= n_inner; e += 2) {
            m -= c > above_bits_v[e];
            m1 -= c > above_bits_v[e + 1];
        }
        if (e < n_inner) m -= c > above_bits_v[e];
        return m + m1;
    };
    // The usual round of float probability rows for the ECE (plain_rows, no squares asked, labels contiguous):
    // its kTotalLanes rows in one go without the per-batch arrays of the loop below (row indices, labels for
    // the loads, weights, flags), their labels checked in vector lanes. The same scan, bins and sums, added in
    // the same order, as the loop below makes of a round of good rows (with w = 1: w * x = x), so the same
    // bits. False, with nothing added, when a label or an element of the round is bad: the loop below then
    // takes the round and reports it.
    const bool plain_probs = float_rows && plain_rows && float_bins && !a.with_brier && !a.with_nll &&
                             a.labels.stride == static_cast<int64_t>(sizeof(int64_t));
    const ShortProbBounds bounds;
    int32_t hi_bits_scalar;
    std::memcpy(&hi_bits_scalar, &bounds.hi, sizeof hi_bits_scalar);
    const IW hi_bits = IW{} + hi_bits_scalar;
    IW lane_of[H];  // the lane bins' copy of each row of a round, (row & (kLanes - 1)): the same every round
    for (int h = 0; h < H; ++h)
        for (int j = 0; j < B; ++j)
            lane_of[h][j] = static_cast<int32_t>((begin + h * B + j) & (LaneBins::kLanes - 1));
    const I correct_and_one = (I)zero + ((int64_t(1) << 32) + 1), just_one = (I)zero + 1;
    // The round's sums of ones (each lane's rows, weights and correct rows: exact, so any order) as integers,
    // into the lanes at the end.
    int64_t plain_rounds = 0;
    I hits[Q];
    for (int q = 0; q < Q; ++q) hits[q] = (I)zero;
    const auto plain_round = [&](int64_t i0) {
        if constexpr (!float_rows) {
            (void)i0;
            return false;
        } else {
            I y[Q], bad_label = (I)zero;
            for (int q = 0; q < Q; ++q) {
                std::memcpy(&y[q], a.labels.data + (i0 + q * W) * static_cast<int64_t>(sizeof(int64_t)), sizeof(I));
                bad_label |= (y[q] < 0) | (y[q] >= K);
            }
            if (any_lane(bad_label)) return false;
            IW conf[H], arg[H], bad = IW{};  // conf: the maxima's bits
            for (int h = 0; h < H; ++h) {
                const char* base[B];
                const char* const first = reinterpret_cast<const char*>(a.scores.row(i0 + h * B));
                for (int j = 0; j < B; ++j) base[j] = first + j * a.scores.row_stride;
                IW sign;
                scan_short_float_bits<T, V>(a.scores, base, conf[h], arg[h], sign);
                bad |= sign | (conf[h] > hi_bits);
            }
            if (any_lane(bad)) return false;
            for (int h = 0; h < H; ++h) {
                int64_t q_of[B], add_of[B];  // the rows' lane bins; 1 + (correct << 32)
                double conf_of[B];
                const IW q32 = float_bin(conf[h]) * LaneBins::kLanes + lane_of[h];
                typedef typename V::ih IH;
                IH half[G];
                std::memcpy(half, &q32, sizeof half);
                for (int g = 0; g < G; ++g) {
                    const I qg = convert<I>(half[g]);
                    std::memcpy(q_of + g * W, &qg, sizeof qg);
                }
                D c[G];
                widen<V>((F)conf[h], c[0], c[1]);
                std::memcpy(half, &arg[h], sizeof half);
                for (int g = 0; g < G; ++g) {
                    const I hit = convert<I>(half[g]) == y[h * G + g];
                    hits[h * G + g] -= hit;
                    s_conf[h * G + g] += c[g];
                    const I add = select_int(hit, correct_and_one, just_one);
                    std::memcpy(add_of + g * W, &add, sizeof add);
                    std::memcpy(conf_of + g * W, &c[g], sizeof c[g]);
                }
                for (int j = 0; j < B; ++j) {
                    lane_count[q_of[j]] += add_of[j];
                    lane_score[q_of[j]] += conf_of[j];
                }
            }
            plain_rounds += 1;
            return true;
        }
    };
    for (int64_t i0 = begin; i0 < end; i0 += kTotalLanes) {
        if (plain_probs && i0 + kTotalLanes <= end && plain_round(i0)) continue;
        for (int h = 0; h < H; ++h) {
            const int64_t b0 = i0 + h * B;
            if (b0 >= end) break;
            int64_t rows[B], ys[B], label_for_load[B], ok[B];
            double ws[B];
            // The batch's labels and weights read and checked without branches; when all are good
            // (the usual case) the batch skips row_meta's per-row checks and status branches.
            bool clean = true;
            if (b0 + B <= end) {  // a full batch (the usual case: no padding rows)
                for (int j = 0; j < B; ++j) {
                    rows[j] = b0 + j;
                    ok[j] = -1;
                }
            } else {
                for (int j = 0; j < B; ++j) {
                    rows[j] = std::min(b0 + j, end - 1);
                    ok[j] = b0 + j < end ? -1 : 0;
                }
            }
            for (int j = 0; j < B; ++j) {
                label_for_load[j] = ys[j] = a.labels.raw(rows[j]);
                clean &= static_cast<uint64_t>(ys[j]) < n_classes;
            }
            if (weighted) {
                for (int j = 0; j < B; ++j) {
                    ws[j] = a.weights.v[rows[j]];
                    clean &= (ws[j] >= 0.0) & (ws[j] <= DBL_MAX);  // false for NaN, inf and negatives
                }
            } else {
                for (int j = 0; j < B; ++j) ws[j] = 1.0;  // Weights::at without weights
            }
            for (int j = 0; j < B && !clean; ++j) {
                const int64_t i = rows[j];
                ys[j] = 0;
                ws[j] = 1.0;
                ok[j] = b0 + j < end && row_meta(a, part, i, ys[j], ws[j]) ? -1 : 0;
                label_for_load[j] = ok[j] ? ys[j] : 0;
            }
            if (a.with_brier || a.with_nll || a.from_logits)
                summarize_short_rows<T, V, true>(a.scores, rows, label_for_load, a.from_logits, a.nll_eps, a.with_nll,
                                                 a.inv_t, batch);
            else
                summarize_short_rows<T, V, false>(a.scores, rows, label_for_load, false, a.nll_eps, false, a.inv_t,
                                                  batch);
            // The totals in vector lanes (rows that are padding or bad add zeros), and the bins by
            // counting edges.
            int64_t use[B], hit_of[B], bin_of[B];
            double conf_of[B];
            if constexpr (float_rows) {
                if (float_bins) {
                    const IW m = float_bin((IW)batch.fconfidence);
                    for (int j = 0; j < B; ++j) bin_of[j] = m[j];
                }
            }
            for (int g = 0; g < G; ++g) {
                const int q = h * G + g;
                D w;
                I y, okv;
                std::memcpy(&w, ws + g * W, sizeof w);
                std::memcpy(&y, ys + g * W, sizeof y);
                std::memcpy(&okv, ok + g * W, sizeof okv);
                const I valid = okv & ~batch.bad[g];
                const I hit = batch.argmax[g] == y;
                const D conf = batch.confidence[g];
                s_count[q] -= valid;
                s_weight[q] += select(valid, w, zero);
                s_correct[q] += select(valid & hit, w, zero);  // w * correct
                s_conf[q] += select(valid, w * conf, zero);
                if (a.with_brier)
                    s_brier[q] += select(valid, w * ((batch.sum_sq[g] - two * batch.p_label[g]) + one), zero);
                s_nll[q] += select(valid, w * batch.nll[g], zero);
                if (binned && vector_bins && !float_bins) {
                    I m = (I)zero;
                    for (int64_t e = 0; e < n_inner; ++e) m -= inner_v[e] < conf;
                    std::memcpy(bin_of + g * W, &m, sizeof m);
                }
                std::memcpy(use + g * W, &valid, sizeof valid);
                std::memcpy(hit_of + g * W, &hit, sizeof hit);
                std::memcpy(conf_of + g * W, &conf, sizeof conf);
            }
            if (plain_rows) {
                int64_t all = -1;
                for (int j = 0; j < B; ++j) all &= use[j];
                if (all) {
                    for (int j = 0; j < B; ++j) {
                        const int64_t q = bin_of[j] * LaneBins::kLanes + (rows[j] & (LaneBins::kLanes - 1));
                        lane_count[q] += 1 + ((hit_of[j] & 1) << 32);
                        lane_score[q] += conf_of[j];
                    }
                    continue;
                }
            }
            for (int j = 0; j < B; ++j) {
                if (!use[j]) {
                    if (ok[j]) {
                        const simd::RowReader<T, false> r{reinterpret_cast<const char*>(a.scores.row(rows[j])),
                                                          a.scores.col_stride};
                        report_bad_element(r, rows[j], K, a.from_logits, part.status);
                    }
                    continue;
                }
                const int64_t i = rows[j];
                const double w = ws[j], conf = conf_of[j];
                const int64_t correct = hit_of[j] & 1;
                if (binned) {
                    const int64_t bin = vector_bins ? bin_of[j] : a.edges.bin(conf);
                    const int64_t q = bin * LaneBins::kLanes + (i & (LaneBins::kLanes - 1));
                    if (packed) {
                        lane_count[q] += 1 + (correct << 32);
                        lane_score[q] += conf;
                    } else {
                        lane_count[q] += 1;
                        lane_weight[q] += w;
                        lane_score[q] += w * conf;
                        lane_target[q] += w * static_cast<double>(correct);
                    }
                }
                if (a.conf_out) a.conf_out[i] = conf;
                if (a.correct_out) a.correct_out[i] = static_cast<uint8_t>(correct);
                if constexpr (Classwise) {
                    const double scale = short_row_values(a.scores, i, a.from_logits, a.inv_t, scratch);
                    classwise_row<V>(a.classwise, scratch, part.classwise, K, ys[j], w, a.weights.present(), scale,
                                     scratch.row.data());
                }
            }
        }
    }
    if (packed)
        for (size_t q = 0; q < bins.count.size(); ++q) {
            const int64_t c = lane_count[q];
            lane_count[q] = c & 0xffffffff;
            lane_weight[q] = static_cast<double>(c & 0xffffffff);
            lane_target[q] = static_cast<double>(c >> 32);
        }
    double l[6][kTotalLanes];
    int64_t n[kTotalLanes];
    for (int q = 0; q < Q; ++q) {
        s_count[q] += plain_rounds;
        s_weight[q] += static_cast<double>(plain_rounds);
        for (int j = 0; j < W; ++j) s_correct[q][j] += static_cast<double>(hits[q][j]);
        std::memcpy(n + q * W, &s_count[q], sizeof(I));
        std::memcpy(l[1] + q * W, &s_weight[q], sizeof(D));
        std::memcpy(l[2] + q * W, &s_correct[q], sizeof(D));
        std::memcpy(l[3] + q * W, &s_conf[q], sizeof(D));
        std::memcpy(l[4] + q * W, &s_brier[q], sizeof(D));
        std::memcpy(l[5] + q * W, &s_nll[q], sizeof(D));
    }
    Totals& t = part.totals;
    for (int j = 0; j < kTotalLanes; ++j) t.count += n[j];
    t.weight += fold_lanes(l[1]);
    t.correct += fold_lanes(l[2]);
    t.confidence += fold_lanes(l[3]);
    t.brier += fold_lanes(l[4]);
    t.nll += fold_lanes(l[5]);
}

// Dense float32 / float16 logit rows (a segmentation map read as rows: row_stride == sizeof(T), the
// classes H W elements apart): kDenseRows = 8 consecutive rows at a time, SIMD ACROSS ROWS (lane r is row
// i0 + r; one contiguous load of eight rows' values per class). Each lane does its row's arithmetic of
// summarize_logit_row_f in the same order: the maximum and finiteness check (exact in any order), the first
// index of the maximum, e_k = exp_f32(b (z_k - max)) added to that row's float partial of lane k mod 8 (the
// last octet's pad lanes add nothing: + 0 leaves a sum of non-negative terms unchanged), the partials
// flushed into double lanes after every kRowFlushOctets-th octet and at the end, and octet_sum's order for
// the totals. So every summary is bit-identical to the generic path on the same rows (and the caller keeps
// the row order of the checks and sums), for any layout and thread count.
constexpr int kDenseRows = 8;

template <class T>
CALIBKIT_INLINE bool dense_float_rows(const Matrix<T>& s) {
    return !std::is_same<T, double>::value && s.row_stride == static_cast<int64_t>(sizeof(T)) &&
           s.col_stride != static_cast<int64_t>(sizeof(T)) && s.cols >= 2;
}

// Rows per dense block: a block's values are copied (as floats) into a K x kDenseBlock buffer in one pass
// over its K class lines, so each cache line of the map is fetched once. (The K lines of one block are
// H W elements apart: a power of two such as 1 MB maps them all to the same cache set, and a second read
// straight from the map would find them evicted.)
constexpr int64_t kDenseBlock = 64;

// The rows [i0, i0 + kDenseBlock) of a dense matrix into buf (K x kDenseBlock floats, class-major), and
// the next block's lines requested.
// m (a multiple of kDenseRows, at most kDenseBlock) rows are read.
template <class T, class V>
CALIBKIT_INLINE void dense_block_copy(const Matrix<T>& s, int64_t i0, int64_t m, bool prefetch_next, float* buf) {
    const int64_t K = s.cols, cs = s.col_stride;
    constexpr int64_t bytes = kDenseBlock * static_cast<int64_t>(sizeof(T));
    const char* base = s.data + i0 * static_cast<int64_t>(sizeof(T));
    for (int64_t k = 0; k < K; ++k) {
        const char* p = base + k * cs;
        if (prefetch_next)
            for (int64_t c = 0; c < bytes; c += 64) CALIBKIT_PREFETCH(p + bytes + c, 0, 3);
        for (int64_t q = 0; q < m; q += kDenseRows) {
            const simd::FOctet<V> o = simd::dense_foctet<T, V>(p + q * static_cast<int64_t>(sizeof(T)));
            std::memcpy(buf + k * kDenseBlock + q, &o.v[0], sizeof o.v);
        }
    }
}

// Summaries of 8 rows whose values are in buf (class k of row r at buf[k * kDenseBlock + r]); bad[r]:
// row r holds NaN / inf (its summary is garbage; the caller reports it). labels[r] is a valid class.
template <class V, bool Unscaled>
CALIBKIT_INLINE void summarize_dense_logit_rows_f(const float* buf, int64_t K, const int64_t* labels,
                                                  bool with_nll, double inv_t, RowSummary* out, bool* bad) {
    using namespace simd;
    typedef typename V::fw F;
    typedef typename V::iw I;
    typedef typename V::d D;
    constexpr int G = FOctet<V>::n, L = 2 * V::width, GD = Octet<V>::n;
    const auto at = [&](int64_t k) {
        FOctet<V> o;
        std::memcpy(&o.v[0], buf + k * kDenseBlock, sizeof o.v);
        return o;
    };
    // Read 1: maxima, first argmax (strict >: the first index holding the maximum), finiteness.
    FOctet<V> mx = at(0), chk;
    I arg[G];
    for (int g = 0; g < G; ++g) {
        chk.v[g] = mx.v[g] - mx.v[g];
        arg[g] = (I)splat_f<F>(0.0f);
    }
    for (int64_t k = 1; k < K; ++k) {
        const FOctet<V> o = at(k);
        const I kk = (I)splat_f<F>(0.0f) + static_cast<int32_t>(k);
        for (int g = 0; g < G; ++g) {
            const I greater = o.v[g] > mx.v[g];
            mx.v[g] = select_f(greater, o.v[g], mx.v[g]);
            arg[g] = select_int(greater, kk, arg[g]);
            chk.v[g] += o.v[g] - o.v[g];
        }
    }
    // Read 2: the exps, four classes at a time in lockstep.
    const float bf = static_cast<float>(inv_t);
    const F b = splat_f<F>(bf);
    F ps[8][G], pq[8][G];
    Octet<V> sum[8], sq[8];
    for (int l = 0; l < 8; ++l) {
        for (int g = 0; g < G; ++g) ps[l][g] = pq[l][g] = splat_f<F>(0.0f);
        for (int g = 0; g < GD; ++g) sum[l].v[g] = sq[l].v[g] = splat<D>(0.0);
    }
    const auto flush = [&] {
        for (int l = 0; l < 8; ++l)
            for (int g = 0; g < G; ++g) {
                D lo, hi;
                widen<V>(ps[l][g], lo, hi);
                sum[l].v[2 * g] += lo;
                sum[l].v[2 * g + 1] += hi;
                widen<V>(pq[l][g], lo, hi);
                sq[l].v[2 * g] += lo;
                sq[l].v[2 * g + 1] += hi;
                ps[l][g] = pq[l][g] = splat_f<F>(0.0f);
            }
    };
    constexpr int U = 4;  // classes per exp batch (a divisor of 8: a batch never straddles an octet)
    const int64_t full = K - K % 8;
    int64_t k = 0;
    for (; k + U <= K; k += U) {
        F e[U * G];
        for (int u = 0; u < U; ++u) {
            const FOctet<V> o = at(k + u);
            for (int g = 0; g < G; ++g) e[u * G + g] = Unscaled ? o.v[g] - mx.v[g] : b * (o.v[g] - mx.v[g]);
        }
        exp_f32_n<V, U * G>(e);
        for (int u = 0; u < U; ++u) {
            const int l = static_cast<int>((k + u) % 8);
            for (int g = 0; g < G; ++g) {
                ps[l][g] += e[u * G + g];
                pq[l][g] += e[u * G + g] * e[u * G + g];
            }
        }
        // after every kRowFlushOctets-th full octet (the tail octet is flushed at the end)
        if ((k + U) % (8 * kRowFlushOctets) == 0 && k + U <= full) flush();
    }
    for (; k < K; ++k) {
        const int l = static_cast<int>(k % 8);
        const FOctet<V> o = at(k);
        F e[G];
        for (int g = 0; g < G; ++g) e[g] = Unscaled ? o.v[g] - mx.v[g] : b * (o.v[g] - mx.v[g]);
        exp_f32_n<V, G>(e);
        for (int g = 0; g < G; ++g) {
            ps[l][g] += e[g];
            pq[l][g] += e[g] * e[g];
        }
    }
    flush();
    // octet_sum of every row: ((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7)).
    double total[kDenseRows], total_sq[kDenseRows];
    float best[kDenseRows];
    int32_t argmax[kDenseRows];
    for (int g = 0; g < GD; ++g) {
        const D t = ((sum[0].v[g] + sum[4].v[g]) + (sum[1].v[g] + sum[5].v[g])) +
                    ((sum[2].v[g] + sum[6].v[g]) + (sum[3].v[g] + sum[7].v[g]));
        const D q = ((sq[0].v[g] + sq[4].v[g]) + (sq[1].v[g] + sq[5].v[g])) +
                    ((sq[2].v[g] + sq[6].v[g]) + (sq[3].v[g] + sq[7].v[g]));
        std::memcpy(total + g * V::width, &t, sizeof t);
        std::memcpy(total_sq + g * V::width, &q, sizeof q);
    }
    for (int g = 0; g < G; ++g) {
        const I c = chk.v[g] != chk.v[g];  // NaN: some element was NaN or inf
        for (int j = 0; j < L; ++j) {
            best[g * L + j] = mx.v[g][j];
            argmax[g * L + j] = arg[g][j];
            bad[g * L + j] = c[j] != 0;
        }
    }
    for (int r = 0; r < kDenseRows; ++r) {
        const float zl = buf[labels[r] * kDenseBlock + r];
        out[r].argmax = argmax[r];
        out[r].confidence = 1.0 / total[r];
        out[r].p_label = static_cast<double>(exp_f32(bf * (zl - best[r]))) / total[r];
        out[r].sum_sq = total_sq[r] / (total[r] * total[r]);
        out[r].nll = with_nll ? std::log(total[r]) - inv_t * (static_cast<double>(zl) - static_cast<double>(best[r]))
                              : 0.0;
    }
}

// The rows [begin, end) of a dense matrix by blocks; returns the first row left for the generic loop (end,
// except for fewer than kDenseRows rows at the end of the matrix).
template <class T, class V>
CALIBKIT_INLINE int64_t top_label_dense_rows(const TopLabelArgs<T>& a, BinningResult& part, LaneBins& bins,
                                             int64_t begin, int64_t end) {
    const int64_t K = a.scores.cols;
    const bool binned = a.edges.n_bins > 0;
    std::vector<float> buffer(static_cast<size_t>(K * kDenseBlock));
    float* const buf = buffer.data();
    RowSummary rows[kDenseRows];
    bool bad[kDenseRows];
    int64_t ys[kDenseRows];
    int64_t b0 = begin;
    while (b0 < end) {
        // n rows counted; m >= n read (whole octets: the rows after `end` that complete the last one are
        // read, not counted, unless they are past the matrix: then the generic loop takes the last rows).
        int64_t n = std::min(kDenseBlock, end - b0);
        int64_t m = (n + kDenseRows - 1) / kDenseRows * kDenseRows;
        if (b0 + m > a.scores.rows) n = m = n / kDenseRows * kDenseRows;
        if (m == 0) break;
        dense_block_copy<T, V>(a.scores, b0, m, b0 + kDenseBlock + m <= end, buf);
        for (int64_t q = 0; q < m; q += kDenseRows) {
            const int64_t i0 = b0 + q;
            const int64_t valid = std::min<int64_t>(kDenseRows, n - q);
            for (int r = 0; r < kDenseRows; ++r) {
                const int64_t y = r < valid ? a.labels.raw(i0 + r) : 0;
                ys[r] = (y >= 0 && y < K) ? y : 0;  // a bad label is reported below, in row order
            }
            if (a.inv_t == 1.0)
                summarize_dense_logit_rows_f<V, true>(buf + q, K, ys, a.with_nll, a.inv_t, rows, bad);
            else
                summarize_dense_logit_rows_f<V, false>(buf + q, K, ys, a.with_nll, a.inv_t, rows, bad);
            // Row by row, in order: the label / weight checks, then the scores' check, as the generic loop.
            for (int r = 0; r < valid; ++r) {
                const int64_t i = i0 + r;
                int64_t y;
                double w;
                if (!row_meta(a, part, i, y, w)) continue;
                if (bad[r]) {
                    const simd::RowReader<T, false> rr{reinterpret_cast<const char*>(a.scores.row(i)),
                                                       a.scores.col_stride};
                    report_bad_element(rr, i, K, true, part.status);
                    continue;
                }
                accumulate_row(a, part, bins, i, y, w, binned ? a.edges.bin(rows[r].confidence) : 0, rows[r]);
            }
        }
        b0 += n;
    }
    return b0;
}

template <class T, class V, bool Classwise>
inline void top_label_rows(const TopLabelArgs<T>& a, BinningResult& part, int64_t begin, int64_t end) {
    const int64_t K = a.scores.cols;
    const bool binned = a.edges.n_bins > 0;
    const bool weighted = a.weights.present();
    constexpr bool single = !std::is_same<T, double>::value;  // float logit rows: summarize_logit_row_f
    RowSummary row;
    LaneBins bins(a.edges.n_bins);
    ClasswiseScratch scratch(Classwise ? K : 0);
    if (K < kShortRow) {
        top_label_short_rows<T, V, Classwise>(a, part, bins, scratch, begin, end);
    } else {
        const simd::TailMask<V> tail(K);
        int64_t first = begin;
        if constexpr (single && !Classwise) {
            if (a.from_logits && dense_float_rows(a.scores))
                first = top_label_dense_rows<T, V>(a, part, bins, begin, end);
        }
        for (int64_t i = first; i < end; ++i) {
            int64_t y;
            double w;
            if (!row_meta(a, part, i, y, w)) continue;
            if (!summarize_row<T, V, Classwise>(a.scores, tail, i, y, a.from_logits, a.nll_eps, a.with_nll, a.inv_t,
                                                row, part.status, scratch.row.data(), scratch.frow.data(),
                                                a.with_brier))
                continue;
            accumulate_row(a, part, bins, i, y, w, binned ? a.edges.bin(row.confidence) : 0, row);
            if constexpr (Classwise) {  // confidence = 1 / sum of the row's exponentials
                if (single && a.from_logits)
                    classwise_row<V>(a.classwise, scratch, part.classwise, K, y, w, weighted, row.confidence,
                                     scratch.frow.data());
                else
                    classwise_row<V>(a.classwise, scratch, part.classwise, K, y, w, weighted,
                                     a.from_logits ? row.confidence : 1.0, scratch.row.data());
            }
        }
    }
    bins.fold_into(part.bins);
    if constexpr (Classwise) scratch.fold_into(part.classwise, a.classwise.n_bins, weighted);
}

template <class T, class V>
inline void top_label_chunk(const TopLabelArgs<T>& a, BinningResult& part, int64_t begin, int64_t end) {
    if (a.classwise.on()) return top_label_rows<T, V, true>(a, part, begin, end);
    top_label_rows<T, V, false>(a, part, begin, end);
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void top_label_chunk_avx2(const TopLabelArgs<T>& a, BinningResult& part, int64_t begin,
                                              int64_t end) {
    top_label_chunk<T, simd::Vec<4>>(a, part, begin, end);
}
#endif

// Top-label statistics of an N x K matrix of probabilities or logits, in one
// pass: per-bin (count, weight, sum w*confidence, sum w*correct) when n_bins > 0,
// and the totals (accuracy, confidence, Brier, and the NLL when with_nll). When
// conf_out / correct_out are given, each row's confidence and correctness are
// written there too (used to find equal-mass edges). Logits are divided by the
// temperature 1 / inv_t first. With classwise.on(), the class-wise bins come from
// the same pass (result.classwise). with_brier = false: the Brier total is NaN and the
// rows' sums of squares are not computed (every other sum is the same, bit for bit).
template <class T>
BinningResult top_label_stats(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                              bool from_logits, int64_t n_bins, double nll_eps, bool with_nll, double* conf_out,
                              uint8_t* correct_out, double inv_t = 1.0,
                              const ClasswiseSpec& classwise = ClasswiseSpec(), bool with_brier = true) {
    const int64_t N = scores.rows, K = scores.cols;
    const BinEdges edges = BinEdges::equal_width(n_bins);
    const TopLabelArgs<T> args{scores, labels,    weights,  from_logits, with_nll,   nll_eps,
                               inv_t,  edges,     classwise, conf_out,   correct_out, with_brier};
    const bool avx2 = simd::use_avx2();
    const int64_t n_classwise = classwise.on() ? K * classwise.n_bins : 0;
    // Class-wise partials are K x M: keep those chunks large enough that merging them is cheap.
    const int64_t chunk = classwise.on() ? rows_per_chunk(K, 64 * classwise.n_bins) : rows_per_chunk(K);
    BinningResult total(n_bins, n_classwise);
    chunked_reduce(
        N, chunk, K, 4 * (n_bins + n_classwise), total, [&] { return BinningResult(n_bins, n_classwise); },
        [&](BinningResult& part, int64_t begin, int64_t end) {
#if CALIBKIT_HAVE_AVX2_CLONES
            if (avx2) return top_label_chunk_avx2<T>(args, part, begin, end);
#endif
            (void)avx2;
            top_label_chunk<T, simd::Vec<2>>(args, part, begin, end);
        },
        [](BinningResult& acc, const BinningResult& part) { acc.merge(part); });
    if (!with_nll) total.totals.nll = std::numeric_limits<double>::quiet_NaN();
    if (!with_brier) total.totals.brier = std::numeric_limits<double>::quiet_NaN();
    return total;
}

// Checks binary row i (label 0 or 1, weight finite and >= 0 when present, probability in [0, 1] with the usual
// tolerance): true with (p, y, w) read, or false with the first fault of the row in `st`. The one row check
// of every binary kernel (binary_stats, smooth_grid_binary, stream_accumulate).
template <class T, class L>
CALIBKIT_INLINE bool check_binary_row(const Vector<T>& probs, const Vector<L>& targets, const Weights& weights,
                                      int64_t i, double& p, double& y, double& w, Status& st) {
    const int64_t t = static_cast<int64_t>(targets.raw(i));
    if (t != 0 && t != 1) {
        st.set(kLabelOutOfRange, i, -1, static_cast<double>(t));
        return false;
    }
    w = weights.at(i);
    if (weights.present() && !check_weight(w, i, st)) return false;
    p = probs[i];
    if (!valid_probability(p)) {
        st.set(is_finite(p) ? kProbabilityOutOfRange : kScoreNotFinite, i, -1, p);
        return false;
    }
    y = static_cast<double>(t);
    return true;
}

// The row-by-row binary loop with every check (a bad row is reported in `part.status` and left
// out). The fast path below runs it only on a chunk that holds a bad element, to name it.
template <class T, class L>
inline void binary_rows_checked(const Vector<T>& probs, const Vector<L>& targets, const Weights& weights,
                                const BinEdges& edges, double nll_eps, bool with_nll, BinningResult& part,
                                int64_t begin, int64_t end) {
    const int64_t n_bins = edges.n_bins;
    for (int64_t i = begin; i < end; ++i) {
        double p, target, w;
        if (!check_binary_row(probs, targets, weights, i, p, target, w, part.status)) continue;
        if (n_bins > 0) part.bins.add(edges.bin(p), w, p, target);
        Totals& t = part.totals;
        t.count += 1;
        t.weight += w;
        t.correct += w * target;
        t.confidence += w * p;
        t.brier += w * (p - target) * (p - target);
        if (with_nll) {
            const double pc = std::min(std::max(p, nll_eps), 1.0 - nll_eps);
            t.nll -= w * (target == 1.0 ? std::log(pc) : std::log1p(-pc));
        }
    }
}

// The binary loop of a chunk without a branch per row: the checks of every row are or-ed into one
// flag (false: the chunk holds a bad element, and its sums are to be thrown away), a bad value is
// replaced by 0 before it is used as an index. Totals are added in row order.
// Weighted: the per-bin sums are added in row order, as the checked loop adds them (bit for bit).
// Unweighted: row begin + r goes to lane r % 4 of `lanes` (LaneBins' layout: a packed count and
// count of positives, and Σ p, per bin and lane), so that consecutive rows never update the same
// memory; the lanes are folded in lane order at the end. A bin's weight is its count and its Σ y
// its count of positives (sums of 1.0 and of 0/1 are exact below 2**53). Lanes are used up to
// kBinaryLaneBins bins (beyond, clearing and folding them per chunk would cost more than they save).
constexpr int64_t kBinaryLaneBins = 4096;
constexpr int64_t kBinaryAhead = 256;  // rows prefetched ahead (scores and labels)

struct BinaryLanes {
    // Per bin and lane, count + 2**32 * positives: one add per row for both (a chunk has far fewer
    // than 2**32 rows, so the low half never carries into the high half). The packing of
    // top_label_short_rows' lane bins (count + 2**32 * correct), in its own smaller layout.
    std::vector<int64_t> counts;
    std::vector<double> sums;  // Σ p per bin and lane
    explicit BinaryLanes(int64_t n_bins)
        : counts(static_cast<size_t>(LaneBins::kLanes * n_bins), 0),
          sums(static_cast<size_t>(LaneBins::kLanes * n_bins), 0.0) {}
};
static_assert(kChunkElements < (int64_t{1} << 31), "BinaryLanes packs a chunk's counts into 32 bits");

template <class T, class L, bool Weighted, bool Lanes, bool WithNll>
inline bool binary_rows_fast(const Vector<T>& probs, const Vector<L>& targets, const Weights& weights,
                             const BinEdges& edges, double nll_eps, BinningResult& part, BinaryLanes& lanes,
                             int64_t begin, int64_t end) {
    constexpr int64_t kL = LaneBins::kLanes;
    const int64_t n_bins = edges.n_bins;
    const bool binned = n_bins > 0;
    const bool uniform = edges.uniform && n_bins > 1;
    const double scale = edges.scale, last = edges.last;
    const double* const e = edges.bounds.data();
    int64_t* const packed = lanes.counts.data();
    double* const psum = lanes.sums.data();
    int64_t* const count = part.bins.count.data();
    double* const wsum = part.bins.weight.data();
    double* const sconf = part.bins.sum_score.data();
    double* const starget = part.bins.sum_target.data();
    // The inputs walked with local pointers and strides: read through the structs, every store to the
    // int64 counts could alias a stride, and the compiler would reload them per row.
    const int64_t ps = probs.stride, ys = targets.stride, ws = weights.v.stride;
    const char* pp = probs.data + begin * ps;
    const char* yp = targets.data + begin * ys;
    const char* wp = Weighted ? weights.v.data + begin * ws : nullptr;
    double conf = 0.0, brier = 0.0, nll = 0.0, wtot = 0.0, correct = 0.0;
    int64_t pos = 0;
    bool bad = false;
    L labels_or = 0;  // every label or-ed: all are 0 or 1 iff no other bit is set
    // One row; `lane` is (i - begin) % 4, a constant in the unrolled loop below. `Uniform` is a
    // constant of each copy of the loop (no test per row).
    const auto row = [&](const int64_t lane, auto uniform_tag) {
        constexpr bool Uniform = decltype(uniform_tag)::value;
        L yr;
        std::memcpy(&yr, yp, sizeof(L));
        const double raw_p = load(reinterpret_cast<const T*>(pp));
        pp += ps;
        yp += ys;
        labels_or |= yr;
        const bool ok = valid_probability(raw_p);
        bad |= !ok;
        const double p = ok ? raw_p : 0.0;  // a NaN must not reach the bin index
        const int64_t y = static_cast<int64_t>(yr) & 1;
        const double target = static_cast<double>(y);
        double w = 1.0;
        if constexpr (Weighted) {
            std::memcpy(&w, wp, sizeof(double));
            wp += ws;
            bad |= !(w >= 0.0) | !(w - w == 0.0);  // negative, NaN or infinite
        }
        int64_t b = 0;
        if constexpr (Uniform) {
            // BinEdges::bin, with the clamp written so that it also holds for any p here.
            b = static_cast<int64_t>(std::min(std::max(p * scale, 0.0), last));
            b -= static_cast<int64_t>(!(e[b] < p));
            b += static_cast<int64_t>(e[b + 1] < p);
        } else {
            if (n_bins > 1) b = edges.bin(p);
        }
        if (binned) {
            if constexpr (!Lanes) {
                count[b] += 1;
                wsum[b] += w;
                sconf[b] += w * p;
                starget[b] += w * target;
            } else {
                const int64_t j = b * kL + lane;
                packed[j] += 1 + (y << 32);
                psum[j] += p;
            }
        }
        conf += w * p;
        brier += w * (p - target) * (p - target);
        if constexpr (Weighted) {
            wtot += w;
            correct += w * target;
        } else {
            pos += y;
        }
        if constexpr (WithNll) {
            const double pc = std::min(std::max(p, nll_eps), 1.0 - nll_eps);
            nll -= w * (y == 1 ? std::log(pc) : std::log1p(-pc));
        }
    };
    const auto rows = [&](auto uniform_tag) {
        int64_t i = begin;
        for (; i + kL <= end; i += kL) {
            // Rows kBinaryAhead ahead into cache (possibly past the end: a prefetch never faults; the address
            // is formed as an integer, not as a pointer out of the array): the two streams are read at a few
            // bytes a cycle, and without the hint the loop stalls on their loads.
            CALIBKIT_PREFETCH(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(pp) + kBinaryAhead * ps), 0, 0);
            CALIBKIT_PREFETCH(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(yp) + kBinaryAhead * ys), 0, 0);
            row(0, uniform_tag);
            row(1, uniform_tag);
            row(2, uniform_tag);
            row(3, uniform_tag);
        }
        for (int64_t lane = 0; i < end; ++i, ++lane) row(lane, uniform_tag);
    };
    if (uniform)
        rows(std::true_type{});
    else
        rows(std::false_type{});
    bad |= (labels_or & ~L{1}) != 0;
    if (bad) return false;
    if constexpr (Lanes) {
        for (int64_t m = 0; binned && m < n_bins; ++m) {
            const int64_t* c = packed + m * kL;
            const double* s = psum + m * kL;
            const int64_t both = ((c[0] + c[1]) + c[2]) + c[3];
            count[m] = both & 0xffffffff;
            wsum[m] = static_cast<double>(count[m]);
            starget[m] = static_cast<double>(both >> 32);
            sconf[m] = ((s[0] + s[1]) + s[2]) + s[3];
        }
    }
    if constexpr (!Weighted) {
        wtot = static_cast<double>(end - begin);
        correct = static_cast<double>(pos);
    }
    Totals& t = part.totals;
    t.count = end - begin;
    t.weight = wtot;
    t.correct = correct;
    t.confidence = conf;
    t.brier = brier;
    t.nll = nll;
    return true;
}

template <class T, class L, bool Weighted, bool Lanes, bool WithNll>
inline void binary_chunk(const Vector<T>& probs, const Vector<L>& targets, const Weights& weights,
                         const BinEdges& edges, double nll_eps, BinningResult& part, int64_t begin, int64_t end) {
    BinaryLanes lanes(Lanes ? edges.n_bins : 0);
    if (binary_rows_fast<T, L, Weighted, Lanes, WithNll>(probs, targets, weights, edges, nll_eps, part, lanes, begin, end))
        return;
    part.reset();
    binary_rows_checked<T, L>(probs, targets, weights, edges, nll_eps, WithNll, part, begin, end);
}

// Binary / one-score-per-row statistics: score p in [0, 1] against a 0/1
// target, binned with the given edges (equal-width when edges is null). Used
// for positive-class calibration of (N,) scores, and for equal-mass binning of
// precomputed top-label confidences. Totals: Brier (p - y)^2 and, when with_nll,
// the binary log-loss with p clipped to [nll_eps, 1 - nll_eps] (NaN otherwise).
// Labels of any integer type are read as they are.
template <class T, class L>
BinningResult binary_stats(const Vector<T>& probs, const Vector<L>& targets, const Weights& weights,
                           int64_t n_bins, const double* edge_values, double nll_eps, bool with_nll = true) {
    const int64_t N = probs.size;
    const BinEdges edges =
        edge_values ? BinEdges::explicit_edges(edge_values, n_bins) : BinEdges::equal_width(n_bins);
    BinningResult total(n_bins);
    const bool weighted = weights.present();
    const bool lanes = n_bins <= kBinaryLaneBins;
    const struct {
        const Vector<T>& p;
        const Vector<L>& y;
        const Weights& w;
    } args{probs, targets, weights};
    chunked_reduce(
        N, kChunkElements, 1, 4 * n_bins, total, [&] { return BinningResult(n_bins); },
        [&](BinningResult& part, int64_t begin, int64_t end) {
            const auto& a = args;
            if (weighted) {
                if (with_nll) return binary_chunk<T, L, true, false, true>(a.p, a.y, a.w, edges, nll_eps, part, begin, end);
                return binary_chunk<T, L, true, false, false>(a.p, a.y, a.w, edges, nll_eps, part, begin, end);
            }
            if (lanes) {
                if (with_nll) return binary_chunk<T, L, false, true, true>(a.p, a.y, a.w, edges, nll_eps, part, begin, end);
                return binary_chunk<T, L, false, true, false>(a.p, a.y, a.w, edges, nll_eps, part, begin, end);
            }
            if (with_nll) return binary_chunk<T, L, false, false, true>(a.p, a.y, a.w, edges, nll_eps, part, begin, end);
            binary_chunk<T, L, false, false, false>(a.p, a.y, a.w, edges, nll_eps, part, begin, end);
        },
        [](BinningResult& acc, const BinningResult& part) { acc.merge(part); });
    if (!with_nll) total.totals.nll = std::numeric_limits<double>::quiet_NaN();
    return total;
}

}  // namespace calibkit
