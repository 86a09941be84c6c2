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
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"

namespace calibkit {

// Rows per chunk are chosen so that a chunk is about this many elements.
constexpr int64_t kChunkElements = 1 << 15;

inline int64_t rows_per_chunk(int64_t cols, int64_t min_rows = 1) {
    return std::max<int64_t>(min_rows, kChunkElements / std::max<int64_t>(cols, 1));
}

// Bin edges: `inner` holds e_1..e_{M-1}.
struct BinEdges {
    std::vector<double> inner;
    bool uniform = true;
    int64_t n_bins = 0;

    static BinEdges equal_width(int64_t n_bins) {
        BinEdges b;
        b.n_bins = n_bins;
        b.uniform = true;
        for (int64_t m = 1; m < n_bins; ++m) b.inner.push_back(static_cast<double>(m) / static_cast<double>(n_bins));
        return b;
    }
    static BinEdges explicit_edges(const double* edges, int64_t n_bins) {
        BinEdges b;
        b.n_bins = n_bins;
        b.uniform = false;
        b.inner.assign(edges + 1, edges + n_bins);
        return b;
    }

    int64_t bin(double c) const {
        const int64_t n_inner = n_bins - 1;
        if (n_inner <= 0) return 0;
        if (uniform) {
            // Guess from the arithmetic, then settle against the exact edges.
            double guess = std::ceil(c * static_cast<double>(n_bins)) - 1.0;
            int64_t m = guess < 0.0 ? 0 : (guess > static_cast<double>(n_inner) ? n_inner : static_cast<int64_t>(guess));
            while (m > 0 && !(inner[m - 1] < c)) --m;
            while (m < n_inner && inner[m] < c) ++m;
            return m;
        }
        return std::lower_bound(inner.begin(), inner.end(), c) - inner.begin();
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
    void merge(const BinSums& o) {
        for (size_t b = 0; b < count.size(); ++b) {
            count[b] += o.count[b];
            weight[b] += o.weight[b];
            sum_score[b] += o.sum_score[b];
            sum_target[b] += o.sum_target[b];
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
    explicit BinningResult(int64_t n_bins = 0) : bins(n_bins) {}
    void merge(const BinningResult& o) {
        bins.merge(o.bins);
        totals.merge(o.totals);
        status.merge(o.status);
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
    double nll;         // -log p_label (probabilities: clipped below at nll_eps)
};

// One read of a probability row: max/argmax (first index on ties), p_y, sum p^2,
// with the [0, 1] check on every element. Returns false on bad data.
template <class T>
inline bool summarize_prob_row(const Matrix<T>& s, int64_t i, int64_t label, double nll_eps,
                               RowSummary& out, Status& st) {
    const int64_t K = s.cols;
    double best = -1.0, sum_sq = 0.0, p_label = 0.0;
    int64_t arg = 0;
    bool ok = true;
    if (s.row_contiguous()) {
        const T* r = s.row(i);
        for (int64_t k = 0; k < K; ++k) {
            const double v = load(r + k);
            ok &= valid_probability(v);
            sum_sq += v * v;
            if (v > best) {
                best = v;
                arg = k;
            }
        }
    } else {
        for (int64_t k = 0; k < K; ++k) {
            const double v = s(i, k);
            ok &= valid_probability(v);
            sum_sq += v * v;
            if (v > best) {
                best = v;
                arg = k;
            }
        }
    }
    if (!ok) {
        for (int64_t k = 0; k < K; ++k) {
            const double v = s(i, k);
            if (!is_finite(v)) {
                st.set(kScoreNotFinite, i, k, v);
                return false;
            }
            if (!valid_probability(v)) {
                st.set(kProbabilityOutOfRange, i, k, v);
                return false;
            }
        }
    }
    p_label = s(i, label);
    out.argmax = arg;
    out.confidence = best;
    out.p_label = p_label;
    out.sum_sq = sum_sq;
    out.nll = -std::log(std::max(p_label, nll_eps));
    return true;
}

// One logical pass over a logit row: max/argmax, then sum of exp(z - max) and of
// its square (the row is cache-resident for the second loop). One exp per element.
template <class T>
inline bool summarize_logit_row(const Matrix<T>& s, int64_t i, int64_t label, RowSummary& out,
                                Status& st) {
    const int64_t K = s.cols;
    double best = s(i, 0);
    int64_t arg = 0;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
        const double v = s(i, k);
        finite &= is_finite(v);
        if (v > best) {
            best = v;
            arg = k;
        }
    }
    if (!finite) {
        for (int64_t k = 0; k < K; ++k) {
            const double v = s(i, k);
            if (!is_finite(v)) {
                st.set(kScoreNotFinite, i, k, v);
                return false;
            }
        }
    }
    double sum = 0.0, sum_sq = 0.0;
    if (s.row_contiguous()) {
        const T* r = s.row(i);
        for (int64_t k = 0; k < K; ++k) {
            const double e = std::exp(load(r + k) - best);
            sum += e;
            sum_sq += e * e;
        }
    } else {
        for (int64_t k = 0; k < K; ++k) {
            const double e = std::exp(s(i, k) - best);
            sum += e;
            sum_sq += e * e;
        }
    }
    const double shifted_label = s(i, label) - best;
    out.argmax = arg;
    out.confidence = 1.0 / sum;
    out.p_label = std::exp(shifted_label) / sum;
    out.sum_sq = sum_sq / (sum * sum);
    out.nll = std::log(sum) - shifted_label;
    return true;
}

template <class T>
inline bool summarize_row(const Matrix<T>& s, int64_t i, int64_t label, bool from_logits, double nll_eps,
                          RowSummary& out, Status& st) {
    return from_logits ? summarize_logit_row(s, i, label, out, st)
                       : summarize_prob_row(s, i, label, nll_eps, out, st);
}

// Top-label statistics of an N x K matrix of probabilities or logits, in one
// pass: per-bin (count, weight, sum w*confidence, sum w*correct) when n_bins > 0,
// and the totals (accuracy, confidence, Brier, NLL sums). When conf_out /
// correct_out are given, each row's confidence and correctness are written
// there too (used to find equal-mass edges).
template <class T>
BinningResult top_label_stats(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                              bool from_logits, int64_t n_bins, double nll_eps, double* conf_out,
                              uint8_t* correct_out) {
    const int64_t N = scores.rows, K = scores.cols;
    const BinEdges edges = BinEdges::equal_width(n_bins);
    BinningResult total(n_bins);
    chunked_reduce(
        N, rows_per_chunk(K), K, 4 * n_bins, total, [&] { return BinningResult(n_bins); },
        [&](BinningResult& part, int64_t begin, int64_t end) {
            RowSummary row;
            for (int64_t i = begin; i < end; ++i) {
                const int64_t y = labels.raw(i);
                if (y < 0 || y >= K) {
                    part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
                    continue;
                }
                const double w = weights.at(i);
                if (weights.present() && !check_weight(w, i, part.status)) continue;
                if (!summarize_row(scores, i, y, from_logits, nll_eps, row, part.status)) continue;
                const double correct = row.argmax == y ? 1.0 : 0.0;
                if (n_bins > 0) part.bins.add(edges.bin(row.confidence), w, row.confidence, correct);
                if (conf_out) conf_out[i] = row.confidence;
                if (correct_out) correct_out[i] = static_cast<uint8_t>(correct);
                Totals& t = part.totals;
                t.count += 1;
                t.weight += w;
                t.correct += w * correct;
                t.confidence += w * row.confidence;
                t.brier += w * (row.sum_sq - 2.0 * row.p_label + 1.0);
                t.nll += w * row.nll;
            }
        },
        [](BinningResult& acc, const BinningResult& part) { acc.merge(part); });
    return total;
}

// Binary / one-score-per-row statistics: score p in [0, 1] against a 0/1
// target, binned with the given edges (equal-width when edges is null). Used
// for positive-class calibration of (N,) scores, and for equal-mass binning of
// precomputed top-label confidences. Totals: Brier (p - y)^2 and the binary
// log-loss with p clipped to [nll_eps, 1 - nll_eps].
template <class T, class L>
BinningResult binary_stats(const Vector<T>& probs, const Vector<L>& targets, const Weights& weights,
                           int64_t n_bins, const double* edge_values, double nll_eps) {
    const int64_t N = probs.size;
    const BinEdges edges =
        edge_values ? BinEdges::explicit_edges(edge_values, n_bins) : BinEdges::equal_width(n_bins);
    BinningResult total(n_bins);
    chunked_reduce(
        N, kChunkElements, 1, 4 * n_bins, total, [&] { return BinningResult(n_bins); },
        [&](BinningResult& part, int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) {
                const int64_t y = static_cast<int64_t>(targets.raw(i));
                if (y != 0 && y != 1) {
                    part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
                    continue;
                }
                const double w = weights.at(i);
                if (weights.present() && !check_weight(w, i, part.status)) continue;
                const double p = probs[i];
                if (!valid_probability(p)) {
                    part.status.set(is_finite(p) ? kProbabilityOutOfRange : kScoreNotFinite, i, -1, p);
                    continue;
                }
                const double target = static_cast<double>(y);
                if (n_bins > 0) part.bins.add(edges.bin(p), w, p, target);
                const double pc = std::min(std::max(p, nll_eps), 1.0 - nll_eps);
                Totals& t = part.totals;
                t.count += 1;
                t.weight += w;
                t.correct += w * target;
                t.confidence += w * p;
                t.brier += w * (p - target) * (p - target);
                t.nll -= w * (y == 1 ? std::log(pc) : std::log1p(-pc));
            }
        },
        [](BinningResult& acc, const BinningResult& part) { acc.merge(part); });
    return total;
}

// Class-wise (marginal) statistics: for every class k and every row, the
// probability p_k goes into bin(p_k) of class k with target 1[y == k]
// (Kull et al. 2019). Bins are equal-width, or per-class explicit edges
// (class_edges: K x (M + 1), row-major). Output arrays are K x M.
struct ClasswiseResult {
    BinSums bins;  // index k * M + m
    Status status;
    explicit ClasswiseResult(int64_t n = 0) : bins(n) {}
    void merge(const ClasswiseResult& o) {
        bins.merge(o.bins);
        status.merge(o.status);
    }
};

template <class T>
ClasswiseResult classwise_stats(const Matrix<T>& scores, const Vector<int64_t>& labels, const Weights& weights,
                                bool from_logits, int64_t n_bins, const double* class_edges) {
    const int64_t N = scores.rows, K = scores.cols, M = n_bins;
    std::vector<BinEdges> edges;
    if (class_edges) {
        for (int64_t k = 0; k < K; ++k) edges.push_back(BinEdges::explicit_edges(class_edges + k * (M + 1), M));
    } else {
        edges.push_back(BinEdges::equal_width(M));
    }
    ClasswiseResult total(K * M);
    // Partials are K x M: keep chunks large enough that merging them is cheap.
    const int64_t chunk = rows_per_chunk(K, 64 * M);
    chunked_reduce(
        N, chunk, K, 4 * K * M, total, [&] { return ClasswiseResult(K * M); },
        [&](ClasswiseResult& part, int64_t begin, int64_t end) {
            std::vector<double> p(static_cast<size_t>(K));
            for (int64_t i = begin; i < end; ++i) {
                const int64_t y = labels.raw(i);
                if (y < 0 || y >= K) {
                    part.status.set(kLabelOutOfRange, i, -1, static_cast<double>(y));
                    continue;
                }
                const double w = weights.at(i);
                if (weights.present() && !check_weight(w, i, part.status)) continue;
                bool ok = true;
                if (from_logits) {
                    double best = -INFINITY;
                    for (int64_t k = 0; k < K; ++k) {
                        p[k] = scores(i, k);
                        if (!is_finite(p[k])) {
                            part.status.set(kScoreNotFinite, i, k, p[k]);
                            ok = false;
                            break;
                        }
                        best = std::max(best, p[k]);
                    }
                    if (!ok) continue;
                    double sum = 0.0;
                    for (int64_t k = 0; k < K; ++k) {
                        p[k] = std::exp(p[k] - best);
                        sum += p[k];
                    }
                    const double inv = 1.0 / sum;
                    for (int64_t k = 0; k < K; ++k) p[k] *= inv;
                } else {
                    for (int64_t k = 0; k < K; ++k) {
                        p[k] = scores(i, k);
                        if (!valid_probability(p[k])) {
                            part.status.set(is_finite(p[k]) ? kProbabilityOutOfRange : kScoreNotFinite, i, k, p[k]);
                            ok = false;
                            break;
                        }
                    }
                    if (!ok) continue;
                }
                for (int64_t k = 0; k < K; ++k) {
                    const BinEdges& e = class_edges ? edges[static_cast<size_t>(k)] : edges[0];
                    part.bins.add(k * M + e.bin(p[k]), w, p[k], k == y ? 1.0 : 0.0);
                }
            }
        },
        [](ClasswiseResult& acc, const ClasswiseResult& part) { acc.merge(part); });
    return total;
}

}  // namespace calibkit
