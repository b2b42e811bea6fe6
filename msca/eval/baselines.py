"""No-learning baselines for example-guided synthesis: what colour statistics alone achieve.

Each takes the generator's inputs, label c1 (B,H,W) int, exemplar x2 (B,3,H2,W2) in [-1,1] and
exemplar_label c2 (B,H2,W2) int, and returns an image (B,3,H,W) in [-1,1] with c1's layout:

- `global_mean_colour`: every pixel gets the exemplar's mean colour (what attention that is
  uniform over the exemplar, i.e. global average pooling, can at best carry).
- `class_mean_colour`: each target pixel of class k gets the exemplar's mean colour over its
  class-k pixels; a class the exemplar lacks (and the ignore label) gets the global mean.
- `class_prior`: as `class_mean_colour`, but a class the exemplar lacks gets the dataset's
  average colour of that class (`dataset_class_colours`, from the procedural train split),
  scaled per channel by how the exemplar's colours compare with the dataset's: the ratio of
  the exemplar's mean over its pixels of classes the dataset knows to the dataset's class
  colours averaged with the same pixel weights, on the [0,1] scale, result clipped to [0,1].
"""
from __future__ import annotations

from functools import lru_cache

import torch


def _check(label: torch.Tensor, exemplar: torch.Tensor, exemplar_label: torch.Tensor) -> None:
    if not isinstance(exemplar, torch.Tensor) or exemplar.dim() != 4 or exemplar.shape[1] != 3:
        raise ValueError(f"exemplar: expected images (B,3,H,W), got "
                         f"{tuple(getattr(exemplar, 'shape', ()))}")
    for name, t in (("label", label), ("exemplar_label", exemplar_label)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.is_floating_point():
            raise ValueError(f"{name}: expected integer label maps (B,H,W), got "
                             f"{tuple(getattr(t, 'shape', ()))}")
        if t.shape[0] != exemplar.shape[0]:
            raise ValueError(f"{name}: expected batch {exemplar.shape[0]} (the exemplar's), "
                             f"got {t.shape[0]}")
    if tuple(exemplar_label.shape[-2:]) != tuple(exemplar.shape[-2:]):
        raise ValueError(f"exemplar_label: expected the exemplar's size "
                         f"{tuple(exemplar.shape[-2:])}, got {tuple(exemplar_label.shape[-2:])}")


def _num_classes(ignore_label: int | None, *labels: torch.Tensor) -> int:
    """One more than the largest class id in `labels` (the ignore label not counted)."""
    top = -1
    for lab in labels:
        valid = lab if ignore_label is None else lab[lab != ignore_label]
        if valid.numel():
            top = max(top, int(valid.max()))
    return top + 1


def _indices(label: torch.Tensor, num_classes: int, ignore_label: int | None) -> torch.Tensor:
    """(B,H,W) -> (B,H*W) int64 with the ignore label (and anything out of range) mapped to
    `num_classes`, the fallback row of a colour table."""
    idx = label.reshape(label.shape[0], -1).long()
    bad = (idx < 0) | (idx >= num_classes)
    if ignore_label is not None:
        bad |= idx == ignore_label
    return torch.where(bad, torch.full_like(idx, num_classes), idx)


def class_colour_stats(image: torch.Tensor, label: torch.Tensor, num_classes: int,
                       ignore_label: int | None = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and class: the colour sums (B,C,3) and pixel counts (B,C), float64."""
    B = image.shape[0]
    idx = _indices(label, num_classes, ignore_label)
    pix = image.reshape(B, 3, -1).transpose(1, 2).double()            # (B,P,3)
    sums = torch.zeros(B, num_classes + 1, 3, dtype=torch.float64, device=image.device)
    sums.scatter_add_(1, idx[..., None].expand(-1, -1, 3), pix)
    counts = torch.zeros(B, num_classes + 1, dtype=torch.float64, device=image.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return sums[:, :num_classes], counts[:, :num_classes]


def paste_colours(label: torch.Tensor, table: torch.Tensor, ignore_label: int | None = 255,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Paint label (B,H,W) with a colour table (B,C+1,3): class k gets row k, the ignore
    label (or any id >= C) the last row -> (B,3,H,W)."""
    B, H, W = label.shape
    idx = _indices(label, table.shape[1] - 1, ignore_label)
    out = table.gather(1, idx[..., None].expand(-1, -1, 3))           # (B,P,3)
    return out.transpose(1, 2).reshape(B, 3, H, W).to(dtype)


def global_mean_colour(label: torch.Tensor, exemplar: torch.Tensor,
                       exemplar_label: torch.Tensor | None = None) -> torch.Tensor:
    """Every target pixel gets the exemplar's mean colour."""
    if exemplar_label is not None:
        _check(label, exemplar, exemplar_label)
    mean = exemplar.double().mean(dim=(2, 3))
    return mean[:, :, None, None].expand(-1, -1, *label.shape[-2:]).to(exemplar.dtype).clone()


def class_mean_colour(label: torch.Tensor, exemplar: torch.Tensor,
                      exemplar_label: torch.Tensor, *, ignore_label: int | None = 255
                      ) -> torch.Tensor:
    """The per-class mean-colour paste (module docstring)."""
    _check(label, exemplar, exemplar_label)
    C = _num_classes(ignore_label, label, exemplar_label)
    sums, counts = class_colour_stats(exemplar, exemplar_label, C, ignore_label)
    glob = exemplar.double().mean(dim=(2, 3))[:, None]               # (B,1,3)
    means = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], glob)
    return paste_colours(label, torch.cat([means, glob], 1), ignore_label, exemplar.dtype)


# --------------------------------------------------------------------------- class prior
@lru_cache(maxsize=8)
def _dataset_class_colours(size: int, scenes: int, seed: int, split: str) -> torch.Tensor:
    from msca.data.procedural import NUM_CLASSES, ProceduralScenes

    data = ProceduralScenes(split, size, scenes, seed=seed)
    total = torch.zeros(NUM_CLASSES, 3, dtype=torch.float64)
    seen = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for i in range(scenes):
        item = data[i]
        sums, counts = class_colour_stats(item["image"][None], item["label"][None],
                                          NUM_CLASSES, None)
        present = counts[0] > 0
        # each scene's style counts once, however large the class is in it
        total[present] += sums[0][present] / counts[0][present][:, None]
        seen += present.double()
    out = total / seen.clamp_min(1)[:, None]
    out[seen == 0] = float("nan")
    return out


def dataset_class_colours(size: int = 64, scenes: int = 200, seed: int = 0,
                          split: str = "train") -> torch.Tensor:
    """The procedural dataset's class-average colours (NUM_CLASSES, 3) in [-1,1], float64:
    per class, the mean over `scenes` scenes of `split` that contain it of the scene's mean
    colour of that class; NaN for a class no scene has. Computed once per argument set and
    kept in memory (a copy is returned)."""
    if not isinstance(scenes, int) or scenes < 1:
        raise ValueError(f"scenes: expected a positive int, got {scenes!r}")
    return _dataset_class_colours(int(size), scenes, int(seed), split).clone()


def class_prior(label: torch.Tensor, exemplar: torch.Tensor, exemplar_label: torch.Tensor,
                dataset_colours: torch.Tensor, *, ignore_label: int | None = 255
                ) -> torch.Tensor:
    """The class-prior paste (module docstring); `dataset_colours` (C_d,3) in [-1,1], NaN rows
    for classes the dataset never showed (see `dataset_class_colours`)."""
    _check(label, exemplar, exemplar_label)
    if dataset_colours.dim() != 2 or dataset_colours.shape[1] != 3:
        raise ValueError(f"dataset_colours: expected (num_classes, 3), got "
                         f"{tuple(dataset_colours.shape)}")
    C = max(_num_classes(ignore_label, label, exemplar_label), dataset_colours.shape[0])
    ds = torch.full((C, 3), float("nan"), dtype=torch.float64, device=exemplar.device)
    ds[:dataset_colours.shape[0]] = dataset_colours.to(ds)
    known = ~ds.isnan().any(1)                                        # (C,)
    ds01 = torch.where(known[:, None], (ds + 1) / 2, torch.zeros_like(ds))

    sums, counts = class_colour_stats(exemplar, exemplar_label, C, ignore_label)
    glob = exemplar.double().mean(dim=(2, 3))[:, None]               # (B,1,3)
    means = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], glob)
    # the exemplar's colour ratio over the classes it shares with the dataset, pixel-weighted
    w = counts * known.double()                                       # (B,C)
    shared = w.sum(1, keepdim=True)                                   # (B,1)
    ex01 = ((sums + counts[..., None]) / 2 * known.double()[:, None]).sum(1) / shared.clamp_min(1)
    exp01 = (w[..., None] * ds01).sum(1) / shared.clamp_min(1)         # (B,3)
    ratio = torch.where(shared > 0, ex01 / exp01.clamp_min(1e-6), torch.ones_like(ex01))
    prior = ((ds01[None] * ratio[:, None]).clamp(0, 1) * 2 - 1)       # (B,C,3)

    table = torch.where(counts[..., None] > 0, means,
                        torch.where(known[None, :, None], prior, glob))
    return paste_colours(label, torch.cat([table, glob], 1), ignore_label, exemplar.dtype)


__all__ = ["class_colour_stats", "class_mean_colour", "class_prior", "dataset_class_colours",
           "global_mean_colour", "paste_colours"]
