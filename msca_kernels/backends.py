"""Backend selection: which implementations can run here, and why the others cannot."""
from __future__ import annotations

import dataclasses
import importlib.util
import os

import torch

from . import _ext

BACKENDS = ("reference", "cpu", "cuda", "triton")


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _triton_status() -> BackendStatus:
    if importlib.util.find_spec("triton") is None:
        return BackendStatus(False, "triton is not installed")
    try:
        from . import triton as _mk_triton  # noqa: F401
    except ImportError as exc:
        return BackendStatus(False, f"the triton kernels are not part of this build ({exc})")
    if torch.cuda.is_available():
        return BackendStatus(True, "triton on CUDA")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return BackendStatus(True, "triton interpreter on CPU tensors (TRITON_INTERPRET=1)")
    return BackendStatus(False, "no CUDA GPU (set TRITON_INTERPRET=1 to interpret on CPU)")


def backend_status(name: str) -> BackendStatus:
    if name == "reference":
        return BackendStatus(True, "plain PyTorch einsum, runs everywhere")
    if name == "cpu":
        if not _ext.loaded():
            return BackendStatus(False, _ext.load_error() or "extension not loaded")
        if not _ext.has_kernel("msca_fwd", "CPU"):
            return BackendStatus(False, "the C++ extension has no CPU kernels registered")
        return BackendStatus(True, "C++ extension (OpenMP, vectorised)")
    if name == "cuda":
        if not _ext.loaded():
            return BackendStatus(False, _ext.load_error() or "extension not loaded")
        if not _ext.has_kernel("msca_fwd", "CUDA"):
            return BackendStatus(False, "the C++ extension was built without CUDA kernels "
                                        "(needs nvcc and a CUDA build of torch at build time)")
        if not torch.cuda.is_available():
            return BackendStatus(False, "no CUDA GPU visible")
        return BackendStatus(True, "CUDA C++ extension")
    if name == "triton":
        return _triton_status()
    raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {name!r}")


def available_backends() -> dict[str, BackendStatus]:
    """Every backend with whether it runs here and why (or why not)."""
    return {name: backend_status(name) for name in BACKENDS}


def resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Turns 'auto' into a concrete backend for tensors on `device`; checks an explicit name.

    auto: CUDA tensors -> triton (not for float64), else cuda, else reference; CPU tensors ->
    cpu (float32 and float64 only), else reference.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
    if backend == "auto":
        if device.type == "cuda":
            for name in ("triton", "cuda"):
                if name == "triton" and dtype not in _TRITON_DTYPES[True]:
                    continue  # float64 goes to a backend that computes in float64
                if backend_status(name):
                    return name
            return "reference"
        if (device.type == "cpu" and dtype in (torch.float32, torch.float64)
                and backend_status("cpu")):
            return "cpu"
        return "reference"
    status = backend_status(backend)  # raises ValueError for unknown names
    if not status:
        raise ValueError(f"backend: {backend!r} cannot run here: {status.reason}")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend: 'cpu' needs CPU tensors, got tensors on {device}")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"backend: 'cpu' supports float32 and float64 inputs, got {dtype}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend: 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"backend: 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), "
                             f"got tensors on {device}")
        if dtype not in _TRITON_DTYPES[device.type == "cuda"]:
            names = _TRITON_DTYPE_NAMES[device.type == "cuda"]
            raise TypeError(f"backend: 'triton' supports {names}"
                            f" inputs on {device.type} tensors, got {dtype}")
    return backend


# The triton kernels accumulate in float32 (float64 would not be computed in float64, as the
# contract wants); the interpreter (CPU tensors) is a float32 correctness tool.
_TRITON_DTYPES = {True: (torch.float32, torch.float16, torch.bfloat16), False: (torch.float32,)}
_TRITON_DTYPE_NAMES = {True: "float32, float16 and bfloat16", False: "float32"}
