"""Table 1 metrics (PSNR, SSIM, style loss, LPIPS, FID) and retrieval / colour correction,
each against a closed form or a direct computation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from msca.eval.metrics import (LPIPS, InceptionFeatures, fid, frechet_distance,
                               gaussian_stats, gram, psnr, ssim, style_loss,
                               target_gram_matrices)
from msca.eval.retrieval import (color_correct, histogram_intersection, lab_to_rgb,
                                 label_histogram, retrieve, rgb_to_lab)
from msca.models.vgg import VGG19


def _imgs(b=2, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 2 - 1


# --------------------------------------------------------------------------- PSNR / SSIM
def test_psnr_closed_form():
    t = torch.zeros(2, 3, 8, 8)
    p = t + torch.tensor([0.2, 0.02]).view(2, 1, 1, 1)  # [0,1] errors 0.1 and 0.01
    torch.testing.assert_close(psnr(p, t), torch.tensor([20.0, 40.0], dtype=torch.float64))


def test_ssim_single_window_matches_direct_formula():
    x, y = _imgs(1, 11, 11, 1), _imgs(1, 11, 11, 2)
    g = torch.exp(-(torch.arange(11.0, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    vals = []
    for c in range(3):
        a, b = (x[0, c].double() + 1) / 2, (y[0, c].double() + 1) / 2
        ma, mb = (w * a).sum(), (w * b).sum()
        va, vb = (w * a * a).sum() - ma ** 2, (w * b * b).sum() - mb ** 2
        cov = (w * a * b).sum() - ma * mb
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) *
                                                          (va + vb + c2)))
    torch.testing.assert_close(ssim(x, y)[0], torch.stack(vals).mean())


def test_ssim_properties_and_errors():
    x = _imgs()
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = [ssim((x + s * _imgs(seed=5)).clamp(-1, 1), x).mean() for s in (0.05, 0.3)]
    assert 1 > noisy[0] > noisy[1]
    with pytest.raises(ValueError, match="window"):
        ssim(_imgs(1, 8, 8), _imgs(1, 8, 8))
    with pytest.raises(ValueError, match="pred, target"):
        ssim(_imgs(1, 16, 16), _imgs(1, 16, 17))
    with pytest.raises(TypeError, match="pred"):
        psnr(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 3, 4, 4))


# --------------------------------------------------------------------------- style loss
@pytest.fixture(scope="module")
def vgg():
    v = VGG19()
    v.reset_random(0)
    return v


def test_gram_matches_definition():
    f = torch.randn(1, 3, 2, 5, dtype=torch.float64)
    F2 = f.reshape(3, 10)
    expected = torch.tensor([[float((F2[i] * F2[j]).sum()) / 30 for j in range(3)]
                             for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(gram(f)[0], expected)


def test_style_loss(vgg):
    x, y = _imgs(h=32, w=32), _imgs(h=32, w=32, seed=3)
    assert torch.all(style_loss(x, x, vgg) == 0)
    s = style_loss(x, y, vgg)
    assert s.shape == (2,) and torch.all(s > 0)
    torch.testing.assert_close(style_loss(x, y, vgg, target_grams=target_gram_matrices(y, vgg)),
                               s)
    # a per-image quantity: image 0's value does not depend on image 1
    torch.testing.assert_close(style_loss(x[:1], y[:1], vgg), s[:1])


# --------------------------------------------------------------------------- LPIPS
@pytest.fixture
def lpips_files(tmp_path):
    m = LPIPS()
    torch.manual_seed(0)
    vgg_sd = {f"features.{k}": torch.randn_like(v) * 0.05 for k, v in
              m.features.state_dict().items()}
    vgg_sd["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision file has more
    lin = {f"lin{i}.model.1.weight": torch.rand_like(c.weight) for i, c in enumerate(m.lins)}
    torch.save(vgg_sd, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "lin.pth")
    return str(tmp_path / "vgg16.pth"), str(tmp_path / "lin.pth"), lin


def test_lpips_from_files(lpips_files, tmp_path):
    vpath, lpath, lin = lpips_files
    net = LPIPS.from_files(vpath, lpath)
    x, y = _imgs(h=32, w=32), _imgs(h=32, w=32, seed=4)
    d = net(x, y)
    assert d.shape == (2,) and torch.all(d > 0)
    torch.testing.assert_close(net(x, x), torch.zeros(2))
    torch.testing.assert_close(net(y, x), d)
    # linear in the calibration weights
    torch.save({k: 2 * v for k, v in lin.items()}, tmp_path / "lin2.pth")
    torch.testing.assert_close(LPIPS.from_files(vpath, str(tmp_path / "lin2.pth"))(x, y),
                               2 * d)


def test_lpips_bad_files_are_named(lpips_files, tmp_path):
    vpath, lpath, lin = lpips_files
    torch.save({"lin0.model.1.weight": torch.zeros(1, 3, 1, 1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="--lpips-lin"):
        LPIPS.from_files(vpath, str(tmp_path / "bad.pth"))
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "badvgg.pth")
    with pytest.raises(ValueError, match="--lpips-vgg16"):
        LPIPS.from_files(str(tmp_path / "badvgg.pth"), lpath)
    with pytest.raises(FileNotFoundError, match="--lpips-lin"):
        LPIPS.from_files(vpath, str(tmp_path / "missing.pth"))


# --------------------------------------------------------------------------- FID
def test_frechet_distance_closed_forms():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert math.isclose(got, expected, rel_tol=1e-10)
    # rotation-invariant: the same Gaussians in a rotated basis
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    got_r = frechet_distance(q @ mu1.double(), q @ torch.diag(s1).double() @ q.T,
                             q @ mu2.double(), q @ torch.diag(s2).double() @ q.T)
    assert math.isclose(got_r, expected, rel_tol=1e-8)
    f = torch.randn(50, 4, dtype=torch.float64)
    assert abs(fid(f, f)) < 1e-8


def test_gaussian_stats_matches_torch_cov():
    f = torch.randn(30, 5, dtype=torch.float64)
    mu, cov = gaussian_stats(f)
    torch.testing.assert_close(mu, f.mean(0))
    torch.testing.assert_close(cov, torch.cov(f.T))
    with pytest.raises(ValueError, match="features"):
        gaussian_stats(f[:1])


class _ToyInception(nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[-2:] == (299, 299)
        return x.float().mean(dim=(2, 3))


def test_fid_with_a_torchscript_feature_network(tmp_path):
    path = str(tmp_path / "toy.pt")
    torch.jit.script(_ToyInception()).save(path)
    net = InceptionFeatures(path)
    a, b = _imgs(8, 16, 16, 1), _imgs(8, 16, 16, 2) * 0.5
    fa, fb = net(a, batch=3), net(b)
    assert fa.shape == (8, 3)
    assert abs(fid(fa, fa)) < 1e-6 and fid(fa, fb) > 0
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="--fid-inception"):
        InceptionFeatures(str(tmp_path / "junk.pt"))


# --------------------------------------------------------------------------- retrieval
def test_label_histogram_and_intersection():
    lab = torch.tensor([[0, 0, 1, 255], [2, 2, 2, 255]])
    h = label_histogram(lab, 4)
    torch.testing.assert_close(h, torch.tensor([2, 1, 3, 0], dtype=torch.float64) / 6)
    assert torch.all(label_histogram(torch.full((3, 3), 255), 4) == 0)
    pool = torch.stack([h, torch.tensor([0, 0, 0, 1.0], dtype=torch.float64)])
    torch.testing.assert_close(histogram_intersection(h, pool),
                               torch.tensor([1.0, 0.0], dtype=torch.float64))


def test_retrieve_ranks_and_picks_the_aligned_candidate():
    target = torch.zeros(8, 8, dtype=torch.long)
    target[:, :3] = 1
    flipped = target.flip(-1)              # same histogram, other layout
    other = torch.zeros(8, 8, dtype=torch.long)
    other[:, :6] = 1                       # different histogram
    r = retrieve(target, [other, flipped, target.clone()], 3, k=2)
    assert sorted(r["topk"]) == [1, 2]     # the two equal histograms
    assert r["scores"] == [1.0, 1.0]
    assert r["best"] == 2 and r["agreement"] == 1.0
    r = retrieve(target, [other, flipped, target.clone()], 3, k=2, exclude=(2,))
    # among the candidates the layout decides: `other` agrees at 5/8 of the columns, the
    # flipped map at 2/8, although the flipped one has the better histogram
    assert r["topk"] == [1, 0] and r["best"] == 0 and r["agreement"] == 5 / 8
    with pytest.raises(ValueError, match="k"):
        retrieve(target, [target], 3, k=0)


def test_lab_roundtrip_and_colour_correction():
    x = _imgs(2, 16, 16) * 0.9
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x.double(), atol=1e-6, rtol=0)
    # a colour cast that stays in gamut is removed exactly in mean and std
    ref = _imgs(2, 12, 12, 7) * 0.5
    cast = (ref * 0.8 + torch.tensor([0.1, -0.1, 0.05]).view(1, 3, 1, 1))
    out = color_correct(cast, ref)
    la, lr = rgb_to_lab(out), rgb_to_lab(ref)
    torch.testing.assert_close(la.mean(dim=(2, 3)), lr.mean(dim=(2, 3)), atol=0.05, rtol=0)
    torch.testing.assert_close(la.std(dim=(2, 3)), lr.std(dim=(2, 3)), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="batch"):
        color_correct(cast, ref[:1])
