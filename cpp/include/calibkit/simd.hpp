// Four-lane double arithmetic for the row kernels, and run-time AVX2 dispatch.
//
// The lanes are GCC/Clang vector extensions: the default build compiles them
// to SSE2 (any x86-64, or the target's own vector unit), and the *_avx2 clones
// of the kernels to one AVX2 register. Every operation is lane-wise IEEE
// arithmetic (no FMA contraction, no fast-math) and every horizontal reduction
// has a fixed order, so both clones give bit-identical results.
//
// Any other C++17 compiler (or CALIBKIT_PORTABLE_SIMD defined, the CMake option
// of that name) gets the portable path: the same lane types as a small class
// template, Lanes<T, N>, whose operators are loops over the lanes doing the same
// IEEE operation on each, so the results are the same bits as the vector path's.
// The kernels' source is the same in both modes: what vector extensions spell
// with builtins goes through the helpers below (convert, shuffle, ctz,
// CALIBKIT_PREFETCH, CALIBKIT_INLINE).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common.hpp"

#if (defined(__GNUC__) || defined(__clang__)) && !defined(CALIBKIT_PORTABLE_SIMD)
#define CALIBKIT_GNU_VECTORS 1
#else
#define CALIBKIT_GNU_VECTORS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define CALIBKIT_INLINE inline __attribute__((always_inline))
#define CALIBKIT_NOINLINE __attribute__((noinline))
// Prefetch the cache line at p (rw: 0 read, 1 write; locality 0..3): a hint, no effect on results.
#define CALIBKIT_PREFETCH(p, rw, locality) __builtin_prefetch((p), (rw), (locality))
#elif defined(_MSC_VER)
#define CALIBKIT_INLINE __forceinline
#define CALIBKIT_NOINLINE __declspec(noinline)
#define CALIBKIT_PREFETCH(p, rw, locality) ((void)(p))
#else
#define CALIBKIT_INLINE inline
#define CALIBKIT_NOINLINE
#define CALIBKIT_PREFETCH(p, rw, locality) ((void)(p))
#endif

#if CALIBKIT_GNU_VECTORS && (defined(__x86_64__) || defined(__i386__)) && !defined(CALIBKIT_NO_DISPATCH)
#define CALIBKIT_HAVE_AVX2_CLONES 1
// Applied to a thin wrapper that calls the portable kernel: flatten inlines the
// kernel (and everything it calls) into the wrapper, compiled for AVX2.
#define CALIBKIT_AVX2_CLONE __attribute__((target("avx2"), flatten))
#else
#define CALIBKIT_HAVE_AVX2_CLONES 0
#endif

namespace calibkit {
namespace simd {

// "gnu-vector" or "portable": the lane implementation this build uses.
inline const char* path_name() { return CALIBKIT_GNU_VECTORS ? "gnu-vector" : "portable"; }

// The index of the lowest set bit of x != 0.
CALIBKIT_INLINE int ctz(unsigned x) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctz(x);
#else
    int n = 0;
    while (!(x & 1u)) {
        x >>= 1;
        ++n;
    }
    return n;
#endif
}

#if !CALIBKIT_GNU_VECTORS

// N lanes of T with the semantics of a GCC/Clang vector of them: element-wise
// arithmetic (integer arithmetic wraps), comparisons giving lanes of the signed
// integer of T's width holding 0 or -1, scalars broadcast to every lane, and a
// C-style cast between lane types of the same size reinterprets the bits.
template <class T>
struct MaskLane {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "lanes of 4 or 8 bytes");
    typedef typename std::conditional<sizeof(T) == 8, int64_t, int32_t>::type type;
};

template <class T, int N>
struct alignas(sizeof(T) * N) Lanes {
    typedef T value_type;
    static constexpr int size = N;
    T v[N];

    Lanes() = default;  // lanes undefined, as for a vector
    // The bits of another lane type of the same size (a vector extension's C-style cast).
    template <class U, int M, class = typename std::enable_if<sizeof(U) * M == sizeof(T) * N>::type>
    explicit Lanes(const Lanes<U, M>& o) {
        std::memcpy(v, o.v, sizeof v);
    }

    CALIBKIT_INLINE T& operator[](int j) { return v[j]; }
    CALIBKIT_INLINE const T& operator[](int j) const { return v[j]; }
};

template <class T>
struct IsLanes : std::false_type {};
template <class T, int N>
struct IsLanes<Lanes<T, N>> : std::true_type {};

namespace lanes_detail {
// Integer arithmetic through the unsigned type: it wraps, as vector lanes do.
template <class T>
using Arith = typename std::conditional<std::is_integral<T>::value, std::make_unsigned<T>, std::common_type<T>>::type::type;
template <class T, class S>
using IfScalar = typename std::enable_if<std::is_arithmetic<S>::value, T>::type;
template <class T>
using IfInt = typename std::enable_if<std::is_integral<T>::value, int>::type;
}  // namespace lanes_detail

#define CALIBKIT_LANES_ARITH(op)                                                                               \
    template <class T, int N>                                                                                  \
    CALIBKIT_INLINE Lanes<T, N> operator op(const Lanes<T, N>& a, const Lanes<T, N>& b) {                      \
        typedef lanes_detail::Arith<T> A;                                                                      \
        Lanes<T, N> r;                                                                                         \
        for (int j = 0; j < N; ++j) r.v[j] = static_cast<T>(static_cast<A>(a.v[j]) op static_cast<A>(b.v[j])); \
        return r;                                                                                              \
    }                                                                                                          \
    template <class T, int N, class S>                                                                         \
    CALIBKIT_INLINE lanes_detail::IfScalar<Lanes<T, N>, S> operator op(const Lanes<T, N>& a, S b) {            \
        Lanes<T, N> s;                                                                                         \
        for (int j = 0; j < N; ++j) s.v[j] = static_cast<T>(b);                                                \
        return a op s;                                                                                         \
    }                                                                                                          \
    template <class T, int N, class S>                                                                         \
    CALIBKIT_INLINE lanes_detail::IfScalar<Lanes<T, N>, S> operator op(S a, const Lanes<T, N>& b) {            \
        Lanes<T, N> s;                                                                                         \
        for (int j = 0; j < N; ++j) s.v[j] = static_cast<T>(a);                                                \
        return s op b;                                                                                         \
    }                                                                                                          \
    template <class T, int N, class B>                                                                         \
    CALIBKIT_INLINE Lanes<T, N>& operator op##=(Lanes<T, N>& a, const B& b) {                                  \
        return a = a op b;                                                                                     \
    }

CALIBKIT_LANES_ARITH(+)
CALIBKIT_LANES_ARITH(-)
CALIBKIT_LANES_ARITH(*)
CALIBKIT_LANES_ARITH(/)
CALIBKIT_LANES_ARITH(&)
CALIBKIT_LANES_ARITH(|)
CALIBKIT_LANES_ARITH(^)
#undef CALIBKIT_LANES_ARITH

template <class T, int N>
CALIBKIT_INLINE Lanes<T, N> operator-(const Lanes<T, N>& a) {
    typedef lanes_detail::Arith<T> A;
    Lanes<T, N> r;
    for (int j = 0; j < N; ++j) r.v[j] = static_cast<T>(-static_cast<A>(a.v[j]));
    return r;
}

template <class T, int N, lanes_detail::IfInt<T> = 0>
CALIBKIT_INLINE Lanes<T, N> operator~(const Lanes<T, N>& a) {
    Lanes<T, N> r;
    for (int j = 0; j < N; ++j) r.v[j] = static_cast<T>(~a.v[j]);
    return r;
}

// Shifts by a scalar count: left through the unsigned type, right arithmetic (as vector lanes).
template <class T, int N, lanes_detail::IfInt<T> = 0>
CALIBKIT_INLINE Lanes<T, N> operator<<(const Lanes<T, N>& a, int s) {
    typedef typename std::make_unsigned<T>::type U;
    Lanes<T, N> r;
    for (int j = 0; j < N; ++j) r.v[j] = static_cast<T>(static_cast<U>(a.v[j]) << s);
    return r;
}

template <class T, int N, lanes_detail::IfInt<T> = 0>
CALIBKIT_INLINE Lanes<T, N> operator>>(const Lanes<T, N>& a, int s) {
    Lanes<T, N> r;
    for (int j = 0; j < N; ++j) r.v[j] = static_cast<T>(a.v[j] >> s);
    return r;
}

#define CALIBKIT_LANES_COMPARE(op)                                                                           \
    template <class T, int N>                                                                                \
    CALIBKIT_INLINE Lanes<typename MaskLane<T>::type, N> operator op(const Lanes<T, N>& a,                   \
                                                                      const Lanes<T, N>& b) {                \
        Lanes<typename MaskLane<T>::type, N> r;                                                              \
        for (int j = 0; j < N; ++j) r.v[j] = a.v[j] op b.v[j] ? -1 : 0;                                      \
        return r;                                                                                            \
    }                                                                                                        \
    template <class T, int N, class S>                                                                       \
    CALIBKIT_INLINE lanes_detail::IfScalar<Lanes<typename MaskLane<T>::type, N>, S> operator op(             \
        const Lanes<T, N>& a, S b) {                                                                         \
        Lanes<typename MaskLane<T>::type, N> r;                                                              \
        for (int j = 0; j < N; ++j) r.v[j] = a.v[j] op static_cast<T>(b) ? -1 : 0;                           \
        return r;                                                                                            \
    }

CALIBKIT_LANES_COMPARE(==)
CALIBKIT_LANES_COMPARE(!=)
CALIBKIT_LANES_COMPARE(<)
CALIBKIT_LANES_COMPARE(<=)
CALIBKIT_LANES_COMPARE(>)
CALIBKIT_LANES_COMPARE(>=)
#undef CALIBKIT_LANES_COMPARE

// Lane types: Vec<2> (SSE2, the portable default) and Vec<4> (AVX2 clones).
// fw / iw: one register of single-precision lanes (twice `width`), for the
// float32 paths; ih: `width` int32 lanes (half of iw).
template <int W>
struct Vec {
    static_assert(W == 2 || W == 4, "two or four double lanes");
    static constexpr int width = W;
    typedef Lanes<double, W> d;
    typedef Lanes<int64_t, W> i;
    typedef Lanes<float, W> f;
    typedef Lanes<float, 2 * W> fw;
    typedef Lanes<int32_t, 2 * W> iw;
    typedef Lanes<int32_t, W> ih;
};

// The lanes of x converted value by value to the lane type To (same lane count).
template <class To, class From>
CALIBKIT_INLINE To convert(const From& x) {
    static_assert(To::size == From::size, "the same number of lanes");
    To r;
    for (int j = 0; j < From::size; ++j) r.v[j] = static_cast<typename To::value_type>(x.v[j]);
    return r;
}

// Four lanes picked from a (lanes 0..3) and b (lanes 4..7): __builtin_shufflevector(a, b, I0, I1, I2, I3).
template <int I0, int I1, int I2, int I3, class F4>
CALIBKIT_INLINE F4 shuffle(const F4& a, const F4& b) {
    static_assert(F4::size == 4, "four lanes");
    const int at[4] = {I0, I1, I2, I3};
    F4 r;
    for (int j = 0; j < 4; ++j) r.v[j] = at[j] < 4 ? a.v[at[j]] : b.v[at[j] - 4];
    return r;
}

#else  // CALIBKIT_GNU_VECTORS

// Lane types: Vec<2> (SSE2, the portable default) and Vec<4> (AVX2 clones).
template <int W>
struct Vec;

// fw / iw: one register of single-precision lanes (twice `width`), for the
// float32 paths; ih: `width` int32 lanes (half of iw).
template <>
struct Vec<2> {
    static constexpr int width = 2;
    typedef double d __attribute__((vector_size(16)));
    typedef int64_t i __attribute__((vector_size(16)));
    typedef float f __attribute__((vector_size(8)));
    typedef float fw __attribute__((vector_size(16)));
    typedef int32_t iw __attribute__((vector_size(16)));
    typedef int32_t ih __attribute__((vector_size(8)));
};

template <>
struct Vec<4> {
    static constexpr int width = 4;
    typedef double d __attribute__((vector_size(32)));
    typedef int64_t i __attribute__((vector_size(32)));
    typedef float f __attribute__((vector_size(16)));
    typedef float fw __attribute__((vector_size(32)));
    typedef int32_t iw __attribute__((vector_size(32)));
    typedef int32_t ih __attribute__((vector_size(16)));
};

#if CALIBKIT_HAVE_AVX2_CLONES && defined(__GNUC__) && !defined(__clang__)
// GCC (12) lowers __builtin_convertvector of 4 floats to 4 doubles, and of 4 int32 to 4 int64, into
// 2-lane pieces even for an AVX2 target (a round trip through the stack each): these use the one
// instruction. Only the AVX2 clones use Vec<4>; their `flatten` inlines these into AVX2 code (not
// always_inline: the generic `convert` that calls them has no AVX target of its own). Same values.
#define CALIBKIT_GCC_AVX_CONVERT 1
__attribute__((target("avx"))) inline Vec<4>::d convert_f4_d4(Vec<4>::f x) {
    return (Vec<4>::d)__builtin_ia32_cvtps2pd256(x);
}
__attribute__((target("avx2"))) inline Vec<4>::i convert_i4_i64(Vec<4>::ih x) {
    return (Vec<4>::i)__builtin_ia32_pmovsxdq256(x);
}
#else
#define CALIBKIT_GCC_AVX_CONVERT 0
#endif

template <class To, class From>
CALIBKIT_INLINE To convert(From x) {
#if CALIBKIT_GCC_AVX_CONVERT
    if constexpr (std::is_same<To, Vec<4>::d>::value && std::is_same<From, Vec<4>::f>::value) {
        return convert_f4_d4(x);
    } else if constexpr (std::is_same<To, Vec<4>::i>::value && std::is_same<From, Vec<4>::ih>::value) {
        return convert_i4_i64(x);
    } else {
        return __builtin_convertvector(x, To);
    }
#else
    return __builtin_convertvector(x, To);
#endif
}

template <int I0, int I1, int I2, int I3, class F4>
CALIBKIT_INLINE F4 shuffle(F4 a, F4 b) {
    return __builtin_shufflevector(a, b, I0, I1, I2, I3);
}

#endif  // CALIBKIT_GNU_VECTORS

// True when the AVX2 clones may run: the CPU has AVX2 and CALIBKIT_NO_AVX2 is not set
// (the tests set it to compare both clones).
inline bool use_avx2() {
#if CALIBKIT_HAVE_AVX2_CLONES
    static const bool enabled = [] {
        const char* off = std::getenv("CALIBKIT_NO_AVX2");
        if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") != 0;
    }();
    return enabled;
#else
    return false;
#endif
}

template <class D>
CALIBKIT_INLINE D splat(double v) {
    D r;
    for (unsigned j = 0; j < sizeof(D) / sizeof(double); ++j) r[j] = v;
    return r;
}

template <class D, class I>
CALIBKIT_INLINE D select(I mask, D a, D b) {
    return (D)(((I)a & mask) | ((I)b & ~mask));
}

template <class F, class I>
CALIBKIT_INLINE F select_f(I mask, F a, F b) {
    return (F)(((I)a & mask) | ((I)b & ~mask));
}

template <class I>
CALIBKIT_INLINE I select_int(I mask, I a, I b) {
    return (a & mask) | (b & ~mask);
}

#if CALIBKIT_GNU_VECTORS && defined(__x86_64__)
// One instruction for what GCC 12 lowers to several on vectors: maxps / maxpd (minps / minpd) compute
// exactly `a > b ? a : b` (`a < b ? a : b`: b when unordered or equal), where GCC often emits a compare and
// a blend; vmovmskps takes a 32-byte mask's sign bits at once, where the 16-byte halves took an extract
// and two movmskps. The AVX widths are used by the AVX2 clones only (their `flatten` inlines these into
// AVX2 code, as convert_f4_d4). Same results.
#define CALIBKIT_X86_LANE_OPS 1
__attribute__((target("avx"))) inline Vec<4>::fw max_f8(Vec<4>::fw a, Vec<4>::fw b) { return __builtin_ia32_maxps256(a, b); }
__attribute__((target("avx"))) inline Vec<4>::d max_d4(Vec<4>::d a, Vec<4>::d b) { return __builtin_ia32_maxpd256(a, b); }
__attribute__((target("avx"))) inline Vec<4>::fw min_f8(Vec<4>::fw a, Vec<4>::fw b) { return __builtin_ia32_minps256(a, b); }
__attribute__((target("avx"))) inline Vec<4>::d min_d4(Vec<4>::d a, Vec<4>::d b) { return __builtin_ia32_minpd256(a, b); }
// The sign bits of the 8 float lanes of a 32-byte vector: one vmovmskps (lane_bits, any_lane).
__attribute__((target("avx"))) inline unsigned sign_bits_f8(Vec<4>::fw x) {
    return static_cast<unsigned>(__builtin_ia32_movmskps256(x));
}
#else
#define CALIBKIT_X86_LANE_OPS 0
#endif

// True when some lane of the mask m (lanes 0 or -1, 16 or 32 bytes) is set: the
// halves of a 32-byte mask are ORed, then one movmskps tests the sign bits
// (instead of one extract per lane).
template <class I>
CALIBKIT_INLINE bool any_lane(I m) {
    static_assert(sizeof(I) == 16 || sizeof(I) == 32, "a 16- or 32-byte mask");
#if CALIBKIT_X86_LANE_OPS
    if constexpr (sizeof(I) == 32) return sign_bits_f8((Vec<4>::fw)m) != 0;
#endif
    typedef Vec<2>::iw I4;
    I4 x;
    std::memcpy(&x, &m, sizeof x);
    if constexpr (sizeof(I) == 32) {
        I4 hi;
        std::memcpy(&hi, reinterpret_cast<const char*>(&m) + sizeof x, sizeof hi);
        x |= hi;
    }
#if CALIBKIT_GNU_VECTORS && defined(__SSE__)
    typedef float F4 __attribute__((vector_size(16)));
    return __builtin_ia32_movmskps((F4)x) != 0;
#else
    uint64_t w[2];
    std::memcpy(w, &x, sizeof w);
    return (w[0] | w[1]) != 0;
#endif
}

// The sign bits of a 16- or 32-byte mask of 32-bit lanes, lane j in bit j (movmskps on each
// 16-byte half).
template <class I>
CALIBKIT_INLINE unsigned lane_bits(I m) {
    static_assert(sizeof(I) == 16 || sizeof(I) == 32, "a 16- or 32-byte mask");
#if CALIBKIT_X86_LANE_OPS
    if constexpr (sizeof(I) == 32) return sign_bits_f8((Vec<4>::fw)m);
#endif
    typedef Vec<2>::iw I4;
    unsigned bits = 0;
    for (unsigned h = 0; h < sizeof(I) / 16; ++h) {
        I4 x;
        std::memcpy(&x, reinterpret_cast<const char*>(&m) + 16 * h, sizeof x);
#if CALIBKIT_GNU_VECTORS && defined(__SSE__)
        typedef float F4 __attribute__((vector_size(16)));
        bits |= static_cast<unsigned>(__builtin_ia32_movmskps((F4)x)) << (4 * h);
#else
        for (int j = 0; j < 4; ++j) bits |= (x[j] < 0 ? 1u : 0u) << (4 * h + j);
#endif
    }
    return bits;
}

// Lane-wise maximum with maxpd's semantics (b when unordered or equal).
template <class D>
CALIBKIT_INLINE D vmax(D a, D b) {
#if CALIBKIT_X86_LANE_OPS
    if constexpr (std::is_same<D, Vec<4>::fw>::value) return max_f8(a, b);
    else if constexpr (std::is_same<D, Vec<4>::d>::value) return max_d4(a, b);
    else if constexpr (std::is_same<D, Vec<2>::fw>::value) return __builtin_ia32_maxps(a, b);
    else if constexpr (std::is_same<D, Vec<2>::d>::value) return __builtin_ia32_maxpd(a, b);
    else return a > b ? a : b;
#elif CALIBKIT_GNU_VECTORS
    return a > b ? a : b;
#else
    for (int j = 0; j < D::size; ++j) a.v[j] = a.v[j] > b.v[j] ? a.v[j] : b.v[j];
    return a;
#endif
}

// exp(x) for x <= 0 (and -inf), to about 1 ulp: x = n ln2 + r with |r| <= ln2/2
// (Cody-Waite), e^r by its degree-12 Taylor polynomial (truncation error below
// 2e-16 relative, evaluated by Estrin's scheme), times 2^n built in the exponent
// bits. x is clamped at -708, so anything smaller (-inf included) gives
// exp(-708) ~ 3.3e-308: the kernels only add these values to sums that hold a 1
// (the row maximum), where they vanish exactly.
template <class V>
CALIBKIT_INLINE typename V::d exp_nonpositive(typename V::d x) {
    typedef typename V::d D;
    typedef typename V::i I;
    x = vmax(x, splat<D>(-708.0));
    const D shifter = splat<D>(6755399441055744.0);  // 1.5 * 2^52: adding it rounds to an integer
    const D t = x * splat<D>(1.4426950408889634) + shifter;
    const D n = t - shifter;
    D r = x - n * splat<D>(6.93147180369123816490e-01);  // ln2 high part: n * hi is exact
    r = r - n * splat<D>(1.90821492927058770002e-10);     // ln2 low part
    // Estrin's scheme: the same polynomial with a short dependency chain.
    const D r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
    const D q0 = splat<D>(1.0) + r;
    const D q1 = splat<D>(1.0 / 2.0) + r * splat<D>(1.0 / 6.0);
    const D q2 = splat<D>(1.0 / 24.0) + r * splat<D>(1.0 / 120.0);
    const D q3 = splat<D>(1.0 / 720.0) + r * splat<D>(1.0 / 5040.0);
    const D q4 = splat<D>(1.0 / 40320.0) + r * splat<D>(1.0 / 362880.0);
    const D q5 = splat<D>(1.0 / 3628800.0) + r * splat<D>(1.0 / 39916800.0);
    const D q6 = splat<D>(1.0 / 479001600.0);
    const D s0 = q0 + q1 * r2, s1 = q2 + q3 * r2, s2 = q4 + q5 * r2;
    const D p = (s0 + s1 * r4) + (s2 + q6 * r4) * r8;
    // The low bits of t hold n (two's complement): 2^n = (n + 1023) << 52.
    const I n_int = (I)t - (I)shifter;
    const D scale = (D)((n_int + 1023) << 52);
    return p * scale;
}

// The same function on one value (lane 0 of the portable width).
inline double exp_nonpositive(double x) { return exp_nonpositive<Vec<2>>(splat<Vec<2>::d>(x))[0]; }

// Lane-wise minimum with minpd's semantics (b when unordered or equal).
template <class D>
CALIBKIT_INLINE D vmin(D a, D b) {
#if CALIBKIT_X86_LANE_OPS
    if constexpr (std::is_same<D, Vec<4>::fw>::value) return min_f8(a, b);
    else if constexpr (std::is_same<D, Vec<4>::d>::value) return min_d4(a, b);
    else if constexpr (std::is_same<D, Vec<2>::fw>::value) return __builtin_ia32_minps(a, b);
    else if constexpr (std::is_same<D, Vec<2>::d>::value) return __builtin_ia32_minpd(a, b);
    else return a < b ? a : b;
#elif CALIBKIT_GNU_VECTORS
    return a < b ? a : b;
#else
    for (int j = 0; j < D::size; ++j) a.v[j] = a.v[j] < b.v[j] ? a.v[j] : b.v[j];
    return a;
#endif
}

// log(x) for finite x > 0 (subnormals included), to about 1 ulp: x = 2^e m with
// m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(f) with f = (m - 1) / (m + 1),
// |f| <= 0.1716, by its odd series to f^21 (truncation below 2e-17 relative),
// plus e ln2 (split in two parts). Lanes with x <= 0 give garbage: mask them.
template <class V>
CALIBKIT_INLINE typename V::d log_positive(typename V::d x) {
    typedef typename V::d D;
    typedef typename V::i I;
    const I tiny = x < splat<D>(2.2250738585072014e-308);
    x = select(tiny, x * splat<D>(18014398509481984.0), x);  // 2^54: subnormals become normal
    const I bits = (I)x;
    // The biased exponent as a double without an int64 -> double conversion: 2^52 + e_biased, minus 2^52.
    const I exp_bits = ((bits >> 52) & 0x7ff) | (I)splat<D>(4503599627370496.0);
    D e = (D)exp_bits - splat<D>(4503599627370496.0 + 1023.0);
    e = e - select(tiny, splat<D>(54.0), splat<D>(0.0));
    D m = (D)((bits & 0x000fffffffffffffll) | 0x3ff0000000000000ll);  // [1, 2)
    const I big = m > splat<D>(1.4142135623730951);
    m = select(big, m * splat<D>(0.5), m);
    e = e + select(big, splat<D>(1.0), splat<D>(0.0));
    const D f = (m - splat<D>(1.0)) / (m + splat<D>(1.0));
    const D f2 = f * f, f4 = f2 * f2, f8 = f4 * f4;
    // 1 + f2/3 + f4/5 + ... + f20/21 by Estrin's scheme.
    const D a0 = splat<D>(1.0) + f2 * splat<D>(1.0 / 3.0);
    const D a1 = splat<D>(1.0 / 5.0) + f2 * splat<D>(1.0 / 7.0);
    const D a2 = splat<D>(1.0 / 9.0) + f2 * splat<D>(1.0 / 11.0);
    const D a3 = splat<D>(1.0 / 13.0) + f2 * splat<D>(1.0 / 15.0);
    const D a4 = splat<D>(1.0 / 17.0) + f2 * splat<D>(1.0 / 19.0);
    const D a5 = splat<D>(1.0 / 21.0);
    const D b0 = a0 + a1 * f4, b1 = a2 + a3 * f4, b2 = a4 + a5 * f4;
    const D series = (b0 + b1 * f8) + (b2 * f8) * f8;
    const D log_m = (f + f) * series;
    return e * splat<D>(6.93147180369123816490e-01) + (log_m + e * splat<D>(1.90821492927058770002e-10));
}

inline double log_positive(double x) { return log_positive<Vec<2>>(splat<Vec<2>::d>(x))[0]; }

// ---------------------------------------------------------------------------
// Single precision, for float32 / float16 input: twice the lanes per register.
// Each function is a fixed sequence of IEEE float operations (no FMA), so the
// Numba twins (calibkit/_numba/_common.py, exp_f32 / log_f32) compute the same
// bits one value at a time.

template <class F>
CALIBKIT_INLINE F splat_f(float v) {
    F r;
    for (unsigned j = 0; j < sizeof(F) / sizeof(float); ++j) r[j] = v;
    return r;
}

// The float lanes of v to p (any float alignment) as one vector store. (A memcpy from a vector the
// compiler keeps in memory becomes a memory-to-memory copy in 16-byte pieces.)
template <class F>
CALIBKIT_INLINE void store_f(float* p, F v) {
#if CALIBKIT_GNU_VECTORS
    typedef float U __attribute__((vector_size(sizeof(F)), aligned(alignof(float)), may_alias));
    *reinterpret_cast<U*>(p) = v;
#else
    std::memcpy(p, &v, sizeof v);
#endif
}

// ln 2 split for Cody-Waite reduction: hi has 16 significant bits, so n * hi is
// exact for |n| < 256; lo = ln 2 - hi.
constexpr float kLn2HiF = 0.693145751953125f;
constexpr float kLn2LoF = static_cast<float>(0.6931471805599453 - 0.693145751953125);
// exp_f32's polynomial coefficients c2..c5 (the Numba twin's _EXP_C2.._EXP_C5).
constexpr float kExpC2F = 0.4999923f, kExpC3F = 0.16667114f, kExpC4F = 0.04189011f, kExpC5F = 0.00831253f;

// exp(x) for float x <= 0, relative error below 2.5e-7 (2.0e-7 at worst over
// every float in [-87, 0]): x = n ln2 + r, |r| <= ln2/2, e^r by the degree-5
// polynomial 1 + r + r^2 (c2 + c3 r + c4 r^2 + c5 r^3), c2..c5 fitted for the
// least largest relative error on |r| <= ln2/2 (truncation 1.05e-7; the
// degree-6 Taylor polynomial it replaced took one multiply and one add more,
// and its worst case was 2.54e-7), times 2^n. x is clamped at -87
// (exp(-87) ~ 1.6e-38, still normal): smaller terms only ever join sums that
// hold a 1, where their size does not matter.
//
// exp_f32_n computes N registers in lockstep (each step for all N before the
// next): the same operations on every lane as exp_f32, so the same bits, but N
// independent dependency chains side by side. One exp is a chain of ~20
// dependent operations; interleaved, the out-of-order core keeps the vector
// units busy instead of waiting on the chain.
template <class V, int N>
CALIBKIT_INLINE void exp_f32_n(typename V::fw (&x)[N]) {
    typedef typename V::fw F;
    typedef typename V::iw I;
    const F lowest = splat_f<F>(-87.0f), shifter = splat_f<F>(12582912.0f);  // 1.5 * 2^23
    const F log2e = splat_f<F>(static_cast<float>(1.4426950408889634));
    const F hi = splat_f<F>(kLn2HiF), lo = splat_f<F>(kLn2LoF);
    F t[N], r[N], p[N];
    for (int j = 0; j < N; ++j) x[j] = vmax(x[j], lowest);
    for (int j = 0; j < N; ++j) t[j] = x[j] * log2e + shifter;
    for (int j = 0; j < N; ++j) r[j] = t[j] - shifter;  // n
    for (int j = 0; j < N; ++j) x[j] = (x[j] - r[j] * hi) - r[j] * lo;  // r = x - n hi - n lo
    for (int j = 0; j < N; ++j) p[j] = splat_f<F>(kExpC4F) + x[j] * splat_f<F>(kExpC5F);
    for (int j = 0; j < N; ++j) p[j] = splat_f<F>(kExpC3F) + x[j] * p[j];
    for (int j = 0; j < N; ++j) p[j] = splat_f<F>(kExpC2F) + x[j] * p[j];
    for (int j = 0; j < N; ++j) p[j] = splat_f<F>(1.0f) + x[j] * p[j];
    for (int j = 0; j < N; ++j) p[j] = splat_f<F>(1.0f) + x[j] * p[j];
    for (int j = 0; j < N; ++j) x[j] = p[j] * (F)((((I)t[j] - (I)shifter) + 127) << 23);  // times 2^n
}

template <class V>
CALIBKIT_INLINE typename V::fw exp_f32(typename V::fw x) {
    typename V::fw v[1] = {x};
    exp_f32_n<V, 1>(v);
    return v[0];
}

// log(x) for float x > 0 (subnormals included), relative error below 2.5e-7
// (absolute below 1e-7 near x = 1): x = 2^e m, m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(f), f = (m - 1) / (m + 1), by the odd series to f^9
// (truncation < 2e-9). Lanes with x <= 0 give garbage: mask them.
template <class V>
CALIBKIT_INLINE typename V::fw log_f32(typename V::fw x) {
    typedef typename V::fw F;
    typedef typename V::iw I;
    const I tiny = x < splat_f<F>(1.17549435e-38f);
    x = select_f(tiny, x * splat_f<F>(16777216.0f), x);  // 2^24: subnormals become normal
    const I bits = (I)x;
    I e_int = ((bits >> 23) & 0xff) - 127;
    e_int = e_int - (tiny & 24);
    F m = (F)((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
    const I big = m > splat_f<F>(static_cast<float>(1.4142135623730951));
    m = select_f(big, m * splat_f<F>(0.5f), m);
    e_int = e_int - big;  // big is -1 where true
    const F e = convert<F>(e_int);
    const F f = (m - splat_f<F>(1.0f)) / (m + splat_f<F>(1.0f));
    const F f2 = f * f;
    F s = splat_f<F>(static_cast<float>(1.0 / 9.0));
    s = splat_f<F>(static_cast<float>(1.0 / 7.0)) + f2 * s;
    s = splat_f<F>(static_cast<float>(1.0 / 5.0)) + f2 * s;
    s = splat_f<F>(static_cast<float>(1.0 / 3.0)) + f2 * s;
    s = splat_f<F>(1.0f) + f2 * s;
    const F log_m = (f + f) * s;
    return e * splat_f<F>(kLn2HiF) + (log_m + e * splat_f<F>(kLn2LoF));
}

inline float exp_f32(float x) { return exp_f32<Vec<2>>(splat_f<Vec<2>::fw>(x))[0]; }
inline float log_f32(float x) { return log_f32<Vec<2>>(splat_f<Vec<2>::fw>(x))[0]; }

// The float lanes of x as two double vectors (lanes 0..w-1 and w..2w-1).
// (A shuffle where the compiler has one: the memcpy halves go through the stack.)
template <class V>
CALIBKIT_INLINE void widen(typename V::fw x, typename V::d& lo, typename V::d& hi) {
    typename V::f a, b;
#if !CALIBKIT_GNU_VECTORS
    for (int j = 0; j < V::width; ++j) {
        a[j] = x[j];
        b[j] = x[V::width + j];
    }
#elif defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    if constexpr (V::width == 4) {
        a = __builtin_shufflevector(x, x, 0, 1, 2, 3);
        b = __builtin_shufflevector(x, x, 4, 5, 6, 7);
    } else {
        a = __builtin_shufflevector(x, x, 0, 1);
        b = __builtin_shufflevector(x, x, 2, 3);
    }
#else
    std::memcpy(&a, &x, sizeof a);
    std::memcpy(&b, reinterpret_cast<const char*>(&x) + sizeof a, sizeof b);
#endif
    lo = convert<typename V::d>(a);
    hi = convert<typename V::d>(b);
}

// Eight float lanes: 0..3 from lo, 4..7 from hi (two 4-lane registers as one 8-lane register).
template <class F8, class F4>
CALIBKIT_INLINE F8 concat_f(F4 lo, F4 hi) {
    static_assert(sizeof(F8) == 2 * sizeof(F4), "two halves");
#if CALIBKIT_GNU_VECTORS && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
    return (F8)__builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
#else
    F8 r;
    for (int j = 0; j < 4; ++j) {
        r[j] = lo[j];
        r[4 + j] = hi[j];
    }
    return r;
#endif
}

// Eight lanes picked from a (lanes 0..7) and b (lanes 8..15): __builtin_shufflevector(a, b, I...).
template <int... I, class F8>
CALIBKIT_INLINE F8 shuffle8(F8 a, F8 b) {
    static_assert(sizeof...(I) == 8, "eight lanes");
#if CALIBKIT_GNU_VECTORS && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))
    return (F8)__builtin_shufflevector(a, b, I...);
#else
    const int at[8] = {I...};
    F8 r;
    for (int j = 0; j < 8; ++j) r[j] = at[j] < 8 ? a[at[j]] : b[at[j] - 8];
    return r;
#endif
}

// v in every float lane of F, as one broadcast (splat_f's lane loop can stay a loop of inserts).
template <class F>
CALIBKIT_INLINE F broadcast_f(float v) {
#if CALIBKIT_GNU_VECTORS
    constexpr int n = static_cast<int>(sizeof(F) / sizeof(float));
    static_assert(n == 4 || n == 8, "four or eight float lanes");
    if constexpr (n == 4) {
        return F{v, v, v, v};
    } else {
        return F{v, v, v, v, v, v, v, v};
    }
#else
    return splat_f<F>(v);
#endif
}

// Eight consecutive elements of a row ("an octet") as 8 / W vectors of W
// doubles. Element j of the octet is lane j: sums over octets are combined in
// the fixed order of `octet_sum`, the same for W = 2 and W = 4.
template <class V>
struct Octet {
    static constexpr int n = 8 / V::width;
    typename V::d v[n];
};

template <class V>
CALIBKIT_INLINE double octet_sum(const Octet<V>& o) {
    // c_j = lane j + lane j+4, then (c_0 + c_1) + (c_2 + c_3).
    if constexpr (V::width == 4) {
        const typename V::d c = o.v[0] + o.v[1];
        return (c[0] + c[1]) + (c[2] + c[3]);
    } else {
        const typename V::d c01 = o.v[0] + o.v[2], c23 = o.v[1] + o.v[3];
        return (c01[0] + c01[1]) + (c23[0] + c23[1]);
    }
}

// Eight consecutive elements of a float32 / float16 row as 8 / (2 W) registers
// of 2 W float lanes (one AVX2 register, two SSE2 ones). Element j is lane j.
template <class V>
struct FOctet {
    static constexpr int n = 8 / (2 * V::width);
    typename V::fw v[n];
};

// acc += the float partial sums `part` (lane j to lane j, widened to double); part = 0.
// Float partials flushed this way every few octets keep long sums in double.
template <class V>
CALIBKIT_INLINE void flush_float_octet(Octet<V>& acc, FOctet<V>& part) {
    for (int g = 0; g < FOctet<V>::n; ++g) {
        typename V::d lo, hi;
        widen<V>(part.v[g], lo, hi);
        acc.v[2 * g] += lo;
        acc.v[2 * g + 1] += hi;
        part.v[g] = splat_f<typename V::fw>(0.0f);
    }
}

template <class T, class V>
struct GroupLoad {
    CALIBKIT_INLINE static typename V::d contiguous(const T* p) {
        typename V::d r;
        for (int j = 0; j < V::width; ++j) r[j] = load(p + j);
        return r;
    }
};

template <class V>
struct GroupLoad<float, V> {
    CALIBKIT_INLINE static typename V::d contiguous(const float* p) {
        typename V::f v;
        std::memcpy(&v, p, sizeof v);
        return convert<typename V::d>(v);
    }
};

template <class V>
struct GroupLoad<double, V> {
    CALIBKIT_INLINE static typename V::d contiguous(const double* p) {
        typename V::d v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }
};

// A row of a Matrix<T>, `stride` bytes between elements (Contiguous: sizeof(T)).
template <class T, bool Contiguous>
struct RowReader {
    const char* base;
    int64_t stride;

    CALIBKIT_INLINE double at(int64_t k) const { return load(reinterpret_cast<const T*>(base + k * stride)); }
    // float32 / float16 rows only: element k as float (exact).
    CALIBKIT_INLINE float atf(int64_t k) const { return load_float(reinterpret_cast<const T*>(base + k * stride)); }

    // float32 / float16 rows only: elements k..k+7 as floats.
    template <class V>
    CALIBKIT_INLINE FOctet<V> foctet(int64_t k) const {
        FOctet<V> o;
        if constexpr (Contiguous && std::is_same<T, float>::value) {
            std::memcpy(&o.v[0], reinterpret_cast<const float*>(base) + k, sizeof o.v);
        } else {
            for (int g = 0; g < FOctet<V>::n; ++g)
                for (int j = 0; j < 2 * V::width; ++j) o.v[g][j] = atf(k + g * 2 * V::width + j);
        }
        return o;
    }
    // Elements k..k+n-1 (n < 8) in lanes 0..n-1, `pad` elsewhere.
    template <class V>
    CALIBKIT_INLINE FOctet<V> partial_foctet(int64_t k, int64_t n, float pad) const {
        FOctet<V> o;
        for (int g = 0; g < FOctet<V>::n; ++g)
            for (int j = 0; j < 2 * V::width; ++j) {
                const int lane = g * 2 * V::width + j;
                o.v[g][j] = lane < n ? atf(k + lane) : pad;
            }
        return o;
    }

    template <class V>
    CALIBKIT_INLINE Octet<V> octet(int64_t k) const {
        Octet<V> o;
        for (int g = 0; g < Octet<V>::n; ++g) {
            if constexpr (Contiguous) {
                o.v[g] = GroupLoad<T, V>::contiguous(reinterpret_cast<const T*>(base) + k + g * V::width);
            } else {
                for (int j = 0; j < V::width; ++j) o.v[g][j] = at(k + g * V::width + j);
            }
        }
        return o;
    }

    // Elements k.. k+n-1 (n < 8) in lanes 0..n-1, `pad` elsewhere.
    template <class V>
    CALIBKIT_INLINE Octet<V> partial_octet(int64_t k, int64_t n, double pad) const {
        Octet<V> o;
        for (int g = 0; g < Octet<V>::n; ++g)
            for (int j = 0; j < V::width; ++j) {
                const int lane = g * V::width + j;
                o.v[g][j] = lane < n ? at(k + lane) : pad;
            }
        return o;
    }
};

// Lane masks for the last octet of a row of K elements. For K >= 8 the last
// octet is the one ending at K (it overlaps the previous one; lanes already
// counted are masked out); for K < 8 it is a partial octet starting at 0.
template <class V>
struct TailMask {
    typename V::i valid[Octet<V>::n];
    int64_t start;    // first element of the last octet
    bool overlapped;  // K >= 8: a full load ending at K
    bool needed;      // K % 8 != 0

    explicit TailMask(int64_t K) {
        const int64_t rest = K % 8;
        needed = rest != 0;
        overlapped = K >= 8;
        start = overlapped ? K - 8 : 0;
        const int64_t first_valid = overlapped ? 8 - rest : 0;  // lanes below were counted already
        const int64_t last_valid = overlapped ? 8 : K;          // lanes at or above are padding
        for (int g = 0; g < Octet<V>::n; ++g)
            for (int j = 0; j < V::width; ++j) {
                const int lane = g * V::width + j;
                valid[g][j] = (lane >= first_valid && lane < last_valid) ? -1 : 0;
            }
    }
};

// ---------------------------------------------------------------------------
// Dense (pixel-contiguous, class-strided) matrices: rows are adjacent elements
// (row_stride == sizeof(T)) and a row's classes are far apart. The dense kernels
// read eight consecutive rows' values of one class with one contiguous load
// (SIMD across rows): lane r of a DenseOctet is row i0 + r.

// 2 W lanes of uint16 (the raw bits of 2 W float16 values).
template <class V>
struct HalfLanes;
#if CALIBKIT_GNU_VECTORS
template <>
struct HalfLanes<Vec<2>> {
    typedef uint16_t u __attribute__((vector_size(8)));
};
template <>
struct HalfLanes<Vec<4>> {
    typedef uint16_t u __attribute__((vector_size(16)));
};
#else
template <int W>
struct HalfLanes<Vec<W>> {
    typedef Lanes<uint16_t, 2 * W> u;
};
#endif

// 2 W float16 values (raw bits at p) as floats, exactly (the same values as half_bits_to_float, in
// vector form): normal numbers rebias their exponent, inf / NaN keep an all-ones exponent, zeros and
// subnormals are built as 2^-14 (1 + m / 1024) and then lose 2^-14 exactly (Sterbenz).
template <class V>
CALIBKIT_INLINE typename V::fw half_to_float(const uint16_t* p) {
    typedef typename V::fw F;
    typedef typename V::iw I;
    typename HalfLanes<V>::u u;
    std::memcpy(&u, p, sizeof u);
    const I h = convert<I>(u);
    I o = (h & 0x7fff) << 13;
    const I e = o & (0x7c00 << 13);
    o = o + ((127 - 15) << 23);
    o = o + ((e == (0x7c00 << 13)) & ((128 - 16) << 23));
    const I small = e == 0;
    o = o + (small & (1 << 23));
    F f = (F)o;
    f = select_f(small, f - splat_f<F>(6.103515625e-05f), f);  // 2^-14
    const I negative = (h & 0x8000) != 0;
    return select_f(negative, -f, f);
}

// Eight consecutive elements at p (float32 or float16) as floats: lane r is element r.
template <class T, class V>
CALIBKIT_INLINE FOctet<V> dense_foctet(const char* p) {
    FOctet<V> o;
    if constexpr (std::is_same<T, float>::value) {
        std::memcpy(&o.v[0], p, sizeof o.v);
    } else {
        static_assert(sizeof(T) == 2, "float16 as raw bits");
        for (int g = 0; g < FOctet<V>::n; ++g)
            o.v[g] = half_to_float<V>(reinterpret_cast<const uint16_t*>(p) + g * 2 * V::width);
    }
    return o;
}

}  // namespace simd
}  // namespace calibkit
