"""MSCA attention in Triton (docs/design.md section 2): kernels, host functions, autograd.

Forward, two passes plus a tiny merge:
  _msca_fwd_kernel       split reduction over exemplar tiles. Each program streams a share of
                         the exemplar tiles, computes the logits a = phi . [fx2; fc2] (+ biases)
                         on the fly and keeps an online softmax: running max m, running sum l and
                         V = sum_j fx2[:, j] exp(a[:, j] - m), rescaled whenever m grows. It writes
                         one partial (V, m, l) per program.
  _msca_merge_kernel     merges the partials as log-sum-exp: V (N x K), lse (K), in parallel over
                         (chunks of the N x K entries, batch items), the partials read as tiles.
  _msca_out_kernel       target tiles: b = psi . fc1 (+ biases), its K-way softmax beta, and
                         out = (V * mask) beta.
Backward, two passes:
  _msca_bwd_target_kernel    target tiles: recomputes beta; writes dfc1 (and dchannel_bias);
                             partial sums of dVm, dpsi, dpsi_bias per program.
  _msca_bwd_exemplar_kernel  exemplar tiles: recomputes alpha = exp(a - lse); writes dfx2, dfc2
                             (and dspatial_bias); partial sums of dphi, dphi_bias per program.
Partial sums are reduced on the host in a fixed order (torch sums over the program axis), so the
weight gradients are deterministic: no atomics anywhere.

Nothing of size K x P or (N+M2) x P is ever written; forward saves the inputs, V and lse.
Accumulation is float32 for float32, float16 and bfloat16 inputs. Channel dimensions (N, M1,
M2) and K are held whole in one tile each (padded to a power of two >= 16), which suits the
model's sizes (tens to a few hundred channels).

The two ops are torch.library.triton_op's (msca_kernels::triton_msca_fwd/_bwd) launching their
kernels through wrap_triton, so torch.compile traces into them; the forward op's autograd formula
is registered with register_autograd, as the C++ path does (MSCAFunction holds it).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import _common
from .. import _autograd
from ._common import block, size_bucket

# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _tile(rows, r_ok, offs_p, P, s_p):
    """A (rows, positions) tile: rows[:, None] + offs_p * s_p, zero outside the map."""
    # int64 positions: offs_p * s_p passes 2^31 in a channels_last map of > 2^31 elements
    return tl.load(rows + offs_p[None, :].to(tl.int64) * s_p,
                   mask=r_ok[:, None] & (offs_p < P)[None, :], other=0.0)


@triton.jit
def _exemplar_logits(phi_x, phi_c, x, c, phi_b, sb_ptr, offs_k, offs_p, k_ok, p_ok, s_sbk,
                     s_sbp, HAS_SB: tl.constexpr, DOT_PREC: tl.constexpr):
    """a = phi_x x + phi_c c + phi_bias (+ spatial_bias), -inf outside the valid (k, j)."""
    a = tl.dot(phi_x, x, input_precision=DOT_PREC) + tl.dot(phi_c, c, input_precision=DOT_PREC)
    a += phi_b[:, None]
    valid = k_ok[:, None] & p_ok[None, :]
    if HAS_SB:
        sb = tl.load(sb_ptr + offs_k[:, None] * s_sbk + offs_p[None, :].to(tl.int64) * s_sbp,
                     mask=valid, other=0.0)
        a += sb.to(tl.float32)
    return tl.where(valid, a, float("-inf"))


@triton.jit
def _exact_where_nan(w, f, d):
    """d = w @ f from a tf32x3 dot, redone with exact (IEEE) products if any of it is NaN.

    tf32x3 splits each float32 operand into a TF32 part and the remainder x - hi; for x = +-inf
    the remainder is inf - inf = NaN (on the GPU as in the interpreter's emulation), and that
    NaN reaches every product of the operand's row or column: one infinite channel weight made
    every target position NaN, where exact products give +-inf logits (a position that then
    attends to nothing, or NaN only where the reference has NaN). Finite operands never give
    NaN, so the exact dot runs only for tiles that hold non-finite values (a real NaN input
    stays NaN either way); the check is one reduction per tile."""
    if tl.sum((d != d).to(tl.int32)) > 0:
        d = tl.dot(w, f, input_precision="ieee")
    return d


@triton.jit
def _target_softmax(psi, f, psi_b, cb_ptr, offs_k, offs_t, k_ok, t_ok, s_cbk, s_cbt,
                    HAS_CB: tl.constexpr, DOT_PREC: tl.constexpr):
    """beta = softmax over k of psi f + psi_bias (+ channel_bias); zero columns for t outside
    the map and for a position whose logits are all -inf (it attends to nothing)."""
    b = tl.dot(psi, f, input_precision=DOT_PREC)
    if psi.dtype == tl.float32 and DOT_PREC == "tf32x3":
        b = _exact_where_nan(psi, f, b)
    b += psi_b[:, None]
    if HAS_CB:
        cb = tl.load(cb_ptr + offs_k[:, None] * s_cbk + offs_t[None, :].to(tl.int64) * s_cbt,
                     mask=k_ok[:, None] & t_ok[None, :], other=0.0)
        b += cb.to(tl.float32)
    b = tl.where(k_ok[:, None], b, float("-inf"))
    mx = tl.max(b, axis=0)
    mx = tl.where(mx == float("-inf"), 0.0, mx)  # all -inf: exp gives zeros, not NaN
    e = tl.exp(b - mx[None, :])
    s = tl.sum(e, axis=0)
    beta = e / tl.where(s > 0, s, 1.0)[None, :]
    return tl.where(t_ok[None, :], beta, 0.0)


@triton.jit
def _msca_fwd_kernel(fx2_ptr, fc2_ptr, phi_ptr, phib_ptr, sb_ptr, vp_ptr, mp_ptr, lp_ptr,
                     N, M2, K, P2, S, P_BUCKET,
                     s_xb, s_xc, s_xp, s_cb, s_cc, s_cp, s_sbb, s_sbk, s_sbp,
                     HAS_SB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, DOT_PREC: tl.constexpr,
                     V_PREC: tl.constexpr, PREFETCH_X: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)  # 64-bit offsets, see _I64
    pid = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    n_ok, m_ok, k_ok = offs_n < N, offs_m < M2, offs_k < K
    C = N + M2
    dt = fx2_ptr.dtype.element_ty
    # phi = [phi_x | phi_c], loaded once per program in the input dtype (tensor-core operands).
    phi_x = tl.load(phi_ptr + offs_k[:, None] * C + offs_n[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    phi_c = tl.load(phi_ptr + offs_k[:, None] * C + N + offs_m[None, :],
                    mask=k_ok[:, None] & m_ok[None, :], other=0.0)
    phi_b = tl.load(phib_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)

    m_i = tl.full([BLOCK_K], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_K], tl.float32)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    n_tiles = tl.cdiv(P2, BLOCK_P)
    x_rows = fx2_ptr + b * s_xb + offs_n[:, None] * s_xc
    if PREFETCH_X:
        x_next = _tile(x_rows, n_ok, pid * BLOCK_P + tl.arange(0, BLOCK_P), P2, s_xp)
    # Tiles are dealt round-robin (tile = pid + it * S): the last, partly empty round costs
    # every program the same.
    for it in range(0, tl.cdiv(n_tiles, S)):
        offs_p = (pid + it * S) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = offs_p < P2
        # x feeds two dots as different operands (the logits' B, V's A). For 16-bit inputs
        # both are tensor-core dots and triton's pipeliner streams x into shared memory ahead of
        # use (cp.async, like fc2). For float32 the V dot runs on FMA units (exact products,
        # _v_precision), whose operand layout differs from the tensor-core one, and the
        # pipeliner leaves such a load synchronous (seen in the TTGIR for sm_80/sm_90): there the
        # kernel prefetches the next tile into registers itself, one iteration ahead, so its
        # latency hides behind this tile's math. Both: one load of x per tile.
        if PREFETCH_X:
            x = x_next
            offs_q = offs_p + S * BLOCK_P  # the next tile; past the end: masked, no traffic
            x_next = _tile(x_rows, n_ok, offs_q, P2, s_xp)
        else:
            x = _tile(x_rows, n_ok, offs_p, P2, s_xp)
        c = tl.load(fc2_ptr + b * s_cb + offs_m[:, None] * s_cc
                    + offs_p[None, :].to(tl.int64) * s_cp,
                    mask=m_ok[:, None] & p_ok[None, :], other=0.0)
        a = _exemplar_logits(phi_x, phi_c, x, c, phi_b, sb_ptr + b * s_sbb, offs_k, offs_p, k_ok,
                             p_ok, s_sbk, s_sbp, HAS_SB, DOT_PREC)
        m_new = tl.maximum(m_i, tl.max(a, axis=1))
        # A row with only -inf so far has no finite shift; 0 makes its exps exact zeros.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        scale = tl.exp(m_i - m_safe)
        p = tl.exp(a - m_safe[:, None])
        l_i = l_i * scale + tl.sum(p, axis=1)
        # V_PREC: exact products for float32 (see _v_precision).
        acc = acc * scale[None, :] + tl.dot(x, tl.trans(p).to(dt), input_precision=V_PREC)
        m_i = m_new

    part = b * S + pid
    tl.store(vp_ptr + part * BLOCK_N * BLOCK_K + offs_n[:, None] * BLOCK_K + offs_k[None, :], acc)
    tl.store(mp_ptr + part * BLOCK_K + offs_k, m_i)
    tl.store(lp_ptr + part * BLOCK_K + offs_k, l_i)


@triton.jit
def _msca_merge_kernel(vp_ptr, mp_ptr, lp_ptr, v_ptr, lse_ptr, N, K, S,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    """Log-sum-exp merge of the S partials of one batch item, for BLOCK_C of its BLOCK_N x
    BLOCK_K entries (flat index n * BLOCK_K + k; BLOCK_C divides BLOCK_N * BLOCK_K).

    The grid spreads a batch item's entries over many programs, and each program reads the
    partials as (BLOCK_S, BLOCK_C) tiles, BLOCK_S of them per load: a serial walk over S (~264
    partials on a 132-SM GPU, one dependent load after another) was latency alone. Two passes
    over s: the maxima first, then the rescaled sums; the order of the sums is fixed, so the
    result is deterministic."""
    b = tl.program_id(1).to(tl.int64)  # 64-bit offsets, see _I64
    # Within one batch item's partials 32-bit offsets suffice (S x BLOCK_N x BLOCK_K is small);
    # each tile's pointers are formed once and moved by s0 (fewer live 64-bit values: the
    # int64 index form spilled on sm_90).
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_n, offs_k = offs_c // BLOCK_K, offs_c % BLOCK_K
    rows = tl.arange(0, BLOCK_S)
    m_tile = mp_ptr + b * S * BLOCK_K + rows[:, None] * BLOCK_K + offs_k[None, :]
    l_tile = lp_ptr + b * S * BLOCK_K + rows[:, None] * BLOCK_K + offs_k[None, :]
    v_tile = (vp_ptr + b * S * (BLOCK_N * BLOCK_K) + rows[:, None] * (BLOCK_N * BLOCK_K)
              + offs_c[None, :])
    mx = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s_ok = (s0 + rows < S)[:, None]
        m = tl.load(m_tile + s0 * BLOCK_K, mask=s_ok, other=float("-inf"))
        mx = tl.maximum(mx, tl.max(m, axis=0))
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    total = tl.zeros([BLOCK_C], tl.float32)
    acc = tl.zeros([BLOCK_C], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s_ok = (s0 + rows < S)[:, None]
        m = tl.load(m_tile + s0 * BLOCK_K, mask=s_ok, other=float("-inf"))
        l = tl.load(l_tile + s0 * BLOCK_K, mask=s_ok, other=0.0)
        vp = tl.load(v_tile + s0 * (BLOCK_N * BLOCK_K), mask=s_ok, other=0.0)
        w = tl.exp(m - mx_safe[None, :])  # 0 for the padding rows (m = -inf)
        total += tl.sum(w * l, axis=0)
        acc += tl.sum(w * vp, axis=0)
    # A row whose logits are all -inf attends to nothing: V = 0, lse = -inf (alpha = 0 later).
    v = acc / tl.where(total > 0, total, 1.0)
    lse = tl.where(total > 0, mx_safe + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    tl.store(v_ptr + b * N * K + offs_n * K + offs_k, v, mask=(offs_n < N) & (offs_k < K))
    # lse once per k: from the entries of row n = 0
    tl.store(lse_ptr + b * K + offs_k, lse, mask=(offs_n == 0) & (offs_k < K))


@triton.jit
def _msca_out_kernel(fc1_ptr, psi_ptr, psib_ptr, cb_ptr, v_ptr, mask_ptr, out_ptr,
                     N, M1, K, P1, P_BUCKET,
                     s_fb, s_fc, s_fp, s_cbb, s_cbk, s_cbt,
                     HAS_CB: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr, DOT_PREC: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)  # 64-bit offsets, see _I64
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    n_ok, m_ok, k_ok, t_ok = offs_n < N, offs_m < M1, offs_k < K, offs_t < P1
    psi = tl.load(psi_ptr + offs_k[:, None] * M1 + offs_m[None, :],
                  mask=k_ok[:, None] & m_ok[None, :], other=0.0)
    psi_b = tl.load(psib_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    f = tl.load(fc1_ptr + b * s_fb + offs_m[:, None] * s_fc + offs_t[None, :].to(tl.int64) * s_fp,
                mask=m_ok[:, None] & t_ok[None, :], other=0.0)
    beta = _target_softmax(psi, f, psi_b, cb_ptr + b * s_cbb, offs_k, offs_t, k_ok, t_ok, s_cbk,
                           s_cbt, HAS_CB, DOT_PREC)
    v = tl.load(v_ptr + b * N * K + offs_n[:, None] * K + offs_k[None, :],
                mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    gate = tl.load(mask_ptr + b * K + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    out = tl.dot(v * gate[None, :], beta, input_precision=DOT_PREC)
    tl.store(out_ptr + b * N * P1 + offs_n[:, None] * P1 + offs_t[None, :],
             out.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & t_ok[None, :])


@triton.jit
def _msca_bwd_target_kernel(do_ptr, fc1_ptr, psi_ptr, psib_ptr, cb_ptr, v_ptr, mask_ptr,
                            dfc1_ptr, dcb_ptr, dvm_p_ptr, dpsi_p_ptr, dpsib_p_ptr,
                            N, M1, K, P1, S, P_BUCKET,
                            s_fb, s_fc, s_fp, s_cbb, s_cbk, s_cbt,
                            HAS_CB: tl.constexpr, NEED_DCB: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                            BLOCK_T: tl.constexpr, DOT_PREC: tl.constexpr,
                            ROLE: tl.constexpr = 0, PREFETCH: tl.constexpr = True):
    # ROLE (see backward_roles): 0 computes everything below; 1 all but dVm (dfc1, dchannel_bias,
    # dpsi, dpsi_bias); 2 only dVm. PREFETCH: the hand prefetch of the next tiles.
    b = tl.program_id(1).to(tl.int64)  # 64-bit offsets, see _I64
    pid = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    n_ok, m_ok, k_ok = offs_n < N, offs_m < M1, offs_k < K
    dt = fc1_ptr.dtype.element_ty
    psi = tl.load(psi_ptr + offs_k[:, None] * M1 + offs_m[None, :],
                  mask=k_ok[:, None] & m_ok[None, :], other=0.0)
    psi_t32 = tl.trans(psi.to(tl.float32))
    psi_b = tl.load(psib_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + b * N * K + offs_n[:, None] * K + offs_k[None, :],
                mask=n_ok[:, None] & k_ok[None, :], other=0.0)
    gate = tl.load(mask_ptr + b * K + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    vm_t = tl.trans(v * gate[None, :])  # (K, N)

    acc_dvm = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_dpsi = tl.zeros([BLOCK_K, BLOCK_M], tl.float32)
    acc_dpsib = tl.zeros([BLOCK_K], tl.float32)
    n_tiles = tl.cdiv(P1, BLOCK_T)
    f_rows = fc1_ptr + b * s_fb + offs_m[:, None] * s_fc
    do_rows = do_ptr + b * N * P1 + offs_n[:, None] * P1
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    if PREFETCH:
        f_next = _tile(f_rows, m_ok, offs_t, P1, s_fp)
        do_next = _tile(do_rows, n_ok, offs_t, P1, 1)
    for it in range(0, tl.cdiv(n_tiles, S)):
        offs_t = (pid + it * S) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = offs_t < P1
        # Software pipelining by hand: this tile's f and dout were loaded one iteration ahead,
        # and the next tile's loads are issued before this tile's math, which hides their
        # latency. Triton's pipeliner cannot stream them into shared memory itself: each feeds
        # dots as different operands (f: the logits' B and dpsi's transposed B; dout: dbeta's B
        # and dVm's A). Past the last tile the loads are masked (no traffic).
        if PREFETCH:
            f, do = f_next, do_next
            offs_q = offs_t + S * BLOCK_T
            f_next = _tile(f_rows, m_ok, offs_q, P1, s_fp)
            do_next = _tile(do_rows, n_ok, offs_q, P1, 1)
        else:
            f = _tile(f_rows, m_ok, offs_t, P1, s_fp)
            do = _tile(do_rows, n_ok, offs_t, P1, 1)
        beta = _target_softmax(psi, f, psi_b, cb_ptr + b * s_cbb, offs_k, offs_t, k_ok, t_ok,
                               s_cbk, s_cbt, HAS_CB, DOT_PREC)
        if ROLE != 2:
            dbeta = tl.dot(vm_t, do.to(tl.float32), input_precision=DOT_PREC)  # (K, T)
            db = beta * (dbeta - tl.sum(beta * dbeta, axis=0)[None, :])
            dfc1 = tl.dot(psi_t32, db, input_precision=DOT_PREC)  # (M1, T)
            tl.store(dfc1_ptr + b * M1 * P1 + offs_m[:, None] * P1 + offs_t[None, :],
                     dfc1.to(dt), mask=m_ok[:, None] & t_ok[None, :])
            if NEED_DCB:
                tl.store(dcb_ptr + b * K * P1 + offs_k[:, None] * P1 + offs_t[None, :],
                         db.to(dt), mask=k_ok[:, None] & t_ok[None, :])
            acc_dpsi += tl.dot(db, tl.trans(f.to(tl.float32)), input_precision=DOT_PREC)
            acc_dpsib += tl.sum(db, axis=1)
        if ROLE != 1:
            acc_dvm += tl.dot(do, tl.trans(beta).to(dt), input_precision=DOT_PREC)

    part = b * S + pid
    if ROLE != 1:
        tl.store(dvm_p_ptr + part * BLOCK_N * BLOCK_K + offs_n[:, None] * BLOCK_K
                 + offs_k[None, :], acc_dvm)
    if ROLE != 2:
        tl.store(dpsi_p_ptr + part * BLOCK_K * BLOCK_M + offs_k[:, None] * BLOCK_M
                 + offs_m[None, :], acc_dpsi)
        tl.store(dpsib_p_ptr + part * BLOCK_K + offs_k, acc_dpsib)


@triton.jit
def _msca_bwd_exemplar_kernel(fx2_ptr, fc2_ptr, phi_ptr, phib_ptr, sb_ptr, lse_ptr, dv_ptr,
                              c_ptr, dfx2_ptr, dfc2_ptr, dsb_ptr, dphi_p_ptr, dphib_p_ptr,
                              N, M2, K, P2, S, P_BUCKET,
                              s_xb, s_xc, s_xp, s_cb, s_cc, s_cp, s_sbb, s_sbk, s_sbp,
                              HAS_SB: tl.constexpr, NEED_DSB: tl.constexpr,
                              DALPHA_F64: tl.constexpr, BLOCK_N: tl.constexpr,
                              BLOCK_M: tl.constexpr,
                              BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
                              DOT_PREC: tl.constexpr, ROLE: tl.constexpr = 0,
                              PREFETCH: tl.constexpr = True):
    # ROLE (see backward_roles): 0 computes everything below; 1 the per-position gradients
    # (dfx2, dfc2, dspatial_bias); 2 the weight gradients (dphi, dphi_bias). PREFETCH: the
    # hand prefetch of the next tiles.
    b = tl.program_id(1).to(tl.int64)  # 64-bit offsets, see _I64
    pid = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    n_ok, m_ok, k_ok = offs_n < N, offs_m < M2, offs_k < K
    C = N + M2
    dt = fx2_ptr.dtype.element_ty
    phi_x = tl.load(phi_ptr + offs_k[:, None] * C + offs_n[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    phi_c = tl.load(phi_ptr + offs_k[:, None] * C + N + offs_m[None, :],
                    mask=k_ok[:, None] & m_ok[None, :], other=0.0)
    phi_xt = tl.trans(phi_x.to(tl.float32))  # (N, K)
    phi_ct = tl.trans(phi_c.to(tl.float32))  # (M2, K)
    phi_b = tl.load(phib_ptr + offs_k, mask=k_ok, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + b * K + offs_k, mask=k_ok, other=float("-inf"))
    row_ok = lse > float("-inf")  # rows that attend to something
    lse = tl.where(row_ok, lse, 0.0)
    dv = tl.load(dv_ptr + b * N * K + offs_n[:, None] * K + offs_k[None, :],
                 mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # dV = dVm * mask, (N, K)
    dv_t = tl.trans(dv)
    cc = tl.load(c_ptr + b * K + offs_k, mask=k_ok, other=0.0)

    acc_dphix = tl.zeros([BLOCK_K, BLOCK_N], tl.float32)
    acc_dphic = tl.zeros([BLOCK_K, BLOCK_M], tl.float32)
    acc_dphib = tl.zeros([BLOCK_K], tl.float32)
    n_tiles = tl.cdiv(P2, BLOCK_P)
    x_rows = fx2_ptr + b * s_xb + offs_n[:, None] * s_xc
    c_rows = fc2_ptr + b * s_cb + offs_m[:, None] * s_cc
    offs_p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    if PREFETCH:
        x_next = _tile(x_rows, n_ok, offs_p, P2, s_xp)
        c_next = _tile(c_rows, m_ok, offs_p, P2, s_cp)
    for it in range(0, tl.cdiv(n_tiles, S)):
        offs_p = (pid + it * S) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = offs_p < P2
        # Prefetch by hand, as in the target pass: x and fc2 each feed dots as different
        # operands (the logits, dalpha, dphi), so the pipeliner leaves their loads synchronous.
        if PREFETCH:
            x, c = x_next, c_next
            offs_q = offs_p + S * BLOCK_P
            x_next = _tile(x_rows, n_ok, offs_q, P2, s_xp)
            c_next = _tile(c_rows, m_ok, offs_q, P2, s_cp)
        else:
            x = _tile(x_rows, n_ok, offs_p, P2, s_xp)
            c = _tile(c_rows, m_ok, offs_p, P2, s_cp)
        a = _exemplar_logits(phi_x, phi_c, x, c, phi_b, sb_ptr + b * s_sbb, offs_k, offs_p, k_ok,
                             p_ok, s_sbk, s_sbp, HAS_SB, DOT_PREC)
        alpha = tl.where(row_ok[:, None], tl.exp(a - lse[:, None]), 0.0)  # (K, P)
        x32 = x.to(tl.float32)
        c32 = c.to(tl.float32)
        if DALPHA_F64:
            # At a peaked softmax (alpha one-hot) dalpha[k, j*] and c[k] are the same sum up to
            # rounding and da is their difference, later multiplied by phi (large when the
            # logits are). In float64 the products of float32 values are exact and the
            # difference keeps its digits.
            dalpha64 = tl.dot(dv_t.to(tl.float64), x.to(tl.float64))
            da = (alpha.to(tl.float64) * (dalpha64 - cc[:, None])).to(tl.float32)
        else:
            dalpha = tl.dot(dv_t, x32, input_precision=DOT_PREC)
            da = alpha * (dalpha - cc[:, None])
        if ROLE != 2:
            dfx2 = (tl.dot(dv, alpha, input_precision=DOT_PREC)
                    + tl.dot(phi_xt, da, input_precision=DOT_PREC))
            dfc2 = tl.dot(phi_ct, da, input_precision=DOT_PREC)
            tl.store(dfx2_ptr + b * N * P2 + offs_n[:, None] * P2 + offs_p[None, :],
                     dfx2.to(dt), mask=n_ok[:, None] & p_ok[None, :])
            tl.store(dfc2_ptr + b * M2 * P2 + offs_m[:, None] * P2 + offs_p[None, :],
                     dfc2.to(dt), mask=m_ok[:, None] & p_ok[None, :])
            if NEED_DSB:
                tl.store(dsb_ptr + b * K * P2 + offs_k[:, None] * P2 + offs_p[None, :],
                         da.to(dt), mask=k_ok[:, None] & p_ok[None, :])
        if ROLE != 1:
            acc_dphix += tl.dot(da, tl.trans(x32), input_precision=DOT_PREC)
            acc_dphic += tl.dot(da, tl.trans(c32), input_precision=DOT_PREC)
            acc_dphib += tl.sum(da, axis=1)

    if ROLE != 1:
        part = b * S + pid
        CB = BLOCK_N + BLOCK_M
        tl.store(dphi_p_ptr + part * BLOCK_K * CB + offs_k[:, None] * CB + offs_n[None, :],
                 acc_dphix)
        tl.store(dphi_p_ptr + part * BLOCK_K * CB + offs_k[:, None] * CB + BLOCK_N
                 + offs_m[None, :], acc_dphic)
        tl.store(dphib_p_ptr + part * BLOCK_K + offs_k, acc_dphib)


# ---------------------------------------------------------------------------------------------
# launch configurations

# Each program holds whole N, M and K blocks in registers next to its tile of positions, so
# the tile is kept short: `make triton-check` (ptxas on sm_80/sm_90) shows spills from 64
# positions up at N = M = 64 in float32 and none at 16; the autotuner picks among these.
_P_OPTIONS = [dict(BLOCK_P=16), dict(BLOCK_P=32), dict(BLOCK_P=64), dict(BLOCK_P=128)]
_T_OPTIONS = [dict(BLOCK_T=16), dict(BLOCK_T=32), dict(BLOCK_T=64), dict(BLOCK_T=128)]
# The backward passes: tiles of 16 and 32 positions with 2 or 3 pipeline stages (num_stages
# serves the loads triton's pipeliner can stream, the bias tiles; fx2, fc2, fc1 and dout are
# prefetched by hand, see the kernels) and 64 with 2; no 128 (165-255 registers already).
_BWD_P = (_common.configs([dict(BLOCK_P=16), dict(BLOCK_P=32)], stages=(2, 3))
          + _common.configs([dict(BLOCK_P=64)]))
_BWD_T = (_common.configs([dict(BLOCK_T=16), dict(BLOCK_T=32)], stages=(2, 3))
          + _common.configs([dict(BLOCK_T=64)]))
_INTERP_P = dict(BLOCK_P=16, num_warps=4)
_INTERP_T = dict(BLOCK_T=16, num_warps=4)

# Autotuning keys: channel counts as they are (fixed by the model), positions by bucket
# (P_BUCKET = size_bucket(P), next power of two): a new H x W in a timed bucket is not re-timed.
# The split count S is left out: it follows from P and the GPU (within a bucket at most 2x).
TUNE_KEYS = {
    "_msca_fwd_kernel": ["N", "M2", "K", "P_BUCKET", "HAS_SB"],
    "_msca_out_kernel": ["N", "M1", "K", "P_BUCKET", "HAS_CB"],
    "_msca_bwd_target_kernel": ["N", "M1", "K", "P_BUCKET", "HAS_CB", "NEED_DCB", "ROLE"],
    "_msca_bwd_exemplar_kernel": ["N", "M2", "K", "P_BUCKET", "HAS_SB", "NEED_DSB", "ROLE"],
}
_fwd_kernel, _fwd_meta = _common.tuned(
    _msca_fwd_kernel, _common.configs(_P_OPTIONS), TUNE_KEYS["_msca_fwd_kernel"], _INTERP_P)
_out_kernel, _out_meta = _common.tuned(
    _msca_out_kernel, _common.configs(_T_OPTIONS), TUNE_KEYS["_msca_out_kernel"], _INTERP_T)


def prune_backward(configs: list, named_args: dict, **meta) -> list:
    """The backward configurations worth timing: at BLOCK_K >= 64 only 16-position tiles, for
    every dtype; float32 only 8 warps, at every K. Never none (then the first, smallest one).

    Why (ptxas -v for sm_90 on the runtime's specialisation, N = M1 = M2 = 64, no GPU to time
    them; tools: make triton-check). Each program holds K x N and K x M accumulators and weights
    next to its tiles. With the hand prefetch, float32 at 4 warps spilled in the target pass
    already at K = 16 (24 B). At K = 64, with one launch per pass (before backward_roles), every
    float32 configuration spilled, the kept 8-warp 16-position ones least (target 480 B,
    exemplar 104 B; 16 warps, capped at 128 registers, 1.6-1.8 KB), and bfloat16 spilled in
    its 32- and 64-position tiles and in every exemplar configuration (12-1228 B). With the
    two launches per pass at K >= 64 (ROLE 1 and 2), the 16-position tiles kept here spill
    nothing: float32 8 warps, target 226/243 registers (ROLE 1 without the prefetch / ROLE 2),
    exemplar 186/255; bfloat16 and float16, 4 and 8 warps, 63-253 registers. Larger tiles
    still spill there (float32 200 B to 4.5 KB, bfloat16 116-276 B). Not swept: 16-bit
    configurations below K = 64 (kept unchanged)."""
    x = named_args.get("fx2_ptr", named_args.get("fc1_ptr"))
    tile = lambda c: c.kwargs.get("BLOCK_P", c.kwargs.get("BLOCK_T"))  # noqa: E731
    wide = meta.get("BLOCK_K", 0) >= 64
    f32 = x is not None and x.dtype == torch.float32
    keep = [c for c in configs
            if (not f32 or c.num_warps == 8) and (not wide or tile(c) == 16)]
    return keep or configs[:1]


_bwd_target_kernel, _bwd_target_meta = _common.tuned(
    _msca_bwd_target_kernel, _BWD_T, TUNE_KEYS["_msca_bwd_target_kernel"], _INTERP_T,
    prune=prune_backward)
_bwd_exemplar_kernel, _bwd_exemplar_meta = _common.tuned(
    _msca_bwd_exemplar_kernel, _BWD_P, TUNE_KEYS["_msca_bwd_exemplar_kernel"], _INTERP_P,
    prune=prune_backward)

# The merge: a fixed configuration (it moves S x N x K floats once; no autotuning). Under the
# interpreter (S <= 3) BLOCK_S = 2 so the loop over partial tiles runs more than once and masks
# its last tile, and BLOCK_C = 64 splits the smallest N x K block (16 x 16) over four programs.
_MERGE = (dict(BLOCK_S=2, BLOCK_C=64, num_warps=4) if _common.INTERPRET
          else dict(BLOCK_S=32, BLOCK_C=64, num_warps=4))

# Split programs per exemplar/target pass: tiles are at least this big, so the partial count is
# bounded by P / 32 even before the SM-count cap.
_MIN_TILE = 32 if not _common.INTERPRET else 16


# Grids and offsets. Grid axis 0 may hold 2^31 - 1 programs, axes 1 and 2 only 65535: every
# kernel puts its tiles or splits on axis 0 and the batch on axis 1 (B <= 65535 is checked).
# _I64: offsets are 64-bit (batch index and channel index vectors in int64, positions made
# int64 where a position stride multiplies them: channels_last), so tensors of more than 2^31
# elements are addressed correctly (tests/msca_kernels/test_triton_offsets64.py).
MAX_GRID_0, MAX_GRID_12 = 2**31 - 1, 65535


def _out_grid(B: int, P1: int, block_t: int) -> tuple[int, int]:
    return (triton.cdiv(P1, block_t), B)


def _check_batch(B: int) -> None:
    if B > MAX_GRID_12:
        raise ValueError(f"fx2: the triton backend takes at most {MAX_GRID_12} batch items "
                         f"(grid axis 1), got {B}")


def backward_roles(block_k: int) -> tuple[int, ...]:
    """The launches of each backward pass, as the kernels' ROLE values: (0,), one launch that
    computes everything, below BLOCK_K = 64; (1, 2) from there, two launches over the same
    tiles, one for the per-position gradients and one for the K x N / K x M weight-gradient
    accumulators. At K = 64 one program holding both spilled registers on sm_90 in every
    configuration (see prune_backward). The cost of the split: the second launch reads the
    pass's inputs again (fc1 and dout, or fx2 and fc2) and recomputes beta, or the logits
    and dalpha."""
    return (1, 2) if block_k >= 64 else (0,)


def exemplar_backward_smem(dtype: torch.dtype, prec: str, block_n: int, block_m2: int,
                           block_k: int) -> int:
    """Shared memory (bytes) that the exemplar backward's per-position launch (ROLE 1) stages
    before its loop, for float32 at BLOCK_K >= 64 (0 otherwise: there it fits every GPU the
    check knows). The compiler keeps the loop's fixed operands in shared memory: phi_x, phi_c,
    dV and the transposes of phi_x and phi_c, each twice under tf32x3 (high and low parts),
    plus dV^T in float64: 8 * BK * (4 BN + 2 BM2) bytes, 192 KB at N = M2 = K = 64, matching
    what triton's compiler reports there for sm_80 and sm_90 (204800-229376 B with the
    position tiles; `make triton-check`)."""
    if dtype != torch.float32 or block_k < 64:
        return 0
    copies = 2 if prec == "tf32x3" else 1
    return 4 * copies * block_k * (3 * block_n + 2 * block_m2) + 8 * block_n * block_k


def check_backward_smem(dtype: torch.dtype, prec: str, block_n: int, block_m2: int,
                        block_k: int, K: int, limit: int) -> None:
    """Refuse, before any backward kernel runs, a float32 backward whose exemplar pass cannot
    fit the device's shared memory (`limit`, bytes): on sm_80/86/89 (at most 163 KB) float32
    with 33 <= K <= 64 at N = M2 = 64 needs ~200 KB; sm_90 (227 KB) takes it."""
    need = exemplar_backward_smem(dtype, prec, block_n, block_m2, block_k)
    if need and need > limit:
        raise ValueError(
            f"phi_weight: the triton backward at float32 with K = {K} maps needs about "
            f"{need // 1024} KB of shared memory per block for its exemplar pass, this GPU "
            f"allows {limit // 1024} KB; use K <= 32, bfloat16/float16 inputs, or "
            f"backend='cuda'")


def _v_precision(dtype: torch.dtype) -> str:
    """input_precision of the forward's V = x p^T dot.

    "ieee" for float32: the backward's c[k] = sum_n dV[n,k] V[n,k] must cancel dalpha[k, j*] =
    sum_n dV[n,k] x[n, j*] at a peaked softmax (p one-hot), which needs V[:, k] to be exactly
    x[:, j*]. tf32x3 drops the lo*lo term, V is then off by ~2^-21 relative, and the gradient of
    fc2 at logits of 1e4 was off by 3.7e-3 (tests/msca_kernels/test_msca.py::
    test_large_logits_stay_finite under the GPU-rounding interpreter). One dot of N x K per
    position on FMA units is cheap next to the memory traffic. float16/bfloat16 operands are
    exact products anyway."""
    return "ieee" if dtype == torch.float32 else _common.dot_precision(dtype)


def _strides3(t: Optional[torch.Tensor]) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else tuple(t.stride())


# ---------------------------------------------------------------------------------------------
# ops


@_common.register_op("msca_kernels::triton_msca_fwd")
def triton_msca_fwd(fx2: torch.Tensor, fc2: torch.Tensor, fc1: torch.Tensor,
                    phi_weight: torch.Tensor, phi_bias: torch.Tensor, psi_weight: torch.Tensor,
                    psi_bias: torch.Tensor, mask: torch.Tensor,
                    spatial_bias: Optional[torch.Tensor],
                    channel_bias: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """fx2 (B,N,P2), fc2 (B,M2,P2), fc1 (B,M1,P1) (any strides), weights contiguous 2-D,
    biases (K), mask (B,K), spatial_bias (B,K,P2), channel_bias (B,K,P1) or None.
    Returns out (B,N,P1) in the input dtype, V (B,N,K) and lse (B,K) in float32."""
    B, N, P2 = fx2.shape
    M2 = fc2.shape[1]
    M1, P1 = fc1.shape[1:]
    K = phi_weight.shape[0]
    _check_batch(B)
    BN, BM2, BM1, BK = block(N), block(M2), block(M1), block(K)
    prec = _common.dot_precision(fx2.dtype)
    S = _common.num_programs(fx2.device, triton.cdiv(P2, _MIN_TILE))
    f32 = dict(device=fx2.device, dtype=torch.float32)
    vp = torch.empty((B, S, BN, BK), **f32)
    mp = torch.empty((B, S, BK), **f32)
    lp = torch.empty((B, S, BK), **f32)
    sb = spatial_bias if spatial_bias is not None else fx2
    _common.launch(_fwd_kernel, (S, B), 
        fx2, fc2, phi_weight, phi_bias, sb, vp, mp, lp, N, M2, K, P2, S, size_bucket(P2),
        *fx2.stride(), *fc2.stride(), *_strides3(spatial_bias),
        HAS_SB=spatial_bias is not None, BLOCK_N=BN, BLOCK_M=BM2, BLOCK_K=BK, DOT_PREC=prec,
        V_PREC=_v_precision(fx2.dtype), PREFETCH_X=_v_precision(fx2.dtype) == "ieee",
        **_fwd_meta)
    V = torch.empty((B, N, K), **f32)
    lse = torch.empty((B, K), **f32)
    block_c = min(_MERGE["BLOCK_C"], BN * BK)
    _common.launch(_msca_merge_kernel, (BN * BK // block_c, B), vp, mp, lp, V, lse, N, K, S,
                   BLOCK_N=BN, BLOCK_K=BK, **dict(_MERGE, BLOCK_C=block_c))
    out = torch.empty((B, N, P1), device=fx2.device, dtype=fx2.dtype)
    cb = channel_bias if channel_bias is not None else fc1
    block_t = _out_meta.get("BLOCK_T")
    grid = ((lambda meta: _out_grid(B, P1, meta["BLOCK_T"])) if block_t is None
            else _out_grid(B, P1, block_t))
    _common.launch(_out_kernel, grid, 
        fc1, psi_weight, psi_bias, cb, V, mask, out, N, M1, K, P1, size_bucket(P1),
        *fc1.stride(), *_strides3(channel_bias),
        HAS_CB=channel_bias is not None, BLOCK_N=BN, BLOCK_M=BM1, BLOCK_K=BK, DOT_PREC=prec,
        **_out_meta)
    return out, V, lse


@_common.register_op("msca_kernels::triton_msca_bwd")
def triton_msca_bwd(grad_out: torch.Tensor, fx2: torch.Tensor, fc2: torch.Tensor,
                    fc1: torch.Tensor, phi_weight: torch.Tensor, phi_bias: torch.Tensor,
                    psi_weight: torch.Tensor, psi_bias: torch.Tensor, mask: torch.Tensor,
                    spatial_bias: Optional[torch.Tensor], channel_bias: Optional[torch.Tensor],
                    V: torch.Tensor, lse: torch.Tensor, need_spatial_bias_grad: bool,
                    need_channel_bias_grad: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    """Gradients (dfx2, dfc2, dfc1, dphi, dphi_bias, dpsi, dpsi_bias, dmask, dspatial_bias,
    dchannel_bias) in the input dtype; a bias gradient not asked for is an empty tensor.
    grad_out (B,N,P1) contiguous."""
    B, N, P2 = fx2.shape
    M2 = fc2.shape[1]
    M1, P1 = fc1.shape[1:]
    K = phi_weight.shape[0]
    dt = fx2.dtype
    _check_batch(B)
    BN, BM2, BM1, BK = block(N), block(M2), block(M1), block(K)
    prec = _common.dot_precision(dt)
    if fx2.is_cuda:
        check_backward_smem(dt, prec, BN, BM2, BK, K, _common.smem_optin(fx2.device.index))
    f32 = dict(device=fx2.device, dtype=torch.float32)

    # Pass A: target tiles.
    S1 = _common.num_programs(fx2.device, triton.cdiv(P1, _MIN_TILE))
    dfc1 = torch.empty((B, M1, P1), device=fx2.device, dtype=dt)
    dcb = (torch.empty((B, K, P1), device=fx2.device, dtype=dt) if need_channel_bias_grad
           else fx2.new_empty((0,)))
    dvm_p = torch.empty((B, S1, BN, BK), **f32)
    dpsi_p = torch.empty((B, S1, BK, BM1), **f32)
    dpsib_p = torch.empty((B, S1, BK), **f32)
    cb = channel_bias if channel_bias is not None else fc1
    for role in backward_roles(BK):
        _common.launch(_bwd_target_kernel, (S1, B), 
            grad_out, fc1, psi_weight, psi_bias, cb, V, mask, dfc1,
            dcb if need_channel_bias_grad else dfc1, dvm_p, dpsi_p, dpsib_p, N, M1, K, P1, S1,
            size_bucket(P1), *fc1.stride(), *_strides3(channel_bias),
            HAS_CB=channel_bias is not None, NEED_DCB=need_channel_bias_grad, BLOCK_N=BN,
            BLOCK_M=BM1, BLOCK_K=BK, DOT_PREC=prec, ROLE=role, PREFETCH=role != 1,
            **_bwd_target_meta)

    # The small reductions between the passes (N x K and K values per batch item), in a fixed
    # order: dVm, then dmask = sum_n dVm V, dV = dVm * mask and c = sum_n dV V.
    dvm = dvm_p.sum(1)[:, :N, :K]
    gate = mask.float()
    dmask = (dvm * V).sum(1)
    dv = (dvm * gate[:, None, :]).contiguous()
    # float32 inputs: c (and dalpha in the kernel) in float64, see _msca_bwd_exemplar_kernel.
    dalpha_f64 = dt == torch.float32
    c = ((dv.double() * V.double()).sum(1) if dalpha_f64 else (dv * V).sum(1)).contiguous()

    # Pass B: exemplar tiles.
    S2 = _common.num_programs(fx2.device, triton.cdiv(P2, _MIN_TILE))
    dfx2 = torch.empty((B, N, P2), device=fx2.device, dtype=dt)
    dfc2 = torch.empty((B, M2, P2), device=fx2.device, dtype=dt)
    dsb = (torch.empty((B, K, P2), device=fx2.device, dtype=dt) if need_spatial_bias_grad
           else fx2.new_empty((0,)))
    dphi_p = torch.empty((B, S2, BK, BN + BM2), **f32)
    dphib_p = torch.empty((B, S2, BK), **f32)
    sb = spatial_bias if spatial_bias is not None else fx2
    for role in backward_roles(BK):
        _common.launch(_bwd_exemplar_kernel, (S2, B), 
            fx2, fc2, phi_weight, phi_bias, sb, lse, dv, c, dfx2, dfc2,
            dsb if need_spatial_bias_grad else dfx2, dphi_p, dphib_p, N, M2, K, P2, S2,
            size_bucket(P2),
            *fx2.stride(), *fc2.stride(), *_strides3(spatial_bias),
            HAS_SB=spatial_bias is not None, NEED_DSB=need_spatial_bias_grad,
            DALPHA_F64=dalpha_f64, BLOCK_N=BN,
            BLOCK_M=BM2, BLOCK_K=BK, DOT_PREC=prec, ROLE=role, **_bwd_exemplar_meta)

    dphi_full = dphi_p.sum((0, 1))
    dphi = torch.cat([dphi_full[:K, :N], dphi_full[:K, BN:BN + M2]], dim=1).to(dt)
    dphi_b = dphib_p.sum((0, 1))[:K].to(dt)
    dpsi = dpsi_p.sum((0, 1))[:K, :M1].to(dt)
    dpsi_b = dpsib_p.sum((0, 1))[:K].to(dt)
    return (dfx2, dfc2, dfc1, dphi, dphi_b, dpsi, dpsi_b, dmask.to(mask.dtype), dsb, dcb)


class MSCAFunction:
    """The autograd formula of triton_msca_fwd, registered with torch.library.register_autograd
    (as the C++ op's is) rather than as a torch.autograd.Function, so that the op itself is
    differentiable: torch.compile and opcheck see one custom op with its backward. Forward saves
    the inputs, V and lse; backward recomputes alpha and beta from them."""

    backward, setup_context = (staticmethod(f) for f in _autograd.msca_autograd("triton_msca_bwd"))


_autograd.register("msca_kernels::triton_msca_fwd",
                   (MSCAFunction.backward, MSCAFunction.setup_context))


# ---------------------------------------------------------------------------------------------
# host entry point


def msca_forward(fx2, fc2, fc1, phi, psi, mask=None, phi_bias=None, psi_bias=None, *,
                 spatial_bias=None, channel_bias=None):
    """out (B,N,H1,W1) of MSCA, differentiable in every tensor argument.

    fx2, fc2, fc1 (B,C,H,W) in one of float32, float16, bfloat16 (layout free: the kernels take
    strides, so channels_last needs no copy); phi (K,N+M2), psi (K,M1) 2-D in the same dtype;
    mask (B,K), phi_bias, psi_bias (K), spatial_bias (B,K,H2,W2), channel_bias (B,K,H1,W1) or
    None. Called by msca_kernels.msca_attention after validation.
    """
    B, N = fx2.shape[:2]
    H1, W1 = fc1.shape[2:]
    K = phi.shape[0]
    mask, phi_bias, psi_bias = _autograd.msca_defaults(fx2, K, mask, phi_bias, psi_bias)
    # reshape is a view whenever H and W can merge (contiguous and channels_last both can).
    flat = lambda t: None if t is None else t.reshape(t.shape[0], t.shape[1], -1)  # noqa: E731
    out, _, _ = torch.ops.msca_kernels.triton_msca_fwd(
        flat(fx2), flat(fc2), flat(fc1), phi.contiguous(), phi_bias.contiguous(),
        psi.contiguous(), psi_bias.contiguous(), mask.contiguous(), flat(spatial_bias),
        flat(channel_bias))
    return out.view(B, N, H1, W1)


# Under the interpreter, read every kernel's source now (see _common.read_kernel_sources_now).
_common.read_kernel_sources_now(globals())
