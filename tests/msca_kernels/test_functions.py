"""msca_kernels.MSCAFunction and SPADENormFunction: real autograd Functions running the fused ops.

Each backend that runs here (cpu; triton under the interpreter; cuda and GPU triton on a GPU)
and the reference fallback: gradcheck in float64 where the backend computes float64, agreement
of values and gradients with msca_attention / spade_norm otherwise.
"""
import pytest
import torch

import msca_kernels as mk
from msca_kernels.functions import MSCAFunction, SPADENormFunction

from conftest import TOL, device_for, dtypes_for, rel_err


def msca_inputs(dtype, device, biases=True, conv_weights=False):
    B, N, M1, M2, K = 2, 5, 4, 3, 6
    g = dict(dtype=dtype, device=device)
    phi_shape = (K, N + M2, 1, 1) if conv_weights else (K, N + M2)
    ts = [torch.randn(B, N, 3, 4, **g), torch.randn(B, M2, 3, 4, **g),
          torch.randn(B, M1, 2, 5, **g), 0.5 * torch.randn(*phi_shape, **g),
          0.5 * torch.randn(K, M1, **g), torch.rand(B, K, **g)]
    if biases:
        ts += [torch.randn(K, **g), torch.randn(K, **g), torch.randn(B, K, 3, 4, **g),
               torch.randn(B, K, 2, 5, **g)]
    return [t.requires_grad_() for t in ts]


def test_are_autograd_functions_exported():
    assert issubclass(mk.MSCAFunction, torch.autograd.Function)
    assert issubclass(mk.SPADENormFunction, torch.autograd.Function)
    assert mk.MSCAFunction is MSCAFunction and "SPADENormFunction" in mk.__all__


@pytest.mark.parametrize("be", ["cpu", "reference"])
@pytest.mark.parametrize("biases", [True, False])
def test_msca_function_gradcheck(be, biases):
    if not mk.available_backends()[be]:
        pytest.skip(mk.available_backends()[be].reason)
    ins = msca_inputs(torch.float64, "cpu", biases, conv_weights=True)
    extra = [] if biases else [None] * 4
    assert torch.autograd.gradcheck(lambda *a: MSCAFunction.apply(*a, *extra, be), ins)


def _compare(fn_out, fn_ref, ins, dtype):
    """Values and every input gradient of two callables agree within the dtype's tolerance.
    Some gradients are zero in exact arithmetic (phi_bias: a constant shift of a softmax's
    logits), so each is compared relative to the largest input gradient."""
    out = fn_out(*ins)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, ins, dout)
    ref = fn_ref(*ins)
    ref_grads = torch.autograd.grad(ref, ins, dout)
    assert rel_err(out, ref) < TOL[dtype]
    scale = max(r.double().abs().max().item() for r in ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert g.shape == r.shape and g.dtype == r.dtype, i
        err = (g.double() - r.double()).abs().max().item()
        assert rel_err(g, r) < 10 * TOL[dtype] or err < 10 * TOL[dtype] * scale, (i, err)


def test_msca_function_agrees_with_msca_attention(backend):
    dev = device_for(backend)
    for dtype in dtypes_for(backend):
        ins = msca_inputs(dtype, dev)
        _compare(lambda *a: MSCAFunction.apply(*a, backend),
                 lambda *a: mk.msca_attention(*a[:8], spatial_bias=a[8], channel_bias=a[9],
                                              backend="reference"), ins, dtype)


@pytest.mark.parametrize("mode", ["batch", "instance"])
def test_spade_function_agrees_with_spade_norm(backend, mode):
    dev = device_for(backend)
    for dtype in dtypes_for(backend):
        x, g, b = (torch.randn(2, 3, 5, 4, dtype=dtype, device=dev, requires_grad=True)
                   for _ in range(3))
        _compare(lambda *a: SPADENormFunction.apply(*a, mode, 1e-5, None, None, 0.1, True,
                                                    backend),
                 lambda *a: mk.spade_norm(*a, mode=mode, backend="reference"), (x, g, b), dtype)


@pytest.mark.parametrize("be", ["cpu", "reference"])
@pytest.mark.parametrize("training", [True, False])
def test_spade_function_gradcheck_and_running_stats(be, training):
    x, g, b = (torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    rm_ref, rv_ref = rm.clone(), rv.clone()
    y = SPADENormFunction.apply(x, g, b, "batch", 1e-5, rm, rv, 0.1, training, be)
    y_ref = mk.spade_norm(x, g, b, running_mean=rm_ref, running_var=rv_ref, training=training,
                          backend="reference")
    assert rel_err(y, y_ref) < 1e-10
    assert torch.allclose(rm, rm_ref) and torch.allclose(rv, rv_ref)  # updated alike
    frozen = (rm.clone(), rv.clone())
    assert torch.autograd.gradcheck(
        lambda *a: SPADENormFunction.apply(*a, "batch", 1e-5, None if training else frozen[0],
                                           None if training else frozen[1], 0.1, training, be),
        (x, g, b))


def test_functions_run_the_fused_ops(monkeypatch):
    """Forward and backward go through the fused custom ops, not the reference."""
    if not mk.available_backends()["cpu"]:
        pytest.skip(mk.available_backends()["cpu"].reason)

    def no_reference(*a, **k):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(mk.reference, "msca_attention", no_reference)
    monkeypatch.setattr(mk.reference, "spade_norm", no_reference)
    ins = msca_inputs(torch.float32, "cpu")
    MSCAFunction.apply(*ins).sum().backward()
    assert all(t.grad is not None for t in ins)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    SPADENormFunction.apply(x, torch.randn_like(x), torch.randn_like(x)).sum().backward()
    assert x.grad is not None


def test_functions_check_their_arguments():
    ins = msca_inputs(torch.float32, "cpu", biases=False)
    with pytest.raises(ValueError, match="psi_weight"):
        MSCAFunction.apply(*ins[:4], ins[4][:, :2], ins[5])
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="mode"):
        SPADENormFunction.apply(x, x, x, "group")
    with pytest.raises(ValueError, match="backend"):
        SPADENormFunction.apply(x, x, x, "batch", 1e-5, None, None, 0.1, True, "nope")
