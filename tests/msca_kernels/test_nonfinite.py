"""NaN in, NaN out: every backend puts NaN (and +-inf) in the output exactly where `reference`
does, for a NaN or +-inf in each input in turn, and agrees with it on the finite values.

The kernels used to hide NaN in the spatial logits: their online softmax's max drops NaN, and
the chunk merge read a NaN sum as "attends to nothing", so one NaN phi weight gave a finite,
normal-looking output.
"""
import math

import pytest
import torch

import msca_kernels as mk

from conftest import device_for

B, N, M2, M1, K = 2, 5, 3, 4, 3
H2, W2, H1, W1 = 4, 5, 3, 3

MSCA_INPUTS = ("fx2", "fc2", "fc1", "phi_weight", "phi_bias", "psi_weight", "psi_bias",
               "spatial_bias", "channel_bias")
SPECIALS = {"nan": math.nan, "+inf": math.inf, "-inf": -math.inf}


def msca_inputs(h2=H2, w2=W2, device="cpu"):
    t = dict(fx2=torch.randn(B, N, h2, w2), fc2=torch.randn(B, M2, h2, w2),
             fc1=torch.randn(B, M1, H1, W1), phi_weight=torch.randn(K, N + M2) * 0.5,
             psi_weight=torch.randn(K, M1) * 0.5, mask=torch.rand(B, K),
             phi_bias=torch.randn(K), psi_bias=torch.randn(K),
             spatial_bias=torch.randn(B, K, h2, w2), channel_bias=torch.randn(B, K, H1, W1))
    return {k: v.to(device) for k, v in t.items()}


def assert_same_nonfinite(out, ref, what):
    out, ref = out.detach().cpu().double(), ref.detach().cpu().double()
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (
        f"{what}: NaN at {int(torch.isnan(out).sum())} places, reference at "
        f"{int(torch.isnan(ref).sum())}")
    assert torch.equal(torch.isinf(out), torch.isinf(ref)), f"{what}: inf differs"
    assert torch.equal(out[torch.isinf(out)], ref[torch.isinf(ref)]), f"{what}: inf sign differs"
    fin = torch.isfinite(ref)
    torch.testing.assert_close(out[fin], ref[fin], rtol=1e-4, atol=1e-5, msg=what)


@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("name", MSCA_INPUTS)
def test_msca_special_value_in_each_input(backend, name, special):
    dev = device_for(backend)
    x = msca_inputs(device=dev)
    x[name].view(-1)[1] = SPECIALS[special]
    ref = mk.msca_attention(**x, backend="reference")
    out = mk.msca_attention(**x, backend=backend)
    assert_same_nonfinite(out, ref, f"{backend}, {special} in {name}")


@pytest.mark.parametrize("name", ["phi_weight", "phi_bias", "fc2", "spatial_bias"])
def test_one_nan_spatial_logit_makes_the_output_nan(backend, name):
    """The issue's case: one NaN weight or value in the spatial logits; reference's output is
    NaN in the whole sample (or batch), never a finite image."""
    x = msca_inputs(device=device_for(backend))
    x[name].view(-1)[0] = math.nan
    out = mk.msca_attention(**x, backend=backend)
    assert torch.isnan(out[0]).all()


def test_nan_in_a_row_that_is_otherwise_minus_inf(backend):
    """A spatial row switched off by -inf biases but for one NaN: the NaN must win (the tile's
    max is -inf, the path that used to zero the row)."""
    x = msca_inputs(device=device_for(backend))
    x["spatial_bias"][0, 1] = -math.inf
    x["spatial_bias"][0, 1, 2, 3] = math.nan
    ref = mk.msca_attention(**x, backend="reference")
    out = mk.msca_attention(**x, backend=backend)
    assert torch.isnan(ref[0]).all()
    assert_same_nonfinite(out, ref, backend)


@pytest.mark.parametrize("where", ["first", "last"])
def test_nan_in_one_tile_of_many(where):
    """Several exemplar tiles and work chunks (40x40 positions): one chunk's partial sum is NaN
    and the merge must keep it NaN rather than read it as an empty row."""
    x = msca_inputs(40, 40)
    j = 0 if where == "first" else 40 * 40 - 1
    x["spatial_bias"][1, 2].view(-1)[j] = math.nan
    ref = mk.msca_attention(**x, backend="reference")
    out = mk.msca_attention(**x, backend="cpu")
    assert torch.isnan(ref[1]).all() and torch.isfinite(ref[0]).all()
    assert_same_nonfinite(out, ref, where)


def test_all_minus_inf_row_still_attends_to_nothing():
    x = msca_inputs()
    x["spatial_bias"][0, 1] = -math.inf
    out = mk.msca_attention(**x, backend="cpu")
    ref = mk.msca_attention(**x, backend="reference")
    assert torch.isfinite(out).all()
    assert_same_nonfinite(out, ref, "-inf row")


@pytest.mark.parametrize("name", ["phi_bias", "fx2", "psi_weight", "channel_bias"])
def test_msca_gradients_nan_where_reference_has_nan(name):
    x = msca_inputs()
    x[name].view(-1)[1] = math.nan
    grads = {}
    for be in ("reference", "cpu"):
        y = {k: v.clone().requires_grad_(k != "mask") for k, v in x.items()}
        mk.msca_attention(**y, backend=be).sum().backward()
        grads[be] = {k: v.grad for k, v in y.items() if v.grad is not None}
    for k, g in grads["reference"].items():
        got = grads["cpu"][k]
        assert torch.isnan(got)[torch.isnan(g)].all(), f"d{k}: finite where reference is NaN"


def test_nan_mask_is_refused():
    x = msca_inputs()
    x["mask"][0, 0] = math.nan
    with pytest.raises(ValueError, match=r"mask: expected values in \[0, 1\]"):
        mk.msca_attention(**x, backend="cpu")


# ------------------------------------------------------------------------------ SPADE
@pytest.mark.parametrize("special", list(SPECIALS))
@pytest.mark.parametrize("name", ["x", "gamma", "beta"])
@pytest.mark.parametrize("mode", ["batch", "instance"])
def test_spade_special_value_in_each_input(backend, mode, name, special):
    dev = device_for(backend)
    t = {k: torch.randn(2, 3, 4, 5, device=dev) for k in ("x", "gamma", "beta")}
    t[name].view(-1)[7] = SPECIALS[special]
    ref = mk.spade_norm(t["x"], t["gamma"], t["beta"], mode=mode, backend="reference")
    out = mk.spade_norm(t["x"], t["gamma"], t["beta"], mode=mode, backend=backend)
    assert_same_nonfinite(out, ref, f"{backend} {mode}, {special} in {name}")


@pytest.mark.parametrize("special", list(SPECIALS))
def test_spade_eval_running_stats_special(backend, special):
    dev = device_for(backend)
    x, g, b = (torch.randn(2, 3, 4, 5, device=dev) for _ in range(3))
    rm, rv = torch.zeros(3, device=dev), torch.ones(3, device=dev)
    rm[1] = SPECIALS[special]
    kw = dict(mode="batch", training=False, running_mean=rm, running_var=rv)
    ref = mk.spade_norm(x, g, b, backend="reference", **kw)
    out = mk.spade_norm(x, g, b, backend=backend, **kw)
    assert_same_nonfinite(out, ref, f"{backend}, running_mean {special}")
