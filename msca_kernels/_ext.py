"""Loads the compiled extension (msca_kernels._C) once and remembers why it failed, if it did.

Importing _C runs the TORCH_LIBRARY registrations of csrc/: the op schemas and the CPU (and,
where built, CUDA) kernels. The Python package stays importable without it: the reference
backend needs nothing compiled.
"""
from __future__ import annotations

import torch

_loaded = False
_error: str | None = None

try:
    from . import _C  # noqa: F401  (the import registers the ops)

    _loaded = True
except ImportError as exc:  # not built, or built against another torch
    _error = f"the C++ extension msca_kernels._C is not built ({exc}); run `make build`"


def loaded() -> bool:
    return _loaded


def load_error() -> str | None:
    return _error


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the op msca_kernels::<op> has a kernel registered for the dispatch key."""
    if not _loaded:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"msca_kernels::{op}", dispatch_key)
