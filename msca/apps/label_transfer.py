"""Attention maps (paper Fig. 6) and the label transfer matrix with hierarchical clustering
(Appendix B, Figs. 10 and 12).

Transfer matrix: "we use the learned MSCA at the finest scale to transfer one-hot encoded
semantic label maps of the exemplar images, then compare the transferred results against the
target semantic label map". For a pair, with the scale-0 attention alpha (K x P2), beta
(K x P1) and the Eq. 6 mask m (K) of the model on that pair, the one-hot exemplar label map
O (C x P2) is carried exactly as MSCA carries features:

    T_pair = ((O alpha^T) * m) beta          (C x P1): how much of each exemplar class reaches
                                             each target position
    M[s, t] += sum over target positions of class t of T_pair[s, :]

Summed over pairs of the test split, each column t (a target class) is normalised to sum 1:
M[s, t] is the share of the features written to target class t that came from exemplar class
s. Rows: exemplar classes (vertical axis), columns: target classes (horizontal axis).

Clustering (Appendix B): each row of M is the feature vector of its class; the diagonal entry
is replaced by the row's second largest value (self-transfer would otherwise dominate every
distance); average-linkage agglomerative clustering with Euclidean distances; dendrogram.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image, ImageDraw


# --------------------------------------------------------------------------- attention maps
@torch.no_grad()
def attention_maps(G, label, exemplar, exemplar_label, scale: int = 0):
    """(alpha (B,K,h2,w2), beta (B,K,h1,w1), mask (B,K) or None) at `scale`."""
    if getattr(G, "alignment", None) != "msca":
        raise ValueError(f"attention: the {getattr(G, 'alignment', None)!r} model has no "
                         "attention maps (only alignment='msca' has)")
    if not 0 <= scale < len(G.attention_k):
        raise ValueError(f"--scale: expected 0..{len(G.attention_k) - 1}, got {scale}")
    G.eval()
    feats = G.extract_features(label, exemplar, exemplar_label)
    _, attn = G.align(feats, return_attention=True)
    alpha, beta = attn[scale]
    return alpha, beta, G.feature_masks(feats)[scale]


def attention_files(*, out: str, checkpoint: str, label=None, exemplar=None,
                    exemplar_label=None, scale: int = 0, backend=None, seed: int = 0,
                    index: int = 0):
    from msca.train.checkpoint import load_generator

    from .synthesize import attention_figure, load_inputs
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    size = opt.crop_size
    if label is None and exemplar is None and exemplar_label is None:
        from msca.data.procedural import CrossScenePairs
        it = CrossScenePairs("test", size, index + 1, seed=seed)[index]
        c1, x2, c2 = it["label"][None], it["exemplar"][None], it["exemplar_label"][None]
    else:
        if label is None or exemplar is None:
            raise ValueError("--label, --exemplar, --exemplar-label: give all three (your own "
                             "files) or none (a procedural test pair)")
        c1, x2, c2, _ = load_inputs(label, exemplar, exemplar_label, opt.num_classes, size,
                                    opt.ignore_label)
    alpha, beta, _ = attention_maps(G, c1, x2, c2, scale)
    fig = attention_figure(x2[0], c1[0], alpha[0], beta[0], opt.num_classes, scale=3)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.save(out)
    return fig


# --------------------------------------------------------------------------- transfer matrix
def _onehot(lab: torch.Tensor, C: int, ignore_label) -> torch.Tensor:
    from msca.models.discriminator import one_hot
    return one_hot(lab, C, ignore_label, torch.float64)


@torch.no_grad()
def transfer_counts(G, label, exemplar, exemplar_label, scale: int = 0) -> torch.Tensor:
    """(C, C) un-normalised transfer mass for a batch of pairs: rows exemplar classes, columns
    target classes (module docstring)."""
    C = G.num_classes
    alpha, beta, mask = attention_maps(G, label, exemplar, exemplar_label, scale)
    B, K = alpha.shape[:2]
    h2, w2 = alpha.shape[-2:]
    h1, w1 = beta.shape[-2:]
    from msca.models.encoders import resize_labels
    c2 = resize_labels(exemplar_label, (h2, w2))
    c1 = resize_labels(label, (h1, w1))
    O = _onehot(c2, C, G.ignore_label).reshape(B, C, -1)                  # (B,C,P2)
    V = O @ alpha.double().reshape(B, K, -1).transpose(1, 2)              # (B,C,K)
    if mask is not None:
        V = V * mask.double().unsqueeze(1)
    T = V @ beta.double().reshape(B, K, -1)                               # (B,C,P1)
    tgt = _onehot(c1, C, G.ignore_label).reshape(B, C, -1)                # (B,C,P1)
    return torch.einsum("bsp,btp->st", T, tgt)


def transfer_matrix(G, pairs: int = 200, size: int | None = None, seed: int = 0,
                    batch: int = 20, scale: int = 0) -> dict:
    """The matrix over `pairs` procedural test pairs -> {"matrix" (C,C) column-normalised
    (NaN columns for target classes that never occur), "counts", "present"}."""
    from msca.data.procedural import CrossScenePairs
    size = size or 64
    data = CrossScenePairs("test", size, pairs, seed=seed)
    C = G.num_classes
    counts = torch.zeros(C, C, dtype=torch.float64)
    seen_src = torch.zeros(C, dtype=torch.bool)
    seen_tgt = torch.zeros(C, dtype=torch.bool)
    for s in range(0, pairs, batch):
        items = [data[i] for i in range(s, min(s + batch, pairs))]
        c1 = torch.stack([it["label"] for it in items])
        x2 = torch.stack([it["exemplar"] for it in items])
        c2 = torch.stack([it["exemplar_label"] for it in items])
        counts += transfer_counts(G, c1, x2, c2, scale)
        seen_src |= torch.bincount(c2[c2 < C].flatten(), minlength=C)[:C] > 0
        seen_tgt |= torch.bincount(c1[c1 < C].flatten(), minlength=C)[:C] > 0
    col = counts.sum(0, keepdim=True)
    matrix = torch.where(col > 0, counts / col.clamp_min(1e-300), torch.full_like(counts,
                                                                                  float("nan")))
    return {"matrix": matrix, "counts": counts, "present_exemplar": seen_src,
            "present_target": seen_tgt}


def cluster_features(matrix: np.ndarray) -> np.ndarray:
    """Rows as features, each diagonal entry replaced by the row's second largest value."""
    f = np.nan_to_num(np.array(matrix, dtype=np.float64), nan=0.0)
    for i in range(f.shape[0]):
        others = np.sort(f[i])[::-1]
        f[i, i] = others[1] if len(others) > 1 else 0.0
    return f


def average_linkage(features: np.ndarray) -> list[tuple[int, int, float, int]]:
    """Agglomerative clustering, average linkage, Euclidean distance. Returns the merges as
    (cluster a, cluster b, distance, size) with scipy's numbering: leaves 0..n-1, the i-th merge
    creates cluster n + i."""
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"features: need at least 2 rows to cluster, got {n}")
    d = np.sqrt(((features[:, None, :] - features[None, :, :]) ** 2).sum(-1))
    members = {i: [i] for i in range(n)}
    merges = []
    nxt = n
    while len(members) > 1:
        keys = sorted(members)
        best = None
        for ai, a in enumerate(keys):
            for b in keys[ai + 1:]:
                dist = float(d[np.ix_(members[a], members[b])].mean())
                if best is None or dist < best[2] - 1e-15:
                    best = (a, b, dist)
        a, b, dist = best
        members[nxt] = members.pop(a) + members.pop(b)
        merges.append((a, b, dist, len(members[nxt])))
        nxt += 1
    return merges


def leaf_order(merges, n: int) -> list[int]:
    def walk(c):
        if c < n:
            return [c]
        a, b, _, _ = merges[c - n]
        return walk(a) + walk(b)
    return walk(n + len(merges) - 1)


# --------------------------------------------------------------------------- figures
def _colour(v: float) -> tuple:
    """0 -> blue, 0.5 -> white-ish, 1 -> red (the paper's blue-to-red)."""
    if v != v:  # NaN: class absent
        return (200, 200, 200)
    v = min(max(v, 0.0), 1.0)
    if v < 0.5:
        t = v / 0.5
        return (int(40 + 215 * t), int(60 + 195 * t), 255)
    t = (v - 0.5) / 0.5
    return (255, int(255 - 215 * t), int(255 - 215 * t))


def _vtext(text: str, fill="black") -> Image.Image:
    tmp = Image.new("RGB", (8 * len(text) + 4, 12), "white")
    ImageDraw.Draw(tmp).text((1, 0), text, fill=fill)
    return tmp.rotate(90, expand=True)


def transfer_figure(matrix: np.ndarray, names, merges, rows, scale: int = 0) -> Image.Image:
    """Left: the matrix (rows = exemplar classes, columns = target classes; blue 0 .. red 1,
    grey = class absent). Right: the dendrogram of the rows."""
    n = len(rows)
    cell, left = 26, 80
    top = 40 + 8 * max(len(names[r]) for r in rows) + 12   # room for the vertical labels
    W_mat = left + n * cell
    dendro_w = 260
    H = top + n * cell + 40
    img = Image.new("RGB", (W_mat + 30 + dendro_w + 90, H), "white")
    d = ImageDraw.Draw(img)
    d.text((2, 2), f"label transfer matrix (MSCA of scale {scale}, 0 finest): share of each "
           "target class's "
           "features (column) coming from each exemplar class (row)", fill="black")
    d.text((2, 16), "blue = 0, red = 1, grey = target class absent; right: average-linkage "
           "clustering of the rows (diagonal -> 2nd largest)", fill="black")
    for j, c in enumerate(rows):
        lab = _vtext(names[c])
        img.paste(lab, (left + j * cell + 7, top - 4 - lab.height))
    d.text((left + n * cell // 2 - 40, top + n * cell + 6), "target class ->", fill="black")
    for i, r in enumerate(rows):
        d.text((4, top + i * cell + 8), names[r], fill="black")
        for j, c in enumerate(rows):
            v = float(matrix[r, c])
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_colour(v))
            if v == v:
                d.text((x0 + 2, y0 + 8), f"{v:.2f}"[1:] if v < 1 else "1.0",
                       fill="black")
    d.text((4, top - 14), "exemplar", fill="black")
    # dendrogram: leaves on the right-hand column, distances growing to the left
    order = leaf_order(merges, n)
    x_leaf = W_mat + 30 + dendro_w
    y_of = {leaf: top + k * cell + cell // 2 for k, leaf in enumerate(order)}
    maxd = max(m[2] for m in merges) or 1.0
    x_of = {leaf: x_leaf for leaf in range(n)}
    for k, (a, b, dist, _) in enumerate(merges):
        x = x_leaf - int(dendro_w * dist / maxd)
        ya, yb = y_of[a], y_of[b]
        d.line([x_of[a], ya, x, ya], fill="black")
        d.line([x_of[b], yb, x, yb], fill="black")
        d.line([x, ya, x, yb], fill="black")
        y_of[n + k] = (ya + yb) // 2
        x_of[n + k] = x
    for k, leaf in enumerate(order):
        d.text((x_leaf + 4, top + k * cell + 8), names[rows[leaf]], fill="black")
    d.text((W_mat + 30, top + n * cell + 6), f"average-linkage distance (max {maxd:.2f})",
           fill="black")
    return img


def label_transfer_files(*, out: str, checkpoint: str, pairs: int = 200, backend=None,
                         seed: int = 0, scale: int = 0) -> dict:
    from msca.data.procedural import CLASS_NAMES
    from msca.train.checkpoint import load_generator

    if pairs < 1:
        raise ValueError(f"--pairs: expected >= 1, got {pairs}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    res = transfer_matrix(G, pairs, opt.crop_size, seed, scale=scale)
    present = (res["present_exemplar"] & res["present_target"]).nonzero().flatten().tolist()
    names = list(CLASS_NAMES) + [f"class {i}" for i in range(len(CLASS_NAMES),
                                                             G.num_classes)]
    M = res["matrix"].numpy()
    sub = M[np.ix_(present, present)]
    merges = average_linkage(cluster_features(sub))
    fig = transfer_figure(M, names, merges, present, scale)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.save(out)
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump({"classes": [names[i] for i in present], "pairs": pairs, "scale": scale,
                   "matrix_rows_exemplar_cols_target":
                       [[round(float(M[r, c]), 4) for c in present] for r in present],
                   "merges": [(int(a), int(b), round(dist, 4), int(s))
                              for a, b, dist, s in merges]}, fh, indent=1)
        fh.write("\n")
    return {"matrix": M, "present": present, "merges": merges, "figure": fig}


__all__ = ["attention_files", "attention_maps", "average_linkage", "cluster_features",
           "label_transfer_files", "leaf_order", "transfer_counts", "transfer_figure",
           "transfer_matrix"]
