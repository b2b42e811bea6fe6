// Raw CPU kernels of MSCA attention (docs/design.md section 2): functions on raw pointers and sizes,
// templated on the scalar type, which is also the accumulation type (float32 accumulates in
// float32, float64 in float64). No at::Tensor in here; the bindings are in msca_cpu.cpp.
//
// Layout of the work. Every pass streams tiles of kTile positions (j over the exemplar, t over
// the target) and keeps everything of size K x tile in per-thread scratch that stays in L1/L2:
// nothing of size K x P or (N+M2) x P is ever allocated. Two register-blocked micro-kernels do
// all the matrix work:
//
//   tn: out[r][t] = bias[r] + add[r][t] + sum_c G[r][c] Y[c][t]
//       (logits a and b, out, dbeta, dalpha, dfx2, dfc2, dfc1). A block of RB rows x TV
//       vectors of positions lives in registers; per c it loads TV vectors of Y and broadcasts
//       RB weights (pre-packed per row block as [c][r] so the broadcasts are contiguous).
//   nt: acc[r][s] += sum_t A[r][t] B[s][t]   (V, dVm, dpsi, dphi: reductions over positions)
//       A block of RA x SB accumulators, each a vector of W partial sums over positions, kept
//       lane-wise in per-chunk memory across tiles and summed horizontally once per chunk.
//
// Memory: the inputs are (N+M2) or M1 rows a whole plane apart, too many streams for the
// hardware prefetcher, so the tn kernel that first reads a tile prefetches the next tile into
// L2; the big outputs are written with non-temporal stores. At the benchmark size every pass
// then runs at about the machine's FMA throughput (~170 GFLOP/s on the 2-core test machine).
//
// Numerics: -inf logits are allowed (spatial_bias/channel_bias switching attention off): a row
// or column whose logits are all -inf attends to nothing (alpha or beta = 0, lse = -inf) and
// never produces exp(-inf - -inf). Padding positions of the last tile get logit -inf.
//
// Parallelism: (batch, chunk-of-tiles) work items, claimed dynamically by the threads of one
// at::parallel_for. Every item writes its own partial results (online-softmax state, lane sums
// of the weight gradients) and the partials are merged afterwards in item order, so results do
// not depend on which thread ran which item, only on the number of threads (which fixes the
// chunking).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "vec_math.h"

// Development aid: build with -DMSCA_PROFILE_PASSES to print the wall time of every pass.
#ifdef MSCA_PROFILE_PASSES
#include <chrono>
#include <cstdio>
#define MSCA_TIC(name) auto name = std::chrono::steady_clock::now()
#define MSCA_TOC(name, label)                                                   \
  std::fprintf(stderr, "%s %.2f ms\n", label,                                   \
               std::chrono::duration<double, std::milli>(                       \
                   std::chrono::steady_clock::now() - name).count())
#else
#define MSCA_TIC(name)
#define MSCA_TOC(name, label)
#endif

namespace msca_cpu {

using vec::Vec;

// Tile of positions per work step. 256 floats = 1 KiB per row: the K x tile logits/attention
// scratch (16 KiB at K=16) stays in L1 and the (N+M2) x tile input block (128 KiB) in L2.
// (MSCA_TILE / MSCA_TN_ROWS / MSCA_TN_VECS override them for tuning experiments.)
#ifndef MSCA_TILE
#define MSCA_TILE 256
#endif
#ifndef MSCA_TN_ROWS
#define MSCA_TN_ROWS 8
#endif
#ifndef MSCA_TN_VECS
#define MSCA_TN_VECS 2
#endif
constexpr int64_t kTile = MSCA_TILE;
// Rows per register block of the tn kernel and the number of position vectors it keeps:
// 8 x 2 = 16 accumulators, and per weight column 2 vector loads + 8 broadcasts for 16 FMAs.
constexpr int kTnRows = MSCA_TN_ROWS;
constexpr int kTnVecs = MSCA_TN_VECS;
static_assert(kTile % (kTnVecs * Vec<float>::W) == 0 && kTile % (kTnVecs * Vec<double>::W) == 0,
              "a full tile must be a whole number of tn steps");
static_assert(kTnRows >= 1 && kTnRows <= 16, "tn row blocks are dispatched for 1..16 rows");
// Register block of the nt kernel: kNtA rows of the big operand x kNtB rows (of K).
constexpr int kNtA = 4;
constexpr int kNtB = 4;

// ------------------------------------------------------------------------------------------
// Small helpers

// 64-byte aligned scratch, zero-initialised on request. std::vector does not align to cache
// lines, and a row split across two lines costs every vector load in the micro-kernels.
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(int64_t n, bool zero = false) { reset(n, zero); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { release(); }
  void reset(int64_t n, bool zero = false) {
    release();
    n_ = std::max<int64_t>(n, 1);
    p_ = static_cast<T*>(::operator new(sizeof(T) * n_, std::align_val_t(64)));
    if (zero) std::memset(p_, 0, sizeof(T) * n_);
  }
  T* get() const { return p_; }
  void fill(T v) { std::fill(p_, p_ + n_, v); }

 private:
  void release() {
    if (p_) ::operator delete(p_, std::align_val_t(64));
    p_ = nullptr;
  }
  T* p_ = nullptr;
  int64_t n_ = 0;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Packs G (R x C, element (r,c) = g(r,c)) into row-block panels for tn_gemm: block r0 (rows
// r0..r0+rb) starts at dst + r0*C and stores element (r0+r, c) at [c*rb + r].
template <typename T, typename F>
void pack_tn(T* dst, int64_t R, int64_t C, F g) {
  for (int64_t r0 = 0; r0 < R; r0 += kTnRows) {
    const int64_t rb = std::min<int64_t>(kTnRows, R - r0);
    T* p = dst + r0 * C;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < rb; ++r) p[c * rb + r] = g(r0 + r, c);
  }
}

// Copies a rows x cols block (row strides lds -> ldd) and zero-fills columns [cols, cols_pad).
// Used for the last, partial tile so the micro-kernels can always run on whole vectors.
template <typename T>
void copy_in(T* dst, int64_t ldd, const T* src, int64_t lds, int64_t rows, int64_t cols,
             int64_t cols_pad) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * ldd, src + r * lds, sizeof(T) * cols);
    std::fill(dst + r * ldd + cols, dst + r * ldd + cols_pad, T(0));
  }
}
template <typename T>
void copy_out(T* dst, int64_t ldd, const T* src, int64_t lds, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * ldd, src + r * lds, sizeof(T) * cols);
}

// ------------------------------------------------------------------------------------------
// tn micro-kernel: RB rows x TV vectors of positions, starting at the given column pointers.
// Y is given as up to two row sources (fx2 then fc2 for the exemplar logits), whose weights are
// consecutive columns of the packed panel.
// PF: also prefetch (into L2) the same columns pf_off elements further on in every Y row, i.e.
// the next tile. The inputs are read as (N+M2) or M1 rows a whole plane apart, too many
// streams for the hardware prefetcher, and the loads would otherwise wait on DRAM.
// NTS: write out with non-temporal stores (out is a big output, 64-byte aligned).
template <typename T, int RB, int TV, bool PF, bool NTS>
inline void tn_micro(const T* __restrict panel, int64_t C1, const T* __restrict Y1, int64_t ldy1,
                     int64_t C2, const T* __restrict Y2, int64_t ldy2, const T* __restrict bias,
                     const T* __restrict add, int64_t ldadd, T* __restrict out, int64_t ldo,
                     int64_t pf_off) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  constexpr int kLines = (TV * W * static_cast<int>(sizeof(T)) + 63) / 64;
  constexpr int kLineElems = 64 / static_cast<int>(sizeof(T));
  R acc[RB][TV];
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < TV; ++v) acc[r][v] = V::zero();
  const T* g = panel;
  for (int64_t c = 0; c < C1; ++c, g += RB, Y1 += ldy1) {
    if (PF) {
#pragma GCC unroll 4
      for (int l = 0; l < kLines; ++l) vec::prefetch_l2(Y1 + pf_off + l * kLineElems);
    }
    R y[TV];
#pragma GCC unroll 4
    for (int v = 0; v < TV; ++v) y[v] = V::load(Y1 + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const R w = V::set1(g[r]);
#pragma GCC unroll 4
      for (int v = 0; v < TV; ++v) acc[r][v] = V::fmadd(w, y[v], acc[r][v]);
    }
  }
  for (int64_t c = 0; c < C2; ++c, g += RB, Y2 += ldy2) {
    if (PF) {
#pragma GCC unroll 4
      for (int l = 0; l < kLines; ++l) vec::prefetch_l2(Y2 + pf_off + l * kLineElems);
    }
    R y[TV];
#pragma GCC unroll 4
    for (int v = 0; v < TV; ++v) y[v] = V::load(Y2 + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const R w = V::set1(g[r]);
#pragma GCC unroll 4
      for (int v = 0; v < TV; ++v) acc[r][v] = V::fmadd(w, y[v], acc[r][v]);
    }
  }
  // The biases are added after the product, in the reference's order ((product + bias) +
  // add): started from them, a large common offset (phi_bias = 1e4) would round every partial
  // sum at its magnitude, C roundings instead of one.
  if (bias) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) {
      const R b0 = V::set1(bias[r]);
#pragma GCC unroll 4
      for (int v = 0; v < TV; ++v) acc[r][v] = V::add(acc[r][v], b0);
    }
  }
  if (add) {
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < TV; ++v) acc[r][v] = V::add(acc[r][v], V::load(add + r * ldadd + v * W));
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < TV; ++v) {
      if (NTS)
        V::stream(out + r * ldo + v * W, acc[r][v]);
      else
        V::store(out + r * ldo + v * W, acc[r][v]);
    }
}

template <typename T, bool PF, bool NTS>
inline void tn_micro_rows(int rb, const T* panel, int64_t C1, const T* Y1, int64_t ldy1,
                          int64_t C2, const T* Y2, int64_t ldy2, const T* bias, const T* add,
                          int64_t ldadd, T* out, int64_t ldo, int64_t pf_off) {
  constexpr int TV = kTnVecs;
  switch (rb) {
#define MSCA_TN_CASE(RBV)                                                                    \
  case RBV:                                                                                  \
    tn_micro<T, RBV, TV, PF, NTS>(panel, C1, Y1, ldy1, C2, Y2, ldy2, bias, add, ldadd, out,  \
                                  ldo, pf_off);                                              \
    break;
    MSCA_TN_CASE(1)
    MSCA_TN_CASE(2)
    MSCA_TN_CASE(3)
    MSCA_TN_CASE(4)
    MSCA_TN_CASE(5)
    MSCA_TN_CASE(6)
    MSCA_TN_CASE(7)
    MSCA_TN_CASE(8)
#if MSCA_TN_ROWS > 8
    MSCA_TN_CASE(9)
    MSCA_TN_CASE(10)
    MSCA_TN_CASE(11)
    MSCA_TN_CASE(12)
    MSCA_TN_CASE(13)
    MSCA_TN_CASE(14)
    MSCA_TN_CASE(15)
    MSCA_TN_CASE(16)
#endif
#undef MSCA_TN_CASE
    default:
      break;
  }
}

// Options of one tn_gemm call.
struct TnOpts {
  int64_t pf_off = 0;       // prefetch Y this many elements ahead (0: no prefetch)
  bool stream_out = false;  // out is a big output: use non-temporal stores where aligned
};

// out (R x ncols, row stride ldo) = bias + add + G [Y1; Y2], G packed by pack_tn with
// C = C1 + C2 columns. ncols must be a multiple of kTnVecs * W. bias, add, Y2 may be null.
// Positions outer, row blocks inner: one position step of Y (C rows x kTnVecs vectors) is
// loaded from memory once and re-read from L1 by the other row blocks (which therefore do not
// prefetch again).
template <typename T>
void tn_gemm(const T* panels, int64_t R, int64_t C1, const T* Y1, int64_t ldy1, int64_t C2,
             const T* Y2, int64_t ldy2, const T* bias, const T* add, int64_t ldadd, T* out,
             int64_t ldo, int64_t ncols, TnOpts opt = TnOpts()) {
  constexpr int W = Vec<T>::W;
  constexpr int64_t step = kTnVecs * W;
  constexpr uintptr_t kAlign = W * sizeof(T);
  const int64_t C = C1 + C2;
  const bool nts = opt.stream_out && W > 1 &&
                   reinterpret_cast<uintptr_t>(out) % kAlign == 0 &&
                   (ldo * static_cast<int64_t>(sizeof(T))) % static_cast<int64_t>(kAlign) == 0;
  for (int64_t t = 0; t < ncols; t += step) {
    for (int64_t r0 = 0; r0 < R; r0 += kTnRows) {
      const int rb = static_cast<int>(std::min<int64_t>(kTnRows, R - r0));
      const T* pn = panels + r0 * C;
      const T* bi = bias ? bias + r0 : nullptr;
      const T* ad = add ? add + r0 * ldadd + t : nullptr;
      T* o = out + r0 * ldo + t;
      const T* y2 = Y2 ? Y2 + t : nullptr;
      const bool pf = opt.pf_off != 0 && r0 == 0;
      if (pf) {
        if (nts)
          tn_micro_rows<T, true, true>(rb, pn, C1, Y1 + t, ldy1, C2, y2, ldy2, bi, ad, ldadd, o,
                                       ldo, opt.pf_off);
        else
          tn_micro_rows<T, true, false>(rb, pn, C1, Y1 + t, ldy1, C2, y2, ldy2, bi, ad, ldadd, o,
                                        ldo, opt.pf_off);
      } else {
        if (nts)
          tn_micro_rows<T, false, true>(rb, pn, C1, Y1 + t, ldy1, C2, y2, ldy2, bi, ad, ldadd, o,
                                        ldo, 0);
        else
          tn_micro_rows<T, false, false>(rb, pn, C1, Y1 + t, ldy1, C2, y2, ldy2, bi, ad, ldadd,
                                         o, ldo, 0);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// nt micro-kernel: acc[i][j] (lane vectors at acc + i*acc_ld + j*W) += sum_t A[i][t] B[j][t]
// for RA rows of A and SB rows of B, over ncols (a multiple of W) positions.
template <typename T, int RA, int SB>
inline void nt_micro(const T* __restrict A, int64_t lda, const T* __restrict Bm, int64_t ldb,
                     int64_t ncols, T* __restrict acc, int64_t acc_ld) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  R c[RA][SB];
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < SB; ++j) c[i][j] = V::load(acc + i * acc_ld + j * W);
  for (int64_t t = 0; t < ncols; t += W) {
    R a[RA], b[SB];
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i) a[i] = V::load(A + i * lda + t);
#pragma GCC unroll 8
    for (int j = 0; j < SB; ++j) b[j] = V::load(Bm + j * ldb + t);
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < SB; ++j) c[i][j] = V::fmadd(a[i], b[j], c[i][j]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < RA; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < SB; ++j) V::store(acc + i * acc_ld + j * W, c[i][j]);
}

template <typename T, int RA>
inline void nt_dispatch_b(int sb, const T* A, int64_t lda, const T* Bm, int64_t ldb,
                          int64_t ncols, T* acc, int64_t acc_ld) {
  switch (sb) {
    case 1: nt_micro<T, RA, 1>(A, lda, Bm, ldb, ncols, acc, acc_ld); break;
    case 2: nt_micro<T, RA, 2>(A, lda, Bm, ldb, ncols, acc, acc_ld); break;
    case 3: nt_micro<T, RA, 3>(A, lda, Bm, ldb, ncols, acc, acc_ld); break;
    case 4: nt_micro<T, RA, 4>(A, lda, Bm, ldb, ncols, acc, acc_ld); break;
    default: break;
  }
}

// acc[i][j][:] += sum_t A[i][t] B[j][t] for i < RA_total, j < SB_total; acc rows i are acc_ld
// elements apart, columns j are W apart. A is the big operand (N, M1 or N+M2 rows) and is read
// once; B (K rows x ncols) stays in L1 and is re-read for every row block of A.
template <typename T>
void nt_gemm(const T* A, int64_t lda, int64_t RAt, const T* Bm, int64_t ldb, int64_t SBt,
             int64_t ncols, T* acc, int64_t acc_ld) {
  constexpr int W = Vec<T>::W;
  static_assert(kNtA == 4 && kNtB == 4, "the dispatch below is written for 4x4 blocks");
  for (int64_t i0 = 0; i0 < RAt; i0 += kNtA) {
    const int ra = static_cast<int>(std::min<int64_t>(kNtA, RAt - i0));
    for (int64_t j0 = 0; j0 < SBt; j0 += kNtB) {
      const int sb = static_cast<int>(std::min<int64_t>(kNtB, SBt - j0));
      const T* a = A + i0 * lda;
      const T* b = Bm + j0 * ldb;
      T* c = acc + i0 * acc_ld + j0 * W;
      switch (ra) {
        case 1: nt_dispatch_b<T, 1>(sb, a, lda, b, ldb, ncols, c, acc_ld); break;
        case 2: nt_dispatch_b<T, 2>(sb, a, lda, b, ldb, ncols, c, acc_ld); break;
        case 3: nt_dispatch_b<T, 3>(sb, a, lda, b, ldb, ncols, c, acc_ld); break;
        case 4: nt_dispatch_b<T, 4>(sb, a, lda, b, ldb, ncols, c, acc_ld); break;
        default: break;
      }
    }
  }
}

// Sums each lane vector of acc (rows x cols vectors of W, row stride cols*W) into
// dst[r*dst_rs + c*dst_cs]: once per chunk, so the horizontal adds cost nothing.
template <typename T>
void reduce_lanes(const T* acc, int64_t rows, int64_t cols, T* dst, int64_t dst_rs,
                  int64_t dst_cs) {
  using V = Vec<T>;
  constexpr int W = V::W;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dst[r * dst_rs + c * dst_cs] = V::hsum(V::load(acc + (r * cols + c) * W));
}

// ------------------------------------------------------------------------------------------
// Softmax pieces. Rows of S are ld apart; n (a multiple of W) columns are processed.

// Softmax over k (the channel attention beta), in place, column by column. A column whose
// logits are all -inf gets beta = 0 (shift 0, exp = 0, 1/sum replaced by 0).
template <typename T>
void softmax_over_rows(T* S, int64_t K, int64_t ld, int64_t n) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t t = 0; t < n; t += W) {
    R m = V::load(S + t);
    for (int64_t k = 1; k < K; ++k) m = V::max(m, V::load(S + k * ld + t));
    m = V::zero_if_neginf(m);
    R s = V::zero();
    for (int64_t k = 0; k < K; ++k) {
      R e = V::exp(V::sub(V::load(S + k * ld + t), m));
      V::store(S + k * ld + t, e);
      s = V::add(s, e);
    }
    const R inv = V::recip_or_zero(s);
    for (int64_t k = 0; k < K; ++k) V::store(S + k * ld + t, V::mul(V::load(S + k * ld + t), inv));
  }
}

// Backward of softmax over k, in place on D: D = beta * (D - sum_k beta * D), the formula of
// docs/design.md section 2 as written. (Evaluating it relative to the peak channel's dbeta avoids a
// cancellation when beta is peaked and is more accurate there, but then disagrees with the
// einsum reference, which cancels the same way this does, and the tests compare against it.)
template <typename T>
void softmax_over_rows_bwd(const T* beta, T* D, int64_t K, int64_t ld, int64_t n) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t t = 0; t < n; t += W) {
    R s = V::zero();
    for (int64_t k = 0; k < K; ++k)
      s = V::fmadd(V::load(beta + k * ld + t), V::load(D + k * ld + t), s);
    for (int64_t k = 0; k < K; ++k) {
      const R b = V::load(beta + k * ld + t);
      V::store(D + k * ld + t, V::mul(b, V::sub(V::load(D + k * ld + t), s)));
    }
  }
}

// Online softmax over positions for one tile (exemplar pass 1). For every row k: update the
// running max m[k] and sum s[k], rescale the row's lane accumulators Vl[:, k] (N rows of
// row stride vl_ld) when the max grows, and replace the logits by p = exp(a - m[k]).
// A row whose logits are all -inf so far keeps m = -inf, s = 0 and gets p = 0 (never
// exp(-inf - -inf) = NaN).
// NaN: the vector max drops NaN, so a NaN logit next to a finite one only shows up in the sum
// (exp(NaN - m) = NaN) and one among -inf only would be lost with the row: that case sets
// s = NaN and p = NaN, and the NaN then survives every later rescale and the merge, as in the
// reference, whose softmax row (and so V[:, k] and the output) is NaN.
template <typename T>
void online_softmax_tile(T* S, int64_t K, int64_t ld, int64_t n, T* m, T* s, T* Vl,
                         int64_t Nrows, int64_t vl_ld) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    T* row = S + k * ld;
    R mv = V::set1(ninf);
    for (int64_t t = 0; t < n; t += W) mv = V::max(mv, V::load(row + t));
    const T tmax = V::hmax(mv);
    const T mold = m[k];
    const T mnew = std::max(mold, tmax);
    if (mnew == ninf) {  // nothing but -inf (or NaN) so far: this row attends to nothing yet
      const bool has_nan = std::any_of(row, row + n, [](T x) { return std::isnan(x); });
      std::fill(row, row + n, has_nan ? std::numeric_limits<T>::quiet_NaN() : T(0));
      if (has_nan) s[k] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    if (mnew > mold) {
      const T scale = (mold == ninf) ? T(0) : std::exp(mold - mnew);
      s[k] *= scale;
      const R sv = V::set1(scale);
      for (int64_t r = 0; r < Nrows; ++r) {
        T* p = Vl + r * vl_ld + k * W;
        V::store(p, V::mul(V::load(p), sv));
      }
      m[k] = mnew;
    }
    const R shift = V::set1(mnew);
    R sum = V::zero();
    for (int64_t t = 0; t < n; t += W) {
      const R e = V::exp(V::sub(V::load(row + t), shift));
      V::store(row + t, e);
      sum = V::add(sum, e);
    }
    s[k] += V::hsum(sum);
  }
}

// alpha = exp(a - lse[k]) in place; a row with lse = -inf (all logits -inf) is all zeros, one
// with lse = NaN (a NaN logit) all NaN.
template <typename T>
void exp_minus_lse(T* S, int64_t K, int64_t ld, int64_t n, const T* lse) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t k = 0; k < K; ++k) {
    T* row = S + k * ld;
    if (std::isnan(lse[k])) {
      std::fill(row, row + n, lse[k]);
      continue;
    }
    if (!(lse[k] > -std::numeric_limits<T>::infinity())) {
      std::fill(row, row + n, T(0));
      continue;
    }
    const R shift = V::set1(lse[k]);
    for (int64_t t = 0; t < n; t += W) V::store(row + t, V::exp(V::sub(V::load(row + t), shift)));
  }
}

// da = alpha * (dalpha - c[k]) in place on D; rows of D and alpha are ld apart.
template <typename T>
void spatial_softmax_bwd(const T* alpha, T* D, int64_t K, int64_t ld, int64_t n, const T* c) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t k = 0; k < K; ++k) {
    const R ck = V::set1(c[k]);
    for (int64_t t = 0; t < n; t += W) {
      const R a = V::load(alpha + k * ld + t);
      V::store(D + k * ld + t, V::mul(a, V::sub(V::load(D + k * ld + t), ck)));
    }
  }
}

// acc[k][:] += sum over the tile of D[k][:] (lane-wise), for the bias gradients.
template <typename T>
void row_sums_acc(const T* D, int64_t K, int64_t ld, int64_t n, T* acc) {
  using V = Vec<T>;
  using R = typename V::reg;
  constexpr int W = V::W;
  for (int64_t k = 0; k < K; ++k) {
    R s = V::load(acc + k * W);
    for (int64_t t = 0; t < n; t += W) s = V::add(s, V::load(D + k * ld + t));
    V::store(acc + k * W, s);
  }
}

// Work split: each batch's tiles are cut into `chunks` contiguous ranges: at least 4 chunks
// per thread, so that dynamic claiming evens out threads slowed down by other load on the
// machine, and at most 64 tiles (16384 positions) per chunk. Each chunk costs a little (zeroing
// and summing its lane accumulators, one more partial to merge, one cold first tile), so not
// more. The count depends only on the problem and the thread count: results are reproducible.
inline int64_t chunks_per_batch(int64_t ntiles, int64_t B) {
  const int64_t nthreads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want =
      std::max(ceil_div(4 * nthreads, std::max<int64_t>(B, 1)), ceil_div(ntiles, 64));
  return std::max<int64_t>(1, std::min(ntiles, want));
}

// Runs body(claim) once on each of up to get_num_threads() threads; claim() hands out the items
// 0..items-1, each exactly once, and -1 when none is left. Dynamic rather than a static split:
// on a shared machine one thread is often descheduled for a while and a static split would
// make the other wait at the join. Every chunk keeps consecutive tiles on one thread, so the
// next-tile prefetch stays useful.
template <typename Body>
void parallel_dynamic(int64_t items, const Body& body) {
  if (items <= 0) return;
  std::atomic<int64_t> next{0};
  auto claim = [&]() -> int64_t {
    const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
    return i < items ? i : int64_t(-1);
  };
  const int64_t workers = std::min<int64_t>(items, std::max(1, at::get_num_threads()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) { body(claim); });
}

// Position count rounded up to a whole step of the tn kernel (the widest step used).
template <typename T>
inline int64_t padded_cols(int64_t tv) {
  constexpr int64_t step = kTnVecs * Vec<T>::W;
  return ceil_div(tv, step) * step;
}

// How one tile of tv positions (of a plane of P) is read and written.
//
// Inputs are packed: each row's tv values are copied into per-thread scratch (row stride kTile)
// before the micro-kernels run. In place, the tile's rows are a whole plane apart, 1 MB at
// 512x512, so every row of the tile maps to the same L1 and L2 cache sets; the (N+M2) or M1
// rows then evict each other between the micro-kernels that reuse them, and a software
// prefetch of the next tile is evicted before it is used. A row-by-row copy reads each row as
// one short sequential run, which the hardware prefetchers follow; the packed tile then stays
// in L2 for every product of the pass. Measured on the 2-core test machine (512x512): forward
// pass 1 13.8 -> 12.1 ms. Build with -DMSCA_PACK_INPUTS=0 for the in-place reads with
// next-tile prefetch (the earlier design) on machines where that wins.
// Outputs of full tiles are written in place with non-temporal stores; the last, partial tile
// is computed into scratch on padded columns and copied out.
#ifndef MSCA_PACK_INPUTS
#define MSCA_PACK_INPUTS 1
#endif
template <typename T>
struct TileIO {
  TileIO(int64_t tv, int64_t plane)
      : full(tv == kTile),
        pack(MSCA_PACK_INPUTS || !full),
        ncols(full ? kTile : padded_cols<T>(tv)),
        ldi(pack ? kTile : plane),
        ldo(full ? plane : kTile) {}
  TnOpts read_opts() const {
    TnOpts o;
    o.pf_off = pack ? 0 : kTile;  // in place: prefetch the next tile's rows into L2
    return o;
  }
  TnOpts write_opts() const {
    TnOpts o;
    o.stream_out = full;
    return o;
  }
  bool full, pack;
  int64_t ncols, ldi, ldo;
};

// Packs one exemplar tile into buf (row stride kTile): the fx2 rows, the fc2 rows, then the
// spatial-bias rows if any, and points x1, x2, sb at the copies.
template <typename T>
void pack_exemplar_tile(T* buf, const T*& x1, const T*& x2, const T*& sb, int64_t N, int64_t M2,
                        int64_t K, int64_t P2, int64_t tv, int64_t ncols) {
  copy_in(buf, kTile, x1, P2, N, tv, ncols);
  copy_in(buf + N * kTile, kTile, x2, P2, M2, tv, ncols);
  x1 = buf;
  x2 = buf + N * kTile;
  if (sb) {
    copy_in(buf + (N + M2) * kTile, kTile, sb, P2, K, tv, ncols);
    sb = buf + (N + M2) * kTile;
  }
}

// Packs one target tile into buf: the fc1 rows, then the channel-bias rows if any.
template <typename T>
void pack_target_tile(T* buf, const T*& f1, const T*& cb, int64_t M1, int64_t K, int64_t P1,
                      int64_t tv, int64_t ncols) {
  copy_in(buf, kTile, f1, P1, M1, tv, ncols);
  f1 = buf;
  if (cb) {
    copy_in(buf + M1 * kTile, kTile, cb, P1, K, tv, ncols);
    cb = buf + M1 * kTile;
  }
}

// The bias of the spatial logits. The softmax over positions is invariant to phi_bias (one
// constant per row k), so a finite phi_bias is left out: added, it would round every logit at
// its magnitude (phi_bias = 1e4: steps of 1e-3) before the softmax takes it off again, and the
// kernels would be less accurate than the reference. lse is then that of the logits without
// it (the backward recomputes alpha from the same logits). A non-finite phi_bias is kept: NaN
// and +inf make the row NaN, -inf switches it off, as in the reference.
template <typename T>
std::vector<T> spatial_logit_bias(const T* phi_bias, int64_t K) {
  std::vector<T> b(K);
  for (int64_t k = 0; k < K; ++k) b[k] = std::isfinite(phi_bias[k]) ? T(0) : phi_bias[k];
  return b;
}

// ------------------------------------------------------------------------------------------
// Forward

template <typename T>
struct FwdArgs {
  const T* fx2;           // (B, N, P2)
  const T* fc2;           // (B, M2, P2)
  const T* fc1;           // (B, M1, P1)
  const T* phi;           // (K, N + M2)
  const T* phi_bias;      // (K)
  const T* psi;           // (K, M1)
  const T* psi_bias;      // (K)
  const T* mask;          // (B, K)
  const T* spatial_bias;  // (B, K, P2) or null
  const T* channel_bias;  // (B, K, P1) or null
  T* out;                 // (B, N, P1)
  T* V;                   // (B, N, K), un-masked
  T* lse;                 // (B, K), of the logits without a finite phi_bias
  int64_t B, N, M2, M1, K, P2, P1;
};

// Pass 1: V and lse from an online softmax over exemplar tiles.
template <typename T>
void msca_fwd_pass1(const FwdArgs<T>& a) {
  constexpr int W = Vec<T>::W;
  const int64_t B = a.B, N = a.N, M2 = a.M2, K = a.K, P2 = a.P2, C = N + M2;
  const T ninf = -std::numeric_limits<T>::infinity();
  std::vector<T> phi_pk(K * C);
  pack_tn(phi_pk.data(), K, C, [&](int64_t r, int64_t c) { return a.phi[r * C + c]; });
  const std::vector<T> sbias = spatial_logit_bias(a.phi_bias, K);

  const int64_t ntiles = ceil_div(P2, kTile);
  const int64_t nc = ntiles > 0 ? chunks_per_batch(ntiles, B) : 1;
  const int64_t items = B * nc;
  std::vector<T> Vp(items * N * K, T(0)), mp(items * K, ninf), sp(items * K, T(0));

  parallel_dynamic(items, [&](const auto& claim) {
    Scratch<T> S(K * kTile), Vl(N * K * W);
    Scratch<T> in_buf((C + K) * kTile);  // the tile's inputs, packed
    for (int64_t item = claim(); item >= 0; item = claim()) {
      const int64_t b = item / nc, ci = item % nc;
      const int64_t tb = ci * ntiles / nc, te = (ci + 1) * ntiles / nc;
      T* m = mp.data() + item * K;
      T* s = sp.data() + item * K;
      Vl.fill(T(0));
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t t0 = tile * kTile, tv = std::min(kTile, P2 - t0);
        const T* x1 = a.fx2 + b * N * P2 + t0;
        const T* x2 = a.fc2 + b * M2 * P2 + t0;
        const T* sb = a.spatial_bias ? a.spatial_bias + b * K * P2 + t0 : nullptr;
        const TileIO<T> io(tv, P2);
        const int64_t ncols = io.ncols, ld = io.ldi;
        if (io.pack) pack_exemplar_tile(in_buf.get(), x1, x2, sb, N, M2, K, P2, tv, ncols);
        tn_gemm(phi_pk.data(), K, N, x1, ld, M2, x2, ld, sbias.data(), sb, ld, S.get(), kTile,
                ncols, io.read_opts());
        // padding positions attend to nothing
        for (int64_t k = 0; k < K; ++k)
          std::fill(S.get() + k * kTile + tv, S.get() + k * kTile + ncols, ninf);
        online_softmax_tile(S.get(), K, kTile, ncols, m, s, Vl.get(), N, K * W);
        nt_gemm(x1, ld, N, S.get(), kTile, K, ncols, Vl.get(), K * W);
      }
      reduce_lanes(Vl.get(), N, K, Vp.data() + item * N * K, K, 1);
    }
  });

  // Merge the chunk partials of each batch as log-sum-exp, in chunk order. A NaN partial sum
  // (a NaN logit in that chunk) makes the row NaN: V[:, k] and lse[k], never "attends to
  // nothing", which is what a zero sum means.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      bool row_nan = false;
      for (int64_t ci = 0; ci < nc; ++ci) row_nan |= std::isnan(sp[(b * nc + ci) * K + k]);
      if (row_nan) {
        for (int64_t n = 0; n < N; ++n) a.V[(b * N + n) * K + k] = nan;
        a.lse[b * K + k] = nan;
        continue;
      }
      T M = ninf;
      for (int64_t ci = 0; ci < nc; ++ci) M = std::max(M, mp[(b * nc + ci) * K + k]);
      T ssum = T(0);
      std::vector<T> f(nc, T(0));
      if (M > ninf) {
        for (int64_t ci = 0; ci < nc; ++ci) {
          const T mc = mp[(b * nc + ci) * K + k];
          f[ci] = mc > ninf ? std::exp(mc - M) : T(0);
          ssum += f[ci] * sp[(b * nc + ci) * K + k];
        }
      }
      const T inv = std::isnan(ssum) ? nan : ssum > T(0) ? T(1) / ssum : T(0);
      for (int64_t n = 0; n < N; ++n) {
        T v = T(0);
        for (int64_t ci = 0; ci < nc; ++ci) v += f[ci] * Vp[((b * nc + ci) * N + n) * K + k];
        a.V[(b * N + n) * K + k] = v * inv;
      }
      a.lse[b * K + k] = std::isnan(ssum) ? nan : ssum > T(0) ? M + std::log(ssum) : ninf;
    }
  }
}

// Pass 2: out = (V * mask) softmax_k(b), tile by tile over the target; no reductions.
template <typename T>
void msca_fwd_pass2(const FwdArgs<T>& a) {
  const int64_t B = a.B, N = a.N, M1 = a.M1, K = a.K, P1 = a.P1;
  std::vector<T> psi_pk(K * M1), vm_pk(B * N * K);
  pack_tn(psi_pk.data(), K, M1, [&](int64_t r, int64_t c) { return a.psi[r * M1 + c]; });
  for (int64_t b = 0; b < B; ++b)
    pack_tn(vm_pk.data() + b * N * K, N, K, [&](int64_t n, int64_t k) {
      return a.V[(b * N + n) * K + k] * a.mask[b * K + k];
    });
  const int64_t ntiles = ceil_div(P1, kTile);
  const int64_t nc = ntiles > 0 ? chunks_per_batch(ntiles, B) : 1;
  parallel_dynamic(ntiles > 0 ? B * nc : 0, [&](const auto& claim) {
    Scratch<T> S(K * kTile);
    Scratch<T> in_buf((M1 + K) * kTile), tail_out(N * kTile);
    for (int64_t item = claim(); item >= 0; item = claim()) {
      const int64_t b = item / nc, ci = item % nc;
      const int64_t tb = ci * ntiles / nc, te = (ci + 1) * ntiles / nc;
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t t0 = tile * kTile, tv = std::min(kTile, P1 - t0);
        const T* f1 = a.fc1 + b * M1 * P1 + t0;
        const T* cb = a.channel_bias ? a.channel_bias + b * K * P1 + t0 : nullptr;
        const TileIO<T> io(tv, P1);
        const int64_t ncols = io.ncols, ld = io.ldi;
        T* o = io.full ? a.out + b * N * P1 + t0 : tail_out.get();
        if (io.pack) pack_target_tile(in_buf.get(), f1, cb, M1, K, P1, tv, ncols);
        tn_gemm(psi_pk.data(), K, M1, f1, ld, int64_t(0), static_cast<const T*>(nullptr),
                int64_t(0), a.psi_bias, cb, ld, S.get(), kTile, ncols, io.read_opts());
        softmax_over_rows(S.get(), K, kTile, ncols);
        tn_gemm(vm_pk.data() + b * N * K, N, K, S.get(), kTile, int64_t(0),
                static_cast<const T*>(nullptr), int64_t(0), static_cast<const T*>(nullptr),
                static_cast<const T*>(nullptr), int64_t(0), o, io.ldo, ncols, io.write_opts());
        if (!io.full) copy_out(a.out + b * N * P1 + t0, P1, tail_out.get(), kTile, N, tv);
      }
    }
    vec::store_fence();
  });
}

template <typename T>
void msca_forward(const FwdArgs<T>& a) {
  MSCA_TIC(t0);
  msca_fwd_pass1(a);
  MSCA_TOC(t0, "fwd pass1");
  MSCA_TIC(t1);
  msca_fwd_pass2(a);
  MSCA_TOC(t1, "fwd pass2");
}

// ------------------------------------------------------------------------------------------
// Backward

template <typename T>
struct BwdArgs {
  const T* grad_out;      // (B, N, P1)
  const T* fx2;           // (B, N, P2)
  const T* fc2;           // (B, M2, P2)
  const T* fc1;           // (B, M1, P1)
  const T* phi;           // (K, N + M2)
  const T* phi_bias;      // (K)
  const T* psi;           // (K, M1)
  const T* psi_bias;      // (K)
  const T* mask;          // (B, K)
  const T* spatial_bias;  // (B, K, P2) or null
  const T* channel_bias;  // (B, K, P1) or null
  const T* V;             // (B, N, K) un-masked, from the forward
  const T* lse;           // (B, K), from the forward
  T* dfx2;                // (B, N, P2)
  T* dfc2;                // (B, M2, P2)
  T* dfc1;                // (B, M1, P1)
  T* dphi;                // (K, N + M2)
  T* dphi_bias;           // (K)
  T* dpsi;                // (K, M1)
  T* dpsi_bias;           // (K)
  T* dmask;               // (B, K)
  T* dspatial_bias;       // (B, K, P2) or null (not wanted)
  T* dchannel_bias;       // (B, K, P1) or null (not wanted)
  int64_t B, N, M2, M1, K, P2, P1;
};

template <typename T>
void msca_backward(const BwdArgs<T>& a) {
  constexpr int W = Vec<T>::W;
  const int64_t B = a.B, N = a.N, M2 = a.M2, M1 = a.M1, K = a.K, P1 = a.P1, P2 = a.P2;
  const int64_t C = N + M2;

  MSCA_TIC(tA);
  // ---- pass A: target tiles. beta recomputed; dVm, dpsi, dpsi_bias reduced; dfc1 and the
  // channel-bias gradient written tile by tile.
  std::vector<T> psi_pk(K * M1), psiT_pk(M1 * K), vmT_pk(B * K * N);
  pack_tn(psi_pk.data(), K, M1, [&](int64_t r, int64_t c) { return a.psi[r * M1 + c]; });
  pack_tn(psiT_pk.data(), M1, K, [&](int64_t m, int64_t k) { return a.psi[k * M1 + m]; });
  for (int64_t b = 0; b < B; ++b)
    pack_tn(vmT_pk.data() + b * K * N, K, N, [&](int64_t k, int64_t n) {
      return a.V[(b * N + n) * K + k] * a.mask[b * K + k];
    });
  const int64_t ntA = ceil_div(P1, kTile);
  const int64_t ncA = ntA > 0 ? chunks_per_batch(ntA, B) : 1;
  const int64_t itemsA = B * ncA;
  std::vector<T> dVm_p(itemsA * N * K, T(0)), dpsi_p(itemsA * M1 * K, T(0)),
      dpsib_p(itemsA * K, T(0));

  parallel_dynamic(itemsA, [&](const auto& claim) {
    Scratch<T> S(K * kTile), D(K * kTile);
    Scratch<T> l_dvm(N * K * W), l_dpsi(M1 * K * W), l_db(K * W);
    Scratch<T> in_buf((M1 + K + N) * kTile), tail_out(M1 * kTile);
    for (int64_t item = claim(); item >= 0; item = claim()) {
      const int64_t b = item / ncA, ci = item % ncA;
      const int64_t tb = ci * ntA / ncA, te = (ci + 1) * ntA / ncA;
      l_dvm.fill(T(0));
      l_dpsi.fill(T(0));
      l_db.fill(T(0));
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t t0 = tile * kTile, tv = std::min(kTile, P1 - t0);
        const T* f1 = a.fc1 + b * M1 * P1 + t0;
        const T* cb = a.channel_bias ? a.channel_bias + b * K * P1 + t0 : nullptr;
        const T* dO = a.grad_out + b * N * P1 + t0;
        const TileIO<T> io(tv, P1);
        const int64_t ncols = io.ncols, ld = io.ldi;
        T* df1 = io.full ? a.dfc1 + b * M1 * P1 + t0 : tail_out.get();
        if (io.pack) {
          pack_target_tile(in_buf.get(), f1, cb, M1, K, P1, tv, ncols);
          copy_in(in_buf.get() + (M1 + K) * kTile, kTile, dO, P1, N, tv, ncols);
          dO = in_buf.get() + (M1 + K) * kTile;
        }
        const TnOpts pf = io.read_opts(), st = io.write_opts();
        // beta
        tn_gemm(psi_pk.data(), K, M1, f1, ld, int64_t(0), static_cast<const T*>(nullptr),
                int64_t(0), a.psi_bias, cb, ld, S.get(), kTile, ncols, pf);
        softmax_over_rows(S.get(), K, kTile, ncols);
        // dbeta = Vm^T dO (before dVm: unpacked, it streams dO and prefetches the next tile)
        tn_gemm(vmT_pk.data() + b * K * N, K, N, dO, ld, int64_t(0),
                static_cast<const T*>(nullptr), int64_t(0), static_cast<const T*>(nullptr),
                static_cast<const T*>(nullptr), int64_t(0), D.get(), kTile, ncols, pf);
        // dVm[n][k] += sum_t dO[n][t] beta[k][t]
        nt_gemm(dO, ld, N, S.get(), kTile, K, ncols, l_dvm.get(), K * W);
        // db = beta * (dbeta - sum_k beta dbeta)
        softmax_over_rows_bwd(S.get(), D.get(), K, kTile, ncols);
        if (a.dchannel_bias) copy_out(a.dchannel_bias + b * K * P1 + t0, P1, D.get(), kTile, K, tv);
        // dfc1 = psi^T db
        tn_gemm(psiT_pk.data(), M1, K, D.get(), kTile, int64_t(0), static_cast<const T*>(nullptr),
                int64_t(0), static_cast<const T*>(nullptr), static_cast<const T*>(nullptr),
                int64_t(0), df1, io.ldo, ncols, st);
        if (!io.full) copy_out(a.dfc1 + b * M1 * P1 + t0, P1, tail_out.get(), kTile, M1, tv);
        // dpsi^T[m][k] += sum_t fc1[m][t] db[k][t]; dpsi_bias[k] += sum_t db[k][t]
        nt_gemm(f1, ld, M1, D.get(), kTile, K, ncols, l_dpsi.get(), K * W);
        row_sums_acc(D.get(), K, kTile, ncols, l_db.get());
      }
      reduce_lanes(l_dvm.get(), N, K, dVm_p.data() + item * N * K, K, 1);
      reduce_lanes(l_dpsi.get(), M1, K, dpsi_p.data() + item * M1 * K, K, 1);
      reduce_lanes(l_db.get(), 1, K, dpsib_p.data() + item * K, K, 1);
    }
    vec::store_fence();
  });

  MSCA_TOC(tA, "bwd passA");
  MSCA_TIC(tB);
  // ---- between the passes: dmask, dV = dVm * mask, c[k] = sum_n dV V. Small, serial.
  std::vector<T> dV(B * N * K), cvec(B * K);
  for (int64_t k = 0; k < K; ++k) {
    a.dpsi_bias[k] = T(0);
    for (int64_t m = 0; m < M1; ++m) a.dpsi[k * M1 + m] = T(0);
  }
  for (int64_t item = 0; item < itemsA; ++item)
    for (int64_t k = 0; k < K; ++k) {
      a.dpsi_bias[k] += dpsib_p[item * K + k];
      for (int64_t m = 0; m < M1; ++m) a.dpsi[k * M1 + m] += dpsi_p[(item * M1 + m) * K + k];
    }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < K; ++k) {
      T dm = T(0), ck = T(0);
      const T mk = a.mask[b * K + k];
      for (int64_t n = 0; n < N; ++n) {
        T g = T(0);
        for (int64_t ci = 0; ci < ncA; ++ci) g += dVm_p[((b * ncA + ci) * N + n) * K + k];
        const T v = a.V[(b * N + n) * K + k];
        dm += g * v;
        const T dv = g * mk;
        dV[(b * N + n) * K + k] = dv;
        ck += dv * v;
      }
      a.dmask[b * K + k] = dm;
      cvec[b * K + k] = ck;
    }
  }

  // ---- pass B: exemplar tiles. alpha recomputed from lse; dphi, dphi_bias reduced; dfx2,
  // dfc2 and the spatial-bias gradient written tile by tile.
  std::vector<T> phi_pk(K * C), dvT_pk(B * K * N), g2_pk(B * N * 2 * K), phicT_pk(M2 * K);
  pack_tn(phi_pk.data(), K, C, [&](int64_t r, int64_t c) { return a.phi[r * C + c]; });
  const std::vector<T> sbias = spatial_logit_bias(a.phi_bias, K);
  pack_tn(phicT_pk.data(), M2, K, [&](int64_t m, int64_t k) { return a.phi[k * C + N + m]; });
  for (int64_t b = 0; b < B; ++b) {
    pack_tn(dvT_pk.data() + b * K * N, K, N,
            [&](int64_t k, int64_t n) { return dV[(b * N + n) * K + k]; });
    // dfx2 = [dV | phi_x^T] [alpha; da]: one tn product over 2K rows of scratch
    pack_tn(g2_pk.data() + b * N * 2 * K, N, 2 * K, [&](int64_t n, int64_t c) {
      return c < K ? dV[(b * N + n) * K + c] : a.phi[(c - K) * C + n];
    });
  }
  const int64_t ntB = ceil_div(P2, kTile);
  const int64_t ncB = ntB > 0 ? chunks_per_batch(ntB, B) : 1;
  const int64_t itemsB = B * ncB;
  std::vector<T> dphi_p(itemsB * C * K, T(0)), dphib_p(itemsB * K, T(0));
  const T ninf = -std::numeric_limits<T>::infinity();

  parallel_dynamic(itemsB, [&](const auto& claim) {
    Scratch<T> AD(2 * K * kTile);  // rows 0..K-1: alpha, rows K..2K-1: dalpha then da
    Scratch<T> l_dphi(C * K * W), l_da(K * W);
    Scratch<T> in_buf((C + K) * kTile), tail_out(C * kTile);
    for (int64_t item = claim(); item >= 0; item = claim()) {
      const int64_t b = item / ncB, ci = item % ncB;
      const int64_t tb = ci * ntB / ncB, te = (ci + 1) * ntB / ncB;
      const T* lse = a.lse + b * K;
      const T* cv = cvec.data() + b * K;
      l_dphi.fill(T(0));
      l_da.fill(T(0));
      T* alpha = AD.get();
      T* D = AD.get() + K * kTile;
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t t0 = tile * kTile, tv = std::min(kTile, P2 - t0);
        const T* x1 = a.fx2 + b * N * P2 + t0;
        const T* x2 = a.fc2 + b * M2 * P2 + t0;
        const T* sb = a.spatial_bias ? a.spatial_bias + b * K * P2 + t0 : nullptr;
        const TileIO<T> io(tv, P2);
        const int64_t ncols = io.ncols, ld = io.ldi;
        T* dx1 = io.full ? a.dfx2 + b * N * P2 + t0 : tail_out.get();
        T* dx2 = io.full ? a.dfc2 + b * M2 * P2 + t0 : tail_out.get() + N * kTile;
        if (io.pack) pack_exemplar_tile(in_buf.get(), x1, x2, sb, N, M2, K, P2, tv, ncols);
        // alpha = exp(a - lse), padding positions forced to 0
        const TnOpts pf = io.read_opts(), st = io.write_opts();
        tn_gemm(phi_pk.data(), K, N, x1, ld, M2, x2, ld, sbias.data(), sb, ld, alpha, kTile,
                ncols, pf);
        for (int64_t k = 0; k < K; ++k)
          std::fill(alpha + k * kTile + tv, alpha + k * kTile + ncols, ninf);
        exp_minus_lse(alpha, K, kTile, ncols, lse);
        // dalpha = dV^T fx2, then da = alpha * (dalpha - c)
        tn_gemm(dvT_pk.data() + b * K * N, K, N, x1, ld, int64_t(0),
                static_cast<const T*>(nullptr), int64_t(0), static_cast<const T*>(nullptr),
                static_cast<const T*>(nullptr), int64_t(0), D, kTile, ncols);
        spatial_softmax_bwd(alpha, D, K, kTile, ncols, cv);
        if (a.dspatial_bias) copy_out(a.dspatial_bias + b * K * P2 + t0, P2, D, kTile, K, tv);
        // dfx2 = dV alpha + phi_x^T da ; dfc2 = phi_c^T da
        tn_gemm(g2_pk.data() + b * N * 2 * K, N, 2 * K, AD.get(), kTile, int64_t(0),
                static_cast<const T*>(nullptr), int64_t(0), static_cast<const T*>(nullptr),
                static_cast<const T*>(nullptr), int64_t(0), dx1, io.ldo, ncols, st);
        tn_gemm(phicT_pk.data(), M2, K, D, kTile, int64_t(0), static_cast<const T*>(nullptr),
                int64_t(0), static_cast<const T*>(nullptr), static_cast<const T*>(nullptr),
                int64_t(0), dx2, io.ldo, ncols, st);
        if (!io.full) {
          copy_out(a.dfx2 + b * N * P2 + t0, P2, tail_out.get(), kTile, N, tv);
          copy_out(a.dfc2 + b * M2 * P2 + t0, P2, tail_out.get() + N * kTile, kTile, M2, tv);
        }
        // dphi^T[c][k] += sum_j [fx2; fc2][c][j] da[k][j] ; dphi_bias[k] += sum_j da[k][j]
        nt_gemm(x1, ld, N, D, kTile, K, ncols, l_dphi.get(), K * W);
        nt_gemm(x2, ld, M2, D, kTile, K, ncols, l_dphi.get() + N * K * W, K * W);
        row_sums_acc(D, K, kTile, ncols, l_da.get());
      }
      reduce_lanes(l_dphi.get(), C, K, dphi_p.data() + item * C * K, K, 1);
      reduce_lanes(l_da.get(), 1, K, dphib_p.data() + item * K, K, 1);
    }
    vec::store_fence();
  });

  for (int64_t k = 0; k < K; ++k) {
    a.dphi_bias[k] = T(0);
    for (int64_t c = 0; c < C; ++c) a.dphi[k * C + c] = T(0);
  }
  for (int64_t item = 0; item < itemsB; ++item)
    for (int64_t k = 0; k < K; ++k) {
      a.dphi_bias[k] += dphib_p[item * K + k];
      for (int64_t c = 0; c < C; ++c) a.dphi[k * C + c] += dphi_p[(item * C + c) * K + k];
    }
  MSCA_TOC(tB, "bwd passB");
}

}  // namespace msca_cpu
