"""Use msca_kernels in a model of your own: swap a SPADE generator's norm layers for the fused one.

A small SPADE-style generator written in plain PyTorch (its SPADE layer is the usual one:
parameter-free BatchNorm, then a shared 3x3 conv + ReLU on the resized label map, and two 3x3
convs for gamma and beta), and the same generator whose norm layers are msca_kernels.nn.SPADE.
The second loads the first's state_dict with strict=True; the script compares their outputs
(forward in eval mode, forward and input gradient in training mode) and times both.

    python examples/spade_generator_swap.py                  # 256x256, batch 2
    python examples/spade_generator_swap.py --size 64 --repeats 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import msca_kernels


class PlainSPADE(nn.Module):
    """SPADE as the public GauGAN code writes it (same submodule names)."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x, segmap):
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return self.param_free_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


def fused_spade(norm_nc: int, label_nc: int) -> nn.Module:
    return msca_kernels.nn.SPADE("spadebatch3x3", norm_nc, label_nc)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, label_nc: int, norm):
        super().__init__()
        mid = min(cin, cout)
        self.norm_0, self.norm_1 = norm(cin, label_nc), norm(mid, label_nc)
        self.conv_0 = nn.Conv2d(cin, mid, 3, padding=1)
        self.conv_1 = nn.Conv2d(mid, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None
        self.norm_s = norm(cin, label_nc) if cin != cout else None

    def forward(self, x, seg):
        skip = x if self.shortcut is None else self.shortcut(self.norm_s(x, seg))
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return skip + dx


class Generator(nn.Module):
    """A label map (one-hot) -> image; upsampling SPADE residual blocks from 1/8 size."""

    def __init__(self, label_nc: int = 12, width: int = 64, norm=PlainSPADE):
        super().__init__()
        chans = [4 * width, 2 * width, width, width // 2]
        self.fc = nn.Conv2d(label_nc, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(a, b, label_nc, norm)
                                    for a, b in zip(chans[:-1], chans[1:]))
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, seg):
        h, w = seg.shape[2:]
        x = self.fc(F.interpolate(seg, size=(h // 8, w // 8), mode="nearest"))
        for block in self.blocks:
            x = F.interpolate(block(x, seg), scale_factor=2, mode="nearest")
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def compare(size: int = 256, batch: int = 2, label_nc: int = 12, width: int = 64,
            repeats: int = 5, seed: int = 0) -> dict:
    """Build both generators, load the plain one's weights into the fused one, compare and
    time; returns the largest differences and the median times."""
    torch.manual_seed(seed)
    plain = Generator(label_nc, width, norm=PlainSPADE)
    fused = Generator(label_nc, width, norm=fused_spade)
    fused.load_state_dict(plain.state_dict(), strict=True)  # same names, same shapes
    ids = torch.randint(0, label_nc, (batch, size, size))
    seg = F.one_hot(ids, label_nc).permute(0, 3, 1, 2).float()

    result = {}
    for model in (plain, fused):  # a few training steps' worth of running statistics
        model.train()
        for _ in range(2):
            model(seg)
    for mode in ("train", "eval"):
        plain.train(mode == "train"), fused.train(mode == "train")
        x_plain = seg.clone().requires_grad_(mode == "train")
        x_fused = seg.clone().requires_grad_(mode == "train")
        y_plain, y_fused = plain(x_plain), fused(x_fused)
        result[f"{mode}_max_abs_diff"] = (y_plain - y_fused).abs().max().item()
        if mode == "train":
            g = torch.randn_like(y_plain)
            y_plain.backward(g), y_fused.backward(g)
            result["grad_rel_diff"] = ((x_plain.grad - x_fused.grad).norm()
                                       / x_plain.grad.norm()).item()
            # relative to the largest parameter gradient: the biases of convolutions that feed
            # a batch norm have gradients that vanish in exact arithmetic (the norm removes
            # any constant), so their own relative error is meaningless
            pairs = list(zip(plain.parameters(), fused.parameters()))
            scale = max(p.grad.norm() for p, _ in pairs)
            result["param_grad_rel_diff"] = max((p.grad - q.grad).norm() / scale
                                                for p, q in pairs).item()

    for name, model in (("plain", plain), ("fused", fused)):
        model.train()

        def step(model=model):
            model.zero_grad(set_to_none=True)
            model(seg).square().mean().backward()

        result[f"{name}_train_step_s"] = timed(step, repeats)
        model.eval()
        with torch.no_grad():
            result[f"{name}_eval_forward_s"] = timed(lambda model=model: model(seg), repeats)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="label map size (a multiple of 8)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--width", type=int, default=64, help="channels of the last block x 2")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    args = p.parse_args(argv)
    if args.size % 8:
        p.error(f"--size: expected a multiple of 8, got {args.size}")
    r = compare(args.size, args.batch, width=args.width, repeats=args.repeats)
    print(f"backends here: { {k: bool(v) for k, v in msca_kernels.available_backends().items()} }")
    print(f"outputs, eval mode:  max |plain - fused| = {r['eval_max_abs_diff']:.2e}")
    print(f"outputs, train mode: max |plain - fused| = {r['train_max_abs_diff']:.2e}; "
          f"input gradient relative difference {r['grad_rel_diff']:.2e}, parameter "
          f"gradients at most {r['param_grad_rel_diff']:.2e} (of the largest)")
    for what in ("train_step", "eval_forward"):
        a, b = r[f"plain_{what}_s"], r[f"fused_{what}_s"]
        print(f"{what.replace('_', ' ')}: plain {a * 1e3:.1f} ms, fused {b * 1e3:.1f} ms "
              f"({a / b:.2f}x), median of {args.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
