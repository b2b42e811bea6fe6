import os

import torch

# Without a CUDA GPU the triton backend runs on CPU tensors in Triton's interpreter, which reads
# TRITON_INTERPRET once, when triton is first imported: so here, before msca_kernels (whose
# backend check imports triton). The cpu and reference backends never touch triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import msca_kernels as mk  # noqa: E402

# Backends compared against `reference`. triton on CPU tensors needs TRITON_INTERPRET=1 (set by
# the test run before triton is imported); cuda and GPU triton need a GPU.
KERNEL_BACKENDS = ("cpu", "cuda", "triton")


def device_for(backend: str) -> torch.device:
    if backend == "cpu":
        return torch.device("cpu")
    if backend == "cuda":
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtypes_for(backend: str):
    dev = device_for(backend)
    if dev.type == "cpu":
        return (torch.float32, torch.float64) if backend == "cpu" else (torch.float32,)
    return (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(params=KERNEL_BACKENDS)
def backend(request):
    status = mk.available_backends()[request.param]
    if not status:
        pytest.skip(f"{request.param}: {status.reason}")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero)."""
    out, ref = out.double(), ref.double()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
