// Sorting doubles by their bits: an order-preserving integer key per value and
// a deterministic parallel LSD radix sort of the keys (used by PAV and by the
// ranking metrics).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
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

// Inverse of sort_key.
inline double key_value(uint64_t k) {
    const uint64_t b = (k >> 63) ? (k & 0x7fffffffffffffffull) : ~k;
    double v;
    std::memcpy(&v, &b, sizeof v);
    return v;
}

// Stable ascending LSD radix sort of n keys on 11-bit digits (6 passes; a digit
// that every key shares is skipped), moving `order` (if not null) alongside.
// Chunks have a fixed size and their counts are combined in chunk order, so the
// result is the same for any thread count.
template <bool WithOrder>
void radix_sort(uint64_t* keys, int64_t* order, int64_t n) {
    constexpr int kBits = 11, kDigits = 6, kBuckets = 1 << kBits;
    const int64_t chunk = std::max<int64_t>(1 << 16, (n + 255) / 256);  // at most 256 chunks
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    std::unique_ptr<uint64_t[]> keys_tmp(new uint64_t[static_cast<size_t>(n)]);
    std::unique_ptr<int64_t[]> order_tmp(WithOrder ? new int64_t[static_cast<size_t>(n)] : nullptr);
    const auto digit = [](uint64_t k, int d) { return static_cast<int>((k >> (kBits * d)) & (kBuckets - 1)); };
    // Digit histograms of all keys (the same whatever the order), to skip constant digits.
    std::vector<uint32_t> all(static_cast<size_t>(n_chunks * kDigits * kBuckets));
    chunked_for(n, chunk, 4, [&](int64_t begin, int64_t end) {
        uint32_t* h = all.data() + (begin / chunk) * kDigits * kBuckets;
        for (int64_t i = begin; i < end; ++i)
            for (int d = 0; d < kDigits; ++d) ++h[d * kBuckets + digit(keys[i], d)];
    });
    std::vector<int64_t> offsets(static_cast<size_t>(n_chunks * kBuckets));
    uint64_t* src_keys = keys;
    uint64_t* dst_keys = keys_tmp.get();
    int64_t* src_order = order;
    int64_t* dst_order = order_tmp.get();
    for (int d = 0; d < kDigits; ++d) {
        int64_t nonzero = 0;
        for (int b = 0; b < kBuckets && nonzero < 2; ++b) {
            int64_t c = 0;
            for (int64_t ch = 0; ch < n_chunks; ++ch) c += all[static_cast<size_t>((ch * kDigits + d) * kBuckets + b)];
            nonzero += c > 0;
        }
        if (nonzero <= 1) continue;  // every key has this digit: the pass would not move anything
        chunked_for(n, chunk, 4, [&](int64_t begin, int64_t end) {
            int64_t* h = offsets.data() + (begin / chunk) * kBuckets;
            std::fill(h, h + kBuckets, 0);
            for (int64_t i = begin; i < end; ++i) ++h[digit(src_keys[i], d)];
        });
        int64_t running = 0;  // exclusive offsets in (bucket, chunk) order: stable
        for (int b = 0; b < kBuckets; ++b)
            for (int64_t ch = 0; ch < n_chunks; ++ch) {
                int64_t& h = offsets[static_cast<size_t>(ch * kBuckets + b)];
                const int64_t c = h;
                h = running;
                running += c;
            }
        chunked_for(n, chunk, 4, [&](int64_t begin, int64_t end) {
            int64_t* h = offsets.data() + (begin / chunk) * kBuckets;
            for (int64_t i = begin; i < end; ++i) {
                const uint64_t k = src_keys[i];
                const int64_t at = h[digit(k, d)]++;
                dst_keys[at] = k;
                if constexpr (WithOrder) dst_order[at] = src_order[i];
            }
        });
        std::swap(src_keys, dst_keys);
        if constexpr (WithOrder) std::swap(src_order, dst_order);
    }
    if (src_keys != keys) {
        std::memcpy(keys, src_keys, static_cast<size_t>(n) * sizeof(uint64_t));
        if constexpr (WithOrder) std::memcpy(order, src_order, static_cast<size_t>(n) * sizeof(int64_t));
    }
}

// Stable ascending sort of n keys moving `order` alongside: the result of radix_sort<true> (a stable
// sort by key is unique), for one thread's work on a few hundred thousand keys. Most significant digit
// first: the keys' varying bits (from their minimum and maximum) give up to 2^kMsdBits buckets of the top
// ones; one counting pass and one stable scatter through `keys_tmp` / `order_tmp` (n each), then each
// bucket is sorted the same way on its own range, and a bucket of at most kMsdSmall keys by insertion
// (stable). A bucket whose keys are all equal is already in order. Each level fixes at least one more
// bit, so the depth is at most 64.
constexpr int kMsdBits = 11;
constexpr int64_t kMsdSmall = 24;

inline void msd_sort(uint64_t* keys, int64_t* order, int64_t n, uint64_t* keys_tmp, int64_t* order_tmp) {
    if (n <= kMsdSmall) {
        for (int64_t i = 1; i < n; ++i) {
            const uint64_t k = keys[i];
            const int64_t o = order[i];
            int64_t j = i;
            for (; j > 0 && keys[j - 1] > k; --j) {
                keys[j] = keys[j - 1];
                order[j] = order[j - 1];
            }
            keys[j] = k;
            order[j] = o;
        }
        return;
    }
    uint64_t lo = keys[0], hi = keys[0];
    for (int64_t i = 1; i < n; ++i) {
        lo = std::min(lo, keys[i]);
        hi = std::max(hi, keys[i]);
    }
    if (lo == hi) return;
    const int varying = 64 - __builtin_clzll(lo ^ hi);
    // fewer buckets for fewer keys: about 4 keys per bucket, at least 16 buckets
    int bits = 4;
    while (bits < kMsdBits && (int64_t{1} << (bits + 2)) < n) ++bits;
    const int shift = std::max(0, varying - bits);
    const uint64_t base = lo >> shift;
    const int64_t n_buckets = static_cast<int64_t>((hi >> shift) - base) + 1;
    // counts[b]: the first of bucket b (n_buckets + 1 entries), next: the next free place of each
    int64_t local[2 * 256 + 1];
    std::vector<int64_t> heap;
    if (n_buckets > 256) heap.resize(static_cast<size_t>(2 * n_buckets + 1));
    int64_t* counts = n_buckets > 256 ? heap.data() : local;
    int64_t* next = counts + n_buckets + 1;
    std::fill(counts, counts + n_buckets + 1, 0);
    for (int64_t i = 0; i < n; ++i) ++counts[(keys[i] >> shift) - base + 1];
    for (int64_t b = 0; b < n_buckets; ++b) counts[b + 1] += counts[b];
    std::copy(counts, counts + n_buckets, next);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t at = next[(keys[i] >> shift) - base]++;
        keys_tmp[at] = keys[i];
        order_tmp[at] = order[i];
    }
    std::memcpy(keys, keys_tmp, static_cast<size_t>(n) * sizeof(uint64_t));
    std::memcpy(order, order_tmp, static_cast<size_t>(n) * sizeof(int64_t));
    for (int64_t b = 0; b < n_buckets; ++b) {
        const int64_t begin = counts[b], size = counts[b + 1] - begin;
        if (size > 1) msd_sort(keys + begin, order + begin, size, keys_tmp + begin, order_tmp + begin);
    }
}

// Stable ascending argsort of x (np.argsort(x, kind="stable")) by radix_sort of
// the keys. On return `keys` holds the sorted keys.
inline void stable_argsort(const Vector<double>& x, int64_t* order, std::vector<uint64_t>& keys) {
    const int64_t n = x.size;
    keys.resize(static_cast<size_t>(n));
    chunked_for(n, 1 << 16, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            keys[static_cast<size_t>(i)] = sort_key(x[i]);
            order[i] = i;
        }
    });
    radix_sort<true>(keys.data(), order, n);
}

}  // namespace calibkit
