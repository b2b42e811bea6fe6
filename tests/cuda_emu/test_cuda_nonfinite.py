"""NaN in, NaN out for the raw CUDA kernels (issue 13, item 1), executed by the CPU emulator.

A NaN, +inf or -inf goes into each input in turn (x, labels, weights, biases, mask for MSCA;
x, gamma, beta and the running statistics for SPADE). The forward outputs must be NaN / +-inf
exactly where the float64 `reference` has them and agree with it elsewhere. The gradients
must not hide a non-finite value: wherever the reference gradient is NaN or +-inf, the
kernels' is NaN or +-inf too. Not more is asked of them, for two reasons: the reference's
softmax turns a NaN or +inf logit into a row of raw exp() values next to the NaN (finite
numbers without meaning) where the kernels give NaN; and the softmax backward's
sum_j alpha dalpha is computed as sum_n dV V (equal in exact arithmetic), so with an infinite
dV (an infinite mask) a sum of infinities of mixed sign may be NaN in one and -inf in the
other.

The shapes put several exemplar tiles on two splits, with partial last tiles, so a special
value reaches the online softmax's rescaling, the merge of the splits and the tile padding.
"""
from __future__ import annotations

import math

import pytest
import torch

import emu
from msca_kernels import reference as R

SPECIALS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}
# (B, N, M2, M1, K, H2, W2, H1, W1, sm_count): 135 exemplar positions = 3 tiles over 2 splits
# (sm_count 2, B 2), 81 target positions = 2 tiles, the last one partial; K % 8 != 0.
CASE = (2, 5, 3, 4, 3, 9, 15, 9, 9, 2)
MSCA_INPUTS = ("fx2", "fc2", "fc1", "phi_weight", "phi_bias", "psi_weight", "psi_bias", "mask",
               "spatial_bias", "channel_bias")
# Relative error of the finite values against float64.
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 5e-2}


@pytest.fixture(scope="module")
def E():
    return emu.Emulator()


def msca_inputs(dtype):
    B, N, M2, M1, K, H2, W2, H1, W1, _ = CASE
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    t = dict(fx2=r(B, N, H2, W2), fc2=r(B, M2, H2, W2), fc1=r(B, M1, H1, W1),
             phi_weight=r(K, N + M2) * 0.5, psi_weight=r(K, M1) * 0.5,
             mask=torch.rand(B, K, generator=g, dtype=torch.float64) * 0.9 + 0.1,
             phi_bias=r(K), psi_bias=r(K), spatial_bias=r(B, K, H2, W2),
             channel_bias=r(B, K, H1, W1))
    return {k: v.to(dtype) for k, v in t.items()}


def reference_fwd(t):
    """out and the un-masked V of `reference`, in float64 from the (rounded) inputs."""
    x = {k: v.double() for k, v in t.items()}
    out = R.msca_attention(**x)
    maps = {k: v for k, v in x.items() if k != "mask"}
    alpha, _ = R.msca_attention_maps(**maps)
    V = torch.einsum("bnj,bkj->bnk", x["fx2"].flatten(2), alpha.flatten(2))
    return out, V


def reference_grads(t, grad_out):
    leaves = {k: v.double().requires_grad_(True) for k, v in t.items()}
    R.msca_attention(**leaves).backward(grad_out.double())
    return {k: v.grad for k, v in leaves.items()}


def assert_same_nonfinite(got, ref, tol, what):
    got, ref = got.double().reshape(ref.shape), ref.double()
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), (
        f"{what}: NaN at {int(torch.isnan(got).sum())} places, reference at "
        f"{int(torch.isnan(ref).sum())}")
    assert torch.equal(torch.isinf(got), torch.isinf(ref)), (
        f"{what}: inf at {int(torch.isinf(got).sum())} places, reference at "
        f"{int(torch.isinf(ref).sum())}")
    assert torch.equal(got[torch.isinf(got)], ref[torch.isinf(ref)]), f"{what}: inf sign differs"
    fin = torch.isfinite(ref)
    den = max(ref[fin].norm().item(), 1e-30)
    err = (got[fin] - ref[fin]).norm().item() / den
    assert err < tol, f"{what}: finite values off by {err:.2e}"


def assert_no_hidden_nonfinite(got, ref, what):
    got = got.reshape(ref.shape)
    hidden = ~torch.isfinite(ref) & torch.isfinite(got)
    assert not hidden.any(), (
        f"{what}: finite at {int(hidden.sum())} places where reference is NaN or inf")


# (where, dtype): both positions in float32, the last one in the other dtypes
PLACES = [("first", torch.float32), ("last", torch.float32), ("last", torch.float64),
          ("last", torch.bfloat16)]


@pytest.mark.parametrize("where,dtype", PLACES,
                         ids=[f"{w}-{str(d).replace('torch.', '')}" for w, d in PLACES])
@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("name", MSCA_INPUTS)
def test_msca_special_value_in_each_input(E, name, special, where, dtype):
    t = msca_inputs(dtype)
    flat = t[name].view(-1)
    # "last": the last exemplar/target position of the last batch item, i.e. the partial last
    # tile of the second split, for the inputs that have positions
    flat[1 if where == "first" else flat.numel() - 1] = SPECIALS[special]
    ref_out, ref_V = reference_fwd(t)
    out, V, lse = E.msca_fwd(t, CASE[-1])
    what = f"{special} in {name} ({where})"
    assert_same_nonfinite(out, ref_out, TOL[dtype], f"out, {what}")
    assert_same_nonfinite(V, ref_V, TOL[dtype], f"V, {what}")
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    grads = E.msca_bwd(t, grad_out, V, lse, CASE[-1])
    ref_grads = reference_grads(t, grad_out.reshape(ref_out.shape))
    for k, ref in ref_grads.items():
        assert_no_hidden_nonfinite(grads[k], ref, f"d{k}, {what}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_msca_nan_among_minus_inf_logits(E, dtype):
    """A spatial row and a channel column switched off by -inf biases but for one NaN: the NaN
    must win (every maximum is -inf, the path that zeroes a row), in one split only."""
    t = msca_inputs(dtype)
    t["spatial_bias"][0, 1] = -math.inf
    t["spatial_bias"][0, 1, 8, 14] = math.nan  # the last tile, the second split
    t["channel_bias"][1, :, 2, 3] = -math.inf
    t["channel_bias"][1, 2, 2, 3] = math.nan
    ref_out, ref_V = reference_fwd(t)
    out, V, lse = E.msca_fwd(t, CASE[-1])
    assert torch.isnan(ref_out[0]).all() and torch.isnan(ref_out[1, :, 2, 3]).all()
    assert_same_nonfinite(out, ref_out, TOL[dtype], "out")
    assert_same_nonfinite(V, ref_V, TOL[dtype], "V")
    assert torch.isnan(lse[0, 1])


def test_msca_all_minus_inf_row_still_attends_to_nothing(E):
    t = msca_inputs(torch.float32)
    t["spatial_bias"][0, 1] = -math.inf
    t["channel_bias"][1, :, 2, 3] = -math.inf
    ref_out, ref_V = reference_fwd(t)
    out, V, lse = E.msca_fwd(t, CASE[-1])
    assert torch.isfinite(out).all() and torch.isneginf(lse[0, 1])
    assert_same_nonfinite(out, ref_out, TOL[torch.float32], "out")
    assert_same_nonfinite(V, ref_V, TOL[torch.float32], "V")


# ---- SPADE ----------------------------------------------------------------------------------

SPADE_SHAPE = (2, 3, 4, 5)


def spade_inputs(dtype):
    g = torch.Generator().manual_seed(3)
    return {k: torch.randn(*SPADE_SHAPE, generator=g, dtype=torch.float64).to(dtype)
            for k in ("x", "gamma", "beta", "dy")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16],
                         ids=["float32", "float64", "float16"])
@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("name", ["x", "gamma", "beta"])
@pytest.mark.parametrize("mode", ["batch", "instance"])
def test_spade_special_value_in_each_input(E, mode, name, special, dtype):
    t = spade_inputs(dtype)
    t[name].view(-1)[7] = SPECIALS[special]
    leaves = {k: t[k].double().requires_grad_(True) for k in ("x", "gamma", "beta")}
    ref = R.spade_norm(**leaves, mode=mode)
    ref.backward(t["dy"].double())
    B, C = SPADE_SHAPE[:2]
    flat = {k: v.reshape(B, C, -1).contiguous() for k, v in t.items()}
    inst = mode == "instance"
    out, mean, rstd = E.spade_fwd(flat["x"], flat["gamma"], flat["beta"], inst)
    what = f"{mode}, {special} in {name}"
    tol = 1e-2 if dtype == torch.float16 else 1e-4
    assert_same_nonfinite(out, ref.detach(), tol, f"out, {what}")
    dx, dgamma = E.spade_bwd(flat["dy"], flat["x"], flat["gamma"], mean, rstd, inst, True)
    assert_no_hidden_nonfinite(dx, leaves["x"].grad, f"dx, {what}")
    assert_no_hidden_nonfinite(dgamma, leaves["gamma"].grad, f"dgamma, {what}")


@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("stat", ["mean", "var"])
def test_spade_running_statistics_special(E, stat, special):
    """Eval mode: a non-finite running mean or variance. out = xhat * (1 + gamma) + beta as the
    reference computes it: with an infinite mean, xhat is infinite, and xhat + xhat * gamma
    would give inf - inf = NaN where the reference has +-inf (gamma < -1)."""
    t = spade_inputs(torch.float32)
    C = SPADE_SHAPE[1]
    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    (rm if stat == "mean" else rv)[1] = SPECIALS[special]
    t["gamma"][:, 1] = -3.0  # (1 + gamma) < 0 in the channel with the special value
    ref = R.spade_norm(t["x"].double(), t["gamma"].double(), t["beta"].double(),
                       running_mean=rm.clone(), running_var=rv.clone(), training=False)
    mean, rstd = rm, 1 / torch.sqrt(rv + 1e-5)
    B = SPADE_SHAPE[0]
    flat = {k: v.reshape(B, C, -1).contiguous() for k, v in t.items()}
    out, _, _ = E.spade_fwd(flat["x"], flat["gamma"], flat["beta"], False, mean=mean, rstd=rstd)
    assert_same_nonfinite(out, ref, 1e-4, f"running {stat} {special}")
    dx, dgamma = E.spade_bwd(flat["dy"], flat["x"], flat["gamma"], mean.float(), rstd.float(),
                             False, False)
    leaves = [v.double().requires_grad_(True) for v in (t["x"], t["gamma"])]
    R.spade_norm(leaves[0], leaves[1], t["beta"].double(), running_mean=rm.clone(),
                 running_var=rv.clone(), training=False).backward(t["dy"].double())
    assert_no_hidden_nonfinite(dx, leaves[0].grad, "dx")
    assert_no_hidden_nonfinite(dgamma, leaves[1].grad, "dgamma")
