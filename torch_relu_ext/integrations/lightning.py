"""A Lightning callback that logs the dead-neuron statistics of every tracked
layer (FusedLinearReLU, DeadAwarePReLU) to the trainer's loggers and can
revive dead units on a schedule (torch_relu_ext.revive_dead_).

    from lightning.pytorch import Trainer
    from torch_relu_ext.integrations.lightning import DeadNeuronMonitor

    trainer = Trainer(callbacks=[DeadNeuronMonitor(log_every_n_steps=50, revive_every_n_steps=1000)])

Needs the ``lightning`` package (pip install lightning).
"""

import numbers
from typing import Dict, List, Optional, Tuple

import torch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as e:
    raise ImportError(
        "torch_relu_ext.integrations.lightning needs the 'lightning' package, which is not installed: pip install lightning"
    ) from e

from ..dead import revive_dead_, sync_dead_stats
from ..nn import DeadAwarePReLU, FusedLinearReLU

__all__ = ["DeadNeuronMonitor"]


def _positive_int(name: str, value, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"DeadNeuronMonitor: expected {name} to be {expected}, but got {value!r}")
    return int(value)


def _fraction(name: str, value, allow_none: bool = False) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        expected = "a number in [0, 1] or None" if allow_none else "a number in [0, 1]"
        raise ValueError(f"DeadNeuronMonitor: expected {name} to be {expected}, but got {value!r}")
    return float(value)


class DeadNeuronMonitor(Callback):
    """Logs, every ``log_every_n_steps`` optimizer steps, each tracked layer's
    dead fraction as ``{prefix}/{layer name}/dead_fraction`` (and, with
    ``log_dormant=True``, the ReDo tau-dormant fraction as
    ``.../dormant_fraction``; the layers need ``track_dormant=True``) to every
    logger of the trainer.

    With ``revive_every_n_steps``, every that many optimizer steps it calls
    ``torch_relu_ext.revive_dead_(model, trainer.optimizers[0], threshold)``
    (after the step's logging), logs the number of revived units as
    ``{prefix}/revived_units`` and appends ``(step, revive_dead_'s result)`` to
    ``self.revivals``.

    Args:
        log_every_n_steps: logging period in optimizer steps (trainer.global_step).
        log_dormant: also log the dormant fraction (ReDo score <= dormant_tau).
        dormant_tau: ReDo's tau.
        threshold: dead threshold on the EMA active fraction (None: each layer's
            dead_threshold).
        revive_every_n_steps: revival period in optimizer steps, None = never.
        prefix: metric name prefix.
        sync: average the statistics over the ranks (torch_relu_ext.sync_dead_stats)
            before logging or reviving when training runs on several processes.
    """

    def __init__(
        self,
        log_every_n_steps: int = 50,
        *,
        log_dormant: bool = False,
        dormant_tau: float = 0.025,
        threshold: Optional[float] = None,
        revive_every_n_steps: Optional[int] = None,
        prefix: str = "dead_neurons",
        sync: bool = True,
    ) -> None:
        super().__init__()
        self.log_every_n_steps = _positive_int("log_every_n_steps", log_every_n_steps)
        self.revive_every_n_steps = _positive_int("revive_every_n_steps", revive_every_n_steps, allow_none=True)
        self.threshold = _fraction("threshold", threshold, allow_none=True)
        self.dormant_tau = _fraction("dormant_tau", dormant_tau)
        if not isinstance(log_dormant, bool):
            raise ValueError(f"DeadNeuronMonitor: expected log_dormant to be a bool, but got {log_dormant!r}")
        if not isinstance(sync, bool):
            raise ValueError(f"DeadNeuronMonitor: expected sync to be a bool, but got {sync!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"DeadNeuronMonitor: expected prefix to be a non-empty str, but got {prefix!r}")
        self.log_dormant = log_dormant
        self.prefix = prefix
        self.sync = sync
        self.revivals: List[Tuple[int, Dict[str, dict]]] = []
        self.last_metrics: Dict[str, float] = {}
        self._last_step = -1

    @staticmethod
    def _layers(pl_module) -> List[Tuple[str, torch.nn.Module]]:
        return [(name, m) for name, m in pl_module.named_modules() if isinstance(m, (FusedLinearReLU, DeadAwarePReLU))]

    def on_fit_start(self, trainer, pl_module) -> None:
        layers = self._layers(pl_module)
        if not layers:
            raise ValueError(
                f"DeadNeuronMonitor: the model {type(pl_module).__name__} has no FusedLinearReLU or DeadAwarePReLU "
                "layer to monitor (torch_relu_ext.convert(model) replaces Linear+ReLU and PReLU)"
            )
        if self.log_dormant and not any(m.track_dormant for _, m in layers):
            raise ValueError("DeadNeuronMonitor: log_dormant=True needs layers built with track_dormant=True, but none is")
        if self.revive_every_n_steps is not None and len(trainer.optimizers) > 1:
            raise ValueError(
                f"DeadNeuronMonitor: revival resets the moments of one optimizer, but the trainer has {len(trainer.optimizers)}"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: no optimizer step since the last call
            return
        self._last_step = step
        log_now = step % self.log_every_n_steps == 0
        revive_now = self.revive_every_n_steps is not None and step % self.revive_every_n_steps == 0
        if not (log_now or revive_now):
            return
        if self.sync and trainer.world_size > 1:
            sync_dead_stats(pl_module)
        metrics: Dict[str, float] = {}
        if log_now:
            for name, m in self._layers(pl_module):
                metrics[f"{self.prefix}/{name}/dead_fraction"] = m.dead_fraction(self.threshold)
                if self.log_dormant and m.track_dormant:
                    mask = m.dormant_mask(self.dormant_tau)
                    metrics[f"{self.prefix}/{name}/dormant_fraction"] = mask.float().mean().item() if mask.numel() else 0.0
        if revive_now:
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            changes = revive_dead_(pl_module, optimizer, threshold=self.threshold)
            self.revivals.append((step, changes))
            # Units whose weights changed: a PReLU record lists its dead units and the reset slopes;
            # a layer revive_dead_ left alone ("skipped": why) changed nothing.
            revived = sum(len(c.get("slope_reset", c["units"])) for c in changes.values() if "skipped" not in c)
            metrics[f"{self.prefix}/revived_units"] = float(revived)
        self.last_metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
