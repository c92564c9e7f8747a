"""The benchmark suite: both operators against their competitors, as ratios
measured in one process and one run.

    python -m benchmarks.run [--quick] [--threads N] [--out DIR]   (or: bash dev.sh bench --quick)

fused_linear_relu, forward (inference: no mask; and ours with the mask, as
training runs it) and forward+backward, in float32 and bfloat16, against
  eager    F.relu(F.linear(x, w, b))
  onednn   oneDNN's fused linear+ReLU, torch.ops.mkldnn._linear_pointwise
           (what Inductor's CPU freezing path and IPEX call; forward)
  freeze   torch.compile of an nn.Linear+ReLU module with
           torch._inductor.config.freezing (inference; forward, CPU)
  compile  torch.compile of the eager function (default mode)
  autotune the same under mode="max-autotune-no-cudagraphs" (--autotune)
  floor    torch.addmm(b, x, w.T): ATen's product with bias (forward)
  bare     oneDNN's linear with bias and no ReLU: the library's bare product
dead_prelu (output + per-channel active counts), forward and backward, against
  eager    F.prelu(x, w) plus (x > 0).sum(non-channel dims), the naive way
  compile  torch.compile of that
  floor    x.clone(): one read and one write of the tensor (bandwidth bound)
plus the activation bytes kept for backward (saved_tensors_hooks).

Method: fixed thread count (recorded), warm-up, then rounds until a time
budget, each round calling every competitor once (interleaved, so a slow
spell of the machine hits all alike); median and inter-quartile range; each
round (in a shuffled order) takes the next of 3
input sets so caches do not flatter anyone; glibc malloc pinned at its steady
state (see MALLOC_ENV) so that page faults do not depend on history. On CUDA (when visible and
--device cuda) timing uses CUDA events. Results: a markdown table, CSV, JSON
and a PNG plot of the ratios, in --out (default benchmarks/results).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time

# glibc malloc pinned at its steady state for every competitor alike: below
# 32 MiB from the heap and kept, 32 MiB and more always from fresh pages
# (unpinned, page faults made a call's time depend on what ran before; see
# docs/performance.md). Set before the first allocation: the process
# re-executes itself once with these variables.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]], {**os.environ, **MALLOC_ENV})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_relu_ext  # noqa: E402
from torch_relu_ext.utils import saved_tensor_bytes  # noqa: E402

ops = torch.ops.relu_ext

LINEAR_FULL = [  # (batch, in_features, out_features)
    (32, 1024, 1024),
    (256, 1024, 1024),
    (2048, 1024, 1024),
    (8192, 1024, 1024),
    (256, 64, 4096),
    (2048, 64, 4096),
    (8192, 128, 4096),
    (8192, 64, 1024),
    (2048, 4096, 4096),
    (512, 4096, 64),
]
# Serving batches, and the recommender MLPs of DLRM (bottom 13-512-256-64,
# top 479-1024-1024-512-256) at training batch 2048 and serving batch 16.
LINEAR_SERVING = [(1, 1024, 1024), (4, 1024, 1024), (16, 1024, 1024)]
DLRM_LAYERS = [(13, 512), (512, 256), (256, 64), (479, 1024), (1024, 1024), (1024, 512)]
LINEAR_DLRM = [(b, i, o) for b in (2048, 16) for i, o in DLRM_LAYERS]
LINEAR_QUICK = [(256, 1024, 1024), (2048, 64, 4096), (8192, 128, 1024), (4, 1024, 1024), (2048, 13, 512)]
PRELU_FULL = [  # (shape, channels_last)
    ((8192, 1024), False),
    ((64, 256), False),
    ((32, 64, 56, 56), False),
    ((32, 64, 56, 56), True),
    ((8, 256, 28, 28), True),
]
PRELU_QUICK = [((8192, 1024), False), ((32, 64, 56, 56), False), ((32, 64, 56, 56), True)]


class Timer:
    def __init__(self, device, budget_s, min_reps, max_reps):
        self.device, self.budget, self.min_reps, self.max_reps = device, budget_s, min_reps, max_reps

    def group(self, competitors):
        """{name: (fn, inputs)} -> {name: (median ms, IQR ms, repetitions)}.
        Competitors are interleaved, one call each per round, so a slow spell
        of the machine hits all alike; the order is shuffled every round, so no
        one always pays for the cache evictions of a memory-hungry
        predecessor (docs/performance.md)."""
        for fn, inputs in competitors.values():
            for i in range(3):
                fn(*inputs[i % len(inputs)])
        self.sync()
        times = {name: [] for name in competitors}
        budget = self.budget * len(competitors)
        start_all, i = time.perf_counter(), 0
        while i < self.min_reps or (time.perf_counter() - start_all < budget and i < self.max_reps):
            # A fresh order every round: a cyclic rotation kept each
            # competitor behind the same predecessor (measured: ours 1.5x
            # slower when it always ran right after a frozen Inductor module).
            order = list(competitors.items())
            random.Random(i).shuffle(order)
            for name, (fn, inputs) in order:
                times[name].append(self.once(fn, inputs[i % len(inputs)]))
            i += 1
        out = {}
        for name, ts in times.items():
            q = statistics.quantiles(ts, n=4) if len(ts) >= 4 else [min(ts), 0, max(ts)]
            out[name] = (statistics.median(ts), q[2] - q[0], len(ts))
        return out

    def once(self, fn, args):
        if self.device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn(*args)
            e.record()
            e.synchronize()
            return s.elapsed_time(e)
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1e3

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()


class Progress:
    def __init__(self, total):
        self.total, self.done, self.t0 = total, 0, time.time()

    def step(self, label):
        self.done += 1
        width = 30
        filled = int(width * self.done / self.total)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {time.time() - self.t0:5.0f}s {label[:40]:<40}"
        )
        sys.stderr.flush()
        if self.done == self.total:
            sys.stderr.write("\n")


def fresh_compile(*fns_and_modes):
    """torch.compile of each (fn, mode) for one shape, with dynamo's caches
    emptied first: one compiled function across all shapes hit dynamo's
    recompile limit (8) after 8 shapes and silently ran eager for the rest.
    Dynamo caches per code object, so each mode gets its own function."""
    torch._dynamo.reset()
    return [torch.compile(fn, mode=mode, dynamic=False) for fn, mode in fns_and_modes]


def eager_linear(x, w, b):
    return F.relu(F.linear(x, w, b))


def eager_linear_for_autotune(x, w, b):
    return eager_linear(x, w, b)


def ours_linear(x, w, b):
    return ops.fused_linear_relu(x, w, b)


def frozen_module(w, b):
    """torch.compile of Linear+ReLU with Inductor's freezing (weights folded
    as constants; on CPU the pair becomes one oneDNN linear with a ReLU
    post-op). Compiled by its first call, which runs under the flag."""
    mod = torch.nn.Sequential(torch.nn.Linear(w.shape[1], w.shape[0]), torch.nn.ReLU()).to(w.device, w.dtype).eval()
    with torch.no_grad():
        mod[0].weight.copy_(w)
        mod[0].bias.copy_(b)
    for p in mod.parameters():
        p.requires_grad_(False)
    fn = torch.compile(mod, dynamic=False)
    return fn


def bench_linear(shapes, timer, device, dtype, progress, use_compile, autotune=False):
    rows = []
    for batch, k, o in shapes:
        compiled = {}
        if use_compile:
            modes = [(eager_linear, "default")] + (
                [(eager_linear_for_autotune, "max-autotune-no-cudagraphs")] if autotune else []
            )
            compiled = dict(zip(("compile", "autotune"), fresh_compile(*modes)))
        g = torch.Generator(device="cpu").manual_seed(batch * 7 + k + o)
        sets = [(torch.randn(batch, k, generator=g).to(device, dtype),) for _ in range(3)]
        w = (torch.randn(o, k, generator=g) / k**0.5).to(device, dtype)
        b = torch.randn(o, generator=g).to(device, dtype)
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        gy = torch.randn(batch, o, generator=g).to(device, dtype)
        r = {"op": "fused_linear_relu", "shape": f"{batch}x{k}x{o}", "dtype": str(dtype).replace("torch.", "")}
        with torch.no_grad():
            fwd = {
                "ours": (lambda x: ours_linear(x, w, b), sets),
                "ours_mask": (lambda x: ops.fused_linear_relu_forward(x, w, b), sets),
                "eager": (lambda x: eager_linear(x, w, b), sets),
                "floor": (lambda x: torch.addmm(b, x, w.t()), sets),
            }
            if device == "cpu" and torch.backends.mkldnn.is_available():
                lp = torch.ops.mkldnn._linear_pointwise
                fwd["onednn"] = (lambda x: lp(x, w, b, "relu", [], ""), sets)
                fwd["bare"] = (lambda x: lp(x, w, b, "none", [], ""), sets)
            for name, fn in compiled.items():
                fwd[name] = ((lambda f: lambda x: f(x, w, b))(fn), sets)
            if use_compile and device == "cpu":
                frozen = frozen_module(w, b)
                with torch._inductor.config.patch(freezing=True):
                    frozen(sets[0][0])
                fwd["freeze"] = (frozen, sets)
            r.update({f"fwd_{name}": v for name, v in timer.group(fwd).items()})

        def step(fn):
            def run(x):
                xg = x.detach().requires_grad_()
                y = fn(xg, wg, bg)
                torch.autograd.grad(y, (xg, wg, bg), gy)

            return run

        fb = {"ours": (step(ours_linear), sets), "eager": (step(eager_linear), sets)}
        for name, fn in compiled.items():
            fb[name] = (step(fn), sets)
        r.update({f"fb_{name}": v for name, v in timer.group(fb).items()})
        x0 = sets[0][0].detach().requires_grad_()
        r["saved_ours"] = saved_tensor_bytes(lambda: ours_linear(x0, wg, bg), [wg, bg])
        r["saved_eager"] = saved_tensor_bytes(lambda: eager_linear(x0, wg, bg), [wg, bg])
        rows.append(r)
        progress.step(r["shape"])
    return rows


def eager_prelu_count(x, w):
    dims = [d for d in range(x.dim()) if d != 1]
    return F.prelu(x, w), (x > 0).sum(dims)


def bench_prelu(cases, timer, device, dtype, progress, use_compile):
    rows = []
    for shape, cl in cases:
        compiled = fresh_compile((eager_prelu_count, "default"))[0] if use_compile else None
        g = torch.Generator(device="cpu").manual_seed(sum(shape))
        mf = torch.channels_last if cl else torch.contiguous_format
        sets = [(torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=mf),) for _ in range(3)]
        c = shape[1]
        w = torch.rand(c, generator=g).to(device, dtype)
        gy = torch.randn(shape, generator=g).to(device, dtype).contiguous(memory_format=mf)
        r = {
            "op": "dead_prelu",
            "shape": "x".join(map(str, shape)) + ("/cl" if cl else ""),
            "dtype": str(dtype).replace("torch.", ""),
        }
        wg = w.clone().requires_grad_()

        def eager_bwd(x):
            xg = x.detach().requires_grad_()
            y = F.prelu(xg, wg)
            return y, xg

        with torch.no_grad():
            fwd = {
                "ours": (lambda x: ops.dead_prelu(x, w), sets),
                "eager": (lambda x: eager_prelu_count(x, w), sets),
                "floor": (lambda x: x.clone(), sets),
            }
            if compiled is not None:
                fwd["compile"] = (lambda x: compiled(x, w), sets)
            r.update({f"fwd_{name}": v for name, v in timer.group(fwd).items()})
        # Eager backward alone: its graphs are built outside the timed region.
        graphs = [eager_bwd(s[0]) for s in sets]
        bwd = timer.group(
            {
                "ours": (lambda x: ops.dead_prelu_backward(gy, x, w, [True, True]), sets),
                "eager": (lambda y, xg: torch.autograd.grad(y, (xg, wg), gy, retain_graph=True), graphs),
            }
        )
        r.update({f"bwd_{name}": v for name, v in bwd.items()})
        rows.append(r)
        progress.step(r["shape"])
    return rows


def ratio(a, b):
    return a[0] / b[0]


def table(rows, use_compile):
    lines = [
        "Speedups are competitor time / our time (>1: ours faster); fwd = inference forward (no mask), "
        "fwd+mask = the training forward; `bare` = oneDNN's linear without ReLU, the library's bare product.",
        "",
        "| fused_linear_relu | fwd vs oneDNN fused | fwd+mask vs oneDNN fused | fwd vs freeze | fwd+mask / bare | "
        "fwd / addmm | fwd vs eager | fwd vs compile | fwd+bwd vs eager | fwd+bwd vs compile | fwd+bwd vs max-autotune | "
        "saved bytes eager / ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["op"] != "fused_linear_relu":
            continue

        def vs(key, ours):
            return f"{ratio(r[key], r[ours]):.2f}x" if key in r else "n/a"

        def over(ours, key):
            return f"{ratio(r[ours], r[key]):.3f}" if key in r else "n/a"

        lines.append(
            f"| {r['shape']} {r['dtype']} | {vs('fwd_onednn', 'fwd_ours')} | {vs('fwd_onednn', 'fwd_ours_mask')} | "
            f"{vs('fwd_freeze', 'fwd_ours')} | {over('fwd_ours_mask', 'fwd_bare')} | {over('fwd_ours', 'fwd_floor')} | "
            f"{vs('fwd_eager', 'fwd_ours')} | {vs('fwd_compile', 'fwd_ours')} | "
            f"{vs('fb_eager', 'fb_ours')} | {vs('fb_compile', 'fb_ours')} | {vs('fb_autotune', 'fb_ours')} | "
            f"{r['saved_eager'] / max(r['saved_ours'], 1):.2f}x |"
        )
    if not any(r["op"] == "fused_linear_relu" for r in rows):
        lines = []
    if not any(r["op"] == "dead_prelu" for r in rows):
        return "\n".join(lines)
    lines += [
        "",
        "| dead_prelu | fwd / clone | fwd speedup vs eager prelu+count | fwd speedup vs compile | bwd speedup vs eager |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r["op"] != "dead_prelu":
            continue
        comp = f"{ratio(r['fwd_compile'], r['fwd_ours']):.2f}x" if use_compile else "n/a"
        lines.append(
            f"| {r['shape']} {r['dtype']} | {ratio(r['fwd_ours'], r['fwd_floor']):.3f} | "
            f"{ratio(r['fwd_eager'], r['fwd_ours']):.2f}x | {comp} | {ratio(r['bwd_eager'], r['bwd_ours']):.2f}x |"
        )
    return "\n".join(lines)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    lin = [r for r in rows if r["op"] == "fused_linear_relu"]
    pre = [r for r in rows if r["op"] == "dead_prelu"]
    fig, axes = plt.subplots(1, 2, figsize=(18, 5), gridspec_kw={"width_ratios": [4, 1]})
    for ax, group, series in (
        (
            axes[0],
            lin,
            [
                ("fwd_eager", "fwd_ours", "fwd: eager / ours"),
                ("fb_eager", "fb_ours", "fwd+bwd: eager / ours"),
                ("fwd_onednn", "fwd_ours", "fwd: oneDNN fused linear+ReLU / ours"),
            ],
        ),
        (
            axes[1],
            pre,
            [
                ("fwd_eager", "fwd_ours", "fwd: eager+count / ours"),
                ("bwd_eager", "bwd_ours", "bwd: eager / ours"),
                ("fwd_floor", "fwd_ours", "fwd: clone / ours (one read + one write)"),
            ],
        ),
    ):
        xs = range(len(group))
        for j, (a, b, label) in enumerate(series):
            ax.bar([x + 0.27 * (j - 1) for x in xs], [ratio(r[a], r[b]) if a in r else 0 for r in group], width=0.27, label=label)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{r['shape']} {r['dtype']}" for r in group], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("speed ratio (higher: ours faster)")
        ax.legend(fontsize=8)
    axes[0].set_title("fused_linear_relu")
    axes[1].set_title("dead_prelu")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main():
    ap = argparse.ArgumentParser(description="torch-relu-ext benchmark suite")
    ap.add_argument("--quick", action="store_true", help="a few shapes, about a minute")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile competitors")
    ap.add_argument("--autotune", action="store_true", help="add torch.compile max-autotune (slow to compile)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="fused_linear_relu dtypes (dead_prelu: float32)")
    ap.add_argument("--linear-only", action="store_true", help="skip dead_prelu")
    ap.add_argument("--prelu-only", action="store_true", help="skip fused_linear_relu")
    ap.add_argument("--budget", type=float, default=None, help="seconds per competitor per shape")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    use_compile = not args.no_compile
    linear = (
        [] if args.prelu_only else LINEAR_QUICK if args.quick else list(dict.fromkeys(LINEAR_SERVING + LINEAR_FULL + LINEAR_DLRM))
    )
    prelu = [] if args.linear_only else PRELU_QUICK if args.quick else PRELU_FULL
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    budget = args.budget if args.budget is not None else 0.4 if args.quick else 1.5
    timer = Timer(device, budget_s=budget, min_reps=5, max_reps=200)
    progress = Progress(len(linear) * len(dtypes) + len(prelu))
    rows = []
    for dtype in dtypes:
        rows += bench_linear(linear, timer, device, dtype, progress, use_compile, args.autotune)
    rows += bench_prelu(prelu, timer, device, torch.float32, progress, use_compile)

    hw = torch.cuda.get_device_name() if device == "cuda" else cpu_model()
    date = datetime.date.today().isoformat()
    header = (
        f"{'quick' if args.quick else 'full'} run, {date}; {hw}; {args.threads} threads; "
        f"torch {torch.__version__}; {'float32' if args.prelu_only else args.dtypes}; medians of >= 5 repetitions (rotating 3 input sets), "
        f"{budget} s per competitor per shape; "
        f"CPU loops {torch_relu_ext._C.cpu_isa()}, CPU matrix product {torch_relu_ext._C.cpu_gemm()}; "
        "competitors interleaved per round; glibc malloc pinned " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
    )
    text = f"# torch-relu-ext benchmark ({device})\n\n{header}\n\n{table(rows, use_compile)}\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    part = "-linear" if args.linear_only else "-prelu" if args.prelu_only else ""
    stem = os.path.join(args.out, f"{device}-{'quick' if args.quick else 'full'}{part}")
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump(
            dict(device=device, hardware=hw, threads=args.threads, date=date, torch=torch.__version__, results=rows), f, indent=1
        )
    keys = sorted({k for r in rows for k in r})
    with open(stem + ".csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: (v[0] if isinstance(v, tuple) else v) for k, v in r.items()})
    if plot(rows, stem + ".png"):
        print(f"plot: {stem}.png")


if __name__ == "__main__":
    main()
