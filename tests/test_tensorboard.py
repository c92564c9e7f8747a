"""DeadNeuronReport.to_tensorboard with the real SummaryWriter, read back from
the event file with TensorBoard's EventAccumulator."""

import pytest
import torch
from torch import nn

from torch_relu_ext import DeadAwarePReLU, FusedLinearReLU, dead_neuron_report

pytest.importorskip("tensorboard", reason="tensorboard is in requirements-dev.txt")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter


def test_to_tensorboard_event_file(tmp_path):
    model = nn.Sequential(FusedLinearReLU(5, 8), FusedLinearReLU(8, 6), nn.Linear(6, 3), DeadAwarePReLU(3))
    with torch.no_grad():
        model[0].bias[:3] = -100.0  # units 0-2 never fire: dead
    model.train()
    writer = SummaryWriter(str(tmp_path))
    written = {}
    for step in (0, 5, 11):
        for _ in range(4):
            model(torch.randn(16, 5))
        report = dead_neuron_report(model)
        report.to_tensorboard(writer, step)
        written[step] = report
    writer.close()

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    layers = ["0", "1", "3"]
    tags = {f"dead_neurons/{name}/{field}" for name in layers for field in ("dead_pct", "min_active", "median_active")}
    assert set(acc.Tags()["scalars"]) == tags
    assert written[11][0].dead == 3  # the forced units are seen dead
    for row_index, name in enumerate(layers):
        for field in ("dead_pct", "min_active", "median_active"):
            events = acc.Scalars(f"dead_neurons/{name}/{field}")
            assert [e.step for e in events] == [0, 5, 11]
            want = [getattr(written[s][row_index], field) for s in (0, 5, 11)]
            # Event files store float32.
            assert [e.value for e in events] == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert acc.Scalars("dead_neurons/0/dead_pct")[-1].value == pytest.approx(100.0 * 3 / 8)
