"""Builds msca_kernels._C from csrc/ with torch.utils.cpp_extension.

The CPU part (csrc/ops.cpp, csrc/cpu/*.cpp) is always built, with OpenMP so at::parallel_for
uses every core. The CUDA part (csrc/cuda/*.cu raw kernels and the *_bindings.cpp that register
them for the CUDA dispatch key) is added only where nvcc and a CUDA build of torch are both
present; set MSCA_NO_CUDA=1 to skip it anyway. TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0+PTX".
-march=native: every machine builds its own copy (pip install -e . on that machine), so the
kernels use its widest vector unit; set MSCA_PORTABLE=1 for a binary that runs on any x86-64.

torch is imported from the environment being installed into (build_backend/torch_aware.py makes
it visible under pip's build isolation), and the package requires exactly that torch release:
the extension is only valid with the torch it was compiled against. The sources compile in
parallel with ninja (MAX_JOBS limits the jobs); without ninja torch falls back to one file at a
time.
"""
import glob
import os

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
# "2.13.0+cpu" -> "torch==2.13.0", which any local build of that release (+cpu, +cu128) satisfies,
# so pip keeps the installed torch and never fetches another.
BUILT_AGAINST_TORCH = "torch==" + torch.__version__.split("+")[0]


def rel(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def extension():
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-std=c++17"]
    if os.environ.get("MSCA_PORTABLE") != "1":
        cxx.append("-march=native")
    sources = rel("csrc/ops.cpp") + rel("csrc/cpu/*.cpp")
    # csrc/cuda/link_check.cpp is a stand-alone program of make cuda-check, not part of the module
    cuda_sources = rel("csrc/cuda/*.cu") + rel("csrc/cuda/*_bindings.cpp")
    want_cuda = (os.environ.get("MSCA_NO_CUDA") != "1" and torch.version.cuda is not None
                 and CUDA_HOME is not None and cuda_sources)
    common = dict(name="msca_kernels._C", include_dirs=[os.path.join(HERE, "csrc")],
                  extra_link_args=["-fopenmp"])
    if want_cuda:
        # sm_80 and sm_90 code, plus sm_90 PTX so newer GPUs can JIT-compile the kernels.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        # The same device flags as csrc/cuda/check.sh (make cuda-check), which verifies that
        # these kernels compile for sm_80/sm_90 without register spills.
        nvcc = ["-O3", "--use_fast_math", "-std=c++17", "-lineinfo"]
        return CUDAExtension(sources=sources + cuda_sources,
                             extra_compile_args={"cxx": cxx + ["-DMSCA_WITH_CUDA"], "nvcc": nvcc},
                             **common)
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **common)


setup(
    name="msca-kernels",
    version="0.1.0",
    description="Fused MSCA attention and SPADE kernels, and example-guided scene synthesis",
    packages=find_packages(include=["msca_kernels", "msca_kernels.*", "msca", "msca.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=[BUILT_AGAINST_TORCH, "numpy", "pillow", "tqdm"],
    entry_points={"console_scripts": ["msca=msca.cli:main"]},
)
