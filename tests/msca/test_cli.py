"""The `msca` console script: train/resume, synthesize on the user's own files, swap, demo,
and errors that name the file or argument at fault."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from msca import cli
from msca.models import VGGWeightsWarning
from msca.train import Trainer, TrainSettings, read_checkpoint

from test_train import TINY, tiny  # noqa: E402  (pytest puts this directory on sys.path)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exported tiny models (one optimisation step each): the MSCA one and its GAP ablation."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        for name, opt in (("full", tiny()), ("gap", tiny(alignment="gap"))):
            t = Trainer(opt, TrainSettings(steps=1, train_scenes=4), str(root / name),
                        progress=False)
            t.train()
            paths[name] = str(root / f"{name}.pt")
            t.export(paths[name])
    return paths


def write_inputs(d, h=40, w=48, num_classes=12):
    """A label map (non-square, to check the output keeps its size), an exemplar JPEG and
    the exemplar's label map, as a user would have them."""
    rng = np.random.default_rng(0)
    lab = np.zeros((h, w), np.uint8)
    lab[h // 2:] = 5
    lab[:, : w // 3] = 4
    ex = (rng.random((56, 56, 3)) * 255).astype(np.uint8)
    exl = np.zeros((56, 56), np.uint8)
    exl[28:] = 5
    paths = {"label": d / "layout.png", "exemplar": d / "photo.jpg",
             "exemplar_label": d / "photo_label.png"}
    Image.fromarray(lab, "L").save(paths["label"])
    Image.fromarray(ex).save(paths["exemplar"])
    Image.fromarray(exl, "L").save(paths["exemplar_label"])
    return {k: str(v) for k, v in paths.items()}


def run(argv, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_synthesize_on_user_files(tmp_path, models, capsys):
    p = write_inputs(tmp_path)
    out = tmp_path / "out" / "result.png"
    rc, stdout, err = run(["synthesize", "--label", p["label"], "--exemplar", p["exemplar"],
                           "--exemplar-label", p["exemplar_label"], "--out", str(out),
                           "--checkpoint", models["full"], "--attention",
                           str(tmp_path / "att.png")], capsys)
    assert rc == 0, err
    with Image.open(out) as im:
        assert im.size == (48, 40) and im.mode == "RGB"  # the label map's own size
        assert np.asarray(im).std() > 0
    with Image.open(tmp_path / "att.png") as im:
        assert im.width > im.height  # exemplar + K maps in a row, two rows


def test_synthesize_without_exemplar_label_explains(tmp_path, models, capsys):
    p = write_inputs(tmp_path)
    rc, _, err = run(["synthesize", "--label", p["label"], "--exemplar", p["exemplar"],
                      "--out", str(tmp_path / "o.png"), "--checkpoint", models["full"]], capsys)
    assert rc == 2
    assert "--exemplar-label" in err and "segmentation network" in err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("which", ["label", "exemplar", "exemplar_label"])
def test_synthesize_missing_file_is_named(tmp_path, models, capsys, which):
    p = write_inputs(tmp_path)
    p[which] = str(tmp_path / f"missing_{which}.png")
    rc, _, err = run(["synthesize", "--label", p["label"], "--exemplar", p["exemplar"],
                      "--exemplar-label", p["exemplar_label"], "--out",
                      str(tmp_path / "o.png"), "--checkpoint", models["full"]], capsys)
    assert rc == 2 and f"missing_{which}.png" in err


def test_synthesize_bad_files_are_named(tmp_path, models, capsys):
    p = write_inputs(tmp_path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    rc, _, err = run(["synthesize", "--label", p["label"], "--exemplar", str(corrupt),
                      "--exemplar-label", p["exemplar_label"], "--out",
                      str(tmp_path / "o.png"), "--checkpoint", models["full"]], capsys)
    assert rc == 2 and "corrupt.jpg" in err

    bad = np.full((40, 48), 3, np.uint8)
    bad[0, 0] = 77  # class 77 of a 12-class model
    Image.fromarray(bad, "L").save(tmp_path / "badlabel.png")
    rc, _, err = run(["synthesize", "--label", str(tmp_path / "badlabel.png"), "--exemplar",
                      p["exemplar"], "--exemplar-label", p["exemplar_label"], "--out",
                      str(tmp_path / "o.png"), "--checkpoint", models["full"]], capsys)
    assert rc == 2 and "badlabel.png" in err and "77" in err

    rc, _, err = run(["synthesize", "--label", p["label"], "--exemplar", p["exemplar"],
                      "--exemplar-label", p["exemplar_label"], "--out",
                      str(tmp_path / "o.png"), "--checkpoint", str(tmp_path / "nope.pt")],
                     capsys)
    assert rc == 2 and "nope.pt" in err


def test_swap_grid(tmp_path, models, capsys):
    out = tmp_path / "grid.png"
    rc, _, err = run(["swap", "--n", "3", "--out", str(out), "--checkpoint", models["full"]],
                     capsys)
    assert rc == 0, err
    S = TINY["crop_size"] * 2 + 3  # cell: 2x enlarged image plus a gap
    with Image.open(out) as im:
        assert im.size == (4 * S, 4 * S + 14)  # (n+1) x (n+1) cells and a caption line
    rc, _, err = run(["swap", "--n", "1", "--out", str(out), "--checkpoint", models["full"]],
                     capsys)
    assert rc == 2 and "--n" in err


def test_train_and_resume_via_cli(tmp_path, capsys):
    cfg = tmp_path / "tiny_train.json"
    cfg.write_text(json.dumps({"options": {k: list(v) if isinstance(v, tuple) else v
                                           for k, v in TINY.items()},
                               "train": {"steps": 3, "train_scenes": 8, "checkpoint_every": 2}}))
    out = tmp_path / "run"
    rc, _, err = run(["train", "--config", str(cfg), "--steps", "2", "--out", str(out)], capsys)
    assert rc == 0, err
    assert read_checkpoint(str(out / "checkpoint.pt"))["step"] == 2
    # --force: the config's 3 steps move the stage bounds of the 2-step run, so this is no
    # longer an exact continuation (refused without it, see test_run_guard.py)
    rc, _, err = run(["train", "--config", str(cfg), "--out", str(out), "--resume", "--force",
                      "--export", str(tmp_path / "m.pt")], capsys)
    assert rc == 0, err
    assert read_checkpoint(str(out / "checkpoint.pt"))["step"] == 3
    assert read_checkpoint(str(tmp_path / "m.pt"))["format"] == "msca-model-v1"
    # log_every (10) > steps: each run logs its last step
    steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 3]


def test_train_errors_name_the_config(tmp_path, capsys):
    rc, _, err = run(["train", "--config", str(tmp_path / "nothere.json")], capsys)
    assert rc == 2 and "nothere.json" in err
    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps({"options": {"alignment": "bogus"}}))
    rc, _, err = run(["train", "--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "bad.json" in err and "alignment" in err
    rc, _, err = run(["train", "--config", str(cfg), "--resume", "--set", "alignment=gap",
                      "--out", str(tmp_path / "empty")], capsys)
    assert rc == 2 and "checkpoint.pt" in err


def test_demo_writes_its_outputs(tmp_path, models, capsys):
    out = tmp_path / "demo"
    rc, stdout, err = run(["demo", "--out", str(out), "--checkpoint", models["full"],
                           "--gap-checkpoint", models["gap"], "--pairs", "3"], capsys)
    assert rc == 0, err
    for f in ("swap_grid.png", "synthesis.png", "attention.png", "metrics.json"):
        assert (out / f).is_file(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["pairs"] == 3 and set(m["psnr_db"]) == {"model", "gap", "global_mean",
                                                      "mean_colour", "class_prior"}
    assert len(m["psnr_db"]["model"]["per_pair"]) == 3
    assert "mean colour per class" in stdout and "GAP" in stdout
    # the GAP slot must hold a GAP model
    rc, _, err = run(["demo", "--out", str(out), "--checkpoint", models["full"],
                      "--gap-checkpoint", models["full"], "--pairs", "1"], capsys)
    assert rc == 2 and "alignment" in err


def test_mean_colour_baseline_is_exact_on_flat_scenes():
    from msca.eval.baselines import class_mean_colour as mean_colour_baseline
    from msca.eval.metrics import psnr
    lab = torch.tensor([[[0, 0], [1, 2]]])
    ex = torch.zeros(1, 3, 2, 2)
    ex[0, :, 0, :] = 0.5          # class 0 pixels
    ex[0, :, 1, :] = -0.5         # class 1 pixels
    exl = torch.tensor([[[0, 0], [1, 1]]])
    out = mean_colour_baseline(lab, ex, exl)
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.5))
    assert torch.allclose(out[0, :, 1, 0], torch.full((3,), -0.5))
    assert torch.allclose(out[0, :, 1, 1], torch.zeros(3))  # class 2 absent: global mean
    assert psnr(out, out).item() > 100


def test_help_mentions_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for c in ("train", "synthesize", "swap", "demo"):
        assert c in text
    with pytest.raises(SystemExit):
        cli.main(["synthesize", "--help"])
    assert "segmentation network" in capsys.readouterr().out
