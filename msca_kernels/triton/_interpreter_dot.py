"""Makes the Triton interpreter's tl.dot round float32 operands as the GPU does.

The interpreter multiplies float32 tl.dot operands exactly (numpy float32), whatever
input_precision asks for. On the GPU "tf32" rounds both operands to TF32 (10-bit mantissa,
round to nearest, ties away) and "tf32x3" splits each operand into a TF32 high part and a TF32
low part (the rounded remainder) and sums three products, hi*hi + hi*lo + lo*hi: the lo*lo term
is dropped, so the result is not the exact product (relative error ~2^-21 per term rather than
float32's 2^-24). Code whose correctness depends on exact products (a cancellation that is
exact only when V is exactly a column of x) passes under the plain interpreter and fails on the
GPU; with this patch it fails in CI too.

install() patches InterpreterBuilder.create_dot in place; only used when TRITON_INTERPRET=1
(msca_kernels.triton._common calls it), MSCA_TRITON_INTERPRET_EXACT_DOT=1 leaves the
interpreter as it is.
"""
from __future__ import annotations

import numpy as np

_installed = False


def round_tf32(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest TF32 value (1 + 8 + 10 bits), ties away from zero, as cvt.rna.tf32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    finite = (bits & 0x7F800000) != 0x7F800000
    rounded = np.where(finite, (bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000), bits)
    return rounded.astype(np.uint32).view(np.float32)


def dot_tf32x3(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """acc + a @ b as tf32x3: the two small cross terms first, then the big one (float32).

    As on the GPU, the low part of an infinite operand is inf - inf = NaN (numpy's warning
    about it is silenced: it is the behaviour emulated)."""
    a_hi, b_hi = round_tf32(a), round_tf32(b)
    with np.errstate(invalid="ignore"):
        a_lo = round_tf32((a - a_hi).astype(np.float32))
        b_lo = round_tf32((b - b_hi).astype(np.float32))
    small = np.matmul(a_hi, b_lo, dtype=np.float32) + np.matmul(a_lo, b_hi, dtype=np.float32)
    return (np.matmul(a_hi, b_hi, dtype=np.float32) + small + acc).astype(np.float32)


def dot_tf32(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> np.ndarray:
    return (np.matmul(round_tf32(a), round_tf32(b), dtype=np.float32) + acc).astype(np.float32)


def install() -> None:
    """Patch the interpreter's float32 dot (idempotent)."""
    global _installed
    if _installed:
        return
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    exact = builder.create_dot
    modes = {ir.INPUT_PRECISION.TF32x3: dot_tf32x3, ir.INPUT_PRECISION.TF32: dot_tf32}

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        fn = modes.get(input_precision)
        if (fn is None or a.data.dtype != np.float32 or b.data.dtype != np.float32
                or d.data.dtype != np.float32):
            return exact(self, a, b, d, input_precision, max_num_imprecise_acc)
        return interpreter.TensorHandle(fn(a.data, b.data, d.data), d.dtype.scalar)

    create_dot.exact = exact
    builder.create_dot = create_dot
    _installed = True
