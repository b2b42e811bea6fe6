"""What the Triton kernels of both ops share: launch policy, tile configurations, precision.

Two regimes. On a CUDA GPU the kernels are autotuned over a few tile configurations; the list
always contains a small, conservative configuration, so a GPU on which the large ones do not
fit (registers, shared memory: triton's autotuner discards configurations that fail to compile
or launch) still has one that runs. Under the Triton interpreter (TRITON_INTERPRET=1, CPU
tensors) every program runs as numpy code in Python, so there is one fixed configuration with
the smallest tiles tl.dot accepts, and autotuning (which would time every configuration) is off.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

# Read once: triton itself decides at import whether it interprets.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Under the interpreter, float32 tl.dot rounds as on the GPU (tf32x3 is not exact), so that
# precision bugs show in CI; see _interpreter_dot.
if INTERPRET and os.environ.get("MSCA_TRITON_INTERPRET_EXACT_DOT") != "1":
    from . import _interpreter_dot

    _interpreter_dot.install()

# tl.dot needs every dimension >= 16.
MIN_DOT = 16


def block(n: int, lo: int = MIN_DOT) -> int:
    """Smallest power of two >= max(n, lo): the padded extent of a dimension held whole."""
    return max(lo, triton.next_power_of_2(int(n)))


def dot_precision(dtype: torch.dtype) -> str:
    """input_precision of the tl.dot calls whose operands are float32.

    The kernels keep softmax weights and gradients in float32 and multiply them with float32
    operands; TF32 (triton's default) would cost ~1e-3 relative error, far outside the float32
    tolerance. On the GPU "tf32x3" (three TF32 products, error near float32's) keeps the tensor
    cores; MSCA_TRITON_F32_DOT=ieee selects exact FMA products instead. The interpreter asks
    for the same and rounds like the GPU (_interpreter_dot).
    """
    return os.environ.get("MSCA_TRITON_F32_DOT", "tf32x3")


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def smem_optin(index: int) -> int:
    """Shared memory per block a kernel may opt in to on CUDA device `index`, bytes."""
    return torch.cuda.get_device_properties(index).shared_memory_per_block_optin


def num_programs(device: torch.device, work_items: int, per_sm: int = 2) -> int:
    """How many programs a split reduction uses: enough to fill the GPU, never more than there
    are work items (tiles); a few under the interpreter, so the cross-program merge is tested."""
    if device.type != "cuda":
        return max(1, min(work_items, 3))
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(work_items, per_sm * _sm_count(index)))


def size_bucket(n: int) -> int:
    """The autotuning bucket of a size that changes with the image (a number of positions):
    the next power of two. Kernels take it as an extra argument that only the autotuner reads
    (key=[..., "P_BUCKET"]), so a new H x W inside a bucket reuses the timed configuration
    instead of re-timing every one; masks and loop bounds use the exact size."""
    if int(n) < 0:
        raise ValueError(f"n: expected a size >= 0, got {n}")
    return triton.next_power_of_2(max(1, int(n)))


def configs(options: list[dict], warps: tuple[int, ...] = (4, 8), stages: int | tuple = 2) -> list:
    """Every (option, warps, stages) combination, the first option's first warps/stages first
    (make test's quick triton-check compiles only that one)."""
    stages = (stages,) if isinstance(stages, int) else tuple(stages)
    return [triton.Config(dict(o), num_warps=w, num_stages=s)
            for o in options for w in warps for s in stages]


def tuned(kernel, gpu_configs: list, key: list[str], interpret_meta: dict, prune=None):
    """(launchable kernel, meta-parameters to pass at launch).

    On the GPU: the kernel wrapped in triton.autotune over gpu_configs (the block sizes come
    from the chosen config, so none are passed); `prune(configs, named_args, **meta)` drops
    configurations before timing (triton's early_config_prune; it must leave at least one).
    Under the interpreter: the bare kernel and one fixed configuration.
    """
    if INTERPRET:
        return kernel, dict(interpret_meta)
    by = {"early_config_prune": prune} if prune is not None else None
    return triton.autotune(configs=gpu_configs, key=key, prune_configs_by=by)(kernel), {}


def read_kernel_sources_now(namespace: dict) -> None:
    """Under the interpreter: has triton read and rewrite the source of every kernel and
    device function in `namespace` (a kernel module's globals(), called at its end) now, at
    import, rather than at each one's first launch. A no-op on the GPU.

    Why: the interpreter runs a kernel by re-reading its source from the file on disk
    (inspect.getsourcelines, at the line numbers of the imported code) the first time it
    runs. If the file was edited in between (another checkout user, an editor saving during a
    test run), it reads other lines: a KeyError inside triton's interpreter (the rewritten code
    no longer defines the kernel's name), or new kernel code run with the old host code. Read
    here, the source is the one Python has just compiled
    (tests/msca_kernels/test_triton_interpreter_source.py)."""
    if not INTERPRET:
        return
    from triton.runtime.interpreter import InterpretedFunction

    for value in list(namespace.values()):  # rewriting adds names to the module's globals
        if isinstance(value, InterpretedFunction):
            value.rewrite()


def device_guard(device: torch.device):
    """Makes `device` the current CUDA device for the launches inside (triton launches on the
    current device: tensors on cuda:1 while cuda:0 is current would be read from the wrong GPU);
    a no-op for other devices."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def launch(kernel, grid, *args, **meta) -> None:
    """kernel[grid](*args, **meta) through torch.library.wrap_triton, so that torch.compile
    sees the launch, on the device of the first tensor argument (device_guard). Under the
    interpreter wrap_triton hands back the bare kernel, which would run on fake tensors when the
    op is traced for shapes: there the launch is skipped (the op's fake implementation is its
    body without launches, see register_op)."""
    if INTERPRET and any(isinstance(a, torch.Tensor) and is_fake(a) for a in args):
        return
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with device_guard(device):
        wrap_triton(kernel)[grid](*args, **meta)


def register_op(name: str):
    """Registers a host function as the custom op `name`, its schema from its annotations.

    On a GPU: torch.library.triton_op, which torch.compile decomposes into its kernel launches
    (inductor schedules them with the rest of the graph). Under the interpreter the launches
    cannot be traced (they run numpy code on real CPU data), so the op stays opaque: a plain
    custom_op whose fake implementation is the same body, launches skipped.
    """
    def dec(fn):
        if not INTERPRET:
            return triton_op(name, mutates_args={})(fn)
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op
    return dec
