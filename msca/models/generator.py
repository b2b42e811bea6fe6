"""The generator of paper Fig. 2 / Appendix E: feature extraction (Sec. 3.1), multi-scale
alignment by MSCA (Sec. 3.2) and SPADE synthesis (Sec. 3.3).

    x_hat = G(c1, x2, c2):
      Fx2^(i) = W_x^(i) * VGG19^(i)(x2)                      i = 0..4 (scale 0 finest), Eq. 1
      Fc1^(i), Fc2^(i) = LabelEncoder(c1), LabelEncoder(c2)   shared weights, Eqs. 2-3
      Fx1^(i) = MSCA^(i)(Fx2^(i), Fc2^(i), Fc1^(i))          K = 8,16,16,16,16, Eqs. 4-8
      x = conv3x3([Fx1^(4), Fc1^(4)])
      for i = 4..0: x = SPADEResBlk^(i)(x, [Fx1^(i), Fc1^(i)]); upsample x2 (i > 0)
      x_hat = tanh(conv3x3(LReLU(x)))
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import msca_kernels as mk

from .alignment import ALIGNMENTS, GAPAlignment, LabelMatchingAlignment
from .common import KernelBackendMixin, add_spectral_norm, init_weights
from .encoders import (FeatureCompression, LabelEncoder, check_generator_inputs,
                       presence_features, scale_sizes)
from .vgg import SCALE_CHANNELS, SCALE_LAYERS, VGG19, build_vgg19

NUM_SCALES = 5  # L = 4 in the paper: scales 0..4, VGG relu1_2 .. relu5_4


class Features(NamedTuple):
    """Per-scale inputs of the alignment stage (lists indexed by scale, 0 finest)."""
    fx2: list      # compressed VGG features of the exemplar (B,N_i,h2_i,w2_i)
    fc1: list      # target label features (B,M_i,h1_i,w1_i)
    fc2: list      # exemplar label features (B,M_i,h2_i,w2_i)
    label: torch.Tensor           # c1 (B,H1,W1), kept for the label_matching ablation
    exemplar_label: torch.Tensor  # c2 (B,H2,W2)


class SPADEResBlock(nn.Module):
    """NVlabs SPADE's residual block: SPADE -> LReLU(0.2) -> conv3x3, twice, plus a shortcut
    (SPADE -> conv1x1 without bias) when the channel count changes."""

    def __init__(self, fin: int, fout: int, label_nc: int, *, spade_config: str,
                 spade_hidden: int, backend: str):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, 1, bias=False)
        self.norm_0 = mk.nn.SPADE(spade_config, fin, label_nc, nhidden=spade_hidden,
                                  backend=backend)
        self.norm_1 = mk.nn.SPADE(spade_config, fmiddle, label_nc, nhidden=spade_hidden,
                                  backend=backend)
        if self.learned_shortcut:
            self.norm_s = mk.nn.SPADE(spade_config, fin, label_nc, nhidden=spade_hidden,
                                      backend=backend)

    def add_spectral_norm(self) -> None:
        self.conv_0 = add_spectral_norm(self.conv_0)
        self.conv_1 = add_spectral_norm(self.conv_1)
        if self.learned_shortcut:
            self.conv_s = add_spectral_norm(self.conv_s)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return x_s + dx


def _per_scale(name: str, values, n: int = NUM_SCALES) -> tuple:
    values = tuple(values)
    if len(values) != n:
        raise ValueError(f"{name}: expected {n} values (one per scale, scale 0 finest), "
                         f"got {len(values)}")
    if not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{name}: expected positive ints, got {values}")
    return values


class MSCAGenerator(KernelBackendMixin, nn.Module):
    """G(c1, x2, c2) of the paper. See the module docstring for the data flow.

    The frozen VGG-19 is held outside the module tree: it is not among `parameters()` nor in
    `state_dict()` (80 MB nobody trains); `.to()`/`.cuda()`/`.double()` still move it. A buffer
    `vgg_fingerprint` records which VGG the weights were trained against; loading a state_dict
    made with a different VGG warns.
    """

    def __init__(self, num_classes: int, *, ignore_label: int | None = 255,
                 image_feature_nc=(64, 128, 256, 256, 256),
                 label_feature_nc=(64, 128, 256, 256, 256),
                 attention_k=(8, 16, 16, 16, 16), mask_hidden: int | None = None,
                 alignment: str = "msca", feature_masking: bool = True,
                 ngf: int = 64, ngf_mults=(1, 2, 4, 8, 16),
                 spade_norm: str = "spadesyncbatch3x3", spade_hidden: int = 128,
                 spectral_norm: bool = True, backend: str = "auto",
                 vgg: VGG19 | None = None, vgg_weights: str | None = None,
                 init_type: str = "xavier", init_gain: float = 0.02,
                 attention_logit_scale: float | None = None, attention_global_maps: int = 0,
                 attention_presence: bool = False):
        super().__init__()
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment: expected one of {ALIGNMENTS}, got {alignment!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.alignment = alignment
        self.feature_masking = bool(feature_masking)
        self.image_feature_nc = _per_scale("image_feature_nc", image_feature_nc)
        self.label_feature_nc = _per_scale("label_feature_nc", label_feature_nc)
        self.attention_k = _per_scale("attention_k", attention_k)
        mults = _per_scale("ngf_mults", ngf_mults)
        self.channels = tuple(ngf * m for m in mults)
        self._backend = backend
        # One presence channel appended to every label feature map (ours; see
        # encoders.presence_features): 0 or 1 extra channels.
        self.attention_presence = bool(attention_presence)
        self.presence_nc = int(self.attention_presence)

        # The frozen VGG, deliberately not registered as a submodule (see class docstring).
        object.__setattr__(self, "vgg", vgg if vgg is not None else build_vgg19(vgg_weights))
        self.register_buffer("vgg_fingerprint", self.vgg.fingerprint())
        self.register_load_state_dict_post_hook(_check_vgg_fingerprint)

        # Feature extraction (Sec. 3.1).
        self.compress = FeatureCompression(SCALE_CHANNELS, self.image_feature_nc)
        self.label_encoder = LabelEncoder(num_classes, self.label_feature_nc,
                                          ignore_label=ignore_label)
        # Alignment (Sec. 3.2), one module per scale.
        align: list[nn.Module] = []
        for i in range(NUM_SCALES):
            n, m = self.image_feature_nc[i], self.label_feature_nc[i] + self.presence_nc
            if alignment == "msca":
                align.append(mk.nn.MSCA(n, m, m, self.attention_k[i], mask_hidden=mask_hidden,
                                        feature_masking=self.feature_masking, backend=backend,
                                        logit_scale=attention_logit_scale,
                                        global_maps=attention_global_maps))
            elif alignment == "gap":
                align.append(GAPAlignment())
            else:
                align.append(LabelMatchingAlignment(
                    num_classes, m, m, ignore_label=ignore_label,
                    feature_masking=self.feature_masking, mask_hidden=mask_hidden))
        self.align_modules = nn.ModuleList(align)
        # Synthesis (Sec. 3.3, Appendix E).
        L = NUM_SCALES - 1
        seg_nc = [self.image_feature_nc[i] + self.label_feature_nc[i] + self.presence_nc
                  for i in range(NUM_SCALES)]
        self.fc_in = nn.Conv2d(seg_nc[L], self.channels[L], 3, padding=1)
        self.blocks = nn.ModuleList(
            SPADEResBlock(self.channels[min(i + 1, L)], self.channels[i], seg_nc[i],
                          spade_config=spade_norm, spade_hidden=spade_hidden, backend=backend)
            for i in range(NUM_SCALES))
        self.conv_img = nn.Conv2d(self.channels[0], 3, 3, padding=1)

        init_weights(self, init_type, init_gain, skip=(LabelEncoder,))
        if spectral_norm:  # after init, so spectral norm wraps the initialised weights
            for b in self.blocks:
                b.add_spectral_norm()

    def _check_inputs(self, label, exemplar, exemplar_label) -> None:
        check_generator_inputs(label, exemplar, exemplar_label, self.num_classes,
                               self.ignore_label, 2 ** (NUM_SCALES - 1))

    # ----------------------------------------------------------------- stages
    def vgg_features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """VGG-19 features of `image` at the five scales (relu1_2 .. relu5_4), no gradient."""
        with torch.no_grad():
            return self.vgg(image, SCALE_LAYERS)

    def extract_features(self, label, exemplar, exemplar_label, *,
                         vgg_features: list[torch.Tensor] | None = None) -> Features:
        """Sec. 3.1: Fx2 (Eq. 1), Fc1 and Fc2 (Eqs. 2-3, one shared label encoder).

        `vgg_features`: the exemplar's VGG features if the caller already has them."""
        self._check_inputs(label, exemplar, exemplar_label)
        feats = vgg_features if vgg_features is not None else self.vgg_features(exemplar)
        fx2 = self.compress([f.to(exemplar.dtype) for f in feats])
        sizes2 = [tuple(f.shape[-2:]) for f in fx2]
        sizes1 = scale_sizes(label.shape[-2], label.shape[-1], NUM_SCALES)
        fc1 = [f.to(exemplar.dtype) for f in self.label_encoder(label, sizes1, check=False)]
        fc2 = [f.to(exemplar.dtype)
               for f in self.label_encoder(exemplar_label, sizes2, check=False)]
        if self.attention_presence:
            p1, p2 = presence_features(label, exemplar_label, sizes1, sizes2,
                                       self.ignore_label, exemplar.dtype)
            fc1 = [torch.cat([f, p], dim=1) for f, p in zip(fc1, p1)]
            fc2 = [torch.cat([f, p], dim=1) for f, p in zip(fc2, p2)]
        return Features(fx2, fc1, fc2, label, exemplar_label)

    def feature_masks(self, features: Features) -> list[torch.Tensor | None]:
        """The (B,K) feature-masking gates of Eq. 6 per scale (None where there is none)."""
        out = []
        for m, fc1, fc2 in zip(self.align_modules, features.fc1, features.fc2):
            out.append(m.feature_mask(fc2, fc1) if hasattr(m, "feature_mask") else None)
        return out

    def align(self, features: Features, *, spatial_bias=None, channel_bias=None, masks=None,
              return_attention: bool = False):
        """Sec. 3.2: Fx1^(i) for every scale.

        spatial_bias / channel_bias / masks: optional lists with one entry per scale (None
        entries allowed): logit biases (B,K,h2,w2) / (B,K,h1,w1) added before the spatial /
        channel softmax, and (B,K) gates replacing the module's own Eq. 6 mask (a None entry
        keeps the module's mask). These express style interpolation (paper Sec. 4); only the
        "msca" alignment has attention to bias. Returns [Fx1^(0..4)], or
        ([Fx1], [(alpha, beta) or None per scale]) with return_attention.
        """
        per = {"spatial_bias": spatial_bias, "channel_bias": channel_bias, "masks": masks}
        for name, v in per.items():
            if v is not None:
                if len(v) != NUM_SCALES:
                    raise ValueError(f"{name}: expected a list of {NUM_SCALES} (one per scale, "
                                     f"None allowed), got {len(v)} entries")
                if self.alignment != "msca" and any(t is not None for t in v):
                    raise ValueError(f"{name}: the {self.alignment!r} alignment has no "
                                     "attention to bias or mask")
        fx1, attn = [], []
        for i, m in enumerate(self.align_modules):
            fx2, fc1, fc2 = features.fx2[i], features.fc1[i], features.fc2[i]
            if self.alignment == "gap":
                out, a = m(fx2, tuple(fc1.shape[-2:])), None
            elif self.alignment == "label_matching":
                out, a = m(fx2, fc2, fc1, features.label, features.exemplar_label), None
            else:
                sb = spatial_bias[i] if spatial_bias is not None else None
                cb = channel_bias[i] if channel_bias is not None else None
                mask = masks[i] if masks is not None else None
                # mask None: the module's own Eq. 6 gate; else the caller's
                res = m(fx2, fc2, fc1, spatial_bias=sb, channel_bias=cb,
                        return_attention=return_attention, mask=mask)
                out, a = (res[0], (res[1], res[2])) if return_attention else (res, None)
            fx1.append(out)
            attn.append(a)
        return (fx1, attn) if return_attention else fx1

    def synthesize(self, fx1: list[torch.Tensor], fc1: list[torch.Tensor]) -> torch.Tensor:
        """Sec. 3.3 / Appendix E: SPADE residual blocks from the coarsest scale up, each
        modulated by [Fx1^(i), Fc1^(i)]; the output has the size of scale 0 (the target's)."""
        if len(fx1) != NUM_SCALES or len(fc1) != NUM_SCALES:
            raise ValueError(f"fx1, fc1: expected {NUM_SCALES} scales each, "
                             f"got {len(fx1)} and {len(fc1)}")
        segs = []
        for i, (a, b) in enumerate(zip(fx1, fc1)):
            if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
                raise ValueError(f"fx1[{i}], fc1[{i}]: expected the same batch and size, got "
                                 f"{tuple(a.shape)} and {tuple(b.shape)}")
            segs.append(torch.cat([a, b], dim=1))
        L = NUM_SCALES - 1
        x = self.fc_in(segs[L])
        for i in reversed(range(NUM_SCALES)):
            x = self.blocks[i](x, segs[i])
            if i > 0:  # the block's upsampling (nearest, as SPADE's nn.Upsample)
                x = F.interpolate(x, size=segs[i - 1].shape[-2:], mode="nearest")
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))

    def forward_with_features(self, label, exemplar, exemplar_label):
        """(image, Features): the forward pass that also hands back the per-scale features, so
        a trainer can put the correspondence losses on the same attention without a second
        feature extraction."""
        features = self.extract_features(label, exemplar, exemplar_label)
        return self.synthesize(self.align(features), features.fc1), features

    def forward(self, label: torch.Tensor, exemplar: torch.Tensor,
                exemplar_label: torch.Tensor, return_attention: bool = False):
        """label c1 (B,H1,W1) int64, exemplar x2 (B,3,H2,W2) in [-1,1], exemplar_label c2
        (B,H2,W2) int64 -> image (B,3,H1,W1) in [-1,1]; with return_attention also the list of
        per-scale (alpha (B,K,h2,w2), beta (B,K,h1,w1)) (None for the gap/label_matching
        ablations, which have no learned attention)."""
        if not return_attention:
            return self.forward_with_features(label, exemplar, exemplar_label)[0]
        features = self.extract_features(label, exemplar, exemplar_label)
        fx1, attn = self.align(features, return_attention=True)
        return self.synthesize(fx1, features.fc1), attn

    def extra_repr(self) -> str:
        return (f"alignment={self.alignment!r}, feature_masking={self.feature_masking}, "
                f"attention_presence={self.attention_presence}, "
                f"backend={self._backend!r}, vgg={self.vgg.weights_source}")


def _check_vgg_fingerprint(module: MSCAGenerator, incompatible_keys) -> None:
    loaded = module.vgg_fingerprint.detach().double().cpu()
    current = module.vgg.fingerprint()
    if loaded.shape != current.shape or not torch.allclose(loaded, current, rtol=1e-2):
        warnings.warn("MSCAGenerator: these weights were trained against a different VGG-19 "
                      f"than the one loaded now ({module.vgg.weights_source}); features will "
                      "not match. Use the same vgg_weights as in training.", stacklevel=3)
