// Grid sums of the smooth ECE (Blasiok & Nakkiran 2023): each row's weight and
// weighted residual spread onto one or more uniform grids on [0, 1] by linear
// interpolation, in one pass.
//
// A grid of G points u_j = j / (G - 1) receives a row with score f in [0, 1]
// (a probability, or a top-label confidence), weight w and residual r = f - y
// (y the 0/1 label, or the row's correctness) as relplot's
// kernels.smooth_round_to_grid does: b = trunc(f (G - 1)) clipped to [0, G - 2],
// t = f (G - 1) - b, and cell b gets (1 - t) while cell b + 1 gets t, of both w
// and w r. The kernel-smoothed residual and density (convolution, bandwidth
// search) are small NumPy work on the grids, in calibkit/smooth.py.
//
// Several grids are filled by the same read of a row (the automatic bandwidth
// needs one grid per size it may try). Sums are float64; rows are cut into
// chunks whose size depends only on the input shape and the grids, partials are
// folded in chunk order: results are bit-identical for any thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "binning.hpp"
#include "common.hpp"
#include "parallel.hpp"

namespace calibkit {

// Largest number of grid points of one call, all grids together (the bindings check it first).
constexpr int64_t kMaxSmoothCells = int64_t{1} << 20;
// Largest number of grids of one call.
constexpr int64_t kMaxSmoothGrids = 64;

// Grid sizes and where each grid starts in the cell array.
struct SmoothGrids {
    std::vector<int64_t> sizes, offsets;
    int64_t cells = 0;

    explicit SmoothGrids(const std::vector<int64_t>& s) : sizes(s) {
        for (int64_t g : sizes) {
            offsets.push_back(cells);
            cells += g;
        }
    }
};

// The sums of a chunk or of a whole call, `channels` (2 or 3) values per grid point c, side by side (the
// values a row adds to a grid share a cache line or two): Σ w hat_c(f), Σ w (f - y) hat_c(f) and, with
// three channels, Σ w y hat_c(f) (the smoothed labels of the reliability curve).
struct SmoothSums {
    int64_t channels = 2;
    std::vector<double> cells;
    int64_t count = 0;
    double weight = 0.0;
    Status status;

    explicit SmoothSums(int64_t n_cells = 0, int64_t n_channels = 2)
        : channels(n_channels), cells(n_channels * n_cells, 0.0) {}
    void reset() {
        std::fill(cells.begin(), cells.end(), 0.0);
        count = 0;
        weight = 0.0;
        status = Status();
    }
    void merge(const SmoothSums& o) {
        for (size_t j = 0; j < cells.size(); ++j) cells[j] += o.cells[j];
        count += o.count;
        weight += o.weight;
        status.merge(o.status);
    }
};

// Rows (score f, weight w, label or correctness y) onto every grid: relplot's smooth_round_to_grid of w,
// w (f - y) and w y. Rows are buffered and spread a block at a time, one grid after the other: a grid's
// cells (16 to 120 KB) stay in cache for the whole block. Every cell still receives its rows in row order,
// so the sums (and their bits) are those of a row-by-row spread.
constexpr int kSmoothBlock = 256;

struct SmoothBlock {
    double f[kSmoothBlock], w[kSmoothBlock], wr[kSmoothBlock], wy[kSmoothBlock];
    int n = 0;

    CALIBKIT_INLINE void add(const SmoothGrids& grids, SmoothSums& out, double fi, double wi, double yi) {
        f[n] = fi;
        w[n] = wi;
        wr[n] = wi * (fi - yi);
        wy[n] = wi * yi;
        if (++n == kSmoothBlock) flush(grids, out);
    }

    template <int C>
    void spread(const SmoothGrids& grids, double* const cells) const {
        for (size_t g = 0; g < grids.sizes.size(); ++g) {
            const int64_t last = grids.sizes[g] - 1;
            const double scale = static_cast<double>(last);
            double* const grid = cells + C * grids.offsets[g];
            for (int j = 0; j < n; ++j) {
                const double x = f[j] * scale;
                // A truncating conversion, as numpy's astype(int); f is within [-1e-6, 1 + 1e-6].
                const int64_t b = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(x), 0), last - 1);
                const double t = x - static_cast<double>(b);
                const double u = 1.0 - t;
                double* c = grid + C * b;
                c[0] += u * w[j];
                c[1] += u * wr[j];
                if constexpr (C == 3) c[2] += u * wy[j];
                c[C] += t * w[j];
                c[C + 1] += t * wr[j];
                if constexpr (C == 3) c[5] += t * wy[j];
            }
        }
    }

    void flush(const SmoothGrids& grids, SmoothSums& out) {
        if (out.channels == 2)
            spread<2>(grids, out.cells.data());
        else
            spread<3>(grids, out.cells.data());
        for (int j = 0; j < n; ++j) out.weight += w[j];
        out.count += n;
        n = 0;
    }
};

// Elements per chunk: enough rows that clearing and folding a partial of 2 * cells values stays small
// next to the reading of the chunk.
inline int64_t smooth_rows_per_chunk(int64_t cols, int64_t cells) {
    const int64_t elements = std::max<int64_t>(kChunkElements, 32 * cells);
    return std::max<int64_t>(1, elements / std::max<int64_t>(cols, 1));
}

// One grid of smooth_grid_checked_rows: the rows in order, a chunk of `chunk` rows at a time, each chunk's
// adds (SmoothBlock's, row by row) into `part`, this grid's partial of the chunk, then folded into `out` (the
// grid's cells of the total) and cleared. A partial is the grid's cells only (16 to 82 KB: in cache), so
// the fold costs little even when a chunk is a few hundred rows.
template <class C, class L>
void smooth_grid_rows_of_grid(const Vector<C>& confidence, const Vector<L>& correct, const Weights& weights,
                              int64_t chunk, int64_t size, double* const out) {
    const int64_t N = confidence.size, last = size - 1;
    const double scale = static_cast<double>(last);
    std::vector<double> partial(static_cast<size_t>(2 * size), 0.0);
    double* const part = partial.data();
    for (int64_t begin = 0; begin < N; begin += chunk) {
        const int64_t end = std::min(N, begin + chunk);
        for (int64_t i = begin; i < end; ++i) {
            const double f = confidence[i], w = weights.at(i), y = static_cast<double>(correct.raw(i));
            const double wr = w * (f - y);
            const double x = f * scale;
            const int64_t b = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(x), 0), last - 1);
            const double t = x - static_cast<double>(b);
            const double u = 1.0 - t;
            double* const p = part + 2 * b;
            p[0] += u * w;
            p[1] += u * wr;
            p[2] += t * w;
            p[3] += t * wr;
        }
        for (int64_t j = 0; j < 2 * size; ++j) {
            out[j] += part[j];
            part[j] = 0.0;
        }
    }
}

// The smooth ECE's grid sums of rows already checked (confidences in [0, 1] with a probability's tolerance,
// 0/1 correctness, weights finite and >= 0: a top-label pass's summaries) into `total` (two channels: the
// stream's), with the bits of smooth_grid_top_label on the (N, K) scores: chunks of
// smooth_rows_per_chunk(K, cells) rows, a chunk's partial summed in row order from +0.0, the partials folded
// into the total in chunk order, cell by cell. A grid's sums never depend on another grid's, so the grids are
// the tasks (in parallel, any thread count: the same bits), each running all the rows chunk after chunk with
// one partial of its own cells (smooth_grid_rows_of_grid): no partial of every grid per chunk, whose clearing
// and folding cost 2 x cells doubles per chunk (a chunk of a long row is a few hundred rows).
template <class C, class L>
void smooth_grid_checked_rows(const Vector<C>& confidence, const Vector<L>& correct, const Weights& weights,
                              int64_t K, const SmoothGrids& grids, SmoothSums& total) {
    if (total.channels != 2) throw std::invalid_argument("smooth_grid_checked_rows: the sums must have two channels");
    const int64_t N = confidence.size, chunk = smooth_rows_per_chunk(K, grids.cells);
    chunked_for(static_cast<int64_t>(grids.sizes.size()), 1, N, [&](int64_t g0, int64_t g1) {
        for (int64_t g = g0; g < g1; ++g)
            smooth_grid_rows_of_grid(confidence, correct, weights, chunk, grids.sizes[g],
                                     total.cells.data() + 2 * grids.offsets[g]);
    });
    for (int64_t begin = 0; begin < N; begin += chunk) {  // the chunks' weights (SmoothBlock::flush), folded
        double weight = 0.0;
        for (int64_t i = begin; i < std::min(N, begin + chunk); ++i) weight += weights.at(i);
        total.weight += weight;
    }
    total.count += N;
}

// Binary rows: score p = P(y = 1) in [0, 1] against a 0/1 label.
template <class T, class L>
SmoothSums smooth_grid_binary(const Vector<T>& probs, const Vector<L>& labels, const Weights& weights,
                              const SmoothGrids& grids, int64_t channels) {
    SmoothSums total(grids.cells, channels);
    chunked_reduce(
        probs.size, smooth_rows_per_chunk(1, grids.cells), 1 + static_cast<int64_t>(grids.sizes.size()),
        channels * grids.cells, total, [&] { return SmoothSums(grids.cells, channels); },
        [&](SmoothSums& part, int64_t begin, int64_t end) {
            SmoothBlock block;
            for (int64_t i = begin; i < end; ++i) {
                double p, y, w;
                if (check_binary_row(probs, labels, weights, i, p, y, w, part.status)) block.add(grids, part, p, w, y);
            }
            block.flush(grids, part);
        },
        [](SmoothSums& acc, const SmoothSums& part) { acc.merge(part); });
    return total;
}

template <class T, class V>
inline void smooth_top_label_chunk(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                                   bool from_logits, double inv_t, const SmoothGrids& grids, SmoothSums& part,
                                   int64_t begin, int64_t end) {
    const int64_t K = scores.cols;
    const simd::TailMask<V> tail(K);
    RowSummary row;
    SmoothBlock block;
    for (int64_t i = begin; i < end; ++i) {
        const int64_t y = labels.raw(i);
        if (y < 0 || y >= K) {
            part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
            continue;
        }
        const double w = weights.at(i);
        if (weights.present() && !check_weight(w, i, part.status)) continue;
        // binning.hpp's row summary (max / argmax of the probabilities or of the softmax, with the row checks).
        if (!summarize_row<T, V, false>(scores, tail, i, y, from_logits, 0.0, false, inv_t, row, part.status,
                                        nullptr, nullptr))
            continue;
        const double f = row.confidence;
        const double correct = row.argmax == y ? 1.0 : 0.0;
        block.add(grids, part, f, w, correct);
    }
    block.flush(grids, part);
}

#if CALIBKIT_HAVE_AVX2_CLONES
template <class T>
CALIBKIT_AVX2_CLONE void smooth_top_label_chunk_avx2(const Matrix<T>& scores, const Vector<int64_t>& labels,
                                                     const Weights& weights, bool from_logits, double inv_t,
                                                     const SmoothGrids& grids, SmoothSums& part, int64_t begin,
                                                     int64_t end) {
    smooth_top_label_chunk<T, simd::Vec<4>>(scores, labels, weights, from_logits, inv_t, grids, part, begin, end);
}
#endif

// Top-label rows of an N x K matrix of probabilities or logits: the confidence f (the largest
// probability) against the correctness (argmax == label, first index on ties), read in place. Logits
// are multiplied by inv_t (the inverse temperature; 1: none) inside the softmax.
template <class T>
SmoothSums smooth_grid_top_label(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                                 bool from_logits, const SmoothGrids& grids, int64_t channels,
                                 double inv_t = 1.0) {
    SmoothSums total(grids.cells, channels);
    const bool avx2 = simd::use_avx2();
    chunked_reduce(
        scores.rows, smooth_rows_per_chunk(scores.cols, grids.cells),
        scores.cols + static_cast<int64_t>(grids.sizes.size()), channels * grids.cells, total,
        [&] { return SmoothSums(grids.cells, channels); },
        [&](SmoothSums& part, int64_t begin, int64_t end) {
#if CALIBKIT_HAVE_AVX2_CLONES
            if (avx2) return smooth_top_label_chunk_avx2<T>(scores, labels, weights, from_logits, inv_t, grids, part,
                                                            begin, end);
#endif
            (void)avx2;
            smooth_top_label_chunk<T, simd::Vec<2>>(scores, labels, weights, from_logits, inv_t, grids, part, begin,
                                                    end);
        },
        [](SmoothSums& acc, const SmoothSums& part) { acc.merge(part); });
    return total;
}

}  // namespace calibkit
