"""Self-supervised correspondence losses on the MSCA attention (ours; not in the paper).

Both training tasks know the target image and its labels, and the exemplar's image and labels.
Carrying a known exemplar quantity through a scale's attention must give the same quantity at
the target, if the attention finds corresponding regions:

    carried[c, t] = sum_k (sum_j values[c, j] alpha[k, j]) beta[k, t]

- label transfer: values = the exemplar's (area-downsampled) one-hot labels; cross-entropy
  against the target's labels, over target pixels whose class the exemplar has;
- colour warp: values = the exemplar's RGB at that scale; L1 against the target's RGB.

Without them nothing but the image losses far downstream asks the attention to be a
correspondence, and MSCA drifts to global average pooling (flat maps). The maps are computed
here in plain PyTorch, differentiably, from the same projections the fused kernel uses
(`msca_kernels.nn.MSCA.projections`, temperatures included); the feature mask is left out, it
gates features, not correspondences. At training resolution the maps are small (K x h*w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import msca_kernels as mk


def attention_maps(module: "mk.nn.MSCA", fx2: torch.Tensor, fc2: torch.Tensor,
                   fc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha (B,K,P2) softmax over exemplar positions, beta (B,K,P1) softmax over K: the
    reference op's maps, with the module's temperatures folded in as the kernels see them."""
    phi_w, psi_w, phi_b, psi_b = module.projections()
    alpha, beta = mk.reference.msca_attention_maps(fx2, fc2, fc1, phi_w, psi_w, phi_b, psi_b)
    return alpha.flatten(2).float(), beta.flatten(2).float()


def carry(values: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """values (B,C,P2) through the attention -> (B,C,P1)."""
    return torch.bmm(torch.bmm(values, alpha.transpose(1, 2)), beta)


def soft_labels(label: torch.Tensor, num_classes: int, size) -> torch.Tensor:
    """(B,H,W) class ids (ignore label: any id >= num_classes) -> (B,C,h,w) class fractions
    of each cell (area downsampling of the one-hot map; ignored pixels count for no class)."""
    ids = label.long().clone()
    ids[(ids < 0) | (ids >= num_classes)] = num_classes
    onehot = F.one_hot(ids, num_classes + 1)[..., :num_classes].permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, size) if tuple(onehot.shape[-2:]) != tuple(size) \
        else onehot


def resize_image(image: torch.Tensor, size) -> torch.Tensor:
    return (F.adaptive_avg_pool2d(image.float(), size)
            if tuple(image.shape[-2:]) != tuple(size) else image.float())


def label_transfer_loss(alpha, beta, exemplar_label, target_label, num_classes, size2, size1):
    """Cross-entropy of the carried exemplar labels against the target's, over the target
    mass whose class occurs in the exemplar (a class the exemplar lacks cannot be found)."""
    src = soft_labels(exemplar_label, num_classes, size2).flatten(2)           # (B,C,P2)
    tgt = soft_labels(target_label, num_classes, size1).flatten(2)             # (B,C,P1)
    present = (src.sum(dim=2, keepdim=True) > 0).float()                       # (B,C,1)
    tgt = tgt * present
    weight = tgt.sum(dim=1)                                                    # (B,P1)
    pred = carry(src, alpha, beta).clamp_min(1e-6)
    ce = -(tgt * pred.log()).sum(dim=1)                                        # (B,P1)
    return ce.sum() / weight.sum().clamp_min(1.0)


def colour_warp_loss(alpha, beta, exemplar, target_image, size2, size1):
    """L1 between the exemplar's RGB carried through the attention and the target's RGB."""
    src = resize_image(exemplar, size2).flatten(2)
    tgt = resize_image(target_image, size1).flatten(2)
    return F.l1_loss(carry(src, alpha, beta), tgt)


def correspondence_losses(generator, features, exemplar, target_image, *,
                          lambda_label: float, lambda_rgb: float) -> dict:
    """{"corr_label": ..., "corr_rgb": ...} (already weighted, averaged over the scales with
    equal weights so the finest scale learns as much as the coarsest), or {} for a generator
    without learned attention (the GAP / label-matching ablations, the style-code baseline).
    `features`: the generator's Features of this forward pass (target label = features.label,
    exemplar label = features.exemplar_label)."""
    modules = getattr(generator, "align_modules", None)
    if (lambda_label <= 0 and lambda_rgb <= 0) or modules is None or \
            not all(isinstance(m, mk.nn.MSCA) for m in modules):
        return {}
    C = generator.num_classes
    label_terms, rgb_terms = [], []
    for m, fx2, fc2, fc1 in zip(modules, features.fx2, features.fc2, features.fc1):
        size2, size1 = tuple(fx2.shape[-2:]), tuple(fc1.shape[-2:])
        alpha, beta = attention_maps(m, fx2, fc2, fc1)
        if lambda_label > 0:
            label_terms.append(label_transfer_loss(alpha, beta, features.exemplar_label,
                                                   features.label, C, size2, size1))
        if lambda_rgb > 0:
            rgb_terms.append(colour_warp_loss(alpha, beta, exemplar, target_image,
                                              size2, size1))
    out = {}
    if label_terms:
        out["corr_label"] = lambda_label * sum(label_terms) / len(label_terms)
    if rgb_terms:
        out["corr_rgb"] = lambda_rgb * sum(rgb_terms) / len(rgb_terms)
    return out
