"""Tests of msca.models and msca.options: shapes, the VGG naming contract, the label encoder's
embedding formulation, weight sharing, the ablations, gradient flow, discriminator and losses.
Everything runs at tiny widths and sizes (2 CPU cores)."""
import json

import pytest
import torch
import torch.nn.functional as F

import msca_kernels as mk
from msca.models import (Features, FeatureDecoder, LabelEncoder, MSCAGenerator,
                         MultiscaleDiscriminator, SynthesisLoss, Task, VGG19, VGGLoss,
                         VGGWeightsWarning, build_decoder, build_discriminator, build_generator,
                         build_loss, build_vgg19, feature_matching_loss, hinge_d_loss,
                         hinge_g_loss, one_hot, pretrain_loss, resize_labels, total)
from msca.models.vgg import SCALE_CHANNELS
from msca.options import Options, parse_overrides

# torchvision.models.vgg19().state_dict().keys(), in order (a fact about torchvision).
TORCHVISION_VGG19_KEYS = [
    "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
    "features.5.weight", "features.5.bias", "features.7.weight", "features.7.bias",
    "features.10.weight", "features.10.bias", "features.12.weight", "features.12.bias",
    "features.14.weight", "features.14.bias", "features.16.weight", "features.16.bias",
    "features.19.weight", "features.19.bias", "features.21.weight", "features.21.bias",
    "features.23.weight", "features.23.bias", "features.25.weight", "features.25.bias",
    "features.28.weight", "features.28.bias", "features.30.weight", "features.30.bias",
    "features.32.weight", "features.32.bias", "features.34.weight", "features.34.bias",
    "classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias",
    "classifier.6.weight", "classifier.6.bias",
]

C = 6  # classes in the tiny tests
TINY = dict(image_feature_nc=(4, 4, 6, 6, 6), label_feature_nc=(3, 4, 4, 5, 5),
            attention_k=(2, 3, 3, 3, 3), ngf=4, ngf_mults=(1, 1, 2, 2, 2), spade_hidden=8)


@pytest.fixture(scope="module")
def vgg():
    # one frozen VGG for the whole file (random weights unless the hub cache has ImageNet's)
    return build_vgg19(None, warn=False)


def make_g(vgg, **kw):
    args = dict(TINY, ignore_label=255, backend="reference", vgg=vgg)
    args.update(kw)
    return MSCAGenerator(C, **args)


def labels(b, h, w, ignore_frac=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, C, (b, h, w), generator=g)
    if ignore_frac:
        lab[torch.rand(b, h, w, generator=g) < ignore_frac] = 255
    return lab


def image(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


# --------------------------------------------------------------------------------- VGG
def test_vgg_state_dict_names_are_torchvision():
    with torch.device("meta"):
        full = VGG19(with_classifier=True)
    assert list(full.state_dict().keys()) == TORCHVISION_VGG19_KEYS
    feats = [k for k in TORCHVISION_VGG19_KEYS if k.startswith("features.")]
    assert list(VGG19().state_dict().keys()) == feats
    assert [tuple(full.state_dict()[k].shape) for k in ("features.0.weight",
            "features.34.weight", "classifier.0.weight")] == [(64, 3, 3, 3), (512, 512, 3, 3),
                                                              (4096, 25088)]


def test_vgg_loads_torchvision_file_strictly(tmp_path, monkeypatch):
    src = VGG19()
    src.reset_random(seed=3)
    state = dict(src.state_dict())
    state["classifier.6.bias"] = torch.zeros(1000)  # a full torchvision file has these too
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    v = build_vgg19(str(path))
    assert v.pretrained and v.weights_source.endswith("vgg19-dcbb9e9d.pth")
    assert torch.equal(v.features[34].weight, src.features[34].weight)
    assert not any(p.requires_grad for p in v.parameters())
    # found in the hub cache without a path
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    assert build_vgg19(None).pretrained
    del state["features.10.bias"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="features.10.bias"):
        build_vgg19(str(path))
    with pytest.raises(FileNotFoundError):
        build_vgg19(str(tmp_path / "missing.pth"))


def test_vgg_random_fallback_warns_is_frozen_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.warns(VGGWeightsWarning, match="RANDOM"):
        a = build_vgg19(None)
    b = build_vgg19(None, warn=False)
    assert not a.pretrained
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training


def test_vgg_scales_and_normalisation(vgg):
    x = image(2, 37, 50)
    feats = vgg(x)
    sizes = [(37, 50), (18, 25), (9, 12), (4, 6), (2, 3)]
    assert [tuple(f.shape) for f in feats] == [(2, c, h, w) for c, (h, w) in
                                               zip(SCALE_CHANNELS, sizes)]
    # relu1_1 by hand: [-1,1] -> [0,1] -> ImageNet mean/std -> conv -> relu
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = F.relu(vgg.features[0](((x + 1) / 2 - mean) / std))
    torch.testing.assert_close(vgg(x, ["relu1_1"])[0], ref)
    # gradients reach the input (perceptual loss), never the frozen weights
    xg = x.clone().requires_grad_(True)
    vgg(xg, ["relu2_1"])[0].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="relu9_9"):
        vgg(x, ["relu9_9"])


# --------------------------------------------------------------------------------- encoders
def test_resize_labels_matches_interpolate_nearest():
    lab = labels(2, 23, 17)
    for size in [(11, 8), (5, 4), (40, 33), (23, 17)]:
        ref = F.interpolate(lab[:, None].float(), size=size, mode="nearest")[:, 0].long()
        assert torch.equal(resize_labels(lab, size), ref)


def test_label_encoder_equals_explicit_onehot_convolution():
    torch.manual_seed(1)
    enc = LabelEncoder(C, (3, 4, 4, 5, 5), ignore_label=255)
    enc.init_weights("xavier", 0.7)  # non-zero biases below make it a real test of them too
    with torch.no_grad():
        for b in enc.bias:
            b.normal_()
    lab = labels(2, 37, 29, ignore_frac=0.2)
    sizes = [(37, 29), (18, 14), (9, 7), (4, 3), (2, 1)]
    got = enc(lab, sizes)
    # Eq. 2 literally: one 1x1 conv on [up2(F^(i+1)), onehot(c^(i))] (ignore -> zero vector)
    prev = None
    for i in reversed(range(5)):
        oh = F.one_hot(torch.where(lab == 255, C, lab), C + 1)[..., :C]
        oh = F.interpolate(oh.permute(0, 3, 1, 2).float(), size=sizes[i], mode="nearest")
        w_oh = enc.embed[i].weight[:C].t()[:, :, None, None]
        if prev is None:
            inp, w = oh, w_oh
        else:
            up = F.interpolate(prev, size=sizes[i], mode="bilinear", align_corners=False)
            inp, w = torch.cat([up, oh], 1), torch.cat([enc.up[i].weight, w_oh], 1)
        prev = F.leaky_relu(F.conv2d(inp, w, enc.bias[i]), 0.2)
        torch.testing.assert_close(got[i], prev, rtol=1e-5, atol=1e-6)


def test_label_encoder_rejects_bad_labels():
    enc = LabelEncoder(C, (3, 3, 3, 3, 3))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        enc(torch.full((1, 32, 32), C, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        enc(torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B,H,W\)"):
        enc(torch.zeros(1, 1, 32, 32, dtype=torch.long))


# --------------------------------------------------------------------------------- generator
def test_generator_shapes_odd_and_different_sizes(vgg):
    g = make_g(vgg)
    lab, ex, exl = labels(2, 37, 45), image(2, 53, 29), labels(2, 53, 29, seed=1)
    out, attn = g(lab, ex, exl, return_attention=True)
    assert out.shape == (2, 3, 37, 45)
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    s1 = [(37, 45), (18, 22), (9, 11), (4, 5), (2, 2)]
    s2 = [(53, 29), (26, 14), (13, 7), (6, 3), (3, 1)]
    for i, (alpha, beta) in enumerate(attn):
        k = TINY["attention_k"][i]
        assert alpha.shape == (2, k, *s2[i]) and beta.shape == (2, k, *s1[i])
        torch.testing.assert_close(alpha.sum((2, 3)), torch.ones(2, k))
        torch.testing.assert_close(beta.sum(1), torch.ones(2, *s1[i]))
    g.eval()
    assert torch.equal(g(lab, ex, exl), g(lab, ex, exl))


def test_generator_input_errors(vgg):
    g = make_g(vgg)
    lab, ex, exl = labels(1, 32, 32), image(1, 32, 32), labels(1, 32, 32)
    with pytest.raises(ValueError, match="exemplar_label"):
        g(lab, ex, labels(1, 32, 30))
    with pytest.raises(ValueError, match=">= 16"):
        g(labels(1, 15, 32), ex, exl)
    with pytest.raises(ValueError, match="batch"):
        g(labels(2, 32, 32), ex, exl)
    with pytest.raises(ValueError, match="alignment"):
        make_g(vgg, alignment="nope")


def test_label_encoder_shared_between_target_and_exemplar(vgg):
    g = make_g(vgg)
    assert sum(isinstance(m, LabelEncoder) for m in g.modules()) == 1
    lab = labels(1, 32, 32)
    f = g.extract_features(lab, image(1, 32, 32), lab.clone())
    for a, b in zip(f.fc1, f.fc2):  # same map through both paths -> same features
        assert torch.equal(a, b)
    # the exemplar path alone trains the shared weights, and a change of them moves both paths
    f = g.extract_features(labels(1, 32, 32), image(1, 32, 32), labels(1, 32, 32, seed=5))
    sum(t.sum() for t in f.fc2).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in g.label_encoder.parameters())
    with torch.no_grad():
        g.label_encoder.bias[0].add_(1.0)
    f2 = g.extract_features(f.label, image(1, 32, 32), f.exemplar_label)
    assert not torch.equal(f2.fc1[0], f.fc1[0]) and not torch.equal(f2.fc2[0], f.fc2[0])


def test_state_dict_excludes_vgg_and_round_trips(vgg):
    g = make_g(vgg)
    sd = g.state_dict()
    assert not any(k.startswith("vgg.") for k in sd) and "vgg_fingerprint" in sd
    assert not any(p is q for p in g.parameters() for q in vgg.parameters())
    torch.manual_seed(9)
    h = make_g(vgg)
    h.load_state_dict(sd)
    g.eval(), h.eval()
    args = (labels(1, 32, 32), image(1, 32, 32), labels(1, 32, 32, seed=2))
    torch.testing.assert_close(g(*args), h(*args))
    other = VGG19()
    other.reset_random(seed=1)
    k = make_g(other)
    with pytest.warns(UserWarning, match="different VGG-19"):
        k.load_state_dict(sd)


def test_set_backend_reaches_every_layer(vgg):
    g = make_g(vgg, backend="auto")
    g.set_backend("reference")
    layers = [m for m in g.modules() if isinstance(m, (mk.nn.MSCA, mk.nn.SPADE))]
    assert len(layers) == 5 + 2 * 5 + sum(b.learned_shortcut for b in g.blocks)
    assert all(m.backend == "reference" for m in layers) and g.backend == "reference"
    with pytest.raises(ValueError, match="backend"):
        g.set_backend("fortran")


def test_ablations_run_and_differ(vgg):
    lab, ex, exl = labels(1, 33, 40, ignore_frac=0.1), image(1, 36, 32), labels(1, 36, 32, seed=3)
    outs, aligned = {}, {}
    for name, kw in {"msca": {}, "msca_nofm": dict(feature_masking=False),
                     "gap": dict(alignment="gap"),
                     "label_matching": dict(alignment="label_matching"),
                     "label_matching_nofm": dict(alignment="label_matching",
                                                 feature_masking=False)}.items():
        torch.manual_seed(0)
        g = make_g(vgg, **kw)
        g.eval()
        f = g.extract_features(lab, ex, exl)
        aligned[name] = g.align(f)
        outs[name] = g(lab, ex, exl)
        assert outs[name].shape == (1, 3, 33, 40) and torch.isfinite(outs[name]).all()
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not torch.allclose(aligned[a][0], aligned[b][0]), (a, b)
            assert not torch.allclose(outs[a], outs[b]), (a, b)


def test_gap_alignment_is_global_mean(vgg):
    g = make_g(vgg, alignment="gap")
    f = g.extract_features(labels(1, 32, 40), image(1, 48, 32), labels(1, 48, 32))
    for fx1, fx2, fc1 in zip(g.align(f), f.fx2, f.fc1):
        assert fx1.shape[2:] == fc1.shape[2:] and fx1.shape[1] == fx2.shape[1]
        torch.testing.assert_close(fx1, fx2.mean((2, 3), keepdim=True).expand_as(fx1))
    assert not any(True for _ in g.align_modules.parameters())


@pytest.mark.parametrize("fm", [True, False])
def test_label_matching_equals_onehot_attention(vgg, fm):
    g = make_g(vgg, alignment="label_matching", feature_masking=fm)
    lab = labels(2, 32, 48, ignore_frac=0.1)
    exl = labels(2, 40, 32, seed=4, ignore_frac=0.1)
    exl[0][exl[0] == 2] = 1  # class 2 absent from exemplar 0: its target regions get zeros
    f = g.extract_features(lab, image(2, 40, 32), exl)
    got = g.align(f)
    masks = g.feature_masks(f)
    for i in range(5):
        fx2, fc1 = f.fx2[i], f.fc1[i]
        c2 = F.interpolate(exl[:, None].float(), size=fx2.shape[2:], mode="nearest")[:, 0].long()
        c1 = F.interpolate(lab[:, None].float(), size=fc1.shape[2:], mode="nearest")[:, 0].long()
        a = F.one_hot(torch.where(c2 == 255, C, c2), C + 1)[..., :C].flatten(1, 2).float()
        b = F.one_hot(torch.where(c1 == 255, C, c1), C + 1)[..., :C].flatten(1, 2).float()
        alpha = a / a.sum(1, keepdim=True).clamp(min=1)                 # (B,P2,C)
        V = torch.einsum("bnp,bpk->bnk", fx2.flatten(2), alpha)
        if fm:
            assert masks[i].shape == (2, C)
            V = V * masks[i][:, None, :]
        else:
            assert masks[i] is None
        ref = torch.einsum("bnk,bpk->bnp", V, b).view_as(got[i])
        torch.testing.assert_close(got[i], ref, rtol=1e-5, atol=1e-6)


def test_align_biases_and_masks_plumbing(vgg):
    g = make_g(vgg)
    g.eval()
    f = g.extract_features(labels(1, 32, 32), image(1, 32, 48), labels(1, 32, 48, seed=1))
    base = g.align(f)
    zeros_sb = [torch.zeros(1, k, *t.shape[2:]) for k, t in zip(TINY["attention_k"], f.fx2)]
    zeros_cb = [torch.zeros(1, k, *t.shape[2:]) for k, t in zip(TINY["attention_k"], f.fc1)]
    same = g.align(f, spatial_bias=zeros_sb, channel_bias=zeros_cb, masks=g.feature_masks(f))
    for a, b in zip(base, same):
        torch.testing.assert_close(a, b)
    # a channel bias that forces attention map 0 everywhere makes Fx1 = mask0 * V[:, 0] (const)
    force = [torch.cat([torch.full((1, 1, *t.shape[2:]), 50.0),
                        torch.zeros(1, k - 1, *t.shape[2:])], 1)
             for k, t in zip(TINY["attention_k"], f.fc1)]
    forced, attn = g.align(f, channel_bias=force, return_attention=True)
    for fx1, (alpha, beta) in zip(forced, attn):
        assert beta[:, 0].min() > 0.999
        assert fx1.std((2, 3)).max() < 1e-4 * (1 + fx1.abs().max())
    with pytest.raises(ValueError, match="5"):
        g.align(f, spatial_bias=zeros_sb[:2])
    gap = make_g(vgg, alignment="gap")
    with pytest.raises(ValueError, match="gap"):
        gap.align(gap.extract_features(f.label, image(1, 32, 48), f.exemplar_label),
                  spatial_bias=zeros_sb)


def test_backward_reaches_every_trainable_parameter(vgg):
    torch.manual_seed(0)
    g = make_g(vgg)
    d = MultiscaleDiscriminator(C, ndf=4, n_layers=3, num_D=2)
    crit = SynthesisLoss(vgg)
    lab, ex, exl = labels(2, 32, 32, ignore_frac=0.05), image(2, 40, 36), labels(2, 40, 36, 1)
    real = image(2, 32, 32, seed=7)
    fake = g(lab, ex, exl)
    losses = crit.generator(cross=Task(d(fake, lab, ex, exl), d(real, lab, ex, exl), fake, real))
    total(losses).backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    d.zero_grad()
    dl = crit.discriminator(cross=Task(d(fake.detach(), lab, ex, exl), d(real, lab, ex, exl),
                                       None, None))
    # d_fake alone: at init all patches sit inside the hinge margin, and then the final conv's
    # bias gets +1 per fake patch and -1 per real patch -> exactly zero in the sum.
    dl["cross/d_fake"].backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------- decoder
def test_feature_decoder_and_pretraining_gradients(vgg):
    g = make_g(vgg)
    dec = FeatureDecoder(TINY["image_feature_nc"], TINY["label_feature_nc"])
    lab, target = labels(1, 32, 48), image(1, 32, 48)
    f = g.extract_features(lab, image(1, 40, 40), labels(1, 40, 40, seed=3))
    preds = dec(g.align(f), f.fc1)
    tgts = g.vgg_features(target)
    assert [p.shape for p in preds] == [t.shape for t in tgts]
    assert dec.loss(tgts, tgts).item() == 0
    loss, per = dec.loss(preds, tgts, return_per_scale=True)
    torch.testing.assert_close(loss, sum(w * l for w, l in zip(dec.loss_weights, per)))
    pretrain_loss(g, dec, lab, image(1, 40, 40), labels(1, 40, 40, seed=3), target).backward()
    for name, p in list(dec.named_parameters()) + [
            (n, p) for n, p in g.named_parameters()
            if n.startswith(("compress", "label_encoder", "align_modules"))]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in g.blocks.parameters())  # SPADE not touched


# --------------------------------------------------------------------------------- D + losses
def test_discriminator_shapes_and_conditioning():
    d = MultiscaleDiscriminator(C, ndf=4, n_layers=4, num_D=3)
    img, lab = image(2, 64, 48), labels(2, 64, 48)
    ex, exl = image(2, 40, 56), labels(2, 40, 56, ignore_frac=0.2)
    x = d.condition(img, lab, ex, exl)
    assert x.shape == (2, 3 + C + 3 + C, 64, 48)
    assert torch.equal(x[:, 3:3 + C].argmax(1), lab)
    oh2 = x[:, 6 + C:]
    assert set(oh2.sum(1).unique().tolist()) <= {0.0, 1.0}  # ignore -> all zeros
    outs = d(img, lab, ex, exl)
    assert len(outs) == 3 and all(len(o) == 5 for o in outs)
    # 4x4 convs, padding 2: stride 2 gives floor(h/2)+1, stride 1 gives h+1; inputs 64x48,
    # 32x24, 16x12 (3x3/2 average pooling) -> three stride-2 convs, two stride-1.
    assert [tuple(o[-1].shape) for o in outs] == [(2, 1, 11, 9), (2, 1, 7, 6), (2, 1, 5, 5)]
    assert [o[0].shape[1] for o in outs] == [4, 4, 4] and outs[0][3].shape[1] == 32
    assert torch.equal(one_hot(torch.tensor([[[255, 1]]]), 3, 255, torch.float32),
                       torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]]))


def test_gan_losses_values():
    p = lambda *v: [[torch.zeros(1), torch.full((1, 1, 2, 2), x)] for x in v]  # noqa: E731
    assert hinge_g_loss(p(2.0, 4.0)).item() == pytest.approx(-3.0)
    fake, real = hinge_d_loss(p(-2.0, 0.5), p(0.5, 3.0))
    assert fake.item() == pytest.approx((0 + 1.5) / 2)
    assert real.item() == pytest.approx((0.5 + 0) / 2)
    a = [[torch.ones(1, 2, 2), torch.zeros(1)], [torch.ones(3), torch.zeros(1)]]
    b = [[torch.zeros(1, 2, 2), torch.ones(1)], [torch.ones(3) * 3, torch.ones(1)]]
    assert feature_matching_loss(a, a).item() == 0
    assert feature_matching_loss(a, b).item() == pytest.approx((1 + 2) / 2)  # last not used


def test_synthesis_loss_terms(vgg):
    crit = SynthesisLoss(vgg, lambda_feat=10, lambda_vgg=10, lambda_global=0.5)
    pf = [[torch.ones(1, 2, 4, 4), torch.full((1, 1, 3, 3), 0.25)]]
    pr = [[torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 3, 3)]]
    real = image(1, 32, 32)
    fake = real.clone()
    t = Task(pf, pr, fake, real)
    g = crit.generator(cross=t, global_=t)
    assert set(g) == {"cross/gan", "cross/feat", "cross/vgg",
                      "global/gan", "global/feat", "global/vgg"}
    assert g["cross/gan"].item() == pytest.approx(-0.25)
    assert g["cross/feat"].item() == pytest.approx(10.0)
    assert g["cross/vgg"].item() == 0.0
    assert g["global/feat"].item() == pytest.approx(5.0)
    g2 = crit.generator(cross=Task(pf, pr, image(1, 32, 32, seed=3), real))
    assert set(g2) == {"cross/gan", "cross/feat", "cross/vgg"} and g2["cross/vgg"] > 0
    d = crit.discriminator(cross=t, global_=t)
    assert d["cross/d_fake"].item() == pytest.approx(1.25)
    assert d["cross/d_real"].item() == pytest.approx(0.0)
    assert d["global/d_fake"].item() == pytest.approx(0.625)
    assert total(d).item() == pytest.approx(1.875)
    v = VGGLoss(vgg)
    assert v(real, real).item() == 0 and v(fake + 0.1, real).item() > 0


# --------------------------------------------------------------------------------- options
def test_options_files_overrides_and_errors(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"num_classes": 12, "attention_k": [4, 4, 4, 4, 4], "lr": 1}))
    o = Options.from_file(str(p), overrides=["alignment=gap", "feature_masking=false",
                                             "ngf_mults=[1,2,2,2,2]", "mask_hidden=none"])
    assert o.num_classes == 12 and o.attention_k == (4, 4, 4, 4, 4) and o.lr == 1.0
    assert o.alignment == "gap" and o.feature_masking is False and o.ngf_mults == (1, 2, 2, 2, 2)
    assert (o.beta1, o.beta2, o.g_update_every) == (0.9, 0.999, 1)
    q = tmp_path / "b.json"
    q.write_text("{'num_classes': 3,  # a Python literal with a comment\n 'flip': False}")
    assert Options.from_file(str(q)).num_classes == 3
    o.save(str(tmp_path / "c.json"))
    assert Options.from_file(str(tmp_path / "c.json")) == o
    with pytest.raises(ValueError, match="nonsense"):
        Options.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="nonsense"):
        parse_overrides(["nonsense=1"])
    with pytest.raises(ValueError, match="attention_k"):
        Options(attention_k=(8, 16))
    with pytest.raises(TypeError, match="ngf"):
        Options(ngf="wide")
    with pytest.raises(ValueError, match="alignment"):
        Options(alignment="magic")


def test_demo_config_builds_and_trains_one_step(vgg):
    opt = Options.from_file("configs/demo.json", overrides=["backend=reference"])
    assert opt.crop_size <= 96
    g, d = build_generator(opt, vgg=vgg), build_discriminator(opt)
    dec, crit = build_decoder(opt), build_loss(opt, g.vgg)
    s = opt.crop_size
    lab, ex, exl = (torch.randint(0, opt.num_classes, (1, s, s)), image(1, s, s),
                    torch.randint(0, opt.num_classes, (1, s, s)))
    fake = g(lab, ex, exl)
    losses = crit.generator(cross=Task(d(fake, lab, ex, exl), d(ex, lab, ex, exl), fake, ex))
    total(losses).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(dec.convs) == 5


def test_dtype_moves_reach_the_unregistered_vgg():
    v = VGG19()
    v.reset_random(0)
    g = make_g(v).double()
    assert g.vgg.features[0].weight.dtype == torch.float64
    out = g(labels(1, 32, 32), image(1, 32, 32).double(), labels(1, 32, 32, seed=1))
    assert out.dtype == torch.float64 and out.shape == (1, 3, 32, 32)


def test_presence_features_mark_classes_the_other_image_lacks():
    from msca.models.encoders import presence_features
    lab = torch.zeros(1, 8, 8, dtype=torch.long)
    lab[:, :, 4:] = 2                     # right half: class 2, which the exemplar lacks
    lab[:, 0, 0] = 255                    # ignore label: counts as shown
    exl = torch.zeros(1, 4, 6, dtype=torch.long)
    exl[:, :2] = 1                        # class 1: the target lacks it
    p1, p2 = presence_features(lab, exl, [(8, 8), (4, 4)], [(4, 6), (2, 3)], 255,
                               torch.float32)
    assert p1[0].shape == (1, 1, 8, 8) and p2[1].shape == (1, 1, 2, 3)
    assert p1[0][0, 0, :, :4].eq(1).all() and p1[0][0, 0, :, 4:].eq(0).all()
    torch.testing.assert_close(p1[1][0, 0], torch.tensor([[1., 1., 0., 0.]]).expand(4, 4))
    torch.testing.assert_close(p2[0][0, 0, :2], torch.zeros(2, 6))
    torch.testing.assert_close(p2[0][0, 0, 2:], torch.ones(2, 6))
    torch.testing.assert_close(p2[1][0, 0], torch.tensor([[0., 0., 0.], [1., 1., 1.]]))
    p1, _ = presence_features(lab, exl, [(4, 2)], [(4, 6)], 255, torch.float32)
    torch.testing.assert_close(p1[0][0, 0], torch.tensor([[1., 0.]]).expand(4, 2))


@pytest.mark.parametrize("alignment", ["msca", "gap", "label_matching"])
def test_generator_presence_channel_reaches_attention_and_decoder(vgg, alignment):
    torch.manual_seed(0)
    g = make_g(vgg, attention_presence=True, alignment=alignment).eval()
    lab, ex = labels(1, 33, 40), image(1, 36, 32)
    exl_all = labels(1, 36, 32, seed=3)
    exl_all[0, :C, 0] = torch.arange(C)   # every class shown
    exl_some = exl_all.clamp(max=2)       # classes 3.. missing: same image, other labels
    f_all, f_some = g.extract_features(lab, ex, exl_all), g.extract_features(lab, ex, exl_some)
    for i, m in enumerate(TINY["label_feature_nc"]):
        assert f_all.fc1[i].shape[1] == m + 1 and f_all.fc2[i].shape[1] == m + 1
        assert f_all.fc1[i][:, -1].eq(1).all()
    absent = (lab > 2).float().unsqueeze(1)
    torch.testing.assert_close(f_some.fc1[0][:, -1:], 1 - absent)
    out_all, out_some = g(lab, ex, exl_all), g(lab, ex, exl_some)
    assert out_all.shape == (1, 3, 33, 40)
    assert not torch.allclose(out_all, out_some)
    if alignment == "msca":   # interpolation's side-by-side exemplars see both label sets
        from msca.apps.interpolate import _side_by_side
        feats = _side_by_side(g, lab, ex, exl_some, ex, exl_all)[0]
        assert feats.fc1[0][:, -1].eq(1).all()
