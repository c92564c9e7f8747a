"""GPU benchmark of both operators against their competitors, timed with CUDA
events (warm-up, then the median of many repetitions) in one process.

fused_linear_relu: ours vs eager F.relu(F.linear()) vs the plain GEMM + bias
(torch.addmm: cuBLASLt's bias epilogue, no ReLU: the floor), forward and
forward+backward. dead_prelu: ours (output + counts) vs eager F.prelu plus the
separate count, forward and backward, against a same-size clone (copy
bandwidth). Writes a markdown table and a JSON file.
"""

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

import torch_relu_ext  # noqa: F401

ops = torch.ops.relu_ext


def time_ms(fn, reps=50, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def linear_cases(quick):
    cases = [
        ((8192, 4096, 4096), torch.bfloat16),
        ((8192, 4096, 4096), torch.float16),
        ((8192, 128, 8192), torch.bfloat16),
        ((4096, 1024, 1024), torch.float32),
        ((32768, 64, 4096), torch.bfloat16),
    ]
    return cases[:2] if quick else cases


def bench_linear(results, quick):
    for (n, k, o), dtype in linear_cases(quick):
        x = torch.randn(n, k, dtype=dtype, device="cuda")
        w = torch.randn(o, k, dtype=dtype, device="cuda") / k**0.5
        b = torch.randn(o, dtype=dtype, device="cuda")
        xg = x.clone().requires_grad_()
        wg = w.clone().requires_grad_()
        bg = b.clone().requires_grad_()
        g = torch.randn(n, o, dtype=dtype, device="cuda")
        with torch.no_grad():
            t_ours = time_ms(lambda: ops.fused_linear_relu(x, w, b))
            t_ours_mask = time_ms(lambda: ops.fused_linear_relu_forward(x, w, b))
            t_eager = time_ms(lambda: F.relu(F.linear(x, w, b)))
            t_addmm = time_ms(lambda: torch.addmm(b, x, w.t()))
        t_ours_fb = time_ms(lambda: torch.autograd.grad(ops.fused_linear_relu(xg, wg, bg), (xg, wg, bg), g))
        t_eager_fb = time_ms(lambda: torch.autograd.grad(F.relu(F.linear(xg, wg, bg)), (xg, wg, bg), g))
        flops = 2 * n * k * o
        results.append(
            dict(
                op="fused_linear_relu",
                shape=f"{n}x{k}x{o}",
                dtype=str(dtype).replace("torch.", ""),
                ours_fwd_ms=t_ours,
                ours_fwd_mask_ms=t_ours_mask,
                eager_fwd_ms=t_eager,
                addmm_ms=t_addmm,
                ours_fwdbwd_ms=t_ours_fb,
                eager_fwdbwd_ms=t_eager_fb,
                fwd_vs_addmm=t_ours_mask / t_addmm,
                fwd_speedup_vs_eager=t_eager / t_ours_mask,
                fwdbwd_speedup_vs_eager=t_eager_fb / t_ours_fb,
                tflops_fwd=flops / t_ours_mask / 1e9,
            )
        )


def prelu_cases(quick):
    cases = [
        ((64, 256, 56, 56), torch.float32, torch.contiguous_format),
        ((64, 256, 56, 56), torch.float32, torch.channels_last),
        ((64, 256, 56, 56), torch.bfloat16, torch.contiguous_format),
        ((65536, 4096), torch.bfloat16, torch.contiguous_format),
    ]
    return cases[:2] if quick else cases


def bench_prelu(results, quick):
    for shape, dtype, mf in prelu_cases(quick):
        x = torch.randn(shape, dtype=dtype, device="cuda").contiguous(memory_format=mf)
        c = shape[1]
        w = torch.rand(c, dtype=dtype, device="cuda")
        g = torch.randn_like(x)
        dims = [d for d in range(x.dim()) if d != 1]
        with torch.no_grad():
            t_ours = time_ms(lambda: ops.dead_prelu(x, w))
            t_eager = time_ms(lambda: (F.prelu(x, w), (x > 0).sum(dims)))
            t_eager_only = time_ms(lambda: F.prelu(x, w))
            t_clone = time_ms(lambda: x.clone())
            t_bwd = time_ms(lambda: ops.dead_prelu_backward(g, x, w, [True, True]))
        xg = x.clone().requires_grad_()
        wg = w.clone().requires_grad_()
        ye = F.prelu(xg, wg)
        t_eager_bwd = time_ms(lambda: torch.autograd.grad(ye, (xg, wg), g, retain_graph=True))
        nbytes = x.numel() * x.element_size()
        results.append(
            dict(
                op="dead_prelu",
                shape="x".join(map(str, shape)) + ("/cl" if mf == torch.channels_last else ""),
                dtype=str(dtype).replace("torch.", ""),
                ours_fwd_ms=t_ours,
                eager_fwd_count_ms=t_eager,
                eager_prelu_only_ms=t_eager_only,
                clone_ms=t_clone,
                ours_bwd_ms=t_bwd,
                eager_bwd_ms=t_eager_bwd,
                fwd_bw_frac_of_clone=t_clone / t_ours,
                bwd_bw_frac_of_copy=(t_clone * 1.5) / t_bwd,
                fwd_speedup_vs_eager=t_eager / t_ours,
                bwd_speedup_vs_eager=t_eager_bwd / t_bwd,
                clone_tbps=2 * nbytes / t_clone / 1e9,
            )
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = []
    bench_linear(results, args.quick)
    bench_prelu(results, args.quick)
    name = torch.cuda.get_device_name()
    lines = [
        f"GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        "",
        "| fused_linear_relu | dtype | ours fwd (ms) | addmm+bias (ms) | eager fwd (ms) | fwd / addmm | fwd speedup vs eager | fwd+bwd speedup vs eager |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["op"] == "fused_linear_relu":
            lines.append(
                f"| {r['shape']} | {r['dtype']} | {r['ours_fwd_mask_ms']:.3f} | {r['addmm_ms']:.3f} | {r['eager_fwd_ms']:.3f} | "
                f"{r['fwd_vs_addmm']:.3f} | {r['fwd_speedup_vs_eager']:.2f}x | {r['fwdbwd_speedup_vs_eager']:.2f}x |"
            )
    lines += [
        "",
        "| dead_prelu | dtype | ours fwd (ms) | clone (ms) | fwd % of copy BW | eager prelu+count (ms) | ours bwd (ms) | bwd % of copy BW | bwd speedup vs eager |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["op"] == "dead_prelu":
            lines.append(
                f"| {r['shape']} | {r['dtype']} | {r['ours_fwd_ms']:.3f} | {r['clone_ms']:.3f} | {100 * r['fwd_bw_frac_of_clone']:.0f}% | "
                f"{r['eager_fwd_count_ms']:.3f} | {r['ours_bwd_ms']:.3f} | {100 * r['bwd_bw_frac_of_copy']:.0f}% | {r['bwd_speedup_vs_eager']:.2f}x |"
            )
    lines += [
        "",
        "bwd % of copy BW: the backward moves 3 tensors (reads x and grad, writes grad_input), "
        "1.5x a clone's 2; 100% = the clone's bandwidth.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=name, torch=torch.__version__, results=results), f, indent=1)


if __name__ == "__main__":
    main()
