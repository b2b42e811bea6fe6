"""The attention probe: what MSCA's attention alone can carry from the exemplar to the target.

At each scale the learned maps alpha (B,K,h2,w2) and beta (B,K,h1,w1) move the exemplar's
features: V = Fx2 alpha^T (per map k), Fx1 = V beta. The probe puts known values through the
same two products instead of features, with no feature mask:

- the exemplar's RGB, area-downsampled to (h2,w2): the result is compared with the ground
  truth area-downsampled to (h1,w1) (PSNR, [0,1] scale);
- the exemplar's one-hot labels, resized (nearest, as the label encoder does) to (h2,w2): the
  argmax of the result is compared with the target label at (h1,w1) (pixel accuracy; its
  ceiling is the share of target pixels whose class the exemplar has).

References at the same scale: the per-class mean-colour paste (what attention that reads each
class from exactly its own pixels would give: the ceiling of a colour carried without
texture) and the exemplar's global mean (what uniform attention gives). Beside them the map
statistics of attention_concentration.py.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from msca.models.encoders import resize_labels
from msca.models.correspondence import carry as carry_flat

from .attention_concentration import beta_max_mean, class_purity, normalised_entropy, top_share
from .baselines import class_mean_colour, global_mean_colour
from .metrics import psnr

TOP_FRACTION = 0.1


def carry(values: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """values (B,C,h2,w2) through one scale's attention -> (B,C,h1,w1): V = values alpha^T
    (B,C,K), out = V beta."""
    B, C = values.shape[:2]
    if alpha.shape[0] != B or tuple(alpha.shape[-2:]) != tuple(values.shape[-2:]):
        raise ValueError(f"alpha: expected (B={B}, K, {tuple(values.shape[-2:])}) matching "
                         f"values, got {tuple(alpha.shape)}")
    if beta.shape[:2] != alpha.shape[:2]:
        raise ValueError(f"beta: expected (B, K) = {tuple(alpha.shape[:2])} as alpha, got "
                         f"{tuple(beta.shape)}")
    out = carry_flat(values.flatten(2).double(), alpha.flatten(2).double(),
                     beta.flatten(2).double())
    return out.view(B, C, *beta.shape[-2:])


def _one_hot(label: torch.Tensor, num_classes: int, ignore_label: int | None) -> torch.Tensor:
    """(B,h,w) -> (B,C,h,w) float64; the ignore label (and ids >= C) give a zero vector."""
    idx = label.long()
    bad = (idx < 0) | (idx >= num_classes)
    if ignore_label is not None:
        bad |= idx == ignore_label
    oh = F.one_hot(torch.where(bad, num_classes, idx), num_classes + 1)[..., :num_classes]
    return oh.permute(0, 3, 1, 2).double()


def probe_scale(alpha: torch.Tensor, beta: torch.Tensor, label: torch.Tensor,
                exemplar: torch.Tensor, exemplar_label: torch.Tensor, target: torch.Tensor,
                num_classes: int, ignore_label: int | None = 255) -> dict:
    """One scale's probe for a batch. Per image (B,): probe_psnr, ceiling_psnr, uniform_psnr,
    label_acc, label_acc_ceiling, beta_max, purity_uniform; per map (B*K,): top_share,
    entropy, purity."""
    h2, w2 = alpha.shape[-2:]
    h1, w1 = beta.shape[-2:]
    x2 = F.adaptive_avg_pool2d(exemplar.double(), (h2, w2))
    c2 = resize_labels(exemplar_label, (h2, w2))
    c1 = resize_labels(label, (h1, w1))
    gt = F.adaptive_avg_pool2d(target.double(), (h1, w1))
    oh2 = _one_hot(c2, num_classes, ignore_label)

    rgb = carry(x2, alpha, beta)
    lab = carry(oh2, alpha, beta).argmax(1)
    valid = (c1 >= 0) & (c1 < num_classes)
    if ignore_label is not None:
        valid &= c1 != ignore_label
    n_valid = valid.flatten(1).sum(1).clamp_min(1)
    has = oh2.flatten(2).amax(-1) > 0                                 # (B,C) exemplar classes
    reachable = valid & has.gather(1, c1.clamp(0, num_classes - 1).flatten(1)).view_as(c1)

    a = alpha.flatten(2)
    purity, purity_uniform = class_purity(a, oh2.flatten(2).transpose(1, 2))
    return {
        "probe_psnr": psnr(rgb.float(), gt.float()),
        "ceiling_psnr": psnr(class_mean_colour(c1, x2, c2, ignore_label=ignore_label).float(),
                             gt.float()),
        "uniform_psnr": psnr(global_mean_colour(c1, x2.float()), gt.float()),
        "label_acc": ((lab == c1) & valid).flatten(1).sum(1) / n_valid,
        "label_acc_ceiling": reachable.flatten(1).sum(1) / n_valid,
        "beta_max": beta_max_mean(beta),
        "purity_uniform": purity_uniform,
        "top_share": top_share(a, TOP_FRACTION).flatten(),
        "entropy": normalised_entropy(a).flatten(),
        "purity": purity.flatten(),
    }


class AttentionProbe:
    """Accumulates `probe_scale` over batches for every scale that has attention, then
    summarises (`summary()`): per scale the mean (and per pair) probe and reference PSNRs,
    label accuracies, the median alpha concentration over all maps, beta's mean max
    probability beside 1/K, and the mean class purity beside uniform attention's."""

    def __init__(self, num_classes: int, ignore_label: int | None = 255):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self._parts: dict[int, dict[str, list[torch.Tensor]]] = {}
        self._shape: dict[int, tuple] = {}

    def update(self, attention, label, exemplar, exemplar_label, target) -> None:
        """attention: the generator's list of per-scale (alpha, beta) or None."""
        for i, a in enumerate(attention):
            if a is None:
                continue
            alpha, beta = a
            res = probe_scale(alpha.detach(), beta.detach(), label, exemplar, exemplar_label,
                              target, self.num_classes, self.ignore_label)
            parts = self._parts.setdefault(i, {})
            for k, v in res.items():
                parts.setdefault(k, []).append(v.detach().cpu().double())
            self._shape[i] = (alpha.shape[1], tuple(alpha.shape[-2:]), tuple(beta.shape[-2:]))

    def summary(self) -> dict:
        """{scale (str): figures}; empty when nothing had attention."""
        out = {}
        for i in sorted(self._parts):
            p = {k: torch.cat(v) for k, v in self._parts[i].items()}
            K, ex_hw, tg_hw = self._shape[i]
            P2 = ex_hw[0] * ex_hw[1]

            def mean(k):
                return round(float(p[k].mean()), 4)

            d = p["probe_psnr"] - p["ceiling_psnr"]
            out[str(i)] = {
                "k": K, "exemplar_size": list(ex_hw), "target_size": list(tg_hw),
                "probe_psnr_db": mean("probe_psnr"),
                "ceiling_psnr_db": mean("ceiling_psnr"),
                "uniform_psnr_db": mean("uniform_psnr"),
                "probe_minus_ceiling_db": round(float(d.mean()), 4),
                "probe_psnr_per_pair": [round(float(v), 3) for v in p["probe_psnr"]],
                "label_accuracy": mean("label_acc"),
                "label_accuracy_ceiling": mean("label_acc_ceiling"),
                "alpha_top10_mass_median": round(float(p["top_share"].median()), 4),
                "alpha_top10_mass_uniform": round(math.ceil(TOP_FRACTION * P2) / P2, 4),
                "alpha_entropy_norm_median": round(float(p["entropy"].median()), 4),
                "beta_max_mean": mean("beta_max"),
                "beta_uniform": round(1 / K, 4),
                "class_purity_mean": mean("purity"),
                "class_purity_uniform_mean": mean("purity_uniform"),
            }
        return out


def format_probe(summary: dict) -> str:
    """The summary as a plain-text table, one row per scale."""
    if not summary:
        return "attention probe: the model has no attention maps"
    lines = ["attention probe (exemplar RGB / labels carried through each scale's attention, "
             "no feature mask):",
             "  scale   K  exemplar | RGB dB  ceiling  uniform | label acc (ceiling) | "
             "top10% mass (uniform)  entropy | beta max (1/K) | purity (uniform)"]
    for s, f in summary.items():
        ex = "x".join(map(str, f["exemplar_size"]))
        lines.append(
            f"  {s:>5} {f['k']:>3} {ex:>9} | {f['probe_psnr_db']:6.2f} {f['ceiling_psnr_db']:7.2f}"
            f"  {f['uniform_psnr_db']:7.2f} | {f['label_accuracy']:.3f} "
            f"({f['label_accuracy_ceiling']:.3f})       | {f['alpha_top10_mass_median']:.3f} "
            f"({f['alpha_top10_mass_uniform']:.3f})        {f['alpha_entropy_norm_median']:.3f}"
            f"   | {f['beta_max_mean']:.3f} ({f['beta_uniform']:.3f}) | "
            f"{f['class_purity_mean']:.3f} ({f['class_purity_uniform_mean']:.3f})")
    return "\n".join(lines)


__all__ = ["AttentionProbe", "carry", "format_probe", "probe_scale"]
