"""PSNR split by whether the exemplar shows the target pixel's class.

A target pixel whose class the exemplar has can take that class's colour from the exemplar;
one whose class the exemplar lacks must be guessed (from the other classes and from what was
learned). The split shows which of the two a method gains on.
"""
from __future__ import annotations

import torch

from msca.models.encoders import presence_mask, resize_labels

SUBSETS = ("present", "absent")


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB ([0,1] scale, pred clamped to [-1,1]) over the pixels of mask
    (B,H,W); NaN for an image whose mask is empty."""
    if pred.shape != target.shape or mask.shape != (pred.shape[0], *pred.shape[-2:]):
        raise ValueError(f"pred, target, mask: expected (B,3,H,W), (B,3,H,W), (B,H,W), got "
                         f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
    err = ((pred.double().clamp(-1, 1) - target.double()) / 2).pow(2).mean(1)   # (B,H,W)
    m = mask.double()
    n = m.flatten(1).sum(1)
    mse = (err * m).flatten(1).sum(1) / n.clamp_min(1)
    out = -10 * torch.log10(mse.clamp_min(1e-20))
    return torch.where(n > 0, out, torch.full_like(out, float("nan")))


def psnr_by_presence(pred: torch.Tensor, target: torch.Tensor, label: torch.Tensor,
                     exemplar_label: torch.Tensor, ignore_label: int | None = 255) -> dict:
    """{"present": (B,), "absent": (B,)} PSNR over each subset (NaN where it is empty), and
    "absent_share" (B,): the share of the image's pixels in the absent subset."""
    if tuple(label.shape[-2:]) != tuple(pred.shape[-2:]):
        label = resize_labels(label, tuple(pred.shape[-2:]))
    present, absent = presence_mask(label, exemplar_label, ignore_label)
    return {"present": masked_psnr(pred, target, present),
            "absent": masked_psnr(pred, target, absent),
            "absent_share": absent.flatten(1).double().mean(1)}


def summarise_presence(values: dict) -> dict:
    """Per-image results (lists or tensors, concatenated over batches) -> for each subset the
    mean over the images that have it, their number, and the per-pair values (None where
    empty); plus the mean absent share."""
    out = {}
    for key in SUBSETS:
        v = torch.as_tensor(values[key], dtype=torch.float64)
        ok = ~v.isnan()
        out[key] = {"mean": round(float(v[ok].mean()), 3) if ok.any() else None,
                    "pairs": int(ok.sum()),
                    "per_pair": [None if x != x else round(float(x), 3) for x in v.tolist()]}
    out["absent_share_mean"] = round(float(torch.as_tensor(values["absent_share"],
                                                           dtype=torch.float64).mean()), 4)
    return out


__all__ = ["SUBSETS", "masked_psnr", "presence_mask", "psnr_by_presence", "summarise_presence"]
