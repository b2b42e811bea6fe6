"""The autograd formulas of the fused ops, shared by the C++ ops (cpu, cuda) and the triton ops.

Both op families have the same schemas: msca fwd (fx2, fc2, fc1, phi_weight, phi_bias,
psi_weight, psi_bias, mask, spatial_bias, channel_bias) -> (out, V, lse), its bwd taking the
inputs, V, lse and two flags; spade_norm fwd (x, gamma, beta, mean_in, rstd_in, instance, eps)
-> (out, mean, rstd), its bwd -> (dx, dgamma). Forward saves the inputs and the small per-row
results (V and lse; mean and rstd), never an attention map or a normalised x; backward
recomputes from them. Registered with torch.library.register_autograd, so torch.compile and
opcheck see one differentiable custom op.

The backward ops have no formula of their own: a second derivative through the fused kernels
(create_graph=True, a gradient penalty) is refused with an error that says so. Without that,
autograd would treat the backward op as a constant and the second-order terms would silently
be zero.
"""
from __future__ import annotations

import torch


def msca_defaults(fx2, K, mask, phi_bias, psi_bias):
    """(mask, phi_bias, psi_bias) with None replaced by what the op schemas take: a mask of
    ones (B,K) and zero biases (K), in fx2's dtype and device."""
    if mask is None:
        mask = fx2.new_ones((fx2.shape[0], K))
    if phi_bias is None:
        phi_bias = fx2.new_zeros((K,))
    if psi_bias is None:
        psi_bias = fx2.new_zeros((K,))
    return mask, phi_bias, psi_bias


def _msca_setup_context(ctx, inputs, output):
    (fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask, spatial_bias,
     channel_bias) = inputs
    _, V, lse = output
    ctx.has_spatial_bias = spatial_bias is not None
    ctx.has_channel_bias = channel_bias is not None
    saved = [fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask, V, lse]
    if ctx.has_spatial_bias:
        saved.append(spatial_bias)
    if ctx.has_channel_bias:
        saved.append(channel_bias)
    ctx.save_for_backward(*saved)


def msca_autograd(bwd_name: str):
    """(backward, setup_context) for an msca fwd op whose backward is
    torch.ops.msca_kernels.<bwd_name>."""

    def backward(ctx, grad_out, _grad_V, _grad_lse):
        saved = list(ctx.saved_tensors)
        fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias, mask, V, lse = saved[:10]
        rest = saved[10:]
        spatial_bias = rest.pop(0) if ctx.has_spatial_bias else None
        channel_bias = rest.pop(0) if ctx.has_channel_bias else None
        need = ctx.needs_input_grad
        need_sb = bool(ctx.has_spatial_bias and need[8])
        need_cb = bool(ctx.has_channel_bias and need[9])
        grads = getattr(torch.ops.msca_kernels, bwd_name)(
            grad_out.contiguous(), fx2, fc2, fc1, phi_weight, phi_bias, psi_weight, psi_bias,
            mask, spatial_bias, channel_bias, V, lse, need_sb, need_cb)
        dfx2, dfc2, dfc1, dphi, dphi_b, dpsi, dpsi_b, dmask, dsb, dcb = grads
        return (dfx2, dfc2, dfc1, dphi, dphi_b, dpsi, dpsi_b, dmask,
                dsb if need_sb else None, dcb if need_cb else None)

    backward.bwd_op = f"msca_kernels::{bwd_name}"
    return backward, _msca_setup_context


def _spade_setup_context(ctx, inputs, output):
    x, gamma, _beta, mean_in, _rstd_in, instance, _eps = inputs
    _, mean, rstd = output
    ctx.instance = instance
    ctx.batch_stats = mean_in is None  # given statistics (eval) are constants
    ctx.save_for_backward(x, gamma, mean, rstd)


def spade_autograd(bwd_name: str):
    """(backward, setup_context) for a spade_norm fwd op whose backward is
    torch.ops.msca_kernels.<bwd_name>."""

    def backward(ctx, grad_out, _grad_mean, _grad_rstd):
        x, gamma, mean, rstd = ctx.saved_tensors
        dx, dgamma = getattr(torch.ops.msca_kernels, bwd_name)(
            grad_out.contiguous(), x, gamma, mean, rstd, ctx.instance, ctx.batch_stats)
        return dx, dgamma, grad_out, None, None, None, None  # dbeta = dy

    backward.bwd_op = f"msca_kernels::{bwd_name}"
    return backward, _spade_setup_context


def _no_double_backward(bwd_op: str):
    public = "spade_norm" if "spade" in bwd_op else "msca_attention"

    def backward(ctx, *grads):
        raise RuntimeError(
            f"{public}: double backward (a derivative of a gradient taken with "
            f"create_graph=True, e.g. a gradient penalty) is not implemented by the fused "
            f"kernels ({bwd_op}); use backend='reference' for this computation")

    def setup_context(ctx, inputs, output):
        pass

    return backward, setup_context


def register(fwd_op: str, formula) -> None:
    """Registers the autograd formula of fwd_op, and for its backward op (named by the formula)
    one that refuses a second derivative."""
    backward, setup_context = formula
    torch.library.register_autograd(fwd_op, backward, setup_context=setup_context)
    bwd_op = getattr(backward, "bwd_op", None)
    if bwd_op is not None:
        refuse, noop = _no_double_backward(bwd_op)
        torch.library.register_autograd(bwd_op, refuse, setup_context=noop)
