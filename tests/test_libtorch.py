"""LibTorch (C++ without Python): builds the operator library with CMake, runs
its GoogleTest suite through CTest, installs it, builds examples/cpp as a
separate CMake project with find_package(TorchReluExt), and checks that the
example's forward and backward of a TorchScript model saved here match
Python's numbers."""

import glob
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
import torch.utils
from torch import nn

import torch_relu_ext
from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "cmake")
INSTALL = os.path.join(ROOT, "build", "cmake-install")
EXAMPLE_BUILD = os.path.join(ROOT, "build", "cmake-example")


def cmake_args(as_needed=False):
    args = ["-G", "Ninja", f"-DCMAKE_PREFIX_PATH={INSTALL};{torch.utils.cmake_prefix_path}"]
    if shutil.which("ccache"):
        args += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
    # No link flags for the torch wheel's NCCL: the project's CMake files
    # handle it (cmake/TorchReluExtWheelLibs.cmake), for consumers too.
    if as_needed:
        # What Ubuntu's and other distributions' linkers do by default: drop
        # libraries no symbol is taken from. The package must survive it.
        args.append("-DCMAKE_EXE_LINKER_FLAGS=-Wl,--as-needed")
    return args


def run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed():
    run(["cmake", "-S", ROOT, "-B", BUILD, f"-DCMAKE_INSTALL_PREFIX={INSTALL}", *cmake_args()])
    run(["cmake", "--build", BUILD])
    run(["cmake", "--install", BUILD])
    return INSTALL


def test_library_has_no_python(installed):
    lib = os.path.join(installed, "lib", "libtorch_relu_ext.so")
    assert os.path.exists(lib)
    symbols = run(["nm", "-D", "--defined-only", lib])
    assert "PyInit" not in symbols
    needed = run(["readelf", "-d", lib])
    assert "libpython" not in needed and "torch_python" not in needed


def test_installed_package_layout(installed):
    assert os.path.exists(os.path.join(installed, "include", "torch_relu_ext", "ops.h"))
    assert os.path.exists(os.path.join(installed, "lib", "cmake", "TorchReluExt", "TorchReluExtConfig.cmake"))


def _gencode(ninja_file):
    """The CUDA architectures (arch=compute_XX,code=sm_XX|compute_XX) of a ninja build file."""
    with open(ninja_file) as f:
        return set(re.findall(r"arch=compute_\w+,code=\w+", f.read()))


def test_cmake_build_compiles_cuda_like_setup_py(installed):
    # setup.py builds the CUDA kernels whenever nvcc is found (no GPU needed);
    # so does the CMake build (TORCH_RELU_EXT_CUDA=AUTO). Compile check only.
    from torch.utils.cpp_extension import CUDA_HOME

    if torch.version.cuda is None or CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        pytest.skip("needs a CUDA build of torch and nvcc")
    lib = os.path.join(installed, "lib", "libtorch_relu_ext.so")
    assert "libcublasLt" in run(["readelf", "-d", lib])
    assert ".nv_fatbin" in run(["readelf", "-S", "-W", lib]), "no CUDA device code in the library"
    cmake_archs = _gencode(os.path.join(BUILD, "build.ninja"))
    assert cmake_archs == {"arch=compute_80,code=sm_80", "arch=compute_90,code=sm_90", "arch=compute_90,code=compute_90"}
    # The same architectures as the Python extension (built by dev.sh before the tests).
    python_ninja = glob.glob(os.path.join(ROOT, "build", "temp.*", "build.ninja"))
    if python_ninja and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        assert _gencode(python_ninja[0]) == cmake_archs


def test_googletest_suite(installed):
    out = run(["ctest", "--test-dir", BUILD, "--output-on-failure"])
    assert "100% tests passed" in out, out


class Net(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.l1 = FusedLinearReLU(features, 16)
        self.l2 = nn.Linear(16, 12)
        self.act = DeadAwarePReLU(12)
        self.l3 = nn.Linear(12, 4)

    def forward(self, x):
        h = self.act(self.l2(self.l1(x)))
        return torch_relu_ext.functional.fused_linear_relu(h, self.l3.weight, self.l3.bias)


def test_cpp_example_matches_python(installed, tmp_path):
    run(["cmake", "-S", os.path.join(ROOT, "examples", "cpp"), "-B", EXAMPLE_BUILD, *cmake_args(as_needed=True)])
    run(["cmake", "--build", EXAMPLE_BUILD])
    assert "libtorch_relu_ext" in run(["readelf", "-d", os.path.join(EXAMPLE_BUILD, "run_model")])
    torch.manual_seed(0)
    rows, features = 9, 7
    model = Net(features)
    path = str(tmp_path / "model.pt")
    torch.jit.script(model).save(path)
    # The program only loads the model: the relu_ext operators must still be
    # registered (no "Unknown builtin op").
    out = run([os.path.join(EXAMPLE_BUILD, "run_model"), path, str(rows), str(features)])
    got = json.loads(out.strip().splitlines()[-1])

    x = torch.linspace(-2.0, 2.0, rows * features).reshape(rows, features).requires_grad_()
    y = model(x)
    y.pow(2).sum().backward()
    expected = {
        "out_sum": y.sum().item(),
        "out_abs_sum": y.abs().sum().item(),
        "out_00": y.flatten()[0].item(),
        "grad_input_abs_sum": x.grad.abs().sum().item(),
        "grad_params_abs_sum": sum(p.grad.abs().sum().item() for p in model.parameters()),
    }
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (k, got[k], v)
    assert expected["grad_params_abs_sum"] > 0 and expected["out_abs_sum"] > 0
