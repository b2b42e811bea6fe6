"""Every kernel backend of spade_norm against the reference (unfused PyTorch)."""
import pytest
import torch

import msca_kernels as mk
from conftest import TOL, device_for, dtypes_for, rel_err

# (5, 4, 1, 1): 1x1 maps with batch statistics over 5 values. B=2 would be degenerate: two
# values normalise to exactly -1 and +1 whatever x is, so dx is zero up to eps and a relative
# error against it measures rounding noise only.
SHAPES = [(3, 5, 7, 9), (5, 4, 1, 1), (2, 64, 16, 16), (1, 3, 31, 17)]


def make(shape, dtype, device, offset=0.0):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + offset
    gamma = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5
    beta = torch.randn(*shape, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, gamma, beta)]


def fwd_bwd(tensors, backend, grad_out, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = mk.spade_norm(*leaves, backend=backend, **kw)
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves]


def compare(tensors, backend, dtype, tol=None, **kw):
    tol = tol or TOL[dtype]
    ref_t = [t.detach().double().cpu() for t in tensors]
    ref_kw = {k: (v.detach().double().cpu().clone() if isinstance(v, torch.Tensor) else v)
              for k, v in kw.items()}
    grad_out = torch.randn_like(ref_t[0])
    ref_out, ref_grads = fwd_bwd(ref_t, "reference", grad_out, **ref_kw)
    out, grads = fwd_bwd(tensors, backend, grad_out.to(tensors[0]), **kw)
    assert out.dtype == dtype
    assert rel_err(out.cpu(), ref_out) < tol, rel_err(out.cpu(), ref_out)
    for name, g, gr in zip(("x", "gamma", "beta"), grads, ref_grads):
        assert rel_err(g.cpu(), gr) < tol * 4, (name, rel_err(g.cpu(), gr))
    return ref_kw


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["batch", "instance"])
def test_matches_reference(backend, shape, mode):
    if mode == "instance" and shape[2] * shape[3] == 1:
        pytest.skip("instance statistics of a single value")
    for dtype in dtypes_for(backend):
        compare(make(shape, dtype, device_for(backend)), backend, dtype, mode=mode)


def test_large_mean_offset(backend):
    # |mean| >> std: a float32 E[x^2] - E[x]^2 would lose every digit of the variance.
    t = make((2, 6, 15, 13), torch.float32, device_for(backend), offset=1000.0)
    compare(t, backend, torch.float32, tol=2e-4)


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_running_stats_train_and_eval(backend, momentum):
    dev = device_for(backend)
    dtype = torch.float32
    t = make((3, 5, 7, 9), dtype, dev)
    rm = torch.randn(5, device=dev, dtype=dtype)
    rv = torch.rand(5, device=dev, dtype=dtype) + 0.5
    rm_ref, rv_ref = rm.double().cpu().clone(), rv.double().cpu().clone()
    # training: batch statistics used, running statistics updated like F.batch_norm does
    compare(t, backend, dtype, mode="batch", running_mean=rm, running_var=rv, momentum=momentum,
            training=True)
    ref_t = [x.double().cpu() for x in t]
    mk.reference.spade_norm(*ref_t, running_mean=rm_ref, running_var=rv_ref, momentum=momentum,
                            training=True)
    assert rel_err(rm.cpu(), rm_ref) < 1e-6 and rel_err(rv.cpu(), rv_ref) < 1e-6
    # evaluation: running statistics used, left unchanged, gradient through x only
    before = (rm.clone(), rv.clone())
    compare(t, backend, dtype, mode="batch", running_mean=rm, running_var=rv, training=False)
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])


def test_saves_no_normalised_copy(backend):
    # forward saves x, gamma, mean, rstd: nothing else of the size of x.
    dev = device_for(backend)
    x, gamma, beta = (t.requires_grad_(True) for t in make((2, 8, 16, 16), torch.float32, dev))
    big = []

    def pack(t):
        if t.numel() == x.numel():
            big.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mk.spade_norm(x, gamma, beta, backend=backend)
    assert len(big) == 2 and any(b is x or b.data_ptr() == x.data_ptr() for b in big)


def test_gradcheck_float64(backend):
    if torch.float64 not in dtypes_for(backend):
        pytest.skip(f"{backend} runs float64 only on the CPU backend")
    for mode in ("batch", "instance"):
        t = [x.requires_grad_(True) for x in make((2, 3, 3, 4), torch.float64, device_for(backend))]
        assert torch.autograd.gradcheck(
            lambda *a: mk.spade_norm(*a, mode=mode, backend=backend), t, eps=1e-6, atol=1e-7)
