// Operator schemas of msca_kernels: the one place where the C++ ops are declared.
// CPU implementations live in csrc/cpu/, CUDA ones in csrc/cuda/; each registers itself with
// TORCH_LIBRARY_IMPL. Fake (meta) and autograd implementations are registered from Python
// (msca_kernels/_ops.py), so torch.compile and torch.library.opcheck see the full op.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing msca_kernels._C loads this library and so runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(msca_kernels, m) {
  // MSCA attention (docs/design.md section 2). Inputs are contiguous and flattened:
  //   fx2 (B,N,P2), fc2 (B,M2,P2), fc1 (B,M1,P1), phi_weight (K,N+M2), phi_bias (K),
  //   psi_weight (K,M1), psi_bias (K), mask (B,K), spatial_bias (B,K,P2)?, channel_bias (B,K,P1)?
  // Returns out (B,N,P1) in the input dtype, V (B,N,K) un-masked and lse (B,K), both in the
  // accumulation dtype (float32, or float64 for float64 inputs).
  m.def(
      "msca_fwd(Tensor fx2, Tensor fc2, Tensor fc1, Tensor phi_weight, Tensor phi_bias, "
      "Tensor psi_weight, Tensor psi_bias, Tensor mask, Tensor? spatial_bias, "
      "Tensor? channel_bias) -> (Tensor, Tensor, Tensor)");
  // Backward: two passes (target tiles, then exemplar tiles recomputing alpha from lse).
  // Returns dfx2, dfc2, dfc1, dphi_weight, dphi_bias, dpsi_weight, dpsi_bias, dmask,
  // dspatial_bias, dchannel_bias. The two bias gradients are (B,K,P2) and (B,K,P1) when the
  // matching need_*_grad flag is set and empty (0,) tensors otherwise.
  m.def(
      "msca_bwd(Tensor grad_out, Tensor fx2, Tensor fc2, Tensor fc1, Tensor phi_weight, "
      "Tensor phi_bias, Tensor psi_weight, Tensor psi_bias, Tensor mask, Tensor? spatial_bias, "
      "Tensor? channel_bias, Tensor V, Tensor lse, bool need_spatial_bias_grad, "
      "bool need_channel_bias_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
  // SPADE denormalization (docs/design.md section 3). x, gamma, beta (B,C,P) contiguous.
  // instance=false: statistics per channel over (B,P), mean/rstd of shape (C,);
  // instance=true: per (b,c) over P, shape (B,C). When mean and rstd are given (evaluation
  // with running statistics) they are used instead of batch statistics and returned as copies.
  // Returns out (B,C,P), mean, rstd (accumulation dtype).
  m.def(
      "spade_norm_fwd(Tensor x, Tensor gamma, Tensor beta, Tensor? mean, Tensor? rstd, "
      "bool instance, float eps) -> (Tensor, Tensor, Tensor)");
  // Returns dx, dgamma. dbeta is grad_out itself and is not recomputed. batch_stats says
  // whether mean/rstd were computed from x (then the gradient flows through them).
  m.def(
      "spade_norm_bwd(Tensor grad_out, Tensor x, Tensor gamma, Tensor mean, Tensor rstd, "
      "bool instance, bool batch_stats) -> (Tensor, Tensor)");
}
