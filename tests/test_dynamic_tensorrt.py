"""TensorRT on dynamic shapes (issue 13.4): the one optimization profile spans every declared
range (min, opt = the example's size, max); checked without TensorRT (it cannot be
installed here), with a gpu-marked build-and-run test where it can."""
from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch
import torch.nn as nn
from torch.export import Dim

import fxc
from fxc.capture import capture
from fxc.lowering import tensorrt as trt_lowering
from fxc.lowering import to_onnx
from fxc.options import resolve

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, y):
        return torch.relu(self.fc(x)) + y


def _options(**kw):
    opts = resolve(device="cpu", precision="fp32", backend="auto", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    return dataclasses.replace(opts, **kw)


def _lowered(shapes):
    xs = (torch.randn(3, 5, 4), torch.randn(3, 5, 3))
    return to_onnx(capture(Net().eval(), xs, {}, shapes).gm)


def test_profile_spans_each_declared_range():
    b, s = Dim("batch", min=1, max=32), Dim("seq", min=2, max=64)
    lowered = _lowered(({0: b, 1: s}, {0: b, 1: s}))
    profile = trt_lowering.profile_shapes(lowered, _options())
    assert profile == {"x": ((1, 2, 4), (3, 5, 4), (32, 64, 4)),
                       "y": ((1, 2, 3), (3, 5, 3), (32, 64, 3))}


def test_an_open_range_ends_at_trt_max_batch():
    lowered = _lowered(({0: Dim.AUTO}, {0: Dim.AUTO}))
    lo, opt, hi = trt_lowering.profile_shapes(lowered, _options(trt_max_batch=16))["x"]
    assert (lo[0], opt[0], hi[0]) == (2, 3, 16) and lo[1:] == hi[1:] == (5, 4)


def test_the_profile_is_part_of_the_engine_key_inputs():
    """Two ranges, two profiles: a cached engine of one is never loaded for the other."""
    b8, b16 = Dim("b", min=1, max=8), Dim("b", min=1, max=16)
    p8 = trt_lowering.profile_shapes(_lowered(({0: b8}, {0: b8})), _options())
    p16 = trt_lowering.profile_shapes(_lowered(({0: b16}, {0: b16})), _options())
    assert repr(sorted(p8.items())) != repr(sorted(p16.items()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not HAS_TRT, reason="needs CUDA and TensorRT")
def test_tensorrt_runs_the_range_and_refuses_past_it(tmp_path):
    model = Net().eval().cuda()
    b = Dim("batch", min=1, max=8)
    xs = (torch.randn(3, 5, 4, device="cuda"), torch.randn(3, 5, 3, device="cuda"))
    compiled = fxc.compile(model, xs, backend="tensorrt", dynamic_shapes=({0: b}, {0: b}),
                           trt_cache_dir=str(tmp_path))
    for n in (1, 5, 8):
        ys = (torch.randn(n, 5, 4, device="cuda"), torch.randn(n, 5, 3, device="cuda"))
        torch.testing.assert_close(compiled(*ys), model(*ys), rtol=1e-3, atol=1e-3)
    with pytest.raises(fxc.FxcInputError, match=r"axis 0 \(batch\) expected a size in 1..8"):
        compiled(torch.randn(9, 5, 4, device="cuda"), torch.randn(9, 5, 3, device="cuda"))
