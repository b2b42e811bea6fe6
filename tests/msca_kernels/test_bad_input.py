"""Bad input raises ValueError/TypeError naming the argument, before any kernel runs."""
import pytest
import torch

import msca_kernels as mk

B, N, M2, M1, K = 2, 5, 3, 4, 6


def good(**over):
    t = dict(fx2=torch.randn(B, N, 7, 9), fc2=torch.randn(B, M2, 7, 9),
             fc1=torch.randn(B, M1, 5, 6), phi_weight=torch.randn(K, N + M2),
             psi_weight=torch.randn(K, M1), mask=torch.rand(B, K))
    t.update(over)
    return t


MSCA_CASES = [
    (dict(fx2=torch.randn(N, 7, 9)), ValueError, "fx2: expected a 4-D"),
    (dict(fc1=torch.randn(B + 1, M1, 5, 6)), ValueError, "fc2, fc1: expected batch size"),
    (dict(fc2=torch.randn(B, M2, 7, 8)), ValueError, "fc2: expected the exemplar size"),
    (dict(phi_weight=torch.randn(K, N + M2 + 1)), ValueError, "phi_weight: expected shape"),
    (dict(psi_weight=torch.randn(K + 1, M1)), ValueError, "psi_weight: expected shape"),
    (dict(psi_weight=torch.randn(K, M1 + 2)), ValueError, "psi_weight: expected shape"),
    (dict(mask=torch.rand(B, K + 1)), ValueError, "mask: expected shape"),
    (dict(mask=torch.rand(K)), ValueError, "mask: expected shape"),
    (dict(mask=torch.rand(B, K) + 1.5), ValueError, r"mask: expected values in \[0, 1\]"),
    (dict(fx2=torch.randint(0, 5, (B, N, 7, 9))), TypeError, "fx2: expected a floating-point"),
    (dict(fc1=torch.randn(B, M1, 5, 6, dtype=torch.float64)), TypeError, "fc1: expected dtype"),
    (dict(fc2=[[1.0]]), TypeError, "fc2: expected a torch.Tensor"),
    (dict(spatial_bias=torch.randn(B, K, 5, 6)), ValueError, "spatial_bias: expected shape"),
    (dict(channel_bias=torch.randn(B, K, 7, 9)), ValueError, "channel_bias: expected shape"),
    (dict(phi_bias=torch.randn(K + 1)), ValueError, "phi_bias: expected shape"),
    (dict(fx2=torch.randn(B, N, 0, 9), fc2=torch.randn(B, M2, 0, 9)), ValueError, "non-empty"),
]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("over,exc,msg", MSCA_CASES, ids=[c[2][:30] for c in MSCA_CASES])
def test_msca_bad_input(backend, over, exc, msg):
    with pytest.raises(exc, match=msg):
        mk.msca_attention(**good(**over), backend=backend)


def test_msca_bad_options():
    with pytest.raises(TypeError, match="return_attention"):
        mk.msca_attention(**good(), return_attention="yes")
    with pytest.raises(TypeError, match="backend: 'cpu' supports float32 and float64"):
        t = {k: v.bfloat16() for k, v in good().items()}
        mk.msca_attention(**t, backend="cpu")


def sp(**over):
    t = dict(x=torch.randn(2, 3, 4, 5), gamma=torch.randn(2, 3, 4, 5), beta=torch.randn(2, 3, 4, 5))
    kw = {k: v for k, v in over.items() if k not in t}
    t.update({k: v for k, v in over.items() if k in t})
    return t, kw


SPADE_CASES = [
    (dict(x=torch.randn(3, 4, 5)), ValueError, "x: expected a 4-D"),
    (dict(gamma=torch.randn(2, 3, 4, 6)), ValueError, "gamma: expected shape"),
    (dict(beta=torch.randn(2, 4, 4, 5)), ValueError, "beta: expected shape"),
    (dict(x=torch.ones(2, 3, 4, 5, dtype=torch.int32)), TypeError, "x: expected a floating"),
    (dict(gamma=torch.randn(2, 3, 4, 5).double()), TypeError, "gamma: expected dtype"),
    (dict(mode="layer"), ValueError, "mode: expected 'batch' or 'instance'"),
    (dict(eps=-1.0), ValueError, "eps: expected a finite number >= 0"),
    (dict(eps=float("nan")), ValueError, "eps: expected a finite number >= 0, got nan"),
    (dict(eps=float("inf")), ValueError, "eps: expected a finite number >= 0, got inf"),
    (dict(eps=True), ValueError, "eps: expected a finite number"),
    (dict(momentum=2.0), ValueError, r"momentum: expected a finite number in \[0, 1\]"),
    (dict(momentum=float("nan")), ValueError, "momentum: expected a finite number"),
    (dict(training=False), ValueError, "mode='batch' with training=False needs running"),
    (dict(running_mean=torch.zeros(3)), ValueError, "running_mean, running_var: expected both"),
    (dict(running_mean=torch.zeros(4), running_var=torch.ones(4)), ValueError,
     "running_mean: expected shape"),
    (dict(mode="instance", running_mean=torch.zeros(3), running_var=torch.ones(3)), ValueError,
     "mode='instance' uses per-sample"),
    (dict(x=torch.randn(1, 3, 1, 1), gamma=torch.randn(1, 3, 1, 1), beta=torch.randn(1, 3, 1, 1)),
     ValueError, "more than one value per channel"),
    # instance statistics of a 1x1 map: refused on every backend (torch's instance_norm
    # raised, the cpu kernel returned beta)
    (dict(x=torch.randn(2, 3, 1, 1), gamma=torch.randn(2, 3, 1, 1), beta=torch.randn(2, 3, 1, 1),
          mode="instance"), ValueError, r"x: instance statistics need more than one value"),
]


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("over,exc,msg", SPADE_CASES, ids=[c[2][:30] for c in SPADE_CASES])
def test_spade_bad_input(backend, over, exc, msg):
    t, kw = sp(**over)
    with pytest.raises(exc, match=msg):
        mk.spade_norm(**t, **kw, backend=backend)


def test_module_bad_config():
    with pytest.raises(ValueError, match="config_text"):
        mk.nn.SPADE("spadelayer3x3", 8, 4)
    with pytest.raises(ValueError, match="config_text"):
        mk.nn.SPADE("batch3x3", 8, 4)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        mk.nn.MSCA(8, 4, 4, 0)


# ------------------------------------------------------------------ double backward
def _penalty(op, backend):
    """A gradient penalty through op: the second derivative the fused kernels cannot give."""
    if op == "spade":
        x = torch.randn(2, 3, 4, 5, requires_grad=True)
        y = mk.spade_norm(x, torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), backend=backend)
    else:
        x = torch.randn(B, N, 7, 9, requires_grad=True)
        y = mk.msca_attention(**good(fx2=x), backend=backend)
    (gx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    return x, gx.pow(2).sum()


@pytest.mark.parametrize("op", ["msca", "spade"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_double_backward_is_refused(op, backend):
    """It used to give zero second-order terms, with only a torch UserWarning."""
    if not mk.available_backends()[backend]:
        pytest.skip(mk.available_backends()[backend].reason)
    x, penalty = _penalty(op, backend)
    name = "spade_norm" if op == "spade" else "msca_attention"
    with pytest.raises(RuntimeError, match=rf"{name}: double backward .* not implemented by the "
                       r"fused kernels .* use backend='reference'"):
        penalty.backward()


@pytest.mark.parametrize("op", ["msca", "spade"])
def test_double_backward_reference_is_not_zero(op):
    x, penalty = _penalty(op, "reference")
    penalty.backward()
    assert x.grad.abs().sum() > 0


def test_first_order_with_create_graph_still_works():
    """create_graph=True alone (no second derivative taken) is not refused."""
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    g, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    y = mk.spade_norm(x, g, b, backend="cpu")
    (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    ref = mk.spade_norm(x, g, b, backend="reference")
    (gr,) = torch.autograd.grad(ref.pow(2).sum(), x)
    torch.testing.assert_close(gx.detach(), gr, rtol=1e-4, atol=1e-5)
