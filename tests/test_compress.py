"""compress_relu_activations() and its relu_pack / relu_unpack kernels:
lossless storage, bitwise-equal gradients, in-place safety, nesting."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import torch_relu_ext
from torch_relu_ext import FusedLinearReLU, compress_relu_activations, fused_linear_relu

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits_of(t):
    return t.contiguous().view(INT_OF[t.element_size()])


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits_of(a), bits_of(b))


def assert_same_grads_with_context(f, params):
    """Gradients of f() with and without compress_relu_activations() are
    bitwise equal; returns the context's stats."""
    ref = torch.autograd.grad(f(), params)
    ctx = compress_relu_activations()
    with ctx:
        loss = f()
    for a, b in zip(ref, torch.autograd.grad(loss, params)):
        assert_bitwise(a, b)
    return ctx.stats


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 33, 65537, 131072 + 45])
@pytest.mark.parametrize("zeros", [0.0, 0.5, 1.0])
def test_pack_roundtrip_bitwise(dtype, n, zeros):
    g = torch.Generator().manual_seed(n)
    t = (torch.randn(n, generator=g) * (torch.rand(n, generator=g) >= zeros)).to(dtype)
    if n > 5:  # signed zero, NaN, Inf and a denormal must come back as they were
        t[1], t[2], t[3] = -0.0, float("nan"), float("inf")
        t[4] = torch.finfo(dtype).smallest_normal / 2
    bits, values = torch.ops.relu_ext.relu_pack(t)
    assert bits.dtype == torch.uint8 and bits.shape == ((n + 7) // 8,)
    assert values.numel() == int((bits_of(t) != 0).sum())
    assert_bitwise(torch.ops.relu_ext.relu_unpack(bits, values, [n]), t)


def test_pack_non_contiguous_and_shapes():
    t = F.relu(torch.randn(5, 3, 7)).transpose(0, 2)
    bits, values = torch.ops.relu_ext.relu_pack(t)
    assert_bitwise(torch.ops.relu_ext.relu_unpack(bits, values, list(t.shape)), t.contiguous())
    assert not t.is_contiguous()  # input untouched


def test_pack_unpack_errors():
    with pytest.raises(RuntimeError, match="relu_pack: expected argument 'self'"):
        torch.ops.relu_ext.relu_pack(torch.ones(3, dtype=torch.int32))
    bits, values = torch.ops.relu_ext.relu_pack(torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(RuntimeError, match="relu_unpack: expected argument 'bits'"):
        torch.ops.relu_ext.relu_unpack(bits, values, [9])
    with pytest.raises(RuntimeError, match="'bits' has 2 set bits but 'values' has 1"):
        torch.ops.relu_ext.relu_unpack(bits, values[:1], [3])


# ------------------------------------------------------ context: gradients


def mlp(dtype, bias_shift=0.0):
    torch.manual_seed(0)
    m = nn.Sequential(
        FusedLinearReLU(24, 40), nn.Linear(40, 40), FusedLinearReLU(40, 33), FusedLinearReLU(33, 33), nn.Linear(33, 5)
    )
    with torch.no_grad():
        for layer in m:
            if isinstance(layer, FusedLinearReLU):
                layer.bias.add_(bias_shift)
    return m.to(dtype)


def run(model, x, ctx=None):
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    if ctx is None:
        out = model(x)
    else:
        with ctx:
            out = model(x)
    out.square().sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradients_bitwise(dtype):
    model = mlp(dtype)
    x = torch.randn(70, 24).to(dtype)
    ref = run(model, x)
    ctx = compress_relu_activations()
    got = run(model, x, ctx)
    for a, b in zip(ref, got):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 3 and ctx.stats["rebuilt"] == 3
    assert ctx.stats["packed_bytes"] < 0.65 * ctx.stats["dense_bytes"]


def test_functional_and_shared_output():
    torch.manual_seed(1)
    x = torch.randn(64, 16)
    w = torch.randn(32, 16, requires_grad=True)
    w2 = torch.randn(8, 32, requires_grad=True)

    def f():
        h = fused_linear_relu(x, w)
        return (h @ w2.t()).sum() + (h * h).sum()  # h saved three times

    (ref,) = torch.autograd.grad(f(), w)
    ctx = compress_relu_activations()
    with ctx:
        loss = f()
    (got,) = torch.autograd.grad(loss, w)
    assert_bitwise(ref, got)
    assert ctx.stats["compressed"] == 1  # one packed copy shared by every save


def test_double_backward_bitwise():
    model = mlp(torch.float64)
    x = torch.randn(20, 24, dtype=torch.float64)

    def second(ctx):
        xx = x.clone().requires_grad_()
        if ctx is None:
            out = model(xx)
        else:
            with ctx:
                out = model(xx)
        (g,) = torch.autograd.grad(out.square().sum(), xx, create_graph=True)
        return torch.autograd.grad(g.sin().sum(), [xx] + list(model.parameters()))

    ctx = compress_relu_activations()
    for a, b in zip(second(None), second(ctx)):
        assert_bitwise(a, b)
    assert ctx.stats["rebuilt"] >= 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_3d_input_and_reference(dtype):
    # (*, in) inputs: nn.Linear saves a flattening reshape (a whole view) of
    # the output, packed through its base.
    model = mlp(dtype)
    x = torch.randn(3, 7, 24).to(dtype)
    ctx = compress_relu_activations()
    for a, b in zip(run(model, x), run(model, x, ctx)):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 3 and ctx.stats["rebuilt"] == 3
    # and the values are the float64 eager reference's
    ref = nn.Sequential(
        nn.Linear(24, 40),
        nn.ReLU(),
        nn.Linear(40, 40),
        nn.Linear(40, 33),
        nn.ReLU(),
        nn.Linear(33, 33),
        nn.ReLU(),
        nn.Linear(33, 5),
    ).double()
    for dst, src in zip([m for m in ref if isinstance(m, nn.Linear)], model):
        dst.load_state_dict({k: v.double() for k, v in src.state_dict().items() if k in ("weight", "bias")})
    with compress_relu_activations():
        out = model(x)
    torch.testing.assert_close(out.double(), ref(x.double()), atol=5e-2 if dtype == torch.bfloat16 else 1e-4, rtol=2e-2)


@pytest.mark.parametrize("shift,compressed", [(0.0, 3), (-100.0, 3)])
def test_all_zero_outputs(shift, compressed):
    # all zeros: only the bits are kept
    model = mlp(torch.float32, shift)
    x = torch.randn(50, 24)
    ctx = compress_relu_activations()
    for a, b in zip(run(model, x), run(model, x, ctx)):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == compressed
    if shift < 0:
        assert ctx.stats["packed_bytes"] * 30 < ctx.stats["dense_bytes"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_zero_outputs_saved_as_usual(dtype):
    # no zeros: packing would not pay, the tensor is saved as usual
    x = torch.rand(30, 8).to(dtype)
    w = torch.rand(12, 8).to(dtype).requires_grad_()
    b = torch.ones(12).to(dtype)
    w2 = torch.randn(4, 12).to(dtype).requires_grad_()

    def f():
        return (fused_linear_relu(x, w, b) @ w2.t()).square().sum()

    assert assert_same_grads_with_context(f, [w, w2])["compressed"] == 0


def test_empty_batch():
    model = mlp(torch.float32)
    x = torch.randn(0, 24)
    ctx = compress_relu_activations()
    for a, b in zip(run(model, x), run(model, x, ctx)):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 0


def test_nan_inf_outputs():
    model = mlp(torch.float32)
    x = torch.randn(30, 24)
    x[3, 4], x[7, 0] = float("nan"), float("inf")
    ctx = compress_relu_activations()
    for a, b in zip(run(model, x), run(model, x, ctx)):
        assert torch.equal(bits_of(a), bits_of(b))


# ------------------------------------------------------ in-place safety


@pytest.mark.parametrize(
    "view",
    [lambda h: h[1:], lambda h: h.t(), lambda h: h[:, :6], lambda h: h.view(-1)[6:-6]],
    ids=["rows", "transpose", "columns", "offset"],
)
def test_partial_views_saved_as_usual(view):
    x = torch.randn(16, 8)
    w = torch.randn(12, 8, requires_grad=True)
    w2 = torch.randn(6, 6, requires_grad=True)

    def f():
        v = view(fused_linear_relu(x, w))
        return (v.reshape(-1, 6) @ w2).square().sum()

    assert assert_same_grads_with_context(f, [w, w2])["compressed"] == 0


def test_dtype_change_saved_as_usual():
    x = torch.randn(16, 8)
    w = torch.randn(12, 8, requires_grad=True)
    w2 = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)

    def f():
        return (fused_linear_relu(x, w).double() @ w2.t()).square().sum()

    assert assert_same_grads_with_context(f, [w, w2])["compressed"] == 0


def test_inplace_before_save_falls_back():
    x = torch.randn(16, 8)
    w = torch.randn(12, 8, requires_grad=True)
    w2 = torch.randn(4, 12, requires_grad=True)

    def f():
        h = fused_linear_relu(x, w)
        with torch.no_grad():
            h.mul_(3)  # version 1: not what the operator returned any more
        return (h @ w2.t()).sum()

    assert assert_same_grads_with_context(f, [w, w2])["compressed"] == 0


@pytest.mark.parametrize("grad_mode", [False, True])
def test_inplace_after_save_raises(grad_mode):
    x = torch.randn(16, 8)
    w = torch.randn(12, 8, requires_grad=True)
    w2 = torch.randn(4, 12, requires_grad=True)

    def f():
        h = fused_linear_relu(x, w)
        loss = (h @ w2.t()).sum()
        with torch.set_grad_enabled(grad_mode):
            h.add_(1)  # after the matmul saved it
        return loss, h

    loss, h = f()  # eager: autograd's version check
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    with compress_relu_activations():
        loss, h = f()
    with pytest.raises(RuntimeError, match="compress_relu_activations: .*modified by an inplace operation"):
        loss.backward()


def test_inplace_through_view_after_save():
    # The dense tensor's Python object is gone but a view keeps it alive: the
    # modification must still be seen (error), not answered from the copy.
    x = torch.randn(16, 8)
    w = torch.randn(12, 8, requires_grad=True)
    w2 = torch.randn(4, 12, requires_grad=True)

    def f():
        h = fused_linear_relu(x, w)
        return (h @ w2.t()).sum(), h[2:5]

    with compress_relu_activations():
        loss, v = f()
    with torch.no_grad():
        v.zero_()
    with pytest.raises(RuntimeError, match="compress_relu_activations: .*modified by an inplace operation"):
        loss.backward()


# ------------------------------------------------------ nesting


def test_inside_save_on_cpu_chains():
    model = mlp(torch.float32)
    x = torch.randn(40, 24)
    ref = run(model, x)
    outer_packed = []

    def pack(t):
        outer_packed.append(t.shape)
        return t.clone()

    ctx = compress_relu_activations()
    model.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with ctx:
            out = model(xx)
    out.square().sum().backward()
    for a, b in zip(ref, [xx.grad] + [p.grad for p in model.parameters()]):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 3 and outer_packed  # the rest went to the outer hooks
    with torch.autograd.graph.save_on_cpu():
        got = run(model, x, compress_relu_activations())
    for a, b in zip(ref, got):
        assert_bitwise(a, b)


def test_save_on_cpu_inside_takes_over():
    model = mlp(torch.float32)
    x = torch.randn(40, 24)
    ref = run(model, x)
    ctx = compress_relu_activations()
    model.zero_grad(set_to_none=True)
    with ctx:
        with torch.autograd.graph.save_on_cpu():
            out = model(x)
    out.sum().mul(0).add(out.square().sum()).backward()
    for a, b in zip(ref[1:], [p.grad for p in model.parameters()]):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpoint_inside(reentrant):
    model = mlp(torch.float32)
    x = torch.randn(40, 24)
    ref = run(model, x)
    first, rest = model[:2], model[2:]

    class Net(nn.Module):
        def forward(self, x):
            return rest(checkpoint(first, x, use_reentrant=reentrant))

    net = Net()
    for backward_inside in (False, True):
        model.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        ctx = compress_relu_activations()
        with ctx:
            out = net(xx)
            if backward_inside:
                out.square().sum().backward()
        if not backward_inside:
            out.square().sum().backward()
        for a, b in zip(ref, [xx.grad] + [p.grad for p in model.parameters()]):
            assert_bitwise(a, b)
        assert ctx.stats["compressed"] >= 2  # the layers outside the checkpoint


def test_inside_checkpoint():
    model = mlp(torch.float32)
    x = torch.randn(40, 24)
    ref = run(model, x)

    def fn(x):
        with compress_relu_activations():
            return model(x)

    model.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_()
    checkpoint(fn, xx, use_reentrant=False).square().sum().backward()
    for a, b in zip(ref, [xx.grad] + [p.grad for p in model.parameters()]):
        assert_bitwise(a, b)


def test_prelu_and_other_tensors_untouched():
    # PReLU outputs are not compressed (rarely zero); eager ReLU neither.
    m = nn.Sequential(nn.Linear(8, 16), torch_relu_ext.DeadAwarePReLU(16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    ctx = compress_relu_activations()
    x = torch.randn(10, 8)
    for a, b in zip(run(m, x), run(m, x, ctx)):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_left_uncompressed():
    model = mlp(torch.float32).cuda()
    x = torch.randn(40, 24, device="cuda")
    ctx = compress_relu_activations()
    for a, b in zip(run(model, x), run(model, x, ctx)):
        assert_bitwise(a, b)
    assert ctx.stats["compressed"] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 5, 64, 1001])
def test_composite_kernels_match_cpu(dtype, n):
    # The ATen composite (every device without its own kernel) and the CPU
    # kernel store the same layout.
    composite = torch._C.DispatchKey.CompositeExplicitAutograd
    t = F.relu(torch.randn(n)).to(dtype)
    if n:
        t[0] = -0.0
    bits, values = torch.ops.relu_ext.relu_pack(t)
    cbits, cvalues = torch.ops.relu_ext.relu_pack.default._op_dk(composite, t)
    assert torch.equal(bits, cbits)
    assert_bitwise(values, cvalues)
    assert_bitwise(torch.ops.relu_ext.relu_unpack.default._op_dk(composite, bits, values, [n]), t)


def test_inplace_after_save_raises_for_whole_view():
    # nn.Linear on a 3-D input saves a reshape of the output: still checked.
    x = torch.randn(2, 8, 8)
    w = torch.randn(12, 8, requires_grad=True)
    lin = nn.Linear(12, 4)
    ctx = compress_relu_activations()
    with ctx:
        h = fused_linear_relu(x, w)
        loss = lin(h).sum()
    assert ctx.stats["compressed"] == 1
    with torch.no_grad():
        h.mul_(2)
    with pytest.raises(RuntimeError, match="compress_relu_activations: .*modified by an inplace operation"):
        loss.backward()
