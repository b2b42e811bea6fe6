"""Training augmentations and the patch sampling of the self-supervised task.

Paper Sec. 3.4 and Appendix F: images are resized to 512x512; for the first 20 epochs two
256x256 patches are sampled from the global image "then we perform random collision avoidance
in horizontal direction or vertical direction" so that the patches do not overlap, and the
generator reconstructs patch p from patch q (Eq. 9).  In the last 20 epochs the patches are
384x384 crops resized to 256.  Two 384 patches cannot be disjoint inside 512x512 (2*384 > 512),
and the paper does not claim they are, so ``sample_patch_pair(..., allow_overlap=True)``
samples them independently when disjoint boxes are impossible.  Random horizontal flipping is
applied to the training data, to an image and its label together.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .procedural import LABEL_COLORS


class Box(NamedTuple):
    """A crop window in pixels: rows [top, top+height), columns [left, left+width)."""
    top: int
    left: int
    height: int
    width: int

    def overlaps(self, other: "Box") -> bool:
        return (self.top < other.top + other.height and other.top < self.top + self.height
                and self.left < other.left + other.width and other.left < self.left + self.width)


def _disjoint_1d(rng: np.random.Generator, length: int, patch: int) -> Tuple[int, int]:
    """Two starts a, b in [0, length-patch] with |a - b| >= patch, random order."""
    gap = length - 2 * patch  # >= 0, checked by the caller
    u, v = sorted(int(t) for t in rng.integers(0, gap + 1, size=2))
    first, second = u, v + patch
    return (first, second) if rng.random() < 0.5 else (second, first)


def sample_patch_pair(rng: np.random.Generator, H: int, W: int, patch: int,
                      allow_overlap: bool = False) -> Tuple[Box, Box]:
    """Two square ``patch`` x ``patch`` boxes inside an H x W image that do not overlap.

    Both boxes are first drawn uniformly; if they collide, one axis (horizontal or vertical,
    at random among those long enough to hold two patches side by side) is re-drawn so that
    the boxes are separated along it, the other axis is kept: the paper's "random collision
    avoidance in horizontal or vertical direction".  Raises ValueError when no disjoint pair
    fits (2*patch > H and 2*patch > W), unless ``allow_overlap``, in which case the two
    uniform boxes are returned as drawn (the 384-in-512 stage of Appendix F).
    """
    H, W, patch = int(H), int(W), int(patch)
    if patch < 1:
        raise ValueError(f"patch: expected >= 1, got {patch}")
    if patch > H or patch > W:
        raise ValueError(f"patch: a {patch}x{patch} patch does not fit in a {H}x{W} image")
    ys = rng.integers(0, H - patch + 1, size=2)
    xs = rng.integers(0, W - patch + 1, size=2)
    p = Box(int(ys[0]), int(xs[0]), patch, patch)
    q = Box(int(ys[1]), int(xs[1]), patch, patch)
    if not p.overlaps(q):
        return p, q
    axes = [a for a, n in (("y", H), ("x", W)) if 2 * patch <= n]
    if not axes:
        if allow_overlap:
            return p, q
        raise ValueError(f"sample_patch_pair: two non-overlapping {patch}x{patch} patches need "
                         f"2*{patch} <= H or W, got a {H}x{W} image")
    axis = axes[int(rng.integers(len(axes)))]
    if axis == "y":
        a, b = _disjoint_1d(rng, H, patch)
        return p._replace(top=a), q._replace(top=b)
    a, b = _disjoint_1d(rng, W, patch)
    return p._replace(left=a), q._replace(left=b)


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """Crop the last two (H, W) dims of an image (..., C, H, W) or label (..., H, W) tensor."""
    H, W = x.shape[-2:]
    if box.top < 0 or box.left < 0 or box.top + box.height > H or box.left + box.width > W:
        raise ValueError(f"crop: box {tuple(box)} is outside a {H}x{W} tensor")
    return x[..., box.top:box.top + box.height, box.left:box.left + box.width]


def crop_pair(image: torch.Tensor, label: torch.Tensor, box: Box):
    if image.shape[-2:] != label.shape[-2:]:
        raise ValueError(f"crop_pair: image {tuple(image.shape)} and label {tuple(label.shape)} "
                         "differ in size")
    return crop(image, box), crop(label, box)


def resize_pair(image: torch.Tensor, label: torch.Tensor, size: int):
    """Resize an image (C,H,W) bilinearly (antialiased) and its label (H,W) by nearest."""
    img = F.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)[0]
    lab = F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0]
    return img.clamp_(-1, 1), lab.to(label.dtype)


def hflip(image: torch.Tensor, label: Optional[torch.Tensor] = None):
    """Mirror left-right; image (..., H, W) and label (..., H, W) flip together."""
    if label is None:
        return image.flip(-1)
    return image.flip(-1), label.flip(-1)


def random_hflip(rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor, p: float = 0.5):
    """Flip image and label together with probability p (one draw for both)."""
    if rng.random() < p:
        return hflip(image, label)
    return image, label


def patch_pair_task(rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor,
                    patch: int, out_size: Optional[int] = None, flip: bool = True,
                    allow_overlap: bool = False) -> dict:
    """Eq. 9 inputs from one scene: crops p and q of ``patch`` pixels (resized to ``out_size``
    when given, the 384 -> 256 stage), each randomly flipped.  Returns image_p, label_p,
    image_q, label_q and the boxes."""
    bp, bq = sample_patch_pair(rng, image.shape[-2], image.shape[-1], patch, allow_overlap)
    out = {"box_p": bp, "box_q": bq}
    for name, box in (("p", bp), ("q", bq)):
        img, lab = crop_pair(image, label, box)
        if out_size is not None and out_size != patch:
            img, lab = resize_pair(img, lab, out_size)
        if flip:
            img, lab = random_hflip(rng, img, lab)
        out[f"image_{name}"], out[f"label_{name}"] = img.contiguous(), lab.contiguous()
    return out


def exemplar_subcrop(rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor,
                     lo: float = 0.35, hi: float = 0.7):
    """A random square window of ``lo``..``hi`` of the exemplar's side, resized back to its
    size. The two patches of one scene share most classes, unlike the cross-scene pairs a
    user brings (29% of the demo's test pixels are of classes the exemplar lacks): a smaller
    exemplar makes such classes common in training too."""
    H, W = image.shape[-2:]
    if H != W:
        raise ValueError(f"exemplar_subcrop: expected a square patch, got {H}x{W}")
    side = max(1, int(round(H * rng.uniform(lo, hi))))
    y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    img, lab = resize_pair(image[..., y:y + side, x:x + side],
                           label[..., y:y + side, x:x + side], H)
    return img.to(image.dtype).contiguous(), lab.contiguous()


# --------------------------------------------------------------------------- conversions
def to_tensor_image(pil: Image.Image) -> torch.Tensor:
    """PIL image -> float32 (3, H, W) in [-1, 1] (converted to RGB first)."""
    arr = np.asarray(pil.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """(3, H, W) tensor in [-1, 1] -> RGB PIL image (values outside are clipped)."""
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"tensor_to_pil: expected (3, H, W), got {tuple(t.shape)}")
    arr = ((t.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def label_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: the procedural LABEL_COLORS first, then well-spread
    colours from a deterministic golden-ratio hue walk."""
    pal = np.zeros((max(num_classes, 0), 3), np.uint8)
    k = min(num_classes, len(LABEL_COLORS))
    pal[:k] = LABEL_COLORS[:k]
    for i in range(k, num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat = 0.55 + 0.4 * ((i * 7) % 3) / 2
        val = 0.6 + 0.4 * ((i * 5) % 4) / 3
        rgb = np.clip(np.abs(((hue * 6 + np.array([0, 4, 2])) % 6) - 3) - 1, 0, 1)  # hsv->rgb
        pal[i] = np.round(255 * val * (1 - sat + sat * rgb))
    return pal


def colorize_labels(label, num_classes: Optional[int] = None, ignore_index: int = 255) -> np.ndarray:
    """(H, W) label ids (numpy or tensor) -> (H, W, 3) uint8 RGB; ignore_index is black."""
    lab = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    lab = lab.astype(np.int64)
    valid = (lab >= 0) & (lab != ignore_index)
    n = num_classes if num_classes is not None else int(lab[valid].max()) + 1 if valid.any() else 1
    if valid.any() and lab[valid].max() >= n:
        raise ValueError(f"colorize_labels: label value {int(lab[valid].max())} >= num_classes {n}")
    pal = label_palette(n)
    out = np.zeros(lab.shape + (3,), np.uint8)
    out[valid] = pal[lab[valid]]
    return out
