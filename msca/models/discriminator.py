"""Multi-scale PatchGAN discriminator (pix2pixHD / SPADE), conditioned on the exemplar.

D(x, c, x2, c2) of Eq. 11 sees [image, onehot(c), exemplar resized to the image, onehot(c2)
resized (nearest) to the image]; the one-hot maps are built at the discriminator's resolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import add_spectral_norm, init_weights
from .encoders import check_labels, label_indices, resize_labels


def one_hot(labels: torch.Tensor, num_classes: int, ignore_label: int | None,
            dtype: torch.dtype) -> torch.Tensor:
    """(B,H,W) int -> (B,num_classes,H,W); the ignore label gives an all-zero vector."""
    idx = label_indices(labels, num_classes, ignore_label)
    out = torch.zeros(idx.shape[0], num_classes + 1, *idx.shape[1:], dtype=dtype,
                      device=idx.device)
    out.scatter_(1, idx.unsqueeze(1), 1.0)
    return out[:, :num_classes]


class NLayerDiscriminator(nn.Module):
    """One PatchGAN: conv4x4/2 + LReLU, then n_layers-1 blocks of conv4x4 (stride 2, the last
    stride 1) + [spectral norm] + InstanceNorm + LReLU, then conv4x4 -> 1 channel. Returns the
    output of every block (the last is the patch prediction)."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 4,
                 spectral_norm: bool = True):
        super().__init__()
        kw, padw = 4, int(math.ceil((4 - 1.0) / 2))
        nf = ndf
        blocks = [nn.Sequential(nn.Conv2d(input_nc, nf, kw, stride=2, padding=padw),
                                nn.LeakyReLU(0.2))]
        self._sn_convs: list[tuple[int, int]] = []
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            blocks.append(nn.Sequential(
                nn.Conv2d(nf_prev, nf, kw, stride=stride, padding=padw),
                nn.InstanceNorm2d(nf, affine=False), nn.LeakyReLU(0.2)))
            if spectral_norm:
                self._sn_convs.append((len(blocks) - 1, 0))
        blocks.append(nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=padw)))
        self.model = nn.ModuleList(blocks)

    def add_spectral_norm(self) -> None:
        for b, j in self._sn_convs:
            self.model[b][j] = add_spectral_norm(self.model[b][j])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.model:
            x = block(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """`num_D` PatchGANs on the input downsampled by 2 each time (3x3 average pooling, stride
    2, as pix2pixHD). forward(...) -> one list per scale (finest first) of block outputs; the
    last of each is the patch prediction, the others serve feature matching."""

    def __init__(self, num_classes: int, *, ignore_label: int | None = 255, ndf: int = 64,
                 n_layers: int = 4, num_D: int = 2, spectral_norm: bool = True,
                 init_type: str = "xavier", init_gain: float = 0.02):
        super().__init__()
        if num_D < 1 or n_layers < 1:
            raise ValueError(f"num_D, n_layers: expected >= 1, got {num_D}, {n_layers}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.input_nc = 3 + num_classes + 3 + num_classes
        self.discriminators = nn.ModuleList(
            NLayerDiscriminator(self.input_nc, ndf, n_layers, spectral_norm)
            for _ in range(num_D))
        init_weights(self, init_type, init_gain)
        for d in self.discriminators:
            d.add_spectral_norm()

    def condition(self, image, label, exemplar, exemplar_label) -> torch.Tensor:
        """The concatenated input [image, onehot(c), exemplar, onehot(c2)] at image size."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image: expected (B,3,H,W), got {tuple(image.shape)}")
        if exemplar.dim() != 4 or exemplar.shape[1] != 3:
            raise ValueError(f"exemplar: expected (B,3,H,W), got {tuple(exemplar.shape)}")
        check_labels("label", label, self.num_classes, self.ignore_label)
        check_labels("exemplar_label", exemplar_label, self.num_classes, self.ignore_label)
        B, _, H, W = image.shape
        if label.shape != (B, H, W):
            raise ValueError(f"label: expected shape {(B, H, W)} (the image's), "
                             f"got {tuple(label.shape)}")
        if exemplar.shape[0] != B or exemplar_label.shape != (B, *exemplar.shape[2:]):
            raise ValueError(f"exemplar, exemplar_label: expected batch {B} and matching sizes,"
                             f" got {tuple(exemplar.shape)}, {tuple(exemplar_label.shape)}")
        if exemplar.shape[2:] != image.shape[2:]:
            exemplar = F.interpolate(exemplar, size=(H, W), mode="bilinear",
                                     align_corners=False)
        c2 = resize_labels(exemplar_label, (H, W))
        return torch.cat([image, one_hot(label, self.num_classes, self.ignore_label, image.dtype),
                          exemplar.to(image.dtype),
                          one_hot(c2, self.num_classes, self.ignore_label, image.dtype)], dim=1)

    def forward(self, image, label, exemplar, exemplar_label) -> list[list[torch.Tensor]]:
        x = self.condition(image, label, exemplar, exemplar_label)
        results = []
        for i, d in enumerate(self.discriminators):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            results.append(d(x))
        return results
