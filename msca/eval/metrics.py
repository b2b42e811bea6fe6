"""The image metrics of Table 1, implemented here: PSNR, SSIM, style loss, LPIPS and FID.

All take images as (B,3,H,W) tensors in [-1,1] (the generator's range) and return one value
per image (PSNR, SSIM, style loss, LPIPS) or one value per set (FID).

Where a well-kept library computes the same measure, a test checks that ours agrees with it on
the same inputs (tests/msca/test_metrics_agree_with_libraries.py): PSNR with torchmetrics
(to 1e-6 dB), SSIM with torchmetrics' SSIM map over the same 'valid' windows (to 1e-6;
torchmetrics' own mean also counts reflection-padded border windows, within 0.02 of ours on
32x40 images), the Frechet distance with scipy.linalg.sqrtm's formula (relative 1e-7). They
are kept here rather than imported so the evaluation has no dependency beyond torch: the
libraries are test requirements only. LPIPS and FID need pretrained weights that the libraries
would download; ours read them from local files.

- PSNR: on the [0,1] scale, peak 1, per image.
- SSIM: Wang et al. 2004, Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, on [0,1]
  per channel ('valid' windows only, no padding), averaged over channels and positions.
- Style loss (Gatys et al., the paper's [9]): the mean over VGG-19 layers relu1_1..relu5_1 of
  the mean squared difference of the Gram matrices G = F F^T / (C H W). The VGG-19 is the
  generator's (msca/models/vgg.py): ImageNet weights when given, random frozen ones otherwise,
  and the table says which.
- LPIPS (Zhang et al. 2018, "lin" variant on VGG-16, as the paper): unit-normalised VGG-16
  features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, squared differences weighted per
  channel by the learned linear layers, averaged over positions, summed over layers. Needs two
  local files: torchvision's ImageNet VGG-16 state_dict (vgg16-397923af.pth) and the LPIPS
  linear layers (the lpips package's weights/v0.1/vgg.pth, keys lin0.model.1.weight ..
  lin4.model.1.weight). Without them LPIPS is reported as unavailable, never estimated.
- FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to Inception pool
  features of the two sets. The Inception network is read from a local TorchScript file (the
  one StyleGAN2-ADA/StyleGAN3 and clean-fid use, inception-2015-12-05.pt: called as
  net(uint8 images (B,3,299,299), return_features=True) -> (B,2048)). Without it, unavailable.
  With fewer images than feature dimensions the covariance is rank-deficient and the value is
  biased upwards; the table notes the sample count.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from msca.models.vgg import PERCEPTUAL_LAYERS, VGG19

UNAVAILABLE = "unavailable (no weights)"


def _check_images(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected images (B,3,H,W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating tensor in [-1,1], got {x.dtype}")


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    _check_images("pred", pred)
    _check_images("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred, target: expected the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


# --------------------------------------------------------------------------- PSNR / SSIM
def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB on the [0,1] scale (peak 1); pred is clamped to [-1,1] first."""
    _check_pair(pred, target)
    mse = ((pred.double().clamp(-1, 1) - target.double()) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-20))


def _gaussian_window(size: int, sigma: float, dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, *, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per image SSIM (mean over channels and 'valid' window positions) on the [0,1] scale."""
    _check_pair(pred, target)
    H, W = pred.shape[-2:]
    if min(H, W) < window:
        raise ValueError(f"pred: SSIM with a {window}x{window} window needs images at least "
                         f"that large, got {H}x{W}")
    x = (pred.double().clamp(-1, 1) + 1) / 2
    y = (target.double() + 1) / 2
    g = _gaussian_window(window, sigma, torch.float64)
    C = x.shape[1]
    gh = g.view(1, 1, 1, -1).expand(C, 1, 1, window)
    gv = g.view(1, 1, -1, 1).expand(C, 1, window, 1)

    def blur(t):  # separable Gaussian, depthwise
        return F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


# --------------------------------------------------------------------------- style loss
def gram(f: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,C), normalised by C*H*W."""
    B, C, H, W = f.shape
    f = f.reshape(B, C, H * W)
    return f @ f.transpose(1, 2) / (C * H * W)


@torch.no_grad()
def target_gram_matrices(target: torch.Tensor, vgg: VGG19, layers=PERCEPTUAL_LAYERS) -> list:
    """The Gram matrices (float64) of `target` at `layers`, for reuse across style_loss calls."""
    _check_images("target", target)
    return [gram(f.double()) for f in vgg(target.float(), layers)]


@torch.no_grad()
def style_loss(pred: torch.Tensor, target: torch.Tensor, vgg: VGG19,
               layers=PERCEPTUAL_LAYERS, target_grams: list | None = None) -> torch.Tensor:
    """Per image: mean over `layers` of mean((Gram(pred) - Gram(target))^2).
    `target_grams`: target_gram_matrices(target, vgg, layers) if already computed."""
    _check_pair(pred, target)
    if target_grams is None:
        target_grams = target_gram_matrices(target, vgg, layers)
    fp = vgg(pred.float().clamp(-1, 1), layers)
    per = [(gram(a.double()) - b).pow(2).flatten(1).mean(1) for a, b in zip(fp, target_grams)]
    return torch.stack(per).mean(0)


# --------------------------------------------------------------------------- LPIPS
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M")
# Indices in torchvision's vgg16().features of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
LPIPS_VGG16_TAPS = (3, 8, 15, 22, 29)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer: inputs in [-1,1] shifted and scaled to ImageNet statistics.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS-lin on VGG-16 (see the module docstring). Parameter names follow torchvision
    (`features.<i>`) and the lpips package (`lin<l>.model.1.weight`), so both files load."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers[:LPIPS_VGG16_TAPS[-1] + 1])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg16_path: str, lin_path: str) -> "LPIPS":
        m = cls()
        for arg, path in (("--lpips-vgg16", vgg16_path), ("--lpips-lin", lin_path)):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{arg} {path!r}: no such file")
        try:
            sd = torch.load(vgg16_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--lpips-vgg16 {vgg16_path!r}: cannot read: {e}") from e
        feats = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        keep = {k: v for k, v in feats.items() if int(k.split(".")[0]) < len(m.features)}
        try:
            m.features.load_state_dict(keep, strict=True)
        except RuntimeError as e:
            raise ValueError(f"--lpips-vgg16 {vgg16_path!r}: not a torchvision VGG-16 "
                             f"state_dict: {e}") from e
        try:
            lin = torch.load(lin_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--lpips-lin {lin_path!r}: cannot read: {e}") from e
        for i, conv in enumerate(m.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin or tuple(lin[key].shape) != tuple(conv.weight.shape):
                raise ValueError(f"--lpips-lin {lin_path!r}: expected {key} of shape "
                                 f"{tuple(conv.weight.shape)} (the lpips package's "
                                 "weights/v0.1/vgg.pth)")
            conv.weight.data.copy_(lin[key])
        return m

    def train(self, mode: bool = True):
        return super().train(False)

    @torch.no_grad()
    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target)
        x = (pred.float().clamp(-1, 1) - self.shift) / self.scale
        y = (target.float() - self.shift) / self.scale
        taps = set(LPIPS_VGG16_TAPS)
        total = x.new_zeros(x.shape[0])
        li = 0
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in taps:
                nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + self.lins[li]((nx - ny).pow(2)).mean(dim=(1, 2, 3))
                li += 1
        return total


# --------------------------------------------------------------------------- FID
def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor,
                     cov2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1^(1/2) S2 S1^(1/2)): that matrix is
    symmetric positive semi-definite, so eigh is exact and stable (no complex sqrtm)."""
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    w, v = torch.linalg.eigh((cov1 + cov1.T) / 2)
    s1 = (v * w.clamp_min(0).sqrt()) @ v.T
    m = s1 @ cov2 @ s1
    ev = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2)
                 - 2 * ev.sqrt().sum())


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) features -> mean (d,), unbiased covariance (d, d), float64."""
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"features: expected (n >= 2, d), got {tuple(feats.shape)}")
    f = feats.double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


class InceptionFeatures:
    """The FID feature extractor from a local TorchScript file (see the module docstring)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--fid-inception {path!r}: no such file")
        try:
            self.net = torch.jit.load(path, map_location="cpu").eval()
        except Exception as e:
            raise ValueError(f"--fid-inception {path!r}: not a TorchScript Inception "
                             f"feature network: {e}") from e
        self.path = path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
        _check_images("images", images)
        out = []
        for i in range(0, images.shape[0], batch):
            x = images[i:i + batch].float().clamp(-1, 1)
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            x = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            f = self.net(x, return_features=True)
            out.append(f.reshape(f.shape[0], -1).double())
        return torch.cat(out)


def fid(features_fake: torch.Tensor, features_real: torch.Tensor) -> float:
    return frechet_distance(*gaussian_stats(features_fake), *gaussian_stats(features_real))


def finite_mean(values) -> float:
    t = torch.as_tensor(values, dtype=torch.float64)
    return float(t.mean()) if t.numel() else math.nan
