"""The feature-alignment stage of one scale: MSCA (msca_kernels.nn.MSCA) or one of the two
ablations of Table 1 that replace it ("ours GAP" and "ours MSCA w/o att")."""
from __future__ import annotations

import torch
import torch.nn as nn

from .encoders import label_indices, resize_labels

ALIGNMENTS = ("msca", "gap", "label_matching")


class GAPAlignment(nn.Module):
    """"Ours GAP": every target position gets the global average of the exemplar features
    (MSCA with K = 1 and a constant attention). No parameters."""

    def forward(self, fx2: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        B, N = fx2.shape[:2]
        return fx2.mean(dim=(2, 3), keepdim=True).expand(B, N, *size).contiguous()


class LabelMatchingAlignment(nn.Module):
    """"Ours MSCA w/o att": MSCA whose spatial and channel attention are the one-hot label maps
    of exemplar and target (K = num_classes):

        V[n,k]   = mean of Fx2[n] over the exemplar pixels of class k   (alpha = onehot(c2)/|k|)
        out[n,t] = mask[c1(t)] * V[n, c1(t)]                             (beta = onehot(c1))

    so features move only between regions of the same class; a class absent from the exemplar
    (and the ignore label) gives zeros. Feature masking (Eq. 6, an MLP on [gap(Fc1), gap(Fc2)]
    giving one gate per class) is kept, as the ablation keeps the rest of the module. Computed
    with index_add / index_select on flattened (batch, class) indices: no one-hot tensor.
    """

    def __init__(self, num_classes: int, label_channels_target: int,
                 label_channels_exemplar: int, *, ignore_label: int | None = 255,
                 feature_masking: bool = True, mask_hidden: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        if feature_masking:
            m = label_channels_target + label_channels_exemplar
            hidden = mask_hidden or max(num_classes, m // 2)  # same rule as nn.MSCA
            self.mask_mlp = nn.Sequential(nn.Linear(m, hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, num_classes))
        else:
            self.mask_mlp = None

    def feature_mask(self, fc2: torch.Tensor, fc1: torch.Tensor) -> torch.Tensor | None:
        if self.mask_mlp is None:
            return None
        pooled = torch.cat([fc1.mean(dim=(2, 3)), fc2.mean(dim=(2, 3))], dim=1)
        return torch.sigmoid(self.mask_mlp(pooled))

    def forward(self, fx2: torch.Tensor, fc2: torch.Tensor, fc1: torch.Tensor,
                label: torch.Tensor, exemplar_label: torch.Tensor) -> torch.Tensor:
        B, N, H2, W2 = fx2.shape
        H1, W1 = fc1.shape[2:]
        C = self.num_classes
        # Class index per pixel; the ignore label becomes C (an extra, discarded class).
        c2 = resize_labels(label_indices(exemplar_label, C, self.ignore_label), (H2, W2))
        c1 = resize_labels(label_indices(label, C, self.ignore_label), (H1, W1))
        offs = (torch.arange(B, device=fx2.device) * (C + 1)).view(B, 1)
        seg2 = (c2.reshape(B, -1) + offs).reshape(-1)                     # (B*P2,)
        seg1 = (c1.reshape(B, -1) + offs).reshape(-1)                     # (B*P1,)
        feats = fx2.flatten(2).transpose(1, 2).reshape(B * H2 * W2, N)    # (B*P2, N)
        sums = fx2.new_zeros(B * (C + 1), N).index_add(0, seg2, feats)
        counts = torch.bincount(seg2, minlength=B * (C + 1)).to(fx2.dtype)
        V = (sums / counts.clamp(min=1).unsqueeze(1)).view(B, C + 1, N)
        keep = torch.ones(C + 1, dtype=fx2.dtype, device=fx2.device)
        keep[C] = 0                                                        # ignore -> zeros
        V = V * keep.view(1, C + 1, 1)
        mask = self.feature_mask(fc2, fc1)
        if mask is not None:
            V = V * torch.cat([mask, mask.new_zeros(B, 1)], dim=1).unsqueeze(2)
        out = V.reshape(B * (C + 1), N).index_select(0, seg1)              # (B*P1, N)
        return out.view(B, H1 * W1, N).transpose(1, 2).reshape(B, N, H1, W1)
