import pytest
import torch

import torch_relu_ext  # noqa: F401  (registers torch.ops.relu_ext)

ALL_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
    yield
