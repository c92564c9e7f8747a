"""compress_relu_activations(): activation memory and training-step time,
side by side (CPU).

Memory: an MLP of 4 Linear layers 1024 wide with ReLUs after the first three,
batch 4096, float32. Each variant runs in a fresh process; the figure is the
growth of the resident set (RSS) from before the forward to after it, with the
loss (and so the autograd graph) alive, plus the exact bytes the graph keeps
(saved tensors counted by an enclosing saved_tensors_hooks, plus the packed
bytes). Sparsity is set by shifting the ReLU layers' biases: 0 gives about 50%
zeros (random weights and inputs), -1.5 is examples/dying_relu.py's bad
initialisation.

Time: one training step (forward, backward, SGD step) of the converted model
with and without the context, interleaved in one process, median of many.

    python benchmarks/compress.py [--quick] [--out benchmarks/results/compress-cpu]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import torch_relu_ext  # noqa: E402
from benchmarks.run import cpu_model  # noqa: E402

WIDTH, LAYERS = 1024, 4
SHIFTS = [0.0, -0.5, -1.5]
VARIANTS = ["eager", "fused", "fused+compress"]
# Memory runs: every large block gets its own mmap, so a freed tensor leaves
# the resident set at once (glibc's adaptive threshold would keep it).
MEM_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
# Timing runs: pinned glibc malloc so every competitor reuses memory (see
# docs/performance.md).
TIME_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024 * 1024), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def build(kind, shift, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i in range(LAYERS):
        layers.append(nn.Linear(WIDTH, WIDTH))
        if i < LAYERS - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model[:-1]:
            if isinstance(m, nn.Linear):
                m.bias.add_(shift)
    if kind != "eager":
        model = torch_relu_ext.convert(model)
    return model.to(dtype)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(variant, shift, batch):
    torch.manual_seed(1)
    model = build("eager" if variant == "eager" else "fused", shift)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(batch, WIDTH)
    model(x).sum().backward()  # warm up (thread pools, allocator)
    model.zero_grad(set_to_none=True)
    saved = []

    def count(t):
        saved.append(t)
        return t

    ctx = torch_relu_ext.compress_relu_activations() if variant == "fused+compress" else None
    before = rss_bytes()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        if ctx is None:
            loss = model(x).sum()
        else:
            with ctx:
                loss = model(x).sum()
    after = rss_bytes()
    seen, kept = set(), 0
    for t in saved:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen and ptr != x.untyped_storage().data_ptr():
            seen.add(ptr)
            kept += t.untyped_storage().nbytes()
    stats = ctx.stats if ctx is not None else None
    if ctx is not None:
        kept += stats["packed_bytes"]
    with torch.no_grad():
        h, zeros, total = x, 0, 0
        for m in build("eager", shift):
            h = m(h)
            if isinstance(m, nn.ReLU):
                zeros += int((h == 0).sum())
                total += h.numel()
    del loss
    return {
        "variant": variant,
        "shift": shift,
        "batch": batch,
        "rss": after - before,
        "kept": kept,
        "zero_fraction": zeros / total,
        "stats": stats,
    }


def memory(batch):
    rows = []
    for shift in SHIFTS:
        for variant in VARIANTS:
            env = {k: v for k, v in os.environ.items() if k not in TIME_ENV}
            env.update(MEM_ENV)
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", variant, str(shift), str(batch)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def step_fn(model, x, ctx):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        if ctx:
            with torch_relu_ext.compress_relu_activations():
                loss = model(x).float().square().mean()
        else:
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()

    return step


def timing(batches, dtypes, budget_s):
    rows = []
    for dtype in dtypes:
        for batch in batches:
            model = build("fused", 0.0, dtype)
            x = torch.randn(batch, WIDTH).to(dtype)
            fns = {"fused": step_fn(model, x, False), "fused+compress": step_fn(model, x, True)}
            for fn in fns.values():
                fn()
                fn()
            times = {k: [] for k in fns}
            start = time.perf_counter()
            while time.perf_counter() - start < budget_s or len(times["fused"]) < 5:
                for k, fn in fns.items():  # interleaved: drift hits both alike
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(
                {
                    "dtype": str(dtype).replace("torch.", ""),
                    "batch": batch,
                    "reps": len(times["fused"]),
                    "step_ms": {k: v * 1e3 for k, v in med.items()},
                    "ratio": med["fused+compress"] / med["fused"],
                }
            )
            print(f"  time {rows[-1]['dtype']} batch {batch}: ratio {rows[-1]['ratio']:.3f}", file=sys.stderr)
    return rows


def markdown(meta, mem, tim):
    mib = 1024 * 1024
    out = [
        "# compress_relu_activations(): memory and time (CPU)",
        "",
        f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}. Written by benchmarks/compress.py.",
        "",
        f"## Activation memory: MLP {LAYERS}x{WIDTH} (3 ReLUs), batch {mem[0]['batch']}, float32, fresh process per variant",
        "",
        "RSS = resident-set growth over the forward (graph alive); kept = bytes the graph holds (exact).",
        "",
        "| ReLU bias shift | zeros | eager RSS / kept (MiB) | fused RSS / kept (MiB) | fused+compress RSS / kept (MiB) | compress / eager (RSS) |",
        "|---|---|---|---|---|---|",
    ]
    for shift in SHIFTS:
        r = {row["variant"]: row for row in mem if row["shift"] == shift}
        cells = [f"{r[v]['rss'] / mib:.1f} / {r[v]['kept'] / mib:.1f}" for v in VARIANTS]
        out.append(
            f"| {shift:+.1f} | {r['eager']['zero_fraction']:.1%} | "
            + " | ".join(cells)
            + f" | {r['fused+compress']['rss'] / r['eager']['rss']:.3f} |"
        )
    out += [
        "",
        f"## Training step (forward, backward, SGD step), fused model, MLP {LAYERS}x{WIDTH}, ~50% zeros",
        "",
        "| dtype | batch | reps | without (ms) | with compress (ms) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in tim:
        out.append(
            f"| {r['dtype']} | {r['batch']} | {r['reps']} | {r['step_ms']['fused']:.1f} | {r['step_ms']['fused+compress']:.1f} | {r['ratio']:.3f} |"
        )
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes, shorter timing")
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    ap.add_argument("--memory-child", nargs=3, metavar=("VARIANT", "SHIFT", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        variant, shift, batch = args.memory_child
        print(json.dumps(memory_child(variant, float(shift), int(batch))))
        return
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != TIME_ENV["MALLOC_MMAP_THRESHOLD_"]:
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **TIME_ENV))
    meta = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    mem = memory(4096)
    batches = [256, 4096] if args.quick else [256, 2048, 4096]
    tim = timing(batches, [torch.float32, torch.bfloat16], 3.0 if args.quick else 10.0)
    md = markdown(meta, mem, tim)
    print(md)
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"meta": meta, "memory": mem, "time": tim}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
