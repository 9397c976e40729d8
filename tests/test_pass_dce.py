"""Dead code elimination: structure, lint, bitwise numbers, and where it must not fire."""
import operator

import torch
import torch.fx as fx
import torch.nn as nn
from hypothesis import given, settings

import fxc
from fxc import ir
from fxc.capture import capture
from fxc.options import resolve
from fxc.passes import PassContext, dce
from fxc.testing import graphs

aten = torch.ops.aten


def _ctx(inputs):
    opts = resolve(device=None, precision="fp32", backend="torch", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    return PassContext(opts, list(inputs))


class Dead(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)

    def forward(self, x):
        _ = self.unused(x).relu()  # computed, never used
        return self.used(x)


def test_removes_unused_subgraph_and_its_parameters():
    x = torch.randn(2, 4)
    cap = capture(Dead().eval(), (x,), {})
    gm = cap.gm
    # torch.export already drops some dead code; plant more so the pass has work to do.
    with gm.graph.inserting_before(gm.graph.output_node()):
        ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
        dead = ir.new_call(gm.graph, aten.mul.Tensor, (ph, 3.0))
        ir.new_call(gm.graph, aten.relu.default, (dead,))
    gm.recompile()
    before = gm(x)
    n_before = len(gm.graph.nodes)
    result = dce.run(gm, _ctx([x]))
    gm.recompile()
    assert result.rewrites >= 2 and len(gm.graph.nodes) == n_before - result.rewrites
    assert not any(n.target is aten.mul.Tensor for n in gm.graph.nodes)
    ir.lint(gm)
    after = gm(x)
    assert all(torch.equal(a, b) for a, b in zip(after, before))  # bitwise
    attrs = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert set(dict(gm.named_buffers())) == attrs  # unused weights are gone from the module


def test_keeps_impure_nodes_and_outputs():
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(3)
    y = g.call_function(aten.add_.Tensor, (x, 1.0))  # in place: a side effect
    y.meta["val"] = torch.empty(3)
    out = g.call_function(aten.relu.default, (x,))
    out.meta["val"] = torch.empty(3)
    g.output((out,))
    gm = fx.GraphModule(nn.Module(), g)
    result = dce.run(gm, _ctx([torch.randn(3)]))
    assert result.rewrites == 0
    assert any(n.target is aten.add_.Tensor for n in gm.graph.nodes)


def test_idempotent_and_nothing_to_do_on_a_clean_graph():
    x = torch.randn(2, 4)
    gm = capture(Dead().eval(), (x,), {}).gm
    dce.run(gm, _ctx([x]))
    again = dce.run(gm, _ctx([x]))
    assert again.rewrites == 0


# Capture (torch.export) dominates the cost; DCE itself is simple: 40 graphs suffice in CI.
@settings(max_examples=15)
@given(graphs(max_ops=8))
def test_generated_graphs_bitwise_equal_after_dce(g):
    cap = capture(g.module, g.inputs, {})
    gm = cap.gm
    before = gm(*cap_inputs(g))
    # plant a dead use of every value so DCE always has something to remove
    values = [n for n in gm.graph.nodes if n.op in ("call_function", "placeholder")
              and n.target is not operator.getitem and isinstance(n.meta.get("val"), torch.Tensor)][:3]
    with gm.graph.inserting_before(gm.graph.output_node()):
        for n in values:
            ir.new_call(gm.graph, aten.clone.default, (n,))
    gm.recompile()
    result = dce.run(gm, _ctx(cap_inputs(g)))
    gm.recompile()
    ir.lint(gm)
    after = gm(*cap_inputs(g))
    for a, b in zip(after, before):
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a.nan_to_num(), b.nan_to_num())
        else:
            assert a == b
    assert dce.run(gm, _ctx(cap_inputs(g))).rewrites == 0
    assert result.rewrites >= len(values)


def cap_inputs(g):
    return [x for x in g.inputs if isinstance(x, torch.Tensor)]


def test_compile_end_to_end_runs_dce():
    x = torch.randn(2, 4)
    m = Dead().eval()
    c = fxc.compile(m, (x,))
    assert "dce" in c.report()
    torch.testing.assert_close(c(x), m(x))
