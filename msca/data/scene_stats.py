"""How much of the procedural scenes' cross-scene ground truth the no-learning baselines reach.

``python -m msca.data.scene_stats [--pairs 100] [--size 64] [--split test] [--seed 0]`` prints
the mean PSNR, over the first N pairs of ``CrossScenePairs`` (as ``msca demo`` makes them), of

  global mean   the exemplar's global mean colour pasted everywhere (what GAP alone can do);
  class prior   the exemplar's per-class mean colour pasted on the target layout (classes the
                exemplar lacks: its global mean), the demo's mean-colour column;
  no texture    oracle: the exemplar's style rendered on the target layout with every texture
                amplitude set to zero (lighting, gradients and instance colours kept), i.e. how
                much of the target is predictable structure rather than texture noise.

A good scene generator keeps the first two well below the third: style must be more than a
colour per class, and what is more must be predictable from (target layout, exemplar).
"""
from __future__ import annotations

import argparse
import math

import torch


def class_mean_paste(label: torch.Tensor, exemplar: torch.Tensor,
                     exemplar_label: torch.Tensor) -> torch.Tensor:
    """(H,W), (3,H2,W2), (H2,W2) -> (3,H,W): each target pixel of class k gets the exemplar's
    mean colour over its class-k pixels, or the exemplar's global mean colour if it has none.
    The same rule as the demo's mean-colour column, kept here so this script stands alone."""
    img = exemplar.mean(dim=(1, 2))[:, None, None].expand(3, *label.shape).clone()
    for k in label.unique().tolist():
        m = exemplar_label == k
        if m.any():
            img[:, label == k] = exemplar[:, m].mean(dim=1)[:, None]
    return img


def psnr_db(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR of [-1, 1] images on the [0, 1] scale (peak 1), like the demo's metric."""
    mse = float(((pred.clamp(-1, 1) - target) / 2).pow(2).mean())
    return -10 * math.log10(max(mse, 1e-12))


def baseline_psnrs(pairs: int = 100, size: int = 64, split: str = "test", seed: int = 0) -> dict:
    """Per-pair PSNR (dB) of each baseline against the exact ground truth."""
    from msca.data.procedural import (CrossScenePairs, image_to_tensor, layout_from_seed, render,
                                      style_from_seed, untextured)

    data = CrossScenePairs(split, size, pairs, seed=seed)
    out = {"global_mean": [], "class_prior": [], "no_texture": []}
    for i in range(pairs):
        it = data[i]
        gt, ex = it["target"], it["exemplar"]
        glob = ex.mean(dim=(1, 2), keepdim=True).expand_as(gt)
        prior = class_mean_paste(it["label"], ex, it["exemplar_label"])
        h, w = gt.shape[-2:]
        oracle = image_to_tensor(render(layout_from_seed(it["layout_seed_a"]),
                                        untextured(style_from_seed(it["style_seed_b"])), h, w))
        for name, pred in (("global_mean", glob), ("class_prior", prior), ("no_texture", oracle)):
            out[name].append(psnr_db(pred, gt))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.pairs < 1:
        raise ValueError(f"--pairs: expected >= 1, got {a.pairs}")
    res = baseline_psnrs(a.pairs, a.size, a.split, a.seed)
    print(f"PSNR vs exact ground truth, first {a.pairs} {a.split} pairs at {a.size}x{a.size}:")
    for name, v in res.items():
        t = torch.tensor(v, dtype=torch.float64)
        print(f"  {name:<12} {float(t.mean()):6.2f} dB  (std {float(t.std()):.2f})")


if __name__ == "__main__":
    main()
