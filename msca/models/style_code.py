"""The global-style-code baseline of Table 1 ("SPADE VAE"-like): no MSCA, no exemplar label.

    mu, logvar = E(x2)                        conv encoder of the exemplar image (SPADE's
                                              ConvEncoder: 3x3 stride-2 convs, instance norm,
                                              LReLU, then two linear heads)
    z = mu + exp(logvar / 2) * eps            in training (the reparameterisation trick);
    z = mu                                    in eval mode (deterministic exemplar-guided output)
    x = fc(z) -> (C4, 4, 4), resized to the target's 1/16 size
    for i = 4..0: x = SPADEResBlk^(i)(x, onehot(c1)); upsample x2 (i > 0)
    x_hat = tanh(conv3x3(LReLU(x)))
    KL = -1/2 * sum(1 + logvar - mu^2 - exp(logvar))     (SPADE's KLDLoss: summed over batch
                                                          and code dimensions)

The style of the whole exemplar is squeezed into one vector z and the layout comes only from
the target label map, so the model cannot move a class's appearance from where it is in the
exemplar to where it is in the target; that is exactly what MSCA adds. Same constructor
conventions, frozen VGG handling (for the trainer's perceptual loss) and forward signature
`G(label, exemplar, exemplar_label)` as `MSCAGenerator`, so the trainer, the exporter and the
evaluation treat both alike; exemplar_label is checked but not used.

Where SPADE departs from a size-agnostic design (its fc maps z to a fixed sh x sw grid and its
encoder resizes the exemplar to 256) we keep the idea: the exemplar is resized to
`encoder_size` (the training crop size) before encoding, and the 4x4 grid of fc(z) is resized
(nearest) to the target's coarsest scale, so any target size works.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import KernelBackendMixin, init_weights
from .discriminator import one_hot
from .encoders import check_generator_inputs, scale_sizes
from .generator import NUM_SCALES, SPADEResBlock, _check_vgg_fingerprint, _per_scale
from .vgg import VGG19, build_vgg19

GENERATORS = ("msca", "spade_vae")


class StyleEncoder(nn.Module):
    """SPADE's ConvEncoder at our scale: log2(size/4) conv3x3/2 + InstanceNorm + LReLU(0.2)
    layers (widths ngf * 1, 2, 4, 8, 8, ...), then fc_mu and fc_var on the flattened 4x4 map."""

    def __init__(self, z_dim: int, ngf: int, size: int):
        super().__init__()
        n = int(round(math.log2(size / 4)))
        if size < 8 or 4 * 2 ** n != size:
            raise ValueError(f"encoder_size: expected a power of two >= 8, got {size}")
        self.size = size
        layers, cin = [], 3
        for i in range(n):
            cout = ngf * min(2 ** i, 8)
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                       nn.InstanceNorm2d(cout, affine=False), nn.LeakyReLU(0.2)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(cin * 16, z_dim)
        self.fc_var = nn.Linear(cin * 16, z_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear",
                                  align_corners=False)
        h = self.layers(image).flatten(1)
        return self.fc_mu(h), self.fc_var(h)


class StyleCodeGenerator(KernelBackendMixin, nn.Module):
    """G(c1, x2, c2) of the global-style-code baseline (see the module docstring).

    After each forward, `last_kld` holds the KL term of that call (a scalar tensor, with graph
    in training), which the trainer adds to the generator loss times `lambda_kld`."""

    alignment = "style_code"   # for code that branches on the alignment kind (apps, eval)
    feature_masking = False

    def __init__(self, num_classes: int, *, ignore_label: int | None = 255, z_dim: int = 256,
                 encoder_size: int = 64, ngf: int = 64, ngf_mults=(1, 2, 4, 8, 16),
                 spade_norm: str = "spadesyncbatch3x3", spade_hidden: int = 128,
                 spectral_norm: bool = True, backend: str = "auto",
                 vgg: VGG19 | None = None, vgg_weights: str | None = None,
                 init_type: str = "xavier", init_gain: float = 0.02):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if not isinstance(z_dim, int) or z_dim < 1:
            raise ValueError(f"z_dim: expected a positive int, got {z_dim!r}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.z_dim = z_dim
        mults = _per_scale("ngf_mults", ngf_mults)
        self.channels = tuple(ngf * m for m in mults)
        self._backend = backend
        object.__setattr__(self, "vgg", vgg if vgg is not None else build_vgg19(vgg_weights))
        self.register_buffer("vgg_fingerprint", self.vgg.fingerprint())
        self.register_load_state_dict_post_hook(_check_vgg_fingerprint)

        self.encoder = StyleEncoder(z_dim, ngf, encoder_size)
        L = NUM_SCALES - 1
        self.fc = nn.Linear(z_dim, self.channels[L] * 16)
        self.blocks = nn.ModuleList(
            SPADEResBlock(self.channels[min(i + 1, L)], self.channels[i], num_classes,
                          spade_config=spade_norm, spade_hidden=spade_hidden, backend=backend)
            for i in range(NUM_SCALES))
        self.conv_img = nn.Conv2d(self.channels[0], 3, 3, padding=1)
        self.last_kld: torch.Tensor | None = None

        init_weights(self, init_type, init_gain)
        if spectral_norm:
            for b in self.blocks:
                b.add_spectral_norm()

    def _check_inputs(self, label, exemplar, exemplar_label) -> None:
        check_generator_inputs(label, exemplar, exemplar_label, self.num_classes,
                               self.ignore_label, 2 ** (NUM_SCALES - 1))

    def encode(self, exemplar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, z_dim)."""
        return self.encoder(exemplar)

    def style_code(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        if self.training:
            return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return mu

    def decode(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The SPADE generator: z (B, z_dim) and label c1 (B,H,W) -> image (B,3,H,W)."""
        H, W = label.shape[-2:]
        sizes = scale_sizes(H, W, NUM_SCALES)
        seg = one_hot(label, self.num_classes, self.ignore_label, z.dtype)
        L = NUM_SCALES - 1
        x = self.fc(z).view(z.shape[0], self.channels[L], 4, 4)
        x = F.interpolate(x, size=sizes[L], mode="nearest")
        for i in reversed(range(NUM_SCALES)):
            x = self.blocks[i](x, seg)   # SPADE resizes seg to x's size (nearest)
            if i > 0:
                x = F.interpolate(x, size=sizes[i - 1], mode="nearest")
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))

    def forward(self, label: torch.Tensor, exemplar: torch.Tensor,
                exemplar_label: torch.Tensor, return_attention: bool = False):
        self._check_inputs(label, exemplar, exemplar_label)
        mu, logvar = self.encode(exemplar)
        self.last_kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        out = self.decode(self.style_code(mu, logvar), label)
        if return_attention:  # no attention in this model
            return out, [None] * NUM_SCALES
        return out

    def extra_repr(self) -> str:
        return (f"generator='spade_vae', z_dim={self.z_dim}, backend={self._backend!r}, "
                f"vgg={self.vgg.weights_source}")
