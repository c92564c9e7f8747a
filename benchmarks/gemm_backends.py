"""Our operator on each CPU matrix-product backend, side by side, in one
process: the measurements behind the auto choice (docs/cpu_gemm.md).

    python -m benchmarks.gemm_backends [--dtypes float32,bfloat16] [--shapes 16x1024x1024,...] [--backends onednn,dnnl]

Per shape (rows x in x out) and dtype, median microseconds of
  fwd-<b>   fused_linear_relu_forward (with mask) on backend b
  inf-<b>   fused_linear_relu (no mask) on backend b
  bwd-<b>   fused_linear_relu_backward on backend b (--backward)
  dnn-relu  oneDNN's fused linear+ReLU (torch.ops.mkldnn._linear_pointwise)
  dnn-bare  oneDNN's linear with bias, no ReLU: the bare product
  addmm     torch.addmm (ATen's BLAS)
and the backend the auto setting picks. Competitors are interleaved (one call
each per round, shuffled order), inputs rotate over 3 sets, glibc malloc is
pinned as in benchmarks/run.py.
"""

import argparse
import os
import random
import statistics
import sys
import time

from benchmarks.run import MALLOC_ENV

if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.gemm_backends", *sys.argv[1:]], {**os.environ, **MALLOC_ENV})

import torch

import torch_relu_ext  # noqa: F401
from torch_relu_ext import _C

ops = torch.ops.relu_ext
SUITE = "32x1024x1024,256x1024x1024,2048x1024x1024,8192x1024x1024,256x64x4096,2048x64x4096,8192x128x4096,8192x64x1024,2048x4096x4096,512x4096x64"
SERVING = "1x1024x1024,4x1024x1024,16x1024x1024"
DLRM_LAYERS = [(13, 512), (512, 256), (256, 64), (479, 1024), (1024, 1024), (1024, 512), (512, 256)]
DLRM = ",".join(f"{b}x{i}x{o}" for b in (2048, 1, 4, 16) for i, o in dict.fromkeys(DLRM_LAYERS))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bench(fns, budget, min_reps=7, max_reps=2000):
    for f in fns.values():
        for _ in range(2):
            f()
    times = {k: [] for k in fns}
    items = list(fns.items())
    t0, i = time.perf_counter(), 0
    while i < min_reps or (time.perf_counter() - t0 < budget * len(fns) and i < max_reps):
        order = list(items)
        random.Random(i).shuffle(order)
        for name, f in order:
            s = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - s)
        i += 1
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--shapes", default=",".join([SERVING, SUITE, DLRM]))
    p.add_argument("--budget", type=float, default=0.1, help="seconds per competitor per shape")
    p.add_argument("--backward", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", default="own,onednn,dnnl,amx,aten", help="those to run (own: float32 only; amx: bfloat16)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lp = torch.ops.mkldnn._linear_pointwise
    print(f"# {torch.__version__}, {a.threads} threads, {_C.cpu_gemm()}")
    shapes = list(dict.fromkeys(tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")))
    for dname in a.dtypes.split(","):
        dt = DTYPES[dname]
        only = {"own": torch.float32, "amx": torch.bfloat16}
        backends = [be for be in a.backends.split(",") if only.get(be, dt) == dt]
        header = None
        for m, k, n in shapes:
            xs = [torch.randn(m, k, dtype=dt) for _ in range(3)]
            w = torch.randn(n, k, dtype=dt) / k**0.5
            b = torch.randn(n, dtype=dt)
            g = torch.randn(m, n, dtype=dt)
            it = [0]

            def nx():
                it[0] += 1
                return xs[it[0] % 3]

            fns = {}
            for be in backends:

                def fwd(be=be):
                    _C.set_cpu_gemm(be)
                    return ops.fused_linear_relu_forward(nx(), w, b)

                def inf(be=be):
                    _C.set_cpu_gemm(be)
                    return ops.fused_linear_relu(nx(), w, b)

                fns[f"fwd-{be}"], fns[f"inf-{be}"] = fwd, inf
                if a.backward:
                    _C.set_cpu_gemm(be)
                    mask = ops.fused_linear_relu_forward(xs[0], w, b)[1]

                    def bwd(be=be, mask=mask):
                        _C.set_cpu_gemm(be)
                        return ops.fused_linear_relu_backward(g, xs[0], w, mask, [True, True, True])

                    fns[f"bwd-{be}"] = bwd
            fns["dnn-relu"] = lambda: lp(nx(), w, b, "relu", [], "")
            fns["dnn-bare"] = lambda: lp(nx(), w, b, "none", [], "")
            fns["addmm"] = lambda: torch.addmm(b, nx(), w.t())
            r = bench(fns, a.budget)
            _C.set_cpu_gemm("auto")
            auto = _C.cpu_gemm_backend("forward", dname, m, n, k)
            if header is None:
                header = f"{'dtype':<9}{'shape':>16} {'auto':>7}" + "".join(f"{c:>11}" for c in r)
                print(header)
            row = f"{dname:<9}{f'{m}x{k}x{n}':>16} {auto:>7}" + "".join(f"{v:11.1f}" for v in r.values())
            print(row, flush=True)


if __name__ == "__main__":
    main()
