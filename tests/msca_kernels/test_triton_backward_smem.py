"""The triton float32 backward at 33 <= K <= 64 needs ~200 KB of shared memory per block in
its exemplar pass (`make triton-check`: 204800-229376 B on sm_80 and sm_90): sm_90 has 227 KB,
sm_80/86/89 at most 163 KB. Such a call is refused before any backward kernel runs, with an
error naming the argument, on the GPUs that cannot take it; nothing changes where it fits."""
import pytest
import torch

import msca_kernels as mk

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

SM80, SM90 = 163 * 1024, 227 * 1024     # opt-in shared memory per block (A100, H100/H200)


def test_estimate_matches_the_compiler_at_k64():
    from msca_kernels.triton import msca as tm

    # 192 KB of staged operands; the compiler reports 200-224 KB with the position tiles
    assert tm.exemplar_backward_smem(torch.float32, "tf32x3", 64, 64, 64) == 192 * 1024
    assert tm.exemplar_backward_smem(torch.float32, "tf32x3", 64, 64, 32) == 0   # one launch
    assert tm.exemplar_backward_smem(torch.bfloat16, "tf32x3", 64, 64, 64) == 0


def test_float32_k64_refused_where_shared_memory_is_short():
    from msca_kernels.triton import msca as tm

    with pytest.raises(ValueError, match=r"phi_weight: .*float32 with K = 40 .*163 KB"):
        tm.check_backward_smem(torch.float32, "tf32x3", 64, 64, 64, 40, SM80)
    tm.check_backward_smem(torch.float32, "tf32x3", 64, 64, 64, 40, SM90)      # H100/H200
    tm.check_backward_smem(torch.float32, "tf32x3", 64, 64, 32, 32, SM80)      # K <= 32
    tm.check_backward_smem(torch.float16, "tf32x3", 64, 64, 64, 64, SM80)      # 16-bit


def test_the_backward_host_asks_before_launching(monkeypatch):
    """The host function consults the device's limit for CUDA tensors and refuses before its
    first launch (a recorder stands in for the launch; fake CUDA tensors are not needed: the
    check is reached through a CPU tensor that claims to be on CUDA)."""
    from msca_kernels.triton import _common, msca as tm

    launches = []
    monkeypatch.setattr(_common, "launch", lambda *a, **k: launches.append(a))
    monkeypatch.setattr(_common, "smem_optin", lambda index: SM80)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    B, N, M, K, P = 1, 64, 64, 64, 16
    r = lambda *s: torch.randn(*s)  # noqa: E731
    fx2, fc2, fc1 = r(B, N, P), r(B, M, P), r(B, M, P)
    with pytest.raises(ValueError, match="phi_weight"):
        tm.triton_msca_bwd(r(B, N, P), fx2, fc2, fc1, r(K, N + M), r(K), r(K, M), r(K),
                           torch.ones(B, K), None, None, r(B, N, K), r(B, K), False, False)
    assert launches == []
