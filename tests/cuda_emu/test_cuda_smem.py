"""Dynamic shared memory of the MSCA tile kernels, as launched (issue 12's CUDA red flags).

Each kernel reserves only the buffers it touches. The emulator records the launch's size and
gives a kernel exactly that much (a read past it faults, see include/emu_runtime.h), so the
numerical tests of test_cuda_emulated.py show the sizes are not too small; these show what
they are, against the single layout the four kernels used to share, and that a GPU with less
shared memory (99 KiB per block on sm_86/89/120) gets a clear error naming K and the limit.
"""
from __future__ import annotations

import pytest
import torch

import emu

kTile, kLd, kCC = 64, 68, 32
ACC = {torch.float32: 4, torch.float64: 8, torch.float16: 4, torch.bfloat16: 4}
DTYPES = list(ACC)
SM86_OPTIN = 99 * 1024      # per-block opt-in maximum of sm_86/89/120
SM90_OPTIN = 227 * 1024     # the emulator's default (sm_90)


def dims(K):
    # (B, N, M2, M1, K, P2, P1); sizes do not matter for shared memory
    return (1, 64, 64, 64, K, 4096, 4096)


def before_bytes(K, acc):
    """The one layout all four tile kernels used: S, D, X, W1, W2 and the softmax state."""
    return (2 * K * kLd + kCC * kLd + 2 * kCC * K + (3 * K + 3) // 4 * 4) * acc


def expected_bytes(K, acc):
    """What each kernel touches: logits S (K x kLd), D (backward), one chunk of input rows X,
    weight chunks W1 and W2 (kCC x K, W2 in the exemplar backward), the online softmax's
    m, l and scale (3K, forward pass 1)."""
    S = D = K * kLd
    X, W = kCC * kLd, kCC * K
    st = (3 * K + 3) // 4 * 4
    return {"fwd_exemplar_kernel": (S + X + W + st) * acc,
            "fwd_target_kernel": (S + X + W) * acc,
            "bwd_target_kernel": (S + D + X + W) * acc,
            "bwd_exemplar_kernel": (S + D + X + 2 * W) * acc}


@pytest.fixture(scope="module")
def E():
    return emu.Emulator()


def launched_smem(E, K, dtype, backward=True):
    E.launch_smem.clear()
    with emu.DryRun(E) as dry:
        dry.msca(dims(K), dtype, backward=backward)
    return {name: b for (name, dt), b in E.launch_smem.items() if b > 0}


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).replace("torch.", "") for d in DTYPES])
@pytest.mark.parametrize("K", [8, 16, 64])
def test_each_kernel_reserves_what_it_uses(E, K, dtype):
    acc = ACC[dtype]
    got = launched_smem(E, K, dtype)
    want = expected_bytes(K, acc)
    before = before_bytes(K, acc)
    print(f"\nK={K} {dtype}: before {before} B for every tile kernel; now "
          + ", ".join(f"{k.replace('_kernel', '')} {v} B" for k, v in sorted(got.items())))
    assert got == want
    for name in ("fwd_exemplar_kernel", "fwd_target_kernel"):
        assert got[name] < before, name
    assert max(got.values()) <= before
    if acc == 4:
        # the forward needs no opt-in beyond the default 48 KiB in 32-bit accumulation (K = 64
        # float32 used to ask for 60672 bytes, which also halves the blocks per SM)
        assert max(got["fwd_exemplar_kernel"], got["fwd_target_kernel"]) <= 48 * 1024
    assert E.msca_smem_bytes(K, acc, backward=False) == max(
        got["fwd_exemplar_kernel"], got["fwd_target_kernel"])
    assert E.msca_smem_bytes(K, acc, backward=True) == max(
        got["bwd_target_kernel"], got["bwd_exemplar_kernel"])


def test_k64_float32_forward_figures(E):
    # the numbers: 60.6 KB before, ~35 KB now
    got = launched_smem(E, 64, torch.float32, backward=False)
    assert before_bytes(64, 4) == 60672
    assert got["fwd_exemplar_kernel"] == 35072 and got["fwd_target_kernel"] == 34304


def test_largest_k_per_shared_memory_limit(E):
    # float64: the backward's exemplar kernel needs 8 * (200 K + 2176) bytes
    assert E.msca_max_k(8, SM86_OPTIN, backward=True) == 52
    assert E.msca_max_k(8, SM86_OPTIN, backward=False) == 64
    assert E.msca_max_k(4, SM86_OPTIN, backward=True) == 64
    assert E.msca_max_k(8, SM90_OPTIN, backward=True) == 64
    assert E.msca_smem_bytes(52, 8, True) <= SM86_OPTIN < E.msca_smem_bytes(53, 8, True)


def test_float64_large_k_on_a_99k_gpu(E):
    """sm_86-like limit: the launches that fit run, the first that does not is refused before
    anything is launched, and the message the torch binding raises names K and the limit."""
    E.set_max_smem_optin(SM86_OPTIN)
    try:
        launched_smem(E, 52, torch.float64)                         # fits
        launched_smem(E, 64, torch.float64, backward=False)         # the forward fits
        E.launch_smem.clear()
        with emu.DryRun(E) as dry, pytest.raises(emu.EmulatorError, match="cudaError 1"):
            dry.msca(dims(53), torch.float64)
        assert set(E.launch_smem) <= {("fwd_exemplar_kernel", "float64"),
                                      ("fwd_merge_kernel", "float64"),
                                      ("fwd_target_kernel", "float64")}
    finally:
        E.set_max_smem_optin(SM90_OPTIN)
    msg = E.msca_smem_check(64, 8, SM86_OPTIN, backward=True)
    assert msg.startswith("phi_weight: K = 64 attention maps in float64 need 119808 bytes")
    assert f"more than the {SM86_OPTIN}" in msg and "expected K <= 52" in msg
    assert E.msca_smem_check(52, 8, SM86_OPTIN, backward=True) == ""
    assert E.msca_smem_check(64, 8, SM86_OPTIN, backward=False) == ""


def test_forward_checks_the_backward_when_one_follows(E):
    """Training in float64 with K = 64 on a 99 KiB GPU stops at the first forward, with the
    backward's message; a forward alone (evaluation) still runs."""
    backward_msg = E.msca_smem_check(64, 8, SM86_OPTIN, backward=True)
    assert E.msca_fwd_smem_check(64, 8, SM86_OPTIN, backward_follows=True) == backward_msg
    assert "in the backward kernels" in backward_msg
    assert E.msca_fwd_smem_check(64, 8, SM86_OPTIN, backward_follows=False) == ""
    assert E.msca_fwd_smem_check(52, 8, SM86_OPTIN, backward_follows=True) == ""
    assert E.msca_fwd_smem_check(64, 8, SM90_OPTIN, backward_follows=True) == ""
    assert E.msca_fwd_smem_check(64, 4, SM86_OPTIN, backward_follows=True) == ""
    # a forward that does not fit is reported as the forward's, backward or not
    tiny = 16 * 1024
    for follows in (False, True):
        msg = E.msca_fwd_smem_check(64, 4, tiny, backward_follows=follows)
        assert msg == E.msca_smem_check(64, 4, tiny, backward=False)
        assert "in the forward kernels" in msg


# The torch binding (csrc/cuda/msca_cuda_bindings.cpp, backward_follows) cannot run here; it
# reads autograd's thread-local modes inside the op. These are the modes it relies on, seen by
# an op registered the way msca_kernels registers msca_fwd (torch.library.register_autograd).
_seen = []


@pytest.fixture(scope="module")
def mode_probe():
    lib = torch.library.Library("cuda_emu_probe", "FRAGMENT")
    lib.define("probe(Tensor x) -> Tensor")

    def probe_cpu(x):
        _seen.append(dict(grad=torch.is_grad_enabled(), fw_grad=torch._C._is_fwd_grad_enabled(),
                          inference=torch.is_inference_mode_enabled(),
                          requires_grad=x.requires_grad))
        return x.clone()

    lib.impl("probe", probe_cpu, "CPU")
    torch.library.register_autograd("cuda_emu_probe::probe", lambda ctx, g: g)
    yield torch.ops.cuda_emu_probe.probe
    lib._destroy()


def binding_rule(seen) -> bool:
    """backward_follows in msca_cuda_bindings.cpp, on the modes the op saw."""
    if seen["grad"] or seen["inference"] or seen["fw_grad"]:
        return False
    return seen["requires_grad"]


def test_autograd_modes_the_binding_relies_on(mode_probe):
    w = torch.ones(3, requires_grad=True)
    cases = {}
    _seen.clear()
    mode_probe(w)
    cases["training"] = _seen[-1]
    with torch.no_grad():
        mode_probe(w)
    cases["no_grad, parameter requires grad"] = _seen[-1]
    with torch.inference_mode():
        mode_probe(w)
    cases["inference_mode"] = _seen[-1]
    mode_probe(torch.ones(3))
    cases["nothing requires grad"] = _seen[-1]
    got = {name: binding_rule(seen) for name, seen in cases.items()}
    assert got == {"training": True, "no_grad, parameter requires grad": False,
                   "inference_mode": False, "nothing requires grad": False}, cases
