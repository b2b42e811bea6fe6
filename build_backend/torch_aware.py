"""PEP 517 build backend: setuptools, building against the torch of the target environment.

The C++ extension must be compiled against the very torch it will be imported with, so torch
cannot be a build requirement: with build isolation (pip's default) pip would install a second
torch into a throw-away environment (a bare `torch` is a multi-GB CUDA build) and the extension
would be built against that one. Instead this backend asks the target interpreter itself, run
without pip's isolation variables, where its torch lives, and appends that directory to
sys.path: setup.py then imports the installed torch, while the isolated setuptools, wheel and
ninja still come first. With --no-build-isolation torch is importable already and nothing
changes. With no torch at all every hook stops with one line saying how to install it.
"""
from __future__ import annotations

import os
import subprocess
import sys

from setuptools import build_meta as _setuptools

INSTALL_TORCH = (
    "msca-kernels builds its C++ extension against the torch installed in this environment, "
    "and there is none: install torch first, then run `pip install -e .` again; "
    "CPU: `pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`, "
    "CUDA 12.8: `pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128`")

# What pip sets to isolate the build; without them the interpreter sees its own site-packages.
_ISOLATION_VARS = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME", "PIP_BUILD_TRACKER")

_PROBE = "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))"


def target_torch_dir(python: str = sys.executable) -> str | None:
    """The directory holding the `torch` package of `python`'s own environment, or None."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARS}
    try:
        found = subprocess.run([python, "-c", _PROBE], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = found.stdout.strip().splitlines()
    return lines[-1] if found.returncode == 0 and lines and os.path.isdir(lines[-1]) else None


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def ensure_torch() -> None:
    """Make the target environment's torch importable here, or stop with INSTALL_TORCH."""
    if _torch_importable():
        return
    where = target_torch_dir()
    if where is None:
        print(f"error: {INSTALL_TORCH}", file=sys.stderr)
        raise SystemExit(1)
    sys.path.append(where)  # after the isolated build requirements, so theirs win
    # setuptools may run helpers in subprocesses: let them find the same torch
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), where)
                                               if p)


def _with_torch(hook):
    def wrapped(*args, **kwargs):
        ensure_torch()
        return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    wrapped.__doc__ = hook.__doc__
    return wrapped


# Every hook that runs setup.py (which imports torch) goes through ensure_torch.
get_requires_for_build_wheel = _with_torch(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_editable = _with_torch(_setuptools.get_requires_for_build_editable)
get_requires_for_build_sdist = _with_torch(_setuptools.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _with_torch(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _with_torch(
    _setuptools.prepare_metadata_for_build_editable)
build_wheel = _with_torch(_setuptools.build_wheel)
build_editable = _with_torch(_setuptools.build_editable)
build_sdist = _with_torch(_setuptools.build_sdist)
