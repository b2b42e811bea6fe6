"""Host-side cost per call of the public entry points, on tiny CPU tensors.

The kernels do almost nothing at these sizes, so the time is the Python glue: argument checks,
backend selection, casts, the custom-op dispatch and its autograd wrapper. Not a test (timings
on a shared machine are noise for an assertion); run it by hand and copy the table:

    python benchmarks/dispatch_overhead.py [--repeat 2000]

Each row is the median over 5 rounds of `repeat` calls, in microseconds of this process's CPU
time per call (time.process_time, one torch thread): on a shared machine wall time mostly
measures the other processes.
"""
from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

import msca_kernels as mk
from msca_kernels import msca as _msca

B, N, M, K, S = 1, 4, 4, 2, 4


def _inputs(requires_grad: bool = False):
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g).requires_grad_(requires_grad)  # noqa: E731
    return dict(fx2=t(B, N, S, S), fc2=t(B, M, S, S), fc1=t(B, M, S, S),
                phi_weight=t(K, N + M) * 0.1, psi_weight=t(K, M) * 0.1,
                mask=torch.rand(B, K, generator=g))


def _cases():
    x = _inputs()
    xg = _inputs(requires_grad=True)
    sx = torch.randn(2, 4, S, S)
    sg, sb = torch.randn_like(sx), torch.randn_like(sx)
    yield "msca _validate only", lambda: _msca._validate(
        x["fx2"], x["fc2"], x["fc1"], x["phi_weight"], x["psi_weight"], x["mask"], None, None,
        None, None, False)
    yield "msca cpu forward (no grad)", lambda: mk.msca_attention(**x, backend="cpu")
    yield "msca cpu forward, inputs require grad", lambda: mk.msca_attention(**xg, backend="cpu")
    yield "msca reference forward (no grad)", lambda: mk.msca_attention(**x, backend="reference")
    yield "spade_norm cpu forward (no grad)", lambda: mk.spade_norm(sx, sg, sb, backend="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {args.repeat} calls x 5 rounds, 1 thread, CPU time\n")
    print("| call | us per call |\n|---|---|")
    for name, fn in _cases():
        fn()  # warm-up: first-call imports and registrations
        rounds = timeit.repeat(fn, number=args.repeat, repeat=5, timer=time.process_time)
        print(f"| {name} | {statistics.median(rounds) / args.repeat * 1e6:.1f} |")


if __name__ == "__main__":
    main()
