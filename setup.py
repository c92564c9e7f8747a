"""Build of torch-relu-ext: one extension module, torch_relu_ext._C.

Build in place (what dev.sh does):  python setup.py build_ext --inplace
Install (torch must already be importable, hence no build isolation):
    pip install --no-build-isolation .
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def rel(pattern):
    return sorted(
        os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    )


def version():
    ns = {}
    with open(os.path.join(ROOT, "torch_relu_ext", "_version.py")) as f:
        exec(f.read(), ns)
    return ns["__version__"]


# The operator library (schemas, CPU kernels, autograd) plus the Python-only
# module init. The CMake build of the LibTorch library takes the same sources
# minus csrc/python.
SOURCES = rel("csrc/ops.cpp") + rel("csrc/cpu/*.cpp") + rel("csrc/autograd/*.cpp") + rel("csrc/python/*.cpp")
HEADERS = rel("csrc/**/*.h") + rel("include/**/*.h")

ext = CppExtension(
    name="torch_relu_ext._C",
    sources=SOURCES,
    depends=HEADERS,
    include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "csrc")],
    # -fno-trapping-math lets GCC turn the kernels' selects (x > 0 ? x : w * x)
    # into vector blends; nothing here relies on floating-point traps.
    extra_compile_args={"cxx": ["-O3", "-fno-trapping-math", "-Wall", "-Wextra", "-Wno-unused-parameter"]},
)

setup(
    name="torch-relu-ext",
    version=version(),
    packages=["torch_relu_ext"],
    package_data={"torch_relu_ext": ["py.typed"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
