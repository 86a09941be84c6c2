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
