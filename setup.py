"""Builds tcestim._C: the CPU kernels always; the CUDA kernels where torch has CUDA and CUDA_HOME is set.

Override with TCESTIM_CUDA=0/1. Never decided by torch.cuda.is_available(): a build host without a
GPU must still build the CUDA kernels when its torch has CUDA.
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def fix_cuda_home() -> None:
    """Point torch at a CUDA toolkit that has headers when its own guess has none.

    torch derives CUDA_HOME from `which nvcc` when CUDA_HOME/CUDA_PATH are unset; a wrapper script
    such as /usr/local/bin/nvcc (-> /usr/local/cuda-13.0/bin/nvcc) then gives /usr/local, which has
    no cuda_runtime_api.h, and the build fails on the first CUDA include.
    """
    found = cpp_extension.CUDA_HOME
    for home in (found, os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            if home != found:
                cpp_extension.CUDA_HOME = home
                os.environ["CUDA_HOME"] = home
            return


def want_cuda() -> bool:
    override = os.environ.get("TCESTIM_CUDA")
    if override is not None:
        return override not in ("0", "", "false", "False")
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def openmp_flags() -> list:
    """-fopenmp where ATen parallelises with OpenMP, else nothing (the native pool is not inline).

    ATen's OpenMP at::parallel_for is inline in its headers: compiled without -fopenmp it runs the
    whole range on the calling thread. The extension then needs libgomp.so.1, and the loader binds
    that name to the libgomp.so.1 torch has already loaded (torch/lib ships one), so the kernels
    share torch's thread pool and torch.set_num_threads.
    """
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return []
    return ["-fopenmp"]


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx_flags = ["-O3", "-Wall", "-Wno-psabi", "-fno-math-errno"] + openmp_flags()
    kwargs = dict(
        name="tcestim._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=openmp_flags(),
    )
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp"))
    if want_cuda() and cuda_sources:
        fix_cuda_home()
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math"]
        kwargs["define_macros"] = [("TCESTIM_WITH_CUDA", "1")]
        return cpp_extension.CUDAExtension(sources=sources + cuda_sources, **kwargs)
    return cpp_extension.CppExtension(sources=sources, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
