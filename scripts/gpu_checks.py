"""The Python steps of `make gpu-check` (scripts/gpu_check.sh): large cases and a profile.

    python scripts/gpu_checks.py big     OUT   # 1024x1024 and > 2^31-element cases
    python scripts/gpu_checks.py profile OUT   # per-kernel table at 512x512, syncs per call
    ... --dry-run                              # the same code on CPU at tiny sizes (CI)

Each step writes OUT/<step>.md and exits 1 when a check fails. --dry-run runs every line of
the logic on CPU tensors with tiny shapes and the backends that exist there, so that the first
GPU run cannot die of a typo; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

import msca_kernels as mk
from msca_kernels import reference


def gpu_backends(dry: bool) -> list[str]:
    if dry:
        return ["cpu"]
    status = mk.available_backends()
    return [b for b in ("triton", "cuda") if status[b]]


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def msca_inputs(B, N, M, K, hw, dtype, dev, gen):
    r = lambda *s: torch.randn(*s, generator=gen, device=dev, dtype=dtype)  # noqa: E731
    return dict(fx2=r(B, N, hw, hw), fc2=r(B, M, hw, hw), fc1=r(B, M, hw, hw),
                phi_weight=r(K, N + M) / (N + M) ** 0.5, psi_weight=r(K, M) / M ** 0.5,
                mask=torch.rand(B, K, generator=gen, device=dev, dtype=dtype))


def big(out: Path, dry: bool) -> int:
    dev = torch.device("cpu" if dry else "cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    lines, failures = ["# gpu-check: large cases", ""], 0

    def record(name, err, tol, secs):
        nonlocal failures
        ok = err < tol
        failures += not ok
        lines.append(f"| {name} | {err:.2e} | {tol:.0e} | {'ok' if ok else 'FAIL'} | {secs:.1f} |")

    lines += ["| case | rel. error | tol | result | s |", "|---|---|---|---|---|"]
    # MSCA at 1024x1024 (dry: 24x24), forward and backward against the reference in float64 on
    # the same device; float32 inputs.
    hw = 24 if dry else 1024
    t = msca_inputs(1, 64, 64, 16, hw, torch.float32, dev, gen)
    ref_leaves = {k: v.double().requires_grad_(True) for k, v in t.items()}
    ref = reference.msca_attention(**ref_leaves)
    g = torch.randn_like(ref)
    ref.backward(g)
    for be in gpu_backends(dry):
        leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}
        t0 = time.perf_counter()
        o = mk.msca_attention(**leaves, backend=be)
        o.backward(g.float())
        if not dry:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        record(f"msca {hw}x{hw} {be} out", rel(o, ref), 2e-5, secs)
        for n in ("fx2", "fc2", "fc1", "phi_weight"):
            record(f"msca {hw}x{hw} {be} d{n}", rel(leaves[n].grad, ref_leaves[n].grad), 8e-5, 0)
    del ref_leaves, ref, g
    # Tensors over 2^31 elements (dry: tiny): the last batch item is compared with the same
    # computation on that item alone, which has small offsets. An overflowing 32-bit offset
    # reads or writes another item's memory.
    sx = (2, 3, 5, 7) if dry else (16, 256, 1024, 1024)      # SPADE x, 2^32 elements fp16
    dt = torch.float32 if dry else torch.float16
    for be in gpu_backends(dry):
        x = torch.randn(*sx, generator=gen, device=dev, dtype=dt)
        gm = torch.randn(*sx, generator=gen, device=dev, dtype=dt)
        bt = torch.randn(*sx, generator=gen, device=dev, dtype=dt)
        t0 = time.perf_counter()
        y = mk.spade_norm(x, gm, bt, mode="instance", backend=be)
        y_last = mk.spade_norm(x[-1:], gm[-1:], bt[-1:], mode="instance", backend=be)
        secs = time.perf_counter() - t0
        record(f"spade instance {tuple(sx)} {dt} {be}, last item", rel(y[-1:], y_last), 1e-6,
               secs)
        del x, gm, bt, y, y_last
    sm = (2, 3, 4, 4) if dry else (9, 64, 2048, 2048)          # MSCA fx2, 2.4e9 elements fp16
    for be in gpu_backends(dry):
        B, N, hw2 = sm[0], sm[1], sm[2]
        t = msca_inputs(B, N, 16 if not dry else 3, 8, hw2, dt, dev, gen)
        t0 = time.perf_counter()
        o = mk.msca_attention(**t, backend=be)
        o_last = mk.msca_attention(**{k: v[-1:] if v.dim() > 2 or k == "mask" else v
                                      for k, v in t.items()}, backend=be)
        secs = time.perf_counter() - t0
        record(f"msca fx2 {tuple(sm)} {dt} {be}, last item", rel(o[-1:], o_last), 1e-6, secs)
        del t, o, o_last
    (out / "big.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


def profile(out: Path, dry: bool) -> int:
    """Per-kernel device time of MSCA forward+backward at 512x512 (B=1, N=M=64, K=16, fp32),
    and the host-device synchronisations per call (torch's sync debug mode)."""
    from torch.profiler import ProfilerActivity, profile as prof

    dev = torch.device("cpu" if dry else "cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    hw = 16 if dry else 512
    t = msca_inputs(1, 64, 64, 16, hw, torch.float32, dev, gen)
    lines = [f"# gpu-check: profile, MSCA {hw}x{hw} B=1 N=M1=M2=64 K=16 float32", ""]
    acts = [ProfilerActivity.CPU] + ([] if dry else [ProfilerActivity.CUDA])
    for be in gpu_backends(dry):
        leaves = {k: v.clone().requires_grad_(True) for k, v in t.items()}

        def step():
            o = mk.msca_attention(**leaves, backend=be)
            o.backward(torch.ones_like(o))

        for _ in range(3):  # warm-up (autotuning, compilation)
            step()
        syncs = 0
        if not dry:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        if not dry:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        reps = 10
        with prof(activities=acts) as p:
            for _ in range(reps):
                step()
            if not dry:
                torch.cuda.synchronize()
        lines += [f"## {be}: {syncs} synchronising call(s) per forward+backward", "",
                  "| kernel | calls/step | us/step |", "|---|---|---|"]
        rows = []
        for e in p.key_averages():
            dev_us = getattr(e, "device_time_total", 0) if not dry else e.cpu_time_total
            if dry and not e.key.startswith(("msca", "aten::")):
                continue
            if not dry and dev_us == 0:
                continue
            rows.append((dev_us / reps, e.count / reps, e.key))
        for us, calls, key in sorted(rows, reverse=True)[:25]:
            lines.append(f"| {key[:80]} | {calls:g} | {us:.1f} |")
        lines.append("")
    (out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["big", "profile"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    a = ap.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_checks: no CUDA GPU visible to torch (use --dry-run on CPU)")
    a.out.mkdir(parents=True, exist_ok=True)
    return {"big": big, "profile": profile}[a.step](a.out, a.dry_run)


if __name__ == "__main__":
    sys.exit(main())
