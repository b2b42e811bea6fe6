"""The interpreter runs the kernels as imported, even if their files change on disk afterwards.

Triton's interpreter rewrites a kernel from its source file, read again (at the imported line
numbers) the first time the kernel runs. A kernel file edited between import and that launch
(a shared working tree, an editor saving during a test run) made a test fail with a KeyError
inside the interpreter, once, in tests/msca_kernels/test_triton_backward_roles.py.
_common.read_kernel_sources_now reads every kernel at import instead. Checked in a subprocess
on a copy of the package, whose kernel files are edited after import: the shared tree's files
are never touched.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import msca_kernels as mk

pytestmark = pytest.mark.skipif(not mk.available_backends()["triton"],
                                reason=mk.available_backends()["triton"].reason)

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import sys
    copy = sys.argv[1]
    sys.path.insert(0, copy)
    import torch
    from msca_kernels.triton import msca as tm, spade as ts
    assert tm.__file__.startswith(copy) and ts.__file__.startswith(copy), tm.__file__

    # the edit after import: every kernel moves down by a few lines
    for module in (tm, ts):
        with open(module.__file__) as fh:
            text = fh.read()
        with open(module.__file__, "w") as fh:
            fh.write("# edited after import\\n" * 7 + text)

    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    B, N, M2, M1, K, P2, P1 = 1, 5, 3, 4, 6, 20, 18
    fx2, fc2, fc1 = r(B, N, P2), r(B, M2, P2), r(B, M1, P1)
    phi, psi, pb, qb, mask = r(K, N + M2), r(K, M1), r(K), r(K), r(B, K)
    out, V, lse = tm.triton_msca_fwd(fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None)
    grads = tm.triton_msca_bwd(out, fx2, fc2, fc1, phi, pb, psi, qb, mask, None, None, V, lse,
                               False, False)
    x, gamma, beta = r(2, 3, 40), r(2, 3, 40), r(2, 3, 40)
    y, mean, rstd = ts.triton_spade_norm_fwd(x, gamma, beta, None, None, True, 1e-5)
    sgrads = ts.triton_spade_norm_bwd(y, x, gamma, mean, rstd, True, True)
    finite = all(bool(t.isfinite().all()) for t in (out, *grads[:8], y, *sgrads))
    print("ran", finite)
""")


def test_kernels_edited_on_disk_after_import_still_run(tmp_path):
    shutil.copytree(ROOT / "msca_kernels", tmp_path / "msca_kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "ran True", res.stdout[-2000:]
