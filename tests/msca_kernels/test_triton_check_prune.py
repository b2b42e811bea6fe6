"""`make triton-check` judges each configuration by what the kernel's prune keeps for the launch.

msca.prune_backward keeps the configurations worth timing; aot_check must see the same kept
set as triton's autotuner for each recorded launch (the K = 64 backward's two ROLE launches
included) and fail, in full mode, on a kept one that spills or when no kept one fits (one that
only exceeds shared memory the autotuner skips at launch). Runs in a subprocess without TRITON_INTERPRET (aot_check refuses it); only the
launches are recorded, nothing is compiled.
"""
import textwrap

import pytest

import msca_kernels as mk
from compiler_script import run_compiler_script

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)


SCRIPT = textwrap.dedent("""
    import json
    import torch
    import triton
    from msca_kernels.triton import aot_check

    launches = []
    for dtype in (torch.float32, torch.bfloat16):
        for case, kernel, args, meta in aot_check._launches(dtype):
            if not isinstance(kernel, triton.runtime.Autotuner):
                continue
            kept = aot_check.kept_by_prune(kernel, args, meta)
            launches.append(dict(
                dtype=str(dtype), case=case, name=kernel.fn.__name__, role=meta.get("ROLE"),
                configs=len(kernel.configs),
                kept=None if kept is None else [
                    dict(c.kwargs, warps=c.num_warps, stages=c.num_stages) for c in kept]))
    verdicts = {f"{spills},{smem_ok},{kept},{strict}": aot_check.verdict(spills, smem_ok, kept,
                                                                        strict)
                for spills in (True, False) for smem_ok in (True, False)
                for kept in (True, False, None) for strict in (True, False)}
    launch_fails = {f"{fits},{strict}": aot_check.launch_fails(list(fits), strict)
                    for fits in ((), (False,), (False, False), (False, True), (True,))
                    for strict in (True, False)}
    print(json.dumps(dict(launches=launches, verdicts=verdicts, launch_fails=launch_fails)))
""")


@pytest.fixture(scope="module")
def recorded():
    return run_compiler_script(SCRIPT)


def backward(launches, dtype, k):
    return [x for x in launches if x["dtype"] == dtype and f"K={k}" in x["case"]
            and x["name"].startswith("_msca_bwd")]


def tile(cfg):
    return cfg.get("BLOCK_P", cfg.get("BLOCK_T"))


def test_k64_backward_roles_are_checked_with_the_prunes_kept_set(recorded):
    for dtype, warps in (("torch.float32", {8}), ("torch.bfloat16", {4, 8})):
        bwd = backward(recorded["launches"], dtype, 64)
        # each pass twice, ROLE 1 then 2
        assert [(x["name"], x["role"]) for x in bwd] == [
            ("_msca_bwd_target_kernel", 1), ("_msca_bwd_target_kernel", 2),
            ("_msca_bwd_exemplar_kernel", 1), ("_msca_bwd_exemplar_kernel", 2)], dtype
        for x in bwd:
            assert x["kept"] and len(x["kept"]) < x["configs"], x
            assert {tile(c) for c in x["kept"]} == {16}, x
            assert {c["warps"] for c in x["kept"]} == warps, x


def test_below_k64_the_prune_keeps_larger_tiles(recorded):
    bwd = backward(recorded["launches"], "torch.float32", 16)
    assert [x["role"] for x in bwd] == [0, 0]
    for x in bwd:
        assert {tile(c) for c in x["kept"]} == {16, 32, 64}, x
        assert {c["warps"] for c in x["kept"]} == {8}, x


def test_kernels_without_a_prune_have_no_kept_set(recorded):
    others = [x for x in recorded["launches"] if not x["name"].startswith("_msca_bwd")]
    assert others and all(x["kept"] is None for x in others)


def test_only_a_kept_configuration_that_spills_fails_and_only_in_full_mode(recorded):
    v = recorded["verdicts"]
    # spills, shared memory within the limit, kept, strict: a kept one that only exceeds
    # shared memory is skipped by the autotuner at launch, not a failure by itself
    assert {k for k, s in v.items() if s == "FAIL"} == {"True,True,True,True",
                                                       "True,False,True,True"}
    assert {k for k, s in v.items() if s == "ok"} == {
        f"False,True,{k},{s}" for k in (True, False, None) for s in (True, False)}


def test_a_launch_fails_when_no_timed_configuration_fits_and_only_in_full_mode(recorded):
    f = recorded["launch_fails"]
    # (fits of the timed configurations), strict: () when none was compiled for the launch
    assert {k for k, failed in f.items() if failed} == {"(False,),True", "(False, False),True"}
