"""`msca synthesize` on a user's own files with the shipped demo model: any aspect ratio kept,
colour-palette label maps, --device, --size checks, batch mode (folder, CSV), `msca classes`."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from msca import cli
from msca.apps import batch_inputs, class_legend, working_size
from msca.data.transforms import label_palette

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "checkpoints", "demo.pt")
NUM_CLASSES = 16  # the demo model's


def label_ids(h, w):
    lab = np.zeros((h, w), np.int64)
    lab[h // 2:] = 5                       # grass
    lab[h // 3: h // 2, w // 6: w // 2] = 2  # mountain
    lab[3 * h // 4:, 2 * w // 3:] = 7      # sea
    return lab


def write_scene(d, h=200, w=300, colour=True):
    """A 300x200 photo with its label map, and a target label map painted in the legend's
    colours (or as ids)."""
    rng = np.random.default_rng(0)
    photo = np.zeros((h, w, 3), np.uint8)
    photo[: h // 2] = (90, 140, 200)
    photo[h // 2:] = (60, 160, 60)
    photo = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255).astype(np.uint8)
    photo_label = np.zeros((h, w), np.uint8)
    photo_label[h // 2:] = 5
    target = label_ids(h, w)
    paths = {k: str(d / n) for k, n in (("label", "layout.png"), ("exemplar", "photo.jpg"),
                                        ("exemplar_label", "photo_label.png"))}
    Image.fromarray(photo).save(paths["exemplar"])
    Image.fromarray(photo_label, "L").save(paths["exemplar_label"])
    if colour:
        Image.fromarray(label_palette(NUM_CLASSES)[target]).save(paths["label"])
    else:
        Image.fromarray(target.astype(np.uint8), "L").save(paths["label"])
    return paths


def run(argv, capsys):
    rc = cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def synth_args(p, out, *extra):
    return ["synthesize", "--label", p["label"], "--exemplar", p["exemplar"],
            "--exemplar-label", p["exemplar_label"], "--out", str(out), "--checkpoint", DEMO,
            *extra]


def test_palette_label_map_keeps_300x200(tmp_path, capsys):
    p = write_scene(tmp_path)
    rc, out, err = run(synth_args(p, tmp_path / "o.png", "--device", "cpu"), capsys)
    assert rc == 0, err
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (300, 200)
        img = np.asarray(im.convert("RGB")).astype(float)
    # the layout survives: the grass half is greener than the sky half
    assert img[120:, :, 1].mean() - img[120:, :, 2].mean() > img[:60, :, 1].mean() - img[:60, :, 2].mean()


def test_colour_and_id_label_maps_give_the_same_image(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pa, pb = write_scene(a, colour=True), write_scene(b, colour=False)
    assert run(synth_args(pa, a / "o.png"), capsys)[0] == 0
    assert run(synth_args(pb, b / "o.png"), capsys)[0] == 0
    assert np.array_equal(np.asarray(Image.open(a / "o.png")), np.asarray(Image.open(b / "o.png")))


@pytest.mark.parametrize("hw", [(200, 300), (300, 200), (64, 64), (33, 257)])
def test_fit_and_restore_keep_the_aspect_ratio(hw):
    c = torch.from_numpy(label_ids(*hw))
    fitted, inner = working_size.fit_label(c, 64)
    assert min(inner) == 64 and all(s % 16 == 0 for s in fitted.shape[-2:])
    assert abs(inner[1] / inner[0] - hw[1] / hw[0]) < 0.05 * hw[1] / hw[0]
    # the padding repeats edge labels, the unpadded part is the scaled map
    assert set(fitted.unique().tolist()) <= set(c.unique().tolist())
    y = torch.zeros(1, 3, *fitted.shape[-2:])
    assert working_size.restore(y, inner, hw).shape == (3, *hw)


def test_size_checks_and_warning(tmp_path, capsys):
    p = write_scene(tmp_path, 80, 120)
    rc, _, err = run(synth_args(p, tmp_path / "o.png", "--size", "17"), capsys)
    assert rc == 2 and "--size" in err and "multiple of 16" in err
    rc, _, err = run(synth_args(p, tmp_path / "o.png", "--size", "96"), capsys)
    assert rc == 0 and "warning" in err and "trained at (64)" in err
    rc, _, err = run(synth_args(p, tmp_path / "o.png"), capsys)
    assert rc == 0 and "warning" not in err


def test_device_argument(tmp_path, capsys):
    p = write_scene(tmp_path, 64, 96)
    rc, _, err = run(synth_args(p, tmp_path / "o.png", "--device", "tpu"), capsys)
    assert rc == 2 and "--device" in err
    if not torch.cuda.is_available():
        rc, _, err = run(synth_args(p, tmp_path / "o.png", "--device", "cuda"), capsys)
        assert rc == 2 and "--device cuda" in err and "no CUDA GPU" in err
    assert working_size.resolve_device("auto").type == ("cuda" if torch.cuda.is_available()
                                                        else "cpu")


def test_unknown_colour_is_named(tmp_path, capsys):
    p = write_scene(tmp_path, 64, 96)
    img = np.asarray(Image.open(p["label"])).copy()
    img[:5, :5] = (1, 2, 3)
    Image.fromarray(img).save(p["label"])
    rc, _, err = run(synth_args(p, tmp_path / "o.png"), capsys)
    assert rc == 2 and "layout.png" in err and "(1, 2, 3) (25 pixels)" in err


def test_palette_file_roundtrip(tmp_path, capsys):
    pal_file = tmp_path / "palette.txt"
    rc, out, err = run(["classes", "--checkpoint", DEMO], capsys)
    assert rc == 0 and "sky" in out and "building" in out and "11" in out
    assert run(["classes", "--checkpoint", DEMO, "--out", str(pal_file)], capsys)[0] == 0
    pal = class_legend.read_palette(str(pal_file), NUM_CLASSES)
    assert pal[0] == ((70, 130, 180), "sky") and len(pal) == NUM_CLASSES
    # a palette of one's own colours: grass is drawn in red here
    pal_file.write_text("0 0 0 255 sky\n5 255 0 0 grass\n2 9 9 9\n7 0 255 0 sea\n")
    p = write_scene(tmp_path, 64, 96, colour=False)
    ids = label_ids(64, 96)
    colours = {0: (0, 0, 255), 5: (255, 0, 0), 2: (9, 9, 9), 7: (0, 255, 0)}
    rgb = np.zeros((64, 96, 3), np.uint8)
    for k, c in colours.items():
        rgb[ids == k] = c
    Image.fromarray(rgb).save(tmp_path / "mine.png")
    got = class_legend.read_label_map(str(tmp_path / "mine.png"), NUM_CLASSES,
                                      class_legend.read_palette(str(pal_file), NUM_CLASSES))
    assert np.array_equal(got.numpy(), ids)
    p["label"] = str(tmp_path / "mine.png")
    assert run(synth_args(p, tmp_path / "o.png", "--palette", str(pal_file)), capsys)[0] == 0
    pal_file.write_text("0 0 0 300 sky\n")
    rc, _, err = run(synth_args(p, tmp_path / "o.png", "--palette", str(pal_file)), capsys)
    assert rc == 2 and "palette.txt" in err and "line 1" in err


def test_batch_folder_and_csv(tmp_path, capsys):
    p = write_scene(tmp_path, 64, 96)
    labels = tmp_path / "labels"
    labels.mkdir()
    for i, (h, w) in enumerate([(64, 96), (80, 40), (50, 50)]):
        Image.fromarray(label_palette(NUM_CLASSES)[label_ids(h, w)]).save(labels / f"s{i}.png")
    rc, out, err = run(["synthesize", "--label", str(labels), "--exemplar", p["exemplar"],
                        "--exemplar-label", p["exemplar_label"], "--out",
                        str(tmp_path / "outs"), "--checkpoint", DEMO], capsys)
    assert rc == 0, err
    assert "wrote 3 images" in out and "msca synthesize" in err  # the tqdm bar is on stderr
    for i, size in enumerate([(96, 64), (40, 80), (50, 50)]):
        assert Image.open(tmp_path / "outs" / f"s{i}.png").size == size

    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("label,exemplar,exemplar_label,out\n"
                        "labels/s0.png,photo.jpg,photo_label.png,first.png\n"
                        "labels/s1.png,photo.jpg,photo_label.png,\n")
    rc, out, err = run(["synthesize", "--pairs", str(csv_file), "--out",
                        str(tmp_path / "csv_out"), "--checkpoint", DEMO], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "csv_out")) == ["first.png", "s1.png"]


def test_batch_inputs_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,exemplar\na.png,b.jpg\n")
    with pytest.raises(ValueError, match="exemplar_label"):
        batch_inputs.jobs_from_csv(str(bad), str(tmp_path))
    bad.write_text("label,exemplar,exemplar_label,out\na.png,b.jpg,c.png,x.png\n"
                   "d.png,b.jpg,c.png,x.png\n")
    with pytest.raises(ValueError, match="both write"):
        batch_inputs.jobs_from_csv(str(bad), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without label maps"):
        batch_inputs.jobs_from_folder(str(tmp_path / "empty"), "x.jpg", "x.png", "out")
