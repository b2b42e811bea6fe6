"""`make triton-check`: compiles every Triton kernel for real GPUs on a machine without one.

The interpreter (TRITON_INTERPRET=1) runs the kernels' logic on CPU tensors but skips the GPU
compiler, so it cannot see what only a GPU build finds: a `tl.dot` shape or dtype the target
rejects, shared memory beyond the SM's, register spills. This script runs the host functions of
both ops on CPU tensors with the launch replaced by a recorder (so it gets each launch's exact
argument types and meta-parameters, as the GPU path would pass them), then compiles every
recorded kernel, for every autotuning configuration, to a cubin for sm_80 and sm_90 with
triton's own compiler, and runs `ptxas -v` on the PTX for registers and spills. Each kernel is
specialised on its arguments as triton's launcher would specialise that launch (16-byte
aligned pointers and integers divisible by 16 marked, integers equal to 1 made constants), so
the verdicts describe the binary a GPU runs for such a call.

    python -m msca_kernels.triton.aot_check [--archs 80,90] [--dtypes float32,float16,bfloat16]
    python -m msca_kernels.triton.aot_check --quick    # make test: first configuration only
    python -m msca_kernels.triton.aot_check --only '_msca_bwd.*K=64'   # some launches only

A configuration fits when it spills no registers and its shared memory is within the SM's
limit. The rule follows what triton's autotuner does at runtime: it times the configurations
the kernel's prune (triton's early_config_prune, e.g. msca.prune_backward) keeps, skipping
those that cannot launch (OutOfResources: too much shared memory), so a spilling kept one
would be timed and may win, a too big one never runs. Fails (exit 1) when a kernel does not
compile for an architecture; (full mode) when a kept configuration spills (FAIL); or (full
mode) when no configuration the autotuner would time for that launch and architecture fits
(the kept ones, or all of a kernel without a prune): the launch would fail. A kept
configuration that only exceeds shared memory is "skip" ("kept, too big for sm_80: autotuner
skips it"), as are the configurations that the prune drops (marked "pruned") and those that do
not fit in kernels without a prune. --quick
compiles only each kernel's first configuration that the autotuner would time (the first one
the prune keeps), leaves out the K = 64 case and fails on compile errors alone. Needs no GPU and no CUDA toolkit: triton's
own compiler and ptxas.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":  # must be decided before triton is imported
    sys.exit("triton-check: unset TRITON_INTERPRET; this compiles for the GPU")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import _common  # noqa: E402
from ._ttir import offsets_32bit  # noqa: E402

# Shared memory per block that a kernel may use (opt-in maximum), bytes.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}

_recorded: list[tuple] = []


def _record(kernel, grid, *args, **meta) -> None:
    _recorded.append((kernel, args, meta))


def _launches(dtype: torch.dtype, quick: bool = False) -> list[tuple[str, tuple, tuple, dict]]:
    """(case, kernel, args, meta) of every launch of both ops' forward and backward (quick:
    without the K = 64 case, whose compiles made --quick about 25 s of CPU slower)."""
    from . import msca as tm
    from . import spade as ts

    _recorded.clear()
    _common.launch = _record
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    cases = []
    # MSCA at the benchmark's widths (N = M1 = M2 = 64, K = 16) on 32x32 maps, where the
    # runtime marks every size divisible by 16 (as for any map whose sides are multiples of 4),
    # at odd widths and sizes with biases, where it marks none, and at K = 64, where each
    # backward pass runs as two launches (ROLE 1 and 2, msca.backward_roles) whose kept
    # configurations prune_backward claims spill-free (full mode only)
    msca_cases = [((64, 64, 64, 16), False, (1024, 1024)), ((17, 11, 9, 5), True, (300, 257))]
    if not quick:
        msca_cases.append(((64, 64, 64, 64), False, (1024, 1024)))
    for (N, M1, M2, K), biases, (P2, P1) in msca_cases:
        B = 2
        fx2, fc2, fc1 = r(B, N, P2), r(B, M2, P2), r(B, M1, P1)
        phi, psi = r(K, N + M2), r(K, M1)
        pb, qb, mask = r(K), r(K), r(B, K)
        sb, cb = (r(B, K, P2), r(B, K, P1)) if biases else (None, None)
        n0 = len(_recorded)
        out, V, lse = tm.triton_msca_fwd(fx2, fc2, fc1, phi, pb, psi, qb, mask, sb, cb)
        tm.triton_msca_bwd(out, fx2, fc2, fc1, phi, pb, psi, qb, mask, sb, cb, V, lse,
                           biases, biases)
        cases += [f"msca N={N} M1={M1} M2={M2} K={K}{' +biases' if biases else ''}"] * (
            len(_recorded) - n0)
    for instance in (False, True):
        x, gamma, beta = r(2, 16, 4096), r(2, 16, 4096), r(2, 16, 4096)  # 64x64 maps
        n0 = len(_recorded)
        out, mean, rstd = ts.triton_spade_norm_fwd(x, gamma, beta, None, None, instance, 1e-5)
        ts.triton_spade_norm_bwd(out, x, gamma, mean, rstd, instance, True)
        cases += [f"spade {'instance' if instance else 'batch'}"] * (len(_recorded) - n0)
    return [(c, *rec) for c, rec in zip(cases, _recorded)]


def _runtime_specialisation(fn, args: tuple, meta: dict, target: GPUTarget):
    """(signature, constexprs, attrs, options) exactly as triton's launcher derives them for
    fn[grid](*args, **meta) on `target`: the same binder and argument packing (JITFunction
    internals of the installed triton; checked against 3.9). So the binary compiled here is the
    one a launch with these arguments compiles: pointers 16-byte aligned and integers divisible
    by 16 carry tt.divisibility=16, integers equal to 1 become constants, bools are u1.
    Without it, a kernel compiles as if no argument were aligned (one case: 255 registers
    instead of 136)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    kwargs = dict(meta)
    # what JITFunction.run adds to the launch's keyword arguments before binding
    kwargs["debug"] = kwargs.get("debug", fn.debug) or triton.knobs.runtime.debug
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = triton.knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                          specialization, options)
    return signature, constexprs, attrs, options


def _describe(fn, signature: dict, constexprs: dict, attrs: dict) -> str:
    """Which arguments the compiled binary is specialised on, for the report."""
    names = fn.arg_names
    divisible = [names[path[0]] for path, a in attrs.items() if ["tt.divisibility", 16] in a]
    ones = [names[path[0]] for path, v in constexprs.items()
            if signature.get(names[path[0]]) == "constexpr" and not fn.params[path[0]].is_constexpr]
    out = f"16-divisible: {','.join(divisible) or '-'}"
    return out + (f"; ==1: {','.join(ones)}" if ones else "")


def _ptxas(ptx: str, arch: int) -> tuple[int, int]:
    """(registers, spill bytes) of the PTX's kernel from ptxas -v."""
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(arch).path  # the ptxas triton itself uses for this architecture
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        res = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}",
                              "-v", "-o", os.devnull, path], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip())
    regs = [int(m) for m in re.findall(r"Used (\d+) registers", res.stderr)]
    spills = [int(a) + int(b) for a, b in
              re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)]
    return max(regs, default=0), max(spills, default=0)


def kept_by_prune(tuner, args: tuple, meta: dict) -> list | None:
    """The configurations the autotuner would time for this launch: its early_config_prune
    called as triton's Autotuner.run calls it (all configurations, the positional arguments by
    name, the launch's keyword arguments). None when the kernel has no prune (or one
    configuration, which triton runs unpruned)."""
    prune = getattr(tuner, "early_config_prune", None)
    if prune is None or len(tuner.configs) <= 1:
        return None
    kept = prune(tuner.configs, dict(zip(tuner.arg_names, args)), **meta)
    if not kept:
        raise RuntimeError(f"{tuner.fn.__name__}: early_config_prune kept no configuration "
                           f"(triton's autotuner raises on this launch)")
    return kept


def verdict(spills: bool, smem_ok: bool, kept: bool | None, strict: bool) -> str:
    """A compiled configuration's verdict: "ok" (no spills, shared memory within the SM's),
    "FAIL" (strict, i.e. full mode: it spills although the kernel's prune keeps it for this
    launch, so the autotuner would time it and may pick it), "skip" (otherwise: the prune drops
    it, the kernel has no prune, or it only exceeds shared memory, which the autotuner skips at
    launch; whether some timed configuration fits is launch_fails' question)."""
    if not spills and smem_ok:
        return "ok"
    return "FAIL" if kept and spills and strict else "skip"


def launch_fails(timed_fit: list[bool], strict: bool) -> bool:
    """Whether a launch fails on an architecture: (strict) none of the configurations the
    autotuner would time fits (timed_fit: one bool per one that compiled, here or at an
    earlier identical launch; empty when none did, which counts as compile failures)."""
    return strict and bool(timed_fit) and not any(timed_fit)


def check(archs: list[int], dtypes: list[torch.dtype], quick: bool = False,
          only: str | None = None) -> int:
    """Compiles and judges the launches (those whose "kernel [case]" matches the regular
    expression `only`, if given); returns the number of failures."""
    failures = 0
    seen = {}  # compile key -> fits (no spill, shared memory within the limit)
    for dtype in dtypes:
        for case, kernel, args, meta in _launches(dtype, quick):
            tuner = kernel if isinstance(kernel, triton.runtime.Autotuner) else None
            fn = tuner.fn if tuner else kernel
            if only is not None and not re.search(only, f"{fn.__name__} [{case}]"):
                continue
            kept = kept_by_prune(tuner, args, meta) if tuner else None
            configs = tuner.configs if tuner else [None]
            if quick:  # the first configuration the autotuner would time
                configs = (kept if kept is not None else configs)[:1]
            for arch in archs:
                timed_fit = []  # the configurations the autotuner would time: fit?
                lines = []
                for cfg in configs:
                    full = dict(meta)
                    warps, stages = full.pop("num_warps", 4), full.pop("num_stages", 2)
                    if cfg is not None:
                        full.update(cfg.kwargs)
                        warps, stages = cfg.num_warps, cfg.num_stages
                    full.update(num_warps=warps, num_stages=stages)
                    target = GPUTarget("cuda", arch, 32)
                    sig, consts, attrs, options = _runtime_specialisation(fn, args, full,
                                                                          target)
                    key = (fn.__name__, arch, tuple(sorted(sig.items())),
                           tuple(sorted((k, str(v)) for k, v in consts.items())),
                           str(sorted(attrs.items())), warps, stages)
                    is_kept = None if kept is None else any(cfg is k for k in kept)
                    if key in seen:  # compiled and reported at an earlier identical launch
                        if is_kept is not False and seen[key] is not None:
                            timed_fit.append(seen[key])
                        continue
                    seen[key] = None  # a compile error: reported, counted once
                    label = (f"{fn.__name__} [{case}, {dtype}] sm_{arch} "
                             + " ".join(f"{k}={v}" for k, v in full.items()
                                        if k.startswith("BLOCK") or k == "ROLE")
                             + f" warps={warps} stages={stages}")
                    try:
                        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
                        ck = triton.compile(src, target=target, options=options.__dict__)
                        regs, spill = _ptxas(ck.asm["ptx"], arch)
                        narrow = offsets_32bit(ck.asm["ttir"])
                    except Exception as exc:  # noqa: BLE001 - report every compiler error
                        lines.append(f"  FAIL {label}: {type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}")
                        failures += 1
                        continue
                    smem = ck.metadata.shared
                    smem_ok = smem <= SMEM_LIMIT.get(arch, 99 * 1024)
                    seen[key] = spill == 0 and smem_ok
                    if is_kept is not False:
                        timed_fit.append(seen[key])
                    status = verdict(spill > 0, smem_ok, is_kept, strict=not quick)
                    failures += status == "FAIL"
                    pruned = {True: ", kept", False: ", pruned", None: ""}[is_kept]
                    if is_kept and spill == 0 and not smem_ok:
                        pruned += f", too big for sm_{arch}: autotuner skips it"
                    lines.append(f"  {status:4} {label}{pruned}: {regs} registers, "
                                 f"{spill} B spilled, {smem} B shared, {len(narrow)} 32-bit "
                                 f"pointer offsets ({_describe(fn, sig, consts, attrs)})")
                if not lines:
                    continue
                print("\n".join(lines))
                if launch_fails(timed_fit, strict=not quick):
                    which = "configuration" if kept is None else "kept configuration"
                    print(f"  FAIL {fn.__name__} [{case}, {dtype}] sm_{arch}: no {which} "
                          f"without spills within shared memory (the launch would fail)")
                    failures += 1
    return failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="80,90", help="compute capabilities (default 80,90)")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--quick", action="store_true",
                    help="only each kernel's first configuration that its prune keeps")
    ap.add_argument("--only", metavar="REGEX",
                    help="only the launches whose 'kernel [case]' matches, e.g. "
                         "'_msca_bwd.*K=64'")
    a = ap.parse_args(argv)
    archs = [int(x) for x in a.archs.split(",")]
    dtypes = [getattr(torch, d) for d in a.dtypes.split(",")]
    failures = check(archs, dtypes, a.quick, a.only)
    print(f"triton-check: {'FAILED, ' + str(failures) + ' problem(s)' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
