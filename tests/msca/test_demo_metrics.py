"""`msca demo`'s metrics.json with the shipped checkpoints on 3 pairs: every column's per-pair
PSNR over the same pairs, the paired differences, the class-presence split and the attention
probe per scale; the baselines' numbers recomputed independently here."""
from __future__ import annotations

import json
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CKPT = os.path.join(REPO, "checkpoints", "demo.pt")
GAP = os.path.join(REPO, "checkpoints", "demo_gap.pt")
PROBE_KEYS = {"k", "exemplar_size", "target_size", "probe_psnr_db", "ceiling_psnr_db",
              "uniform_psnr_db", "probe_minus_ceiling_db", "probe_psnr_per_pair",
              "label_accuracy", "label_accuracy_ceiling", "alpha_top10_mass_median",
              "alpha_top10_mass_uniform", "alpha_entropy_norm_median", "beta_max_mean",
              "beta_uniform", "class_purity_mean", "class_purity_uniform_mean"}


@pytest.mark.skipif(not (os.path.isfile(CKPT) and os.path.isfile(GAP)),
                    reason="the shipped demo checkpoints are not in this checkout")
def test_demo_metrics_json(tmp_path, capsys):
    from msca.data.procedural import CrossScenePairs
    from msca.demo import COLUMNS, run_demo
    from msca.eval.baselines import (class_mean_colour, class_prior, dataset_class_colours,
                                     global_mean_colour)
    from msca.eval.metrics import psnr
    from msca.train.checkpoint import load_generator

    out = tmp_path / "demo"
    run_demo(out=str(out), checkpoint=CKPT, gap_checkpoint=GAP, pairs=3, batch=2)
    text = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["psnr_db"]) == set(COLUMNS)
    assert all(len(m["psnr_db"][k]["per_pair"]) == 3 for k in COLUMNS)
    for f in ("synthesis.png", "attention.png", "swap_grid.png"):
        assert (out / f).is_file(), f

    # the baselines' per-pair PSNR, recomputed on the same pairs in the same order
    _, opt = load_generator(CKPT)
    data = CrossScenePairs("test", opt.crop_size, 3, seed=opt.seed)
    items = [data[i] for i in range(3)]
    c1, x2, c2, gt = (torch.stack([it[k] for it in items]) for k in
                      ("label", "exemplar", "exemplar_label", "target"))
    ds = dataset_class_colours(opt.crop_size, seed=opt.seed)
    for key, pred in (("global_mean", global_mean_colour(c1, x2, c2)),
                      ("mean_colour", class_mean_colour(c1, x2, c2)),
                      ("class_prior", class_prior(c1, x2, c2, ds))):
        assert m["psnr_db"][key]["per_pair"] == pytest.approx(psnr(pred, gt).tolist(),
                                                              abs=1e-3), key
    for key in COLUMNS:
        if key == "model":
            continue
        d = [a - b for a, b in zip(m["psnr_db"]["model"]["per_pair"],
                                   m["psnr_db"][key]["per_pair"])]
        p = m["model_minus"][key]
        assert p["mean_db"] == pytest.approx(sum(d) / 3, abs=2e-3)
        assert p["model_wins"] == sum(x > 0 for x in d) and p["pairs"] == 3
        split = m["psnr_db_by_exemplar_class"][key]
        assert set(split) == {"present", "absent", "absent_share_mean"}
        assert len(split["present"]["per_pair"]) == 3
    # the ceilings see the ground truth: the truth's own class means beat every flat paste
    ceil = m["ceilings_psnr_db"]
    assert set(ceil) == {"truth_class_mean", "truth_untextured"}
    for i in range(3):
        for key in ("global_mean", "mean_colour", "class_prior"):
            assert ceil["truth_class_mean"]["per_pair"][i] >= \
                m["psnr_db"][key]["per_pair"][i] - 1e-3, (key, i)
    assert ceil["truth_untextured"]["mean"] > ceil["truth_class_mean"]["mean"]
    assert "ceilings" in text
    assert set(m["attention"]) == {"0", "1", "2", "3", "4"}
    for scale in m["attention"].values():
        assert set(scale) == PROBE_KEYS and len(scale["probe_psnr_per_pair"]) == 3
    for title in COLUMNS.values():
        assert title in text
    assert "attention probe" in text
