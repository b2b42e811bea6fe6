// C entry points for tests/cuda_emu/emu.py: the launchers of csrc/cuda (msca_cuda.h,
// spade_cuda.h) on raw host pointers, as the torch bindings call them on device pointers. The
// workspace is allocated here and filled with NaN bytes: the launchers promise that its contents
// need not be initialised.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "msca_cuda.h"
#include "spade_cuda.h"

namespace {

// dtype codes shared with emu.py
enum Dtype { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

struct Workspace {
  void* p = nullptr;
  explicit Workspace(size_t bytes) {
    p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    std::memset(p, 0xff, (bytes + 255) / 256 * 256 + 256);
  }
  ~Workspace() { std::free(p); }
};

template <typename F>
int dispatch(int dtype, F&& f) {
  switch (dtype) {
    case kF32: return f(float{}, float{});
    case kF64: return f(double{}, double{});
    case kF16: return f(__half{}, float{});
    case kBF16: return f(__nv_bfloat16{}, float{});
    default: return -1;
  }
}

template <typename T>
const T* c(void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T* m(void* p) {
  return static_cast<T*>(p);
}

}  // namespace

extern "C" {

// dims: B, N, M2, M1, K, P2, P1. p: fx2 fc2 fc1 phi phi_bias psi psi_bias mask spatial_bias
// channel_bias out V lse (a null bias pointer means none). Returns the cudaError_t.
int emu_msca_fwd(int dtype, const int64_t* dims, void** p, int sm_count) {
  const msca_cuda::MscaDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  return dispatch(dtype, [&](auto t, auto acc) {
    using T = decltype(t);
    using A = decltype(acc);
    msca_cuda::MscaFwdArgs<T, A> a{c<T>(p[0]), c<T>(p[1]), c<T>(p[2]),  c<T>(p[3]), c<T>(p[4]),
                                   c<T>(p[5]), c<T>(p[6]), c<T>(p[7]),  c<T>(p[8]), c<T>(p[9]),
                                   m<T>(p[10]), m<A>(p[11]), m<A>(p[12])};
    Workspace ws(msca_cuda::msca_fwd_workspace_bytes(d, sm_count, sizeof(A)));
    return static_cast<int>(msca_cuda::msca_fwd<T, A>(a, d, ws.p, sm_count, nullptr));
  });
}

// p: grad_out fx2 fc2 fc1 phi phi_bias psi psi_bias mask spatial_bias channel_bias V lse, then the
// gradients dfx2 dfc2 dfc1 dphi dphi_bias dpsi dpsi_bias dmask dspatial_bias dchannel_bias
// (the last two may be null: not wanted).
int emu_msca_bwd(int dtype, const int64_t* dims, void** p, int sm_count) {
  const msca_cuda::MscaDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  return dispatch(dtype, [&](auto t, auto acc) {
    using T = decltype(t);
    using A = decltype(acc);
    msca_cuda::MscaBwdArgs<T, A> a{c<T>(p[0]),  c<T>(p[1]),  c<T>(p[2]),  c<T>(p[3]),
                                   c<T>(p[4]),  c<T>(p[5]),  c<T>(p[6]),  c<T>(p[7]),
                                   c<T>(p[8]),  c<T>(p[9]),  c<T>(p[10]), c<A>(p[11]),
                                   c<A>(p[12]), m<T>(p[13]), m<T>(p[14]), m<T>(p[15]),
                                   m<T>(p[16]), m<T>(p[17]), m<T>(p[18]), m<T>(p[19]),
                                   m<T>(p[20]), m<T>(p[21]), m<T>(p[22])};
    Workspace ws(msca_cuda::msca_bwd_workspace_bytes(d, sm_count, sizeof(A)));
    return static_cast<int>(msca_cuda::msca_bwd<T, A>(a, d, ws.p, sm_count, nullptr));
  });
}

// dims: B, C, P, instance. p: x gamma beta out mean rstd.
int emu_spade_fwd(int dtype, const int64_t* dims, void** p, int compute_stats, double eps) {
  const msca_cuda::SpadeDims d{dims[0], dims[1], dims[2], dims[3] != 0};
  return dispatch(dtype, [&](auto t, auto acc) {
    using T = decltype(t);
    using A = decltype(acc);
    Workspace ws(msca_cuda::spade_workspace_bytes(d, sizeof(A)));
    return static_cast<int>(msca_cuda::spade_fwd<T, A>(c<T>(p[0]), c<T>(p[1]), c<T>(p[2]),
                                                       m<T>(p[3]), m<A>(p[4]), m<A>(p[5]),
                                                       compute_stats != 0, eps, d, ws.p, nullptr));
  });
}

// p: dy x gamma mean rstd dx dgamma.
int emu_spade_bwd(int dtype, const int64_t* dims, void** p, int batch_stats) {
  const msca_cuda::SpadeDims d{dims[0], dims[1], dims[2], dims[3] != 0};
  return dispatch(dtype, [&](auto t, auto acc) {
    using T = decltype(t);
    using A = decltype(acc);
    Workspace ws(msca_cuda::spade_workspace_bytes(d, sizeof(A)));
    return static_cast<int>(msca_cuda::spade_bwd<T, A>(c<T>(p[0]), c<T>(p[1]), c<T>(p[2]),
                                                       c<A>(p[3]), c<A>(p[4]), m<T>(p[5]),
                                                       m<T>(p[6]), batch_stats != 0, d, ws.p,
                                                       nullptr));
  });
}

// Shared memory of the MSCA tile kernels (msca_cuda.h), for the tests of its size.
size_t emu_msca_smem_bytes(int64_t K, int acc_size, int backward) {
  return msca_cuda::msca_smem_bytes(K, static_cast<size_t>(acc_size), backward != 0);
}
int64_t emu_msca_max_k(int acc_size, int64_t smem_limit, int backward) {
  return msca_cuda::msca_max_k(static_cast<size_t>(acc_size), static_cast<size_t>(smem_limit),
                               backward != 0);
}
// The message of msca_smem_check ("" if it fits), valid until the next call.
const char* emu_msca_smem_check(int64_t K, int acc_size, int64_t smem_limit, int backward) {
  static std::string msg;
  msg = msca_cuda::msca_smem_check(K, static_cast<size_t>(acc_size),
                                   static_cast<size_t>(smem_limit), backward != 0);
  return msg.c_str();
}

// The message of msca_fwd_smem_check ("" if it fits), valid until the next call.
const char* emu_msca_fwd_smem_check(int64_t K, int acc_size, int64_t smem_limit,
                                    int backward_follows) {
  static std::string msg;
  msg = msca_cuda::msca_fwd_smem_check(K, static_cast<size_t>(acc_size),
                                       static_cast<size_t>(smem_limit), backward_follows != 0);
  return msg.c_str();
}

// Workspace sizes and launch checks without running anything (for the grid-limit tests).
size_t emu_msca_fwd_workspace_bytes(const int64_t* dims, int sm_count, int acc_size) {
  const msca_cuda::MscaDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6]};
  return msca_cuda::msca_fwd_workspace_bytes(d, sm_count, static_cast<size_t>(acc_size));
}
}
