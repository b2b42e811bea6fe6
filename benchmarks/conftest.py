"""Shared machinery of the benchmark suites.

Every benchmark runs once per *target*: a (backend, device) pair that can run here. The
reference backend runs on every device in use, so each kernel backend has a baseline measured on
the same device in the same session; speed-ups are always taken against that one. Unavailable
backends are left out of the parametrisation (the header says why) rather than skipped one
test at a time, so the output lists only what ran.

`run_case` (a fixture) does the timing with benchmark.pedantic, then one extra call for peak
memory, and fills benchmark.extra_info with what the report needs: the bytes the op must move
at least (docs/design.md sections 2 and 3), achieved GB/s against the copy bandwidth measured in
this session, and peak memory with and without the outputs and gradients the caller keeps.
"""
from __future__ import annotations

import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import msca_kernels as mk

from . import memory, report

# pedantic rounds: enough to fill --benchmark-max-time (default 1 s) but never fewer than
# --benchmark-min-rounds (default 5), so a 2 s case still gives a usable median.
MAX_ROUNDS = 200
MEM_REPEATS = 3


@dataclass(frozen=True)
class Target:
    backend: str
    device: torch.device

    @property
    def id(self) -> str:
        # The reference runs on several devices; kernel backends are tied to one.
        return f"reference-{self.device.type}" if self.backend == "reference" else self.backend


def _targets() -> list[Target]:
    status = mk.available_backends()
    out = [Target("reference", torch.device("cpu"))]
    if status["cpu"]:
        out.append(Target("cpu", torch.device("cpu")))
    if torch.cuda.is_available():
        out.append(Target("reference", torch.device("cuda")))
        for name in ("cuda", "triton"):
            if status[name]:
                out.append(Target(name, torch.device("cuda")))
    # triton under TRITON_INTERPRET=1 on CPU tensors is a correctness tool, not something to time.
    return out


TARGETS = _targets()

# Copy bandwidth per device type, measured once per session on first use (bytes/s).
_COPY_BW: dict[str, float] = {}


def copy_bandwidth(device: torch.device) -> float:
    if device.type not in _COPY_BW:
        _COPY_BW[device.type] = memory.copy_bandwidth(device)
    return _COPY_BW[device.type]


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        metafunc.parametrize("target", TARGETS, ids=[t.id for t in TARGETS])


def pytest_configure(config):
    # pytest-benchmark opens --benchmark-json for writing without creating its folder.
    path = config.getoption("benchmark_json", None)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def pytest_report_header(config):
    lines = [f"msca_kernels benchmarks: torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, targets: {', '.join(t.id for t in TARGETS)}"]
    for name, st in mk.available_backends().items():
        if not st:
            lines.append(f"  backend {name} not benchmarked: {st.reason}")
    if not memory.cpu_hwm_supported():
        lines.append("  /proc/self/clear_refs not writable: CPU peak memory is not measured")
    return lines


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _command(config) -> str:
    args = [sys.executable, "-m", "pytest", *config.invocation_params.args]
    return " ".join(shlex.quote(str(a)) for a in args)


def machine_summary(config=None) -> dict:
    """The header facts of the report; lands in the JSON's machine_info['msca_bench']."""
    info = {
        "cpu_model": report.cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "copy_gbps": {dev: bw / 1e9 for dev, bw in _COPY_BW.items()},
        "backends": {n: [bool(s), s.reason] for n, s in mk.available_backends().items()},
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    if config is not None:
        info["command"] = _command(config)
    return info


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["msca_bench"] = machine_summary(config)


# Cases that could not run at all (the GPU suite's dense attention beyond the memory of the
# device): pytest-benchmark records only what was timed, so they travel in the JSON beside it.
NOT_RUN: list[dict] = []


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if NOT_RUN:
        output_json["msca_not_run"] = list(NOT_RUN)


def pytest_terminal_summary(terminalreporter, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    rows = [b.as_dict(include_data=False) for b in bs.benchmarks if b]
    if not rows:
        return
    bw = {dev: v / 1e9 for dev, v in _COPY_BW.items()}
    terminalreporter.write_sep("-", "msca_kernels throughput (median; speed-up vs reference on "
                                    "the same device, this run)")
    for line in report.compact_table(rows, bw):
        terminalreporter.write_line(line)


def _timed(fn, device):
    """fn, then a device sync: CUDA launches are asynchronous, the timer must see the work."""
    if device.type == "cuda":
        def run(*args):
            fn(*args)
            torch.cuda.synchronize(device)
        return run
    return fn


@pytest.fixture
def run_case(benchmark, request):
    """Times fn(*setup()) with benchmark.pedantic, measures its peak memory, records info.

    setup() builds fresh arguments for every round outside the timed region (for the backward
    mode it runs the forward there). bytes_moved is the op's minimum traffic for the GB/s
    figure; kept_bytes is what the call leaves for its caller (output, input gradients), which
    the "peak beyond" figure subtracts (an int, or a callable evaluated after the memory
    measurement).
    """
    config = request.config

    def run(*, target: Target, op: str, case: str, mode: str, setup, fn, bytes_moved: int,
            kept_bytes, info: dict):
        device = target.device
        bw = copy_bandwidth(device)
        timed = _timed(fn, device)
        benchmark.group = f"{op} {case} {mode}"

        # One untimed call: warm-up (first-call set-up, page faults) and an estimate of the time
        # for choosing the number of rounds.
        args = setup()
        memory.sync(device)
        t0 = time.perf_counter()
        timed(*args)
        est = time.perf_counter() - t0
        del args
        # The options arrive as strings (a default) or as pytest-benchmark's decimal types.
        max_time = float(str(config.getoption("benchmark_max_time", "1.0")))
        min_rounds = int(str(config.getoption("benchmark_min_rounds", "5")))
        rounds = max(min_rounds, min(MAX_ROUNDS, math.ceil(max_time / max(est, 1e-9))))
        benchmark.pedantic(timed, setup=lambda: (setup(), {}), rounds=rounds, warmup_rounds=1)

        # Peak memory of further calls, inputs allocated and touched beforehand. On CPU the
        # figure moves by a few percent between calls (which glibc arena and which freed
        # blocks the threads' allocations land in), so take the median of three where a call
        # is cheap.
        peak = None
        if device.type == "cuda" or memory.cpu_hwm_supported():
            peaks = []
            for _ in range(MEM_REPEATS if est < 1.0 else 1):
                args = setup()
                peaks.append(memory.peak_bytes(lambda: fn(*args), device))
                del args
            peak = int(statistics.median(peaks))

        if callable(kept_bytes):  # depends on what the last call left behind (see spade)
            kept_bytes = kept_bytes()
        extra = benchmark.extra_info
        extra.update(info)
        extra.update(op=op, case=case, mode=mode, backend=target.backend,
                     device=device.type, target=target.id, bytes_moved=bytes_moved,
                     kept_bytes=kept_bytes, copy_gbps=bw / 1e9, rounds=rounds)
        if peak is not None:
            extra.update(peak_bytes=peak, peak_beyond_bytes=peak - kept_bytes)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:  # None under --benchmark-disable
            median = stats.stats.median
            extra.update(median_s=median, gbps=bytes_moved / median / 1e9,
                         frac_copy_bw=bytes_moved / median / bw)

    return run
