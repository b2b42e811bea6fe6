"""Example-guided synthesis on tensors and on a user's own files, and attention figures.

    out = synthesize(G, label, exemplar, exemplar_label)            # tensors, batch
    synthesize_files(label="L.png", exemplar="X.jpg", exemplar_label="XL.png", out="o.png")
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from msca.data.transforms import colorize_labels, tensor_to_pil

EXEMPLAR_LABEL_HELP = (
    "the exemplar needs its own label map: pass --exemplar-label XL.png (a single-channel PNG "
    "of class ids, the same classes as --label). The paper obtains exemplar labels from a "
    "COCO-stuff DeepLab-v2 segmentation network, which this package does not include; segment "
    "the exemplar with any such network (or by hand) and pass the PNG.")


@torch.no_grad()
def synthesize(G, label: torch.Tensor, exemplar: torch.Tensor, exemplar_label: torch.Tensor,
               return_attention: bool = False):
    """G(c1, x2, c2) in eval mode without gradients; tensors are batched (B,...)."""
    was_training = G.training
    G.eval()
    try:
        return G(label, exemplar, exemplar_label, return_attention=return_attention)
    finally:
        G.train(was_training)


def _check_file(arg: str, path: str | None) -> str:
    if path is None:
        raise ValueError(f"{arg}: missing")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{arg} {path!r}: no such file")
    return path


def _resize_image(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(-1, 1)


def _resize_label(c: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(c[None, None].float(), size=size, mode="nearest")[0, 0].long()


def load_inputs(label: str, exemplar: str, exemplar_label: str | None, num_classes: int,
                size: int, ignore_label: int = 255):
    """Read and check the three files; -> (c1 (1,S,S), x2 (1,3,S,S), c2 (1,S,S), original
    (H, W) of the label map). Errors name the file (and the bad value)."""
    from msca.data.folder import load_image, load_label

    _check_file("--label", label)
    _check_file("--exemplar", exemplar)
    if exemplar_label is None:
        raise ValueError(f"--exemplar-label: missing; {EXEMPLAR_LABEL_HELP}")
    _check_file("--exemplar-label", exemplar_label)
    c1 = load_label(label, None, num_classes, ignore_value=ignore_label)
    x2 = load_image(exemplar, None)
    c2 = load_label(exemplar_label, None, num_classes, ignore_value=ignore_label)
    if tuple(c2.shape) != tuple(x2.shape[-2:]):
        raise ValueError(f"--exemplar-label {exemplar_label!r}: size {tuple(c2.shape)[::-1]} "
                         f"(w, h) differs from the exemplar {exemplar!r}'s "
                         f"{tuple(x2.shape[-2:])[::-1]}")
    hw = tuple(c1.shape)
    s = (size, size)
    return (_resize_label(c1, s)[None], _resize_image(x2, s)[None], _resize_label(c2, s)[None],
            hw)


def synthesize_files(*, label: str, exemplar: str, exemplar_label: str | None, out: str,
                     checkpoint: str, backend: str | None = None, size: int | None = None,
                     attention_out: str | None = None) -> Image.Image:
    """Synthesize `label` in the style of `exemplar` with the model in `checkpoint`; write the
    result (at the label map's own resolution) to `out`."""
    from msca.train.checkpoint import load_generator

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    size = size or opt.crop_size
    if size < 16:
        raise ValueError(f"--size: expected >= 16 (five scales), got {size}")
    c1, x2, c2, hw = load_inputs(label, exemplar, exemplar_label, opt.num_classes, size,
                                 opt.ignore_label)
    result = synthesize(G, c1, x2, c2, return_attention=attention_out is not None)
    image, attn = result if attention_out is not None else (result, None)
    if tuple(image.shape[-2:]) != hw:
        image = _resize_image(image[0], hw)[None]
    pil = tensor_to_pil(image[0])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    pil.save(out)
    if attention_out is not None:
        if attn[0] is None:
            raise ValueError(f"--attention: the {opt.alignment!r} model has no attention maps")
        alpha, beta = attn[0]
        attention_figure(x2[0], c1[0], alpha[0], beta[0], opt.num_classes).save(attention_out)
    return pil


# --------------------------------------------------------------------------- figures
def _heat(m: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8, black-red-yellow-white."""
    m = np.clip(m, 0, 1)[..., None]
    rgb = np.concatenate([np.clip(3 * m, 0, 1), np.clip(3 * m - 1, 0, 1),
                          np.clip(3 * m - 2, 0, 1)], -1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def _norm(a: torch.Tensor) -> np.ndarray:
    a = a.detach().float().cpu()
    lo, hi = a.min(), a.max()
    return ((a - lo) / (hi - lo + 1e-12)).numpy()


def _up(arr: np.ndarray, scale: int) -> Image.Image:
    im = Image.fromarray(arr)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def attention_figure(exemplar: torch.Tensor, label: torch.Tensor, alpha: torch.Tensor,
                     beta: torch.Tensor, num_classes: int, scale: int = 2) -> Image.Image:
    """Row 1: the exemplar, then the K spatial attention maps alpha_k over it (Eq. 4: where
    each of the K "style tokens" reads from). Row 2: the target label map, then the K channel
    attention maps beta_k over the target (Eq. 7: where each token is written to). Each map is
    min-max normalised on its own and blended 70/30 with the picture below it."""
    K = alpha.shape[0]
    ex = np.asarray(tensor_to_pil(exemplar))
    lab = colorize_labels(label, num_classes)
    rows = []
    for base, maps in ((ex, alpha), (lab, beta)):
        h, w = base.shape[:2]
        cells = [base]
        for k in range(K):
            m = torch.as_tensor(_norm(maps[k]))[None, None]
            m = F.interpolate(m, size=(h, w), mode="nearest")[0, 0].numpy()
            cells.append((0.7 * _heat(m) + 0.3 * base).astype(np.uint8))
        rows.append(np.concatenate(cells, 1))
    img = _up(np.concatenate(rows, 0), scale)
    pad = 14
    canvas = Image.new("RGB", (img.width, img.height + 2 * pad), "white")
    canvas.paste(img, (0, pad))
    d = ImageDraw.Draw(canvas)
    d.text((2, 1), f"exemplar | alpha_1..{K} (spatial attention over the exemplar)", fill="black")
    d.text((2, img.height + pad + 1), f"target label | beta_1..{K} (channel attention over "
           "the target)", fill="black")
    return canvas


def labelled_row(images: list[Image.Image], captions: list[str], scale: int = 3,
                 pad: int = 14) -> Image.Image:
    """Images side by side, each enlarged `scale` times (nearest), with captions above."""
    ims = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    W = sum(im.width for im in ims) + 4 * (len(ims) - 1)
    H = max(im.height for im in ims) + pad
    canvas = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(canvas)
    x = 0
    for im, cap in zip(ims, captions):
        canvas.paste(im, (x, pad))
        d.text((x + 2, 1), cap, fill="black")
        x += im.width + 4
    return canvas
