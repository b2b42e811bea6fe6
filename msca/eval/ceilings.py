"""Ceilings for the demo's PSNR table: what two predictors that *see the ground truth* reach.

They are not baselines (no method could use them); they say how much room the table leaves.

- `truth_class_mean`: each target class painted with its mean colour in the ground truth
  itself: the best any one-colour-per-class paste (the mean-colour and class-prior baselines)
  can do on that pair.
- `truth_untextured`: the target layout rendered in the exemplar's style with every texture
  amplitude zero (procedural scenes only): light, gradients, shadows and instance colours are
  kept, so this is the predictable part of the ground truth; what stays is texture noise that
  no method can know from the exemplar.
"""
from __future__ import annotations

import torch

from msca.data.procedural import (image_to_tensor, layout_from_seed, render, style_from_seed,
                                  untextured)

from .baselines import class_mean_colour
from .metrics import psnr


def truth_class_mean_psnr(label: torch.Tensor, target: torch.Tensor,
                          ignore_label: int | None = 255) -> torch.Tensor:
    """(B,) PSNR of the target's own per-class mean colour pasted on its layout."""
    return psnr(class_mean_colour(label, target, label, ignore_label=ignore_label), target)


def truth_untextured_psnr(items: list[dict], target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR of the untextured render of each CrossScenePairs item (layout A, style B)."""
    h, w = target.shape[-2:]
    preds = [image_to_tensor(render(layout_from_seed(it["layout_seed_a"]),
                                    untextured(style_from_seed(it["style_seed_b"])), h, w))
             for it in items]
    return psnr(torch.stack(preds).to(target), target)


__all__ = ["truth_class_mean_psnr", "truth_untextured_psnr"]
