"""Triton backend of msca_kernels (docs/design.md sections 2-3): one module per op, each holding its
kernels, host function and autograd registration.

Importing needs triton but no GPU: the kernels compile at their first launch. On CPU tensors
they run only under the Triton interpreter (TRITON_INTERPRET=1, set before triton is imported),
which is how the test suite checks them on machines without a GPU.
"""
from __future__ import annotations

from . import msca, spade  # noqa: F401  (imports register the custom ops)
from .msca import msca_forward  # noqa: F401
from .spade import spade_norm_forward  # noqa: F401
