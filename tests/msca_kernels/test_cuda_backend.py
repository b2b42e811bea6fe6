"""The CUDA C++ backend on the cases its kernels are organised around (GPU only).

The shared tests (test_msca.py, test_spade.py) already run backend="cuda" on every shape and
dtype; these add the cases that exercise the kernels' own structure: several 64-position tiles
per block (online-softmax rescaling across tiles and the ordered merge of the split partials),
tails of the last tile, the 16-byte vector path (positions a multiple of 8) next to the scalar
one, K = 64 (more than 48 KiB of shared memory in float64), SPADE rows longer than one
16384-element segment, float64 end to end, and bitwise reproducibility.
"""
import pytest
import torch

import msca_kernels as mk
from conftest import TOL, rel_err
from test_msca import check_against_reference, make_inputs, run
from test_spade import compare, make

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not mk.available_backends()["cuda"],
                       reason=f"cuda: {mk.available_backends()['cuda'].reason}"),
]

DEV = torch.device("cuda")

# (B, N, M2, M1, K, H2, W2, H1, W1)
MSCA_SHAPES = [
    (4, 40, 24, 33, 16, 96, 100, 64, 72),  # ~150 exemplar tiles over fewer blocks; vec path
    (3, 17, 9, 11, 8, 75, 77, 61, 67),     # odd sizes: scalar path, partial last tiles
    (1, 70, 35, 40, 5, 1, 1, 130, 1),      # channels over two 32-row chunks, 1x1 exemplar
    (2, 8, 4, 6, 64, 16, 24, 8, 8),        # K = 64
]


@pytest.mark.parametrize("shape", MSCA_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
def test_msca_cuda_tiles_and_splits(shape, dtype):
    check_against_reference(make_inputs(shape, dtype, DEV), "cuda", dtype)


def test_msca_cuda_gradcheck_float64():
    shape = (2, 3, 2, 3, 2, 2, 3, 3, 2)
    inputs = make_inputs(shape, torch.float64, DEV)
    names = list(inputs)
    leaves = [inputs[n].requires_grad_(True) for n in names]
    f = lambda *xs: mk.msca_attention(backend="cuda", **dict(zip(names, xs)))  # noqa: E731
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-7)


def test_msca_cuda_bitwise_reproducible():
    shape = (2, 40, 24, 33, 16, 96, 100, 64, 72)
    inputs = make_inputs(shape, torch.float32, DEV)
    g = torch.randn(2, 40, 64, 72, device=DEV)
    a, ga = run(inputs, "cuda", g)
    b, gb = run(inputs, "cuda", g)
    assert torch.equal(a, b)
    for n in ga:
        assert torch.equal(ga[n], gb[n]), n


def test_msca_cuda_masked_rows_across_tiles():
    # A map whose spatial logits are -inf everywhere (over many tiles and blocks) attends to
    # nothing: V = 0 for it, and no NaN anywhere in the gradients.
    shape = (2, 12, 6, 7, 4, 40, 50, 9, 11)
    inputs = make_inputs(shape, torch.float32, DEV)
    inputs["spatial_bias"][:, 2] = float("-inf")
    out, grads = run(inputs, "cuda", torch.ones(2, 12, 9, 11, device=DEV))
    assert torch.isfinite(out).all()
    for name, gr in grads.items():
        assert not torch.isnan(gr).any(), name


def test_msca_cuda_more_than_64_maps_is_a_value_error():
    inputs = make_inputs((1, 4, 2, 3, 65, 5, 6, 4, 4), torch.float32, DEV)
    with pytest.raises(ValueError, match="phi_weight.*at most 64"):
        mk.msca_attention(backend="cuda", **inputs)


def test_msca_cuda_shared_memory_short_is_a_value_error():
    # float64, K = 64: the backward's exemplar kernel needs 119808 bytes per block, more than
    # the 99 KiB of sm_86/89/120 (enough on sm_80/90); where short, a ValueError naming K and
    # the limit before any launch, at the forward already when autograd records it (the
    # emulator tests pin the sizes and the check without a GPU)
    props = torch.cuda.get_device_properties(DEV)
    optin = getattr(props, "shared_memory_per_block_optin", None)
    if optin is None:
        pytest.skip("this torch does not report the shared-memory opt-in limit")
    inputs = make_inputs((1, 4, 2, 3, 64, 5, 6, 4, 4), torch.float64, DEV)
    if optin >= 119808:
        check_against_reference(inputs, "cuda", torch.float64)
        return
    leaves = {k: v.requires_grad_(True) for k, v in inputs.items()}
    with torch.no_grad():  # evaluation: the forward alone fits (70144 bytes)
        mk.msca_attention(backend="cuda", **leaves)
    with pytest.raises(ValueError,
                       match=r"phi_weight: K = 64 .*shared memory.*backward.*K <= 52"):
        mk.msca_attention(backend="cuda", **leaves)


@pytest.mark.parametrize("mode", ["batch", "instance"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 130, 131), (2, 4, 128, 160)], ids=str)
def test_spade_cuda_long_rows(shape, mode, dtype):
    # rows of 17030 and 20480 elements: two segments each, odd and vector-aligned
    compare(make(shape, dtype, DEV, offset=3.0), "cuda", dtype, mode=mode)


def test_spade_cuda_gradcheck_float64():
    t = [x.requires_grad_(True) for x in make((2, 3, 3, 4), torch.float64, DEV)]
    for mode in ("batch", "instance"):
        assert torch.autograd.gradcheck(
            lambda x, g, b: mk.spade_norm(x, g, b, mode=mode, backend="cuda"), t)


def test_spade_cuda_bitwise_reproducible():
    x, gamma, beta = make((4, 8, 200, 200), torch.float32, DEV)
    a = mk.spade_norm(x, gamma, beta, backend="cuda")
    b = mk.spade_norm(x, gamma, beta, backend="cuda")
    assert torch.equal(a, b)
    assert rel_err(a.cpu(), mk.spade_norm(x.cpu().double(), gamma.cpu().double(),
                                          beta.cpu().double(), backend="reference")) \
        < TOL[torch.float32]
