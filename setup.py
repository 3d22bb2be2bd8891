"""Build script: the Python packages plus the dvfl_kernels._C extension (metadata in pyproject.toml).

The extension always contains the C++ CPU kernels. CUDA kernels are added when a CUDA build of torch
and nvcc are present, or when forced with FORCE_CUDA=1 (or TORCH_CUDA_ARCH_LIST); DVFL_SKIP_CUDA=1
leaves them out. A build asked for CUDA that cannot compile it fails; it never quietly goes CPU-only.
Build against the installed torch with `pip install --no-build-isolation .`.
"""
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def extension_modules():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cu"))
    host_cuda_sources = [s for s in sources if s.endswith("_cuda.cpp")]
    cpu_sources = [s for s in sources if s not in host_cuda_sources]

    forced = _truthy("FORCE_CUDA") or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    skip = _truthy("DVFL_SKIP_CUDA")
    with_cuda = not skip and (forced or (torch.version.cuda is not None and CUDA_HOME is not None))
    if with_cuda and (torch.version.cuda is None or CUDA_HOME is None):
        raise RuntimeError(
            "dvfl: CUDA kernels were requested (FORCE_CUDA / TORCH_CUDA_ARCH_LIST) but "
            + ("the installed torch is a CPU-only build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) was found")
            + "; install a CUDA torch and toolkit, or set DVFL_SKIP_CUDA=1 for a CPU-only build"
        )
    # -fopenmp (also enables): the CPU kernels' `omp simd` loops; -fno-trapping-math / -fno-math-errno let GCC
    # if-convert (and so vectorise) branches over float math. Nothing relies on FP exceptions or errno;
    # IEEE inf/NaN semantics are kept (no -ffast-math).
    # -fopenmp: at::parallel_for is inline OpenMP; without it the rows run on one thread.
    # -ffp-contract=off: a vectorised loop's peeled / remainder iterations run as scalar code, and GCC
    # contracted a*b+c into FMAs differently there than in the vector body; which iterations get
    # peeled depends on where buffers (stack arrays included) happen to lie, so the same call gave
    # results 1 ulp apart now and then (seen as a broken bit-exact resume). Without contraction both
    # paths round identically.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=off"]
    cxx_flags += os.environ.get("DVFL_EXTRA_CXXFLAGS", "").split()
    if with_cuda:
        return [
            CUDAExtension(
                "dvfl_kernels._C",
                cpu_sources + host_cuda_sources + cuda_sources,
                define_macros=[("DVFL_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [CppExtension("dvfl_kernels._C", cpu_sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=extension_modules(), cmdclass={"build_ext": build_ext_class()})
