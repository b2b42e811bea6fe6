"""The global-style-code baseline (generator="spade_vae"): model contract and training."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

from msca.models import (MSCAGenerator, StyleCodeGenerator, VGGWeightsWarning,
                         build_generator)
from msca.options import Options
from msca.train import Trainer, TrainSettings, load_generator

TINY = dict(num_classes=12, image_feature_nc=(4, 4, 4, 4, 4), label_feature_nc=(4, 4, 4, 4, 4),
            attention_k=(2, 2, 2, 2, 2), ngf=4, ngf_mults=(1, 1, 1, 1, 1), spade_hidden=4,
            spade_norm="spadeinstance3x3", ndf=4, n_layers_D=2, num_D=1, load_size=64,
            crop_size=32, late_crop_size=48, batch_size=2, pretrain_epochs=1, epochs=2,
            patch_only_epochs=1, backend="reference", generator="spade_vae", z_dim=8,
            init_type="default")


def _gen(**kw) -> StyleCodeGenerator:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        return build_generator(Options(**{**TINY, **kw}))


def _inputs(b=2, h=32, w=48, he=40, we=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 12, (b, h, w), generator=g),
            torch.rand(b, 3, he, we, generator=g) * 2 - 1,
            torch.randint(0, 12, (b, he, we), generator=g))


def test_build_and_shapes():
    G = _gen().eval()
    assert isinstance(G, StyleCodeGenerator)
    c1, x2, c2 = _inputs()
    out = G(c1, x2, c2)
    assert out.shape == (2, 3, 32, 48)
    assert out.abs().max() <= 1
    assert G.last_kld.dim() == 0 and torch.isfinite(G.last_kld)
    # No MSCA, no attention to show.
    out2, attn = G(c1, x2, c2, return_attention=True)
    assert attn == [None] * 5
    torch.testing.assert_close(out, out2)


def test_eval_is_deterministic_and_train_samples():
    G = _gen()
    c1, x2, c2 = _inputs()
    G.eval()
    torch.testing.assert_close(G(c1, x2, c2), G(c1, x2, c2), rtol=0, atol=0)
    G.train()
    assert not torch.equal(G(c1, x2, c2), G(c1, x2, c2))  # z sampled around mu


def test_output_depends_on_exemplar_image_and_target_label_only():
    G = _gen().eval()
    c1, x2, c2 = _inputs()
    base = G(c1, x2, c2)
    # The exemplar label is not an input of this model.
    torch.testing.assert_close(G(c1, x2, torch.zeros_like(c2)), base, rtol=0, atol=0)
    assert not torch.allclose(G(c1, -x2, c2), base)
    assert not torch.allclose(G(torch.roll(c1, 5, dims=2), x2, c2), base)


def test_kld_matches_closed_form():
    G = _gen().eval()
    x2 = _inputs()[1]
    mu, logvar = G.encode(x2)
    G(_inputs()[0], x2, _inputs()[2])
    expected = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum()
    torch.testing.assert_close(G.last_kld, expected)


def test_gradients_reach_encoder():
    G = _gen().train()
    c1, x2, c2 = _inputs()
    (G(c1, x2, c2).mean() + G.last_kld).backward()
    for name in ("encoder.fc_mu.weight", "encoder.fc_var.weight", "fc.weight"):
        g = dict(G.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_bad_input():
    G = _gen()
    c1, x2, c2 = _inputs()
    with pytest.raises(ValueError, match="exemplar"):
        G(c1, x2[:, :2], c2)
    with pytest.raises(ValueError, match="label"):
        G(c1[:, :8, :8], x2, c2)
    with pytest.raises(ValueError, match="generator"):
        Options(**{**TINY, "generator": "vae"})


def test_msca_generator_unchanged_by_default():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        G = build_generator(Options(**{**TINY, "generator": "msca"}))
    assert isinstance(G, MSCAGenerator)
    assert not any(k.startswith("encoder.") for k in G.state_dict())


def test_trains_all_stages_exports_and_reloads(tmp_path):
    opt = Options(**TINY)
    st = TrainSettings(steps=6, checkpoint_every=100, log_every=1, train_scenes=16,
                       lambda_l1=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        t = Trainer(opt, st, str(tmp_path / "run"), progress=False)
        before = {k: v.clone() for k, v in t.G.state_dict().items()}
        t.train()
    recs = [json.loads(x) for x in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in recs] == list(range(1, 7))
    # The pretrain stage runs the patch task (no MSCA to pretrain); KL in every G step.
    assert all("cross/kld" in r and "cross/gan" in r for r in recs)
    assert all("global/kld" in r for r in recs if r["stage"] == "patch_global")
    assert any(r["stage"] == "patch_global" for r in recs)
    moved = [k for k in before if k.startswith("encoder.")
             and not torch.equal(before[k], t.G.state_dict()[k])]
    assert moved
    path = str(tmp_path / "model.pt")
    t.export(path)
    G, o = load_generator(path)
    assert isinstance(G, StyleCodeGenerator) and o.generator == "spade_vae"
    c1, x2, c2 = _inputs()
    t.G.eval()
    torch.testing.assert_close(G(c1, x2, c2), t.G(c1, x2, c2))
    assert os.path.getsize(path) > 0
