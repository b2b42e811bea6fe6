"""The C++ ops are complete torch custom ops: opcheck (schema, fake, autograd registration)
and torch.compile(fullgraph=True) accept them."""
import pytest
import torch

import msca_kernels as mk


def msca_args(dtype=torch.float32, biases=True, requires_grad=True):
    B, N, M2, M1, K, P2, P1 = 2, 5, 3, 4, 6, 35, 22
    r = lambda *s: torch.randn(*s, dtype=dtype, requires_grad=requires_grad)  # noqa: E731
    return (r(B, N, P2), r(B, M2, P2), r(B, M1, P1), r(K, N + M2), r(K), r(K, M1), r(K),
            torch.rand(B, K, dtype=dtype, requires_grad=requires_grad),
            r(B, K, P2) if biases else None, r(B, K, P1) if biases else None)


@pytest.fixture(autouse=True)
def _needs_cpu():
    if not mk.available_backends()["cpu"]:
        pytest.skip(mk.available_backends()["cpu"].reason)


@pytest.mark.parametrize("biases", [True, False])
def test_opcheck_msca_fwd(biases):
    torch.library.opcheck(torch.ops.msca_kernels.msca_fwd.default, msca_args(biases=biases))


def test_opcheck_msca_bwd():
    args = [a.detach() if a is not None else None for a in msca_args()]
    _, V, lse = torch.ops.msca_kernels.msca_fwd(*args)
    g = torch.randn(2, 5, 22)
    torch.library.opcheck(torch.ops.msca_kernels.msca_bwd.default,
                          (g, *args, V, lse, True, False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("instance", [False, True])
def test_opcheck_spade_fwd(instance):
    x, g, b = (torch.randn(2, 3, 20, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.msca_kernels.spade_norm_fwd.default,
                          (x, g, b, None, None, instance, 1e-5))


def test_opcheck_spade_fwd_given_stats():
    x, g, b = (torch.randn(2, 3, 20, requires_grad=True) for _ in range(3))
    mean, rstd = torch.randn(3), torch.rand(3) + 0.5
    torch.library.opcheck(torch.ops.msca_kernels.spade_norm_fwd.default,
                          (x, g, b, mean, rstd, False, 1e-5))


def test_torch_compile_fullgraph_msca_and_spade():
    torch._dynamo.reset()
    layer = mk.nn.MSCA(5, 4, 3, 6, backend="cpu")
    norm = mk.nn.SPADE("spadebatch3x3", 5, 4, backend="cpu")

    def step(fx2, fc2, fc1):
        y = layer(fx2, fc2, fc1)
        return norm(y, fc1).square().mean()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    fx2, fc2, fc1 = torch.randn(2, 5, 7, 9), torch.randn(2, 3, 7, 9), torch.randn(2, 4, 5, 6)
    loss_c = compiled(fx2, fc2, fc1)
    grads_c = torch.autograd.grad(loss_c, list(layer.parameters()) + list(norm.parameters()))
    loss_e = step(fx2, fc2, fc1)
    grads_e = torch.autograd.grad(loss_e, list(layer.parameters()) + list(norm.parameters()))
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_torch_compile_inductor_msca():
    torch._dynamo.reset()
    args = [a.detach() for a in msca_args(biases=False)[:8]]
    fx2, fc2, fc1, phi, phib, psi, psib, mask = args
    B, N, P2 = fx2.shape
    fx2, fc2 = fx2.view(B, N, 5, 7), fc2.view(B, 3, 5, 7)
    fc1 = fc1.view(B, 4, 2, 11)

    def f(fx2, fc2, fc1):
        return mk.msca_attention(fx2, fc2, fc1, phi, psi, mask, phib, psib, backend="cpu") * 2

    out = torch.compile(f, fullgraph=True)(fx2, fc2, fc1)
    assert torch.allclose(out, f(fx2, fc2, fc1), rtol=1e-5, atol=1e-6)
