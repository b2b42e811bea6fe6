"""VGG-19, defined here with torchvision's parameter names, as a frozen feature extractor.

The generator compresses VGG-19 features of the exemplar at five scales (paper Eq. 1), the MSCA
pretraining decoder predicts the same features of the target (Appendix G), and the SPADE
perceptual loss compares relu1_1..relu5_1 (Eq. 11's L_spade). All three use this module.

Weights: `features.<i>.weight/bias` exactly as `torchvision.models.vgg19`, so torchvision's
ImageNet checkpoint `vgg19-dcbb9e9d.pth` loads from a local file without torchvision. Without
such a file the network is randomly (but deterministically, seed 0) initialised and the program
warns: the model still trains, but perceptual quality of the features is not ImageNet's.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"

# Layer configuration "E" of Simonyan & Zisserman (VGG-19); "M" is a 2x2 max-pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names() -> list[str]:
    names, block, conv = [], 1, 1
    for v in _CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return names


LAYER_NAMES = _layer_names()                     # index in `features` -> name
LAYER_INDEX = {n: i for i, n in enumerate(LAYER_NAMES)}
# The five scales the generator uses (scale 0 finest): full, 1/2, 1/4, 1/8, 1/16 resolution.
SCALE_LAYERS = ("relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4")
SCALE_CHANNELS = (64, 128, 256, 512, 512)
# SPADE's VGGLoss: relu1_1..relu5_1 with these weights.
PERCEPTUAL_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PERCEPTUAL_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsWarning(UserWarning):
    """Raised (as a warning) when VGG-19 runs with random weights."""


class VGG19(nn.Module):
    """VGG-19 feature stack; input images in [-1, 1], normalised to ImageNet statistics inside.

    `with_classifier=True` adds torchvision's `classifier` so that the full torchvision
    state_dict loads with `strict=True` into this very module; the feature extractor leaves it
    out (102M parameters nobody here uses). The network is frozen: no parameter needs a
    gradient, but gradients do flow to the input (the perceptual loss needs them).
    """

    def __init__(self, with_classifier: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU()]
                in_ch = v
        self.features = nn.Sequential(*layers)
        if with_classifier:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 1000))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.pretrained = False
        self.weights_source = "random"
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        # Frozen network: it never leaves eval mode (matters only for the classifier's dropout).
        return super().train(False)

    @torch.no_grad()
    def reset_random(self, seed: int = 0) -> None:
        """Deterministic random init: the same weights in every process and every run, so a
        model trained against a random VGG can be reloaded and run against the same one."""
        gen = torch.Generator().manual_seed(seed)
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                # Variance-preserving (He, fan-in) so features keep an O(1) scale with depth.
                std = (2.0 / (m.in_channels * 9)) ** 0.5
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                m.bias.zero_()
        self.pretrained = False
        self.weights_source = f"random (seed {seed})"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor, layers=SCALE_LAYERS) -> list[torch.Tensor]:
        """Features of `x` (B,3,H,W) in [-1,1] at the named layers, in the order asked.

        Runs only as deep as the deepest layer asked for, so one call can serve the
        generator's scales and the perceptual loss's layers together."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected (B,3,H,W) images, got shape {tuple(x.shape)}")
        try:
            wanted = [LAYER_INDEX[n] for n in layers]
        except KeyError as e:
            raise ValueError(f"layers: unknown VGG-19 layer {e.args[0]!r}; "
                             f"known: {LAYER_NAMES}") from None
        out: dict[int, torch.Tensor] = {}
        h = self.normalize(x)
        last = max(wanted)
        for i, m in enumerate(self.features):
            h = m(h)
            if i in wanted:
                out[i] = h
            if i == last:
                break
        return [out[i] for i in wanted]

    def fingerprint(self) -> torch.Tensor:
        """A 16-number summary of the conv weights (float64), to tell two VGGs apart."""
        return torch.stack([m.weight.detach().double().abs().mean()
                            for m in self.features if isinstance(m, nn.Conv2d)]).cpu()


def load_vgg19_weights(vgg: VGG19, path: str) -> None:
    """Load a torchvision VGG-19 state_dict from `path` into `vgg`.

    Strict about `features.*` (every conv weight and bias present, right shapes, nothing
    unknown); `classifier.*` is accepted and dropped when `vgg` has no classifier."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"vgg_weights: no such file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a state_dict
        raise ValueError(f"vgg_weights: cannot read {path!r} as a torch state_dict: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"vgg_weights: {path!r} holds a {type(state).__name__}, "
                         "expected a state_dict")
    if not hasattr(vgg, "classifier"):
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    try:
        vgg.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"vgg_weights: {path!r} is not a torchvision VGG-19 "
                         f"state_dict: {e}") from e
    vgg.pretrained = True
    vgg.weights_source = os.path.abspath(path)


def find_vgg19_weights() -> str | None:
    """torchvision's ImageNet VGG-19 file in the torch hub cache, if it is there."""
    path = os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILE)
    return path if os.path.isfile(path) else None


def build_vgg19(weights: str | None = None, *, warn: bool = True) -> VGG19:
    """The frozen VGG-19 feature extractor.

    `weights`: a path to a torchvision VGG-19 state_dict (an error if missing). Empty or None:
    `vgg19-dcbb9e9d.pth` in `torch.hub.get_dir()/checkpoints` if present, else deterministic
    random weights with a VGGWeightsWarning."""
    vgg = VGG19()
    path = weights or find_vgg19_weights()
    if path:
        load_vgg19_weights(vgg, path)
    else:
        vgg.reset_random(0)
        if warn:
            warnings.warn(
                "VGG-19: no ImageNet weights found (set the option vgg_weights to a torchvision "
                f"'{TORCHVISION_FILE}' file, or put it in "
                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}); using RANDOM frozen "
                "weights (seed 0). Features and the perceptual loss will be much weaker than "
                "the paper's.", VGGWeightsWarning, stacklevel=2)
    return vgg


class VGGLoss(nn.Module):
    """SPADE's perceptual loss: sum_l w_l * L1(vgg_l(fake), vgg_l(real).detach())."""

    def __init__(self, vgg: VGG19, layers=PERCEPTUAL_LAYERS, weights=PERCEPTUAL_WEIGHTS):
        super().__init__()
        if len(layers) != len(weights):
            raise ValueError("layers and weights must have the same length")
        self.vgg = vgg
        self.layers = tuple(layers)
        self.weights = tuple(float(w) for w in weights)

    def forward(self, fake: torch.Tensor, real: torch.Tensor, real_features=None):
        """`real_features`: the real image's features at `self.layers` if already computed."""
        f_fake = self.vgg(fake, self.layers)
        if real_features is None:
            with torch.no_grad():
                real_features = self.vgg(real, self.layers)
        loss = fake.new_zeros(())
        for w, a, b in zip(self.weights, f_fake, real_features):
            loss = loss + w * F.l1_loss(a, b.detach())
        return loss
