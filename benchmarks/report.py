"""Turns a pytest-benchmark JSON of this suite into a markdown report.

    python -m benchmarks.report benchmarks/results/cpu.json benchmarks/results/cpu.md

Writes the markdown file and prints the same tables to stdout. Speed-ups and memory ratios are
taken against the reference backend on the same device in the same JSON, never across runs:
on a shared machine two runs can differ more than two backends do.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

MB = 1e6  # decimal, like DESIGN.md's "268 MB"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


# ---------------------------------------------------------------------------------------------
# rows


def _median(row: dict) -> float | None:
    stats = row.get("stats") or {}
    return stats.get("median", row.get("extra_info", {}).get("median_s"))


def _key(e: dict) -> tuple:
    """What makes two rows the same case, backend aside."""
    return (e.get("op"), e.get("case"), e.get("mode"), e.get("size"), e.get("norm"),
            e.get("device"))


def _rows(benchmarks: list[dict]) -> list[dict]:
    """Flat records with the derived columns: speed-up and memory ratio vs the reference."""
    recs = []
    for b in benchmarks:
        e = dict(b.get("extra_info") or {})
        if "op" not in e:
            continue
        e["median"] = _median(b)
        e["name"] = b.get("name")
        recs.append(e)
    ref = {_key(r): r for r in recs if r.get("backend") == "reference"}
    for r in recs:
        base = ref.get(_key(r))
        r["speedup"] = (base["median"] / r["median"]
                        if base and base.get("median") and r.get("median") else None)
        rb, bb = r.get("peak_beyond_bytes"), (base or {}).get("peak_beyond_bytes")
        r["beyond_ratio"] = rb / bb if rb is not None and bb else None
    return recs


_MODE_ORDER = {"fwd": 0, "bwd": 1, "fwdbwd": 2}
_DEV_ORDER = {"cpu": 0, "cuda": 1}


def _order(r: dict) -> tuple:
    return (r.get("op") or "", r.get("case") == "sweep", r.get("norm") or "", r.get("size") or 0,
            _MODE_ORDER.get(r.get("mode"), 9), _DEV_ORDER.get(r.get("device"), 9),
            r.get("backend") != "reference", r.get("backend") or "")


# ---------------------------------------------------------------------------------------------
# formatting


def _f(v, fmt: str, scale: float = 1.0, suffix: str = "") -> str:
    return "-" if v is None else format(v * scale, fmt) + suffix


def _ms(r):
    return _f(r.get("median"), ".2f", 1e3) if r.get("median", 0) >= 1e-3 else _f(r.get("median"), ".3f", 1e3)


def _cols_full(r: dict) -> list[str]:
    return [r.get("target", r.get("backend", "?")), r["mode"], _ms(r),
            _f(r.get("speedup"), ".2f", suffix="x"), _f(r.get("gbps"), ".1f"),
            _f(r.get("frac_copy_bw"), ".0f", 100, "%"), _f(r.get("peak_bytes"), ".0f", 1 / MB),
            _f(r.get("peak_beyond_bytes"), ".0f", 1 / MB), _f(r.get("beyond_ratio"), ".3f")]


_FULL_HEAD = ["backend", "mode", "median ms", "speed-up", "GB/s", "% copy BW", "peak MB",
              "peak beyond out/grads MB", "beyond vs reference"]


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


def _text_table(head: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]


def compact_table(benchmarks: list[dict], copy_gbps: dict | None = None) -> list[str]:
    """The terminal summary of a pytest run: ms, speed-up vs reference and GB/s per case."""
    recs = sorted(_rows(benchmarks), key=_order)
    body = [[f"{r['op']} {r['case']}" + (f" {r['size']}" if r["case"] == "sweep" else ""),
             r.get("target", "?"), r["mode"], _ms(r), _f(r.get("speedup"), ".2f", suffix="x"),
             _f(r.get("gbps"), ".1f"), _f(r.get("frac_copy_bw"), ".0f", 100, "%")]
            for r in recs]
    lines = _text_table(["case", "backend", "mode", "ms", "speed-up", "GB/s", "% copy"], body)
    if copy_gbps:
        lines.append("copy bandwidth (256 MB dst.copy_(src), read+write): "
                     + ", ".join(f"{d} {v:.1f} GB/s" for d, v in copy_gbps.items()))
    return lines


def tables(recs: list[dict], table=_md_table) -> list[str]:
    out = []
    main = [r for r in recs if r["op"] == "msca" and r["case"] != "sweep"]
    for case in sorted({r["case"] for r in main}):
        out += ["", f"### MSCA {case} (B=1, N=M1=M2=64, K=16, float32)", ""]
        out += table(_FULL_HEAD, [_cols_full(r) for r in main if r["case"] == case])
    sweep = [r for r in recs if r["op"] == "msca" and r["case"] == "sweep"]
    if sweep:
        out += ["", "### MSCA size sweep (square, exemplar = target size)", ""]
        out += table(["size", "mode", "backend", "median ms", "speed-up", "GB/s", "% copy BW",
                      "peak MB"],
                     [[f"{r['size']}x{r['size']}", r["mode"], r.get("target", "?"), _ms(r),
                       _f(r.get("speedup"), ".2f", suffix="x"), _f(r.get("gbps"), ".1f"),
                       _f(r.get("frac_copy_bw"), ".0f", 100, "%"),
                       _f(r.get("peak_bytes"), ".0f", 1 / MB)] for r in sweep])
    spade = [r for r in recs if r["op"] == "spade"]
    if spade:
        out += ["", "### SPADE norm, B=1, C=64, 512x512, float32: fused vs unfused "
                    "(reference = F.batch_norm/F.instance_norm, then (1 + gamma) * xn + beta)",
                ""]
        out += table(["norm"] + _FULL_HEAD,
                     [[r.get("norm", "?")] + _cols_full(r) for r in spade])
    return out


def render(data: dict, json_path: str = "", argv: list[str] | None = None) -> str:
    mi = data.get("machine_info", {})
    mb = mi.get("msca_bench", {})
    recs = sorted(_rows(data.get("benchmarks", [])), key=_order)
    bw = mb.get("copy_gbps", {})
    lines = ["# msca_kernels benchmarks", ""]
    lines += [f"- date: {data.get('datetime', '?')}",
              f"- machine: {mb.get('cpu_model', '?')}, {mb.get('logical_cpus', '?')} logical CPUs "
              f"({mb.get('usable_cpus', '?')} usable)"
              + (f", GPU {mb['cuda_device']}" if mb.get("cuda_device") else ""),
              f"- torch {mb.get('torch', '?')}, {mb.get('torch_threads', '?')} threads; "
              f"python {mi.get('python_version', '?')}",
              "- copy bandwidth (median of dst.copy_(src), 256 MB float32, read+write bytes): "
              + (", ".join(f"{d} {v:.1f} GB/s" for d, v in bw.items()) or "not measured"),
              f"- load average at the end of the run: {mb.get('loadavg_at_end', '?')}",
              f"- command: `{mb.get('command', '?')}`",
              f"- report: `python -m benchmarks.report {' '.join(argv or [json_path])}`"]
    skipped = [f"{n} ({reason})" for n, (ok, reason) in mb.get("backends", {}).items() if not ok]
    if skipped:
        lines.append("- not benchmarked: " + "; ".join(skipped))
    lines += tables(recs)
    lines += ["", "### How to read this", "",
              "- median over the pedantic rounds; speed-up = reference median / median, both "
              "measured in this run on the same device.",
              "- GB/s = the op's minimum traffic / median. MSCA (DESIGN.md sec. 2): forward reads "
              "fx2, fc2, fc1 and writes out; backward reads fx2, fc2, fc1, dO and writes dfx2, "
              "dfc2, dfc1 (268 MB and 470 MB at 512x512). SPADE, in x-sized tensors: forward 5 "
              "(statistics pass reads x; apply pass reads x, gamma, beta, writes out), backward 8 "
              "(reduction pass reads dy, gamma, x; elementwise pass reads dy, gamma, x, writes "
              "dx, dgamma; dbeta = dy). The same counts are used for the reference, so its GB/s "
              "is an effective figure, not the traffic it really generates.",
              "- peak MB: rise of the peak over the start of one call after warm-up, inputs "
              "already resident (CPU: VmHWM reset through /proc/self/clear_refs, free glibc "
              "memory trimmed first; CUDA: max_memory_allocated). 'beyond out/grads' subtracts "
              "what the caller keeps: the output (fwd), the input gradients (bwd), both "
              "(fwdbwd); 'beyond vs reference' is its ratio to the reference's.",
              "- fwd runs under no_grad; bwd times backward alone, the forward runs in the "
              "untimed set-up of each round."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m benchmarks.report RESULTS.json [REPORT.md]", file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    text = render(data, argv[0], argv)
    if len(argv) == 2:
        Path(argv[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[1]).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
