"""COCO-stuff (164k) with the paper's outdoor-scene filter.

Layout (the official ``stuffthingmaps_trainval2017`` label PNGs next to the COCO images)::

    root/images/train2017/*.jpg    root/annotations/train2017/*.png
    root/images/val2017/*.jpg      root/annotations/val2017/*.png

Label values are 0..181 (COCO category id - 1: things 0..90, with unused ids, and stuff
91..181) and 255 for unlabelled pixels; ``num_classes`` is 182.

The outdoor filter.  The paper (Sec. 4) only says: "We remove indoor images and images of
random objects from the training/validation set, resulting in 34,698/499 scene images".  It
does not define the rule, so ours is explicit and configurable:

* ``outdoor_frac``: fraction of all pixels whose label is in OUTDOOR_STUFF  >= 0.5
  (a scene must be mostly outdoor stuff; this also drops close-ups of "random objects", whose
  pixels are things or unlabelled);
* ``indoor_frac``: fraction of all pixels in INDOOR_STUFF < 0.05.

OUTDOOR_STUFF (PNG value: name): 93 branch, 94 bridge, 95 building-other, 96 bush,
105 clouds, 110 dirt, 112 fence, 118 flower, 119 fog, 123 grass, 124 gravel,
125 ground-other, 126 hill, 127 house, 128 leaves, 133 moss, 134 mountain, 135 mud,
139 pavement, 141 plant-other, 144 playingfield, 146 railroad, 147 river, 148 road,
149 rock, 150 roof, 153 sand, 154 sea, 156 sky-other, 157 skyscraper, 158 snow, 161 stone,
168 tree, 170 wall-brick, 174 wall-stone, 177 water-other.

INDOOR_STUFF: 97 cabinet, 100 carpet, 101 ceiling-other, 102 ceiling-tile, 106 counter,
107 cupboard, 108 curtain, 109 desk-stuff, 111 door-stuff, 113 floor-marble, 114 floor-other,
115 floor-stone, 116 floor-tile, 117 floor-wood, 122 furniture-other, 129 light, 130 mat,
132 mirror-stuff, 140 pillow, 151 rug, 155 shelf, 164 table, 167 towel, 173 wall-panel,
175 wall-tile, 179 window-blind.

Everything else (things, and ambiguous stuff such as wall-other, window-other, metal,
plastic, stairs, platform) counts for neither set.  The names are generated from STUFF_NAMES
below, so the ids in this docstring are checked by the tests.  Scanning every annotation is
slow (118k PNGs), so the kept file list is cached in ``root/outdoor_<split>.txt`` keyed by
the thresholds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
from PIL import Image

from .folder import IGNORE, LabelFolder, Size

NUM_CLASSES = 182
FIRST_STUFF = 91

STUFF_NAMES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog",
    "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield",
    "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
assert len(STUFF_NAMES) == NUM_CLASSES - FIRST_STUFF
STUFF_IDS: Dict[str, int] = {n: FIRST_STUFF + i for i, n in enumerate(STUFF_NAMES)}

OUTDOOR_NAMES = (
    "branch", "bridge", "building-other", "bush", "clouds", "dirt", "fence", "flower", "fog",
    "grass", "gravel", "ground-other", "hill", "house", "leaves", "moss", "mountain", "mud",
    "pavement", "plant-other", "playingfield", "railroad", "river", "road", "rock", "roof",
    "sand", "sea", "sky-other", "skyscraper", "snow", "stone", "tree", "wall-brick",
    "wall-stone", "water-other",
)
INDOOR_NAMES = (
    "cabinet", "carpet", "ceiling-other", "ceiling-tile", "counter", "cupboard", "curtain",
    "desk-stuff", "door-stuff", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "furniture-other", "light", "mat", "mirror-stuff", "pillow", "rug", "shelf",
    "table", "towel", "wall-panel", "wall-tile", "window-blind",
)
OUTDOOR_STUFF = frozenset(STUFF_IDS[n] for n in OUTDOOR_NAMES)
INDOOR_STUFF = frozenset(STUFF_IDS[n] for n in INDOOR_NAMES)

_OUT_LUT = np.zeros(256, bool)
_OUT_LUT[list(OUTDOOR_STUFF)] = True
_IN_LUT = np.zeros(256, bool)
_IN_LUT[list(INDOOR_STUFF)] = True


def outdoor_fractions(label: np.ndarray):
    """(outdoor stuff fraction, indoor stuff fraction) of all pixels of a COCO-stuff label."""
    lab = np.asarray(label)
    if lab.size == 0:
        return 0.0, 0.0
    lab = lab.astype(np.uint8, copy=False) if lab.max(initial=0) <= 255 else lab
    return float(_OUT_LUT[lab].mean()), float(_IN_LUT[lab].mean())


def is_outdoor(label: np.ndarray, min_outdoor: float = 0.5, max_indoor: float = 0.05) -> bool:
    out, ind = outdoor_fractions(label)
    return out >= min_outdoor and ind < max_indoor


def scan_outdoor(root: Union[str, Path], split: str, min_outdoor: float = 0.5,
                 max_indoor: float = 0.05, cache: bool = True) -> List[str]:
    """Image file names of ``split`` that pass the outdoor filter (cached in the root)."""
    root = Path(root)
    ann_dir, img_dir = root / "annotations" / split, root / "images" / split
    if not ann_dir.is_dir() or not img_dir.is_dir():
        raise FileNotFoundError(f"COCO-stuff: expected {img_dir} and {ann_dir}")
    key = f"# min_outdoor={min_outdoor} max_indoor={max_indoor}"
    cache_file = root / f"outdoor_{split}.txt"
    if cache and cache_file.is_file():
        lines = cache_file.read_text().splitlines()
        if lines and lines[0] == key:
            return lines[1:]
    kept = []
    for ann in sorted(ann_dir.glob("*.png")):
        img = img_dir / (ann.stem + ".jpg")
        if not img.is_file():
            continue  # annotation without image (partial download): skip, not an error
        try:
            with Image.open(ann) as im:
                lab = np.array(im)
        except Exception as e:
            raise ValueError(f"cannot read label {ann}: {e}") from e
        if is_outdoor(lab, min_outdoor, max_indoor):
            kept.append(img.name)
    if cache:
        try:  # a read-only dataset root is fine, we just rescan next time
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text("\n".join([key] + kept) + "\n")
            tmp.replace(cache_file)
        except OSError:
            pass
    return kept


class CocoStuff(LabelFolder):
    """COCO-stuff outdoor scenes.  ``split`` is 'train'/'val' or 'train2017'/'val2017'.

    Items as LabelFolder: ``image`` (3,H,W) float32 in [-1,1], ``label`` (H,W) int64 (255
    kept unless ``ignore_to``), ``path``.  ``outdoor=False`` keeps every image.
    """

    def __init__(self, root: Union[str, Path], split: str = "train", size: Optional[Size] = 256,
                 outdoor: bool = True, min_outdoor: float = 0.5, max_indoor: float = 0.05,
                 ignore_to: Optional[int] = None, transform: Optional[Callable] = None,
                 cache: bool = True):
        split = {"train": "train2017", "val": "val2017", "test": "val2017"}.get(split, split)
        if split not in ("train2017", "val2017"):
            raise ValueError(f"split: expected 'train' or 'val' (or *2017), got {split!r}")
        root = Path(root)
        if outdoor:
            files = scan_outdoor(root, split, min_outdoor, max_indoor, cache)
        else:
            files = sorted(p.name for p in (root / "images" / split).glob("*.jpg"))
        if not files:
            raise FileNotFoundError(f"COCO-stuff: no {'outdoor ' if outdoor else ''}images in "
                                    f"{root / 'images' / split}")
        self.split = split
        super().__init__(root, size=size, num_classes=NUM_CLASSES, ignore_value=IGNORE,
                         ignore_to=ignore_to, transform=transform, files=files,
                         image_dir=root / "images" / split,
                         label_dir=root / "annotations" / split)
