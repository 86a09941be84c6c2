// Weighted isotonic regression by pool-adjacent-violators (Ayer et al. 1955;
// Barlow et al. 1972), linear time on sorted input.
//
// Given points in the order of x (ties in x pooled first into one point with
// their weighted mean and summed weight, as scikit-learn does), PAV finds the
// non-decreasing (or non-increasing) sequence f minimising sum_i w_i (y_i - f_i)^2:
// scan left to right, keep a stack of blocks (sum w, sum w y), and merge the top
// two while the lower block's mean is >= the upper one's. Each point is pushed
// once and merged at most once: O(n). The blocks left are maximal runs of equal
// fitted value.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"
#include "simd.hpp"
#include "sort.hpp"

namespace calibkit {

struct PavBlocks {
    std::vector<int64_t> starts;  // block b is [starts[b], starts[b + 1]) in sorted order; n at the end
    std::vector<double> values;   // fitted value of each block
    std::vector<double> weights;  // summed weight of each block
};

// PAV over points j = 0..n-1 whose values and weights are y_at(j), w_at(j).
// `keys` (sorted, or null) marks ties in x: equal keys are pooled first.
template <class Y, class W>
PavBlocks pav_points(int64_t n, Y y_at, W w_at, const uint64_t* keys, bool increasing) {
    const double sign = increasing ? 1.0 : -1.0;
    // The block stack, in arrays of the largest size it can reach (no re-allocation).
    std::unique_ptr<double[]> sum_w(new double[static_cast<size_t>(n)]), sum_wy(new double[static_cast<size_t>(n)]),
        mean(new double[static_cast<size_t>(n)]);
    std::unique_ptr<int64_t[]> start(new int64_t[static_cast<size_t>(n)]);
    int64_t nb = 0;
    for (int64_t j = 0; j < n;) {
        int64_t first = j;
        double sw = 0.0, swy = 0.0;
        do {
            const double wi = w_at(j);
            sw += wi;
            swy += wi * (sign * y_at(j));
            ++j;
        } while (keys && j < n && keys[j] == keys[first]);
        double m = swy / sw;
        while (nb > 0 && mean[nb - 1] >= m) {  // pool while the block below is not strictly smaller
            --nb;
            sw += sum_w[nb];
            swy += sum_wy[nb];
            m = swy / sw;
            first = start[nb];
        }
        sum_w[nb] = sw;
        sum_wy[nb] = swy;
        mean[nb] = m;
        start[nb] = first;
        ++nb;
    }
    PavBlocks out;
    out.starts.assign(start.get(), start.get() + nb);
    out.starts.push_back(n);
    out.values.resize(static_cast<size_t>(nb));
    for (int64_t b = 0; b < nb; ++b) out.values[static_cast<size_t>(b)] = sign * mean[b];
    out.weights.assign(sum_w.get(), sum_w.get() + nb);
    return out;
}

// Weighted isotonic regression of y (on x when given: then `order` receives the
// stable sort order of x and ties in x are pooled). `fitted` receives each
// point's fitted value at its input position. The random-access steps (gather
// into sorted order, scatter back) run as parallel loops; PAV itself is serial.
inline PavBlocks isotonic(const Vector<double>& y, const Vector<double>& w, bool weighted, const Vector<double>* x,
                          bool increasing, int64_t* order, double* fitted) {
    const int64_t n = y.size;
    constexpr int64_t kChunk = 1 << 16;
    if (x == nullptr) {
        PavBlocks b = weighted ? pav_points(n, [&](int64_t j) { return y[j]; }, [&](int64_t j) { return w[j]; },
                                            nullptr, increasing)
                               : pav_points(n, [&](int64_t j) { return y[j]; }, [](int64_t) { return 1.0; },
                                            nullptr, increasing);
        for (size_t k = 0; k + 1 < b.starts.size(); ++k)
            std::fill(fitted + b.starts[k], fitted + b.starts[k + 1], b.values[k]);
        return b;
    }
    std::vector<uint64_t> keys;
    stable_argsort(*x, order, keys);
    std::unique_ptr<double[]> ys(new double[static_cast<size_t>(n)]);
    std::unique_ptr<double[]> ws(weighted ? new double[static_cast<size_t>(n)] : nullptr);
    chunked_for(n, kChunk, 1, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) ys[j] = y[order[j]];
        if (weighted)
            for (int64_t j = begin; j < end; ++j) ws[j] = w[order[j]];
    });
    PavBlocks b = weighted ? pav_points(n, [&](int64_t j) { return ys[j]; }, [&](int64_t j) { return ws[j]; },
                                        keys.data(), increasing)
                           : pav_points(n, [&](int64_t j) { return ys[j]; }, [](int64_t) { return 1.0; },
                                        keys.data(), increasing);
    chunked_for(n, kChunk, 1, [&](int64_t begin, int64_t end) {
        // the block holding `begin`, then walk the blocks
        size_t k = static_cast<size_t>(std::upper_bound(b.starts.begin(), b.starts.end(), begin) - b.starts.begin()) - 1;
        for (int64_t j = begin; j < end; ++j) {
            while (j >= b.starts[k + 1]) ++k;
            fitted[order[j]] = b.values[k];
        }
    });
    return b;
}

}  // namespace calibkit

// ---------------------------------------------------------------------------
// One-vs-rest calibration maps of K score columns (IsotonicCalibration,
// HistogramBinning): the fit of K isotonic maps in one call, threaded across
// classes, and the application of K step functions to an (N, K) block with the
// row renormalisation in the same pass.
namespace calibkit {

// K models concatenated: model k is x[x_off[k]:x_off[k + 1]], y[y_off[k]:y_off[k + 1]].
struct ColumnModels {
    std::vector<int64_t> x_off, y_off;
    std::vector<double> x, y;
};

// The unweighted isotonic map by runs, when one label is rare (at most 1 in kRunsRatio kept rows: a class
// of one-vs-rest calibration). Sorted by score, the rows form the unique scores of the rare label's rows,
// and between two consecutive ones a run of rows of the common label, which always fall in one PAV block
// (consecutive equal targets always do: the last of a block is at most its mean, the first of the next
// at least the next mean). So only the rare rows are sorted; each common row is counted into its run (or
// the tie of a rare score it equals) by a binary search among the rare scores, with the run's least score
// (its earliest row) and largest score (its latest row), and PAV runs over these pooled points. Every sum
// is of 0s and 1s (exact integers): the blocks, their values and their first / last scores are those of
// the full sort, bit for bit. Returns false (nothing written) when the rare label is not rare enough.
constexpr int64_t kRunsRatio = 8;

inline bool isotonic_column_runs(const double* v, int64_t n, const Vector<int64_t>& labels, int64_t positive,
                                 std::vector<double>& xo, std::vector<double>& yo) {
    int64_t n_pos = 0;
    for (int64_t i = 0; i < n; ++i) n_pos += labels.raw(i) == positive ? 1 : 0;
    const bool rare_positive = n_pos <= n - n_pos;
    const int64_t n_rare = rare_positive ? n_pos : n - n_pos;
    if (n_rare * kRunsRatio > n) return false;
    xo.clear();
    yo.clear();
    if (n == 0) return true;
    // the rare rows, stably sorted by score
    std::vector<uint64_t> keys(static_cast<size_t>(std::max<int64_t>(n_rare, 1)));
    std::vector<int64_t> rows(static_cast<size_t>(std::max<int64_t>(n_rare, 1)));
    int64_t r = 0;
    for (int64_t i = 0; i < n; ++i)
        if ((labels.raw(i) == positive) == rare_positive) {
            keys[static_cast<size_t>(r)] = sort_key(v[i]);
            rows[static_cast<size_t>(r++)] = i;
        }
    {
        std::vector<uint64_t> keys_tmp(keys.size());
        std::vector<int64_t> rows_tmp(rows.size());
        msd_sort(keys.data(), rows.data(), n_rare, keys_tmp.data(), rows_tmp.data());
    }
    // unique rare scores u: rare rows count, first (earliest) and last (latest) row with that score
    std::vector<uint64_t> uk;
    std::vector<int64_t> tie_count, tie_first, tie_last, rare_count;
    for (int64_t j = 0; j < n_rare; ++j) {
        const uint64_t k = keys[static_cast<size_t>(j)];
        const int64_t row = rows[static_cast<size_t>(j)];
        if (uk.empty() || uk.back() != k) {
            uk.push_back(k);
            rare_count.push_back(0);
            tie_count.push_back(0);
            tie_first.push_back(row);
            tie_last.push_back(row);
        }
        ++rare_count.back();
        tie_first.back() = std::min(tie_first.back(), row);
        tie_last.back() = std::max(tie_last.back(), row);
    }
    const int64_t U = static_cast<int64_t>(uk.size());
    // A common row's place among the unique rare scores: a table over the key range (kRunsBuckets buckets of
    // equal key width: about equal width in log-score) gives the rare scores below the key's bucket, then a
    // search of fixed length `span` (the most rare scores in one bucket, a power of two; uk is padded with
    // keys above every score) counts those of the bucket below the key. A key below (above) the range reads
    // the first (last) bucket: no branch.
    constexpr int64_t kRunsBuckets = 8192;
    const uint64_t klo = U > 0 ? uk.front() : 0, khi = U > 0 ? uk.back() : 0;
    int shift = 0;
    while (((khi - klo) >> shift) >= static_cast<uint64_t>(kRunsBuckets)) ++shift;
    const int64_t n_buckets = static_cast<int64_t>((khi - klo) >> shift) + 1;
    std::vector<int64_t> table(static_cast<size_t>(n_buckets + 1));
    int64_t span = 1;
    for (int64_t bk = 0, j = 0; bk <= n_buckets; ++bk) {
        while (j < U && static_cast<int64_t>((uk[static_cast<size_t>(j)] - klo) >> shift) < bk) ++j;
        table[static_cast<size_t>(bk)] = j;
        if (bk > 0) span = std::max(span, j - table[static_cast<size_t>(bk - 1)]);
    }
    int64_t pow2 = 1;
    while (pow2 < span) pow2 *= 2;
    uk.resize(static_cast<size_t>(U + pow2), ~uint64_t{0});  // no score's key is all ones (NaN is refused)
    struct Run {
        int64_t count = 0, lo_row = 0, hi_row = 0;
        uint64_t lo_key = ~uint64_t{0}, hi_key = 0;
    };
    std::vector<Run> runs(static_cast<size_t>(U + 1));  // run g: common rows between uk[g - 1] and uk[g]
    const uint64_t* u = uk.data();
    const int64_t* tab = table.data();
    for (int64_t i = 0; i < n; ++i) {
        if ((labels.raw(i) == positive) == rare_positive) continue;
        const uint64_t k = sort_key(v[i]);
        const uint64_t kc = std::min(std::max(k, klo), khi);
        int64_t at = tab[(kc - klo) >> shift];
        for (int64_t step = pow2 / 2; step >= 1; step /= 2)
            at += step & -static_cast<int64_t>(u[at + step - 1] < k);  // a mask, not a branch
        const int64_t g = at + static_cast<int64_t>(u[at] < k);  // the unique rare scores < k
        const size_t gs = static_cast<size_t>(g);
        if (u[g] == k) {  // (g < U: the padding equals no key)
            ++tie_count[gs];
            tie_first[gs] = std::min(tie_first[gs], i);
            tie_last[gs] = std::max(tie_last[gs], i);
        } else {
            Run& run = runs[gs];
            ++run.count;
            if (k < run.lo_key) {  // the earliest row of the least score
                run.lo_key = k;
                run.lo_row = i;
            }
            if (k >= run.hi_key) {  // the latest row of the largest score
                run.hi_key = k;
                run.hi_row = i;
            }
        }
    }
    // PAV over the points in score order: run 0, tie 0, run 1, ..., tie U - 1, run U
    const double common_y = rare_positive ? 0.0 : 1.0;
    const size_t cap = static_cast<size_t>(2 * U + 1);
    std::vector<double> sum_w(cap), sum_wy(cap), mean(cap);
    std::vector<int64_t> first_row(cap), last_row(cap);
    int64_t nb = 0;
    const auto push = [&](double sw, double swy, int64_t first, int64_t last) {
        double m = swy / sw;
        while (nb > 0 && mean[static_cast<size_t>(nb - 1)] >= m) {
            --nb;
            sw += sum_w[static_cast<size_t>(nb)];
            swy += sum_wy[static_cast<size_t>(nb)];
            m = swy / sw;
            first = first_row[static_cast<size_t>(nb)];
        }
        const size_t b = static_cast<size_t>(nb++);
        sum_w[b] = sw;
        sum_wy[b] = swy;
        mean[b] = m;
        first_row[b] = first;
        last_row[b] = last;
    };
    for (int64_t g = 0; g <= U; ++g) {
        const size_t gs = static_cast<size_t>(g);
        if (runs[gs].count > 0) {
            const double c = static_cast<double>(runs[gs].count);
            push(c, c * common_y, runs[gs].lo_row, runs[gs].hi_row);
        }
        if (g < U) {
            const double rare = static_cast<double>(rare_count[gs]), common = static_cast<double>(tie_count[gs]);
            push(rare + common, rare_positive ? rare : common, tie_first[gs], tie_last[gs]);
        }
    }
    for (int64_t b = 0; b < nb; ++b) {
        const size_t bs = static_cast<size_t>(b);
        const double first = v[first_row[bs]], last = v[last_row[bs]];
        xo.push_back(first);
        yo.push_back(mean[bs]);
        if (last != first) {
            xo.push_back(last);
            yo.push_back(mean[bs]);
        }
    }
    return true;
}

// The isotonic calibration map of the n scores v against the targets 1[labels == positive]:
// rows whose weight is not > 0 are left out (they carry no information), the rest are
// stably sorted by score (ties pooled) and PAV'd; each block gives its first and last
// score (one point when they are equal) with the block's value. This is what
// IsotonicCalibration stored before this kernel, computed by the same arithmetic.
inline void isotonic_column(const double* v, int64_t n, const Vector<int64_t>& labels, int64_t positive,
                            const Vector<double>& w, std::vector<double>& xo, std::vector<double>& yo) {
    const bool weighted = w.data != nullptr;
    if (!weighted && isotonic_column_runs(v, n, labels, positive, xo, yo)) return;
    std::vector<uint64_t> keys(static_cast<size_t>(n));
    std::unique_ptr<int64_t[]> order(new int64_t[static_cast<size_t>(std::max<int64_t>(n, 1))]);
    int64_t m = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (weighted && !(w[i] > 0.0)) continue;
        keys[static_cast<size_t>(m)] = sort_key(v[i]);
        // the row and its target in one word: PAV then reads the targets in sorted order
        // without a random access to the labels
        order[m++] = (i << 1) | (labels.raw(i) == positive ? 1 : 0);
    }
    xo.clear();
    yo.clear();
    if (m == 0) return;
    {
        std::unique_ptr<uint64_t[]> keys_tmp(new uint64_t[static_cast<size_t>(m)]);
        std::unique_ptr<int64_t[]> order_tmp(new int64_t[static_cast<size_t>(m)]);
        msd_sort(keys.data(), order.get(), m, keys_tmp.get(), order_tmp.get());  // radix_sort<true>'s order
    }
    const int64_t* o = order.get();
    const auto y_at = [&](int64_t j) { return (o[j] & 1) ? 1.0 : 0.0; };
    const PavBlocks b = weighted ? pav_points(m, y_at, [&](int64_t j) { return w[o[j] >> 1]; }, keys.data(), true)
                                 : pav_points(m, y_at, [](int64_t) { return 1.0; }, keys.data(), true);
    for (size_t blk = 0; blk + 1 < b.starts.size(); ++blk) {
        const double first = v[o[b.starts[blk]] >> 1], last = v[o[b.starts[blk + 1] - 1] >> 1];
        xo.push_back(first);
        yo.push_back(b.values[blk]);
        if (last != first) {
            xo.push_back(last);
            yo.push_back(b.values[blk]);
        }
    }
}

// Classes fitted together: their columns are first copied out of the rows in one pass
// (a row's cache line serves all of them), then fitted one task per class.
constexpr int64_t kIsotonicGroup = 16;

// Isotonic maps of the K columns of s: column k against 1[labels == first_class + k]
// (first_class = 0 for one-vs-rest over K classes; a binary fit passes one column and
// first_class = 1). One task per class; each class's result is computed by one thread
// alone, so it is the same for any thread count. Memory: kIsotonicGroup columns of N
// doubles, plus about 64 N bytes per thread.
template <class T>
ColumnModels isotonic_columns(const Matrix<T>& s, const Vector<int64_t>& labels, const Vector<double>& w,
                              int64_t first_class) {
    const int64_t N = s.rows, K = s.cols;
    std::vector<std::vector<double>> xs(static_cast<size_t>(K)), ys(static_cast<size_t>(K));
    const int64_t group = std::min(kIsotonicGroup, K);
    std::vector<double> values(static_cast<size_t>(group * N));
    for (int64_t g0 = 0; g0 < K; g0 += group) {
        const int64_t g = std::min(group, K - g0);
        chunked_for(N, 1 << 12, g, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i)
                for (int64_t j = 0; j < g; ++j) values[static_cast<size_t>(j * N + i)] = s(i, g0 + j);
        });
        std::function<void(int64_t)> task = [&](int64_t j) {
            const size_t k = static_cast<size_t>(g0 + j);
            isotonic_column(values.data() + j * N, N, labels, first_class + g0 + j, w, xs[k], ys[k]);
        };
        const int threads = N * g < kMinParallelElements ? 1 : get_num_threads();
        ThreadPool::instance().run(g, threads, task);
    }
    ColumnModels out;
    out.x_off.push_back(0);
    out.y_off.push_back(0);
    for (int64_t k = 0; k < K; ++k) {
        out.x.insert(out.x.end(), xs[static_cast<size_t>(k)].begin(), xs[static_cast<size_t>(k)].end());
        out.y.insert(out.y.end(), ys[static_cast<size_t>(k)].begin(), ys[static_cast<size_t>(k)].end());
        out.x_off.push_back(static_cast<int64_t>(out.x.size()));
        out.y_off.push_back(static_cast<int64_t>(out.y.size()));
    }
    return out;
}

template <bool Right>
inline bool knot_before(double knot, double x) {
    return Right ? knot <= x : knot < x;
}

// Number of the sorted knots[0..len) < x (Right = false) or <= x (Right = true): branch-free binary search.
template <bool Right>
inline int64_t count_sorted(const double* knots, int64_t len, double x) {
    const double* base = knots;
    while (len > 1) {
        const int64_t half = len / 2;
        base = knot_before<Right>(base[half], x) ? base + half : base;
        len -= half;
    }
    return (base - knots) + (len == 1 && knot_before<Right>(*base, x) ? 1 : 0);
}

// One-vs-rest histogram binning fit (HistogramBinning): for each class k the weight and
// the weighted count of positives (labels == first_class + k) of the rows in each of its
// n_bins bins, bin = the number of k's inner edges edges[k, 1..n_bins-1] < the score (as
// binary_stats with explicit edges). One row-major pass over all K columns; the sums of
// each class are in the order of binary_stats on that class's column (rows in order
// within chunks of kHistogramChunk rows, the chunks' sums added in chunk order to 0), so
// they are bit-identical to it, for any thread count. Scores are assumed checked.
constexpr int64_t kHistogramChunk = int64_t{1} << 15;  // kChunkElements of binning.hpp (binary_stats' chunk)

struct HistogramSums {
    std::vector<double> weight, hits;  // K x n_bins
    explicit HistogramSums(int64_t n = 0) : weight(static_cast<size_t>(n), 0.0), hits(static_cast<size_t>(n), 0.0) {}
    void reset() {
        std::fill(weight.begin(), weight.end(), 0.0);
        std::fill(hits.begin(), hits.end(), 0.0);
    }
};

template <class T>
HistogramSums histogram_columns(const Matrix<T>& s, const Vector<int64_t>& labels, const Vector<double>& w,
                                const double* edges, int64_t n_bins, int64_t first_class) {
    const int64_t N = s.rows, K = s.cols, cells = K * n_bins;
    const bool weighted = w.data != nullptr;
    HistogramSums total(cells);
    chunked_reduce(
        N, kHistogramChunk, K, 2 * cells, total, [&] { return HistogramSums(cells); },
        [&](HistogramSums& part, int64_t begin, int64_t end) {
            double* pw = part.weight.data();
            double* ph = part.hits.data();
            for (int64_t i = begin; i < end; ++i) {
                const double wi = weighted ? w[i] : 1.0;
                const int64_t positive = labels.raw(i) - first_class;  // the class whose target is 1, if any
                for (int64_t k = 0; k < K; ++k) {
                    const double* inner = edges + k * (n_bins + 1) + 1;
                    const int64_t b = n_bins <= 1 ? 0 : count_sorted<false>(inner, n_bins - 1, s(i, k));
                    pw[k * n_bins + b] += wi;
                    ph[k * n_bins + b] += wi * (k == positive ? 1.0 : 0.0);
                }
            }
        },
        [](HistogramSums& acc, const HistogramSums& part) {
            for (size_t c = 0; c < acc.weight.size(); ++c) {
                acc.weight[c] += part.weight[c];
                acc.hits[c] += part.hits[c];
            }
        });
    return total;
}

// Where a value falls among sorted knots. A table of kKnotTableSize + 1 bucket edges
// e_0 = 0 < e_1 < ... < e_size = 1 holds, for each edge, the number of knots < e_b; a value x in
// bucket b (e_b <= x < e_{b+1}) then has its count between table[b] and table[b + 1], found by a
// short search there (values outside [0, 1), -0.0 and NaN search all knots). The buckets follow
// the float's bit pattern so that every scale gets its own: each binary octave [2^e, 2^(e+1)) from
// 2^-40 to 1 has kKnotLogSub buckets, indexed by the exponent and the top mantissa bits, and bucket 0
// also holds [0, 2^-40). A value's bucket is then its bits shifted, less a constant: a handful of
// integer instructions.
constexpr int kKnotLogBits = 6;                                   // mantissa bits of the buckets
constexpr int64_t kKnotLogSub = int64_t{1} << kKnotLogBits;       // buckets per octave
constexpr int64_t kKnotLogOctaves = 40;                           // octaves [2^-40, 1)
constexpr int64_t kKnotTableSize = kKnotLogOctaves * kKnotLogSub;  // buckets; the table has one entry more
constexpr uint64_t kKnotLogShift = 52 - kKnotLogBits;
constexpr uint64_t kKnotLogBase = uint64_t{1023 - 40} << kKnotLogBits;  // bits(2^-40) >> kKnotLogShift

// The lower edge e_b of bucket b (e_size = 1).
inline double knot_edge(int64_t b) {
    if (b == 0) return 0.0;
    const uint64_t bits = (kKnotLogBase + static_cast<uint64_t>(b)) << kKnotLogShift;
    double e;
    std::memcpy(&e, &bits, sizeof e);
    return e;
}

// The bucket of x: kKnotTableSize or more for x outside [0, 1), -0.0 and NaN (the bits of a
// negative number, as unsigned, are above those of every positive one).
inline uint64_t knot_bucket(double x) {
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    const uint64_t t = bits >> kKnotLogShift;
    return (t > kKnotLogBase ? t : kKnotLogBase) - kKnotLogBase;  // below 2^-40: bucket 0
}

inline void knot_table(const double* knots, int64_t m, int64_t* table) {
    int64_t j = 0;
    for (int64_t b = 0; b <= kKnotTableSize; ++b) {
        const double edge = b == kKnotTableSize ? 1.0 : knot_edge(b);
        while (j < m && knots[j] < edge) ++j;
        table[b] = j;
    }
}

// np.interp(x, xp, fp) for strictly increasing xp of length m >= 1, by NumPy's own
// arithmetic (compiled_base.c, with its precomputed slopes[j] = (fp[j + 1] - fp[j]) /
// (xp[j + 1] - xp[j])): c is the number of knots <= x.
inline double interp_at(const double* xp, const double* fp, const double* slopes, int64_t m, int64_t c, double x) {
    // c == 0 (below the first knot) or c == m (at or above the last; every c when m == 1): an end value
    if (static_cast<uint64_t>(c - 1) >= static_cast<uint64_t>(m - 1)) return c == 0 ? fp[0] : fp[m - 1];
    const int64_t j = c - 1;
    if (xp[j] == x) return fp[j];
    const double slope = slopes[j];
    double r = slope * (x - xp[j]) + fp[j];
    if (r != r) {
        r = slope * (x - xp[j + 1]) + fp[j + 1];
        if (r != r && fp[j] == fp[j + 1]) r = fp[j];
    }
    return r;
}

// The sum of n contiguous doubles in NumPy's pairwise order (np.add.reduce over a
// contiguous axis: 8 partial sums over blocks of at most 128, halves above), so that a
// row total here is bit-identical to q.sum(axis=1) of a C-ordered q.
inline double pairwise_sum(const double* a, int64_t n) {
    if (n < 8) {
        double r = 0.0;
        for (int64_t i = 0; i < n; ++i) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        int64_t i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// exp_f32 (simd.hpp) of buf[0..n) in place, n a multiple of kSoftmaxPad: the same bits on every
// lane whatever the register width (exp_f32 is a fixed sequence of float operations).
constexpr int64_t kSoftmaxPad = 16;

template <class V>
CALIBKIT_INLINE void exp_f32_block(float* buf, int64_t n) {
    typedef typename V::fw F;
    constexpr int L = 2 * V::width, R = static_cast<int>(kSoftmaxPad) / L;  // R registers in lockstep
    for (int64_t k = 0; k < n; k += kSoftmaxPad) {
        F x[R];
        // register by register: one whole-register load and store each (a copy of all R at once went
        // through the stack in halves, and each register then waited for its halves' stores)
        for (int r = 0; r < R; ++r) std::memcpy(&x[r], buf + k + r * L, sizeof(F));
        simd::exp_f32_n<V, R>(x);
        for (int r = 0; r < R; ++r) std::memcpy(buf + k + r * L, &x[r], sizeof(F));
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
CALIBKIT_AVX2_CLONE inline void exp_f32_buffer_avx2(float* buf, int64_t n) { exp_f32_block<simd::Vec<4>>(buf, n); }
#endif

inline void exp_f32_buffer(float* buf, int64_t n) {
#if CALIBKIT_HAVE_AVX2_CLONES
    if (simd::use_avx2()) return exp_f32_buffer_avx2(buf, n);
#endif
    exp_f32_block<simd::Vec<2>>(buf, n);
}

// K rounded up to kSoftmaxPad: the floats exp_f32_buffer takes for a row of K.
inline int64_t softmax_padded(int64_t K) { return (K + kSoftmaxPad - 1) / kSoftmaxPad * kSoftmaxPad; }

// The floats of softmax_row's scratch for rows of K: softmax_padded(K) for float32 / float16 logits, none
// for float64 (the Numba twin's _softmax_scratch).
template <class T>
inline int64_t softmax_scratch_size(int64_t K) {
    return std::is_same_v<T, double> ? 0 : softmax_padded(K);
}

// Scratch of one softmax_row call per row.
template <class T>
inline std::vector<float> softmax_scratch(int64_t K) {
    return std::vector<float>(static_cast<size_t>(softmax_scratch_size<T>(K)), 0.0f);
}

// The softmax of row i of the logits z written into q[0..K): the row maximum m, e_k = exp(z_k - m), the
// row's pairwise sum of the e_k in double and one division per value in double.
// - float64 logits: the arithmetic of NumPy's np.exp(z - z.max(axis=1)) / sum (softmax64_into of
//   nonparametric.py): each difference in float64 and the C library's double exp (std::exp here,
//   math.exp in the Numba twin).
// - float32 / float16 logits: the difference z_k - m in float and e_k = simd::exp_f32 of it (8 lanes;
//   exp_f32 in the Numba twin), widened to double: relative error below 2.5e-7 in the exp (an argument
//   below -87 gives exp(-87) ~ 1.6e-38), plus the rounding of the difference to float (relative 2^-24, as
//   the float input's own rounding of z_k), so each probability is within about
//   3e-7 + 1.2e-7 |z_k - m| of NumPy's float64 softmax, relatively (absolutely 1.7e-38 for the smallest).
//   `scratch` holds softmax_scratch<T>(K).size() floats or more.
// A logit that is not finite is named in st (first in the row); the row's values are then meaningless.
template <class T>
inline void softmax_row(const Matrix<T>& z, int64_t i, double* q, Status& st, float* scratch) {
    const int64_t K = z.cols;
    bool finite = true;
    if constexpr (std::is_same_v<T, double>) {
        (void)scratch;
        double m = -INFINITY;
        for (int64_t k = 0; k < K; ++k) {
            const double v = z(i, k);
            q[k] = v;
            finite = finite && is_finite(v);
            m = v > m ? v : m;
        }
        for (int64_t k = 0; k < K; ++k) q[k] = std::exp(q[k] - m);
    } else {
        // the float values themselves (exact), their maximum (the float of the double maximum), then the
        // differences in float in place
        if (z.row_contiguous() && std::is_same_v<T, float>) {
            const float* r = reinterpret_cast<const float*>(z.row(i));
            for (int64_t k = 0; k < K; ++k) scratch[k] = r[k];
        } else {
            for (int64_t k = 0; k < K; ++k) scratch[k] = static_cast<float>(z(i, k));
        }
        // in 8 lanes (vector registers): the maximum of the values that are not NaN does not depend on
        // the order (but for the sign of a zero maximum, which no difference z_k - m below sees)
        float lanes[8];
        bool lanes_finite[8];
        for (int l = 0; l < 8; ++l) {
            lanes[l] = -INFINITY;
            lanes_finite[l] = true;
        }
        const int64_t K8 = K - K % 8;
        for (int64_t k = 0; k < K8; k += 8)
            for (int l = 0; l < 8; ++l) {
                const float v = scratch[k + l];
                lanes_finite[l] &= v - v == 0.0f;
                lanes[l] = v > lanes[l] ? v : lanes[l];
            }
        float m = -INFINITY;
        for (int l = 0; l < 8; ++l) {
            finite &= lanes_finite[l];
            m = lanes[l] > m ? lanes[l] : m;
        }
        for (int64_t k = K8; k < K; ++k) {
            const float v = scratch[k];
            finite &= v - v == 0.0f;
            m = v > m ? v : m;
        }
        for (int64_t k = 0; k < K; ++k) scratch[k] -= m;
        exp_f32_buffer(scratch, softmax_padded(K));  // pad lanes: never read
        for (int64_t k = 0; k < K; ++k) q[k] = static_cast<double>(scratch[k]);
    }
    if (!finite)
        for (int64_t k = 0; k < K; ++k)
            if (!is_finite(z(i, k))) {
                Status bad;
                bad.set(kScoreNotFinite, i, k, z(i, k));
                st.merge(bad);
                break;
            }
    const double total = pairwise_sum(q, K);
    for (int64_t k = 0; k < K; ++k) q[k] /= total;
}

// Rows per chunk of the row-wise passes below (about 2^14 values).
inline int64_t step_chunk_rows(int64_t K) { return std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(K, 1)); }

// Rows per chunk of apply_columns: step_chunk_rows, and up to kStepApplyRows while a chunk holds at most
// kStepApplyValues values. Each chunk reads every model's knots and table (2K of them for two sets: beyond
// the L2 cache at large K) once, for its rows: at 16 rows a chunk (K >= 1024) those reads took a third of
// the time. The cap keeps the per-thread scratch of a chunk (StepScratch) at 2 x 2 MB.
constexpr int64_t kStepApplyRows = 128;
constexpr int64_t kStepApplyValues = int64_t{1} << 18;
inline int64_t step_apply_rows(int64_t K) {
    return std::max<int64_t>(step_chunk_rows(K), std::min<int64_t>(kStepApplyRows, kStepApplyValues / std::max<int64_t>(K, 1)));
}

// The softmax of every row of the (N, K) logits z into the C-ordered float64 (N, K) out; the
// status names the first logit that is not finite (row-major order). Rows are independent:
// the result is the same for any thread count.
template <class T>
Status softmax_rows(const Matrix<T>& z, double* out) {
    const int64_t N = z.rows, K = z.cols;
    const int64_t chunk = step_chunk_rows(K);
    std::vector<Status> statuses(static_cast<size_t>(std::max<int64_t>((N + chunk - 1) / chunk, 1)));
    chunked_for(N, chunk, K, [&](int64_t begin, int64_t end) {
        Status& st = statuses[static_cast<size_t>(begin / chunk)];
        std::vector<float> scratch = softmax_scratch<T>(K);
        for (int64_t i = begin; i < end; ++i) softmax_row(z, i, out + i * K, st, scratch.data());
    });
    Status total;
    for (const Status& st : statuses) total.merge(st);
    return total;
}

enum StepMode : int { kStepInterp = 0, kStepLeft = 1 };
enum ScoreCheck : int { kCheckNone = 0, kCheckFinite = 1, kCheckProbability = 2 };

// The K step functions of one-vs-rest calibration, prepared once for any number of
// apply_columns calls (x, y and offsets as ColumnModels; the caller has checked that
// each model's knots are sorted and that it has as many y as x (kStepInterp, m >= 1)
// or one y more (kStepLeft)). Model k's knots are stored at xs[xs_off[k]..] followed by
// `pad[k]` copies of +inf, so that a value's count within its table bucket is a search
// of a fixed length per model: `span[k]` (a power of two >= the largest number of
// knots in one bucket of model k) knots from the bucket's first, never past the
// padding. The knots past the bucket are >= its upper edge (or +inf), so they never
// count: the result is the count over all knots, the same as a full search.
// When every model has at most 65535 knots the tables are also kept as uint16 (`narrow`,
// a quarter of the bytes: 5 KB a model, so that the K tables of a block's pass stay in
// the L2 cache); the lookups then read those, with the same counts.
struct StepTables {
    int mode = kStepInterp;
    int64_t K = 0;
    std::vector<int64_t> xs_off, m, y_off, span, tables;  // tables: K x (kKnotTableSize + 1)
    std::vector<uint16_t> narrow;                          // the tables as uint16, or empty
    std::vector<double> xs, y, slopes;                    // slopes[xs_off[k] + j]: np.interp's slope of knot j
};

inline StepTables step_tables(const double* x, const int64_t* x_off, const double* y, const int64_t* y_off,
                              int64_t K, int mode) {
    StepTables t;
    t.mode = mode;
    t.K = K;
    t.m.resize(static_cast<size_t>(K));
    t.span.resize(static_cast<size_t>(K));
    t.xs_off.resize(static_cast<size_t>(K + 1));
    t.y_off.assign(y_off, y_off + K + 1);
    t.y.assign(y + y_off[0], y + y_off[K]);
    t.tables.resize(static_cast<size_t>(K * (kKnotTableSize + 1)));
    // the tables first (they give each model's span), one task per model
    chunked_for(K, 1, kKnotTableSize + 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
            const int64_t mk = x_off[k + 1] - x_off[k];
            int64_t* table = t.tables.data() + k * (kKnotTableSize + 1);
            knot_table(x + x_off[k], mk, table);
            int64_t widest = 0;
            for (int64_t b = 0; b < kKnotTableSize; ++b) widest = std::max(widest, table[b + 1] - table[b]);
            int64_t span = widest > 0 ? 1 : 0;
            while (span < widest) span *= 2;
            t.m[static_cast<size_t>(k)] = mk;
            t.span[static_cast<size_t>(k)] = span;
        }
    });
    if (K > 0 && *std::max_element(t.m.begin(), t.m.end()) <= 65535)
        t.narrow.assign(t.tables.begin(), t.tables.end());
    t.xs_off[0] = 0;
    for (int64_t k = 0; k < K; ++k)
        t.xs_off[static_cast<size_t>(k + 1)] = t.xs_off[static_cast<size_t>(k)] + t.m[static_cast<size_t>(k)] +
                                               t.span[static_cast<size_t>(k)];
    t.xs.assign(static_cast<size_t>(t.xs_off[static_cast<size_t>(K)]), INFINITY);
    t.slopes.assign(t.xs.size(), 0.0);
    for (int64_t k = 0; k < K; ++k) {
        const int64_t mk = t.m[static_cast<size_t>(k)];
        double* xk = t.xs.data() + t.xs_off[static_cast<size_t>(k)];
        std::copy(x + x_off[k], x + x_off[k] + mk, xk);
        if (mode == kStepInterp) {
            const double* yk = y + y_off[k];
            double* sk = t.slopes.data() + t.xs_off[static_cast<size_t>(k)];
            for (int64_t j = 0; j + 1 < mk; ++j) sk[j] = (yk[j + 1] - yk[j]) / (xk[j + 1] - xk[j]);
        }
    }
    return t;
}

// Knots of x[0..L) before v, L = 0, 1, 2, 4 or 8: independent comparisons, no branch.
template <bool Right, int L>
inline int64_t count_span(const double* x, double v) {
    int64_t c = 0;
    for (int j = 0; j < L; ++j) c += knot_before<Right>(x[j], v) ? 1 : 0;
    return c;
}

// Knots of x[0..L) before v, L a power of two (x[L - 1] readable): L comparisons' worth of
// binary search in log2(L) + 1 fixed steps.
template <bool Right>
inline int64_t count_pow2(const double* x, int64_t L, double v) {
    int64_t pos = 0;
    for (int64_t step = L / 2; step >= 1; step /= 2) pos += knot_before<Right>(x[pos + step - 1], v) ? step : 0;
    return pos + (knot_before<Right>(x[pos], v) ? 1 : 0);
}

// Rows of a column read per batch in apply_column.
constexpr int64_t kStepBatch = 32;

// Column k of rows [begin, end) into column k of out's rows 0..end - begin (C-ordered, K columns):
// Mode kStepInterp / kStepLeft, L the model's span (0..8), or -1 for a longer span (count_pow2);
// `table` the model's bucket table (int64 or uint16).
// Rows go in batches of kStepBatch: first every value of the batch and its bucket's table
// entry (independent loads, many in flight), then the counts and the values of the map.
template <class T, int Mode, int L, class Tab>
inline void apply_column(const Matrix<T>& s, const StepTables& t, const Tab* table, int64_t k, int check,
                         int64_t begin, int64_t end, double* out, Status& st) {
    constexpr bool Right = Mode == kStepInterp;
    const int64_t K = t.K;
    const double* xk = t.xs.data() + t.xs_off[static_cast<size_t>(k)];
    const double* yk = t.y.data() + t.y_off[static_cast<size_t>(k)];
    const double* sk = t.slopes.data() + t.xs_off[static_cast<size_t>(k)];
    const int64_t m = t.m[static_cast<size_t>(k)], span = t.span[static_cast<size_t>(k)];
    double v[kStepBatch];
    int64_t a[kStepBatch];
    for (int64_t i0 = begin; i0 < end; i0 += kStepBatch) {
        const int64_t n = std::min(kStepBatch, end - i0);
        for (int64_t j = 0; j < n; ++j) {
            const double x = s(i0 + j, k);
            const uint64_t b = knot_bucket(x);
            const bool inside = b < static_cast<uint64_t>(kKnotTableSize);
            const int64_t first = static_cast<int64_t>(table[inside ? b : 0]);
            v[j] = x;
            a[j] = inside ? first : -1;  // outside [0, 1): a search of all knots
        }
        if (check != kCheckNone)
            for (int64_t j = 0; j < n; ++j) {
                const double x = v[j];
                const bool finite = is_finite(x);
                if (!finite || (check == kCheckProbability &&
                                !(x >= -kProbabilityTolerance && x <= 1.0 + kProbabilityTolerance))) {
                    Status bad;
                    bad.set(finite ? kProbabilityOutOfRange : kScoreNotFinite, i0 + j, k, x);
                    st.merge(bad);
                }
            }
        for (int64_t j = 0; j < n; ++j) {
            const double x = v[j];
            int64_t c;
            if (a[j] >= 0) {
                c = a[j] + (L >= 0 ? count_span<Right, (L < 0 ? 0 : L)>(xk + a[j], x)
                                   : count_pow2<Right>(xk + a[j], span, x));
            } else {
                c = count_sorted<Right>(xk, m, x);
            }
            out[(i0 - begin + j) * K + k] = Mode == kStepInterp ? interp_at(xk, yk, sk, m, c, x) : yk[c];
        }
    }
}

template <class T, int Mode, class Tab>
inline void apply_column_span(const Matrix<T>& s, const StepTables& t, const Tab* table, int64_t k, int check,
                              int64_t begin, int64_t end, double* out, Status& st) {
    switch (t.span[static_cast<size_t>(k)]) {
        case 0: return apply_column<T, Mode, 0>(s, t, table, k, check, begin, end, out, st);
        case 1: return apply_column<T, Mode, 1>(s, t, table, k, check, begin, end, out, st);
        case 2: return apply_column<T, Mode, 2>(s, t, table, k, check, begin, end, out, st);
        case 4: return apply_column<T, Mode, 4>(s, t, table, k, check, begin, end, out, st);
        case 8: return apply_column<T, Mode, 8>(s, t, table, k, check, begin, end, out, st);
        default: return apply_column<T, Mode, -1>(s, t, table, k, check, begin, end, out, st);
    }
}

template <class T>
inline void apply_column_mode(const Matrix<T>& s, const StepTables& t, int64_t k, int check, int64_t begin,
                              int64_t end, double* out, Status& st) {
    const int64_t at = k * (kKnotTableSize + 1);
    const bool narrow = !t.narrow.empty();
    if (t.mode == kStepInterp && narrow)
        return apply_column_span<T, kStepInterp>(s, t, t.narrow.data() + at, k, check, begin, end, out, st);
    if (t.mode == kStepInterp)
        return apply_column_span<T, kStepInterp>(s, t, t.tables.data() + at, k, check, begin, end, out, st);
    if (narrow) return apply_column_span<T, kStepLeft>(s, t, t.narrow.data() + at, k, check, begin, end, out, st);
    apply_column_span<T, kStepLeft>(s, t, t.tables.data() + at, k, check, begin, end, out, st);
}

// The per-thread scratch of apply_columns' chunks: the chunk's softmax (q, with its float scratch) and
// its mapped values (when renormalised), each rows x K doubles, grown to the largest chunk and kept (no
// allocation and no page faults per chunk) up to kStepApplyValues doubles each; a larger one (16 rows of
// K > 16384) is released after its chunk (trim), so a thread keeps at most 2 x 2 MB.
struct StepScratch {
    std::vector<double> q, mapped;
    std::vector<float> softmax;
    void trim() {
        if (std::max(mapped.size(), q.size()) > static_cast<size_t>(kStepApplyValues)) *this = StepScratch{};
    }
    template <class T>
    static StepScratch& local(int64_t values, bool renormalise, bool with_softmax, int64_t K) {
        thread_local StepScratch scratch;
        const auto grow = [](auto& v, int64_t n) {
            if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
        };
        if (renormalise) grow(scratch.mapped, values);
        if (with_softmax) {
            grow(scratch.q, values);
            grow(scratch.softmax, softmax_scratch_size<T>(K));
        }
        return scratch;
    }
};

// The arguments of apply_columns' chunks.
template <class T>
struct StepArgs {
    const Matrix<T>& s;
    const StepTables* const* t;
    double* const* outs;
    int64_t n_sets;
    int check;
    bool renormalise, softmax;
};

// Rows [begin, end) of apply_columns: the chunk's softmax into scratch.q (row-major, when a.softmax),
// then for each set its K columns mapped into scratch.mapped (the strided stores stay in the cache) and
// the rows renormalised from there into outs[j] (whole rows written in order); without renormalisation
// the columns are mapped straight into outs[j] (nothing else to do with them).
template <class T>
CALIBKIT_INLINE void step_chunk(const StepArgs<T>& a, StepScratch& scratch, int64_t begin, int64_t end, Status& st) {
    const int64_t K = a.s.cols, n = end - begin;
    double* q = scratch.q.data();
    if (a.softmax) {
        Status ignored;
        for (int64_t i = begin; i < end; ++i)
            softmax_row(a.s, i, q + (i - begin) * K, a.check != kCheckNone ? st : ignored, scratch.softmax.data());
    }
    const Matrix<double> qm{reinterpret_cast<const char*>(q), n, K, K * static_cast<int64_t>(sizeof(double)),
                            static_cast<int64_t>(sizeof(double))};
    const double uniform = 1.0 / static_cast<double>(K);
    for (int64_t j = 0; j < a.n_sets; ++j) {
        const int c = j == 0 ? a.check : kCheckNone;  // the same scores for every set: checked once
        double* out = a.outs[j] + begin * K;
        double* mapped = a.renormalise ? scratch.mapped.data() : out;
        for (int64_t k = 0; k < K; ++k) {
            if (a.softmax)
                apply_column_mode(qm, *a.t[j], k, kCheckNone, 0, n, mapped, st);
            else
                apply_column_mode(a.s, *a.t[j], k, c, begin, end, mapped, st);
        }
        if (!a.renormalise) continue;
        for (int64_t i = 0; i < n; ++i) {
            const double* v = mapped + i * K;
            double* row = out + i * K;
            const double total = pairwise_sum(v, K);
            if (total > 0.0) {
                for (int64_t k = 0; k < K; ++k) row[k] = v[k] / total;
            } else {
                for (int64_t k = 0; k < K; ++k) row[k] = uniform;
            }
        }
    }
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void step_chunk_avx2(const StepArgs<T>& a, StepScratch& scratch, int64_t begin, int64_t end,
                                         Status& st) {
    step_chunk(a, scratch, begin, end, st);
}
#endif

// For each of the n_sets models `t[j]` (each with K = s.cols models): outs[j][i, k] = model k of
// t[j] at s[i, k] for the (N, K) block s, each outs[j] C-ordered (N, K) float64 (with one set, it
// may be s itself when s is that float64 array; with more, memory separate from s and from each
// other). Mode kStepInterp: np.interp(s, x_k, y_k) (IsotonicCalibration); kStepLeft:
// y_k[np.searchsorted(x_k, s, side="left")] (HistogramBinning, x_k the inner bin edges). With
// `renormalise` each row is then divided by its pairwise sum (a row summing to 0 becomes 1/K).
// With `softmax`, s holds logits and the models read their softmax (softmax_row; `check` must
// then be kCheckNone or kCheckFinite, and applies to the logits): the numbers of softmax_rows
// followed by a call without it, with no N x K temporary. `check` (kCheckProbability, or
// kCheckFinite) applies to the scores otherwise.
// One pool run for the block: rows go in fixed chunks (the tasks, step_chunk: an AVX2 clone where
// the CPU has it, the same arithmetic); a chunk's softmax is computed once into a scratch (in the L2
// cache), every set maps it column by column (the model's table in the L1 cache) into a second
// scratch, whose rows are then renormalised into the output. Every value is computed on its own: the
// result is the same for any thread count and any split of the rows into calls. The returned status
// names the first bad score in row-major order.
template <class T>
Status apply_columns(const Matrix<T>& s, const StepTables* const* t, double* const* outs, int64_t n_sets, int check,
                     bool renormalise, bool softmax = false) {
    const int64_t N = s.rows, K = s.cols;
    const int64_t chunk = step_apply_rows(K);
    const int64_t n_chunks = (N + chunk - 1) / chunk;
    std::vector<Status> statuses(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    const StepArgs<T> a{s, t, outs, n_sets, check, renormalise, softmax};
#if CALIBKIT_HAVE_AVX2_CLONES
    const bool avx2 = simd::use_avx2();
#endif
    chunked_for(N, chunk, K * n_sets, [&](int64_t begin, int64_t end) {
        Status& st = statuses[static_cast<size_t>(begin / chunk)];
        StepScratch& scratch = StepScratch::local<T>(chunk * K, renormalise, softmax, K);
#if CALIBKIT_HAVE_AVX2_CLONES
        if (avx2)
            step_chunk_avx2(a, scratch, begin, end, st);
        else
#endif
            step_chunk(a, scratch, begin, end, st);
        scratch.trim();
    });
    Status total;
    for (const Status& st : statuses) total.merge(st);
    return total;
}

// apply_columns of one set of models.
template <class T>
Status apply_columns(const Matrix<T>& s, const StepTables& t, int check, bool renormalise, double* out,
                     bool softmax = false) {
    const StepTables* sets[1] = {&t};
    double* outs[1] = {out};
    return apply_columns(s, sets, outs, 1, check, renormalise, softmax);
}

// apply_columns with the tables of the K models (x, x_off, y, y_off) built for this call.
template <class T>
Status apply_columns(const Matrix<T>& s, const double* x, const int64_t* x_off, const double* y,
                     const int64_t* y_off, int mode, int check, bool renormalise, double* out,
                     bool softmax = false) {
    return apply_columns(s, step_tables(x, x_off, y, y_off, s.cols, mode), check, renormalise, out, softmax);
}

}  // namespace calibkit

namespace calibkit {

// The first bad score of s in row-major order: not finite (kCheckFinite), or also
// outside [-tol, 1 + tol] (kCheckProbability). One chunked pass, any thread count.
template <class T>
Status check_columns(const Matrix<T>& s, int check) {
    if (check == kCheckNone) return Status();
    const int64_t N = s.rows, K = s.cols;
    const int64_t chunk = step_chunk_rows(K);
    std::vector<Status> statuses(static_cast<size_t>(std::max<int64_t>((N + chunk - 1) / chunk, 1)));
    chunked_for(N, chunk, K, [&](int64_t begin, int64_t end) {
        Status& st = statuses[static_cast<size_t>(begin / chunk)];
        for (int64_t i = begin; i < end && st.code == kOk; ++i)
            for (int64_t k = 0; k < K; ++k) {
                const double v = s(i, k);
                const bool finite = is_finite(v);
                if (!finite || (check == kCheckProbability &&
                                !(v >= -kProbabilityTolerance && v <= 1.0 + kProbabilityTolerance))) {
                    st.set(finite ? kProbabilityOutOfRange : kScoreNotFinite, i, k, v);
                    break;
                }
            }
    });
    Status total;
    for (const Status& st : statuses) total.merge(st);
    return total;
}

}  // namespace calibkit
