// Raw CUDA kernels of the fused SPADE denormalisation (docs/design.md section 3); launchers in
// spade_cuda.h.
//
// Work items: every row (b, c) of P elements is cut into segments of kSeg elements; one block
// per (group, row of the group, segment). Reductions write one partial per item; a finish
// kernel merges a group's partials in item order. The segmentation depends only on the sizes,
// so the results do not depend on the GPU or on timing.
//   forward:  stats (Welford per thread, Chan merges across the warp and the block) ->
//             finish (mean, rstd = 1/sqrt(var + eps), biased variance) -> apply (elementwise).
//   backward: sums of g = dy (1 + gamma), g (x - mean), x - mean per item -> coefficients per
//             group -> elementwise dx, dgamma. The sum of x - mean corrects the stored mean
//             (rounded to A) back to the exact one, as the CPU kernel does.
// Elementwise passes use one 16-byte access per kVec<T> elements where P and the pointers
// allow it.
#include "common.cuh"
#include "spade_cuda.h"

namespace msca_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSeg = 16384;

struct Items {
  int64_t groups, rows_per_group, nseg;
  __host__ __device__ int64_t count() const { return groups * rows_per_group * nseg; }
};
__host__ __device__ inline Items items_of(const SpadeDims& d) {
  Items it;
  it.groups = d.instance ? d.B * d.C : d.C;
  it.rows_per_group = d.instance ? 1 : d.B;
  it.nseg = (d.P + kSeg - 1) / kSeg;
  return it;
}
// Row (of the (B*C, P) matrix) and segment of an item.
__device__ __forceinline__ void item_at(const SpadeDims& d, const Items& it, int64_t item,
                                        int64_t& row, int64_t& off, int64_t& len) {
  const int64_t s = item % it.nseg;
  const int64_t r = (item / it.nseg) % it.rows_per_group;
  const int64_t g = item / (it.nseg * it.rows_per_group);
  row = d.instance ? g : r * d.C + g;
  off = s * kSeg;
  len = d.P - off < kSeg ? d.P - off : kSeg;
}
__device__ __forceinline__ int64_t group_of_row(const SpadeDims& d, int64_t row) {
  return d.instance ? row : row % d.C;
}

template <typename A>
struct Moments {
  A n, mean, m2;
};
// Chan et al.: merging two sets of moments, exact in exact arithmetic.
template <typename A>
__device__ __forceinline__ Moments<A> merge(Moments<A> a, Moments<A> b) {
  if (b.n == A(0)) return a;
  if (a.n == A(0)) return b;
  const A n = a.n + b.n;
  const A delta = b.mean - a.mean;
  Moments<A> r;
  r.n = n;
  r.mean = a.mean + delta * (b.n / n);
  r.m2 = a.m2 + b.m2 + delta * delta * (a.n * (b.n / n));
  return r;
}

// Calls f(i, v) for the elements [0, len) of a row segment starting at p (kVec<T>-wide loads
// when vec), each thread handling a strided subset.
template <typename T, typename F>
__device__ __forceinline__ void for_segment(const T* p, int64_t len, bool vec, F&& f) {
  constexpr int V = kVec<T>;
  if (vec) {
    const int64_t nv = len / V;
    for (int64_t q = threadIdx.x; q < nv; q += blockDim.x) {
      const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p + q * V);
#pragma unroll
      for (int i = 0; i < V; ++i) f(Conv<T>::in(pk.v[i]));
    }
    for (int64_t i = nv * V + threadIdx.x; i < len; i += blockDim.x) f(Conv<T>::in(p[i]));
  } else {
    for (int64_t i = threadIdx.x; i < len; i += blockDim.x) f(Conv<T>::in(p[i]));
  }
}

// Block-wide merge of per-thread moments in a fixed order (warp butterfly, then warps 0..7).
template <typename A>
__device__ Moments<A> block_merge(Moments<A> m) {
  __shared__ A sh[3][kThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Moments<A> t;
    t.n = __shfl_xor_sync(0xffffffffu, m.n, o);
    t.mean = __shfl_xor_sync(0xffffffffu, m.mean, o);
    t.m2 = __shfl_xor_sync(0xffffffffu, m.m2, o);
    // both lanes of a pair must compute the same value: merge in lane order
    m = (threadIdx.x & o) ? merge(t, m) : merge(m, t);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = m.n;
    sh[1][warp] = m.mean;
    sh[2][warp] = m.m2;
  }
  __syncthreads();
  Moments<A> r{A(0), A(0), A(0)};
  if (threadIdx.x == 0)
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w)
      r = merge(r, Moments<A>{sh[0][w], sh[1][w], sh[2][w]});
  return r;  // valid in thread 0
}

// Fixed-order block sum of three values (valid in thread 0).
template <typename A>
__device__ void block_sum3(A& a, A& b, A& c) {
  __shared__ A sh[3][kThreads / 32];
  a = warp_sum(a);
  b = warp_sum(b);
  c = warp_sum(c);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh[0][warp] = a;
    sh[1][warp] = b;
    sh[2][warp] = c;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    a = b = c = A(0);
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) {
      a += sh[0][w];
      b += sh[1][w];
      c += sh[2][w];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    stats_kernel(const T* __restrict__ x, SpadeDims d, bool vec, acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  const Items it = items_of(d);
  const int64_t item = blockIdx.x;
  int64_t row, off, len;
  item_at(d, it, item, row, off, len);
  Moments<A> m{A(0), A(0), A(0)};
  for_segment(x + row * d.P + off, len, vec, [&](A v) {
    m.n += A(1);
    const A delta = v - m.mean;
    m.mean += delta / m.n;
    m.m2 += delta * (v - m.mean);
  });
  m = block_merge(m);
  if (threadIdx.x == 0) {
    part[3 * item] = m.n;
    part[3 * item + 1] = m.mean;
    part[3 * item + 2] = m.m2;
  }
}

template <typename A>
__global__ void __launch_bounds__(kThreads, 2)
    stats_finish_kernel(SpadeDims d, double eps, const A* __restrict__ part, A* __restrict__ mean,
                        A* __restrict__ rstd) {
  const Items it = items_of(d);
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= it.groups) return;
  const int64_t per = it.rows_per_group * it.nseg;
  Moments<A> m{A(0), A(0), A(0)};
  for (int64_t i = g * per; i < (g + 1) * per; ++i)
    m = merge(m, Moments<A>{part[3 * i], part[3 * i + 1], part[3 * i + 2]});
  mean[g] = m.mean;
  rstd[g] = A(1) / sqrt(m.m2 / m.n + static_cast<A>(eps));
}

// The group of element i of the (B*C, P) matrix, followed along a grid-stride loop without
// dividing: the elementwise passes used to divide the 64-bit index by P (and the row by C) for
// every vector; a thread now divides once, at its first element, and each step adds the
// stride as (whole rows, columns) with one carry.
struct GroupCursor {
  int64_t col, g;                 // column of the current element in its row; its group
  int64_t step_rows, step_cols;   // the stride: step_rows rows (mod C in batch mode) + step_cols
  int64_t P, C;
  bool instance;
  __device__ GroupCursor(const SpadeDims& d, int64_t i, int64_t stride)
      : P(d.P), C(d.C), instance(d.instance) {
    const int64_t row = i / P;
    col = i - row * P;
    g = instance ? row : row % C;
    step_rows = stride / P;
    step_cols = stride - step_rows * P;
    if (!instance) step_rows %= C;
  }
  __device__ __forceinline__ void advance() {
    col += step_cols;
    const bool carry = col >= P;
    if (carry) col -= P;
    g += step_rows + (carry ? 1 : 0);
    if (!instance && g >= C) g -= C;  // g < 2C: both terms were below C
  }
};

// Elementwise passes over the whole (B*C, P) matrix: f(first element, count, group), kVec<T>
// elements per step when vec (P is then a multiple of kVec<T>: a vector never spans two rows).
template <typename T, typename F>
__device__ __forceinline__ void for_all(const SpadeDims& d, bool vec, F&& f) {
  const int V = vec ? kVec<T> : 1;
  const int64_t steps = d.B * d.C * d.P / V;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t0 >= steps) return;
  GroupCursor cur(d, t0 * V, stride * V);
  for (int64_t q = t0; q < steps; q += stride) {
    f(q * V, V, cur.g);
    cur.advance();
  }
}

// out = xhat * (1 + gamma) + beta, as the reference writes it: with an infinite xhat (an
// infinite running mean) and gamma < -1, xhat + xhat * gamma would be inf - inf = NaN where the
// reference has +-inf. The backward's dy * (1 + gamma) likewise.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    apply_fwd_kernel(const T* __restrict__ x, const T* __restrict__ gamma,
                     const T* __restrict__ beta, T* __restrict__ out,
                     const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd,
                     SpadeDims d, bool vec) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  for_all<T>(d, vec, [&](int64_t i0, int n, int64_t g) {
    const A mu = mean[g], r = rstd[g];
    if (n == V) {
      const Pack<T, V> xs = *reinterpret_cast<const Pack<T, V>*>(x + i0);
      const Pack<T, V> gs = *reinterpret_cast<const Pack<T, V>*>(gamma + i0);
      const Pack<T, V> bs = *reinterpret_cast<const Pack<T, V>*>(beta + i0);
      Pack<T, V> o;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const A xh = (Conv<T>::in(xs.v[i]) - mu) * r;
        o.v[i] = Conv<T>::out(xh * (A(1) + Conv<T>::in(gs.v[i])) + Conv<T>::in(bs.v[i]));
      }
      *reinterpret_cast<Pack<T, V>*>(out + i0) = o;
    } else {
      const A xh = (Conv<T>::in(x[i0]) - mu) * r;
      out[i0] = Conv<T>::out(xh * (A(1) + Conv<T>::in(gamma[i0])) + Conv<T>::in(beta[i0]));
    }
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_sums_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                    const T* __restrict__ gamma, const acc_t<T>* __restrict__ mean, SpadeDims d,
                    acc_t<T>* __restrict__ part) {
  using A = acc_t<T>;
  const Items it = items_of(d);
  const int64_t item = blockIdx.x;
  int64_t row, off, len;
  item_at(d, it, item, row, off, len);
  const A mu = mean[group_of_row(d, row)];
  const int64_t base = row * d.P + off;
  A sg = A(0), sgd = A(0), sd = A(0);
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const A dv = Conv<T>::in(dy[base + i]);
    const A g = dv * (A(1) + Conv<T>::in(gamma[base + i]));
    const A dx = Conv<T>::in(x[base + i]) - mu;
    sg += g;
    sgd = fma(g, dx, sgd);
    sd += dx;
  }
  block_sum3(sg, sgd, sd);
  if (threadIdx.x == 0) {
    part[3 * item] = sg;
    part[3 * item + 1] = sgd;
    part[3 * item + 2] = sd;
  }
}

// coef[g] = {mean_eff, rstd, k0, k1}: dx = g*rstd + k0 + xhat*k1 with xhat = (x - mean_eff)*rstd
template <typename A>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_coef_kernel(SpadeDims d, bool batch_stats, const A* __restrict__ part,
                    const A* __restrict__ mean, const A* __restrict__ rstd, A* __restrict__ coef) {
  const Items it = items_of(d);
  const int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (g >= it.groups) return;
  const A r = rstd[g];
  A mu = mean[g], k0 = A(0), k1 = A(0);
  if (batch_stats) {
    const int64_t per = it.rows_per_group * it.nseg;
    A sg = A(0), sgd = A(0), sd = A(0);
    for (int64_t i = g * per; i < (g + 1) * per; ++i) {
      sg += part[3 * i];
      sgd += part[3 * i + 1];
      sd += part[3 * i + 2];
    }
    const A n = static_cast<A>(it.rows_per_group * d.P);
    const A corr = sd / n;
    mu += corr;
    k0 = -r * (sg / n);
    k1 = -r * (r * (sgd - corr * sg) / n);
  }
  coef[4 * g] = mu;
  coef[4 * g + 1] = r;
  coef[4 * g + 2] = k0;
  coef[4 * g + 3] = k1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    apply_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                     const T* __restrict__ gamma, T* __restrict__ dx, T* __restrict__ dgamma,
                     const acc_t<T>* __restrict__ coef, SpadeDims d, bool vec) {
  using A = acc_t<T>;
  constexpr int V = kVec<T>;
  for_all<T>(d, vec, [&](int64_t i0, int n, int64_t g) {
    const A mu = coef[4 * g], r = coef[4 * g + 1], k0 = coef[4 * g + 2], k1 = coef[4 * g + 3];
    auto one = [&](A dv, A xv, A gm, T& dxo, T& dgo) {
      const A gg = dv * (A(1) + gm);
      const A xh = (xv - mu) * r;
      dgo = Conv<T>::out(dv * xh);
      dxo = Conv<T>::out(gg * r + k0 + xh * k1);
    };
    if (n == V) {
      const Pack<T, V> ds = *reinterpret_cast<const Pack<T, V>*>(dy + i0);
      const Pack<T, V> xs = *reinterpret_cast<const Pack<T, V>*>(x + i0);
      const Pack<T, V> gs = *reinterpret_cast<const Pack<T, V>*>(gamma + i0);
      Pack<T, V> o1, o2;
#pragma unroll
      for (int i = 0; i < V; ++i)
        one(Conv<T>::in(ds.v[i]), Conv<T>::in(xs.v[i]), Conv<T>::in(gs.v[i]), o1.v[i], o2.v[i]);
      *reinterpret_cast<Pack<T, V>*>(dx + i0) = o1;
      *reinterpret_cast<Pack<T, V>*>(dgamma + i0) = o2;
    } else {
      one(Conv<T>::in(dy[i0]), Conv<T>::in(x[i0]), Conv<T>::in(gamma[i0]), dx[i0], dgamma[i0]);
    }
  });
}

template <typename T>
bool vec_ok(const SpadeDims& d, std::initializer_list<const void*> ptrs) {
  if (d.P % kVec<T> != 0) return false;
  for (const void* p : ptrs)
    if (!is_aligned(p, 16)) return false;
  return true;
}

// Grid of the elementwise passes: enough blocks to fill any current GPU, grid-stride beyond.
unsigned elementwise_blocks(const SpadeDims& d, bool vec, int V) {
  const int64_t steps = vec ? d.B * d.C * d.P / V : d.B * d.C * d.P;
  const int64_t blocks = ceil_div(steps, kThreads);
  return static_cast<unsigned>(blocks < 8192 ? (blocks < 1 ? 1 : blocks) : 8192);
}

bool dims_ok(const SpadeDims& d) {
  return d.B >= 1 && d.C >= 1 && d.P >= 1 && items_of(d).count() <= 0x7fffffff;
}

}  // namespace

size_t spade_workspace_bytes(const SpadeDims& d, size_t acc_size) {
  const Items it = items_of(d);
  return static_cast<size_t>(3 * it.count() + 4 * it.groups) * acc_size;
}

template <typename T, typename A>
cudaError_t spade_fwd(const T* x, const T* gamma, const T* beta, T* out, A* mean, A* rstd,
                      bool compute_stats, double eps, const SpadeDims& d, void* workspace,
                      cudaStream_t stream) {
  static_assert(std::is_same<A, acc_t<T>>::value, "statistics use the accumulation type");
  if (!dims_ok(d)) return cudaErrorInvalidValue;
  const Items it = items_of(d);
  A* part = static_cast<A*>(workspace);
  if (compute_stats) {
    stats_kernel<T><<<static_cast<unsigned>(it.count()), kThreads, 0, stream>>>(
        x, d, vec_ok<T>(d, {x}), part);
    stats_finish_kernel<A><<<static_cast<unsigned>(ceil_div(it.groups, kThreads)), kThreads, 0,
                             stream>>>(d, eps, part, mean, rstd);
  }
  const bool vec = vec_ok<T>(d, {x, gamma, beta, out});
  apply_fwd_kernel<T><<<elementwise_blocks(d, vec, kVec<T>), kThreads, 0, stream>>>(
      x, gamma, beta, out, mean, rstd, d, vec);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t spade_bwd(const T* dy, const T* x, const T* gamma, const A* mean, const A* rstd,
                      T* dx, T* dgamma, bool batch_stats, const SpadeDims& d, void* workspace,
                      cudaStream_t stream) {
  static_assert(std::is_same<A, acc_t<T>>::value, "statistics use the accumulation type");
  if (!dims_ok(d)) return cudaErrorInvalidValue;
  const Items it = items_of(d);
  A* part = static_cast<A*>(workspace);
  A* coef = part + 3 * it.count();
  if (batch_stats)
    bwd_sums_kernel<T><<<static_cast<unsigned>(it.count()), kThreads, 0, stream>>>(
        dy, x, gamma, mean, d, part);
  bwd_coef_kernel<A><<<static_cast<unsigned>(ceil_div(it.groups, kThreads)), kThreads, 0,
                       stream>>>(d, batch_stats, part, mean, rstd, coef);
  const bool vec = vec_ok<T>(d, {dy, x, gamma, dx, dgamma});
  apply_bwd_kernel<T><<<elementwise_blocks(d, vec, kVec<T>), kThreads, 0, stream>>>(
      dy, x, gamma, dx, dgamma, coef, d, vec);
  return cudaGetLastError();
}

#define SPADE_INSTANTIATE(T)                                                                 \
  template cudaError_t spade_fwd<T, acc_t<T>>(const T*, const T*, const T*, T*, acc_t<T>*,   \
                                              acc_t<T>*, bool, double, const SpadeDims&,     \
                                              void*, cudaStream_t);                          \
  template cudaError_t spade_bwd<T, acc_t<T>>(const T*, const T*, const T*, const acc_t<T>*, \
                                              const acc_t<T>*, T*, T*, bool,                 \
                                              const SpadeDims&, void*, cudaStream_t);
SPADE_INSTANTIATE(float)
SPADE_INSTANTIATE(double)
SPADE_INSTANTIATE(__half)
SPADE_INSTANTIATE(__nv_bfloat16)
#undef SPADE_INSTANTIATE

}  // namespace msca_cuda
