import pytest
import torch

import torch_relu_ext  # noqa: F401  (registers torch.ops.relu_ext)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield
