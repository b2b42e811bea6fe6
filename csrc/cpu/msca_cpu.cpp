// CPU kernels of msca_kernels::msca_fwd / msca_bwd (schemas in csrc/ops.cpp, math in
// docs/design.md section 2). This file is only the at::Tensor binding: argument checks, output
// allocation, dtype dispatch. The fused loops are in msca_cpu_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "msca_cpu_kernels.h"
#include "output_pool.h"

namespace {

using at::Tensor;

void check_input(const Tensor& t, const char* name, at::IntArrayRef shape,
                 at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "msca (cpu): ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "msca (cpu): ", name, " must have dtype ", dtype,
              " like fx2, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "msca (cpu): ", name, " must have shape ", shape, ", got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), "msca (cpu): ", name, " must be contiguous");
}

struct Dims {
  int64_t B, N, M2, M1, K, P2, P1;
};

// Checks every input of both ops and returns the problem sizes.
Dims check_common(const Tensor& fx2, const Tensor& fc2, const Tensor& fc1,
                  const Tensor& phi_weight, const Tensor& phi_bias, const Tensor& psi_weight,
                  const Tensor& psi_bias, const Tensor& mask,
                  const c10::optional<Tensor>& spatial_bias,
                  const c10::optional<Tensor>& channel_bias) {
  TORCH_CHECK(fx2.dim() == 3 && fc2.dim() == 3 && fc1.dim() == 3,
              "msca (cpu): fx2, fc2, fc1 must be flattened to (B, C, P), got ", fx2.sizes(), ", ",
              fc2.sizes(), ", ", fc1.sizes());
  TORCH_CHECK(phi_weight.dim() == 2, "msca (cpu): phi_weight must be (K, N + M2), got ",
              phi_weight.sizes());
  const auto dt = fx2.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "msca (cpu): supports float32 and float64, got ", dt);
  Dims d;
  d.B = fx2.size(0);
  d.N = fx2.size(1);
  d.P2 = fx2.size(2);
  d.M2 = fc2.size(1);
  d.M1 = fc1.size(1);
  d.P1 = fc1.size(2);
  d.K = phi_weight.size(0);
  TORCH_CHECK(d.K >= 1, "msca (cpu): phi_weight must have at least one row (K >= 1)");
  check_input(fx2, "fx2", {d.B, d.N, d.P2}, dt);
  check_input(fc2, "fc2", {d.B, d.M2, d.P2}, dt);
  check_input(fc1, "fc1", {d.B, d.M1, d.P1}, dt);
  check_input(phi_weight, "phi_weight", {d.K, d.N + d.M2}, dt);
  check_input(phi_bias, "phi_bias", {d.K}, dt);
  check_input(psi_weight, "psi_weight", {d.K, d.M1}, dt);
  check_input(psi_bias, "psi_bias", {d.K}, dt);
  check_input(mask, "mask", {d.B, d.K}, dt);
  if (spatial_bias.has_value() && spatial_bias->defined())
    check_input(*spatial_bias, "spatial_bias", {d.B, d.K, d.P2}, dt);
  if (channel_bias.has_value() && channel_bias->defined())
    check_input(*channel_bias, "channel_bias", {d.B, d.K, d.P1}, dt);
  return d;
}

template <typename T>
const T* opt_ptr(const c10::optional<Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->data_ptr<T>() : nullptr;
}

std::tuple<Tensor, Tensor, Tensor> msca_fwd_cpu(const Tensor& fx2, const Tensor& fc2,
                                                const Tensor& fc1, const Tensor& phi_weight,
                                                const Tensor& phi_bias,
                                                const Tensor& psi_weight,
                                                const Tensor& psi_bias, const Tensor& mask,
                                                const c10::optional<Tensor>& spatial_bias,
                                                const c10::optional<Tensor>& channel_bias) {
  const Dims d = check_common(fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask,
                              spatial_bias, channel_bias);
  // The accumulation dtype equals the input dtype for the two supported dtypes.
  // The big outputs come from the output pool (output_pool.cpp: no fresh page faults per call).
  Tensor out = msca_cpu::pooled_empty({d.B, d.N, d.P1}, fx2.options());
  Tensor V = at::empty({d.B, d.N, d.K}, fx2.options());
  Tensor lse = at::empty({d.B, d.K}, fx2.options());
  AT_DISPATCH_FLOATING_TYPES(fx2.scalar_type(), "msca_fwd_cpu", [&] {
    msca_cpu::FwdArgs<scalar_t> a;
    a.fx2 = fx2.data_ptr<scalar_t>();
    a.fc2 = fc2.data_ptr<scalar_t>();
    a.fc1 = fc1.data_ptr<scalar_t>();
    a.phi = phi_weight.data_ptr<scalar_t>();
    a.phi_bias = phi_bias.data_ptr<scalar_t>();
    a.psi = psi_weight.data_ptr<scalar_t>();
    a.psi_bias = psi_bias.data_ptr<scalar_t>();
    a.mask = mask.data_ptr<scalar_t>();
    a.spatial_bias = opt_ptr<scalar_t>(spatial_bias);
    a.channel_bias = opt_ptr<scalar_t>(channel_bias);
    a.out = out.data_ptr<scalar_t>();
    a.V = V.data_ptr<scalar_t>();
    a.lse = lse.data_ptr<scalar_t>();
    a.B = d.B; a.N = d.N; a.M2 = d.M2; a.M1 = d.M1; a.K = d.K; a.P2 = d.P2; a.P1 = d.P1;
    msca_cpu::msca_forward(a);
  });
  return {out, V, lse};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>
msca_bwd_cpu(const Tensor& grad_out, const Tensor& fx2, const Tensor& fc2, const Tensor& fc1,
             const Tensor& phi_weight, const Tensor& phi_bias, const Tensor& psi_weight,
             const Tensor& psi_bias, const Tensor& mask,
             const c10::optional<Tensor>& spatial_bias,
             const c10::optional<Tensor>& channel_bias, const Tensor& V, const Tensor& lse,
             bool need_spatial_bias_grad, bool need_channel_bias_grad) {
  const Dims d = check_common(fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask,
                              spatial_bias, channel_bias);
  const auto dt = fx2.scalar_type();
  check_input(grad_out, "grad_out", {d.B, d.N, d.P1}, dt);
  check_input(V, "V", {d.B, d.N, d.K}, dt);
  check_input(lse, "lse", {d.B, d.K}, dt);
  const bool has_sb = spatial_bias.has_value() && spatial_bias->defined();
  const bool has_cb = channel_bias.has_value() && channel_bias->defined();
  const bool want_dsb = need_spatial_bias_grad && has_sb;
  const bool want_dcb = need_channel_bias_grad && has_cb;

  const auto big = [](const Tensor& like) {
    return msca_cpu::pooled_empty(like.sizes(), like.options());
  };
  Tensor dfx2 = big(fx2), dfc2 = big(fc2), dfc1 = big(fc1);
  Tensor dphi = at::empty_like(phi_weight), dphi_b = at::empty_like(phi_bias);
  Tensor dpsi = at::empty_like(psi_weight), dpsi_b = at::empty_like(psi_bias);
  Tensor dmask = at::empty_like(mask);
  Tensor dsb = want_dsb ? msca_cpu::pooled_empty({d.B, d.K, d.P2}, fx2.options())
                        : at::empty({0}, fx2.options());
  Tensor dcb = want_dcb ? msca_cpu::pooled_empty({d.B, d.K, d.P1}, fx2.options())
                        : at::empty({0}, fx2.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "msca_bwd_cpu", [&] {
    msca_cpu::BwdArgs<scalar_t> a;
    a.grad_out = grad_out.data_ptr<scalar_t>();
    a.fx2 = fx2.data_ptr<scalar_t>();
    a.fc2 = fc2.data_ptr<scalar_t>();
    a.fc1 = fc1.data_ptr<scalar_t>();
    a.phi = phi_weight.data_ptr<scalar_t>();
    a.phi_bias = phi_bias.data_ptr<scalar_t>();
    a.psi = psi_weight.data_ptr<scalar_t>();
    a.psi_bias = psi_bias.data_ptr<scalar_t>();
    a.mask = mask.data_ptr<scalar_t>();
    a.spatial_bias = opt_ptr<scalar_t>(spatial_bias);
    a.channel_bias = opt_ptr<scalar_t>(channel_bias);
    a.V = V.data_ptr<scalar_t>();
    a.lse = lse.data_ptr<scalar_t>();
    a.dfx2 = dfx2.data_ptr<scalar_t>();
    a.dfc2 = dfc2.data_ptr<scalar_t>();
    a.dfc1 = dfc1.data_ptr<scalar_t>();
    a.dphi = dphi.data_ptr<scalar_t>();
    a.dphi_bias = dphi_b.data_ptr<scalar_t>();
    a.dpsi = dpsi.data_ptr<scalar_t>();
    a.dpsi_bias = dpsi_b.data_ptr<scalar_t>();
    a.dmask = dmask.data_ptr<scalar_t>();
    a.dspatial_bias = want_dsb ? dsb.data_ptr<scalar_t>() : nullptr;
    a.dchannel_bias = want_dcb ? dcb.data_ptr<scalar_t>() : nullptr;
    a.B = d.B; a.N = d.N; a.M2 = d.M2; a.M1 = d.M1; a.K = d.K; a.P2 = d.P2; a.P1 = d.P1;
    msca_cpu::msca_backward(a);
  });
  return {dfx2, dfc2, dfc1, dphi, dphi_b, dpsi, dpsi_b, dmask, dsb, dcb};
}

}  // namespace

TORCH_LIBRARY_IMPL(msca_kernels, CPU, m) {
  m.impl("msca_fwd", &msca_fwd_cpu);
  m.impl("msca_bwd", &msca_bwd_cpu);
}
