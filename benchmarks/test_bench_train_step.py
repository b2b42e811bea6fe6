"""One full training step (generator and discriminator) at the demo config, per backend.

The issue's "a full training step with backend cpu is faster than with backend reference": the
step of the last training stage (patch cross-reconstruction plus global self-reconstruction,
so G, D and the VGG losses run twice) with configs/demo_train.json's model, batch and sizes;
only the kernel backend of every MSCA and SPADE layer differs. The trainer's own step is
timed, data preparation included (it is the same for both backends).

    .venv/bin/python -m pytest benchmarks/test_bench_train_step.py -q

extra_info op="train_step" (benchmarks.report leaves it out of its kernel tables; compare the
two medians in the pytest-benchmark output, or in the JSON).
"""
from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch

import msca_kernels as mk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _why_not(backend: str) -> str | None:
    status = mk.available_backends().get(backend)
    if not status:
        return f"{backend}: {getattr(status, 'reason', 'unavailable')}"
    try:  # the SPADE kernel may be missing from a build that has the MSCA one
        mk.nn.SPADE("spadeinstance3x3", 4, 3, nhidden=4, backend=backend)(
            torch.randn(1, 4, 4, 4), torch.randn(1, 3, 4, 4))
    except NotImplementedError:
        return f"{backend}: this build of the extension has no SPADE kernel"
    return None


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_train_step_demo(benchmark, backend):
    why = _why_not(backend)
    if why:
        pytest.skip(why)
    from msca.models import VGGWeightsWarning
    from msca.train import Trainer, load_config

    opt, settings = load_config(os.path.join(REPO, "configs", "demo_train.json"),
                                [f"backend={backend}"])
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", VGGWeightsWarning)
        trainer = Trainer(opt, settings, tmp, progress=False)
        trainer.step = trainer.patch_end  # the heaviest stage: patch + global tasks
        assert trainer.stage == "patch_global"
        trainer.train_step()  # warm-up (allocations, first-call dispatch)
        benchmark.extra_info.update(op="train_step", case="demo", mode="fwdbwd",
                                    backend=backend, device="cpu", target=backend,
                                    batch_size=opt.batch_size, crop_size=opt.crop_size)
        benchmark.pedantic(trainer.train_step, rounds=8, iterations=1, warmup_rounds=1)
