"""Peak-memory and copy-bandwidth probes shared by the benchmark suites.

CPU peak memory is the rise of the process's resident-set high-water mark (VmHWM) over the
resident set at the start of the measured call. Writing 5 to /proc/self/clear_refs resets VmHWM
to the current RSS, so one measured call needs no separate process. RSS counts touched pages
only, which is what a kernel really costs: an allocation that is never written does not count.

glibc keeps freed blocks resident for reuse (blocks below the dynamic mmap threshold, up to
32 MB, go back to the heap, not to the kernel). Without help, the measured call would reuse
those resident pages from the warm-up and the RSS would not rise: the peak would read low.
malloc_trim(0) hands every free page of every arena back first, so the rise is the memory the
call itself touches. For the same reason the fused CPU kernels' output pool (msca_kernels.memory)
is emptied first: its cached buffers would otherwise serve the call's outputs from pages that
are already resident.

CUDA peak memory comes from the caching allocator's own counters, which count allocated (not
reserved) bytes, so the same "rise over the start" meaning holds.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import statistics
import time
from typing import Callable

import torch

import msca_kernels as mk

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _status_kb(field: str) -> int:
    with open(_STATUS) as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{_STATUS} has no {field} line")


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def hwm_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def release_free_memory() -> None:
    """Collect Python garbage, empty the CPU kernels' output pool and return glibc's free pages
    to the kernel (see module doc)."""
    gc.collect()
    mk.empty_cache()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def reset_hwm() -> bool:
    """Resets VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_hwm_supported() -> bool:
    return reset_hwm()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak memory above the starting point during one call of fn, in bytes.

    The caller allocates and touches fn's inputs beforehand and warms fn up, so lazy
    initialisation (thread pools, kernels' first-call set-up) does not count.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - start
    release_free_memory()
    if not reset_hwm():
        raise RuntimeError(f"cannot reset VmHWM: {_CLEAR_REFS} is not writable here")
    start = rss_bytes()
    fn()
    return max(0, hwm_bytes() - start)


def copy_bandwidth(device: torch.device, nbytes: int = 256 * 2**20, reps: int = 11) -> float:
    """Measured copy bandwidth in bytes/s: median time of dst.copy_(src) for a float32 tensor
    of nbytes, counting the bytes read plus the bytes written (2 * nbytes)."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)   # touched: pages are resident
    dst = torch.zeros(n, dtype=torch.float32, device=device)
    dst.copy_(src)  # warm-up
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times)


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _sanity() -> int:
    """`python -m benchmarks.memory`: checks the CPU method against allocations of known size."""
    mb = 2**20
    dev = torch.device("cpu")

    def touched():       # 100 MB allocated and written, freed on return
        torch.empty(100 * mb // 4).fill_(1)

    def untouched():     # 100 MB allocated, never written: no resident pages
        torch.empty(100 * mb // 4)

    def small_chunks():  # 40 x 2.5 MB, all alive at once: heap-sized blocks below the mmap cap
        keep = [torch.empty(int(2.5 * mb) // 4).fill_(1) for _ in range(40)]
        del keep

    cases = [("touched 100 MB", touched, 100), ("untouched 100 MB", untouched, 0),
             ("40 x 2.5 MB chunks", small_chunks, 100)]
    ok = True
    for name, fn, expect_mb in cases:
        fn(); fn()  # warm-up: leaves freed blocks behind in glibc, as a benchmark warm-up does
        got = [peak_bytes(fn, dev) / mb for _ in range(3)]
        good = all(abs(g - expect_mb) <= 2 + 0.02 * expect_mb for g in got)
        ok &= good
        print(f"{name:22s} expected {expect_mb:6.1f} MB  measured "
              + " ".join(f"{g:6.1f}" for g in got) + ("  ok" if good else "  WRONG"))
    print(f"copy bandwidth (256 MB, read+write): {copy_bandwidth(dev) / 1e9:.2f} GB/s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(_sanity())


def mode_callables(mode: str, forward: Callable[[], torch.Tensor], leaves,
                   grad_out: torch.Tensor):
    """(setup, fn) for one timed mode of `forward()`, as pytest-benchmark's pedantic takes them.

    fwd: forward under no_grad. bwd: forward in the untimed set-up, its backward timed.
    fwdbwd: both timed. Set-up sets every leaf's .grad to None, so AccumulateGrad takes the
    fresh gradient instead of adding into an old one: every round does the same work and
    allocates the same memory.
    """
    def clear_grads():
        for t in leaves:
            t.grad = None

    if mode == "fwd":
        def setup():
            return ()

        def fn():
            with torch.no_grad():
                forward()
    elif mode == "bwd":
        def setup():
            clear_grads()
            return (forward(),)

        def fn(out):
            out.backward(grad_out)
    elif mode == "fwdbwd":
        def setup():
            clear_grads()
            return ()

        def fn():
            forward().backward(grad_out)
    else:
        raise ValueError(f"mode: expected 'fwd', 'bwd' or 'fwdbwd', got {mode!r}")
    return setup, fn
