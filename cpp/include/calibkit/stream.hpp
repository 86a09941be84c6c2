// Streaming calibration state: one pass over per-row (confidence, target,
// weight) adds into caller-owned state arrays
//   bins  [4 x M]: count, weight, sum w*confidence, sum w*target per equal-width bin
//   fine  [5 x R]: the same per fine bucket (FineGrid), and sum w*|target - confidence|:
//                  equal-mass edges and their error bound later
//   boot  [B x 3 x M]: Poisson(1)-bootstrap replicates of weight, sum w*c, sum w*t
//   squares [2 x M] (optional, may be null): sum w^2 and sum w^2 * c * (1 - c) per equal-width bin: Kish's
//                  effective count of a weighted bin (debiased error) and the variance behind the sigma of
//                  the cumulative calibration error
// The bootstrap multiplicity of a row is drawn from a counter-based generator
// keyed by (seed, the row's position in the stream, replicate), so the state
// does not depend on how the stream was split into batches.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "binning.hpp"
#include "common.hpp"
#include "parallel.hpp"
#include "smooth.hpp"

namespace calibkit {

// SplitMix64 finaliser (Steele, Lea & Flood 2014): a strong 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Poisson(1) by inversion of its CDF at a uniform u in [0, 1).
inline int poisson1(double u) {
    // P(X <= k) for k = 0..14, correctly rounded.
    static const double cdf[] = {0.36787944117144233, 0.7357588823428847, 0.9196986029286058, 0.9810118431238462,
                                 0.9963401531726563,  0.9994058151824183, 0.999916758850712,  0.9999897508033253,
                                 0.999998874797402,   0.9999998885745217, 0.9999999899522336, 0.9999999991683892,
                                 0.9999999999364022,  0.9999999999954802, 0.9999999999997};
    int k = 0;
    while (k < 15 && u >= cdf[k]) ++k;
    return k;
}

// Multiplicities of one row in replicates 0..B-1: replicates 2j and 2j+1 take the
// high and low 32 bits of mix64(row_key + (j + 1) * golden), where row_key =
// mix64(seed ^ mix64(position)): a pure function of (seed, position, replicate).
struct RowDraws {
    uint64_t key;
    RowDraws(uint64_t seed, uint64_t position) : key(mix64(seed ^ mix64(position))) {}
    uint64_t word(int64_t pair) const { return mix64(key + static_cast<uint64_t>(pair + 1) * 0x9e3779b97f4a7c15ULL); }
};

// The fine histogram behind equal-mass bins: buckets of the distance d = min(c, 1 - c)
// on a log scale, read straight from its floating-point representation (as HDR
// histograms do): 2^bits buckets per power of two of d, for d from 2^-(levels+1)
// to 1/2, on each side of c = 1/2. Distances below 2^-(levels+1) share the end
// bucket of their side. Bucket edges are fixed, bucket numbers increase with c.
struct FineGrid {
    int64_t bits;    // mantissa bits per octave
    int64_t levels;  // octaves of d per side

    int64_t side() const { return levels << bits; }
    int64_t size() const { return 2 * side(); }

    // Rank of d in (0, 1/2] on one side, increasing with d.
    int64_t rank(double d) const {
        uint64_t u;
        std::memcpy(&u, &d, sizeof u);
        const int64_t exponent = static_cast<int64_t>((u >> 52) & 0x7ff) - 1023;  // d in [2^e, 2^(e+1))
        const int64_t level = -exponent - 2;                                      // 0 for d in [1/4, 1/2)
        if (level < 0) return side() - 1;                                         // d == 1/2
        if (level >= levels) return 0;
        const int64_t mantissa = static_cast<int64_t>((u >> (52 - bits)) & ((uint64_t{1} << bits) - 1));
        return ((levels - 1 - level) << bits) + mantissa;
    }
    int64_t bin(double c) const {
        if (!(c > 0.0)) return 0;
        if (!(c < 1.0)) return size() - 1;
        if (c <= 0.5) return rank(c);
        return size() - 1 - rank(1.0 - c);  // 1 - c is exact for c >= 1/2
    }
    // bin(c) for a checked confidence (in [-1e-6, 1 + 1e-6], not NaN), without branches: whether c is above
    // 1/2 is a coin flip for top-label confidences of many models, and a mispredicted branch costs more than
    // the selects. The same bucket as bin(c): d <= 0 (c <= 0, or c >= 1 on the upper side: the tolerance of
    // a probability) is taken as +0 (exponent field 0, below every level: the first bucket, or the last one
    // on the upper side), d = 1/2 is the top rank of the lower side.
    int64_t bin_checked(double c) const {
        const bool upper = c > 0.5;
        double d = upper ? 1.0 - c : c;  // 1 - c is exact for c >= 1/2
        d = d > 0.0 ? d : 0.0;           // c outside (0, 1), and -0.0: no sign bit
        uint64_t u;
        std::memcpy(&u, &d, sizeof u);
        const int64_t level = 1023 - 2 - static_cast<int64_t>(u >> 52);  // d >= 0: no sign bit; 0 for [1/4, 1/2)
        const int64_t mantissa = static_cast<int64_t>((u >> (52 - bits)) & ((uint64_t{1} << bits) - 1));
        int64_t r = ((levels - 1 - level) << bits) + mantissa;
        r = level >= levels ? 0 : r;
        r = level < 0 ? side() - 1 : r;
        return upper ? size() - 1 - r : r;
    }
};

// One chunk's sums. The fine state (5 x R doubles, larger than L2) is kept sparse: the
// buckets a chunk touches are listed, and only those are merged and cleared, so a
// partial is allocated once per call and reused (chunked_reduce calls reset()) instead of
// zeroing or allocating the whole fine state for every chunk. Skipping the untouched
// buckets in merge() adds nothing but +0.0 to sums that start at +0.0: the same bits.
struct StreamPartial {
    std::vector<double> bins, fine, boot, squares;
    std::vector<int64_t> touched;  // fine buckets with a row, in first-touch order
    Status status;
    StreamPartial(int64_t m, int64_t r, int64_t b, bool with_squares)
        : bins(4 * m, 0.0), fine(5 * r, 0.0), boot(3 * b * m, 0.0), squares(with_squares ? 2 * m : 0, 0.0) {}
    double* squares_data() { return squares.empty() ? nullptr : squares.data(); }
    int64_t side() const { return static_cast<int64_t>(fine.size() / 5); }
    void reset() {
        const int64_t R = side();
        std::fill(bins.begin(), bins.end(), 0.0);
        std::fill(boot.begin(), boot.end(), 0.0);
        std::fill(squares.begin(), squares.end(), 0.0);
        for (const int64_t f : touched)
            for (int64_t q = 0; q < 5; ++q) fine[static_cast<size_t>(q * R + f)] = 0.0;
        touched.clear();
        status = Status();
    }
    void merge(const StreamPartial& o) {
        const int64_t R = side();
        for (size_t j = 0; j < bins.size(); ++j) bins[j] += o.bins[j];
        for (const int64_t f : o.touched)
            for (int64_t q = 0; q < 5; ++q) fine[static_cast<size_t>(q * R + f)] += o.fine[static_cast<size_t>(q * R + f)];
        for (size_t j = 0; j < boot.size(); ++j) boot[j] += o.boot[j];
        for (size_t j = 0; j < squares.size(); ++j) squares[j] += o.squares[j];
        status.merge(o.status);
    }
};

// The bootstrap replicates of one row (bin b, confidence c, target y, weight w).
inline void stream_boot_row(uint64_t seed, uint64_t position, int64_t n_boot, int64_t M, int64_t b, double c, double y,
                            double w, double* boot) {
    const RowDraws draws(seed, position);
    for (int64_t r = 0; r < n_boot; r += 2) {
        const uint64_t h = draws.word(r / 2);
        for (int64_t s = r; s < r + 2 && s < n_boot; ++s) {
            const uint32_t bits32 = s == r ? static_cast<uint32_t>(h >> 32) : static_cast<uint32_t>(h);
            const int k = poisson1(static_cast<double>(bits32) * 0x1.0p-32);
            if (k == 0) continue;
            const double wk = w * k;
            double* rep = boot + s * 3 * M;
            rep[b] += wk;
            rep[M + b] += wk * c;
            rep[2 * M + b] += wk * y;
        }
    }
}

// One row's sums into the bins and the fine buckets (and squares, when not null), in the order every stream
// path uses; touched (when not null) gets a fine bucket the first time a row lands in it. Unweighted: w is 1
// and w * x is x, w * w is 1 (the same bits), so the instance has no weight multiplications.
template <bool Weighted>
inline void add_stream_row(double* bins, double* fine, double* squares, int64_t M, int64_t R, int64_t b, int64_t f,
                           double c, double y, double w, std::vector<int64_t>* touched) {
    const double d = std::fabs(y - c);
    bins[b] += 1.0;
    bins[M + b] += w;
    bins[2 * M + b] += Weighted ? w * c : c;
    bins[3 * M + b] += Weighted ? w * y : y;
    if (touched && fine[f] == 0.0) touched->push_back(f);
    fine[f] += 1.0;
    fine[R + f] += w;
    fine[2 * R + f] += Weighted ? w * c : c;
    fine[3 * R + f] += Weighted ? w * y : y;
    fine[4 * R + f] += Weighted ? w * d : d;
    if (squares) {
        const double v = c * (1.0 - c);
        const double ww = w * w;
        squares[b] += Weighted ? ww : 1.0;
        squares[M + b] += Weighted ? ww * v : v;
    }
}

// stream_rows for checked rows: a block's confidences, targets, weights, bins and fine buckets are read and
// computed first (branch-free, with the fine buckets' cache lines prefetched: the fine state is larger than
// L1), then added row by row in order: the same adds, in the same order, as the unchecked path. Weighted
// is whether weights are present: without them w = 1, and w * c is c (the same bits), so the unweighted
// instance has no per-row weight branch and no multiplications.
template <bool Weighted, class C, class L>
inline void stream_rows_checked(const Vector<C>& confidence, const Vector<L>& target, const Weights& weights,
                                int64_t begin, int64_t end, uint64_t offset, const BinEdges& edges,
                                const FineGrid& grid, int64_t n_boot, uint64_t seed, double* bins, double* fine,
                                double* boot, double* squares, std::vector<int64_t>* touched) {
    const int64_t M = edges.n_bins, R = grid.size();
    constexpr int64_t kBlock = 32;
    int64_t bin_of[kBlock], fine_of[kBlock];
    double c_of[kBlock], y_of[kBlock], w_of[kBlock];
    for (int64_t i0 = begin; i0 < end; i0 += kBlock) {
        const int64_t n = std::min(kBlock, end - i0);
        for (int64_t j = 0; j < n; ++j) {
            const double c = confidence[i0 + j];
            c_of[j] = c;
            y_of[j] = static_cast<double>(target.raw(i0 + j));
            if constexpr (Weighted) w_of[j] = weights.v[i0 + j];
            bin_of[j] = edges.bin(c);
            fine_of[j] = grid.bin_checked(c);
        }
        for (int64_t j = 0; j < n; ++j)
            for (int64_t q = 0; q < 5; ++q) CALIBKIT_PREFETCH(fine + q * R + fine_of[j], 1, 3);
        for (int64_t j = 0; j < n; ++j) {
            const double c = c_of[j], y = y_of[j];
            const int64_t b = bin_of[j], f = fine_of[j];
            const double w = Weighted ? w_of[j] : 1.0;
            add_stream_row<Weighted>(bins, fine, squares, M, R, b, f, c, y, w, touched);
            if (n_boot > 0) stream_boot_row(seed, offset + static_cast<uint64_t>(i0 + j), n_boot, M, b, c, y, w, boot);
        }
    }
}

// Adds rows [begin, end) (stream positions offset + i) into bins/fine/boot, row by row in order. Checked:
// the rows have passed check_binary_row's checks already (stream_rows_checked); otherwise each row is checked
// and a bad one skipped (its status set).
// touched (when not null) gets each fine bucket the first time a row lands in it.
template <bool Checked, class C, class L>
inline void stream_rows(const Vector<C>& confidence, const Vector<L>& target, const Weights& weights, int64_t begin,
                        int64_t end, uint64_t offset, const BinEdges& edges, const FineGrid& grid, int64_t n_boot,
                        uint64_t seed, double* bins, double* fine, double* boot, double* squares, Status& st,
                        std::vector<int64_t>* touched = nullptr) {
    if constexpr (Checked) {
        if (weights.present())
            stream_rows_checked<true>(confidence, target, weights, begin, end, offset, edges, grid, n_boot, seed, bins,
                                      fine, boot, squares, touched);
        else
            stream_rows_checked<false>(confidence, target, weights, begin, end, offset, edges, grid, n_boot, seed,
                                       bins, fine, boot, squares, touched);
        return;
    }
    const int64_t M = edges.n_bins, R = grid.size();
    for (int64_t i = begin; i < end; ++i) {
        double c, y, w;
        if (!check_binary_row(confidence, target, weights, i, c, y, w, st)) continue;
        const int64_t b = edges.bin(c), f = grid.bin(c);
        add_stream_row<true>(bins, fine, squares, M, R, b, f, c, y, w, touched);
        if (n_boot > 0) stream_boot_row(seed, offset + static_cast<uint64_t>(i), n_boot, M, b, c, y, w, boot);
    }
}

// Adds rows [0, N) (stream positions offset..offset+N-1) into the state arrays.
// Targets must be 0 or 1, confidences in [0, 1] (with the usual tolerance),
// weights finite and >= 0; the first bad row is reported and nothing is added.
// A batch of one chunk is checked first and then added straight into the state
// (no partial sums to allocate: small batches stay cheap); a larger one is
// reduced over fixed chunks in chunk order and the total added to the state.
template <bool Checked, class C, class L>
Status stream_reduce(const Vector<C>& confidence, const Vector<L>& target, const Weights& weights, uint64_t offset,
                     const BinEdges& edges, const FineGrid& grid, int64_t n_boot, uint64_t seed, double* bins,
                     double* fine, double* boot, double* squares);

template <class C, class L>
Status stream_accumulate(const Vector<C>& confidence, const Vector<L>& target, const Weights& weights,
                         uint64_t offset, int64_t n_bins, const FineGrid& grid, int64_t n_boot, uint64_t seed,
                         double* bins, double* fine, double* boot, double* squares = nullptr) {
    const int64_t N = confidence.size, B = n_boot;
    const BinEdges edges = BinEdges::equal_width(n_bins);
    if (N <= kChunkElements) {
        Status st;
        for (int64_t i = 0; i < N && st.code == kOk; ++i) {
            double c, y, w;
            check_binary_row(confidence, target, weights, i, c, y, w, st);
        }
        if (st.code == kOk)
            stream_rows<true>(confidence, target, weights, 0, N, offset, edges, grid, B, seed, bins, fine, boot,
                              squares, st);
        return st;
    }
    return stream_reduce<false>(confidence, target, weights, offset, edges, grid, B, seed, bins, fine, boot, squares);
}

// stream_accumulate's path for more than one chunk: rows reduced over fixed chunks in chunk
// order, the total added to the state when no row was bad. Checked: the rows have passed
// check_binary_row's checks already.
template <bool Checked, class C, class L>
Status stream_reduce(const Vector<C>& confidence, const Vector<L>& target, const Weights& weights, uint64_t offset,
                     const BinEdges& edges, const FineGrid& grid, int64_t n_boot, uint64_t seed, double* bins,
                     double* fine, double* boot, double* squares) {
    const int64_t N = confidence.size, M = edges.n_bins, R = grid.size(), B = n_boot;
    const bool sq = squares != nullptr;
    StreamPartial total(M, R, B, sq);
    chunked_reduce(
        N, kChunkElements, 1 + B, (sq ? 6 : 4) * M + 5 * R + 3 * B * M, total,
        [&] { return StreamPartial(M, R, B, sq); },
        [&](StreamPartial& part, int64_t begin, int64_t end) {
            stream_rows<Checked>(confidence, target, weights, begin, end, offset, edges, grid, B, seed,
                                 part.bins.data(), part.fine.data(), part.boot.data(), part.squares_data(),
                                 part.status, &part.touched);
        },
        [](StreamPartial& acc, const StreamPartial& part) { acc.merge(part); });
    if (total.status.code == kOk) {
        for (int64_t j = 0; j < 4 * M; ++j) bins[j] += total.bins[static_cast<size_t>(j)];
        for (int64_t j = 0; j < 5 * R; ++j) fine[j] += total.fine[static_cast<size_t>(j)];
        for (int64_t j = 0; j < 3 * B * M; ++j) boot[j] += total.boot[static_cast<size_t>(j)];
        if (sq)
            for (int64_t j = 0; j < 2 * M; ++j) squares[j] += total.squares[static_cast<size_t>(j)];
    }
    return total.status;
}


// A batch's totals into the state's totals[6]: count, weight, correct, confidence, Brier, NLL.
inline void add_totals(const Totals& t, double* totals) {
    totals[0] += static_cast<double>(t.count);
    totals[1] += t.weight;
    totals[2] += t.correct;
    totals[3] += t.confidence;
    totals[4] += t.brier;
    totals[5] += t.nll;
}

// -- The fused small-batch path of stream_top_label ------------------------------------------------
//
// A batch of at most one top-label chunk without class-wise bins (the per-batch update of a monitoring
// job) is one call on the calling thread: pass 1 summarises every row (binning.hpp's row summaries:
// confidence, correctness, Brier, NLL) and computes its equal-width bin and fine bucket into a reused
// per-thread scratch (no heap allocation once it has grown), with the totals in top_label_stats' lanes;
// a bad row stops it and nothing is added (the batch stays atomic). Pass 2 adds the rows into the state in
// row order (add_stream_row, stream_boot_row) and, with a smooth accumulator, spreads them onto the
// smooth ECE's grids (SmoothBlock). Every sum is the one top_label_stats + stream_rows (+ smooth_grid_top_label
// for one smooth chunk) compute: the same values, added in the same order, so the same bits.

// Per-row values of pass 1. Each row's adds, in the order pass 2 adds them, as one 64-byte record
// (kAddWidth doubles): 1, w, w c, w y (the bins' and the first four fine sums), w^2, w^2 c (1 - c) (the
// squares), w |y - c| (the fifth fine sum) and c (for the bootstrap and the smooth grids). Unweighted rows
// have w = 1, and 1 * x is x: the same values as add_stream_row's unweighted instance. The bin, the fine
// bucket and the 0/1 target in their own arrays.
constexpr int64_t kAddWidth = 8;
constexpr int64_t kMaxInterleavedBins = 256;  // fused_pass2: bins added in an interleaved copy up to this many
enum : int { kAddOne, kAddW, kAddWC, kAddWY, kAddWW, kAddWWV, kAddWD, kAddC };

struct StreamRowScratch {
    std::vector<double> add;
    std::vector<int32_t> bin, fine;
    std::vector<uint8_t> y;
    std::vector<double> acc;  // pass 2: the state's bins and squares, interleaved [M][kAddWidth]
    void ensure(int64_t n) {  // n rows and the padding of a last batch of short rows (at most 8 lanes)
        if (static_cast<int64_t>(y.size()) >= n + 8) return;
        const size_t m = static_cast<size_t>(n + 8);
        add.resize(m * kAddWidth);
        bin.resize(m);
        fine.resize(m);
        y.resize(m);
    }
    static StreamRowScratch& local() {
        thread_local StreamRowScratch scratch;
        return scratch;
    }
};

// Pass 1's record of one row (scalar code: the long rows).
CALIBKIT_INLINE void put_row_adds(double* a, double c, double y, double w) {
    const double ww = w * w;
    a[kAddOne] = 1.0;
    a[kAddW] = w;
    a[kAddWC] = w * c;
    a[kAddWY] = w * y;
    a[kAddWW] = ww;
    a[kAddWWV] = ww * (c * (1.0 - c));
    a[kAddWD] = w * std::fabs(y - c);
    a[kAddC] = c;
}

// FineGrid::bin_checked of W confidences in vector lanes: the same integer arithmetic, lane by lane.
template <class V>
CALIBKIT_INLINE void fine_bins_checked(const FineGrid& grid, typename V::d c, int32_t* out) {
#if CALIBKIT_GNU_VECTORS
    typedef typename V::d D;
    typedef typename V::i I;
    typedef uint64_t U __attribute__((vector_size(sizeof(D))));
    const I zero = (I)simd::splat<D>(0.0);
    const I upper = c > simd::splat<D>(0.5);
    D d = simd::select(upper, simd::splat<D>(1.0) - c, c);  // 1 - c is exact for c >= 1/2
    d = simd::select(d > simd::splat<D>(0.0), d, simd::splat<D>(0.0));  // as bin_checked: d <= 0 is +0
    const U u = (U)d;
    const I level = (zero + (1023 - 2)) - (I)(u >> 52);  // d >= 0
    const I mantissa = (I)((u >> static_cast<int>(52 - grid.bits)) & ((uint64_t{1} << grid.bits) - 1));
    I r = (((zero + (grid.levels - 1)) - level) << static_cast<int>(grid.bits)) + mantissa;
    r = simd::select_int(level >= zero + grid.levels, zero, r);
    r = simd::select_int(level < zero, zero + (grid.side() - 1), r);
    r = simd::select_int(upper, (zero + (grid.size() - 1)) - r, r);
    for (int j = 0; j < V::width; ++j) out[j] = static_cast<int32_t>(r[j]);
#else
    for (int j = 0; j < V::width; ++j) out[j] = static_cast<int32_t>(grid.bin_checked(c[j]));
#endif
}

// The smooth ECE's grid sums of one call (smooth_grid_top_label of one chunk), when the accumulator keeps them.
struct SmoothTarget {
    const SmoothGrids* grids = nullptr;
    SmoothSums* sums = nullptr;
    bool on() const { return grids != nullptr; }
};

// Pass 1 of the fused path, short rows (K < kShortRow): summarize_short_rows on 2 W rows at a time, and the
// rest in vector lanes as top_label_short_rows computes it: the totals in kTotalLanes lanes (row i into lane
// i % kTotalLanes) folded by fold_lanes, the bin by counting the inner edges below the confidence (up to
// kMaxVectorEdges of them). A batch with a bad row goes to fused_short_status, which names the first one.
template <class T>
inline void fused_short_status(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights,
                               bool from_logits, int64_t b0, int64_t n, Status& st) {
    const int64_t K = s.cols;
    for (int64_t i = b0; i < b0 + n; ++i) {
        const int64_t y = labels.raw(i);
        if (y < 0 || y >= K) return st.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
        if (weights.present() && !check_weight(weights.v[i], i, st)) return;
        const simd::RowReader<T, false> r{reinterpret_cast<const char*>(s.row(i)), s.col_stride};
        report_bad_element(r, i, K, from_logits, st);
        if (st.code != kOk) return;
    }
}

template <class T, class V>
CALIBKIT_INLINE void fused_pass1_short(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights,
                                       bool from_logits, double nll_eps, double inv_t, const BinEdges& edges,
                                       const FineGrid& grid, StreamRowScratch& out, Totals& t, Status& st) {
    using namespace simd;
    typedef typename V::d D;
    typedef typename V::i I;
    typedef typename V::fw F;
    typedef typename V::iw IW;
    constexpr int W = V::width, G = kShortGroups, B = W * G, H = kTotalLanes / B, Q = H * G;
    const int64_t N = s.rows, K = s.cols;
    const uint64_t n_classes = static_cast<uint64_t>(K);
    const int64_t n_inner = edges.n_bins - 1;
    const bool vector_bins = n_inner <= kMaxVectorEdges;
    const double* const inner = edges.bounds.data() + 1;
    // float32 / float16 probabilities: the bin from the float confidences, 2 W at a time. For a float c
    // and a double edge e, c > e exactly when c > the largest float <= e.
    const bool float_bins = !std::is_same<T, double>::value && !from_logits && vector_bins;
    F below[kMaxVectorEdges];
    if (float_bins)
        for (int64_t e = 0; e < n_inner; ++e) {
            float f = static_cast<float>(inner[e]);
            if (static_cast<double>(f) > inner[e]) f = std::nextafter(f, -INFINITY);
            below[e] = splat_f<F>(f);
        }
    const D zero = splat<D>(0.0), one = splat<D>(1.0), two = splat<D>(2.0);
    const I sign = (I)splat<D>(-0.0);
    D s_weight[Q], s_correct[Q], s_conf[Q], s_brier[Q], s_nll[Q];
    for (int q = 0; q < Q; ++q) s_weight[q] = s_correct[q] = s_conf[q] = s_brier[q] = s_nll[q] = zero;
    RowsSummary<V> batch{};
    double* const out_add = out.add.data();
    int32_t* const out_bin = out.bin.data();
    int32_t* const out_fine = out.fine.data();
    uint8_t* const out_y = out.y.data();
    const bool weighted = weights.present();
    // Labels and weights of a whole batch are read as vectors straight from contiguous inputs (a vector
    // load of values just stored one by one stalls on store forwarding).
    const bool labels_contiguous = labels.stride == static_cast<int64_t>(sizeof(int64_t));
    const bool weights_contiguous = weighted && weights.v.stride == static_cast<int64_t>(sizeof(double));
    int64_t rows[B], ys[B], pad[B];
    double ws[B];
    for (int j = 0; j < B; ++j) ws[j] = 1.0;
    for (int64_t b0 = 0; b0 < N; b0 += B) {
        const int h = static_cast<int>((b0 / B) % H);
        const bool full = b0 + B <= N;
        bool clean = true;
        if (full) {
            for (int j = 0; j < B; ++j) {
                rows[j] = b0 + j;
                ys[j] = labels.raw(b0 + j);
                clean &= static_cast<uint64_t>(ys[j]) < n_classes;
            }
        } else {
            for (int j = 0; j < B; ++j) {
                const int64_t i = std::min(b0 + j, N - 1);
                rows[j] = i;
                pad[j] = b0 + j < N ? -1 : 0;
                ys[j] = labels.raw(i);
                clean &= static_cast<uint64_t>(ys[j]) < n_classes;
            }
        }
        if (weighted)
            for (int j = 0; j < B; ++j) {
                ws[j] = weights.v[rows[j]];
                clean &= (ws[j] >= 0.0) & (ws[j] <= DBL_MAX);  // false for NaN, inf and negatives
            }
        if (!clean) return fused_short_status(s, labels, weights, from_logits, b0, std::min<int64_t>(B, N - b0), st);
        summarize_short_rows<T, V>(s, rows, ys, from_logits, nll_eps, true, inv_t, batch);
        I bad = batch.bad[0] | batch.bad[1];
        bool any_bad = false;
        for (int j = 0; j < W; ++j) any_bad |= bad[j] != 0;
        if (any_bad) return fused_short_status(s, labels, weights, from_logits, b0, std::min<int64_t>(B, N - b0), st);
        for (int g = 0; g < G; ++g) {
            const int q = h * G + g;
            D w;
            I y, valid;
            if (!weighted)
                w = one;
            else if (full && weights_contiguous)
                std::memcpy(&w, weights.v.data + (b0 + g * W) * static_cast<int64_t>(sizeof(double)), sizeof w);
            else
                std::memcpy(&w, ws + g * W, sizeof w);
            if (full && labels_contiguous)
                std::memcpy(&y, labels.data + (b0 + g * W) * static_cast<int64_t>(sizeof(int64_t)), sizeof y);
            else
                std::memcpy(&y, ys + g * W, sizeof y);
            if (full)
                valid = (I)zero == (I)zero;
            else
                std::memcpy(&valid, pad + g * W, sizeof valid);
            const I hit = batch.argmax[g] == y;
            const D conf = batch.confidence[g];
            const D wc = w * conf;
            s_weight[q] += select(valid, w, zero);
            s_correct[q] += select(valid & hit, w, zero);  // w * correct
            s_conf[q] += select(valid, wc, zero);
            s_brier[q] += select(valid, w * ((batch.sum_sq[g] - two * batch.p_label[g]) + one), zero);
            s_nll[q] += select(valid, w * batch.nll[g], zero);
            // The row records (put_row_adds' values, lane by lane). The scratch has room for a whole last
            // batch: padding lanes are written and never read.
            const D yd = select(hit, one, zero);
            const D ww = w * w;
            const D wy = w * yd;
            const D wwv = ww * (conf * (one - conf));
            const D wd = w * (D)((I)(yd - conf) & ~sign);  // w |y - c|
            const int64_t at = b0 + g * W;
            for (int j = 0; j < W; ++j) {
                double* const a = out_add + (at + j) * kAddWidth;
                a[kAddOne] = 1.0;
                a[kAddW] = w[j];
                a[kAddWC] = wc[j];
                a[kAddWY] = wy[j];
                a[kAddWW] = ww[j];
                a[kAddWWV] = wwv[j];
                a[kAddWD] = wd[j];
                a[kAddC] = conf[j];
            }
            fine_bins_checked<V>(grid, conf, out_fine + at);
            if (float_bins) {
                // below, for the batch's 2 W rows at once
            } else if (vector_bins) {
                I m = (I)zero;
                for (int64_t e = 0; e < n_inner; ++e) m -= splat<D>(inner[e]) < conf;
                for (int j = 0; j < W; ++j) out_bin[at + j] = static_cast<int32_t>(m[j]);
            } else {
                for (int j = 0; j < W; ++j) out_bin[at + j] = static_cast<int32_t>(edges.bin(conf[j]));
            }
            for (int j = 0; j < W; ++j) out_y[at + j] = static_cast<uint8_t>(hit[j] & 1);
        }
        if (float_bins) {
            IW m = (IW)splat_f<F>(0.0f);
            for (int64_t e = 0; e < n_inner; ++e) m -= (IW)(below[e] < batch.fconfidence);
            for (int j = 0; j < B; ++j) out_bin[b0 + j] = m[j];
        }
    }
    double l[5][kTotalLanes];
    for (int q = 0; q < Q; ++q) {
        std::memcpy(l[0] + q * W, &s_weight[q], sizeof(D));
        std::memcpy(l[1] + q * W, &s_correct[q], sizeof(D));
        std::memcpy(l[2] + q * W, &s_conf[q], sizeof(D));
        std::memcpy(l[3] + q * W, &s_brier[q], sizeof(D));
        std::memcpy(l[4] + q * W, &s_nll[q], sizeof(D));
    }
    t.count += N;
    t.weight += fold_lanes(l[0]);
    t.correct += fold_lanes(l[1]);
    t.confidence += fold_lanes(l[2]);
    t.brier += fold_lanes(l[3]);
    t.nll += fold_lanes(l[4]);
}

// Pass 1, long rows: summarize_row per row and the totals in row order, as top_label_rows / accumulate_row.
template <class T, class V>
CALIBKIT_INLINE void fused_pass1_long(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights,
                                      bool from_logits, double nll_eps, double inv_t, const BinEdges& edges,
                                      const FineGrid& grid, StreamRowScratch& out, Totals& t, Status& st) {
    const int64_t N = s.rows, K = s.cols;
    const simd::TailMask<V> tail(K);
    RowSummary row;
    for (int64_t i = 0; i < N; ++i) {
        const int64_t y = labels.raw(i);
        if (y < 0 || y >= K) {
            st.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
            return;
        }
        const double w = weights.at(i);
        if (weights.present() && !check_weight(w, i, st)) return;
        if (!summarize_row<T, V, false>(s, tail, i, y, from_logits, nll_eps, true, inv_t, row, st, nullptr, nullptr))
            return;
        const double correct = row.argmax == y ? 1.0 : 0.0;
        t.count += 1;
        t.weight += w;
        t.correct += w * correct;
        t.confidence += w * row.confidence;
        t.brier += w * (row.sum_sq - 2.0 * row.p_label + 1.0);
        t.nll += w * row.nll;
        put_row_adds(out.add.data() + i * kAddWidth, row.confidence, correct, w);
        out.y[static_cast<size_t>(i)] = static_cast<uint8_t>(correct);
        out.bin[static_cast<size_t>(i)] = static_cast<int32_t>(edges.bin(row.confidence));
        out.fine[static_cast<size_t>(i)] = static_cast<int32_t>(grid.bin_checked(row.confidence));
    }
}

template <class T, class V>
CALIBKIT_INLINE void fused_pass1(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights,
                                 bool from_logits, double nll_eps, double inv_t, const BinEdges& edges,
                                 const FineGrid& grid, StreamRowScratch& out, Totals& t, Status& st) {
    if (s.cols < kShortRow)
        fused_pass1_short<T, V>(s, labels, weights, from_logits, nll_eps, inv_t, edges, grid, out, t, st);
    else
        fused_pass1_long<T, V>(s, labels, weights, from_logits, nll_eps, inv_t, edges, grid, out, t, st);
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void fused_pass1_avx2(const Matrix<T>& s, const Vector<int64_t>& labels, const Weights& weights,
                                          bool from_logits, double nll_eps, double inv_t, const BinEdges& edges,
                                          const FineGrid& grid, StreamRowScratch& out, Totals& t, Status& st) {
    fused_pass1<T, simd::Vec<4>>(s, labels, weights, from_logits, nll_eps, inv_t, edges, grid, out, t, st);
}
#endif

// Pass 2's rows [0, N) into the state, in row order (the adds of add_stream_row and stream_boot_row); the
// fine state's five cache lines of row i + kAhead prefetched. Interleave: the bins and squares go to acc
// (one bin's six sums in one cache line, added as vectors, each lane the same add as add_stream_row's),
// else in place. The branches on the layout and the bootstrap are template arguments, and the last kAhead
// rows (nothing left to prefetch) run without the prefetch.
template <bool Interleave, bool Boot>
inline void fused_pass2_rows(const StreamRowScratch& rows, int64_t N, uint64_t offset, int64_t M, int64_t R,
                             int64_t n_boot, uint64_t seed, double* bins, double* fine, double* boot, double* squares,
                             double* acc) {
    typedef simd::Vec<2>::d D2;
    constexpr int64_t kAhead = 16, A = kAddWidth;
    const double* const add = rows.add.data();
    const int32_t* const bin = rows.bin.data();
    const int32_t* const fb = rows.fine.data();
    const uint8_t* const y = rows.y.data();
    double* const f0 = fine;
    double* const f1 = fine + R;
    double* const f2 = fine + 2 * R;
    double* const f3 = fine + 3 * R;
    double* const f4 = fine + 4 * R;
    const auto prefetch = [&](int64_t i) {
        const int64_t f = fb[i];
        CALIBKIT_PREFETCH(f0 + f, 1, 3);
        CALIBKIT_PREFETCH(f1 + f, 1, 3);
        CALIBKIT_PREFETCH(f2 + f, 1, 3);
        CALIBKIT_PREFETCH(f3 + f, 1, 3);
        CALIBKIT_PREFETCH(f4 + f, 1, 3);
    };
    const auto row = [&](int64_t i) {
        const double* const a = add + i * A;
        const int64_t b = bin[i];
        if constexpr (Interleave) {
            double* const s = acc + b * A;
            D2 s0, s1, s2, a0, a1, a2;
            std::memcpy(&s0, s, sizeof s0);
            std::memcpy(&s1, s + 2, sizeof s1);
            std::memcpy(&s2, s + 4, sizeof s2);  // the squares (added, and not copied back, without a squares state)
            std::memcpy(&a0, a, sizeof a0);
            std::memcpy(&a1, a + 2, sizeof a1);
            std::memcpy(&a2, a + 4, sizeof a2);
            s0 += a0;
            s1 += a1;
            s2 += a2;
            std::memcpy(s, &s0, sizeof s0);
            std::memcpy(s + 2, &s1, sizeof s1);
            std::memcpy(s + 4, &s2, sizeof s2);
        } else {
            for (int64_t q = 0; q < 4; ++q) bins[q * M + b] += a[q];
            if (squares) {
                squares[b] += a[kAddWW];
                squares[M + b] += a[kAddWWV];
            }
        }
        const int64_t f = fb[i];
        f0[f] += 1.0;
        f1[f] += a[kAddW];
        f2[f] += a[kAddWC];
        f3[f] += a[kAddWY];
        f4[f] += a[kAddWD];
        if constexpr (Boot)
            stream_boot_row(seed, offset + static_cast<uint64_t>(i), n_boot, M, b, a[kAddC], static_cast<double>(y[i]),
                            a[kAddW], boot);
    };
    const int64_t lead = std::min(N, kAhead);
    for (int64_t i = 0; i < lead; ++i) prefetch(i);
    int64_t i = 0;
    for (; i < N - kAhead; ++i) {
        prefetch(i + kAhead);
        row(i);
    }
    for (; i < N; ++i) row(i);
}

// Pass 2: the checked rows into the state (fused_pass2_rows), and onto the smooth grids when asked. With at
// most kMaxInterleavedBins bins the bins and squares are added in a copy interleaved per bin (rows.acc),
// copied back after the batch; with more (more than a batch would fill) in place, so that a small batch
// does not copy a large state. The fine sums are added in place.
inline void fused_pass2(StreamRowScratch& rows, int64_t N, uint64_t offset, int64_t M, int64_t R, int64_t n_boot,
                        uint64_t seed, double* bins, double* fine, double* boot, double* squares,
                        const SmoothTarget& smooth) {
    constexpr int64_t A = kAddWidth;
    const bool interleave = M <= kMaxInterleavedBins;
    if (interleave) {
        rows.acc.resize(static_cast<size_t>(M * A));
        for (int64_t b = 0; b < M; ++b) {
            for (int64_t q = 0; q < 4; ++q) rows.acc[static_cast<size_t>(b * A + q)] = bins[q * M + b];
            for (int64_t q = 0; q < 2; ++q)
                rows.acc[static_cast<size_t>(b * A + 4 + q)] = squares ? squares[q * M + b] : 0.0;
        }
    }
    double* const acc = rows.acc.data();
    if (interleave && n_boot == 0)
        fused_pass2_rows<true, false>(rows, N, offset, M, R, n_boot, seed, bins, fine, boot, squares, acc);
    else if (interleave)
        fused_pass2_rows<true, true>(rows, N, offset, M, R, n_boot, seed, bins, fine, boot, squares, acc);
    else if (n_boot == 0)
        fused_pass2_rows<false, false>(rows, N, offset, M, R, n_boot, seed, bins, fine, boot, squares, acc);
    else
        fused_pass2_rows<false, true>(rows, N, offset, M, R, n_boot, seed, bins, fine, boot, squares, acc);
    if (interleave)
        for (int64_t b = 0; b < M; ++b) {
            for (int64_t q = 0; q < 4; ++q) bins[q * M + b] = acc[b * A + q];
            if (squares)
                for (int64_t q = 0; q < 2; ++q) squares[q * M + b] = acc[b * A + 4 + q];
        }
    const double* const add = rows.add.data();
    const uint8_t* const y = rows.y.data();
    if (smooth.on()) {
        SmoothBlock block;
        for (int64_t i = 0; i < N; ++i)
            block.add(*smooth.grids, *smooth.sums, add[i * A + kAddC], add[i * A + kAddW], static_cast<double>(y[i]));
        block.flush(*smooth.grids, *smooth.sums);
    }
}

// The fused path: pass 1, then (when every row is good) pass 2 and the totals into the state.
template <class T>
Status stream_top_label_small(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                              bool from_logits, double nll_eps, double inv_t, uint64_t offset, int64_t n_bins,
                              const FineGrid& grid, int64_t n_boot, uint64_t seed, double* bins, double* fine,
                              double* boot, double* totals, double* squares, const SmoothTarget& smooth) {
    const int64_t N = scores.rows;
    const BinEdges edges = BinEdges::equal_width(n_bins);
    StreamRowScratch& rows = StreamRowScratch::local();
    rows.ensure(N);
    Totals t;
    Status st;
#if CALIBKIT_HAVE_AVX2_CLONES
    if (simd::use_avx2())
        fused_pass1_avx2<T>(scores, labels, weights, from_logits, nll_eps, inv_t, edges, grid, rows, t, st);
    else
#endif
        fused_pass1<T, simd::Vec<2>>(scores, labels, weights, from_logits, nll_eps, inv_t, edges, grid, rows, t, st);
    if (st.code != kOk) return st;
    fused_pass2(rows, N, offset, n_bins, grid.size(), n_boot, seed, bins, fine, boot, squares, smooth);
    add_totals(t, totals);
    return st;
}

// One streaming update from an N x K matrix of probabilities or logits: the
// top-label pass of binning.hpp (confidence, correctness, totals with the NLL,
// and class-wise bins when classwise.on()) followed by stream_accumulate of
// its per-row confidences, in one call. Exactly the sums of the two separate
// calls (top_label_stats with conf_out/correct_out, then stream_accumulate).
// Atomic: on a bad row its status is returned and nothing is added; otherwise
// the totals (count, weight, correct, confidence, Brier, NLL) are added into
// totals[6] and the class-wise (weight, sum score, sum target) into
// classwise_state[3 x K x M] (when classwise.on()). Inputs of at most one
// chunk run on the calling thread (no pool wake-up). squares (when not null) is the [2 x M] state of
// stream_accumulate. With smooth.on(), the smooth ECE's grid sums of the batch (smooth_grid_top_label's,
// the same bits) go to *smooth.sums (zeroed by the caller), from the same pass: the scores are read once.
// A batch of at most one top-label chunk without class-wise bins takes the fused path
// (stream_top_label_small).
template <class T>
Status stream_top_label(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                        bool from_logits, double nll_eps, double inv_t, const ClasswiseSpec& classwise,
                        uint64_t offset, int64_t n_bins, const FineGrid& grid, int64_t n_boot, uint64_t seed,
                        double* bins, double* fine, double* boot, double* totals, double* classwise_state,
                        double* squares = nullptr, const SmoothTarget& smooth = SmoothTarget()) {
    // Logit rows shorter than kShortRow: the top-label pass sums their exponentials row per lane
    // (summarize_short_rows, double precision), smooth_grid_top_label in octets (summarize_row; single precision
    // for float32 / float16), so their confidences differ in the last bits: their grid sums keep their own pass
    // (the same bits as before). Every other batch spreads the top-label pass's confidences, which are
    // smooth_grid_top_label's.
    if (smooth.on() && from_logits && scores.cols < kShortRow) {
        const Status st = stream_top_label<T>(scores, labels, weights, from_logits, nll_eps, inv_t, classwise, offset,
                                              n_bins, grid, n_boot, seed, bins, fine, boot, totals, classwise_state,
                                              squares);
        if (st.code == kOk) *smooth.sums = smooth_grid_top_label<T>(scores, labels, weights, true, *smooth.grids,
                                                                    smooth.sums->channels, inv_t);
        return st;
    }
    const int64_t N = scores.rows;
    if (!classwise.on() && N <= rows_per_chunk(scores.cols))
        return stream_top_label_small<T>(scores, labels, weights, from_logits, nll_eps, inv_t, offset, n_bins, grid,
                                         n_boot, seed, bins, fine, boot, totals, squares, smooth);
    std::vector<double> conf(static_cast<size_t>(N));
    std::vector<uint8_t> correct(static_cast<size_t>(N));
    const BinningResult r = top_label_stats<T>(scores, labels, weights, from_logits, 0, nll_eps, true, conf.data(),
                                               correct.data(), inv_t, classwise);
    if (r.status.code != kOk) return r.status;
    const Vector<double> c{reinterpret_cast<const char*>(conf.data()), N, static_cast<int64_t>(sizeof(double))};
    const Vector<uint8_t> y{reinterpret_cast<const char*>(correct.data()), N, static_cast<int64_t>(sizeof(uint8_t))};
    Status st;
    if (N <= kChunkElements) {
        // One chunk of rows the top-label pass has already checked (confidences in [0, 1], 0/1
        // targets, weights finite and >= 0): straight into the state, as stream_accumulate's own
        // small path does after its check pass.
        stream_rows<true>(c, y, weights, 0, N, offset, BinEdges::equal_width(n_bins), grid, n_boot, seed, bins, fine,
                          boot, squares, st);
    } else {
        st = stream_reduce<true>(c, y, weights, offset, BinEdges::equal_width(n_bins), grid, n_boot, seed, bins, fine,
                                 boot, squares);  // the rows were checked by the top-label pass
    }
    if (st.code != kOk) return st;
    if (smooth.on()) smooth_grid_checked_rows(c, y, weights, scores.cols, *smooth.grids, *smooth.sums);
    const Totals& t = r.totals;
    add_totals(t, totals);
    if (classwise.on()) {
        const size_t KM = r.classwise.weight.size();
        for (size_t j = 0; j < KM; ++j) classwise_state[j] += r.classwise.weight[j];
        for (size_t j = 0; j < KM; ++j) classwise_state[KM + j] += r.classwise.sum_score[j];
        for (size_t j = 0; j < KM; ++j) classwise_state[2 * KM + j] += r.classwise.sum_target[j];
    }
    return st;
}

}  // namespace calibkit
