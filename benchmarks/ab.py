"""Two builds of the project side by side: does a change move the operators'
speed beyond noise? For refactors that must not change performance.

    python -m benchmarks.ab OLD_TREE NEW_TREE [--rounds 3]

Each tree must hold a built checkout (bash dev.sh build). Every round runs a
fresh process per tree, alternating, with glibc malloc pinned as in
benchmarks.run; the table gives each case's median time over the rounds and
new/old. Differences under ~5-7% are noise on the 2-core VMs.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# fused_linear_relu forward and fwd+bwd (small-k, serving-size and mid-size
# products, float32 and bfloat16), dead_prelu forward and fwd+bwd, one
# training-mode module call (statistics included).
LINEAR_SHAPES = [(2048, 256, 64), (16, 512, 256), (2048, 13, 512), (256, 1024, 1024)]
PRELU_SHAPES = [(64, 256, 14, 14), (4096, 512)]


def cases():
    import torch

    import torch_relu_ext.nn as rnn

    ops = torch.ops.relu_ext
    torch.manual_seed(0)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        for m, k, n in LINEAR_SHAPES:
            x, w, b = torch.randn(m, k, dtype=dt), torch.randn(n, k, dtype=dt) * 0.05, torch.randn(n, dtype=dt)
            out[f"linear fwd {str(dt)[6:]} {m}x{k}x{n}"] = lambda x=x, w=w, b=b: ops.fused_linear_relu(x, w, b)
            params = [t.clone().requires_grad_() for t in (x, w, b)]
            out[f"linear fwd+bwd {str(dt)[6:]} {m}x{k}x{n}"] = lambda p=params: ops.fused_linear_relu(*p).sum().backward()
    for shape in PRELU_SHAPES:
        x, w = torch.randn(*shape), torch.rand(shape[1])
        out[f"prelu fwd {shape}"] = lambda x=x, w=w: ops.dead_prelu(x, w)
        params = [x.clone().requires_grad_(), w.clone().requires_grad_()]
        out[f"prelu fwd+bwd {shape}"] = lambda p=params: ops.dead_prelu(*p)[0].sum().backward()
    layer, xl = rnn.FusedLinearReLU(512, 512).train(), torch.randn(64, 512)
    out["module train 64x512x512"] = lambda: layer(xl)
    return out


def measure(budget):
    result = {}
    for name, fn in cases().items():
        for _ in range(3):
            fn()
        times, end = [], time.perf_counter() + budget
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        result[name] = statistics.median(times) * 1e6
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per case per process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.budget)))
        return
    from benchmarks.run import MALLOC_ENV

    runs = {"old": [], "new": []}
    for _ in range(args.rounds):
        for key in ("old", "new"):
            tree = os.path.abspath(getattr(args, key))
            # This file as a script: its folder, not a tree, is first on the path.
            env = {**os.environ, **MALLOC_ENV, "PYTHONPATH": tree}
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--budget", str(args.budget), "x", "y"]
            runs[key].append(json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout))
    ratios = []
    print("| case | old (us) | new (us) | new/old |\n|---|---|---|---|")
    for name in runs["old"][0]:
        old = statistics.median(r[name] for r in runs["old"])
        new = statistics.median(r[name] for r in runs["new"])
        ratios.append(new / old)
        print(f"| {name} | {old:.1f} | {new:.1f} | {new / old:.2f} |")
    print(f"\nmedian new/old: {statistics.median(ratios):.3f} over {len(ratios)} cases, {args.rounds} rounds")


if __name__ == "__main__":
    main()
