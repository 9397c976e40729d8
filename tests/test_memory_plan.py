"""The memory planner: alias-aware live ranges, what is (never) planned, the plan's invariant
(verify), and the assignment against its bounds, on hand-written, generated and random
lifetimes."""
import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from fxc import ir
from fxc.errors import FxcOptionError
from fxc.passes import memory_plan as mp
from fxc.testing import ALL_DTYPES, graphs
from fxc.testing.strategies import single_thread

aten = torch.ops.aten


def aten_graph(fn, *inputs):
    """fn traced to an ATen graph (in-place ops and views kept) with fake meta on every node."""
    with torch.no_grad():
        gm = make_fx(fn, tracing_mode="real")(*inputs)
    ir.infer_meta(gm)
    return gm


def step_of(gm, name):
    return [n.name for n in gm.graph.nodes if n.op == "call_function"].index(name)


def node_named(gm, target):
    return next(n for n in gm.graph.nodes if n.target == target)


# -- live ranges ---------------------------------------------------------------------------

def test_a_view_keeps_its_base_alive():
    def f(x):
        y = torch.sigmoid(x)      # planned
        v = y.t()                 # a view: y must live as long as v
        z = torch.tanh(x)         # would take y's bytes if y died at the transpose
        w = z * 2
        return (torch.exp(v + w),)

    gm = aten_graph(f, torch.randn(4, 4))
    plan = mp.plan(gm)
    plan.verify()
    t = plan.by_name()
    add = node_named(gm, aten.add.Tensor).name
    assert t["sigmoid"].last == step_of(gm, add)          # through the view's use
    assert t["tanh"].last == step_of(gm, "mul")
    # live at once, so they cannot share bytes
    assert t["sigmoid"].offset != t["tanh"].offset or t["sigmoid"].size == 0
    assert ("t", "aten.t.default", "view of %sigmoid") in plan.unplanned


def test_a_chain_of_views_keeps_the_root_alive():
    def f(x):
        y = torch.sigmoid(x)
        v = y.view(16)[2:10].unsqueeze(0)   # view of a view of a view
        z = torch.tanh(x)
        return (torch.exp(v * z.view(16)[:8]),)

    gm = aten_graph(f, torch.randn(4, 4))
    plan = mp.plan(gm)
    plan.verify()
    mul = node_named(gm, aten.mul.Tensor).name
    assert plan.by_name()["sigmoid"].last == step_of(gm, mul)


def test_in_place_op_extends_its_targets_life():
    def f(x):
        y = torch.sigmoid(x)
        u = torch.tanh(x)
        y[0].mul_(2)              # writes y through a view, after u was made
        return (torch.exp(y * u),)

    gm = aten_graph(f, torch.randn(3, 4))
    assert any(n.target == aten.mul_.Tensor for n in gm.graph.nodes)
    plan = mp.plan(gm)
    plan.verify()
    t = plan.by_name()
    mul = next(n.name for n in gm.graph.nodes if n.target == aten.mul.Tensor)
    assert t["sigmoid"].last == step_of(gm, mul)
    assert t["tanh"].last == step_of(gm, mul)
    # the in-place step allocates nothing: it is listed as an alias of its target
    assert any(name.startswith("mul_") and "view of %sigmoid" in why for name, _, why in plan.unplanned)


def test_multi_output_op_is_planned_whole():
    def f(x):
        vals, idx = torch.max(torch.sigmoid(x), dim=1)
        return (torch.exp(vals) + idx,)

    gm = aten_graph(f, torch.randn(5, 6))
    plan = mp.plan(gm)
    plan.verify()
    names = {t.name for t in plan.tensors}
    assert {"max_1#0", "max_1#1"} <= names
    t = plan.by_name()
    add = node_named(gm, aten.add.Tensor).name
    assert t["max_1#1"].last == step_of(gm, add)      # through getitem
    assert t["max_1#0"].last == step_of(gm, "exp")


# -- what is never planned -------------------------------------------------------------------

def test_inputs_outputs_and_their_aliases_are_not_planned():
    def f(x, y):
        a = torch.sigmoid(x)      # returned as it is
        b = torch.tanh(x)         # returned through a view
        c = torch.exp(y)          # intermediate only
        return a, b.t(), c * 2, y

    gm = aten_graph(f, torch.randn(3, 3), torch.randn(3, 3))
    plan = mp.plan(gm)
    plan.verify()
    planned = {t.node for t in plan.tensors}
    assert planned == {"exp"}
    reasons = {n: why for n, _, why in plan.unplanned}
    assert reasons["sigmoid"] == "graph output" and reasons["tanh"].startswith("aliased by output %t")
    assert reasons["mul"] == "graph output"
    assert not planned & plan.inputs


def test_zero_copy_outputs_plans_outputs_until_the_end():
    def f(x):
        return (torch.sigmoid(torch.tanh(x)),)

    gm = aten_graph(f, torch.randn(4))
    plan = mp.plan(gm, zero_copy_outputs=True)
    plan.verify()
    t = plan.by_name()
    assert t["sigmoid"].last == 2 and t["tanh"].last == 1   # an output lives past the last step
    assert t["sigmoid"].offset != t["tanh"].offset


def test_ops_without_a_real_out_variant_are_refused_with_the_reason():
    cases = {
        aten.add.Tensor: None, aten.softmax.int: None, aten.max.dim: None,
        aten.convolution.default: "no out variant (only a generated one that copies)",
        aten.scaled_dot_product_attention.default: "no out variant",
        aten.split_with_sizes.default: "multi-output (tensor list)",
    }
    for op, why in cases.items():
        ov, got = mp.find_out_variant(op)
        assert got == why, op
        assert (ov is None) == (why is not None)
        if ov is not None:
            assert torch.Tag.generated not in ov.op.tags


def test_fused_custom_op_without_out_variant_is_not_planned():
    lib = torch.library.Library("fxc_test_plan", "FRAGMENT")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")

    def f(x):
        return (torch.exp(torch.ops.fxc_test_plan.twice(torch.sigmoid(x))),)

    gm = aten_graph(f, torch.randn(4))
    plan = mp.plan(gm)
    assert ("twice", "fxc_test_plan.twice.default", "no out variant") in plan.unplanned
    assert {t.node for t in plan.tensors} == {"sigmoid"}


def test_schema_lie_assumed_alias():
    # _unsafe_view says "fresh" but returns a view: its base must outlive it.
    def f(x):
        y = torch.sigmoid(x)
        v = aten._unsafe_view(y, [16])
        z = torch.tanh(x)
        return (torch.exp(v + z.view(16)),)

    gm = aten_graph(f, torch.randn(4, 4))
    plan = mp.plan(gm)
    add = node_named(gm, aten.add.Tensor).name
    assert plan.by_name()["sigmoid"].last == step_of(gm, add)


# -- verify ------------------------------------------------------------------------------------

def _two_live_tensors_plan():
    def f(x):
        a, b = torch.sigmoid(x), torch.tanh(x)
        return (torch.exp(a + b),)
    return mp.plan(aten_graph(f, torch.randn(64)))


def test_verify_names_both_nodes_of_an_overlap():
    plan = _two_live_tensors_plan()
    plan.verify()
    t = plan.by_name()
    plan.tensors = [dataclasses.replace(x, offset=t["sigmoid"].offset) if x.name == "tanh" else x
                    for x in plan.tensors]
    with pytest.raises(mp.FxcMemoryPlanError, match="sigmoid") as e:
        plan.verify()
    assert {e.value.first, e.value.second} == {"sigmoid", "tanh"}
    assert "%tanh" in str(e.value) and "live at once" in str(e.value)


def test_verify_names_an_output_aliasing_a_planned_tensor():
    plan = _two_live_tensors_plan()
    plan.output_roots["exp"] = frozenset({"tanh"})
    with pytest.raises(mp.FxcMemoryPlanError) as e:
        plan.verify()
    assert (e.value.first, e.value.second) == ("exp", "tanh")


def test_verify_refuses_a_planned_input():
    plan = _two_live_tensors_plan()
    plan.inputs = plan.inputs | {"sigmoid"}
    with pytest.raises(mp.FxcMemoryPlanError, match="input"):
        plan.verify()


def test_unknown_planner_is_an_option_error():
    with pytest.raises(FxcOptionError, match="planner"):
        mp.plan(aten_graph(lambda x: (torch.exp(torch.sigmoid(x)),), torch.randn(3)), strategy="nope")


# -- assignment --------------------------------------------------------------------------------

def test_chain_reaches_the_lower_bound():
    # t_i lives [i, i+1]: two at a time, so two slots suffice.
    plan = mp.plan_intervals([(100, i, i + 1) for i in range(10)], alignment=64)
    plan.verify()
    assert plan.arena_bytes == plan.lower_bound_bytes == 256
    assert plan.no_reuse_bytes == 1280


def test_plan_summary_has_the_three_figures():
    text = "\n".join(_two_live_tensors_plan().summary())
    assert "arena" in text and "lower bound" in text and "no reuse" in text and "won" in text


lifetimes = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 30), st.integers(0, 12)),
                     min_size=0, max_size=40).map(lambda xs: [(n, a, a + d) for n, a, d in xs])


@given(lifetimes, st.sampled_from([1, 64, 256]))
def test_random_lifetimes_every_order_is_valid_and_bounded(items, align):
    best = mp.plan_intervals(items, alignment=align)
    best.verify()
    assert best.lower_bound_bytes <= best.arena_bytes <= best.no_reuse_bytes
    for order in mp.ORDERS:
        p = mp.plan_intervals(items, alignment=align, strategy=order)
        p.verify()
        assert p.lower_bound_bytes <= p.arena_bytes <= p.no_reuse_bytes
        assert best.arena_bytes <= p.arena_bytes


@settings(max_examples=100)
@given(graphs(max_ops=8, dtypes=ALL_DTYPES))
def test_generated_graphs_plan_is_valid(g):
    with single_thread():
        gm = aten_graph(g.module, *g.inputs)
        plan = mp.plan(gm)
    plan.verify()
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.no_reuse_bytes
    outputs = {a.name for a in gm.graph.output_node().all_input_nodes}
    planned = {t.node for t in plan.tensors}
    assert not planned & outputs and not planned & plan.inputs
    for t in plan.tensors:
        assert t.offset % plan.alignment == 0 and t.size >= t.nbytes
