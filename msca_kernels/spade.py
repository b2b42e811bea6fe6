"""SPADE denormalisation: the public function and the custom-op glue of the C++ kernels.

Forward saves x, gamma, mean and rstd (never the normalised x); backward is one reduction pass
and one elementwise pass in C++ (msca_kernels::spade_norm_bwd). dbeta is grad_out itself.
Running statistics are updated here, outside the op, exactly as torch.nn.functional.batch_norm
updates them: running = (1 - momentum) * running + momentum * batch, with the unbiased variance.
"""
from __future__ import annotations

import torch

from . import _autograd, _checks, _ext, backends, reference

MODES = ("batch", "instance")


def _accum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if _ext.loaded():

    @torch.library.register_fake("msca_kernels::spade_norm_fwd")
    def _spade_fwd_fake(x, gamma, beta, mean, rstd, instance, eps):
        B, C, _ = x.shape
        shp = (B, C) if instance else (C,)
        acc = _accum_dtype(x.dtype)
        return torch.empty_like(x), x.new_empty(shp, dtype=acc), x.new_empty(shp, dtype=acc)

    @torch.library.register_fake("msca_kernels::spade_norm_bwd")
    def _spade_bwd_fake(grad_out, x, gamma, mean, rstd, instance, batch_stats):
        return torch.empty_like(x), torch.empty_like(gamma)

    _autograd.register("msca_kernels::spade_norm_fwd", _autograd.spade_autograd("spade_norm_bwd"))


def _validate(x, gamma, beta, mode, eps, running_mean, running_var, momentum, training):
    _checks.tensor("x", x, 4)
    _checks.tensor("gamma", gamma)
    _checks.tensor("beta", beta)
    _checks.shape("gamma", gamma, x.shape, "the shape of x")
    _checks.shape("beta", beta, x.shape, "the shape of x")
    _checks.same_device("x", x, gamma=gamma, beta=beta, running_mean=running_mean,
                        running_var=running_var)
    _checks.same_dtype("x", x, gamma=gamma, beta=beta)
    if mode not in MODES:
        raise ValueError(f"mode: expected 'batch' or 'instance', got {mode!r}")
    # NaN passes a plain `eps < 0` test and then turns every output into NaN
    _checks.finite_number("eps", eps)
    _checks.finite_number("momentum", momentum, 0.0, 1.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean, running_var: expected both or neither, got only "
                         + ("running_mean" if running_var is None else "running_var"))
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _checks.tensor(name, t, optional=True)
        _checks.shape(name, t, (C,), "one value per channel of x")
    if mode == "instance" and running_mean is not None:
        raise ValueError("running_mean: mode='instance' uses per-sample statistics; running "
                         "statistics are only supported with mode='batch'")
    if mode == "batch" and not training and running_mean is None:
        raise ValueError("running_mean, running_var: mode='batch' with training=False needs "
                         "running statistics, got None")
    if mode == "batch" and training and x.shape[0] * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"x: batch statistics need more than one value per channel, got shape "
                         f"{tuple(x.shape)}")
    # Same rule for instance statistics, on every backend (torch's instance_norm raises here;
    # the kernels would return beta, the normalisation of a single value being 0)
    if mode == "instance" and x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"x: instance statistics need more than one value per (sample, "
                         f"channel), got shape {tuple(x.shape)} (a 1x1 map)")


def spade_norm(x, gamma, beta, *, mode="batch", eps=1e-5, running_mean=None, running_var=None,
               momentum=0.1, training=True, backend="auto"):
    """out = (x - mean) * rstd * (1 + gamma) + beta (docs/design.md section 3).

    x, gamma, beta: (B,C,H,W). mode 'batch': statistics per channel over (B,H,W); in training
    they come from the batch and update running_mean/running_var in place when given, in
    evaluation (training=False) the running statistics are used. mode 'instance': statistics
    per (b, c) over (H,W). momentum is the factor of F.batch_norm (nn.SPADE passes
    1/num_batches_tracked when its BatchNorm has momentum=None, as torch's BatchNorm does).
    """
    _validate(x, gamma, beta, mode, eps, running_mean, running_var, momentum, training)
    name = backends.resolve(backend, x.device, x.dtype)
    if name == "reference":
        return reference.spade_norm(x, gamma, beta, mode=mode, eps=eps, running_mean=running_mean,
                                    running_var=running_var, momentum=momentum,
                                    training=training)
    B, C, H, W = x.shape
    instance = mode == "instance"
    use_running = mode == "batch" and not training
    mean_in = rstd_in = None
    if use_running:
        acc = _accum_dtype(x.dtype)
        mean_in = running_mean.to(acc).contiguous()
        rstd_in = torch.rsqrt(running_var.to(acc) + eps).contiguous()
    flat = lambda t: t.reshape(B, C, H * W).contiguous()  # noqa: E731
    if name == "triton":
        from .triton import spade as triton_spade
        out, mean, rstd = triton_spade.spade_norm_forward(flat(x), flat(gamma), flat(beta),
                                                          mean_in, rstd_in, instance, float(eps))
    else:
        out, mean, rstd = torch.ops.msca_kernels.spade_norm_fwd(
            flat(x), flat(gamma), flat(beta), mean_in, rstd_in, instance, float(eps))
    if mode == "batch" and training and running_mean is not None:
        _update_running_stats(running_mean, running_var, mean, rstd, eps, momentum, B * H * W)
    return out.view(B, C, H, W)


@torch.no_grad()
def _update_running_stats(running_mean, running_var, mean, rstd, eps, momentum, n):
    var = (rstd.double().pow(-2) - eps).clamp_min(0) * (n / (n - 1))
    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(var.to(running_var.dtype), alpha=momentum)
