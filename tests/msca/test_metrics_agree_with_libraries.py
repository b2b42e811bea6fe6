"""Our Table 1 metrics against well-kept libraries on the same inputs: PSNR and SSIM against
torchmetrics, the Frechet distance (FID's formula) against scipy's matrix square root.

LPIPS and the FID Inception network need pretrained weights that neither library can fetch
here (no network); those stay covered by test_eval_metrics.py.
"""
import numpy as np
import pytest
import torch

from msca.eval.metrics import frechet_distance, gaussian_stats, psnr, ssim

tm_image = pytest.importorskip("torchmetrics.functional.image")
scipy_linalg = pytest.importorskip("scipy.linalg")


def pairs(seed=0, b=3, h=32, w=40):
    """Targets in [-1, 1] and predictions at three noise levels, one per image."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(b, 3, h, w, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(b, 3, h, w, generator=g, dtype=torch.float64)
    pred = (target + noise * torch.tensor([0.02, 0.1, 0.5]).view(b, 1, 1, 1).double())
    return pred.clamp(-1, 1), target


def test_psnr_agrees_with_torchmetrics():
    pred, target = pairs()
    theirs = tm_image.peak_signal_noise_ratio((pred + 1) / 2, (target + 1) / 2, data_range=1.0,
                                              reduction="none", dim=(1, 2, 3))
    # the two differ from the eighth significant digit on (rounding order), hence 1e-6
    torch.testing.assert_close(psnr(pred, target), theirs.double(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_agrees_with_torchmetrics(seed):
    pred, target = pairs(seed)
    # torchmetrics averages its SSIM map over every pixel of a reflection-padded image; ours
    # (as Wang et al.'s reference code) over the 'valid' windows only, those that lie wholly
    # inside the image. The same map with its 5-pixel border cropped is ours exactly.
    _, full = tm_image.structural_similarity_index_measure(
        (pred + 1) / 2, (target + 1) / 2, data_range=1.0, gaussian_kernel=True, sigma=1.5,
        kernel_size=11, k1=0.01, k2=0.03, reduction="none", return_full_image=True)
    theirs_valid = full[..., 5:-5, 5:-5].flatten(1).mean(1)
    ours = ssim(pred, target)
    torch.testing.assert_close(ours, theirs_valid.double(), rtol=1e-6, atol=1e-6)
    assert ours[0] > ours[1] > ours[2]  # more noise, lower SSIM: the check is not vacuous
    # torchmetrics' own mean, borders included, differs only by that convention
    theirs = tm_image.structural_similarity_index_measure(
        (pred + 1) / 2, (target + 1) / 2, data_range=1.0, reduction="none")
    assert (ours - theirs.double()).abs().max() < 0.02


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n, d", [(200, 16), (40, 8)])
def test_frechet_distance_agrees_with_scipy(n, d):
    g = torch.Generator().manual_seed(n + d)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(
        d, d, generator=g, dtype=torch.float64) * 0.5 + 0.3
    ours = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    theirs = scipy_frechet(*(t.numpy() for t in (*gaussian_stats(a), *gaussian_stats(b))))
    assert ours == pytest.approx(theirs, rel=1e-7, abs=1e-9)
    assert ours > 0.1
