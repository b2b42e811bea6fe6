"""MSCA attention: the public function, and the custom-op glue of the C++ kernels.

The C++ op msca_kernels::msca_fwd (schema in csrc/ops.cpp) gets its fake implementation and its
autograd formula here: forward saves the inputs, V (N x K) and lse (K), nothing of size K x P;
backward calls msca_kernels::msca_bwd, which recomputes the attention from lse.
"""
from __future__ import annotations

import torch

from . import _autograd, _checks, _ext, backends, reference


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if _ext.loaded():

    @torch.library.register_fake("msca_kernels::msca_fwd")
    def _msca_fwd_fake(fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask,
                       spatial_bias, channel_bias):
        B, N, _ = fx2.shape
        K = phi_weight.shape[0]
        acc = _accum_dtype(fx2.dtype)
        return (fx2.new_empty((B, N, fc1.shape[2])), fx2.new_empty((B, N, K), dtype=acc),
                fx2.new_empty((B, K), dtype=acc))

    @torch.library.register_fake("msca_kernels::msca_bwd")
    def _msca_bwd_fake(grad_out, fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask,
                       spatial_bias, channel_bias, V, lse, need_spatial_bias_grad,
                       need_channel_bias_grad):
        B, K = mask.shape
        dsb = (fx2.new_empty((B, K, fx2.shape[2])) if need_spatial_bias_grad
               else fx2.new_empty((0,)))
        dcb = (fx2.new_empty((B, K, fc1.shape[2])) if need_channel_bias_grad
               else fx2.new_empty((0,)))
        return (torch.empty_like(fx2), torch.empty_like(fc2), torch.empty_like(fc1),
                torch.empty_like(phi_weight), torch.empty_like(phi_bias),
                torch.empty_like(psi_weight), torch.empty_like(psi_bias), torch.empty_like(mask),
                dsb, dcb)

    _autograd.register("msca_kernels::msca_fwd", _autograd.msca_autograd("msca_bwd"))


CUDA_MAX_K = 64  # msca_cuda::kMaxK in csrc/cuda/msca_cuda.h


def _validate(fx2, fc2, fc1, phi_weight, psi_weight, mask, phi_bias, psi_bias, spatial_bias,
              channel_bias, return_attention):
    _checks.tensor("fx2", fx2, 4)
    _checks.tensor("fc2", fc2, 4)
    _checks.tensor("fc1", fc1, 4)
    B, N, H2, W2 = fx2.shape
    M2 = fc2.shape[1]
    M1, H1, W1 = fc1.shape[1:]
    if fc2.shape[0] != B or fc1.shape[0] != B:
        raise ValueError(f"fc2, fc1: expected batch size {B} like fx2, got "
                         f"{fc2.shape[0]} and {fc1.shape[0]}")
    if fc2.shape[2:] != fx2.shape[2:]:
        raise ValueError(f"fc2: expected the exemplar size {(H2, W2)} of fx2, "
                         f"got {tuple(fc2.shape[2:])}")
    if min(N, M2, M1, H1, W1, H2, W2) == 0:
        raise ValueError("fx2, fc2, fc1: expected non-empty channel and spatial dimensions, got "
                         f"{tuple(fx2.shape)}, {tuple(fc2.shape)}, {tuple(fc1.shape)}")
    phi2 = _checks.weight_2d("phi_weight", phi_weight, None, N + M2)
    K = phi2.shape[0]
    if K == 0:
        raise ValueError("phi_weight: expected at least one attention map (K >= 1), got K = 0")
    psi2 = _checks.weight_2d("psi_weight", psi_weight, K, M1)
    for name, t, shp in (("mask", mask, (B, K)), ("phi_bias", phi_bias, (K,)),
                         ("psi_bias", psi_bias, (K,)),
                         ("spatial_bias", spatial_bias, (B, K, H2, W2)),
                         ("channel_bias", channel_bias, (B, K, H1, W1))):
        _checks.tensor(name, t, optional=True)
        _checks.shape(name, t, shp)
    _checks.same_device("fx2", fx2, fc2=fc2, fc1=fc1, phi_weight=phi_weight,
                        psi_weight=psi_weight, mask=mask, phi_bias=phi_bias, psi_bias=psi_bias,
                        spatial_bias=spatial_bias, channel_bias=channel_bias)
    _checks.same_dtype("fx2", fx2, fc2=fc2, fc1=fc1)
    if mask is not None:
        _checks.in_unit_interval("mask", mask)
    if not isinstance(return_attention, bool):
        raise TypeError(f"return_attention: expected a bool, got {type(return_attention).__name__}")
    return phi2, psi2, K


def _cast(t, dtype):
    """t in dtype; t itself when it already is (a no-op .to() still costs microseconds of
    dispatch, and this runs for seven arguments on every call)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def msca_attention(fx2, fc2, fc1, phi_weight, psi_weight, mask=None, phi_bias=None,
                   psi_bias=None, *, spatial_bias=None, channel_bias=None,
                   return_attention=False, backend="auto"):
    """Masked spatial-channel attention (paper Eqs. 4-8; docs/design.md section 2).

    fx2 (B,N,H2,W2) exemplar image features, fc2 (B,M2,H2,W2) exemplar label features,
    fc1 (B,M1,H1,W1) target label features; phi_weight (K,N+M2), psi_weight (K,M1) (1x1
    convolution weights (K,C,1,1) are accepted too); mask (B,K) in [0,1] or None for ones (the
    range is checked on CPU tensors; on GPU tensors only with MSCA_CHECK_VALUES=1, as reading
    the values there is a device-to-host sync);
    optional phi_bias, psi_bias (K), spatial_bias (B,K,H2,W2), channel_bias (B,K,H1,W1) added to
    the logits. Returns out (B,N,H1,W1), or (out, alpha, beta) with return_attention=True.
    Weights and biases are cast to the dtype of fx2.
    """
    phi2, psi2, K = _validate(fx2, fc2, fc1, phi_weight, psi_weight, mask, phi_bias, psi_bias,
                              spatial_bias, channel_bias, return_attention)
    name = backends.resolve(backend, fx2.device, fx2.dtype)
    if name == "cuda" and K > CUDA_MAX_K:
        # the CUDA kernels keep a K-vector per thread block in registers/shared memory
        raise ValueError(f"phi_weight: backend 'cuda' supports at most {CUDA_MAX_K} attention "
                         f"maps, got K = {K} (use backend='triton' or 'reference')")
    dt = fx2.dtype
    cast = (lambda t: _cast(t, dt))  # noqa: E731
    args = (cast(phi2), cast(psi2), cast(mask), cast(phi_bias), cast(psi_bias))
    sb, cb = cast(spatial_bias), cast(channel_bias)

    if name == "reference":
        return reference.msca_attention(fx2, fc2, fc1, *args, spatial_bias=sb, channel_bias=cb,
                                        return_attention=return_attention)
    if name == "triton":
        from .triton import msca as triton_msca
        out = triton_msca.msca_forward(fx2, fc2, fc1, *args, spatial_bias=sb, channel_bias=cb)
    else:  # cpu and cuda share the C++ op; the dispatcher picks the kernel by device
        out = _msca_cpp(fx2, fc2, fc1, *args, sb, cb)
    if return_attention:
        alpha, beta = reference.msca_attention_maps(fx2, fc2, fc1, args[0], args[1], args[3],
                                                    args[4], sb, cb)
        return out, alpha, beta
    return out


def _msca_cpp(fx2, fc2, fc1, phi, psi, mask, phi_bias, psi_bias, spatial_bias, channel_bias):
    B, N = fx2.shape[:2]
    H1, W1 = fc1.shape[2:]
    K = phi.shape[0]
    mask, phi_bias, psi_bias = _autograd.msca_defaults(fx2, K, mask, phi_bias, psi_bias)
    flat = lambda t: None if t is None else t.flatten(2).contiguous()  # noqa: E731
    out, _, _ = torch.ops.msca_kernels.msca_fwd(
        flat(fx2), flat(fc2), flat(fc1), phi.contiguous(), phi_bias.contiguous(),
        psi.contiguous(), psi_bias.contiguous(), mask.contiguous(), flat(spatial_bias),
        flat(channel_bias))
    return out.view(B, N, H1, W1)
