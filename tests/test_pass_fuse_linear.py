"""fuse_linear: linear + bias + relu / gelu (exact or tanh) -> fxc::linear_act.

Structure, lint, numbers (bitwise on CPU: the fused op runs the same ATen ops), refusals with
their reason, idempotence; on hand-written models, on ATen graphs drawn directly and on
fxc.testing's random graphs with planted linear -> relu / gelu patterns; the mlp zoo model.
"""
import collections

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fxc
from fxc import ir
from fxc.capture import capture
from fxc.models import get
from fxc.passes import fuse_linear
from fxc.testing import FLOATS, graphs, plant_linear_relu
from test_pass_fuse_bn import AtenGraph  # noqa: E402  (the drawn graphs' builder)
import passkit  # noqa: E402
from passkit import ctx, count, outputs  # noqa: E402

aten = torch.ops.aten
LINEAR_ACT = torch.ops.fxc.linear_act.default


def run_checked(gm, inputs):
    return passkit.run_checked(fuse_linear, gm, inputs, ctx(), passkit.bitwise)[0]


def acts_of(gm):
    return [n.args[3] for n in gm.graph.nodes if n.op == "call_function" and n.target is LINEAR_ACT]


# -- hand-written models ---------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16, bias=False), nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.gelu(self.b(x))
        x = F.gelu(self.c(x), approximate="tanh")
        return self.d(x)  # no activation: stays aten.linear


class WeightAsInput(nn.Module):
    def forward(self, x, w, b):
        return F.relu(F.linear(x, w, b))


@pytest.mark.parametrize("x_shape", [(3, 8), (2, 5, 8), (8,), (2, 1, 3, 8)])
def test_mlp_any_leading_dims(x_shape):
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(x_shape)
    gm = capture(model, (x,), {}).gm
    result = run_checked(gm, (x,))
    assert result.rewrites == 3 and acts_of(gm) == ["relu", "gelu", "gelu_tanh"]
    assert count(gm, aten.relu.default, aten.gelu.default) == 0
    assert count(gm, aten.linear.default) == 1
    with torch.no_grad():
        assert torch.equal(gm(x)[0], model(x))


def test_weights_need_not_be_constants():
    x, w, b = torch.randn(4, 6), torch.randn(5, 6), torch.randn(5)
    gm = capture(WeightAsInput(), (x, w, b), {}).gm
    assert run_checked(gm, (x, w, b)).rewrites == 1 and acts_of(gm) == ["relu"]


class Pattern(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.case, self.fc = case, nn.Linear(6, 5)

    def forward(self, x):
        y, c = self.fc(x), self.case
        if c == "other_user":
            return F.relu(y) + y
        if c == "linear_returned":
            return F.relu(y), y
        if c == "silu":
            return F.silu(y)
        if c == "relu6":
            return F.relu6(y)
        if c == "leaky_relu":
            return F.leaky_relu(y)
        return torch.sigmoid(y)


REFUSALS = {
    "other_user": "the linear output has another user",
    "linear_returned": "the linear output is also a graph output",
    "silu": "activation silu: linear_act has relu and gelu only",
    "relu6": "activation hardtanh: linear_act has relu and gelu only",
    "sigmoid": "activation sigmoid: linear_act has relu and gelu only",
    "leaky_relu": "unsupported activation aten.leaky_relu.default",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_must_not_fire(case):
    x = torch.randn(3, 6)
    gm = capture(Pattern(case).eval(), (x,), {}).gm
    code, before = gm.code, outputs(gm, (x,))
    result = fuse_linear.run(gm, ctx())
    gm.recompile()
    assert result.rewrites == 0 and gm.code == code
    assert any(REFUSALS[case] in n for n in result.notes), result.notes
    assert all(torch.equal(a, b) for a, b in zip(outputs(gm, (x,)), before))


# -- ATen graphs drawn directly ----------------------------------------------------------------

DRAWN_ACTS = {  # how the graph writes it -> the fused act, or the refusal
    "relu": (lambda g, y: g.call(aten.relu.default, y), "relu"),
    "gelu": (lambda g, y: g.call(aten.gelu.default, y), "gelu"),
    "gelu_none_kw": (lambda g, y: g.call(aten.gelu.default, y, approximate="none"), "gelu"),
    "gelu_tanh": (lambda g, y: g.call(aten.gelu.default, y, approximate="tanh"), "gelu_tanh"),
    "silu": (lambda g, y: g.call(aten.silu.default, y),
             "refused: activation silu: linear_act has relu and gelu only"),
    "hardtanh": (lambda g, y: g.call(aten.hardtanh.default, y, 0.0, 6.0),
                 "refused: activation hardtanh: linear_act has relu and gelu only"),
    "tanh": (lambda g, y: g.call(aten.tanh.default, y),
             "refused: unsupported activation aten.tanh.default"),
}


@st.composite
def linear_patterns(draw):
    dt = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    rnd = lambda *s: torch.randn(*s, generator=gen).to(dt)  # noqa: E731
    g = AtenGraph()
    fin, fout = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    lead = [draw(st.integers(0 if i else 1, 3)) for i in range(draw(st.integers(0, 3)))]
    x = g.input(rnd(*lead, fin))
    w = (g.input if draw(st.sampled_from([False] * 4 + [True])) else g.const)(rnd(fout, fin))
    b = (g.input if draw(st.sampled_from([False] * 4 + [True])) else g.const)(rnd(fout)) if draw(
        st.booleans()) else None
    lin = g.call(aten.linear.default, x, w, b)
    name = draw(st.sampled_from(sorted(DRAWN_ACTS)))
    write, expected = DRAWN_ACTS[name]
    outs = [write(g, lin)]
    extra = draw(st.sampled_from(["none"] * 7 + ["output", "user"]))
    if extra == "output":
        outs.append(lin)
        expected = "refused: the linear output is also a graph output"
    elif extra == "user":
        outs.append(g.call(aten.neg.default, lin))
        expected = "refused: the linear output has another user"
    return g.build(outs), g.inputs, expected


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(linear_patterns())
def test_drawn_aten_graphs(case):
    gm, inputs, expected = case
    code = gm.code
    if expected.startswith("refused: "):
        result = fuse_linear.run(gm, ctx())
        gm.recompile()
        assert result.rewrites == 0 and gm.code == code
        assert any(expected.removeprefix("refused: ") in n for n in result.notes), result.notes
    else:
        assert run_checked(gm, inputs).rewrites == 1 and acts_of(gm) == [expected]
        assert count(gm, aten.linear.default) == 0


# -- fxc.testing's random graphs with planted patterns ---------------------------------------

def plant_linear_gelu(b, draw):
    """linear (any rank >= 1, bias or not) -> gelu, exact or tanh."""
    x = b.pick_value(draw, dtypes=FLOATS, min_rank=1)
    y = b.add("linear", x, out_features=draw(st.integers(1, 8)), bias=draw(st.booleans()),
              module=draw(st.booleans()))
    return b.add("gelu", y, approximate=draw(st.sampled_from(["none", "tanh"])))


@settings(max_examples=max(1, settings.default.max_examples // 16),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(graphs(max_ops=5, plant=[plant_linear_relu, plant_linear_gelu]))
def test_generated_graphs(g):
    gm = capture(g.module, g.inputs, {}).gm
    run_checked(gm, g.inputs)
    for n in gm.graph.nodes:  # nothing fusable is left
        if n.op == "call_function" and n.target is aten.linear.default:
            assert not fuse_linear.match(n, ctx()), f"{n} was left fusable"


# -- the zoo ---------------------------------------------------------------------------------

@pytest.mark.slow  # 5-20 s each on 2 shared cores
@pytest.mark.parametrize("name", ["mlp", "vit"])
def test_zoo(name):
    model, inputs = get(name, "tiny")
    compiled = fxc.compile(model, inputs, verify=True)
    ops = collections.Counter(ir.op_name(n) for n in compiled.graph.graph.nodes)
    assert ops["fxc.linear_act.default"] > 0
    assert ops["aten.relu.default"] == 0 and ops["aten.gelu.default"] == 0, ops
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))
