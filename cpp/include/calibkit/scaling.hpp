// Application of the scaling calibrators' learned maps to logits (the fits' losses are in
// softmax.hpp): vector scaling u = a * z + c, one row-wise pass, no temporary.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.hpp"
#include "parallel.hpp"

namespace calibkit {

// out[i, k] = z[i, k] * a[k] + c[k] for the (N, K) logits z (any float dtype, widened to
// float64 exactly), out C-ordered float64 (N, K) (it may be z itself when z is that array):
// one product and one sum, each rounded (no fused multiply-add), the numbers of NumPy's
// z * a + c. The status names the first output that is not finite (kScoreNotFinite, in
// row-major order). Rows go in fixed chunks, each value on its own: the result is the same
// for any thread count.
template <class T>
Status vector_scale(const Matrix<T>& z, const double* a, const double* c, double* out) {
    const int64_t N = z.rows, K = z.cols;
    const int64_t chunk = std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(K, 1));
    std::vector<Status> statuses(static_cast<size_t>(std::max<int64_t>((N + chunk - 1) / chunk, 1)));
    chunked_for(N, chunk, K, [&](int64_t begin, int64_t end) {
        double spread = 0.0;  // sum of (u - u): 0 while every u is finite, NaN after any that is not
        for (int64_t i = begin; i < end; ++i) {
            double* row = out + i * K;
            if (z.row_contiguous()) {
                const T* zi = z.row(i);
                for (int64_t k = 0; k < K; ++k) {
                    const double u = load(zi + k) * a[k];
                    row[k] = u + c[k];
                }
            } else {
                for (int64_t k = 0; k < K; ++k) {
                    const double u = z(i, k) * a[k];
                    row[k] = u + c[k];
                }
            }
            for (int64_t k = 0; k < K; ++k) spread += row[k] - row[k];
        }
        if (spread != 0.0) {
            Status& st = statuses[static_cast<size_t>(begin / chunk)];
            for (int64_t i = begin; i < end && st.code == kOk; ++i)
                for (int64_t k = 0; k < K; ++k)
                    if (!is_finite(out[i * K + k])) {
                        st.set(kScoreNotFinite, i, k, out[i * K + k]);
                        break;
                    }
        }
    });
    Status total;
    for (const Status& st : statuses) total.merge(st);
    return total;
}

}  // namespace calibkit
