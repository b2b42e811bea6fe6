"""The class legend of a model (id, name, colour) and colour-palette label maps.

A label map is either single-channel (each pixel a class id, 255 = unlabelled) or a colour
picture painted with the legend's colours: `read_label_map` turns the latter into ids through a
palette, the built-in one (what `msca classes` prints) or a palette file of your own:

    # id  red green blue  name (optional)
    0     70  130   180   sky
    5     110 220   90    grass

Every colour of a colour label map must be in the palette (exactly: paint without
anti-aliasing); pure black (0, 0, 0) means unlabelled unless the palette gives it a class.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from msca.data.transforms import label_palette

UNLABELLED = 255


def class_names(dataset: str, num_classes: int) -> list[str]:
    """Names of the ids 0..num_classes-1 of a model trained on `dataset`."""
    if dataset == "procedural":
        from msca.data.procedural import CLASS_NAMES as names
    elif dataset == "cocostuff":
        from msca.data.coco_stuff import FIRST_STUFF, STUFF_NAMES
        names = [f"thing {i}" for i in range(FIRST_STUFF)] + list(STUFF_NAMES)
    else:
        names = []
    return [names[i] if i < len(names) else f"class {i} (unused)" if dataset == "procedural"
            else f"class {i}" for i in range(num_classes)]


def builtin_palette(dataset: str, num_classes: int) -> dict[int, tuple[tuple[int, int, int], str]]:
    """{id: ((r, g, b), name)}: the colours the figures use for label maps."""
    colours = label_palette(num_classes)
    names = class_names(dataset, num_classes)
    return {i: (tuple(int(c) for c in colours[i]), names[i]) for i in range(num_classes)}


def legend_text(palette: dict[int, tuple[tuple[int, int, int], str]]) -> str:
    """The palette as a palette file (also the human-readable legend)."""
    lines = ["# id  red green blue  name   (255 = unlabelled; black pixels in colour label maps)"]
    for i, ((r, g, b), name) in sorted(palette.items()):
        lines.append(f"{i:<5d} {r:<3d} {g:<5d} {b:<5d} {name}")
    return "\n".join(lines) + "\n"


def read_palette(path: str, num_classes: int) -> dict[int, tuple[tuple[int, int, int], str]]:
    """A palette file -> {id: ((r, g, b), name)}; errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--palette {path!r}: no such file")
    palette: dict[int, tuple[tuple[int, int, int], str]] = {}
    seen: dict[tuple[int, int, int], int] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(None, 4)
            where = f"--palette {path!r} line {n}"
            try:
                cid, r, g, b = (int(p) for p in parts[:4])
            except ValueError:
                raise ValueError(f"{where}: expected 'id red green blue [name]' (integers), "
                                 f"got {line!r}") from None
            if not (0 <= cid < num_classes or cid == UNLABELLED):
                raise ValueError(f"{where}: class id {cid} out of range 0..{num_classes - 1} "
                                 f"(or {UNLABELLED})")
            if not all(0 <= c <= 255 for c in (r, g, b)):
                raise ValueError(f"{where}: colour components must be 0..255, got {(r, g, b)}")
            if (r, g, b) in seen:
                raise ValueError(f"{where}: colour {(r, g, b)} already names class "
                                 f"{seen[(r, g, b)]}")
            seen[(r, g, b)] = cid
            palette[cid] = ((r, g, b), parts[4] if len(parts) > 4 else f"class {cid}")
    if not palette:
        raise ValueError(f"--palette {path!r}: no 'id red green blue' lines")
    return palette


def colours_to_ids(rgb: np.ndarray, palette: dict[int, tuple[tuple[int, int, int], str]],
                   source: str) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int64 ids; a colour not in the palette is an error
    naming `source`, the colour and how many pixels have it."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: cid for cid, ((r, g, b), _) in palette.items()}
    table.setdefault(0, UNLABELLED)  # black: unlabelled unless the palette says otherwise
    uniq, inverse = np.unique(codes, return_inverse=True)
    missing = [u for u in uniq if int(u) not in table]
    if missing:
        counts = {int(u): int((codes == u).sum()) for u in missing[:3]}
        shown = ", ".join(f"{((u >> 16) & 255, (u >> 8) & 255, u & 255)} ({c} pixels)"
                          for u, c in counts.items())
        raise ValueError(f"label {source}: {len(missing)} colour(s) not in the palette, e.g. "
                         f"{shown}; paint with the colours of `msca classes` (no anti-aliasing) "
                         "or pass --palette FILE")
    ids = np.array([table[int(u)] for u in uniq], dtype=np.int64)
    return ids[inverse].reshape(codes.shape)


def read_label_map(path: str, num_classes: int, palette, ignore_value: int = UNLABELLED):
    """A label PNG, single-channel ids or colours through `palette`, -> (H, W) int64 tensor."""
    import torch

    from msca.data.folder import load_label

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("RGB", "RGBA"):
                rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"cannot read label {path}: {e}") from e
    if mode not in ("RGB", "RGBA"):
        return load_label(path, None, num_classes, ignore_value=ignore_value)
    return torch.from_numpy(colours_to_ids(rgb, palette, path))
