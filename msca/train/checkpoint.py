"""Checkpoint files: atomic writes and loading a generator for inference.

Two kinds share one loader:
  training checkpoints ("msca-train-v1"): models, optimisers, step, stage, RNG states and the
      data-iterator position, enough to resume exactly;
  exported models ("msca-model-v1"): options and the generator's state_dict only (what
      checkpoints/demo.pt is: small enough to ship).
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
import warnings

import numpy as np
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


# What each kind must hold, beyond "format".
_REQUIRED = {MODEL_FORMAT: ("options", "G"),
             TRAIN_FORMAT: ("options", "train", "step", "G", "D", "decoder", "opt_pre",
                            "opt_G", "opt_D", "rng", "data")}


# numpy arrays (the numpy RNG state of training checkpoints written before the states were
# stored as tensors). Rebuilding an array calls no code of the file's choosing: its elements
# go through the same restricted unpickler.
_NUMPY_ARRAY = [(np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct,
                np.ndarray, np.dtype,
                type(np.dtype(np.uint32))]


def _one_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(lines) <= 1 else f"{text} (...)"


def read_checkpoint(path: str) -> dict:
    """The checkpoint at path, loaded with weights_only=True: tensors and plain Python types
    only, so a crafted file cannot run code (every checkpoint this package writes is of that
    kind). Errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r}: no such file")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln]
        raise ValueError(f"checkpoint {path!r}: refused: it holds objects other than tensors "
                         f"and plain Python types, and checkpoints are never loaded with code"
                         + (f" ({found[0]})" if found else "")) from e
    except Exception as e:
        raise ValueError(f"checkpoint {path!r}: cannot read: {_one_line(e)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (TRAIN_FORMAT, MODEL_FORMAT):
        raise ValueError(f"checkpoint {path!r}: not an msca checkpoint (expected format "
                         f"{TRAIN_FORMAT!r} or {MODEL_FORMAT!r})")
    missing = [k for k in _REQUIRED[ckpt["format"]] if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path!r}: incomplete {ckpt['format']} checkpoint, "
                         f"missing {', '.join(missing)}")
    if not isinstance(ckpt["options"], dict) or not isinstance(ckpt["G"], dict):
        raise ValueError(f"checkpoint {path!r}: 'options' and 'G' must be dicts")
    return ckpt


# ------------------------------------------------------------------------------ RNG states
# Stored as plain lists and tensors (never numpy arrays or tuples of objects), so that
# training checkpoints load with weights_only=True like every other checkpoint.
def rng_state() -> dict:
    """The python, numpy, torch (and CUDA) RNG states, as plain types and tensors."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    """Restores what rng_state() returned."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                npst["has_gauss"], npst["cached"])
    np.random.set_state(tuple(npst))  # (or the tuple of np.random.get_state(): older files)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_generator(path: str, backend: str | None = None, device="cpu"):
    """(generator in eval mode, Options) from a training checkpoint or an exported model.

    The kernel backend is `backend`, or "auto" (the fused kernels of the device) when None:
    the backend a model was trained with is a training choice recorded in its options, not a
    property of the weights, and every backend computes the same function.
    """
    from msca.models import VGGWeightsWarning, build_generator
    from msca.options import Options

    ckpt = read_checkpoint(path)
    try:
        opt = Options.from_dict(ckpt["options"])
        opt = opt.replace(backend=backend or "auto")
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path!r}: its options are not valid: {_one_line(e)}") \
            from e
    with warnings.catch_warnings():
        # The warning about random VGG weights was shown at training time; the checkpoint's
        # vgg_fingerprint check below still catches a different VGG.
        warnings.simplefilter("ignore", VGGWeightsWarning)
        G = build_generator(opt)
    try:
        G.load_state_dict(ckpt["G"])
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path!r}: its generator weights do not fit the model its "
                         f"options describe: {_one_line(e)}") from e
    return G.to(device).eval(), opt


def export_model(ckpt: dict, path: str) -> None:
    """Write the inference part of a training checkpoint (options + generator) atomically."""
    # The EMA weights when the run kept them (what an averaged GAN generator ships).
    ema = ckpt.get("G_ema")
    G = ema["shadow"] if ema is not None else ckpt["G"]
    atomic_save({"format": MODEL_FORMAT, "options": ckpt["options"], "G": G,
                 "ema": ema is not None,
                 "step": ckpt["step"], "train": ckpt.get("train", {})}, path)
