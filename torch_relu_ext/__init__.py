"""torch-relu-ext: fused linear+ReLU and dead-neuron-aware PReLU operators.

Importing this package registers the ``torch.ops.relu_ext`` operators (their
CPU kernels and C++ autograd live in the compiled ``_C`` module).
"""

import torch  # noqa: F401  (libtorch must be loaded before _C)

from . import (
    _C,  # noqa: F401  (registers torch.ops.relu_ext.*)
    _functionalize,  # noqa: F401  (dead_stats_update_ in export/compile graphs)
    _meta,  # noqa: F401  (fake kernels for compile/export/meta)
    functional,
    nn,
    utils,
)
from . import onnx as _onnx
from ._version import __version__
from .compress import compress_relu_activations
from .convert import ConversionReport, convert, revert
from .dead import DeadNeuronReport, dead_neuron_report, revive_dead_, sync_dead_stats
from .functional import dead_prelu, fused_linear_relu
from .nn import DeadAwarePReLU, FusedLinearReLU

# Plain torch.onnx.export works on models that use the operators.
_onnx._install()

__all__ = [
    "__version__",
    "functional",
    "nn",
    "fused_linear_relu",
    "dead_prelu",
    "FusedLinearReLU",
    "DeadAwarePReLU",
    "DeadNeuronReport",
    "dead_neuron_report",
    "revive_dead_",
    "sync_dead_stats",
    "utils",
    "convert",
    "revert",
    "ConversionReport",
    "compress_relu_activations",
]
