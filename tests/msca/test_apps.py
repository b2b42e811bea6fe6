"""The Sec. 4 apps (interpolation, spatial interpolation, extrapolation, attention maps, label
transfer, retrieval) and `msca evaluate`, on tiny models; the CLI subcommands write PNGs that
open."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from msca import cli
from msca.apps.extrapolate import extrapolate, patch_locations, patch_window
from msca.apps.interpolate import interpolate_styles, procedural_triplet, spatial_interpolate
from msca.apps.label_transfer import (attention_maps, average_linkage, cluster_features,
                                      leaf_order, transfer_counts)
from msca.apps.synthesize import synthesize
from msca.models import VGGWeightsWarning, build_generator
from msca.train import Trainer, TrainSettings

from test_train import tiny  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        yield


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def G():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        torch.manual_seed(0)
        return build_generator(tiny(init_type="default")).eval()


@pytest.fixture(scope="module")
def triplet():
    return procedural_triplet(32, seed=0, index=1)


# --------------------------------------------------------------------------- interpolation
def test_interpolation_endpoints_are_the_single_exemplar_outputs(G, triplet):
    c1, xa, ca, xb, cb = triplet
    outs = interpolate_styles(G, c1, xa, ca, xb, cb, [1.0, 0.5, 0.0])
    ra, rb = synthesize(G, c1, xa, ca), synthesize(G, c1, xb, cb)
    assert _rel(outs[0], ra) < 1e-5 and _rel(outs[2], rb) < 1e-5
    assert _rel(outs[1], ra) > 1e-3 and _rel(outs[1], rb) > 1e-3
    with pytest.raises(ValueError, match="alphas"):
        interpolate_styles(G, c1, xa, ca, xb, cb, [1.5])


def test_interpolation_bias_shifts_attention_mass(G, triplet):
    """The spatial attention mass on A's half grows with a (the paper's log(a/(1-a)))."""
    from msca.apps.interpolate import _side_by_side, style_bias
    c1, xa, ca, xb, cb = triplet
    feats, _, _, widths = _side_by_side(G, c1, xa, ca, xb, cb)
    mass = []
    for a in (0.1, 0.5, 0.9):
        sb = [style_bias(a, G.attention_k[i], widths[i], feats.fx2[i]) for i in range(5)]
        with torch.no_grad():
            _, attn = G.align(feats, spatial_bias=sb, return_attention=True)
        alpha = attn[0][0].double()  # (B, K, H, W): one softmax per map
        mass.append(alpha[..., :widths[0]].sum((-2, -1)) / alpha.sum((-2, -1)))
    assert (mass[0] < mass[1]).all() and (mass[1] < mass[2]).all()
    # the bias is exact in odds, map by map (not for the mass pooled over maps):
    # odds(a) / odds(1/2) == a / (1 - a)
    odds = [m / (1 - m) for m in mass]
    assert torch.allclose(odds[2] / odds[1], torch.full_like(odds[1], 9.0), rtol=1e-3)
    assert torch.allclose(odds[1] / odds[0], torch.full_like(odds[1], 9.0), rtol=1e-3)


def test_spatial_interpolation(G, triplet):
    c1, xa, ca, xb, cb = triplet
    ra, rb = synthesize(G, c1, xa, ca), synthesize(G, c1, xb, cb)
    ones = spatial_interpolate(G, c1, xa, ca, xb, cb, weight=lambda w: torch.ones(w))
    zeros = spatial_interpolate(G, c1, xa, ca, xb, cb, weight=lambda w: torch.zeros(w))
    assert _rel(ones, ra) < 1e-5 and _rel(zeros, rb) < 1e-5
    half = spatial_interpolate(G, c1, xa, ca, xb, cb, weight=lambda w: torch.full((w,), 0.5))
    mixed = spatial_interpolate(G, c1, xa, ca, xb, cb)
    assert mixed.shape == ra.shape
    assert _rel(mixed, ra) > 1e-3 and _rel(mixed, rb) > 1e-3 and _rel(mixed, half) > 1e-3


def test_interpolation_needs_msca():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        gap = build_generator(tiny(alignment="gap")).eval()
    c1, xa, ca, xb, cb = procedural_triplet(32)
    with pytest.raises(ValueError, match="MSCA"):
        interpolate_styles(gap, c1, xa, ca, xb, cb, [0.5])
    with pytest.raises(ValueError, match="MSCA"):
        spatial_interpolate(gap, c1, xa, ca, xb, cb)
    with pytest.raises(ValueError, match="attention"):
        attention_maps(gap, c1, xa, ca)


# --------------------------------------------------------------------------- extrapolation
class _Const(torch.nn.Module):
    """A stand-in generator whose patches are one colour per call (a function of the crop)."""

    def forward(self, label, exemplar, exemplar_label):
        v = label.float().mean(dim=(1, 2)).view(-1, 1, 1, 1) / 20
        return v.expand(-1, 3, *label.shape[-2:]).clone()


def test_extrapolation_is_a_normalised_weighted_average():
    label = torch.zeros(1, 48, 40, dtype=torch.long)
    ex, exl = torch.zeros(1, 3, 16, 16), torch.zeros(1, 16, 16, dtype=torch.long)
    out = extrapolate(_Const(), label, ex, exl, patch=16, n_random=3)
    torch.testing.assert_close(out, torch.zeros(1, 3, 48, 40))   # every patch says 0
    label[..., :, 20:] = 10
    out = extrapolate(_Const(), label, ex, exl, patch=16, n_random=0)
    # with corners only, each pixel sees the corner patches that cover it
    assert float(out[0, 0, 0, 0]) == 0 and float(out[0, 0, -1, -1]) == pytest.approx(0.5)
    assert (out >= 0).all() and (out <= 0.5 + 1e-6).all()
    w = patch_window(16)
    assert w.min() > 0 and w[7:9, 7:9].min() == w.max()
    assert patch_locations(48, 40, 16, 2, seed=1)[:4] == [(0, 0), (0, 24), (32, 0), (32, 24)]
    with pytest.raises(ValueError, match="patch"):
        patch_locations(8, 40, 16, 0)
    # a canvas more than twice the patch gets a covering grid
    cover = torch.zeros(80, 70)
    for t, l in patch_locations(80, 70, 16, 0):
        cover[t:t + 16, l:l + 16] = 1
    assert cover.all()


def test_extrapolation_with_the_model(G):
    from msca.data.procedural import ProceduralScenes
    item = ProceduralScenes("test", 64, 1)[0]
    ex = item["image"][:, 16:48, 16:48][None]
    exl = item["label"][16:48, 16:48][None]
    out = extrapolate(G, item["label"][None], ex, exl, patch=32, n_random=2)
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    assert out.abs().max() <= 1


# --------------------------------------------------------------------------- label transfer
def test_transfer_counts_match_a_direct_sum(G, triplet):
    c1, xa, ca, _, _ = triplet
    counts = transfer_counts(G, c1, xa, ca)
    alpha, beta, mask = attention_maps(G, c1, xa, ca)
    C, K = G.num_classes, alpha.shape[1]
    a, b = alpha[0].double().reshape(K, -1), beta[0].double().reshape(K, -1)
    m = mask[0].double() if mask is not None else torch.ones(K, dtype=torch.float64)
    src, tgt = ca[0].reshape(-1), c1[0].reshape(-1)
    direct = torch.zeros(C, C, dtype=torch.float64)
    for s in src.unique().tolist():
        Vs = (a * (src == s)).sum(1) * m                    # (K,) mass of class s per token
        for t in tgt.unique().tolist():
            direct[s, t] = (Vs[:, None] * b[:, tgt == t]).sum()
    torch.testing.assert_close(counts, direct)
    if mask is None:  # without a gate every target pixel receives mass 1
        torch.testing.assert_close(counts.sum(), torch.tensor(float(tgt.numel()),
                                                              dtype=torch.float64))


def test_clustering():
    pts = np.array([[0.0, 0], [0, 1], [10, 0], [10, 1.5], [30, 0]])
    merges = average_linkage(pts)
    assert merges[0][:2] == (0, 1) and merges[0][2] == pytest.approx(1.0)
    assert merges[1][:2] == (2, 3) and merges[1][2] == pytest.approx(1.5)
    d_pairs = [np.linalg.norm(pts[i] - pts[j]) for i in (0, 1) for j in (2, 3)]
    assert merges[2][:2] == (5, 6) and merges[2][2] == pytest.approx(np.mean(d_pairs))
    assert merges[-1][3] == 5
    assert sorted(leaf_order(merges, 5)) == list(range(5))
    f = cluster_features(np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]))
    assert f[0, 0] == 0.05 and f[1, 1] == 0.2 and f[2, 2] == 0.3


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("apps_models")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        for name, opt in (("tiny", tiny(init_type="default", name="tiny")),
                          ("tiny_gap", tiny(alignment="gap", name="tiny"))):
            t = Trainer(opt, TrainSettings(steps=1, train_scenes=4), str(root / name),
                        progress=False)
            t.train()
            paths[name] = str(root / f"{name}.pt")
            t.export(paths[name])
    return paths


def _run(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def _opens(path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        assert im.width > 50 and im.height > 30
        return im.copy()


@pytest.mark.parametrize("argv", [
    ["interpolate", "--steps", "3"], ["spatial-interpolate"], ["extrapolate", "--random", "2"],
    ["attention", "--scale", "1"], ["label-transfer", "--pairs", "3"]])
def test_app_commands_write_pngs(tmp_path, ckpt, capsys, argv):
    out = str(tmp_path / "fig.png")
    text = _run(["--threads", "1", *argv, "--checkpoint", ckpt["tiny"], "--out", out], capsys)
    assert "wrote" in text
    _opens(out)
    if argv[0] == "label-transfer":
        rec = json.load(open(tmp_path / "fig.json"))
        M = np.array(rec["matrix_rows_exemplar_cols_target"])
        assert np.allclose(M.sum(0), 1, atol=1e-3)   # every target column is a distribution


def test_app_commands_on_own_files(tmp_path, ckpt, capsys):
    from test_cli import write_inputs
    f = write_inputs(tmp_path)
    out = str(tmp_path / "i.png")
    _run(["interpolate", "--checkpoint", ckpt["tiny"], "--out", out, "--steps", "2",
          "--label", f["label"], "--exemplar-a", f["exemplar"], "--exemplar-a-label",
          f["exemplar_label"], "--exemplar-b", f["exemplar"], "--exemplar-b-label",
          f["exemplar_label"]], capsys)
    _opens(out)
    rc = cli.main(["spatial-interpolate", "--checkpoint", ckpt["tiny"], "--out", out,
                   "--label", f["label"]])
    assert rc == 2 and "give all five" in capsys.readouterr().err
    rc = cli.main(["attention", "--checkpoint", ckpt["tiny_gap"], "--out", out])
    assert rc == 2 and "no attention" in capsys.readouterr().err


def test_retrieve_command(tmp_path, capsys):
    pool = tmp_path / "pool"
    (pool / "labels").mkdir(parents=True)
    (pool / "images").mkdir()
    target = np.zeros((20, 24), np.uint8)
    target[10:] = 3
    variants = {"same.png": target, "flipped.png": target[::-1].copy(),
                "other.png": np.full((20, 24), 7, np.uint8)}
    for name, arr in variants.items():
        Image.fromarray(arr, "L").save(pool / "labels" / name)
        Image.fromarray(np.stack([arr * 20] * 3, -1)).save(pool / "images" / name)
    Image.fromarray(target, "L").save(tmp_path / "t.png")
    out = str(tmp_path / "r.png")
    text = _run(["retrieve", "--label", str(tmp_path / "t.png"), "--pool", str(pool),
                 "--k", "2", "--out", out], capsys)
    lines = [ln for ln in text.splitlines() if ln.strip()[:2] in ("1.", "2.")]
    assert len(lines) == 2 and "other.png" not in text.split("best match:")[0]
    assert "best match: same.png" in text
    _opens(out)
    rc = cli.main(["retrieve", "--label", str(tmp_path / "t.png"), "--pool",
                   str(tmp_path / "nope")])
    assert rc == 2 and "--pool" in capsys.readouterr().err


# --------------------------------------------------------------------------- evaluate
def test_evaluate_tiny(tmp_path, ckpt, capsys):
    from msca.eval.baselines import class_mean_colour as mean_colour_baseline
    from msca.eval.evaluate import evaluate, procedural_tasks
    from msca.eval.metrics import psnr
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny(init_type="default", name="tiny").to_dict()))
    ckdir = os.path.dirname(ckpt["tiny"])
    out = str(tmp_path / "t1.md")
    res = evaluate(config=str(cfg), out=out, pairs=3, pool=6, k=3, checkpoint_dir=ckdir,
                   batch=2, quiet=True)
    text = open(out).read()
    cols = res["columns"]
    assert cols["full"]["status"] == "ok" and cols["gap"]["status"] == "ok"
    for key in ("stylecode", "noattn", "nofm", "noglobal"):
        assert cols[key]["status"] == "not trained"
    assert text.count("not trained") >= 4 * 20
    assert "unavailable (no weights)" in text and "| cross-scene | PSNR" in text
    assert "| retrieving | Lstyle" in text and "| duplicating | SSIM" in text
    # the table's numbers are the metrics of the outputs, recomputed independently here
    t = procedural_tasks(32, 3, 6, 0, k=3)["cross-scene"]
    ref = psnr(mean_colour_baseline(t["label"], t["exemplar"], t["exemplar_label"]),
               t["target"]).mean()
    got = cols["meancolour"]["tasks"]["cross-scene"]["summary"]["PSNR"]["mean"]
    assert got == pytest.approx(float(ref), rel=1e-9)
    assert json.load(open(tmp_path / "t1.json"))["pairs"] == 3


def test_procedural_tasks_are_well_formed():
    from msca.eval.evaluate import procedural_tasks
    t = procedural_tasks(32, 4, 8, 0, k=3)
    d, m, r = t["duplicating"], t["mirroring"], t["retrieving"]
    assert torch.equal(d["exemplar"], d["target"])
    assert torch.equal(m["exemplar"], d["target"].flip(-1))
    assert torch.equal(m["exemplar_label"], d["label"].flip(-1))
    for i in range(4):  # the retrieved exemplar is never the target itself
        assert not torch.equal(r["exemplar"][i], d["target"][i])
    assert not torch.equal(r["target"], r["uncorrected_target"])   # colour-corrected
    assert t["cross-scene"]["target"].shape == (4, 3, 32, 32)


@pytest.mark.skipif(not os.path.isfile(os.path.join(REPO, "checkpoints", "demo.pt")),
                    reason="checkpoints/demo.pt not present")
def test_evaluate_demo_checkpoint_two_pairs(tmp_path):
    from msca.eval.evaluate import evaluate
    shutil.copy(os.path.join(REPO, "checkpoints", "demo.pt"), tmp_path / "demo.pt")
    res = evaluate(config="demo", out=str(tmp_path / "t.md"), pairs=2, pool=5, k=3,
                   checkpoint_dir=str(tmp_path), quiet=True)
    full = res["columns"]["full"]
    from msca.train.config import load_config
    steps = load_config("demo")[1].steps      # the shipped model was trained with the config
    assert full["status"] == "ok" and full["step"] == steps and not full["notes"], full["notes"]
    assert res["columns"]["gap"]["status"] == "not trained"
    p = full["tasks"]["cross-scene"]["summary"]["PSNR"]["mean"]
    assert 5 < p < 60


def test_evaluate_on_a_folder(tmp_path, ckpt):
    from msca.eval.evaluate import evaluate
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        lab = np.zeros((40, 40), np.uint8)
        lab[20 + i:] = 5
        Image.fromarray(lab, "L").save(root / "labels" / f"s{i}.png")
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(
            root / "images" / f"s{i}.png")
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(tiny(init_type="default", name="tiny").to_dict()))
    res = evaluate(config=str(cfg), out=str(tmp_path / "f.md"), pairs=2, k=2,
                   checkpoint_dir=os.path.dirname(ckpt["tiny"]), dataroot=str(root),
                   quiet=True)
    assert res["tasks"] == ["retrieving", "mirroring", "duplicating"]   # no exact truth here
    assert res["pairs"] == 2 and res["columns"]["full"]["status"] == "ok"
