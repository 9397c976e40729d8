"""A refused compile leaves the user's model and example inputs as they were; a model in train
mode is compiled with eval semantics and a warning (issue 16.5)."""
import pytest
import torch
import torch.nn as nn

import fxc
from fxc import FxcCaptureError


class Mutating(nn.Module):
    """Counts calls in a buffer, writes into its input, then branches on data: export refuses."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        self.count += 1
        x.add_(1)
        if x.sum() > 0:
            return x * 2
        return x


def test_a_failed_compile_restores_buffers_and_inputs():
    m, x = Mutating().eval(), torch.ones(3)
    with pytest.raises(FxcCaptureError):
        fxc.compile(m, (x,))
    assert m.count.item() == 0 and x.tolist() == [1.0, 1.0, 1.0]


def test_a_train_mode_model_is_compiled_for_inference_with_a_warning():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    x = torch.randn(8, 4)
    with pytest.warns(UserWarning, match="train mode"):
        c = fxc.compile(m, (x,), backend="torch")
    torch.testing.assert_close(c(x), m.eval()(x))  # eval semantics: running stats, no dropout
