"""A model that synthesizes from a user's files of any size and aspect ratio.

The generator is fully convolutional, but it was trained on square crops of one size (the
checkpoint's crop_size) and it halves the resolution four times. So each input is scaled, its
aspect ratio kept, until its shorter side is the working size; the target label map is then
padded (edge labels repeated) to multiples of 16 so every scale divides evenly; the output is
cropped back and resized to the label map's own size. The exemplar is scaled the same way but
not padded: attention reads every exemplar position, and repeated edges would weigh in.
"""
from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F
from PIL import Image

MULTIPLE = 16  # the generator's coarsest scale is 1/16 of the finest


class WorkingSizeWarning(UserWarning):
    """--size differs from the size the model was trained at."""


def scaled_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(h, w) scaled so that the shorter side is `size`, aspect ratio kept."""
    s = size / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def padded_shape(h: int, w: int) -> tuple[int, int]:
    return MULTIPLE * math.ceil(h / MULTIPLE), MULTIPLE * math.ceil(w / MULTIPLE)


def fit_label(c: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(H, W) ids -> ((1, h', w') ids at the working size padded to multiples of 16, the
    unpadded (h, w) to crop the output to)."""
    h, w = scaled_shape(*c.shape, size)
    c = F.interpolate(c[None, None].float(), size=(h, w), mode="nearest")
    ph, pw = padded_shape(h, w)
    c = F.pad(c, (0, pw - w, 0, ph - h), mode="replicate")
    return c[0].long(), (h, w)


def fit_image(x: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [-1, 1] -> (1, 3, h, w) with the shorter side `size`."""
    hw = scaled_shape(*x.shape[-2:], size)
    return F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False,
                         antialias=True).clamp(-1, 1)


def restore(y: torch.Tensor, hw: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """(1, 3, h', w') output -> (3, H, W): the padding cropped off, resized to the original."""
    y = y[..., :hw[0], :hw[1]]
    if tuple(y.shape[-2:]) != tuple(original):
        y = F.interpolate(y, size=original, mode="bilinear", align_corners=False,
                          antialias=True)
    return y[0].clamp(-1, 1)


def resolve_device(device: str) -> torch.device:
    """'auto' (a CUDA GPU when torch sees one, else the CPU), 'cpu' or 'cuda[:n]'."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" or device.startswith("cuda"):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"--device: expected auto, cpu or cuda[:N], got {device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA GPU here (torch "
                             f"{torch.__version__}); use --device cpu or auto")
        return dev
    raise ValueError(f"--device: expected auto, cpu or cuda[:N], got {device!r}")


def check_size(size: int, trained: int) -> None:
    """Errors for sizes the generator cannot use; a warning for sizes it was not trained at."""
    if size < MULTIPLE or size % MULTIPLE:
        raise ValueError(f"--size: expected a multiple of {MULTIPLE} (the generator halves the "
                         f"resolution four times), at least {MULTIPLE}; got {size}")
    if size != trained:
        warnings.warn(f"--size {size} differs from the size this model was trained at "
                      f"({trained}): expect artifacts (repeated patterns, rings) the further "
                      "it is from it", WorkingSizeWarning, stacklevel=3)


class FileSynthesizer:
    """A loaded generator plus everything needed to run it on files (see module docstring)."""

    def __init__(self, G, opt, size: int, device: torch.device, palette):
        self.G, self.opt, self.size, self.device, self.palette = G, opt, size, device, palette

    def _label(self, arg: str, path: str | None) -> torch.Tensor:
        from .class_legend import read_label_map
        from .synthesize import _check_file

        return read_label_map(_check_file(arg, path), self.opt.num_classes, self.palette,
                              self.opt.ignore_label)

    def run(self, label: str, exemplar: str, exemplar_label: str | None,
            return_attention: bool = False):
        """-> (PIL image at the label map's size, attention or None, the exemplar and the
        label map at the working size)."""
        from msca.data.folder import load_image
        from msca.data.transforms import tensor_to_pil

        from .synthesize import EXEMPLAR_LABEL_HELP, _check_file, synthesize

        c1 = self._label("--label", label)
        x2 = load_image(_check_file("--exemplar", exemplar), None)
        if exemplar_label is None:
            raise ValueError(f"--exemplar-label: missing; {EXEMPLAR_LABEL_HELP}")
        c2 = self._label("--exemplar-label", exemplar_label)
        if tuple(c2.shape) != tuple(x2.shape[-2:]):
            raise ValueError(f"--exemplar-label {exemplar_label!r}: size {tuple(c2.shape)[::-1]} "
                             f"(w, h) differs from the exemplar {exemplar!r}'s "
                             f"{tuple(x2.shape[-2:])[::-1]}")
        c1w, hw = fit_label(c1, self.size)
        x2w = fit_image(x2, self.size)
        c2w = F.interpolate(c2[None, None].float(), size=x2w.shape[-2:], mode="nearest")[0]
        c2w = c2w.long()
        dev = self.device
        result = synthesize(self.G, c1w.to(dev), x2w.to(dev), c2w.to(dev),
                            return_attention=return_attention)
        image, attn = result if return_attention else (result, None)
        out = restore(image.float().cpu(), hw, tuple(c1.shape))
        return tensor_to_pil(out), attn, x2w.cpu(), c1w[:, :hw[0], :hw[1]]


def load_model(checkpoint: str, backend: str | None = None, size: int | None = None,
               device: str = "auto", palette: str | None = None) -> FileSynthesizer:
    """The generator of `checkpoint` on `device`, for files at working size `size` (default:
    the training size), reading colour label maps through the palette file `palette` (default:
    the legend of `msca classes`)."""
    from msca.train.checkpoint import load_generator

    from .class_legend import builtin_palette, read_palette

    dev = resolve_device(device)
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend, device=dev)
    size = opt.crop_size if size is None else size
    check_size(size, opt.crop_size)
    pal = (read_palette(palette, opt.num_classes) if palette is not None
           else builtin_palette(opt.dataset, opt.num_classes))
    return FileSynthesizer(G, opt, size, dev, pal)
