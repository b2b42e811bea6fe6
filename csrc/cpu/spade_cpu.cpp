// CPU kernels of msca_kernels::spade_norm_fwd / spade_norm_bwd (schemas in csrc/ops.cpp, math
// in docs/design.md section 3). This file is only the at::Tensor binding: argument checks, output
// allocation, dtype dispatch. The fused loops are in spade_cpu_kernels.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "output_pool.h"
#include "spade_cpu_kernels.h"

namespace {

using at::Tensor;
namespace sk = msca_kernels::spade_cpu;

// Accumulation dtype of the statistics: float64 for float64 inputs, float32 otherwise.
at::ScalarType accum_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_tensor(const Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu(), "spade_norm (cpu): ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == dt, "spade_norm (cpu): ", name, " must have dtype ", dt,
              " like x, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, "spade_norm (cpu): ", name, " must have shape ", shape,
              ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "spade_norm (cpu): ", name, " must be contiguous");
}

// The big outputs come from the output pool (output_pool.cpp: no fresh page faults per call).
Tensor empty_output(const Tensor& like) {
  return msca_cpu::pooled_empty(like.sizes(), like.options());
}

sk::Layout layout_of(const Tensor& x, bool instance) {
  TORCH_CHECK(x.dim() == 3, "spade_norm (cpu): x must be flattened to (B, C, P), got ",
              x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble,
              "spade_norm (cpu): supports float32 and float64, got ", dt);
  return sk::Layout{x.size(0), x.size(1), x.size(2), instance};
}

std::vector<int64_t> stat_shape(const sk::Layout& l) {
  return l.instance ? std::vector<int64_t>{l.B, l.C} : std::vector<int64_t>{l.C};
}

// Statistics given by the caller: any floating dtype on the CPU with the statistics' shape;
// returned as a contiguous tensor of the accumulation dtype.
Tensor given_stat(const Tensor& t, const char* name, const sk::Layout& l, at::ScalarType acc) {
  TORCH_CHECK(t.device().is_cpu(), "spade_norm (cpu): ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "spade_norm (cpu): ", name,
              " must be floating point, got ", t.scalar_type());
  const auto shape = stat_shape(l);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "spade_norm (cpu): ", name,
              " must have shape ", at::IntArrayRef(shape), ", got ", t.sizes());
  return t.to(acc).contiguous();
}

std::tuple<Tensor, Tensor, Tensor> spade_norm_fwd_cpu(const Tensor& x, const Tensor& gamma,
                                                      const Tensor& beta,
                                                      const c10::optional<Tensor>& mean_in,
                                                      const c10::optional<Tensor>& rstd_in,
                                                      bool instance, double eps) {
  const sk::Layout l = layout_of(x, instance);
  const auto dt = x.scalar_type();
  check_tensor(x, "x", x.sizes(), dt);
  check_tensor(gamma, "gamma", x.sizes(), dt);
  check_tensor(beta, "beta", x.sizes(), dt);
  TORCH_CHECK(mean_in.has_value() == rstd_in.has_value(),
              "spade_norm (cpu): mean and rstd must be given together");
  TORCH_CHECK(eps >= 0, "spade_norm (cpu): eps must be non-negative, got ", eps);
  const auto acc = accum_type(dt);
  const auto shape = stat_shape(l);
  Tensor out = empty_output(x);
  Tensor mean, rstd;
  if (mean_in.has_value()) {
    // Returned tensors must not alias the inputs, hence the clones.
    mean = given_stat(*mean_in, "mean", l, acc).clone();
    rstd = given_stat(*rstd_in, "rstd", l, acc).clone();
  } else {
    mean = at::empty(shape, x.options().dtype(acc));
    rstd = at::empty(shape, x.options().dtype(acc));
  }
  AT_DISPATCH_FLOATING_TYPES(dt, "spade_norm_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    sk::forward<scalar_t, acc_t>(x.data_ptr<scalar_t>(), gamma.data_ptr<scalar_t>(),
                                 beta.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), l, eps,
                                 !mean_in.has_value(), mean.data_ptr<acc_t>(),
                                 rstd.data_ptr<acc_t>());
  });
  return {out, mean, rstd};
}

std::tuple<Tensor, Tensor> spade_norm_bwd_cpu(const Tensor& grad_out, const Tensor& x,
                                              const Tensor& gamma, const Tensor& mean_in,
                                              const Tensor& rstd_in, bool instance,
                                              bool batch_stats) {
  const sk::Layout l = layout_of(x, instance);
  const auto dt = x.scalar_type();
  check_tensor(x, "x", x.sizes(), dt);
  check_tensor(grad_out, "grad_out", x.sizes(), dt);
  check_tensor(gamma, "gamma", x.sizes(), dt);
  const auto acc = accum_type(dt);
  const Tensor mean = given_stat(mean_in, "mean", l, acc);
  const Tensor rstd = given_stat(rstd_in, "rstd", l, acc);
  Tensor dx = empty_output(x);
  Tensor dgamma = empty_output(gamma);
  AT_DISPATCH_FLOATING_TYPES(dt, "spade_norm_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    sk::backward<scalar_t, acc_t>(grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                  gamma.data_ptr<scalar_t>(), mean.data_ptr<acc_t>(),
                                  rstd.data_ptr<acc_t>(), dx.data_ptr<scalar_t>(),
                                  dgamma.data_ptr<scalar_t>(), l, batch_stats);
  });
  return {dx, dgamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(msca_kernels, CPU, m) {
  m.impl("spade_norm_fwd", &spade_norm_fwd_cpu);
  m.impl("spade_norm_bwd", &spade_norm_bwd_cpu);
}
