"""Feature extraction of paper Sec. 3.1: image-feature compression (Eq. 1) and the label
encoder shared by the target and exemplar label maps (Eqs. 2-3)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scale_sizes(height: int, width: int, num_scales: int) -> list[tuple[int, int]]:
    """Spatial size at each scale (scale 0 = full size), halving with floor like VGG's
    2x2 max-pools, so label features match the VGG features of the same image exactly."""
    sizes = [(int(height), int(width))]
    for _ in range(num_scales - 1):
        h, w = sizes[-1]
        sizes.append((h // 2, w // 2))
    return sizes


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer label map (B,H,W), by indexing.

    Same sampling as F.interpolate(mode="nearest") (source index floor(dst * in / out)),
    which does not take integer tensors."""
    h_in, w_in = labels.shape[-2:]
    h, w = size
    if (h, w) == (h_in, w_in):
        return labels
    rows = torch.div(torch.arange(h, device=labels.device) * h_in, h, rounding_mode="floor")
    cols = torch.div(torch.arange(w, device=labels.device) * w_in, w, rounding_mode="floor")
    return labels.index_select(-2, rows).index_select(-1, cols)


def check_labels(name: str, labels: torch.Tensor, num_classes: int,
                 ignore_label: int | None) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 3:
        raise ValueError(f"{name}: expected an integer label map (B,H,W), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name}: expected integer labels (int64), got {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError(f"{name}: empty label map")
    valid = labels if ignore_label is None else labels[labels != ignore_label]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}) "
                         f"(or equal ignore_label={ignore_label}); found values in "
                         f"[{int(valid.min())}, {int(valid.max())}]")


def check_generator_inputs(label: torch.Tensor, exemplar: torch.Tensor,
                           exemplar_label: torch.Tensor, num_classes: int,
                           ignore_label: int | None, smallest: int) -> None:
    """The input checks both generators share: label maps, an image batch (B,3,H,W) with its
    label map, one batch size and one device, sides of at least `smallest` pixels."""
    check_labels("label", label, num_classes, ignore_label)
    check_labels("exemplar_label", exemplar_label, num_classes, ignore_label)
    if not isinstance(exemplar, torch.Tensor):
        raise TypeError(f"exemplar: expected a torch.Tensor, got {type(exemplar).__name__}")
    if exemplar.dim() != 4 or exemplar.shape[1] != 3:
        raise ValueError(f"exemplar: expected images (B,3,H,W), got {tuple(exemplar.shape)}")
    if not exemplar.is_floating_point():
        raise TypeError(f"exemplar: expected a floating tensor in [-1,1], got {exemplar.dtype}")
    if exemplar_label.shape != (exemplar.shape[0], *exemplar.shape[2:]):
        raise ValueError(f"exemplar_label: expected shape {(exemplar.shape[0],)} + "
                         f"{tuple(exemplar.shape[2:])} (the exemplar's), "
                         f"got {tuple(exemplar_label.shape)}")
    if label.shape[0] != exemplar.shape[0]:
        raise ValueError(f"label: expected batch size {exemplar.shape[0]} like exemplar, "
                         f"got {label.shape[0]}")
    for name, hw in (("label", label.shape[-2:]), ("exemplar", exemplar.shape[-2:])):
        if min(hw) < smallest:
            raise ValueError(f"{name}: expected height and width >= {smallest} (five "
                             f"scales, 1/16 at the coarsest), got {tuple(hw)}")
    if label.device != exemplar.device or exemplar_label.device != exemplar.device:
        raise ValueError("label, exemplar, exemplar_label: expected one device, got "
                         f"{label.device}, {exemplar.device}, {exemplar_label.device}")


def presence_mask(label: torch.Tensor, exemplar_label: torch.Tensor,
                  ignore_label: int | None = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """label (B,H,W), exemplar_label (B,H2,W2) -> (present, absent) boolean (B,H,W) masks:
    whether the exemplar shows the class of each target pixel; ignore-label target pixels are
    in neither."""
    if label.dim() != 3 or exemplar_label.dim() != 3 or label.shape[0] != exemplar_label.shape[0]:
        raise ValueError(f"label, exemplar_label: expected (B,H,W) and (B,H2,W2) with one B, "
                         f"got {tuple(label.shape)} and {tuple(exemplar_label.shape)}")
    lab = label.long()
    valid = lab >= 0 if ignore_label is None else (lab >= 0) & (lab != ignore_label)
    top = int(max(lab.max(), exemplar_label.max())) + 1
    has = torch.zeros(label.shape[0], top + 1, dtype=torch.bool, device=label.device)
    ex = exemplar_label.long().flatten(1)
    has.scatter_(1, ex.clamp(0, top), True)
    if ignore_label is not None and ignore_label <= top:
        has[:, ignore_label] = False
    present = has.gather(1, lab.clamp(0, top).flatten(1)).view_as(lab) & valid
    return present, valid & ~present


def presence_features(label: torch.Tensor, exemplar_label: torch.Tensor, sizes1, sizes2,
                      ignore_label: int | None, dtype: torch.dtype):
    """The presence channels (ours, Options.attention_presence): per scale, the share of each
    target cell whose class the exemplar shows, (B,1,h1,w1), and the share of each exemplar
    cell whose class the target shows, (B,1,h2,w2). Ignore-label pixels count as shown (they
    ask for nothing). Without them no part of the model knows, at a target position, whether
    the exemplar has its class at all; where it lacks it, attention can only borrow some
    other class's region."""
    def maps(a, b, sizes):
        present, absent = presence_mask(a, b, ignore_label)
        shown = (~absent).to(dtype).unsqueeze(1)
        return [F.adaptive_avg_pool2d(shown, s) if tuple(shown.shape[-2:]) != tuple(s)
                else shown for s in sizes]
    return maps(label, exemplar_label, sizes1), maps(exemplar_label, label, sizes2)


def label_indices(labels: torch.Tensor, num_classes: int,
                  ignore_label: int | None) -> torch.Tensor:
    """int64 class indices with the ignore label mapped to `num_classes` (a zero row)."""
    labels = labels.long()
    if ignore_label is not None:
        labels = torch.where(labels == ignore_label, torch.full_like(labels, num_classes),
                             labels)
    return labels


class FeatureCompression(nn.Module):
    """W_x^(i) of Eq. 1: one 1x1 convolution per scale on the VGG-19 features."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError("in_channels and out_channels need one entry per scale")
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 1) for i, o in zip(in_channels, out_channels))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature maps, got {len(features)}")
        return [conv(f) for conv, f in zip(self.convs, features)]


class LabelEncoder(nn.Module):
    """Eqs. 2-3, coarse to fine:

        F^(L) = LReLU(W_c^(L) * onehot(c^(L)))
        F^(i) = LReLU(W_c^(i) * [up2(F^(i+1)), onehot(c^(i))])

    c^(i) is the label map resized (nearest) to scale i, up2 is x2 bilinear upsampling. The
    1x1 convolution of a one-hot map is a lookup of the weight columns of its class, so
    W_c^(i) is stored split in two: `up[i]` (the columns acting on up2(F^(i+1)), no bias) and
    `embed[i]` (the columns acting on the one-hot part, as an embedding table), plus `bias[i]`.
    No one-hot tensor is ever built. The ignore label maps to a zero row (padding_idx), i.e. an
    all-zero one-hot vector. One instance encodes both c1 and c2 (shared weights).
    """

    def __init__(self, num_classes: int, channels, *, ignore_label: int | None = 255,
                 negative_slope: float = 0.2):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.channels = tuple(int(c) for c in channels)
        self.num_scales = len(self.channels)
        self.negative_slope = negative_slope
        L = self.num_scales - 1
        self.embed = nn.ModuleList(
            nn.Embedding(num_classes + 1, c, padding_idx=num_classes) for c in self.channels)
        # up[i] acts on F^(i+1); the coarsest scale has none (an empty placeholder keeps
        # indices aligned with scales).
        self.up = nn.ModuleList(
            nn.Conv2d(self.channels[i + 1], self.channels[i], 1, bias=False) if i < L
            else nn.Identity() for i in range(self.num_scales))
        self.bias = nn.ParameterList(nn.Parameter(torch.zeros(c)) for c in self.channels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Initialise like the single Conv2d W_c^(i) this stands for (fan_in counts both parts).
        for i in range(self.num_scales):
            fan_in = self.num_classes + (self.channels[i + 1] if i < self.num_scales - 1 else 0)
            bound = 1.0 / math.sqrt(fan_in)
            self.embed[i].weight.uniform_(-bound, bound)
            self.embed[i].weight[self.num_classes].zero_()
            if isinstance(self.up[i], nn.Conv2d):
                self.up[i].weight.uniform_(-bound, bound)
            self.bias[i].uniform_(-bound, bound)

    @torch.no_grad()
    def init_weights(self, init_type: str, gain: float) -> None:
        """Initialise each W_c^(i) as one (C_i, C_{i+1} + num_classes, 1, 1) convolution
        would be by `common.init_weights`, then split it into its two parts; biases zero."""
        from .common import init_weight_
        for i in range(self.num_scales):
            c_up = self.channels[i + 1] if i < self.num_scales - 1 else 0
            w = torch.empty(self.channels[i], c_up + self.num_classes, 1, 1)
            init_weight_(w, init_type, gain)
            if c_up:
                self.up[i].weight.copy_(w[:, :c_up])
            self.embed[i].weight[:self.num_classes].copy_(w[:, c_up:, 0, 0].t())
            self.embed[i].weight[self.num_classes].zero_()
            self.bias[i].zero_()

    def forward(self, labels: torch.Tensor, sizes: list[tuple[int, int]] | None = None,
                *, check: bool = True) -> list[torch.Tensor]:
        """`labels` (B,H,W) integer -> [F^(0), ..., F^(L)], F^(i) of shape (B,C_i,h_i,w_i).

        `sizes`: the spatial size of each scale (default: floor halving of (H, W))."""
        if check:
            check_labels("labels", labels, self.num_classes, self.ignore_label)
        if sizes is None:
            sizes = scale_sizes(labels.shape[-2], labels.shape[-1], self.num_scales)
        if len(sizes) != self.num_scales:
            raise ValueError(f"sizes: expected {self.num_scales} sizes, got {len(sizes)}")
        idx = label_indices(labels, self.num_classes, self.ignore_label)
        feats: list[torch.Tensor | None] = [None] * self.num_scales
        prev = None
        for i in reversed(range(self.num_scales)):
            c_i = resize_labels(idx, sizes[i])
            # W_c * onehot(c_i) == embedding lookup; (B,h,w,C) -> (B,C,h,w).
            h = F.embedding(c_i, self.embed[i].weight, padding_idx=self.num_classes)
            h = h.permute(0, 3, 1, 2) + self.bias[i].view(1, -1, 1, 1)
            if prev is not None:
                up = F.interpolate(prev, size=sizes[i], mode="bilinear", align_corners=False)
                h = h + self.up[i](up)
            prev = F.leaky_relu(h, self.negative_slope).contiguous()
            feats[i] = prev
        return feats  # type: ignore[return-value]
