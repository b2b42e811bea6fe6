"""Builds and drives the CPU emulation of the raw CUDA kernels (csrc/cuda/*_kernels.cu).

The kernel files are compiled unchanged as C++ after two mechanical rewrites that C++ cannot
express otherwise: `kernel<<<grid, block, smem, stream>>>(args)` becomes a call of the
emulator's launcher, and `extern __shared__ T name[];` becomes a pointer to the launch's
dynamic shared memory. `include/` stands in for the CUDA headers (include/emu_runtime.h
describes the model). Objects are cached under build/cuda_emu/ by a hash of every input.

A mutation (PLANTED_BUGS) rewrites a kernel source before the build: the test suite uses them
to show that it notices a missing barrier or a broken merge.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL_FILES = sorted(CUDA_DIR.glob("*_kernels.cu"))
BUILD_DIR = Path(os.environ.get("MSCA_CUDA_EMU_BUILD", ROOT / "build" / "cuda_emu"))
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-ffp-contract=off", "-w"]

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}

# name -> (kernel file, exact text, replacement). Each must match exactly once.
PLANTED_BUGS = {
    # the barrier between loading a chunk of exemplar rows and the products that read it
    "missing_barrier": (
        "msca_cuda_kernels.cu",
        "        if (src == 0 && dV) W2[e] = dV[(c0 + c) * K + k];\n      }\n      __syncthreads();\n",
        "        if (src == 0 && dV) W2[e] = dV[(c0 + c) * K + k];\n      }\n",
    ),
    # the merge of the split partials without the e^(m_s - M) rescaling
    "merge_without_rescaling": (
        "msca_cuda_kernels.cu",
        "const A f = exp_acc(ms - M);",
        "const A f = A(1);",
    ),
    # the online softmax forgets to rescale the running partial V when the maximum grows
    "online_softmax_without_rescaling": (
        "msca_cuda_kernels.cu",
        "*p = first ? v : fma(*p, sc_s[k], v);",
        "*p = first ? v : *p + v;",
    ),
    # the SPADE statistics' warp butterfly with a wrong lane offset (1 instead of 2: lanes two
    # apart never meet). Offsets that still span the 32 lanes, like 3 for 1, are not bugs.
    "wrong_shuffle_offset": (
        "spade_cuda_kernels.cu",
        "for (int o = 16; o > 0; o >>= 1) {\n    Moments<A> t;",
        "for (int o_ = 16; o_ > 0; o_ >>= 1) {\n    const int o = o_ == 2 ? 1 : o_;\n"
        "    Moments<A> t;",
    ),
    # SPADE's grid-stride cursor forgets the carry when the columns pass the end of a row: the
    # group lags one row behind from the first wrapped step on
    "cursor_without_carry": (
        "spade_cuda_kernels.cu",
        "g += step_rows + (carry ? 1 : 0);",
        "g += step_rows;",
    ),
    # ... or forgets to wrap the channel around C in batch mode (reads mean[g] past the end)
    "cursor_without_channel_wrap": (
        "spade_cuda_kernels.cu",
        "if (!instance && g >= C) g -= C;",
        ";",
    ),
}

# The kernels whose grid-stride loops cover the data with any grid (GroupCursor in
# spade_cuda_kernels.cu): test_cuda_grid_stride.py runs them on grids too small for the data.
GRID_STRIDE_KERNELS = ("apply_fwd_kernel", "apply_bwd_kernel")

_LAUNCH = re.compile(r"\b([A-Za-z_]\w*(?:<[^<>;()]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\(\d+\)\s+)?([A-Za-z_][\w\s]*?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;")
_GLOBAL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(")


def kernel_names(source: str) -> list[str]:
    """Names of the __global__ functions of a CUDA source."""
    return _GLOBAL.findall(source)


def all_kernel_names() -> list[str]:
    return sorted(n for f in KERNEL_FILES for n in kernel_names(f.read_text()))


def translate(source: str) -> str:
    """The two rewrites of the module docstring; line numbers are kept."""
    def launch(m: re.Match) -> str:
        kernel = m.group(1)
        name = kernel.split("<")[0]
        return f'::emu::launch("{name}", {kernel}, {m.group(2)})('

    out = _LAUNCH.sub(launch, source)
    out = _EXTERN_SHARED.sub(
        lambda m: f"{m.group(1)}* const {m.group(2)} = "
                  f"reinterpret_cast<{m.group(1)}*>(::emu::dynamic_smem());", out)
    if "<<<" in out:
        raise RuntimeError("cuda_emu: a kernel launch the translator does not understand")
    return out


def _mutate(name: str, text: str, bug: str | None) -> str:
    if bug is None:
        return text
    file, old, new = PLANTED_BUGS[bug]
    if name != file:
        return text
    if text.count(old) != 1:
        raise RuntimeError(f"cuda_emu: planted bug {bug!r} no longer matches {file} exactly once")
    return text.replace(old, new)


def _compile(src_text: str, name: str, extra_include: list[Path]) -> Path:
    flags = CXXFLAGS + [f"-I{HERE / 'include'}", f"-I{CUDA_DIR}"] + [f"-I{p}" for p in extra_include]
    headers = "".join(p.read_text() for p in sorted((HERE / "include").glob("*.h")))
    headers += "".join(p.read_text() for p in sorted(CUDA_DIR.glob("*.h")))
    headers += "".join(p.read_text() for p in sorted(CUDA_DIR.glob("*.cuh")))
    key = hashlib.sha256("\0".join([CXX, *flags, headers, src_text]).encode()).hexdigest()[:16]
    obj = BUILD_DIR / f"{name}.{key}.o"
    if obj.exists():
        return obj
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD_DIR) as tmp:
        src = Path(tmp) / f"{name}.cpp"
        src.write_text(src_text)
        out = Path(tmp) / "out.o"
        r = subprocess.run(["nice", "-n", "10", CXX, *flags, "-c", str(src), "-o", str(out)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cuda_emu: compiling {name} failed:\n{r.stderr[-4000:]}")
        os.replace(out, obj)
    return obj


def build(bug: str | None = None) -> Path:
    """Compiles the kernels (with a planted bug if named) and the emulator; returns the .so."""
    if bug is not None and bug not in PLANTED_BUGS:
        raise ValueError(f"bug: expected one of {sorted(PLANTED_BUGS)}, got {bug!r}")
    objs = [_compile((HERE / "emu_runtime.cpp").read_text(), "emu_runtime", [HERE]),
            _compile((HERE / "emu_driver.cpp").read_text(), "emu_driver", [])]
    for f in KERNEL_FILES:
        text = _mutate(f.name, f.read_text(), bug)
        objs.append(_compile(f'#line 1 "{f}"\n' + translate(text), f.stem, []))
    key = hashlib.sha256("".join(o.name for o in objs).encode()).hexdigest()[:16]
    lib = BUILD_DIR / f"libcuda_emu.{key}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([CXX, "-shared", "-o", str(tmp), *map(str, objs)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cuda_emu: linking failed:\n{r.stderr[-4000:]}")
        os.replace(tmp, lib)
    return lib


class EmulatorError(RuntimeError):
    """A kernel launch failed in the emulator (bad configuration, barrier misuse, deadlock)."""


class Emulator:
    """The launchers of csrc/cuda on CPU tensors. Records which kernels ran, per dtype."""

    def __init__(self, bug: str | None = None):
        self.lib = ctypes.CDLL(str(build(bug)))
        for fn in ("emu_error", "emu_take_log", "emu_msca_smem_check",
                   "emu_msca_fwd_smem_check"):
            getattr(self.lib, fn).restype = ctypes.c_char_p
        self.lib.emu_msca_fwd_workspace_bytes.restype = ctypes.c_size_t
        self.lib.emu_msca_smem_bytes.restype = ctypes.c_size_t
        self.lib.emu_msca_max_k.restype = ctypes.c_int64
        self.lib.emu_take_capped_launches.restype = ctypes.c_uint64
        self.launches: dict[tuple[str, str], int] = {}  # (kernel, dtype) -> launches run
        # (kernel, dtype) -> the largest dynamic shared memory of its launches, in bytes; dry
        # runs included (clear it before a measurement)
        self.launch_smem: dict[tuple[str, str], int] = {}
        self.dry = False

    # -- plumbing
    def _call(self, fn: str, dtype: torch.dtype, dims, ptrs, *extra):
        dims_arr = (ctypes.c_int64 * len(dims))(*dims)
        ptr_arr = (ctypes.c_void_p * len(ptrs))(
            *[None if t is None else t.data_ptr() for t in ptrs])
        rc = getattr(self.lib, fn)(DTYPE_CODE[dtype], dims_arr, ptr_arr, *extra)
        log = [line.split() for line in self.lib.emu_take_log().decode().splitlines()]
        for name, smem in log:
            key = (name, str(dtype).replace("torch.", ""))
            self.launch_smem[key] = max(self.launch_smem.get(key, 0), int(smem))
            if not self.dry:
                self.launches[key] = self.launches.get(key, 0) + 1
        err = self.lib.emu_error().decode()
        if rc != 0 or err:
            raise EmulatorError(f"{fn}: cudaError {rc}: {err or 'no message'}")

    def set_max_smem_optin(self, nbytes: int) -> None:
        self.lib.emu_set_max_smem_optin(ctypes.c_int(nbytes))

    def set_grid_cap(self, kernel: str, blocks: int) -> None:
        """Launches of `kernel` run with at most `blocks` blocks along x (0: no cap), so that
        its grid-stride loop steps several times. Only for GRID_STRIDE_KERNELS."""
        if kernel not in GRID_STRIDE_KERNELS:
            raise ValueError(f"kernel: expected one of {GRID_STRIDE_KERNELS}, got {kernel!r}")
        if blocks < 0:
            raise ValueError(f"blocks: expected >= 0, got {blocks}")
        self.lib.emu_set_grid_cap(kernel.encode(), ctypes.c_uint(blocks))

    def take_capped_launches(self) -> int:
        """Launches a grid cap shrank since the last call."""
        return self.lib.emu_take_capped_launches()

    # -- MSCA: inputs as the ops take them (B, C, H, W); returns flattened results
    def msca_fwd(self, t: dict, sm_count: int):
        fx2, fc2, fc1 = (t[k].flatten(2).contiguous() for k in ("fx2", "fc2", "fc1"))
        B, N, P2 = fx2.shape
        M2, M1, P1 = fc2.shape[1], fc1.shape[1], fc1.shape[2]
        K = t["phi_weight"].shape[0]
        dt = fx2.dtype
        acc = torch.float64 if dt == torch.float64 else torch.float32
        args = _msca_params(t, B, K, P2, P1)
        out = torch.full((B, N, P1), float("nan"), dtype=dt)
        V = torch.full((B, N, K), float("nan"), dtype=acc)
        lse = torch.full((B, K), float("nan"), dtype=acc)
        self._call("emu_msca_fwd", dt, (B, N, M2, M1, K, P2, P1),
                   [fx2, fc2, fc1, *args, out, V, lse], ctypes.c_int(sm_count))
        return out, V, lse

    def msca_bwd(self, t: dict, grad_out, V, lse, sm_count: int, want_bias_grads=True):
        fx2, fc2, fc1 = (t[k].flatten(2).contiguous() for k in ("fx2", "fc2", "fc1"))
        B, N, P2 = fx2.shape
        M2, M1, P1 = fc2.shape[1], fc1.shape[1], fc1.shape[2]
        K = t["phi_weight"].shape[0]
        dt = fx2.dtype
        args = _msca_params(t, B, K, P2, P1)
        nan = lambda *s: torch.full(s, float("nan"), dtype=dt)  # noqa: E731
        grads = dict(fx2=nan(B, N, P2), fc2=nan(B, M2, P2), fc1=nan(B, M1, P1),
                     phi_weight=nan(K, N + M2), phi_bias=nan(K), psi_weight=nan(K, M1),
                     psi_bias=nan(K), mask=nan(B, K))
        if want_bias_grads and args[5] is not None:
            grads["spatial_bias"] = nan(B, K, P2)
        if want_bias_grads and args[6] is not None:
            grads["channel_bias"] = nan(B, K, P1)
        order = ["fx2", "fc2", "fc1", "phi_weight", "phi_bias", "psi_weight", "psi_bias", "mask",
                 "spatial_bias", "channel_bias"]
        self._call("emu_msca_bwd", dt, (B, N, M2, M1, K, P2, P1),
                   [grad_out.flatten(2).contiguous(), fx2, fc2, fc1, *args, V, lse,
                    *[grads.get(n) for n in order]], ctypes.c_int(sm_count))
        return grads

    # -- SPADE on flattened (B, C, P) tensors
    def spade_fwd(self, x, gamma, beta, instance: bool, eps=1e-5, mean=None, rstd=None):
        B, C, P = x.shape
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        shape = (B, C) if instance else (C,)
        out = torch.full_like(x, float("nan"))
        compute = mean is None
        mean = torch.full(shape, float("nan"), dtype=acc) if compute else mean.to(acc).clone()
        rstd = torch.full(shape, float("nan"), dtype=acc) if compute else rstd.to(acc).clone()
        self._call("emu_spade_fwd", x.dtype, (B, C, P, int(instance)),
                   [x, gamma, beta, out, mean, rstd], ctypes.c_int(int(compute)),
                   ctypes.c_double(eps))
        return out, mean, rstd

    def spade_bwd(self, dy, x, gamma, mean, rstd, instance: bool, batch_stats: bool):
        B, C, P = x.shape
        dx, dgamma = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
        self._call("emu_spade_bwd", x.dtype, (B, C, P, int(instance)),
                   [dy, x, gamma, mean, rstd, dx, dgamma], ctypes.c_int(int(batch_stats)))
        return dx, dgamma

    def msca_smem_bytes(self, K: int, acc_size: int, backward: bool) -> int:
        """Shared memory per block of the forward (backward) tile kernels, msca_cuda.h."""
        return self.lib.emu_msca_smem_bytes(ctypes.c_int64(K), ctypes.c_int(acc_size),
                                            ctypes.c_int(int(backward)))

    def msca_max_k(self, acc_size: int, smem_limit: int, backward: bool) -> int:
        return self.lib.emu_msca_max_k(ctypes.c_int(acc_size), ctypes.c_int64(smem_limit),
                                       ctypes.c_int(int(backward)))

    def msca_smem_check(self, K: int, acc_size: int, smem_limit: int, backward: bool) -> str:
        """The message the torch binding raises when the kernels do not fit ("" if they do)."""
        return self.lib.emu_msca_smem_check(ctypes.c_int64(K), ctypes.c_int(acc_size),
                                            ctypes.c_int64(smem_limit),
                                            ctypes.c_int(int(backward))).decode()

    def msca_fwd_smem_check(self, K: int, acc_size: int, smem_limit: int,
                            backward_follows: bool) -> str:
        """The message the torch binding raises before the forward's launches ("" if the
        forward fits, and the backward too when one follows)."""
        return self.lib.emu_msca_fwd_smem_check(ctypes.c_int64(K), ctypes.c_int(acc_size),
                                                ctypes.c_int64(smem_limit),
                                                ctypes.c_int(int(backward_follows))).decode()

    def msca_fwd_workspace_bytes(self, dims, sm_count: int, acc_size: int) -> int:
        arr = (ctypes.c_int64 * 7)(*dims)
        return self.lib.emu_msca_fwd_workspace_bytes(arr, ctypes.c_int(sm_count),
                                                     ctypes.c_int(acc_size))


def _msca_params(t: dict, B: int, K: int, P2: int, P1: int) -> list:
    """phi, phi_bias, psi, psi_bias, mask, spatial_bias, channel_bias as the launchers take them
    (defaults as msca_kernels fills them in: zero biases, a mask of ones)."""
    dt = t["fx2"].dtype
    phi = t["phi_weight"].reshape(K, -1).contiguous()
    psi = t["psi_weight"].reshape(K, -1).contiguous()
    phib = t.get("phi_bias")
    psib = t.get("psi_bias")
    mask = t.get("mask")
    sb = t.get("spatial_bias")
    cb = t.get("channel_bias")
    return [phi, (phib if phib is not None else torch.zeros(K, dtype=dt)).contiguous(),
            psi, (psib if psib is not None else torch.zeros(K, dtype=dt)).contiguous(),
            (mask if mask is not None else torch.ones(B, K, dtype=dt)).contiguous(),
            None if sb is None else sb.reshape(B, K, P2).contiguous(),
            None if cb is None else cb.reshape(B, K, P1).contiguous()]


class DryRun:
    """Within `with DryRun(emulator):` launches are checked and logged but run nothing, so the
    launchers can be called with sizes far beyond this machine's memory (and null pointers)."""

    def __init__(self, emulator: Emulator):
        self.emu = emulator

    def __enter__(self):
        self.emu.lib.emu_set_dry_run(1)
        self.emu.dry = True
        return self

    def __exit__(self, *exc):
        self.emu.lib.emu_set_dry_run(0)
        self.emu.dry = False

    def msca(self, dims, dtype=torch.float32, sm_count=132, backward=True):
        """Forward (and backward) launches for MscaDims (B, N, M2, M1, K, P2, P1)."""
        self.emu._call("emu_msca_fwd", dtype, dims, [None] * 13, ctypes.c_int(sm_count))
        if backward:
            self.emu._call("emu_msca_bwd", dtype, dims, [None] * 23, ctypes.c_int(sm_count))

    def spade(self, dims, dtype=torch.float32):
        """Forward and backward launches for SpadeDims (B, C, P, instance)."""
        self.emu._call("emu_spade_fwd", dtype, dims, [None] * 6, ctypes.c_int(1),
                       ctypes.c_double(1e-5))
        self.emu._call("emu_spade_bwd", dtype, dims, [None] * 7, ctypes.c_int(1))
