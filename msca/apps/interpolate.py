"""Style interpolation (paper Fig. 5) and spatial style interpolation (Fig. 7), no retraining.

Both put the two exemplars side by side: their features Fx2, Fc2 (extracted from each
exemplar on its own, so no VGG receptive field crosses the seam) are concatenated along the
width at every scale, and the MSCA logits are biased through the kernels' public API
(`spatial_bias`, `channel_bias`, docs/design.md section 2).

Style interpolation, factor a in [0, 1] (a = 1: exemplar A only, a = 0: exemplar B only), the
paper's alpha_2 := alpha_2 + log(a / (1 - a)) on A's half of the spatial logits. Softmax is
shift-invariant, so we add the equivalent non-positive bias to one half only: log(a/(1-a)) on
A's positions when a < 1/2, log((1-a)/a) on B's when a >= 1/2 (no large positive logits; a
bias of -1e4 at a = 0 or 1 removes that half exactly). Every spatial-attention row then puts
mass proportional to a on A and (1 - a) on B (times the attention's own preference). The
Eq. 6 masking score is interpolated likewise: a m_A + (1 - a) m_B, with m_A, m_B the masks of
(target, A) and (target, B).

Spatial style interpolation, a(x) going 1 -> 0 from the left edge of the target to the right:
each scale runs MSCA with 2K tokens, K reading only A (spatial bias -1e4 on B's half) and K
reading only B, with the same phi/psi weights, masks [m_A, m_B], and channel logits biased by
log a(x) on A's tokens and log(1 - a(x)) on B's. The channel softmax over the 2K tokens then
equals [a(x) beta, (1 - a(x)) beta] exactly, so Fx1(x) = a(x) Fx1_A(x) + (1 - a(x)) Fx1_B(x):
the target's features blend from A's style on the left to B's on the right, and the synthesis
renders the gradient.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageDraw

import msca_kernels as mk
from msca.data.transforms import colorize_labels, tensor_to_pil

NEG = -1e4   # a logit bias that removes positions / tokens exactly (exp underflows to 0)


def _require_msca(G, what: str) -> None:
    if getattr(G, "alignment", None) != "msca":
        raise ValueError(f"{what}: needs a model with MSCA attention; this checkpoint's "
                         f"alignment is {getattr(G, 'alignment', None)!r}")


def _check_pair(ex_a, ex_b) -> None:
    if ex_a.shape[0] != ex_b.shape[0] or ex_a.shape[-2] != ex_b.shape[-2]:
        raise ValueError(f"exemplar_a, exemplar_b: expected the same batch size and height "
                         f"(they are put side by side), got {tuple(ex_a.shape)} and "
                         f"{tuple(ex_b.shape)}")


def _side_by_side(G, label, ex_a, lab_a, ex_b, lab_b):
    from msca.models.generator import Features

    _check_pair(ex_a, ex_b)
    fa = G.extract_features(label, ex_a, lab_a)
    fb = G.extract_features(label, ex_b, lab_b)
    fc1 = fa.fc1
    if getattr(G, "attention_presence", False):
        # the presence channel of c1 must say what either exemplar shows, not A alone
        fc1 = G.extract_features(label, torch.cat([ex_a, ex_b], -1),
                                 torch.cat([lab_a, lab_b], -1)).fc1
    feats = Features([torch.cat([a, b], -1) for a, b in zip(fa.fx2, fb.fx2)], fc1,
                     [torch.cat([a, b], -1) for a, b in zip(fa.fc2, fb.fc2)], label,
                     torch.cat([lab_a, lab_b], -1))
    widths = [a.shape[-1] for a in fa.fx2]
    return feats, G.feature_masks(fa), G.feature_masks(fb), widths


def style_bias(a: float, K: int, width_a: int, fx2: torch.Tensor) -> torch.Tensor:
    """The (B,K,h,w) spatial logit bias for interpolation factor a over side-by-side exemplar
    features fx2 (B,N,h,w) whose first width_a columns are exemplar A's (module docstring)."""
    B, _, h, w = fx2.shape
    bias = fx2.new_zeros(B, K, h, w)
    if a < 0.5:
        bias[..., :width_a] = NEG if a <= 0 else max(float(np.log(a / (1 - a))), NEG)
    elif a < 1:
        bias[..., width_a:] = max(float(np.log((1 - a) / a)), NEG)
    else:
        bias[..., width_a:] = NEG
    return bias


@torch.no_grad()
def interpolate_styles(G, label, ex_a, lab_a, ex_b, lab_b, alphas) -> torch.Tensor:
    """G(label) in the styles between exemplar A (a = 1) and B (a = 0); label (B,H,W),
    exemplars (B,3,h,w) of equal height. Returns (len(alphas), B, 3, H, W)."""
    _require_msca(G, "style interpolation")
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"alphas: expected factors in [0, 1], got {alphas}")
    G.eval()
    feats, ma, mb, widths = _side_by_side(G, label, ex_a, lab_a, ex_b, lab_b)
    outs = []
    for a in alphas:
        sb = [style_bias(a, G.attention_k[i], widths[i], feats.fx2[i])
              for i in range(len(feats.fx2))]
        masks = [None if ma[i] is None else a * ma[i] + (1 - a) * mb[i]
                 for i in range(len(feats.fx2))]
        fx1 = G.align(feats, spatial_bias=sb, masks=masks)
        outs.append(G.synthesize(fx1, feats.fc1))
    return torch.stack(outs)


def left_to_right(width: int, dtype=torch.float32) -> torch.Tensor:
    """a(x): 1 at the left edge, 0 at the right, linear (width,)."""
    if width == 1:
        return torch.ones(1, dtype=dtype)
    return torch.linspace(1.0, 0.0, width, dtype=dtype)


@torch.no_grad()
def spatial_interpolate(G, label, ex_a, lab_a, ex_b, lab_b, weight=None) -> torch.Tensor:
    """G(label) with style A where weight(x) = 1 and B where 0; `weight`: a function of the
    width giving (W,) factors, default left_to_right (module docstring). -> (B,3,H,W)."""
    _require_msca(G, "spatial style interpolation")
    G.eval()
    weight = weight or left_to_right
    feats, ma, mb, widths = _side_by_side(G, label, ex_a, lab_a, ex_b, lab_b)
    fx1 = []
    for i, m in enumerate(G.align_modules):
        fx2, fc2, fc1 = feats.fx2[i], feats.fc2[i], feats.fc1[i]
        K = m.phi.weight.shape[0]
        B, _, h2, w2 = fx2.shape
        wa = widths[i]
        sb = fx2.new_zeros(B, 2 * K, h2, w2)
        sb[:, :K, :, wa:] = NEG      # tokens 1..K read exemplar A only
        sb[:, K:, :, :wa] = NEG      # tokens K+1..2K read exemplar B only
        h1, w1 = fc1.shape[-2:]
        a = weight(w1).to(fx2.dtype).clamp(0, 1).view(1, 1, 1, w1)
        cb = torch.cat([torch.log(a).clamp_min(NEG).expand(B, K, h1, w1),
                        torch.log1p(-a).clamp_min(NEG).expand(B, K, h1, w1)], 1)
        mask = None if ma[i] is None else torch.cat([ma[i], mb[i]], 1)
        two = lambda t: None if t is None else torch.cat([t, t], 0)  # noqa: E731
        fx1.append(mk.msca_attention(fx2, fc2, fc1, two(m.phi.weight), two(m.psi.weight),
                                     mask, two(m.phi.bias), two(m.psi.bias), spatial_bias=sb,
                                     channel_bias=cb.contiguous(), backend=m.backend))
    return G.synthesize(fx1, feats.fc1)


# --------------------------------------------------------------------------- figures
def _pil(t):
    return tensor_to_pil(t)


def _label_pil(lab, num_classes):
    return Image.fromarray(colorize_labels(lab, num_classes))


def _strip(cells, captions, title, scale=2, pad=4, cap=14):
    ims = [c.resize((c.width * scale, c.height * scale), Image.NEAREST) for c in cells]
    W = sum(i.width for i in ims) + pad * (len(ims) - 1)
    H = max(i.height for i in ims) + 2 * cap
    canvas = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(canvas)
    d.text((2, 1), title, fill="black")
    x = 0
    for im, c in zip(ims, captions):
        canvas.paste(im, (x, 2 * cap))
        d.text((x + 2, cap + 1), c, fill="black")
        x += im.width + pad
    return canvas


def interpolation_figure(label, ex_a, ex_b, outputs, alphas, num_classes) -> Image.Image:
    """label | exemplar A | outputs for each a | exemplar B (one scene, batch index 0)."""
    cells = [_label_pil(label, num_classes), _pil(ex_a)] + [_pil(o) for o in outputs] + \
        [_pil(ex_b)]
    caps = ["target label", "exemplar A"] + [f"a={a:.2f}" for a in alphas] + ["exemplar B"]
    return _strip(cells, caps, "style interpolation: a = weight of exemplar A's style "
                  "(spatial logit bias log(a/(1-a)) on A, B side by side)")


def spatial_figure(label, ex_a, ex_b, out_a, mixed, out_b, num_classes) -> Image.Image:
    cells = [_label_pil(label, num_classes), _pil(ex_a), _pil(out_a), _pil(mixed),
             _pil(out_b), _pil(ex_b)]
    caps = ["target label", "exemplar A", "style A only", "A (left) -> B (right)",
            "style B only", "exemplar B"]
    return _strip(cells, caps, "spatial style interpolation: channel attention mixes A's "
                  "and B's tokens with weight a(x) = 1 -> 0 from left to right", scale=3)


# --------------------------------------------------------------------------- inputs
def procedural_triplet(size: int, seed: int = 0, index: int = 0):
    """A target label map and two exemplar scenes with their labels, from the test split:
    (c1, x_a, c_a, x_b, c_b), each with a batch dimension of 1."""
    from msca.data.procedural import ProceduralScenes

    ds = ProceduralScenes("test", size, 3 * index + 3, seed=seed)
    t, a, b = (ds[3 * index + j] for j in range(3))
    return (t["label"][None], a["image"][None], a["label"][None], b["image"][None],
            b["label"][None])


def load_triplet(label, exemplar_a, exemplar_a_label, exemplar_b, exemplar_b_label,
                 num_classes, size, ignore_label=255):
    from .synthesize import load_inputs
    c1, xa, ca, _ = load_inputs(label, exemplar_a, exemplar_a_label, num_classes, size,
                                ignore_label)
    _, xb, cb, _ = load_inputs(label, exemplar_b, exemplar_b_label, num_classes, size,
                               ignore_label)
    return c1, xa, ca, xb, cb


def _inputs(args_files, opt, size, seed, index):
    if any(f is not None for f in args_files):
        if any(f is None for f in args_files):
            raise ValueError("--label, --exemplar-a, --exemplar-a-label, --exemplar-b, "
                             "--exemplar-b-label: give all five (your own files) or none "
                             "(procedural test scenes)")
        return load_triplet(*args_files, opt.num_classes, size, opt.ignore_label)
    return procedural_triplet(size, seed, index)


def interpolate_files(*, out: str, checkpoint: str, steps: int = 6, files=(None,) * 5,
                      backend=None, size=None, seed: int = 0, index: int = 0):
    from msca.train.checkpoint import load_generator
    if steps < 2:
        raise ValueError(f"--steps: expected >= 2, got {steps}")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    size = size or opt.crop_size
    c1, xa, ca, xb, cb = _inputs(files, opt, size, seed, index)
    alphas = np.linspace(1.0, 0.0, steps).tolist()
    outs = interpolate_styles(G, c1, xa, ca, xb, cb, alphas)
    fig = interpolation_figure(c1[0], xa[0], xb[0], outs[:, 0], alphas, opt.num_classes)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.save(out)
    return fig


def spatial_interpolate_files(*, out: str, checkpoint: str, files=(None,) * 5, backend=None,
                              size=None, seed: int = 0, index: int = 0):
    from msca.train.checkpoint import load_generator
    from .synthesize import synthesize
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    G, opt = load_generator(checkpoint, backend)
    size = size or opt.crop_size
    c1, xa, ca, xb, cb = _inputs(files, opt, size, seed, index)
    mixed = spatial_interpolate(G, c1, xa, ca, xb, cb)
    out_a, out_b = synthesize(G, c1, xa, ca), synthesize(G, c1, xb, cb)
    fig = spatial_figure(c1[0], xa[0], xb[0], out_a[0], mixed[0], out_b[0], opt.num_classes)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.save(out)
    return fig
