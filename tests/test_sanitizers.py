"""The C++ suite built with AddressSanitizer + UndefinedBehaviorSanitizer
(CMake option TORCH_RELU_EXT_SANITIZE) runs with zero reports, LeakSanitizer
included. LibTorch itself is not instrumented; the project's code is."""

import os
import shutil
import subprocess

import torch.utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "cmake-asan")


def run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def test_cpp_suite_under_asan_ubsan():
    args = [
        "cmake",
        "-S",
        ROOT,
        "-B",
        BUILD,
        "-G",
        "Ninja",
        "-DTORCH_RELU_EXT_SANITIZE=ON",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        # Line tables only (CMake's default here is full -g): reports keep
        # file:line, the build takes a third less time.
        "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
    ]
    if shutil.which("ccache"):
        args.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
    rc, out = run(args)
    assert rc == 0, out[-3000:]
    rc, out = run(["cmake", "--build", BUILD, "--target", "test_ops"])
    assert rc == 0, out[-3000:]
    binary = os.path.join(BUILD, "test_ops")
    rc, out = run(["ldd", binary])
    assert "libasan" in out and "libubsan" in out, "the test binary is not instrumented"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:halt_on_error=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    rc, out = run([binary], env=env)
    assert rc == 0, out[-5000:]
    assert "[  PASSED  ]" in out
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in out, out[-5000:]
