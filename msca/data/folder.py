"""Any folder of images with label PNGs.

Layout::

    root/images/<stem>.jpg|.jpeg|.png
    root/labels/<stem>.png      single-channel label ids (mode L, P or I)

Every image needs its label (a missing one is an error naming the file).  255 is the
conventional "unlabelled" value; it is mapped to ``ignore_to`` (e.g. a spare class id) or kept
as 255 when ``ignore_to`` is None so that losses can use ``ignore_index=255``.  Any other value
>= ``num_classes`` raises ValueError naming the file and the value.  Images are resized
bicubically, labels by nearest neighbour (Pillow), to ``size``.  Images of any bit depth are
scaled to 8-bit RGB (16-bit greyscale too, never clipped), both kinds are turned upright by
their EXIF orientation, and a file of more than ``max_pixels()`` pixels is refused from its
header, before decoding.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from .transforms import to_tensor_image

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
IGNORE = 255

Size = Union[int, Tuple[int, int]]


def _hw(size: Optional[Size]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"size: expected positive, got {size}")
    return h, w


# Decoded size limit: Pillow only warns up to 179 megapixels, and a 97 KB PNG of 10000 x 10000
# then costs gigabytes as float tensors. The header is checked before anything is decoded.
DEFAULT_MAX_PIXELS = 50_000_000


def max_pixels() -> int:
    """The decoded-pixel limit: MSCA_MAX_IMAGE_PIXELS, else DEFAULT_MAX_PIXELS."""
    text = os.environ.get("MSCA_MAX_IMAGE_PIXELS", "")
    try:
        value = int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ValueError(f"MSCA_MAX_IMAGE_PIXELS: expected an integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"MSCA_MAX_IMAGE_PIXELS: expected a positive integer, got {value}")
    return value


def _check_pixels(im: Image.Image, what: str, path) -> None:
    w, h = im.size
    limit = max_pixels()
    if w * h > limit:
        raise ValueError(f"{what} {path}: {w}x{h} is {w * h / 1e6:.1f} megapixels, more than "
                         f"the limit of {limit / 1e6:g} (set MSCA_MAX_IMAGE_PIXELS to allow it)")


def _upright(im: Image.Image) -> Image.Image:
    """Applies the EXIF orientation (a phone photo stored sideways), as viewers do."""
    return ImageOps.exif_transpose(im)


def to_rgb8(im: Image.Image) -> Image.Image:
    """8-bit RGB with every bit depth scaled, not clipped: 16-bit greyscale (mode I;16*, and I,
    read as 16-bit) is divided by 257, float greyscale (F) is taken as [0, 1]. Pillow's
    convert("RGB") clips those to 255, which turns a 16-bit exemplar white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64) * 255.0
    else:
        return im.convert("RGB")
    grey = np.clip(np.nan_to_num(arr).round(), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def load_image(path: Path, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Image -> (3, H, W) float32 in [-1, 1]: any mode (greyscale, palette, 16-bit, alpha
    dropped) as RGB, EXIF orientation applied, at most max_pixels() decoded. An unreadable or
    too large file is an error naming it."""
    try:
        with warnings.catch_warnings():  # our bound is lower than Pillow's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            _check_pixels(im, "image", path)  # from the header, before decoding
            im.load()  # decode now so a truncated file fails here, not later
            im = to_rgb8(_upright(im))
    except ValueError as e:
        if str(e).startswith(f"image {path}:"):
            raise
        raise ValueError(f"cannot read image {path}: {e}") from e
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"cannot read image {path}: {e}") from e
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    return to_tensor_image(im)


def load_label(path: Path, size: Optional[Tuple[int, int]], num_classes: int,
               ignore_value: int = IGNORE, ignore_to: Optional[int] = None) -> torch.Tensor:
    """Label PNG -> (H, W) int64; checks the ids against num_classes, naming file and value."""
    try:
        with Image.open(path) as im:
            _check_pixels(im, "label", path)
            im.load()
            im = _upright(im)  # a label map drawn on a rotated photo turns with it
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"expected a single-channel label image, got mode {im.mode}")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.NEAREST)  # never blend label ids
            arr = np.array(im, dtype=np.int64)
    except ValueError as e:
        if str(e).startswith(f"label {path}:"):
            raise
        raise ValueError(f"cannot read label {path}: {e}") from e
    except Exception as e:
        raise ValueError(f"cannot read label {path}: {e}") from e
    bad = (arr != ignore_value) & ((arr < 0) | (arr >= num_classes))
    if bad.any():
        raise ValueError(f"label {path}: value {int(arr[bad].max())} out of range for "
                         f"num_classes={num_classes} (only {ignore_value} may mean 'ignore')")
    if ignore_to is not None:
        arr[arr == ignore_value] = ignore_to
    return torch.from_numpy(arr)


class LabelFolder(Dataset):
    """Images with label maps from ``root/images`` and ``root/labels``.

    Items: ``image`` (3,H,W) float32 in [-1,1], ``label`` (H,W) int64, ``path`` (str).
    ``size`` None keeps the native size (then batches need equal sizes).  ``transform`` is
    called on the item dict.  ``files`` restricts the dataset to these image file names.
    """

    def __init__(self, root: Union[str, Path], size: Optional[Size] = 256, num_classes: int = 182,
                 ignore_value: int = IGNORE, ignore_to: Optional[int] = None,
                 transform: Optional[Callable] = None, files: Optional[List[str]] = None,
                 image_dir: Optional[Union[str, Path]] = None,
                 label_dir: Optional[Union[str, Path]] = None):
        self.root = Path(root)
        self.size = _hw(size)
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if ignore_to is not None and not 0 <= ignore_to < num_classes:
            raise ValueError(f"ignore_to: expected a class id in [0, {num_classes}), got {ignore_to}")
        self.num_classes, self.ignore_value, self.ignore_to = num_classes, ignore_value, ignore_to
        self.transform = transform
        # image_dir/label_dir let other layouts (COCO-stuff's images/<split>) reuse the loader
        img_dir = Path(image_dir) if image_dir is not None else self.root / "images"
        lab_dir = Path(label_dir) if label_dir is not None else self.root / "labels"
        if not img_dir.is_dir() or not lab_dir.is_dir():
            raise FileNotFoundError(f"LabelFolder: expected {img_dir} and {lab_dir} directories")
        if files is None:
            files = sorted(p.name for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        self.samples = []
        for name in files:
            img = img_dir / name
            lab = lab_dir / (Path(name).stem + ".png")
            if not lab.is_file():
                raise FileNotFoundError(f"LabelFolder: image {img} has no label file {lab}")
            self.samples.append((img, lab))
        if not self.samples:
            raise FileNotFoundError(f"LabelFolder: no images ({'/'.join(IMAGE_EXTS)}) in {img_dir}")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i: int):
        img_path, lab_path = self.samples[i]
        image = load_image(img_path, self.size)
        label = load_label(lab_path, self.size, self.num_classes, self.ignore_value, self.ignore_to)
        if image.shape[-2:] != label.shape:
            raise ValueError(f"{img_path} is {tuple(image.shape[-2:])} but its label {lab_path} is "
                             f"{tuple(label.shape)}")
        item = {"image": image, "label": label, "path": str(img_path)}
        return self.transform(item) if self.transform is not None else item
