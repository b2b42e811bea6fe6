"""Tensors of more than 2^31 elements that cost almost no memory, and launches of a few chosen
programs of a Triton grid under the interpreter: what the 64-bit offset tests need.

huge(): an anonymous private mapping with MAP_NORESERVE. The kernel reserves address space
only (no commit charge, so a 30 GB tensor fits a 24 GB machine); a page becomes memory when it
is written, and reading an untouched page maps the shared zero page. A test writes the few
tiles a kernel will read and stays within a few MB.

The tensor starts PAD = 2^33 elements into its mapping, behind a padding of zeros. A term of
an offset that a kernel computes in 32 bits wraps to a value in [-2^31, 2^31), never above its
true value, and `ptr + a + b` adds each term on its own (one addptr per term, in the
interpreter as on the GPU): with up to four wrapped terms the address still lies in the
mapping, so a planted 32-bit offset reads wrong values (zeros, or another tile's) and fails the
test instead of crashing the process.

programs(): under TRITON_INTERPRET=1 every program of a grid runs as Python, so a launch over
the grid of a > 2^31-element tensor would take hours. The interpreter loops over
range(grid) and tells its builder each program id (interpreter_builder.set_grid_idx); the
context manager maps those ids onto chosen ones (the last group, the last tile, ...), so a
launch of a grid of len(xs) x len(ys) runs exactly those programs of the full grid. The kernels
of this repository never read tl.num_programs, which would see the full grid's extent.
"""
from __future__ import annotations

import contextlib
import mmap
import sys
from typing import Sequence

import pytest
import torch

PAD = 2**33
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)  # Linux's value; Python 3.11 lacks it


def span(size: Sequence[int], stride: Sequence[int]) -> int:
    """Elements from a strided tensor's first element to one past its last."""
    return 1 + sum((s - 1) * st for s, st in zip(size, stride))


def contiguous_strides(size: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(size):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def channels_last_strides(size: Sequence[int]) -> tuple[int, int, int]:
    """(B, C, P) as a channels_last (B, C, H, W) tensor flattens: channels innermost."""
    B, C, P = size
    return (C * P, 1, C)


def huge(size: Sequence[int], stride: Sequence[int] | None = None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A tensor of `size` and `stride` (contiguous by default) at element offset PAD of a
    reserved-only mapping (zeros); skips the test where such a mapping cannot be made."""
    stride = tuple(stride) if stride is not None else contiguous_strides(size)
    n = span(size, stride)
    if not sys.platform.startswith("linux"):
        pytest.skip("reserved-only mappings (MAP_NORESERVE) are a Linux feature")
    itemsize = torch.empty((), dtype=dtype).element_size()
    try:
        mapping = mmap.mmap(-1, (PAD + n) * itemsize,
                            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    except (OSError, OverflowError, ValueError) as e:
        pytest.skip(f"cannot reserve {(PAD + n) * itemsize / 2**30:.1f} GiB of address space "
                    f"(virtual memory limit or strict overcommit?): {e}")
    # frombuffer keeps the mapping alive as long as the tensor (or a view of it) lives.
    flat = torch.frombuffer(mapping, dtype=dtype, count=PAD + n)
    return flat.as_strided(tuple(size), stride, PAD)


@contextlib.contextmanager
def programs(xs: Sequence[int], ys: Sequence[int] = (0,), zs: Sequence[int] = (0,)):
    """Inside, an interpreted launch with grid (len(xs), len(ys), len(zs)) runs the programs
    xs x ys x zs (program ids as the full grid numbers them). Yields that small grid."""
    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    if builder is None or not hasattr(builder, "set_grid_idx"):
        pytest.skip("this triton's interpreter has no interpreter_builder.set_grid_idx to "
                    "select programs with")
    xs, ys, zs = list(xs), list(ys), list(zs)
    full = (max(xs) + 1, max(ys) + 1, max(zs) + 1)
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    builder.set_grid_dim = lambda nx, ny, nz: set_dim(*full)
    builder.set_grid_idx = lambda x, y, z: set_idx(xs[x], ys[y], zs[z])
    try:
        yield (len(xs), len(ys), len(zs))
    finally:
        # instance attributes shadowed the class's methods; removing them restores those
        del builder.set_grid_dim
        del builder.set_grid_idx
