"""torch.compile (training and inference, dynamic batch, no graph breaks),
torch.export with save/load, and torch.library.opcheck for every operator."""

import functools

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from helpers import cpu_and_cuda, operators
from models import Net, grads_of

ops = torch.ops.relu_ext
DEVICES = cpu_and_cuda()


def relu_ext_targets(gm):
    """relu_ext operators called in a graph (overload suffix dropped)."""
    return {
        str(n.target).removesuffix(".default") for n in gm.graph.nodes if n.op == "call_function" and "relu_ext" in str(n.target)
    }


def assert_close_lists(a, b, tol=1e-5):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_training_dynamic_batch(backend, device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net().to(device)
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    for batch in (8, 13, 32):
        x = torch.randn(batch, 7, device=device)
        assert_close_lists(grads_of(compiled, x), grads_of(model, x))


def test_compile_graph_holds_relu_ext_ops_and_no_breaks():
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        seen.append(relu_ext_targets(gm))
        return gm.forward

    model = Net()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=backend)
    with torch.no_grad():
        for batch in (5, 9):
            x = torch.randn(batch, 7)
            torch.testing.assert_close(compiled(x), model(x))
    assert len(seen) == 1, f"expected one graph for all batch sizes, got {len(seen)}"
    assert "relu_ext.fused_linear_relu" in seen[0] and "relu_ext.dead_prelu" in seen[0]


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inference_matches_eager(device):
    torch._dynamo.reset()
    torch.manual_seed(2)
    model = Net().to(device).eval()
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with torch.no_grad():
        for batch in (4, 11):
            x = torch.randn(batch, 7, device=device)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_export_round_trip(tmp_path, device):
    torch.manual_seed(3)
    model = Net().to(device)
    x = torch.randn(6, 7, device=device)
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch}})
    targets = relu_ext_targets(ep.graph_module)
    assert "relu_ext.fused_linear_relu" in targets and "relu_ext.dead_prelu" in targets
    for b in (6, 3):
        xb = torch.randn(b, 7, device=device)
        torch.testing.assert_close(ep.module()(xb), model(xb), rtol=1e-6, atol=1e-6)
    path = tmp_path / "net.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path)
    xb = torch.randn(9, 7, device=device)
    torch.testing.assert_close(loaded.module()(xb), model(xb), rtol=1e-6, atol=1e-6)


@functools.lru_cache(maxsize=None)
def opcheck_samples(device="cpu"):
    """(operator, args) pairs: shapes, dtypes, with and without bias, 1 or C
    weights, requires_grad on and off."""
    samples = []
    for rg in (False, True):
        for dtype in (torch.float32, torch.float64):

            def t(*shape, grad=rg):
                return torch.randn(*shape, dtype=dtype, device=device, requires_grad=grad)

            samples += [
                (ops.fused_linear_relu.default, (t(5, 4), t(3, 4), t(3))),
                (ops.fused_linear_relu.default, (t(2, 3, 4), t(6, 4), None)),
                (ops.fused_linear_relu_forward.default, (t(5, 4), t(3, 4), t(3))),
                (ops.dead_prelu.default, (t(4, 3, 5), t(3))),
                (ops.dead_prelu.default, (t(4, 3), t(1))),
                (ops.dead_prelu.default, (t(7), t(1))),
            ]
            x, w = t(5, 4, grad=False), t(3, 4, grad=False)
            _, mask = ops.fused_linear_relu_forward(x, w, None)
            samples.append(
                (
                    ops.fused_linear_relu_backward.default,
                    (t(5, 3), x.requires_grad_(rg), w.requires_grad_(rg), mask, [True, True, True]),
                )
            )
            samples.append((ops.fused_linear_relu_backward.default, (t(5, 3), x, w, mask, [True, False, False])))
            samples.append((ops.dead_prelu_backward.default, (t(4, 3, 5), t(4, 3, 5), t(3), [True, True])))
            samples.append((ops.dead_prelu_backward.default, (t(4, 3), t(4, 3), t(1), [False, True])))
    out, mask = ops.fused_linear_relu_forward(torch.randn(5, 4, device=device), torch.randn(3, 4, device=device), None)
    samples.append((ops.relu_mask_unpack.default, (mask, [5, 3])))
    samples.append((ops.relu_mask_count.default, (mask, out)))
    for dtype in (torch.float32, torch.bfloat16):
        sparse = F.relu(torch.randn(6, 5, device=device)).to(dtype)
        samples.append((ops.relu_pack.default, (sparse,)))
        samples.append((ops.relu_unpack.default, (*ops.relu_pack(sparse), [6, 5])))
    return samples


# Sample i of opcheck_samples(device), built (once per device) when a test
# runs: cuda samples cannot be built where no GPU is visible.
OPCHECK_IDS = [f"{i}-{op.__name__}" for i, (op, _) in enumerate(opcheck_samples())]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("i", range(len(OPCHECK_IDS)), ids=OPCHECK_IDS)
def test_opcheck(device, i):
    op, args = opcheck_samples(device)[i]
    torch.library.opcheck(op, args)


def test_opcheck_covers_every_operator():
    covered = {op.__name__.split(".")[0] for op, _ in opcheck_samples()} | {"dead_stats_update_"}
    assert covered == set(operators())


def test_opcheck_dead_stats_update():
    ema = torch.rand(5)
    nbt = torch.tensor(3)
    counts = torch.randint(0, 10, (5,))
    torch.library.opcheck(ops.dead_stats_update_.default, (ema, nbt, counts, 10, 0.1))
