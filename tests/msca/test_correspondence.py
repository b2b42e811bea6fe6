"""Attention that can learn: the MSCA temperature, the correspondence losses, EMA, the lr
schedule and the real "w/o global" ablation."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import msca_kernels as mk
from msca.models import VGGWeightsWarning
from msca.models.correspondence import (attention_maps, carry, colour_warp_loss,
                                        correspondence_losses, label_transfer_loss,
                                        soft_labels)
from msca.options import Options
from msca.train import Trainer, TrainSettings
from msca.train.ema import ModelEMA

from test_train import TINY, make, settings, tiny


def _inputs(B=2, N=3, M=4, H2=5, W2=7, H1=6, W1=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, H2, W2, generator=g), torch.randn(B, M, H2, W2, generator=g),
            torch.randn(B, M, H1, W1, generator=g))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_logit_scale_is_folded_into_the_fused_op(backend):
    fx2, fc2, fc1 = _inputs()
    m = mk.nn.MSCA(3, 4, 4, 5, logit_scale=7.0, backend=backend)
    out = m(fx2, fc2, fc1)
    # the same op with the temperatures multiplied into phi/psi by hand
    ref = mk.msca_attention(fx2, fc2, fc1, 7.0 * m.phi.weight, 7.0 * m.psi.weight,
                            m.feature_mask(fc2, fc1), 7.0 * m.phi.bias, 7.0 * m.psi.bias,
                            backend="reference")
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    out.square().sum().backward()
    assert m.spatial_log_scale.grad is not None and m.spatial_log_scale.grad.abs() > 0
    assert m.channel_log_scale.grad is not None and m.channel_log_scale.grad.abs() > 0
    assert m.logit_scales() == pytest.approx((7.0, 7.0))


def test_logit_scale_none_keeps_the_plain_module():
    m = mk.nn.MSCA(3, 4, 4, 5)
    assert "spatial_log_scale" not in dict(m.named_parameters())
    with pytest.raises(ValueError, match="logit_scale"):
        mk.nn.MSCA(3, 4, 4, 5, logit_scale=-1.0)


def test_sharper_temperature_concentrates_the_maps():
    fx2, fc2, fc1 = _inputs(H2=9, W2=9)
    torch.manual_seed(0)
    flat = mk.nn.MSCA(3, 4, 4, 5)
    sharp = mk.nn.MSCA(3, 4, 4, 5, logit_scale=10.0)
    sharp.load_state_dict(flat.state_dict(), strict=False)
    a0, _ = attention_maps(flat, fx2, fc2, fc1)
    a1, _ = attention_maps(sharp, fx2, fc2, fc1)
    assert a1.max(dim=2).values.mean() > a0.max(dim=2).values.mean() + 0.2


def test_attention_maps_match_the_kernels_maps():
    fx2, fc2, fc1 = _inputs()
    m = mk.nn.MSCA(3, 4, 4, 5, logit_scale=3.0, backend="reference")
    _, alpha, beta = m(fx2, fc2, fc1, return_attention=True)
    a, b = attention_maps(m, fx2, fc2, fc1)
    assert torch.allclose(a, alpha.flatten(2), atol=1e-6)
    assert torch.allclose(b, beta.flatten(2), atol=1e-6)


def test_carry_with_one_hot_attention_copies_and_uniform_averages():
    values = torch.arange(6.0).view(1, 1, 6)
    alpha = torch.eye(6).unsqueeze(0)               # map k looks at position k only
    beta = torch.eye(6).flip(0).unsqueeze(0)        # target t takes map 5 - t
    assert torch.equal(carry(values, alpha, beta), values.flip(2))
    uniform = torch.full((1, 6, 6), 1 / 6)
    assert torch.allclose(carry(values, uniform, beta), torch.full((1, 1, 6), 2.5))


def test_label_transfer_loss_prefers_the_corresponding_class():
    # exemplar: left half class 0, right half class 1; target: all class 1
    ex_label = torch.tensor([[[0, 0, 1, 1]]])
    tgt_label = torch.ones(1, 1, 4, dtype=torch.long)
    beta = torch.ones(1, 1, 4)                       # one map, used everywhere
    good = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])   # looks at the class-1 half
    bad = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    args = (ex_label, tgt_label, 2, (1, 4), (1, 4))
    assert label_transfer_loss(good, beta, *args) < 1e-4
    assert label_transfer_loss(bad, beta, *args) > 5.0
    # a target class the exemplar lacks is not asked for
    absent = torch.full((1, 1, 4), 1)
    assert label_transfer_loss(bad, beta, torch.zeros_like(ex_label), absent, 2,
                               (1, 4), (1, 4)) == 0


def test_soft_labels_ignore_label_counts_for_no_class():
    lab = torch.tensor([[[0, 255], [1, 1]]])
    s = soft_labels(lab, 2, (1, 1))
    assert torch.allclose(s.flatten(), torch.tensor([0.25, 0.5]))


def test_colour_warp_loss_zero_for_an_exact_warp():
    ex = torch.rand(1, 3, 1, 4) * 2 - 1
    alpha = torch.eye(4).unsqueeze(0)
    beta = torch.eye(4).unsqueeze(0)
    assert colour_warp_loss(alpha, beta, ex, ex, (1, 4), (1, 4)) < 1e-7


def _tiny_corr(**kw):
    return tiny(attention_logit_scale=5.0, lambda_corr_label=1.0, lambda_corr_rgb=1.0, **kw)


def test_correspondence_losses_reach_phi_and_psi():
    from msca.models import build_generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        G = build_generator(_tiny_corr())
    lab = torch.randint(0, 12, (2, 32, 32))
    ex = torch.rand(2, 3, 32, 32) * 2 - 1
    exl = torch.randint(0, 12, (2, 32, 32))
    _, feats = G.forward_with_features(lab, ex, exl)
    losses = correspondence_losses(G, feats, ex, ex, lambda_label=1.0, lambda_rgb=1.0)
    assert set(losses) == {"corr_label", "corr_rgb"}
    sum(losses.values()).backward()
    for m in G.align_modules:
        assert m.phi.weight.grad.abs().sum() > 0 and m.psi.weight.grad.abs().sum() > 0
        assert m.spatial_log_scale.grad is not None


def test_gap_ablation_has_no_correspondence_losses():
    from msca.models import build_generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        G = build_generator(_tiny_corr(alignment="gap"))
    lab = torch.randint(0, 12, (1, 32, 32))
    ex = torch.rand(1, 3, 32, 32)
    feats = G.extract_features(lab, ex, lab)
    assert correspondence_losses(G, feats, ex, ex, lambda_label=1.0, lambda_rgb=1.0) == {}


def test_trainer_logs_correspondence_terms_in_every_stage(tmp_path):
    t = make(tmp_path, _tiny_corr())
    seen = {}
    for _ in range(6):
        seen[t.stage] = t.train_step()
    assert "pre/corr_label" in seen["pretrain"] and "pre/corr_rgb" in seen["pretrain"]
    assert "cross/corr_label" in seen["patch"]
    assert "global/corr_rgb" in seen["patch_global"]


def test_without_global_drops_the_task_and_its_crops(tmp_path):
    t = make(tmp_path, tiny(lambda_global=0.0))
    t.step = t.patch_end
    b = t._batch(t.step, "patch_global")
    assert "image" not in b                          # no global image
    losses = t.train_step()
    assert not any(k.startswith("global/") for k in losses)
    with_global = make(tmp_path / "g", tiny())
    assert "image" in with_global._batch(with_global.patch_end, "patch_global")


def test_lr_decays_linearly_in_the_last_stage(tmp_path):
    t = make(tmp_path, tiny(), settings(steps=12, lr_decay=True))
    lr = t.opt.lr
    assert t.lr_at(0) == lr and t.lr_at(t.patch_end - 1) == lr
    assert t.lr_at(t.patch_end) == pytest.approx(lr)
    assert t.lr_at(11) == pytest.approx(lr * (1 - (11 - t.patch_end) / (12 - t.patch_end)))
    flat = make(tmp_path / "f", tiny(), settings(steps=12))
    assert flat.lr_at(11) == lr


def test_ema_averages_parameters_and_resumes_exactly(tmp_path):
    st = settings(ema_decay=0.5, checkpoint_every=3)
    t = make(tmp_path, tiny(), st)
    for _ in range(4):
        t.train_step()
    ema = t.ema.state_dict()["shadow"]
    live = t.G.state_dict()
    differs = [k for k, _ in t.G.named_parameters() if not torch.equal(ema[k], live[k])]
    assert differs, "the EMA is the live weights"
    # resume from step 3 and redo step 4: identical EMA
    t2 = make(tmp_path / "a", tiny(), st)
    for _ in range(3):
        t2.train_step()
    t2.save()
    t3 = make(tmp_path / "a", tiny(), st, resume=True)
    t2.train_step()
    t3.train_step()
    for k in ema:
        assert torch.equal(t2.ema.shadow[k], t3.ema.shadow[k]), k


def test_export_ships_the_ema_weights(tmp_path):
    from msca.train import read_checkpoint
    t = make(tmp_path, tiny(), settings(ema_decay=0.5))
    for _ in range(3):
        t.train_step()
    path = str(tmp_path / "m.pt")
    t.export(path)
    ck = read_checkpoint(path)
    assert ck["ema"] is True
    for k, v in ck["G"].items():
        assert torch.equal(v, t.ema.shadow[k])


def test_ema_decay_validated():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainSettings(ema_decay=1.5).validate()
    with pytest.raises(ValueError, match="ema_decay"):
        ModelEMA(torch.nn.Linear(1, 1), 0.0)
