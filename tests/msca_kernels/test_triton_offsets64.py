"""The Triton kernels address tensors of more than 2^31 elements correctly (issue 12 b), pinned
on the CPU through the interpreter.

Under TRITON_INTERPRET=1 the index arithmetic runs in numpy with the kernel's integer types,
so a 32-bit product wraps exactly as on the GPU (test_interpreter_wraps_32bit_offsets shows it
with a kernel written the wrong way). Each test below launches a real kernel on a few programs
whose addresses lie beyond 2^31 elements: tensors of 3-5 billion elements that only reserve
address space (huge_tensors.huge), the tiles those programs read written with random values,
and either a grid of those programs only (huge_tensors.programs) or a split count S that hands
one program the first and the last tile of a map (tile = pid + it * S). What they write is
compared with float64 arithmetic on the same values.

Two shapes per MSCA pass, because a term can only wrap where its factors are 32-bit:
  WIDE  (2, 16, P) with 15 * P > 2^31: the channel rows n * P and the products b * N * P of the
        contiguous outputs (their factors are 32-bit arguments; the batch stride itself is
        >= 2^31, which triton passes as a 64-bit integer);
  DEEP  (3, 16, P) with 16 * P just over 2^30: the batch stride is a 32-bit argument and
        b * stride wraps at b = 2.
and two layouts of the inputs the kernels read through strides (fx2, fc2, fc1, the biases):
contiguous, and channels_last, whose position stride is the channel count (WIDE: p * 16 passes
2^31 in the last tile). SPADE: instance mode (the group term g * P, group 2 of (1, 3, ~2^30))
and batch mode (the batch term (idx // P) * C * P of (3, 2, ~2^29)).

Checked that these tests can fail, with a 32-bit offset planted in a copy of the kernels:
`.to(tl.int64)` dropped from the MSCA batch index fails every WIDE and DEEP case of the four
passes (12); from the channel index vectors, the four WIDE contiguous cases; from SPADE's group
index, the three instance cases; from _group_addr's batch term, the three batch cases. Wrong
values, not crashes: the padding in front of each tensor catches the wrapped addresses.

Found here: the MSCA kernels multiplied positions by the position stride in 32 bits, so a
channels_last input with more than 2^31 elements in one batch item was read at wrong addresses
(WIDE channels_last failed in all four passes); those positions are int64 now.
"""
from __future__ import annotations

import math

import pytest
import torch

import msca_kernels as mk
from huge_tensors import channels_last_strides, contiguous_strides, huge, programs

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _interpreter_only():
    from msca_kernels.triton import _common

    if not _common.INTERPRET:
        pytest.skip("needs TRITON_INTERPRET=1 (on a GPU, make gpu-check runs > 2^31-element "
                    "cases instead)")


def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """float32 accumulation and tf32x3 dots against float64: ~1e-6 relative; a wrong address
    reads zeros or another tile's random values, off by O(1)."""
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-4,
                               msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------------------------
# the interpreter wraps 32-bit offsets: a kernel written the wrong way reads the wrong element


def _copy_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def copy_last_row_32bit(x_ptr, out_ptr, N, P, BLOCK: tl.constexpr):
        b = tl.program_id(0)  # int32: b * N * P and (N - 1) * P wrap past 2^31
        offs = tl.arange(0, BLOCK)
        v = tl.load(x_ptr + b * N * P + (N - 1) * P + offs)
        tl.store(out_ptr + b * BLOCK + offs, v)

    @triton.jit
    def copy_last_row_64bit(x_ptr, out_ptr, N, P, BLOCK: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        v = tl.load(x_ptr + b * N * P + (N - 1).to(tl.int64) * P + offs)
        tl.store(out_ptr + b * BLOCK + offs, v)

    return copy_last_row_32bit, copy_last_row_64bit


def test_interpreter_wraps_32bit_offsets():
    """The premise of this file: a kernel whose batch and row terms are 32-bit reads zeros
    (row offsets 15 * P and 31 * P are past 2^31), with 64-bit terms it reads the data. (A
    first draft of the 64-bit kernel computed (N - 1) * P in 32 bits and read zeros too.)"""
    k32, k64 = _copy_kernels()
    B, N, P = WIDE
    x = huge((B, N, P))
    want = torch.rand(B, 16) + 1.0  # no zeros
    x[:, N - 1, :16] = want
    out32, out64 = torch.zeros(B, 16), torch.zeros(B, 16)
    k32[(B,)](x, out32, N, P, BLOCK=16)
    k64[(B,)](x, out64, N, P, BLOCK=16)
    assert torch.equal(out64, want)
    assert not torch.isclose(out32, want).any(), "the interpreter no longer wraps int32 offsets"


# ---------------------------------------------------------------------------------------------
# SPADE: group term (instance mode), batch term (batch mode)

BLOCK_SPADE = 128  # the interpreter's BLOCK (spade._INTERP)
INSTANCE_SHAPE = (1, 3, 2**30 + 2**20 + 77)  # group 2 starts at 2^31 + 2^21 + 154
BATCH_SHAPE = (3, 2, 2**29 + 2**19 + 77)  # batch item 2 of a channel starts past 2^31


class SpadeCase:
    """A SPADE layout, chunked one block per chunk (CH = cdiv(n, BLOCK): any CH is valid, this
    one keeps every program to one block), and the (group, chunk) programs that run."""

    def __init__(self, instance: bool):
        self.instance = instance
        self.B, self.C, self.P = INSTANCE_SHAPE if instance else BATCH_SHAPE
        B, C, P = self.B, self.C, self.P
        self.G, self.n = (B * C, P) if instance else (C, B * P)
        self.CP = C * P
        self.CH = math.ceil(self.n / BLOCK_SPADE)
        if instance:  # the first and the last chunk of the last group
            self.groups, self.chunks = [self.G - 1], [0, self.CH - 1]
        else:  # both channels: the first chunk, the one straddling items 1 and 2, the last
            self.groups, self.chunks = [0, 1], [0, 2 * P // BLOCK_SPADE, self.CH - 1]

    def where(self, g: int, ch: int):
        """Index tensors (b, c, p) of the values of chunk ch of group g."""
        idx = torch.arange(ch * BLOCK_SPADE, min((ch + 1) * BLOCK_SPADE, self.n))
        if self.instance:
            b, c = divmod(g, self.C)
            return torch.full_like(idx, b), torch.full_like(idx, c), idx
        return idx // self.P, torch.full_like(idx, g), idx % self.P

    def programs(self):
        return [(g, ch) for g in self.groups for ch in self.chunks]

    def tensor(self):
        return huge((self.B, self.C, self.P))

    def fill(self, t: torch.Tensor, scale=1.0, shift=0.0) -> None:
        for g, ch in self.programs():
            i = self.where(g, ch)
            t[i] = torch.randn(len(i[0])) * scale + shift

    def launch(self, kernel, *args, **meta):
        with programs(self.groups, self.chunks) as grid:
            kernel[grid](*args, **meta)


@pytest.fixture(params=[True, False], ids=["instance", "batch"])
def spade_case(request):
    return SpadeCase(request.param)


def test_spade_statistics_beyond_2_31(spade_case):
    from msca_kernels.triton import spade as ts

    s = spade_case
    x = s.tensor()
    s.fill(x, scale=2.0, shift=1.5)
    cnt, mean, m2 = huge((s.G, s.CH)), huge((s.G, s.CH)), huge((s.G, s.CH))
    s.launch(ts._stats_kernel, x, cnt, mean, m2, s.n, s.P, s.CP, s.CH,
             INSTANCE=s.instance, **ts._stats_meta)
    for g, ch in s.programs():
        v = x[s.where(g, ch)].double()
        close(cnt[g, ch], torch.tensor(float(len(v)), dtype=F64), f"count {g},{ch}")
        close(mean[g, ch], v.mean(), f"mean {g},{ch}")
        close(m2[g, ch], ((v - v.mean()) ** 2).sum(), f"M2 {g},{ch}")


def test_spade_apply_beyond_2_31(spade_case):
    from msca_kernels.triton import spade as ts

    s = spade_case
    x, gamma, beta, out = s.tensor(), s.tensor(), s.tensor(), s.tensor()
    for t in (x, gamma, beta):
        s.fill(t)
    mean, rstd = torch.randn(s.G), torch.rand(s.G) + 0.5
    s.launch(ts._apply_kernel, x, gamma, beta, mean, rstd, out, s.n, s.P, s.CP, s.CH,
             INSTANCE=s.instance, **ts._apply_meta)
    for g, ch in s.programs():
        i = s.where(g, ch)
        want = ((x[i].double() - mean[g].double()) * rstd[g].double() * (1 + gamma[i].double())
                + beta[i].double())
        close(out[i], want, f"out {g},{ch}")


def test_spade_backward_beyond_2_31(spade_case):
    from msca_kernels.triton import _common, spade as ts

    s = spade_case
    dy, x, gamma = s.tensor(), s.tensor(), s.tensor()
    for t in (dy, x, gamma):
        s.fill(t)
    mean, rstd = torch.randn(s.G), torch.rand(s.G) + 0.5
    # reduce pass: per chunk, sum g and sum g * xhat
    sg_p, sgx_p = huge((s.G, s.CH)), huge((s.G, s.CH))
    s.launch(ts._reduce_kernel, dy, x, gamma, mean, rstd, sg_p, sgx_p, s.n, s.P, s.CP, s.CH,
             INSTANCE=s.instance, **ts._reduce_meta)
    # apply pass, with two chunk partials per group of its own (CH_RED is independent of CH)
    sg, sgx = torch.randn(s.G, 2), torch.randn(s.G, 2)
    dx, dgamma = s.tensor(), s.tensor()
    s.launch(ts._bwd_apply_kernel, dy, x, gamma, mean, rstd, sg, sgx, dx, dgamma, s.n, s.P,
             s.CP, s.CH, 2, INSTANCE=s.instance, BATCH_STATS=True,
             BLOCK_CH=_common.block(2, 2), **ts._bwd_apply_meta)
    for g, ch in s.programs():
        i = s.where(g, ch)
        xhat = (x[i].double() - mean[g].double()) * rstd[g].double()
        gg = dy[i].double() * (1 + gamma[i].double())
        close(sg_p[g, ch], gg.sum(), f"sum g {g},{ch}")
        close(sgx_p[g, ch], (gg * xhat).sum(), f"sum g*xhat {g},{ch}")
        mg, mgx = sg[g].double().sum() / s.n, sgx[g].double().sum() / s.n
        close(dx[i], rstd[g].double() * (gg - mg - xhat * mgx), f"dx {g},{ch}")
        close(dgamma[i], dy[i].double() * xhat, f"dgamma {g},{ch}")


# ---------------------------------------------------------------------------------------------
# MSCA: the split forward, the output pass, both backward passes

CH_MSCA = 16  # N = M1 = M2 = K: every channel term n * P, m * P, k * P can pass 2^31 in WIDE
WIDE = (2, CH_MSCA, 2**31 // 15 + 21)  # 15 * P > 2^31; P % 16 = 13 (a partial last tile)
DEEP = (3, CH_MSCA, 2**26 + 37)  # batch stride 16 * P = 2^30 + 592 < 2^31, b = 2 passes it
BLOCK_MSCA = 16  # the interpreter's BLOCK_P / BLOCK_T (msca._INTERP_P, _INTERP_T)


class MscaCase:
    """Maps of P positions; the programs that run see the first and the last tile of a map,
    the positions J. The inputs read through strides are contiguous or channels_last."""

    def __init__(self, shape, layout: str):
        self.B, self.C, self.P = shape
        self.layout = layout
        self.tiles = math.ceil(self.P / BLOCK_MSCA)
        last = (self.tiles - 1) * BLOCK_MSCA
        self.J = torch.cat([torch.arange(BLOCK_MSCA), torch.arange(last, self.P)])

    def input(self):
        """A (B, C, P) input in the case's layout, random at the positions J."""
        size = (self.B, self.C, self.P)
        stride = channels_last_strides(size) if self.layout == "channels_last" else None
        t = huge(size, stride)
        t[:, :, self.J] = torch.randn(self.B, self.C, len(self.J))
        return t

    def output(self, channels: int = CH_MSCA):
        """A contiguous (B, channels, P) output, as the host functions allocate it."""
        return huge((self.B, channels, self.P))

    def partials(self, *inner):
        """(B, S, *inner) per-program partials for the split passes' S (see split)."""
        return huge((self.B, self.split) + inner)

    @property
    def split(self) -> int:
        """S such that program 0 handles tiles 0 and S = tiles - 1 (tile = pid + it * S)."""
        return self.tiles - 1

    def at_J(self, t: torch.Tensor, b: int) -> torch.Tensor:
        return t[b][:, self.J].double()


@pytest.fixture(params=[(WIDE, "contiguous"), (WIDE, "channels_last"), (DEEP, "contiguous"),
                        (DEEP, "channels_last")],
                ids=["wide", "wide-channels_last", "deep", "deep-channels_last"])
def msca_case(request):
    return MscaCase(*request.param)


def _weights(seed=1):
    g = torch.Generator().manual_seed(seed)
    K = C = CH_MSCA
    phi = torch.randn(K, 2 * C, generator=g) * 0.3
    psi = torch.randn(K, C, generator=g) * 0.3
    return phi, torch.randn(K, generator=g) * 0.1, psi, torch.randn(K, generator=g) * 0.1


def _meta():
    from msca_kernels.triton import _common

    B = _common.block(CH_MSCA)
    return dict(BLOCK_N=B, BLOCK_M=B, BLOCK_K=B, DOT_PREC=_common.dot_precision(torch.float32))


def _exemplar_logits64(phi, phib, x, c, sb):
    """a = phi [x; c] + phi_bias + spatial_bias, float64, (K, |J|)."""
    return phi.double() @ torch.cat([x, c]) + phib.double()[:, None] + sb


def test_msca_split_forward_beyond_2_31(msca_case):
    from msca_kernels.triton import _common, msca as tm

    m = msca_case
    B, C, P, S = m.B, m.C, m.P, m.split
    fx2, fc2, sb = m.input(), m.input(), m.input()
    phi, phib, _, _ = _weights()
    BC = _common.block(C)
    vp, mp, lp = m.partials(BC, BC), m.partials(BC), m.partials(BC)
    tm._fwd_kernel[(1, B)](
        fx2, fc2, phi, phib, sb, vp, mp, lp, C, C, C, P, S, _common.size_bucket(P),
        *fx2.stride(), *fc2.stride(), *sb.stride(), HAS_SB=True,
        V_PREC=tm._v_precision(torch.float32), PREFETCH_X=True, **_meta(), **tm._fwd_meta)
    for b in range(B):
        x = m.at_J(fx2, b)
        a = _exemplar_logits64(phi, phib, x, m.at_J(fc2, b), m.at_J(sb, b))
        mx = a.max(1).values
        e = torch.exp(a - mx[:, None])
        close(mp[b, 0, :C], mx, f"running max, batch item {b}")
        close(lp[b, 0, :C], e.sum(1), f"running sum, batch item {b}")
        close(vp[b, 0, :C, :C], x @ e.T, f"V partial, batch item {b}")


def test_msca_output_pass_beyond_2_31(msca_case):
    from msca_kernels.triton import _common, msca as tm

    m = msca_case
    B, C, P = m.B, m.C, m.P
    fc1, cb = m.input(), m.input()
    _, _, psi, psib = _weights()
    V, mask = torch.randn(B, C, C), torch.rand(B, C)
    out = m.output()
    with programs([0, m.tiles - 1], range(B)) as grid:  # one tile per program: select them
        tm._out_kernel[grid](
            fc1, psi, psib, cb, V, mask, out, C, C, C, P, _common.size_bucket(P),
            *fc1.stride(), *cb.stride(), HAS_CB=True, **_meta(), **tm._out_meta)
    for b in range(B):
        beta = torch.softmax(psi.double() @ m.at_J(fc1, b) + psib.double()[:, None]
                             + m.at_J(cb, b), dim=0)
        close(m.at_J(out, b), (V[b].double() * mask[b].double()) @ beta,
              f"out, batch item {b}")


def test_msca_backward_target_pass_beyond_2_31(msca_case):
    from msca_kernels.triton import _common, msca as tm

    m = msca_case
    B, C, P, S = m.B, m.C, m.P, m.split
    fc1, cb = m.input(), m.input()
    do = MscaCase((B, C, P), "contiguous").input()  # grad_out: contiguous, as the op passes it
    _, _, psi, psib = _weights()
    V, mask = torch.randn(B, C, C), torch.rand(B, C)
    dfc1, dcb = m.output(), m.output()
    BC = _common.block(C)
    dvm_p, dpsi_p, dpsib_p = m.partials(BC, BC), m.partials(BC, BC), m.partials(BC)
    tm._bwd_target_kernel[(1, B)](
        do, fc1, psi, psib, cb, V, mask, dfc1, dcb, dvm_p, dpsi_p, dpsib_p, C, C, C, P, S,
        _common.size_bucket(P), *fc1.stride(), *cb.stride(), HAS_CB=True, NEED_DCB=True,
        **_meta(), **tm._bwd_target_meta)
    for b in range(B):
        # float64 autograd through out = (V * mask) softmax_k(psi f + psi_bias + cb) at J
        f, cbj = m.at_J(fc1, b).requires_grad_(), m.at_J(cb, b).requires_grad_()
        vm = (V[b].double() * mask[b].double()).requires_grad_()
        w, wb = psi.double().requires_grad_(), psib.double().requires_grad_()
        out = vm @ torch.softmax(w @ f + wb[:, None] + cbj, dim=0)
        out.backward(m.at_J(do, b))
        close(m.at_J(dfc1, b), f.grad, f"dfc1, batch item {b}")
        close(m.at_J(dcb, b), cbj.grad, f"dchannel_bias, batch item {b}")
        close(dvm_p[b, 0, :C, :C], vm.grad, f"dVm partial, batch item {b}")
        close(dpsi_p[b, 0, :C, :C], w.grad, f"dpsi partial, batch item {b}")
        close(dpsib_p[b, 0, :C], wb.grad, f"dpsi_bias partial, batch item {b}")


def test_msca_backward_exemplar_pass_beyond_2_31(msca_case):
    from msca_kernels.triton import _common, msca as tm

    m = msca_case
    B, C, P, S = m.B, m.C, m.P, m.split
    fx2, fc2, sb = m.input(), m.input(), m.input()
    phi, phib, _, _ = _weights()
    BC = _common.block(C)
    lse = torch.empty(B, C)
    for b in range(B):  # alpha normalised over J, as if the map were J
        a = _exemplar_logits64(phi, phib, m.at_J(fx2, b), m.at_J(fc2, b), m.at_J(sb, b))
        lse[b] = torch.logsumexp(a, dim=1).float()
    dv, c = torch.randn(B, C, C), torch.randn(B, C, dtype=F64)  # c in float64 (DALPHA_F64)
    dfx2, dfc2, dsb = m.output(), m.output(), m.output()
    dphi_p, dphib_p = m.partials(BC, 2 * BC), m.partials(BC)
    tm._bwd_exemplar_kernel[(1, B)](
        fx2, fc2, phi, phib, sb, lse, dv, c, dfx2, dfc2, dsb, dphi_p, dphib_p, C, C, C, P, S,
        _common.size_bucket(P), *fx2.stride(), *fc2.stride(), *sb.stride(), HAS_SB=True,
        NEED_DSB=True, DALPHA_F64=True, **_meta(), **tm._bwd_exemplar_meta)
    for b in range(B):
        x, cj = m.at_J(fx2, b), m.at_J(fc2, b)
        alpha = torch.exp(_exemplar_logits64(phi, phib, x, cj, m.at_J(sb, b))
                          - lse[b].double()[:, None])
        dvb = dv[b].double()
        da = alpha * (dvb.T @ x - c[b][:, None])
        phi_x, phi_c = phi.double()[:, :C], phi.double()[:, C:]
        close(m.at_J(dfx2, b), dvb @ alpha + phi_x.T @ da, f"dfx2, batch item {b}")
        close(m.at_J(dfc2, b), phi_c.T @ da, f"dfc2, batch item {b}")
        close(m.at_J(dsb, b), da, f"dspatial_bias, batch item {b}")
        close(dphi_p[b, 0, :C, :C], da @ x.T, f"dphi (x part) partial, batch item {b}")
        close(dphi_p[b, 0, :C, BC:BC + C], da @ cj.T, f"dphi (c part) partial, batch item {b}")
        close(dphib_p[b, 0, :C], da.sum(1), f"dphi_bias partial, batch item {b}")
