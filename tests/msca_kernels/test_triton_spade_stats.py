"""Triton SPADE statistics (one read of x per chunk, sums around a shift) against float64.

The kernel sums x - k and (x - k)^2 around k, the mean of its chunk's first block. These tests
pin what that must keep: a mean far above the spread (x = 1e4 + noise, where a plain float32
E[x^2] - E[x]^2 loses every digit of the variance), a first block far from the rest of its
chunk (the shift's worst case), and chunks that split a group (the cross-chunk merge). The
reference is float64 statistics of the same (rounded) input; the kernels accumulate in float32
whatever the input dtype, so the bounds are float32's.
"""
import pytest
import torch

import msca_kernels as mk
from conftest import device_for, dtypes_for

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

EPS32 = torch.finfo(torch.float32).eps


def _tolerances(ref_mean, ref_rstd):
    """(mean error in standard deviations, rstd relative error) allowed per group.

    The chunk means reach the cross-chunk merge as float32 numbers, each off by up to
    eps * |mean| / 2, i.e. eps * |mean| / std / 2 standard deviations: an error no float32
    mean escapes (the apply pass subtracts a float32 mean too). The merge weighs a chunk mean's
    error by the chunk's own deviation from the mean, ~ std / sqrt(chunk length), chunks being
    >= 128 values. Plus a few ulps of summation. A plain E[x^2] - E[x]^2 is off by ~1 here.
    """
    ratio = ref_mean.abs() * ref_rstd  # |mean| / std
    return 1e-5 + EPS32 * ratio, 2e-5 + 2 * EPS32 * ratio / 128 ** 0.5


def _stats(x: torch.Tensor, instance: bool):
    from msca_kernels.triton import spade as ts

    B, C, H, W = x.shape
    flat = x.reshape(B, C, H * W)
    zeros = torch.zeros_like(flat)
    _, mean, rstd = ts.spade_norm_forward(flat, zeros, zeros, None, None, instance, 0.0)
    return mean.double().cpu(), rstd.double().cpu()


def _reference(x: torch.Tensor, instance: bool):
    x = x.double().cpu()
    dims = (2, 3) if instance else (0, 2, 3)
    return x.mean(dim=dims), x.var(dim=dims, unbiased=False).rsqrt()


def _assert_stats_close(x, instance):
    mean, rstd = _stats(x, instance)
    ref_mean, ref_rstd = _reference(x, instance)
    mean_tol, rstd_tol = _tolerances(ref_mean, ref_rstd)
    mean_err = (mean - ref_mean).abs() * ref_rstd  # in standard deviations
    rstd_err = (rstd - ref_rstd).abs() / ref_rstd
    assert (mean_err < mean_tol).all(), f"mean off by {mean_err.max():.3g} std"
    assert (rstd_err < rstd_tol).all(), f"rstd relative error {rstd_err.max():.3g}"


@pytest.mark.parametrize("instance", [False, True], ids=["batch", "instance"])
@pytest.mark.parametrize("std", [1.0, 0.05])
def test_large_mean_small_spread(instance, std):
    dev = device_for("triton")
    g = torch.Generator().manual_seed(1)
    # groups of 4 * 1480 (batch) / 1480 (instance) values: several chunks of several blocks
    x64 = 1e4 + std * torch.randn(4, 3, 40, 37, generator=g, dtype=torch.float64)
    for dtype in dtypes_for("triton"):
        x = x64.to(dtype)
        if (x.double().var(dim=(2, 3)) == 0).any():  # spread below the dtype's step at 1e4
            continue
        _assert_stats_close(x.to(dev), instance)


@pytest.mark.parametrize("instance", [False, True], ids=["batch", "instance"])
def test_first_block_far_from_the_rest(instance):
    # every group starts with 256 values (at least the first block, whatever the config) at
    # 1e3, the rest near 0: the shift k sits as far from the chunk's mean as it can
    g = torch.Generator().manual_seed(2)
    x = 0.01 * torch.randn(2, 2, 32, 32, generator=g)
    x[:, :, :8, :] += 1e3
    _assert_stats_close(x.to(device_for("triton")), instance)


def test_plain_float32_moments_would_fail_here():
    # the large-mean case is a real test: E[x^2] - E[x]^2 in float32 is far outside the bound
    g = torch.Generator().manual_seed(1)
    x = (1e4 + torch.randn(4, 3, 40, 37, generator=g, dtype=torch.float64)).float()
    naive_var = (x * x).mean(dim=(0, 2, 3)) - x.mean(dim=(0, 2, 3)) ** 2
    ref_mean, ref_rstd = _reference(x, instance=False)
    err = (naive_var.double().clamp_min(1e-30).rsqrt() - ref_rstd).abs() / ref_rstd
    assert (err > 10 * _tolerances(ref_mean, ref_rstd)[1]).all()
