"""Build of torch-relu-ext: one extension module, torch_relu_ext._C.

Build in place (what dev.sh does):  python setup.py build_ext --inplace
Install (torch must already be importable, hence no build isolation):
    pip install --no-build-isolation .
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def version():
    ns = {}
    with open(os.path.join(ROOT, "torch_relu_ext", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


def build_cuda():
    """CUDA kernels are built whenever nvcc is found, GPU or not (CI has nvcc and
    no GPU). TORCH_RELU_EXT_CPU_ONLY=1 forces a CPU-only build. Never decided
    from torch.cuda.is_available()."""
    if os.environ.get("TORCH_RELU_EXT_CPU_ONLY", "0") not in ("", "0"):
        return False
    return CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))


# The operator library (schemas, kernels, autograd) plus the Python-only
# module init. The CMake build of the LibTorch library takes the same sources
# minus csrc/python.
SOURCES = (
    rel("csrc/ops.cpp")
    + rel("csrc/cpu/*.cpp")
    + rel("csrc/cpu/gemm/*.cpp")
    + rel("csrc/autograd/*.cpp")
    + rel("csrc/autocast/*.cpp")
    + rel("csrc/composite/*.cpp")
    + rel("csrc/python/*.cpp")
)
HEADERS = rel("csrc/**/*.h") + rel("csrc/**/*.cuh") + rel("include/**/*.h")
# -fno-trapping-math lets GCC turn the kernels' selects (x > 0 ? x : w * x)
# into vector blends; nothing here relies on floating-point traps.
# -ffp-contract=off: no fused multiply-adds the source did not write, so the
# loops built for each instruction set (csrc/cpu/loops.h) give bitwise the
# same results.
# -fopenmp: at::parallel_for is an inline OpenMP loop in ATen's headers
# (torch's wheels use the OpenMP backend): compiled without it, every kernel
# here ran on one thread (measured: 98% of samples on the main thread).
CXX_FLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
LINK_FLAGS = ["-fopenmp"]
if os.environ.get("TORCH_RELU_EXT_SANITIZE", "0") not in ("", "0"):
    # ASan + UBSan for the project's C++ (CPU-only build; see the README for
    # running the Python tests against it).
    CXX_FLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    LINK_FLAGS += ["-fsanitize=address,undefined"]
    os.environ["TORCH_RELU_EXT_CPU_ONLY"] = "1"
COMMON = dict(
    name="torch_relu_ext._C",
    depends=HEADERS,
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "csrc")],
    extra_link_args=LINK_FLAGS,
)

if build_cuda():
    # Explicit architectures (a machine without a GPU cannot be asked):
    # Ampere and Hopper machine code plus PTX for newer cards.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    ext = CUDAExtension(
        sources=SOURCES + rel("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": CXX_FLAGS + ["-DRELU_EXT_WITH_CUDA"], "nvcc": ["-O3", "-DRELU_EXT_WITH_CUDA"]},
        libraries=["cublasLt"],
        **COMMON,
    )
else:
    ext = CppExtension(sources=SOURCES, extra_compile_args={"cxx": CXX_FLAGS}, **COMMON)

setup(
    name="torch-relu-ext",
    version=version(),
    packages=["torch_relu_ext"],
    package_data={"torch_relu_ext": ["py.typed"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
