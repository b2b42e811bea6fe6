"""One options object for the model, the data and the training.

    opt = Options.from_file("configs/demo.json", overrides=["lr=1e-4", "alignment=gap"])
    opt = Options(num_classes=12).replace(ngf=16)

Config files are JSON, or a Python literal (a dict; comments allowed) in a `.json` file. Lists
become tuples for tuple options. Unknown keys are errors that name the key.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import typing
from dataclasses import dataclass


@dataclass
class Options:
    # ------------------------------------------------------------------ model
    num_classes: int = 182            # COCO-stuff: labels 0..181
    ignore_label: int = 255           # COCO-stuff "unlabeled"; a zero one-hot vector
    # Widths per scale, scale 0 finest (VGG relu1_2) .. scale 4 coarsest (relu5_4). The paper
    # gives none; these are ours.
    image_feature_nc: tuple = (64, 128, 256, 256, 256)   # N_i: W_x^(i) outputs (Eq. 1)
    label_feature_nc: tuple = (64, 128, 256, 256, 256)   # M_i: label encoder (Eqs. 2-3)
    attention_k: tuple = (8, 16, 16, 16, 16)             # K per scale (paper Sec. 4)
    mask_hidden: typing.Optional[int] = None             # Eq. 6 MLP width (None: kernels' rule)
    alignment: str = "msca"           # "msca" | "gap" | "label_matching" (Table 1 ablations)
    feature_masking: bool = True      # False: "MSCA w/o fm"
    # Learnable inverse temperature of both MSCA softmaxes, initialised to this value and
    # folded into phi/psi (msca_kernels.nn.MSCA logit_scale); 0 = none, the paper's module.
    attention_logit_scale: float = 0.0
    # The last N maps of every scale attend uniformly (the exemplar's global average), for
    # target classes the exemplar lacks (msca_kernels.nn.MSCA global_maps); 0 = the paper's.
    attention_global_maps: int = 0
    # Append one presence channel to the target's and the exemplar's label features at every
    # scale: the share of each cell whose class the other image shows (ours; the paper's
    # module has no way to know, at a target position, that the exemplar lacks its class).
    # It reaches phi, psi, the Eq. 6 mask and the decoder; False = the paper's inputs.
    attention_presence: bool = False
    # Probability that the cross task's exemplar patch is replaced by a smaller window of it
    # (resized back), so that target classes the exemplar lacks occur in training as they do
    # across scenes (msca.data.transforms.exemplar_subcrop); 0 = the paper's task.
    exemplar_subcrop: float = 0.0
    # Probability that the global task's exemplar is the target image mirrored (Eq. 10 then
    # reconstructs x from flip(x), the paper's "mirroring" task) instead of x itself: without
    # it the global task only ever asks to copy an exemplar in place; 0 = the paper's task.
    global_exemplar_flip: float = 0.0
    # "msca": the paper's generator (alignment above selects MSCA or an ablation);
    # "spade_vae": the global-style-code baseline of Table 1 (msca/models/style_code.py: an
    # exemplar encoder to (mu, logvar) and a SPADE generator on the target label and z).
    generator: str = "msca"
    z_dim: int = 256                  # spade_vae: style code size (SPADE's z_dim)
    ngf: int = 64                     # generator base width; block at scale i has ngf*mult_i
    ngf_mults: tuple = (1, 2, 4, 8, 16)
    spade_norm: str = "spadesyncbatch3x3"   # SPADE's default norm_G (less "spectral")
    spade_hidden: int = 128           # SPADE's hidden width
    spectral_norm_G: bool = True      # SPADE's norm_G "spectral..."
    ndf: int = 64
    n_layers_D: int = 4               # SPADE's default
    num_D: int = 2
    spectral_norm_D: bool = True      # SPADE's norm_D "spectralinstance"
    init_type: str = "xavier"         # SPADE's init (xavier-normal, gain 0.02)
    init_gain: float = 0.02
    backend: str = "auto"             # msca_kernels backend for every MSCA/SPADE layer
    vgg_weights: str = ""             # torchvision vgg19 state_dict; "" = hub cache or random

    # ------------------------------------------------------------------ losses (Eq. 11)
    lambda_global: float = 1.0        # lambda of Eq. 11 (weight of global self-reconstruction)
    lambda_feat: float = 10.0         # SPADE's GAN feature matching weight
    lambda_vgg: float = 10.0          # SPADE's VGG loss weight
    lambda_kld: float = 0.05          # spade_vae: KL weight (SPADE's lambda_kld)
    decoder_loss_weights: tuple = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)  # Appendix G (ours)
    # Self-supervised correspondence losses on each scale's attention (not in the paper; 0 =
    # off): the exemplar's one-hot labels carried through alpha and beta, cross-entropy with
    # the target's labels (lambda_corr_label), and its RGB carried the same way, L1 to the
    # target image (lambda_corr_rgb); scales weighted equally. Full weight in MSCA
    # pretraining, times corr_gan_factor in the GAN stages.
    lambda_corr_label: float = 0.0
    lambda_corr_rgb: float = 0.0
    corr_gan_factor: float = 0.1

    # ------------------------------------------------------------------ data
    dataset: str = "procedural"       # "procedural" | "folder" | "cocostuff"
    dataroot: str = ""
    load_size: int = 512              # images resized to this (paper: 512x512)
    crop_size: int = 256              # patch size the generator sees (paper: 256)
    late_crop_size: int = 384         # second stage: 384 crops resized to crop_size
    flip: bool = True
    num_workers: int = 0
    batch_size: int = 4               # not given by the paper

    # ------------------------------------------------------------------ training
    lr: float = 2e-4                  # both G and D (paper Sec. 4)
    beta1: float = 0.9                # Adam betas as stated in the paper
    beta2: float = 0.999
    # The paper: "the weights of generator are updated every 5 iterations". Read literally
    # that starves G of updates relative to every SPADE-style setup (one G and one D step per
    # iteration), and the sentence may describe something else (e.g. logging); we record it
    # but default to 1, the SPADE behaviour. Set 5 to follow the sentence literally.
    g_update_every: int = 1
    pretrain_epochs: int = 20         # Appendix G: MSCA pretraining with the feature decoder
    epochs: int = 40                  # paper: 40 (20 patch-only, 20 with global + 384 crops)
    patch_only_epochs: int = 20
    seed: int = 0
    checkpoint_dir: str = "checkpoints"
    name: str = "msca"

    # ------------------------------------------------------------------ helpers
    def __post_init__(self):
        self._coerce_all()
        self.validate()

    def _coerce_all(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))

    def validate(self) -> None:
        n = 5
        for name in ("image_feature_nc", "label_feature_nc", "attention_k", "ngf_mults"):
            v = getattr(self, name)
            if len(v) != n or not all(isinstance(x, int) and x >= 1 for x in v):
                raise ValueError(f"{name}: expected {n} positive ints (scale 0 finest), got {v}")
        if len(self.decoder_loss_weights) != n:
            raise ValueError(f"decoder_loss_weights: expected {n} numbers, "
                             f"got {self.decoder_loss_weights}")
        if self.alignment not in ("msca", "gap", "label_matching"):
            raise ValueError(f"alignment: expected 'msca', 'gap' or 'label_matching', "
                             f"got {self.alignment!r}")
        if self.generator not in ("msca", "spade_vae"):
            raise ValueError(f"generator: expected 'msca' or 'spade_vae', "
                             f"got {self.generator!r}")
        if self.lambda_kld < 0:
            raise ValueError(f"lambda_kld: expected >= 0, got {self.lambda_kld}")
        for name in ("num_classes", "z_dim", "ngf", "ndf", "n_layers_D", "num_D", "spade_hidden",
                     "load_size", "crop_size", "late_crop_size", "batch_size",
                     "g_update_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.crop_size < 16:
            raise ValueError(f"crop_size: expected >= 16 (five scales), got {self.crop_size}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not (isinstance(self.attention_global_maps, int)
                and 0 <= self.attention_global_maps <= min(self.attention_k)):
            raise ValueError(f"attention_global_maps: expected an int in [0, min(attention_k)="
                             f"{min(self.attention_k)}], got {self.attention_global_maps!r}")
        for name in ("exemplar_subcrop", "global_exemplar_flip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got "
                                 f"{getattr(self, name)}")
        for name in ("attention_logit_scale", "lambda_corr_label", "lambda_corr_rgb",
                     "corr_gan_factor"):
            v = getattr(self, name)
            if not v >= 0 or v == float("inf"):
                raise ValueError(f"{name}: expected a finite number >= 0, got {v}")

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
            fh.write("\n")

    @classmethod
    def from_dict(cls, values: dict, overrides=()) -> "Options":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {sorted(names)}")
        merged = dict(values)
        merged.update(parse_overrides(overrides))
        return cls(**merged)

    @classmethod
    def from_file(cls, path: str, overrides=()) -> "Options":
        """Options from a JSON / Python-literal dict file, then `key=value` overrides."""
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError as e:
            raise ValueError(f"config {path!r}: cannot read: {e}") from e
        try:
            values = json.loads(text)
        except json.JSONDecodeError:
            try:
                values = ast.literal_eval(text)
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"config {path!r}: neither JSON nor a Python literal: "
                                 f"{e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"config {path!r}: expected a dict of options, "
                             f"got {type(values).__name__}")
        try:
            return cls.from_dict(values, overrides)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config {path!r}: {e}") from e


def parse_overrides(overrides) -> dict:
    """["lr=1e-4", "alignment=gap", "attention_k=[8,8,8,8,8]"] -> dict. Values are read as
    JSON, else as a Python literal, else kept as a string."""
    names = {f.name for f in dataclasses.fields(Options)}
    out = {}
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in names:
            raise ValueError(f"override {item!r}: unknown option {key!r}")
        out[key] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str):
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce(name: str, value, hint):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    else:
        return value
    raise TypeError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
