// Shared pieces of the calibkit kernels: strided views over caller memory,
// float16 loads, and the status a kernel reports for bad data.
//
// Kernels never allocate an N x K temporary: they read the caller's buffer in
// place through these views (any byte strides, negative ones included).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace calibkit {

// IEEE half precision stored as raw bits.
struct half {
    uint16_t bits;
};

inline float half_bits_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) {  // inf / nan
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {  // normal
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {  // signed zero
        bits = sign;
    } else {  // subnormal: renormalise
        exponent = 113;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            --exponent;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// All 65536 half values as float, built once: a load is one table lookup.
inline const float* half_table() {
    static const float* table = [] {
        float* t = new float[65536];
        for (uint32_t i = 0; i < 65536; ++i) t[i] = half_bits_to_float(static_cast<uint16_t>(i));
        return t;
    }();
    return table;
}

template <class T>
struct Loader {
    static double load(const T* p) { return static_cast<double>(*p); }
};

template <>
struct Loader<half> {
    static double load(const half* p) { return static_cast<double>(half_table()[p->bits]); }
};

template <class T>
inline double load(const T* p) {
    return Loader<T>::load(p);
}

// float32 / float16 values as float (exact).
inline float load_float(const float* p) { return *p; }
inline float load_float(const half* p) { return half_table()[p->bits]; }

// A read-only 2-D view; strides are in bytes.
template <class T>
struct Matrix {
    const char* data;
    int64_t rows;
    int64_t cols;
    int64_t row_stride;
    int64_t col_stride;

    const T* row(int64_t i) const { return reinterpret_cast<const T*>(data + i * row_stride); }
    double operator()(int64_t i, int64_t k) const {
        return load(reinterpret_cast<const T*>(data + i * row_stride + k * col_stride));
    }
    bool row_contiguous() const { return col_stride == static_cast<int64_t>(sizeof(T)); }
};

// A read-only 1-D view; stride in bytes.
template <class T>
struct Vector {
    const char* data;
    int64_t size;
    int64_t stride;

    double operator[](int64_t i) const { return load(reinterpret_cast<const T*>(data + i * stride)); }
    T raw(int64_t i) const {
        T v;
        std::memcpy(&v, data + i * stride, sizeof(T));
        return v;
    }
};

// What a kernel found wrong with its input; the Python layer turns it into a
// ValueError that names the argument and the offending element.
enum StatusCode : int {
    kOk = 0,
    kScoreNotFinite = 1,
    kProbabilityOutOfRange = 2,
    kLabelOutOfRange = 3,
    kWeightNotFinite = 4,
    kWeightNegative = 5,
};

struct Status {
    int code = kOk;
    int64_t row = -1;
    int64_t col = -1;
    double value = 0.0;

    // Keeps the first problem in row-major order, so the report does not
    // depend on which thread saw which chunk.
    void merge(const Status& other) {
        if (other.code == kOk) return;
        if (code == kOk || other.row < row || (other.row == row && other.col < col)) *this = other;
    }
    void set(int c, int64_t r, int64_t k, double v) {
        if (code == kOk) {
            code = c;
            row = r;
            col = k;
            value = v;
        }
    }
};

// Upper bounds of the size arguments a kernel allocates from. The Python layer
// checks the same bounds first (calibkit._validation, calibkit.streaming); the
// bindings check them again, before anything is allocated, so a huge size from
// any caller is a ValueError instead of gigabytes per chunk task or an abort.
constexpr int64_t kMaxBins = int64_t{1} << 20;           // n_bins, classwise_bins (per class)
constexpr int64_t kMaxClasswiseBins = int64_t{1} << 26;  // n_classes * n_bins of class-wise binning
constexpr int64_t kMaxFineBits = 12;                     // streaming fine histogram: buckets per octave 2^bits
constexpr int64_t kMaxFineLevels = 1000;                 // streaming fine histogram: octaves per side
constexpr int64_t kMaxBootstrap = 100000;                // streaming bootstrap replicates
constexpr int64_t kMaxMembers = int64_t{1} << 53;        // ensemble members seen (count + 1 exact in a double)

// Tolerance for probabilities slightly outside [0, 1] from float rounding.
constexpr double kProbabilityTolerance = 1e-6;

inline bool valid_probability(double p) {
    return p >= -kProbabilityTolerance && p <= 1.0 + kProbabilityTolerance;  // false for NaN
}

inline bool is_finite(double v) { return v - v == 0.0; }

}  // namespace calibkit
