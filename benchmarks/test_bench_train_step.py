"""One full training step (generator and discriminator) at the demo config, per backend.

The synthesis issue's "a full training step with backend cpu is faster than with backend
reference": the step of the last training stage (patch cross-reconstruction plus global
self-reconstruction, so G, D and the VGG losses run twice) with configs/demo_train.json's
model, batch and sizes; only the kernel backend of every MSCA and SPADE layer differs. The
trainer's own step is timed, data preparation included (it is the same for both backends).

Two clocks, because at the demo's size the convolutions take most of the step and the kernels'
share is a few per cent, less than the wall-clock noise of a shared 2-core machine:
- `wall`: perf_counter with torch's default threads, the number a user sees on a quiet machine;
- `cpu_time`: process CPU time with one torch thread, which counts the work done and not the
  time spent waiting for a core that another process holds.

    .venv/bin/python -m pytest benchmarks/test_bench_train_step.py -q

extra_info op="train_step"; benchmarks.report prints the rows in their own table.
"""
from __future__ import annotations

import os
import tempfile
import time
import warnings

import pytest
import torch

import msca_kernels as mk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# pytest-benchmark's own timer option, one per parametrisation.
CLOCKS = [pytest.param("wall", marks=pytest.mark.benchmark(timer=time.perf_counter), id="wall"),
          pytest.param("cpu_time", marks=pytest.mark.benchmark(timer=time.process_time),
                       id="cpu_time")]


def _why_not(backend: str) -> str | None:
    status = mk.available_backends().get(backend)
    if not status:
        return f"{backend}: {getattr(status, 'reason', 'unavailable')}"
    return None


@pytest.fixture
def one_thread_for_cpu_time(clock):
    """cpu_time runs torch on one thread (restored after): no core time spent spinning."""
    threads = torch.get_num_threads()
    if clock == "cpu_time":
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("clock", CLOCKS)
def test_train_step_demo(benchmark, clock, backend, one_thread_for_cpu_time):
    why = _why_not(backend)
    if why:
        pytest.skip(why)
    from msca.models import VGGWeightsWarning
    from msca.train import Trainer, load_config

    opt, settings = load_config(os.path.join(REPO, "configs", "demo_train.json"),
                                [f"backend={backend}"])
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", VGGWeightsWarning)
        torch.manual_seed(0)  # same weights and batches for both backends
        trainer = Trainer(opt, settings, tmp, progress=False)
        trainer.step = trainer.patch_end  # the heaviest stage: patch + global tasks
        assert trainer.stage == "patch_global"
        trainer.train_step()  # warm-up (allocations, first-call dispatch)
        benchmark.extra_info.update(op="train_step", case="demo", mode="fwdbwd",
                                    backend=backend, device="cpu", target=backend,
                                    clock=clock, threads=torch.get_num_threads(),
                                    batch_size=opt.batch_size, crop_size=opt.crop_size)
        benchmark.pedantic(trainer.train_step, rounds=10, iterations=1, warmup_rounds=1)
