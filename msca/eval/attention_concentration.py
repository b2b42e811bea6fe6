"""How concentrated MSCA's attention maps are, from the maps alone.

alpha (B,K,h2,w2): K spatial softmaxes over the exemplar's P2 = h2*w2 positions (each sums to
1); beta (B,K,h1,w1): at every target position a softmax over the K maps. Uniform attention is
the reference for every figure: alpha = 1/P2 everywhere is global average pooling.
"""
from __future__ import annotations

import math

import torch


def top_share(maps: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """maps (..., P) of probabilities -> (...) the mass on the top ceil(fraction * P)
    positions (uniform maps: ceil(fraction * P) / P; a one-hot map: 1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: expected in (0, 1], got {fraction!r}")
    n = max(1, math.ceil(fraction * maps.shape[-1]))
    return maps.double().topk(n, dim=-1).values.sum(-1)


def normalised_entropy(maps: torch.Tensor) -> torch.Tensor:
    """maps (..., P) of probabilities -> (...) entropy / log P, in [0, 1] (uniform: 1,
    one-hot: 0). A single position (P = 1) gives 0."""
    p = maps.double()
    P = p.shape[-1]
    if P < 2:
        return torch.zeros(p.shape[:-1], dtype=torch.float64, device=p.device)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    return h / math.log(P)


def beta_max_mean(beta: torch.Tensor) -> torch.Tensor:
    """beta (B,K,h1,w1) -> (B,) the mean over target positions of max_k beta (uniform: 1/K)."""
    return beta.double().amax(1).flatten(1).mean(1)


def class_purity(alpha: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha (B,K,P2), the exemplar's one-hot labels at the same scale onehot (B,P2,C) ->
    (purity (B,K): each map's mass on its dominant class, uniform (B,): the same for uniform
    attention, i.e. the exemplar's largest class fraction)."""
    mass = torch.bmm(alpha.double(), onehot.double())                 # (B,K,C)
    uniform = onehot.double().mean(1).amax(-1)                        # (B,)
    return mass.amax(-1), uniform


__all__ = ["beta_max_mean", "class_purity", "normalised_entropy", "top_share"]
