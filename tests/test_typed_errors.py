"""Errors a user can reach are fxc's own and say what to do (issue 16.4): a complex input under
backend='auto' falls back to the torch runtime (and names the input under 'onnxruntime'); a
device fxc cannot run on is refused before any pass."""
import pytest
import torch
import torch.nn as nn

import fxc
from fxc import FxcOptionError, FxcUnsupportedOpError


class Abs2(nn.Module):
    def forward(self, x):
        return (x * 2).abs()


def test_complex_inputs_fall_back_to_torch_under_auto_and_are_named_otherwise():
    x = torch.randn(3, dtype=torch.complex64)
    c = fxc.compile(Abs2(), (x,))
    assert c.report_data.backend == "torch" and "complex64" in c.report_data.backend_choice
    torch.testing.assert_close(c(x), Abs2()(x))
    with pytest.raises(FxcUnsupportedOpError, match=r"input of dtype torch.complex64.*node x"):
        fxc.compile(Abs2(), (x,), backend="onnxruntime")


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_devices_fxc_cannot_run_on_are_refused_up_front(device):
    with pytest.raises(FxcOptionError, match="'cpu' or 'cuda'|device="):
        fxc.compile(Abs2(), (torch.randn(3),), device=device)
