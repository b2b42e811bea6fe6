"""The attention figure on an absolute colour scale.

Row 1: the exemplar, then the K spatial maps alpha_k over it (Eq. 4: where each "style token"
reads from). Row 2: the target label map, then the K channel maps beta_k over the target
(Eq. 7: where each token is written to). One colour scale per row, shared by all its maps and
drawn as a colour bar with its values: alpha from 0 to the largest alpha value in the figure
(or a caller-given maximum, to compare figures), beta from 0 to 1 (it is a probability over
the K maps). The uniform level (1/P2 for alpha, 1/K for beta) is marked on each bar. A map
that is as flat as global average pooling therefore shows as flat, not stretched to full
contrast as a per-map min-max normalisation would show it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from msca.data.transforms import colorize_labels, tensor_to_pil

_BAR = 6        # colour bar width in picture pixels (before enlarging)
_MARGIN = 64    # room for the bar's labels, in output pixels


def heat(m: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8, black-red-yellow-white."""
    m = np.clip(m, 0, 1)[..., None]
    rgb = np.concatenate([np.clip(3 * m, 0, 1), np.clip(3 * m - 1, 0, 1),
                          np.clip(3 * m - 2, 0, 1)], -1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _cells(maps: torch.Tensor, vmax: float, size) -> list[np.ndarray]:
    out = []
    for k in range(maps.shape[0]):
        m = maps[k].detach().double().cpu()[None, None] / vmax
        m = F.interpolate(m, size=size, mode="nearest")[0, 0].numpy()
        out.append(heat(m))
    return out


def _bar(h: int) -> np.ndarray:
    ramp = np.linspace(1, 0, h)[:, None].repeat(_BAR, 1)     # top = the maximum
    return heat(ramp)


def attention_figure(exemplar: torch.Tensor, label: torch.Tensor, alpha: torch.Tensor,
                     beta: torch.Tensor, num_classes: int, scale: int = 2,
                     alpha_max: float | None = None) -> Image.Image:
    """exemplar (3,H2,W2), label (H1,W1), alpha (K,h2,w2), beta (K,h1,w1) of one pair at one
    scale -> the figure (module docstring). `alpha_max`: the top of alpha's colour scale
    (default: the largest alpha value shown)."""
    if alpha.dim() != 3 or beta.dim() != 3 or alpha.shape[0] != beta.shape[0]:
        raise ValueError(f"alpha, beta: expected (K,h2,w2) and (K,h1,w1) with one K, got "
                         f"{tuple(alpha.shape)} and {tuple(beta.shape)}")
    K = alpha.shape[0]
    P2 = alpha.shape[-2] * alpha.shape[-1]
    a_max = float(alpha.max()) if alpha_max is None else float(alpha_max)
    if not a_max > 0:
        raise ValueError(f"alpha_max: expected > 0, got {a_max!r}")
    ex = np.asarray(tensor_to_pil(exemplar))
    lab = colorize_labels(label, num_classes)
    rows, bars = [], []
    for base, maps, vmax, uniform in ((ex, alpha, a_max, 1 / P2), (lab, beta, 1.0, 1 / K)):
        h, w = base.shape[:2]
        cells = [base] + _cells(maps, vmax, (h, w))
        rows.append(np.concatenate(cells, 1))
        bars.append((vmax, uniform))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    grid = np.concatenate([np.concatenate([r, np.full((r.shape[0], 2, 3), 255, np.uint8),
                                           _bar(r.shape[0])], 1) for r in rows], 0)
    img = Image.fromarray(grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)

    pad = 14
    canvas = Image.new("RGB", (img.width + _MARGIN, img.height + 2 * pad), "white")
    canvas.paste(img, (0, pad))
    d = ImageDraw.Draw(canvas)
    bar_x = img.width - _BAR * scale
    y0 = pad
    for r, (vmax, uniform) in zip(rows, bars):
        hh = r.shape[0] * scale
        d.text((img.width + 3, y0), f"{vmax:.3g}", fill="black")
        d.text((img.width + 3, y0 + hh - 11), "0", fill="black")
        if uniform <= vmax:   # the uniform level, a line across the bar
            yu = y0 + round((1 - uniform / vmax) * (hh - 1))
            d.line([(bar_x - 2, yu), (img.width + 2, yu)], fill="cyan", width=1)
            d.text((img.width + 3, min(max(yu - 5, y0 + 11), y0 + hh - 22)),
                   f"unif {uniform:.2g}", fill="black")
        y0 += hh
    d.text((2, 1), f"exemplar | alpha_1..{K} over the exemplar, one scale 0..{a_max:.3g} "
           f"(uniform 1/{P2} = {1 / P2:.2g}; max = {a_max * P2:.0f}x uniform)", fill="black")
    d.text((2, img.height + pad + 1), f"target label | beta_1..{K} over the target, scale "
           f"0..1 (uniform 1/{K})", fill="black")
    return canvas


__all__ = ["attention_figure", "heat"]
