"""GPU benchmarks (issue #3): triton (and cuda where built) against the eager einsum reference
and torch.compile(reference), on one CUDA device; skipped without one.

  MSCA   B=1, N=M1=M2=64, K=16, mask and phi/psi biases: fwd, bwd, fwdbwd at 512x512 in float32
         and bfloat16; fwd and fwdbwd over the 64..1024 size sweep in float32
  SPADE  B=1, C=64, 512x512, batch and instance statistics, fwd and fwdbwd, float32, bfloat16
  dense  the HW x HW cross-attention of exemplar-based translation (softmax over every exemplar
         position for every target position, as in CoCosNet-style correspondence), fwd and
         fwdbwd over the same sweep until it runs out of memory: the sizes where it does are
         recorded (benchmarks/conftest.py NOT_RUN) and the report prints them next to MSCA.

Time, GB/s against the copy bandwidth measured on the GPU in this session, and peak memory from
torch.cuda.max_memory_allocated (rise over the start of one call), all through run_case
(benchmarks/conftest.py). `make bench-gpu` runs this file and writes
benchmarks/results/<gpu-name>.json and .md.
"""
from __future__ import annotations

import math

import pytest
import torch

import msca_kernels as mk
from msca_kernels import _ext, reference

from . import conftest as bench
from .memory import mode_callables, tensor_bytes
from .test_bench_msca import B, K, M1, M2, MAIN_SIZE, N, SWEEP_SIZES, traffic
from .test_bench_spade import PASSES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEV = torch.device("cuda")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _targets(op: str) -> list:
    """reference (eager), compile (torch.compile of the reference), and the GPU kernels."""
    if not torch.cuda.is_available():
        return []
    status = mk.available_backends()
    out = [bench.Target("reference", DEV), bench.Target("compile", DEV)]
    if status["triton"]:
        out.append(bench.Target("triton", DEV))
    kernel = "msca_fwd" if op == "msca" else "spade_norm_fwd"
    if status["cuda"] and _ext.has_kernel(kernel, "CUDA"):
        out.append(bench.Target("cuda", DEV))
    return out


MSCA_TARGETS = _targets("msca")
SPADE_TARGETS = _targets("spade")


def _ids(targets):
    return [t.id for t in targets]


@pytest.fixture(autouse=True)
def _fresh_compile_cache():
    # Every case compiles the reference for its own shapes and dtype; a reset keeps dynamo's
    # per-function cache limit from silently sending later cases to eager.
    torch._dynamo.reset()
    yield
    torch.cuda.empty_cache()


def _msca_fn(backend: str):
    if backend == "compile":
        return torch.compile(reference.msca_attention, dynamic=False)
    return lambda **kw: mk.msca_attention(**kw, backend=backend)


def _msca_inputs(size: int, dtype: torch.dtype) -> dict:
    def leaf(t):
        return t.to(device=DEV, dtype=dtype).requires_grad_(True)
    return {"fx2": leaf(torch.randn(B, N, size, size)), "fc2": leaf(torch.randn(B, M2, size, size)),
            "fc1": leaf(torch.randn(B, M1, size, size)),
            "phi_weight": leaf(torch.randn(K, N + M2) / (N + M2) ** 0.5),
            "psi_weight": leaf(torch.randn(K, M1) / M1 ** 0.5), "mask": leaf(torch.rand(B, K)),
            "phi_bias": leaf(0.1 * torch.randn(K)), "psi_bias": leaf(0.1 * torch.randn(K))}


def _modes(run_case, target, op, case, mode, forward, leaves, grad_out, bytes_moved, info,
           out_bytes):
    """fwd (no_grad), bwd (forward in the untimed set-up) or fwdbwd of forward()."""
    setup, fn = mode_callables(mode, forward, leaves, grad_out)
    kept = {"fwd": out_bytes, "bwd": tensor_bytes(*leaves),
            "fwdbwd": out_bytes + tensor_bytes(*leaves)}[mode]
    run_case(target=target, op=op, case=case, mode=mode, setup=setup, fn=fn,
             bytes_moved=bytes_moved, kept_bytes=kept, info=info)


def _run_msca(run_case, target, mode, size, case, dtype_name):
    dtype = DTYPES[dtype_name]
    inp = _msca_inputs(size, dtype)
    grad_out = torch.randn(B, N, size, size, device=DEV, dtype=dtype)
    f = _msca_fn(target.backend)
    _modes(run_case, target, "msca", case, mode, lambda: f(**inp), list(inp.values()), grad_out,
           traffic(inp, mode), {"size": size, "B": B, "N": N, "M1": M1, "M2": M2, "K": K,
                                "dtype": dtype_name}, tensor_bytes(grad_out))


@pytest.mark.parametrize("gpu_target", MSCA_TARGETS, ids=_ids(MSCA_TARGETS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("mode", ("fwd", "bwd", "fwdbwd"))
def test_gpu_msca_512(run_case, gpu_target, mode, dtype_name):
    _run_msca(run_case, gpu_target, mode, MAIN_SIZE, f"{MAIN_SIZE}x{MAIN_SIZE}", dtype_name)


@pytest.mark.parametrize("gpu_target", MSCA_TARGETS, ids=_ids(MSCA_TARGETS))
@pytest.mark.parametrize("size", SWEEP_SIZES)
@pytest.mark.parametrize("mode", ("fwd", "fwdbwd"))
def test_gpu_msca_sweep(run_case, gpu_target, mode, size):
    _run_msca(run_case, gpu_target, mode, size, "sweep", "float32")


# ---------------------------------------------------------------------------------------------
# SPADE


def _spade_fn(backend: str, norm: str, running: dict):
    if backend == "compile":
        f = torch.compile(reference.spade_norm, dynamic=False)
        return lambda x, g, b: f(x, g, b, mode=norm, training=True, **running)
    return lambda x, g, b: mk.spade_norm(x, g, b, mode=norm, training=True, backend=backend,
                                         **running)


@pytest.mark.parametrize("gpu_target", SPADE_TARGETS, ids=_ids(SPADE_TARGETS))
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("norm", ("batch", "instance"))
@pytest.mark.parametrize("mode", ("fwd", "fwdbwd"))
def test_gpu_spade_512(run_case, gpu_target, mode, norm, dtype_name):
    dtype = DTYPES[dtype_name]
    C, size = 64, MAIN_SIZE
    x, gamma, beta = (torch.randn(1, C, size, size, device=DEV, dtype=dtype) for _ in range(3))
    gamma.mul_(0.1)
    beta.mul_(0.1)
    leaves = [t.requires_grad_(True) for t in (x, gamma, beta)]
    running = ({"running_mean": torch.zeros(C, device=DEV, dtype=dtype),
                "running_var": torch.ones(C, device=DEV, dtype=dtype)} if norm == "batch" else {})
    f = _spade_fn(gpu_target.backend, norm, running)
    grad_out = torch.randn_like(x)
    _modes(run_case, gpu_target, "spade", f"{norm} {size}x{size}", mode,
           lambda: f(*leaves), leaves, grad_out, PASSES[mode] * tensor_bytes(x),
           {"norm": norm, "size": size, "B": 1, "C": C, "dtype": dtype_name}, tensor_bytes(x))


# ---------------------------------------------------------------------------------------------
# dense cross-attention


def dense_cross_attention(fx2, fc2, fc1):
    """out[n, t] = sum_j fx2[n, j] softmax_j(fc1[:, t] . fc2[:, j] / sqrt(M)): a P1 x P2 map."""
    scale = 1.0 / math.sqrt(fc1.shape[1])
    q = fc1.flatten(2).transpose(1, 2)                      # B, P1, M
    attn = torch.softmax(torch.bmm(q, fc2.flatten(2)) * scale, dim=-1)  # B, P1, P2
    out = torch.bmm(fx2.flatten(2), attn.transpose(1, 2))  # B, N, P1
    return out.view(fx2.shape[0], fx2.shape[1], *fc1.shape[2:])


DENSE_TARGETS = [bench.Target("reference", DEV)] if torch.cuda.is_available() else []


@pytest.mark.parametrize("gpu_target", DENSE_TARGETS, ids=["dense-eager"] * len(DENSE_TARGETS))
@pytest.mark.parametrize("size", SWEEP_SIZES)
@pytest.mark.parametrize("mode", ("fwd", "fwdbwd"))
def test_gpu_dense_sweep(run_case, gpu_target, mode, size):
    dtype = torch.float32
    fx2, fc2, fc1 = (torch.randn(B, c, size, size, device=DEV, dtype=dtype).requires_grad_(True)
                     for c in (N, M2, M1))
    grad_out = torch.randn(B, N, size, size, device=DEV, dtype=dtype)
    P = size * size
    maps = (2 if mode == "fwd" else 4) * B * P * P * 4  # logits + softmax (+ their gradients)
    # Probe once: the P x P maps either fit or not; a size that does not is recorded as such.
    try:
        if mode == "fwd":
            with torch.no_grad():
                dense_cross_attention(fx2, fc2, fc1)
        else:
            dense_cross_attention(fx2, fc2, fc1).backward(grad_out)
        torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        for t in (fx2, fc2, fc1):
            t.grad = None
        torch.cuda.empty_cache()
        bench.NOT_RUN.append({"op": "dense", "case": "sweep", "mode": mode, "size": size,
                              "dtype": "float32", "reason": "out of memory",
                              "maps_bytes": maps,
                              "gpu_bytes": torch.cuda.get_device_properties(DEV).total_memory})
        pytest.skip(f"dense {size}x{size} {mode}: out of memory (P x P maps {maps / 1e9:.0f} GB)")
    inp = {"fx2": fx2, "fc2": fc2, "fc1": fc1}
    _modes(run_case, gpu_target, "dense", "sweep", mode, lambda: dense_cross_attention(**inp),
           [fx2, fc2, fc1], grad_out, traffic(inp, mode),
           {"size": size, "B": B, "N": N, "M1": M1, "M2": M2, "dtype": "float32",
            "maps_bytes": maps}, tensor_bytes(grad_out))
