// Helpers shared by the raw CUDA kernels of msca_kernels (csrc/cuda/*.cu). CUDA only: no torch
// headers, so `make cuda-check` can compile every kernel with a bare nvcc.
//
// Scalar types: float, __half, __nv_bfloat16 accumulate in float; double in double (acc_t).
// Global loads of a tile row use one 16-byte access per kVec<T> elements (4 floats, 8 halves)
// when the caller says the rows are aligned; stores of 4 results use one 4*sizeof(T) access.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace msca_cuda {

template <typename T>
struct AccT {
  using type = float;
};
template <>
struct AccT<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccT<T>::type;

// Elements per 16-byte global access.
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

template <typename T>
struct Conv;
template <>
struct Conv<float> {
  __device__ static float in(float v) { return v; }
  __device__ static float out(float v) { return v; }
};
template <>
struct Conv<double> {
  __device__ static double in(double v) { return v; }
  __device__ static double out(double v) { return v; }
};
template <>
struct Conv<__half> {
  __device__ static float in(__half v) { return __half2float(v); }
  __device__ static __half out(float v) { return __float2half_rn(v); }
};
template <>
struct Conv<__nv_bfloat16> {
  __device__ static float in(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 out(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
__device__ __forceinline__ acc_t<T> ld_acc(const T* p) {
  return Conv<T>::in(*p);
}

// A packed group of n elements, aligned to its size, for vector loads and stores.
template <typename T, int n>
struct alignas(sizeof(T) * n) Pack {
  T v[n];
};

// exp and log in the accumulation type. float uses the hardware approximations (the build
// uses --use_fast_math anyway); exp(-inf) = 0 either way.
__device__ __forceinline__ float exp_acc(float x) { return __expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return __logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

template <typename A>
__device__ __forceinline__ A neg_inf() {
  return -static_cast<A>(INFINITY);
}

// Four consecutive shared-memory values (16-byte aligned for float, 2 x 16 for double).
__device__ __forceinline__ void ld4(const float* p, float (&v)[4]) {
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void ld4(const double* p, double (&v)[4]) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void st4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void st4(double* p, const double (&v)[4]) {
  *reinterpret_cast<double2*>(p) = make_double2(v[0], v[1]);
  *reinterpret_cast<double2*>(p + 2) = make_double2(v[2], v[3]);
}

// Writes up to 4 results to dst[0..nvalid): one vector store when vec (dst aligned to
// 4*sizeof(T)) and all 4 are valid, scalar stores otherwise.
template <typename T>
__device__ __forceinline__ void store4(T* dst, const acc_t<T> (&v)[4], int nvalid, bool vec) {
  if (vec && nvalid >= 4) {
    Pack<T, 4> pk;
#pragma unroll
    for (int i = 0; i < 4; ++i) pk.v[i] = Conv<T>::out(v[i]);
    *reinterpret_cast<Pack<T, 4>*>(dst) = pk;
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      if (i < nvalid) dst[i] = Conv<T>::out(v[i]);
  }
}

// max(a, b) that keeps NaN: fmax drops it (fmax(NaN, 1) = 1), and a softmax whose maximum
// dropped a NaN logit would hide it (issue 13: NaN in, NaN out).
template <typename A>
__device__ __forceinline__ A max_nan(A a, A b) {
  return (a != a || a > b) ? a : b;
}

// Warp reductions with a fixed butterfly: every lane ends with the same, reproducible value.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
// NaN if any lane holds NaN (max_nan).
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether p is aligned to `bytes`.
inline bool is_aligned(const void* p, uintptr_t bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

}  // namespace msca_cuda
