"""`pip install -e .` as a user types it: build isolation on, against the installed torch.

The fast tests check the build backend's pieces (build_backend/torch_aware.py); the slow one
does the real thing: a fresh clone, a fresh venv with torch==2.13.0, plain `pip install -e .`,
then the fused cpu op.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "build_backend"))
import torch_aware  # noqa: E402


def test_pyproject_uses_the_torch_aware_backend_without_torch():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        build = tomllib.load(f)["build-system"]
    assert build["build-backend"] == "torch_aware"
    assert build["backend-path"] == ["build_backend"]
    assert "ninja" in build["requires"]
    assert not any(r.split("=")[0].split(">")[0].strip() == "torch" for r in build["requires"])


def test_finds_the_target_torch_despite_pip_isolation_variables(monkeypatch, tmp_path):
    # pip's isolated build sets PYTHONPATH/PYTHONNOUSERSITE; the probe must look past them
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")
    assert torch_aware.target_torch_dir(sys.executable) == os.path.dirname(
        os.path.dirname(torch.__file__))


def test_an_interpreter_without_torch_gives_none(tmp_path):
    venv.create(tmp_path / "bare", with_pip=False)
    bare = tmp_path / "bare" / "bin" / "python"
    assert torch_aware.target_torch_dir(str(bare)) is None


def test_no_torch_stops_with_one_line_saying_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(torch_aware, "_torch_importable", lambda: False)
    monkeypatch.setattr(torch_aware, "target_torch_dir", lambda python=None: None)
    with pytest.raises(SystemExit):
        torch_aware.build_editable("/nonexistent")
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install torch==" in err and "whl/cpu" in err and "whl/cu128" in err


def test_isolated_build_sees_the_target_torch(monkeypatch):
    where = os.path.dirname(os.path.dirname(torch.__file__))
    monkeypatch.setattr(torch_aware, "_torch_importable", lambda: False)
    monkeypatch.setattr(torch_aware, "target_torch_dir", lambda python=None: where)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != where])
    monkeypatch.delenv("PYTHONPATH", raising=False)
    torch_aware.ensure_torch()
    assert sys.path[-1] == where and os.environ["PYTHONPATH"] == where


@pytest.mark.slow
def test_fresh_clone_fresh_venv_pip_install_e(tmp_path):
    """python3.11 -m venv v && v/bin/pip install torch==2.13.0 && v/bin/pip install -e .
    (minutes: it installs torch and compiles the extension)."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to clone the repository")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True)
    venv.create(tmp_path / "v", with_pip=True)
    pip = [str(tmp_path / "v" / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "-q", f"torch=={torch.__version__.split('+')[0]}"],
                   check=True)
    subprocess.run([*pip, "install", "-q", "-e", "."], cwd=clone, check=True)
    code = ("import torch, msca_kernels as mk; assert mk.available_backends()['cpu'];"
            "a = torch.randn(1, 8, 6, 6);"
            "y = mk.msca_attention(a, torch.randn(1, 4, 6, 6), torch.randn(1, 4, 5, 5),"
            " torch.randn(3, 12), torch.randn(3, 4), backend='cpu');"
            "print(tuple(y.shape), torch.__version__)")
    done = subprocess.run([str(tmp_path / "v" / "bin" / "python"), "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert "(1, 8, 5, 5)" in done.stdout
