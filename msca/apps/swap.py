"""Style-structure swapping (paper Fig. 9): every scene's layout rendered in every scene's style.

Grid layout: the top row shows the N scenes (their layouts are the columns' structure), the
left column shows them again (their looks are the rows' style); cell (r, c) = G(c_c, x_r, c_r),
so the diagonal is self-reconstruction.
"""
from __future__ import annotations

import os

import torch
from PIL import Image, ImageDraw

from msca.data.transforms import tensor_to_pil

from .synthesize import load_inputs, synthesize


@torch.no_grad()
def swap_outputs(G, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """images (N,3,S,S), labels (N,S,S) -> (N_style, N_layout, 3, S, S)."""
    n = images.shape[0]
    rows = []
    for r in range(n):
        ex = images[r:r + 1].expand(n, -1, -1, -1)
        exl = labels[r:r + 1].expand(n, -1, -1)
        rows.append(synthesize(G, labels, ex, exl))
    return torch.stack(rows)


def swap_grid_image(images: torch.Tensor, outputs: torch.Tensor, scale: int = 2,
                    gap: int = 3) -> Image.Image:
    n, S = images.shape[0], images.shape[-1]
    cell = S * scale + gap
    canvas = Image.new("RGB", ((n + 1) * cell, (n + 1) * cell + 14), "white")

    def put(t, r, c):
        im = tensor_to_pil(t).resize((S * scale, S * scale), Image.NEAREST)
        canvas.paste(im, (c * cell, 14 + r * cell))

    for i in range(n):
        put(images[i], 0, i + 1)   # structure (layout) inputs along the top
        put(images[i], i + 1, 0)   # style inputs down the left
        for j in range(n):
            put(outputs[i, j], i + 1, j + 1)
    ImageDraw.Draw(canvas).text((2, 1), "rows: style of the left scene; columns: layout of "
                                "the top scene", fill="black")
    return canvas


def procedural_scenes(n: int, size: int, seed: int = 0, split: str = "test"):
    from msca.data.procedural import ProceduralScenes
    ds = ProceduralScenes(split, size, n, seed=seed)
    items = [ds[i] for i in range(n)]
    return (torch.stack([it["image"] for it in items]),
            torch.stack([it["label"] for it in items]))


def swap_grid_files(*, out: str, n: int = 4, checkpoint: str, images=None, labels=None,
                    backend: str | None = None, seed: int = 0, size: int | None = None):
    from msca.train.checkpoint import load_generator

    if n < 2:
        raise ValueError(f"--n: expected >= 2 scenes, got {n}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    size = size or opt.crop_size
    if images or labels:
        if not images or not labels or len(images) != len(labels):
            raise ValueError(f"--images, --labels: expected the same number of files, got "
                             f"{len(images or [])} and {len(labels or [])}")
        xs, cs = [], []
        for img, lab in zip(images, labels):
            # a scene's own label is both the layout (c1) and the exemplar label (c2)
            _, x, c, _ = load_inputs(lab, img, lab, opt.num_classes, size, opt.ignore_label)
            xs.append(x[0])
            cs.append(c[0])
        imgs, labs = torch.stack(xs), torch.stack(cs)
    else:
        imgs, labs = procedural_scenes(n, size, seed)
    grid = swap_grid_image(imgs, swap_outputs(G, imgs, labs))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid.save(out)
    return grid
