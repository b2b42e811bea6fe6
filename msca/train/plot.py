"""Loss curves from training logs (log.jsonl), drawn with Pillow alone (no matplotlib).

    python -m msca.train.plot OUT.png LOG.jsonl[:label] [LOG2.jsonl[:label] ...]

One panel per loss term (pretraining total and its correspondence terms, the reconstruction L1s,
the correspondence term of the GAN stages, D feature matching, D total), each curve a moving
average over 10 log records, stage boundaries dotted; a term a run did not log says so.
"""
from __future__ import annotations

import sys

from PIL import Image, ImageDraw

from .trainer import read_log

PANELS = (("pre/total", "pretraining: decoder L1 + correspondence, total"),
          ("pre/corr_label", "pretraining: label transfer through attention (CE)"),
          ("pre/corr_rgb", "pretraining: colour warp through attention (L1)"),
          ("cross/l1", "patch cross-reconstruction: lambda_l1 x L1"),
          ("cross/corr_label", "cross: label transfer (x corr_gan_factor)"),
          ("global/l1", "global self-reconstruction: lambda_l1 x L1"),
          ("cross/feat", "cross: D feature matching"),
          ("D/total", "discriminator hinge, total"))
COLOURS = ((200, 40, 40), (30, 90, 200), (20, 150, 60), (160, 60, 160))


def _smooth(v: list[float], k: int = 10) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(v):
        acc += x
        if i >= k:
            acc -= v[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot(logs: list[tuple[str, list[dict]]], out: str, panel_w: int = 420,
         panel_h: int = 220) -> None:
    cols = 2
    rows = (len(PANELS) + cols - 1) // cols
    pad_l, pad_t, pad_b = 48, 22, 20
    legend_h = 18
    img = Image.new("RGB", (cols * panel_w, rows * panel_h + legend_h), "white")
    d = ImageDraw.Draw(img)
    max_step = max(r["step"] for _, recs in logs for r in recs)
    for p, (key, title) in enumerate(PANELS):
        ox, oy = (p % cols) * panel_w, legend_h + (p // cols) * panel_h
        x0, x1 = ox + pad_l, ox + panel_w - 10
        y0, y1 = oy + pad_t, oy + panel_h - pad_b
        d.text((ox + pad_l, oy + 4), title, fill="black")
        d.rectangle([x0, y0, x1, y1], outline=(150, 150, 150))
        series = []
        for li, (label, recs) in enumerate(logs):
            pts = [(r["step"], r[key]) for r in recs if key in r]
            if pts:
                series.append((li, [s for s, _ in pts], _smooth([v for _, v in pts])))
        if not series:
            d.text((x0 + 8, y0 + 8), "(not logged)", fill=(120, 120, 120))
            continue
        lo = min(min(v) for _, _, v in series)
        hi = max(max(v) for _, _, v in series)
        hi = hi if hi > lo else lo + 1
        for frac in (0.0, 0.5, 1.0):
            y = y1 - frac * (y1 - y0)
            d.text((ox + 2, y - 6), f"{lo + frac * (hi - lo):.3g}", fill=(90, 90, 90))
        d.text((x1 - 60, y1 + 4), f"step {max_step}", fill=(90, 90, 90))
        # stage boundaries of the first log
        recs0 = logs[0][1]
        for a, b in zip(recs0, recs0[1:]):
            if a["stage"] != b["stage"]:
                x = x0 + (a["step"] / max_step) * (x1 - x0)
                for y in range(int(y0), int(y1), 6):
                    d.point((x, y), fill=(120, 120, 120))
        for li, steps, vals in series:
            xy = [(x0 + s / max_step * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))
                  for s, v in zip(steps, vals)]
            if len(xy) > 1:
                d.line(xy, fill=COLOURS[li % len(COLOURS)], width=2)
    x = 6
    for li, (label, _) in enumerate(logs):
        d.rectangle([x, 5, x + 12, 13], fill=COLOURS[li % len(COLOURS)])
        d.text((x + 16, 3), label, fill="black")
        x += 24 + 7 * len(label)
    d.text((x + 10, 3), "(moving average of 10 log records; dotted: stage changes)",
           fill=(90, 90, 90))
    img.save(out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    logs = []
    for spec in argv[1:]:
        path, _, label = spec.partition(":")
        logs.append((label or path, read_log(path)))
    plot(logs, argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
