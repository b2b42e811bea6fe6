"""The light feature decoder of Appendix G, for MSCA pretraining.

Per scale a 1x1 convolution maps [Fx1^(i), Fc1^(i)] to the VGG-19 features of the target image
x1 at that scale (the same relu1_2..relu5_4 features the generator compresses), so the feature
extractors and the MSCA modules can be trained without back-propagating through SPADE.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .vgg import SCALE_CHANNELS

# The paper "weighted sum[s] the L1 losses" without giving the weights; SPADE's VGG-loss weights
# (coarse features weigh more) are our choice, in the same scale order (scale 0 finest).
DEFAULT_DECODER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class FeatureDecoder(nn.Module):
    def __init__(self, image_feature_nc, label_feature_nc, out_channels=SCALE_CHANNELS,
                 loss_weights=DEFAULT_DECODER_WEIGHTS):
        super().__init__()
        n = len(out_channels)
        if not (len(image_feature_nc) == len(label_feature_nc) == len(loss_weights) == n):
            raise ValueError("image_feature_nc, label_feature_nc, out_channels and loss_weights "
                             f"need one entry per scale ({n})")
        self.convs = nn.ModuleList(nn.Conv2d(a + b, c, 1) for a, b, c in
                                   zip(image_feature_nc, label_feature_nc, out_channels))
        self.loss_weights = tuple(float(w) for w in loss_weights)

    def forward(self, fx1: list[torch.Tensor], fc1: list[torch.Tensor]) -> list[torch.Tensor]:
        """[Fx1^(i)], [Fc1^(i)] -> predicted VGG features of x1 per scale."""
        if len(fx1) != len(self.convs) or len(fc1) != len(self.convs):
            raise ValueError(f"fx1, fc1: expected {len(self.convs)} scales each")
        return [conv(torch.cat([a, b], dim=1)) for conv, a, b in zip(self.convs, fx1, fc1)]

    def loss(self, predictions: list[torch.Tensor], targets: list[torch.Tensor],
             return_per_scale: bool = False):
        """sum_i w_i * L1(pred_i, target_i) (targets detached)."""
        if len(predictions) != len(targets):
            raise ValueError(f"expected {len(predictions)} target scales, got {len(targets)}")
        per_scale = []
        for i, (p, t) in enumerate(zip(predictions, targets)):
            if p.shape != t.shape:
                raise ValueError(f"scale {i}: prediction {tuple(p.shape)} and target "
                                 f"{tuple(t.shape)} differ in shape")
            per_scale.append(F.l1_loss(p, t.detach()))
        total = sum(w * l for w, l in zip(self.loss_weights, per_scale))
        return (total, per_scale) if return_per_scale else total


def pretrain_loss(generator, decoder: FeatureDecoder, label, exemplar, exemplar_label,
                  target_image, return_per_scale: bool = False):
    """Appendix G in one call: align x2's features to c1, decode, compare with VGG(x1)."""
    features = generator.extract_features(label, exemplar, exemplar_label)
    fx1 = generator.align(features)
    targets = generator.vgg_features(target_image)
    return decoder.loss(decoder(fx1, features.fc1), targets, return_per_scale)
