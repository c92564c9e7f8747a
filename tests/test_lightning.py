"""torch_relu_ext.integrations.lightning.DeadNeuronMonitor in a real Lightning
Trainer (CPU, CSVLogger)."""

import csv
import importlib
import sys

import pytest
import torch
from torch import nn

from torch_relu_ext import FusedLinearReLU

pytestmark = [
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),  # inside lightning
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]

pl = pytest.importorskip("lightning.pytorch", reason="lightning is in requirements-dev.txt")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from torch_relu_ext.integrations.lightning import DeadNeuronMonitor  # noqa: E402


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(FusedLinearReLU(4, 16, track_dormant=True), FusedLinearReLU(16, 8), nn.Linear(8, 1))
        with torch.no_grad():
            self.net[0].bias[:4] = -100.0  # units 0-3 never fire: dead from the first batch

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class AdamStateAtRevival(pl.Callback):
    """Runs after the monitor: records layer 0's Adam moments of the revived rows."""

    def __init__(self, monitor):
        self.monitor, self.seen = monitor, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.monitor.revivals and self.monitor.revivals[-1][0] == trainer.global_step:
            state = trainer.optimizers[0].state[pl_module.net[0].weight]
            self.seen.append((trainer.global_step, state["exp_avg"][:4].abs().sum().item(), pl_module.net[0].bias[:4].tolist()))


def _loader(n=16 * 30):
    x = torch.randn(n, 4)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    return torch.utils.data.DataLoader(data, batch_size=16)


def test_monitor_logs_and_revives(tmp_path):
    monitor = DeadNeuronMonitor(log_every_n_steps=5, log_dormant=True, revive_every_n_steps=12)
    checker = AdamStateAtRevival(monitor)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=30,
        logger=CSVLogger(str(tmp_path), name="run"),
        callbacks=[monitor, checker],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1000,  # the monitor logs on its own schedule
    )
    trainer.fit(Regressor(), _loader())

    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    dead0 = {int(r["step"]): float(r["dead_neurons/net.0/dead_fraction"]) for r in rows if r["dead_neurons/net.0/dead_fraction"]}
    dead1 = {int(r["step"]): float(r["dead_neurons/net.1/dead_fraction"]) for r in rows if r["dead_neurons/net.1/dead_fraction"]}
    dormant0 = [r["dead_neurons/net.0/dormant_fraction"] for r in rows if r["dead_neurons/net.0/dormant_fraction"]]
    assert sorted(dead0) == sorted(dead1) == [5, 10, 15, 20, 25, 30]
    assert len(dormant0) == 6 and "dead_neurons/net.1/dormant_fraction" not in rows[0]  # only tracked layers
    # Units 0-3 of 16 are dead until the revival at step 12, alive afterwards.
    assert dead0[5] == dead0[10] == 0.25
    assert all(dead0[s] < 0.25 for s in (15, 20, 25, 30))
    assert float(dormant0[0]) >= 0.25  # dead units are dormant too

    revived = {int(r["step"]): float(r["dead_neurons/revived_units"]) for r in rows if r["dead_neurons/revived_units"]}
    step, changes = monitor.revivals[0]
    assert step == 12 and changes["net.0"]["units"] == [0, 1, 2, 3]
    assert sorted(revived) == [12, 24] and revived[12] == sum(len(c["units"]) for c in changes.values())
    # The trainer's optimizer was passed: the revived rows' Adam moments were zeroed.
    assert checker.seen[0] == (12, 0.0, [0.0, 0.0, 0.0, 0.0])


def test_monitor_rejects_bad_arguments():
    with pytest.raises(ValueError, match="log_every_n_steps to be a positive int, but got 0"):
        DeadNeuronMonitor(log_every_n_steps=0)
    with pytest.raises(ValueError, match="log_every_n_steps to be a positive int, but got 2.5"):
        DeadNeuronMonitor(log_every_n_steps=2.5)
    with pytest.raises(ValueError, match="revive_every_n_steps to be a positive int or None, but got True"):
        DeadNeuronMonitor(revive_every_n_steps=True)
    with pytest.raises(ValueError, match=r"threshold to be a number in \[0, 1\] or None, but got 1.5"):
        DeadNeuronMonitor(threshold=1.5)
    with pytest.raises(ValueError, match="dormant_tau"):
        DeadNeuronMonitor(dormant_tau="0.1")
    with pytest.raises(ValueError, match="prefix"):
        DeadNeuronMonitor(prefix="")


class Plain(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_monitor_rejects_model_without_tracked_layers(tmp_path):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        callbacks=[DeadNeuronMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    with pytest.raises(ValueError, match="Plain has no FusedLinearReLU or DeadAwarePReLU layer"):
        trainer.fit(Plain(), _loader(32))


def test_import_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning -> ImportError
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch.callbacks", None)
    monkeypatch.delitem(sys.modules, "torch_relu_ext.integrations.lightning")
    with pytest.raises(ImportError, match="pip install lightning"):
        importlib.import_module("torch_relu_ext.integrations.lightning")
