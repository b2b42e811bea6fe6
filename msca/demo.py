"""`msca demo` (`make demo`): the shipped demo model on procedural scene pairs it never saw.

The procedural world gives what real data cannot: the exact ground truth of "layout A in the
style of scene B" (render(layout_A, style_B)). On N pairs of the *test* split (the training
scenes come from the train split; the splits' seeds never coincide) this writes under OUT:

  synthesis.png   one pair: label A, exemplar B, our output, both baselines, ground truth
  attention.png   its K attention maps at scale 0: alpha over the exemplar, beta over the target
  swap_grid.png   style-structure swap of 4 test scenes (paper Fig. 9)
  metrics.json    PSNR against the ground truth, per method (mean, std, per pair)

and prints the PSNR table: our model vs (i) the exemplar's mean colour per class pasted onto
the target layout (a class absent from the exemplar gets the exemplar's mean colour) and
(ii) the GAP ablation (alignment="gap", trained with the same config and steps).
"""
from __future__ import annotations

import json
import math
import os
import time

import torch

from msca.data.transforms import colorize_labels, tensor_to_pil

from .apps.swap import procedural_scenes, swap_grid_image, swap_outputs
from .apps.synthesize import attention_figure, labelled_row, synthesize


def mean_colour_baseline(label: torch.Tensor, exemplar: torch.Tensor,
                         exemplar_label: torch.Tensor) -> torch.Tensor:
    """(B,H,W), (B,3,H2,W2), (B,H2,W2) -> (B,3,H,W): each target pixel of class k gets the
    exemplar's mean colour over its class-k pixels, or the exemplar's global mean colour if the
    exemplar has no class k."""
    out = torch.empty(label.shape[0], 3, *label.shape[-2:], dtype=exemplar.dtype)
    for b in range(label.shape[0]):
        ex, el, lab = exemplar[b], exemplar_label[b], label[b]
        img = ex.mean(dim=(1, 2))[:, None, None].expand(3, *lab.shape).clone()
        for k in lab.unique().tolist():
            m = el == k
            if m.any():
                img[:, lab == k] = ex[:, m].mean(dim=1)[:, None]
        out[b] = img
    return out


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image PSNR in dB of [-1,1] images, on the [0,1] scale (peak 1)."""
    mse = ((pred.float().clamp(-1, 1) - target.float()) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-12))


def _stats(values: list[float]) -> dict:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": round(float(t.mean()), 3), "std": round(float(t.std()), 3),
            "per_pair": [round(v, 3) for v in values]}


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
    os.makedirs(out, exist_ok=True)

    scores = {"model": [], "mean_colour": [], "gap": []}
    first = None
    for start in range(0, pairs, batch):
        items = [data[i] for i in range(start, min(start + batch, pairs))]
        c1 = torch.stack([it["label"] for it in items])
        x2 = torch.stack([it["exemplar"] for it in items])
        c2 = torch.stack([it["exemplar_label"] for it in items])
        gt = torch.stack([it["target"] for it in items])
        ours, attn = synthesize(G, c1, x2, c2, return_attention=True)
        gap = synthesize(G_gap, c1, x2, c2)
        base = mean_colour_baseline(c1, x2, c2)
        for name, pred in (("model", ours), ("gap", gap), ("mean_colour", base)):
            scores[name] += psnr(pred, gt).tolist()
        if first is None:
            first = dict(c1=c1[0], x2=x2[0], gt=gt[0], ours=ours[0], gap=gap[0], base=base[0],
                         alpha=attn[0][0][0], beta=attn[0][1][0])

    # figures for the first pair
    lab = tensor_to_pil(torch.from_numpy(colorize_labels(first["c1"], opt.num_classes))
                        .permute(2, 0, 1).float() / 127.5 - 1)
    row = labelled_row([lab, tensor_to_pil(first["x2"]), tensor_to_pil(first["ours"]),
                        tensor_to_pil(first["gt"]), tensor_to_pil(first["gap"]),
                        tensor_to_pil(first["base"])],
                       ["label A", "exemplar B", "ours", "ground truth", "GAP",
                        "mean colour"])
    row.save(os.path.join(out, "synthesis.png"))
    attention_figure(first["x2"], first["c1"], first["alpha"], first["beta"],
                     opt.num_classes, scale=3).save(os.path.join(out, "attention.png"))
    imgs, labs = procedural_scenes(4, size, seed=opt.seed + 1)
    swap_grid_image(imgs, swap_outputs(G, imgs, labs)).save(os.path.join(out, "swap_grid.png"))

    wins = {b: sum(m > o for m, o in zip(scores["model"], scores[b])) for b in
            ("mean_colour", "gap")}
    metrics = {
        "pairs": pairs, "split": "test", "size": size, "checkpoint": checkpoint,
        "gap_checkpoint": gap_checkpoint, "backend": G.backend,
        "psnr_db": {k: _stats(v) for k, v in scores.items()},
        "model_beats_pairwise": {b: f"{w}/{pairs}" for b, w in wins.items()},
        "wall_s": round(time.time() - t0, 1),
    }
    with open(os.path.join(out, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=1)
        fh.write("\n")

    names = {"model": "ours (MSCA)", "gap": "GAP ablation",
             "mean_colour": "mean colour per class"}
    print(f"PSNR vs exact ground truth, {pairs} unseen test pairs at {size}x{size}:")
    for k in ("model", "gap", "mean_colour"):
        s = metrics["psnr_db"][k]
        sem = s["std"] / math.sqrt(pairs)
        print(f"  {names[k]:<24} {s['mean']:6.2f} dB  (std {s['std']:.2f}, sem {sem:.2f})")
    print(f"  ours better than mean colour on {wins['mean_colour']}/{pairs} pairs, than GAP "
          f"on {wins['gap']}/{pairs}")
    print(f"wrote {out}/synthesis.png, attention.png, swap_grid.png, metrics.json "
          f"({metrics['wall_s']} s)")
    return metrics
