"""The training objective, Eq. 11:

    L(G, D) = L_GAN(x_p, x_hat_p | c_p, x_q, c_q) + L_spade(x_hat_p, x_p)           (cross, patch)
            + lambda * [L_GAN(x, x_hat | c, x, c) + L_spade(x_hat, x)]               (self, global)

with lambda = 1. The paper writes the GAN term in log form but builds on SPADE, whose default
and ours is the hinge loss. L_spade is "the VGG and GAN feature matching losses defined in
[SPADE]": lambda_vgg * sum_l w_l |VGG_l(x_hat) - VGG_l(x)|_1 (w = 1/32..1 on relu1_1..relu5_1)
and lambda_feat * mean over D scales of sum over D's intermediate layers of the L1 distance
between fake and (detached) real features; SPADE's lambda_vgg = lambda_feat = 10.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vgg import VGG19, VGGLoss


def hinge_g_loss(pred_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Generator side: -mean(D(fake)), averaged over discriminator scales."""
    return sum(-p[-1].mean() for p in pred_fake) / len(pred_fake)


def hinge_d_loss(pred_fake: list[list[torch.Tensor]], pred_real: list[list[torch.Tensor]]):
    """Discriminator side: (mean(relu(1 + D(fake))), mean(relu(1 - D(real)))), each averaged
    over discriminator scales."""
    fake = sum(F.relu(1.0 + p[-1]).mean() for p in pred_fake) / len(pred_fake)
    real = sum(F.relu(1.0 - p[-1]).mean() for p in pred_real) / len(pred_real)
    return fake, real


def feature_matching_loss(pred_fake: list[list[torch.Tensor]],
                          pred_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """sum over D's intermediate outputs (not the final prediction) of L1(fake, real.detach()),
    averaged over discriminator scales (SPADE's GAN_Feat loss without its lambda)."""
    if len(pred_fake) != len(pred_real):
        raise ValueError("pred_fake and pred_real: different numbers of discriminator scales")
    loss = pred_fake[0][0].new_zeros(())
    for pf, pr in zip(pred_fake, pred_real):
        for a, b in zip(pf[:-1], pr[:-1]):
            loss = loss + F.l1_loss(a, b.detach())
    return loss / len(pred_fake)


class Task(NamedTuple):
    """One reconstruction task's tensors: D outputs on the fake and real inputs (both
    conditioned the same way), the generated image and its ground truth."""
    pred_fake: list
    pred_real: list
    fake: torch.Tensor
    real: torch.Tensor


class SynthesisLoss(nn.Module):
    """Eq. 11 split into named terms.

    generator(cross=Task, global_=Task) -> {"cross/gan", "cross/feat", "cross/vgg",
    "global/gan", ...}: each already multiplied by its lambda (and the global ones by
    lambda_global), so the generator minimises the sum (`total`). Either task may be None (the
    first training stage uses the patch task alone). discriminator(...) -> {"cross/d_fake",
    "cross/d_real", ...} likewise. For the discriminator pass the Task's fake must be detached
    by the caller (its pred_fake computed from fake.detach()); fake/real images are not needed
    there and may be None.
    """

    def __init__(self, vgg: VGG19 | None, *, lambda_feat: float = 10.0,
                 lambda_vgg: float = 10.0, lambda_global: float = 1.0):
        super().__init__()
        if lambda_vgg > 0 and vgg is None:
            raise ValueError("vgg: the VGG perceptual loss (lambda_vgg > 0) needs a VGG19")
        self.vgg_loss = VGGLoss(vgg) if (vgg is not None and lambda_vgg > 0) else None
        self.lambda_feat = float(lambda_feat)
        self.lambda_vgg = float(lambda_vgg)
        self.lambda_global = float(lambda_global)

    def _g_terms(self, t: Task, weight: float, prefix: str, out: dict) -> None:
        out[f"{prefix}/gan"] = weight * hinge_g_loss(t.pred_fake)
        if self.lambda_feat > 0:
            out[f"{prefix}/feat"] = weight * self.lambda_feat * feature_matching_loss(
                t.pred_fake, t.pred_real)
        if self.vgg_loss is not None:
            out[f"{prefix}/vgg"] = weight * self.lambda_vgg * self.vgg_loss(t.fake, t.real)

    def generator(self, cross: Task | None = None, global_: Task | None = None) -> dict:
        if cross is None and global_ is None:
            raise ValueError("generator: give at least one of cross, global_")
        out: dict[str, torch.Tensor] = {}
        if cross is not None:
            self._g_terms(cross, 1.0, "cross", out)
        if global_ is not None:
            self._g_terms(global_, self.lambda_global, "global", out)
        return out

    def discriminator(self, cross: Task | None = None, global_: Task | None = None) -> dict:
        if cross is None and global_ is None:
            raise ValueError("discriminator: give at least one of cross, global_")
        out: dict[str, torch.Tensor] = {}
        for prefix, t, w in (("cross", cross, 1.0), ("global", global_, self.lambda_global)):
            if t is None:
                continue
            fake, real = hinge_d_loss(t.pred_fake, t.pred_real)
            out[f"{prefix}/d_fake"] = w * fake
            out[f"{prefix}/d_real"] = w * real
        return out


def total(losses: dict) -> torch.Tensor:
    """The sum of a dict of (already weighted) loss terms."""
    if not losses:
        raise ValueError("total: empty loss dict")
    return sum(losses.values())
