"""Training configuration: the model/data `Options` plus the trainer's own settings.

A training config file is either a plain options file (configs/demo.json: every key an
`msca.options.Options` field) or a training file with three sections:

    {"base": "demo.json",                  # an options file, relative to this file
     "options": {"backend": "cpu", ...},   # Options overrides
     "train": {"steps": 1500, ...}}        # TrainSettings fields

`resolve_config("demo")` finds configs/demo_train.json, else configs/demo.json, so
`msca train --config demo` works from the repository root.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from msca.options import Options, parse_overrides


@dataclass
class TrainSettings:
    steps: int = 1000                 # total optimisation steps, all stages together
    checkpoint_every: int = 200       # write out/checkpoint.pt every N steps (and at the end)
    log_every: int = 10               # append the losses to out/log.jsonl every N steps
    train_scenes: int = 4000          # procedural dataset length (scenes per epoch)
    # Extra pixel L1 between output and ground truth in both reconstruction tasks. Not in the
    # paper (Eq. 11 has GAN, feature matching and VGG only); 0 follows the paper. The demo
    # config sets it because its VGG is randomly initialised (no ImageNet weights offline) and
    # a few thousand CPU steps do not give the GAN time to settle colours.
    lambda_l1: float = 0.0
    # Extra pixel mean squared error, the same way (not in the paper either). PSNR is a
    # function of the MSE: where the colour of a region is uncertain (a class the exemplar
    # lacks) the MSE asks for the mean of the possible colours, the L1 for their median and the
    # GAN for one sample of them.
    lambda_mse: float = 0.0
    # Weight of the pixel L1/MSE terms on target pixels whose class the exemplar lacks (1 =
    # every pixel alike). Such pixels are rare in the self-supervised tasks (two patches of one
    # scene share most classes; exemplar_subcrop makes them more common) but 29% of the demo's
    # cross-scene pixels.
    absent_class_weight: float = 1.0
    bf16: bool = False                # bfloat16 autocast for the forward passes
    grad_clip: float = 0.0            # 0: off
    # Exponential moving average of G (0: off); the exported model ships the EMA weights.
    ema_decay: float = 0.0
    # Linear decay of the learning rate to 0 over the last stage (patch_global), as SPADE
    # decays over its second half. False: constant lr (the paper states no schedule).
    lr_decay: bool = False

    def validate(self) -> None:
        for name in ("steps", "checkpoint_every", "log_every", "train_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("lambda_l1", "lambda_mse", "grad_clip", "absent_class_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}: expected >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay: expected a number in [0, 1), got "
                             f"{self.ema_decay}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown train setting(s) {unknown}; known: {sorted(names)}")
        s = cls(**values)
        for f in dataclasses.fields(cls):  # JSON gives ints for floats and the like
            v = getattr(s, f.name)
            if f.type in ("int", int) and isinstance(v, float) and v.is_integer():
                setattr(s, f.name, int(v))
        s.validate()
        return s


def resolve_config(name: str) -> str:
    """A path as given if it exists; otherwise configs/<name>_train.json or configs/<name>.json
    (relative to the working directory, then to this repository)."""
    if os.path.isfile(name):
        return name
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    stem = os.path.splitext(os.path.basename(name))[0]
    for root in (os.getcwd(), repo):
        for cand in (f"{stem}_train.json", f"{stem}.json"):
            p = os.path.join(root, "configs", cand)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"--config {name!r}: no such file, and no configs/{stem}_train.json "
                            f"or configs/{stem}.json")


def load_config(path: str, overrides=(), train_overrides: dict | None = None):
    """-> (Options, TrainSettings). `overrides`: Options `key=value` strings."""
    path = resolve_config(path)
    try:
        with open(path) as fh:
            values = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"config {path!r}: cannot read as JSON: {e}") from e
    if not isinstance(values, dict):
        raise ValueError(f"config {path!r}: expected a JSON object")
    train = {}
    if "train" in values or "base" in values or "options" in values:
        extra = sorted(set(values) - {"base", "options", "train"})
        if extra:
            raise ValueError(f"config {path!r}: unknown section(s) {extra}; a training config "
                             "has 'base', 'options' and 'train'")
        base = {}
        if "base" in values:
            base_path = os.path.join(os.path.dirname(os.path.abspath(path)), values["base"])
            try:
                with open(base_path) as fh:
                    base = json.load(fh)
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"config {path!r}: base {base_path!r}: {e}") from e
        base.update(values.get("options", {}))
        train = dict(values.get("train", {}))
        values = base
    merged = dict(values)
    merged.update(parse_overrides(overrides))
    try:
        opt = Options.from_dict(merged)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config {path!r}: {e}") from e
    train.update(train_overrides or {})
    try:
        settings = TrainSettings.from_dict(train)
    except (ValueError, TypeError) as e:
        raise ValueError(f"config {path!r}: {e}") from e
    return opt, settings
