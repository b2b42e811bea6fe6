"""SPADE denormalisation in Triton (docs/design.md section 3): kernels, host function, autograd.

x, gamma, beta arrive as (B, C, P) contiguous. A *group* is what one mean and rstd describe:
channel c over (B, P) in batch mode, (b, c) over P in instance mode. Each group is cut into CH
chunks so that every pass has enough programs to fill the GPU whatever B and C are.

Forward:
  _spade_stats_kernel        per chunk, one read of x: sums of x - k and its square around
                             the first block's mean k, so |mean| >> std loses nothing
  _spade_stats_merge_kernel  per group, Chan's merge of the chunk statistics: mean, rstd
  _spade_apply_kernel        out = (x - mean) * rstd * (1 + gamma) + beta
Backward (dbeta = dy, no pass):
  _spade_bwd_reduce_kernel   per chunk, sum g and sum g * xhat with g = dy * (1 + gamma)
  _spade_bwd_apply_kernel    sums the chunk partials of its group (fixed order), then
                             dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), dgamma = dy * xhat
                             (dx = rstd * g when the statistics were given, i.e. evaluation)
Saved for backward: x, gamma, mean, rstd. Accumulation in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _common
from .. import _autograd


@triton.jit
def _group_addr(g, idx, P, CP, INSTANCE: tl.constexpr):
    """Element idx of group g in a (B, C, P) tensor, as a 64-bit offset (x may hold more than
    2^31 elements; idx < n and the division stay 32-bit)."""
    if INSTANCE:
        return g.to(tl.int64) * P + idx
    return g.to(tl.int64) * P + (idx // P).to(tl.int64) * CP + idx % P


@triton.jit
def _chunk_len(n, CH, BLOCK: tl.constexpr):
    """Chunk length: a multiple of BLOCK, CH chunks cover the n values of a group."""
    return tl.cdiv(tl.cdiv(n, CH), BLOCK) * BLOCK


@triton.jit
def _spade_stats_kernel(x_ptr, cnt_ptr, mean_ptr, m2_ptr, n, P, CP, CH,
                        INSTANCE: tl.constexpr, BLOCK: tl.constexpr):
    """Count, mean and sum of squared deviations of one chunk, reading x once.

    Sums S of d = x - k and Q of d^2 around a shift k, the mean of the chunk's first block:
    mean = k + S/c and M2 = Q - S^2/c. d is of the size of the spread, not of x, so |mean| >>
    std loses nothing (x - k is exact in float32 when x and k are within a factor 2), unlike
    E[x^2] - E[x]^2. The subtraction cancels only as far as k is from the mean: M2's relative
    rounding is about eps * (1 + 2 (k - mean)^2 / var), and one block's mean lies at most
    sqrt(L/BLOCK) standard deviations from the chunk's (all the spread in that block), so the
    bound is eps * (1 + 2 L/BLOCK) at worst and eps-sized for ordinary data. Sum and sum of
    squares need no division per value (Welford would)."""
    g = tl.program_id(0).to(tl.int64)  # 64-bit offsets (see _group_addr)
    ch = tl.program_id(1)
    L = _chunk_len(n, CH, BLOCK)
    start = ch * L
    cnt = tl.maximum(tl.minimum(n - start, L), 0)
    idx = start + tl.arange(0, BLOCK)
    ok = idx < n
    x = tl.load(x_ptr + _group_addr(g, idx, P, CP, INSTANCE), mask=ok, other=0.0).to(tl.float32)
    k = tl.sum(x, axis=0) / tl.maximum(tl.minimum(cnt, BLOCK), 1).to(tl.float32)
    d = tl.where(ok, x - k, 0.0)
    s = d
    q = d * d
    for i in range(BLOCK, L, BLOCK):
        idx = start + i + tl.arange(0, BLOCK)
        ok = idx < n
        x = tl.load(x_ptr + _group_addr(g, idx, P, CP, INSTANCE), mask=ok, other=0.0).to(
            tl.float32)
        d = tl.where(ok, x - k, 0.0)
        s += d
        q += d * d
    c = tl.maximum(cnt, 1).to(tl.float32)
    s_sum = tl.sum(s, axis=0)
    part = g * CH + ch
    tl.store(cnt_ptr + part, cnt.to(tl.float32))
    tl.store(mean_ptr + part, k + s_sum / c)
    tl.store(m2_ptr + part, tl.maximum(tl.sum(q, axis=0) - s_sum * (s_sum / c), 0.0))


@triton.jit
def _spade_stats_merge_kernel(cnt_ptr, cmean_ptr, m2_ptr, mean_ptr, rstd_ptr, CH, eps,
                              BLOCK_CH: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)  # 64-bit offsets (see _group_addr)
    offs = tl.arange(0, BLOCK_CH)
    ok = offs < CH
    cnt = tl.load(cnt_ptr + g * CH + offs, mask=ok, other=0.0)
    cm = tl.load(cmean_ptr + g * CH + offs, mask=ok, other=0.0)
    m2 = tl.load(m2_ptr + g * CH + offs, mask=ok, other=0.0)
    n = tl.sum(cnt, axis=0)
    mean = tl.sum(cnt * cm, axis=0) / n
    d = cm - mean
    var = tl.sum(m2 + cnt * d * d, axis=0) / n
    tl.store(mean_ptr + g, mean)
    tl.store(rstd_ptr + g, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _spade_apply_kernel(x_ptr, gamma_ptr, beta_ptr, mean_ptr, rstd_ptr, out_ptr, n, P, CP, CH,
                        INSTANCE: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)  # 64-bit offsets (see _group_addr)
    ch = tl.program_id(1)
    L = _chunk_len(n, CH, BLOCK)
    start = ch * L
    mean = tl.load(mean_ptr + g)
    rstd = tl.load(rstd_ptr + g)
    for i in range(0, L, BLOCK):
        idx = start + i + tl.arange(0, BLOCK)
        ok = idx < n
        addr = _group_addr(g, idx, P, CP, INSTANCE)
        x = tl.load(x_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        gm = tl.load(gamma_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        bt = tl.load(beta_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * (1.0 + gm) + bt
        tl.store(out_ptr + addr, y.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _spade_bwd_reduce_kernel(dy_ptr, x_ptr, gamma_ptr, mean_ptr, rstd_ptr, sg_ptr, sgx_ptr,
                             n, P, CP, CH, INSTANCE: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)  # 64-bit offsets (see _group_addr)
    ch = tl.program_id(1)
    L = _chunk_len(n, CH, BLOCK)
    start = ch * L
    mean = tl.load(mean_ptr + g)
    rstd = tl.load(rstd_ptr + g)
    sg = tl.zeros([BLOCK], tl.float32)
    sgx = tl.zeros([BLOCK], tl.float32)
    for i in range(0, L, BLOCK):
        idx = start + i + tl.arange(0, BLOCK)
        ok = idx < n
        addr = _group_addr(g, idx, P, CP, INSTANCE)
        dy = tl.load(dy_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        gm = tl.load(gamma_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        gg = dy * (1.0 + gm)
        sg += gg
        sgx += tl.where(ok, gg * (x - mean) * rstd, 0.0)
    tl.store(sg_ptr + g * CH + ch, tl.sum(sg, axis=0))
    tl.store(sgx_ptr + g * CH + ch, tl.sum(sgx, axis=0))


@triton.jit
def _spade_bwd_apply_kernel(dy_ptr, x_ptr, gamma_ptr, mean_ptr, rstd_ptr, sg_ptr, sgx_ptr,
                            dx_ptr, dgamma_ptr, n, P, CP, CH, CH_RED,
                            INSTANCE: tl.constexpr, BATCH_STATS: tl.constexpr,
                            BLOCK: tl.constexpr, BLOCK_CH: tl.constexpr):
    g = tl.program_id(0).to(tl.int64)  # 64-bit offsets (see _group_addr)
    ch = tl.program_id(1)
    L = _chunk_len(n, CH, BLOCK)
    start = ch * L
    mean = tl.load(mean_ptr + g)
    rstd = tl.load(rstd_ptr + g)
    mg = 0.0
    mgx = 0.0
    if BATCH_STATS:
        offs = tl.arange(0, BLOCK_CH)
        ok_ch = offs < CH_RED
        inv_n = 1.0 / n  # n is an int argument (a constexpr when 1)
        mg = tl.sum(tl.load(sg_ptr + g * CH_RED + offs, mask=ok_ch, other=0.0), axis=0) * inv_n
        mgx = tl.sum(tl.load(sgx_ptr + g * CH_RED + offs, mask=ok_ch, other=0.0), axis=0) * inv_n
    for i in range(0, L, BLOCK):
        idx = start + i + tl.arange(0, BLOCK)
        ok = idx < n
        addr = _group_addr(g, idx, P, CP, INSTANCE)
        dy = tl.load(dy_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        gm = tl.load(gamma_ptr + addr, mask=ok, other=0.0).to(tl.float32)
        xhat = (x - mean) * rstd
        gg = dy * (1.0 + gm)
        if BATCH_STATS:
            dx = rstd * (gg - mg - xhat * mgx)
        else:
            dx = rstd * gg
        tl.store(dx_ptr + addr, dx.to(dx_ptr.dtype.element_ty), mask=ok)
        tl.store(dgamma_ptr + addr, (dy * xhat).to(dgamma_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------------------------
# launch configurations

_GPU = _common.configs([dict(BLOCK=1024), dict(BLOCK=2048), dict(BLOCK=4096)])
_INTERP = dict(BLOCK=128, num_warps=4)
_KEY = ["n", "P", "CH"]
_stats_kernel, _stats_meta = _common.tuned(_spade_stats_kernel, _GPU, _KEY, _INTERP)
_apply_kernel, _apply_meta = _common.tuned(_spade_apply_kernel, _GPU, _KEY, _INTERP)
_reduce_kernel, _reduce_meta = _common.tuned(_spade_bwd_reduce_kernel, _GPU, _KEY, _INTERP)
_bwd_apply_kernel, _bwd_apply_meta = _common.tuned(_spade_bwd_apply_kernel, _GPU, _KEY, _INTERP)

# Chunks are at least this long, so a chunk is never a sliver of a block.
_MIN_CHUNK = 4096 if not _common.INTERPRET else 128


def _groups(x: torch.Tensor, instance: bool) -> tuple[int, int, int, int, int]:
    """(G groups, n values per group, P, C*P, CH chunks per group)."""
    B, C, P = x.shape
    G, n = (B * C, P) if instance else (C, B * P)
    max_ch = max(1, triton.cdiv(n, _MIN_CHUNK))
    if x.device.type == "cuda":
        # about four programs per SM in all, with at most 256 partials per group
        want = triton.cdiv(4 * _common.num_programs(x.device, 1 << 30, per_sm=1), G)
        CH = max(1, min(max_ch, want, 256))
    else:
        CH = max(1, min(max_ch, 3))
    return G, n, P, C * P, CH


@_common.register_op("msca_kernels::triton_spade_norm_fwd")
def triton_spade_norm_fwd(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                          mean: Optional[torch.Tensor], rstd: Optional[torch.Tensor],
                          instance: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """x, gamma, beta (B,C,P) contiguous; mean/rstd (C,) float32 to use given statistics (batch
    mode, evaluation) or None to compute them. Returns out and the float32 mean and rstd, of
    shape (B,C) in instance mode and (C,) in batch mode."""
    B, C, P = x.shape
    G, n, P, CP, CH = _groups(x, instance)
    f32 = dict(device=x.device, dtype=torch.float32)
    shp = (B, C) if instance else (C,)
    if mean is None or rstd is None:
        cnt_p = torch.empty((G, CH), **f32)
        mean_p = torch.empty((G, CH), **f32)
        m2_p = torch.empty((G, CH), **f32)
        _common.launch(_stats_kernel, (G, CH), x, cnt_p, mean_p, m2_p, n, P, CP, CH,
                                            INSTANCE=instance, **_stats_meta)
        mean_out = torch.empty(shp, **f32)
        rstd_out = torch.empty(shp, **f32)
        _common.launch(_spade_stats_merge_kernel, (G,), 
            cnt_p, mean_p, m2_p, mean_out, rstd_out, CH, eps, BLOCK_CH=_common.block(CH, 2))
    else:
        mean_out = mean.to(torch.float32).clone()
        rstd_out = rstd.to(torch.float32).clone()
    out = torch.empty_like(x)
    _common.launch(_apply_kernel, (G, CH), x, gamma, beta, mean_out, rstd_out, out, n, P, CP, CH,
                                        INSTANCE=instance, **_apply_meta)
    return out, mean_out, rstd_out


@_common.register_op("msca_kernels::triton_spade_norm_bwd")
def triton_spade_norm_bwd(grad_out: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor,
                          mean: torch.Tensor, rstd: torch.Tensor, instance: bool,
                          batch_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """dx and dgamma (dbeta is grad_out). batch_stats: the statistics came from x (their
    gradient flows into dx) rather than from running estimates."""
    G, n, P, CP, CH = _groups(x, instance)
    f32 = dict(device=x.device, dtype=torch.float32)
    sg = torch.zeros((G, CH), **f32)
    sgx = torch.zeros((G, CH), **f32)
    if batch_stats:
        _common.launch(_reduce_kernel, (G, CH), grad_out, x, gamma, mean, rstd, sg, sgx, n, P, CP,
                                             CH, INSTANCE=instance, **_reduce_meta)
    dx = torch.empty_like(x)
    dgamma = torch.empty_like(x)
    _common.launch(_bwd_apply_kernel, (G, CH), 
        grad_out, x, gamma, mean, rstd, sg, sgx, dx, dgamma, n, P, CP, CH, CH,
        INSTANCE=instance, BATCH_STATS=batch_stats, BLOCK_CH=_common.block(CH, 2),
        **_bwd_apply_meta)
    return dx, dgamma


_autograd.register("msca_kernels::triton_spade_norm_fwd",
                   _autograd.spade_autograd("triton_spade_norm_bwd"))


def spade_norm_forward(x, gamma, beta, mean_in, rstd_in, instance, eps):
    """(out, mean, rstd) for (B,C,P) contiguous x, gamma, beta; differentiable through out.
    Called by msca_kernels.spade_norm after validation (same contract as the C++ op)."""
    return torch.ops.msca_kernels.triton_spade_norm_fwd(x, gamma, beta, mean_in, rstd_in,
                                                        bool(instance), float(eps))


# Under the interpreter, read every kernel's source now (see _common.read_kernel_sources_now).
_common.read_kernel_sources_now(globals())
