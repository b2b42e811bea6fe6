"""MSCA attention: every available backend against the naive einsum reference.

The docs/design.md benchmark shape: B=1, N=M1=M2=64, K=16, float32, mask and phi/psi biases present,
no spatial/channel bias; exemplar and target the same size. Three modes:
  fwd    forward only, under no_grad (inference: the reference keeps nothing for backward)
  bwd    backward only; the forward runs in the untimed per-round set-up
  fwdbwd forward then backward, as a training step sees it
plus a size sweep of square sizes for fwd and fwdbwd.

No case is marked slow: pyproject's addopts deselects `slow`, and `make bench` (which does not
override -m) must run the sweep too. The 1024 reference cases take a few seconds a round; the
whole suite stays within a few minutes on 2 cores.
"""
from __future__ import annotations

import pytest
import torch

import msca_kernels as mk

from .memory import mode_callables, tensor_bytes

B, N, M1, M2, K = 1, 64, 64, 64, 16
MAIN_SIZE = 512
SWEEP_SIZES = (64, 128, 256, 512, 1024)


def make_inputs(size: int, device: torch.device, dtype=torch.float32) -> dict:
    """Leaf tensors of one MSCA call, all requiring grad, all written (resident) on creation."""
    def leaf(t):
        return t.to(device=device, dtype=dtype).requires_grad_(True)

    return {
        "fx2": leaf(torch.randn(B, N, size, size)),
        "fc2": leaf(torch.randn(B, M2, size, size)),
        "fc1": leaf(torch.randn(B, M1, size, size)),
        # 1/sqrt(fan-in) keeps the logits O(1), so the softmaxes are neither flat nor one-hot.
        "phi_weight": leaf(torch.randn(K, N + M2) / (N + M2) ** 0.5),
        "psi_weight": leaf(torch.randn(K, M1) / M1 ** 0.5),
        "mask": leaf(torch.rand(B, K)),
        "phi_bias": leaf(0.1 * torch.randn(K)),
        "psi_bias": leaf(0.1 * torch.randn(K)),
    }


def traffic(inp: dict, mode: str) -> int:
    """Minimum bytes moved (docs/design.md section 2), from the actual shapes.

    Forward reads fx2, fc2, fc1 and writes out; backward reads fx2, fc2, fc1 and dO and writes
    dfx2, dfc2, dfc1. Weights, biases and the mask are a few KB and are left out.
    """
    big = tensor_bytes(inp["fx2"], inp["fc2"], inp["fc1"])
    out = tensor_bytes(inp["fx2"].new_empty(inp["fx2"].shape[:2] + inp["fc1"].shape[2:]))
    fwd = big + out
    bwd = 2 * big + out
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


def _run_msca(run_case, target, mode: str, size: int, case: str):
    inp = make_inputs(size, target.device)
    leaves = list(inp.values())
    grad_out = torch.randn(B, N, size, size, device=target.device)
    backend = target.backend

    def forward():
        return mk.msca_attention(**inp, backend=backend)

    setup, fn = mode_callables(mode, forward, leaves, grad_out)
    kept = {"fwd": tensor_bytes(grad_out),           # the output, same shape as dO
            "bwd": tensor_bytes(*leaves),            # the input gradients
            "fwdbwd": tensor_bytes(grad_out, *leaves)}[mode]
    run_case(target=target, op="msca", case=case, mode=mode, setup=setup, fn=fn,
             bytes_moved=traffic(inp, mode), kept_bytes=kept,
             info={"size": size, "B": B, "N": N, "M1": M1, "M2": M2, "K": K,
                   "dtype": "float32"})


@pytest.mark.parametrize("mode", ("fwd", "bwd", "fwdbwd"))
def test_msca_512(run_case, target, mode):
    _run_msca(run_case, target, mode, MAIN_SIZE, case=f"{MAIN_SIZE}x{MAIN_SIZE}")


@pytest.mark.parametrize("size", SWEEP_SIZES)
@pytest.mark.parametrize("mode", ("fwd", "fwdbwd"))
def test_msca_sweep(run_case, target, mode, size):
    _run_msca(run_case, target, mode, size, case="sweep")
