"""SPADE's elementwise passes on grids too small for their data (issue 12 follow-up).

apply_fwd_kernel and apply_bwd_kernel walk the (B*C, P) matrix in a grid-stride loop whose
group index follows a division-free cursor (GroupCursor in csrc/cuda/spade_cuda_kernels.cu:
each step adds the stride as whole rows, wrapped around C in batch mode, plus columns with a
carry). The launchers ask for one vector per thread up to 8192 blocks, so on the sizes the
emulator can run no thread ever takes a second step. Here the emulator caps those two
kernels' grids (emu.Emulator.set_grid_cap; the launch is still checked as requested) so that
every thread steps several times across row and channel boundaries, and the results are
compared with float64 PyTorch as in test_cuda_emulated.py.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import emu
from test_cuda_emulated import DT_IDS, DTYPES, PLANT_CHECKS, check_spade

kThreads = 256                 # spade_cuda_kernels.cu
VEC_BYTES = 16                 # one 16-byte access per vector

# (B, C, H, W), blocks: P = 63 (scalar path, stride of 4 rows + 4 columns: carries and the
# channel wrap), P = 1600 (vector path in every dtype: strides under and over a row), P = 256
# (vector path, whole-row strides), P = 1155 on three blocks (scalar, many steps).
CASES = [((3, 5, 7, 9), 1), ((2, 3, 40, 40), 1), ((3, 7, 16, 16), 1), ((2, 6, 33, 35), 3)]


def vectors(shape, dtype) -> int:
    """Steps of the elementwise loop: vectors when P allows 16-byte accesses, else elements."""
    B, C, H, W = shape
    V = VEC_BYTES // torch.empty((), dtype=dtype).element_size()
    return B * C * H * W // (V if (H * W) % V == 0 else 1)


@contextlib.contextmanager
def small_grid(E, blocks: int):
    """The elementwise kernels of E run on `blocks` blocks until the block ends."""
    E.take_capped_launches()
    for k in emu.GRID_STRIDE_KERNELS:
        E.set_grid_cap(k, blocks)
    try:
        yield
    finally:
        for k in emu.GRID_STRIDE_KERNELS:
            E.set_grid_cap(k, 0)


def check_stepping(E, shape, dtype, instance, blocks):
    # every thread of the capped grid takes at least two steps
    assert vectors(shape, dtype) >= 2 * blocks * kThreads, (shape, dtype, blocks)
    with small_grid(E, blocks):
        check_spade(E, shape, dtype, instance)
        # the forward's and the backward's elementwise pass both ran on the small grid
        assert E.take_capped_launches() == 2


@pytest.fixture(scope="module")
def E():
    return emu.Emulator()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("mode", ["batch", "instance"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}blocks")
def test_spade_grid_stride_steps_match_float64(E, case, mode, dtype):
    shape, blocks = case
    check_stepping(E, shape, dtype, mode == "instance", blocks)


def test_grid_cap_only_for_grid_stride_kernels(E):
    # the reductions launch one block per work item: a smaller grid would skip items
    with pytest.raises(ValueError, match="kernel: expected one of"):
        E.set_grid_cap("stats_kernel", 1)


# ---- planted stepping bugs: caught only because threads step ----------------------------------

STEPPING_BUGS = {
    "cursor_without_carry": lambda E: check_stepping(E, (3, 5, 7, 9), torch.float32, True, 1),
    "cursor_without_channel_wrap":
        lambda E: check_stepping(E, (3, 5, 7, 9), torch.float32, False, 1),
}


@pytest.mark.parametrize("bug", sorted(STEPPING_BUGS))
def test_planted_stepping_bug_is_caught(bug):
    mutant = emu.Emulator(bug)
    with pytest.raises((AssertionError, emu.EmulatorError)):
        STEPPING_BUGS[bug](mutant)


def test_every_planted_bug_has_a_check():
    assert set(PLANT_CHECKS) | set(STEPPING_BUGS) == set(emu.PLANTED_BUGS)
    assert not set(PLANT_CHECKS) & set(STEPPING_BUGS)
