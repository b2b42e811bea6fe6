"""nn.Module faces of the two ops: MSCA (paper Sec. 3.2) and a drop-in SPADE layer."""
from __future__ import annotations

import math
import re

import torch
import torch.nn as tnn
import torch.nn.functional as F

from .msca import msca_attention
from .spade import spade_norm


class MSCA(tnn.Module):
    """Masked spatial-channel attention (paper Eqs. 4-8).

    phi: 1x1 conv on [Fx2, Fc2] giving K spatial-attention logits over the exemplar (Eq. 4);
    psi: 1x1 conv on Fc1 giving K channel-attention logits at each target position (Eq. 7);
    mask_mlp: the 2-layer MLP of Eq. 6 on [gap(Fc1), gap(Fc2)], followed by a sigmoid, that
    gates the K aggregated feature vectors (feature masking; feature_masking=False drops it,
    the "MSCA w/o fm" ablation of Table 1).

    logit_scale: None (the paper's module) or a positive float s0 that adds two learnable
    temperatures, `spatial_log_scale` and `channel_log_scale` (scalars, initialised to
    log s0), multiplying the spatial and the channel logits. They are folded into phi/psi's
    weights and biases before the fused op runs (s*(W x + b) = (s W) x + s b), so every
    backend's kernel computes the sharper softmax at no extra cost; the caller's spatial_bias
    / channel_bias are added unscaled. With s0 ~ 10 the maps start usefully peaked: at
    PyTorch's default init the raw logits have std ~0.3, which leaves both softmaxes nearly
    uniform and the module behaving like global average pooling.

    global_maps: the last `global_maps` of the K maps get no spatial logits (their phi rows
    are held at zero), so their spatial softmax is uniform: each is the exemplar's global
    average (GAP), which the channel softmax may still pick per target position. A target
    region whose class the exemplar lacks then has somewhere sound to look; without it, it
    has to borrow some other class's region. 0 is the paper's module.
    """

    def __init__(self, image_channels: int, label_channels_target: int,
                 label_channels_exemplar: int, k: int, *, mask_hidden: int | None = None,
                 feature_masking: bool = True, backend: str = "auto",
                 logit_scale: float | None = None, global_maps: int = 0):
        super().__init__()
        for name, v in (("image_channels", image_channels),
                        ("label_channels_target", label_channels_target),
                        ("label_channels_exemplar", label_channels_exemplar), ("k", k)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.image_channels = image_channels
        self.label_channels_target = label_channels_target
        self.label_channels_exemplar = label_channels_exemplar
        self.k = k
        if not isinstance(global_maps, int) or not 0 <= global_maps <= k:
            raise ValueError(f"global_maps: expected an int in [0, k={k}], got {global_maps!r}")
        self.global_maps = global_maps
        # 1 for learned maps, 0 for the global ones; not persistent (a constructor argument,
        # so state_dicts stay the same with or without it)
        keep = torch.ones(k, 1)
        if global_maps:
            keep[k - global_maps:] = 0
        self.register_buffer("_phi_keep", keep, persistent=False)
        self.feature_masking = feature_masking
        self.backend = backend
        self.phi = tnn.Conv2d(image_channels + label_channels_exemplar, k, 1)
        self.psi = tnn.Conv2d(label_channels_target, k, 1)
        if feature_masking:
            # Squeeze-and-excitation sized hidden layer (the paper does not give its width).
            hidden = mask_hidden or max(k, (label_channels_target + label_channels_exemplar) // 2)
            self.mask_mlp = tnn.Sequential(
                tnn.Linear(label_channels_target + label_channels_exemplar, hidden),
                tnn.ReLU(inplace=True), tnn.Linear(hidden, k))
        else:
            self.mask_mlp = None
        if logit_scale is not None:
            if not (isinstance(logit_scale, (int, float)) and math.isfinite(logit_scale)
                    and logit_scale > 0):
                raise ValueError(f"logit_scale: expected None or a finite float > 0, "
                                 f"got {logit_scale!r}")
            init = math.log(float(logit_scale))
            self.spatial_log_scale = tnn.Parameter(torch.tensor(init))
            self.channel_log_scale = tnn.Parameter(torch.tensor(init))
        else:
            self.spatial_log_scale = None
            self.channel_log_scale = None

    def projections(self):
        """(phi_weight, psi_weight, phi_bias, psi_bias) as the kernel sees them: the 1x1
        convolutions' (K, C) weights and biases with the learned temperatures folded in."""
        phi_w = self.phi.weight.flatten(1)
        psi_w = self.psi.weight.flatten(1)
        phi_b, psi_b = self.phi.bias, self.psi.bias
        if self.global_maps:
            keep = self._phi_keep.to(phi_w.dtype)
            phi_w = phi_w * keep
            phi_b = phi_b * keep[:, 0] if phi_b is not None else None
        if self.spatial_log_scale is not None:
            s = self.spatial_log_scale.exp()
            phi_w = phi_w * s
            phi_b = phi_b * s if phi_b is not None else None
        if self.channel_log_scale is not None:
            s = self.channel_log_scale.exp()
            psi_w = psi_w * s
            psi_b = psi_b * s if psi_b is not None else None
        return phi_w, psi_w, phi_b, psi_b

    def logit_scales(self) -> tuple[float, float]:
        """The current (spatial, channel) temperatures' inverse, 1.0 where not learned."""
        return tuple(1.0 if t is None else float(t.detach().exp())
                     for t in (self.spatial_log_scale, self.channel_log_scale))

    def feature_mask(self, fc2: torch.Tensor, fc1: torch.Tensor) -> torch.Tensor | None:
        """The (B,K) gate of Eq. 6, or None without feature masking."""
        if self.mask_mlp is None:
            return None
        pooled = torch.cat([fc1.mean(dim=(2, 3)), fc2.mean(dim=(2, 3))], dim=1)
        return torch.sigmoid(self.mask_mlp(pooled))

    def forward(self, fx2, fc2, fc1, *, spatial_bias=None, channel_bias=None,
                return_attention=False, mask=None):
        """`mask`: a (B,K) gate replacing the module's own Eq. 6 mask (None: the module's)."""
        if mask is None:
            mask = self.feature_mask(fc2, fc1)
        phi_w, psi_w, phi_b, psi_b = self.projections()
        return msca_attention(fx2, fc2, fc1, phi_w, psi_w, mask,
                              phi_b, psi_b, spatial_bias=spatial_bias,
                              channel_bias=channel_bias, return_attention=return_attention,
                              backend=self.backend)

    def extra_repr(self) -> str:
        return (f"image_channels={self.image_channels}, label_channels_target="
                f"{self.label_channels_target}, label_channels_exemplar="
                f"{self.label_channels_exemplar}, k={self.k}, feature_masking="
                f"{self.feature_masking}, backend={self.backend!r}, "
                f"logit_scale={self.spatial_log_scale is not None}, "
                f"global_maps={self.global_maps}")


class SPADE(tnn.Module):
    """Spatially-adaptive denormalisation, a drop-in for NVlabs SPADE's layer.

    Constructor as there: SPADE(config_text, norm_nc, label_nc), config_text
    'spade{batch|syncbatch|instance}{ks}x{ks}', hidden width 128; the same submodule names
    (param_free_norm, mlp_shared.0, mlp_gamma, mlp_beta), so their state_dicts load with
    strict=True. SPADE(norm_nc, label_nc, config_text=...) is accepted too (docs/design.md section 4
    lists that order). The normalisation runs in the fused spade_norm kernel; param_free_norm is
    kept as a real BatchNorm2d/InstanceNorm2d so its buffers, momentum and eps behave as before.
    """

    def __init__(self, config_text, norm_nc=None, label_nc=None, *, nhidden: int = 128,
                 backend: str = "auto", config=None):
        super().__init__()
        if not isinstance(config_text, str):  # SPADE(norm_nc, label_nc, config_text=...)
            config_text, norm_nc, label_nc = (config or "spadebatch3x3"), config_text, norm_nc
        parsed = re.fullmatch(r"spade(\D+)(\d)x\d", config_text or "")
        if parsed is None:
            raise ValueError(f"config_text: expected 'spade<batch|syncbatch|instance><k>x<k>', "
                             f"got {config_text!r}")
        norm_type, ks = parsed.group(1), int(parsed.group(2))
        if norm_type == "instance":
            self.param_free_norm = tnn.InstanceNorm2d(norm_nc, affine=False)
        elif norm_type in ("batch", "syncbatch"):
            self.param_free_norm = tnn.BatchNorm2d(norm_nc, affine=False)
        else:
            raise ValueError(f"config_text: {norm_type!r} is not a supported parameter-free "
                             "norm (batch, syncbatch, instance)")
        if ks % 2 == 0:
            raise ValueError(f"config_text: the kernel size must be odd, got {ks}")
        self.norm_type = norm_type
        self.backend = backend
        pw = ks // 2
        self.mlp_shared = tnn.Sequential(tnn.Conv2d(label_nc, nhidden, ks, padding=pw),
                                         tnn.ReLU())
        self.mlp_gamma = tnn.Conv2d(nhidden, norm_nc, ks, padding=pw)
        self.mlp_beta = tnn.Conv2d(nhidden, norm_nc, ks, padding=pw)

    def _sync_needed(self) -> bool:
        return (self.norm_type == "syncbatch" and self.training and
                torch.distributed.is_available() and torch.distributed.is_initialized() and
                torch.distributed.get_world_size() > 1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        gamma = self.mlp_gamma(actv)
        beta = self.mlp_beta(actv)
        norm = self.param_free_norm
        if self._sync_needed():
            # Statistics over every process's batch: torch's SyncBatchNorm path (differentiable
            # all-reduce); the fused kernel only sees the local batch.
            normalized = _sync_batch_norm(x, norm)
            return normalized * (1 + gamma) + beta
        if isinstance(norm, tnn.InstanceNorm2d):
            return spade_norm(x, gamma, beta, mode="instance", eps=norm.eps, backend=self.backend)
        momentum = norm.momentum
        if self.training and norm.track_running_stats:
            norm.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as torch's BatchNorm
                momentum = 1.0 / float(norm.num_batches_tracked)
        return spade_norm(x, gamma, beta, mode="batch", eps=norm.eps,
                          running_mean=norm.running_mean, running_var=norm.running_var,
                          momentum=momentum if momentum is not None else 0.0,
                          training=self.training or norm.running_mean is None,
                          backend=self.backend)


def _sync_batch_norm(x: torch.Tensor, norm: tnn.BatchNorm2d) -> torch.Tensor:
    sync = tnn.SyncBatchNorm(norm.num_features, norm.eps, norm.momentum, affine=False,
                             track_running_stats=norm.track_running_stats).to(x.device)
    if norm.track_running_stats:
        sync.running_mean = norm.running_mean
        sync.running_var = norm.running_var
        sync.num_batches_tracked = norm.num_batches_tracked
    return sync(x)
