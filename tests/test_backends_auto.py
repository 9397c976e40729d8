"""backend='auto': the first backend of AUTO_ORDER that can take the graph, else the next,
with the reason in the report; a named backend never falls back. On CPU the order is
onnxruntime, torch."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxc
from fxc import FxcOptionError, FxcUnsupportedOpError, backends


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return torch.relu(self.fc(x))


class Cumprod(nn.Module):
    """aten.cumprod has no ONNX converter: onnxruntime cannot take this graph."""

    def forward(self, x):
        return torch.cumprod(x, 1) + 1


class Erf64(nn.Module):
    """Lowers fine, but ONNX Runtime has no float64 Erf kernel: its session refuses."""

    def forward(self, x):
        return torch.special.erf(x) + 1


class Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).relu()


def backend_line(compiled) -> str:
    return next(line for line in compiled.report().splitlines() if line.startswith("backend:"))


def test_cpu_order_puts_onnxruntime_first_and_torch_last():
    assert backends.AUTO_ORDER["cpu"] == ["onnxruntime", "torch"]
    assert backends.AUTO_ORDER["cuda"][-1] == "torch"


def test_auto_on_cpu_runs_onnxruntime():
    model, x = Small().eval(), torch.randn(3, 6)
    compiled = fxc.compile(model, (x,))
    assert compiled.engine.name == "onnxruntime" == compiled.report_data.backend
    assert backend_line(compiled).startswith("backend: onnxruntime (auto")
    out = compiled(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model, x, why", [
    (Cumprod(), torch.randn(2, 5), "1 op(s) unsupported: aten.cumprod.default"),
    (Erf64(), torch.randn(3, dtype=torch.float64), "no ONNX Runtime kernel"),
])
def test_auto_falls_back_to_torch_and_says_why(model, x, why):
    compiled = fxc.compile(model, (x,))
    assert compiled.engine.name == "torch"
    line = backend_line(compiled)
    assert line.startswith("backend: torch (auto; onnxruntime could not take this graph")
    assert why in line
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("model, x", [(Cumprod(), torch.randn(2, 5)),
                                      (Erf64(), torch.randn(3, dtype=torch.float64))])
def test_a_named_backend_never_falls_back(model, x):
    with pytest.raises(FxcUnsupportedOpError) as err:
        fxc.compile(model, (x,), backend="onnxruntime")
    assert err.value.backend == "onnxruntime"


def test_bf16_conv_is_a_typed_refusal_and_auto_falls_back():
    """ONNX types Conv for float/double/half only: the checker's refusal names the node."""
    model, x = Conv().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(FxcUnsupportedOpError, match=r"ONNX Conv .*bfloat16") as err:
        fxc.compile(model, (x,), backend="onnxruntime", precision="bf16")
    assert "conv" in str(err.value)  # the node's name
    compiled = fxc.compile(model, (x,), precision="bf16")
    assert compiled.engine.name == "torch" and "ONNX Conv" in backend_line(compiled)


@pytest.mark.parametrize("option, value", [("zero_copy_outputs", True), ("plan_memory", False),
                                           ("planner", "breadth")])
def test_a_torch_runtime_option_makes_auto_pick_torch(option, value):
    model, x = Small().eval(), torch.randn(3, 6)
    compiled = fxc.compile(model, (x,), **{option: value})
    assert compiled.engine.name == "torch"
    assert f"onnxruntime passed over: {option}={value!r}" in backend_line(compiled)
    torch.testing.assert_close(compiled(x), model(x))


def test_auto_without_onnxruntime_runs_torch(monkeypatch):
    from fxc.runtime import ort_engine
    monkeypatch.setattr(ort_engine, "unavailable", lambda device: "onnxruntime is not installed")
    compiled = fxc.compile(Small().eval(), (torch.randn(3, 6),))
    assert compiled.engine.name == "torch"
    assert "onnxruntime passed over: onnxruntime is not installed" in backend_line(compiled)


def test_a_named_backend_has_no_backend_line():
    compiled = fxc.compile(Small().eval(), (torch.randn(3, 6),), backend="torch")
    assert compiled.engine.name == "torch"
    assert not any(line.startswith("backend:") for line in compiled.report().splitlines())


def test_choose_under_auto_is_the_first_usable_without_building():
    from fxc.options import resolve
    opts = resolve(device="cpu", precision="fp32", backend="auto", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    assert backends.choose(opts).name == "onnxruntime"


def test_profile_on_onnxruntime_says_to_compile_for_torch():
    x = torch.randn(3, 6)
    compiled = fxc.compile(Small().eval(), (x,))
    with pytest.raises(FxcOptionError, match=r"profile\(\).*onnxruntime.*backend='torch'"):
        compiled.profile(x, iters=2, quiet=True)


def test_dynamic_batch_is_no_reason_to_pass_over_a_backend():
    """dynamic_batch=True is a dynamic_shapes shorthand: auto keeps ONNX Runtime, and where the
    lowering cannot keep the batch symbolic, it falls back to torch, which runs it."""
    model = Small().eval()
    compiled = fxc.compile(model, (torch.randn(3, 6),), dynamic_batch=True)
    assert compiled.engine.name == "onnxruntime"
    x = torch.randn(7, 6)
    torch.testing.assert_close(compiled(x), model(x))

    class MixesBatch(nn.Module):  # reduces over the batch: fine for a symbolic capture
        def forward(self, x):
            return x.reshape(-1).softmax(0)

    model = MixesBatch()
    compiled = fxc.compile(model, (torch.randn(2, 3),), dynamic_batch=True)
    x = torch.randn(5, 3)
    torch.testing.assert_close(compiled(x), model(x))


def test_torch_compile_backend_runs_through_auto():
    from fxc.dynamo import register
    register()
    model, x = Small().eval(), torch.randn(3, 6)
    torch._dynamo.reset()
    fn = torch.compile(model, backend="fxc")
    torch.testing.assert_close(fn(x), model(x), rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
