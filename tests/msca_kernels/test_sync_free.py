"""The hot path reads no tensor data on the host: no device-to-host synchronisation per call.

Pinned without a GPU under torch's FakeTensorMode: fake tensors carry shape, dtype and device
(here 'cuda', which fake mode allows without a GPU) but no data, so anything that reads values
on the host (.item(), bool(), float(), .tolist(), a Python `if` on a tensor) raises
DataDependentOutputException. Each public entry point, the custom-op dispatch and the nn
modules run a forward on fake CUDA tensors; the backward glue runs on fake CPU tensors (fake
CUDA tensors cannot require grad in a CPU-only torch build). A planted data read is caught.
"""
import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

import msca_kernels as mk
from msca_kernels import _checks, backends, functions

B, N, M1, M2, K, H2, W2, H1, W1 = 2, 8, 8, 8, 4, 6, 6, 5, 5


def _msca_inputs(device, requires_grad=False):
    r = lambda *s: torch.randn(*s, device=device, requires_grad=requires_grad)  # noqa: E731
    return dict(fx2=r(B, N, H2, W2), fc2=r(B, M2, H2, W2), fc1=r(B, M1, H1, W1),
                phi_weight=r(K, N + M2), psi_weight=r(K, M1),
                mask=torch.rand(B, K, device=device), phi_bias=r(K), psi_bias=r(K))


def _spade_inputs(device, requires_grad=False):
    return [torch.randn(B, 4, H1, W1, device=device, requires_grad=requires_grad)
            for _ in range(3)]


@pytest.fixture
def fused_backends(monkeypatch):
    """Backends whose host code runs here on fake tensors: the C++ ops (their fake kernels stand
    for the CUDA ones, which this build may lack) and, where importable, triton (its ops' fake
    implementation is the host function without launches, sized as on a 132-SM GPU)."""
    names = []
    if mk.available_backends()["cpu"]:
        names.append("cuda")  # the op glue shared by cpu and cuda; resolve() is bypassed below
    if mk.available_backends()["triton"]:
        from msca_kernels.triton import _common

        monkeypatch.setattr(_common, "num_programs",
                            lambda device, work, per_sm=2: max(1, min(work, per_sm * 132)))
        names.append("triton")
    if not names:
        pytest.skip("neither the C++ extension nor triton is available")
    # resolve() would refuse 'cuda' without CUDA kernels; the checks it makes are metadata only
    monkeypatch.setattr(backends, "resolve", lambda backend, device, dtype: backend)
    monkeypatch.delenv(_checks.CHECK_VALUES_ENV, raising=False)
    return names


def _fake_cuda_forward(name):
    with FakeTensorMode():
        x = _msca_inputs("cuda")
        out = mk.msca_attention(**x, backend=name)
        assert out.shape == (B, N, H1, W1) and out.device.type == "cuda"
        out = functions.MSCAFunction.apply(*x.values(), None, None, name)
        assert out.shape == (B, N, H1, W1)
        for mode in ("batch", "instance"):
            y = mk.spade_norm(*_spade_inputs("cuda"), mode=mode, backend=name)
            assert y.shape == (B, 4, H1, W1) and y.device.type == "cuda"
        rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
        for training in (True, False):
            mk.spade_norm(*_spade_inputs("cuda"), running_mean=rm, running_var=rv,
                          training=training, backend=name)


def test_forward_reads_no_device_data(fused_backends):
    for name in fused_backends:
        _fake_cuda_forward(name)


def _on_fake_cuda(module):
    """module with every parameter and buffer replaced by a fake CUDA tensor of its shape and
    dtype (a CPU-only torch cannot .to('cuda') a module, fake or not), not requiring grad."""
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for key, t in store.items():
                if t is not None:
                    fake = torch.empty(t.shape, dtype=t.dtype, device="cuda")
                    is_param = isinstance(t, torch.nn.Parameter)
                    store[key] = torch.nn.Parameter(fake, False) if is_param else fake
    return module


def test_nn_modules_read_no_device_data(fused_backends):
    for name in fused_backends:
        with FakeTensorMode():
            msca = _on_fake_cuda(mk.nn.MSCA(N, M1, M2, K, backend=name, logit_scale=2.0))
            x = _msca_inputs("cuda")
            assert msca(x["fx2"], x["fc2"], x["fc1"]).shape == (B, N, H1, W1)
            spade = _on_fake_cuda(mk.nn.SPADE("spadebatch3x3", 4, 3, nhidden=8, backend=name))
            assert spade(torch.randn(B, 4, H1, W1, device="cuda"),
                         torch.randn(B, 3, H1, W1, device="cuda")).shape == (B, 4, H1, W1)


def test_backward_reads_no_data(fused_backends):
    # fake CPU tensors: the value checks skip them (no data), everything else is as on a GPU
    for name in fused_backends:
        with FakeTensorMode():
            x = _msca_inputs("cpu", requires_grad=True)
            mk.msca_attention(**x, backend=name).sum().backward()
            assert x["fx2"].grad.shape == x["fx2"].shape
            functions.MSCAFunction.apply(*x.values(), None, None, name).sum().backward()
            s = _spade_inputs("cpu", requires_grad=True)
            mk.spade_norm(*s, backend=name).sum().backward()
            functions.SPADENormFunction.apply(*s, "instance", 1e-5, None, None, 0.1, True,
                                              name).sum().backward()
            assert s[0].grad.shape == s[0].shape


def test_a_planted_data_read_is_caught(fused_backends, monkeypatch):
    # the harness can fail: a value check that reads device data on every call raises here
    monkeypatch.setattr(_checks, "values_readable", lambda t: True)
    with pytest.raises(DataDependentOutputException):
        _fake_cuda_forward(fused_backends[0])


class _DeviceTensorStandIn:
    """What values_readable looks at, for a tensor on a GPU (none is at hand here)."""
    is_cpu = False
    is_meta = False


def test_device_value_checks_are_opt_in(monkeypatch):
    monkeypatch.delenv(_checks.CHECK_VALUES_ENV, raising=False)
    assert not _checks.values_readable(_DeviceTensorStandIn())
    monkeypatch.setenv(_checks.CHECK_VALUES_ENV, "1")
    assert _checks.values_readable(_DeviceTensorStandIn())
    assert not _checks.values_readable(torch.empty(2, device="meta"))
    with FakeTensorMode():
        assert not _checks.values_readable(torch.empty(2))
    assert _checks.values_readable(torch.empty(2))  # real CPU data: always checked


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_cpu_mask_values_still_checked(bad, monkeypatch):
    monkeypatch.delenv(_checks.CHECK_VALUES_ENV, raising=False)
    x = _msca_inputs("cpu")
    x["mask"][1, 2] = bad
    with pytest.raises(ValueError, match=r"mask: expected values in \[0, 1\]"):
        mk.msca_attention(**x, backend="reference")


def test_empty_mask_has_no_values_to_check():
    with contextlib.nullcontext():
        _checks.in_unit_interval("mask", torch.empty(0, 3))
