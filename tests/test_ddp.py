"""Two-process DistributedDataParallel training (gloo, CPU, loopback): the
gradients and parameters on both ranks equal a single-process run on the
concatenated batch."""

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from torch import nn

from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

STEPS = 3


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(FusedLinearReLU(6, 16), nn.Linear(16, 16), DeadAwarePReLU(16), nn.Linear(16, 3)).double()


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)) for _ in range(STEPS)]


def train(model, data, rank=None, world=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = []
    for x, y in data:
        if rank is not None:  # this rank's half of the global batch
            half = x.shape[0] // world
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _worker(rank, world, port, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ddp = nn.parallel.DistributedDataParallel(make_model())
    grads, params = train(ddp, batches(), rank, world)
    torch.save({"grads": grads, "params": params}, f"{out}.{rank}")
    # Both ranks done before either tears down: a rank that exits while its
    # peer's gloo threads still talk to it made the peer abort ("terminate
    # called without an active exception", seen under load in a full run).
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_two_ranks_equal_single_process(tmp_path):
    port = free_port()
    out = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    ref_grads, ref_params = train(make_model(), batches())
    for rank in (0, 1):
        res = torch.load(f"{out}.{rank}")
        for step, (g_ddp, g_ref) in enumerate(zip(res["grads"], ref_grads)):
            for a, b in zip(g_ddp, g_ref):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"rank {rank} step {step}")
        for a, b in zip(res["params"], ref_params):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
