// Weighted isotonic regression by pool-adjacent-violators (Ayer et al. 1955;
// Barlow et al. 1972), linear time on sorted input, and the stable argsort that
// puts unsorted input in order.
//
// Given points in the order of x (ties in x pooled first into one point with
// their weighted mean and summed weight, as scikit-learn does), PAV finds the
// non-decreasing (or non-increasing) sequence f minimising sum_i w_i (y_i - f_i)^2:
// scan left to right, keep a stack of blocks (sum w, sum w y), and merge the top
// two while the lower block's mean is >= the upper one's. Each point is pushed
// once and merged at most once: O(n). The blocks left are maximal runs of equal
// fitted value.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"

namespace calibkit {

// Order-preserving map of a double to an unsigned integer (-0.0 is read as +0.0,
// so equal values get equal keys; NaN is rejected before this is used).
inline uint64_t sort_key(double v) {
    v += 0.0;
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return (b >> 63) ? ~b : (b | 0x8000000000000000ull);
}

// Stable ascending argsort of x (LSD radix sort on 8-bit digits of the keys,
// skipping digits that are the same for every key). Chunks have a fixed size
// and their counts are combined in chunk order, so the result is the same for
// any thread count (and, being stable, it is np.argsort(x, kind="stable")).
// On return `keys` holds the sorted keys.
inline void stable_argsort(const Vector<double>& x, int64_t* order, std::vector<uint64_t>& keys) {
    const int64_t n = x.size;
    constexpr int64_t kChunk = 1 << 16;
    constexpr int kDigits = 8, kBuckets = 256;
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    keys.resize(static_cast<size_t>(n));
    std::vector<uint64_t> keys_tmp(static_cast<size_t>(n));
    std::vector<int64_t> order_tmp(static_cast<size_t>(n));
    // Digit histograms of all keys (the same whatever the order), to skip constant digits.
    std::vector<int64_t> chunk_all(static_cast<size_t>(n_chunks * kDigits * kBuckets));
    chunked_for(n, kChunk, 4, [&](int64_t begin, int64_t end) {
        int64_t* h = chunk_all.data() + (begin / kChunk) * kDigits * kBuckets;
        for (int64_t i = begin; i < end; ++i) {
            const uint64_t k = sort_key(x[i]);
            keys[static_cast<size_t>(i)] = k;
            order[i] = i;
            for (int d = 0; d < kDigits; ++d) ++h[d * kBuckets + ((k >> (8 * d)) & 0xff)];
        }
    });
    std::vector<int64_t> chunk_hist(static_cast<size_t>(n_chunks * kBuckets));
    uint64_t* src_keys = keys.data();
    uint64_t* dst_keys = keys_tmp.data();
    int64_t* src_order = order;
    int64_t* dst_order = order_tmp.data();
    for (int d = 0; d < kDigits; ++d) {
        int64_t nonzero = 0;
        for (int b = 0; b < kBuckets; ++b) {
            int64_t c = 0;
            for (int64_t ch = 0; ch < n_chunks; ++ch) c += chunk_all[static_cast<size_t>((ch * kDigits + d) * kBuckets + b)];
            nonzero += c > 0;
        }
        if (nonzero <= 1) continue;  // every key has this digit: the pass would not move anything
        const int shift = 8 * d;
        chunked_for(n, kChunk, 4, [&](int64_t begin, int64_t end) {
            int64_t* h = chunk_hist.data() + (begin / kChunk) * kBuckets;
            std::fill(h, h + kBuckets, 0);
            for (int64_t i = begin; i < end; ++i) ++h[(src_keys[i] >> shift) & 0xff];
        });
        // Exclusive offsets in (bucket, chunk) order: stable.
        int64_t running = 0;
        for (int b = 0; b < kBuckets; ++b)
            for (int64_t ch = 0; ch < n_chunks; ++ch) {
                int64_t& h = chunk_hist[static_cast<size_t>(ch * kBuckets + b)];
                const int64_t c = h;
                h = running;
                running += c;
            }
        chunked_for(n, kChunk, 4, [&](int64_t begin, int64_t end) {
            int64_t* h = chunk_hist.data() + (begin / kChunk) * kBuckets;
            for (int64_t i = begin; i < end; ++i) {
                const uint64_t k = src_keys[i];
                const int64_t at = h[(k >> shift) & 0xff]++;
                dst_keys[at] = k;
                dst_order[at] = src_order[i];
            }
        });
        std::swap(src_keys, dst_keys);
        std::swap(src_order, dst_order);
    }
    if (src_order != order) {
        std::memcpy(order, src_order, static_cast<size_t>(n) * sizeof(int64_t));
        std::memcpy(keys.data(), src_keys, static_cast<size_t>(n) * sizeof(uint64_t));
    }
}

struct PavBlocks {
    std::vector<int64_t> starts;  // block b is [starts[b], starts[b + 1]) in sorted order; n at the end
    std::vector<double> values;   // fitted value of each block
    std::vector<double> weights;  // summed weight of each block
};

// PAV over the points y[order[j]], j = 0..n-1 (order == nullptr: the identity).
// `keys` (sorted, or null) marks ties in x: equal keys are pooled first.
// `fitted` (or null) receives each point's fitted value at its input position.
inline PavBlocks pav(const Vector<double>& y, const Vector<double>& w, bool weighted, const int64_t* order,
                     const uint64_t* keys, bool increasing, double* fitted) {
    const int64_t n = y.size;
    const double sign = increasing ? 1.0 : -1.0;
    PavBlocks out;
    std::vector<double> sum_w, sum_wy, mean;
    std::vector<int64_t> start;
    for (int64_t j = 0; j < n;) {
        const int64_t first = j;
        double sw = 0.0, swy = 0.0;
        do {
            const int64_t i = order ? order[j] : j;
            const double wi = weighted ? w[i] : 1.0;
            sw += wi;
            swy += wi * (sign * y[i]);
            ++j;
        } while (keys && j < n && keys[j] == keys[first]);
        start.push_back(first);
        sum_w.push_back(sw);
        sum_wy.push_back(swy);
        mean.push_back(swy / sw);
        // Pool while the block below is not strictly smaller.
        while (mean.size() >= 2 && mean[mean.size() - 2] >= mean.back()) {
            const size_t top = mean.size() - 1;
            sum_w[top - 1] += sum_w[top];
            sum_wy[top - 1] += sum_wy[top];
            mean[top - 1] = sum_wy[top - 1] / sum_w[top - 1];
            sum_w.pop_back();
            sum_wy.pop_back();
            mean.pop_back();
            start.pop_back();
        }
    }
    const size_t nb = mean.size();
    out.starts = std::move(start);
    out.starts.push_back(n);
    out.values.resize(nb);
    for (size_t b = 0; b < nb; ++b) out.values[b] = sign * mean[b];
    out.weights = std::move(sum_w);
    if (fitted) {
        for (size_t b = 0; b < nb; ++b)
            for (int64_t j = out.starts[b]; j < out.starts[b + 1]; ++j) fitted[order ? order[j] : j] = out.values[b];
    }
    return out;
}

}  // namespace calibkit
