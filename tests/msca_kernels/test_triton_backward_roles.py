"""The triton backward passes at K >= 64 (issue 12 g): each pass runs as two launches over the
same tiles (backward_roles), one for the per-position gradients and one for the weight-gradient
accumulators, because one program holding both spilled registers on sm_90. Checked here under
the interpreter (float32 dots rounded like the GPU's tf32x3) against the float64 reference, on
tiny odd shapes, and the launches themselves recorded."""
import pytest
import torch

import msca_kernels as mk
from test_msca import check_against_reference, make_inputs

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_backward_roles_split_from_block_k_64():
    from msca_kernels.triton import msca as tm

    assert tm.backward_roles(16) == tm.backward_roles(32) == (0,)
    assert tm.backward_roles(64) == tm.backward_roles(128) == (1, 2)


# (B, N, M2, M1, K, H2, W2, H1, W1): K = 64 exactly, and K = 37 (padded to BLOCK_K = 64 with
# masked rows); several tiles per program and a partial last tile in both maps.
@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 64, 5, 9, 7, 6), (1, 17, 9, 20, 37, 6, 7, 5, 5)],
                         ids=str)
@pytest.mark.parametrize("biases", [True, False], ids=["biases", "nobias"])
def test_float32_gradients_at_k64_match_the_reference(shape, biases):
    inputs = make_inputs(shape, torch.float32, DEV, biases=biases, mask=biases)
    check_against_reference(inputs, "triton", torch.float32)


def test_large_logits_at_k64_stay_finite_and_exact():
    # The split launches recompute the logits and dalpha (role 2): at a peaked softmax the
    # float64 cancellation of dalpha against c must hold there as in the single launch.
    shape = (1, 6, 4, 5, 64, 5, 7, 4, 5)
    inputs = make_inputs(shape, torch.float32, DEV, scale=3e3)
    check_against_reference(inputs, "triton", torch.float32)


def test_each_pass_launches_both_roles_at_k64(monkeypatch):
    from msca_kernels.triton import _common, msca as tm

    launches = []
    monkeypatch.setattr(_common, "launch",
                        lambda kernel, grid, *a, **meta: launches.append((kernel, grid, meta)))
    B, N, M2, M1, P2, P1 = 1, 8, 4, 6, 40, 30
    for K, roles in ((16, [0]), (64, [1, 2])):
        launches.clear()
        r = lambda *s: torch.zeros(*s, device="meta")  # noqa: E731
        fx2, fc2, fc1 = r(B, N, P2), r(B, M2, P2), r(B, M1, P1)
        phi, psi, pb, qb, mask = r(K, N + M2), r(K, M1), r(K), r(K), r(B, K)
        out, V, lse = tm.triton_msca_fwd(fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None)
        launches.clear()
        tm.triton_msca_bwd(out, fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None, V, lse,
                           False, False)
        names = [(k.fn if hasattr(k, "fn") else k).__name__ for k, _, _ in launches]
        target = [m["ROLE"] for n, (_, _, m) in zip(names, launches) if "target" in n]
        exemplar = [m["ROLE"] for n, (_, _, m) in zip(names, launches) if "exemplar" in n]
        assert target == roles and exemplar == roles, (K, names)
        # same grid for both roles: every tile is visited by each
        assert len({g for _, g, _ in launches}) <= 2
