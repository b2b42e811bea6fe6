"""The CPU output pool (csrc/cpu/output_pool.cpp): big outputs of the cpu kernels are reused
across calls, never while referenced, and behave as ordinary tensors."""
import os
import subprocess
import sys

import pytest
import torch

import msca_kernels as mk

from conftest import TOL, rel_err

pytestmark = pytest.mark.skipif(not mk.available_backends()["cpu"], reason="cpu backend not built")

# 64 channels x 128 x 128 float32 = 4 MiB: the smallest output the pool takes.
B, N, M1, M2, K, S = 1, 64, 8, 8, 4, 128


def _inputs(requires_grad=False):
    g = torch.Generator().manual_seed(0)

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_(requires_grad)

    return dict(fx2=t(B, N, S, S), fc2=t(B, M2, S, S), fc1=t(B, M1, S, S),
                phi_weight=t(K, N + M2, scale=0.1), psi_weight=t(K, M1, scale=0.3))


def test_freed_output_is_reused_and_live_one_is_not():
    mk.empty_cache()
    inp = _inputs()
    first = mk.msca_attention(**inp, backend="cpu")
    ptr = first.data_ptr()
    live = mk.msca_attention(**inp, backend="cpu")
    assert live.data_ptr() != ptr  # `first` is still referenced: never handed out twice
    del first
    assert mk.cached_bytes() >= 4 * 2**20
    again = mk.msca_attention(**inp, backend="cpu")
    assert again.data_ptr() == ptr  # the freed buffer serves the next call of the same shape
    ref = mk.msca_attention(**inp, backend="reference")
    assert rel_err(again, ref) < TOL[torch.float32]
    assert torch.equal(again, live)


def test_empty_cache_releases_everything():
    out = mk.msca_attention(**_inputs(), backend="cpu")
    del out
    held = mk.cached_bytes()
    assert held > 0
    assert mk.empty_cache() == held
    assert mk.cached_bytes() == 0


def test_pooled_tensors_are_ordinary_tensors():
    inp = _inputs(requires_grad=True)
    out = mk.msca_attention(**inp, backend="cpu")
    out.sum().backward()
    g1 = inp["fx2"].grad.clone()
    out = mk.msca_attention(**inp, backend="cpu")  # accumulates into the pooled .grad
    out.sum().backward()
    assert rel_err(inp["fx2"].grad, 2 * g1) < TOL[torch.float32]
    y = out.detach()
    y.add_(1.0)
    y.resize_(2, N, S, S)  # the storage is resizable (allocated through the pool)
    assert y.shape == (2, N, S, S)
    assert torch.isfinite(y[0]).all()


def _run(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True,
                          text=True, timeout=120)


def test_pool_disabled_by_environment():
    code = (
        "import torch, msca_kernels as mk\n"
        "x = torch.randn(1, 64, 128, 128); c = torch.randn(1, 8, 128, 128)\n"
        "out = mk.msca_attention(x, c, c, torch.randn(4, 72), torch.randn(4, 8), backend='cpu')\n"
        "del out\n"
        "print(mk.memory.cache_limit_bytes(), mk.cached_bytes())\n")
    proc = _run(code, MSCA_CPU_POOL_MB="0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "0"]


def test_bad_pool_size_names_the_variable():
    code = (
        "import torch, msca_kernels as mk\n"
        "x = torch.randn(1, 64, 128, 128); c = torch.randn(1, 8, 128, 128)\n"
        "mk.msca_attention(x, c, c, torch.randn(4, 72), torch.randn(4, 8), backend='cpu')\n")
    proc = _run(code, MSCA_CPU_POOL_MB="lots")
    assert proc.returncode != 0
    assert "MSCA_CPU_POOL_MB" in proc.stderr
