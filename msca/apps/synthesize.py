"""Example-guided synthesis on tensors and on a user's own files, and attention figures.

    out = synthesize(G, label, exemplar, exemplar_label)            # tensors, batch
    synthesize_files(label="L.png", exemplar="X.jpg", exemplar_label="XL.png", out="o.png")
    synthesize_batch([(label, exemplar, exemplar_label, out), ...], checkpoint="m.pt")

Files of any size and aspect ratio go through msca.apps.working_size (scaled to the model's
working size, padded, and restored afterwards); label maps may be colour pictures
(msca.apps.class_legend).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from msca.data.transforms import tensor_to_pil

from .attention_figure import attention_figure  # noqa: F401 (re-exported; its own file)

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
                     attention_out: str | None = None, device: str = "auto",
                     palette: str | None = None) -> Image.Image:
    """Synthesize `label` in the style of `exemplar` with the model in `checkpoint`; write the
    result, at the label map's own size and aspect ratio, to `out`. Label maps may be class
    ids or colours (`palette`: a palette file; default the legend of `msca classes`)."""
    from .working_size import load_model

    model = load_model(checkpoint, backend, size, device, palette)
    image, attn, x2, c1 = model.run(label, exemplar, exemplar_label,
                                    return_attention=attention_out is not None)
    _save(image, out)
    if attention_out is not None:
        if attn[0] is None:
            raise ValueError(f"--attention: the {model.opt.alignment!r} model has no attention "
                             "maps")
        alpha, beta = attn[0]
        attention_figure(x2[0], c1[0], alpha[0], beta[0], model.opt.num_classes
                         ).save(attention_out)
    return image


def synthesize_batch(pairs, *, checkpoint: str, backend: str | None = None,
                     size: int | None = None, device: str = "auto", palette: str | None = None,
                     progress: bool = True) -> list[str]:
    """Synthesize every (label, exemplar, exemplar_label, out) of `pairs` with one model load,
    under a progress bar; returns the outputs written. A bad file stops the batch with an error
    naming it (the outputs already written stay)."""
    from tqdm import tqdm

    from .working_size import load_model

    pairs = list(pairs)
    model = load_model(checkpoint, backend, size, device, palette)
    written = []
    for lab, ex, ex_lab, out in tqdm(pairs, desc="msca synthesize", unit="image",
                                     disable=not progress):
        image, _, _, _ = model.run(lab, ex, ex_lab)
        _save(image, out)
        written.append(out)
    return written


def _save(image: Image.Image, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    image.save(out)


# --------------------------------------------------------------------------- figures
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
