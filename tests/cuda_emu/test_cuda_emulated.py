"""The raw CUDA kernels (csrc/cuda/*_kernels.cu) executed on this CPU by the emulator of
tests/cuda_emu, against float64 PyTorch computations, in float32/float64/float16/bfloat16.

What the emulator checks besides the numbers: barriers reached by every thread, warp shuffles
within each warp, dynamic shared memory of exactly the launch's size and poisoned with NaN for
every block, NaN-filled workspaces and outputs, blocks in a shuffled order, launch limits. The
planted-bug tests show that a removed barrier or a broken merge makes these checks fail.
Sizes are small (a few seconds in all after the first build, which takes ~30 s of CPU).
"""
from __future__ import annotations

import pytest
import torch

import emu
from msca_kernels import reference as R

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DT_IDS = [str(d).replace("torch.", "") for d in DTYPES]
# Relative-error tolerances, as tests/conftest.py has them for every backend.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}

# (B, N, M2, M1, K, H2, W2, H1, W1, sm_count). The sm_count sets the split count of the
# reductions (about 2 * sm_count / B blocks per batch item, at most one per 64-position tile).
MSCA_CASES = {
    # odd sizes: N over two 32-row chunks, K % 8 != 0 (warps run different numbers of
    # shuffles), 5 exemplar tiles over 2 splits (online rescaling and merge), partial tiles
    "odd": (2, 37, 9, 33, 5, 13, 23, 11, 7, 2),
    # K = 64 (the largest), one exemplar tile per block
    "k64": (1, 8, 4, 6, 64, 16, 24, 8, 8, 1),
    # K = 1, 1x1 exemplar, more blocks wanted than tiles exist
    "k1_1x1": (3, 5, 3, 7, 1, 1, 1, 5, 11, 4),
    # 16-byte vector path (positions a multiple of 8), 3 tiles in one block and 2 in the other
    "vec": (1, 16, 8, 9, 16, 16, 20, 8, 8, 1),
}


def make_msca(case, dtype, *, biases=True, mask=True, scale=1.0):
    B, N, M2, M1, K, H2, W2, H1, W1, _ = case
    g = torch.Generator().manual_seed(sum(case) * 7 + K)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    t = dict(fx2=r(B, N, H2, W2), fc2=r(B, M2, H2, W2), fc1=r(B, M1, H1, W1),
             phi_weight=r(K, N + M2) * scale / (N + M2) ** 0.5, psi_weight=r(K, M1) / M1 ** 0.5)
    if mask:
        t["mask"] = torch.rand(B, K, generator=g, dtype=torch.float64)
    if biases:
        t.update(phi_bias=r(K), psi_bias=r(K), spatial_bias=r(B, K, H2, W2),
                 channel_bias=r(B, K, H1, W1))
    return {k: v.to(dtype) for k, v in t.items()}


def rel(got, ref, floor=0.0):
    got, ref = got.double().reshape(ref.shape), ref.double()
    den = max(ref.norm().item(), floor)
    return (got - ref).norm().item() / (den if den > 0 else 1.0)


def msca_reference(t, grad_out):
    """out, V (un-masked), lse and every gradient, in float64 from the (rounded) inputs."""
    leaves = {k: v.double().requires_grad_(True) for k, v in t.items()}
    out = R.msca_attention(**leaves)
    out.backward(grad_out)
    with torch.no_grad():
        B, K = t["fx2"].shape[0], t["phi_weight"].shape[0]
        x = torch.cat([leaves["fx2"], leaves["fc2"]], 1).flatten(2)
        a = torch.einsum("kc,bcj->bkj", leaves["phi_weight"].reshape(K, -1), x)
        if "phi_bias" in leaves:
            a = a + leaves["phi_bias"].reshape(1, K, 1)
        if "spatial_bias" in leaves:
            a = a + leaves["spatial_bias"].reshape(B, K, -1)
        lse = torch.logsumexp(a, dim=2)
        alpha = R.safe_softmax(a, dim=2)
        V = torch.einsum("bnj,bkj->bnk", leaves["fx2"].flatten(2), alpha)
    return out.detach(), V, lse, {k: v.grad for k, v in leaves.items()}


def check_msca(E, case, dtype, tol=None, **kw):
    """Forward and backward of the emulated kernels against float64; AssertionError if off."""
    tol = tol or TOL[dtype]
    t = make_msca(case, dtype, **kw)
    sm = case[-1]
    g = torch.Generator().manual_seed(1)
    B, N, H1, W1 = case[0], case[1], case[7], case[8]
    grad_out = torch.randn(B, N, H1, W1, generator=g, dtype=torch.float64).to(dtype)
    ref_out, ref_V, ref_lse, ref_grads = msca_reference(t, grad_out.double())
    out, V, lse = E.msca_fwd(t, sm)
    assert torch.isfinite(out).all(), "out has NaN/inf"
    assert rel(out, ref_out) < tol, ("out", rel(out, ref_out))
    assert rel(V, ref_V) < tol, ("V", rel(V, ref_V))
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin), "lse: -inf rows differ"
    assert rel(lse[fin], ref_lse[fin]) < tol, ("lse", rel(lse[fin], ref_lse[fin]))
    grads = E.msca_bwd(t, grad_out, V, lse, sm)
    # Some exact gradients are zero or nearly so (see tests/msca_kernels/test_msca.py): their
    # rounding noise is measured against 1% of the largest gradient.
    floor = 0.01 * max(v.norm().item() for v in ref_grads.values())
    for name, ref in ref_grads.items():
        got = grads[name]
        assert not torch.isnan(got).any(), (name, "NaN")
        err = rel(got, ref, floor)
        assert err < tol * 4, (name, err)
    return out, grads


@pytest.fixture(scope="module")
def E(request):
    emulator = emu.Emulator()
    yield emulator
    ran = sorted(emulator.launches)
    kernels = {k for k, _ in ran}
    line = (f"cuda emulator: {len(kernels)} of {len(emu.all_kernel_names())} CUDA kernels "
            f"executed on the CPU ({len(ran)} kernel/dtype pairs, "
            f"{sum(emulator.launches.values())} launches)")
    # printed when pytest has finished (and stopped capturing output)
    request.config.add_cleanup(lambda: print(line))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("case", list(MSCA_CASES), ids=str)
def test_msca_kernels_match_float64(E, case, dtype):
    check_msca(E, MSCA_CASES[case], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_msca_without_biases_or_mask(E, dtype):
    check_msca(E, MSCA_CASES["odd"], dtype, biases=False, mask=False)


def test_msca_large_logits(E):
    # logits of magnitude ~1e4: the online softmax and the merge must not overflow
    check_msca(E, (2, 6, 4, 5, 8, 9, 7, 6, 5, 1), torch.float32, tol=1e-4, scale=3e3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_msca_minus_inf_rows_and_zero_mask(E, dtype):
    case = (2, 7, 3, 4, 3, 12, 17, 4, 4, 2)  # 4 exemplar tiles over 2 splits
    t = make_msca(case, dtype)
    t["spatial_bias"][:, 1] = float("-inf")         # an exemplar switched off: alpha row = 0
    t["spatial_bias"][0, 2, 100:] = float("-inf")   # -inf on the later tiles of one split only
    t["channel_bias"][0, :, 0, 0] = float("-inf")   # a target position attends to nothing
    t["mask"][1] = 0
    out, V, lse = E.msca_fwd(t, case[-1])
    assert torch.isneginf(lse[:, 1]).all() and torch.isfinite(lse[:, [0, 2]]).all()
    assert torch.equal(V[:, :, 1], torch.zeros_like(V[:, :, 1]))
    assert torch.equal(out[0, :, 0], torch.zeros_like(out[0, :, 0]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    grad_out = torch.ones(2, 7, 4, 4, dtype=dtype)
    grads = E.msca_bwd(t, grad_out, V, lse, case[-1])
    for name, gr in grads.items():
        assert not torch.isnan(gr).any(), name
    ref_out, ref_V, _, ref_grads = msca_reference(t, grad_out.double())
    assert rel(out, ref_out) < TOL[dtype]
    assert rel(V, ref_V) < TOL[dtype]
    floor = 0.01 * max(v.norm().item() for v in ref_grads.values())
    for name, ref in ref_grads.items():
        ref = torch.where(torch.isfinite(t[name].double()), ref, 0.0) if name in t else ref
        got = torch.nan_to_num(grads[name].double(), posinf=0.0, neginf=0.0)
        assert rel(got, torch.nan_to_num(ref), floor) < TOL[dtype] * 4, name


def test_msca_without_bias_gradients(E):
    t = make_msca(MSCA_CASES["odd"], torch.float32)
    out, V, lse = E.msca_fwd(t, 2)
    grads = E.msca_bwd(t, torch.ones_like(out), V, lse, 2, want_bias_grads=False)
    assert "spatial_bias" not in grads and torch.isfinite(grads["fx2"]).all()


# ---- SPADE ----------------------------------------------------------------------------------

# (B, C, H, W): 1x1 maps, a row longer than one 16384-element segment (scalar and vector path)
SPADE_SHAPES = [(3, 5, 7, 9), (5, 4, 1, 1), (1, 2, 130, 131), (2, 1, 128, 136)]


def check_spade(E, shape, dtype, instance, tol=None, offset=0.0):
    tol = tol or TOL[dtype]
    g = torch.Generator().manual_seed(sum(shape))
    mk_ = lambda s: torch.randn(*shape, generator=g, dtype=torch.float64) * s  # noqa: E731
    x, gamma, beta = (mk_(2) + offset).to(dtype), mk_(0.5).to(dtype), mk_(1).to(dtype)
    dy = mk_(1).to(dtype)
    leaves = [v.double().requires_grad_(True) for v in (x, gamma, beta)]
    ref = R.spade_norm(*leaves, mode="instance" if instance else "batch")
    ref.backward(dy.double())
    B, C = shape[:2]
    flat = lambda v: v.reshape(B, C, -1).contiguous()  # noqa: E731
    out, mean, rstd = E.spade_fwd(flat(x), flat(gamma), flat(beta), instance)
    assert rel(out, ref.detach()) < tol, ("out", rel(out, ref.detach()))
    dx, dgamma = E.spade_bwd(flat(dy), flat(x), flat(gamma), mean, rstd, instance, True)
    for name, got, want in (("x", dx, leaves[0].grad), ("gamma", dgamma, leaves[1].grad)):
        assert rel(got, want) < tol * 4, (name, rel(got, want))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("mode", ["batch", "instance"])
@pytest.mark.parametrize("shape", SPADE_SHAPES, ids=str)
def test_spade_kernels_match_float64(E, shape, mode, dtype):
    if mode == "instance" and shape[2] * shape[3] == 1:
        pytest.skip("instance statistics of a single value")
    check_spade(E, shape, dtype, mode == "instance")


def test_spade_large_mean_offset(E):
    check_spade(E, (2, 6, 15, 13), torch.float32, False, tol=2e-4, offset=1000.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_spade_given_statistics(E, dtype):
    # eval mode: mean and rstd given (running statistics); the backward does not flow into them
    B, C, P = 2, 3, 50
    x = torch.randn(B, C, P, dtype=torch.float64)
    gamma, beta, dy = (torch.randn(B, C, P, dtype=torch.float64) for _ in range(3))
    rm, rv = torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5
    leaves = [v.clone().requires_grad_(True) for v in (x, gamma, beta)]
    ref = R.spade_norm(*leaves, running_mean=rm.clone(), running_var=rv.clone(), training=False)
    ref.backward(dy)
    mean, rstd = rm, 1 / torch.sqrt(rv + 1e-5)
    xs, gs, bs, ds = (v.to(dtype) for v in (x, gamma, beta, dy))
    out, _, _ = E.spade_fwd(xs, gs, bs, False, mean=mean, rstd=rstd)
    acc = torch.float32 if dtype != torch.float64 else dtype
    dx, dgamma = E.spade_bwd(ds, xs, gs, mean.to(acc), rstd.to(acc), False, False)
    tol = TOL[dtype]
    assert rel(out, ref.detach()) < tol
    assert rel(dx, leaves[0].grad) < tol * 4 and rel(dgamma, leaves[1].grad) < tol * 4


# ---- planted bugs: the checks above must notice them --------------------------------------

PLANT_CHECKS = {
    "missing_barrier": lambda E: check_msca(E, MSCA_CASES["odd"], torch.float32),
    "merge_without_rescaling": lambda E: check_msca(E, MSCA_CASES["odd"], torch.float32),
    "online_softmax_without_rescaling": lambda E: check_msca(E, MSCA_CASES["vec"], torch.float32),
    "wrong_shuffle_offset": lambda E: check_spade(E, (3, 5, 7, 9), torch.float32, False),
}


# (the SPADE cursor bugs need small grids: test_cuda_grid_stride.py checks them)
@pytest.mark.parametrize("bug", sorted(PLANT_CHECKS))
def test_planted_bug_is_caught(bug):
    mutant = emu.Emulator(bug)
    with pytest.raises((AssertionError, emu.EmulatorError)):
        PLANT_CHECKS[bug](mutant)


# ---- coverage -------------------------------------------------------------------------------

def test_every_kernel_ran_in_every_dtype(E, request):
    others = [i for i in request.session.items
              if i.module is request.module and i.name != request.node.name
              and "planted" not in i.name]
    wanted = [i for i in request.module.__dict__ if i.startswith("test_")]
    if len({i.originalname for i in others}) < len(wanted) - 2:
        pytest.skip("only part of this module was selected")
    ran = set(E.launches)
    missing = [(k, d) for k in emu.all_kernel_names() for d in DT_IDS if (k, d) not in ran]
    assert not missing, f"kernels never executed: {missing}"
