// Host-callable launchers of the raw SPADE CUDA kernels (docs/design.md section 3). Pointers, sizes
// and a stream only (no torch types): included by spade_cuda_kernels.cu and by the torch
// binding spade_cuda_bindings.cpp.
//
// x, gamma, beta, dy, out, dx, dgamma: contiguous (B, C, P). Groups: batch mode one per
// channel over (B, P), instance mode one per (b, c) over P; mean and rstd hold one value per
// group in the accumulation type A (float for float/half/bfloat16, double for double).
// Determinism: per-segment partials (fixed segmentation of every row, independent of the GPU)
// merged in a fixed order; no atomics. Results are bitwise reproducible.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace msca_cuda {

struct SpadeDims {
  int64_t B, C, P;
  bool instance;
};

size_t spade_workspace_bytes(const SpadeDims& d, size_t acc_size);

// out = (x - mean) * rstd * (1 + gamma) + beta. compute_stats: mean/rstd are computed from x
// (biased variance, Welford per thread, Chan merges) and written; otherwise they are read.
template <typename T, typename A>
cudaError_t spade_fwd(const T* x, const T* gamma, const T* beta, T* out, A* mean, A* rstd,
                      bool compute_stats, double eps, const SpadeDims& d, void* workspace,
                      cudaStream_t stream);

// dx and dgamma = dy * xhat (dbeta is dy). batch_stats: mean/rstd came from x, so the gradient
// flows through them (one reduction pass, then the elementwise pass).
template <typename T, typename A>
cudaError_t spade_bwd(const T* dy, const T* x, const T* gamma, const A* mean, const A* rstd,
                      T* dx, T* dgamma, bool batch_stats, const SpadeDims& d, void* workspace,
                      cudaStream_t stream);

}  // namespace msca_cuda
