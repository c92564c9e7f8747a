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


def dnnl_library():
    """The directory of oneDNN's library from the onednn-cpu-gomp package
    (csrc/cpu/gemm/dnnl_matmul.h), or None: not installed, or
    TORCH_RELU_EXT_DNNL=0. Without it the `dnnl` product backend is left out."""
    if os.environ.get("TORCH_RELU_EXT_DNNL", "1").strip().lower() in ("", "0", "off", "false", "no"):
        return None
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("onednn-cpu-gomp")
    except PackageNotFoundError:
        return None
    for f in dist.files or []:
        if f.name == "libdnnl.so.3":
            return os.path.dirname(os.path.realpath(f.locate()))
    return None


def build_inputs():
    """csrc/sources.txt, shared with CMakeLists.txt: {kind: [values]}."""
    inputs = {}
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                kind, value = line.split(None, 1)
                inputs.setdefault(kind, []).append(value)
    return inputs


# The operator library (schemas, kernels, autograd) plus the Python-only
# module init. The CMake build of the LibTorch library takes the same "lib"
# and "cuda" sources, without the "python" ones.
INPUTS = build_inputs()
SOURCES = [src for pattern in INPUTS["lib"] + INPUTS["python"] for src in rel(pattern)]
CUDA_SOURCES = [src for pattern in INPUTS["cuda"] for src in rel(pattern)]
HEADERS = rel("csrc/**/*.h") + rel("csrc/**/*.cuh") + rel("include/**/*.h")
# -fno-trapping-math lets GCC turn the kernels' selects (x > 0 ? x : w * x)
# into vector blends; nothing here relies on floating-point traps.
# -ffp-contract=off: no fused multiply-adds the source did not write, so the
# loops built for each instruction set (csrc/cpu/dispatch.h) give bitwise the
# same results.
# -fopenmp: at::parallel_for is an inline OpenMP loop in ATen's headers
# (torch's wheels use the OpenMP backend): without it every kernel runs on
# one thread.
CXX_FLAGS = ["-O3", "-fno-trapping-math", "-ffp-contract=off", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
LINK_FLAGS = ["-fopenmp"]
if os.environ.get("TORCH_RELU_EXT_SANITIZE", "0") not in ("", "0"):
    # ASan + UBSan for the project's C++ (CPU-only build; docs/reliability.md
    # shows how to run the Python tests against it).
    CXX_FLAGS += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    LINK_FLAGS += ["-fsanitize=address,undefined"]
    os.environ["TORCH_RELU_EXT_CPU_ONLY"] = "1"
DNNL_DIR = dnnl_library()
if DNNL_DIR is not None:
    CXX_FLAGS += ["-DRELU_EXT_WITH_DNNL"]
    # Installed, first in the environment's own lib/ (beside
    # lib/pythonX.Y/site-packages/torch_relu_ext), so that a wheel never loads
    # the build machine's copy; built in place, where it is now.
    LINK_FLAGS += [f"-L{DNNL_DIR}", "-l:libdnnl.so.3", "-Wl,-rpath,$ORIGIN/../../..", f"-Wl,-rpath,{DNNL_DIR}"]
COMMON = dict(
    name="torch_relu_ext._C",
    depends=HEADERS,
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "csrc")],
    extra_link_args=LINK_FLAGS,
)

if build_cuda():
    # Explicit architectures (a machine without a GPU cannot be asked).
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", INPUTS["cuda_arch"][0])
    ext = CUDAExtension(
        sources=SOURCES + CUDA_SOURCES,
        extra_compile_args={"cxx": CXX_FLAGS + ["-DRELU_EXT_WITH_CUDA"], "nvcc": ["-O3", "-DRELU_EXT_WITH_CUDA"]},
        libraries=["cublasLt"],
        **COMMON,
    )
else:
    ext = CppExtension(sources=SOURCES, extra_compile_args={"cxx": CXX_FLAGS}, **COMMON)

setup(
    name="torch-relu-ext",
    version=version(),
    packages=["torch_relu_ext", "torch_relu_ext.integrations"],
    package_data={"torch_relu_ext": ["py.typed"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
