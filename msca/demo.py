"""`msca demo` (`make demo`): the shipped demo model on procedural scene pairs it never saw.

The procedural world gives what real data cannot: the exact ground truth of "layout A in the
style of scene B" (render(layout_A, style_B)). On N pairs of the *test* split (the training
scenes come from the train split; the splits' seeds never coincide) this writes under OUT:

  synthesis.png   one pair: label A, exemplar B, our output, ground truth, the GAP ablation and
                  the no-learning baselines
  attention.png   its K attention maps at scale 0 on an absolute colour scale: alpha over the
                  exemplar, beta over the target
  swap_grid.png   style-structure swap of 4 test scenes (paper Fig. 9)
  metrics.json    PSNR against the ground truth per column (mean, std, sem, per pair: the same
                  pairs in the same order for every column), the model's paired difference to
                  each column, PSNR split by target classes present in / absent from the
                  exemplar, two ceilings that see the ground truth (msca/eval/ceilings.py) and
                  the attention probe per scale (msca/eval/attention_probe.py)

Columns: our model, the GAP ablation (alignment="gap", trained with the same config and
steps), and the no-learning baselines of msca/eval/baselines.py (the exemplar's global mean
colour, the per-class mean-colour paste, the class prior).
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from msca.data.transforms import colorize_labels, tensor_to_pil
from msca.eval.attention_probe import AttentionProbe, format_probe
from msca.eval.baselines import (class_mean_colour, class_prior, dataset_class_colours,
                                 global_mean_colour)
from msca.eval.ceilings import truth_class_mean_psnr, truth_untextured_psnr
from msca.eval.class_presence import psnr_by_presence, summarise_presence
from msca.eval.metrics import psnr

from .apps.attention_figure import attention_figure
from .apps.swap import procedural_scenes, swap_grid_image, swap_outputs
from .apps.synthesize import labelled_row, synthesize

# column key -> printed name; "model" first, the reference of every paired difference
COLUMNS = {"model": "ours (MSCA)", "gap": "GAP ablation",
           "global_mean": "exemplar mean colour", "mean_colour": "mean colour per class",
           "class_prior": "class prior"}
BASELINES = ("global_mean", "mean_colour", "class_prior")


def _stats(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std()) if t.numel() > 1 else 0.0
    return {"mean": round(float(t.mean()), 3), "std": round(std, 3),
            "sem": round(std / math.sqrt(t.numel()), 3),
            "per_pair": [round(v, 3) for v in values]}


def _paired(model: list[float], other: list[float]) -> dict:
    """The model minus a column on the same pairs: mean difference, its standard error, wins."""
    d = torch.tensor(model, dtype=torch.float64) - torch.tensor(other, dtype=torch.float64)
    sem = float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else 0.0
    return {"mean_db": round(float(d.mean()), 3), "sem_db": round(sem, 3),
            "model_wins": int((d > 0).sum()), "pairs": d.numel()}


def _baselines(c1, x2, c2, ds_colours, ignore_label) -> dict:
    return {"global_mean": global_mean_colour(c1, x2, c2),
            "mean_colour": class_mean_colour(c1, x2, c2, ignore_label=ignore_label),
            "class_prior": class_prior(c1, x2, c2, ds_colours, ignore_label=ignore_label)}


def _figures(out: str, first: dict, G, opt, size: int) -> None:
    lab = tensor_to_pil(torch.from_numpy(colorize_labels(first["c1"], opt.num_classes))
                        .permute(2, 0, 1).float() / 127.5 - 1)
    preds = first["preds"]
    row = labelled_row([lab, tensor_to_pil(first["x2"]), tensor_to_pil(preds["model"]),
                        tensor_to_pil(first["gt"])]
                       + [tensor_to_pil(preds[k]) for k in ("gap",) + BASELINES],
                       ["label A", "exemplar B", "ours", "ground truth", "GAP",
                        "mean colour", "class mean", "class prior"])
    row.save(os.path.join(out, "synthesis.png"))
    if first["alpha"] is not None:
        attention_figure(first["x2"], first["c1"], first["alpha"], first["beta"],
                         opt.num_classes, scale=3).save(os.path.join(out, "attention.png"))
    imgs, labs = procedural_scenes(4, size, seed=opt.seed + 1)
    swap_grid_image(imgs, swap_outputs(G, imgs, labs)).save(os.path.join(out, "swap_grid.png"))


def format_report(metrics: dict) -> str:
    """The printed table: each column's PSNR, the model minus the column on the same pairs,
    the PSNR over target classes present in / absent from the exemplar; then the probe."""
    n, size = metrics["pairs"], metrics["size"]
    split = metrics["psnr_db_by_exemplar_class"]
    lines = [f"PSNR vs exact ground truth, {n} unseen test pairs at {size}x{size} "
             f"(model - column: mean paired difference, its standard error, pairs the model "
             f"wins; present/absent: PSNR over target pixels whose class the exemplar has / "
             f"lacks, {split['model']['absent']['pairs']} pairs have absent classes, "
             f"{100 * split['model']['absent_share_mean']:.1f}% of pixels):",
             f"  {'column':<24} {'PSNR dB':>8} {'sem':>5} | {'model - column':>14} {'sem':>5} "
             f"{'wins':>8} | {'present':>7} {'absent':>7}"]
    for key, title in COLUMNS.items():
        s, sp = metrics["psnr_db"][key], split[key]
        cells = f"  {title:<24} {s['mean']:8.2f} {s['sem']:5.2f} | "
        if key == "model":
            cells += f"{'-':>14} {'':>5} {'':>8} | "
        else:
            p = metrics["model_minus"][key]
            cells += (f"{p['mean_db']:+14.2f} {p['sem_db']:5.2f} "
                      f"{p['model_wins']:>4}/{p['pairs']:<3} | ")
        cells += " ".join(f"{sp[k]['mean']:7.2f}" if sp[k]["mean"] is not None else f"{'-':>7}"
                          for k in ("present", "absent"))
        lines.append(cells)
    c = metrics["ceilings_psnr_db"]
    lines.append(f"  ceilings (they see the ground truth; not methods): its own class-mean colours "
                 f"{c['truth_class_mean']['mean']:.2f} dB (the best one-colour-per-class paste), "
                 f"its untextured render {c['truth_untextured']['mean']:.2f} dB (all but texture)")
    lines.append(format_probe(metrics["attention"]))
    return "\n".join(lines)


def run_demo(*, out: str, checkpoint: str, gap_checkpoint: str, pairs: int = 100,
             backend: str | None = None, batch: int = 10) -> dict:
    from msca.data.procedural import CrossScenePairs
    from msca.train.checkpoint import load_generator

    t0 = time.time()
    if pairs < 1:
        raise ValueError(f"--pairs: expected >= 1, got {pairs}")
    for arg, path in (("--checkpoint", checkpoint), ("--gap-checkpoint", gap_checkpoint)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{arg} {path!r}: no such file (the demo checkpoints are "
                                    "made by `msca train --config demo`, see docs/training.md)")
    G, opt = load_generator(checkpoint, backend)
    G_gap, opt_gap = load_generator(gap_checkpoint, backend)
    if opt_gap.alignment != "gap":
        raise ValueError(f"--gap-checkpoint {gap_checkpoint!r}: alignment is "
                         f"{opt_gap.alignment!r}, expected 'gap'")
    size = opt.crop_size
    data = CrossScenePairs("test", size, pairs, seed=opt.seed)
    ds_colours = dataset_class_colours(size, seed=opt.seed)     # the train split's
    probe = AttentionProbe(opt.num_classes, opt.ignore_label)
    os.makedirs(out, exist_ok=True)

    scores = {k: [] for k in COLUMNS}
    ceilings = {"truth_class_mean": [], "truth_untextured": []}
    split = {k: {"present": [], "absent": [], "absent_share": []} for k in COLUMNS}
    first = None
    for start in range(0, pairs, batch):
        items = [data[i] for i in range(start, min(start + batch, pairs))]
        c1 = torch.stack([it["label"] for it in items])
        x2 = torch.stack([it["exemplar"] for it in items])
        c2 = torch.stack([it["exemplar_label"] for it in items])
        gt = torch.stack([it["target"] for it in items])
        ours, attn = synthesize(G, c1, x2, c2, return_attention=True)
        preds = {"model": ours, "gap": synthesize(G_gap, c1, x2, c2),
                 **_baselines(c1, x2, c2, ds_colours, opt.ignore_label)}
        for name, pred in preds.items():
            scores[name] += psnr(pred, gt).tolist()
            for k, v in psnr_by_presence(pred, gt, c1, c2, opt.ignore_label).items():
                split[name][k] += v.tolist()
        probe.update(attn, c1, x2, c2, gt)
        ceilings["truth_class_mean"] += truth_class_mean_psnr(c1, gt, opt.ignore_label).tolist()
        ceilings["truth_untextured"] += truth_untextured_psnr(items, gt).tolist()
        if first is None:
            a0 = attn[0]
            first = dict(c1=c1[0], x2=x2[0], gt=gt[0], preds={k: v[0] for k, v in preds.items()},
                         alpha=a0[0][0] if a0 is not None else None,
                         beta=a0[1][0] if a0 is not None else None)

    _figures(out, first, G, opt, size)
    model_minus = {k: _paired(scores["model"], scores[k]) for k in COLUMNS if k != "model"}
    metrics = {
        "pairs": pairs, "split": "test", "size": size, "checkpoint": checkpoint,
        "gap_checkpoint": gap_checkpoint, "backend": G.backend,
        "psnr_db": {k: _stats(v) for k, v in scores.items()},
        "model_minus": model_minus,
        "model_beats_pairwise": {k: f"{p['model_wins']}/{pairs}"
                                 for k, p in model_minus.items()},
        "psnr_db_by_exemplar_class": {k: summarise_presence(v) for k, v in split.items()},
        "ceilings_psnr_db": {k: _stats(v) for k, v in ceilings.items()},
        "attention": probe.summary(),
        "wall_s": round(time.time() - t0, 1),
    }
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=1)
        fh.write("\n")

    print(format_report(metrics))
    print(f"wrote {out}/synthesis.png, attention.png, swap_grid.png, metrics.json "
          f"({metrics['wall_s']} s)")
    return metrics
