// CUDA kernels of msca_kernels::spade_norm_fwd / spade_norm_bwd (schemas in csrc/ops.cpp):
// argument checks, allocation, dtype dispatch, stream. The kernels are in spade_cuda_kernels.cu
// (raw pointers, see spade_cuda.h). Built only where nvcc and a CUDA torch exist (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "spade_cuda.h"

namespace {

using at::Tensor;

template <typename F>
void dispatch(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default:
      TORCH_CHECK(false, "spade_norm (cuda): supports float32, float16, bfloat16 and float64, got ",
                  dt);
  }
}

at::ScalarType accum_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_tensor(const Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dt,
                  const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "spade_norm (cuda): ", name, " must be on ", dev,
              " like x, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dt, "spade_norm (cuda): ", name, " must have dtype ", dt,
              " like x, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "spade_norm (cuda): ", name, " must have shape ", shape,
              ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "spade_norm (cuda): ", name, " must be contiguous");
}

msca_cuda::SpadeDims dims_of(const Tensor& x, bool instance) {
  TORCH_CHECK(x.is_cuda(), "spade_norm (cuda): x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 3, "spade_norm (cuda): x must be flattened to (B, C, P), got ",
              x.sizes());
  TORCH_CHECK(x.numel() > 0, "spade_norm (cuda): x must not be empty, got ", x.sizes());
  return msca_cuda::SpadeDims{x.size(0), x.size(1), x.size(2), instance};
}

std::vector<int64_t> stat_shape(const msca_cuda::SpadeDims& d) {
  return d.instance ? std::vector<int64_t>{d.B, d.C} : std::vector<int64_t>{d.C};
}

// Statistics given by the caller: any floating dtype on x's device with the statistics'
// shape; returned contiguous in the accumulation dtype.
Tensor given_stat(const Tensor& t, const char* name, const msca_cuda::SpadeDims& d,
                  at::ScalarType acc, const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "spade_norm (cuda): ", name, " must be on ", dev, ", got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "spade_norm (cuda): ", name,
              " must be floating point, got ", t.scalar_type());
  const auto shape = stat_shape(d);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "spade_norm (cuda): ", name,
              " must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
  return t.to(acc).contiguous();
}

template <typename T>
const T* cptr(const Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(const Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

std::tuple<Tensor, Tensor, Tensor> spade_norm_fwd_cuda(const Tensor& x, const Tensor& gamma,
                                                       const Tensor& beta,
                                                       const c10::optional<Tensor>& mean_in,
                                                       const c10::optional<Tensor>& rstd_in,
                                                       bool instance, double eps) {
  const auto d = dims_of(x, instance);
  const auto dt = x.scalar_type();
  const auto dev = x.device();
  check_tensor(x, "x", x.sizes(), dt, dev);
  check_tensor(gamma, "gamma", x.sizes(), dt, dev);
  check_tensor(beta, "beta", x.sizes(), dt, dev);
  TORCH_CHECK(mean_in.has_value() == rstd_in.has_value(),
              "spade_norm (cuda): mean and rstd must be given together");
  TORCH_CHECK(eps >= 0, "spade_norm (cuda): eps must be non-negative, got ", eps);
  const c10::cuda::CUDAGuard guard(dev);
  const auto acc = accum_type(dt);
  Tensor out = at::empty_like(x);
  Tensor mean, rstd;
  if (mean_in.has_value()) {
    // Returned tensors must not alias the inputs, hence the clones.
    mean = given_stat(*mean_in, "mean", d, acc, dev).clone();
    rstd = given_stat(*rstd_in, "rstd", d, acc, dev).clone();
  } else {
    mean = at::empty(stat_shape(d), x.options().dtype(acc));
    rstd = at::empty(stat_shape(d), x.options().dtype(acc));
  }
  const size_t ws_bytes = msca_cuda::spade_workspace_bytes(d, acc == at::kDouble ? 8 : 4);
  Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, x.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
    const cudaError_t err = msca_cuda::spade_fwd<T, A>(
        cptr<T>(x), cptr<T>(gamma), cptr<T>(beta), mptr<T>(out), mptr<A>(mean), mptr<A>(rstd),
        !mean_in.has_value(), eps, d, ws.data_ptr(), stream);
    TORCH_CHECK(err == cudaSuccess, "spade_norm (cuda): forward failed: ",
                cudaGetErrorString(err));
  });
  return {out, mean, rstd};
}

std::tuple<Tensor, Tensor> spade_norm_bwd_cuda(const Tensor& grad_out, const Tensor& x,
                                               const Tensor& gamma, const Tensor& mean_in,
                                               const Tensor& rstd_in, bool instance,
                                               bool batch_stats) {
  const auto d = dims_of(x, instance);
  const auto dt = x.scalar_type();
  const auto dev = x.device();
  check_tensor(x, "x", x.sizes(), dt, dev);
  check_tensor(grad_out, "grad_out", x.sizes(), dt, dev);
  check_tensor(gamma, "gamma", x.sizes(), dt, dev);
  const c10::cuda::CUDAGuard guard(dev);
  const auto acc = accum_type(dt);
  const Tensor mean = given_stat(mean_in, "mean", d, acc, dev);
  const Tensor rstd = given_stat(rstd_in, "rstd", d, acc, dev);
  Tensor dx = at::empty_like(x);
  Tensor dgamma = at::empty_like(gamma);
  const size_t ws_bytes = msca_cuda::spade_workspace_bytes(d, acc == at::kDouble ? 8 : 4);
  Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, x.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
    const cudaError_t err = msca_cuda::spade_bwd<T, A>(
        cptr<T>(grad_out), cptr<T>(x), cptr<T>(gamma), cptr<A>(mean), cptr<A>(rstd),
        mptr<T>(dx), mptr<T>(dgamma), batch_stats, d, ws.data_ptr(), stream);
    TORCH_CHECK(err == cudaSuccess, "spade_norm (cuda): backward failed: ",
                cudaGetErrorString(err));
  });
  return {dx, dgamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(msca_kernels, CUDA, m) {
  m.impl("spade_norm_fwd", &spade_norm_fwd_cuda);
  m.impl("spade_norm_bwd", &spade_norm_bwd_cuda);
}
