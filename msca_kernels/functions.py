"""The fused ops as torch.autograd.Function subclasses, for code that composes autograd Functions.

    out = MSCAFunction.apply(fx2, fc2, fc1, phi_weight, psi_weight, mask)
    y = SPADENormFunction.apply(x, gamma, beta, "batch")

`msca_attention` and `spade_norm` are the usual entry points: they call custom ops whose autograd
is registered with torch.library, which torch.compile and opcheck understand. These classes are
for code written against the classic Function interface (`.apply`, ctx, subclassing): forward
runs the fused forward op of the tensors' backend (cpu, cuda or triton, chosen as `backend=`
says), backward the fused backward op, with the same saved state (the inputs and V, lse; or x,
gamma, mean, rstd). Where no fused kernel runs (backend 'reference', e.g. float16 CPU tensors)
forward computes the reference without a graph and backward recomputes it to differentiate.
Arguments are positional as in `msca_attention` / `spade_norm` (keywords work too).
"""
from __future__ import annotations

import torch

from . import _autograd, backends, msca as _msca, reference, spade as _spade


def _flat(t):
    return None if t is None else t.flatten(2).contiguous()


def _fused_ops(name: str, op: str):
    """(forward, backward) custom ops of `op` ('msca' or 'spade_norm') for backend `name`."""
    if name == "triton":
        from .triton import msca as _tm, spade as _ts  # noqa: F401  (import registers the ops)
        prefix = "triton_"
    else:  # cpu and cuda share the C++ ops; the dispatcher picks the kernel by device
        prefix = ""
    ops = torch.ops.msca_kernels
    return getattr(ops, f"{prefix}{op}_fwd"), getattr(ops, f"{prefix}{op}_bwd")


def _reference_grads(fn, inputs, needs, grad_out):
    """Gradients of fn(*inputs) for the inputs that need them, by recomputing with a graph."""
    leaves = [t.detach().requires_grad_(n) if isinstance(t, torch.Tensor) else t
              for t, n in zip(inputs, needs)]
    wanted = [t for t, n in zip(leaves, needs) if n and isinstance(t, torch.Tensor)]
    with torch.enable_grad():
        out = fn(*leaves)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
    return [next(grads) if n and isinstance(t, torch.Tensor) else None
            for t, n in zip(leaves, needs)]


class MSCAFunction(torch.autograd.Function):
    """Masked spatial-channel attention (docs/design.md section 2) as an autograd Function.

    apply(fx2, fc2, fc1, phi_weight, psi_weight, mask=None, phi_bias=None, psi_bias=None,
          spatial_bias=None, channel_bias=None, backend="auto") -> out (B,N,H1,W1)
    Same arguments, checks and result as msca_attention (without return_attention).
    """

    @staticmethod
    def forward(ctx, fx2, fc2, fc1, phi_weight, psi_weight, mask=None, phi_bias=None,
                psi_bias=None, spatial_bias=None, channel_bias=None, backend="auto"):
        phi2, psi2, K = _msca._validate(fx2, fc2, fc1, phi_weight, psi_weight, mask, phi_bias,
                                        psi_bias, spatial_bias, channel_bias, False)
        name = backends.resolve(backend, fx2.device, fx2.dtype)
        ctx.backend = name
        ctx.shapes = [None if t is None else (t.shape, t.dtype) for t in
                      (fx2, fc2, fc1, phi_weight, psi_weight, mask, phi_bias, psi_bias,
                       spatial_bias, channel_bias)]
        if name == "reference":
            inputs = (fx2, fc2, fc1, phi_weight, psi_weight, mask, phi_bias, psi_bias,
                      spatial_bias, channel_bias)
            ctx.save_for_backward(*[t for t in inputs if t is not None])
            ctx.present = [t is not None for t in inputs]
            return _msca_reference(*inputs)
        dt = fx2.dtype
        cast = (lambda t: None if t is None else t.to(dt).contiguous())  # noqa: E731
        m, pb, qb = _autograd.msca_defaults(fx2, K, cast(mask), cast(phi_bias), cast(psi_bias))
        # the op's order: fx2, fc2, fc1, phi, phi_bias, psi, psi_bias, mask, sb, cb
        args = [_flat(fx2), _flat(fc2), _flat(fc1), cast(phi2), pb.contiguous(), cast(psi2),
                qb.contiguous(), m.contiguous(), _flat(cast(spatial_bias)),
                _flat(cast(channel_bias))]
        fwd, _ = _fused_ops(name, "msca")
        out, V, lse = fwd(*args)
        ctx.has_sb, ctx.has_cb = spatial_bias is not None, channel_bias is not None
        ctx.save_for_backward(*[a for a in args if a is not None], V, lse)
        B, N = fx2.shape[:2]
        return out.view(B, N, *fc1.shape[2:])

    @staticmethod
    def backward(ctx, grad_out):
        needs = list(ctx.needs_input_grad[:10])
        if ctx.backend == "reference":
            saved = iter(ctx.saved_tensors)
            inputs = [next(saved) if p else None for p in ctx.present]
            return (*_reference_grads(_msca_reference, inputs, needs, grad_out), None)
        saved = list(ctx.saved_tensors)
        fx2, fc2, fc1, phi, phi_b, psi, psi_b, mask = saved[:8]
        rest = saved[8:-2]
        V, lse = saved[-2:]
        sb = rest.pop(0) if ctx.has_sb else None
        cb = rest.pop(0) if ctx.has_cb else None
        need_sb, need_cb = bool(ctx.has_sb and needs[8]), bool(ctx.has_cb and needs[9])
        _, bwd = _fused_ops(ctx.backend, "msca")
        g = bwd(_flat(grad_out), fx2, fc2, fc1, phi, phi_b, psi, psi_b, mask, sb, cb, V, lse,
                need_sb, need_cb)
        dfx2, dfc2, dfc1, dphi, dphi_b, dpsi, dpsi_b, dmask, dsb, dcb = g
        # back to the caller's order (fx2, fc2, fc1, phi, psi, mask, phi_b, psi_b, sb, cb),
        # shapes (4-D maps, 1x1 conv weights) and dtypes
        grads = [dfx2, dfc2, dfc1, dphi, dpsi, dmask, dphi_b, dpsi_b,
                 dsb if need_sb else None, dcb if need_cb else None]
        result = []
        for grad, need, meta in zip(grads, needs, ctx.shapes):
            if grad is None or not need or meta is None:
                result.append(None)
            else:
                result.append(grad.reshape(meta[0]).to(meta[1]))
        return (*result, None)


def _msca_reference(fx2, fc2, fc1, phi_weight, psi_weight, mask, phi_bias, psi_bias,
                    spatial_bias, channel_bias):
    dt = fx2.dtype
    cast = (lambda t: None if t is None else t.to(dt))  # noqa: E731
    return reference.msca_attention(
        fx2, fc2, fc1, phi_weight.reshape(phi_weight.shape[0], -1).to(dt),
        psi_weight.reshape(psi_weight.shape[0], -1).to(dt), cast(mask), cast(phi_bias),
        cast(psi_bias), spatial_bias=cast(spatial_bias), channel_bias=cast(channel_bias))


class SPADENormFunction(torch.autograd.Function):
    """SPADE denormalisation (docs/design.md section 3) as an autograd Function.

    apply(x, gamma, beta, mode="batch", eps=1e-5, running_mean=None, running_var=None,
          momentum=0.1, training=True, backend="auto") -> (x - mean) * rstd * (1 + gamma) + beta
    Same arguments, checks, running-statistics update and result as spade_norm.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, mode="batch", eps=1e-5, running_mean=None,
                running_var=None, momentum=0.1, training=True, backend="auto"):
        _spade._validate(x, gamma, beta, mode, eps, running_mean, running_var, momentum,
                         training)
        name = backends.resolve(backend, x.device, x.dtype)
        ctx.backend = name
        if name == "reference":
            ctx.options = dict(mode=mode, eps=eps, running_mean=running_mean,
                               running_var=running_var, momentum=momentum, training=training)
            ctx.save_for_backward(x, gamma, beta)
            return reference.spade_norm(x, gamma, beta, **ctx.options)
        B, C, H, W = x.shape
        instance = mode == "instance"
        mean_in = rstd_in = None
        if mode == "batch" and not training:
            acc = torch.float64 if x.dtype == torch.float64 else torch.float32
            mean_in = running_mean.to(acc).contiguous()
            rstd_in = torch.rsqrt(running_var.to(acc) + eps).contiguous()
        xf = _flat(x)
        gf = _flat(gamma)
        fwd, _ = _fused_ops(name, "spade_norm")
        out, mean, rstd = fwd(xf, gf, _flat(beta), mean_in, rstd_in, instance, float(eps))
        if mode == "batch" and training and running_mean is not None:
            _spade._update_running_stats(running_mean, running_var, mean, rstd, eps, momentum,
                                         B * H * W)
        ctx.instance = instance
        ctx.batch_stats = mean_in is None  # given (running) statistics are constants
        ctx.save_for_backward(xf, gf, mean, rstd)
        return out.view(B, C, H, W)

    @staticmethod
    def backward(ctx, grad_out):
        needs = ctx.needs_input_grad[:3]
        if ctx.backend == "reference":
            x, gamma, beta = ctx.saved_tensors
            options = dict(ctx.options)
            if options["mode"] == "batch" and options["training"]:
                options["running_mean"] = options["running_var"] = None  # updated in forward
            fn = (lambda x_, g_, b_: reference.spade_norm(x_, g_, b_, **options))  # noqa: E731
            grads = _reference_grads(fn, (x, gamma, beta), needs, grad_out)
            return (*grads, *([None] * 7))
        x, gamma, mean, rstd = ctx.saved_tensors
        _, bwd = _fused_ops(ctx.backend, "spade_norm")
        dx, dgamma = bwd(_flat(grad_out), x, gamma, mean, rstd, ctx.instance, ctx.batch_stats)
        shape = grad_out.shape
        return (dx.view(shape) if needs[0] else None, dgamma.view(shape) if needs[1] else None,
                grad_out if needs[2] else None, *([None] * 7))
