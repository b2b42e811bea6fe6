"""SPADE denormalisation: the fused backend(s) against the unfused PyTorch composition
(msca_kernels.reference.spade_norm: F.batch_norm / F.instance_norm, then (1 + gamma), multiply,
add), at B=1, C=64, 512x512, float32, batch and instance statistics, fwd and fwdbwd.

Batch mode passes running statistics, as nn.SPADE's BatchNorm2d(affine=False) does in
training; the update is C values and costs nothing measurable.
"""
from __future__ import annotations

import pytest
import torch

import msca_kernels as mk
from msca_kernels import _ext

from .memory import mode_callables, tensor_bytes

B, C, SIZE = 1, 64, 512

# Tensor-sized passes of the fused design (docs/design.md section 3), counted in x-sized tensors:
#   forward : statistics pass reads x (1); apply pass reads x, gamma, beta, writes out (4)
#   backward: reduction pass reads dy, gamma, x (3); elementwise pass reads dy, gamma, x and
#             writes dx, dgamma (5); dbeta is dy itself, nothing written
# Compulsory traffic in x-sized tensors: every input read once, every output written once.
# fwd reads x, gamma, beta and writes out; bwd reads dy, gamma, x and writes dx, dgamma
# (dbeta = dy, no new bytes). The kernels make two passes over x, but each channel group is
# still in cache for the second, so the bytes that reach DRAM are close to these.
PASSES = {"fwd": 4, "fwdbwd": 4 + 5}


@pytest.mark.parametrize("norm", ("batch", "instance"))
@pytest.mark.parametrize("mode", ("fwd", "fwdbwd"))
def test_spade_512(run_case, target, mode, norm):
    dev = target.device
    # available_backends() judges the C++ backends by their MSCA kernel; the SPADE kernel is
    # a separate source file and may be missing from a build that has MSCA.
    if target.backend in ("cpu", "cuda") and not _ext.has_kernel("spade_norm_fwd",
                                                                 dev.type.upper()):
        pytest.skip(f"{target.backend}: the extension has no SPADE kernel for {dev.type}")
    x, gamma, beta = (torch.randn(B, C, SIZE, SIZE, device=dev).requires_grad_(True)
                      for _ in range(3))
    with torch.no_grad():
        gamma.mul_(0.1)  # modulation outputs are small around 0: (1 + gamma) near 1
        beta.mul_(0.1)
    running = {}
    if norm == "batch":
        running = {"running_mean": torch.zeros(C, device=dev),
                   "running_var": torch.ones(C, device=dev)}
    grad_out = torch.randn_like(x)
    leaves = (x, gamma, beta)
    backend = target.backend

    def forward():
        return mk.spade_norm(x, gamma, beta, mode=norm, training=True, backend=backend, **running)

    setup, fn = mode_callables(mode, forward, leaves, grad_out)
    if mode == "fwd":
        kept = tensor_bytes(x)
    else:
        def kept():
            # out plus the gradients that are new memory. A fused backward may hand dy itself
            # back as dbeta (docs/design.md: "dbeta = dy"), and then beta.grad shares dy's storage
            # and costs nothing; counting it anyway would make "peak beyond" negative.
            dy = grad_out.untyped_storage().data_ptr()
            return tensor_bytes(x) + sum(tensor_bytes(t.grad) for t in leaves
                                         if t.grad is not None
                                         and t.grad.untyped_storage().data_ptr() != dy)

    run_case(target=target, op="spade", case=f"{norm} {SIZE}x{SIZE}", mode=mode, setup=setup,
             fn=fn, bytes_moved=PASSES[mode] * tensor_bytes(x), kept_bytes=kept,
             info={"norm": norm, "size": SIZE, "B": B, "C": C, "dtype": "float32"})
