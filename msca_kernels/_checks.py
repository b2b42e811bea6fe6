"""Argument checks shared by the public entry points.

Every check runs before any kernel and raises TypeError (wrong type or dtype) or ValueError
(wrong shape, device, range, option) with the argument's name and what was expected. Checks of
shape, dtype and device read only metadata; a check of values reads data only where that costs no
device synchronisation (see values_readable).
"""
from __future__ import annotations

import math
import os

import torch
from torch._subclasses.fake_tensor import FakeTensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, t, ndim: int | None = None, *, optional: bool = False):
    if t is None:
        if optional:
            return
        raise TypeError(f"{name}: expected a tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor "
                        f"(float16, bfloat16, float32 or float64), got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")


def shape(name: str, t, expected: tuple, what: str = ""):
    if t is not None and tuple(t.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name}: expected shape {tuple(expected)}{extra}, "
                         f"got {tuple(t.shape)}")


def same_device(ref_name: str, ref: torch.Tensor, **others):
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name}: expected a tensor on {ref.device} like {ref_name}, "
                             f"got one on {t.device}")


def same_dtype(ref_name: str, ref: torch.Tensor, **others):
    for name, t in others.items():
        if t is not None and t.dtype != ref.dtype:
            raise TypeError(f"{name}: expected dtype {ref.dtype} like {ref_name}, got {t.dtype}")


# Value checks read the data. On CPU tensors that is one small reduction; on a GPU it is a
# device-to-host synchronisation that drains the launch queue on every call (every nn.MSCA step),
# so there it runs only when asked for: MSCA_CHECK_VALUES=1 in the environment (read per call).
CHECK_VALUES_ENV = "MSCA_CHECK_VALUES"


def values_readable(t: torch.Tensor) -> bool:
    """Whether a value check of t runs: real CPU data always; data on another device only with
    MSCA_CHECK_VALUES=1; never while tracing (torch.compile, fake or meta tensors: no data)."""
    if torch.compiler.is_compiling() or isinstance(t, FakeTensor):
        return False
    if t.is_cpu:  # (t.is_cpu: t.device.type builds a device object, ~1.5 us a call)
        return True
    return not t.is_meta and os.environ.get(CHECK_VALUES_ENV) == "1"


def in_unit_interval(name: str, t: torch.Tensor):
    """Values in [0, 1] (NaN fails), where values_readable(t) says the data may be read."""
    if not t.numel() or not values_readable(t):
        return
    lo, hi = t.detach().aminmax()  # one reduction (NaN propagates into both)
    lo, hi = lo.item(), hi.item()
    if not (0.0 <= lo and hi <= 1.0):
        raise ValueError(f"{name}: expected values in [0, 1], got min {lo:.4g} and max {hi:.4g}")


def weight_2d(name: str, w, rows: int | None, cols: int) -> torch.Tensor:
    """Accepts (K, C) or a 1x1 convolution weight (K, C, 1, 1); returns the (K, C) view."""
    tensor(name, w)
    if w.dim() == 4 and w.shape[2:] == (1, 1):
        w = w.flatten(1)
    if w.dim() != 2:
        raise ValueError(f"{name}: expected shape (K, {cols}) or (K, {cols}, 1, 1), "
                         f"got {tuple(w.shape)}")
    if w.shape[1] != cols or (rows is not None and w.shape[0] != rows):
        k = "K" if rows is None else rows
        raise ValueError(f"{name}: expected shape ({k}, {cols}), got {tuple(w.shape)}")
    return w


def finite_number(name: str, value, lo: float = 0.0, hi: float = math.inf):
    """A real number (not a bool, not NaN, not +-inf) in [lo, hi]."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and lo <= value <= hi)
    if not ok:
        where = f">= {lo:g}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name}: expected a finite number {where}, got {value!r}")
