"""Extrapolation (paper Fig. 8): a larger canvas from an exemplar patch at its centre.

Given the label map of the whole canvas (H x W) and an exemplar patch (with its label map),
patches of the generator's working size P are synthesized at the 4 corners of the canvas and at
`n_random` random locations, each G(label crop, exemplar patch, exemplar patch label), and
combined by a weighted average: every patch votes with a smooth window that is largest at its
centre and small (never zero) at its border, w(y, x) = sin(pi (y + 1/2) / P) sin(pi (x + 1/2) / P),
so seams between patches blend instead of showing. The corners cover the whole canvas whenever
H, W <= 2P (a larger canvas also gets a regular grid of patches that covers it); the random
patches add overlap (the paper: 512 x 512 from 256 x 256 patches at the 4
corners and 10 random locations).
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from msca.data.transforms import colorize_labels, tensor_to_pil


def patch_window(p: int, dtype=torch.float32) -> torch.Tensor:
    s = torch.sin(math.pi * (torch.arange(p, dtype=torch.float64) + 0.5) / p)
    return (s[:, None] * s[None, :]).to(dtype)


def patch_locations(H: int, W: int, p: int, n_random: int, seed: int = 0) -> list:
    """(top, left) of the 4 corners (plus a covering grid when the canvas is more than twice
    the patch size), then n_random uniformly random patches."""
    if p > H or p > W:
        raise ValueError(f"patch: expected a patch size <= the canvas ({H}x{W}), got {p}")
    locs = [(0, 0), (0, W - p), (H - p, 0), (H - p, W - p)]
    if H > 2 * p or W > 2 * p:
        # the corners leave a gap in the middle: add a regular grid that covers the canvas
        tops = np.linspace(0, H - p, math.ceil(H / p)).round().astype(int).tolist()
        lefts = np.linspace(0, W - p, math.ceil(W / p)).round().astype(int).tolist()
        locs += [(t, l) for t in tops for l in lefts if (t, l) not in locs]
    rng = np.random.default_rng(seed)
    for _ in range(n_random):
        locs.append((int(rng.integers(0, H - p + 1)), int(rng.integers(0, W - p + 1))))
    return locs


@torch.no_grad()
def extrapolate(G, label: torch.Tensor, exemplar: torch.Tensor,
                exemplar_label: torch.Tensor, *, patch: int, n_random: int = 10,
                seed: int = 0, batch: int = 8) -> torch.Tensor:
    """label (1,H,W) of the whole canvas, exemplar (1,3,h,w) and its label (1,h,w) ->
    (1,3,H,W): the weighted combination of synthesized patches (module docstring)."""
    if label.dim() != 3 or label.shape[0] != 1:
        raise ValueError(f"label: expected one label map (1,H,W), got {tuple(label.shape)}")
    H, W = label.shape[-2:]
    locs = patch_locations(H, W, patch, n_random, seed)
    G.eval()
    win = patch_window(patch, exemplar.dtype)
    acc = exemplar.new_zeros(1, 3, H, W)
    wsum = exemplar.new_zeros(1, 1, H, W)
    for s in range(0, len(locs), batch):
        chunk = locs[s:s + batch]
        crops = torch.stack([label[0, t:t + patch, l:l + patch] for t, l in chunk])
        n = len(chunk)
        out = G(crops, exemplar.expand(n, -1, -1, -1), exemplar_label.expand(n, -1, -1))
        for j, (t, l) in enumerate(chunk):
            acc[..., t:t + patch, l:l + patch] += out[j] * win
            wsum[..., t:t + patch, l:l + patch] += win
    if bool((wsum == 0).any()):  # cannot happen with the 4 corners; guards a caller's canvas
        raise ValueError("patch: the patches do not cover the canvas")
    return acc / wsum


def extrapolation_figure(label, exemplar, canvas_out, ground_truth, num_classes,
                         scale: int = 2) -> Image.Image:
    H, W = label.shape[-2:]
    h, w = exemplar.shape[-2:]
    placed = Image.new("RGB", (W, H), (128, 128, 128))
    placed.paste(tensor_to_pil(exemplar), ((W - w) // 2, (H - h) // 2))
    cells = [Image.fromarray(colorize_labels(label, num_classes)), placed,
             tensor_to_pil(canvas_out)]
    caps = ["label map of the canvas", "exemplar patch (centre)", "extrapolated"]
    if ground_truth is not None:
        cells.append(tensor_to_pil(ground_truth))
        caps.append("ground truth scene")
    ims = [c.resize((c.width * scale, c.height * scale), Image.NEAREST) for c in cells]
    pad, cap = 6, 14
    canvas = Image.new("RGB", (sum(i.width for i in ims) + pad * (len(ims) - 1),
                               max(i.height for i in ims) + 2 * cap), "white")
    d = ImageDraw.Draw(canvas)
    d.text((2, 1), "extrapolation: weighted combination of patches synthesized at the 4 corners "
           "and random locations from the centre exemplar patch", fill="black")
    x = 0
    for im, c in zip(ims, caps):
        canvas.paste(im, (x, 2 * cap))
        d.text((x + 2, cap + 1), c, fill="black")
        x += im.width + pad
    return canvas


def extrapolate_files(*, out: str, checkpoint: str, label: str | None = None,
                      exemplar: str | None = None, exemplar_label: str | None = None,
                      factor: int = 2, n_random: int = 10, backend=None, seed: int = 0,
                      index: int = 0):
    """Procedural default: a test scene rendered at factor x the working size, its centre
    patch as the exemplar. Own files: --label (the canvas) and the exemplar with its label,
    resized to the working size."""
    from msca.train.checkpoint import load_generator

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    p = opt.crop_size
    gt = None
    if label is None and exemplar is None and exemplar_label is None:
        if factor < 1:
            raise ValueError(f"--factor: expected >= 1, got {factor}")
        from msca.data.procedural import ProceduralScenes
        item = ProceduralScenes("test", p * factor, index + 1, seed=seed)[index]
        gt, c = item["image"], item["label"]
        t = (c.shape[0] - p) // 2
        ex, exl = gt[:, t:t + p, t:t + p][None], c[t:t + p, t:t + p][None]
        lab = c[None]
    else:
        from msca.data.folder import load_label
        from .synthesize import _check_file, load_inputs
        if label is None:
            raise ValueError("--label: the canvas label map is required with your own files")
        _, ex, exl, _ = load_inputs(_check_file("--label", label), exemplar, exemplar_label,
                                    opt.num_classes, p, opt.ignore_label)
        lab = load_label(label, None, opt.num_classes, ignore_value=opt.ignore_label)[None]
        if min(lab.shape[-2:]) < p:
            raise ValueError(f"--label {label!r}: the canvas must be at least the working size "
                             f"{p} on each side, got {tuple(lab.shape[-2:])}")
    result = extrapolate(G, lab, ex, exl, patch=p, n_random=n_random, seed=seed)
    fig = extrapolation_figure(lab[0], ex[0], result[0], gt, opt.num_classes)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.save(out)
    return result, fig
