// Raw loops of the fused SPADE denormalisation (docs/design.md section 3) on contiguous (B,C,P)
// buffers. No ATen types here: spade_cpu.cpp checks arguments, allocates and dispatches.
//
// Work decomposition (shared by all passes): every row (b,c) of P elements is cut into
// segments of a fixed length kSegment, and one work item is one (row, segment). Items are
// independent, so at::parallel_for keeps every core busy even when B*C is small (B=1 and a
// few channels, or one huge channel in batch mode). A reduction writes one partial per item;
// partials are then merged per group (channel in batch mode, row in instance mode) in a fixed
// order. Because the segmentation depends only on the sizes, results are bitwise identical for
// any thread count.
//
// Accuracy: sums are accumulated in T inside short chunks (kChunk elements, resident in L1)
// and carried in double across chunks, segments and rows. Statistics use a per-chunk
// two-pass (chunk mean, then sum of deviations and squared deviations around it, with the
// classical correction term) merged with Chan's parallel formula, so nothing cancels when
// |mean| >> std. The mean is applied as a float hi+lo pair so that x - mean stays exact to
// working precision even though x and mean are large.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace msca_kernels {
namespace spade_cpu {

// Segment length: a work item (64 KiB of float32 per input) is large enough to amortise the
// per-item bookkeeping and small enough that a (1, 64, 512*512) problem yields ~1000 items.
constexpr int64_t kSegment = 16384;
// Chunk length: the two-pass statistics re-read one chunk, which must still be in L1.
constexpr int64_t kChunk = 2048;
// Independent accumulators per reduction: several vector registers, so the loop is limited by
// loads rather than by the latency of one add chain (128 bytes = 4 AVX2 or 2 AVX-512 vectors).
template <typename T>
constexpr int lanes() {
  return static_cast<int>(128 / sizeof(T));
}

struct Moments {
  double n = 0, mean = 0, m2 = 0;  // count, mean, sum of squared deviations
};

// Chan et al. pairwise update: exact in exact arithmetic, stable for any mean offset.
inline void merge(Moments& a, const Moments& b) {
  if (b.n == 0) return;
  if (a.n == 0) {
    a = b;
    return;
  }
  const double n = a.n + b.n;
  const double delta = b.mean - a.mean;
  a.mean += delta * (b.n / n);
  a.m2 += b.m2 + delta * delta * (a.n * b.n / n);
  a.n = n;
}

// Sum of p[0..len) with lanes<T>() independent partial sums (len <= kChunk).
template <typename T>
inline T chunk_sum(const T* __restrict p, int64_t len) {
  constexpr int W = lanes<T>();
  T acc[W] = {};
  int64_t i = 0;
  for (; i + W <= len; i += W) {
#pragma omp simd
    for (int j = 0; j < W; ++j) acc[j] += p[i + j];
  }
  T s = 0;
  for (; i < len; ++i) s += p[i];
  for (int j = 0; j < W; ++j) s += acc[j];
  return s;
}

// Moments of one segment: per chunk, mean estimate cm from a first pass, then sums of d = x-cm
// and d*d from a second pass over the same (L1-resident) chunk. The first-order sum corrects
// both the mean (cm + s1/L) and m2 (s2 - s1^2/L) for the rounding of cm.
template <typename T>
Moments segment_moments(const T* __restrict x, int64_t len) {
  constexpr int W = lanes<T>();
  Moments acc;
  for (int64_t c0 = 0; c0 < len; c0 += kChunk) {
    const int64_t L = std::min(kChunk, len - c0);
    const T* __restrict p = x + c0;
    const T cm = chunk_sum(p, L) / static_cast<T>(L);
    T a1[W] = {}, a2[W] = {};
    int64_t i = 0;
    for (; i + W <= L; i += W) {
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        const T d = p[i + j] - cm;
        a1[j] += d;
        a2[j] += d * d;
      }
    }
    T s1 = 0, s2 = 0;
    for (; i < L; ++i) {
      const T d = p[i] - cm;
      s1 += d;
      s2 += d * d;
    }
    for (int j = 0; j < W; ++j) {
      s1 += a1[j];
      s2 += a2[j];
    }
    Moments m;
    m.n = static_cast<double>(L);
    m.mean = static_cast<double>(cm) + static_cast<double>(s1) / m.n;
    m.m2 = std::max(0.0, static_cast<double>(s2) - static_cast<double>(s1) * s1 / m.n);
    merge(acc, m);
  }
  return acc;
}

// Iteration space shared by all passes.
struct Layout {
  int64_t B, C, P;
  bool instance;
  int64_t nseg() const { return P == 0 ? 0 : (P + kSegment - 1) / kSegment; }
  int64_t items() const { return B * C * nseg(); }
  int64_t groups() const { return instance ? B * C : C; }
  int64_t group_of_row(int64_t row) const { return instance ? row : row % C; }
  // Elements per group.
  int64_t group_size() const { return instance ? P : B * P; }
  // Grain in items so that one task covers at least ~64K elements.
  int64_t grain() const {
    const int64_t seg = std::max<int64_t>(1, std::min(P, kSegment));
    return std::max<int64_t>(1, 65536 / seg);
  }
};

// Row, offset in the row and length of work item it.
struct Item {
  int64_t row, off, len;
};
inline Item item_at(const Layout& l, int64_t it) {
  const int64_t ns = l.nseg();
  const int64_t off = (it % ns) * kSegment;
  return {it / ns, off, std::min(kSegment, l.P - off)};
}

// Visits the items of group g in a fixed order: f(item index). Every reduction merges its
// partials in this order, whichever schedule computed them.
template <typename F>
inline void for_group_items(const Layout& l, int64_t g, F&& f) {
  const int64_t ns = l.nseg();
  if (l.instance) {
    for (int64_t s = 0; s < ns; ++s) f(g * ns + s);
  } else {
    for (int64_t b = 0; b < l.B; ++b)
      for (int64_t s = 0; s < ns; ++s) f((b * l.C + g) * ns + s);
  }
}

// Bytes a group's reduction reads, below which the reduction and the elementwise pass run back
// to back per group: the second pass then re-reads the group from L2/L3 rather than DRAM
// (one full read of x saved in the forward, of dy, gamma and x in the backward). Sized for a
// slice of a shared L3, leaving room for the other thread's group and the outputs in flight.
constexpr int64_t kGroupCacheBytes = int64_t(4) << 20;

// Whether to schedule whole groups per task: the group's working set must fit the budget and
// there must be enough groups for every thread to get several (else the per-item schedule,
// which splits groups across threads, balances better). Either schedule gives the same bits.
inline bool group_schedule(const Layout& l, int64_t bytes_per_elem) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  return l.groups() >= 4 * threads && l.group_size() * bytes_per_elem <= kGroupCacheBytes;
}

// Outputs at least this large bypass the caches (non-temporal stores): they cannot stay cached
// until their consumer runs anyway, and a normal store would first read every line (read for
// ownership), a third more memory traffic in the elementwise passes. Smaller outputs are stored
// normally so that the next op finds them in cache.
constexpr int64_t kStreamBytes = int64_t(16) << 20;

template <typename T>
inline bool stream_outputs(const Layout& l) {
  return l.B * l.C * l.P * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
}

// Stores one 64-byte line src to the 64-byte aligned dst, bypassing the caches.
template <typename T>
inline void store_line_nt(T* dst, const T* src) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4)
    _mm512_stream_ps(reinterpret_cast<float*>(dst), _mm512_loadu_ps(reinterpret_cast<const float*>(src)));
  else
    _mm512_stream_pd(reinterpret_cast<double*>(dst), _mm512_loadu_pd(reinterpret_cast<const double*>(src)));
#elif defined(__AVX__)
  if constexpr (sizeof(T) == 4) {
    _mm256_stream_ps(reinterpret_cast<float*>(dst), _mm256_loadu_ps(reinterpret_cast<const float*>(src)));
    _mm256_stream_ps(reinterpret_cast<float*>(dst) + 8, _mm256_loadu_ps(reinterpret_cast<const float*>(src) + 8));
  } else {
    _mm256_stream_pd(reinterpret_cast<double*>(dst), _mm256_loadu_pd(reinterpret_cast<const double*>(src)));
    _mm256_stream_pd(reinterpret_cast<double*>(dst) + 4, _mm256_loadu_pd(reinterpret_cast<const double*>(src) + 4));
  }
#else
  for (int j = 0; j < static_cast<int>(64 / sizeof(T)); ++j) dst[j] = src[j];
#endif
}

// Non-temporal stores are weakly ordered: fence before another thread may read the data.
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Elementwise loop over [0, len) writing NOut (1 or 2) outputs: f(i, o1, o2) computes element
// i. With nt, the 64-byte aligned body is written with streaming stores (both outputs must
// share the same alignment, else the plain loop runs); the head and tail are plain.
template <int NOut, typename T, typename F>
inline void elementwise(int64_t len, T* __restrict o1, T* __restrict o2, bool nt, F&& f) {
  constexpr int W = static_cast<int>(64 / sizeof(T));
  int64_t i = 0;
  if (nt) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(o1) % 64;
    if (a % sizeof(T) == 0 && (NOut == 1 || reinterpret_cast<uintptr_t>(o2) % 64 == a)) {
      const int64_t head = std::min<int64_t>(len, static_cast<int64_t>((64 - a) % 64 / sizeof(T)));
      for (; i < head; ++i) {
        T v1, v2;
        f(i, v1, v2);
        o1[i] = v1;
        if (NOut == 2) o2[i] = v2;
      }
      for (; i + W <= len; i += W) {
        alignas(64) T t1[W];
        alignas(64) T t2[W];
#pragma omp simd
        for (int j = 0; j < W; ++j) f(i + j, t1[j], t2[j]);
        store_line_nt(o1 + i, t1);
        if (NOut == 2) store_line_nt(o2 + i, t2);
      }
      stream_fence();
    }
  }
#pragma omp simd
  for (int64_t k = i; k < len; ++k) {
    T v1, v2;
    f(k, v1, v2);
    o1[k] = v1;
    if (NOut == 2) o2[k] = v2;
  }
}

// Splits a double into T hi + lo with hi + lo == v to about twice T's precision. A value
// that is not finite in T (inf, NaN, or beyond T's range) is all hi: lo = inf - inf would turn
// a mean of +-inf into NaN where the reference gives +-inf.
template <typename T>
inline void split(double v, T& hi, T& lo) {
  hi = static_cast<T>(v);
  lo = std::isfinite(hi) ? static_cast<T>(v - static_cast<double>(hi)) : T(0);
}

// out = (x - mean) * rstd * (1 + gamma) + beta on one item.
template <typename T>
inline void apply_forward_item(const T* x, const T* gamma, const T* beta, T* out,
                               const Layout& l, const Item& t, double mean, double rstd) {
  T mh, ml;
  split(mean, mh, ml);
  const T r = static_cast<T>(rstd);
  const int64_t base = t.row * l.P + t.off;
  const T* __restrict xp = x + base;
  const T* __restrict gp = gamma + base;
  const T* __restrict bp = beta + base;
  elementwise<1>(t.len, out + base, static_cast<T*>(nullptr), stream_outputs<T>(l),
                 [&](int64_t i, T& o, T&) {
                   // the reference's xhat * (1 + gamma) + beta: xhat + xhat * gamma would
                   // give inf - inf = NaN for an infinite xhat and gamma < 0
                   const T xh = ((xp[i] - mh) - ml) * r;
                   o = xh * (T(1) + gp[i]) + bp[i];
                 });
}

// Statistics of a group from its merged moments: biased variance, rstd = 1/sqrt(var + eps).
template <typename A>
inline void finish_stats(const Moments& m, double eps, double& mean_d, A& mean, A& rstd) {
  double mu, r;
  if (m.n == 0) {  // empty group: undefined statistics, like torch.mean of nothing
    mu = r = std::numeric_limits<double>::quiet_NaN();
  } else {
    mu = m.mean;
    r = 1.0 / std::sqrt(m.m2 / m.n + eps);
  }
  mean_d = mu;
  mean = static_cast<A>(mu);
  rstd = static_cast<A>(r);
}

// Forward. With compute_stats, batch or instance statistics of x are written to mean/rstd
// (accumulation type A, one per group); otherwise mean/rstd are read as given.
template <typename T, typename A>
void forward(const T* x, const T* gamma, const T* beta, T* out, const Layout& l, double eps,
             bool compute_stats, A* mean, A* rstd) {
  const int64_t G = l.groups();
  // Double copy of the mean: the apply pass splits it into a hi+lo pair of T.
  std::vector<double> mean_d(static_cast<size_t>(G));
  if (!compute_stats) {
    for (int64_t g = 0; g < G; ++g) mean_d[g] = static_cast<double>(mean[g]);
  } else if (group_schedule(l, sizeof(T))) {
    at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        Moments m;
        for_group_items(l, g, [&](int64_t it) {
          const Item t = item_at(l, it);
          merge(m, segment_moments(x + t.row * l.P + t.off, t.len));
        });
        finish_stats(m, eps, mean_d[g], mean[g], rstd[g]);
        for_group_items(l, g, [&](int64_t it) {
          apply_forward_item(x, gamma, beta, out, l, item_at(l, it), mean_d[g],
                             static_cast<double>(rstd[g]));
        });
      }
    });
    return;
  } else {
    std::vector<Moments> part(static_cast<size_t>(l.items()));
    at::parallel_for(0, l.items(), l.grain(), [&](int64_t i0, int64_t i1) {
      for (int64_t it = i0; it < i1; ++it) {
        const Item t = item_at(l, it);
        part[it] = segment_moments(x + t.row * l.P + t.off, t.len);
      }
    });
    const int64_t per_group = std::max<int64_t>(1, l.items() / std::max<int64_t>(1, G));
    at::parallel_for(0, G, std::max<int64_t>(1, 4096 / per_group), [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        Moments m;
        for_group_items(l, g, [&](int64_t it) { merge(m, part[it]); });
        finish_stats(m, eps, mean_d[g], mean[g], rstd[g]);
      }
    });
  }
  at::parallel_for(0, l.items(), l.grain(), [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; ++it) {
      const Item t = item_at(l, it);
      const int64_t g = l.group_of_row(t.row);
      apply_forward_item(x, gamma, beta, out, l, t, mean_d[g], static_cast<double>(rstd[g]));
    }
  });
}

struct BwdSums {
  double sg = 0, sgd = 0, sd = 0;  // sum g, sum g*d, sum d with d = x - mean (float mean)
  void add(const BwdSums& o) {
    sg += o.sg;
    sgd += o.sgd;
    sd += o.sd;
  }
};

// Reduction pass of the backward for one segment, with g = dy*(1+gamma), d = x - m.
template <typename T>
BwdSums segment_bwd_sums(const T* __restrict dy, const T* __restrict gamma,
                         const T* __restrict x, int64_t len, T m) {
  constexpr int W = lanes<T>();
  BwdSums acc;
  for (int64_t c0 = 0; c0 < len; c0 += kChunk) {
    const int64_t L = std::min(kChunk, len - c0);
    const T* __restrict dp = dy + c0;
    const T* __restrict gp = gamma + c0;
    const T* __restrict xp = x + c0;
    T ag[W] = {}, agd[W] = {}, ad[W] = {};
    int64_t i = 0;
    for (; i + W <= L; i += W) {
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        const T dv = dp[i + j];
        const T g = dv + dv * gp[i + j];
        const T d = xp[i + j] - m;
        ag[j] += g;
        agd[j] += g * d;
        ad[j] += d;
      }
    }
    T sg = 0, sgd = 0, sd = 0;
    for (; i < L; ++i) {
      const T dv = dp[i];
      const T g = dv + dv * gp[i];
      const T d = xp[i] - m;
      sg += g;
      sgd += g * d;
      sd += d;
    }
    for (int j = 0; j < W; ++j) {
      sg += ag[j];
      sgd += agd[j];
      sd += ad[j];
    }
    acc.sg += sg;
    acc.sgd += sgd;
    acc.sd += sd;
  }
  return acc;
}

// Per-group constants of the elementwise backward pass:
// dx = g*r + k0 + xhat*k1, xhat = ((x - mh) - ml) * r.
struct BwdCoef {
  double mean, rstd, k0, k1;
};

// With batch statistics, dx = rstd * (g - mean(g) - xhat * mean(g*xhat)). The saved mean is
// the forward's double mean rounded to A; d = x - mean_A is summed too, and its average is
// the correction back to the exact mean (the one the forward applied), so xhat and both
// gradients stay accurate when |mean| >> std.
inline BwdCoef batch_coef(const BwdSums& s, double n, double mean_used, double rstd) {
  BwdCoef c;
  c.rstd = rstd;
  if (n == 0) {
    c.mean = mean_used;
    c.k0 = c.k1 = 0;
    return c;
  }
  const double corr = s.sd / n;
  c.mean = mean_used + corr;
  const double mg = s.sg / n;                           // mean(g)
  const double mgx = rstd * (s.sgd - corr * s.sg) / n;  // mean(g * xhat)
  c.k0 = -rstd * mg;
  c.k1 = -rstd * mgx;
  return c;
}

template <typename T, bool kBatchStats>
inline void apply_backward_item(const T* dy, const T* x, const T* gamma, T* dx, T* dgamma,
                                const Layout& l, const Item& t, const BwdCoef& c) {
  T mh, ml;
  split(c.mean, mh, ml);
  const T r = static_cast<T>(c.rstd);
  const T k0 = static_cast<T>(c.k0), k1 = static_cast<T>(c.k1);
  const int64_t base = t.row * l.P + t.off;
  const T* __restrict dp = dy + base;
  const T* __restrict xp = x + base;
  const T* __restrict gp = gamma + base;
  elementwise<2>(t.len, dx + base, dgamma + base, stream_outputs<T>(l),
                 [&](int64_t i, T& dxo, T& dgo) {
                   const T dv = dp[i];
                   const T g = dv + dv * gp[i];
                   const T xh = ((xp[i] - mh) - ml) * r;
                   dgo = dv * xh;
                   if (kBatchStats)
                     dxo = g * r + k0 + xh * k1;
                   else
                     dxo = g * r;
                 });
}

template <typename T, bool kBatchStats>
void apply_backward(const T* dy, const T* x, const T* gamma, T* dx, T* dgamma, const Layout& l,
                    const BwdCoef* coef) {
  at::parallel_for(0, l.items(), l.grain(), [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; ++it) {
      const Item t = item_at(l, it);
      apply_backward_item<T, kBatchStats>(dy, x, gamma, dx, dgamma, l, t,
                                          coef[l.group_of_row(t.row)]);
    }
  });
}

// Full backward. mean/rstd (accumulation type A, one per group) are those of the forward;
// batch_stats says whether they were computed from x (then the gradient flows through them).
template <typename T, typename A>
void backward(const T* dy, const T* x, const T* gamma, const A* mean, const A* rstd, T* dx,
              T* dgamma, const Layout& l, bool batch_stats) {
  const int64_t G = l.groups();
  std::vector<BwdCoef> coef(static_cast<size_t>(G));
  if (!batch_stats) {
    for (int64_t g = 0; g < G; ++g)
      coef[g] = {static_cast<double>(mean[g]), static_cast<double>(rstd[g]), 0.0, 0.0};
    apply_backward<T, false>(dy, x, gamma, dx, dgamma, l, coef.data());
    return;
  }
  const double n = static_cast<double>(l.group_size());
  auto item_sums = [&](int64_t it) {
    const Item t = item_at(l, it);
    const int64_t base = t.row * l.P + t.off;
    return segment_bwd_sums(dy + base, gamma + base, x + base, t.len,
                            static_cast<T>(mean[l.group_of_row(t.row)]));
  };
  // The float mean the sums were taken around, as a double.
  auto mean_used = [&](int64_t g) {
    return static_cast<double>(static_cast<T>(mean[g]));
  };
  if (group_schedule(l, 3 * sizeof(T))) {
    at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        BwdSums s;
        for_group_items(l, g, [&](int64_t it) { s.add(item_sums(it)); });
        const BwdCoef c = batch_coef(s, n, mean_used(g), static_cast<double>(rstd[g]));
        for_group_items(l, g, [&](int64_t it) {
          apply_backward_item<T, true>(dy, x, gamma, dx, dgamma, l, item_at(l, it), c);
        });
      }
    });
    return;
  }
  std::vector<BwdSums> part(static_cast<size_t>(l.items()));
  at::parallel_for(0, l.items(), l.grain(), [&](int64_t i0, int64_t i1) {
    for (int64_t it = i0; it < i1; ++it) part[it] = item_sums(it);
  });
  for (int64_t g = 0; g < G; ++g) {
    BwdSums s;
    for_group_items(l, g, [&](int64_t it) { s.add(part[it]); });
    coef[g] = batch_coef(s, n, mean_used(g), static_cast<double>(rstd[g]));
  }
  apply_backward<T, true>(dy, x, gamma, dx, dgamma, l, coef.data());
}

}  // namespace spade_cpu
}  // namespace msca_kernels
