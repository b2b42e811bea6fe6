// Small SIMD layer for the MSCA CPU kernels: one struct Vec<T> per (ISA, scalar type) with the
// handful of operations the micro-kernels need, and a vectorised exp.
//
// Why not at::vec::Vectorized: in an extension built outside ATen's per-ISA dispatch
// (CPU_CAPABILITY is not defined), Vectorized falls back to its scalar-array base and its exp to
// Sleef, neither of which gives us register-resident accumulators. Why not plain loops with
// `#pragma omp simd`: the micro-kernels keep a fixed 2D block of accumulators in registers, which
// the auto-vectoriser does not reliably do.
//
// The ISA is chosen at compile time from the -march flags (-march=native in setup.py):
// AVX-512F (16 floats / 8 doubles), else AVX2+FMA (8 / 4), else scalar (1 lane, std::exp).
// Nothing here assumes -ffast-math: infinities and NaN are handled explicitly in exp().
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace msca_cpu {
namespace vec {

template <typename T>
struct Vec;

// Coefficients shared by the polynomial exps: exp(x) = 2^n * exp(r), n = round(x / ln2),
// r = x - n ln2 computed with ln2 split in two (Cody-Waite) so r keeps full precision;
// |r| <= ln2/2 = 0.347, where the Taylor series to degree 7 (float) / 13 (double) has a
// truncation error below 0.1 ulp.
struct ExpConstF {
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693359375f;      // 9 significant bits: n * ln2_hi is exact
  static constexpr float ln2_lo = -2.12194440e-4f;   // ln2 - ln2_hi
};
struct ExpConstD {
  static constexpr double log2e = 1.4426950408889634074;
  static constexpr double ln2_hi = 6.93147180369123816490e-01;  // 32 significant bits
  static constexpr double ln2_lo = 1.90821492927058770002e-10;
};

#if defined(__AVX512F__)

#define MSCA_VEC_ISA "avx512"

template <>
struct Vec<float> {
  using reg = __m512;
  static constexpr int W = 16;
  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg set1(float x) { return _mm512_set1_ps(x); }
  static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  // Non-temporal store (p must be 64-byte aligned): the big outputs are written once and not
  // read back, so skipping the read-for-ownership saves a third of their memory traffic.
  static inline void stream(float* p, reg v) { _mm512_stream_ps(p, v); }
  static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  // (a > b) ? x : y, lane by lane
  static inline reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), y, x);
  }
  static inline float hsum(reg v) { return _mm512_reduce_add_ps(v); }
  static inline float hmax(reg v) { return _mm512_reduce_max_ps(v); }
  // m where m != -inf, else 0: the shift of a softmax whose logits are all -inf.
  static inline reg zero_if_neginf(reg m) {
    __mmask16 k = _mm512_cmp_ps_mask(m, set1(-std::numeric_limits<float>::infinity()),
                                     _CMP_NEQ_UQ);
    return _mm512_maskz_mov_ps(k, m);
  }
  // 1/s where s > 0, else 0: normaliser of a softmax that attends to nothing.
  static inline reg recip_or_zero(reg s) {
    __mmask16 k = _mm512_cmp_ps_mask(s, zero(), _CMP_GT_OQ);
    return _mm512_maskz_div_ps(k, set1(1.0f), s);
  }
  static inline reg exp(reg x) {
    // Clamp first: -inf and anything below -104 become -104, whose exp underflows to 0 in
    // scalef; above 100 scalef overflows to +inf. Operand order matters for NaN: max/min return
    // their second operand when either is NaN, so a NaN input stays NaN.
    x = _mm512_min_ps(set1(100.0f), _mm512_max_ps(set1(-104.0f), x));
    reg n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(ExpConstF::log2e)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = _mm512_fnmadd_ps(n, set1(ExpConstF::ln2_hi), x);
    r = _mm512_fnmadd_ps(n, set1(ExpConstF::ln2_lo), r);
    reg p = set1(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, set1(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, set1(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, set1(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, set1(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, set1(0.5f));
    p = _mm512_fmadd_ps(p, r, set1(1.0f));
    p = _mm512_fmadd_ps(p, r, set1(1.0f));
    // scalef computes p * 2^n with correct overflow, underflow and denormal results, so no
    // exponent-field arithmetic (and no range limit on n) is needed.
    return _mm512_scalef_ps(p, n);
  }
};

template <>
struct Vec<double> {
  using reg = __m512d;
  static constexpr int W = 8;
  static inline reg zero() { return _mm512_setzero_pd(); }
  static inline reg set1(double x) { return _mm512_set1_pd(x); }
  static inline reg load(const double* p) { return _mm512_loadu_pd(p); }
  static inline void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static inline void stream(double* p, reg v) { _mm512_stream_pd(p, v); }
  static inline reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static inline reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  static inline reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, b, _CMP_GT_OQ), y, x);
  }
  static inline double hsum(reg v) { return _mm512_reduce_add_pd(v); }
  static inline double hmax(reg v) { return _mm512_reduce_max_pd(v); }
  static inline reg zero_if_neginf(reg m) {
    __mmask8 k = _mm512_cmp_pd_mask(m, set1(-std::numeric_limits<double>::infinity()),
                                    _CMP_NEQ_UQ);
    return _mm512_maskz_mov_pd(k, m);
  }
  static inline reg recip_or_zero(reg s) {
    __mmask8 k = _mm512_cmp_pd_mask(s, zero(), _CMP_GT_OQ);
    return _mm512_maskz_div_pd(k, set1(1.0), s);
  }
  static inline reg exp(reg x) {
    x = _mm512_min_pd(set1(710.0), _mm512_max_pd(set1(-760.0), x));
    reg n = _mm512_roundscale_pd(_mm512_mul_pd(x, set1(ExpConstD::log2e)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = _mm512_fnmadd_pd(n, set1(ExpConstD::ln2_hi), x);
    r = _mm512_fnmadd_pd(n, set1(ExpConstD::ln2_lo), r);
    reg p = set1(1.0 / 6227020800.0);  // 1/13!
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 479001600.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 39916800.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 3628800.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 362880.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 40320.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 5040.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, set1(0.5));
    p = _mm512_fmadd_pd(p, r, set1(1.0));
    p = _mm512_fmadd_pd(p, r, set1(1.0));
    return _mm512_scalef_pd(p, n);
  }
};

#elif defined(__AVX2__) && defined(__FMA__)

#define MSCA_VEC_ISA "avx2"

template <>
struct Vec<float> {
  using reg = __m256;
  static constexpr int W = 8;
  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg set1(float x) { return _mm256_set1_ps(x); }
  static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static inline void stream(float* p, reg v) { _mm256_stream_ps(p, v); }
  static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static inline reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
  }
  static inline float hsum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline float hmax(reg v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline reg zero_if_neginf(reg m) {
    reg keep = _mm256_cmp_ps(m, set1(-std::numeric_limits<float>::infinity()), _CMP_NEQ_UQ);
    return _mm256_and_ps(keep, m);
  }
  static inline reg recip_or_zero(reg s) {
    reg pos = _mm256_cmp_ps(s, zero(), _CMP_GT_OQ);
    return _mm256_and_ps(pos, _mm256_div_ps(set1(1.0f), s));
  }
  static inline reg exp(reg x0) {
    // Without scalef, 2^n is built in the exponent field, so n must stay in [-126, 127]:
    // clamp x to [-87.3, 88.3], flush results below -87.3 to 0 and pass NaN through.
    reg x = _mm256_min_ps(set1(88.3f), _mm256_max_ps(set1(-87.3f), x0));
    reg n = _mm256_round_ps(_mm256_mul_ps(x, set1(ExpConstF::log2e)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = _mm256_fnmadd_ps(n, set1(ExpConstF::ln2_hi), x);
    r = _mm256_fnmadd_ps(n, set1(ExpConstF::ln2_lo), r);
    reg p = set1(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, set1(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, set1(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, set1(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, set1(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, set1(0.5f));
    p = _mm256_fmadd_ps(p, r, set1(1.0f));
    p = _mm256_fmadd_ps(p, r, set1(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    reg y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(_mm256_cmp_ps(x0, set1(-87.3f), _CMP_LT_OQ), y);  // underflow -> 0
    y = _mm256_blendv_ps(y, set1(std::numeric_limits<float>::infinity()),
                         _mm256_cmp_ps(x0, set1(88.3f), _CMP_GT_OQ));
    return _mm256_blendv_ps(y, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));  // NaN stays NaN
  }
};

template <>
struct Vec<double> {
  using reg = __m256d;
  static constexpr int W = 4;
  static inline reg zero() { return _mm256_setzero_pd(); }
  static inline reg set1(double x) { return _mm256_set1_pd(x); }
  static inline reg load(const double* p) { return _mm256_loadu_pd(p); }
  static inline void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static inline void stream(double* p, reg v) { _mm256_stream_pd(p, v); }
  static inline reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static inline reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
  static inline reg select_gt(reg a, reg b, reg x, reg y) {
    return _mm256_blendv_pd(y, x, _mm256_cmp_pd(a, b, _CMP_GT_OQ));
  }
  static inline double hsum(reg v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static inline double hmax(reg v) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static inline reg zero_if_neginf(reg m) {
    reg keep = _mm256_cmp_pd(m, set1(-std::numeric_limits<double>::infinity()), _CMP_NEQ_UQ);
    return _mm256_and_pd(keep, m);
  }
  static inline reg recip_or_zero(reg s) {
    reg pos = _mm256_cmp_pd(s, zero(), _CMP_GT_OQ);
    return _mm256_and_pd(pos, _mm256_div_pd(set1(1.0), s));
  }
  static inline reg exp(reg x0) {
    reg x = _mm256_min_pd(set1(709.0), _mm256_max_pd(set1(-708.0), x0));
    reg n = _mm256_round_pd(_mm256_mul_pd(x, set1(ExpConstD::log2e)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    reg r = _mm256_fnmadd_pd(n, set1(ExpConstD::ln2_hi), x);
    r = _mm256_fnmadd_pd(n, set1(ExpConstD::ln2_lo), r);
    reg p = set1(1.0 / 6227020800.0);
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 479001600.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 39916800.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 3628800.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 362880.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 40320.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 5040.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 720.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 120.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 24.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0 / 6.0));
    p = _mm256_fmadd_pd(p, r, set1(0.5));
    p = _mm256_fmadd_pd(p, r, set1(1.0));
    p = _mm256_fmadd_pd(p, r, set1(1.0));
    // AVX2 has no double -> int64 conversion; n + 1.5*2^52 puts n (two's complement) in the low
    // mantissa bits, and adding the bias then shifting by 52 drops the high bits of the shifter.
    const reg shifter = set1(6755399441055744.0);  // 1.5 * 2^52
    __m256i bits = _mm256_castpd_si256(_mm256_add_pd(n, shifter));
    __m256i e = _mm256_slli_epi64(_mm256_add_epi64(bits, _mm256_set1_epi64x(1023)), 52);
    reg y = _mm256_mul_pd(p, _mm256_castsi256_pd(e));
    y = _mm256_andnot_pd(_mm256_cmp_pd(x0, set1(-708.0), _CMP_LT_OQ), y);
    y = _mm256_blendv_pd(y, set1(std::numeric_limits<double>::infinity()),
                         _mm256_cmp_pd(x0, set1(709.0), _CMP_GT_OQ));
    return _mm256_blendv_pd(y, x0, _mm256_cmp_pd(x0, x0, _CMP_UNORD_Q));
  }
};

#else

#define MSCA_VEC_ISA "scalar"

// Portable fallback (e.g. MSCA_PORTABLE=1 builds without -march): one lane, std::exp.
template <typename T>
struct VecScalar {
  using reg = T;
  static constexpr int W = 1;
  static inline reg zero() { return T(0); }
  static inline reg set1(T x) { return x; }
  static inline reg load(const T* p) { return *p; }
  static inline void store(T* p, reg v) { *p = v; }
  static inline void stream(T* p, reg v) { *p = v; }
  static inline reg add(reg a, reg b) { return a + b; }
  static inline reg sub(reg a, reg b) { return a - b; }
  static inline reg mul(reg a, reg b) { return a * b; }
  static inline reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static inline reg max(reg a, reg b) { return a > b ? a : b; }
  static inline reg select_gt(reg a, reg b, reg x, reg y) { return a > b ? x : y; }
  static inline T hsum(reg v) { return v; }
  static inline T hmax(reg v) { return v; }
  static inline reg zero_if_neginf(reg m) {
    return m == -std::numeric_limits<T>::infinity() ? T(0) : m;
  }
  static inline reg recip_or_zero(reg s) { return s > T(0) ? T(1) / s : T(0); }
  static inline reg exp(reg x) { return std::exp(x); }
};
template <>
struct Vec<float> : VecScalar<float> {};
template <>
struct Vec<double> : VecScalar<double> {};

#endif

// Software prefetch into L2 (never faults, so prefetching past the end of an array is harmless)
// and the store fence that orders non-temporal stores before the threads join.
inline void prefetch_l2(const void* p) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#else
  __builtin_prefetch(p, 0, 2);
#endif
}
inline void store_fence() {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  _mm_sfence();
#endif
}

}  // namespace vec
}  // namespace msca_cpu
