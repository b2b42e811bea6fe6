"""The attention probe and map concentration on hand-made attention: one-hot maps copy
exactly, uniform maps give the global mean; the statistics of uniform and one-hot maps."""
from __future__ import annotations

import math

import pytest
import torch

from msca.eval.attention_concentration import (beta_max_mean, class_purity,
                                               normalised_entropy, top_share)
from msca.eval.attention_probe import AttentionProbe, carry, format_probe, probe_scale


def _permutation_attention(h, w, perm):
    """alpha_k one-hot at exemplar position perm[k], beta_k one-hot at target position k:
    target position k reads exemplar position perm[k]."""
    P = h * w
    alpha = torch.zeros(1, P, P)
    alpha[0, torch.arange(P), perm] = 1
    beta = torch.eye(P)[None]
    return alpha.view(1, P, h, w), beta.view(1, P, h, w)


def test_one_hot_attention_copies_exactly():
    h, w = 3, 4
    vals = torch.randn(2, 5, h, w, dtype=torch.float64)
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(0))
    alpha, beta = _permutation_attention(h, w, perm)
    alpha, beta = alpha.expand(2, -1, -1, -1), beta.expand(2, -1, -1, -1)
    out = carry(vals, alpha, beta)
    torch.testing.assert_close(out.flatten(2), vals.flatten(2)[:, :, perm])


def test_uniform_alpha_gives_the_global_mean():
    vals = torch.randn(1, 3, 4, 6, dtype=torch.float64)
    alpha = torch.full((1, 5, 4, 6), 1 / 24)
    beta = torch.softmax(torch.randn(1, 5, 3, 2), 1)     # any beta: each column sums to 1
    out = carry(vals, alpha, beta)
    torch.testing.assert_close(out, vals.mean(dim=(2, 3), keepdim=True).expand(1, 3, 3, 2))
    with pytest.raises(ValueError, match="beta"):
        carry(vals, alpha, beta[:, :4])
    with pytest.raises(ValueError, match="alpha"):
        carry(vals, alpha[..., :5], beta)


def _scene(h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, 3, (1, h, w), generator=g)
    img = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    return lab, img


def test_probe_of_an_exact_copy_and_of_uniform_attention():
    lab, img = _scene()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    # the exemplar is the target with its positions permuted; the attention undoes that
    inv = torch.argsort(perm)
    ex = img.flatten(2)[:, :, inv].view_as(img)
    exl = lab.flatten(1)[:, inv].view_as(lab)
    alpha, beta = _permutation_attention(4, 4, perm)
    r = probe_scale(alpha, beta, lab, ex, exl, img, num_classes=3)
    assert float(r["probe_psnr"][0]) > 100 and float(r["label_acc"][0]) == 1.0
    assert float(r["label_acc_ceiling"][0]) == 1.0
    torch.testing.assert_close(r["top_share"], torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(r["purity"], torch.ones(16, dtype=torch.float64))
    u = probe_scale(torch.full((1, 16, 4, 4), 1 / 16), torch.full((1, 16, 4, 4), 1 / 16),
                    lab, ex, exl, img, num_classes=3)
    torch.testing.assert_close(u["probe_psnr"], u["uniform_psnr"])


def test_concentration_of_uniform_and_one_hot_maps():
    P = 50
    uniform = torch.full((2, 3, P), 1 / P)
    one_hot = torch.zeros(2, 3, P)
    one_hot[..., 7] = 1
    assert torch.allclose(top_share(uniform, 0.1), torch.full((2, 3), 5 / P, dtype=torch.float64))
    assert torch.allclose(top_share(one_hot, 0.1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.allclose(normalised_entropy(uniform), torch.ones(2, 3, dtype=torch.float64))
    assert torch.allclose(normalised_entropy(one_hot), torch.zeros(2, 3, dtype=torch.float64))
    K = 4
    assert torch.allclose(beta_max_mean(torch.full((2, K, 3, 3), 1 / K)),
                          torch.full((2,), 1 / K, dtype=torch.float64))
    # exemplar labels: 30 pixels of class 0, 20 of class 1
    onehot = torch.zeros(1, P, 2)
    onehot[0, :30, 0] = 1
    onehot[0, 30:, 1] = 1
    pur, pur_u = class_purity(uniform[:1], onehot)
    assert torch.allclose(pur, torch.full((1, 3), 0.6, dtype=torch.float64))
    assert math.isclose(float(pur_u[0]), 0.6)
    pur1, _ = class_purity(one_hot[:1], onehot)
    assert torch.allclose(pur1, torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="fraction"):
        top_share(uniform, 0)


def test_attention_probe_summary():
    lab, img = _scene(8, 8)
    probe = AttentionProbe(num_classes=3)
    alpha = torch.softmax(torch.randn(2, 4, 8, 8).flatten(2), -1).view(2, 4, 8, 8)
    beta = torch.softmax(torch.randn(2, 4, 4, 4), 1)
    lab2, img2 = lab.repeat(2, 1, 1), img.repeat(2, 1, 1, 1)
    for _ in range(2):                                   # two batches accumulate
        probe.update([(alpha, beta), None], lab2, img2, lab2, img2)
    s = probe.summary()
    assert list(s) == ["0"]                              # the scale without attention is absent
    f = s["0"]
    assert f["k"] == 4 and f["exemplar_size"] == [8, 8] and f["target_size"] == [4, 4]
    assert len(f["probe_psnr_per_pair"]) == 4
    assert f["beta_uniform"] == 0.25 and f["alpha_top10_mass_uniform"] == round(7 / 64, 4)
    assert 0 < f["alpha_entropy_norm_median"] < 1
    assert "scale" in format_probe(s) and "no attention" in format_probe({})
