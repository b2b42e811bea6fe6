"""Triton launch grids, the device guard and the launch path, pinned without a GPU.

The host functions run on `meta` tensors (no memory, any size) with the launch replaced by a
recorder, as if on a GPU with 132 SMs; every grid of every launch, for every tile
configuration the autotuner could pick, must fit the CUDA limits (axis 0 < 2^31, axes 1 and 2
<= 65535) for target maps up to 4096x4096 and tensors of more than 2^31 elements. The 64-bit
offsets themselves are not pinned here: `make gpu-check` runs > 2^31-element cases; `make
triton-check` counts the 32-bit tt.addptr offsets of each compiled kernel.
"""
import contextlib

import pytest
import torch

import msca_kernels as mk

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

MAX0, MAX12 = 2**31 - 1, 65535
BLOCKS = (16, 32, 64, 128)  # every BLOCK_T / BLOCK_P option of the autotuner


@pytest.fixture
def recorded(monkeypatch):
    from msca_kernels.triton import _common

    launches = []
    monkeypatch.setattr(_common, "launch",
                        lambda kernel, grid, *a, **meta: launches.append((kernel, grid, meta)))
    monkeypatch.setattr(_common, "num_programs",
                        lambda device, work, per_sm=2: max(1, min(work, per_sm * 132)))
    return launches


def grids(launches):
    for kernel, grid, meta in launches:
        name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None),
                                                            "__name__", str(kernel))
        if callable(grid):
            for b in BLOCKS:
                yield name, grid(dict(meta, BLOCK_T=b, BLOCK_P=b, BLOCK=b * 64))
        else:
            yield name, grid


def assert_within_limits(launches):
    seen = 0
    for name, grid in grids(launches):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        assert 1 <= grid[0] <= MAX0 and 1 <= grid[1] <= MAX12 and 1 <= grid[2] <= MAX12, (
            name, grid)
        seen += 1
    assert seen > 0


def meta(*shape, dtype=torch.float16):
    return torch.empty(*shape, device="meta", dtype=dtype)


@pytest.mark.parametrize("B,hw", [(1, 4096), (2, 4096), (9, 2048)], ids=str)
def test_msca_grids_within_limits(recorded, B, hw):
    from msca_kernels.triton import msca as tm

    N = M1 = M2 = 64
    K = 16
    P = hw * hw
    fx2, fc2, fc1 = meta(B, N, P), meta(B, M2, P), meta(B, M1, P)
    phi, psi, pb, qb, mask = meta(K, N + M2), meta(K, M1), meta(K), meta(K), meta(B, K)
    out, V, lse = tm.triton_msca_fwd(fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None)
    tm.triton_msca_bwd(out, fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None, V, lse,
                       False, False)
    assert_within_limits(recorded)
    # the target pass has one program per 16-position tile at the smallest option: 2^20 at 4096^2
    assert any(g[0] >= P // 128 for _, g in grids(recorded))


def test_msca_batch_over_grid_limit_is_a_value_error(recorded):
    from msca_kernels.triton import msca as tm

    B, N, K, P = MAX12 + 1, 4, 2, 16
    args = (meta(B, N, P), meta(B, N, P), meta(B, N, P), meta(K, 2 * N), meta(K), meta(K, N),
            meta(K), meta(B, K), None, None)
    with pytest.raises(ValueError, match="fx2: the triton backend takes at most 65535"):
        tm.triton_msca_fwd(*args)


@pytest.mark.parametrize("instance", [False, True])
def test_spade_grids_within_limits_over_2_31_elements(recorded, instance):
    from msca_kernels.triton import spade as ts

    x = meta(16, 256, 1024 * 1024)  # 2^32 elements
    out, mean, rstd = ts.triton_spade_norm_fwd(x, x, x, None, None, instance, 1e-5)
    ts.triton_spade_norm_bwd(x, x, x, mean, rstd, instance, True)
    assert_within_limits(recorded)


def test_launch_runs_on_the_tensors_device(monkeypatch):
    # Triton launches on the current CUDA device; a tensor on cuda:1 while cuda:0 is current
    # must be launched under a guard for cuda:1.
    from msca_kernels.triton import _common

    entered = []

    @contextlib.contextmanager
    def fake_device(dev):
        entered.append(torch.device(dev))
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with _common.device_guard(torch.device("cuda", 1)):
        pass
    assert entered == [torch.device("cuda", 1)]
    with _common.device_guard(torch.device("cpu")):
        pass
    assert len(entered) == 1

    # and launch() guards every launch with the device of its first tensor argument
    calls = []

    class FakeLauncher:
        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append(grid)

    t = torch.empty(3)
    monkeypatch.setattr(_common, "wrap_triton", lambda kernel: FakeLauncher())
    monkeypatch.setattr(_common, "device_guard",
                        lambda dev: entered.append(dev) or contextlib.nullcontext())
    _common.launch(object(), (1,), 5, t, t)
    assert calls == [(1,)] and entered[-1] == t.device


def test_triton_check_counts_32bit_offsets():
    # aot_check (make triton-check) reports the 32-bit tt.addptr offsets of each compiled
    # kernel; the samples are TTIR as triton 3 prints it.
    from msca_kernels.triton._ttir import offsets_32bit

    i32 = "%3 = tt.addptr %2, %4 : tensor<64x!tt.ptr<f32>>, tensor<64xi32> loc(#loc4)"
    i64 = "%3 = tt.addptr %2, %4 : tensor<64x16x!tt.ptr<f16>>, tensor<64x16xi64> loc(#loc4)"
    scalar32 = "%7 = tt.addptr %arg0, %6 : !tt.ptr<f32>, i32"
    found = offsets_32bit("\n".join([i64, "  " + i32, scalar32]))
    assert [f.split("tt.addptr")[1] for f in found] == [
        i32.split("tt.addptr")[1], scalar32.split("tt.addptr")[1]]
    assert offsets_32bit(i64) == []
