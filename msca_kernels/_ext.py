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


def _query(op: str, dispatch_key: str) -> bool:
    return _loaded and torch._C._dispatch_has_kernel_for_dispatch_key(f"msca_kernels::{op}",
                                                                       dispatch_key)


# Read once at import, after _C registered its kernels: backend selection runs inside
# torch.compile'd code, where a dispatcher query would break the graph.
_KERNELS = {(op, key): _query(op, key) for op in ("msca_fwd", "spade_norm_fwd")
            for key in ("CPU", "CUDA")}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the op msca_kernels::<op> has a kernel registered for the dispatch key."""
    return _KERNELS.get((op, dispatch_key), False)
