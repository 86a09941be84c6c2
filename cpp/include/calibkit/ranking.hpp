// Two-sample ranking metrics from one sort of each sample: OOD detection
// (positives = in-distribution scores, negatives = out-of-distribution scores)
// and selective prediction (positives = confidences of correct predictions,
// negatives = those of errors).
//
// Both samples are sorted (radix sort of their keys), then one merge walks the
// distinct score values t from the highest down; after each t, tp = #pos >= t
// and fp = #neg >= t. Tied scores form one step, as in scikit-learn's
// roc_curve / precision_recall_curve:
//   AUROC     = sum_t (fp - fp') (tp + tp') / (2 P N)       (exact integers, one division)
//   AP        = sum_t (tp - tp') / P * tp / (tp + fp)
//   FPR@TPR   = fp / N at the first t with tp / P >= target
//   det. err. = min over t (and t = +inf) of (1 - tp / P) / 2 + fp / (2 N)
//   AURC      = sum_t (tp + fp - tp' - fp') / (P + N) * fp / (tp + fp)
// where ' marks the values before t. AP of the negatives (scores negated) comes
// from the same walk in the other direction.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"
#include "sort.hpp"

namespace calibkit {

// Sum of products of two non-negative 64-bit integers, exact in 128 bits, and its value as a double rounded to
// nearest (as the conversion of unsigned __int128 rounds). GCC/Clang use unsigned __int128; other compilers
// (and the portable build, so that CI runs this path) two 64-bit words.
#if defined(__SIZEOF_INT128__) && !defined(CALIBKIT_PORTABLE_SIMD)
struct ExactSum128 {
    unsigned __int128 v = 0;
    void add_product(uint64_t a, uint64_t b) { v += static_cast<unsigned __int128>(a) * b; }
    double to_double() const { return static_cast<double>(v); }
};
#else
struct ExactSum128 {
    uint64_t hi = 0, lo = 0;
    void add_product(uint64_t a, uint64_t b) {
        const uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = b & 0xffffffffu, b1 = b >> 32;
        const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
        const uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
        const uint64_t plo = (mid << 32) | (p00 & 0xffffffffu);
        const uint64_t phi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
        lo += plo;
        hi += phi + (lo < plo ? 1u : 0u);
    }
    double to_double() const {
        if (hi == 0) return static_cast<double>(lo);
        // The top 64 significant bits, the bits shifted out ORed into the lowest one (a sticky bit far below
        // double's rounding position, so the one rounding of the conversion is the rounding of the whole value).
        int shift = 64;
        while ((hi >> (shift - 1)) == 0) --shift;  // hi has `shift` significant bits
        const uint64_t top = shift == 64 ? hi : (hi << (64 - shift)) | (lo >> shift);
        const uint64_t dropped = shift == 64 ? lo : lo << (64 - shift);
        return std::ldexp(static_cast<double>(top | (dropped != 0 ? 1u : 0u)), shift);
    }
};
#endif

}  // namespace calibkit

namespace calibkit {

struct RankingSummary {
    double auroc = 0.0, ap_pos = 0.0, ap_neg = 0.0, fpr_at_tpr = 0.0, detection_error = 0.5, aurc = 0.0;
    Status status;
};

// The steps of the walk from the highest score down: threshold, tp, fp.
struct RankingCurve {
    std::vector<double> thresholds;
    std::vector<int64_t> tp, fp;
};

// Sort keys of x into keys[0..n); NaN/inf set `status` (row = index in x).
template <class T>
Status fill_keys(const Vector<T>& x, uint64_t* keys) {
    const int64_t n = x.size;
    constexpr int64_t kChunk = 1 << 16;
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    std::vector<Status> found(static_cast<size_t>(std::max<int64_t>(n_chunks, 1)));
    chunked_for(n, kChunk, 1, [&](int64_t begin, int64_t end) {
        Status& st = found[static_cast<size_t>(begin / kChunk)];
        for (int64_t i = begin; i < end; ++i) {
            const double v = x[i];
            if (!is_finite(v)) {
                st.set(kScoreNotFinite, i, -1, v);
                keys[i] = 0;
            } else {
                keys[i] = sort_key(v);
            }
        }
    });
    Status out;
    for (const Status& s : found) out.merge(s);
    return out;
}

// Walks the merged distinct values of two ascending key arrays from the top
// (descending) or from the bottom (ascending), calling step(key, a_count, b_count)
// after each distinct value with the counts of a and b seen so far.
template <class Step>
void merge_walk(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, bool descending, Step step) {
    // In both directions the walk takes the largest of at(a, i), at(b, j): keys
    // read from the end, or complemented keys read from the start.
    const auto at = [descending](const uint64_t* x, int64_t n, int64_t r) {
        return descending ? x[n - 1 - r] : ~x[r];
    };
    int64_t i = 0, j = 0;
    while (i < na || j < nb) {
        uint64_t t = 0;
        if (i < na) t = at(a, na, i);
        if (j < nb) t = std::max(t, at(b, nb, j));
        while (i < na && at(a, na, i) == t) ++i;
        while (j < nb && at(b, nb, j) == t) ++j;
        step(descending ? t : ~t, i, j);
    }
}

// Summary metrics (and, when `curve` is not null, the descending walk) for
// positives `pos` and negatives `neg`, not both empty. With one of them empty
// only AURC is defined; the others are NaN.
template <class T>
RankingSummary two_sample_ranking(const Vector<T>& pos, const Vector<T>& neg, double target_tpr,
                                  RankingCurve* curve) {
    RankingSummary out;
    const int64_t P = pos.size, N = neg.size;
    std::unique_ptr<uint64_t[]> pk(new uint64_t[static_cast<size_t>(P) + 1]), nk(new uint64_t[static_cast<size_t>(N) + 1]);
    Status sp = fill_keys(pos, pk.get()), sn = fill_keys(neg, nk.get());
    if (sp.code != kOk || sn.code != kOk) {
        // Which sample is reported is told by col: 0 = pos, 1 = neg.
        if (sp.code != kOk) sp.col = 0;
        if (sn.code != kOk) sn.col = 1;
        out.status = sp.code != kOk ? sp : sn;
        return out;
    }
    radix_sort<false>(pk.get(), nullptr, P);
    radix_sort<false>(nk.get(), nullptr, N);
    const double inv_p = 1.0 / static_cast<double>(P), inv_n = 1.0 / static_cast<double>(N);
    const double inv_total = 1.0 / static_cast<double>(P + N);
    // 2 * AUROC * P * N as an exact integer.
    ExactSum128 auc2;
    double ap = 0.0, aurc = 0.0, best_error = 0.5, fpr_at = 1.0;
    bool found = false;
    int64_t tp0 = 0, fp0 = 0;
    merge_walk(pk.get(), P, nk.get(), N, true, [&](uint64_t t, int64_t tp, int64_t fp) {
        auc2.add_product(static_cast<uint64_t>(fp - fp0), static_cast<uint64_t>(tp + tp0));
        const double accepted = static_cast<double>(tp + fp);
        if (tp > tp0) ap += static_cast<double>(tp - tp0) * (static_cast<double>(tp) / accepted);
        aurc += static_cast<double>(tp + fp - tp0 - fp0) * (static_cast<double>(fp) / accepted);
        // Divisions, not products with 1/P: the same rounding as scikit-learn's tps / tps[-1].
        const double tpr = static_cast<double>(tp) / static_cast<double>(P);
        const double fpr = static_cast<double>(fp) / static_cast<double>(N);
        best_error = std::min(best_error, 0.5 * (1.0 - tpr) + 0.5 * fpr);
        if (!found && tpr >= target_tpr) {
            fpr_at = fpr;
            found = true;
        }
        if (curve) {
            curve->thresholds.push_back(key_value(t));
            curve->tp.push_back(tp);
            curve->fp.push_back(fp);
        }
        tp0 = tp;
        fp0 = fp;
    });
    out.aurc = aurc * inv_total;
    if (P == 0 || N == 0) {
        out.auroc = out.ap_pos = out.ap_neg = out.fpr_at_tpr = out.detection_error = NAN;
        return out;
    }
    out.auroc = auc2.to_double() / (2.0 * static_cast<double>(P) * static_cast<double>(N));
    out.ap_pos = ap * inv_p;
    out.detection_error = best_error;
    out.fpr_at_tpr = fpr_at;
    // AP with the roles swapped: negatives are the positives, lower scores first.
    double ap_neg = 0.0;
    tp0 = 0;
    merge_walk(nk.get(), N, pk.get(), P, false, [&](uint64_t, int64_t tp, int64_t fp) {
        if (tp > tp0) ap_neg += static_cast<double>(tp - tp0) * (static_cast<double>(tp) / static_cast<double>(tp + fp));
        tp0 = tp;
    });
    out.ap_neg = ap_neg * inv_n;
    return out;
}

}  // namespace calibkit
