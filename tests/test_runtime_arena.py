"""The torch engine over a planned arena: bitwise equal to the unplanned step loop (with the
arena poisoned between calls), outputs the user holds stay intact, the build-time probe
demotes what it must, and the zoo meets the 5% arena target."""
import dataclasses

import pytest
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from hypothesis import given, settings
from torch.fx.experimental.proxy_tensor import make_fx

import fxc
from fxc import ir
from fxc.models import get, names
from fxc.options import resolve
from fxc.runtime import TorchEngine
from fxc.runtime.torch_engine import bitwise_equal
from fxc.testing import ALL_DTYPES, graphs
from fxc.testing.strategies import single_thread

aten = torch.ops.aten
POISON = 0xFF  # every float type reads 0xFF.. bytes as NaN


def options(**kw):
    opts = resolve(device=None, precision="fp32", backend="torch", verify=False, dump_dir=None,
                   disable_passes=(), default_device=torch.device("cpu"))
    return dataclasses.replace(opts, **kw)


def aten_graph(fn, *inputs):
    with torch.no_grad():
        gm = make_fx(fn, tracing_mode="real")(*inputs)
    ir.infer_meta(gm)
    return gm


def traced(fn, *inputs):
    """fn's calls kept as written (no decomposition), with meta."""
    gm = fx.symbolic_trace(fn)
    for n, x in zip([n for n in gm.graph.nodes if n.op == "placeholder"], inputs):
        n.meta["val"] = x
    ir.infer_meta(gm)
    return gm


def all_bitwise(a, b) -> bool:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    return len(la) == len(lb) and all(
        bitwise_equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(la, lb))


def check_planned_matches_unplanned(gm, inputs):
    planned = TorchEngine(gm, options(), list(inputs))
    plain = TorchEngine(gm, options(plan_memory=False), list(inputs))
    assert planned.plan is not None and plain.plan is None
    with torch.no_grad():
        want = plain.run(list(inputs))
        first = planned.run(list(inputs))
        kept = [x.clone() if isinstance(x, torch.Tensor) else x for x in first]
        planned.arena.fill_(POISON)
        second = planned.run(list(inputs))
        planned.arena.fill_(POISON)
    assert all_bitwise(first, want)
    assert all_bitwise(second, want)
    assert all_bitwise(first, kept), "a later call (or the poison) changed an output the user holds"
    return planned


# -- generated graphs ------------------------------------------------------------------------

@settings(max_examples=60)  # with test_memory_plan's 300 examples; each builds two engines
@given(graphs(max_ops=8, dtypes=ALL_DTYPES))
def test_generated_graphs_planned_equals_unplanned_bitwise(g):
    with single_thread():
        gm = aten_graph(g.module, *g.inputs)
        check_planned_matches_unplanned(gm, g.inputs)


# -- hand-written cases ------------------------------------------------------------------------

def test_views_and_in_place_ops_through_the_arena():
    def f(x, w):
        y = torch.sigmoid(x)
        v = y.t()
        z = torch.tanh(x @ w)
        y[0].mul_(3)              # in place through a view, while v is alive
        s = torch.softmax(v + z, dim=-1)
        return (s * 2, torch.max(s, dim=0)[1])

    x, w = torch.randn(6, 6), torch.randn(6, 6)
    engine = check_planned_matches_unplanned(aten_graph(f, x, w), (x, w))
    assert len(engine.plan.tensors) >= 4 and any(s.planned for s in engine.steps)


def test_probe_finds_a_custom_op_returning_its_input():
    # Its schema promises a fresh tensor but it returns its argument: without the probe,
    # tanh would take sigmoid's bytes while `v` (= sigmoid) is still to be read.
    lib = torch.library.Library("fxc_test_arena", "FRAGMENT")
    lib.define("ident(Tensor x) -> Tensor")
    lib.impl("ident", lambda x: x, "CompositeExplicitAutograd")
    lib.impl("ident", lambda x: torch.empty_like(x), "Meta")

    def f(x):
        y = aten.sigmoid.default(x)
        v = torch.ops.fxc_test_arena.ident.default(y)
        z = aten.tanh.default(x)
        return (aten.exp.default(aten.add.Tensor(v, z)),)

    x = torch.randn(64)
    gm = traced(f, x)
    engine = check_planned_matches_unplanned(gm, (x,))
    t = engine.plan.by_name()
    assert t["sigmoid_default"].last == t["add_tensor"].first


def test_matmul_with_a_1d_operand_is_not_planned():
    def f(x, v):
        return (aten.exp.default(aten.matmul.default(aten.sigmoid.default(x), v)),)

    x, v = torch.randn(8), torch.randn(8, 16)
    engine = check_planned_matches_unplanned(traced(f, x, v), (x, v))
    assert ("matmul_default", "aten.matmul.default",
            "out= kernel resizes its output (a 1-D operand)") in engine.plan.unplanned


def test_zero_copy_outputs_are_arena_views_overwritten_by_the_next_call():
    def f(x):
        return (torch.sigmoid(torch.tanh(x)),)

    x = torch.randn(32)
    gm = aten_graph(f, x)
    engine = TorchEngine(gm, options(zero_copy_outputs=True), [x])
    out = engine.run([x])[0]
    arena = engine.arena.buffers["cpu"]
    start = arena.data_ptr()
    assert start <= out.data_ptr() < start + arena.numel()
    held = out.clone()
    engine.run([x + 1])
    assert not torch.equal(out, held)   # documented: the next call overwrites it
    assert torch.equal(held, f(x)[0])


def test_compiled_module_exposes_the_plan_and_reports_it():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16),
                                torch.nn.Tanh(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(3, 8)
    compiled = fxc.compile(model, (x,), backend="torch")  # the plan is the torch runtime's
    plan = compiled.memory_plan
    plan.verify()
    assert plan.tensors and plan.arena_bytes <= plan.no_reuse_bytes
    report = compiled.report()
    assert "Memory plan (cpu)" in report and "lower bound" in report and "no reuse" in report
    assert "not planned" in report and "graph output" in report
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    off = fxc.compile(model, (x,), backend="torch", plan_memory=False)
    assert off.memory_plan is None and all_bitwise(off(x), compiled(x))
    assert "Memory plan" not in off.report()
    by_breadth = fxc.compile(model, (x,), backend="torch", planner="breadth")
    assert by_breadth.memory_plan.strategy == "breadth"
    assert list(by_breadth.memory_plan.strategy_bytes) == ["breadth"]
    with pytest.raises(fxc.FxcOptionError, match="planner"):
        fxc.compile(model, (x,), planner="bogus")


# -- the zoo -------------------------------------------------------------------------------------

FAST = ["mlp", "bert"]  # capture is the cost; the rest run with -m slow
_CACHE: dict = {}


def compiled_zoo(name):
    if name not in _CACHE:
        model, inputs = get(name, "tiny", batch=2)
        _CACHE[name] = (model, inputs, fxc.compile(model, inputs, backend="torch"))
    return _CACHE[name]


def _zoo_params():
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
            for n in names(include_extras=True)]


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_planned_runtime(name):
    model, inputs, compiled = compiled_zoo(name)
    plan = compiled.memory_plan
    plan.verify()
    # the 5% target: the arena is within 5% of the most bytes ever live at once
    assert plan.arena_bytes <= 1.05 * plan.lower_bound_bytes, plan.summary()
    flat = compiled.checker.flatten(inputs, {})
    plain = TorchEngine(compiled.graph, options(plan_memory=False))
    with torch.no_grad():
        expected = model(*inputs)
        got = compiled(*inputs)
        compiled.engine.arena.fill_(POISON)
        again = compiled(*inputs)
        graph_out = list(compiled.graph(*flat))
        assert all_bitwise(compiled.engine.run(flat), plain.run(flat))
        assert all_bitwise(compiled.engine.run(flat), graph_out)
    assert all_bitwise(got, again)
    # eager is the model-level oracle: the passes' rounding (fusions) is theirs to bound
    rel = max((a - b).double().norm() / b.double().norm().clamp_min(1e-12)
              for a, b in zip(pytree.tree_leaves(got), pytree.tree_leaves(expected))
              if a.is_floating_point())
    assert rel < 1e-4, f"relative norm error {rel:.3g} against eager"
