"""`msca evaluate`: Table 1 of the paper on the procedural test split (or a folder of images).

Tasks (paper Sec. 4; each gives a ground truth):
  cross-scene  (procedural data only) layout A in the style of scene B: G(c_A, x_B, c_B)
               against the exact render(layout_A, style_B). Real datasets have no such truth.
  retrieving   G(c, x_r, c_r) against x, x_r the exemplar retrieved from a pool of other scenes
               (msca/eval/retrieval.py: top 20 by label-histogram intersection, then the best
               match), x colour-corrected to x_r's statistics unless disabled.
  mirroring    G(c, flip(x), flip(c)) against x.
  duplicating  G(c, x, c) against x.

Columns: every method whose checkpoint exists (the ablations trained with the same config and
step count as the full model), plus the no-learning baselines of msca/eval/baselines.py (the
exemplar's global mean colour, its mean colour per class pasted on the target layout, and the
class prior, which needs the procedural dataset's class colours and so runs on procedural
data only); a missing checkpoint gives a "not trained" column. Metrics: msca/eval/metrics.py.
LPIPS and FID only with their weight files. Beside Table 1: every column's PSNR over target
pixels whose class the exemplar has / lacks (msca/eval/class_presence.py), and for the MSCA
columns the attention probe on the headline task (msca/eval/attention_probe.py).
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch

from .attention_probe import AttentionProbe, format_probe
from .baselines import class_mean_colour, class_prior, dataset_class_colours, global_mean_colour
from .class_presence import psnr_by_presence, summarise_presence
from .metrics import (UNAVAILABLE, LPIPS, InceptionFeatures, fid, psnr, ssim, style_loss,
                      target_gram_matrices)
from .retrieval import color_correct, retrieve

TASKS = ("cross-scene", "retrieving", "mirroring", "duplicating")
MEASURES = ("PSNR", "SSIM", "LPIPS", "FID", "Lstyle")
ARROWS = {"PSNR": "↑", "SSIM": "↑", "LPIPS": "↓", "FID": "↓", "Lstyle": "↓"}
HIGHER_IS_BETTER = {"PSNR": True, "SSIM": True, "LPIPS": False, "FID": False, "Lstyle": False}


@dataclass
class Method:
    key: str
    title: str
    suffix: str                 # checkpoint = <checkpoint_dir>/<name><suffix>.pt
    expect: dict = field(default_factory=dict)   # options this column must have


# Table 1's columns, the paper's order (baselines, ablations, full model last).
METHODS = (
    Method("stylecode", "global style code (SPADE VAE-like)", "_stylecode",
           {"generator": "spade_vae"}),
    Method("gap", "ours GAP", "_gap", {"alignment": "gap"}),
    Method("noattn", "ours MSCA w/o att", "_noattn", {"alignment": "label_matching"}),
    Method("nofm", "ours MSCA w/o fm", "_nofm", {"feature_masking": False}),
    Method("noglobal", "ours MSCA w/o global", "_noglobal", {"lambda_global": 0.0}),
    Method("full", "ours full", "", {}),
)
# The no-learning columns, in the order they are shown (before the learned ones).
NO_LEARNING = (
    Method("globalmean", "exemplar mean colour (no learning)", "", {}),
    Method("meancolour", "class mean colour (no learning)", "", {}),
    Method("classprior", "class prior (no learning)", "", {}),
)
NO_LEARNING_KEYS = tuple(m.key for m in NO_LEARNING)
# Options that may differ between columns without making the comparison unequal.
_FREE_OPTIONS = {"backend", "name", "checkpoint_dir", "vgg_weights", "dataroot",
                 "num_workers"}


# --------------------------------------------------------------------------- data
def procedural_tasks(size: int, n: int, pool: int, seed: int, *, k: int = 20,
                     color_correction: bool = True) -> dict:
    """The four tasks on n scenes of the procedural test split. The retrieval pool is `pool`
    further test scenes (never a target). -> {task: {"label", "exemplar", "exemplar_label",
    "target"}} (batched tensors), plus "retrieval" info."""
    from msca.data.procedural import NUM_CLASSES, CrossScenePairs, ProceduralScenes

    scenes = ProceduralScenes("test", size, n + pool, seed=seed)
    items = [scenes[i] for i in range(n + pool)]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    x, c = images[:n], labels[:n]
    tasks = _self_tasks(x, c, images[n:], labels[n:], NUM_CLASSES, k=k,
                        color_correction=color_correction)
    pairs = CrossScenePairs("test", size, n, seed=seed)
    cross = [pairs[i] for i in range(n)]
    tasks["cross-scene"] = {key: torch.stack([it[key] for it in cross]) for key in
                            ("label", "exemplar", "exemplar_label", "target")}
    return tasks


def folder_tasks(root: str, size: int, num_classes: int, n: int | None, *, k: int = 20,
                 color_correction: bool = True, ignore_label: int = 255) -> dict:
    """Retrieving, mirroring, duplicating on a folder (images/, labels/): targets are its
    first n images, the retrieval pool all the others."""
    from msca.data.folder import LabelFolder

    ds = LabelFolder(root, size, num_classes)
    if len(ds) < 2:
        raise ValueError(f"--dataroot {root!r}: needs at least 2 images (a target and a pool)")
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    n = min(n or len(ds), len(ds))
    return _self_tasks(images[:n], labels[:n], images, labels, num_classes, k=k,
                       color_correction=color_correction, pool_includes_targets=True,
                       ignore_label=ignore_label)


def _self_tasks(x, c, pool_x, pool_c, num_classes, *, k, color_correction,
                pool_includes_targets=False, ignore_label=255) -> dict:
    n = x.shape[0]
    tasks = {"duplicating": {"label": c, "exemplar": x, "exemplar_label": c, "target": x},
             "mirroring": {"label": c, "exemplar": x.flip(-1), "exemplar_label": c.flip(-1),
                           "target": x}}
    best, info = [], []
    for i in range(n):
        r = retrieve(c[i], pool_c, num_classes, k=k, ignore_label=ignore_label,
                     exclude=(i,) if pool_includes_targets else ())
        best.append(r["best"])
        info.append(r)
    ex, exl = pool_x[best], pool_c[best]
    target = color_correct(x, ex) if color_correction else x
    tasks["retrieving"] = {"label": c, "exemplar": ex, "exemplar_label": exl,
                           "target": target, "uncorrected_target": x}
    tasks["retrieval"] = info
    return tasks


# --------------------------------------------------------------------------- models
def baseline_function(key: str, ignore_label: int | None, dataset_colours=None):
    """The no-learning column `key` as f(label, exemplar, exemplar_label) -> image."""
    if key == "globalmean":
        return global_mean_colour
    if key == "meancolour":
        return lambda c1, x2, c2: class_mean_colour(c1, x2, c2, ignore_label=ignore_label)
    if key == "classprior":
        if dataset_colours is None:
            raise ValueError("dataset_colours: the class prior needs the dataset's class colours")
        return lambda c1, x2, c2: class_prior(c1, x2, c2, dataset_colours,
                                              ignore_label=ignore_label)
    raise ValueError(f"key: expected one of {NO_LEARNING_KEYS}, got {key!r}")


def _load_column(method: Method, path: str, config_opt, backend):
    """(G, step, notes) or raises FileNotFoundError."""
    from msca.train.checkpoint import load_generator, read_checkpoint

    ckpt = read_checkpoint(path)
    G, opt = load_generator(path, backend)
    notes = []
    for key, want in method.expect.items():
        if getattr(opt, key) != want:
            notes.append(f"{key}={getattr(opt, key)!r}, expected {want!r}")
    differ = []
    for key, value in config_opt.to_dict().items():
        if key in _FREE_OPTIONS or key in method.expect:
            continue
        theirs = opt.to_dict().get(key)
        if theirs != value:
            differ.append(f"{key}={theirs!r} (config {value!r})")
    if differ:
        notes.append("differs from the config: " + ", ".join(differ))
    return G, int(ckpt.get("step", -1)), notes


@torch.no_grad()
def _run(G, task: dict, batch: int, cache: dict | None = None, baseline=None,
         probe: AttentionProbe | None = None) -> torch.Tensor:
    """The column's outputs on one task, in batches (G None: the no-learning `baseline`
    function). For generators with the MSCA feature stage the exemplar's VGG features are
    computed once per task and batch and shared by all columns whose frozen VGG is the same
    network (`cache`: fingerprint -> features). `probe`: fed the attention maps, if any."""
    outs = []
    n = task["label"].shape[0]
    for bi, s in enumerate(range(0, n, batch)):
        sl = slice(s, s + batch)
        c1, x2, c2 = task["label"][sl], task["exemplar"][sl], task["exemplar_label"][sl]
        if G is None:
            outs.append(baseline(c1, x2, c2).float())
            continue
        G.eval()
        if hasattr(G, "extract_features") and cache is not None:
            key = (tuple(G.vgg.fingerprint().tolist()), bi)
            if key not in cache:
                cache[key] = G.vgg_features(x2)
            feats = G.extract_features(c1, x2, c2, vgg_features=cache[key])
            if probe is not None:
                fx1, attn = G.align(feats, return_attention=True)
                probe.update(attn, c1, x2, c2, task["target"][sl])
            else:
                fx1 = G.align(feats)
            outs.append(G.synthesize(fx1, feats.fc1).float())
        else:
            outs.append(G(c1, x2, c2).float())
    return torch.cat(outs)


def _scores(pred, target, vgg, lpips_net, inception, batch, target_grams=None) -> dict:
    """Per image PSNR, SSIM, Lstyle (and LPIPS), one FID. `target_grams`: a dict this fills
    with the target's Gram matrices per batch on first use and reuses afterwards (the targets
    are the same for every column)."""
    out = {"PSNR": psnr(pred, target).tolist(), "SSIM": ssim(pred, target).tolist()}
    st = []
    lp = []
    for bi, s in enumerate(range(0, pred.shape[0], batch)):
        grams = None if target_grams is None else target_grams.get(bi)
        if grams is None:
            grams = target_gram_matrices(target[s:s + batch], vgg)
            if target_grams is not None:
                target_grams[bi] = grams
        st += style_loss(pred[s:s + batch], target[s:s + batch], vgg,
                         target_grams=grams).tolist()
        if lpips_net is not None:
            lp += lpips_net(pred[s:s + batch], target[s:s + batch]).tolist()
    out["Lstyle"] = st
    out["LPIPS"] = lp if lpips_net is not None else None
    out["FID"] = fid(inception(pred), inception(target)) if inception is not None else None
    return out


def _summary(values):
    if values is None:
        return None
    if isinstance(values, float):
        return {"mean": values}
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if t.numel() > 1 else 0.0,
            "n": t.numel()}


# --------------------------------------------------------------------------- main
def evaluate(*, config: str = "demo", out: str = os.path.join("out", "eval", "table1.md"),
             pairs: int = 100, pool: int = 300, k: int = 20, color_correction: bool = True,
             checkpoint_dir: str | None = None, checkpoints: dict | None = None,
             dataroot: str | None = None, lpips_vgg16: str | None = None,
             lpips_lin: str | None = None, fid_inception: str | None = None,
             backend: str | None = None, batch: int = 25, quiet: bool = False) -> dict:
    """Build the tasks, run every available column, write `out` (markdown) and
    `out` with .json (all numbers), print the table. Returns the results dict."""
    from msca.models.vgg import build_vgg19
    from msca.train.config import load_config

    t0 = time.time()
    if pairs < 2:
        raise ValueError(f"--pairs: expected >= 2, got {pairs}")
    if pool < 1:
        raise ValueError(f"--pool: expected >= 1, got {pool}")
    if (lpips_vgg16 is None) != (lpips_lin is None):
        raise ValueError("--lpips-vgg16, --lpips-lin: LPIPS needs both files (the VGG-16 "
                         "backbone and the linear layers)")
    opt, _ = load_config(config)
    size = opt.crop_size
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # the config's folder next to the package first (the shipped models), never silently a
    # same-named folder of the working directory when the shipped one exists
    shipped = os.path.join(repo, opt.checkpoint_dir)
    ckdir = checkpoint_dir or (shipped if os.path.isdir(shipped) else opt.checkpoint_dir)

    lpips_net = LPIPS.from_files(lpips_vgg16, lpips_lin) if lpips_vgg16 else None
    inception = InceptionFeatures(fid_inception) if fid_inception else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vgg = build_vgg19(opt.vgg_weights or None, warn=False)

    if dataroot:
        tasks = folder_tasks(dataroot, size, opt.num_classes, pairs, k=k,
                             color_correction=color_correction, ignore_label=opt.ignore_label)
    else:
        tasks = procedural_tasks(size, pairs, pool, opt.seed, k=k,
                                 color_correction=color_correction)
    task_names = [t for t in TASKS if t in tasks]
    headline = "cross-scene" if "cross-scene" in task_names else task_names[0]
    # the class prior's dataset colours: the procedural train split (never a test scene)
    ds_colours = None if dataroot else dataset_class_colours(size, seed=opt.seed)
    t_data = time.time() - t0

    columns = list(NO_LEARNING) + list(METHODS)
    results: dict = {}
    feature_cache = {t: {} for t in task_names}
    gram_cache = {t: {} for t in task_names}
    for m in columns:
        entry = {"title": m.title, "status": "ok", "notes": []}
        results[m.key] = entry
        G = baseline = None
        if m.key in NO_LEARNING_KEYS:
            if m.key == "classprior" and ds_colours is None:
                entry["status"] = "procedural data only"
                continue
            baseline = baseline_function(m.key, opt.ignore_label, ds_colours)
        else:
            path = (checkpoints or {}).get(m.key) or os.path.join(
                ckdir, f"{opt.name}{m.suffix}.pt")
            entry["checkpoint"] = path
            if not os.path.isfile(path):
                entry["status"] = "not trained"
                continue
            G, entry["step"], entry["notes"] = _load_column(m, path, opt, backend)
        tm = time.time()
        entry["tasks"] = {}
        for name in task_names:
            task = tasks[name]
            probe = (AttentionProbe(opt.num_classes, opt.ignore_label)
                     if name == headline and getattr(G, "alignment", None) == "msca" else None)
            pred = _run(G, task, batch, feature_cache[name], baseline, probe)
            sc = _scores(pred, task["target"], vgg, lpips_net, inception, batch,
                         gram_cache[name])
            split = psnr_by_presence(pred, task["target"], task["label"],
                                     task["exemplar_label"], opt.ignore_label)
            entry["tasks"][name] = {"per_image": {k2: v for k2, v in sc.items()
                                                  if isinstance(v, list)},
                                    "summary": {k2: _summary(v) for k2, v in sc.items()},
                                    "by_exemplar_class": summarise_presence(split)}
            if probe is not None:
                entry["attention"] = probe.summary()
        entry["wall_s"] = round(time.time() - tm, 1)

    res = {"config": config, "size": size, "pairs": tasks[task_names[0]]["label"].shape[0],
           "pool": None if dataroot else pool, "k": k, "color_correction": color_correction,
           "dataset": dataroot or "procedural test split", "tasks": task_names,
           "headline_task": headline,
           "vgg": vgg.weights_source,
           "lpips": lpips_vgg16 and f"{lpips_vgg16} + {lpips_lin}" or UNAVAILABLE,
           "fid": fid_inception or UNAVAILABLE, "columns": results,
           "data_s": round(t_data, 1), "wall_s": round(time.time() - t0, 1)}
    if "retrieving" in tasks:
        info = tasks["retrieval"]
        res["retrieval"] = {"mean_intersection_top1": float(sum(r["scores"][0] for r in info)
                                                            / len(info)),
                            "mean_agreement_best": float(sum(r["agreement"] for r in info)
                                                         / len(info))}
    text = format_table(res)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        fh.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump(res, fh, indent=1)
        fh.write("\n")
    if not quiet:
        print(text)
        print(f"wrote {out} and {os.path.splitext(out)[0]}.json ({res['wall_s']} s)")
    return res


# --------------------------------------------------------------------------- table
def _fmt(measure: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if measure == "Lstyle":
        return f"{v:.2e}"
    if measure in ("SSIM", "LPIPS"):
        return f"{v:.3f}"
    return f"{v:.2f}"


def format_table(res: dict) -> str:
    cols = list(res["columns"].items())
    head = "| task | measure | " + " | ".join(c["title"] for _, c in cols) + " |"
    sep = "|---|---|" + "---|" * len(cols)
    lines = [f"# Table 1 (reproduction): {res['dataset']}, {res['pairs']} targets at "
             f"{res['size']}x{res['size']}", "", head, sep]
    for task in res["tasks"]:
        for measure in MEASURES:
            vals = {}
            for key, c in cols:
                if c["status"] != "ok":
                    continue
                s = c["tasks"][task]["summary"][measure]
                vals[key] = None if s is None else s["mean"]
            learned = {k2: v for k2, v in vals.items()
                       if v is not None and k2 not in NO_LEARNING_KEYS}
            best = None
            if learned:
                pick = max if HIGHER_IS_BETTER[measure] else min
                best = pick(learned, key=learned.get)
            cells = []
            for key, c in cols:
                if c["status"] != "ok":
                    cells.append(c["status"])
                elif vals[key] is None:
                    cells.append(UNAVAILABLE)
                else:
                    f = _fmt(measure, vals[key])
                    cells.append(f"**{f}**" if key == best else f)
            lines.append(f"| {task} | {measure} {ARROWS[measure]} | " + " | ".join(cells) + " |")
    steps = " | ".join(str(c.get("step", "-")) if c["status"] == "ok" else c["status"]
                       for _, c in cols)
    lines.append(f"| training | steps | {steps} |")
    lines += ["", _psnr_detail(res), "", _presence_detail(res), "", _probe_detail(res), "",
              "Notes:", ""]
    lines.append(f"- Bold: the best learned column per row (the no-learning columns are "
                 f"references, not ranked). Columns whose checkpoint does not exist "
                 f"are marked 'not trained'; no number is estimated.")
    if "cross-scene" in res["tasks"]:
        lines.append("- cross-scene: G(c_A, x_B, c_B) against the exact ground truth "
                     "render(layout_A, style_B) of the procedural generator.")
    if "retrieving" in res["tasks"]:
        r = res.get("retrieval", {})
        pool = (f"a pool of {res['pool']} other test scenes" if res.get("pool")
                else "the other images of the folder")
        lines.append(f"- retrieving: exemplar from {pool}: top {res['k']} by label-histogram "
                     f"intersection (mean top-1 intersection "
                     f"{r.get('mean_intersection_top1', float('nan')):.3f}), then the candidate "
                     f"whose label map agrees with the target's at the most pixels (mean "
                     f"agreement {r.get('mean_agreement_best', float('nan')):.3f}; a stand-in "
                     f"for the paper's SIFT Flow); ground truth colour-corrected to the "
                     f"exemplar (L*a*b* mean/std transfer): "
                     f"{'yes' if res['color_correction'] else 'no'}.")
    lines.append("- mirroring: exemplar = the horizontally flipped scene; duplicating: exemplar "
                 "= the scene itself.")
    lines.append(f"- PSNR on [0,1] (peak 1); SSIM Gaussian 11x11, sigma 1.5; Lstyle: mean over "
                 f"VGG-19 relu1_1..relu5_1 of the mean squared Gram difference (Gram / CHW), "
                 f"VGG-19 weights: {res['vgg']}"
                 + (" (NOT ImageNet: random frozen features, so Lstyle measures statistics of "
                    "random filters, not the paper's)" if "random" in res["vgg"] else "") + ".")
    lines.append(f"- LPIPS (VGG-16 lin): {res['lpips']}. FID (Inception pool features, one "
                 f"value per task over all its images): {res['fid']}"
                 + (f"; with {res['pairs']} images the covariance is rank-deficient and FID is "
                    "biased upwards" if res["fid"] != UNAVAILABLE else "") + ".")
    for key, c in cols:
        for n in c.get("notes", []):
            lines.append(f"- {c['title']}: {n}")
    lines.append(f"- wall time {res['wall_s']} s (data {res['data_s']} s).")
    return "\n".join(lines) + "\n"


def _psnr_detail(res: dict) -> str:
    """The headline task's PSNR with standard errors and paired differences to the full model
    (the margins are small; the means alone would overstate them)."""
    task = "cross-scene" if "cross-scene" in res["tasks"] else res["tasks"][0]
    cols = res["columns"]
    if cols.get("full", {}).get("status") != "ok":
        return f"(no paired {task} PSNR comparison: the full model is not trained)"
    ref = torch.tensor(cols["full"]["tasks"][task]["per_image"]["PSNR"], dtype=torch.float64)
    n = ref.numel()
    lines = [f"{task} PSNR per column: mean, standard error, and the full model's paired "
             f"difference (full minus column, same {n} pairs) with its standard error and the "
             f"number of pairs the full model wins:", "",
             "| column | PSNR | sem | full - column | sem | full wins |",
             "|---|---|---|---|---|---|"]
    for key, c in cols.items():
        if c["status"] != "ok":
            lines.append(f"| {c['title']} | {c['status']} | | | | |")
            continue
        v = torch.tensor(c["tasks"][task]["per_image"]["PSNR"], dtype=torch.float64)
        sem = float(v.std() / math.sqrt(n))
        if key == "full":
            lines.append(f"| {c['title']} | {float(v.mean()):.2f} | {sem:.2f} | - | - | - |")
            continue
        d = ref - v
        lines.append(f"| {c['title']} | {float(v.mean()):.2f} | {sem:.2f} | "
                     f"{float(d.mean()):+.2f} | {float(d.std() / math.sqrt(n)):.2f} | "
                     f"{int((d > 0).sum())}/{n} |")
    lines += ["", _ranking(res, task)]
    return "\n".join(lines)


def _presence_detail(res: dict) -> str:
    """The headline task's PSNR per column over target pixels whose class the exemplar has
    (present) and lacks (absent), each averaged over the pairs that have such pixels."""
    task = res.get("headline_task", res["tasks"][0])
    rows = [(c["title"], c["tasks"][task]["by_exemplar_class"]) for c in res["columns"].values()
            if c["status"] == "ok"]
    if not rows:
        return ""
    share = rows[0][1]["absent_share_mean"]
    lines = [f"{task} PSNR over target pixels whose class the exemplar has (present) or lacks "
             f"(absent; {100 * share:.1f}% of the pixels on average):", "",
             "| column | present | pairs | absent | pairs |", "|---|---|---|---|---|"]
    for title, b in rows:
        cells = [_fmt("PSNR", b[k]["mean"]) + f" | {b[k]['pairs']}" for k in ("present", "absent")]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _probe_detail(res: dict) -> str:
    """The attention probe of each MSCA column on the headline task."""
    task = res.get("headline_task", res["tasks"][0])
    parts = []
    for c in res["columns"].values():
        if c["status"] == "ok" and c.get("attention"):
            parts += [f"{c['title']}, {task}:", "", "```", format_probe(c["attention"]), "```",
                      ""]
    if not parts:
        return "(no attention probe: no MSCA column was run)"
    return "\n".join(["Attention probe (msca/eval/attention_probe.py): RGB dB is the exemplar's "
                      "colour carried through the scale's attention against the ground truth at "
                      "that scale; ceiling: the per-class mean-colour paste there; uniform: the "
                      "exemplar's mean colour (attention = global average pooling).", ""]
                     + parts).rstrip()


def _ranking(res: dict, task: str) -> str:
    """The learned columns trained for as many steps as the full model, by mean PSNR on the
    headline task: the comparison Table 1 is about (a column trained longer or shorter is not
    a fair competitor, and says so by its absence here)."""
    cols = res["columns"]
    steps = cols["full"].get("step")
    ranked = sorted(((c["tasks"][task]["summary"]["PSNR"]["mean"], c["title"])
                     for k, c in cols.items()
                     if c["status"] == "ok" and k not in NO_LEARNING_KEYS
                     and c.get("step") == steps),
                    reverse=True)
    others = [c["title"] for k, c in cols.items()
              if c["status"] == "ok" and k not in NO_LEARNING_KEYS
              and c.get("step") != steps]
    text = (f"Ranking on {task} PSNR of the learned columns trained for {steps} steps: "
            + " > ".join(f"{t} ({v:.2f})" for v, t in ranked) + ".")
    if others:
        text += " Not ranked (other step counts): " + ", ".join(others) + "."
    return text
