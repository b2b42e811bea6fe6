// CUDA kernels of msca_kernels::msca_fwd / msca_bwd (schemas in csrc/ops.cpp): argument checks,
// output and workspace allocation, dtype dispatch, stream. The kernels are in
// msca_cuda_kernels.cu (raw pointers, see msca_cuda.h). Built only where nvcc and a CUDA torch
// exist (setup.py).
#include <ATen/ATen.h>
#include <c10/core/AutogradState.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>
#include <tuple>
#include <type_traits>

#include "msca_cuda.h"

namespace {

using at::Tensor;

// at::ScalarType -> the kernels' scalar type.
template <typename F>
void dispatch(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default:
      TORCH_CHECK(false, "msca (cuda): supports float32, float16, bfloat16 and float64, got ", dt);
  }
}

at::ScalarType accum_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_input(const Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype,
                 const at::Device& dev) {
  TORCH_CHECK(t.device() == dev, "msca (cuda): ", name, " must be on ", dev, " like fx2, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "msca (cuda): ", name, " must have dtype ", dtype,
              ", got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "msca (cuda): ", name, " must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "msca (cuda): ", name, " must be contiguous");
}

msca_cuda::MscaDims check_common(const Tensor& fx2, const Tensor& fc2, const Tensor& fc1,
                                 const Tensor& phi_weight, const Tensor& phi_bias,
                                 const Tensor& psi_weight, const Tensor& psi_bias,
                                 const Tensor& mask, const c10::optional<Tensor>& spatial_bias,
                                 const c10::optional<Tensor>& channel_bias) {
  TORCH_CHECK(fx2.is_cuda(), "msca (cuda): fx2 must be a CUDA tensor, got ", fx2.device());
  TORCH_CHECK(fx2.dim() == 3 && fc2.dim() == 3 && fc1.dim() == 3,
              "msca (cuda): fx2, fc2, fc1 must be flattened to (B, C, P), got ", fx2.sizes(),
              ", ", fc2.sizes(), ", ", fc1.sizes());
  TORCH_CHECK(phi_weight.dim() == 2, "msca (cuda): phi_weight must be (K, N + M2), got ",
              phi_weight.sizes());
  msca_cuda::MscaDims d;
  d.B = fx2.size(0);
  d.N = fx2.size(1);
  d.P2 = fx2.size(2);
  d.M2 = fc2.size(1);
  d.M1 = fc1.size(1);
  d.P1 = fc1.size(2);
  d.K = phi_weight.size(0);
  TORCH_CHECK(d.K >= 1 && d.K <= msca_cuda::kMaxK, "msca (cuda): the number of attention maps K ",
              "must be in [1, ", msca_cuda::kMaxK, "], got ", d.K);
  TORCH_CHECK(d.B >= 1 && d.B <= 65535, "msca (cuda): batch size must be in [1, 65535], got ",
              d.B);
  TORCH_CHECK(d.N >= 1 && d.M1 >= 1 && d.M2 >= 1 && d.P1 >= 1 && d.P2 >= 1,
              "msca (cuda): empty channel or spatial dimension");
  const auto dt = fx2.scalar_type();
  const auto dev = fx2.device();
  check_input(fx2, "fx2", {d.B, d.N, d.P2}, dt, dev);
  check_input(fc2, "fc2", {d.B, d.M2, d.P2}, dt, dev);
  check_input(fc1, "fc1", {d.B, d.M1, d.P1}, dt, dev);
  check_input(phi_weight, "phi_weight", {d.K, d.N + d.M2}, dt, dev);
  check_input(phi_bias, "phi_bias", {d.K}, dt, dev);
  check_input(psi_weight, "psi_weight", {d.K, d.M1}, dt, dev);
  check_input(psi_bias, "psi_bias", {d.K}, dt, dev);
  check_input(mask, "mask", {d.B, d.K}, dt, dev);
  if (spatial_bias.has_value() && spatial_bias->defined())
    check_input(*spatial_bias, "spatial_bias", {d.B, d.K, d.P2}, dt, dev);
  if (channel_bias.has_value() && channel_bias->defined())
    check_input(*channel_bias, "channel_bias", {d.B, d.K, d.P1}, dt, dev);
  return d;
}

template <typename T>
const T* cptr(const Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mptr(const Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}
template <typename T>
const T* opt_ptr(const c10::optional<Tensor>& t) {
  return (t.has_value() && t->defined()) ? cptr<T>(*t) : nullptr;
}

// Multiprocessor count of the current device (sets the split count of the reductions).
int sm_count() {
  int dev = 0, n = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n;
}

// The tile kernels' shared memory must fit the device's per-block opt-in maximum (99 KiB on
// sm_86/89/120: float64 with K > 52 does not fit the backward there). Checked before any
// launch, with a message naming K and the limit instead of the launch's "invalid argument".
// The forward checks the backward's need too when a backward will follow, so that training
// stops at its first forward (msca_fwd_smem_check).
int smem_optin() {
  int dev = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return optin;
}
size_t acc_bytes(at::ScalarType acc) { return acc == at::kDouble ? 8 : 4; }

void check_shared_memory_fwd(const msca_cuda::MscaDims& d, at::ScalarType acc,
                             bool backward_follows) {
  const std::string err = msca_cuda::msca_fwd_smem_check(
      d.K, acc_bytes(acc), static_cast<size_t>(smem_optin()), backward_follows);
  TORCH_CHECK_VALUE(err.empty(), "msca (cuda): ", err);
}
void check_shared_memory_bwd(const msca_cuda::MscaDims& d, at::ScalarType acc) {
  const std::string err = msca_cuda::msca_smem_check(
      d.K, acc_bytes(acc), static_cast<size_t>(smem_optin()), /*backward=*/true);
  TORCH_CHECK_VALUE(err.empty(), "msca (cuda): ", err);
}

// Whether autograd records this forward call, i.e. a backward may follow. The op's autograd
// formula (torch.library.register_autograd, msca_kernels/_autograd.py) runs it inside an
// autograd.Function, which turns off grad mode and forward-mode AD. torch.no_grad turns off
// only grad mode, and inference mode is visible as such: parameters that require grad in an
// evaluation under either do not count (tests/cuda_emu/test_cuda_smem.py pins these modes).
bool backward_follows(std::initializer_list<const Tensor*> inputs,
                      std::initializer_list<const c10::optional<Tensor>*> optional_inputs) {
  if (c10::GradMode::is_enabled() || c10::InferenceMode::is_enabled() ||
      c10::AutogradState::get_tls_state().get_fw_grad_mode())
    return false;
  for (const Tensor* t : inputs)
    if (t->requires_grad()) return true;
  for (const c10::optional<Tensor>* t : optional_inputs)
    if (t->has_value() && (*t)->defined() && (*t)->requires_grad()) return true;
  return false;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "msca (cuda): ", what, " failed: ", cudaGetErrorString(err));
}

std::tuple<Tensor, Tensor, Tensor> msca_fwd_cuda(const Tensor& fx2, const Tensor& fc2,
                                                 const Tensor& fc1, const Tensor& phi_weight,
                                                 const Tensor& phi_bias,
                                                 const Tensor& psi_weight,
                                                 const Tensor& psi_bias, const Tensor& mask,
                                                 const c10::optional<Tensor>& spatial_bias,
                                                 const c10::optional<Tensor>& channel_bias) {
  const auto d = check_common(fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask,
                              spatial_bias, channel_bias);
  const c10::cuda::CUDAGuard guard(fx2.device());
  const auto acc = accum_type(fx2.scalar_type());
  check_shared_memory_fwd(d, acc,
                          backward_follows({&fx2, &fc2, &fc1, &phi_weight, &phi_bias, &psi_weight,
                                            &psi_bias, &mask},
                                           {&spatial_bias, &channel_bias}));
  Tensor out = at::empty({d.B, d.N, d.P1}, fx2.options());
  Tensor V = at::empty({d.B, d.N, d.K}, fx2.options().dtype(acc));
  Tensor lse = at::empty({d.B, d.K}, fx2.options().dtype(acc));
  const int sms = sm_count();
  const size_t ws_bytes =
      msca_cuda::msca_fwd_workspace_bytes(d, sms, acc == at::kDouble ? 8 : 4);
  Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, fx2.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(fx2.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
    msca_cuda::MscaFwdArgs<T, A> a;
    a.fx2 = cptr<T>(fx2);
    a.fc2 = cptr<T>(fc2);
    a.fc1 = cptr<T>(fc1);
    a.phi = cptr<T>(phi_weight);
    a.phi_bias = cptr<T>(phi_bias);
    a.psi = cptr<T>(psi_weight);
    a.psi_bias = cptr<T>(psi_bias);
    a.mask = cptr<T>(mask);
    a.spatial_bias = opt_ptr<T>(spatial_bias);
    a.channel_bias = opt_ptr<T>(channel_bias);
    a.out = mptr<T>(out);
    a.V = mptr<A>(V);
    a.lse = mptr<A>(lse);
    check_launch(msca_cuda::msca_fwd<T, A>(a, d, ws.data_ptr(), sms, stream), "msca_fwd");
  });
  return {out, V, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
msca_bwd_cuda(const Tensor& grad_out, const Tensor& fx2, const Tensor& fc2, const Tensor& fc1,
              const Tensor& phi_weight, const Tensor& phi_bias, const Tensor& psi_weight,
              const Tensor& psi_bias, const Tensor& mask,
              const c10::optional<Tensor>& spatial_bias,
              const c10::optional<Tensor>& channel_bias, const Tensor& V, const Tensor& lse,
              bool need_spatial_bias_grad, bool need_channel_bias_grad) {
  const auto d = check_common(fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask,
                              spatial_bias, channel_bias);
  const c10::cuda::CUDAGuard guard(fx2.device());
  const auto dt = fx2.scalar_type();
  const auto acc = accum_type(dt);
  const auto dev = fx2.device();
  check_input(grad_out, "grad_out", {d.B, d.N, d.P1}, dt, dev);
  check_input(V, "V", {d.B, d.N, d.K}, acc, dev);
  check_input(lse, "lse", {d.B, d.K}, acc, dev);
  check_shared_memory_bwd(d, acc);
  const bool want_dsb = need_spatial_bias_grad && spatial_bias.has_value() && spatial_bias->defined();
  const bool want_dcb = need_channel_bias_grad && channel_bias.has_value() && channel_bias->defined();
  Tensor dfx2 = at::empty_like(fx2), dfc2 = at::empty_like(fc2), dfc1 = at::empty_like(fc1);
  Tensor dphi = at::empty_like(phi_weight), dphi_b = at::empty_like(phi_bias);
  Tensor dpsi = at::empty_like(psi_weight), dpsi_b = at::empty_like(psi_bias);
  Tensor dmask = at::empty_like(mask);
  Tensor dsb = want_dsb ? at::empty({d.B, d.K, d.P2}, fx2.options()) : at::empty({0}, fx2.options());
  Tensor dcb = want_dcb ? at::empty({d.B, d.K, d.P1}, fx2.options()) : at::empty({0}, fx2.options());
  const int sms = sm_count();
  const size_t ws_bytes =
      msca_cuda::msca_bwd_workspace_bytes(d, sms, acc == at::kDouble ? 8 : 4);
  Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, fx2.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(dt, [&](auto tag) {
    using T = decltype(tag);
    using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
    msca_cuda::MscaBwdArgs<T, A> a;
    a.grad_out = cptr<T>(grad_out);
    a.fx2 = cptr<T>(fx2);
    a.fc2 = cptr<T>(fc2);
    a.fc1 = cptr<T>(fc1);
    a.phi = cptr<T>(phi_weight);
    a.phi_bias = cptr<T>(phi_bias);
    a.psi = cptr<T>(psi_weight);
    a.psi_bias = cptr<T>(psi_bias);
    a.mask = cptr<T>(mask);
    a.spatial_bias = opt_ptr<T>(spatial_bias);
    a.channel_bias = opt_ptr<T>(channel_bias);
    a.V = cptr<A>(V);
    a.lse = cptr<A>(lse);
    a.dfx2 = mptr<T>(dfx2);
    a.dfc2 = mptr<T>(dfc2);
    a.dfc1 = mptr<T>(dfc1);
    a.dphi = mptr<T>(dphi);
    a.dphi_bias = mptr<T>(dphi_b);
    a.dpsi = mptr<T>(dpsi);
    a.dpsi_bias = mptr<T>(dpsi_b);
    a.dmask = mptr<T>(dmask);
    a.dspatial_bias = want_dsb ? mptr<T>(dsb) : nullptr;
    a.dchannel_bias = want_dcb ? mptr<T>(dcb) : nullptr;
    check_launch(msca_cuda::msca_bwd<T, A>(a, d, ws.data_ptr(), sms, stream), "msca_bwd");
  });
  return {dfx2, dfc2, dfc1, dphi, dphi_b, dpsi, dpsi_b, dmask, dsb, dcb};
}

}  // namespace

TORCH_LIBRARY_IMPL(msca_kernels, CUDA, m) {
  m.impl("msca_fwd", &msca_fwd_cuda);
  m.impl("msca_bwd", &msca_bwd_cuda);
}
