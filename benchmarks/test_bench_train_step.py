"""One full training step (generator and discriminator) at the demo config, backend cpu
against backend reference, measured in pairs.

The synthesis issue's "a full training step with backend cpu is faster than with backend
reference": the step of the last training stage (patch cross-reconstruction plus global
self-reconstruction, so G, D and the VGG losses run twice) with configs/demo_train.json's
model, batch and sizes; only the kernel backend of every MSCA and SPADE layer differs. The
trainer's own step is timed, data preparation included (it is the same for both backends).

At the demo's size the convolutions take most of the step and the kernels' share is a few per
cent, less than the step-to-step noise of a shared 2-core machine (single steps vary by +-8%).
Two separate timing runs would compare noise with noise, so the two trainers (same seed, same
weights) live in one process and take turns, reference, cpu, cpu, reference in every round:
drift in the machine's speed hits both alike, and each round gives one ratio. The report
gives the median step of each backend, the mean of the per-round ratios with its standard
error, and in how many rounds cpu was faster. Two clocks:
- `wall`: perf_counter with torch's default threads, the number a user sees on a quiet machine;
- `cpu_time`: process CPU time with one torch thread, which counts the work done and not the
  time spent waiting for a core that another process holds.

    .venv/bin/python -m pytest benchmarks/test_bench_train_step.py -q

extra_info op="train_step"; benchmarks.report prints the rows in their own table.
"""
from __future__ import annotations

import os
import statistics
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


ROUNDS = 40
BACKENDS = ("reference", "cpu")


def _trainer(backend: str, tmp: str):
    from msca.train import Trainer, load_config

    opt, settings = load_config(os.path.join(REPO, "configs", "demo_train.json"),
                                [f"backend={backend}"])
    torch.manual_seed(0)  # same weights and first batches for both backends
    trainer = Trainer(opt, settings, tmp, progress=False)
    trainer.step = trainer.patch_end  # the heaviest stage: patch + global tasks
    assert trainer.stage == "patch_global"
    trainer.train_step()  # warm-up (allocations, first-call dispatch)
    return trainer, opt


@pytest.mark.parametrize("clock", CLOCKS)
def test_train_step_demo(benchmark, clock, one_thread_for_cpu_time):
    for backend in BACKENDS:
        why = _why_not(backend)
        if why:
            pytest.skip(why)
    from msca.models import VGGWeightsWarning

    timer = time.perf_counter if clock == "wall" else time.process_time
    times = {b: [] for b in BACKENDS}
    ratios = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore", VGGWeightsWarning)
        trainers = {}
        for b in BACKENDS:
            trainers[b], opt = _trainer(b, os.path.join(tmp, b))

        def timed(b):
            t0 = timer()
            trainers[b].train_step()
            dt = timer() - t0
            times[b].append(dt)
            return dt

        def one_round():
            ref = timed("reference")
            cpu = timed("cpu") + timed("cpu")
            ref += timed("reference")
            ratios.append(ref / cpu)

        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    n = len(ratios)
    mean = statistics.fmean(ratios)
    benchmark.extra_info.update(
        op="train_step", case="demo", mode="fwdbwd", device="cpu", clock=clock,
        threads=torch.get_num_threads(), batch_size=opt.batch_size, crop_size=opt.crop_size,
        rounds=n, median_reference_s=statistics.median(times["reference"]),
        median_cpu_s=statistics.median(times["cpu"]), ratio_mean=mean,
        ratio_sem=statistics.stdev(ratios) / n ** 0.5 if n > 1 else None,
        cpu_faster_rounds=sum(r > 1 for r in ratios), ratios=ratios)
