// Raw CUDA kernels of MSCA attention (docs/design.md section 2); launchers declared in msca_cuda.h.
//
// Tiles: every kernel works on tiles of kTile = 64 positions (j over the exemplar, t over the
// target). A block holds, in shared memory and in the accumulation type A:
//   S  (K x kTile)   logits, then alpha or beta
//   D  (K x kTile)   dbeta/db (pass A) or dalpha/da (pass B)
//   X  (kCC x kTile) one chunk of kCC input rows (fx2, fc2, fc1 or grad_out), streamed through
//   W1, W2 (kCC x K) the matching chunk of a weight matrix (phi, psi, V*mask, dV), transposed
// Rows are kLd = kTile + 4 apart (bank spread for the row-against-row dot products).
// Nothing of size K x P or C x P ever reaches global memory: only the outputs and the
// per-block partials of the reductions (at most N x K, K x (N+M2) per block).
//
// Two matrix shapes do all the work:
//   mm_tn: out[r][j] = sum_c W[c][r] X[c][j]   (logits, out, dbeta, dalpha, dfx2, dfc2, dfc1);
//          one thread owns 1 row x 4 positions: per c one broadcast weight and one 16-byte
//          shared load for 4 FMAs.
//   mm_nt: acc[r][s] = sum_j X[r][j] Y[s][j]   (V, dVm, dpsi, dphi: reductions over positions)
//
// Passes (B = batch):
//   forward  1. fwd_exemplar  grid (splits, B): each block a contiguous range of exemplar tiles;
//               logits a, online softmax (running max m and sum l per k, the block's partial
//               V rescaled when m grows), partial V, m, l to the workspace.
//            2. fwd_merge     V = sum_s e^(m_s - M) V_s / sum_s e^(m_s - M) l_s in split order;
//               lse = M + log(L); a row with every logit -inf gets V = 0, lse = -inf.
//            3. fwd_target    grid (tiles, B): logits b, softmax over k, out = (V*mask) beta.
//   backward A. bwd_target    grid (splits, B): beta, dbeta, db, dfc1 and dchannel_bias per tile;
//               partial dVm, dpsi, dpsi_bias per block.
//            M. bwd_mid       dVm summed over splits; dmask, dV = dVm*mask, c = sum_n dV V.
//            B. bwd_exemplar  grid (splits, B): alpha = exp(a - lse) recomputed with the very same
//               arithmetic as forward pass 1, dalpha, da, dfx2, dfc2, dspatial_bias per tile;
//               partial dphi, dphi_bias per block.
//            R. reduce_items  weight gradients: partials summed over (batch, split) in order.
// Determinism: see msca_cuda.h (fixed-order sums only, no atomics).
#include "common.cuh"
#include "msca_cuda.h"

namespace msca_cuda {
namespace {

constexpr int kTile = 64;
constexpr int kLd = kTile + 4;
constexpr int kCC = 32;
constexpr int kThreads = 256;

// The four tile kernels; each reserves only the shared buffers it uses.
enum class Pass { FwdExemplar, FwdTarget, BwdTarget, BwdExemplar };

// Shared-memory layout of a pass in elements of A; a buffer the pass does not use has offset
// -1 and no room (D and W2 in the forward, the softmax state st outside forward pass 1: one
// layout for all four used to give the forward 60 KiB at K = 64 in float32 where it needs 34
// KiB, past the 48 KiB that needs no opt-in). Every offset is a multiple of 4 elements, so
// the 4-wide shared loads (ld4) stay aligned.
struct Layout {
  int64_t S, D, X, W1, W2, st, total;
};
__host__ __device__ inline Layout layout_for(int64_t K, Pass p) {
  const bool bwd = p == Pass::BwdTarget || p == Pass::BwdExemplar;
  Layout l;
  int64_t o = 0;
  auto take = [&o](bool used, int64_t n) {
    const int64_t at = used ? o : -1;
    o += used ? n : 0;
    return at;
  };
  l.S = take(true, K * kLd);
  l.D = take(bwd, K * kLd);
  l.X = take(true, kCC * kLd);
  l.W1 = take(true, kCC * K);
  l.W2 = take(p == Pass::BwdExemplar, kCC * K);
  l.st = take(p == Pass::FwdExemplar, (3 * K + 3) / 4 * 4);
  l.total = o;
  return l;
}

// Workspace offsets (elements of A).
struct FwdWs {
  int64_t m, l, V, total;
};
__host__ __device__ inline FwdWs fwd_ws(const MscaDims& d, int64_t splits) {
  const int64_t items = d.B * splits;
  FwdWs w;
  w.m = 0;
  w.l = items * d.K;
  w.V = 2 * items * d.K;
  w.total = w.V + items * d.N * d.K;
  return w;
}
struct BwdWs {
  int64_t dvm, dpsi, dpsib, dvm_full, dV, c, dphi, dphib, total;
};
__host__ __device__ inline BwdWs bwd_ws(const MscaDims& d, int64_t sa, int64_t sb) {
  const int64_t ia = d.B * sa, ib = d.B * sb, NK = d.N * d.K;
  BwdWs w;
  w.dvm = 0;
  w.dpsi = w.dvm + ia * NK;
  w.dpsib = w.dpsi + ia * d.K * d.M1;
  w.dvm_full = w.dpsib + ia * d.K;
  w.dV = w.dvm_full + d.B * NK;
  w.c = w.dV + d.B * NK;
  w.dphi = w.c + d.B * d.K;
  w.dphib = w.dphi + ib * d.K * (d.N + d.M2);
  w.total = w.dphib + ib * d.K;
  return w;
}

// Blocks per batch item for the split reductions: about two waves of blocks in all, at most
// one block per tile. Depends only on the sizes and the device, never on timing.
inline int64_t splits_for(int64_t ntiles, int64_t B, int sm_count) {
  const int64_t want = ceil_div(2 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1),
                                B > 0 ? B : 1);
  int64_t s = want < ntiles ? want : ntiles;
  return s < 1 ? 1 : s;
}

// Copies rows x kTile of src (row stride ld, starting at the tile's first position) into
// shared memory as A, zero-filling positions >= pv. vec: rows are 16-byte aligned at every
// multiple of kVec<T> (the caller checked the base pointer and ld).
template <typename T, typename A>
__device__ __forceinline__ void load_rows(A* __restrict__ dst, const T* __restrict__ src,
                                          int64_t ld, int rows, int pv, bool vec) {
  constexpr int V = kVec<T>;
  constexpr int G = kTile / V;
  for (int g = threadIdx.x; g < rows * G; g += blockDim.x) {
    const int r = g / G, j = (g - r * G) * V;
    const T* s = src + r * ld + j;
    A* o = dst + r * kLd + j;
    if (vec && j + V <= pv) {
      const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(s);
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = Conv<T>::in(pk.v[i]);
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) o[i] = (j + i < pv) ? Conv<T>::in(s[i]) : A(0);
    }
  }
}

// out[r][j..j+3] = sum_{c<C1} W1[c*ldw1 + r] X1[c][j..] + sum_{c<C2} W2[c*ldw2 + r] X2[c][j..],
// handed to epi(r, j, acc) for r < R and every 4-position group j of the tile.
//
// Work items are (row, 4 positions): R * 16 of them. With at least half a block of items each
// thread takes whole items. With fewer (R < 8 for 256 threads: the logits of K = 8 maps gave
// work to half the threads, K = 4 to a quarter), the sum over c of an item is split among cs =
// 2, 4 or 8 lanes of one warp (lane slice q takes c = q, q + cs, ...) and the slices are added
// with a fixed butterfly of shuffles, so every thread works. The lanes of one slice cover up to
// 2 rows x 8 position groups, so that a warp still reads each row of X once per c for two rows
// of output (the broadcast of the whole-item layout), not once per row. kMaxSplit = 1 keeps the
// plain sequential sum over c, for a product that must round exactly like another sum.
// acc[0..3] += sum over c = c0, c0 + step, ... < C of W[c*ldw + r] X[c][j..j+3], in that order.
template <typename A>
__device__ __forceinline__ void mm_tn_rows(int c0, int step, int C, const A* __restrict__ W,
                                           int ldw, const A* __restrict__ X, int r, int j,
                                           A (&acc)[4]) {
  for (int c = c0; c < C; c += step) {
    const A w = W[c * ldw + r];
    A x[4];
    ld4(X + c * kLd + j, x);
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] = fma(w, x[i], acc[i]);
  }
}

template <int kMaxSplit = 8, typename A, typename Epi>
__device__ __forceinline__ void mm_tn(int R, int C1, const A* __restrict__ W1, int ldw1,
                                      const A* __restrict__ X1, int C2, const A* __restrict__ W2,
                                      int ldw2, const A* __restrict__ X2, Epi&& epi) {
  constexpr int G = kTile / 4;
  const int items = R * G;
  const int nthreads = static_cast<int>(blockDim.x);
  int cs = 1;
  while (cs < kMaxSplit && items * cs * 2 <= nthreads) cs *= 2;
  if (cs == 1) {
    for (int g = threadIdx.x; g < items; g += nthreads) {
      const int r = g / G, j = (g - r * G) * 4;
      A acc[4] = {A(0), A(0), A(0), A(0)};
      mm_tn_rows(0, 1, C1, W1, ldw1, X1, r, j, acc);
      mm_tn_rows(0, 1, C2, W2, ldw2, X2, r, j, acc);
      epi(r, j, acc);
    }
    return;
  }
  const int lanes = 32 / cs;                   // lanes of one slice of c
  const int rr = lanes >= 16 ? lanes / 8 : 1;  // rows per warp
  const int jg = lanes / rr;                   // position groups per warp
  const int lane = threadIdx.x % 32, q = lane / lanes, l = lane % lanes;
  const int jblocks = G / jg;
  const int nwarp_items = (R + rr - 1) / rr * jblocks;
  // Every lane of a warp runs the same iterations (the shuffles need the whole warp).
  for (int wi = threadIdx.x / 32; wi < nwarp_items; wi += nthreads / 32) {
    const int r = (wi / jblocks) * rr + l / jg;
    const int j = ((wi % jblocks) * jg + l % jg) * 4;
    const bool live = r < R;
    A acc[4] = {A(0), A(0), A(0), A(0)};
    if (live) {
      mm_tn_rows(q, cs, C1, W1, ldw1, X1, r, j, acc);
      mm_tn_rows(q, cs, C2, W2, ldw2, X2, r, j, acc);
    }
    for (int o = lanes; o < 32; o <<= 1) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    }
    if (live && q == 0) epi(r, j, acc);
  }
}

// epi(r, s, sum_j Xr[r][j] Ys[s][j]) for r < R, s < Sn; the sum runs over the whole tile (the
// callers zero the padding positions of at least one operand).
template <typename A, typename Epi>
__device__ __forceinline__ void mm_nt(int R, int Sn, const A* __restrict__ Xr,
                                      const A* __restrict__ Ys, Epi&& epi) {
  for (int e = threadIdx.x; e < R * Sn; e += blockDim.x) {
    const int r = e / Sn, s = e - r * Sn;
    const A* x = Xr + r * kLd;
    const A* y = Ys + s * kLd;
    A acc[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll 4
    for (int j = 0; j < kTile; j += 4) {
      A u[4], v[4];
      ld4(x + j, u);
      ld4(y + j, v);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] = fma(u[i], v[i], acc[i]);
    }
    epi(r, s, (acc[0] + acc[1]) + (acc[2] + acc[3]));
  }
}

// Adds a tile product to shared rows.
template <typename A>
struct AccumInto {
  A* S;
  __device__ __forceinline__ void operator()(int r, int j, const A (&acc)[4]) const {
    A* p = S + r * kLd + j;
#pragma unroll
    for (int i = 0; i < 4; ++i) p[i] += acc[i];
  }
};

// Writes a tile product to rows of a (rows, P) output starting at the tile's first position.
template <typename T>
struct StoreRows {
  T* base;
  int64_t ld;
  int pv;
  bool vec;
  __device__ __forceinline__ void operator()(int r, int j, const acc_t<T> (&acc)[4]) const {
    store4<T>(base + r * ld + j, acc, pv - j, vec);
  }
};

// Per-block partial: the first tile of a block writes, later tiles add (no memset needed).
template <typename A>
__device__ __forceinline__ void partial(A* p, A v, bool first) {
  *p = first ? v : *p + v;
}

// Exemplar logits a[k][j] = phi_bias[k] + spatial_bias[k][j] + phi[k,:] . [fx2; fc2][:, j] of
// one tile into S (-inf at padding positions). With dV given, also D[k][j] += sum_n dV[n][k]
// fx2[n][j] from the same fx2 chunks (backward pass B). Shared by forward pass 1 and backward
// pass B so that both compute bitwise the same logits.
template <typename T, typename A>
__device__ __forceinline__ void exemplar_logits(const T* fx2, const T* fc2, const T* sb,
                                                const T* phi, const T* phi_bias, const A* dV,
                                                const MscaDims& d, int64_t p0, int pv, bool vec,
                                                A* S, A* D, A* X, A* W1, A* W2) {
  const int K = static_cast<int>(d.K), N = static_cast<int>(d.N), M2 = static_cast<int>(d.M2);
  const int64_t P2 = d.P2, C = d.N + d.M2;
  for (int e = threadIdx.x; e < K * kTile; e += blockDim.x) {
    const int k = e / kTile, j = e - k * kTile;
    A v = neg_inf<A>();
    if (j < pv) {
      v = ld_acc(phi_bias + k);
      if (sb) v += ld_acc(sb + k * P2 + p0 + j);
    }
    S[k * kLd + j] = v;
    if (D) D[k * kLd + j] = A(0);
  }
  for (int src = 0; src < 2; ++src) {
    const int rows = src == 0 ? N : M2;
    const T* base = src == 0 ? fx2 : fc2;
    const int coff = src == 0 ? 0 : N;
    for (int c0 = 0; c0 < rows; c0 += kCC) {
      const int cc = rows - c0 < kCC ? rows - c0 : kCC;
      load_rows(X, base + c0 * P2 + p0, P2, cc, pv, vec);
      for (int e = threadIdx.x; e < cc * K; e += blockDim.x) {
        const int c = e / K, k = e - c * K;
        W1[e] = ld_acc(phi + k * C + coff + c0 + c);
        if (src == 0 && dV) W2[e] = dV[(c0 + c) * K + k];
      }
      __syncthreads();
      mm_tn(K, cc, W1, K, X, 0, W1, K, X, AccumInto<A>{S});
      // dalpha in the sequential order of bwd_mid's c = sum_n dV V: for a one-hot alpha row
      // (large logits) V is exactly a column of fx2 and dalpha - c must cancel exactly, or
      // the error is amplified by phi (a split sum gave 5e-3 instead of 1e-4 on fc2's
      // gradient at logits of 1e4, test_msca_large_logits)
      if (src == 0 && dV) mm_tn<1>(K, cc, W2, K, X, 0, W2, K, X, AccumInto<A>{D});
      __syncthreads();
    }
  }
}

// Per-position work over k (the beta softmax and its backward): kColLanes lanes of a warp share
// one position, lane slice q taking k = q, q + kColLanes, ...; a warp covers kColWarp
// positions, the 256 threads of a block all 64 of a tile (one position per thread left 3 in 4
// threads idle). The slices are combined with a fixed butterfly (lanes kColWarp and
// 2 * kColWarp apart), so every lane of a position gets the same value. Every lane of a warp
// runs the same iterations (the shuffles need the whole warp).
constexpr int kColLanes = 4;
constexpr int kColWarp = 32 / kColLanes;
__device__ __forceinline__ int column_base() { return static_cast<int>(threadIdx.x / 32) * kColWarp; }
__device__ __forceinline__ int column_stride() {
  return static_cast<int>(blockDim.x / 32) * kColWarp;
}
template <typename A>
__device__ __forceinline__ A column_sum(A v) {
#pragma unroll
  for (int o = kColWarp; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A column_max(A v) {
#pragma unroll
  for (int o = kColWarp; o < 32; o <<= 1) v = max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Target logits b[k][t] = psi_bias[k] + channel_bias[k][t] + psi[k,:] . fc1[:, t] into S, then
// beta = softmax over k per position (a position whose logits are all -inf gets beta = 0; a
// NaN or +inf logit makes its position's beta NaN, which the max_nan keeps). Padding positions
// get beta = 0 (their logits, bias plus an infinite weight times zero, may be NaN), so that
// the reductions over positions see 0 there from both operands.
template <typename T, typename A>
__device__ __forceinline__ void target_beta(const T* fc1, const T* cb, const T* psi,
                                            const T* psi_bias, const MscaDims& d, int64_t p0,
                                            int pv, bool vec, A* S, A* X, A* W1) {
  const int K = static_cast<int>(d.K), M1 = static_cast<int>(d.M1);
  const int64_t P1 = d.P1;
  for (int e = threadIdx.x; e < K * kTile; e += blockDim.x) {
    const int k = e / kTile, j = e - k * kTile;
    A v = ld_acc(psi_bias + k);
    if (cb && j < pv) v += ld_acc(cb + k * P1 + p0 + j);
    S[k * kLd + j] = v;
  }
  for (int c0 = 0; c0 < M1; c0 += kCC) {
    const int cc = M1 - c0 < kCC ? M1 - c0 : kCC;
    load_rows(X, fc1 + c0 * P1 + p0, P1, cc, pv, vec);
    for (int e = threadIdx.x; e < cc * K; e += blockDim.x) {
      const int c = e / K, k = e - c * K;
      W1[e] = ld_acc(psi + k * M1 + c0 + c);
    }
    __syncthreads();
    mm_tn(K, cc, W1, K, X, 0, W1, K, X, AccumInto<A>{S});
    __syncthreads();
  }
  // The softmax over k, kColLanes lanes per position (the whole block for the 64 positions).
  for (int j0 = column_base(); j0 < kTile; j0 += column_stride()) {
    const int j = j0 + threadIdx.x % 32 % kColWarp, q = threadIdx.x % 32 / kColWarp;
    A mx = neg_inf<A>();
    for (int k = q; k < K; k += kColLanes) mx = max_nan(mx, S[k * kLd + j]);
    mx = column_max(mx);
    const bool zero = mx == neg_inf<A>() || j >= pv;
    A sum = A(0);
    for (int k = q; k < K; k += kColLanes) {
      const A e = zero ? A(0) : exp_acc(S[k * kLd + j] - mx);
      S[k * kLd + j] = e;
      sum += e;
    }
    sum = column_sum(sum);
    const A inv = zero ? A(0) : A(1) / sum;
    for (int k = q; k < K; k += kColLanes) S[k * kLd + j] *= inv;
  }
  __syncthreads();
}

// Per-row sums of D over the tile, one warp per row, fixed order; partial[k] (+)= sum.
template <typename A>
__device__ __forceinline__ void row_sums(const A* D, int K, A* part, bool first) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  for (int k = warp; k < K; k += nw) {
    A s = A(0);
    for (int j = lane; j < kTile; j += 32) s += D[k * kLd + j];
    s = warp_sum(s);
    if (lane == 0) partial(part + k, s, first);
  }
}

// Writes K rows of a tile (positions < pv) to a (K, P) bias gradient.
template <typename T, typename A>
__device__ __forceinline__ void store_tile_rows(T* dst, int64_t P, int64_t p0, int pv,
                                                const A* D, int K) {
  for (int e = threadIdx.x; e < K * kTile; e += blockDim.x) {
    const int k = e / kTile, j = e - k * kTile;
    if (j < pv) dst[k * P + p0 + j] = Conv<T>::out(D[k * kLd + j]);
  }
}

template <typename A>
__device__ __forceinline__ A* smem_base() {
  extern __shared__ __align__(16) unsigned char msca_smem[];
  return reinterpret_cast<A*>(msca_smem);
}

// ---- forward -----------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    fwd_exemplar_kernel(MscaFwdArgs<T, acc_t<T>> a, MscaDims d, int splits, int ntiles,
                        bool vec, acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  A* sm = smem_base<A>();
  const Layout L = layout_for(d.K, Pass::FwdExemplar);
  A* S = sm + L.S;
  A* X = sm + L.X;
  A* W1 = sm + L.W1;
  A* m_s = sm + L.st;
  A* l_s = m_s + d.K;
  A* sc_s = l_s + d.K;
  const int K = static_cast<int>(d.K), N = static_cast<int>(d.N);
  const int64_t P2 = d.P2;
  const int b = blockIdx.y, s = blockIdx.x;
  const int64_t item = static_cast<int64_t>(b) * splits + s;
  const int tb = static_cast<int>(static_cast<int64_t>(s) * ntiles / splits);
  const int te = static_cast<int>(static_cast<int64_t>(s + 1) * ntiles / splits);
  const FwdWs w = fwd_ws(d, splits);
  A* Vp = ws + w.V + item * d.N * d.K;
  const T* fx2 = a.fx2 + b * d.N * P2;
  const T* fc2 = a.fc2 + b * d.M2 * P2;
  const T* sb = a.spatial_bias ? a.spatial_bias + b * d.K * P2 : nullptr;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    m_s[k] = neg_inf<A>();
    l_s[k] = A(0);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  for (int tile = tb; tile < te; ++tile) {
    const bool first = tile == tb;
    const int64_t p0 = static_cast<int64_t>(tile) * kTile;
    const int pv = static_cast<int>(P2 - p0 < kTile ? P2 - p0 : kTile);
    __syncthreads();
    exemplar_logits<T, A>(fx2, fc2, sb, a.phi, a.phi_bias, static_cast<const A*>(nullptr), d,
                          p0, pv, vec, S, static_cast<A*>(nullptr), X, W1, W1);
    // Online softmax, one warp per row k: p = exp(a - m_new), l = l * e^(m_old - m_new) + sum p.
    // A row with nothing but -inf so far keeps m = -inf, l = 0, p = 0. A NaN logit makes m NaN
    // (max_nan), and NaN stays in m, l and the partial V from then on, as in the reference; a
    // +inf logit gives exp(inf - inf) = NaN too. Padding positions (j >= pv) get p = 0 whatever
    // their logit: an infinite weight times the zero padding of X made it NaN.
    for (int k = warp; k < K; k += nw) {
      A* row = S + k * kLd;
      A mx = neg_inf<A>();
      for (int j = lane; j < pv; j += 32) mx = max_nan(mx, row[j]);
      mx = warp_max(mx);
      const A mold = m_s[k];
      const A mnew = max_nan(mold, mx);
      A sum = A(0), scale = A(1);
      if (mnew == neg_inf<A>()) {
        for (int j = lane; j < kTile; j += 32) row[j] = A(0);
      } else {
        scale = mold == neg_inf<A>() ? A(0) : exp_acc(mold - mnew);
        for (int j = lane; j < kTile; j += 32) {
          const A e = j < pv ? exp_acc(row[j] - mnew) : A(0);
          row[j] = e;
          sum += e;
        }
      }
      sum = warp_sum(sum);
      if (lane == 0) {
        l_s[k] = l_s[k] * scale + sum;
        m_s[k] = mnew;
        sc_s[k] = scale;
      }
    }
    __syncthreads();
    // Partial V[n][k] = V[n][k] * scale[k] + sum_j fx2[n][j] p[k][j]
    for (int n0 = 0; n0 < N; n0 += kCC) {
      const int cc = N - n0 < kCC ? N - n0 : kCC;
      load_rows(X, fx2 + n0 * P2 + p0, P2, cc, pv, vec);
      __syncthreads();
      mm_nt(cc, K, X, S, [&](int n, int k, A v) {
        A* p = Vp + (n0 + n) * K + k;
        *p = first ? v : fma(*p, sc_s[k], v);
      });
      __syncthreads();
    }
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    ws[w.m + item * K + k] = m_s[k];
    ws[w.l + item * K + k] = l_s[k];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    fwd_merge_kernel(MscaFwdArgs<T, acc_t<T>> a, MscaDims d, int splits,
                     const acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  const FwdWs w = fwd_ws(d, splits);
  const int b = blockIdx.y;
  const int64_t NK = d.N * d.K;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= NK) return;
  const int64_t k = e % d.K, n = e / d.K;
  const int64_t i0 = static_cast<int64_t>(b) * splits;
  // A split whose m is NaN (a NaN or +inf logit) makes M, and so Lsum, V and lse, NaN. Lsum is
  // exactly 0 only when every logit of the row is -inf: it attends to nothing (V = 0).
  A M = neg_inf<A>();
  for (int s = 0; s < splits; ++s) M = max_nan(M, ws[w.m + (i0 + s) * d.K + k]);
  A v = A(0), Lsum = A(0);
  if (M != neg_inf<A>()) {
    for (int s = 0; s < splits; ++s) {
      const A ms = ws[w.m + (i0 + s) * d.K + k];
      if (ms != neg_inf<A>()) {
        const A f = exp_acc(ms - M);
        Lsum = fma(f, ws[w.l + (i0 + s) * d.K + k], Lsum);
        v = fma(f, ws[w.V + (i0 + s) * NK + e], v);
      }
    }
  }
  const bool none = Lsum == A(0);
  a.V[b * NK + e] = none ? A(0) : v / Lsum;
  if (n == 0) a.lse[b * d.K + k] = none ? neg_inf<A>() : M + log_acc(Lsum);
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    fwd_target_kernel(MscaFwdArgs<T, acc_t<T>> a, MscaDims d, bool vec) {
  using A = acc_t<T>;
  A* sm = smem_base<A>();
  const Layout L = layout_for(d.K, Pass::FwdTarget);
  A* S = sm + L.S;
  A* X = sm + L.X;
  A* W1 = sm + L.W1;
  const int K = static_cast<int>(d.K), N = static_cast<int>(d.N);
  const int64_t P1 = d.P1;
  const int b = blockIdx.y;
  const int64_t p0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int pv = static_cast<int>(P1 - p0 < kTile ? P1 - p0 : kTile);
  const T* cb = a.channel_bias ? a.channel_bias + b * d.K * P1 : nullptr;
  target_beta<T, A>(a.fc1 + b * d.M1 * P1, cb, a.psi, a.psi_bias, d, p0, pv, vec, S, X, W1);
  // out[n][t] = sum_k V[n][k] mask[k] beta[k][t], kCC rows of out at a time
  for (int n0 = 0; n0 < N; n0 += kCC) {
    const int cc = N - n0 < kCC ? N - n0 : kCC;
    for (int e = threadIdx.x; e < K * cc; e += blockDim.x) {
      const int k = e / cc, n = e - k * cc;
      W1[k * kCC + n] = a.V[(b * d.N + n0 + n) * d.K + k] * ld_acc(a.mask + b * d.K + k);
    }
    __syncthreads();
    mm_tn(cc, K, W1, kCC, S, 0, W1, kCC, S,
          StoreRows<T>{a.out + (b * d.N + n0) * P1 + p0, P1, pv, vec});
    __syncthreads();
  }
}

// ---- backward ----------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_target_kernel(MscaBwdArgs<T, acc_t<T>> a, MscaDims d, int splits, int ntiles, bool vec,
                      acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  A* sm = smem_base<A>();
  const Layout L = layout_for(d.K, Pass::BwdTarget);
  A* S = sm + L.S;
  A* D = sm + L.D;
  A* X = sm + L.X;
  A* W1 = sm + L.W1;
  const int K = static_cast<int>(d.K), N = static_cast<int>(d.N), M1 = static_cast<int>(d.M1);
  const int64_t P1 = d.P1;
  const int b = blockIdx.y, s = blockIdx.x;
  const int64_t item = static_cast<int64_t>(b) * splits + s;
  const int tb = static_cast<int>(static_cast<int64_t>(s) * ntiles / splits);
  const int te = static_cast<int>(static_cast<int64_t>(s + 1) * ntiles / splits);
  const BwdWs w = bwd_ws(d, splits, 1);
  A* dvm = ws + w.dvm + item * d.N * d.K;
  A* dpsi = ws + w.dpsi + item * d.K * d.M1;
  A* dpsib = ws + w.dpsib + item * d.K;
  const T* fc1 = a.fc1 + b * d.M1 * P1;
  const T* dO = a.grad_out + b * d.N * P1;
  const T* cb = a.channel_bias ? a.channel_bias + b * d.K * P1 : nullptr;
  for (int tile = tb; tile < te; ++tile) {
    const bool first = tile == tb;
    const int64_t p0 = static_cast<int64_t>(tile) * kTile;
    const int pv = static_cast<int>(P1 - p0 < kTile ? P1 - p0 : kTile);
    __syncthreads();
    for (int e = threadIdx.x; e < K * kTile; e += blockDim.x) D[(e / kTile) * kLd + e % kTile] = A(0);
    target_beta<T, A>(fc1, cb, a.psi, a.psi_bias, d, p0, pv, vec, S, X, W1);
    // dbeta[k][t] = sum_n Vm[n][k] dO[n][t]; partial dVm[n][k] += sum_t dO[n][t] beta[k][t]
    for (int n0 = 0; n0 < N; n0 += kCC) {
      const int cc = N - n0 < kCC ? N - n0 : kCC;
      load_rows(X, dO + n0 * P1 + p0, P1, cc, pv, vec);
      for (int e = threadIdx.x; e < cc * K; e += blockDim.x) {
        const int c = e / K, k = e - c * K;
        W1[e] = a.V[(b * d.N + n0 + c) * d.K + k] * ld_acc(a.mask + b * d.K + k);
      }
      __syncthreads();
      mm_tn(K, cc, W1, K, X, 0, W1, K, X, AccumInto<A>{D});
      mm_nt(cc, K, X, S, [&](int n, int k, A v) { partial(dvm + (n0 + n) * K + k, v, first); });
      __syncthreads();
    }
    // db = beta * (dbeta - sum_k beta dbeta), per position; 0 at padding (dbeta there is Vm
    // times zero, NaN for an infinite Vm)
    for (int j0 = column_base(); j0 < kTile; j0 += column_stride()) {
      const int j = j0 + threadIdx.x % 32 % kColWarp, q = threadIdx.x % 32 / kColWarp;
      A sdot = A(0);
      for (int k = q; k < K; k += kColLanes) sdot = fma(S[k * kLd + j], D[k * kLd + j], sdot);
      sdot = column_sum(sdot);
      for (int k = q; k < K; k += kColLanes)
        D[k * kLd + j] = j < pv ? S[k * kLd + j] * (D[k * kLd + j] - sdot) : A(0);
    }
    __syncthreads();
    if (a.dchannel_bias) store_tile_rows<T, A>(a.dchannel_bias + b * d.K * P1, P1, p0, pv, D, K);
    row_sums(D, K, dpsib, first);
    // dfc1[m][t] = sum_k psi[k][m] db[k][t]; partial dpsi[k][m] += sum_t db[k][t] fc1[m][t]
    for (int m0 = 0; m0 < M1; m0 += kCC) {
      const int cc = M1 - m0 < kCC ? M1 - m0 : kCC;
      load_rows(X, fc1 + m0 * P1 + p0, P1, cc, pv, vec);
      for (int e = threadIdx.x; e < K * cc; e += blockDim.x) {
        const int k = e / cc, m = e - k * cc;
        W1[k * kCC + m] = ld_acc(a.psi + k * d.M1 + m0 + m);
      }
      __syncthreads();
      mm_nt(K, cc, D, X, [&](int k, int m, A v) { partial(dpsi + k * M1 + m0 + m, v, first); });
      mm_tn(cc, K, W1, kCC, D, 0, W1, kCC, D,
            StoreRows<T>{a.dfc1 + (b * d.M1 + m0) * P1 + p0, P1, pv, vec});
      __syncthreads();
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_mid_kernel(MscaBwdArgs<T, acc_t<T>> a, MscaDims d, int sa, int sb,
                   acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  const BwdWs w = bwd_ws(d, sa, sb);
  const int b = blockIdx.x;
  const int64_t NK = d.N * d.K;
  for (int64_t e = threadIdx.x; e < NK; e += blockDim.x) {
    A v = A(0);
    for (int s = 0; s < sa; ++s) v += ws[w.dvm + (static_cast<int64_t>(b) * sa + s) * NK + e];
    ws[w.dvm_full + b * NK + e] = v;
    ws[w.dV + b * NK + e] = v * ld_acc(a.mask + b * d.K + e % d.K);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < d.K; k += blockDim.x) {
    A dm = A(0), c = A(0);
    for (int64_t n = 0; n < d.N; ++n) {
      const int64_t e = n * d.K + k;
      const A v = a.V[b * NK + e];
      dm = fma(ws[w.dvm_full + b * NK + e], v, dm);
      c = fma(ws[w.dV + b * NK + e], v, c);
    }
    a.dmask[b * d.K + k] = Conv<T>::out(dm);
    ws[w.c + b * d.K + k] = c;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    bwd_exemplar_kernel(MscaBwdArgs<T, acc_t<T>> a, MscaDims d, int sa, int splits, int ntiles,
                        bool vec, acc_t<T>* __restrict__ ws) {
  using A = acc_t<T>;
  A* sm = smem_base<A>();
  const Layout L = layout_for(d.K, Pass::BwdExemplar);
  A* S = sm + L.S;
  A* D = sm + L.D;
  A* X = sm + L.X;
  A* W1 = sm + L.W1;
  A* W2 = sm + L.W2;
  const int K = static_cast<int>(d.K), N = static_cast<int>(d.N), M2 = static_cast<int>(d.M2);
  const int64_t P2 = d.P2, C = d.N + d.M2;
  const int b = blockIdx.y, s = blockIdx.x;
  const int64_t item = static_cast<int64_t>(b) * splits + s;
  const int tb = static_cast<int>(static_cast<int64_t>(s) * ntiles / splits);
  const int te = static_cast<int>(static_cast<int64_t>(s + 1) * ntiles / splits);
  const BwdWs w = bwd_ws(d, sa, splits);
  A* dphi = ws + w.dphi + item * d.K * C;
  A* dphib = ws + w.dphib + item * d.K;
  const A* dV = ws + w.dV + b * d.N * d.K;
  const A* cvec = ws + w.c + b * d.K;
  const A* lse = a.lse + b * d.K;
  const T* fx2 = a.fx2 + b * d.N * P2;
  const T* fc2 = a.fc2 + b * d.M2 * P2;
  const T* sbias = a.spatial_bias ? a.spatial_bias + b * d.K * P2 : nullptr;
  for (int tile = tb; tile < te; ++tile) {
    const bool first = tile == tb;
    const int64_t p0 = static_cast<int64_t>(tile) * kTile;
    const int pv = static_cast<int>(P2 - p0 < kTile ? P2 - p0 : kTile);
    __syncthreads();
    // logits a (as in the forward) and dalpha = dV^T fx2
    exemplar_logits<T, A>(fx2, fc2, sbias, a.phi, a.phi_bias, dV, d, p0, pv, vec, S, D, X, W1,
                          W2);
    // alpha = exp(a - lse) (0 for a row with lse = -inf, and at padding; NaN for lse = NaN);
    // da = alpha (dalpha - c), 0 at padding (dalpha there is dV times zero, NaN for dV = inf)
    for (int e = threadIdx.x; e < K * kTile; e += blockDim.x) {
      const int k = e / kTile, j = e - k * kTile;
      const A l = lse[k];
      const bool off = l == neg_inf<A>() || j >= pv;
      const A al = off ? A(0) : exp_acc(S[k * kLd + j] - l);
      S[k * kLd + j] = al;
      D[k * kLd + j] = off ? A(0) : al * (D[k * kLd + j] - cvec[k]);
    }
    __syncthreads();
    if (a.dspatial_bias) store_tile_rows<T, A>(a.dspatial_bias + b * d.K * P2, P2, p0, pv, D, K);
    row_sums(D, K, dphib, first);
    // dfx2[n][j] = sum_k dV[n][k] alpha[k][j] + phi[k][n] da[k][j]; dphi[k][n] += da . fx2[n]
    for (int src = 0; src < 2; ++src) {
      const int rows = src == 0 ? N : M2;
      const T* base = src == 0 ? fx2 : fc2;
      T* out = src == 0 ? a.dfx2 + b * d.N * P2 : a.dfc2 + b * d.M2 * P2;
      const int coff = src == 0 ? 0 : N;
      for (int c0 = 0; c0 < rows; c0 += kCC) {
        const int cc = rows - c0 < kCC ? rows - c0 : kCC;
        load_rows(X, base + c0 * P2 + p0, P2, cc, pv, vec);
        for (int e = threadIdx.x; e < K * cc; e += blockDim.x) {
          const int k = e / cc, c = e - k * cc;
          W2[k * kCC + c] = ld_acc(a.phi + k * C + coff + c0 + c);
          if (src == 0) W1[k * kCC + c] = dV[(c0 + c) * K + k];
        }
        __syncthreads();
        mm_nt(K, cc, D, X, [&](int k, int c, A v) {
          partial(dphi + k * C + coff + c0 + c, v, first);
        });
        const StoreRows<T> st{out + c0 * P2 + p0, P2, pv, vec};
        if (src == 0)
          mm_tn(cc, K, W1, kCC, S, K, W2, kCC, D, st);
        else
          mm_tn(cc, K, W2, kCC, D, 0, W2, kCC, D, st);
        __syncthreads();
      }
    }
  }
}

// out[e] = sum over items i (in order) of part[i * E + e], cast to T.
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    reduce_items_kernel(const acc_t<T>* __restrict__ part, int64_t items, int64_t E,
                        T* __restrict__ out) {
  using A = acc_t<T>;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= E) return;
  A s = A(0);
  for (int64_t i = 0; i < items; ++i) s += part[i * E + e];
  out[e] = Conv<T>::out(s);
}

// ---- host side -----------------------------------------------------------------------------

bool dims_ok(const MscaDims& d) {
  return d.B >= 1 && d.B <= 65535 && d.K >= 1 && d.K <= kMaxK && d.N >= 1 && d.M1 >= 1 &&
         d.M2 >= 1 && d.P1 >= 1 && d.P2 >= 1 && ceil_div(d.P1, kTile) <= 0x7fffffff &&
         ceil_div(d.P2, kTile) <= 0x7fffffff;
}

// Vector access is possible when every row start is a multiple of both the 16-byte load
// group and the 4-result store group, and the base pointers are 32-byte aligned.
template <typename T>
bool vec_ok(int64_t P, std::initializer_list<const void*> ptrs) {
  const int64_t g = kVec<T> > 4 ? kVec<T> : 4;
  if (P % g != 0) return false;
  for (const void* p : ptrs)
    if (!is_aligned(p, 32)) return false;
  return true;
}

size_t smem_bytes(int64_t K, Pass p, size_t acc_size) {
  return static_cast<size_t>(layout_for(K, p).total) * acc_size;
}

// Kernels whose shared memory exceeds the default 48 KiB must opt in (float64 with large K).
template <typename Kern>
cudaError_t allow_smem(Kern kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

}  // namespace

size_t msca_smem_bytes(int64_t K, size_t acc_size, bool backward) {
  const Pass a = backward ? Pass::BwdTarget : Pass::FwdExemplar;
  const Pass b = backward ? Pass::BwdExemplar : Pass::FwdTarget;
  const size_t x = smem_bytes(K, a, acc_size), y = smem_bytes(K, b, acc_size);
  return x > y ? x : y;
}

int64_t msca_max_k(size_t acc_size, size_t smem_limit, bool backward) {
  int64_t k = kMaxK;
  while (k > 0 && msca_smem_bytes(k, acc_size, backward) > smem_limit) --k;
  return k;
}

std::string msca_smem_check(int64_t K, size_t acc_size, size_t smem_limit, bool backward) {
  const size_t need = msca_smem_bytes(K, acc_size, backward);
  if (need <= smem_limit) return std::string();
  const int64_t kmax = msca_max_k(acc_size, smem_limit, backward);
  const char* dtype = acc_size == 8 ? "float64" : "float32/float16/bfloat16";
  return "phi_weight: K = " + std::to_string(K) + " attention maps in " + dtype + " need " +
         std::to_string(need) + " bytes of shared memory per block in the " +
         (backward ? "backward" : "forward") + " kernels, more than the " +
         std::to_string(smem_limit) + " this GPU allows; expected K <= " + std::to_string(kmax) +
         " in " + dtype + " on this GPU" +
         (acc_size == 8 ? " (or float32, or another backend)" : " (or another backend)");
}

std::string msca_fwd_smem_check(int64_t K, size_t acc_size, size_t smem_limit,
                                bool backward_follows) {
  std::string err = msca_smem_check(K, acc_size, smem_limit, /*backward=*/false);
  if (err.empty() && backward_follows)
    err = msca_smem_check(K, acc_size, smem_limit, /*backward=*/true);
  return err;
}

size_t msca_fwd_workspace_bytes(const MscaDims& d, int sm_count, size_t acc_size) {
  const int64_t s = splits_for(ceil_div(d.P2, kTile), d.B, sm_count);
  return static_cast<size_t>(fwd_ws(d, s).total) * acc_size;
}

size_t msca_bwd_workspace_bytes(const MscaDims& d, int sm_count, size_t acc_size) {
  const int64_t sa = splits_for(ceil_div(d.P1, kTile), d.B, sm_count);
  const int64_t sb = splits_for(ceil_div(d.P2, kTile), d.B, sm_count);
  return static_cast<size_t>(bwd_ws(d, sa, sb).total) * acc_size;
}

template <typename T, typename A>
cudaError_t msca_fwd(const MscaFwdArgs<T, A>& a, const MscaDims& d, void* workspace,
                     int sm_count, cudaStream_t stream) {
  static_assert(std::is_same<A, acc_t<T>>::value, "V and lse use the accumulation type");
  if (!dims_ok(d)) return cudaErrorInvalidValue;
  A* ws = static_cast<A*>(workspace);
  const size_t smem1 = smem_bytes(d.K, Pass::FwdExemplar, sizeof(A));
  const size_t smem2 = smem_bytes(d.K, Pass::FwdTarget, sizeof(A));
  cudaError_t err;
  if ((err = allow_smem(fwd_exemplar_kernel<T>, smem1)) != cudaSuccess) return err;
  if ((err = allow_smem(fwd_target_kernel<T>, smem2)) != cudaSuccess) return err;
  const int64_t nt2 = ceil_div(d.P2, kTile), nt1 = ceil_div(d.P1, kTile);
  const int splits = static_cast<int>(splits_for(nt2, d.B, sm_count));
  const bool vec2 = vec_ok<T>(d.P2, {a.fx2, a.fc2});
  const bool vec1 = vec_ok<T>(d.P1, {a.fc1, a.out});
  const dim3 g1(splits, static_cast<unsigned>(d.B));
  fwd_exemplar_kernel<T><<<g1, kThreads, smem1, stream>>>(a, d, splits, static_cast<int>(nt2),
                                                        vec2, ws);
  const dim3 gm(static_cast<unsigned>(ceil_div(d.N * d.K, kThreads)),
                static_cast<unsigned>(d.B));
  fwd_merge_kernel<T><<<gm, kThreads, 0, stream>>>(a, d, splits, ws);
  const dim3 g2(static_cast<unsigned>(nt1), static_cast<unsigned>(d.B));
  fwd_target_kernel<T><<<g2, kThreads, smem2, stream>>>(a, d, vec1);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t msca_bwd(const MscaBwdArgs<T, A>& a, const MscaDims& d, void* workspace,
                     int sm_count, cudaStream_t stream) {
  static_assert(std::is_same<A, acc_t<T>>::value, "V and lse use the accumulation type");
  if (!dims_ok(d)) return cudaErrorInvalidValue;
  A* ws = static_cast<A*>(workspace);
  const size_t smem_a = smem_bytes(d.K, Pass::BwdTarget, sizeof(A));
  const size_t smem_b = smem_bytes(d.K, Pass::BwdExemplar, sizeof(A));
  cudaError_t err;
  if ((err = allow_smem(bwd_target_kernel<T>, smem_a)) != cudaSuccess) return err;
  if ((err = allow_smem(bwd_exemplar_kernel<T>, smem_b)) != cudaSuccess) return err;
  const int64_t nt1 = ceil_div(d.P1, kTile), nt2 = ceil_div(d.P2, kTile);
  const int sa = static_cast<int>(splits_for(nt1, d.B, sm_count));
  const int sb = static_cast<int>(splits_for(nt2, d.B, sm_count));
  const bool vec1 = vec_ok<T>(d.P1, {a.fc1, a.grad_out, a.dfc1});
  const bool vec2 = vec_ok<T>(d.P2, {a.fx2, a.fc2, a.dfx2, a.dfc2});
  const BwdWs w = bwd_ws(d, sa, sb);
  const unsigned B = static_cast<unsigned>(d.B);
  // bwd_target only uses the pass-A part of the layout, which does not depend on sb.
  bwd_target_kernel<T><<<dim3(sa, B), kThreads, smem_a, stream>>>(a, d, sa, static_cast<int>(nt1),
                                                               vec1, ws);
  bwd_mid_kernel<T><<<dim3(B), kThreads, 0, stream>>>(a, d, sa, sb, ws);
  bwd_exemplar_kernel<T><<<dim3(sb, B), kThreads, smem_b, stream>>>(a, d, sa, sb,
                                                                 static_cast<int>(nt2), vec2, ws);
  auto reduce = [&](int64_t off, int64_t items, int64_t E, T* out) {
    reduce_items_kernel<T><<<static_cast<unsigned>(ceil_div(E, kThreads)), kThreads, 0, stream>>>(
        ws + off, items, E, out);
  };
  const int64_t C = d.N + d.M2;
  reduce(w.dpsi, d.B * sa, d.K * d.M1, a.dpsi);
  reduce(w.dpsib, d.B * sa, d.K, a.dpsi_bias);
  reduce(w.dphi, d.B * sb, d.K * C, a.dphi);
  reduce(w.dphib, d.B * sb, d.K, a.dphi_bias);
  return cudaGetLastError();
}

#define MSCA_INSTANTIATE(T)                                                                   \
  template cudaError_t msca_fwd<T, acc_t<T>>(const MscaFwdArgs<T, acc_t<T>>&, const MscaDims&, \
                                             void*, int, cudaStream_t);                       \
  template cudaError_t msca_bwd<T, acc_t<T>>(const MscaBwdArgs<T, acc_t<T>>&, const MscaDims&, \
                                             void*, int, cudaStream_t);
MSCA_INSTANTIATE(float)
MSCA_INSTANTIATE(double)
MSCA_INSTANTIATE(__half)
MSCA_INSTANTIATE(__nv_bfloat16)
#undef MSCA_INSTANTIATE

}  // namespace msca_cuda
