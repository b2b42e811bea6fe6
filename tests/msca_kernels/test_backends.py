import pytest
import torch

import msca_kernels as mk


def test_every_backend_is_listed_with_a_reason():
    status = mk.available_backends()
    assert set(status) == {"reference", "cpu", "cuda", "triton"}
    assert status["reference"].available
    for name, s in status.items():
        assert isinstance(s.reason, str) and s.reason, name


def test_cpu_backend_is_built():
    # The CPU kernels are always built (setup.py); a silent build failure must not turn the
    # kernel tests into skips.
    assert mk.available_backends()["cpu"], mk.available_backends()["cpu"].reason


def test_auto_picks_cpu_for_cpu_float_tensors():
    from msca_kernels import backends
    assert backends.resolve("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert backends.resolve("auto", torch.device("cpu"), torch.float64) == "cpu"
    assert backends.resolve("auto", torch.device("cpu"), torch.bfloat16) == "reference"


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_unavailable_backend_error_says_why(name):
    status = mk.available_backends()[name]
    if status:
        pytest.skip(f"{name} runs here")
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match=f"backend: '{name}' cannot run here"):
        mk.msca_attention(x, x, x, torch.randn(2, 4), torch.randn(2, 2), backend=name)
    with pytest.raises(ValueError, match=f"backend: '{name}' cannot run here"):
        mk.spade_norm(x, x, x, backend=name)


def test_unknown_backend():
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="backend"):
        mk.msca_attention(x, x, x, torch.randn(2, 4), torch.randn(2, 2), backend="fast")
