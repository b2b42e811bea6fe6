"""Every kernel backend of msca_attention against the reference, forward and backward."""
import pytest
import torch

import msca_kernels as mk
from conftest import TOL, device_for, dtypes_for, rel_err

# (B, N, M2, M1, K, H2, W2, H1, W1): odd and unequal sizes, 1x1 maps, K = 1, several tiles.
SHAPES = [
    (2, 5, 3, 7, 3, 7, 9, 5, 11),
    (1, 4, 2, 3, 1, 1, 1, 1, 1),
    (3, 6, 5, 4, 16, 1, 1, 2, 3),
    (2, 16, 8, 9, 16, 13, 17, 19, 3),
    (1, 12, 7, 10, 8, 37, 29, 23, 41),
]


def make_inputs(shape, dtype, device, *, biases=True, mask=True, scale=1.0):
    B, N, M2, M1, K, H2, W2, H1, W1 = shape
    g = torch.Generator().manual_seed(hash(shape) % 2**31)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    t = dict(fx2=r(B, N, H2, W2), fc2=r(B, M2, H2, W2), fc1=r(B, M1, H1, W1),
             phi_weight=r(K, N + M2) * scale / (N + M2) ** 0.5,
             psi_weight=r(K, M1) * scale / M1 ** 0.5)
    if mask:
        t["mask"] = torch.rand(B, K, generator=g, dtype=torch.float64)
    if biases:
        t.update(phi_bias=r(K), psi_bias=r(K), spatial_bias=r(B, K, H2, W2),
                 channel_bias=r(B, K, H1, W1))
    return {k: v.to(device=device, dtype=dtype) for k, v in t.items()}


def run(inputs, backend, grad_out=None, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = mk.msca_attention(backend=backend, **leaves, **kw)
    if grad_out is None:
        return out, None
    out.backward(grad_out)
    return out, {k: v.grad for k, v in leaves.items()}


def check_against_reference(inputs, backend, dtype, tol=None, **kw):
    tol = tol or TOL[dtype]
    ref_inputs = {k: v.detach().double().cpu() for k, v in inputs.items()}
    ref_out, _ = run(ref_inputs, "reference", **kw)
    grad_out = torch.randn_like(ref_out)
    ref_out, ref_grads = run(ref_inputs, "reference", grad_out, **kw)
    out, grads = run(inputs, backend, grad_out.to(dtype=dtype, device=inputs["fx2"].device), **kw)
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert torch.isfinite(out).all()
    assert rel_err(out.cpu(), ref_out) < tol, ("out", rel_err(out.cpu(), ref_out))
    # Some exact gradients are zero: phi_bias shifts a whole softmax row (its gradient is a sum
    # of P2 terms that cancel), and with a 1x1 exemplar and no mask the output does not depend
    # on fc1. Their rounding noise is measured against 1% of the largest gradient instead.
    floor = 0.01 * max(g.norm().item() for g in ref_grads.values())
    for name, gref in ref_grads.items():
        got = grads[name]
        assert got is not None and got.dtype == dtype and got.shape == gref.shape, name
        assert torch.isfinite(got).all(), name
        den = max(gref.norm().item(), floor)
        err = (got.cpu().double() - gref).norm().item() / (den if den > 0 else 1.0)
        assert err < tol * 4, (name, err)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("biases", [True, False], ids=["biases", "nobias"])
def test_matches_reference(backend, shape, biases):
    for dtype in dtypes_for(backend):
        inputs = make_inputs(shape, dtype, device_for(backend), biases=biases, mask=biases)
        check_against_reference(inputs, backend, dtype)


def test_large_logits_stay_finite(backend):
    # Logits of magnitude ~1e4: a naive exp overflows; the online softmax must not.
    shape = (2, 6, 4, 5, 8, 9, 7, 6, 5)
    dtype = torch.float32
    inputs = make_inputs(shape, dtype, device_for(backend), scale=3e3)
    a = torch.einsum("kc,bcj->bkj", inputs["phi_weight"].double().cpu(),
                     torch.cat([inputs["fx2"], inputs["fc2"]], 1).flatten(2).double().cpu())
    assert a.abs().max() > 5e3
    check_against_reference(inputs, backend, dtype, tol=1e-4)


def test_zero_mask_gives_zero_output_and_finite_grads(backend):
    shape = (2, 5, 3, 4, 4, 6, 5, 7, 3)
    inputs = make_inputs(shape, torch.float32, device_for(backend))
    inputs["mask"] = torch.zeros_like(inputs["mask"])
    out, grads = run(inputs, backend, torch.ones(2, 5, 7, 3, device=inputs["fx2"].device))
    assert torch.equal(out, torch.zeros_like(out))
    for name, g in grads.items():
        assert torch.isfinite(g).all(), name
    assert grads["mask"].abs().sum() > 0  # the gate still learns
    check_against_reference(inputs, backend, torch.float32)


def test_fully_suppressed_attention_row(backend):
    # spatial_bias = -inf on all of row k (an exemplar switched off): alpha = 0 there, no NaN.
    shape = (2, 5, 3, 4, 3, 6, 5, 4, 4)
    inputs = make_inputs(shape, torch.float32, device_for(backend))
    inputs["spatial_bias"][:, 1] = float("-inf")
    inputs["channel_bias"][0, :, 0, 0] = float("-inf")  # a target position attends to nothing
    out, grads = run(inputs, backend, torch.ones(2, 5, 4, 4, device=inputs["fx2"].device))
    assert torch.isfinite(out).all()
    for name, g in grads.items():
        assert not torch.isnan(g).any(), name
    assert torch.equal(out[0, :, 0, 0], torch.zeros_like(out[0, :, 0, 0]))
    check_against_reference(inputs, backend, torch.float32)


def test_non_contiguous_and_channels_last(backend):
    shape = (2, 6, 4, 5, 8, 9, 7, 6, 5)
    dev = device_for(backend)
    inputs = make_inputs(shape, torch.float32, dev)
    nc = dict(inputs)
    # channels_last copies and transposed views carry the same values in other layouts
    nc["fx2"] = inputs["fx2"].contiguous(memory_format=torch.channels_last)
    nc["fc1"] = inputs["fc1"].transpose(2, 3).contiguous().transpose(2, 3)
    nc["fc2"] = inputs["fc2"].contiguous(memory_format=torch.channels_last)
    nc["phi_weight"] = inputs["phi_weight"].t().contiguous().t()
    assert not nc["fc1"].is_contiguous() and not nc["phi_weight"].is_contiguous()
    check_against_reference(nc, backend, torch.float32)


def test_return_attention(backend):
    shape = (2, 5, 3, 7, 3, 7, 9, 5, 11)
    inputs = make_inputs(shape, torch.float32, device_for(backend))
    out, alpha, beta = mk.msca_attention(**inputs, return_attention=True, backend=backend)
    r_out, r_alpha, r_beta = mk.msca_attention(
        **{k: v.double().cpu() for k, v in inputs.items()}, return_attention=True,
        backend="reference")
    assert alpha.shape == (2, 3, 7, 9) and beta.shape == (2, 3, 5, 11)
    for got, ref in ((out, r_out), (alpha, r_alpha), (beta, r_beta)):
        assert rel_err(got.cpu(), ref) < TOL[torch.float32]
    assert torch.allclose(alpha.sum((2, 3)), torch.ones(2, 3, device=alpha.device), atol=1e-5)
    assert torch.allclose(beta.sum(1), torch.ones(2, 5, 11, device=beta.device), atol=1e-5)


def test_gradcheck_float64(backend):
    if torch.float64 not in dtypes_for(backend):
        pytest.skip(f"{backend} runs float64 only on the CPU backend")
    shape = (2, 3, 2, 3, 2, 2, 3, 3, 2)
    inputs = make_inputs(shape, torch.float64, device_for(backend))
    names = list(inputs)
    leaves = [inputs[n].requires_grad_(True) for n in names]

    def f(*xs):
        return mk.msca_attention(backend=backend, **dict(zip(names, xs)))

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def test_output_is_deterministic(backend):
    shape = (1, 12, 7, 10, 8, 37, 29, 23, 41)
    inputs = make_inputs(shape, torch.float32, device_for(backend))
    a, ga = run(inputs, backend, torch.ones(1, 12, 23, 41, device=inputs["fx2"].device))
    b, gb = run(inputs, backend, torch.ones(1, 12, 23, 41, device=inputs["fx2"].device))
    assert torch.equal(a, b)
    for n in ga:
        assert torch.equal(ga[n], gb[n]), n
