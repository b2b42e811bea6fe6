"""`make gpu-check` (scripts/gpu_check.sh) in its CPU dry run: every step runs or, for those
that need a GPU, its program is checked to exist; scripts/gpu_checks.py runs its large-case and
profile logic on CPU at tiny sizes. A typo in the script fails here rather than on the first
GPU machine."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", GPU_CHECK_OUT=str(tmp_path), PY=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = (tmp_path / "SUMMARY.md").read_text()
    for step in ("env", "build", "cuda", "tests", "big", "profile", "bench"):
        assert f"| {step} | ok |" in summary, summary
    assert "| msca" in (tmp_path / "big.md").read_text()
    assert "synchronising call" in (tmp_path / "profile.md").read_text()
