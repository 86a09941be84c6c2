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
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"
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

// The isotonic calibration map of the n scores v against the targets 1[labels == positive]:
// rows whose weight is not > 0 are left out (they carry no information), the rest are
// stably sorted by score (ties pooled) and PAV'd; each block gives its first and last
// score (one point when they are equal) with the block's value. This is what
// IsotonicCalibration stored before this kernel, computed by the same arithmetic.
inline void isotonic_column(const double* v, int64_t n, const Vector<int64_t>& labels, int64_t positive,
                            const Vector<double>& w, std::vector<double>& xo, std::vector<double>& yo) {
    const bool weighted = w.data != nullptr;
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
    radix_sort<true>(keys.data(), order.get(), m);
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

// Where a value falls among sorted knots. A table of kKnotTableSize + 1 bucket edges
// e_0 < e_1 < ... < e_size = 1 over [0, 1) holds, for each edge, the number of knots
// < e_b; a value x in bucket b (e_b <= x < e_{b+1}) then has its count between
// table[b] and table[b + 1], found by a short binary search there (values outside
// [0, 1) search all knots). The buckets follow the float's bit pattern so that every
// scale gets its own: bucket 0 is [0, 2^-40); below 2^-10 (softmax probabilities
// mostly are) each binary octave [2^e, 2^(e+1)) has kKnotLogSub buckets, indexed by
// the exponent and the top mantissa bits; from 2^-10 to 1 the buckets are linear,
// of width 2^-10.
constexpr int kKnotLogBits = 5;                                   // mantissa bits of the log buckets
constexpr int64_t kKnotLogSub = int64_t{1} << kKnotLogBits;       // log buckets per octave
constexpr int64_t kKnotLogOctaves = 30;                           // octaves [2^-40, 2^-10)
constexpr int64_t kKnotLinear = 1024;                             // linear buckets of width 2^-10 on [2^-10, 1)
constexpr int64_t kKnotLogEnd = 1 + kKnotLogOctaves * kKnotLogSub;  // first linear bucket (edge 2^-10)
constexpr int64_t kKnotTableSize = kKnotLogEnd + kKnotLinear - 1;  // buckets; the table has one entry more
constexpr uint64_t kKnotLogShift = 52 - kKnotLogBits;
constexpr uint64_t kKnotLogBase = uint64_t{1023 - 40} << kKnotLogBits;  // bits(2^-40) >> kKnotLogShift

// The lower edge e_b of bucket b (e_size = 1).
inline double knot_edge(int64_t b) {
    if (b == 0) return 0.0;
    if (b < kKnotLogEnd) {
        const uint64_t bits = (kKnotLogBase + static_cast<uint64_t>(b - 1)) << kKnotLogShift;
        double e;
        std::memcpy(&e, &bits, sizeof e);
        return e;
    }
    return static_cast<double>(b - kKnotLogEnd + 1) / static_cast<double>(kKnotLinear);
}

// The bucket of x in [0, 1).
inline int64_t knot_bucket(double x) {
    if (x >= 0x1p-10) return kKnotLogEnd - 1 + static_cast<int64_t>(x * static_cast<double>(kKnotLinear));
    if (!(x >= 0x1p-40)) return 0;
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    return 1 + static_cast<int64_t>((bits >> kKnotLogShift) - kKnotLogBase);
}

inline void knot_table(const double* knots, int64_t m, int64_t* table) {
    int64_t j = 0;
    for (int64_t b = 0; b <= kKnotTableSize; ++b) {
        const double edge = b == kKnotTableSize ? 1.0 : knot_edge(b);
        while (j < m && knots[j] < edge) ++j;
        table[b] = j;
    }
}

// Number of knots < x (Right = false: np.searchsorted side="left") or <= x (Right = true).
template <bool Right>
inline int64_t knots_below(const double* knots, int64_t m, const int64_t* table, double x) {
    int64_t a = 0, e = m;
    if (x >= 0.0 && x < 1.0) {
        const int64_t b = knot_bucket(x);
        a = table[b];
        e = table[b + 1];
    }
    // Branch-free binary search in [a, e): the answer stays in [base, base + len].
    const double* base = knots + a;
    int64_t len = e - a;
    while (len > 1) {
        const int64_t half = len / 2;
        base = (Right ? base[half] <= x : base[half] < x) ? base + half : base;
        len -= half;
    }
    return (base - knots) + (len == 1 && (Right ? *base <= x : *base < x) ? 1 : 0);
}

// np.interp(x, xp, fp) for strictly increasing xp of length m >= 1, by NumPy's own
// arithmetic (compiled_base.c, with its precomputed slopes[j] = (fp[j + 1] - fp[j]) /
// (xp[j + 1] - xp[j])): c is the number of knots <= x.
inline double interp_at(const double* xp, const double* fp, const double* slopes, int64_t m, int64_t c, double x) {
    if (m == 1 || c == 0) return fp[0];
    const int64_t j = c - 1;
    if (j >= m - 1) return fp[m - 1];
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

enum StepMode : int { kStepInterp = 0, kStepLeft = 1 };
enum ScoreCheck : int { kCheckNone = 0, kCheckFinite = 1, kCheckProbability = 2 };

// out[i, k] = model k at s[i, k] for an (N, K) block, out C-ordered (N, K) float64 (it
// may be s itself when s is that float64 array). Mode kStepInterp: np.interp(s, x_k, y_k)
// (IsotonicCalibration); kStepLeft: y_k[np.searchsorted(x_k, s, side="left")]
// (HistogramBinning, x_k the inner bin edges). With `renormalise` each row is then
// divided by its pairwise sum (a row summing to 0 becomes 1/K), in the same pass. Rows
// go in fixed chunks, every value on its own: the result is the same for any thread
// count. The returned status names the first bad score in row-major order (`check`).
template <class T>
Status apply_columns(const Matrix<T>& s, const double* x, const int64_t* x_off, const double* y,
                     const int64_t* y_off, int mode, int check, bool renormalise, double* out) {
    const int64_t N = s.rows, K = s.cols;
    std::vector<int64_t> tables(static_cast<size_t>(K * (kKnotTableSize + 1)));
    std::vector<double> slopes(static_cast<size_t>(mode == kStepInterp ? x_off[K] : 0));
    for (int64_t k = 0; k < K; ++k) {
        knot_table(x + x_off[k], x_off[k + 1] - x_off[k], tables.data() + k * (kKnotTableSize + 1));
        if (mode == kStepInterp)
            for (int64_t j = x_off[k]; j + 1 < x_off[k + 1]; ++j)
                slopes[static_cast<size_t>(j)] = (y[y_off[k] + (j - x_off[k]) + 1] - y[y_off[k] + (j - x_off[k])]) /
                                                 (x[j + 1] - x[j]);
    }
    const int64_t chunk = std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(K, 1));
    const int64_t n_chunks = (N + chunk - 1) / chunk;
    std::vector<Status> statuses(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    const double uniform = 1.0 / static_cast<double>(K);
    chunked_for(N, chunk, K, [&](int64_t begin, int64_t end) {
        Status& st = statuses[static_cast<size_t>(begin / chunk)];
        for (int64_t k = 0; k < K; ++k) {
            const double* xk = x + x_off[k];
            const double* yk = y + y_off[k];
            const double* sk = slopes.data() + (mode == kStepInterp ? x_off[k] : 0);
            const int64_t m = x_off[k + 1] - x_off[k];
            const int64_t* table = tables.data() + k * (kKnotTableSize + 1);
            for (int64_t i = begin; i < end; ++i) {
                const double v = s(i, k);
                if (check != kCheckNone) {
                    const bool finite = is_finite(v);
                    if (!finite || (check == kCheckProbability && !(v >= -kProbabilityTolerance &&
                                                                    v <= 1.0 + kProbabilityTolerance))) {
                        Status bad;
                        bad.set(finite ? kProbabilityOutOfRange : kScoreNotFinite, i, k, v);
                        st.merge(bad);
                    }
                }
                out[i * K + k] = mode == kStepInterp ? interp_at(xk, yk, sk, m, knots_below<true>(xk, m, table, v), v)
                                                     : yk[knots_below<false>(xk, m, table, v)];
            }
        }
        if (renormalise)
            for (int64_t i = begin; i < end; ++i) {
                double* row = out + i * K;
                const double total = pairwise_sum(row, K);
                if (total > 0.0) {
                    for (int64_t k = 0; k < K; ++k) row[k] /= total;
                } else {
                    for (int64_t k = 0; k < K; ++k) row[k] = uniform;
                }
            }
    });
    Status total;
    for (const Status& st : statuses) total.merge(st);
    return total;
}

}  // namespace calibkit

namespace calibkit {

// The first bad score of s in row-major order: not finite (kCheckFinite), or also
// outside [-tol, 1 + tol] (kCheckProbability). One chunked pass, any thread count.
template <class T>
Status check_columns(const Matrix<T>& s, int check) {
    if (check == kCheckNone) return Status();
    const int64_t N = s.rows, K = s.cols;
    const int64_t chunk = std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(K, 1));
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
