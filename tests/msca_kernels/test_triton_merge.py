"""The forward's log-sum-exp merge kernel on its own, with more partials than the end-to-end
tests produce (they split into at most 3 under the interpreter): several (BLOCK_S, BLOCK_C)
tiles of partials per program, a partly filled last tile, several programs per batch item,
rows that are -inf in some partials or in all of them, and a NaN partial sum."""
import math

import pytest
import torch

import msca_kernels as mk

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def partials(B, S, BN, BK, gen):
    """Partials as the split forward writes them: V (B,S,BN,BK), running max m and sum l
    (B,S,BK), each partial's V and l scaled by exp(-m)."""
    m = torch.randn(B, S, BK, generator=gen, dtype=torch.float64) * 3
    # maxima far apart: exp(m_s - M) overflows float32 unless M is the maximum over all partials
    m[:, 0, 3] += 120
    m[:, -1, 0] += 120
    l = torch.rand(B, S, BK, generator=gen, dtype=torch.float64) + 0.5
    vp = torch.randn(B, S, BN, BK, generator=gen, dtype=torch.float64)
    # k = 1: -inf in some partials (those tiles saw only -inf logits: l = 0, V = 0)
    m[:, ::2, 1] = -math.inf
    l[:, ::2, 1] = 0
    vp[:, ::2, :, 1] = 0
    # k = 2: -inf in every partial (attends to nothing)
    m[:, :, 2], l[:, :, 2], vp[:, :, :, 2] = -math.inf, 0, 0
    return vp, m, l


def merged(vp, m, l):
    """float64 reference: V = sum_s e^(m_s - M) V_s / total, lse = M + log(total)."""
    mx = m.amax(1, keepdim=True)
    safe = torch.where(mx == -math.inf, 0.0, mx)
    w = torch.exp(m - safe)
    total = (w * l).sum(1)
    v = (w[:, :, None, :] * vp).sum(1) / torch.where(total > 0, total, 1.0)[:, None, :]
    lse = torch.where(total > 0, safe[:, 0] + torch.log(torch.where(total > 0, total, 1.0)),
                      -math.inf)
    return v, lse


def run_merge(vp, m, l, N, K):
    from msca_kernels.triton import _common
    from msca_kernels.triton import msca as tm

    B, S, BN, BK = vp.shape
    f32 = dict(device=DEV, dtype=torch.float32)
    V = torch.full((B, N, K), math.nan, **f32)
    lse = torch.full((B, K), math.nan, **f32)
    block_c = min(tm._MERGE["BLOCK_C"], BN * BK)
    _common.launch(tm._msca_merge_kernel, (BN * BK // block_c, B), vp.to(**f32), m.to(**f32),
                   l.to(**f32), V, lse, N, K, S, BLOCK_N=BN, BLOCK_K=BK,
                   **dict(tm._MERGE, BLOCK_C=block_c))
    return V.cpu().double(), lse.cpu().double()


@pytest.mark.parametrize("S", [1, 2, 7, 19])
@pytest.mark.parametrize("N,K,BN,BK", [(5, 3, 16, 16), (17, 11, 32, 16), (20, 40, 32, 64)])
def test_merge_matches_float64(S, N, K, BN, BK):
    gen = torch.Generator().manual_seed(S * 1000 + N)
    vp, m, l = partials(2, S, BN, BK, gen)
    V, lse = run_merge(vp, m, l, N, K)
    v_ref, lse_ref = merged(vp, m, l)
    torch.testing.assert_close(V, v_ref[:, :N, :K], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, lse_ref[:, :K], rtol=1e-5, atol=1e-6)
    assert (V[:, :, 2] == 0).all() and (lse[:, 2] == -math.inf).all()


def test_merge_keeps_a_nan_partial_sum_nan():
    # A NaN in one partial's sum (a NaN logit in its tile) must not read as "attends to nothing"
    # with a finite V: that row's V stays NaN, the other rows are untouched.
    gen = torch.Generator().manual_seed(3)
    vp, m, l = partials(1, 9, 16, 16, gen)
    m[0, 4, 0] = l[0, 4, 0] = math.nan
    vp[0, 4, :, 0] = math.nan
    V, lse = run_merge(vp, m, l, 5, 3)
    assert torch.isnan(V[0, :, 0]).all()
    assert torch.isfinite(V[0, :, 1]).all() and torch.isfinite(lse[0, 1])
