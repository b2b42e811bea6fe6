"""Checkpoint files: atomic writes and loading a generator for inference.

Two kinds share one loader:
  training checkpoints ("msca-train-v1"): models, optimisers, step, stage, RNG states and the
      data-iterator position, enough to resume exactly;
  exported models ("msca-model-v1"): options and the generator's state_dict only (what
      checkpoints/demo.pt is: small enough to ship).
"""
from __future__ import annotations

import os
import tempfile
import warnings

import torch

TRAIN_FORMAT = "msca-train-v1"
MODEL_FORMAT = "msca-model-v1"


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the target's directory, fsync, then os.replace: a
    crash (or an exception) mid-write leaves any previous file at `path` untouched, since
    os.replace within one file system is atomic."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have, so a
        # shared run directory or an exported model stays readable by whom the umask allows.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"checkpoint {path!r}: cannot read: {e}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (TRAIN_FORMAT, MODEL_FORMAT):
        raise ValueError(f"checkpoint {path!r}: not an msca checkpoint (expected format "
                         f"{TRAIN_FORMAT!r} or {MODEL_FORMAT!r})")
    return ckpt


def load_generator(path: str, backend: str | None = None, device="cpu"):
    """(generator in eval mode, Options) from a training checkpoint or an exported model.

    The kernel backend is `backend`, or "auto" (the fused kernels of the device) when None:
    the backend a model was trained with is a training choice recorded in its options, not a
    property of the weights, and every backend computes the same function.
    """
    from msca.models import VGGWeightsWarning, build_generator
    from msca.options import Options

    ckpt = read_checkpoint(path)
    opt = Options.from_dict(ckpt["options"])
    opt = opt.replace(backend=backend or "auto")
    with warnings.catch_warnings():
        # The warning about random VGG weights was shown at training time; the checkpoint's
        # vgg_fingerprint check below still catches a different VGG.
        warnings.simplefilter("ignore", VGGWeightsWarning)
        G = build_generator(opt)
    G.load_state_dict(ckpt["G"])
    return G.to(device).eval(), opt


def export_model(ckpt: dict, path: str) -> None:
    """Write the inference part of a training checkpoint (options + generator) atomically."""
    # The EMA weights when the run kept them (what an averaged GAN generator ships).
    ema = ckpt.get("G_ema")
    G = ema["shadow"] if ema is not None else ckpt["G"]
    atomic_save({"format": MODEL_FORMAT, "options": ckpt["options"], "G": G,
                 "ema": ema is not None,
                 "step": ckpt["step"], "train": ckpt.get("train", {})}, path)
