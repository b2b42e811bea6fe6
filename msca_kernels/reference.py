"""Naive PyTorch implementations of both ops: the ground truth of the tests and the baseline of
the benchmarks. They materialise everything (the K x P attention maps, the concatenated
exemplar features, the normalised x) exactly as a straightforward einsum implementation would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def safe_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax that returns zeros (not NaN) for a slice whose logits are all -inf.

    A row of -inf logits is how style interpolation with weight 0 switches an exemplar off; the
    kernels define that case as "attends to nothing", and so does the reference.
    """
    m = logits.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(logits - m)
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def msca_attention_maps(fx2, fc2, fc1, phi_weight, psi_weight, phi_bias=None, psi_bias=None,
                        spatial_bias=None, channel_bias=None):
    """The spatial attention alpha (B,K,H2,W2) and channel attention beta (B,K,H1,W1)."""
    B, N, H2, W2 = fx2.shape
    H1, W1 = fc1.shape[-2:]
    K = phi_weight.shape[0]
    x = torch.cat([fx2, fc2], dim=1).flatten(2)
    a = torch.einsum("kc,bcj->bkj", phi_weight.reshape(K, -1), x)
    if phi_bias is not None:
        a = a + phi_bias.reshape(1, K, 1)
    if spatial_bias is not None:
        a = a + spatial_bias.reshape(B, K, -1)
    b = torch.einsum("kc,bct->bkt", psi_weight.reshape(K, -1), fc1.flatten(2))
    if psi_bias is not None:
        b = b + psi_bias.reshape(1, K, 1)
    if channel_bias is not None:
        b = b + channel_bias.reshape(B, K, -1)
    alpha = safe_softmax(a, dim=2)
    beta = safe_softmax(b, dim=1)
    return alpha.reshape(B, K, H2, W2), beta.reshape(B, K, H1, W1)


def msca_attention(fx2, fc2, fc1, phi_weight, psi_weight, mask=None, phi_bias=None,
                   psi_bias=None, *, spatial_bias=None, channel_bias=None,
                   return_attention=False):
    """Masked spatial-channel attention (paper Eqs. 4-8), the naive way."""
    B, N = fx2.shape[:2]
    H1, W1 = fc1.shape[-2:]
    alpha, beta = msca_attention_maps(fx2, fc2, fc1, phi_weight, psi_weight, phi_bias, psi_bias,
                                      spatial_bias, channel_bias)
    V = torch.einsum("bnj,bkj->bnk", fx2.flatten(2), alpha.flatten(2))
    if mask is not None:
        V = V * mask.unsqueeze(1)
    out = torch.einsum("bnk,bkt->bnt", V, beta.flatten(2)).reshape(B, N, H1, W1)
    if return_attention:
        return out, alpha, beta
    return out


def spade_norm(x, gamma, beta, *, mode="batch", eps=1e-5, running_mean=None, running_var=None,
               momentum=0.1, training=True):
    """Unfused SPADE denormalisation: parameter-free norm, then (1 + gamma) * xn + beta."""
    if mode == "batch":
        use_batch_stats = training or running_mean is None
        xn = F.batch_norm(x, running_mean, running_var, None, None, use_batch_stats, momentum, eps)
    elif mode == "instance":
        xn = F.instance_norm(x, eps=eps)
    else:
        raise ValueError(f"mode: expected 'batch' or 'instance', got {mode!r}")
    return xn * (1 + gamma) + beta
