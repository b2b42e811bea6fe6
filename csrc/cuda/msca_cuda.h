// Host-callable launchers of the raw MSCA CUDA kernels (docs/design.md section 2). Pointers, sizes
// and a stream only: no torch types, so this header is included both by the kernels
// (msca_cuda_kernels.cu, compiled by nvcc alone in `make cuda-check`) and by the thin torch
// binding (msca_cuda_bindings.cpp, compiled by the host compiler).
//
// T is float, __half, __nv_bfloat16 (float accumulation; V, lse and the workspace are float)
// or double (double throughout). All tensors are contiguous with the (B, C, P) flattening of
// csrc/ops.cpp. Every launcher returns the first CUDA error, or cudaErrorInvalidValue for
// sizes the kernels do not support (K > kMaxK, a grid dimension over its limit).
//
// Determinism: no floating-point atomics anywhere. Every reduction over positions is split
// into per-block partials (written to the caller's workspace, one slot per block) that a
// second kernel sums in a fixed order; inside a block, sums run in a fixed thread order. The
// split count depends only on the sizes and the device's multiprocessor count, so results are
// bitwise reproducible on a given GPU (and may differ in the last bits between GPU models).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace msca_cuda {

// Largest K (attention maps) the kernels accept; the paper uses 8 and 16.
constexpr int64_t kMaxK = 64;

struct MscaDims {
  int64_t B, N, M2, M1, K, P2, P1;
};

template <typename T, typename A>
struct MscaFwdArgs {
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
  A* V;                   // (B, N, K) un-masked
  A* lse;                 // (B, K)
};

template <typename T, typename A>
struct MscaBwdArgs {
  const T* grad_out;      // (B, N, P1)
  const T* fx2;
  const T* fc2;
  const T* fc1;
  const T* phi;
  const T* phi_bias;
  const T* psi;
  const T* psi_bias;
  const T* mask;
  const T* spatial_bias;  // or null
  const T* channel_bias;  // or null
  const A* V;             // (B, N, K) from the forward
  const A* lse;           // (B, K) from the forward
  T* dfx2;
  T* dfc2;
  T* dfc1;
  T* dphi;
  T* dphi_bias;
  T* dpsi;
  T* dpsi_bias;
  T* dmask;
  T* dspatial_bias;       // (B, K, P2) or null (not wanted)
  T* dchannel_bias;       // (B, K, P1) or null (not wanted)
};

// Dynamic shared memory per block, in bytes, of the larger tile kernel of the forward
// (backward) pass for K maps and an accumulation type of acc_size bytes. Above 48 KiB the
// launchers opt in; the device's opt-in maximum (cudaDevAttrMaxSharedMemoryPerBlockOptin) is
// 227 KiB on sm_90, 163 KiB on sm_80, 99 KiB on sm_86/89/120.
size_t msca_smem_bytes(int64_t K, size_t acc_size, bool backward);
// The largest K (at most kMaxK) whose forward (backward) kernels fit in smem_limit bytes per
// block; 0 if none does.
int64_t msca_max_k(size_t acc_size, size_t smem_limit, bool backward);
// "" if the kernels for K maps fit in smem_limit bytes per block; otherwise a message naming
// phi_weight's K, the bytes needed, the limit and the largest K that fits (the torch binding
// raises it before launching; the launchers alone return cudaErrorInvalidValue).
std::string msca_smem_check(int64_t K, size_t acc_size, size_t smem_limit, bool backward);
// The check before the forward's launches: the forward's kernels, and the backward's as well
// when a backward will follow (the binding passes whether autograd records this call), so that
// training that cannot run its backward stops at its first forward, not after it. "" if every
// pass checked fits; otherwise msca_smem_check's message for the first that does not.
std::string msca_fwd_smem_check(int64_t K, size_t acc_size, size_t smem_limit,
                                bool backward_follows);

// Workspace in bytes (any 256-byte aligned device buffer; contents need not be initialised).
size_t msca_fwd_workspace_bytes(const MscaDims& d, int sm_count, size_t acc_size);
size_t msca_bwd_workspace_bytes(const MscaDims& d, int sm_count, size_t acc_size);

template <typename T, typename A>
cudaError_t msca_fwd(const MscaFwdArgs<T, A>& a, const MscaDims& d, void* workspace,
                     int sm_count, cudaStream_t stream);
template <typename T, typename A>
cudaError_t msca_bwd(const MscaBwdArgs<T, A>& a, const MscaDims& d, void* workspace,
                     int sm_count, cudaStream_t stream);

}  // namespace msca_cuda
