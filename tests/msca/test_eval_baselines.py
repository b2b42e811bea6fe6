"""The no-learning baselines and the PSNR split by exemplar class presence, on hand-made inputs
whose answers are worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from msca.eval.baselines import (class_mean_colour, class_prior, dataset_class_colours,
                                 global_mean_colour)
from msca.eval.class_presence import (masked_psnr, presence_mask, psnr_by_presence,
                                      summarise_presence)


def _exemplar():
    """A 2x2 exemplar: top row class 0 colour 0.5, bottom row class 1 colour -0.5."""
    ex = torch.zeros(1, 3, 2, 2)
    ex[0, :, 0, :] = 0.5
    ex[0, :, 1, :] = -0.5
    exl = torch.tensor([[[0, 0], [1, 1]]])
    return ex, exl


def test_global_mean_colour():
    ex = torch.arange(12.0).view(1, 3, 2, 2) / 12
    out = global_mean_colour(torch.zeros(1, 3, 5, dtype=torch.long), ex)
    assert out.shape == (1, 3, 3, 5)
    torch.testing.assert_close(out[0, :, 2, 4], ex.mean(dim=(2, 3))[0])


def test_class_mean_colour_known_answer():
    ex, exl = _exemplar()
    lab = torch.tensor([[[0, 0], [1, 2]]])
    out = class_mean_colour(lab, ex, exl)
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.5))
    assert torch.allclose(out[0, :, 1, 0], torch.full((3,), -0.5))
    assert torch.allclose(out[0, :, 1, 1], torch.zeros(3))  # class 2 absent: global mean
    # the ignore label gets the global mean too, and a batch is per image
    lab2 = torch.tensor([[[255, 1], [1, 0]]])
    out2 = class_mean_colour(torch.cat([lab, lab2]), torch.cat([ex, -ex]), exl.repeat(2, 1, 1))
    torch.testing.assert_close(out2[:1], out)
    torch.testing.assert_close(out2[1, :, 0, 0], torch.zeros(3))
    torch.testing.assert_close(out2[1, :, 0, 1], torch.full((3,), 0.5))


def test_class_prior_known_answer():
    ex, exl = _exemplar()
    lab = torch.tensor([[[0, 1], [2, 3]]])
    # dataset colours in [-1,1]; [0,1]: class 0 0.5, class 1 0.25, class 2 0.5, class 3 unseen
    ds = torch.tensor([[0.0] * 3, [-0.5] * 3, [0.0] * 3, [float("nan")] * 3],
                      dtype=torch.float64)
    out = class_prior(lab, ex, exl, ds)
    # shared classes 0, 1 (two pixels each): exemplar mean on [0,1] (0.75+0.25)/2 = 0.5,
    # dataset (0.5+0.25)/2 = 0.375: ratio 4/3, so class 2 is 0.5 * 4/3 = 2/3 -> 1/3 in [-1,1]
    torch.testing.assert_close(out[0, :, 1, 0], torch.full((3,), 1 / 3))
    assert torch.allclose(out[0, :, 0, 0], torch.full((3,), 0.5))      # exemplar's own
    assert torch.allclose(out[0, :, 0, 1], torch.full((3,), -0.5))
    assert torch.allclose(out[0, :, 1, 1], torch.zeros(3))             # unseen: global mean
    # a ratio that would leave [0,1] is clipped
    dark = ds.clone()
    dark[:2] = -0.9                              # the exemplar is 19x brighter than these
    bright = class_prior(lab, ex * 0 + 0.9, exl, dark)
    assert torch.allclose(bright[0, :, 1, 0], torch.ones(3))
    # the same classes as the exemplar give the class-mean paste
    same = torch.tensor([[[0, 1], [1, 0]]])
    torch.testing.assert_close(class_prior(same, ex, exl, ds), class_mean_colour(same, ex, exl))
    with pytest.raises(ValueError, match="dataset_colours"):
        class_prior(lab, ex, exl, ds[:, :2])


def test_dataset_class_colours_is_the_train_split_average():
    from msca.data.procedural import NUM_CLASSES, ProceduralScenes

    got = dataset_class_colours(16, scenes=3, seed=5)
    data = ProceduralScenes("train", 16, 3, seed=5)
    for k in range(NUM_CLASSES):
        means = []
        for i in range(3):
            it = data[i]
            m = it["label"] == k
            if m.any():
                means.append(it["image"][:, m].double().mean(1))
        if means:
            torch.testing.assert_close(got[k], torch.stack(means).mean(0))
        else:
            assert torch.isnan(got[k]).all()
    got[0] = 7                                   # a copy: the cache is not changed
    assert not (dataset_class_colours(16, scenes=3, seed=5)[0] == 7).any()
    with pytest.raises(ValueError, match="scenes"):
        dataset_class_colours(16, scenes=0)


def test_baselines_name_bad_arguments():
    ex, exl = _exemplar()
    with pytest.raises(ValueError, match="exemplar_label"):
        class_mean_colour(exl, ex, exl[:, :1])
    with pytest.raises(ValueError, match="label"):
        class_mean_colour(ex[:, 0], ex, exl)


# --------------------------------------------------------------------------- presence split
def test_presence_mask_and_masked_psnr():
    exl = torch.tensor([[[0, 0], [1, 255]]])
    lab = torch.tensor([[[0, 2], [255, 1]]])
    present, absent = presence_mask(lab, exl)
    assert present.tolist() == [[[True, False], [False, True]]]
    assert absent.tolist() == [[[False, True], [False, False]]]    # ignore: in neither
    target = torch.zeros(1, 3, 2, 2)
    pred = target.clone()
    pred[0, :, 0, 1] = 0.2                       # error 0.1 on [0,1] on the absent pixel only
    got = psnr_by_presence(pred, target, lab, exl)
    assert math.isclose(float(got["absent"][0]), 20.0, rel_tol=1e-6)
    assert float(got["present"][0]) > 100
    assert float(got["absent_share"][0]) == 0.25
    empty = masked_psnr(pred, target, torch.zeros(1, 2, 2, dtype=torch.bool))
    assert torch.isnan(empty).all()
    s = summarise_presence({"present": [20.0, 30.0], "absent": [float("nan"), 10.0],
                            "absent_share": [0.0, 0.5]})
    assert s["absent"] == {"mean": 10.0, "pairs": 1, "per_pair": [None, 10.0]}
    assert s["present"]["mean"] == 25.0 and s["absent_share_mean"] == 0.25
