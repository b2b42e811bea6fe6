"""The backward passes' autotuning configurations and their pruning (issue 12 g), checked
without a GPU: what the autotuner would be left to time for each dtype and K."""
import pytest
import torch

import msca_kernels as mk

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)


def _shape(c):
    return (c.kwargs.get("BLOCK_P", c.kwargs.get("BLOCK_T")), c.num_warps, c.num_stages)


@pytest.mark.parametrize("which", ["_BWD_P", "_BWD_T"])
def test_backward_configs_start_small_and_have_stages(which):
    from msca_kernels.triton import msca as tm

    cfgs = getattr(tm, which)
    assert _shape(cfgs[0]) == (16, 4, 2)  # make test's quick triton-check compiles this one
    assert {c.num_stages for c in cfgs} == {2, 3}
    assert max(_shape(c)[0] for c in cfgs) == 64


@pytest.mark.parametrize("arg", ["fx2_ptr", "fc1_ptr"])
def test_prune_backward(arg):
    from msca_kernels.triton import msca as tm

    cfgs = tm._BWD_P if arg == "fx2_ptr" else tm._BWD_T
    t = lambda dt: {arg: torch.empty(1, dtype=dt, device="meta")}  # noqa: E731
    wide = tm.prune_backward(cfgs, t(torch.float32), BLOCK_K=64)
    assert [_shape(c) for c in wide] == [(16, 8, 2), (16, 8, 3)]
    narrow = tm.prune_backward(cfgs, t(torch.float32), BLOCK_K=16)
    assert narrow and all(c.num_warps == 8 for c in narrow)
    assert {_shape(c)[0] for c in narrow} == {16, 32, 64}
    assert tm.prune_backward(cfgs, t(torch.bfloat16), BLOCK_K=32) == cfgs
    # 16-bit at K >= 64: 16-position tiles only, both warp counts (larger tiles spill)
    assert [_shape(c) for c in tm.prune_backward(cfgs, t(torch.bfloat16), BLOCK_K=64)] == [
        (16, 4, 2), (16, 4, 3), (16, 8, 2), (16, 8, 3)]
    # never empty: with no 8-warp configuration the first one stays
    four = [c for c in cfgs if c.num_warps == 4]
    assert tm.prune_backward(four, t(torch.float32), BLOCK_K=64) == four[:1]
