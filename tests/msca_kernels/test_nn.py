"""nn.MSCA and nn.SPADE; SPADE as a drop-in for the public SPADE/GauGAN layer."""
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import msca_kernels as mk
from conftest import rel_err


class PublicSPADE(nn.Module):
    """The SPADE layer as the public SPADE code defines it (models/networks/normalization.py):
    parameter-free norm, a shared 3x3 conv + ReLU on the nearest-resized segmap, two 3x3 convs
    for gamma and beta, out = norm(x) * (1 + gamma) + beta. Written here from its description."""

    def __init__(self, config_text, norm_nc, label_nc):
        super().__init__()
        norm_type, ks = re.fullmatch(r"spade(\D+)(\d)x\d", config_text).groups()
        ks = int(ks)
        self.param_free_norm = (nn.InstanceNorm2d(norm_nc, affine=False) if norm_type == "instance"
                                else nn.BatchNorm2d(norm_nc, affine=False))
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, 128, ks, padding=ks // 2), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(128, norm_nc, ks, padding=ks // 2)
        self.mlp_beta = nn.Conv2d(128, norm_nc, ks, padding=ks // 2)

    def forward(self, x, segmap):
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.size()[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", ["spadebatch3x3", "spadeinstance3x3", "spadesyncbatch3x3",
                                    "spadebatch5x5"])
def test_spade_is_a_drop_in(backend, config):
    public = PublicSPADE(config, 6, 5)
    ours = mk.nn.SPADE(config, 6, 5, backend=backend)
    assert [n for n, _ in ours.state_dict().items()] == list(public.state_dict())
    ours.load_state_dict(public.state_dict(), strict=True)
    seg = torch.randn(2, 5, 13, 11)
    for step in range(3):  # training mode: batch statistics, running statistics updated
        x = torch.randn(2, 6, 9, 7) * 3 + 1
        xo = x.clone().requires_grad_(True)
        xp = x.clone().requires_grad_(True)
        yo, yp = ours(xo, seg), public(xp, seg)
        assert rel_err(yo, yp) < 1e-5
        g = torch.randn_like(yp)
        yo.backward(g)
        yp.backward(g)
        assert rel_err(xo.grad, xp.grad) < 1e-4
    for (n, a), (_, b) in zip(ours.named_parameters(), public.named_parameters()):
        assert rel_err(a.grad, b.grad) < 1e-4, n
    for (n, a), (_, b) in zip(ours.named_buffers(), public.named_buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6), n
    ours.eval()
    public.eval()
    x = torch.randn(2, 6, 9, 7)
    assert rel_err(ours(x, seg), public(x, seg)) < 1e-5


def test_spade_accepts_design_argument_order():
    layer = mk.nn.SPADE(8, 3, config="spadeinstance3x3")
    assert isinstance(layer.param_free_norm, nn.InstanceNorm2d)
    assert layer.mlp_gamma.out_channels == 8 and layer.mlp_shared[0].in_channels == 3


def test_spade_momentum_none_is_cumulative():
    ours, public = mk.nn.SPADE("spadebatch3x3", 4, 2), PublicSPADE("spadebatch3x3", 4, 2)
    ours.load_state_dict(public.state_dict())
    ours.param_free_norm.momentum = public.param_free_norm.momentum = None
    seg = torch.randn(3, 2, 5, 5)
    for _ in range(3):
        x = torch.randn(3, 4, 5, 5)
        ours(x, seg), public(x, seg)
    assert torch.allclose(ours.param_free_norm.running_var, public.param_free_norm.running_var,
                          rtol=1e-5)
    assert int(ours.param_free_norm.num_batches_tracked) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("feature_masking", [True, False])
def test_msca_module_matches_functional(backend, feature_masking):
    layer = mk.nn.MSCA(6, 4, 3, 5, feature_masking=feature_masking, backend=backend)
    fx2, fc2, fc1 = torch.randn(2, 6, 7, 9), torch.randn(2, 3, 7, 9), torch.randn(2, 4, 5, 3)
    out, alpha, beta = layer(fx2, fc2, fc1, return_attention=True)
    mask = None
    if feature_masking:
        pooled = torch.cat([fc1.mean((2, 3)), fc2.mean((2, 3))], 1)
        mask = torch.sigmoid(layer.mask_mlp(pooled))
    ref = mk.reference.msca_attention(fx2, fc2, fc1, layer.phi.weight.flatten(1),
                                      layer.psi.weight.flatten(1), mask, layer.phi.bias,
                                      layer.psi.bias)
    assert out.shape == (2, 6, 5, 3) and alpha.shape == (2, 5, 7, 9) and beta.shape == (2, 5, 5, 3)
    assert rel_err(out, ref) < 1e-5
    out.square().sum().backward()
    for n, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def test_msca_module_k1_constant_attention_is_gap():
    # Paper Sec. 3.2: with K = 1 and constant alpha, MSCA is global average pooling.
    layer = mk.nn.MSCA(4, 3, 3, 1, feature_masking=False)
    with torch.no_grad():
        layer.phi.weight.zero_()
        layer.phi.bias.zero_()
    fx2, fc2, fc1 = torch.randn(2, 4, 6, 5), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 4, 4)
    out = layer(fx2, fc2, fc1)
    assert torch.allclose(out, fx2.mean((2, 3), keepdim=True).expand(2, 4, 4, 4), atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_msca_global_maps_attend_uniformly_and_learn_only_their_channel_logits(backend):
    torch.manual_seed(3)
    layer = mk.nn.MSCA(5, 4, 4, 6, logit_scale=10.0, global_maps=2, backend=backend).double()
    plain = mk.nn.MSCA(5, 4, 4, 6, logit_scale=10.0, backend=backend).double()
    assert layer.state_dict().keys() == plain.state_dict().keys()  # a constructor argument
    fx2, fc2 = torch.randn(2, 5, 7, 9).double(), torch.randn(2, 4, 7, 9).double()
    fc1 = torch.randn(2, 4, 5, 6).double()
    out, alpha, beta = layer(fx2, fc2, fc1, return_attention=True)
    # the last two maps are the exemplar's global average; the others are learned and peaked
    assert torch.allclose(alpha[:, -2:], torch.full_like(alpha[:, -2:], 1 / 63), atol=1e-12)
    assert alpha[:, :-2].amax() > 5 / 63
    # the same as the plain module with those phi rows zeroed by hand
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        plain.phi.weight[-2:] = 0
        plain.phi.bias[-2:] = 0
    assert rel_err(out, plain(fx2, fc2, fc1)) < 1e-12
    out.square().sum().backward()
    assert layer.phi.weight.grad[-2:].abs().max() == 0       # no spatial logits to learn
    assert layer.psi.weight.grad[-2:].abs().max() > 0        # still chosen per position
    with pytest.raises(ValueError, match="global_maps"):
        mk.nn.MSCA(5, 4, 4, 6, global_maps=7)


def test_options_check_attention_global_maps():
    from msca.options import Options
    assert Options(attention_global_maps=1).attention_global_maps == 1
    with pytest.raises(ValueError, match="attention_global_maps"):
        Options(attention_global_maps=99)
