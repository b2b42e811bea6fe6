"""Exemplar retrieval for the retrieving task of Sec. 4, and the ground-truth colour correction.

Retrieval (paper: "we first select 20 candidate images from the image pool that has the
greatest label histogram intersections with the GT image. Afterwards, the best-matched image is
selected out of candidates using SIFT Flow"):

  1. score every pool label map by the histogram intersection sum_k min(h_target[k], h_pool[k])
     of the normalised class histograms (ignore label excluded); keep the top k (20);
  2. among them take the best match. SIFT Flow (a dense SIFT-descriptor flow) is not part of
     this package; as its stand-in we take the candidate whose label map agrees with the
     target's at the most pixels (after resizing to the target's size), i.e. the candidate
     whose layout best matches without warping. Ties keep the histogram order.

Colour correction (the paper's [47], colour transfer in the spirit of Reinhard et al.): the
ground truth is recoloured to the retrieved exemplar's colour statistics by matching the
per-channel mean and standard deviation in CIE L*a*b*, since the exemplar's colours can differ
from the target's own and no model could recover them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from msca.models.encoders import label_indices


def label_histogram(label: torch.Tensor, num_classes: int, ignore_label: int | None = 255
                    ) -> torch.Tensor:
    """(H,W) or (B,H,W) int labels -> normalised class histograms (num_classes,) / (B, C),
    float64; the ignore label is not counted (an all-ignore map gives zeros)."""
    if not isinstance(label, torch.Tensor) or label.dim() not in (2, 3):
        raise ValueError(f"label: expected an integer label map (H,W) or (B,H,W), got "
                         f"{getattr(label, 'shape', type(label))}")
    squeeze = label.dim() == 2
    lab = label_indices(label.reshape(label.shape[0] if not squeeze else 1, -1),
                        num_classes, ignore_label)
    if int(lab.min()) < 0 or int(lab.max()) > num_classes:
        raise ValueError(f"label: values outside 0..{num_classes - 1} (and {ignore_label})")
    B = lab.shape[0]
    offs = torch.arange(B).view(B, 1) * (num_classes + 1)
    counts = torch.bincount((lab + offs).reshape(-1), minlength=B * (num_classes + 1))
    h = counts.view(B, num_classes + 1)[:, :num_classes].double()
    h = h / h.sum(1, keepdim=True).clamp_min(1)
    return h[0] if squeeze else h


def histogram_intersection(h: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """h (C,), pool (P, C) -> (P,) sum_k min(h_k, pool_pk)."""
    return torch.minimum(h.unsqueeze(0), pool).sum(1)


def _resize_labels(lab: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(lab[None, None].float(), size=size, mode="nearest")[0, 0].long()


def retrieve(label: torch.Tensor, pool_labels, num_classes: int, *, k: int = 20,
             ignore_label: int | None = 255, exclude=()) -> dict:
    """Top-k pool indices by label-histogram intersection with `label` (H,W), then the best
    match among them (see the module docstring). `pool_labels`: a sequence of (H',W') maps or
    a (P,H',W') tensor; `exclude`: pool indices never returned (e.g. the target itself).

    Returns {"topk": [indices, best first], "scores": [their intersections],
             "best": index, "agreement": best's pixel agreement with the target}."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    pool = list(pool_labels)
    if not pool:
        raise ValueError("pool_labels: empty pool")
    h = label_histogram(label, num_classes, ignore_label)
    ph = torch.stack([label_histogram(p, num_classes, ignore_label) for p in pool])
    scores = histogram_intersection(h, ph)
    for i in exclude:
        scores[i] = -1.0
    allowed = int((scores >= 0).sum())
    if allowed == 0:
        raise ValueError("pool_labels: every pool item is excluded")
    kk = min(k, allowed)
    order = torch.argsort(-scores, stable=True)[:kk].tolist()
    size = tuple(label.shape[-2:])
    target = label_indices(label, num_classes, ignore_label)
    agree = []
    for i in order:
        p = label_indices(pool[i], num_classes, ignore_label)
        if tuple(p.shape) != size:
            p = _resize_labels(p, size)
        agree.append(float((p == target).double().mean()))
    best_pos = max(range(kk), key=lambda j: (agree[j], -j))
    return {"topk": order, "scores": [float(scores[i]) for i in order],
            "best": order[best_pos], "agreement": agree[best_pos]}


# --------------------------------------------------------------------------- colour
_M_RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                           [0.2126729, 0.7151522, 0.0721750],
                           [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)   # D65


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) sRGB in [-1,1] -> CIE L*a*b* (D65), float64."""
    c = (x.double().clamp(-1, 1) + 1) / 2
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = torch.einsum("ij,bjhw->bihw", _M_RGB2XYZ, lin) / _WHITE.view(1, 3, 1, 1)
    d = 6 / 29
    f = torch.where(xyz > d ** 3, xyz.clamp_min(1e-12) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of rgb_to_lab, -> sRGB in [-1,1] (clipped to the gamut)."""
    fy = (lab[:, 0] + 16) / 116
    fx = fy + lab[:, 1] / 500
    fz = fy - lab[:, 2] / 200
    d = 6 / 29
    f = torch.stack([fx, fy, fz], 1)
    xyz = torch.where(f > d, f ** 3, 3 * d * d * (f - 4 / 29)) * _WHITE.view(1, 3, 1, 1)
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_M_RGB2XYZ), xyz).clamp(0, 1)
    c = torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return (c * 2 - 1).clamp(-1, 1)


def color_correct(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Recolour `image` (B,3,H,W) to the L*a*b* per-channel mean and std of `reference`
    (B,3,H',W'), both in [-1,1]; returns the image's dtype."""
    for name, t in (("image", image), ("reference", reference)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"{name}: expected images (B,3,H,W), got "
                             f"{tuple(getattr(t, 'shape', ()))}")
    if image.shape[0] != reference.shape[0]:
        raise ValueError(f"image, reference: expected the same batch size, got "
                         f"{image.shape[0]} and {reference.shape[0]}")
    a, r = rgb_to_lab(image), rgb_to_lab(reference)
    ma, sa = a.mean(dim=(2, 3), keepdim=True), a.std(dim=(2, 3), keepdim=True)
    mr, sr = r.mean(dim=(2, 3), keepdim=True), r.std(dim=(2, 3), keepdim=True)
    out = (a - ma) * (sr / sa.clamp_min(1e-6)) + mr
    return lab_to_rgb(out).to(image.dtype)
