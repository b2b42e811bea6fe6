"""`make triton-check` compiles each kernel specialised as triton's launcher would specialise it.

The launcher marks 16-byte-aligned pointers and integers divisible by 16 (tt.divisibility=16)
and turns integers equal to 1 into constants; a kernel compiled without that is another binary
(other registers, spills). aot_check cannot be imported under TRITON_INTERPRET=1 (the test
session's setting), so this runs in a subprocess without it. No GPU and no compilation needed:
only the specialisation is computed.
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
    from triton.backends.compiler import GPUTarget
    from msca_kernels.triton import aot_check, spade

    fn = spade._spade_apply_kernel
    names = fn.arg_names

    def spec(x, n, CH):
        # x, gamma, beta, mean, rstd, out, n, P, CP, CH, INSTANCE, BLOCK
        args = (x, x, x, torch.zeros(4), torch.zeros(4), x, n, 4096, 65536, CH)
        sig, consts, attrs, options = aot_check._runtime_specialisation(
            fn, args, dict(INSTANCE=False, BLOCK=1024, num_warps=4, num_stages=2),
            GPUTarget("cuda", 90, 32))
        div = sorted(names[p[0]] for p, a in attrs.items() if ["tt.divisibility", 16] in a)
        const = sorted(names[p[0]] for p in consts if not fn.params[p[0]].is_constexpr)
        return dict(div=div, const=const, warps=options.num_warps, sig_CH=sig["CH"])

    base = torch.zeros(2 * 65536 + 1)
    print(json.dumps(dict(aligned=spec(base[:2 * 65536], 8192, 1),
                          shifted=spec(base[1:], 8191, 3))))
""")


def test_specialisation_follows_the_arguments():
    got = run_compiler_script(SCRIPT)
    aligned, shifted = got["aligned"], got["shifted"]
    # aligned x and the stats, n = 8192, P, CP divisible by 16; CH = 1 a constant
    assert {"x_ptr", "gamma_ptr", "out_ptr", "mean_ptr", "n", "P", "CP"} <= set(aligned["div"])
    assert aligned["const"] == ["CH"] and aligned["sig_CH"] == "constexpr"
    # x one float past a 16-byte boundary and n odd: not marked; CH = 3 an ordinary i32
    assert not {"x_ptr", "gamma_ptr", "out_ptr", "n"} & set(shifted["div"])
    assert {"mean_ptr", "P", "CP"} <= set(shifted["div"])
    assert shifted["const"] == [] and shifted["sig_CH"] == "i32"
    assert aligned["warps"] == shifted["warps"] == 4
