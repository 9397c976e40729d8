"""The lowering's own graph cleanup (lowering/builder.py: prune, check_order; fxc keeps these
instead of onnx-graphsurgeon, whose round trip drops the nodes' source lines): no emitted node
is dead, If branches keep the outer values they read, and nodes are in topological order."""
from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from fxc.capture import capture
from fxc.lowering import to_onnx
from fxc.lowering.builder import check_order, outer_reads, prune
from fxc.runtime.ort_engine import OrtEngine


def dead(model: onnx.ModelProto) -> list[str]:
    live, out = {o.name for o in model.graph.output}, []
    for n in reversed(model.graph.node):
        if live.intersection(n.output):
            live |= set(n.input) | outer_reads(n)
        else:
            out.append(n.name)
    return out


class ValuesOnly(nn.Module):
    """Multi-output ops of which only the values are read: their index nodes are dead."""

    def forward(self, x):
        v, _ = torch.max(x, dim=1)
        p, _ = nn.functional.max_pool2d(x, 2, return_indices=True)
        return v, p.amax(dim=(2, 3))


def test_nodes_no_output_reads_are_pruned_and_results_hold():
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 3] = float("nan")  # the NaN fix-ups' If branches run
    lowered = to_onnx(capture(ValuesOnly().eval(), (x,), {}).gm)
    model = lowered.model
    assert dead(model) == []
    assert "ArgMax" not in lowered.op_types()  # max.dim's indices are not computed
    assert all(n.doc_string for n in model.graph.node if not n.name.startswith("output_"))
    used = {i for n in model.graph.node for i in n.input} | \
        set().union(*(outer_reads(n) for n in model.graph.node))
    assert {t.name for t in model.graph.initializer} <= used
    got = OrtEngine(lowered, torch.device("cpu"), threads=1).run([x])
    for a, e in zip(got, ValuesOnly()(x)):
        torch.testing.assert_close(a, e, equal_nan=True)


def _if_reading(outer: str, out: str) -> onnx.NodeProto:
    branch = helper.make_graph([helper.make_node("Identity", [outer], ["inner"])], "b", [],
                               [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)])
    return helper.make_node("If", ["cond"], [out], name=out, then_branch=branch,
                            else_branch=branch)


def test_prune_keeps_what_an_if_branch_reads_from_the_outer_graph():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="a"),
             helper.make_node("Neg", ["x"], ["unread"], name="unread"),
             _if_reading("a", "y")]
    assert outer_reads(nodes[2]) == {"a"}
    assert [n.name for n in prune(nodes, ["y"])] == ["a", "y"]
    assert prune(nodes, ["unread"])[0].name == "unread"


def test_check_order_names_a_node_that_reads_a_value_before_it_is_made():
    a = helper.make_node("Relu", ["x"], ["a"], name="a")
    b = helper.make_node("Neg", ["a", ""], ["b"], name="b")  # '' is an absent optional input
    check_order([a, b], {"x"})
    with pytest.raises(ValueError, match=r"node b \(Neg\) reads \['a'\]"):
        check_order([b, a], {"x"})
    with pytest.raises(ValueError, match=r"node y \(If\) reads \['a'\]"):
        check_order([_if_reading("a", "y"), a], {"x", "cond"})
