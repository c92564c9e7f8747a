"""FSDP2 (fully_shard) on CPU with gloo: a model with both modules trains
sharded over two processes with the gradients of a single-process run."""

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from torch import nn

from torch_relu_ext.nn import DeadAwarePReLU, FusedLinearReLU

fsdp = pytest.importorskip("torch.distributed.fsdp", reason="FSDP is not in this torch build")


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(FusedLinearReLU(6, 16), nn.Linear(16, 16), DeadAwarePReLU(16), nn.Linear(16, 3)).double()


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)


def _worker(rank, port, out):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    model = make_model()
    for layer in model:
        if any(True for _ in layer.parameters()):
            fsdp.fully_shard(layer, mesh=mesh)
    fsdp.fully_shard(model, mesh=mesh)
    x, y = data()
    F.cross_entropy(model(x[rank * 4 : (rank + 1) * 4]), y[rank * 4 : (rank + 1) * 4]).backward()
    grads = [p.grad.full_tensor() for p in model.parameters()]
    torch.save(grads, f"{out}.{rank}")
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp2_two_ranks_match_single_process(tmp_path):
    port = free_port()
    out = str(tmp_path / "fsdp")
    mp.spawn(_worker, args=(port, out), nprocs=2, join=True)
    model = make_model()
    x, y = data()
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad for p in model.parameters()]
    for rank in (0, 1):
        for a, b in zip(torch.load(f"{out}.{rank}"), expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
