"""Tests of msca.data: procedural scenes, exact cross-scene ground truth, patch sampling,
folder and COCO-stuff loaders.  Small sizes throughout: the whole file runs in seconds."""
import dataclasses
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

from msca.data import coco_stuff, procedural as P
from msca.data import (Box, CocoStuff, CrossScenePairs, LabelFolder, ProceduralScenes,
                       colorize_labels, crop, crop_pair, cross_scene_item, hflip, label_palette,
                       patch_pair_task, random_hflip, render, sample_layout, sample_patch_pair,
                       sample_style, tensor_to_pil, to_tensor_image)


def _scene(seed):
    rng = np.random.default_rng(seed)
    return sample_layout(rng), sample_style(rng)


# --------------------------------------------------------------------------- procedural
def test_render_is_deterministic_and_pure():
    lay, st = _scene(1)
    colors = st.colors.copy()
    a = render(lay, st, 48, 64)
    b = render(lay, st, 48, 64)
    assert a.shape == (48, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(st.colors, colors)  # render must not mutate the style
    # the same objects rebuilt from the same seed give the same image
    lay2, st2 = _scene(1)
    assert lay2 == lay and st2 == st
    assert np.array_equal(render(lay2, st2, 48, 64), a)


def test_style_and_layout_both_change_the_image():
    lay_a, st_a = _scene(2)
    lay_b, st_b = _scene(3)
    base = render(lay_a, st_a, 64, 64).astype(int)
    assert np.abs(base - render(lay_a, st_b, 64, 64)).mean() > 5
    assert np.abs(base - render(lay_b, st_a, 64, 64)).mean() > 5


def test_label_map_range_and_resolution_independence():
    for s in range(20):
        lay, _ = _scene(100 + s)
        lab = lay.label_map(64, 96)
        assert lab.shape == (64, 96) and lab.dtype == np.uint8
        assert lab.max() < P.NUM_CLASSES
        # the layout is continuous: a 2x finer raster subsampled agrees almost everywhere
        fine = lay.label_map(128, 192)[1::2, 1::2]
        assert (fine == lab).mean() > 0.9


def test_layouts_are_varied_and_cover_every_class():
    seen, class_sets = set(), set()
    for s in range(150):
        lab = _scene(1000 + s)[0].label_map(48, 48)
        present = frozenset(np.unique(lab).tolist())
        seen |= present
        class_sets.add(present)
    assert seen == set(range(P.NUM_CLASSES))
    assert len(class_sets) > 40  # scenes differ in which classes appear, not only where
    assert len(P.CLASS_NAMES) == P.NUM_CLASSES == len(P.LABEL_COLORS) == 12
    assert P.CLASS_NAMES[0] == "sky" and P.CLASS_NAMES[11] == "building"


def test_styles_vary_time_and_season():
    styles = [_scene(s)[1] for s in range(80)]
    assert {s.time for s in styles} == set(P.TIMES)
    assert {s.season for s in styles} == set(P.SEASONS)


def test_render_speed():
    # Budget: well under 20 ms at 128 and 60 ms at 256; generous bounds for a shared machine.
    # CPU time of this process, not wall time: other jobs on the machine must not fail it.
    lay, st = _scene(7)
    for size, bound in ((128, 0.04), (256, 0.12)):
        render(lay, st, size, size)
        times = []
        for _ in range(5):
            t = time.process_time()
            render(lay, st, size, size)
            times.append(time.process_time() - t)
        assert np.median(times) < bound, (size, times)


def test_procedural_dataset_items():
    ds = ProceduralScenes("train", size=(32, 48), length=5, seed=3)
    item = ds[2]
    assert item["image"].shape == (3, 32, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 48) and item["label"].dtype == torch.int64
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert 0 <= item["label"].min() and item["label"].max() < P.NUM_CLASSES
    # the tensors are exactly the rendered scene of the reported seeds
    lay, st = P.layout_from_seed(item["layout_seed"]), P.style_from_seed(item["style_seed"])
    assert torch.equal(item["label"], torch.from_numpy(lay.label_map(32, 48).astype(np.int64)))
    assert torch.equal(item["image"], P.image_to_tensor(render(lay, st, 32, 48)))
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="split"):
        ProceduralScenes("training")


def test_procedural_dataset_determinism_and_split_separation():
    a = ProceduralScenes("train", size=24, length=4, seed=0)
    b = ProceduralScenes("train", size=24, length=4, seed=0)
    for i in range(4):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert a[i]["layout_seed"] == b[i]["layout_seed"]
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert a[0]["layout_seed"] != ProceduralScenes("train", 24, 4, seed=1)[0]["layout_seed"]
    seeds = {}
    for split in ("train", "val", "test"):
        ds = ProceduralScenes(split, size=8, length=300, seed=5)
        seeds[split] = {s for i in range(300) for s in ds.seeds(i)}
    assert not seeds["train"] & seeds["val"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["val"] & seeds["test"]
    va, te = ProceduralScenes("val", 24, 1, 0)[0], ProceduralScenes("test", 24, 1, 0)[0]
    assert not torch.equal(va["image"], te["image"])


def test_cross_scene_ground_truth_identity():
    ds = CrossScenePairs("val", size=(40, 56), length=3, seed=2)
    item = ds[1]
    for k in ("label", "exemplar", "exemplar_label", "target"):
        assert item[k].shape[-2:] == (40, 56)
    la, sa, lb, sb = (item[k] for k in ("layout_seed_a", "style_seed_a", "layout_seed_b",
                                        "style_seed_b"))
    assert len({la, sa, lb, sb}) == 4
    lay_a, lay_b = P.layout_from_seed(la), P.layout_from_seed(lb)
    sty_b = P.style_from_seed(sb)
    gt = render(lay_a, sty_b, 40, 56)
    assert torch.equal(item["target"], P.image_to_tensor(gt))
    assert torch.equal(item["exemplar"], P.image_to_tensor(render(lay_b, sty_b, 40, 56)))
    assert torch.equal(item["label"], torch.from_numpy(lay_a.label_map(40, 56).astype(np.int64)))
    assert torch.equal(item["exemplar_label"],
                       torch.from_numpy(lay_b.label_map(40, 56).astype(np.int64)))
    # A and B are unrelated scenes
    assert not torch.equal(item["label"], item["exemplar_label"])
    assert not torch.equal(item["target"], item["exemplar"])
    # deterministic
    assert torch.equal(CrossScenePairs("val", (40, 56), 3, 2)[1]["target"], item["target"])


def test_cross_scene_item_with_a_equal_b_is_a_itself():
    lay, st = _scene(11)
    item = cross_scene_item(lay, st, lay, st, 32, 32, with_source=True)
    assert torch.equal(item["target"], item["exemplar"])
    assert torch.equal(item["target"], item["image"])
    assert torch.equal(item["label"], item["exemplar_label"])


def _lit_scene(sun_x, **kw):
    """A flat grassland with one broadleaf tree and one building, lit from ``sun_x``."""
    crown = P.Blob(0.5, 0.62, 0.1, 0.1)
    lay = P.Layout(biome="countryside", horizon=0.5, ground=P.GRASS,
                   trees=(P.Tree(0.5, 0.9, 0.4, 0.2, False, crown),),
                   buildings=(P.Building(0.1, 0.3, 0.3, 0.52, 0.0),))
    st = P.untextured(_scene(5)[1])
    st = dataclasses.replace(st, time="day", sun_x=sun_x, sun_elev=0.2, sun_share=0.7,
                             instance_jitter=0.0, **kw)
    return lay, st


def test_render_is_pure_for_every_style_field():
    lay, st = _scene(21)
    snapshot = {f: np.copy(getattr(st, f)) for f in st.__dataclass_fields__}
    a = render(lay, st, 40, 52)
    _ = render(_scene(22)[0], st, 40, 52)  # another layout in between changes nothing
    assert np.array_equal(render(lay, st, 40, 52), a)
    for f, v in snapshot.items():
        assert np.array_equal(getattr(st, f), v), f


def test_sunlit_side_of_a_tree_is_brighter_and_flips_with_the_sun():
    for sun_x, lit in ((0.9, "right"), (0.1, "left")):
        lay, st = _lit_scene(sun_x)
        img = render(lay, st, 64, 64).astype(float).sum(-1)
        lab = lay.label_map(64, 64)
        left = (lab == P.TREE) & (np.arange(64)[None, :] < 28)
        right = (lab == P.TREE) & (np.arange(64)[None, :] >= 36)
        diff = img[right].mean() - img[left].mean()
        assert (diff > 30) if lit == "right" else (diff < -30), (sun_x, diff)


def test_ground_is_brighter_toward_the_sun_and_shadows_fall_away_from_it():
    lay, st = _lit_scene(0.9)
    img = render(lay, st, 64, 64).astype(float).sum(-1)
    lab = lay.label_map(64, 64)
    row = 40  # a row above the tree's foot: no shadow there; grass both sides of the trunk
    assert (lab[row, :16] == P.GRASS).all() and (lab[row, 48:] == P.GRASS).all()
    assert img[row, 48:].mean() > img[row, :16].mean() + 10
    # the tree's shadow lies on the grass left of its foot (sun on the right), not right of it
    foot = int(0.9 * 64) - 1
    g = lab[foot] == P.GRASS
    cols = np.arange(64)
    shadow_side = img[foot, g & (cols < 28) & (cols > 12)].mean()
    sunny_side = img[foot, g & (cols > 36) & (cols < 52)].mean()
    assert shadow_side < sunny_side - 20
    # the untextured render without the tree has no such dip on the same row
    no_tree = dataclasses.replace(lay, trees=())
    bare = render(no_tree, st, 64, 64).astype(float).sum(-1)
    assert bare[foot, (cols < 28) & (cols > 12)].mean() > shadow_side + 20


def test_texture_amplitudes_zero_leave_light_only():
    lay, st = _scene(33)
    flat = render(lay, P.untextured(st), 64, 64).astype(float)
    full = render(lay, st, 64, 64).astype(float)
    assert np.abs(flat - full).mean() > 1  # the textures do something
    assert np.abs(flat - full).mean() < 25  # but the light and colours stay


def test_instances_agree_with_the_label_map():
    for s in range(30):
        lay, _ = _scene(200 + s)
        lab, inst = lay.rasterise(48, 64, instances=True)
        assert np.array_equal(lab, lay.label_map(48, 64))
        for ids, cls, items in ((inst.tree, P.TREE, lay.trees), (inst.building, P.BUILDING,
                                lay.buildings), (inst.rock, P.ROCK, lay.rocks),
                                (inst.cloud, P.CLOUD, lay.clouds)):
            assert (lab[ids > 0] == cls).all()
            assert ids.max() <= len(items)
        assert (inst.cloud[lab == P.CLOUD] > 0).all()  # every cloud pixel belongs to a blob


def test_instance_colours_vary_but_are_keyed_by_index():
    lay, st = _lit_scene(0.5)
    twin = dataclasses.replace(lay, buildings=(P.Building(0.1, 0.3, 0.3, 0.52, 0.0),
                                               P.Building(0.6, 0.8, 0.3, 0.52, 0.0)))
    st = dataclasses.replace(st, instance_jitter=0.08, sun_share=0.0)
    img = render(twin, st, 64, 64).astype(float)
    lab, inst = twin.rasterise(64, 64, instances=True)
    a = img[(inst.building == 1)].mean(0)
    b = img[(inst.building == 2)].mean(0)
    assert np.abs(a - b).max() > 1  # two instances of one class differ
    assert np.array_equal(render(twin, st, 64, 64), img.astype(np.uint8))


def test_class_mean_colour_does_not_reach_the_ground_truth():
    from msca.data.scene_stats import baseline_psnrs
    res = baseline_psnrs(pairs=12, size=48, split="val", seed=1)
    glob, prior, oracle = (np.mean(res[k]) for k in ("global_mean", "class_prior", "no_texture"))
    assert glob < prior < oracle - 10, (glob, prior, oracle)


# --------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("H,W,patch", [(512, 512, 256), (64, 64, 32), (64, 64, 20),
                                       (40, 100, 30), (100, 40, 30), (33, 17, 16)])
def test_patch_pairs_disjoint_and_inside(H, W, patch):
    rng = np.random.default_rng(0)
    axes, positions = set(), set()
    for _ in range(1500):
        p, q = sample_patch_pair(rng, H, W, patch)
        for b in (p, q):
            assert b.height == b.width == patch
            assert 0 <= b.top and b.top + patch <= H and 0 <= b.left and b.left + patch <= W
        # independent overlap check, not Box.overlaps
        rows = set(range(p.top, p.top + patch)) & set(range(q.top, q.top + patch))
        cols = set(range(p.left, p.left + patch)) & set(range(q.left, q.left + patch))
        assert not (rows and cols)
        positions.add((p.top, p.left))
        if rows:
            axes.add("x")  # separated horizontally
        if cols:
            axes.add("y")
    assert len(positions) > 1
    if 2 * patch <= H and 2 * patch <= W and patch > 16:
        assert axes == {"x", "y"}  # both collision-avoidance directions are used


def test_patch_pair_impossible_raises_and_overlap_opt_in():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="non-overlapping"):
        for _ in range(50):  # an early draw may be disjoint by chance only if possible at all
            sample_patch_pair(rng, 512, 512, 384)
    with pytest.raises(ValueError, match="does not fit"):
        sample_patch_pair(rng, 64, 64, 65)
    for _ in range(50):
        p, q = sample_patch_pair(rng, 512, 512, 384, allow_overlap=True)
        assert p.top + 384 <= 512 and q.left + 384 <= 512


def test_crop_and_flip():
    img = torch.arange(2 * 6 * 8, dtype=torch.float32).reshape(2, 6, 8)
    lab = torch.arange(6 * 8).reshape(6, 8)
    box = Box(1, 2, 3, 4)
    ci, cl = crop_pair(img, lab, box)
    assert torch.equal(ci, img[:, 1:4, 2:6]) and torch.equal(cl, lab[1:4, 2:6])
    with pytest.raises(ValueError, match="outside"):
        crop(img, Box(4, 0, 3, 3))
    fi, fl = hflip(img, lab)
    assert torch.equal(fi[:, :, 0], img[:, :, -1]) and torch.equal(fl[:, 0], lab[:, -1])
    # random_hflip flips both or neither, and does flip sometimes
    rng = np.random.default_rng(0)
    flipped = 0
    for _ in range(40):
        ri, rl = random_hflip(rng, img, lab)
        assert torch.equal(ri[0], rl.float())  # img channel 0 == lab, so they stay aligned
        flipped += int(not torch.equal(rl, lab))
    assert 5 < flipped < 35


def test_patch_pair_task_shapes_and_alignment():
    ds = ProceduralScenes("train", size=64, length=1)
    item = ds[0]
    rng = np.random.default_rng(1)
    t = patch_pair_task(rng, item["image"], item["label"], 32)
    assert t["image_p"].shape == (3, 32, 32) and t["label_q"].shape == (32, 32)
    assert not t["box_p"].overlaps(t["box_q"])
    # late stage: larger overlapping crops resized down, labels stay valid ids
    t = patch_pair_task(rng, item["image"], item["label"], 48, out_size=32, allow_overlap=True)
    assert t["image_p"].shape == (3, 32, 32) and t["label_p"].dtype == torch.int64
    assert set(t["label_p"].unique().tolist()) <= set(item["label"].unique().tolist())


def test_pil_roundtrip_and_colorize():
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = to_tensor_image(Image.fromarray(arr))
    assert t.shape == (3, 5, 7) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(t)), arr)
    pal = label_palette(182)
    assert np.array_equal(pal[:12], P.LABEL_COLORS)
    assert len({tuple(c) for c in pal}) == 182
    lab = np.array([[0, 1], [255, 181]])
    rgb = colorize_labels(lab, 182)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert (rgb[1, 0] == 0).all() and np.array_equal(rgb[1, 1], pal[181])
    with pytest.raises(ValueError, match="181"):
        colorize_labels(lab, 12)


# --------------------------------------------------------------------------- folders
def _write_pair(root, stem, ext, label, size=(20, 30)):
    h, w = size
    img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "images" / f"{stem}.{ext}")
    Image.fromarray(np.asarray(label, np.uint8)).save(root / "labels" / f"{stem}.png")


def _folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    return tmp_path


def test_label_folder_loads_and_resizes(tmp_path):
    root = _folder(tmp_path)
    lab = np.zeros((20, 30), np.uint8)
    lab[:, 15:] = 3
    lab[:5] = 255
    _write_pair(root, "a", "png", lab)
    _write_pair(root, "b", "jpg", lab)
    ds = LabelFolder(root, size=16, num_classes=4)
    assert len(ds) == 2
    for item in ds:
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert item["label"].shape == (16, 16) and item["label"].dtype == torch.int64
        assert set(item["label"].unique().tolist()) == {0, 3, 255}  # nearest: no blended ids
    mapped = LabelFolder(root, size=None, num_classes=4, ignore_to=0)[0]
    assert mapped["label"].shape == (20, 30) and set(mapped["label"].unique().tolist()) == {0, 3}


def test_label_folder_bad_files(tmp_path):
    root = _folder(tmp_path)
    _write_pair(root, "good", "png", np.zeros((20, 30)))
    bad = np.zeros((20, 30))
    bad[3, 4] = 20
    _write_pair(root, "outofrange", "png", bad)
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "labels" / "corrupt.png")
    ds = LabelFolder(root, size=16, num_classes=10)
    names = [p.name for p, _ in ds.samples]
    assert names == ["corrupt.jpg", "good.png", "outofrange.png"]
    with pytest.raises(ValueError, match=r"corrupt\.jpg"):
        ds[0]
    ds[1]
    with pytest.raises(ValueError, match=r"outofrange\.png.*value 20"):
        ds[2]
    (root / "images" / "orphan.png").write_bytes((root / "images" / "good.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="orphan"):
        LabelFolder(root, size=16, num_classes=10)


# --------------------------------------------------------------------------- COCO-stuff
def test_coco_stuff_docstring_ids_match_names():
    pairs = re.findall(r"(\d+) ([a-z][a-z-]*)", coco_stuff.__doc__.split("OUTDOOR_STUFF (")[1])
    assert len(pairs) >= 60
    for num, name in pairs:
        assert coco_stuff.STUFF_IDS[name] == int(num), name
    assert coco_stuff.STUFF_IDS["banner"] == 91 and coco_stuff.STUFF_IDS["wood"] == 181
    assert not coco_stuff.OUTDOOR_STUFF & coco_stuff.INDOOR_STUFF


def test_coco_stuff_outdoor_filter(tmp_path):
    ids = coco_stuff.STUFF_IDS
    for split in ("train2017", "val2017"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)

    def add(split, stem, label):
        img = np.full(label.shape + (3,), 128, np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / split / f"{stem}.jpg")
        Image.fromarray(label.astype(np.uint8)).save(tmp_path / "annotations" / split / f"{stem}.png")

    outdoor = np.full((24, 24), ids["sky-other"])
    outdoor[12:] = ids["grass"]
    outdoor[20:, :4] = 255
    indoor = np.full((24, 24), ids["floor-wood"])
    indoor[:12] = ids["wall-panel"]
    objects = np.zeros((24, 24))  # a close-up of a person (thing 0)
    objects[:6] = ids["sky-other"]
    mixed = np.full((24, 24), ids["sky-other"])  # outdoor, but with a table in view
    mixed[18:] = ids["table"]
    for stem, lab in (("0001", outdoor), ("0002", indoor), ("0003", objects), ("0004", mixed)):
        add("train2017", stem, lab)
    add("val2017", "0009", outdoor)

    ds = CocoStuff(tmp_path, "train", size=16)
    assert [p.name for p, _ in ds.samples] == ["0001.jpg"]
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["label"].shape == (16, 16)
    assert set(item["label"].unique().tolist()) == {ids["sky-other"], ids["grass"], 255}
    assert ds.num_classes == 182
    assert (tmp_path / "outdoor_train2017.txt").is_file()
    # the cache is keyed by the thresholds: a looser filter rescans and keeps the table scene
    loose = CocoStuff(tmp_path, "train", size=16, max_indoor=0.5)
    assert [p.name for p, _ in loose.samples] == ["0001.jpg", "0004.jpg"]
    assert len(CocoStuff(tmp_path, "train", size=16, outdoor=False)) == 4
    assert len(CocoStuff(tmp_path, "val", size=16)) == 1
    with pytest.raises(ValueError, match="split"):
        CocoStuff(tmp_path, "trainval")
