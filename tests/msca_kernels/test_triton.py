"""What is particular to the triton backend: its ops are complete torch custom ops (opcheck,
torch.compile), bad input is rejected before a kernel runs, its dtype rules, and (on a GPU)
larger shapes in every supported dtype. The shared suites (test_msca.py, test_spade.py) compare
it with the reference; without a GPU all of this runs under TRITON_INTERPRET=1 (tests/conftest.py)
at small float32 shapes."""
import pytest
import torch

import msca_kernels as mk
from conftest import TOL, rel_err
from test_bad_input import MSCA_CASES, SPADE_CASES, good, sp
from test_msca import check_against_reference, make_inputs

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def msca_args(biases=True, requires_grad=True, dtype=torch.float32):
    B, N, M2, M1, K, P2, P1 = 2, 5, 3, 4, 6, 35, 22
    r = lambda *s: torch.randn(*s, dtype=dtype, device=DEV,  # noqa: E731
                               requires_grad=requires_grad)
    return (r(B, N, P2), r(B, M2, P2), r(B, M1, P1), r(K, N + M2), r(K), r(K, M1), r(K),
            torch.rand(B, K, dtype=dtype, device=DEV, requires_grad=requires_grad),
            r(B, K, P2) if biases else None, r(B, K, P1) if biases else None)


# ---------------------------------------------------------------------------------------------
# custom-op registration


@pytest.mark.parametrize("biases", [True, False])
def test_opcheck_msca_fwd(biases):
    torch.library.opcheck(torch.ops.msca_kernels.triton_msca_fwd.default, msca_args(biases=biases))


def test_opcheck_msca_bwd():
    args = [a.detach() if a is not None else None for a in msca_args()]
    _, V, lse = torch.ops.msca_kernels.triton_msca_fwd(*args)
    g = torch.randn(2, 5, 22, device=DEV)
    torch.library.opcheck(torch.ops.msca_kernels.triton_msca_bwd.default,
                          (g, *args, V, lse, True, False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("instance", [False, True])
def test_opcheck_spade_fwd(instance):
    x, g, b = (torch.randn(2, 3, 20, device=DEV, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.msca_kernels.triton_spade_norm_fwd.default,
                          (x, g, b, None, None, instance, 1e-5))


def test_opcheck_spade_fwd_given_stats_and_bwd():
    x, g, b = (torch.randn(2, 3, 20, device=DEV, requires_grad=True) for _ in range(3))
    mean, rstd = torch.randn(3, device=DEV), torch.rand(3, device=DEV) + 0.5
    torch.library.opcheck(torch.ops.msca_kernels.triton_spade_norm_fwd.default,
                          (x, g, b, mean, rstd, False, 1e-5))
    xd, gd = x.detach(), g.detach()
    torch.library.opcheck(torch.ops.msca_kernels.triton_spade_norm_bwd.default,
                          (torch.randn_like(xd), xd, gd, mean, rstd, False, True),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_msca_and_spade():
    # On CPU tensors the kernels run in the interpreter, which inductor cannot compile around
    # (it generates GPU Triton for user kernels): aot_eager traces the same graph (dynamo and
    # AOT autograd through the triton_op's and their registered backward) without codegen.
    torch._dynamo.reset()
    layer = mk.nn.MSCA(5, 4, 3, 6, backend="triton").to(DEV)
    norm = mk.nn.SPADE("spadebatch3x3", 5, 4, backend="triton").to(DEV)

    def step(fx2, fc2, fc1):
        y = layer(fx2, fc2, fc1)
        return norm(y, fc1).square().mean()

    backend = "inductor" if DEV.type == "cuda" else "aot_eager"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    fx2, fc2 = torch.randn(2, 5, 7, 9, device=DEV), torch.randn(2, 3, 7, 9, device=DEV)
    fc1 = torch.randn(2, 4, 5, 6, device=DEV)
    params = list(layer.parameters()) + list(norm.parameters())
    loss_c = compiled(fx2, fc2, fc1)
    grads_c = torch.autograd.grad(loss_c, params)
    loss_e = step(fx2, fc2, fc1)
    grads_e = torch.autograd.grad(loss_e, params)
    assert torch.allclose(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads_e):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bad input and dtype rules


def _to_dev(d):
    return {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


@pytest.mark.parametrize("over,exc,msg", MSCA_CASES, ids=[c[2][:30] for c in MSCA_CASES])
def test_msca_bad_input(over, exc, msg):
    with pytest.raises(exc, match=msg):
        mk.msca_attention(**_to_dev(good(**over)), backend="triton")


@pytest.mark.parametrize("over,exc,msg", SPADE_CASES, ids=[c[2][:30] for c in SPADE_CASES])
def test_spade_bad_input(over, exc, msg):
    t, kw = sp(**over)
    with pytest.raises(exc, match=msg):
        mk.spade_norm(**_to_dev(t), **_to_dev(kw), backend="triton")


def test_float64_is_refused_and_auto_avoids_triton():
    # the kernels accumulate in float32; float64 must be computed in float64 (docs/design.md sec. 4)
    t = _to_dev({k: v.double() for k, v in good().items()})
    with pytest.raises(TypeError, match="backend: 'triton' supports"):
        mk.msca_attention(**t, backend="triton")
    from msca_kernels import backends
    assert backends.resolve("auto", torch.device("cuda"), torch.float64) != "triton"


def test_bfloat16_is_refused_by_the_interpreter():
    if DEV.type == "cuda":
        pytest.skip("on a GPU bfloat16 is supported")
    t = {k: v.bfloat16() for k, v in good().items()}
    with pytest.raises(TypeError, match="backend: 'triton' supports float32"):
        mk.msca_attention(**t, backend="triton")


@needs_gpu
def test_auto_picks_triton_on_cuda():
    from msca_kernels import backends
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        assert backends.resolve("auto", torch.device("cuda"), dt) == "triton"


# ---------------------------------------------------------------------------------------------
# GPU: larger shapes, every dtype (tolerance by dtype)

GPU_SHAPES = [
    (1, 64, 64, 64, 16, 64, 64, 64, 64),     # the benchmark's channel sizes, 64x64 maps
    (2, 48, 33, 40, 12, 45, 71, 83, 29),     # unequal odd sizes, padded channel tiles
    (1, 130, 20, 70, 5, 31, 33, 17, 19),     # N above 128
]


@needs_gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_msca_gpu_shapes(shape, dtype):
    check_against_reference(make_inputs(shape, dtype, DEV), "triton", dtype)


@needs_gpu
@pytest.mark.parametrize("shape", [(2, 64, 128, 128), (4, 7, 97, 61)], ids=str)
@pytest.mark.parametrize("mode", ["batch", "instance"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_spade_gpu_shapes(shape, mode, dtype):
    g = torch.Generator().manual_seed(1)
    x, gamma, beta = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(3))
    leaves = [t.to(DEV, dtype).requires_grad_(True) for t in (x, gamma, beta)]
    ref = [t.clone().requires_grad_(True) for t in (x, gamma, beta)]
    out = mk.spade_norm(*leaves, mode=mode, backend="triton")
    r_out = mk.spade_norm(*ref, mode=mode, backend="reference")
    dy = torch.randn_like(r_out)
    out.backward(dy.to(DEV, dtype))
    r_out.backward(dy)
    assert rel_err(out.cpu(), r_out.detach()) < TOL[dtype]
    for a, b in zip(leaves, ref):
        assert rel_err(a.grad.cpu(), b.grad) < 4 * TOL[dtype]
