// The CUDA runtime as the raw kernels of csrc/cuda see it, for running them on a CPU in the test
// suite (tests/cuda_emu/README.md). Compiled as plain C++17 by g++; nothing here is used by the
// real build.
//
// Model of the GPU:
// - A launch runs its blocks one after another, in a shuffled order (a kernel must not depend on
//   block order). The threads of a block are fibers on one OS thread: each runs until it reaches
//   __syncthreads or a warp shuffle, then the next runs; the order alternates forward/backward
//   between barriers, so a missing barrier shows as a read of data not yet written or already
//   overwritten.
// - __syncthreads is a block-wide barrier that every live thread must reach; a thread that has
//   returned while others wait is an error (undefined on the GPU). Warp shuffles synchronise
//   only the 32 lanes of their warp, and all lanes must be at the same shuffle.
// - Dynamic shared memory is exactly the launch's size, filled with NaN (0xFF bytes) for every
//   block and followed by an unmapped page: reading past the launch's size faults.
// - Launch limits of an sm_90 GPU: grid.x < 2^31, grid.y/z <= 65535, 1024 threads a block, 48 KiB
//   of dynamic shared memory unless cudaFuncSetAttribute raised the kernel's limit, which must
//   stay within the device's opt-in maximum (emu_set_max_smem_optin, 227 KiB by default).
// - __expf/__logf in the GPU's form: ex2/lg2 of the argument scaled in float.
#pragma once

#include <math.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static shared arrays: one per OS thread, i.e. per block being run (blocks run one at a time).
#define __shared__ thread_local

using std::fma;
using std::fmax;
using std::fmin;

// ---- runtime types ----------------------------------------------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
typedef struct emu_stream* cudaStream_t;

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

// ---- half and bfloat16: storage types with round-to-nearest-even conversions ------------------
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
namespace emu {
inline uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace emu

inline float __half2float(__half h) {
  const uint32_t s = (h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1f, m = h.bits & 0x3ff;
  if (e == 0x1f) return emu::u2f(s | 0x7f800000u | (m << 13));        // inf, nan
  if (e != 0) return emu::u2f(s | ((e + 112) << 23) | (m << 13));     // normal
  return (s ? -1.0f : 1.0f) * std::ldexp(static_cast<float>(m), -24);  // subnormal, zero
}
inline __half __float2half_rn(float f) {
  const uint32_t u = emu::f2u(f);
  const uint16_t s = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return __half{static_cast<uint16_t>(s | 0x7e00u)};
  if (a >= 65520.0f) return __half{static_cast<uint16_t>(s | 0x7c00u)};  // rounds to inf
  if (a < 6.103515625e-05f) {  // subnormal half: multiples of 2^-24, rint is round-half-even
    return __half{static_cast<uint16_t>(s | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f)))};
  }
  // normal: drop 13 mantissa bits with round-to-nearest-even (a carry into the exponent is right)
  const uint32_t au = u & 0x7fffffffu;
  uint32_t r = au + 0xfffu + ((au >> 13) & 1u);
  r = (r >> 13) - (112u << 10);
  return __half{static_cast<uint16_t>(s | r)};
}
inline float __bfloat162float(__nv_bfloat16 b) { return emu::u2f(static_cast<uint32_t>(b.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = emu::f2u(f);
  if (std::isnan(f)) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  const uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(r >> 16)};
}

// ---- fast-math intrinsics in the GPU's form ---------------------------------------------------
inline float __expf(float x) { return exp2f(x * 1.44269504088896341f); }
inline float __logf(float x) { return log2f(x) * 0.693147180559945309f; }

// ---- execution model --------------------------------------------------------------------------
namespace emu {

// The calling fiber's thread index, and the block being run.
const uint3& thread_idx();
extern thread_local uint3 block_idx_;
extern thread_local dim3 block_dim_;
extern thread_local dim3 grid_dim_;
unsigned char* dynamic_smem();

void syncthreads();
// Exchanges 8 bytes within the calling thread's warp; returns lane src_lane's value.
uint64_t warp_exchange(uint64_t v, unsigned mask, int src_lane);
int lane_id();
// Records an error of the running launch (it is reported by cudaGetLastError and emu_error).
void fail(const char* what);

struct Config {
  dim3 grid, block;
  size_t smem;
};
// Runs body() once per thread of every block of the launch; false if the launch was refused.
bool run_launch(const char* name, const void* fn, const Config& cfg, void (*body)(void*),
                void* ctx);

template <typename... P>
struct Launcher {
  const char* name;
  void (*fn)(P...);
  Config cfg;
  template <typename... Args>
  void operator()(Args&&... args) const {
    // Kernel parameters are copied once at the launch (converted to the parameter types), and
    // every thread receives its own copy, as from the GPU's parameter space.
    struct Ctx {
      void (*fn)(P...);
      std::tuple<std::decay_t<P>...> params;
    } ctx{fn, std::tuple<std::decay_t<P>...>(std::forward<Args>(args)...)};
    run_launch(name, reinterpret_cast<const void*>(fn), cfg,
               [](void* p) {
                 auto* c = static_cast<Ctx*>(p);
                 auto params = c->params;  // each thread's own copy
                 std::apply(c->fn, params);
               },
               &ctx);
  }
};
template <typename... P>
Launcher<P...> launch(const char* name, void (*fn)(P...), dim3 grid, dim3 block, size_t smem = 0,
                      cudaStream_t = nullptr) {
  return Launcher<P...>{name, fn, Config{grid, block, smem}};
}
cudaError_t set_max_dynamic_smem(const void* fn, int bytes);
cudaError_t take_last_error();

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx_)
#define blockDim (::emu::block_dim_)
#define gridDim (::emu::grid_dim_)

inline void __syncthreads() { emu::syncthreads(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of 8 bytes at most");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  u = emu::warp_exchange(u, mask, emu::lane_id() ^ (lane_mask & 31));
  T r;
  std::memcpy(&r, &u, sizeof(T));
  return r;
}

template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_smem(reinterpret_cast<const void*>(fn), value);
}
inline cudaError_t cudaGetLastError() { return emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}
