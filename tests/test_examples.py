"""The examples run, at small sizes, and show what they claim."""
from __future__ import annotations

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spade_generator_swap_runs_and_matches(capsys):
    example = load_example("spade_generator_swap")
    assert example.main(["--size", "32", "--batch", "2", "--width", "16", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "eval mode" in out and "train step" in out and "eval forward" in out
    r = example.compare(size=32, batch=2, width=16, repeats=1)
    # float32 through a few layers: the fused norm agrees with BatchNorm + (1 + gamma) x + beta
    assert r["eval_max_abs_diff"] < 1e-4 and r["train_max_abs_diff"] < 1e-4
    assert r["grad_rel_diff"] < 1e-4 and r["param_grad_rel_diff"] < 1e-3
    assert all(r[k] > 0 for k in r if k.endswith("_s"))


def test_the_swapped_generator_really_uses_the_fused_layer():
    example = load_example("spade_generator_swap")
    import msca_kernels

    fused = example.Generator(12, 16, norm=example.fused_spade)
    plain = example.Generator(12, 16)
    assert any(isinstance(m, msca_kernels.nn.SPADE) for m in fused.modules())
    assert not any(isinstance(m, msca_kernels.nn.SPADE) for m in plain.modules())
    # a different layout of weights is refused, so strict=True is a real check
    wrong = example.Generator(12, 32, norm=example.fused_spade)
    with pytest.raises(RuntimeError):
        wrong.load_state_dict(plain.state_dict(), strict=True)
