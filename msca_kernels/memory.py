"""The CPU output pool: big outputs of the C++ CPU kernels are reused across calls.

A 64 MB output from torch's CPU allocator is a fresh mmap every call: its first write faults
every page in and the kernel zeroes it, which costs as much as a fused kernel pass. The C++
kernels therefore take their big outputs (4 MiB and up) from a small cache of freed output
buffers (csrc/cpu/output_pool.cpp). Free buffers are kept up to MSCA_CPU_POOL_MB megabytes
(read once, at the first big allocation; default 1024, 0 disables the pool); the tensors
handed out are ordinary CPU tensors.
"""
from __future__ import annotations

import torch

from . import _ext


def empty_cache() -> int:
    """Returns every cached (free) CPU output buffer to the system; the bytes released."""
    if not _ext.loaded():
        return 0
    return int(torch.ops.msca_kernels.cpu_pool_release())


def cached_bytes() -> int:
    """Bytes held in free cached CPU output buffers now."""
    if not _ext.loaded():
        return 0
    return int(torch.ops.msca_kernels.cpu_pool_cached_bytes())


def cache_limit_bytes() -> int:
    """The most bytes of free buffers the pool keeps (MSCA_CPU_POOL_MB; 0: pool disabled)."""
    if not _ext.loaded():
        return 0
    return int(torch.ops.msca_kernels.cpu_pool_limit_bytes())
