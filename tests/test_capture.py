"""Capture: structures in and out, meta on every node, the user's line, clear errors."""
import dataclasses
from collections import namedtuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxc
from fxc import ir
from fxc.capture import capture, normalize_inputs


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, pair, *, scale):
        a, b = pair
        return {"y": self.lin(x) * scale["s"], "rest": [a + b, (b.sum(), x)]}


@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    extras: tuple


class DataclassOut(nn.Module):
    def forward(self, x):
        return Out(logits=x.relu(), extras=(x * 2, x - 1))


Pair = namedtuple("Pair", "first second")


class NamedTupleOut(nn.Module):
    def forward(self, x):
        return Pair(x.sin(), x.cos())


def _inputs():
    return (torch.randn(2, 4), (torch.randn(3), torch.randn(3))), {"scale": {"s": torch.randn(4)}}


def test_nested_inputs_and_outputs_round_trip():
    args, kwargs = _inputs()
    m = Nested().eval()
    compiled = fxc.compile(m, {**dict(zip(["x", "pair"], args)), **kwargs})
    out = compiled(*args, **kwargs)
    torch.testing.assert_close(out, m(*args, **kwargs))
    assert isinstance(out, dict) and isinstance(out["rest"], list) and isinstance(out["rest"][1], tuple)


def test_dataclass_and_namedtuple_outputs_keep_their_type():
    x = torch.randn(3, 5)
    out = fxc.compile(DataclassOut(), (x,))(x)
    assert isinstance(out, Out)
    torch.testing.assert_close(out.logits, x.relu())
    torch.testing.assert_close(out.extras[1], x - 1)
    nt = fxc.compile(NamedTupleOut(), (x,))(x)
    assert isinstance(nt, Pair)
    torch.testing.assert_close(nt.second, x.cos())


def test_every_node_has_meta_and_the_users_source_line():
    m = Nested().eval()
    args, kwargs = _inputs()
    cap = capture(m, args, kwargs)
    for node in cap.gm.graph.nodes:
        if node.op != "output":
            assert "val" in node.meta, node
    linear = next(n for n in cap.gm.graph.nodes if n.target == torch.ops.aten.linear.default)
    src = ir.source_line(linear)
    assert src is not None and __file__ in src and "self.lin(x)" in src
    ir.lint(cap.gm)


def test_parameters_become_constants_and_placeholders_are_tensor_inputs_only():
    m = Nested().eval()
    args, kwargs = _inputs()
    cap = capture(m, args, kwargs)
    placeholders = [n for n in cap.gm.graph.nodes if n.op == "placeholder"]
    assert len(placeholders) == 4  # x, pair[0], pair[1], scale['s']
    attrs = {n.target for n in cap.gm.graph.nodes if n.op == "get_attr"}
    assert len(attrs) == 2  # weight and bias
    names = [s.name for s in cap.inputs]
    assert names == ["x", "pair[0]", "pair[1]", "scale['s']"]


def test_non_tensor_inputs_are_specialized_and_checked():
    class M(nn.Module):
        def forward(self, x, n: int, flag=None):
            return x * n

    x = torch.randn(3)
    compiled = fxc.compile(M(), (x, 3, None))
    torch.testing.assert_close(compiled(x, 3, None), x * 3)
    with pytest.raises(fxc.FxcInputError, match="'n'.*constant 3, got 4"):
        compiled(x, 4, None)


def test_symbolic_traced_graph_module_is_accepted():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return F.relu(self.conv(x)).flatten(1)

    m = M().eval()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(fxc.compile(gm, (x,))(x), m(x))


def test_data_dependent_control_flow_is_a_short_capture_error_with_the_users_line():
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent: export cannot capture this
                return x + 1
            return x - 1

    with pytest.raises(fxc.FxcCaptureError) as info:
        fxc.compile(Branchy(), (torch.randn(3),))
    msg = str(info.value)
    assert "if x.sum() > 0" in msg and __file__ in msg
    assert len(msg.splitlines()) <= 6
    assert isinstance(info.value, fxc.FxcError)


def test_model_failing_in_eager_is_a_capture_error():
    class Broken(nn.Module):
        def forward(self, x):
            return x @ torch.ones(7, 2)

    with pytest.raises(fxc.FxcCaptureError, match="eager") as info:
        fxc.compile(Broken(), (torch.randn(2, 3),))
    assert "x @ torch.ones(7, 2)" in str(info.value)


def test_buffer_mutation_in_forward_is_refused():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls.add_(1)
            return x * 2

    with pytest.raises(fxc.FxcCaptureError, match="mutates"):
        fxc.compile(Counter(), (torch.randn(2),))


def test_not_a_module_is_refused():
    with pytest.raises(fxc.FxcCaptureError, match="nn.Module"):
        fxc.compile(lambda x: x + 1, (torch.randn(2),))


def test_training_mode_model_is_captured_in_eval_and_restored():
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).train()
    x = torch.randn(8, 4)
    compiled = fxc.compile(m, (x,))
    assert m.training  # the user's flag is restored
    m.eval()
    torch.testing.assert_close(compiled(x), m(x))


def test_normalize_inputs_accepts_tensor_tuple_and_dict():
    t = torch.randn(1)
    assert normalize_inputs(t) == ((t,), {})
    assert normalize_inputs([t, t])[0] == (t, t)
    assert normalize_inputs({"x": t}) == ((), {"x": t})
