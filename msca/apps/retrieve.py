"""`msca retrieve`: the top-k exemplars of a pool for a target label map (paper Sec. 4's
retrieval: label-histogram intersection, then the best match; msca/eval/retrieval.py).

A pool is a folder of label PNGs: DIR/labels/<stem>.png (with DIR/images/<stem>.jpg|png, the
LabelFolder layout) or label PNGs directly in DIR. Without --label/--pool the target is a
procedural test scene and the pool the following test scenes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from msca.data.transforms import colorize_labels
from msca.eval.retrieval import retrieve

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _pool_files(pool: str) -> list[tuple[Path, Path | None]]:
    root = Path(pool)
    if not root.is_dir():
        raise FileNotFoundError(f"--pool {pool!r}: no such directory")
    lab_dir = root / "labels" if (root / "labels").is_dir() else root
    img_dir = root / "images" if (root / "images").is_dir() else None
    out = []
    for lab in sorted(p for p in lab_dir.iterdir() if p.suffix.lower() == ".png"):
        img = None
        if img_dir is not None:
            for ext in IMAGE_EXTS:
                if (img_dir / (lab.stem + ext)).is_file():
                    img = img_dir / (lab.stem + ext)
                    break
        out.append((lab, img))
    if not out:
        raise FileNotFoundError(f"--pool {pool!r}: no label PNGs in {lab_dir}")
    return out


def retrieve_files(*, label: str | None, pool: str | None, k: int = 20,
                   num_classes: int = 255, ignore_label: int = 255, out: str | None = None,
                   pool_size: int = 300, size: int = 64, seed: int = 0) -> dict:
    """Rank the pool for `label`; returns {"target", "ranked": [(name, intersection)],
    "best": name, "agreement"} and writes a figure to `out` if given."""
    from msca.data.folder import load_image, load_label

    if (label is None) != (pool is None):
        raise ValueError("--label, --pool: give both (your own files) or neither (procedural "
                         "scenes)")
    if label is None:
        from msca.data.procedural import NUM_CLASSES, ProceduralScenes
        ds = ProceduralScenes("test", size, pool_size + 1, seed=seed)
        items = [ds[i] for i in range(pool_size + 1)]
        target = items[0]["label"]
        pool_labels = [it["label"] for it in items[1:]]
        pool_images = [it["image"] for it in items[1:]]
        names = [f"test scene {i}" for i in range(1, pool_size + 1)]
        target_name = "test scene 0"
        num_classes = NUM_CLASSES
        target_image = items[0]["image"]
    else:
        if not os.path.isfile(label):
            raise FileNotFoundError(f"--label {label!r}: no such file")
        target = load_label(label, None, num_classes, ignore_value=ignore_label)
        files = _pool_files(pool)
        pool_labels = [load_label(p, None, num_classes, ignore_value=ignore_label)
                       for p, _ in files]
        pool_images = [load_image(i, None) if i is not None else None for _, i in files]
        names = [p.name for p, _ in files]
        target_name = label
        target_image = None
    r = retrieve(target, pool_labels, num_classes, k=k, ignore_label=ignore_label)
    res = {"target": target_name, "ranked": [(names[i], s) for i, s in zip(r["topk"],
                                                                              r["scores"])],
           "best": names[r["best"]], "agreement": r["agreement"]}
    if out:
        fig = retrieval_figure(target, target_image, [pool_labels[i] for i in r["topk"]],
                               [pool_images[i] for i in r["topk"]], r["scores"],
                               r["topk"].index(r["best"]), num_classes, ignore_label)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        fig.save(out)
    return res


def _cell(label, image, num_classes, ignore_label, side):
    if image is not None:
        arr = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    else:
        arr = colorize_labels(label, num_classes, ignore_label)
    im = Image.fromarray(np.ascontiguousarray(arr))
    return im.resize((side, side), Image.NEAREST)


def retrieval_figure(target, target_image, labels, images, scores, best_pos, num_classes,
                     ignore_label=255, side=96, per_row=10) -> Image.Image:
    """Target label (and image) at the left; the top-k candidates (their images if known,
    else label maps) in rank order with their intersection; the best match framed in red."""
    pad, cap = 4, 14
    n = len(labels)
    rows = (n + per_row - 1) // per_row
    left = 2 * (side + pad) if target_image is not None else side + pad
    W = left + min(n, per_row) * (side + pad)
    H = cap + rows * (side + cap + pad) + cap
    canvas = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(canvas)
    d.text((2, 1), "target label" + (" | target image" if target_image is not None else "")
           + f" | top {n} of the pool by label-histogram intersection (red: best match)",
           fill="black")
    canvas.paste(_cell(target, None, num_classes, ignore_label, side), (0, 2 * cap))
    if target_image is not None:
        canvas.paste(_cell(target, target_image, num_classes, ignore_label, side),
                     (side + pad, 2 * cap))
    for j in range(n):
        r, c = divmod(j, per_row)
        x, y = left + c * (side + pad), cap + r * (side + cap + pad) + cap
        canvas.paste(_cell(labels[j], images[j], num_classes, ignore_label, side), (x, y))
        d.text((x + 1, y - cap + 1), f"#{j + 1} {scores[j]:.2f}", fill="black")
        if j == best_pos:
            d.rectangle([x - 2, y - 2, x + side + 1, y + side + 1], outline="red", width=2)
    return canvas
