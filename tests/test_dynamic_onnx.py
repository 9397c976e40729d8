"""The ONNX lowering of symbolic shapes (issue 13.4): sizes computed in the graph become ONNX
values read off Shape at run time, so one model runs every size of the range on ONNX
Runtime; a converter that would read a symbolic size as a number refuses (named, with why),
and backend='auto' then falls back to the torch runtime."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import fxc
from fxc.capture import capture
from fxc.lowering import to_onnx


class Shapes(nn.Module):
    """reshape/view, expand, slice to a symbolic end, arange, ones, full_like, size math."""

    def forward(self, x, y):
        b, t = x.shape[0], x.shape[1]
        flat = x.reshape(b * t, x.shape[2])                          # (B*T, D)
        pos = torch.arange(t, dtype=x.dtype)[None, :, None]          # (1, T, 1)
        ones = torch.ones(b, t, 1, dtype=x.dtype)                    # (B, T, 1)
        cut = y[:, : t - 1]                                          # (B, T-1, D)
        wide = pos.expand(b, t, x.shape[2])                          # (B, T, D)
        return flat * 2, x + wide * ones, cut.exp() + torch.full_like(cut, 0.5)


class Repeats(nn.Module):
    def forward(self, x):
        return x.repeat(2, 1, 1)  # its converter reshapes with the input's sizes


_B, _T = Dim("batch", min=1, max=16), Dim("seq", min=3, max=64)  # seq 2: a slice of 1 row
SHAPES = ({0: _B, 1: _T}, {0: _B, 1: _T})


def test_size_arithmetic_and_shape_ops_run_every_size_on_onnxruntime():
    model = Shapes()
    xs = (torch.randn(3, 6, 4), torch.randn(3, 6, 4))
    compiled = fxc.compile(model, xs, backend="onnxruntime", dynamic_shapes=SHAPES)
    for n, t in [(1, 3), (16, 64), (5, 9), (3, 6)]:
        ys = (torch.randn(n, t, 4), torch.randn(n, t, 4))
        for got, want in zip(compiled(*ys), model(*ys)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)


def test_a_range_the_model_cannot_take_says_which_guard():
    with pytest.raises(fxc.FxcCaptureError, match=r"does not run every size of the declared "
                                                  r"range \(Not all values of seq"):
        fxc.compile(Shapes(), (torch.randn(3, 6, 4), torch.randn(3, 6, 4)), backend="torch",
                    dynamic_shapes=({0: _B, 1: Dim("seq", min=2, max=64)},
                                    {0: _B, 1: Dim("seq", min=2, max=64)}))


def test_a_converter_reading_a_symbolic_size_refuses_by_name():
    gm = capture(Repeats(), (torch.randn(3, 4),), {}, ({0: Dim("batch", max=8)},)).gm
    with pytest.raises(fxc.FxcUnsupportedOpError, match=r"aten.repeat.default \(needs static "
                                                        r"shapes \(symbolic size s\d+\)\)"):
        to_onnx(gm)


def test_auto_falls_back_to_the_torch_runtime_and_says_why():
    model = Repeats()
    compiled = fxc.compile(model, (torch.randn(3, 4),), dynamic_shapes=({0: Dim("batch", max=8)},))
    assert compiled.engine.name == "torch"
    assert "needs static shapes" in compiled.report()
    x = torch.randn(7, 4)
    torch.testing.assert_close(compiled(x), model(x))
