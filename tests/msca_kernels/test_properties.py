"""Property-based tests: the `cpu` kernels against `reference` on shapes and values drawn by
hypothesis: odd sizes (1x1 maps, one channel, more exemplar positions than one 256-wide tile),
ties (small integers), large logits, +-inf and NaN anywhere, -inf bias rows and columns
(attention switched off), masks of zeros and ones.

The output must be NaN and +-inf exactly where the reference's is and agree elsewhere. The
example budget is fixed and the examples derandomised (the same every run), so `make test` pays
a known few seconds and a failure reproduces; raise MSCA_HYPOTHESIS_EXAMPLES to search longer.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import msca_kernels as mk

if not mk.available_backends()["cpu"]:
    pytest.skip("the cpu backend is not built", allow_module_level=True)

BUDGET = int(os.environ.get("MSCA_HYPOTHESIS_EXAMPLES", "0")) or None
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf])
MSCA_NAMES = ("fx2", "fc2", "fc1", "phi_weight", "phi_bias", "psi_weight", "psi_bias",
              "spatial_bias", "channel_bias")


def values(gen, shape, kind, dtype):
    """Random values of one kind: 'normal', 'ties' (integers in -2..2: equal logits) or
    'large' (normal x 30: logits in the hundreds, exp far outside float32)."""
    if kind == "ties":
        return torch.randint(-2, 3, shape, generator=gen).to(dtype)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    return x * 30 if kind == "large" else x


@st.composite
def msca_case(draw, kinds=("normal", "ties", "large")):
    B = draw(st.integers(1, 2))
    N, M2, M1 = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    K = draw(st.integers(1, 5))
    H2 = draw(st.sampled_from([1, 2, 3, 7, 17]))
    W2 = draw(st.sampled_from([1, 2, 5, 16, 19]))
    H1, W1 = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    kind = draw(st.sampled_from(kinds))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    shapes = dict(fx2=(B, N, H2, W2), fc2=(B, M2, H2, W2), fc1=(B, M1, H1, W1),
                  phi_weight=(K, N + M2), psi_weight=(K, M1), phi_bias=(K,), psi_bias=(K,),
                  spatial_bias=(B, K, H2, W2), channel_bias=(B, K, H1, W1))
    t = {}
    for name, shp in shapes.items():
        if name in ("phi_bias", "psi_bias", "spatial_bias", "channel_bias") and draw(
                st.booleans()):
            continue  # an absent bias
        x = values(gen, shp, kind, dtype)
        t[name] = x * 0.3 if name.endswith("weight") and kind != "ties" else x
    mask_kind = draw(st.sampled_from(["none", "random", "zeros", "ones", "binary"]))
    if mask_kind == "random":
        t["mask"] = torch.rand((B, K), generator=gen, dtype=dtype)
    elif mask_kind == "binary":
        t["mask"] = torch.randint(0, 2, (B, K), generator=gen).to(dtype)
    elif mask_kind != "none":
        t["mask"] = torch.full((B, K), 0.0 if mask_kind == "zeros" else 1.0, dtype=dtype)
    # attention switched off: whole -inf rows of spatial logits, -inf columns of channel ones
    if "spatial_bias" in t and draw(st.booleans()):
        t["spatial_bias"][draw(st.integers(0, B - 1)), draw(st.integers(0, K - 1))] = -math.inf
    if "channel_bias" in t and draw(st.booleans()):
        b, i, j = draw(st.integers(0, B - 1)), draw(st.integers(0, H1 - 1)), draw(
            st.integers(0, W1 - 1))
        t["channel_bias"][b, :, i, j] = -math.inf
    # a few special values anywhere
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(t)))
        if name == "mask":
            continue
        flat = t[name].view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(SPECIAL)
    return t


def assert_matches(out, ref, truth, what):
    """out (cpu) has NaN and +-inf exactly where ref (reference, same dtype) has them; on the
    finite values it is at most a little less accurate than ref, both measured against truth
    (reference in float64): the float32 reference is itself inexact (its batch norm under a
    large mean, say), so agreement with it alone would be the wrong property."""
    out, ref, truth = out.double(), ref.double(), truth.double()
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), f"{what}: NaN pattern differs"
    inf = torch.isinf(ref)
    assert torch.equal(torch.isinf(out), inf), f"{what}: inf pattern differs"
    assert torch.equal(out[inf], ref[inf]), f"{what}: inf signs differ"
    fin = torch.isfinite(ref) & torch.isfinite(truth)
    err_out = (out[fin] - truth[fin]).norm().item()
    err_ref = (ref[fin] - truth[fin]).norm().item()
    # float64 has no better truth than itself: there the check is agreement to 1e-10 (the
    # reference's own error grows with the conditioning, e.g. a mean 1e4 times the spread)
    rel = 64 * torch.finfo(torch.float32).eps if what.endswith("32") else 1e-10
    floor = rel * (truth[fin].norm().item() + 1.0)
    assert err_out <= 4 * err_ref + floor, (
        f"{what}: error {err_out:.3g} against float64, reference's {err_ref:.3g}")


def run(fn, t, be):
    """fn on the tensors of t (a dict), cast to float64 when be is 'truth'."""
    if be == "truth":
        return fn({k: v.double() for k, v in t.items()}, "reference")
    return fn(t, be)


def tag(t, what):
    dt = next(iter(t.values())).dtype
    return f"{what} float{torch.finfo(dt).bits}"


@settings(max_examples=BUDGET or 200, **SETTINGS)
@given(msca_case())
def test_msca_cpu_matches_reference(t):
    fn = (lambda x, be: mk.msca_attention(**x, backend=be))  # noqa: E731
    ref, out, truth = (run(fn, t, be) for be in ("reference", "cpu", "truth"))
    assert_matches(out, ref, truth, tag(t, "out"))


def msca_grads(t, be):
    x = {k: v.clone().requires_grad_(k != "mask") for k, v in t.items()}
    out = mk.msca_attention(**x, backend=be)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    return {k: v.grad for k, v in x.items() if v.grad is not None}


# Without the 'large' values: with logits in the hundreds the attention is one-hot and every
# gradient through it is cancellation noise, as large in the reference as in the kernels.
@settings(max_examples=BUDGET or 50, **SETTINGS)
@given(msca_case(kinds=("normal", "ties")))
def test_msca_cpu_gradients_match_reference(t):
    ref, out, truth = (run(msca_grads, t, be) for be in ("reference", "cpu", "truth"))
    for k in ref:
        # a NaN gradient never becomes finite; NaN patterns of gradients are not compared in
        # full (the reference's autograd spreads NaN through zeros its formulas skip)
        assert torch.isnan(out[k])[torch.isnan(ref[k])].all(), f"d{k}: finite for a NaN"
        if all(torch.isfinite(g).all() for g in ref.values()):
            assert_matches(out[k], ref[k], truth[k], tag(t, f"d{k}"))


@st.composite
def spade_case(draw):
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    mode = draw(st.sampled_from(["batch", "instance"]))
    if mode == "batch" and B * H * W < 2 or mode == "instance" and H * W < 2:
        W += 1  # one value per group is refused (tested in test_bad_input.py)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    kind = draw(st.sampled_from(["normal", "ties", "large"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    t = {k: values(gen, (B, C, H, W), kind, dtype) for k in ("x", "gamma", "beta")}
    if draw(st.booleans()):
        t["x"] = t["x"] + draw(st.sampled_from([1e3, -1e4]))  # mean far from zero
    for _ in range(draw(st.integers(0, 2))):
        flat = t[draw(st.sampled_from(sorted(t)))].view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(SPECIAL)
    return t, mode


@settings(max_examples=BUDGET or 120, **SETTINGS)
@given(spade_case())
def test_spade_cpu_matches_reference(case):
    t, mode = case
    fn = (lambda x, be: mk.spade_norm(x["x"], x["gamma"], x["beta"], mode=mode,  # noqa: E731
                                      backend=be))
    ref, out, truth = (run(fn, t, be) for be in ("reference", "cpu", "truth"))
    assert_matches(out, ref, truth, tag(t, mode))
